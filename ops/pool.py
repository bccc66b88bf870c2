"""Pooling: max and average over sliding windows, and over whole maps.

==============  ==============================================  ================
layer           arguments                                       primitive
==============  ==============================================  ================
maxpool         kernel, stride=kernel, pad=0, dilation=1,       maxpool2d
                ceil=false
avgpool         kernel, stride=kernel, pad=0, ceil=false,       avgpool2d
                count_pad=true
maxpool1d,      as maxpool, on [C, L] signals and               maxpool1d,
maxpool3d       [C, D, H, W] volumes                            maxpool3d
avgpool1d,      as avgpool, on [C, L] signals and               avgpool1d,
avgpool3d       [C, D, H, W] volumes                            avgpool3d
global_avgpool  (none); any map [C, ...] -> [C, 1, ...]         global_avgpool
global_maxpool  (none); any map [C, ...] -> [C, 1, ...]         global_maxpool
==============  ==============================================  ================

A rectangular window reduction is separable, so each windowed pool runs as ``kw``
strided-slice reductions along W followed by ``kh`` along H, instead of ``kh*kw``.
Max pooling pads with the lowest value of the dtype (-inf for floats), so padding never
wins a max. Average pooling pads with zeros and divides by a per-position count
computed in closed form, following PyTorch's ``count_include_pad`` rules.

Training: max pooling keeps, per output, the index of its window's maximum (``0 .. kh*kw-1``
in row-major tap order, in the smallest unsigned dtype that holds it): ties go to the first
maximum in that order, and a padding cell never wins. Average pooling keeps nothing but the
geometry: its divisors are recomputed in closed form. Gradients are a strided-slice scatter,
one slice per window tap.

The 1-D pools are the 2-D ones on ``(N, C, 1, L)`` views (a height-1 window), so they run
on every 2-D kernel, the CUDA ones included. The 3-D pools have N-d NumPy-API kernels of
their own, written for any number of spatial dims: separable reductions along each axis
(the last first) for inference, one pass per window tap for the training forward (the
maximum's tap index) and for the gradients; on a GPU they run on CuPy arrays.

The GPU kernels (``cnnc_maxpool_*``, ``cnnc_avgpool_*`` in ``ops/cuda_kernels.py``) cover
the 2-D (and so the 1-D) windowed pools; the global pools are one CuPy reduction each, so
the generic kernels run on CuPy arrays unchanged. The global pools reduce every spatial dim
of a map of any rank.
"""

from __future__ import annotations

import itertools
import math

from ..compiler.symbolic import shape_text
from . import gpu
from . import window
from .base import ArgSpec, Example, ExportError, Layer, Primitive, elements, keeps_nothing
from .window import checked_out, pads4, pair, pool_out
from .xp import as_grad, floating, get_array_module, index_dtype, numpy

# Elements of padded planes per chunk of the NumPy kernels: small enough to stay in cache.
CHUNK_ELEMENTS = 1 << 16


# ---------------------------------------------------------------- shared by the pools

# the checker's side


def _pool_checks(kind):
    """Cross-argument rules of ``kind``: the stride defaults to the kernel; the pad is at
    most half the kernel."""

    def check_args(args, spans, call_span, report):
        if args["stride"] is None:
            args["stride"] = args["kernel"]
        for axis in range(len(args["kernel"])):
            k = args["kernel"][axis]  # PyTorch's limit: half the kernel, not the dilated span
            if args["pad"][axis] > k // 2:
                report(
                    "E207", f"{kind} pad={args['pad'][axis]} is more than half the "
                    f"kernel {k}", spans.get("pad", call_span),
                    help=f"use pad={k // 2} at most; a window must see some input",
                )
                return None
        return args

    return check_args


def _lint(node, in_shape, report):
    window.lint_unused_tail(node, in_shape, report, ceil_fixes=True)


def _fix(node, in_shape, axis, target):
    return window.fix(node, in_shape, axis, target, pool=True)


# spatial dims -> the layer of each windowed pool
MAX_NAMES = {1: "maxpool1d", 2: "maxpool", 3: "maxpool3d"}
AVG_NAMES = {1: "avgpool1d", 2: "avgpool", 3: "avgpool3d"}
# Argument kinds of the 1-D and 3-D pools (ops/base.py): an integer or a list per spatial
# dim (the pad without `same`); ``check_args`` makes each one value per dim.
DIMS_KIND = "dims"
PAD_KIND = "dpad"


def _rank_help(name):
    family = MAX_NAMES if name.startswith("max") else AVG_NAMES

    def rank_help(shape):
        return window.namesake_help(name, family, shape)

    return rank_help


def _global_rank_help(name):
    def rank_help(shape):
        if len(shape) == 1:
            return f"`{name}` works on maps; move it before `flatten`"
        return None

    return rank_help


_WINDOW = [ArgSpec("stride", "pair", None), ArgSpec("pad", "ppad", 0)]


def _infer_global_for(name):
    def infer(shape, a, ctx):
        """``[C, 1, ...]``: every spatial dim reduced, on a map of any rank."""
        if len(shape) < 2:
            ctx.error("E304", op=name, expected="a map [C, L], [C, H, W] or [C, D, H, W]",
                      shape=shape_text(shape), help=_global_rank_help(name)(shape))
            return None
        return (shape[0],) + (1,) * (len(shape) - 1)

    return infer


# the kernels' window geometry


def check_input(x, where):
    """The pooling kernels' one rank rule: ``x`` is ``[N, C, H, W]``."""
    if x.ndim != 4:
        raise ValueError(f"{where}: input must be [N, C, H, W], got shape {tuple(x.shape)}")


def _geometry(x, kernel, stride, pad, dilation, ceil, where):
    """Normalised window arguments and output size ``(Ho, Wo)``, checked to be >= 1."""
    kh, kw = pair(kernel, "kernel")
    sh, sw = pair(kernel if stride is None else stride, "stride")
    dh, dw = pair(dilation, "dilation")
    pads = pads4(pad)
    if min(kh, kw, sh, sw, dh, dw) < 1 or min(pads) < 0:
        raise ValueError(
            f"{where}: kernel, stride and dilation must be >= 1 and pad >= 0, got "
            f"kernel={(kh, kw)}, stride={(sh, sw)}, dilation={(dh, dw)}, pad={pads}"
        )
    h, w = x.shape[2:]
    ho = checked_out(h, kh, sh, pads[:2], dh, ceil, f"{where} height")
    wo = checked_out(w, kw, sw, pads[2:], dw, ceil, f"{where} width")
    return (kh, kw), (sh, sw), (dh, dw), pads, (ho, wo)


def _window_pads(hw, kernel, stride, dilation, pads, out_hw):
    """``pads`` with bottom and right grown, in ceil mode, until the last windows fit."""
    top, bottom, left, right = pads
    need_h = (out_hw[0] - 1) * stride[0] + dilation[0] * (kernel[0] - 1) + 1
    need_w = (out_hw[1] - 1) * stride[1] + dilation[1] * (kernel[1] - 1) + 1
    bottom = max(bottom, need_h - hw[0] - top)
    right = max(right, need_w - hw[1] - left)
    return (top, bottom, left, right)


def _pad_to_windows(x, kernel, stride, dilation, pads, out_hw, fill, xp):
    """Pad ``x`` by ``pads`` and, in ceil mode, far enough right and down that the last
    windows fit; the extra cells hold ``fill`` just like the padding."""
    n, c, h, w = x.shape
    top, bottom, left, right = _window_pads((h, w), kernel, stride, dilation, pads, out_hw)
    if top == bottom == left == right == 0:
        return x
    xpad = xp.full((n, c, h + top + bottom, w + left + right), fill, dtype=x.dtype)
    xpad[:, :, top:top + h, left:left + w] = x
    return xpad


def _pooled(x, kernel, stride, dilation, pads, out_hw, fill, ufunc, out, divisor=None):
    """Reduce every window of ``x`` with ``ufunc`` into ``out`` (then divide by ``divisor``).

    Planes are padded a chunk at a time into a small buffer and reduced there as flat
    arrays: in a plane stored row after row, the next tap to the right is one element
    further on and the next tap down ``Wp`` further on, so each tap is one long contiguous
    ufunc call, whatever the width. Windows are evaluated at every position (the flat runs
    wrap across rows; those positions are never read), then the strided output positions
    are gathered. ``out`` must be ``(N, C, Ho, Wo)``; it may be a channel slice.
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    kh, kw = kernel
    sh, sw = stride
    dh, dw = dilation
    ho, wo = out_hw
    top, bottom, left, right = _window_pads((h, w), kernel, stride, dilation, pads, out_hw)
    hp, wp = h + top + bottom, w + left + right
    plane = hp * wp
    if out.flags.c_contiguous:  # planes of every image in one run
        xs, outs, groups = [x.reshape(n * c, h, w)], [out.reshape(n * c, ho, wo)], n * c
    else:  # a channel slice of a concat: image by image
        xs, outs, groups = list(x), list(out), c
    chunk = max(1, min(groups, CHUNK_ELEMENTS // plane))
    buf = xp.full((chunk, hp, wp), fill, dtype=x.dtype)
    flat = buf.reshape(-1)
    r1 = xp.empty(chunk * plane, dtype=x.dtype)
    r2 = xp.empty(chunk * plane, dtype=x.dtype)
    for xsrc, odst in zip(xs, outs):
        for p0 in range(0, groups, chunk):
            m = min(chunk, groups - p0)
            buf[:m, top:top + h, left:left + w] = xsrc[p0:p0 + m]
            res, length = flat, m * plane
            for k, step, acc in ((kw, dw, r1), (kh, dh * wp, r2)):
                if k == 1:
                    continue
                length -= (k - 1) * step
                ufunc(res[:length], res[step:step + length], out=acc[:length])
                for i in range(2, k):
                    ufunc(acc[:length], res[i * step:i * step + length], out=acc[:length])
                res = acc
            windows = res[:m * plane].reshape(m, hp, wp)
            picked = windows[:, 0:(ho - 1) * sh + 1:sh, 0:(wo - 1) * sw + 1:sw]
            if divisor is None:
                odst[p0:p0 + m] = picked
            else:
                xp.divide(picked, divisor, out=odst[p0:p0 + m])
    return out


def _check_out(out, shape, dtype, where):
    if out is not None and (tuple(out.shape) != shape or out.dtype != dtype):
        raise ValueError(f"{where}: out must be {list(shape)} {dtype}, got "
                         f"{list(out.shape)} {out.dtype}")


def _tap(a, i, j, stride_dilation, out_hw):
    """The strided slice of ``a (N, C, Hp, Wp)`` that tap ``(i, j)`` of every window reads."""
    (sh, sw), (dh, dw) = stride_dilation
    ho, wo = out_hw
    rows = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
    cols = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
    return a[:, :, rows, cols]


def _scatter(g_taps, x_shape, geometry, dtype, xp):
    """Sum ``g_taps(i, j)`` (each ``(N, C, Ho, Wo)``) onto the windows' cells; crop padding."""
    kernel, stride, dilation, pads, out_hw = geometry
    n, c, h, w = x_shape
    top, bottom, left, right = _window_pads(x_shape[2:], kernel, stride, dilation, pads,
                                            out_hw)
    gpad = xp.zeros((n, c, h + top + bottom, w + left + right), dtype=dtype)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            _tap(gpad, i, j, (stride, dilation), out_hw)[...] += g_taps(i, j)
    if top == bottom == left == right == 0:
        return gpad
    return xp.ascontiguousarray(gpad[:, :, top:top + h, left:left + w])


