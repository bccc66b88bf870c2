"""The depthwise tiles (ops/depthwise.py) against the loop reference and the
direct compiled kernel they replace there: 3x3 and 5x5, maps from 1x1 to 112x112 (rows and
columns that are and are not whole tiles), symmetric, one-sided and no padding, every
compiled epilogue with scale, bias and gate, one and two threads, output into a channel
slice, NaN, and the cases it refuses. Skipped where the CPU cannot run the tiles; run
where it can but they are not chosen (AVX-512)."""

import numpy as np
import pytest

from cnnc.ops.conv import conv2d, reference_conv2d
from ops_support import reference_epilogue

fast = pytest.importorskip("cnnc.ops.fast")
pointwise = pytest.importorskip("cnnc.ops.pointwise")
depthwise = pytest.importorskip("cnnc.ops.depthwise")
pytestmark = [
    pytest.mark.skipif(not fast.ENABLED, reason="numba not installed or CNNC_FAST=0"),
    pytest.mark.skipif(not pointwise.RUNS_HERE, reason="the CPU lacks AVX2 and FMA"),
]

ACTS = [None] + [name for name in fast.ACT_CODES] + [("leaky_relu", {"alpha": 0.2})]


@pytest.fixture(autouse=True)
def _chosen(monkeypatch):
    monkeypatch.setattr(pointwise, "CHOSEN_HERE", True)
    monkeypatch.setattr(depthwise, "DEPTHWISE", True)
    yield
    fast.set_threads(None)


def _inputs(rng, n, c, h, w, k):
    x = (rng.standard_normal((n, c, h, w)) * 2).astype(np.float32)
    wt = rng.standard_normal((c, 1, k, k)).astype(np.float32)
    return x, wt


def _expected(x, w, pads, b=None, scale=None, act=None, gate=None, stride=1):
    z = reference_conv2d(x.astype(np.float64), w.astype(np.float64), pad=pads,
                         groups=x.shape[1], stride=stride)
    return reference_epilogue(z, b, scale, act, gate)


def _run(x, w, pads, b=None, scale=None, act=None, gate=None, out=None, stride=1):
    k = w.shape[2]
    ho = (x.shape[2] + pads[0] + pads[1] - k) // stride + 1
    wo = (x.shape[3] + pads[2] + pads[3] - k) // stride + 1
    assert depthwise.applies(x, w, (stride, stride), (1, 1), pads, x.shape[1])
    if out is None:
        out = np.full((x.shape[0], x.shape[1], ho, wo), np.nan, dtype=np.float32)
    assert depthwise.depthwise_conv2d(x, w, b, scale, act, out, pads,
                                      None if gate is None else np.ascontiguousarray(gate),
                                      stride)
    return out


def _close(got, want):
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * max(1.0, np.abs(want).max()))


def _both(x, wt, pads, stride=1, **kw):
    """The blocks' result and the one-plane tiles' on the same layer."""
    depthwise.CHANNEL_BLOCKS = True
    try:
        blocks = _run(x, wt, pads, stride=stride, **kw)
        depthwise.CHANNEL_BLOCKS = False
        tiles = _run(x, wt, pads, stride=stride, **kw)
    finally:
        depthwise.CHANNEL_BLOCKS = True
    return blocks, tiles


SIZES = [(1, 1), (2, 3), (3, 3), (5, 6), (7, 7), (8, 8), (9, 13), (14, 14), (16, 17),
         (17, 9), (28, 28)]


