"""The activation family (ops/activation.py): every activation, softmax and maxout against
the slow reference, finite differences and PyTorch; the one table of activations and what
is derived from it (layers, kernel dispatch, backward, reference, ONNX, PyTorch); the
epilogue helpers conv and dense use; the edge cases the generic conformance tests
(tests/ops/test_conformance.py) do not pin."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

import cnnc
from cnnc.ops import activation as A
from cnnc.ops import cuda_kernels
from cnnc.ops.base import ExportError

DTYPES = [np.float32, np.float64]
TOLERANCES = {
    np.dtype(np.float32): dict(rtol=2e-4, atol=2e-5),
    np.dtype(np.float64): dict(rtol=1e-10, atol=1e-12),
}
CASES = [
    ("identity", {}),
    ("relu", {}),
    ("leaky_relu", {}),
    ("leaky_relu", {"alpha": 0.3}),
    ("leaky_relu", {"alpha": -0.5}),
    ("leaky_relu", {"alpha": 2.0}),
    ("elu", {}),
    ("elu", {"alpha": 0.5}),
    ("selu", {}),
    ("sigmoid", {}),
    ("tanh", {}),
    ("softplus", {}),
    ("swish", {}),
    ("swish", {"beta": 0.5}),
    ("silu", {}),
    ("relu6", {}),
    ("hardsigmoid", {}),
    ("hardswish", {}),
    ("gelu", {}),
    ("gelu_tanh", {}),
    ("mish", {}),
]
# Far enough out that a naive exp(-x) or exp(x) overflows in float32 and float64.
EXTREMES = [-1000.0, -100.0, -30.0, -1e-3, 0.0, 1e-3, 30.0, 100.0, 1000.0]


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


def close(actual, expected, dtype=None):
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, **TOLERANCES[np.dtype(dtype or actual.dtype)])


def _case_id(value):
    return str(value)


# ================================================================ the table


def test_the_table_names_every_activation_once():
    # the activations of the language's section 4 stay; others may join
    assert set(A.ACTIVATIONS) >= {"identity", "relu", "leaky_relu", "prelu", "elu", "selu",
                                  "sigmoid", "tanh", "softplus", "swish", "silu"}
    for name, act in A.ACTIVATIONS.items():
        assert act.name == name
        assert act.keeps in (None, "mask", "x", "y"), name
        for key in act.args:
            assert getattr(act, key) is not None, (name, key)


def test_every_activation_has_a_cuda_code_and_back():
    assert set(cuda_kernels.ACTIVATION_CODES) == set(A.ACTIVATIONS)
    assert cuda_kernels.ACTIVATION_CODES["identity"] == 0
    source = cuda_kernels.source()
    for name, value in (("CNNC_SELU_ALPHA", A.SELU_ALPHA), ("CNNC_SELU_SCALE", A.SELU_SCALE)):
        digits = source.split(f"#define {name} ", 1)[1].split("\n", 1)[0]
        assert float(digits) == value


def test_defaults_are_pytorchs():
    defaults = {name: (act.alpha, act.beta) for name, act in A.ACTIVATIONS.items()}
    assert defaults.items() >= {
        "identity": (None, None), "relu": (None, None), "leaky_relu": (0.01, None),
        "prelu": (None, None), "elu": (1.0, None), "selu": (None, None),
        "sigmoid": (None, None), "tanh": (None, None), "softplus": (None, None),
        "swish": (None, 1.0), "silu": (None, 1.0),
    }.items()


def test_keeps_what_each_backward_needs():
    keeps = {name: act.keeps for name, act in A.ACTIVATIONS.items()}
    assert keeps.items() >= {
        "identity": None, "relu": "mask", "leaky_relu": "mask", "prelu": "x", "elu": "x",
        "selu": "x", "sigmoid": "y", "tanh": "y", "softplus": "x", "swish": "x", "silu": "x",
    }.items()


# ================================================================ layers


def _layers():
    return {layer.name: layer for layer in A.LAYERS}


def test_layers_are_the_table_without_identity_plus_softmax_and_maxout():
    layers = _layers()
    entries = {name for name, act in A.ACTIVATIONS.items() if act.layer}
    assert entries == set(A.ACTIVATIONS) - {"identity", "gelu_tanh"}
    assert set(layers) == entries | {"softmax", "maxout"}
    for name, layer in layers.items():
        expected_ranks = (1, 3) if name in ("prelu", "maxout") else None
        assert layer.ranks == expected_ranks, name
        assert layer.changes_shape == (name == "maxout"), name


def test_layer_arguments():
    args = {name: [(a.name, a.kind, a.default) for a in layer.args]
            for name, layer in _layers().items()}
    assert args["leaky_relu"] == [("alpha", "float", 0.01)]
    assert args["elu"] == [("alpha", "float", 1.0)]
    assert args["swish"] == [("beta", "float", 1.0)]
    assert [a[:2] for a in args["maxout"]] == [("k", "count")]
    for name in ("relu", "sigmoid", "tanh", "selu", "softplus", "silu", "prelu", "softmax"):
        assert args[name] == [], name


def test_prelu_has_one_slope_per_channel_starting_at_a_quarter():
    prelu = _layers()["prelu"]
    assert prelu.params((6, 4, 4), {}) == {"weight": (6,)}
    assert prelu.params((10,), {}) == {"weight": (10,)}
    assert prelu.init("weight") == "0.25"
    relu = _layers()["relu"]
    assert relu.params((6, 4, 4), {}) == {}


def test_lowering_attributes():
    layers = _layers()
    node = SimpleNamespace(op="leaky_relu", args={"alpha": 0.2})
    assert layers["leaky_relu"].lower(node, [(3,)]) == (
        "activation", dict(name="leaky_relu", alpha=0.2, beta=None))
    node = SimpleNamespace(op="swish", args={"beta": 1.5})
    assert layers["swish"].lower(node, [(3,)]) == (
        "activation", dict(name="swish", alpha=None, beta=1.5))
    node = SimpleNamespace(op="relu", args={})
    assert layers["relu"].lower(node, [(3,)]) == (
        "activation", dict(name="relu", alpha=None, beta=None))
    node = SimpleNamespace(op="softmax", args={})
    assert layers["softmax"].lower(node, [(3,)]) == ("softmax", dict(axis=1))
    node = SimpleNamespace(op="maxout", args={"k": 3})
    assert layers["maxout"].lower(node, [(6, 2, 2)]) == ("maxout", dict(k=3))


def _check(source):
    return cnnc.check("network t\n" + source)


def test_compiled_network_lowers_every_layer_of_the_family():
    from cnnc.compiler.plan import lower

    net = _check("input x: [6, 4, 4]\noutput y = x -> prelu -> leaky_relu(0.2) -> maxout(3)"
                 " -> swish(1.5) -> elu -> relu -> sigmoid -> tanh -> selu -> softplus"
                 " -> silu -> softmax\n")
    assert net.ok, [d.message for d in net.diagnostics]
    plan = lower(net)
    got = [(s.op.value, s.attrs, s.params, tuple(s.shape)) for s in plan.steps]
    assert got[:5] == [
        ("activation", dict(name="prelu", alpha=None, beta=None), ["y.prelu1.weight"],
         (6, 4, 4)),
        ("activation", dict(name="leaky_relu", alpha=0.2, beta=None), [], (6, 4, 4)),
        ("maxout", dict(k=3), [], (2, 4, 4)),
        ("activation", dict(name="swish", alpha=None, beta=1.5), [], (2, 4, 4)),
        ("activation", dict(name="elu", alpha=1.0, beta=None), [], (2, 4, 4)),
    ]
    assert got[-1] == ("softmax", dict(axis=1), [], (2, 4, 4))
    assert plan.initial["y.prelu1.weight"] == "0.25"


def test_identity_is_no_layer():
    net = _check("input x: [6, 4, 4]\noutput y = x -> identity\n")
    assert [d.code for d in net.diagnostics] == ["E203"]


@pytest.mark.parametrize("shape, what", [("[6, 4, 4]", "channels"), ("[6]", "features")])
def test_maxout_needs_a_divisor_of_the_channels(shape, what):
    net = _check(f"input x: {shape}\noutput y = x -> maxout(4)\n")
    (d,) = net.diagnostics
    assert d.code == "E305"
    assert d.message == f"maxout k=4 does not divide the 6 input {what}"
    assert d.help == "6 divides by k=2 or k=3 or k=6"


def test_maxout_and_prelu_take_maps_and_vectors():
    for layer in ("maxout(2)", "prelu"):
        net = _check(f"input x: [6, 4, 4]\noutput y = x -> {layer}\n")
        assert net.ok, layer
        net = _check(f"input x: [6, 4, 4]\noutput y = x -> flatten -> {layer}\n")
        assert net.ok, layer


def test_maxout_shape_rule():
    maxout = _layers()["maxout"]
    errors = []
    ctx = SimpleNamespace(error=lambda *a, **k: errors.append(a))
    assert maxout.infer((6, 4, 5), {"k": 3}, ctx) == (2, 4, 5)
    assert maxout.infer((12,), {"k": 4}, ctx) == (3,)
    assert errors == []


# ================================================================ kernel against the reference


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, params", CASES, ids=_case_id)
def test_activation_matches_reference(rng, dtype, name, params):
    x = (3 * rng.standard_normal((2, 3, 4, 5))).astype(dtype)
    before = x.copy()
    y = A.activation(x, name=name, **params)
    assert y.dtype == dtype
    close(y, A.reference_activation(x, name=name, **params))
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, params", CASES, ids=_case_id)
def test_activation_is_finite_at_extremes(dtype, name, params):
    x = np.array(EXTREMES, dtype=dtype).reshape(1, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow or invalid-value warnings
        y = A.activation(x, name=name, **params)
    assert np.isfinite(y).all()
    close(y, A.reference_activation(x, name=name, **params))


@pytest.mark.parametrize("name, params", CASES, ids=_case_id)
def test_out_may_be_the_input(rng, name, params):
    x = 3 * rng.standard_normal((2, 3, 4))
    want = A.activation(x, name=name, **params)
    y = A.activation(x, name=name, out=x, **params)
    assert y is x
    np.testing.assert_array_equal(x, want)
    out = np.empty_like(want)
    x = 3 * rng.standard_normal((2, 3, 4))
    want = A.activation(x, name=name, **params)
    assert A.activation(x, name=name, out=out, **params) is out
    np.testing.assert_array_equal(out, want)


def test_integers_compute_in_float64():
    y = A.activation(np.array([[-2, 0, 3]]), name="sigmoid")
    assert y.dtype == np.float64
    close(y, A.reference_activation(np.array([[-2.0, 0.0, 3.0]]), name="sigmoid"))


def test_sigmoid_keeps_relative_accuracy_far_left():
    y = A.activation(np.array([[-40.0, -700.0]]), name="sigmoid")
    np.testing.assert_allclose(y, [[np.exp(-40.0), np.exp(-700.0)]], rtol=1e-12)


def test_selu_constants():
    # Klambauer et al. 2017: alpha_01 ~ 1.6733, lambda_01 ~ 1.0507
    assert A.SELU_ALPHA == pytest.approx(1.6732632423543772)
    assert A.SELU_SCALE == pytest.approx(1.0507009873554805)
    y = A.activation(np.array([[-1.0, 1.0]]), name="selu")
    np.testing.assert_allclose(y, [[A.SELU_SCALE * A.SELU_ALPHA * np.expm1(-1.0),
                                    A.SELU_SCALE]])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (4, 3)])
def test_prelu_is_per_channel(rng, dtype, shape):
    x = rng.standard_normal(shape).astype(dtype)
    slopes = rng.uniform(-0.5, 0.5, size=3).astype(dtype)
    y = A.activation(x, slopes, name="prelu")
    close(y, A.reference_activation(x, slopes, name="prelu"))
    shared = A.activation(x, np.array([0.25], dtype=dtype), name="prelu")
    close(shared, A.reference_activation(x, np.array([0.25]), name="prelu"))


def test_prelu_reports_wrong_slope_count(rng):
    with pytest.raises(ValueError, match=r"weight has 2 slopes, expected 1 or 3"):
        A.activation(rng.standard_normal((1, 3, 2, 2)), np.ones(2), name="prelu")


def test_prelu_needs_its_slopes():
    with pytest.raises(ValueError, match=r"^prelu: needs its per-channel weight, got none$"):
        A.activation(np.zeros((1, 3)), name="prelu")


def test_unknown_activation_lists_the_known_ones():
    known = r"^unknown activation 'bogus'; known: elu, (\w+, )*identity, "
    with pytest.raises(ValueError, match=known):
        A.activation(np.zeros((1, 1)), name="bogus")
    with pytest.raises(ValueError, match=r"^unknown activation 'bogus'$"):
        A.reference_activation(np.zeros((1, 1)), name="bogus")


def test_apply_act_takes_none_a_name_or_a_name_and_params(rng):
    z = rng.standard_normal((3, 4))
    assert A.apply_act_(z, None) is z
    for act, name, params in [
        ("tanh", "tanh", {}),
        (("leaky_relu", {"alpha": 0.2, "beta": None}), "leaky_relu", {"alpha": 0.2}),
        (("relu", None), "relu", {}),
        (("prelu", {"weight": np.array([0.1, 0.2, 0.3, 0.4])}), "prelu",
         {"weight": np.array([0.1, 0.2, 0.3, 0.4])}),
    ]:
        weight = params.pop("weight", None)
        want = A.activation(z, weight, name=name, **params)
        y = z.copy()
        assert A.apply_act_(y, act) is y  # in place
        np.testing.assert_array_equal(y, want)
        close(A.reference_act(z, act), want)
    assert A.reference_act(z, None) is z


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 10), (2, 4, 3, 3)])
def test_softmax_matches_reference(rng, dtype, shape):
    x = (5 * rng.standard_normal(shape)).astype(dtype)
    y = A.softmax(x)
    assert y.dtype == dtype
    close(y, A.reference_softmax(x))
    close(y.sum(axis=1), np.ones((shape[0],) + shape[2:]))


def test_softmax_is_stable_for_large_logits():
    x = np.array([[1000.0, 1000.0, -1000.0]], dtype=np.float32)
    close(A.softmax(x), [[0.5, 0.5, 0.0]])


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("shape", [(2, 6, 3, 4), (2, 6)])
def test_maxout_matches_reference(rng, k, shape):
    x = rng.standard_normal(shape)
    y = A.maxout(x, k=k)
    assert y.shape == (shape[0], 6 // k) + shape[2:]
    close(y, A.reference_maxout(x, k=k))


def test_maxout_groups_adjacent_channels():
    x = np.array([[1.0, 5.0, 2.0, 3.0, 9.0, 0.0]])
    np.testing.assert_array_equal(A.maxout(x, k=2), [[5.0, 3.0, 9.0]])
    np.testing.assert_array_equal(A.maxout(x, k=3), [[5.0, 9.0]])


def test_maxout_reports_indivisible_channels():
    with pytest.raises(ValueError, match=r"divide by k: 6 channels, k=4"):
        A.maxout(np.zeros((1, 6, 2, 2)), k=4)
    with pytest.raises(ValueError, match=r"divide by k: 6 channels, k=0"):
        A.maxout(np.zeros((1, 6)), k=0)


# ================================================================ training: finite differences

STEP = 1e-5
FD_TOL = dict(rtol=1e-6, atol=1e-7)
GRADS = {
    "activation": (A.activation_forward, A.activation_backward),
    "softmax": (A.softmax_forward, A.softmax_backward),
    "maxout": (A.maxout_forward, A.maxout_backward),
}


def _away_from_zero(a):
    return np.where(a < 0, a - 0.05, a + 0.05)


def _distinct(rng, shape):
    """Values 0.01 apart in random order: no two elements tie within the step."""
    size = int(np.prod(shape))
    return (rng.permutation(size) - size / 2).reshape(shape) * 0.01


def _numeric(f, a):
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


def fd_check(op, inputs, params=(), seed=0, **attrs):
    """``backward`` against central differences of ``sum(y * r)``, for every input and
    parameter."""
    forward, backward = GRADS[op]
    inputs = [np.array(a, dtype=np.float64) for a in inputs]
    params = [np.array(p, dtype=np.float64) for p in params]

    def run():
        return forward(*inputs, *params, rng=np.random.default_rng(seed), **attrs)

    y, saved = run()
    r = np.random.default_rng(seed + 1).standard_normal(y.shape)
    gxs, gps = backward(saved, r)
    assert len(gxs) == len(inputs)
    assert len(gps) == len(params)

    def f():
        return float(np.sum(run()[0] * r))

    for a, g in zip(inputs + params, list(gxs) + list(gps)):
        assert g.dtype == np.float64 and g.shape == a.shape
        np.testing.assert_allclose(g, _numeric(f, a), **FD_TOL)


FD_ACTIVATIONS = [
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


@pytest.mark.parametrize("name, alpha, beta", FD_ACTIVATIONS)
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 2, 2)])
def test_activation_backward_matches_finite_differences(name, alpha, beta, shape):
    x = _away_from_zero(np.random.default_rng(9).standard_normal(shape) * 2)
    fd_check("activation", [x], name=name, alpha=alpha, beta=beta)


@pytest.mark.parametrize("slopes", [1, 3])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 2)])
def test_prelu_backward_matches_finite_differences(slopes, shape):
    rng = np.random.default_rng(10)
    x = _away_from_zero(rng.standard_normal(shape))
    fd_check("activation", [x], [rng.uniform(-0.5, 0.5, slopes)], name="prelu", alpha=None,
             beta=None)


@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 2, 3)])
def test_softmax_backward_matches_finite_differences(shape):
    x = np.random.default_rng(11).standard_normal(shape) * 2
    fd_check("softmax", [x], axis=1)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("shape", [(3, 6), (2, 6, 2, 3)])
def test_maxout_backward_matches_finite_differences(k, shape):
    fd_check("maxout", [_distinct(np.random.default_rng(12), shape)], k=k)


# ================================================================ training: rules


def _grad(op, x, *params, dy=None, **attrs):
    forward, backward = GRADS[op]
    y, saved = forward(x, *params, **attrs)
    (gx,), _ = backward(saved, np.ones_like(y) if dy is None else dy)
    return y, gx


@pytest.mark.parametrize("shape", [(2, 6), (2, 6, 2, 2)])
def test_maxout_tie_goes_to_the_first_channel_of_its_group(shape):
    x = np.ones(shape)
    _, gx = _grad("maxout", x, k=3)
    expected = np.zeros(shape)
    expected[:, 0] = expected[:, 3] = 1  # groups are channels 0-2 and 3-5
    np.testing.assert_array_equal(gx, expected)


def test_maxout_keeps_a_compact_index():
    x = np.random.default_rng(0).standard_normal((2, 6, 3, 3)).astype(np.float32)
    _, saved = A.maxout_forward(x, k=3)
    arrays = [a for a in saved if isinstance(a, np.ndarray)]
    assert len(arrays) == 1 and arrays[0].dtype == np.uint8 and arrays[0].shape == (2, 2, 3, 3)


def test_relu_gradient_at_zero_is_zero():
    x = np.array([[-1.0, 0.0, 2.0]])
    _, gx = _grad("activation", x, name="relu", alpha=None, beta=None)
    np.testing.assert_array_equal(gx, [[0, 0, 1]])


@pytest.mark.parametrize("name, params", CASES, ids=_case_id)
def test_forward_is_the_kernel_and_gradients_belong_to_the_caller(rng, name, params):
    x = 3 * rng.standard_normal((2, 3, 2)).astype(np.float32)
    y, saved = A.activation_forward(x, name=name, **params)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, A.activation(x, name=name, **params))
    dy = np.ones_like(y)
    (gx,), gws = A.activation_backward(saved, dy)
    assert gws == ()
    assert gx.dtype == np.float32 and not np.shares_memory(gx, dy)
    assert not np.shares_memory(gx, x)


def test_dy_of_the_wrong_shape_is_refused():
    x = np.ones((2, 3, 4, 4))
    y, saved = A.activation_forward(x, name="tanh", alpha=None, beta=None)
    with pytest.raises(ValueError, match=r"activation tanh backward"):
        A.activation_backward(saved, y[:1])
    y, saved = A.softmax_forward(x, axis=1)
    with pytest.raises(ValueError, match=r"softmax backward"):
        A.softmax_backward(saved, y[:1])
    y, saved = A.maxout_forward(x, k=3)
    with pytest.raises(ValueError, match=r"maxout backward"):
        A.maxout_backward(saved, x)


def test_unknown_activation_names_the_known_ones_in_training():
    with pytest.raises(ValueError, match=r"^activation: unknown activation 'bogus'.*relu"):
        A.activation_forward(np.ones((1, 2)), name="bogus", alpha=None, beta=None)


# ================================================================ PyTorch

torch_only = pytest.mark.torch


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only wait on each other
    yield torch
    torch.set_num_threads(before)


def _t(torch, a):
    return torch.from_numpy(np.ascontiguousarray(a))


TORCH_ACTIVATIONS = [
    ("relu", {}, "relu"),
    ("leaky_relu", {}, "leaky_relu"),
    ("leaky_relu", {"alpha": 0.2}, "leaky_relu_0.2"),
    ("leaky_relu", {"alpha": 1.5}, "leaky_relu_1.5"),
    ("elu", {}, "elu"),
    ("elu", {"alpha": 0.4}, "elu_0.4"),
    ("selu", {}, "selu"),
    ("sigmoid", {}, "sigmoid"),
    ("tanh", {}, "tanh"),
    ("softplus", {}, "softplus"),
    ("silu", {}, "silu"),
    ("swish", {}, "silu"),
    ("swish", {"beta": 1.7}, "swish_1.7"),
    ("swish", {"beta": 0.5}, "swish_0.5"),
]


def _torch_fn(torch, key):
    """Written against torch.nn.functional directly, not through the module's mapping."""
    F = torch.nn.functional
    if key.startswith("swish_"):
        beta = float(key.split("_")[1])
        return lambda t: t * torch.sigmoid(beta * t)
    if "_0" in key or "_1" in key:
        name, value = key.rsplit("_", 1)
        return lambda t: getattr(F, name)(t, float(value))
    return getattr(torch, key) if key in ("sigmoid", "tanh") else getattr(F, key)


