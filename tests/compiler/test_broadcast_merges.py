"""The checker on the section-9 tensor layers: `add` and `mul` broadcasting over the
per-sample shape (shapes, symbolic sizes, E303 with both shapes and the clashing dims, the
messages that stay as they were), `slice` (E207), `channel_shuffle` (E305) and `drop_path`,
on every rank."""

import pytest

import cnnc
from cnnc.compiler.check import check_source
from cnnc.compiler.passes.merge import axis_names


def diagnose(text, sizes=None):
    return check_source(text, "m.cnn", sizes).diagnostics


def only(text, code):
    diags = diagnose(text)
    assert [d.code for d in diags] == [code], [(d.code, d.message) for d in diags]
    return diags[0]


def shape_of(net, prefix):
    [node] = [n for name, n in net.nodes.items() if name.startswith(prefix)]
    return node.shape


def _natural_kind_converts():
    """Whether the binder converts the `natural` kind (an integer >= 0) that slice's start
    is: compiler/passes/args.py."""
    from cnnc.compiler.passes.args import Binder
    from cnnc.ops.base import ArgSpec

    class Quiet:
        def report(self, *args, **kwargs):
            pass

    return Binder(Quiet(), None).convert(ArgSpec("start", "natural"), 0, None, "slice", {}) == 0


needs_natural = pytest.mark.skipif(
    not _natural_kind_converts(),
    reason="compiler/passes/args.py does not convert the `natural` kind (an integer >= 0) yet")


# ---- broadcasting ------------------------------------------------------------------------

SE = """\
input x: [16, 7, 7]
s = x -> global_avgpool -> conv(4, 1) -> relu -> conv({gate}, 1) -> sigmoid
output y = {merge}(x, s)
"""


@pytest.mark.parametrize("merge", ["add", "mul"])
def test_a_per_channel_gate_broadcasts(merge):
    net = cnnc.check(SE.format(gate=16, merge=merge))
    assert net.ok, [d.message for d in net.diagnostics]
    assert shape_of(net, f"y.{merge}") == (16, 7, 7)


@pytest.mark.parametrize("shapes, out", [
    (["[8, 6, 6]", "[8, 1, 1]"], (8, 6, 6)),
    (["[8, 1, 1]", "[8, 6, 6]"], (8, 6, 6)),
    (["[1, 6, 6]", "[8, 1, 1]"], (8, 6, 6)),  # neither whole: an outer product
    (["[8, 1, 6]", "[1, 6, 1]", "[8, 6, 1]"], (8, 6, 6)),
    (["[1, 1, 1]", "[1, 1, 1]"], (1, 1, 1)),
    (["[12]", "[1]"], (12,)),
])
def test_broadcast_shapes(shapes, out):
    inputs = "".join(f"input i{k}: {s}\n" for k, s in enumerate(shapes))
    names = ", ".join(f"i{k}" for k in range(len(shapes)))
    for merge in ("add", "mul"):
        net = cnnc.check(inputs + f"output y = {merge}({names})\n")
        assert net.ok, [d.message for d in net.diagnostics]
        assert shape_of(net, f"y.{merge}") == out


def test_a_symbolic_size_broadcasts_against_1():
    net = cnnc.check("input x: [8, H, W]\na = x -> global_avgpool\noutput y = mul(x, a)\n")
    assert net.ok
    assert str(shape_of(net, "y.mul")) == "(8, H, W)"
    assert [v.describe() for v in net.valid_sizes] == ["H >= 1", "W >= 1"]


def test_symbolic_sizes_other_than_1_must_be_equal():
    net = cnnc.check("input x: [8, H, W]\na = x -> conv(8, 3, stride=2, pad=1) -> "
                     "global_avgpool\nb = x -> maxpool(2)\nc = x -> avgpool(2)\n"
                     "output y = mul(a, b, c)\n")
    assert net.ok
    assert str(shape_of(net, "y.mul")) == "(8, floor(H/2), floor(W/2))"
    [d1, d2] = diagnose("input x: [8, H, W]\na = x -> conv(8, 3)\nb = x -> global_avgpool\n"
                        "output y = mul(x, b, a)\n")
    assert (d1.code, d1.message) == (
        "E306", "no value of H makes the mul inputs agree in height: H vs H - 2")
    assert (d2.code, d2.message) == (
        "E306", "no value of W makes the mul inputs agree in width: W vs W - 2")


