"""Files and memory: writing atomically, reading .npy and .npz arrays without trusting
them, and how much memory there is to allocate.

Writing: a reader, a crash or a full disk never sees half a file. The temporary file sits
next to the output as ``.cnnc-NAME.PID.XXXXXXXX.tmp``; one left behind by a killed run (its
process gone) is removed by the next write of the same output, or earlier by
`remove_stale_temporaries`.

Reading: every member's header (dtype, shape, order) is read and checked against the size
the file can hold and the memory there is *before* any data is read or inflated, so a
header that declares 10^14 elements or a small zip member that would inflate to gigabytes
is refused in words, not by an allocation error. Object arrays (pickles) are never read.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import struct
import tempfile
import zipfile
import zlib
from dataclasses import dataclass

# ---- writing ------------------------------------------------------------------------------------

_TEMP_PREFIX = ".cnnc-"
_TEMP_SUFFIX = ".tmp"
_NAME_IN_TEMP = 180  # characters of the output's name kept in a temporary's name
_RANDOM = re.compile(r"[a-z0-9_]{8}")  # what tempfile.mkstemp puts in a name


def _temp_prefix(path: str) -> str:
    """``.cnnc-NAME.``: the start of the name of every temporary written for ``path``."""
    return f"{_TEMP_PREFIX}{os.path.basename(path)[:_NAME_IN_TEMP]}."


def write_atomically(path, write, mode: int | None = None) -> None:
    """Call ``write(f)`` on a temporary file in ``path``'s folder, flush it to disk, give it
    ``mode`` (by default the mode a new file would get, ``0666 & ~umask``), then rename it
    onto ``path``: a rewritten file keeps its permissions without a moment of others'.

    On any failure, Ctrl-C included, the temporary file is removed, ``path`` is left as it
    was, and the exception propagates (an OSError for a folder that cannot be written, or
    a full disk; its ``filename`` is ``path``). Temporaries of ``path`` left behind by a
    killed run are removed first.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    remove_stale_temporaries(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(path)}{os.getpid()}.",
                                   suffix=_TEMP_SUFFIX, dir=folder)
    except OSError as err:
        _name(err, path)
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, (0o666 & ~_umask()) if mode is None else mode)  # mkstemp: private
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(err, OSError):
            _name(err, path)
        raise


def _name(err: OSError, path: str) -> None:
    """Let an OSError from writing ``path`` name it (a full disk's error names no file)."""
    if err.filename is None or str(err.filename).startswith(
            os.path.join(os.path.dirname(os.path.abspath(path)), _TEMP_PREFIX)):
        err.filename = path