def _torch_compare(torch, forward, backward, torch_fn, inputs, params, dtype, **attrs):
    """Forward and backward (``dy`` random) against autograd on leaf tensors."""
    inputs = [np.asarray(a, dtype=dtype) for a in inputs]
    params = [np.asarray(p, dtype=dtype) for p in params]
    leaves = [torch.tensor(a, requires_grad=True) for a in inputs + params]
    y, saved = forward(*inputs, *params, rng=None, **attrs)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    gxs, gps = backward(saved, dy)
    expected = torch_fn(*leaves)
    close(y, expected.detach().numpy(), dtype)
    assert y.dtype == dtype
    expected.backward(torch.from_numpy(dy))
    for ours, leaf in zip(list(gxs) + list(gps), leaves):
        assert ours.dtype == dtype
        close(ours, leaf.grad.numpy(), dtype)


@torch_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, params, key", TORCH_ACTIVATIONS, ids=_case_id)
def test_activation_matches_pytorch(torch, dtype, name, params, key):
    x = np.random.default_rng(8).standard_normal((3, 4, 2, 3)) * 3
    attrs = dict(dict(alpha=None, beta=None), **params)
    _torch_compare(torch, A.activation_forward, A.activation_backward, _torch_fn(torch, key),
                   [x], [], dtype, name=name, **attrs)
    # the module's own mapping (the PyTorch oracle of whole plans) agrees
    step = SimpleNamespace(attrs=dict(name=name, **attrs), name="a", shape=(4, 2, 3),
                           inputs=["x"], params=[])
    got = A.torch_activation(step, [_t(torch, x.astype(dtype))], [], False)
    close(got.numpy(), A.activation(x.astype(dtype), name=name, **params))


