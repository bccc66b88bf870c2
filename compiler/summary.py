"""Cost report: each layer's shape, parameters and MACs, with totals (spec section 7)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..ops import LAYERS, MERGES
from ..ops.base import REQUIRED, Layer
from .graph import Network, Node
from .symbolic import is_concrete, shape_text

BYTES_FLOAT32 = 4

# The MACs of a layer kind without a cost of its own (``Layer.macs`` left at its default).
_UNCOUNTED = next(f.default for f in fields(Layer) if f.name == "macs")


@dataclass
class Row:
    name: str
    op: str
    layer: str  # the layer with its resolved, non-default arguments
    shape: tuple
    params: object  # int, or a symbolic expression
    macs: object


@dataclass
class Report:
    network: str
    inputs: list[tuple[str, tuple]]
    outputs: list[tuple[str, tuple]]
    rows: list[Row]
    total_params: object
    total_macs: object
    activation_bytes: object  # every layer output of one sample, float32
    input_bytes: object
    param_bytes: object
    # The inference memory plan's peak for one sample (float32): None with symbolic sizes.
    planned_bytes: object = None
    # What training keeps for the backward pass, per sample (float32); set by --train.
    train_saved_bytes: object = None
    # The layer and merge kinds of the network whose work MACs leave out (spec section 9),
    # in order of first use.
    macs_not_counted: list = field(default_factory=list)
    # Each row's receptive field (compiler/receptive.py), by layer name, and the warnings
    # about merges of misaligned branches; None until `add_receptive_fields`.
    fields: dict | None = None
    field_warnings: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "network": self.network,
            "inputs": [{"name": n, "shape": _json_shape(s)} for n, s in self.inputs],
            "outputs": [{"name": n, "shape": _json_shape(s)} for n, s in self.outputs],
            "total_params": _json_num(self.total_params),
            "total_macs": _json_num(self.total_macs),
            "macs_not_counted": list(self.macs_not_counted),
            "activation_bytes": _json_num(self.activation_bytes),
            **({} if self.planned_bytes is None
               else {"planned_activation_bytes": self.planned_bytes}),
            **({} if self.train_saved_bytes is None
               else {"train_saved_bytes": self.train_saved_bytes,
                     "train_grad_bytes": _json_num(self.param_bytes)}),
            "layers": [
                {
                    "name": r.name,
                    "op": r.op,
                    "output_shape": _json_shape(r.shape),
                    "params": _json_num(r.params),
                    "macs": _json_num(r.macs),
                }
                for r in self.rows
            ],
            **({} if self.fields is None else self._fields_json()),
        }

    def _fields_json(self) -> dict:
        from .receptive import field_json

        return {
            "receptive_fields": {r.name: field_json(self.fields[r.name]) for r in self.rows},
            "receptive_field_warnings": [
                {"layer": name, "message": message} for name, message in self.field_warnings
            ],
        }


def _json_num(v):
    return v if is_concrete(v) else str(v)


def _json_shape(shape):
    return [_json_num(d) for d in shape]


def _count(shape) -> object:
    total = 1
    for d in shape:
        total = d * total
    return total


def layer_text(node: Node) -> str:
    """`conv(64, 7, stride=2, pad=3)`: the op with its arguments, defaults left out."""
    if node.op in MERGES:
        return node.op
    layer = LAYERS.get(node.op)
    if layer is None or not node.args:
        return node.op
    parts = []
    for spec in layer.args:
        value = node.args.get(spec.name)
        if spec.default is REQUIRED:
            parts.append(_arg_text(value))
            continue
        if _is_default(value, _normal_default(spec, node.args)):
            continue
        parts.append(f"{spec.name}={_arg_text(value)}")
    return f"{node.op}({', '.join(parts)})" if parts else node.op


def _normal_default(spec, args):
    if spec.name == "stride" and spec.default is None:
        return args.get("kernel")
    default = spec.default
    if spec.kind in ("pair", "cpad", "ppad") and isinstance(default, int):
        return (default, default)
    return default


def _is_default(value, default) -> bool:
    """Whether an argument has its default value; a per-dim tuple with every item equal to
    an integer default (``stride=[1, 1, 1]`` of a conv3d, default 1) has."""
    if value == default:
        return True
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, tuple):
        return bool(value) and all(v == default for v in value)
    return False


def _arg_text(value) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, tuple):
        if value and all(v == value[0] for v in value):  # one per dim, all equal: the int
            return str(value[0])
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def macs_not_counted(net: Network) -> list[str]:
    """The kinds of layer in ``net`` that MACs leave out, in order of first use: every merge
    and every layer kind without a MACs rule of its own (MACs count convolutions and dense
    layers, as torchvision does)."""
    kinds: dict = {}
    for node in net.layers:
        layer = LAYERS.get(node.op)
        if layer is None or layer.macs is _UNCOUNTED:
            kinds[node.op] = True
    return list(kinds)


def report(net: Network) -> Report:
    rows = []
    total_params = 0
    total_macs = 0
    activations = 0
    for node in net.layers:
        params = node.param_count
        rows.append(Row(node.name, node.op, layer_text(node), node.shape, params, node.macs))
        total_params = params + total_params
        total_macs = node.macs + total_macs
        activations = _count(node.shape) + activations
    inputs = [(n, net.nodes[n].shape) for n in net.inputs]
    outputs = [(n, net.nodes[node].shape) for n, node in net.outputs.items()]
    input_elems = 0
    for _, shape in inputs:
        input_elems = _count(shape) + input_elems
    planned = None
    if net.ok and not net.symbols:
        from .memory import plan_memory
        from .plan import lower

        planned = plan_memory(lower(net)).planned * BYTES_FLOAT32
    return Report(
        network=net.name,
        inputs=inputs,
        outputs=outputs,
        rows=rows,
        total_params=total_params,
        total_macs=total_macs,
        activation_bytes=activations * BYTES_FLOAT32,
        input_bytes=input_elems * BYTES_FLOAT32,
        param_bytes=total_params * BYTES_FLOAT32,
        planned_bytes=planned,
        macs_not_counted=macs_not_counted(net),
    )


def add_receptive_fields(rep: Report, net: Network) -> Report:
    """Fill ``rep.fields`` and ``rep.field_warnings`` from ``net``'s graph."""
    from .receptive import receptive_fields

    fields = receptive_fields(net)
    rep.fields = dict(fields.by_node)
    rep.field_warnings = list(fields.warnings)
    return rep


