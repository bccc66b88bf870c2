"""The merge rule, one for every merge of `ops.MERGES`: the inputs must agree in rank and
in every axis but the merge's ``join_axis``, along which their sizes add up. A disagreement
is the merge's ``code``, with notes on where each input's size came from (the producers'
``formula`` hook) and, as help, the change to a producer that would fix it (its ``fix``)."""

from __future__ import annotations

from collections import Counter

from ...dsl import syntax as ast
from ...ops import LAYERS, MERGES
from ..graph import Network, Node
from ..symbolic import Condition, is_concrete, shape_text
from .notes import origin_note, producer
from .report import Reporter

AXIS_NAMES = {3: ["channels", "height", "width"]}  # by rank; any other rank: ["features"]


def merge_shape(net: Network, node: Node, merge: ast.Merge, reporter: Reporter,
                conditions: list):
    """The output shape of merge ``node`` (None when its inputs disagree: reported);
    symbolic sizes that must be equal become conditions."""
    rule = MERGES[node.op]
    shapes_in = [net.nodes[i].shape for i in node.inputs]
    if any(s is None for s in shapes_in):
        return None
    ranks = {len(s) for s in shapes_in}
    if len(ranks) > 1:
        reporter.report(rule.code, merge.span, variant="rank", op=node.op,
                        shapes=" vs ".join(shape_text(s) for s in shapes_in),
                        notes=input_notes(net, merge, node.inputs))
        return None
    rank = ranks.pop()
    names = AXIS_NAMES.get(rank, ["features"])
    for axis in range(rank):
        if axis == rule.join_axis:
            continue
        values = [shape[axis] for shape in shapes_in]
        if not agree(net, node, merge, axis, names[axis], values, reporter, conditions):
            break  # one diagnostic per merge: the first axis that disagrees
    first = shapes_in[0]
    join = rule.join_axis
    if join is None:
        return first
    total = 0
    for shape in shapes_in:
        total = shape[join] + total
    return tuple(first[:join]) + (total,) + tuple(first[join + 1:])


def agree(net, node, merge, axis, axis_name, values, reporter, conditions) -> bool:
    if all(v == values[0] for v in values):
        return True
    if not all(is_concrete(v) for v in values):
        for v in values[1:]:
            if v != values[0]:
                conditions.append(Condition("eq", values[0], v, (node, merge, axis_name)))
        return True
    counts = Counter(values)
    target = max(counts, key=lambda v: (counts[v], -values.index(v)))
    reporter.report(MERGES[node.op].code, merge.span, op=node.op, axis=axis_name,
                    values=" vs ".join(str(v) for v in values),
                    notes=input_notes(net, merge, node.inputs, axis=axis, target=target),
                    help=merge_help(net, node.inputs, axis, target))
    return False


def input_notes(net: Network, merge: ast.Merge, inputs, axis=None, target=None) -> list[str]:
    """One note per input: its shape and producer; where its size along a spatial ``axis``
    is not ``target``, the producer's arithmetic for it."""
    notes = []
    for src, name in zip(merge.sources, inputs):
        shape = net.nodes[name].shape
        note = origin_note(net, src.name, name)
        if axis is not None and axis > 0 and shape[axis] != target:
            formula = _hook(net, producer(net, name), "formula", axis)
            if formula:
                note += f" ; {formula}"
        notes.append(note)
    return notes


def merge_help(net: Network, inputs, axis: int, target) -> str | None:
    """The changes to the inputs' producers that make them ``target`` along ``axis``."""
    fixes = []
    for name in inputs:
        if net.nodes[name].shape[axis] == target:
            continue
        fix = _hook(net, producer(net, name), "fix", axis, target)
        if fix:
            fixes.append(fix)
    return "; ".join(fixes) if fixes else None


def _hook(net: Network, name: str, hook: str, *args):
    """Call layer hook ``hook`` (formula, fix) of node ``name`` with its input's shape."""
    node = net.nodes[name]
    layer = LAYERS.get(node.op)
    function = getattr(layer, hook, None)
    if function is None or not node.inputs:
        return None
    return function(node, net.nodes[node.inputs[0]].shape, *args)
