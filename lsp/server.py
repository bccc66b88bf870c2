"""The language server over stdio (pygls): the protocol's side of `cnnc lsp`.

Each open document is checked as `cnnc check` checks a file (`analysis.py`) after each
edit (at once after a pause, else when a burst of edits pauses for ``DEBOUNCE``), and its
diagnostics are published with the same codes, spans, messages, notes and help; the other
requests read the latest check of the text (made at once if the text changed since).

Positions: the checker counts lines and columns from 1 in characters; the editor counts
from 0 in the units it negotiated (UTF-16 by default), converted here on the line's text.
"""

from __future__ import annotations

import asyncio

from lsprotocol import types as lsp
from pygls.exceptions import JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path

from .. import __version__
from ..dsl.diagnostics import Span, source_lines
from . import complete as completion
from . import fixes as quick_fixes
from . import hover as hovers
from .analysis import Analysis
from .index import Definition, Reference

DEBOUNCE = 0.03  # seconds of quiet after an edit before the document is checked again

KINDS = {
    "layer": lsp.CompletionItemKind.Function,
    "block": lsp.CompletionItemKind.Module,
    "merge": lsp.CompletionItemKind.Function,
    "argument": lsp.CompletionItemKind.Property,
    "value": lsp.CompletionItemKind.Constant,
    "tensor": lsp.CompletionItemKind.Variable,
    "keyword": lsp.CompletionItemKind.Keyword,
    "word": lsp.CompletionItemKind.EnumMember,
}

SYMBOLS = {
    "input": lsp.SymbolKind.Variable,
    "binding": lsp.SymbolKind.Variable,
    "output": lsp.SymbolKind.Event,
    "let": lsp.SymbolKind.Constant,
    "block": lsp.SymbolKind.Class,
    "param": lsp.SymbolKind.TypeParameter,
}