# the CUDA kernels' window arguments, shared by the GPU functions


def _gpu_setup(x, kernel, stride, pad, dilation, ceil, where, xp):
    """Checked geometry as the NumPy kernel computes it (same messages), and ``x`` as a
    contiguous array on the device."""
    check_input(x, where)
    x = gpu.contiguous(x, x.dtype, xp)
    geometry = _geometry(x, kernel, stride, pad, dilation, ceil, where)
    return x, geometry


def _gpu_args(x, geometry):
    (kh, kw), (sh, sw), (dh, dw), pads, (ho, wo) = geometry
    h, w = x.shape[2:]
    return h, w, ho, wo, kh, kw, sh, sw, pads, dh, dw


# the slow references' output size


def _f64(a):
    return numpy.asarray(a, dtype=numpy.float64)


def _ref_out_len(n, k, s, p_begin, p_end, d, ceil):
    """floor (or ceil) of ``(n + p_begin + p_end - d(k-1) - 1) / s``, plus 1; in ceil mode
    a last window starting in the right padding is dropped (PyTorch). Written out again
    rather than imported: the oracle shares no arithmetic with the kernels."""
    exact = (n + p_begin + p_end - d * (k - 1) - 1) / s
    if ceil:
        out = math.ceil(exact) + 1
        last_start = (out - 1) * s - p_begin  # in input coordinates
        if last_start >= n:
            out -= 1
    else:
        out = math.floor(exact) + 1
    if out < 1:
        raise ValueError(f"output size {out} < 1")
    return out


# the ONNX emitters' padding


def _end_pads(n, k, s, p, d, ceil):
    """``(begin, end)`` padding under which floor mode gives the plan's (ceil) size."""
    size = pool_out(n, k, s, p, d, ceil)
    reach = (size - 1) * s + d * (k - 1) + 1  # the padded length the last window needs
    return p, max(p, reach - n - p)


def _pool_pads(step, in_shape, dilation):
    """Per-axis ``(begin, end)`` pads of a pooling step in floor mode, and the kernel; any
    number of spatial dims."""
    a = step.attrs
    n = len(in_shape) - 1
    kernel = window.dims(a["kernel"], n, "kernel")
    stride = window.dims(a["stride"] if a["stride"] is not None else a["kernel"], n, "stride")
    pairs = window.pad_pairs(a["pad"], n)
    if any(begin != end for begin, end in pairs):
        raise ExportError(f"{step.name}: pooling pads must be the same before and after, got "
                          f"{window.flat_pads(pairs)}")
    pads = [_end_pads(in_shape[1 + axis], kernel[axis], stride[axis], pairs[axis][0],
                      dilation[axis], a["ceil"]) for axis in range(n)]
    return kernel, stride, pads


def _onnx_pads(pads) -> list:
    """``[(top, bottom), (left, right)]`` -> ONNX's ``[top, left, bottom, right]``: every
    begin, then every end."""
    return [begin for begin, _ in pads] + [end for _, end in pads]


def _pad(g, x, pads, value) -> str:
    amounts = [0, 0] + [begin for begin, _ in pads] + [0, 0] + [end for _, end in pads]
    amounts = g.const("pads", amounts, numpy.int64)
    fill = g.const("pad_value", value, numpy.float32)
    return g.node("Pad", [x, amounts, fill], g.temp("padded"), "pad", mode="constant")


# the PyTorch mapping's padding, the examples' inputs


def _torch_pad(step, n=2):
    """The step's padding as PyTorch's ``(ph, pw)`` (one per spatial dim): the same before
    and after."""
    pairs = window.pad_pairs(step.attrs.get("pad", 0), n)
    if any(begin != end for begin, end in pairs):
        raise ValueError(f"{step.name}: PyTorch pools pad the same before and after, got "
                         f"{window.flat_pads(pairs)}")
    return tuple(begin for begin, _ in pairs)


def _distinct(rng, shape):
    """Values 0.01 apart in random order: no two elements tie within a finite difference."""
    size = int(numpy.prod(shape))
    return (rng.permutation(size) - size / 2).reshape(shape) * 0.01


# ---------------------------------------------------------------- maxpool2d


def _infer_maxpool(shape, a, ctx):
    hw = window.spatial("maxpool", shape, ctx, a["kernel"], a["stride"], a["pad"],
                        a["dilation"], a["ceil"])
    return None if hw is None else (shape[0],) + hw


def _lower_maxpool(node, in_shapes):
    a = node.args
    return "maxpool2d", dict(kernel=a["kernel"], stride=a["stride"], pad=a["pad"],
                             dilation=a["dilation"], ceil=a["ceil"])


MAXPOOL = Layer(
    "maxpool",
    [ArgSpec("kernel", "pair")] + _WINDOW + [
        ArgSpec("dilation", "pair", 1),
        ArgSpec("ceil", "bool", False),
    ],
    (3,),
    _infer_maxpool,
    _lower_maxpool,
    check_args=_pool_checks("maxpool"),
    lint=_lint,
    formula=window.formula,
    fix=_fix,
    rank_help=_rank_help("maxpool"),
    field="window",
    doc="max pooling",
)


def _lowest(dtype, xp):
    if dtype.kind == "f":
        return -xp.inf
    return xp.iinfo(dtype).min


def maxpool2d(x, *, kernel, stride=None, pad=0, dilation=1, ceil=False, out=None):
    """Max over windows of ``x (N, C, H, W)``; ``stride`` defaults to ``kernel``.

    ``ceil`` rounds the output size up, dropping a last window that would start in the
    right padding (PyTorch's rule). Returns a contiguous ``(N, C, Ho, Wo)``.
    """
    xp = get_array_module(x)
    x = xp.asarray(x)
    check_input(x, "maxpool2d")
    kernel, stride, dilation, pads, out_hw = _geometry(
        x, kernel, stride, pad, dilation, ceil, "maxpool2d"
    )
    _check_out(out, x.shape[:2] + out_hw, x.dtype, "maxpool2d")
    if out is None:
        out = xp.empty(x.shape[:2] + out_hw, dtype=x.dtype)
    compiled = (_compiled_maxpool(x) if out_hw[1] >= INFER_WIDE_POOL and min(stride) >= 2
                else None)
    if compiled is not None:  # compiled, in parallel over the planes (INFER_WIDE_POOL)
        into = out if out.flags.c_contiguous else numpy.empty(out.shape, dtype=out.dtype)
        from .fast import contiguous  # (loaded with the kernel)

        planes = contiguous(x)
        compiled[2](planes, into, *kernel, *stride, *dilation, pads[0], pads[2])
        if into is not out:
            out[...] = into
        return out
    return _pooled(x, kernel, stride, dilation, pads, out_hw, _lowest(x.dtype, xp),
                   xp.maximum, out)


def _first_real_tap(n, k, s, d, p_begin, n_out, xp):
    """Per output along one axis: the first window tap inside ``[0, n)`` (0 if none).
    A few hundred numbers at most: worked out on the host, then moved to ``xp``."""
    cells = numpy.arange(n_out)[:, None] * s - p_begin + numpy.arange(k)[None, :] * d
    real = (cells >= 0) & (cells < n)  # (n_out, k)
    return xp.asarray(numpy.argmax(real, axis=1))  # argmax of booleans: the first True


def maxpool2d_forward(x, *, kernel, stride=None, pad=0, dilation=1, ceil=False, train=True,
                      rng=None):
    """Max over windows, as ``maxpool2d``, and the index of each maximum."""
    xp = get_array_module(x)
    x = floating(x, xp)
    check_input(x, "maxpool2d")
    geometry = _geometry(x, kernel, stride, pad, dilation, ceil, "maxpool2d")
    kernel, stride, dilation, pads, out_hw = geometry
    kh, kw = kernel
    n, c, h, w = x.shape
    compiled = _compiled_maxpool(x)
    if compiled is not None:  # one pass over every window, in parallel over the planes
        best = numpy.empty((n, c) + out_hw, dtype=x.dtype)
        index = numpy.empty((n, c) + out_hw, dtype=index_dtype(kh * kw))
        # writable and contiguous (a read-only input, from Ray's object store, would not
        # type: fast.phase_copy also writes planes back, in its other direction)
        from .fast import contiguous  # (loaded with the kernel)

        planes = contiguous(x)
        compiled[0](planes, best, index, kh, kw, *stride, *dilation, pads[0], pads[2])
        return best, (index, tuple(x.shape), geometry, x.dtype)
    xpad = _pad_to_windows(x, kernel, stride, dilation, pads, out_hw, -xp.inf, xp)
    first_h = _first_real_tap(h, kh, stride[0], dilation[0], pads[0], out_hw[0], xp)
    first_w = _first_real_tap(w, kw, stride[1], dilation[1], pads[2], out_hw[1], xp)
    index = xp.empty((n, c) + out_hw, dtype=index_dtype(kh * kw))  # (N, C, Ho, Wo)
    index[...] = first_h[:, None] * kw + first_w[None, :]
    best = xp.full((n, c) + out_hw, -xp.inf, dtype=x.dtype)
    above = xp.empty(best.shape, dtype=bool)
    step = xp.empty_like(index)
    for i in range(kh):
        for j in range(kw):
            tap = _tap(xpad, i, j, (stride, dilation), out_hw)
            # strictly greater: a tie keeps the earlier tap; padding (-inf) never beats
            # the first real cell that ``index`` starts at
            xp.greater(tap, best, out=above)
            # index = tap's number where above, without branching on the mask (a masked
            # copy is 50x slower on random masks): index += above * (t - index), which
            # wraps around harmlessly in unsigned arithmetic
            xp.subtract(index.dtype.type(i * kw + j), index, out=step)
            xp.multiply(step, above, out=step)
            xp.add(index, step, out=index)
            xp.maximum(best, tap, out=best)  # propagates NaN, as the inference kernel does
    return best, (index, tuple(x.shape), geometry, x.dtype)


def maxpool2d_backward(saved, dy):
    index, x_shape, geometry, dtype = saved
    xp = get_array_module(index)
    kw = geometry[0][1]
    dy = as_grad(dy, index.shape, dtype, xp, "maxpool2d")
    compiled = _compiled_maxpool(dy)
    if compiled is not None:
        _, (sh, sw), (dh, dw), pads, _ = geometry
        gx = numpy.empty(x_shape, dtype=dy.dtype)
        compiled[1](index, dy, gx, kw, sh, sw, dh, dw, pads[0], pads[2])
        return (gx,), ()
    hit = xp.empty(index.shape, dtype=bool)
    share = xp.empty(index.shape, dtype=dy.dtype)

    def g_taps(i, j):
        xp.equal(index, index.dtype.type(i * kw + j), out=hit)
        return xp.multiply(dy, hit, out=share)  # dy where this tap won, else 0

    return (_scatter(g_taps, x_shape, geometry, dy.dtype, xp),), ()


