"""Compiled CPU kernels (numba) for what NumPy cannot do in a few large calls.

Each kernel here sits beside the NumPy-API kernel of its op family, which stays the
reference and the path taken without numba; the family module asks ``usable(...)`` and
calls in here only for float32 and float64 NumPy arrays:

- depthwise convolutions (one input channel per group), forward with the whole epilogue
  (scale, bias, activation, a fused gate) and backward (input and weight gradients): per
  image and channel, multiply-adds of a kernel row's taps over contiguous runs of the
  padded plane's phase planes, where NumPy runs a grouped GEMM with one row per channel;
  the forward also runs convolutions of a few input channels, such as an RGB stem;
- the epilogue of a GEMM convolution (scale, bias, activation, gate) in one pass from the
  product to the output, where NumPy makes a pass for each;
- sigmoid and swish/silu on float32 arrays, through an exp written as plain arithmetic
  (``_exp32``) so that its loops vectorise: NumPy's takes eight passes and two exps.

Pooling was tried and measured, then left to NumPy (docs/performance.md): one pass per
window tap over phase planes ran no faster than ``ops/pool.py``'s flat contiguous runs.

How the loops are written so that LLVM vectorises them (each found by measurement): indices
into a slice (``a[i:j]`` then ``part[p]``) rather than ``a[i + p]``, which numba checks for
wrapping around; one read and one unconditional write per value (``dest[q] = f(src[q])``; a
select between a value and the one already stored becomes a conditional store); numba's
``numpy`` error model (its ``python`` one branches on every division); fused multiply-adds
allowed, no other fast math.

Each kernel is a serial loop over a range of jobs: (image, block of channels) pairs,
images for a convolution of several input channels per group, channels for batch norm.
`parallel` shares the jobs among this module's own threads, as many as
``runtime/threads.py`` says for the call (numba's ``parallel=True`` did before: see the
comment above `parallel` for why not any more), in pieces that each thread takes as it
finishes the last, its workers held on cores other than the caller's.

Every kernel is compiled on its first call with ``cache=True`` (numba writes the machine
code beside this file, or in its user cache where that is read-only), so later processes
load it instead of compiling it. Nothing imports this module on ``cnnc check``'s path: the
op families import it inside their kernels.

``CNNC_FAST=0`` in the environment (or ``ENABLED = False``) turns every kernel here off;
without numba they are off too, and the NumPy kernels run.
"""

from __future__ import annotations

import itertools
import os
import threading

import numpy as np

from .cores import allowed_cores, current_core, spare_cores, usable_cores

try:
    import numba
except ImportError:  # the NumPy kernels run instead
    numba = None

ENABLED = numba is not None and os.environ.get("CNNC_FAST", "1").strip() not in ("0", "off")

# The activations the compiled epilogues apply: the piecewise-linear ones, and (float32 only)
# sigmoid and swish/silu through ``_exp32``, an exp whose every step is plain arithmetic, so
# LLVM vectorises the loops that call it (numba's own ``math.exp`` is a call per value, which
# made a compiled SiLU slower than NumPy's, docs/performance.md). The others (tanh, elu,
# gelu, mish, ...) are applied by NumPy. Codes as ``ops/cuda_kernels.py``'s.
ACT_IDENTITY = 0
ACT_CODES = {
    "identity": 0,
    "relu": 1,
    "leaky_relu": 2,
    "sigmoid": 6,
    "swish": 9,
    "silu": 9,
    "relu6": 10,
    "hardsigmoid": 11,
    "hardswish": 12,
}
# The codes computed through ``_exp32``: float32 data only (its polynomial is float32's).
EXP_CODES = frozenset({6, 9})
# PyTorch's default of ``alpha`` where an activation has one.
_ALPHA = {"leaky_relu": 0.01}
_BETA = {"swish": 1.0, "silu": 1.0}


# Fused multiply-adds allowed (one rounding instead of two: as accurate or more); nothing
# else of fast math, so NaN and infinities behave as in NumPy.
FASTMATH = {"contract"}


def jit(fastmath=None):
    """The decorator of every compiled kernel (here, in ops/winograd.py and ops/pool.py):
    machine code cached on disk, no GIL (`parallel` runs them on several threads),
    ``FASTMATH`` unless given, NumPy's error model."""
    if numba is None:
        return lambda f: f
    flags = set(FASTMATH if fastmath is None else fastmath)

    def wrap(f):
        try:
            return numba.njit(cache=True, nogil=True, fastmath=flags, error_model="numpy")(f)
        except RuntimeError:  # no writable cache location: compile in every process
            return numba.njit(nogil=True, fastmath=flags, error_model="numpy")(f)

    return wrap


# ---- threads ------------------------------------------------------------------------------
# Every kernel is a serial loop over a range of jobs, ``kernel(start, stop, ...)``, and
# `parallel` splits the jobs among threads of this module's own. numba's ``parallel=True``
# (its threading layer) ran the same loops before; it compiled each kernel two to five
# times longer (LLVM optimises the body again inside the parallel wrapper: 14.5 s against
# 2.9 s for the Winograd weight transform, 17 s against 9.6 s for the direct convolution),
# its ``workqueue`` layer stopped the process when two threads launched loops at once, and
# its ``omp`` layer ran on whatever OpenMP runtime was loaded first (PyTorch's spinning one
# made a 2-thread training step of the digits example 57 ms instead of 10).

_local = threading.local()  # per thread: ``count``, the threads its kernel calls may use
_pool_lock = threading.Lock()
_idle = []  # workers (`_Worker`) no call is using


def get_threads() -> int:
    """The threads the kernels called from this thread run on: as set (`set_threads`) in
    this thread, else every core this process may use (as BLAS does by default)."""
    count = getattr(_local, "count", None)
    if count is None:
        return usable_cores(max_age=1.0)
    return count() if callable(count) else count


def get_setting():
    """This thread's setting as `set_threads` left it (None, a count or a function), for a
    caller that sets its own and puts this one back after."""
    return getattr(_local, "count", None)


