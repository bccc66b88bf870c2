"""Every modern example (issue 9) runs, exports and trains: `cnnc run` on one sample,
`cnnc export` checked in ONNX Runtime against cnnc's own output, and two SGD steps through
forward and backward with every gradient finite and of its parameter's shape.

The figures (parameters, MACs, torchvision outputs) are tested in
tests/compiler/test_modern_examples*.py; this file checks that each network also works.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import cnnc
from cnnc.cli import main
from cnnc.runtime.losses import mean_squared_error, softmax_cross_entropy
from cnnc.runtime.optim import SGD

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ["mobilenet_v2", "efficientnet_b0", "convnext_tiny", "shufflenet_v2", "unet", "m5",
            "c3d"]


# Sizes for the training steps of the two largest (192 and 39 GMACs a sample as written):
# their `let` constants shrink them, the layers stay the same.
SMALLER = {"unet": {"size": 64}, "c3d": {"crop": 32, "fc": 64}}


def compiled(name, consts=None):
    return cnnc.compile(ROOT / "examples" / f"{name}.cnn", consts=consts)


def sample(net, batch=1, seed=0):
    (name,) = net.inputs
    shape = net.nodes[name].shape
    return np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)


@pytest.mark.parametrize("name", EXAMPLES)
def test_run_and_export_agree_in_onnx_runtime(name, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    consts = SMALLER.get(name, {})
    net = compiled(name, consts)
    x = sample(net)
    np.save(tmp_path / "x.npy", x)
    model = ROOT / "examples" / f"{name}.cnn"
    lets = [arg for key, value in consts.items() for arg in ("--let", f"{key}={value}")]
    assert main(["run", str(model), "--input", str(tmp_path / "x.npy"),
                 "-o", str(tmp_path / "y.npz"), *lets]) == 0
    assert main(["export", str(model), "-o", str(tmp_path / "m.onnx"), *lets]) == 0
    capsys.readouterr()
    with np.load(tmp_path / "y.npz") as saved:
        ours = {k: saved[k] for k in saved.files}
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {session.get_inputs()[0].name: x})
    names = [o.name for o in session.get_outputs()]
    assert sorted(names) == sorted(ours)
    for key, value in zip(names, theirs):
        assert value.shape == ours[key].shape
        assert np.isfinite(ours[key]).all()
        scale = max(1.0, float(np.abs(value).max()))
        np.testing.assert_allclose(ours[key], value, atol=2e-4 * scale, rtol=1e-3)


@pytest.mark.parametrize("name", EXAMPLES)
def test_two_training_steps(name):
    net = compiled(name, SMALLER.get(name))
    model = net.build(backend="numpy", seed=0, dtype="float32")
    batch = 2
    x = sample(net, batch)
    before = {k: v.copy() for k, v in model.params.items()}
    optimizer = SGD(model, lr=1e-3, momentum=0.9)
    for step in range(2):
        out = model.forward(x, train=True, logits=True)
        if out.ndim == 2:  # a classifier: cross-entropy against fixed labels
            labels = np.arange(batch) % out.shape[1]
            loss, dout = softmax_cross_entropy(out, labels)
        else:  # a segmentation map: squared error against a fixed target
            target = np.zeros_like(out)
            loss, dout = mean_squared_error(out, target)
        assert np.isfinite(loss)
        model.backward(dout)
        trainable = set(net.plan.params)
        assert set(model.grads) == trainable
        for key, g in model.grads.items():
            assert g.shape == model.params[key].shape, key
            assert np.isfinite(g).all(), key
        last = {k: g.copy() for k, g in model.grads.items()}
        optimizer.step()
    changed = {k for k in before if not np.array_equal(before[k], model.params[k])}
    # every parameter whose last update is representable in float32 moved (a conv bias
    # before a batchnorm has a zero gradient, and a tiny gradient on a weight near 1 rounds
    # away), and so did most of them
    movable = {k for k in trainable if 1e-3 * np.abs(last[k]).max()
               > 1e-6 * max(1.0, float(np.abs(before[k]).max()))}
    assert movable <= changed
    assert len(changed & trainable) > len(trainable) // 2
