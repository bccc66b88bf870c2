"""Convolution: the ``conv`` layer and the CONV2D primitive it lowers to.

=========  ======================================  =======================================
layer      arguments                               primitive
=========  ======================================  =======================================
conv       out, kernel, stride=1, pad=0,           CONV2D ``(x, w, b=None, *, stride, pad,
           dilation=1, groups=1, bias=true         dilation, groups, act)``
=========  ======================================  =======================================

``pad`` of the primitive is ``(top, bottom, left, right)``; the layer's ``pad=same`` is
resolved at lowering from the input's size. ``act`` is a fused activation epilogue (None, a
name, or ``(name, params)``), set by the memory plan's fusion, never by the lowering; the
kernels also take ``scale=``, a folded batchnorm's per-channel factor.

Implementations: the NumPy-API kernel (shifted-rows GEMM, or im2col over a strided window
view), the training pair (col2im backward), the CUDA kernels (im2col, depthwise, epilogue,
col2im around cuBLAS), the loop reference, ONNX ``Conv`` and ``torch.nn.functional.conv2d``.
"""

from __future__ import annotations

from dataclasses import dataclass


from ..compiler import shapes
from ..compiler.symbolic import is_concrete
from . import gpu, window
from .activation import act_args, act_backward, act_spec, apply_act_, bias_act, emit_fused
from .activation import reference_act, refuse_fused_prelu
from .base import ArgSpec, Example, Layer, Primitive, divisor_help
from .window import checked_out, pads4, pair
from .xp import as_grad, float_dtype, get_array_module, no_act, numpy

# Bytes of column matrix per chunk of the NumPy kernels: big enough for a wide GEMM, small
# enough for L2/L3. (The CUDA kernels' budget is ``gpu.WORKSPACE_BYTES``.)
WORKSPACE_BYTES = 4 << 20
# Convolutions other than plain 1x1 ones use the shifted-rows GEMM (`_conv_shifted`); False
# forces the strided im2col path everywhere (the benchmarks compare the two).
SHIFTED = True


# ---- the layer --------------------------------------------------------------------------------


def _infer(shape, a, ctx):
    channels = shape[0]
    groups = a["groups"]
    if is_concrete(channels) and channels % groups:
        ctx.error(
            "E305",
            f"conv groups={groups} does not divide the {channels} input channels",
            help=divisor_help("groups", channels, groups),
        )
        return None
    if a["out"] % groups:
        ctx.error(
            "E305",
            f"conv groups={groups} does not divide the {a['out']} output channels",
            help=divisor_help("groups", a["out"], groups),
        )
        return None
    hw = window.spatial("conv", shape, ctx, a["kernel"], a["stride"], a["pad"], a["dilation"])
    if hw is None:
        return None
    return (a["out"],) + hw


