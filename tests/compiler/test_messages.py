"""Diagnostics as data: every message comes from its code's template in the registry
(`dsl/diagnostics.py`), every template is reached by some model, the checker names no layer,
and a checked network carries its source so that it renders its own diagnostics."""

import ast
import re
import string
from pathlib import Path

import pytest

from cnnc.compiler.check import check_bytes, check_source
from cnnc.compiler.elaborate import MAX_BLOCK_DEPTH
from cnnc.compiler.graph import Network, Node
from cnnc.compiler.passes import names as names_pass
from cnnc.compiler.passes.infer import InferContext
from cnnc.compiler.passes.report import Reporter
from cnnc.compiler.passes.sizes import solve_sizes
from cnnc.compiler.symbolic import Condition, sym
from cnnc.dsl.diagnostics import CODES, Code, Span, diagnostic, message, render
from cnnc.dsl.parser import MAX_DEPTH
from cnnc.ops import LAYERS, MERGES

ROOT = Path(__file__).resolve().parents[2]
HEAD = "input x: [3, 8, 8]\n"
BLOCK = "block b() {\n  return in\n}\n"


def deep_blocks(depth):
    lines = [f"block b{i}() {{\n  return in -> b{i + 1}\n}}\n" for i in range(depth)]
    lines.append(f"block b{depth}() {{\n  return in\n}}\n")
    return "".join(lines) + HEAD + "output y = x -> b0\n"


