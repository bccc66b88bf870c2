"""Resizing: upsampling, transposed convolution and adaptive pooling (spec section 9).

================  ====================================  ==================================
layer             arguments                             primitive
================  ====================================  ==================================
upsample          factor, mode=nearest,                 upsample ``(x, *, factor, mode,
                  align_corners=false                   align_corners)``
conv_transpose    out, kernel, stride=1, pad=0,         conv_transpose2d ``(x, w, b=None,
                  output_pad=0, dilation=1, groups=1,   *, stride, pad, output_pad,
                  bias=true                             dilation, groups)``
adaptive_avgpool  size                                  adaptive_avgpool ``(x, *, size)``
adaptive_maxpool  size                                  adaptive_maxpool ``(x, *, size)``
================  ====================================  ==================================

``upsample`` and the adaptive pools work on maps of any rank, ``[C, L]``, ``[C, H, W]``,
``[C, D, H, W]`` (kernels: ``(N, C, *spatial)``); ``conv_transpose`` on ``[C, H, W]``.
Factors and sizes are an integer or one per spatial dim.

How they run, all written once against the NumPy API (no CUDA text of their own):

- Nearest upsampling writes the input into each of the ``f_h * f_w`` phases of the output
  (one strided assignment per phase); its gradient sums those phases.
- Linear upsampling (``linear``, ``bilinear``, ``trilinear``) and average pooling are
  separable: along each spatial axis (the last first, as PyTorch nests them) the output is
  a banded matrix times the input. A band is ``(start, weights)``: output ``q`` is
  ``sum_t weights[q, t] * x[start[q] + t]``, computed one tap ``t`` at a time over every
  output at once (a strided view where the windows are evenly spaced, else a gather): a
  loop over the band's few taps, never over elements. The backward pass applies the
  transposed band, worked out once per size on the host, so overlapping windows and
  repeated source cells add up without a scatter.
- Adaptive max pooling is separable too: per axis, a running max over the window's taps
  and (for training) the tap that won, the first in row-major order as in PyTorch. Its
  gradient gathers, for each input cell, the outputs whose windows hold it and keeps those
  whose winning tap is that cell.
- A transposed convolution is one GEMM per group, ``W^T @ x``, scattered onto the output
  one strided slice add per kernel tap (col2im); the bias is added while the padding is
  cropped. Its backward pass is a convolution: the columns of ``dy`` (im2col) give both
  ``gx = W @ cols`` and ``gW = x @ cols^T``.

ONNX: ``Resize`` (exact: ``asymmetric``/``floor`` for nearest, ``pytorch_half_pixel`` or
``align_corners`` for linear), ``ConvTranspose``, and for the adaptive pools
``GlobalAveragePool``/``GlobalMaxPool`` (size 1), ``AveragePool``/``MaxPool`` with
kernel = stride = n/size (every size divides), else per axis a ``Gather`` of the windows,
a weighted ``ReduceSum`` or a masked ``ReduceMax``: ONNX has no adaptive pool, so the
windows are spelled out; the result is exact.
"""

from __future__ import annotations

import functools
import itertools

from ..compiler.shapes import transpose_out
from ..compiler.symbolic import is_concrete, shape_text
from . import gpu, window
from .base import ArgSpec, Example, Layer, Primitive, divisor_help, elements
from .base import keeps_input, keeps_nothing
from .window import pair
from .xp import as_grad, float_dtype, floating, get_array_module, index_dtype, numpy

# Bands wider than this many taps (large pooling windows) are gathered whole and reduced
# in one call rather than tap by tap.
WIDE_BAND = 16
# Bytes of column matrix per batch chunk of the transposed convolution on the host (on a
# device: ``gpu.WORKSPACE_BYTES``).
WORKSPACE_BYTES = 8 << 20

# Spatial dims -> the map's rank in words, its axis names, and the linear mode for it.
MAP_WORDS = {1: "[C, L]", 2: "[C, H, W]", 3: "[C, D, H, W]"}
AXIS_NAMES = {1: ("length",), 2: ("height", "width"), 3: ("depth", "height", "width")}
LINEAR_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}
UPSAMPLE_MODES = ("nearest", "linear", "bilinear", "trilinear")

# The kind of ``factor`` and ``size``: an integer, or a list of any length that the shape
# rule checks against the rank.
DIMS_KIND = "ints"


# ================================================================ shared helpers

# ---- the checker's side


def _maps_only(op, shape, ctx):
    """E304 for a vector: the layer needs a map with at least one spatial dim."""
    if len(shape) >= 2:
        return True
    ctx.error("E304", op=op, expected="a map [C, L], [C, H, W] or [C, D, H, W]",
              shape=shape_text(shape), help=f"`{op}` works on maps; move it before `flatten`")
    return False


def _spatial_arg(value, dims):
    """An integer or a list per spatial dim, as a ``dims``-tuple; None if the list's
    length is wrong."""
    if isinstance(value, int):
        return (value,) * dims
    items = tuple(value)
    if len(items) == dims:
        return items
    return None


def _arg_text(value):
    if isinstance(value, int):
        return str(value)
    return "[" + ", ".join(str(v) for v in value) + "]"


def _square(in_shape):
    """Whether a map's spatial sizes are all alike."""
    return len(set(in_shape[1:])) == 1


def _fix_text(values, index, new, square):
    """``values`` with entry ``index`` replaced by ``new``, as an argument: one integer
    when the values were all alike on a ``square`` map (the other dims then disagree the
    same way), else a list."""
    if len(set(values)) == 1 and square:
        return str(new)
    changed = list(values)
    changed[index] = new
    return _arg_text(changed)


def _per_axis_or_report(op, arg, value, dims, ctx):
    """``value`` per spatial dim, or None after an E207 on a list of the wrong length."""
    items = _spatial_arg(value, dims)
    if items is not None:
        return items
    names = ", ".join(AXIS_NAMES[dims])
    ctx.error("E207", f"{op} {arg}={_arg_text(value)} gives {len(tuple(value))} values, but "
              f"a {MAP_WORDS[dims]} map has {dims} spatial dim{'s' * (dims > 1)}",
              help=f"give one integer for every spatial dim, or a list [{names}]")
    return None


# ---- the kernels' side


def _per_axis(value, dims, what, where):
    """An integer or ``dims`` integers, each >= 1, as a ``dims``-tuple."""
    if isinstance(value, (int, numpy.integer)):
        items = (int(value),) * dims
    else:
        items = tuple(int(v) for v in value)
    if len(items) != dims or min(items) < 1:
        raise ValueError(f"{where}: {what} must be an integer >= 1 or {dims} of them (one per "
                         f"spatial dim), got {value!r}")
    return items


def _check_map(x, where):
    if x.ndim < 3:
        raise ValueError(f"{where}: input must be [N, C, ...] with at least one spatial dim, "
                         f"got shape {tuple(x.shape)}")


def _check_out(out, shape, dtype, where):
    if out is not None and (tuple(out.shape) != tuple(shape) or out.dtype != dtype):
        raise ValueError(f"{where}: out must be {list(shape)} {dtype}, got "
                         f"{list(out.shape)} {out.dtype}")


def _deliver(y, out):
    """``y`` written into ``out`` when one is given."""
    if out is None:
        return y
    out[...] = y
    return out


# ---- bands: a banded matrix along one axis


def _run(cells):
    """Host indices ``(m,)`` as a slice where they are an arithmetic run (the tap is then a
    strided view, not a gather), else as they are."""
    if len(cells) == 1:
        return slice(int(cells[0]), int(cells[0]) + 1)
    step = int(cells[1] - cells[0])
    if step > 0 and (numpy.diff(cells) == step).all():
        return slice(int(cells[0]), int(cells[-1]) + 1, step)
    return cells


def _tap(x, axis, cells, xp):
    """``x[cells]`` along ``axis``: one tap of every window of a band."""
    index = _run(cells)
    if isinstance(index, slice):
        return x[(slice(None),) * axis + (index,)]
    return xp.take(x, xp.asarray(index), axis=axis)


