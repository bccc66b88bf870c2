"""The strided convolution kernel (ops/patches.py) against the loop reference and the
NumPy-API conv2d (its shifted-rows GEMM): kernels 1x1 to 7x7 and non-square, strides 2 and
3 and unequal, padding on every side, dilation, input channels and taps in several depths,
several blocks an image and narrow last strips, channel counts off the tile's, every
epilogue the tile applies with scale and bias, output into a channel slice, one and two
threads, NaN, and the cases it refuses. Where the CPU cannot run the tile (no AVX2 and FMA)
the tests skip; where it runs but is not chosen (AVX-512) they run it anyway."""

import numpy as np
import pytest

from cnnc.ops import conv
from cnnc.ops.conv import conv2d, reference_conv2d
from ops_support import reference_epilogue

fast = pytest.importorskip("cnnc.ops.fast")
pointwise = pytest.importorskip("cnnc.ops.pointwise")
patches = pytest.importorskip("cnnc.ops.patches")
pytestmark = [
    pytest.mark.skipif(not fast.ENABLED, reason="numba not installed or CNNC_FAST=0"),
    pytest.mark.skipif(not pointwise.RUNS_HERE, reason="the CPU lacks AVX2 and FMA"),
]

ACTS = [None, "relu", "relu6", "silu", "sigmoid", "hardswish", ("leaky_relu", {"alpha": 0.2})]


@pytest.fixture(autouse=True)
def _chosen(monkeypatch):
    monkeypatch.setattr(pointwise, "CHOSEN_HERE", True)
    monkeypatch.setattr(patches, "PATCHES", True)
    monkeypatch.setattr(patches, "WEIGHT_BYTES", 1 << 40)  # the rule has its own test
    yield
    fast.set_threads(None)


def _inputs(rng, n, c, o, h, w, k):
    kh, kw = (k, k) if isinstance(k, int) else k
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = (rng.standard_normal((o, c, kh, kw)) / np.sqrt(c * kh * kw)).astype(np.float32)
    return x, wt


def _geometry(x, wt, stride, pad, dilation):
    return conv._geometry(x, wt, stride, pad, dilation)


def _run(x, wt, stride, pad=0, dilation=1, b=None, scale=None, act=None, out=None):
    (sh, sw), (dh, dw), pads, (ho, wo) = _geometry(x, wt, stride, pad, dilation)
    if out is None:
        out = np.full((x.shape[0], wt.shape[0], ho, wo), np.nan, dtype=np.float32)
    assert patches.patches_conv2d(x, wt, b, scale, act, out, (sh, sw), pads, (dh, dw))
    return out


def _expected(x, wt, stride, pad=0, dilation=1, b=None, scale=None, act=None):
    z = reference_conv2d(x.astype(np.float64), wt.astype(np.float64), stride=stride, pad=pad,
                         dilation=dilation)
    return reference_epilogue(z, b, scale, act)


def _close(got, want):
    top = max(float(np.abs(want).max()), 1.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=3e-6 * top)


