"""The pooling family (ops/pool.py): layers, kernels, training pairs, references, ONNX and
PyTorch, over parameter grids and the corners the grids do not reach.

Ported from tests/runtime/test_pool.py and the pooling parts of test_torch_oracle.py,
test_properties.py, test_onnx.py, tests/train/test_grads_{fd,torch,rules,table}.py and
tests/compiler/test_{diagnostics,shapes}.py (the checker's pooling rules, here through the
layer hooks).
"""

from __future__ import annotations

import itertools
import re
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ops_support import StepGraph

from cnnc.compiler.graph import Node
from cnnc.dsl.diagnostics import Span
from cnnc.ops import pool
from cnnc.ops.base import ExportError
from cnnc.ops.window import pool_out

PRIMS = {p.name: p for p in pool.PRIMITIVES}
LAYERS = {layer.name: layer for layer in pool.LAYERS}
MAX = PRIMS["maxpool2d"]
AVG = PRIMS["avgpool2d"]
GAVG = PRIMS["global_avgpool"]
GMAX = PRIMS["global_maxpool"]

DTYPES = [np.float32, np.float64]
# float32 kernels sum up to a few hundred products
TOLERANCES = {
    np.dtype(np.float32): dict(rtol=2e-4, atol=2e-5),
    np.dtype(np.float64): dict(rtol=1e-10, atol=1e-12),
}


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


@pytest.fixture
def assert_close():
    """``assert_close(actual, expected)``: same shape, values within the tolerance of the
    actual array's dtype."""

    def check(actual, expected, dtype=None):
        actual = np.asarray(actual)
        expected = np.asarray(expected)
        assert actual.shape == expected.shape
        tol = TOLERANCES[np.dtype(dtype or actual.dtype)]
        np.testing.assert_allclose(actual, expected, **tol)

    return check


