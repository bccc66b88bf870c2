"""The server's logic without the protocol: names and scopes, completion contexts read off
half-typed text, and quick fixes that the checker confirms (no pygls needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnc import api
from cnnc.compiler.symbolic import shape_text
from cnnc.lsp.analysis import Analysis
from cnnc.lsp.complete import complete
from cnnc.lsp.fixes import apply, fixes
from cnnc.lsp.hover import hover

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

SCOPES = """\
let y = 4
input x: [3, 8, 8]
block unit(c, k=y) {
    y = in -> conv(c, k, pad=1)
    return y -> relu
}
y2 = x -> unit(8)
output o = y2 -> flatten -> dense(y)
"""


def _at(text: str, needle: str, nth: int = 0) -> tuple[int, int]:
    """The checker's (line, column) of the ``nth`` occurrence of ``needle``."""
    start = -1
    for _ in range(nth + 1):
        start = text.index(needle, start + 1)
    line = text.count("\n", 0, start) + 1
    return line, start - (text.rfind("\n", 0, start) + 1) + 1


def test_a_name_means_what_its_scope_says():
    analysis = Analysis(SCOPES)
    index = analysis.index

    def target(needle, nth=0):
        item = index.at(*_at(SCOPES, needle, nth))
        return item.target.kind, item.target.span.line

    assert target("y -> relu") == ("binding", 4)  # the block's own binding, not the constant
    assert target("y)") == ("let", 1)  # dense(y): the top-level constant
    assert target("y) {") == ("let", 1)  # k=y: a parameter default reads the constants
    assert target("c, k, pad") == ("param", 3)
    assert target("unit(8)") == ("block", 3)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.cnn")), ids=lambda p: p.stem)
def test_every_layer_of_an_example_has_a_hover_with_its_shape(path):
    text = path.read_text()
    analysis = Analysis(text, str(path))
    assert analysis.network.ok
    for call in analysis.index.calls:
        found = hover(analysis, call.name_span.line, call.name_span.column)
        assert found is not None, call
        markdown, span = found
        assert span == call.span
        if call.name in analysis.index.blocks:  # the output of its last instance
            node = analysis.nodes_in_block_call(call)[-1]
        else:  # the first row of the table of instances
            node = analysis.nodes_of_call(call)[0]
        assert shape_text(node.shape) in markdown


def test_hover_on_in_shows_the_block_input_of_every_call():
    text = ("input x: [3, 8, 8]\nblock b(c) {\n    y = in -> conv(c, 1)\n"
            "    return concat(y, in)\n}\noutput o = x -> b(4) -> b(2)\n")
    analysis = Analysis(text)
    for needle in ("in ->", "in)"):
        markdown, _ = hover(analysis, *_at(text, needle))
        assert markdown == "`in`: the block's input: [3, 8, 8] or [7, 8, 8]"


def _labels(text: str, marker: str) -> set:
    """Completion labels with the cursor just after ``marker``."""
    return {item.label for item in complete(text, text.index(marker) + len(marker))}


def test_completion_reads_the_context_of_half_typed_text():
    text = "input x: [3, 8, 8]\nlet w = 8\nh = x -> conv(w, 3, str"
    assert "stride" in _labels(text, "conv(w, 3, ")
    assert "out" not in _labels(text, "conv(w, 3, ")
    assert "w" in _labels(text, "conv(")  # a positional value may be a constant
    assert {"conv", "relu", "maxpool"} <= _labels(text, "x -> ")
    assert {"x"} <= _labels(text, "h = ")
    commented = "input x: [3, 8, 8]  # x -> "
    assert _labels(commented, "# x -> ") == set()


def test_completion_of_argument_words():
    text = "input x: [3, 8]\nh = x -> upsample(2, mode=\n"
    from cnnc.ops import LAYERS

    mode = next(s for s in LAYERS["upsample"].args if s.name == "mode")
    words = set(mode.kind.split(":", 1)[1].split("|"))
    assert _labels(text, "mode=") == words
    assert _labels("h = x -> conv(4, 3, bias=", "bias=") == {"true", "false"}


def test_completion_in_a_block_offers_its_tensors_and_parameters():
    text = "block b(c, k=3) {\n    y = in -> conv(c, \n    return \n}\n"
    assert {"in", "y"} <= _labels(text, "return ")
    assert {"c", "k"} <= _labels(text, "conv(c, ")
    assert {"let", "return"} == _labels("block b(c) {\n    \n}", "{\n    ")


@pytest.mark.parametrize("path", sorted((EXAMPLES / "broken").glob("*.cnn")),
                         ids=lambda p: p.stem)
def test_every_quick_fix_mends_what_it_is_offered_for(path):
    text = path.read_text()
    analysis = Analysis(text, str(path))
    for diag in analysis.diagnostics:
        for fix in fixes(analysis, diag):
            after = api.check(apply(text, fix.edits))
            before = sum(d.code == diag.code for d in analysis.diagnostics)
            assert sum(d.code == diag.code for d in after.diagnostics) < before, fix.title


def test_the_quick_fixes_of_the_examples():
    titles = set()
    for path in sorted((EXAMPLES / "broken").glob("*.cnn")):
        analysis = Analysis(path.read_text(), str(path))
        for diag in analysis.diagnostics:
            titles |= {fix.title for fix in fixes(analysis, diag)}
    assert "Change `batchnrom` to `batchnorm`" in titles  # did you mean
    assert "Insert `flatten` before `dense`" in titles
    assert any(t.startswith("Use pad=2 on the conv at ") for t in titles)


def test_a_fix_adds_or_replaces_an_argument():
    # the pool's pad given by position: replaced there; its ceil not given: added
    text = ("input x: [3, 8, 8]\na = x -> conv(4, 3, stride=2, pad=1)\n"
            "b = x -> maxpool(3, 2, 0)\noutput o = concat(a, b)\n")
    analysis = Analysis(text)
    e302 = next(d for d in analysis.diagnostics if d.code == "E302")
    made = [apply(text, fix.edits) for fix in fixes(analysis, e302)]
    assert any("maxpool(3, 2, 1)" in fixed for fixed in made), e302.help
    assert any("maxpool(3, 2, 0, ceil=true)" in fixed for fixed in made), e302.help
    for fixed in made:
        assert not any(d.code == "E302" for d in api.check(fixed).diagnostics), fixed


@pytest.mark.parametrize("name", ["tiny", "googlenet", "unet"])
def test_no_position_of_an_example_breaks_hover_or_completion(name):
    text = SCOPES if name == "tiny" else (EXAMPLES / f"{name}.cnn").read_text()
    analysis = Analysis(text)
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        for column in range(1, len(line) + 2):
            hover(analysis, number, column)
    for offset in range(0, len(text) + 1, 3):  # every prefix, as if typed up to there
        complete(text[:offset], offset)
        complete(text, offset)


def test_a_half_typed_file_is_checked_without_a_traceback():
    text = (EXAMPLES / "googlenet.cnn").read_text()
    for offset in range(0, len(text), 97):
        analysis = Analysis(text[:offset])
        for diag in analysis.diagnostics:
            fixes(analysis, diag)
