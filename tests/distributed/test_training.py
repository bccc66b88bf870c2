"""Data-parallel training (distributed/training.py): with the same global batch and seed,
two Ray workers give single-process training's weights, up to rounding."""

from __future__ import annotations

import numpy as np
import pytest

import cnnc
from cnnc.runtime import optim, train

pytestmark = pytest.mark.ray

# no batchnorm and no dropout: the two things that data parallelism changes by design
SOURCE = """\
network plain
input x: [1, 4, 4]
output y = x -> conv(4, 3, pad=1) -> relu -> maxpool(2) -> flatten -> dense(8) -> relu -> dense(3)
"""


def quadrants(n, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 0.3, size=(n, 1, 4, 4))
    for i, label in enumerate(y):
        r, c = divmod(int(label), 2)
        x[i, 0, 2 * r:2 * r + 2, 2 * c:2 * c + 2] += 2.0
    return train.Dataset("quadrants", x[:50], y[:50], x[50:], y[50:])


def fitted(make_trainer, epochs=2):
    model = cnnc.compile(SOURCE).build(backend="numpy", dtype="float64", seed=3)
    opt = optim.SGD(model, lr=0.1, momentum=0.9)
    trainer = make_trainer(model, opt)
    history = trainer.fit(quadrants(60), epochs=epochs)
    return model, history


def test_two_workers_equal_one_process(ray_session):
    from cnnc.distributed.inference import ModelSpec
    from cnnc.distributed.training import DataParallelTrainer

    spec = ModelSpec(SOURCE.encode(), "<string>", backend="numpy", dtype="float64", seed=3)
    # batches of 15: the parts are 8 and 7 samples, so the weighting by share matters
    options = dict(batch_size=15, seed=5)
    one, history_one = fitted(lambda m, o: train.Trainer(m, o, **options))
    trainer = None

    def parallel(m, o):
        nonlocal trainer
        trainer = DataParallelTrainer(m, o, spec=spec, workers=2, **options)
        return trainer

    two, history_two = fitted(parallel)
    trainer.close()
    assert set(one.params) == set(two.params)
    for key in one.params:
        np.testing.assert_allclose(two.params[key], one.params[key], rtol=1e-9, atol=1e-12,
                                   err_msg=key)
    for a, b in zip(history_one, history_two):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-9)
        assert a.train_accuracy == b.train_accuracy and a.test_accuracy == b.test_accuracy
    # and training did move the weights
    start = cnnc.compile(SOURCE).build(backend="numpy", dtype="float64", seed=3)
    assert not np.allclose(start.params["y.dense1.weight"], one.params["y.dense1.weight"])


def test_cnnc_train_ray(tmp_path, monkeypatch, capsys, ray_session):
    from cnnc.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "plain.cnn").write_text(SOURCE)
    data = quadrants(60)
    np.savez(tmp_path / "d.npz", x=data.x_train, y=data.y_train, x_test=data.x_test,
             y_test=data.y_test)
    argv = ["train", "plain.cnn", "--data", "d.npz", "--epochs", "1", "--dtype", "float64",
            "--optimizer", "sgd", "--batch", "10"]
    assert main([*argv, "-o", "one.npz"]) == 0
    assert main([*argv, "-o", "two.npz", "--ray", "--workers", "2"]) == 0
    out, err = capsys.readouterr()
    assert "each batch of 10 split over 2 Ray workers" in out and "Traceback" not in err
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    for key in one.files:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-9, atol=1e-12, err_msg=key)
