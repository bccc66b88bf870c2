"""The checking pipeline: bytes or text to a checked `Network` with its diagnostics."""

from __future__ import annotations

from ..dsl.diagnostics import Diagnostic, Span, diagnostic, sort_key
from ..dsl.parser import parse
from .elaborate import elaborate
from .graph import Network


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
    module, diags = parse(text, file)
    if module is None:
        net = Network(name="network", file=file)
        net.diagnostics = diags
    else:
        net = elaborate(module, file, text, sizes, consts)
        net.diagnostics.sort(key=sort_key)
    net.source = text
    return net


def check_bytes(data: bytes, file: str, sizes: dict | None = None,
                consts: dict | None = None) -> tuple[Network, str | None]:
    """`check_source` of the bytes' UTF-8 text; ``(network, text)``, the text None (and the
    network's one diagnostic an E104) when they are not UTF-8."""
    text, diags = decode(data, file)
    if text is None:
        net = Network(name="network", file=file)
        net.diagnostics = diags
        return net, None
    return check_source(text, file, sizes, consts), text
