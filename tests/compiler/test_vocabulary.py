"""The checker's side of the modern vocabulary (issue 9, spec sections 5 and 9): the argument
kinds of the new layers, layer names that end in a digit, inputs of rank 2 and 4, names from
other frameworks in "did you mean", initial values that depend on a layer's arguments, and
the summary's list of the layer kinds that MACs leave out."""

import json
import re
from pathlib import Path

import pytest

from cnnc.compiler.check import check_bytes, check_source
from cnnc.compiler.passes.args import Binder
from cnnc.compiler.passes.infer import RANK_WORDS, expects
from cnnc.compiler.passes.report import Reporter
from cnnc.compiler.passes.values import INVALID, Evaluator, Word
from cnnc.compiler.plan import lower
from cnnc.compiler.shapes import axis_names, spatial_names
from cnnc.compiler.summary import macs_not_counted, render_table, report
from cnnc.dsl.diagnostics import FOREIGN_ARGUMENTS, Span, foreign_name
from cnnc.ops import FOREIGN_NAMES
from cnnc.ops import LAYERS, MERGES
from cnnc.ops.base import ArgSpec, Layer, default_init, same_shape

ROOT = Path(__file__).resolve().parents[2]
HEAD = "input x: [3, 8, 8]\n"
SPAN = Span(1, 1, 1, 2)


def diagnose(text, sizes=None):
    return check_source(text, "m.cnn", sizes).diagnostics


def only(text, code):
    diags = diagnose(text)
    assert [d.code for d in diags] == [code], [(d.code, d.message) for d in diags]
    return diags[0]


# ---- argument kinds ----------------------------------------------------------------------------

def convert(kind, value, default=None):
    """``(converted value, [(code, message, help)])`` of one argument of ``kind``."""
    reporter = Reporter("m.cnn")
    binder = Binder(reporter, Evaluator(reporter, {}))
    out = binder.convert(ArgSpec("a", kind, default), value, SPAN, "probe", {})
    return out, [(d.code, d.message, d.help) for d in reporter.diagnostics]


@pytest.mark.parametrize("kind", ["ints", "dims"])
@pytest.mark.parametrize("value,expected", [
    (2, 2), ([2, 3], (2, 3)), ([4], (4,)), ([1, 2, 3], (1, 2, 3)), ([5, 5], (5, 5)),
])
def test_rank_free_kinds_keep_an_int_and_make_a_list_a_tuple(kind, value, expected):
    out, diags = convert(kind, value)
    assert diags == []
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize("kind,value,code,message", [
    ("ints", 0, "E207", "probe a must be at least 1, got 0"),
    ("ints", [2, 0], "E207", "probe a must be at least 1, got 0"),
    ("ints", [], "E206", "probe a expects an integer or a list of integers, got []"),
    ("ints", 2.5, "E206", "probe a expects an integer or a list of integers, got 2.5"),
    ("ints", True, "E206", "probe a expects an integer or a list of integers, got true"),
    ("ints", [2, 1.5], "E206", "probe a expects an integer, got 1.5"),
    ("dims", [], "E206", "probe a expects an integer or a list, one per spatial dim, got []"),
    ("dims", -1, "E207", "probe a must be at least 1, got -1"),
    ("dpad", -1, "E207", "probe a must be at least 0, got -1"),
    ("natural", -1, "E207", "probe a must be at least 0, got -1"),
    ("natural", [1, 2], "E206", "probe a expects an integer, got [1, 2]"),
    ("dpad", [0, -2], "E207", "probe a must be at least 0, got -2"),
    ("dcpad", 1.0, "E206",
     "probe a expects an integer or a list, one per spatial dim, `same` or `valid`, got 1.0"),
])
def test_rank_free_kinds_refuse(kind, value, code, message):
    out, diags = convert(kind, value)
    assert out is INVALID
    assert [(c, m) for c, m, _ in diags] == [(code, message)]


@pytest.mark.parametrize("kind,value,expected", [
    ("dpad", 0, 0), ("dpad", [0, 1, 2], (0, 1, 2)), ("dcpad", 1, 1), ("dcpad", [1, 0], (1, 0)),
    ("dcpad", Word("same", SPAN), "same"), ("dcpad", Word("valid", SPAN), 0),
    ("cpad", Word("valid", SPAN), (0, 0)), ("cpad", Word("same", SPAN), "same"),
])
def test_padding_kinds(kind, value, expected):
    out, diags = convert(kind, value)
    assert diags == [] and out == expected and type(out) is type(expected)


