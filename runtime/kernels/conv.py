"""2-D convolution (forward, inference): im2col over a strided view, then GEMM.

The input is padded once; ``as_strided`` turns it into a read-only window view
``(N, C, kh, kw, Ho, Wo)`` without copying. The batch is cut into chunks whose column
matrix fits a small workspace (so it is still in cache when the GEMM reads it), and each
chunk is one batched matmul over the groups. A 1x1, stride-1, unpadded convolution is
already a matmul over the input as it lies, so it skips im2col. The bias and the
activation are applied in place to each chunk of the output while it is hot.
"""

from ..shapes import checked_out, pads4, pair
from ..xp import float_dtype, get_array_module
from .activation import apply_act_

# Bytes of column matrix per chunk: big enough for a wide GEMM, small enough for L2/L3.
WORKSPACE_BYTES = 4 << 20
# Convolutions other than plain 1x1 ones use the shifted-rows GEMM (`_conv_shifted`); False
# forces the strided im2col path everywhere (the benchmarks compare the two).
SHIFTED = True


def _check_conv_shapes(x, w, b, groups):
    if x.ndim != 4:
        raise ValueError(f"conv2d: input must be [N, C, H, W], got shape {tuple(x.shape)}")
    if w.ndim != 4:
        raise ValueError(
            f"conv2d: weight must be [out, C/groups, kh, kw], got shape {tuple(w.shape)}"
        )
    channels = x.shape[1]
    out_channels, group_channels = w.shape[:2]
    if groups < 1 or channels % groups != 0 or out_channels % groups != 0:
        raise ValueError(
            f"conv2d: input channels ({channels}) and output channels ({out_channels}) "
            f"must both divide by groups ({groups})"
        )
    if group_channels * groups != channels:
        raise ValueError(
            f"conv2d: weight {tuple(w.shape)} expects {group_channels * groups} input "
            f"channels with groups={groups}, input has {channels}"
        )
    if b is not None and tuple(b.shape) != (out_channels,):
        raise ValueError(f"conv2d: bias must be [{out_channels}], got {tuple(b.shape)}")


def conv_geometry(x, w, stride, pad, dilation):
    """Checked ``((sh, sw), (dh, dw), (top, bottom, left, right), (Ho, Wo))`` of a
    convolution of ``x`` by ``w``; shared by every backend, so they refuse alike."""
    sh, sw = pair(stride, "stride")
    dh, dw = pair(dilation, "dilation")
    pads = pads4(pad)
    if min(sh, sw, dh, dw) < 1 or min(pads) < 0:
        raise ValueError(
            f"conv2d: stride and dilation must be >= 1 and pad >= 0, got "
            f"stride={(sh, sw)}, dilation={(dh, dw)}, pad={pads}"
        )
    h, wd = x.shape[2:]
    kh, kw = w.shape[2:]
    ho = checked_out(h, kh, sh, pads[:2], dh, False, "conv2d height")
    wo = checked_out(wd, kw, sw, pads[2:], dw, False, "conv2d width")
    return (sh, sw), (dh, dw), pads, (ho, wo)


def _padded(x, pads, xp):
    """Zero-pad H and W by ``(top, bottom, left, right)``; ``x`` itself when all are 0."""
    top, bottom, left, right = pads
    if top == bottom == left == right == 0:
        return x
    n, c, h, w = x.shape
    xpad = xp.zeros((n, c, h + top + bottom, w + left + right), dtype=x.dtype)
    xpad[:, :, top:top + h, left:left + w] = x
    return xpad


def window_view(xpad, kernel, stride, dilation, out_hw, xp):
    """Read-only view ``(N, C, kh, kw, Ho, Wo)`` of every window of ``xpad``; no copy."""
    n, c = xpad.shape[:2]
    kh, kw = kernel
    sh, sw = stride
    dh, dw = dilation
    ho, wo = out_hw
    s_n, s_c, s_h, s_w = xpad.strides
    shape = (n, c, kh, kw, ho, wo)
    strides = (s_n, s_c, s_h * dh, s_w * dw, s_h * sh, s_w * sw)
    return xp.lib.stride_tricks.as_strided(xpad, shape=shape, strides=strides)


def _epilogue_(slab, b, act, scale=None):
    """Scale, bias and activation, in place, on a chunk ``(n, O, Ho*Wo)`` of the output."""
    if scale is not None:
        slab *= scale.reshape(-1, 1)
    if b is not None:
        slab += b.reshape(-1, 1)
    apply_act_(slab, act)