@torch_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, slopes", [
    ((3, 4, 2, 3), 4), ((3, 4, 2, 3), 1), ((5, 4), 4), ((5, 4), 1),
])
def test_prelu_matches_pytorch(torch, dtype, shape, slopes):
    rng = np.random.default_rng(9)
    x = rng.standard_normal(shape)
    w = rng.uniform(-0.5, 0.5, slopes)
    _torch_compare(torch, A.activation_forward, A.activation_backward,
                   torch.nn.functional.prelu, [x], [w], dtype, name="prelu", alpha=None,
                   beta=None)
    step = SimpleNamespace(attrs=dict(name="prelu", alpha=None, beta=None))
    got = A.torch_activation(step, [_t(torch, x)], [_t(torch, w)], False)
    close(got.numpy(), A.activation(x, w, name="prelu"))


@torch_only
def test_identity_maps_to_itself_and_unknown_names_are_refused(torch):
    x = _t(torch, np.arange(6.0).reshape(2, 3))
    step = SimpleNamespace(attrs=dict(name="identity", alpha=None, beta=None))
    assert A.torch_activation(step, [x], [], False) is x
    step = SimpleNamespace(attrs=dict(name="bogus", alpha=None, beta=None))
    with pytest.raises(AssertionError, match="no PyTorch rule for activation 'bogus'"):
        A.torch_activation(step, [x], [], False)


