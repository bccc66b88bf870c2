"""`cnnc run` and `cnnc export` end to end, in-process through `cnnc.cli.main`.

Every failure is one `cnnc: error: ...` line on stderr (exit 2 for files and arguments, 1 for
a model with errors), never a traceback, and leaves no output file and no temporary file.
"""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cnnc
from cnnc.cli import build_parser, command_modules, main
from cnnc.runtime.model import Model

ROOT = Path(__file__).resolve().parents[2]

SMALL = """\
network small
input image: [3, 8, 8]
output logits = image -> conv(4, 3, pad=1) -> relu -> maxpool(2) -> flatten -> dense(5)
"""

# two inputs, two outputs
PAIR = """\
network pair
input a: [2, 5, 5]
input b: [3, 5, 5]
joined = concat(a, b) -> conv(4, 3)
output feats = joined -> global_avgpool -> flatten
output probs = joined -> flatten -> dense(3) -> softmax
"""

# symbolic sizes: H and W come from the array
SYMBOLIC = """\
network sym
input x: [3, H, W]
output y = x -> conv(4, 3, pad=1) -> relu -> maxpool(2) -> global_avgpool -> flatten
"""

# one symbol shared by two inputs
SHARED = """\
network shared
input a: [1, S, S]
input b: [2, S, S]
output y = concat(a, b) -> global_maxpool -> flatten
"""

BROKEN = "input x: [3, 8, 8]\noutput y = x -> conv(4, 30)\n"


@pytest.fixture
def cli(capsys):
    """``cli(*argv) -> (status, stdout, stderr)``; stderr never holds a traceback."""

    def call(*argv):
        status = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return status, out, err

    return call


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def _expected(source, xs, seed=0, sizes=None, dtype="float32"):
    model = Model(cnnc.compile(source, sizes).plan, backend="numpy", seed=seed, dtype=dtype)
    return model(xs)


def _listing(folder: Path) -> list:
    return sorted(os.listdir(folder))


# ---- the subcommands are registered ---------------------------------------------------------

def test_commands_are_registered():
    assert {"check", "summary", "run", "export", "train"} <= set(command_modules())
    assert command_modules()[:5] == ["check", "summary", "run", "export", "train"]
    help_text = build_parser().format_help()
    for name in ("check", "summary", "run", "export", "train"):
        assert name in help_text


HEAVY = ("numpy", "onnx", "onnxruntime", "torch", "ray", "rich", "graphviz", "pygls",
         "lsprotocol", "numba", "PIL", "safetensors", "threadpoolctl", "IPython")


def test_building_the_parser_imports_nothing_heavy():
    code = ("import sys; from cnnc.cli import build_parser; build_parser(); "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("command", ["run", "export"])
def test_help_says_the_default_weights_are_seeded(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "seeded default initialisation (seed 0)" in text


# ---- cnnc run: success ------------------------------------------------------------------------

def test_run_one_input(tmp_path, cli):
    model = _write(tmp_path, "small.cnn", SMALL)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    np.save(tmp_path / "x.npy", x)
    status, out, err = cli("run", model, "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npy",
                           "--backend", "numpy")
    assert status == 0
    assert out == ""
    assert "no --weights given" in err
    assert f"wrote {tmp_path / 'y.npy'}: logits [2, 5] float32 on numpy" in err
    y = np.load(tmp_path / "y.npy")
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, _expected(SMALL, x))
    assert _listing(tmp_path) == ["small.cnn", "x.npy", "y.npy"]


def test_run_quiet_float64_and_integer_input(tmp_path, cli):
    model = _write(tmp_path, "small.cnn", SMALL)
    x = np.random.default_rng(0).integers(-3, 4, (1, 3, 8, 8))
    np.save(tmp_path / "x.npy", x)
    status, out, err = cli("run", model, "-i", tmp_path / "x.npy", "-o", tmp_path / "y.npy",
                           "--dtype", "float64", "--backend", "numpy", "-q")
    assert (status, out, err) == (0, "", "")
    y = np.load(tmp_path / "y.npy")
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, _expected(SMALL, x, dtype="float64"), rtol=1e-12)