def _num(v) -> str:
    return f"{v:,}" if is_concrete(v) else str(v)


def _total(v, text) -> str:
    """A total; a long symbolic one is replaced by a pointer to --size."""
    if is_concrete(v) or len(str(v)) <= 80:
        return text
    names = ", ".join(f"{s}=..." for s in sorted(v.symbols()))
    return f"depends on the input size (give --size {names} for a number)"


def _human(v, unit="") -> str:
    if not is_concrete(v):
        return str(v)
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.2f} {suffix}{unit}"
    return f"{v} {unit}".strip()


def _bytes(v) -> str:
    if not is_concrete(v):
        return f"{v} bytes"
    for scale, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if v >= scale:
            return f"{v / scale:.2f} {suffix}"
    return f"{v} B"


HEADER = ("Layer", "Op", "Output shape", "Params", "MACs")
FIELD_HEADER = ("RF", "Jump", "Offset")


def table_rows(rep: Report) -> tuple[tuple, list[tuple]]:
    """The table's header and one tuple of cell texts per layer; with the receptive-field
    columns when ``rep.fields`` is set."""
    header = HEADER + (FIELD_HEADER if rep.fields is not None else ())
    body = []
    for r in rep.rows:
        row = (r.name, r.layer, shape_text(r.shape), _num(r.params), _num(r.macs))
        if rep.fields is not None:
            row += _field_cells(rep.fields.get(r.name))
        body.append(row)
    return header, body


def _field_cells(f) -> tuple:
    from .receptive import axes_text

    if f is None:
        return ("?", "?", "?")
    if f.whole:
        return ("all", "-", "-")
    return (axes_text(f.size), axes_text(f.jump), axes_text(f.offset))