def _pad_fits(kernel, pad, dilation=1):
    """PyTorch's rule: pad at most half the (dilated) window, so no window is all padding."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    if isinstance(pad, int):
        pad = (pad,) * 4
    elif len(pad) == 2:
        pad = (pad[0], pad[0], pad[1], pad[1])
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    return (max(pad[:2]) <= (dh * (kh - 1) + 1) // 2
            and max(pad[2:]) <= (dw * (kw - 1) + 1) // 2)


def _distinct(rng, shape):
    """Values 0.01 apart in random order: no two elements tie within the step."""
    size = int(np.prod(shape))
    return (rng.permutation(size) - size / 2).reshape(shape) * 0.01


# ---------------------------------------------------------------- kernels against the reference

KERNELS_2D = [2, 3, (3, 2), (1, 4)]
STRIDES = [None, 1, 2, (3, 2)]
PADS = [0, 1, (1, 0)]
HW = [(7, 8), (9, 7)]  # each case runs on both sizes

MAX_GRID = [
    case
    for case in itertools.product(KERNELS_2D, STRIDES, PADS, [1, 2], [False, True])
    if _pad_fits(case[0], case[2], case[3])
]
AVG_GRID = [
    case
    for case in itertools.product(KERNELS_2D, STRIDES, PADS, [False, True], [True, False])
    if _pad_fits(case[0], case[2])
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride, pad, dilation, ceil", MAX_GRID)
def test_maxpool2d_matches_reference(rng, assert_close, dtype, kernel, stride, pad, dilation,
                                     ceil):
    args = dict(kernel=kernel, stride=stride, pad=pad, dilation=dilation, ceil=ceil)
    for hw in HW:
        x = rng.standard_normal((2, 3) + hw).astype(dtype)
        y = pool.maxpool2d(x, **args)
        assert y.dtype == dtype
        assert y.flags.c_contiguous
        assert_close(y, pool.reference_maxpool2d(x, **args))


# Output rows of INFER_WIDE_POOL or more at a stride of 2 or more take the compiled kernel
# (ResNet's stem pool); it must give the NumPy path's values, bit for bit.
WIDE_GRID = [
    case
    for case in itertools.product([2, 3, (3, 2), (1, 4)], [2, (3, 2), (2, 3)], [0, 1, (1, 0)],
                                  [1, 2], [False, True])
    if _pad_fits(case[0], case[2], case[3])
]


def _numpy_maxpool2d(x, **args):
    geometry = pool._geometry(x, args["kernel"], args["stride"], args["pad"],
                              args["dilation"], args["ceil"], "maxpool2d")
    kernel, stride, dilation, pads, out_hw = geometry
    out = np.empty(x.shape[:2] + out_hw, dtype=x.dtype)
    return pool._pooled(x, kernel, stride, dilation, pads, out_hw, -np.inf, np.maximum, out)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride, pad, dilation, ceil", WIDE_GRID)
def test_wide_strided_maxpool_is_the_numpy_paths_bit_for_bit(rng, dtype, kernel, stride, pad,
                                                             dilation, ceil):
    pytest.importorskip("numba")
    args = dict(kernel=kernel, stride=stride, pad=pad, dilation=dilation, ceil=ceil)
    for hw in [(40, 100), (35, 107)]:
        x = rng.standard_normal((2, 3) + hw).astype(dtype)
        x[0, 1, 3, 5] = np.nan  # a NaN stays the maximum of every window it is in
        x[1, 2, 0, 0] = np.inf  # beside the padding
        x[1, 0, -1, -1] = -np.inf
        x[0, 2] = rng.choice(np.array([0.0, -0.0], dtype=dtype), size=hw)  # ties: which zero
        y = pool.maxpool2d(x, **args)
        assert y.shape[3] >= pool.INFER_WIDE_POOL  # (the compiled kernel's rows)
        bits = np.uint32 if dtype == np.float32 else np.uint64
        np.testing.assert_array_equal(y.view(bits), _numpy_maxpool2d(x, **args).view(bits))
        np.testing.assert_array_equal(y, pool.reference_maxpool2d(x, **args))
        wide = np.zeros((2, 7) + y.shape[2:], dtype=dtype)
        pool.maxpool2d(x, **args, out=wide[:, 2:5])  # a concat's channel slice
        np.testing.assert_array_equal(wide[:, 2:5], y)
        assert not wide[:, :2].any() and not wide[:, 5:].any()


def test_wide_strided_maxpool_of_read_only_or_foreign_byte_order_input(rng):
    """A read-only input (from Ray's object store) is copied before the compiled kernel; one
    in the other byte order, which numba does not type, takes the NumPy path."""
    x = rng.standard_normal((1, 4, 20, 80)).astype(np.float32)
    args = dict(kernel=3, stride=2, pad=1, dilation=1, ceil=False)
    want = _numpy_maxpool2d(x, **args)
    frozen = x.copy()
    frozen.flags.writeable = False
    np.testing.assert_array_equal(pool.maxpool2d(frozen, **args), want)
    swapped = x.astype(x.dtype.newbyteorder())
    np.testing.assert_array_equal(pool.maxpool2d(swapped, **args), want)


def test_wide_strided_maxpool_runs_compiled_on_each_thread_count(rng):
    pytest.importorskip("numba")
    from cnnc.runtime import threads

    x = rng.standard_normal((3, 8, 70, 80)).astype(np.float32)
    args = dict(kernel=3, stride=2, pad=1, dilation=1, ceil=False)
    want = _numpy_maxpool2d(x, **args)
    for count in (1, 2, 3):
        with threads.limit(count):
            np.testing.assert_array_equal(pool.maxpool2d(x, **args), want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride, pad, ceil, count_pad", AVG_GRID)
def test_avgpool2d_matches_reference(rng, assert_close, dtype, kernel, stride, pad, ceil,
                                     count_pad):
    args = dict(kernel=kernel, stride=stride, pad=pad, ceil=ceil, count_pad=count_pad)
    for hw in HW:
        x = rng.standard_normal((2, 3) + hw).astype(dtype)
        y = pool.avgpool2d(x, **args)
        assert y.dtype == dtype
        assert y.flags.c_contiguous
        assert_close(y, pool.reference_avgpool2d(x, **args))


def test_padding_never_wins_a_max(rng):
    x = -1.0 - rng.random((1, 2, 5, 5))  # all below zero, so zero padding would win
    y = pool.maxpool2d(x, kernel=3, stride=2, pad=1, ceil=True)
    assert (y < -1.0).all()


def test_count_pad_divisors_by_hand():
    """Ones in, so each output is (real cells) / divisor; a 4x4 input, kernel 3, stride 2,
    pad 1, ceil: windows start at -1, 1, 3 in each axis (3 starts in the input, kept)."""
    x = np.ones((1, 1, 4, 4))
    with_pad = pool.avgpool2d(x, kernel=3, stride=2, pad=1, ceil=True, count_pad=True)
    # per axis: real cells 2, 3, 1; divisor clipped to the padded input [-1, 5): 3, 3, 2
    real = np.array([2, 3, 1])
    clipped = np.array([3, 3, 2])
    np.testing.assert_allclose(with_pad[0, 0], np.outer(real, real) / np.outer(clipped, clipped))
    without_pad = pool.avgpool2d(x, kernel=3, stride=2, pad=1, ceil=True, count_pad=False)
    np.testing.assert_allclose(without_pad[0, 0], np.ones((3, 3)))


def test_pools_leave_input_alone_and_return_fresh_arrays(rng):
    x = rng.standard_normal((1, 2, 4, 4))
    before = x.copy()
    for y in (pool.maxpool2d(x, kernel=1), pool.avgpool2d(x, kernel=1)):
        assert not np.shares_memory(x, y)
        y[...] = 0
    np.testing.assert_array_equal(x, before)


def test_maxpool_integer_input():
    x = np.arange(-16, 0, dtype=np.int32).reshape(1, 1, 4, 4)
    y = pool.maxpool2d(x, kernel=3, stride=2, pad=1)
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y[0, 0], [[-11, -9], [-3, -1]])


def test_avgpool_and_global_avgpool_compute_integers_in_float64():
    x = np.arange(16).reshape(1, 1, 4, 4)
    assert pool.avgpool2d(x, kernel=2).dtype == np.float64
    assert pool.global_avgpool(x).dtype == np.float64
    assert pool.global_maxpool(x).dtype == x.dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_pools(rng, assert_close, dtype):
    x = rng.standard_normal((2, 3, 5, 7)).astype(dtype)
    avg = pool.global_avgpool(x)
    top = pool.global_maxpool(x)
    assert avg.shape == top.shape == (2, 3, 1, 1)
    assert avg.dtype == top.dtype == dtype
    assert_close(avg, pool.reference_global_avgpool(x))
    assert_close(top, pool.reference_global_maxpool(x))


def test_pool_reports_output_below_one(rng):
    x = rng.standard_normal((1, 1, 2, 6))
    with pytest.raises(ValueError, match=r"maxpool2d height: output size must be at least 1"):
        pool.maxpool2d(x, kernel=3)
    with pytest.raises(ValueError, match=r"avgpool2d width: output size must be at least 1"):
        pool.avgpool2d(x[:, :, :, :1], kernel=(1, 2))


@pytest.mark.parametrize("kernel", [pool.maxpool2d, pool.avgpool2d])
def test_pools_need_four_axes(kernel):
    with pytest.raises(ValueError, match=r"input must be \[N, C, H, W\], got shape \(2, 3\)"):
        kernel(np.zeros((2, 3)), kernel=2)


@pytest.mark.parametrize("kernel", [pool.global_avgpool, pool.global_maxpool])
def test_global_pools_need_a_spatial_dim(kernel):
    """Rank-generic (spec section 9): any [N, C, ...] with a spatial dim, not [N, F]."""
    with pytest.raises(ValueError, match=r"input must be \[N, C, \.\.\.\] with at least one "
                                         r"spatial dim .*got shape \(2, 3\)"):
        kernel(np.zeros((2, 3)))


def test_window_arguments_are_checked():
    x = np.zeros((1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"maxpool2d: kernel, stride and dilation must be >= 1 "
                                         r"and pad >= 0, got kernel=\(2, 2\), stride=\(0, 1\)"):
        pool.maxpool2d(x, kernel=2, stride=(0, 1))
    with pytest.raises(ValueError, match=r"pad=\(0, 0, -1, -1\)"):
        pool.avgpool2d(x, kernel=2, pad=(0, -1))
    with pytest.raises(ValueError, match=r"kernel must be an integer or a pair"):
        pool.maxpool2d(x, kernel=(2, 2, 2))


@pytest.mark.parametrize("prim, attrs", [
    (MAX, dict(kernel=3, stride=2, pad=1, dilation=1, ceil=True)),
    (AVG, dict(kernel=3, stride=2, pad=1, ceil=True, count_pad=False)),
])
@pytest.mark.parametrize("dtype", DTYPES)
def test_out_is_written_contiguous_or_as_a_channel_slice(rng, prim, attrs, dtype, monkeypatch):
    monkeypatch.setattr(pool, "CHUNK_ELEMENTS", 40)  # several chunks per run
    x = rng.standard_normal((2, 4, 6, 5)).astype(dtype)
    expected = prim.kernel(x, **attrs)
    out = np.full(expected.shape, np.nan, dtype=dtype)
    assert prim.kernel(x, out=out, **attrs) is out
    np.testing.assert_array_equal(out, expected)
    shape = expected.shape
    wide = np.full((shape[0], shape[1] + 3) + shape[2:], 7.0, dtype=dtype)
    part = wide[:, 1:1 + shape[1]]
    prim.kernel(x, out=part, **attrs)
    np.testing.assert_array_equal(part, expected)
    assert (wide[:, :1] == 7).all() and (wide[:, 1 + shape[1]:] == 7).all()
    other = np.float64 if dtype == np.float32 else np.float32
    with pytest.raises(ValueError, match=r"out must be \[2, 4, 4, 3\]"):
        prim.kernel(x, out=np.empty(shape, other), **attrs)


# ---------------------------------------------------------------- random geometries

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def pool_cases(draw, dilated):
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if dilated else (1, 1)
    spans = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    # per side at most half the window, as PyTorch requires: no window is all padding
    pad = tuple(draw(st.integers(0, spans[i // 2] // 2)) for i in range(4))
    stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    ceil = draw(st.booleans())
    height = draw(st.integers(1, 9))
    width = draw(st.integers(1, 9))
    assume(pool_out(height, kernel[0], stride[0], pad[:2], dilation[0], ceil) >= 1)
    assume(pool_out(width, kernel[1], stride[1], pad[2:], dilation[1], ceil) >= 1)
    args = dict(kernel=kernel, stride=stride, pad=pad, ceil=ceil)
    if dilated:
        args["dilation"] = dilation
    return (2, 3, height, width), args


@SETTINGS
@given(case=pool_cases(dilated=True))
def test_maxpool2d_random_geometry(rng, assert_close, case):
    shape, args = case
    x = rng.standard_normal(shape)
    assert_close(pool.maxpool2d(x, **args), pool.reference_maxpool2d(x, **args))


@SETTINGS
@given(case=pool_cases(dilated=False), count_pad=st.booleans())
def test_avgpool2d_random_geometry(rng, assert_close, case, count_pad):
    shape, args = case
    x = rng.standard_normal(shape)
    fast = pool.avgpool2d(x, count_pad=count_pad, **args)
    assert_close(fast, pool.reference_avgpool2d(x, count_pad=count_pad, **args))


# ---------------------------------------------------------------- training: finite differences

STEP = 1e-5
FD_TOL = dict(rtol=1e-6, atol=1e-7)


def _numeric(f, a):
    """Central differences of the scalar ``f()`` with respect to every element of ``a``."""
    g = np.empty_like(a)
    for index in np.ndindex(*a.shape):
        keep = a[index]
        a[index] = keep + STEP
        up = f()
        a[index] = keep - STEP
        down = f()
        a[index] = keep
        g[index] = (up - down) / (2 * STEP)
    return g


def fd_check(prim, x, seed=0, **attrs):
    """``backward(saved, r)`` against finite differences of ``sum(forward(x) * r)``."""
    x = np.array(x, dtype=np.float64)
    y, saved = prim.forward(x, rng=None, **attrs)
    r = np.random.default_rng(seed + 1).standard_normal(y.shape)
    gxs, gps = prim.backward(saved, r)
    assert len(gxs) == 1 and gps == ()

    def f():
        return float(np.sum(prim.forward(x, rng=None, **attrs)[0] * r))

    assert gxs[0].dtype == np.float64 and gxs[0].shape == x.shape
    np.testing.assert_allclose(gxs[0], _numeric(f, x), **FD_TOL)


FD_MAX_GRID = [
    case
    for case in itertools.product(
        [2, 3, (3, 2)],  # kernel
        [None, 1, (2, 1)],  # stride
        [0, 1, (1, 0, 0, 1)],  # pad
        [1, 2],  # dilation
        [False, True],  # ceil
    )
    if _pad_fits(case[0], case[2], case[3])
]
FD_AVG_GRID = [
    case
    for case in itertools.product(
        [2, 3, (3, 2)],  # kernel
        [None, 1, (2, 1)],  # stride
        [0, 1, (1, 0, 0, 1)],  # pad
        [False, True],  # ceil
        [True, False],  # count_pad
    )
    if _pad_fits(case[0], case[2])
]


@pytest.mark.parametrize("kernel, stride, pad, dilation, ceil", FD_MAX_GRID)
def test_maxpool2d_finite_differences(kernel, stride, pad, dilation, ceil):
    x = _distinct(np.random.default_rng(4), (1, 2, 7, 6))
    fd_check(MAX, x, kernel=kernel, stride=stride, pad=pad, dilation=dilation, ceil=ceil)


@pytest.mark.parametrize("kernel, stride, pad, ceil, count_pad", FD_AVG_GRID)
def test_avgpool2d_finite_differences(kernel, stride, pad, ceil, count_pad):
    x = np.random.default_rng(5).standard_normal((1, 2, 7, 6))
    fd_check(AVG, x, kernel=kernel, stride=stride, pad=pad, ceil=ceil, count_pad=count_pad)


def test_global_pools_finite_differences():
    rng = np.random.default_rng(6)
    fd_check(GAVG, rng.standard_normal((2, 3, 4, 5)))
    fd_check(GMAX, _distinct(rng, (2, 3, 4, 5)))


def test_examples_run_and_differentiate():
    """Every example: the kernel agrees with the reference and the forward, and (where
    marked) the backward with finite differences."""
    for prim in pool.PRIMITIVES:
        examples = prim.examples(np.random.default_rng(0))
        assert 2 <= len(examples) <= 8, prim.name
        for ex in examples:
            assert ex.params == []
            y = prim.kernel(*ex.inputs, **ex.attrs)
            np.testing.assert_allclose(y, prim.reference(*ex.inputs, **ex.attrs), rtol=1e-12)
            np.testing.assert_array_equal(prim.forward(*ex.inputs, **ex.attrs)[0], y)
            if ex.grad:
                fd_check(prim, ex.inputs[0], **ex.attrs)


# ---------------------------------------------------------------- training: rules


def _grad(prim, x, dy=None, **attrs):
    y, saved = prim.forward(x, **attrs)
    (gx,), _ = prim.backward(saved, np.ones_like(y) if dy is None else dy)
    return y, gx


def test_maxpool_tie_goes_to_the_first_cell_of_the_window():
    x = np.ones((1, 1, 4, 4))
    _, gx = _grad(MAX, x, kernel=2, stride=1, pad=0, dilation=1, ceil=False)
    expected = np.zeros((4, 4))
    expected[:3, :3] = 1  # each 2x2 window's top-left cell
    np.testing.assert_array_equal(gx[0, 0], expected)


def test_maxpool_tie_order_is_row_major_over_the_window():
    # two maxima in one 3x3 window: (0, 2) comes before (1, 0) in row-major order
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 0, 2] = x[0, 0, 1, 0] = 5.0
    _, gx = _grad(MAX, x, kernel=3, stride=1, pad=0, dilation=1, ceil=False)
    assert gx[0, 0, 0, 2] == 1 and gx.sum() == 1


@pytest.mark.parametrize("fill", [-3.0, -np.inf])
def test_padding_never_wins_a_max_in_training(fill):
    """Padding is -inf; even where every real cell is -inf too (or ties it), the gradient
    goes to the window's first real cell, not to the padding."""
    x = np.full((1, 2, 5, 4), fill)
    y, gx = _grad(MAX, x, kernel=3, stride=2, pad=(1, 1), dilation=1, ceil=True)
    assert np.all(y == fill)
    assert gx.sum() == y.size  # no gradient lost to the padding
    ho, wo = y.shape[2:]
    expected = np.zeros((5, 4))
    for oh in range(ho):
        for ow in range(wo):
            expected[max(0, 2 * oh - 1), max(0, 2 * ow - 1)] += 1
    np.testing.assert_array_equal(gx[0, 0], expected)
    np.testing.assert_array_equal(gx[0, 1], expected)


def test_dilated_maxpool_ties_skip_the_padding():
    x = np.zeros((1, 1, 5, 5))
    y, gx = _grad(MAX, x, kernel=2, stride=2, pad=(1, 0, 1, 0), dilation=2, ceil=False)
    # the 2x2 windows read rows (-1, 1) or (1, 3) and columns (-1, 1) or (1, 3): the first
    # real cell of each is (1, 1), padding coming first in three of them
    assert y.shape == (1, 1, 2, 2)
    assert gx[0, 0, 1, 1] == 4 and gx.sum() == 4


def test_global_maxpool_tie_goes_to_the_first_position():
    x = np.zeros((2, 3, 3, 4))
    x[:, :, 1, 2] = x[:, :, 2, 0] = 1.0
    _, gx = _grad(GMAX, x)
    expected = np.zeros_like(x)
    expected[:, :, 1, 2] = 1
    np.testing.assert_array_equal(gx, expected)


def test_maxpool_keeps_a_compact_index_not_the_input():
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    _, saved = MAX.forward(x, kernel=3, stride=2, pad=1, dilation=1, ceil=False)
    arrays = [a for a in saved if isinstance(a, np.ndarray)]
    assert len(arrays) == 1 and arrays[0].dtype == np.uint8 and arrays[0].shape == (2, 3, 4, 4)


def test_dy_of_the_wrong_shape_is_refused():
    x = np.ones((2, 3, 4, 4))
    cases = [
        (MAX, dict(kernel=2, stride=2, pad=0, dilation=1, ceil=False), "maxpool2d"),
        (AVG, dict(kernel=2, stride=2, pad=0, ceil=False, count_pad=True), "avgpool2d"),
        (GAVG, {}, "global_avgpool"),
        (GMAX, {}, "global_maxpool"),
    ]
    for prim, attrs, where in cases:
        y, saved = prim.forward(x, **attrs)
        message = f"{where} backward: dy must have the forward output's shape {y.shape}"
        with pytest.raises(ValueError, match=re.escape(message)):
            prim.backward(saved, x[:, :, :3])
    y, saved = MAX.forward(x, kernel=2, stride=2, pad=0, dilation=1, ceil=False)
    with pytest.raises(ValueError, match=r"maxpool2d backward.*\(2, 3, 2, 2\).*\(2, 3, 4, 4\)"):
        MAX.backward(saved, x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("prim, attrs", [
    (MAX, dict(kernel=3, stride=2, pad=(1, 1), dilation=1, ceil=True)),
    (MAX, dict(kernel=(2, 3), stride=None, pad=(1, 0, 0, 1), dilation=2, ceil=False)),
    (AVG, dict(kernel=3, stride=2, pad=(1, 1), ceil=True, count_pad=False)),
    (AVG, dict(kernel=(2, 3), stride=None, pad=(1, 0, 1, 1), ceil=False, count_pad=True)),
    (GAVG, {}),
    (GMAX, {}),
])
def test_forward_is_the_inference_kernel_and_gradients_are_fresh(prim, attrs, dtype):
    x = np.random.default_rng(0).standard_normal((3, 3, 7, 8)).astype(dtype)
    y, saved = prim.forward(x, train=True, rng=None, **attrs)
    expected = prim.kernel(x, **attrs)
    assert y.dtype == expected.dtype == dtype
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(prim.forward(x, train=False, rng=None, **attrs)[0], y)
    dy = np.ones_like(y)
    (gx,), gps = prim.backward(saved, dy)
    assert gps == () and gx.dtype == dtype and gx.shape == x.shape
    assert not np.shares_memory(gx, dy) and not np.shares_memory(gx, x)


# ---------------------------------------------------------------- PyTorch


def _torch():
    return pytest.importorskip("torch")


def _t(a):
    return _torch().from_numpy(np.ascontiguousarray(a))


def _torch_grid(with_dilation):
    kernels = [(2, 2), (3, 3), (3, 2)]
    strides = [(1, 1), (2, 2), (3, 2)]
    pads = [(0, 0), (1, 1), (1, 0)]
    thirds = [(1, 1), (2, 2)] if with_dilation else [True, False]  # dilation or count_pad
    return [
        (k, s, p, t, ceil)
        for k, s, p, t, ceil in itertools.product(kernels, strides, pads, thirds, [False, True])
        if _pad_fits(k, p, t if with_dilation else 1)
    ]


TORCH_SIZES = [(7, 8), (10, 9)]  # each case runs on both


@pytest.mark.torch
@pytest.mark.parametrize("kernel, stride, pad, dilation, ceil", _torch_grid(True))
def test_maxpool2d_against_torch(rng, kernel, stride, pad, dilation, ceil):
    F = _torch().nn.functional
    for hw in TORCH_SIZES:
        x = rng.standard_normal((2, 3) + hw)
        y = pool.maxpool2d(x, kernel=kernel, stride=stride, pad=pad, dilation=dilation,
                           ceil=ceil)
        expected = F.max_pool2d(_t(x), kernel, stride, pad, dilation, ceil_mode=ceil)
        np.testing.assert_array_equal(y, expected.numpy())


@pytest.mark.torch
@pytest.mark.parametrize("kernel, stride, pad, count_pad, ceil", _torch_grid(False))
def test_avgpool2d_against_torch(rng, assert_close, kernel, stride, pad, count_pad, ceil):
    F = _torch().nn.functional
    for hw in TORCH_SIZES:
        x = rng.standard_normal((2, 3) + hw)
        y = pool.avgpool2d(x, kernel=kernel, stride=stride, pad=pad, ceil=ceil,
                           count_pad=count_pad)
        expected = F.avg_pool2d(_t(x), kernel, stride, pad, ceil_mode=ceil,
                                count_include_pad=count_pad)
        assert_close(y, expected.numpy())


@pytest.mark.torch
@pytest.mark.parametrize("size", [56, 112, 28, 14])
def test_googlenet_ceil_pools(rng, size):
    F = _torch().nn.functional
    x = rng.standard_normal((1, 2, size, size)).astype(np.float32)
    y = pool.maxpool2d(x, kernel=3, stride=2, ceil=True)
    expected = F.max_pool2d(_t(x), 3, 2, ceil_mode=True)
    np.testing.assert_array_equal(y, expected.numpy())


@pytest.mark.torch
def test_global_pools_against_torch(rng, assert_close):
    F = _torch().nn.functional
    x = rng.standard_normal((2, 5, 7, 6))
    assert_close(pool.global_avgpool(x), F.adaptive_avg_pool2d(_t(x), 1).numpy())
    assert_close(pool.global_maxpool(x), F.adaptive_max_pool2d(_t(x), 1).numpy())


def _step(attrs, name="layer"):
    return SimpleNamespace(name=name, attrs=dict(attrs), inputs=["x"], params=[], shape=None)


@pytest.mark.torch
def test_torch_mapping_of_every_example():
    _torch()
    for prim in pool.PRIMITIVES:
        for ex in prim.examples(np.random.default_rng(1)):
            if not ex.torch:
                continue
            got = prim.torch(_step(ex.attrs), [_t(a) for a in ex.inputs], [], False)
            np.testing.assert_allclose(got.numpy(), prim.kernel(*ex.inputs, **ex.attrs),
                                       rtol=1e-12, atol=1e-14, err_msg=f"{prim.name} {ex}")


@pytest.mark.torch
def test_torch_mapping_of_plan_attrs_and_asymmetric_pads():
    """A plan's pools carry a pair pad and every attribute; PyTorch cannot pad one side."""
    x = np.random.default_rng(2).standard_normal((2, 3, 9, 8))
    attrs = dict(kernel=(3, 2), stride=(2, 1), pad=(1, 0), dilation=(1, 2), ceil=True)
    got = MAX.torch(_step(attrs), [_t(x)], [], False)
    np.testing.assert_array_equal(got.numpy(), pool.maxpool2d(x, **attrs))
    attrs = dict(kernel=(3, 2), stride=(2, 1), pad=(1, 1), ceil=True, count_pad=False)
    got = AVG.torch(_step(attrs), [_t(x)], [], False)
    np.testing.assert_allclose(got.numpy(), pool.avgpool2d(x, **attrs), rtol=1e-12)
    with pytest.raises(ValueError, match=r"layer: PyTorch pools pad the same"):
        MAX.torch(_step(dict(kernel=2, pad=(1, 0, 0, 1))), [_t(x)], [], False)


def _torch_compare(prim, torch_fn, x, dtype, seed=0, **attrs):
    """Forward and backward (``dy`` random) against ``torch_fn`` on a leaf tensor."""
    torch = _torch()
    x = np.asarray(x, dtype=dtype)
    leaf = torch.tensor(x, requires_grad=True)
    y, saved = prim.forward(x, rng=None, **attrs)
    dy = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(dtype)
    (gx,), _ = prim.backward(saved, dy)
    expected = torch_fn(leaf)
    tol = TOLERANCES[np.dtype(dtype)]
    assert y.dtype == dtype and gx.dtype == dtype
    np.testing.assert_allclose(y, expected.detach().numpy(), **tol)
    expected.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(gx, leaf.grad.numpy(), **tol)


def _torch_grad_grid(third):
    return [
        case
        for case in itertools.product(
            [(2, 2), (3, 3), (3, 2)],  # kernel
            [(1, 1), (2, 2), (2, 1)],  # stride
            [(0, 0), (1, 1), (1, 0)],  # pad
            third,  # dilation, or ceil
            [False, True],  # ceil, or count_pad
        )
        if _pad_fits(case[0], case[2], case[3] if isinstance(case[3], tuple) else 1)
    ]


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride, pad, dilation, ceil",
                         _torch_grad_grid([(1, 1), (2, 2)]))
def test_maxpool2d_grads_against_torch(dtype, kernel, stride, pad, dilation, ceil):
    F = _torch().nn.functional
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 9, 8))
    ties = rng.integers(0, 3, (2, 3, 9, 8))  # three values: most windows tie

    def reference(x):
        return F.max_pool2d(x, kernel, stride, pad, dilation, ceil_mode=ceil)

    for data in (x, ties):
        _torch_compare(MAX, reference, data, dtype, kernel=kernel, stride=stride, pad=pad,
                       dilation=dilation, ceil=ceil)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride, pad, ceil, count_pad",
                         _torch_grad_grid([False, True]))