def test_run_with_weights(tmp_path, cli):
    model = _write(tmp_path, "small.cnn", SMALL)
    trained = Model(cnnc.compile(SMALL).plan, backend="numpy", seed=7)
    trained.save(tmp_path / "w.npz")
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    status, _, err = cli("run", model, "--input", tmp_path / "x.npy", "--weights",
                         tmp_path / "w.npz", "-o", tmp_path / "y.npy")
    assert status == 0
    assert "no --weights" not in err
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), trained(x))


def test_run_several_inputs_and_outputs(tmp_path, cli):
    model = _write(tmp_path, "pair.cnn", PAIR)
    rng = np.random.default_rng(2)
    xs = {"a": rng.standard_normal((2, 2, 5, 5)), "b": rng.standard_normal((2, 3, 5, 5))}
    np.savez(tmp_path / "xs.npz", **xs)
    status, _, err = cli("run", model, "--input", tmp_path / "xs.npz", "-o", tmp_path / "ys.npz")
    assert status == 0
    assert "feats [2, 4], probs [2, 3]" in err
    want = _expected(PAIR, xs)
    with np.load(tmp_path / "ys.npz") as ys:
        assert sorted(ys.files) == ["feats", "probs"]
        for name in want:
            np.testing.assert_array_equal(ys[name], want[name])


def test_run_one_output_into_an_npz_and_an_output_named_file(tmp_path, cli):
    source = "input x: [4]\noutput file = x -> dense(2)\n"
    model = _write(tmp_path, "m.cnn", source)
    x = np.ones((2, 4))
    np.savez(tmp_path / "x.npz", x=x)  # one input may come as an .npz too
    status, _, _ = cli("run", model, "-i", tmp_path / "x.npz", "-o", tmp_path / "y.npz")
    assert status == 0
    with np.load(tmp_path / "y.npz") as ys:
        assert ys.files == ["file"]
        np.testing.assert_array_equal(ys["file"], _expected(source, x))


def test_run_reads_symbolic_sizes_off_the_input(tmp_path, cli):
    model = _write(tmp_path, "sym.cnn", SYMBOLIC)
    x = np.random.default_rng(3).standard_normal((2, 3, 10, 12))
    np.save(tmp_path / "x.npy", x)
    status, _, _ = cli("run", model, "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    assert status == 0
    want = _expected(SYMBOLIC, x, sizes={"H": 10, "W": 12})
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), want)
    # the same with one size given and the other read off the array
    status, _, _ = cli("run", model, "--input", tmp_path / "x.npy", "--size", "H=10",
                       "-o", tmp_path / "y2.npy")
    assert status == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y2.npy"), want)


def test_run_a_symbol_shared_by_two_inputs(tmp_path, cli):
    model = _write(tmp_path, "shared.cnn", SHARED)
    rng = np.random.default_rng(4)
    xs = {"a": rng.standard_normal((1, 1, 6, 6)), "b": rng.standard_normal((1, 2, 6, 6))}
    np.savez(tmp_path / "xs.npz", **xs)
    status, _, _ = cli("run", model, "-i", tmp_path / "xs.npz", "-o", tmp_path / "y.npy")
    assert status == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"),
                                  _expected(SHARED, xs, sizes={"S": 6}))


def test_run_a_model_from_stdin_with_symbolic_sizes(tmp_path, cli, monkeypatch):
    """The source is read once and checked twice (before and after the sizes are known)."""
    x = np.zeros((1, 3, 6, 6))
    np.save(tmp_path / "x.npy", x)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(SYMBOLIC.encode())))
    status, _, _ = cli("run", "-", "-i", tmp_path / "x.npy", "-o", tmp_path / "y.npy", "-q")
    assert status == 0
    assert np.load(tmp_path / "y.npy").shape == (1, 4)


# ---- cnnc run: errors -------------------------------------------------------------------------

def _run_fails(cli, folder, model, x_path, *more, status=2, output="y.npy"):
    """Run, expect failure with ``status``; return the error text. Nothing new is left in
    the folder: no output, no temporary file."""
    before = _listing(folder)
    got, out, err = cli("run", model, "--input", x_path, "-o", folder / output, *more)
    assert got == status, err
    assert err.startswith("cnnc: error: ") or "error[" in err
    assert _listing(folder) == before
    return err


