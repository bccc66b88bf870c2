"""The CuPy backend against the NumPy backend and against oracles, over parameter grids.

Every device test takes the ``device`` fixture (``conftest.py``): ``cupy`` runs on a CUDA
device (marked ``gpu``; skipped without CuPy and a device), ``emulated`` runs the same
CUDA text compiled for the CPU on NumPy arrays. Inference kernels are compared with
``numpy_backend.KERNELS``; training pairs with oracles written here (finite differences of
elementwise functions, the adjoint of a linear map built from one-hot inputs, loops over
windows) and with the generic ``runtime.grads`` on NumPy.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cnnc.runtime import cupy_backend
from cnnc.runtime.kernels.activation import DEFAULTS
from cnnc.runtime.numpy_backend import KERNELS as NUMPY
from cnnc.runtime.ops import Op

DTYPES = [np.float32, np.float64]
TOLERANCES = {
    np.dtype(np.float32): dict(rtol=1e-4, atol=1e-4),
    np.dtype(np.float64): dict(rtol=1e-9, atol=1e-10),
}
# float64 against an oracle that takes finite differences (step 1e-6): rounding in the
# difference quotient is about 1e-16 / 1e-6 of the values
FD_FLOAT64 = dict(rtol=1e-6, atol=1e-7)


def close(device, actual, expected, dtype=None, fd=False):
    """``actual`` (on the device) equals ``expected`` within the tolerance of ``dtype``
    (the expected dtype when not given), scaled to the size of the values. ``fd``: the
    expected values come from finite differences."""
    actual = device.get(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape
    dtype = np.dtype(dtype or expected.dtype)
    assert actual.dtype == dtype
    tol = TOLERANCES[dtype]
    if fd and dtype == np.float64:
        tol = FD_FLOAT64
    scale = max(1.0, float(np.nanmax(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale)


def run(device, op, *arrays, **attrs):
    """``cupy_backend.KERNELS[op]`` on device copies of ``arrays`` (None stays None)."""
    args = [None if a is None else device.put(a) for a in arrays]
    return cupy_backend.KERNELS[op](*args, **attrs)


def same_error(device, op, arrays, attrs):
    """Both backends refuse the arguments with the same message."""
    with pytest.raises(ValueError) as numpy_error:
        NUMPY[op](*arrays, **attrs)
    with pytest.raises(ValueError) as device_error:
        run(device, op, *arrays, **attrs)
    assert str(device_error.value) == str(numpy_error.value)


def distinct(rng, shape, dtype=np.float64):
    """Values 0.01 apart in random order: no ties, nothing near a kink."""
    n = int(np.prod(shape))
    return ((rng.permutation(n) - n / 2 + 0.5) * 0.01).reshape(shape).astype(dtype)


def test_tables_cover_every_op():
    assert set(cupy_backend.KERNELS) == set(Op)
    assert set(cupy_backend.GRADS) == set(Op)
    for op in Op:
        assert callable(cupy_backend.KERNELS[op])
        forward, backward = cupy_backend.GRADS[op]
        assert callable(forward) and callable(backward)


# ---------------------------------------------------------------- convolution

CONV_KERNELS = [(1, 1), (3, 3), (2, 3)]
CONV_STRIDES = [1, 2, (3, 1)]
CONV_PADS = [0, 1, (1, 2, 0, 1)]
CONV_DILATIONS = [1, (2, 1)]


def _conv_case(rng, dtype, kernel, groups, batch=2, channels=4, out_channels=6, hw=(7, 6)):
    x = rng.standard_normal((batch, channels) + hw).astype(dtype)
    w = rng.standard_normal((out_channels, channels // groups) + tuple(kernel)).astype(dtype)
    b = rng.standard_normal(out_channels).astype(dtype)
    return x, w, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("kernel", CONV_KERNELS)
def test_conv2d_matches_numpy(device, rng, dtype, kernel, groups):
    x, w, b = _conv_case(rng, dtype, kernel, groups)
    for stride, pad, dilation in itertools.product(CONV_STRIDES, CONV_PADS, CONV_DILATIONS):
        attrs = dict(stride=stride, pad=pad, dilation=dilation, groups=groups, act=None)
        close(device, run(device, Op.CONV2D, x, w, b, **attrs), NUMPY[Op.CONV2D](x, w, b, **attrs))
        close(device, run(device, Op.CONV2D, x, w, **attrs), NUMPY[Op.CONV2D](x, w, **attrs))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_conv2d_matches_numpy(device, rng, dtype, multiplier):
    x, w, b = _conv_case(rng, dtype, (3, 3), 4, channels=4, out_channels=4 * multiplier)
    for stride, pad, dilation in itertools.product(CONV_STRIDES, CONV_PADS, CONV_DILATIONS):
        attrs = dict(stride=stride, pad=pad, dilation=dilation, groups=4)
        close(device, run(device, Op.CONV2D, x, w, b, **attrs), NUMPY[Op.CONV2D](x, w, b, **attrs))
        close(device, run(device, Op.CONV2D, x, w, **attrs), NUMPY[Op.CONV2D](x, w, **attrs))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_pointwise_conv2d_matches_numpy(device, rng, dtype, groups):
    x, w, b = _conv_case(rng, dtype, (1, 1), groups, batch=3, out_channels=8, hw=(5, 9))
    close(device, run(device, Op.CONV2D, x, w, b, groups=groups),
          NUMPY[Op.CONV2D](x, w, b, groups=groups))
    # a non-contiguous input
    xt = np.swapaxes(np.swapaxes(x, 2, 3).copy(), 2, 3)
    close(device, run(device, Op.CONV2D, xt, w, groups=groups),
          NUMPY[Op.CONV2D](x, w, groups=groups))


def _acts(channels, rng):
    """Every activation the epilogues know, with and without its arguments."""
    slopes = rng.uniform(-0.5, 0.5, channels)
    return [
        None, "identity", "relu", "leaky_relu", ("leaky_relu", {"alpha": 0.2}),
        ("leaky_relu", {"alpha": 1.5}), "elu", ("elu", {"alpha": 0.5}), "selu", "sigmoid",
        "tanh", "softplus", "swish", ("swish", {"beta": 1.7}), "silu",
        ("silu", {"beta": 0.5}), ("prelu", {"weight": slopes}),
        ("prelu", {"weight": slopes[:1]}),
    ]


def _on_device(device, act):
    """``act`` with prelu's slopes moved to the device."""
    if isinstance(act, tuple) and "weight" in act[1]:
        return act[0], dict(act[1], weight=device.put(act[1]["weight"]))
    return act


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_fused_activations_match_numpy(device, rng, dtype):
    for kernel, groups in [((3, 3), 1), ((1, 1), 2), ((3, 3), 4)]:  # im2col, 1x1, depthwise
        x, w, b = _conv_case(rng, dtype, kernel, groups, out_channels=8)
        for act in _acts(8, rng):
            attrs = dict(stride=1, pad=1 if kernel == (3, 3) else 0, groups=groups)
            expected = NUMPY[Op.CONV2D](x, w, b, act=act, **attrs)
            actual = run(device, Op.CONV2D, x, w, b, act=_on_device(device, act), **attrs)
            close(device, actual, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("budget", [1, 3000, 1 << 30])
def test_conv2d_chunks_the_batch(device, rng, dtype, budget, monkeypatch):
    """One sample per chunk, a few per chunk with a short last one, the batch at once."""
    monkeypatch.setattr(cupy_backend, "WORKSPACE_BYTES", budget)
    x, w, b = _conv_case(rng, dtype, (3, 3), 2, batch=5, hw=(5, 4))
    attrs = dict(stride=(1, 2), pad=(1, 0, 2, 1), dilation=(1, 2), groups=2, act="tanh")
    close(device, run(device, Op.CONV2D, x, w, b, **attrs), NUMPY[Op.CONV2D](x, w, b, **attrs))


def test_conv2d_integer_input_computes_in_float64(device, rng):
    x = rng.integers(-3, 4, (2, 2, 5, 5))
    w = rng.standard_normal((3, 2, 3, 3))
    y = run(device, Op.CONV2D, x, w, pad=1)
    close(device, y, NUMPY[Op.CONV2D](x, w, pad=1), np.float64)


def test_conv2d_errors_match_numpy(device, rng):
    x, w, b = _conv_case(rng, np.float32, (3, 3), 1)
    same_error(device, Op.CONV2D, (x, w[:, :3], b), dict(groups=1))  # channel mismatch
    same_error(device, Op.CONV2D, (x, w, b), dict(groups=3))  # groups do not divide
    same_error(device, Op.CONV2D, (x, w, b[:2]), dict())  # bias size
    same_error(device, Op.CONV2D, (x, w, b), dict(stride=0))
    same_error(device, Op.CONV2D, (x[:, :, :2], w, b), dict())  # output height below 1


# ---------------------------------------------------------------- dense


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_matches_numpy(device, rng, dtype):
    x = rng.standard_normal((3, 7)).astype(dtype)
    w = rng.standard_normal((5, 7)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    for act in _acts(5, rng):
        close(device, run(device, Op.DENSE, x, w, b, act=_on_device(device, act)),
              NUMPY[Op.DENSE](x, w, b, act=act))
    close(device, run(device, Op.DENSE, x, w), NUMPY[Op.DENSE](x, w))
    same_error(device, Op.DENSE, (x, w[:, :6]), dict())
    same_error(device, Op.DENSE, (x, w, b[:4]), dict())


# ---------------------------------------------------------------- pooling

POOL_KERNELS = [2, 3, (2, 3)]
POOL_STRIDES = [None, 1, 2]
POOL_PADS = [0, 1, (1, 0, 0, 1)]


def _pool_expectation(op, x, attrs):
    """The NumPy result, or the ValueError it raises (as a string)."""
    try:
        return NUMPY[op](x, **attrs), None
    except ValueError as err:
        return None, str(err)


def _pool_check(device, op, x, attrs, exact):
    expected, error = _pool_expectation(op, x, attrs)
    if error is not None:
        with pytest.raises(ValueError) as raised:
            run(device, op, x, **attrs)
        assert str(raised.value) == error
        return
    actual = run(device, op, x, **attrs)
    if exact:
        got = device.get(actual)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
    else:
        close(device, actual, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", POOL_KERNELS)
@pytest.mark.parametrize("ceil", [False, True])
def test_maxpool2d_matches_numpy(device, rng, dtype, kernel, ceil):
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    for stride, pad, dilation in itertools.product(POOL_STRIDES, POOL_PADS, [1, 2, (1, 2)]):
        attrs = dict(kernel=kernel, stride=stride, pad=pad, dilation=dilation, ceil=ceil)
        _pool_check(device, Op.MAXPOOL2D, x, attrs, exact=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool2d_ties_nan_and_integers(device, rng, dtype):
    attrs = dict(kernel=3, stride=2, pad=1, dilation=1, ceil=True)
    ties = rng.integers(0, 3, (2, 2, 6, 7)).astype(dtype)
    _pool_check(device, Op.MAXPOOL2D, ties, attrs, exact=True)
    with_nan = rng.standard_normal((2, 2, 6, 7)).astype(dtype)
    with_nan[0, 0, 1, 1] = np.nan
    with_nan[1, 1, 4, 5] = np.nan
    _pool_check(device, Op.MAXPOOL2D, with_nan, attrs, exact=True)
    minus_inf = np.full((1, 1, 4, 4), -np.inf, dtype=dtype)
    _pool_check(device, Op.MAXPOOL2D, minus_inf, attrs, exact=True)
    integers = rng.integers(-50, 50, (2, 2, 6, 7)).astype(np.int32)  # stays int32
    _pool_check(device, Op.MAXPOOL2D, integers, attrs, exact=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", [2, 3, (3, 2)])
@pytest.mark.parametrize("ceil", [False, True])
@pytest.mark.parametrize("count_pad", [True, False])
def test_avgpool2d_matches_numpy(device, rng, dtype, kernel, ceil, count_pad):
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    for stride, pad in itertools.product(POOL_STRIDES, [0, 1, (1, 0, 1, 1)]):
        attrs = dict(kernel=kernel, stride=stride, pad=pad, ceil=ceil, count_pad=count_pad)
        _pool_check(device, Op.AVGPOOL2D, x, attrs, exact=False)


def test_avgpool2d_integer_input_computes_in_float64(device, rng):
    x = rng.integers(-9, 9, (2, 2, 5, 5))
    attrs = dict(kernel=2, stride=2, pad=1, ceil=True, count_pad=False)
    close(device, run(device, Op.AVGPOOL2D, x, **attrs), NUMPY[Op.AVGPOOL2D](x, **attrs),
          np.float64)


# ---------------------------------------------------------------- activations


def _activation_calls(rng, channels):
    """``(name, alpha, beta, weight)`` for every activation, defaults and arguments."""
    calls = [(name, None, None, None) for name in DEFAULTS if name != "prelu"]
    calls += [("leaky_relu", 0.2, None, None), ("leaky_relu", 1.5, None, None),
              ("leaky_relu", -0.3, None, None), ("elu", 0.5, None, None),
              ("swish", None, 1.7, None), ("silu", None, 0.0, None),
              ("prelu", None, None, rng.uniform(-0.5, 0.5, channels)),
              ("prelu", None, None, np.array([0.25]))]
    return calls


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (4, 6), (7,)])
def test_activation_matches_numpy(device, rng, dtype, shape):
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    flat = x.reshape(-1)
    flat[:6] = [0.0, -0.0, 80.0, -80.0, 1000.0, -1000.0][:flat.size]  # no overflow
    channels = shape[1] if len(shape) > 1 else 1
    for name, alpha, beta, weight in _activation_calls(rng, channels):
        attrs = dict(name=name, alpha=alpha, beta=beta)
        expected = NUMPY[Op.ACTIVATION](x, weight, **attrs)
        actual = run(device, Op.ACTIVATION, x, weight, **attrs)
        close(device, actual, expected)
        assert np.isfinite(device.get(actual)).all(), name


def test_activation_leaves_its_input_and_handles_integers(device, rng):
    x = device.put(rng.standard_normal((2, 3)))
    before = device.get(x).copy()
    cupy_backend.KERNELS[Op.ACTIVATION](x, name="relu")
    np.testing.assert_array_equal(device.get(x), before)
    ints = rng.integers(-5, 5, (3, 4))
    close(device, run(device, Op.ACTIVATION, ints, name="sigmoid"),
          NUMPY[Op.ACTIVATION](ints, name="sigmoid"), np.float64)


def test_activation_errors_match_numpy(device, rng):
    x = rng.standard_normal((2, 3, 4))
    same_error(device, Op.ACTIVATION, (x, np.ones(2)), dict(name="prelu"))
    same_error(device, Op.ACTIVATION, (x, None), dict(name="prelu"))
    same_error(device, Op.ACTIVATION, (x, None), dict(name="gelu"))


# ---------------------------------------------------------------- normalisation and the rest


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 6, 3, 4), (3, 5, 7)])
def test_lrn_matches_numpy(device, rng, dtype, shape):
    x = rng.standard_normal(shape).astype(dtype)
    for size, alpha, beta, k in [(1, 1e-4, 0.75, 1.0), (2, 0.1, 0.5, 2.0), (3, 1.0, 0.75, 1.0),
                                 (5, 1e-2, 0.75, 1.0), (9, 0.5, 1.0, 0.5)]:
        attrs = dict(size=size, alpha=alpha, beta=beta, k=k)
        close(device, run(device, Op.LRN, x, **attrs), NUMPY[Op.LRN](x, **attrs))
    same_error(device, Op.LRN, (x,), dict(size=0))
    same_error(device, Op.LRN, (x[0, 0],), dict(size=3))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 4, 3, 5), (5, 4)])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_matches_numpy(device, rng, dtype, shape, affine):
    x = rng.standard_normal(shape).astype(dtype)
    weight = rng.uniform(0.5, 2, 4).astype(dtype) if affine else None
    bias = rng.standard_normal(4).astype(dtype) if affine else None
    mean = rng.standard_normal(4).astype(dtype)
    var = rng.uniform(0.1, 3, 4).astype(dtype)
    attrs = dict(eps=1e-3, momentum=0.1)
    close(device, run(device, Op.BATCHNORM, x, weight, bias, mean, var, **attrs),
          NUMPY[Op.BATCHNORM](x, weight, bias, mean, var, **attrs))
    same_error(device, Op.BATCHNORM, (x, weight, bias, mean[:3], var), attrs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_array_module_ops_match_numpy(device, rng, dtype):
    """The entries the table shares with the NumPy backend, run on device arrays."""
    x = rng.standard_normal((2, 6, 3, 4)).astype(dtype)
    z = rng.standard_normal((2, 6, 3, 4)).astype(dtype)
    cases = [
        (Op.GLOBAL_AVGPOOL, (x,), {}),
        (Op.GLOBAL_MAXPOOL, (x,), {}),
        (Op.SOFTMAX, (x,), dict(axis=1)),
        (Op.SOFTMAX, (x[:, :, 0, 0],), dict(axis=1)),
        (Op.MAXOUT, (x,), dict(k=3)),
        (Op.FLATTEN, (x,), {}),
        (Op.CONCAT, (x, z, x[:, :2]), dict(axis=1)),
        (Op.ADD, (x, z, x), {}),
        (Op.DROPOUT, (x,), dict(p=0.5)),
    ]
    for op, arrays, attrs in cases:
        close(device, run(device, op, *arrays, **attrs), NUMPY[op](*arrays, **attrs))


# ---------------------------------------------------------------- training: own oracles


def train_step(device, op, inputs, params, attrs, dy):
    """Forward with ``train=True`` and backward on the device; NumPy results back."""
    forward, backward = cupy_backend.GRADS[op]
    put = [None if a is None else device.put(a) for a in list(inputs) + list(params)]
    y, saved = forward(*put, train=True, rng=None, **attrs)
    gxs, gps = backward(saved, device.put(dy))
    get = [None if g is None else device.get(g) for g in gxs]
    return device.get(y), get, [None if g is None else device.get(g) for g in gps]


def act_derivative(act, z):
    """``act'(z)`` by central differences of the NumPy activation, in float64."""
    z = np.asarray(z, dtype=np.float64)
    if act is None:
        return np.ones_like(z)
    name, params = (act, {}) if isinstance(act, str) else act
    h = 1e-6
    plus = NUMPY[Op.ACTIVATION](z + h, name=name, **params)
    minus = NUMPY[Op.ACTIVATION](z - h, name=name, **params)
    return (plus - minus) / (2 * h)


def conv_oracle(x, w, b, dy, attrs):
    """Gradients of ``sum(dy * conv(x, w, b, act))`` in float64. The convolution is linear
    in ``x`` and in ``w``: its adjoint comes from one-hot inputs and one-hot weights."""
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    conv_attrs = dict(attrs, act=None)
    z = NUMPY[Op.CONV2D](x, w, b, **conv_attrs)
    gz = dy * act_derivative(attrs.get("act"), z)
    n, c, h, wd = x.shape
    basis = np.eye(c * h * wd).reshape(c * h * wd, c, h, wd)
    rows = NUMPY[Op.CONV2D](basis, w, **conv_attrs)  # (CHW, O, Ho, Wo)
    gx = np.einsum("kohw,nohw->nk", rows, gz).reshape(x.shape)
    gw = np.empty(w.size)
    for k in range(w.size):
        e = np.zeros(w.size)
        e[k] = 1.0
        gw[k] = np.sum(NUMPY[Op.CONV2D](x, e.reshape(w.shape), **conv_attrs) * gz)
    gb = gz.sum(axis=(0, 2, 3))
    return gx, gw.reshape(w.shape), gb


CONV_TRAIN_CASES = [
    dict(kernel=(3, 3), groups=1, stride=1, pad=1, dilation=1, act=None),
    dict(kernel=(2, 3), groups=2, stride=(2, 1), pad=(1, 2, 0, 1), dilation=(1, 2), act=None),
    dict(kernel=(3, 3), groups=1, stride=2, pad=0, dilation=2, act="tanh"),
    dict(kernel=(1, 1), groups=2, stride=1, pad=0, dilation=1, act=None),  # pointwise
    dict(kernel=(1, 1), groups=1, stride=2, pad=(0, 1, 1, 0), dilation=1, act="relu"),
    dict(kernel=(3, 3), groups=4, stride=1, pad=1, dilation=1, act="swish"),  # depthwise
    dict(kernel=(3, 2), groups=1, stride=1, pad=(2, 0, 1, 1), dilation=1, act="elu"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_TRAIN_CASES, ids=lambda c: str(sorted(c.items())))
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_grads_match_oracle(device, rng, dtype, case, bias, monkeypatch):
    monkeypatch.setattr(cupy_backend, "WORKSPACE_BYTES", 2000)  # several chunks
    case = dict(case)
    kernel = case.pop("kernel")
    x, w, b = _conv_case(rng, dtype, kernel, case["groups"], batch=3, channels=4,
                         out_channels=4, hw=(7, 6))
    b = b if bias else None
    params = [w] if b is None else [w, b]
    y_ref = NUMPY[Op.CONV2D](x, w, b, **case)
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    y, (gx,), gps = train_step(device, Op.CONV2D, [x], params, case, dy)
    close(device, y, y_ref)
    gx_ref, gw_ref, gb_ref = conv_oracle(x, w, b, dy.astype(np.float64), case)
    close(device, gx, gx_ref, dtype, fd=True)
    close(device, gps[0], gw_ref, dtype, fd=True)
    if bias:
        assert len(gps) == 2
        close(device, gps[1], gb_ref, dtype, fd=True)
    else:
        assert len(gps) == 1


def test_conv2d_training_refuses_a_fused_prelu(device, rng):
    x, w, b = _conv_case(rng, np.float32, (3, 3), 1)
    act = ("prelu", {"weight": device.put(np.full(6, 0.25, np.float32))})
    with pytest.raises(ValueError, match="fused prelu"):
        cupy_backend.GRADS[Op.CONV2D][0](device.put(x), device.put(w), act=act)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", [None, "relu", "sigmoid", ("leaky_relu", {"alpha": 0.1})])
@pytest.mark.parametrize("bias", [True, False])
def test_dense_grads_match_oracle(device, rng, dtype, act, bias):
    x = rng.standard_normal((4, 7)).astype(dtype)
    w = rng.standard_normal((5, 7)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype) if bias else None
    dy = rng.standard_normal((4, 5)).astype(dtype)
    params = [w] if b is None else [w, b]
    y, (gx,), gps = train_step(device, Op.DENSE, [x], params, dict(act=act), dy)
    close(device, y, NUMPY[Op.DENSE](x, w, b, act=act))
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    z = x64 @ w64.T + (0 if b is None else b)
    gz = dy * act_derivative(act, z)
    close(device, gx, gz @ w64, dtype, fd=True)
    close(device, gps[0], gz.T @ x64, dtype, fd=True)
    assert len(gps) == (2 if bias else 1)
    if bias:
        close(device, gps[1], gz.sum(axis=0), dtype, fd=True)


def maxpool_oracle(x, dy, kernel, stride, pad, dilation, out_hw):
    """Each window's gradient goes to its first real cell holding the maximum."""
    kh, kw = kernel
    top, _, left, _ = pad
    gx = np.zeros(x.shape)
    n, c, h, w = x.shape
    for b, ch, oh, ow in itertools.product(range(n), range(c), range(out_hw[0]),
                                           range(out_hw[1])):
        best = None
        for i, j in itertools.product(range(kh), range(kw)):
            r = oh * stride[0] - top + i * dilation[0]
            s = ow * stride[1] - left + j * dilation[1]
            if 0 <= r < h and 0 <= s < w and (best is None or x[b, ch, r, s] > x[best]):
                best = (b, ch, r, s)
        if best is not None:
            gx[best] += dy[b, ch, oh, ow]
    return gx


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride, pad, dilation, ceil", [
    ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), True),
    ((2, 2), (1, 1), (1, 0, 0, 1), (2, 2), False),
    ((2, 3), (2, 1), (0, 0, 1, 1), (1, 2), True),
    ((3, 3), (1, 1), (0, 0, 0, 0), (1, 1), False),  # overlapping windows
])
@pytest.mark.parametrize("ties", [False, True])
def test_maxpool2d_grads_match_oracle(device, rng, dtype, kernel, stride, pad, dilation, ceil,
                                      ties):
    shape = (2, 3, 7, 6)
    x = rng.integers(0, 3, shape).astype(dtype) if ties else distinct(rng, shape, dtype)
    attrs = dict(kernel=kernel, stride=stride, pad=pad, dilation=dilation, ceil=ceil)
    y_ref = NUMPY[Op.MAXPOOL2D](x, **attrs)
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    y, (gx,), gps = train_step(device, Op.MAXPOOL2D, [x], [], attrs, dy)
    assert gps == []
    np.testing.assert_array_equal(y, y_ref)
    expected = maxpool_oracle(x, dy.astype(np.float64), kernel, stride, pad, dilation,
                              y_ref.shape[2:])
    close(device, gx, expected, dtype)