def _params(shape, a):
    kh, kw = a["kernel"]
    out = {"weight": (a["out"], shape[0] // a["groups"], kh, kw)}
    if a["bias"]:
        out["bias"] = (a["out"],)
    return out


def _macs(shape_in, shape_out, a):
    kh, kw = a["kernel"]
    per_output = shape_in[0] // a["groups"] * kh * kw
    return shape_out[0] * shape_out[1] * shape_out[2] * per_output


def _lint(node, in_shape, report):
    window.lint_unused_tail(node, in_shape, report, ceil_fixes=False)


def _fix(node, in_shape, axis, target):
    return window.fix(node, in_shape, axis, target, pool=False)


def _rank_help(shape):
    return window.map_only_help("conv", shape)


def _pads(a, in_shape):
    """``(top, bottom, left, right)`` of the layer's ``pad``; ``same`` from the input size."""
    if a["pad"] != "same":
        return (a["pad"][0], a["pad"][0], a["pad"][1], a["pad"][1])
    _, h, w = in_shape
    top, bottom = shapes.same_pads(h, a["kernel"][0], a["stride"][0], a["dilation"][0])
    left, right = shapes.same_pads(w, a["kernel"][1], a["stride"][1], a["dilation"][1])
    return (top, bottom, left, right)


def _lower(node, in_shapes):
    a = node.args
    attrs = dict(stride=a["stride"], pad=_pads(a, in_shapes[0]), dilation=a["dilation"],
                 groups=a["groups"], act=None)
    return "conv2d", attrs


CONV = Layer(
    "conv",
    [
        ArgSpec("out", "count"),
        ArgSpec("kernel", "pair"),
        ArgSpec("stride", "pair", 1),
        ArgSpec("pad", "cpad", 0),
        ArgSpec("dilation", "pair", 1),
        ArgSpec("groups", "count", 1),
        ArgSpec("bias", "bool", True),
    ],
    (3,),
    _infer,
    _lower,
    params=_params,
    macs=_macs,
    lint=_lint,
    formula=window.formula,
    fix=_fix,
    rank_help=_rank_help,
    doc="2-D convolution",
)


# ---- CONV2D: the kernel -----------------------------------------------------------------------


def _check_shapes(x, w, b, groups):
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


def _check_scale(scale, out_channels):
    if tuple(scale.shape) != (out_channels,):
        raise ValueError(f"conv2d: scale must be [{out_channels}], got {tuple(scale.shape)}")


def _geometry(x, w, stride, pad, dilation):
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


def _window_view(xpad, kernel, stride, dilation, out_hw, xp):
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
    _check_shapes(x, w, b, groups)
    if scale is not None:
        scale = xp.asarray(scale, dtype=dtype)
        _check_scale(scale, w.shape[0])
    (sh, sw), (dh, dw), pads, (ho, wo) = _geometry(x, w, stride, pad, dilation)
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
    given = out
    if out is None:
        out = xp.empty((n, o, spatial), dtype=dtype)  # (N, O, Ho*Wo)
    else:
        out = _flat_view(out, (n, o, ho, wo), dtype, "conv2d")

    pointwise = kh == kw == 1 and sh == sw == 1 and max(pads) == 0
    if pointwise:
        xg = x.reshape(n, groups, cg, spatial)  # (N, G, C/G, H*W)
        col_bytes = c * spatial * x.itemsize
    else:
        view = _window_view(_padded(x, pads, xp), (kh, kw), (sh, sw), (dh, dw), (ho, wo), xp)
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
    return out.reshape(n, o, ho, wo) if given is None else given


# ---- CONV2D: training -------------------------------------------------------------------------
# The backward pass walks the batch in the same cache-sized chunks as the forward. For each
# chunk it rebuilds the column matrix from the window view of the padded input, then
#     gW += gy @ col.T          # (G, O/G, nb*Ho*Wo) @ (G, nb*Ho*Wo, C/G*kh*kw)
#     gcol = W.T @ gy           # (G, C/G*kh*kw, nb*Ho*Wo)
# and scatters gcol back onto the padded input, one strided-slice add per tap (col2im).


def conv2d_forward(x, w, b=None, *, stride=1, pad=0, dilation=1, groups=1, act=None,
                   train=True, rng=None):
    """``y = conv2d(x, w, b)``; keeps ``x`` and ``w`` (a reference to the parameter)."""
    no_act(act, "conv2d")
    xp = get_array_module(x, w)
    dtype = float_dtype(xp, x, w)
    x = xp.asarray(x, dtype=dtype)
    w = xp.asarray(w, dtype=dtype)
    y = conv2d(x, w, b, stride=stride, pad=pad, dilation=dilation, groups=groups)
    geometry = (pair(stride, "stride"), pair(dilation, "dilation"), pads4(pad), groups)
    return y, (x, w, b is not None, geometry, tuple(y.shape))


def _columns(x, n0, n1, geometry, out_hw, kernel, xp):
    """Column matrix of images ``n0:n1``: ``(G, C/G*kh*kw, nb*Ho*Wo)``, a fresh array."""
    stride, dilation, pads, groups = geometry
    nb = n1 - n0
    c = x.shape[1]
    cg = c // groups
    kh, kw = kernel
    ho, wo = out_hw
    view = _window_view(_padded(x[n0:n1], pads, xp), kernel, stride, dilation, out_hw, xp)
    win = view.reshape(nb, groups, cg, kh, kw, ho, wo)
    win = win.transpose(1, 2, 3, 4, 0, 5, 6)  # (G, C/G, kh, kw, nb, Ho, Wo)
    return win.reshape(groups, cg * kh * kw, nb * ho * wo)


def _col2im(gcol, nb, x_shape, geometry, out_hw, kernel, xp):
    """Sum the column gradient ``(G, C/G*kh*kw, nb*Ho*Wo)`` back onto ``(nb, C, H, W)``."""
    stride, dilation, pads, groups = geometry
    _, c, h, w = x_shape
    kh, kw = kernel
    ho, wo = out_hw
    sh, sw = stride
    dh, dw = dilation
    top, bottom, left, right = pads
    gcol = gcol.reshape(groups, c // groups, kh, kw, nb, ho, wo)
    gcol = gcol.transpose(4, 0, 1, 2, 3, 5, 6).reshape(nb, c, kh, kw, ho, wo)
    gpad = xp.zeros((nb, c, h + top + bottom, w + left + right), dtype=gcol.dtype)
    for i in range(kh):
        rows = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
        for j in range(kw):
            cols = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
            gpad[:, :, rows, cols] += gcol[:, :, i, j]
    return gpad[:, :, top:top + h, left:left + w]


def conv2d_backward(saved, dy):
    x, w, has_bias, geometry, y_shape = saved
    stride, dilation, pads, groups = geometry
    xp = get_array_module(x, w)
    dy = as_grad(dy, y_shape, x.dtype, xp, "conv2d")
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    ho, wo = y_shape[2:]
    og = o // groups
    spatial = ho * wo
    ck = cg * kh * kw
    wg = w.reshape(groups, og, ck)  # (G, O/G, C/G*kh*kw)
    wg_t = wg.transpose(0, 2, 1)  # (G, C/G*kh*kw, O/G)
    gy = dy.reshape(n, groups, og, spatial)  # (N, G, O/G, Ho*Wo)
    gx = xp.empty(x.shape, dtype=x.dtype)
    gW = xp.zeros((groups, og, ck), dtype=x.dtype)

    pointwise = kh == kw == 1 and stride == (1, 1) and max(pads) == 0
    chunk = max(1, WORKSPACE_BYTES // (c * kh * kw * spatial * x.itemsize))
    for n0 in range(0, n, chunk):
        n1 = min(n, n0 + chunk)
        nb = n1 - n0
        gyc = gy[n0:n1].transpose(1, 2, 0, 3).reshape(groups, og, nb * spatial)
        if pointwise:
            col = x[n0:n1].reshape(nb, groups, cg, spatial).transpose(1, 2, 0, 3)
            col = col.reshape(groups, cg, nb * spatial)  # (G, C/G, nb*H*W)
        else:
            col = _columns(x, n0, n1, geometry, (ho, wo), (kh, kw), xp)
        gW += xp.matmul(gyc, col.transpose(0, 2, 1))
        del col
        gcol = xp.matmul(wg_t, gyc)  # (G, C/G*kh*kw, nb*Ho*Wo)
        if pointwise:
            gcol = gcol.reshape(groups, cg, nb, spatial).transpose(2, 0, 1, 3)
            gx[n0:n1] = gcol.reshape(nb, c, h, wd)
        else:
            gx[n0:n1] = _col2im(gcol, nb, x.shape, geometry, (ho, wo), (kh, kw), xp)
    gW = gW.reshape(w.shape)
    if not has_bias:
        return (gx,), (gW,)
    gb = dy.sum(axis=(0, 2, 3))
    return (gx,), (gW, gb)


# ---- CONV2D: the CUDA kernels -----------------------------------------------------------------
# im2col (``cnnc_im2col``) and cuBLAS through ``matmul``, one fused scale/bias/activation
# epilogue (``cnnc_conv_epilogue``); a direct kernel for depthwise convolutions; col2im
# (``cnnc_col2im``) for the backward pass.


@dataclass(frozen=True)
class ConvGeometry:
    """Every size of one convolution, from the shapes and the step's attributes."""

    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    stride: tuple
    dilation: tuple
    pads: tuple  # (top, bottom, left, right)
    groups: int
    ho: int
    wo: int

    @property
    def cg(self):
        return self.c // self.groups

    @property
    def og(self):
        return self.o // self.groups

    @property
    def spatial(self):
        return self.ho * self.wo

    @property
    def k(self):
        """Rows of one group's column matrix: C/G * kh * kw."""
        return self.cg * self.kh * self.kw

    @property
    def pointwise(self):
        """A 1x1, stride-1, unpadded convolution: a matmul over the input as it lies."""
        return (self.kh == self.kw == 1 and self.stride == (1, 1) and max(self.pads) == 0)

    @property
    def depthwise(self):
        """One input channel per group (and more than one group): a direct kernel."""
        return self.groups > 1 and self.cg == 1 and not self.pointwise

    def window_args(self):
        """The im2col / col2im geometry arguments after ``nb, C, H, W``."""
        return (self.kh, self.kw, self.stride[0], self.stride[1], self.pads[0], self.pads[2],
                self.dilation[0], self.dilation[1], self.ho, self.wo)


def conv_geometry(x, w, b, stride, pad, dilation, groups):
    """Check the shapes and attributes of a convolution as the NumPy kernel does (same
    messages) and return its ConvGeometry."""
    _check_shapes(x, w, b, groups)
    (sh, sw), (dh, dw), pads, (ho, wo) = _geometry(x, w, stride, pad, dilation)
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    return ConvGeometry(n, c, h, wd, o, kh, kw, (sh, sw), (dh, dw), pads, groups, ho, wo)


def _gpu_columns(x, geo, n0, nb, xp):
    """The column matrix of samples ``n0 .. n0+nb`` as ``(G, C/G*kh*kw, nb*Ho*Wo)``."""
    if geo.pointwise:
        part = x[n0:n0 + nb].reshape(nb, geo.groups, geo.cg, geo.spatial)
        col = xp.ascontiguousarray(part.transpose(1, 2, 0, 3))  # (G, C/G, nb, S)
    else:
        col = xp.empty((geo.c * geo.kh * geo.kw, nb * geo.spatial), dtype=x.dtype)
        gpu.launch("cnnc_im2col", x.dtype, col.size, x[n0:n0 + nb], col, col.size, nb,
                   geo.c, geo.h, geo.w, *geo.window_args())
    return col.reshape(geo.groups, geo.k, nb * geo.spatial)


def _conv_raw(x, w, b, geo, spec, xp, out=None):
    """The convolution with bias and the activation ``spec`` fused, ``(N, O, Ho, Wo)``,
    written into ``out`` (C-contiguous) when given."""
    dtype = x.dtype
    if out is None:
        out = xp.empty((geo.n, geo.o, geo.ho, geo.wo), dtype=dtype)
    has_bias = b is not None
    bias = b if has_bias else gpu.dummy(dtype, xp)
    epilogue = act_args(spec, out.shape, dtype, xp)
    if geo.depthwise:
        gpu.launch("cnnc_depthwise_conv", dtype, out.size, x, w, bias, int(has_bias), out,
                   out.size, geo.c, geo.h, geo.w, geo.o, *geo.window_args(), *epilogue)
        return out
    if geo.pointwise:
        wg = w.reshape(geo.groups, geo.og, geo.cg)
        xg = x.reshape(geo.n, geo.groups, geo.cg, geo.spatial)
        xp.matmul(wg, xg, out=out.reshape(geo.n, geo.groups, geo.og, geo.spatial))
        return bias_act(out, out, b, spec, xp)
    wg = w.reshape(geo.groups, geo.og, geo.k)
    per_sample = (geo.c * geo.kh * geo.kw + geo.o) * geo.spatial * x.itemsize
    chunk = gpu.batch_chunk(geo.n, per_sample)
    for n0 in range(0, geo.n, chunk):
        nb = min(chunk, geo.n - n0)
        col = _gpu_columns(x, geo, n0, nb, xp)  # (G, C/G*kh*kw, nb*S)
        if geo.groups == 1:
            tmp = xp.matmul(wg[0], col[0])  # (O, nb*S)
        else:
            tmp = xp.matmul(wg, col)  # (G, O/G, nb*S)
        tmp = xp.ascontiguousarray(tmp)
        part = out[n0:n0 + nb]
        gpu.launch("cnnc_conv_epilogue", dtype, part.size, tmp, part, bias, int(has_bias),
                   part.size, nb, geo.o, geo.spatial, *epilogue)
    return out


def _gpu_inputs(x, w, b, xp):
    dtype = gpu.compute_dtype(x.dtype, w.dtype)
    x = gpu.contiguous(x, dtype, xp)
    w = gpu.contiguous(w, dtype, xp)
    if b is not None:
        b = gpu.contiguous(b, dtype, xp)
    return x, w, b


def gpu_conv2d(x, w, b=None, *, stride=1, pad=0, dilation=1, groups=1, act=None, out=None,
               scale=None):
    """CONV2D: ``x (N, C, H, W)`` with ``w (O, C/groups, kh, kw)`` -> ``(N, O, Ho, Wo)``,
    written into ``out`` when given; ``scale`` as the NumPy kernel's."""
    xp = gpu.cupy()
    x, w, b = _gpu_inputs(x, w, b, xp)
    geo = conv_geometry(x, w, b, stride, pad, dilation, groups)
    y = gpu.target(out, (geo.n, geo.o, geo.ho, geo.wo), x.dtype, xp, "conv2d")
    if scale is None:
        return gpu.deliver(_conv_raw(x, w, b, geo, act_spec(act), xp, y), out)
    scale = gpu.contiguous(scale, x.dtype, xp)
    _check_scale(scale, geo.o)
    _conv_raw(x, w, None, geo, act_spec(None), xp, y)
    y *= scale.reshape(1, geo.o, 1, 1)
    return gpu.deliver(bias_act(y, y, b, act_spec(act), xp), out)


def gpu_conv2d_forward(x, w, b=None, *, train=True, rng=None, stride=1, pad=0, dilation=1,
                       groups=1, act=None):
    xp = gpu.cupy()
    x, w, b = _gpu_inputs(x, w, b, xp)
    geo = conv_geometry(x, w, b, stride, pad, dilation, groups)
    spec = act_spec(act)
    refuse_fused_prelu(spec, "conv2d")
    if spec.identity:
        y = _conv_raw(x, w, b, geo, spec, xp)
        return y, dict(x=x, w=w, has_bias=b is not None, geo=geo, spec=spec, z=None)
    z = _conv_raw(x, w, b, geo, act_spec(None), xp)  # before the activation
    y = bias_act(z, xp.empty_like(z), None, spec, xp)
    return y, dict(x=x, w=w, has_bias=b is not None, geo=geo, spec=spec, z=z)


def gpu_conv2d_backward(saved, dy):
    xp = gpu.cupy()
    x, w, geo, spec = saved["x"], saved["w"], saved["geo"], saved["spec"]
    dtype = x.dtype
    gz = gpu.grad_input(dy, (geo.n, geo.o, geo.ho, geo.wo), dtype, xp, "conv2d")
    if saved["z"] is not None:
        gz = act_backward(gz, saved["z"], spec, xp)
    gz = gz.reshape(geo.n, geo.o, geo.spatial)  # (N, O, S)
    wg = w.reshape(geo.groups, geo.og, geo.k)
    gW = xp.zeros((geo.groups, geo.og, geo.k), dtype=dtype)
    gx = xp.empty_like(x)
    # a chunk holds the column matrix, its gradient, and the permuted output gradient
    per_sample = (2 * geo.c * geo.kh * geo.kw + geo.o) * geo.spatial * x.itemsize
    chunk = gpu.batch_chunk(geo.n, per_sample)
    for n0 in range(0, geo.n, chunk):
        nb = min(chunk, geo.n - n0)
        part = gz[n0:n0 + nb].reshape(nb, geo.groups, geo.og, geo.spatial)
        gz_g = xp.ascontiguousarray(part.transpose(1, 2, 0, 3))  # (G, O/G, nb, S)
        gz_g = gz_g.reshape(geo.groups, geo.og, nb * geo.spatial)
        col = _gpu_columns(x, geo, n0, nb, xp)  # (G, C/G*kh*kw, nb*S)
        if geo.groups == 1:
            # 2-D products hand the transposes to cuBLAS; CuPy's batched matmul would
            # first copy each transposed operand
            gW[0] += xp.matmul(gz_g[0], col[0].T)  # (O, C*kh*kw)
            gcol = xp.matmul(wg[0].T, gz_g[0])[None]  # (1, C*kh*kw, nb*S)
        else:
            gW += xp.matmul(gz_g, col.transpose(0, 2, 1))  # (G, O/G, C/G*kh*kw)
            gcol = xp.matmul(wg.transpose(0, 2, 1), gz_g)  # (G, C/G*kh*kw, nb*S)
        gx_part = gx[n0:n0 + nb]
        if geo.pointwise:
            gcol = gcol.reshape(geo.groups, geo.cg, nb, geo.spatial).transpose(2, 0, 1, 3)
            gx_part[...] = gcol.reshape(nb, geo.c, geo.h, geo.w)
        else:
            gcol = xp.ascontiguousarray(gcol)
            gpu.launch("cnnc_col2im", dtype, gx_part.size, gcol, gx_part, gx_part.size, nb,
                       geo.c, geo.h, geo.w, *geo.window_args())
    grads = (gW.reshape(w.shape),)
    if saved["has_bias"]:
        grads += (gz.sum(axis=(0, 2)),)
    return (gx,), grads


# ---- CONV2D: reference, ONNX, PyTorch, examples -----------------------------------------------


def _out_len(n, k, s, p_begin, p_end, d):
    """``floor((n + p_begin + p_end - d(k-1) - 1) / s) + 1``, written out again: the
    oracle shares no arithmetic with the kernels."""
    out = (n + p_begin + p_end - d * (k - 1) - 1) // s + 1
    if out < 1:
        raise ValueError(f"output size {out} < 1")
    return out


def reference_conv2d(x, w, b=None, *, stride=1, pad=0, dilation=1, groups=1, act=None):
    """Loops over output pixels and taps, bounds checked tap by tap; float64."""
    x = numpy.asarray(x, dtype=numpy.float64)
    w = numpy.asarray(w, dtype=numpy.float64)
    n_batch, _, height, width = x.shape
    out_ch, group_ch, kh, kw = w.shape
    sh, sw = pair(stride)
    dh, dw = pair(dilation)
    top, bottom, left, right = pads4(pad)
    ho = _out_len(height, kh, sh, top, bottom, dh)
    wo = _out_len(width, kw, sw, left, right, dw)
    per_group = out_ch // groups
    y = numpy.zeros((n_batch, out_ch, ho, wo))
    for n in range(n_batch):
        for o in range(out_ch):
            g = o // per_group
            channels = slice(g * group_ch, (g + 1) * group_ch)
            for oh in range(ho):
                for ow in range(wo):
                    total = 0.0 if b is None else float(b[o])
                    for i in range(kh):
                        ih = oh * sh - top + i * dh
                        if not 0 <= ih < height:
                            continue
                        for j in range(kw):
                            iw = ow * sw - left + j * dw
                            if not 0 <= iw < width:
                                continue
                            total += float(x[n, channels, ih, iw] @ w[o, :, i, j])
                    y[n, o, oh, ow] = total
    return reference_act(y, act)


def _emit_conv2d(g, step, xs, ws, out, in_shapes):
    a = step.attrs
    kh, kw = g.arrays[ws[0]].shape[2:]
    top, bottom, left, right = pads4(a["pad"])
    target = out if a.get("act") is None else g.temp("conv")
    g.node("Conv", xs + ws, target, None if target == out else "conv",
           kernel_shape=[kh, kw], strides=list(pair(a["stride"])),
           dilations=list(pair(a["dilation"])), group=a["groups"],
           pads=[top, left, bottom, right])
    if target != out:
        emit_fused(g, a["act"], target, out, step.shape)


def _torch_conv2d(step, xs, ws, training):
    """``F.conv2d``; an asymmetric padding as ``F.pad`` first. (No fused activation: the
    plans the oracle runs are not fused.)"""
    import torch

    F = torch.nn.functional
    a = step.attrs
    x = xs[0]
    bias = ws[1] if len(ws) > 1 else None
    top, bottom, left, right = pads4(a["pad"])
    if top == bottom and left == right:
        return F.conv2d(x, ws[0], bias, a["stride"], (top, left), a["dilation"], a["groups"])
    x = F.pad(x, (left, right, top, bottom))
    return F.conv2d(x, ws[0], bias, a["stride"], 0, a["dilation"], a["groups"])


def _examples_conv2d(rng):
    def example(channels, out, kernel, groups, bias, note, hw=(5, 6), **attrs):
        x = rng.standard_normal((2, channels) + hw)
        w = rng.standard_normal((out, channels // groups) + kernel)
        params = [w, rng.standard_normal(out)] if bias else [w]
        attrs = dict(dict(stride=1, pad=0, dilation=1, groups=groups, act=None), **attrs)
        return Example([x], params, attrs, note=note)

    return [
        example(3, 4, (3, 3), 1, True, "3x3, pad 1, bias", pad=(1, 1, 1, 1)),
        example(4, 6, (2, 3), 2, False, "asymmetric pad, stride, dilation, groups, no bias",
                stride=(2, 1), pad=(0, 2, 1, 0), dilation=(1, 2)),
        example(4, 6, (1, 1), 2, True, "pointwise, grouped"),
        example(4, 4, (3, 3), 4, False, "depthwise, stride 2", hw=(6, 6), stride=2, pad=1),
        example(2, 3, (3, 2), 1, True, "dilated, pad pair", hw=(7, 6), dilation=2, pad=(2, 1)),
        example(2, 4, (3, 3), 1, False, "stride past the dilated kernel, one-sided pads",
                hw=(7, 7), stride=3, pad=(2, 0, 0, 2), dilation=2),
    ]


CONV2D = Primitive(
    "conv2d",
    "(x, w, b=None, *, stride, pad, dilation, groups, act)",
    kernel=conv2d,
    forward=conv2d_forward,
    backward=conv2d_backward,
    reference=reference_conv2d,
    onnx=_emit_conv2d,
    torch=_torch_conv2d,
    examples=_examples_conv2d,
    gpu_kernel=gpu_conv2d,
    gpu_forward=gpu_conv2d_forward,
    gpu_backward=gpu_conv2d_backward,
    accepts_out=True,
    accepts_scale=True,
    gemm=True,
    doc="2-D convolution, with an optional fused scale, bias and activation epilogue",
)

LAYERS = [CONV]
PRIMITIVES = [CONV2D]
