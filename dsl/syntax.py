"""Syntax-tree dataclasses. Every node carries the `Span` of the text it came from."""

from __future__ import annotations

from dataclasses import dataclass, field

from .diagnostics import Span


# ---- values -------------------------------------------------------------------------------

@dataclass
class IntLit:
    value: int
    span: Span
    depth: int = 1


@dataclass
class FloatLit:
    value: float
    span: Span
    depth: int = 1


@dataclass
class BoolLit:
    value: bool
    span: Span
    depth: int = 1


@dataclass
class NameRef:
    """A name in a value position: a constant, a block parameter, or a bare enum word."""

    name: str
    span: Span
    depth: int = 1


@dataclass
class BinOp:
    op: str  # one of + - * //
    left: "Value"
    right: "Value"
    span: Span
    depth: int = 1


@dataclass
class Neg:
    operand: "Value"
    span: Span
    depth: int = 1


@dataclass
class ListLit:
    items: list["Value"]
    span: Span
    depth: int = 1


Value = IntLit | FloatLit | BoolLit | NameRef | BinOp | Neg | ListLit


# ---- chains -------------------------------------------------------------------------------

@dataclass
class Arg:
    name: str | None  # None for a positional argument
    value: Value
    span: Span
    name_span: Span | None = None


@dataclass
class Call:
    """A layer or block call: `relu`, `conv(64, 3, pad=1)`."""

    name: str
    args: list[Arg]
    span: Span
    name_span: Span


@dataclass
class Stage:
    call: Call
    repeat: Value | None
    alias: str | None
    alias_span: Span | None
    span: Span


@dataclass
class Source:
    """A tensor name at the start of a chain, or `in` inside a block."""

    name: str
    span: Span


@dataclass
class Merge:
    """`concat(a, b, ...)` or `add(a, b, ...)` at the start of a chain."""

    op: str
    sources: list[Source]
    span: Span
    name_span: Span


@dataclass
class Chain:
    start: Source | Merge
    stages: list[Stage]
    span: Span


# ---- statements ---------------------------------------------------------------------------

@dataclass
class NetworkStmt:
    name: str
    span: Span


@dataclass
class Dim:
    value: int | str  # a positive integer or a size symbol
    span: Span


@dataclass
class InputStmt:
    name: str
    dims: list[Dim]
    span: Span
    name_span: Span


@dataclass
class LetStmt:
    name: str
    value: Value
    span: Span
    name_span: Span


@dataclass
class Binding:
    name: str
    chain: Chain
    span: Span
    name_span: Span


@dataclass
class OutputStmt:
    name: str | None
    chain: Chain
    span: Span
    name_span: Span | None


@dataclass
class Param:
    name: str
    default: Value | None
    span: Span


@dataclass
class BlockDef:
    name: str
    params: list[Param]
    body: list[LetStmt | Binding]
    ret: Chain
    span: Span
    name_span: Span


Statement = NetworkStmt | InputStmt | LetStmt | Binding | OutputStmt | BlockDef


@dataclass
class Module:
    statements: list[Statement] = field(default_factory=list)
