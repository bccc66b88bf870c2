"""A new user's hard inputs (issue 15), answered by cnnc with one `cnnc: error:` line, the
documented exit status, no traceback, no warning with an internal path, and nothing lost:

- models too big to build (class 2): refused before anything is allocated, naming the
  largest layer, the size and the memory available;
- weight, data and checkpoint files (class 3): every kind refused in cnnc's voice, naming
  the file, the member and the value, before the data is read or inflated;
- lost work (class 4): a checkpoint with trained epochs is not replaced without --force,
  a killed run's hidden temporaries are removed by the next run, a full disk names the file;
- small surprises (class 7): `-o -` writes to standard output, `export` says it exports
  random weights, digits of other scripts are not numbers;
- CI (class 10): PyTorch for the oracle tests comes from the local CPU wheel only.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import cnnc
from cnnc.cli import main
from cnnc.runtime import files

ROOT = Path(__file__).resolve().parents[2]
CNNC = str(Path(sys.executable).with_name("cnnc"))

TINY = """\
network tiny
input x: [1, 4, 4]
output y = x -> conv(4, 3, pad=1) -> relu -> maxpool(2) -> flatten -> dense(3)
"""
PAIR = """\
network pair
input a: [2, 5, 5]
output feats = a -> global_avgpool -> flatten
output probs = a -> flatten -> dense(3) -> softmax
"""
# a forgotten pool before dense(4096) on a 224x224 map: 13 billion parameters
BIG = """\
network big
input image: [3, 224, 224]
output y = image -> conv(64, 3, pad=1) -> relu -> flatten -> dense(4096) -> relu -> dense(10)
"""
# a huge input: exabytes of activations, a few hundred bytes of parameters
HUGE = """\
network huge
input image: [3, 100000000, 100000000]
output y = image -> conv(4, 3, pad=1) -> relu -> global_avgpool -> flatten -> dense(10)
"""
GIB = 1 << 30


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A folder, as the cwd, with tiny.cnn, data.npz (48 training and 12 test samples),
    x.npy (one input of tiny) and big.cnn."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.cnn").write_text(TINY)
    (tmp_path / "big.cnn").write_text(BIG)
    (tmp_path / "huge.cnn").write_text(HUGE)
    (tmp_path / "pair.cnn").write_text(PAIR)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    x = rng.normal(0, 0.3, size=(60, 1, 4, 4))
    for i, label in enumerate(y):
        r, c = divmod(int(label), 2)
        x[i, 0, 2 * r:2 * r + 2, 2 * c:2 * c + 2] += 2.0
    np.savez(tmp_path / "data.npz", x=x[:48], y=y[:48], x_test=x[48:], y_test=y[48:])
    np.save(tmp_path / "x.npy", x[:2])
    return tmp_path


def cli(capsys, *argv):
    """``(status, stdout, stderr)`` of ``cnnc ARGV`` in-process; any warning is an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Warning:" not in err
    return status, out, err


def listing(folder: Path) -> dict:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def refused(capsys, folder, *argv, status=2) -> str:
    """Run ``cnnc ARGV``; assert it exits ``status`` with one error line and changes no
    file; return that line's message."""
    before = listing(folder)
    got, out, err = cli(capsys, *argv)
    assert got == status, err
    assert out == ""
    assert err.startswith("cnnc: error: ") and err.count("\n") == 1, err
    assert listing(folder) == before
    return err[len("cnnc: error: "):-1]


# ---- class 2: models too big to build -----------------------------------------------------------


@pytest.fixture
def one_gib(monkeypatch):
    monkeypatch.setattr(files, "available_memory", lambda: GIB)


LARGEST = ("the largest layer is `y.dense1` (dense at big.cnn:3:62): 49.0 GiB of "
           "parameters")


def test_run_refuses_a_model_too_big(work, capsys, one_gib):
    assert refused(capsys, work, "run", "big.cnn", "-i", _image(work, 2), "-o", "y.npy") == (
        "running network big on a batch of 2 in float32 needs about 49.0 GiB (49.0 GiB of "
        "parameters, 24.5 MiB of activations at the memory plan's peak), more than the 1.0 "
        f"GiB of memory available; {LARGEST} and 32.0 KiB of output for a batch of 2")


