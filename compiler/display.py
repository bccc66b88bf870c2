"""How networks and built models show themselves in a notebook: the summary table and the
picture, as HTML (``_repr_html_``) and SVG (``_repr_svg_``).

`Network`'s ``_repr_*_`` methods call `network_html` and `network_svg` through
``graph.NOTEBOOK``, which importing this module fills in (``cnnc.api`` imports it); a built
model (``runtime.model.Model``)
calls `model_html` with itself, which reads only its ``plan`` (and its dtype and backend
when it has them), so that nothing here imports the runtime.
"""

from __future__ import annotations

from html import escape

from .graph import NOTEBOOK, Network

# Beyond this many layers a network with block calls is drawn with its calls collapsed.
COLLAPSE_ABOVE = 60


def network_svg(net: Network) -> str | None:
    """The network's picture as SVG text (no XML declaration), cnnc's own layout; large
    networks with blocks drawn one box per block call. None when nothing was built."""
    from .draw import block_calls, picture, svg_text

    if not net.nodes:
        return None
    blocks = len(net.nodes) > COLLAPSE_ABOVE and bool(block_calls(net))
    return _strip_declaration(svg_text(picture(net, blocks=blocks)))


def network_html(net: Network) -> str:
    """A heading, the diagnostics (if any), the summary table with its totals, and the
    picture."""
    from .summary import add_receptive_fields, footer_lines, report, table_rows

    parts = [f"<div class=\"cnnc-network\"><h4>network {escape(net.name)}</h4>"]
    if net.diagnostics:
        parts.append(f"<pre>{escape(net.render())}</pre>")
    if net.nodes:
        rep = report(net) if net.ok else None
        if rep is not None:
            add_receptive_fields(rep, net)
            header, body = table_rows(rep)
            parts.append(_table(header, body))
            parts.append("<pre>" + escape("\n".join(footer_lines(rep))) + "</pre>")
        svg = network_svg(net)
        if svg:
            parts.append(f"<div class=\"cnnc-graph\">{svg}</div>")
    parts.append("</div>")
    return "\n".join(parts)


def model_html(model) -> str:
    """A built model: its plan's steps (name, primitive, output shape, parameters), its
    parameter count, dtype and backend, and the picture of its plan."""
    from .draw import plan_picture, svg_text

    plan = model.plan
    sizes = {key: _elements(shape) for key, shape in plan.params.items()}
    total = sum(sizes.values())
    facts = [f"{total:,} parameters"]
    dtype = getattr(model, "dtype", None)
    if dtype is not None:
        facts.append(str(dtype))
    backend = getattr(getattr(model, "backend", None), "name", None)
    if backend:
        facts.append(f"backend {backend}")
    rows = []
    for step in plan.steps:
        count = sum(sizes.get(p, 0) for p in step.params)
        rows.append((step.name, step.op.value if hasattr(step.op, "value") else str(step.op),
                     "[" + ", ".join(str(d) for d in step.shape) + "]", f"{count:,}"))
    svg = _strip_declaration(svg_text(plan_picture(plan)))
    return "\n".join([
        f"<div class=\"cnnc-model\"><h4>model {escape(plan.network)}</h4>",
        f"<p>{escape(', '.join(facts))}</p>",
        _table(("Step", "Primitive", "Output shape", "Params"), rows),
        f"<div class=\"cnnc-graph\">{svg}</div></div>",
    ])


def _table(header, body) -> str:
    right = {"Params", "MACs", "RF", "Jump", "Offset"}
    out = ["<table><thead><tr>"]
    out += [f"<th>{escape(h)}</th>" for h in header]
    out.append("</tr></thead><tbody>")
    for row in body:
        cells = []
        for h, cell in zip(header, row):
            align = ' style="text-align:right"' if h in right else ""
            cells.append(f"<td{align}>{escape(cell)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _elements(shape) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


def _strip_declaration(svg: str) -> str:
    if svg.startswith("<?xml"):
        return svg.split("\n", 1)[1]
    return svg


NOTEBOOK.update(html=network_html, svg=network_svg)