def set_threads(count) -> None:
    """The kernels called from this thread run on ``count`` threads (None: the default; a
    function: its answer at each call, as a lane of a split batch asks how many lanes have
    finished and may help it, ``runtime/threads.py``)."""
    _local.count = None if count is None else count if callable(count) else max(1, int(count))


# A worker left idle this long ends its thread (the pool holds a worker per extra thread
# per caller that ran kernels at once, and would otherwise keep them all for good).
IDLE_SECONDS = 60.0


class _Worker:
    """A thread that runs one task at a time (a call's `parallel` share: pieces until none
    is left): started by releasing ``go``, finished when it releases ``done``. Two bare
    locks per task, where a pool's queue, future and condition cost 40-60 us a call on a
    2-core VM."""

    def __init__(self):
        self.go = threading.Lock()
        self.go.acquire()
        self.done = threading.Lock()
        self.done.acquire()
        self.task = None
        self.error = None
        # the core `_place` holds it on; None: free on the allowed cores; -1: not yet set
        # (a thread made inside a lane held on one core starts on that core alone)
        self.cpu = -1
        thread = threading.Thread(target=self._loop, name="cnnc-kernel", daemon=True)
        thread.start()
        self.tid = thread.native_id

    def _loop(self):
        while True:
            if not self.go.acquire(timeout=IDLE_SECONDS):
                with _pool_lock:  # idle that long: leave the pool, unless just taken
                    if self in _idle:
                        _idle.remove(self)
                        return
                continue  # taken as the wait ended: its range is coming
            kernel, args = self.task
            try:
                kernel(*args)
            except BaseException as error:  # noqa: BLE001 - handed to the caller
                self.error = error
            kernel = args = None  # an idle worker holds no array of the last call
            self.done.release()

    def start(self, kernel, args):
        self.task = (kernel, args)
        self.error = None
        self.go.release()

    def wait(self):
        """The task's error, or None, once it has finished."""
        self.done.acquire()
        self.task = None
        error, self.error = self.error, None
        return error


def _take_workers(count: int) -> list:
    """``count`` idle workers, made as needed; each is the caller's until `_give_back`."""
    with _pool_lock:
        taken = [_idle.pop() for _ in range(min(count, len(_idle)))]
    return taken + [_Worker() for _ in range(count - len(taken))]


def _give_back(workers: list) -> None:
    with _pool_lock:
        _idle.extend(workers)


def _forget_workers() -> None:
    """In a forked child: the parent's workers are not there (their threads were not
    copied), and a lock held at the fork would stay held."""
    global _pool_lock, _idle
    _pool_lock = threading.Lock()
    _idle = []


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers)


# A call shares its jobs among threads only when it has at least this many values to
# compute (outputs, or multiply-adds): handing a range to a worker thread and waiting for
# it costs about 20 us on the 2-core machine of docs/performance.md (more while the
# worker's core wakes), the time of some 10^5 values of these loops.
MIN_PARALLEL_VALUES = 1 << 17
# A call's jobs are cut into this many pieces per thread, each thread taking the next piece
# when it has finished its last: a thread on a core shared with another process (or on a
# slower core of a virtual machine) takes fewer, where equal shares would leave the others
# waiting for it. (A piece costs a call of the kernel, about 2 us.)
PIECES = 4


