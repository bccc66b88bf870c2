"""Export a plan and its parameters as an ONNX model.

    proto = export(plan, params, "model.onnx", opset=17)   # params: weight-file key -> array
    export_model(model, "model.onnx")                       # a built `Model`, its parameters

The graph is built with the ``onnx`` package's helpers and checked with
``onnx.checker.check_model(full_check=True)`` before anything is written; the file is written
to a temporary name in the target folder and moved into place, so a failure never leaves a
partial file. The batch dimension is symbolic (``dim_param "N"``); every other size is fixed.

Names carry over: graph inputs and outputs are the network's, the node that computes a layer
is named after the layer, and each parameter is an initializer under its weight-file key with
its weight-file shape (``stem.conv1.weight``). Helper nodes and constants are named
``<layer>/<purpose>``; a ``/`` never occurs in a layer name, so they cannot collide.

Each `Op` has one emitter in ``EMITTERS``, a table keyed like the backends' kernel tables.
Where an ONNX operator's meaning is looser than the kernel's, the emitter writes a graph that
is exact on every runtime rather than relying on one runtime's reading:

* pooling with ``ceil=true``: runtimes disagree on ONNX ``ceil_mode`` (ONNX Runtime follows
  PyTorch, the ONNX reference evaluator does not), so the exported pool uses floor mode
  with the end padding made explicit; the output size is the plan's either way;
* average pooling that counts padding and needs that extra end padding: the input is first
  zero-padded with ``Pad``, so that only the original padding counts;
* LRN with an even ``size``: ONNX centres the window the other way round (and ONNX Runtime
  refuses even sizes), so it is written out as a sum of squares over a 3-D average pool.
"""

from __future__ import annotations

import numpy as np

from .. import __version__
from ..compiler.plan import Op, Plan
from . import files
from .model import weight_problems
from .kernels.activation import DEFAULTS, SELU_ALPHA, SELU_SCALE
from .shapes import pads4, pair, pool_out

MIN_OPSET = 17
DEFAULT_OPSET = 17
BATCH = "N"  # the symbolic batch dimension of every graph input and output


class ExportError(ValueError):
    """A plan or a set of parameters that cannot be exported as asked."""


# ---- public entry points -------------------------------------------------------------------

def export(plan: Plan, params: dict, path=None, opset: int = DEFAULT_OPSET):
    """Build, check and return the ONNX model of ``plan`` with ``params``; write it to
    ``path`` (atomically) when one is given.

    ``params`` maps every parameter and buffer key of the plan (its weight-file names) to an
    array of that key's shape; values are stored as float32.
    """
    import onnx

    opset = _checked_opset(opset, onnx)
    arrays = _checked_params(plan, params)
    graph = _Graph(plan, arrays, opset).build()
    opsets = [onnx.helper.make_opsetid("", opset)]
    proto = onnx.helper.make_model(
        graph,
        opset_imports=opsets,
        ir_version=onnx.helper.find_min_ir_version_for(opsets),
        producer_name="cnnc",
        producer_version=__version__,
        doc_string=f"network {plan.network}, exported by cnnc {__version__}",
    )
    onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        write_atomically(path, proto.SerializeToString())
    return proto


def export_model(model, path, opset: int = DEFAULT_OPSET):
    """Export a built `Model` with its current parameters; returns the ONNX model."""
    return export(model.plan, model.state(), path, opset)