def test_pool_padding_refuses_the_conv_words():
    out, diags = convert("dpad", Word("same", SPAN))
    assert out is INVALID
    assert [(c, m) for c, m, _ in diags] == [
        ("E201", "undefined name `same` (expected an integer or a list; `same` and `valid` are "
                 "for convolutions)")]


def test_a_choice_is_the_bare_word():
    kind = "choice:nearest|bilinear|trilinear|linear"
    assert convert(kind, Word("bilinear", SPAN)) == ("bilinear", [])
    assert convert(kind, "nearest") == ("nearest", [])  # a default, written as the word
    assert convert(kind, None) == (None, [])  # a default of None: the layer's own choice


def test_a_wrong_word_names_the_choices_with_a_did_you_mean():
    out, diags = convert("choice:nearest|bilinear|trilinear|linear", Word("bilinaer", SPAN))
    assert out is INVALID
    assert diags == [("E207", "probe a must be `nearest`, `bilinear`, `trilinear` or `linear`, "
                              "got `bilinaer`", "did you mean `bilinear`?")]
    _, diags = convert("choice:none|tanh", Word("cubic", SPAN))
    assert diags == [("E207", "probe a must be `none` or `tanh`, got `cubic`", None)]


@pytest.mark.parametrize("value,shown", [(1, "1"), (0.5, "0.5"), (True, "true"), ([1], "[1]")])
def test_a_choice_given_a_value_that_is_no_word(value, shown):
    out, diags = convert("choice:none|tanh", value)
    assert out is INVALID
    assert [(c, m) for c, m, _ in diags] == [
        ("E206", f"probe a expects `none` or `tanh`, got {shown}")]


@pytest.mark.parametrize("kind,value,expected", [
    ("pair", 3, (3, 3)), ("pair", [2, 3], (2, 3)), ("ppad", 0, (0, 0)), ("cpad", 1, (1, 1)),
    ("count", 4, 4), ("bool", False, False), ("float", 2, 2.0), ("prob", 0.5, 0.5),
    ("natural", 0, 0), ("natural", 3, 3),
])
def test_the_older_kinds_are_unchanged(kind, value, expected):
    assert convert(kind, value) == (expected, [])


@pytest.fixture
def probe(monkeypatch):
    """A layer ``probe`` with one argument of each new kind, registered for one test."""
    seen = []

    def infer(shape, args, ctx):
        seen.append(dict(args))
        return shape

    layer = Layer("probe", [ArgSpec("factor", "ints"), ArgSpec("kernel", "dims", 1),
                            ArgSpec("pad", "dcpad", 0), ArgSpec("mode", "choice:a|b|c", "a")],
                  None, infer, lambda node, shapes: ("relu", {}))
    monkeypatch.setitem(LAYERS, "probe", layer)
    return seen


def test_new_kinds_through_the_checker(probe):
    net = check_source(HEAD + "output y = x -> probe([2, 3], kernel=[3, 1, 1], pad=same, "
                       "mode=c) -> probe(2)\n", "m.cnn")
    assert net.diagnostics == []
    assert probe == [dict(factor=(2, 3), kernel=(3, 1, 1), pad="same", mode="c"),
                     dict(factor=2, kernel=1, pad=0, mode="a")]


def test_the_summary_writes_per_dim_arguments_as_given_and_leaves_defaults_out(probe):
    from cnnc.compiler.summary import layer_text

    net = check_source(HEAD + "output y = x -> probe([2, 2, 2], kernel=[1, 1, 1], pad=[0, 1]) "
                       "-> probe([1, 2], kernel=3, pad=valid, mode=b)\n", "m.cnn")
    assert [layer_text(n) for n in net.layers] == [
        "probe(2, pad=[0, 1])", "probe([1, 2], kernel=3, mode=b)"]


def test_a_choice_passed_through_a_block_parameter(probe):
    src = ("block up(m=b) {\n  return in -> probe(2, mode=m)\n}\n" + HEAD
           + "output y = x -> up -> up(c)\n")
    assert check_source(src, "m.cnn").diagnostics == []
    assert [a["mode"] for a in probe] == ["b", "c"]


