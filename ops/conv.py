"""Convolution: the ``conv``, ``conv1d`` and ``conv3d`` layers and the CONV2D, CONV1D and
CONV3D primitives they lower to.

=========  ======================================  =======================================
layer      arguments                               primitive
=========  ======================================  =======================================
conv       out, kernel, stride=1, pad=0,           CONV2D ``(x, w, b=None, *, stride, pad,
           dilation=1, groups=1, bias=true         dilation, groups, act)``
conv1d     the same, on [C, L] signals             CONV1D (the same attributes)
conv3d     the same, on [C, D, H, W] volumes       CONV3D (the same attributes)
=========  ======================================  =======================================

Kernel, stride and dilation are one value per spatial dim. ``pad`` of a primitive is
``(begin, end)`` per spatial dim, flattened: ``(top, bottom, left, right)`` for CONV2D,
``(begin, end)`` for CONV1D, ``(front, back, top, bottom, left, right)`` for CONV3D; the
layers' ``pad=same`` is resolved at lowering from the input's size. ``act`` is a fused
activation epilogue (None, a name, or ``(name, params)``), set by the memory plan's fusion,
never by the lowering; the kernels also take ``scale=``, a folded batchnorm's (and scale
layer's) per-channel factor.

Implementations: the NumPy-API kernel (shifted-rows GEMM, or im2col over a strided window
view), the training pair (col2im backward), the compiled CPU kernels where numba is installed
(``ops/fast.py``: depthwise convolutions forward and backward, and the forward of those
with a few input channels per group such as an RGB stem; the NumPy-API code stays
beside them as their reference), the CUDA kernels (im2col,
depthwise, epilogue, col2im around cuBLAS), the loop reference, ONNX ``Conv`` and
``torch.nn.functional.conv2d``. The memory plan may fuse a per-channel ``gate=`` (a
squeeze-and-excitation ``mul``) into the kernels' epilogue. CONV1D runs on all of CONV2D's
kernels through height-1 views; CONV3D has an N-d im2col of its own (NumPy API, so it runs
on CuPy arrays too). ONNX ``Conv`` and PyTorch's
``conv1d`` / ``conv3d`` take every rank.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from ..compiler import shapes
from ..compiler.symbolic import is_concrete
from . import gpu, window
from .activation import act_args, act_backward, act_spec, apply_act_, bias_act, emit_fused
from .activation import reference_act, refuse_fused_prelu
from .base import ArgSpec, Example, Layer, Primitive, divisor_help, keeps_input
from .window import checked_out, pads4, pair
from .xp import as_grad, float_dtype, get_array_module, no_act, numpy, prod

# Bytes of column matrix per chunk of the NumPy kernels: big enough for a wide GEMM, small
# enough for L2/L3. (The CUDA kernels' budget is ``gpu.WORKSPACE_BYTES``.)
WORKSPACE_BYTES = 4 << 20
# Convolutions other than plain 1x1 ones use the shifted-rows GEMM (`_conv_shifted`); False
# forces the strided im2col path everywhere (the benchmarks compare the two).
SHIFTED = True
# Strided ungrouped convolutions run as register tiles over gathered patches where those
# run (`ops/patches.py`); False: the paths below (the direct loop for a stem of few
# channels, else a GEMM).
PATCHES = True


# ---- the layers -------------------------------------------------------------------------------
# ``conv`` on [C, H, W] maps, ``conv1d`` on [C, L] signals, ``conv3d`` on [C, D, H, W] volumes:
# one set of rules, per spatial dim.

# spatial dims -> the layer, and the primitive it lowers to
NAMES = {1: "conv1d", 2: "conv", 3: "conv3d"}
PRIMITIVE_NAMES = {1: "conv1d", 2: "conv2d", 3: "conv3d"}
# Argument kinds of conv1d and conv3d (ops/base.py): an integer or a list per spatial dim,
# and that or `same` / `valid` for the padding; ``check_args`` makes each one value per dim.
DIMS_KIND = "dims"
DPAD_KIND = "dcpad"


def _infer_for(op):
    def infer(shape, a, ctx):
        # A `groups` that does not divide the channels is an error, but the output shape is
        # still known, so checking goes on past it.
        channels = shape[0]
        groups = a["groups"]
        if is_concrete(channels) and channels % groups:
            ctx.error(
                "E305",
                f"{op} groups={groups} does not divide the {channels} input channels",
                help=divisor_help("groups", channels, groups),
            )
        if a["out"] % groups:
            ctx.error(
                "E305",
                f"{op} groups={groups} does not divide the {a['out']} output channels",
                help=divisor_help("groups", a["out"], groups),
            )
        sizes = window.spatial(op, shape, ctx, a["kernel"], a["stride"], a["pad"],
                               a["dilation"])
        if sizes is None:
            return None
        return (a["out"],) + sizes

    return infer


_infer = _infer_for("conv")


def _params(shape, a):
    out = {"weight": (a["out"], shape[0] // a["groups"]) + tuple(a["kernel"])}
    if a["bias"]:
        out["bias"] = (a["out"],)
    return out


def _macs(shape_in, shape_out, a):
    """Output elements x C/groups x kernel volume."""
    per_output = shape_in[0] // a["groups"]
    for k in a["kernel"]:
        per_output = per_output * k
    total = shape_out[0]
    for size in shape_out[1:]:
        total = total * size
    return total * per_output


def _lint(node, in_shape, report):
    window.lint_unused_tail(node, in_shape, report, ceil_fixes=False)


def _fix(node, in_shape, axis, target):
    return window.fix(node, in_shape, axis, target, pool=False)


def _rank_help_for(op):
    def rank_help(shape):
        return window.namesake_help(op, NAMES, shape)

    return rank_help


_rank_help = _rank_help_for("conv")


def _pads(a, in_shape):
    """The primitive's ``pad`` of the layer's: ``(begin, end)`` per spatial dim, flattened
    (``(top, bottom, left, right)`` in 2-D); ``same`` from the input size."""
    if a["pad"] != "same":
        return tuple(p for p in a["pad"] for _ in range(2))
    pads = ()
    for n, k, s, d in zip(in_shape[1:], a["kernel"], a["stride"], a["dilation"]):
        pads += shapes.same_pads(n, k, s, d)
    return pads


def _lower_for(primitive):
    def lower(node, in_shapes):
        a = node.args
        attrs = dict(stride=a["stride"], pad=_pads(a, in_shapes[0]), dilation=a["dilation"],
                     groups=a["groups"], act=None)
        return primitive, attrs

    return lower


_lower = _lower_for("conv2d")


def _conv_args(dims_kind, pad_kind):
    return [
        ArgSpec("out", "count"),
        ArgSpec("kernel", dims_kind),
        ArgSpec("stride", dims_kind, 1),
        ArgSpec("pad", pad_kind, 0),
        ArgSpec("dilation", dims_kind, 1),
        ArgSpec("groups", "count", 1),
        ArgSpec("bias", "bool", True),
    ]


CONV = Layer(
    "conv",
    _conv_args("pair", "cpad"),
    (3,),
    _infer,
    _lower,
    params=_params,
    macs=_macs,
    lint=_lint,
    formula=window.formula,
    fix=_fix,
    rank_help=_rank_help,
    field="window",
    doc="2-D convolution",
)


def _conv_layer(n, doc):
    op = NAMES[n]
    return Layer(
        op,
        _conv_args(DIMS_KIND, DPAD_KIND),
        (n + 1,),
        _infer_for(op),
        _lower_for(PRIMITIVE_NAMES[n]),
        params=_params,
        macs=_macs,
        check_args=window.per_dim_checks(op, n, ("kernel", "stride", "pad", "dilation")),
        lint=_lint,
        formula=window.formula,
        fix=_fix,
        rank_help=_rank_help_for(op),
        field="window",
        doc=doc,
    )


CONV1D = _conv_layer(1, "1-D convolution over [C, L] signals")
CONV3D = _conv_layer(3, "3-D convolution over [C, D, H, W] volumes")


# ---- CONV2D: the kernel -----------------------------------------------------------------------


def _check_shapes(x, w, b, groups, where="conv2d", n=2):
    """The ranks and channel counts of a convolution with ``n`` spatial dims."""
    if x.ndim != n + 2:
        raise ValueError(f"{where}: input must be [N, C, {window.DIM_LETTERS[n]}], got shape "
                         f"{tuple(x.shape)}")
    if w.ndim != n + 2:
        raise ValueError(
            f"{where}: weight must be [out, C/groups, {window.KERNEL_LETTERS[n]}], got shape "
            f"{tuple(w.shape)}"
        )
    channels = x.shape[1]
    out_channels, group_channels = w.shape[:2]
    if channels == 0 or out_channels == 0:
        raise ValueError(f"{where}: input {tuple(x.shape)} and weight {tuple(w.shape)} must "
                         f"have at least one channel each")
    if groups < 1 or channels % groups != 0 or out_channels % groups != 0:
        raise ValueError(
            f"{where}: input channels ({channels}) and output channels ({out_channels}) "
            f"must both divide by groups ({groups})"
        )
    if group_channels * groups != channels:
        raise ValueError(
            f"{where}: weight {tuple(w.shape)} expects {group_channels * groups} input "
            f"channels with groups={groups}, input has {channels}"
        )
    if b is not None and tuple(b.shape) != (out_channels,):
        raise ValueError(f"{where}: bias must be [{out_channels}], got {tuple(b.shape)}")


def _check_scale(scale, out_channels, where="conv2d"):
    if tuple(scale.shape) != (out_channels,):
        raise ValueError(f"{where}: scale must be [{out_channels}], got {tuple(scale.shape)}")


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


def _compiled(*arrays):
    """``ops/fast.py`` when its compiled kernels take these arrays (numba installed and on,
    NumPy float arrays of one dtype), else None: the NumPy-API code runs."""
    from . import fast

    return fast if fast.usable(*arrays) else None


# Ungrouped convolutions of at most this many input channels and a kernel 3 or 5 wide run
# as direct compiled loops (ops/fast.direct_conv2d), as depthwise ones do: the GEMM's
# inner dimension would be 27 for an RGB stem. Measured at one thread, batch 4: 3 -> 32 at
# 224x224, stride 2 (MobileNet V2's and EfficientNet's stem), 0.88 ms per image against
# the shifted GEMM's 1.32; 4 -> 32 at 56x56 0.26 against 0.29; 16 -> 24 at 112x112,
# stride 2, 0.80 against 0.85 (not worth a rule); 7 and 11 wide, 1.7 to 2.3x slower.
# (Grouped ones, ResNeXt's 4 channels a group, are not measured: they stay GEMMs.)
DIRECT_CHANNELS = 4

# Ungrouped convolutions of at most this many input channels whose output maps have at most
# this many pixels cut their column matrix from the image laid out channel-last
# (`_conv_channels_last`). One thread, 3x3, against the shifted-rows GEMM: 16 -> 32 and
# 32 -> 64 at 4x4 to 8x8, batch 1 to 32, 0.32-0.76 of the time (the digits example's
# layers 0.45-0.57); 64 -> 64 0.40-0.69; at 14x14 0.5-1.35, at 28x28 0.8-1.8, and from 128
# channels (where Winograd runs from 14x14) 0.5-2.8: not taken there.
CHANNELS_LAST_CHANNELS = 64
CHANNELS_LAST_MAP = 64

# Whether a GEMM convolution's epilogue runs compiled (ops/fast.py, one pass) where it can;
# False: NumPy's passes (docs/performance.md has both measured).
COMPILED_EPILOGUE = True


def _compiled_epilogue(x, w, b, scale, out, gate, act):
    """``ops/fast.py`` when the epilogue of this convolution runs compiled, else None."""
    if not COMPILED_EPILOGUE or (act is None and scale is None and gate is None):
        return None
    fast = _compiled(x, w, b, scale, out, gate)
    if fast is None or fast.act_code(act, x.dtype) is None:
        return None
    return fast


def _epilogue_(slab, b, act, scale=None, gate=None, fast=None):
    """Scale, bias, activation and gate ``(n, O)``, in place, on a chunk ``(n, O, Ho*Wo)``
    of the output; compiled in one pass where ``fast`` is ``ops/fast.py``."""
    if scale is None and b is None and act is None and gate is None:
        return
    if fast is not None and fast.epilogue_(slab.reshape(slab.shape[:2] + (1, -1)), None, scale,
                                           b, act, gate):
        return
    if scale is not None:
        slab *= scale.reshape(-1, 1)
    if b is not None:
        slab += b.reshape(-1, 1)
    apply_act_(slab, act)
    if gate is not None:
        slab *= gate[:, :, None]


def _gate_of(gate, n, o, dtype, xp, where="conv2d", name="gate", side="output"):
    """A fused gate (``(N, O or 1, 1, ...)``: squeeze-and-excitation) as a contiguous
    ``(N, O)`` array of ``dtype``; None stays None. ``name`` and ``side`` (the output or
    input channels it multiplies) for the error."""
    if gate is None:
        return None
    gate = xp.asarray(gate, dtype=dtype)
    if (gate.ndim < 2 or gate.shape[0] != n or gate.shape[1] not in (1, o)
            or any(d != 1 for d in gate.shape[2:])):
        raise ValueError(f"{where}: {name} must be [{n}, {o} or 1, 1...] (one factor per "
                         f"image and {side} channel), got {list(gate.shape)}")
    gate = xp.ascontiguousarray(xp.broadcast_to(gate.reshape(n, -1), (n, o)))
    # writable always (a read-only one is another type to numba: one more compilation)
    return gate if getattr(gate.flags, "writeable", True) else gate.copy()


def _check_rows_out(out, shape, dtype, where):
    """Refuse an ``out`` that is not ``shape`` and ``dtype`` with contiguous rows."""
    if tuple(out.shape) != shape or out.dtype != dtype:
        raise ValueError(f"{where}: out must be {list(shape)} {dtype}, got "
                         f"{list(out.shape)} {out.dtype}")
    ho, wo = shape[2:]
    s_h, s_w = out.strides[2:]
    if ho * wo > 1 and (s_w != out.itemsize or (ho > 1 and s_h != wo * out.itemsize)):
        raise ValueError(f"{where}: out must have contiguous rows, got strides {out.strides}")


def _flat_view(out, shape, dtype, where):
    """``out (N, O, Ho, Wo)`` seen as ``(N, O, Ho*Wo)`` without a copy."""
    _check_rows_out(out, shape, dtype, where)
    n, o, ho, wo = shape
    s_n, s_o = out.strides[:2]
    xp = get_array_module(out)
    return xp.lib.stride_tricks.as_strided(out, (n, o, ho * wo), (s_n, s_o, out.itemsize))


def _target(out, shape, dtype, xp):
    """Where a convolution writes: ``out`` (checked: ``shape``, ``dtype``, rows
    contiguous), or a new array."""
    if out is None:
        return xp.empty(shape, dtype=dtype)
    _check_rows_out(out, shape, dtype, "conv2d")
    return out


def _conv_shifted(x, w, b, pads, stride, dilation, groups, act, out, xp, scale=None,
                  gate=None):
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
    y = xp.empty((groups, og, nb * span), dtype=x.dtype)
    fast = _compiled_epilogue(x, w, b, scale, out, gate, act)
    for n0 in range(0, n, nb):
        m = min(nb, n - n0)
        for slot, pr, pc, xr, xc in fills:
            phases[:m, :, slot, pr, pc] = x[n0:n0 + m, :, xr, xc]
        for t, (phase, shift) in enumerate(taps):
            src = planes[:m, :, :, used.index(phase), shift:shift + span]
            rows[:, :, t, :m] = src.transpose(1, 2, 0, 3)
        ym = xp.matmul(wt, col[:, :, :m * span], out=y[:, :, :m * span])
        kept = ym.reshape(groups, og, m, ho, wq)[..., :wo].transpose(2, 0, 1, 3, 4)
        _store(kept, out[n0:n0 + m], b, scale, act, None if gate is None else gate[n0:n0 + m],
               fast, xp)


def _store(kept, dest, b, scale, act, gate, fast, xp):
    """``dest (m, O, Ho, Wo)`` = the epilogue (``scale``, ``b``, ``act``, then ``gate (m,
    O)``) of a GEMM's sums ``kept (m, G, O/G, Ho, Wo)``, a view with contiguous rows: one
    compiled pass where ``fast`` takes it, else NumPy's passes."""
    m, groups, og, ho, wo = kept.shape
    if fast is not None and fast.epilogue_(dest, kept.reshape(m, groups * og, ho, wo), scale,
                                          b, act, gate):
        return
    dest5 = dest.reshape(m, groups, og, ho, wo)
    bias = None if b is None else b.reshape(1, groups, og, 1, 1)
    gain = None if scale is None else scale.reshape(1, groups, og, 1, 1)
    relu = act == "relu" or (isinstance(act, tuple) and act[0] == "relu")
    if gain is not None:
        xp.multiply(kept, gain, out=dest5)
        if bias is not None:
            dest5 += bias
        if relu:
            xp.maximum(dest5, 0, out=dest5)
    elif bias is not None:
        xp.add(kept, bias, out=dest5)
        if relu:
            xp.maximum(dest5, 0, out=dest5)
    elif relu:
        xp.maximum(kept, 0, out=dest5)
    else:
        dest5[...] = kept
    if act is not None and not relu:
        apply_act_(dest, act)
    if gate is not None:
        dest *= gate[:, :, None, None]