def write_atomically(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (runtime/files.py)."""
    files.write_atomically(path, lambda f: f.write(data))


# ---- argument checks -----------------------------------------------------------------------

def _checked_opset(opset, onnx) -> int:
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)):
        raise ExportError(f"opset must be an integer, got {opset!r}")
    if not MIN_OPSET <= opset <= newest:
        raise ExportError(
            f"opset must be between {MIN_OPSET} and {newest} (the newest this onnx "
            f"{onnx.__version__} knows), got {opset}"
        )
    return int(opset)


def _checked_params(plan: Plan, params: dict) -> dict:
    """Every expected key with its shape, as float32 NumPy arrays; every problem listed."""
    expected = dict(plan.params)
    expected.update(plan.buffers)
    arrays = {k: _host(v) for k, v in params.items()}
    problems = weight_problems(expected, arrays)
    if problems:
        raise ExportError(f"parameters do not fit network {plan.network}:\n  "
                          + "\n  ".join(problems))
    return {k: np.ascontiguousarray(arrays[k], dtype=np.float32) for k in expected}


def _host(value) -> np.ndarray:
    if not isinstance(value, np.ndarray) and hasattr(value, "get"):
        value = value.get()  # a CuPy array
    return np.asarray(value)


# ---- the graph under construction ----------------------------------------------------------

class _Graph:
    """Nodes, initializers and tensor names for one plan; ``build()`` returns a GraphProto."""

    def __init__(self, plan: Plan, arrays: dict, opset: int):
        import onnx

        self.onnx = onnx
        self.plan = plan
        self.arrays = arrays
        self.opset = opset
        self.nodes = []
        self.initializers = []
        self.value_info = []
        self.shapes = dict(plan.inputs)  # buffer -> per-sample shape
        self.tensor = {name: name for name in plan.inputs}  # buffer -> ONNX tensor name
        self.taken = set(plan.inputs) | set(plan.outputs) | set(arrays)
        self.step = None  # the step being emitted, for helper names and doc strings

    # ---- naming ----
    def fresh(self, base: str) -> str:
        """``base`` if no tensor, initializer or graph input/output has that name yet."""
        name = base
        k = 1
        while name in self.taken:
            name = f"{base}:{k}"
            k += 1
        self.taken.add(name)
        return name

    def temp(self, purpose: str) -> str:
        """A helper tensor of the current step."""
        return self.fresh(f"{self.step.name}/{purpose}")

    # ---- building blocks ----
    def node(self, op_type: str, inputs: list, output: str, purpose: str | None = None,
             **attrs) -> str:
        """Add one node; the step's main node (``purpose`` None) bears the layer's name."""
        name = self.step.name if purpose is None else f"{self.step.name}/{purpose}"
        span = self.step.span
        doc = f"line {span.line}, column {span.column}" if span is not None else None
        made = self.onnx.helper.make_node(op_type, inputs, [output], name=name,
                                          doc_string=doc, **attrs)
        self.nodes.append(made)
        return output

    def const(self, purpose: str, value, dtype) -> str:
        """A helper constant of the current step, as an initializer."""
        name = self.temp(purpose)
        array = np.asarray(value, dtype=dtype)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def reduce(self, op_type: str, x: str, axes: list, output: str, purpose=None) -> str:
        """A Reduce* node; its axes became an input in opset 18."""
        if self.opset >= 18:
            return self.node(op_type, [x, self.const("axes", axes, np.int64)], output,
                             purpose, keepdims=0)
        return self.node(op_type, [x], output, purpose, axes=axes, keepdims=0)

    def info(self, name: str, shape: tuple):
        helper = self.onnx.helper
        dims = [BATCH] + [int(d) for d in shape]
        return helper.make_tensor_value_info(name, self.onnx.TensorProto.FLOAT, dims)

    # ---- the whole graph ----
    def build(self):
        plan = self.plan
        for step in plan.steps:
            self.step = step
            for key in step.params:
                self.initializers.append(
                    self.onnx.numpy_helper.from_array(self.arrays[key], key))
            out = self.fresh(step.name)
            xs = [self.tensor[b] for b in step.inputs]
            in_shapes = [self.shapes[b] for b in step.inputs]
            EMITTERS[step.op](self, step, xs, list(step.params), out, in_shapes)
            self.tensor[step.name] = out
            self.shapes[step.name] = tuple(step.shape)
            self.value_info.append(self.info(out, step.shape))
        outputs = []
        for out_name, buf in plan.outputs.items():
            # Layer names are dotted and output names are not, so each output is an Identity
            # of its layer's tensor (which ONNX Runtime folds away).
            self.step = _OutputStep(out_name)
            self.node("Identity", [self.tensor[buf]], out_name)
            outputs.append(self.info(out_name, self.shapes[buf]))
        inputs = [self.info(name, shape) for name, shape in plan.inputs.items()]
        return self.onnx.helper.make_graph(
            self.nodes, plan.network, inputs, outputs, self.initializers,
            value_info=self.value_info,
        )


class _OutputStep:
    """Stands in for a step while the Identity nodes of graph outputs are added."""

    def __init__(self, name: str):
        self.name = f"{name}/output"
        self.span = None


# ---- one emitter per op ----------------------------------------------------------------------
# emit(g, step, xs, ws, out, in_shapes): xs are the input tensors, ws the parameter
# initializers (the step's weight-file keys), out the tensor to produce, in_shapes the inputs'
# per-sample shapes.

def _emit_conv(g, step, xs, ws, out, in_shapes):
    a = step.attrs
    kh, kw = g.arrays[ws[0]].shape[2:]
    top, bottom, left, right = pads4(a["pad"])
    target = out if a.get("act") is None else g.temp("conv")
    g.node("Conv", xs + ws, target, None if target == out else "conv",
           kernel_shape=[kh, kw], strides=list(pair(a["stride"])),
           dilations=list(pair(a["dilation"])), group=a["groups"],
           pads=[top, left, bottom, right])
    if target != out:
        _emit_fused(g, a["act"], target, out, step.shape)


def _emit_dense(g, step, xs, ws, out, in_shapes):
    act = step.attrs.get("act")
    target = out if act is None else g.temp("gemm")
    g.node("Gemm", xs + ws, target, None if target == out else "gemm", transB=1)
    if target != out:
        _emit_fused(g, act, target, out, step.shape)


def _emit_fused(g, act, x, out, shape):
    """A conv's or dense's fused activation: ``name`` or ``(name, {alpha, beta})``."""
    name, options = (act, {}) if isinstance(act, str) else (act[0], dict(act[1] or {}))
    if "weight" in options:
        raise ExportError(f"{g.step.name}: a fused prelu cannot be exported; lower prelu "
                          "as its own ACTIVATION step")
    _activation(g, name, options.get("alpha"), options.get("beta"), x, out, None, shape)


def _end_pads(n, k, s, p, d, ceil):
    """``(begin, end)`` padding under which floor mode gives the plan's (ceil) size."""
    size = pool_out(n, k, s, p, d, ceil)
    reach = (size - 1) * s + d * (k - 1) + 1  # the padded length the last window needs
    return p, max(p, reach - n - p)


def _pool_pads(step, in_shape, dilation):
    """Per-axis ``(begin, end)`` pads of a pooling step in floor mode, and the kernel."""
    a = step.attrs
    kernel = pair(a["kernel"])
    stride = pair(a["stride"] if a["stride"] is not None else a["kernel"])
    top, bottom, left, right = pads4(a["pad"])
    if (top, left) != (bottom, right):
        raise ExportError(f"{step.name}: pooling pads must be the same before and after, got "
                          f"{(top, bottom, left, right)}")
    pads = [_end_pads(in_shape[1 + axis], kernel[axis], stride[axis], (top, left)[axis],
                      dilation[axis], a["ceil"]) for axis in range(2)]
    return kernel, stride, pads


def _emit_maxpool(g, step, xs, ws, out, in_shapes):
    dilation = pair(step.attrs["dilation"])
    kernel, stride, pads = _pool_pads(step, in_shapes[0], dilation)
    x = xs[0]
    if any(end >= k for (_, end), k in zip(pads, kernel)):
        # ONNX Runtime wants every pad below the kernel size: pad with -inf up front
        # (padding never wins a max, exactly as MaxPool's own padding).
        x = _pad(g, x, pads, -np.inf)
        pads = [(0, 0), (0, 0)]
    g.node("MaxPool", [x], out, kernel_shape=list(kernel), strides=list(stride),
           dilations=list(dilation), pads=_onnx_pads(pads), ceil_mode=0)


def _emit_avgpool(g, step, xs, ws, out, in_shapes):
    kernel, stride, pads = _pool_pads(step, in_shapes[0], (1, 1))
    a = step.attrs
    x = xs[0]
    original = pads4(a["pad"])
    extended = any(end > original[1 + 2 * axis] for axis, (_, end) in enumerate(pads))
    padded = max(original) > 0
    if not a["count_pad"]:
        count = 0  # real cells only, whatever the padding
    elif not extended:
        count = 1  # every window lies inside the padded input: divide by the kernel size
    elif not padded:
        count = 0  # the only padding makes the last window fit, and must not count
    else:
        # Count the original padding but not the cells that only make the last window fit:
        # zero-pad explicitly, then average over real (now padded) cells only.
        given = [(original[0], original[1]), (original[2], original[3])]
        x = _pad(g, x, given, 0.0)
        pads = [(0, end - given_end) for (_, end), (_, given_end) in zip(pads, given)]
        count = 0
    g.node("AveragePool", [x], out, kernel_shape=list(kernel), strides=list(stride),
           pads=_onnx_pads(pads), count_include_pad=count, ceil_mode=0)


def _onnx_pads(pads) -> list:
    """``[(top, bottom), (left, right)]`` -> ONNX's ``[top, left, bottom, right]``."""
    (top, bottom), (left, right) = pads
    return [top, left, bottom, right]


def _pad(g, x, pads, value) -> str:
    (top, bottom), (left, right) = pads
    amounts = g.const("pads", [0, 0, top, left, 0, 0, bottom, right], np.int64)
    fill = g.const("pad_value", value, np.float32)
    return g.node("Pad", [x, amounts, fill], g.temp("padded"), "pad", mode="constant")


def _emit_global_avgpool(g, step, xs, ws, out, in_shapes):
    g.node("GlobalAveragePool", xs, out)


def _emit_global_maxpool(g, step, xs, ws, out, in_shapes):
    g.node("GlobalMaxPool", xs, out)


def _emit_lrn(g, step, xs, ws, out, in_shapes):
    a = step.attrs
    size = int(a["size"])
    if size % 2 == 1:
        # ONNX sums channels c - (size-1)/2 .. c + (size-1)/2, as the kernel does for odd size.
        g.node("LRN", xs, out, size=size, alpha=float(a["alpha"]), beta=float(a["beta"]),
               bias=float(a["k"]))
        return
    # Even size: the kernel sums channels c - size/2 .. c + size/2 - 1 (PyTorch's window).
    # mean of squares over that window = a 3-D average pool over (N, 1, C, H, W), padded
    # size/2 channels before and size/2 - 1 after, counting the padding.
    x = xs[0]
    sq = g.node("Mul", [x, x], g.temp("square"), "square")
    axis1 = g.const("axis1", [1], np.int64)
    sq5 = g.node("Unsqueeze", [sq, axis1], g.temp("square5d"), "unsqueeze")
    mean = g.node("AveragePool", [sq5], g.temp("window_mean5d"), "window_mean",
                  kernel_shape=[size, 1, 1], strides=[1, 1, 1],
                  pads=[size // 2, 0, 0, (size - 1) // 2, 0, 0], count_include_pad=1)
    mean = g.node("Squeeze", [mean, axis1], g.temp("window_mean"), "squeeze")
    scaled = g.node("Mul", [mean, g.const("alpha", a["alpha"], np.float32)],
                    g.temp("scaled"), "scale")
    base = g.node("Add", [scaled, g.const("k", a["k"], np.float32)], g.temp("base"), "shift")
    denom = g.node("Pow", [base, g.const("beta", a["beta"], np.float32)], g.temp("denominator"),
                   "power")
    g.node("Div", [x, denom], out)


def _emit_batchnorm(g, step, xs, ws, out, in_shapes):
    if len(ws) != 4:
        raise ExportError(f"{step.name}: batchnorm needs weight, bias, running_mean and "
                          f"running_var; the plan gives {ws}")
    a = step.attrs
    momentum = a.get("momentum")
    extra = {} if momentum is None else {"momentum": 1.0 - float(momentum)}  # ONNX's is 1 - ours
    g.node("BatchNormalization", xs + ws, out, epsilon=float(a["eps"]), **extra)


def _emit_activation(g, step, xs, ws, out, in_shapes):
    a = step.attrs
    slope = ws[0] if ws else None
    _activation(g, a["name"], a.get("alpha"), a.get("beta"), xs[0], out, slope, in_shapes[0])


def _activation(g, name, alpha, beta, x, out, slope, shape, purpose=None):
    """Emit activation ``name`` from ``x`` to ``out``; the last node gets ``purpose``."""
    if name not in DEFAULTS:
        raise ExportError(f"{g.step.name}: no ONNX mapping for activation {name!r}")
    default_alpha, default_beta = DEFAULTS[name]
    alpha = default_alpha if alpha is None else alpha
    beta = default_beta if beta is None else beta
    simple = {"identity": "Identity", "relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh",
              "softplus": "Softplus"}
    if name in simple:
        g.node(simple[name], [x], out, purpose)
    elif name == "leaky_relu":
        g.node("LeakyRelu", [x], out, purpose, alpha=float(alpha))
    elif name == "elu":
        g.node("Elu", [x], out, purpose, alpha=float(alpha))
    elif name == "selu":
        g.node("Selu", [x], out, purpose, alpha=SELU_ALPHA, gamma=SELU_SCALE)
    elif name == "prelu":
        if slope is None:
            raise ExportError(f"{g.step.name}: prelu needs its slope parameter")
        if len(shape) > 1:
            # slopes (C,) -> (C, 1, 1) so that they broadcast along channels
            axes = g.const("slope_axes", list(range(1, len(shape))), np.int64)
            slope = g.node("Unsqueeze", [slope, axes], g.temp("slope"), "slope")
        g.node("PRelu", [x, slope], out, purpose)
    else:  # swish / silu: x * sigmoid(beta * x)
        scaled = x
        if float(beta) != 1.0:
            scaled = g.node("Mul", [x, g.const("beta", beta, np.float32)], g.temp("beta_x"),
                            "beta_x")
        gate = g.node("Sigmoid", [scaled], g.temp("sigmoid"), "sigmoid")
        g.node("Mul", [x, gate], out, purpose)


def _emit_softmax(g, step, xs, ws, out, in_shapes):
    g.node("Softmax", xs, out, axis=int(step.attrs.get("axis", 1)))


def _emit_maxout(g, step, xs, ws, out, in_shapes):
    k = int(step.attrs["k"])
    channels, *rest = in_shapes[0]
    # (N, C, ...) -> (N, C/k, k, ...): 0 copies the batch size, whatever it is at run time
    grouped_shape = g.const("grouped_shape", [0, channels // k, k] + list(rest), np.int64)
    grouped = g.node("Reshape", [xs[0], grouped_shape], g.temp("grouped"), "group")
    g.reduce("ReduceMax", grouped, [2], out)


def _emit_flatten(g, step, xs, ws, out, in_shapes):
    g.node("Flatten", xs, out, axis=1)


def _emit_concat(g, step, xs, ws, out, in_shapes):
    g.node("Concat", xs, out, axis=int(step.attrs.get("axis", 1)))


def _emit_add(g, step, xs, ws, out, in_shapes):
    if len(xs) == 1:
        g.node("Identity", xs, out)
    elif len(xs) == 2:
        g.node("Add", xs, out)
    else:
        g.node("Sum", xs, out)


def _emit_dropout(g, step, xs, ws, out, in_shapes):
    g.node("Identity", xs, out)  # inference: dropout passes its input through


EMITTERS = {
    Op.CONV2D: _emit_conv,
    Op.MAXPOOL2D: _emit_maxpool,
    Op.AVGPOOL2D: _emit_avgpool,
    Op.GLOBAL_AVGPOOL: _emit_global_avgpool,
    Op.GLOBAL_MAXPOOL: _emit_global_maxpool,
    Op.LRN: _emit_lrn,
    Op.BATCHNORM: _emit_batchnorm,
    Op.ACTIVATION: _emit_activation,
    Op.SOFTMAX: _emit_softmax,
    Op.MAXOUT: _emit_maxout,
    Op.DENSE: _emit_dense,
    Op.FLATTEN: _emit_flatten,
    Op.CONCAT: _emit_concat,
    Op.ADD: _emit_add,
    Op.DROPOUT: _emit_dropout,
}