def test_a_wrong_choice_through_the_checker(probe):
    d = only(HEAD + "output y = x -> probe(2, mode=d)\n", "E207")
    assert (d.span.line, d.span.column) == (2, 31)
    assert d.message == "probe mode must be `a`, `b` or `c`, got `d`"


def test_gelu_takes_its_approximation_as_a_word():
    if "gelu" not in LAYERS:
        pytest.skip("no gelu layer")
    net = check_source(HEAD + "output y = x -> gelu(approximate=tanh) -> gelu\n", "m.cnn")
    assert net.diagnostics == []
    assert net.nodes["y.gelu1"].args["approximate"] == "tanh"
    d = only(HEAD + "output y = x -> gelu(approximate=tan)\n", "E207")
    assert d.message == "gelu approximate must be `none` or `tanh`, got `tan`"
    assert d.help == "did you mean `tanh`?"


# ---- layer names (spec section 5) --------------------------------------------------------------

def test_a_kind_that_ends_in_a_digit_takes_an_underscore():
    net = check_source(HEAD + "output y = x -> relu6 -> relu -> relu6\n", "m.cnn")
    assert net.diagnostics == []
    assert [n.name for n in net.layers] == ["y.relu6_1", "y.relu1", "y.relu6_2"]


def test_a_block_that_ends_in_a_digit_takes_an_underscore():
    src = ("block u1() {\n  return in -> relu\n}\nblock u() {\n  return in -> tanh\n}\n"
           + HEAD + "output y = x -> u1 -> u * 11\n")
    net = check_source(src, "m.cnn")
    assert net.diagnostics == []
    names = [n.name for n in net.layers]
    assert names[0] == "y.u1_1.relu1"
    assert names[1:] == [f"y.u{k}.tanh1" for k in range(1, 12)]
    assert len(set(names)) == 12


def test_mobilenet_v2_names_its_relu6_layers_with_an_underscore():
    net = check_bytes((ROOT / "examples" / "mobilenet_v2.cnn").read_bytes(), "m.cnn")[0]
    relu6 = [n.name for n in net.layers if n.op == "relu6"]
    assert len(relu6) == 35
    assert all(re.fullmatch(r".*\.relu6_1", name) for name in relu6)


def example_files():
    return (sorted((ROOT / "examples").glob("**/*.cnn"))
            + sorted((ROOT / "tests" / "golden").glob("*.cnn")))


@pytest.mark.parametrize("path", example_files(), ids=lambda p: p.name)
def test_example_names_follow_the_digit_rule(path):
    """Every auto-named layer of the examples is ``<kind><k>``, with ``_`` before k where the
    kind ends in a digit; no example claims a name twice."""
    net = check_bytes(path.read_bytes(), path.name)[0]
    if path.name != "vocabulary.cnn":  # the golden file that shows a clash
        assert not [d for d in net.diagnostics if d.code == "E202" and "claimed" in d.message]
    for node in net.layers:
        last = node.name.rsplit(".", 1)[-1]
        match = re.fullmatch(r"(.*?)(_?)(\d+)", last)
        if match and match.group(1) == node.op:
            assert bool(match.group(2)) == node.op[-1].isdigit(), node.name


def test_a_binding_and_a_block_call_claiming_one_name():
    src = ("block fire() {\n  return in -> relu\n}\n"
           "block b() {\n  fire1 = in -> tanh\n  return fire1 -> fire\n}\n"
           + HEAD + "output y = x -> b\n")
    d = only(src, "E202")
    assert (d.span.line, d.span.column) == (6, 19)
    assert d.message == ("the name `y.b1.fire1` is claimed twice: by binding `fire1` at 5:3 "
                         "and by the call of block `fire` at 6:19")
    assert d.help == "rename one: name the call `fire as NAME` or rename the binding `fire1`"
    assert d.notes == ["in block `b` called at 9:17"]


def test_a_layer_and_a_block_call_claiming_one_name():
    src = "block relu6_() {\n  return in -> tanh\n}\n" + HEAD + "output y = x -> relu6 -> relu6_\n"
    d = only(src, "E202")
    assert d.message == ("the name `y.relu6_1` is claimed twice: by layer relu6 at 5:17 and by "
                         "the call of block `relu6_` at 5:26")
    assert d.help == ("rename one: name the call `relu6_ as NAME` or name the layer "
                      "`relu6 as NAME`")