# The compiled training pair (numba, where ops/fast.py's kernels run): per (image, channel)
# plane, one visit of every window's cells, the planes shared among threads
# (`fast.parallel`). The NumPy-API code above makes 5 passes per window tap over strided
# views (and 2 more per tap backward); these keep the same index and tie rule. At
# ResNet-18's stem pool (batch 8, one thread) the forward took 70 ms where NumPy took 120,
# the backward 16 ms where NumPy took 100.
_MAXPOOL_COMPILED = []  # [(forward, backward)] once built


def _compiled_maxpool(a):
    """The compiled ``(forward, backward)`` of max pooling's training pair when
    ``ops/fast.py``'s kernels take ``a`` (numba installed and on, a NumPy float array);
    else None."""
    from . import fast

    if not fast.usable(a):
        return None
    if not _MAXPOOL_COMPILED:
        _MAXPOOL_COMPILED.append(_build_maxpool())
    return _MAXPOOL_COMPILED[0]


# Output rows at least this wide take the compiled training forward's phase-plane layout.
WIDE_POOL = 16
# Inference takes it (`_build_maxpool`'s ``infer``, no index) for output rows at least this
# wide at a stride of 2 or more. One thread, batch 4, in turns against the NumPy path
# (`_pooled`): ResNet's 3x3 stride-2 pool of 64 x 112 x 112 (56 outputs a row), 0.64-0.77x
# the time; GoogLeNet's of 192 x 56 x 56 (28), 0.97-1.23x; at stride 1 (256 x 28 x 28)
# 1.2x: the NumPy path stays there.
INFER_WIDE_POOL = 32
# What a tap of a short row (the plane read at the stride, a scalar loop: about 6 ns) and
# a cell of the backward (a scatter: about 1.3 ns) cost in ``fast.parallel``'s values
# (``MIN_PARALLEL_VALUES``: about 0.2 ns each): the digits example's pools, 16 and 4 outputs
# a plane, ran on one thread though their 0.3-0.6 ms would have paid for two.
NARROW_TAP_VALUES = 32
BACKWARD_VALUES = 6


