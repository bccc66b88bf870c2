"""What kernels derive from a plan's weights, kept between calls (ops/base.py `Prepared`): the
budget, lanes asking at once, conv2d's Winograd transforms kept per layer (F(4x4, 3x3) on
large maps, F(2x2, 3x3) on small ones, none past the budget or for a layer Winograd refuses),
the 1x1 tiles' packed weights, and the inference executor replacing them when the
parameters change (a weight file, a checkpoint restored, `mark_changed`)."""

import threading
import time

import numpy as np
import pytest

import cnnc
from cnnc.ops.base import Prepared
from cnnc.ops.conv import conv2d
from cnnc.runtime import executor

fast = pytest.importorskip("cnnc.ops.fast")
winograd = pytest.importorskip("cnnc.ops.winograd")
needs_fast = pytest.mark.skipif(not fast.ENABLED, reason="numba not installed or CNNC_FAST=0")


def _kept(layer):
    return [array for _, array in layer._arrays.values()]


def test_kept_arrays_and_the_budget():
    plan = Prepared(100)
    layer = plan.layer("a")
    assert plan.layer("a") is layer and plan.layer("b") is not layer
    made = []

    def make(n):
        def run():
            made.append(n)
            return np.zeros(n, dtype=np.uint8)
        return run

    first = layer.kept("k", 60, make(60))
    assert first.nbytes == 60 and made == [60] and plan.left == 40
    assert layer.kept("k", 60, make(60)) is first and made == [60]  # kept: not made again
    assert plan.layer("b").kept("k", 50, make(50)) is None  # past the budget: not made
    assert made == [60] and plan.left == 40
    assert plan.layer("b").kept("k", 40, make(40)).nbytes == 40 and plan.left == 0


def test_lanes_asking_at_once_make_it_once():
    plan = Prepared(1000)
    layer = plan.layer("a")
    made = []
    start = threading.Barrier(2)

    def make():
        made.append(1)
        time.sleep(0.05)  # the other lane asks meanwhile
        return np.zeros(400, dtype=np.uint8)

    def lane():
        start.wait()
        layer.kept("k", 400, make)

    lanes = [threading.Thread(target=lane) for _ in range(2)]
    for t in lanes:
        t.start()
    for t in lanes:
        t.join()
    assert made == [1] and plan.left == 600 and len(_kept(layer)) == 1


def test_a_failing_make_costs_nothing_and_another_source_is_made_anew():
    plan = Prepared(1000)
    layer = plan.layer("a")
    with pytest.raises(ZeroDivisionError):
        layer.kept("k", 400, lambda: 1 / 0)
    assert plan.left == 1000 and not layer._arrays
    w1, w2 = np.ones(3), np.ones(3)
    first = layer.kept("k", 300, lambda: np.zeros(300, np.uint8), source=w1)
    assert layer.kept("k", 300, lambda: None, source=w1) is first and plan.left == 700
    second = layer.kept("k", 300, lambda: np.ones(300, np.uint8), source=w2)  # replaced
    assert second is not first and second[0] == 1 and plan.left == 700


