"""The conv family (``ops/conv.py``): the ``conv`` layer's shape rule, checks, hints and
lowering, and CONV2D's kernel against the loop reference, PyTorch and finite differences,
over parameter grids; its training pair, chunking, ``out=``, ``scale=``, ONNX emitter and
PyTorch mapping.
"""

from __future__ import annotations

import itertools
import types

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cnnc.compiler.graph import Node
from cnnc.compiler.symbolic import sym
from cnnc.ops import conv
from ops_support import StepGraph

CONV = conv.CONV
CONV2D = conv.CONV2D
conv2d = conv.conv2d
reference = conv.reference_conv2d

DTYPES = [np.float32, np.float64]
# Per computing dtype: float32 kernels sum up to a few hundred products.
TOLERANCES = {
    np.dtype(np.float32): dict(rtol=2e-4, atol=2e-5),
    np.dtype(np.float64): dict(rtol=1e-10, atol=1e-12),
}


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


def assert_close(actual, expected, dtype=None):
    """Same shape, values within the tolerance of the actual array's dtype."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, **TOLERANCES[np.dtype(dtype or actual.dtype)])


def _case(rng, dtype, kernel, groups, batch=2, channels=4, out_channels=6, hw=(7, 6)):
    x = rng.standard_normal((batch, channels) + hw).astype(dtype)
    w = rng.standard_normal((out_channels, channels // groups) + kernel).astype(dtype)
    b = rng.standard_normal(out_channels).astype(dtype)
    return x, w, b


# ---- the layer -------------------------------------------------------------------------------


class Ctx:
    def __init__(self):
        self.errors = []
        self.positive_sizes = []

    def error(self, code, message, notes=(), help=None):
        self.errors.append((code, message, help))

    def positive(self, size, what):
        self.positive_sizes.append((size, what))


def _args(**given):
    args = dict(out=6, kernel=(3, 3), stride=(1, 1), pad=(0, 0), dilation=(1, 1), groups=1,
                bias=True)
    args.update(given)
    return args


def _node(**given):
    return Node("y.conv1", "conv", _args(**given), ["x"], None, "conv(...)")


def test_layer_arguments_and_defaults():
    assert [(a.name, a.kind, a.default) for a in CONV.args[2:]] == [
        ("stride", "pair", 1), ("pad", "cpad", 0), ("dilation", "pair", 1),
        ("groups", "count", 1), ("bias", "bool", True)]
    assert [a.name for a in CONV.args[:2]] == ["out", "kernel"]
    assert CONV.ranks == (3,)
    assert CONV.changes_shape


@pytest.mark.parametrize("shape, args, expected", [
    ((3, 32, 32), _args(out=16, pad=(1, 1)), (16, 32, 32)),
    ((3, 224, 224), _args(out=64, kernel=(7, 7), stride=(2, 2), pad=(3, 3)), (64, 112, 112)),
    ((4, 9, 8), _args(kernel=(2, 3), stride=(2, 3), dilation=(2, 1)), (6, 4, 2)),
    ((4, 7, 8), _args(stride=(2, 3), pad="same"), (6, 4, 3)),
    ((8, 5, 5), _args(out=8, groups=8, pad=(1, 1)), (8, 5, 5)),
])
def test_shape_rule(shape, args, expected):
    ctx = Ctx()
    assert CONV.infer(shape, args, ctx) == expected
    assert not ctx.errors


def test_groups_must_divide_both_channel_counts():
    """An error, but the output shape is still known: checking goes on past it."""
    ctx = Ctx()
    assert CONV.infer((6, 8, 8), _args(out=8, groups=4), ctx) == (8, 6, 6)
    assert ctx.errors == [("E305", "conv groups=4 does not divide the 6 input channels",
                           "6 divides by groups=2 or groups=3 or groups=6")]
    ctx = Ctx()
    assert CONV.infer((8, 8, 8), _args(out=6, groups=4), ctx) == (6, 6, 6)
    assert ctx.errors == [("E305", "conv groups=4 does not divide the 6 output channels",
                           "6 divides by groups=2 or groups=3 or groups=6")]


def test_output_below_one_is_reported():
    ctx = Ctx()
    assert CONV.infer((3, 2, 9), _args(kernel=(5, 5)), ctx) is None
    (code, message, help), = ctx.errors
    assert code == "E301"
    assert message == "conv output height would be -2, below 1: 2 - 5 + 1 = -2"
    assert help.startswith("the input must be at least 5 rows high for this conv; it is 2.")


def test_symbolic_sizes_are_required_positive():
    ctx = Ctx()
    n = sym("n")
    out = CONV.infer((sym("c") * 2, n, 16), _args(kernel=(3, 3), stride=(2, 1)), ctx)
    assert out[0] == 6 and out[2] == 14
    assert [what for _, what in ctx.positive_sizes] == ["conv output height"]
    assert not ctx.errors


def test_params_and_macs():
    args = _args(out=8, kernel=(3, 2), groups=2)
    assert CONV.params((4, 9, 9), args) == {"weight": (8, 2, 3, 2), "bias": (8,)}
    assert CONV.params((4, 9, 9), dict(args, bias=False)) == {"weight": (8, 2, 3, 2)}
    assert CONV.buffers((4, 9, 9), args) == {}
    assert CONV.macs((4, 9, 9), (8, 7, 8), args) == 8 * 7 * 8 * 2 * 3 * 2
    assert CONV.init("weight") == "kaiming_uniform"
    assert CONV.init("bias") == "fan_in_uniform"


@pytest.mark.parametrize("args, in_shape, pad", [
    (_args(pad=(1, 2)), (4, 9, 9), (1, 1, 2, 2)),
    (_args(pad=(0, 0)), (4, 9, 9), (0, 0, 0, 0)),  # valid
    (_args(pad="same"), (4, 9, 9), (1, 1, 1, 1)),
    (_args(pad="same", stride=(2, 2)), (4, 8, 7), (0, 1, 1, 1)),  # odd pixel after
    (_args(pad="same", kernel=(4, 2), dilation=(1, 3)), (4, 8, 7), (1, 2, 1, 2)),
])
def test_lowering(args, in_shape, pad):
    node = types.SimpleNamespace(args=args, inputs=["x"])
    name, attrs = CONV.lower(node, [in_shape])
    assert name == "conv2d"
    assert attrs == dict(stride=args["stride"], pad=pad, dilation=args["dilation"],
                         groups=args["groups"], act=None)


def test_unused_tail_is_linted_without_a_ceil_fix():
    reports = []
    node = _node(kernel=(3, 3), stride=(2, 2))

    def report(code, message, span, notes=(), help=None):
        reports.append((code, message, list(notes), help))

    CONV.lint(node, (4, 8, 9), report)
    assert reports == [("W401", "conv leaves the last 1 input row unused: (8 - 3) mod 2 = 1",
                        ["input is [4, 8, 9]"], "use an input size that fits the stride")]
    reports.clear()
    CONV.lint(_node(kernel=(3, 3), stride=(2, 2), pad="same"), (4, 8, 9), report)
    assert reports == []


def test_formula_and_fix_for_a_merge():
    node = _node(kernel=(3, 3), pad=(0, 0))
    assert CONV.formula(node, (4, 8, 8), 1) == "8 - 3 + 1 = 6"
    assert CONV.fix(node, (4, 8, 8), 1, 8) == "use pad=1 on the conv at ?"
    node = _node(kernel=(5, 5), pad=(0, 0))
    assert CONV.fix(node, (4, 8, 8), 2, 8) == "use pad=2 on the conv at ?"
    node = _node(kernel=(4, 4), pad=(0, 0))
    assert CONV.fix(node, (4, 8, 8), 2, 8) == "use pad=same on the conv at ?"
    assert CONV.formula(_node(pad="same"), (4, 8, 8), 1) is None
    assert CONV.fix(_node(pad="same"), (4, 8, 8), 1, 5) is None


def test_rank_help():
    assert CONV.rank_help((10,)) == "`conv` works on [C, H, W] maps; move it before `flatten`"
    assert CONV.rank_help((3, 4)) == ("`conv` works on [C, H, W] maps; use `conv1d` on a "
                                      "[C, L] signal")
    assert CONV.rank_help((3, 4, 4, 4)) == ("`conv` works on [C, H, W] maps; use `conv3d` on a "
                                            "[C, D, H, W] volume")


# ---- CONV2D: the kernel against the reference ---------------------------------------------------

KERNEL_SIZES = [(1, 1), (3, 3), (2, 3)]
STRIDES = [1, 2, (3, 1)]
PADS = [0, 1, (1, 2, 0, 1)]
DILATIONS = [1, (2, 1)]
GROUPS = [1, 2]

GRID = list(itertools.product(KERNEL_SIZES, STRIDES, PADS, DILATIONS, GROUPS))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride, pad, dilation, groups", GRID)
def test_conv2d_matches_reference(rng, dtype, kernel, stride, pad, dilation, groups):
    x, w, b = _case(rng, dtype, kernel, groups)
    args = dict(stride=stride, pad=pad, dilation=dilation, groups=groups)
    y = conv2d(x, w, b, **args)
    assert y.dtype == dtype
    assert y.flags.c_contiguous
    assert_close(y, reference(x, w, b, **args))


@pytest.mark.parametrize("kernel, stride, pad, dilation, groups", GRID)
def test_im2col_path_matches_reference(rng, monkeypatch, kernel, stride, pad, dilation, groups):
    """``SHIFTED = False``: the strided im2col path everywhere."""
    monkeypatch.setattr(conv, "SHIFTED", False)
    x, w, b = _case(rng, np.float64, kernel, groups, batch=3)
    args = dict(stride=stride, pad=pad, dilation=dilation, groups=groups)
    assert_close(conv2d(x, w, b, act="tanh", **args), reference(x, w, b, act="tanh", **args))
    assert_close(conv2d(x, w, **args), reference(x, w, **args))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_pointwise_conv_skips_im2col_and_matches(rng, dtype, groups):
    x, w, b = _case(rng, dtype, (1, 1), groups, out_channels=8, hw=(5, 9))
    y = conv2d(x, w, b, groups=groups)
    assert_close(y, reference(x, w, b, groups=groups))
    # without bias, on a non-contiguous input
    xt = np.swapaxes(np.swapaxes(x, 2, 3).copy(), 2, 3)
    assert_close(conv2d(xt, w, groups=groups), reference(x, w, groups=groups))


def test_depthwise_conv(rng):
    x, w, b = _case(rng, np.float64, (3, 3), 4, channels=4, out_channels=8)
    args = dict(stride=2, pad=1, groups=4)
    assert_close(conv2d(x, w, b, **args), reference(x, w, b, **args))


@pytest.mark.parametrize("shifted", [True, False])
@pytest.mark.parametrize("workspace", [1, 3 * 4 * 9 * 35 * 8, 1 << 30])
@pytest.mark.parametrize("kernel", [(1, 1), (3, 3)])
def test_batch_chunking_paths_agree(rng, monkeypatch, workspace, kernel, shifted):
    """One image per chunk; chunks of 3, 3 and 1 images; the whole batch in one chunk."""
    monkeypatch.setattr(conv, "WORKSPACE_BYTES", workspace)
    monkeypatch.setattr(conv, "SHIFTED", shifted)
    x, w, b = _case(rng, np.float64, kernel, 2, batch=7, channels=4, out_channels=6,
                    hw=(7, 5))
    args = dict(pad=1 if kernel == (3, 3) else 0, groups=2, act="relu")
    assert_close(conv2d(x, w, b, **args), reference(x, w, b, **args))


ACTS = [
    "relu",
    ("relu", None),
    ("leaky_relu", {"alpha": 0.2}),
    ("elu", {"alpha": 0.7}),
    "selu",
    "sigmoid",
    "tanh",
    "softplus",
    ("swish", {"beta": 1.5}),
    "silu",
]


@pytest.mark.parametrize("shifted", [True, False])
@pytest.mark.parametrize("act", ACTS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_activation(rng, monkeypatch, dtype, act, shifted):
    monkeypatch.setattr(conv, "SHIFTED", shifted)
    x, w, b = _case(rng, dtype, (3, 3), 1, hw=(5, 5))
    args = dict(pad=1, act=act)
    assert_close(conv2d(x, w, b, **args), reference(x, w, b, **args))
    assert_close(conv2d(x, w, **args), reference(x, w, **args))


def test_fused_prelu_uses_output_channels(rng):
    x, w, b = _case(rng, np.float64, (3, 3), 1, hw=(5, 5))
    slopes = rng.uniform(0, 0.5, size=w.shape[0])
    act = ("prelu", {"weight": slopes})
    assert_close(conv2d(x, w, b, act=act), reference(x, w, b, act=act))


def test_conv2d_leaves_inputs_alone(rng):
    x, w, b = _case(rng, np.float32, (3, 3), 1)
    copies = [a.copy() for a in (x, w, b)]
    conv2d(x, w, b, pad=1, act="relu")
    for before, after in zip(copies, (x, w, b)):
        np.testing.assert_array_equal(before, after)


def test_conv2d_float64_weights_promote(rng):
    x, w, b = _case(rng, np.float32, (3, 3), 1)
    assert conv2d(x, w.astype(np.float64), b).dtype == np.float64
    assert conv2d(x.astype(np.int64), w.astype(np.float32)).dtype == np.float64


def test_conv2d_reports_channel_mismatch(rng):
    x, w, b = _case(rng, np.float32, (3, 3), 1)
    with pytest.raises(ValueError, match=r"expects 2 input channels with groups=1, input has 4"):
        conv2d(x, w[:, :2])
    with pytest.raises(ValueError, match=r"must both divide by groups \(3\)"):
        conv2d(x, w, groups=3)
    with pytest.raises(ValueError, match=r"conv2d: bias must be \[6\], got \(2,\)"):
        conv2d(x, w, b[:2])
    with pytest.raises(ValueError, match=r"conv2d: input must be \[N, C, H, W\], got shape"):
        conv2d(x[0], w)
    with pytest.raises(ValueError, match=r"conv2d: weight must be \[out, C/groups, kh, kw\]"):
        conv2d(x, w[0])


def test_conv2d_reports_bad_geometry(rng):
    x = rng.standard_normal((1, 2, 3, 3))
    w = rng.standard_normal((2, 2, 5, 5))
    with pytest.raises(ValueError, match=r"conv2d height: output size must be at least 1"):
        conv2d(x, w)
    with pytest.raises(ValueError, match=r"stride and dilation must be >= 1 and pad >= 0"):
        conv2d(x, w[:, :, :1, :1], stride=0)
    with pytest.raises(ValueError, match=r"pad must be p, \[ph, pw\] or"):
        conv2d(x, w[:, :, :1, :1], pad=(1, 2, 3))


# ---- out= and scale= ---------------------------------------------------------------------------


@pytest.mark.parametrize("shifted", [True, False])
@pytest.mark.parametrize("kernel, groups", [((3, 3), 1), ((1, 1), 2), ((3, 3), 4)])
def test_out_is_written_contiguous_or_as_a_channel_slice(rng, monkeypatch, kernel, groups,
                                                         shifted):
    monkeypatch.setattr(conv, "SHIFTED", shifted)
    x, w, b = _case(rng, np.float32, kernel, groups, out_channels=8)
    args = dict(pad=1 if kernel == (3, 3) else 0, groups=groups, act="relu")
    expected = conv2d(x, w, b, **args)
    out = np.full(expected.shape, np.nan, np.float32)
    assert conv2d(x, w, b, out=out, **args) is out
    np.testing.assert_array_equal(out, expected)
    wide = np.full((2, 11) + expected.shape[2:], 7.0, np.float32)
    part = wide[:, 1:9]
    assert conv2d(x, w, b, out=part, **args) is part
    np.testing.assert_array_equal(part, expected)
    assert (wide[:, :1] == 7).all() and (wide[:, 9:] == 7).all()
    with pytest.raises(ValueError, match=r"conv2d: out must be \[2, 8, .*\] float32, got"):
        conv2d(x, w, b, out=np.empty(expected.shape), **args)
    with pytest.raises(ValueError, match=r"conv2d: out must have contiguous rows"):
        conv2d(x, w, b, out=np.empty(expected.shape[:2] + expected.shape[:1:-1],
                                     np.float32).swapaxes(2, 3), **args)


@pytest.mark.parametrize("shifted", [True, False])
@pytest.mark.parametrize("kernel, groups", [((3, 3), 1), ((1, 1), 2), ((2, 3), 2)])
@pytest.mark.parametrize("act", [None, "relu", "tanh"])
def test_scale_is_a_folded_batchnorm(rng, monkeypatch, kernel, groups, act, shifted):
    monkeypatch.setattr(conv, "SHIFTED", shifted)
    x, w, b = _case(rng, np.float64, kernel, groups)
    scale = rng.uniform(0.5, 2.0, 6)
    args = dict(pad=1, groups=groups, act=act)
    expected = reference(x, w * scale.reshape(-1, 1, 1, 1), b, **args)
    assert_close(conv2d(x, w, b, scale=scale, **args), expected)
    assert_close(conv2d(x, w, scale=scale, **args),
                 reference(x, w * scale.reshape(-1, 1, 1, 1), **args))
    with pytest.raises(ValueError, match=r"conv2d: scale must be \[6\], got \(5,\)"):
        conv2d(x, w, b, scale=scale[:5], **args)


# ---- random geometries -------------------------------------------------------------------------

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    channels = groups * draw(st.integers(1, 2))
    out_channels = groups * draw(st.integers(1, 2))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pad = tuple(draw(st.integers(0, 2)) for _ in range(4))
    height = draw(st.integers(1, 8))
    width = draw(st.integers(1, 8))
    span_h = dilation[0] * (kernel[0] - 1) + 1
    span_w = dilation[1] * (kernel[1] - 1) + 1
    assume(height + pad[0] + pad[1] >= span_h and width + pad[2] + pad[3] >= span_w)
    args = dict(stride=stride, pad=pad, dilation=dilation, groups=groups)
    shapes = ((2, channels, height, width), (out_channels, channels // groups) + kernel)
    return shapes, args


@SETTINGS
@given(case=conv_cases(), dtype=st.sampled_from([np.float32, np.float64]),
       with_bias=st.booleans())
def test_conv2d_random_geometry(rng, case, dtype, with_bias):
    (x_shape, w_shape), args = case
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype) if with_bias else None
    assert_close(conv2d(x, w, b, **args), reference(x, w, b, **args))


# ---- training: finite differences --------------------------------------------------------------

STEP = 1e-5
FD_TOL = dict(rtol=1e-6, atol=1e-7)


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


def check_fd(inputs, params, **attrs):
    """``backward`` against finite differences of ``sum(y * r)``, every input and param."""
    inputs = [np.array(a, dtype=np.float64) for a in inputs]
    params = [np.array(p, dtype=np.float64) for p in params]

    def run():
        return conv.conv2d_forward(*inputs, *params, rng=np.random.default_rng(0), **attrs)

    y, saved = run()
    r = np.random.default_rng(1).standard_normal(y.shape)
    gxs, gps = conv.conv2d_backward(saved, r)
    assert len(gxs) == len(inputs)
    assert len(gps) == len(params)

    def f():
        return float(np.sum(run()[0] * r))

    for a, g in zip(inputs + params, list(gxs) + list(gps)):
        assert g.dtype == np.float64 and g.shape == a.shape
        np.testing.assert_allclose(g, _numeric(f, a), **FD_TOL)


FD_GRID = list(itertools.product(
    [(1, 1), (3, 3), (2, 3)],  # kernel
    [1, (2, 1)],  # stride
    [0, (0, 2, 1, 0)],  # pad: none, asymmetric (top, bottom, left, right)
    [1, (2, 1)],  # dilation
    [1, 2],  # groups
))


@pytest.mark.parametrize("kernel, stride, pad, dilation, groups", FD_GRID)
def test_backward_matches_finite_differences(kernel, stride, pad, dilation, groups):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 6, 5))
    w = rng.standard_normal((4, 4 // groups) + kernel)
    bias = [rng.standard_normal(4)] if kernel != (2, 3) else []  # with and without a bias
    check_fd([x], [w] + bias, stride=stride, pad=pad, dilation=dilation, groups=groups,
             act=None)


def test_backward_same_style_padding_and_big_stride():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 2, 7, 7))
    w = rng.standard_normal((3, 2, 3, 3))
    check_fd([x], [w], stride=3, pad=(1, 1), dilation=1, groups=1, act=None)
    check_fd([x], [w], stride=1, pad=(2, 0, 0, 2), dilation=2, groups=1, act=None)


def test_backward_in_chunks_matches_one_chunk(monkeypatch):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4, 6, 5))
    w = rng.standard_normal((6, 2, 3, 3))
    b = rng.standard_normal(6)
    attrs = dict(stride=(2, 1), pad=(1, 0, 2, 1), dilation=1, groups=2)
    dy = rng.standard_normal(conv2d(x, w, b, **attrs).shape)
    whole = conv.conv2d_backward(conv.conv2d_forward(x, w, b, **attrs)[1], dy)
    monkeypatch.setattr(conv, "WORKSPACE_BYTES", 1)
    chunked = conv.conv2d_backward(conv.conv2d_forward(x, w, b, **attrs)[1], dy)
    for a, c in zip(whole[0] + whole[1], chunked[0] + chunked[1]):
        np.testing.assert_allclose(c, a, rtol=1e-12, atol=1e-12)


def test_forward_is_the_kernel_and_keeps_float32(rng):
    x, w, b = _case(rng, np.float32, (3, 3), 2)
    attrs = dict(stride=2, pad=(1, 0, 0, 1), dilation=1, groups=2, act=None)
    y, saved = conv.conv2d_forward(x, w, b, **attrs)
    np.testing.assert_array_equal(y, conv2d(x, w, b, **attrs))
    (gx,), (gw, gb) = conv.conv2d_backward(saved, np.ones_like(y))
    assert gx.dtype == gw.dtype == np.float32
    assert gb.dtype == np.float32


def test_fused_activation_is_refused_in_training():
    x, w = np.ones((1, 2, 3, 3)), np.ones((2, 2, 1, 1))
    with pytest.raises(ValueError, match=r"conv2d: .*act=None.*'relu'"):
        conv.conv2d_forward(x, w, stride=1, pad=0, dilation=1, groups=1, act="relu")


def test_dy_of_the_wrong_shape_is_refused():
    x, w = np.ones((2, 3, 4, 4)), np.ones((2, 3, 3, 3))
    _, saved = conv.conv2d_forward(x, w, pad=1)
    with pytest.raises(ValueError, match=r"conv2d backward.*\(2, 2, 4, 4\).*\(2, 2, 4, 3\)"):
        conv.conv2d_backward(saved, np.ones((2, 2, 4, 3)))


# ---- PyTorch -----------------------------------------------------------------------------------

TORCH_GRID = list(itertools.product(
    [(1, 1), (3, 3), (2, 3)],  # kernel
    [(1, 1), (2, 2), (1, 3)],  # stride
    [(0, 0), (1, 1), (2, 1)],  # pad
    [(1, 1), (2, 1)],  # dilation
    [1, 2],  # groups
))

TRAIN_GRID = list(itertools.product(
    [(1, 1), (3, 3), (2, 3)],  # kernel
    [(1, 1), (2, 1)],  # stride
    [(0, 0, 0, 0), (1, 1, 1, 1), (0, 2, 1, 0)],  # pad: top, bottom, left, right
    [(1, 1), (1, 2)],  # dilation
    [1, 2],  # groups
))


@pytest.fixture
def torch():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only wait on each other
    yield torch
    torch.set_num_threads(before)


def _t(torch, a):
    return torch.from_numpy(np.ascontiguousarray(a))


@pytest.mark.torch
@pytest.mark.parametrize("kernel, stride, pad, dilation, groups", TORCH_GRID)
def test_conv2d_matches_pytorch(torch, rng, kernel, stride, pad, dilation, groups):
    F = torch.nn.functional
    x = rng.standard_normal((2, 4, 9, 8))
    w = rng.standard_normal((6, 4 // groups) + kernel)
    b = rng.standard_normal(6)
    y = conv2d(x, w, b, stride=stride, pad=pad, dilation=dilation, groups=groups)
    expected = F.conv2d(_t(torch, x), _t(torch, w), _t(torch, b), stride=stride, padding=pad,
                        dilation=dilation, groups=groups)
    assert_close(y, expected.numpy())


@pytest.mark.torch
def test_conv2d_asymmetric_pad_float32(torch, rng):
    F = torch.nn.functional
    x = rng.standard_normal((2, 3, 8, 7)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    pad = (0, 2, 1, 0)  # top, bottom, left, right
    y = conv2d(x, w, None, pad=pad, stride=2)
    padded = F.pad(_t(torch, x), (pad[2], pad[3], pad[0], pad[1]))  # torch: W's pads first
    assert_close(y, F.conv2d(padded, _t(torch, w), stride=2).numpy())


def _compare_training(torch, torch_fn, inputs, params, dtype, tol=None, **attrs):
    """Forward and backward (``dy`` random) against autograd on leaf tensors."""
    inputs = [np.asarray(a, dtype=dtype) for a in inputs]
    params = [np.asarray(p, dtype=dtype) for p in params]
    leaves = [torch.tensor(a, requires_grad=True) for a in inputs + params]
    y, saved = conv.conv2d_forward(*inputs, *params, rng=np.random.default_rng(0), **attrs)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    gxs, gps = conv.conv2d_backward(saved, dy)
    expected = torch_fn(*leaves)
    tol = tol or TOLERANCES[np.dtype(dtype)]
    assert y.dtype == dtype
    np.testing.assert_allclose(y, expected.detach().numpy(), **tol)
    expected.backward(torch.from_numpy(dy))
    for ours, leaf in zip(list(gxs) + list(gps), leaves):
        assert ours.dtype == dtype
        np.testing.assert_allclose(ours, leaf.grad.numpy(), **tol)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride, pad, dilation, groups", TRAIN_GRID)
def test_training_matches_pytorch(torch, dtype, kernel, stride, pad, dilation, groups):
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 7, 6))
    w = rng.standard_normal((6, 4 // groups) + kernel) * 0.5
    b = rng.standard_normal(6)
    top, bottom, left, right = pad

    def expected(x, w, b):
        padded = F.pad(x, (left, right, top, bottom))  # torch orders W's pads first
        return F.conv2d(padded, w, b, stride=stride, dilation=dilation, groups=groups)

    _compare_training(torch, expected, [x], [w, b], dtype, stride=stride, pad=pad,
                      dilation=dilation, groups=groups, act=None)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_training_big_batch_runs_in_chunks(torch, dtype):
    """Enough images that the backward pass walks the batch in several chunks."""
    F = torch.nn.functional
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 8, 16, 16))
    w = rng.standard_normal((8, 8, 3, 3)) * 0.2
    # gW sums 10,240 products per element, to values up to 1e4: float32 rounding of such
    # sums reaches 1e-4 in absolute terms (both here and in torch)
    tol = dict(rtol=2e-4, atol=2e-3) if dtype == np.float32 else None
    _compare_training(torch, lambda x, w: F.conv2d(x, w, padding=1), [x], [w], dtype, tol=tol,
                      stride=1, pad=1, dilation=1, groups=1, act=None)
    _compare_training(torch, F.conv2d, [x], [w[:, :, :1, :1]], dtype, tol=tol, stride=1,
                      pad=0, dilation=1, groups=1, act=None)


@pytest.mark.torch
@pytest.mark.parametrize("pad", [(1, 1, 2, 2), (0, 2, 1, 0), 1, (2, 1)])
@pytest.mark.parametrize("bias", [True, False])
def test_torch_mapping(torch, rng, pad, bias):
    x, w, b = _case(rng, np.float64, (3, 2), 2)
    attrs = dict(stride=(2, 1), pad=pad, dilation=(1, 2), groups=2, act=None)
    ws = [w, b] if bias else [w]
    step = types.SimpleNamespace(attrs=attrs, name="c", shape=(), inputs=["x"], params=[])
    got = CONV2D.torch(step, [_t(torch, x)], [_t(torch, a) for a in ws], False)
    assert_close(got.numpy(), conv2d(x, *ws, **attrs))


# ---- ONNX --------------------------------------------------------------------------------------



def run_onnx(x, ws, attrs, out_shape):
    """Emit CONV2D for one step, run it in ONNX Runtime; (output, the graph's nodes)."""
    step = types.SimpleNamespace(attrs=attrs, name="c", shape=tuple(out_shape[1:]),
                                 inputs=["x"], params=[], span=None)
    return _run_onnx_prim(CONV2D, step, x, ws, out_shape)


@pytest.mark.parametrize("index", range(len(CONV2D.examples(np.random.default_rng(0)))))
@pytest.mark.parametrize("act", [None, "relu", ("leaky_relu", {"alpha": 0.2}),
                                 ("swish", {"beta": 1.5})], ids=str)
def test_onnx_runs_the_same_in_onnx_runtime(index, act):
    ex = CONV2D.examples(np.random.default_rng(0))[index]
    attrs = dict(ex.attrs, act=act)
    args = [np.asarray(a, np.float32) for a in ex.inputs + ex.params]
    want = conv2d(*args, **attrs)
    got, nodes = run_onnx(ex.inputs[0], ex.params, attrs, want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert nodes[0].op_type == "Conv"
    assert nodes[0].name == ("c" if act is None else "c/conv")
    assert nodes[-1].output == ["y"]


def test_onnx_pads_are_in_onnx_order(rng):
    x, w, b = _case(rng, np.float32, (3, 3), 2)
    attrs = dict(stride=(2, 1), pad=(0, 2, 1, 3), dilation=(1, 2), groups=2, act=None)
    want = conv2d(x, w, b, **attrs)
    got, (node,) = run_onnx(x, [w, b], attrs, want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    onnx = pytest.importorskip("onnx")
    found = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert found == dict(kernel_shape=[3, 3], strides=[2, 1], dilations=[1, 2], group=2,
                         pads=[0, 1, 2, 3])


def test_onnx_refuses_a_fused_prelu(rng):
    from cnnc.ops.base import ExportError

    x, w, b = _case(rng, np.float32, (3, 3), 1)
    act = ("prelu", {"weight": np.full(6, 0.25)})
    with pytest.raises(ExportError, match="fused prelu"):
        run_onnx(x, [w, b], dict(stride=1, pad=1, dilation=1, groups=1, act=act),
                 (2, 6, 7, 6))


# ---- the registry entry ------------------------------------------------------------------------


def test_primitive_flags_and_examples():
    assert CONV2D.name == "conv2d"
    assert CONV2D.accepts_out and CONV2D.accepts_scale and CONV2D.gemm
    assert CONV2D.in_place is None and not CONV2D.alias
    assert conv.LAYERS[0] is CONV and conv.PRIMITIVES[0] is CONV2D
    assert [layer.name for layer in conv.LAYERS] == ["conv", "conv1d", "conv3d"]
    assert [p.name for p in conv.PRIMITIVES] == ["conv2d", "conv1d", "conv3d"]
    examples = CONV2D.examples(np.random.default_rng(0))
    assert 3 <= len(examples) <= 8
    seen = set()
    for ex in examples:
        x = ex.inputs[0]
        assert x.dtype == np.float64 and x.shape[0] == 2
        assert len(ex.params) in (1, 2)
        assert set(ex.attrs) == {"stride", "pad", "dilation", "groups", "act"}
        seen.add(len(ex.params))
        seen.add(("groups", ex.attrs["groups"] > 1))
        seen.add(("4-pad", isinstance(ex.attrs["pad"], tuple) and len(ex.attrs["pad"]) == 4))
    assert {1, 2, ("groups", True), ("4-pad", True)} <= seen


# ---- conv1d and conv3d (spec section 9, other ranks) -------------------------------------------
# The layers' rules per spatial dim, the kernels against PyTorch (forward float32 within 1e-4,
# gradients float64 within 1e-6) over grids with non-cubic kernels, strides, pads (one-sided
# too), dilation and groups; CONV1D on CONV2D's kernels, CONV3D's chunks, depthwise path,
# epilogue and out= slices; their errors naming the rank and the dim.

CONV1D = conv.CONV1D
CONV3D = conv.CONV3D
conv1d = conv.conv1d
conv3d = conv.conv3d


def _nd_args(n, **given):
    """A conv1d/conv3d layer's arguments as its ``check_args`` leaves them."""
    args = dict(out=6, kernel=(3,) * n, stride=(1,) * n, pad=(0,) * n, dilation=(1,) * n,
                groups=1, bias=True)
    args.update(given)
    return args


def _nd_node(n, **given):
    return Node(f"y.{conv.NAMES[n]}1", conv.NAMES[n], _nd_args(n, **given), ["x"], None,
                f"{conv.NAMES[n]}(...)")


def _checked(layer, spans=None, **given):
    """``check_args`` on the arguments as the checker hands them over: an integer stays an
    integer, a list is a tuple (the rank-free kinds)."""
    reports = []

    def report(code, message, span, notes=(), help=None):
        reports.append((code, message, span, help))

    args = {spec.name: spec.default for spec in layer.args}
    args.update(given)
    return layer.check_args(args, spans or {}, "call", report), reports


def test_nd_layer_arguments():
    for layer, rank in ((CONV1D, 2), (CONV3D, 4)):
        assert [(a.name, a.kind) for a in layer.args] == [
            ("out", "count"), ("kernel", "dims"), ("stride", "dims"), ("pad", "dcpad"),
            ("dilation", "dims"), ("groups", "count"), ("bias", "bool")]
        assert [a.default for a in layer.args[2:]] == [1, 0, 1, 1, True]
        assert layer.ranks == (rank,)
        assert layer.changes_shape


def test_nd_arguments_become_one_value_per_dim():
    args, reports = _checked(CONV3D, out=8, kernel=3, stride=(1, 2, 2), pad="same")
    assert reports == []
    assert (args["kernel"], args["stride"], args["pad"], args["dilation"]) == (
        (3, 3, 3), (1, 2, 2), "same", (1, 1, 1))
    args, _ = _checked(CONV1D, out=8, kernel=(5,), pad=0)  # `valid` arrives as 0
    assert (args["kernel"], args["pad"], args["stride"]) == ((5,), (0,), (1,))


@pytest.mark.parametrize("layer, given, message", [
    (CONV3D, dict(kernel=(3, 3)),
     "conv3d kernel=[3, 3] gives 2 values, but a [C, D, H, W] map has 3 spatial dims"),
    (CONV3D, dict(kernel=3, pad=(1, 1, 1, 1)),
     "conv3d pad=[1, 1, 1, 1] gives 4 values, but a [C, D, H, W] map has 3 spatial dims"),
    (CONV1D, dict(kernel=3, stride=(2, 2)),
     "conv1d stride=[2, 2] gives 2 values, but a [C, L] map has 1 spatial dim"),
])
def test_nd_list_of_the_wrong_length(layer, given, message):
    name = next(k for k, v in given.items() if not isinstance(v, int))
    args, reports = _checked(layer, spans={name: "its span"}, out=4, **given)
    assert args is None
    assert reports == [("E207", message, "its span", reports[0][3])]
    assert reports[0][3].startswith("give one integer for every spatial dim, or a list [")


@pytest.mark.parametrize("layer, shape, args, expected", [
    (CONV1D, (2, 16), _nd_args(1, out=8, stride=(2,), pad=(1,)), (8, 8)),
    (CONV1D, (4, 16000), _nd_args(1, out=32, kernel=(80,), stride=(16,)), (32, 996)),
    (CONV1D, (4, 15), _nd_args(1, stride=(2,), pad="same", dilation=(2,)), (6, 8)),
    (CONV3D, (3, 16, 112, 112), _nd_args(3, out=64, pad=(1, 1, 1)), (64, 16, 112, 112)),
    (CONV3D, (4, 9, 8, 7), _nd_args(3, kernel=(2, 3, 1), stride=(2, 1, 3),
                                    dilation=(1, 2, 1), groups=2), (6, 4, 4, 3)),
    (CONV3D, (4, 7, 8, 9), _nd_args(3, stride=(1, 2, 3), pad="same"), (6, 7, 4, 3)),
])
def test_nd_shape_rule(layer, shape, args, expected):
    ctx = Ctx()
    assert layer.infer(shape, args, ctx) == expected
    assert not ctx.errors


def test_nd_output_below_one_names_the_dim():
    ctx = Ctx()
    assert CONV1D.infer((3, 4), _nd_args(1, kernel=(5,)), ctx) is None
    assert ctx.errors == [("E301", "conv1d output length would be 0, below 1: 4 - 5 + 1 = 0",
                           "the input must be at least 5 samples long for this conv1d; it is "
                           "4. Use a smaller kernel or stride, more padding, or fewer "
                           "downsampling layers before it")]
    for axis, (name, unit) in enumerate([("depth", "slices deep"), ("height", "rows high"),
                                         ("width", "columns wide")]):
        shape = [3, 8, 8, 8]
        shape[axis + 1] = 2
        ctx = Ctx()
        assert CONV3D.infer(tuple(shape), _nd_args(3), ctx) is None
        [(code, message, help)] = ctx.errors
        assert code == "E301"
        assert message == f"conv3d output {name} would be 0, below 1: 2 - 3 + 1 = 0"
        assert help.startswith(f"the input must be at least 3 {unit} for this conv3d; it is 2.")


def test_nd_groups_and_symbolic_sizes():
    ctx = Ctx()
    assert CONV3D.infer((6, 4, 4, 4), _nd_args(3, out=8, groups=4), ctx) == (8, 2, 2, 2)
    assert ctx.errors == [("E305", "conv3d groups=4 does not divide the 6 input channels",
                           "6 divides by groups=2 or groups=3 or groups=6")]
    ctx = Ctx()
    out = CONV3D.infer((3, sym("T"), 16, sym("W")), _nd_args(3, stride=(2, 2, 1)), ctx)
    assert out[0] == 6 and out[2] == 7
    assert [what for _, what in ctx.positive_sizes] == ["conv3d output depth",
                                                        "conv3d output width"]
    ctx = Ctx()
    assert CONV1D.infer((3, sym("L")), _nd_args(1), ctx)[0] == 6
    assert [what for _, what in ctx.positive_sizes] == ["conv1d output length"]


def test_nd_params_and_macs():
    """MACs = output elements x C/groups x kernel volume (spec section 9)."""
    args = _nd_args(3, out=8, kernel=(3, 2, 1), groups=2)
    assert CONV3D.params((4, 9, 9, 9), args) == {"weight": (8, 2, 3, 2, 1), "bias": (8,)}
    assert CONV3D.macs((4, 9, 9, 9), (8, 7, 8, 9), args) == 8 * 7 * 8 * 9 * 2 * 3 * 2 * 1
    args = _nd_args(1, out=16, kernel=(80,), bias=False)
    assert CONV1D.params((1, 8000), args) == {"weight": (16, 1, 80)}
    assert CONV1D.macs((1, 8000), (16, 7921), args) == 16 * 7921 * 1 * 80
    # C3D's conv1a: 64 x 16 x 112 x 112 outputs, each 3 x 27 products
    assert CONV3D.macs((3, 16, 112, 112), (64, 16, 112, 112), _nd_args(3, out=64)) == \
        64 * 16 * 112 * 112 * 3 * 27


@pytest.mark.parametrize("layer, args, in_shape, primitive, pad", [
    (CONV1D, _nd_args(1, pad=(2,)), (4, 9), "conv1d", (2, 2)),
    (CONV1D, _nd_args(1, kernel=(4,), stride=(2,), pad="same"), (4, 9), "conv1d", (1, 2)),
    (CONV3D, _nd_args(3, pad=(1, 0, 2)), (4, 5, 5, 5), "conv3d", (1, 1, 0, 0, 2, 2)),
    (CONV3D, _nd_args(3, kernel=(3, 4, 1), stride=(1, 2, 2), pad="same"), (4, 5, 9, 7),
     "conv3d", (1, 1, 1, 2, 0, 0)),  # height: out 5, (5 - 1)2 + 4 - 9 = 3 -> 1 before, 2 after
])
def test_nd_lowering(layer, args, in_shape, primitive, pad):
    node = types.SimpleNamespace(args=args, inputs=["x"])
    assert layer.lower(node, [in_shape]) == (primitive, dict(
        stride=args["stride"], pad=pad, dilation=args["dilation"], groups=args["groups"],
        act=None))


def test_nd_unused_tail_names_the_cells():
    reports = []

    def report(code, message, span, notes=(), help=None):
        reports.append((code, message, list(notes), help))

    CONV1D.lint(_nd_node(1, stride=(2,)), (4, 10), report)
    CONV3D.lint(_nd_node(3, stride=(2, 2, 2)), (4, 10, 9, 8), report)
    assert reports == [
        ("W401", "conv1d leaves the last 1 input sample unused: (10 - 3) mod 2 = 1",
         ["input is [4, 10]"], "use an input size that fits the stride"),
        ("W401", "conv3d leaves the last 1 input slice and 1 input column unused: "
                 "(10 - 3) mod 2 = 1; (8 - 3) mod 2 = 1",
         ["input is [4, 10, 9, 8]"], "use an input size that fits the stride"),
    ]


def test_nd_formula_and_fix_for_a_merge():
    node = _nd_node(3, kernel=(3, 3, 5), pad=(0, 0, 0))
    assert CONV3D.formula(node, (4, 8, 8, 8), 3) == "8 - 5 + 1 = 4"
    assert CONV3D.fix(node, (4, 8, 8, 8), 3, 8) == "use pad=2 on the conv3d at ?"
    assert CONV3D.fix(node, (4, 8, 8, 8), 1, 8) == "use pad=1 on the conv3d at ?"
    node = _nd_node(1, stride=(2,))
    assert CONV1D.formula(node, (4, 9), 1) == "floor((9 - 3)/2) + 1 = 4"


def test_nd_rank_help_says_what_rank_and_which_layer():
    assert CONV3D.rank_help((3, 32, 32)) == ("`conv3d` works on [C, D, H, W] volumes; use "
                                             "`conv` on a [C, H, W] map")
    assert CONV3D.rank_help((3, 32)) == ("`conv3d` works on [C, D, H, W] volumes; use "
                                         "`conv1d` on a [C, L] signal")
    assert CONV1D.rank_help((64,)) == "`conv1d` works on [C, L] signals; move it before " \
                                      "`flatten`"
    assert CONV1D.rank_help((3, 8, 8, 8)) == ("`conv1d` works on [C, L] signals; use `conv3d` "
                                              "on a [C, D, H, W] volume")


def test_nd_layers_check_as_the_checker_sees_them():
    import cnnc

    net = cnnc.check("input x: [2, 40]\ninput v: [3, 8, 16, 16]\n"
                     "output a = x -> conv1d(8, 5, stride=2, pad=same) -> flatten\n"
                     "output b = v -> conv3d(8, [3, 3, 1], stride=[1, 2, 2], pad=[1, 1, 0],"
                     " groups=1)\n")
    assert net.ok, net.render()
    shapes = {name: node.shape for name, node in net.nodes.items()}
    assert shapes["a.conv1d1"] == (8, 20) and shapes["b.conv3d1"] == (8, 8, 8, 8)
    net = cnnc.check("input x: [3, 32, 32]\noutput y = x -> conv3d(8, 3)\n")
    [d] = net.diagnostics
    assert (d.code, d.message) == ("E304", "`conv3d` expects a [C, D, H, W] input, got "
                                           "[3, 32, 32]")
    assert d.help == "`conv3d` works on [C, D, H, W] volumes; use `conv` on a [C, H, W] map"
    net = cnnc.check("input x: [3, 8, 8, 8]\noutput y = x -> conv3d(8, [3, 3])\n")
    [d] = net.diagnostics
    assert (d.code, d.message) == ("E207", "conv3d kernel=[3, 3] gives 2 values, but a "
                                           "[C, D, H, W] map has 3 spatial dims")


# kernels against the references and PyTorch

ND_GRID = {
    1: list(itertools.product(
        [(1,), (3,), (4,)],  # kernel
        [1, 2, (3,)],  # stride
        [0, 1, (2, 0)],  # pad: p, or (begin, end)
        [1, 2],  # dilation
        [1, 2],  # groups
    )),
    3: list(itertools.product(
        [(1, 1, 1), (3, 3, 3), (2, 3, 1)],  # kernel
        [1, (2, 1, 2)],  # stride
        [0, (1, 0, 1), (0, 1, 1, 0, 2, 1)],  # pad: p, per dim, or (begin, end) per dim
        [1, (1, 2, 1)],  # dilation
        [1, 2],  # groups
    )),
}
ND_SIZES = {1: (13,), 3: (6, 7, 5)}


def _nd_case(rng, n, kernel, groups, dtype=np.float64, batch=2, channels=4, out=6):
    x = rng.standard_normal((batch, channels) + ND_SIZES[n]).astype(dtype)
    w = rng.standard_normal((out, channels // groups) + kernel).astype(dtype)
    b = rng.standard_normal(out).astype(dtype)
    return x, w, b


def _torch_nd(torch, n, x, w, b, stride, pad, dilation, groups):
    """PyTorch's ``conv{n}d``, a (begin, end) padding as ``F.pad`` (last dim first)."""
    F = torch.nn.functional
    pairs = conv.window.pad_pairs(pad, n)
    x = F.pad(x, [p for pair in reversed(pairs) for p in pair])
    return getattr(F, f"conv{n}d")(x, w, b, stride=stride, dilation=dilation, groups=groups)


@pytest.mark.parametrize("n", [1, 3])
def test_nd_kernels_match_the_reference(rng, n):
    kernel_of = {1: conv1d, 3: conv3d}[n]
    for kernel, stride, pad, dilation, groups in ND_GRID[n][::3]:
        x, w, b = _nd_case(rng, n, kernel, groups)
        attrs = dict(stride=stride, pad=pad, dilation=dilation, groups=groups)
        assert_close(kernel_of(x, w, b, **attrs), conv.reference_conv_nd(x, w, b, **attrs))


@pytest.mark.torch
@pytest.mark.parametrize("n", [1, 3])
def test_nd_forward_float32_matches_pytorch(torch, n):
    rng = np.random.default_rng(5)
    kernel_of = {1: conv1d, 3: conv3d}[n]
    for kernel, stride, pad, dilation, groups in ND_GRID[n]:
        x, w, b = _nd_case(rng, n, kernel, groups, np.float32)
        y = kernel_of(x, w, b, stride=stride, pad=pad, dilation=dilation, groups=groups)
        want = _torch_nd(torch, n, _t(torch, x).double(), _t(torch, w).double(),
                         _t(torch, b).double(), stride, pad, dilation, groups).numpy()
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4,
                                   err_msg=str((kernel, stride, pad, dilation, groups)))


@pytest.mark.torch
@pytest.mark.parametrize("n", [1, 3])
def test_nd_gradients_float64_match_pytorch(torch, n):
    rng = np.random.default_rng(6)
    forward = {1: conv.conv1d_forward, 3: conv.conv3d_forward}[n]
    backward = {1: conv.conv1d_backward, 3: conv.conv3d_backward}[n]
    for kernel, stride, pad, dilation, groups in ND_GRID[n]:
        x, w, b = _nd_case(rng, n, kernel, groups)
        attrs = dict(stride=stride, pad=pad, dilation=dilation, groups=groups)
        y, saved = forward(x, w, b, **attrs)
        dy = rng.standard_normal(y.shape)
        (gx,), (gW, gb) = backward(saved, dy)
        leaves = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
        want = _torch_nd(torch, n, *leaves, **attrs)
        np.testing.assert_allclose(y, want.detach().numpy(), rtol=1e-10, atol=1e-10)
        want.backward(torch.from_numpy(dy))
        for ours, leaf in zip((gx, gW, gb), leaves):
            assert ours.dtype == np.float64 and ours.shape == leaf.shape
            np.testing.assert_allclose(ours, leaf.grad.numpy(), rtol=1e-6, atol=1e-6,
                                       err_msg=str((kernel, stride, pad, dilation, groups)))


@pytest.mark.torch
@pytest.mark.parametrize("workspace", [1 << 10, 1 << 14, 1 << 22])
@pytest.mark.parametrize("groups", [1, 2, 6])
def test_conv3d_chunks_agree(torch, monkeypatch, workspace, groups):
    """Whole samples per chunk, or rows of output planes of one sample (a small workspace),
    and the depthwise path (groups = channels): the same values and gradients."""
    monkeypatch.setattr(conv, "WORKSPACE_BYTES", workspace)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 6, 5, 6, 7))
    w = rng.standard_normal((6, 6 // groups, 3, 2, 3))
    b = rng.standard_normal(6)
    attrs = dict(stride=(1, 2, 1), pad=(1, 0, 1), dilation=(2, 1, 1), groups=groups)
    y, saved = conv.conv3d_forward(x, w, b, **attrs)
    dy = rng.standard_normal(y.shape)
    grads = conv.conv3d_backward(saved, dy)
    leaves = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    want = _torch_nd(torch, 3, *leaves, **attrs)
    np.testing.assert_allclose(y, want.detach().numpy(), rtol=1e-10, atol=1e-10)
    want.backward(torch.from_numpy(dy))
    for ours, leaf in zip(grads[0] + grads[1], leaves):
        np.testing.assert_allclose(ours, leaf.grad.numpy(), rtol=1e-9, atol=1e-9)


def test_conv3d_chunk_plan(monkeypatch):
    monkeypatch.setattr(conv, "WORKSPACE_BYTES", 1000)
    # a sample: 60 positions of 10 bytes, so one sample a chunk
    assert conv._chunks(2, (4, 3, 5), 10) == ([(slice(0, 1), (0, 4)), (slice(1, 2), (0, 4))], 60)
    monkeypatch.setattr(conv, "WORKSPACE_BYTES", 350)
    # a row of planes (15 positions) is 150 bytes: two rows a chunk
    assert conv._chunks(2, (4, 3, 5), 10) == (
        [(slice(i, i + 1), (a, a + 2)) for i in range(2) for a in (0, 2)], 30)
    monkeypatch.setattr(conv, "WORKSPACE_BYTES", 100)
    # a row is more than the workspace: still one row a chunk
    assert conv._chunks(2, (4, 3, 5), 10) == (
        [(slice(i, i + 1), (a, a + 1)) for i in range(2) for a in range(4)], 15)
    monkeypatch.setattr(conv, "WORKSPACE_BYTES", 10 ** 6)
    assert conv._chunks(5, (4, 3, 5), 10) == ([(slice(0, 5), (0, 4))], 300)


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("act", [None, "relu", ("leaky_relu", {"alpha": 0.2}),
                                 ("prelu", {"weight": np.linspace(0.1, 0.6, 4)})], ids=str)
def test_nd_epilogue_and_out_slices(rng, n, groups, act):
    """scale (a folded batchnorm), bias and a fused activation as CONV2D applies them, into
    a fresh array, a contiguous ``out`` or a channel slice of a wider one."""
    from cnnc.ops.activation import reference_act

    kernel_of = {1: conv1d, 3: conv3d}[n]
    x, w, b = _nd_case(rng, n, (3,) * n, groups, out=4)
    scale = rng.random(4) + 0.5
    attrs = dict(stride=2, pad=1, dilation=1, groups=groups)
    plain = conv.reference_conv_nd(x, w, None, **attrs)
    channel = (1, 4) + (1,) * n
    want = reference_act(plain * scale.reshape(channel) + b.reshape(channel), act)
    got = kernel_of(x, w, b, act=act, scale=scale, **attrs)
    assert_close(got, want)
    out = np.full(want.shape, np.nan)
    assert kernel_of(x, w, b, act=act, scale=scale, out=out, **attrs) is out
    assert_close(out, want)
    wide = np.full((2, 7) + want.shape[2:], 7.0)
    kernel_of(x, w, b, act=act, scale=scale, out=wide[:, 2:6], **attrs)
    assert_close(wide[:, 2:6], want)
    assert (wide[:, :2] == 7).all() and (wide[:, 6:] == 7).all()


@pytest.mark.parametrize("n", [1, 3])
def test_nd_training_rules(rng, n):
    forward = {1: conv.conv1d_forward, 3: conv.conv3d_forward}[n]
    backward = {1: conv.conv1d_backward, 3: conv.conv3d_backward}[n]
    kernel_of = {1: conv1d, 3: conv3d}[n]
    x, w, b = _nd_case(rng, n, (2,) * n, 2, np.float32)
    with pytest.raises(ValueError, match=f"conv{n}d: training needs act=None"):
        forward(x, w, b, act="relu", groups=2)
    y, saved = forward(x, w, b, groups=2)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, kernel_of(x, w, b, groups=2))
    with pytest.raises(ValueError, match=f"conv{n}d backward: dy must have the forward "
                                         f"output's shape"):
        backward(saved, np.zeros(y.shape[:-1] + (y.shape[-1] + 1,)))
    dy = np.ones(y.shape)
    (gx,), (gW, gb) = backward(saved, dy)
    assert gx.dtype == gW.dtype == gb.dtype == np.float32
    assert gx.shape == x.shape and gW.shape == w.shape and gb.shape == b.shape
    _, saved = forward(x, w, None, groups=2)
    (gx,), grads = backward(saved, dy)
    assert len(grads) == 1 and grads[0].shape == w.shape


@pytest.mark.parametrize("call, message", [
    (lambda: conv1d(np.zeros((2, 3, 4, 4)), np.zeros((2, 3, 3))),
     r"conv1d: input must be \[N, C, L\], got shape \(2, 3, 4, 4\)"),
    (lambda: conv3d(np.zeros((2, 3, 4, 4)), np.zeros((2, 3, 3, 3, 3))),
     r"conv3d: input must be \[N, C, D, H, W\], got shape \(2, 3, 4, 4\)"),
    (lambda: conv3d(np.zeros((2, 3, 4, 4, 4)), np.zeros((2, 3, 3, 3))),
     r"conv3d: weight must be \[out, C/groups, kd, kh, kw\]"),
    (lambda: conv1d(np.zeros((2, 3, 4)), np.zeros((2, 3, 5))),
     r"conv1d length: output size must be at least 1, got floor\(\(4 \+ 0 \+ 0 - 1\*\(5-1\) "
     r"- 1\)/1\) \+ 1 = 0"),
    (lambda: conv3d(np.zeros((1, 2, 5, 2, 5)), np.zeros((2, 2, 3, 3, 3))),
     r"conv3d height: output size must be at least 1"),
    (lambda: conv3d(np.zeros((1, 2, 5, 5, 5)), np.zeros((2, 2, 3, 3, 3)), stride=(1, 0, 1)),
     r"conv3d: stride and dilation must be >= 1 and pad >= 0, got stride=\(1, 0, 1\)"),
    (lambda: conv3d(np.zeros((1, 2, 5, 5, 5)), np.zeros((2, 2, 3, 3, 3)), stride=(1, 2)),
     r"stride must be an integer or a list of 3 \[depth, height, width\], got \(1, 2\)"),
    (lambda: conv3d(np.zeros((1, 3, 5, 5, 5)), np.zeros((2, 2, 3, 3, 3))),
     r"conv3d: weight \(2, 2, 3, 3, 3\) expects 2 input channels with groups=1, input has 3"),
    (lambda: conv1d(np.zeros((1, 2, 5)), np.zeros((2, 2, 3)), out=np.zeros((1, 2, 4))),
     r"conv1d: out must be \[1, 2, 3\] float64, got \[1, 2, 4\] float64"),
])
def test_nd_kernels_refuse_with_their_own_names(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("n", [1, 3])
def test_nd_onnx_runs_the_same_in_onnx_runtime(rng, n):
    prim = {1: conv.CONV1D_PRIMITIVE, 3: conv.CONV3D_PRIMITIVE}[n]
    for ex in prim.examples(np.random.default_rng(0)):
        for act in (None, "relu"):
            attrs = dict(ex.attrs, act=act)
            args = [np.asarray(a, np.float32) for a in ex.inputs + ex.params]
            want = prim.kernel(*args, **attrs)
            step = types.SimpleNamespace(attrs=attrs, name="c", shape=tuple(want.shape[1:]),
                                         inputs=["x"], params=[], span=None)
            got, nodes = _run_onnx_prim(prim, step, ex.inputs[0], ex.params, want.shape)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
            conv_node = nodes[0]
            assert conv_node.op_type == "Conv"
            found = {a.name: list(a.ints) for a in conv_node.attribute if a.ints}
            assert found["kernel_shape"] == list(ex.params[0].shape[2:])
            assert len(found["pads"]) == 2 * n


def _run_onnx_prim(prim, step, x, ws, out_shape):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    keys = [f"c.p{i}" for i in range(len(ws))]
    step.params = keys
    arrays = {k: np.asarray(a, np.float32) for k, a in zip(keys, ws)}
    g = StepGraph(onnx, step, arrays)
    prim.onnx(g, step, ["x"], keys, "y", [tuple(x.shape[1:])])
    helper = onnx.helper
    graph = helper.make_graph(
        g.nodes, "one", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, out_shape)],
        g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    (y,) = session.run(["y"], {"x": np.asarray(x, np.float32)})
    return y, g.nodes


def test_nd_primitive_flags():
    for prim in (conv.CONV1D_PRIMITIVE, conv.CONV3D_PRIMITIVE):
        assert prim.accepts_out and prim.accepts_scale and prim.gemm
        assert prim.in_place is None and not prim.alias
    # conv1d runs on CONV2D's CUDA kernels; conv3d's NumPy-API kernels run on CuPy
    assert conv.CONV1D_PRIMITIVE.gpu_kernel is conv.gpu_conv1d
    assert conv.CONV3D_PRIMITIVE.gpu_kernel is None and conv.CONV3D_PRIMITIVE.gpu_forward is None
