"""Hover texts (Markdown): what the checker knows about the thing under the cursor.

- a layer call: its dotted name, the call with its resolved arguments, input and output
  shape, parameters and MACs; inside a block, one row per instance the block is expanded in;
- a block call: what it expands to (layers by kind), its output shape and its totals;
- a merge: its inputs' and output's shapes;
- a tensor name: the shape it stands for; a `let` constant or a parameter: its definition;
- a block's name where it is defined: its signature and how often it is called.

Symbolic sizes show as the expressions the checker keeps (``[64, (H - 1)//2 + 1, ...]``).
"""

from __future__ import annotations

from collections import Counter

from ..compiler.summary import layer_text
from ..compiler.symbolic import is_concrete, shape_text
from ..dsl import syntax as ast
from ..dsl.diagnostics import Span
from ..ops import LAYERS, MERGES
from ..ops.base import REQUIRED
from .analysis import Analysis, last_per_instance
from .index import Definition, Reference, contains

MAX_ROWS = 16  # instances listed in a hover; the rest are summed up


def hover(analysis: Analysis, line: int, column: int) -> tuple[str, Span] | None:
    """The Markdown hover text at (line, column), 1-based, and the span it is about."""
    index = analysis.index
    item = index.at(line, column)
    if isinstance(item, Reference) and item.kind == "call":
        call = index.call_at(line, column)
        if call is not None and call.name_span == item.span:
            return call_hover(analysis, call), call.span
    if isinstance(item, Reference) and item.kind == "in":
        return in_hover(analysis, item), item.span
    if isinstance(item, Reference) and item.target is not None:
        return definition_hover(analysis, item.target), item.span
    if isinstance(item, Definition):
        return definition_hover(analysis, item), item.span
    for merge in index.merges:
        if contains(merge.name_span, line, column):
            return merge_hover(analysis, merge), merge.span
    call = index.call_at(line, column)
    if call is not None:  # on an argument or a word in one: the call it belongs to
        return call_hover(analysis, call), call.span
    return None


# ---- calls --------------------------------------------------------------------------------

def call_hover(analysis: Analysis, call: ast.Call) -> str:
    if call.name in analysis.index.blocks:
        return block_call_hover(analysis, call)
    layer = LAYERS.get(call.name)
    if layer is None:
        return f"`{call.name}`: no layer or block has this name"
    head = f"**{call.name}** ({layer.doc})" if layer.doc else f"**{call.name}**"
    lines = [head, ""]
    if layer.args:
        lines += [f"`{signature(call.name)}`", ""]
    nodes = analysis.nodes_of_call(call)
    if not nodes:
        lines.append("not built: see the diagnostics")
    elif len(nodes) == 1:
        lines += node_lines(analysis, nodes[0])
    else:
        lines += instance_table(analysis, nodes)
    return "\n".join(lines).rstrip()


def node_lines(analysis: Analysis, node) -> list[str]:
    lines = [f"`{node.name}` = {layer_text(node)}", ""]
    inputs = [analysis.network.nodes[i] for i in node.inputs if i in analysis.network.nodes]
    if inputs:
        lines.append(f"- input: {' + '.join(shape(n.shape) for n in inputs)}")
    lines.append(f"- output: {shape(node.shape)}")
    if node.params:
        parts = ", ".join(f"{key} {shape(s)}" for key, s in node.params.items())
        lines.append(f"- parameters: {number(node.param_count)} ({parts})")
    else:
        lines.append("- parameters: 0")
    lines.append(f"- MACs: {number(node.macs)}")
    return lines


def instance_table(analysis: Analysis, nodes: list) -> list[str]:
    blocks = list(dict.fromkeys(n.trace[-1][0] for n in nodes if n.trace))
    where = f" of block `{blocks[0]}`" if len(blocks) == 1 else ""
    lines = [f"{len(nodes)} instances{where}:", "",
             "| layer | call | output | parameters | MACs |", "|---|---|---|--:|--:|"]
    for node in nodes[:MAX_ROWS]:
        lines.append(f"| `{node.name}` | {layer_text(node)} | {shape(node.shape)} | "
                     f"{number(node.param_count)} | {number(node.macs)} |")
    if len(nodes) > MAX_ROWS:
        lines.append(f"| ... {len(nodes) - MAX_ROWS} more | | | | |")
    params, macs = totals(nodes)
    lines.append(f"| **total** | | | {number(params)} | {number(macs)} |")
    return lines


def block_call_hover(analysis: Analysis, call: ast.Call) -> str:
    block = analysis.index.blocks[call.name]
    lines = [f"**block {call.name}**", "", f"`{block_signature(analysis, block.node)}`", ""]
    nodes = analysis.nodes_in_block_call(call)
    if not nodes:
        lines.append("not expanded: see the diagnostics")
        return "\n".join(lines)
    layers = [n for n in nodes if n.op != "input"]
    kinds = Counter(n.op for n in layers)
    parts = ", ".join(f"{op} ×{count}" if count > 1 else op for op, count in kinds.items())
    calls = {n.trace[: n.trace.index((call.name, call.span)) + 1] for n in nodes}
    ends = last_per_instance(nodes, call)
    instances = max(len(calls), len(ends))
    several = f" (over {instances} instances)" if instances > 1 else ""
    lines.append(f"expands to {len(layers)} layers{several}: {parts}")
    lines.append("")
    first = nodes[0]
    inputs = [analysis.network.nodes[i] for i in first.inputs
              if i in analysis.network.nodes and not _inside(analysis, i, call)]
    if inputs:
        lines.append(f"- input: {shape(inputs[0].shape)}")
    outs = list(dict.fromkeys(shape(n.shape) for n in ends))
    lines.append(f"- output: {' or '.join(outs)}")
    params, macs = totals(layers)
    lines.append(f"- parameters: {number(params)}")
    lines.append(f"- MACs: {number(macs)}")
    lines.append(f"- first layer `{first.name}`, last `{nodes[-1].name}`")
    return "\n".join(lines)


