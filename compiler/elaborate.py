"""Syntax tree to checked network: name resolution, block expansion, naming, shape inference.

One walk over the statements in source order. Each chain stage becomes a `Node` with its
spec-section-5 name; block calls are expanded in place with their instantiation trace kept.
Shapes are inferred as nodes are made, and every problem becomes a `Diagnostic`: nothing is
raised, and checking goes on wherever the shape is still known.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..dsl import syntax as ast
from ..dsl.diagnostics import Diagnostic, Span, did_you_mean, source_lines
from . import shapes
from .graph import Network, Node
from .layers import LAYERS, MERGES, REQUIRED, ArgSpec, expects, rank_help
from .symbolic import Condition, Expr, is_concrete, shape_text, solve, sym

MAX_BLOCK_DEPTH = 64
MAX_LAYERS = 1_000_000  # a file that expands past this is refused (E220), not run out of memory


class _Invalid:
    """A value that could not be evaluated; its problem is already reported."""

    def __repr__(self):
        return "<invalid>"


INVALID = _Invalid()


@dataclass(frozen=True)
class Word:
    """A bare word in a value position that names no constant: an enum value like `same`."""

    name: str
    span: Span


@dataclass
class Tensor:
    node: str | None  # the node producing it; None when it could not be built
    span: Span  # where the name was bound
    kind: str  # input | binding | output | in


@dataclass
class Env:
    """What names mean inside one chain: tensors, constants and parameters, and `in`."""

    tensors: dict
    values: dict
    in_node: str | None
    in_block: bool
    trace: tuple = ()  # (block name, call span) pairs
    stack: tuple = ()  # block names being expanded, for recursion


class Elaborator:
    def __init__(self, module: ast.Module, file: str, source: str, sizes: dict | None = None):
        self.module = module
        self.file = file
        self.lines = source_lines(source)
        self.sizes = dict(sizes or {})
        stem = file.replace("\\", "/").rsplit("/", 1)[-1]
        stem = stem[:-4] if stem.endswith(".cnn") else stem
        self.net = Network(name=stem if stem.isidentifier() else "network", file=file)
        self.diags: list[Diagnostic] = []
        self.seen: set = set()
        self.counters: dict[str, Counter] = {}
        self.blocks: dict[str, ast.BlockDef] = {}
        self.called: set[str] = set()
        self.used: set = set()  # spans of bindings that some chain reads
        self.globals: dict = {}
        self.tensors: dict = {}
        self.conditions: list[Condition] = []
        self.symbols: list[str] = []
        self.depth_reported = False
        self.value_spans: dict = {}  # (id of a values dict, name) -> where it was bound
        self.too_big = False
        self.trace: tuple = ()  # the block calls being expanded, for diagnostics' notes
        self.anon_outputs = 0

    # ---- reporting ----------------------------------------------------------------------
    def report(self, code, message, span, notes=(), help=None):
        notes = list(notes)
        for block, call_span in reversed(self.trace):
            notes.append(f"in block `{block}` called at {call_span.at()}")
        key = (code, span, message)
        if key in self.seen:
            return
        self.seen.add(key)
        self.diags.append(Diagnostic(code, message, span, notes, help, self.file))

    def text(self, span: Span | None) -> str:
        if span is None or not (1 <= span.line <= len(self.lines)):
            return "?"
        line = self.lines[span.line - 1]
        end = span.end_column - 1 if span.end_line == span.line else len(line)
        return line[span.column - 1: end]

    # ---- the walk -----------------------------------------------------------------------
    def run(self) -> Network:
        statements = self.module.statements
        for stmt in statements:
            if isinstance(stmt, ast.BlockDef):
                if stmt.name in self.blocks:
                    first = self.blocks[stmt.name]
                    self.report(
                        "E202", f"block `{stmt.name}` is defined twice", stmt.name_span,
                        notes=[f"first defined at {first.name_span.at()}"],
                    )
                    continue
                if stmt.name in LAYERS or stmt.name in MERGES:
                    self.report(
                        "E202", f"block `{stmt.name}` has the name of a built-in layer",
                        stmt.name_span, help=f"rename the block, e.g. `my_{stmt.name}`",
                    )
                    continue
                self.blocks[stmt.name] = stmt
                seen_params: dict = {}
                for param in stmt.params:
                    if param.name in seen_params:
                        self.report("E202", f"block `{stmt.name}` has two parameters named "
                                    f"`{param.name}`", param.span,
                                    notes=[f"first at {seen_params[param.name].at()}"])
                    seen_params[param.name] = param.span
        if self.too_large(statements):
            self.net.diagnostics = self.diags
            return self.net
        network_seen = False
        for stmt in statements:
            if isinstance(stmt, ast.NetworkStmt):
                if network_seen:
                    self.report("E202", "the network is named twice", stmt.span)
                network_seen = True
                self.net.name = stmt.name
            elif isinstance(stmt, ast.InputStmt):
                self.input(stmt)
            elif isinstance(stmt, ast.LetStmt):
                self.let(stmt, self.globals, self.tensors)
            elif isinstance(stmt, ast.Binding):
                self.top_binding(stmt)
            elif isinstance(stmt, ast.OutputStmt):
                self.output(stmt)
        self.finish()
        return self.net

    def too_large(self, statements) -> bool:
        """Refuse, before building anything, a file whose repeats and block calls multiply
        past the layer budget. Repeat counts that are not literals are taken as 1 here; the
        budget is enforced again while expanding."""
        sizes: dict = {}

        def block_size(name: str, active: frozenset) -> int:
            if name in sizes:
                return sizes[name]
            if name in active or len(active) >= MAX_BLOCK_DEPTH:
                return 0  # recursion and nesting depth are reported while expanding
            block = self.blocks[name]
            inner = active | {name}
            total = chain_size(block.ret, inner)
            for item in block.body:
                if isinstance(item, ast.Binding):
                    total += chain_size(item.chain, inner)
            sizes[name] = total
            return total

        def chain_size(chain: ast.Chain, active: frozenset) -> int:
            total = 1 if isinstance(chain.start, ast.Merge) else 0
            for stage in chain.stages:
                count = stage.repeat.value if isinstance(stage.repeat, ast.IntLit) else 1
                name = stage.call.name
                unit = block_size(name, active) if name in self.blocks else 1
                total += max(count, 1) * unit
            return total

        total = 0
        for stmt in statements:
            if isinstance(stmt, (ast.Binding, ast.OutputStmt)):
                total += chain_size(stmt.chain, frozenset())
                if total > MAX_LAYERS:
                    self.report("E220", f"the network would expand to more than "
                                f"{MAX_LAYERS:,} layers ({total:,} by this statement)",
                                stmt.chain.span,
                                help="check the repeat counts `* N` and nested block calls")
                    return True
        return False

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
                self.report("E202", f"`{name}` is already defined", span, notes=notes,
                            help="names are bound once; choose a new name")
                return False
        return True

    def input(self, stmt: ast.InputStmt):
        if not self.define(stmt.name, stmt.name_span, self.tensors, self.globals):
            return
        dims = []
        ok = True
        if len(stmt.dims) not in (1, 3):
            self.report(
                "E218",
                f"input `{stmt.name}` has {len(stmt.dims)} dims; expected [C, H, W] or [F]",
                stmt.span,
                help="give the per-sample shape; the batch dimension is implicit",
            )
            ok = False
        for dim in stmt.dims:
            if isinstance(dim.value, int):
                if dim.value < 1:
                    self.report("E218", f"input dims must be at least 1, got {dim.value}",
                                dim.span)
                    ok = False
                dims.append(dim.value)
            elif dim.value in self.sizes:
                dims.append(self.sizes[dim.value])
            elif dim.value in self.globals and isinstance(self.globals[dim.value], int):
                dims.append(self.globals[dim.value])
            else:
                if dim.value not in self.symbols:
                    self.symbols.append(dim.value)
                dims.append(sym(dim.value))
        node = Node(stmt.name, "input", {}, [], stmt.name_span, f"input {stmt.name}")
        node.shape = tuple(dims) if ok else None
        self.add_node(node)
        self.net.inputs.append(stmt.name)
        self.tensors[stmt.name] = Tensor(stmt.name, stmt.name_span, "input")

    def let(self, stmt: ast.LetStmt, values: dict, tensors: dict):
        if not self.define(stmt.name, stmt.name_span, values, tensors):
            return
        values[stmt.name] = self.value(stmt.value, values)
        self.value_spans[(id(values), stmt.name)] = stmt.name_span

    def top_env(self) -> Env:
        return Env(self.tensors, self.globals, None, False)

    def top_binding(self, stmt: ast.Binding):
        node = self.chain(stmt.chain, stmt.name, self.top_env())
        if self.define(stmt.name, stmt.name_span, self.tensors, self.globals):
            self.tensors[stmt.name] = Tensor(node, stmt.name_span, "binding")

    def output(self, stmt: ast.OutputStmt):
        if stmt.name is None:
            if not stmt.chain.stages and isinstance(stmt.chain.start, ast.Source):
                name = stmt.chain.start.name
            else:
                self.anon_outputs += 1
                name = f"output{self.anon_outputs}"
            span = stmt.chain.span
        else:
            name = stmt.name
            span = stmt.name_span
        node = self.chain(stmt.chain, name, self.top_env())
        if name in self.net.outputs:
            self.report("E202", f"output `{name}` is defined twice", span)
            return
        if stmt.name is not None:
            if not self.define(name, span, self.tensors, self.globals):
                return
            self.tensors[name] = Tensor(node, span, "output")
        if node is not None:
            self.net.outputs[name] = node

    # ---- values ---------------------------------------------------------------------------
    def value(self, v, values: dict):
        if isinstance(v, (ast.IntLit, ast.FloatLit, ast.BoolLit)):
            return v.value
        if isinstance(v, ast.NameRef):
            if v.name in values:
                return values[v.name]
            return Word(v.name, v.span)
        if isinstance(v, ast.ListLit):
            items = [self.value(item, values) for item in v.items]
            return INVALID if any(i is INVALID for i in items) else items
        if isinstance(v, ast.Neg):
            inner = self.number(v.operand, values)
            return INVALID if inner is INVALID else -inner
        if isinstance(v, ast.BinOp):
            return self.binop(v, values)
        return INVALID

    def number(self, v, values):
        out = self.value(v, values)
        if out is INVALID:
            return INVALID
        if isinstance(out, Word):
            self.undefined_value(out, values)
            return INVALID
        if isinstance(out, bool) or not isinstance(out, (int, float)):
            self.report("E206", f"expected a number in arithmetic, got {_show(out)}", v.span)
            return INVALID
        return out

    def binop(self, v: ast.BinOp, values):
        left = self.number(v.left, values)
        right = self.number(v.right, values)
        if left is INVALID or right is INVALID:
            return INVALID
        if v.op == "+":
            return left + right
        if v.op == "-":
            return left - right
        if v.op == "*":
            return left * right
        if not (isinstance(left, int) and isinstance(right, int)):
            self.report("E206", f"`//` needs integers, got {_show(left)} // {_show(right)}",
                        v.span)
            return INVALID
        if right == 0:
            self.report("E207", "division by zero", v.right.span)
            return INVALID
        return left // right

    def undefined_value(self, word: Word, values: dict, expected: str = ""):
        candidates = [k for k, val in values.items() if not isinstance(val, Word)]
        guess = did_you_mean(word.name, candidates)
        notes = []
        if word.name in self.tensors:
            notes.append(f"`{word.name}` is a tensor; arguments take numbers, lists and words")
        help = f"did you mean `{guess}`?" if guess else None
        suffix = f" (expected {expected})" if expected else ""
        self.report("E201", f"undefined name `{word.name}`{suffix}", word.span, notes, help)

    # ---- chains ---------------------------------------------------------------------------
    def chain(self, chain: ast.Chain, scope: str, env: Env) -> str | None:
        cur = self.start(chain.start, scope, env)
        for stage in chain.stages:
            cur = self.stage(stage, cur, scope, env)
        return cur

    def lookup(self, src: ast.Source, env: Env) -> str | None:
        if src.name == "in":
            if not env.in_block:
                self.report("E212", "`in` is only defined inside a block", src.span,
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
        guess = did_you_mean(src.name, list(env.tensors))
        notes = []
        help = f"did you mean `{guess}`?" if guess else None
        if src.name in env.values and not isinstance(env.values[src.name], Word):
            notes.append(f"`{src.name}` is a constant ({_show(env.values[src.name])}), not a "
                         "tensor")
        if env.in_block and src.name in self.tensors:
            notes.append("a block sees only `in`, its own bindings and its parameters")
            help = help or "pipe the tensor into the block with `->`"
        elif src.name in self.blocks or src.name in LAYERS:
            help = f"`{src.name}` is a layer or block; a chain starts with a tensor: x -> {src.name}"
        self.report("E201", f"undefined name `{src.name}`", src.span, notes, help)

    def start(self, start, scope: str, env: Env) -> str | None:
        if isinstance(start, ast.Source):
            return self.lookup(start, env)
        # a merge or a misplaced call at the head of a chain
        if start.op not in MERGES:
            kind = "layer" if start.op in LAYERS else "block" if start.op in self.blocks else None
            if kind:
                self.report(
                    "E211", f"a chain must start with a tensor or a merge, not the {kind} "
                    f"`{start.op}`", start.span,
                    help=_pipe_help(start),
                )
            else:
                guess = did_you_mean(start.op, MERGES)
                self.report(
                    "E203", f"unknown merge `{start.op}`", start.name_span,
                    help=f"did you mean `{guess}`?" if guess else "merges are concat and add",
                )
            for src in start.sources:
                self.lookup(src, env)
            return None
        inputs = [self.lookup(src, env) for src in start.sources]
        if len(start.sources) < 2:
            self.report("E214", f"{start.op} needs at least two inputs, got {len(start.sources)}",
                        start.span)
        kind = start.op
        name = self.auto_name(scope, kind)
        node = Node(name, kind, {}, [i for i in inputs if i is not None], start.span,
                    self.text(start.span), env.trace)
        self.add_node(node)
        if None in inputs or len(inputs) < 2:
            return name
        node.shape = self.merge_shape(node, start)
        return name

    def auto_name(self, scope: str, kind: str) -> str:
        counter = self.counters.setdefault(scope, Counter())
        counter[kind] += 1
        return f"{scope}.{kind}{counter[kind]}"

    def add_node(self, node: Node):
        if len(self.net.nodes) >= MAX_LAYERS and not self.too_big:
            self.too_big = True
            self.report("E220", f"the network expands to more than {MAX_LAYERS:,} layers",
                        node.span, notes=[f"while adding {node.describe()}"],
                        help="check the repeat counts `* N` and nested block calls")
        if node.name in self.net.nodes:
            self.report("E202", f"layer name `{node.name}` is already taken", node.span,
                        notes=[f"by {self.net.nodes[node.name].describe()}"],
                        help="choose another name with `as`")
            base = node.name
            k = 2
            while f"{base}_{k}" in self.net.nodes:
                k += 1
            node.name = f"{base}_{k}"
        self.net.nodes[node.name] = node

    def stage(self, stage: ast.Stage, cur, scope: str, env: Env):
        count = 1
        if stage.repeat is not None:
            value = self.value(stage.repeat, env.values)
            if isinstance(value, Word):
                self.undefined_value(value, env.values, "a repeat count")
                value = INVALID
            if value is INVALID:
                count = 1
            elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                self.report("E213", f"repeat count must be an integer of at least 1, got "
                            f"{_show(value)}", stage.repeat.span)
                count = 1
            else:
                count = value
        if stage.alias is not None and count > 1:
            self.report("E213", f"a stage repeated {count} times cannot take one name "
                        f"`{stage.alias}`", stage.alias_span,
                        help="drop `as`; the copies are numbered automatically")
        if count > MAX_LAYERS:
            self.report("E220", f"repeat count {count:,} is more than the {MAX_LAYERS:,} layers a "
                        "network may have", stage.repeat.span)
            count = 1
        alias = stage.alias if count == 1 else None
        call = stage.call
        for _ in range(count):
            if self.too_big:
                return None
            if call.name in LAYERS:
                cur = self.layer(call, cur, scope, env, alias)
            elif call.name in self.blocks:
                cur = self.block_call(call, cur, scope, env, alias)
            else:
                self.unknown_call(call)
                return None
        return cur

    def unknown_call(self, call: ast.Call):
        if call.name in MERGES:
            self.report("E203", f"`{call.name}` is a merge and starts a chain", call.name_span,
                        help=f"write `{call.name}(a, b)` at the start of a chain")
            return
        if call.name == "in" or call.name in self.tensors:
            self.report("E203", f"`{call.name}` is a tensor, not a layer", call.name_span,
                        help="a chain has one start; merge tensors with concat(a, b) or add(a, b)")
            return
        guess = did_you_mean(call.name, list(LAYERS) + list(self.blocks))
        self.report("E203", f"unknown layer or block `{call.name}`", call.name_span,
                    help=f"did you mean `{guess}`?" if guess else None)

    # ---- arguments ------------------------------------------------------------------------
    def bind(self, call: ast.Call, specs: list, values: dict, what: str) -> dict | None:
        """Match a call's arguments to specs (positional, then keyword); evaluate them."""
        given: dict = {}
        spans: dict = {}
        ok = True
        names = [s.name for s in specs]
        positional = [a for a in call.args if a.name is None]
        if len(positional) > len(specs):
            extra = positional[len(specs)]
            listed = ", ".join(names) if names else "none"
            self.report("E209", f"{what} takes {len(specs)} argument{'s' * (len(specs) != 1)} "
                        f"({listed}), got {len(positional)}", extra.span)
            ok = False
        seen_keyword = False
        index = 0
        for arg in call.args:
            if arg.name is None:
                if seen_keyword:
                    self.report("E209", "a positional argument after a keyword argument",
                                arg.span, help="put positional arguments first")
                    ok = False
                    continue
                if index < len(specs):
                    given[specs[index].name] = arg
                index += 1
                continue
            seen_keyword = True
            if arg.name not in names:
                guess = did_you_mean(arg.name, names)
                listed = ", ".join(names) if names else "none"
                self.report("E205", f"{what} has no argument `{arg.name}`",
                            arg.name_span or arg.span, notes=[f"its arguments are: {listed}"],
                            help=f"did you mean `{guess}`?" if guess else None)
                ok = False
                continue
            if arg.name in given:
                self.report("E210", f"argument `{arg.name}` of {what} is given twice", arg.span,
                            notes=[f"first given at {given[arg.name].span.at()}"])
                ok = False
                continue
            given[arg.name] = arg
        out: dict = {}
        for spec in specs:
            arg = given.get(spec.name)
            if arg is None:
                if spec.default is REQUIRED:
                    sig = ", ".join(s.name for s in specs if s.default is REQUIRED)
                    self.report("E204", f"{what} is missing argument `{spec.name}`", call.span,
                                help=f"call it as {call.name}({sig}, ...)")
                    ok = False
                out[spec.name] = spec.default
                continue
            spans[spec.name] = arg.value.span
            out[spec.name] = self.value(arg.value, values)
        out["__spans__"] = spans
        return out if ok else None

    def convert(self, spec: ArgSpec, value, span, what: str, values: dict):
        """Check one layer argument's type and range; return the normalised value."""
        kind = spec.kind
        label = f"{what} {spec.name}"
        if value is INVALID or value is REQUIRED:
            return INVALID
        if value is None:
            return None
        if isinstance(value, Word):
            if kind == "cpad" and value.name in ("same", "valid"):
                return "same" if value.name == "same" else (0, 0)
            expected = {
                "cpad": "an integer, a pair, `same` or `valid`",
                "ppad": "an integer or a pair; `same` and `valid` are for conv",
                "bool": "true or false",
            }.get(kind, "")
            self.undefined_value(value, values, expected)
            return INVALID
        if kind == "bool":
            if isinstance(value, bool):
                return value
            return self.bad_type(label, "true or false", value, span)
        if kind in ("float", "prob", "positive_float", "unit_float"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return self.bad_type(label, "a number", value, span)
            value = float(value)
            if value != value or value in (float("inf"), float("-inf")):
                return self.bad_value(f"{label} must be a finite number, got {value:g}", span)
            if kind == "prob" and not 0.0 <= value < 1.0:
                return self.bad_value(f"{label} must be in [0, 1), got {value:g}", span)
            if kind == "positive_float" and value <= 0:
                return self.bad_value(f"{label} must be above 0, got {value:g}", span)
            if kind == "unit_float" and not 0.0 <= value <= 1.0:
                return self.bad_value(f"{label} must be in [0, 1], got {value:g}", span)
            return value
        minimum = 0 if kind in ("cpad", "ppad") else 1
        if kind == "count":
            return self.integer(label, value, span, minimum)
        if kind == "cpad" and not isinstance(value, list) and (
                isinstance(value, bool) or not isinstance(value, int)):
            return self.bad_type(label, "an integer, a pair [h, w], `same` or `valid`", value,
                                 span)
        # pair-like: an integer or a list of two
        if isinstance(value, list):
            if len(value) != 2:
                return self.bad_type(label, "an integer or a pair [h, w]",
                                     value, span)
            items = [self.integer(label, v, span, minimum) for v in value]
            if INVALID in items:
                return INVALID
            return tuple(items)
        single = self.integer(label, value, span, minimum)
        return INVALID if single is INVALID else (single, single)

    def integer(self, label, value, span, minimum):
        if isinstance(value, bool) or not isinstance(value, int):
            return self.bad_type(label, "an integer", value, span)
        if value < minimum:
            return self.bad_value(f"{label} must be at least {minimum}, got {value}", span)
        return value

    def bad_type(self, label, expected, value, span):
        self.report("E206", f"{label} expects {expected}, got {_show(value)}", span)
        return INVALID

    def bad_value(self, message, span):
        self.report("E207", message, span)
        return INVALID

    # ---- layers ---------------------------------------------------------------------------
    def layer(self, call: ast.Call, cur, scope: str, env: Env, alias):
        layer = LAYERS[call.name]
        kind = call.name
        auto = self.auto_name(scope, kind)
        name = f"{scope}.{alias}" if alias else auto
        bound = self.bind(call, layer.args, env.values, f"`{kind}`")
        args = None
        if bound is not None:
            spans = bound.pop("__spans__")
            args = {}
            for spec in layer.args:
                args[spec.name] = self.convert(spec, bound[spec.name], spans.get(spec.name),
                                               kind, env.values)
            if INVALID in args.values():
                args = None
            else:
                args = self.layer_checks(kind, args, spans, call)
        node = Node(name, kind, args or {}, [cur] if cur is not None else [], call.span,
                    self.text(call.span), env.trace)
        self.add_node(node)
        if cur is None or args is None:
            return name
        shape = self.net.nodes[cur].shape
        if shape is None:
            return name
        if layer.ranks is not None and len(shape) not in layer.ranks:
            self.report(
                "E304", f"`{kind}` expects {expects(layer)}, got {shape_text(shape)}", call.span,
                notes=[self.origin_note("its input", cur)], help=rank_help(kind, shape),
            )
            return name
        ctx = _InferContext(self, node)
        out = layer.infer(shape, args, ctx)
        if out is None:
            return name
        node.shape = out
        node.params = layer.params(shape, args)
        node.buffers = layer.buffers(shape, args)
        node.macs = layer.macs(shape, out, args)
        if kind in ("conv", "maxpool", "avgpool"):
            self.window_lint(node, shape, args)
        return name

    def layer_checks(self, kind, args, spans, call):
        """Cross-argument rules: pooling stride defaults to the kernel; pooling pad at most
        half the kernel."""
        if kind in ("maxpool", "avgpool"):
            if args["stride"] is None:
                args["stride"] = args["kernel"]
            for axis in range(2):
                k = args["kernel"][axis]  # PyTorch's limit: half the kernel, not the dilated span
                if args["pad"][axis] > k // 2:
                    self.report(
                        "E207", f"{kind} pad={args['pad'][axis]} is more than half the "
                        f"kernel {k}", spans.get("pad", call.span),
                        help=f"use pad={k // 2} at most; a window must see some input",
                    )
                    return None
        return args

    def window_lint(self, node: Node, shape, args):
        pad = args["pad"]
        if pad == "same" or args.get("ceil"):
            return
        parts = []
        sums = []
        for axis in range(2):
            n = shape[axis + 1]
            if not is_concrete(n):
                continue
            k = args["kernel"][axis]
            s = args["stride"][axis]
            p = pad[axis]
            d = args.get("dilation", (1, 1))[axis]
            eff = shapes.effective_kernel(k, d)
            if eff < s:
                continue  # windows with gaps between them skip input by design
            tail = shapes.unused_tail(n, k, s, p, d)
            if tail:
                what = "row" if axis == 0 else "column"
                parts.append(f"{tail} input {what}{'s' if tail > 1 else ''}")
                padded = f"{n} + {2 * p}" if p else f"{n}"
                sums.append(f"({padded} - {eff}) mod {s} = {(n + 2 * p - eff) % s}")
        if parts:
            fix = "ceil=true, or " if node.op != "conv" else ""
            self.report(
                "W401",
                f"{node.op} leaves the last {' and '.join(parts)} unused: "
                f"{'; '.join(dict.fromkeys(sums))}",
                node.span,
                notes=[f"input is {shape_text(shape)}"],
                help=f"use {fix}an input size that fits the stride",
            )

    # ---- merges ---------------------------------------------------------------------------
    def merge_shape(self, node: Node, merge: ast.Merge):
        shapes_in = [self.net.nodes[i].shape for i in node.inputs]
        if any(s is None for s in shapes_in):
            return None
        ranks = {len(s) for s in shapes_in}
        code = "E302" if node.op == "concat" else "E303"
        if len(ranks) > 1:
            self.report(code, f"{node.op} inputs disagree in rank: "
                        + " vs ".join(shape_text(s) for s in shapes_in), merge.span,
                        notes=self.input_notes(merge, node.inputs))
            return None
        rank = ranks.pop()
        names = ["channels", "height", "width"] if rank == 3 else ["features"]
        checked = range(1, rank) if node.op == "concat" else range(rank)
        for axis in checked:
            if not self.agree(node, merge, axis, names[axis], code):
                break  # one diagnostic per merge: the first axis that disagrees
        first = shapes_in[0]
        if node.op == "concat":
            total = 0
            for s in shapes_in:
                total = s[0] + total
            return (total,) + tuple(first[1:])
        return first

    def agree(self, node, merge, axis, axis_name, code):
        values = [self.net.nodes[i].shape[axis] for i in node.inputs]
        if all(v == values[0] for v in values):
            return True
        if not all(is_concrete(v) for v in values):
            for v in values[1:]:
                if v != values[0]:
                    self.conditions.append(Condition("eq", values[0], v, (node, merge, axis_name)))
            return True
        counts = Counter(values)
        target = max(counts, key=lambda v: (counts[v], -values.index(v)))
        shown = " vs ".join(str(v) for v in values)
        notes = self.input_notes(merge, node.inputs, axis=axis, target=target)
        help = self.merge_help(node.inputs, axis, target)
        self.report(code, f"{node.op} inputs disagree in {axis_name}: {shown}", merge.span,
                    notes=notes, help=help)
        return False

    def input_notes(self, merge, inputs, axis=None, target=None):
        notes = []
        for src, name in zip(merge.sources, inputs):
            shape = self.net.nodes[name].shape
            note = self.origin_note(src.name, name)
            if axis is not None and axis > 0 and shape[axis] != target:
                producer = self.producer(name)
                formula = self.formula(producer, axis)
                if formula:
                    note += f" ; {formula}"
            notes.append(note)
        return notes

    def origin_note(self, label, name):
        node = self.net.nodes[name]
        producer = self.net.nodes[self.producer(name)]
        shape = shape_text(node.shape) if node.shape is not None else "?"
        origin = producer.describe() if producer.op != "input" else f"input `{producer.name}`"
        return f"{label} is {shape}, from {origin}"

    def producer(self, name: str) -> str:
        """The node that last changed the shape: walk back through shape-keeping layers."""
        node = self.net.nodes[name]
        while node.op in LAYERS and not LAYERS[node.op].changes_shape and node.inputs:
            node = self.net.nodes[node.inputs[0]]
        return node.name

    def formula(self, name, axis):
        node = self.net.nodes[name]
        if node.op not in ("conv", "maxpool", "avgpool") or not node.inputs:
            return None
        n = self.net.nodes[node.inputs[0]].shape[axis]
        a = node.args
        if not is_concrete(n) or a["pad"] == "same":
            return None
        k, s, p = a["kernel"][axis - 1], a["stride"][axis - 1], a["pad"][axis - 1]
        d = a.get("dilation", (1, 1))[axis - 1]
        return shapes.conv_formula(n, k, s, p, d, a.get("ceil", False))

    def merge_help(self, inputs, axis, target):
        fixes = []
        for name in inputs:
            node = self.net.nodes[name]
            if node.shape[axis] == target:
                continue
            producer = self.net.nodes[self.producer(name)]
            if producer.op not in ("conv", "maxpool", "avgpool"):
                continue
            fix = self.fix_for(producer, axis - 1, target)
            if fix:
                fixes.append(fix)
        return "; ".join(fixes) if fixes else None

    def fix_for(self, node: Node, axis: int, target: int):
        a = node.args
        n = self.net.nodes[node.inputs[0]].shape[axis + 1]
        if not is_concrete(n) or a["pad"] == "same":
            return None
        k, s, p = a["kernel"][axis], a["stride"][axis], a["pad"][axis]
        d = a.get("dilation", (1, 1))[axis]
        ceil = a.get("ceil", False)
        eff = shapes.effective_kernel(k, d)
        options = []
        limit = eff // 2 if node.op != "conv" else eff
        for q in range(0, limit + 1):
            if q != p and shapes.pool_out(n, k, s, q, d, ceil) == target:
                options.append(f"pad={q}")
                break
        if node.op != "conv" and shapes.pool_out(n, k, s, p, d, not ceil) == target:
            options.append(f"ceil={'false' if ceil else 'true'}")
        if node.op == "conv" and s == 1 and n == target and f"pad={eff // 2}" not in options:
            options.append("pad=same")
        if not options:
            return None
        return f"use {' or '.join(options)} on the {node.op} at {node.where()}"

    # ---- blocks ---------------------------------------------------------------------------
    def block_call(self, call: ast.Call, cur, scope: str, env: Env, alias):
        block = self.blocks[call.name]
        self.called.add(call.name)
        kind = call.name
        auto = self.auto_name(scope, kind)
        block_scope = f"{scope}.{alias}" if alias else auto
        if call.name in env.stack:
            cycle = " -> ".join(env.stack[env.stack.index(call.name):] + (call.name,))
            self.report("E208", f"block `{call.name}` calls itself: {cycle}", call.span,
                        help="a block cannot contain itself; unroll it or use `* N`")
            return None
        if len(env.stack) >= MAX_BLOCK_DEPTH:
            if not self.depth_reported:
                self.depth_reported = True
                self.report("E215", f"block calls nested deeper than {MAX_BLOCK_DEPTH} levels",
                            call.span)
            return None
        if self.too_big:
            return None
        # bind parameters: defaults may use earlier parameters and global constants
        specs = [ArgSpec(p.name, "any", REQUIRED if p.default is None else p.default)
                 for p in block.params]
        bound = self.bind(call, specs, env.values, f"block `{call.name}`")
        if bound is None:
            return None
        bound.pop("__spans__")
        values = dict(self.globals)
        for param, spec in zip(block.params, specs):
            got = bound[spec.name]
            if got is spec.default and param.default is not None:
                got = self.value(param.default, values)
            values[param.name] = got
        inner = Env(
            tensors={},
            values=values,
            in_node=cur,
            in_block=True,
            trace=env.trace + ((call.name, call.span),),
            stack=env.stack + (call.name,),
        )
        outer_trace = self.trace
        self.trace = inner.trace
        try:
            for item in block.body:
                if isinstance(item, ast.LetStmt):
                    self.let(item, inner.values, inner.tensors)
                else:
                    node = self.chain(item.chain, f"{block_scope}.{item.name}", inner)
                    if self.define(item.name, item.name_span, inner.tensors, inner.values):
                        inner.tensors[item.name] = Tensor(node, item.name_span, "binding")
            return self.chain(block.ret, block_scope, inner)
        finally:
            self.trace = outer_trace

    # ---- after the walk --------------------------------------------------------------------
    def finish(self):
        net = self.net
        expansion_cut = self.depth_reported or self.too_big or any(
            d.code == "E208" for d in self.diags)
        for name, block in self.blocks.items():
            if name not in self.called:
                if expansion_cut:
                    continue  # it may be called from a block that was not expanded
                self.report("W403", f"block `{name}` is never called", block.name_span,
                            help="call it in a chain, or delete it")
            else:
                for item in block.body:
                    if isinstance(item, ast.Binding) and item.name_span not in self.used:
                        self.report("W402", f"binding `{item.name}` in block `{name}` is never "
                                    "used", item.name_span)
        for name, tensor in self.tensors.items():
            if tensor.span in self.used or tensor.kind == "output":
                continue
            if tensor.kind == "input":
                self.report("W404", f"input `{name}` is never used", tensor.span)
            else:
                self.report("W402", f"binding `{name}` is never used", tensor.span,
                            help="use it in an output, or make it one: `output NAME = ...`")
        if not net.inputs:
            self.report("E216", "the network has no input", None,
                        help="declare one: `input image: [3, 224, 224]`")
        declared = any(isinstance(s, ast.OutputStmt) for s in self.module.statements)
        if not declared:
            self.report("E217", "the network has no output", None,
                        help="mark a result: `output logits = x -> dense(10)`")
        declared = self.symbols_declared()
        for name in self.sizes:
            if name not in declared:
                known = ", ".join(f"`{s}`" for s in sorted(declared))
                self.report("E219", f"--size gives `{name}`, but no input has that symbol", None,
                            notes=[f"the inputs' symbols are {known}" if known else
                                   "the inputs have no size symbols"])
        net.symbols = list(self.symbols)
        self.solve_sizes()
        net.diagnostics = self.diags

    def symbols_declared(self):
        out = set()
        for stmt in self.module.statements:
            if isinstance(stmt, ast.InputStmt):
                out |= {d.value for d in stmt.dims if isinstance(d.value, str)}
        return out

    def solve_sizes(self):
        net = self.net
        by_symbol: dict = {}
        for cond in self.conditions:
            syms = cond.symbols()
            if len(syms) == 1:
                by_symbol.setdefault(next(iter(syms)), []).append(cond)
            else:
                net.conditions.append(cond)
        for symbol in self.symbols:
            conds = by_symbol.get(symbol, [])
            valid = solve(symbol, conds, {})
            net.valid_sizes.append(valid)
            if valid.start is None:
                self.explain_unsatisfiable(symbol, conds)

    def explain_unsatisfiable(self, symbol, conds):
        for cond in conds:
            if cond.kind != "eq":
                continue
            node, merge, axis_name = cond.origin
            code = "E306"
            self.report(
                code,
                f"no value of {symbol} makes the {node.op} inputs agree in {axis_name}: "
                f"{cond.lhs} vs {cond.rhs}",
                merge.span,
                notes=self.input_notes(merge, node.inputs),
            )
            return
        self.report("E306", f"no value of {symbol} makes the network valid", None)


class _InferContext:
    """What a shape rule may do: report a problem, or require a symbolic size to be >= 1."""

    def __init__(self, elab: Elaborator, node: Node):
        self.elab = elab
        self.node = node

    def error(self, code, message, notes=(), help=None):
        elab = self.elab
        node = self.node
        notes = list(notes)
        if node.inputs:
            notes.insert(0, elab.origin_note("input", node.inputs[0]))
        elab.report(code, message, node.span, notes, help)

    def positive(self, size, what):
        self.elab.conditions.append(Condition("ge1", size, None, (self.node, what)))


def _pipe_help(start: ast.Merge) -> str:
    """`relu(x)` at a chain's start: suggest `x -> relu`."""
    source = start.sources[0].name if start.sources else "x"
    return f"pipe a tensor into it: `{source} -> {start.op}`"


def _show(value) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, Word):
        return value.name
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, float):
        text = f"{value:g}"
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, Expr):
        return str(value)
    return str(value)
