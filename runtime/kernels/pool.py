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


# Elements of padded planes per chunk of `_pooled`: small enough to stay in cache.
CHUNK_ELEMENTS = 1 << 16


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
    top, bottom, left, right = window_pads((h, w), kernel, stride, dilation, pads, out_hw)
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
    if out is None:
        out = xp.empty(x.shape[:2] + out_hw, dtype=x.dtype)
    return _pooled(x, kernel, stride, dilation, pads, out_hw, _lowest(x.dtype, xp),
                   xp.maximum, out)


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
    if out is None:
        out = xp.empty(x.shape[:2] + out_hw, dtype=x.dtype)
    h, w = x.shape[2:]
    count_h = _divisor_1d(h, kernel[0], stride[0], pads[0], pads[1], out_hw[0], count_pad, xp)
    count_w = _divisor_1d(w, kernel[1], stride[1], pads[2], pads[3], out_hw[1], count_pad, xp)
    divisor = (count_h[:, None] * count_w[None, :]).astype(x.dtype)  # (Ho, Wo)
    divisor = xp.maximum(divisor, 1)  # a window of padding only sums to 0; keep it 0
    return _pooled(x, kernel, stride, dilation, pads, out_hw, 0, xp.add, out, divisor)


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
