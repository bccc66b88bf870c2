"""What changed between two networks: layers added, removed and changed, with the
per-layer and total deltas in parameters, MACs, activation memory and output shapes.

Layers are matched on the two networks' networkx graphs, in three rounds:

1. by name (the stable dotted names of spec section 5);
2. by structure: an unmatched layer of the new network whose inputs are all matched is
   paired with an unmatched layer of the old one of the same kind fed by the counterparts
   of those inputs (a renamed layer, or one whose scope moved);
3. by order: what is left, as two sequences of layer kinds in topological order, aligned
   like lines of text (difflib).

Anything still unmatched was removed (old) or added (new).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from .graph import Network, Node
from .summary import BYTES_FLOAT32, layer_text
from .symbolic import is_concrete, shape_text


@dataclass
class Change:
    """A matched pair of layers; ``fields`` holds what differs: name -> (old, new) for
    ``name``, ``layer``, ``output_shape``, ``inputs``, ``params`` and ``macs``."""

    old: Node
    new: Node
    fields: dict = field(default_factory=dict)
    how: str = "name"  # how the pair was matched: name, structure or order

    @property
    def params_delta(self):
        return self.new.param_count - self.old.param_count

    @property
    def macs_delta(self):
        return self.new.macs - self.old.macs

    @property
    def activation_delta(self):
        return _elements(self.new.shape) * BYTES_FLOAT32 - \
            _elements(self.old.shape) * BYTES_FLOAT32


@dataclass
class Totals:
    params: tuple  # (old, new)
    macs: tuple
    activation_bytes: tuple


@dataclass
class Diff:
    old: Network
    new: Network
    added: list  # Nodes of the new network
    removed: list  # Nodes of the old network
    changed: list  # Changes with at least one field
    matched: int  # pairs matched, changed or not
    outputs_added: list
    outputs_removed: list
    totals: Totals
    first_shape_change: Change | None

    @property
    def same(self) -> bool:
        return not (self.added or self.removed or self.changed or self.outputs_added
                    or self.outputs_removed)

    def to_json(self) -> dict:
        return {
            "same": self.same,
            "old": {"file": self.old.file, "network": self.old.name},
            "new": {"file": self.new.file, "network": self.new.name},
            "added": [_node_json(n) for n in self.added],
            "removed": [_node_json(n) for n in self.removed],
            "changed": [_change_json(c) for c in self.changed],
            "outputs_added": list(self.outputs_added),
            "outputs_removed": list(self.outputs_removed),
            "totals": {
                key: {"old": _num(old), "new": _num(new), "delta": _num(new - old)}
                for key, (old, new) in (("params", self.totals.params),
                                        ("macs", self.totals.macs),
                                        ("activation_bytes", self.totals.activation_bytes))
            },
            "first_shape_change": None if self.first_shape_change is None else {
                "old_name": self.first_shape_change.old.name,
                "new_name": self.first_shape_change.new.name,
                "old_shape": _shape_json(self.first_shape_change.old.shape),
                "new_shape": _shape_json(self.first_shape_change.new.shape),
            },
        }


def diff(old: Network, new: Network) -> Diff:
    """Compare two checked networks (both built far enough to have their nodes)."""
    pairs = _match(old, new)
    changes = []
    for a, (b, how) in pairs.items():
        change = _compare(old.nodes[a], new.nodes[b], pairs, how)
        changes.append(change)
    order = {name: k for k, name in enumerate(new.nodes)}
    changes.sort(key=lambda c: order[c.new.name])
    matched_new = {b for b, _ in pairs.values()}
    added = [n for n in new.nodes.values() if n.name not in matched_new]
    removed = [n for n in old.nodes.values() if n.name not in pairs]
    first = next((c for c in changes if "output_shape" in c.fields), None)
    return Diff(
        old=old,
        new=new,
        added=added,
        removed=removed,
        changed=[c for c in changes if c.fields],
        matched=len(changes),
        outputs_added=[o for o in new.outputs if o not in old.outputs],
        outputs_removed=[o for o in old.outputs if o not in new.outputs],
        totals=Totals(
            params=(_sum(old, _params), _sum(new, _params)),
            macs=(_sum(old, _macs), _sum(new, _macs)),
            activation_bytes=(_sum(old, _activation), _sum(new, _activation)),
        ),
        first_shape_change=first,
    )


def _params(node: Node):
    return node.param_count


def _macs(node: Node):
    return node.macs


def _sum(net: Network, value):
    total = 0
    for node in net.layers:
        total = value(node) + total
    return total


def _activation(node: Node):
    return _elements(node.shape) * BYTES_FLOAT32


def _elements(shape):
    if shape is None:
        return 0
    count = 1
    for d in shape:
        count = d * count
    return count


# ---- matching ----------------------------------------------------------------------------------

def _match(old: Network, new: Network) -> dict:
    """old name -> (new name, how), for every pair matched."""
    import networkx as nx

    pairs = {name: (name, "name") for name in old.nodes if name in new.nodes
             and old.nodes[name].op == new.nodes[name].op}
    back = {b: a for a, (b, _) in pairs.items()}
    old_order = list(nx.topological_sort(old.graph))
    new_order = list(nx.topological_sort(new.graph))
    # by structure: same kind, fed by the counterparts of the same inputs
    changed = True
    while changed:
        changed = False
        for b in new_order:
            if b in back:
                continue
            node = new.nodes[b]
            if not node.inputs or any(i not in back for i in node.inputs):
                continue
            wanted = [back[i] for i in node.inputs]
            for a in old_order:
                if a in pairs or old.nodes[a].op != node.op:
                    continue
                if old.nodes[a].inputs == wanted:
                    pairs[a] = (b, "structure")
                    back[b] = a
                    changed = True
                    break
    # by order: the rest, aligned as sequences of layer kinds
    rest_old = [a for a in old_order if a not in pairs]
    rest_new = [b for b in new_order if b not in back]
    matcher = difflib.SequenceMatcher(a=[old.nodes[a].op for a in rest_old],
                                      b=[new.nodes[b].op for b in rest_new], autojunk=False)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            a = rest_old[block.a + k]
            b = rest_new[block.b + k]
            pairs[a] = (b, "order")
            back[b] = a
    return pairs


def _compare(a: Node, b: Node, pairs: dict, how: str) -> Change:
    change = Change(a, b, how=how)
    if a.name != b.name:
        change.fields["name"] = (a.name, b.name)
    text_a, text_b = _text(a), _text(b)
    if text_a != text_b:
        change.fields["layer"] = (text_a, text_b)
    if a.shape != b.shape:
        change.fields["output_shape"] = (a.shape, b.shape)
    mapped = [pairs[i][0] if i in pairs else None for i in a.inputs]
    if mapped != list(b.inputs):
        change.fields["inputs"] = (list(a.inputs), list(b.inputs))
    if a.param_count != b.param_count:
        change.fields["params"] = (a.param_count, b.param_count)
    if _differs(a.macs, b.macs):
        change.fields["macs"] = (a.macs, b.macs)
    return change


def _text(node: Node) -> str:
    return "input" if node.op == "input" else layer_text(node)


def _differs(x, y) -> bool:
    if is_concrete(x) and is_concrete(y):
        return x != y
    return str(x) != str(y)


# ---- text and JSON -----------------------------------------------------------------------------

def _num(v):
    return v if is_concrete(v) else str(v)


def _shape_json(shape):
    return None if shape is None else [_num(d) for d in shape]


def _node_json(node: Node) -> dict:
    return {
        "name": node.name,
        "op": node.op,
        "layer": _text(node),
        "output_shape": _shape_json(node.shape),
        "params": _num(node.param_count),
        "macs": _num(node.macs),
        "activation_bytes": _num(_activation(node)),
    }


def _change_json(c: Change) -> dict:
    fields = {}
    for key, (x, y) in c.fields.items():
        if key == "output_shape":
            fields[key] = {"old": _shape_json(x), "new": _shape_json(y)}
        else:
            fields[key] = {"old": _num(x) if not isinstance(x, (str, list)) else x,
                           "new": _num(y) if not isinstance(y, (str, list)) else y}
    return {
        "old_name": c.old.name,
        "new_name": c.new.name,
        "matched_by": c.how,
        "changes": fields,
        "params_delta": _num(c.params_delta),
        "macs_delta": _num(c.macs_delta),
        "activation_bytes_delta": _num(c.activation_delta),
    }


def _signed(v) -> str:
    if not is_concrete(v):
        return f"({v})"
    return f"{v:+,}" if v else "0"


def _shape(shape) -> str:
    return "?" if shape is None else shape_text(shape)


def _percent(old, new) -> str:
    if not (is_concrete(old) and is_concrete(new)) or not old or old == new:
        return ""
    return f" ({(new - old) / old * 100:+.2f}%)"


def render(d: Diff, old_label: str, new_label: str) -> str:
    """The diff as text: one line per layer added (+), removed (-) or changed (~), the
    first layer whose output shape differs, and the totals."""
    out = [f"--- {old_label} (network {d.old.name})", f"+++ {new_label} (network {d.new.name})"]
    if d.same:
        out.append(f"same: {d.matched} layers, names, layers and shapes all equal")
        return "\n".join(out)
    for node in d.removed:
        out.append(f"- {node.name}: {_text(node)} -> {_shape(node.shape)}, "
                   f"params {_signed(-node.param_count)}, MACs {_signed(-node.macs)}")
    for node in d.added:
        out.append(f"+ {node.name}: {_text(node)} -> {_shape(node.shape)}, "
                   f"params {_signed(node.param_count)}, MACs {_signed(node.macs)}")
    for c in d.changed:
        out.append(f"~ {_change_line(c)}")
    for name in d.outputs_removed:
        out.append(f"- output {name}")
    for name in d.outputs_added:
        out.append(f"+ output {name}")
    if d.first_shape_change is not None:
        c = d.first_shape_change
        out.append(f"first shape change: {c.new.name}: {_shape(c.old.shape)} -> "
                   f"{_shape(c.new.shape)}")
    rows = [("", "old", "new", "delta")]
    for label, (old, new) in (("parameters", d.totals.params), ("MACs", d.totals.macs),
                              ("activations", d.totals.activation_bytes)):
        suffix = " B" if label == "activations" else ""
        rows.append((label, f"{_fmt(old)}{suffix}", f"{_fmt(new)}{suffix}",
                     f"{_signed(new - old)}{suffix}{_percent(old, new)}"))
    widths = [max(len(r[k]) for r in rows) for k in range(4)]
    for r in rows:
        out.append("  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in
                                                          zip(r[1:], widths[1:])]).rstrip())
    counts = (f"{len(d.added)} added, {len(d.removed)} removed, {len(d.changed)} changed, "
              f"{d.matched - len(d.changed)} the same")
    out.append(counts)
    return "\n".join(out)


def _fmt(v) -> str:
    return f"{v:,}" if is_concrete(v) else str(v)


def _change_line(c: Change) -> str:
    f = c.fields
    name = c.new.name if "name" not in f else f"{f['name'][0]} -> {f['name'][1]}"
    parts = []
    if "layer" in f:
        parts.append(f"{f['layer'][0]} -> {f['layer'][1]}")
    else:
        parts.append(_text(c.new))
    if "output_shape" in f:
        parts.append(f"{_shape(f['output_shape'][0])} -> {_shape(f['output_shape'][1])}")
    if "inputs" in f:
        parts.append(f"inputs {', '.join(f['inputs'][0])} -> {', '.join(f['inputs'][1])}")
    if "params" in f:
        parts.append(f"params {_signed(c.params_delta)}")
    if "macs" in f:
        parts.append(f"MACs {_signed(c.macs_delta)}")
    return f"{name}: " + ", ".join(parts)
