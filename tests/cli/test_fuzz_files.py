"""No weight, data or checkpoint file, however mangled, makes cnnc crash or warn.

Hypothesis mutates valid files: bytes flipped (most of them in the headers, where the
parsing is), files cut short, and .npy headers rewritten (shapes, dtypes, orders) inside
well-formed zips, so that the zip's checksums hold and the header parser itself is what
answers. Whatever the bytes, `cnnc run --weights`, `cnnc train --data` and `cnnc train
--resume` end with status 0 or with one `cnnc: error:` line and status 2; never a
traceback, never a warning, never a temporary file left behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cnnc
from cnnc.cli import main

TINY = """\
network tiny
input x: [1, 4, 4]
output y = x -> conv(2, 3, pad=1) -> relu -> maxpool(2) -> flatten -> dense(3)
"""

FUZZ = settings(max_examples=80, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """tiny.cnn, x.npy, w.npz (weights), data.npz and tiny.ckpt.npz (after one epoch)."""
    folder = tmp_path_factory.mktemp("files")
    (folder / "tiny.cnn").write_text(TINY)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 1, 4, 4))
    y = np.arange(12) % 3
    np.save(folder / "x.npy", x[:2])
    np.savez(folder / "data.npz", x=x[:8], y=y[:8], x_test=x[8:], y_test=y[8:])
    model = cnnc.compile(TINY).build(backend="numpy")
    np.savez(folder / "w.npz", **model.state())
    np.savez_compressed(folder / "wz.npz", **model.state())
    with _inside(folder):
        status, _, err = cli("train", "tiny.cnn", "--data", "data.npz", "--epochs", "1",
                              "--batch", "4")
    assert status == 0, err
    return folder


@contextlib.contextmanager
def _inside(folder: Path):
    """``contextlib.chdir`` (Python 3.11) for Python 3.10 too."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def cli(*argv) -> tuple[int, str, str]:
    """`cnnc ARGV` in-process: (status, stdout, stderr); a warning is an exception."""
    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def answers_cleanly(folder: Path, argv: list, output: str) -> None:
    """Run ``argv`` in ``folder``: 0, or 2 with one error line; the output written only on
    success; no temporary left."""
    target = folder / output
    target.unlink(missing_ok=True)
    with _inside(folder):
        status, out, err = cli(*argv)
    assert "Traceback" not in err
    if status == 0:
        assert target.exists()
    else:
        assert status == 2, (status, err)
        assert err.startswith("cnnc: error: ") and err.endswith("\n"), err
        assert not target.exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".cnnc-")]


# ---- mutations ----------------------------------------------------------------------------------