def _flat_view(out, shape, dtype, where):
    """``out (N, O, Ho, Wo)`` seen as ``(N, O, Ho*Wo)`` without a copy."""
    if tuple(out.shape) != shape or out.dtype != dtype:
        raise ValueError(f"{where}: out must be {list(shape)} {dtype}, got "
                         f"{list(out.shape)} {out.dtype}")
    n, o, ho, wo = shape
    s_n, s_o, s_h, s_w = out.strides
    if ho * wo > 1 and (s_w != out.itemsize or (ho > 1 and s_h != wo * out.itemsize)):
        raise ValueError(f"{where}: out must have contiguous rows, got strides {out.strides}")
    xp = get_array_module(out)
    return xp.lib.stride_tricks.as_strided(out, (n, o, ho * wo), (s_n, s_o, out.itemsize))


def _conv_shifted(x, w, b, pads, stride, dilation, groups, act, out, xp, scale=None):
    """A convolution as one GEMM over shifted rows of phase planes of the padded image.

    In a padded plane stored row after row, the tap ``(i, j)`` of every stride-1 output
    pixel is the plane shifted by ``i*dh*Wp + j*dw``. So the column matrix's rows are
    contiguous runs of ``Ho*Wp`` values (the last ``Wp - Wo`` of each output row are
    discarded), copied at memory speed, where a strided im2col copies runs of ``Wo``.
    A stride ``s`` first splits the padded image into ``sh*sw`` phase planes (rows
    ``p, p+sh, ...`` and columns ``q, q+sw, ...``); every tap then reads one phase plane
    shifted, exactly as at stride 1. The column rows are ordered channel-major, as the
    weights lie, so the weights are used as they are, never copied. Bias and activation are
    applied while the kept columns are copied out.
    """
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    og = o // groups
    sh, sw = stride
    dh, dw = dilation
    top, bottom, left, right = pads
    hp, wp = h + top + bottom, wd + left + right
    ho, wo = (hp - (kh - 1) * dh - 1) // sh + 1, (wp - (kw - 1) * dw - 1) // sw + 1
    hq, wq = -(-hp // sh), -(-wp // sw)  # one phase plane
    plane = (hq + 1) * wq  # a spare row: the last tap of the last row runs past the plane
    span = ho * wq  # one image's columns, discarded ones included
    taps = [((i * dh) % sh * sw + (j * dw) % sw, (i * dh) // sh * wq + (j * dw) // sw)
            for i in range(kh) for j in range(kw)]  # (phase, shift) of each tap
    used = sorted({phase for phase, _ in taps})
    k = len(taps) * cg
    wt = w.reshape(groups, og, k)  # (G, O/G, C/G*kh*kw): a view
    nb = max(1, min(n, WORKSPACE_BYTES // (k * span * x.itemsize)))
    phases = xp.zeros((nb, c, len(used), hq + 1, wq), dtype=x.dtype)  # zeros: the padding
    fills = []  # (slot, rows of the plane, columns of the plane, rows of x, columns of x)
    for slot, phase in enumerate(used):
        p, q = divmod(phase, sw)
        a0, a1 = -(-(top - p) // sh), (top + h - 1 - p) // sh  # plane rows holding x
        b0, b1 = -(-(left - q) // sw), (left + wd - 1 - q) // sw
        if a1 >= a0 and b1 >= b0:
            fills.append((slot, slice(a0, a1 + 1), slice(b0, b1 + 1),
                          slice(p + sh * a0 - top, p + sh * a1 - top + 1, sh),
                          slice(q + sw * b0 - left, q + sw * b1 - left + 1, sw)))
    planes = phases.reshape(nb, groups, cg, len(used), plane)
    col = xp.empty((groups, k, nb * span), dtype=x.dtype)
    rows = col.reshape(groups, cg, len(taps), nb, span)
    bias = None if b is None else b.reshape(1, groups, og, 1, 1)
    gain = None if scale is None else scale.reshape(1, groups, og, 1, 1)
    y = xp.empty((groups, og, nb * span), dtype=x.dtype)
    for n0 in range(0, n, nb):
        m = min(nb, n - n0)
        for slot, pr, pc, xr, xc in fills:
            phases[:m, :, slot, pr, pc] = x[n0:n0 + m, :, xr, xc]
        for t, (phase, shift) in enumerate(taps):
            src = planes[:m, :, :, used.index(phase), shift:shift + span]
            rows[:, :, t, :m] = src.transpose(1, 2, 0, 3)
        ym = xp.matmul(wt, col[:, :, :m * span], out=y[:, :, :m * span])
        kept = ym.reshape(groups, og, m, ho, wq)[..., :wo].transpose(2, 0, 1, 3, 4)
        dest = out[n0:n0 + m].reshape(m, groups, og, ho, wo)
        relu = act == "relu" or (isinstance(act, tuple) and act[0] == "relu")
        if gain is not None:
            xp.multiply(kept, gain, out=dest)
            if bias is not None:
                dest += bias
            if relu:
                xp.maximum(dest, 0, out=dest)
        elif bias is not None:
            xp.add(kept, bias, out=dest)
            if relu:
                xp.maximum(dest, 0, out=dest)
        elif relu:
            xp.maximum(kept, 0, out=dest)
        else:
            dest[...] = kept
        if act is not None and not relu:
            apply_act_(out[n0:n0 + m], act)


def conv2d(x, w, b=None, *, stride=1, pad=0, dilation=1, groups=1, act=None, out=None,
           scale=None):
    """Convolve ``x (N, C, H, W)`` with ``w (O, C/groups, kh, kw)``; returns ``(N, O, Ho, Wo)``.

    ``pad`` is ``p``, ``(ph, pw)`` or ``(top, bottom, left, right)``; ``stride`` and
    ``dilation`` are an integer or a pair. ``act`` is a fused activation: None, a name,
    or ``(name, params)``. Float32 inputs give a float32 result; the output is contiguous.
    ``out`` is an ``(N, O, Ho, Wo)`` array to write into; its rows ``H`` and ``W`` must be
    contiguous, so a channel slice of a larger array works (a concat writing in place).
    ``scale`` (``(O,)``) multiplies each output channel before the bias is added: a
    batchnorm folded in at inference without a scaled copy of the weights.
    """
    xp = get_array_module(x, w)
    dtype = float_dtype(xp, x, w)
    x = xp.asarray(x, dtype=dtype)
    w = xp.asarray(w, dtype=dtype)
    if b is not None:
        b = xp.asarray(b, dtype=dtype)
    _check_conv_shapes(x, w, b, groups)
    if scale is not None:
        scale = xp.asarray(scale, dtype=dtype)
        if tuple(scale.shape) != (w.shape[0],):
            raise ValueError(f"conv2d: scale must be [{w.shape[0]}], got {tuple(scale.shape)}")
    (sh, sw), (dh, dw), pads, (ho, wo) = conv_geometry(x, w, stride, pad, dilation)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    og = o // groups
    spatial = ho * wo
    if SHIFTED and not (kh == kw == sh == sw == 1 and max(pads) == 0):
        if out is None:
            out = xp.empty((n, o, ho, wo), dtype=dtype)
        else:
            _flat_view(out, (n, o, ho, wo), dtype, "conv2d")
        _conv_shifted(x, w, b, pads, (sh, sw), (dh, dw), groups, act, out, xp, scale)
        return out
    wg = w.reshape(groups, og, cg * kh * kw)  # (G, O/G, C/G*kh*kw)
    if out is None:
        out = xp.empty((n, o, spatial), dtype=dtype)  # (N, O, Ho*Wo)
    else:
        out = _flat_view(out, (n, o, ho, wo), dtype, "conv2d")

    pointwise = kh == kw == 1 and sh == sw == 1 and max(pads) == 0
    if pointwise:
        xg = x.reshape(n, groups, cg, spatial)  # (N, G, C/G, H*W)
        col_bytes = c * spatial * x.itemsize
    else:
        view = window_view(_padded(x, pads, xp), (kh, kw), (sh, sw), (dh, dw), (ho, wo), xp)
        col_bytes = c * kh * kw * spatial * x.itemsize
    chunk = max(1, WORKSPACE_BYTES // col_bytes)

    for n0 in range(0, n, chunk):
        n1 = min(n, n0 + chunk)
        nb = n1 - n0
        slab = out[n0:n1]  # (nb, O, Ho*Wo)
        slab_g = slab.reshape(nb, groups, og, spatial)  # (nb, G, O/G, Ho*Wo)
        if pointwise:
            xp.matmul(wg, xg[n0:n1], out=slab_g)
        elif nb == 1:
            col = view[n0].reshape(groups, cg * kh * kw, spatial)  # (G, C/G*kh*kw, Ho*Wo)
            xp.matmul(wg, col, out=slab_g[0])
        else:
            # Several small images: one wide GEMM per group over the whole chunk.
            win = view[n0:n1].reshape(nb, groups, cg, kh, kw, ho, wo)
            win = win.transpose(1, 2, 3, 4, 0, 5, 6)  # (G, C/G, kh, kw, nb, Ho, Wo)
            col = win.reshape(groups, cg * kh * kw, nb * spatial)  # (G, C/G*kh*kw, nb*Ho*Wo)
            y = xp.matmul(wg, col)  # (G, O/G, nb*Ho*Wo)
            y = y.reshape(groups, og, nb, spatial).transpose(2, 0, 1, 3)
            slab_g[...] = y
        _epilogue_(slab, b, act, scale)
    return out.reshape(n, o, ho, wo)
