"""`cnnc train`: results as plain lines, a bar or JSON; weights and checkpoints on disk;
--resume; every refusal as one `cnnc: error:` line with exit status 2, never a traceback.

Most tests call `cnnc.cli.main` in-process on a tiny network and a tiny .npz data set; one
runs the console script and interrupts it with a real SIGINT.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cnnc
from cnnc.cli import main

TINY = """\
network tiny
input x: [1, 4, 4]
output y = x -> conv(4, 3, pad=1) -> relu -> maxpool(2) -> flatten -> dense(3)
"""
JSON_KEYS = {"epochs", "train_loss", "train_accuracy", "test_accuracy", "seconds", "weights"}


def quadrants(n, seed=0):
    """[n, 1, 4, 4] noise with one bright quadrant; the label is which (0..2)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 0.3, size=(n, 1, 4, 4))
    for i, label in enumerate(y):
        r, c = divmod(int(label), 2)
        x[i, 0, 2 * r:2 * r + 2, 2 * c:2 * c + 2] += 2.0
    return x, y


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A folder with tiny.cnn and data.npz (48 training, 12 test samples), as the cwd."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.cnn").write_text(TINY)
    x, y = quadrants(60)
    np.savez(tmp_path / "data.npz", x=x[:48], y=y[:48], x_test=x[48:], y_test=y[48:])
    return tmp_path


