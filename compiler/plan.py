"""Lowering: the checked graph to a plan over a closed set of primitive ops.

The plan is what a runtime backend executes: a list of `Step`s in a valid order, each naming
one `Op` from the closed vocabulary, its input and output buffers, its attributes (plain
keyword arguments for the kernel) and its parameter names (as stored in weight files). Every
step keeps the source span and block trace of the layer it came from.

`Op` is the op registry's enum (``ops/__init__.py``): each layer kind's `lower` hook, in
its family module, names the primitive it becomes and its attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ops import LAYERS, MERGES, Op
from ..ops.base import weight_keys
from .graph import Network, Node


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
    file: str = "<input>"  # the .cnn file the steps' spans point into


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
            initial[full] = LAYERS[node.op].init(key, node.args)
        for key, shape in node.buffers.items():
            full = f"{node.name}.{key}"
            buffers[full] = shape
            initial[full] = LAYERS[node.op].init(key, node.args)
        steps.append(step)
    inputs = {name: net.nodes[name].shape for name in net.inputs}
    return Plan(net.name, inputs, dict(net.outputs), steps, params, buffers, initial,
                net.file)


def _lower_node(net: Network, node: Node) -> Step:
    kind = LAYERS.get(node.op) or MERGES[node.op]
    in_shapes = [net.nodes[i].shape for i in node.inputs]
    name, attrs = kind.lower(node, in_shapes)
    return Step(Op(name), node.name, list(node.inputs), attrs, weight_keys(node), node.shape,
                node.span, node.trace)