def test_a_named_layer_and_a_binding_claiming_one_name():
    src = ("block b() {\n  b1 = in -> tanh\n  return b1 -> conv(3, 1) as b1\n}\n" + HEAD
           + "output y = x -> b\n")
    d = only(src, "E202")
    assert d.message == ("the name `y.b1.b1` is claimed twice: by binding `b1` at 2:3 and by "
                         "layer conv(3, 1) at 3:16")
    assert d.help == "rename one: choose another name after `as` or rename the binding `b1`"


def test_a_named_block_call_and_a_layer():
    src = ("block b() {\n  return in -> tanh\n}\n" + HEAD
           + "output y = x -> relu as r -> b as r\n")
    d = only(src, "E202")
    assert d.message == ("the name `y.r` is claimed twice: by layer relu at 5:17 and by "
                         "the call of block `b` at 5:30")
    assert d.help == "rename one: choose another name after `as`"


def test_a_merge_and_a_binding_claiming_one_name():
    src = ("block b() {\n  add1 = in -> tanh\n  return add(in, add1)\n}\n" + HEAD
           + "output y = x -> b\n")
    d = only(src, "E202")
    assert d.message == ("the name `y.b1.add1` is claimed twice: by binding `add1` at 2:3 and "
                         "by merge add(in, add1) at 3:10")
    assert d.help == "rename one: rename the binding `add1`"


def test_an_unnamed_output_and_a_binding_claiming_one_name():
    d = only(HEAD + "output x -> tanh\noutput1 = x -> relu\noutput z = output1\n", "E202")
    assert (d.span.line, d.span.column) == (3, 1)
    assert d.message == ("the name `output1` is claimed twice: by the output at 2:8 and by "
                         "binding `output1` at 3:1")
    assert d.help == ("rename one: rename the binding `output1` or name the output: "
                      "`output NAME = ...`")


def test_an_unnamed_output_skips_the_names_already_taken():
    src = "input output1: [3, 8, 8]\noutput2 = output1 -> relu\noutput output2 -> tanh\n"
    net = check_source(src, "m.cnn")
    assert net.diagnostics == []
    assert net.outputs == {"output3": "output3.tanh1"}


def test_an_input_and_a_block_binding_never_clash():
    src = ("block b() {\n  x = in -> relu\n  return x\n}\n" + HEAD + "output y = x -> b\n")
    assert diagnose(src) == []


def test_a_duplicate_binding_in_a_block_is_reported_once():
    src = ("block b() {\n  a = in -> relu\n  a = in -> relu\n  return a\n}\n" + HEAD
           + "output y = x -> b\n")
    (d,) = [d for d in diagnose(src) if d.code == "E202"]
    assert d.message == "`a` is already defined"


def test_after_a_clash_the_layers_inside_do_not_clash_again():
    src = ("block fire() {\n  return in -> relu -> tanh\n}\n"
           "block b() {\n  fire1 = in -> relu -> tanh\n  return fire1 -> fire\n}\n"
           + HEAD + "output y = x -> b\n")
    net = check_source(src, "m.cnn")
    assert [d.code for d in net.diagnostics] == ["E202"]
    assert len(net.nodes) == 1 + 4


# ---- ranks ------------------------------------------------------------------------------------

def test_rank_words_and_axis_names():
    assert RANK_WORDS == {1: "a 1-D input [F]", 2: "a [C, L] input", 3: "a [C, H, W] input",
                          4: "a [C, D, H, W] input"}
    assert axis_names(1) == ("features",)
    assert axis_names(2) == ("channels", "length")
    assert axis_names(3) == ("channels", "height", "width")
    assert axis_names(4) == ("channels", "depth", "height", "width")
    assert spatial_names(4) == ("depth", "height", "width")
    assert spatial_names(2) == ("length",) and spatial_names(1) == ()


def test_expects_lists_every_rank():
    layer = Layer("probe", [], (2, 3, 4), same_shape, None)
    assert expects(layer) == "a [C, L] input, a [C, H, W] input or a [C, D, H, W] input"
    layer.ranks = (1, 3)
    assert expects(layer) == "a 1-D input [F] or a [C, H, W] input"


