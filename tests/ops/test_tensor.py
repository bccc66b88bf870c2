"""flatten, dropout, drop_path, slice, channel_shuffle, concat, add and mul (ops/tensor.py):
the layers and merges, the kernels against the naive reference and PyTorch, broadcasting,
the training pairs against finite differences and autograd, the masks of dropout and
drop_path, errors, and the ONNX emitters."""

from types import SimpleNamespace

import numpy as np
import pytest

from cnnc.compiler.symbolic import evaluate, is_concrete, shape_text, sym
from cnnc.ops import tensor
from cnnc.ops.base import REQUIRED, Layer, Merge

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
    concat, add, mul = LAYERS["concat"], LAYERS["add"], LAYERS["mul"]
    assert isinstance(concat, Merge) and isinstance(add, Merge) and isinstance(mul, Merge)
    assert (concat.code, concat.join_axis, concat.broadcast) == ("E302", 0, False)
    assert (add.code, add.join_axis, add.broadcast) == ("E303", None, True)
    assert (mul.code, mul.join_axis, mul.broadcast) == ("E303", None, True)
    shapes = [(2, 3, 3), (4, 3, 3)]
    assert concat.lower(_node("concat"), shapes) == ("concat", dict(axis=1))
    assert add.lower(_node("add"), shapes[:1] * 2) == ("add", {})
    assert mul.lower(_node("mul"), [(4, 3, 3), (4, 1, 1)]) == ("mul", {})


def test_primitive_flags():
    for name in ("flatten", "dropout", "drop_path"):
        assert PRIMITIVES[name].alias
    for name in ("concat", "add", "mul", "slice", "channel_shuffle"):
        assert not PRIMITIVES[name].alias
    for name in ("add", "mul"):
        assert PRIMITIVES[name].accepts_out and PRIMITIVES[name].in_place == "any"
    for name in ("slice", "channel_shuffle"):
        assert PRIMITIVES[name].accepts_out and PRIMITIVES[name].in_place is None
    for name in ("flatten", "dropout", "drop_path", "concat"):
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
    with pytest.raises(ValueError, match=r"add: inputs do not broadcast: \[\[1, 2\], \[1, 3\]\]"
                                         r" differ in axis 1 \(\[2, 3\]\)"):
        tensor.add(np.zeros((1, 2)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"add: inputs must share one rank and one batch size"):
        tensor.add(np.zeros((1, 2)), np.zeros((1, 2, 1)))
    with pytest.raises(ValueError, match=r"add: out must have the output's shape \[1, 2\]"):
        tensor.add(np.zeros((1, 2)), np.zeros((1, 1)), out=np.zeros((1, 1)))
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


# ================================================================ broadcasting add and mul

COMBINE = {"add": np.add, "mul": np.multiply}

# per-sample shapes that broadcast, batch first: a squeeze-and-excitation gate, the gate
# first, an outer product (neither input whole), three inputs none of them whole, and the
# other ranks
BROADCAST_SHAPES = [
    [(2, 6, 4, 5), (2, 6, 1, 1)],
    [(2, 6, 1, 1), (2, 6, 4, 5)],
    [(2, 1, 4, 5), (2, 6, 1, 1)],
    [(2, 6, 1, 5), (2, 1, 4, 1), (2, 6, 4, 1)],
    [(2, 6, 4, 5), (2, 1, 1, 1), (2, 6, 4, 5)],
    [(2, 5), (2, 1)],
    [(2, 3, 7), (2, 3, 1)],
    [(2, 2, 3, 4, 5), (2, 2, 1, 4, 1)],
    [(2, 1, 1, 1), (2, 1, 1, 1)],
]


def _ids(shapes):
    return " ".join("x".join(map(str, s[1:])) for s in shapes)


@pytest.mark.parametrize("name", ["add", "mul"])
@pytest.mark.parametrize("shapes", BROADCAST_SHAPES, ids=_ids)
def test_broadcasting_matches_numpy_and_reference(rng, name, shapes):
    xs = [rng.standard_normal(s) for s in shapes]
    kernel = getattr(tensor, name)
    expected = xs[0]
    for x in xs[1:]:
        expected = COMBINE[name](expected, x)
    y = kernel(*xs)
    assert y.shape == expected.shape and all(not np.shares_memory(y, x) for x in xs)
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    reference = getattr(tensor, f"{name}_reference")(*xs)
    np.testing.assert_allclose(y, reference, rtol=1e-12)
    y32 = kernel(*[x.astype(np.float32) for x in xs])
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["add", "mul"])
@pytest.mark.parametrize("shapes", BROADCAST_SHAPES, ids=_ids)
def test_broadcasting_in_place_on_every_whole_input(rng, name, shapes):
    """in_place="any": ``out`` may be any input that has the output's shape (the memory
    plan offers no other), wherever it stands among the inputs."""
    xs = [rng.standard_normal(s) for s in shapes]
    kernel = getattr(tensor, name)
    expected = kernel(*xs)
    whole = [i for i, x in enumerate(xs) if x.shape == expected.shape]
    for target in whole:
        mine = [x.copy() for x in xs]
        out = mine[target][...]  # the same memory, another array object
        assert kernel(*mine, out=out) is out
        np.testing.assert_allclose(out, expected, rtol=1e-12)
    out = np.full(expected.shape, np.nan)
    assert kernel(*xs, out=out) is out
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("name", ["add", "mul"])
def test_broadcasting_into_a_channel_slice(rng, name):
    """A merge's output may be a channel slice of a concat's output: not contiguous."""
    x = rng.standard_normal((2, 3, 4, 5))
    gate = rng.standard_normal((2, 3, 1, 1))
    wide = np.full((2, 7, 4, 5), 7.0)
    part = wide[:, 2:5]
    getattr(tensor, name)(gate, x, out=part)
    np.testing.assert_allclose(part, COMBINE[name](x, gate), rtol=1e-12)
    assert (wide[:, :2] == 7).all() and (wide[:, 5:] == 7).all()