class CnncServer(LanguageServer):
    def __init__(self):
        super().__init__("cnnc", __version__)
        self.analyses: dict[str, Analysis] = {}
        self.pending: dict = {}  # uri -> the timer of its next check
        self.checked_at: dict = {}  # uri -> the event loop's time of its last check
        self.shut_down = False  # the editor asked to shut down
        self.exit_status = 1  # the protocol's: 0 only for `exit` after `shutdown`

    # ---- documents ------------------------------------------------------------------------
    def analysis(self, uri: str) -> Analysis:
        """The check of the document's current text (made now if the text changed)."""
        doc = self.workspace.get_text_document(uri)
        text = doc.source
        cached = self.analyses.get(uri)
        if cached is None or cached.text != text:
            cached = self.analyses[uri] = Analysis(text, file_name(uri))
        return cached

    def schedule(self, uri: str) -> None:
        """Check the document after an edit: at once when the last check is ``DEBOUNCE``
        seconds old (a keystroke after a pause), else once edits pause for ``DEBOUNCE``
        seconds (a burst of keystrokes or a paste is checked once, at its end)."""
        timer = self.pending.pop(uri, None)
        if timer is not None:
            timer.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a synchronous transport): check now
            self.publish(uri)
            return
        quiet = loop.time() - self.checked_at.get(uri, float("-inf")) >= DEBOUNCE
        delay = 0 if timer is None and quiet else DEBOUNCE
        self.pending[uri] = loop.call_later(delay, self.publish, uri)

    def publish(self, uri: str) -> None:
        self.pending.pop(uri, None)
        doc = self.workspace.text_documents.get(uri)
        if doc is None:
            return
        analysis = self.analysis(uri)
        diagnostics = [self.diagnostic(uri, analysis, d) for d in analysis.diagnostics]
        self.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(
            uri=uri, version=doc.version, diagnostics=diagnostics))
        try:
            self.checked_at[uri] = asyncio.get_running_loop().time()
        except RuntimeError:
            pass

    def forget(self, uri: str) -> None:
        timer = self.pending.pop(uri, None)
        if timer is not None:
            timer.cancel()
        self.analyses.pop(uri, None)
        self.checked_at.pop(uri, None)
        self.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(uri=uri,
                                                                            diagnostics=[]))

    # ---- positions ------------------------------------------------------------------------
    def units(self, text: str) -> int:
        """The length of ``text`` in the negotiated position encoding's code units."""
        encoding = self.workspace.position_encoding
        if encoding == lsp.PositionEncodingKind.Utf8:
            return len(text.encode("utf-8"))
        if encoding == lsp.PositionEncodingKind.Utf32:
            return len(text)
        return len(text.encode("utf-16-le")) // 2

    def position(self, analysis: Analysis, line: int, column: int) -> lsp.Position:
        """The editor's position of the checker's (line, column)."""
        lines = analysis.lines
        if not lines:
            return lsp.Position(0, 0)
        line = min(max(line, 1), len(lines))
        text = lines[line - 1]
        return lsp.Position(line - 1, self.units(text[: max(column - 1, 0)]))

    def range(self, analysis: Analysis, span: Span | None) -> lsp.Range:
        if span is None:  # about the whole file (no input, no output): its first line
            first = analysis.lines[0] if analysis.lines else ""
            return lsp.Range(lsp.Position(0, 0), lsp.Position(0, self.units(first)))
        return lsp.Range(self.position(analysis, span.line, span.column),
                         self.position(analysis, span.end_line, span.end_column))

    def column(self, analysis: Analysis, position: lsp.Position) -> tuple[int, int]:
        """The checker's (line, column) of the editor's position."""
        lines = analysis.lines
        line = position.line + 1
        if not 1 <= line <= len(lines):
            return line, position.character + 1
        text = lines[line - 1]
        units = 0
        for i, char in enumerate(text):
            if units >= position.character:
                return line, i + 1
            units += self.units(char)
        return line, len(text) + 1

    def offset(self, analysis: Analysis, position: lsp.Position) -> int:
        line, column = self.column(analysis, position)
        lines = analysis.text.split("\n")
        line = min(line, len(lines))
        return sum(len(x) + 1 for x in lines[: line - 1]) + column - 1

    # ---- conversions ----------------------------------------------------------------------
    def diagnostic(self, uri: str, analysis: Analysis, d) -> lsp.Diagnostic:
        text = [d.message]
        text += [f"note: {note}" for note in d.notes]
        if d.help:
            text.append(f"help: {d.help}")
        related = [lsp.DiagnosticRelatedInformation(
            location=lsp.Location(uri, self.range(analysis, span)), message=note)
            for span, note in analysis.related(d)]
        severity = (lsp.DiagnosticSeverity.Warning if d.severity == "warning"
                    else lsp.DiagnosticSeverity.Error)
        return lsp.Diagnostic(range=self.range(analysis, d.span), message="\n".join(text),
                              severity=severity, code=d.code, source="cnnc",
                              related_information=related or None)

    def location(self, uri: str, analysis: Analysis, span: Span) -> lsp.Location:
        return lsp.Location(uri=uri, range=self.range(analysis, span))


def file_name(uri: str) -> str:
    try:
        return to_fs_path(uri) or uri
    except Exception:  # an unusual scheme: the URI names the file well enough
        return uri