def _inside(analysis: Analysis, name: str, call: ast.Call) -> bool:
    node = analysis.network.nodes[name]
    return (call.name, call.span) in node.trace


def merge_hover(analysis: Analysis, merge: ast.Merge) -> str:
    rule = MERGES.get(merge.op)
    head = f"**{merge.op}** ({rule.doc})" if rule is not None and rule.doc else f"**{merge.op}**"
    lines = [head, ""]
    nodes = analysis.nodes_of_call(merge)
    for node in nodes[:MAX_ROWS]:
        inputs = [analysis.network.nodes[i] for i in node.inputs]
        ins = ", ".join(shape(n.shape) for n in inputs)
        lines.append(f"- `{node.name}`: {ins} -> {shape(node.shape)}")
    if len(nodes) > MAX_ROWS:
        lines.append(f"- ... {len(nodes) - MAX_ROWS} more")
    return "\n".join(lines)


# ---- names --------------------------------------------------------------------------------

def in_hover(analysis: Analysis, ref: Reference) -> str:
    """`in`: the block's input, in every instance (read off the layers that take it)."""
    chain = ref.chain
    start = chain.start
    readers: list = []  # (node, which of its inputs is `in`)
    if isinstance(start, ast.Merge):
        slot = next(i for i, src in enumerate(start.sources) if src.span == ref.span)
        readers = [(node, slot) for node in analysis.nodes_of_call(start)]
    elif chain.stages:
        call = chain.stages[0].call
        if call.name in analysis.index.blocks:
            key = (call.name, call.span)
            firsts = {}
            for node in analysis.nodes_in_block_call(call):  # the first node per instance
                firsts.setdefault(node.trace[: node.trace.index(key) + 1], node)
            readers = [(node, 0) for node in firsts.values()]
        else:
            readers = [(node, 0) for node in analysis.nodes_of_call(call)]
    nodes = analysis.network.nodes
    shapes = [shape(nodes[node.inputs[slot]].shape) for node, slot in readers
              if slot < len(node.inputs) and node.inputs[slot] in nodes]
    text = "`in`: the block's input"
    if shapes:
        text += ": " + " or ".join(dict.fromkeys(shapes))
    return text


def definition_hover(analysis: Analysis, d: Definition) -> str:
    if d.kind == "block":
        calls = [c for c in analysis.index.calls if c.name == d.name]
        said = f"called {len(calls)} time{'s' * (len(calls) != 1)}"
        return f"**block {d.name}** ({said})\n\n`{block_signature(analysis, d.node)}`"
    if d.kind == "let":
        where = f" in block `{d.block.name}`" if d.block is not None else ""
        return f"constant{where} (line {d.span.line})\n\n`{analysis.text_of(d.whole)}`"
    if d.kind == "param":
        default = "" if d.node.default is None else " = " + analysis.text_of(d.node.default.span)
        return f"parameter `{d.name}{default}` of block `{d.block.name}`"
    what = {"input": "input", "binding": "tensor", "output": "output"}[d.kind]
    nodes = analysis.tensor_nodes(d)
    shapes = list(dict.fromkeys(shape(n.shape) for n in nodes))
    text = f"{what} `{d.name}` (line {d.span.line})"
    if d.block is not None:
        text += f" in block `{d.block.name}`"
    if shapes:
        text += ": " + " or ".join(shapes)
    if len(nodes) == 1 and nodes[0].op != "input":
        text += f", from `{nodes[0].name}`"
    return text


# ---- words --------------------------------------------------------------------------------

def signature(op: str) -> str:
    """``conv(out, kernel, stride=1, pad=0, dilation=1, groups=1, bias=true)``."""
    layer = LAYERS[op]
    parts = []
    for spec in layer.args:
        if spec.default is REQUIRED:
            parts.append(spec.name)
        else:
            parts.append(f"{spec.name}={default_text(spec)}")
    return f"{op}({', '.join(parts)})" if parts else op


def default_text(spec) -> str:
    value = spec.default
    if value is None:
        return "kernel" if spec.name == "stride" else "none"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def block_signature(analysis: Analysis, block: ast.BlockDef) -> str:
    """``block inception(c1, c3r, c3, c5r, c5, pp)``, defaults as written."""
    parts = []
    for param in block.params:
        if param.default is None:
            parts.append(param.name)
        else:
            parts.append(f"{param.name}={analysis.text_of(param.default.span)}")
    return f"block {block.name}({', '.join(parts)})"


def shape(value) -> str:
    return "?" if value is None else shape_text(value)


def number(value) -> str:
    return f"{value:,}" if is_concrete(value) else str(value)


def totals(nodes) -> tuple:
    params = 0
    macs = 0
    for node in nodes:
        params = node.param_count + params
        macs = node.macs + macs
    return params, macs