# (code, variant) -> (source, sizes)
SOURCES = {
    ("E101", None): (HEAD + "output y = x -> conv(8,, 3)\n", None),
    ("E102", None): ("input x: [3, 8", None),
    ("E103", None): (HEAD + "output y = x -> relu;\n", None),
    ("E104", None): (b"input x: [3, 8, 8]\n\xff\n", None),
    ("E105", None): (HEAD + "let a = " + "(" * (MAX_DEPTH + 5) + "1" + ")" * (MAX_DEPTH + 5)
                     + "\noutput y = x\n", None),
    ("E201", None): (HEAD + "output y = z\n", None),
    ("E201", "expected"): (HEAD + "output y = x -> conv(8, 3, pad=foo)\n", None),
    ("E202", None): (HEAD + "y = x\ny = x\noutput o = y\n", None),
    ("E202", "block"): (BLOCK + BLOCK + HEAD + "output y = x -> b\n", None),
    ("E202", "builtin"): ("block relu() {\n  return in\n}\n" + HEAD + "output y = x\n", None),
    ("E202", "parameter"): ("block b(k, k) {\n  return in\n}\n" + HEAD
                            + "output y = x -> b(1, 2)\n", None),
    ("E202", "network"): ("network a\nnetwork b\n" + HEAD + "output y = x\n", None),
    ("E202", "output"): (HEAD + "output y = x\noutput y = x\n", None),
    ("E202", "layer"): (HEAD + "output y = x -> relu as a -> relu as a\n", None),
    ("E202", "claimed"): ("block f() {\n  return in\n}\nblock b() {\n  f1 = in -> relu\n"
                          "  return f1 -> f\n}\n" + HEAD + "output y = x -> b\n", None),
    ("E203", None): (HEAD + "output y = x -> rleu\n", None),
    ("E203", "merge"): (HEAD + "output y = cat(x, x)\n", None),
    ("E203", "merge_as_layer"): (HEAD + "output y = x -> concat\n", None),
    ("E203", "tensor_as_layer"): (HEAD + "a = x\noutput y = x -> a\n", None),
    ("E204", None): (HEAD + "output y = x -> conv(8)\n", None),
    ("E205", None): (HEAD + "output y = x -> conv(8, 3, size=1)\n", None),
    ("E206", None): (HEAD + "output y = x -> conv(8, 3, bias=2)\n", None),
    ("E206", "arithmetic"): (HEAD + "output y = x -> conv(8, 3 + true)\n", None),
    ("E206", "floor_division"): (HEAD + "output y = x -> conv(8, 3.0 // 2)\n", None),
    ("E207", None): (HEAD + "output y = x -> conv(8, 3, stride=0)\n", None),
    ("E207", "division_by_zero"): (HEAD + "output y = x -> conv(8, 3 // 0)\n", None),
    ("E207", "finite"): (HEAD + "output y = x -> swish(beta=1e999)\n", None),
    ("E207", "probability"): (HEAD + "output y = x -> dropout(1.5)\n", None),
    ("E207", "positive"): (HEAD + "output y = x -> batchnorm(eps=0)\n", None),
    ("E207", "unit"): (HEAD + "output y = x -> batchnorm(momentum=2)\n", None),
    ("E207", "pool_pad"): (HEAD + "output y = x -> maxpool(3, pad=2)\n", None),
    ("E207", "choice"): (HEAD + "output y = x -> gelu(approximate=tan)\n", None),
    ("E207", "beyond"): (HEAD + "output y = x -> slice(1, 5)\n", None),
    ("E207", "transpose_output_pad"): (
        HEAD + "output y = x -> conv_transpose(4, 3, stride=2, output_pad=2)\n", None),
    ("E207", "spatial_count"): (HEAD + "output y = x -> upsample([2, 3, 4])\n", None),
    ("E207", "mode_rank"): (HEAD + "output y = x -> upsample(2, mode=trilinear)\n", None),
    ("E207", "align_corners"): (HEAD + "output y = x -> upsample(2, align_corners=true)\n",
                                None),
    ("E208", None): ("block b() {\n  return in -> b\n}\n" + HEAD + "output y = x -> b\n", None),
    ("E209", None): (HEAD + "output y = x -> relu(1)\n", None),
    ("E209", "after_keyword"): (HEAD + "output y = x -> conv(out=8, 3)\n", None),
    ("E210", None): (HEAD + "output y = x -> conv(8, 3, out=4)\n", None),
    ("E211", None): (HEAD + "output y = relu(x)\n", None),
    ("E212", None): (HEAD + "output y = in\noutput z = x\n", None),
    ("E213", None): (HEAD + "output y = x -> relu * 0\n", None),
    ("E213", "alias"): (HEAD + "output y = x -> relu * 2 as r\n", None),
    ("E214", None): (HEAD + "output y = add(x)\n", None),
    ("E215", None): (deep_blocks(MAX_BLOCK_DEPTH + 1), None),
    ("E216", None): ("output y = z\n", None),
    ("E217", None): (HEAD, None),
    ("E218", None): ("input x: [1, 3, 4, 8, 8]\noutput y = x\n", None),
    ("E218", "dim"): ("input x: [0, 8, 8]\noutput y = x\n", None),
    ("E219", None): (HEAD + "output y = x\n", {"H": 8}),
    ("E220", "estimate"): (HEAD + "output y = x -> relu * 2000000\n", None),
    ("E220", "repeat"): ("let n = 2000000\n" + HEAD + "output y = x -> relu * n\n", None),
    ("E220", "stage"): ("block b(n) {\n  return in -> relu * n\n}\n" + HEAD
                        + "output y = x -> b(1000000)\n", None),
    ("E106", None): (HEAD + "output y = x -> relu * 9223372036854775808\n", None),
    ("E223", None): ("let n = 4294967296 * 4294967296\n" + HEAD + "output y = x\n", None),
    ("E301", None): (HEAD + "output y = x -> conv(8, 9)\n", None),
    ("E302", None): (HEAD + "a = x -> conv(3, 3)\noutput y = concat(x, a)\n", None),
    ("E302", "rank"): (HEAD + "a = x -> flatten\noutput y = concat(x, a)\n", None),
    ("E303", None): (HEAD + "a = x -> conv(4, 1)\noutput y = add(x, a)\n", None),
    ("E303", "rank"): (HEAD + "a = x -> flatten\noutput y = add(x, a)\n", None),
    ("E303", "broadcast"): (
        HEAD + "a = x -> global_avgpool -> conv(4, 1)\noutput y = mul(x, a)\n", None),
    ("E304", None): (HEAD + "output y = x -> dense(10)\n", None),
    ("E305", None): (HEAD + "output y = x -> conv(8, 3, groups=2)\n", None),
    ("E306", None): ("input x: [3, H, 8]\na = x -> conv(3, 3, pad=[0, 1])\n"
                     "output y = add(x, a)\n", None),
    ("W401", None): ("input x: [3, 8, 8]\noutput y = x -> maxpool(3, stride=2)\n", None),
    ("W402", None): (HEAD + "a = x\noutput y = x\n", None),
    ("W402", "in_block"): ("block b() {\n  a = in\n  return in\n}\n" + HEAD
                           + "output y = x -> b\n", None),
    ("W403", None): (BLOCK + HEAD + "output y = x\n", None),
    ("W404", None): (HEAD + "input z: [3]\noutput y = x\n", None),
}

