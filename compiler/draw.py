"""Pictures of a network: one box per layer (or per block call), edges labelled with the
tensor shape they carry, drawn from the network's networkx graph.

    pic = picture(net, blocks=True, expand={"i4.inception2"})
    dot_source(pic)          # DOT text, through the graphviz library
    render(pic, "svg")       # bytes: Graphviz's `dot` where installed, else the layout here

`render` uses Graphviz's `dot` program when it is on the PATH. Without it, a picture is
still drawn: `layout` places the boxes in layers (a small Sugiyama-style layout: ranks by
longest path, crossings reduced by barycentres, positions by least squares under the
order), `svg_text` writes the SVG, and Pillow draws the PNG and PDF from the same layout.
A network is a mostly vertical graph with short branches; that is what this layout is for.

A model with errors is drawn as far as it was built: a layer a diagnostic points at shows
the diagnostic's code, boxed in red (warnings in orange); diagnostics that point at no
drawn layer are listed above the picture.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

from ..dsl.diagnostics import source_lines
from .graph import Network
from .summary import layer_text
from .symbolic import shape_text

FORMATS = ("svg", "png", "pdf", "dot")

DOT_MISSING = (
    "Graphviz's `dot` program is not installed, and --layout dot needs it. Install "
    "Graphviz: `apt-get install graphviz` (Debian, Ubuntu), `dnf install graphviz` (Fedora), "
    "`brew install graphviz` (macOS), `conda install -c conda-forge graphviz`, or from "
    "graphviz.org/download; or leave out --layout dot to use cnnc's own layout"
)

# Sizes of the built-in layout, in SVG pixels (monospace text: 0.6 em per character).
FONT_SIZE = 12
CHAR_WIDTH = 7.3
LINE_HEIGHT = 15
PAD_X = 10
PAD_Y = 6
RANK_GAP = 40
NODE_GAP = 22
MARGIN = 16
DUMMY_WIDTH = 10

COLOURS = {
    "input": "#dbeafe",
    "output": "#dcfce7",
    "layer": "#f8fafc",
    "block": "#fef9c3",
}
ERROR_COLOUR = "#dc2626"
WARNING_COLOUR = "#d97706"
LINE_COLOUR = "#475569"


@dataclass
class Box:
    """One drawn node: a layer, an input, or a collapsed block call."""

    id: str
    lines: list[str]  # the first is the title (the layer's name)
    kind: str  # "input", "layer", "block"
    output: str | None = None  # the output name when the box makes a network output
    codes: list[str] = field(default_factory=list)  # diagnostic codes pointing here
    members: list[str] = field(default_factory=list)  # the layers a block box stands for
    call: str = ""  # a block box's call, as written

    @property
    def errors(self) -> bool:
        return any(c.startswith("E") for c in self.codes)

    @property
    def warnings(self) -> bool:
        return any(c.startswith("W") for c in self.codes)

    def text_lines(self) -> list[str]:
        out = list(self.lines)
        if self.output:
            out.append(f"output {self.output}")
        if self.codes:
            out.append(" ".join(self.codes))
        return out


@dataclass
class Picture:
    name: str
    boxes: dict  # id -> Box, in source order
    edges: list  # (source id, target id, label)
    notes: list = field(default_factory=list)  # diagnostics tied to no drawn box


# ---- what to draw ------------------------------------------------------------------------------

def picture(net: Network, blocks: bool = False, expand=()) -> Picture:
    """The boxes and edges of ``net``. With ``blocks``, each block call is one box with its
    totals, except the calls named in ``expand`` (by scope, as ``i3.inception1``, or by
    block name, as ``inception``), which are drawn layer by layer."""
    graph = net.graph
    expand = set(expand)
    group = {}
    for name in graph.nodes:
        node = net.nodes[name]
        group[name] = _group_of(node, expand) if blocks else None
    codes, notes = _codes_by_node(net)
    boxes: dict = {}
    outputs = {node: out for out, node in net.outputs.items()}
    for name in graph.nodes:
        node = net.nodes[name]
        key = group[name]
        if key is None:
            boxes[name] = _layer_box(node, outputs.get(name), codes.get(name, []))
            continue
        scope, block, span = key
        box = boxes.get(scope)
        if box is None:
            call = _span_text(net, span) or f"{block}(...)"
            box = boxes[scope] = Box(scope, [], "block", call=call)
        box.members.append(name)
        box.codes += [c for c in codes.get(name, []) if c not in box.codes]
        if name in outputs:
            box.output = outputs[name]
    for box in boxes.values():
        if box.kind == "block":
            _block_lines(net, box, graph)
    edges = []
    seen = set()
    for src, dst in graph.edges:
        a = group[src][0] if group[src] else src
        b = group[dst][0] if group[dst] else dst
        if a == b:
            continue
        label = shape_text(net.nodes[src].shape) if net.nodes[src].shape is not None else "?"
        if (a, b, label) not in seen:
            seen.add((a, b, label))
            edges.append((a, b, label))
    return Picture(net.name, boxes, edges, notes)


def plan_picture(plan) -> Picture:
    """A lowered plan drawn step by step: each step's name, primitive, output shape and
    parameter count (what a built model runs)."""
    boxes: dict = {}
    outputs = {buf: out for out, buf in plan.outputs.items()}
    shapes = dict(plan.inputs)
    for name, shape in plan.inputs.items():
        boxes[name] = Box(name, [name, f"input {shape_text(shape)}"], "input",
                          outputs.get(name))
    edges = []
    for step in plan.steps:
        op = step.op.value if hasattr(step.op, "value") else str(step.op)
        lines = [step.name, op, shape_text(step.shape)]
        params = 0
        for key in step.params:
            count = 1
            for d in plan.params.get(key, ()):
                count *= d
            params += count if key in plan.params else 0
        if params:
            lines.append(f"{params:,} params")
        boxes[step.name] = Box(step.name, lines, "layer", outputs.get(step.name))
        shapes[step.name] = step.shape
        for src in dict.fromkeys(step.inputs):
            edges.append((src, step.name, shape_text(shapes.get(src, ()))))
    return Picture(plan.network, boxes, edges)


_SCOPE_PART = "{block}(_)?[0-9]+"


def _scopes(node) -> list:
    """``(scope, block, call span)`` of each block call around ``node``, outermost first:
    the scope is the dotted name prefix the call opened (``i3.inception1``)."""
    parts = node.name.split(".")
    start = 0
    out = []
    for block, span in node.trace:
        pattern = re.compile(_SCOPE_PART.format(block=re.escape(block)))
        index = next((i for i in range(start, len(parts) - 1) if pattern.fullmatch(parts[i])),
                     None)
        if index is None:  # an explicit `as` name: group by the call site instead
            scope = f"{block}@{span.at() if span else '?'}"
        else:
            scope = ".".join(parts[:index + 1])
            start = index + 1
        out.append((scope, block, span))
    return out


def _group_of(node, expand: set):
    """``(scope, block, call span)`` of the outermost block call around ``node`` that is
    not expanded, or None when the node is drawn on its own."""
    for scope, block, span in _scopes(node):
        if scope in expand or block in expand:
            continue
        return scope, block, span
    return None


def block_calls(net: Network) -> dict:
    """Every block call's scope -> the block's name, in source order."""
    calls = {}
    for node in net.nodes.values():
        for scope, block, _ in _scopes(node):
            calls.setdefault(scope, block)
    return calls


def _codes_by_node(net: Network):
    """Diagnostic codes by node name (the node whose source span the diagnostic points at,
    narrowed to the block call its notes name); the rendered text of the rest."""
    by_start: dict = {}
    for node in net.nodes.values():
        if node.span is not None:
            by_start.setdefault((node.span.line, node.span.column), []).append(node)
    codes: dict = {}
    notes = []
    for d in net.diagnostics:
        found = by_start.get((d.span.line, d.span.column), []) if d.span else []
        calls = {m.group(1) for note in d.notes
                 for m in re.finditer(r"called at ([0-9]+:[0-9]+)", note)}
        if calls:
            narrowed = [n for n in found
                        if any(span is not None and span.at() in calls for _, span in n.trace)]
            found = narrowed or found
        if not found:
            where = f"{d.span.at()}: " if d.span else ""
            notes.append(f"{where}{d.severity}[{d.code}]: {d.message}")
            continue
        for node in found:
            codes.setdefault(node.name, [])
            if d.code not in codes[node.name]:
                codes[node.name].append(d.code)
    return codes, notes


def _layer_box(node, output, codes) -> Box:
    shape = shape_text(node.shape) if node.shape is not None else "shape unknown"
    if node.op == "input":
        return Box(node.name, [node.name, f"input {shape}"], "input", output, codes)
    lines = [node.name, layer_text(node), shape]
    params = node.param_count if node.params else 0
    if params:
        lines.append(f"{_count(params)} params")
    return Box(node.name, lines, "layer", output, codes)


def _block_lines(net, box: Box, graph) -> None:
    """A collapsed call's lines: its scope, the call, its output shape, its totals."""
    members = set(box.members)
    last = None
    made_outputs = set(net.outputs.values())
    for name in box.members:
        if name in made_outputs or any(dst not in members for dst in graph.successors(name)):
            last = name
    last = last or box.members[-1]
    shape = net.nodes[last].shape
    params = 0
    macs = 0
    for name in box.members:
        node = net.nodes[name]
        params = node.param_count + params
        macs = node.macs + macs
    layers = len(box.members)
    box.lines = [box.id, box.call, shape_text(shape) if shape is not None else "shape unknown",
                 f"{layers} layer{'s' * (layers != 1)}, {_count(params)} params, "
                 f"{_count(macs)} MACs"]


