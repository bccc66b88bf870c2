"""The training kernels against PyTorch autograd, forward and backward, float32 and float64.

PyTorch is an independent oracle for the conventions the kernels encode: asymmetric
padding (as ``F.pad`` before the op), ceil-mode windows, ``count_include_pad`` divisors,
LRN's window, batch statistics and running-statistic updates, which maximum a tie picks.
"""

import itertools

import numpy as np
import pytest

from cnnc.runtime.grads import GRADS
from cnnc.runtime.ops import Op

torch = pytest.importorskip("torch")
F = torch.nn.functional

pytestmark = pytest.mark.torch

# as tests/runtime/conftest.py: float32 kernels sum up to a few hundred products
TOLERANCES = {
    np.dtype(np.float32): dict(rtol=2e-4, atol=2e-5),
    np.dtype(np.float64): dict(rtol=1e-10, atol=1e-12),
}
DTYPES = [np.float32, np.float64]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """These tensors are tiny: more threads only wait on each other (4x slower on a busy
    two-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _close(actual, expected, dtype, tol=None):
    actual = np.asarray(actual)
    assert actual.dtype == dtype
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else expected
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, **(tol or TOLERANCES[np.dtype(dtype)]))


def compare(op, torch_fn, inputs, params=(), dtype=np.float64, seed=0, tol=None, **attrs):
    """Run ``op`` forward and backward (``dy`` random) and ``torch_fn`` on leaf tensors of
    the same arrays; compare the outputs and every gradient that is not None."""
    inputs = [np.asarray(a, dtype=dtype) for a in inputs]
    params = [np.asarray(p, dtype=dtype) for p in params]
    leaves = [torch.tensor(a, requires_grad=True) for a in inputs + params]
    forward, backward = GRADS[op]
    y, saved = forward(*inputs, *params, rng=np.random.default_rng(seed), **attrs)
    dy = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(dtype)
    gxs, gps = backward(saved, dy)
    expected = torch_fn(*leaves)
    _close(y, expected, dtype, tol)
    expected.backward(torch.from_numpy(dy))
    for ours, leaf in zip(list(gxs) + list(gps), leaves):
        if ours is not None:
            _close(ours, leaf.grad, dtype, tol)


def _pad_fits(kernel, pad, dilation=(1, 1)):
    """PyTorch's pooling rule: pad at most half the (dilated) window."""
    return all(p <= (d * (k - 1) + 1) // 2 for k, p, d in zip(kernel, pad, dilation))


# ---------------------------------------------------------------- conv and dense

CONV_GRID = list(itertools.product(
    [(1, 1), (3, 3), (2, 3)],  # kernel
    [(1, 1), (2, 1)],  # stride
    [(0, 0, 0, 0), (1, 1, 1, 1), (0, 2, 1, 0)],  # pad: top, bottom, left, right
    [(1, 1), (1, 2)],  # dilation
    [1, 2],  # groups
))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride, pad, dilation, groups", CONV_GRID)
def test_conv2d(dtype, kernel, stride, pad, dilation, groups):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 7, 6))
    w = rng.standard_normal((6, 4 // groups) + kernel) * 0.5
    b = rng.standard_normal(6)
    top, bottom, left, right = pad

    def reference(x, w, b):
        padded = F.pad(x, (left, right, top, bottom))  # torch orders W's pads first
        return F.conv2d(padded, w, b, stride=stride, dilation=dilation, groups=groups)

    compare(Op.CONV2D, reference, [x], [w, b], dtype, stride=stride, pad=pad,
            dilation=dilation, groups=groups, act=None)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_big_batch_runs_in_chunks(dtype):
    """Enough images that the backward pass walks the batch in several chunks."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 8, 16, 16))
    w = rng.standard_normal((8, 8, 3, 3)) * 0.2
    # gW sums 10,240 products per element, to values up to 1e4: float32 rounding of such
    # sums reaches 1e-4 in absolute terms (both here and in torch)
    tol = dict(rtol=2e-4, atol=2e-3) if dtype == np.float32 else None
    compare(Op.CONV2D, lambda x, w: F.conv2d(x, w, padding=1), [x], [w], dtype, tol=tol,
            stride=1, pad=1, dilation=1, groups=1, act=None)
    compare(Op.CONV2D, F.conv2d, [x], [w[:, :, :1, :1]], dtype, tol=tol, stride=1, pad=0,
            dilation=1, groups=1, act=None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_dense(dtype, bias):
    rng = np.random.default_rng(2)
    params = [rng.standard_normal((4, 6))] + ([rng.standard_normal(4)] if bias else [])
    compare(Op.DENSE, F.linear, [rng.standard_normal((5, 6))], params, dtype, act=None)


# ---------------------------------------------------------------- pooling

MAX_GRID = [
    case
    for case in itertools.product(
        [(2, 2), (3, 3), (3, 2)],  # kernel
        [(1, 1), (2, 2), (2, 1)],  # stride
        [(0, 0), (1, 1), (1, 0)],  # pad
        [(1, 1), (2, 2)],  # dilation
        [False, True],  # ceil
    )
    if _pad_fits(case[0], case[2], case[3])
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride, pad, dilation, ceil", MAX_GRID)
def test_maxpool2d(dtype, kernel, stride, pad, dilation, ceil):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 9, 8))
    ties = rng.integers(0, 3, (2, 3, 9, 8))  # three values: most windows tie

    def reference(x):
        return F.max_pool2d(x, kernel, stride, pad, dilation, ceil_mode=ceil)

    for data in (x, ties):
        compare(Op.MAXPOOL2D, reference, [data], (), dtype, kernel=kernel, stride=stride,
                pad=pad, dilation=dilation, ceil=ceil)


AVG_GRID = [
    case
    for case in itertools.product(
        [(2, 2), (3, 3), (3, 2)],  # kernel
        [(1, 1), (2, 2), (2, 1)],  # stride
        [(0, 0), (1, 1), (1, 0)],  # pad
        [False, True],  # ceil
        [True, False],  # count_pad
    )
    if _pad_fits(case[0], case[2])
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride, pad, ceil, count_pad", AVG_GRID)
def test_avgpool2d(dtype, kernel, stride, pad, ceil, count_pad):
    x = np.random.default_rng(4).standard_normal((2, 3, 9, 8))

    def reference(x):
        return F.avg_pool2d(x, kernel, stride, pad, ceil_mode=ceil,
                            count_include_pad=count_pad)

    compare(Op.AVGPOOL2D, reference, [x], (), dtype, kernel=kernel, stride=stride, pad=pad,
            ceil=ceil, count_pad=count_pad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_pools(dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 5, 4))
    compare(Op.GLOBAL_AVGPOOL, lambda x: x.mean(dim=(2, 3), keepdim=True), [x], (), dtype)
    compare(Op.GLOBAL_MAXPOOL, lambda x: F.adaptive_max_pool2d(x, 1), [x], (), dtype)
    ties = rng.integers(0, 2, (2, 3, 5, 4))  # adaptive max pooling also keeps the first
    compare(Op.GLOBAL_MAXPOOL, lambda x: F.adaptive_max_pool2d(x, 1), [ties], (), dtype)


# ---------------------------------------------------------------- normalisation


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size, alpha, beta, k", [
    (5, 1e-4, 0.75, 1.0),  # AlexNet's
    (2, 0.5, 0.75, 2.0),
    (3, 1.0, 0.5, 1.0),
    (4, 0.3, 1.5, 0.5),
])
def test_lrn(dtype, size, alpha, beta, k):
    x = np.random.default_rng(6).standard_normal((2, 7, 4, 3))

    def reference(x):
        return F.local_response_norm(x, size, alpha, beta, k)

    compare(Op.LRN, reference, [x], (), dtype, size=size, alpha=alpha, beta=beta, k=k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5, 4)])
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm(dtype, shape, train):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape) * 2 + 1
    weight, bias = rng.standard_normal(3), rng.standard_normal(3)
    mean0 = rng.standard_normal(3).astype(dtype)
    var0 = rng.uniform(0.5, 2.0, 3).astype(dtype)
    ours_mean, ours_var = mean0.copy(), var0.copy()
    torch_mean, torch_var = torch.tensor(mean0), torch.tensor(var0)

    def reference(x, weight, bias):
        return F.batch_norm(x, torch_mean, torch_var, weight, bias, training=train,
                            momentum=0.3, eps=1e-3)

    # the forward is handed our running statistics; torch updates its own copies
    compare(Op.BATCHNORM, lambda x, w, b, rm, rv: reference(x, w, b), [x],
            [weight, bias, ours_mean, ours_var], dtype, train=train, eps=1e-3, momentum=0.3)
    _close(ours_mean, torch_mean, dtype)
    _close(ours_var, torch_var, dtype)


# ---------------------------------------------------------------- activations

ACTIVATIONS = {
    "relu": (None, None, F.relu),
    "leaky_relu": (None, None, F.leaky_relu),
    "leaky_relu_0.2": (0.2, None, lambda x: F.leaky_relu(x, 0.2)),
    "leaky_relu_1.5": (1.5, None, lambda x: F.leaky_relu(x, 1.5)),
    "elu": (None, None, F.elu),
    "elu_0.5": (0.5, None, lambda x: F.elu(x, 0.5)),
    "selu": (None, None, F.selu),
    "sigmoid": (None, None, torch.sigmoid),
    "tanh": (None, None, torch.tanh),
    "softplus": (None, None, F.softplus),
    "silu": (None, None, F.silu),
    "swish": (None, 1.0, F.silu),
    "swish_0.5": (None, 0.5, lambda x: x * torch.sigmoid(0.5 * x)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("key", sorted(ACTIVATIONS))
def test_activation(dtype, key):
    alpha, beta, reference = ACTIVATIONS[key]
    name = key.split("_0")[0].split("_1")[0]
    x = np.random.default_rng(8).standard_normal((3, 4, 2, 3)) * 3
    compare(Op.ACTIVATION, reference, [x], (), dtype, name=name, alpha=alpha, beta=beta)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, slopes", [
    ((3, 4, 2, 3), 4), ((3, 4, 2, 3), 1), ((5, 4), 4), ((5, 4), 1),
])
def test_prelu(dtype, shape, slopes):
    rng = np.random.default_rng(9)
    compare(Op.ACTIVATION, F.prelu, [rng.standard_normal(shape)],
            [rng.uniform(-0.5, 0.5, slopes)], dtype, name="prelu", alpha=None, beta=None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 10), (2, 5, 3, 3)])
def test_softmax(dtype, shape):
    x = np.random.default_rng(10).standard_normal(shape) * 3
    compare(Op.SOFTMAX, lambda x: F.softmax(x, dim=1), [x], (), dtype, axis=1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 12), (2, 12, 3, 3)])
@pytest.mark.parametrize("k", [2, 3, 4])
def test_maxout(dtype, shape, k):
    x = np.random.default_rng(11).standard_normal(shape)  # no ties: torch's max(dim) may
    # pick any of several tied indices

    def reference(x):
        grouped = x.reshape((x.shape[0], x.shape[1] // k, k) + tuple(x.shape[2:]))
        return grouped.max(dim=2).values

    compare(Op.MAXOUT, reference, [x], (), dtype, k=k)


# ---------------------------------------------------------------- structure


@pytest.mark.parametrize("dtype", DTYPES)
def test_structure(dtype):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 3, 4, 5))
    compare(Op.FLATTEN, lambda x: torch.flatten(x, 1), [x], (), dtype)
    xs = [rng.standard_normal((2, c, 3, 3)) for c in (2, 1, 3)]
    compare(Op.CONCAT, lambda *ts: torch.cat(ts, dim=1), xs, (), dtype, axis=1)
    xs = [rng.standard_normal((2, 3, 3)) for _ in range(3)]
    compare(Op.ADD, lambda a, b, c: a + b + c, xs, (), dtype)
