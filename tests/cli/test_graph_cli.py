"""`cnnc graph`: every example drawn as a well-formed SVG naming every layer; blocks
collapsed and expanded; broken models drawn with their codes; PNG, PDF and DOT; what
happens without Graphviz's `dot`; a screenshot through headless Chromium where there is one.
"""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import cnnc
from cnnc.cli import main
from cnnc.compiler import draw

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.cnn"))
SVG = "{http://www.w3.org/2000/svg}"


def _titles(svg_path: Path) -> set:
    root = ET.parse(svg_path).getroot()  # raises on a malformed document
    assert root.tag == f"{SVG}svg"
    return {t.text for t in root.iter(f"{SVG}title")}


@pytest.fixture
def no_dot(monkeypatch):
    """A machine without Graphviz's `dot`, whatever this one has."""
    monkeypatch.setattr(draw, "find_dot", lambda: None)


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_draws_a_well_formed_svg_naming_every_layer(example, tmp_path, no_dot,
                                                                  capsys):
    out = tmp_path / f"{example.stem}.svg"
    assert main(["graph", str(example), "-o", str(out)]) == 0
    titles = _titles(out)
    net = cnnc.check(example)
    assert set(net.nodes) <= titles
    err = capsys.readouterr().err
    assert f"wrote {out}" in err and "laid out by cnnc" in err


def test_boxes_show_the_layer_its_shape_and_parameters(tmp_path, no_dot):
    out = tmp_path / "lenet5.svg"
    assert main(["graph", str(ROOT / "examples" / "lenet5.cnn"), "-o", str(out), "-q"]) == 0
    root = ET.parse(out).getroot()
    boxes = {g.find(f"{SVG}title").text: [t.text for t in g.iter(f"{SVG}text")]
             for g in root.iter(f"{SVG}g") if "node" in g.get("class", "")}
    net = cnnc.check(ROOT / "examples" / "lenet5.cnn")
    c1 = net.nodes["features.c1"]
    assert boxes["features.c1"] == ["features.c1", "conv(6, 5)", "[6, 28, 28]",
                                    f"{c1.param_count:,} params"]
    assert boxes["digit"] == ["digit", "input [1, 32, 32]"]
    assert "output logits" in boxes["logits.out"]
    edges = [t.text for g in root.iter(f"{SVG}g") if g.get("class") == "edge"
             for t in g.iter(f"{SVG}text")]
    assert "[6, 28, 28]" in edges and len(edges) == len(net.layers)


def test_blocks_collapse_each_call_with_its_totals(tmp_path, no_dot):
    net = cnnc.check(ROOT / "examples" / "googlenet.cnn")
    pic = draw.picture(net, blocks=True)
    calls = [b for b in pic.boxes.values() if b.kind == "block"]
    assert len(calls) == 9  # the nine inception modules
    first = pic.boxes["i3.inception1"]
    members = [n for n in net.layers if n.name.startswith("i3.inception1.")]
    params = sum(n.param_count for n in members)
    assert first.lines[1] == "inception(64, 96, 128, 16, 32, 32)"
    assert first.lines[2] == "[256, 28, 28]"
    assert first.lines[3] == f"{len(members)} layers, {params:,} params, " \
        f"{sum(n.macs for n in members):,} MACs"
    expanded = draw.picture(net, blocks=True, expand=["i4.inception2"])
    assert "i4.inception2" not in expanded.boxes
    assert "i4.inception2.b3.conv2" in expanded.boxes
    assert len(expanded.boxes) == len(pic.boxes) - 1 + 14
    out = tmp_path / "g.svg"
    assert main(["graph", str(ROOT / "examples" / "googlenet.cnn"), "-o", str(out),
                 "--expand", "inception", "-q"]) == 0  # every call of the block opened
    assert set(net.nodes) <= _titles(out)


def test_expand_of_an_unknown_name_says_which_there_are(capsys):
    status = main(["graph", str(ROOT / "examples" / "googlenet.cnn"), "--expand", "i3.inception9"])
    assert status == 2
    err = capsys.readouterr().err
    assert "no block call or block of that name" in err and "did you mean i3.inception" in err