def _count(v) -> str:
    return f"{v:,}" if isinstance(v, int) else str(v)


def _span_text(net: Network, span) -> str:
    """The source text under ``span``, on one line, at most 48 characters."""
    if span is None or net.source is None:
        return ""
    lines = source_lines(net.source)
    if span.line > len(lines):
        return ""
    if span.line == span.end_line:
        text = lines[span.line - 1][span.column - 1:span.end_column - 1]
    else:
        text = " ".join([lines[span.line - 1][span.column - 1:]]
                        + [ln.strip() for ln in lines[span.line:span.end_line]])
    text = " ".join(text.split())
    return text if len(text) <= 48 else text[:45] + "..."


# ---- DOT ---------------------------------------------------------------------------------------

class MissingLibrary(RuntimeError):
    """An optional library a format needs is not installed; the message names the extra."""


def _require(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingLibrary(f"{what} needs the {module} package: pip install "
                             "'cnnc[graph]'") from None


def dot_source(pic: Picture) -> str:
    """The picture as Graphviz DOT, built with the graphviz library."""
    graphviz = _require("graphviz", "DOT output")

    g = graphviz.Digraph(pic.name, graph_attr={"rankdir": "TB", "fontname": "monospace",
                                              "fontsize": "12", "labelloc": "t"},
                         node_attr={"shape": "box", "style": "rounded,filled",
                                    "fontname": "monospace", "fontsize": "11"},
                         edge_attr={"fontname": "monospace", "fontsize": "9",
                                    "color": LINE_COLOUR})
    if pic.notes:
        g.attr(label="\\l".join(_dot_escape(n) for n in pic.notes) + "\\l")
    for box in pic.boxes.values():
        attrs = {"fillcolor": COLOURS["output"] if box.output else COLOURS[box.kind]}
        if box.kind == "block":
            attrs["peripheries"] = "2"
        if box.errors or box.warnings:
            attrs["color"] = ERROR_COLOUR if box.errors else WARNING_COLOUR
            attrs["penwidth"] = "2"
        label = "\\n".join(_dot_escape(line) for line in box.text_lines())
        g.node(box.id, label=label, **attrs)
    for src, dst, label in pic.edges:
        g.edge(src, dst, label=_dot_escape(label))
    return g.source


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\")


def find_dot() -> str | None:
    """The path of Graphviz's `dot` program, or None."""
    return shutil.which("dot")


# ---- the built-in layout -----------------------------------------------------------------------

@dataclass
class Layout:
    width: float
    height: float
    boxes: dict  # id -> (x, y, w, h), the top-left corner and the size
    edges: list  # (points [(x, y), ...], label, label position (x, y))
    notes_height: float = 0.0


def box_size(box: Box) -> tuple[float, float]:
    lines = box.text_lines()
    width = max(len(line) for line in lines) * CHAR_WIDTH + 2 * PAD_X
    height = len(lines) * LINE_HEIGHT + 2 * PAD_Y
    return width, height


def layout(pic: Picture) -> Layout:
    """Positions for every box and a path for every edge, top to bottom."""
    ids = list(pic.boxes)
    preds = {i: [] for i in ids}
    for src, dst, _ in pic.edges:
        preds[dst].append(src)
    rank = {}
    for i in _topological(ids, pic.edges):
        rank[i] = max((rank[p] + 1 for p in preds[i]), default=0)
    sizes = {i: box_size(pic.boxes[i]) for i in ids}
    first = {i: float(k) for k, i in enumerate(ids)}  # source order, dummies by their edge
    # long edges pass through one dummy point per rank they cross
    chains = []
    for index, (src, dst, label) in enumerate(pic.edges):
        chain = [src]
        for r in range(rank[src] + 1, rank[dst]):
            dummy = ("dummy", index, r)
            rank[dummy] = r
            sizes[dummy] = (DUMMY_WIDTH, 0.0)
            first[dummy] = first[src] + 0.5
            chain.append(dummy)
        chain.append(dst)
        chains.append((chain, label))
    up = {n: [] for n in rank}
    down = {n: [] for n in rank}
    for chain, _ in chains:
        for a, b in zip(chain, chain[1:]):
            down[a].append(b)
            up[b].append(a)
    ranks = _order(rank, first, up, down)
    x = _place(ranks, sizes, up, down)
    # rows
    notes_height = len(pic.notes) * LINE_HEIGHT + (PAD_Y if pic.notes else 0)
    y = {}
    top = MARGIN + notes_height
    row_top = []
    for row in ranks:
        height = max((sizes[n][1] for n in row), default=0.0)
        row_top.append((top, height))
        for n in row:
            y[n] = top + (height - sizes[n][1]) / 2
        top += height + RANK_GAP
    boxes = {i: (x[i], y[i], sizes[i][0], sizes[i][1]) for i in ids}
    centre = {n: x[n] + sizes[n][0] / 2 for n in x}
    edges = []
    for chain, label in chains:
        first, second, before, last = chain[0], chain[1], chain[-2], chain[-1]
        points = [(_port(first, second, down, centre, sizes), y[first] + sizes[first][1])]
        for n in chain[1:-1]:
            r_top, r_height = row_top[rank[n]]
            points.append((x[n] + DUMMY_WIDTH / 2, r_top))
            points.append((x[n] + DUMMY_WIDTH / 2, r_top + r_height))
        points.append((_port(last, before, up, centre, sizes), y[last]))
        # the label beside the edge where it is clear of the others: halfway down its
        # first stretch, lower where the source fans out, higher where the target gathers
        # several edges
        (x0, y0), (x1, y1) = points[0], points[1]
        t = 0.5
        if len(down[first]) > 1:
            t = 0.75
        elif len(up[last]) > 1 and len(chain) == 2:
            t = 0.3
        lx, ly = _on_curve(x0, y0, x1, y1, t)
        edges.append((points, label, (lx + 4, ly + 4)))
    right = max([bx + bw for bx, _, bw, _ in boxes.values()] + [0.0])
    right = max(right, max((len(n) * CHAR_WIDTH for n in pic.notes), default=0.0) + MARGIN)
    for points, label, (lx, _) in edges:
        right = max(right, lx + len(label) * 6)
    return Layout(right + MARGIN, top - RANK_GAP + MARGIN, boxes, edges, notes_height)


def _port(node, other, links: dict, centre: dict, sizes: dict) -> float:
    """Where on ``node``'s bottom (or top) edge the edge to (or from) ``other`` attaches:
    the middle for a single edge; several spread over the middle half of the box, in the
    order of the nodes at their other ends, so that they do not cross there."""
    ends = sorted(dict.fromkeys(links[node]), key=lambda m: centre[m])
    if len(ends) < 2:
        return centre[node]
    width = sizes[node][0] / 2
    left = centre[node] - width / 2
    return left + width * ends.index(other) / (len(ends) - 1)


def _on_curve(xa, ya, xb, yb, t: float) -> tuple:
    """The point at ``t`` of the curve `_path` draws from (xa, ya) to (xb, yb)."""
    u = 1 - t
    mid = (ya + yb) / 2
    x = (u ** 3 + 3 * u * u * t) * xa + (3 * u * t * t + t ** 3) * xb
    y = u ** 3 * ya + (3 * u * u * t + 3 * u * t * t) * mid + t ** 3 * yb
    return x, y


def _topological(ids: list, edges: list) -> list:
    """``ids`` in an order where every edge goes forward, ties kept in source order."""
    import networkx as nx

    g = nx.DiGraph()
    g.add_nodes_from(ids)
    g.add_edges_from((src, dst) for src, dst, _ in edges)
    position = {i: k for k, i in enumerate(ids)}
    return list(nx.lexicographical_topological_sort(g, key=position.__getitem__))


def _order(rank: dict, first: dict, up: dict, down: dict, sweeps: int = 6) -> list:
    """Nodes by rank, each rank ordered to cut crossings: barycentres of the neighbours in
    the rank above (going down) and below (going up), in turn; ``first`` orders them at
    the start."""
    count = max(rank.values(), default=-1) + 1
    ranks = [[] for _ in range(count)]
    for n in sorted(rank, key=lambda n: first[n]):
        ranks[rank[n]].append(n)
    for sweep in range(sweeps):
        going_down = sweep % 2 == 0
        rows = range(1, count) if going_down else range(count - 2, -1, -1)
        for r in rows:
            neighbour_row = ranks[r - 1] if going_down else ranks[r + 1]
            where = {n: k for k, n in enumerate(neighbour_row)}
            links = up if going_down else down
            current = {n: k for k, n in enumerate(ranks[r])}

            def key(n, where=where, links=links, current=current):
                near = [where[m] for m in links[n] if m in where]
                return sum(near) / len(near) if near else current[n]

            ranks[r].sort(key=key)
    return ranks


def _place(ranks: list, sizes: dict, up: dict, down: dict, passes: int = 8) -> dict:
    """Left edges: each node as near as its order allows to the mean centre of its
    neighbours, rank by rank, downwards and upwards in turn."""
    x = {}
    for row in ranks:
        left = 0.0
        for n in row:
            x[n] = left
            left += sizes[n][0] + NODE_GAP
    for sweep in range(passes):
        going_down = sweep % 2 == 0
        rows = ranks[1:] if going_down else list(reversed(ranks[:-1]))
        links = up if going_down else down
        for row in rows:
            desired = []
            for n in row:
                near = [x[m] + sizes[m][0] / 2 for m in links[n]]
                centre = sum(near) / len(near) if near else x[n] + sizes[n][0] / 2
                desired.append(centre)
            for n, left in zip(row, _fit(row, sizes, desired)):
                x[n] = left
    low = min(x.values(), default=0.0)
    return {n: v - low + MARGIN for n, v in x.items()}


def _fit(row: list, sizes: dict, desired: list) -> list:
    """Left edges in ``row``'s order, ``NODE_GAP`` apart at least, whose centres are
    nearest (least squares) to ``desired``: neighbours that would overlap move as a
    cluster to their mean."""
    clusters = []  # [items, offsets, width]
    for k, n in enumerate(row):
        width = sizes[n][0]
        cluster = {"items": [k], "offsets": [0.0], "width": width}
        cluster["left"] = desired[k] - width / 2
        clusters.append(cluster)
        while len(clusters) > 1:
            prev, cur = clusters[-2], clusters[-1]
            if prev["left"] + prev["width"] + NODE_GAP <= cur["left"]:
                break
            shift = prev["width"] + NODE_GAP
            prev["items"] += cur["items"]
            prev["offsets"] += [o + shift for o in cur["offsets"]]
            prev["width"] = shift + cur["width"]
            targets = [desired[i] - sizes[row[i]][0] / 2 - o
                       for i, o in zip(prev["items"], prev["offsets"])]
            prev["left"] = sum(targets) / len(targets)
            clusters.pop()
    lefts = [0.0] * len(row)
    for cluster in clusters:
        for i, o in zip(cluster["items"], cluster["offsets"]):
            lefts[i] = cluster["left"] + o
    return lefts


# ---- SVG, PNG, PDF from the built-in layout --------------------------------------------------

def svg_text(pic: Picture, lay: Layout | None = None) -> str:
    """A standalone SVG document of the picture."""
    lay = lay or layout(pic)
    w, h = lay.width, lay.height
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0f}" height="{h:.0f}" '
        f'viewBox="0 0 {w:.0f} {h:.0f}" font-family="DejaVu Sans Mono, Menlo, Consolas, '
        f'monospace" font-size="{FONT_SIZE}">',
        f"<title>{escape(pic.name)}</title>",
        "<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" "
        "markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\">"
        f"<path d=\"M0,0 L10,5 L0,10 z\" fill=\"{LINE_COLOUR}\"/></marker></defs>",
        f'<rect width="{w:.0f}" height="{h:.0f}" fill="white"/>',
    ]
    for k, note in enumerate(pic.notes):
        out.append(f'<text x="{MARGIN}" y="{MARGIN + (k + 1) * LINE_HEIGHT - 3}" '
                   f'fill="{ERROR_COLOUR}">{escape(note)}</text>')
    for points, label, (lx, ly) in lay.edges:
        out.append(f'<g class="edge"><path d="{_path(points)}" fill="none" '
                   f'stroke="{LINE_COLOUR}" stroke-width="1.2" marker-end="url(#arrow)"/>'
                   f'<text x="{lx:.1f}" y="{ly:.1f}" font-size="10" fill="#64748b">'
                   f"{escape(label)}</text></g>")
    for box_id, (x, y, bw, bh) in lay.boxes.items():
        box = pic.boxes[box_id]
        fill = COLOURS["output"] if box.output else COLOURS[box.kind]
        stroke, width = LINE_COLOUR, 1
        if box.errors or box.warnings:
            stroke, width = (ERROR_COLOUR if box.errors else WARNING_COLOUR), 2.5
        out.append(f'<g class="node {box.kind}" id={quoteattr("node-" + box_id)}>'
                   f"<title>{escape(box_id)}</title>")
        out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw:.1f}" height="{bh:.1f}" '
                   f'rx="6" fill="{fill}" stroke="{stroke}" stroke-width="{width}"/>')
        if box.kind == "block":
            out.append(f'<rect x="{x + 3:.1f}" y="{y + 3:.1f}" width="{bw - 6:.1f}" '
                       f'height="{bh - 6:.1f}" rx="4" fill="none" stroke="{stroke}" '
                       'stroke-width="0.8"/>')
        for k, line in enumerate(box.text_lines()):
            ty = y + PAD_Y + (k + 1) * LINE_HEIGHT - 3
            style = ' font-weight="bold"' if k == 0 else ""
            if box.codes and k == len(box.text_lines()) - 1:
                style = f' font-weight="bold" fill="{stroke}"'
            out.append(f'<text x="{x + PAD_X:.1f}" y="{ty:.1f}"{style}>{escape(line)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _path(points: list) -> str:
    """A smooth path through ``points``: vertical tangents at each one."""
    (x0, y0) = points[0]
    parts = [f"M{x0:.1f},{y0:.1f}"]
    for (xa, ya), (xb, yb) in zip(points, points[1:]):
        if xa == xb:
            parts.append(f"L{xb:.1f},{yb:.1f}")
            continue
        mid = (ya + yb) / 2
        parts.append(f"C{xa:.1f},{mid:.1f} {xb:.1f},{mid:.1f} {xb:.1f},{yb:.1f}")
    return " ".join(parts)


def raster(pic: Picture, scale: float = 1.5):
    """A Pillow image of the picture, drawn from the built-in layout."""
    _require("PIL", "PNG and PDF pictures without Graphviz")
    from PIL import Image, ImageDraw, ImageFont

    lay = layout(pic)
    image = Image.new("RGB", (int(lay.width * scale) + 1, int(lay.height * scale) + 1), "white")
    draw = ImageDraw.Draw(image)
    font = _font(ImageFont, FONT_SIZE * scale)
    bold = _font(ImageFont, FONT_SIZE * scale, bold=True)
    small = _font(ImageFont, 10 * scale)
    for k, note in enumerate(pic.notes):
        draw.text((MARGIN * scale, (MARGIN + k * LINE_HEIGHT) * scale), note, font=font,
                  fill=ERROR_COLOUR)
    for points, label, (lx, ly) in lay.edges:
        flat = []
        for (xa, ya), (xb, yb) in zip(points, points[1:]):
            flat += _curve(xa, ya, xb, yb)
        draw.line([(px * scale, py * scale) for px, py in flat], fill=LINE_COLOUR,
                  width=max(1, int(scale)))
        (xa, ya), (xb, yb) = flat[-2], flat[-1]
        draw.polygon(_arrow_head(xa, ya, xb, yb, scale), fill=LINE_COLOUR)
        draw.text((lx * scale, (ly - 10) * scale), label, font=small, fill="#64748b")
    for box_id, (x, y, bw, bh) in lay.boxes.items():
        box = pic.boxes[box_id]
        fill = COLOURS["output"] if box.output else COLOURS[box.kind]
        stroke, width = LINE_COLOUR, 1
        if box.errors or box.warnings:
            stroke, width = (ERROR_COLOUR if box.errors else WARNING_COLOUR), 3
        draw.rounded_rectangle([x * scale, y * scale, (x + bw) * scale, (y + bh) * scale],
                               radius=6 * scale, fill=fill, outline=stroke,
                               width=max(1, int(width * scale / 1.5)))
        lines = box.text_lines()
        for k, line in enumerate(lines):
            colour = stroke if box.codes and k == len(lines) - 1 else "black"
            draw.text(((x + PAD_X) * scale, (y + PAD_Y + k * LINE_HEIGHT) * scale), line,
                      font=bold if k == 0 else font, fill=colour)
    return image


def _font(image_font, size: float, bold: bool = False):
    names = ("DejaVuSansMono-Bold.ttf",) if bold else ("DejaVuSansMono.ttf",)
    for name in names:
        try:
            return image_font.truetype(name, int(size))
        except OSError:
            pass
    return image_font.load_default(size=int(size))


def _curve(xa, ya, xb, yb, steps: int = 12) -> list:
    if xa == xb:
        return [(xa, ya), (xb, yb)]
    mid = (ya + yb) / 2
    out = []
    for k in range(steps + 1):
        t = k / steps
        u = 1 - t
        px = u ** 3 * xa + 3 * u * u * t * xa + 3 * u * t * t * xb + t ** 3 * xb
        py = u ** 3 * ya + 3 * u * u * t * mid + 3 * u * t * t * mid + t ** 3 * yb
        out.append((px, py))
    return out


def _arrow_head(xa, ya, xb, yb, scale):
    import math

    angle = math.atan2(yb - ya, xb - xa)
    size = 7
    left = (xb - size * math.cos(angle - 0.4), yb - size * math.sin(angle - 0.4))
    right = (xb - size * math.cos(angle + 0.4), yb - size * math.sin(angle + 0.4))
    return [(xb * scale, yb * scale), (left[0] * scale, left[1] * scale),
            (right[0] * scale, right[1] * scale)]


# ---- rendering ---------------------------------------------------------------------------------

class DotMissing(RuntimeError):
    """``dot`` was asked for and is not installed; the message says how to get it."""


def render(pic: Picture, fmt: str, engine: str = "auto") -> bytes:
    """The picture as ``fmt`` (svg, png, pdf or dot). ``engine``: ``dot`` (Graphviz's
    program; DotMissing without it), ``builtin`` (the layout here), or ``auto`` (``dot``
    where installed)."""
    if fmt == "dot":
        return dot_source(pic).encode("utf-8")
    use_dot = engine == "dot" or (engine == "auto" and find_dot() is not None)
    if use_dot:
        if find_dot() is None:
            raise DotMissing(DOT_MISSING)
        graphviz = _require("graphviz", "drawing with Graphviz's dot")
        return graphviz.Source(dot_source(pic)).pipe(format=fmt)
    if fmt == "svg":
        return svg_text(pic).encode("utf-8")
    import io

    buffer = io.BytesIO()
    image = raster(pic)
    if fmt == "png":
        image.save(buffer, format="PNG", optimize=True)
    else:
        image.save(buffer, format="PDF", resolution=108.0)
    return buffer.getvalue()
