"""How many threads cnnc's kernels run: the one place that decides it.

NumPy's BLAS (OpenBLAS, through threadpoolctl) and the compiled kernels (``ops/fast.py``,
numba) run as many threads as this module says, for the duration of one call: an inference
(`runtime/executor.py`), a training forward or backward, an export. Outside those calls the
process's own settings are left as they were.

The count, in order of precedence:

1. ``set_threads(n)`` in Python (``set_threads(None)`` returns to the next rule), or
   ``limit(n)`` as a context manager around some calls;
2. the environment variable ``CNNC_NUM_THREADS``: a whole number >= 1, or ``auto``;
3. ``auto``: every core this process may use, less the cores other processes are keeping
   busy right now, at least one.

Why ``auto`` looks at the neighbours: BLAS threads wait for each other at every barrier of
a matrix product. When another process holds one of two cores, the thread that shares its
core runs only part of the time and the other one waits for it; measured on a 2-core
machine, a forward pass with two threads became 4 to 17 times slower than with one
(docs/performance.md). So ``auto`` reads how busy the usable cores were since it last looked
(``/proc/stat``, less this process's own CPU time), at most every ``SAMPLE_SECONDS``, and
runs one thread per core the others leave free. Where ``/proc/stat`` cannot be read (not
Linux), ``auto`` is every usable core. (A batch of several images is split among every
usable core under ``auto`` all the same: `runtime/executor.py` says why.)
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ..ops import cores as cores_
from ..ops.cores import usable_cores

ENV = "CNNC_NUM_THREADS"
# ``auto`` looks at the machine's load at most this often (the kernel counts CPU time in
# 10 ms ticks, so a shorter window says little).
SAMPLE_SECONDS = 0.25
# The first decision of a process has nothing to compare with: it samples this long.
FIRST_SAMPLE_SECONDS = 0.02


class ThreadsError(ValueError):
    """A thread count that is not a whole number >= 1 (or ``auto``)."""


_lock = threading.Lock()
_setting: int | None = None  # set_threads(n); None: the environment, then auto
_sampler = None  # the load sampler of ``auto``, made on first use
_pools = None  # threadpoolctl's controller of the BLAS libraries, made on first use
_workers_lock = threading.Lock()
_workers = None  # (size, the worker threads of `in_lanes`), made on first use


def parse(value, where: str = ENV) -> int | None:
    """A thread count from text or a number: ``None`` for ``auto`` (or empty), else an
    integer >= 1; a ThreadsError naming ``where`` otherwise."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in ("", "auto"):
        return None
    if isinstance(value, bool) or not (text.isascii() and text.isdigit() and len(text) < 8):
        # ASCII digits only: int() would also read "٣" or "1_0"
        raise ThreadsError(f"{where} must be a whole number of threads >= 1 or `auto`, "
                           f"got {str(value)[:40]!r}")
    n = int(text)
    if n < 1:
        raise ThreadsError(f"{where} must be at least 1 thread (or `auto`), got {n}")
    return n


def set_threads(n) -> None:
    """Run ``n`` threads in every later call (``None`` or ``"auto"``: back to
    ``CNNC_NUM_THREADS``, then to the automatic count)."""
    global _setting
    _setting = parse(n, "threads")


def setting() -> int | None:
    """The fixed count in force (``set_threads``, then ``CNNC_NUM_THREADS``); None for
    ``auto``."""
    if _setting is not None:
        return _setting
    return parse(os.environ.get(ENV), ENV)


class LoadSampler:
    """How many of this process's usable cores other processes keep busy, from the
    difference of two readings of ``/proc/stat`` (the usable cores' lines) less this
    process's own CPU time over the same wall time."""

    def __init__(self, cpus=None):
        try:
            self.cpus = sorted(os.sched_getaffinity(0)) if cpus is None else list(cpus)
        except (AttributeError, OSError):
            self.cpus = None
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.last = self.read()
        self.busy = 0.0

    def read(self):
        """``(wall seconds, busy CPU seconds of the usable cores, own CPU seconds)``, or
        None where ``/proc/stat`` cannot be read."""
        try:
            with open("/proc/stat") as f:
                text = f.read()
        except OSError:
            return None
        wanted = None if self.cpus is None else {f"cpu{i}" for i in self.cpus}
        busy = 0
        for line in text.splitlines():
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            fields = line.split()
            if wanted is not None and fields[0] not in wanted:
                continue
            # user nice system idle iowait irq softirq steal ...: all but idle and iowait
            values = [int(v) for v in fields[1:9]]
            busy += sum(values) - values[3] - values[4]
        own = os.times()
        return time.monotonic(), busy / self.tick, own.user + own.system

    def others(self, min_seconds: float = SAMPLE_SECONDS) -> float | None:
        """Cores kept busy by other processes since the last reading at least
        ``min_seconds`` ago (the previous answer when the last reading is more recent);
        None without ``/proc/stat``."""
        if self.last is None:
            return None
        now = time.monotonic()
        if now - self.last[0] < min_seconds:
            return self.busy
        current = self.read()
        if current is None:
            return None
        wall = current[0] - self.last[0]
        if wall > 0:
            mine = current[2] - self.last[2]
            self.busy = max(0.0, (current[1] - self.last[1] - mine) / wall)
        self.last = current
        return self.busy


