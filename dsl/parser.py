"""Text to syntax tree: a Lark LALR parser whose callbacks build `syntax` nodes directly.

The builder runs inline (Lark's `transformer=` option), so no intermediate parse tree is made
and deeply nested input never recurses in Python. Syntax errors come back as E1xx diagnostics
with the expected tokens in words.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import syntax as ast
from .diagnostics import Diagnostic, Span, diagnostic

MAX_DEPTH = 200  # deepest expression or list nesting accepted
# The largest integer a file may hold, literal or computed: a signed 64-bit integer, as sizes
# are in NumPy, ONNX and PyTorch. Reading a longer literal is refused before converting it.
MAX_INT = 2**63 - 1

_GRAMMAR = Path(__file__).with_name("grammar.lark")
_PARSER = None

# Terminal names as a user reads them.
_WORDS = {
    "NAME": "a name",
    "INT": "an integer",
    "FLOAT": "a number",
    "$END": "end of file",
}



class _TooLarge(Exception):
    def __init__(self, token):
        self.token = token


def _int(tok) -> int:
    """An INT token's value; `_TooLarge` beyond MAX_INT (checked on the digits first, so a
    literal of thousands of digits is never converted)."""
    digits = str(tok).lstrip("0") or "0"
    if len(digits) > len(str(MAX_INT)) or int(digits) > MAX_INT:
        raise _TooLarge(tok)
    return int(digits)


def shown_integer(digits: str) -> str:
    """A long run of digits as a reader takes it in: ``123456...789 (5,000 digits)``."""
    if len(digits) <= 24:
        return digits
    return f"{digits[:6]}...{digits[-3:]} ({len(digits):,} digits)"


class _TooDeep(Exception):
    def __init__(self, span: Span):
        self.span = span


def _tok_span(tok) -> Span:
    return Span(tok.line, tok.column, tok.end_line, tok.end_column)


def _span_of(item) -> Span | None:
    if item is None:
        return None
    if hasattr(item, "span"):
        return item.span
    if hasattr(item, "line") and getattr(item, "line", None) is not None:
        return _tok_span(item)
    if isinstance(item, list):
        spans = [s for s in (_span_of(x) for x in item) if s is not None]
        if spans:
            first = spans[0]
            for s in spans[1:]:
                first = first.cover(s)
            return first
    return None


def _cover(children) -> Span:
    return _span_of(list(children))


def _depth(*values) -> int:
    depth = 1 + max((getattr(v, "depth", 0) for v in values), default=0)
    if depth > MAX_DEPTH:
        raise _TooDeep(_span_of(list(values)))
    return depth


def _tokens(children, kind=None):
    from lark import Token

    return [c for c in children if isinstance(c, Token) and (kind is None or c.type == kind)]


def _nodes(children):
    from lark import Token

    return [c for c in children if not isinstance(c, Token) and c is not None]


RESERVED = frozenset(
    ["network", "input", "output", "block", "return", "in", "let", "true", "false"]
)


class _Reserved(Exception):
    def __init__(self, token, expected="a name"):
        self.token = token
        self.expected = expected


def _name(tok, expected="a name") -> str:
    """A name being defined or used; the contextual lexer lets reserved words through where
    no keyword is expected, so check here."""
    if str(tok) in RESERVED:
        raise _Reserved(tok, expected)
    return str(tok)


class _Builder:
    """Callbacks named after grammar rules and aliases; each returns a syntax node."""

    # -- values --
    def int_lit(self, c):
        return ast.IntLit(_int(c[0]), _tok_span(c[0]))

    def float_lit(self, c):
        return ast.FloatLit(float(c[0]), _tok_span(c[0]))

    def true_lit(self, c):
        return ast.BoolLit(True, _tok_span(c[0]))

    def false_lit(self, c):
        return ast.BoolLit(False, _tok_span(c[0]))

    def name_ref(self, c):
        return ast.NameRef(_name(c[0], "a value"), _tok_span(c[0]))

    def paren(self, c):
        inner = c[1]
        # Keep the node, widen its span to include the parentheses.
        inner.span = _cover(c)
        inner.depth = _depth(inner)
        return inner

    def binop(self, c):
        left, op, right = c
        return ast.BinOp(str(op), left, right, _cover(c), _depth(left, right))

    def neg(self, c):
        return ast.Neg(c[1], _cover(c), _depth(c[1]))

    def list(self, c):
        items = _nodes(c)
        return ast.ListLit(items, _cover(c), _depth(*items))

    # -- chains --
    def kwarg(self, c):
        name = c[0]
        value = c[-1]
        return ast.Arg(str(name), value, _cover(c), _tok_span(name))

    def bare_call(self, c):
        span = _tok_span(c[0])
        return ast.Call(str(c[0]), [], span, span)

    def paren_call(self, c):
        name = c[0]
        args = []
        for item in _nodes(c[1:]):
            if isinstance(item, ast.Arg):
                args.append(item)
            else:
                args.append(ast.Arg(None, item, item.span))
        return ast.Call(str(name), args, _cover(c), _tok_span(name))

    def repeat(self, c):
        return ("repeat", c[1])

    def alias(self, c):
        return ("alias", c[0])

    def stage(self, c):
        call = c[0]
        repeat = None
        alias = None
        alias_span = None
        for item in c[1:]:
            if item is None:
                continue
            if item[0] == "repeat":
                repeat = item[1]
            else:
                alias = _name(item[1])
                alias_span = _tok_span(item[1])
        return ast.Stage(call, repeat, alias, alias_span, _cover(c))

    def source(self, c):
        return ast.Source(str(c[0]), _tok_span(c[0]))

    def merge(self, c):
        sources = _nodes(c[1:])
        return ast.Merge(str(c[0]), sources, _cover(c), _tok_span(c[0]))

    def chain(self, c):
        start = c[0]
        stages = [x for x in _nodes(c[1:])]
        return ast.Chain(start, stages, _cover(c))

    # -- statements --
    def network_stmt(self, c):
        return ast.NetworkStmt(_name(c[0]), _tok_span(c[0]))

    def dims(self, c):
        return [ast.Dim(_int(t) if t.type == "INT" else str(t), _tok_span(t)) for t in _tokens(c)]

    def input_stmt(self, c):
        return ast.InputStmt(_name(c[0]), c[2], _cover(c), _tok_span(c[0]))

    def let_stmt(self, c):
        return ast.LetStmt(_name(c[0]), c[1], _cover(c), _tok_span(c[0]))

    def binding(self, c):
        return ast.Binding(_name(c[0]), c[1], _cover(c), _tok_span(c[0]))

    def output_named(self, c):
        return ast.OutputStmt(_name(c[0]), c[1], _cover(c), _tok_span(c[0]))

    def output_anon(self, c):
        return ast.OutputStmt(None, c[0], c[0].span, None)

    def param(self, c):
        default = c[1] if len(c) > 1 else None
        return ast.Param(_name(c[0]), default, _cover(c))

    def params(self, c):
        return [p for p in c if isinstance(p, ast.Param)]

    def no_params(self, c):
        return []

    def return_stmt(self, c):
        return c[0]

    def block_def(self, c):
        name = c[0]
        params = c[1]
        body = [x for x in c[2:-1] if x is not None]
        return ast.BlockDef(_name(name), params, body, c[-1], _cover(c), _tok_span(name))

    def start(self, c):
        return ast.Module(list(c))


def _cache_file() -> str | None:
    """The parser-table cache in a folder only this user can write (the cache is a pickle,
    so it must never be read from a place another user could have planted it)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = os.path.join(base, "cnnc")
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        info = os.stat(folder)
        if info.st_uid != os.getuid() or info.st_mode & 0o022:
            return None
    except OSError:
        return None
    return os.path.join(folder, "grammar.cache")