def remove_stale_temporaries(path) -> list[str]:
    """Remove the temporaries that writes of ``path`` left behind when their process was
    killed: regular files named ``.cnnc-NAME.PID.XXXXXXXX.tmp`` next to ``path`` whose
    process no longer runs. Returns the names removed; never raises."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    prefix = _temp_prefix(path)
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(prefix) and name.endswith(_TEMP_SUFFIX)):
            continue
        pid, dot, random = name[len(prefix):-len(_TEMP_SUFFIX)].partition(".")
        if not (dot and pid.isascii() and pid.isdigit() and _RANDOM.fullmatch(random)):
            continue
        if int(pid) == os.getpid() or _running(int(pid)):
            continue
        full = os.path.join(folder, name)
        try:
            if stat.S_ISREG(os.lstat(full).st_mode):
                os.unlink(full)
                removed.append(name)
        except OSError:
            pass
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):  # another user's process, or no such id
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def is_no_space(err: OSError) -> bool:
    return err.errno in (errno.ENOSPC, errno.EDQUOT)


# ---- memory -------------------------------------------------------------------------------------

def available_memory() -> int | None:
    """Bytes of memory a new allocation can take without swapping: the kernel's
    MemAvailable (``/proc/meminfo``, else ``sysconf``), lowered to what a cgroup limit
    leaves. None when the system does not say."""
    found = []
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        try:
            pages = os.sysconf("SC_AVPHYS_PAGES")
            size = os.sysconf("SC_PAGE_SIZE")
            if pages > 0 and size > 0:
                found.append(pages * size)
        except (AttributeError, OSError, ValueError):
            pass
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit) as f:
                cap = f.read().strip()
            with open(usage) as f:
                used = int(f.read().strip())
            if cap.isdigit() and int(cap) < 1 << 60:
                found.append(max(0, int(cap) - used))
        except (OSError, ValueError):
            pass
    return min(found) if found else None


def format_bytes(n: int) -> str:
    """``n`` bytes in words: ``512 bytes``, ``1.5 KiB``, ``98.0 GiB``, ``426 PiB``."""
    n = int(n)
    if n < 1024:
        return f"{n} bytes"
    units = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")
    for i, unit in enumerate(units, start=1):
        if n < 1024 ** (i + 1) or i == len(units):
            if n >= 1024 ** (i + 3):  # too large for a float: say its order
                return f"about 2^{n.bit_length() - 1} bytes"
            value = n / 1024 ** i
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")


# ---- reading arrays -----------------------------------------------------------------------------

_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK"
_MAX_HEADER = 10_000  # numpy's own limit on a header's length
_CHUNK = 16 << 20  # bytes read (and inflated) at a time
_KIND_WORDS = {"b": "booleans", "c": "complex numbers", "U": "text", "S": "bytes",
               "O": "Python objects", "V": "structured records", "M": "dates",
               "m": "time spans", "i": "integers", "u": "unsigned integers",
               "f": "floating-point numbers"}
NUMBERS = "iuf"  # integer and floating-point dtypes


class ArrayFileError(ValueError):
    """A .npy or .npz file that cannot be read, or holds what cnnc does not read; the
    message names the member and what is wrong with it."""


def kind_words(dtype) -> str:
    """What a dtype holds, in words: ``complex numbers``, ``text``, ..."""
    if dtype.names is not None or dtype.subdtype is not None:
        return "structured records"
    return _KIND_WORDS.get(dtype.kind, "not numbers")


def shown(name: str) -> str:
    """A member's name as printed: control characters escaped, at most 80 characters."""
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in name)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass
class Member:
    """One array's header: its key (the member's name without ``.npy``), shape, dtype and
    where its data starts."""

    key: str
    shape: tuple
    dtype: object  # numpy.dtype
    fortran: bool
    header_bytes: int  # magic and header, before the data
    stored_bytes: int  # the member's (uncompressed) size: header and data

    @property
    def count(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.count * self.dtype.itemsize

    def describe(self) -> str:
        """``[3, 4] float32 (48 bytes)``"""
        return f"{list(self.shape)} {self.dtype} ({format_bytes(self.nbytes)})"


def _label(key) -> str:
    """How a message names an array: ``member `x``` in an .npz, ``the array`` in a .npy."""
    return "the array" if key is None else f"member `{shown(key)}`"


def _read_exactly(fp, n: int, what: str, key: str) -> bytes:
    data = fp.read(n)
    if len(data) != n:
        raise ArrayFileError(f"{_label(key)} is truncated: its {what} ends early")
    return data


def _header(fp, key: str, stored: int | None) -> Member:
    """Read and check a .npy header at ``fp``'s position (``stored``: the member's size in
    bytes, when known)."""
    import ast
    import warnings

    import numpy as np

    magic = fp.read(len(_MAGIC) + 2)
    if len(magic) < len(_MAGIC) + 2 or magic[:len(_MAGIC)] != _MAGIC:
        raise ArrayFileError(f"{_label(key)} is not a .npy array")
    version = (magic[-2], magic[-1])
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise ArrayFileError(f"{_label(key)} has .npy format version "
                             f"{version[0]}.{version[1]}, which cnnc does not read")
    length_format = "<H" if version == (1, 0) else "<I"
    size = struct.calcsize(length_format)
    (length,) = struct.unpack(length_format, _read_exactly(fp, size, "header", key))
    if length > _MAX_HEADER:
        raise ArrayFileError(f"{_label(key)} has a header of {length:,} bytes; "
                             f"cnnc reads headers of at most {_MAX_HEADER:,}")
    raw = _read_exactly(fp, length, "header", key)
    try:
        text = raw.decode("utf-8" if version == (3, 0) else "latin-1")
        d = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError,
            UnicodeDecodeError):
        raise ArrayFileError(f"{_label(key)} has a header that is not a .npy "
                             "header") from None
    if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
        raise ArrayFileError(f"{_label(key)} has a header that is not a .npy "
                             "header (expected the keys descr, fortran_order and shape)")
    shape, fortran, descr = d["shape"], d["fortran_order"], d["descr"]
    if (not isinstance(shape, tuple) or len(shape) > 64
            or not all(type(s) is int and s >= 0 for s in shape)):
        raise ArrayFileError(f"{_label(key)} declares shape {shown(repr(shape))}; "
                             "expected at most 64 whole numbers >= 0")
    if not isinstance(fortran, bool):
        raise ArrayFileError(f"{_label(key)} has a header that is not a .npy header "
                             f"(fortran_order is {shown(repr(fortran))})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a deprecated spelling is refused, not shown
            dtype = np.lib.format.descr_to_dtype(descr)
    except Exception:  # any descr numpy will not take: TypeError, ValueError, warnings
        raise ArrayFileError(f"{_label(key)} declares dtype {shown(repr(descr))}, "
                             "which is not a dtype") from None
    header_bytes = len(magic) + size + length
    member = Member(key, shape, dtype, fortran, header_bytes,
                    stored if stored is not None else -1)
    if dtype.hasobject:
        raise ArrayFileError(f"{_label(key)} holds Python objects (a pickle); cnnc "
                             "never reads pickles")
    if stored is not None and header_bytes + member.nbytes > stored:
        raise ArrayFileError(f"{_label(key)} declares {member.describe()}, but holds "
                             f"only {format_bytes(max(0, stored - header_bytes))} of data")
    return member


def _read_data(fp, member: Member):
    """The array whose header ``member`` is, read from ``fp`` in chunks into one
    allocation of its declared size."""
    import numpy as np

    try:
        flat = np.empty(member.count, dtype=member.dtype)
    except (MemoryError, ValueError):
        raise ArrayFileError(f"{_label(member.key)} declares {member.describe()}, "
                             "more than can be allocated") from None
    nbytes = member.nbytes
    if nbytes:
        view = memoryview(flat.view(np.uint8))
        done = 0
        while done < nbytes:
            chunk = fp.read(min(_CHUNK, nbytes - done))
            if not chunk:
                raise ArrayFileError(f"{_label(member.key)} is truncated: it declares "
                                     f"{member.describe()}, the data ends after "
                                     f"{format_bytes(done)}")
            view[done:done + len(chunk)] = chunk
            done += len(chunk)
    if member.fortran:
        return flat.reshape(member.shape[::-1]).transpose()
    return flat.reshape(member.shape)


def _check_kinds(member: Member, kinds: str, text: tuple) -> None:
    dtype = member.dtype
    structured = dtype.names is not None or dtype.subdtype is not None
    if member.key in text and dtype.kind == "U" and not structured:
        if member.shape != ():
            raise ArrayFileError(f"{_label(member.key)} should be one text value, "
                                 f"but has shape {list(member.shape)}")
        return
    if structured or dtype.kind not in kinds:
        words = [w for k, w in (("b", "booleans"), ("iu", "integers"),
                                ("f", "floating-point numbers")) if set(k) & set(kinds)]
        allowed = ", ".join(words[:-1]) + (" and " if len(words) > 1 else "") + words[-1]
        raise ArrayFileError(f"{_label(member.key)} has dtype {dtype} "
                             f"({kind_words(dtype)}); cnnc reads {allowed} here")


def _check_memory(members: list) -> None:
    total = sum(m.nbytes for m in members)
    available = available_memory()
    if available is not None and members and total > available:
        big = max(members, key=lambda m: m.nbytes)
        raise ArrayFileError(f"its arrays take {format_bytes(total)}, more than the "
                             f"{format_bytes(available)} of memory available; the largest, "
                             f"{_label(big.key)}, declares {big.describe()}")


# What opening a zip may raise: a broken directory, a zip version or compression method
# Python does not know (NotImplementedError), an encrypted member (RuntimeError).
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError,
               ValueError, EOFError, OSError, struct.error)