@pytest.mark.parametrize("name", ["add", "mul"])
def test_broadcasting_errors(name):
    kernel = getattr(tensor, name)
    with pytest.raises(ValueError, match=rf"{name}: inputs do not broadcast: "
                                         r"\[\[2, 8, 4, 4\], \[2, 4, 1, 1\]\] differ in axis 1"):
        kernel(np.zeros((2, 8, 4, 4)), np.zeros((2, 4, 1, 1)))
    with pytest.raises(ValueError, match=rf"{name}: inputs must share one rank and one batch"):
        kernel(np.zeros((2, 8, 4, 4)), np.zeros((2, 8)))
    with pytest.raises(ValueError, match=rf"{name}: inputs must share one rank and one batch"):
        kernel(np.zeros((2, 8)), np.zeros((1, 8)))  # only the per-sample shape broadcasts
    with pytest.raises(ValueError, match=rf"{name}: needs at least one input, got none"):
        kernel()


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_mul_several(rng, count):
    xs = [rng.standard_normal((2, 3, 4, 4)) for _ in range(count)]
    y = tensor.mul(*xs)
    assert all(not np.shares_memory(y, x) for x in xs)
    np.testing.assert_allclose(y, np.prod(np.stack(xs), axis=0), rtol=1e-12)


@pytest.mark.parametrize("name", ["add", "mul"])
@pytest.mark.parametrize("shapes", [
    [(2, 3, 2, 2), (2, 3, 1, 1)],
    [(2, 1, 2, 3), (2, 3, 1, 1)],
    [(2, 3, 1, 3), (2, 1, 2, 1), (2, 3, 2, 1)],
    [(2, 4), (2, 1), (2, 4)],
    [(2, 2, 3), (2, 2, 1)],
    [(2, 2, 2, 1, 2), (2, 1, 2, 3, 1)],
], ids=_ids)
def test_broadcasting_finite_differences(name, shapes):
    rng = np.random.default_rng(17)
    forward = getattr(tensor, f"{name}_forward")
    backward = getattr(tensor, f"{name}_backward")
    _fd_check(forward, backward, [rng.standard_normal(s) for s in shapes])


