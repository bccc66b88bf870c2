"""The walk: statements in source order to nodes, with names resolved and blocks expanded.

Each chain stage becomes a `Node` with its spec-section-5 name; block calls are expanded in
place with their instantiation trace kept; each layer call's arguments are bound and typed.
A node whose shape can then be inferred is queued as a job of the infer pass.
"""

from __future__ import annotations

from ...dsl import syntax as ast
from ...ops import LAYERS, MERGES
from ...ops.base import REQUIRED, ArgSpec
from ..graph import Network, Node
from ..symbolic import sym
from .args import Binder
from .names import MAX_BLOCK_DEPTH, MAX_LAYERS, Claimant, Env, Names, Tensor
from .report import Reporter
from .values import INVALID, Evaluator, Word, show

# Inputs are [F], [C, L], [C, H, W] or [C, D, H, W] (spec sections 3 and 9).
MAX_INPUT_RANK = 4


def placed(value, span):
    """A value set from outside (--let), its words placed at ``span`` (the `let`'s name), so
    that a problem with one points into the file."""
    if isinstance(value, Word):
        return Word(value.name, span)
    if isinstance(value, list):
        return [placed(item, span) for item in value]
    return value


class Expander:
    def __init__(self, module: ast.Module, net: Network, reporter: Reporter,
                 lines: list[str], sizes: dict, consts: dict | None = None):
        self.module = module
        self.net = net
        self.reporter = reporter
        self.sizes = sizes
        self.consts = consts or {}  # top-level `let` values set from outside (--let)
        self.names = Names(net, reporter, lines)
        self.evaluator = Evaluator(reporter, self.names.tensors)
        self.binder = Binder(reporter, self.evaluator)
        self.symbols: list[str] = []  # the inputs' size symbols without a value, in order
        self.jobs: list = []  # (node, ast.Merge or None): the shapes the infer pass computes
        self.depth_reported = False
        self.anon_outputs = 0

    @property
    def expansion_cut(self) -> bool:
        """Whether some block call was not expanded (recursion, depth, the layer budget)."""
        return self.depth_reported or self.names.too_big or self.reporter.found("E208")

    def run(self) -> bool:
        """Walk every statement; False when the file is refused before building anything."""
        statements = self.module.statements
        self.names.collect_blocks(statements)
        self.layer_count = LayerCount(self.names.blocks)
        if too_large(statements, self.names.blocks, self.reporter):
            return False
        network_seen = False
        for stmt in statements:
            if isinstance(stmt, ast.NetworkStmt):
                if network_seen:
                    self.reporter.report("E202", stmt.span, variant="network")
                network_seen = True
                self.net.name = stmt.name
            elif isinstance(stmt, ast.InputStmt):
                self.input(stmt)
            elif isinstance(stmt, ast.LetStmt):
                self.let(stmt, self.names.globals, self.names.tensors)
            elif isinstance(stmt, ast.Binding):
                self.top_binding(stmt)
            elif isinstance(stmt, ast.OutputStmt):
                self.output(stmt)
        return True

    # ---- statements -------------------------------------------------------------------------
    def input(self, stmt: ast.InputStmt):
        names = self.names
        if not names.define(stmt.name, stmt.name_span, names.tensors, names.globals):
            return
        dims = []
        ok = True
        if not 1 <= len(stmt.dims) <= MAX_INPUT_RANK:
            self.reporter.report("E218", stmt.span, name=stmt.name, count=len(stmt.dims),
                                 help="give the per-sample shape; the batch dimension is "
                                 "implicit")
            ok = False
        for dim in stmt.dims:
            if isinstance(dim.value, int):
                if dim.value < 1:
                    self.reporter.report("E218", dim.span, variant="dim", value=dim.value)
                    ok = False
                dims.append(dim.value)
            elif dim.value in self.sizes:
                dims.append(self.sizes[dim.value])
            elif dim.value in names.globals and isinstance(names.globals[dim.value], int):
                dims.append(names.globals[dim.value])
            else:
                if dim.value not in self.symbols:
                    self.symbols.append(dim.value)
                dims.append(sym(dim.value))
        node = Node(stmt.name, "input", {}, [], stmt.name_span, f"input {stmt.name}")
        node.shape = tuple(dims) if ok else None
        names.add_node(node, "input")
        self.net.inputs.append(stmt.name)
        names.tensors[stmt.name] = Tensor(stmt.name, stmt.name_span, "input")

    def let(self, stmt: ast.LetStmt, values: dict, tensors: dict):
        if self.names.define(stmt.name, stmt.name_span, values, tensors):
            if values is self.names.globals and stmt.name in self.consts:
                value = placed(self.consts[stmt.name], stmt.name_span)
            else:
                value = self.evaluator.value(stmt.value, values)
            self.names.bind_value(stmt.name, value, stmt.name_span, values)

    def top_binding(self, stmt: ast.Binding):
        names = self.names
        scope = stmt.name
        if stmt.name not in names.tensors and stmt.name not in names.globals:
            scope = names.open_scope(scope, Claimant(
                f"binding `{stmt.name}` at {stmt.name_span.at()}",
                f"rename the binding `{stmt.name}`"), stmt.name_span)
        node = self.chain(stmt.chain, scope, names.top_env())
        if names.define(stmt.name, stmt.name_span, names.tensors, names.globals):
            names.tensors[stmt.name] = Tensor(node, stmt.name_span, "binding")

    def output(self, stmt: ast.OutputStmt):
        names = self.names
        if stmt.name is None:
            if not stmt.chain.stages and isinstance(stmt.chain.start, ast.Source):
                name = stmt.chain.start.name
            else:
                name = self.unnamed_output()
            span = stmt.chain.span
        else:
            name = stmt.name
            span = stmt.name_span
        scope = name
        if stmt.chain.stages or not isinstance(stmt.chain.start, ast.Source):
            if stmt.name is None:
                claimant = Claimant(f"the output at {span.at()}",
                                    "name the output: `output NAME = ...`")
            else:
                claimant = Claimant(f"output `{name}` at {span.at()}",
                                    f"rename the output `{name}`")
            taken = name in names.tensors or name in names.globals  # E202 below, if named
            if name not in self.net.outputs and (stmt.name is None or not taken):
                scope = names.open_scope(name, claimant, span)
        node = self.chain(stmt.chain, scope, names.top_env())
        if name in self.net.outputs:
            self.reporter.report("E202", span, variant="output", name=name)
            return
        if stmt.name is not None:
            if not names.define(name, span, names.tensors, names.globals):
                return
            names.tensors[name] = Tensor(node, span, "output")
        if node is not None:
            self.net.outputs[name] = node

    def unnamed_output(self) -> str:
        """``output1``, ``output2``, ...: the name of the next unnamed output, skipping names
        that something has already (an input, a binding, a constant)."""
        names = self.names
        while True:
            self.anon_outputs += 1
            name = f"output{self.anon_outputs}"
            if not (name in names.tensors or name in names.globals or name in names.scopes
                    or name in self.net.nodes or name in self.net.outputs):
                return name

    # ---- chains -----------------------------------------------------------------------------
    def chain(self, chain: ast.Chain, scope: str, env: Env) -> str | None:
        cur = self.start(chain.start, scope, env)
        for stage in chain.stages:
            cur = self.stage(stage, cur, scope, env)
        return cur

    def start(self, start, scope: str, env: Env) -> str | None:
        """A chain's start: a tensor, or a merge of tensors (a node of its own)."""
        names = self.names
        if isinstance(start, ast.Source):
            return names.lookup(start, env)
        if start.op not in MERGES:  # a misplaced call at the head of a chain
            kind = "layer" if start.op in LAYERS else "block" if start.op in names.blocks else None
            if kind:
                source = start.sources[0].name if start.sources else "x"
                self.reporter.report("E211", start.span, kind=kind, name=start.op,
                                     help=f"pipe a tensor into it: `{source} -> {start.op}`")
            else:
                source = start.sources[0].name if start.sources else "x"
                self.reporter.report("E203", start.name_span, variant="merge", name=start.op,
                                     help=names.unknown_merge_help(start.op, source))
            for src in start.sources:
                names.lookup(src, env)
            return None
        inputs = [names.lookup(src, env) for src in start.sources]
        if len(start.sources) < 2:
            self.reporter.report("E214", start.span, op=start.op, count=len(start.sources))
        name = names.auto_name(scope, start.op)
        node = Node(name, start.op, {}, [i for i in inputs if i is not None], start.span,
                    names.text(start.span), env.trace)
        names.add_node(node, "merge")
        if None not in inputs and len(inputs) >= 2:
            self.jobs.append((node, start))
        return node.name  # add_node renames a node whose name is taken (E202)

    def stage(self, stage: ast.Stage, cur, scope: str, env: Env):
        count = self.repeat_count(stage, env)
        if count > 1 and not self.repeat_fits(stage, count):
            return None
        alias = stage.alias if count == 1 else None
        call = stage.call
        for _ in range(count):
            if self.names.too_big:
                return None
            if call.name in LAYERS:
                cur = self.layer(call, cur, scope, env, alias)
            elif call.name in self.names.blocks:
                cur = self.block_call(call, cur, scope, env, alias)
            else:
                self.names.unknown_call(call)
                return None
        return cur

    def repeat_fits(self, stage: ast.Stage, count: int) -> bool:
        """Whether ``count`` copies of the stage can fit the layer budget: refused (E220)
        before the first copy when even a lower bound on their layers does not fit."""
        unit = self.layer_count.call(stage.call.name)
        done = len(self.net.nodes)
        if done + count * unit <= MAX_LAYERS:
            return True
        self.reporter.report("E220", stage.repeat.span, variant="stage", limit=MAX_LAYERS,
                             count=count, unit=unit, done=done,
                             help="check the repeat counts `* N` and nested block calls")
        self.names.too_big = True
        return False

    def repeat_count(self, stage: ast.Stage, env: Env) -> int:
        """How many times a stage repeats (`* N`): 1 where the count is wrong (reported)."""
        report = self.reporter.report
        count = 1
        if stage.repeat is not None:
            value = self.evaluator.value(stage.repeat, env.values)
            if isinstance(value, Word):
                self.evaluator.undefined(value, env.values, "a repeat count")
                value = INVALID
            if value is INVALID:
                count = 1
            elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                report("E213", stage.repeat.span, value=show(value))
                count = 1
            else:
                count = value
        if stage.alias is not None and count > 1:
            report("E213", stage.alias_span, variant="alias", count=count, alias=stage.alias,
                   help="drop `as`; the copies are numbered automatically")
        if count > MAX_LAYERS:
            report("E220", stage.repeat.span, variant="repeat", count=count, limit=MAX_LAYERS)
            count = 1
        return count

    def layer(self, call: ast.Call, cur, scope: str, env: Env, alias):
        names = self.names
        auto = names.auto_name(scope, call.name)
        name = f"{scope}.{alias}" if alias else auto
        args = self.binder.layer_args(LAYERS[call.name], call, env.values)
        node = Node(name, call.name, args or {}, [cur] if cur is not None else [], call.span,
                    names.text(call.span), env.trace)
        names.add_node(node, "alias" if alias else "layer")
        if cur is not None and args is not None:
            self.jobs.append((node, None))
        return node.name  # add_node renames a node whose name is taken (E202)

    def block_call(self, call: ast.Call, cur, scope: str, env: Env, alias):
        names = self.names
        block = names.blocks[call.name]
        names.called.add(call.name)
        auto = names.auto_name(scope, call.name)
        block_scope = f"{scope}.{alias}" if alias else auto
        if call.name in env.stack:
            cycle = " -> ".join(env.stack[env.stack.index(call.name):] + (call.name,))
            self.reporter.report("E208", call.span, name=call.name, cycle=cycle,
                                 help="a block cannot contain itself; unroll it or use `* N`")
            return None
        if len(env.stack) >= MAX_BLOCK_DEPTH:
            if not self.depth_reported:
                self.depth_reported = True
                self.reporter.report("E215", call.span, depth=MAX_BLOCK_DEPTH)
            return None
        if names.too_big:
            return None
        # bind parameters: defaults may use earlier parameters and global constants
        specs = [ArgSpec(p.name, "any", REQUIRED if p.default is None else p.default)
                 for p in block.params]
        bound = self.binder.bind(call, specs, env.values, f"block `{call.name}`")
        if bound is None:
            return None
        given, _ = bound
        fix = ("choose another name after `as`" if alias
               else f"name the call `{names.text(call.span)} as NAME`")
        block_scope = names.open_scope(
            block_scope, Claimant(f"the call of block `{call.name}` at {call.span.at()}", fix),
            call.span)
        values = dict(names.globals)
        for param, spec in zip(block.params, specs):
            got = given[spec.name]
            if got is spec.default and param.default is not None:
                got = self.evaluator.value(param.default, values)
            values[param.name] = got
        inner = Env(tensors={}, values=values, in_node=cur, in_block=True,
                    trace=env.trace + ((call.name, call.span),),
                    stack=env.stack + (call.name,))
        outer_trace = self.reporter.trace
        self.reporter.trace = inner.trace
        try:
            for item in block.body:
                if isinstance(item, ast.LetStmt):
                    self.let(item, inner.values, inner.tensors)
                else:
                    scope = f"{block_scope}.{item.name}"
                    if item.name not in inner.tensors and item.name not in inner.values:
                        scope = names.open_scope(scope, Claimant(
                            f"binding `{item.name}` at {item.name_span.at()}",
                            f"rename the binding `{item.name}`"), item.name_span)
                    node = self.chain(item.chain, scope, inner)
                    if names.define(item.name, item.name_span, inner.tensors, inner.values):
                        inner.tensors[item.name] = Tensor(node, item.name_span, "binding")
            return self.chain(block.ret, block_scope, inner)
        finally:
            self.reporter.trace = outer_trace