def test_maxpool2d_saves_first_max_plane_indices(device):
    x = np.array([[[[1.0, 3.0, 3.0], [0.0, 3.0, 2.0], [5.0, 5.0, -1.0]]]])
    forward = cupy_backend.GRADS[Op.MAXPOOL2D][0]
    _, saved = forward(device.put(x), kernel=2, stride=1, pad=1, dilation=1, ceil=False)
    argmax = device.get(saved["argmax"])
    assert argmax.dtype == np.int32
    # 4x4 windows starting at rows/cols -1, 0, 1, 2; padding never wins, a tie goes to
    # the first cell in row-major window order
    expected = [[0, 1, 1, 2], [0, 1, 1, 2], [6, 6, 7, 5], [6, 6, 7, 8]]
    np.testing.assert_array_equal(argmax[0, 0], expected)


def linear_pool_oracle(op, x, dy, attrs):
    """The adjoint of a linear pool from one-hot planes: ``gx[n, c] = J^T dy[n, c]``."""
    n, c, h, w = x.shape
    basis = np.eye(h * w).reshape(h * w, 1, h, w)
    rows = NUMPY[op](basis, **attrs)[:, 0]  # (HW, Ho, Wo)
    return np.einsum("khw,nchw->nck", rows, dy).reshape(x.shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride, pad, ceil", [
    (3, 2, 1, True), (2, None, 0, False), ((3, 2), (1, 2), (1, 0, 1, 1), True), (3, 1, 1, False),
])
@pytest.mark.parametrize("count_pad", [True, False])
def test_avgpool2d_grads_match_oracle(device, rng, dtype, kernel, stride, pad, ceil, count_pad):
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    attrs = dict(kernel=kernel, stride=stride, pad=pad, ceil=ceil, count_pad=count_pad)
    y_ref = NUMPY[Op.AVGPOOL2D](x, **attrs)
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    y, (gx,), gps = train_step(device, Op.AVGPOOL2D, [x], [], attrs, dy)
    assert gps == []
    close(device, y, y_ref)
    close(device, gx, linear_pool_oracle(Op.AVGPOOL2D, x, dy.astype(np.float64), attrs), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (4, 6)])