# What reading a member may raise besides our own refusals (ArrayFileError is a ValueError,
# so ValueError is not here): a bad CRC, a broken deflate stream, a member shorter than the
# zip says, a method Python does not know.
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError)


def _corrupt(key, err) -> ArrayFileError:
    reason = err.strerror if isinstance(err, OSError) and err.strerror else err
    return ArrayFileError(f"{_label(key)} is corrupt: {reason}")


class NpzFile:
    """An .npz file opened for reading: ``members`` (key -> `Member`, every header read
    and checked, nothing else), then `read` for the arrays wanted.

        with NpzFile("w.npz") as npz:
            shapes = {k: m.shape for k, m in npz.members.items()}
            arrays = npz.read()

    Raises `ArrayFileError` (a ValueError) for a file that is not an .npz, a member that is
    not a .npy array or holds objects, a header whose size the member cannot hold, and
    (with ``kinds``) a dtype that is not of those kinds. Members named in ``text`` may
    also be a single text value (a checkpoint's metadata).
    """

    def __init__(self, path, kinds: str = NUMBERS, text: tuple = ()):
        self.path = os.fspath(path)
        try:
            self._file = open(self.path, "rb")
        except OSError as err:
            raise ArrayFileError(err.strerror or str(err)) from None
        try:
            self._open(kinds, tuple(text))
        except BaseException:
            self.close()
            raise

    def _open(self, kinds: str, text: tuple) -> None:
        _require_seekable(self._file)
        start = self._file.read(len(_MAGIC))
        self._file.seek(0)
        if start == _MAGIC:
            raise ArrayFileError("a .npy file (one array), not an .npz file of named arrays")
        if not start.startswith(_ZIP_MAGIC):
            raise ArrayFileError("not an .npz file")
        try:
            self._zip = zipfile.ZipFile(self._file)
            infos = self._zip.infolist()
        except _ZIP_ERRORS as err:
            raise ArrayFileError(f"not an .npz file ({err})") from None
        self._infos = {}
        self.members = {}
        for info in infos:
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if not info.filename.endswith(".npy") or info.is_dir():
                raise ArrayFileError(f"member `{shown(info.filename)}` is not an array (an "
                                     ".npz holds only .npy members)")
            if key in self._infos:
                raise ArrayFileError(f"{_label(key)} appears twice")
            if info.flag_bits & 0x1:
                raise ArrayFileError(f"{_label(key)} is encrypted")
            self._infos[key] = info
            try:
                with self._member(key) as fp:
                    member = _header(fp, key, info.file_size)
            except _READ_ERRORS as err:
                raise _corrupt(key, err) from None
            _check_kinds(member, kinds, text)
            self.members[key] = member

    def _member(self, key):
        try:
            return self._zip.open(self._infos[key])
        except _ZIP_ERRORS as err:
            raise ArrayFileError(f"{_label(key)} cannot be read: {err}") from None

    def read(self, keys=None) -> dict:
        """The arrays of ``keys`` (default: every member), once the memory they declare is
        known to be there; each is read in chunks, never inflated past its header's size."""
        keys = list(self.members) if keys is None else list(keys)
        _check_memory([self.members[k] for k in keys])
        out = {}
        for key in keys:
            member = self.members[key]
            try:
                with self._member(key) as fp:
                    fp.read(member.header_bytes)
                    out[key] = _read_data(fp, member)
            except _READ_ERRORS as err:
                raise _corrupt(key, err) from None
        return out

    def close(self) -> None:
        zf = getattr(self, "_zip", None)
        if zf is not None:
            zf.close()
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _require_seekable(f) -> None:
    try:
        seekable = f.seekable()
    except (OSError, ValueError):
        seekable = False
    if not seekable:
        raise ArrayFileError("not a regular file (a pipe or a device); cnnc reads arrays from "
                             "files on disk")


