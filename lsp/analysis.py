"""One checked version of a document: the network `cnnc check` builds from its text (with the
same diagnostics), its syntax tree and the index of its names (`index.py`).

Nothing here knows the protocol: positions are the checker's spans (lines and columns from
1, the end exclusive); `server.py` turns them into the editor's.
"""

from __future__ import annotations

import re

from ..compiler.check import check_source
from ..dsl import syntax as ast
from ..dsl.diagnostics import Diagnostic, Span, source_lines
from ..dsl.parser import parse
from . import index as names

# "from conv(c, 3, stride=2, pad=1) at 8:23", "in block `reduce` called at 13:51",
# "first defined at 3:5": a note that points at another place in the file.
AT = re.compile(r"\bat (\d+):(\d+)\b")
WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Analysis:
    """``text`` checked as ``file``: ``network`` (never None), ``module`` (None when the
    text does not parse), ``index`` (empty then), ``lines`` as the checker counts them.
    The tree and the index are made on first use: diagnostics need only the check."""

    def __init__(self, text: str, file: str = "<input>", sizes: dict | None = None):
        self.text = text
        self.file = file
        self.sizes = sizes
        self.lines = source_lines(text)
        self.network = check_source(text, file, sizes)
        self._module = getattr(self.network, "syntax", None)
        self._index = None

    @property
    def module(self) -> ast.Module | None:
        """The syntax tree: the one the check made, where the network keeps it, else the
        text parsed again, on first use (publishing diagnostics needs none). None after a
        syntax error."""
        if self._module is None and not _syntax_error(self.network.diagnostics):
            self._module, _ = parse(self.text, self.file)
        return self._module

    @property
    def index(self) -> names.Index:
        """The names of the text and where they are used (empty after a syntax error)."""
        if self._index is None:
            module = self.module
            self._index = names.build(module) if module is not None else names.Index()
        return self._index

    @property
    def diagnostics(self) -> list[Diagnostic]:
        return self.network.diagnostics

    # ---- places -------------------------------------------------------------------------------
    def word_span(self, line: int, column: int) -> Span:
        """The name at (line, column), or a one-character span there when there is none."""
        if 1 <= line <= len(self.lines):
            text = self.lines[line - 1]
            for m in WORD.finditer(text):
                if m.start() + 1 <= column <= m.end():
                    return Span(line, m.start() + 1, line, m.end() + 1)
        return Span(line, column, line, column + 1)

    def place(self, line: int, column: int) -> Span:
        """The span a note's "at LINE:COLUMN" points at: the layer call or merge of the
        network starting there, else the name there."""
        for node in self.network.nodes.values():
            span = node.span
            if span is not None and span.line == line and span.column == column:
                return span
        return self.word_span(line, column)

    def related(self, diag: Diagnostic) -> list[tuple[Span, str]]:
        """The places a diagnostic's notes point at, each with its note."""
        out = []
        for note in diag.notes:
            for m in AT.finditer(note):
                line, column = int(m.group(1)), int(m.group(2))
                if 1 <= line <= len(self.lines):
                    out.append((self.place(line, column), note))
        return out

    def text_of(self, span: Span) -> str:
        """The source text of a span (several lines joined by newlines)."""
        if span.line == span.end_line:
            return self.lines[span.line - 1][span.column - 1: span.end_column - 1]
        parts = [self.lines[span.line - 1][span.column - 1:]]
        parts += self.lines[span.line: span.end_line - 1]
        parts.append(self.lines[span.end_line - 1][: span.end_column - 1])
        return "\n".join(parts)

    # ---- the network behind the text ----------------------------------------------------------
    def nodes_of_call(self, call: ast.Call | ast.Merge) -> list:
        """The network's nodes made by a layer call or merge: one per block instance it is
        expanded in (and per repeat)."""
        return [n for n in self.network.nodes.values() if n.span == call.span]

    def nodes_in_block_call(self, call: ast.Call) -> list:
        """The nodes a block call expands to (every instance, every repeat), in order."""
        key = (call.name, call.span)
        return [n for n in self.network.nodes.values() if key in n.trace]

    def tensor_nodes(self, definition: names.Definition) -> list:
        """The nodes whose output a tensor name stands for: an input's node, or the last
        node of the chain a binding or output names (one per instance inside a block)."""
        if definition.kind == "input":
            node = self.network.nodes.get(definition.name)
            return [node] if node is not None else []
        stmt = definition.node
        chain = getattr(stmt, "chain", None)
        if chain is None:
            return []
        return self.chain_result(chain)

    def chain_result(self, chain: ast.Chain) -> list:
        if not chain.stages:
            start = chain.start
            if isinstance(start, ast.Merge):
                return self.nodes_of_call(start)
            target = next((r.target for r in self.index.references
                           if r.span == start.span and r.target is not None), None)
            return self.tensor_nodes(target) if target is not None else []
        call = chain.stages[-1].call
        if call.name in self.index.blocks:
            return last_per_instance(self.nodes_in_block_call(call), call)
        nodes = self.nodes_of_call(call)
        repeat = chain.stages[-1].repeat
        if repeat is not None and nodes:
            return [nodes[-1]] if not nodes[-1].trace else ends_of_repeats(nodes)
        return nodes


def _syntax_error(diagnostics) -> bool:
    """Whether the check stopped before (or at) parsing: a syntax error, or a file refused
    as too large (E220), which is not worth parsing again."""
    return any(d.code.startswith("E1") or d.code == "E220" for d in diagnostics)


def last_per_instance(nodes: list, call: ast.Call) -> list:
    """The last node of each instance of a block call: an instance ends where the next
    node's trace up to this call differs (another enclosing instance)."""
    key = (call.name, call.span)
    out = []
    previous = None
    for node in nodes:
        prefix = node.trace[: node.trace.index(key) + 1]
        if previous is not None and prefix != previous[0]:
            out.append(previous[1])
        previous = (prefix, node)
    if previous is not None:
        out.append(previous[1])
    return out


def ends_of_repeats(nodes: list) -> list:
    """The last of each run of nodes sharing one trace (a repeated layer in a block)."""
    out = []
    for i, node in enumerate(nodes):
        if i + 1 == len(nodes) or nodes[i + 1].trace != node.trace:
            out.append(node)
    return out
