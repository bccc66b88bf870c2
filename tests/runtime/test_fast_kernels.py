"""The compiled CPU kernels (ops/fast.py) against the NumPy-API kernels they sit beside and
the loop reference: depthwise convolutions forward (every epilogue) and backward, the
direct kernel on a few input channels per group (RGB stems), and the
GEMM convolutions with the compiled kernels on and off, over parameter grids that reach the edges (one-sided
and oversized padding, strides past the kernel, dilation, channel multipliers, non-square
kernels, output into a channel slice)."""

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

from cnnc.ops import conv
from cnnc.ops.conv import conv2d, conv2d_backward, conv2d_forward, reference_conv2d

fast = pytest.importorskip("cnnc.ops.fast")
pytestmark = pytest.mark.skipif(not fast.ENABLED, reason="numba not installed or CNNC_FAST=0")


@pytest.fixture
def numpy_only(monkeypatch):
    """Run the NumPy-API kernels: the compiled ones off."""

    def off():
        monkeypatch.setattr(fast, "ENABLED", False)

    return off


# (channels, multiplier, (H, W), kernel, stride, pad (top, bottom, left, right), dilation)
DEPTHWISE = [
    (3, 1, (7, 6), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    (4, 1, (8, 8), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    (2, 2, (9, 8), (3, 2), (2, 1), (0, 2, 1, 0), (1, 2)),
    (3, 1, (7, 7), (5, 5), (3, 3), (2, 0, 0, 2), (2, 2)),
    (2, 3, (5, 6), (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
    (2, 1, (4, 5), (3, 3), (1, 2), (3, 3, 4, 4), (1, 1)),  # padding wider than the kernel
    (5, 1, (1, 9), (1, 5), (1, 3), (0, 0, 2, 2), (1, 1)),  # a conv1d, seen as height 1
]
ACTS = [None, "relu", ("leaky_relu", {"alpha": 0.2, "beta": None}), "elu", "sigmoid",
        "tanh", ("silu", {}), "relu6", "hardsigmoid", "hardswish",
        "gelu"]  # gelu: not compiled, applied after by NumPy


def _case(rng, case, dtype=np.float64):
    c, per, hw, kernel, stride, pad, dilation = case
    x = rng.standard_normal((2, c) + hw).astype(dtype) * 3
    w = rng.standard_normal((c * per, 1) + kernel).astype(dtype)
    b = rng.standard_normal(c * per).astype(dtype)
    attrs = dict(stride=stride, pad=pad, dilation=dilation, groups=c)
    return x, w, b, attrs


@pytest.mark.parametrize("case", DEPTHWISE)
def test_depthwise_forward_matches_the_reference_and_numpy(case, numpy_only):
    rng = np.random.default_rng(0)
    x, w, b, attrs = _case(rng, case)
    scale = rng.standard_normal(w.shape[0])
    for act, with_bias, with_scale in itertools.product(ACTS, (True, False), (True, False)):
        bias = b if with_bias else None
        gain = scale if with_scale else None
        got = conv2d(x, w, bias, act=act, scale=gain, **attrs)
        z = reference_conv2d(x, w, None, **attrs)
        if gain is not None:
            z = z * gain[:, None, None]
        if bias is not None:
            z = z + bias[:, None, None]
        want = conv.reference_act(z, act)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10, err_msg=str(act))
    compiled = conv2d(x, w, b, act="hardswish", scale=scale, **attrs)
    numpy_only()
    np.testing.assert_allclose(compiled, conv2d(x, w, b, act="hardswish", scale=scale, **attrs),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", DEPTHWISE)
def test_depthwise_backward_matches_numpy(case, numpy_only):
    rng = np.random.default_rng(1)
    x, w, b, attrs = _case(rng, case)
    y, saved = conv2d_forward(x, w, b, **attrs)
    dy = rng.standard_normal(y.shape)
    (gx,), (gw, gb) = conv2d_backward(saved, dy)
    numpy_only()
    y2, saved2 = conv2d_forward(x, w, b, **attrs)
    (gx2,), (gw2, gb2) = conv2d_backward(saved2, dy)
    np.testing.assert_allclose(y, y2, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gx, gx2, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gw, gw2, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gb, gb2, rtol=1e-10, atol=1e-12)
    assert gx.shape == x.shape and gw.shape == w.shape


# A few input channels per group: (input channels, output channels, groups, (H, W), kernel,
# stride, pad, dilation). conv2d takes the ungrouped ones to the direct kernel
# (ops/conv.DIRECT_CHANNELS); the kernel itself takes the grouped ones too.
FEW_CHANNELS = [
    (3, 8, 1, (11, 10), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),  # an RGB stem
    (2, 5, 1, (9, 9), (5, 5), (1, 1), (2, 2, 2, 2), (1, 1)),
    (3, 4, 1, (70, 67), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),  # three bands, the last short
    (4, 6, 2, (8, 7), (3, 3), (1, 2), (0, 2, 1, 0), (2, 1)),  # 2 per group, dilated
    (8, 4, 2, (6, 9), (1, 5), (1, 3), (0, 0, 2, 2), (1, 1)),  # 4 per group, a conv1d's shape
    (6, 9, 3, (10, 11), (3, 3), (3, 3), (0, 4, 4, 0), (2, 2)),  # one-sided wide padding
    (1, 3, 1, (5, 5), (3, 3), (3, 3), (4, 4, 4, 4), (1, 1)),  # padding wider than the kernel
]


def _few_channels(case, dtype=np.float64):
    c, o, groups, hw, kernel, stride, pad, dilation = case
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((3, c) + hw) * 3).astype(dtype)
    w = rng.standard_normal((o, c // groups) + kernel).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    scale = rng.standard_normal(o).astype(dtype)
    gate = rng.standard_normal((3, o, 1, 1)).astype(dtype)
    return x, w, b, scale, gate, dict(stride=stride, pad=pad, dilation=dilation, groups=groups)


@pytest.mark.parametrize("case", FEW_CHANNELS)
def test_few_channel_direct_kernel_matches_the_reference(case):
    x, w, b, scale, gate, attrs = _few_channels(case)
    z = reference_conv2d(x, w, None, **attrs) * scale[:, None, None] + b[:, None, None]
    pads = conv.pads4(attrs["pad"])
    for act in ("relu6", "hardswish", None):  # (exp activations: float32 only)
        out = np.full(z.shape, np.nan)
        done = fast.direct_conv2d(x, w, b, scale, act, out, attrs["stride"], pads,
                                  attrs["dilation"], gate[:, :, 0, 0])
        assert done
        np.testing.assert_allclose(out, conv.reference_act(z, act) * gate, rtol=1e-10,
                                   atol=1e-10, err_msg=str(act))


@pytest.mark.parametrize("case", [c for c in FEW_CHANNELS if c[2] == 1])
def test_few_channel_convolution_compiled_and_numpy_agree(case, numpy_only):
    x, w, b, scale, gate, attrs = _few_channels(case, np.float32)
    compiled = conv2d(x, w, b, act="hardswish", scale=scale, gate=gate, **attrs)
    numpy_only()
    plain = conv2d(x, w, b, act="hardswish", scale=scale, gate=gate, **attrs)
    # float32 sums of 27 to 50 products in another order: relative to the largest output
    np.testing.assert_allclose(compiled, plain, rtol=1e-5, atol=2e-6 * np.abs(plain).max())


def test_few_channel_direct_convolution_is_taken(monkeypatch):
    """The stem shapes go to the direct kernel, wider kernels and more channels do not; at
    a stride of 2, where the compiled tiles run, the stem goes to ops/patches.py instead."""
    from cnnc.ops import patches

    taken = []
    real = fast.direct_conv2d

    def spy(x, w, *args, **kwargs):
        taken.append(tuple(w.shape))
        return real(x, w, *args, **kwargs)

    monkeypatch.setattr(fast, "direct_conv2d", spy)
    x = np.ones((1, 3, 12, 12), np.float32)
    stem = np.ones((4, 3, 3, 3), np.float32)
    conv2d(x, stem, None, stride=1, pad=1)
    conv2d(x, stem, None, stride=2, pad=1)
    conv2d(x, np.ones((4, 3, 7, 7), np.float32), None, stride=2, pad=3)
    conv2d(np.ones((1, 8, 12, 12), np.float32), np.ones((4, 8, 3, 3), np.float32), None)
    conv2d(np.ones((1, 8, 12, 12), np.float32), np.ones((4, 4, 3, 3), np.float32), None,
           groups=2)  # grouped: a GEMM
    strided = patches.applies(x, stem, (2, 2), None, None)
    assert taken == [(4, 3, 3, 3)] * (1 if strided else 2)


def test_depthwise_float32_and_a_channel_slice_as_output():
    rng = np.random.default_rng(2)
    x, w, b, attrs = _case(rng, DEPTHWISE[1], np.float32)
    want = reference_conv2d(x, w, b, **attrs)
    whole = np.full((2, 9) + want.shape[2:], 7.0, dtype=np.float32)
    got = conv2d(x, w, b, out=whole[:, 3:7], **attrs)
    assert got.dtype == np.float32
    np.testing.assert_allclose(whole[:, 3:7], want, rtol=1e-5, atol=1e-5)
    assert (whole[:, :3] == 7).all() and (whole[:, 7:] == 7).all()


def test_depthwise_propagates_nan_and_inf_as_numpy_does(numpy_only):
    rng = np.random.default_rng(3)
    x, w, b, attrs = _case(rng, DEPTHWISE[0])
    x[0, 1, 2, 3] = np.nan
    x[1, 0, 0, 0] = np.inf
    got = conv2d(x, w, b, act="relu", **attrs)
    numpy_only()
    want = conv2d(x, w, b, act="relu", **attrs)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


# The GEMM convolutions' epilogue runs compiled where the activation is compiled, else in
# NumPy: the results, gate and scale included, must not depend on which.
GEMM = [
    dict(c=3, o=4, k=(3, 3), stride=1, pad=(1, 1, 1, 1), groups=1),
    dict(c=4, o=6, k=(2, 3), stride=(2, 1), pad=(0, 2, 1, 0), groups=2, dilation=(1, 2)),
    dict(c=4, o=6, k=(1, 1), stride=1, pad=0, groups=1),
    dict(c=4, o=6, k=(1, 1), stride=2, pad=0, groups=2),
]


@pytest.mark.parametrize("case", GEMM)
@pytest.mark.parametrize("shifted", [True, False])
def test_gemm_epilogue_matches_numpy(case, shifted, numpy_only, monkeypatch):
    monkeypatch.setattr(conv, "SHIFTED", shifted)
    rng = np.random.default_rng(4)
    case = dict(case)
    c, o, k = case.pop("c"), case.pop("o"), case.pop("k")
    x = rng.standard_normal((3, c, 7, 6))
    w = rng.standard_normal((o, c // case["groups"]) + k)
    b = rng.standard_normal(o)
    scale = rng.standard_normal(o)
    got = [(act, conv2d(x, w, b, act=act, scale=scale, **case)) for act in ACTS[:6]]
    plain = conv2d(x, w, None, **case)
    numpy_only()
    for act, y in got:
        np.testing.assert_allclose(y, conv2d(x, w, b, act=act, scale=scale, **case),
                                   rtol=1e-10, atol=1e-12, err_msg=str(act))
    np.testing.assert_allclose(plain, conv2d(x, w, None, **case), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_epilogue_of_one_value_per_channel_matches_numpy(dtype, numpy_only):
    """A squeeze-and-excitation's 1x1 convolutions (a 1x1 map) take the flat path of the
    compiled epilogue: scale, bias, activation and gate as the per-row path gives them."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 5, 1, 1)).astype(dtype)
    w = rng.standard_normal((7, 5, 1, 1)).astype(dtype)
    b = rng.standard_normal(7).astype(dtype)
    scale = rng.standard_normal(7).astype(dtype)
    gate = rng.random((3, 7, 1, 1)).astype(dtype)
    got = [(act, conv2d(x, w, b, act=act, scale=scale, gate=gate)) for act in ACTS]
    src = rng.standard_normal((3, 7, 1, 1)).astype(dtype)
    into = np.empty_like(src)
    assert fast.epilogue_(into, src, scale, b, "relu", gate.reshape(3, 7))
    numpy_only()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    for act, y in got:
        np.testing.assert_allclose(y, conv2d(x, w, b, act=act, scale=scale, gate=gate), **tol,
                                   err_msg=str(act))
    np.testing.assert_allclose(into, np.maximum(src * scale[:, None, None] + b[:, None, None],
                                                0) * gate, **tol)


def test_a_borrowed_array_lives_while_kept():
    """`fast.borrow` makes a view that holds no reference: numba frees the array after
    its last use unless `fast.keep` uses it later (here the next allocation would take
    its memory)."""
    numba = pytest.importorskip("numba")

    @numba.njit
    def kept(n):
        owner = np.zeros(n)
        view = fast.borrow(owner)
        other = np.ones(n)
        value = view[0] + other[0] * 0
        fast.keep(owner)
        return value

    assert kept(1000) == 0.0


def test_usable_only_for_numpy_float_arrays_of_one_dtype():
    f32 = np.zeros(3, np.float32)
    assert fast.usable(f32, None, np.ones(2, np.float32))
    assert not fast.usable(f32, np.zeros(3))  # float32 with float64
    assert not fast.usable(np.zeros(3, np.int64))
    assert not fast.usable(np.zeros(3, np.float16))
    assert fast.act_code(("prelu", {"weight": np.ones(1)})) is None
    assert fast.act_code("gelu") is None
    assert fast.act_code(("leaky_relu", {"alpha": None}))[1] == 0.01


def test_check_never_imports_numba(tmp_path):
    """`cnnc check` (and building the CLI's parser) stays clear of numba: the op families
    import ops/fast.py inside their kernels only."""
    code = ("import sys; from cnnc.cli import main; rc = main(['check', sys.argv[1]]); "
            "assert 'numba' not in sys.modules and 'cnnc.ops.fast' not in sys.modules, "
            "sorted(m for m in sys.modules if 'numba' in m)[:5]; sys.exit(rc)")
    example = os.path.join(os.path.dirname(conv.__file__), "..", "examples", "resnet18.cnn")
    done = subprocess.run([sys.executable, "-c", code, example], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


# ---- sigmoid and swish in float32: ops/fast.py's vectorised exp ------------------------------

# Values at the edges of float32's exp: overflow, underflow, the clamps, NaN, infinities, signed
# zeros, tiny and huge values, then a spread of ordinary ones.
EDGES = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 1e-8, 88.0, 88.72,
                  88.73, 89.0, -87.0, -87.33, -87.34, -88.8, -100.0, 100.0, 3.4e38, -3.4e38,
                  0.5, -0.5, 0.3465735, -0.3465735], dtype=np.float32)
EXP_ACTS = [("sigmoid", None), ("silu", None), ("swish", 1.7), ("swish", -0.25)]


def _spread(rng, size):
    x = (rng.standard_normal(size) * 12).astype(np.float32)
    x[:EDGES.size] = EDGES
    return x


def _float64_reference(x, name, beta):
    """In float64 from the float32 product ``beta * x`` (both kernels round it first)."""
    v = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        bx = v if beta is None else (x * np.float32(beta)).astype(np.float64)
        s = 1 / (1 + np.exp(-bx))
        return s if name == "sigmoid" else v * s


@pytest.mark.parametrize("name,beta", EXP_ACTS)
@pytest.mark.parametrize("size", [4096, 5000, (1 << 14) + 3, 70_001])
def test_compiled_sigmoid_and_swish_match_numpy(name, beta, size, numpy_only):
    from cnnc.ops.activation import activate_

    x = _spread(np.random.default_rng(size), size)
    got = activate_(x.copy(), name, beta=beta)
    numpy_only()
    with np.errstate(over="ignore", invalid="ignore"):
        want = activate_(x.copy(), name, beta=beta)
    exact = _float64_reference(x, name, beta)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    # within a few float32 ulps of the exact value, as NumPy's own passes are; below e**-87.3
    # the compiled exp gives 0 where float32's subnormals would hold a value under 1e-36
    tol = 4e-7 * np.abs(exact[finite]) + 1e-35
    assert (np.abs(got[finite] - exact[finite]) <= tol).all(), name
    assert (np.abs(want[finite] - exact[finite]) <= tol).all(), name
    assert np.array_equal(got[~finite], want[~finite], equal_nan=True)


def test_compiled_activations_leave_other_arrays_to_numpy():
    from cnnc.ops.activation import activate_

    x = _spread(np.random.default_rng(5), 8192).reshape(64, 128)
    strided = x[:, ::2].copy(order="F")[:, :]  # not C-contiguous
    assert not fast.activate_(strided, "silu")
    assert not fast.activate_(x.astype(np.float64), "silu")  # float64: NumPy's exp
    assert not fast.activate_(x, "gelu")
    with np.errstate(over="ignore", invalid="ignore"):  # NumPy's passes meet -inf * 0
        want = activate_(x.astype(np.float64), "silu")
        got = activate_(strided, "silu")
    np.testing.assert_allclose(got, want[:, ::2], rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("case", DEPTHWISE)
def test_depthwise_float32_sigmoid_and_swish_match_numpy(case, numpy_only):
    rng = np.random.default_rng(6)
    x, w, b, attrs = _case(rng, case, np.float32)
    x.reshape(-1)[:3] = [np.nan, np.inf, -np.inf]
    scale = rng.standard_normal(w.shape[0]).astype(np.float32)
    gate = rng.uniform(0.1, 1.0, (x.shape[0], w.shape[0], 1, 1)).astype(np.float32)
    acts = [("sigmoid", {}), ("silu", {}), ("swish", {"beta": 0.5})]
    got = [conv2d(x, w, b, act=act, scale=scale, gate=gate, **attrs) for act in acts]
    numpy_only()
    _same_as_numpy(got, acts, x, w, b, dict(attrs, scale=scale, gate=gate))


def _same_as_numpy(got, acts, x, w, b, attrs):
    """Each of ``got`` (compiled, one per activation) against NumPy's conv2d: NaN in the
    same places, the values within float32's rounding."""
    for act, y in zip(acts, got):
        with np.errstate(over="ignore", invalid="ignore"):
            want = conv2d(x, w, b, act=act, **attrs)
        np.testing.assert_array_equal(np.isnan(y), np.isnan(want), err_msg=str(act))
        np.testing.assert_allclose(y, want, rtol=2e-6, atol=2e-6, err_msg=str(act))


@pytest.mark.parametrize("case", GEMM)
@pytest.mark.parametrize("shifted", [True, False])
def test_gemm_compiled_epilogue_float32_into_a_channel_slice(case, shifted, numpy_only,
                                                              monkeypatch):
    """The one-pass compiled epilogue (scale, bias, activation, gate) of a float32 GEMM
    convolution, written into a channel slice of a larger array, against NumPy's passes."""
    monkeypatch.setattr(conv, "SHIFTED", shifted)
    rng = np.random.default_rng(7)
    case = dict(case)
    c, o, k = case.pop("c"), case.pop("o"), case.pop("k")
    x = rng.standard_normal((3, c, 7, 6)).astype(np.float32)
    x[0, 0, 0, :2] = [np.nan, np.inf]
    w = rng.standard_normal((o, c // case["groups"]) + k).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    scale = rng.standard_normal(o).astype(np.float32)
    gate = rng.uniform(0.1, 1, (3, o, 1, 1)).astype(np.float32)
    acts = [None, "relu", ("leaky_relu", {"alpha": 0.2}), "relu6", "hardswish", "sigmoid",
            ("silu", {}), ("swish", {"beta": 1.5}), "tanh"]
    shape = conv2d(x, w, b, **case).shape
    got = []
    for act in acts:
        whole = np.full((3, o + 3) + shape[2:], 5.0, np.float32)
        conv2d(x, w, b, act=act, scale=scale, gate=gate, out=whole[:, 1:1 + o], **case)
        assert (whole[:, 0] == 5).all() and (whole[:, 1 + o:] == 5).all()
        got.append(whole[:, 1:1 + o])
    numpy_only()
    _same_as_numpy(got, acts, x, w, b, dict(case, scale=scale, gate=gate))


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_direct_kernels_take_a_read_only_input(stride):
    """Inputs from Ray's object store are read-only: the direct forward and the depthwise
    backward take them (through a copy: numba would compile read-only variants)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 9, 9)).astype(np.float32)
    w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    stem = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    frozen = x.copy()
    frozen.setflags(write=False)
    for weights, groups in ((w, 4), (stem, 1)):
        attrs = dict(stride=stride, pad=1, groups=groups)
        np.testing.assert_array_equal(conv2d(frozen, weights, None, **attrs),
                                      conv2d(x, weights, None, **attrs))
    y, saved = conv2d_forward(frozen, w, None, stride=stride, pad=1, groups=4)
    dy = np.ones_like(y)
    (gx,), (gw,) = conv2d_backward(saved, dy)
    (gx2,), (gw2,) = conv2d_backward(conv2d_forward(x, w, None, stride=stride, pad=1,
                                                    groups=4)[1], dy)
    np.testing.assert_array_equal(gx, gx2)
    np.testing.assert_array_equal(gw, gw2)