def _column(table, t, ndim, axis, xp, dtype):
    """Column ``t`` of a host table ``(m, width)``, shaped to broadcast along ``axis`` of
    an ``ndim``-array."""
    return xp.asarray(table[:, t].reshape((-1,) + (1,) * (ndim - axis - 1)), dtype=dtype)


def _gather(x, axis, cells, xp):
    """``x[cells]`` along ``axis`` for a host table ``cells (m, width)``: every tap of
    every window at once, ``(..., m, width, ...)``."""
    taken = xp.take(x, xp.asarray(cells.ravel()), axis=axis)
    return taken.reshape(x.shape[:axis] + cells.shape + x.shape[axis + 1:])


def _band_apply(x, axis, band, xp, valid=None):
    """``y[q] = sum_t weights[q, t] * x[start[q] + t]`` along ``axis``, one tap at a time
    (the index clipped at the axis end); a band wider than ``WIDE_BAND`` taps is gathered
    whole and summed in one call. Taps outside ``valid`` (a host mask like ``weights``)
    are left out rather than weighted by 0, so an infinity next to a window stays out."""
    start, weights = band
    n = x.shape[axis]
    width = weights.shape[1]
    if width > WIDE_BAND:
        cells = numpy.minimum(start[:, None] + numpy.arange(width)[None, :], n - 1)
        taken = _gather(x, axis, cells, xp)  # (..., m, width, ...)
        shape = weights.shape + (1,) * (x.ndim - axis - 1)
        if valid is not None:
            taken = xp.where(xp.asarray(valid.reshape(shape)), taken, 0)
        taken *= xp.asarray(weights.reshape(shape), dtype=x.dtype)
        return taken.sum(axis=axis + 1)
    y = None
    scratch = None
    for t in range(weights.shape[1]):
        term = _tap(x, axis, numpy.minimum(start + t, n - 1), xp)  # (..., m, ...)
        if valid is not None and not valid[:, t].all():
            term = xp.where(_column(valid, t, x.ndim, axis, xp, bool), term, 0)
        weight = _column(weights, t, x.ndim, axis, xp, x.dtype)
        if y is None:
            y = term * weight
            continue
        if scratch is None:
            scratch = xp.empty_like(y)
        xp.multiply(term, weight, out=scratch)
        y += scratch
    return y


def _frozen(*arrays):
    """Host tables kept in a cache: read-only, so no caller changes them."""
    for a in arrays:
        a.setflags(write=False)
    return arrays


def _transpose_band(band, n):
    """The band of ``M.T`` for the band ``M`` (``m x n``): taps clipped onto the same
    source cell add up."""
    start, weights = band
    m, width = weights.shape
    rows = numpy.repeat(numpy.arange(m), width)
    cols = numpy.minimum(start[:, None] + numpy.arange(width)[None, :], n - 1).ravel()
    vals = weights.ravel()
    keep = vals != 0
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    order = numpy.lexsort((rows, cols))
    rows, cols, vals = rows[order], cols[order], vals[order]
    cells = numpy.arange(n)
    first = numpy.searchsorted(cols, cells, side="left")
    last = numpy.searchsorted(cols, cells, side="right")
    has = last > first
    lo = numpy.where(has, rows[numpy.minimum(first, len(rows) - 1)], 0)
    hi = numpy.where(has, rows[numpy.maximum(last - 1, 0)] + 1, 1)
    width_t = int((hi - lo).max())
    flat = cols * width_t + (rows - lo[cols])
    table = numpy.bincount(flat, weights=vals, minlength=n * width_t).reshape(n, width_t)
    return _frozen(lo, table)


# ================================================================ upsample

# ---- the layer


def _upsample_args(shape, a, ctx):
    """``(factors, mode)`` for a map of ``shape``, or None after reporting."""
    if not _maps_only("upsample", shape, ctx):
        return None
    dims = len(shape) - 1
    factors = _per_axis_or_report("upsample", "factor", a["factor"], dims, ctx)
    if factors is None:
        return None
    mode = a["mode"]
    if mode not in UPSAMPLE_MODES:  # the checker's "choice" kind stops it before
        ctx.error("E207", "upsample mode must be `nearest`, `linear`, `bilinear` or "
                  f"`trilinear`, got `{mode}`",
                  help=f"use mode=nearest or mode={LINEAR_MODES[dims]} on a "
                  f"{MAP_WORDS[dims]} map")
        return None
    linear = LINEAR_MODES[dims]
    if mode != "nearest" and mode != linear:
        need = {v: k for k, v in LINEAR_MODES.items()}[mode]
        ctx.error("E207", f"upsample mode={mode} needs a {MAP_WORDS[need]} map, got "
                  f"{shape_text(shape)}, a {MAP_WORDS[dims]} map",
                  help=f"use mode={linear} (or nearest) on a {MAP_WORDS[dims]} map")
        return None
    if mode == "nearest" and a["align_corners"]:
        ctx.error("E207", "upsample align_corners=true needs mode=linear, bilinear or "
                  "trilinear; mode is nearest",
                  help=f"drop align_corners, or use mode={linear}")
        return None
    return factors, mode


def _infer_upsample(shape, a, ctx):
    checked = _upsample_args(shape, a, ctx)
    if checked is None:
        return None
    factors, _ = checked
    return (shape[0],) + tuple(n * f for n, f in zip(shape[1:], factors))


def _lower_upsample(node, in_shapes):
    a = node.args
    dims = len(in_shapes[0]) - 1
    return "upsample", dict(factor=_spatial_arg(a["factor"], dims), mode=a["mode"],
                            align_corners=bool(a["align_corners"]))


def _formula_upsample(node, in_shape, axis):
    n = in_shape[axis]
    factors = _spatial_arg(node.args["factor"], len(in_shape) - 1)
    if not is_concrete(n) or factors is None:
        return None
    f = factors[axis - 1]
    return f"{n}*{f} = {n * f}"