def test_run_input_file_problems(tmp_path, cli):
    model = _write(tmp_path, "small.cnn", SMALL)
    good = np.zeros((1, 3, 8, 8))
    np.save(tmp_path / "good.npy", good)
    (tmp_path / "garbage.npy").write_bytes(b"hello, world\n")
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "cut.npy").write_bytes((tmp_path / "good.npy").read_bytes()[:150])
    np.save(tmp_path / "text.npy", np.array([[["a"]]]))
    np.save(tmp_path / "objects.npy", np.array([[1, None]], dtype=object), allow_pickle=True)
    np.save(tmp_path / "complex.npy", np.zeros((1, 3, 8, 8), complex))
    np.save(tmp_path / "flat.npy", np.zeros(8))
    np.save(tmp_path / "nobatch.npy", np.zeros((0, 3, 8, 8)))
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3, 8, 9)))
    np.save(tmp_path / "rank.npy", np.zeros((2, 3, 8)))
    cases = {
        "missing.npy": "cannot read input file",
        "garbage.npy": "not a .npy or .npz file",
        "empty.npy": "the file is empty",
        "cut.npy": "the array declares [1, 3, 8, 8] float64 (1.5 KiB), but holds only 22 "
                   "bytes of data",
        "text.npy": "has dtype <U1 (text); cnnc runs on bool, integer or float arrays",
        "objects.npy": "the array holds Python objects (a pickle); cnnc never reads pickles",
        "complex.npy": "has dtype complex128 (complex numbers)",
        "flat.npy": "has shape [8]; it needs a batch axis first",
        "nobatch.npy": "is empty: shape [0, 3, 8, 8]",
        "wrong.npy": "input `image` expects [N, 3, 8, 8], got [2, 3, 8, 9] in",
        "rank.npy": "input `image` expects [N, 3, 8, 8], got [2, 3, 8] in",
    }
    for name, message in cases.items():
        err = _run_fails(cli, tmp_path, model, tmp_path / name)
        assert message in err, (name, err)
        assert name in err


def test_run_npz_problems(tmp_path, cli):
    model = _write(tmp_path, "pair.cnn", PAIR)
    a, b = np.zeros((2, 2, 5, 5)), np.zeros((2, 3, 5, 5))
    np.save(tmp_path / "one.npy", a)
    np.savez(tmp_path / "missing.npz", a=a)
    np.savez(tmp_path / "extra.npz", a=a, b=b, c=a)
    np.savez(tmp_path / "batches.npz", a=a, b=np.zeros((3, 3, 5, 5)))
    np.savez(tmp_path / "good.npz", a=a, b=b)
    good_bytes = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(good_bytes[: len(good_bytes) // 2])
    err = _run_fails(cli, tmp_path, model, tmp_path / "one.npy", output="y.npz")
    assert "network pair has inputs a, b; give them as an .npz file keyed by input name" in err
    err = _run_fails(cli, tmp_path, model, tmp_path / "missing.npz", output="y.npz")
    assert "does not fit the inputs of network pair (a, b): missing b" in err
    err = _run_fails(cli, tmp_path, model, tmp_path / "extra.npz", output="y.npz")
    assert "unexpected c" in err
    err = _run_fails(cli, tmp_path, model, tmp_path / "batches.npz", output="y.npz")
    assert "disagree in batch size: a has 2, b has 3" in err
    err = _run_fails(cli, tmp_path, model, tmp_path / "cut.npz", output="y.npz")
    assert "cut.npz" in err


def test_run_several_outputs_need_an_npz(tmp_path, cli):
    model = _write(tmp_path, "pair.cnn", PAIR)
    np.savez(tmp_path / "xs.npz", a=np.zeros((1, 2, 5, 5)), b=np.zeros((1, 3, 5, 5)))
    err = _run_fails(cli, tmp_path, model, tmp_path / "xs.npz", output="y.npy")
    assert "the network has 2 outputs (feats, probs); -o must name an .npz file" in err


def test_run_symbolic_mismatches(tmp_path, cli):
    model = _write(tmp_path, "sym.cnn", SYMBOLIC)
    np.save(tmp_path / "four.npy", np.zeros((1, 4, 8, 8)))
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 8, 9)))
    np.save(tmp_path / "tiny.npy", np.zeros((1, 3, 1, 1)))
    err = _run_fails(cli, tmp_path, model, tmp_path / "four.npy")
    assert "input `x` expects [N, 3, H, W], got [1, 4, 8, 8] in" in err
    assert "axis 1 is 4, expected 3" in err
    err = _run_fails(cli, tmp_path, model, tmp_path / "x.npy", "--size", "W=10")
    assert "expects [N, 3, H, 10], got [1, 3, 8, 9]" in err
    # H = W = 1 passes the conv but leaves the 2x2 maxpool nothing: the model's error
    err = _run_fails(cli, tmp_path, model, tmp_path / "tiny.npy", status=1)
    assert "error[E301]" in err
    assert "sym.cnn has errors for H=1, W=1 (read off" in err


