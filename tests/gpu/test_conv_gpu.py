"""The CUDA kernels of the conv and linear families (``ops/conv.py``, ``ops/linear.py``)
against their NumPy kernels and against oracles, and their host-side logic.

Device tests take the ``device`` fixture (``conftest.py``): ``cupy`` runs on a CUDA device
(marked ``gpu``; skipped without CuPy and a device), ``emulated`` runs the same CUDA text
compiled for the CPU on NumPy arrays. Training pairs are checked against the adjoint of the
convolution built from one-hot inputs and one-hot weights, and against the NumPy pair.
"""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest

from cnnc.ops import conv, gpu, linear
from cnnc.ops.activation import apply_act_

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


def run(device, kernel, *arrays, **attrs):
    """``kernel`` on device copies of ``arrays`` (None stays None)."""
    args = [None if a is None else device.put(a) for a in arrays]
    return kernel(*args, **attrs)


def same_error(device, numpy_kernel, gpu_kernel, arrays, attrs):
    """Both kernels refuse the arguments with the same message."""
    with pytest.raises(ValueError) as numpy_error:
        numpy_kernel(*arrays, **attrs)
    with pytest.raises(ValueError) as device_error:
        run(device, gpu_kernel, *arrays, **attrs)
    assert str(device_error.value) == str(numpy_error.value)


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