def test_run_refuses_a_batch_too_big(work, capsys, monkeypatch):
    (work / "wide.cnn").write_text("network wide\ninput image: [3, 224, 224]\n"
                                   "output y = image -> conv(64, 3, pad=1) -> relu -> "
                                   "global_avgpool -> flatten\n")
    monkeypatch.setattr(files, "available_memory", lambda: 64 << 20)
    assert refused(capsys, work, "run", "wide.cnn", "-i", _image(work, 8), "-o", "y.npy") == (
        "running network wide on a batch of 8 in float32 needs about 98.0 MiB (7.0 KiB of "
        "parameters, 98.0 MiB of activations at the memory plan's peak), more than the 64.0 "
        "MiB of memory available; the largest layer is `y.conv1` (conv2d at wide.cnn:3:21): "
        "7.0 KiB of parameters and 98.0 MiB of output for a batch of 8")
    # a smaller batch fits
    assert cli(capsys, "run", "wide.cnn", "-i", _image(work, 2), "-o", "y.npy", "-q")[0] == 0


def test_export_refuses_a_model_too_big(work, capsys, one_gib):
    pytest.importorskip("onnx")
    assert refused(capsys, work, "export", "big.cnn", "-o", "big.onnx") == (
        "exporting network big in float32 needs about 196 GiB (49.0 GiB of parameters, 147 "
        "GiB of copies in the ONNX graph), more than the 1.0 GiB of memory available; "
        f"{LARGEST}")


def test_train_refuses_a_model_too_big_before_reading_the_data(work, capsys, one_gib):
    # the data does not even fit the model: the memory is refused first, before reading it
    assert refused(capsys, work, "train", "big.cnn", "--data", "data.npz") == (
        "training network big in float32 needs about 197 GiB (49.0 GiB of parameters, 49.0 "
        "GiB of gradients, 98.0 GiB of optimizer state, 902 MiB of activations for a batch "
        f"of 32), more than the 1.0 GiB of memory available; {LARGEST} and 512 KiB of "
        "output for a batch of 32")


def test_train_counts_sgd_without_momentum_as_no_state(work, capsys, one_gib):
    message = refused(capsys, work, "train", "big.cnn", "--data", "data.npz", "--optimizer",
                      "sgd", "--momentum", "0", "--batch", "4", "--dtype", "float64")
    assert message.startswith("training network big in float64 needs about 196 GiB (98.0 GiB "
                              "of parameters, 98.0 GiB of gradients, 213 MiB of activations "
                              "for a batch of 4), ")


def test_summary_train_answers_and_warns(work, capsys, one_gib, monkeypatch):
    from cnnc.runtime.model import Model

    monkeypatch.setattr(Model, "forward", lambda *a, **k: pytest.fail("the network ran"))
    status, out, err = cli(capsys, "summary", "big.cnn", "--train")
    assert status == 0
    assert "Training keeps:    15.91 MiB per sample for the backward pass" in out
    assert err == (
        "cnnc: warning: training network big on one sample in float32 needs about 196 GiB "
        "(49.0 GiB of parameters, 147 GiB of gradients and Adam's state, 28.2 MiB of "
        "activations), more than the 1.0 GiB of memory available; "
        f"{LARGEST} and 16.0 KiB of output for one sample\n")


def test_exabytes_are_refused_on_any_machine(work, capsys):
    message = refused(capsys, work, "train", "huge.cnn", "--data", "data.npz")
    assert message.startswith("training network huge in float32 needs about 13.3 EiB (648 "
                              "bytes of parameters, 648 bytes of gradients, 1.3 KiB of "
                              "optimizer state, 13.3 EiB of activations for a batch of 32), "
                              "more than the ")
    assert message.endswith("the largest layer is `y.conv1` (conv2d at huge.cnn:3:21): 448 "
                            "bytes of parameters and 4.4 EiB of output for a batch of 32")
    status, out, err = cli(capsys, "summary", "huge.cnn", "--train", "--format", "json")
    assert status == 0 and json.loads(out)["train_saved_bytes"] > 10 ** 17
    assert err.startswith("cnnc: warning: training network huge on one sample")


def test_a_model_from_python_is_refused_too(work):
    from cnnc.runtime.model import TooLargeError

    with pytest.raises(TooLargeError) as err:
        cnnc.compile("network vast\ninput x: [1000000000]\n"
                     "output y = x -> dense(1000000000)\n").build(backend="numpy")
    assert isinstance(err.value, MemoryError)
    assert "3.5 EiB for its parameters" in str(err.value)


