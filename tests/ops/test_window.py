"""Size arithmetic against the formulas of the language spec (section 4)."""

import pytest

from cnnc.ops.window import checked_out, conv_out, pads4, pair, pool_out


@pytest.mark.parametrize(
    "n, k, s, p, d, expected",
    [
        (224, 7, 2, 3, 1, 112),  # GoogLeNet conv1
        (56, 3, 1, 1, 1, 56),
        (7, 3, 2, 0, 1, 3),
        (7, 3, 1, 0, 2, 3),  # dilated span 5
        (10, 3, 3, (0, 2), 1, 4),  # asymmetric pad
        (5, 5, 1, 0, 1, 1),
    ],
)
def test_conv_out(n, k, s, p, d, expected):
    assert conv_out(n, k, s, p, d) == expected


@pytest.mark.parametrize(
    "n, k, s, p, d, ceil, expected",
    [
        # GoogLeNet's ceil-mode max pools (Caffe rounds up): 112 -> 56 -> 28 -> 14 -> 7
        (112, 3, 2, 0, 1, True, 56),
        (56, 3, 2, 0, 1, True, 28),
        (28, 3, 2, 0, 1, True, 14),
        (14, 3, 2, 0, 1, True, 7),
        (112, 3, 2, 0, 1, False, 55),
        # ceil((5 + 2 - 2)/2) + 1 = 4, but the 4th window would start at padded index 6,
        # in the right padding (>= 5 + 1): dropped, so 3 (PyTorch's rule)
        (5, 2, 2, 1, 1, True, 3),
        (6, 2, 2, 1, 1, True, 4),
        (7, 3, 3, 1, 1, True, 3),
        (8, 3, 2, 1, 2, True, 4),
    ],
)
def test_pool_out(n, k, s, p, d, ceil, expected):
    assert pool_out(n, k, s, p, d, ceil) == expected


def test_ceil_never_below_floor():
    for n in range(1, 20):
        for k in range(1, min(n, 6) + 1):
            for s in range(1, 5):
                for p in range(0, k // 2 + 1):
                    floor_out = pool_out(n, k, s, p, 1, False)
                    ceil_out = pool_out(n, k, s, p, 1, True)
                    assert floor_out <= ceil_out <= floor_out + 1


def test_checked_out_shows_the_formula():
    formula = r"floor\(\(2 \+ 0 \+ 0 - 1\*\(5-1\) - 1\)/1\) \+ 1 = -2"
    with pytest.raises(ValueError, match=r"conv2d height: .*" + formula):
        checked_out(2, 5, 1, 0, 1, False, "conv2d height")


def test_argument_normalisation():
    assert pair(3) == (3, 3)
    assert pair([2, 5]) == (2, 5)
    assert pads4(1) == (1, 1, 1, 1)
    assert pads4((1, 2)) == (1, 1, 2, 2)
    assert pads4((0, 1, 2, 3)) == (0, 1, 2, 3)
    with pytest.raises(ValueError, match="pad must be"):
        pads4((1, 2, 3))