# Templates no small model reaches; each has a test of its own below, or, for the
# constants set from outside (E221, E222), in tests/compiler/test_consts.py.
ELSEWHERE = {("E220", None), ("E306", "network"), ("E221", None), ("E222", None),
             ("E220", "file"), ("E107", None)}  # E220 file, E107: tests/cli/test_hard_sources.py


def check(source, sizes=None):
    data = source if isinstance(source, bytes) else source.encode("utf-8")
    net, _ = check_bytes(data, "m.cnn", sizes)
    return net


def pattern(template: str) -> re.Pattern:
    """A regular expression matching the messages ``template`` makes."""
    parts = []
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field is not None:
            parts.append("(.+?)")
    return re.compile("".join(parts), re.DOTALL)


def variant_of(code: str, text: str):
    """The names of the templates of ``code`` that can have made ``text``."""
    entry = CODES[code]
    options = {None: entry.message, **entry.variants}
    return {name for name, template in options.items() if pattern(template).fullmatch(text)}


def all_templates():
    return {(code, v) for code, entry in CODES.items() for v in [None, *entry.variants]}


def test_the_registry_holds_codes():
    assert all(isinstance(entry, Code) and entry.title and entry.message
               for entry in CODES.values())


@pytest.mark.parametrize("code,variant", sorted(all_templates(), key=str))
def test_every_template_formats(code, variant):
    template = CODES[code].variants[variant] if variant else CODES[code].message
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    text = message(code, variant, **{f: 1 for f in fields})
    assert "{" not in text and "}" not in text


def test_every_template_is_reached():
    assert set(SOURCES) | ELSEWHERE == all_templates()


@pytest.mark.parametrize("code,variant", sorted(SOURCES, key=str))
def test_message_comes_from_its_template(code, variant):
    source, sizes = SOURCES[(code, variant)]
    hits = [d for d in check(source, sizes).diagnostics if d.code == code]
    assert hits
    assert variant in variant_of(code, hits[0].message), hits[0].message


def models():
    paths = sorted((ROOT / "tests" / "golden").glob("*.cnn"))
    return paths + sorted((ROOT / "examples").glob("**/*.cnn"))


@pytest.mark.parametrize("path", models(), ids=lambda p: p.name)
def test_every_message_of_the_models_matches_a_template(path):
    for d in check(path.read_bytes()).diagnostics:
        assert variant_of(d.code, d.message), (d.code, d.message)


def test_layer_budget_while_expanding(monkeypatch):
    monkeypatch.setattr(names_pass, "MAX_LAYERS", 5)
    net = check("let n = 3\n" + HEAD + "output y = x -> relu * n -> relu * n\n")
    d = [d for d in net.diagnostics if d.code == "E220"]
    assert [x.message for x in d] == ["the network expands to more than 5 layers"]
    assert variant_of("E220", d[0].message) == {None}