def _layer(rng, c, o, size, n=2):
    x = rng.standard_normal((n, c, size, size)).astype(np.float32)
    w = (rng.standard_normal((o, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    return x, w, b


def _counted(monkeypatch):
    calls = []
    for name in ("weight_transform", "weight_transform4"):
        real = getattr(winograd, name)

        def spy(w, real=real, name=name):
            calls.append(name)
            return real(w)

        monkeypatch.setattr(winograd, name, spy)
    return calls


@needs_fast
@pytest.mark.parametrize("size, tile", [(winograd.TILE4_MAP, 4), (14, 2)])
def test_conv2d_keeps_the_transform_of_its_tile(size, tile, monkeypatch):
    rng = np.random.default_rng(0)
    x, w, b = _layer(rng, 64, 32, size)
    want = conv2d(x, w, b, pad=1, act="relu")  # F(2x2, 3x3), its transform made per call
    calls = _counted(monkeypatch)
    layer = Prepared(1 << 30).layer("c")
    for _ in range(3):
        got = conv2d(x, w, b, pad=1, act="relu", prepared=layer)
        np.testing.assert_allclose(got, want, rtol=0, atol=3e-5 * np.abs(want).max())
    name = "weight_transform4" if tile == 4 else "weight_transform"
    assert calls == [name]  # made once, on the first call
    (u,) = _kept(layer)
    assert u.shape == ((tile + 2) ** 2, 32, 64)


@needs_fast
def test_nothing_is_kept_for_a_layer_winograd_refuses():
    rng = np.random.default_rng(6)
    x, w, b = _layer(rng, 64, 32, winograd.TILE4_MAP)
    layer = Prepared(1 << 30).layer("c")
    conv2d(x, w, b, pad=1, act="elu", prepared=layer)  # no compiled ELU epilogue: the GEMM
    assert not layer._arrays and layer._plan.left == 1 << 30


@needs_fast
def test_past_the_budget_a_layer_makes_its_transform_every_call(monkeypatch):
    rng = np.random.default_rng(1)
    x, w, b = _layer(rng, 64, 32, winograd.TILE4_MAP)
    want = conv2d(x, w, b, pad=1)
    calls = _counted(monkeypatch)
    f2_bytes = 16 * 32 * 64 * 4
    only_f2 = Prepared(f2_bytes).layer("c")  # no room for F(4x4, 3x3)'s: F(2x2, 3x3)'s kept
    for _ in range(2):
        np.testing.assert_array_equal(conv2d(x, w, b, pad=1, prepared=only_f2), want)
    assert calls == ["weight_transform"]
    calls.clear()
    nothing = Prepared(f2_bytes - 1).layer("c")
    for _ in range(2):
        np.testing.assert_array_equal(conv2d(x, w, b, pad=1, prepared=nothing), want)
    assert calls == ["weight_transform", "weight_transform"] and not nothing._arrays


SOURCE = """
network wide
input x: [16, 30, 30]
output y = x -> conv(64, 3, pad=1) -> batchnorm -> relu -> conv(64, 3, pad=1) -> relu
    -> global_avgpool -> flatten -> dense(5)
"""


def _model(seed=0):
    return cnnc.compile(SOURCE).build(backend="numpy", dtype="float32", seed=seed)


@needs_fast
def test_the_executor_remakes_transforms_when_the_weights_change():
    model = _model()
    x = np.random.default_rng(2).standard_normal((4, 16, 30, 30)).astype(np.float32)
    before = model(x)
    np.testing.assert_allclose(before, model.interpret(x), rtol=1e-4, atol=1e-4)
    kept = [u.shape for layer in model.executor._prepared._layers.values()
            for u in _kept(layer)]
    assert kept == [(36, 64, 64)]  # the second convolution's (16 inputs: no Winograd)
    key = next(k for k in model.params if k.endswith("weight") and model.params[k].ndim == 4
               and model.params[k].shape[1] == 64)
    model.params[key] *= -1.5
    model.mark_changed()
    after = model(x)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, model.interpret(x), rtol=1e-4, atol=1e-4)


@needs_fast
def test_a_loaded_weight_file_is_used(tmp_path):
    a, b = _model(seed=0), _model(seed=1)
    x = np.random.default_rng(3).standard_normal((2, 16, 30, 30)).astype(np.float32)
    a(x)  # transforms of seed 0 kept
    b.save(tmp_path / "b.npz")
    a.load(tmp_path / "b.npz")
    np.testing.assert_array_equal(a(x), b(x))


@needs_fast
def test_a_restored_checkpoint_is_used(tmp_path):
    from cnnc.runtime import optim, train

    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 16, 30, 30)).astype(np.float32)
    y = rng.integers(0, 5, 6)
    data = train.Dataset("d", x[:4], y[:4], x[4:], y[4:])
    saved = tmp_path / "run.ckpt.npz"
    first = _model(seed=0)
    train.Trainer(first, optim.make_optimizer("sgd", first, lr=0.5), batch_size=4,
                  checkpoint=saved).fit(data, 1)
    model = _model(seed=7)
    trainer = train.Trainer(model, optim.make_optimizer("sgd", model, lr=0.5), batch_size=4,
                            checkpoint=saved)
    model(x[:2])  # the transforms of seed 7's weights kept
    trainer.restore(saved)  # the weights overwritten in place
    np.testing.assert_allclose(model(x[:2]), model.interpret(x[:2]), rtol=1e-4, atol=1e-4)


def test_the_budget_is_the_executors(monkeypatch):
    monkeypatch.setattr(executor, "PREPARED_BYTES", 0)
    model = _model()
    x = np.random.default_rng(4).standard_normal((2, 16, 30, 30)).astype(np.float32)
    np.testing.assert_allclose(model(x), model.interpret(x), rtol=1e-4, atol=1e-4)
    assert not any(layer._arrays for layer in model.executor._prepared._layers.values())


@needs_fast
def test_the_1x1_tiles_keep_their_packed_weights(monkeypatch):
    pointwise = pytest.importorskip("cnnc.ops.pointwise")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 24, 10, 10)).astype(np.float32)
    w = rng.standard_normal((37, 24, 1, 1)).astype(np.float32)  # a last panel part-filled
    b = rng.standard_normal(37).astype(np.float32)
    if not pointwise.applies(x, w, np.float32):
        pytest.skip("the 1x1 tiles do not run on this CPU")
    want = conv2d(x, w, b, act="relu")
    calls = []
    real = pointwise.packed_weights
    monkeypatch.setattr(pointwise, "packed_weights", lambda w: calls.append(1) or real(w))
    layer = Prepared(1 << 20).layer("p")
    for _ in range(3):
        np.testing.assert_array_equal(conv2d(x, w, b, act="relu", prepared=layer), want)
    assert calls == [1]
    (packed,) = _kept(layer)
    assert packed.size == 40 * 24 and (packed.reshape(10, 24, 4)[-1, :, 1:] == 0).all()