def test_run_a_symbol_read_twice_must_agree(tmp_path, cli):
    model = _write(tmp_path, "shared.cnn", SHARED)
    np.savez(tmp_path / "xs.npz", a=np.zeros((1, 1, 6, 6)), b=np.zeros((1, 2, 7, 7)))
    err = _run_fails(cli, tmp_path, model, tmp_path / "xs.npz")
    assert "input `b` expects [N, 2, S, S], got [1, 2, 7, 7]" in err
    assert "axis 2 is 7, expected 6, since S = 6 from axis 2 of `a`" in err


def test_run_weight_file_problems(tmp_path, cli):
    model = _write(tmp_path, "small.cnn", SMALL)
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 8, 8)))
    other = Model(cnnc.compile(SMALL.replace("dense(5)", "dense(6)")).plan, backend="numpy")
    state = other.state()
    state["extra.weight"] = np.zeros(2)
    del state["logits.conv1.bias"]
    np.savez(tmp_path / "wrong.npz", **state)
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    x = tmp_path / "x.npy"
    err = _run_fails(cli, tmp_path, model, x, "--weights", tmp_path / "missing.npz")
    assert "cannot read weight file" in err and "missing.npz: No such file or directory" in err
    err = _run_fails(cli, tmp_path, model, x, "--weights", tmp_path / "wrong.npz")
    assert "does not fit network small" in err
    assert "missing logits.conv1.bias [4]" in err
    assert "unexpected extra.weight [2]" in err
    assert "logits.dense1.weight has shape [6, 64], expected [5, 64]" in err
    err = _run_fails(cli, tmp_path, model, x, "--weights", tmp_path / "corrupt.npz")
    assert "corrupt.npz" in err


def test_run_output_problems(tmp_path, cli):
    model = _write(tmp_path, "small.cnn", SMALL)
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 8, 8)))
    (tmp_path / "folder.npy").mkdir()
    err = _run_fails(cli, tmp_path, model, tmp_path / "x.npy", output="nowhere/y.npy")
    assert "cannot write" in err and "does not exist" in err
    err = _run_fails(cli, tmp_path, model, tmp_path / "x.npy", output="folder.npy")
    assert "it is a folder" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_run_into_a_read_only_folder(tmp_path, cli):
    model = _write(tmp_path, "small.cnn", SMALL)
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 8, 8)))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        status, _, err = cli("run", model, "-i", tmp_path / "x.npy", "-o", locked / "y.npy")
    finally:
        locked.chmod(0o755)
    assert status == 2
    assert "cannot write" in err and "Permission denied" in err
    assert os.listdir(locked) == []


