"""Shape inference: the output shape, parameters and cost of every node, in order.

A layer's shape rule and checks are its own (``ops/<family>.py``): this pass checks the
input rank, then calls the layer's hooks (``infer``, ``params``, ``buffers``, ``macs``,
``lint``, and ``rank_help`` for a wrong rank). Merges follow the merge rule (merge.py).
"""

from __future__ import annotations

from ...dsl.diagnostics import CODES
from ...ops import LAYERS
from ..graph import Network, Node
from ..symbolic import Condition, shape_text
from .merge import merge_shape
from .notes import origin_note
from .report import Reporter
from .values import listing

RANK_WORDS = {
    1: "a 1-D input [F]",
    2: "a [C, L] input",
    3: "a [C, H, W] input",
    4: "a [C, D, H, W] input",
}


def rank_words(rank: int) -> str:
    """A per-sample rank in words: ``a [C, L] input``."""
    return RANK_WORDS.get(rank, f"a {rank}-D input")


def expects(layer) -> str:
    """The input ranks ``layer`` accepts, in words: ``a [C, L] input or a [C, H, W] input``."""
    return listing([rank_words(r) for r in layer.ranks], "or")


class InferContext:
    """What a shape rule may do: report a problem, or require a symbolic size to be >= 1.

    ``error(code, message, notes=(), help=None)`` takes the message written out, or (with
    ``message`` left out) the values of the code's template: ``error("E305", op="conv",
    ...)``. The first note says where the node's input came from."""

    def __init__(self, net: Network, reporter: Reporter, conditions: list, node: Node):
        self.net = net
        self.reporter = reporter
        self.conditions = conditions
        self.node = node

    def error(self, code, message=None, notes=(), help=None, *, variant=None, **values):
        if message is None:
            message = CODES[code].format(variant, **values)
        notes = list(notes)
        if self.node.inputs:
            notes.insert(0, origin_note(self.net, "input", self.node.inputs[0]))
        self.reporter.say(code, message, self.node.span, notes=notes, help=help)

    def positive(self, size, what):
        self.conditions.append(Condition("ge1", size, None, (self.node, what)))


def infer_shapes(net: Network, jobs, reporter: Reporter) -> list[Condition]:
    """Set the shape of every node of ``jobs`` (``(node, ast.Merge or None)``, in network
    order); return the conditions on size symbols that the shapes need."""
    conditions: list[Condition] = []
    for node, merge in jobs:
        reporter.trace = node.trace
        if merge is None:
            infer_layer(net, node, reporter, conditions)
        else:
            node.shape = merge_shape(net, node, merge, reporter, conditions)
    reporter.trace = ()
    return conditions


def infer_layer(net: Network, node: Node, reporter: Reporter, conditions: list):
    layer = LAYERS[node.op]
    shape = net.nodes[node.inputs[0]].shape
    if shape is None:
        return
    if layer.ranks is not None and len(shape) not in layer.ranks:
        help = layer.rank_help(shape) if layer.rank_help is not None else None
        reporter.report("E304", node.span, op=node.op, expected=expects(layer),
                        shape=shape_text(shape),
                        notes=[origin_note(net, "its input", node.inputs[0])], help=help)
        return
    args = node.args
    out = layer.infer(shape, args, InferContext(net, reporter, conditions, node))
    if out is None:
        return
    node.shape = out
    node.params = layer.params(shape, args)
    node.buffers = layer.buffers(shape, args)
    node.macs = layer.macs(shape, out, args)
    if layer.lint is not None:
        layer.lint(node, shape, reporter.say)
