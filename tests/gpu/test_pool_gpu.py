"""The pooling family's GPU kernels (ops/pool.py) against its NumPy kernels and oracles.

Every test takes the ``device`` fixture (``conftest.py``): ``cupy`` runs on a CUDA device
(marked ``gpu``), ``emulated`` runs the same CUDA text compiled for the CPU on NumPy arrays.
The global pools have no kernels of their own: the generic ones run on device arrays, as do
the windowed pools for dtypes other than float32 and float64.

Ported from the pooling parts of tests/gpu/test_cupy_backend.py and test_host_logic.py.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cnnc.ops import gpu
from cnnc.ops import pool

PRIMS = {p.name: p for p in pool.PRIMITIVES}
MAX = PRIMS["maxpool2d"]
AVG = PRIMS["avgpool2d"]
GAVG = PRIMS["global_avgpool"]
GMAX = PRIMS["global_maxpool"]

DTYPES = [np.float32, np.float64]
TOLERANCES = {
    np.dtype(np.float32): dict(rtol=1e-4, atol=1e-4),
    np.dtype(np.float64): dict(rtol=1e-9, atol=1e-10),
}


def close(device, actual, expected, dtype=None):
    """``actual`` (on the device) equals ``expected`` within the tolerance of ``dtype``
    (the expected dtype when not given), scaled to the size of the values."""
    actual = device.get(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape
    dtype = np.dtype(dtype or expected.dtype)
    assert actual.dtype == dtype
    tol = TOLERANCES[dtype]
    scale = max(1.0, float(np.nanmax(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale)


def distinct(rng, shape, dtype=np.float64):
    """Values 0.01 apart in random order: no ties."""
    n = int(np.prod(shape))
    return ((rng.permutation(n) - n / 2 + 0.5) * 0.01).reshape(shape).astype(dtype)


def _check(device, prim, x, attrs, exact):
    """The GPU kernel computes what the NumPy kernel computes, or raises its error."""
    try:
        expected, error = prim.kernel(x, **attrs), None
    except ValueError as err:
        expected, error = None, str(err)
    if error is not None:
        with pytest.raises(ValueError) as raised:
            prim.gpu_kernel(device.put(x), **attrs)
        assert str(raised.value) == error
        return
    actual = prim.gpu_kernel(device.put(x), **attrs)
    if exact:
        got = device.get(actual)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
    else:
        close(device, actual, expected)


# ---------------------------------------------------------------- inference

POOL_KERNELS = [2, 3, (2, 3)]
POOL_STRIDES = [None, 1, 2]
POOL_PADS = [0, 1, (1, 0, 0, 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", POOL_KERNELS)
@pytest.mark.parametrize("ceil", [False, True])
def test_maxpool2d_matches_numpy(device, rng, dtype, kernel, ceil):
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    for stride, pad, dilation in itertools.product(POOL_STRIDES, POOL_PADS, [1, 2, (1, 2)]):
        attrs = dict(kernel=kernel, stride=stride, pad=pad, dilation=dilation, ceil=ceil)
        _check(device, MAX, x, attrs, exact=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool2d_ties_nan_and_minus_inf(device, rng, dtype):
    attrs = dict(kernel=3, stride=2, pad=1, dilation=1, ceil=True)
    ties = rng.integers(0, 3, (2, 2, 6, 7)).astype(dtype)
    _check(device, MAX, ties, attrs, exact=True)
    with_nan = rng.standard_normal((2, 2, 6, 7)).astype(dtype)
    with_nan[0, 0, 1, 1] = np.nan
    with_nan[1, 1, 4, 5] = np.nan
    _check(device, MAX, with_nan, attrs, exact=True)
    minus_inf = np.full((1, 1, 4, 4), -np.inf, dtype=dtype)
    _check(device, MAX, minus_inf, attrs, exact=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", [2, 3, (3, 2)])
@pytest.mark.parametrize("ceil", [False, True])
@pytest.mark.parametrize("count_pad", [True, False])
def test_avgpool2d_matches_numpy(device, rng, dtype, kernel, ceil, count_pad):
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    for stride, pad in itertools.product(POOL_STRIDES, [0, 1, (1, 0, 1, 1)]):
        attrs = dict(kernel=kernel, stride=stride, pad=pad, ceil=ceil, count_pad=count_pad)
        _check(device, AVG, x, attrs, exact=False)


def test_gpu_kernels_refuse_what_numpy_refuses(device):
    for prim, attrs in ((MAX, dict(kernel=2)), (AVG, dict(kernel=2))):
        for x, bad in ((np.zeros((2, 3, 4)), {}), (np.zeros((1, 1, 2, 6)), dict(kernel=3)),
                       (np.zeros((1, 1, 4, 4)), dict(stride=0))):
            _check(device, prim, x, dict(attrs, **bad), exact=True)


def test_generic_kernels_run_on_device_arrays(device, rng):
    """What the backend hands to the generic kernels: other dtypes, and the global pools."""
    integers = rng.integers(-50, 50, (2, 2, 6, 7)).astype(np.int32)
    attrs = dict(kernel=3, stride=2, pad=1, dilation=1, ceil=True)
    got = device.get(MAX.kernel(device.put(integers), **attrs))
    assert got.dtype == np.int32  # stays int32
    np.testing.assert_array_equal(got, MAX.kernel(integers, **attrs))
    x = rng.integers(-9, 9, (2, 2, 5, 5))
    attrs = dict(kernel=2, stride=2, pad=1, ceil=True, count_pad=False)
    close(device, AVG.kernel(device.put(x), **attrs), AVG.kernel(x, **attrs), np.float64)
    for dtype in DTYPES:
        x = rng.standard_normal((2, 6, 3, 4)).astype(dtype)
        for prim in (GAVG, GMAX):
            assert prim.gpu_kernel is None
            close(device, prim.kernel(device.put(x)), prim.kernel(x))


# ---------------------------------------------------------------- training


def train_step(device, prim, x, attrs, dy):
    """The GPU forward with ``train=True`` and its backward; NumPy results back."""
    y, saved = prim.gpu_forward(device.put(x), train=True, rng=None, **attrs)
    gxs, gps = prim.gpu_backward(saved, device.put(dy))
    return device.get(y), [device.get(g) for g in gxs], list(gps)


def maxpool_oracle(x, dy, kernel, stride, pad, dilation, out_hw):
    """Each window's gradient goes to its first real cell holding the maximum."""
    kh, kw = kernel
    top, _, left, _ = pad
    gx = np.zeros(x.shape)
    n, c, h, w = x.shape
    for b, ch, oh, ow in itertools.product(range(n), range(c), range(out_hw[0]),
                                           range(out_hw[1])):
        best = None
        for i, j in itertools.product(range(kh), range(kw)):
            r = oh * stride[0] - top + i * dilation[0]
            s = ow * stride[1] - left + j * dilation[1]
            if 0 <= r < h and 0 <= s < w and (best is None or x[b, ch, r, s] > x[best]):
                best = (b, ch, r, s)
        if best is not None:
            gx[best] += dy[b, ch, oh, ow]
    return gx


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride, pad, dilation, ceil", [
    ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), True),
    ((2, 2), (1, 1), (1, 0, 0, 1), (2, 2), False),
    ((2, 3), (2, 1), (0, 0, 1, 1), (1, 2), True),
    ((3, 3), (1, 1), (0, 0, 0, 0), (1, 1), False),  # overlapping windows
])
@pytest.mark.parametrize("ties", [False, True])
def test_maxpool2d_grads_match_oracle(device, rng, dtype, kernel, stride, pad, dilation, ceil,
                                      ties):
    shape = (2, 3, 7, 6)
    x = rng.integers(0, 3, shape).astype(dtype) if ties else distinct(rng, shape, dtype)
    attrs = dict(kernel=kernel, stride=stride, pad=pad, dilation=dilation, ceil=ceil)
    y_ref = MAX.kernel(x, **attrs)
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    y, (gx,), gps = train_step(device, MAX, x, attrs, dy)
    assert gps == []
    np.testing.assert_array_equal(y, y_ref)
    expected = maxpool_oracle(x, dy.astype(np.float64), kernel, stride, pad, dilation,
                              y_ref.shape[2:])
    close(device, gx, expected, dtype)


