"""Name resolution and layer naming: what a name means in a chain (a tensor, a constant, a
block, a layer), duplicate and unknown names, and the stable dotted names of spec section 5."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ...dsl import syntax as ast
from ...dsl.diagnostics import Span, foreign_name
from ...ops import FOREIGN_NAMES, LAYERS, MERGES
from ..graph import Network, Node
from .report import Reporter, did_you_mean_help
from .values import Word, listing, show

MAX_BLOCK_DEPTH = 64
MAX_LAYERS = 1_000_000  # a file that expands past this is refused (E220), not run out of memory


@dataclass
class Tensor:
    node: str | None  # the node producing it; None when it could not be built
    span: Span  # where the name was bound
    kind: str  # input | binding | output | in


@dataclass(frozen=True)
class Claimant:
    """Who claims a dotted name, in words (``binding `fire1` at 3:5``), and how to rename it
    (``rename the binding `fire1```; None where it cannot be renamed)."""

    what: str
    fix: str | None


def node_claimant(node: Node, kind: str) -> Claimant:
    """A node as the claimant of its name: what it is and how to rename it."""
    if kind == "merge":
        return Claimant(f"merge {node.describe()}", None)
    if kind == "alias":
        return Claimant(f"layer {node.describe()}", "choose another name after `as`")
    if kind == "input":
        return Claimant(f"input `{node.name}` at {node.where()}",
                        f"rename the input `{node.name}`")
    return Claimant(f"layer {node.describe()}", f"name the layer `{node.text} as NAME`")


@dataclass
class Env:
    """What names mean inside one chain: tensors, constants and parameters, and `in`."""

    tensors: dict
    values: dict
    in_node: str | None
    in_block: bool
    trace: tuple = ()  # (block name, call span) pairs
    stack: tuple = ()  # block names being expanded, for recursion


class Names:
    """The names of one network: its blocks, top-level tensors and constants, which of them
    are used, and the nodes named so far."""

    def __init__(self, net: Network, reporter: Reporter, lines: list[str]):
        self.net = net
        self.reporter = reporter
        self.lines = lines
        self.blocks: dict[str, ast.BlockDef] = {}
        self.called: set[str] = set()
        self.used: set = set()  # spans of bindings that some chain reads
        self.globals: dict = {}
        self.tensors: dict = {}
        self.value_spans: dict = {}  # (id of a values dict, name) -> where it was bound
        self.counters: dict[str, Counter] = {}
        # One name, one claimant (spec section 5): a node (``net.nodes``) or a scope (a block
        # call, a binding, an output: dotted name -> who opened it). ``kinds``: the nodes
        # that are not plain layers ("alias", "merge", "input"), for the help of a clash.
        self.scopes: dict[str, Claimant] = {}
        self.kinds: dict[str, str] = {}
        self.too_big = False  # the layer budget is spent (E220): expansion stops

    def top_env(self) -> Env:
        return Env(self.tensors, self.globals, None, False)

    def collect_blocks(self, statements):
        """Every block definition, before any chain is read: blocks may be called above
        their definition."""
        report = self.reporter.report
        for stmt in statements:
            if not isinstance(stmt, ast.BlockDef):
                continue
            if stmt.name in self.blocks:
                first = self.blocks[stmt.name]
                report("E202", stmt.name_span, variant="block", name=stmt.name,
                       notes=[f"first defined at {first.name_span.at()}"])
                continue
            if stmt.name in LAYERS or stmt.name in MERGES:
                report("E202", stmt.name_span, variant="builtin", name=stmt.name,
                       help=f"rename the block, e.g. `my_{stmt.name}`")
                continue
            self.blocks[stmt.name] = stmt
            seen_params: dict = {}
            for param in stmt.params:
                if param.name in seen_params:
                    report("E202", param.span, variant="parameter", block=stmt.name,
                           name=param.name, notes=[f"first at {seen_params[param.name].at()}"])
                seen_params[param.name] = param.span

    def define(self, name, span, namespace, other=None) -> bool:
        """Check a new name against the names already bound; report a duplicate."""
        for space in (namespace, other):
            if space is not None and name in space:
                prior = space[name]
                if isinstance(prior, Tensor):
                    where = prior.span.at()
                else:
                    known = self.value_spans.get((id(space), name))
                    where = known.at() if known else None
                notes = [f"first bound at {where}"] if where else []
                self.reporter.report("E202", span, name=name, notes=notes,
                                     help="names are bound once; choose a new name")
                return False
        return True

    def bind_value(self, name: str, value, span: Span, values: dict):
        values[name] = value
        self.value_spans[(id(values), name)] = span

    def lookup(self, src: ast.Source, env: Env) -> str | None:
        """The node a chain's start names, or None (reported)."""
        if src.name == "in":
            if not env.in_block:
                self.reporter.report("E212", src.span,
                                     help="start the chain with an input or a binding name")
                return None
            return env.in_node
        tensor = env.tensors.get(src.name)
        if tensor is None:
            self.unknown_tensor(src, env)
            return None
        self.used.add(tensor.span)
        return tensor.node

    def unknown_tensor(self, src: ast.Source, env: Env):
        notes = []
        help = did_you_mean_help(src.name, list(env.tensors))
        if src.name in env.values and not isinstance(env.values[src.name], Word):
            notes.append(f"`{src.name}` is a constant ({show(env.values[src.name])}), not a "
                         "tensor")
        if env.in_block and src.name in self.tensors:
            notes.append("a block sees only `in`, its own bindings and its parameters")
            help = help or "pipe the tensor into the block with `->`"
        elif src.name in self.blocks or src.name in LAYERS:
            help = (f"`{src.name}` is a layer or block; a chain starts with a tensor: "
                    f"x -> {src.name}")
        self.reporter.report("E201", src.span, name=src.name, notes=notes, help=help)

    def unknown_call(self, call: ast.Call):
        """E203 for a stage that names neither a layer nor a block."""
        report = self.reporter.report
        if call.name in MERGES:
            report("E203", call.name_span, variant="merge_as_layer", name=call.name,
                   help=f"write `{call.name}(a, b)` at the start of a chain")
            return
        if call.name == "in" or call.name in self.tensors:
            report("E203", call.name_span, variant="tensor_as_layer", name=call.name,
                   help="a chain has one start; merge tensors with "
                   + listing([f"{m}(a, b)" for m in MERGES], "or"))
            return
        foreign = foreign_name(call.name, list(LAYERS) + list(MERGES), FOREIGN_NAMES)
        if foreign is not None and foreign[0] in MERGES:
            target = foreign[0]
            help = (f"did you mean `{target}`? It is a merge and starts a chain: "
                    f"`{target}(a, b)`")
        elif foreign is not None:
            help = foreign[1] or f"did you mean `{foreign[0]}`?"
        else:
            help = did_you_mean_help(call.name, list(LAYERS) + list(self.blocks))
        report("E203", call.name_span, name=call.name, help=help)

    def unknown_merge_help(self, name: str, source: str) -> str:
        """The help of E203 for a chain start that names no merge (``concatenate(a, b)``);
        ``source``: the first tensor it was given."""
        foreign = foreign_name(name, list(LAYERS) + list(MERGES), FOREIGN_NAMES)
        if foreign is not None and foreign[0] in MERGES:
            return f"did you mean `{foreign[0]}`?"
        if foreign is not None:
            target = foreign[0]
            said = foreign[1] or f"`{name}` is the layer `{target}` here"
            return f"{said}; pipe a tensor into it: `{source} -> {target}`"
        return did_you_mean_help(name, MERGES) or f"merges are {listing(MERGES)}"

    def auto_name(self, scope: str, kind: str) -> str:
        """``<scope>.<kind><k>``, the k-th layer of ``kind`` (or call of block ``kind``) in
        ``scope``; a kind that ends in a digit takes `_` before k: ``conv3d_1``."""
        counter = self.counters.get(scope)
        if counter is None:  # not setdefault: a Counter per call costs 10 % of a long chain
            counter = self.counters[scope] = Counter()
        counter[kind] += 1
        glue = "_" if kind[-1:].isdigit() else ""
        return f"{scope}.{kind}{glue}{counter[kind]}"

    def add_node(self, node: Node, kind: str = "layer"):
        """Add a node to the network under its name. ``kind``: "layer", "alias" (a layer
        named with `as`), "merge" or "input", which says how to rename it. A name a node has already
        is E202 ``layer``; one a scope has is E202 naming both. The node then gets a suffix
        so that checking goes on."""
        nodes = self.net.nodes
        if len(nodes) >= MAX_LAYERS and not self.too_big:
            self.too_big = True
            self.reporter.report("E220", node.span, limit=MAX_LAYERS,
                                 notes=[f"while adding {node.describe()}"],
                                 help="check the repeat counts `* N` and nested block calls")
        if node.name in nodes:
            self.reporter.report("E202", node.span, variant="layer", name=node.name,
                                 notes=[f"by {nodes[node.name].describe()}"],
                                 help="choose another name with `as`")
            node.name = self.free_name(node.name)
        elif node.name in self.scopes:
            self.claimed_twice(node.name, self.scopes[node.name],
                               node_claimant(node, kind), node.span)
            node.name = self.free_name(node.name)
        nodes[node.name] = node
        if kind != "layer":
            self.kinds[node.name] = kind

    def open_scope(self, name: str, claimant: Claimant, span: Span | None) -> str:
        """Claim the dotted ``name`` for a scope (a block call, a binding, an output); return
        the scope to name its layers in: ``name``, or, where a node or another scope has it
        (E202, naming both), a free variant of it, so that nothing inside clashes."""
        nodes = self.net.nodes
        if name in nodes or name in self.scopes:
            if name in nodes:
                first = node_claimant(nodes[name], self.kinds.get(name, "layer"))
            else:
                first = self.scopes[name]
            self.claimed_twice(name, first, claimant, span)
            name = self.free_name(name)
        self.scopes[name] = claimant
        return name

    def claimed_twice(self, name: str, first: Claimant, second: Claimant, span):
        """E202: ``second`` claims the name ``name`` that ``first`` has (spec section 5)."""
        fixes = list(dict.fromkeys(f for f in (second.fix, first.fix) if f))
        help = f"rename one: {listing(fixes, 'or')}" if fixes else None
        self.reporter.report("E202", span, variant="claimed", name=name, first=first.what,
                             second=second.what, help=help)

    def free_name(self, base: str) -> str:
        """``base_2``, ``base_3``, ...: the first that no node or scope has."""
        k = 2
        while f"{base}_{k}" in self.scopes or f"{base}_{k}" in self.net.nodes:
            k += 1
        return f"{base}_{k}"

    def text(self, span: Span | None) -> str:
        """The source text of a span on one line (the whole line's rest if it goes on)."""
        if span is None or not (1 <= span.line <= len(self.lines)):
            return "?"
        line = self.lines[span.line - 1]
        end = span.end_column - 1 if span.end_line == span.line else len(line)
        return line[span.column - 1: end]
