"""The NumPy kernels against torch.nn.functional, where PyTorch is installed.

PyTorch is an independent oracle for the conventions the reference encodes by hand:
ceil-mode window counts, count_include_pad divisors, LRN's window, SELU's constants.
"""

import itertools

import numpy as np
import pytest

from cnnc.runtime.numpy_backend import KERNELS
from cnnc.runtime.ops import Op

torch = pytest.importorskip("torch")
F = torch.nn.functional

pytestmark = pytest.mark.torch


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def _pad_fits(kernel, pad, dilation=(1, 1)):
    return all(p <= (d * (k - 1) + 1) // 2 for k, p, d in zip(kernel, pad, dilation))


CONV_GRID = list(
    itertools.product(
        [(1, 1), (3, 3), (2, 3)],  # kernel
        [(1, 1), (2, 2), (1, 3)],  # stride
        [(0, 0), (1, 1), (2, 1)],  # pad
        [(1, 1), (2, 1)],  # dilation
        [1, 2],  # groups
    )
)


@pytest.mark.parametrize("kernel, stride, pad, dilation, groups", CONV_GRID)
def test_conv2d(rng, assert_close, kernel, stride, pad, dilation, groups):
    x = rng.standard_normal((2, 4, 9, 8))
    w = rng.standard_normal((6, 4 // groups) + kernel)
    b = rng.standard_normal(6)
    y = KERNELS[Op.CONV2D](x, w, b, stride=stride, pad=pad, dilation=dilation, groups=groups)
    expected = F.conv2d(_t(x), _t(w), _t(b), stride=stride, padding=pad, dilation=dilation,
                        groups=groups)
    assert_close(y, expected.numpy())


def test_conv2d_asymmetric_pad_float32(rng, assert_close):
    x = rng.standard_normal((2, 3, 8, 7)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    pad = (0, 2, 1, 0)  # top, bottom, left, right
    y = KERNELS[Op.CONV2D](x, w, None, pad=pad, stride=2)
    padded = F.pad(_t(x), (pad[2], pad[3], pad[0], pad[1]))  # torch: left, right, top, bottom
    assert_close(y, F.conv2d(padded, _t(w), stride=2).numpy())


def _pool_grid(with_dilation):
    kernels = [(2, 2), (3, 3), (3, 2)]
    strides = [(1, 1), (2, 2), (3, 2)]
    pads = [(0, 0), (1, 1), (1, 0)]
    thirds = [(1, 1), (2, 2)] if with_dilation else [True, False]  # dilation or count_pad
    return [
        (k, s, p, t, ceil)
        for k, s, p, t, ceil in itertools.product(kernels, strides, pads, thirds, [False, True])
        if _pad_fits(k, p, t if with_dilation else (1, 1))
    ]


POOL_SIZES = [(7, 8), (10, 9)]  # each case runs on both


@pytest.mark.parametrize("kernel, stride, pad, dilation, ceil", _pool_grid(True))
def test_maxpool2d(rng, kernel, stride, pad, dilation, ceil):
    for hw in POOL_SIZES:
        x = rng.standard_normal((2, 3) + hw)
        y = KERNELS[Op.MAXPOOL2D](x, kernel=kernel, stride=stride, pad=pad, dilation=dilation,
                                  ceil=ceil)
        expected = F.max_pool2d(_t(x), kernel, stride, pad, dilation, ceil_mode=ceil)
        np.testing.assert_array_equal(y, expected.numpy())


@pytest.mark.parametrize("kernel, stride, pad, count_pad, ceil", _pool_grid(False))
def test_avgpool2d(rng, assert_close, kernel, stride, pad, count_pad, ceil):
    for hw in POOL_SIZES:
        x = rng.standard_normal((2, 3) + hw)
        y = KERNELS[Op.AVGPOOL2D](x, kernel=kernel, stride=stride, pad=pad, ceil=ceil,
                                  count_pad=count_pad)
        expected = F.avg_pool2d(_t(x), kernel, stride, pad, ceil_mode=ceil,
                                count_include_pad=count_pad)
        assert_close(y, expected.numpy())


@pytest.mark.parametrize("size", [56, 112, 28, 14])
def test_googlenet_ceil_pools(rng, size):
    x = rng.standard_normal((1, 2, size, size)).astype(np.float32)
    y = KERNELS[Op.MAXPOOL2D](x, kernel=3, stride=2, ceil=True)
    expected = F.max_pool2d(_t(x), 3, 2, ceil_mode=True)
    np.testing.assert_array_equal(y, expected.numpy())


def test_global_pools(rng, assert_close):
    x = rng.standard_normal((2, 5, 7, 6))
    assert_close(KERNELS[Op.GLOBAL_AVGPOOL](x), F.adaptive_avg_pool2d(_t(x), 1).numpy())
    assert_close(KERNELS[Op.GLOBAL_MAXPOOL](x), F.adaptive_max_pool2d(_t(x), 1).numpy())


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 9])
@pytest.mark.parametrize("alpha, beta, k", [(1e-4, 0.75, 1.0), (0.5, 0.6, 2.0)])
def test_lrn(rng, assert_close, size, alpha, beta, k):
    x = 3 * rng.standard_normal((2, 7, 4, 5))
    y = KERNELS[Op.LRN](x, size=size, alpha=alpha, beta=beta, k=k)
    expected = F.local_response_norm(_t(x), size, alpha=alpha, beta=beta, k=k)
    assert_close(y, expected.numpy())


@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (3, 4)])
def test_batchnorm(rng, assert_close, shape):
    x = rng.standard_normal(shape)
    weight, bias, mean = (rng.standard_normal(4) for _ in range(3))
    var = rng.uniform(0.2, 2.0, 4)
    y = KERNELS[Op.BATCHNORM](x, weight, bias, mean, var, eps=1e-5)
    expected = F.batch_norm(_t(x), _t(mean), _t(var), _t(weight), _t(bias), training=False,
                            eps=1e-5)
    assert_close(y, expected.numpy())