def test_avgpool2d_grads_against_torch(dtype, kernel, stride, pad, ceil, count_pad):
    F = _torch().nn.functional
    x = np.random.default_rng(4).standard_normal((2, 3, 9, 8))

    def reference(x):
        return F.avg_pool2d(x, kernel, stride, pad, ceil_mode=ceil,
                            count_include_pad=count_pad)

    _torch_compare(AVG, reference, x, dtype, kernel=kernel, stride=stride, pad=pad, ceil=ceil,
                   count_pad=count_pad)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_global_pool_grads_against_torch(dtype):
    F = _torch().nn.functional
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 5, 4))
    _torch_compare(GAVG, lambda x: x.mean(dim=(2, 3), keepdim=True), x, dtype)
    _torch_compare(GMAX, lambda x: F.adaptive_max_pool2d(x, 1), x, dtype)
    ties = rng.integers(0, 2, (2, 3, 5, 4))  # adaptive max pooling also keeps the first
    _torch_compare(GMAX, lambda x: F.adaptive_max_pool2d(x, 1), ties, dtype)


# ---------------------------------------------------------------- the layers


class _Ctx:
    """The checker's inference context: records ``error`` and ``positive``."""

    def __init__(self):
        self.errors = []
        self.positive_calls = []

    def error(self, code, message, notes=(), help=None):
        self.errors.append((code, message, help))

    def positive(self, size, what):
        self.positive_calls.append((size, what))


