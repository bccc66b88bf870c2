"""The inference memory plan: fusions, aliases, concat slices, in-place ops, slot reuse, and
the planned executor against the step-by-step interpreter."""

import numpy as np
import pytest

import cnnc
from cnnc.compiler.memory import plan_memory
from cnnc.ops import Op

EXAMPLES = ["lenet5", "ng_39x39", "nin_cifar10", "resnet18", "googlenet", "alexnet"]


def _x(model, n, seed=1):
    out = {}
    for i, (name, shape) in enumerate(model.plan.inputs.items()):
        out[name] = np.random.default_rng(seed + i).standard_normal((n,) + shape)
    return out if len(out) > 1 else next(iter(out.values()))


def _as_dict(y):
    return y if isinstance(y, dict) else {"y": y}


def _assert_same(a, b, rtol=1e-12):
    a, b = _as_dict(a), _as_dict(b)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=rtol * np.abs(b[k]).max())


def _lifetimes(eplan):
    """root storage -> (first, last) exec index, from the tensors each exec touches."""
    from cnnc.compiler.memory import _root

    spans = {}
    for i, e in enumerate(eplan.execs):
        for name in e.inputs + [e.out]:
            r = _root(eplan.tensors, name)
            first, _ = spans.get(r, (i, i))
            spans[r] = (first, i)
    return spans


def _assert_no_overlap(eplan):
    spans = _lifetimes(eplan)
    by_slot = {}
    for root, slot in eplan.slot_of.items():
        by_slot.setdefault(slot, []).append(spans[root])
        assert eplan.tensors[root].size <= eplan.slots[slot]
    for intervals in by_slot.values():
        intervals.sort()
        for (_, end), (start, _) in zip(intervals, intervals[1:]):
            assert end < start, "two live storages share a slot"


@pytest.mark.parametrize("name", EXAMPLES)
def test_planned_equals_interpreted(name):
    model = cnnc.compile(f"examples/{name}.cnn").build(backend="numpy", dtype="float64")
    for n in (2, 1, 2):  # a new batch size re-plans the arena; going back reuses it
        x = _x(model, n, seed=n)
        _assert_same(model(x), model.interpret(x))
    eplan = model.executor.eplan
    _assert_no_overlap(eplan)
    assert eplan.live_peak <= eplan.planned <= eplan.naive


@pytest.mark.parametrize("name", EXAMPLES)
def test_plan_invariants(name):
    eplan = plan_memory(cnnc.compile(f"examples/{name}.cnn").plan)
    _assert_no_overlap(eplan)
    # every graph output has storage of its own
    for buf in eplan.outputs.values():
        t = eplan.tensors[buf]
        assert t.fresh and t.storage == buf and t.parent is None


def test_googlenet_concat_branches_write_in_place_and_relus_fuse():
    eplan = plan_memory(cnnc.compile("examples/googlenet.cnn").plan)
    concats = [e for e in eplan.execs if e.op is Op.CONCAT]
    assert len(concats) == 9
    for e in concats:
        placed = [eplan.tensors[i].parent == e.out for i in e.inputs]
        assert all(placed), e.out
    assert not any(e.op is Op.ACTIVATION for e in eplan.execs)  # every relu is an epilogue
    # 37.81 MiB of outputs per sample (summary's figure) down to under 7 MiB planned
    assert eplan.naive * 4 / 2**20 == pytest.approx(37.81, abs=0.01)
    assert eplan.planned * 4 / 2**20 < 7


def test_resnet18_folds_every_batchnorm():
    plan = cnnc.compile("examples/resnet18.cnn").plan
    eplan = plan_memory(plan)
    n_bn = sum(s.op is Op.BATCHNORM for s in plan.steps)
    assert n_bn == 20
    assert sum(bool(e.fold) for e in eplan.execs) == n_bn
    assert not any(e.op is Op.BATCHNORM for e in eplan.execs)
    # the relu after each residual add runs in place over the sum
    adds = {e.out for e in eplan.execs if e.op is Op.ADD}
    relus = [e for e in eplan.execs if e.op is Op.ACTIVATION and e.inputs[0] in adds]
    assert relus and all(e.in_place == 0 for e in relus)


def test_outputs_survive_the_next_call():
    model = cnnc.compile("examples/nin_cifar10.cnn").build(backend="numpy", dtype="float64")
    x1, x2 = _x(model, 2, seed=1), _x(model, 2, seed=2)
    y1 = model(x1)
    kept = y1.copy()
    model(x2)
    np.testing.assert_array_equal(y1, kept)


