"""ops/resize.py on device arrays. The family has no CUDA text: its generic kernels and
training pairs run on CuPy arrays as they are, so this checks they use only what CuPy has
(``take``, ``copyto`` with ``where``, ``as_strided``, batched ``matmul``) on sizes larger
than the conformance examples, through every path: strided and gathered taps, wide bands,
ties, ``out=`` channel slices, chunked transposed convolutions.

Every test takes the ``device`` fixture (``conftest.py``): ``cupy`` on a CUDA device,
``emulated`` NumPy arrays through the same code.
"""

from __future__ import annotations

import numpy as np
import pytest

from cnnc.ops import resize

DTYPES = [np.float32, np.float64]
TOLERANCES = {
    np.dtype(np.float32): dict(rtol=2e-5, atol=2e-5),
    np.dtype(np.float64): dict(rtol=1e-11, atol=1e-12),
}


def close(device, actual, expected):
    actual = device.get(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    np.testing.assert_allclose(actual, expected, **TOLERANCES[expected.dtype])


def _both(device, forward, backward, arrays, attrs, rng):
    """Forward and backward on the device against the host."""
    y, saved = forward(*arrays, **attrs)
    dy = rng.standard_normal(y.shape).astype(y.dtype)
    want = backward(saved, dy)
    on = [None if a is None else device.put(a) for a in arrays]
    d_y, d_saved = forward(*on, **attrs)
    close(device, d_y, y)
    got = backward(d_saved, device.put(dy))
    for g, w in zip(list(got[0]) + list(got[1]), list(want[0]) + list(want[1])):
        close(device, g, w)


CASES = [
    ("upsample", (2, 8, 13, 11), dict(factor=2, mode="nearest", align_corners=False)),
    ("upsample", (2, 8, 13, 11), dict(factor=(3, 2), mode="bilinear", align_corners=False)),
    ("upsample", (2, 8, 13, 11), dict(factor=(2, 5), mode="bilinear", align_corners=True)),
    ("upsample", (2, 4, 50), dict(factor=3, mode="linear", align_corners=False)),
    ("upsample", (1, 3, 4, 5, 6), dict(factor=2, mode="trilinear", align_corners=False)),
    ("adaptive_avgpool", (2, 8, 13, 11), dict(size=(6, 4))),
    ("adaptive_avgpool", (2, 8, 14, 14), dict(size=7)),
    ("adaptive_avgpool", (2, 4, 300), dict(size=7)),
    ("adaptive_avgpool", (2, 4, 3, 5, 6), dict(size=(5, 2, 4))),
    ("adaptive_maxpool", (2, 8, 13, 11), dict(size=(6, 4))),
    ("adaptive_maxpool", (2, 8, 14, 14), dict(size=7)),
    ("adaptive_maxpool", (2, 4, 300), dict(size=7)),
    ("adaptive_maxpool", (2, 4, 3), dict(size=60)),
    ("adaptive_maxpool", (2, 4, 3, 5, 6), dict(size=(5, 2, 4))),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, shape, attrs", CASES)
def test_resizing_matches_numpy(device, rng, dtype, name, shape, attrs):
    x = (rng.permutation(int(np.prod(shape))).reshape(shape) * 0.01).astype(dtype)
    kernel = getattr(resize, name)
    close(device, kernel(device.put(x), **attrs), kernel(x, **attrs))
    _both(device, getattr(resize, f"{name}_forward"), getattr(resize, f"{name}_backward"),
          [x], attrs, rng)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("attrs, bias", [
    (dict(stride=2, pad=0, output_pad=0, dilation=1, groups=1), True),
    (dict(stride=2, pad=1, output_pad=1, dilation=1, groups=2), False),
    (dict(stride=(1, 3), pad=(2, 1), output_pad=(1, 2), dilation=(2, 1), groups=4), True),
])
def test_conv_transpose2d_matches_numpy(device, rng, dtype, attrs, bias, monkeypatch):
    x = rng.standard_normal((5, 8, 9, 7)).astype(dtype)
    w = rng.standard_normal((8, 12 // attrs["groups"], 3, 2)).astype(dtype)
    b = rng.standard_normal(12).astype(dtype) if bias else None
    want = resize.conv_transpose2d(x, w, b, **attrs)
    d_w = device.put(w)
    d_b = None if b is None else device.put(b)
    close(device, resize.conv_transpose2d(device.put(x), d_w, d_b, **attrs), want)
    monkeypatch.setattr(resize, "WORKSPACE_BYTES", 1)  # one sample per chunk on the host
    monkeypatch.setattr(resize.gpu, "WORKSPACE_BYTES", 1)  # and on the device
    close(device, resize.conv_transpose2d(device.put(x), d_w, d_b, **attrs), want)
    _both(device, resize.conv_transpose2d_forward, resize.conv_transpose2d_backward,
          [x, w, b], attrs, rng)


@pytest.mark.parametrize("name, attrs", [
    ("upsample", dict(factor=(2, 3), mode="nearest", align_corners=False)),
    ("upsample", dict(factor=2, mode="bilinear", align_corners=False)),
])
def test_upsample_into_a_channel_slice(device, rng, name, attrs):
    x = rng.standard_normal((2, 3, 4, 5))
    want = resize.upsample(x, **attrs)
    wide = device.put(np.full((2, 6) + want.shape[2:], 7.0))
    part = wide[:, 2:5]
    resize.upsample(device.put(x), out=part, **attrs)
    close(device, part, want)
    edges = device.get(wide)
    assert (edges[:, :2] == 7).all() and (edges[:, 5:] == 7).all()
