"""`build(backend="onnxruntime")`: inference through the exported graph in ONNX Runtime,
parameters kept (and loaded, saved) in NumPy; training says it stays on NumPy and CuPy."""

from __future__ import annotations

import numpy as np
import pytest

import cnnc

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

NET = """\
network small
input image: [3, 12, 12]
block unit(c) {
    return in -> conv(c, 3, pad=1) -> batchnorm -> relu
}
x = image -> unit(8) -> maxpool(2, ceil=true) -> unit(8)
output logits = x -> global_avgpool -> flatten -> dense(4)
output probs = x -> flatten -> dense(3) -> softmax
"""


def _x(n=3):
    return np.random.default_rng(0).standard_normal((n, 3, 12, 12)).astype(np.float32)


def test_inference_equals_numpy_and_follows_loaded_weights(tmp_path):
    net = cnnc.compile(NET)
    ours = net.build(backend="numpy", seed=4)
    ort_model = net.build(backend="onnxruntime", seed=1)
    assert str(ort_model.backend) == "onnxruntime"
    ours.save(tmp_path / "w.npz")
    ort_model.load(tmp_path / "w.npz")  # a new session follows the new parameters
    got, want = ort_model(_x()), ours(_x())
    assert set(got) == {"logits", "probs"}
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ort_model(_x(1))["probs"].sum(axis=1), 1.0, rtol=1e-6)


def test_training_stays_on_numpy_and_cupy():
    model = cnnc.compile(NET).build(backend="onnxruntime")
    with pytest.raises(RuntimeError) as info:
        model.forward(_x())
    assert "the onnxruntime backend runs inference only; training stays on the NumPy and " \
           "CuPy backends" in str(info.value)


def test_float32_only_and_input_errors_in_words():
    net = cnnc.compile(NET)
    with pytest.raises(ValueError, match="backend onnxruntime runs float32 only"):
        net.build(backend="onnxruntime", dtype="float64")
    from cnnc.runtime.errors import InputError

    with pytest.raises(InputError, match=r"input `image` expects \[N, 3, 12, 12\]"):
        net.build(backend="onnxruntime")(np.zeros((1, 3, 10, 10), np.float32))
