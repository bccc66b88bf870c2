"""Shared fixtures for the runtime tests: a seeded generator and a dtype-aware comparison."""

import numpy as np
import pytest

# Tolerances per computing dtype: float32 kernels sum up to a few hundred products.
TOLERANCES = {
    np.dtype(np.float32): dict(rtol=2e-4, atol=2e-5),
    np.dtype(np.float64): dict(rtol=1e-10, atol=1e-12),
}


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


@pytest.fixture
def assert_close():
    """``assert_close(actual, expected)``: same shape, values within the tolerance of the
    actual array's dtype."""

    def check(actual, expected, dtype=None):
        actual = np.asarray(actual)
        expected = np.asarray(expected)
        assert actual.shape == expected.shape
        tol = TOLERANCES[np.dtype(dtype or actual.dtype)]
        np.testing.assert_allclose(actual, expected, **tol)

    return check