def _image(folder: Path, n: int) -> Path:
    path = folder / f"image{n}.npy"
    np.save(path, np.zeros((n, 3, 224, 224), np.float32))
    return path


# ---- class 3: weight, data and checkpoint files -------------------------------------------------


def _npy(shape, descr="<f4", data=b"") -> bytes:
    import struct

    text = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode() + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data


def _zip(path: Path, members: dict) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _weights(folder: Path, change) -> Path:
    state = cnnc.compile(TINY).build(backend="numpy").state()
    change(state)
    np.savez(folder / "w.npz", **state)
    return folder / "w.npz"


@pytest.mark.parametrize("change, message", [
    (lambda w: w["y.dense1.bias"].__setitem__(1, np.nan),
     "weight file w.npz: `y.dense1.bias` holds 1 NaN value (the first at [1], nan); cnnc "
     "refuses weights that are not finite in float32"),
    (lambda w: w["y.conv1.weight"].__setitem__((0, 0), np.inf),
     "weight file w.npz: `y.conv1.weight` holds 9 infinite values (the first at [0, 0, 0, 0], "
     "inf); cnnc refuses weights that are not finite in float32"),
    (lambda w: w.__setitem__("y.dense1.bias", np.zeros(3, np.complex64)),
     "cannot read weight file w.npz: member `y.dense1.bias` has dtype complex64 (complex "
     "numbers); cnnc reads integers and floating-point numbers here"),
    (lambda w: w.__setitem__("y.dense1.bias", np.array(["a", "b", "c"])),
     "cannot read weight file w.npz: member `y.dense1.bias` has dtype <U1 (text); cnnc reads "
     "integers and floating-point numbers here"),
    (lambda w: w.__setitem__("y.dense1.bias", np.zeros(3, [("a", "<f4")])),
     "cannot read weight file w.npz: member `y.dense1.bias` has dtype [('a', '<f4')] "
     "(structured records); cnnc reads integers and floating-point numbers here"),
])
@pytest.mark.parametrize("command", ["run", "export"])
def test_weight_files(work, capsys, change, message, command):
    if command == "export":
        pytest.importorskip("onnx")
    _weights(work, change)
    argv = (["run", "tiny.cnn", "-i", "x.npy", "-o", "y.npy"] if command == "run" else
            ["export", "tiny.cnn", "-o", "t.onnx"])
    assert refused(capsys, work, *argv, "--weights", "w.npz") == message


@pytest.mark.parametrize("members, message", [
    ({"y.conv1.weight.npy": _npy((10 ** 14,), data=bytes(16))},
     "member `y.conv1.weight` declares [100000000000000] float32 (364 TiB), but holds only 16 "
     "bytes of data"),
    ({"readme.txt": b"hello"},
     "member `readme.txt` is not an array (an .npz holds only .npy members)"),
    ({"y.conv1.weight.npy": _npy((1,), "|O", b"\x80\x04N.")},
     "member `y.conv1.weight` holds Python objects (a pickle); cnnc never reads pickles"),
])
def test_weight_files_refused_by_their_headers(work, capsys, members, message):
    _zip(work / "w.npz", members)
    assert refused(capsys, work, "run", "tiny.cnn", "-i", "x.npy", "-o", "y.npy",
                   "--weights", "w.npz") == f"cannot read weight file w.npz: {message}"


