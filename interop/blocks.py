"""Repeated sub-graphs of an imported graph as `.cnn` blocks with parameters.

A graph exported from PyTorch says which nodes belong to one module instance: their scoped
names share a prefix (``layer1.0``). A module instance becomes a block call when it reads
one tensor from outside (the block's ``in``) and gives one back (its return), and when
another instance has the same wiring, layer kinds and names inside: ResNet's bottlenecks,
Inception's mixed modules, MobileNet's inverted residuals. Arguments that differ between
the instances (channels, strides) become the block's parameters; those that agree stay
literal. Blocks nest: the innermost repeated modules are taken first, and a later round
finds the modules made of their calls (ResNet-18's basic blocks around their bodies).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .source import MERGE_KINDS, Layer, Names, emit_body, identifier

__all__ = ["Block", "find_blocks"]

def _reserved() -> set:
    """Names a block may not take: the language's layers and merges and its keywords."""
    from ..ops import LAYERS, MERGES

    return set(LAYERS) | set(MERGES) | {"in", "block", "network", "input", "output", "let",
                                        "return", "as", "true", "false"}


@dataclass
class Block:
    """A block found in the graph: its name, parameter names, the body (the first
    instance's layers with local tensor names), which argument of which layer each
    parameter fills, and each body layer's name inside the block scope."""

    name: str
    params: list
    body: list  # Layer copies: inputs/outputs renamed ("in", "b0", ...), args may be params
    slots: dict  # (layer index, arg) -> parameter name
    result: str
    inner_names: list = field(default_factory=list)
    lines: list = field(default_factory=list)  # its definition in the .cnn file


def _instances(layers: list) -> dict:
    """Every module path prefix -> the indices of the layers under it."""
    under: dict = {}
    for i, layer in enumerate(layers):
        if not layer.path:
            continue
        parts = layer.path.split(".")
        for n in range(1, len(parts) + 1):
            under.setdefault(".".join(parts[:n]), []).append(i)
    return under


def _closed(indices: list, layers: list, outputs: set):
    """(input tensor, result tensor) when the layers at ``indices`` read one tensor from
    outside and give one back; else None."""
    inside = {layers[i].output for i in indices}
    reads = []
    for i in indices:
        for t in layers[i].inputs:
            if t not in inside and t not in reads:
                reads.append(t)
    if len(reads) != 1:
        return None
    given = []
    for layer in layers:
        if layer.output in inside:
            continue
        for t in layer.inputs:
            if t in inside and t not in given:
                given.append(t)
    for t in outputs:
        if t in inside and t not in given:
            given.append(t)
    if len(given) != 1:
        return None
    return reads[0], given[0]


_NO_DEFAULT = object()


def _default(kind: str, arg: str):
    """The language's default of ``kind``'s argument ``arg`` when it is a plain value (not
    required, not worked out from other arguments); else ``_NO_DEFAULT``."""
    from ..ops import LAYERS
    from ..ops.base import REQUIRED

    layer = LAYERS.get(kind)
    for spec in getattr(layer, "args", ()):
        if spec.name == arg:
            return _NO_DEFAULT if spec.default in (REQUIRED, None) else spec.default
    return _NO_DEFAULT


def _keys(layer: Layer) -> tuple:
    """The arguments whose presence is part of a layer's structure: those without a plain
    default (an instance that leaves one with a default out gives it the default)."""
    return tuple(a for a in layer.args if _default(layer.kind, a) is _NO_DEFAULT)


def _signature(prefix: str, indices: list, layers: list, tin: str, result: str):
    local = {tin: "in"}
    for k, i in enumerate(indices):
        local[layers[i].output] = f"b{k}"
    rows = []
    for i in indices:
        layer = layers[i]
        rel = layer.path[len(prefix):].lstrip(".")
        rows.append((layer.kind, rel, _keys(layer), tuple(local[t] for t in layer.inputs),
                     tuple(layer.params)))  # their shapes follow from the arguments
    return tuple(rows), local[result]


