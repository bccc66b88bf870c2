"""The 1x1 convolution kernel (ops/pointwise.py) against the loop reference and the NumPy-API
conv2d (its GEMM): every path (row- and strip-packed blocks, each strip meeting every panel
and each panel every strip, input channels in several depths), strips across images and
narrow last strips, channel counts off the tile's, every compiled epilogue with scale, bias
and gate, output into a channel slice, one and two threads, NaN, weights changed in place,
and the cases it refuses. Where the CPU cannot run the tile (no AVX2 and FMA) the tests
skip; where it runs but is not chosen (AVX-512) they run it anyway."""

import numpy as np
import pytest

from cnnc.ops.conv import conv2d, reference_conv2d
from ops_support import reference_epilogue

fast = pytest.importorskip("cnnc.ops.fast")
pointwise = pytest.importorskip("cnnc.ops.pointwise")
pytestmark = [
    pytest.mark.skipif(not fast.ENABLED, reason="numba not installed or CNNC_FAST=0"),
    pytest.mark.skipif(not pointwise.RUNS_HERE, reason="the CPU lacks AVX2 and FMA"),
]

ACTS = [None] + [name for name in fast.ACT_CODES] + [("leaky_relu", {"alpha": 0.2}),
                                                     ("relu6", {})]


@pytest.fixture(autouse=True)
def _chosen(monkeypatch):
    monkeypatch.setattr(pointwise, "CHOSEN_HERE", True)
    monkeypatch.setattr(pointwise, "POINTWISE", True)
    monkeypatch.setattr(pointwise, "REDUCTION", 10 ** 9)  # the rules have their own test
    monkeypatch.setattr(pointwise, "LARGE_MAP_CHANNELS", 10 ** 9)
    yield
    fast.set_threads(None)


def _expected(x, w, b=None, scale=None, act=None, gate=None):
    z = reference_conv2d(x.astype(np.float64), w.astype(np.float64))
    return reference_epilogue(z, b, scale, act, gate)


def _run(x, w, b=None, scale=None, act=None, gate=None, out=None):
    n, o = x.shape[0], w.shape[0]
    if out is None:
        out = np.full((n, o) + x.shape[2:], np.nan, dtype=np.float32)
    assert pointwise.pointwise_conv2d(x, w, b, scale, act, out, gate)
    return out


def _close(got, want):
    top = max(float(np.abs(want).max()), 1.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * top * max(1, np.sqrt(got.size)
                                                                           / 100))


def _inputs(rng, n, c, o, h, w):
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = (rng.standard_normal((o, c, 1, 1)) / np.sqrt(c)).astype(np.float32)
    return x, wt