def test_mul_gradient_with_a_repeated_input_and_zeros():
    """No division by the input: the gradient is right where inputs are zero."""
    x = np.array([[0.0, 2.0, -1.0]])
    y, saved = tensor.mul_forward(x, x, np.zeros((1, 1)))
    (g0, g1, g2), _ = tensor.mul_backward(saved, np.ones((1, 3)))
    np.testing.assert_array_equal(y, np.zeros((1, 3)))
    np.testing.assert_array_equal(g0, np.zeros((1, 3)))
    np.testing.assert_array_equal(g1, np.zeros((1, 3)))
    np.testing.assert_array_equal(g2, [[0.0 + 4.0 + 1.0]])


def test_broadcast_gradients_are_fresh_and_keep_dims(rng):
    x = rng.standard_normal((2, 3, 2, 2))
    gate = rng.standard_normal((2, 3, 1, 1))
    for forward, backward in [(tensor.add_forward, tensor.add_backward),
                              (tensor.mul_forward, tensor.mul_backward)]:
        y, saved = forward(x, gate)
        dy = np.ones_like(y)
        gxs, gws = backward(saved, dy)
        assert gws == () and [g.shape for g in gxs] == [x.shape, gate.shape]
        for i, g in enumerate(gxs):
            for other in [dy, y, x, gate, *gxs[i + 1:]]:
                assert not np.shares_memory(g, other)
    y, saved = tensor.mul_forward(x.astype(np.float32), gate.astype(np.float32))
    gxs, _ = tensor.mul_backward(saved, np.ones(y.shape))
    assert all(g.dtype == np.float32 for g in gxs)
    y, saved = tensor.mul_forward(np.arange(6).reshape(2, 3), np.arange(2).reshape(2, 1))
    gxs, _ = tensor.mul_backward(saved, np.ones(y.shape))
    assert all(g.dtype == np.float64 for g in gxs)
    with pytest.raises(ValueError, match=r"mul backward: dy must have"):
        tensor.mul_backward(saved, np.ones((2, 1)))