def find_blocks(layers: list, inputs: dict, outputs: dict, consts: dict | None = None):
    """``(blocks, layers)``: the blocks found and the top-level layers with each instance
    replaced by one call layer (``kind`` the block's name, ``members`` its layers).

    Rounds: the first takes groups of two or more instances; each later one looks again with
    the calls in place, for modules made of calls (Inception's mixed modules of its
    convolution-and-relu units), and takes groups of three or more."""
    out_tensors = set(outputs.values())
    names = Names(_reserved())
    names.locals = {}  # block stem -> the local names of its bodies, to tell blocks apart
    found = []
    least = 2
    while True:
        blocks, layers = _round(layers, out_tensors, consts or {}, names, least)
        if not blocks:
            return found, layers
        found.extend(blocks)
        least = 3


def _round(layers: list, out_tensors: set, consts: dict, names, least: int):
    """One round of `find_blocks`: groups of at least ``least`` instances."""
    under = _instances(layers)
    closed = {}
    for prefix, indices in under.items():
        if len(indices) < 2:
            continue
        ends = _closed(indices, layers, out_tensors)
        if ends is None:
            continue
        sig = _signature(prefix, indices, layers, *ends)
        closed[prefix] = (indices, ends, sig)
    groups: dict = {}
    for prefix in sorted(closed, key=lambda p: (p.count("."), p)):
        groups.setdefault(closed[prefix][2], []).append(prefix)
    # Groups of three or more instances first, the innermost first (the modules around them
    # become blocks in the next round, calling these), then those that save the most
    # source (instances beyond the first, times their size).
    def saving(members):
        return (len(members) - 1) * len(closed[members[0]][0])

    def rank(members):
        return (len(members) < 3, -members[0].count("."), -saving(members), members[0])

    taken: set = set()  # layer indices already inside a chosen instance
    chosen = []
    pending = [m for m in groups.values() if len(m) >= least]
    while pending:
        pending.sort(key=rank)
        best = pending.pop(0)
        chosen.append([(p, closed[p]) for p in best])
        for p in best:
            taken.update(closed[p][0])
        pending = [[p for p in m if not set(closed[p][0]) & taken] for m in pending]
        pending = [m for m in pending if len(m) >= least]
    if not chosen:
        return [], layers
    blocks = []
    replace = {}  # first layer index of an instance -> (call layer, its indices)
    for group in chosen:
        block = _make_block(group, layers, names, consts)
        blocks.append(block)
        for prefix, (indices, (tin, result), _) in group:
            members = [layers[i] for i in indices]
            args = {}
            for (k, arg), pname in block.slots.items():
                args.setdefault(pname, members[k].args[arg])
            call = Layer(block.name, [tin], result, {p: args[p] for p in block.params}, {},
                         prefix, f"module {prefix}")
            call.block = block
            call.members = members
            replace[max(indices)] = (call, set(indices))
    dropped = set()
    for _, indices in replace.values():
        dropped |= indices
    out = []
    for i, layer in enumerate(layers):
        if i in replace:
            out.append(replace[i][0])
        elif i not in dropped:
            out.append(layer)
    return blocks, _ordered(out)


def _ordered(layers: list) -> list:
    """``layers`` in an order where each comes after what it reads (stable)."""
    made = {layer.output for layer in layers}
    ready: set = set()
    out = []
    pending = list(layers)
    while pending:
        rest = []
        for layer in pending:
            if all(t in ready or t not in made for t in layer.inputs):
                out.append(layer)
                ready.add(layer.output)
            else:
                rest.append(layer)
        if len(rest) == len(pending):  # a cycle cannot happen in an ONNX graph; keep order
            out.extend(rest)
            break
        pending = rest
    return out