def _fix_upsample(node, in_shape, axis, target):
    n = in_shape[axis]
    dims = len(in_shape) - 1
    factors = _spatial_arg(node.args["factor"], dims)
    if not is_concrete(n) or factors is None or target % n or target // n < 1:
        return None
    text = _fix_text(factors, axis - 1, target // n, _square(in_shape))
    return f"use factor={text} on the upsample at {node.where()}"


UPSAMPLE = Layer(
    "upsample",
    [
        ArgSpec("factor", DIMS_KIND),
        ArgSpec("mode", "choice:" + "|".join(UPSAMPLE_MODES), "nearest"),
        ArgSpec("align_corners", "bool", False),
    ],
    None,
    _infer_upsample,
    _lower_upsample,
    formula=_formula_upsample,
    fix=_fix_upsample,
    field="upsample",
    doc="nearest or (bi/tri)linear upsampling by integer factors",
)


# ---- the kernel, forward and backward


def _upsample_geometry(x, factor, mode, align_corners):
    """Checked ``(factors, mode)``, as every implementation refuses alike."""
    _check_map(x, "upsample")
    dims = x.ndim - 2
    factors = _per_axis(factor, dims, "factor", "upsample")
    if mode not in ("nearest", LINEAR_MODES.get(dims)):
        raise ValueError(f"upsample: mode {mode!r} does not fit a map with {dims} spatial "
                         f"dim{'s' * (dims > 1)}; use 'nearest' or "
                         f"{LINEAR_MODES.get(dims)!r}")
    if mode == "nearest" and align_corners:
        raise ValueError("upsample: align_corners=True needs a linear mode, got 'nearest'")
    return factors, mode


@functools.lru_cache(maxsize=512)
def _linear_band(n, f, align_corners):
    """The band of linear interpolation from ``n`` to ``n*f`` cells along one axis, as
    PyTorch computes it: source ``(o + 0.5)/f - 0.5`` clamped at 0 (or ``o (n-1)/(nf-1)``
    with ``align_corners``), weights ``1 - l`` and ``l`` on its two neighbours, the second
    clipped at the last cell."""
    m = n * f
    dst = numpy.arange(m, dtype=numpy.float64)
    if align_corners:
        scale = (n - 1) / (m - 1) if m > 1 else 0.0
        src = scale * dst
    else:
        src = numpy.maximum((1.0 / f) * (dst + 0.5) - 0.5, 0.0)
    i0 = numpy.minimum(numpy.floor(src).astype(numpy.int64), n - 1)  # (m,)
    l1 = src - i0
    return _frozen(i0, numpy.stack([1.0 - l1, l1], axis=1))  # (m,), (m, 2)


@functools.lru_cache(maxsize=512)
def _linear_band_t(n, f, align_corners):
    """The transposed band of ``_linear_band``: the gradient of the interpolation."""
    return _transpose_band(_linear_band(n, f, align_corners), n)


def _phases(factors):
    """Every output phase of nearest upsampling: one strided slice per spatial axis."""
    for phase in itertools.product(*(range(f) for f in factors)):
        yield (slice(None), slice(None)) + tuple(slice(r, None, f)
                                                 for r, f in zip(phase, factors))


def upsample(x, *, factor, mode="nearest", align_corners=False, out=None):
    """Upsample ``x (N, C, *spatial)`` by an integer ``factor`` per spatial dim.

    ``mode`` is ``nearest`` (any rank; keeps the dtype) or the linear mode of the rank:
    ``linear`` (one spatial dim), ``bilinear`` (two), ``trilinear`` (three), PyTorch's
    ``Upsample`` with ``scale_factor`` and ``align_corners``.
    """
    xp = get_array_module(x)
    x = xp.asarray(x)
    factors, mode = _upsample_geometry(x, factor, mode, align_corners)
    shape = x.shape[:2] + tuple(n * f for n, f in zip(x.shape[2:], factors))
    if mode == "nearest":
        _check_out(out, shape, x.dtype, "upsample")
        y = xp.empty(shape, dtype=x.dtype) if out is None else out
        for index in _phases(factors):
            y[index] = x
        return y
    x = floating(x, xp)
    _check_out(out, shape, x.dtype, "upsample")
    y = x
    for axis in reversed(range(2, x.ndim)):
        f = factors[axis - 2]
        if f > 1:
            y = _band_apply(y, axis, _linear_band(x.shape[axis], f, bool(align_corners)), xp)
    if y is x:
        y = x.copy()
    return _deliver(y, out)


def upsample_forward(x, *, factor, mode="nearest", align_corners=False, train=True,
                     rng=None):
    xp = get_array_module(x)
    x = floating(x, xp)
    y = upsample(x, factor=factor, mode=mode, align_corners=align_corners)
    factors, mode = _upsample_geometry(x, factor, mode, align_corners)
    return y, (tuple(x.shape), factors, mode, bool(align_corners), y.dtype)


def upsample_backward(saved, dy):
    x_shape, factors, mode, align_corners, dtype = saved
    xp = get_array_module(dy)
    y_shape = x_shape[:2] + tuple(n * f for n, f in zip(x_shape[2:], factors))
    dy = as_grad(dy, y_shape, dtype, xp, "upsample")
    if mode == "nearest":
        gx = None
        for index in _phases(factors):  # each phase a strided view of dy, (N, C, *spatial)
            if gx is None:
                gx = dy[index].copy()
            else:
                gx += dy[index]
        return (gx,), ()
    gx = dy
    for axis in range(2, len(x_shape)):
        f = factors[axis - 2]
        if f > 1:
            gx = _band_apply(gx, axis, _linear_band_t(x_shape[axis], f, align_corners), xp)
    if gx is dy:
        gx = dy.copy()
    return (gx,), ()


# ---- reference, ONNX, PyTorch, examples


def _ref_source(o, n, f, align_corners):
    """``(i0, i1, l0, l1)`` of output cell ``o``, PyTorch's formula written out again."""
    m = n * f
    if align_corners:
        src = o * (n - 1) / (m - 1) if m > 1 else 0.0
    else:
        src = max((o + 0.5) / f - 0.5, 0.0)
    i0 = min(int(src), n - 1)
    i1 = min(i0 + 1, n - 1)
    l1 = src - i0
    return i0, i1, 1.0 - l1, l1


def reference_upsample(x, *, factor, mode="nearest", align_corners=False):
    """Loops over output cells; linear modes sum the 2^dims corners; float64."""
    x = numpy.asarray(x, dtype=numpy.float64)
    dims = x.ndim - 2
    factors = (factor,) * dims if isinstance(factor, int) else tuple(factor)
    spatial = x.shape[2:]
    y = numpy.zeros(x.shape[:2] + tuple(n * f for n, f in zip(spatial, factors)))
    for cell in itertools.product(*(range(n * f) for n, f in zip(spatial, factors))):
        if mode == "nearest":
            y[(slice(None), slice(None)) + cell] = x[
                (slice(None), slice(None)) + tuple(o // f for o, f in zip(cell, factors))]
            continue
        sources = [_ref_source(o, n, f, align_corners)
                   for o, n, f in zip(cell, spatial, factors)]
        total = numpy.zeros(x.shape[:2])
        for corner in itertools.product((0, 1), repeat=dims):
            weight = 1.0
            index = []
            for (i0, i1, l0, l1), c in zip(sources, corner):
                weight *= l1 if c else l0
                index.append(i1 if c else i0)
            total += weight * x[(slice(None), slice(None)) + tuple(index)]
        y[(slice(None), slice(None)) + cell] = total
    return y


def _emit_upsample(g, step, xs, ws, out, in_shapes):
    """``Resize`` by the factors: nearest as ``asymmetric`` + ``floor`` (source
    ``floor(o/f)``), linear as ``pytorch_half_pixel`` or ``align_corners``."""
    a = step.attrs
    dims = len(in_shapes[0]) - 1
    factors = _per_axis(a["factor"], dims, "factor", step.name)
    scales = g.const("scales", [1.0, 1.0] + [float(f) for f in factors], numpy.float32)
    if a["mode"] == "nearest":
        g.node("Resize", [xs[0], "", scales], out, mode="nearest",
               coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        return
    transform = "align_corners" if a["align_corners"] else "pytorch_half_pixel"
    g.node("Resize", [xs[0], "", scales], out, mode="linear",
           coordinate_transformation_mode=transform)


def _torch_upsample(step, xs, ws, training):
    import torch

    a = step.attrs
    x = xs[0]
    factors = _per_axis(a["factor"], x.dim() - 2, "factor", "upsample")
    align = None if a["mode"] == "nearest" else bool(a["align_corners"])
    return torch.nn.functional.interpolate(x, scale_factor=tuple(float(f) for f in factors),
                                           mode=a["mode"], align_corners=align)


def _examples_upsample(rng):
    def example(shape, factor, mode="nearest", align_corners=False, note=""):
        x = rng.standard_normal(shape)
        return Example([x], attrs=dict(factor=factor, mode=mode, align_corners=align_corners),
                       note=note)

    return [
        example((2, 3, 3, 4), 2, note="nearest, 2x"),
        example((2, 2, 2, 3), (3, 2), note="nearest, per-axis factors"),
        example((2, 3, 5), 3, note="nearest on [C, L]"),
        example((2, 2, 2, 3, 2), (1, 2, 3), note="nearest on [C, D, H, W]"),
        example((2, 3, 3, 4), 2, "bilinear", note="bilinear, half-pixel"),
        example((2, 2, 3, 2), (3, 2), "bilinear", True, note="bilinear, align_corners"),
        example((2, 2, 1, 3), (2, 3), "bilinear", note="one source row"),
        example((2, 3, 4), 3, "linear", note="linear on [C, L]"),
        example((2, 2, 2, 3, 2), (2, 1, 3), "trilinear", note="trilinear"),
        example((2, 2, 2, 2, 3), 2, "trilinear", True, note="trilinear, align_corners"),
    ]


# ================================================================ conv_transpose

# ---- the layer


def _transpose_formula(n, k, s, p, q, d):
    return f"({n} - 1)*{s} - 2*{p} + {d}*({k} - 1) + {q} + 1 = {transpose_out(n, k, s, p, q, d)}"


def _check_transpose(args, spans, call_span, report):
    """output_pad < max(stride, dilation) along each axis, as PyTorch requires."""
    for axis in range(2):
        s, d, q = args["stride"][axis], args["dilation"][axis], args["output_pad"][axis]
        limit = max(s, d)
        if q < limit:
            continue
        square = all(args[k][0] == args[k][1] for k in ("stride", "dilation", "output_pad"))
        where = "" if square else f" in {window.AXES[axis]}"
        hint = (f"use output_pad={limit - 1} at most" if limit > 1
                else "drop output_pad (it only picks among the output sizes a stride above "
                     "1 allows)")
        report("E207", f"conv_transpose output_pad={q} must be below max(stride, dilation) "
               f"= max({s}, {d}) = {limit}{where}", spans.get("output_pad", call_span),
               help=f"{hint}, or a larger stride")
        return None
    return args


def _infer_transpose(shape, a, ctx):
    channels = shape[0]
    groups = a["groups"]
    if is_concrete(channels) and channels % groups:
        ctx.error("E305", f"conv_transpose groups={groups} does not divide the {channels} "
                  f"input channels", help=divisor_help("groups", channels, groups))
    if a["out"] % groups:  # errors, but the output shape is known: checking goes on
        ctx.error("E305", f"conv_transpose groups={groups} does not divide the {a['out']} "
                  f"output channels", help=divisor_help("groups", a["out"], groups))
    sizes = []
    for axis in range(2):
        n = shape[axis + 1]
        k, s, p = a["kernel"][axis], a["stride"][axis], a["pad"][axis]
        q, d = a["output_pad"][axis], a["dilation"][axis]
        size = transpose_out(n, k, s, p, q, d)
        if not is_concrete(size):
            ctx.positive(size, f"conv_transpose output {window.AXES[axis]}")
        elif size < 1:
            most = ((n - 1) * s + d * (k - 1) + q) // 2
            ctx.error("E301", f"conv_transpose output {window.AXES[axis]} would be {size}, "
                      f"below 1: {_transpose_formula(n, k, s, p, q, d)}",
                      help=f"use pad={most} at most on this input: 2*pad may not exceed "
                      f"({n} - 1)*{s} + {d}*({k} - 1) + {q}")
            return None
        sizes.append(size)
    return (a["out"],) + tuple(sizes)


def _params_transpose(shape, a):
    kh, kw = a["kernel"]
    out = {"weight": (shape[0], a["out"] // a["groups"], kh, kw)}
    if a["bias"]:
        out["bias"] = (a["out"],)
    return out


def _macs_transpose(shape_in, shape_out, a):
    kh, kw = a["kernel"]
    per_input = a["out"] // a["groups"] * kh * kw
    return shape_in[0] * shape_in[1] * shape_in[2] * per_input


def _formula_transpose(node, in_shape, axis):
    n = in_shape[axis]
    if not is_concrete(n):
        return None
    a = node.args
    i = axis - 1
    return _transpose_formula(n, a["kernel"][i], a["stride"][i], a["pad"][i],
                              a["output_pad"][i], a["dilation"][i])


def _fix_transpose(node, in_shape, axis, target):
    """An output_pad, else a pad, that makes the output ``target`` along ``axis``."""
    n = in_shape[axis]
    if not is_concrete(n):
        return None
    a = node.args
    i = axis - 1
    k, s, p = a["kernel"][i], a["stride"][i], a["pad"][i]
    q, d = a["output_pad"][i], a["dilation"][i]

    square = _square(in_shape) and all(
        a[key][0] == a[key][1] for key in ("kernel", "stride", "pad", "output_pad", "dilation"))

    for q2 in range(max(s, d)):
        if q2 != q and transpose_out(n, k, s, p, q2, d) == target:
            text = _fix_text(a["output_pad"], i, q2, square)
            return f"use output_pad={text} on the conv_transpose at {node.where()}"
    twice = transpose_out(n, k, s, 0, q, d) - target
    if twice >= 0 and twice % 2 == 0 and twice // 2 != p:
        text = _fix_text(a["pad"], i, twice // 2, square)
        return f"use pad={text} on the conv_transpose at {node.where()}"
    return None


def _lower_transpose(node, in_shapes):
    a = node.args
    return "conv_transpose2d", dict(stride=a["stride"], pad=a["pad"],
                                    output_pad=a["output_pad"], dilation=a["dilation"],
                                    groups=a["groups"])


CONV_TRANSPOSE = Layer(
    "conv_transpose",
    [
        ArgSpec("out", "count"),
        ArgSpec("kernel", "pair"),
        ArgSpec("stride", "pair", 1),
        ArgSpec("pad", "ppad", 0),
        ArgSpec("output_pad", "ppad", 0),
        ArgSpec("dilation", "pair", 1),
        ArgSpec("groups", "count", 1),
        ArgSpec("bias", "bool", True),
    ],
    (3,),
    _infer_transpose,
    _lower_transpose,
    params=_params_transpose,
    macs=_macs_transpose,
    check_args=_check_transpose,
    formula=_formula_transpose,
    fix=_fix_transpose,
    rank_help=lambda shape: window.map_only_help("conv_transpose", shape),
    field="transpose",
    doc="2-D transposed convolution",
)


# ---- the kernel, forward and backward


def _transpose_geometry(x, w, b, stride, pad, output_pad, dilation, groups):
    """Checked ``(stride, pad, output_pad, dilation, (Ho, Wo))``; every implementation
    refuses alike."""
    where = "conv_transpose2d"
    if x.ndim != 4:
        raise ValueError(f"{where}: input must be [N, C, H, W], got shape {tuple(x.shape)}")
    if w.ndim != 4:
        raise ValueError(f"{where}: weight must be [C, out/groups, kh, kw], got shape "
                         f"{tuple(w.shape)}")
    channels = x.shape[1]
    if groups < 1 or channels % groups:
        raise ValueError(f"{where}: the {channels} input channels do not divide by "
                         f"groups={groups}")
    if w.shape[0] != channels:
        raise ValueError(f"{where}: weight {tuple(w.shape)} is for {w.shape[0]} input "
                         f"channels, the input has {channels}")
    out_channels = w.shape[1] * groups
    if b is not None and tuple(b.shape) != (out_channels,):
        raise ValueError(f"{where}: bias must be [{out_channels}], got {tuple(b.shape)}")
    s = pair(stride, "stride")
    p = pair(pad, "pad")
    q = pair(output_pad, "output_pad")
    d = pair(dilation, "dilation")
    if min(s + d) < 1 or min(p + q) < 0:
        raise ValueError(f"{where}: stride and dilation must be >= 1, pad and output_pad "
                         f">= 0, got stride={s}, dilation={d}, pad={p}, output_pad={q}")
    sizes = []
    for axis in range(2):
        if q[axis] >= max(s[axis], d[axis]):
            raise ValueError(f"{where}: output_pad must be below max(stride, dilation), got "
                             f"output_pad={q}, stride={s}, dilation={d}")
        n, k = x.shape[2 + axis], w.shape[2 + axis]
        size = transpose_out(n, k, s[axis], p[axis], q[axis], d[axis])
        if size < 1:
            raise ValueError(f"{where} {window.AXES[axis]}: output size must be at least 1, "
                             f"got {_transpose_formula(n, k, s[axis], p[axis], q[axis], d[axis])}")
        sizes.append(size)
    return s, p, q, d, tuple(sizes)


def _canvas_shape(x_hw, kernel, stride, dilation):
    """The uncropped output ``(Hc, Wc)``: every tap of every input cell lands inside."""
    return tuple((n - 1) * s + d * (k - 1) + 1
                 for n, k, s, d in zip(x_hw, kernel, stride, dilation))


def _tap_slices(i, j, x_hw, stride, dilation):
    """Rows and columns of the canvas that tap ``(i, j)`` of every input cell reaches."""
    (h, w), (sh, sw), (dh, dw) = x_hw, stride, dilation
    return (slice(i * dh, i * dh + sh * (h - 1) + 1, sh),
            slice(j * dw, j * dw + sw * (w - 1) + 1, sw))


def _chunk(n, per_sample, xp):
    budget = WORKSPACE_BYTES if xp.__name__ == "numpy" else gpu.WORKSPACE_BYTES
    return max(1, min(n, budget // max(1, per_sample)))


def _channel_major(x, n0, m, groups):
    """Samples ``n0 .. n0+m`` of ``x (N, C, H, W)`` as ``(G, C/G, m*H*W)``: the GEMM
    operand of one chunk (a copy, except for one sample)."""
    _, c, h, w = x.shape
    part = x[n0:n0 + m].reshape(m, groups, c // groups, h * w).transpose(1, 2, 0, 3)
    return part.reshape(groups, c // groups, m * h * w)


def conv_transpose2d(x, w, b=None, *, stride=1, pad=0, output_pad=0, dilation=1, groups=1,
                     out=None):
    """Transposed convolution of ``x (N, C, H, W)`` by ``w (C, O/groups, kh, kw)``, as
    PyTorch's ``conv_transpose2d``: ``(N, O, Ho, Wo)`` with
    ``Ho = (H - 1)s - 2p + d(kh - 1) + output_pad + 1``. ``pad``, ``output_pad``,
    ``stride`` and ``dilation`` are an integer or a pair; ``out`` an array to write into.

    Per batch chunk: one GEMM per group, ``W^T @ x``, gives every tap of every input cell
    (channel-major, so the chunk is one wide product); each tap is then added onto the
    uncropped output with one strided slice; the crop and the bias go straight into
    ``out``.
    """
    xp = get_array_module(x, w)
    dtype = float_dtype(xp, x, w)
    x = xp.asarray(x, dtype=dtype)
    w = xp.asarray(w, dtype=dtype)
    if b is not None:
        b = xp.asarray(b, dtype=dtype)
    s, p, q, d, (ho, wo) = _transpose_geometry(x, w, b, stride, pad, output_pad, dilation,
                                               groups)
    n, c, h, wd = x.shape
    _, og, kh, kw = w.shape
    o = og * groups
    _check_out(out, (n, o, ho, wo), dtype, "conv_transpose2d")
    if out is None:
        out = xp.empty((n, o, ho, wo), dtype=dtype)
    hc, wc = _canvas_shape((h, wd), (kh, kw), s, d)
    rows, cols = max(hc, p[0] + ho), max(wc, p[1] + wo)  # output_pad may reach past it
    wt = w.reshape(groups, c // groups, og * kh * kw).transpose(0, 2, 1)  # (G, O/G*k, C/G)
    bias = None if b is None else b.reshape(o, 1, 1, 1)
    nb = _chunk(n, (c * h * wd + o * kh * kw * h * wd + o * rows * cols) * x.itemsize, xp)
    canvas = xp.empty((o, nb, rows, cols), dtype=dtype)  # (O, nb, rows, cols)
    for n0 in range(0, n, nb):
        m = min(nb, n - n0)
        col = xp.matmul(wt, _channel_major(x, n0, m, groups))  # (G, O/G*kh*kw, m*H*W)
        col = col.reshape(o, kh, kw, m, h, wd)
        part = canvas[:, :m]
        part[...] = 0
        for i in range(kh):
            for j in range(kw):
                r, t = _tap_slices(i, j, (h, wd), s, d)
                part[:, :, r, t] += col[:, i, j]
        crop = part[:, :, p[0]:p[0] + ho, p[1]:p[1] + wo]  # (O, m, Ho, Wo)
        dest = out[n0:n0 + m].transpose(1, 0, 2, 3)
        if bias is None:
            dest[...] = crop
        else:
            xp.add(crop, bias, out=dest)
    return out


def conv_transpose2d_forward(x, w, b=None, *, stride=1, pad=0, output_pad=0, dilation=1,
                             groups=1, train=True, rng=None):
    """``y = conv_transpose2d(x, w, b)``; keeps ``x`` and ``w``."""
    xp = get_array_module(x, w)
    dtype = float_dtype(xp, x, w)
    x = xp.asarray(x, dtype=dtype)
    w = xp.asarray(w, dtype=dtype)
    y = conv_transpose2d(x, w, b, stride=stride, pad=pad, output_pad=output_pad,
                         dilation=dilation, groups=groups)
    geometry = _transpose_geometry(x, w, None, stride, pad, output_pad, dilation, groups)
    return y, (x, w, b is not None, geometry, groups)


def _dy_columns(dy, n0, m, x_hw, kernel, geometry, xp):
    """The columns of samples ``n0 .. n0+m`` of ``dy (N, O, Ho, Wo)``: a fresh
    ``(O, kh, kw, m, H, W)``. Tap ``(i, j)`` of input cell ``(y, x)`` is output cell
    ``(y s + i d - p, x s + j d - p)``."""
    s, p, _, d, (ho, wo) = geometry
    o = dy.shape[1]
    hc, wc = _canvas_shape(x_hw, kernel, s, d)
    canvas = xp.zeros((o, m, hc, wc), dtype=dy.dtype)  # dy placed back on the canvas
    rows, cols = max(0, min(ho, hc - p[0])), max(0, min(wo, wc - p[1]))
    part = dy[n0:n0 + m, :, :rows, :cols].transpose(1, 0, 2, 3)
    canvas[:, :, p[0]:p[0] + rows, p[1]:p[1] + cols] = part
    s_o, s_n, s_h, s_w = canvas.strides
    shape = (o,) + tuple(kernel) + (m,) + tuple(x_hw)
    strides = (s_o, s_h * d[0], s_w * d[1], s_n, s_h * s[0], s_w * s[1])
    view = xp.lib.stride_tricks.as_strided(canvas, shape=shape, strides=strides)
    return xp.ascontiguousarray(view)


def conv_transpose2d_backward(saved, dy):
    """A convolution of ``dy``: with its columns ``cols`` (im2col, ``(G, O/G*kh*kw,
    m*H*W)`` per chunk),

        gx = W @ cols        # (G, C/G, O/G*kh*kw) @ (G, O/G*kh*kw, m*H*W)
        gW += x @ cols.T     # (G, C/G, m*H*W) @ (G, m*H*W, O/G*kh*kw)
        gb = sum(dy)
    """
    x, w, has_bias, geometry, groups = saved
    xp = get_array_module(x, w)
    n, c, h, wd = x.shape
    _, og, kh, kw = w.shape
    o = og * groups
    dy = as_grad(dy, (n, o) + geometry[4], x.dtype, xp, "conv_transpose2d")
    cg = c // groups
    k = og * kh * kw
    wg = w.reshape(groups, cg, k)  # (G, C/G, O/G*kh*kw)
    gx = xp.empty(x.shape, dtype=x.dtype)
    gW = xp.zeros((groups, cg, k), dtype=x.dtype)
    nb = _chunk(n, (2 * c + 2 * o * kh * kw) * h * wd * x.itemsize, xp)
    for n0 in range(0, n, nb):
        m = min(nb, n - n0)
        col = _dy_columns(dy, n0, m, (h, wd), (kh, kw), geometry, xp)
        col = col.reshape(groups, k, m * h * wd)  # (G, O/G*kh*kw, m*H*W)
        gx_part = xp.matmul(wg, col).reshape(c, m, h, wd)  # (C, m, H, W)
        gx[n0:n0 + m] = gx_part.transpose(1, 0, 2, 3)
        gW += xp.matmul(_channel_major(x, n0, m, groups), col.transpose(0, 2, 1))
    gW = gW.reshape(w.shape)
    if not has_bias:
        return (gx,), (gW,)
    gb = dy.sum(axis=(0, 2, 3))
    return (gx,), (gW, gb)


# ---- reference, ONNX, PyTorch, examples


def reference_conv_transpose2d(x, w, b=None, *, stride=1, pad=0, output_pad=0, dilation=1,
                               groups=1):
    """Every input cell spreads ``x[n, c, y, x] * w[c, :, i, j]`` onto output cell
    ``(y s + i d - p, x s + j d - p)``; loops over cells and taps, float64."""
    x = numpy.asarray(x, dtype=numpy.float64)
    w = numpy.asarray(w, dtype=numpy.float64)
    n_batch, channels, height, width = x.shape
    _, per_group, kh, kw = w.shape
    sh, sw = pair(stride)
    ph, pw = pair(pad)
    qh, qw = pair(output_pad)
    dh, dw = pair(dilation)
    ho = (height - 1) * sh - 2 * ph + dh * (kh - 1) + qh + 1
    wo = (width - 1) * sw - 2 * pw + dw * (kw - 1) + qw + 1
    y = numpy.zeros((n_batch, per_group * groups, ho, wo))
    in_group = channels // groups
    for n in range(n_batch):
        for g in range(groups):
            cs = slice(g * in_group, (g + 1) * in_group)
            outs = slice(g * per_group, (g + 1) * per_group)
            for iy in range(height):
                for ix in range(width):
                    for i in range(kh):
                        oy = iy * sh + i * dh - ph
                        if not 0 <= oy < ho:
                            continue
                        for j in range(kw):
                            ox = ix * sw + j * dw - pw
                            if 0 <= ox < wo:
                                y[n, outs, oy, ox] += x[n, cs, iy, ix] @ w[cs, :, i, j]
    if b is not None:
        y += numpy.asarray(b, dtype=numpy.float64).reshape(1, -1, 1, 1)
    return y


def _emit_conv_transpose2d(g, step, xs, ws, out, in_shapes):
    """``ConvTranspose``. ONNX Runtime refuses an ``output_padding`` at or above the stride
    (which PyTorch allows below the dilation), so the output padding is first taken off the
    end padding (``pads`` may differ at both ends); what is left past the uncropped output
    is zeros plus the bias: a ``Pad`` and an ``Add`` after a bias-free ``ConvTranspose``."""
    a = step.attrs
    kh, kw = g.arrays[ws[0]].shape[2:]
    stride = pair(a["stride"])
    p = pair(a["pad"])
    q = pair(a["output_pad"])
    ends = [max(pi - qi, 0) for pi, qi in zip(p, q)]
    rest = [max(qi - pi, 0) for pi, qi in zip(p, q)]
    late = any(r >= s for r, s in zip(rest, stride))
    attrs = dict(kernel_shape=[kh, kw], strides=list(stride),
                 dilations=list(pair(a["dilation"])), group=a["groups"],
                 pads=[p[0], p[1], ends[0], ends[1]])
    if not late:
        g.node("ConvTranspose", xs + ws, out, output_padding=rest, **attrs)
        return
    inner = g.node("ConvTranspose", xs + ws[:1], g.temp("uncropped"), **attrs)
    amounts = g.const("pads", [0, 0, 0, 0, 0, 0, rest[0], rest[1]], numpy.int64)
    target = out if len(ws) == 1 else g.temp("padded")
    padded = g.node("Pad", [inner, amounts], target, "pad", mode="constant")
    if len(ws) > 1:
        shape = g.const("bias_shape", [-1, 1, 1], numpy.int64)
        bias = g.node("Reshape", [ws[1], shape], g.temp("bias"), "bias")
        g.node("Add", [padded, bias], out, "add_bias")


def _torch_conv_transpose2d(step, xs, ws, training):
    import torch

    a = step.attrs
    bias = ws[1] if len(ws) > 1 else None
    return torch.nn.functional.conv_transpose2d(
        xs[0], ws[0], bias, pair(a["stride"]), pair(a["pad"]), pair(a["output_pad"]),
        a["groups"], pair(a["dilation"]))


def _examples_conv_transpose2d(rng):
    def example(channels, out, kernel, groups, bias, note, hw=(3, 4), **attrs):
        x = rng.standard_normal((2, channels) + hw)
        w = rng.standard_normal((channels, out // groups) + kernel)
        params = [w, rng.standard_normal(out)] if bias else [w]
        attrs = dict(dict(stride=1, pad=0, output_pad=0, dilation=1, groups=groups), **attrs)
        return Example([x], params, attrs, note=note)

    return [
        example(3, 4, (3, 3), 1, True, "stride 2, pad 1, output_pad 1", stride=2, pad=1,
                output_pad=1),
        example(2, 3, (2, 2), 1, True, "kernel = stride: U-Net's up-convolution", stride=2),
        example(4, 6, (2, 3), 2, False, "groups, non-square, output_pad from the dilation",
                stride=(2, 1), pad=(0, 1), output_pad=(1, 1), dilation=(1, 2)),
        example(4, 4, (3, 3), 4, True, "depthwise, stride 1", pad=1),
        example(2, 3, (4, 3), 1, False, "padding wider than the stride", hw=(3, 2),
                stride=3, pad=(2, 1), output_pad=2),
        example(3, 2, (3, 2), 1, True, "dilated, output_pad reaches past the canvas",
                hw=(2, 3), dilation=2, output_pad=1),
    ]


# ================================================================ adaptive pools

# ---- the layer


def _infer_adaptive(op):
    def infer(shape, a, ctx):
        if not _maps_only(op, shape, ctx):
            return None
        sizes = _per_axis_or_report(op, "size", a["size"], len(shape) - 1, ctx)
        return None if sizes is None else (shape[0],) + sizes

    return infer


def _lower_adaptive(op):
    def lower(node, in_shapes):
        return op, dict(size=_spatial_arg(node.args["size"], len(in_shapes[0]) - 1))

    return lower


def _formula_adaptive(node, in_shape, axis):
    sizes = _spatial_arg(node.args["size"], len(in_shape) - 1)
    if sizes is None:
        return None
    return f"size {sizes[axis - 1]}, whatever the input's {in_shape[axis]}"


def _fix_adaptive(node, in_shape, axis, target):
    sizes = _spatial_arg(node.args["size"], len(in_shape) - 1)
    if sizes is None or not is_concrete(target) or target < 1:
        return None
    text = _fix_text(sizes, axis - 1, target, _square(in_shape))
    return f"use size={text} on the {node.op} at {node.where()}"


def _adaptive_layer(op, what):
    return Layer(op, [ArgSpec("size", DIMS_KIND)], None, _infer_adaptive(op),
                 _lower_adaptive(op), formula=_formula_adaptive, fix=_fix_adaptive,
                 field="adaptive",
                 doc=f"{what} over PyTorch's adaptive windows")


ADAPTIVE_AVGPOOL = _adaptive_layer("adaptive_avgpool", "mean")
ADAPTIVE_MAXPOOL = _adaptive_layer("adaptive_maxpool", "max")


# ---- the kernels, forward and backward


@functools.lru_cache(maxsize=512)
def _windows(n, m):
    """PyTorch's adaptive windows from ``n`` cells to ``m``: output ``i`` covers
    ``floor(i n/m) .. ceil((i+1) n/m) - 1``. Returns ``(start, count)``, each ``(m,)``."""
    i = numpy.arange(m)
    start = (i * n) // m
    end = -((-(i + 1) * n) // m)
    return _frozen(start, end - start)


@functools.lru_cache(maxsize=512)
def _avg_band(n, m):
    """``(band, valid)``: the band of the mean over each window, and which taps are in it."""
    start, count = _windows(n, m)
    valid = numpy.arange(int(count.max()))[None, :] < count[:, None]  # (m, width)
    weights = numpy.where(valid, 1.0 / count[:, None], 0.0)
    return (start, _frozen(weights)[0]), _frozen(valid)[0]


@functools.lru_cache(maxsize=512)
def _avg_band_t(n, m):
    """The transposed band of the mean: each input cell's share of each window's gradient."""
    return _transpose_band(_avg_band(n, m)[0], n)


@functools.lru_cache(maxsize=512)
def _holders(n, m):
    """For each input cell ``c``, the outputs whose windows hold it: ``first (n,)`` and a
    table ``(n, width)`` of the tap ``c`` is in each of them (-1 past the last one)."""
    start, count = _windows(n, m)
    end = start + count
    cells = numpy.arange(n)
    first = numpy.searchsorted(end, cells, side="right")  # the first window ending after c
    stop = numpy.searchsorted(start, cells, side="right")  # past the last starting at <= c
    width = int((stop - first).max())
    owner = numpy.minimum(first[:, None] + numpy.arange(width)[None, :], m - 1)
    tap = cells[:, None] - start[owner]
    valid = numpy.arange(width)[None, :] < (stop - first)[:, None]
    return _frozen(first, numpy.where(valid, tap, -1))


def _pool_sizes(x, size, where):
    _check_map(x, where)
    return _per_axis(size, x.ndim - 2, "size", where)


def adaptive_avgpool(x, *, size):
    """Mean over PyTorch's adaptive windows: ``(N, C, *spatial) -> (N, C, *size)``."""
    xp = get_array_module(x)
    x = floating(x, xp)
    sizes = _pool_sizes(x, size, "adaptive_avgpool")
    y = x
    for axis in reversed(range(2, x.ndim)):
        n, m = x.shape[axis], sizes[axis - 2]
        if n != m:
            band, valid = _avg_band(n, m)
            y = _band_apply(y, axis, band, xp, valid)
    return x.copy() if y is x else y


def adaptive_avgpool_forward(x, *, size, train=True, rng=None):
    xp = get_array_module(x)
    x = floating(x, xp)
    y = adaptive_avgpool(x, size=size)
    return y, (tuple(x.shape), tuple(y.shape), y.dtype)


def adaptive_avgpool_backward(saved, dy):
    x_shape, y_shape, dtype = saved
    xp = get_array_module(dy)
    dy = as_grad(dy, y_shape, dtype, xp, "adaptive_avgpool")
    gx = dy
    for axis in range(2, len(x_shape)):
        n, m = x_shape[axis], y_shape[axis]
        if n != m:
            gx = _band_apply(gx, axis, _avg_band_t(n, m), xp)
    return (dy.copy() if gx is dy else gx,), ()


def _max_stages(x, sizes, xp, keep):
    """Max over the windows, axis by axis (the last first), one tap at a time; with
    ``keep`` also each stage's winning tap (the first maximum), ``[(axis, n, m, tap)]``.
    A window shorter than the widest repeats its last cell, which never wins twice."""
    y = x
    stages = []
    for axis in reversed(range(2, x.ndim)):
        n, m = x.shape[axis], sizes[axis - 2]
        if n == m:
            continue
        start, count = _windows(n, m)
        last = start + count - 1
        width = int(count.max())
        if width > WIDE_BAND:
            cells = numpy.minimum(start[:, None] + numpy.arange(width)[None, :],
                                  last[:, None])
            taken = _gather(y, axis, cells, xp)  # (..., m, width, ...)
            y = taken.max(axis=axis + 1)
            if keep:
                tap = taken.argmax(axis=axis + 1).astype(index_dtype(width))
                stages.append((axis, n, m, tap))
            continue
        best = None
        tap = None
        for t in range(width):
            term = _tap(y, axis, numpy.minimum(start + t, last), xp)  # (..., m, ...)
            if best is None:
                best = xp.array(term, copy=True)
                if keep:
                    tap = xp.zeros(best.shape, dtype=index_dtype(width))
                continue
            if keep:
                tap = xp.where(term > best, tap.dtype.type(t), tap)
            xp.maximum(best, term, out=best)
        y = best
        if keep:
            stages.append((axis, n, m, tap))
    return (x.copy() if y is x else y), stages


def adaptive_maxpool(x, *, size):
    """Max over PyTorch's adaptive windows: ``(N, C, *spatial) -> (N, C, *size)``."""
    xp = get_array_module(x)
    x = xp.asarray(x)
    sizes = _pool_sizes(x, size, "adaptive_maxpool")
    return _max_stages(x, sizes, xp, keep=False)[0]


def adaptive_maxpool_forward(x, *, size, train=True, rng=None):
    """The max and, per stage, the tap of each window that won."""
    xp = get_array_module(x)
    x = floating(x, xp)
    sizes = _pool_sizes(x, size, "adaptive_maxpool")
    y, stages = _max_stages(x, sizes, xp, keep=True)
    return y, (stages, tuple(y.shape), y.dtype)


def adaptive_maxpool_backward(saved, dy):
    """Stage by stage, the last first: each input cell gathers, tap by tap, the gradients
    of the windows that hold it and keeps those whose winning tap it is."""
    stages, y_shape, dtype = saved
    xp = get_array_module(dy)
    gx = as_grad(dy, y_shape, dtype, xp, "adaptive_maxpool")
    given = gx
    for axis, n, m, tap in reversed(stages):
        first, taps = _holders(n, m)
        width = taps.shape[1]
        if width > WIDE_BAND:  # outputs far more than inputs: many windows hold each cell
            owners = numpy.minimum(first[:, None] + numpy.arange(width)[None, :], m - 1)
            grads = _gather(gx, axis, owners, xp)  # (..., n, width, ...)
            shape = taps.shape + (1,) * (gx.ndim - axis - 1)
            grads *= _gather(tap, axis, owners, xp) == xp.asarray(taps.reshape(shape))
            gx = grads.sum(axis=axis + 1)
            continue
        total = None
        for t in range(width):
            owners = numpy.minimum(first + t, m - 1)
            grads = _tap(gx, axis, owners, xp)  # (..., n, ...)
            won = _tap(tap, axis, owners, xp) == _column(taps, t, gx.ndim, axis, xp,
                                                         numpy.int64)
            if total is None:
                total = grads * won
            else:
                total += grads * won
        gx = total
    return (given.copy() if gx is given else gx,), ()


# ---- references, ONNX, PyTorch, examples


def _reference_adaptive(x, size, reduce):
    x = numpy.asarray(x, dtype=numpy.float64)
    spatial = x.shape[2:]
    sizes = (size,) * len(spatial) if isinstance(size, int) else tuple(size)
    y = numpy.empty(x.shape[:2] + sizes)
    for cell in itertools.product(*(range(m) for m in sizes)):
        box = []
        for i, n, m in zip(cell, spatial, sizes):
            begin = (i * n) // m
            end = -((-(i + 1) * n) // m)  # ceil((i + 1) n / m)
            box.append(slice(begin, end))
        window_ = x[(slice(None), slice(None)) + tuple(box)]
        flat = window_.reshape(x.shape[0], x.shape[1], -1)
        y[(slice(None), slice(None)) + cell] = reduce(flat)
    return y


def reference_adaptive_avgpool(x, *, size):
    def mean(flat):
        total = numpy.zeros(flat.shape[:2])
        for t in range(flat.shape[2]):
            total += flat[:, :, t]
        return total / flat.shape[2]

    return _reference_adaptive(x, size, mean)


def reference_adaptive_maxpool(x, *, size):
    def largest(flat):
        best = numpy.full(flat.shape[:2], -numpy.inf)
        for t in range(flat.shape[2]):
            best = numpy.maximum(best, flat[:, :, t])
        return best

    return _reference_adaptive(x, size, largest)


def _emit_adaptive(kind):
    """ONNX for an adaptive pool: a global pool, a strided pool when every size divides,
    else the windows spelled out per axis (Gather, then a weighted ReduceSum or a masked
    ReduceMax): exact, and as vectorised as the kernel."""
    average = kind == "avg"

    def emit(g, step, xs, ws, out, in_shapes):
        spatial = in_shapes[0][1:]
        sizes = _per_axis(step.attrs["size"], len(spatial), "size", step.name)
        if all(m == 1 for m in sizes):
            g.node("GlobalAveragePool" if average else "GlobalMaxPool", xs, out)
            return
        if all(n % m == 0 for n, m in zip(spatial, sizes)):
            kernel = [n // m for n, m in zip(spatial, sizes)]
            g.node("AveragePool" if average else "MaxPool", xs, out, kernel_shape=kernel,
                   strides=kernel)
            return
        axes = [a for a in reversed(range(len(spatial))) if spatial[a] != sizes[a]]
        x = xs[0]
        for index, a in enumerate(axes):
            target = out if index == len(axes) - 1 else g.temp(f"pooled{a}")
            x = _emit_axis(g, x, 2 + a, 2 + len(spatial), spatial[a], sizes[a], average,
                           target)

    return emit


def _emit_axis(g, x, axis, ndim, n, m, average, target):
    start, count = _windows(n, m)
    width = int(count.max())
    index = numpy.minimum(start[:, None] + numpy.arange(width)[None, :], n - 1)
    taken = g.node("Gather", [x, g.const(f"windows{axis}", index, numpy.int64)],
                   g.temp(f"windows{axis}"), f"gather{axis}", axis=axis)
    trailing = (1,) * (ndim - axis - 1)
    reduced = [g.const(f"axes{axis}", [axis + 1], numpy.int64)]
    if average:
        weights = _avg_band(n, m)[0][1].reshape((m, width) + trailing)
        scaled = g.node("Mul", [taken, g.const(f"weights{axis}", weights, numpy.float32)],
                        g.temp(f"weighted{axis}"), f"weight{axis}")
        return g.node("ReduceSum", [scaled] + reduced, target, f"sum{axis}", keepdims=0)
    valid = (numpy.arange(width)[None, :] < count[:, None]).reshape((m, width) + trailing)
    lowest = g.const(f"lowest{axis}", -numpy.inf, numpy.float32)
    masked = g.node("Where", [g.const(f"valid{axis}", valid, numpy.bool_), taken, lowest],
                    g.temp(f"masked{axis}"), f"mask{axis}")
    return g.reduce("ReduceMax", masked, [axis + 1], target, f"max{axis}")


def _torch_adaptive(kind):
    def run(step, xs, ws, training):
        import torch

        x = xs[0]
        dims = x.dim() - 2
        sizes = _per_axis(step.attrs["size"], dims, "size", step.name)
        return getattr(torch.nn.functional, f"adaptive_{kind}_pool{dims}d")(x, sizes)

    return run


def _distinct(rng, shape):
    """Values 0.01 apart in random order: no two elements tie within a finite difference."""
    size = int(numpy.prod(shape))
    return (rng.permutation(size) - size / 2).reshape(shape) * 0.01


def _examples_adaptive(distinct):
    def examples(rng):
        def x(*spatial):
            shape = (2, 3) + spatial
            return _distinct(rng, shape) if distinct else rng.standard_normal(shape)

        return [
            Example([x(7, 5)], attrs=dict(size=(3, 2)), note="overlapping windows"),
            Example([x(6, 6)], attrs=dict(size=(2, 3)), note="every size divides"),
            Example([x(3, 2)], attrs=dict(size=(5, 4)), note="larger than the input"),
            Example([x(4, 5)], attrs=dict(size=(4, 1)), note="one axis kept, one pooled"),
            Example([x(5, 3)], attrs=dict(size=1), note="size 1: a global pool"),
            Example([x(10)], attrs=dict(size=4), note="[C, L]"),
            Example([x(5, 4, 6)], attrs=dict(size=(2, 3, 4)), note="[C, D, H, W]"),
        ]

    return examples


LAYERS = [UPSAMPLE, CONV_TRANSPOSE, ADAPTIVE_AVGPOOL, ADAPTIVE_MAXPOOL]


# ---- what the training forwards keep (Primitive.keeps)


def _adaptive_maxpool_keeps(step, in_shapes, itemsize):
    """The winning taps: one array per spatial axis that changes size (the last first),
    each of the shape after that axis's stage."""
    shape = in_shapes[0]
    current = list(shape)
    size = step.attrs["size"]
    sizes = [size] * (len(shape) - 1) if isinstance(size, int) else list(size)
    total = 0
    for axis in reversed(range(1, len(shape))):
        n, m = int(current[axis]), int(sizes[axis - 1])
        if n == m:
            continue
        longest = max(-(-((i + 1) * n) // m) - (i * n) // m for i in range(m))
        current[axis] = m
        total += elements(current) * index_dtype(longest).itemsize
    return [("new", "taps", total, 0)]


PRIMITIVES = [
    Primitive(
        "upsample",
        "(x, *, factor, mode, align_corners)",
        kernel=upsample,
        forward=upsample_forward,
        backward=upsample_backward,
        reference=reference_upsample,
        onnx=_emit_upsample,
        torch=_torch_upsample,
        examples=_examples_upsample,
        accepts_out=True,
        doc="nearest or linear upsampling by integer factors, any rank",
        keeps=keeps_nothing,
    ),
    Primitive(
        "conv_transpose2d",
        "(x, w, b=None, *, stride, pad, output_pad, dilation, groups)",
        kernel=conv_transpose2d,
        forward=conv_transpose2d_forward,
        backward=conv_transpose2d_backward,
        reference=reference_conv_transpose2d,
        onnx=_emit_conv_transpose2d,
        torch=_torch_conv_transpose2d,
        examples=_examples_conv_transpose2d,
        accepts_out=True,
        doc="2-D transposed convolution: a GEMM and a col2im per tap",
        keeps=keeps_input,
    ),
    Primitive(
        "adaptive_avgpool",
        "(x, *, size)",
        kernel=adaptive_avgpool,
        forward=adaptive_avgpool_forward,
        backward=adaptive_avgpool_backward,
        reference=reference_adaptive_avgpool,
        onnx=_emit_adaptive("avg"),
        torch=_torch_adaptive("avg"),
        examples=_examples_adaptive(False),
        doc="mean over PyTorch's adaptive windows, any rank",
        keeps=keeps_nothing,
    ),
    Primitive(
        "adaptive_maxpool",
        "(x, *, size)",
        kernel=adaptive_maxpool,
        forward=adaptive_maxpool_forward,
        backward=adaptive_maxpool_backward,
        reference=reference_adaptive_maxpool,
        onnx=_emit_adaptive("max"),
        torch=_torch_adaptive("max"),
        examples=_examples_adaptive(True),
        doc="max over PyTorch's adaptive windows, any rank; ties go to the first",
        keeps=_adaptive_maxpool_keeps,
    ),
]


# What other frameworks (PyTorch, Keras, Caffe, ONNX) call this family's layers, lower-cased:
# the "did you mean" of an unknown layer (E203). A value is the cnnc layer, or
# ``(layer, help)`` where the spelling takes more than a name.
FOREIGN_NAMES = {
    "deconv": "conv_transpose",
    "deconvolution": "conv_transpose",
    "convtranspose": "conv_transpose",
    "convtranspose2d": "conv_transpose",
    "conv_transpose2d": "conv_transpose",
    "conv2dtranspose": "conv_transpose",
    "conv2d_transpose": "conv_transpose",
    "transposed_conv": "conv_transpose",
    "transpose_conv": "conv_transpose",
    "adaptiveavgpool2d": "adaptive_avgpool",
    "adaptive_avg_pool": "adaptive_avgpool",
    "adaptive_avg_pool2d": "adaptive_avgpool",
    "adaptivemaxpool2d": "adaptive_maxpool",
    "adaptive_max_pool": "adaptive_maxpool",
    "adaptive_max_pool2d": "adaptive_maxpool",
    "upsampling": "upsample",
    "upsampling2d": "upsample",
    "upsamplingnearest2d": "upsample",
    "upsamplingbilinear2d": "upsample",
    "interpolate": "upsample",
    "resize": "upsample",
}