def _layers(rng, stride, k, pads, sizes, channels):
    """``(x, w, pads)`` for each map size the tiles take at this stride, kernel and kind
    of padding, ``channels(i)`` channels for the ``i``-th."""
    p = {"same": (k // 2,) * 4, "none": (0, 0, 0, 0), "one-sided": (k - 1, 0, 0, k - 1),
         "odd": (1, 2, 2, 1)}[pads]
    widest = (depthwise.WIDEST if stride == 1 else depthwise.WIDEST_2)[k]
    for i, (h, w) in enumerate(sizes):
        if h + p[0] + p[1] < k or w + p[2] + p[3] < k:
            continue
        if (w + p[2] + p[3] - k) // stride + 1 > widest:
            continue
        yield _inputs(rng, 1 + i % 3, channels(i), h, w, k) + (p,)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("pads", ["same", "none", "one-sided", "odd"])
def test_sizes_and_pads_match_the_reference(stride, k, pads):
    for x, wt, p in _layers(np.random.default_rng(0), stride, k, pads,
                            SIZES + [(31, 30), (57, 56), (113, 112)],
                            lambda i: 1 + (3 * i) % 7):
        _close(_run(x, wt, p, stride=stride), _expected(x, wt, p, stride=stride))


@pytest.mark.parametrize("act", ACTS, ids=str)
def test_every_epilogue_matches_the_reference(act):
    # (the last three: whole blocks of eight channels, which give the tiles' bits)
    rng = np.random.default_rng(1)
    for n, c, h, w, k, stride in [(2, 6, 7, 7, 3, 1), (3, 4, 14, 14, 5, 1), (2, 5, 10, 9, 3, 1),
                                  (2, 16, 7, 7, 3, 1), (3, 8, 14, 14, 5, 1),
                                  (2, 24, 10, 9, 3, 2)]:
        x, wt = _inputs(rng, n, c, h, w, k)
        pads = (k // 2,) * 4
        b = rng.standard_normal(c).astype(np.float32)
        scale = rng.uniform(0.5, 2, c).astype(np.float32)
        gate = rng.uniform(0, 1, (n, c)).astype(np.float32)
        for kw in ({}, {"b": b, "scale": scale}, {"scale": scale, "gate": gate}):
            got, tiles = _both(x, wt, pads, stride=stride, act=act, **kw)
            np.testing.assert_array_equal(got, tiles)
            _close(got, _expected(x, wt, pads, act=act, stride=stride, **kw))


def test_it_agrees_with_the_direct_kernel_through_conv2d():
    rng = np.random.default_rng(2)
    for n, c, size, k, stride in [(4, 32, 7, 3, 1), (2, 24, 14, 5, 1), (2, 16, 28, 3, 1),
                                  (2, 8, 56, 3, 2), (2, 12, 28, 5, 2)]:
        x, wt = _inputs(rng, n, c, size, size, k)
        b = rng.standard_normal(c).astype(np.float32)
        ours = conv2d(x, wt, b, stride=stride, pad=k // 2, groups=c, act="relu6")
        depthwise.DEPTHWISE = False
        direct = conv2d(x, wt, b, stride=stride, pad=k // 2, groups=c, act="relu6")
        depthwise.DEPTHWISE = True
        np.testing.assert_allclose(ours, direct, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("blocks", [False, True])
def test_one_and_two_threads_agree_exactly(blocks, monkeypatch):
    monkeypatch.setattr(depthwise, "CHANNEL_BLOCKS", blocks)  # (40 channels: five blocks)
    rng = np.random.default_rng(3)
    x, wt = _inputs(rng, 4, 40, 14, 14, 3)
    fast.set_threads(1)
    one = _run(x, wt, (1, 1, 1, 1), act="silu")
    fast.set_threads(2)
    np.testing.assert_array_equal(one, _run(x, wt, (1, 1, 1, 1), act="silu"))


@pytest.mark.parametrize("channels", [6, 8])  # (8: a block of eight channels)
def test_output_into_a_channel_slice(channels):
    rng = np.random.default_rng(4)
    x, wt = _inputs(rng, 2, channels, 7, 7, 3)
    full = np.full((2, channels + 4, 7, 7), np.nan, dtype=np.float32)
    _run(x, wt, (1, 1, 1, 1), act="relu", out=full[:, 2:-2])
    _close(full[:, 2:-2], _expected(x, wt, (1, 1, 1, 1), act="relu"))
    assert np.isnan(full[:, :2]).all() and np.isnan(full[:, -2:]).all()


@pytest.mark.parametrize("channels", [3, 8])
def test_nan_reaches_exactly_the_outputs_whose_window_holds_it(channels):
    rng = np.random.default_rng(5)
    x, wt = _inputs(rng, 2, channels, 9, 9, 3)
    x[1, 2, 4, 8] = np.nan
    for act in (None, "relu", "relu6", "silu"):
        got = _run(x, wt, (1, 1, 1, 1), act=act)
        nan = np.isnan(got)
        assert nan[1, 2, 3:6, 7:9].all() and nan.sum() == 6


def test_refusals(monkeypatch):
    rng = np.random.default_rng(6)
    x, wt = _inputs(rng, 1, 4, 7, 7, 3)
    ones = (1, 1, 1, 1)
    assert not depthwise.applies(x, wt, (3, 3), (1, 1), ones, 4)  # stride
    assert not depthwise.applies(x, wt, (1, 2), (1, 1), ones, 4)
    assert not depthwise.applies(x, wt, (1, 1), (2, 2), ones, 4)  # dilation
    assert not depthwise.applies(x.astype(np.float64), wt.astype(np.float64), (1, 1), (1, 1),
                                 ones, 4)
    big, wbig = _inputs(rng, 1, 2, 4, depthwise.WIDEST[3] + 1, 3)
    assert not depthwise.applies(big, wbig, (1, 1), (1, 1), ones, 2)  # map too wide
    assert depthwise.applies(big[..., 1:], wbig, (1, 1), (1, 1), ones, 2)
    x7, w7 = _inputs(rng, 1, 4, 7, 7, 7)
    assert not depthwise.applies(x7, w7, (1, 1), (1, 1), (3, 3, 3, 3), 4)  # 7x7 kernel
    out = np.full((1, 4, 7, 7), np.nan, dtype=np.float32)
    assert not depthwise.depthwise_conv2d(x, wt, None, None, "tanh", out, ones)
    assert np.isnan(out).all()
    monkeypatch.setattr(pointwise, "CHOSEN_HERE", False)
    assert not depthwise.applies(x, wt, (1, 1), (1, 1), ones, 4)


def _nothing_written_past(rng, cases):
    """Each case's output, computed into the front of a NaN buffer, is right and leaves
    the rest of the buffer NaN."""
    for n, c, h, w, k, stride in cases:
        x, wt = _inputs(rng, n, c, h, w, k)
        pads = (k // 2,) * 4
        ho, wo = (h + 2 * (k // 2) - k) // stride + 1, (w + 2 * (k // 2) - k) // stride + 1
        size = n * c * ho * wo
        buf = np.full(size + 64, np.nan, dtype=np.float32)
        out = buf[:size].reshape(n, c, ho, wo)
        _run(x, wt, pads, act="relu", out=out, stride=stride)
        _close(out, _expected(x, wt, pads, act="relu", stride=stride))
        assert np.isnan(buf[size:]).all()


def test_nothing_is_written_past_the_output():
    # planes narrower than a vector: a row's vector would run past the plane, the last
    # plane's past the array
    _nothing_written_past(np.random.default_rng(7), [
        (2, 3, 2, 3, 3, 1), (1, 2, 1, 1, 3, 1), (3, 5, 4, 5, 5, 1), (2, 2, 6, 7, 3, 1),
        (2, 3, 5, 6, 3, 2), (2, 2, 13, 9, 5, 2)])


# ---- blocks of eight channels (layers whose channels come in whole blocks of eight) ----


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("pads", ["same", "none", "one-sided", "odd"])
def test_channel_blocks_give_the_tiles_bits(stride, k, pads):
    for x, wt, p in _layers(np.random.default_rng(10), stride, k, pads,
                            SIZES + [(31, 30), (57, 56)], lambda i: 8 * (1 + i % 3)):
        blocks, tiles = _both(x, wt, p, stride=stride, act="relu6")
        np.testing.assert_array_equal(blocks, tiles)  # the same sums in the same order
        _close(blocks, _expected(x, wt, p, act="relu6", stride=stride))


def test_channel_blocks_write_nothing_past_the_output():
    # rows narrower than a vector: a row's last vector, stored whole, would run past the
    # plane on its last rows, and past the array on the last plane's
    _nothing_written_past(np.random.default_rng(12), [
        (2, 8, 1, 1, 3, 1), (1, 16, 2, 3, 3, 1), (2, 8, 6, 7, 5, 1), (2, 8, 5, 6, 3, 2),
        (1, 8, 13, 9, 5, 2)])
