"""Pooling, training: window geometry from the inference kernels, gradients by strided-slice
scatter, one slice per window tap.

Max pooling keeps, per output, the index of its window's maximum (``0 .. kh*kw-1`` in
row-major tap order, in the smallest unsigned dtype that holds it): ties go to the first
maximum in that order, and a padding cell never wins. Average pooling keeps nothing but
the geometry: its divisors are recomputed in closed form.
"""

import numpy

from ..kernels.pool import (
    _check_input,
    _divisor_1d,
    _geometry,
    _pad_to_windows,
    window_pads,
)
from ..kernels.pool import avgpool2d as avgpool2d_inference
from ..kernels.pool import global_avgpool as global_avgpool_inference
from ..kernels.pool import global_maxpool as global_maxpool_inference
from ..shapes import pads4, pair, pool_out
from ..xp import floating, get_array_module
from ._util import as_grad, index_dtype, prod


def _tap(a, i, j, stride_dilation, out_hw):
    """The strided slice of ``a (N, C, Hp, Wp)`` that tap ``(i, j)`` of every window reads."""
    (sh, sw), (dh, dw) = stride_dilation
    ho, wo = out_hw
    rows = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
    cols = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
    return a[:, :, rows, cols]


def _first_real_tap(n, k, s, d, p_begin, n_out, xp):
    """Per output along one axis: the first window tap inside ``[0, n)`` (0 if none).
    A few hundred numbers at most: worked out on the host, then moved to ``xp``."""
    cells = numpy.arange(n_out)[:, None] * s - p_begin + numpy.arange(k)[None, :] * d
    real = (cells >= 0) & (cells < n)  # (n_out, k)
    return xp.asarray(numpy.argmax(real, axis=1))  # argmax of booleans: the first True


def _pool_window_pads(x_shape, geometry):
    kernel, stride, dilation, pads, out_hw = geometry
    return window_pads(x_shape[2:], kernel, stride, dilation, pads, out_hw)


def _scatter(g_taps, x_shape, geometry, dtype, xp):
    """Sum ``g_taps(i, j)`` (each ``(N, C, Ho, Wo)``) onto the windows' cells; crop padding."""
    kernel, stride, dilation, _, out_hw = geometry
    n, c, h, w = x_shape
    top, bottom, left, right = _pool_window_pads(x_shape, geometry)
    gpad = xp.zeros((n, c, h + top + bottom, w + left + right), dtype=dtype)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            _tap(gpad, i, j, (stride, dilation), out_hw)[...] += g_taps(i, j)
    if top == bottom == left == right == 0:
        return gpad
    return xp.ascontiguousarray(gpad[:, :, top:top + h, left:left + w])


# ---------------------------------------------------------------- max pooling


def maxpool2d_forward(x, *, kernel, stride=None, pad=0, dilation=1, ceil=False, train=True,
                      rng=None):
    """Max over windows, as ``kernels.pool.maxpool2d``, and the index of each maximum."""
    xp = get_array_module(x)
    x = floating(x, xp)
    _check_input(x, "maxpool2d")
    geometry = _geometry(x, kernel, stride, pad, dilation, ceil, "maxpool2d")
    kernel, stride, dilation, pads, out_hw = geometry
    kh, kw = kernel
    n, c, h, w = x.shape
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
    hit = xp.empty(index.shape, dtype=bool)
    share = xp.empty(index.shape, dtype=dy.dtype)

    def g_taps(i, j):
        xp.equal(index, index.dtype.type(i * kw + j), out=hit)
        return xp.multiply(dy, hit, out=share)  # dy where this tap won, else 0

    return (_scatter(g_taps, x_shape, geometry, dy.dtype, xp),), ()


def _pool_out_shape(step, input_shapes, dilation):
    c, h, w = input_shapes[0]
    a = step.attrs
    kh, kw = pair(a["kernel"], "kernel")
    sh, sw = pair(a["kernel"] if a.get("stride") is None else a["stride"], "stride")
    dh, dw = pair(dilation, "dilation")
    top, bottom, left, right = pads4(a.get("pad", 0))
    ceil = a.get("ceil", False)
    return (c, pool_out(h, kh, sh, (top, bottom), dh, ceil),
            pool_out(w, kw, sw, (left, right), dw, ceil))


def maxpool2d_saved(step, input_shapes):
    return prod(_pool_out_shape(step, input_shapes, step.attrs.get("dilation", 1)))  # index


# ---------------------------------------------------------------- average pooling


def avgpool2d_forward(x, *, kernel, stride=None, pad=0, ceil=False, count_pad=True,
                      train=True, rng=None):
    y = avgpool2d_inference(x, kernel=kernel, stride=stride, pad=pad, ceil=ceil,
                            count_pad=count_pad)
    geometry = _geometry(x, kernel, stride, pad, 1, ceil, "avgpool2d")
    return y, (tuple(x.shape), geometry, count_pad, y.dtype)


def avgpool2d_backward(saved, dy):
    x_shape, geometry, count_pad, dtype = saved
    kernel, stride, _, pads, out_hw = geometry
    xp = get_array_module(dy)
    dy = as_grad(dy, x_shape[:2] + out_hw, dtype, xp, "avgpool2d")
    h, w = x_shape[2:]
    count_h = _divisor_1d(h, kernel[0], stride[0], pads[0], pads[1], out_hw[0], count_pad, xp)
    count_w = _divisor_1d(w, kernel[1], stride[1], pads[2], pads[3], out_hw[1], count_pad, xp)
    divisor = (count_h[:, None] * count_w[None, :]).astype(dtype)  # (Ho, Wo)
    share = dy / xp.maximum(divisor, 1)  # what each cell of a window receives

    def g_taps(i, j):
        return share

    return (_scatter(g_taps, x_shape, geometry, dtype, xp),), ()


def avgpool2d_saved(step, input_shapes):
    return 0


# ---------------------------------------------------------------- global pooling


def global_avgpool_forward(x, *, train=True, rng=None):
    y = global_avgpool_inference(x)
    return y, (tuple(x.shape), y.dtype)


def global_avgpool_backward(saved, dy):
    x_shape, dtype = saved
    xp = get_array_module(dy)
    dy = as_grad(dy, x_shape[:2] + (1, 1), dtype, xp, "global_avgpool")
    gx = xp.empty(x_shape, dtype=dtype)
    gx[...] = dy / (x_shape[2] * x_shape[3])
    return (gx,), ()


def global_avgpool_saved(step, input_shapes):
    return 0


def global_maxpool_forward(x, *, train=True, rng=None):
    """Max over H and W, and the flat index ``h*W + w`` of the first maximum."""
    xp = get_array_module(x)
    x = floating(x, xp)
    y = global_maxpool_inference(x)
    n, c, h, w = x.shape
    index = x.reshape(n, c, h * w).argmax(axis=2).astype(index_dtype(h * w))  # (N, C)
    return y, (index, tuple(x.shape), y.dtype)


def global_maxpool_backward(saved, dy):
    index, x_shape, dtype = saved
    xp = get_array_module(index)
    n, c, h, w = x_shape
    dy = as_grad(dy, (n, c, 1, 1), dtype, xp, "global_maxpool")
    gx = xp.zeros(n * c * h * w, dtype=dtype)
    flat = xp.arange(n * c) * (h * w) + index.reshape(-1)
    gx[flat] = dy.reshape(-1)
    return (gx.reshape(x_shape),), ()


def global_maxpool_saved(step, input_shapes):
    return input_shapes[0][0]  # index, one per channel
