"""The canonical layout of `.cnn` text: what `cnnc fmt` writes and the language server's
formatting returns (docs/formatting.md has the rules).

`format_source` reads the text twice. First with the project's parser (`parser.parse`), so a
file with syntax errors is refused with the very diagnostics `cnnc check` prints. Then with a
Lark parser of its own over the same grammar file that keeps every token (`keep_all_tokens`);
the grammar ignores comments, so they are found in the gaps between tokens. From that tree a
layout document is built (text, possible line breaks, groups that are laid out flat when they
fit in `WIDTH` columns, indentation), in the manner of Wadler's "A prettier printer" and of
Prettier's printer, and printed.

Every comment is kept, and stays with the code it describes. They find their place at
the breaks of the layout:
- a trailing comment (code before it on its line) goes to the first break after its token,
  usually right after it; where no break can follow (inside `4 * c`), to the end of that line;
- an own-line comment goes to the last break before its token and stays on a line of its own,
  at the indentation of what follows (before a closing bracket or brace: inside it);
- an own-line comment indented deeper than the code on both sides of it, right under a line
  of code, is read as that line's trailing comment that did not fit beside it;
- a break that holds a comment is taken, and so is every break of the groups around it, but
  for a chain that would fit without its comments: it takes only the breaks that hold them.

Before returning, the result is read back and its tokens and comments compared with the
input's (`_verify`): formatting never changes what a file says.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from .diagnostics import Diagnostic
from .parser import parse

WIDTH = 100  # the longest line of code the layout aims for; trailing comments may go beyond
INDENT = 4  # spaces per level: a block's body, a chain's continuation lines, broken brackets

_GRAMMAR = Path(__file__).with_name("grammar.lark")
_LOCK = threading.Lock()
_PARSER = None


class FormatError(Exception):
    """The text has syntax errors and cannot be formatted. ``diagnostics`` holds them: the
    same `Diagnostic` values (codes, spans, messages) that `cnnc check` reports."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = list(diagnostics)
        first = self.diagnostics[0] if self.diagnostics else None
        where = f"{first.span.at()}: " if first is not None and first.span else ""
        message = f"{where}error[{first.code}]: {first.message}" if first else "syntax error"
        super().__init__(message)


def format_source(text: str, name: str = "<string>") -> str:
    """The canonical text of a `.cnn` source; `FormatError` when it has syntax errors.

    Idempotent (``format_source(format_source(t)) == format_source(t)``), and meaning
    preserving: the tokens are the input's, but for trailing commas and the empty ``()`` of a
    call or a block without parameters, and every comment is kept. (An AssertionError, never
    seen in the tests, would mean that the check of that, `_verify`, found a bug.)"""
    if text.startswith("\ufeff"):
        text = text[1:]
    module, diagnostics = parse(text, name)
    if module is None:
        raise FormatError(diagnostics)
    tree = _full_parser().parse(text)
    source = _Source(text, tree)
    builder = _Builder(source)
    doc = builder.module(tree)
    _land_comments(doc, builder.head, builder.end, source)
    _propagate_breaks(doc)
    result = _render(doc, builder)
    _verify(source, result)
    return result


# ---- reading: every token, every comment --------------------------------------------------------

def _full_parser():
    """A Lark parser over the project's grammar that keeps every token (commas, brackets,
    keywords) in its tree; built once, on first use."""
    global _PARSER
    with _LOCK:
        if _PARSER is None:
            from lark import Lark

            _PARSER = Lark(_GRAMMAR.read_text(), parser="lalr", keep_all_tokens=True,
                           maybe_placeholders=False)
        return _PARSER


def _leaves(tree) -> list:
    """The tokens of a Lark tree in source order, without recursion (trees nest as deep as
    the parser allows)."""
    from lark import Token

    out = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, Token):
            out.append(node)
        else:
            stack.extend(reversed(node.children))
    return out


_COMMENT = re.compile(r"#[^\n]*")


class _Comment:
    __slots__ = ("text", "pos", "line", "column", "own_line", "blank_before")

    def __init__(self, text, pos, line, column, own_line, blank_before):
        self.text = text
        self.pos = pos
        self.line = line
        self.column = column
        self.own_line = own_line
        self.blank_before = blank_before