def auto_threads() -> int:
    """The automatic count: usable cores less those other processes keep busy, >= 1."""
    global _sampler
    cores = usable_cores()
    if cores == 1:
        return 1
    with _lock:
        if _sampler is None:
            _sampler = LoadSampler()
            time.sleep(FIRST_SAMPLE_SECONDS)
            busy = _sampler.others(0.0)
        else:
            busy = _sampler.others()
    if busy is None:
        return cores
    return max(1, min(cores, round(cores - busy)))


def decide(n=None) -> int:
    """The count for one call: ``n`` if given, else the fixed setting, else ``auto``."""
    n = parse(n, "threads") if n is not None else setting()
    return auto_threads() if n is None else n


def _blas_pools():
    """threadpoolctl's controllers of NumPy's BLAS (the libraries under NumPy's own folders;
    every BLAS loaded, where none is); an empty list without threadpoolctl. Other libraries'
    BLAS (PyTorch's, say) are theirs to set."""
    global _pools
    if _pools is None:
        try:
            import numpy  # its BLAS must be loaded before it is looked for
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _pools = []
        else:
            found = ThreadpoolController().select(user_api="blas").lib_controllers
            home = os.path.join(os.path.dirname(os.path.dirname(numpy.__file__)), "numpy")
            own = [lib for lib in found if str(lib.filepath).startswith(home)]
            _pools = own or list(found)
    return _pools


def blas_threads() -> list:
    """The thread count of each BLAS library that `limit` sets (NumPy's)."""
    return [pool.get_num_threads() for pool in _blas_pools()]


def _kernel_threads():
    """The compiled kernels' ``(get_setting, set_threads)`` (``ops/fast.py``, per thread)
    once that module is loaded; None before (the op families load it with their first
    compiled kernel, never this module: it imports numba)."""
    import sys

    # (this package's own, under whatever name it was imported)
    fast = sys.modules.get(__name__.rsplit(".", 2)[0] + ".ops.fast")
    if fast is None:
        return None
    return fast.get_setting, fast.set_threads


@contextlib.contextmanager
def limit(n=None):
    """Within the block, BLAS and the compiled kernels run ``decide(n)`` threads; the
    previous counts come back after it. Yields the count."""
    count = decide(n)
    with blas_limit(count):
        jit = _kernel_threads()
        if jit is not None:
            get, put = jit
            jit_before = get()  # (the setting itself: None stays the default)
            put(count)
        try:
            yield count
        finally:
            if jit is not None:
                put(jit_before)


@contextlib.contextmanager
def blas_limit(n: int):
    """Within the block, NumPy's BLAS runs ``n`` threads (the compiled kernels keep their
    count); the previous count comes back after it."""
    pools = _blas_pools()
    before = [pool.get_num_threads() for pool in pools]
    for pool, was in zip(pools, before):
        if was != n:
            pool.set_num_threads(n)
    try:
        yield
    finally:
        for pool, was in zip(pools, before):
            if was != n:
                pool.set_num_threads(was)


@contextlib.contextmanager
def this_thread_only(share=1):
    """Within the block, the compiled kernels called from this thread run on this thread
    alone (their count is per thread), or on ``share()`` threads where ``share`` is a
    function. For the workers of a split batch, whose BLAS count the calling thread has set
    to 1 for the process with `limit`."""
    jit = _kernel_threads()
    if jit is None:
        yield
        return
    get, put = jit
    before = get()
    put(share)
    try:
        yield
    finally:
        put(before)


def _worker_pool(count: int) -> ThreadPoolExecutor:
    """The process's worker threads for `in_lanes`, at least ``count`` of them (the caller
    holds ``_workers_lock``: a pool grown by another call is shut down only between two
    calls' submissions, and the work already given to it still runs)."""
    global _workers
    if _workers is None or _workers[0] < count:
        old = _workers
        _workers = (count, ThreadPoolExecutor(max_workers=count,
                                              thread_name_prefix="cnnc-lane"))
        if old is not None:
            old[1].shutdown(wait=False)
    return _workers[1]


def _forget_workers() -> None:
    """In a forked child: the parent's worker threads are not there (a pool of them would
    take work that never runs), and a lock held at the fork would stay held."""
    global _workers, _workers_lock
    _workers = None
    _workers_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers)

# A lane that finishes first lends its core to the others' compiled kernels (False: each
# lane runs one thread to its end).
HELP = True
# A lane that finishes moves a lane still running onto its core (the faster one, as it
# finished first), leaving the running lane's core to its helpers (False: it stays).
MOVE = True
# Each lane runs on a core of its own for the call: lane 0 (the calling thread) on the core
# it is on, the others on the next usable cores; the calling thread's own set of cores comes
# back after the call. Left to Linux, two lanes beside a busy process shared one core in 4
# of 5 calls while the process had the other (it counts two threads against one as
# balanced): MobileNet V2 at batch 8 took 108-144 ms, held apart 87-100 (docs/performance.md,
# ninth session). False: the scheduler places them.
PIN_LANES = True