@pytest.mark.torch
@pytest.mark.parametrize("name", ["add", "mul"])
@pytest.mark.parametrize("shapes", BROADCAST_SHAPES, ids=_ids)
def test_broadcasting_matches_torch(name, shapes):
    """Forward in float32 within 1e-4, input gradients in float64 within 1e-6."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(18)
    p = PRIMITIVES[name]
    xs = [rng.standard_normal(s) for s in shapes]
    step = SimpleNamespace(name=name, attrs={}, inputs=[], params=[])
    y32 = p.kernel(*[x.astype(np.float32) for x in xs])
    t32 = p.torch(step, [torch.tensor(x, dtype=torch.float32) for x in xs], [], False)
    np.testing.assert_allclose(y32, t32.numpy(), rtol=1e-4, atol=1e-4)
    y, saved = p.forward(*xs, train=True)
    dy = rng.standard_normal(y.shape)
    gxs, _ = p.backward(saved, dy)
    leaves = [torch.tensor(x, requires_grad=True) for x in xs]
    p.torch(step, leaves, [], True).backward(torch.from_numpy(dy))
    for g, leaf in zip(gxs, leaves):
        np.testing.assert_allclose(g, leaf.grad.numpy(), rtol=1e-6, atol=1e-6)


# ================================================================ slice


class _Ctx:
    """What a shape rule may do, recorded."""

    def __init__(self):
        self.errors = []
        self.conditions = []

    def error(self, code, message=None, notes=(), help=None, **values):
        self.errors.append((code, message, help))

    def positive(self, size, what):
        self.conditions.append((size, what))


def _report_recorder():
    calls = []

    def report(code, message, span, notes=(), help=None):
        calls.append((code, message, span, help))

    return calls, report


def test_slice_layer():
    layer = LAYERS["slice"]
    assert [(a.name, a.kind) for a in layer.args] == [("start", "natural"), ("stop", "count")]
    assert layer.ranks is None and layer.changes_shape
    args = dict(start=2, stop=5)
    for shape in [(8,), (8, 10), (8, 4, 4), (8, 2, 4, 4)]:
        assert layer.infer(shape, args, _Ctx()) == (3,) + shape[1:]
    assert layer.infer((5, 4, 4), dict(start=0, stop=5), _Ctx()) == (5, 4, 4)
    assert layer.lower(_node("slice", args), [(8, 4, 4)]) == ("slice", args)
    calls, report = _report_recorder()
    assert layer.check_args(dict(args), {}, "call", report) == args
    assert calls == []


@pytest.mark.parametrize("start, stop", [(3, 3), (4, 2)])
def test_slice_stop_must_be_above_start(start, stop):
    calls, report = _report_recorder()
    assert LAYERS["slice"].check_args(dict(start=start, stop=stop), {"stop": "span"}, "call",
                                      report) is None
    assert calls == [(
        "E207", f"slice stop must be at least {start + 1}, got {stop}", "span",
        f"slice(start, stop) keeps channels start .. stop-1, x[:, start:stop]: "
        f"slice({start}, {stop}) would keep none; use stop={start + 1} or more",
    )]


def test_slice_beyond_the_channels():
    layer = LAYERS["slice"]
    ctx = _Ctx()
    assert layer.infer((8, 4, 4), dict(start=4, stop=12), ctx) is None
    assert ctx.errors == [(
        "E207", "slice stop=12 is beyond the 8 input channels",
        "the input has channels 0 .. 7: use stop=8 to keep 4 .. 7 (x[:, 4:8])",
    )]
    ctx = _Ctx()
    assert layer.infer((8,), dict(start=8, stop=9), ctx) is None
    assert ctx.errors == [(
        "E207", "slice stop=9 is beyond the 8 input features",
        "the input has features 0 .. 7: start must be below 8",
    )]


def test_slice_symbolic_channels():
    ctx = _Ctx()
    shape = LAYERS["slice"].infer((sym("C"), sym("H"), 4), dict(start=1, stop=4), ctx)
    assert shape == (3, sym("H"), 4)
    [(size, what)] = ctx.conditions
    assert [evaluate(size, {"C": c}) >= 1 for c in (3, 4, 5)] == [False, True, True]
    assert what == "slice input channels - stop + 1"
    assert ctx.errors == []


SLICE_GRID = [(shape, start, stop)
              for shape in [(2, 5), (2, 5, 3), (2, 5, 3, 2), (2, 5, 2, 3, 2)]
              for start in range(5) for stop in range(start + 1, 6)]


@pytest.mark.parametrize("shape, start, stop", SLICE_GRID)
def test_slice_matches_reference_and_out(rng, shape, start, stop):
    x = rng.standard_normal(shape)
    y = tensor.channel_slice(x, start=start, stop=stop)
    assert not np.shares_memory(y, x) and y.flags.c_contiguous
    np.testing.assert_array_equal(y, x[:, start:stop])
    np.testing.assert_array_equal(y, tensor.slice_reference(x, start=start, stop=stop))
    out = np.full(y.shape, np.nan)
    assert tensor.channel_slice(x, start=start, stop=stop, out=out) is out
    np.testing.assert_array_equal(out, y)


def test_slice_kernel_errors():
    x = np.zeros((2, 4, 3))
    for start, stop in [(-1, 2), (2, 2), (3, 1), (0, 5)]:
        with pytest.raises(ValueError, match=rf"slice: needs 0 <= start < stop <= 4 \(the "
                                             rf"input's channels\), got start={start}, "
                                             rf"stop={stop}"):
            tensor.channel_slice(x, start=start, stop=stop)


@pytest.mark.parametrize("start, stop", [(0, 2), (1, 4), (3, 4), (0, 4)])
def test_slice_finite_differences(start, stop):
    x = np.random.default_rng(19).standard_normal((2, 4, 2, 2))
    _fd_check(tensor.slice_forward, tensor.slice_backward, [x], start=start, stop=stop)


@pytest.mark.torch
@pytest.mark.parametrize("shape, start, stop", SLICE_GRID[::3])
def test_slice_matches_torch(shape, start, stop):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(20)
    x = rng.standard_normal(shape)
    attrs = dict(start=start, stop=stop)
    step = SimpleNamespace(name="slice", attrs=attrs, inputs=[], params=[])
    p = PRIMITIVES["slice"]
    y32 = p.kernel(x.astype(np.float32), **attrs)
    t32 = torch.tensor(x, dtype=torch.float32)[:, start:stop]
    np.testing.assert_allclose(y32, t32.numpy(), rtol=1e-4, atol=1e-4)
    y, saved = p.forward(x, **attrs)
    dy = rng.standard_normal(y.shape)
    (gx,), _ = p.backward(saved, dy)
    leaf = torch.tensor(x, requires_grad=True)
    p.torch(step, [leaf], [], True).backward(torch.from_numpy(dy))
    np.testing.assert_allclose(gx, leaf.grad.numpy(), rtol=1e-6, atol=1e-6)


# ================================================================ channel_shuffle


def test_channel_shuffle_layer():
    layer = LAYERS["channel_shuffle"]
    assert [(a.name, a.kind) for a in layer.args] == [("groups", "count")]
    assert layer.ranks is None and not layer.changes_shape
    for shape in [(12,), (12, 10), (12, 4, 4), (12, 2, 4, 4)]:
        assert layer.infer(shape, dict(groups=3), _Ctx()) == shape
    assert layer.infer((sym("C"), 4, 4), dict(groups=3), _Ctx()) == (sym("C"), 4, 4)
    assert layer.lower(_node("channel_shuffle", dict(groups=3)), [(12, 4, 4)]) == (
        "channel_shuffle", dict(groups=3))


def test_channel_shuffle_groups_must_divide_the_channels():
    # an error, but the output shape is known, so checking goes on past it
    ctx = _Ctx()
    assert LAYERS["channel_shuffle"].infer((116, 7, 7), dict(groups=3), ctx) == (116, 7, 7)
    assert ctx.errors == [("E305", "channel_shuffle groups=3 does not divide the 116 input "
                                   "channels", "116 divides by groups=1 or groups=2 or groups=4")]
    ctx = _Ctx()
    assert LAYERS["channel_shuffle"].infer((10,), dict(groups=4), ctx) == (10,)
    assert ctx.errors == [("E305", "channel_shuffle groups=4 does not divide the 10 input "
                                   "features", "10 divides by groups=1 or groups=2 or groups=5")]


SHUFFLE_GRID = [(shape, groups)
                for shape in [(2, 12), (2, 12, 5), (2, 12, 3, 2), (2, 12, 2, 2, 3)]
                for groups in (1, 2, 3, 4, 6, 12)]


@pytest.mark.parametrize("shape, groups", SHUFFLE_GRID)
def test_channel_shuffle_matches_reference_and_out(rng, shape, groups):
    x = rng.standard_normal(shape)
    y = tensor.channel_shuffle(x, groups=groups)
    assert not np.shares_memory(y, x)
    np.testing.assert_array_equal(y, tensor.shuffle_reference(x, groups=groups))
    channels = shape[1]
    order = [(i % groups) * (channels // groups) + i // groups for i in range(channels)]
    np.testing.assert_array_equal(y, x[:, order])
    out = np.full(shape, np.nan)
    assert tensor.channel_shuffle(x, groups=groups, out=out) is out
    np.testing.assert_array_equal(out, y)
    wide = np.full((shape[0], channels + 3) + shape[2:], 7.0)
    part = wide[:, 1:channels + 1]  # a concat's channel slice: not contiguous
    assert tensor.channel_shuffle(x, groups=groups, out=part) is part
    np.testing.assert_array_equal(part, y)
    assert (wide[:, :1] == 7).all() and (wide[:, channels + 1:] == 7).all()


def test_channel_shuffle_undoes_itself_with_the_other_factor(rng):
    x = rng.standard_normal((2, 12, 3, 3))
    y = tensor.channel_shuffle(x, groups=3)
    np.testing.assert_array_equal(tensor.channel_shuffle(y, groups=4), x)


def test_channel_shuffle_kernel_errors():
    with pytest.raises(ValueError, match=r"channel_shuffle: groups=5 must divide the 12 "
                                         r"channels"):
        tensor.channel_shuffle(np.zeros((1, 12, 2)), groups=5)


@pytest.mark.parametrize("groups", [1, 2, 3, 6])
def test_channel_shuffle_finite_differences(groups):
    x = np.random.default_rng(21).standard_normal((2, 6, 2, 1))
    _fd_check(tensor.shuffle_forward, tensor.shuffle_backward, [x], groups=groups)


@pytest.mark.torch
@pytest.mark.parametrize("shape, groups", SHUFFLE_GRID)
def test_channel_shuffle_matches_torch(shape, groups):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(22)
    x = rng.standard_normal(shape)
    p = PRIMITIVES["channel_shuffle"]
    y32 = p.kernel(x.astype(np.float32), groups=groups)
    t = torch.tensor(x, dtype=torch.float32)
    if len(shape) > 2:
        expected = torch.nn.ChannelShuffle(groups)(t)
    else:  # PyTorch's layer wants a map: the same on [N, F, 1]
        expected = torch.nn.ChannelShuffle(groups)(t[:, :, None])[:, :, 0]
    np.testing.assert_allclose(y32, expected.numpy(), rtol=1e-4, atol=1e-4)
    y, saved = p.forward(x, groups=groups)
    dy = rng.standard_normal(y.shape)
    (gx,), _ = p.backward(saved, dy)
    leaf = torch.tensor(x, requires_grad=True)
    step = SimpleNamespace(name="channel_shuffle", attrs=dict(groups=groups), inputs=[],
                           params=[])
    p.torch(step, [leaf], [], True).backward(torch.from_numpy(dy))
    np.testing.assert_allclose(gx, leaf.grad.numpy(), rtol=1e-6, atol=1e-6)


# ================================================================ drop_path


def test_drop_path_layer():
    layer = LAYERS["drop_path"]
    assert [(a.name, a.kind, a.default is REQUIRED) for a in layer.args] == [("p", "prob", True)]
    assert layer.ranks is None and not layer.changes_shape
    assert layer.infer((3, 4, 5), dict(p=0.2), _Ctx()) == (3, 4, 5)
    assert layer.lower(_node("drop_path", dict(p=0.2)), [(3, 4, 5)]) == (
        "drop_path", dict(p=0.2))


def test_drop_path_is_identity_at_inference(rng):
    x = rng.standard_normal((2, 8))
    assert tensor.drop_path(x, p=0.4) is x  # the memory plan aliases it
    np.testing.assert_array_equal(tensor.drop_path_reference(x, p=0.4), x)
    with pytest.raises(ValueError, match=r"drop_path: p must be in \[0, 1\), got 1"):
        tensor.drop_path(x, p=1)
    with pytest.raises(ValueError, match=r"drop_path: p must be in \[0, 1\), got -0.1"):
        tensor.drop_path_forward(x, p=-0.1)


@pytest.mark.parametrize("shape", [(400, 3), (400, 2, 5), (400, 2, 3, 3), (400, 2, 2, 2, 2)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_drop_path_drops_whole_samples_scaled(shape, dtype):
    x = (np.random.default_rng(1).standard_normal(shape) + 5.0).astype(dtype)  # no zeros
    p = 0.3
    y, saved = tensor.drop_path_forward(x, p=p, train=True, rng=np.random.default_rng(7))
    assert y.dtype == dtype and y.shape == x.shape
    flat_y = y.reshape(len(x), -1)
    kept = (flat_y != 0).all(axis=1)
    dropped = (flat_y == 0).all(axis=1)
    assert (kept | dropped).all()  # each sample is kept or dropped whole
    assert 0.6 < kept.mean() < 0.8
    np.testing.assert_allclose(y[kept], x[kept] / dtype(1 - p), rtol=1e-6)
    # the draws: one per sample, in order, from the generator handed in
    expected = np.random.default_rng(7).random(len(x)) >= p
    np.testing.assert_array_equal(kept, expected)
    dy = np.ones_like(y)
    (gx,), gws = tensor.drop_path_backward(saved, dy)
    assert gws == () and gx.dtype == dtype
    np.testing.assert_allclose(gx.reshape(len(x), -1),
                               np.repeat(kept[:, None] / dtype(1 - p), flat_y.shape[1], 1),
                               rtol=1e-6)
    again, _ = tensor.drop_path_forward(x, p=p, train=True, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(again, y)


def test_drop_path_without_training_or_p_is_the_identity_both_ways():
    x = np.arange(6.0).reshape(2, 3)
    for attrs in [dict(p=0.5, train=False), dict(p=0.0, train=True)]:
        y, saved = tensor.drop_path_forward(x, rng=None, **attrs)
        np.testing.assert_array_equal(y, x)
        (gx,), _ = tensor.drop_path_backward(saved, np.full((2, 3), 2.0))
        np.testing.assert_array_equal(gx, np.full((2, 3), 2.0))
        assert not np.shares_memory(gx, x)


def test_drop_path_training_needs_a_generator():
    with pytest.raises(ValueError, match=r"drop_path: training with p=0.5 needs rng"):
        tensor.drop_path_forward(np.ones((2, 3)), p=0.5, train=True, rng=None)


@pytest.mark.parametrize("p", [0.0, 0.25, 0.75])
def test_drop_path_finite_differences(p):
    x = np.random.default_rng(23).standard_normal((6, 2, 2, 1))
    _fd_check(tensor.drop_path_forward, tensor.drop_path_backward, [x], p=p, train=True)


@pytest.mark.torch
def test_drop_path_is_torchvisions_row_mode_for_the_same_draws():
    """torchvision.ops.stochastic_depth(mode="row"): input * bernoulli(1 - p) / (1 - p),
    one draw per sample; here with the keeps cnnc drew, in float32 and with gradients."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(24)
    x = rng.standard_normal((16, 3, 4, 4))
    p = 0.4
    y, saved = tensor.drop_path_forward(x, p=p, train=True, rng=np.random.default_rng(3))
    keep = np.random.default_rng(3).random(16) >= p
    noise = torch.tensor(keep, dtype=torch.float64).reshape(16, 1, 1, 1) / (1 - p)
    leaf = torch.tensor(x, requires_grad=True)
    expected = leaf * noise
    np.testing.assert_allclose(y, expected.detach().numpy(), rtol=1e-12)
    dy = rng.standard_normal(y.shape)
    expected.backward(torch.from_numpy(dy))
    (gx,), _ = tensor.drop_path_backward(saved, dy)
    np.testing.assert_allclose(gx, leaf.grad.numpy(), rtol=1e-6, atol=1e-6)
    y32, _ = tensor.drop_path_forward(x.astype(np.float32), p=p, train=True,
                                      rng=np.random.default_rng(3))
    np.testing.assert_allclose(y32, (leaf * noise).detach().numpy(), rtol=1e-4, atol=1e-4)


