"""Writing files atomically: a reader, a crash or a full disk never sees half a file."""

from __future__ import annotations

import os
import tempfile
import zipfile


def write_atomically(path, write) -> None:
    """Call ``write(f)`` on a temporary file in ``path``'s folder, flush it to disk, give it
    the mode a new file would get (``0666 & ~umask``), then rename it onto ``path``.

    On any failure, Ctrl-C included, the temporary file is removed, ``path`` is left as it
    was, and the exception propagates (an OSError for a folder that cannot be written).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".cnnc-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_npz(path) -> dict:
    """Every array of an .npz file, loaded, without pickles. A file that cannot be read or is
    not an .npz raises ValueError with the reason in words (``No such file or directory``)."""
    import numpy as np

    try:
        with np.load(os.fspath(path), allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except OSError as err:
        raise ValueError(err.strerror or str(err)) from None
    except (ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"not an .npz file ({err})") from None


def weight_problems(expected: dict, arrays: dict) -> list[str]:
    """Every way ``arrays`` (key -> array) fails to fit ``expected`` (key -> shape):
    missing keys, unexpected keys and wrong shapes, each listed with its shapes."""
    problems = []
    for key in sorted(set(expected) - set(arrays)):
        problems.append(f"missing {key} {list(expected[key])}")
    for key in sorted(set(arrays) - set(expected)):
        problems.append(f"unexpected {key} {list(arrays[key].shape)}")
    for key in sorted(set(expected) & set(arrays)):
        if tuple(arrays[key].shape) != tuple(expected[key]):
            problems.append(f"{key} has shape {list(arrays[key].shape)}, expected "
                            f"{list(expected[key])}")
    return problems
