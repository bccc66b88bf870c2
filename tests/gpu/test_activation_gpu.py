"""The activation family's GPU side (ops/activation.py): the ACTIVATION kernel and training
pair, the epilogue helpers conv and dense use (``bias_act``, ``act_backward``, the
``ActSpec`` normalisation), and softmax and maxout run by their NumPy-API kernels on device
arrays. Against the NumPy kernels and a finite-difference oracle.

Every device test takes the ``device`` fixture (``conftest.py``): ``cupy`` on a CUDA device
(marked ``gpu``), ``emulated`` the same CUDA text compiled for the CPU on NumPy arrays.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from cnnc.ops import activation as A
from cnnc.ops import cuda_kernels

DTYPES = [np.float32, np.float64]
TOLERANCES = {
    np.dtype(np.float32): dict(rtol=1e-4, atol=1e-4),
    np.dtype(np.float64): dict(rtol=1e-9, atol=1e-10),
}
# float64 against an oracle that takes finite differences (step 1e-6)
FD_FLOAT64 = dict(rtol=1e-6, atol=1e-7)


def close(device, actual, expected, dtype=None, fd=False):
    """``actual`` (on the device) equals ``expected`` within the tolerance of ``dtype``,
    scaled to the size of the values."""
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


def put(device, *arrays):
    return [None if a is None else device.put(a) for a in arrays]


def distinct(rng, shape, dtype=np.float64):
    """Values 0.01 apart in random order: no ties, nothing near a kink."""
    n = int(np.prod(shape))
    return ((rng.permutation(n) - n / 2 + 0.5) * 0.01).reshape(shape).astype(dtype)


def _activation_calls(rng, channels):
    """``(name, alpha, beta, weight)`` for every activation, defaults and arguments."""
    calls = [(name, None, None, None) for name in A.ACTIVATIONS if name != "prelu"]
    calls += [("leaky_relu", 0.2, None, None), ("leaky_relu", 1.5, None, None),
              ("leaky_relu", -0.3, None, None), ("elu", 0.5, None, None),
              ("swish", None, 1.7, None), ("silu", None, 0.0, None),
              ("prelu", None, None, rng.uniform(-0.5, 0.5, channels)),
              ("prelu", None, None, np.array([0.25]))]
    return calls


# ================================================================ host logic (no device)


def test_act_spec_defaults_and_codes():
    codes = cuda_kernels.ACTIVATION_CODES
    assert A.act_spec(None).identity
    assert A.act_spec("relu").code == codes["relu"]
    assert A.act_spec("leaky_relu").alpha == 0.01
    assert A.act_spec(("leaky_relu", {"alpha": 0.3})).alpha == 0.3
    assert A.act_spec("elu").alpha == 1.0
    assert A.act_spec("swish").beta == 1.0
    assert A.act_spec(("silu", {"beta": 2.0})).code == codes["swish"]
    assert A.act_spec(("silu", {"beta": 2.0})).beta == 2.0
    slopes = np.ones(3)
    assert A.act_spec(("prelu", {"weight": slopes})).weight is slopes
    assert A.act_spec(("relu", None)).code == codes["relu"]
    assert A.act_spec(("relu", {"weight": slopes})).weight is None  # only prelu keeps one
    for name in A.ACTIVATIONS:
        weight = slopes if name == "prelu" else None
        spec = A.make_act_spec(name, weight=weight)
        assert spec.code == codes[name] and spec.identity == (name == "identity"), name
        assert isinstance(spec.alpha, float) and isinstance(spec.beta, float)


def test_act_spec_errors_match_the_numpy_kernels():
    x = np.zeros((2, 3))
    for args in [dict(name="bogus"), dict(name="prelu")]:
        with pytest.raises(ValueError) as numpy_error:
            A.activation(x, **args)
        with pytest.raises(ValueError) as ours:
            A.make_act_spec(args["name"])
        assert str(ours.value) == str(numpy_error.value)


def test_act_args_are_what_the_kernels_take():
    spec = A.act_spec(("leaky_relu", {"alpha": 0.2}))
    code, alpha, beta, slopes, n_slopes = A.act_args(spec, (2, 3, 4), np.dtype(np.float32),
                                                     np)
    assert (code, alpha, beta, n_slopes) == (cuda_kernels.ACTIVATION_CODES["leaky_relu"],
                                             0.2, 0.0, 1)
    assert slopes.dtype == np.float32 and slopes.size == 1
    spec = A.act_spec(("prelu", {"weight": [0.1, 0.2, 0.3]}))
    *_, slopes, n_slopes = A.act_args(spec, (2, 3, 4), np.dtype(np.float64), np)
    np.testing.assert_array_equal(slopes, [0.1, 0.2, 0.3])
    assert n_slopes == 3 and slopes.flags.c_contiguous
    with pytest.raises(ValueError, match=r"prelu: weight has 3 slopes, expected 1 or 4"):
        A.act_args(spec, (2, 4), np.dtype(np.float64), np)


def test_refuse_fused_prelu():
    A.refuse_fused_prelu(A.act_spec("relu"), "conv2d")
    with pytest.raises(ValueError, match=r"^dense: a fused prelu has trainable slopes"):
        A.refuse_fused_prelu(A.act_spec(("prelu", {"weight": np.ones(2)})), "dense")


# ================================================================ the ACTIVATION kernel


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (4, 6), (7,)])
def test_activation_matches_numpy(device, rng, dtype, shape):
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    flat = x.reshape(-1)
    flat[:6] = [0.0, -0.0, 80.0, -80.0, 1000.0, -1000.0][:flat.size]  # no overflow
    channels = shape[1] if len(shape) > 1 else 1
    for name, alpha, beta, weight in _activation_calls(rng, channels):
        attrs = dict(name=name, alpha=alpha, beta=beta)
        expected = A.activation(x, weight, **attrs)
        actual = A.gpu_activation(*put(device, x, weight), **attrs)
        close(device, actual, expected)
        assert np.isfinite(device.get(actual)).all(), name


def test_activation_leaves_its_input_and_handles_integers(device, rng):
    x = device.put(rng.standard_normal((2, 3)))
    before = device.get(x).copy()
    A.gpu_activation(x, name="relu")
    np.testing.assert_array_equal(device.get(x), before)
    ints = rng.integers(-5, 5, (3, 4))
    close(device, A.gpu_activation(device.put(ints), name="sigmoid"),
          A.activation(ints, name="sigmoid"), np.float64)


def test_activation_errors_match_numpy(device, rng):
    x = rng.standard_normal((2, 3, 4))
    for weight, name in [(np.ones(2), "prelu"), (None, "prelu"), (None, "bogus")]:
        with pytest.raises(ValueError) as numpy_error:
            A.activation(x, weight, name=name)
        with pytest.raises(ValueError) as device_error:
            A.gpu_activation(*put(device, x, weight), name=name)
        assert str(device_error.value) == str(numpy_error.value)


@pytest.mark.parametrize("dtype", DTYPES)
def test_out_is_written_contiguous_or_as_a_channel_slice(device, rng, dtype):
    x = rng.standard_normal((2, 4, 3, 3)).astype(dtype)
    for name, alpha, beta, weight in _activation_calls(rng, 4):
        attrs = dict(name=name, alpha=alpha, beta=beta)
        expected = A.activation(x, weight, **attrs)
        shape = expected.shape
        # a C-contiguous target: written directly and returned
        out = device.put(np.full(shape, np.nan, dtype=dtype))
        y = A.gpu_activation(*put(device, x, weight), out=out, **attrs)
        assert y is out, name
        close(device, out, expected)
        # a channel slice of a larger buffer (a concat's input), not C-contiguous
        wide = device.put(np.full((shape[0], shape[1] + 3) + shape[2:], 7.0, dtype=dtype))
        part = wide[:, 1:1 + shape[1]]
        A.gpu_activation(*put(device, x, weight), out=part, **attrs)
        close(device, part, expected)
        edges = device.get(wide)
        assert (edges[:, :1] == 7).all() and (edges[:, 1 + shape[1]:] == 7).all(), name
        # a target of the wrong dtype
        other = np.float64 if dtype == np.float32 else np.float32
        with pytest.raises(ValueError, match="out must be"):
            A.gpu_activation(*put(device, x, weight), out=device.put(np.empty(shape, other)),
                             **attrs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_in_place_activation(device, rng, dtype):
    arrays = rng.standard_normal((2, 4, 3, 3)).astype(dtype)
    for name, alpha, beta, weight in _activation_calls(rng, 4):
        attrs = dict(name=name, alpha=alpha, beta=beta)
        expected = A.activation(arrays, weight, **attrs)
        x, w = put(device, arrays.copy(), weight)
        y = A.gpu_activation(x, w, out=x, **attrs)
        assert y is x
        close(device, x, expected)
        # in place on a non-contiguous view: a channel slice of a larger buffer
        wide = device.put(np.zeros((2, 6, 3, 3), dtype=dtype))
        view = wide[:, 2:]
        view[...] = device.put(arrays)
        A.gpu_activation(view, w, out=view, **attrs)
        close(device, view, expected)
        assert (device.get(wide)[:, :2] == 0).all()


# ================================================================ the epilogue helpers


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 5, 3, 4), (3, 5)])
def test_bias_act_adds_the_bias_then_activates(device, rng, dtype, shape):
    """The fused epilogue of conv and dense: ``act(x + bias[c])``, in place or not."""
    x = (rng.standard_normal(shape) * 2).astype(dtype)
    bias = rng.standard_normal(5).astype(dtype)
    per_channel = (5,) + (1,) * (len(shape) - 2)
    for name, alpha, beta, weight in _activation_calls(rng, 5):
        params = dict(alpha=alpha, beta=beta, weight=weight)
        expected = A.apply_act_(x + bias.reshape(per_channel), (name, params))
        dx, db = put(device, x.copy(), bias)
        dparams = dict(params, weight=None if weight is None else device.put(weight))
        spec = A.act_spec((name, dparams))
        y = A.bias_act(dx, device.xp.empty_like(dx), db, spec, device.xp)
        close(device, y, expected)
        close(device, dx, x)  # untouched
        assert A.bias_act(dx, dx, db, spec, device.xp) is dx  # in place
        close(device, dx, expected)
    dx = device.put(x.copy())
    assert A.bias_act(dx, dx, None, A.act_spec(None), device.xp) is dx  # nothing to do
    close(device, dx, x)


def act_derivative(act, z):
    """``act'(z)`` by central differences of the NumPy activation, in float64."""
    z = np.asarray(z, dtype=np.float64)
    name, params = act
    h = 1e-6
    plus = A.apply_act_(z + h, (name, params))
    minus = A.apply_act_(z - h, (name, params))
    return (plus - minus) / (2 * h)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (4, 6)])
