"""Every training kernel's backward pass against central finite differences, in float64.

The scalar checked is ``sum(y * r)`` for a fixed random ``r``, so the analytic gradients
are ``backward(saved, r)``. Inputs of ops with kinks (relu, max) keep away from them: values
at least 0.05 from zero, maxima at least 0.01 apart, far more than the step 1e-5.
"""

import itertools

import numpy as np
import pytest

from cnnc.runtime.grads import GRADS
from cnnc.runtime.ops import Op

STEP = 1e-5
TOL = dict(rtol=1e-6, atol=1e-7)


def _away_from_zero(a):
    return np.where(a < 0, a - 0.05, a + 0.05)


def _distinct(rng, shape):
    """Values 0.01 apart in random order: no two elements tie within the step."""
    size = int(np.prod(shape))
    return (rng.permutation(size) - size / 2).reshape(shape) * 0.01


def _numeric(f, a):
    """Central differences of the scalar ``f()`` with respect to every element of ``a``."""
    g = np.empty_like(a)
    for index in np.ndindex(*a.shape):
        keep = a[index]
        a[index] = keep + STEP
        up = f()
        a[index] = keep - STEP
        down = f()
        a[index] = keep
        g[index] = (up - down) / (2 * STEP)
    return g


def check(op, inputs, params=(), seed=0, buffers=(), **attrs):
    """Compare ``backward`` with finite differences for every input and every parameter
    whose gradient is not None. ``buffers`` are indices of params copied afresh per call
    (batchnorm's running statistics, which the forward updates in place)."""
    forward, backward = GRADS[op]
    inputs = [np.array(a, dtype=np.float64) for a in inputs]
    params = [None if p is None else np.array(p, dtype=np.float64) for p in params]

    def run():
        ps = [p.copy() if i in buffers else p for i, p in enumerate(params)]
        return forward(*inputs, *ps, rng=np.random.default_rng(seed), **attrs)

    y, saved = run()
    r = np.random.default_rng(seed + 1).standard_normal(y.shape)
    gxs, gps = backward(saved, r)
    assert len(gxs) == len(inputs)
    assert len(gps) == len(params)

    def f():
        return float(np.sum(run()[0] * r))

    for a, g in zip(inputs, gxs):
        assert g.dtype == np.float64 and g.shape == a.shape
        np.testing.assert_allclose(g, _numeric(f, a), **TOL)
    for p, g in zip(params, gps):
        if g is None:
            continue
        assert g.dtype == np.float64 and g.shape == p.shape
        np.testing.assert_allclose(g, _numeric(f, p), **TOL)


# ---------------------------------------------------------------- conv and dense

CONV_GRID = list(itertools.product(
    [(1, 1), (3, 3), (2, 3)],  # kernel
    [1, (2, 1)],  # stride
    [0, (0, 2, 1, 0)],  # pad: none, asymmetric (top, bottom, left, right)
    [1, (2, 1)],  # dilation
    [1, 2],  # groups
))


@pytest.mark.parametrize("kernel, stride, pad, dilation, groups", CONV_GRID)
def test_conv2d(kernel, stride, pad, dilation, groups):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 6, 5))
    w = rng.standard_normal((4, 4 // groups) + kernel)
    bias = [rng.standard_normal(4)] if kernel != (2, 3) else []  # with and without a bias
    check(Op.CONV2D, [x], [w] + bias, stride=stride, pad=pad, dilation=dilation,
          groups=groups, act=None)


def test_conv2d_same_style_padding_and_big_stride():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 2, 7, 7))
    w = rng.standard_normal((3, 2, 3, 3))
    check(Op.CONV2D, [x], [w], stride=3, pad=(1, 1), dilation=1, groups=1, act=None)
    check(Op.CONV2D, [x], [w], stride=1, pad=(2, 0, 0, 2), dilation=2, groups=1, act=None)


@pytest.mark.parametrize("bias", [True, False])
def test_dense(bias):
    rng = np.random.default_rng(3)
    params = [rng.standard_normal((3, 5))] + ([rng.standard_normal(3)] if bias else [])
    check(Op.DENSE, [rng.standard_normal((4, 5))], params, act=None)


# ---------------------------------------------------------------- pooling