def parallel(kernel, jobs: int, *args, values=None) -> None:
    """``kernel(start, stop, *args)`` over jobs ``0 .. jobs - 1``, on as many threads as
    `get_threads` says (at most one per job): the jobs cut into ``PIECES`` equal pieces a
    thread, each thread (the calling one and worker threads) taking the next piece until
    none is left. The kernels release the GIL (``nogil``), so the pieces run at once.
    ``values``: how much the call computes (see ``MIN_PARALLEL_VALUES``; None: enough).
    Returns when every piece is done; after an error no piece is handed out, and the error
    is raised once the pieces already running have stopped."""
    count = min(get_threads(), jobs)
    if values is not None and values < MIN_PARALLEL_VALUES:
        count = 1
    if count <= 1:
        if jobs > 0:
            kernel(0, jobs, *args)
        return
    pieces = min(jobs, count * PIECES)
    bounds = [jobs * i // pieces for i in range(pieces + 1)]
    claim = itertools.count().__next__  # the next piece; atomic under the GIL
    failed = []

    def share(*args):
        try:
            while not failed:
                i = claim()
                if i >= pieces:
                    return
                kernel(bounds[i], bounds[i + 1], *args)
        except BaseException:
            failed.append(True)  # no piece is handed out after it
            raise

    workers = _take_workers(count - 1)
    _place(workers)
    started = []
    try:
        for worker in workers:
            worker.start(share, args)
            started.append(worker)
        share(*args)
    finally:
        errors = [worker.wait() for worker in started]  # every piece stops first
        _give_back(workers)
    for error in errors:
        if error is not None:
            raise error


# Hold each worker of a call on a core other than the calling thread's (False: leave them
# to the scheduler). A worker woken for a call of a millisecond was left by Linux on the
# waking thread's core, the other core idle: two threads ran no faster than one (measured on
# the 2-core VM of docs/performance.md, MobileNet V2's kernels).
PLACE = True


def _place(workers) -> None:
    """Hold each worker on a core of its own for the call: the cores of lanes that have
    finished (`cores.spare_cores`) where there are some, else the calling thread's allowed
    cores other than the one it is on, in turn. Each worker is set only when its core
    changes; with ``PLACE`` off, or where cores cannot be read, a held worker is let go on
    the allowed cores."""
    allowed = allowed_cores()
    here = current_core() if PLACE and len(allowed) > 1 else None
    others = []
    if here is not None:
        others = [c for c in spare_cores() if c in allowed and c != here] or \
            [c for c in allowed if c != here]
    for i, worker in enumerate(workers):
        cpu = others[i % len(others)] if others else None
        if worker.cpu == cpu:
            continue
        if not allowed:  # (nothing to set a thread to)
            worker.cpu = None
            continue
        try:
            os.sched_setaffinity(worker.tid, allowed if cpu is None else {cpu})
        except OSError:  # that core is no longer ours: free on the allowed ones
            cpu = None
            try:
                os.sched_setaffinity(worker.tid, allowed)
            except OSError:
                pass
        except AttributeError:  # not Linux
            cpu = None
        worker.cpu = cpu


def usable(*arrays) -> bool:
    """Whether the compiled kernels take these arrays: numba present and enabled, and every
    array a NumPy float32 or float64 array of one dtype, in the machine's byte order (numba
    types no other)."""
    if not ENABLED:
        return False
    dtype = None
    for a in arrays:
        if a is None:
            continue
        if (type(a) is not np.ndarray or a.dtype.kind != "f" or a.dtype.itemsize not in (4, 8)
                or not a.dtype.isnative):
            return False
        if dtype is None:
            dtype = a.dtype
        elif a.dtype != dtype:
            return False
    return True


def act_code(act, dtype=np.float32):
    """``(code, alpha, beta)`` of a fused activation the compiled epilogue applies to data of
    ``dtype``, or None when it must be left to the NumPy epilogue. ``act``: None, a name or
    ``(name, params)``."""
    if act is None:
        return ACT_IDENTITY, 0.0, 0.0
    if isinstance(act, str):
        name, params = act, {}
    else:
        name, params = act
        params = dict(params or {})
    if name not in ACT_CODES or params.get("weight") is not None:
        return None
    code = ACT_CODES[name]
    if code in EXP_CODES and np.dtype(dtype) != np.float32:
        return None
    alpha = params.get("alpha")
    beta = params.get("beta")
    alpha = _ALPHA.get(name, 0.0) if alpha is None else float(alpha)
    beta = _BETA.get(name, 0.0) if beta is None else float(beta)
    return code, alpha, beta


# The constants of the compiled epilogue, as an array of the data's dtype (so float32 data
# computes in float32): 0, 1, 3, 6, alpha, beta.
ZERO, ONE, THREE, SIX, ALPHA, BETA = range(6)


def constants(dtype, alpha=0.0, beta=0.0):
    return np.array([0, 1, 3, 6, alpha, beta], dtype=dtype)


def inline(f):
    """A small helper compiled into its callers (so that their loops vectorise)."""
    if numba is None:
        return f
    return numba.njit(inline="always", cache=False, nogil=True, fastmath=FASTMATH,
                      error_model="numpy")(f)


if numba is not None:
    from llvmlite import ir as _ir
    from numba.core import types as _types
    from numba.extending import intrinsic as _intrinsic

    @_intrinsic
    def _float32_from_bits(typingctx, bits):
        """The float32 whose bit pattern is the int32 ``bits`` (an LLVM bitcast)."""
        if bits != _types.int32:
            return None

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], _ir.FloatType())

        return _types.float32(_types.int32), codegen

    @_intrinsic
    def _bits_of_float32(typingctx, value):
        """The int32 bit pattern of the float32 ``value`` (an LLVM bitcast)."""
        if value != _types.float32:
            return None

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], _ir.IntType(32))

        return _types.int32(_types.float32), codegen

    @_intrinsic
    def borrow(typingctx, a):
        """``a`` itself, borrowed: the same array without a reference to its memory (a
        null meminfo). numba counts a reference, an atomic increment and decrement of
        about 20 cycles each, for every view it makes of an owned array and every time
        one goes into a helper compiled into its caller (`inline`), even where it only
        reads it: a fifth of a depthwise layer's time on 7x7 maps. Views of a borrowed
        array count nothing. The caller keeps ``a`` alive while they are used: a kernel's
        arguments live through the call, arrays it allocates are kept with `keep`."""
        if not isinstance(a, _types.Array):
            return None

        def codegen(context, builder, signature, args):
            view = context.make_array(a)(context, builder, args[0])
            view.meminfo = context.get_constant_null(_types.MemInfoPointer(a.dtype))
            return view._getvalue()

        return a(a), codegen

    @_intrinsic
    def keep(typingctx, a):
        """Nothing, but ``a`` counts as used here: numba drops an array right after its
        last use, so an array whose borrowed views (`borrow`) are used later is kept
        to here."""
        def codegen(context, builder, signature, args):
            return context.get_dummy_value()

        return _types.none(a), codegen
else:  # pragma: no cover - only the compiled kernels call it
    def _float32_from_bits(bits):
        return np.array(bits, dtype=np.int32).view(np.float32)[()]

    def _bits_of_float32(value):
        return np.array(value, dtype=np.float32).view(np.int32)[()]

    def borrow(a):
        return a

    def keep(a):
        pass


@inline
def _copy(dst, src):
    """``dst[:n] = src`` (``n`` src's length) as a plain loop over two 1-D arrays: numba's
    slice assignment goes through its generic setitem (an overlap check, then a loop that
    does not vectorise), which made a depthwise layer's plane copies 2.5x slower outside a
    parallel loop (inside one, numba had rewritten them as loops itself)."""
    for q in range(src.shape[0]):
        dst[q] = src[q]


# ``_exp32``'s constants (``ops/pointwise.py``'s vector exp takes the same): its clamps and
# the argument past which e**v is inf in float32, log2(e), the shift 1.5 * 2**23 that
# rounds to an integer, ln 2 in two parts (``k * LN2_HI`` exact), and the polynomial's
# coefficients from the highest power down (Cephes' expf).
EXP_LOW, EXP_HIGH, EXP_INF = -87.0, 88.0, 88.72283
LOG2E = 1.44269504088896341
ROUND = 12582912.0
LN2_HI, LN2_LO = 0.693359375, 2.12194440e-4
EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
            1.6666665459e-1, 5.0000001201e-1)