def test_a_broken_model_is_drawn_with_its_codes(tmp_path, no_dot, capsys):
    broken = ROOT / "examples" / "broken" / "inception_pad.cnn"
    out = tmp_path / "broken.svg"
    assert main(["graph", str(broken), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "error[E302]" in err and "1 error marked" in err
    root = ET.parse(out).getroot()
    marked = [g for g in root.iter(f"{SVG}g") if "node" in g.get("class", "")
              and any(t.text == "E302" for t in g.iter(f"{SVG}text"))]
    assert [g.find(f"{SVG}title").text for g in marked] == ["features.inception1.concat1"]
    assert marked[0].find(f"{SVG}rect").get("stroke") == draw.ERROR_COLOUR


def test_an_error_in_a_block_marks_the_failing_call_only():
    # the same block called twice: a 3x3 window fits the 8x8 input, a 9x9 one its 6x6 output
    # does not; the diagnostic points into the block, its note at the second call
    net = cnnc.check("""network twice
block squeeze(k) {
    return in -> conv(4, k) -> relu
}
input x: [1, 8, 8]
output y = x -> squeeze(3) -> squeeze(9)
""")
    assert [d.code for d in net.errors] and len(net.errors) == 1
    pic = draw.picture(net, blocks=True)
    assert [b.id for b in pic.boxes.values() if b.errors] == ["y.squeeze2"]
    flat = draw.picture(net)
    assert [b.id for b in flat.boxes.values() if b.errors] == ["y.squeeze2.conv1"]


def test_a_model_that_does_not_parse_has_nothing_to_draw(tmp_path, capsys):
    bad = tmp_path / "bad.cnn"
    bad.write_text("network x\ninput a: [3, 8, 8\n")
    assert main(["graph", str(bad), "-o", str(tmp_path / "bad.svg")]) == 1
    assert "nothing to draw" in capsys.readouterr().err
    assert not (tmp_path / "bad.svg").exists()


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG\r\n\x1a\n"), (".pdf", b"%PDF")])
def test_png_and_pdf_without_graphviz(tmp_path, no_dot, suffix, magic):
    pytest.importorskip("PIL")
    out = tmp_path / f"tiny{suffix}"
    assert main(["graph", str(ROOT / "examples" / "digits.cnn"), "-o", str(out), "-q"]) == 0
    assert out.read_bytes().startswith(magic)


def test_dot_text_names_every_layer_and_edge(tmp_path):
    pytest.importorskip("graphviz")
    out = tmp_path / "g.dot"
    assert main(["graph", str(ROOT / "examples" / "resnet18.cnn"), "-o", str(out), "-q"]) == 0
    text = out.read_text()
    net = cnnc.check(ROOT / "examples" / "resnet18.cnn")
    assert text.startswith("digraph resnet18 {")
    for name in net.nodes:
        assert f'"{name}" [label=' in text or f"{name} [label=" in text
    assert text.count("->") == net.graph.number_of_edges()


def test_without_dot_layout_dot_says_how_to_get_it_and_writes_the_dot(tmp_path, no_dot,
                                                                       capsys):
    pytest.importorskip("graphviz")
    out = tmp_path / "m.svg"
    status = main(["graph", str(ROOT / "examples" / "lenet5.cnn"), "-o", str(out),
                   "--layout", "dot"])
    assert status == 2
    err = capsys.readouterr().err
    assert "apt-get install graphviz" in err and "brew install graphviz" in err
    assert f"wrote the DOT text to {tmp_path / 'm.dot'}" in err
    assert not out.exists()
    assert (tmp_path / "m.dot").read_text().startswith("digraph lenet5")


def test_an_unknown_extension_is_refused(tmp_path, capsys):
    status = main(["graph", str(ROOT / "examples" / "lenet5.cnn"), "-o", str(tmp_path / "m.jpg")])
    assert status == 2
    assert "end it in .svg, .png, .pdf or .dot" in capsys.readouterr().err


def test_with_graphviz_dot_where_installed(tmp_path, capsys):
    pytest.importorskip("graphviz")
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot is not installed")
    out = tmp_path / "g.svg"
    assert main(["graph", str(ROOT / "examples" / "googlenet.cnn"), "-o", str(out),
                 "--blocks", "--layout", "dot"]) == 0
    assert "laid out by Graphviz's dot" in capsys.readouterr().err
    titles = _titles(out)
    assert "i3.inception1" in titles and "stem.conv1" in titles


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_the_svg_is_not_blank_in_a_browser(tmp_path, no_dot):
    browser = _chromium()
    if browser is None:
        pytest.skip("no headless Chromium (Debian's chromium) installed")
    image = pytest.importorskip("PIL.Image")
    out = tmp_path / "tiny.svg"
    assert main(["graph", str(ROOT / "examples" / "digits.cnn"), "-o", str(out), "-q"]) == 0
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                    f"--screenshot={shot}", "--window-size=800,1200", out.as_uri()],
                   check=True, capture_output=True, timeout=120)
    pixels = image.open(shot).convert("L")
    low, high = pixels.getextrema()
    assert high - low > 100  # dark text and lines on a light page
    dark = sum(1 for p in pixels.getdata() if p < 128)
    assert dark > 500


@pytest.mark.parametrize("source, picture, blocks", [
    ("docs/images/tiny.cnn", "docs/images/tiny.svg", False),
    ("examples/googlenet.cnn", "docs/images/googlenet-blocks.svg", True),
])
def test_the_committed_pictures_are_current(source, picture, blocks):
    """The README's and the docs' pictures are what `cnnc graph --layout builtin` draws
    today; redraw them with that command when this fails."""
    pic = draw.picture(cnnc.check(ROOT / source), blocks=blocks)
    assert draw.svg_text(pic) == (ROOT / picture).read_text()


def test_without_o_the_dot_text_goes_to_standard_output(capsysbinary):
    pytest.importorskip("graphviz")
    assert main(["graph", str(ROOT / "examples" / "lenet5.cnn")]) == 0
    out, err = capsysbinary.readouterr()
    assert out.startswith(b"digraph lenet5 {") and err == b""


def test_svg_to_a_pipe(capsysbinary, no_dot):
    assert main(["graph", str(ROOT / "examples" / "lenet5.cnn"), "-o", "-", "--type", "svg"]) \
        == 0
    out, _ = capsysbinary.readouterr()
    assert ET.fromstring(out).tag == f"{SVG}svg"


def test_the_command_knows_the_formats_draw_writes():
    from cnnc.commands import graph

    assert graph.FORMATS == draw.FORMATS
