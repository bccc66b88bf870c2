"""flatten, concat, add and inference dropout."""

import numpy as np
import pytest

from cnnc.runtime import reference
from cnnc.runtime.numpy_backend import KERNELS
from cnnc.runtime.ops import Op


def test_flatten_matches_reference(rng):
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    y = KERNELS[Op.FLATTEN](x)
    assert y.shape == (2, 60)
    np.testing.assert_array_equal(y, reference.flatten(x))


def test_concat_along_channels(rng):
    xs = [rng.standard_normal((2, c, 3, 3)) for c in (1, 4, 2)]
    y = KERNELS[Op.CONCAT](*xs)
    assert y.shape == (2, 7, 3, 3)
    np.testing.assert_array_equal(y, reference.concat(*xs))


@pytest.mark.parametrize("count", [1, 2, 4])
def test_add_several(rng, assert_close, count):
    xs = [rng.standard_normal((2, 3, 4, 4)) for _ in range(count)]
    y = KERNELS[Op.ADD](*xs)
    assert all(not np.shares_memory(y, x) for x in xs)
    assert_close(y, reference.add(*xs))


def test_add_reports_shape_mismatch():
    with pytest.raises(ValueError, match=r"share one shape.*\(1, 2\), \(1, 3\)"):
        KERNELS[Op.ADD](np.zeros((1, 2)), np.zeros((1, 3)))


def test_dropout_is_identity_at_inference(rng):
    x = rng.standard_normal((2, 8))
    np.testing.assert_array_equal(KERNELS[Op.DROPOUT](x, p=0.4), x)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\), got 1"):
        KERNELS[Op.DROPOUT](x, p=1)