@inline
def _exp32(v):
    """``e**v`` in float32 arithmetic, to about 2 ulp, for ``1 + e**v`` (sigmoid and swish's
    denominator): ``v = k ln2 + r`` with ``|r| <= ln2/2`` (ln2 in two parts, so ``k ln2`` is
    exact), ``e**r`` by its degree-7 Taylor-like polynomial (Cephes' expf coefficients),
    ``2**k`` built from its exponent bits. Past e**88.7 the result is inf; below e**-87 it
    is e**-87 (to which 1 adds nothing in float32, as to 0). NaN stays NaN: both clamps
    are x86's max and min (a select written ``bound if bound > v else v`` keeps the second
    operand, NaN, as they do), so no select for NaN is needed, and ``k`` is read from the
    rounding's bits rather than converted (a NaN converted to an integer would be LLVM's
    poison). No call and no branch: loops over it vectorise."""
    c = np.float32(EXP_LOW) if np.float32(EXP_LOW) > v else v
    c = np.float32(EXP_HIGH) if np.float32(EXP_HIGH) < c else c
    # round to the nearest integer: adding 1.5 * 2**23 leaves no fraction bits, and the
    # sum's bits are those of 1.5 * 2**23 (0x4B400000) plus the integer
    t = c * np.float32(LOG2E) + np.float32(ROUND)
    k = t - np.float32(ROUND)
    r = c - k * np.float32(LN2_HI)
    r = r + k * np.float32(LN2_LO)
    p = np.float32(EXP_POLY[0])
    p = p * r + np.float32(EXP_POLY[1])
    p = p * r + np.float32(EXP_POLY[2])
    p = p * r + np.float32(EXP_POLY[3])
    p = p * r + np.float32(EXP_POLY[4])
    p = p * r + np.float32(EXP_POLY[5])
    p = p * (r * r) + r + np.float32(1.0)
    k_biased = np.int32(_bits_of_float32(t) - np.int32(0x4B400000 - 127))  # k + 127
    e = p * _float32_from_bits(np.int32(k_biased << np.int32(23)))
    return np.float32(np.inf) if v > np.float32(EXP_INF) else e


@jit()  # called per row, not inlined: each kernel calling it compiled twice as long
def finish_row(src, dest, g, s, has_scale, has_bias, code, k, gate, has_gate):
    """``dest[:] = act(src * g + s) * gate`` over one row, as ``ops/activation.py`` defines
    the activation; ``k`` from ``constants``. One loop per activation, chosen once per row
    (a choice per element costs more than the arithmetic); each loop reads ``src`` and
    writes ``dest`` once, unconditionally, so that it vectorises (a select between a value
    and the one already stored becomes a conditional store, which does not). A missing
    scale, bias or gate is a multiply by 1 or an add of 0."""
    n = dest.shape[0]
    one = k[ONE]
    zero = k[ZERO]
    g = g if has_scale else one
    s = s if has_bias else zero
    f = gate if has_gate else one
    if code == 0:
        for q in range(n):
            dest[q] = (src[q] * g + s) * f
    elif code == 1:
        for q in range(n):
            v = src[q] * g + s
            dest[q] = (zero if v < zero else v) * f  # NaN stays NaN
    elif code == 2:
        alpha = k[ALPHA]
        for q in range(n):
            v = src[q] * g + s
            dest[q] = (v if v >= zero else v * alpha) * f
    elif code == 10:
        six = k[SIX]
        for q in range(n):
            v = src[q] * g + s
            v = zero if v < zero else v
            dest[q] = (six if v > six else v) * f
    elif code == 11:
        three = k[THREE]
        six = k[SIX]
        for q in range(n):
            v = src[q] * g + s + three
            v = zero if v < zero else v
            dest[q] = (six if v > six else v) / six * f
    elif code == 12:
        three = k[THREE]
        six = k[SIX]
        for q in range(n):
            v = src[q] * g + s
            t = v + three
            t = zero if t < zero else t
            dest[q] = v * ((six if t > six else t) / six) * f
    elif code == 6:  # sigmoid, float32 only (NaN comes through _exp32)
        one32 = np.float32(1.0)
        for q in range(n):
            v = np.float32(src[q] * g + s)
            dest[q] = one32 / (one32 + _exp32(-v)) * f
    elif code == 9:  # swish: x sigmoid(beta x), float32 only
        one32 = np.float32(1.0)
        beta = np.float32(k[BETA])
        for q in range(n):
            v = np.float32(src[q] * g + s)
            dest[q] = v / (one32 + _exp32(-(beta * v))) * f


@inline
def _activate_row(dest, code, k):
    """The activation in place on one row (through a copy: see ``finish_row``)."""
    if code != 0:
        tmp = dest.copy()
        finish_row(tmp, dest, k[ONE], k[ZERO], False, False, code, k, k[ONE], False)


@jit()
def _activate_flat(y, code, k, chunk):
    """The activation in place on a contiguous 1-D array, a cache-sized chunk at a time
    through a copy (reading and writing one array would not vectorise)."""
    n = y.shape[0]
    tmp = np.empty(min(n, chunk), dtype=y.dtype)
    for start in range(0, n, chunk):
        m = min(n, start + chunk) - start
        part = tmp[:m]
        _copy(part, y[start:start + m])
        finish_row(part, y[start:start + m], k[ONE], k[ZERO], False, False, code, k, k[ONE],
                    False)


def activate_(y, act) -> bool:
    """Apply ``act`` in place to ``y`` (a C-contiguous NumPy float array) when the compiled
    epilogue has it; returns False (``y`` untouched) when it does not."""
    code = act_code(act, y.dtype)
    if code is None or not y.flags.c_contiguous:
        return False
    code, alpha, beta = code
    if code != ACT_IDENTITY:
        _activate_flat(y.reshape(-1), code, constants(y.dtype, alpha, beta), 1 << 14)
    return True


# ---- depthwise (and few-channel) convolution -----------------------------------------

