"""The Winograd F(2x2, 3x3) and F(4x4, 3x3) kernels (ops/winograd.py) against the loop
reference and the NumPy-API conv2d (compiled kernels off): odd and even sizes down to 1x1,
zero, one-sided and asymmetric padding, every compiled activation with scale, bias and gate,
output into a channel slice, float32 and float64, NaN inputs, weights changed in place, and
the cases it refuses."""

import itertools

import numpy as np
import pytest

from cnnc.ops import conv
from cnnc.ops.conv import conv2d, reference_conv2d
from ops_support import reference_epilogue

fast = pytest.importorskip("cnnc.ops.fast")
pytestmark = pytest.mark.skipif(not fast.ENABLED, reason="numba not installed or CNNC_FAST=0")
winograd = pytest.importorskip("cnnc.ops.winograd")

PADS = [(0, 0, 0, 0), (1, 1, 1, 1), (2, 2, 2, 2), (1, 0, 0, 1), (0, 2, 1, 0), (0, 1, 2, 1)]
SIZES = [(h, w) for h in range(1, 10) for w in (h, 10 - h)] + [(14, 14), (14, 9)]
ACTS = [None] + [name for name in fast.ACT_CODES] + [("leaky_relu", {"alpha": 0.2}),
                                                     ("relu6", {})]
# Tolerance relative to the largest output: float32 sums C*9 products in another order
# through another arithmetic (the transforms), float64 must agree to rounding.
REL = {np.float32: 1e-5, np.float64: 1e-12}
# F(4x4, 3x3): its transforms' larger coefficients cost float32 a few more bits (measured:
# up to 4e-6 of the largest output on 256 -> 256 layers; the direct GEMM 1e-6)
REL4 = {np.float32: 3e-5, np.float64: 1e-12}
TILES = [2, 4]


def _inputs(rng, n, c, o, h, w, dtype):
    x = (rng.standard_normal((n, c, h, w)) * 2).astype(dtype)
    wt = rng.standard_normal((o, c, 3, 3)).astype(dtype)
    return x, wt


def _expected(x, w, b, scale, act, pads, gate):
    return reference_epilogue(reference_conv2d(x, w, None, pad=pads), b, scale, act, gate)


def _run(x, w, b, scale, act, pads, gate=None, out=None, tile=2):
    n, o = x.shape[0], w.shape[0]
    ho = x.shape[2] + pads[0] + pads[1] - 2
    wo = x.shape[3] + pads[2] + pads[3] - 2
    if out is None:
        out = np.full((n, o, ho, wo), np.nan, dtype=x.dtype)
    assert winograd.winograd_conv2d(x, w, b, scale, act, out, pads, gate, tile=tile)
    return out


def _close(got, want, dtype, tile=2):
    top = max(float(np.abs(want).max()), 1.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=(REL if tile == 2 else REL4)[dtype] * top)


