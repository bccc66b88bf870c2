"""The GPU kernels of ops/norm.py (inference LRN and batch norm) against the generic
NumPy-API kernels, and the generic training pair on device arrays.

Every test takes the ``device`` fixture (``conftest.py``): ``cupy`` on a CUDA device,
``emulated`` the same CUDA text compiled for the CPU on NumPy arrays.
"""

from __future__ import annotations

import numpy as np
import pytest

from cnnc.ops import norm

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


def put(device, arrays):
    return [None if a is None else device.put(a) for a in arrays]


def same_error(device, kernel, gpu_kernel, arrays, attrs):
    """The generic kernel and the GPU kernel refuse the arguments with the same message."""
    with pytest.raises(ValueError) as numpy_error:
        kernel(*arrays, **attrs)
    with pytest.raises(ValueError) as device_error:
        gpu_kernel(*put(device, arrays), **attrs)
    assert str(device_error.value) == str(numpy_error.value)


# ---------------------------------------------------------------- LRN


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 6, 3, 4), (3, 5, 7)])
def test_lrn_matches_numpy(device, rng, dtype, shape):
    x = rng.standard_normal(shape).astype(dtype)
    for size, alpha, beta, k in [(1, 1e-4, 0.75, 1.0), (2, 0.1, 0.5, 2.0), (3, 1.0, 0.75, 1.0),
                                 (5, 1e-2, 0.75, 1.0), (9, 0.5, 1.0, 0.5)]:
        attrs = dict(size=size, alpha=alpha, beta=beta, k=k)
        close(device, norm.lrn_gpu(device.put(x), **attrs), norm.lrn(x, **attrs))
    same_error(device, norm.lrn, norm.lrn_gpu, (x,), dict(size=0))
    same_error(device, norm.lrn, norm.lrn_gpu, (x[0, 0],), dict(size=3))


def test_lrn_non_contiguous_input(device, rng):
    x = rng.standard_normal((2, 8, 4, 5))
    view = device.put(x)[:, 1:7]
    close(device, norm.lrn_gpu(view, size=3, alpha=0.5), norm.lrn(x[:, 1:7], size=3, alpha=0.5))


# ---------------------------------------------------------------- batch norm


def _stats(rng, channels, dtype):
    weight = rng.uniform(0.5, 2, channels).astype(dtype)
    bias = rng.standard_normal(channels).astype(dtype)
    mean = rng.standard_normal(channels).astype(dtype)
    var = rng.uniform(0.1, 3, channels).astype(dtype)
    return [weight, bias, mean, var]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 4, 3, 5), (5, 4)])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_matches_numpy(device, rng, dtype, shape, affine):
    x = rng.standard_normal(shape).astype(dtype)
    weight, bias, mean, var = _stats(rng, 4, dtype)
    if not affine:
        weight = bias = None
    attrs = dict(eps=1e-3, momentum=0.1)
    arrays = (x, weight, bias, mean, var)
    close(device, norm.batchnorm_gpu(*put(device, arrays), **attrs),
          norm.batchnorm(*arrays, **attrs))
    same_error(device, norm.batchnorm, norm.batchnorm_gpu, (x, weight, bias, mean[:3], var),
               attrs)