# ================================================================ ONNX of the new ops


class _Builder(_Recorder):
    """Records nodes, constants and helper tensors."""

    def __init__(self):
        super().__init__()
        self.consts = {}

    def const(self, purpose, value, dtype):
        name = f"layer/{purpose}"
        self.consts[name] = np.asarray(value, dtype=dtype)
        return name

    def temp(self, purpose):
        return f"layer/{purpose}"


@pytest.mark.parametrize("name, inputs, attrs, expected", [
    ("mul", ["a"], {}, [("Identity", ["a"], "y", {})]),
    ("mul", ["a", "b"], {}, [("Mul", ["a", "b"], "y", {})]),
    ("mul", ["a", "b", "c"], {}, [("Mul", ["a", "b"], "layer/product1", {}),
                                  ("Mul", ["layer/product1", "c"], "y", {})]),
    ("drop_path", ["x"], dict(p=0.5), [("Identity", ["x"], "y", {})]),
    ("slice", ["x"], dict(start=1, stop=3),
     [("Slice", ["x", "layer/starts", "layer/ends", "layer/axes"], "y", {})]),
    ("channel_shuffle", ["x"], dict(groups=3),
     [("Reshape", ["x", "layer/split"], "layer/grouped", {}),
      ("Transpose", ["layer/grouped"], "layer/swapped", dict(perm=[0, 2, 1, 3, 4])),
      ("Reshape", ["layer/swapped", "layer/merged"], "y", {})]),
])
def test_onnx_nodes_of_the_new_ops(name, inputs, attrs, expected):
    g = _Builder()
    step = SimpleNamespace(name="layer", attrs=attrs, span=None)
    PRIMITIVES[name].onnx(g, step, inputs, [], "y", [(6, 2, 2)] * len(inputs))
    assert g.nodes == expected
    if name == "slice":
        assert {k: v.tolist() for k, v in g.consts.items()} == {
            "layer/starts": [1], "layer/ends": [3], "layer/axes": [1]}
    if name == "channel_shuffle":
        assert {k: v.tolist() for k, v in g.consts.items()} == {
            "layer/split": [0, 3, 2, 2, 2], "layer/merged": [0, 6, 2, 2]}


