"""Rules the finite differences cannot see: where a tie's gradient goes, that padding never
wins a max, dropout's mask, batchnorm's running statistics, and clear errors."""

import numpy as np
import pytest

from cnnc.runtime.grads import GRADS
from cnnc.runtime.ops import Op


def _grad(op, x, *params, dy=None, **attrs):
    forward, backward = GRADS[op]
    y, saved = forward(x, *params, **attrs)
    (gx,), _ = backward(saved, np.ones_like(y) if dy is None else dy)
    return y, gx


# ---------------------------------------------------------------- ties go to the first max


def test_maxpool_tie_goes_to_the_first_cell_of_the_window():
    x = np.ones((1, 1, 4, 4))
    _, gx = _grad(Op.MAXPOOL2D, x, kernel=2, stride=1, pad=0, dilation=1, ceil=False)
    expected = np.zeros((4, 4))
    expected[:3, :3] = 1  # each 2x2 window's top-left cell
    np.testing.assert_array_equal(gx[0, 0], expected)


def test_maxpool_tie_order_is_row_major_over_the_window():
    # two maxima in one 3x3 window: (0, 2) comes before (1, 0) in row-major order
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 0, 2] = x[0, 0, 1, 0] = 5.0
    _, gx = _grad(Op.MAXPOOL2D, x, kernel=3, stride=1, pad=0, dilation=1, ceil=False)
    assert gx[0, 0, 0, 2] == 1 and gx.sum() == 1


@pytest.mark.parametrize("fill", [-3.0, -np.inf])
def test_padding_never_wins_a_max(fill):
    """Padding is -inf; even where every real cell is -inf too (or ties it), the gradient
    goes to the window's first real cell, not to the padding."""
    x = np.full((1, 2, 5, 4), fill)
    y, gx = _grad(Op.MAXPOOL2D, x, kernel=3, stride=2, pad=(1, 1), dilation=1, ceil=True)
    assert np.all(y == fill)
    assert gx.sum() == y.size  # no gradient lost to the padding
    ho, wo = y.shape[2:]
    expected = np.zeros((5, 4))
    for oh in range(ho):
        for ow in range(wo):
            expected[max(0, 2 * oh - 1), max(0, 2 * ow - 1)] += 1
    np.testing.assert_array_equal(gx[0, 0], expected)
    np.testing.assert_array_equal(gx[0, 1], expected)


def test_dilated_maxpool_ties_skip_the_padding():
    x = np.zeros((1, 1, 5, 5))
    y, gx = _grad(Op.MAXPOOL2D, x, kernel=2, stride=2, pad=(1, 0, 1, 0), dilation=2,
                  ceil=False)
    # the 2x2 windows read rows (-1, 1) or (1, 3) and columns (-1, 1) or (1, 3): the first
    # real cell of each is (1, 1), padding coming first in three of them
    assert y.shape == (1, 1, 2, 2)
    assert gx[0, 0, 1, 1] == 4 and gx.sum() == 4


def test_global_maxpool_tie_goes_to_the_first_position():
    x = np.zeros((2, 3, 3, 4))
    x[:, :, 1, 2] = x[:, :, 2, 0] = 1.0
    _, gx = _grad(Op.GLOBAL_MAXPOOL, x)
    expected = np.zeros_like(x)
    expected[:, :, 1, 2] = 1
    np.testing.assert_array_equal(gx, expected)


@pytest.mark.parametrize("shape", [(2, 6), (2, 6, 2, 2)])
def test_maxout_tie_goes_to_the_first_channel_of_its_group(shape):
    x = np.ones(shape)
    _, gx = _grad(Op.MAXOUT, x, k=3)
    expected = np.zeros(shape)
    expected[:, 0] = expected[:, 3] = 1  # groups are channels 0-2 and 3-5
    np.testing.assert_array_equal(gx, expected)


def test_relu_gradient_at_zero_is_zero():
    x = np.array([[-1.0, 0.0, 2.0]])
    _, gx = _grad(Op.ACTIVATION, x, name="relu", alpha=None, beta=None)
    np.testing.assert_array_equal(gx, [[0, 0, 1]])


def test_maxpool_keeps_a_compact_index_not_the_input():
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    _, saved = GRADS[Op.MAXPOOL2D][0](x, kernel=3, stride=2, pad=1, dilation=1, ceil=False)
    arrays = [a for a in saved if isinstance(a, np.ndarray)]
    assert len(arrays) == 1 and arrays[0].dtype == np.uint8 and arrays[0].shape == (2, 3, 4, 4)


# ---------------------------------------------------------------- dropout


