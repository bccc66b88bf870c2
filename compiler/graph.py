"""The checked network: layer nodes in source order, and their networkx graph.

Nodes are kept in a plain ordered dict while the checker builds them (that is all `cnnc
check` needs, and it keeps the command fast); `Network.graph` builds the networkx `DiGraph`
on first use, importing networkx only then, for the passes that work on the graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..dsl.diagnostics import Diagnostic, Span, render, source_lines


@dataclass
class Node:
    name: str  # the stable dotted name of spec section 5
    op: str  # a layer kind, "input", "concat" or "add"
    args: dict  # resolved arguments, defaults filled in
    inputs: list[str]  # names of the nodes feeding this one
    span: Span | None
    text: str  # the source text of the call, e.g. "conv(64, 1)"
    trace: tuple = ()  # block instantiations, outermost first: (block, call span)
    shape: tuple | None = None  # per-sample output shape; None when it could not be known
    params: dict = field(default_factory=dict)  # trainable: name -> shape
    buffers: dict = field(default_factory=dict)  # running statistics: name -> shape
    macs: object = 0

    @property
    def param_count(self):
        total = 0
        for shape in self.params.values():
            count = 1
            for d in shape:
                count = d * count
            total = count + total
        return total

    def where(self) -> str:
        return self.span.at() if self.span else "?"

    def describe(self) -> str:
        return f"{self.text} at {self.where()}"


# How a Network shows itself in a notebook: ``compiler/display.py`` fills this in when it
# is imported (the public API imports it). This module cannot import it: the summary and
# the picture that display draws are built on this module.
NOTEBOOK: dict = {}


@dataclass
class Network:
    name: str
    file: str
    nodes: dict[str, Node] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)  # output name -> node name
    diagnostics: list[Diagnostic] = field(default_factory=list)
    symbols: list[str] = field(default_factory=list)  # size symbols still free
    valid_sizes: list = field(default_factory=list)  # symbolic.ValidSet per symbol
    conditions: list = field(default_factory=list)  # symbolic.Condition not yet decided
    # The checked text (None when the bytes were not UTF-8): what the spans point into.
    source: str | None = field(default=None, repr=False)
    # The parsed `dsl.syntax.Module` (None after a syntax error), for tools that need the
    # text's structure as well as its meaning: the language server, the formatter.
    syntax: object = field(default=None, repr=False, compare=False)
    _graph: object = None

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def render(self, diagnostics=None) -> str:
        """The diagnostics (all of them by default) drawn as `cnnc check` prints them,
        against the checked source, separated by blank lines."""
        lines = source_lines(self.source) if self.source is not None else None
        chosen = self.diagnostics if diagnostics is None else diagnostics
        return "\n\n".join(render(d, lines) for d in chosen)

    @property
    def layers(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.op != "input"]

    def _repr_svg_(self):
        """The picture in a notebook; None when nothing was built (or before
        compiler/display.py is imported)."""
        render = NOTEBOOK.get("svg")
        return render(self) if render is not None else None

    def _repr_html_(self):
        """The summary table and the picture in a notebook."""
        render = NOTEBOOK.get("html")
        return render(self) if render is not None else None

    @property
    def graph(self):
        """The networkx DiGraph: one node per layer with its attributes, an edge per input."""
        if self._graph is None:
            import networkx as nx

            g = nx.DiGraph(name=self.name)
            for node in self.nodes.values():
                g.add_node(
                    node.name,
                    op=node.op,
                    args=node.args,
                    span=node.span,
                    trace=node.trace,
                    shape=node.shape,
                    node=node,
                )
                for index, src in enumerate(node.inputs):
                    if g.has_edge(src, node.name):  # concat(a, a): one edge, two slots
                        g.edges[src, node.name]["slots"].append(index)
                    else:
                        g.add_edge(src, node.name, slots=[index])
            self._graph = g
        return self._graph