ACTIVATIONS = [
    ("relu", {}, F.relu),
    ("leaky_relu", {}, F.leaky_relu),
    ("leaky_relu", {"alpha": 0.2}, lambda t: F.leaky_relu(t, 0.2)),
    ("elu", {}, F.elu),
    ("elu", {"alpha": 0.4}, lambda t: F.elu(t, 0.4)),
    ("selu", {}, F.selu),
    ("sigmoid", {}, torch.sigmoid),
    ("tanh", {}, torch.tanh),
    ("softplus", {}, F.softplus),
    ("silu", {}, F.silu),
    ("swish", {"beta": 1.7}, lambda t: t * torch.sigmoid(1.7 * t)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "name, params, torch_fn",
    [pytest.param(*case, id=f"{case[0]}{case[1] or ''}") for case in ACTIVATIONS],
)
def test_activation(rng, assert_close, dtype, name, params, torch_fn):
    x = (4 * rng.standard_normal((2, 3, 4, 5))).astype(dtype)
    y = KERNELS[Op.ACTIVATION](x, name=name, **params)
    assert_close(y, torch_fn(_t(x)).numpy())


def test_prelu(rng, assert_close):
    x = rng.standard_normal((2, 3, 4, 5))
    slopes = rng.uniform(0, 0.5, 3)
    y = KERNELS[Op.ACTIVATION](x, slopes, name="prelu")
    assert_close(y, F.prelu(_t(x), _t(slopes)).numpy())


@pytest.mark.parametrize("shape", [(3, 10), (2, 5, 3, 3)])
def test_softmax(rng, assert_close, shape):
    x = 5 * rng.standard_normal(shape)
    assert_close(KERNELS[Op.SOFTMAX](x), F.softmax(_t(x), dim=1).numpy())


def test_dense(rng, assert_close):
    x = rng.standard_normal((4, 12)).astype(np.float32)
    w = rng.standard_normal((7, 12)).astype(np.float32)
    b = rng.standard_normal(7).astype(np.float32)
    assert_close(KERNELS[Op.DENSE](x, w, b), F.linear(_t(x), _t(w), _t(b)).numpy())