def test_dropout_mask_is_inverted_kept_and_reproducible():
    x = np.random.default_rng(1).standard_normal((64, 50)).astype(np.float32)
    forward, backward = GRADS[Op.DROPOUT]
    y, saved = forward(x, p=0.25, train=True, rng=np.random.default_rng(7))
    kept = y != 0
    assert y.dtype == np.float32
    assert 0.70 < kept.mean() < 0.80
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-6)
    dy = np.ones_like(y)
    (gx,), _ = backward(saved, dy)
    np.testing.assert_allclose(gx, kept / np.float32(0.75), rtol=1e-6)
    again, _ = forward(x, p=0.25, train=True, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(again, y)


def test_dropout_without_training_is_the_identity_both_ways():
    x = np.arange(6.0).reshape(2, 3)
    forward, backward = GRADS[Op.DROPOUT]
    y, saved = forward(x, p=0.5, train=False)
    np.testing.assert_array_equal(y, x)
    (gx,), _ = backward(saved, np.full((2, 3), 2.0))
    np.testing.assert_array_equal(gx, np.full((2, 3), 2.0))


# ---------------------------------------------------------------- batchnorm statistics


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 2, 5)])
def test_batchnorm_moves_running_statistics_by_momentum(shape):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape) * 3 + 2
    weight, bias = rng.standard_normal(3), rng.standard_normal(3)
    mean0, var0 = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    running_mean, running_var = mean0.copy(), var0.copy()
    y, _ = GRADS[Op.BATCHNORM][0](x, weight, bias, running_mean, running_var, eps=1e-5,
                                  momentum=0.2)
    axes = (0,) + tuple(range(2, x.ndim))
    per_channel = (1, 3) + (1,) * (x.ndim - 2)
    batch_mean = x.mean(axis=axes)
    np.testing.assert_allclose(running_mean, 0.8 * mean0 + 0.2 * batch_mean, rtol=1e-12)
    np.testing.assert_allclose(running_var, 0.8 * var0 + 0.2 * x.var(axis=axes, ddof=1),
                               rtol=1e-12)  # unbiased variance in the running estimate
    xhat = (x - batch_mean.reshape(per_channel)) / np.sqrt(
        x.var(axis=axes).reshape(per_channel) + 1e-5)  # biased variance to normalise
    np.testing.assert_allclose(y, xhat * weight.reshape(per_channel)
                               + bias.reshape(per_channel), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- errors


def test_fused_activation_is_refused_in_training():
    x, w = np.ones((1, 2, 3, 3)), np.ones((2, 2, 1, 1))
    with pytest.raises(ValueError, match=r"conv2d: .*act=None.*'relu'"):
        GRADS[Op.CONV2D][0](x, w, stride=1, pad=0, dilation=1, groups=1, act="relu")
    with pytest.raises(ValueError, match=r"dense: .*act=None"):
        GRADS[Op.DENSE][0](np.ones((1, 2)), np.ones((3, 2)), act="tanh")


def test_dy_of_the_wrong_shape_is_refused():
    x = np.ones((2, 3, 4, 4))
    y, saved = GRADS[Op.MAXPOOL2D][0](x, kernel=2, stride=2, pad=0, dilation=1, ceil=False)
    with pytest.raises(ValueError, match=r"maxpool2d backward.*\(2, 3, 2, 2\).*\(2, 3, 4, 4\)"):
        GRADS[Op.MAXPOOL2D][1](saved, x)
    y, saved = GRADS[Op.ACTIVATION][0](x, name="tanh", alpha=None, beta=None)
    with pytest.raises(ValueError, match=r"activation tanh backward"):
        GRADS[Op.ACTIVATION][1](saved, y[:1])


def test_dropout_training_needs_a_generator():
    with pytest.raises(ValueError, match=r"dropout: .*p=0.5.*rng"):
        GRADS[Op.DROPOUT][0](np.ones((2, 3)), p=0.5, train=True, rng=None)


def test_batchnorm_training_needs_two_values_per_channel():
    ones = np.ones(3)
    with pytest.raises(ValueError, match=r"batchnorm: .*more than one value.*\(1, 3\)"):
        GRADS[Op.BATCHNORM][0](np.ones((1, 3)), ones, ones, ones, ones, eps=1e-5,
                               momentum=0.1)
    with pytest.raises(ValueError, match=r"batchnorm: running_var must be \[3\].*\(4,\)"):
        GRADS[Op.BATCHNORM][0](np.ones((2, 3)), ones, ones, ones, np.ones(4), eps=1e-5,
                               momentum=0.1)


def test_unknown_activation_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown activation 'gelu'.*relu"):
        GRADS[Op.ACTIVATION][0](np.ones((1, 2)), name="gelu", alpha=None, beta=None)