def _reporter():
    reports = []

    def report(code, message, span, notes=(), help=None):
        reports.append(SimpleNamespace(code=code, message=message, span=span,
                                       notes=list(notes), help=help))

    return reports, report


SPAN = Span(3, 11, 3, 26)


def _node(op, args, shape=None):
    return Node("y.pool1", op, args, ["x"], SPAN, f"{op}(...)", shape=shape)


def _args(layer, **given):
    """The layer's arguments with defaults filled in, pairs as the checker makes them."""
    out = {}
    for spec in LAYERS[layer].args:
        value = given.get(spec.name, spec.default)
        if spec.kind in ("pair", "ppad") and isinstance(value, int):
            value = (value, value)
        out[spec.name] = value
    return out


def test_layer_table():
    assert list(LAYERS)[:4] == ["maxpool", "avgpool", "global_avgpool", "global_maxpool"]
    assert [(a.name, a.kind, a.default) for a in LAYERS["maxpool"].args[1:]] == [
        ("stride", "pair", None), ("pad", "ppad", 0), ("dilation", "pair", 1),
        ("ceil", "bool", False)]
    assert [(a.name, a.kind, a.default) for a in LAYERS["avgpool"].args[1:]] == [
        ("stride", "pair", None), ("pad", "ppad", 0), ("ceil", "bool", False),
        ("count_pad", "bool", True)]
    assert LAYERS["maxpool"].args[0].name == "kernel"
    for layer in LAYERS.values():
        ranks = {"global_avgpool": None, "global_maxpool": None, "maxpool1d": (2,),
                 "avgpool1d": (2,), "maxpool3d": (4,), "avgpool3d": (4,)}
        assert layer.ranks == ranks.get(layer.name, (3,))
        assert layer.changes_shape
        assert layer.params((3, 8, 8), {}) == {} and layer.buffers((3, 8, 8), {}) == {}
        assert layer.macs((3, 8, 8), (3, 4, 4), {}) == 0
    assert LAYERS["global_avgpool"].args == [] and LAYERS["global_maxpool"].args == []
    for name in ("global_avgpool", "global_maxpool"):
        layer = LAYERS[name]
        assert layer.check_args is None and layer.lint is None
        assert layer.formula is None and layer.fix is None


def test_lowering_keeps_the_old_attributes():
    maxpool = _node("maxpool", _args("maxpool", kernel=3, stride=2, pad=1, ceil=True))
    assert LAYERS["maxpool"].lower(maxpool, [(3, 9, 9)]) == (
        "maxpool2d", dict(kernel=(3, 3), stride=(2, 2), pad=(1, 1), dilation=(1, 1),
                          ceil=True))
    avgpool = _node("avgpool", _args("avgpool", kernel=(3, 2), stride=(1, 2), count_pad=False))
    assert LAYERS["avgpool"].lower(avgpool, [(3, 9, 9)]) == (
        "avgpool2d", dict(kernel=(3, 2), stride=(1, 2), pad=(0, 0), ceil=False,
                          count_pad=False))
    for name in ("global_avgpool", "global_maxpool"):
        assert LAYERS[name].lower(_node(name, {}), [(3, 9, 9)]) == (name, {})


def test_shapes():
    ctx = _Ctx()
    args = _args("maxpool", kernel=3, stride=2, ceil=True)
    assert LAYERS["maxpool"].infer((16, 112, 112), args, ctx) == (16, 56, 56)
    args = _args("maxpool", kernel=3, stride=2)
    assert LAYERS["maxpool"].infer((16, 56, 56), args, ctx) == (16, 27, 27)
    args = _args("maxpool", kernel=2, stride=1, dilation=2, pad=1)
    assert LAYERS["maxpool"].infer((4, 7, 9), args, ctx) == (4, 7, 9)
    args = _args("avgpool", kernel=(3, 2), stride=(2, 3), pad=(1, 0), ceil=True)
    assert LAYERS["avgpool"].infer((4, 9, 10), args, ctx) == (4, 5, 4)
    assert LAYERS["global_avgpool"].infer((7, 5, 3), {}, ctx) == (7, 1, 1)
    assert LAYERS["global_maxpool"].infer((7, 5, 3), {}, ctx) == (7, 1, 1)
    assert ctx.errors == [] and ctx.positive_calls == []


def test_output_below_one_shows_the_floor_formula():
    ctx = _Ctx()
    args = _args("maxpool", kernel=3, stride=2)
    assert LAYERS["maxpool"].infer((3, 2, 9), args, ctx) is None
    [(code, message, help)] = ctx.errors
    assert code == "E301"
    assert message == "maxpool output height would be 0, below 1: floor((2 - 3)/2) + 1 = 0"
    assert "at least 3 rows high for this maxpool; it is 2" in help
    ctx = _Ctx()
    args = _args("avgpool", kernel=(1, 4), stride=1)
    assert LAYERS["avgpool"].infer((3, 5, 3), args, ctx) is None
    assert ctx.errors[0][1].startswith("avgpool output width would be 0, below 1")


def test_symbolic_sizes_must_be_positive():
    from cnnc.compiler.symbolic import sym

    h = sym("H")
    ctx = _Ctx()
    out = LAYERS["maxpool"].infer((3, h, 8), _args("maxpool", kernel=2, stride=2), ctx)
    assert out[0] == 3 and out[2] == 4
    [(size, what)] = ctx.positive_calls
    assert size == out[1] and what == "maxpool output height"