def test_changed_batchnorm_parameters_are_refolded():
    model = cnnc.compile("examples/resnet18.cnn").build(backend="numpy", dtype="float64")
    x = _x(model, 1)
    before = model(x)
    key = next(k for k in model.params if k.endswith("running_var"))
    model.params[key] *= 4.0
    model.mark_changed()
    after = model(x)
    assert not np.allclose(before, after)
    _assert_same(after, model.interpret(x))


def test_load_refolds(tmp_path):
    src = cnnc.compile("examples/resnet18.cnn")
    a = src.build(backend="numpy", dtype="float64", seed=0)
    b = src.build(backend="numpy", dtype="float64", seed=1)
    x = _x(a, 1)
    b(x)  # fold b's own weights first
    a.save(tmp_path / "a.npz")
    b.load(tmp_path / "a.npz")
    _assert_same(b(x), a(x))


SOURCES = {
    # a concat that reads a graph input, the same tensor twice, and a tensor read elsewhere
    "concat_mixed": """
network t
input x: [2, 6, 6]
a = x -> conv(3, 3, pad=1) -> relu
b = x -> conv(4, 1)
c = concat(x, a, a, b)
d = b -> relu
output y = concat(c, d) -> conv(5, 1)
""",
    # nested concats, a pool branch, an average pool written into its slice
    "nested": """
network t
input x: [3, 8, 8]
p = x -> maxpool(3, stride=1, pad=1)
q = x -> avgpool(3, stride=1, pad=1)
r = x -> conv(2, 3, pad=1)
inner = concat(p, r)
output y = concat(inner, q) -> conv(4, 1) -> relu
""",
    # a fused conv whose output is also a graph output stays unfused; dropout/flatten aliases
    "outputs": """
network t
input x: [2, 5, 5]
f = x -> conv(3, 3) -> batchnorm
output feat = f
output logits = f -> relu -> dropout(0.3) -> flatten -> dense(4) -> softmax
""",
    # residual adds where an input lives on, so it cannot be overwritten
    "residual": """
network t
input x: [4, 6, 6]
a = x -> conv(4, 3, pad=1) -> batchnorm -> relu
b = a -> conv(4, 3, pad=1) -> batchnorm
s = add(a, b) -> relu
t2 = add(s, a, x) -> leaky_relu(0.2)
output y = concat(t2, s) -> global_avgpool -> flatten
""",
    # every activation as a fused epilogue, prelu's slopes included
    "epilogues": """
network t
input x: [2, 6, 6]
h = x -> conv(4, 3, pad=1) -> prelu -> conv(4, 3, pad=1) -> elu -> conv(4, 1) -> selu
h2 = h -> conv(4, 1) -> swish -> conv(4, 1) -> softplus -> conv(4, 1) -> sigmoid
output y = h2 -> conv(4, 1) -> tanh -> flatten -> dense(3) -> leaky_relu
""",
}


@pytest.mark.parametrize("name", sorted(SOURCES))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_small_graphs(name, dtype):
    model = cnnc.compile(SOURCES[name]).build(backend="numpy", dtype=dtype, seed=3)
    for key, value in model.params.items():  # make batchnorm folding matter
        if key.endswith(("running_mean", "running_var", ".bias")) or "batchnorm" in key:
            rng = np.random.default_rng(len(key))
            model.params[key] = np.asarray(np.abs(rng.standard_normal(value.shape)) + 0.5,
                                           dtype=dtype)
    model.mark_changed()
    x = _x(model, 3)
    rtol = 1e-12 if dtype == "float64" else 2e-5
    _assert_same(model(x), model.interpret(x), rtol=rtol)
    eplan = model.executor.eplan
    _assert_no_overlap(eplan)
    assert eplan.planned <= eplan.naive


def test_small_graph_rewrites():
    e = plan_memory(cnnc.compile(SOURCES["concat_mixed"]).plan)
    c = next(x for x in e.execs if x.op is Op.CONCAT and "x" in x.inputs)
    # a is read twice by the concat and b also by the relu: only placed when read once
    assert [e.tensors[i].parent == c.out for i in c.inputs] == [False, False, False, False]
    e = plan_memory(cnnc.compile(SOURCES["outputs"]).plan)
    conv = next(x for x in e.execs if x.op is Op.CONV2D)
    # the batchnorm folds in; the relu does not, since the folded output is a graph output
    assert len(conv.fused) == 1 and conv.out in e.outputs.values()
    e = plan_memory(cnnc.compile(SOURCES["epilogues"]).plan)
    assert sum(bool(x.fused) for x in e.execs) == 8
    assert not any(x.op is Op.ACTIVATION for x in e.execs)