def test_maxpool2d_saves_first_max_plane_indices(device):
    x = np.array([[[[1.0, 3.0, 3.0], [0.0, 3.0, 2.0], [5.0, 5.0, -1.0]]]])
    _, saved = MAX.gpu_forward(device.put(x), kernel=2, stride=1, pad=1, dilation=1,
                               ceil=False)
    argmax = device.get(saved["argmax"])
    assert argmax.dtype == np.int32
    # 4x4 windows starting at rows/cols -1, 0, 1, 2; padding never wins, a tie goes to
    # the first cell in row-major window order
    expected = [[0, 1, 1, 2], [0, 1, 1, 2], [6, 6, 7, 5], [6, 6, 7, 8]]
    np.testing.assert_array_equal(argmax[0, 0], expected)


def linear_pool_oracle(prim, x, dy, attrs):
    """The adjoint of a linear pool from one-hot planes: ``gx[n, c] = J^T dy[n, c]``."""
    n, c, h, w = x.shape
    basis = np.eye(h * w).reshape(h * w, 1, h, w)
    rows = prim.kernel(basis, **attrs)[:, 0]  # (HW, Ho, Wo)
    return np.einsum("khw,nchw->nck", rows, dy).reshape(x.shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride, pad, ceil", [
    (3, 2, 1, True), (2, None, 0, False), ((3, 2), (1, 2), (1, 0, 1, 1), True), (3, 1, 1, False),
])
@pytest.mark.parametrize("count_pad", [True, False])
def test_avgpool2d_grads_match_oracle(device, rng, dtype, kernel, stride, pad, ceil, count_pad):
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    attrs = dict(kernel=kernel, stride=stride, pad=pad, ceil=ceil, count_pad=count_pad)
    y_ref = AVG.kernel(x, **attrs)
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    y, (gx,), gps = train_step(device, AVG, x, attrs, dy)
    assert gps == []
    close(device, y, y_ref)
    close(device, gx, linear_pool_oracle(AVG, x, dy.astype(np.float64), attrs), dtype)


