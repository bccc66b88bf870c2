"""Receptive fields: for every layer, how much of the input one output unit sees.

Along each spatial axis a layer's output unit ``i`` depends on the input units of an
interval; three numbers describe it for every ``i`` at once (Araujo, Norris and Sim,
"Computing receptive fields of convolutional neural networks", Distill 2019):

    size    the length of that interval, in input units       r_out = r_in + (k - 1) j_in
    jump    the distance in the input between two neighbours  j_out = j_in s
    offset  the input position of output unit 0's centre     c_out = c_in + ((k-1)/2 - p) j_in

where ``k`` is the window's span (``d (k - 1) + 1`` when dilated), ``s`` its stride and ``p``
its padding before. Input units sit at 0, 1, 2, ...; so output unit ``i`` sees the input
from ``offset + i jump - (size - 1)/2`` to ``offset + i jump + (size - 1)/2``, clipped to
the input.

Fields travel through the network's networkx graph in topological order. A merge (concat,
add, mul) sees what each of its inputs sees: its field is the interval covering all of
theirs, which is the largest one when the branches are aligned (same jump, same centre); a
merge whose branches are not aligned gets a warning, because its units then mix inputs
whose fields do not share a centre. Layers that mix the whole map (dense, flatten, global
pools) see the whole input: their size is None. Elementwise layers and normalisations are
taken as pointwise, as receptive-field analyses usually do (layernorm's and groupnorm's
statistics do reach further).

After an upsampling or a transposed convolution neighbouring output units no longer see
evenly spaced fields: they alternate between phases (nearest upsampling by 2 maps outputs
2i and 2i + 1 to the same input). Below such a layer the three numbers are recomputed
exactly for every phase, by walking the graph backwards from one unit of each phase
(`unit_interval`): the size is then the largest over the phases and the offset their mean,
and `Fields.unit_interval` gives any one unit's exact interval.

Sizes and jumps do not depend on the input size, so symbolic sizes do not matter; only the
offset of a ``pad=same`` window with a stride needs the input size, and is None when it is
symbolic.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from ..ops import LAYERS, MERGES
from .graph import Network
from .shapes import effective_kernel, same_pads
from .symbolic import is_concrete


def kind(op: str) -> str:
    """How much of its input one output unit of ``op`` sees: the layer's own ``field``
    (ops/base.py: "pointwise", "window", "whole", "adaptive", "upsample", "transpose"),
    "merge" for concat, add and mul, "input" for an input."""
    if op in LAYERS:
        return LAYERS[op].field
    return "merge" if op in MERGES else op


@dataclass(frozen=True)
class Field:
    """One layer's receptive field, one entry per spatial axis of the input (height, width
    for images). ``size`` is None when every unit sees the whole input; ``offset`` (an
    entry of it) is None where it depends on a symbolic input size."""

    size: tuple | None
    jump: tuple
    offset: tuple

    @property
    def whole(self) -> bool:
        return self.size is None

    def interval(self, index: tuple) -> tuple | None:
        """``((first, last), ...)``: the input units output unit ``index`` (one index per
        spatial axis) depends on, before clipping to the input; None for a whole field.
        Exact while no upsampling or transposed convolution lies above the layer; below
        one, units alternate between phases and this is the evenly spaced estimate (at
        most the size wide): `Fields.unit_interval` gives the exact one."""
        if self.size is None or None in self.offset:
            return None
        out = []
        for r, j, c, i in zip(self.size, self.jump, self.offset, index):
            centre = c + i * j
            out.append((centre - Fraction(r - 1, 2), centre + Fraction(r - 1, 2)))
        return tuple(out)


@dataclass
class Fields:
    """Every layer's field (``by_node``: node name -> Field, or None where the shape was
    not known), and a warning per misaligned merge: ``(node name, message)``."""

    by_node: dict
    warnings: list
    network: Network | None = None

    def __getitem__(self, name: str) -> Field | None:
        return self.by_node[name]

    def unit_interval(self, name: str, index: tuple) -> tuple | None:
        """``((first, last), ...)``: the input units that output unit ``index`` of layer
        ``name`` depends on, exactly, before clipping to the input; None when it sees the
        whole input or the walk cannot tell (a symbolic size it needs)."""
        import networkx as nx

        order = list(nx.topological_sort(self.network.graph))
        return unit_interval(self.network, order, name, index)


# Stop recomputing phases exactly past this many node visits for one network (then the
# evenly spaced estimate stands): enough for a U-Net many times over.
EXACT_BUDGET = 2_000_000
# The most phases recomputed per layer.
MAX_PHASES = 64


def receptive_fields(net: Network) -> Fields:
    """The receptive field of every node of ``net``, in the coordinates of its input."""
    import networkx as nx

    graph = net.graph
    fields: dict = {}
    warnings: list = []
    period: dict = {}  # node -> how many phases its units go through (1: evenly spaced)
    order = list(nx.topological_sort(graph))
    for name in order:
        node = graph.nodes[name]["node"]
        if node.op == "input":
            fields[name] = _input_field(node.shape)
            period[name] = (1,) * max(len(node.shape or ()) - 1, 0)
            continue
        ins = [fields.get(src) for src in node.inputs]
        period[name] = _period(node, [period.get(src, ()) for src in node.inputs])
        if node.shape is None or any(f is None for f in ins) or not ins:
            fields[name] = None
            continue
        if len(ins) > 1:
            fields[name] = _merge(node, ins, warnings)
            continue
        in_shape = net.nodes[node.inputs[0]].shape
        fields[name] = _through(node, ins[0], in_shape)
    budget = EXACT_BUDGET
    for name in order:
        f = fields[name]
        phases = max(period[name], default=1)
        if f is None or f.whole or phases == 1 or phases > MAX_PHASES:
            continue
        budget -= phases * len(order)
        if budget < 0:
            break
        fields[name] = _by_phases(net, order, name, f, phases)
    return Fields(fields, warnings, net)


def _period(node, periods: list) -> tuple:
    """Per spatial axis, after how many output units the pattern of fields repeats:
    upsampling by t and a transposed convolution of stride t multiply it by t, a stride s
    divides it by their common factor, a merge takes the least common multiple."""
    import math

    axes = max((len(q) for q in periods), default=0)
    if node.shape is not None:
        axes = max(len(node.shape) - 1, 0)
    out = []
    args = node.args
    for k in range(axes):
        p = math.lcm(*[q[k] for q in periods if k < len(q)], 1)
        if kind(node.op) == "upsample":
            p *= _per_axis(args["factor"], axes)[k]
        elif kind(node.op) == "transpose":
            p *= _per_axis(args["stride"], axes)[k]
        elif kind(node.op) == "window":
            p //= math.gcd(p, _per_axis(args.get("stride") or args["kernel"], axes)[k])
        out.append(p)
    return tuple(out)


def _by_phases(net, order: list, name: str, f: Field, phases: int) -> Field:
    """``f`` with its size the largest, and its offset the mean, over the exact intervals
    of units 0 .. phases - 1 (the evenly spaced estimate where a walk cannot tell)."""
    axes = len(f.jump)
    widths = [[] for _ in range(axes)]
    centres = [[] for _ in range(axes)]
    base = phases * 64  # away from unit 0, where a linear upsampling clamps at the border
    for r in range(base, base + phases):
        interval = unit_interval(net, order, name, (r,) * axes)
        if interval is None:
            return f
        for axis, (lo, hi) in enumerate(interval):
            widths[axis].append(hi - lo + 1)
            centres[axis].append(Fraction(lo + hi, 2) - r * f.jump[axis])
    size = tuple(max(w) for w in widths)
    offset = tuple(sum(c, Fraction(0)) / len(c) for c in centres)
    return Field(size, f.jump, offset)


class _Unknown(Exception):
    """The backward walk needs a size that is symbolic."""


def unit_interval(net: Network, order: list, name: str, index: tuple) -> tuple | None:
    """The exact input interval of output unit ``index`` of ``name``, walking the graph
    backwards (``order``: the nodes in topological order); None when the unit sees the
    whole input or a size it needs is symbolic."""
    want = {name: [(i, i) for i in index]}
    found = None
    try:
        for current in reversed(order):
            ranges = want.pop(current, None)
            if ranges is None:
                continue
            node = net.nodes[current]
            if node.op == "input":
                found = ranges if found is None else _hull(found, ranges)
                continue
            for src in dict.fromkeys(node.inputs):
                back = _back(node, ranges, net.nodes[src].shape)
                if back is None:
                    return None
                want[src] = back if src not in want else _hull(want[src], back)
    except _Unknown:
        return None
    return None if found is None else tuple(found)


def _hull(a: list, b: list) -> list:
    return [(min(x[0], y[0]), max(x[1], y[1])) for x, y in zip(a, b)]


def _back(node, ranges: list, in_shape) -> list | None:
    """The input units (per axis, ``(first, last)``) that output units ``ranges`` of one
    layer read; None when they read the whole input."""
    out_shape = node.shape
    if kind(node.op) == "whole" or in_shape is None or len(in_shape) != len(out_shape):
        return None
    axes = len(ranges)
    a = node.args
    if kind(node.op) == "merge":  # the same units; a size-1 axis broadcast
        return [(0, 0) if in_shape[k + 1] == 1 and out_shape[k + 1] != 1 else r
                for k, r in enumerate(ranges)]
    if kind(node.op) == "adaptive":
        kernels = []
        for n, o in zip(in_shape[1:], out_shape[1:]):
            if not (is_concrete(n) and is_concrete(o)) or n % o:
                return None
            kernels.append(n // o)
        a = {"kernel": tuple(kernels), "stride": tuple(kernels), "pad": 0}
    elif kind(node.op) not in ("window", "upsample", "transpose"):
        return list(ranges)  # pointwise along the spatial axes
    out = []
    for k, (lo, hi) in enumerate(ranges):
        n = in_shape[k + 1]
        if kind(node.op) == "upsample":
            out.append(_back_upsample(a, k, axes, lo, hi, n, out_shape[k + 1]))
        elif kind(node.op) == "transpose":
            kernel = effective_kernel(_per_axis(a["kernel"], axes)[k],
                                      _per_axis(a.get("dilation", 1), axes)[k])
            s = _per_axis(a["stride"], axes)[k]
            p = _per_axis(a.get("pad", 0), axes)[k]
            out.append((-(-(lo + p - kernel + 1) // s), (hi + p) // s))
        else:
            kernel = effective_kernel(_per_axis(a["kernel"], axes)[k],
                                      _per_axis(a.get("dilation", 1), axes)[k])
            s = _per_axis(a.get("stride") or a["kernel"], axes)[k]
            before = _before(a.get("pad", 0), k, axes, n, kernel, s)
            out.append((lo * s - before, hi * s - before + kernel - 1))
    return out


def _before(pad, k: int, axes: int, n, kernel: int, s: int) -> int:
    """A window's padding before the data along axis ``k``."""
    if pad != "same":
        return _per_axis(pad, axes)[k]
    if s == 1:
        return (kernel - 1) // 2
    if not is_concrete(n):
        raise _Unknown
    return same_pads(n, kernel, s)[0]


