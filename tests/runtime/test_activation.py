"""Activations, softmax and maxout against the naive reference."""

import warnings

import numpy as np
import pytest

from cnnc.runtime import reference
from cnnc.runtime.kernels.activation import SELU_ALPHA, SELU_SCALE
from cnnc.runtime.numpy_backend import KERNELS
from cnnc.runtime.ops import Op

activation = KERNELS[Op.ACTIVATION]
softmax = KERNELS[Op.SOFTMAX]
maxout = KERNELS[Op.MAXOUT]

DTYPES = [np.float32, np.float64]
CASES = [
    ("identity", {}),
    ("relu", {}),
    ("leaky_relu", {}),
    ("leaky_relu", {"alpha": 0.3}),
    ("leaky_relu", {"alpha": -0.5}),
    ("leaky_relu", {"alpha": 2.0}),
    ("elu", {}),
    ("elu", {"alpha": 0.5}),
    ("selu", {}),
    ("sigmoid", {}),
    ("tanh", {}),
    ("softplus", {}),
    ("swish", {}),
    ("swish", {"beta": 0.5}),
    ("silu", {}),
]
# Far enough out that a naive exp(-x) or exp(x) overflows in float32 and float64.
EXTREMES = [-1000.0, -100.0, -30.0, -1e-3, 0.0, 1e-3, 30.0, 100.0, 1000.0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, params", CASES, ids=lambda v: str(v))
def test_activation_matches_reference(rng, assert_close, dtype, name, params):
    x = (3 * rng.standard_normal((2, 3, 4, 5))).astype(dtype)
    before = x.copy()
    y = activation(x, name=name, **params)
    assert y.dtype == dtype
    assert_close(y, reference.activation(x, name=name, **params))
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, params", CASES, ids=lambda v: str(v))
def test_activation_is_finite_at_extremes(assert_close, dtype, name, params):
    x = np.array(EXTREMES, dtype=dtype).reshape(1, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow or invalid-value warnings
        y = activation(x, name=name, **params)
    assert np.isfinite(y).all()
    assert_close(y, reference.activation(x, name=name, **params))


def test_sigmoid_keeps_relative_accuracy_far_left():
    y = activation(np.array([[-40.0, -700.0]]), name="sigmoid")
    np.testing.assert_allclose(y, [[np.exp(-40.0), np.exp(-700.0)]], rtol=1e-12)


def test_selu_constants():
    # Klambauer et al. 2017: alpha_01 ~ 1.6733, lambda_01 ~ 1.0507
    assert SELU_ALPHA == pytest.approx(1.6732632423543772)
    assert SELU_SCALE == pytest.approx(1.0507009873554805)
    y = activation(np.array([[-1.0, 1.0]]), name="selu")
    np.testing.assert_allclose(y, [[SELU_SCALE * SELU_ALPHA * np.expm1(-1.0), SELU_SCALE]])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (4, 3)])
def test_prelu_is_per_channel(rng, assert_close, dtype, shape):
    x = rng.standard_normal(shape).astype(dtype)
    slopes = rng.uniform(-0.5, 0.5, size=3).astype(dtype)
    y = activation(x, slopes, name="prelu")
    assert_close(y, reference.activation(x, slopes, name="prelu"))
    shared = activation(x, np.array([0.25], dtype=dtype), name="prelu")
    assert_close(shared, reference.activation(x, np.array([0.25]), name="prelu"))


def test_prelu_reports_wrong_slope_count(rng):
    with pytest.raises(ValueError, match=r"weight has 2 slopes, expected 1 or 3"):
        activation(rng.standard_normal((1, 3, 2, 2)), np.ones(2), name="prelu")


def test_unknown_activation_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown activation 'gelu'; known: .*relu"):
        activation(np.zeros((1, 1)), name="gelu")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 10), (2, 4, 3, 3)])
def test_softmax_matches_reference(rng, assert_close, dtype, shape):
    x = (5 * rng.standard_normal(shape)).astype(dtype)
    y = softmax(x)
    assert y.dtype == dtype
    assert_close(y, reference.softmax(x))
    assert_close(y.sum(axis=1), np.ones((shape[0],) + shape[2:]))


def test_softmax_is_stable_for_large_logits(assert_close):
    x = np.array([[1000.0, 1000.0, -1000.0]], dtype=np.float32)
    assert_close(softmax(x), [[0.5, 0.5, 0.0]])


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("shape", [(2, 6, 3, 4), (2, 6)])
def test_maxout_matches_reference(rng, assert_close, k, shape):
    x = rng.standard_normal(shape)
    y = maxout(x, k=k)
    assert y.shape == (shape[0], 6 // k) + shape[2:]
    assert_close(y, reference.maxout(x, k=k))


def test_maxout_groups_adjacent_channels():
    x = np.array([[1.0, 5.0, 2.0, 3.0, 9.0, 0.0]])
    np.testing.assert_array_equal(maxout(x, k=2), [[5.0, 3.0, 9.0]])
    np.testing.assert_array_equal(maxout(x, k=3), [[5.0, 9.0]])


def test_maxout_reports_indivisible_channels():
    with pytest.raises(ValueError, match=r"divide by k: 6 channels, k=4"):
        maxout(np.zeros((1, 6, 2, 2)), k=4)