def test_activation_grads_match_oracle(device, rng, dtype, shape):
    x = distinct(rng, shape, dtype) * 5  # -3 .. 3, kinks avoided
    dy = rng.standard_normal(shape).astype(dtype)
    for name, alpha, beta, weight in _activation_calls(rng, shape[1]):
        attrs = dict(name=name, alpha=alpha, beta=beta)
        params = [] if weight is None else [weight.astype(dtype)]
        y, (gx,), gps = train_step(device, Op.ACTIVATION, [x], params, attrs, dy)
        close(device, y, NUMPY[Op.ACTIVATION](x, weight, **attrs))
        act = (name, dict(alpha=alpha, beta=beta, weight=weight))
        expected = dy * act_derivative(act, x)
        close(device, gx, expected, dtype, fd=True)
        if weight is None:
            assert gps == []
            continue
        contrib = dy.astype(np.float64) * np.minimum(x, 0)
        if weight.size == 1:
            expected_w = contrib.sum().reshape(weight.shape)
        else:
            expected_w = contrib.sum(axis=(0,) + tuple(range(2, x.ndim)))
        close(device, gps[0], expected_w, dtype)


def test_backward_checks_the_shape_of_dy(device, rng):
    x = device.put(rng.standard_normal((2, 3, 6, 6)))
    w = device.put(rng.standard_normal((4, 3, 3, 3)))
    cases = [
        (Op.CONV2D, (x, w), dict(stride=1, pad=1, dilation=1, groups=1, act=None)),
        (Op.MAXPOOL2D, (x,), dict(kernel=2, stride=2, pad=0, dilation=1, ceil=False)),
        (Op.AVGPOOL2D, (x,), dict(kernel=2, stride=2, pad=0, ceil=False, count_pad=True)),
        (Op.ACTIVATION, (x,), dict(name="tanh", alpha=None, beta=None)),
    ]
    for op, args, attrs in cases:
        forward, backward = cupy_backend.GRADS[op]
        y, saved = forward(*args, train=True, rng=None, **attrs)
        bad = device.put(np.zeros((1,) + tuple(y.shape)[1:]))
        with pytest.raises(ValueError, match="dy must have the forward output's shape"):
            backward(saved, bad)


