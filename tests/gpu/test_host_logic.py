"""The CuPy backend's host-side logic, which needs neither CuPy nor a GPU: launch geometry,
chunk sizes, argument packing, dtype rules, activation and convolution arguments."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from cnnc.runtime import cuda_kernels
from cnnc.runtime import cupy_backend as cb
from cnnc.runtime.numpy_backend import KERNELS as NUMPY
from cnnc.runtime.ops import Op


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

    monkeypatch.setattr(cb, "_kernel", no_kernel)
    cb._launch("cnnc_bias_act", np.dtype(np.float32), 0)


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


def test_act_spec_defaults_and_codes():
    codes = cuda_kernels.ACTIVATION_CODES
    assert cb.act_spec(None).identity
    assert cb.act_spec("relu").code == codes["relu"]
    assert cb.act_spec("leaky_relu").alpha == 0.01
    assert cb.act_spec(("leaky_relu", {"alpha": 0.3})).alpha == 0.3
    assert cb.act_spec("elu").alpha == 1.0
    assert cb.act_spec("swish").beta == 1.0
    assert cb.act_spec(("silu", {"beta": 2.0})).code == codes["swish"]
    assert cb.act_spec(("silu", {"beta": 2.0})).beta == 2.0
    slopes = np.ones(3)
    assert cb.act_spec(("prelu", {"weight": slopes})).weight is slopes
    assert cb.act_spec(("relu", None)).code == codes["relu"]


def test_act_spec_errors_match_the_numpy_kernels():
    x = np.zeros((2, 3))
    for args in [dict(name="gelu"), dict(name="prelu")]:
        with pytest.raises(ValueError) as numpy_error:
            NUMPY[Op.ACTIVATION](x, **args)
        with pytest.raises(ValueError) as ours:
            cb.make_act_spec(args["name"])
        assert str(ours.value) == str(numpy_error.value)


def _geometry(x_shape, w_shape, **attrs):
    defaults = dict(stride=1, pad=0, dilation=1, groups=1)
    defaults.update(attrs)
    return cb.conv_geometry(np.empty(x_shape), np.empty(w_shape), None, **defaults)


def test_conv_geometry_sizes_and_paths():
    g = _geometry((2, 4, 7, 6), (6, 2, 3, 3), stride=(2, 1), pad=(1, 2, 0, 1), dilation=(1, 2),
                  groups=2)
    assert (g.ho, g.wo) == (4, 3)  # floor((7+3-3)/2)+1, floor((6+1-5)/1)+1
    assert (g.cg, g.og, g.k, g.spatial) == (2, 3, 18, 12)
    assert not g.pointwise and not g.depthwise
    assert g.window_args() == (3, 3, 2, 1, 1, 0, 1, 2, 4, 3)
    assert _geometry((1, 4, 5, 5), (8, 4, 1, 1)).pointwise
    assert not _geometry((1, 4, 5, 5), (8, 4, 1, 1), stride=2).pointwise
    assert not _geometry((1, 4, 5, 5), (8, 4, 1, 1), pad=(0, 0, 0, 1)).pointwise
    assert _geometry((1, 4, 5, 5), (8, 1, 3, 3), groups=4).depthwise
    assert not _geometry((1, 4, 5, 5), (8, 1, 1, 1), groups=4).depthwise  # a 1x1 is a GEMM
    assert not _geometry((1, 1, 5, 5), (2, 1, 3, 3)).depthwise  # one group: im2col


def test_conv_geometry_errors_match_the_numpy_kernel():
    x = np.zeros((1, 4, 5, 5))
    for w, attrs in [(np.zeros((6, 3, 3, 3)), {}), (np.zeros((6, 4, 3, 3)), dict(groups=3)),
                     (np.zeros((6, 4, 3, 3)), dict(dilation=0)),
                     (np.zeros((6, 4, 7, 3)), {})]:
        with pytest.raises(ValueError) as numpy_error:
            NUMPY[Op.CONV2D](x, w, **attrs)
        with pytest.raises(ValueError) as ours:
            cb.conv_geometry(x, w, None, attrs.get("stride", 1), attrs.get("pad", 0),
                             attrs.get("dilation", 1), attrs.get("groups", 1))
        assert str(ours.value) == str(numpy_error.value)


def test_grads_table_defers_to_the_generic_one_lazily():
    own = {Op.CONV2D, Op.MAXPOOL2D, Op.AVGPOOL2D, Op.ACTIVATION, Op.DENSE}
    for op, (forward, backward) in cb.GRADS.items():
        if op in own:
            assert forward.__module__ == cb.__name__
        else:
            assert forward.__name__ == f"{op.value}_forward"
