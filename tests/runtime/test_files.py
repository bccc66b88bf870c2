"""runtime/files.py: .npy and .npz files read without trusting them (every header checked
before any data is read or inflated), temporaries of a killed write cleaned up, a full disk
named, the memory there is.

Each refusal is an `ArrayFileError` (a ValueError) naming the member and what is wrong with
it; no NumPy warning escapes."""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys
import time
import warnings
import zipfile
import zlib

import numpy as np
import pytest

from cnnc.runtime import files
from cnnc.runtime.files import (
    ArrayFileError, NpzFile, format_bytes, read_arrays, read_npz, remove_stale_temporaries,
    write_atomically,
)


@pytest.fixture(autouse=True)
def warnings_are_errors():
    """No NumPy (or other) warning may escape a read."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def npy(header, data=b"", version=(1, 0)) -> bytes:
    """The bytes of a .npy file with ``header`` (a dict, or the header text itself)."""
    text = header if isinstance(header, str) else repr(header)
    raw = text.encode("latin-1") + b"\n"
    length = "<H" if version == (1, 0) else "<I"
    return b"\x93NUMPY" + bytes(version) + struct.pack(length, len(raw)) + raw + data


def header(shape, descr="<f4", fortran=False):
    return {"descr": descr, "fortran_order": fortran, "shape": shape}


def zipped(path, members: dict, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


# ---- what reads as numpy reads it -------------------------------------------------------------


def test_arrays_read_as_numpy_reads_them(tmp_path):
    arrays = {
        "plain": np.arange(12.0).reshape(3, 4),
        "fortran": np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4)),
        "scalar": np.float32(2.5),
        "empty": np.zeros((0, 3)),
        "big_endian": np.arange(5, dtype=">f8"),
        "half": np.arange(4, dtype=np.float16),
        "unsigned": np.arange(3, dtype=np.uint8),
    }
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"{save.__name__}.npz"
        save(path, **arrays)
        got = read_npz(path)
        with np.load(path) as want:
            assert sorted(got) == sorted(want.files)
            for key in want.files:
                assert got[key].dtype == want[key].dtype
                assert got[key].flags.f_contiguous == want[key].flags.f_contiguous
                np.testing.assert_array_equal(got[key], want[key])
    np.save(tmp_path / "one.npy", arrays["fortran"])
    np.testing.assert_array_equal(read_arrays(tmp_path / "one.npy"), arrays["fortran"])
    assert isinstance(read_arrays(tmp_path / "savez.npz"), dict)


def test_format_versions_2_and_3(tmp_path):
    data = np.arange(3, dtype="<f4").tobytes()
    for version in ((2, 0), (3, 0)):
        path = zipped(tmp_path / f"v{version[0]}.npz",
                      {"a.npy": npy(header((3,)), data, version)})
        np.testing.assert_array_equal(read_npz(path)["a"], [0, 1, 2])


def test_headers_are_read_before_any_data(tmp_path, monkeypatch):
    np.savez(tmp_path / "w.npz", a=np.zeros((2, 3)), b=np.ones(4, np.int64))
    monkeypatch.setattr(files, "_read_data", lambda *a: pytest.fail("data was read"))
    with NpzFile(tmp_path / "w.npz") as npz:
        assert {k: (m.shape, str(m.dtype)) for k, m in npz.members.items()} == {
            "a": ((2, 3), "float64"), "b": ((4,), "int64")}
        assert npz.members["a"].nbytes == 48


# ---- refusals -----------------------------------------------------------------------------------

F4 = np.arange(4, dtype="<f4").tobytes()

REFUSALS = [
    ("not_an_array", {"notes.txt": b"hello"},
     "member `notes.txt` is not an array (an .npz holds only .npy members)"),
    ("text", {"a.npy": npy(header((2,), "<U3"), b"\0" * 24)},
     "member `a` has dtype <U3 (text); cnnc reads integers and floating-point numbers here"),
    ("bytes", {"a.npy": npy(header((2,), "|S3"), b"\0" * 6)},
     "member `a` has dtype |S3 (bytes); cnnc reads integers and floating-point numbers here"),
    ("complex", {"a.npy": npy(header((1,), "<c16"), b"\0" * 16)},
     "member `a` has dtype complex128 (complex numbers); cnnc reads integers and "
     "floating-point numbers here"),
    ("bool", {"a.npy": npy(header((2,), "|b1"), b"\1\0")},
     "member `a` has dtype bool (booleans); cnnc reads integers and floating-point numbers "
     "here"),
    ("structured", {"a.npy": npy(header((1,), [("x", "<f4"), ("y", "<i4")]), b"\0" * 8)},
     "member `a` has dtype [('x', '<f4'), ('y', '<i4')] (structured records); cnnc reads "
     "integers and floating-point numbers here"),
    ("subarray", {"a.npy": npy(header((1,), [("", "<f4", (2,))]), b"\0" * 8)},
     "(structured records); cnnc reads integers and floating-point numbers here"),
    ("objects", {"a.npy": npy(header((1,), "|O"), b"\x80\x04N.")},
     "member `a` holds Python objects (a pickle); cnnc never reads pickles"),
    ("huge", {"a.npy": npy(header((10 ** 14,)), F4)},
     "member `a` declares [100000000000000] float32 (364 TiB), but holds only 16 bytes of "
     "data"),
    ("truncated", {"a.npy": npy(header((5,)), F4)},
     "member `a` declares [5] float32 (20 bytes), but holds only 16 bytes of data"),
    ("negative_dim", {"a.npy": npy(header((-1,)), F4)},
     "member `a` declares shape (-1,); expected at most 64 whole numbers >= 0"),
    ("bool_dim", {"a.npy": npy(header((True,)), F4)},
     "member `a` declares shape (True,); expected at most 64 whole numbers >= 0"),
    ("bad_descr", {"a.npy": npy(header((1,), "<zz"), F4)},
     "member `a` declares dtype '<zz', which is not a dtype"),
    ("not_a_dict", {"a.npy": npy("[1, 2]", F4)},
     "member `a` has a header that is not a .npy header (expected the keys descr, "
     "fortran_order and shape)"),
    ("not_python", {"a.npy": npy("{'descr': f4", F4)},
     "member `a` has a header that is not a .npy header"),
    ("call_in_header", {"a.npy": npy("{'descr': __import__('os'), 'fortran_order': False, "
                                     "'shape': (1,)}", F4)},
     "member `a` has a header that is not a .npy header"),
    ("fortran_not_bool", {"a.npy": npy(header((1,), fortran="yes"), F4)},
     "member `a` has a header that is not a .npy header (fortran_order is 'yes')"),
    ("bad_magic", {"a.npy": b"\x93NUMPZ\x01\x00" + F4},
     "member `a` is not a .npy array"),
    ("version", {"a.npy": b"\x93NUMPY\x09\x09" + F4},
     "member `a` has .npy format version 9.9, which cnnc does not read"),
    ("long_header", {"a.npy": b"\x93NUMPY\x02\x00" + struct.pack("<I", 10 ** 9)},
     "member `a` has a header of 1,000,000,000 bytes; cnnc reads headers of at most 10,000"),
    ("cut_header", {"a.npy": b"\x93NUMPY\x01\x00\x40\x00{'descr'"},
     "member `a` is truncated: its header ends early"),
    ("control_characters", {"a\x1b[31m.npy": npy(header((1,), "<c8"), b"\0" * 8)},
     "member `a\\x1b[31m` has dtype complex64"),
]


@pytest.mark.parametrize("name, members, message", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_name_the_member_and_the_value(tmp_path, name, members, message):
    path = zipped(tmp_path / f"{name}.npz", members)
    before = path.read_bytes()
    with pytest.raises(ArrayFileError) as err:
        read_npz(path)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert path.read_bytes() == before


def test_a_member_twice_and_an_encrypted_member(tmp_path):
    path = tmp_path / "twice.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name
        zipped(path, {"a.npy": npy(header((1,)), F4[:4])})
        with zipfile.ZipFile(path, "a") as z:
            z.writestr("a.npy", npy(header((1,)), F4[:4]))
    with pytest.raises(ArrayFileError, match="member `a` appears twice"):
        read_npz(path)
    data = bytearray(zipped(tmp_path / "enc.npz", {"a.npy": npy(header((1,)), F4[:4])})
                     .read_bytes())
    for at in (6, data.rfind(b"PK\x01\x02") + 8):  # the flag bits, local and central
        data[at] |= 1
    (tmp_path / "enc.npz").write_bytes(bytes(data))
    with pytest.raises(ArrayFileError, match="member `a` is encrypted"):
        read_npz(tmp_path / "enc.npz")


@pytest.mark.parametrize("content, message", [
    (b"", "not an .npz file"),
    (b"hello", "not an .npz file"),
    (b"PK\x03\x04 not really a zip", "not an .npz file"),
    (npy(header((1,)), F4[:4]), "a .npy file (one array), not an .npz file of named arrays"),
])
def test_files_that_are_no_npz(tmp_path, content, message):
    (tmp_path / "f.npz").write_bytes(content)
    with pytest.raises(ArrayFileError) as err:
        read_npz(tmp_path / "f.npz")
    assert str(err.value).startswith(message)


def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(ArrayFileError, match="^No such file or directory$"):
        read_npz(tmp_path / "absent.npz")
    with pytest.raises(ArrayFileError, match="^No such file or directory$"):
        read_arrays(tmp_path / "absent.npy")


def test_a_corrupt_member_is_refused_after_its_crc(tmp_path):
    path = tmp_path / "crc.npz"
    np.savez(path, a=np.arange(100.0))
    data = bytearray(path.read_bytes())
    data[200] ^= 0xFF  # inside a's data: only the CRC can tell
    path.write_bytes(bytes(data))
    with pytest.raises(ArrayFileError, match="member `a` is corrupt: Bad CRC-32"):
        read_npz(path)


def test_npy_refusals(tmp_path):
    cases = {
        "empty.npy": (b"", "the file is empty"),
        "garbage.npy": (b"hello, world", "not a .npy or .npz file"),
        "huge.npy": (npy(header((10 ** 14,)), F4),
                     "the array declares [100000000000000] float32 (364 TiB), but holds only "
                     "16 bytes of data"),
        "complex.npy": (npy(header((1,), "<c8"), b"\0" * 8),
                        "the array has dtype complex64 (complex numbers)"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ArrayFileError) as err:
            read_arrays(tmp_path / name)
        assert message in str(err.value), name
    # with the caller's kinds, bool passes
    np.save(tmp_path / "mask.npy", np.array([True, False]))
    assert read_arrays(tmp_path / "mask.npy", kinds="biuf").dtype == bool


def _bomb(path, count, member="a.npy", descr="<f8"):
    """An .npz whose one member inflates to ``count`` float64 zeros (8 * count bytes) from a
    few hundred kilobytes."""
    head = npy(header((count,), descr))
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = [packer.compress(head)]
    crc = zlib.crc32(head)
    chunk = bytes(1 << 20)
    left = 8 * count
    while left:
        part = chunk[:min(left, len(chunk))]
        body.append(packer.compress(part))
        crc = zlib.crc32(part, crc)
        left -= len(part)
    body.append(packer.flush())
    info = zipfile.ZipInfo(member, date_time=(2024, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    raw = b"".join(body)
    size = len(head) + 8 * count
    with zipfile.ZipFile(path, "w") as z:
        # write the already deflated bytes as they are
        info.file_size, info.compress_size, info.CRC = size, len(raw), crc
        z.fp.write(info.FileHeader())
        z.fp.write(raw)
        info.header_offset = 0
        z.filelist.append(info)
        z.NameToInfo[member] = info
        z.start_dir = z.fp.tell()
    return path


def test_a_zip_bomb_is_refused_before_it_inflates(tmp_path, monkeypatch):
    path = _bomb(tmp_path / "bomb.npz", 1 << 27)  # 1 GiB inflated
    assert path.stat().st_size < 2 << 20
    monkeypatch.setattr(files, "available_memory", lambda: 256 << 20)
    started = time.perf_counter()
    with pytest.raises(ArrayFileError) as err:
        read_npz(path)
    assert time.perf_counter() - started < 1.0  # nothing was inflated
    assert str(err.value) == ("its arrays take 1.0 GiB, more than the 256 MiB of memory "
                              "available; the largest, member `a`, declares [134217728] "
                              "float64 (1.0 GiB)")


def test_the_memory_check_counts_only_what_is_read(tmp_path, monkeypatch):
    np.savez(tmp_path / "two.npz", small=np.zeros(10), big=np.zeros(100_000))
    monkeypatch.setattr(files, "available_memory", lambda: 100_000)
    with NpzFile(tmp_path / "two.npz") as npz:
        assert npz.read(["small"])["small"].shape == (10,)
        with pytest.raises(ArrayFileError, match="member `big`, declares"):
            npz.read()


# ---- writing ------------------------------------------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_of_a_killed_write_are_removed(tmp_path):
    out = tmp_path / "w.npz"
    dead, alive = _dead_pid(), os.getppid()
    stale = tmp_path / f".cnnc-w.npz.{dead}.abcd_123.tmp"
    names = {
        stale.name: True,  # removed: its writer is gone
        f".cnnc-w.npz.{alive}.abcd_123.tmp": False,  # its writer still runs
        f".cnnc-other.npz.{dead}.abcd_123.tmp": False,  # another output's
        ".cnnc-abcd_123.tmp": False,  # an older cnnc's: whose, nobody can tell
        f".cnnc-w.npz.{dead}.not-random.tmp": False,  # not a name cnnc makes
        "w.npz.tmp": False,
    }
    for name in names:
        (tmp_path / name).write_bytes(b"x" * 100)
    (tmp_path / f".cnnc-w.npz.{dead}.dir_0000.tmp").mkdir()  # never a folder
    assert remove_stale_temporaries(out) == [stale.name]
    for name, removed in names.items():
        assert (tmp_path / name).exists() != removed, name
    # the next write of the same output removes them too
    stale.write_bytes(b"x")
    write_atomically(out, lambda f: f.write(b"new"))
    assert not stale.exists() and out.read_bytes() == b"new"


def test_temporaries_are_named_after_their_output(tmp_path):
    seen = []

    def write(f):
        seen.extend(p.name for p in tmp_path.iterdir() if p.name.startswith(".cnnc-"))
        f.write(b"data")

    write_atomically(tmp_path / "model.onnx", write)
    (name,) = seen
    assert name.startswith(f".cnnc-model.onnx.{os.getpid()}.") and name.endswith(".tmp")
    long = "n" * 250 + ".npz"  # a temporary's name keeps only the start of it
    write_atomically(tmp_path / long, lambda f: f.write(b"data"))
    assert (tmp_path / long).read_bytes() == b"data"


def test_a_full_disk_names_the_file_and_leaves_it_as_it_was(tmp_path, monkeypatch):
    out = tmp_path / "w.npz"
    out.write_bytes(b"old")

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", fsync)
    with pytest.raises(OSError) as err:
        write_atomically(out, lambda f: f.write(b"new"))
    assert err.value.errno == errno.ENOSPC
    assert err.value.filename == str(out)
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.npz"]


@pytest.fixture
def tiny_disk(tmp_path):
    """A 4 KiB tmpfs (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_real_full_disk(tiny_disk):
    out = tiny_disk / "w.bin"
    with pytest.raises(OSError) as err:
        write_atomically(out, lambda f: f.write(bytes(1 << 20)))
    assert err.value.errno == errno.ENOSPC
    assert err.value.filename == str(out)
    assert os.listdir(tiny_disk) == []


# ---- memory and sizes ---------------------------------------------------------------------------


def test_available_memory_is_a_number_of_bytes():
    available = files.available_memory()
    if sys.platform.startswith("linux"):
        assert isinstance(available, int) and available > 1 << 20


@pytest.mark.parametrize("n, text", [
    (0, "0 bytes"), (1023, "1023 bytes"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
    (98 * 2 ** 30, "98.0 GiB"), (426 * 2 ** 50, "426 PiB"), (2 ** 80, "1.0 YiB"),
    (10 ** 400, "about 2^1328 bytes"),
])
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_member_names_are_shown_escaped():
    assert files.shown("a\x1b[2Jb\x00") == "a\\x1b[2Jb\\x00"
    assert len(files.shown("x" * 500)) == 80


def test_a_folder_and_an_empty_npz(tmp_path):
    with pytest.raises(ArrayFileError, match="Is a directory"):
        read_npz(tmp_path)
    assert read_npz(zipped(tmp_path / "empty.npz", {})) == {}


def test_a_pipe_is_refused(tmp_path):
    import threading

    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)

    def write():
        try:
            fifo.write_bytes(b"PK" + bytes(100))
        except BrokenPipeError:  # the reader went away first: as it may
            pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    with pytest.raises(ArrayFileError) as err:
        read_npz(fifo)
    drain = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # never blocks
    try:
        writer.join(timeout=5)
        while writer.is_alive():
            try:
                os.read(drain, 1 << 16)
            except BlockingIOError:
                pass
            writer.join(timeout=0.1)
    finally:
        os.close(drain)
    assert str(err.value) == ("not a regular file (a pipe or a device); cnnc reads arrays "
                              "from files on disk")
