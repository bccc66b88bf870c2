"""Diagnostics as data: spans, the code registry with its messages, and the one renderer.

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


@dataclass(frozen=True)
class Code:
    """One diagnostic code: its title (the short name used in the docs) and the templates its
    messages are made from, with `str.format` fields that the reporting site fills in.

    ``message`` is the usual template; ``variants`` holds the others by name, where one code
    covers several situations (E202 for a duplicate binding, block, parameter, output, ...).
    """

    title: str
    message: str
    variants: dict = field(default_factory=dict)

    def format(self, variant: str | None = None, **values) -> str:
        template = self.message if variant is None else self.variants[variant]
        return template.format(**values)

    def templates(self) -> list[str]:
        return [self.message, *self.variants.values()]


# A merge's two codes (E302 concat, E303 add) share their messages.
_MERGE_MESSAGE = "{op} inputs disagree in {axis}: {values}"
_MERGE_VARIANTS = {"rank": "{op} inputs disagree in rank: {shapes}"}

# The stable codes. Never renumber; add new ones at the end of their group.
CODES: dict[str, Code] = {
    # syntax (the parser, and decoding the file)
    "E101": Code("unexpected token", "unexpected `{token}`; expected {expected}"),
    "E102": Code("unexpected end of file", "unexpected end of file; expected {expected}"),
    "E103": Code("invalid character", "invalid character `{char}`"),
    "E104": Code("file is not valid UTF-8",
                 "byte 0x{byte:02x} at offset {offset} is not valid UTF-8"),
    "E105": Code("nesting too deep", "expression nested deeper than {depth} levels"),
    "E106": Code("integer too large", "integer {value} is larger than {limit:,}"),
    "E107": Code("file too large",
                 "the file is larger than {limit:,} MiB, the most a model file may be"),
    # names and arguments
    "E201": Code("undefined name", "undefined name `{name}`", {
        "expected": "undefined name `{name}` (expected {expected})",
    }),
    "E202": Code("duplicate name", "`{name}` is already defined", {
        "block": "block `{name}` is defined twice",
        "builtin": "block `{name}` has the name of a built-in layer",
        "parameter": "block `{block}` has two parameters named `{name}`",
        "network": "the network is named twice",
        "output": "output `{name}` is defined twice",
        "layer": "layer name `{name}` is already taken",
        "claimed": "the name `{name}` is claimed twice: by {first} and by {second}",
    }),
    "E203": Code("unknown layer or block", "unknown layer or block `{name}`", {
        "merge": "unknown merge `{name}`",
        "merge_as_layer": "`{name}` is a merge and starts a chain",
        "tensor_as_layer": "`{name}` is a tensor, not a layer",
    }),
    "E204": Code("missing argument", "{what} is missing argument `{name}`"),
    "E205": Code("unknown argument", "{what} has no argument `{name}`"),
    "E206": Code("ill-typed argument", "{label} expects {expected}, got {value}", {
        "arithmetic": "expected a number in arithmetic, got {value}",
        "floor_division": "`//` needs integers, got {left} // {right}",
    }),
    "E207": Code("invalid argument value", "{label} must be at least {minimum}, got {value}", {
        "division_by_zero": "division by zero",
        "finite": "{label} must be a finite number, got {value:g}",
        "probability": "{label} must be in [0, 1), got {value:g}",
        "positive": "{label} must be above 0, got {value:g}",
        "unit": "{label} must be in [0, 1], got {value:g}",
        "pool_pad": "{op} pad={pad} is more than half the kernel {kernel}",
        "choice": "{label} must be {choices}, got `{value}`",
        "beyond": "{op} {arg}={value} is beyond the {count} input {unit}",
        "transpose_output_pad": "{op} output_pad={value} must be below max(stride, dilation) "
                                "= {arithmetic}",
        "spatial_count": "{op} {arg}={value} gives {count} values, but a {map} map has {dims}",
        "mode_rank": "{op} mode={mode} needs a {need} map, got {shape}, a {have} map",
        "align_corners": "{op} align_corners=true needs mode={modes}; mode is {mode}",
    }),
    "E208": Code("recursive block", "block `{name}` calls itself: {cycle}"),
    "E209": Code("too many positional arguments",
                 "{what} takes {count} argument{s} ({names}), got {given}", {
                     "after_keyword": "a positional argument after a keyword argument",
                 }),
    "E210": Code("argument given twice", "argument `{name}` of {what} is given twice"),
    "E211": Code("a chain must start with a tensor or a merge",
                 "a chain must start with a tensor or a merge, not the {kind} `{name}`"),
    "E212": Code("`in` outside a block", "`in` is only defined inside a block"),
    "E213": Code("invalid repeat count",
                 "repeat count must be an integer of at least 1, got {value}", {
                     "alias": "a stage repeated {count} times cannot take one name `{alias}`",
                 }),
    "E214": Code("merge needs at least two inputs", "{op} needs at least two inputs, got {count}"),
    "E215": Code("block calls nested too deeply", "block calls nested deeper than {depth} levels"),
    "E216": Code("network has no input", "the network has no input"),
    "E217": Code("network has no output", "the network has no output"),
    "E218": Code("invalid input shape",
                 "input `{name}` has {count} dims; expected [F], [C, L], [C, H, W] or "
                 "[C, D, H, W]", {
                     "dim": "input dims must be at least 1, got {value}",
                 }),
    "E219": Code("unknown size symbol", "--size gives `{name}`, but no input has that symbol"),
    "E220": Code("network too large", "the network expands to more than {limit:,} layers", {
        "estimate": "the network would expand to more than {limit:,} layers "
                    "({total:,} by this statement)",
        "repeat": "repeat count {count:,} is more than the {limit:,} layers a network may have",
        "file": "the network has more than {limit:,} layers: this stage is past the limit",
        "stage": "the network would expand to more than {limit:,} layers: {count:,} copies "
                 "of at least {unit:,} layers each, after {done:,}",
    }),
    "E221": Code("unknown constant",
                 "--let gives `{name}`, but the model has no top-level `let {name}`"),
    "E222": Code("invalid constant value", "--let {name}={value}: {reason}"),
    "E223": Code("value out of range",
                 "{left} {op} {right} is {value}, beyond the largest integer {limit:,}"),
    # shapes
    "E301": Code("output size below 1", "{op} output {axis} would be {size}, below 1: {formula}"),
    "E302": Code("concat inputs disagree", _MERGE_MESSAGE, _MERGE_VARIANTS),
    "E303": Code("add inputs disagree", _MERGE_MESSAGE, dict(_MERGE_VARIANTS, **{
        "broadcast": "{op} inputs do not broadcast: {shapes}; they clash in {clashes}",
    })),
    "E304": Code("wrong input rank", "`{op}` expects {expected}, got {shape}"),
    "E305": Code("channels not divisible",
                 "{op} {arg}={value} does not divide the {count} {side} {unit}"),
    "E306": Code("no input size makes the network valid",
                 "no value of {symbol} makes the {op} inputs agree in {axis}: {lhs} vs {rhs}", {
                     "network": "no value of {symbol} makes the network valid",
                 }),
    # warnings
    "W401": Code("strided window leaves input unused",
                 "{op} leaves the last {parts} unused: {sums}"),
    "W402": Code("binding never used", "binding `{name}` is never used", {
        "in_block": "binding `{name}` in block `{block}` is never used",
    }),
    "W403": Code("block never called", "block `{name}` is never called"),
    "W404": Code("input never used", "input `{name}` is never used"),
}


def message(code: str, variant: str | None = None, **values) -> str:
    """The text of a diagnostic: ``code``'s template (``variant``'s, if given) filled in."""
    return CODES[code].format(variant, **values)


@dataclass
class Diagnostic:
    code: str
    message: str
    span: Span | None
    notes: list[str] = field(default_factory=list)
    help: str | None = None
    file: str = "<input>"

    @property
    def title(self) -> str:
        return CODES[self.code].title

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


def diagnostic(code: str, span: Span | None, *, variant: str | None = None, notes=(),
               help: str | None = None, file: str = "<input>", **values) -> Diagnostic:
    """A `Diagnostic` of ``code`` whose message is its template filled with ``values``."""
    return Diagnostic(code, message(code, variant, **values), span, list(notes), help, file)


def sort_key(diag: Diagnostic) -> tuple:
    span = diag.span
    if span is None:
        return (diag.file, 0, 0, diag.code)
    return (diag.file, span.line, span.column, diag.code)


# A source line wider than this is shown cut to a window around the span.
EXCERPT_WIDTH = 120
EXCERPT_CONTEXT = 40  # characters kept on each side of the span in a cut line


def visible(char: str) -> str:
    """A character as a terminal should show it: itself when printable, else an escape
    (``\\x1b``, ``\\x00``, ``\\u202e``) so that no control sequence reaches the terminal."""
    if char.isprintable():
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 \
        else f"\\U{code:08x}"


def printable(text: str, keep_newlines: bool = True) -> str:
    """``text`` with every character that is not printable escaped (`visible`); line breaks
    are kept when ``keep_newlines``."""
    if text.isprintable():
        return text
    if keep_newlines:
        return "\n".join(printable(part, False) for part in text.split("\n"))
    return "".join(visible(c) for c in text)


def excerpt(line: str, start: int, end: int) -> tuple[str, int, int]:
    """A source line as shown under a diagnostic, with the span ``[start, end)`` (0-based
    character offsets) mapped onto it: ``(text, start, end)`` in displayed columns. Control
    characters are escaped; a line wider than `EXCERPT_WIDTH` is cut to a window around the
    span, ``...`` marking each cut."""
    line = line.expandtabs(1)
    start = min(max(start, 0), len(line))
    end = min(max(end, start), len(line) + 1)
    cut_left = cut_right = False
    if len(line) > EXCERPT_WIDTH:
        lo = max(0, start - EXCERPT_CONTEXT)
        hi = min(len(line), max(end, start + 1) + EXCERPT_CONTEXT, lo + EXCERPT_WIDTH)
        cut_left, cut_right = lo > 0, hi < len(line)
        line, start, end = line[lo:hi], start - lo, min(end, hi + 1) - lo
    shown = [visible(c) for c in line]
    offsets = [0]
    for piece in shown:
        offsets.append(offsets[-1] + len(piece))
    text = "".join(shown)
    left = offsets[start]
    right = offsets[end] if end <= len(line) else offsets[-1] + (end - len(line))
    if cut_left:
        text, left, right = "..." + text, left + 3, right + 3
    if cut_right:
        text += "..."
    return text, left, right


def render(diag: Diagnostic, source: "str | list[str] | None") -> str:
    """Draw one diagnostic as text, rustc style. `source` is the text, or its lines already
    split by `source_lines` (pass those when rendering many diagnostics of one file). No
    control character of the source or the file name reaches the output (`printable`), and
    a long line is cut around the span (`excerpt`)."""
    span = diag.span
    where = f"{diag.file}:{span.line}:{span.column}" if span else diag.file
    out = [printable(f"{where}: {diag.severity}[{diag.code}]: {diag.message}")]
    if source is None:
        lines = []
    elif isinstance(source, str):
        lines = source_lines(source)
    else:
        lines = source
    if span is not None and 1 <= span.line <= len(lines):
        raw = lines[span.line - 1]
        number = str(span.line)
        gutter = " " * len(number)
        end = span.end_column if span.end_line == span.line else len(raw) + 1
        text, left, right = excerpt(raw, span.column - 1, max(end, span.column + 1) - 1)
        out.append(f"{gutter} |")
        out.append(f"{number} | {text}".rstrip())
        out.append(f"{gutter} | {' ' * left}{'^' * max(1, right - left)}")
        pad = gutter
    else:
        pad = " "
    for note in diag.notes:
        out.append(printable(f"{pad} = note: {note}"))
    if diag.help:
        out.append(printable(f"{pad} = help: {diag.help}"))
    return "\n".join(out)


def source_lines(text: str) -> list[str]:
    """Lines as the parser counts them: split at \n only (a \r before it is dropped)."""
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


FOREIGN_ARGUMENTS: dict = {
    **dict.fromkeys(("padding",), "pad"),
    **dict.fromkeys(("kernel_size", "pool_size"), "kernel"),
    **dict.fromkeys(("strides",), "stride"),
    **dict.fromkeys(("dilation_rate",), "dilation"),
    **dict.fromkeys(("out_channels", "out_features", "filters", "units", "num_output",
                     "features"), "out"),
    **dict.fromkeys(("num_groups",), "groups"),
    **dict.fromkeys(("negative_slope",), "alpha"),
    **dict.fromkeys(("ceil_mode",), "ceil"),
    **dict.fromkeys(("count_include_pad",), "count_pad"),
    **dict.fromkeys(("scale_factor",), "factor"),
    **dict.fromkeys(("output_size",), "size"),
    **dict.fromkeys(("output_padding",), "output_pad"),
    **dict.fromkeys(("use_bias",), "bias"),
    **dict.fromkeys(("epsilon",), "eps"),
    **dict.fromkeys(("rate", "drop_prob", "drop_rate"), "p"),
    **dict.fromkeys(("init_value", "layer_scale_init_value"), "init"),
}


def foreign_name(name: str, known, table: dict):
    """``(cnnc name, help or None)`` for ``name`` as another framework spells it, where the
    cnnc name is among ``known``; else None. ``table``: what other frameworks call a layer
    (``ops.FOREIGN_NAMES``, from the op families) or an argument (``FOREIGN_ARGUMENTS``)."""
    entry = table.get(name.lower())
    if entry is None:
        return None
    target, text = entry if isinstance(entry, tuple) else (entry, None)
    return (target, text) if target in known else None


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