class LayerCount:
    """Lower bounds on the layers a block call or a chain adds, from the syntax alone: repeat
    counts that are not literals count once, recursion and too-deep nesting count nothing
    (both are reported while expanding). A bound above the budget is a sure refusal."""

    def __init__(self, blocks: dict):
        self.blocks = blocks
        self.sizes: dict = {}

    def block(self, name: str, active: frozenset = frozenset()) -> int:
        if name in self.sizes:
            return self.sizes[name]
        if name in active or len(active) >= MAX_BLOCK_DEPTH:
            return 0
        block = self.blocks[name]
        inner = active | {name}
        total = self.chain(block.ret, inner)
        for item in block.body:
            if isinstance(item, ast.Binding):
                total += self.chain(item.chain, inner)
        self.sizes[name] = total
        return total

    def chain(self, chain: ast.Chain, active: frozenset = frozenset()) -> int:
        total = 1 if isinstance(chain.start, ast.Merge) else 0
        for stage in chain.stages:
            count = stage.repeat.value if isinstance(stage.repeat, ast.IntLit) else 1
            total += max(count, 1) * self.call(stage.call.name, active)
        return total

    def call(self, name: str, active: frozenset = frozenset()) -> int:
        return self.block(name, active) if name in self.blocks else 1


def too_large(statements, blocks: dict, reporter: Reporter) -> bool:
    """Refuse, before building anything, a file whose repeats and block calls multiply past
    the layer budget (E220). Repeat counts that are not literals are taken as 1 here; the
    budget is enforced again while expanding (`Expander.stage`, before each repeat)."""
    count = LayerCount(blocks)
    total = 0
    for stmt in statements:
        if isinstance(stmt, (ast.Binding, ast.OutputStmt)):
            total += count.chain(stmt.chain)
            if total > MAX_LAYERS:
                reporter.report("E220", stmt.chain.span, variant="estimate", limit=MAX_LAYERS,
                                total=total,
                                help="check the repeat counts `* N` and nested block calls")
                return True
    return False