def read_npz(path, kinds: str = NUMBERS, text: tuple = ()) -> dict:
    """Every array of an .npz file, loaded, without pickles, each header checked before its
    data is read (see `NpzFile`). A file that cannot be read, is not an .npz or holds
    something cnnc does not read raises `ArrayFileError` (a ValueError) with the reason in
    words (``No such file or directory``; ``member `x` has dtype complex128 ...``)."""
    with NpzFile(path, kinds, text) as npz:
        return npz.read()


def read_arrays(path, kinds: str = NUMBERS):
    """An array (a .npy file) or a dict of arrays (an .npz file), told apart by content,
    with the checks of `NpzFile`."""
    path = os.fspath(path)
    try:
        f = open(path, "rb")
    except OSError as err:
        raise ArrayFileError(err.strerror or str(err)) from None
    with f:
        _require_seekable(f)
        start = f.read(len(_MAGIC))
        if start != _MAGIC:
            if not start:
                raise ArrayFileError("the file is empty")
            if start.startswith(_ZIP_MAGIC):
                return read_npz(path, kinds)
            raise ArrayFileError("not a .npy or .npz file")
        f.seek(0)
        try:
            size = os.fstat(f.fileno()).st_size
        except OSError:
            size = None
        if size is not None and not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            size = None
        member = _header(f, None, size)
        _check_kinds(member, kinds, ())
        _check_memory([member])
        try:
            return _read_data(f, member)
        except OSError as err:
            raise ArrayFileError(err.strerror or str(err)) from None