def footer_lines(rep: Report) -> list[str]:
    """The totals under the table, one line each."""
    out = []
    params = f"{_num(rep.total_params)} ({_bytes(rep.param_bytes)} as float32)"
    macs = _num(rep.total_macs)
    if is_concrete(rep.total_macs):
        macs += f" ({_human(rep.total_macs, 'MAC')})"
    acts = f"{_bytes(rep.activation_bytes)} per sample (float32, every layer output)"
    out.append(f"Total parameters:  {_total(rep.total_params, params)}")
    out.append(f"Total MACs:        {_total(rep.total_macs, macs)}")
    if rep.macs_not_counted:
        out.append("MACs count convolutions and dense layers only; not counted: "
                   + ", ".join(rep.macs_not_counted))
    out.append(f"Activations:       {_total(rep.activation_bytes, acts)}")
    if rep.planned_bytes is not None:
        out.append(f"Planned peak:      {_bytes(rep.planned_bytes)} per sample (inference, "
                   "with fusion, in-place ops and buffer reuse)")
    if rep.train_saved_bytes is not None:
        out.append(f"Training keeps:    {_bytes(rep.train_saved_bytes)} per sample for the "
                   f"backward pass, plus {_bytes(rep.param_bytes)} of gradients")
    out.append(f"Input:             {_total(rep.input_bytes, _bytes(rep.input_bytes))} per sample")
    for name, shape in rep.outputs:
        out.append(f"Output {name}: {shape_text(shape)}")
    if rep.fields is not None:
        out.append("RF: receptive field in input units per spatial axis (all: the whole "
                   "input); Jump: input units between neighbouring outputs; Offset: where "
                   "output 0 is centred")
        for _, message in rep.field_warnings:
            out.append(f"warning: {message}")
    return out


def render_table(rep: Report) -> str:
    """The plain table, for scripts and golden tests: fixed-width columns, dashed rules."""
    header, body = table_rows(rep)
    widths = [len(h) for h in header]
    for row in body:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    right = (False, False, False, True, True) + (True,) * (len(header) - len(HEADER))

    def line(cells):
        out = []
        for cell, width, is_right in zip(cells, widths, right):
            out.append(cell.rjust(width) if is_right else cell.ljust(width))
        return "  ".join(out).rstrip()

    rule = "-" * len(line(header))
    out = [f"network {rep.network}"]
    for name, shape in rep.inputs:
        out.append(f"input   {name}: {shape_text(shape)}")
    out += [rule, line(header), rule]
    out += [line(row) for row in body]
    out.append(rule)
    out += footer_lines(rep)
    return "\n".join(out)


def render_csv(rep: Report) -> str:
    """One CSV row per layer, numbers without thousands separators (symbolic ones as their
    formula); the header names the columns."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = ["name", "op", "layer", "output_shape", "params", "macs"]
    if rep.fields is not None:
        columns += ["receptive_field", "jump", "offset"]
    writer.writerow(columns)
    for r in rep.rows:
        row = [r.name, r.op, r.layer, shape_text(r.shape), str(r.params), str(r.macs)]
        if rep.fields is not None:
            row += list(_field_cells(rep.fields.get(r.name)))
        writer.writerow(row)
    return buffer.getvalue()


def render_rich(rep: Report, console) -> None:
    """The table drawn by ``rich`` on ``console`` (a terminal): the same cells and totals
    as `render_table`."""
    from rich import box
    from rich.table import Table

    header, body = table_rows(rep)
    inputs = ", ".join(f"{name}: {shape_text(shape)}" for name, shape in rep.inputs)
    table = Table(title=f"network {rep.network}   input {inputs}", title_justify="left",
                  box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
    widths = []
    for index, name in enumerate(header):
        # on a narrow terminal the layer text (Op) gives way first, ending in an ellipsis;
        # names, shapes and numbers are never cut
        widest = max([len(name)] + [len(row[index]) for row in body])
        widths.append(min(widest, 12) if index == 1 else widest)
        table.add_column(name, justify="right" if index >= 3 else "left", no_wrap=True,
                         overflow="ellipsis", min_width=None if index == 1 else widest)
    for row in body:
        table.add_row(*row)
    needed = sum(widths) + 3 * len(widths)
    if needed > console.width:  # wider than the terminal: let it wrap, never crop numbers
        console.width = needed
    console.print(table)
    for line in footer_lines(rep):
        console.print(line, highlight=False, markup=False)
