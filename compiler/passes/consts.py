"""Constants set from outside the file: `--let NAME=VALUE` on the command line and
``cnnc.compile(source, consts={...})`` in Python.

Each one replaces the value of the model's top-level ``let NAME = ...``. A value given as
text is read as a `.cnn` value (``32``, ``0.5``, ``[3, 3]``, ``true``, ``bilinear``,
``2 * 16``); a Python value may be an int, a float, a bool, a string or a list of them. A
name the model does not define at its top level is an E221, a value that cannot be read an
E222; both name the constant and what was given.
"""

from __future__ import annotations

import math

from ...dsl import syntax as ast
from ...dsl.parser import MAX_INT, parse
from .report import Reporter, did_you_mean_help
from .values import INVALID, Evaluator, Word

MAX_TEXT = 1000  # characters of a constant given as text


def read_consts(consts: dict | None, reporter: Reporter) -> dict:
    """The values of ``consts`` as the checker holds constants (ints, floats, bools, words,
    lists); a constant that cannot be read is reported (E222) and left out."""
    out = {}
    for name, given in (consts or {}).items():
        value = _value(name, given, reporter)
        if value is not INVALID:
            out[name] = value
    return out


def check_consts_used(module: ast.Module, consts: dict, reporter: Reporter) -> None:
    """E221 for each constant that names no top-level ``let`` of the model."""
    defined = [s.name for s in module.statements if isinstance(s, ast.LetStmt)]
    for name in consts:
        if name in defined:
            continue
        known = ", ".join(f"`{n}`" for n in defined)
        notes = [f"the model's constants are {known}" if known else
                 "the model has no top-level `let` constants"]
        reporter.report("E221", None, name=name, notes=notes,
                        help=did_you_mean_help(name, defined))


def _value(name: str, given, reporter: Reporter):
    if not (isinstance(name, str) and name.isidentifier()):
        reporter.report("E222", None, name=_short(repr(name)), value="",
                        reason="a constant's name is a name such as `width`")
        return INVALID
    if isinstance(given, str):
        return _from_text(name, given, reporter)
    value = _from_python(given)
    if value is INVALID:
        reporter.report("E222", None, name=name, value=_short(repr(given)),
                        reason=f"expected a number, a bool, a word or a list of them, "
                        f"got a Python {type(given).__name__}")
    return value


def _from_python(given):
    if isinstance(given, bool):
        return given
    if isinstance(given, int):
        return given if abs(given) <= MAX_INT else INVALID
    if isinstance(given, float):
        return given if math.isfinite(given) else INVALID
    if isinstance(given, str):
        return Word(given, None) if given.isidentifier() else INVALID
    if isinstance(given, (list, tuple)):
        items = [_from_python(item) for item in given]
        return INVALID if any(item is INVALID for item in items) else items
    return INVALID


def _from_text(name: str, text: str, reporter: Reporter):
    def refuse(reason: str):
        reporter.report("E222", None, name=name, value=_short(text), reason=reason)
        return INVALID

    if not text.strip():
        return refuse("the value is empty")
    if len(text) > MAX_TEXT:
        return refuse(f"a value is at most {MAX_TEXT:,} characters, got {len(text):,}")
    if not text.isprintable():
        return refuse("the value holds a control character")
    module, problems = parse(f"let {name} = {text}\n", "<--let>")
    statements = [] if module is None else module.statements
    if problems or len(statements) != 1 or not isinstance(statements[0], ast.LetStmt):
        return refuse("it is not a value such as 32, 0.5, [3, 3], true or bilinear")
    inner = Reporter("<--let>")
    value = Evaluator(inner, {}).value(statements[0].value, {})
    if value is INVALID or inner.diagnostics:
        first = inner.diagnostics[0].message if inner.diagnostics else "it cannot be evaluated"
        return refuse(first)
    return value


def _short(text: str, limit: int = 60) -> str:
    text = text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit - 3] + "..."