def _ok(h, w, pads):
    return h + pads[0] + pads[1] >= 3 and w + pads[2] + pads[3] >= 3


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("pads", PADS)
def test_sizes_and_pads_match_the_reference(dtype, pads, tile):
    rng = np.random.default_rng(0)
    for (h, w), c in zip(SIZES, itertools.cycle(range(1, 6))):
        if not _ok(h, w, pads):
            continue
        x, wt = _inputs(rng, 1 if (h + w) % 2 else 3, c, 1 + (h * w) % 5, h, w, dtype)
        got = _run(x, wt, None, None, None, pads, tile=tile)
        _close(got, _expected(x, wt, None, None, None, pads, None), dtype, tile)


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("act", ACTS, ids=str)
def test_every_epilogue_matches_the_reference(dtype, act, tile):
    rng = np.random.default_rng(1)
    x, w = _inputs(rng, 3, 4, 5, 7, 6, dtype)
    pads = (1, 2, 0, 1)
    b = rng.standard_normal(5).astype(dtype)
    scale = rng.standard_normal(5).astype(dtype)
    gate = rng.uniform(0, 2, (3, 5)).astype(dtype)
    if fast.act_code(act, dtype) is None:  # sigmoid and swish: float32 only
        out = np.full((3, 5, 6, 5), 7.0, dtype=dtype)
        assert winograd.winograd_conv2d(x, w, b, scale, act, out, pads, gate,
                                        tile=tile) is False
        assert (out == 7).all()
        return
    for bias, gain, g in itertools.product((None, b), (None, scale), (None, gate)):
        got = _run(x, w, bias, gain, act, pads, g, tile=tile)
        _close(got, _expected(x, w, bias, gain, act, pads, g), dtype, tile)


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_output_into_a_channel_slice(dtype, tile):
    rng = np.random.default_rng(2)
    x, w = _inputs(rng, 3, 5, 4, 9, 8, dtype)
    b = rng.standard_normal(4).astype(dtype)
    big = np.full((3, 10, 9, 8), 7.0, dtype=dtype)
    _run(x, w, b, None, "relu", (1, 1, 1, 1), out=big[:, 3:7], tile=tile)
    _close(big[:, 3:7], _expected(x, w, b, None, "relu", (1, 1, 1, 1), None), dtype, tile)
    assert (big[:, :3] == 7).all() and (big[:, 7:] == 7).all()


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(1, 64, 64, 14, 14), (3, 64, 32, 9, 14), (2, 3, 64, 56, 56),
                                   (1, 64, 64, 56, 56), (2, 128, 16, 7, 7),
                                   (2, 96, 40, 28, 27)])