def test_run_a_write_that_fails_midway_leaves_nothing(tmp_path, cli, monkeypatch):
    model = _write(tmp_path, "small.cnn", SMALL)
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 8, 8)))
    (tmp_path / "y.npy").write_bytes(b"previous result")

    def half_then_full_disk(f, array, allow_pickle=True):
        f.write(b"\x93NUMPY half an array")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", half_then_full_disk)
    before = _listing(tmp_path)
    status, _, err = cli("run", model, "-i", tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    assert status == 2
    assert f"cannot write {tmp_path / 'y.npy'}: No space left on device" in err
    assert _listing(tmp_path) == before
    assert (tmp_path / "y.npy").read_bytes() == b"previous result"


def test_run_model_problems(tmp_path, cli):
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 8, 8)))
    broken = _write(tmp_path, "broken.cnn", BROKEN)
    err = _run_fails(cli, tmp_path, broken, tmp_path / "x.npy", status=1)
    assert "error[E301]" in err
    assert "broken.cnn has errors; run `cnnc check" in err
    err = _run_fails(cli, tmp_path, tmp_path / "nope.cnn", tmp_path / "x.npy")
    assert "cannot read" in err and "nope.cnn" in err


def test_run_on_cupy_without_cupy(tmp_path, cli):
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed")
    model = _write(tmp_path, "small.cnn", SMALL)
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 8, 8)))
    err = _run_fails(cli, tmp_path, model, tmp_path / "x.npy", "--backend", "cupy")
    assert "needs CuPy" in err


def test_run_usage_errors(tmp_path, cli, capsys):
    model = _write(tmp_path, "small.cnn", SMALL)
    for argv in (["run", model], ["run", model, "-i", "x.npy"],
                 ["run", model, "-i", "x.npy", "-o", "y.npy", "--dtype", "float16"],
                 ["run", model, "-i", "x.npy", "-o", "y.npy", "--size", "H=0"]):
        with pytest.raises(SystemExit) as done:
            main([str(a) for a in argv])
        assert done.value.code == 2
        assert "cnnc: error:" in capsys.readouterr().err


# ---- cnnc export ------------------------------------------------------------------------------

onnx_needed = pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="needs onnx")


@onnx_needed
def test_export_and_run_agree(tmp_path, cli):
    """The exported file, run in ONNX Runtime, gives what `cnnc run` writes."""
    ort = pytest.importorskip("onnxruntime")
    model = _write(tmp_path, "pair.cnn", PAIR)
    status, out, err = cli("export", model, "-o", tmp_path / "pair.onnx")
    assert status == 0 and out == ""
    assert f"wrote {tmp_path / 'pair.onnx'}: network pair, opset 17" in err
    rng = np.random.default_rng(5)
    xs = {"a": rng.standard_normal((3, 2, 5, 5)).astype(np.float32),
          "b": rng.standard_normal((3, 3, 5, 5)).astype(np.float32)}
    np.savez(tmp_path / "xs.npz", **xs)
    assert cli("run", model, "-i", tmp_path / "xs.npz", "-o", tmp_path / "ys.npz")[0] == 0
    session = ort.InferenceSession(str(tmp_path / "pair.onnx"),
                                   providers=["CPUExecutionProvider"])
    theirs = dict(zip([o.name for o in session.get_outputs()], session.run(None, xs)))
    with np.load(tmp_path / "ys.npz") as ours:
        for name in ("feats", "probs"):
            np.testing.assert_allclose(theirs[name], ours[name], rtol=1e-4, atol=1e-6)


@onnx_needed
def test_export_with_weights_opset_and_sizes(tmp_path, cli):
    import onnx

    model = _write(tmp_path, "sym.cnn", SYMBOLIC)
    plan = cnnc.compile(SYMBOLIC, {"H": 16, "W": 12}).plan
    weights = Model(plan, backend="numpy", seed=3)
    weights.save(tmp_path / "w.npz")
    status, _, _ = cli("export", model, "-o", tmp_path / "sym.onnx", "--size", "H=16",
                       "--size", "W=12", "--weights", tmp_path / "w.npz", "--opset", "18", "-q")
    assert status == 0
    proto = onnx.load(str(tmp_path / "sym.onnx"))
    assert [o.version for o in proto.opset_import] == [18]
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 3, 16, 12]
    stored = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    for key, value in weights.state().items():
        np.testing.assert_array_equal(stored[key], value)
    assert _listing(tmp_path) == ["sym.cnn", "sym.onnx", "w.npz"]


def _export_fails(cli, folder, *argv, status=2):
    before = _listing(folder)
    got, _, err = cli("export", *argv)
    assert got == status, err
    assert _listing(folder) == before
    return err


