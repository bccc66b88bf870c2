"""Small maps of few channels (ops/conv.py ``_conv_channels_last``): the column matrix cut
from the image laid out channel-last, one GEMM, the epilogue as it writes. It must compute
what the shifted-rows GEMM computes, epilogue, gate and a concat's channel slice included,
and its weight gradient what the channel-first columns give."""

import itertools

import numpy as np
import pytest

from cnnc.ops import conv


def _both(monkeypatch, run):
    """``run()`` through the channels-last path, then through the shifted rows."""
    got = run()
    monkeypatch.setattr(conv, "CHANNELS_LAST_CHANNELS", 0)
    want = run()
    monkeypatch.setattr(conv, "CHANNELS_LAST_CHANNELS", 64)
    return got, want


GRID = list(itertools.product(
    [(2, 5, 7, 6), (3, 16, 4, 4), (1, 64, 8, 8)],  # (N, C, H, W)
    [(3, 3), (1, 3), (5, 5)],
    [(1, 1), (2, 1)],
    [(1, 1, 1, 1), (0, 2, 1, 0)],
    [(1, 1), (2, 1)]))


@pytest.mark.parametrize("shape, kernel, stride, pads, dilation", GRID)
def test_it_computes_what_the_shifted_rows_compute(shape, kernel, stride, pads, dilation,
                                                   monkeypatch):
    """(float64: the sums differ in order only; float32 below)"""
    rng = np.random.default_rng(sum(shape) + kernel[1])
    n, c, h, w = shape
    x = rng.standard_normal(shape)
    wt = rng.standard_normal((6, c, *kernel))
    b = rng.standard_normal(6)
    scale = rng.uniform(0.5, 2, 6)
    gate = rng.uniform(0, 1, (n, 6))
    try:
        conv._geometry(x, wt, stride, pads, dilation)
    except ValueError:
        pytest.skip("no output")
    for act in (None, "relu", "sigmoid", ("leaky_relu", {"alpha": 0.1})):
        def run():
            return conv.conv2d(x, wt, b, stride=stride, pad=pads, dilation=dilation,
                               act=act, scale=scale, gate=gate)

        got, want = _both(monkeypatch, run)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=str(act))
        assert got.flags.c_contiguous and got.dtype == np.float64


def test_into_a_concat_slice_and_with_the_compiled_kernels_off(monkeypatch):
    from cnnc.ops import fast

    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 8, 6, 6)).astype(np.float32)
    wt = rng.standard_normal((5, 8, 3, 3)).astype(np.float32)
    for enabled in (True, False):
        monkeypatch.setattr(fast, "ENABLED", enabled)
        whole = np.full((4, 9, 6, 6), 7.0, np.float32)

        def run():
            whole[:, 2:7] = -1
            conv.conv2d(x, wt, None, pad=1, act="relu", out=whole[:, 2:7])
            return whole.copy()

        got, want = _both(monkeypatch, run)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        assert (got[:, :2] == 7).all() and (got[:, 7:] == 7).all()
        assert (got[:, 2:7] >= 0).all() and (got[:, 2:7] > 0).any()  # relu'd, written


@pytest.mark.parametrize("stride, pads", [((1, 1), (1, 1, 1, 1)), ((1, 1), (2, 0, 0, 2))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_weight_gradient_equals_the_channel_first_columns(stride, pads, dtype,
                                                              monkeypatch):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 12, 7, 7)).astype(dtype)
    wt = rng.standard_normal((10, 12, 3, 3)).astype(dtype)
    y, saved = conv.conv2d_forward(x, wt, np.zeros(10, dtype), stride=stride, pad=pads)
    dy = rng.standard_normal(y.shape).astype(dtype)
    monkeypatch.setattr(conv, "WORKSPACE_BYTES", 4096)  # a chunk of images at a time
    got, want = _both(monkeypatch, lambda: conv.conv2d_backward(saved, dy))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for g, h in zip(got[0] + got[1], want[0] + want[1]):
        assert g.dtype == dtype and g.flags.c_contiguous
        np.testing.assert_allclose(g, h, rtol=tol, atol=tol * np.abs(h).max())


def test_the_layers_it_takes(monkeypatch):
    taken = []
    real = conv._conv_channels_last
    monkeypatch.setattr(conv, "_conv_channels_last",
                        lambda *a, **k: taken.append(a[1].shape) or real(*a, **k))
    rng = np.random.default_rng(3)

    def run(c, o, hw, k=3, groups=1):
        x = rng.standard_normal((2, c, hw, hw)).astype(np.float32)
        conv.conv2d(x, rng.standard_normal((o, c // groups, k, k)).astype(np.float32),
                    pad=k // 2, groups=groups)

    run(16, 32, 8)  # the digits example's second layer: taken
    run(64, 64, 8)
    run(65, 64, 8)  # too many input channels
    run(16, 32, 9)  # 81 output pixels
    run(16, 16, 8, k=1)  # 1x1: the GEMM
    run(16, 16, 8, groups=2)  # grouped
    run(3, 16, 8)  # the direct loop of few channels
    assert taken == [(32, 16, 3, 3), (64, 64, 3, 3)]


@pytest.mark.parametrize("stride, dilation, input_grad", [
    ((2, 2), (1, 1), False), ((1, 1), (2, 1), True), ((1, 2), (1, 1), False)])
def test_the_weight_gradient_at_strides_and_dilations(stride, dilation, input_grad,
                                                      monkeypatch):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 9, 8, 8))
    wt = rng.standard_normal((7, 9, 3, 3))
    y, saved = conv.conv2d_forward(x, wt, None, stride=stride, pad=2, dilation=dilation)
    dy = rng.standard_normal(y.shape)
    got, want = _both(monkeypatch,
                      lambda: conv.conv2d_backward(saved, dy, input_grad=input_grad))
    assert (got[0][0] is None) == (not input_grad)
    np.testing.assert_allclose(got[1][0], want[1][0], rtol=1e-11, atol=1e-11)


def test_no_channels_is_refused():
    """(The direct loop ran forever on a convolution of no input channels.)"""
    with pytest.raises(ValueError, match="at least one channel"):
        conv.conv2d(np.zeros((1, 0, 8, 8), np.float32), np.zeros((4, 0, 3, 3), np.float32))