def test_stride_defaults_to_the_kernel():
    reports, report = _reporter()
    args = _args("maxpool", kernel=(3, 2))
    checked = LAYERS["maxpool"].check_args(args, {}, SPAN, report)
    assert checked["stride"] == (3, 2) and reports == []
    args = _args("avgpool", kernel=3, stride=1, pad=1)
    assert LAYERS["avgpool"].check_args(args, {}, SPAN, report)["stride"] == (1, 1)
    assert reports == []


@pytest.mark.parametrize("layer, given, message, limit", [
    ("maxpool", dict(kernel=3, pad=2), "maxpool pad=2 is more than half the kernel 3", 1),
    ("avgpool", dict(kernel=2, pad=2), "avgpool pad=2 is more than half the kernel 2", 1),
    ("maxpool", dict(kernel=5, pad=(1, 3)), "maxpool pad=3 is more than half the kernel 5", 2),
    # PyTorch's limit is half the kernel, not half the dilated window
    ("maxpool", dict(kernel=3, dilation=2, pad=2),
     "maxpool pad=2 is more than half the kernel 3", 1),
])
def test_pool_pad_above_half_the_kernel(layer, given, message, limit):
    reports, report = _reporter()
    pad_span = Span(2, 30, 2, 35)
    assert LAYERS[layer].check_args(_args(layer, **given), {"pad": pad_span}, SPAN,
                                    report) is None
    [d] = reports
    assert (d.code, d.message, d.span) == ("E207", message, pad_span)
    assert d.help == f"use pad={limit} at most; a window must see some input"
    reports.clear()
    LAYERS[layer].check_args(_args(layer, **given), {}, SPAN, report)
    assert reports[0].span == SPAN  # no span of its own: the call's


def test_pool_pad_of_exactly_half_the_kernel_is_valid():
    reports, report = _reporter()
    assert LAYERS["maxpool"].check_args(_args("maxpool", kernel=3, stride=1, pad=1), {}, SPAN,
                                        report) is not None
    assert reports == []


def test_strided_pool_leaves_rows_unused():
    reports, report = _reporter()
    node = _node("maxpool", _args("maxpool", kernel=3, stride=2, pad=0))
    LAYERS["maxpool"].lint(node, (3, 56, 56), report)
    [d] = reports
    assert d.code == "W401" and d.span == SPAN
    assert d.message == ("maxpool leaves the last 1 input row and 1 input column unused: "
                         "(56 - 3) mod 2 = 1")
    assert d.notes == ["input is [3, 56, 56]"]
    assert d.help == "use ceil=true, or an input size that fits the stride"


@pytest.mark.parametrize("layer, given", [
    ("maxpool", dict(kernel=3, stride=2, ceil=True)),  # ceil mode covers the tail
    ("maxpool", dict(kernel=3, stride=2, pad=1)),  # the tail is padding
    ("maxpool", dict(kernel=1, stride=2)),  # gaps between windows are the point
    ("avgpool", dict(kernel=2, stride=2)),
])
def test_no_unused_input_warning(layer, given):
    reports, report = _reporter()
    args = LAYERS[layer].check_args(_args(layer, **given), {}, SPAN, report)
    LAYERS[layer].lint(_node(layer, args), (3, 56, 56), report)
    assert reports == []


def test_formula_and_fix_of_a_merge():
    """The spec's concat example: a 3x3/2 max pool on 56x56 gives 27 where 28 is wanted."""
    layer = LAYERS["maxpool"]
    node = _node("maxpool", _args("maxpool", kernel=3, stride=2, pad=0))
    assert layer.formula(node, (32, 56, 56), 1) == "floor((56 - 3)/2) + 1 = 27"
    assert layer.fix(node, (32, 56, 56), 2, 28) == "use pad=1 or ceil=true on the maxpool at 3:11"
    ceil = _node("avgpool", _args("avgpool", kernel=3, stride=2, ceil=True))
    assert LAYERS["avgpool"].formula(ceil, (8, 56, 56), 2) == "ceil((56 - 3)/2) + 1 = 28"
    assert LAYERS["avgpool"].fix(ceil, (8, 56, 56), 1, 27) == (
        "use ceil=false on the avgpool at 3:11")
    assert layer.fix(node, (32, 56, 56), 1, 5) is None


def test_rank_help():
    for name in ("maxpool", "avgpool"):
        layer = LAYERS[name]
        assert layer.rank_help((64,)) == f"`{name}` works on [C, H, W] maps; move it before " \
                                         "`flatten`"
        assert layer.rank_help((3, 4, 4, 4)) == (f"`{name}` works on [C, H, W] maps; use "
                                                 f"`{name}3d` on a [C, D, H, W] volume")
    for name in ("global_avgpool", "global_maxpool"):
        assert LAYERS[name].rank_help((64,)) == f"`{name}` works on maps; move it before " \
                                                "`flatten`"
        assert LAYERS[name].rank_help((3, 4, 4, 4)) is None


# ---------------------------------------------------------------- ONNX


class _Graph(StepGraph):
    """tests/ops_support's builder for a graph of many steps: one input per step, ``x<i>``
    of ``[N, C, H, W]``; ``step`` is set before each emitter call."""

    def __init__(self, onnx):
        super().__init__(onnx, None, {})
        self.taken = set()


def _export(cases):
    """One ONNX model computing ``cases`` [(primitive, attrs, input shape (C, H, W))]: input
    ``x<i>`` and output ``y<i>`` per case."""
    onnx = pytest.importorskip("onnx")
    g = _Graph(onnx)
    inputs, outputs = [], []
    for i, (prim, attrs, shape) in enumerate(cases):
        x = np.zeros((1,) + tuple(shape), np.float32)
        y_shape = prim.kernel(x, **attrs).shape[1:]
        g.step = SimpleNamespace(name=f"p{i}", attrs=dict(attrs), span=None, shape=y_shape)
        prim.onnx(g, g.step, [f"x{i}"], [], f"y{i}", [tuple(shape)])
        float_type = onnx.TensorProto.FLOAT
        inputs.append(onnx.helper.make_tensor_value_info(f"x{i}", float_type,
                                                         ["N"] + list(shape)))
        outputs.append(onnx.helper.make_tensor_value_info(f"y{i}", float_type,
                                                          ["N"] + list(y_shape)))
    graph = onnx.helper.make_graph(g.nodes, "pools", inputs, outputs, g.initializers)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _onnx_feeds(cases, batch, seed=1):
    rng = np.random.default_rng(seed)
    return {f"x{i}": rng.standard_normal((batch,) + tuple(shape)).astype(np.float32)
            for i, (_, _, shape) in enumerate(cases)}


def _onnx_agrees(cases, batches=(1, 3), evaluator=False):
    """ONNX Runtime (and, with ``evaluator``, ONNX's reference evaluator) computes what the
    NumPy kernels compute, on every case."""
    ort = pytest.importorskip("onnxruntime")
    model = _export(cases)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = [f"y{i}" for i in range(len(cases))]
    for batch in batches:
        feeds = _onnx_feeds(cases, batch)
        runs = [session.run(names, feeds)]
        if evaluator:
            from onnx.reference import ReferenceEvaluator

            runs.append(ReferenceEvaluator(model).run(names, feeds))
        for theirs in runs:
            for i, (prim, attrs, _) in enumerate(cases):
                ours = prim.kernel(feeds[f"x{i}"], **attrs)
                assert theirs[i].shape == ours.shape, (prim.name, attrs)
                np.testing.assert_allclose(theirs[i], ours, rtol=1e-4, atol=1e-5,
                                           err_msg=f"{prim.name} {attrs}")
    return model


def _maxpool(kernel, stride=None, pad=0, dilation=1, ceil=False):
    return dict(kernel=kernel, stride=stride, pad=pad, dilation=dilation, ceil=ceil)


def _avgpool(kernel, stride=None, pad=0, ceil=False, count_pad=True):
    return dict(kernel=kernel, stride=stride, pad=pad, ceil=ceil, count_pad=count_pad)


def test_onnx_every_pool_variant():
    cases = [
        (MAX, _maxpool(3, 2, 1, ceil=True), (3, 9, 10)),
        (MAX, _maxpool((3, 2), (2, 1), (1, 0)), (3, 5, 5)),
        (MAX, _maxpool(2, 3, ceil=True), (3, 9, 10)),
        (MAX, _maxpool(2, 1, dilation=2, ceil=True), (3, 3, 4)),
        (MAX, _maxpool(3, 2, 1, dilation=2), (3, 9, 10)),
        # stride 3, dilation 2 on 4 columns: ceil mode's last window needs 2 columns past
        # the input, as many as the kernel, which ONNX Runtime refuses as MaxPool pads
        (MAX, _maxpool(2, 3, dilation=2, ceil=True), (2, 4, 7)),
        (AVG, _avgpool(3, 2, 1, ceil=True), (3, 9, 10)),
        (AVG, _avgpool(3, 2, 1, ceil=True, count_pad=False), (3, 9, 10)),
        (AVG, _avgpool(2, 3, ceil=True), (3, 9, 10)),
        (AVG, _avgpool(3, 2, 1), (3, 9, 10)),
        (AVG, _avgpool((3, 2), (2, 3), (1, 0), ceil=True), (3, 9, 10)),
        (AVG, _avgpool((3, 2), (2, 3), (1, 1), ceil=True, count_pad=False), (3, 9, 10)),
        (GAVG, {}, (5, 6, 7)),
        (GMAX, {}, (5, 6, 7)),
    ]
    model = _onnx_agrees(cases)
    ops = {}
    for node in model.graph.node:
        ops.setdefault(node.name, []).append(node.op_type)
    assert ops["p5"] == ["MaxPool"] and ops["p5/pad"] == ["Pad"]
    assert ops["p6/pad"] == ["Pad"]  # the padding counts, the ceil tail does not
    assert ops["p12"] == ["GlobalAveragePool"] and ops["p13"] == ["GlobalMaxPool"]
    for node in model.graph.node:
        for a in node.attribute:
            if a.name == "ceil_mode":
                assert a.i == 0