def test_primitives_name_their_gpu_kernels():
    for p, names in [(conv.CONV2D, ("gpu_conv2d", "gpu_conv2d_forward", "gpu_conv2d_backward")),
                     (linear.DENSE, ("gpu_dense", "gpu_dense_forward", "gpu_dense_backward"))]:
        assert (p.gpu_kernel.__name__, p.gpu_forward.__name__, p.gpu_backward.__name__) == names


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("kernel", CONV_KERNELS)
def test_conv2d_matches_numpy(device, rng, dtype, kernel, groups):
    x, w, b = _conv_case(rng, dtype, kernel, groups)
    for stride, pad, dilation in itertools.product(CONV_STRIDES, CONV_PADS, CONV_DILATIONS):
        attrs = dict(stride=stride, pad=pad, dilation=dilation, groups=groups, act=None)
        close(device, run(device, conv.gpu_conv2d, x, w, b, **attrs),
              conv.conv2d(x, w, b, **attrs))
        close(device, run(device, conv.gpu_conv2d, x, w, **attrs), conv.conv2d(x, w, **attrs))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_conv2d_matches_numpy(device, rng, dtype, multiplier):
    x, w, b = _conv_case(rng, dtype, (3, 3), 4, channels=4, out_channels=4 * multiplier)
    for stride, pad, dilation in itertools.product(CONV_STRIDES, CONV_PADS, CONV_DILATIONS):
        attrs = dict(stride=stride, pad=pad, dilation=dilation, groups=4)
        close(device, run(device, conv.gpu_conv2d, x, w, b, **attrs),
              conv.conv2d(x, w, b, **attrs))
        close(device, run(device, conv.gpu_conv2d, x, w, **attrs), conv.conv2d(x, w, **attrs))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_pointwise_conv2d_matches_numpy(device, rng, dtype, groups):
    x, w, b = _conv_case(rng, dtype, (1, 1), groups, batch=3, out_channels=8, hw=(5, 9))
    close(device, run(device, conv.gpu_conv2d, x, w, b, groups=groups),
          conv.conv2d(x, w, b, groups=groups))
    # a non-contiguous input
    xt = np.swapaxes(np.swapaxes(x, 2, 3).copy(), 2, 3)
    close(device, run(device, conv.gpu_conv2d, xt, w, groups=groups),
          conv.conv2d(x, w, groups=groups))


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
            expected = conv.conv2d(x, w, b, act=act, **attrs)
            actual = run(device, conv.gpu_conv2d, x, w, b, act=_on_device(device, act),
                         **attrs)
            close(device, actual, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("budget", [1, 3000, 1 << 30])
def test_conv2d_chunks_the_batch(device, rng, dtype, budget, monkeypatch):
    """One sample per chunk, a few per chunk with a short last one, the batch at once."""
    monkeypatch.setattr(gpu, "WORKSPACE_BYTES", budget)
    x, w, b = _conv_case(rng, dtype, (3, 3), 2, batch=5, hw=(5, 4))
    attrs = dict(stride=(1, 2), pad=(1, 0, 2, 1), dilation=(1, 2), groups=2, act="tanh")
    close(device, run(device, conv.gpu_conv2d, x, w, b, **attrs),
          conv.conv2d(x, w, b, **attrs))


def test_conv2d_integer_input_computes_in_float64(device, rng):
    x = rng.integers(-3, 4, (2, 2, 5, 5))
    w = rng.standard_normal((3, 2, 3, 3))
    y = run(device, conv.gpu_conv2d, x, w, pad=1)
    close(device, y, conv.conv2d(x, w, pad=1), np.float64)


def test_conv2d_errors_match_numpy(device, rng):
    x, w, b = _conv_case(rng, np.float32, (3, 3), 1)

    def check(arrays, attrs):
        same_error(device, conv.conv2d, conv.gpu_conv2d, arrays, attrs)

    check((x, w[:, :3], b), dict(groups=1))  # channel mismatch
    check((x, w, b), dict(groups=3))  # groups do not divide
    check((x, w, b[:2]), dict())  # bias size
    check((x, w, b), dict(stride=0))
    check((x[:, :, :2], w, b), dict())  # output height below 1
    check((x[0], w, b), dict())  # not [N, C, H, W]
    check((x, w, b), dict(scale=np.ones(5, np.float32)))  # scale size


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", [None, "relu", ("leaky_relu", {"alpha": 0.2})], ids=str)
def test_scale_matches_numpy(device, rng, dtype, act):
    """``scale=``: a batchnorm folded in, per output channel before the bias."""
    for kernel, groups, pad in [((3, 3), 1, 1), ((1, 1), 2, 0), ((3, 3), 4, 1)]:
        x, w, b = _conv_case(rng, dtype, kernel, groups, out_channels=8)
        scale = rng.uniform(0.5, 2.0, 8).astype(dtype)
        attrs = dict(pad=pad, groups=groups, act=act)
        close(device, run(device, conv.gpu_conv2d, x, w, b, scale=scale, **attrs),
              conv.conv2d(x, w, b, scale=scale, **attrs))
        close(device, run(device, conv.gpu_conv2d, x, w, scale=scale, **attrs),
              conv.conv2d(x, w, scale=scale, **attrs))
    xd, wd, bd = rng.standard_normal((3, 7)), rng.standard_normal((5, 7)), rng.standard_normal(5)
    xd, wd, bd = xd.astype(dtype), wd.astype(dtype), bd.astype(dtype)
    scale = rng.uniform(0.5, 2.0, 5).astype(dtype)
    close(device, run(device, linear.gpu_dense, xd, wd, bd, scale=scale, act=act),
          linear.dense(xd, wd, bd, scale=scale, act=act))
    same_error(device, linear.dense, linear.gpu_dense, (xd, wd, bd), dict(scale=scale[:4]))


# ---------------------------------------------------------------- dense


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_matches_numpy(device, rng, dtype):
    x = rng.standard_normal((3, 7)).astype(dtype)
    w = rng.standard_normal((5, 7)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    for act in _acts(5, rng):
        close(device, run(device, linear.gpu_dense, x, w, b, act=_on_device(device, act)),
              linear.dense(x, w, b, act=act))
    close(device, run(device, linear.gpu_dense, x, w), linear.dense(x, w))
    same_error(device, linear.dense, linear.gpu_dense, (x, w[:, :6]), dict())
    same_error(device, linear.dense, linear.gpu_dense, (x, w, b[:4]), dict())


def test_dense_integer_input_computes_in_float64(device, rng):
    x = rng.integers(-3, 4, (4, 6))
    w = rng.standard_normal((3, 6))
    close(device, run(device, linear.gpu_dense, x, w), linear.dense(x, w), np.float64)


# ---------------------------------------------------------------- out= (the memory plan)


def _out_cases(rng, dtype):
    x = rng.standard_normal((2, 4, 6, 5)).astype(dtype)
    w = rng.standard_normal((6, 2, 3, 3)).astype(dtype)
    w_pw = rng.standard_normal((6, 4, 1, 1)).astype(dtype)
    w_dw = rng.standard_normal((4, 1, 3, 3)).astype(dtype)
    b6 = rng.standard_normal(6).astype(dtype)
    flat = rng.standard_normal((2, 7)).astype(dtype)
    wd = rng.standard_normal((6, 7)).astype(dtype)
    c, d = (conv.conv2d, conv.gpu_conv2d), (linear.dense, linear.gpu_dense)
    return [
        (c, (x, w, b6), dict(stride=1, pad=1, dilation=1, groups=2, act="relu")),
        (c, (x, w_pw, b6), dict(stride=1, pad=0, dilation=1, groups=1, act=None)),
        (c, (x, w_dw), dict(stride=2, pad=1, dilation=1, groups=4, act="tanh")),
        (c, (x, w, b6), dict(groups=2, scale=np.linspace(0.5, 2, 6).astype(dtype))),
        (d, (flat, wd, b6), dict(act="sigmoid")),
        (d, (flat, wd), dict(act=None, scale=np.linspace(0.5, 2, 6).astype(dtype))),
    ]


@pytest.mark.parametrize("dtype", DTYPES)
def test_out_is_written_contiguous_or_as_a_channel_slice(device, rng, dtype):
    for (numpy_kernel, gpu_kernel), arrays, attrs in _out_cases(rng, dtype):
        expected = numpy_kernel(*arrays, **attrs)
        if "scale" in attrs:
            attrs = dict(attrs, scale=device.put(attrs["scale"]))
        shape = expected.shape
        # a C-contiguous target: written directly and returned
        out = device.put(np.full(shape, np.nan, dtype=dtype))
        y = run(device, gpu_kernel, *arrays, out=out, **attrs)
        assert y is out
        close(device, out, expected)
        # a channel slice of a larger buffer (a concat's input), not C-contiguous
        wide = device.put(np.full((shape[0], shape[1] + 3) + shape[2:], 7.0, dtype=dtype))
        part = wide[:, 1:1 + shape[1]]
        run(device, gpu_kernel, *arrays, out=part, **attrs)
        close(device, part, expected)
        edges = device.get(wide)
        assert (edges[:, :1] == 7).all() and (edges[:, 1 + shape[1]:] == 7).all()
        # a target of the wrong dtype
        other = np.float64 if dtype == np.float32 else np.float32
        with pytest.raises(ValueError, match="out must be"):
            run(device, gpu_kernel, *arrays, out=device.put(np.empty(shape, other)), **attrs)


# ---------------------------------------------------------------- training: own oracles


def train_step(device, pair, inputs, params, attrs, dy):
    """Forward with ``train=True`` and backward on the device; NumPy results back."""
    forward, backward = pair
    put = [None if a is None else device.put(a) for a in list(inputs) + list(params)]
    y, saved = forward(*put, train=True, rng=None, **attrs)
    gxs, gps = backward(saved, device.put(dy))
    get = [None if g is None else device.get(g) for g in gxs]
    return device.get(y), get, [None if g is None else device.get(g) for g in gps]


CONV_PAIR = (conv.gpu_conv2d_forward, conv.gpu_conv2d_backward)
DENSE_PAIR = (linear.gpu_dense_forward, linear.gpu_dense_backward)


def act_derivative(act, z):
    """``act'(z)`` by central differences of the NumPy activation, in float64."""
    z = np.asarray(z, dtype=np.float64)
    if act is None:
        return np.ones_like(z)
    h = 1e-6
    plus = apply_act_(z + h, act)
    minus = apply_act_(z - h, act)
    return (plus - minus) / (2 * h)


def conv_oracle(x, w, b, dy, attrs):
    """Gradients of ``sum(dy * conv(x, w, b, act))`` in float64. The convolution is linear
    in ``x`` and in ``w``: its adjoint comes from one-hot inputs and one-hot weights."""
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    conv_attrs = dict(attrs, act=None)
    z = conv.conv2d(x, w, b, **conv_attrs)
    gz = dy * act_derivative(attrs.get("act"), z)
    n, c, h, wd = x.shape
    basis = np.eye(c * h * wd).reshape(c * h * wd, c, h, wd)
    rows = conv.conv2d(basis, w, **conv_attrs)  # (CHW, O, Ho, Wo)
    gx = np.einsum("kohw,nohw->nk", rows, gz).reshape(x.shape)
    gw = np.empty(w.size)
    for k in range(w.size):
        e = np.zeros(w.size)
        e[k] = 1.0
        gw[k] = np.sum(conv.conv2d(x, e.reshape(w.shape), **conv_attrs) * gz)
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
    monkeypatch.setattr(gpu, "WORKSPACE_BYTES", 2000)  # several chunks
    case = dict(case)
    kernel = case.pop("kernel")
    x, w, b = _conv_case(rng, dtype, kernel, case["groups"], batch=3, channels=4,
                         out_channels=4, hw=(7, 6))
    b = b if bias else None
    params = [w] if b is None else [w, b]
    y_ref = conv.conv2d(x, w, b, **case)
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    y, (gx,), gps = train_step(device, CONV_PAIR, [x], params, case, dy)
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
        conv.gpu_conv2d_forward(device.put(x), device.put(w), act=act)
    xd, wd = device.put(x[:, :, 0, 0]), device.put(w[:, :, 0, 0])
    with pytest.raises(ValueError, match="fused prelu"):
        linear.gpu_dense_forward(xd, wd, act=("prelu", {"weight": act[1]["weight"]}))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", [None, "relu", "sigmoid", ("leaky_relu", {"alpha": 0.1})])
@pytest.mark.parametrize("bias", [True, False])
def test_dense_grads_match_oracle(device, rng, dtype, act, bias):
    x = rng.standard_normal((4, 7)).astype(dtype)
    w = rng.standard_normal((5, 7)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype) if bias else None
    dy = rng.standard_normal((4, 5)).astype(dtype)
    params = [w] if b is None else [w, b]
    y, (gx,), gps = train_step(device, DENSE_PAIR, [x], params, dict(act=act), dy)
    close(device, y, linear.dense(x, w, b, act=act))
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    z = x64 @ w64.T + (0 if b is None else b)
    gz = dy * act_derivative(act, z)
    close(device, gx, gz @ w64, dtype, fd=True)
    close(device, gps[0], gz.T @ x64, dtype, fd=True)
    assert len(gps) == (2 if bias else 1)
    if bias:
        close(device, gps[1], gz.sum(axis=0), dtype, fd=True)


def test_backward_checks_the_shape_of_dy(device, rng):
    x = device.put(rng.standard_normal((2, 3, 6, 6)))
    w = device.put(rng.standard_normal((4, 3, 3, 3)))
    cases = [
        (CONV_PAIR, (x, w), dict(stride=1, pad=1, dilation=1, groups=1, act=None)),
        (DENSE_PAIR, (x[:, :, 0, 0], w[:, :, 0, 0]), dict(act=None)),
    ]
    for (forward, backward), args, attrs in cases:
        y, saved = forward(*args, train=True, rng=None, **attrs)
        bad = device.put(np.zeros((1,) + tuple(y.shape)[1:]))
        with pytest.raises(ValueError, match="dy must have the forward output's shape"):
            backward(saved, bad)


# ---------------------------------------------------------------- training: the NumPy pair


def _generic_cases(rng, dtype):
    """``(numpy pair, gpu pair, inputs, params, attrs)`` as a training plan calls them."""
    x = rng.standard_normal((3, 4, 6, 5)).astype(dtype)
    w3 = rng.standard_normal((6, 4, 3, 3)).astype(dtype)
    w_dw = rng.standard_normal((4, 1, 3, 3)).astype(dtype)
    w_pw = rng.standard_normal((6, 2, 1, 1)).astype(dtype)
    b6 = rng.standard_normal(6).astype(dtype)
    b4 = rng.standard_normal(4).astype(dtype)
    flat = rng.standard_normal((3, 7)).astype(dtype)
    wd = rng.standard_normal((5, 7)).astype(dtype)
    c = ((conv.conv2d_forward, conv.conv2d_backward), CONV_PAIR)
    d = ((linear.dense_forward, linear.dense_backward), DENSE_PAIR)
    attrs = dict(stride=1, pad=1, dilation=1, groups=1, act=None)
    return [
        c + ([x], [w3, b6], attrs),
        c + ([x], [w3], dict(attrs, stride=2, pad=(1, 0, 2, 1), dilation=(1, 2))),
        c + ([x], [w_dw, b4], dict(attrs, groups=4)),
        c + ([x], [w_pw, b6], dict(attrs, pad=0, groups=2)),
        d + ([flat], [wd, b6[:5]], dict(act=None)),
        d + ([flat], [wd], dict(act=None)),
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("train", [True, False])
def test_grads_match_the_numpy_pair(device, rng, dtype, train):
    for numpy_pair, gpu_pair, inputs, params, attrs in _generic_cases(rng, dtype):
        where = f"{numpy_pair[0].__name__} {attrs}"
        forward, backward = numpy_pair
        y_ref, saved_ref = forward(*inputs, *params, train=train, rng=None, **attrs)
        dy = rng.standard_normal(np.shape(y_ref)).astype(dtype)
        gxs_ref, gps_ref = backward(saved_ref, dy)

        d_dy = device.put(dy)
        forward, backward = gpu_pair
        y, saved = forward(*[device.put(a) for a in inputs + params], train=train, rng=None,
                           **attrs)
        gxs, gps = backward(saved, d_dy)
        close(device, y, y_ref)
        assert len(gxs) == len(gxs_ref) and len(gps) == len(gps_ref), where
        for mine, ref in zip(list(gxs) + list(gps), list(gxs_ref) + list(gps_ref)):
            close(device, mine, ref)
            assert not device.xp.shares_memory(mine, d_dy), where  # the caller's own


# ---------------------------------------------------------------- host logic (no device)


def test_importing_the_families_does_not_import_cupy():
    code = ("import sys; import cnnc.ops.conv, cnnc.ops.linear; "
            "assert 'cupy' not in sys.modules, 'cupy imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("n, per_sample, budget, expected", [
    (10, 100, 1000, 10),  # the whole batch fits
    (10, 100, 350, 3),  # 3 per chunk, the last one short
    (10, 5000, 1000, 1),  # one sample is over budget: still one per chunk
    (1, 100, 10 ** 9, 1),
    (4, 0, 100, 4),  # nothing per sample
])
def test_batch_chunk(n, per_sample, budget, expected):
    assert gpu.batch_chunk(n, per_sample, budget) == expected


def test_batch_chunk_defaults_to_the_workspace(monkeypatch):
    monkeypatch.setattr(gpu, "WORKSPACE_BYTES", 1000)
    assert gpu.batch_chunk(50, 300) == 3


def _geometry(x_shape, w_shape, **attrs):
    defaults = dict(stride=1, pad=0, dilation=1, groups=1)
    defaults.update(attrs)
    return conv.conv_geometry(np.empty(x_shape), np.empty(w_shape), None, **defaults)


def test_conv_geometry_sizes_and_paths():
    g = _geometry((2, 4, 7, 6), (6, 2, 3, 3), stride=(2, 1), pad=(1, 2, 0, 1), dilation=(1, 2),
                  groups=2)
    assert (g.ho, g.wo) == (4, 3)  # floor((7+3-3)/2)+1, floor((6+1-5)/1)+1
    assert (g.cg, g.og, g.k, g.spatial) == (2, 3, 18, 12)
    assert not g.pointwise and not g.depthwise
    assert g.window_args() == (3, 3, 2, 1, 1, 0, 1, 2, 4, 3)
    assert _geometry((1, 4, 5, 5), (8, 4, 1, 1)).pointwise
    assert not _geometry((1, 4, 5, 5), (8, 4, 1, 1), stride=2).pointwise
    assert not _geometry((1, 4, 5, 5), (8, 4, 1, 1), pad=(0, 0, 0, 1)).pointwise
    assert _geometry((1, 4, 5, 5), (8, 1, 3, 3), groups=4).depthwise
    assert not _geometry((1, 4, 5, 5), (8, 1, 1, 1), groups=4).depthwise  # a 1x1 is a GEMM
    assert not _geometry((1, 1, 5, 5), (2, 1, 3, 3)).depthwise  # one group: im2col


def test_conv_geometry_errors_match_the_numpy_kernel():
    x = np.zeros((1, 4, 5, 5))
    for w, attrs in [(np.zeros((6, 3, 3, 3)), {}), (np.zeros((6, 4, 3, 3)), dict(groups=3)),
                     (np.zeros((6, 4, 3, 3)), dict(dilation=0)),
                     (np.zeros((6, 4, 7, 3)), {})]:
        with pytest.raises(ValueError) as numpy_error:
            conv.conv2d(x, w, **attrs)
        with pytest.raises(ValueError) as ours:
            conv.conv_geometry(x, w, None, attrs.get("stride", 1), attrs.get("pad", 0),
                               attrs.get("dilation", 1), attrs.get("groups", 1))
        assert str(ours.value) == str(numpy_error.value)


# ---------------------------------------------------------------- conv1d and conv3d (spec 9)
# conv1d runs on CONV2D's CUDA kernels through height-1 views; conv3d's generic NumPy-API
# kernels run on device arrays as they are (the CuPy backend's table picks them).

CONV1D_GRID = list(itertools.product(
    [1, 3, 4],  # kernel
    [1, 2],  # stride
    [0, 1, (2, 0)],  # pad
    [1, 2],  # dilation
    [1, 2],  # groups
))


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv1d_matches_numpy(device, rng, dtype):
    for k, stride, pad, dilation, groups in CONV1D_GRID:
        x = rng.standard_normal((2, 4, 11)).astype(dtype)
        w = rng.standard_normal((6, 4 // groups, k)).astype(dtype)
        b = rng.standard_normal(6).astype(dtype)
        attrs = dict(stride=stride, pad=pad, dilation=dilation, groups=groups)
        close(device, run(device, conv.gpu_conv1d, x, w, b, **attrs),
              conv.conv1d(x, w, b, **attrs))


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv1d_epilogue_and_out_slices(device, rng, dtype):
    x = rng.standard_normal((2, 4, 9)).astype(dtype)
    w = rng.standard_normal((4, 1, 3)).astype(dtype)  # depthwise: CONV2D's direct kernel
    b = rng.standard_normal(4).astype(dtype)
    scale = (rng.random(4) + 0.5).astype(dtype)
    for act in (None, "relu", ("leaky_relu", {"alpha": 0.2})):
        attrs = dict(stride=2, pad=1, dilation=1, groups=4, act=act)
        want = conv.conv1d(x, w, b, scale=scale, **attrs)
        close(device, run(device, conv.gpu_conv1d, x, w, b, scale=scale, **attrs), want)
        wide = device.put(np.full((2, 6) + want.shape[2:], 7.0, dtype=dtype))
        part = wide[:, 1:5]
        got = conv.gpu_conv1d(device.put(x), device.put(w), device.put(b), out=part,
                              scale=device.put(scale), **attrs)
        assert got is part
        close(device, part, want)
        edges = device.get(wide)
        assert (edges[:, :1] == 7).all() and (edges[:, 5:] == 7).all()


def test_conv1d_errors_match_numpy(device, rng):
    x = rng.standard_normal((2, 4, 5))
    w = rng.standard_normal((6, 4, 7))
    same_error(device, conv.conv1d, conv.gpu_conv1d, [x, w, None], {})
    same_error(device, conv.conv1d, conv.gpu_conv1d, [x, w[:, :3, :3], None], {})
    same_error(device, conv.conv1d, conv.gpu_conv1d, [x[:, :, None], w, None], {})


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("train", [True, False])
def test_nd_grads_match_the_numpy_pair(device, rng, dtype, train):
    """conv1d's GPU pair and conv3d's generic pair on device arrays, against NumPy."""
    from cnnc.runtime import cupy_backend
    from cnnc.ops import Op

    cases = [
        (Op.CONV1D, rng.standard_normal((3, 4, 10)), rng.standard_normal((6, 2, 3)),
         dict(stride=2, pad=(1, 0), dilation=2, groups=2, act=None)),
        (Op.CONV1D, rng.standard_normal((3, 4, 10)), rng.standard_normal((4, 1, 3)),
         dict(stride=1, pad=1, dilation=1, groups=4, act=None)),
        (Op.CONV3D, rng.standard_normal((2, 4, 5, 6, 4)), rng.standard_normal((6, 2, 3, 2, 1)),
         dict(stride=(1, 2, 1), pad=(1, 0, 0), dilation=(2, 1, 1), groups=2, act=None)),
        (Op.CONV3D, rng.standard_normal((2, 4, 5, 6, 4)), rng.standard_normal((4, 1, 3, 3, 3)),
         dict(stride=2, pad=1, dilation=1, groups=4, act=None)),
    ]
    for op, x, w, attrs in cases:
        x, w = x.astype(dtype), w.astype(dtype)
        b = rng.standard_normal(w.shape[0]).astype(dtype)
        p = conv.CONV1D_PRIMITIVE if op is Op.CONV1D else conv.CONV3D_PRIMITIVE
        y_ref, saved_ref = p.forward(x, w, b, train=train, rng=None, **attrs)
        dy = rng.standard_normal(y_ref.shape).astype(dtype)
        gxs_ref, gps_ref = p.backward(saved_ref, dy)
        forward, backward = cupy_backend.GRADS[op]
        y, saved = forward(device.put(x), device.put(w), device.put(b), train=train, rng=None,
                           **attrs)
        d_dy = device.put(dy)
        gxs, gps = backward(saved, d_dy)
        close(device, y, y_ref)
        for mine, ref in zip(list(gxs) + list(gps), list(gxs_ref) + list(gps_ref)):
            close(device, mine, ref)
            assert not device.xp.shares_memory(mine, d_dy)
        close(device, cupy_backend.KERNELS[op](device.put(x), device.put(w), device.put(b),
                                                **attrs), y_ref)
