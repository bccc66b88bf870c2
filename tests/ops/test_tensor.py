"""flatten, dropout, concat and add (ops/tensor.py): the layers and merges, the kernels
against the naive reference and PyTorch, the training pairs against finite differences and
autograd, dropout's mask, errors, and the ONNX emitters."""

from types import SimpleNamespace

import numpy as np
import pytest

from cnnc.compiler.symbolic import evaluate, is_concrete, shape_text, sym
from cnnc.ops import tensor
from cnnc.ops.base import Layer, Merge

DTYPES = [np.float32, np.float64]
FD_STEP = 1e-5
FD_TOL = dict(rtol=1e-6, atol=1e-7)

LAYERS = {layer.name: layer for layer in tensor.LAYERS}
PRIMITIVES = {p.name: p for p in tensor.PRIMITIVES}


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


def _node(kind, args=None):
    return SimpleNamespace(name=f"net.{kind}1", op=kind, args=args or {}, params={},
                           buffers={})


# ---------------------------------------------------------------- the layers and merges


def test_flatten_layer():
    layer = LAYERS["flatten"]
    assert isinstance(layer, Layer) and layer.args == [] and layer.ranks is None
    assert layer.changes_shape
    assert layer.infer((3, 4, 5), {}, None) == (60,)
    assert layer.infer((7,), {}, None) == (7,)
    assert layer.lower(_node("flatten"), [(3, 4, 5)]) == ("flatten", {})


def test_flatten_layer_multiplies_symbolic_sizes():
    (total,) = LAYERS["flatten"].infer((3, sym("H"), 2), {}, None)
    assert not is_concrete(total)
    assert evaluate(total, {"H": 5}) == 30
    assert shape_text((total,)) == shape_text((6 * sym("H"),))


def test_dropout_layer():
    layer = LAYERS["dropout"]
    assert [(a.name, a.kind, a.default) for a in layer.args] == [("p", "prob", 0.5)]
    assert layer.ranks is None and not layer.changes_shape
    assert layer.infer((3, 4, 5), dict(p=0.2), None) == (3, 4, 5)
    assert layer.lower(_node("dropout", dict(p=0.2)), [(3, 4, 5)]) == ("dropout", dict(p=0.2))


def test_merges():
    concat, add = LAYERS["concat"], LAYERS["add"]
    assert isinstance(concat, Merge) and isinstance(add, Merge)
    assert (concat.code, concat.join_axis) == ("E302", 0)
    assert (add.code, add.join_axis) == ("E303", None)
    shapes = [(2, 3, 3), (4, 3, 3)]
    assert concat.lower(_node("concat"), shapes) == ("concat", dict(axis=1))
    assert add.lower(_node("add"), shapes[:1] * 2) == ("add", {})


def test_primitive_flags():
    assert PRIMITIVES["flatten"].alias and PRIMITIVES["dropout"].alias
    assert not PRIMITIVES["concat"].alias and not PRIMITIVES["add"].alias
    assert PRIMITIVES["add"].accepts_out and PRIMITIVES["add"].in_place == "any"
    for name in ("flatten", "dropout", "concat"):
        assert not PRIMITIVES[name].accepts_out and PRIMITIVES[name].in_place is None
    for p in tensor.PRIMITIVES:  # the generic kernels run on CuPy arrays
        assert p.gpu_kernel is p.gpu_forward is p.gpu_backward is None


# ---------------------------------------------------------------- inference


def test_flatten_matches_reference(rng):
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    y = tensor.flatten(x)
    assert y.shape == (2, 60) and np.shares_memory(y, x)  # a view: the memory plan aliases it
    np.testing.assert_array_equal(y, tensor.flatten_reference(x))


def test_flatten_empty_batch():
    assert tensor.flatten(np.zeros((0, 3, 2))).shape == (0, 6)


def test_concat_along_channels(rng):
    xs = [rng.standard_normal((2, c, 3, 3)) for c in (1, 4, 2)]
    y = tensor.concat(*xs)
    assert y.shape == (2, 7, 3, 3)
    np.testing.assert_array_equal(y, tensor.concat_reference(*xs))


def test_concat_needs_an_input():
    with pytest.raises(ValueError, match=r"concat: needs at least one input, got none"):
        tensor.concat()