# ---------------------------------------------------------------- training: the generic table


def _generic_cases(rng, dtype):
    """``(op, inputs, params, attrs)`` for every op, as a training plan calls them."""
    x = rng.standard_normal((3, 4, 6, 5)).astype(dtype)
    d = distinct(rng, (3, 4, 6, 5), dtype)
    w3 = rng.standard_normal((6, 4, 3, 3)).astype(dtype)
    w_dw = rng.standard_normal((4, 1, 3, 3)).astype(dtype)
    w_pw = rng.standard_normal((6, 2, 1, 1)).astype(dtype)
    b6 = rng.standard_normal(6).astype(dtype)
    b4 = rng.standard_normal(4).astype(dtype)
    flat = rng.standard_normal((3, 7)).astype(dtype)
    wd = rng.standard_normal((5, 7)).astype(dtype)
    gamma = rng.uniform(0.5, 2, 4).astype(dtype)
    beta = rng.standard_normal(4).astype(dtype)
    mean = rng.standard_normal(4).astype(dtype)
    var = rng.uniform(0.5, 2, 4).astype(dtype)
    conv = dict(stride=1, pad=1, dilation=1, groups=1, act=None)
    cases = [
        (Op.CONV2D, [x], [w3, b6], conv),
        (Op.CONV2D, [x], [w3], dict(conv, stride=2, pad=(1, 0, 2, 1), dilation=(1, 2))),
        (Op.CONV2D, [x], [w_dw, b4], dict(conv, groups=4)),
        (Op.CONV2D, [x], [w_pw, b6], dict(conv, pad=0, groups=2)),
        (Op.MAXPOOL2D, [d], [], dict(kernel=3, stride=2, pad=1, dilation=1, ceil=True)),
        (Op.MAXPOOL2D, [d], [], dict(kernel=2, stride=1, pad=(1, 0, 0, 1), dilation=2,
                                     ceil=False)),
        (Op.AVGPOOL2D, [x], [], dict(kernel=3, stride=2, pad=1, ceil=True, count_pad=False)),
        (Op.AVGPOOL2D, [x], [], dict(kernel=2, stride=None, pad=0, ceil=False,
                                     count_pad=True)),
        (Op.GLOBAL_AVGPOOL, [x], [], {}),
        (Op.GLOBAL_MAXPOOL, [d], [], {}),
        (Op.LRN, [x], [], dict(size=3, alpha=0.1, beta=0.75, k=1.0)),
        (Op.BATCHNORM, [x], [gamma, beta, mean, var], dict(eps=1e-3, momentum=0.1)),
        (Op.SOFTMAX, [flat], [], dict(axis=1)),
        (Op.MAXOUT, [d], [], dict(k=2)),
        (Op.DENSE, [flat], [wd, b6[:5]], dict(act=None)),
        (Op.FLATTEN, [x], [], {}),
        (Op.CONCAT, [x, d], [], dict(axis=1)),
        (Op.ADD, [x, d, x], [], {}),
        (Op.DROPOUT, [x], [], dict(p=0.4)),
    ]
    for name in DEFAULTS:
        weight = [rng.uniform(-0.5, 0.5, 4).astype(dtype)] if name == "prelu" else []
        cases.append((Op.ACTIVATION, [d * 30], weight, dict(name=name, alpha=None, beta=None)))
    return cases


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("train", [True, False])
def test_grads_match_the_generic_numpy_table(device, rng, dtype, train):
    grads = pytest.importorskip("cnnc.runtime.grads")
    for op, inputs, params, attrs in _generic_cases(rng, dtype):
        if op is Op.DROPOUT and train:
            continue  # the masks come from different generators
        where = f"{op.value} {attrs}"
        forward, backward = grads.GRADS[op]
        numpy_params = [p.copy() for p in params]  # batchnorm moves its statistics
        y_ref, saved_ref = forward(*inputs, *numpy_params, train=train, rng=None, **attrs)
        dy = rng.standard_normal(np.shape(y_ref)).astype(dtype)
        gxs_ref, gps_ref = backward(saved_ref, dy)

        d_inputs = [device.put(a) for a in inputs]
        d_params = [device.put(p.copy()) for p in params]
        d_dy = device.put(dy)
        my_forward, my_backward = cupy_backend.GRADS[op]
        y, saved = my_forward(*d_inputs, *d_params, train=train, rng=None, **attrs)
        gxs, gps = my_backward(saved, d_dy)
        close(device, y, y_ref)
        assert len(gxs) == len(gxs_ref) and len(gps) == len(gps_ref), where
        for mine, ref in zip(list(gxs) + list(gps), list(gxs_ref) + list(gps_ref)):
            if ref is None:
                assert mine is None, where
                continue
            close(device, mine, ref)
            # a new array the caller owns
            assert not device.xp.shares_memory(mine, d_dy), where
        for moved, ref in zip(d_params, numpy_params):  # running statistics, in place
            close(device, moved, ref)


