"""Training steps in image lanes (runtime/model.py ``_lanes``, runtime/threads.py
``in_lanes``): with two threads or more, the convolutions' training forward and backward run
each thread's share of the batch on its own thread, their outputs and input gradients
joined, their weight gradients summed. A step must compute what one thread computes; BLAS
runs one thread throughout such a step; an error in any share reaches the caller naming its
layer."""

import numpy as np
import pytest

import cnnc
from cnnc.ops import Op
from cnnc.runtime import model as model_module
from cnnc.runtime import threads
from cnnc.runtime.errors import LayerError
from cnnc.runtime.losses import softmax_cross_entropy

SOURCE = """\
network lanes
input x: [3, 10, 10]
block unit(c) {
    a = in -> conv(c, 3, pad=1, bias=false) -> batchnorm -> relu
    b = a -> conv(c, 3, pad=1) -> batchnorm
    s = in -> conv(c, 1, stride=1)
    return add(b, s) -> relu
}
f = x -> conv(8, 5, stride=2, pad=2) -> relu -> unit(8) -> maxpool(2)
g = f -> conv(8, 3, pad=1, groups=8) -> relu -> conv(12, 1)
output logits = g -> global_avgpool -> flatten -> dropout(0.0) -> dense(5)
"""

SOURCE_ND = """\
network lanes_nd
input x: [2, 6, 7, 7]
f = x -> conv3d(4, 3, pad=1) -> relu -> maxpool3d(2) -> conv3d(6, 3, pad=1, groups=2)
output logits = f -> global_avgpool -> flatten -> dense(3)
"""

SOURCE_1D = """\
network lanes_1d
input x: [3, 40]
f = x -> conv1d(8, 5, pad=2) -> relu -> conv1d(8, 3, stride=2, dilation=2, pad=2)
output logits = f -> global_avgpool -> flatten -> dense(4)
"""


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    threads.set_threads(None)
    monkeypatch.setattr(model_module, "LANE_MIN_VALUES", 1)  # every conv splits
    yield
    threads.set_threads(None)


def _step(source, x, labels, count, input_grad):
    model = cnnc.compile(source).build(backend="numpy", dtype="float64", seed=5)
    threads.set_threads(count)
    logits = model.forward(x, train=True, logits=True)
    _, d = softmax_cross_entropy(logits, labels)
    dx = model.backward(d, input_grad=input_grad)
    return model, logits, dx


@pytest.mark.parametrize("source, shape, classes", [
    (SOURCE, (3, 10, 10), 5), (SOURCE_ND, (2, 6, 7, 7), 3), (SOURCE_1D, (3, 40), 4)],
    ids=["2d", "3d", "1d"])
@pytest.mark.parametrize("batch", [2, 3, 5])
@pytest.mark.parametrize("input_grad", [True, False])
def test_lanes_compute_what_one_thread_computes(source, shape, classes, batch, input_grad):
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, *shape))
    labels = rng.integers(0, classes, batch)
    one, logits1, dx1 = _step(source, x, labels, 1, input_grad)
    assert not one._lanes(batch, 1)
    for count in (2, 3):
        split, logits, dx = _step(source, x, labels, count, input_grad)
        lanes = split._lanes(batch, count)
        convs = [s.name for s in split.plan.steps
                 if s.op in (Op.CONV1D, Op.CONV2D, Op.CONV3D)]
        assert sorted(lanes) == sorted(convs)  # the convolutions, and nothing else
        for bounds in lanes.values():
            assert bounds[0] == 0 and bounds[-1] == batch
            assert len(bounds) == min(count, batch) + 1
        np.testing.assert_allclose(logits, logits1, rtol=1e-12, atol=1e-13)
        if input_grad:
            np.testing.assert_allclose(dx, dx1, rtol=1e-10, atol=1e-13)
        else:
            assert dx is None and dx1 is None
        assert set(split.grads) == set(one.grads)
        for key in one.grads:
            np.testing.assert_allclose(split.grads[key], one.grads[key], rtol=1e-10,
                                       atol=1e-13, err_msg=key)
        for key, value in one.state().items():  # batchnorm's running statistics too
            np.testing.assert_allclose(split.state()[key], value, rtol=1e-12, err_msg=key)


def test_small_shares_one_image_and_one_thread_run_whole(monkeypatch):
    model = cnnc.compile(SOURCE).build(backend="numpy", dtype="float64", seed=5)
    first = model.plan.steps[0]  # the 5x5 convolution of the 300 values of an image
    assert first.op is Op.CONV2D
    assert model._lanes(1, 2) == {}
    assert model._lanes(4, 1) == {}
    monkeypatch.setattr(model_module, "LANE_MIN_VALUES", 600)
    model._lane_cache = None
    assert model._lanes(4, 4)[first.name] == [0, 2, 4]  # 1200 values: two shares of 600
    assert first.name not in model._lanes(3, 2)  # 900 values: one share
    monkeypatch.setattr(model_module, "LANE_MIN_VALUES", 10 ** 9)
    model._lane_cache = None
    assert model._lanes(4, 2) == {}