def weight_problems(expected: dict, arrays: dict) -> list[str]:
    """Every way ``arrays`` (key -> array, or anything with a ``shape``) fails to fit
    ``expected`` (key -> shape): missing keys, unexpected keys and wrong shapes, each
    listed with its shapes."""
    problems = []
    for key in sorted(set(expected) - set(arrays)):
        problems.append(f"missing {key} {list(expected[key])}")
    for key in sorted(set(arrays) - set(expected)):
        problems.append(f"unexpected {shown(key)} {list(arrays[key].shape)}")
    for key in sorted(set(expected) & set(arrays)):
        if tuple(arrays[key].shape) != tuple(expected[key]):
            problems.append(f"{key} has shape {list(arrays[key].shape)}, expected "
                            f"{list(expected[key])}")
    return problems


# ---- weight files of other frameworks -----------------------------------------------------------
# `open_weights` opens any weight file cnnc reads, told apart by content: an .npz (cnnc's own),
# a .safetensors file, or a PyTorch checkpoint (.pt/.pth). Each opened file has ``members``
# (key -> `Member`, in the file's order, every header checked, nothing allocated yet) and
# ``read(keys)``, as `NpzFile` has.

_SAFETENSORS_HEADER_LIMIT = 100 << 20  # the safetensors format's own limit on its header
_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
                       "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1",
                       "BOOL": "?"}


class SafetensorsFile:
    """A .safetensors file opened for reading, its JSON header checked against the file's
    size and the memory there is before anything is read: every tensor's offsets inside
    the data, its byte count equal to its shape times its dtype's size, no overlaps.
    ``metadata`` is the header's ``__metadata__`` (text to text). bfloat16 tensors are read
    as float32 (exactly)."""

    def __init__(self, path):
        import json

        import numpy as np

        self.path = os.fspath(path)
        try:
            self._file = open(self.path, "rb")
        except OSError as err:
            raise ArrayFileError(err.strerror or str(err)) from None
        try:
            _require_seekable(self._file)
            size = os.fstat(self._file.fileno()).st_size
            head = self._file.read(8)
            if len(head) < 8:
                raise ArrayFileError("not a .safetensors file: shorter than its 8-byte "
                                     "header length")
            (length,) = struct.unpack("<Q", head)
            if length > _SAFETENSORS_HEADER_LIMIT or 8 + length > size:
                raise ArrayFileError(f"not a .safetensors file: its header length, "
                                     f"{length:,} bytes, does not fit a file of "
                                     f"{size:,} bytes")
            raw = self._file.read(length)
            try:
                header = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                raise ArrayFileError("not a .safetensors file: its header is not "
                                     "JSON") from None
            if not isinstance(header, dict):
                raise ArrayFileError("not a .safetensors file: its header is not a JSON "
                                     "object")
            self.metadata = header.pop("__metadata__", None) or {}
            self._start = 8 + length
            data_size = size - self._start
            self.members = {}
            self._raw = {}
            spans = []
            for key, entry in header.items():
                member, (begin, end), raw_dtype = _safetensors_member(key, entry, data_size)
                self.members[key] = member
                self._raw[key] = (begin, end, raw_dtype)
                spans.append((begin, end, key))
            spans.sort()
            for (b1, e1, k1), (b2, e2, k2) in zip(spans, spans[1:]):
                if b2 < e1:
                    raise ArrayFileError(f"tensors `{shown(k1)}` and `{shown(k2)}` overlap "
                                         f"in the data (bytes {b1}-{e1} and {b2}-{e2})")
            self._np = np
        except BaseException:
            self._file.close()
            raise

    def read(self, keys=None) -> dict:
        np = self._np
        keys = list(self.members) if keys is None else list(keys)
        _check_memory([self.members[k] for k in keys])
        out = {}
        for key in keys:
            begin, end, raw_dtype = self._raw[key]
            member = self.members[key]
            self._file.seek(self._start + begin)
            data = bytearray(end - begin)  # one allocation, filled in place
            if self._file.readinto(data) != end - begin:
                raise ArrayFileError(f"tensor `{shown(key)}` is truncated")
            array = np.frombuffer(data, dtype=raw_dtype).reshape(member.shape)
            if raw_dtype == "<u2" and member.dtype == np.float32:  # bfloat16
                array = (array.astype(np.uint32) << 16).view(np.float32)
            out[key] = array
        return out

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _safetensors_member(key, entry, data_size: int):
    """One header entry as a `Member`, its offsets and the dtype its bytes are read as."""
    import numpy as np

    name = f"tensor `{shown(str(key))}`"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise ArrayFileError(f"{name} has no dtype, shape and data_offsets in the header")
    code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if code not in _SAFETENSORS_DTYPES:
        known = ", ".join(_SAFETENSORS_DTYPES)
        raise ArrayFileError(f"{name} has dtype {shown(repr(code))}; cnnc reads {known}")
    if (not isinstance(shape, list) or len(shape) > 64
            or not all(type(s) is int and s >= 0 for s in shape)):
        raise ArrayFileError(f"{name} declares shape {shown(repr(shape))}; expected at most "
                             "64 whole numbers >= 0")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(o) is int and o >= 0 for o in offsets)
            or offsets[0] > offsets[1]):
        raise ArrayFileError(f"{name} has data_offsets {shown(repr(offsets))}; expected "
                             "[begin, end], 0 <= begin <= end")
    raw_dtype = np.dtype(_SAFETENSORS_DTYPES[code])
    dtype = np.dtype(np.float32) if code == "BF16" else raw_dtype
    count = 1
    for d in shape:
        count *= d
    begin, end = offsets
    if end - begin != count * raw_dtype.itemsize:
        raise ArrayFileError(f"{name} declares {list(shape)} {code.lower()} "
                             f"({format_bytes(count * raw_dtype.itemsize)}), but its offsets "
                             f"span {format_bytes(end - begin)}")
    if end > data_size:
        raise ArrayFileError(f"{name} ends at byte {end:,} of the data, but the file holds "
                             f"only {data_size:,}")
    member = Member(str(key), tuple(shape), dtype, False, 0, end - begin)
    return member, (begin, end), raw_dtype