def test_an_input_bomb_is_refused_before_it_inflates(work, capsys, monkeypatch):
    import zipfile

    with zipfile.ZipFile(work / "xs.npz", "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("x.npy", "w", force_zip64=True) as member:
            member.write(_npy((1 << 16, 1, 4, 4), "<f8"))
            member.write(bytes(8 << 20))
    monkeypatch.setattr(files, "available_memory", lambda: 1 << 20)
    assert refused(capsys, work, "run", "tiny.cnn", "-i", "xs.npz", "-o", "y.npy") == (
        "cannot read input file xs.npz: its arrays take 8.0 MiB, more than the 1.0 MiB of "
        "memory available; the largest, member `x`, declares [65536, 1, 4, 4] float64 (8.0 "
        "MiB)")


def _data(folder: Path, **arrays) -> Path:
    np.savez(folder / "d.npz", **arrays)
    return folder / "d.npz"


X6 = np.zeros((6, 1, 4, 4))


@pytest.mark.parametrize("arrays, message", [
    (dict(x=X6[:0], y=np.zeros(0, int)),
     "d.npz: `x` holds no samples (shape [0, 1, 4, 4]); a data set needs at least one"),
    (dict(x=X6, y=np.array([0, 1, 2, 0, 1, 2 ** 64 - 1], np.uint64)),
     "d.npz: `y` holds 18446744073709551615 at y[5] (dtype uint64), too large for a class "
     "label"),
    (dict(x=X6, y=np.array([0, 1, 2, 0, 1, 1e300])),
     "d.npz: `y` must hold integer class labels; y[5] is 1e+300 (dtype float64)"),
    (dict(x=X6.astype(complex), y=np.arange(6) % 3),
     "d.npz: `x` must hold numbers, got dtype complex128 (complex numbers)"),
    (dict(x=X6 > 0, y=np.arange(6) % 3),
     "d.npz: `x` must hold numbers, got dtype bool (booleans)"),
    (dict(x=X6, y=np.arange(6) % 3 > 0),
     "d.npz: `y` must hold integer class labels, got dtype bool"),
    (dict(x=np.full((6, 1, 4, 4), 1e300), y=np.arange(6) % 3, x_test=X6[:3],
          y_test=np.arange(3)),
     "d.npz: `x` holds 96 values too large for float32 (the first at [0, 0, 0, 0], 1e+300); "
     "cnnc refuses values that are not finite in float32"),
    (dict(x=X6[0, 0, 0], y=np.arange(4) % 3),
     "d.npz: `x` must be [N, C, H, W] samples, got shape [4]"),
])
def test_data_files(work, capsys, arrays, message):
    _data(work, **arrays)
    assert refused(capsys, work, "train", "tiny.cnn", "--data", "d.npz") == message


def test_a_data_file_with_a_member_that_is_no_array(work, capsys):
    _zip(work / "d.npz", {"notes.txt": b"hello"})
    assert refused(capsys, work, "train", "tiny.cnn", "--data", "d.npz") == (
        "cannot read data file d.npz: member `notes.txt` is not an array (an .npz holds only "
        ".npy members)")


@pytest.fixture
def checkpoint(work, capsys):
    """``checkpoint(change) -> path``: tiny.ckpt.npz after one epoch, its meta (a dict)
    and arrays changed by ``change(meta, arrays)``, saved as bad.npz."""
    assert cli(capsys, "train", "tiny.cnn", "--data", "data.npz", "--epochs", "1")[0] == 0

    def make(change):
        with np.load(work / "tiny.ckpt.npz") as f:
            arrays = {k: f[k] for k in f.files}
        meta = json.loads(str(arrays["meta"]))
        meta = change(meta, arrays) or meta
        arrays["meta"] = np.array(json.dumps(meta))
        np.savez(work / "bad.npz", **arrays)
        return work / "bad.npz"

    return make


def _set(path, value):
    def change(meta, arrays):
        d = meta
        for key in path[:-1]:
            d = d[key]
        d[path[-1]] = value

    return change


@pytest.mark.parametrize("change, message", [
    (_set(["epoch"], -5), "member `meta`: epoch is -5; expected a whole number >= 0"),
    (_set(["epoch"], 1.5), "member `meta`: epoch is 1.5; expected a whole number >= 0"),
    (_set(["step"], -1), "member `meta`: step is -1; expected a whole number >= 0"),
    (_set(["epoch"], 3), "member `meta`: epoch is 3, but the history holds 1 epochs"),
    (_set(["batch_size"], 0), "member `meta`: batch_size is 0; expected a whole number >= 1"),
    (_set(["seed"], True), "member `meta`: seed is true; expected a whole number >= 0"),
    (_set(["schedule", "base_lr"], float("nan")),
     "member `meta`: schedule.base_lr is NaN; expected a finite number >= 0"),
    (_set(["optimizer", "hyper", "lr"], -0.5),
     "member `meta`: optimizer.hyper.lr is -0.5; expected a finite number >= 0"),
    (_set(["optimizer", "kind"], "lion"),
     "member `meta`: optimizer.kind is 'lion'; expected one of 'sgd', 'adam', 'adamw'"),
    (_set(["optimizer", "counts", "y.conv1.bias"], -2),
     "member `meta`: optimizer.counts.y.conv1.bias is -2; expected a whole number >= 0"),
    (_set(["label_smoothing"], 1.0),
     "member `meta`: label_smoothing is 1.0; expected a finite number >= 0 and < 1"),
    (_set(["elapsed"], float("inf")),
     "member `meta`: elapsed is Infinity; expected a finite number >= 0"),
    (_set(["history", 0, "train_accuracy"], 7),
     "member `meta`: history[0].train_accuracy is 7; expected a finite number >= 0 and <= 1"),
    (_set(["partial"], None), "member `meta`: partial is null; expected an object"),
    (lambda meta, arrays: [1, 2], "member `meta` is [1, 2]; expected an object"),
    (lambda meta, arrays: arrays["model/y.dense1.bias"].__setitem__(0, np.nan),
     "`model/y.dense1.bias` holds 1 NaN value (the first at [0], nan); cnnc refuses weights "
     "that are not finite in float32"),
    (lambda meta, arrays: arrays.__setitem__("optim/exp_avg/y.dense1.bias",
                                             np.full(3, np.inf)),
     "`optim/exp_avg/y.dense1.bias` holds 3 infinite values (the first at [0], inf); cnnc "
     "refuses optimizer state that are not finite in float32"),
])
def test_checkpoints_with_impossible_values(work, capsys, checkpoint, change, message):
    checkpoint(change)
    got = refused(capsys, work, "train", "tiny.cnn", "--data", "data.npz", "--epochs", "3",
                  "--resume", "bad.npz", "-o", "w2.npz")
    assert got == f"checkpoint bad.npz: {message}"


def test_a_checkpoint_with_an_impossible_generator_state(work, capsys, checkpoint):
    checkpoint(_set(["shuffle_rng", "uinteger"], -1))
    message = refused(capsys, work, "train", "tiny.cnn", "--data", "data.npz", "--epochs",
                      "3", "--resume", "bad.npz", "-o", "w2.npz")
    assert message.startswith("checkpoint bad.npz: member `meta`: shuffle_rng is not the state "
                              "of a NumPy generator (OverflowError: ")


def test_a_checkpoint_beyond_its_epoch(work, capsys, checkpoint):
    checkpoint(_set(["step"], 99))
    assert refused(capsys, work, "train", "tiny.cnn", "--data", "data.npz", "--epochs", "3",
                   "--resume", "bad.npz", "-o", "w2.npz") == (
        "checkpoint bad.npz is at step 99 of epoch 2, but an epoch of 48 samples in batches "
        "of 32 has 2 steps")


def test_a_checkpoint_of_another_network_is_refused_by_its_headers(work, capsys, checkpoint,
                                                                  monkeypatch):
    checkpoint(lambda meta, arrays: arrays.__setitem__("model/y.dense1.weight",
                                                       np.zeros((3, 5))))
    monkeypatch.setattr(files, "_read_data", _only_text)
    before = listing(work)
    status, out, err = cli(capsys, "train", "tiny.cnn", "--data", "data.npz", "--epochs",
                           "3", "--resume", "bad.npz", "-o", "w2.npz")
    assert (status, out) == (2, "")
    assert err == ("cnnc: error: checkpoint bad.npz does not fit network tiny:\n"
                   "  y.dense1.weight has shape [3, 5], expected [3, 16]\n")
    assert listing(work) == before


_real_read_data = files._read_data


def _only_text(fp, member):
    """`files._read_data` for the metadata only: no array of numbers is read."""
    assert member.dtype.kind == "U", f"{member.key} was read"
    return _real_read_data(fp, member)


# ---- class 4: lost work -------------------------------------------------------------------------


def test_a_checkpoint_with_trained_epochs_is_not_replaced(work, capsys):
    assert cli(capsys, "train", "tiny.cnn", "--data", "data.npz", "--epochs", "2")[0] == 0
    assert refused(capsys, work, "train", "tiny.cnn", "--data", "data.npz") == (
        "checkpoint tiny.ckpt.npz holds 2 trained epochs of network tiny; continue it with "
        "--resume tiny.ckpt.npz, or give --force to start afresh and replace it")
    # nor by a resumed run that writes to another checkpoint which holds epochs
    assert cli(capsys, "train", "tiny.cnn", "--data", "data.npz", "--epochs", "1",
               "-o", "b.npz")[0] == 0
    assert refused(capsys, work, "train", "tiny.cnn", "--data", "data.npz", "--epochs", "3",
                   "--resume", "tiny.ckpt.npz", "--checkpoint", "b.ckpt.npz") == (
        "checkpoint b.ckpt.npz holds 1 trained epoch of network tiny; continue it with "
        "--resume b.ckpt.npz, or give --force to start afresh and replace it")
    # --force says so
    status, out, _ = cli(capsys, "train", "tiny.cnn", "--data", "data.npz", "--epochs", "1",
                         "--force")
    assert status == 0 and out.splitlines()[-1].startswith("trained tiny for 1 epoch in")
    meta = json.loads(str(np.load(work / "tiny.ckpt.npz")["meta"]))
    assert meta["epoch"] == 1


def test_a_file_that_is_no_checkpoint_is_not_replaced(work, capsys):
    (work / "tiny.ckpt.npz").write_text("my notes")
    assert refused(capsys, work, "train", "tiny.cnn", "--data", "data.npz") == (
        "the checkpoint path tiny.ckpt.npz holds a file that is not a readable cnnc "
        "checkpoint (cannot read checkpoint tiny.ckpt.npz: not an .npz file); choose another "
        "--checkpoint, or give --force to replace it")


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _stale(folder: Path, *outputs: str) -> list:
    """A killed run's temporaries of each of ``outputs``, 1 MB each."""
    pid = _dead_pid()
    paths = [folder / f".cnnc-{name}.{pid}.k1ll3d_0.tmp" for name in outputs]
    for path in paths:
        path.write_bytes(bytes(1 << 20))
    return paths


def test_a_killed_runs_temporaries_are_removed_by_the_next_run(work, capsys):
    pytest.importorskip("onnx")
    stale = _stale(work, "tiny.weights.npz", "tiny.ckpt.npz", "y.npy", "t.onnx")
    keep = work / ".cnnc-other.npz.1.k1ll3d_0.tmp"
    keep.write_bytes(b"not ours")
    assert cli(capsys, "train", "tiny.cnn", "--data", "data.npz", "--epochs", "1")[0] == 0
    assert not stale[0].exists() and not stale[1].exists()
    assert stale[2].exists()  # another command's output
    # the next run removes them even when it then fails
    assert cli(capsys, "run", "tiny.cnn", "-i", "x.npy", "-o", "y.npy", "--weights",
               "missing.npz")[0] == 2
    assert not stale[2].exists()
    assert cli(capsys, "export", "tiny.cnn", "-o", "t.onnx", "-q")[0] == 0
    assert not stale[3].exists()
    assert keep.exists()
    assert not [p for p in work.iterdir() if p.name.startswith(".cnnc-") and p != keep]


def _full_disk_after(monkeypatch, writes: int):
    """Let ``writes`` atomic writes through, then fail every one with ENOSPC."""
    real = files.os.fsync
    count = {"n": 0}

    def fsync(fd):
        count["n"] += 1
        if count["n"] > writes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)