@pytest.mark.parametrize("count", [1, 2, 4])
def test_add_several(rng, count):
    xs = [rng.standard_normal((2, 3, 4, 4)) for _ in range(count)]
    y = tensor.add(*xs)
    assert all(not np.shares_memory(y, x) for x in xs)
    np.testing.assert_allclose(y, tensor.add_reference(*xs), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("count", [1, 2, 3, 4])
@pytest.mark.parametrize("target", [0, 1, -1])
def test_add_in_place_on_any_input(rng, count, target):
    """in_place="any": ``out`` may be any input, even the third of three (whose value the
    first sum would otherwise overwrite before it is read), or another view of it."""
    xs = [rng.standard_normal((2, 3, 2)) for _ in range(count)]
    expected = tensor.add(*xs)
    out = xs[target % count][...]  # the same memory, another array object
    assert tensor.add(*xs, out=out) is out
    np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_add_errors():
    with pytest.raises(ValueError, match=r"share one shape.*\(1, 2\), \(1, 3\)"):
        tensor.add(np.zeros((1, 2)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"add: needs at least one input, got none"):
        tensor.add()


def test_dropout_is_identity_at_inference(rng):
    x = rng.standard_normal((2, 8))
    assert tensor.dropout(x, p=0.4) is x  # the memory plan aliases it
    np.testing.assert_array_equal(tensor.dropout_reference(x, p=0.4), x)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\), got 1"):
        tensor.dropout(x, p=1)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\), got -0.1"):
        tensor.dropout_forward(x, p=-0.1)


# ---------------------------------------------------------------- training


def _fd_check(forward, backward, inputs, seed=0, **attrs):
    """``backward`` against central finite differences of ``sum(y * r)``."""
    inputs = [np.array(a, dtype=np.float64) for a in inputs]

    def run():
        return forward(*inputs, rng=np.random.default_rng(seed), **attrs)

    y, saved = run()
    r = np.random.default_rng(seed + 1).standard_normal(y.shape)
    gxs, gps = backward(saved, r)
    assert len(gxs) == len(inputs) and gps == ()

    def f():
        return float(np.sum(run()[0] * r))

    for a, g in zip(inputs, gxs):
        assert g.dtype == np.float64 and g.shape == a.shape
        numeric = np.empty_like(a)
        for index in np.ndindex(*a.shape):
            keep = a[index]
            a[index] = keep + FD_STEP
            up = f()
            a[index] = keep - FD_STEP
            down = f()
            a[index] = keep
            numeric[index] = (up - down) / (2 * FD_STEP)
        np.testing.assert_allclose(g, numeric, **FD_TOL)


def test_flatten_finite_differences():
    _fd_check(tensor.flatten_forward, tensor.flatten_backward,
              [np.random.default_rng(13).standard_normal((2, 3, 2, 2))])


@pytest.mark.parametrize("count", [1, 2, 3])
def test_concat_finite_differences(count):
    rng = np.random.default_rng(14)
    xs = [rng.standard_normal((2, c, 2, 3)) for c in (1, 3, 2)[:count]]
    _fd_check(tensor.concat_forward, tensor.concat_backward, xs, axis=1)


@pytest.mark.parametrize("count", [1, 2, 3])
def test_add_finite_differences(count):
    rng = np.random.default_rng(15)
    _fd_check(tensor.add_forward, tensor.add_backward,
              [rng.standard_normal((2, 3, 2, 2)) for _ in range(count)])


@pytest.mark.parametrize("p, train", [(0.0, True), (0.3, True), (0.6, True), (0.3, False)])
def test_dropout_finite_differences(p, train):
    x = np.random.default_rng(16).standard_normal((3, 4, 2, 2))
    _fd_check(tensor.dropout_forward, tensor.dropout_backward, [x], train=train, p=p)