def test_a_gate_with_the_wrong_channels():
    d = only(SE.format(gate=8, merge="mul"), "E303")
    assert d.message == ("mul inputs do not broadcast: [16, 7, 7] vs [8, 1, 1]; they clash in "
                         "channels (16 vs 8)")
    assert d.notes == ["x is [16, 7, 7], from input `x`",
                       "s is [8, 1, 1], from conv(8, 1) at 2:50"]
    assert d.help == "`s` needs channels 16 (or 1, to broadcast)"
    assert d.span.line == 3 and d.span.column == 12


def test_every_clashing_dim_is_named_with_each_producers_arithmetic():
    src = ("input x: [8, 8, 8]\na = x -> conv(8, 3) -> global_avgpool\nb = x -> maxpool(2)\n"
           "output y = add(x, a, b)\n")
    d = only(src, "E303")
    assert d.message == ("add inputs do not broadcast: [8, 8, 8] vs [8, 1, 1] vs [8, 4, 4]; "
                         "they clash in height (8 vs 1 vs 4) and width (8 vs 1 vs 4)")
    assert d.notes == ["x is [8, 8, 8], from input `x`",
                       "a is [8, 1, 1], from global_avgpool at 2:24",
                       "b is [8, 4, 4], from maxpool(2) at 3:10 ; floor((8 - 2)/2) + 1 = 4"]
    assert d.help == "`b` needs height 8 and width 8 (or 1, to broadcast)"


def test_a_producers_fix_is_the_help_where_it_has_one():
    src = ("input x: [8, 6, 6]\ng = x -> global_avgpool\na = x -> conv(8, 3)\n"
           "output y = mul(x, g, a)\n")
    d = only(src, "E303")
    assert d.message == ("mul inputs do not broadcast: [8, 6, 6] vs [8, 1, 1] vs [8, 4, 4]; "
                         "they clash in height (6 vs 1 vs 4) and width (6 vs 1 vs 4)")
    assert d.help == "use pad=1 on the conv at 3:10"


@pytest.mark.parametrize("merge", ["add", "mul"])
def test_without_broadcasting_the_messages_are_as_before(merge):
    """Inputs with no size 1 to stretch: one axis, its arithmetic and the producer's fix."""
    d = only(f"input x: [8, 6, 6]\na = x -> conv(8, 3)\noutput y = {merge}(x, a)\n", "E303")
    assert d.message == f"{merge} inputs disagree in height: 6 vs 4"
    assert d.notes == ["x is [8, 6, 6], from input `x`",
                       "a is [8, 4, 4], from conv(8, 3) at 2:10 ; 6 - 3 + 1 = 4"]
    assert d.help == "use pad=1 on the conv at 2:10"
    d = only(f"input x: [8, 6, 6]\na = x -> flatten\noutput y = {merge}(x, a)\n", "E303")
    assert d.message == f"{merge} inputs disagree in rank: [8, 6, 6] vs [288]"


def test_a_channel_mismatch_gets_no_padding_help():
    """The layers' fix hooks change spatial sizes; a conv's padding cannot fix channels."""
    d = only("input x: [8, 6, 6]\na = x -> conv(16, 3, pad=1)\noutput y = add(x, a)\n", "E303")
    assert d.message == "add inputs disagree in channels: 8 vs 16"
    assert d.help is None


def test_axis_names_by_rank():
    assert axis_names(1) == ["features"]
    assert axis_names(2) == ["channels", "length"]
    assert axis_names(3) == ["channels", "height", "width"]
    assert axis_names(4) == ["channels", "depth", "height", "width"]


# ---- slice, channel_shuffle, drop_path -------------------------------------------------------

@needs_natural
def test_slice_channel_shuffle_and_drop_path_check():
    net = cnnc.check("input x: [8, 6, 6]\na = x -> slice(0, 4)\nb = x -> slice(4, 8) -> "
                     "conv(4, 3, pad=1) -> drop_path(0.2)\n"
                     "output y = concat(a, b) -> channel_shuffle(2)\n")
    assert net.ok, [d.message for d in net.diagnostics]
    assert shape_of(net, "a.slice") == (4, 6, 6)
    assert shape_of(net, "y.channel_shuffle") == (8, 6, 6)
    assert net.nodes["b.drop_path1"].params == {} and net.nodes["b.drop_path1"].macs == 0