def test_batchnorm_float16_input_goes_to_the_generic_kernel(device, rng):
    """float32 statistics make the backend's dtype test pass; the map itself is float16."""
    x = rng.standard_normal((2, 3, 4)).astype(np.float16)
    stats = _stats(rng, 3, np.float32)
    y = norm.batchnorm_gpu(*put(device, [x] + stats), eps=1e-5)
    expected = norm.batchnorm(x, *stats, eps=1e-5)
    assert device.get(y).dtype == np.float16
    np.testing.assert_allclose(device.get(y), expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_out_is_written_contiguous_or_as_a_channel_slice(device, rng, dtype):
    x = rng.standard_normal((2, 4, 6, 5)).astype(dtype)
    stats = [rng.uniform(0.5, 2, 4).astype(dtype) for _ in range(4)]
    attrs = dict(eps=1e-5, momentum=0.1)
    expected = norm.batchnorm(x, *stats, **attrs)
    shape = expected.shape
    args = put(device, [x] + stats)
    # a C-contiguous target: written directly and returned
    out = device.put(np.full(shape, np.nan, dtype=dtype))
    assert norm.batchnorm_gpu(*args, out=out, **attrs) is out
    close(device, out, expected)
    # a channel slice of a larger buffer (a concat's input), not C-contiguous
    wide = device.put(np.full((shape[0], shape[1] + 3) + shape[2:], 7.0, dtype=dtype))
    part = wide[:, 1:1 + shape[1]]
    norm.batchnorm_gpu(*args, out=part, **attrs)
    close(device, part, expected)
    edges = device.get(wide)
    assert (edges[:, :1] == 7).all() and (edges[:, 1 + shape[1]:] == 7).all()
    # a target of the wrong dtype
    other = np.float64 if dtype == np.float32 else np.float32
    with pytest.raises(ValueError, match="batchnorm: out must be"):
        norm.batchnorm_gpu(*args, out=device.put(np.empty(shape, other)), **attrs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_in_place(device, rng, dtype):
    x = rng.standard_normal((2, 4, 6, 5)).astype(dtype)
    stats = [rng.uniform(0.5, 2, 4).astype(dtype) for _ in range(4)]
    expected = norm.batchnorm(x, *stats, eps=1e-5)
    rest = put(device, stats)
    d_x = device.put(x.copy())
    assert norm.batchnorm_gpu(d_x, *rest, eps=1e-5, out=d_x) is d_x
    close(device, d_x, expected)
    # in place on a non-contiguous view: a channel slice of a larger buffer
    wide = device.put(np.zeros((2, 6, 6, 5), dtype=dtype))
    view = wide[:, 2:]
    view[...] = device.put(x)
    norm.batchnorm_gpu(view, *rest, eps=1e-5, out=view)
    close(device, view, expected)
    assert (device.get(wide)[:, :2] == 0).all()


# ---------------------------------------------------------------- training: the generic pair


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("train", [True, False])
def test_generic_training_runs_on_device_arrays(device, rng, dtype, train):
    x = rng.standard_normal((3, 4, 6, 5)).astype(dtype)
    stats = [rng.uniform(0.5, 2, 4).astype(dtype), rng.standard_normal(4).astype(dtype),
             rng.standard_normal(4).astype(dtype), rng.uniform(0.5, 2, 4).astype(dtype)]
    cases = [
        (norm.lrn_forward, norm.lrn_backward, [], dict(size=3, alpha=0.1, beta=0.75, k=1.0)),
        (norm.lrn_forward, norm.lrn_backward, [], dict(size=4, alpha=0.5, beta=0.6, k=2.0)),
        (norm.batchnorm_forward, norm.batchnorm_backward, stats, dict(eps=1e-3, momentum=0.1)),
    ]
    for forward, backward, params, attrs in cases:
        numpy_params = [p.copy() for p in params]  # batchnorm moves its statistics
        y_ref, saved_ref = forward(x, *numpy_params, train=train, rng=None, **attrs)
        dy = rng.standard_normal(y_ref.shape).astype(dtype)
        gxs_ref, gps_ref = backward(saved_ref, dy)
        d_params = [device.put(p.copy()) for p in params]
        d_dy = device.put(dy)
        y, saved = forward(device.put(x), *d_params, train=train, rng=None, **attrs)
        gxs, gps = backward(saved, d_dy)
        close(device, y, y_ref)
        assert len(gxs) == len(gxs_ref) and len(gps) == len(gps_ref)
        for mine, ref in zip(list(gxs) + list(gps), list(gxs_ref) + list(gps_ref)):
            if ref is None:
                assert mine is None
                continue
            close(device, mine, ref)
            assert not device.xp.shares_memory(mine, d_dy)  # a new array the caller owns
        for moved, ref in zip(d_params, numpy_params):  # running statistics, in place
            close(device, moved, ref)


# ================================================================ spec section 9: scale's GPU
# kernel, layer and group norm's generic kernels on device arrays, batch norm on every rank

RANK_SHAPES = [(3, 4), (2, 4, 7), (2, 4, 3, 5), (2, 4, 2, 3, 4)]  # [F], [C, L], maps, volumes


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", RANK_SHAPES, ids=str)
@pytest.mark.parametrize("bias", [False, True])
def test_scale_matches_numpy(device, rng, dtype, shape, bias):
    x = rng.standard_normal(shape).astype(dtype)
    params = [rng.standard_normal(4).astype(dtype) for _ in range(1 + bias)]
    close(device, norm.scale_gpu(*put(device, [x] + params)), norm.scale(x, *params))
    same_error(device, norm.scale, norm.scale_gpu, (x, params[0][:3]), {})
    same_error(device, norm.scale, norm.scale_gpu, (x[0, 0],) + tuple(params), {})


@pytest.mark.parametrize("dtype", DTYPES)
def test_scale_out_in_place_and_channel_slices(device, rng, dtype):
    x = rng.standard_normal((2, 4, 6, 5)).astype(dtype)
    params = [rng.standard_normal(4).astype(dtype), rng.standard_normal(4).astype(dtype)]
    expected = norm.scale(x, *params)
    rest = put(device, params)
    out = device.put(np.full(x.shape, np.nan, dtype=dtype))
    assert norm.scale_gpu(device.put(x), *rest, out=out) is out
    close(device, out, expected)
    d_x = device.put(x.copy())
    assert norm.scale_gpu(d_x, *rest, out=d_x) is d_x  # in_place="first"
    close(device, d_x, expected)
    wide = device.put(np.full((2, 7, 6, 5), 7.0, dtype=dtype))
    part = wide[:, 1:5]  # a concat's channel slice, not C-contiguous
    norm.scale_gpu(device.put(x), *rest, out=part)
    close(device, part, expected)
    edges = device.get(wide)
    assert (edges[:, :1] == 7).all() and (edges[:, 5:] == 7).all()
    view = wide[:, 3:7]  # in place on a non-contiguous view
    view[...] = device.put(x)
    norm.scale_gpu(view, *rest, out=view)
    close(device, view, expected)
    other = np.float64 if dtype == np.float32 else np.float32
    with pytest.raises(ValueError, match="scale: out must be"):
        norm.scale_gpu(device.put(x), *rest, out=device.put(np.empty(x.shape, other)))


def test_scale_float16_and_integer_inputs(device, rng):
    x = rng.standard_normal((2, 3, 4)).astype(np.float16)
    w = rng.standard_normal(3).astype(np.float16)
    y = norm.scale_gpu(device.put(x), device.put(w))
    assert device.get(y).dtype == np.float16  # the generic kernel
    np.testing.assert_allclose(device.get(y), norm.scale(x, w), rtol=1e-3, atol=1e-3)
    ints = np.arange(24).reshape(2, 3, 4)
    w = rng.standard_normal(3)
    close(device, norm.scale_gpu(device.put(ints), device.put(w)), norm.scale(ints, w))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", RANK_SHAPES, ids=str)
def test_batchnorm_on_every_rank_matches_numpy(device, rng, dtype, shape):
    x = rng.standard_normal(shape).astype(dtype)
    arrays = [x] + _stats(rng, 4, dtype)
    attrs = dict(eps=1e-3, momentum=0.1)
    close(device, norm.batchnorm_gpu(*put(device, arrays), **attrs),
          norm.batchnorm(*arrays, **attrs))


NORMS = [
    ("layernorm", dict(eps=1e-5)),
    ("groupnorm", dict(groups=2, eps=1e-5)),
    ("groupnorm", dict(groups=4, eps=1e-3)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", RANK_SHAPES, ids=str)
@pytest.mark.parametrize("name, attrs", NORMS, ids=str)
def test_layer_and_group_norm_run_on_device_arrays(device, rng, dtype, shape, name, attrs):
    kernel = getattr(norm, name)
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    params = [rng.uniform(0.5, 2, 4).astype(dtype), rng.standard_normal(4).astype(dtype)]
    expected = kernel(x, *params, **attrs)
    rest = put(device, params)
    close(device, kernel(device.put(x), *rest, **attrs), expected)
    d_x = device.put(x.copy())
    assert kernel(d_x, *rest, out=d_x, **attrs) is d_x  # in place
    close(device, d_x, expected)
    wide = device.put(np.full((shape[0], 6) + shape[2:], 7.0, dtype=dtype))
    part = wide[:, 1:5]
    kernel(device.put(x), *rest, out=part, **attrs)
    close(device, part, expected)
    # the training pair
    forward, backward = getattr(norm, f"{name}_forward"), getattr(norm, f"{name}_backward")
    y_ref, saved_ref = forward(x, *params, **attrs)
    dy = rng.standard_normal(shape).astype(dtype)
    gxs_ref, gps_ref = backward(saved_ref, dy)
    y, saved = forward(device.put(x), *rest, **attrs)
    d_dy = device.put(dy)
    gxs, gps = backward(saved, d_dy)
    close(device, y, y_ref)
    for mine, ref in zip(list(gxs) + list(gps), list(gxs_ref) + list(gps_ref)):
        close(device, mine, ref)
        assert not device.xp.shares_memory(mine, d_dy)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
def test_scale_training_pair_on_device_arrays(device, rng, dtype, bias):
    x = rng.standard_normal((3, 4, 5, 2)).astype(dtype)
    params = [rng.standard_normal(4).astype(dtype) for _ in range(1 + bias)]
    y_ref, saved_ref = norm.scale_forward(x, *params)
    dy = rng.standard_normal(x.shape).astype(dtype)
    gxs_ref, gps_ref = norm.scale_backward(saved_ref, dy)
    y, saved = norm.scale_forward(device.put(x), *put(device, params))
    gxs, gps = norm.scale_backward(saved, device.put(dy))
    close(device, y, y_ref)
    assert len(gps) == len(params)
    for mine, ref in zip(list(gxs) + list(gps), list(gxs_ref) + list(gps_ref)):
        close(device, mine, ref)