class TorchCheckpoint:
    """A PyTorch checkpoint (``torch.save`` of a state_dict, or of a dict holding one under
    ``state_dict``, ``model_state_dict``, ``model`` or ``module``), loaded with
    ``torch.load(weights_only=True)``: tensors, numbers and containers only, never code.
    Its data's size is checked against the memory there is before it is loaded. Tensors
    become NumPy arrays (bfloat16 as float32); PyTorch's ``num_batches_tracked`` counters
    are kept (the matching leaves them out), and a ``module.`` prefix on every key
    (``DataParallel``) is dropped."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            import torch
        except ImportError:
            raise ArrayFileError("a PyTorch checkpoint; reading it needs PyTorch: "
                                 "pip install torch") from None
        _check_checkpoint_size(self.path)
        try:
            loaded = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many kinds for a bad or unsafe file
            text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if "weights_only" in str(err) or "Unsupported global" in str(err):
                raise ArrayFileError("a PyTorch checkpoint that holds Python objects other "
                                     "than tensors (a pickled model?); cnnc loads only "
                                     "tensors: save model.state_dict() instead") from None
            raise ArrayFileError(f"not a PyTorch checkpoint that loads: {text}") from None
        state = _state_dict_in(loaded)
        self.arrays = {}
        for key, value in state.items():
            if value.dtype == torch.bfloat16:
                value = value.float()
            if value.is_complex() or not (value.is_floating_point()
                                          or value.dtype in (torch.int64, torch.int32,
                                                             torch.int16, torch.int8,
                                                             torch.uint8, torch.bool)):
                raise ArrayFileError(f"tensor `{shown(key)}` has dtype {value.dtype}; "
                                     "cnnc reads integers and floating-point numbers")
            self.arrays[key] = value.detach().contiguous().numpy()
        if self.arrays and all(k.startswith("module.") for k in self.arrays):
            self.arrays = {k[len("module."):]: v for k, v in self.arrays.items()}
        self.members = {k: Member(k, tuple(v.shape), v.dtype, False, 0, v.nbytes)
                        for k, v in self.arrays.items()}

    def read(self, keys=None) -> dict:
        keys = list(self.members) if keys is None else list(keys)
        return {k: self.arrays[k] for k in keys}

    def close(self) -> None:
        self.arrays = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _check_checkpoint_size(path: str) -> None:
    """Refuse a zip-format checkpoint whose stored tensors exceed the memory available."""
    try:
        with zipfile.ZipFile(path) as zf:
            total = sum(info.file_size for info in zf.infolist()
                        if "/data/" in info.filename)
    except _ZIP_ERRORS:
        return  # the legacy format, or not a checkpoint: torch.load says which
    available = available_memory()
    if available is not None and total > available:
        raise ArrayFileError(f"its tensors take {format_bytes(total)}, more than the "
                             f"{format_bytes(available)} of memory available")


def _state_dict_in(loaded) -> dict:
    """The dict of tensors a checkpoint holds (``{"state_dict": {...}, "epoch": 3}`` too)."""
    import torch

    def tensors_only(d):
        return isinstance(d, dict) and d and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())

    if tensors_only(loaded):
        return loaded
    if isinstance(loaded, dict):
        for name in ("state_dict", "model_state_dict", "model", "module", "net"):
            if tensors_only(loaded.get(name)):
                return loaded[name]
        keys = ", ".join(shown(str(k)) for k in list(loaded)[:8])
        raise ArrayFileError(f"a PyTorch checkpoint whose dict ({keys}) is not a state_dict "
                             "of tensors and holds none under state_dict, model_state_dict "
                             "or model")
    raise ArrayFileError(f"a PyTorch checkpoint holding a {type(loaded).__name__}, not a "
                         "state_dict (a dict of tensors)")


def weight_format(path) -> str:
    """``npz``, ``safetensors`` or ``torch``: the kind of weight file at ``path``, from its
    first bytes; the extension ``.safetensors`` says it outright, and ``.pt``/``.pth``
    breaks the tie between an .npz and a zip checkpoint."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        return "safetensors"
    try:
        with open(path, "rb") as f:
            _require_seekable(f)
            start = f.read(9)
    except OSError as err:
        raise ArrayFileError(err.strerror or str(err)) from None
    if not start:
        raise ArrayFileError("the file is empty")
    if start.startswith(_ZIP_MAGIC):
        if path.endswith((".pt", ".pth", ".bin", ".ckpt")):
            return "torch"
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except _ZIP_ERRORS:
            return "npz"
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        return "torch" if any(n.endswith("data.pkl") for n in names) else "npz"
    if start[:1] == b"\x80":  # a pickle: PyTorch's legacy checkpoint format
        return "torch"
    if len(start) == 9 and start[8:9] == b"{":
        return "safetensors"
    if start.startswith(_MAGIC):
        raise ArrayFileError("a .npy file (one array), not a weight file of named arrays")
    raise ArrayFileError("not a weight file cnnc reads (.npz, .safetensors or a PyTorch "
                         ".pt/.pth checkpoint)")