def _build_maxpool():
    # the kernels' helpers are the module's globals, not cells of a closure: numba keys its
    # disk cache on a closure's pickled cells, and a compiled function pickles with an id
    # of its process, so a kernel closing over one compiled again in every process (the
    # training forward below: 4 s at the start of every training run)
    global _start_row, _narrow_rows, _phase_taps
    import numba
    import numpy as np

    from . import fast

    jit = numba.njit(cache=True, nogil=True, error_model="numpy")

    @fast.inline
    def _start_row(m, t, y0, h, kh, kw, dh, firsts):
        """An output row's running maxima at -inf and its indices at each window's first
        real tap (``firsts``: the column's; ``y0``: the window's first input row)."""
        fi = 0
        while fi < kh - 1 and not 0 <= y0 + fi * dh < h:
            fi += 1
        for ox in range(m.shape[0]):
            m[ox] = -np.inf
            t[ox] = fi * kw + firsts[ox]

    @fast.inline
    def _phase_taps(taps, kh, kw, sh, sw, dh, dw):
        """Each tap's phase plane, phase row and phase column (``taps (kh*kw, 3)``): where
        its run over an output row starts in the phase planes of `fast.phase_copy`."""
        for i in range(kh):
            for j in range(kw):
                taps[i * kw + j, 0] = (i * dh) % sh * sw + (j * dw) % sw
                taps[i * kw + j, 1] = (i * dh) // sh
                taps[i * kw + j, 2] = (j * dw) // sw

    @fast.inline
    def _narrow_rows(plane, m_rows, t_rows, firsts, spans, kh, kw, sh, sw, dh, top):
        """`forward` on one plane of short output rows: the taps read at the stride from
        the plane itself, the indices written in their own dtype (``spans[j]``: the first
        output column whose tap ``j`` is in the row, the last + 1, and the tap's shift)."""
        h = plane.shape[0]
        for oy in range(m_rows.shape[0]):
            y0 = oy * sh - top
            m = m_rows[oy]
            t = t_rows[oy]
            _start_row(m, t, y0, h, kh, kw, dh, firsts)
            for i in range(kh):
                yy = y0 + i * dh
                if yy < 0 or yy >= h:
                    continue
                row = plane[yy]
                for j in range(kw):
                    shift = spans[j, 2]
                    tap = i * kw + j
                    for ox in range(spans[j, 0], spans[j, 1]):
                        v = row[ox * sw + shift]
                        mo = m[ox]
                        up = v > mo
                        t[ox] = tap if up else t[ox]
                        m[ox] = v if up | (v != v) else mo

    @jit
    def forward(p0, p1, x, best, index, kh, kw, sh, sw, dh, dw, top, left):
        """``best`` and ``index`` (``(N, C, Ho, Wo)``) of max pooling ``x``, an output row
        at a time, tap by tap: the index starts at the window's first real tap and moves
        to a tap strictly greater (ties keep the first); a NaN, once met, stays the
        maximum (as ``maximum`` propagates it). No branch on the data: a mispredicted one
        per tap cost 3x. Rows of ``WIDE_POOL`` outputs or more: each plane is first laid
        out as the phase planes of its padded self (``fast.phase_copy``, the padding
        -inf, which never wins), so that a tap's run over an output row is contiguous and
        the loop vectorises (read at the stride from the plane itself, ResNet's 3x3
        stride-2 pooling ran 4x slower). Shorter rows read the plane itself: there the
        layout cost more than it saved (the digits example's 4x4 maps, 1.65x)."""
        n, c, h, w = x.shape
        ho, wo = best.shape[2], best.shape[3]
        # borrowed: the views below count no references (see fast.borrow)
        x, best, index = fast.borrow(x), fast.borrow(best), fast.borrow(index)
        planes = x.reshape(n * c, h, w)
        bests = best.reshape(n * c, ho, wo)
        indices = index.reshape(n * c, ho, wo)
        hq = max(-(-(h + top) // sh), ho + ((kh - 1) * dh) // sh)
        wq = max(-(-(w + left) // sw), wo + ((kw - 1) * dw) // sw)
        narrow = wo < WIDE_POOL
        laid = np.full((1, 1, 1) if narrow else (sh * sw, hq + 1, wq), -np.inf,
                       dtype=x.dtype)
        phases = fast.borrow(laid)
        first_col = np.empty(wo, dtype=np.int32)  # the first real tap of each column
        firsts = fast.borrow(first_col)
        # a row's indices as int32 while the taps run (uint8 ones kept the loop scalar, 5x
        # slower: the select mixes a float32 comparison with 8-bit lanes)
        row_index = np.empty(wo, dtype=np.int32)
        t = fast.borrow(row_index)
        for ox in range(wo):
            x0 = ox * sw - left
            fj = 0
            while fj < kw - 1 and not 0 <= x0 + fj * dw < w:
                fj += 1
            firsts[ox] = fj
        # per tap, once per call (divisions by the stride per tap and row were most of a
        # 4x4 plane's time): its columns and shift in the plane (short rows), its phase
        # plane, phase row and phase column (long rows)
        table = np.empty((kh * kw, 3), dtype=np.int64)
        taps = fast.borrow(table)
        if narrow:
            for i in range(kh):
                for j in range(kw):
                    shift = j * dw - left
                    at = i * kw + j
                    taps[at, 0] = max(0, -(shift // sw))  # outputs whose tap j is in the row
                    taps[at, 1] = min(wo, (w - 1 - shift) // sw + 1)
                    taps[at, 2] = shift
        else:
            _phase_taps(taps, kh, kw, sh, sw, dh, dw)
        for p in range(p0, p1):  # jobs: n * c
            plane = planes[p]
            if narrow:
                _narrow_rows(plane, bests[p], indices[p], firsts, taps[:kw], kh, kw, sh, sw,
                             dh, top)
                continue
            fast.phase_copy(plane, phases, top, left, sh, sw, True)
            for oy in range(ho):
                m = bests[p, oy]
                _start_row(m, t, oy * sh - top, h, kh, kw, dh, firsts)
                for tap in range(kh * kw):
                    run = phases[taps[tap, 0], oy + taps[tap, 1],
                                 taps[tap, 2]:taps[tap, 2] + wo]
                    for ox in range(wo):
                        v = run[ox]
                        mo = m[ox]
                        up = v > mo
                        t[ox] = tap if up else t[ox]
                        m[ox] = v if up | (v != v) else mo
                kept = indices[p, oy]
                for ox in range(wo):
                    kept[ox] = t[ox]
        fast.keep(laid)
        fast.keep(first_col)
        fast.keep(row_index)
        fast.keep(table)

    @jit
    def backward(p0, p1, index, dy, gx, kw, sh, sw, dh, dw, top, left):
        """``gx`` (overwritten): each ``dy`` added to the cell its window's index names
        (none where that cell is padding)."""
        n, c, h, w = gx.shape
        ho, wo = dy.shape[2], dy.shape[3]
        index, dy, gx = fast.borrow(index), fast.borrow(dy), fast.borrow(gx)
        for p in range(p0, p1):  # jobs: n * c
            b = p // c
            ch = p % c
            plane = gx[b, ch]
            for yy in range(h):  # (a loop: numba's slice assignment does not vectorise)
                row = plane[yy]
                for xx in range(w):
                    row[xx] = 0
            for oy in range(ho):
                for ox in range(wo):
                    t = index[b, ch, oy, ox]
                    yy = oy * sh - top + (t // kw) * dh
                    xx = ox * sw - left + (t % kw) * dw
                    if 0 <= yy < h and 0 <= xx < w:
                        gx[b, ch, yy, xx] += dy[b, ch, oy, ox]

    @jit
    def infer(p0, p1, x, best, kh, kw, sh, sw, dh, dw, top, left):
        """``best (N, C, Ho, Wo)``: max pooling of ``x`` for inference (no index), for rows
        of ``INFER_WIDE_POOL`` outputs or more: each plane laid out as the phase planes of its
        padded self (as `forward` does; the padding -inf, which never wins), then each
        output row the maxima of its taps' contiguous runs. A NaN, once met, stays the
        maximum (as ``maximum`` propagates it)."""
        n, c, h, w = x.shape
        ho, wo = best.shape[2], best.shape[3]
        x, best = fast.borrow(x), fast.borrow(best)
        planes = x.reshape(n * c, h, w)
        bests = best.reshape(n * c, ho, wo)
        hq = max(-(-(h + top) // sh), ho + ((kh - 1) * dh) // sh)
        wq = max(-(-(w + left) // sw), wo + ((kw - 1) * dw) // sw)
        laid = np.full((sh * sw, hq + 1, wq), -np.inf, dtype=x.dtype)
        phases = fast.borrow(laid)
        table = np.empty((kh * kw, 3), dtype=np.int64)  # per tap: phase, row, column
        taps = fast.borrow(table)
        _phase_taps(taps, kh, kw, sh, sw, dh, dw)
        # partial maxima, ping-ponged: each tap's pass reads one buffer and writes the
        # other (or the output row, the last): an update in place did not vectorise
        pair = np.empty((2, wo), dtype=x.dtype)
        partial = fast.borrow(pair)
        count = kh * kw
        for p in range(p0, p1):  # jobs: n * c
            fast.phase_copy(planes[p], phases, top, left, sh, sw, True)
            for oy in range(ho):
                m = bests[p, oy]
                src = phases[taps[0, 0], oy + taps[0, 1], taps[0, 2]:taps[0, 2] + wo]
                if count == 1:
                    for ox in range(wo):
                        m[ox] = src[ox]
                for tap in range(1, count):
                    run = phases[taps[tap, 0], oy + taps[tap, 1], taps[tap, 2]:taps[tap, 2] + wo]
                    dst = m if tap == count - 1 else partial[tap % 2]
                    for ox in range(wo):  # as maximum(mo, v) does: a tie takes v (the
                        v = run[ox]  # later tap's bits), a NaN in mo (the first) stays
                        mo = src[ox]
                        dst[ox] = mo if (mo != mo) | (mo > v) else v
                    src = dst
        fast.keep(pair)
        fast.keep(table)
        fast.keep(laid)

    def infer_all(x, best, *geometry):
        fast.parallel(infer, x.shape[0] * x.shape[1], x, best, *geometry,
                      values=best.size * geometry[0] * geometry[1] + x.size)

    def forward_all(x, best, index, *geometry):
        taps = best.size * geometry[0] * geometry[1]
        if best.shape[3] < WIDE_POOL:
            taps *= NARROW_TAP_VALUES  # the scalar loop of short rows
        fast.parallel(forward, x.shape[0] * x.shape[1], x, best, index, *geometry,
                      values=taps)

    def backward_all(index, dy, gx, *geometry):
        fast.parallel(backward, gx.shape[0] * gx.shape[1], index, dy, gx, *geometry,
                      values=(gx.size + dy.size) * BACKWARD_VALUES)

    return forward_all, backward_all, infer_all


def _gpu_maxpool_raw(x, geometry, save_argmax, xp, out=None):
    h, w, ho, wo, kh, kw, sh, sw, pads, dh, dw = _gpu_args(x, geometry)
    if h * w >= 1 << 31:
        raise ValueError(f"maxpool2d: an input plane of {h}x{w} cells is past int32 indexing")
    y = gpu.target(out, x.shape[:2] + (ho, wo), x.dtype, xp, "maxpool2d")
    argmax = xp.empty(y.shape, dtype=numpy.int32) if save_argmax else gpu.dummy(numpy.int32, xp)
    gpu.launch("cnnc_maxpool_forward", x.dtype, y.size, x, y, argmax, int(save_argmax), y.size,
               h, w, ho, wo, kh, kw, sh, sw, pads[0], pads[2], dh, dw, -numpy.inf)
    return y, argmax


def gpu_maxpool2d(x, *, kernel, stride=None, pad=0, dilation=1, ceil=False, out=None):
    """MAXPOOL2D on the GPU: padding never wins, ties go to the first tap."""
    xp = gpu.cupy()
    x, geometry = _gpu_setup(x, kernel, stride, pad, dilation, ceil, "maxpool2d", xp)
    return gpu.deliver(_gpu_maxpool_raw(x, geometry, False, xp, out)[0], out)


def gpu_maxpool2d_forward(x, *, train=True, rng=None, kernel, stride=None, pad=0, dilation=1,
                          ceil=False):
    xp = gpu.cupy()
    x, geometry = _gpu_setup(x, kernel, stride, pad, dilation, ceil, "maxpool2d", xp)
    y, argmax = _gpu_maxpool_raw(x, geometry, True, xp)
    return y, dict(argmax=argmax, shape=x.shape, geometry=geometry, dtype=x.dtype)


def gpu_maxpool2d_backward(saved, dy):
    xp = gpu.cupy()
    shape, dtype = saved["shape"], saved["dtype"]
    dy = gpu.grad_input(dy, saved["argmax"].shape, dtype, xp, "maxpool2d")
    gx = xp.empty(shape, dtype=dtype)
    h, w, ho, wo, kh, kw, sh, sw, pads, dh, dw = _gpu_args(gx, saved["geometry"])
    gpu.launch("cnnc_maxpool_backward", dtype, gx.size, dy, saved["argmax"], gx, gx.size,
               h, w, ho, wo, kh, kw, sh, sw, pads[0], pads[2], dh, dw)
    return (gx,), ()


def reference_maxpool2d(x, *, kernel, stride=None, pad=0, dilation=1, ceil=False):
    x = _f64(x)
    n_batch, channels, height, width = x.shape
    kh, kw = pair(kernel)
    sh, sw = pair(kernel if stride is None else stride)
    dh, dw = pair(dilation)
    top, bottom, left, right = pads4(pad)
    ho = _ref_out_len(height, kh, sh, top, bottom, dh, ceil)
    wo = _ref_out_len(width, kw, sw, left, right, dw, ceil)
    y = numpy.empty((n_batch, channels, ho, wo))
    for oh in range(ho):
        for ow in range(wo):
            best = numpy.full((n_batch, channels), -numpy.inf)
            for i in range(kh):
                ih = oh * sh - top + i * dh
                for j in range(kw):
                    iw = ow * sw - left + j * dw
                    if 0 <= ih < height and 0 <= iw < width:
                        best = numpy.maximum(best, x[:, :, ih, iw])
            y[:, :, oh, ow] = best
    return y


def _emit_maxpool(g, step, xs, ws, out, in_shapes):
    """ONNX MaxPool in floor mode, the end padding of a ceil-mode pool made explicit
    (runtimes disagree on ``ceil_mode``); any number of spatial dims."""
    n = len(in_shapes[0]) - 1
    dilation = window.dims(step.attrs["dilation"], n, "dilation")
    kernel, stride, pads = _pool_pads(step, in_shapes[0], dilation)
    x = xs[0]
    if any(end >= k for (_, end), k in zip(pads, kernel)):
        # ONNX Runtime wants every pad below the kernel size: pad with -inf up front
        # (padding never wins a max, exactly as MaxPool's own padding).
        x = _pad(g, x, pads, -numpy.inf)
        pads = [(0, 0)] * n
    g.node("MaxPool", [x], out, kernel_shape=list(kernel), strides=list(stride),
           dilations=list(dilation), pads=_onnx_pads(pads), ceil_mode=0)


def _torch_maxpool(step, xs, ws, training):
    """``F.max_pool1d``, ``2d`` or ``3d`` by the input's rank."""
    import torch

    a = step.attrs
    n = xs[0].dim() - 2
    return getattr(torch.nn.functional, f"max_pool{n}d")(
        xs[0], a["kernel"], a.get("stride"), _torch_pad(step, n), a.get("dilation", 1),
        ceil_mode=a.get("ceil", False),
    )


def _examples_maxpool2d(rng):
    def x(h, w):
        return _distinct(rng, (2, 3, h, w))

    return [
        Example([x(6, 6)], attrs=dict(kernel=2, stride=None, pad=0, dilation=1, ceil=False)),
        Example([x(7, 6)], attrs=dict(kernel=3, stride=2, pad=1, dilation=1, ceil=True)),
        Example([x(7, 8)], attrs=dict(kernel=(3, 2), stride=(2, 1), pad=(1, 0), dilation=1,
                                      ceil=False)),
        Example([x(7, 7)], attrs=dict(kernel=2, stride=1, pad=1, dilation=2, ceil=True),
                note="dilated, ceil"),
        Example([x(6, 5)], attrs=dict(kernel=(2, 3), stride=None, pad=(1, 0, 0, 1),
                                      dilation=(1, 2), ceil=False),
                onnx=False, torch=False, note="asymmetric pad"),
    ]


# ---------------------------------------------------------------- avgpool2d


def _infer_avgpool(shape, a, ctx):
    hw = window.spatial("avgpool", shape, ctx, a["kernel"], a["stride"], a["pad"], (1, 1),
                        a["ceil"])
    return None if hw is None else (shape[0],) + hw


def _lower_avgpool(node, in_shapes):
    a = node.args
    return "avgpool2d", dict(kernel=a["kernel"], stride=a["stride"], pad=a["pad"],
                             ceil=a["ceil"], count_pad=a["count_pad"])


AVGPOOL = Layer(
    "avgpool",
    [ArgSpec("kernel", "pair")] + _WINDOW + [
        ArgSpec("ceil", "bool", False),
        ArgSpec("count_pad", "bool", True),
    ],
    (3,),
    _infer_avgpool,
    _lower_avgpool,
    check_args=_pool_checks("avgpool"),
    lint=_lint,
    formula=window.formula,
    fix=_fix,
    rank_help=_rank_help("avgpool"),
    field="window",
    doc="average pooling",
)


def _divisor_1d(n, k, s, p_begin, p_end, n_out, count_pad, xp):
    """How many cells each of the ``n_out`` windows along one axis averages over.

    With ``count_pad`` a window counts the padding but is clipped at the end of the padded
    input (``n + p_end``); a ceil-mode window hanging past it is shortened there. Without
    it, only the real cells ``[0, n)`` count.
    """
    start = xp.arange(n_out) * s - p_begin
    end = start + k
    if count_pad:
        return xp.minimum(end, n + p_end) - start
    return xp.minimum(end, n) - xp.maximum(start, 0)


def _divisor(hw, geometry, count_pad, dtype, xp):
    """The ``(Ho, Wo)`` divisors of every window, as ``dtype``."""
    kernel, stride, _, pads, out_hw = geometry
    h, w = hw
    count_h = _divisor_1d(h, kernel[0], stride[0], pads[0], pads[1], out_hw[0], count_pad, xp)
    count_w = _divisor_1d(w, kernel[1], stride[1], pads[2], pads[3], out_hw[1], count_pad, xp)
    return (count_h[:, None] * count_w[None, :]).astype(dtype)  # (Ho, Wo)


def avgpool2d(x, *, kernel, stride=None, pad=0, ceil=False, count_pad=True, out=None):
    """Mean over windows of ``x (N, C, H, W)``; ``stride`` defaults to ``kernel``.

    ``count_pad=True`` divides by the window size clipped to the padded input (PyTorch's
    ``count_include_pad=True``), ``False`` by the number of real input cells in the window.
    """
    xp = get_array_module(x)
    x = floating(x, xp)
    check_input(x, "avgpool2d")
    geometry = _geometry(x, kernel, stride, pad, 1, ceil, "avgpool2d")
    kernel, stride, dilation, pads, out_hw = geometry
    _check_out(out, x.shape[:2] + out_hw, x.dtype, "avgpool2d")
    if out is None:
        out = xp.empty(x.shape[:2] + out_hw, dtype=x.dtype)
    divisor = _divisor(x.shape[2:], geometry, count_pad, x.dtype, xp)
    divisor = xp.maximum(divisor, 1)  # a window of padding only sums to 0; keep it 0
    return _pooled(x, kernel, stride, dilation, pads, out_hw, 0, xp.add, out, divisor)


def avgpool2d_forward(x, *, kernel, stride=None, pad=0, ceil=False, count_pad=True,
                      train=True, rng=None):
    y = avgpool2d(x, kernel=kernel, stride=stride, pad=pad, ceil=ceil, count_pad=count_pad)
    geometry = _geometry(x, kernel, stride, pad, 1, ceil, "avgpool2d")
    return y, (tuple(x.shape), geometry, count_pad, y.dtype)


def avgpool2d_backward(saved, dy):
    x_shape, geometry, count_pad, dtype = saved
    out_hw = geometry[4]
    xp = get_array_module(dy)
    dy = as_grad(dy, x_shape[:2] + out_hw, dtype, xp, "avgpool2d")
    divisor = _divisor(x_shape[2:], geometry, count_pad, dtype, xp)
    share = dy / xp.maximum(divisor, 1)  # what each cell of a window receives

    def g_taps(i, j):
        return share

    return (_scatter(g_taps, x_shape, geometry, dtype, xp),), ()


def gpu_avgpool2d(x, *, kernel, stride=None, pad=0, ceil=False, count_pad=True, out=None):
    """AVGPOOL2D on the GPU: divisors as in ``avgpool2d``."""
    xp = gpu.cupy()
    x, geometry = _gpu_setup(x, kernel, stride, pad, 1, ceil, "avgpool2d", xp)
    h, w, ho, wo, kh, kw, sh, sw, pads, _, _ = _gpu_args(x, geometry)
    y = gpu.target(out, x.shape[:2] + (ho, wo), x.dtype, xp, "avgpool2d")
    gpu.launch("cnnc_avgpool_forward", x.dtype, y.size, x, y, y.size, h, w, ho, wo, kh, kw,
               sh, sw, *pads, int(bool(count_pad)))
    return gpu.deliver(y, out)


def gpu_avgpool2d_forward(x, *, train=True, rng=None, kernel, stride=None, pad=0, ceil=False,
                          count_pad=True):
    xp = gpu.cupy()
    x, geometry = _gpu_setup(x, kernel, stride, pad, 1, ceil, "avgpool2d", xp)
    y = gpu_avgpool2d(x, kernel=kernel, stride=stride, pad=pad, ceil=ceil,
                      count_pad=count_pad)
    return y, dict(shape=x.shape, y_shape=y.shape, geometry=geometry, dtype=x.dtype,
                   count_pad=count_pad)


def gpu_avgpool2d_backward(saved, dy):
    xp = gpu.cupy()
    shape, dtype = saved["shape"], saved["dtype"]
    dy = gpu.grad_input(dy, saved["y_shape"], dtype, xp, "avgpool2d")
    gx = xp.empty(shape, dtype=dtype)
    h, w, ho, wo, kh, kw, sh, sw, pads, _, _ = _gpu_args(gx, saved["geometry"])
    gpu.launch("cnnc_avgpool_backward", dtype, gx.size, dy, gx, gx.size, h, w, ho, wo, kh, kw,
               sh, sw, *pads, int(bool(saved["count_pad"])))
    return (gx,), ()


def reference_avgpool2d(x, *, kernel, stride=None, pad=0, ceil=False, count_pad=True):
    x = _f64(x)
    n_batch, channels, height, width = x.shape
    kh, kw = pair(kernel)
    sh, sw = pair(kernel if stride is None else stride)
    top, bottom, left, right = pads4(pad)
    ho = _ref_out_len(height, kh, sh, top, bottom, 1, ceil)
    wo = _ref_out_len(width, kw, sw, left, right, 1, ceil)
    y = numpy.empty((n_batch, channels, ho, wo))
    for oh in range(ho):
        for ow in range(wo):
            total = numpy.zeros((n_batch, channels))
            real_cells = 0
            padded_cells = 0  # cells inside the padded input, real ones included
            for i in range(kh):
                ih = oh * sh - top + i
                for j in range(kw):
                    iw = ow * sw - left + j
                    if -top <= ih < height + bottom and -left <= iw < width + right:
                        padded_cells += 1
                    if 0 <= ih < height and 0 <= iw < width:
                        real_cells += 1
                        total += x[:, :, ih, iw]
            divisor = padded_cells if count_pad else real_cells
            y[:, :, oh, ow] = total / divisor
    return y


def _emit_avgpool(g, step, xs, ws, out, in_shapes):
    """ONNX AveragePool in floor mode; where the padding counts and a ceil-mode window
    needs extra end padding, the original padding is made explicit with ``Pad`` first, so
    that only it counts. Any number of spatial dims."""
    n = len(in_shapes[0]) - 1
    kernel, stride, pads = _pool_pads(step, in_shapes[0], (1,) * n)
    a = step.attrs
    x = xs[0]
    given = window.pad_pairs(a["pad"], n)
    extended = any(end > given_end for (_, end), (_, given_end) in zip(pads, given))
    padded = max(window.flat_pads(given)) > 0
    if not a["count_pad"]:
        count = 0  # real cells only, whatever the padding
    elif not extended:
        count = 1  # every window lies inside the padded input: divide by the kernel size
    elif not padded:
        count = 0  # the only padding makes the last window fit, and must not count
    else:
        # Count the original padding but not the cells that only make the last window fit:
        # zero-pad explicitly, then average over real (now padded) cells only.
        x = _pad(g, x, given, 0.0)
        pads = [(0, end - given_end) for (_, end), (_, given_end) in zip(pads, given)]
        count = 0
    g.node("AveragePool", [x], out, kernel_shape=list(kernel), strides=list(stride),
           pads=_onnx_pads(pads), count_include_pad=count, ceil_mode=0)


def _torch_avgpool(step, xs, ws, training):
    """``F.avg_pool1d``, ``2d`` or ``3d`` by the input's rank."""
    import torch

    a = step.attrs
    n = xs[0].dim() - 2
    return getattr(torch.nn.functional, f"avg_pool{n}d")(
        xs[0], a["kernel"], a.get("stride"), _torch_pad(step, n),
        ceil_mode=a.get("ceil", False), count_include_pad=a.get("count_pad", True),
    )


def _examples_avgpool2d(rng):
    def x(h, w):
        return rng.standard_normal((2, 3, h, w))

    return [
        Example([x(6, 6)], attrs=dict(kernel=2, stride=None, pad=0, ceil=False,
                                      count_pad=True)),
        Example([x(7, 6)], attrs=dict(kernel=3, stride=2, pad=1, ceil=True, count_pad=True),
                note="ceil, the padding counts"),
        Example([x(7, 6)], attrs=dict(kernel=3, stride=2, pad=1, ceil=True, count_pad=False)),
        Example([x(5, 7)], attrs=dict(kernel=(3, 2), stride=(1, 3), pad=(1, 0), ceil=True,
                                      count_pad=True)),
        Example([x(6, 5)], attrs=dict(kernel=(2, 3), stride=None, pad=(1, 0, 1, 1),
                                      ceil=False, count_pad=True),
                onnx=False, torch=False, note="asymmetric pad"),
    ]


# ---------------------------------------------------------------- 1-D and 3-D windowed pools

# the layers: the 2-D rules, per spatial dim

_MAX_KEYS = ("kernel", "stride", "pad", "dilation", "ceil")
_AVG_KEYS = ("kernel", "stride", "pad", "ceil", "count_pad")


def _infer_window(op, dilated):
    def infer(shape, a, ctx):
        dilation = a["dilation"] if dilated else None
        sizes = window.spatial(op, shape, ctx, a["kernel"], a["stride"], a["pad"], dilation,
                               a["ceil"])
        return None if sizes is None else (shape[0],) + sizes

    return infer


def _lower_window(primitive, keys):
    def lower(node, in_shapes):
        return primitive, {key: node.args[key] for key in keys}

    return lower


def _pool_layer(n, kind):
    """``maxpool1d``, ``maxpool3d``, ``avgpool1d`` or ``avgpool3d``: the arguments of the
    2-D namesake, each an integer or one value per spatial dim."""
    op = (MAX_NAMES if kind == "max" else AVG_NAMES)[n]
    args = [ArgSpec("kernel", DIMS_KIND), ArgSpec("stride", DIMS_KIND, None),
            ArgSpec("pad", PAD_KIND, 0)]
    if kind == "max":
        args += [ArgSpec("dilation", DIMS_KIND, 1), ArgSpec("ceil", "bool", False)]
        per_dim, keys = ("kernel", "stride", "pad", "dilation"), _MAX_KEYS
    else:
        args += [ArgSpec("ceil", "bool", False), ArgSpec("count_pad", "bool", True)]
        per_dim, keys = ("kernel", "stride", "pad"), _AVG_KEYS
    what = "max" if kind == "max" else "average"
    return Layer(
        op, args, (n + 1,), _infer_window(op, kind == "max"),
        _lower_window(f"{kind}pool{n}d", keys),
        check_args=window.per_dim_checks(op, n, per_dim, then=_pool_checks(op)),
        lint=_lint, formula=window.formula, fix=_fix, rank_help=_rank_help(op),
        field="window",
        doc=f"{what} pooling over {window.MAP_WORDS[n]} {window.KIND_WORDS[n]}",
    )


# the kernels' geometry, any number of spatial dims


def _check_rank(x, where, n):
    if x.ndim != n + 2:
        raise ValueError(f"{where}: input must be [N, C, {window.DIM_LETTERS[n]}], got shape "
                         f"{tuple(x.shape)}")


def _geometry_nd(x, kernel, stride, pad, dilation, ceil, where):
    """``(kernel, stride, dilation, pad pairs, output sizes)`` of a pool on ``x``, one value
    per spatial dim, checked (output sizes >= 1)."""
    n = x.ndim - 2
    kernel = window.dims(kernel, n, "kernel")
    stride = window.dims(kernel if stride is None else stride, n, "stride")
    dilation = window.dims(dilation, n, "dilation")
    pairs = window.pad_pairs(pad, n)
    if min(kernel + stride + dilation) < 1 or min(window.flat_pads(pairs)) < 0:
        raise ValueError(
            f"{where}: kernel, stride and dilation must be >= 1 and pad >= 0, got "
            f"kernel={kernel}, stride={stride}, dilation={dilation}, "
            f"pad={window.flat_pads(pairs)}"
        )
    outs = tuple(
        checked_out(size, k, s, p, d, ceil, f"{where} {name}")
        for size, k, s, p, d, name in zip(x.shape[2:], kernel, stride, pairs, dilation,
                                          window.AXIS_NAMES[n])
    )
    return kernel, stride, dilation, pairs, outs


def _window_pairs(sizes, geometry):
    """The pad pairs with each end grown, in ceil mode, until the last windows fit."""
    kernel, stride, dilation, pairs, outs = geometry
    grown = []
    for n, k, s, d, (begin, end), o in zip(sizes, kernel, stride, dilation, pairs, outs):
        need = (o - 1) * s + d * (k - 1) + 1
        grown.append((begin, max(end, need - n - begin)))
    return tuple(grown)


# 1-D: the 2-D kernels on (N, C, 1, L) views


def _as_2d(x, kernel, stride, pad, dilation, ceil, where):
    """Check a 1-D pool as itself; its 2-D attributes (a height-1 window) and output
    shape."""
    _check_rank(x, where, 1)
    (k,), (s,), (d,), ((begin, end),), (lo,) = _geometry_nd(x, kernel, stride, pad, dilation,
                                                             ceil, where)
    attrs = dict(kernel=(1, k), stride=(1, s), pad=(0, 0, begin, end), dilation=(1, d),
                 ceil=ceil)
    return attrs, tuple(x.shape[:2]) + (lo,)


def _unsqueezed(out):
    return None if out is None else out[:, :, None, :]


def maxpool1d(x, *, kernel, stride=None, pad=0, dilation=1, ceil=False, out=None):
    """Max over windows of ``x (N, C, L)``: ``maxpool2d`` with a height-1 window."""
    xp = get_array_module(x)
    x = xp.asarray(x)
    attrs, shape = _as_2d(x, kernel, stride, pad, dilation, ceil, "maxpool1d")
    _check_out(out, shape, x.dtype, "maxpool1d")
    y = maxpool2d(x[:, :, None, :], out=_unsqueezed(out), **attrs)
    return y[:, :, 0, :] if out is None else out


def maxpool1d_forward(x, *, kernel, stride=None, pad=0, dilation=1, ceil=False, train=True,
                      rng=None):
    xp = get_array_module(x)
    x = floating(x, xp)
    attrs, shape = _as_2d(x, kernel, stride, pad, dilation, ceil, "maxpool1d")
    y, saved = maxpool2d_forward(x[:, :, None, :], **attrs)
    return y[:, :, 0, :], (saved, shape, y.dtype)


def _backward_2d(backward, where):
    """The backward of a 1-D pool from its 2-D namesake's."""

    def backward_1d(saved, dy):
        inner, shape, dtype = saved
        xp = get_array_module(dy)
        dy = as_grad(dy, shape, dtype, xp, where)
        (gx,), _ = backward(inner, dy[:, :, None, :])
        return (gx[:, :, 0, :],), ()

    backward_1d.__name__ = f"{where}_backward"
    return backward_1d


maxpool1d_backward = _backward_2d(maxpool2d_backward, "maxpool1d")


def gpu_maxpool1d(x, *, kernel, stride=None, pad=0, dilation=1, ceil=False, out=None):
    """MAXPOOL1D on the GPU: MAXPOOL2D's CUDA kernel on a height-1 view."""
    attrs, shape = _as_2d(x, kernel, stride, pad, dilation, ceil, "maxpool1d")
    _check_out(out, shape, x.dtype, "maxpool1d")
    y = gpu_maxpool2d(x[:, :, None, :], out=_unsqueezed(out), **attrs)
    return y[:, :, 0, :] if out is None else out


def gpu_maxpool1d_forward(x, *, train=True, rng=None, kernel, stride=None, pad=0, dilation=1,
                          ceil=False):
    attrs, shape = _as_2d(x, kernel, stride, pad, dilation, ceil, "maxpool1d")
    y, saved = gpu_maxpool2d_forward(x[:, :, None, :], **attrs)
    return y[:, :, 0, :], (saved, shape, y.dtype)


gpu_maxpool1d_backward = _backward_2d(gpu_maxpool2d_backward, "maxpool1d")


def _avg_as_2d(x, kernel, stride, pad, ceil, where):
    attrs, shape = _as_2d(x, kernel, stride, pad, 1, ceil, where)
    del attrs["dilation"]
    return attrs, shape


def avgpool1d(x, *, kernel, stride=None, pad=0, ceil=False, count_pad=True, out=None):
    """Mean over windows of ``x (N, C, L)``: ``avgpool2d`` with a height-1 window."""
    xp = get_array_module(x)
    x = floating(x, xp)
    attrs, shape = _avg_as_2d(x, kernel, stride, pad, ceil, "avgpool1d")
    _check_out(out, shape, x.dtype, "avgpool1d")
    y = avgpool2d(x[:, :, None, :], count_pad=count_pad, out=_unsqueezed(out), **attrs)
    return y[:, :, 0, :] if out is None else out


def avgpool1d_forward(x, *, kernel, stride=None, pad=0, ceil=False, count_pad=True,
                      train=True, rng=None):
    xp = get_array_module(x)
    x = floating(x, xp)
    attrs, shape = _avg_as_2d(x, kernel, stride, pad, ceil, "avgpool1d")
    y, saved = avgpool2d_forward(x[:, :, None, :], count_pad=count_pad, **attrs)
    return y[:, :, 0, :], (saved, shape, y.dtype)


avgpool1d_backward = _backward_2d(avgpool2d_backward, "avgpool1d")


def gpu_avgpool1d(x, *, kernel, stride=None, pad=0, ceil=False, count_pad=True, out=None):
    """AVGPOOL1D on the GPU: AVGPOOL2D's CUDA kernel on a height-1 view."""
    attrs, shape = _avg_as_2d(x, kernel, stride, pad, ceil, "avgpool1d")
    _check_out(out, shape, x.dtype, "avgpool1d")
    y = gpu_avgpool2d(x[:, :, None, :], count_pad=count_pad, out=_unsqueezed(out), **attrs)
    return y[:, :, 0, :] if out is None else out


def gpu_avgpool1d_forward(x, *, train=True, rng=None, kernel, stride=None, pad=0, ceil=False,
                          count_pad=True):
    attrs, shape = _avg_as_2d(x, kernel, stride, pad, ceil, "avgpool1d")
    y, saved = gpu_avgpool2d_forward(x[:, :, None, :], count_pad=count_pad, **attrs)
    return y[:, :, 0, :], (saved, shape, y.dtype)


gpu_avgpool1d_backward = _backward_2d(gpu_avgpool2d_backward, "avgpool1d")


# 3-D (any number of spatial dims): separable reductions, one pass per tap for training


def _blocks(n, c, volume):
    """``(samples, channels)`` blocks of about ``CHUNK_ELEMENTS`` padded cells, one volume
    at least."""
    if c * volume <= CHUNK_ELEMENTS:
        nb = max(1, CHUNK_ELEMENTS // (c * volume))
        for n0 in range(0, n, nb):
            yield slice(n0, min(n, n0 + nb)), slice(None)
        return
    cb = max(1, CHUNK_ELEMENTS // volume)
    for i in range(n):
        for c0 in range(0, c, cb):
            yield slice(i, i + 1), slice(c0, min(c, c0 + cb))


def _pooled_nd(x, geometry, fill, ufunc, out, divisor=None):
    """Reduce every window of ``x (N, C, ...)`` with ``ufunc`` into ``out`` (any view of the
    output's shape), then divide by ``divisor``: a block of volumes at a time, padded with
    ``fill``, then per spatial axis (the last first) ``k - 1`` ufunc calls over strided
    slices, each axis shrinking to its output size before the next."""
    xp = get_array_module(x)
    kernel, stride, dilation, _, outs = geometry
    pairs = _window_pairs(x.shape[2:], geometry)
    volume = math.prod(n + begin + end for n, (begin, end) in zip(x.shape[2:], pairs))
    for block in _blocks(x.shape[0], x.shape[1], volume):
        res = window.pad_to(x[block], pairs, fill, xp)
        for axis in reversed(range(len(kernel))):
            k, s, d, o = kernel[axis], stride[axis], dilation[axis], outs[axis]
            lead = (slice(None),) * (2 + axis)
            taps = [res[lead + (slice(j * d, j * d + s * (o - 1) + 1, s),)] for j in range(k)]
            if k == 1:
                res = taps[0]
                continue
            acc = ufunc(taps[0], taps[1])
            for tap in taps[2:]:
                ufunc(acc, tap, out=acc)
            res = acc
        if divisor is None:
            out[block] = res
        else:
            xp.divide(res, divisor, out=out[block])
    return out


def _taps(kernel):
    """Every tap of a window, in row-major order (the order of the maximum's index)."""
    return itertools.product(*(range(k) for k in kernel))


def _scatter_nd(g_tap, x_shape, geometry, dtype, xp):
    """Sum ``g_tap(t)`` (each of the output's shape) onto the cells tap ``t`` of every
    window reads; crop the padding."""
    kernel, stride, dilation, _, outs = geometry
    pairs = _window_pairs(x_shape[2:], geometry)
    sizes = tuple(n + begin + end for n, (begin, end) in zip(x_shape[2:], pairs))
    gpad = xp.zeros(tuple(x_shape[:2]) + sizes, dtype=dtype)
    for t, tap in enumerate(_taps(kernel)):
        gpad[window.tap_slices(tap, stride, dilation, outs)] += g_tap(t)
    if sizes == tuple(x_shape[2:]):
        return gpad
    crop = tuple(slice(begin, begin + n) for n, (begin, _) in zip(x_shape[2:], pairs))
    return xp.ascontiguousarray(gpad[(slice(None), slice(None)) + crop])


def maxpool3d(x, *, kernel, stride=None, pad=0, dilation=1, ceil=False, out=None):
    """Max over windows of ``x (N, C, D, H, W)``; ``stride`` defaults to ``kernel``;
    ``ceil`` and the padding as ``maxpool2d``'s. ``out`` may be any view of the output's
    shape (a channel slice)."""
    xp = get_array_module(x)
    x = xp.asarray(x)
    _check_rank(x, "maxpool3d", 3)
    geometry = _geometry_nd(x, kernel, stride, pad, dilation, ceil, "maxpool3d")
    shape = tuple(x.shape[:2]) + geometry[4]
    _check_out(out, shape, x.dtype, "maxpool3d")
    if out is None:
        out = xp.empty(shape, dtype=x.dtype)
    return _pooled_nd(x, geometry, _lowest(x.dtype, xp), xp.maximum, out)


def maxpool3d_forward(x, *, kernel, stride=None, pad=0, dilation=1, ceil=False, train=True,
                      rng=None):
    """Max over windows, and the index of each maximum (row-major tap order, the first of
    ties; the padding never wins)."""
    xp = get_array_module(x)
    x = floating(x, xp)
    _check_rank(x, "maxpool3d", 3)
    geometry = _geometry_nd(x, kernel, stride, pad, dilation, ceil, "maxpool3d")
    kernel, stride, dilation, pairs, outs = geometry
    xpad = window.pad_to(x, _window_pairs(x.shape[2:], geometry), -xp.inf, xp)
    nd = len(kernel)
    first = 0  # per output: the first real tap of its window
    place = 1
    for axis in reversed(range(nd)):
        tap = _first_real_tap(x.shape[2 + axis], kernel[axis], stride[axis], dilation[axis],
                              pairs[axis][0], outs[axis], xp)
        first = first + tap.reshape(outs[axis:axis + 1] + (1,) * (nd - 1 - axis)) * place
        place *= kernel[axis]
    index = xp.empty(tuple(x.shape[:2]) + outs, dtype=index_dtype(place))  # (N, C, o...)
    index[...] = first
    best = xp.full(index.shape, -xp.inf, dtype=x.dtype)
    above = xp.empty(best.shape, dtype=bool)
    step = xp.empty_like(index)
    for t, tap in enumerate(_taps(kernel)):
        cells = xpad[window.tap_slices(tap, stride, dilation, outs)]
        # as maxpool2d_forward: strictly greater keeps the first of ties, and the index
        # moves without a masked copy
        xp.greater(cells, best, out=above)
        xp.subtract(index.dtype.type(t), index, out=step)
        xp.multiply(step, above, out=step)
        xp.add(index, step, out=index)
        xp.maximum(best, cells, out=best)
    return best, (index, tuple(x.shape), geometry, x.dtype)


def maxpool3d_backward(saved, dy):
    index, x_shape, geometry, dtype = saved
    xp = get_array_module(index)
    dy = as_grad(dy, index.shape, dtype, xp, "maxpool3d")
    hit = xp.empty(index.shape, dtype=bool)
    share = xp.empty(index.shape, dtype=dy.dtype)

    def g_tap(t):
        xp.equal(index, index.dtype.type(t), out=hit)
        return xp.multiply(dy, hit, out=share)  # dy where this tap won, else 0

    return (_scatter_nd(g_tap, x_shape, geometry, dy.dtype, xp),), ()


def _divisor_nd(sizes, geometry, count_pad, dtype, xp):
    """The divisors of every window ``(o...)``: the product of each axis's counts."""
    kernel, stride, _, pairs, outs = geometry
    nd = len(kernel)
    divisor = 1
    for axis in range(nd):
        count = _divisor_1d(sizes[axis], kernel[axis], stride[axis], pairs[axis][0],
                            pairs[axis][1], outs[axis], count_pad, xp)
        divisor = divisor * count.reshape(outs[axis:axis + 1] + (1,) * (nd - 1 - axis))
    return divisor.astype(dtype)


def avgpool3d(x, *, kernel, stride=None, pad=0, ceil=False, count_pad=True, out=None):
    """Mean over windows of ``x (N, C, D, H, W)``; divisors as ``avgpool2d``'s (PyTorch's
    ``count_include_pad``). ``out`` may be any view of the output's shape."""
    xp = get_array_module(x)
    x = floating(x, xp)
    _check_rank(x, "avgpool3d", 3)
    geometry = _geometry_nd(x, kernel, stride, pad, 1, ceil, "avgpool3d")
    shape = tuple(x.shape[:2]) + geometry[4]
    _check_out(out, shape, x.dtype, "avgpool3d")
    if out is None:
        out = xp.empty(shape, dtype=x.dtype)
    divisor = xp.maximum(_divisor_nd(x.shape[2:], geometry, count_pad, x.dtype, xp), 1)
    return _pooled_nd(x, geometry, 0, xp.add, out, divisor)


def avgpool3d_forward(x, *, kernel, stride=None, pad=0, ceil=False, count_pad=True,
                      train=True, rng=None):
    xp = get_array_module(x)
    x = floating(x, xp)
    y = avgpool3d(x, kernel=kernel, stride=stride, pad=pad, ceil=ceil, count_pad=count_pad)
    geometry = _geometry_nd(x, kernel, stride, pad, 1, ceil, "avgpool3d")
    return y, (tuple(x.shape), geometry, count_pad, y.dtype)


def avgpool3d_backward(saved, dy):
    x_shape, geometry, count_pad, dtype = saved
    xp = get_array_module(dy)
    dy = as_grad(dy, tuple(x_shape[:2]) + geometry[4], dtype, xp, "avgpool3d")
    divisor = _divisor_nd(x_shape[2:], geometry, count_pad, dtype, xp)
    share = dy / xp.maximum(divisor, 1)  # what each cell of a window receives

    def g_tap(t):
        return share

    return (_scatter_nd(g_tap, x_shape, geometry, dtype, xp),), ()


# the slow references, any number of spatial dims


def _ref_geometry(x, kernel, stride, pad, dilation, ceil):
    n = x.ndim - 2
    kernel = window.dims(kernel, n)
    stride = window.dims(kernel if stride is None else stride, n)
    dilation = window.dims(dilation, n)
    pairs = window.pad_pairs(pad, n)
    outs = [_ref_out_len(size, k, s, begin, end, d, ceil) for size, k, s, (begin, end), d
            in zip(x.shape[2:], kernel, stride, pairs, dilation)]
    return kernel, stride, dilation, pairs, outs


def _ref_cells(position, kernel, stride, dilation, pairs):
    """Every cell of the window at ``position``, padding included."""
    for tap in itertools.product(*(range(k) for k in kernel)):
        yield tuple(p * s - begin + t * d for p, s, (begin, _), t, d in
                    zip(position, stride, pairs, tap, dilation))


def reference_maxpool_nd(x, *, kernel, stride=None, pad=0, dilation=1, ceil=False):
    x = _f64(x)
    kernel, stride, dilation, pairs, outs = _ref_geometry(x, kernel, stride, pad, dilation,
                                                          ceil)
    y = numpy.empty(x.shape[:2] + tuple(outs))
    for position in itertools.product(*(range(o) for o in outs)):
        best = numpy.full(x.shape[:2], -numpy.inf)
        for cell in _ref_cells(position, kernel, stride, dilation, pairs):
            if all(0 <= i < n for i, n in zip(cell, x.shape[2:])):
                best = numpy.maximum(best, x[(slice(None), slice(None)) + cell])
        y[(slice(None), slice(None)) + position] = best
    return y


def reference_avgpool_nd(x, *, kernel, stride=None, pad=0, ceil=False, count_pad=True):
    x = _f64(x)
    kernel, stride, dilation, pairs, outs = _ref_geometry(x, kernel, stride, pad, 1, ceil)
    y = numpy.empty(x.shape[:2] + tuple(outs))
    for position in itertools.product(*(range(o) for o in outs)):
        total = numpy.zeros(x.shape[:2])
        real_cells = 0
        padded_cells = 0  # cells inside the padded input, real ones included
        for cell in _ref_cells(position, kernel, stride, dilation, pairs):
            if all(-begin <= i < n + end for i, n, (begin, end) in
                   zip(cell, x.shape[2:], pairs)):
                padded_cells += 1
            if all(0 <= i < n for i, n in zip(cell, x.shape[2:])):
                real_cells += 1
                total += x[(slice(None), slice(None)) + cell]
        y[(slice(None), slice(None)) + position] = total / (
            padded_cells if count_pad else real_cells)
    return y


# the examples


def _examples_maxpool1d(rng):
    def x(length):
        return _distinct(rng, (2, 3, length))

    return [
        Example([x(8)], attrs=dict(kernel=2, stride=None, pad=0, dilation=1, ceil=False)),
        Example([x(9)], attrs=dict(kernel=3, stride=2, pad=1, dilation=1, ceil=True),
                note="ceil, padded"),
        Example([x(9)], attrs=dict(kernel=(3,), stride=(1,), pad=(1,), dilation=(2,),
                                   ceil=False), note="dilated, lists of one"),
        Example([x(7)], attrs=dict(kernel=2, stride=3, pad=0, dilation=2, ceil=True),
                note="ceil's last window past the input by a kernel"),
        Example([x(7)], attrs=dict(kernel=3, stride=2, pad=(1, 0), dilation=1, ceil=False),
                onnx=False, torch=False, note="asymmetric pad"),
    ]


def _examples_avgpool1d(rng):
    def x(length):
        return rng.standard_normal((2, 3, length))

    return [
        Example([x(8)], attrs=dict(kernel=2, stride=None, pad=0, ceil=False, count_pad=True)),
        Example([x(9)], attrs=dict(kernel=3, stride=2, pad=1, ceil=True, count_pad=True),
                note="ceil, the padding counts"),
        Example([x(10)], attrs=dict(kernel=(4,), stride=(3,), pad=(2,), ceil=True,
                                    count_pad=False), note="ceil, real cells only"),
        Example([x(7)], attrs=dict(kernel=3, stride=1, pad=(0, 1), ceil=False,
                                   count_pad=True),
                onnx=False, torch=False, note="asymmetric pad"),
    ]


def _examples_maxpool3d(rng):
    def x(d, h, w):
        return _distinct(rng, (2, 2, d, h, w))

    return [
        Example([x(4, 4, 6)], attrs=dict(kernel=2, stride=None, pad=0, dilation=1,
                                         ceil=False)),
        Example([x(5, 4, 7)], attrs=dict(kernel=(3, 2, 3), stride=(2, 1, 2), pad=(1, 0, 1),
                                         dilation=1, ceil=True), note="non-cubic, ceil"),
        Example([x(5, 6, 5)], attrs=dict(kernel=2, stride=1, pad=1, dilation=(2, 1, 2),
                                         ceil=False), note="dilated along depth and width"),
        Example([x(4, 5, 4)], attrs=dict(kernel=2, stride=3, pad=0, dilation=2, ceil=True),
                note="ceil's last window past the input by a kernel"),
        Example([x(3, 4, 4)], attrs=dict(kernel=2, stride=None, pad=(1, 0, 0, 1, 1, 1),
                                         dilation=1, ceil=False),
                onnx=False, torch=False, note="asymmetric pad"),
    ]


def _examples_avgpool3d(rng):
    def x(d, h, w):
        return rng.standard_normal((2, 2, d, h, w))

    return [
        Example([x(4, 4, 6)], attrs=dict(kernel=2, stride=None, pad=0, ceil=False,
                                         count_pad=True)),
        Example([x(5, 4, 7)], attrs=dict(kernel=(3, 2, 3), stride=(2, 1, 2), pad=(1, 0, 1),
                                         ceil=True, count_pad=True),
                note="non-cubic, ceil, the padding counts"),
        Example([x(5, 6, 5)], attrs=dict(kernel=3, stride=2, pad=1, ceil=True,
                                         count_pad=False), note="ceil, real cells only"),
        Example([x(3, 4, 4)], attrs=dict(kernel=2, stride=1, pad=(0, 1, 1, 0, 0, 0),
                                         ceil=False, count_pad=True),
                onnx=False, torch=False, note="asymmetric pad"),
    ]


MAXPOOL1D = _pool_layer(1, "max")
MAXPOOL3D = _pool_layer(3, "max")
AVGPOOL1D = _pool_layer(1, "avg")
AVGPOOL3D = _pool_layer(3, "avg")


# ---------------------------------------------------------------- global_avgpool


def _lower_global_avgpool(node, in_shapes):
    return "global_avgpool", {}


GLOBAL_AVGPOOL = Layer(
    "global_avgpool", [], None, _infer_global_for("global_avgpool"), _lower_global_avgpool,
    field="whole",
    rank_help=_global_rank_help("global_avgpool"),
    doc="mean over every spatial dim: [C, ...] -> [C, 1, ...]",
)


def check_map(x, where):
    """The global pools' rank rule: ``x`` is ``[N, C, ...]`` with a spatial dim at least."""
    if x.ndim < 3:
        raise ValueError(f"{where}: input must be [N, C, ...] with at least one spatial dim "
                         f"([N, C, L], [N, C, H, W], [N, C, D, H, W]), got shape "
                         f"{tuple(x.shape)}")


def _spatial_axes(x_shape):
    return tuple(range(2, len(x_shape)))


def global_avgpool(x):
    """Mean over every spatial dim: ``(N, C, H, W) -> (N, C, 1, 1)``, and so on for every
    rank."""
    xp = get_array_module(x)
    x = floating(x, xp)
    check_map(x, "global_avgpool")
    if x.dtype not in (xp.float32, xp.float64) or x.size == 0:
        return x.mean(axis=_spatial_axes(x.shape), keepdims=True)
    # a matrix-vector product with ones: the BLAS sums rows of float32 or float64 values
    # four to six times as fast as NumPy's mean (EfficientNet-B0's 1152 x 7 x 7 and
    # 96 x 112 x 112 maps, one thread), with partial sums about as accurate
    n, c = x.shape[:2]
    rows = x.reshape(n * c, -1)
    total = rows @ xp.ones(rows.shape[1], dtype=x.dtype)
    return (total / x.dtype.type(rows.shape[1])).reshape((n, c) + (1,) * (x.ndim - 2))


def global_avgpool_forward(x, *, train=True, rng=None):
    y = global_avgpool(x)
    return y, (tuple(x.shape), y.dtype)


def global_avgpool_backward(saved, dy):
    x_shape, dtype = saved
    xp = get_array_module(dy)
    ones = (1,) * (len(x_shape) - 2)
    dy = as_grad(dy, x_shape[:2] + ones, dtype, xp, "global_avgpool")
    gx = xp.empty(x_shape, dtype=dtype)
    gx[...] = dy / math.prod(x_shape[2:])
    return (gx,), ()


def reference_global_avgpool(x):
    x = _f64(x)
    ones = (1,) * (x.ndim - 2)
    y = numpy.zeros(x.shape[:2])
    for cell in numpy.ndindex(*x.shape[2:]):
        y += x[(slice(None), slice(None)) + cell]
    return (y / math.prod(x.shape[2:])).reshape(x.shape[:2] + ones)


def _emit_global_avgpool(g, step, xs, ws, out, in_shapes):
    g.node("GlobalAveragePool", xs, out)


def _torch_global_avgpool(step, xs, ws, training):
    return xs[0].mean(dim=_spatial_axes(xs[0].shape), keepdim=True)


def _examples_global_avgpool(rng):
    return [
        Example([rng.standard_normal((2, 3, 4, 5))]),
        Example([rng.standard_normal((2, 2, 1, 1))], note="a 1x1 map"),
        Example([rng.standard_normal((2, 3, 7))], note="a [C, L] signal"),
        Example([rng.standard_normal((2, 2, 3, 4, 2))], note="a [C, D, H, W] volume"),
    ]


# ---------------------------------------------------------------- global_maxpool


def _lower_global_maxpool(node, in_shapes):
    return "global_maxpool", {}


GLOBAL_MAXPOOL = Layer(
    "global_maxpool", [], None, _infer_global_for("global_maxpool"), _lower_global_maxpool,
    field="whole",
    rank_help=_global_rank_help("global_maxpool"),
    doc="max over every spatial dim: [C, ...] -> [C, 1, ...]",
)


def global_maxpool(x):
    """Max over every spatial dim: ``(N, C, H, W) -> (N, C, 1, 1)``, and so on for every
    rank."""
    xp = get_array_module(x)
    x = xp.asarray(x)
    check_map(x, "global_maxpool")
    return x.max(axis=_spatial_axes(x.shape), keepdims=True)


def global_maxpool_forward(x, *, train=True, rng=None):
    """Max over every spatial dim, and the flat index (``h*W + w`` on a map) of the first
    maximum."""
    xp = get_array_module(x)
    x = floating(x, xp)
    y = global_maxpool(x)
    n, c = x.shape[:2]
    cells = math.prod(x.shape[2:])
    index = x.reshape(n, c, cells).argmax(axis=2).astype(index_dtype(cells))  # (N, C)
    return y, (index, tuple(x.shape), y.dtype)


def global_maxpool_backward(saved, dy):
    index, x_shape, dtype = saved
    xp = get_array_module(index)
    n, c = x_shape[:2]
    cells = math.prod(x_shape[2:])
    dy = as_grad(dy, (n, c) + (1,) * (len(x_shape) - 2), dtype, xp, "global_maxpool")
    gx = xp.zeros(n * c * cells, dtype=dtype)
    flat = xp.arange(n * c) * cells + index.reshape(-1)
    gx[flat] = dy.reshape(-1)
    return (gx.reshape(x_shape),), ()


def reference_global_maxpool(x):
    x = _f64(x)
    y = numpy.full(x.shape[:2], -numpy.inf)
    for cell in numpy.ndindex(*x.shape[2:]):
        y = numpy.maximum(y, x[(slice(None), slice(None)) + cell])
    return y.reshape(x.shape[:2] + (1,) * (x.ndim - 2))


def _emit_global_maxpool(g, step, xs, ws, out, in_shapes):
    """``GlobalMaxPool`` on a [C, H, W] map. ONNX defines it on every rank, but ONNX's own
    reference evaluator (1.23) reduces the wrong axes off 2-D, so other ranks are the same
    computation as ``ReduceMax`` over the spatial axes, kept."""
    rank = len(in_shapes[0])
    if rank == 3:
        g.node("GlobalMaxPool", xs, out)
        return
    g.node("ReduceMax", xs, out, axes=list(range(2, rank + 1)), keepdims=1)


def _torch_global_maxpool(step, xs, ws, training):
    return xs[0].amax(dim=_spatial_axes(xs[0].shape), keepdim=True)


def _examples_global_maxpool(rng):
    return [
        Example([_distinct(rng, (2, 3, 4, 5))]),
        Example([_distinct(rng, (2, 2, 1, 3))], note="a one-row map"),
        Example([_distinct(rng, (2, 3, 6))], note="a [C, L] signal"),
        Example([_distinct(rng, (2, 2, 3, 2, 4))], note="a [C, D, H, W] volume"),
    ]


LAYERS = [MAXPOOL, AVGPOOL, GLOBAL_AVGPOOL, GLOBAL_MAXPOOL, MAXPOOL1D, MAXPOOL3D, AVGPOOL1D,
          AVGPOOL3D]


# ---- what the training forwards keep (Primitive.keeps)


def _maxpool_keeps(step, in_shapes, itemsize):
    # the winning tap of each output, in the smallest integer that holds a tap
    kernel = step.attrs["kernel"]
    rank = len(in_shapes[0]) - 1
    taps = int(kernel) ** rank if isinstance(kernel, int) else math.prod(kernel)
    return [("new", "index", elements(step.shape) * index_dtype(taps).itemsize, 0)]


def _global_maxpool_keeps(step, in_shapes, itemsize):
    spatial = elements(in_shapes[0][1:])
    return [("new", "index", elements(step.shape) * index_dtype(spatial).itemsize, 0)]


PRIMITIVES = [
    Primitive(
        "maxpool2d",
        "(x, *, kernel, stride, pad, dilation, ceil)",
        kernel=maxpool2d,
        forward=maxpool2d_forward,
        backward=maxpool2d_backward,
        reference=reference_maxpool2d,
        onnx=_emit_maxpool,
        torch=_torch_maxpool,
        examples=_examples_maxpool2d,
        gpu_kernel=gpu_maxpool2d,
        gpu_forward=gpu_maxpool2d_forward,
        gpu_backward=gpu_maxpool2d_backward,
        accepts_out=True,
        doc="max over windows; padding never wins, ties go to the first tap",
        keeps=_maxpool_keeps,
    ),
    Primitive(
        "avgpool2d",
        "(x, *, kernel, stride, pad, ceil, count_pad)",
        kernel=avgpool2d,
        forward=avgpool2d_forward,
        backward=avgpool2d_backward,
        reference=reference_avgpool2d,
        onnx=_emit_avgpool,
        torch=_torch_avgpool,
        examples=_examples_avgpool2d,
        gpu_kernel=gpu_avgpool2d,
        gpu_forward=gpu_avgpool2d_forward,
        gpu_backward=gpu_avgpool2d_backward,
        accepts_out=True,
        doc="mean over windows, PyTorch's count_include_pad divisors",
        keeps=keeps_nothing,
    ),
    Primitive(
        "global_avgpool",
        "(x)",
        kernel=global_avgpool,
        forward=global_avgpool_forward,
        backward=global_avgpool_backward,
        reference=reference_global_avgpool,
        onnx=_emit_global_avgpool,
        torch=_torch_global_avgpool,
        examples=_examples_global_avgpool,
        doc="mean over every spatial dim",
        keeps=keeps_nothing,
    ),
    Primitive(
        "global_maxpool",
        "(x)",
        kernel=global_maxpool,
        forward=global_maxpool_forward,
        backward=global_maxpool_backward,
        reference=reference_global_maxpool,
        onnx=_emit_global_maxpool,
        torch=_torch_global_maxpool,
        examples=_examples_global_maxpool,
        doc="max over every spatial dim",
        keeps=_global_maxpool_keeps,
    ),
    Primitive(
        "maxpool1d",
        "(x, *, kernel, stride, pad, dilation, ceil)",
        kernel=maxpool1d,
        forward=maxpool1d_forward,
        backward=maxpool1d_backward,
        reference=reference_maxpool_nd,
        onnx=_emit_maxpool,
        torch=_torch_maxpool,
        examples=_examples_maxpool1d,
        gpu_kernel=gpu_maxpool1d,
        gpu_forward=gpu_maxpool1d_forward,
        gpu_backward=gpu_maxpool1d_backward,
        accepts_out=True,
        doc="max over windows of [N, C, L]: maxpool2d with a height-1 window",
        keeps=_maxpool_keeps,
    ),
    Primitive(
        "maxpool3d",
        "(x, *, kernel, stride, pad, dilation, ceil)",
        kernel=maxpool3d,
        forward=maxpool3d_forward,
        backward=maxpool3d_backward,
        reference=reference_maxpool_nd,
        onnx=_emit_maxpool,
        torch=_torch_maxpool,
        examples=_examples_maxpool3d,
        accepts_out=True,
        doc="max over windows of [N, C, D, H, W]; padding never wins, ties go to the first tap",
        keeps=_maxpool_keeps,
    ),
    Primitive(
        "avgpool1d",
        "(x, *, kernel, stride, pad, ceil, count_pad)",
        kernel=avgpool1d,
        forward=avgpool1d_forward,
        backward=avgpool1d_backward,
        reference=reference_avgpool_nd,
        onnx=_emit_avgpool,
        torch=_torch_avgpool,
        examples=_examples_avgpool1d,
        gpu_kernel=gpu_avgpool1d,
        gpu_forward=gpu_avgpool1d_forward,
        gpu_backward=gpu_avgpool1d_backward,
        accepts_out=True,
        doc="mean over windows of [N, C, L]: avgpool2d with a height-1 window",
        keeps=keeps_nothing,
    ),
    Primitive(
        "avgpool3d",
        "(x, *, kernel, stride, pad, ceil, count_pad)",
        kernel=avgpool3d,
        forward=avgpool3d_forward,
        backward=avgpool3d_backward,
        reference=reference_avgpool_nd,
        onnx=_emit_avgpool,
        torch=_torch_avgpool,
        examples=_examples_avgpool3d,
        accepts_out=True,
        doc="mean over windows of [N, C, D, H, W], PyTorch's count_include_pad divisors",
        keeps=keeps_nothing,
    ),
]


# What other frameworks (PyTorch, Keras, Caffe, ONNX) call this family's layers, lower-cased:
# the "did you mean" of an unknown layer (E203). A value is the cnnc layer, or
# ``(layer, help)`` where the spelling takes more than a name.
FOREIGN_NAMES = {
    "maxpool2d": "maxpool",
    "max_pool": "maxpool",
    "max_pool2d": "maxpool",
    "maxpooling2d": "maxpool",
    "max_pooling2d": "maxpool",
    "avgpool2d": "avgpool",
    "avg_pool": "avgpool",
    "avg_pool2d": "avgpool",
    "averagepool": "avgpool",
    "averagepooling2d": "avgpool",
    "average_pooling2d": "avgpool",
    "gap": "global_avgpool",
    "globalavgpool": "global_avgpool",
    "global_avg_pool": "global_avgpool",
    "globalaveragepool": "global_avgpool",
    "globalaveragepooling2d": "global_avgpool",
    "global_average_pooling2d": "global_avgpool",
    "globalmaxpool": "global_maxpool",
    "global_max_pool": "global_maxpool",
    "globalmaxpooling2d": "global_maxpool",
    "global_max_pooling2d": "global_maxpool",
}
