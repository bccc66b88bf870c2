"""`cnnc train` and `cnnc run` end to end on 1-D signals [C, L] and 3-D volumes [C, D, H, W]
(issue 9): a few epochs on a small learnable task, the weights saved, then run on new
inputs with those weights."""

from __future__ import annotations

import numpy as np
import pytest

from cnnc.cli import main

SIGNAL = """\
network sig
input x: [2, 64]
output y = x -> conv1d(8, 5, pad=2) -> batchnorm -> relu -> maxpool1d(2) -> conv1d(8, 3)
    -> global_avgpool -> flatten -> dense(3)
"""
VOLUME = """\
network vol
input x: [1, 8, 12, 12]
output y = x -> conv3d(4, 3, pad=1) -> batchnorm -> relu -> maxpool3d(2) -> conv3d(8, 3)
    -> global_avgpool -> flatten -> dense(3)
"""


def data(shape, seed=0):
    """60 samples of three classes, each class a bump at its own place."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 60)
    x = rng.normal(size=(60, *shape)).astype(np.float32)
    for i, label in enumerate(y):
        index = (0,) + tuple(min(2 + 2 * int(label), n - 1) for n in shape[1:])
        x[(i, *index)] += 4.0
    return x, y


@pytest.mark.parametrize("name,source,shape", [
    ("sig", SIGNAL, (2, 64)),
    ("vol", VOLUME, (1, 8, 12, 12)),
])
def test_train_then_run(tmp_path, monkeypatch, capsys, name, source, shape):
    monkeypatch.chdir(tmp_path)
    (tmp_path / f"{name}.cnn").write_text(source)
    x, y = data(shape)
    np.savez(tmp_path / "train.npz", x=x[:48], y=y[:48], x_test=x[48:], y_test=y[48:])
    np.save(tmp_path / "new.npy", x[48:])
    assert main(["train", f"{name}.cnn", "--data", "train.npz", "--epochs", "2", "-o",
                 "w.npz", "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert '"epochs": 2' in out.splitlines()[-1]
    with np.load(tmp_path / "w.npz") as w:
        assert any(key.endswith("conv1.weight") or "conv1d1.weight" in key
                   or "conv3d1.weight" in key for key in w.files)
    assert main(["run", f"{name}.cnn", "--input", "new.npy", "--weights", "w.npz",
                 "-o", "y.npy"]) == 0
    logits = np.load(tmp_path / "y.npy")
    assert logits.shape == (12, 3) and np.isfinite(logits).all()
