"""Code actions: the checker's `help` lines that name a concrete change, made into edits.

The checker's diagnostics carry their help as text (`dsl/diagnostics.py`); these are the
shapes of help that say exactly what to change, and the edit each becomes:

- ``did you mean `conv`?`` -> the misspelt name replaced;
- ``use pad=1 or ceil=true on the maxpool at 9:23``, ``use ceil=true, ...``,
  ``3 divides by groups=1 or groups=3``, ``use mode=nearest ...`` -> one action per
  ``name=value`` that is an argument of the layer (the one "at" names, else the one the
  diagnostic is on): its value replaced, or the argument added;
- ``insert `flatten` (or `global_avgpool -> flatten`) before `dense``` -> the stages
  inserted before the call;
- ``use `conv1d` on a [C, L] signal`` -> the layer's name replaced.

An edit is ``(span, new text)``; an empty span inserts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..compiler.check import check_source
from ..dsl import syntax as ast
from ..dsl.diagnostics import Diagnostic, Span
from ..ops import LAYERS
from .analysis import WORD, Analysis

DID_YOU_MEAN = re.compile(r"did you mean `([A-Za-z_][A-Za-z0-9_]*)`\?")
SETTING = re.compile(r"(?<![\w`])([a-z_][a-z0-9_]*)=(\[[^\]]*\]|[A-Za-z0-9_.+-]+)")
ON_THE = re.compile(r"\bon the \w+ at (\d+):(\d+)")
INSERT = re.compile(r"insert (.*) before `([A-Za-z_]\w*)`")
RENAME_LAYER = re.compile(r"^`\w+` works on .*; use `([A-Za-z_]\w*)` on a")


@dataclass
class Fix:
    title: str
    edits: list  # (Span, text)
    diagnostic: Diagnostic
    preferred: bool = False


def fixes(analysis: Analysis, diag: Diagnostic) -> list[Fix]:
    """The edits a diagnostic's help proposes (none when its help names no exact change)."""
    help = diag.help
    if not help or diag.span is None or analysis.module is None:
        return []
    out: list[Fix] = []
    m = DID_YOU_MEAN.search(help)
    if m:
        out += _replace_name(analysis, diag, m.group(1))
    m = INSERT.search(help)
    if m:
        out += _insert_before(analysis, diag, m.group(1), m.group(2))
    m = RENAME_LAYER.search(help)
    if m:
        out += _rename_layer(analysis, diag, m.group(1))
    out += _settings(analysis, diag, help)
    out = [fix for fix in out if _works(analysis, diag, fix)]
    if len(out) == 1:
        out[0].preferred = True
    return out


def _works(analysis: Analysis, diag: Diagnostic, fix: Fix) -> bool:
    """Whether the checker agrees: after the edit, fewer diagnostics of this code remain
    (a help may list a value that mends one rule and breaks another, as a `groups` that
    divides the input channels but not the output's)."""
    before = sum(d.code == diag.code for d in analysis.diagnostics)
    after = check_source(apply(analysis.text, fix.edits), analysis.file, analysis.sizes)
    return sum(d.code == diag.code for d in after.diagnostics) < before


def _replace_name(analysis: Analysis, diag: Diagnostic, name: str) -> list[Fix]:
    span = diag.span
    line = analysis.lines[span.line - 1]
    m = WORD.match(line, span.column - 1)
    if m is None:
        return []
    where = Span(span.line, m.start() + 1, span.line, m.end() + 1)
    return [Fix(f"Change `{m.group(0)}` to `{name}`", [(where, name)], diag)]


def _insert_before(analysis: Analysis, diag: Diagnostic, said: str, op: str) -> list[Fix]:
    call = _call_on(analysis, diag.span)
    if call is None or call.name != op:
        return []
    start = Span(call.span.line, call.span.column, call.span.line, call.span.column)
    out = []
    for stages in re.findall(r"`([^`]+)`", said):
        out.append(Fix(f"Insert `{stages}` before `{op}`", [(start, f"{stages} -> ")], diag))
    return out


def _rename_layer(analysis: Analysis, diag: Diagnostic, name: str) -> list[Fix]:
    call = _call_on(analysis, diag.span)
    if call is None or name not in LAYERS:
        return []
    return [Fix(f"Use `{name}` instead of `{call.name}`", [(call.name_span, name)], diag)]


def _settings(analysis: Analysis, diag: Diagnostic, help: str) -> list[Fix]:
    m = ON_THE.search(help)
    if m:
        call = analysis.index.call_starting(int(m.group(1)), int(m.group(2)))
    else:
        call = _call_on(analysis, diag.span)
    if call is None or call.name not in LAYERS:
        return []
    specs = [spec.name for spec in LAYERS[call.name].args]
    out = []
    seen = set()
    for name, value in SETTING.findall(help):
        if name not in specs or (name, value) in seen:
            continue
        seen.add((name, value))
        edit = set_argument(call, specs, name, value)
        where = f" on the {call.name} at {call.span.line}:{call.span.column}"
        out.append(Fix(f"Use {name}={value}{where}", [edit], diag))
    return out


def set_argument(call: ast.Call, specs: list, name: str, value: str) -> tuple:
    """The edit that makes argument ``name`` of ``call`` read ``value``: its value replaced
    where it is given (by keyword or by position), else ``name=value`` added."""
    positional = [arg for arg in call.args if arg.name is None]
    for arg in call.args:
        if arg.name == name:
            return arg.value.span, value
    index = specs.index(name)
    if index < len(positional):
        return positional[index].value.span, value
    if call.span == call.name_span:  # a bare call: `relu`
        end = call.name_span
        return Span(end.end_line, end.end_column, end.end_line, end.end_column), f"({name}={value})"
    if call.args:
        last = call.args[-1].span
        return Span(last.end_line, last.end_column, last.end_line, last.end_column), \
            f", {name}={value}"
    close = Span(call.span.end_line, call.span.end_column - 1, call.span.end_line,
                 call.span.end_column - 1)  # just before the `)`
    return close, f"{name}={value}"


def _call_on(analysis: Analysis, span: Span) -> ast.Call | None:
    """The call a diagnostic is on: the one with its span, else the innermost around it."""
    for call in analysis.index.calls:
        if call.span == span or call.name_span == span:
            return call
    return analysis.index.call_at(span.line, span.column)


def apply(text: str, edits: list) -> str:
    """``text`` with the edits made (spans of the checker's lines and columns); for tests
    and for checking that a fix does what it says."""
    starts = [0]
    for line in text.split("\n")[:-1]:
        starts.append(starts[-1] + len(line) + 1)

    def offset(line, column):
        return starts[line - 1] + column - 1

    out = text
    for span, new in sorted(edits, key=lambda e: (e[0].line, e[0].column), reverse=True):
        a = offset(span.line, span.column)
        b = offset(span.end_line, span.end_column)
        out = out[:a] + new + out[b:]
    return out