# ---------------------------------------------------------------- out= (the memory plan)


def test_accepts_out_matches_the_numpy_backend():
    from cnnc.runtime import numpy_backend

    assert cupy_backend.ACCEPTS_OUT == numpy_backend.ACCEPTS_OUT


def _out_cases(rng, dtype):
    """``(op, arrays, attrs)`` for every op that takes ``out=``."""
    x = rng.standard_normal((2, 4, 6, 5)).astype(dtype)
    z = rng.standard_normal((2, 4, 6, 5)).astype(dtype)
    w = rng.standard_normal((6, 2, 3, 3)).astype(dtype)
    w_pw = rng.standard_normal((6, 4, 1, 1)).astype(dtype)
    w_dw = rng.standard_normal((4, 1, 3, 3)).astype(dtype)
    b6 = rng.standard_normal(6).astype(dtype)
    flat = rng.standard_normal((2, 7)).astype(dtype)
    wd = rng.standard_normal((6, 7)).astype(dtype)
    stats = [rng.uniform(0.5, 2, 4).astype(dtype) for _ in range(4)]
    return [
        (Op.CONV2D, (x, w, b6), dict(stride=1, pad=1, dilation=1, groups=2, act="relu")),
        (Op.CONV2D, (x, w_pw, b6), dict(stride=1, pad=0, dilation=1, groups=1, act=None)),
        (Op.CONV2D, (x, w_dw), dict(stride=2, pad=1, dilation=1, groups=4, act="tanh")),
        (Op.DENSE, (flat, wd, b6), dict(act="sigmoid")),
        (Op.MAXPOOL2D, (x,), dict(kernel=3, stride=2, pad=1, dilation=1, ceil=True)),
        (Op.AVGPOOL2D, (x,), dict(kernel=3, stride=2, pad=1, ceil=True, count_pad=False)),
        (Op.ACTIVATION, (x,), dict(name="elu", alpha=None, beta=None)),
        (Op.BATCHNORM, (x, *stats), dict(eps=1e-5, momentum=0.1)),
        (Op.ADD, (x, z, x), {}),
    ]


