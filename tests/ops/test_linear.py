"""The linear family (``ops/linear.py``): the ``dense`` layer, and DENSE's kernel against the
loop reference, PyTorch and finite differences; its training pair, ``out=``, ``scale=``,
fused activations, ONNX emitter and PyTorch mapping.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from cnnc.ops import linear
from ops_support import StepGraph

LAYER = linear.DENSE_LAYER
DENSE = linear.DENSE
dense = linear.dense
reference = linear.reference_dense

DTYPES = [np.float32, np.float64]
TOLERANCES = {
    np.dtype(np.float32): dict(rtol=2e-4, atol=2e-5),
    np.dtype(np.float64): dict(rtol=1e-10, atol=1e-12),
}


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


def assert_close(actual, expected, dtype=None):
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, **TOLERANCES[np.dtype(dtype or actual.dtype)])


def _case(rng, dtype, n=3, features=17, outputs=5):
    x = rng.standard_normal((n, features)).astype(dtype)
    w = rng.standard_normal((outputs, features)).astype(dtype)
    b = rng.standard_normal(outputs).astype(dtype)
    return x, w, b


# ---- the layer -------------------------------------------------------------------------------


def test_layer():
    assert [(a.name, a.kind) for a in LAYER.args] == [("out", "count"), ("bias", "bool")]
    assert LAYER.args[1].default is True
    assert LAYER.ranks == (1,)
    args = dict(out=10, bias=True)
    assert LAYER.infer((84,), args, None) == (10,)
    assert LAYER.params((84,), args) == {"weight": (10, 84), "bias": (10,)}
    assert LAYER.params((84,), dict(args, bias=False)) == {"weight": (10, 84)}
    assert LAYER.buffers((84,), args) == {}
    assert LAYER.macs((84,), (10,), args) == 840
    assert LAYER.init("weight") == "kaiming_uniform"
    assert LAYER.init("bias") == "fan_in_uniform"
    node = types.SimpleNamespace(args=args, inputs=["x"])
    assert LAYER.lower(node, [(84,)]) == ("dense", dict(act=None))


def test_rank_help():
    assert LAYER.rank_help((16, 5, 5)) == (
        "insert `flatten` (or `global_avgpool -> flatten`) before `dense`")
    assert LAYER.rank_help((3, 4)) is None


# ---- DENSE: the kernel ---------------------------------------------------------------------------

ACTS = [None, "relu", ("leaky_relu", {"alpha": 0.1}), "sigmoid", ("swish", {"beta": 1.5}),
        ("elu", None)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS, ids=str)
def test_dense_matches_reference(rng, dtype, act):
    x, w, b = _case(rng, dtype)
    y = dense(x, w, b, act=act)
    assert y.dtype == dtype
    assert_close(y, reference(x, w, b, act=act))
    assert_close(dense(x, w, act=act), reference(x, w, act=act))


def test_fused_prelu(rng):
    x, w, b = _case(rng, np.float64)
    act = ("prelu", {"weight": rng.uniform(0, 0.5, 5)})
    assert_close(dense(x, w, b, act=act), reference(x, w, b, act=act))


def test_dense_promotes_and_leaves_inputs_alone(rng):
    x, w, b = _case(rng, np.float32)
    copies = [a.copy() for a in (x, w, b)]
    assert dense(x, w.astype(np.float64), b).dtype == np.float64
    assert dense(x.astype(np.int32), w).dtype == np.float64
    dense(x, w, b, act="relu")
    for before, after in zip(copies, (x, w, b)):
        np.testing.assert_array_equal(before, after)


def test_dense_reports_shape_mismatches(rng):
    with pytest.raises(ValueError, match=r"input \(3, 4\), weight \(5, 6\)"):
        dense(rng.standard_normal((3, 4)), rng.standard_normal((5, 6)))
    with pytest.raises(ValueError, match=r"dense: input must be \[N, F\] and weight \[O, F\]"):
        dense(rng.standard_normal((3, 4, 1)), rng.standard_normal((5, 4)))
    with pytest.raises(ValueError, match=r"dense: bias must be \[5\], got \(4,\)"):
        dense(rng.standard_normal((3, 4)), rng.standard_normal((5, 4)), np.zeros(4))


@pytest.mark.parametrize("act", [None, "tanh"])
def test_out_and_scale(rng, act):
    x, w, b = _case(rng, np.float64)
    scale = rng.uniform(0.5, 2, 5)
    expected = reference(x, w * scale[:, None], b, act=act)
    out = np.full((3, 5), np.nan)
    assert dense(x, w, b, act=act, out=out, scale=scale) is out
    assert_close(out, expected)
    wide = np.full((3, 8), 7.0)
    part = wide[:, 2:7]
    dense(x, w, b, act=act, out=part, scale=scale)
    assert_close(part, expected)
    assert (wide[:, :2] == 7).all() and (wide[:, 7:] == 7).all()
    assert_close(dense(x, w, act=act, scale=scale), reference(x, w * scale[:, None], act=act))
    with pytest.raises(ValueError, match=r"dense: scale must be \[5\], got \(4,\)"):
        dense(x, w, b, scale=scale[:4])


# ---- training ----------------------------------------------------------------------------------

STEP = 1e-5


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


@pytest.mark.parametrize("bias", [True, False])
def test_backward_matches_finite_differences(bias):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 5))
    params = [rng.standard_normal((3, 5))] + ([rng.standard_normal(3)] if bias else [])
    y, saved = linear.dense_forward(x, *params, act=None)
    r = np.random.default_rng(1).standard_normal(y.shape)
    (gx,), gps = linear.dense_backward(saved, r)
    assert len(gps) == len(params)

    def f():
        return float(np.sum(linear.dense_forward(x, *params, act=None)[0] * r))

    for a, g in zip([x] + params, [gx] + list(gps)):
        assert g.dtype == np.float64 and g.shape == a.shape
        np.testing.assert_allclose(g, _numeric(f, a), rtol=1e-6, atol=1e-7)


def test_forward_is_the_kernel_and_keeps_float32(rng):
    x, w, b = _case(rng, np.float32)
    y, saved = linear.dense_forward(x, w, b, act=None, train=False)
    np.testing.assert_array_equal(y, dense(x, w, b))
    (gx,), (gw, gb) = linear.dense_backward(saved, np.ones_like(y))
    assert gx.dtype == gw.dtype == gb.dtype == np.float32


def test_fused_activation_is_refused_in_training():
    with pytest.raises(ValueError, match=r"dense: .*act=None"):
        linear.dense_forward(np.ones((1, 2)), np.ones((3, 2)), act="tanh")


def test_dy_of_the_wrong_shape_is_refused():
    _, saved = linear.dense_forward(np.ones((2, 4)), np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"dense backward.*\(2, 3\).*\(3, 2\)"):
        linear.dense_backward(saved, np.ones((3, 2)))


# ---- PyTorch -----------------------------------------------------------------------------------


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.mark.torch
def test_dense_matches_pytorch(torch, rng):
    x, w, b = _case(rng, np.float32, n=4, features=12, outputs=7)
    F = torch.nn.functional
    expected = F.linear(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b))
    assert_close(dense(x, w, b), expected.numpy())


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_training_matches_pytorch(torch, dtype, bias):
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal((5, 6)), rng.standard_normal((4, 6))]
    arrays += [rng.standard_normal(4)] if bias else []
    arrays = [a.astype(dtype) for a in arrays]
    leaves = [torch.tensor(a, requires_grad=True) for a in arrays]
    y, saved = linear.dense_forward(*arrays, act=None)
    dy = rng.standard_normal(y.shape).astype(dtype)
    gxs, gps = linear.dense_backward(saved, dy)
    expected = torch.nn.functional.linear(*leaves)
    tol = TOLERANCES[np.dtype(dtype)]
    np.testing.assert_allclose(y, expected.detach().numpy(), **tol)
    expected.backward(torch.from_numpy(dy))
    for ours, leaf in zip(list(gxs) + list(gps), leaves):
        assert ours.dtype == dtype
        np.testing.assert_allclose(ours, leaf.grad.numpy(), **tol)


@pytest.mark.torch
@pytest.mark.parametrize("bias", [True, False])
def test_torch_mapping(torch, rng, bias):
    x, w, b = _case(rng, np.float64)
    ws = [w, b] if bias else [w]
    step = types.SimpleNamespace(attrs=dict(act=None), name="d", shape=(5,), inputs=["x"],
                                 params=[])
    got = DENSE.torch(step, [torch.from_numpy(x)], [torch.from_numpy(a) for a in ws], True)
    assert_close(got.numpy(), dense(x, *ws))


# ---- ONNX --------------------------------------------------------------------------------------



@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("act", [None, "relu", ("swish", {"beta": 1.5}),
                                 ("leaky_relu", {"alpha": 0.2})], ids=str)
def test_onnx_runs_the_same_in_onnx_runtime(rng, bias, act):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    x, w, b = _case(rng, np.float32)
    ws = [w, b] if bias else [w]
    keys = [f"d.p{i}" for i in range(len(ws))]
    step = types.SimpleNamespace(attrs=dict(act=act), name="d", shape=(5,), inputs=["x"],
                                 params=keys, span=None)
    g = StepGraph(onnx, step, dict(zip(keys, ws)))
    DENSE.onnx(g, step, ["x"], keys, "y", [(17,)])
    assert g.nodes[0].op_type == "Gemm"
    assert g.nodes[0].name == ("d" if act is None else "d/gemm")
    helper = onnx.helper
    graph = helper.make_graph(
        g.nodes, "one", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3, 17])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3, 5])], g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    (got,) = session.run(["y"], {"x": x})
    np.testing.assert_allclose(got, dense(x, *ws, act=act), rtol=1e-4, atol=1e-5)


# ---- the registry entry ------------------------------------------------------------------------


def test_primitive_flags_and_examples():
    assert DENSE.name == "dense"
    assert DENSE.accepts_out and DENSE.accepts_scale and DENSE.gemm
    assert DENSE.in_place is None and not DENSE.alias
    assert linear.LAYERS == [LAYER] and linear.PRIMITIVES == [DENSE]
    examples = DENSE.examples(np.random.default_rng(0))
    assert 3 <= len(examples) <= 8
    assert {len(ex.params) for ex in examples} == {1, 2}  # with and without a bias
    for ex in examples:
        assert ex.inputs[0].dtype == np.float64 and ex.inputs[0].shape[0] == 2
        assert ex.attrs == dict(act=None)