@pytest.mark.parametrize("name, shapes, attrs", [
    ("mul", [(6, 3, 4), (6, 1, 1)], {}),
    ("mul", [(1, 3, 4), (6, 1, 1), (6, 3, 1)], {}),
    ("add", [(6, 1, 4), (6, 3, 1), (1, 3, 4)], {}),
    ("add", [(5,), (1,)], {}),
    ("slice", [(6, 3, 4)], dict(start=2, stop=5)),
    ("slice", [(6, 4)], dict(start=0, stop=1)),
    ("channel_shuffle", [(6, 3, 4)], dict(groups=2)),
    ("channel_shuffle", [(6, 4)], dict(groups=3)),
    ("channel_shuffle", [(6, 2, 3, 2)], dict(groups=3)),
    ("drop_path", [(6, 3, 4)], dict(p=0.5)),
])
def test_new_ops_in_onnxruntime(rng, name, shapes, attrs):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    p = PRIMITIVES[name]
    xs = [rng.standard_normal((3,) + s).astype(np.float32) for s in shapes]
    y = p.kernel(*xs, **attrs)
    names = [f"x{i}" for i in range(len(xs))]
    g = _Builder()
    p.onnx(g, SimpleNamespace(name="layer", attrs=attrs, span=None), names, [], "y", shapes)
    nodes = [onnx.helper.make_node(t, i, [o], **a) for t, i, o, a in g.nodes]
    inits = [onnx.numpy_helper.from_array(v, k) for k, v in g.consts.items()]
    info = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        nodes, "step", [info(n, onnx.TensorProto.FLOAT, ["N", *s]) for n, s in zip(names, shapes)],
        [info("y", onnx.TensorProto.FLOAT, ["N", *y.shape[1:]])], inits)
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
