"""How many cores this process may use, and which: the one reader of the CPU affinity and the
cgroup CPU quota, for the compiled kernels' default thread count (``ops/fast.py``) and for
``runtime/threads.py``'s decisions (ops may not import ``runtime/``, so it lives here); and
the one place that holds a thread on a core (`held_on`: the lanes of a split batch) and
says which cores a helper should take (`spare_cores`, `current_core`). Nothing heavy is
imported: ``cnnc check`` may load it."""

from __future__ import annotations

import contextlib
import os
import threading
import time

# cgroup v2's CPU limit: "<quota> <period>" in microseconds, or "max <period>"
CPU_MAX = "/sys/fs/cgroup/cpu.max"
# (when, count) of the last reading `usable_cores(max_age=...)` may answer with
_last = None
# glibc's sched_getcpu, once looked up (False: there is none here)
_getcpu = None
_held = threading.local()  # ``cores``: this thread's own set, while `held_on` holds it


def usable_cores(max_age: float = 0.0) -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota (a
    container allowed 1.5 CPUs of a 16-core machine gets 2). ``max_age``: seconds an
    earlier reading may be reused (reading the quota's file costs about 14 us, which a
    caller on every kernel call should not pay)."""
    global _last
    now = time.monotonic()
    if max_age > 0 and _last is not None and now - _last[0] <= max_age:
        return _last[1]
    count = _read()
    _last = (now, count)
    return count


def _read() -> int:
    cores = len(allowed_cores()) or os.cpu_count() or 1
    try:
        with open(CPU_MAX) as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def current_core():
    """The core the calling thread runs on at this moment (it may move after), or None
    where that cannot be asked (not Linux with glibc). For placing threads on cores of
    their own: ``ops/fast.py``'s workers, ``runtime/threads.py``'s lanes."""
    global _getcpu
    if _getcpu is None:
        try:
            import ctypes

            _getcpu = ctypes.CDLL(None).sched_getcpu
            _getcpu.restype = ctypes.c_int
            _getcpu.argtypes = []
        except (OSError, AttributeError, TypeError):
            _getcpu = False
    if _getcpu is False:
        return None
    core = _getcpu()
    return core if core >= 0 else None


def allowed_cores() -> list:
    """The cores the calling thread may run on, sorted: its own set, or while `held_on`
    holds it on one core, the set it had before. Empty where that cannot be read."""
    saved = getattr(_held, "cores", None)
    if saved is not None:
        return sorted(saved)
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return []


@contextlib.contextmanager
def held_on(core):
    """Within the block, the calling thread runs on ``core`` only (None, or a core it may
    not use: as it was); its own set of cores comes back after it, also after an error."""
    if core is None or getattr(_held, "cores", None) is not None:
        yield
        return
    try:
        before = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        yield
        return
    try:
        try:
            os.sched_setaffinity(0, {core})
        except OSError:  # (not ours now: the scheduler places the thread)
            pass
        _held.cores = before
        yield
    finally:
        _held.cores = None
        try:
            os.sched_setaffinity(0, before)
        except OSError:
            pass


def spare_cores() -> list:
    """The cores the calling thread's helpers should take (those of lanes that have
    finished, `runtime.threads.in_lanes`), or [] where nothing says."""
    spare = getattr(_held, "spare", None)
    return list(spare()) if spare is not None else []


@contextlib.contextmanager
def spares(function):
    """Within the block, `spare_cores` asks ``function`` (on this thread)."""
    before = getattr(_held, "spare", None)
    _held.spare = function
    try:
        yield
    finally:
        _held.spare = before