def _conv_channels_last(x, w, b, pads, stride, dilation, act, out, xp, scale=None,
                        gate=None):
    """An ungrouped convolution of small maps as one GEMM over columns cut from the image
    laid out channel-last: each window row is then one run of ``kw * C`` values (channel
    first, a column matrix of small maps is copied a few values at a time, and the
    shifted-rows GEMM computes ``Wp - Wo`` discarded columns a row: a quarter to a half of
    them on 8x8 and 4x4 maps). The weights reordered to match, ``(O, kh*kw*C)``."""
    n, c = x.shape[:2]
    o, _, kh, kw = w.shape
    ho, wo = out.shape[2:]
    k = kh * kw * c
    wt = w.transpose(0, 2, 3, 1).reshape(o, k)  # (O, kh*kw*C): a copy
    nb = max(1, min(n, WORKSPACE_BYTES // (k * ho * wo * x.itemsize)))
    y = xp.empty((o, nb * ho * wo), dtype=x.dtype)
    fast = _compiled_epilogue(x, w, b, scale, out, gate, act)
    for n0 in range(0, n, nb):
        m = min(nb, n - n0)
        col = _columns_last(x[n0:n0 + m], (kh, kw), stride, dilation, pads, (ho, wo), xp)
        ym = xp.matmul(wt, col.T, out=y[:, :m * ho * wo])  # (O, m*Ho*Wo)
        _store(ym.reshape(1, o, m, ho, wo).transpose(2, 0, 1, 3, 4), out[n0:n0 + m], b,
               scale, act, None if gate is None else gate[n0:n0 + m], fast, xp)


def _channels_last(c, groups, kernel, out_hw) -> bool:
    """Whether a convolution takes `_conv_channels_last` (and its backward the same
    columns for the weights' gradient)."""
    return (groups == 1 and kernel[0] * kernel[1] > 1 and c <= CHANNELS_LAST_CHANNELS
            and out_hw[0] * out_hw[1] <= CHANNELS_LAST_MAP)


def _columns_last(x, kernel, stride, dilation, pads, out_hw, xp):
    """The column matrix ``(N*Ho*Wo, kh*kw*C)`` of ``x (N, C, H, W)``, its columns ordered
    ``(kh, kw, C)``: the windows of the zero-padded image laid out channel-last, where each
    window row is one run of ``kw * C`` values (a fresh array)."""
    n, c, h, wd = x.shape
    kh, kw = kernel
    sh, sw = stride
    dh, dw = dilation
    top, bottom, left, right = pads
    ho, wo = out_hw
    laid = xp.zeros((n, h + top + bottom, wd + left + right, c), dtype=x.dtype)
    laid[:, top:top + h, left:left + wd] = x.transpose(0, 2, 3, 1)
    s_n, s_h, s_w, s_c = laid.strides
    windows = xp.lib.stride_tricks.as_strided(
        laid, (n, ho, wo, kh, kw, c), (s_n, s_h * sh, s_w * sw, s_h * dh, s_w * dw, s_c))
    return windows.reshape(n * ho * wo, kh * kw * c)


def conv2d(x, w, b=None, *, stride=1, pad=0, dilation=1, groups=1, act=None, out=None,
           scale=None, gate=None, in_gate=None, prepared=None):
    """Convolve ``x (N, C, H, W)`` with ``w (O, C/groups, kh, kw)``; returns ``(N, O, Ho, Wo)``.

    ``pad`` is ``p``, ``(ph, pw)`` or ``(top, bottom, left, right)``; ``stride`` and
    ``dilation`` are an integer or a pair. ``act`` is a fused activation: None, a name,
    or ``(name, params)``. Float32 inputs give a float32 result; the output is contiguous.
    ``out`` is an ``(N, O, Ho, Wo)`` array to write into; its rows ``H`` and ``W`` must be
    contiguous, so a channel slice of a larger array works (a concat writing in place).
    ``scale`` (``(O,)``) multiplies each output channel before the bias is added: a
    batchnorm folded in at inference without a scaled copy of the weights. ``gate``
    (``(N, O or 1, 1, 1)``) multiplies each image's output channels after the activation:
    a squeeze-and-excitation ``mul`` the memory plan fused in. ``in_gate`` (``(N, C or 1,
    1, 1)``) multiplies each image's input channels first: the ``mul`` before a 1x1
    convolution, which the compiled 1x1 kernel applies as it reads its input.
    ``prepared``: this layer's `ops.base.PreparedLayer`, which the caller keeps while ``w``
    stays unchanged (the inference executor, until its parameters change): the kernel
    keeps there what it derives from the weights (the Winograd transforms, the 1x1 tiles'
    packed weights), and a 3x3 layer on a large map then takes F(4x4, 3x3)
    (`winograd.tile_for`).
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
    gate = _gate_of(gate, n, o, dtype, xp)
    in_gate = _gate_of(in_gate, n, c, dtype, xp, name="in_gate", side="input")
    pointwise = kh == kw == sh == sw == 1 and max(pads) == 0
    tiles = None  # ops/pointwise.py where it takes this 1x1 convolution
    if groups == 1 and pointwise:
        from . import pointwise as tiles  # the product and its epilogue in one pass

        if not tiles.applies(x, w, dtype):
            tiles = None
    if in_gate is not None and not pointwise:
        x = x * in_gate[:, :, None, None]  # (no plan asks this: the product first)
        in_gate = None
    if (groups == 1 and max(sh, sw) >= 2 and PATCHES
            and _compiled(x, w, b, scale, out, gate) is not None):
        from . import patches  # strided: register tiles over gathered patches

        if patches.applies(x, w, (sh, sw), gate, act):
            target = _target(out, (n, o, ho, wo), dtype, xp)
            if patches.patches_conv2d(x, w, b, scale, act, target, (sh, sw), pads, (dh, dw),
                                      prepared):
                return target
    if (groups > 1 and cg == 1) or (groups == 1 and c <= DIRECT_CHANNELS and kw in (3, 5)):
        fast = _compiled(x, w, b, scale, out, gate)
        if fast is not None:  # depthwise, or a stem: a direct compiled loop, no GEMM
            out = _target(out, (n, o, ho, wo), dtype, xp)
            if cg == 1 and groups > 1:
                from . import depthwise  # small maps: a tile of rows in registers

                if (depthwise.applies(x, w, (sh, sw), (dh, dw), pads, groups)
                        and depthwise.depthwise_conv2d(x, w, b, scale, act, out, pads, gate,
                                                       sh)):
                    return out
            if not fast.direct_conv2d(x, w, b, scale, act, out, (sh, sw), pads, (dh, dw),
                                      gate):
                apply_act_(out, act)
                if gate is not None:
                    out *= gate[:, :, None, None]
            return out
    if (groups == 1 and kh == kw == 3 and sh == sw == dh == dw == 1 and ho > 0 and wo > 0
            and _compiled(x, w, b, scale, out, gate) is not None):
        from . import winograd  # 3x3 at stride 1: 2.25x fewer multiplications

        if winograd.applies(x, w):
            u, tile = None, 2  # (none kept: made by the kernel, for this call)
            if (prepared is not None
                    and winograd.act_code(act, dtype) is not None  # else it refuses the layer
                    and winograd.worthwhile(n, c, o, ho, wo, x.itemsize, have_u=True)):
                u, tile = winograd.prepared_transform(w, ho, wo, prepared)
            if winograd.worthwhile(n, c, o, ho, wo, x.itemsize, have_u=u is not None):
                target = _target(out, (n, o, ho, wo), dtype, xp)
                if winograd.winograd_conv2d(x, w, b, scale, act, target, pads, gate, u, tile):
                    return target
    if tiles is not None:
        target = _target(out, (n, o, ho, wo), dtype, xp)
        if tiles.pointwise_conv2d(x, w, b, scale, act, target, gate, in_gate, prepared):
            return target
    if not pointwise and _channels_last(c, groups, (kh, kw), (ho, wo)):
        out = _target(out, (n, o, ho, wo), dtype, xp)
        _conv_channels_last(x, w, b, pads, (sh, sw), (dh, dw), act, out, xp, scale, gate)
        return out
    if SHIFTED and not pointwise:
        out = _target(out, (n, o, ho, wo), dtype, xp)
        _conv_shifted(x, w, b, pads, (sh, sw), (dh, dw), groups, act, out, xp, scale, gate)
        return out
    wg = w.reshape(groups, og, cg * kh * kw)  # (G, O/G, C/G*kh*kw)
    given = out
    if out is None:
        out = xp.empty((n, o, spatial), dtype=dtype)  # (N, O, Ho*Wo)
    else:
        out = _flat_view(out, (n, o, ho, wo), dtype, "conv2d")

    if pointwise:
        xg = x.reshape(n, groups, cg, spatial)  # (N, G, C/G, H*W)
        col_bytes = c * spatial * x.itemsize
    else:
        view = _window_view(_padded(x, pads, xp), (kh, kw), (sh, sw), (dh, dw), (ho, wo), xp)
        col_bytes = c * kh * kw * spatial * x.itemsize
    chunk = max(1, WORKSPACE_BYTES // col_bytes)
    fast = _compiled_epilogue(x, w, b, scale, out, gate, act)

    for n0 in range(0, n, chunk):
        n1 = min(n, n0 + chunk)
        nb = n1 - n0
        slab = out[n0:n1]  # (nb, O, Ho*Wo)
        slab_g = slab.reshape(nb, groups, og, spatial)  # (nb, G, O/G, Ho*Wo)
        if pointwise and in_gate is not None:
            # W (g x) = (W g) x: each image's weights scaled by its gate (a weights-sized
            # temporary per image, where the product would be a map-sized one)
            for i in range(nb):
                wi = wg * in_gate[n0 + i].reshape(groups, 1, cg)
                xp.matmul(wi, xg[n0 + i], out=slab_g[i])
        elif pointwise:
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
        _epilogue_(slab, b, act, scale, None if gate is None else gate[n0:n1], fast)
    return out.reshape(n, o, ho, wo) if given is None else given


# ---- CONV2D: training -------------------------------------------------------------------------
# The backward pass walks the batch in the same cache-sized chunks as the forward. For each
# chunk it rebuilds the column matrix from the window view of the padded input, then
#     gW += gy @ col.T          # (G, O/G, nb*Ho*Wo) @ (G, nb*Ho*Wo, C/G*kh*kw)
#     gcol = W.T @ gy           # (G, C/G*kh*kw, nb*Ho*Wo)
# and scatters gcol back onto the padded input, one strided-slice add per tap (col2im).
# At stride 1, gx is instead the convolution of gy by the flipped, transposed weights
# (`_input_grad_by_conv`), run by the forward's shifted-rows GEMM: its inner dimension is
# O*kh*kw where W.T @ gy's is O, and no col2im follows.


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


def _input_grad_by_conv(dy, w, geometry):
    """``gx`` of a stride-1 convolution: the convolution of ``dy`` by ``w`` flipped in space
    with its in and out channels swapped (per group), padded by ``d*(k-1) - pad`` on each
    side. None where the column path runs: a stride, padding wider than ``d*(k-1)``, or a
    1x1 kernel (no col2im to save). Faster than the column path on narrow maps too (one
    thread: 1.3x on 64 -> 64 at 7x7, 1.25x on the digits example's 8x8 and 4x4 layers),
    though the shifted-rows GEMM's padded rows are ``d*(k-1)`` longer than its rows."""
    stride, dilation, pads, groups = geometry
    o, cg, kh, kw = w.shape
    dh, dw = dilation
    top, bottom, left, right = pads
    back = (dh * (kh - 1) - top, dh * (kh - 1) - bottom, dw * (kw - 1) - left,
            dw * (kw - 1) - right)
    if tuple(stride) != (1, 1) or min(back) < 0 or kh * kw == 1:
        return None
    og = o // groups
    wt = w.reshape(groups, og, cg, kh, kw).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
    wt = wt.reshape(groups * cg, og, kh, kw)  # (C, O/G, kh, kw): a copy
    return conv2d(dy, wt, None, stride=1, pad=back, dilation=dilation, groups=groups)


def conv2d_backward(saved, dy, input_grad=True):
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
    if groups > 1 and cg == 1:
        fast = _compiled(x, w, dy)
        if fast is not None:  # depthwise: direct compiled loops
            gx, gW = fast.depthwise_conv2d_backward(x, w, dy, stride, pads, dilation)
            return _grads(gx if input_grad else None, gW, dy, has_bias)
    # the input's gradient: a convolution of dy (stride 1), else col2im of each chunk's
    gx = _input_grad_by_conv(dy, w, geometry) if input_grad else None  # (N, C, H, W)
    direct = gx is not None or not input_grad
    if direct and kh == kw == 3 and _compiled(x, w, dy) is not None:
        from . import winograd  # 2.25x fewer multiplications, no column matrix

        if winograd.takes_weight_grad(x, w, geometry, (ho, wo)):
            return _grads(gx, winograd.weight_grad(x, dy, pads), dy, has_bias)
    if not direct:
        gx = xp.empty(x.shape, dtype=x.dtype)
    elif _channels_last(c, groups, (kh, kw), (ho, wo)):
        # small maps: the forward's channel-last columns, (nb*Ho*Wo, kh*kw*C) a chunk
        gW = xp.zeros((o, kh * kw * cg), dtype=x.dtype)
        chunk = max(1, WORKSPACE_BYTES // (c * kh * kw * spatial * x.itemsize))
        for n0 in range(0, n, chunk):
            n1 = min(n, n0 + chunk)
            col = _columns_last(x[n0:n1], (kh, kw), stride, dilation, pads, (ho, wo), xp)
            gy2 = dy[n0:n1].reshape(n1 - n0, o, spatial).transpose(1, 0, 2)
            gW += xp.matmul(gy2.reshape(o, (n1 - n0) * spatial), col)
        gW = gW.reshape(o, kh, kw, cg).transpose(0, 3, 1, 2)
        return _grads(gx, xp.ascontiguousarray(gW), dy, has_bias)
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
        if direct:
            continue
        gcol = xp.matmul(wg_t, gyc)  # (G, C/G*kh*kw, nb*Ho*Wo)
        if pointwise:
            gcol = gcol.reshape(groups, cg, nb, spatial).transpose(2, 0, 1, 3)
            gx[n0:n1] = gcol.reshape(nb, c, h, wd)
        else:
            gx[n0:n1] = _col2im(gcol, nb, x.shape, geometry, (ho, wo), (kh, kw), xp)
    return _grads(gx, gW.reshape(w.shape), dy, has_bias)


def _grads(gx, gW, dy, has_bias):
    """The backward's result: ``(gx,)``, then ``gW`` and, with a bias, its gradient."""
    return (gx,), ((gW, dy.sum(axis=(0, 2, 3))) if has_bias else (gW,))


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


def gpu_conv2d_backward(saved, dy, input_grad=True):
    xp = gpu.cupy()
    x, w, geo, spec = saved["x"], saved["w"], saved["geo"], saved["spec"]
    dtype = x.dtype
    gz = gpu.grad_input(dy, (geo.n, geo.o, geo.ho, geo.wo), dtype, xp, "conv2d")
    if saved["z"] is not None:
        gz = act_backward(gz, saved["z"], spec, xp)
    gz = gz.reshape(geo.n, geo.o, geo.spatial)  # (N, O, S)
    wg = w.reshape(geo.groups, geo.og, geo.k)
    gW = xp.zeros((geo.groups, geo.og, geo.k), dtype=dtype)
    gx = xp.empty_like(x) if input_grad else None
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
        else:
            gW += xp.matmul(gz_g, col.transpose(0, 2, 1))  # (G, O/G, C/G*kh*kw)
        if gx is None:
            continue
        if geo.groups == 1:
            gcol = xp.matmul(wg[0].T, gz_g[0])[None]  # (1, C*kh*kw, nb*S)
        else:
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


# ---- CONV1D: a CONV2D of height 1 --------------------------------------------------------------
# ``x (N, C, L)`` is seen as ``(N, C, 1, L)`` and ``w (O, C/G, k)`` as ``(O, C/G, 1, k)``
# (views, no copies), so conv1d runs on CONV2D's kernels: the shifted-rows GEMM on the host,
# the CUDA kernels on a GPU, the fused scale, bias and activation epilogue on both. Its own
# checks come first, so that its errors speak of conv1d and lengths.


def _geometry_nd(x, w, stride, pad, dilation, where):
    """Checked ``(strides, dilations, pad pairs, output sizes)`` of a convolution of ``x``
    by ``w`` with any number of spatial dims."""
    n = w.ndim - 2
    strides = window.dims(stride, n, "stride")
    dilations = window.dims(dilation, n, "dilation")
    pairs = window.pad_pairs(pad, n)
    if min(strides + dilations) < 1 or min(window.flat_pads(pairs)) < 0:
        raise ValueError(
            f"{where}: stride and dilation must be >= 1 and pad >= 0, got "
            f"stride={strides}, dilation={dilations}, pad={window.flat_pads(pairs)}"
        )
    outs = tuple(
        checked_out(size, k, s, p, d, False, f"{where} {name}")
        for size, k, s, p, d, name in zip(x.shape[2:], w.shape[2:], strides, pairs, dilations,
                                          window.AXIS_NAMES[n])
    )
    return strides, dilations, pairs, outs


def _check_out(out, shape, dtype, where):
    if out is not None and (tuple(out.shape) != tuple(shape) or out.dtype != dtype):
        raise ValueError(f"{where}: out must be {list(shape)} {dtype}, got "
                         f"{list(out.shape)} {out.dtype}")


def _as_2d(x, w, b, stride, pad, dilation, groups, xp):
    """Check a conv1d as conv1d; return its CONV2D arguments ``(x, w, attrs, out shape)``."""
    dtype = float_dtype(xp, x, w)
    x = xp.asarray(x, dtype=dtype)
    w = xp.asarray(w, dtype=dtype)
    _check_shapes(x, w, b, groups, "conv1d", 1)
    (s,), (d,), ((begin, end),), (lo,) = _geometry_nd(x, w, stride, pad, dilation, "conv1d")
    attrs = dict(stride=(1, s), pad=(0, 0, begin, end), dilation=(1, d), groups=groups)
    return x[:, :, None, :], w[:, :, None, :], attrs, (x.shape[0], w.shape[0], lo)


def conv1d(x, w, b=None, *, stride=1, pad=0, dilation=1, groups=1, act=None, out=None,
           scale=None, gate=None):
    """Convolve ``x (N, C, L)`` with ``w (O, C/groups, k)``; returns ``(N, O, Lo)``.

    ``pad`` is ``p`` or ``(begin, end)``; ``stride`` and ``dilation`` an integer or a
    one-element list; ``act``, ``out``, ``scale`` and ``gate`` as CONV2D's (``out`` may be
    a channel slice)."""
    xp = get_array_module(x, w)
    x2, w2, attrs, shape = _as_2d(x, w, b, stride, pad, dilation, groups, xp)
    _check_out(out, shape, x2.dtype, "conv1d")
    target = None if out is None else out[:, :, None, :]
    if gate is not None:
        gate = _gate_of(gate, shape[0], shape[1], x2.dtype, xp, "conv1d")
    y = conv2d(x2, w2, b, act=act, out=target, scale=scale, gate=gate, **attrs)
    return y[:, :, 0, :] if out is None else out


def conv1d_forward(x, w, b=None, *, stride=1, pad=0, dilation=1, groups=1, act=None,
                   train=True, rng=None):
    """CONV2D's training forward on the height-1 views."""
    no_act(act, "conv1d")
    xp = get_array_module(x, w)
    x2, w2, attrs, shape = _as_2d(x, w, b, stride, pad, dilation, groups, xp)
    y, saved = conv2d_forward(x2, w2, b, **attrs)
    return y[:, :, 0, :], (saved, shape)


def conv1d_backward(saved, dy, input_grad=True):
    inner, y_shape = saved
    x = inner[0]
    xp = get_array_module(x)
    dy = as_grad(dy, y_shape, x.dtype, xp, "conv1d")
    (gx,), grads = conv2d_backward(inner, dy[:, :, None, :], input_grad)
    gx = None if gx is None else gx[:, :, 0, :]
    return (gx,), (grads[0][:, :, 0, :],) + tuple(grads[1:])


def gpu_conv1d(x, w, b=None, *, stride=1, pad=0, dilation=1, groups=1, act=None, out=None,
               scale=None):
    """CONV1D on the GPU: CONV2D's CUDA kernels on the height-1 views."""
    xp = gpu.cupy()
    x, w, b = _gpu_inputs(x, w, b, xp)
    x2, w2, attrs, shape = _as_2d(x, w, b, stride, pad, dilation, groups, xp)
    _check_out(out, shape, x2.dtype, "conv1d")
    target = None if out is None else out[:, :, None, :]
    y = gpu_conv2d(x2, w2, b, act=act, out=target, scale=scale, **attrs)
    return y[:, :, 0, :] if out is None else out


def gpu_conv1d_forward(x, w, b=None, *, train=True, rng=None, stride=1, pad=0, dilation=1,
                       groups=1, act=None):
    xp = gpu.cupy()
    x, w, b = _gpu_inputs(x, w, b, xp)
    x2, w2, attrs, shape = _as_2d(x, w, b, stride, pad, dilation, groups, xp)
    y, saved = gpu_conv2d_forward(x2, w2, b, act=act, **attrs)
    return y[:, :, 0, :], (saved, shape)


def gpu_conv1d_backward(saved, dy, input_grad=True):
    xp = gpu.cupy()
    inner, y_shape = saved
    dy = as_grad(dy, y_shape, inner["x"].dtype, xp, "conv1d")
    (gx,), grads = gpu_conv2d_backward(inner, dy[:, :, None, :], input_grad)
    return (None if gx is None else gx[:, :, 0, :],), (grads[0][:, :, 0, :],) + tuple(grads[1:])


# ---- CONV3D: im2col over N-d windows -----------------------------------------------------------
# The column matrix of a chunk is gathered from a strided window view of the padded input
# ``(N, C, k..., o...)`` in one copy, channel-major as the weights lie, and multiplied by the
# weights in one GEMM per group. Chunks take whole samples while a sample's columns fit
# ``WORKSPACE_BYTES``, else rows of output planes of one sample. The backward pass rebuilds
# the columns chunk by chunk and scatters the column gradient back with one strided add per
# kernel tap. Written for any number of spatial dims; conv3d is its one user (conv1d takes
# CONV2D's faster path). On a GPU these NumPy-API functions run on CuPy arrays.


def _chunks(n, outs, per_position):
    """``(samples, (first, last))`` chunks of a convolution's output, and the most output
    positions one holds: whole samples while their columns (``per_position`` bytes per
    output position) fit ``WORKSPACE_BYTES``, else output rows ``first .. last-1`` along
    the first spatial dim of one sample."""
    rows = outs[0]
    per_row = prod(outs[1:])
    per_sample = per_row * rows
    if per_sample * per_position <= WORKSPACE_BYTES or rows == 1:
        nb = max(1, min(n, WORKSPACE_BYTES // max(1, per_sample * per_position)))
        chunks = [(slice(n0, min(n, n0 + nb)), (0, rows)) for n0 in range(0, n, nb)]
        return chunks, nb * per_sample
    step = max(1, WORKSPACE_BYTES // max(1, per_row * per_position))
    chunks = [(slice(i, i + 1), (a0, min(rows, a0 + step)))
              for i in range(n) for a0 in range(0, rows, step)]
    return chunks, step * per_row


def _window_part(view, samples, rows, nd):
    """The windows of ``samples`` at output rows ``rows``: ``(nb, C, k..., a, o2...)``."""
    return view[(samples, slice(None)) + (slice(None),) * nd + (slice(*rows),)]


def _columns_nd(part, groups, xp, buf):
    """The column matrix of windows ``part (nb, C, k..., o...)``: ``(G, C/G*K, nb*S)``,
    written into the start of the flat buffer ``buf``."""
    nb, c = part.shape[:2]
    nd = (part.ndim - 2) // 2
    kernel = part.shape[2:2 + nd]
    outs = part.shape[2 + nd:]
    shape = (groups, c // groups) + kernel + (nb,) + outs
    col = buf[:prod(shape)].reshape(shape)
    src = part.reshape((nb, groups, c // groups) + kernel + outs)
    order = (1, 2) + tuple(range(3, 3 + nd)) + (0,) + tuple(range(3 + nd, 3 + 2 * nd))
    col[...] = src.transpose(order)  # (G, C/G, k..., nb, o...)
    return col.reshape(groups, (c // groups) * prod(kernel), nb * prod(outs))


def _gemm(a, b, out, xp):
    """``a @ b`` per group, into the start of the flat buffer ``out``: ``(G, m, n)``. One
    group takes a 2-D product (NumPy's batched matmul is slower for a batch of one)."""
    y = out[:a.shape[0] * a.shape[1] * b.shape[2]].reshape(a.shape[0], a.shape[1], b.shape[2])
    if a.shape[0] == 1:
        xp.matmul(a[0], b[0], out=y[0])
    else:
        xp.matmul(a, b, out=y)
    return y


def _prepare_nd(x, w, b, scale, groups, n, where):
    xp = get_array_module(x, w)
    dtype = float_dtype(xp, x, w)
    x = xp.asarray(x, dtype=dtype)
    w = xp.asarray(w, dtype=dtype)
    if b is not None:
        b = xp.asarray(b, dtype=dtype)
    _check_shapes(x, w, b, groups, where, n)
    if scale is not None:
        scale = xp.asarray(scale, dtype=dtype)
        _check_scale(scale, w.shape[0], where)
    return xp, x, w, b, scale


def _depthwise_nd(view, w, samples, rows, dest, tmp, xp):
    """A depthwise convolution (one input and one output channel per group) of the windows
    ``view (N, C, k..., o...)`` into ``dest``: one multiply-add per kernel tap over the whole
    chunk, no column matrix."""
    nd = w.ndim - 2
    kernel = w.shape[2:]
    channel = (1, w.shape[0]) + (1,) * nd
    for t, tap in enumerate(itertools.product(*(range(k) for k in kernel))):
        cells = view[(samples, slice(None)) + tap + (slice(*rows),)]  # (nb, C, a, o2...)
        weight = w[(slice(None), 0) + tap].reshape(channel)
        if t == 0:
            xp.multiply(cells, weight, out=dest)
            continue
        part = tmp[:prod(dest.shape)].reshape(dest.shape)
        xp.multiply(cells, weight, out=part)
        dest += part


def _conv_nd(x, w, b, geometry, groups, act, out, scale, xp):
    """The convolution into ``out (N, O, o...)`` (any strides), with the epilogue."""
    strides, dilations, pairs, outs = geometry
    nd = len(outs)
    n, c = x.shape[:2]
    o = w.shape[0]
    kernel = w.shape[2:]
    wg = w.reshape(groups, o // groups, -1)  # (G, O/G, C/G*K): a view
    view = window.window_view(window.pad_to(x, pairs, 0, xp), kernel, strides, dilations,
                              outs, xp)
    channel = (1, o) + (1,) * nd
    depthwise = groups == c == o > 1
    per_position = (2 if depthwise else prod(kernel)) * c * x.itemsize
    chunks, most = _chunks(n, outs, per_position)
    if depthwise:
        tmp = xp.empty(c * most, dtype=x.dtype)
    else:
        col_buf = xp.empty(c * prod(kernel) * most, dtype=x.dtype)
        y_buf = xp.empty(o * most, dtype=x.dtype)
    for samples, rows in chunks:
        dest = out[(samples, slice(None), slice(*rows))]
        if depthwise:
            _depthwise_nd(view, w, samples, rows, dest, tmp, xp)
        else:
            part = _window_part(view, samples, rows, nd)
            nb = part.shape[0]
            y = _gemm(wg, _columns_nd(part, groups, xp, col_buf), y_buf, xp)  # (G, O/G, nb*S)
            y = y.reshape((o, nb, rows[1] - rows[0]) + outs[1:])
            dest[...] = xp.moveaxis(y, 1, 0)
        if scale is not None:
            dest *= scale.reshape(channel)
        if b is not None:
            dest += b.reshape(channel)
        apply_act_(dest, act)
    return out


def conv3d(x, w, b=None, *, stride=1, pad=0, dilation=1, groups=1, act=None, out=None,
           scale=None):
    """Convolve ``x (N, C, D, H, W)`` with ``w (O, C/groups, kd, kh, kw)``; returns
    ``(N, O, Do, Ho, Wo)``.

    ``pad`` is ``p``, ``(pd, ph, pw)`` or ``(front, back, top, bottom, left, right)``;
    ``stride`` and ``dilation`` an integer or a triple. ``act``, ``out`` (any view of the
    output's shape, a channel slice say) and ``scale`` as CONV2D's."""
    xp, x, w, b, scale = _prepare_nd(x, w, b, scale, groups, 3, "conv3d")
    geometry = _geometry_nd(x, w, stride, pad, dilation, "conv3d")
    shape = (x.shape[0], w.shape[0]) + geometry[3]
    _check_out(out, shape, x.dtype, "conv3d")
    if out is None:
        out = xp.empty(shape, dtype=x.dtype)
    return _conv_nd(x, w, b, geometry, groups, act, out, scale, xp)


def conv3d_forward(x, w, b=None, *, stride=1, pad=0, dilation=1, groups=1, act=None,
                   train=True, rng=None):
    """``y = conv3d(x, w, b)``; keeps ``x`` and ``w`` (references)."""
    no_act(act, "conv3d")
    xp, x, w, b, _ = _prepare_nd(x, w, b, None, groups, 3, "conv3d")
    geometry = _geometry_nd(x, w, stride, pad, dilation, "conv3d")
    y = conv3d(x, w, b, stride=stride, pad=pad, dilation=dilation, groups=groups)
    return y, (x, w, b is not None, geometry, groups, tuple(y.shape), "conv3d")


def conv3d_backward(saved, dy, input_grad=True):
    x, w, has_bias, geometry, groups, y_shape, where = saved
    strides, dilations, pairs, outs = geometry
    xp = get_array_module(x, w)
    dy = as_grad(dy, y_shape, x.dtype, xp, where)
    nd = len(outs)
    n, c = x.shape[:2]
    o = w.shape[0]
    kernel = w.shape[2:]
    og = o // groups
    wg_t = w.reshape(groups, og, -1).transpose(0, 2, 1)  # (G, C/G*K, O/G)
    xpad = window.pad_to(x, pairs, 0, xp)
    view = window.window_view(xpad, kernel, strides, dilations, outs, xp)
    gpad = xp.zeros(xpad.shape, dtype=x.dtype) if input_grad else None
    gW = xp.zeros((groups, og, wg_t.shape[1]), dtype=x.dtype)
    taps = list(itertools.product(*(range(k) for k in kernel)))
    chunks, most = _chunks(n, outs, 2 * c * prod(kernel) * x.itemsize)
    col_buf = xp.empty(c * prod(kernel) * most, dtype=x.dtype)
    gcol_buf = xp.empty(c * prod(kernel) * most, dtype=x.dtype) if input_grad else None
    for samples, rows in chunks:
        part = _window_part(view, samples, rows, nd)
        nb = part.shape[0]
        block = (rows[1] - rows[0],) + outs[1:]
        gy = dy[(samples, slice(None), slice(*rows))]  # (nb, O, a, o2...)
        gy = xp.ascontiguousarray(xp.moveaxis(gy, 0, 1)).reshape(groups, og, -1)
        col = _columns_nd(part, groups, xp, col_buf)
        if groups == 1:
            gW[0] += xp.matmul(gy[0], col[0].T)
        else:
            gW += xp.matmul(gy, col.transpose(0, 2, 1))
        if gpad is None:
            continue
        gcol = _gemm(wg_t, gy, gcol_buf, xp)  # (G, C/G*K, nb*S)
        gcol = xp.moveaxis(gcol.reshape((c,) + kernel + (nb,) + block), 1 + nd, 0)
        target = gpad[samples]
        for tap in taps:
            target[window.tap_slices(tap, strides, dilations, outs, rows)] += gcol[
                (slice(None), slice(None)) + tap]
    crop = (slice(None), slice(None)) + tuple(
        slice(begin, begin + size) for size, (begin, _) in zip(x.shape[2:], pairs))
    if gpad is None:
        gx = None
    elif gpad.shape == x.shape:
        gx = gpad
    else:
        gx = xp.ascontiguousarray(gpad[crop])
    gW = gW.reshape(w.shape)
    if not has_bias:
        return (gx,), (gW,)
    return (gx,), (gW, dy.sum(axis=(0,) + tuple(range(2, 2 + nd))))


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


def reference_conv_nd(x, w, b=None, *, stride=1, pad=0, dilation=1, groups=1, act=None):
    """Any number of spatial dims: loops over output positions and taps, each tap's cell
    bounds checked; float64."""
    x = numpy.asarray(x, dtype=numpy.float64)
    w = numpy.asarray(w, dtype=numpy.float64)
    n_dims = x.ndim - 2
    sizes = x.shape[2:]
    kernel = w.shape[2:]
    strides = (stride,) * n_dims if isinstance(stride, int) else tuple(stride)
    dilations = (dilation,) * n_dims if isinstance(dilation, int) else tuple(dilation)
    if isinstance(pad, int):
        pad = (pad,) * n_dims
    pad = tuple(pad)
    if len(pad) == n_dims:
        begins, ends = pad, pad
    else:
        begins, ends = pad[0::2], pad[1::2]
    outs = [_out_len(*args) for args in zip(sizes, kernel, strides, begins, ends, dilations)]
    out_ch, group_ch = w.shape[:2]
    per_group = out_ch // groups
    y = numpy.zeros((x.shape[0], out_ch) + tuple(outs))
    for o in range(out_ch):
        g = o // per_group
        channels = slice(g * group_ch, (g + 1) * group_ch)
        for position in itertools.product(*(range(m) for m in outs)):
            total = numpy.zeros(x.shape[0]) + (0.0 if b is None else float(b[o]))
            for tap in itertools.product(*(range(k) for k in kernel)):
                cell = [p * s - begin + t * d for p, s, begin, t, d in
                        zip(position, strides, begins, tap, dilations)]
                if all(0 <= i < size for i, size in zip(cell, sizes)):
                    total += x[(slice(None), channels) + tuple(cell)] @ w[(o, slice(None))
                                                                          + tap]
            y[(slice(None), o) + position] = total
    return reference_act(y, act)


def _emit_conv(g, step, xs, ws, out, in_shapes):
    """ONNX ``Conv``, of any rank; a fused activation after it."""
    a = step.attrs
    kernel = list(g.arrays[ws[0]].shape[2:])
    n = len(kernel)
    pairs = window.pad_pairs(a["pad"], n)
    target = out if a.get("act") is None else g.temp("conv")
    g.node("Conv", xs + ws, target, None if target == out else "conv",
           kernel_shape=kernel, strides=list(window.dims(a["stride"], n)),
           dilations=list(window.dims(a["dilation"], n)), group=a["groups"],
           pads=[begin for begin, _ in pairs] + [end for _, end in pairs])
    if target != out:
        emit_fused(g, a["act"], target, out, step.shape)


def _torch_conv(step, xs, ws, training):
    """``F.conv1d``, ``F.conv2d`` or ``F.conv3d`` by the weight's rank; an asymmetric
    padding as ``F.pad`` first. (No fused activation: the plans the oracle runs are not
    fused.)"""
    import torch

    F = torch.nn.functional
    a = step.attrs
    x = xs[0]
    n = ws[0].dim() - 2
    conv = getattr(F, f"conv{n}d")
    bias = ws[1] if len(ws) > 1 else None
    pairs = window.pad_pairs(a["pad"], n)
    if all(begin == end for begin, end in pairs):
        padding = tuple(begin for begin, _ in pairs)
        return conv(x, ws[0], bias, a["stride"], padding, a["dilation"], a["groups"])
    x = F.pad(x, [p for pair_ in reversed(pairs) for p in pair_])  # the last dim first
    return conv(x, ws[0], bias, a["stride"], 0, a["dilation"], a["groups"])


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


def _examples_conv1d(rng):
    def example(channels, out, k, groups, bias, note, length=9, **attrs):
        x = rng.standard_normal((2, channels, length))
        w = rng.standard_normal((out, channels // groups, k))
        params = [w, rng.standard_normal(out)] if bias else [w]
        attrs = dict(dict(stride=1, pad=0, dilation=1, groups=groups, act=None), **attrs)
        return Example([x], params, attrs, note=note)

    return [
        example(3, 4, 3, 1, True, "kernel 3, pad 1, bias", pad=1),
        example(4, 6, 3, 2, False, "asymmetric pad, stride, dilation, groups, no bias",
                stride=2, pad=(0, 2), dilation=2),
        example(4, 6, 1, 2, True, "pointwise, grouped"),
        example(4, 4, 5, 4, False, "depthwise, stride 3, pad as a list", stride=(3,),
                pad=(2,)),
        example(2, 3, 4, 1, True, "stride past the dilated kernel, one-sided pad", length=11,
                stride=5, pad=(3, 0), dilation=(1,)),
    ]


def _examples_conv3d(rng):
    def example(channels, out, kernel, groups, bias, note, dhw=(4, 5, 4), **attrs):
        x = rng.standard_normal((2, channels) + dhw)
        w = rng.standard_normal((out, channels // groups) + kernel)
        params = [w, rng.standard_normal(out)] if bias else [w]
        attrs = dict(dict(stride=1, pad=0, dilation=1, groups=groups, act=None), **attrs)
        return Example([x], params, attrs, note=note)

    return [
        example(3, 4, (3, 3, 3), 1, True, "3x3x3, pad 1, bias", pad=1),
        example(4, 6, (2, 3, 1), 2, False, "non-cubic kernel, stride, dilation, groups",
                dhw=(5, 6, 4), stride=(2, 1, 2), pad=(1, 0, 0), dilation=(1, 2, 1)),
        example(4, 6, (1, 1, 1), 2, True, "pointwise, grouped"),
        example(4, 4, (3, 2, 3), 4, False, "depthwise, asymmetric pad", stride=2,
                pad=(0, 1, 1, 0, 2, 1)),
        example(2, 3, (2, 2, 2), 1, True, "stride past the dilated kernel", dhw=(6, 7, 5),
                stride=3, pad=(1, 0, 1), dilation=2),
    ]





CONV2D = Primitive(
    "conv2d",
    "(x, w, b=None, *, stride, pad, dilation, groups, act)",
    kernel=conv2d,
    forward=conv2d_forward,
    backward=conv2d_backward,
    reference=reference_conv2d,
    onnx=_emit_conv,
    torch=_torch_conv,
    examples=_examples_conv2d,
    gpu_kernel=gpu_conv2d,
    gpu_forward=gpu_conv2d_forward,
    gpu_backward=gpu_conv2d_backward,
    accepts_out=True,
    accepts_scale=True,
    accepts_prepared=True,
    gemm=True,
    skips_input_grad=True,
    per_image=True,
    doc="2-D convolution, with an optional fused scale, bias and activation epilogue",
    keeps=keeps_input,
)

CONV1D_PRIMITIVE = Primitive(
    "conv1d",
    "(x, w, b=None, *, stride, pad, dilation, groups, act)",
    kernel=conv1d,
    forward=conv1d_forward,
    backward=conv1d_backward,
    reference=reference_conv_nd,
    onnx=_emit_conv,
    torch=_torch_conv,
    examples=_examples_conv1d,
    gpu_kernel=gpu_conv1d,
    gpu_forward=gpu_conv1d_forward,
    gpu_backward=gpu_conv1d_backward,
    accepts_out=True,
    accepts_scale=True,
    gemm=True,
    skips_input_grad=True,
    per_image=True,
    doc="1-D convolution: CONV2D's kernels on height-1 views, its epilogue included",
    keeps=keeps_input,
)

CONV3D_PRIMITIVE = Primitive(
    "conv3d",
    "(x, w, b=None, *, stride, pad, dilation, groups, act)",
    kernel=conv3d,
    forward=conv3d_forward,
    backward=conv3d_backward,
    reference=reference_conv_nd,
    onnx=_emit_conv,
    torch=_torch_conv,
    examples=_examples_conv3d,
    accepts_out=True,
    accepts_scale=True,
    gemm=True,
    skips_input_grad=True,
    per_image=True,
    doc="3-D convolution: N-d im2col and GEMM, with the scale, bias and activation epilogue",
    keeps=keeps_input,
)

LAYERS = [CONV, CONV1D, CONV3D]
PRIMITIVES = [CONV2D, CONV1D_PRIMITIVE, CONV3D_PRIMITIVE]


# What other frameworks (PyTorch, Keras, Caffe, ONNX) call this family's layers, lower-cased:
# the "did you mean" of an unknown layer (E203). A value is the cnnc layer, or
# ``(layer, help)`` where the spelling takes more than a name.
_HELP_1 = ("conv",
           "a depthwise convolution is `conv(C, k, groups=C)`, C the input channels")
_HELP_2 = ("conv", "a separable convolution is `conv(C, k, groups=C) -> conv(out, 1)`, "
           "C the input channels")
FOREIGN_NAMES = {
    "conv2d": "conv",
    "convolution": "conv",
    "convolution2d": "conv",
    "dwconv": _HELP_1,
    "dw_conv": _HELP_1,
    "depthwise": _HELP_1,
    "depthwise_conv": _HELP_1,
    "depthwiseconv": _HELP_1,
    "depthwiseconv2d": _HELP_1,
    "depthwise_conv2d": _HELP_1,
    "separableconv2d": _HELP_2,
    "separable_conv": _HELP_2,
    "separable_conv2d": _HELP_2,
    "sepconv": _HELP_2,
}