def _back_upsample(a: dict, k: int, axes: int, lo: int, hi: int, n, m) -> tuple:
    """The input units an upsampling's outputs ``lo .. hi`` read (the runtime's rule:
    nearest reads floor(i / t); the linear modes the two units around (i + 1/2)/t - 1/2,
    clamped at 0, or around i (n - 1)/(m - 1) with align_corners, a weight of zero on the
    second where the position is whole)."""
    t = _per_axis(a["factor"], axes)[k]
    if a.get("mode", "nearest") == "nearest":
        return (lo // t, hi // t)
    if a.get("align_corners"):
        if not (is_concrete(n) and is_concrete(m)):
            raise _Unknown
        scale = Fraction(n - 1, m - 1) if m > 1 else Fraction(0)
        first, last = lo * scale, hi * scale
    else:
        first = max(Fraction(2 * lo + 1, 2 * t) - Fraction(1, 2), Fraction(0))
        last = max(Fraction(2 * hi + 1, 2 * t) - Fraction(1, 2), Fraction(0))
    high = last.numerator // last.denominator
    if last.denominator != 1:
        high += 1
    return (first.numerator // first.denominator, high)


def _input_field(shape) -> Field | None:
    if shape is None:
        return None
    axes = max(len(shape) - 1, 0)
    return Field((1,) * axes, (Fraction(1),) * axes, (Fraction(0),) * axes)


def _through(node, f: Field, in_shape) -> Field:
    """The field after one layer, from its input's field ``f``."""
    how = kind(node.op)
    if f.whole or how == "whole" or len(node.shape) != len(in_shape):
        return Field(None, f.jump, f.offset)
    if how == "window":
        return _window(f, node.args, in_shape)
    if how == "adaptive":
        return _adaptive(f, in_shape, node.shape)
    if how == "upsample":
        return _upsample(f, node.args, in_shape)
    if how == "transpose":
        return _transpose(f, node.args)
    return f  # pointwise along the spatial axes


def _per_axis(value, axes: int) -> tuple:
    return tuple(value) if isinstance(value, tuple) else (value,) * axes


def _window(f: Field, args: dict, in_shape) -> Field:
    axes = len(f.jump)
    kernels = _per_axis(args["kernel"], axes)
    strides = _per_axis(args.get("stride") or args["kernel"], axes)
    dilations = _per_axis(args.get("dilation", 1), axes)
    pads = args.get("pad", 0)
    size, jump, offset = [], [], []
    for axis in range(axes):
        k = effective_kernel(kernels[axis], dilations[axis])
        s = strides[axis]
        n = in_shape[axis + 1]
        if pads == "same":
            if s == 1:
                before = (k - 1) // 2
            elif is_concrete(n):
                before = same_pads(n, k, s)[0]
            else:
                before = None
        else:
            before = _per_axis(pads, axes)[axis]
        size.append(f.size[axis] + (k - 1) * f.jump[axis])
        jump.append(f.jump[axis] * s)
        c = f.offset[axis]
        offset.append(None if c is None or before is None
                      else c + (Fraction(k - 1, 2) - before) * f.jump[axis])
    return Field(tuple(size), tuple(jump), tuple(offset))


def _adaptive(f: Field, in_shape, out_shape) -> Field:
    """An adaptive pool is a plain window where the output divides the input (``k = s =
    n / out``); otherwise its windows differ in size, and it is taken as seeing all."""
    kernels = []
    for n, o in zip(in_shape[1:], out_shape[1:]):
        if not (is_concrete(n) and is_concrete(o)) or n % o:
            return Field(None, f.jump, f.offset)
        kernels.append(n // o)
    args = {"kernel": tuple(kernels), "stride": tuple(kernels), "pad": 0}
    return _window(f, args, in_shape)


def _upsample(f: Field, args: dict, in_shape) -> Field:
    """Output unit ``i`` of a factor-``t`` upsampling sits at input position
    ``(i + 1/2)/t - 1/2``; nearest reads the one unit under it, linear modes the two
    around it."""
    axes = len(f.jump)
    factors = _per_axis(args["factor"], axes)
    linear = args.get("mode", "nearest") != "nearest"
    size, jump, offset = [], [], []
    for axis in range(axes):
        t = factors[axis]
        j = f.jump[axis]
        size.append(f.size[axis] + (j if linear else 0))
        jump.append(j / t)
        c = f.offset[axis]
        offset.append(None if c is None else c + (Fraction(1, 2 * t) - Fraction(1, 2)) * j)
    return Field(tuple(size), tuple(jump), tuple(offset))


def _transpose(f: Field, args: dict) -> Field:
    """A transposed convolution spreads input unit ``i`` over outputs ``i s - p .. i s - p
    + k - 1``; so an output reads ``ceil(k / s)`` inputs, and output 0 is centred on input
    position ``(p - (k - 1)/2) / s``."""
    axes = len(f.jump)
    kernels = _per_axis(args["kernel"], axes)
    strides = _per_axis(args["stride"], axes)
    dilations = _per_axis(args.get("dilation", 1), axes)
    pads = _per_axis(args.get("pad", 0), axes)
    size, jump, offset = [], [], []
    for axis in range(axes):
        k = effective_kernel(kernels[axis], dilations[axis])
        s = strides[axis]
        j = f.jump[axis]
        reads = -(-k // s)
        size.append(f.size[axis] + (reads - 1) * j)
        jump.append(j / s)
        c = f.offset[axis]
        offset.append(None if c is None
                      else c + (pads[axis] - Fraction(k - 1, 2)) / s * j)
    return Field(tuple(size), tuple(jump), tuple(offset))


def _merge(node, ins: list, warnings: list) -> Field:
    """The interval covering every input's field; a warning when they are not aligned."""
    if any(f.whole for f in ins) or len({len(f.jump) for f in ins}) != 1:
        return Field(None, ins[0].jump, ins[0].offset)
    axes = len(ins[0].jump)
    jumps = {f.jump for f in ins}
    offsets = {f.offset for f in ins}
    if len(jumps) > 1 or len(offsets) > 1:
        parts = [f"{src} {_describe(f)}" for src, f in zip(node.inputs, ins)]
        warnings.append((node.name, f"{node.op} at {node.where()} joins branches whose "
                         f"receptive fields are not aligned: {'; '.join(parts)}"))
    size, jump, offset = [], [], []
    for axis in range(axes):
        jump.append(max(f.jump[axis] for f in ins))
        if any(f.offset[axis] is None for f in ins):
            size.append(max(f.size[axis] for f in ins))
            offset.append(None)
            continue
        lo = min(f.offset[axis] - Fraction(f.size[axis] - 1, 2) for f in ins)
        hi = max(f.offset[axis] + Fraction(f.size[axis] - 1, 2) for f in ins)
        size.append(_number(hi - lo + 1))
        offset.append((lo + hi) / 2)
    return Field(tuple(size), tuple(jump), tuple(offset))


def _number(value):
    """An int where the Fraction is whole."""
    if isinstance(value, Fraction) and value.denominator == 1:
        return int(value)
    return value


def _describe(f: Field) -> str:
    return (f"(size {axes_text(f.size)}, jump {axes_text(f.jump)}, "
            f"offset {axes_text(f.offset)})")


def number_text(value) -> str:
    """``3``, ``1.5``, ``1/3`` or ``?`` (unknown): one entry of a field."""
    if value is None:
        return "?"
    if isinstance(value, Fraction):
        if value.denominator == 1:
            return str(value.numerator)
        if (value * 2).denominator == 1 or (value * 4).denominator == 1:
            return f"{float(value):g}"
        return str(value)
    return str(value)


def axes_text(values) -> str:
    """One entry per axis, written once when all are equal: ``11``, ``11x7``, ``all``."""
    if values is None:
        return "all"
    texts = [number_text(v) for v in values]
    if not texts:
        return "-"
    if all(t == texts[0] for t in texts):
        return texts[0]
    return "x".join(texts)


def json_value(value):
    """A field entry for JSON: an int, a float for halves and quarters, else a string."""
    if value is None:
        return None
    if isinstance(value, Fraction):
        if value.denominator == 1:
            return value.numerator
        if (value * 4).denominator == 1:
            return float(value)
        return str(value)
    return value


def field_json(f: Field | None) -> dict | None:
    """``{"size": [...] or "all", "jump": [...], "offset": [...]}``."""
    if f is None:
        return None
    return {
        "size": "all" if f.whole else [json_value(v) for v in f.size],
        "jump": [json_value(v) for v in f.jump],
        "offset": [json_value(v) for v in f.offset],
    }