class _Source:
    """The input's tokens and comments, and which comment belongs to which token.

    ``trailing[pos]`` and ``leading[pos]`` list the comments after and before the token that
    starts at offset ``pos``; ``blank[pos]`` says whether a blank line comes before it."""

    def __init__(self, text: str, tree):
        self.text = text
        self.tokens = _leaves(tree)
        self.comments: list[_Comment] = []
        self.blank: dict[int, bool] = {}
        self._scan()
        self.trailing: dict[int, list[_Comment]] = {}
        self.leading: dict[int, list[_Comment]] = {}
        self.orphans: list[_Comment] = []  # comments after the last token, on lines of their own

    def _scan(self) -> None:
        text = self.text
        prev_end = 0  # where the previous token or comment ends
        prev_line = 1  # the line it ends on
        first = True  # nothing came before
        for index in range(len(self.tokens) + 1):
            tok = self.tokens[index] if index < len(self.tokens) else None
            gap_end = tok.start_pos if tok is not None else len(text)
            for match in _COMMENT.finditer(text, prev_end, gap_end):
                start = match.start()
                breaks = text.count("\n", prev_end, start)
                line_start = text.rfind("\n", 0, start) + 1
                own = first or breaks > 0
                self.comments.append(_Comment(match.group().rstrip(), start, prev_line + breaks,
                                              start - line_start, own, breaks >= 2))
                prev_end = match.end()
                prev_line += breaks
                first = False
            if tok is not None:
                self.blank[tok.start_pos] = not first and text.count("\n", prev_end,
                                                                     tok.start_pos) >= 2
                first = False
                prev_end = tok.end_pos
                prev_line = tok.end_line

    def attach(self, printed: list) -> None:
        """Give every comment to a printed token (``printed``: their offsets, in order):
        a trailing one to the token before it, an own-line one to the token after it."""
        from bisect import bisect_left, bisect_right

        self._hanging()
        for c in self.comments:
            if not c.own_line:
                i = bisect_right(printed, c.pos) - 1
                if i >= 0:
                    self.trailing.setdefault(printed[i], []).append(c)
                    continue
            i = bisect_left(printed, c.pos)
            if i < len(printed):
                self.leading.setdefault(printed[i], []).append(c)
            else:
                self.orphans.append(c)

    def _hanging(self) -> None:
        """An own-line comment right after a line of code (no blank line), indented deeper
        than that line and than the code after it, is that line's trailing comment: one that
        did not fit beside it (``x = a -> b`` and, below, ``        # [64, 7, 7]``)."""
        lines = self.text.split("\n")
        starts = {}  # line number -> column of the first token on it
        for tok in self.tokens:
            starts.setdefault(tok.line, tok.column - 1)
        token_lines = sorted(starts)
        from bisect import bisect_left

        for c in self.comments:
            if not c.own_line or c.blank_before:
                continue
            above = c.line - 1
            if above not in starts:
                continue
            line_text = lines[above - 1] if above >= 1 else ""
            indent_above = len(line_text) - len(line_text.lstrip())
            i = bisect_left(token_lines, c.line + 1)
            below = starts[token_lines[i]] if i < len(token_lines) else -1
            if c.column > indent_above and c.column > below:
                c.own_line = False


# ---- the layout document ------------------------------------------------------------------------

class _Tok:
    """A token's text in the document; ``pos`` finds its comments."""

    __slots__ = ("text", "pos")

    def __init__(self, text: str, pos: int):
        self.text = text
        self.pos = pos


class _Line:
    """A place where the line may break.

    kind: ``line`` (a space when flat), ``soft`` (nothing when flat), ``hard`` (always
    breaks), ``sep`` (between statements: breaks, keeps one blank line where the source had
    some), ``slot`` (prints no break of its own: the place, inside a bracket, for comments
    before its closing bracket). ``before`` gets the trailing comments that end the line
    here, ``after`` the own-line comments printed after the break. ``closer`` marks the break
    before a closing bracket: own-line comments go to the slot inside instead."""

    __slots__ = ("kind", "before", "after", "closer", "top", "force_blank", "next_pos")

    def __init__(self, kind: str, closer: bool = False, top: bool = False,
                 force_blank: bool = False, next_pos: int | None = None):
        self.kind = kind
        self.before: list[_Comment] = []
        self.after: list[_Comment] = []
        self.closer = closer
        self.top = top  # the first break of a body: no blank line before what follows
        self.force_blank = force_blank  # a blank line here whatever the source had
        self.next_pos = next_pos  # the token that follows a `sep`, for its blank line

    @property
    def forced(self) -> bool:
        return self.kind in ("hard", "sep") or bool(self.before or self.after)