@torch_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 10), (2, 5, 3, 3)])
def test_softmax_matches_pytorch(torch, dtype, shape):
    x = np.random.default_rng(10).standard_normal(shape) * 3
    _torch_compare(torch, A.softmax_forward, A.softmax_backward,
                   lambda t: torch.nn.functional.softmax(t, dim=1), [x], [], dtype, axis=1)
    step = SimpleNamespace(attrs=dict(axis=1))
    close(A.torch_softmax(step, [_t(torch, x)], [], False).numpy(), A.softmax(x))


@torch_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 12), (2, 12, 3, 3)])
@pytest.mark.parametrize("k", [2, 3, 4])
def test_maxout_matches_pytorch(torch, dtype, shape, k):
    x = np.random.default_rng(11).standard_normal(shape)  # no ties: torch's max(dim) may
    # pick any of several tied indices

    def reference(t):
        grouped = t.reshape((t.shape[0], t.shape[1] // k, k) + tuple(t.shape[2:]))
        return grouped.max(dim=2).values

    _torch_compare(torch, A.maxout_forward, A.maxout_backward, reference, [x], [], dtype, k=k)
    step = SimpleNamespace(attrs=dict(k=k))
    close(A.torch_maxout(step, [_t(torch, x)], [], False).numpy(), A.maxout(x, k=k))


# ================================================================ ONNX


class _Graph:
    """The part of runtime/onnx_export's graph builder an emitter uses, for one step."""

    def __init__(self, onnx, opset=17):
        self.onnx = onnx
        self.opset = opset
        self.nodes = []
        self.initializers = []
        self.arrays = {}
        self.step = SimpleNamespace(name="layer", span=None)
        self.count = 0

    def temp(self, purpose):
        self.count += 1
        return f"{self.step.name}/{purpose}:{self.count}"

    def node(self, op_type, inputs, output, purpose=None, **attrs):
        name = self.step.name if purpose is None else f"{self.step.name}/{purpose}"
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [output], name=name,
                                                     **attrs))
        return output

    def const(self, purpose, value, dtype):
        name = self.temp(purpose)
        array = np.asarray(value, dtype=dtype)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def weight(self, name, value):
        self.initializers.append(
            self.onnx.numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def reduce(self, op_type, x, axes, output, purpose=None):
        if self.opset >= 18:
            return self.node(op_type, [x, self.const("axes", axes, np.int64)], output,
                             purpose, keepdims=0)
        return self.node(op_type, [x], output, purpose, axes=axes, keepdims=0)

    def run(self, x, out_shape):
        onnx = self.onnx
        ort = pytest.importorskip("onnxruntime")
        float32 = onnx.TensorProto.FLOAT
        graph = onnx.helper.make_graph(
            self.nodes, "one",
            [onnx.helper.make_tensor_value_info("x", float32, ["N"] + list(x.shape[1:]))],
            [onnx.helper.make_tensor_value_info("y", float32, ["N"] + list(out_shape))],
            self.initializers)
        model = onnx.helper.make_model(graph,
                                       opset_imports=[onnx.helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        (y,) = session.run(["y"], {"x": np.asarray(x, dtype=np.float32)})
        return y


ONNX_CASES = CASES + [("leaky_relu", {"alpha": 1.5}), ("swish", {"beta": 1.7}),
                      ("silu", {"beta": 0.5}), ("elu", {"alpha": 0.3})]


@pytest.mark.parametrize("shape", [(3, 4, 3, 2), (3, 5)])
@pytest.mark.parametrize("name, params", ONNX_CASES, ids=_case_id)
def test_onnx_activation_runs_the_same_in_onnx_runtime(rng, shape, name, params):
    onnx = pytest.importorskip("onnx")
    x = (30 * rng.standard_normal(shape)).astype(np.float32)  # far out: no overflow
    g = _Graph(onnx)
    step = SimpleNamespace(name="layer", attrs=dict(dict(alpha=None, beta=None), **params))
    step.attrs["name"] = name
    A.onnx_activation(g, step, ["x"], [], "y", [shape[1:]])
    close(g.run(x, shape[1:]), A.activation(x, name=name, **params))


@pytest.mark.parametrize("slopes", [1, 4])
@pytest.mark.parametrize("shape", [(3, 4, 3, 2), (3, 4)])
def test_onnx_prelu_broadcasts_its_slopes_along_channels(rng, shape, slopes):
    onnx = pytest.importorskip("onnx")
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.uniform(-0.5, 0.5, slopes).astype(np.float32)
    g = _Graph(onnx)
    step = SimpleNamespace(name="layer", attrs=dict(name="prelu", alpha=None, beta=None))
    A.onnx_activation(g, step, ["x"], [g.weight("layer.weight", w)], "y", [shape[1:]])
    close(g.run(x, shape[1:]), A.activation(x, w, name="prelu"))


def test_onnx_refusals():
    onnx = pytest.importorskip("onnx")
    g = _Graph(onnx)
    with pytest.raises(ExportError, match=r"^layer: prelu needs its slope parameter$"):
        A.emit_activation(g, "prelu", None, None, "x", "y", None, (3,))
    with pytest.raises(ExportError, match=r"^layer: no ONNX mapping for activation 'bogus'$"):
        A.emit_activation(g, "bogus", None, None, "x", "y", None, (3,))
    with pytest.raises(ExportError, match=r"^layer: a fused prelu cannot be exported"):
        A.emit_fused(g, ("prelu", {"weight": np.ones(3)}), "x", "y", (3,))


@pytest.mark.parametrize("act, name, params", [
    ("relu", "relu", {}),
    (("swish", {"beta": 1.5}), "swish", {"beta": 1.5}),
    (("leaky_relu", {"alpha": 0.2, "beta": None}), "leaky_relu", {"alpha": 0.2}),
    (("elu", None), "elu", {}),
], ids=_case_id)
def test_onnx_fused_epilogue(rng, act, name, params):
    onnx = pytest.importorskip("onnx")
    x = (3 * rng.standard_normal((2, 5))).astype(np.float32)
    g = _Graph(onnx)
    A.emit_fused(g, act, "x", "y", (5,))
    assert g.nodes[-1].name == "layer"
    close(g.run(x, (5,)), A.activation(x, name=name, **params))


@pytest.mark.parametrize("shape", [(3, 10), (2, 4, 3, 3)])
def test_onnx_softmax(rng, shape):
    onnx = pytest.importorskip("onnx")
    x = (5 * rng.standard_normal(shape)).astype(np.float32)
    g = _Graph(onnx)
    A.onnx_softmax(g, SimpleNamespace(attrs=dict(axis=1)), ["x"], [], "y", [shape[1:]])
    close(g.run(x, shape[1:]), A.softmax(x))


@pytest.mark.parametrize("opset", [17, 18, 21])
@pytest.mark.parametrize("shape, k", [((3, 6, 2, 3), 3), ((3, 8), 2), ((3, 6, 2, 3), 1)])
def test_onnx_maxout_in_every_opset(rng, opset, shape, k):
    """Opset 18 moved the Reduce* axes from an attribute to an input."""
    onnx = pytest.importorskip("onnx")
    x = rng.standard_normal(shape).astype(np.float32)
    want = A.maxout(x, k=k)
    g = _Graph(onnx, opset)
    A.onnx_maxout(g, SimpleNamespace(attrs=dict(k=k)), ["x"], [], "y", [shape[1:]])
    close(g.run(x, want.shape[1:]), want)
    # the batch size is left to run time
    close(g.run(x[:1], want.shape[1:]), want[:1])


# ================================================================ examples


def test_examples_cover_every_activation_and_argument():
    examples = A.activation_examples(np.random.default_rng(0))
    seen = {(ex.attrs["name"], ex.attrs["alpha"], ex.attrs["beta"]) for ex in examples}
    for name, act in A.ACTIVATIONS.items():
        assert (name, None, None) in seen, name
        for key in act.args:
            assert any(n == name and (a if key == "alpha" else b) is not None
                       for n, a, b in seen), (name, key)
    slopes = sorted(ex.params[0].size for ex in examples if ex.attrs["name"] == "prelu")
    assert slopes == [1, 3]
    for ex in examples:
        assert np.abs(ex.inputs[0]).min() >= 0.05  # no kink within a finite difference
        assert ex.inputs[0].shape[0] == 2
    ks = sorted({ex.attrs["k"] for ex in A.maxout_examples(np.random.default_rng(0))})
    assert {2, 3} <= set(ks)


# ================================================================ relu6


def test_relu6_clips_at_both_ends_and_its_gradient_stops_at_the_kinks():
    x = np.array([[-1.0, 0.0, 3.0, 6.0, 7.5]])
    y, saved = A.activation_forward(x, name="relu6")
    np.testing.assert_array_equal(y, [[0.0, 0.0, 3.0, 6.0, 6.0]])
    (gx,), _ = A.activation_backward(saved, np.ones_like(x))
    np.testing.assert_array_equal(gx, [[0.0, 0.0, 1.0, 0.0, 0.0]])  # as torch's ReLU6
    torch = pytest.importorskip("torch")
    t = torch.tensor(x, requires_grad=True)
    torch.nn.functional.relu6(t).sum().backward()
    np.testing.assert_array_equal(gx, t.grad.numpy())


def test_relu6_is_a_layer_and_no_longer_a_typo_of_relu():
    import cnnc

    net = cnnc.check("network t\ninput x: [3, 8, 8]\noutput y = x -> conv(4, 3) -> relu6\n")
    assert net.ok, [d.message for d in net.diagnostics]
    (node,) = [n for n in net.nodes.values() if n.op == "relu6"]
    assert node.shape == (4, 6, 6)


# ================================================================ erf and erfc


def _erf_grid():
    """-30 .. 30 densely, the piece ends and specials."""
    grid = np.linspace(-30.0, 30.0, 240001)
    specials = [0.0, -0.0, 1e-300, -1e-300, 1e-8, 0.5, 1.0, -1.0, 2.0, 3.0, 4.0, 4.0001,
                5.9, 6.0, 26.5, 27.0]
    return np.concatenate([grid, specials])


def test_erf_and_erfc_match_math_on_a_dense_grid():
    x = _erf_grid()
    erf = A.erf(x)
    erfc = A.erfc(x)
    assert erf.dtype == erfc.dtype == np.float64
    want_erf = np.array([math.erf(v) for v in x])
    want_erfc = np.array([math.erfc(v) for v in x])
    np.testing.assert_allclose(erf, want_erf, rtol=5e-16, atol=0)
    normal = want_erfc > 1e-300  # below, math's own result is subnormal
    np.testing.assert_allclose(erfc[normal], want_erfc[normal], rtol=1.2e-15, atol=0)
    np.testing.assert_allclose(erfc[~normal], want_erfc[~normal], rtol=0, atol=1e-300)
    np.testing.assert_array_equal(np.signbit(erf), np.signbit(x))  # odd, -0.0 included


def test_erf_and_erfc_in_float32():
    x = _erf_grid().astype(np.float32)
    erf = A.erf(x)
    erfc = A.erfc(x)
    assert erf.dtype == erfc.dtype == np.float32
    x64 = x.astype(np.float64)  # the float32 values themselves, exactly
    want_erf = np.array([math.erf(v) for v in x64])
    want_erfc = np.array([math.erfc(v) for v in x64])
    normal = np.abs(want_erf) > 1e-37
    np.testing.assert_allclose(erf[normal], want_erf[normal], rtol=2e-7)
    body = np.abs(x64) < 4
    np.testing.assert_allclose(erfc[body], want_erfc[body], rtol=7e-7)
    normal = want_erfc > 1e-37
    np.testing.assert_allclose(erfc[normal], want_erfc[normal], rtol=5e-6)


def test_erf_and_erfc_special_values_dtypes_and_shapes():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e300, -1e300])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow: |x| is clipped before squaring
        erf = A.erf(x)
        erfc = A.erfc(x)
    np.testing.assert_array_equal(erf, [np.nan, 1, -1, 0, -0.0, 1, -1])
    np.testing.assert_array_equal(erfc, [np.nan, 0, 2, 1, 1, 0, 2])
    assert A.erf(np.array([[-2, 0, 3]])).dtype == np.float64  # integers: float64
    assert A.erfc(np.ones(3, np.float16)).dtype == np.float32  # float16 computes in float32
    assert A.erf(np.float64(0.5)).shape == ()
    cube = np.linspace(-3, 3, 24).reshape(2, 3, 4)
    np.testing.assert_array_equal(A.erf(cube), A.erf(cube.reshape(-1)).reshape(2, 3, 4))
    assert A.erf(np.zeros((0, 3))).shape == (0, 3)


def test_erf_series_are_the_chebyshev_interpolants_they_say():
    """The coefficients of ops/activation.py, recomputed as its comment says (mpmath)."""
    mpmath = pytest.importorskip("mpmath")

    def interpolant(f, nodes):
        with mpmath.workdps(50):
            angles = [mpmath.pi * (k + mpmath.mpf(1) / 2) / nodes for k in range(nodes)]
            values = [f(mpmath.cos(t)) for t in angles]
            cs = [2 * mpmath.fsum(v * mpmath.cos(j * t) for v, t in zip(values, angles)) / nodes
                  for j in range(nodes)]
            cs[0] /= 2
            largest = max(abs(c) for c in cs)
            last = max(j for j, c in enumerate(cs) if abs(c) > largest * mpmath.mpf(10) ** -19)
            return [float(c) for c in cs[:last + 1]]

    def erfc_scaled(s):  # (1 + x/4) erfcx(x), s = (4 - x) / (4 + x)
        if s == -1:
            return 1 / (4 * mpmath.sqrt(mpmath.pi))
        x = 4 * (1 - s) / (1 + s)
        return mpmath.exp(x * x) * mpmath.erfc(x) * (4 + x) / 4

    def erf_over_x(s):  # erf(x) / x, s = 2 x^2 - 1
        x = mpmath.sqrt((s + 1) / 2)
        return 2 / mpmath.sqrt(mpmath.pi) if x == 0 else mpmath.erf(x) / x

    np.testing.assert_allclose(interpolant(erfc_scaled, 96), A._ERFC_SERIES, rtol=1e-15,
                               atol=1e-30)
    np.testing.assert_allclose(interpolant(erf_over_x, 48), A._ERF_SERIES, rtol=1e-15,
                               atol=1e-30)


# ================================================================ hardsigmoid, hardswish, gelu,
# mish (spec section 9)

NEW = ["hardsigmoid", "hardswish", "gelu", "gelu_tanh", "mish"]
# torch.nn.functional by entry name
TORCH_NEW = {
    "hardsigmoid": lambda F, t: F.hardsigmoid(t),
    "hardswish": lambda F, t: F.hardswish(t),
    "gelu": lambda F, t: F.gelu(t),
    "gelu_tanh": lambda F, t: F.gelu(t, approximate="tanh"),
    "mish": lambda F, t: F.mish(t),
}


def _edge_grid():
    """-8 .. 8 by 1/64 (exact in binary: every kink -3, 0, 3 is on it, and its neighbours),
    the tails and the far values."""
    grid = np.arange(-512, 513) / 64.0
    far = [-1000.0, -100.0, -40.0, -20.0, -12.0, -10.0, 10.0, 12.0, 20.0, 40.0, 100.0,
           1000.0, -3.0 - 1e-9, -3.0 + 1e-9, 3.0 - 1e-9, 3.0 + 1e-9]
    return np.concatenate([grid, far]).reshape(1, -1)


def test_new_activations_are_rank_generic_layers_without_arguments_but_gelu():
    layers = _layers()
    for name in ["hardsigmoid", "hardswish", "gelu", "mish"]:
        layer = layers[name]
        assert layer.ranks is None and not layer.changes_shape, name
        assert layer.params((6, 4, 4), {}) == {}, name
        for shape in [(6,), (3, 8), (3, 8, 8), (3, 4, 8, 8), ("C", "H", "W")]:
            assert layer.infer(shape, {}, None) == shape, (name, shape)
        if name != "gelu":
            assert layer.args == [], name
    assert "gelu_tanh" not in layers  # an entry, reached through gelu(approximate=tanh)


def test_gelu_takes_approximate_as_a_word_that_picks_the_entry():
    gelu = _layers()["gelu"]
    assert [(a.name, a.kind, a.default) for a in gelu.args] == [
        ("approximate", "choice:none|tanh", "none")]
    lowered = {}
    for word in [None, "none", "tanh"]:
        node = SimpleNamespace(op="gelu", args={"approximate": word})
        lowered[word] = gelu.lower(node, [(3,)])
    assert lowered[None] == lowered["none"] == (
        "activation", dict(name="gelu", alpha=None, beta=None))
    assert lowered["tanh"] == ("activation", dict(name="gelu_tanh", alpha=None, beta=None))
    assert gelu.lower(SimpleNamespace(op="gelu", args={}), [(3,)])[1]["name"] == "gelu"
    with pytest.raises(ValueError, match=r"^gelu: approximate must be none or tanh, got 'erf'$"):
        A.chosen_entry("gelu", {"approximate": "erf"})
    assert A.chosen_entry("relu6", {}) == "relu6"


def test_new_layers_check_and_lower_in_a_network():
    from cnnc.compiler.plan import lower

    for shape in ["[6, 4, 4]", "[12]", "[C, H, W]"]:
        net = _check(f"input x: {shape}\noutput y = x -> hardsigmoid -> hardswish -> gelu"
                     " -> gelu() -> mish\n")
        assert net.ok, [d.message for d in net.diagnostics]
    net = _check("input x: [6, 4, 4]\noutput y = x -> hardsigmoid -> hardswish -> gelu -> mish"
                 " -> gelu(approximate=tanh) -> gelu(tanh) -> gelu(approximate=none)\n")
    names = [s.attrs["name"] for s in lower(net).steps]
    assert names == ["hardsigmoid", "hardswish", "gelu", "mish", "gelu_tanh", "gelu_tanh",
                     "gelu"]
    net = _check("input x: [6, 4, 4]\noutput y = x -> hardswish(1)\n")
    assert [d.code for d in net.diagnostics] == ["E209"]
    net = _check("input x: [6, 4, 4]\noutput y = x -> gelu(approximate=tan)\n")
    (d,) = net.diagnostics
    assert (d.code, d.help) == ("E207", "did you mean `tanh`?")
    assert "`none` or `tanh`" in d.message and "`tan`" in d.message


def test_hardsigmoid_and_hardswish_values_and_gradients_at_the_kinks():
    x = np.array([[-4.0, -3.0, -1.5, 0.0, 1.5, 3.0, 4.0]])
    y, saved = A.activation_forward(x, name="hardsigmoid")
    np.testing.assert_array_equal(y, [[0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]])
    (gx,), _ = A.activation_backward(saved, np.ones_like(x))
    np.testing.assert_array_equal(gx, [[0.0, 0.0, 1 / 6, 1 / 6, 1 / 6, 0.0, 0.0]])
    y, saved = A.activation_forward(x, name="hardswish")
    np.testing.assert_array_equal(y, [[-0.0, -0.0, -0.375, 0.0, 1.125, 3.0, 4.0]])
    (gx,), _ = A.activation_backward(saved, np.ones_like(x))
    # PyTorch's choice at the kinks: the outer slopes, 0 at -3 and 1 at 3
    np.testing.assert_array_equal(gx, [[0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0]])


def test_gelu_keeps_its_left_tail():
    """x Phi(x) from erfc: digits that x (1 + erf(x / sqrt 2)) / 2 loses to cancellation."""
    x = np.array([[-35.0, -30.0, -20.0, -10.0, -5.0, -1.0, 0.0, 1.0, 5.0, 30.0]])
    want = [0.5 * v * math.erfc(-v / math.sqrt(2)) for v in x[0]]
    # x / sqrt 2 is rounded, here and in the reference: erfc(a) moves by 2 a^2 eps relative
    np.testing.assert_allclose(A.activation(x, name="gelu")[0], want, rtol=5e-13, atol=0)
    y, saved = A.activation_forward(x, name="gelu")
    (gx,), _ = A.activation_backward(saved, np.ones_like(x))
    phi = [0.5 * math.erfc(-v / math.sqrt(2)) + v * math.exp(-v * v / 2) / math.sqrt(2 * math.pi)
           for v in x[0]]
    np.testing.assert_allclose(gx[0], phi, rtol=5e-13, atol=0)
    assert A.activation(np.array([[-10.0]]), name="gelu")[0, 0] < 0  # not rounded to 0
    # the tanh form: x sigmoid(2u) keeps it too
    v = -10.0
    u = math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)
    np.testing.assert_allclose(A.activation(np.array([[v]]), name="gelu_tanh")[0, 0],
                               v / (1 + math.exp(-2 * u)), rtol=1e-13)


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("shape", [(2, 5), (2, 3, 4), (2, 3, 4, 5), (2, 3, 2, 4, 5)])
def test_new_activations_on_every_rank(rng, name, shape):
    x = 4 * rng.standard_normal(shape)
    y = A.activation(x, name=name)
    np.testing.assert_allclose(y, A.reference_activation(x, name=name), rtol=1e-12,
                               atol=1e-14)
    flat = A.activation(x.reshape(shape[0], -1), name=name)
    np.testing.assert_array_equal(y.reshape(shape[0], -1), flat)  # element-wise


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("dtype", DTYPES)
def test_new_activations_are_finite_far_out(name, dtype):
    x = np.array([[-3e38, -1e30, -1e6, -1000.0, 1000.0, 1e6, 1e30, 3e38]], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow anywhere, forward or backward
        y, saved = A.activation_forward(x, name=name)
        (gx,), _ = A.activation_backward(saved, np.ones_like(x))
    assert np.isfinite(y).all() and np.isfinite(gx).all(), (y, gx)
    if name != "hardsigmoid":
        np.testing.assert_array_equal(y[:, 4:], x[:, 4:])  # x itself on the right
        np.testing.assert_array_equal(gx[:, 4:], 1)
    np.testing.assert_array_equal(gx[:, :4], 0)


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 2, 2)])
def test_new_activations_backward_matches_finite_differences(name, shape):
    x = A._away_from_kinks(np.random.default_rng(13).standard_normal(shape) * 3)
    fd_check("activation", [x], name=name, alpha=None, beta=None)