def test_wide_layers_match_numpy_conv2d(dtype, shape, tile, monkeypatch):
    """Against conv2d with the compiled kernels off (the NumPy shifted-rows GEMM), on sizes
    the loop reference is too slow for; several chunks of images where the workspace is
    made small."""
    n, c, o, h, w = shape
    rng = np.random.default_rng(3)
    x, wt = _inputs(rng, n, c, o, h, w, dtype)
    wt /= np.sqrt(9 * c)
    b = rng.standard_normal(o).astype(dtype)
    scale = rng.uniform(0.5, 1.5, o).astype(dtype)
    got = _run(x, wt, b, scale, "relu", (1, 1, 1, 1), tile=tile)
    monkeypatch.setattr(winograd, "WORKSPACE_BYTES", 1)  # one image per chunk
    again = _run(x, wt, b, scale, "relu", (1, 1, 1, 1), tile=tile)
    _close(again, got, dtype)  # BLAS may sum in another order for another width
    monkeypatch.setattr(fast, "ENABLED", False)
    want = conv2d(x, wt, b, pad=1, act="relu", scale=scale)
    _close(got, want, dtype, tile)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_nan_reaches_exactly_the_outputs_whose_window_holds_it(dtype):
    rng = np.random.default_rng(4)
    x, w = _inputs(rng, 2, 3, 4, 8, 7, dtype)
    pads = (1, 1, 1, 1)
    for r, q in [(0, 0), (3, 4), (7, 6), (4, 0)]:
        bad = x.copy()
        bad[1, 2, r, q] = np.nan
        got = _run(bad, w, None, None, None, pads)
        want = reference_conv2d(bad, w, None, pad=pads)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        assert np.isnan(got[1, :, r, q]).all()
        assert not np.isnan(got[0]).any()
        fine = ~np.isnan(want)
        _close(got[fine], want[fine], dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_f4x4_nan_stays_in_the_tiles_whose_inputs_hold_it(dtype):
    """F(4x4, 3x3)'s transforms mix every value of a tile's 6x6 input block into each of
    its 16 outputs: a NaN reaches every output whose window holds it (as the reference),
    and besides those only outputs of the tiles whose input block holds it."""
    rng = np.random.default_rng(4)
    x, w = _inputs(rng, 2, 3, 4, 11, 10, dtype)
    pads = (1, 1, 1, 1)
    for r, q in [(0, 0), (3, 4), (10, 9), (5, 0), (4, 4)]:
        bad = x.copy()
        bad[1, 2, r, q] = np.nan
        got = _run(bad, w, None, None, None, pads, tile=4)
        want = reference_conv2d(bad, w, None, pad=pads)
        assert np.isnan(got[np.isnan(want)]).all()
        assert not np.isnan(got[0]).any()
        reach = np.zeros(got.shape[2:], dtype=bool)  # the tiles whose 6x6 block holds it
        for ty in range(-(-got.shape[2] // 4)):
            for tx in range(-(-got.shape[3] // 4)):
                if 4 * ty <= r + 1 < 4 * ty + 6 and 4 * tx <= q + 1 < 4 * tx + 6:
                    reach[4 * ty:4 * ty + 4, 4 * tx:4 * tx + 4] = True
        assert not np.isnan(got[1][:, ~reach]).any()
        fine = ~np.isnan(got)
        _close(got[fine], want[fine], dtype, 4)


@pytest.mark.parametrize("tile", TILES)
def test_infinity_gives_a_non_finite_output_where_the_reference_does(tile):
    rng = np.random.default_rng(5)
    x, w = _inputs(rng, 1, 2, 3, 6, 6, np.float64)
    x[0, 1, 2, 3] = np.inf
    got = _run(x, w, None, None, None, (1, 1, 1, 1), tile=tile)
    want = reference_conv2d(x, w, None, pad=1)
    # the transforms may subtract an infinity from itself: NaN where the reference has
    # +-inf, never a finite number (F(4x4, 3x3): and in the rest of those tiles)
    if tile == 2:
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    else:
        assert not np.isfinite(got[~np.isfinite(want)]).any()


def test_weights_changed_in_place_are_used():
    """No stale weight transform: training updates the weight array in place."""
    rng = np.random.default_rng(6)
    x, w = _inputs(rng, 2, 3, 4, 6, 5, np.float32)
    first = _run(x, w, None, None, None, (1, 1, 1, 1))
    w *= -2
    second = _run(x, w, None, None, None, (1, 1, 1, 1))
    _close(second, -2 * first, np.float32)
    w[:] = rng.standard_normal(w.shape)
    third = _run(x, w, None, None, None, (1, 1, 1, 1))
    _close(third, _expected(x, w, None, None, None, (1, 1, 1, 1), None), np.float32)


def test_weight_transform_is_G_g_Gt():
    g_mat = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
    w = np.random.default_rng(7).standard_normal((6, 5, 3, 3))
    want = np.einsum("ia,ocab,jb->ijoc", g_mat, w, g_mat).reshape(16, 6, 5)
    np.testing.assert_allclose(winograd.weight_transform(w), want, rtol=0, atol=1e-14)
    assert winograd.weight_transform(w.astype(np.float32)).dtype == np.float32


def test_weight_transform4_is_G_g_Gt_at_the_chosen_points():
    """G of the Toom-Cook construction at 0, 1, -1, 1/2, -2 and infinity: row k of G is
    (1, p, p^2) / prod(p - others) for the finite points p, and (0, 0, 1) for infinity."""
    points = [0, 1, -1, 0.5, -2]
    g_mat = np.zeros((6, 3))
    for k, p in enumerate(points):
        norm = np.prod([p - other for other in points if other != p])
        g_mat[k] = [1 / norm, p / norm, p * p / norm]
    g_mat[5] = [0, 0, 1]
    np.testing.assert_allclose(winograd._G4, g_mat, rtol=0, atol=1e-15)
    w = np.random.default_rng(7).standard_normal((6, 5, 3, 3))
    want = np.einsum("ia,ocab,jb->ijoc", g_mat, w, g_mat).reshape(36, 6, 5)
    np.testing.assert_allclose(winograd.weight_transform4(w), want, rtol=0, atol=1e-14)
    w32 = w.astype(np.float32)
    single = winograd.weight_transform4(w32)
    assert single.dtype == np.float32  # computed in float64, rounded once: within an ulp
    want = np.einsum("ia,ocab,jb->ijoc", g_mat, w32.astype(np.float64), g_mat)
    np.testing.assert_allclose(single, want.reshape(36, 6, 5), rtol=2.4e-7, atol=0)


def test_tile_for_takes_f4x4_only_where_the_transform_is_kept():
    big = winograd.TILE4_MAP
    assert winograd.tile_for(big, big, prepared=True) == 4
    assert winograd.tile_for(big, big) == 2  # computed every call (training): F(2x2, 3x3)
    assert winograd.tile_for(big - 1, 100, prepared=True) == 2  # small maps waste tiles
    assert winograd.tile_for(100, big - 1, prepared=True) == 2


def test_refusals_write_nothing():
    rng = np.random.default_rng(8)
    x, w = _inputs(rng, 1, 2, 3, 5, 5, np.float32)
    out = np.full((1, 3, 5, 5), 7.0, dtype=np.float32)
    pads = (1, 1, 1, 1)
    for act in ("gelu", "elu", ("prelu", {"weight": np.ones(3)})):
        assert winograd.winograd_conv2d(x, w, None, None, act, out, pads) is False
    assert winograd.winograd_conv2d(x.astype(np.float64), w, None, None, None, out,
                                     pads) is False  # mixed dtypes
    w5 = rng.standard_normal((3, 2, 5, 5)).astype(np.float32)
    assert winograd.winograd_conv2d(x, w5, None, None, None, out, pads) is False
    assert (out == 7).all()
    with pytest.raises(ValueError, match="tile must be 2 or 4"):
        winograd.winograd_conv2d(x, w, None, None, None, out, pads, tile=3)
    with pytest.raises(ValueError, match=r"u must be \[36, 3, 2\]"):
        winograd.winograd_conv2d(x, w, None, None, None, out, pads,
                                 u=winograd.weight_transform(w), tile=4)
    assert winograd.applies(x, w) and not winograd.applies(x, w, stride=(2, 2))
    assert not winograd.applies(x, w, dilation=(2, 1)) and not winograd.applies(x, w5)


def test_switched_off(monkeypatch):
    rng = np.random.default_rng(9)
    x, w = _inputs(rng, 1, 2, 3, 5, 5, np.float32)
    out = np.zeros((1, 3, 5, 5), dtype=np.float32)
    monkeypatch.setattr(winograd, "WINOGRAD", False)
    assert not winograd.winograd_conv2d(x, w, None, None, None, out, (1, 1, 1, 1))
    monkeypatch.setattr(winograd, "WINOGRAD", True)
    monkeypatch.setattr(fast, "ENABLED", False)
    assert not winograd.winograd_conv2d(x, w, None, None, None, out, (1, 1, 1, 1))
    assert not winograd.applies(x, w)
    assert (out == 0).all()


def test_a_non_contiguous_input_is_taken():
    rng = np.random.default_rng(10)
    x, w = _inputs(rng, 2, 6, 3, 7, 8, np.float64)
    view = x[:, ::2]
    got = _run(view, w[:, :3].copy(), None, None, None, (1, 1, 1, 1))
    _close(got, _expected(view, w[:, :3], None, None, None, (1, 1, 1, 1), None), np.float64)


def test_worthwhile_thresholds():
    assert winograd.worthwhile(8, 64, 64, 56, 56)
    assert winograd.worthwhile(1, 128, 128, 7, 7)  # U small enough to stay in cache
    assert winograd.worthwhile(8, 512, 512, 7, 7)
    assert not winograd.worthwhile(1, 512, 512, 7, 7)  # U recomputed for 16 tiles
    assert winograd.worthwhile(1, 512, 512, 7, 7, have_u=True)
    assert not winograd.worthwhile(8, 3, 64, 56, 56)  # too few input channels
    assert not winograd.worthwhile(32, 16, 16, 56, 56)  # under MIN_CHANNELS at any size
    assert not winograd.worthwhile(32, 64, 64, 8, 8)  # under WIDE_CHANNELS on a small map
    assert winograd.worthwhile(32, 64, 64, 14, 14)
    assert winograd.worthwhile(32, 128, 128, 4, 4)  # WIDE_CHANNELS: any map


# ---- the weight gradient ----------------------------------------------------------------


def _column_weight_grad(x, w, dy, pads, monkeypatch):
    """gW by the column path (Winograd off)."""
    with monkeypatch.context() as m:
        m.setattr(winograd, "WINOGRAD", False)
        _, saved = conv.conv2d_forward(x, w, None, pad=pads)
        return conv.conv2d_backward(saved, dy, input_grad=False)[1][0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("pads", PADS)
def test_weight_grad_matches_the_column_path(dtype, pads, monkeypatch):
    rng = np.random.default_rng(sum(pads) + 7)
    for h, w in [(1, 1), (2, 3), (5, 4), (7, 7), (8, 9), (14, 9)]:
        if h + pads[0] + pads[1] < 3 or w + pads[2] + pads[3] < 3:
            continue
        x, wt = _inputs(rng, 2, 3, 4, h, w, dtype)
        ho, wo = h + pads[0] + pads[1] - 2, w + pads[2] + pads[3] - 2
        dy = rng.standard_normal((2, 4, ho, wo)).astype(dtype)
        want = _column_weight_grad(x, wt, dy, pads, monkeypatch)
        got = winograd.weight_grad(x, dy, pads)
        assert got.shape == wt.shape and got.dtype == dtype and got.flags.c_contiguous
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, rtol=0, atol=REL[dtype] * scale,
                                   err_msg=f"{h}x{w}")


def test_weight_grad_over_several_chunks(monkeypatch):
    """A workspace of one image per chunk: the 16 products of every chunk add up."""
    rng = np.random.default_rng(3)
    x, wt = _inputs(rng, 5, 6, 5, 9, 8, np.float64)
    dy = rng.standard_normal((5, 5, 9, 8))
    want = _column_weight_grad(x, wt, dy, (1, 1, 1, 1), monkeypatch)
    monkeypatch.setattr(winograd, "GRAD_WORKSPACE_BYTES", 1)
    assert winograd.chunk_images(5, 6, 5, 20, 8, winograd.GRAD_WORKSPACE_BYTES) == 1
    np.testing.assert_allclose(winograd.weight_grad(x, dy, (1, 1, 1, 1)), want,
                               rtol=1e-12, atol=1e-12)


def test_the_backward_takes_it_where_the_forward_would(monkeypatch):
    """conv2d_backward's weight gradient of a wide 3x3 stride-1 layer comes from
    `weight_grad`, at one thread as at two (a step computes the same at any thread count);
    a strided, dilated or narrow one keeps the column path."""
    rng = np.random.default_rng(4)
    calls = []
    real = winograd.weight_grad

    def spy(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(winograd, "weight_grad", spy)
    fast.set_threads(1)
    try:
        _taken_where_it_applies(rng, calls, monkeypatch)
    finally:
        fast.set_threads(None)


def _taken_where_it_applies(rng, calls, monkeypatch):
    x, wt = _inputs(rng, 2, 64, 8, 16, 16, np.float32)
    y, saved = conv.conv2d_forward(x, wt, None, pad=1)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    gW = conv.conv2d_backward(saved, dy)[1][0]
    assert calls == [x.shape]
    want = _column_weight_grad(x, wt, dy, (1, 1, 1, 1), monkeypatch)
    np.testing.assert_allclose(gW, want, rtol=0, atol=1e-5 * np.abs(want).max())
    for attrs in (dict(stride=2, pad=1), dict(dilation=2, pad=2)):
        calls.clear()
        y, saved = conv.conv2d_forward(x, wt, None, **attrs)
        conv.conv2d_backward(saved, rng.standard_normal(y.shape).astype(np.float32))
        assert calls == [], attrs
    narrow = x[:, :8]  # few input channels: not worthwhile
    y, saved = conv.conv2d_forward(narrow, wt[:, :8], None, pad=1)
    calls.clear()
    conv.conv2d_backward(saved, rng.standard_normal(y.shape).astype(np.float32))
    assert calls == []
    fast.set_threads(2)
    y, saved = conv.conv2d_forward(x, wt, None, pad=1)
    calls.clear()
    conv.conv2d_backward(saved, rng.standard_normal(y.shape).astype(np.float32))
    assert calls == [x.shape]
