"""Completion from the text alone: while a line is being typed the file rarely parses, so the
context is read off the characters before the cursor, and the file's names off its lines.

- after `->`: layer names (the op registry, with their signatures) and the file's blocks;
- inside `layer(...)` or `block(...)`: the arguments not given yet, with their defaults,
  and the constants and parameters in scope (a positional value may be one);
- after `name=` inside a call: that argument's words (`same`, `valid`, `true`, the
  choices of a `choice` argument) and the constants in scope;
- where a chain starts (after `NAME =`, `return`, or inside `concat(`): the tensors in scope
  (`in` inside a block) and the merges;
- at the start of a statement: the keywords.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..ops import LAYERS, MERGES
from ..ops.base import REQUIRED
from .hover import default_text, signature

KEYWORDS_TOP = ("network", "input", "let", "output", "block")
KEYWORDS_BLOCK = ("let", "return")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
TAIL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# The start of a line that starts a statement (a keyword, or `NAME = NAME ->`), which no
# argument list spans; `NAME =` alone may be a keyword argument on a continued line.
STATEMENT = re.compile(r"[ \t]*(network|input|output|let|block|return)\b|"
                       r"[ \t]*[A-Za-z_]\w*[ \t]*=[ \t]*[A-Za-z_]\w*[ \t]*->")
RESERVED = {"network", "input", "output", "block", "return", "in", "let", "true", "false"}


@dataclass
class Item:
    label: str
    kind: str  # layer | block | merge | argument | value | tensor | keyword | word
    detail: str = ""
    documentation: str = ""
    insert: str | None = None  # the text inserted, when not the label
    sort: str = ""  # sorts the list: earlier first


@dataclass
class Names:
    """The names a file defines, read off its lines (it need not parse)."""

    tensors: list  # top-level: (name, kind)
    values: list  # top-level `let`s: (name, value text)
    blocks: dict  # name -> Block


@dataclass
class Block:
    name: str
    params: list  # (name, default text or None)
    tensors: list  # bindings inside it
    values: list  # its `let`s: (name, value text)
    start: int  # offsets of `{` and of its `}` (the text's end while unclosed)
    end: int


def strip_comments(text: str) -> str:
    """The text with every comment replaced by spaces (offsets and lines stay)."""
    return re.sub(r"#[^\n]*", lambda m: " " * len(m.group(0)), text)


def read_names(code: str) -> Names:
    """Top-level and block-level definitions of comment-free ``code``, by their lines."""
    names = Names([], [], {})
    depth = 0
    block = None
    offset = 0
    for line in code.split("\n"):
        stripped = line.strip()
        target = block if depth > 0 and block is not None else None
        _statement(stripped, names, target, code, offset)
        if depth == 0:
            m = re.match(r"\s*block\s+([A-Za-z_]\w*)", line)
            if m and "{" in code[offset:]:
                brace = code.index("{", offset)
                block = Block(m.group(1), _params(code, offset + m.end(), brace), [], [],
                              brace, len(code))
                names.blocks.setdefault(block.name, block)
        for i, char in enumerate(line):
            if char == "{":
                depth += 1
            elif char == "}":
                depth = max(0, depth - 1)
                if depth == 0 and block is not None:
                    block.end = offset + i
                    block = None
        offset += len(line) + 1
    return names


def _statement(stripped: str, names: Names, block, code: str, offset: int):
    m = re.match(r"let\s+([A-Za-z_]\w*)\s*=\s*(.*)", stripped)
    if m:
        (block.values if block else names.values).append((m.group(1), m.group(2).strip()))
        return
    if block is None:
        m = re.match(r"input\s+([A-Za-z_]\w*)", stripped)
        if m:
            names.tensors.append((m.group(1), "input"))
            return
        m = re.match(r"output\s+([A-Za-z_]\w*)\s*=", stripped)
        if m:
            names.tensors.append((m.group(1), "output"))
            return
    m = re.match(r"([A-Za-z_]\w*)\s*=(?!=)", stripped)
    if m and m.group(1) not in RESERVED:
        (block.tensors if block else names.tensors).append((m.group(1), "binding"))


def _params(code: str, start: int, brace: int) -> list:
    """A block's parameters ``(name, default text or None)``, from its `(` up to `{`."""
    head = code[start:brace]
    open_at = head.find("(")
    if open_at < 0:
        return []
    text = head[open_at + 1:]
    close = text.rfind(")")
    text = text[:close] if close >= 0 else text
    out = []
    for part in _split_top(text):
        name, _, default = part.partition("=")
        name = name.strip()
        if NAME.fullmatch(name):
            out.append((name, default.strip() or None))
    return out


def _split_top(text: str) -> list:
    """``text`` split at the commas outside brackets."""
    parts = []
    depth = 0
    current = []
    for char in text:
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def complete(text: str, offset: int) -> list[Item]:
    """The completions at character ``offset`` of ``text``."""
    if _in_comment(text, offset):
        return []
    code = strip_comments(text)
    before = code[:offset]
    word = TAIL_NAME.search(before)
    head = before[: word.start()] if word else before
    names = read_names(code)
    block = _enclosing_block(names, offset)
    values = _values(names, block)
    call = _open_call(head)
    if call is not None:
        callee, args_text = call
        if callee in MERGES:
            return [item for item in _tensors(names, block) if item.kind == "tensor"]
        kwarg = re.search(r"([A-Za-z_]\w*)\s*=\s*$", head)
        if kwarg:
            return _argument_values(callee, kwarg.group(1), names, values)
        return _arguments(callee, args_text, names) + values
    tail = head.rstrip()
    if tail.endswith("->"):
        return _calls(LAYERS, names)
    if tail.endswith("*"):
        return values
    line = head[head.rfind("\n") + 1:].strip()
    if re.fullmatch(r"let\s+[A-Za-z_]\w*\s*=", line):
        return values
    if re.fullmatch(r"([A-Za-z_]\w*\s*=|output(\s+[A-Za-z_]\w*\s*=)?|return)", line):
        return _tensors(names, block)
    if line == "" and not re.search(r"(->|,|\(|\[|=|\*)\s*$", tail):
        words = KEYWORDS_BLOCK if block is not None else KEYWORDS_TOP
        return [Item(w, "keyword", sort=f"0{w}") for w in words]
    return []


