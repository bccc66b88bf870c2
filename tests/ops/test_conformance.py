"""The generic conformance tests: every primitive of the op registry, on its own examples.

Nothing here names an op. A primitive added to a family module (``ops/``) is checked by
these tests through its ``examples``: the fast kernel against the slow reference, the
training forward against the kernel, the backward against finite differences, the kernel
and its gradients against PyTorch, and the ONNX export against ONNX Runtime. The CuPy side
of the same checks is ``tests/gpu/test_conformance_gpu.py``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from cnnc.compiler.plan import Plan, Step
from cnnc.ops import LAYERS, MERGES, PRIMITIVES, Op

CASES = [
    pytest.param(name, index, id=f"{name}-{index}")
    for name, p in PRIMITIVES.items()
    for index in range(len(p.examples(np.random.default_rng(0))))
]


def _example(name, index):
    """A fresh copy of example ``index`` of primitive ``name`` (kernels may write into
    buffers such as batchnorm's running statistics)."""
    return copy.deepcopy(PRIMITIVES[name].examples(np.random.default_rng(0))[index])


def _args(example, dtype=None):
    arrays = list(example.inputs) + list(example.params)
    if dtype is not None:
        arrays = [None if a is None else np.asarray(a, dtype=dtype) for a in arrays]
    return arrays


def _forward(p, example, train, arrays=None, seed=7):
    arrays = _args(example) if arrays is None else arrays
    return p.forward(*arrays, train=train, rng=np.random.default_rng(seed), **example.attrs)


# ---- the registry is complete ----------------------------------------------------------------

def test_every_primitive_is_whole():
    for name, p in PRIMITIVES.items():
        for part in ("kernel", "forward", "backward", "reference", "onnx", "torch"):
            assert callable(getattr(p, part)), f"{name} has no {part}"
        assert p.examples(np.random.default_rng(0)), f"{name} has no examples"
        assert (p.gpu_forward is None) == (p.gpu_backward is None), name
        assert p.in_place in (None, "first", "any"), name


def test_op_enum_is_the_registry():
    assert {op.value for op in Op} == set(PRIMITIVES)


def test_every_layer_has_its_parts():
    for name, layer in LAYERS.items():
        assert layer.name == name
        assert callable(layer.infer) and callable(layer.lower), name
        assert len({a.name for a in layer.args}) == len(layer.args), name
    for name, merge in MERGES.items():
        assert merge.name == name and callable(merge.lower), name
        assert merge.code.startswith("E"), name


def test_every_primitive_is_reached_by_some_layer():
    """Compiling a network with every layer kind reaches every primitive."""
    import cnnc

    inputs = {1: "[24]", 2: "[4, 6]", 3: "[4, 6, 6]", 4: "[4, 6, 6, 6]"}
    reached = set()
    for name, layer in LAYERS.items():
        rank = 3 if layer.ranks is None or 3 in layer.ranks else layer.ranks[0]
        chain = "x -> " + _call(layer)
        source = f"network t\ninput x: {inputs[rank]}\noutput y = {chain}\n"
        net = cnnc.check(source)
        assert net.ok, (name, [d.message for d in net.diagnostics])
        from cnnc.compiler.plan import lower

        reached |= {step.op.value for step in lower(net).steps}
    for name in MERGES:
        source = f"network t\ninput x: [4, 6, 6]\noutput y = {name}(x, x)\n"
        from cnnc.compiler.plan import lower

        reached |= {step.op.value for step in lower(cnnc.check(source)).steps}
    assert reached == set(PRIMITIVES)


def _call(layer):
    """A call of ``layer`` with its required arguments filled in for a [4, 6, 6] input."""
    from cnnc.ops.base import REQUIRED

    values = {"count": "2", "natural": "0", "pair": "2", "float": "0.5", "prob": "0.5",
              "positive_float": "0.5", "unit_float": "0.5", "bool": "true", "cpad": "0",
              "ppad": "0", "ints": "2", "dims": "2", "dpad": "0"}
    required = [values[a.kind] if a.kind in values else a.kind.split(":")[1].split("|")[0]
                for a in layer.args if a.default is REQUIRED]
    return f"{layer.name}({', '.join(required)})" if required else layer.name


# ---- fast kernel against the slow reference --------------------------------------------------

@pytest.mark.parametrize("name, index", CASES)
def test_kernel_matches_reference_float64(name, index):
    p = PRIMITIVES[name]
    ex = _example(name, index)
    want = p.reference(*_args(copy.deepcopy(ex)), **ex.attrs)
    got = p.kernel(*_args(ex), **ex.attrs)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name, index", CASES)
def test_kernel_float32_keeps_its_dtype_and_value(name, index):
    p = PRIMITIVES[name]
    ex = _example(name, index)
    want = p.reference(*_args(copy.deepcopy(ex)), **ex.attrs)
    got = p.kernel(*_args(ex, np.float32), **ex.attrs)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, index", CASES)
def test_out_argument_writes_the_same_values(name, index):
    p = PRIMITIVES[name]
    if not p.accepts_out:
        pytest.skip("the kernel takes no out=")
    ex = _example(name, index)
    want = p.kernel(*_args(copy.deepcopy(ex)), **ex.attrs)
    out = np.full_like(want, np.nan)
    got = p.kernel(*_args(ex), out=out, **ex.attrs)
    assert got is out
    np.testing.assert_array_equal(out, want)


# ---- training --------------------------------------------------------------------------------

@pytest.mark.parametrize("name, index", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_without_training_is_the_kernel(name, index, dtype):
    p = PRIMITIVES[name]
    ex = _example(name, index)
    want = p.kernel(*_args(copy.deepcopy(ex), dtype), **ex.attrs)
    y, _ = _forward(p, ex, train=False, arrays=_args(ex, dtype))
    assert y.dtype == want.dtype
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("name, index", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradients_have_the_forward_dtype_and_belong_to_the_caller(name, index, dtype):
    p = PRIMITIVES[name]
    ex = _example(name, index)
    arrays = _args(ex, dtype)
    y, saved = _forward(p, ex, train=True, arrays=arrays)
    dy = np.ones_like(y)
    gxs, gws = p.backward(saved, dy)
    assert len(gxs) == len(ex.inputs)
    assert len(gws) in (0, len(ex.params))
    for g, a in zip(list(gxs) + list(gws), arrays):
        if g is None:
            continue
        assert g.shape == np.shape(a)
        assert g.dtype == y.dtype
        assert not np.shares_memory(g, dy)
        for other in list(gxs) + list(gws):
            assert other is g or other is None or not np.shares_memory(g, other)


@pytest.mark.parametrize("name, index", [c for c in CASES
                                         if PRIMITIVES[c.values[0]].skips_input_grad])
def test_backward_without_the_input_gradient_gives_the_same_weights_gradients(name, index):
    p = PRIMITIVES[name]
    ex = _example(name, index)
    y, saved = _forward(p, ex, train=True)
    dy = np.sin(np.arange(y.size, dtype=y.dtype).reshape(y.shape))
    gxs, gws = p.backward(saved, dy)
    _, saved = _forward(p, _example(name, index), train=True)
    alone, gws_alone = p.backward(saved, dy, input_grad=False)
    assert all(g is None for g in alone) and len(alone) == len(gxs)
    for g, a in zip(gws, gws_alone):
        assert (g is None) == (a is None)
        if g is not None:
            np.testing.assert_array_equal(a, g)


def _deterministic(p, ex) -> bool:
    """Whether a training forward gives the same output whatever the random generator."""
    a, _ = _forward(p, copy.deepcopy(ex), train=True, seed=1)
    b, _ = _forward(p, copy.deepcopy(ex), train=True, seed=2)
    return np.array_equal(a, b)


@pytest.mark.parametrize("name, index", CASES)
@pytest.mark.parametrize("train", [False, True])
def test_backward_matches_finite_differences(name, index, train):
    p = PRIMITIVES[name]
    ex = _example(name, index)
    if not ex.grad:
        pytest.skip(ex.note or "no finite-difference check at these inputs")
    y, saved = _forward(p, copy.deepcopy(ex), train=train)
    weights = np.random.default_rng(3).standard_normal(y.shape)
    gxs, gws = p.backward(saved, weights)
    grads = list(gxs) + (list(gws) if gws else [None] * len(ex.params))

    def loss(arrays):
        out, _ = p.forward(*arrays, train=train, rng=np.random.default_rng(7), **ex.attrs)
        return float(np.sum(out * weights))

    pick = np.random.default_rng(4)
    base = _args(copy.deepcopy(ex))
    for position, grad in enumerate(grads):
        if grad is None:
            continue
        array = np.asarray(base[position], dtype=np.float64)
        flat = range(array.size)
        for i in pick.choice(list(flat), size=min(array.size, 12), replace=False):
            h = 1e-6 * max(1.0, abs(array.flat[i]))
            plus = copy.deepcopy(base)
            minus = copy.deepcopy(base)
            plus[position] = array.copy()
            minus[position] = array.copy()
            plus[position].flat[i] += h
            minus[position].flat[i] -= h
            numeric = (loss(plus) - loss(minus)) / (2 * h)
            assert grad.flat[i] == pytest.approx(numeric, rel=1e-5, abs=1e-6), (position, i)


# ---- PyTorch ---------------------------------------------------------------------------------

def _step(name, ex, shape):
    return Step(Op(name), "layer", [f"x{i}" for i in range(len(ex.inputs))], dict(ex.attrs),
                [f"layer.p{i}" for i in range(len(ex.params))], tuple(shape))


@pytest.mark.torch
@pytest.mark.parametrize("name, index", CASES)
@pytest.mark.parametrize("train", [False, True])
def test_forward_and_gradients_match_pytorch(name, index, train):
    torch = pytest.importorskip("torch")
    p = PRIMITIVES[name]
    ex = _example(name, index)
    if not ex.torch:
        pytest.skip(ex.note or "no PyTorch counterpart at these inputs")
    if train and not _deterministic(p, ex):
        pytest.skip("training forward is random")
    y, saved = _forward(p, copy.deepcopy(ex), train=train)
    weights = np.random.default_rng(3).standard_normal(y.shape)
    gxs, gws = p.backward(saved, weights)
    tensors = [torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True)
               for a in _args(copy.deepcopy(ex))]
    xs = tensors[:len(ex.inputs)]
    ws = tensors[len(ex.inputs):]
    got = p.torch(_step(name, ex, y.shape[1:]), xs, ws, train)
    np.testing.assert_allclose(got.detach().numpy(), y, rtol=1e-7, atol=1e-9)
    if not ex.grad:
        return
    (got * torch.from_numpy(weights)).sum().backward()
    for g, t in zip(list(gxs) + list(gws or ()), tensors):
        if g is None or t.grad is None:
            continue
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-6, atol=1e-8)


# ---- ONNX ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, index", CASES)
def test_onnx_export_runs_the_same_in_onnx_runtime(name, index):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from cnnc.runtime.onnx_export import export

    p = PRIMITIVES[name]
    ex = _example(name, index)
    if not ex.onnx:
        pytest.skip(ex.note or "not exported at these inputs")
    want = p.kernel(*_args(copy.deepcopy(ex), np.float32), **ex.attrs)
    step = _step(name, ex, want.shape[1:])
    plan = Plan("one", {f"x{i}": tuple(x.shape[1:]) for i, x in enumerate(ex.inputs)},
                {"y": "layer"}, [step],
                {k: tuple(np.shape(w)) for k, w in zip(step.params, ex.params)}, {}, {})
    params = dict(zip(step.params, ex.params))
    proto = export(plan, params)
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    feeds = {f"x{i}": np.asarray(x, dtype=np.float32) for i, x in enumerate(ex.inputs)}
    (got,) = session.run(["y"], feeds)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


FIELD_ARGS = {"window": {"kernel", "stride", "pad"}, "adaptive": {"size"},
              "upsample": {"factor"}, "transpose": {"kernel", "stride", "pad"},
              "whole": set(), "pointwise": set()}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_every_layer_says_how_much_of_its_input_a_unit_sees(name):
    """Receptive fields (compiler/receptive.py) read ``Layer.field``; each kind needs the
    arguments that say where a unit's window lies."""
    layer = LAYERS[name]
    assert layer.field in FIELD_ARGS
    assert FIELD_ARGS[layer.field] <= {a.name for a in layer.args}