# The accumulator of a direct convolution holds this many values (8 KiB of float32, in the L1
# cache beside the input rows it reads): whole output rows, padding columns included.
ACC_VALUES = 2048
# The values a vectorised loop of the direct convolution takes a step (two AVX registers of
# float32): its runs are rounded up to a multiple.
LANES = 16


@jit()
def phase_copy(plane, phases, top, left, sh, sw, into):
    """Between one ``plane (H, W)`` and its zero-padded phase planes ``phases (sh*sw, Hq+1,
    Wq)``: padded row ``R`` and column ``C`` are phase ``(R % sh, C % sw)`` at ``(R // sh,
    C // sw)`` (at stride 1, the padded plane itself). ``into``: the plane's values into the
    phase planes (the padding's cells untouched); else the phase planes' values back into
    the plane (the padding's cells dropped). The plane is writable (`contiguous`): numba
    would not compile the second direction for a read-only one."""
    h, wd = plane.shape
    for r in range(h):
        big = r + top
        p = big % sh
        pr = big // sh
        row = plane[r]
        if sw == 1:
            if into:
                _copy(phases[p, pr, left:left + wd], row)
            else:
                _copy(row, phases[p, pr, left:left + wd])
        elif sw == 2:  # one loop, both phases: a stride-2 pair LLVM loads as vectors
            even = phases[p * 2 + left % 2, pr, left // 2:]  # columns 0, 2, 4, ...
            odd = phases[p * 2 + (left + 1) % 2, pr, (left + 1) // 2:]  # 1, 3, 5, ...
            half = wd // 2
            if into:
                for t in range(half):
                    even[t] = row[2 * t]
                    odd[t] = row[2 * t + 1]
                if wd % 2:
                    even[half] = row[wd - 1]
            else:
                for t in range(half):
                    row[2 * t] = even[t]
                    row[2 * t + 1] = odd[t]
                if wd % 2:
                    row[wd - 1] = even[half]
        else:
            for q in range(sw):
                first = (q - left) % sw  # the first input column of phase column q
                start = (first + left) // sw
                count = (wd - first + sw - 1) // sw if first < wd else 0
                if count > 0:
                    part = phases[p * sw + q, pr, start:start + count]
                    line = row[first:]
                    if into:  # indices that cannot wrap: no check, no call
                        for t in range(count):
                            part[t] = line[t * sw]
                    else:
                        for t in range(count):
                            line[t * sw] = part[t]


@inline
def _tap_offsets(kh, kw, wq, plane, sh, sw, dh, dw):
    """Where tap ``(i, j)``'s run starts in an input channel's phase planes, relative to
    the band's first row: ``offsets[i * kw + j]``. Computed once per call: the divisions
    by the stride, done per tap and channel, took a fifth of a 5x5 layer's time on 7x7
    maps."""
    offsets = np.empty(kh * kw, dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            phase = (i * dh) % sh * sw + (j * dw) % sw
            offsets[i * kw + j] = (i * dh) // sh * wq + phase * plane + (j * dw) // sw
    return offsets


@jit()
def _direct_forward(start, stop, x, w, scale, bias, out, ho, wo, sh, sw, top, left, dh, dw,
                    code, k, has_scale, has_bias, gate, has_gate, block):
    """A convolution of few input channels per group (``w (O, C/G, kh, kw)``): depthwise
    ones, and stems such as 3 -> 32 channels. Per image and block of ``block`` output
    channels: the input planes of the channel's group laid out as the phase planes of their
    padded selves (see ``ops/conv._conv_shifted``; the padding stays zero from one group
    to the next, only the interior is rewritten). Then, a band of ``rows`` output rows at a
    time (``rows * Wq`` values, discarded columns included, in an accumulator the size of
    L1), one pass per kernel row and input channel multiplies-and-adds three or five taps
    (`_row_taps`); the band's kept columns are moved together and go through the epilogue
    into ``out`` (``(N, O, Ho * Wo)``, contiguous) in one call (a call a row cost as much as
    the arithmetic on 7- and 14-wide maps). The block shares one workspace among its
    channels."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    og = o // (c // cg)  # output channels per group
    hq = max(-(-(h + top) // sh), ho + ((kh - 1) * dh) // sh)
    wq = max(-(-(wd + left) // sw), wo + ((kw - 1) * dw) // sw)
    plane = (hq + 1) * wq
    phases = sh * sw * plane  # one input channel's phase planes
    blocks = (o + block - 1) // block
    rows = max(1, min(ho, ACC_VALUES // wq))  # output rows accumulated at a time
    # borrowed (see `borrow`): the caller holds the arguments, `keep` the workspaces
    x, w, out, scale, bias = borrow(x), borrow(w), borrow(out), borrow(scale), borrow(bias)
    k, gate = borrow(k), borrow(gate)
    where = _tap_offsets(kh, kw, wq, plane, sh, sw, dh, dw)
    offsets = borrow(where)
    for job in range(start, stop):  # jobs: n * blocks
        b = job // blocks
        first = (job - b * blocks) * block
        # (the last run may read and the accumulator hold ``LANES - 1`` values more)
        planes = np.zeros(cg * phases + LANES, dtype=x.dtype)
        sums = np.empty(rows * wq + LANES, dtype=out.dtype)
        flat, acc = borrow(planes), borrow(sums)
        end = min(o, first + block)
        oc0 = first
        while oc0 < end:  # the block's channels, a group at a time
            group = oc0 // og
            oc1 = min(end, (group + 1) * og)
            for ci in range(cg):
                ic = group * cg + ci
                mine = flat[ci * phases:(ci + 1) * phases]
                if sh == 1 and sw == 1:  # the padded plane: a copy row by row
                    source = x[b, ic]
                    for r in range(h):
                        at = (r + top) * wq + left
                        # between slices: a loop over ``mine[at + q]`` would check each
                        # index for wrapping around and not vectorise
                        _copy(mine[at:at + wd], source[r])
                else:
                    phase_copy(x[b, ic], mine.reshape(sh * sw, hq + 1, wq), top, left, sh,
                                sw, True)
            # a band of rows at a time, every channel of the group over it: the band's
            # phase rows stay in the caches from one channel to the next
            for r0 in range(0, ho, rows):
                # a whole number of LANES: LLVM's vector loop takes 16 values a step and
                # leaves the rest to a scalar loop, up to 15 values of 77 on a 7x7 map
                # (the columns past the band are discarded with the padding's)
                count = -(-(min(rows, ho - r0) * wq) // LANES) * LANES
                dst = acc[:count]
                for oc in range(oc0, oc1):
                    for ci in range(cg):
                        for i in range(kh):
                            _row_taps(dst, flat, w, oc, ci, i, ci * phases + r0 * wq,
                                      offsets, ci == 0 and i == 0)
                    g = scale[oc if has_scale else 0]
                    s = bias[oc if has_bias else 0]
                    f = gate[b if has_gate else 0, oc if has_gate else 0]
                    r1 = min(ho, r0 + rows)
                    for r in range(1, r1 - r0):  # row r's kept columns after row r - 1's
                        kept = acc[r * wq:r * wq + wo]
                        moved = acc[r * wo:r * wo + wo]
                        for q in range(wo):
                            moved[q] = kept[q]
                    finish_row(acc[:(r1 - r0) * wo], out[b, oc, r0 * wo:r1 * wo], g, s,
                               has_scale, has_bias, code, k, f, has_gate)
            oc0 = oc1
        keep(planes)
        keep(sums)
    keep(where)


@inline
def _row_taps(dst, flat, w, oc, ci, i, band, offsets, first):
    """``dst`` (= if ``first``, else +=) the taps of kernel row ``i`` of input channel
    ``ci`` times their runs in ``flat`` (``band``: where the band's first phase row of the
    channel starts; ``offsets``: `_tap_offsets`). Three or five taps a pass: a third or a
    fifth of the accumulator's loads and stores of a pass per tap (not more: LLVM checks
    each source against ``dst`` for overlap, and gives up past eight)."""
    count = dst.shape[0]
    kw = w.shape[3]
    if kw == 3:
        t0, a0 = w[oc, ci, i, 0], band + offsets[i * kw + 0]
        t1, a1 = w[oc, ci, i, 1], band + offsets[i * kw + 1]
        t2, a2 = w[oc, ci, i, 2], band + offsets[i * kw + 2]
        s0 = flat[a0:a0 + count]  # slices: no index can wrap
        s1 = flat[a1:a1 + count]
        s2 = flat[a2:a2 + count]
        if first:
            for p in range(count):
                dst[p] = t0 * s0[p] + t1 * s1[p] + t2 * s2[p]
        else:
            for p in range(count):
                dst[p] += t0 * s0[p] + t1 * s1[p] + t2 * s2[p]
    elif kw == 5:
        t0, a0 = w[oc, ci, i, 0], band + offsets[i * kw + 0]
        t1, a1 = w[oc, ci, i, 1], band + offsets[i * kw + 1]
        t2, a2 = w[oc, ci, i, 2], band + offsets[i * kw + 2]
        t3, a3 = w[oc, ci, i, 3], band + offsets[i * kw + 3]
        t4, a4 = w[oc, ci, i, 4], band + offsets[i * kw + 4]
        s0 = flat[a0:a0 + count]
        s1 = flat[a1:a1 + count]
        s2 = flat[a2:a2 + count]
        s3 = flat[a3:a3 + count]
        s4 = flat[a4:a4 + count]
        if first:
            for p in range(count):
                dst[p] = t0 * s0[p] + t1 * s1[p] + t2 * s2[p] + t3 * s3[p] + t4 * s4[p]
        else:
            for p in range(count):
                dst[p] += t0 * s0[p] + t1 * s1[p] + t2 * s2[p] + t3 * s3[p] + t4 * s4[p]
    else:
        for j in range(kw):
            tap, at = w[oc, ci, i, j], band + offsets[i * kw + j]
            src = flat[at:at + count]
            if first and j == 0:
                for p in range(count):
                    dst[p] = tap * src[p]
            else:
                for p in range(count):
                    dst[p] += tap * src[p]


@jit(fastmath={"contract", "reassoc"})
def _dot(a, b, zero):
    """``sum(a * b)`` over two contiguous runs, in any order (so it vectorises: partial sums
    per SIMD lane, as accurate as one running sum or more)."""
    total = zero
    for p in range(a.shape[0]):
        total += a[p] * b[p]
    return total


@jit()
def _depthwise_backward(start, stop, x, w, dy, gx, gw, sh, sw, top, left, dh, dw, zero):
    """``gx`` (x's shape) gets the input gradient; ``gw`` (``(N, O, kh, kw)``) each image's
    weight gradient, summed by the caller. One job per (image, input channel), no two
    writing one cell. The forward's layout run backwards: the input plane as the phase
    planes of its padded self, the output gradient as rows ``Wq`` wide (zeros in the
    discarded columns); per tap, the weight gradient is a dot product of two contiguous
    runs and the input gradient's phase planes get the output gradient times the tap."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    ho, wo = dy.shape[2], dy.shape[3]
    per = o // c
    hq = max(-(-(h + top) // sh), ho + ((kh - 1) * dh) // sh)
    wq = max(-(-(wd + left) // sw), wo + ((kw - 1) * dw) // sw)
    span = -(-(ho * wq) // LANES) * LANES  # (see `_direct_forward`: zeros past the rows)
    plane = (hq + 1) * wq
    x, w, dy, gx, gw = borrow(x), borrow(w), borrow(dy), borrow(gx), borrow(gw)
    where = _tap_offsets(kh, kw, wq, plane, sh, sw, dh, dw)
    offsets = borrow(where)
    for job in range(start, stop):  # jobs: n * c
        b = job // c
        ic = job - b * c
        planes = np.zeros(sh * sw * plane + LANES, dtype=x.dtype)
        grads = np.zeros(sh * sw * plane + LANES, dtype=x.dtype)
        dys = np.zeros(span, dtype=x.dtype)  # dy, Wq wide
        flat, grad, rows = borrow(planes), borrow(grads), borrow(dys)
        phase_copy(x[b, ic], flat[:sh * sw * plane].reshape(sh * sw, hq + 1, wq), top, left,
                    sh, sw, True)
        for q in range(per):
            oc = ic * per + q
            for oh in range(ho):
                _copy(rows[oh * wq:oh * wq + wo], dy[b, oc, oh])
            for i in range(kh):
                for j in range(kw):
                    at = offsets[i * kw + j]
                    gw[b, oc, i, j] = _dot(flat[at:at + span], rows, zero)
                    tap = w[oc, 0, i, j]
                    into = grad[at:at + span]
                    for p in range(span):
                        into[p] += tap * rows[p]
        phase_copy(gx[b, ic], grad[:sh * sw * plane].reshape(sh * sw, hq + 1, wq), top, left,
                    sh, sw, False)
        keep(planes)
        keep(grads)
        keep(dys)
    keep(where)


# ---- batch norm's training pair (ops/norm.py calls these) ----------------------------------
# Per channel, in parallel over the channels: the forward makes three passes (sum, centred
# squares, normalise) and the backward two, where NumPy makes about eight whole-array passes
# each way; the sums are kept in float64 and may be added in any order (so they vectorise).


@jit(fastmath={"reassoc"})
def _bn_total(row):
    s = 0.0
    for q in range(row.shape[0]):
        s += np.float64(row[q])
    return s


@jit(fastmath={"reassoc"})
def _bn_centred_squares(row, m):
    s = 0.0
    for q in range(row.shape[0]):
        d = row[q] - m
        s += np.float64(d * d)
    return s


@jit(fastmath={"reassoc"})
def _bn_dot(a, b):
    s = 0.0
    for q in range(a.shape[0]):
        s += np.float64(a[q] * b[q])
    return s


@jit()
def _bn_train_forward(start, stop, x, has_w, w, has_b, b, eps, xhat, y, mean, var, inv_std):
    n, c, m = x.shape
    x, w, b, xhat, y = borrow(x), borrow(w), borrow(b), borrow(xhat), borrow(y)
    mean, var, inv_std = borrow(mean), borrow(var), borrow(inv_std)
    for ch in range(start, stop):  # jobs: c
        s = 0.0
        for i in range(n):
            s += _bn_total(x[i, ch])
        mean[ch] = s / (n * m)
        mu = x.dtype.type(mean[ch])
        s = 0.0
        for i in range(n):
            s += _bn_centred_squares(x[i, ch], mu)
        var[ch] = s / (n * m)
        k = x.dtype.type(1.0 / np.sqrt(var[ch] + eps))
        inv_std[ch] = k
        g = w[ch]
        o = b[ch]
        for i in range(n):
            src = x[i, ch]
            xh = xhat[i, ch]
            dest = y[i, ch]
            for q in range(m):
                v = (src[q] - mu) * k
                xh[q] = v
                if has_w:
                    v = v * g
                if has_b:
                    v = v + o
                dest[q] = v


@jit()
def _bn_train_backward(start, stop, xhat, dy, has_w, w, inv_std, gx, gW, gb):
    """gb = sum(dy), gW = sum(dy * xhat) per channel; then, with g = dy * weight,
    gx = (xhat * (-sum(g * xhat) / m) + g - sum(g) / m) * inv_std."""
    n, c, m = xhat.shape
    count = n * m
    xhat, dy, w, inv_std = borrow(xhat), borrow(dy), borrow(w), borrow(inv_std)
    gx, gW, gb = borrow(gx), borrow(gW), borrow(gb)
    for ch in range(start, stop):  # jobs: c
        sb = 0.0
        sw = 0.0
        for i in range(n):
            sb += _bn_total(dy[i, ch])
            sw += _bn_dot(dy[i, ch], xhat[i, ch])
        gb[ch] = sb
        gW[ch] = sw
        g = w[ch]
        t = xhat.dtype.type(-(sw * g) / count)
        u = xhat.dtype.type((sb * g) / count)
        k = inv_std[ch]
        for i in range(n):
            src = xhat[i, ch]
            d = dy[i, ch]
            dest = gx[i, ch]
            for q in range(m):
                gq = d[q] * g if has_w else d[q]
                dest[q] = (src[q] * t + gq - u) * k


def batchnorm_train_forward(x, has_w, w, has_b, b, eps, xhat, y, mean, var, inv_std):
    """Training batch norm over ``x (N, C, positions)``: per channel the batch's mean and
    variance (float64 sums), ``xhat`` and ``y``; a job per channel (`parallel`)."""
    parallel(_bn_train_forward, x.shape[1], x, has_w, w, has_b, b, eps, xhat, y, mean, var,
             inv_std, values=x.size)


def batchnorm_train_backward(xhat, dy, has_w, w, inv_std, gx, gW, gb):
    """The gradients of `batchnorm_train_forward` (see `_bn_train_backward`)."""
    parallel(_bn_train_backward, xhat.shape[1], xhat, dy, has_w, w, inv_std, gx, gW, gb,
             values=xhat.size)


# ---- the epilogue of a GEMM convolution ------------------------------------------------


@jit()
def _epilogue(start, stop, src, dest, scale, bias, code, k, has_scale, has_bias, gate,
              has_gate, same, rows):
    """``dest[b, c, r] = act(src[b, c, r] * scale[c] + bias[c]) * gate[b, c]`` over 4-D
    arrays whose last axis is contiguous; ``same``: ``src`` is ``dest`` (then each row goes
    through a copy, see ``finish_row``). Jobs of ``rows`` rows."""
    n, o, h = dest.shape[0], dest.shape[1], dest.shape[2]
    length = dest.shape[3]
    total = n * o * h
    src, dest, scale, bias = borrow(src), borrow(dest), borrow(scale), borrow(bias)
    k, gate = borrow(k), borrow(gate)
    for job in range(start, stop):  # jobs: ceil(total / rows)
        row = np.empty(length, dtype=dest.dtype)
        tmp = borrow(row)
        for at in range(job * rows, min(total, (job + 1) * rows)):
            b = at // (o * h)
            c = (at // h) % o
            r = at % h
            _copy(tmp, src[b, c, r])  # (a contiguous copy in L1 even when not ``same``: the
            # loops of finish_row vectorise only when numba knows a row is contiguous)
            finish_row(tmp, dest[b, c, r], scale[c if has_scale else 0],
                        bias[c if has_bias else 0], has_scale, has_bias, code, k,
                        gate[b if has_gate else 0, c if has_gate else 0], has_gate)
        keep(row)


def epilogue_(dest, src, scale, bias, act, gate=None) -> bool:
    """Scale ``(O,)``, bias ``(O,)``, activation and gate ``(N, O)`` from ``src`` into
    ``dest`` (both ``(N, O, H, W)``, rows contiguous; ``src`` None: in place) in one
    compiled pass, where NumPy makes one pass for each and three for an exp activation.
    Returns False (nothing written) when the compiled epilogue lacks the activation."""
    code = act_code(act, dest.dtype)
    if code is None:
        return False
    code, alpha, beta = code
    n, o, h, length = dest.shape
    if h * length == 1 and dest.flags.c_contiguous and (src is None or src.flags.c_contiguous):
        # one value per channel (a squeeze-and-excitation's 1x1 convolutions): a compiled
        # row per value cost 70 ns each, 0.2 ms per image on EfficientNet-B0's 48 -> 1152
        # channels at batch 4; here the values are one flat row, NumPy scales them
        flat = dest.reshape(n, o)
        value = flat if src is None else src.reshape(n, o)
        if scale is not None:
            np.multiply(value, scale, out=flat)
            value = flat
        if bias is not None:
            np.add(value, bias, out=flat)
            value = flat
        if value is not flat:
            flat[...] = value
        activate_(flat, act)
        if gate is not None:
            flat *= gate
        return True
    dummy = np.zeros(1, dtype=dest.dtype)
    rows = max(1, min(64, (1 << 13) // max(1, length)))  # about 8K values a job
    parallel(_epilogue, (n * o * h + rows - 1) // rows,
             dest if src is None else src, dest, dummy if scale is None else scale,
             dummy if bias is None else bias, code, constants(dest.dtype, alpha, beta),
             scale is not None, bias is not None,
             dummy.reshape(1, 1) if gate is None else gate, gate is not None, src is None,
             rows, values=dest.size)
    return True


def direct_conv2d(x, w, b, scale, act, out, stride, pads, dilation, gate=None):
    """A CONV2D of few input channels per group (depthwise: ``w (O, 1, kh, kw)``, ``O`` a
    multiple of ``x``'s channels; a stem: ``w (O, 3, kh, kw)``) into ``out (N, O, Ho,
    Wo)``, with scale, bias, the activation and the gate ``(N, O)`` applied. Returns False
    when the compiled epilogue lacks the activation: then neither it nor the gate was
    applied, and the caller applies both."""
    code = act_code(act, x.dtype)
    done = code is not None
    code, alpha, beta = code if done else (ACT_IDENTITY, 0.0, 0.0)
    dummy = np.zeros(1, dtype=x.dtype)
    use_gate = gate is not None and done
    x, w = contiguous(x), contiguous(w)
    n, o, ho, wo = out.shape
    # the kernel writes whole bands of rows through a contiguous (N, O, Ho*Wo) view: a
    # channel slice of a concat goes through a contiguous array copied after (one more
    # compiled variant of the kernel for strided outputs would cost more than that copy
    # on the rare depthwise layer whose output a concat takes)
    into = out if out.flags.c_contiguous else np.empty(out.shape, dtype=out.dtype)
    block = _channel_block(n, o) if w.shape[1] == 1 else o
    parallel(_direct_forward, n * (-(-o // block)),
             x, w, dummy if scale is None else scale, dummy if b is None else b,
             into.reshape(n, o, ho * wo), ho, wo, stride[0], stride[1], pads[0], pads[2],
             dilation[0], dilation[1], code, constants(x.dtype, alpha, beta),
             scale is not None, b is not None, gate if use_gate else dummy.reshape(1, 1),
             use_gate, block, values=out.size * w[0].size)
    if into is not out:
        out[...] = into
    return done


def contiguous(a):
    """``a``, or a C-contiguous copy of it where it is read-only (inputs from Ray's object
    store) or strided: numba types those apart and compiles every kernel once more for
    each, 17-24 s for the direct convolution's (a strided input to a depthwise layer is
    rare: a concat's channel slice)."""
    return a if a.flags.writeable and a.flags.c_contiguous else np.array(a, order="C")


def _channel_block(n, o):
    """Output channels per parallel job of a depthwise convolution: enough to share a
    workspace among, while leaving several jobs per thread (the last ones balance the
    load). A convolution of several input channels per group takes one job per image: its
    jobs would each lay out every input plane of a group again."""
    return max(1, min(16, (n * o) // 64))


def depthwise_conv2d_backward(x, w, dy, stride, pads, dilation):
    """``(gx, gW)`` of a depthwise CONV2D."""
    x, w = contiguous(x), contiguous(w)
    gx = np.empty(x.shape, dtype=x.dtype)
    gw = np.empty((x.shape[0],) + w.shape[:1] + w.shape[2:], dtype=x.dtype)
    parallel(_depthwise_backward, x.shape[0] * x.shape[1],
             x, w, np.ascontiguousarray(dy), gx, gw, stride[0], stride[1], pads[0], pads[2],
             dilation[0], dilation[1], x.dtype.type(0), values=dy.size * w[0].size)
    return gx, gw.sum(axis=0).reshape(w.shape)