def test_gradients_are_fresh_arrays(rng):
    """Every gradient may be accumulated into: none aliases dy or another gradient."""
    x = rng.standard_normal((2, 3, 2, 2))
    cases = [
        (tensor.flatten_forward, tensor.flatten_backward, [x], {}),
        (tensor.concat_forward, tensor.concat_backward, [x, x], dict(axis=1)),
        (tensor.add_forward, tensor.add_backward, [x, x, x], {}),
        (tensor.dropout_forward, tensor.dropout_backward, [x], dict(p=0.0)),
        (tensor.dropout_forward, tensor.dropout_backward, [x], dict(p=0.5, train=False)),
    ]
    for forward, backward, xs, attrs in cases:
        y, saved = forward(*xs, **attrs)
        dy = np.ones_like(y)
        gxs, _ = backward(saved, dy)
        for i, g in enumerate(gxs):
            assert g.flags.c_contiguous
            for other in [dy, y, *xs, *gxs[i + 1:]]:
                assert not np.shares_memory(g, other)


def test_integer_inputs_get_float64_gradients():
    x = np.arange(12).reshape(2, 3, 2)
    for forward, backward, xs in [(tensor.flatten_forward, tensor.flatten_backward, [x]),
                                  (tensor.concat_forward, tensor.concat_backward, [x, x]),
                                  (tensor.add_forward, tensor.add_backward, [x, x])]:
        y, saved = forward(*xs)
        gxs, _ = backward(saved, np.ones(y.shape))
        assert all(g.dtype == np.float64 for g in gxs)


def test_backward_checks_dy():
    x = np.ones((2, 3, 2))
    for name, forward, backward in [("flatten", tensor.flatten_forward, tensor.flatten_backward),
                                    ("concat", tensor.concat_forward, tensor.concat_backward),
                                    ("add", tensor.add_forward, tensor.add_backward),
                                    ("dropout", tensor.dropout_forward, tensor.dropout_backward)]:
        y, saved = forward(x, **({"p": 0.0} if name == "dropout" else {}))
        with pytest.raises(ValueError, match=rf"{name} backward: dy must have"):
            backward(saved, np.ones((5,) + y.shape[1:]))