def test_a_layer_of_two_ranks_on_a_signal_says_what_it_needs():
    d = only("input s: [2, 16]\noutput y = s -> dense(3)\n", "E304")
    assert d.message == "`dense` expects a 1-D input [F], got [2, 16]"


def test_conv3d_on_a_map_says_the_rank_it_needs():
    if "conv3d" not in LAYERS:
        pytest.skip("no conv3d layer yet")
    d = only(HEAD + "output y = x -> conv3d(4, 3)\n", "E304")
    assert d.message == "`conv3d` expects a [C, D, H, W] input, got [3, 8, 8]"


@pytest.mark.parametrize("dims", ["[2, 16]", "[2, L]", "[1, 4, 8, 8]", "[1, D, H, W]"])
def test_rank_generic_layers_on_signals_and_volumes(dims):
    net = check_source(f"input v: {dims}\noutput y = v -> relu -> batchnorm -> dropout\n",
                       "m.cnn")
    assert net.diagnostics == []
    assert net.nodes["y.dropout1"].shape == net.nodes["v"].shape


# ---- did you mean: names of other frameworks ---------------------------------------------------

@pytest.mark.parametrize("written,target", [
    ("linear", "dense"), ("fc", "dense"), ("Linear", "dense"), ("bn", "batchnorm"),
    ("batchnorm2d", "batchnorm"), ("BatchNorm2d", "batchnorm"), ("conv2d", "conv"),
    ("Conv2d", "conv"), ("maxpool2d", "maxpool"), ("max_pool", "maxpool"),
    ("avgpool2d", "avgpool"), ("upsampling", "upsample"), ("interpolate", "upsample"),
    ("deconv", "conv_transpose"), ("convtranspose", "conv_transpose"),
    ("conv_transpose2d", "conv_transpose"),
])
def test_other_frameworks_names_of_a_layer(written, target):
    if target not in LAYERS:
        pytest.skip(f"no {target} layer yet")
    d = only(HEAD + f"output y = x -> {written}\n", "E203")
    assert d.message == f"unknown layer or block `{written}`"
    assert d.help == f"did you mean `{target}`?"


@pytest.mark.parametrize("written", ["dwconv", "depthwise"])
def test_a_depthwise_convolution_is_a_grouped_conv(written):
    d = only(HEAD + f"output y = x -> {written}(3, 3)\n", "E203")
    assert d.help == "a depthwise convolution is `conv(C, k, groups=C)`, C the input channels"


@pytest.mark.parametrize("written", ["concatenate", "cat"])
def test_other_frameworks_names_of_a_merge(written):
    d = only(HEAD + f"output y = x -> {written}\n", "E203")
    assert d.help == "did you mean `concat`? It is a merge and starts a chain: `concat(a, b)`"
    d = only(HEAD + f"output y = {written}(x, x)\n", "E203")
    assert d.message == f"unknown merge `{written}`"
    assert d.help == "did you mean `concat`?"


def test_a_layer_of_another_framework_at_the_start_of_a_chain():
    d = only(HEAD + "output y = linear(x)\n", "E203")
    assert d.message == "unknown merge `linear`"
    assert d.help == "`linear` is the layer `dense` here; pipe a tensor into it: `x -> dense`"


def test_relu6_is_no_typo_any_more():
    assert diagnose(HEAD + "output y = x -> relu6\n") == []


def test_a_plain_typo_still_gets_the_nearest_name():
    d = only(HEAD + "output y = x -> rleu\n", "E203")
    assert d.help == "did you mean `relu`?"


def test_other_frameworks_argument_names():
    d = only(HEAD + "output y = x -> conv(8, 3, padding=1)\n", "E205")
    assert d.help == "did you mean `pad`?"
    d = only(HEAD + "output y = x -> maxpool(2, ceil_mode=true)\n", "E205")
    assert d.help == "did you mean `ceil`?"
    d = only(HEAD + "output y = x -> relu(padding=1)\n", "E205")  # relu has no pad
    assert d.help is None


