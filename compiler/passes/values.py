"""Constant values: literals, names of constants and parameters, lists, arithmetic.

A value that cannot be evaluated is `INVALID`, its problem already reported; a bare word
that names no constant is a `Word`, which an argument may take as an enum value (`same`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...dsl import syntax as ast
from ...dsl.diagnostics import Span
from ...dsl.parser import MAX_INT, shown_integer
from ..symbolic import Expr
from .report import Reporter, did_you_mean_help


class Invalid:
    """A value that could not be evaluated; its problem is already reported."""

    def __repr__(self):
        return "<invalid>"


INVALID = Invalid()


@dataclass(frozen=True)
class Word:
    """A bare word in a value position that names no constant: an enum value like `same`."""

    name: str
    span: Span


def show(value) -> str:
    """A value as the language writes it: `true`, `[3, 3]`, `1.0`."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, Word):
        return value.name
    if isinstance(value, list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, float):
        text = f"{value:g}"
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, Expr):
        return str(value)
    return str(value)


def listing(items, last: str = "and") -> str:
    """``a, b and c``."""
    items = list(items)
    if len(items) < 2:
        return "".join(items)
    return f"{', '.join(items[:-1])} {last} {items[-1]}"


class Evaluator:
    """Evaluates value expressions against a dict of named values (constants, parameters).

    ``tensors``: the top-level tensors, named in the note of an undefined value that is one.
    """

    def __init__(self, reporter: Reporter, tensors: dict):
        self.reporter = reporter
        self.tensors = tensors

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

    def number(self, v, values: dict):
        out = self.value(v, values)
        if out is INVALID:
            return INVALID
        if isinstance(out, Word):
            self.undefined(out, values)
            return INVALID
        if isinstance(out, bool) or not isinstance(out, (int, float)):
            self.reporter.report("E206", v.span, variant="arithmetic", value=show(out))
            return INVALID
        return out

    def binop(self, v: ast.BinOp, values: dict):
        left = self.number(v.left, values)
        right = self.number(v.right, values)
        if left is INVALID or right is INVALID:
            return INVALID
        if v.op in "+-*":
            out = left + right if v.op == "+" else left - right if v.op == "-" else left * right
            if isinstance(out, int) and abs(out) > MAX_INT:
                self.reporter.report("E223", v.span, left=show(left), op=v.op,
                                     right=show(right), value=shown_integer(str(out)),
                                     limit=MAX_INT,
                                     help="sizes, counts and arguments are at most 2**63 - 1")
                return INVALID
            return out
        if not (isinstance(left, int) and isinstance(right, int)):
            self.reporter.report("E206", v.span, variant="floor_division", left=show(left),
                                 right=show(right))
            return INVALID
        if right == 0:
            self.reporter.report("E207", v.right.span, variant="division_by_zero")
            return INVALID
        return left // right

    def undefined(self, word: Word, values: dict, expected: str = ""):
        """E201 for a word that names no constant where a value is needed."""
        candidates = [k for k, val in values.items() if not isinstance(val, Word)]
        notes = []
        if word.name in self.tensors:
            notes.append(f"`{word.name}` is a tensor; arguments take numbers, lists and words")
        help = did_you_mean_help(word.name, candidates)
        if expected:
            self.reporter.report("E201", word.span, variant="expected", notes=notes, help=help,
                                 name=word.name, expected=expected)
        else:
            self.reporter.report("E201", word.span, notes=notes, help=help, name=word.name)