def test_onnx_pads_in_onnx_order():
    model = _export([(MAX, _maxpool((3, 5), 1, (1, 2)), (1, 6, 6))])
    [node] = model.graph.node
    pads = {a.name: list(a.ints) for a in node.attribute if a.name in ("pads", "kernel_shape")}
    assert pads == {"pads": [1, 2, 1, 2], "kernel_shape": [3, 5]}


def test_onnx_examples():
    cases = []
    for prim in pool.PRIMITIVES:
        for ex in prim.examples(np.random.default_rng(3)):
            if ex.onnx:
                cases.append((prim, ex.attrs, ex.inputs[0].shape[1:]))
    _onnx_agrees(cases, batches=(2,), evaluator=True)


def test_onnx_refuses_asymmetric_pads():
    pytest.importorskip("onnx")
    for prim, attrs in ((MAX, _maxpool(2, pad=(1, 0, 0, 1))),
                        (AVG, _avgpool(3, pad=(0, 1, 1, 1)))):
        with pytest.raises(ExportError, match=r"p0: pooling pads must be the same before and "
                                              r"after, got \("):
            _export([(prim, attrs, (1, 6, 6))])


def _ceil_grid():
    """Every pool over a grid of sizes, kernels, strides, pads and dilations that the
    checker accepts, in ceil mode (floor mode is the plain case)."""
    cases = []
    for n, k, s, p, d in itertools.product((3, 4, 5, 6, 7), (1, 2, 3, 4), (1, 2, 3), (0, 1, 2),
                                           (1, 2)):
        if p > k // 2 or pool_out(n, k, s, p, d, True) < 1:
            continue
        shape = (1, n, n + 1)
        cases.append((MAX, _maxpool(k, s, p, d, ceil=True), shape))
        if d == 1:
            for count in (True, False):
                cases.append((AVG, _avgpool(k, s, p, ceil=True, count_pad=count), shape))
    return cases


def test_ceil_mode_pools_mean_the_same_everywhere():
    """All ceil-mode pools of the grid in one graph: ONNX Runtime and ONNX's reference
    evaluator both agree with the NumPy kernels."""
    _onnx_agrees(_ceil_grid(), batches=(2,), evaluator=True)


# ---------------------------------------------------------------- 1-D and 3-D pools (spec 9)
# The layers' rules per spatial dim; the kernels against the N-d references and PyTorch
# (forward float32 within 1e-4, gradients float64 within 1e-6, ties included) over grids with
# non-cubic kernels, strides, pads, dilation and ceil mode; 1-D on the 2-D kernels; out=
# slices; their errors naming the rank and the dim; global pools on every rank; ONNX.

MAX1 = PRIMS["maxpool1d"]
MAX3 = PRIMS["maxpool3d"]
AVG1 = PRIMS["avgpool1d"]
AVG3 = PRIMS["avgpool3d"]
ND = {("max", 1): MAX1, ("max", 3): MAX3, ("avg", 1): AVG1, ("avg", 3): AVG3}


def _nd_args(layer, **given):
    """A pool layer's arguments as the checker hands them to ``check_args``: integers stay
    integers, lists are tuples (the rank-free kinds)."""
    args = {spec.name: spec.default for spec in LAYERS[layer].args}
    args.update(given)
    return args


def _nd_checked(layer, **given):
    reports, report = _reporter()
    args = LAYERS[layer].check_args(_nd_args(layer, **given), {}, SPAN, report)
    return args, reports


def test_nd_pool_layers():
    for name, rank in (("maxpool1d", 2), ("maxpool3d", 4), ("avgpool1d", 2), ("avgpool3d", 4)):
        layer = LAYERS[name]
        assert layer.ranks == (rank,)
        kinds = [(a.name, a.kind, a.default) for a in layer.args[1:]]
        if name.startswith("max"):
            assert kinds == [("stride", "dims", None), ("pad", "dpad", 0),
                             ("dilation", "dims", 1), ("ceil", "bool", False)]
        else:
            assert kinds == [("stride", "dims", None), ("pad", "dpad", 0),
                             ("ceil", "bool", False), ("count_pad", "bool", True)]
        assert layer.params((3, 8, 8, 8), {}) == {} and layer.macs((3, 8), (3, 4), {}) == 0


def test_nd_pool_arguments_per_dim_and_the_stride_default():
    args, reports = _nd_checked("maxpool3d", kernel=(1, 2, 2))
    assert reports == []
    assert (args["kernel"], args["stride"], args["pad"], args["dilation"]) == (
        (1, 2, 2), (1, 2, 2), (0, 0, 0), (1, 1, 1))
    args, reports = _nd_checked("avgpool1d", kernel=4, stride=2, pad=2)
    assert reports == [] and (args["kernel"], args["stride"], args["pad"]) == ((4,), (2,), (2,))
    args, reports = _nd_checked("maxpool3d", kernel=(3, 3))
    assert args is None
    [d] = reports
    assert (d.code, d.message) == ("E207", "maxpool3d kernel=[3, 3] gives 2 values, but a "
                                           "[C, D, H, W] map has 3 spatial dims")
    assert d.help == "give one integer for every spatial dim, or a list [depth, height, width]"
    args, reports = _nd_checked("maxpool3d", kernel=(1, 3, 3), pad=(1, 1, 1))
    assert args is None
    [d] = reports
    assert (d.code, d.message) == ("E207", "maxpool3d pad=1 is more than half the kernel 1")
    assert d.help == "use pad=0 at most; a window must see some input"


def test_nd_pool_shapes_and_messages():
    ctx = _Ctx()
    max3, max1 = LAYERS["maxpool3d"], LAYERS["maxpool1d"]
    args = _nd_checked("maxpool3d", kernel=(1, 3, 3), stride=(1, 2, 2), pad=(0, 1, 1))[0]
    assert max3.infer((64, 16, 112, 112), args, ctx) == (64, 16, 56, 56)
    args = _nd_checked("maxpool3d", kernel=2, ceil=True)[0]
    assert max3.infer((8, 5, 7, 9), args, ctx) == (8, 3, 4, 5)
    args = _nd_checked("avgpool3d", kernel=(2, 3, 1), stride=1, pad=(1, 0, 0))[0]
    assert LAYERS["avgpool3d"].infer((8, 5, 7, 9), args, ctx) == (8, 6, 5, 9)
    args = _nd_checked("maxpool1d", kernel=3, stride=2, dilation=2)[0]
    assert max1.infer((4, 20), args, ctx) == (4, 8)
    assert ctx.errors == []
    args = _nd_checked("maxpool3d", kernel=3, stride=2)[0]
    assert max3.infer((3, 8, 2, 8), args, ctx) is None
    [(code, message, help)] = ctx.errors
    assert code == "E301"
    assert message == "maxpool3d output height would be 0, below 1: floor((2 - 3)/2) + 1 = 0"
    assert "at least 3 rows high for this maxpool3d; it is 2" in help
    ctx = _Ctx()
    assert max1.infer((3, 2), _nd_checked("maxpool1d", kernel=4)[0], ctx) is None
    assert ctx.errors[0][1] == "maxpool1d output length would be 0, below 1: " \
                               "floor((2 - 4)/4) + 1 = 0"
    assert "at least 4 samples long" in ctx.errors[0][2]


def test_nd_pool_lint_formula_fix_and_rank_help():
    reports, report = _reporter()
    args = _nd_checked("maxpool3d", kernel=3, stride=2)[0]
    node = _node("maxpool3d", args)
    LAYERS["maxpool3d"].lint(node, (3, 16, 56, 57), report)
    [d] = reports
    assert d.message == ("maxpool3d leaves the last 1 input slice and 1 input row unused: "
                         "(16 - 3) mod 2 = 1; (56 - 3) mod 2 = 1")
    assert d.help == "use ceil=true, or an input size that fits the stride"
    assert LAYERS["maxpool3d"].formula(node, (3, 16, 56, 57), 1) == "floor((16 - 3)/2) + 1 = 7"
    assert LAYERS["maxpool3d"].fix(node, (3, 16, 56, 57), 2, 28) == (
        "use pad=1 or ceil=true on the maxpool3d at 3:11")
    node = _node("avgpool1d", _nd_checked("avgpool1d", kernel=2)[0])
    LAYERS["avgpool1d"].lint(node, (3, 9), report)
    assert reports[-1].message == "avgpool1d leaves the last 1 input sample unused: " \
                                  "(9 - 2) mod 2 = 1"
    assert LAYERS["maxpool3d"].rank_help((3, 8, 8)) == (
        "`maxpool3d` works on [C, D, H, W] volumes; use `maxpool` on a [C, H, W] map")
    assert LAYERS["avgpool1d"].rank_help((8,)) == (
        "`avgpool1d` works on [C, L] signals; move it before `flatten`")
    assert LAYERS["avgpool"].rank_help((3, 8)) == (
        "`avgpool` works on [C, H, W] maps; use `avgpool1d` on a [C, L] signal")


