"""Diagnostics as data: spans, the code registry, and the one renderer.

Every problem cnnc finds in a `.cnn` file becomes a `Diagnostic` value; passes collect them
and never raise on the first one. `render` draws them the way a compiler does: location,
code, message, the numbered source line with carets, then notes and a help line.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Span:
    """A region of source text; lines and columns count from 1, `end_column` is exclusive."""

    line: int
    column: int
    end_line: int
    end_column: int

    def cover(self, other: "Span | None") -> "Span":
        if other is None:
            return self
        start = min((self.line, self.column), (other.line, other.column))
        end = max((self.end_line, self.end_column), (other.end_line, other.end_column))
        return Span(start[0], start[1], end[0], end[1])

    def at(self) -> str:
        return f"{self.line}:{self.column}"


# The stable codes. Never renumber; add new ones at the end of their group.
CODES: dict[str, str] = {
    "E101": "unexpected token",
    "E102": "unexpected end of file",
    "E103": "invalid character",
    "E104": "file is not valid UTF-8",
    "E105": "nesting too deep",
    "E201": "undefined name",
    "E202": "duplicate name",
    "E203": "unknown layer or block",
    "E204": "missing argument",
    "E205": "unknown argument",
    "E206": "ill-typed argument",
    "E207": "invalid argument value",
    "E208": "recursive block",
    "E209": "too many positional arguments",
    "E210": "argument given twice",
    "E211": "a chain must start with a tensor or a merge",
    "E212": "`in` outside a block",
    "E213": "invalid repeat count",
    "E214": "merge needs at least two inputs",
    "E215": "block calls nested too deeply",
    "E216": "network has no input",
    "E217": "network has no output",
    "E218": "invalid input shape",
    "E219": "unknown size symbol",
    "E220": "network too large",
    "E301": "output size below 1",
    "E302": "concat inputs disagree",
    "E303": "add inputs disagree",
    "E304": "wrong input rank",
    "E305": "channels not divisible",
    "E306": "no input size makes the network valid",
    "W401": "strided window leaves input unused",
    "W402": "binding never used",
    "W403": "block never called",
    "W404": "input never used",
}


@dataclass
class Diagnostic:
    code: str
    message: str
    span: Span | None
    notes: list[str] = field(default_factory=list)
    help: str | None = None
    file: str = "<input>"

    @property
    def severity(self) -> str:
        return "warning" if self.code.startswith("W") else "error"

    def to_json(self) -> dict:
        span = self.span
        notes = list(self.notes)
        if self.help:
            notes.append("help: " + self.help)
        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "file": self.file,
            "line": span.line if span else None,
            "column": span.column if span else None,
            "end_line": span.end_line if span else None,
            "end_column": span.end_column if span else None,
            "notes": notes,
        }


def sort_key(diag: Diagnostic) -> tuple:
    span = diag.span
    if span is None:
        return (diag.file, 0, 0, diag.code)
    return (diag.file, span.line, span.column, diag.code)


def render(diag: Diagnostic, source: "str | list[str] | None") -> str:
    """Draw one diagnostic as text, rustc style. `source` is the text, or its lines already
    split by `source_lines` (pass those when rendering many diagnostics of one file)."""
    span = diag.span
    where = f"{diag.file}:{span.line}:{span.column}" if span else diag.file
    out = [f"{where}: {diag.severity}[{diag.code}]: {diag.message}"]
    if source is None:
        lines = []
    elif isinstance(source, str):
        lines = source_lines(source)
    else:
        lines = source
    if span is not None and 1 <= span.line <= len(lines):
        text = lines[span.line - 1].expandtabs(1)
        number = str(span.line)
        gutter = " " * len(number)
        end = span.end_column if span.end_line == span.line else len(text) + 1
        width = max(1, end - span.column)
        out.append(f"{gutter} |")
        out.append(f"{number} | {text}")
        out.append(f"{gutter} | {' ' * (span.column - 1)}{'^' * width}")
        pad = gutter
    else:
        pad = " "
    for note in diag.notes:
        out.append(f"{pad} = note: {note}")
    if diag.help:
        out.append(f"{pad} = help: {diag.help}")
    return "\n".join(out)


def source_lines(text: str) -> list[str]:
    """Lines as the parser counts them: split at \n only (a \r before it is dropped)."""
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def did_you_mean(name: str, candidates) -> str | None:
    """The closest candidate by edit distance, if it is close enough to be a likely typo."""
    best = None
    best_cost = None
    for cand in candidates:
        cost = _edit_distance(name.lower(), cand.lower())
        if best_cost is None or cost < best_cost:
            best, best_cost = cand, cost
    if best is None:
        return None
    limit = max(1, len(name) // 3) if len(name) >= 3 else 0
    return best if best_cost <= limit else None


def _edit_distance(a: str, b: str) -> int:
    # Optimal string alignment distance (Levenshtein plus adjacent swaps).
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cost = 0 if ca == cb else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[len(b)]
