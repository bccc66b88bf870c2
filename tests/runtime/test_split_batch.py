"""runtime/executor.py's split batches: with two threads or more, each worker thread runs
the whole plan on its share of the images. The outputs must equal one thread's, whatever
the batch size and the plan (branches, concat slices, residual adds, a gate, two outputs);
an error in any share reaches the caller, naming its layer."""

import numpy as np
import pytest

import cnnc
from cnnc.runtime import executor, threads
from cnnc.runtime.errors import LayerError

SOURCE = """\
network split
input x: [3, 9, 9]
block branchy(c) {
    a = in -> conv(c, 1) -> relu
    b = in -> conv(c, 3, pad=1) -> batchnorm -> relu
    return concat(a, b)
}
f = x -> conv(8, 3, pad=1) -> relu -> branchy(4)
g = f -> global_avgpool -> conv(8, 1) -> sigmoid
h = mul(f, g)
k = f -> conv(8, 3, pad=1)
r = add(h, k)
output logits = r -> global_avgpool -> flatten -> dense(5)
output map = r -> maxpool(2)
"""


@pytest.fixture(autouse=True)
def clean():
    threads.set_threads(None)
    yield
    threads.set_threads(None)


def _model():
    return cnnc.compile(SOURCE).build(backend="numpy", dtype="float64", seed=3)


def _shares_seen(monkeypatch) -> list:
    """A list that gets ``(lane, images)`` for each share the executor runs from now on."""
    seen = []
    real = executor.Executor._run

    def spy(self, inputs, params, lane=0, **kw):
        seen.append((lane, next(iter(inputs.values())).shape[0]))
        return real(self, inputs, params, lane, **kw)

    monkeypatch.setattr(executor.Executor, "_run", spy)
    return seen


@pytest.mark.parametrize("batch", [2, 3, 5, 7])
@pytest.mark.parametrize("count", [2, 3])
def test_split_outputs_equal_one_threads(batch, count, monkeypatch):
    model = _model()
    x = np.random.default_rng(batch).standard_normal((batch, 3, 9, 9))
    threads.set_threads(1)
    want = model(x)
    lanes = _shares_seen(monkeypatch)
    threads.set_threads(count)
    for _ in range(2):  # the second call reuses each lane's arena
        got = model(x)
        assert set(got) == {"logits", "map"}
        for name in want:
            # (equal up to rounding: a product over fewer images may sum in another order)
            np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-14,
                                       err_msg=name)
            assert got[name].flags.c_contiguous
    shares = sorted(lanes[:min(count, batch)])
    assert [lane for lane, _ in shares] == list(range(min(count, batch)))
    assert sum(size for _, size in shares) == batch


def test_one_image_or_one_thread_is_not_split(monkeypatch):
    model = _model()
    called = []
    monkeypatch.setattr(executor.Executor, "_run_split",
                        lambda *a: called.append(a) or pytest.fail("split"))
    threads.set_threads(2)
    model(np.zeros((1, 3, 9, 9)))
    threads.set_threads(1)
    model(np.zeros((4, 3, 9, 9)))
    monkeypatch.setattr(executor, "SPLIT_BATCH", False)
    threads.set_threads(2)
    model(np.zeros((4, 3, 9, 9)))
    assert not called


def test_an_error_in_a_worker_share_reaches_the_caller(monkeypatch):
    model = _model()
    threads.set_threads(2)
    model(np.zeros((4, 3, 9, 9)))  # builds the executor
    ex = model._executor
    kernels = dict(ex.kernels)

    def failing(op, kernel):
        def run(*args, **kwargs):
            if args[0].shape[0] == 2 and args[0][0, 0].flat[0] == 7:  # the second share only
                raise ValueError("boom in the second share")
            return kernel(*args, **kwargs)
        return run

    ex.kernels = {op: failing(op, k) for op, k in kernels.items()}
    x = np.zeros((4, 3, 9, 9))
    x[2:] = 7
    with pytest.raises(LayerError, match="boom in the second share"):
        model(x)
    ex.kernels = kernels
    threads.set_threads(1)
    np.testing.assert_allclose(model(np.ones((4, 3, 9, 9)))["logits"],
                               _model()(np.ones((4, 3, 9, 9)))["logits"], rtol=1e-12)