def test_nd_pools_check_and_global_pools_on_every_rank():
    import cnnc

    net = cnnc.check("input x: [2, 40]\ninput v: [3, 8, 16, 16]\n"
                     "output a = x -> maxpool1d(3, stride=2, pad=1) -> avgpool1d(2, ceil=true)"
                     " -> global_maxpool\n"
                     "output b = v -> maxpool3d([1, 2, 2]) -> avgpool3d(2, count_pad=false)"
                     " -> global_avgpool\n")
    assert net.ok, net.render()
    shapes = {name: node.shape for name, node in net.nodes.items()}
    assert shapes["a.maxpool1d1"] == (2, 20) and shapes["a.avgpool1d1"] == (2, 10)
    assert shapes["a.global_maxpool1"] == (2, 1)
    assert shapes["b.maxpool3d1"] == (3, 8, 8, 8) and shapes["b.avgpool3d1"] == (3, 4, 4, 4)
    assert shapes["b.global_avgpool1"] == (3, 1, 1, 1)
    net = cnnc.check("input x: [3, 32, 32]\noutput y = x -> maxpool3d(2)\n")
    [d] = net.diagnostics
    assert (d.code, d.message) == ("E304", "`maxpool3d` expects a [C, D, H, W] input, got "
                                           "[3, 32, 32]")
    net = cnnc.check("input x: [3, 32, 32]\noutput y = x -> flatten -> global_avgpool\n")
    [d] = net.diagnostics
    assert (d.code, d.message) == ("E304", "`global_avgpool` expects a map [C, L], [C, H, W] "
                                           "or [C, D, H, W], got [3072]")
    assert d.help == "`global_avgpool` works on maps; move it before `flatten`"


def _nd_pool_grid(kind, n):
    """(kernel, stride, pad, dilation or count_pad, ceil) cases PyTorch takes on the sizes
    of ``_ND_SIZES``: pads at most half the kernel, windows no larger than the padded
    input."""
    if n == 1:
        kernels, strides, pads = [2, 3, 4], [None, 1, 2, 3], [0, 1, 2]
        dilations = [1, 2]
    else:
        kernels = [2, (3, 2, 3), (1, 3, 2)]
        strides = [None, 1, (2, 1, 2)]
        pads = [0, (1, 0, 1), (0, 1, 1)]
        dilations = [1, (2, 1, 2)]
    thirds = dilations if kind == "max" else [True, False]
    cases = []
    for k, s, p, third, ceil in itertools.product(kernels, strides, pads, thirds,
                                                  [False, True]):
        ks = pool.window.dims(k, n)
        ps = pool.window.dims(p, n)
        ds = pool.window.dims(third if kind == "max" else 1, n)
        if any(pp > kk // 2 for pp, kk in zip(ps, ks)):
            continue
        if any(size + 2 * pp < dd * (kk - 1) + 1
               for size, pp, kk, dd in zip(_ND_SIZES[n], ps, ks, ds)):
            continue
        cases.append((k, s, p, third, ceil))
    return cases


_ND_SIZES = {1: (11,), 3: (5, 6, 7)}


def _nd_attrs(kind, case):
    k, s, p, third, ceil = case
    if kind == "max":
        return dict(kernel=k, stride=s, pad=p, dilation=third, ceil=ceil)
    return dict(kernel=k, stride=s, pad=p, ceil=ceil, count_pad=third)


def _torch_pool(kind, n, x, attrs):
    F = _torch().nn.functional
    if kind == "max":
        return getattr(F, f"max_pool{n}d")(x, attrs["kernel"], attrs["stride"], attrs["pad"],
                                           attrs["dilation"], ceil_mode=attrs["ceil"])
    return getattr(F, f"avg_pool{n}d")(x, attrs["kernel"], attrs["stride"], attrs["pad"],
                                       ceil_mode=attrs["ceil"],
                                       count_include_pad=attrs["count_pad"])


ND_CASES = [pytest.param(kind, n, id=f"{kind}pool{n}d") for kind in ("max", "avg")
            for n in (1, 3)]


@pytest.mark.parametrize("kind, n", ND_CASES)
def test_nd_pools_match_the_reference(kind, n):
    prim = ND[(kind, n)]
    rng = np.random.default_rng(8)
    for case in _nd_pool_grid(kind, n)[::2]:
        attrs = _nd_attrs(kind, case)
        x = rng.standard_normal((2, 3) + _ND_SIZES[n])
        np.testing.assert_allclose(prim.kernel(x, **attrs), prim.reference(x, **attrs),
                                   rtol=1e-12, atol=1e-14, err_msg=str(attrs))


@pytest.mark.torch
@pytest.mark.parametrize("kind, n", ND_CASES)
def test_nd_pools_forward_float32_match_pytorch(kind, n):
    torch = _torch()
    prim = ND[(kind, n)]
    rng = np.random.default_rng(9)
    for case in _nd_pool_grid(kind, n):
        attrs = _nd_attrs(kind, case)
        x = rng.standard_normal((2, 3) + _ND_SIZES[n]).astype(np.float32)
        y = prim.kernel(x, **attrs)
        want = _torch_pool(kind, n, torch.from_numpy(x).double(), attrs).numpy()
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5, err_msg=str(attrs))
        ours, _ = prim.forward(x, rng=None, **attrs)
        np.testing.assert_array_equal(ours, y)


@pytest.mark.torch
@pytest.mark.parametrize("kind, n", ND_CASES)
def test_nd_pools_gradients_float64_match_pytorch(kind, n):
    torch = _torch()
    prim = ND[(kind, n)]
    rng = np.random.default_rng(10)
    for case in _nd_pool_grid(kind, n):
        attrs = _nd_attrs(kind, case)
        inputs = [rng.standard_normal((2, 3) + _ND_SIZES[n])]
        if kind == "max":
            inputs.append(rng.integers(0, 3, (2, 3) + _ND_SIZES[n]).astype(float))  # ties
        for x in inputs:
            leaf = torch.tensor(x, requires_grad=True)
            y, saved = prim.forward(x, rng=None, **attrs)
            dy = rng.standard_normal(y.shape)
            (gx,), gps = prim.backward(saved, dy)
            want = _torch_pool(kind, n, leaf, attrs)
            np.testing.assert_allclose(y, want.detach().numpy(), rtol=1e-12, atol=1e-12)
            want.backward(torch.from_numpy(dy))
            assert gps == () and gx.dtype == np.float64 and gx.shape == x.shape
            np.testing.assert_allclose(gx, leaf.grad.numpy(), rtol=1e-6, atol=1e-6,
                                       err_msg=str(attrs))


def test_nd_maxpool_ties_and_padding():
    """The first maximum in row-major tap order wins; padding (-inf) never does, even
    against -inf inputs."""
    x = np.zeros((1, 1, 2, 2, 2))
    y, saved = MAX3.forward(x, rng=None, kernel=2)
    (gx,), _ = MAX3.backward(saved, np.ones(y.shape))
    assert gx[0, 0, 0, 0, 0] == 1 and gx.sum() == 1
    x = np.full((1, 1, 3, 3, 3), -np.inf)
    x[0, 0, 2, 2, 2] = -1.0
    y, saved = MAX3.forward(x, rng=None, kernel=3, stride=2, pad=1, ceil=True)
    assert y.shape == (1, 1, 2, 2, 2)
    (gx,), _ = MAX3.backward(saved, np.ones(y.shape))
    assert gx.sum() == 8 and np.isfinite(gx).all()  # each window's gradient lands in it
    assert (MAX3.kernel(-1.0 - np.random.default_rng(0).random((1, 2, 4, 4, 4)),
                        kernel=3, stride=2, pad=1, ceil=True) < -1.0).all()
    # integers stay integers at inference
    xi = np.arange(-64, 0, dtype=np.int32).reshape(1, 1, 4, 4, 4)
    yi = MAX3.kernel(xi, kernel=2)
    assert yi.dtype == np.int32 and yi[0, 0, 1, 1, 1] == -1


def test_nd_pool_chunks_and_out_slices(monkeypatch):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 4, 5, 6, 7))
    for prim, attrs in ((MAX3, dict(kernel=(3, 2, 3), stride=2, pad=1, dilation=1, ceil=True)),
                        (AVG3, dict(kernel=3, stride=(1, 2, 2), pad=1, ceil=True,
                                    count_pad=False)),
                        (MAX1, dict(kernel=3, stride=2, pad=1, dilation=2, ceil=True)),
                        (AVG1, dict(kernel=3, stride=2, pad=1, ceil=True, count_pad=True))):
        data = x if prim in (MAX3, AVG3) else x.reshape(3, 4, -1)
        want = prim.reference(data, **attrs)
        for chunk in (40, 300, 1 << 16):  # a block of channels, of samples, everything
            monkeypatch.setattr(pool, "CHUNK_ELEMENTS", chunk)
            np.testing.assert_allclose(prim.kernel(data, **attrs), want, rtol=1e-12)
            out = np.full(want.shape, np.nan)
            assert prim.kernel(data, out=out, **attrs) is out
            np.testing.assert_allclose(out, want, rtol=1e-12)
            wide = np.full((3, 6) + want.shape[2:], 7.0)
            prim.kernel(data, out=wide[:, 1:5], **attrs)
            np.testing.assert_allclose(wide[:, 1:5], want, rtol=1e-12)
            assert (wide[:, :1] == 7).all() and (wide[:, 5:] == 7).all()
        with pytest.raises(ValueError, match=rf"{prim.name}: out must be "):
            prim.kernel(data, out=np.empty(want.shape, np.float32), **attrs)