@pytest.mark.parametrize("dtype", DTYPES)
def test_out_is_written_contiguous_or_as_a_channel_slice(device, rng, dtype):
    for op, arrays, attrs in _out_cases(rng, dtype):
        expected = NUMPY[op](*arrays, **attrs)
        shape = expected.shape
        # a C-contiguous target: written directly and returned
        out = device.put(np.full(shape, np.nan, dtype=dtype))
        y = run(device, op, *arrays, out=out, **attrs)
        assert y is out, op
        close(device, out, expected)
        # a channel slice of a larger buffer (a concat's input), not C-contiguous
        wide = device.put(np.full((shape[0], shape[1] + 3) + shape[2:], 7.0, dtype=dtype))
        part = wide[:, 1:1 + shape[1]]
        y = run(device, op, *arrays, out=part, **attrs)
        close(device, part, expected)
        edges = device.get(wide)
        assert (edges[:, :1] == 7).all() and (edges[:, 1 + shape[1]:] == 7).all(), op
        # a target of the wrong dtype (ADD is the array module's own, which casts)
        other = np.float64 if dtype == np.float32 else np.float32
        if op is not Op.ADD:
            with pytest.raises(ValueError, match="out must be"):
                run(device, op, *arrays, out=device.put(np.empty(shape, other)), **attrs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_in_place_activation_batchnorm_and_add(device, rng, dtype):
    for op, arrays, attrs in _out_cases(rng, dtype):
        if op not in (Op.ACTIVATION, Op.BATCHNORM, Op.ADD):
            continue
        expected = NUMPY[op](*arrays, **attrs)
        x = device.put(arrays[0].copy())
        rest = [device.put(a) for a in arrays[1:]]
        y = cupy_backend.KERNELS[op](x, *rest, out=x, **attrs)
        assert y is x
        close(device, x, expected)
        # in place on a non-contiguous view: a channel slice of a larger buffer
        wide = device.put(np.zeros((arrays[0].shape[0], arrays[0].shape[1] + 2)
                                   + arrays[0].shape[2:], dtype=dtype))
        view = wide[:, 2:]
        view[...] = device.put(arrays[0])
        cupy_backend.KERNELS[op](view, *rest, out=view, **attrs)
        close(device, view, expected)
        assert (device.get(wide)[:, :2] == 0).all()


# ---------------------------------------------------------------- whole networks

# Every op family, small: batchnorms the memory plan folds into convs, prelu, swish and elu
# fused as conv epilogues, branches written into their concat's slices, a residual add, a
# depthwise conv, dilation, ceil pooling, LRN, maxout, dropout and two outputs.
EVERY_OP = """
network every_op

input image: [3, 13, 11]

block mix(c) {
    a = in -> conv(c, 3, pad=same, bias=false) -> batchnorm -> prelu
    b = in -> conv(c, 1) -> swish(1.5)
    d = in -> maxpool(3, stride=1, pad=1) -> conv(c, 1) -> elu(0.5)
    return concat(a, b, d)
}

block res(c) {
    r = in -> conv(c, 3, pad=1, groups=2) -> batchnorm -> leaky_relu(0.2)
        -> conv(c, 3, pad=2, dilation=2) -> batchnorm
    return add(in, r)
}

stem = image -> conv(8, 3, stride=2, pad=1) -> batchnorm -> relu -> lrn(3)
body = stem -> conv(8, 3, pad=1, groups=8) -> selu -> mix(4) -> res(12) -> relu
pooled = body -> avgpool(3, stride=2, ceil=true, count_pad=false) -> dropout(0.2)
    -> maxout(2) -> silu -> maxpool(2, stride=1, dilation=2, ceil=true)

output logits = pooled -> global_maxpool -> flatten -> dense(16) -> softplus -> dense(8)
    -> sigmoid -> dense(5) -> softmax
output features = body -> global_avgpool -> flatten
"""


def _models(device, dtype):
    """The NumPy model and the same model (same parameters) on ``device``."""
    import cnnc

    compiled = cnnc.compile(EVERY_OP)
    reference = compiled.build(backend="numpy", dtype=dtype, seed=3)
    rng = np.random.default_rng(5)
    for key, value in reference.params.items():  # running statistics worth folding
        if key.endswith("running_mean"):
            value[...] = rng.standard_normal(value.shape)
        elif key.endswith("running_var"):
            value[...] = rng.uniform(0.5, 2.0, value.shape)
    if device.name == "cupy":
        model = compiled.build(backend="cupy", dtype=dtype, seed=3)
    else:
        # the NumPy model with this backend's tables: what backend="cupy" selects
        model = compiled.build(backend="numpy", dtype=dtype, seed=3)
        model.kernels = cupy_backend.KERNELS
        model._accepts_out = cupy_backend.ACCEPTS_OUT
        model._accepts_scale = getattr(cupy_backend, "ACCEPTS_SCALE", frozenset())
        model._grad_table = lambda: cupy_backend.GRADS
    model.params = {k: device.put(v.copy()) for k, v in reference.params.items()}
    model.mark_changed()
    return reference, model


@pytest.mark.parametrize("dtype", DTYPES)
def test_whole_network_matches_the_numpy_backend(device, rng, dtype):
    reference, model = _models(device, np.dtype(dtype).name)
    x = rng.standard_normal((3, 3, 13, 11)).astype(dtype)
    expected = reference(x)
    for got in (model(device.put(x)), model.interpret(device.put(x))):
        assert set(got) == {"logits", "features"}
        for name in got:
            close(device, got[name], expected[name])

    trains = [False, True] if device.name == "emulated" else [False]  # dropout masks differ
    for train in trains:
        reference_out = reference.forward(x, train=train)
        out = model.forward(device.put(x), train=train)
        for name in out:
            close(device, out[name], reference_out[name])
        dy = {name: rng.standard_normal(v.shape).astype(dtype)
              for name, v in reference_out.items()}
        gx_ref = reference.backward(dy)
        gx = model.backward({name: device.put(v) for name, v in dy.items()})
        close(device, gx, gx_ref)
        assert set(model.grads) == set(reference.grads)
        for key in reference.grads:
            close(device, model.grads[key], reference.grads[key])