def test_backward_checks_the_shape_of_dy(device, rng):
    x = device.put(rng.standard_normal((2, 3, 6, 6)))
    cases = [
        (MAX, dict(kernel=2, stride=2, pad=0, dilation=1, ceil=False)),
        (AVG, dict(kernel=2, stride=2, pad=0, ceil=False, count_pad=True)),
    ]
    for prim, attrs in cases:
        y, saved = prim.gpu_forward(x, train=True, rng=None, **attrs)
        bad = device.put(np.zeros((1,) + tuple(y.shape)[1:]))
        with pytest.raises(ValueError, match="dy must have the forward output's shape"):
            prim.gpu_backward(saved, bad)


def _generic_cases(rng, dtype):
    x = rng.standard_normal((3, 4, 6, 5)).astype(dtype)
    d = distinct(rng, (3, 4, 6, 5), dtype)
    return [
        (MAX, d, dict(kernel=3, stride=2, pad=1, dilation=1, ceil=True)),
        (MAX, d, dict(kernel=2, stride=1, pad=(1, 0, 0, 1), dilation=2, ceil=False)),
        (AVG, x, dict(kernel=3, stride=2, pad=1, ceil=True, count_pad=False)),
        (AVG, x, dict(kernel=2, stride=None, pad=0, ceil=False, count_pad=True)),
        (GAVG, x, {}),
        (GMAX, d, {}),
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("train", [True, False])
def test_grads_match_the_generic_numpy_pair(device, rng, dtype, train):
    """The GPU pair (the generic pair on device arrays for the global pools) against the
    generic pair on NumPy arrays."""
    for prim, x, attrs in _generic_cases(rng, dtype):
        where = f"{prim.name} {attrs}"
        y_ref, saved_ref = prim.forward(x, train=train, rng=None, **attrs)
        dy = rng.standard_normal(np.shape(y_ref)).astype(dtype)
        (gx_ref,), gps_ref = prim.backward(saved_ref, dy)
        forward = prim.gpu_forward or prim.forward
        backward = prim.gpu_backward or prim.backward
        d_dy = device.put(dy)
        y, saved = forward(device.put(x), train=train, rng=None, **attrs)
        (gx,), gps = backward(saved, d_dy)
        close(device, y, y_ref)
        assert tuple(gps) == tuple(gps_ref) == (), where
        close(device, gx, gx_ref)
        assert not device.xp.shares_memory(gx, d_dy), where


# ---------------------------------------------------------------- out= (the memory plan)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("prim, attrs", [
    (MAX, dict(kernel=3, stride=2, pad=1, dilation=1, ceil=True)),
    (AVG, dict(kernel=3, stride=2, pad=1, ceil=True, count_pad=False)),
])
def test_out_is_written_contiguous_or_as_a_channel_slice(device, rng, dtype, prim, attrs):
    x = rng.standard_normal((2, 4, 6, 5)).astype(dtype)
    expected = prim.kernel(x, **attrs)
    shape = expected.shape
    # a C-contiguous target: written directly and returned
    out = device.put(np.full(shape, np.nan, dtype=dtype))
    y = prim.gpu_kernel(device.put(x), out=out, **attrs)
    assert y is out
    close(device, out, expected)
    # a channel slice of a larger buffer (a concat's input), not C-contiguous
    wide = device.put(np.full((shape[0], shape[1] + 3) + shape[2:], 7.0, dtype=dtype))
    part = wide[:, 1:1 + shape[1]]
    prim.gpu_kernel(device.put(x), out=part, **attrs)
    close(device, part, expected)
    edges = device.get(wide)
    assert (edges[:, :1] == 7).all() and (edges[:, 1 + shape[1]:] == 7).all()
    other = np.float64 if dtype == np.float32 else np.float32
    with pytest.raises(ValueError, match="out must be"):
        prim.gpu_kernel(device.put(x), out=device.put(np.empty(shape, other)), **attrs)


