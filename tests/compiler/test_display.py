"""Notebook display: networks, compiled models and built models through IPython's display
formatter."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import cnnc
import cnnc.compiler.display  # noqa: F401 - until cnnc.api imports it (it fills in the hook)

ROOT = Path(__file__).resolve().parents[2]
LENET = ROOT / "examples" / "lenet5.cnn"


@pytest.fixture
def formatter():
    formatters = pytest.importorskip("IPython.core.formatters")
    return formatters.DisplayFormatter()


def test_a_network_shows_its_table_and_picture(formatter):
    net = cnnc.check(LENET)
    data, _ = formatter.format(net)
    html = data["text/html"]
    assert "<h4>network lenet5</h4>" in html
    assert "<td>features.c1</td>" in html and "117,600" in html
    assert "Total parameters:  61,706" in html
    svg = ET.fromstring(data["image/svg+xml"])
    titles = {t.text for t in svg.iter("{http://www.w3.org/2000/svg}title")}
    assert set(net.nodes) <= titles
    assert "<svg" in html


def test_a_compiled_model_shows_the_same(formatter):
    data, _ = formatter.format(cnnc.compile(LENET))
    assert "<h4>network lenet5</h4>" in data["text/html"]
    assert "image/svg+xml" in data


def test_a_broken_network_shows_its_diagnostics_and_what_was_built(formatter):
    net = cnnc.check(ROOT / "examples" / "broken" / "inception_pad.cnn")
    data, _ = formatter.format(net)
    assert "error[E302]" in data["text/html"]
    assert "E302" in data["image/svg+xml"]


def test_a_network_that_did_not_parse_has_no_picture(formatter):
    net = cnnc.check("network x\ninput a: [3, 8\n")
    data, _ = formatter.format(net)
    assert "image/svg+xml" not in data
    assert "error[E1" in data["text/html"]


def test_a_large_network_with_blocks_is_drawn_collapsed():
    from cnnc.compiler.display import network_svg

    svg = network_svg(cnnc.check(ROOT / "examples" / "googlenet.cnn"))
    assert "i3.inception1" in svg and "i3.inception1.b1.conv1" not in svg


def test_a_built_model_renders_its_plan():
    from cnnc.compiler.display import model_html

    model = cnnc.compile(LENET).build()
    html = model_html(model)
    assert "<h4>model lenet5</h4>" in html
    assert "61,706 parameters" in html
    assert "<td>features.c1</td>" in html and "<svg" in html
