"""`cnnc lsp` driven as an editor drives it: open, edit, hover, go to definition, find
references, complete, outline, format, quick-fix, shut down (the client is conftest.py's)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cnnc import api
from cnnc.compiler.symbolic import shape_text

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# The README's tour: the max pool without `pad=1` comes out one row and column short of the
# convolution, at both calls of the block.
BROKEN = """\
# tiny.cnn -- a small CIFAR-10 classifier with two reduction blocks
network tiny

input image: [3, 32, 32]

# halve the map: a strided convolution and a max pool side by side, concatenated
block reduce(c) {
    conv_path = in -> conv(c, 3, stride=2, pad=1) -> batchnorm -> relu
    pool_path = in -> maxpool(3, stride=2)
    return concat(conv_path, pool_path)
}

features = image -> conv(32, 3, pad=1) -> relu -> reduce(32) -> reduce(64)
output logits = features -> global_avgpool -> flatten -> dense(10)
"""


def lsp_range(span):
    """The LSP range of a checker span (ASCII text)."""
    return {"start": {"line": span.line - 1, "character": span.column - 1},
            "end": {"line": span.end_line - 1, "character": span.end_column - 1}}


def conforms(value, kind):
    """``value`` read as the protocol type ``kind`` by lsprotocol's own converter (a reply
    that does not fit the protocol raises)."""
    from lsprotocol import converters

    return converters.get_converter().structure(value, kind)


def test_replies_fit_the_protocol_types(editor):
    from lsprotocol import types as lsp

    editor.open("types.cnn", BROKEN)
    line, character = editor.position_of(BROKEN, "conv(32")
    conforms(editor.request("textDocument/hover", editor.at("types.cnn", line, character)),
             lsp.Hover)
    completion = editor.request("textDocument/completion",
                                editor.at("types.cnn", *editor.position_of(BROKEN, "relu ->",
                                                                           shift=7)))
    conforms(completion, lsp.CompletionList)
    for symbol in editor.request("textDocument/documentSymbol",
                                 {"textDocument": {"uri": editor.uri("types.cnn")}}):
        conforms(symbol, lsp.DocumentSymbol)
    start = {"line": 9, "character": 11}  # on the concat of the E302
    actions = editor.request("textDocument/codeAction", {
        "textDocument": {"uri": editor.uri("types.cnn")},
        "range": {"start": start, "end": start}, "context": {"diagnostics": []}})
    assert actions
    for action in actions:
        conforms(action, lsp.CodeAction)
    diagnostics = editor.change("types.cnn", [(None, BROKEN)])
    for d in diagnostics:
        conforms(d, lsp.Diagnostic)


def test_the_server_says_what_it_can_do(editor):
    caps = editor.capabilities
    for feature in ("hoverProvider", "definitionProvider", "referencesProvider",
                    "documentSymbolProvider", "documentFormattingProvider",
                    "codeActionProvider", "completionProvider", "renameProvider"):
        assert caps.get(feature), feature
    assert ">" in caps["completionProvider"]["triggerCharacters"]


def test_diagnostics_are_those_of_cnnc_check(editor):
    got = editor.open("broken.cnn", BROKEN)
    want = api.check(BROKEN).diagnostics
    assert [d["code"] for d in got] == [d.code for d in want]
    for lsp_diag, diag in zip(got, want):
        assert lsp_diag["range"] == lsp_range(diag.span)
        assert lsp_diag["source"] == "cnnc"
        assert lsp_diag["severity"] == (1 if diag.severity == "error" else 2)
        lines = lsp_diag["message"].split("\n")
        assert lines[0] == diag.message
        assert lines[1:] == [f"note: {n}" for n in diag.notes] + [f"help: {diag.help}"]


def test_notes_that_point_elsewhere_are_related_locations(editor):
    got = editor.open("related.cnn", BROKEN)
    concat = next(d for d in got if d["code"] == "E302")
    related = {(r["location"]["range"]["start"]["line"],
                r["location"]["range"]["start"]["character"]): r["message"]
               for r in concat["relatedInformation"]}
    # "from conv(c, 3, stride=2, pad=1) at 8:23", "from maxpool(3, stride=2) at 9:23",
    # "in block `reduce` called at 13:51": 0-based in the protocol
    assert "from conv(c, 3, stride=2, pad=1) at 8:23" in related[(7, 22)]
    assert "from maxpool(3, stride=2) at 9:23" in related[(8, 22)]
    assert related[(12, 50)] == "in block `reduce` called at 13:51"
    for r in concat["relatedInformation"]:
        assert r["location"]["uri"] == editor.uri("related.cnn")


def test_an_edit_updates_the_diagnostics(editor):
    editor.open("edit.cnn", BROKEN)
    typed = "maxpool(3, stride=2"
    line, character = editor.position_of(BROKEN, typed, shift=len(typed))
    point = {"line": line, "character": character}
    after = editor.change("edit.cnn", [({"start": point, "end": point}, ", pad=1")])
    fixed = BROKEN.replace("maxpool(3, stride=2)", "maxpool(3, stride=2, pad=1)")
    assert [d["code"] for d in after] == [d.code for d in api.check(fixed).diagnostics]
    assert not any(d["code"] == "E302" for d in after)
    # a syntax error while typing: the parser's diagnostic, and the server carries on
    broken = editor.change("edit.cnn", [(None, fixed.replace("-> relu ->", "-> relu ->>", 1))])
    assert [d["code"] for d in broken] == ["E103"]
    again = editor.change("edit.cnn", [(None, fixed)])
    assert not any(d["severity"] == 1 for d in again)


def test_hover_on_a_layer_shows_its_shape_parameters_and_macs(editor):
    editor.open("hover.cnn", BROKEN)
    net = api.check(BROKEN)
    conv = net.nodes["features.conv1"]
    line, character = editor.position_of(BROKEN, "conv(32, 3, pad=1)", shift=2)
    hover = editor.request("textDocument/hover", editor.at("hover.cnn", line, character))
    text = hover["contents"]["value"]
    assert "features.conv1" in text
    assert f"output: {shape_text(conv.shape)}" in text
    assert f"parameters: {conv.param_count:,}" in text
    assert f"MACs: {conv.macs:,}" in text
    assert hover["range"] == lsp_range(conv.span)


def test_hover_inside_a_block_lists_every_instance(editor):
    editor.open("instances.cnn", BROKEN)
    net = api.check(BROKEN)
    line, character = editor.position_of(BROKEN, "conv(c, 3", shift=1)
    text = editor.request("textDocument/hover",
                          editor.at("instances.cnn", line, character))["contents"]["value"]
    convs = [n for n in net.nodes.values() if n.name.endswith("conv_path.conv1")]
    assert len(convs) == 2
    for node in convs:
        assert f"`{node.name}`" in text and shape_text(node.shape) in text


def test_hover_on_a_block_call_shows_what_it_expands_to(editor):
    editor.open("block.cnn", BROKEN)
    net = api.check(BROKEN)
    line, character = editor.position_of(BROKEN, "reduce(64)", shift=3)
    text = editor.request("textDocument/hover",
                          editor.at("block.cnn", line, character))["contents"]["value"]
    inside = [n for n in net.nodes.values() if n.name.startswith("features.reduce2.")]
    assert f"expands to {len(inside)} layers" in text
    assert f"parameters: {sum(n.param_count for n in inside):,}" in text
    assert f"MACs: {sum(n.macs for n in inside):,}" in text
    assert f"output: {shape_text(inside[-1].shape)}" in text


def test_hover_shows_symbolic_sizes_as_expressions(editor):
    text = "input x: [3, H, W]\noutput y = x -> conv(8, 3, stride=2) -> relu\n"
    editor.open("symbolic.cnn", text)
    net = api.check(text)
    conv = next(n for n in net.layers if n.op == "conv")
    line, character = editor.position_of(text, "conv(8")
    hover = editor.request("textDocument/hover", editor.at("symbolic.cnn", line, character))
    assert f"output: {shape_text(conv.shape)}" in hover["contents"]["value"]
    assert "H" in shape_text(conv.shape)


def test_go_to_definition_of_bindings_blocks_and_constants(editor):
    text = ("let width = 16\ninput x: [3, 8, 8]\n"
            "block unit(c, k=3) {\n    y = in -> conv(c, k, pad=1)\n    return y -> relu\n}\n"
            "h = x -> unit(width) -> unit(c=width, k=1)\noutput o = h -> flatten -> dense(10)\n")
    editor.open("defs.cnn", text)

    def target(needle, nth=0, shift=0):
        line, character = editor.position_of(text, needle, nth, shift)
        found = editor.request("textDocument/definition", editor.at("defs.cnn", line, character))
        start = found["range"]["start"]
        return start["line"], start["character"]

    assert target("unit(width)") == editor.position_of(text, "unit(c")          # a block
    assert target("width)") == editor.position_of(text, "width")                # a constant
    assert target("y -> relu") == editor.position_of(text, "y = in")            # a block's binding
    assert target("h -> flatten") == editor.position_of(text, "h = x")          # a top-level one
    assert target("c=width") == editor.position_of(text, "c, k=3")              # a block parameter
    assert target("c, k, pad") == editor.position_of(text, "c, k=3")            # used in the body


def test_find_references(editor):
    text = ("input x: [3, 8, 8]\nblock unit(c) {\n    return in -> conv(c, 3) -> relu\n}\n"
            "h = x -> unit(4) -> unit(8)\noutput o = h -> unit(2) -> flatten\n")
    editor.open("refs.cnn", text)
    line, character = editor.position_of(text, "unit(c)")
    found = editor.request("textDocument/references", {
        **editor.at("refs.cnn", line, character), "context": {"includeDeclaration": True}})
    starts = sorted((f["range"]["start"]["line"], f["range"]["start"]["character"])
                    for f in found)
    calls = ["unit(c)", "unit(4)", "unit(8)", "unit(2)"]
    assert starts == sorted(editor.position_of(text, call) for call in calls)


def test_rename_changes_the_definition_and_every_use(editor):
    text = ("input x: [3, 8, 8]\nblock unit(c) {\n    y = in -> conv(c, 3, pad=1)\n"
            "    return y -> relu\n}\nh = x -> unit(c=4) -> unit(8)\n"
            "output o = h -> flatten -> dense(10)\n")
    editor.open("rename.cnn", text)
    line, character = editor.position_of(text, "c, 3")
    place = editor.at("rename.cnn", line, character)
    assert editor.request("textDocument/prepareRename", place) is not None
    edit = editor.request("textDocument/rename", {**place, "newName": "width"})
    renamed = editor.apply_edits(text, edit["changes"][editor.uri("rename.cnn")])
    assert "block unit(width)" in renamed and "conv(width, 3" in renamed
    assert "unit(width=4)" in renamed
    assert api.check(renamed).ok
    # a layer is not a name of the file; a keyword is not a name
    line, character = editor.position_of(text, "relu")
    assert editor.request("textDocument/prepareRename",
                          editor.at("rename.cnn", line, character)) is None
    editor.next_id += 1
    editor.send({"id": editor.next_id, "method": "textDocument/rename",
                 "params": {**place, "newName": "input"}})
    reply = editor.receive(lambda m: m.get("id") == editor.next_id and "method" not in m)
    assert "is not a name" in reply["error"]["message"]


def _labels(editor, name, text, needle, nth=0):
    line, character = editor.position_of(text, needle, nth, len(needle))
    result = editor.request("textDocument/completion", editor.at(name, line, character))
    return {item["label"]: item for item in result["items"]}


def test_completion_of_layers_blocks_and_arguments(editor):
    text = BROKEN.replace("-> relu -> reduce(32)", "-> relu -> reduce(32) -> ")
    editor.open("complete.cnn", text)
    items = _labels(editor, "complete.cnn", text, "reduce(32) -> ")
    from cnnc.ops import LAYERS

    assert set(LAYERS) <= set(items)
    assert "reduce" in items and items["reduce"]["detail"] == "block reduce(c)"
    assert items["conv"]["detail"].startswith("conv(out, kernel, stride=1, pad=0")

    args = _labels(editor, "complete.cnn", text, "maxpool(3, ")
    assert {"stride", "pad", "ceil"} <= set(args)
    assert "kernel" not in args  # given by position
    assert args["pad"]["detail"].startswith("default 0")
    assert args["pad"]["insertText"] == "pad="

    words = _labels(editor, "complete.cnn", text, "pad=", nth=0)
    assert {"same", "valid"} <= set(words)

    tensors = _labels(editor, "complete.cnn", text, "return concat(")
    assert {"in", "conv_path", "pool_path"} <= set(tensors)


def test_outline(editor):
    editor.open("outline.cnn", BROKEN)
    symbols = editor.request("textDocument/documentSymbol",
                             {"textDocument": {"uri": editor.uri("outline.cnn")}})
    names = [s["name"] for s in symbols]
    assert names == ["image", "reduce", "features", "logits"]
    block = symbols[1]
    assert [c["name"] for c in block["children"]] == ["c", "conv_path", "pool_path"]
    logits = symbols[3]
    assert logits["detail"] == shape_text(api.check(BROKEN).nodes["logits.dense1"].shape)


def test_quick_fix_applies_the_help(editor):
    editor.open("fix.cnn", BROKEN)
    concat = next(d for d in api.check(BROKEN).diagnostics if d.code == "E302")
    actions = editor.request("textDocument/codeAction", {
        "textDocument": {"uri": editor.uri("fix.cnn")}, "range": lsp_range(concat.span),
        "context": {"diagnostics": []}})
    titles = [a["title"] for a in actions]
    assert "Use pad=1 on the maxpool at 9:23" in titles
    pad = next(a for a in actions if a["title"] == "Use pad=1 on the maxpool at 9:23")
    assert pad["kind"] == "quickfix"
    fixed = editor.apply_edits(BROKEN, pad["edit"]["changes"][editor.uri("fix.cnn")])
    assert "maxpool(3, stride=2, pad=1)" in fixed
    assert api.check(fixed).ok


def test_quick_fix_inserts_flatten(editor):
    text = (EXAMPLES / "broken" / "missing_flatten.cnn").read_text()
    editor.open("flatten.cnn", text)
    e304 = next(d for d in api.check(text).diagnostics if d.code == "E304")
    actions = editor.request("textDocument/codeAction", {
        "textDocument": {"uri": editor.uri("flatten.cnn")}, "range": lsp_range(e304.span),
        "context": {"diagnostics": []}})
    insert = next(a for a in actions if a["title"] == "Insert `flatten` before `dense`")
    fixed = editor.apply_edits(text, insert["edit"]["changes"][editor.uri("flatten.cnn")])
    assert "flatten -> dense" in fixed
    assert not any(d.code == "E304" for d in api.check(fixed).diagnostics)


def test_formatting_is_cnnc_fmt(editor):
    fmt = pytest.importorskip("cnnc.dsl.format")
    messy = "input x:[3,8,8]\noutput   y = x->conv(4,3 , pad=1)->relu\n"
    editor.open("format.cnn", messy)
    edits = editor.request("textDocument/formatting", {
        "textDocument": {"uri": editor.uri("format.cnn")},
        "options": {"tabSize": 4, "insertSpaces": True}})
    assert editor.apply_edits(messy, edits) == fmt.format_source(messy)
    # a file with a syntax error is left alone
    editor.open("format_bad.cnn", "input x: [3, 8, 8\n")
    assert not editor.request("textDocument/formatting", {
        "textDocument": {"uri": editor.uri("format_bad.cnn")},
        "options": {"tabSize": 4, "insertSpaces": True}})


def test_positions_count_utf16_units(editor):
    # a comment with a character outside the BMP (two UTF-16 units) before the error
    text = "input x: [3, 8, 8]\noutput y = x -> convv(4, 3) # \U0001d70e\n"
    got = editor.open("utf16.cnn", text)
    assert got[0]["code"] == "E203"
    start = got[0]["range"]["start"]
    assert (start["line"], start["character"]) == editor.position_of(text, "convv")
    text2 = "input x: [3, 8, 8] # \U0001d70e\U0001d70e\noutput y = x -> conv(4, 3)\n"
    editor.open("utf16b.cnn", text2)
    line, character = editor.position_of(text2, "conv(4")
    hover = editor.request("textDocument/hover", editor.at("utf16b.cnn", line, character))
    assert "y.conv1" in hover["contents"]["value"]


def test_shutdown_and_exit(editor):
    # the last test of the module: the fixture's server shuts down cleanly
    assert editor.request("shutdown", None) is None
    editor.notify("exit", None)
    assert editor.process.wait(timeout=60) == 0


def test_without_pygls_the_command_says_what_to_install(monkeypatch):
    import argparse
    import sys

    from cnnc.commands import lsp as command
    from cnnc.commands.common import CommandError

    monkeypatch.setitem(sys.modules, "pygls", None)
    with pytest.raises(CommandError, match=re.escape("pip install 'cnnc[lsp]'")):
        command.main(argparse.Namespace(stdio=False, log=None))