# (n, c, o, h, w, kernel, stride, pad, dilation): ResNet's and GoogLeNet's 7x7 stem and
# MobileNet's 3x3 one (scaled down), 1x1 shortcuts, 3x3 with more channels and taps than a
# depth, strides 3 and unequal, asymmetric padding, dilation, a map of a single strip and
# maps that end in a narrow strip, maps smaller than a strip (strips across images), channel
# counts off the tile's 4
CASES = [
    (2, 3, 64, 40, 38, 7, 2, 3, 1), (2, 3, 32, 33, 35, 3, 2, 1, 1), (3, 16, 24, 30, 30, 1, 2, 0, 1),
    (2, 40, 37, 29, 31, 3, 2, 1, 1), (1, 30, 9, 20, 22, 3, 2, (1, 0, 2, 1), 1),
    (2, 5, 6, 25, 27, (3, 2), (2, 3), 1, 1), (2, 4, 5, 31, 30, 5, 3, 2, 1),
    (1, 6, 11, 33, 33, 3, 2, 2, 2), (2, 3, 1, 14, 14, 3, 2, 1, 1), (1, 1, 3, 16, 17, 2, 2, 0, 1),
    (2, 7, 13, 40, 13, 3, (2, 1), 1, 1), (3, 5, 7, 9, 11, 3, 2, 1, 1),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_shapes_match_the_reference(case):
    n, c, o, h, w, k, stride, pad, dilation = case
    rng = np.random.default_rng(0)
    x, wt = _inputs(rng, n, c, o, h, w, k)
    b = rng.standard_normal(o).astype(np.float32)
    _close(_run(x, wt, stride, pad, dilation, b=b),
           _expected(x, wt, stride, pad, dilation, b=b))


@pytest.mark.parametrize("act", ACTS, ids=str)
def test_every_epilogue_matches_the_reference(act):
    rng = np.random.default_rng(1)
    for n, c, o, h, w, k in [(2, 3, 20, 30, 30, 7), (2, 12, 10, 20, 21, 3)]:
        x, wt = _inputs(rng, n, c, o, h, w, k)
        x *= 3
        b = rng.standard_normal(o).astype(np.float32)
        scale = rng.uniform(0.5, 2, o).astype(np.float32)
        for kw in ({}, {"b": b}, {"scale": scale, "b": b}):
            _close(_run(x, wt, 2, k // 2, act=act, **kw),
                   _expected(x, wt, 2, k // 2, act=act, **kw))


@pytest.mark.parametrize("sizes", [
    {"BLOCK_BYTES": 1 << 10},  # many blocks an image
    {"BLOCK_BYTES": 1 << 12, "DEPTH": 5, "OUT_BLOCK_BYTES": 1 << 11},  # many depths
    {"DEPTH": 1},
], ids=str)
def test_small_blocks_and_depths(sizes, monkeypatch):
    for name, value in sizes.items():
        monkeypatch.setattr(patches, name, value)
    rng = np.random.default_rng(2)
    for n, c, o, h, w, k in [(3, 9, 29, 21, 23, 3), (2, 3, 16, 30, 28, 7), (2, 12, 6, 9, 9, 1)]:
        x, wt = _inputs(rng, n, c, o, h, w, k)
        b = rng.standard_normal(o).astype(np.float32)
        _close(_run(x, wt, 2, k // 2, b=b, act="relu6"),
               _expected(x, wt, 2, k // 2, b=b, act="relu6"))


def test_output_into_a_channel_slice_and_nothing_past_it():
    rng = np.random.default_rng(3)
    for n, c, o, h, w, k in [(2, 3, 20, 29, 29, 7), (2, 30, 40, 19, 19, 3)]:
        x, wt = _inputs(rng, n, c, o, h, w, k)
        (_, _), (_, _), _, (ho, wo) = _geometry(x, wt, 2, k // 2, 1)
        full = np.full((n, o + 7, ho, wo), np.nan, dtype=np.float32)
        _run(x, wt, 2, k // 2, act="relu", out=full[:, 3:3 + o])
        _close(full[:, 3:3 + o], _expected(x, wt, 2, k // 2, act="relu"))
        assert np.isnan(full[:, :3]).all() and np.isnan(full[:, 3 + o:]).all()
        size = n * o * ho * wo
        buf = np.full(size + 64, np.nan, dtype=np.float32)
        _run(x, wt, 2, k // 2, out=buf[:size].reshape(n, o, ho, wo))
        assert np.isnan(buf[size:]).all()


def test_one_and_two_threads_agree_exactly():
    rng = np.random.default_rng(4)
    for n, c, o, h, w, k in [(4, 3, 64, 56, 56, 7), (4, 64, 40, 28, 28, 3)]:
        x, wt = _inputs(rng, n, c, o, h, w, k)
        fast.set_threads(1)
        one = _run(x, wt, 2, k // 2, act="silu")
        fast.set_threads(2)
        two = _run(x, wt, 2, k // 2, act="silu")
        np.testing.assert_array_equal(one, two)


def test_conv2d_takes_it_and_agrees_with_its_gemm(monkeypatch):
    rng = np.random.default_rng(5)
    x, wt = _inputs(rng, 2, 3, 24, 64, 64, 7)
    b = rng.standard_normal(24).astype(np.float32)
    scale = rng.uniform(0.5, 2, 24).astype(np.float32)
    calls = []
    real = patches.patches_conv2d
    monkeypatch.setattr(patches, "patches_conv2d",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    ours = conv2d(x, wt, b, stride=2, pad=3, act="relu", scale=scale)
    assert calls
    monkeypatch.setattr(conv, "PATCHES", False)
    gemm = conv2d(x, wt, b, stride=2, pad=3, act="relu", scale=scale)
    assert len(calls) == 1  # not asked when off
    np.testing.assert_allclose(ours, gemm, rtol=1e-5, atol=1e-5)


def test_nan_reaches_exactly_the_pixels_whose_windows_hold_it():
    rng = np.random.default_rng(6)
    x, wt = _inputs(rng, 2, 3, 10, 30, 30, 3)
    x[1, 2, 9, 14] = np.nan
    got = _run(x, wt, 2, 1, act="relu")
    nan = np.isnan(got)
    # input row 9 and column 14 are taps of outputs 4 and 5 (row), 7 (column: 2*7 = 14)
    assert nan[1, :, 4:6, 7].all() and nan.sum() == 2 * 10


def test_a_read_only_input_is_taken_and_the_tiles_stay_on():
    """An input from Ray's object store is read-only: it is copied first (numba would not
    compile the phase planes' copy for it, and that would turn the tiles off for the
    process), and the result is the reference's."""
    import warnings

    rng = np.random.default_rng(10)
    x, wt = _inputs(rng, 2, 3, 8, 32, 32, 3)
    x.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "do not compile here"
        got = conv2d(x, wt, None, stride=2, pad=1, act="relu")
    assert pointwise.CHOSEN_HERE and pointwise.BROKEN is None
    _close(got, _expected(x, wt, 2, 1, act="relu"))


def test_weights_changed_in_place_are_used():
    rng = np.random.default_rng(7)
    x, wt = _inputs(rng, 2, 8, 12, 20, 20, 3)
    first = _run(x, wt, 2, 1)
    wt *= 2
    _close(_run(x, wt, 2, 1), 2 * first)


def test_refusals_write_nothing(monkeypatch):
    rng = np.random.default_rng(8)
    x, wt = _inputs(rng, 2, 4, 4, 20, 20, 3)
    (sh, sw), dil, pads, (ho, wo) = _geometry(x, wt, 2, 1, 1)
    out = np.full((2, 4, ho, wo), np.nan, dtype=np.float32)
    assert not patches.patches_conv2d(x, wt, None, None, "tanh", out, (sh, sw), pads, dil)
    assert not patches.applies(x, wt, (2, 2), None, "tanh")  # not in the tile
    assert not patches.applies(x, wt, (1, 1), None, None)  # stride 1
    assert not patches.applies(x, wt, (2, 2), np.ones((2, 4), np.float32), None)
    x64, w64 = x.astype(np.float64), wt.astype(np.float64)
    assert not patches.applies(x64, w64, (2, 2), None, None)
    small = x[:, :, :4, :4]  # 2x2 outputs: fewer than a strip
    assert not patches.patches_conv2d(small, wt, None, None, None,
                                      np.full((2, 4, 2, 2), np.nan, np.float32), (2, 2),
                                      pads, dil)
    monkeypatch.setattr(patches, "PATCHES", False)
    assert not patches.applies(x, wt, (2, 2), None, None)
    monkeypatch.setattr(patches, "PATCHES", True)
    monkeypatch.setattr(pointwise, "CHOSEN_HERE", False)
    assert not patches.applies(x, wt, (2, 2), None, None)
    assert np.isnan(out).all()


def test_the_layers_it_takes(monkeypatch):
    monkeypatch.setattr(patches, "WEIGHT_BYTES", 2 << 20)
    rng = np.random.default_rng(9)
    for (c, o, k), taken in [
            ((3, 64, 7), True),  # ResNet's stem
            ((128, 256, 3), True),  # 1.2 MiB of weights
            ((256, 512, 1), True),
            ((256, 512, 3), False)]:  # 4.5 MiB: read again for every block
        x, wt = _inputs(rng, 1, c, o, 2, 2, k)
        assert patches.applies(x, wt, (2, 2), None, "relu") is taken, (c, o, k)
