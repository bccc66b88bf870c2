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


# ---- the section-9 ops: broadcasting add and mul, slice, channel_shuffle, drop_path ------

BROADCASTS = [
    [(2, 6, 4, 5), (2, 6, 1, 1)],
    [(2, 6, 1, 1), (2, 6, 4, 5)],
    [(2, 1, 4, 5), (2, 6, 1, 1)],
    [(2, 6, 1, 5), (2, 1, 4, 1), (2, 6, 4, 1)],
    [(2, 3, 7), (2, 3, 1)],
    [(2, 2, 3, 4, 5), (2, 2, 1, 4, 1)],
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["add", "mul"])
@pytest.mark.parametrize("shapes", BROADCASTS, ids=str)
def test_broadcasting_merges_match_numpy(device, rng, dtype, name, shapes):
    kernel = getattr(tensor, name)
    xs = [rng.standard_normal(s).astype(dtype) for s in shapes]
    expected = kernel(*xs)
    close(device, kernel(*[device.put(x) for x in xs]), expected)
    for target, x in enumerate(xs):  # in place onto any input of the output's shape
        if x.shape != expected.shape:
            continue
        d_xs = [device.put(a.copy()) for a in xs]
        assert kernel(*d_xs, out=d_xs[target]) is d_xs[target]
        close(device, d_xs[target], expected)
    forward, backward = getattr(tensor, f"{name}_forward"), getattr(tensor, f"{name}_backward")
    y_ref, saved_ref = forward(*xs)
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    gxs_ref, _ = backward(saved_ref, dy)
    y, saved = forward(*[device.put(x) for x in xs])
    gxs, gps = backward(saved, device.put(dy))
    close(device, y, y_ref)
    assert gps == ()
    for mine, ref in zip(gxs, gxs_ref):
        close(device, mine, ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_slice_and_shuffle_match_numpy(device, rng, dtype):
    cases = [
        (tensor.channel_slice, tensor.slice_forward, tensor.slice_backward, (2, 6, 3, 4),
         dict(start=1, stop=4)),
        (tensor.channel_slice, tensor.slice_forward, tensor.slice_backward, (2, 6),
         dict(start=0, stop=6)),
        (tensor.channel_shuffle, tensor.shuffle_forward, tensor.shuffle_backward, (2, 6, 3, 4),
         dict(groups=2)),
        (tensor.channel_shuffle, tensor.shuffle_forward, tensor.shuffle_backward,
         (2, 6, 2, 3, 2), dict(groups=3)),
        (tensor.channel_shuffle, tensor.shuffle_forward, tensor.shuffle_backward, (2, 6, 5),
         dict(groups=6)),
    ]
    for kernel, forward, backward, shape, attrs in cases:
        x = rng.standard_normal(shape).astype(dtype)
        expected = kernel(x, **attrs)
        close(device, kernel(device.put(x), **attrs), expected)
        # into a concat's channel slice: not contiguous
        c = expected.shape[1]
        wide = device.put(np.full((shape[0], c + 3) + expected.shape[2:], 7.0, dtype=dtype))
        part = wide[:, 2:2 + c]
        assert kernel(device.put(x), out=part, **attrs) is part
        close(device, part, expected)
        edges = device.get(wide)
        assert (edges[:, :2] == 7).all() and (edges[:, 2 + c:] == 7).all()
        y_ref, saved_ref = forward(x, **attrs)
        dy = rng.standard_normal(y_ref.shape).astype(dtype)
        (g_ref,), _ = backward(saved_ref, dy)
        y, saved = forward(device.put(x), **attrs)
        (g,), gps = backward(saved, device.put(dy))
        close(device, y, y_ref)
        close(device, g, g_ref)
        assert gps == ()


def test_drop_path_mask_on_device(device):
    """One keep per sample, drawn from the generator handed in: CuPy's on a CUDA device."""
    x = device.put(np.ones((400, 3, 2, 2), dtype=np.float32))
    if device.name == "cupy":
        gen = device.xp.random.default_rng(7)
    else:
        gen = np.random.default_rng(7)
    y, saved = tensor.drop_path_forward(x, p=0.25, train=True, rng=gen)
    host = device.get(y).reshape(400, -1)
    kept = (host != 0).all(axis=1)
    assert (kept | (host == 0).all(axis=1)).all()
    assert 0.65 < kept.mean() < 0.85
    np.testing.assert_allclose(host[kept], 1 / 0.75, rtol=1e-6)
    (gx,), _ = tensor.drop_path_backward(saved, device.xp.ones_like(y))
    np.testing.assert_allclose(device.get(gx).reshape(400, -1),
                               np.repeat(kept[:, None] / np.float32(0.75), 12, 1), rtol=1e-6)
    assert tensor.drop_path(x, p=0.25) is x
