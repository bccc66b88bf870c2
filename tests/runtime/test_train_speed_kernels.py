"""The compiled training pairs of max pooling (ops/pool.py) and batch norm (ops/norm.py)
against the NumPy-API code they sit beside, which runs with ops/fast.py's kernels off: the
same outputs, the same kept index (ties, padding, NaN), the same gradients and running
statistics, over grids that reach the edges (one-sided and ceil-mode padding, dilation,
strides past the kernel, any rank, no affine part)."""

import numpy as np
import pytest

from cnnc.ops import norm, pool

fast = pytest.importorskip("cnnc.ops.fast")
pytestmark = pytest.mark.skipif(not fast.ENABLED, reason="numba not installed or CNNC_FAST=0")


def _both(monkeypatch, run):
    """``run()`` with the compiled kernels on, then off."""
    on = run()
    monkeypatch.setattr(fast, "ENABLED", False)
    off = run()
    monkeypatch.setattr(fast, "ENABLED", True)
    return on, off


# (shape, attributes)
POOLS = [
    ((2, 3, 9, 8), dict(kernel=3, stride=2, pad=1)),  # ResNet's stem pool
    ((2, 2, 7, 7), dict(kernel=2)),
    ((1, 2, 7, 7), dict(kernel=3, stride=2, ceil=True)),  # last windows past the edge
    ((2, 3, 9, 8), dict(kernel=(3, 2), stride=(2, 1), pad=(0, 2, 1, 0), dilation=(1, 2),
                        ceil=True)),
    ((1, 2, 6, 9), dict(kernel=(2, 3), stride=(4, 5), pad=(1, 1, 1, 1))),  # stride > kernel
    ((2, 1, 1, 9), dict(kernel=(1, 4), stride=(1, 2), pad=(0, 0, 2, 1))),  # a maxpool1d
    ((1, 1, 11, 10), dict(kernel=5, stride=1, pad=2, dilation=2)),
    ((2, 3, 8, 9), dict(kernel=3, stride=2, pad=1, transposed=True)),  # a strided view
    # rows of WIDE_POOL outputs or more: the phase-plane layout
    ((2, 2, 40, 37), dict(kernel=3, stride=2, pad=1)),
    ((1, 2, 21, 70), dict(kernel=(3, 2), stride=(2, 1), pad=(0, 2, 1, 0), dilation=(1, 2),
                          ceil=True)),
    ((1, 1, 18, 41), dict(kernel=(2, 3), stride=(3, 2), pad=(1, 1, 1, 1))),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, attrs", POOLS)
def test_maxpool_training_pair_matches_numpy(monkeypatch, shape, attrs, dtype):
    rng = np.random.default_rng(len(shape) + sum(shape))
    attrs = dict(attrs)
    x = rng.standard_normal(shape).astype(dtype)
    x[x < 0.3] = 0.0  # after a relu: many windows hold ties
    x[0, 0, -1, 1:3] = -np.inf  # real cells equal to the padding's value
    if attrs.pop("transposed", False):
        x = x.transpose(0, 1, 3, 2)
    y_shape = pool.maxpool2d_forward(x, **attrs)[0].shape
    dy = rng.standard_normal(y_shape).astype(dtype)

    def run():
        y, saved = pool.maxpool2d_forward(x, **attrs)
        (gx,), params = pool.maxpool2d_backward(saved, dy)
        return y, saved[0], gx, params

    (y1, index1, gx1, p1), (y0, index0, gx0, p0) = _both(monkeypatch, run)
    assert np.array_equal(y1, y0)
    assert index1.dtype == index0.dtype and np.array_equal(index1, index0)
    assert gx1.dtype == gx0.dtype and gx1.shape == gx0.shape
    # several windows may pick one cell: their dy add up in another order
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(gx1, gx0, rtol=tol, atol=tol)
    assert p1 == p0 == ()


def test_maxpool_nan_stays_the_maximum_and_keeps_the_index(monkeypatch):
    """A NaN wins its windows (as ``maximum`` propagates it) and the index stays at the
    last strictly greater tap before it, exactly as in the NumPy code."""
    x = np.arange(2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8) % 7
    x[0, 1, 2, 3] = np.nan
    x[1, 2, 0, 0] = np.nan

    def run():
        y, saved = pool.maxpool2d_forward(x, kernel=3, stride=2, pad=1)
        return y, saved[0]

    (y1, index1), (y0, index0) = _both(monkeypatch, run)
    assert np.isnan(y1).sum() == np.isnan(y0).sum() > 0
    assert np.array_equal(y1, y0, equal_nan=True)
    assert np.array_equal(index1, index0)


@pytest.mark.parametrize("shape", [(1, 2, 20, 40), (1, 2, 8, 8)])  # wide rows, short rows
def test_maxpool_training_forward_takes_a_read_only_input(shape):
    rng = np.random.default_rng(6)
    x = rng.standard_normal(shape).astype(np.float32)
    y0, saved0 = pool.maxpool2d_forward(x, kernel=3, stride=2, pad=1)
    x.flags.writeable = False  # as Ray's object store hands arrays out
    y1, saved1 = pool.maxpool2d_forward(x, kernel=3, stride=2, pad=1)
    assert np.array_equal(y1, y0) and np.array_equal(saved1[0], saved0[0])


def test_maxpool_compiled_only_for_numpy_float_arrays():
    assert pool._compiled_maxpool(np.zeros((1, 1, 2, 2), np.float32)) is not None
    assert pool._compiled_maxpool(np.zeros((1, 1, 2, 2), np.float16)) is None
    assert pool._compiled_maxpool(np.zeros((1, 1, 2, 2), np.int32)) is None


# (shape, affine)
NORMS = [
    ((4, 3, 5, 6), True),
    ((4, 3, 5, 6), False),
    ((5, 7), True),  # features: one value per sample and channel
    ((2, 3, 4, 2, 3), True),  # a volume
    ((3, 2, 1, 1), True),
]


@pytest.mark.parametrize("dtype, tol", [(np.float32, 2e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("shape, affine", NORMS)
def test_batchnorm_training_pair_matches_numpy(monkeypatch, shape, affine, dtype, tol):
    rng = np.random.default_rng(sum(shape))
    channels = shape[1]
    x = (rng.standard_normal(shape) * 3 + 5).astype(dtype)  # a mean far from 0
    if len(shape) == 4 and shape[2] > 1:
        x = x[:, :, ::-1]  # a view with a negative stride
    weight = rng.standard_normal(channels).astype(dtype) if affine else None
    bias = rng.standard_normal(channels).astype(dtype) if affine else None
    dy = rng.standard_normal(shape).astype(dtype)

    def run():
        running_mean = np.full(channels, 0.5, dtype)
        running_var = np.full(channels, 2.0, dtype)
        y, saved = norm.batchnorm_forward(x, weight, bias, running_mean, running_var,
                                          eps=1e-5, momentum=0.1, train=True)
        (gx,), params = norm.batchnorm_backward(saved, dy)
        return y, saved, gx, params, running_mean, running_var

    on, off = _both(monkeypatch, run)
    y1, saved1, gx1, params1, mean1, var1 = on
    y0, saved0, gx0, params0, mean0, var0 = off
    for a, b in [(y1, y0), (saved1[0], saved0[0]), (saved1[1], saved0[1]), (gx1, gx0),
                 (mean1, mean0), (var1, var0)]:
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    assert saved1[2] is saved0[2] and saved1[3:] == saved0[3:]  # weight, has_bias, batch
    assert [p is None for p in params1] == [p is None for p in params0]
    for a, b in zip(params1, params0):
        if b is not None:
            assert a.dtype == b.dtype
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol * shape[0] * 10)


def test_batchnorm_running_statistics_path_is_untouched(monkeypatch):
    """``train=False`` keeps the running statistics' backward (NumPy) either way."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    stats = [np.ones(3, np.float32), np.zeros(3, np.float32), np.zeros(3, np.float32),
             np.ones(3, np.float32)]
    dy = rng.standard_normal(x.shape).astype(np.float32)

    def run():
        y, saved = norm.batchnorm_forward(x, *stats, train=False)
        return y, norm.batchnorm_backward(saved, dy)[0][0]

    (y1, gx1), (y0, gx0) = _both(monkeypatch, run)
    assert np.array_equal(y1, y0) and np.array_equal(gx1, gx0)