class _IfBreak:
    """Text printed only when its group is broken: the trailing comma of a broken list."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text


class _Nest:
    """Its items, one indentation level deeper after each line break."""

    __slots__ = ("items",)

    def __init__(self, items: list):
        self.items = items


class _Group:
    """Its items on one line when they fit (and hold no forced break), else every one of its
    own breaks taken.

    A ``sparing`` group (a chain) whose only forced breaks are its own (comments after its
    stages), and which would fit were it not for them, takes just those breaks: a short
    chain with a comment after every second stage keeps two stages per line."""

    __slots__ = ("items", "broken", "sparing", "own_breaks_only")

    def __init__(self, items: list, sparing: bool = False):
        self.items = items
        self.broken = False
        self.sparing = sparing
        self.own_breaks_only = False


def _walk(doc):
    """Every leaf of the document in order (text, tokens, breaks), without recursion."""
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, (_Nest, _Group)):
            stack.extend(reversed(item.items))
        else:
            yield item


def _land_comments(doc, head: _Line, end: _Line, source: _Source) -> None:
    """Move each comment from its token to a line break: a trailing comment to the first
    break after its token, an own-line comment to the last break before its token (skipping
    the break before a closing bracket, so that it stays inside)."""
    printed = [leaf.pos for leaf in _walk(doc) if isinstance(leaf, _Tok)]
    source.attach(printed)
    waiting: list[_Comment] = []
    last = head
    for leaf in _walk(doc):
        if isinstance(leaf, _Tok):
            last.after.extend(source.leading.get(leaf.pos, ()))
            waiting.extend(source.trailing.get(leaf.pos, ()))
        elif isinstance(leaf, _Line):
            if waiting:
                leaf.before.extend(waiting)
                waiting = []
            if not leaf.closer:
                last = leaf
    end.before.extend(waiting)
    end.after.extend(source.orphans)


def _propagate_breaks(doc) -> None:
    """Mark every group that holds a forced break (a hard line, a line with comments), and
    every group around it, as broken; and whether a group's forced breaks are all its own
    (not inside a group within it). Post-order, without recursion."""
    stack = [(doc, False)]
    forced_in: list[list[bool]] = []  # per open container: [its own lines, groups within]
    while stack:
        item, done = stack.pop()
        if done:
            own, inner = forced_in.pop()
            if isinstance(item, _Group):
                item.broken = own or inner
                item.own_breaks_only = own and not inner
                if item.broken and forced_in:
                    forced_in[-1][1] = True
            elif forced_in:
                forced_in[-1][0] |= own
                forced_in[-1][1] |= inner
            continue
        if isinstance(item, (list, _Nest, _Group)):
            items = item if isinstance(item, list) else item.items
            forced_in.append([False, False])
            stack.append((item, True))
            stack.extend((child, False) for child in reversed(items))
        elif isinstance(item, _Line) and item.forced and forced_in:
            forced_in[-1][0] = True


# ---- building the document from the tree -------------------------------------------------------

class _Builder:
    """One method per grammar rule (or alias): the tree node's layout document."""

    def __init__(self, source: _Source):
        self.source = source
        self.head = _Line("sep", top=True)
        self.end = _Line("sep")

    def tok(self, token) -> _Tok:
        return _Tok(str(token), token.start_pos)

    def first_pos(self, tree) -> int:
        return _leaves(tree)[0].start_pos

    # -- statements --
    def module(self, tree) -> list:
        doc: list = [self.head]
        statements = tree.children
        if statements:
            self.head.next_pos = self.first_pos(statements[0])
        previous = None
        for statement in statements:
            if previous is not None:
                around_block = previous.data == "block_def" or statement.data == "block_def"
                doc.append(_Line("sep", force_blank=around_block,
                                 next_pos=self.first_pos(statement)))
            doc.append(self.statement(statement))
            previous = statement
        doc.append(self.end)
        return doc

    def statement(self, tree):
        build = getattr(self, tree.data, None)
        if build is None:
            raise _unknown_rule(tree.data)
        return build(tree)

    def network_stmt(self, tree):
        keyword, name = tree.children
        return [self.tok(keyword), " ", self.tok(name)]

    def input_stmt(self, tree):
        keyword, name, colon, open_, dims, close = tree.children
        items = [self.tok(t) for t in dims.children if t.type != "COMMA"]
        commas = [t for t in dims.children if t.type == "COMMA"]
        return [self.tok(keyword), " ", self.tok(name), self.tok(colon), " ",
                self.bracketed(open_, items, commas, close)]

    def let_stmt(self, tree):
        keyword, name, equal, value = tree.children
        return [self.tok(keyword), " ", self.tok(name), " ", self.tok(equal), " ",
                self.value(value)]

    def binding(self, tree):
        name, equal, chain = tree.children
        return [self.tok(name), " ", self.tok(equal), " ", self.chain(chain)]

    def output_named(self, tree):
        keyword, name, equal, chain = tree.children
        return [self.tok(keyword), " ", self.tok(name), " ", self.tok(equal), " ",
                self.chain(chain)]

    def output_anon(self, tree):
        keyword, chain = tree.children
        return [self.tok(keyword), " ", self.chain(chain)]

    def return_stmt(self, tree):
        keyword, chain = tree.children
        return [self.tok(keyword), " ", self.chain(chain)]

    def block_def(self, tree):
        keyword, name, params, open_, *body, close = tree.children
        head = [self.tok(keyword), " ", self.tok(name)]
        if params.data == "params" and len(params.children) > 2:
            head.append(self.separated(params.children, self.param))
        inner: list = []
        for i, item in enumerate(body):
            inner.append(_Line("sep", top=i == 0, next_pos=self.first_pos(item)))
            inner.append(self.statement(item))
        inner.append(_Line("slot"))
        return [*head, " ", self.tok(open_), _Nest(inner), _Line("hard", closer=True),
                self.tok(close)]

    def param(self, tree):
        name, *rest = tree.children
        if not rest:
            return self.tok(name)
        equal, value = rest
        return [self.tok(name), self.tok(equal), self.value(value)]

    # -- chains --
    def chain(self, tree):
        start, *rest = tree.children
        doc = [self.chain_start(start)]
        if not rest:
            return doc[0]
        stages = []
        for arrow, stage in zip(rest[0::2], rest[1::2]):
            stages += [_Line("line"), self.tok(arrow), " ", self.stage(stage)]
        return _Group([*doc, _Nest(stages)], sparing=True)

    def chain_start(self, tree):
        if tree.data == "source":
            return self.tok(tree.children[0])
        # merge: concat(a, b)
        name, *rest = tree.children
        return [self.tok(name), self.separated(rest, self.source_item, keep_empty=True)]

    def source_item(self, tree):
        return self.tok(tree.children[0])

    def stage(self, tree):
        call, *suffixes = tree.children
        doc = [self.call(call)]
        for suffix in suffixes:
            if suffix.data == "repeat":
                star, count = suffix.children
                doc += [" ", self.tok(star), " ", self.value(count)]
            else:  # alias
                keyword, name = suffix.children
                doc += [" ", self.tok(keyword), " ", self.tok(name)]
        return doc

    def call(self, tree):
        name, *rest = tree.children
        if tree.data == "bare_call" or len(rest) == 2:  # `relu` and `relu()` alike: `relu`
            return self.tok(name)
        return [self.tok(name), self.separated(rest, self.argument)]

    def argument(self, tree):
        if getattr(tree, "data", None) == "kwarg":
            name, equal, value = tree.children
            return [self.tok(name), self.tok(equal), self.value(value)]
        return self.value(tree)

    # -- values --
    def value(self, tree):
        from lark import Token

        if isinstance(tree, Token):
            return self.tok(tree)
        kind = tree.data
        children = tree.children
        if kind in ("int_lit", "float_lit", "true_lit", "false_lit", "name_ref"):
            return self.tok(children[0])
        if kind == "binop":
            left, op, right = children
            return [self.value(left), " ", self.tok(op), " ", self.value(right)]
        if kind == "neg":
            minus, operand = children
            return [self.tok(minus), self.value(operand)]
        if kind == "paren":
            open_, inner, close = children
            return [self.tok(open_), self.value(inner), self.tok(close)]
        if kind == "list":
            return self.separated(children, self.value, keep_empty=True)
        raise _unknown_rule(kind)

    # -- bracketed lists --
    def separated(self, children, item, keep_empty: bool = False):
        """``( a, b, c )`` from the tree's children: the opening bracket, items with commas
        between them (and perhaps one after), the closing bracket."""
        open_, *middle, close = children
        items = [item(child) for child in middle if not _is_comma(child)]
        commas = [child for child in middle if _is_comma(child)]
        return self.bracketed(open_, items, commas, close)

    def bracketed(self, open_, items: list, commas: list, close):
        """A group: ``[a, b]`` when it fits, else one item per line, each followed by a comma,
        the closing bracket on a line of its own. A trailing comma in the source is dropped
        (the layout adds one when broken)."""
        if not items:
            return _Group([self.tok(open_), _Nest([_Line("slot")]), _Line("soft", closer=True),
                           self.tok(close)])
        inner: list = [_Line("soft")]
        for i, doc in enumerate(items):
            if i:
                inner += [self.tok(commas[i - 1]), _Line("line")]
            inner.append(doc)
        inner += [_IfBreak(","), _Line("slot")]
        return _Group([self.tok(open_), _Nest(inner), _Line("soft", closer=True),
                       self.tok(close)])


