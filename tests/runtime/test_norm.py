"""Batch norm (inference) and LRN against the naive reference."""

import numpy as np
import pytest

from cnnc.runtime import reference
from cnnc.runtime.numpy_backend import KERNELS
from cnnc.runtime.ops import Op

batchnorm = KERNELS[Op.BATCHNORM]
lrn = KERNELS[Op.LRN]

DTYPES = [np.float32, np.float64]


def _stats(rng, channels, dtype):
    weight = rng.uniform(0.5, 2.0, channels).astype(dtype)
    bias = rng.standard_normal(channels).astype(dtype)
    mean = rng.standard_normal(channels).astype(dtype)
    var = rng.uniform(0.1, 3.0, channels).astype(dtype)
    return weight, bias, mean, var


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 5, 3, 4), (3, 5)])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_matches_reference(rng, assert_close, dtype, shape, affine):
    x = rng.standard_normal(shape).astype(dtype)
    weight, bias, mean, var = _stats(rng, 5, dtype)
    if not affine:
        weight = bias = None
    y = batchnorm(x, weight, bias, mean, var, eps=1e-3)
    assert y.dtype == dtype
    assert_close(y, reference.batchnorm(x, weight, bias, mean, var, eps=1e-3))


def test_batchnorm_reports_wrong_parameter_shape(rng):
    weight, bias, mean, var = _stats(rng, 4, np.float64)
    with pytest.raises(ValueError, match=r"running_mean must be \[5\].*got \(3,\)"):
        batchnorm(np.zeros((1, 5, 2, 2)), None, None, mean[:3], np.ones(5))


LRN_PARAMS = [
    dict(),  # defaults: size 5, alpha 1e-4, beta 0.75, k 1
    dict(size=1, alpha=0.5, beta=0.5, k=2.0),
    dict(size=2, alpha=0.3, beta=0.75, k=1.0),
    dict(size=3, alpha=1.0, beta=1.0, k=0.5),
    dict(size=4, alpha=0.2, beta=0.6, k=1.0),
    dict(size=9, alpha=0.5, beta=0.75, k=1.0),  # window wider than the 6 channels
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("params", LRN_PARAMS, ids=str)
@pytest.mark.parametrize("shape", [(2, 6, 3, 4), (2, 6, 5)])
def test_lrn_matches_reference(rng, assert_close, dtype, params, shape):
    x = (2 * rng.standard_normal(shape)).astype(dtype)
    y = lrn(x, **params)
    assert y.dtype == dtype
    assert_close(y, reference.lrn(x, **params))


def test_lrn_window_by_hand():
    # size 2 looks at channels c-1 and c: b_c = x_c / (k + alpha/2 * (x_{c-1}^2 + x_c^2))
    x = np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    y = lrn(x, size=2, alpha=2.0, beta=1.0, k=1.0)
    expected = [1 / (1 + 1), 2 / (1 + 1 + 4), 3 / (1 + 4 + 9)]
    np.testing.assert_allclose(y.ravel(), expected)
