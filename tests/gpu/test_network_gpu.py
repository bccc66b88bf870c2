"""Whole networks on the CuPy backend's tables against the NumPy backend: every op, folded
batchnorms, fused epilogues, concat slices and a residual add, through `Model`, for
inference and training. Runs on a CUDA device (``gpu``) and emulated on the CPU
(conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest

from cnnc.runtime import cupy_backend
from cnnc.runtime.backend import Backend

DTYPES = [np.float32, np.float64]
TOLERANCES = {
    np.dtype(np.float32): dict(rtol=1e-4, atol=1e-4),
    np.dtype(np.float64): dict(rtol=1e-9, atol=1e-10),
}


def close(device, actual, expected):
    """``actual`` (on the device) equals ``expected`` within the tolerance of its dtype,
    scaled to the size of the values."""
    actual = device.get(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    tol = TOLERANCES[np.dtype(expected.dtype)]
    scale = max(1.0, float(np.nanmax(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale)


EVERY_OP = """
network every_op

input image: [3, 13, 11]

block mix(c) {
    a = in -> conv(c, 3, pad=same, bias=false) -> batchnorm -> prelu
    b = in -> conv(c, 1) -> swish(1.5)
    d = in -> maxpool(3, stride=1, pad=1) -> conv(c, 1) -> elu(0.5)
    return concat(a, b, d)
}

block res(c) {
    r = in -> conv(c, 3, pad=1, groups=2) -> batchnorm -> leaky_relu(0.2)
        -> conv(c, 3, pad=2, dilation=2) -> batchnorm
    return add(in, r)
}

stem = image -> conv(8, 3, stride=2, pad=1) -> batchnorm -> relu -> lrn(3)
body = stem -> conv(8, 3, pad=1, groups=8) -> selu -> mix(4) -> res(12) -> relu
pooled = body -> avgpool(3, stride=2, ceil=true, count_pad=false) -> dropout(0.2)
    -> maxout(2) -> silu -> maxpool(2, stride=1, dilation=2, ceil=true)

output logits = pooled -> global_maxpool -> flatten -> dense(16) -> softplus -> dense(8)
    -> sigmoid -> dense(5) -> softmax
output features = body -> global_avgpool -> flatten
"""


def _models(device, dtype):
    """The NumPy model and the same model (same parameters) on ``device``."""
    import cnnc

    compiled = cnnc.compile(EVERY_OP)
    reference = compiled.build(backend="numpy", dtype=dtype, seed=3)
    rng = np.random.default_rng(5)
    for key, value in reference.params.items():  # running statistics worth folding
        if key.endswith("running_mean"):
            value[...] = rng.standard_normal(value.shape)
        elif key.endswith("running_var"):
            value[...] = rng.uniform(0.5, 2.0, value.shape)
    if device.name == "cupy":
        model = compiled.build(backend="cupy", dtype=dtype, seed=3)
    else:
        # the NumPy model with this backend's tables: what backend="cupy" selects
        model = compiled.build(backend="numpy", dtype=dtype, seed=3)
        model.backend = Backend("emulated", np, cupy_backend.KERNELS, cupy_backend.GRADS,
                                cupy_backend.ACCEPTS_OUT, cupy_backend.ACCEPTS_SCALE,
                                on_device=False)
        model.kernels = model.backend.kernels
    model.params = {k: device.put(v.copy()) for k, v in reference.params.items()}
    model.mark_changed()
    return reference, model


@pytest.mark.parametrize("dtype", DTYPES)
def test_whole_network_matches_the_numpy_backend(device, rng, dtype):
    reference, model = _models(device, np.dtype(dtype).name)
    x = rng.standard_normal((3, 3, 13, 11)).astype(dtype)
    expected = reference(x)
    for got in (model(device.put(x)), model.interpret(device.put(x))):
        assert set(got) == {"logits", "features"}
        for name in got:
            close(device, got[name], expected[name])

    trains = [False, True] if device.name == "emulated" else [False]  # dropout masks differ
    for train in trains:
        reference_out = reference.forward(x, train=train)
        out = model.forward(device.put(x), train=train)
        for name in out:
            close(device, out[name], reference_out[name])
        dy = {name: rng.standard_normal(v.shape).astype(dtype)
              for name, v in reference_out.items()}
        gx_ref = reference.backward(dy)
        gx = model.backward({name: device.put(v) for name, v in dy.items()})
        close(device, gx, gx_ref)
        assert set(model.grads) == set(reference.grads)
        for key in reference.grads:
            close(device, model.grads[key], reference.grads[key])