def test_summary_reports_planned_peak_beside_naive(capsys):
    import json

    from cnnc.cli import main

    assert main(["summary", "examples/googlenet.cnn", "--format", "json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    planned = plan_memory(cnnc.compile("examples/googlenet.cnn").plan).planned * 4
    assert rep["planned_activation_bytes"] == planned
    assert rep["planned_activation_bytes"] < rep["activation_bytes"] / 5
    assert main(["summary", "examples/googlenet.cnn"]) == 0
    assert "Planned peak:      6.13 MiB per sample" in capsys.readouterr().out


def test_summary_has_no_planned_peak_for_symbolic_sizes(capsys):
    import json

    from cnnc.cli import main

    src = "network s\ninput x: [3, H, W]\noutput y = x -> conv(4, 3) -> relu\n"
    import io
    import sys

    sys.stdin = io.TextIOWrapper(io.BytesIO(src.encode()))
    try:
        assert main(["summary", "-", "--format", "json"]) == 0
    finally:
        sys.stdin = sys.__stdin__
    assert "planned_activation_bytes" not in json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("scaled", [True, False])
def test_batchnorm_folds_by_scale_or_by_scaled_weights(scaled):
    from dataclasses import replace

    from cnnc.runtime.executor import Executor

    model = cnnc.compile(SOURCES["residual"]).build(backend="numpy", dtype="float64", seed=2)
    for key in model.params:
        if key.endswith("running_var"):
            model.params[key] = np.linspace(0.5, 2.0, model.params[key].size)
    backend = model.backend
    if not scaled:
        backend = replace(backend, accepts_scale=frozenset())
    ex = Executor(model.executor.eplan, backend, model.dtype)
    x = _x(model, 2)
    got = ex.run({"x": x}, model.params)["y"]
    _assert_same(got, model.interpret(x))


@pytest.mark.parametrize("stride, pad, k", [(1, 1, 3), (2, 0, 1), (2, 3, 7), (1, 0, 1)])
def test_conv_and_dense_scale_equals_scaled_weights(stride, pad, k):
    from cnnc.ops.conv import conv2d
    from cnnc.ops.linear import dense

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 9, 9))
    w = rng.standard_normal((6, 4, k, k))
    b = rng.standard_normal(6)
    s = rng.uniform(0.5, 2, 6)
    got = conv2d(x, w, b, stride=stride, pad=pad, act="relu", scale=s)
    want = conv2d(x, w * s[:, None, None, None], b, stride=stride, pad=pad, act="relu")
    np.testing.assert_allclose(got, want, rtol=1e-12)
    f = rng.standard_normal((3, 5))
    wd = rng.standard_normal((6, 5))
    np.testing.assert_allclose(dense(f, wd, b, scale=s), dense(f, wd * s[:, None], b),
                               rtol=1e-12)
    with pytest.raises(ValueError, match=r"scale must be \[6\]"):
        conv2d(x, w, b, scale=s[:5])


@pytest.mark.parametrize("name", EXAMPLES)
def test_an_empty_batch_gives_empty_outputs(name):
    model = cnnc.compile(f"examples/{name}.cnn").build(backend="numpy", dtype="float32")
    shape = next(iter(model.plan.inputs.values()))
    y = model(np.zeros((0,) + shape, np.float32))
    assert y.shape[0] == 0 and y.dtype == np.float32


def test_planning_a_long_chain_is_not_quadratic():
    # 2,000 in-place activations and 2,000 fused ones; each rewrite must be O(1), so this
    # plans in well under a second (a quadratic planner took minutes at this size). The
    # assertion is about the result; the size is what would expose quadratic work.
    chain = " -> conv(2, 1) -> relu -> maxpool(1) -> elu" * 2000
    plan = cnnc.compile(f"network long\ninput x: [2, 3, 3]\noutput y = x{chain}\n").plan
    eplan = plan_memory(plan)
    # every elu runs in place but the last, whose output is the graph's own
    assert sum(e.in_place is not None for e in eplan.execs) == 1999
    assert sum(bool(e.fused) for e in eplan.execs) == 2000
    assert len(eplan.slots) <= 3
