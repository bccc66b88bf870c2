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

Each `Op` has one emitter, in its family module (``ops/``); ``EMITTERS`` is the table of
them, keyed like the backends' kernel tables. Where an ONNX operator's meaning is looser than
the kernel's, the emitter writes a graph that is exact on every runtime rather than relying
on one runtime's reading:

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
from ..compiler.plan import Plan
from ..ops import table
from ..ops.base import ExportError
from . import files
from .files import weight_problems

__all__ = ["BATCH", "DEFAULT_OPSET", "EMITTERS", "ExportError", "MIN_OPSET", "export",
           "export_model"]

MIN_OPSET = 17
DEFAULT_OPSET = 17
BATCH = "N"  # the symbolic batch dimension of every graph input and output


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


# ---- the emitters ----------------------------------------------------------------------------
# Each primitive's emitter lives in its family module (``Primitive.onnx``):
# emit(g, step, xs, ws, out, in_shapes): xs are the input tensors, ws the parameter
# initializers (the step's weight-file keys), out the tensor to produce, in_shapes the inputs'
# per-sample shapes.
EMITTERS = table("onnx")