@st.composite
def flipped(draw, original: bytes):
    """``original`` with a few bytes changed, most of them near the start of a member."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 6))):
        near = draw(st.booleans())
        high = min(len(data) - 1, 300) if near else len(data) - 1
        data[draw(st.integers(0, high))] = draw(st.integers(0, 255))
    return bytes(data)


@st.composite
def cut(draw, original: bytes):
    return original[:draw(st.integers(0, len(original) - 1))]


SHAPES = st.one_of(
    st.tuples(), st.tuples(st.integers(0, 5)),
    st.lists(st.integers(-2, 10 ** 15), min_size=1, max_size=5).map(tuple),
    st.sampled_from([(10 ** 14,), (2 ** 63,), (3, 2 ** 62), (True,), (1.5,)]),
)
DESCRS = st.sampled_from([
    "<f4", "<f8", ">f4", "<f2", "<i8", "|u1", "|b1", "<c8", "<U3", "|S2", "|O", "|V4",
    "<M8[s]", "<m8[s]", [("a", "<f4")], [("", "<f4", (2,))], "<zz", 3, None,
])


@st.composite
def headers(draw):
    """A .npy header dict, most of its values possible, some not."""
    d = {"descr": draw(DESCRS), "fortran_order": draw(st.sampled_from([False, True, "no"])),
         "shape": draw(SHAPES)}
    if draw(st.integers(0, 9)) == 0:
        d[draw(st.sampled_from(["extra", "shape", "descr"]))] = draw(st.integers())
    return d


def npy(header: dict, data: bytes) -> bytes:
    raw = repr(header).encode() + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(raw)) + raw + data


@st.composite
def rewritten(draw, original: Path):
    """``original``'s members, one or more with its header replaced and its data cut or
    padded, zipped again (so the checksums hold)."""
    with zipfile.ZipFile(original) as z:
        members = {name: z.read(name) for name in z.namelist()}
    for name in draw(st.lists(st.sampled_from(sorted(members)), min_size=1, max_size=3,
                              unique=True)):
        data = members[name]
        body = data[data.index(b"\n") + 1:] if b"\n" in data else b""
        size = draw(st.integers(0, 2 * len(body) + 8))
        members[name] = npy(draw(headers()), (body * 3)[:size])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=draw(
            st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buffer.getvalue()


# ---- weight files -------------------------------------------------------------------------------


def _run_weights(folder, data):
    (folder / "bad.npz").write_bytes(data)
    answers_cleanly(folder, ["run", "tiny.cnn", "-i", "x.npy", "-o", "y.npy", "--weights",
                             "bad.npz", "-q"], "y.npy")


@FUZZ
@given(st.data())
def test_weight_files_with_bytes_changed(folder, data):
    original = (folder / data.draw(st.sampled_from(["w.npz", "wz.npz"]))).read_bytes()
    _run_weights(folder, data.draw(st.one_of(flipped(original), cut(original))))


@FUZZ
@given(st.data())
def test_weight_files_with_headers_rewritten(folder, data):
    _run_weights(folder, data.draw(rewritten(folder / "w.npz")))


# ---- data files ---------------------------------------------------------------------------------


def _train(folder, data):
    (folder / "bad.npz").write_bytes(data)
    answers_cleanly(folder, ["train", "tiny.cnn", "--data", "bad.npz", "--epochs", "1",
                             "--batch", "4", "-o", "fw.npz", "--checkpoint", "fc.npz",
                             "--force"], "fw.npz")


@settings(FUZZ, max_examples=40)
@given(st.data())
def test_data_files_with_bytes_changed(folder, data):
    original = (folder / "data.npz").read_bytes()
    _train(folder, data.draw(st.one_of(flipped(original), cut(original))))


@settings(FUZZ, max_examples=60)
@given(st.data())
def test_data_files_with_headers_rewritten(folder, data):
    _train(folder, data.draw(rewritten(folder / "data.npz")))


# ---- checkpoints --------------------------------------------------------------------------------


def _resume(folder, data):
    (folder / "bad.ckpt.npz").write_bytes(data)
    answers_cleanly(folder, ["train", "tiny.cnn", "--data", "data.npz", "--epochs", "1",
                             "--resume", "bad.ckpt.npz", "-o", "rw.npz"], "rw.npz")


@settings(FUZZ, max_examples=40)
@given(st.data())
def test_checkpoints_with_bytes_changed(folder, data):
    original = (folder / "tiny.ckpt.npz").read_bytes()
    _resume(folder, data.draw(st.one_of(flipped(original), cut(original))))


@settings(FUZZ, max_examples=40)
@given(st.data())
def test_checkpoints_with_headers_rewritten(folder, data):
    _resume(folder, data.draw(rewritten(folder / "tiny.ckpt.npz")))


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10, 10 ** 20),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8,
)


@settings(FUZZ, max_examples=100)
@given(st.data())
def test_checkpoints_with_metadata_changed(folder, data):
    """One field of the metadata, at any depth, replaced by any JSON value."""
    with np.load(folder / "tiny.ckpt.npz") as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["meta"]))
    node = meta
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        key = data.draw(st.sampled_from(keys))
        if isinstance(node[key], (dict, list)) and node[key] and data.draw(st.booleans()):
            node = node[key]
            continue
        node[key] = data.draw(JSON_VALUES)
        break
    arrays["meta"] = np.array(json.dumps(meta))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    _resume(folder, buffer.getvalue())