def run(capsys, *argv):
    status = main(["train", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


def test_plain_lines_and_summary(work, capsys):
    status, out, err = run(capsys, "tiny.cnn", "--data", "data.npz", "--epochs", "3",
                           "--batch", "8", "--lr", "0.01")
    assert status == 0, err
    lines = out.splitlines()
    assert len(lines) == 4
    for i, line in enumerate(lines[:3], start=1):
        assert line.startswith(f"epoch {i}/3  loss ")
        assert "train acc" in line and "test acc" in line and "img/s" in line
    assert lines[3].startswith("trained tiny for 3 epochs in ")
    assert lines[3].endswith("weights saved to tiny.weights.npz, checkpoint tiny.ckpt.npz")
    assert "\r" not in out
    model = cnnc.compile(TINY).build(backend="numpy")
    model.load(work / "tiny.weights.npz")
    assert sorted(os.listdir(work)) == ["data.npz", "tiny.ckpt.npz", "tiny.cnn",
                                        "tiny.weights.npz"]


def test_json_last_line(work, capsys):
    status, out, _ = run(capsys, "tiny.cnn", "--data", "data.npz", "--epochs", "2",
                         "--format", "json", "-o", "w.npz", "--optimizer", "sgd",
                         "--lr", "0.1", "--schedule", "cosine")
    assert status == 0
    last = json.loads(out.splitlines()[-1])
    assert set(last) == JSON_KEYS
    assert last["epochs"] == 2
    assert last["weights"] == "w.npz"
    assert 0 <= last["train_accuracy"] <= 1 and 0 <= last["test_accuracy"] <= 1
    assert last["train_loss"] > 0 and last["seconds"] > 0
    assert (work / "w.npz").exists() and (work / "w.ckpt.npz").exists()


def test_progress_bar_on_a_terminal(work, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    status, out, _ = run(capsys, "tiny.cnn", "--data", "data.npz", "--epochs", "2")
    assert status == 0
    # a bar redrawn in place (rich's), that leaves each epoch's plain line behind
    assert "\r" in out and "2/2" in out
    finished = [line.split("\x1b[2K")[-1] for line in out.split("\n")]
    assert [line[:10] for line in finished if "train acc" in line] == ["epoch 1/2 ", "epoch 2/2 "]
    assert out.rstrip("\n").split("\n")[-1].startswith("trained tiny for 2 epochs")


def test_resume_continues_exactly(work, capsys):
    common = ["tiny.cnn", "--data", "data.npz", "--batch", "8", "--optimizer", "adam",
              "--lr", "0.01", "--schedule", "step", "--step-size", "1", "--gamma", "0.7"]
    assert run(capsys, *common, "--epochs", "3", "-o", "straight.npz")[0] == 0
    assert run(capsys, *common, "--epochs", "1", "-o", "part.npz")[0] == 0
    status, out, _ = run(capsys, "tiny.cnn", "--data", "data.npz", "--epochs", "3",
                         "--resume", "part.ckpt.npz", "-o", "resumed.npz", "--format", "json")
    assert status == 0
    assert out.splitlines()[0] == "resuming part.ckpt.npz at epoch 2"
    assert json.loads(out.splitlines()[-1])["epochs"] == 3
    with np.load(work / "straight.npz") as a, np.load(work / "resumed.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])


def test_resume_refuses_a_changed_setting(work, capsys):
    assert run(capsys, "tiny.cnn", "--data", "data.npz", "--epochs", "1")[0] == 0
    status, _, err = run(capsys, "tiny.cnn", "--data", "data.npz", "--epochs", "2",
                         "--resume", "tiny.ckpt.npz", "--lr", "0.5")
    assert status == 2
    assert err == ("cnnc: error: --lr 0.5 differs from the checkpoint's 0.001 (tiny.ckpt.npz); "
                   "a resumed run keeps the settings it was started with, so leave the flag "
                   "out\n")


def test_resume_refuses_a_flag_of_another_optimizer(work, capsys):
    assert run(capsys, "tiny.cnn", "--data", "data.npz", "--epochs", "1")[0] == 0
    status, _, err = run(capsys, "tiny.cnn", "--data", "data.npz", "--epochs", "2",
                         "--resume", "tiny.ckpt.npz", "--momentum", "0.5")
    assert status == 2
    assert err == ("cnnc: error: --momentum does not apply to the checkpoint's optimizer, adam "
                   "(tiny.ckpt.npz)\n")


def test_resuming_a_finished_run_saves_its_weights(work, capsys):
    assert run(capsys, "tiny.cnn", "--data", "data.npz", "--epochs", "2", "-o", "a.npz")[0] == 0
    status, out, _ = run(capsys, "tiny.cnn", "--data", "data.npz", "--epochs", "2",
                         "--resume", "a.ckpt.npz", "-o", "b.npz", "--format", "json")
    assert status == 0
    assert out.splitlines()[0] == "a.ckpt.npz already holds 2 epochs; nothing to train"
    assert json.loads(out.splitlines()[-1])["epochs"] == 2
    with np.load(work / "a.npz") as a, np.load(work / "b.npz") as b:
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])


def test_nan_loss_exits_1_naming_epoch_and_step(work, capsys):
    # SGD with lr 1e30 in float32: the first step throws the weights to ~1e30, the next
    # forward overflows
    status, _, err = run(capsys, "tiny.cnn", "--data", "data.npz", "--epochs", "3",
                         "--batch", "48", "--optimizer", "sgd", "--momentum", "0",
                         "--lr", "1e30")
    assert status == 1
    assert err.startswith("cnnc: error: the loss became ")
    assert "at epoch 2, step 1; training stopped (the last good checkpoint, tiny.ckpt.npz, " \
           "holds the state after epoch 1)" in err
    assert not (work / "tiny.weights.npz").exists()


def test_ctrl_c_saves_and_exits_130(work, capsys, monkeypatch):
    from cnnc.commands import progress

    plain = progress.Lines.end_epoch

    def end_epoch(self, stats, epochs):
        plain(self, stats, epochs)
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(progress.Lines, "end_epoch", end_epoch)
    status, out, err = run(capsys, "tiny.cnn", "--data", "data.npz", "--epochs", "5")
    assert status == 130
    assert err == ("cnnc: interrupted at the end of epoch 1; checkpoint saved to tiny.ckpt.npz; "
                   "continue with --resume tiny.ckpt.npz\n")
    assert out.count("\n") == 1
    assert not (work / "tiny.weights.npz").exists()
    monkeypatch.setattr(progress.Lines, "end_epoch", plain)
    status, out, err = run(capsys, "tiny.cnn", "--data", "data.npz", "--epochs", "2",
                           "--resume", "tiny.ckpt.npz")
    assert status == 0, err
    assert out.startswith("resuming tiny.ckpt.npz at epoch 2\nepoch 2/2")


def test_sigint_to_the_process(work):
    """A real Ctrl-C: the console script saves a checkpoint and exits 130."""
    x, y = quadrants(4000)
    np.savez(work / "big.npz", x=x, y=y)
    cnnc_script = Path(sys.executable).with_name("cnnc")
    proc = subprocess.Popen([str(cnnc_script), "train", "tiny.cnn", "--data", "big.npz",
                             "--epochs", "1000", "--batch", "4"], cwd=work,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()  # the first epoch is done
    assert first.startswith("epoch    1/1000"), first + proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "checkpoint saved to tiny.ckpt.npz; continue with --resume tiny.ckpt.npz" in err
    assert "Traceback" not in err
    meta = json.loads(str(np.load(work / "tiny.ckpt.npz")["meta"]))
    assert meta["epoch"] >= 1


# ---- refusals ---------------------------------------------------------------------------------

TWO_INPUTS = """\
network two
input a: [1, 4, 4]
input b: [1, 4, 4]
output y = concat(a, b) -> flatten -> dense(3)
"""
MAPS = "network maps\ninput x: [1, 4, 4]\noutput y = x -> conv(3, 1)\n"


def write(path, **arrays):
    np.savez(path, **arrays)


@pytest.mark.parametrize("make, argv, message", [
    (None, ["--data", "nope.npz"], "cannot read data file nope.npz: No such file or directory"),
    (lambda w: write(w / "d.npz", x=np.zeros((6, 1, 4, 4))), ["--data", "d.npz"],
     "d.npz: missing `y`; expected arrays x [N, C, H, W] and y [N] (optionally x_test and "
     "y_test), found: x"),
    (lambda w: write(w / "d.npz", x=np.zeros((6, 1, 5, 5)), y=np.arange(6) % 3,
                     x_test=np.zeros((3, 1, 5, 5)), y_test=np.arange(3)),
     ["--data", "d.npz"],
     "input `x` of tiny expects [N, 1, 4, 4]; x from d.npz is [6, 1, 5, 5]"),
    (lambda w: write(w / "d.npz", x=np.zeros((6, 1, 4, 4)), y=np.array([0, 1, 2, 3, 0, 1]),
                     x_test=np.zeros((1, 1, 4, 4)), y_test=np.array([0])),
     ["--data", "d.npz"],
     "label 3 (y[3] in d.npz) is out of range for output `y` of tiny, which scores 3 "
     "classes: labels must be 0..2"),
    (lambda w: write(w / "d.npz", x=np.zeros((3, 1, 4, 4)), y=np.array([0.5, 1, 2])),
     ["--data", "d.npz"],
     "d.npz: `y` must hold integer class labels; y[0] is 0.5 (dtype float64)"),
    (lambda w: (w / "two.cnn").write_text(TWO_INPUTS), ["--data", "digits", "@two.cnn"],
     "two.cnn: training needs a network with one input; two has 2: a, b"),
    (lambda w: (w / "maps.cnn").write_text(MAPS), ["--data", "digits", "@maps.cnn"],
     "maps.cnn: training needs an output of class scores [classes]; output `y` of maps is "
     "[3, 4, 4] (add flatten and dense)"),
    (None, ["--data", "data.npz", "--optimizer", "adam", "--momentum", "0.5"],
     "--momentum applies to --optimizer sgd, not adam"),
    (None, ["--data", "data.npz", "--eta-min", "0.1"],
     "--eta-min applies to --schedule cosine, not constant"),
    (None, ["--data", "data.npz", "-o", "x.npz", "--checkpoint", "x.npz"],
     "the weights (-o x.npz) and the checkpoint (x.npz) must be different files"),
    (None, ["--data", "data.npz", "-o", "data.npz"],
     "the weights path data.npz is the data file; choose another"),
    (None, ["--data", "data.npz", "-o", "missing/w.npz"],
     "cannot write weights missing/w.npz: folder"),
    (None, ["--data", "data.npz", "--resume", "data.npz"],
     "data.npz is not a cnnc training checkpoint (no format marker; expected "
     "'cnnc-checkpoint/1'; a weights file written by -o is not a checkpoint)"),
    (None, ["--data", "data.npz", "--resume", "gone.npz"],
     "cannot read checkpoint gone.npz: No such file or directory"),
])
def test_refusals(work, capsys, make, argv, message):
    if make is not None:
        make(work)
    model = "tiny.cnn"
    rest = []
    for arg in argv:
        if arg.startswith("@"):
            model = arg[1:]
        else:
            rest.append(arg)
    status, out, err = run(capsys, model, *rest)
    assert status == 2
    assert err.startswith(f"cnnc: error: {message}")
    assert err.count("\n") == 1
    assert out == ""


def test_model_with_errors_exits_1(work, capsys):
    (work / "bad.cnn").write_text("input x: [1, 4, 4]\noutput y = x -> dense(3)\n")
    status, _, err = run(capsys, "bad.cnn", "--data", "data.npz")
    assert status == 1
    assert "error[E304]" in err
    assert err.rstrip().endswith("cnnc: error: bad.cnn has errors; run `cnnc check bad.cnn`")


def test_usage_errors_exit_2(work, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "tiny.cnn", "--data", "data.npz", "--epochs", "0"])
    assert exit_.value.code == 2
    assert "argument --epochs: must be at least 1, got 0" in capsys.readouterr().err


def test_a_kernel_refusing_its_input_is_an_error_line(work, capsys):
    # batch normalisation over one sample has no variance to estimate
    (work / "bn.cnn").write_text("network bn\ninput x: [1, 4, 4]\n"
                                 "output y = x -> flatten -> dense(3) -> batchnorm\n")
    x, y = quadrants(3)
    np.savez(work / "one.npz", x=x[:1], y=y[:1], x_test=x[1:], y_test=y[1:])
    status, _, err = run(capsys, "bn.cnn", "--data", "one.npz")
    assert status == 1
    # the refusal names the layer and where the file defines it
    assert err.startswith("cnnc: error: training failed at epoch 1, step 1: bn.cnn:3:40: "
                          "layer `y.batchnorm1` (batchnorm): "
                          "batchnorm: training needs more than one value per channel")


def test_let_changes_the_network_trained(work, capsys):
    (work / "wide.cnn").write_text(TINY.replace("network tiny", "network tiny\nlet width = 4")
                                   .replace("conv(4,", "conv(width,"))
    status, _, err = run(capsys, "wide.cnn", "--data", "data.npz", "--epochs", "1",
                         "--let", "width=6", "-o", "w.npz")
    assert status == 0, err
    assert np.load(work / "w.npz")["y.conv1.weight"].shape == (6, 1, 3, 3)
    # a resumed run with another width does not fit the checkpoint
    status, _, err = run(capsys, "wide.cnn", "--data", "data.npz", "--epochs", "2",
                         "--resume", "w.ckpt.npz")
    assert status == 2 and "does not fit network tiny" in err


@pytest.mark.parametrize("argv, words", [
    (["--workers", "2"], "--workers applies with --ray"),
    (["--address", "auto"], "--address applies with --ray"),
    (["--crop-padding", "2"], "--crop-padding applies to an image folder; --data data.npz is "
     "not a folder"),
])
def test_flags_that_need_another_flag(work, capsys, argv, words):
    status, _, err = run(capsys, "tiny.cnn", "--data", "data.npz", *argv)
    assert status == 2 and words in err
