"""conv2d and dense against the naive reference, over parameter grids."""

import itertools

import numpy as np
import pytest

from cnnc.runtime.kernels import conv as conv_module
from cnnc.runtime.numpy_backend import KERNELS
from cnnc.runtime.ops import Op
from cnnc.runtime import reference

conv2d = KERNELS[Op.CONV2D]
dense = KERNELS[Op.DENSE]

DTYPES = [np.float32, np.float64]
KERNEL_SIZES = [(1, 1), (3, 3), (2, 3)]
STRIDES = [1, 2, (3, 1)]
PADS = [0, 1, (1, 2, 0, 1)]
DILATIONS = [1, (2, 1)]
GROUPS = [1, 2]

GRID = list(itertools.product(KERNEL_SIZES, STRIDES, PADS, DILATIONS, GROUPS))


def _case(rng, dtype, kernel, groups, batch=2, channels=4, out_channels=6, hw=(7, 6)):
    x = rng.standard_normal((batch, channels) + hw).astype(dtype)
    w = rng.standard_normal((out_channels, channels // groups) + kernel).astype(dtype)
    b = rng.standard_normal(out_channels).astype(dtype)
    return x, w, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride, pad, dilation, groups", GRID)
def test_conv2d_matches_reference(rng, assert_close, dtype, kernel, stride, pad, dilation,
                                  groups):
    x, w, b = _case(rng, dtype, kernel, groups)
    args = dict(stride=stride, pad=pad, dilation=dilation, groups=groups)
    y = conv2d(x, w, b, **args)
    assert y.dtype == dtype
    assert y.flags.c_contiguous
    assert_close(y, reference.conv2d(x, w, b, **args))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_pointwise_conv_skips_im2col_and_matches(rng, assert_close, dtype, groups):
    x, w, b = _case(rng, dtype, (1, 1), groups, out_channels=8, hw=(5, 9))
    y = conv2d(x, w, b, groups=groups)
    assert_close(y, reference.conv2d(x, w, b, groups=groups))
    # without bias, on a non-contiguous input
    xt = np.swapaxes(np.swapaxes(x, 2, 3).copy(), 2, 3)
    assert_close(conv2d(xt, w, groups=groups), reference.conv2d(x, w, groups=groups))


def test_depthwise_conv(rng, assert_close):
    x, w, b = _case(rng, np.float64, (3, 3), 4, channels=4, out_channels=8)
    args = dict(stride=2, pad=1, groups=4)
    assert_close(conv2d(x, w, b, **args), reference.conv2d(x, w, b, **args))


@pytest.mark.parametrize("workspace", [1, 3 * 4 * 9 * 35 * 8, 1 << 30])
@pytest.mark.parametrize("kernel", [(1, 1), (3, 3)])
def test_batch_chunking_paths_agree(rng, assert_close, monkeypatch, workspace, kernel):
    """One image per chunk; chunks of 3, 3 and 1 images; the whole batch in one chunk."""
    monkeypatch.setattr(conv_module, "WORKSPACE_BYTES", workspace)
    x, w, b = _case(rng, np.float64, kernel, 2, batch=7, channels=4, out_channels=6,
                    hw=(7, 5))
    args = dict(pad=1 if kernel == (3, 3) else 0, groups=2, act="relu")
    assert_close(conv2d(x, w, b, **args), reference.conv2d(x, w, b, **args))


ACTS = [
    "relu",
    ("leaky_relu", {"alpha": 0.2}),
    ("elu", {"alpha": 0.7}),
    "selu",
    "sigmoid",
    "tanh",
    "softplus",
    ("swish", {"beta": 1.5}),
    "silu",
]


@pytest.mark.parametrize("act", ACTS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_activation(rng, assert_close, dtype, act):
    x, w, b = _case(rng, dtype, (3, 3), 1, hw=(5, 5))
    args = dict(pad=1, act=act)
    assert_close(conv2d(x, w, b, **args), reference.conv2d(x, w, b, **args))


def test_fused_prelu_uses_output_channels(rng, assert_close):
    x, w, b = _case(rng, np.float64, (3, 3), 1, hw=(5, 5))
    slopes = rng.uniform(0, 0.5, size=w.shape[0])
    act = ("prelu", {"weight": slopes})
    assert_close(conv2d(x, w, b, act=act), reference.conv2d(x, w, b, act=act))


def test_conv2d_leaves_inputs_alone(rng):
    x, w, b = _case(rng, np.float32, (3, 3), 1)
    copies = [a.copy() for a in (x, w, b)]
    conv2d(x, w, b, pad=1, act="relu")
    for before, after in zip(copies, (x, w, b)):
        np.testing.assert_array_equal(before, after)


def test_conv2d_float64_weights_promote(rng):
    x, w, b = _case(rng, np.float32, (3, 3), 1)
    assert conv2d(x, w.astype(np.float64), b).dtype == np.float64


def test_conv2d_reports_channel_mismatch(rng):
    x, w, _ = _case(rng, np.float32, (3, 3), 1)
    with pytest.raises(ValueError, match=r"expects 2 input channels with groups=1, input has 4"):
        conv2d(x, w[:, :2])
    with pytest.raises(ValueError, match=r"must both divide by groups \(3\)"):
        conv2d(x, w, groups=3)


def test_conv2d_reports_output_below_one(rng):
    x = rng.standard_normal((1, 2, 3, 3))
    w = rng.standard_normal((2, 2, 5, 5))
    with pytest.raises(ValueError, match=r"conv2d height: output size must be at least 1"):
        conv2d(x, w)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", [None, "relu", ("leaky_relu", {"alpha": 0.1})], ids=str)
def test_dense_matches_reference(rng, assert_close, dtype, act):
    x = rng.standard_normal((3, 17)).astype(dtype)
    w = rng.standard_normal((5, 17)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    y = dense(x, w, b, act=act)
    assert y.dtype == dtype
    assert_close(y, reference.dense(x, w, b, act=act))
    assert_close(dense(x, w), reference.dense(x, w))


def test_dense_reports_feature_mismatch(rng):
    with pytest.raises(ValueError, match=r"input \(3, 4\), weight \(5, 6\)"):
        dense(rng.standard_normal((3, 4)), rng.standard_normal((5, 6)))