def test_act_backward_matches_oracle(device, rng, dtype, shape):
    x = distinct(rng, shape, dtype) * 5  # -3 .. 3, kinks avoided
    dy = rng.standard_normal(shape).astype(dtype)
    for name, alpha, beta, weight in _activation_calls(rng, shape[1]):
        params = dict(alpha=alpha, beta=beta, weight=weight)
        spec = A.act_spec((name, dict(params, weight=None if weight is None
                                      else device.put(weight))))
        gx = A.act_backward(device.put(dy), device.put(x), spec, device.xp)
        close(device, gx, dy * act_derivative((name, params), x), dtype, fd=True)


# ================================================================ training


def train_step(device, inputs, params, attrs, dy):
    """Forward with ``train=True`` and backward on the device; NumPy results back."""
    put_arrays = put(device, *inputs, *params)
    y, saved = A.gpu_activation_forward(*put_arrays, train=True, rng=None, **attrs)
    gxs, gps = A.gpu_activation_backward(saved, device.put(dy))
    return device.get(y), [device.get(g) for g in gxs], [device.get(g) for g in gps]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (4, 6)])
def test_activation_grads_match_oracle(device, rng, dtype, shape):
    x = distinct(rng, shape, dtype) * 5  # -3 .. 3, kinks avoided
    dy = rng.standard_normal(shape).astype(dtype)
    for name, alpha, beta, weight in _activation_calls(rng, shape[1]):
        attrs = dict(name=name, alpha=alpha, beta=beta)
        params = [] if weight is None else [weight.astype(dtype)]
        y, (gx,), gps = train_step(device, [x], params, attrs, dy)
        close(device, y, A.activation(x, weight, **attrs))
        act = (name, dict(alpha=alpha, beta=beta, weight=weight))
        close(device, gx, dy * act_derivative(act, x), dtype, fd=True)
        if weight is None:
            assert gps == []
            continue
        contrib = dy.astype(np.float64) * np.minimum(x, 0)
        if weight.size == 1:
            expected_w = contrib.sum().reshape(weight.shape)
        else:
            expected_w = contrib.sum(axis=(0,) + tuple(range(2, x.ndim)))
        close(device, gps[0], expected_w, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_grads_match_the_numpy_pair(device, rng, dtype):
    x = distinct(rng, (2, 3, 2, 2), dtype) * 5
    dy = rng.standard_normal(x.shape).astype(dtype)
    for name, alpha, beta, weight in _activation_calls(rng, 3):
        attrs = dict(name=name, alpha=alpha, beta=beta)
        params = [] if weight is None else [weight.astype(dtype)]
        y_ref, saved = A.activation_forward(x, *params, **attrs)
        gxs_ref, gps_ref = A.activation_backward(saved, dy)
        y, gxs, gps = train_step(device, [x], params, attrs, dy)
        close(device, y, y_ref)
        for g, want in zip(gxs + gps, list(gxs_ref) + list(gps_ref)):
            close(device, g, want)


def test_backward_checks_the_shape_of_dy(device, rng):
    x = device.put(rng.standard_normal((2, 3, 6, 6)))
    y, saved = A.gpu_activation_forward(x, train=True, rng=None, name="tanh", alpha=None,
                                        beta=None)
    bad = device.put(np.zeros((1,) + tuple(y.shape)[1:]))
    with pytest.raises(ValueError, match="dy must have the forward output's shape"):
        A.gpu_activation_backward(saved, bad)


# ================================================================ softmax and maxout on device


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_and_maxout_run_on_device_arrays(device, rng, dtype):
    """Their NumPy-API kernels and training pairs, with device arrays."""
    x = rng.standard_normal((2, 6, 3, 4)).astype(dtype)
    cases = [
        (A.softmax, A.softmax_forward, A.softmax_backward, x, dict(axis=1)),
        (A.softmax, A.softmax_forward, A.softmax_backward, x[:, :, 0, 0], dict(axis=1)),
        (A.maxout, A.maxout_forward, A.maxout_backward, x, dict(k=3)),
        (A.maxout, A.maxout_forward, A.maxout_backward, x[:, :, 0, 0], dict(k=2)),
    ]
    for kernel, forward, backward, arr, attrs in cases:
        close(device, kernel(device.put(np.ascontiguousarray(arr)), **attrs),
              kernel(arr, **attrs))
        y_ref, saved_ref = forward(arr, **attrs)
        dy = rng.standard_normal(y_ref.shape).astype(dtype)
        (gx_ref,), _ = backward(saved_ref, dy)
        y, saved = forward(device.put(np.ascontiguousarray(arr)), **attrs)
        (gx,), gws = backward(saved, device.put(dy))
        assert gws == ()
        close(device, y, y_ref)
        close(device, gx, gx_ref)


# ================================================================ hardsigmoid, hardswish, gelu,
# mish (spec section 9)

NEW = ["hardsigmoid", "hardswish", "gelu", "gelu_tanh", "mish"]


def edge_grid(dtype):
    """Through every kink (-3, 0, 3, on a grid of 1/64) and out to the tails and beyond."""
    grid = np.arange(-512, 513) / 64.0
    far = [-1000.0, -100.0, -40.0, -30.0, -20.0, -10.0, 10.0, 20.0, 40.0, 100.0, 1000.0]
    return np.concatenate([grid, far]).reshape(4, -1).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NEW)
