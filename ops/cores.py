"""How many cores this process may use: the one reader of the CPU affinity and the cgroup
CPU quota, for the compiled kernels' default thread count (``ops/fast.py``) and for
``runtime/threads.py``'s decisions (ops may not import ``runtime/``, so it lives here).
Nothing heavy is imported: ``cnnc check`` may load it."""

from __future__ import annotations

import os
import time

# cgroup v2's CPU limit: "<quota> <period>" in microseconds, or "max <period>"
CPU_MAX = "/sys/fs/cgroup/cpu.max"
# (when, count) of the last reading `usable_cores(max_age=...)` may answer with
_last = None
# glibc's sched_getcpu, once looked up (False: there is none here)
_getcpu = None
try:  # read before any thread of ours is held on one core (`process_cores`)
    _PROCESS_CORES = sorted(os.sched_getaffinity(0))
except (AttributeError, OSError):
    _PROCESS_CORES = []


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
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
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


def process_cores() -> list:
    """The cores this process may run on, as read when cnnc was loaded: a lane or worker
    thread held on one core for a call (``runtime/threads.py``, ``ops/fast.py``) would
    report only that one. Empty where affinity cannot be read."""
    return list(_PROCESS_CORES)