def _unknown_rule(name: str) -> AssertionError:
    """The grammar has a rule this module does not lay out yet (it was extended without it)."""
    return AssertionError(f"the formatter does not know the grammar rule `{name}`; this is a "
                          "bug in cnnc, please report it")


def _is_comma(node) -> bool:
    return getattr(node, "type", None) == "COMMA"


# ---- printing -----------------------------------------------------------------------------------

_FLAT, _BREAK, _SPARING = 0, 1, 2  # _SPARING: only the forced breaks are taken


def _fits(items, rest: list, width: int, sparing: bool = False) -> bool:
    """Whether ``items``, laid out flat, and what follows them up to the next line break
    fit in ``width`` columns (Prettier's test: what follows is taken as it will be printed,
    a group there as broken). ``sparing``: whether they would fit if their forced breaks
    were spaces, comments left out."""
    stack = [(_FLAT, items)]
    rest_index = len(rest)
    while width >= 0:
        if not stack:
            if rest_index == 0:
                return True
            rest_index -= 1
            _, mode, item = rest[rest_index]
            stack.append((mode, item))
            continue
        mode, item = stack.pop()
        if isinstance(item, str):
            width -= len(item)
        elif isinstance(item, _Tok):
            width -= len(item.text)
        elif isinstance(item, list):
            stack.extend((mode, x) for x in reversed(item))
        elif isinstance(item, _Nest):
            stack.extend((mode, x) for x in reversed(item.items))
        elif isinstance(item, _Group):
            inner = _BREAK if item.broken else mode
            stack.extend((inner, x) for x in reversed(item.items))
        elif isinstance(item, _IfBreak):
            if mode == _BREAK:
                width -= len(item.text)
        elif isinstance(item, _Line):
            if item.kind == "slot":
                continue
            if mode == _BREAK or (item.forced and not (sparing and mode == _FLAT)):
                return True
            width -= 1 if item.kind == "line" else 0
    return False