def lane_cores(lanes: int):
    """The core for each of ``lanes`` lanes: the calling thread's, then its other allowed
    cores in turn (round again where there are more lanes than cores); None where cores
    cannot be read (not Linux), or there is one, or lanes are not held (``PIN_LANES``)."""
    if not PIN_LANES:
        return None
    usable = cores_.allowed_cores()
    here = cores_.current_core() if len(usable) > 1 else None
    if here is None:
        return None
    order = ([here] if here in usable else []) + [c for c in usable if c != here]
    return [order[i % len(order)] for i in range(lanes)]


_lane = threading.local()  # ``inside``: this thread is running a lane of `in_lanes`


def in_lanes(work, lanes: int, cores=None) -> list:
    """``[work(0), ..., work(lanes - 1)]``, each on a thread of its own: lane 0 on the
    calling thread, the others on the process's worker threads. Meanwhile NumPy's BLAS runs
    one thread for the process and the compiled kernels one on each lane's thread (more once
    lanes have finished, below); each worker takes the caller's NumPy floating-point error
    handling (per thread in NumPy: a trainer's ``errstate(all="ignore")`` around evaluation,
    say). Every lane is waited for before the first lane's error, if any, is raised. Called
    from inside a lane, the lanes run one after the other on that thread (the workers may
    all be busy with the outer call's lanes).

    Each lane is held on one core for the call (``PIN_LANES``; ``cores``: the core of each,
    as `lane_cores` gives them, which a caller may have asked for first): a core of its own
    where there are as many cores as lanes. A lane that finishes moves a lane still running
    onto its core (``MOVE``), and the cores finished lanes leave are lent to the compiled
    kernels of the lanes still running, shared equally (``HELP``). The split batches of
    inference (`runtime/executor.py`) and the shares of training steps (`runtime/model.py`).
    """
    import numpy

    if getattr(_lane, "inside", False):
        return [work(i) for i in range(lanes)]
    caller_errstate = numpy.geterr()
    finished = []  # the lanes that have finished, in turn
    if cores is None and PIN_LANES:
        cores = lane_cores(lanes)

    def share():
        # this lane's thread and an equal part of the finished lanes' cores: a lane that
        # ends early lends its core to the compiled kernels of those still running
        running = lanes - len(finished)
        return 1 + len(finished) // max(1, running)

    place = None if cores is None else list(cores)  # the core each lane is held on now
    spares = []  # the cores finished lanes leave to helpers
    lane_threads = [None] * lanes  # each lane's thread (its native id) and own set of cores
    moved = set()
    lock = threading.Lock()

    def spare():
        return list(spares)

    def finish(i):
        # a finished lane's core (which ran its share first) goes to a lane still running,
        # whose own core (perhaps shared with a busy process) is left to its helpers
        with lock:
            finished.append(i)
            if place is None:
                return
            mine, given = place[i], False
            for j in range(lanes):
                if MOVE and j not in finished and lane_threads[j] is not None and place[j] != mine:
                    try:
                        os.sched_setaffinity(lane_threads[j][0], {mine})
                    except OSError:
                        continue
                    spares.append(place[j])
                    place[j], given = mine, True
                    moved.add(j)
                    break
            if not given:
                spares.append(mine)

    def lane(i):
        _lane.inside = True
        try:
            if place is not None:
                lane_threads[i] = (threading.get_native_id(), os.sched_getaffinity(0))
            with cores_.held_on(None if place is None else place[i]), cores_.spares(spare), \
                    this_thread_only(share if HELP else 1), numpy.errstate(**caller_errstate):
                return work(i)
        finally:
            _lane.inside = False
            finish(i)

    with limit(1):
        with _workers_lock:
            pool = _worker_pool(lanes - 1)
            futures = [pool.submit(lane, i) for i in range(1, lanes)]
        first = error = None
        try:
            first = lane(0)
        except BaseException as err:  # noqa: BLE001 - raised once the workers are done
            error = err
        parts = [first]
        for future in futures:
            try:
                parts.append(future.result())
            except BaseException as err:  # noqa: BLE001 - the first is raised below
                error = err if error is None else error
        for j in moved:  # (a move may have come after the lane gave its set back)
            try:
                os.sched_setaffinity(*lane_threads[j])
            except OSError:
                pass
    if error is not None:
        raise error
    return parts


def info() -> dict:
    """What a report prints: the setting, the usable cores and the count ``auto`` takes
    now, the BLAS libraries and whether the compiled kernels are loaded."""
    fixed = setting()
    return {
        "setting": "auto" if fixed is None else fixed,
        "usable_cores": usable_cores(),
        "threads_now": decide(),
        "blas": [pool.internal_api for pool in _blas_pools()],
        "compiled_kernels_loaded": _kernel_threads() is not None,
    }
