"""ops/tensor.py on device arrays: it has no GPU kernels of its own; its generic kernels
and training pairs are CuPy's array operations when handed CuPy arrays.

Every test takes the ``device`` fixture (``conftest.py``): ``cupy`` on a CUDA device,
``emulated`` NumPy arrays through the same code.
"""

from __future__ import annotations

import numpy as np
import pytest

from cnnc.ops import tensor

DTYPES = [np.float32, np.float64]
TOLERANCES = {
    np.dtype(np.float32): dict(rtol=1e-5, atol=1e-6),
    np.dtype(np.float64): dict(rtol=1e-12, atol=1e-12),
}


def close(device, actual, expected):
    actual = device.get(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    np.testing.assert_allclose(actual, expected, **TOLERANCES[expected.dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernels_match_numpy(device, rng, dtype):
    x = rng.standard_normal((2, 6, 3, 4)).astype(dtype)
    z = rng.standard_normal((2, 6, 3, 4)).astype(dtype)
    cases = [
        (tensor.flatten, (x,), {}),
        (tensor.concat, (x, z, x[:, :2]), dict(axis=1)),
        (tensor.add, (x, z, x), {}),
        (tensor.add, (x,), {}),
        (tensor.dropout, (x,), dict(p=0.5)),
    ]
    for kernel, arrays, attrs in cases:
        close(device, kernel(*[device.put(a) for a in arrays], **attrs), kernel(*arrays, **attrs))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count", [2, 3])
def test_add_into_out_in_place_or_a_channel_slice(device, rng, dtype, count):
    xs = [rng.standard_normal((2, 4, 3, 5)).astype(dtype) for _ in range(count)]
    expected = tensor.add(*xs)
    for target in range(count):  # in_place="any"
        d_xs = [device.put(x.copy()) for x in xs]
        assert tensor.add(*d_xs, out=d_xs[target]) is d_xs[target]
        close(device, d_xs[target], expected)
    wide = device.put(np.full((2, 7, 3, 5), 7.0, dtype=dtype))
    part = wide[:, 1:5]
    tensor.add(*[device.put(x) for x in xs], out=part)
    close(device, part, expected)
    edges = device.get(wide)
    assert (edges[:, :1] == 7).all() and (edges[:, 5:] == 7).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_training_pairs_match_numpy(device, rng, dtype):
    x = rng.standard_normal((3, 4, 6, 5)).astype(dtype)
    d = rng.standard_normal((3, 2, 6, 5)).astype(dtype)
    cases = [
        (tensor.flatten_forward, tensor.flatten_backward, [x], {}),
        (tensor.concat_forward, tensor.concat_backward, [x, d], dict(axis=1)),
        (tensor.add_forward, tensor.add_backward, [x, x * 2, x], {}),
        (tensor.dropout_forward, tensor.dropout_backward, [x], dict(p=0.4, train=False)),
        (tensor.dropout_forward, tensor.dropout_backward, [x], dict(p=0.0)),
    ]
    for forward, backward, inputs, attrs in cases:
        y_ref, saved_ref = forward(*inputs, rng=None, **attrs)
        dy = rng.standard_normal(y_ref.shape).astype(dtype)
        gxs_ref, _ = backward(saved_ref, dy)
        d_dy = device.put(dy)
        y, saved = forward(*[device.put(a) for a in inputs], rng=None, **attrs)
        gxs, gps = backward(saved, d_dy)
        close(device, y, y_ref)
        assert gps == () and len(gxs) == len(gxs_ref)
        for mine, ref in zip(gxs, gxs_ref):
            close(device, mine, ref)
            assert not device.xp.shares_memory(mine, d_dy)


def test_dropout_mask_on_device(device):
    """The mask comes from the generator handed in: CuPy's on a CUDA device."""
    x = device.put(np.ones((64, 50), dtype=np.float32))
    if device.name == "cupy":
        gen = device.xp.random.default_rng(7)
    else:
        gen = np.random.default_rng(7)
    y, saved = tensor.dropout_forward(x, p=0.25, train=True, rng=gen)
    kept = device.get(y) != 0
    assert 0.70 < kept.mean() < 0.80
    np.testing.assert_allclose(device.get(y)[kept], 1 / 0.75, rtol=1e-6)
    (gx,), _ = tensor.dropout_backward(saved, device.xp.ones_like(y))
    np.testing.assert_allclose(device.get(gx), kept / np.float32(0.75), rtol=1e-6)
