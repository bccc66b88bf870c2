"""The weight flags of `cnnc run` and `cnnc train` (issue 13): every weight format through
`Model.load`, `--show-mapping`, `train --init`, and `run --backend onnxruntime`."""

from __future__ import annotations

import numpy as np
import pytest

import cnnc
from cnnc.cli import main

TINY = """\
network tiny
input x: [1, 4, 4]
output y = x -> conv(4, 3, pad=1) -> relu -> maxpool(2) -> flatten -> dense(3)
"""


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.cnn").write_text(TINY)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 1, 4, 4)).astype(np.float32)
    y = rng.integers(0, 3, 24)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    np.save(tmp_path / "x.npy", x[:2])
    model = cnnc.compile(str(tmp_path / "tiny.cnn")).build(seed=7)
    model.save(tmp_path / "w.safetensors")
    model.save(tmp_path / "w.npz")
    return tmp_path


def test_run_takes_safetensors_and_shows_the_mapping(work, capsys):
    pytest.importorskip("safetensors")
    assert main(["run", "tiny.cnn", "--input", "x.npy", "--weights", "w.safetensors",
                 "--show-mapping", "-o", "a.npy"]) == 0
    err = capsys.readouterr().err
    assert "y.conv1.weight" in err
    assert main(["run", "tiny.cnn", "--input", "x.npy", "--weights", "w.npz", "-o", "b.npy"]) == 0
    np.testing.assert_array_equal(np.load(work / "a.npy"), np.load(work / "b.npy"))


def test_train_starts_from_init(work, capsys):
    assert main(["train", "tiny.cnn", "--data", "data.npz", "--epochs", "1", "--lr", "0",
                 "--optimizer", "sgd", "--init", "w.npz", "-o", "trained.npz"]) == 0
    with np.load(work / "w.npz") as start, np.load(work / "trained.npz") as end:
        for key in start.files:
            if not key.endswith(("running_mean", "running_var")):
                np.testing.assert_array_equal(start[key], end[key])


def test_train_refuses_init_with_resume(work, capsys):
    assert main(["train", "tiny.cnn", "--data", "data.npz", "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main(["train", "tiny.cnn", "--data", "data.npz", "--epochs", "2", "--init", "w.npz",
                 "--resume", "tiny.ckpt.npz"]) == 2
    assert "give one of them" in capsys.readouterr().err


def test_train_init_missing_file(work, capsys):
    assert main(["train", "tiny.cnn", "--data", "data.npz", "--init", "gone.npz"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnc: error: ") and "gone.npz" in err


def test_run_on_onnxruntime_agrees_with_numpy(work, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    assert main(["run", "tiny.cnn", "--input", "x.npy", "--weights", "w.npz",
                 "--backend", "onnxruntime", "-o", "ort.npy"]) == 0
    assert main(["run", "tiny.cnn", "--input", "x.npy", "--weights", "w.npz", "-o", "np.npy"]) == 0
    np.testing.assert_allclose(np.load(work / "ort.npy"), np.load(work / "np.npy"), atol=1e-5)
    assert main(["run", "tiny.cnn", "--input", "x.npy", "--backend", "onnxruntime",
                 "--dtype", "float64", "-o", "f64.npy"]) == 2
    assert capsys.readouterr().err.count("cnnc: error:") == 1


@pytest.mark.parametrize("command", ["run", "train", "export"])
@pytest.mark.parametrize("value,message", [
    ("0", "--threads must be at least 1 thread (or `auto`), got 0"),
    ("\u0663", "--threads must be a whole number of threads >= 1 or `auto`"),
])
def test_threads_flag_refuses_bad_counts(work, capsys, command, value, message):
    args = {"run": ["--input", "x.npy", "-o", "y.npy"], "train": ["--data", "data.npz"],
            "export": ["-o", "m.onnx"]}[command]
    assert main([command, "tiny.cnn", *args, "--threads", value]) == 2
    assert message in capsys.readouterr().err
    assert not (work / "y.npy").exists() and not (work / "m.onnx").exists()


def test_threads_from_the_environment_are_checked(work, capsys, monkeypatch):
    monkeypatch.setenv("CNNC_NUM_THREADS", "many")
    assert main(["run", "tiny.cnn", "--input", "x.npy", "-o", "y.npy"]) == 2
    assert "CNNC_NUM_THREADS must be a whole number" in capsys.readouterr().err


def test_threads_flag_runs(work, capsys):
    from cnnc.runtime import threads

    try:
        assert main(["run", "tiny.cnn", "--input", "x.npy", "-o", "y.npy", "--threads", "1"]) == 0
    finally:
        threads.set_threads(None)
    model = cnnc.compile(str(work / "tiny.cnn")).build(threads=1)
    assert model.threads == 1
    assert model(np.load(work / "x.npy")).shape == (2, 3)