def _make_block(group: list, layers: list, names, consts: dict) -> Block:
    first_prefix, (indices, (tin, result), _) = group[0]
    instances = [[layers[i] for i in idx] for _, (idx, _, _) in group]
    # Which arguments differ between instances: each becomes a parameter; positions that
    # always carry equal values share one.
    columns: dict = {}
    for k, layer in enumerate(instances[0]):
        for inst in instances[1:]:
            for arg in inst[k].args:
                if arg not in layer.args:  # left at its default in the first instance
                    layer.args[arg] = _default(layer.kind, arg)
        for arg in layer.args:
            for inst in instances[1:]:
                inst[k].args.setdefault(arg, _default(layer.kind, arg))
            values = tuple(repr(_plain(inst[k].args[arg])) for inst in instances)
            if len(set(values)) > 1:
                columns.setdefault(values, []).append((k, arg))
    params = []
    slots = {}
    pnames = Names({"in"})
    for values, positions in columns.items():
        k, arg = positions[0]
        rel = instances[0][k].path[len(first_prefix):].lstrip(".")
        wanted = {"out": "c"}.get(arg, arg)
        if wanted in pnames.taken:
            wanted = identifier(f"{rel}_{arg}", "p")
        pname = pnames.claim(wanted)
        params.append(pname)
        for position in positions:
            slots[position] = pname
    local = {tin: "in"}
    body = []
    for k, layer in enumerate(instances[0]):
        local[layer.output] = f"b{k}"
    for k, layer in enumerate(instances[0]):
        args = {a: (slots[(k, a)] if (k, a) in slots else v)
                for a, v in _in_order(layer.kind, layer.args).items()}
        rel = layer.path[len(first_prefix):].lstrip(".")
        copy = Layer(layer.kind, [local[t] for t in layer.inputs], local[layer.output],
                     _Raw.wrap(args, slots, k), {}, rel, layer.origin)
        if getattr(layer, "block", None) is not None:  # a call of a block found before
            copy.block = layer.block
        body.append(copy)
    name = _block_name([p for p, _ in group])
    locals_ = {layer.path.split(".")[0] for layer in body if layer.path}
    if name in names.taken:  # a second block of that stem: say what it has besides
        others = names.locals.get(name, set())
        extra = sorted(locals_ - others)
        if extra:
            name = identifier(f"{name}_{extra[0]}", "unit")
    name = names.claim(name)
    names.locals.setdefault(_block_name([p for p, _ in group]), set()).update(locals_)
    block = Block(name, params, body, slots, local[result])
    inner_names = Names(set(MERGE_KINDS) | {"in"} | set(params) | set(consts.values()))
    lines, full = emit_body(body, {"in": "in"}, {}, consts, inner_names,
                            returns=local[result], width=92)
    block.inner_names = [full[id(layer)] for layer in body]
    head = f"block {name}({', '.join(params)}) {{" if params else f"block {name} {{"
    paths = ", ".join(p for p, _ in group[:4]) + (", ..." if len(group) > 4 else "")
    block.lines = [f"# {len(group)} modules of the graph: {paths}", head]
    for statement in lines:
        for line in statement.splitlines():
            block.lines.append(f"    {line}")
    block.lines.append("}")
    return block


def _in_order(kind: str, args: dict) -> dict:
    """``args`` in the order of the layer's argument list (docs/language.md section 8)."""
    from ..ops import LAYERS

    order = [spec.name for spec in getattr(LAYERS.get(kind), "args", ())]
    return dict(sorted(args.items(), key=lambda item: (
        order.index(item[0]) if item[0] in order else len(order))))


def _plain(value):
    """A pair of equal values as the one value (``(2, 2)`` is written ``2``)."""
    if isinstance(value, tuple) and value and all(v == value[0] for v in value):
        return value[0]
    return value


class _Raw(str):
    """A parameter name in an argument's place: rendered as it is."""

    @staticmethod
    def wrap(args: dict, slots: dict, k: int) -> dict:
        return {a: (_Raw(v) if (k, a) in slots else v) for a, v in args.items()}


def _block_name(prefixes: list) -> str:
    """A name for the block from its instances' paths: the last part they share in
    letters (``block``, ``denselayer``), else the letters of the part before the digits
    (``layer`` of ``layer1.0``)."""
    lasts = [p.split(".")[-1] for p in prefixes]
    for parts in (lasts, [p.split(".")[-2] if "." in p else p for p in prefixes]):
        stems = {re.sub(r"[^A-Za-z]+$", "", re.sub(r"[0-9_]+[a-z]?$", "", part))
                 for part in parts}
        stems.discard("")
        if len(stems) == 1:
            return identifier(stems.pop().lower(), "unit")
    return "unit"
