"""Training steps in shares of the batch (runtime/model.py ``_shares``, runtime/threads.py
``in_lanes``): the convolutions' training forward and backward run on shares of the batch,
one a thread (as many shares as the machine's cores), their outputs and input gradients
joined, their weight gradients summed in the shares' order. A step computes the same bits
at any thread count, and what the whole batch computes up to rounding; BLAS runs one thread
throughout such a step; an error in any share reaches the caller naming its layer."""

import numpy as np
import pytest

import cnnc
from cnnc.ops import Op
from cnnc.runtime import model as model_module
from cnnc.runtime.model import arrays_in
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
    monkeypatch.setattr(model_module, "SHARE_MIN_VALUES", 1)  # every conv splits
    monkeypatch.setattr(threads, "usable_cores", lambda max_age=0.0: 2)
    yield
    threads.set_threads(None)


def _step(source, x, labels, count, input_grad):
    model = cnnc.compile(source).build(backend="numpy", dtype="float64", seed=5)
    threads.set_threads(count)
    logits = model.forward(x, train=True, logits=True)
    _, d = softmax_cross_entropy(logits, labels)
    dx = model.backward(d, input_grad=input_grad)
    return model, logits, dx


CONVS = (Op.CONV1D, Op.CONV2D, Op.CONV3D)


@pytest.mark.parametrize("source, shape, classes", [
    (SOURCE, (3, 10, 10), 5), (SOURCE_ND, (2, 6, 7, 7), 3), (SOURCE_1D, (3, 40), 4)],
    ids=["2d", "3d", "1d"])
@pytest.mark.parametrize("batch", [2, 3, 5])
@pytest.mark.parametrize("input_grad", [True, False])
@pytest.mark.parametrize("cores", [2, 3])
def test_shares_compute_the_same_at_any_thread_count(source, shape, classes, batch,
                                                     input_grad, cores, monkeypatch):
    """The same bits at one, two and three threads (``auto`` moves the count with the
    machine's load: a run must not), and the whole batch's result up to rounding."""
    monkeypatch.setattr(threads, "usable_cores", lambda max_age=0.0: cores)
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, *shape))
    labels = rng.integers(0, classes, batch)
    runs = [_step(source, x, labels, count, input_grad) for count in (1, 2, 3)]
    first = runs[0][0]
    shares = first._shares(batch)
    convs = [s.name for s in first.plan.steps if s.op in CONVS]
    assert sorted(shares) == sorted(convs)  # the convolutions, and nothing else
    for bounds in shares.values():
        assert bounds[0] == 0 and bounds[-1] == batch
        assert len(bounds) == min(cores, batch) + 1
    for model, logits, dx in runs[1:]:
        np.testing.assert_array_equal(logits, runs[0][1])
        if input_grad:
            np.testing.assert_array_equal(dx, runs[0][2])
        else:
            assert dx is None
        assert set(model.grads) == set(first.grads)
        for key in first.grads:
            np.testing.assert_array_equal(model.grads[key], first.grads[key], err_msg=key)
        for key, value in first.state().items():  # batchnorm's running statistics too
            np.testing.assert_array_equal(model.state()[key], value, err_msg=key)
    monkeypatch.setattr(model_module, "SHARE_MIN_VALUES", 10 ** 9)  # the batch whole
    whole, logits, dx = _step(source, x, labels, 2, input_grad)
    assert not whole._shares(batch)
    np.testing.assert_allclose(logits, runs[0][1], rtol=1e-12, atol=1e-13)
    if input_grad:
        np.testing.assert_allclose(dx, runs[0][2], rtol=1e-10, atol=1e-13)
    for key in first.grads:
        np.testing.assert_allclose(whole.grads[key], first.grads[key], rtol=1e-10,
                                   atol=1e-13, err_msg=key)
    for key, value in first.state().items():
        np.testing.assert_allclose(whole.state()[key], value, rtol=1e-12, err_msg=key)


