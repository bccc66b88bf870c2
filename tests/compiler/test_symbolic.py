"""Symbolic sizes (spec section 8): shapes as expressions and the set of valid input sizes."""

import pytest

from cnnc.compiler.check import check_source
from cnnc.compiler.shapes import conv_out, pool_out
from cnnc.compiler.symbolic import Condition, floor_div, solve, sym


H = sym("H")


def test_floor_normal_form_merges_nested_floors():
    # two stride-2 convs (k=3, p=1) are one floor over 4
    once = conv_out(H, 3, 2, 1)
    twice = conv_out(once, 3, 2, 1)
    assert str(once) == "floor((H - 1)/2) + 1"
    assert str(twice) == "floor((H - 1)/4) + 1"
    for h in range(1, 200):
        assert twice.evaluate({"H": h}) == ((h - 1) // 2 + 1 - 1) // 2 + 1


def test_whole_multiples_leave_the_floor():
    assert floor_div(2 * H + 4, 2) == H + 2
    assert str(floor_div(3 * H + 1, 2)) == "H + floor((H - 1)/2) + 1"


def test_same_arithmetic_compares_equal():
    a = conv_out(H, 3, 1, 1)
    assert a == H
    assert conv_out(H, 1, 2, 0) == conv_out(H, 3, 2, 1)


@pytest.mark.parametrize("k,s,p,d", [(3, 2, 0, 1), (2, 2, 0, 1), (3, 2, 1, 1), (5, 3, 2, 2),
                                     (3, 1, 1, 1), (2, 3, 1, 1)])
@pytest.mark.parametrize("ceil", [False, True])
def test_symbolic_pool_matches_concrete(k, s, p, d, ceil):
    expr = pool_out(H, k, s, p, d, ceil)
    for h in range(d * (k - 1) + 1, 80):
        assert pool_out(h, k, s, p, d, ceil) == (
            expr if isinstance(expr, int) else expr.evaluate({"H": h})
        ), h


def test_solve_threshold_and_residues():
    even = Condition("eq", floor_div(H, 2), floor_div(H + 1, 2), None)
    big = Condition("ge1", floor_div(H - 30, 32) + 1, None, None)
    valid = solve("H", [even, big], {})
    assert valid.describe() == "H >= 30 and H = 0 mod 2"
    assert valid.contains(224) and not valid.contains(225) and not valid.contains(28)


SRC = """
input x: [3, H, W]
a = x -> conv(16, 3, stride=2, pad=1) -> relu -> conv(32, 3, stride=2, pad=1)
b1 = a -> maxpool(2)
b2 = a -> conv(8, 3, stride=2, pad=1)
output y = concat(b1, b2) -> global_avgpool -> flatten -> dense(10)
"""


def test_valid_set_agrees_with_concrete_checks():
    net = check_source(SRC, "s.cnn")
    assert net.ok
    by_symbol = {v.symbol: v for v in net.valid_sizes}
    assert by_symbol["H"].describe() == "H >= 5 and H mod 8 in {0, 5, 6, 7}"
    for h in range(1, 70):
        concrete = check_source(SRC, "s.cnn", {"H": h, "W": 64})
        assert concrete.ok == by_symbol["H"].contains(h), h


def test_layer_shapes_are_expressions():
    net = check_source(SRC, "s.cnn")
    assert str(net.nodes["b1.maxpool1"].shape[1]) == "floor((H - 5)/8) + 1"
    assert net.nodes["y.dense1"].shape == (10,)
    assert net.nodes["y.dense1"].param_count == 410


def test_size_option_makes_shapes_concrete():
    net = check_source(SRC, "s.cnn", {"H": 224, "W": 224})
    assert net.ok
    assert net.nodes["b1.maxpool1"].shape == (32, 28, 28)
    bad = check_source(SRC, "s.cnn", {"H": 224, "W": 225})
    assert [d.code for d in bad.errors] == ["E302"]
    assert "28 vs 29" in bad.errors[0].message


def test_unsatisfiable_merge_is_an_error():
    src = """
input x: [3, H, 16]
input z: [3, 8, W]
a = x -> conv(8, 3, pad=1)
b = a -> maxpool(2)
output y = concat(a, b)
"""
    net = check_source(src, "t.cnn")
    codes = [d.code for d in net.errors]
    # the width is concrete (16 vs 8), the height symbolic: both are reported
    assert codes == ["E302", "E306"]
    assert "16 vs 8" in net.errors[0].message
    assert "H vs floor(H/2)" in net.errors[1].message
    assert (net.errors[1].span.line, net.errors[1].span.column) == (6, 12)


def test_googlenet_symbolic_is_valid_from_31():
    src = open("examples/googlenet.cnn").read().replace("[3, 224, 224]", "[3, S, S]")
    net = check_source(src, "g.cnn")
    assert net.ok
    assert [v.describe() for v in net.valid_sizes] == ["S >= 31"]
    for size in (29, 30, 31, 32, 224):
        assert check_source(src, "g.cnn", {"S": size}).ok == (size >= 31)


def test_unknown_size_symbol_is_reported():
    net = check_source(SRC, "s.cnn", {"H": 32, "W": 32, "Q": 3})
    assert [d.code for d in net.errors] == ["E219"]
