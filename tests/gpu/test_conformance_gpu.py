"""The CuPy backend on every primitive of the op registry and its examples, against the
NumPy backend: inference, ``out=``, the training forward and backward, in float32 and
float64 (the CUDA kernels) and float16 (the generic kernels, which the backend falls back
to). Runs on a real GPU (``-m gpu``) and emulated on the CPU (see conftest.py)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from cnnc.ops import PRIMITIVES, Op
from cnnc.runtime import cupy_backend, numpy_backend

CASES = [
    pytest.param(name, index, id=f"{name}-{index}")
    for name, p in PRIMITIVES.items()
    for index in range(len(p.examples(np.random.default_rng(0))))
]
TOLERANCE = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-11, atol=1e-13)}


def _example(name, index):
    return copy.deepcopy(PRIMITIVES[name].examples(np.random.default_rng(0))[index])


def _arrays(ex, dtype):
    return [None if a is None else np.asarray(a, dtype=dtype)
            for a in list(ex.inputs) + list(ex.params)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, index", CASES)
def test_inference_matches_numpy(device, name, index, dtype):
    ex = _example(name, index)
    op = Op(name)
    want = numpy_backend.KERNELS[op](*_arrays(copy.deepcopy(ex), dtype), **ex.attrs)
    args = [None if a is None else device.put(a) for a in _arrays(ex, dtype)]
    got = cupy_backend.KERNELS[op](*args, **ex.attrs)
    assert got.dtype == want.dtype
    np.testing.assert_allclose(device.get(got), want, **TOLERANCE[dtype])
    if PRIMITIVES[name].accepts_out:
        out = device.put(np.full(want.shape, np.nan, dtype=want.dtype))
        args = [None if a is None else device.put(a) for a in _arrays(_example(name, index),
                                                                       dtype)]
        cupy_backend.KERNELS[op](*args, out=out, **ex.attrs)
        np.testing.assert_allclose(device.get(out), want, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, index", CASES)
def test_training_matches_numpy(device, name, index, dtype):
    ex = _example(name, index)
    op = Op(name)
    forward, backward = numpy_backend.GRADS[op]
    rng = np.random.default_rng(5)
    want, saved = forward(*_arrays(copy.deepcopy(ex), dtype), train=True, rng=rng,
                          **ex.attrs)
    if not np.array_equal(want, forward(*_arrays(copy.deepcopy(ex), dtype), train=True,
                                        rng=np.random.default_rng(6), **ex.attrs)[0]):
        pytest.skip("training forward is random")
    dy = np.random.default_rng(3).standard_normal(want.shape).astype(dtype)
    want_gx, want_gw = backward(saved, dy)
    g_forward, g_backward = cupy_backend.GRADS[op]
    args = [None if a is None else device.put(a) for a in _arrays(ex, dtype)]
    got, g_saved = g_forward(*args, train=True, rng=device.xp.random.default_rng(5),
                             **ex.attrs)
    np.testing.assert_allclose(device.get(got), want, **TOLERANCE[dtype])
    got_gx, got_gw = g_backward(g_saved, device.put(dy))
    for g, w in zip(list(got_gx) + list(got_gw), list(want_gx) + list(want_gw)):
        if w is None:
            assert g is None
            continue
        assert g.dtype == w.dtype
        np.testing.assert_allclose(device.get(g), w, **TOLERANCE[dtype])


@pytest.mark.parametrize("name, index", [c for c in CASES
                                         if PRIMITIVES[c.values[0]].skips_input_grad])
def test_backward_without_the_input_gradient(device, name, index):
    """``input_grad=False`` (a first layer in training): no input gradient, the weights'
    gradients as the NumPy backend's."""
    ex = _example(name, index)
    op = Op(name)
    forward, backward = numpy_backend.GRADS[op]
    want, saved = forward(*_arrays(copy.deepcopy(ex), np.float32), train=True, **ex.attrs)
    dy = np.random.default_rng(3).standard_normal(want.shape).astype(np.float32)
    _, want_gw = backward(saved, dy)
    g_forward, g_backward = cupy_backend.GRADS[op]
    args = [None if a is None else device.put(a) for a in _arrays(ex, np.float32)]
    _, g_saved = g_forward(*args, train=True, **ex.attrs)
    got_gx, got_gw = g_backward(g_saved, device.put(dy), input_grad=False)
    assert all(g is None for g in got_gx)
    for g, w in zip(got_gw, want_gw):
        np.testing.assert_allclose(device.get(g), w, **TOLERANCE[np.float32])


@pytest.mark.parametrize("name, index", CASES)
def test_float16_goes_to_the_generic_kernel(device, name, index):
    ex = _example(name, index)
    op = Op(name)
    want = numpy_backend.KERNELS[op](*_arrays(copy.deepcopy(ex), np.float16), **ex.attrs)
    args = [None if a is None else device.put(a) for a in _arrays(ex, np.float16)]
    got = cupy_backend.KERNELS[op](*args, **ex.attrs)
    assert got.dtype == want.dtype
    np.testing.assert_allclose(device.get(got), want, rtol=1e-3, atol=1e-3)