def test_shares_in_float32_stay_close_to_the_whole_batch(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 10, 10)).astype(np.float32)
    labels = rng.integers(0, 5, 4)

    def run():
        model = cnnc.compile(SOURCE).build(backend="numpy", dtype="float32", seed=5)
        threads.set_threads(2)
        logits = model.forward(x, train=True, logits=True)
        _, d = softmax_cross_entropy(logits, labels)
        model.backward(d)
        return model, logits

    split, logits = run()
    assert split._shares(4)
    monkeypatch.setattr(model_module, "SHARE_MIN_VALUES", 10 ** 9)
    whole, want = run()
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
    # (relative to the largest gradient: a bias before a batchnorm has a gradient of
    # rounding noise alone)
    scale = max(float(np.abs(g).max()) for g in whole.grads.values())
    for key, g in whole.grads.items():
        np.testing.assert_allclose(split.grads[key] / scale, g / scale, atol=1e-5,
                                   err_msg=key)


def test_small_shares_and_one_image_run_whole(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda max_age=0.0: 4)
    model = cnnc.compile(SOURCE).build(backend="numpy", dtype="float64", seed=5)
    first = model.plan.steps[0]  # the 5x5 convolution of the 300 values of an image
    assert first.op is Op.CONV2D
    assert model._shares(1) == {}
    monkeypatch.setattr(model_module, "SHARE_MIN_VALUES", 600)
    model._share_cache = None
    assert model._shares(4)[first.name] == [0, 2, 4]  # 1200 values: two shares of 600
    assert first.name not in model._shares(3)  # 900 values: one share
    assert model._shares(8)[first.name] == [0, 2, 4, 6, 8]  # four cores: four shares
    monkeypatch.setattr(model_module, "SHARE_MIN_VALUES", 10 ** 9)
    model._share_cache = None
    assert model._shares(4) == {}


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
        monkeypatch.setattr(model_module, "SHARE_MIN_VALUES", 10 ** 9)
        model._share_cache = None
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
        if dy.shape[0] == 2:  # three images in two shares, 1 and 2: the worker thread's
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

    for failing, error in ((0, ValueError), (2, KeyError)):  # the caller's lane, a worker's
        done = []

        def work(i):
            if i == failing:
                raise error(f"lane {i} fails at once")
            time.sleep(0.05)
            done.append(i)
            return i

        with pytest.raises(error, match=f"lane {failing} fails"):
            threads.in_lanes(work, 3)
        assert sorted(done) == sorted({0, 1, 2} - {failing})
    assert threads.in_lanes(lambda i: i * i, 3) == [0, 1, 4]


# ---- what a training step holds ---------------------------------------------------------

def _root(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def test_a_step_holds_the_tape_and_lets_the_rest_go(monkeypatch):
    """The forward lets each map go once no later step reads it (what the backward needs is
    in the tape), and the backward lets each step's saved arrays go once its backward has
    run: ResNet-18 at batch 8 peaked at 383 MiB in the forward for the 151 its tape keeps.
    (The batch whole: the spies below take one call a step.)"""
    import weakref

    monkeypatch.setattr(model_module, "SHARE_MIN_VALUES", 10 ** 9)
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
            for a in arrays_in(saved):
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
        in_tape = {id(_root(a)) for _, saved in model._tape[0] for a in arrays_in(saved)}
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


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork here")
def test_a_forked_child_runs_lanes_on_workers_of_its_own():
    import os

    assert threads.in_lanes(lambda i: i, 2) == [0, 1]  # the parent's pool exists
    pid = os.fork()
    if pid == 0:  # the child: the parent's worker threads are not there
        import signal

        signal.alarm(60)  # a child that hangs dies, rather than the test suite waiting
        code = 1
        try:
            code = 0 if threads.in_lanes(lambda i: i + 10, 2) == [10, 11] else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_lanes_inside_a_lane_run_on_that_thread():
    """A lane that asks for lanes of its own (an inference inside a training share, say)
    runs them one after the other: the workers may all be taken by the outer call."""
    import threading

    def inner(i):
        return threading.get_ident()

    def outer(i):
        return threads.in_lanes(inner, 3), threading.get_ident()

    for idents, me in threads.in_lanes(outer, 2):
        assert idents == [me] * 3