def test_dropout_mask_is_inverted_kept_and_reproducible():
    x = np.random.default_rng(1).standard_normal((64, 50)).astype(np.float32)
    y, saved = tensor.dropout_forward(x, p=0.25, train=True, rng=np.random.default_rng(7))
    kept = y != 0
    assert y.dtype == np.float32
    assert 0.70 < kept.mean() < 0.80
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-6)
    dy = np.ones_like(y)
    (gx,), _ = tensor.dropout_backward(saved, dy)
    np.testing.assert_allclose(gx, kept / np.float32(0.75), rtol=1e-6)
    again, _ = tensor.dropout_forward(x, p=0.25, train=True, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(again, y)


def test_dropout_without_training_is_the_identity_both_ways():
    x = np.arange(6.0).reshape(2, 3)
    y, saved = tensor.dropout_forward(x, p=0.5, train=False)
    np.testing.assert_array_equal(y, x)
    (gx,), _ = tensor.dropout_backward(saved, np.full((2, 3), 2.0))
    np.testing.assert_array_equal(gx, np.full((2, 3), 2.0))


def test_dropout_training_needs_a_generator():
    with pytest.raises(ValueError, match=r"dropout: .*p=0.5.*rng"):
        tensor.dropout_forward(np.ones((2, 3)), p=0.5, train=True, rng=None)
    y, _ = tensor.dropout_forward(np.ones((2, 3)), p=0.0, train=True, rng=None)  # no mask
    np.testing.assert_array_equal(y, np.ones((2, 3)))


# ---------------------------------------------------------------- PyTorch


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_training_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    cases = [
        ("flatten", [rng.standard_normal((2, 3, 4, 5))], {}),
        ("concat", [rng.standard_normal((2, c, 3, 3)) for c in (2, 1, 3)], dict(axis=1)),
        ("add", [rng.standard_normal((2, 3, 3)) for _ in range(3)], {}),
        ("dropout", [rng.standard_normal((2, 3, 3))], dict(p=0.3)),
    ]
    for name, xs, attrs in cases:
        p = PRIMITIVES[name]
        xs = [x.astype(dtype) for x in xs]
        train = name != "dropout"  # torch's mapping is the identity: compare at inference
        y, saved = p.forward(*xs, train=train, rng=None, **attrs)
        dy = rng.standard_normal(y.shape).astype(dtype)
        gxs, _ = p.backward(saved, dy)
        leaves = [torch.tensor(x, requires_grad=True) for x in xs]
        step = SimpleNamespace(name=name, attrs=attrs, shape=y.shape[1:], inputs=[],
                               params=[])
        expected = p.torch(step, leaves, [], train)
        expected.backward(torch.from_numpy(dy))
        assert y.dtype == dtype
        np.testing.assert_allclose(y, expected.detach().numpy(), rtol=1e-6, err_msg=name)
        for g, leaf in zip(gxs, leaves):
            assert g.dtype == dtype
            np.testing.assert_allclose(g, leaf.grad.numpy(), rtol=1e-6, err_msg=name)


# ---------------------------------------------------------------- examples


@pytest.mark.parametrize("name", sorted(PRIMITIVES))
def test_examples_run_through_the_kernels(name):
    p = PRIMITIVES[name]
    examples = p.examples(np.random.default_rng(0))
    assert 2 <= len(examples) <= 8
    for ex in examples:
        assert all(a.dtype == np.float64 for a in ex.inputs)
        y = p.kernel(*ex.inputs, **ex.attrs)
        np.testing.assert_allclose(y, p.reference(*ex.inputs, **ex.attrs), rtol=1e-12)
        y_forward, _ = p.forward(*ex.inputs, train=False, **ex.attrs)
        np.testing.assert_array_equal(y_forward, y)
    if name == "dropout":
        assert {ex.attrs["p"] for ex in examples} >= {0.0, 0.5}
    if name in ("concat", "add"):
        assert {len(ex.inputs) for ex in examples} == {2, 3}


# ---------------------------------------------------------------- ONNX


class _Recorder:
    """Records the nodes an emitter adds."""

    def __init__(self):
        self.nodes = []

    def node(self, op_type, inputs, output, purpose=None, **attrs):
        self.nodes.append((op_type, list(inputs), output, attrs))
        return output


@pytest.mark.parametrize("name, inputs, attrs, expected", [
    ("flatten", ["x"], {}, [("Flatten", ["x"], "y", dict(axis=1))]),
    ("dropout", ["x"], dict(p=0.5), [("Identity", ["x"], "y", {})]),
    ("concat", ["a", "b", "c"], dict(axis=1), [("Concat", ["a", "b", "c"], "y", dict(axis=1))]),
    ("add", ["a"], {}, [("Identity", ["a"], "y", {})]),
    ("add", ["a", "b"], {}, [("Add", ["a", "b"], "y", {})]),
    ("add", ["a", "b", "c"], {}, [("Sum", ["a", "b", "c"], "y", {})]),
])
def test_onnx_nodes(name, inputs, attrs, expected):
    g = _Recorder()
    step = SimpleNamespace(name="layer", attrs=attrs, span=None)
    PRIMITIVES[name].onnx(g, step, inputs, [], "y", [(3, 2, 2)] * len(inputs))
    assert g.nodes == expected


@pytest.mark.parametrize("name, count, attrs", [
    ("flatten", 1, {}), ("dropout", 1, dict(p=0.5)), ("concat", 3, dict(axis=1)),
    ("add", 2, {}), ("add", 3, {}),
])
def test_onnx_in_onnxruntime(rng, name, count, attrs):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    p = PRIMITIVES[name]
    shape = (3, 2, 4)
    xs = [rng.standard_normal((2,) + shape).astype(np.float32) for _ in range(count)]
    y = p.kernel(*xs, **attrs)
    names = [f"x{i}" for i in range(count)]
    g = _Recorder()
    p.onnx(g, SimpleNamespace(name="layer", attrs=attrs, span=None), names, [], "y",
           [shape] * count)
    nodes = [onnx.helper.make_node(t, i, [o], **a) for t, i, o, a in g.nodes]
    info = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        nodes, "step", [info(n, onnx.TensorProto.FLOAT, ["N", *shape]) for n in names],
        [info("y", onnx.TensorProto.FLOAT, ["N", *y.shape[1:]])])
    opsets = [onnx.helper.make_opsetid("", 17)]
    model = onnx.helper.make_model(graph, opset_imports=opsets,
                                   ir_version=onnx.helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(model, full_check=True)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, dict(zip(names, xs)))[0]
    np.testing.assert_allclose(got, y, rtol=1e-6)
