"""What every name in a `.cnn` file means: its definitions (inputs, bindings, outputs, `let`
constants, blocks and their parameters) and the places that use them, read off the syntax
tree with the language's scoping rules (spec section 4):

- a chain at the top level reads top-level tensors (inputs, bindings, named outputs);
- a chain inside a block reads only that block's own bindings and `in`;
- a value reads the block's parameters and `let`s, then the top-level `let`s;
- a call names a block (or a built-in layer, which has no definition in the file);
- a keyword argument of a block call names one of the block's parameters.

Positions are the syntax tree's spans: lines and columns from 1, the end exclusive.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..dsl import syntax as ast
from ..dsl.diagnostics import Span


@dataclass
class Definition:
    name: str
    kind: str  # input | binding | output | let | block | param
    span: Span  # the name where it is defined
    whole: Span  # the whole statement (the outline's range)
    block: "ast.BlockDef | None" = None  # the block it belongs to, None at the top level
    node: object = None  # the syntax node: the statement, parameter or block

    @property
    def where(self) -> str:
        return f"{self.span.line}:{self.span.column}"


@dataclass
class Reference:
    name: str
    span: Span
    target: Definition | None  # None: a layer, a merge, `in`, or a name defined nowhere
    kind: str  # tensor | value | call | argument | size | in
    chain: "ast.Chain | None" = None  # for `in`: the chain it starts or is merged in


@dataclass
class Index:
    definitions: list[Definition] = field(default_factory=list)
    references: list[Reference] = field(default_factory=list)
    blocks: dict = field(default_factory=dict)  # name -> Definition of the first block
    calls: list[ast.Call] = field(default_factory=list)  # every call, in source order
    merges: list[ast.Merge] = field(default_factory=list)

    def at(self, line: int, column: int):
        """The reference or definition whose name covers (line, column), 1-based; a cursor
        just after a name still points at it. None when there is none."""
        best = None
        for item in self.references + self.definitions:
            if contains(item.span, line, column):
                if best is None or _size(item.span) < _size(best.span):
                    best = item
        return best

    def uses(self, definition: Definition) -> list[Reference]:
        return [r for r in self.references if r.target is definition]

    def call_at(self, line: int, column: int) -> ast.Call | None:
        """The innermost call whose text covers (line, column)."""
        best = None
        for call in self.calls:
            if contains(call.span, line, column):
                if best is None or _size(call.span) < _size(best.span):
                    best = call
        return best

    def call_starting(self, line: int, column: int) -> ast.Call | None:
        """The call whose text starts at (line, column), as a note's "at 9:23" says."""
        for call in self.calls:
            if (call.span.line, call.span.column) == (line, column):
                return call
        return None


def contains(span: Span, line: int, column: int) -> bool:
    return (span.line, span.column) <= (line, column) <= (span.end_line, span.end_column)


def _size(span: Span) -> tuple:
    return (span.end_line - span.line, span.end_column - span.column)


def build(module: ast.Module) -> Index:
    """The index of a parsed module."""
    index = Index()
    top_tensors: dict = {}
    top_values: dict = {}
    statements = module.statements
    for stmt in statements:  # blocks and constants may be used above their definition
        if isinstance(stmt, ast.BlockDef):
            define = Definition(stmt.name, "block", stmt.name_span, stmt.span, None, stmt)
            index.definitions.append(define)
            index.blocks.setdefault(stmt.name, define)
    walker = _Walker(index)
    for stmt in statements:
        if isinstance(stmt, ast.BlockDef):
            for param in stmt.params:
                span = param.span
                name_span = Span(span.line, span.column, span.line, span.column + len(param.name))
                walker.params[id(param)] = Definition(param.name, "param", name_span, span,
                                                      stmt, param)
    for stmt in statements:
        if isinstance(stmt, ast.InputStmt):
            for dim in stmt.dims:
                if isinstance(dim.value, str):
                    walker.refer(dim.value, dim.span, top_values, "size")
            d = Definition(stmt.name, "input", stmt.name_span, stmt.span, None, stmt)
            index.definitions.append(d)
            top_tensors.setdefault(stmt.name, d)
        elif isinstance(stmt, ast.LetStmt):
            walker.value(stmt.value, top_values)
            d = Definition(stmt.name, "let", stmt.name_span, stmt.span, None, stmt)
            index.definitions.append(d)
            top_values.setdefault(stmt.name, d)
        elif isinstance(stmt, ast.Binding):
            walker.chain(stmt.chain, top_tensors, top_values)
            d = Definition(stmt.name, "binding", stmt.name_span, stmt.span, None, stmt)
            index.definitions.append(d)
            top_tensors.setdefault(stmt.name, d)
        elif isinstance(stmt, ast.OutputStmt):
            walker.chain(stmt.chain, top_tensors, top_values)
            if stmt.name is not None:
                d = Definition(stmt.name, "output", stmt.name_span, stmt.span, None, stmt)
                index.definitions.append(d)
                top_tensors.setdefault(stmt.name, d)
        elif isinstance(stmt, ast.BlockDef):
            walker.block(stmt, top_values)
    index.calls.sort(key=lambda c: (c.span.line, c.span.column))
    return index