def _parser():
    global _PARSER
    if _PARSER is None:
        from lark import Lark

        cache = _cache_file()
        kwargs = dict(
            parser="lalr",
            propagate_positions=True,
            maybe_placeholders=True,
            transformer=_Builder(),
        )
        try:
            if cache is None:
                raise OSError("no private cache folder")
            _PARSER = Lark(_GRAMMAR.read_text(), cache=cache, **kwargs)
        except OSError:
            _PARSER = Lark(_GRAMMAR.read_text(), **kwargs)
    return _PARSER


def parse(text: str, file: str = "<input>") -> tuple[ast.Module | None, list[Diagnostic]]:
    """Parse source text. Returns the module, or None and the syntax diagnostics."""
    from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedToken

    parser = _parser()
    try:
        return parser.parse(text), []
    except _TooDeep as err:
        diag = diagnostic("E105", err.span, depth=MAX_DEPTH)
        return None, [_with_file(diag, file)]
    except _TooLarge as err:
        diag = diagnostic("E106", _tok_span(err.token), value=shown_integer(str(err.token)),
                          limit=MAX_INT)
        diag.help = "sizes, counts and arguments are at most 2**63 - 1"
        return None, [_with_file(diag, file)]
    except _Reserved as err:
        tok = err.token
        diag = diagnostic("E101", _tok_span(tok), token=tok, expected=err.expected)
        if err.expected == "a value":
            diag.help = f"`{tok}` is a reserved word; a value is a number, a list or a name"
        else:
            diag.help = f"`{tok}` is a reserved word; choose another name"
        return None, [_with_file(diag, file)]
    except UnexpectedToken as err:
        return None, [_with_file(_unexpected_token(err, text, parser), file)]
    except UnexpectedCharacters as err:
        return None, [_with_file(_unexpected_char(err, text), file)]
    except UnexpectedEOF as err:
        return None, [_with_file(_unexpected_eof(sorted(err.expected), text, parser), file)]


def _with_file(diag: Diagnostic, file: str) -> Diagnostic:
    diag.file = file
    return diag