@torch_only
@pytest.mark.parametrize("name", NEW)
def test_new_activations_match_pytorch_on_grids_that_hit_the_edges(torch, name):
    """Forward in float32 within 1e-4 and gradients in float64 within 1e-6 of PyTorch, on a
    grid through every kink (where the gradient is PyTorch's choice) and far out."""
    F = torch.nn.functional
    x = _edge_grid()
    x32 = x.astype(np.float32)
    y = A.activation(x32, name=name)
    assert y.dtype == np.float32
    want = TORCH_NEW[name](F, torch.from_numpy(x32)).numpy()
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
    # the module's own mapping agrees
    step = SimpleNamespace(attrs=dict(name=name, alpha=None, beta=None))
    got = A.torch_activation(step, [torch.from_numpy(x32)], [], False)
    np.testing.assert_array_equal(got.numpy(), want)
    # gradients, float64, with a random dy
    dy = np.random.default_rng(2).standard_normal(x.shape)
    _, saved = A.activation_forward(x, name=name)
    (gx,), _ = A.activation_backward(saved, dy)
    leaf = torch.tensor(x, requires_grad=True)
    TORCH_NEW[name](F, leaf).backward(torch.from_numpy(dy))
    np.testing.assert_allclose(gx, leaf.grad.numpy(), rtol=1e-6, atol=1e-6)
    if name.startswith("hard"):
        # the same zeros, at the kinks too (PyTorch's float64 slope of hardsigmoid is the
        # float32 1/6, within 3e-8 of ours)
        np.testing.assert_array_equal(gx == 0, leaf.grad.numpy() == 0)


