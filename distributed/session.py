"""Joining Ray: a local instance on this machine, or a cluster at an address.

Ray is imported here, inside functions, and nowhere else in cnnc: `cnnc --help` and every
command that does not ask for Ray never pay its start-up (8-11 s on a small machine).
"""

from __future__ import annotations

import os


class RayError(RuntimeError):
    """Ray is missing, cannot start or cannot reach its cluster; the message says which."""


def ray_module():
    """The ``ray`` module, or a RayError naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise RayError("this needs Ray: pip install 'cnnc[ray]'") from None
    return ray


def connect(address: str | None = None, num_cpus: int | None = None):
    """Start Ray on this machine, or join the cluster at ``address`` (``auto``, or
    ``HOST:6379`` as `ray start --head` prints). Reuses a session already started in this
    process. Returns the ``ray`` module."""
    import logging

    ray = ray_module()
    if address:
        probe(address)  # an address that does not answer is refused even beside a session
    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    options = dict(logging_level=logging.ERROR, include_dashboard=False,
                   log_to_driver=False, configure_logging=True)
    if address:
        options["address"] = address
    elif num_cpus is not None:
        options["num_cpus"] = num_cpus
    try:
        ray.init(**options)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RayError(f"cannot start or join {where}: {first}") from None
    quiet_data()
    return ray


def probe(address: str, timeout: float = 5.0) -> None:
    """A quick TCP connection to ``HOST:PORT`` (``ray://HOST:PORT`` too) before Ray tries:
    Ray itself retries an address that does not answer for minutes. ``auto`` and other
    forms are left to Ray."""
    import socket

    text = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as err:
        why = err.strerror or type(err).__name__
        if isinstance(err, socket.timeout):
            why = f"no answer within {timeout:g} s"
        raise RayError(f"cannot reach the Ray cluster at {address}: {why}; start one with "
                       "`ray start --head` there, or leave out --address to use this "
                       "machine") from None


def quiet_data() -> None:
    """Ray Data without its progress bars and start-of-run banners: cnnc prints its own
    summary."""
    from ray.data import DataContext

    import logging

    for name in ("ray", "ray.data", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.ERROR)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    for name in ("print_on_execution_start", "enable_operator_progress_bars"):
        if hasattr(ctx, name):
            setattr(ctx, name, False)


def cluster_cpus() -> int:
    """The CPUs of the Ray cluster joined."""
    ray = ray_module()
    return int(ray.cluster_resources().get("CPU", 1))


def require_resources(count: int, cpus: float, gpus: float, what: str) -> None:
    """Refuse, before anything waits on it, a pool of ``count`` ``what``s (e.g. "actors")
    of ``cpus`` CPUs and ``gpus`` GPUs each that the cluster joined can never hold: Ray
    would otherwise wait for them for ever."""
    ray = ray_module()
    have = ray.cluster_resources()
    for kind, each, flag in (("CPU", cpus, "CPU"), ("GPU", gpus, "GPU")):
        need = count * each
        available = float(have.get(kind, 0))
        if need > available + 1e-9:
            name = what if count != 1 else what.rstrip("s")
            raise RayError(f"{count} {name} of {each:g} {flag} each need {need:g} "
                           f"{flag}{'s' * (need != 1)}; the Ray cluster has {available:g}")