def _end_span(text: str) -> Span:
    """Just after the last character that is not white space, so the line can be shown."""
    lines = text.rstrip().split("\n")
    return Span(len(lines), len(lines[-1]) + 1, len(lines), len(lines[-1]) + 2)


def _word(name: str, parser) -> str:
    if name in _WORDS:
        return _WORDS[name]
    try:
        term = parser.get_terminal(name)
    except KeyError:
        return name.lower()
    if term.pattern.type == "str":
        return f"`{term.pattern.value}`"
    return name.lower()


_STATEMENT_TOKENS = {"NETWORK", "INPUT", "LET", "OUTPUT", "BLOCK"}


def _expected_words(expected, parser) -> str:
    expected = set(expected)
    statement = _STATEMENT_TOKENS <= expected
    if statement:
        expected -= _STATEMENT_TOKENS | {"NAME", "$END"}
    words = sorted({_word(n, parser) for n in expected}, key=lambda w: (not w.startswith("`"), w))
    if statement:
        words.append("a new statement")
    if len(words) > 8:
        words = words[:7] + ["..."]
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def _unexpected_eof(expected, text, parser) -> Diagnostic:
    words = _expected_words(expected, parser) if expected else "more input"
    diag = diagnostic("E102", _end_span(text), expected=words)
    if "RBRACE" in expected or "RETURN" in expected:
        diag.help = "a block ends with `return CHAIN` and a closing `}`"
    return diag


def _unexpected_token(err, text, parser) -> Diagnostic:
    tok = err.token
    expected = sorted(_acceptable(err))
    if tok.type == "$END":
        return _unexpected_eof(expected, text, parser)
    words = _expected_words(expected, parser)
    history = getattr(err, "token_history", None) or []
    prev = history[-1] if history else None
    diag = diagnostic("E101", _tok_span(tok), token=tok, expected=words)
    keywords = {"network", "input", "output", "block", "return", "in", "let", "true", "false"}
    if str(tok) in keywords and "NAME" in expected:
        diag.help = f"`{tok}` is a reserved word; choose another name"
    elif tok.type == "COLON" and "EQUAL" in expected:
        diag.help = "keyword arguments use `=`, as in `stride=2`"
    elif tok.type == "RBRACE" and "RETURN" in expected:
        diag.help = "a block must end with `return CHAIN`"
    elif tok.type == "EQUAL" and text[tok.end_pos: tok.end_pos + 1] == ">":
        diag.help = "stages are joined with `->`, not `=>`"
    elif tok.type == "EQUAL" and "ARROW" in expected:
        diag.help = "a binding needs a line of its own: `NAME = CHAIN`; use `->` to continue"
    elif tok.type == "LPAR" and "EQUAL" in expected and prev is not None and prev.type == "NAME":
        diag.help = f"join the stages with `->`: `... -> {prev}(...)`"
    elif tok.type == "LPAR" and "ARROW" in expected:
        diag.help = "a chain starts with a tensor name; pipe it into the layer with `->`"
    elif prev is not None and str(prev) in ("block", "input", "output", "network") and (
            "EQUAL" in expected):
        diag.help = f"`{prev}` statements go at the top level, not inside a block"
    elif tok.type in ("INT", "FLOAT", "LSQB", "MINUS", "LPAR") and "NAME" in expected and (
            "IN" in expected):
        diag.help = "a chain starts with a tensor; call a layer with `x -> layer(...)`"
    elif "RPAR" in expected and "COMMA" in expected:
        diag.help = "close the argument list with `)` or separate arguments with `,`"
    elif tok.type in ("NAME", "INT", "FLOAT") and "ARROW" in expected and "EQUAL" not in expected:
        diag.help = "stages of a chain are joined with `->`"
    return diag


def _acceptable(err) -> set[str]:
    # LALR merges look-aheads, so err.expected may list tokens that cannot really come next;
    # asking the interactive parser which tokens it would accept gives the exact set.
    try:
        return set(err.interactive_parser.accepts())
    except Exception:  # the interactive parser is a convenience; fall back to the table
        return set(err.expected)


def _unexpected_char(err, text) -> Diagnostic:
    char = text[err.pos_in_stream] if err.pos_in_stream < len(text) else ""
    span = Span(err.line, err.column, err.line, err.column + 1)
    shown = repr(char)[1:-1] if char.isprintable() else f"\\u{ord(char):04x}" if char else "?"
    diag = diagnostic("E103", span, char=shown)
    nxt = text[err.pos_in_stream + 1: err.pos_in_stream + 2]
    if char == "=" and nxt == ">" or char == ">":
        diag.help = "stages are joined with `->`"
    elif char in "\"'":
        diag.help = "enum values are bare words: write `pad=same`, not `pad=\"same\"`"
    elif char == "/":
        diag.help = "integer division is `//`; sizes are integers"
    elif char == ";":
        diag.help = "statements need no separator; start the next one on a new line"
    elif char == "." and text[err.pos_in_stream - 1: err.pos_in_stream].isalpha():
        diag.help = "names cannot contain `.`; layer names such as `stem.conv1` are made by cnnc"
    return diag