def open_weights(path):
    """The weight file at ``path`` opened for reading: an `NpzFile`, a `SafetensorsFile` or
    a `TorchCheckpoint`, each with ``members`` and ``read``."""
    kind = weight_format(path)
    if kind == "safetensors":
        return SafetensorsFile(path)
    if kind == "torch":
        return TorchCheckpoint(path)
    return NpzFile(path)


def write_weights(path, state: dict) -> None:
    """Write ``state`` (key -> NumPy array) atomically, in the format ``path``'s extension
    names: ``.safetensors`` (needs the safetensors package), ``.pt``/``.pth`` (needs
    PyTorch), else an .npz."""
    import numpy as np

    path = os.fspath(path)
    if path.endswith(".safetensors"):
        try:
            from safetensors.numpy import save
        except ImportError:
            raise ArrayFileError("writing .safetensors needs the safetensors package: "
                                 "pip install 'cnnc[interop]'") from None
        data = save({k: np.ascontiguousarray(v) for k, v in state.items()},
                    metadata={"format": "np", "producer": "cnnc"})
        write_atomically(path, lambda f: f.write(data))
    elif path.endswith((".pt", ".pth")):
        try:
            import torch
        except ImportError:
            raise ArrayFileError("writing a PyTorch checkpoint needs PyTorch: "
                                 "pip install torch") from None
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
        write_atomically(path, lambda f: torch.save(tensors, f))
    else:
        write_atomically(path, lambda f: np.savez(f, **state))
