"""The checking pipeline: bytes or text to a checked `Network` with its diagnostics."""

from __future__ import annotations

import re

from ..dsl.diagnostics import Diagnostic, Span, diagnostic, sort_key
from ..dsl.parser import parse
from .elaborate import MAX_LAYERS, elaborate
from .graph import Network

# The largest model file read: far above any real network (GoogLeNet is 5 KB, a chain of
# 1,000,000 layers about 10 MB), small enough to refuse an endless stream (/dev/zero, a pipe)
# within a second. Readers take at most one byte more than this.
MAX_SOURCE_BYTES = 64 << 20

_COMMENT = re.compile(r"#[^\n]*")
_BLOCK = re.compile(r"\bblock\s+([A-Za-z_][A-Za-z0-9_]*)")
_STAGE = re.compile(r"->\s*([A-Za-z_][A-Za-z0-9_]*)")


def decode(data: bytes, file: str) -> tuple[str | None, list[Diagnostic]]:
    """UTF-8 text from bytes; a byte that is not UTF-8 is an E104 at its line and column."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        before = data[: err.start]
        line = before.count(b"\n") + 1
        line_start = before[before.rfind(b"\n") + 1:]
        column = len(line_start.decode("utf-8", errors="replace")) + 1
        diag = diagnostic("E104", Span(line, column, line, column + 1),
                          help="save the file as UTF-8", file=file,
                          byte=data[err.start], offset=err.start)
        return None, [diag]
    if text.startswith("\ufeff"):
        text = text[1:]
    return text, []


def check_source(text: str, file: str = "<input>", sizes: dict | None = None,
                 consts: dict | None = None) -> Network:
    """Parse and check source text; ``consts`` replace the values of top-level ``let``
    constants (`passes/consts.py`). The result always carries its diagnostics, sorted, and
    the text itself (`Network.source`, so that `Network.render` can show them); `Network.ok`
    tells whether there were errors."""
    too_long = too_many_stages(text, file)
    if too_long is not None:
        module, diags = None, [too_long]
    else:
        module, diags = parse(text, file)
    if module is None:
        net = Network(name="network", file=file)
        net.diagnostics = diags
    else:
        net = elaborate(module, file, text, sizes, consts)
        net.diagnostics.sort(key=sort_key)
    net.syntax = module
    net.source = text
    return net


def too_many_stages(text: str, file: str) -> Diagnostic | None:
    """E220 for a file whose chains alone hold more layer stages than a network may have,
    found by a scan at the speed of regular expressions before parsing (which takes tens of
    microseconds a stage): a stage ``-> NAME`` whose NAME is no block of the file adds at
    least one layer. None when the file may fit."""
    if text.count("->") <= MAX_LAYERS:
        return None
    if "#" in text:  # blank out comments, keeping every offset
        text = _COMMENT.sub(lambda m: " " * len(m.group()), text)
    blocks = set(_BLOCK.findall(text))
    layers = 0
    for match in _STAGE.finditer(text):
        if match.group(1) in blocks:
            continue
        layers += 1
        if layers > MAX_LAYERS:
            start = match.start(1)
            line = text.count("\n", 0, start) + 1
            column = start - (text.rfind("\n", 0, start) + 1) + 1
            span = Span(line, column, line, column + len(match.group(1)))
            diag = diagnostic("E220", span, variant="file", limit=MAX_LAYERS,
                              help="check the repeat counts `* N` and nested block calls")
            diag.file = file
            return diag
    return None


def oversized(data: bytes, file: str) -> Diagnostic | None:
    """E107 for a file larger than `MAX_SOURCE_BYTES`."""
    if len(data) <= MAX_SOURCE_BYTES:
        return None
    diag = diagnostic("E107", None, limit=MAX_SOURCE_BYTES >> 20)
    diag.file = file
    return diag


def check_bytes(data: bytes, file: str, sizes: dict | None = None,
                consts: dict | None = None) -> tuple[Network, str | None]:
    """`check_source` of the bytes' UTF-8 text; ``(network, text)``, the text None (and the
    network's one diagnostic an E104, or an E107 for a file too large) when they are not
    UTF-8."""
    big = oversized(data, file)
    if big is not None:
        net = Network(name="network", file=file)
        net.diagnostics = [big]
        return net, None
    text, diags = decode(data, file)
    if text is None:
        net = Network(name="network", file=file)
        net.diagnostics = diags
        return net, None
    return check_source(text, file, sizes, consts), text