# ---------------------------------------------------------------- host logic


def test_maxpool_argmax_must_be_int32():
    dtype = np.dtype(np.float32)
    x = np.zeros(6, np.float32)
    index = np.zeros(6, np.int64)  # maxpool's argmax is int32
    with pytest.raises(TypeError, match="argmax must be a C-contiguous int32 array"):
        gpu.pack_args("cnnc_maxpool_forward", dtype, [x, x, index, 1] + [6] * 13 + [0.0])


def test_primitives_name_their_gpu_kernels():
    for prim in (MAX, AVG):
        assert prim.gpu_kernel is not None and prim.accepts_out
        assert prim.gpu_forward is not None and prim.gpu_backward is not None
    for prim in (GAVG, GMAX):
        assert prim.gpu_kernel is prim.gpu_forward is prim.gpu_backward is None


# ---------------------------------------------------------------- 1-D and 3-D pools (spec 9)
# The 1-D pools run on the 2-D CUDA kernels through height-1 views; the 3-D ones are the
# generic NumPy-API kernels on device arrays.

MAX1 = PRIMS["maxpool1d"]
AVG1 = PRIMS["avgpool1d"]
MAX3 = PRIMS["maxpool3d"]
AVG3 = PRIMS["avgpool3d"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_1d_pools_match_numpy(device, rng, dtype):
    for k, s, p, d, ceil in itertools.product([2, 3], [None, 1, 2], [0, 1], [1, 2],
                                              [False, True]):
        x = distinct(rng, (2, 3, 11), dtype)
        _check(device, MAX1, x, dict(kernel=k, stride=s, pad=p, dilation=d, ceil=ceil),
               exact=True)
        if d == 1:
            for count_pad in (True, False):
                _check(device, AVG1, x, dict(kernel=k, stride=s, pad=p, ceil=ceil,
                                             count_pad=count_pad), exact=False)
    _check(device, MAX1, distinct(rng, (2, 3, 3), dtype), dict(kernel=5), exact=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("train", [True, False])
def test_nd_pool_grads_match_numpy(device, rng, dtype, train):
    from cnnc.runtime import cupy_backend
    from cnnc.ops import Op

    x1 = rng.standard_normal((2, 3, 11)).astype(dtype)
    x3 = rng.standard_normal((2, 3, 5, 6, 4)).astype(dtype)
    cases = [
        (MAX1, distinct(rng, (2, 3, 11), dtype),
         dict(kernel=3, stride=2, pad=1, dilation=2, ceil=True)),
        (AVG1, x1, dict(kernel=3, stride=2, pad=1, ceil=True, count_pad=False)),
        (MAX3, distinct(rng, (2, 3, 5, 6, 4), dtype),
         dict(kernel=(3, 2, 2), stride=(2, 1, 2), pad=(1, 0, 1), dilation=1, ceil=True)),
        (AVG3, x3, dict(kernel=2, stride=1, pad=1, ceil=False, count_pad=True)),
    ]
    for prim, x, attrs in cases:
        y_ref, saved_ref = prim.forward(x, train=train, rng=None, **attrs)
        dy = rng.standard_normal(y_ref.shape).astype(dtype)
        (gx_ref,), _ = prim.backward(saved_ref, dy)
        forward, backward = cupy_backend.GRADS[Op(prim.name)]
        y, saved = forward(device.put(x), train=train, rng=None, **attrs)
        d_dy = device.put(dy)
        (gx,), gps = backward(saved, d_dy)
        close(device, y, y_ref)
        close(device, gx, gx_ref)
        assert tuple(gps) == () and not device.xp.shares_memory(gx, d_dy)
        # inference, into a channel slice of a wider buffer
        want = prim.kernel(x, **{k: v for k, v in attrs.items()})
        wide = device.put(np.full((2, 5) + want.shape[2:], 7.0, dtype=dtype))
        part = wide[:, 1:4]
        cupy_backend.KERNELS[Op(prim.name)](device.put(x), out=part, **attrs)
        close(device, part, want)


def test_nd_pool_gpu_kernels():
    assert MAX1.gpu_kernel is pool.gpu_maxpool1d and AVG1.gpu_kernel is pool.gpu_avgpool1d
    assert MAX3.gpu_kernel is AVG3.gpu_kernel is None  # the generic kernels on CuPy arrays