def test_a_full_disk_names_the_checkpoint(work, capsys, monkeypatch):
    _full_disk_after(monkeypatch, 0)
    assert refused(capsys, work, "train", "tiny.cnn", "--data", "data.npz", "--epochs", "3") \
        == ("cannot write checkpoint tiny.ckpt.npz: No space left on device; training stopped "
            "after epoch 1 (nothing was saved)")


def test_a_full_disk_keeps_the_last_good_checkpoint(work, capsys, monkeypatch):
    assert cli(capsys, "train", "tiny.cnn", "--data", "data.npz", "--epochs", "1",
               "--checkpoint", "first.npz")[0] == 0
    good = (work / "first.npz").read_bytes()
    _full_disk_after(monkeypatch, 1)
    status, out, err = cli(capsys, "train", "tiny.cnn", "--data", "data.npz", "--epochs",
                           "3", "--checkpoint", "c.npz", "-o", "w.npz")
    assert status == 2
    assert err == ("cnnc: error: cannot write checkpoint c.npz: No space left on device; "
                   "training stopped after epoch 2 (c.npz still holds the state after epoch "
                   "1)\n")
    assert json.loads(str(np.load(work / "c.npz")["meta"]))["epoch"] == 1
    assert (work / "first.npz").read_bytes() == good
    assert not (work / "w.npz").exists()
    assert not [p for p in work.iterdir() if p.name.startswith(".cnnc-")]


