"""Lowering: the checked graph to a plan over a closed set of primitive ops.

The plan is what a runtime backend executes: a list of `Step`s in a valid order, each naming
one `Op` from the closed vocabulary, its input and output buffers, its attributes (plain
keyword arguments for the kernel) and its parameter names (as stored in weight files). Every
step keeps the source span and block trace of the layer it came from.

`Op` lives here, in the compiler, because lowering targets it; the runtime's kernel tables
are keyed by it (and `runtime/ops.py` re-exports it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from . import shapes
from .graph import Network, Node


class Op(enum.Enum):
    CONV2D = "conv2d"
    MAXPOOL2D = "maxpool2d"
    AVGPOOL2D = "avgpool2d"
    GLOBAL_AVGPOOL = "global_avgpool"
    GLOBAL_MAXPOOL = "global_maxpool"
    LRN = "lrn"
    BATCHNORM = "batchnorm"
    ACTIVATION = "activation"
    SOFTMAX = "softmax"
    MAXOUT = "maxout"
    DENSE = "dense"
    FLATTEN = "flatten"
    CONCAT = "concat"
    ADD = "add"
    DROPOUT = "dropout"


ACTIVATIONS = {
    "relu", "sigmoid", "tanh", "selu", "softplus", "silu", "leaky_relu", "prelu", "elu", "swish",
}


@dataclass
class Step:
    op: Op
    name: str  # the layer's stable name; also its output buffer's name
    inputs: list[str]  # buffer names: graph inputs or earlier steps' names
    attrs: dict = field(default_factory=dict)
    params: list[str] = field(default_factory=list)  # weight-file keys, in kernel order
    shape: tuple = ()  # per-sample output shape
    span: object = None
    trace: tuple = ()


@dataclass
class Plan:
    network: str
    inputs: dict[str, tuple]  # name -> per-sample shape
    outputs: dict[str, str]  # output name -> buffer name
    steps: list[Step]
    params: dict[str, tuple]  # weight-file key -> shape, trainable
    buffers: dict[str, tuple]  # weight-file key -> shape, running statistics
    initial: dict[str, str] = field(default_factory=dict)  # key -> init rule


def lower(net: Network) -> Plan:
    """Lower a checked network with concrete shapes to a plan."""
    if not net.ok:
        raise ValueError("lowering needs a network without errors")
    if net.symbols:
        raise ValueError(
            f"lowering needs concrete sizes; give values for {', '.join(net.symbols)}"
        )
    steps = []
    params: dict = {}
    buffers: dict = {}
    initial: dict = {}
    for node in net.nodes.values():
        if node.op == "input":
            continue
        step = _lower_node(net, node)
        for key, shape in node.params.items():
            full = f"{node.name}.{key}"
            params[full] = shape
            initial[full] = _init_rule(node, key)
        for key, shape in node.buffers.items():
            full = f"{node.name}.{key}"
            buffers[full] = shape
            initial[full] = "zeros" if key == "running_mean" else "ones"
        steps.append(step)
    inputs = {name: net.nodes[name].shape for name in net.inputs}
    return Plan(net.name, inputs, dict(net.outputs), steps, params, buffers, initial)


def _init_rule(node: Node, key: str) -> str:
    if node.op == "prelu":
        return "prelu"  # 0.25, as the spec and PyTorch start it
    if node.op == "batchnorm":
        return "ones" if key == "weight" else "zeros"
    return "kaiming_uniform" if key == "weight" else "fan_in_uniform"


def _conv_pads(node: Node, net: Network) -> tuple[int, int, int, int]:
    a = node.args
    if a["pad"] != "same":
        return (a["pad"][0], a["pad"][0], a["pad"][1], a["pad"][1])
    _, h, w = net.nodes[node.inputs[0]].shape
    top, bottom = shapes.same_pads(h, a["kernel"][0], a["stride"][0], a["dilation"][0])
    left, right = shapes.same_pads(w, a["kernel"][1], a["stride"][1], a["dilation"][1])
    return (top, bottom, left, right)


def _lower_node(net: Network, node: Node) -> Step:
    a = node.args
    names = [f"{node.name}.{k}" for k in node.params]
    step = Step(Op.DROPOUT, node.name, list(node.inputs), {}, names, node.shape, node.span,
                node.trace)
    op = node.op
    if op == "conv":
        step.op = Op.CONV2D
        step.attrs = dict(stride=a["stride"], pad=_conv_pads(node, net), dilation=a["dilation"],
                          groups=a["groups"], act=None)
    elif op == "maxpool":
        step.op = Op.MAXPOOL2D
        step.attrs = dict(kernel=a["kernel"], stride=a["stride"], pad=a["pad"],
                          dilation=a["dilation"], ceil=a["ceil"])
    elif op == "avgpool":
        step.op = Op.AVGPOOL2D
        step.attrs = dict(kernel=a["kernel"], stride=a["stride"], pad=a["pad"], ceil=a["ceil"],
                          count_pad=a["count_pad"])
    elif op == "global_avgpool":
        step.op = Op.GLOBAL_AVGPOOL
    elif op == "global_maxpool":
        step.op = Op.GLOBAL_MAXPOOL
    elif op == "lrn":
        step.op = Op.LRN
        step.attrs = dict(size=a["size"], alpha=a["alpha"], beta=a["beta"], k=a["k"])
    elif op == "batchnorm":
        step.op = Op.BATCHNORM
        step.params = names + [f"{node.name}.{k}" for k in node.buffers]
        step.attrs = dict(eps=a["eps"], momentum=a["momentum"])
    elif op in ACTIVATIONS:
        step.op = Op.ACTIVATION
        step.attrs = dict(name=op, alpha=a.get("alpha"), beta=a.get("beta"))
    elif op == "softmax":
        step.op = Op.SOFTMAX
        step.attrs = dict(axis=1)
    elif op == "maxout":
        step.op = Op.MAXOUT
        step.attrs = dict(k=a["k"])
    elif op == "dense":
        step.op = Op.DENSE
        step.attrs = dict(act=None)
    elif op == "flatten":
        step.op = Op.FLATTEN
    elif op == "concat":
        step.op = Op.CONCAT
        step.attrs = dict(axis=1)
    elif op == "add":
        step.op = Op.ADD
    elif op == "dropout":
        step.op = Op.DROPOUT
        step.attrs = dict(p=a["p"])
    else:
        raise AssertionError(f"no lowering for layer kind {op!r}")
    return step