class _Output:
    """The printed lines: ``(kind, code, comment)``, kind ``code``, ``comment`` (an own-line
    comment) or ``blank``."""

    def __init__(self):
        self.lines: list[tuple[str, str, str | None]] = []
        self.code = ""
        self.comment: str | None = None

    @property
    def column(self) -> int:
        return len(self.code)

    def text(self, s: str) -> None:
        self.code += s

    def trailing(self, comments: list[_Comment]) -> list[_Comment]:
        """The first comment ends the current line; the others are returned, to go on lines
        of their own (as own-line comments would: a second run reads them as such)."""
        if comments and self.comment is None and self.code.strip():
            self.comment = comments[0].text
            return comments[1:]
        return list(comments)

    def end_line(self, indent: int) -> None:
        code = self.code.rstrip()
        if code or self.comment is not None:
            self.lines.append(("code", code, self.comment))
        self.code = " " * indent
        self.comment = None

    def own_line(self, comment: _Comment, indent: int) -> None:
        self.lines.append(("comment", " " * indent + comment.text, None))

    def blank(self) -> None:
        if self.lines and self.lines[-1][0] != "blank":
            self.lines.append(("blank", "", None))


def _render(doc, builder: _Builder) -> str:
    out = _Output()
    blank = builder.source.blank
    stack = [(0, _BREAK, doc)]
    while stack:
        indent, mode, item = stack.pop()
        if isinstance(item, str):
            out.text(item)
        elif isinstance(item, _Tok):
            out.text(item.text)
        elif isinstance(item, list):
            stack.extend((indent, mode, x) for x in reversed(item))
        elif isinstance(item, _Nest):
            stack.extend((indent + INDENT, mode, x) for x in reversed(item.items))
        elif isinstance(item, _Group):
            if item.broken:
                inner = _BREAK
                if item.sparing and item.own_breaks_only and mode != _FLAT and _fits(
                        item.items, stack, WIDTH - out.column, sparing=True):
                    inner = _SPARING
            elif mode == _FLAT:
                inner = _FLAT
            else:
                fits = _fits(item.items, stack, WIDTH - out.column)
                inner = _FLAT if fits else _BREAK
            stack.extend((indent, inner, x) for x in reversed(item.items))
        elif isinstance(item, _IfBreak):
            if mode == _BREAK:
                out.text(item.text)
        elif isinstance(item, _Line):
            _render_line(out, item, indent, mode, blank)
    if out.code.strip() or out.comment is not None:
        out.end_line(0)
    while out.lines and out.lines[-1][0] == "blank":
        out.lines.pop()
    return _align(out.lines)


