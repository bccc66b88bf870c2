"""Size arithmetic against the formulas of the language spec (section 4), and the window
machinery on every number of spatial dims (section 9)."""

import itertools

import numpy as np
import pytest

from cnnc.ops import window
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


# ---- any number of spatial dims (spec section 9) ------------------------------------------------

def test_dims_and_pads_per_spatial_dim():
    assert window.dims(3, 1) == (3,) and window.dims(3, 3) == (3, 3, 3)
    assert window.dims([1, 2, 3], 3) == (1, 2, 3)
    assert window.dims((2, 5), 2) == pair((2, 5))
    with pytest.raises(ValueError, match=r"stride must be an integer or a list of 3 "
                                         r"\[depth, height, width\], got \(1, 2\)"):
        window.dims((1, 2), 3, "stride")
    assert window.pad_pairs(1, 3) == ((1, 1),) * 3
    assert window.pad_pairs((1, 2, 3), 3) == ((1, 1), (2, 2), (3, 3))
    assert window.pad_pairs((0, 1, 2, 3, 4, 5), 3) == ((0, 1), (2, 3), (4, 5))
    assert window.pad_pairs((2,), 1) == ((2, 2),) and window.pad_pairs((0, 3), 1) == ((0, 3),)
    for pad in (1, (1, 2), (0, 1, 2, 3)):  # the 2-D form is pads4's
        assert window.flat_pads(window.pad_pairs(pad, 2)) == pads4(pad)
    with pytest.raises(ValueError, match=r"pad must be p, a list of 3 or 6 values"):
        window.pad_pairs((1, 2), 3)


def test_per_dim_keeps_a_rank_free_argument_to_its_rank():
    assert window.per_dim(3, 3) == (3, 3, 3)
    assert window.per_dim((1, 2, 2), 3) == (1, 2, 2)
    assert window.per_dim((2, 2), 3) is None  # never guessed
    assert window.per_dim((4,), 1) == (4,)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_window_view_and_tap_slices_read_the_same_cells(n):
    rng = np.random.default_rng(n)
    sizes = (9, 8, 7)[:n]
    x = rng.standard_normal((2, 3) + sizes)
    kernel, stride, dilation = (3, 2, 2)[:n], (2, 1, 3)[:n], (1, 2, 1)[:n]
    pairs = ((1, 0), (0, 2), (1, 1))[:n]
    xpad = window.pad_to(x, pairs, -5.0, np)
    assert xpad.shape == (2, 3) + tuple(s + b + e for s, (b, e) in zip(sizes, pairs))
    inner = (slice(None), slice(None)) + tuple(slice(b, b + s) for s, (b, _) in
                                               zip(sizes, pairs))
    np.testing.assert_array_equal(xpad[inner], x)
    assert (xpad == -5.0).sum() == xpad.size - x.size
    outs = tuple((s + b + e - d * (k - 1) - 1) // t + 1
                 for s, (b, e), k, t, d in zip(sizes, pairs, kernel, stride, dilation))
    view = window.window_view(xpad, kernel, stride, dilation, outs, np)
    assert view.shape == (2, 3) + kernel + outs
    for tap in itertools.product(*(range(k) for k in kernel)):
        cells = xpad[window.tap_slices(tap, stride, dilation, outs)]
        np.testing.assert_array_equal(view[(slice(None), slice(None)) + tap], cells)
        for position in itertools.product(*(range(o) for o in outs)):
            where = tuple(p * t + i * d for p, t, i, d in zip(position, stride, tap, dilation))
            assert cells[(0, 1) + position] == xpad[(0, 1) + where]
        rows = window.tap_slices(tap, stride, dilation, outs, (1, outs[0]))
        np.testing.assert_array_equal(xpad[rows], cells[:, :, 1:])
    assert window.pad_to(x, ((0, 0),) * n, 0.0, np) is x


def test_namesake_help():
    family = {1: "conv1d", 2: "conv", 3: "conv3d"}
    assert window.namesake_help("conv", family, (10,)) == window.map_only_help("conv", (10,))
    assert window.namesake_help("conv3d", family, (3, 8, 8)) == (
        "`conv3d` works on [C, D, H, W] volumes; use `conv` on a [C, H, W] map")
    assert window.namesake_help("conv1d", family, (3, 8, 8, 8, 8)) is None


class _Ctx:
    def __init__(self):
        self.errors = []
        self.positives = []

    def error(self, code, message, notes=(), help=None):
        self.errors.append((code, message, help))

    def positive(self, size, what):
        self.positives.append(what)


def test_spatial_names_every_dim():
    ctx = _Ctx()
    assert window.spatial("conv1d", (3, 20), ctx, (3,), (2,), (1,)) == (10,)
    assert window.spatial("pool", (3, 9, 8, 7), ctx, (2, 2, 2), (2, 2, 2), (0, 0, 0),
                          ceil=True) == (5, 4, 4)
    assert ctx.errors == []
    for shape, name, unit in (((3, 1), "length", "samples long"),
                              ((3, 1, 5, 5), "depth", "slices deep"),
                              ((3, 5, 1, 5), "height", "rows high"),
                              ((3, 5, 5, 1), "width", "columns wide")):
        ctx = _Ctx()
        n = len(shape) - 1
        assert window.spatial("op", shape, ctx, (3,) * n, (1,) * n, (0,) * n) is None
        [(code, message, help)] = ctx.errors
        assert (code, message) == ("E301", f"op output {name} would be -1, below 1: "
                                           f"1 - 3 + 1 = -1")
        assert help.startswith(f"the input must be at least 3 {unit} for this op; it is 1.")
    assert window.unit(0) == "rows high" and window.unit(1) == "columns wide"