def test_unsatisfiable_without_a_merge():
    net = Network("n", "m.cnn")
    node = Node("c", "conv", {}, [], None, "conv")
    reporter = Reporter("m.cnn")
    solve_sizes(net, ["H"], [Condition("ge1", 0 - sym("H"), None, (node, "height"))],
                reporter)
    assert [(d.code, d.message) for d in reporter.diagnostics] == [
        ("E306", "no value of H makes the network valid")]


def test_reporting_reads_the_registry():
    reporter = Reporter("m.cnn")
    with pytest.raises(KeyError):
        reporter.say("E999", "no such code", None)
    with pytest.raises(KeyError):
        reporter.report("E202", None, variant="no such variant", name="x")
    reporter.report("E202", None, variant="output", name="y")
    reporter.report("E202", None, variant="output", name="y")  # the same: once
    assert [d.message for d in reporter.diagnostics] == ["output `y` is defined twice"]
    assert reporter.diagnostics[0].title == "duplicate name"


def test_diagnostic_from_values():
    d = diagnostic("E105", Span(1, 2, 1, 3), depth=MAX_DEPTH, help="h", file="f.cnn")
    assert (d.code, d.message, d.help, d.file) == (
        "E105", f"expression nested deeper than {MAX_DEPTH} levels", "h", "f.cnn")


def test_a_shape_rule_may_give_values_or_a_message():
    net = Network("n", "m.cnn")
    net.nodes["x"] = Node("x", "input", {}, [], Span(1, 1, 1, 2), "input x", shape=(3, 8, 8))
    node = Node("c", "conv", {}, ["x"], Span(2, 1, 2, 5), "conv(8, 3, groups=2)")
    net.nodes["c"] = node
    reporter = Reporter("m.cnn")
    ctx = InferContext(net, reporter, [], node)
    ctx.error("E305", op="conv", arg="groups", value=2, count=3, side="input", unit="channels")
    ctx.error("E305", "conv groups=2 does not divide the 3 input channels")  # the same
    assert [(d.message, d.notes) for d in reporter.diagnostics] == [
        ("conv groups=2 does not divide the 3 input channels",
         ["input is [3, 8, 8], from input `x`"])]


def test_the_checker_names_no_layer():
    """Whatever is particular to a layer is one of its hooks (ops/<family>.py): the
    checker's passes compare no node with a layer's name."""
    vocabulary = set(LAYERS) | set(MERGES)
    files = sorted((ROOT / "compiler" / "passes").glob("*.py"))
    files.append(ROOT / "compiler" / "elaborate.py")
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in vocabulary, (path.name, node.lineno, node.value)


# ---- the network carries its source -------------------------------------------------------

@pytest.mark.parametrize("name", ["concat_mismatch", "typos", "warnings"])
def test_network_renders_as_check_prints(name):
    path = f"tests/golden/{name}.cnn"
    text = (ROOT / path).read_text(encoding="utf-8")
    net = check_source(text, path)
    assert net.source == text
    printed = (ROOT / "tests" / "golden" / f"{name}.txt").read_text(encoding="utf-8")
    assert printed.startswith(net.render() + "\n\n")
    assert net.render(net.errors) == "\n\n".join(render(d, text) for d in net.errors)


def test_network_from_bytes_carries_its_text():
    net, text = check_bytes(b"\xef\xbb\xbf" + HEAD.encode() + b"output y = z\n", "m.cnn")
    assert net.source == text == HEAD + "output y = z\n"
    assert "2 | output y = z" in net.render()


def test_network_of_bytes_that_are_not_text_renders_without_source():
    net, text = check_bytes(b"input x: [3, 8, 8]\n\xff\n", "m.cnn")
    assert text is None and net.source is None
    assert net.render() == ("m.cnn:2:1: error[E104]: byte 0xff at offset 19 is not valid "
                            "UTF-8\n  = help: save the file as UTF-8")


def test_network_without_problems_renders_nothing():
    net = check_source(HEAD + "output y = x -> relu\n", "m.cnn")
    assert net.ok and net.render() == ""