def test_new_activations_match_numpy_at_the_edges(device, dtype, name):
    """The CUDA code of each against the NumPy kernel and its backward: forward, and the
    gradient with PyTorch's choice at the kinks (the same zeros)."""
    x = edge_grid(dtype)
    dy = np.random.default_rng(5).standard_normal(x.shape).astype(dtype)
    y, (gx,), _ = train_step(device, [x], [], dict(name=name, alpha=None, beta=None), dy)
    y_ref, saved = A.activation_forward(x, name=name)
    (gx_ref,), _ = A.activation_backward(saved, dy)
    close(device, y, y_ref)
    close(device, gx, gx_ref)
    assert np.isfinite(y).all() and np.isfinite(gx).all()
    if name.startswith("hard"):
        np.testing.assert_array_equal(gx == 0, gx_ref == 0)
    # the fused epilogue's backward is the same function
    spec = A.act_spec(name)
    close(device, A.act_backward(device.put(dy), device.put(x), spec, device.xp), gx_ref)


def test_gelu_keeps_its_left_tail_on_device(device):
    """x Phi(x) from erfc in the CUDA code too: tiny negative values keep their digits."""
    x = np.array([[-30.0, -20.0, -10.0, -5.0, -1.0, 0.0, 1.0, 5.0]])
    want = [0.5 * v * math.erfc(-v / math.sqrt(2)) for v in x[0]]
    got = device.get(A.gpu_activation(device.put(x), name="gelu"))
    np.testing.assert_allclose(got[0], want, rtol=1e-12, atol=0)
    got = device.get(A.gpu_activation(device.put(x), name="gelu_tanh"))
    want = []
    for v in x[0]:
        e = math.exp(-2 * abs(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))
        want.append(v / (1 + e) if v >= 0 else v * e / (1 + e))  # v sigmoid(2u)
    np.testing.assert_allclose(got[0], want, rtol=1e-12, atol=0)