@pytest.mark.parametrize("opset", [17, 18, 20])
@pytest.mark.parametrize("name", NEW)
def test_onnx_new_activations_in_every_opset(rng, opset, name):
    """Opset 17 has no Gelu (20) nor Mish (18): they are composed from Erf, Tanh, Softplus."""
    onnx = pytest.importorskip("onnx")
    x = np.concatenate([_edge_grid()[:, ::7], 3 * rng.standard_normal((1, 40))], axis=1)
    x = np.repeat(x, 2, axis=0).astype(np.float32)
    g = _Graph(onnx, opset)
    step = SimpleNamespace(name="layer", attrs=dict(name=name, alpha=None, beta=None))
    A.onnx_activation(g, step, ["x"], [], "y", [x.shape[1:]])
    ops = [n.op_type for n in g.nodes]
    native = {"hardsigmoid": ("HardSigmoid", 17), "hardswish": ("HardSwish", 17),
              "gelu": ("Gelu", 20), "gelu_tanh": ("Gelu", 20), "mish": ("Mish", 18)}[name]
    assert (ops == [native[0]]) == (opset >= native[1]), ops
    if ops == ["Gelu"]:
        approximate = {a.name: a.s for a in g.nodes[0].attribute}["approximate"]
        assert approximate == (b"tanh" if name == "gelu_tanh" else b"none")
    assert g.nodes[-1].name == "layer"
    y = g.run(x, x.shape[1:])
    np.testing.assert_allclose(y, A.activation(x, name=name), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NEW)
