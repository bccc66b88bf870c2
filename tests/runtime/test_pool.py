"""Pooling kernels against the naive reference, over parameter grids."""

import itertools

import numpy as np
import pytest

from cnnc.runtime import reference
from cnnc.runtime.numpy_backend import KERNELS
from cnnc.runtime.ops import Op

maxpool2d = KERNELS[Op.MAXPOOL2D]
avgpool2d = KERNELS[Op.AVGPOOL2D]

DTYPES = [np.float32, np.float64]
KERNELS_2D = [2, 3, (3, 2), (1, 4)]
STRIDES = [None, 1, 2, (3, 2)]
PADS = [0, 1, (1, 0)]
HW = [(7, 8), (9, 7)]  # each case runs on both sizes


def _pad_fits(kernel, pad, dilation=1):
    """PyTorch's rule: pad at most half the (dilated) window, so no window is all padding."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    ph, pw = (pad, pad) if isinstance(pad, int) else pad
    return ph <= (dilation * (kh - 1) + 1) // 2 and pw <= (dilation * (kw - 1) + 1) // 2


MAX_GRID = [
    case
    for case in itertools.product(KERNELS_2D, STRIDES, PADS, [1, 2], [False, True])
    if _pad_fits(case[0], case[2], case[3])
]
AVG_GRID = [
    case
    for case in itertools.product(KERNELS_2D, STRIDES, PADS, [False, True], [True, False])
    if _pad_fits(case[0], case[2])
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride, pad, dilation, ceil", MAX_GRID)
def test_maxpool2d_matches_reference(rng, assert_close, dtype, kernel, stride, pad, dilation,
                                     ceil):
    args = dict(kernel=kernel, stride=stride, pad=pad, dilation=dilation, ceil=ceil)
    for hw in HW:
        x = rng.standard_normal((2, 3) + hw).astype(dtype)
        y = maxpool2d(x, **args)
        assert y.dtype == dtype
        assert y.flags.c_contiguous
        assert_close(y, reference.maxpool2d(x, **args))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride, pad, ceil, count_pad", AVG_GRID)
def test_avgpool2d_matches_reference(rng, assert_close, dtype, kernel, stride, pad, ceil,
                                     count_pad):
    args = dict(kernel=kernel, stride=stride, pad=pad, ceil=ceil, count_pad=count_pad)
    for hw in HW:
        x = rng.standard_normal((2, 3) + hw).astype(dtype)
        y = avgpool2d(x, **args)
        assert y.dtype == dtype
        assert y.flags.c_contiguous
        assert_close(y, reference.avgpool2d(x, **args))


def test_padding_never_wins_a_max(rng):
    x = -1.0 - rng.random((1, 2, 5, 5))  # all below zero, so zero padding would win
    y = maxpool2d(x, kernel=3, stride=2, pad=1, ceil=True)
    assert (y < -1.0).all()


def test_count_pad_divisors_by_hand():
    """Ones in, so each output is (real cells) / divisor; a 4x4 input, kernel 3, stride 2,
    pad 1, ceil: windows start at -1, 1, 3 in each axis (3 starts in the input, kept)."""
    x = np.ones((1, 1, 4, 4))
    with_pad = avgpool2d(x, kernel=3, stride=2, pad=1, ceil=True, count_pad=True)
    # per axis: real cells 2, 3, 1; divisor clipped to the padded input [-1, 5): 3, 3, 2
    real = np.array([2, 3, 1])
    clipped = np.array([3, 3, 2])
    np.testing.assert_allclose(with_pad[0, 0], np.outer(real, real) / np.outer(clipped, clipped))
    without_pad = avgpool2d(x, kernel=3, stride=2, pad=1, ceil=True, count_pad=False)
    np.testing.assert_allclose(without_pad[0, 0], np.ones((3, 3)))


def test_pools_leave_input_alone_and_return_fresh_arrays(rng):
    x = rng.standard_normal((1, 2, 4, 4))
    before = x.copy()
    for y in (maxpool2d(x, kernel=1), avgpool2d(x, kernel=1)):
        assert not np.shares_memory(x, y)
        y[...] = 0
    np.testing.assert_array_equal(x, before)


def test_maxpool_integer_input():
    x = np.arange(-16, 0, dtype=np.int32).reshape(1, 1, 4, 4)
    y = maxpool2d(x, kernel=3, stride=2, pad=1)
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y[0, 0], [[-11, -9], [-3, -1]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_pools(rng, assert_close, dtype):
    x = rng.standard_normal((2, 3, 5, 7)).astype(dtype)
    avg = KERNELS[Op.GLOBAL_AVGPOOL](x)
    top = KERNELS[Op.GLOBAL_MAXPOOL](x)
    assert avg.shape == top.shape == (2, 3, 1, 1)
    assert avg.dtype == top.dtype == dtype
    assert_close(avg, reference.global_avgpool(x))
    assert_close(top, reference.global_maxpool(x))


def test_pool_reports_output_below_one(rng):
    x = rng.standard_normal((1, 1, 2, 6))
    with pytest.raises(ValueError, match=r"maxpool2d height: output size must be at least 1"):
        maxpool2d(x, kernel=3)