def test_new_activation_codes_are_distinct():
    codes = [cuda_kernels.ACTIVATION_CODES[name] for name in NEW]
    assert len(set(codes)) == len(NEW)
    assert not set(codes) & {cuda_kernels.ACTIVATION_CODES[n] for n in A.ACTIVATIONS
                             if n not in NEW}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NEW)
def test_new_activations_as_conv_and_dense_epilogues(device, rng, dtype, name):
    """conv2d (im2col and depthwise) and dense with the activation fused, on the device,
    against the NumPy kernels."""
    from cnnc.ops import conv, linear

    act = (name, {"alpha": None, "beta": None})
    x = (2 * rng.standard_normal((2, 4, 6, 5))).astype(dtype)
    for groups, kernel in [(1, 3), (4, 3)]:
        w = rng.standard_normal((8, 4 // groups, kernel, kernel)).astype(dtype)
        b = rng.standard_normal(8).astype(dtype)
        attrs = dict(stride=1, pad=1, groups=groups, act=act)
        expected = conv.conv2d(x, w, b, **attrs)
        close(device, conv.gpu_conv2d(*put(device, x, w, b), **attrs), expected)
    x = (2 * rng.standard_normal((3, 7))).astype(dtype)
    w = rng.standard_normal((5, 7)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    close(device, linear.gpu_dense(*put(device, x, w, b), act=act),
          linear.dense(x, w, b, act=act))