class _Walker:
    def __init__(self, index: Index):
        self.index = index
        self.params: dict = {}  # id of an ast.Param -> its Definition

    def refer(self, name: str, span: Span, scope: dict, kind: str, *outer: dict):
        target = scope.get(name)
        for more in outer:
            if target is None:
                target = more.get(name)
        self.index.references.append(Reference(name, span, target, kind))

    def block(self, stmt: ast.BlockDef, top_values: dict):
        index = self.index
        values: dict = {}
        tensors: dict = {}
        for param in stmt.params:
            if param.default is not None:
                self.value(param.default, values, top_values)
            d = self.params[id(param)]
            index.definitions.append(d)
            values.setdefault(param.name, d)
        for item in stmt.body:
            if isinstance(item, ast.LetStmt):
                self.value(item.value, values, top_values)
                d = Definition(item.name, "let", item.name_span, item.span, stmt, item)
                index.definitions.append(d)
                values.setdefault(item.name, d)
            else:
                self.chain(item.chain, tensors, values, top_values)
                d = Definition(item.name, "binding", item.name_span, item.span, stmt, item)
                index.definitions.append(d)
                tensors.setdefault(item.name, d)
        self.chain(stmt.ret, tensors, values, top_values)

    def chain(self, chain: ast.Chain, tensors: dict, *values: dict):
        start = chain.start
        if isinstance(start, ast.Source):
            self.source(start, tensors, chain)
        else:
            self.index.merges.append(start)
            for src in start.sources:
                self.source(src, tensors, chain)
        for stage in chain.stages:
            self.call(stage.call, *values)
            if stage.repeat is not None:
                self.value(stage.repeat, *values)

    def source(self, src: ast.Source, tensors: dict, chain: ast.Chain):
        if src.name == "in":
            self.index.references.append(Reference("in", src.span, None, "in", chain))
        else:
            self.refer(src.name, src.span, tensors, "tensor")

    def call(self, call: ast.Call, *values: dict):
        index = self.index
        index.calls.append(call)
        block = index.blocks.get(call.name)
        index.references.append(Reference(call.name, call.name_span, block, "call"))
        params = {}
        if block is not None:
            for param in block.node.params:
                params.setdefault(param.name, self.params[id(param)])
        for arg in call.args:
            if arg.name is not None and arg.name_span is not None and block is not None:
                index.references.append(
                    Reference(arg.name, arg.name_span, params.get(arg.name), "argument"))
            self.value(arg.value, *values)

    def value(self, value, *scopes: dict):
        stack = [value]
        while stack:  # values may nest deeply: no recursion
            v = stack.pop()
            if isinstance(v, ast.NameRef):
                self.refer(v.name, v.span, scopes[0], "value", *scopes[1:])
            elif isinstance(v, ast.BinOp):
                stack += [v.right, v.left]
            elif isinstance(v, ast.Neg):
                stack.append(v.operand)
            elif isinstance(v, ast.ListLit):
                stack += reversed(v.items)
