"""The GPU plumbing's host-side logic (ops/gpu.py), which needs neither CuPy nor a GPU:
launch geometry, chunk sizes, argument packing, dtype rules. The activation and convolution
arguments are tested with their families (tests/gpu/test_*_gpu.py)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from cnnc.ops import gpu as cb


def test_importing_the_backend_does_not_import_cupy():
    code = ("import sys; import cnnc.runtime.cupy_backend; "
            "assert 'cupy' not in sys.modules, 'cupy imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("n, expected", [
    (1, (1, 256)), (256, (1, 256)), (257, (2, 256)), (256 * 70000, (1 << 16, 256)),
])
def test_launch_geometry(n, expected):
    assert cb.launch_geometry(n) == expected


def test_launch_geometry_custom_and_refusals():
    assert cb.launch_geometry(100, block=32, max_blocks=3) == (3, 32)
    assert cb.launch_geometry(65, block=32) == (3, 32)
    with pytest.raises(ValueError, match="at least one work item"):
        cb.launch_geometry(0)


def test_an_empty_launch_runs_nothing(monkeypatch):
    def no_kernel(*args):
        raise AssertionError("no kernel should be fetched for zero items")

    monkeypatch.setattr(cb, "kernel", no_kernel)
    cb.launch("cnnc_bias_act", np.dtype(np.float32), 0)


@pytest.mark.parametrize("n, per_sample, budget, expected", [
    (10, 100, 1000, 10),  # the whole batch fits
    (10, 100, 350, 3),  # 3 per chunk, the last one short
    (10, 5000, 1000, 1),  # one sample is over budget: still one per chunk
    (1, 100, 10 ** 9, 1),
    (4, 0, 100, 4),  # nothing per sample
])
def test_batch_chunk(n, per_sample, budget, expected):
    assert cb.batch_chunk(n, per_sample, budget) == expected


def test_batch_chunk_defaults_to_the_workspace(monkeypatch):
    monkeypatch.setattr(cb, "WORKSPACE_BYTES", 1000)
    assert cb.batch_chunk(50, 300) == 3


def test_pack_args_gives_every_scalar_its_declared_width():
    dtype = np.dtype(np.float32)
    x = np.zeros(6, np.float32)
    args = (x, x, x, 1, 6, 3, 2, 1, 0.5, 2.0, x, 1)
    packed = cb.pack_args("cnnc_bias_act", dtype, args)
    types = [type(a) for a in packed]
    assert types == [np.ndarray] * 3 + [np.int32, np.int64, np.int32, np.int64, np.int32,
                                        np.float32, np.float32, np.ndarray, np.int32]
    packed64 = cb.pack_args("cnnc_bias_act", np.dtype(np.float64),
                            (x.astype(np.float64),) * 3 + args[3:10]
                            + (x.astype(np.float64), 1))
    assert type(packed64[8]) is np.float64


def test_pack_args_refuses_what_would_read_garbage():
    dtype = np.dtype(np.float32)
    x = np.zeros(6, np.float32)
    good = [x, x, x, 1, 6, 3, 2, 1, 0.5, 2.0, x, 1]
    with pytest.raises(TypeError, match="takes 12 arguments, got 11"):
        cb.pack_args("cnnc_bias_act", dtype, good[:-1])
    wrong_dtype = list(good)
    wrong_dtype[0] = np.zeros(6)
    with pytest.raises(TypeError, match="x must be a C-contiguous float32 array"):
        cb.pack_args("cnnc_bias_act", dtype, wrong_dtype)
    strided = list(good)
    strided[1] = np.zeros(12, np.float32)[::2]
    with pytest.raises(TypeError, match="y must be a C-contiguous"):
        cb.pack_args("cnnc_bias_act", dtype, strided)
    too_big = list(good)
    too_big[5] = 1 << 31  # channels is an int
    with pytest.raises(OverflowError, match="channels=2147483648 does not fit an int32"):
        cb.pack_args("cnnc_bias_act", dtype, too_big)
    index = np.zeros(6, np.int64)  # maxpool's argmax is int32
    with pytest.raises(TypeError, match="argmax must be a C-contiguous int32 array"):
        cb.pack_args("cnnc_maxpool_forward", dtype,
                     [x, x, index, 1] + [6] * 13 + [0.0])


@pytest.mark.parametrize("dtypes, expected", [
    ((np.float32,), np.float32), ((np.float32, np.float64), np.float64),
    ((np.int64,), np.float64), ((np.int32, np.float32), np.float64),
    ((np.float16,), None), ((np.uint8,), np.float64),
])
def test_compute_dtype(dtypes, expected):
    got = cb.compute_dtype(*[np.dtype(d) for d in dtypes])
    assert got == (None if expected is None else np.dtype(expected))
