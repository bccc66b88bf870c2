"""The merge rule, one for every merge of `ops.MERGES`: the inputs must agree in rank and
in every axis but the merge's ``join_axis``, along which their sizes add up; a ``broadcast``
merge's inputs need only agree in the sizes other than 1 of each axis (NumPy's broadcasting
over the per-sample shape). A disagreement is the merge's ``code``, with notes on where each
input's size came from (the producers' ``formula`` hook) and, as help, the change to a
producer that would fix it (its ``fix``)."""

from __future__ import annotations

from collections import Counter

from ...dsl import syntax as ast
from ...ops import LAYERS, MERGES
from ..graph import Network, Node
from ..symbolic import Condition, is_concrete, shape_text
from .notes import origin_note, producer
from .report import Reporter

# The name of each per-sample axis, by rank: [F], [C, L], [C, H, W], [C, D, H, W].
AXIS_NAMES = {
    1: ["features"],
    2: ["channels", "length"],
    3: ["channels", "height", "width"],
    4: ["channels", "depth", "height", "width"],
}


def axis_names(rank: int) -> list[str]:
    """The names of the axes of a rank-``rank`` shape, for messages."""
    if rank in AXIS_NAMES:
        return AXIS_NAMES[rank]
    return ["channels"] + [f"dim {axis}" for axis in range(1, rank)]


def merge_shape(net: Network, node: Node, merge: ast.Merge, reporter: Reporter,
                conditions: list):
    """The output shape of merge ``node`` (None when an input has none or the ranks
    differ); inputs that disagree otherwise are reported, and checking goes on with the
    first input's sizes. Symbolic sizes that must be equal become conditions."""
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
    names = axis_names(rank)
    if rule.broadcast:
        return broadcast_shape(net, node, merge, shapes_in, names, reporter, conditions)
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
    target = _majority(values)
    reporter.report(MERGES[node.op].code, merge.span, op=node.op, axis=axis_name,
                    values=" vs ".join(str(v) for v in values),
                    notes=input_notes(net, merge, node.inputs, axis=axis, target=target),
                    help=merge_help(net, node.inputs, axis, target))
    return False


def broadcast_shape(net, node, merge, shapes_in, names, reporter, conditions):
    """The output shape of a broadcast merge: along each axis, the size other than 1 that
    the inputs share (1 where all are 1). A symbolic size against 1 broadcasts; sizes other
    than 1 that differ symbolically must be equal (conditions); concrete ones that differ
    clash. Clashes with no broadcasting anywhere are reported as a merge without
    broadcasting reports them (one axis, the producers' fix); else the message names every
    input's shape and every axis that clashes."""
    out = []
    clashes = []  # axes whose concrete sizes other than 1 differ
    stretched = False  # whether some input of size 1 is broadcast along some axis
    for axis, values in enumerate(zip(*shapes_in)):
        wide = [v for v in values if not _is_one(v)]
        if not wide:
            out.append(1)
            continue
        stretched = stretched or len(wide) < len(values)
        first = wide[0]
        out.append(first)
        if all(v == first for v in wide):
            continue
        if not all(is_concrete(v) for v in wide):
            if not clashes:  # as a merge without broadcasting: none after the first clash
                for v in wide[1:]:
                    if v != first:
                        conditions.append(Condition("eq", first, v, (node, merge, names[axis])))
            continue
        clashes.append(axis)
    if not clashes:
        return tuple(out)
    if not stretched:
        axis = clashes[0]
        agree(net, node, merge, axis, names[axis], [s[axis] for s in shapes_in], reporter,
              conditions)
        return tuple(shapes_in[0])  # as a merge without broadcasting: checking goes on
    parts = [f"{names[axis]} ({' vs '.join(str(s[axis]) for s in shapes_in)})"
             for axis in clashes]
    clash_text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    shapes = " vs ".join(shape_text(s) for s in shapes_in)
    axis = clashes[0]
    target = _majority([s[axis] for s in shapes_in if not _is_one(s[axis])])
    # the message of E303's "broadcast" variant, written out until the registry has it
    reporter.say(MERGES[node.op].code,
                 f"{node.op} inputs do not broadcast: {shapes}; they clash in {clash_text}",
                 merge.span,
                 notes=input_notes(net, merge, node.inputs, axis=axis, target=target,
                                   broadcast=True),
                 help=broadcast_help(net, merge, node.inputs, clashes, names))
    return tuple(out)


def broadcast_help(net: Network, merge: ast.Merge, inputs, clashes, names) -> str | None:
    """For each input whose size along a clashing axis is neither the most common size other
    than 1 there nor 1: its producer's fix for that axis, else the sizes it needs."""
    targets = {}
    for axis in clashes:
        sizes = [net.nodes[name].shape[axis] for name in inputs]
        targets[axis] = _majority([v for v in sizes if not _is_one(v)])
    fixes = []
    for src, name in zip(merge.sources, inputs):
        shape = net.nodes[name].shape
        needs = []
        for axis in clashes:
            target = targets[axis]
            if shape[axis] == target or _is_one(shape[axis]):
                continue
            fix = _hook(net, producer(net, name), "fix", axis, target) if axis > 0 else None
            if fix:
                if fix not in fixes:
                    fixes.append(fix)
            else:
                needs.append(f"{names[axis]} {target}")
        if needs:
            fixes.append(f"`{src.name}` needs {' and '.join(needs)} (or 1, to broadcast)")
    return "; ".join(fixes) if fixes else None


def _is_one(size) -> bool:
    return is_concrete(size) and size == 1


def _majority(values):
    """The most common of ``values``, the first of them on a tie."""
    counts = Counter(values)
    return max(counts, key=lambda v: (counts[v], -values.index(v)))


def input_notes(net: Network, merge: ast.Merge, inputs, axis=None, target=None,
                broadcast=False) -> list[str]:
    """One note per input: its shape and producer; where its size along a spatial ``axis``
    is not ``target`` (nor 1, for a ``broadcast`` merge), the producer's arithmetic for it."""
    notes = []
    for src, name in zip(merge.sources, inputs):
        shape = net.nodes[name].shape
        note = origin_note(net, src.name, name)
        if (axis is not None and axis > 0 and shape[axis] != target
                and not (broadcast and _is_one(shape[axis]))):
            formula = _hook(net, producer(net, name), "formula", axis)
            if formula:
                note += f" ; {formula}"
        notes.append(note)
    return notes


def merge_help(net: Network, inputs, axis: int, target) -> str | None:
    """The changes to the inputs' producers that make them ``target`` along ``axis``. The
    layers' ``fix`` hooks change spatial sizes: none is asked about channels (axis 0)."""
    if axis == 0:
        return None
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
