"""Pooling (forward, inference): max and average over windows, and global pooling.

A rectangular window reduction is separable, so each windowed pool runs as ``kw``
strided-slice reductions along W followed by ``kh`` along H, instead of ``kh*kw``.
Max pooling pads with the lowest value of the dtype (-inf for floats), so padding never
wins a max. Average pooling pads with zeros and divides by a per-position count
computed in closed form, following PyTorch's ``count_include_pad`` rules.
"""

from ..shapes import checked_out, pads4, pair
from ..xp import floating, get_array_module


def _check_input(x, where):
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


def window_pads(hw, kernel, stride, dilation, pads, out_hw):
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
    top, bottom, left, right = window_pads((h, w), kernel, stride, dilation, pads, out_hw)
    if top == bottom == left == right == 0:
        return x
    xpad = xp.full((n, c, h + top + bottom, w + left + right), fill, dtype=x.dtype)
    xpad[:, :, top:top + h, left:left + w] = x
    return xpad


def _reduce_windows(a, axis, k, s, d, n_out, ufunc, out=None):
    """``ufunc``-reduce the ``k`` taps of 1-D windows along ``axis`` into ``out`` (a fresh
    array when None)."""

    def taps(i):
        index = [slice(None)] * a.ndim
        index[axis] = slice(i * d, i * d + s * (n_out - 1) + 1, s)
        return a[tuple(index)]

    if k == 1:
        if out is None:
            return taps(0).copy()
        out[...] = taps(0)
        return out
    acc = ufunc(taps(0), taps(1), out=out)
    for i in range(2, k):
        ufunc(acc, taps(i), out=acc)
    return acc


def _lowest(dtype, xp):
    if dtype.kind == "f":
        return -xp.inf
    return xp.iinfo(dtype).min


def _check_out(out, shape, dtype, where):
    if out is not None and (tuple(out.shape) != shape or out.dtype != dtype):
        raise ValueError(f"{where}: out must be {list(shape)} {dtype}, got "
                         f"{list(out.shape)} {out.dtype}")


def maxpool2d(x, *, kernel, stride=None, pad=0, dilation=1, ceil=False, out=None):
    """Max over windows of ``x (N, C, H, W)``; ``stride`` defaults to ``kernel``.

    ``ceil`` rounds the output size up, dropping a last window that would start in the
    right padding (PyTorch's rule). Returns a contiguous ``(N, C, Ho, Wo)``.
    """
    xp = get_array_module(x)
    x = xp.asarray(x)
    _check_input(x, "maxpool2d")
    kernel, stride, dilation, pads, out_hw = _geometry(
        x, kernel, stride, pad, dilation, ceil, "maxpool2d"
    )
    _check_out(out, x.shape[:2] + out_hw, x.dtype, "maxpool2d")
    xpad = _pad_to_windows(x, kernel, stride, dilation, pads, out_hw, _lowest(x.dtype, xp), xp)
    rows = _reduce_windows(xpad, 3, kernel[1], stride[1], dilation[1], out_hw[1], xp.maximum)
    if out is not None:
        return _reduce_windows(rows, 2, kernel[0], stride[0], dilation[0], out_hw[0],
                               xp.maximum, out)
    y = _reduce_windows(rows, 2, kernel[0], stride[0], dilation[0], out_hw[0], xp.maximum)
    return xp.ascontiguousarray(y)


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


def avgpool2d(x, *, kernel, stride=None, pad=0, ceil=False, count_pad=True, out=None):
    """Mean over windows of ``x (N, C, H, W)``; ``stride`` defaults to ``kernel``.

    ``count_pad=True`` divides by the window size clipped to the padded input (PyTorch's
    ``count_include_pad=True``), ``False`` by the number of real input cells in the window.
    """
    xp = get_array_module(x)
    x = floating(x, xp)
    _check_input(x, "avgpool2d")
    kernel, stride, dilation, pads, out_hw = _geometry(
        x, kernel, stride, pad, 1, ceil, "avgpool2d"
    )
    _check_out(out, x.shape[:2] + out_hw, x.dtype, "avgpool2d")
    xpad = _pad_to_windows(x, kernel, stride, dilation, pads, out_hw, 0, xp)
    rows = _reduce_windows(xpad, 3, kernel[1], stride[1], 1, out_hw[1], xp.add)
    given = out
    out = _reduce_windows(rows, 2, kernel[0], stride[0], 1, out_hw[0], xp.add, out)
    h, w = x.shape[2:]
    count_h = _divisor_1d(h, kernel[0], stride[0], pads[0], pads[1], out_hw[0], count_pad, xp)
    count_w = _divisor_1d(w, kernel[1], stride[1], pads[2], pads[3], out_hw[1], count_pad, xp)
    divisor = (count_h[:, None] * count_w[None, :]).astype(x.dtype)  # (Ho, Wo)
    out /= xp.maximum(divisor, 1)  # a window of padding only sums to 0; keep it 0
    return out if given is not None else xp.ascontiguousarray(out)


def global_avgpool(x):
    """Mean over H and W: ``(N, C, H, W) -> (N, C, 1, 1)``."""
    xp = get_array_module(x)
    x = floating(x, xp)
    _check_input(x, "global_avgpool")
    return x.mean(axis=(2, 3), keepdims=True)


def global_maxpool(x):
    """Max over H and W: ``(N, C, H, W) -> (N, C, 1, 1)``."""
    xp = get_array_module(x)
    x = xp.asarray(x)
    _check_input(x, "global_maxpool")
    return x.max(axis=(2, 3), keepdims=True)