@onnx_needed
def test_export_errors(tmp_path, cli):
    small = _write(tmp_path, "small.cnn", SMALL)
    sym = _write(tmp_path, "sym.cnn", SYMBOLIC)
    broken = _write(tmp_path, "broken.cnn", BROKEN)
    np.savez(tmp_path / "wrong.npz", x=np.zeros(3))
    out = tmp_path / "m.onnx"
    err = _export_fails(cli, tmp_path, sym, "-o", out)
    assert "has symbolic sizes H, W; ONNX export needs them fixed" in err
    assert "--size H=32 --size W=32" in err
    err = _export_fails(cli, tmp_path, small, "-o", out, "--opset", "16")
    assert "opset must be between 17 and" in err
    err = _export_fails(cli, tmp_path, small, "-o", out, "--weights", tmp_path / "nope.npz")
    assert "cannot read weight file" in err
    err = _export_fails(cli, tmp_path, small, "-o", out, "--weights", tmp_path / "wrong.npz")
    assert "does not fit network small" in err and "unexpected x [3]" in err
    err = _export_fails(cli, tmp_path, small, "-o", tmp_path / "no" / "m.onnx")
    assert "cannot write" in err and "No such file or directory" in err
    err = _export_fails(cli, tmp_path, broken, "-o", out, status=1)
    assert "error[E301]" in err


def test_export_without_onnx(tmp_path, cli, monkeypatch):
    small = _write(tmp_path, "small.cnn", SMALL)
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    err = _export_fails(cli, tmp_path, small, "-o", tmp_path / "m.onnx")
    assert "cnnc export needs the onnx package: pip install 'cnnc[onnx]'" in err


def test_export_bad_opset_is_a_usage_error(tmp_path, capsys):
    small = _write(tmp_path, "small.cnn", SMALL)
    with pytest.raises(SystemExit) as done:
        main(["export", str(small), "-o", str(tmp_path / "m.onnx"), "--opset", "latest"])
    assert done.value.code == 2
    assert "--opset: expected a whole number in the digits 0-9, got 'latest'" in \
        capsys.readouterr().err


def test_run_json_report(tmp_path, cli):
    import json

    model = _write(tmp_path, "sym.cnn", SYMBOLIC)
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 6, 8)))
    status, out, err = cli("run", model, "-i", tmp_path / "x.npy", "-o", tmp_path / "y.npy",
                           "--format", "json", "--size", "H=6", "--backend", "numpy")
    assert (status, err) == (0, "")
    assert json.loads(out) == {
        "output": str(tmp_path / "y.npy"), "network": "sym", "backend": "numpy",
        "dtype": "float32", "sizes": {"H": 6, "W": 8},
        "outputs": [{"name": "y", "shape": [2, 4]}],
    }


@onnx_needed
def test_export_json_report(tmp_path, cli):
    import json

    model = _write(tmp_path, "pair.cnn", PAIR)
    status, out, err = cli("export", model, "-o", tmp_path / "pair.onnx", "--format", "json")
    assert (status, err) == (0, "")
    report = json.loads(out)
    assert report["inputs"] == [{"name": "a", "shape": ["N", 2, 5, 5]},
                                {"name": "b", "shape": ["N", 3, 5, 5]}]
    assert report["outputs"] == [{"name": "feats", "shape": ["N", 4]},
                                 {"name": "probs", "shape": ["N", 3]}]
    assert (report["network"], report["opset"], report["initializers"]) == ("pair", 17, 4)


# ---- found in runtime/model.py (owned elsewhere); `cnnc run` works around both -------------


def test_saved_weight_files_get_the_usual_mode(tmp_path):
    Model(cnnc.compile(SMALL).plan, backend="numpy").save(tmp_path / "w.npz")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "w.npz").stat().st_mode & 0o777 == 0o666 & ~umask


def test_model_refuses_inputs_of_different_batch_sizes():
    from cnnc.runtime.model import InputError

    model = Model(cnnc.compile(PAIR).plan, backend="numpy")
    with pytest.raises(InputError):
        model({"a": np.zeros((2, 2, 5, 5)), "b": np.zeros((3, 3, 5, 5))})