@pytest.mark.parametrize("call, message", [
    (lambda: pool.maxpool3d(np.zeros((2, 3, 4, 4)), kernel=2),
     r"maxpool3d: input must be \[N, C, D, H, W\], got shape \(2, 3, 4, 4\)"),
    (lambda: pool.avgpool1d(np.zeros((2, 3, 4, 4)), kernel=2),
     r"avgpool1d: input must be \[N, C, L\], got shape \(2, 3, 4, 4\)"),
    (lambda: pool.maxpool1d(np.zeros((2, 3, 4)), kernel=5),
     r"maxpool1d length: output size must be at least 1"),
    (lambda: pool.avgpool3d(np.zeros((1, 1, 4, 4, 1)), kernel=(1, 1, 2)),
     r"avgpool3d width: output size must be at least 1"),
    (lambda: pool.maxpool3d(np.zeros((1, 1, 4, 4, 4)), kernel=2, stride=(1, 0, 1)),
     r"maxpool3d: kernel, stride and dilation must be >= 1 and pad >= 0, got "
     r"kernel=\(2, 2, 2\), stride=\(1, 0, 1\)"),
    (lambda: pool.maxpool3d(np.zeros((1, 1, 4, 4, 4)), kernel=(2, 2)),
     r"kernel must be an integer or a list of 3 \[depth, height, width\]"),
])
def test_nd_pools_refuse_with_their_own_names(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_nd_pool_backward_checks_dy():
    x = np.zeros((1, 2, 4, 4, 4))
    for prim, attrs in ((MAX3, dict(kernel=2)), (AVG3, dict(kernel=2)),
                        (MAX1, dict(kernel=2)), (AVG1, dict(kernel=2))):
        data = x if prim in (MAX3, AVG3) else x.reshape(1, 2, -1)
        y, saved = prim.forward(data, rng=None, **attrs)
        with pytest.raises(ValueError, match=rf"{prim.name} backward: dy must have the "
                                             rf"forward output's shape"):
            prim.backward(saved, np.zeros(y.shape + (1,)))


@pytest.mark.parametrize("shape", [(2, 3, 7), (2, 3, 4, 5), (2, 2, 3, 4, 2), (1, 2, 2, 2, 2, 2)])
def test_global_pools_on_every_rank(shape):
    rng = np.random.default_rng(12)
    x = _distinct(rng, shape)
    spatial = tuple(range(2, len(shape)))
    ones = shape[:2] + (1,) * (len(shape) - 2)
    avg, top = pool.global_avgpool(x), pool.global_maxpool(x)
    assert avg.shape == top.shape == ones
    np.testing.assert_allclose(avg, x.mean(axis=spatial, keepdims=True), rtol=1e-12)
    np.testing.assert_array_equal(top, x.max(axis=spatial, keepdims=True))
    np.testing.assert_allclose(avg, pool.reference_global_avgpool(x), rtol=1e-12)
    np.testing.assert_array_equal(top, pool.reference_global_maxpool(x))
    fd_check(GAVG, x)
    fd_check(GMAX, x)


@pytest.mark.torch
def test_nd_torch_mapping_and_asymmetric_pads():
    x = np.random.default_rng(13).standard_normal((2, 3, 5, 6, 7))
    attrs = dict(kernel=(3, 2, 3), stride=(2, 1, 2), pad=(1, 0, 1), dilation=(1, 2, 1),
                 ceil=True)
    got = MAX3.torch(_step(attrs), [_t(x)], [], False)
    np.testing.assert_array_equal(got.numpy(), pool.maxpool3d(x, **attrs))
    attrs = dict(kernel=3, stride=2, pad=1, ceil=True, count_pad=False)
    got = AVG1.torch(_step(attrs), [_t(x[:, :, 0, 0])], [], False)
    np.testing.assert_allclose(got.numpy(), pool.avgpool1d(x[:, :, 0, 0], **attrs), rtol=1e-12)
    with pytest.raises(ValueError, match=r"layer: PyTorch pools pad the same before and "
                                         r"after, got \(1, 0, 0, 0, 0, 1\)"):
        MAX3.torch(_step(dict(kernel=2, pad=(1, 0, 0, 0, 0, 1))), [_t(x)], [], False)


def test_nd_onnx_every_variant():
    """ONNX Runtime and ONNX's reference evaluator against the kernels: ceil mode with the
    end padding made explicit, the padding counting or not, dilation, and the global pools
    on [C, L] and [C, D, H, W] (``ReduceMax`` there: the reference evaluator's
    GlobalMaxPool is wrong off 2-D)."""
    cases = [
        (MAX1, _maxpool(3, 2, 1, ceil=True), (3, 10)),
        (MAX1, _maxpool(2, 3, dilation=2, ceil=True), (2, 7)),
        (AVG1, _avgpool(3, 2, 1, ceil=True), (3, 10)),
        (AVG1, _avgpool(4, 3, 2, ceil=True, count_pad=False), (3, 10)),
        (MAX3, _maxpool((3, 2, 3), (2, 1, 2), (1, 0, 1), ceil=True), (2, 5, 6, 7)),
        (MAX3, _maxpool(2, 3, dilation=(2, 1, 2), ceil=True), (2, 4, 5, 7)),
        (AVG3, _avgpool(3, 2, 1, ceil=True), (2, 5, 6, 7)),
        (AVG3, _avgpool((3, 2, 2), (2, 3, 1), (1, 1, 0), ceil=True, count_pad=False),
         (2, 5, 6, 7)),
        (GAVG, {}, (3, 7)),
        (GMAX, {}, (3, 7)),
        (GAVG, {}, (2, 3, 4, 5)),
        (GMAX, {}, (2, 3, 4, 5)),
    ]
    model = _onnx_agrees(cases, batches=(1, 2), evaluator=True)
    ops = {}
    for node in model.graph.node:
        ops.setdefault(node.name, []).append(node.op_type)
    assert ops["p1"] == ["MaxPool"] and ops["p1/pad"] == ["Pad"]
    assert ops["p9"] == ["ReduceMax"] and ops["p8"] == ["GlobalAveragePool"]
    assert ops["p11"] == ["ReduceMax"]


def test_nd_ceil_grid_means_the_same_in_onnx_runtime():
    """1-D pools over a grid of sizes, kernels, strides, pads and dilations in ceil mode:
    ONNX Runtime agrees with the kernels. (Not ONNX's reference evaluator: 1.23 indexes
    past the padded input on a 1-D MaxPool with padding and stride 1.)"""
    cases = []
    for n, k, s, p, d in itertools.product((3, 5, 7), (1, 2, 3), (1, 2, 3), (0, 1), (1, 2)):
        if p > k // 2 or pool_out(n, k, s, p, d, True) < 1:
            continue
        cases.append((MAX1, _maxpool(k, s, p, d, ceil=True), (1, n)))
        if d == 1:
            for count in (True, False):
                cases.append((AVG1, _avgpool(k, s, p, ceil=True, count_pad=count), (1, n)))
    _onnx_agrees(cases, batches=(2,))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 3, 7), (2, 3, 5, 6), (2, 3, 2, 4, 5), (3, 4, 112, 112)])
def test_global_avgpool_by_matrix_vector_product_is_the_mean(dtype, shape):
    """float32 and float64 maps of every rank are summed by a BLAS matrix-vector product:
    the mean within float rounding, NaN and infinities through, non-contiguous inputs too."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal(shape).astype(dtype) + 3
    want = x.astype(np.float64).mean(axis=tuple(range(2, x.ndim)), keepdims=True)
    got = pool.global_avgpool(x)
    assert got.dtype == dtype and got.shape == shape[:2] + (1,) * (len(shape) - 2)
    np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == np.float32 else 1e-13)
    fortran = np.asfortranarray(x)  # the same values, not C-contiguous
    np.testing.assert_allclose(pool.global_avgpool(fortran), want,
                               rtol=1e-6 if dtype == np.float32 else 1e-13)
    x[0, 1].flat[0] = np.nan
    x[1, 2].flat[-1] = np.inf
    got = pool.global_avgpool(x)
    assert np.isnan(got[0, 1]).all() and np.isposinf(got[1, 2]).all()
    assert np.isfinite(got[0, 0]).all() and np.isfinite(got[1, 0]).all()


def test_the_compiled_training_kernels_close_over_no_compiled_function():
    """numba keys its disk cache on a closure's pickled cells, and a compiled function
    pickles with an id of its process: a kernel closing over one missed the cache in every
    process (the training max pool compiled again at the start of every training run).
    (The inference kernel is built beside them.)"""
    numba = pytest.importorskip("numba")
    from cnnc.ops import fast

    if not fast.ENABLED:
        pytest.skip("the compiled kernels are off (CNNC_FAST=0)")
    dispatcher = numba.core.dispatcher.Dispatcher
    wrappers = pool._compiled_maxpool(np.zeros(1, np.float32))
    kernels = [cell.cell_contents for f in wrappers for cell in f.__closure__ or ()
               if isinstance(cell.cell_contents, dispatcher)]
    assert len(kernels) == 3  # forward and backward, and inference's forward
    for kernel in kernels:
        cells = [cell.cell_contents for cell in kernel.py_func.__closure__ or ()]
        assert not [c for c in cells if isinstance(c, dispatcher)], kernel.py_func.__name__
