"""The layer vocabulary of spec section 4: arguments, shape rules, parameters and cost.

Each layer is one `LayerDef`: its argument list (with defaults), the input ranks it accepts,
and small functions for the output shape, the parameter shapes and the MAC count. Shape
problems are reported through the `InferContext` handed in, so one layer can report several.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import shapes
from .symbolic import is_concrete

REQUIRED = object()

AXES = ("height", "width")


@dataclass(frozen=True)
class ArgSpec:
    name: str
    kind: str  # count | natural | pair | cpad | ppad | bool | float | prob | positive_float
    default: object = REQUIRED


@dataclass
class LayerDef:
    name: str
    args: list[ArgSpec]
    ranks: tuple | None  # accepted input ranks, None for any
    infer: Callable
    params: Callable = lambda shape, a: {}
    buffers: Callable = lambda shape, a: {}
    macs: Callable = lambda shape_in, shape_out, a: 0
    changes_shape: bool = True  # False: output shape always equals the input's
    doc: str = ""


# ---- shape rules -----------------------------------------------------------------------------

def _spatial(op, shape, args, ctx, kernel, stride, pad, dilation=(1, 1), ceil=False):
    """Compute (H', W') for a windowed layer, reporting sizes below 1."""
    out = []
    for axis in range(2):
        n = shape[axis + 1]
        k, s, d = kernel[axis], stride[axis], dilation[axis]
        p = pad[axis] if isinstance(pad, tuple) else pad
        if p == "same":
            size = shapes.same_out(n, s)
            out.append(size)
            continue
        size = shapes.pool_out(n, k, s, p, d, ceil)
        if is_concrete(size):
            if size < 1:
                formula = shapes.conv_formula(n, k, s, p, d, ceil)
                need = shapes.min_input(k, p, d)
                ctx.error(
                    "E301",
                    f"{op} output {AXES[axis]} would be {size}, below 1: {formula}",
                    help=f"the input must be at least {need} {_unit(axis)} for this {op}; "
                    f"it is {n}. Use a smaller kernel or stride, more padding, "
                    f"or fewer downsampling layers before it",
                )
                return None
        else:
            ctx.positive(size, f"{op} output {AXES[axis]}")
        out.append(size)
    return tuple(out)


def _unit(axis: int) -> str:
    return "rows high" if axis == 0 else "columns wide"


def _infer_conv(shape, a, ctx):
    channels = shape[0]
    groups = a["groups"]
    if is_concrete(channels) and channels % groups:
        ctx.error(
            "E305",
            f"conv groups={groups} does not divide the {channels} input channels",
            help=_divisor_help("groups", channels, groups),
        )
        return None
    if a["out"] % groups:
        ctx.error(
            "E305",
            f"conv groups={groups} does not divide the {a['out']} output channels",
            help=_divisor_help("groups", a["out"], groups),
        )
        return None
    hw = _spatial("conv", shape, a, ctx, a["kernel"], a["stride"], a["pad"], a["dilation"])
    if hw is None:
        return None
    return (a["out"],) + hw


def _divisor_help(what, total, bad):
    divs = [d for d in range(1, min(total, 4 * bad + 8) + 1) if total % d == 0]
    near = sorted(divs, key=lambda d: (abs(d - bad), d))[:3]
    listed = " or ".join(f"{what}={d}" for d in sorted(near))
    return f"{total} divides by {listed}"


def _params_conv(shape, a):
    kh, kw = a["kernel"]
    out = {"weight": (a["out"], shape[0] // a["groups"], kh, kw)}
    if a["bias"]:
        out["bias"] = (a["out"],)
    return out


def _macs_conv(shape_in, shape_out, a):
    kh, kw = a["kernel"]
    per_output = shape_in[0] // a["groups"] * kh * kw
    return shape_out[0] * shape_out[1] * shape_out[2] * per_output


def _infer_maxpool(shape, a, ctx):
    hw = _spatial(
        "maxpool", shape, a, ctx, a["kernel"], a["stride"], a["pad"], a["dilation"], a["ceil"]
    )
    return None if hw is None else (shape[0],) + hw


def _infer_avgpool(shape, a, ctx):
    hw = _spatial("avgpool", shape, a, ctx, a["kernel"], a["stride"], a["pad"], (1, 1), a["ceil"])
    return None if hw is None else (shape[0],) + hw


def _infer_global(shape, a, ctx):
    return (shape[0], 1, 1)


def _infer_same(shape, a, ctx):
    return shape


def _infer_flatten(shape, a, ctx):
    total = 1
    for d in shape:
        total = d * total
    return (total,)


def _infer_dense(shape, a, ctx):
    return (a["out"],)


def _params_dense(shape, a):
    out = {"weight": (a["out"], shape[0])}
    if a["bias"]:
        out["bias"] = (a["out"],)
    return out


def _macs_dense(shape_in, shape_out, a):
    return shape_in[0] * a["out"]


def _params_channel(shape, a):
    return {"weight": (shape[0],), "bias": (shape[0],)}


def _buffers_batchnorm(shape, a):
    return {"running_mean": (shape[0],), "running_var": (shape[0],)}


def _params_prelu(shape, a):
    return {"weight": (shape[0],)}


def _infer_maxout(shape, a, ctx):
    channels = shape[0]
    k = a["k"]
    if is_concrete(channels) and channels % k:
        what = "channels" if len(shape) == 3 else "features"
        ctx.error(
            "E305",
            f"maxout k={k} does not divide the {channels} input {what}",
            help=_divisor_help("k", channels, k),
        )
        return None
    return (channels // k,) + tuple(shape[1:])


# ---- the table ---------------------------------------------------------------------------

_WINDOW = [ArgSpec("stride", "pair", None), ArgSpec("pad", "ppad", 0)]

LAYERS: dict[str, LayerDef] = {}


def _add(layer: LayerDef):
    LAYERS[layer.name] = layer


_add(LayerDef(
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
    _infer_conv,
    params=_params_conv,
    macs=_macs_conv,
    doc="2-D convolution",
))
_add(LayerDef(
    "maxpool",
    [ArgSpec("kernel", "pair")] + _WINDOW + [
        ArgSpec("dilation", "pair", 1),
        ArgSpec("ceil", "bool", False),
    ],
    (3,),
    _infer_maxpool,
    doc="max pooling",
))
_add(LayerDef(
    "avgpool",
    [ArgSpec("kernel", "pair")] + _WINDOW + [
        ArgSpec("ceil", "bool", False),
        ArgSpec("count_pad", "bool", True),
    ],
    (3,),
    _infer_avgpool,
    doc="average pooling",
))
_add(LayerDef("global_avgpool", [], (3,), _infer_global, doc="mean over H and W"))
_add(LayerDef("global_maxpool", [], (3,), _infer_global, doc="max over H and W"))
_add(LayerDef("flatten", [], None, _infer_flatten, doc="to [C*H*W]"))
_add(LayerDef(
    "dense",
    [ArgSpec("out", "count"), ArgSpec("bias", "bool", True)],
    (1,),
    _infer_dense,
    params=_params_dense,
    macs=_macs_dense,
    doc="fully connected",
))
_add(LayerDef(
    "dropout", [ArgSpec("p", "prob", 0.5)], None, _infer_same, changes_shape=False,
    doc="inverted dropout; identity at inference",
))
_add(LayerDef(
    "batchnorm",
    [ArgSpec("eps", "positive_float", 1e-5), ArgSpec("momentum", "unit_float", 0.1)],
    (1, 3),
    _infer_same,
    params=_params_channel,
    buffers=_buffers_batchnorm,
    changes_shape=False,
    doc="batch normalisation",
))
_add(LayerDef(
    "lrn",
    [
        ArgSpec("size", "count", 5),
        ArgSpec("alpha", "float", 1e-4),
        ArgSpec("beta", "float", 0.75),
        ArgSpec("k", "float", 1.0),
    ],
    (3,),
    _infer_same,
    changes_shape=False,
    doc="local response normalisation across channels",
))
for _name in ("relu", "sigmoid", "tanh", "selu", "softplus", "softmax", "silu"):
    _add(LayerDef(_name, [], None, _infer_same, changes_shape=False, doc="activation"))
_add(LayerDef(
    "leaky_relu", [ArgSpec("alpha", "float", 0.01)], None, _infer_same, changes_shape=False,
    doc="activation",
))
_add(LayerDef(
    "prelu", [], (1, 3), _infer_same, params=_params_prelu, changes_shape=False,
    doc="activation with a learned slope per channel",
))
_add(LayerDef(
    "elu", [ArgSpec("alpha", "float", 1.0)], None, _infer_same, changes_shape=False,
    doc="activation",
))
_add(LayerDef(
    "swish", [ArgSpec("beta", "float", 1.0)], None, _infer_same, changes_shape=False,
    doc="activation x * sigmoid(beta x)",
))
_add(LayerDef("maxout", [ArgSpec("k", "count")], (1, 3), _infer_maxout, doc="max over k channels"))

MERGES = ("concat", "add")

RANK_WORDS = {1: "a 1-D input [F]", 3: "a [C, H, W] input"}


def rank_help(op: str, shape) -> str | None:
    if op == "dense" and len(shape) == 3:
        return "insert `flatten` (or `global_avgpool -> flatten`) before `dense`"
    if len(shape) == 1 and op in ("conv", "maxpool", "avgpool", "lrn", "global_avgpool",
                                  "global_maxpool"):
        return f"`{op}` works on [C, H, W] maps; move it before `flatten`"
    return None


def expects(layer: LayerDef) -> str:
    return " or ".join(RANK_WORDS[r] for r in layer.ranks)