# (n, c, o, h, w): a map narrower than a strip (4x4, 5x5), maps of 7x7 and 14x14 (the
# strip-by-strip path, strips across images), 16x16 at its edge, 17x17 and 28x28 (the
# panel-by-panel path, row-packed at few outputs, strip-packed at many), one pixel a map,
# channel counts that are not multiples of the tile's 4, more input channels than a depth
SHAPES = [
    (1, 1, 1, 5, 5), (2, 3, 5, 4, 4), (1, 16, 96, 5, 5), (3, 17, 37, 7, 7),
    (2, 160, 40, 7, 7), (2, 161, 70, 7, 7), (5, 333, 50, 7, 7), (1, 40, 24, 14, 14),
    (2, 96, 64, 14, 14), (3, 200, 33, 16, 16), (2, 24, 144, 17, 17), (2, 19, 30, 17, 17),
    (1, 64, 49, 28, 28), (30, 20, 50, 1, 1), (2, 7, 9, 3, 11),
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_shapes_match_the_reference(shape):
    rng = np.random.default_rng(0)
    x, wt = _inputs(rng, *shape)
    _close(_run(x, wt), _expected(x, wt))


@pytest.mark.parametrize("act", ACTS, ids=str)
def test_every_epilogue_matches_the_reference(act):
    rng = np.random.default_rng(1)
    for n, c, o, h, w in [(2, 24, 36, 7, 7), (3, 12, 10, 20, 20), (2, 170, 12, 9, 9)]:
        x, wt = _inputs(rng, n, c, o, h, w)
        x *= 3
        b = rng.standard_normal(o).astype(np.float32)
        scale = rng.uniform(0.5, 2, o).astype(np.float32)
        gate = rng.uniform(0, 1, (n, o)).astype(np.float32)
        for kw in ({}, {"b": b}, {"scale": scale, "b": b}, {"scale": scale, "gate": gate}):
            got = _run(x, wt, act=act, **kw)
            _close(got, _expected(x, wt, act=act, **kw))


@pytest.mark.parametrize("sizes", [
    {"BLOCK_BYTES": 1 << 10},  # many narrow blocks, on either path
    {"BLOCK_BYTES": 1 << 12, "DEPTH": 5, "OUT_BLOCK_BYTES": 1 << 11},  # many depths
    {"DEPTH": 1},
], ids=str)
def test_small_blocks_and_depths(sizes, monkeypatch):
    for name, value in sizes.items():
        monkeypatch.setattr(pointwise, name, value)
    rng = np.random.default_rng(2)
    for shape in [(3, 37, 29, 7, 7), (2, 11, 40, 25, 25), (4, 9, 16, 6, 5), (2, 12, 6, 14, 14)]:
        x, wt = _inputs(rng, *shape)
        b = rng.standard_normal(shape[2]).astype(np.float32)
        _close(_run(x, wt, b=b, act="relu6"), _expected(x, wt, b=b, act="relu6"))


def test_output_into_a_channel_slice():
    rng = np.random.default_rng(3)
    for n, c, o, h, w in [(2, 30, 20, 7, 7), (2, 30, 40, 19, 19), (3, 8, 5, 4, 4)]:
        x, wt = _inputs(rng, n, c, o, h, w)
        full = np.full((n, o + 7, h, w), np.nan, dtype=np.float32)
        _run(x, wt, act="relu", out=full[:, 3:3 + o])
        _close(full[:, 3:3 + o], _expected(x, wt, act="relu"))
        assert np.isnan(full[:, :3]).all() and np.isnan(full[:, 3 + o:]).all()


def test_one_and_two_threads_agree_exactly():
    rng = np.random.default_rng(4)
    for shape in [(8, 96, 24, 14, 14), (4, 16, 96, 28, 28), (8, 320, 64, 7, 7)]:
        x, wt = _inputs(rng, *shape)
        fast.set_threads(1)
        one = _run(x, wt, act="silu")
        fast.set_threads(2)
        two = _run(x, wt, act="silu")
        np.testing.assert_array_equal(one, two)


def test_conv2d_takes_it_and_agrees_with_its_gemm(monkeypatch):
    rng = np.random.default_rng(5)
    x, wt = _inputs(rng, 4, 48, 72, 14, 14)
    b = rng.standard_normal(72).astype(np.float32)
    scale = rng.uniform(0.5, 2, 72).astype(np.float32)
    calls = []
    real = pointwise.pointwise_conv2d
    monkeypatch.setattr(pointwise, "pointwise_conv2d",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    ours = conv2d(x, wt, b, act="relu6", scale=scale)
    assert calls
    monkeypatch.setattr(pointwise, "POINTWISE", False)
    gemm = conv2d(x, wt, b, act="relu6", scale=scale)
    assert len(calls) == 1  # not asked when off
    np.testing.assert_allclose(ours, gemm, rtol=1e-5, atol=1e-5)


def test_nan_reaches_exactly_its_pixel():
    rng = np.random.default_rng(6)
    for shape, at in [((2, 20, 30, 7, 7), (1, 3, 6, 6)), ((2, 20, 30, 20, 20), (0, 19, 0, 5))]:
        x, wt = _inputs(rng, *shape)
        x[at] = np.nan
        for act in (None, "relu", "relu6", "silu"):
            got = _run(x, wt, act=act)
            nan = np.isnan(got)
            assert nan[at[0], :, at[2], at[3]].all()
            assert nan.sum() == shape[2]


def test_weights_changed_in_place_are_used():
    rng = np.random.default_rng(7)
    x, wt = _inputs(rng, 2, 16, 24, 7, 7)
    first = _run(x, wt)
    wt *= 2
    _close(_run(x, wt), 2 * first)


def test_refusals_write_nothing(monkeypatch):
    rng = np.random.default_rng(8)
    x, wt = _inputs(rng, 1, 4, 4, 4, 5)  # 20 columns: fewer than a strip
    out = np.full((1, 4, 4, 5), np.nan, dtype=np.float32)
    assert not pointwise.pointwise_conv2d(x, wt, None, None, None, out)
    x64, w64 = _inputs(rng, 2, 4, 4, 7, 7)
    out64 = np.full((2, 4, 7, 7), np.nan)
    assert not pointwise.pointwise_conv2d(x64.astype(np.float64), w64.astype(np.float64),
                                          None, None, None, out64)
    x, wt = _inputs(rng, 2, 8, 4, 7, 7)
    out = np.full((2, 4, 7, 7), np.nan, dtype=np.float32)
    assert not pointwise.pointwise_conv2d(x, wt, None, None, "tanh", out)  # not compiled
    monkeypatch.setattr(pointwise, "POINTWISE", False)
    assert not pointwise.pointwise_conv2d(x, wt, None, None, None, out)
    monkeypatch.setattr(pointwise, "POINTWISE", True)
    monkeypatch.setattr(pointwise, "CHOSEN_HERE", False)
    assert not pointwise.pointwise_conv2d(x, wt, None, None, None, out)
    assert np.isnan(out).all() and np.isnan(out64).all()


def test_the_layers_it_takes(monkeypatch):
    monkeypatch.setattr(pointwise, "REDUCTION", 12)
    monkeypatch.setattr(pointwise, "LARGE_MAP_CHANNELS", 64)
    rng = np.random.default_rng(9)
    for shape, taken in [((2, 480, 16, 7, 7), False),  # reduces 30 times
                         ((2, 176, 16, 7, 7), True),
                         ((2, 256, 128, 28, 28), False),  # many inputs on a large map
                         ((2, 64, 128, 28, 28), True), ((2, 256, 128, 16, 16), True)]:
        x, wt = _inputs(rng, *shape)
        assert pointwise.applies(x, wt, np.float32) is taken, shape


def test_nothing_is_written_past_the_output():
    rng = np.random.default_rng(10)
    for shape in [(3, 8, 5, 4, 5), (2, 200, 6, 7, 7), (5, 9, 7, 3, 3)]:
        x, wt = _inputs(rng, *shape)
        n, o, h, w = shape[0], shape[2], shape[3], shape[4]
        size = n * o * h * w
        buf = np.full(size + 64, np.nan, dtype=np.float32)
        out = buf[:size].reshape(n, o, h, w)
        _run(x, wt, act="relu6", out=out)
        _close(out, _expected(x, wt, act="relu6"))
        assert np.isnan(buf[size:]).all()


@pytest.mark.parametrize("shape", [(1, 16, 40, 5, 5), (3, 17, 37, 7, 7), (2, 200, 48, 7, 7),
                                   (2, 24, 36, 20, 20), (5, 9, 8, 4, 4)], ids=str)
def test_an_input_gate_multiplies_each_images_channels(shape):
    rng = np.random.default_rng(11)
    x, wt = _inputs(rng, *shape)
    g = rng.uniform(0, 2, shape[:2]).astype(np.float32)
    out = np.full((shape[0], shape[2]) + shape[3:], np.nan, dtype=np.float32)
    assert pointwise.pointwise_conv2d(x, wt, None, None, "silu", out, None, g)
    _close(out, _expected(x * g[:, :, None, None], wt, act="silu"))


def test_tiles_that_do_not_compile_leave_the_gemm(monkeypatch):
    """An LLVM or numba the tiles do not compile with: a warning, the tiles off for the
    process, the convolution from the GEMM path."""
    from numba.core.errors import NumbaError

    def refuse(*args, **kwargs):
        raise NumbaError("Intrinsic name not mangled correctly")

    monkeypatch.setattr(pointwise, "parallel", refuse)
    monkeypatch.setattr(pointwise, "BROKEN", None)
    rng = np.random.default_rng(12)
    x, wt = _inputs(rng, 2, 16, 24, 7, 7)
    with pytest.warns(RuntimeWarning, match="do not compile here"):
        y = conv2d(x, wt, act="relu")
    assert pointwise.CHOSEN_HERE is False and pointwise.BROKEN is not None
    _close(y, _expected(x, wt, act="relu"))
    assert not pointwise.pointwise_conv2d(x, wt, None, None, None, np.empty_like(y))


@pytest.mark.parametrize("shape", [(1, 160, 960, 7, 7), (1, 96, 50, 14, 14), (2, 40, 37, 5, 5),
                                   (1, 30, 9, 7, 7)], ids=str)
def test_few_blocks_are_cut_by_panels_with_the_same_bits(shape, monkeypatch):
    """A small map at batch 1 has fewer column blocks than the threads have jobs to share:
    each block's panels are cut into parts (SPLIT_JOBS). Every output channel, strips
    across images and their scatter, the activation and gate after the tiles included, is
    computed as it is whole."""
    rng = np.random.default_rng(14)
    x, wt = _inputs(rng, *shape)
    n, o = shape[0], shape[2]
    b = rng.standard_normal(o).astype(np.float32)
    gate = rng.uniform(0, 1, (n, o)).astype(np.float32)
    for kw in ({"act": "relu6"}, {"act": "silu", "gate": gate}):  # (a gate: the pass after)
        got = {}
        for count in (1, 2, 3):
            fast.set_threads(count)
            full = np.full((n, o + 5) + shape[3:], np.nan, dtype=np.float32)
            got[count] = _run(x, wt, b=b, out=full[:, 2:2 + o], **kw)
            assert np.isnan(full[:, :2]).all() and np.isnan(full[:, 2 + o:]).all()
        _close(got[1], _expected(x, wt, b=b, **kw))
        np.testing.assert_array_equal(got[2], got[1])
        np.testing.assert_array_equal(got[3], got[1])
    jobs = []
    real = pointwise.run_tiles
    monkeypatch.setattr(pointwise, "run_tiles",
                        lambda kernel, count, *a, **k: jobs.append(count) or real(kernel, count,
                                                                                   *a, **k))
    fast.set_threads(2)
    _run(x, wt)
    n, c, o, h, w = shape
    if n * h * w * o * c >= fast.MIN_PARALLEL_VALUES:
        assert jobs[0] > 2  # (one or two blocks, cut)
    else:
        assert jobs[0] <= 2  # too little for a second thread: not cut