def _pad_fits(kernel, pad, dilation=1):
    """No window all padding (PyTorch's rule: pad at most half the dilated window)."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    top, bottom, left, right = (pad,) * 4 if isinstance(pad, int) else (
        (pad[0], pad[0], pad[1], pad[1]) if len(pad) == 2 else pad)
    return (max(top, bottom) <= (dilation * (kh - 1) + 1) // 2
            and max(left, right) <= (dilation * (kw - 1) + 1) // 2)


MAX_GRID = [
    case
    for case in itertools.product(
        [2, 3, (3, 2)],  # kernel
        [None, 1, (2, 1)],  # stride
        [0, 1, (1, 0, 0, 1)],  # pad
        [1, 2],  # dilation
        [False, True],  # ceil
    )
    if _pad_fits(case[0], case[2], case[3])
]


@pytest.mark.parametrize("kernel, stride, pad, dilation, ceil", MAX_GRID)
def test_maxpool2d(kernel, stride, pad, dilation, ceil):
    x = _distinct(np.random.default_rng(4), (1, 2, 7, 6))
    check(Op.MAXPOOL2D, [x], kernel=kernel, stride=stride, pad=pad, dilation=dilation,
          ceil=ceil)


AVG_GRID = [
    case
    for case in itertools.product(
        [2, 3, (3, 2)],  # kernel
        [None, 1, (2, 1)],  # stride
        [0, 1, (1, 0, 0, 1)],  # pad
        [False, True],  # ceil
        [True, False],  # count_pad
    )
    if _pad_fits(case[0], case[2])
]


@pytest.mark.parametrize("kernel, stride, pad, ceil, count_pad", AVG_GRID)
def test_avgpool2d(kernel, stride, pad, ceil, count_pad):
    x = np.random.default_rng(5).standard_normal((1, 2, 7, 6))
    check(Op.AVGPOOL2D, [x], kernel=kernel, stride=stride, pad=pad, ceil=ceil,
          count_pad=count_pad)


def test_global_pools():
    rng = np.random.default_rng(6)
    check(Op.GLOBAL_AVGPOOL, [rng.standard_normal((2, 3, 4, 5))])
    check(Op.GLOBAL_MAXPOOL, [_distinct(rng, (2, 3, 4, 5))])


# ---------------------------------------------------------------- normalisation


@pytest.mark.parametrize("size, alpha, beta, k", [
    (1, 1e-2, 0.75, 1.0),
    (2, 0.5, 0.75, 2.0),  # even window: one more channel before than after
    (3, 1.0, 0.5, 1.0),
    (5, 0.3, 1.5, 0.5),
    (9, 0.2, 0.75, 1.0),  # wider than the channels
])
def test_lrn(size, alpha, beta, k):
    x = np.random.default_rng(7).standard_normal((2, 6, 3, 2))
    check(Op.LRN, [x], size=size, alpha=alpha, beta=beta, k=k)


@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 3, 2)])
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm(shape, train):
    rng = np.random.default_rng(8)
    c = shape[1]
    params = [rng.standard_normal(c), rng.standard_normal(c), rng.standard_normal(c),
              rng.uniform(0.5, 2.0, c)]
    check(Op.BATCHNORM, [rng.standard_normal(shape) * 2 + 1], params, buffers=(2, 3),
          train=train, eps=1e-3, momentum=0.1)


# ---------------------------------------------------------------- activations

ACTIVATIONS = [
    ("identity", None, None),
    ("relu", None, None),
    ("leaky_relu", None, None),
    ("leaky_relu", 0.2, None),
    ("leaky_relu", 1.5, None),  # a slope above 1 takes the two-slope branch
    ("elu", None, None),
    ("elu", 0.5, None),
    ("selu", None, None),
    ("sigmoid", None, None),
    ("tanh", None, None),
    ("softplus", None, None),
    ("swish", None, 1.0),
    ("swish", None, 0.5),
    ("silu", None, None),
]


@pytest.mark.parametrize("name, alpha, beta", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 2, 2)])
def test_activation(name, alpha, beta, shape):
    x = _away_from_zero(np.random.default_rng(9).standard_normal(shape) * 2)
    check(Op.ACTIVATION, [x], name=name, alpha=alpha, beta=beta)


@pytest.mark.parametrize("slopes", [1, 3])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 2)])
def test_prelu(slopes, shape):
    rng = np.random.default_rng(10)
    x = _away_from_zero(rng.standard_normal(shape))
    check(Op.ACTIVATION, [x], [rng.uniform(-0.5, 0.5, slopes)], name="prelu", alpha=None,
          beta=None)


@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 2, 3)])
def test_softmax(shape):
    x = np.random.default_rng(11).standard_normal(shape) * 2
    check(Op.SOFTMAX, [x], axis=1)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("shape", [(3, 6), (2, 6, 2, 3)])
def test_maxout(k, shape):
    check(Op.MAXOUT, [_distinct(np.random.default_rng(12), shape)], k=k)


# ---------------------------------------------------------------- structure


def test_flatten():
    check(Op.FLATTEN, [np.random.default_rng(13).standard_normal((2, 3, 2, 2))])


@pytest.mark.parametrize("count", [1, 2, 3])
def test_concat(count):
    rng = np.random.default_rng(14)
    xs = [rng.standard_normal((2, c, 2, 3)) for c in (1, 3, 2)[:count]]
    check(Op.CONCAT, xs, axis=1)


@pytest.mark.parametrize("count", [1, 2, 3])
def test_add(count):
    rng = np.random.default_rng(15)
    check(Op.ADD, [rng.standard_normal((2, 3, 2, 2)) for _ in range(count)])


@pytest.mark.parametrize("p, train", [(0.0, True), (0.3, True), (0.6, True), (0.3, False)])
def test_dropout(p, train):
    x = np.random.default_rng(16).standard_normal((3, 4, 2, 2))
    check(Op.DROPOUT, [x], train=train, p=p)