def build_server() -> CnncServer:
    """The server with every feature registered."""
    server = CnncServer()

    @server.feature(lsp.SHUTDOWN)
    def on_shutdown(ls: CnncServer, *args):
        ls.shut_down = True

    @server.feature(lsp.EXIT)
    def on_exit(ls: CnncServer, *args):
        ls.exit_status = 0 if ls.shut_down else 1

    @server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: CnncServer, params: lsp.DidOpenTextDocumentParams):
        ls.publish(params.text_document.uri)

    @server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: CnncServer, params: lsp.DidChangeTextDocumentParams):
        ls.schedule(params.text_document.uri)

    @server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: CnncServer, params: lsp.DidCloseTextDocumentParams):
        ls.forget(params.text_document.uri)

    @server.feature(lsp.TEXT_DOCUMENT_HOVER)
    def on_hover(ls: CnncServer, params: lsp.HoverParams):
        analysis = ls.analysis(params.text_document.uri)
        found = hovers.hover(analysis, *ls.column(analysis, params.position))
        if found is None:
            return None
        text, span = found
        return lsp.Hover(contents=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown, value=text),
                         range=ls.range(analysis, span))

    @server.feature(lsp.TEXT_DOCUMENT_DEFINITION)
    def definition(ls: CnncServer, params: lsp.DefinitionParams):
        uri = params.text_document.uri
        analysis = ls.analysis(uri)
        item = analysis.index.at(*ls.column(analysis, params.position))
        target = item.target if isinstance(item, Reference) else item
        if target is None:
            return None
        return ls.location(uri, analysis, target.span)

    @server.feature(lsp.TEXT_DOCUMENT_REFERENCES)
    def references(ls: CnncServer, params: lsp.ReferenceParams):
        uri = params.text_document.uri
        analysis = ls.analysis(uri)
        index = analysis.index
        item = index.at(*ls.column(analysis, params.position))
        if item is None:
            return None
        spans = []
        if isinstance(item, Reference) and item.target is None:
            if item.kind != "call":
                return None
            spans = [r.span for r in index.references  # a layer: every call of it
                     if r.kind == "call" and r.name == item.name]
        else:
            target = item.target if isinstance(item, Reference) else item
            if params.context.include_declaration:
                spans.append(target.span)
            spans += [r.span for r in index.uses(target)]
        return [ls.location(uri, analysis, span) for span in spans]

    @server.feature(lsp.TEXT_DOCUMENT_PREPARE_RENAME)
    def prepare_rename(ls: CnncServer, params: lsp.PrepareRenameParams):
        analysis = ls.analysis(params.text_document.uri)
        item = analysis.index.at(*ls.column(analysis, params.position))
        target = item.target if isinstance(item, Reference) else item
        if target is None:  # a layer, a merge, `in`: not names of this file
            return None
        return ls.range(analysis, item.span)

    @server.feature(lsp.TEXT_DOCUMENT_RENAME)
    def rename(ls: CnncServer, params: lsp.RenameParams):
        uri = params.text_document.uri
        analysis = ls.analysis(uri)
        item = analysis.index.at(*ls.column(analysis, params.position))
        target = item.target if isinstance(item, Reference) else item
        if target is None:
            return None
        new = params.new_name
        if not completion.NAME.fullmatch(new) or new in completion.RESERVED:
            raise JsonRpcInvalidParams(f"`{new}` is not a name: a name is a letter or `_` "
                                       "then letters, digits or `_`, and not a keyword")
        spans = [target.span] + [r.span for r in analysis.index.uses(target)]
        edits = [lsp.TextEdit(range=ls.range(analysis, span), new_text=new) for span in spans]
        return lsp.WorkspaceEdit(changes={uri: edits})

    @server.feature(lsp.TEXT_DOCUMENT_COMPLETION,
                    lsp.CompletionOptions(trigger_characters=[">", "(", ",", "="]))
    def on_completion(ls: CnncServer, params: lsp.CompletionParams):
        doc = ls.workspace.get_text_document(params.text_document.uri)
        analysis = ls.analysis(params.text_document.uri)
        offset = ls.offset(analysis, params.position)
        items = []
        for item in completion.complete(doc.source, offset):
            items.append(lsp.CompletionItem(
                label=item.label, kind=KINDS.get(item.kind), detail=item.detail or None,
                documentation=item.documentation or None, insert_text=item.insert,
                sort_text=item.sort or None))
        return lsp.CompletionList(is_incomplete=False, items=items)

    @server.feature(lsp.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
    def symbols(ls: CnncServer, params: lsp.DocumentSymbolParams):
        analysis = ls.analysis(params.text_document.uri)
        return document_symbols(ls, analysis)

    @server.feature(lsp.TEXT_DOCUMENT_FORMATTING)
    def formatting(ls: CnncServer, params: lsp.DocumentFormattingParams):
        analysis = ls.analysis(params.text_document.uri)
        return format_edits(ls, analysis)

    @server.feature(lsp.TEXT_DOCUMENT_CODE_ACTION,
                    lsp.CodeActionOptions(code_action_kinds=[lsp.CodeActionKind.QuickFix]))
    def code_actions(ls: CnncServer, params: lsp.CodeActionParams):
        uri = params.text_document.uri
        analysis = ls.analysis(uri)
        start = ls.column(analysis, params.range.start)
        end = ls.column(analysis, params.range.end)
        actions = []
        for d in analysis.diagnostics:
            if d.span is None or not _overlaps(d.span, start, end):
                continue
            for fix in quick_fixes.fixes(analysis, d):
                edits = [lsp.TextEdit(range=ls.range(analysis, span), new_text=text)
                         for span, text in fix.edits]
                actions.append(lsp.CodeAction(
                    title=fix.title, kind=lsp.CodeActionKind.QuickFix,
                    diagnostics=[ls.diagnostic(uri, analysis, d)],
                    edit=lsp.WorkspaceEdit(changes={uri: edits}),
                    is_preferred=fix.preferred or None))
        return actions

    return server


def _overlaps(span: Span, start: tuple, end: tuple) -> bool:
    return (span.line, span.column) <= end and start <= (span.end_line, span.end_column)


def document_symbols(ls: CnncServer, analysis: Analysis) -> list:
    """The outline: inputs, constants, bindings, outputs, and blocks with their parameters,
    constants and bindings; a tensor's detail is its shape."""
    top = []
    children: dict = {}
    for d in sorted(analysis.index.definitions, key=lambda d: (d.span.line, d.span.column)):
        symbol = lsp.DocumentSymbol(name=d.name, kind=SYMBOLS[d.kind],
                                    range=ls.range(analysis, d.whole.cover(d.span)),
                                    selection_range=ls.range(analysis, d.span),
                                    detail=_detail(analysis, d) or None)
        if d.kind == "block":
            symbol.children = children.setdefault(id(d.node), [])
            top.append(symbol)
        elif d.block is not None:
            children.setdefault(id(d.block), []).append(symbol)
        else:
            top.append(symbol)
    return top


def _detail(analysis: Analysis, d: Definition) -> str:
    if d.kind in ("input", "binding", "output"):
        shapes = dict.fromkeys(hovers.shape(n.shape) for n in analysis.tensor_nodes(d))
        return " or ".join(shapes)
    if d.kind == "block":
        return hovers.block_signature(analysis, d.node)
    if d.kind == "let":
        return analysis.text_of(d.whole)
    return ""


def format_edits(ls: CnncServer, analysis: Analysis):
    """The whole text replaced by its canonical layout (`cnnc fmt`); nothing when it is
    already canonical, None when the text has a syntax error (the diagnostics say where)."""
    try:
        from ..dsl.format import FormatError, format_source
    except ImportError:
        ls.window_show_message(lsp.ShowMessageParams(
            type=lsp.MessageType.Warning,
            message="cnnc: this version of cnnc has no formatter (cnnc.dsl.format)"))
        return None
    try:
        text = format_source(analysis.text, analysis.file)
    except FormatError:
        return None
    if text == analysis.text:
        return []
    lines = source_lines(analysis.text)
    end = ls.position(analysis, len(lines), len(lines[-1]) + 1)
    return [lsp.TextEdit(range=lsp.Range(lsp.Position(0, 0), end), new_text=text)]


def serve() -> int:
    """Run the server on standard input and output until the editor says exit (or closes
    the pipe); the exit status the protocol asks for."""
    import os
    import sys

    server = build_server()
    server.start_io()
    if sys.stdout.closed:  # pygls closes it on exit; later prints go nowhere
        sys.stdout = open(os.devnull, "w")
    return server.exit_status