def _in_comment(text: str, offset: int) -> bool:
    line_start = text.rfind("\n", 0, offset) + 1
    return "#" in text[line_start:offset]


def _enclosing_block(names: Names, offset: int):
    for block in names.blocks.values():
        if block.start < offset <= block.end:
            return block
    return None


def _open_call(head: str):
    """``(callee, argument text so far)`` when ``head`` ends inside an unclosed `(`."""
    depth = 0
    for i in range(len(head) - 1, -1, -1):
        char = head[i]
        if char in ")]":
            depth += 1
        elif char == "[":
            depth -= 1
            if depth < 0:
                return None  # inside a list: a value, handled by the caller as one
        elif char == "(":
            if depth == 0:
                name = TAIL_NAME.search(head[:i].rstrip())
                if name is None:
                    return None  # a parenthesised expression
                return name.group(0), head[i + 1:]
            depth -= 1
        elif char in "{}" and depth == 0:
            return None
        elif char == "\n" and STATEMENT.match(head, i + 1):
            return None  # a call never spans statements: one left open above is unfinished
    return None


def _calls(layers: dict, names: Names) -> list[Item]:
    items = [Item(name, "layer", signature(name), layer.doc, sort=f"1{name}")
             for name, layer in layers.items()]
    for name, block in names.blocks.items():
        params = ", ".join(p if d is None else f"{p}={d}" for p, d in block.params)
        items.append(Item(name, "block", f"block {name}({params})", "a block of this file",
                          sort=f"0{name}"))
    return items


def _tensors(names: Names, block) -> list[Item]:
    if block is not None:
        items = [Item("in", "tensor", "the block's input", sort="0in")]
        items += [Item(n, "tensor", f"binding in block {block.name}", sort=f"1{n}")
                  for n, _ in block.tensors]
    else:
        items = [Item(n, "tensor", kind, sort=f"1{n}") for n, kind in names.tensors]
    items += [Item(n, "merge", f"{n}(a, b, ...)", m.doc, insert=f"{n}(", sort=f"2{n}")
              for n, m in MERGES.items()]
    return items


def _values(names: Names, block) -> list[Item]:
    items = []
    if block is not None:
        items += [Item(n, "value", f"parameter of block {block.name}" +
                       (f", default {d}" if d else ""), sort=f"3{n}")
                  for n, d in block.params]
        items += [Item(n, "value", f"let {n} = {v}", sort=f"3{n}") for n, v in block.values]
    items += [Item(n, "value", f"let {n} = {v}", sort=f"4{n}") for n, v in names.values]
    return items


def _given(args_text: str) -> tuple[int, set]:
    """How many positional arguments are given, and the keywords given."""
    parts = _split_top(args_text)
    if parts and not args_text.rstrip().endswith(","):
        parts = parts[:-1]  # the one being typed
    keywords = set()
    positional = 0
    for part in parts:
        m = re.match(r"\s*([A-Za-z_]\w*)\s*=(?!=)", part)
        if m:
            keywords.add(m.group(1))
        else:
            positional += 1
    return positional, keywords


def _arguments(callee: str, args_text: str, names: Names) -> list[Item]:
    positional, keywords = _given(args_text)
    items = []
    if callee in LAYERS:
        specs = [(s.name, None if s.default is REQUIRED else default_text(s), s.kind)
                 for s in LAYERS[callee].args]
    elif callee in names.blocks:
        specs = [(p, d, "") for p, d in names.blocks[callee].params]
    else:
        return []
    for i, (name, default, kind) in enumerate(specs):
        if i < positional or name in keywords:
            continue
        said = "required" if default is None else f"default {default}"
        detail = f"{said} ({_kind_words(kind)})" if kind else said
        items.append(Item(name, "argument", detail, insert=f"{name}=", sort=f"0{i:03d}"))
    return items


def _kind_words(kind: str) -> str:
    return {
        "count": "an integer >= 1",
        "natural": "an integer >= 0",
        "pair": "an integer or [h, w]",
        "ppad": "an integer or [h, w]",
        "cpad": "an integer, [h, w], same or valid",
        "ints": "an integer or a list",
        "dims": "an integer or one per spatial dim",
        "dpad": "an integer or one per spatial dim",
        "dcpad": "an integer, one per spatial dim, same or valid",
        "bool": "true or false",
        "float": "a number",
        "prob": "a number in [0, 1)",
        "positive_float": "a number above 0",
        "unit_float": "a number in [0, 1]",
    }.get(kind, kind.replace("choice:", "one of ").replace("|", ", "))


def _argument_values(callee: str, argument: str, names: Names, values: list) -> list[Item]:
    words: list = []
    layer = LAYERS.get(callee)
    spec = next((s for s in layer.args if s.name == argument), None) if layer else None
    if spec is not None:
        if spec.kind.startswith("choice:"):
            words = spec.kind[len("choice:"):].split("|")
        elif spec.kind in ("cpad", "dcpad"):
            words = ["same", "valid"]
        elif spec.kind == "bool":
            words = ["true", "false"]
    items = [Item(w, "word", f"{argument}={w}", sort=f"0{i}") for i, w in enumerate(words)]
    if spec is None or spec.kind != "bool" and not spec.kind.startswith("choice:"):
        items += values
    return items