def _render_line(out: _Output, line: _Line, indent: int, mode: int, blank: dict) -> None:
    if line.kind == "slot":
        for c in out.trailing(line.before) + line.after:
            out.end_line(indent)
            out.own_line(c, indent)
        return
    if mode != _BREAK and not line.forced:
        out.text(" " if line.kind == "line" else "")
        return
    own = out.trailing(line.before) + line.after
    out.end_line(indent)
    if line.kind != "sep":
        for c in own:
            out.own_line(c, indent)
        return
    # between statements: one blank line where the source had one or more
    first = line.top or not out.lines
    if line.force_blank and not first:
        out.blank()
    for c in own:
        if c.blank_before and not first:
            out.blank()
        out.own_line(c, indent)
        first = False
    if line.next_pos is not None and blank.get(line.next_pos) and not first:
        out.blank()


def _align(lines) -> str:
    """Join the lines; trailing comments of neighbouring lines of code (no blank line or
    own-line comment between them) start in one column, two spaces after the longest of
    those lines."""
    text: list[str] = []
    run: list[tuple[str, str | None]] = []

    def flush():
        width = max((len(code) for code, comment in run if comment is not None), default=0)
        for code, comment in run:
            text.append(code if comment is None else f"{code.ljust(width)}  {comment}"
                        if code else comment)
        run.clear()

    for kind, code, comment in lines:
        if kind == "code":
            run.append((code, comment))
            continue
        flush()
        text.append(code)
    flush()
    return "\n".join(text) + "\n" if text else ""


# ---- the check that nothing but layout changed --------------------------------------------------

def _meaningful_tokens(tokens) -> list[str]:
    """The tokens that carry meaning: without trailing commas and the empty ``()`` of calls
    and of blocks without parameters, which the layout drops."""
    kept = []
    for i, tok in enumerate(tokens):
        after = tokens[i + 1] if i + 1 < len(tokens) else None
        if tok.type == "COMMA" and after is not None and after.type in ("RPAR", "RSQB"):
            continue
        # the parentheses of an empty merge, `concat()`, stay: dropping them changes it
        if tok.type == "LPAR" and after is not None and after.type == "RPAR" and (
                _empty_parens_dropped(tokens, i)):
            continue
        if tok.type == "RPAR" and i and tokens[i - 1].type == "LPAR" and (
                _empty_parens_dropped(tokens, i - 1)):
            continue
        kept.append(str(tok))
    return kept


def _empty_parens_dropped(tokens, i: int) -> bool:
    """Whether the ``()`` at ``tokens[i]`` follows a stage's call or a block's name (dropped
    by the layout), not a merge at the start of a chain (kept)."""
    if i < 2:
        return False
    before = tokens[i - 2]
    return before.type == "ARROW" or str(before) == "block"


def _verify(source: _Source, result: str) -> None:
    """Read the result back (lexing is enough: it parsed before); its tokens and comments
    must be the input's."""
    tokens = []
    comments = []
    for tok in _full_parser().lex(result, dont_ignore=True):
        if tok.type == "COMMENT":
            comments.append(str(tok).rstrip())
        elif tok.type != "WS":
            tokens.append(tok)
    same_tokens = _meaningful_tokens(source.tokens) == _meaningful_tokens(tokens)
    same_comments = [c.text for c in source.comments] == comments or sorted(
        c.text for c in source.comments) == sorted(comments)
    if not (same_tokens and same_comments):
        raise AssertionError("cnnc fmt changed more than the layout of this text; this is a "
                             "bug in cnnc, please report it with the file")