def test_onnx_new_activations_as_a_fused_epilogue(rng, name):
    onnx = pytest.importorskip("onnx")
    x = (3 * rng.standard_normal((2, 5))).astype(np.float32)
    g = _Graph(onnx)
    A.emit_fused(g, (name, {"alpha": None, "beta": None}), "x", "y", (5,))
    assert g.nodes[-1].name == "layer"
    close(g.run(x, (5,)), A.activation(x, name=name))


def _gelu_network(activation):
    """A compiled conv -> gelu -> flatten -> dense -> gelu network, its gelus lowering to
    the entry ``activation``."""
    from cnnc.runtime.model import Model

    word = "tanh" if activation == "gelu_tanh" else "none"
    gelu = f"gelu(approximate={word})"
    net = cnnc.compile("network t\ninput x: [3, 6, 6]\n"
                       f"output y = x -> conv(4, 3) -> {gelu} -> flatten -> dense(5) -> {gelu}\n")
    return Model(net.plan, backend="numpy", seed=0, dtype="float32")


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh"])
def test_a_gelu_network_runs_fused_against_pytorch_and_onnx_runtime(activation):
    """conv and dense take the gelu as their epilogue; the NumPy backend, PyTorch (the plan
    unfused) and ONNX Runtime (opsets 17 and 20) agree."""
    from cnnc.compiler.memory import plan_memory

    model = _gelu_network(activation)
    fused = [e.attrs.get("act") for e in plan_memory(model.plan).execs]
    assert fused == [(activation, {"alpha": None, "beta": None}), None,
                     (activation, {"alpha": None, "beta": None})]
    x = (2 * np.random.default_rng(0).standard_normal((3, 3, 6, 6))).astype(np.float32)
    y = model({"x": x})
    torch = pytest.importorskip("torch")
    from cnnc.runtime.torch_ref import TorchPlan

    want = TorchPlan(model.plan, dict(model.params))({"x": torch.from_numpy(x)})["y"]
    np.testing.assert_allclose(y, want.numpy(), rtol=1e-4, atol=1e-4)
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from cnnc.runtime.onnx_export import export_model

    for opset in (17, 20):
        proto = export_model(model, None, opset=opset)
        session = ort.InferenceSession(proto.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(session.run(None, {"x": x})[0], y, rtol=1e-4, atol=1e-4)


def test_examples_avoid_the_kinks_at_three():
    for ex in A.activation_examples(np.random.default_rng(0)):
        assert np.abs(np.abs(ex.inputs[0]) - 3).min() >= 0.05
    names = {ex.attrs["name"] for ex in A.activation_examples(np.random.default_rng(0))}
    assert set(NEW) <= names