def test_the_table_offers_only_names_of_the_registry():
    known = ["dense"]
    assert foreign_name("fc", known, FOREIGN_NAMES) == ("dense", None)
    assert foreign_name("FC", known, FOREIGN_NAMES) == ("dense", None)
    assert foreign_name("deconv", known, FOREIGN_NAMES) is None
    assert foreign_name("dwconv", ["conv"], FOREIGN_NAMES)[0] == "conv"
    assert foreign_name("padding", ["pad"], FOREIGN_ARGUMENTS) == ("pad", None)


def test_the_tables_name_real_targets_and_no_real_names():
    """Every target is a layer or merge of the registry (or will be: the resize family's
    layers may land later), and no key is a name the language has already."""
    vocabulary = set(LAYERS) | set(MERGES)
    targets = {v[0] if isinstance(v, tuple) else v for v in FOREIGN_NAMES.values()}
    assert targets <= vocabulary
    assert not set(FOREIGN_NAMES) & vocabulary
    assert all(key == key.lower() for key in FOREIGN_NAMES)
    arguments = {spec.name for layer in LAYERS.values() for spec in layer.args}
    assert set(FOREIGN_ARGUMENTS.values()) <= arguments
    assert not set(FOREIGN_ARGUMENTS) & arguments


# ---- initial values from the layer's arguments -------------------------------------------------

def test_default_init_takes_the_arguments():
    assert default_init("weight") == default_init("weight", {"out": 3}) == "kaiming_uniform"
    assert default_init("bias", {}) == "fan_in_uniform"


def test_the_plan_passes_each_node_its_arguments(monkeypatch):
    seen = []

    def init(key, args=None):
        seen.append((key, args))
        return "zeros"

    layer = Layer("probe", [ArgSpec("k", "count", 2)], None, same_shape,
                  lambda node, shapes: ("scale", {}), init=init,
                  params=lambda shape, a: {"weight": (a["k"],)})
    monkeypatch.setitem(LAYERS, "probe", layer)
    net = check_source(HEAD + "output y = x -> probe(k=5)\n", "m.cnn")
    assert net.ok
    plan = lower(net)
    assert plan.initial == {"y.probe1.weight": "zeros"}
    assert seen == [("weight", {"k": 5})]


def test_scale_starts_at_its_init_argument():
    if "scale" not in LAYERS:
        pytest.skip("no scale layer")
    net = check_source(HEAD + "output y = x -> scale(init=1e-6, bias=true)\n", "m.cnn")
    plan = lower(net)
    assert float(plan.initial["y.scale1.weight"]) == 1e-6
    assert plan.initial["y.scale1.bias"] == "zeros"


# ---- the summary says what MACs leave out ------------------------------------------------------

CLEAN = ("input x: [3, 8, 8]\na = x -> conv(8, 3, pad=1) -> batchnorm -> relu\n"
         "b = x -> conv(8, 1)\noutput y = add(a, b) -> relu -> global_avgpool -> flatten "
         "-> dense(4)\n")


def test_the_kinds_macs_leave_out():
    net = check_source(CLEAN, "m.cnn")
    assert macs_not_counted(net) == ["batchnorm", "relu", "add", "global_avgpool", "flatten"]
    rep = report(net)
    assert rep.macs_not_counted == macs_not_counted(net)
    assert rep.to_json()["macs_not_counted"] == macs_not_counted(net)
    json.dumps(rep.to_json())


def test_the_summary_text_names_them_under_the_totals():
    lines = render_table(report(check_source(CLEAN, "m.cnn"))).splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("Total MACs:"))
    assert lines[at + 1] == ("MACs count convolutions and dense layers only; not counted: "
                             "batchnorm, relu, add, global_avgpool, flatten")
    assert lines[at + 2].startswith("Activations:")


def test_a_network_of_convolutions_and_dense_layers_only_has_no_such_line():
    net = check_source("input x: [3, 8, 8]\noutput y = x -> conv(4, 8) -> conv(2, 1)\n", "m.cnn")
    rep = report(net)
    assert rep.macs_not_counted == []
    assert rep.to_json()["macs_not_counted"] == []
    assert "not counted" not in render_table(rep)


def test_a_symbolic_network_lists_them_too():
    net = check_source("input x: [3, H, W]\noutput y = x -> conv(4, 3) -> relu -> maxpool(2)\n",
                       "m.cnn")
    assert report(net).macs_not_counted == ["relu", "maxpool"]