@needs_natural
def test_slice_on_vectors_and_symbolic_channels():
    net = cnnc.check("input v: [10]\noutput y = v -> slice(2, 7) -> channel_shuffle(5)\n")
    assert net.ok and shape_of(net, "y.slice") == (5,)
    net = cnnc.check("input x: [C, H, 4]\noutput y = x -> slice(2, 5)\n")
    assert net.ok and str(shape_of(net, "y.slice")) == "(3, H, 4)"
    assert [v.describe() for v in net.valid_sizes] == ["C >= 5", "H >= 1"]


@needs_natural
def test_slice_diagnostics():
    d = only("input x: [8, 6, 6]\noutput y = x -> slice(6, 12)\n", "E207")
    assert d.message == "slice stop=12 is beyond the 8 input channels"
    assert d.notes == ["input is [8, 6, 6], from input `x`"]
    assert d.help == "the input has channels 0 .. 7: use stop=8 to keep 6 .. 7 (x[:, 6:8])"
    d = only("input x: [8, 6, 6]\noutput y = x -> slice(3, 3)\n", "E207")
    assert d.message == "slice stop must be at least 4, got 3"
    assert (d.span.line, d.span.column) == (2, 26)
    d = only("input x: [8, 6, 6]\noutput y = x -> slice(-1, 3)\n", "E207")
    assert d.message == "slice start must be at least 0, got -1"


def test_channel_shuffle_diagnostics():
    d = only("input x: [8, 6, 6]\noutput y = x -> channel_shuffle(3)\n", "E305")
    assert d.message == "channel_shuffle groups=3 does not divide the 8 input channels"
    assert d.help == "8 divides by groups=1 or groups=2 or groups=4"
    d = only("input x: [8, 6, 6]\noutput y = x -> channel_shuffle(0)\n", "E207")
    assert d.message == "channel_shuffle groups must be at least 1, got 0"


def test_drop_path_diagnostics():
    d = only("input x: [8, 6, 6]\noutput y = x -> drop_path(1.0)\n", "E207")
    assert d.message == "drop_path p must be in [0, 1), got 1"
    d = only("input x: [8, 6, 6]\noutput y = x -> drop_path\n", "E204")
    assert d.message == "`drop_path` is missing argument `p`"


# ---- every rank ------------------------------------------------------------------------------

def test_broadcasting_on_signals_and_volumes():
    net = cnnc.check("input s: [8, 100]\ninput g: [8, 1]\noutput y = mul(s, g)\n")
    assert net.ok and shape_of(net, "y.mul") == (8, 100)
    net = cnnc.check("input v: [4, 3, 8, 8]\ninput g: [4, 1, 1, 1]\ninput d: [1, 3, 1, 1]\n"
                     "output y = add(v, g, d)\n")
    assert net.ok and shape_of(net, "y.add") == (4, 3, 8, 8)
    d = only("input s: [8, 100]\ninput g: [8, 1]\ninput h: [4, 50]\n"
             "output y = mul(s, g, h)\n", "E303")
    assert d.message == ("mul inputs do not broadcast: [8, 100] vs [8, 1] vs [4, 50]; they "
                         "clash in channels (8 vs 8 vs 4) and length (100 vs 1 vs 50)")
    assert d.help == "`h` needs channels 8 and length 100 (or 1, to broadcast)"
    d = only("input v: [4, 3, 8, 8]\ninput w: [4, 2, 8, 8]\noutput y = add(v, w)\n", "E303")
    assert d.message == "add inputs disagree in depth: 3 vs 2"


def test_channel_shuffle_and_drop_path_on_every_rank():
    for shape in ("[12]", "[12, 50]", "[12, 6, 6]", "[12, 2, 6, 6]"):
        net = cnnc.check(f"input x: {shape}\noutput y = x -> channel_shuffle(3) -> "
                         f"drop_path(0.1)\n")
        assert net.ok, (shape, [d.message for d in net.diagnostics])
    d = only("input x: [10, 50]\noutput y = x -> channel_shuffle(4)\n", "E305")
    assert d.message == "channel_shuffle groups=4 does not divide the 10 input channels"


@needs_natural
def test_slice_on_every_rank():
    for shape, out in [("[12]", (4,)), ("[12, 50]", (4, 50)), ("[12, 6, 6]", (4, 6, 6)),
                       ("[12, 2, 6, 6]", (4, 2, 6, 6))]:
        net = cnnc.check(f"input x: {shape}\noutput y = x -> slice(8, 12)\n")
        assert net.ok, (shape, [d.message for d in net.diagnostics])
        assert shape_of(net, "y.slice") == out