def test_a_full_disk_names_the_weights(work, capsys, monkeypatch):
    _full_disk_after(monkeypatch, 1)  # the checkpoint of the one epoch, not the weights
    status, _, err = cli(capsys, "train", "tiny.cnn", "--data", "data.npz", "--epochs", "1")
    assert status == 2
    assert err == "cnnc: error: cannot write weights tiny.weights.npz: No space left on device\n"


@pytest.fixture
def tiny_disk(tmp_path):
    """A 4 KiB tmpfs (root on Linux only; skipped elsewhere)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(mount)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_real_full_disk(work, tiny_disk):
    done = subprocess.run([CNNC, "train", "tiny.cnn", "--data", "data.npz", "--checkpoint",
                           str(tiny_disk / "c.npz"), "-o", str(tiny_disk / "w.npz")],
                          capture_output=True, text=True, timeout=120, cwd=work)
    assert done.returncode == 2
    assert done.stderr == (f"cnnc: error: cannot write checkpoint {tiny_disk / 'c.npz'}: No "
                           "space left on device; training stopped after epoch 1 (nothing was "
                           "saved)\n")
    assert os.listdir(tiny_disk) == []


# ---- class 7: small surprises -------------------------------------------------------------------


def test_run_writes_to_standard_output(work):
    done = subprocess.run([CNNC, "run", "tiny.cnn", "-i", "x.npy", "-o", "-"],
                          capture_output=True, timeout=120, cwd=work)
    assert done.returncode == 0, done.stderr
    import io

    got = np.load(io.BytesIO(done.stdout), allow_pickle=False)
    want = cnnc.compile(TINY).build(backend="numpy")(np.load(work / "x.npy"))
    # equal up to float32 rounding: each process runs the thread count it finds free, and a
    # batch split among threads sums its products in another order
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert done.stderr.decode() == ("cnnc: note: no --weights given; running with the default "
                                    "initialisation (seed 0)\ncnnc: wrote standard output: y "
                                    "[2, 3] float32 on numpy\n")
    assert not (work / "-").exists()


@pytest.mark.parametrize("argv, tty, message", [
    (["tiny.cnn"], True, "-o - writes the output's .npy bytes to standard output, which is a "
                         "terminal; redirect it (-o - > FILE) or pipe it, or give -o a file "
                         "name"),
    (["tiny.cnn", "--format", "json"], False,
     "-o - writes the output's .npy bytes to standard output, where --format json writes its "
     "report; give -o a file name, or leave out --format json"),
    (["pair.cnn"], False, "the network has 2 outputs (feats, probs); -o - writes one .npy to "
                          "standard output, so name an .npz file instead"),
])
def test_run_to_standard_output_refusals(work, capsys, monkeypatch, argv, tty, message):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)
    np.save(work / "a.npy", np.zeros((1, 2, 5, 5)))
    inputs = "a.npy" if argv[0] == "pair.cnn" else "x.npy"
    assert refused(capsys, work, "run", *argv, "-i", inputs, "-o", "-") == message


def test_export_writes_to_standard_output_and_says_the_weights_are_random(work):
    onnx = pytest.importorskip("onnx")
    done = subprocess.run([CNNC, "export", "tiny.cnn", "-o", "-"], capture_output=True,
                          timeout=120, cwd=work)
    assert done.returncode == 0, done.stderr
    proto = onnx.load_from_string(done.stdout)
    assert [i.name for i in proto.graph.input] == ["x"]
    assert done.stderr.decode().splitlines() == [
        "cnnc: note: no --weights given; exporting the default initialisation (seed 0), "
        "random weights",
        "cnnc: wrote standard output: network tiny, opset 17, 6 nodes, 4 initializers",
    ]
    assert not (work / "-").exists()


def test_export_to_a_file_says_the_weights_are_random(work, capsys):
    pytest.importorskip("onnx")
    status, out, err = cli(capsys, "export", "tiny.cnn", "-o", "t.onnx")
    assert status == 0 and out == ""
    assert err.splitlines()[0] == ("cnnc: note: no --weights given; exporting the default "
                                   "initialisation (seed 0), random weights")
    np.savez(work / "w.npz", **cnnc.compile(TINY).build(backend="numpy").state())
    status, _, err = cli(capsys, "export", "tiny.cnn", "-o", "t.onnx", "--weights", "w.npz")
    assert status == 0 and "note" not in err
    for quiet in (["-q"], ["--format", "json"]):
        status, _, err = cli(capsys, "export", "tiny.cnn", "-o", "t.onnx", *quiet)
        assert status == 0 and err == ""


def test_train_refuses_standard_output(work, capsys):
    assert refused(capsys, work, "train", "tiny.cnn", "--data", "data.npz", "-o", "-") == (
        "-o -: training writes its weights and checkpoint to files; give a file name")


# digits of other scripts (Arabic-Indic, Devanagari, full-width), underscores, spaces
NOT_ASCII = ["\u0663\u0662", "\u0969\u0968", "\uff13\uff12", "3_2", " 32", "32 "]


@pytest.mark.parametrize("value", NOT_ASCII)
@pytest.mark.parametrize("command", ["check", "summary", "run", "export", "train"])
def test_sizes_in_other_digits_are_refused(work, capsys, command, value):
    extra = {"run": ["-i", "x.npy", "-o", "y.npy"], "export": ["-o", "t.onnx"],
             "train": ["--data", "data.npz"]}.get(command, [])
    before = listing(work)
    with pytest.raises(SystemExit) as done:
        main([command, "tiny.cnn", *extra, "--size", f"H={value}"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith(f"cnnc: error: argument --size: size H must be an integer in the "
                        f"digits 0-9, got {value!r}\n")
    assert listing(work) == before


@pytest.mark.parametrize("flag, value, message", [
    ("--epochs", "\u0663", "expected a whole number in the digits 0-9, got '\u0663'"),
    ("--batch", "1_6", "expected a whole number in the digits 0-9, got '1_6'"),
    ("--seed", "+1", "expected a whole number in the digits 0-9, got '+1'"),
    ("--lr", "\u0661", "expected a number such as 0.05 or 1e-3, got '\u0661'"),
    ("--lr", "1_0", "expected a number such as 0.05 or 1e-3, got '1_0'"),
    ("--lr", "nan", "expected a number such as 0.05 or 1e-3, got 'nan'"),
    ("--momentum", "infinity", "expected a number such as 0.05 or 1e-3, got 'infinity'"),
])
def test_train_numbers_in_other_digits_are_refused(work, capsys, flag, value, message):
    with pytest.raises(SystemExit) as done:
        main(["train", "tiny.cnn", "--data", "data.npz", flag, value])
    assert done.value.code == 2
    assert capsys.readouterr().err.endswith(f"cnnc: error: argument {flag}: {message}\n")


def test_export_opset_in_other_digits_is_refused(work, capsys):
    with pytest.raises(SystemExit) as done:
        main(["export", "tiny.cnn", "-o", "t.onnx", "--opset", "\u0661\u0667"])
    assert done.value.code == 2
    assert capsys.readouterr().err.endswith(
        "cnnc: error: argument --opset: expected a whole number in the digits 0-9, got "
        "'\u0661\u0667'\n")


def test_library_warnings_are_said_in_cnncs_voice(work, capsys, monkeypatch):
    from cnnc.commands import check

    def warn(args):
        warnings.warn("overflow encountered in cast", RuntimeWarning)
        return 0

    monkeypatch.setattr(check, "main", warn)
    assert main(["check", "tiny.cnn"]) == 0
    assert capsys.readouterr().err == "cnnc: warning: overflow encountered in cast\n"


# ---- class 10: CI runs the oracle tests where it can ------------------------------------------


def test_ci_installs_only_the_local_cpu_torch_wheel():
    script = (ROOT / ".ci" / "run").read_text()
    assert subprocess.run(["bash", "-n", str(ROOT / ".ci" / "run")]).returncode == 0
    installs = [line for line in script.splitlines()
                if re.search(r"pip install", line) and "torch" in line
                and not line.lstrip().startswith("#")]
    assert installs, "CI does not install torch"
    for line in installs:
        # a pinned version read off the local +cpu wheel, never a plain `torch`
        assert '"torch==$version"' in line and "--find-links /opt/wheels" in line, line
    assert 'wheels=(/opt/wheels/torch-*+cpu-"$tag"-*.whl)' in script
    assert "if ((${#wheels[@]})); then" in script
    assert "torch.version.cuda" in script  # and checks that what it got is a CPU build


def test_a_weight_file_of_an_unknown_zip_version(work, capsys):
    # found by the weight-file fuzz test: zipfile raises NotImplementedError for a member
    # that needs zip version 6.4
    model = cnnc.compile(str(work / "tiny.cnn")).build(seed=1)
    model.save(work / "w.npz")
    data = bytearray((work / "w.npz").read_bytes())
    at = data.rfind(b"PK\x01\x02")
    data[at + 6:at + 8] = b"\x40\x00"
    (work / "w.npz").write_bytes(bytes(data))
    message = refused(capsys, work, "run", "tiny.cnn", "--input", "x.npy", "--weights",
                      "w.npz", "-o", "y.npy")
    assert "w.npz" in message