def test_blas_runs_one_thread_through_a_step_in_lanes(monkeypatch):
    """A product at two BLAS threads between the lanes left OpenBLAS's worker spinning on
    the core a lane wanted: a step in lanes keeps BLAS at one thread from start to end."""
    if not threads.blas_threads():
        pytest.skip("no BLAS library that threadpoolctl can set")
    model = cnnc.compile(SOURCE).build(backend="numpy", dtype="float64", seed=5)
    seen = []
    table = model.backend.grads
    kept = dict(table)
    forward, backward = table[Op.DENSE]

    def spy_forward(*args, **kwargs):
        seen.append(("forward", threads.blas_threads()))
        return forward(*args, **kwargs)

    def spy_backward(*args, **kwargs):
        seen.append(("backward", threads.blas_threads()))
        return backward(*args, **kwargs)

    table[Op.DENSE] = (spy_forward, spy_backward)
    try:
        threads.set_threads(2)
        x = np.random.default_rng(0).standard_normal((4, 3, 10, 10))
        logits = model.forward(x, train=True, logits=True)
        model.backward(np.ones_like(logits))
        monkeypatch.setattr(model_module, "LANE_MIN_VALUES", 10 ** 9)
        model._lane_cache = None
        logits = model.forward(x, train=True, logits=True)
        model.backward(np.ones_like(logits))
    finally:
        table.clear()
        table.update(kept)
    assert [phase for phase, _ in seen] == ["forward", "backward"] * 2
    assert all(c == 1 for _, counts in seen[:2] for c in counts)  # in lanes
    assert all(c == 2 for _, counts in seen[2:] for c in counts)  # whole


def test_an_error_in_one_share_names_its_layer():
    model = cnnc.compile(SOURCE).build(backend="numpy", dtype="float64", seed=5)
    table = model.backend.grads
    kept = dict(table)
    forward, backward = table[Op.CONV2D]

    def failing_backward(saved, dy, **options):
        if dy.shape[0] == 1:  # the last share of three images at two lanes: 1 and 2
            raise ValueError("boom in one share")
        return backward(saved, dy, **options)

    table[Op.CONV2D] = (forward, failing_backward)
    try:
        threads.set_threads(2)
        x = np.random.default_rng(0).standard_normal((3, 3, 10, 10))
        logits = model.forward(x, train=True, logits=True)
        with pytest.raises(LayerError, match="boom in one share"):
            model.backward(np.ones_like(logits))
    finally:
        table.clear()
        table.update(kept)


def test_in_lanes_waits_for_every_lane_before_raising():
    import time

    done = []

    def work(i):
        if i == 0:
            raise ValueError("first lane fails at once")
        time.sleep(0.05)
        done.append(i)
        return i

    with pytest.raises(ValueError, match="first lane"):
        threads.in_lanes(work, 3)
    assert sorted(done) == [1, 2]
    assert threads.in_lanes(lambda i: i * i, 3) == [0, 1, 4]


# ---- what a training step holds ---------------------------------------------------------

def _arrays(item):
    """Every array in a saved structure (tuples, lists, dicts, `_Lanes`)."""
    stack, found = [item], []
    while stack:
        item = stack.pop()
        if isinstance(item, (tuple, list)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, np.ndarray):
            found.append(item)
    return found


def _root(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def test_a_step_holds_the_tape_and_lets_the_rest_go():
    """The forward lets each map go once no later step reads it (what the backward needs is
    in the tape), and the backward lets each step's saved arrays go once its backward has
    run: ResNet-18 at batch 8 peaked at 383 MiB in the forward for the 151 its tape keeps.
    (One thread: the spies below take one call a step.)"""
    import weakref

    model = cnnc.compile(SOURCE).build(backend="numpy", dtype="float64", seed=5)
    table = model.backend.grads
    kept = dict(table)
    outputs = {}  # step index -> weak reference to its output
    saved_by = {}  # id of a saved array's root -> (weak reference, step indices)
    index_of = {}  # id of a step's saved structure -> the step's index
    problems = []

    plan_steps = model.plan.steps
    last_read = {}
    for k, step in enumerate(plan_steps):
        for name in step.inputs:
            last_read[name] = k

    def spy(op, forward, backward):
        def fwd(*args, **kwargs):
            # the maps that no step from here on reads (nor a view of theirs: a flatten's
            # output, say), and no backward needs, are gone
            now = len(outputs)
            read_later = set()
            for j, ref in outputs.items():
                y = ref()
                if y is not None and last_read.get(plan_steps[j].name, j) >= now:
                    read_later.add(id(_root(y)))
            for j, ref in outputs.items():
                y = ref()
                if (y is not None and id(_root(y)) not in read_later
                        and id(_root(y)) not in saved_by):
                    problems.append(("forward", now, plan_steps[j].name))
            y = None
            y, saved = forward(*args, **kwargs)
            i = len(outputs)
            outputs[i] = weakref.ref(y)
            index_of[id(saved)] = i
            for a in _arrays(saved):
                root = _root(a)
                ref, steps = saved_by.setdefault(id(root), (weakref.ref(root), set()))
                steps.add(i)
            return y, saved

        def bwd(saved, dy, **options):
            # the steps after this one have run their backward: their own arrays are gone
            i = index_of[id(saved)]
            for key, (ref, steps) in saved_by.items():
                if min(steps) > i and key not in params and ref() is not None:
                    problems.append((i, sorted(steps)))
            return backward(saved, dy, **options)
        return fwd, bwd

    params = {id(_root(a)) for a in model.params.values()}
    for op, (forward, backward) in kept.items():
        table[op] = spy(op, forward, backward)
    try:
        threads.set_threads(1)
        x = np.random.default_rng(0).standard_normal((4, 3, 10, 10))
        logits = model.forward(x, train=True, logits=True)
        in_tape = {id(_root(a)) for _, saved in model._tape[0] for a in _arrays(saved)}
        alive = [i for i, ref in outputs.items() if ref() is not None]
        assert alive, "the tape keeps some outputs (relu's, for one)"
        for i in alive:
            assert (id(_root(outputs[i]())) in in_tape
                    or outputs[i]() is logits), model.plan.steps[i].name
        model.backward(np.ones_like(logits))
    finally:
        table.clear()
        table.update(kept)
    assert not problems, problems
    assert model._tape is None