def test_the_workers_keep_the_callers_floating_point_error_handling():
    """np.errstate is per thread: a caller that silences overflow (a trainer evaluating
    diverged weights) must not get warnings from the worker threads, and one that asks for
    them gets them."""
    import warnings

    model = _model()
    threads.set_threads(2)
    huge = np.full((4, 3, 9, 9), 1e308)  # overflows in the first convolution
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="ignore"):
            model(huge)
    with np.errstate(all="warn"), pytest.warns(RuntimeWarning):
        model(huge)


def test_auto_splits_over_every_usable_core_even_when_others_keep_them_busy(monkeypatch):
    """Lanes share nothing until the join: under ``auto`` a batch takes a lane per usable
    core though other processes keep all but one busy (a fixed count stays as given)."""
    monkeypatch.delenv("CNNC_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "auto_threads", lambda: 1)  # the others' load: one core
    monkeypatch.setattr(threads, "usable_cores", lambda: 3)
    model = _model()
    x = np.random.default_rng(0).standard_normal((4, 3, 9, 9))
    seen = []
    real = executor.Executor._run_split

    def spy(self, inputs, params, lanes):
        seen.append(lanes)
        return real(self, inputs, params, lanes)

    monkeypatch.setattr(executor.Executor, "_run_split", spy)
    got = model(x)
    assert seen == [3]
    threads.set_threads(1)
    np.testing.assert_allclose(model(x)["logits"], got["logits"], rtol=1e-12, atol=1e-14)
    assert seen == [3]  # a fixed count of one: not split
    threads.set_threads(None)
    model(x[:1])
    assert seen == [3]  # one image: not split


def test_shares_are_equal_unless_the_cores_ran_far_apart():
    assert executor._shares(8, [None, None]) == [0, 4, 8]
    assert executor._shares(8, [1.0, None]) == [0, 4, 8]  # a core not yet timed
    assert executor._shares(8, [1.0, 1.3]) == [0, 4, 8]  # within the noise
    assert executor._shares(8, [2.0, 1.0]) == [0, 5, 8]  # 5.3 / 2.7
    assert executor._shares(8, [1.0, 2.0]) == [0, 3, 8]
    assert executor._shares(9, [1.0, 1.0, 3.0]) == [0, 2, 4, 9]
    assert executor._shares(8, [10.0, 1.0]) == [0, 7, 8]  # each share keeps an image
    assert executor._shares(3, [10.0, 1.0]) == [0, 1, 3]  # too few images to weigh


def test_a_lane_on_a_slower_core_gets_fewer_images_and_keeps_its_arena(monkeypatch):
    model = _model()
    x = np.random.default_rng(0).standard_normal((8, 3, 9, 9))
    threads.set_threads(1)
    want = model(x)
    threads.set_threads(2)
    ex = model.executor
    monkeypatch.setattr(threads, "lane_cores", lambda lanes: [0, 1][:lanes])
    monkeypatch.setattr(threads, "PIN_LANES", False)  # (cores named, none held)
    sizes = _shares_seen(monkeypatch)
    model(x)  # equal shares: 4 and 4, each lane's arena for 4 images
    slots = [ex._arenas[lane][1] for lane in (0, 1)]
    ex._speeds = {0: 1.0, 1: 2.0}  # as if core 0 were shared with a busy process
    sizes.clear()
    got = model(x)
    assert sorted(sizes) == [(0, 3), (1, 5)]
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-14)
    assert ex._arenas[0][1] is slots[0]  # fewer images: the same arena, viewed
    assert ex._arenas[1][1] is not slots[1]  # more: a larger one
    monkeypatch.setattr(executor, "TIMED_SECONDS", 0.0)  # (this network's lanes are quick)
    ex._speeds = {}
    model(x)
    assert set(ex._speeds) == {0, 1} and min(ex._speeds.values()) > 0  # each core timed
