"""Whole networks on [C, L] signals and [C, D, H, W] volumes (spec section 9, other ranks):
conv1d, conv3d and the 1-D and 3-D pools checked, lowered, planned (a batchnorm folded into
the convolution before it and a relu fused into its epilogue), run, trained and exported,
against the same network written with PyTorch's functional ops and against ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest

import cnnc

SIGNAL = """network m5
input x: [2, 64]
output y = x -> conv1d(8, 9, stride=2, pad=4) -> batchnorm -> relu
    -> maxpool1d(3, stride=2, ceil=true)
    -> conv1d(8, 3, groups=8, pad=same, dilation=2) -> relu
    -> avgpool1d(3, stride=2, pad=1, count_pad=false) -> conv1d(6, 1) -> global_avgpool
    -> flatten -> dense(4)
"""

VOLUME = """network c3d
input v: [3, 6, 14, 14]
output z = v -> conv3d(8, [3, 3, 3], pad=same) -> batchnorm -> relu -> maxpool3d([1, 2, 2])
    -> conv3d(8, 3, stride=[1, 2, 2], pad=[1, 0, 1], groups=2, dilation=[1, 2, 1]) -> relu
    -> avgpool3d(2, ceil=true, count_pad=false) -> conv3d(4, [1, 1, 1], bias=false)
    -> global_maxpool -> flatten
"""


def _one_line(source):
    """The sources above with their continuation lines joined (the language has one
    chain per line)."""
    return source.replace("\n    ->", " ->")


def _model(source, dtype="float64"):
    model = cnnc.compile(_one_line(source)).build(backend="numpy", dtype=dtype, seed=3)
    rng = np.random.default_rng(4)
    for key, value in model.params.items():  # running statistics away from 0 and 1
        if key.endswith("running_var"):
            value[...] = rng.random(value.shape) + 0.5
        elif key.endswith("running_mean"):
            value[...] = rng.standard_normal(value.shape)
    return model


def _torch_signal(torch, P, x, train):
    F = torch.nn.functional
    t = F.conv1d(x, P["y.conv1d1.weight"], P["y.conv1d1.bias"], 2, 4)
    t = F.batch_norm(t, P["y.batchnorm1.running_mean"].clone(),
                     P["y.batchnorm1.running_var"].clone(), P["y.batchnorm1.weight"],
                     P["y.batchnorm1.bias"], train, 0.1, 1e-5)
    t = F.max_pool1d(F.relu(t), 3, 2, ceil_mode=True)
    t = F.relu(F.conv1d(t, P["y.conv1d2.weight"], P["y.conv1d2.bias"], 1, 2, 2, 8))
    t = F.avg_pool1d(t, 3, 2, 1, count_include_pad=False)
    t = F.conv1d(t, P["y.conv1d3.weight"], P["y.conv1d3.bias"])
    t = t.mean(dim=2)
    return F.linear(t, P["y.dense1.weight"], P["y.dense1.bias"])


def _torch_volume(torch, P, v, train):
    F = torch.nn.functional
    t = F.conv3d(v, P["z.conv3d1.weight"], P["z.conv3d1.bias"], 1, 1)
    t = F.batch_norm(t, P["z.batchnorm1.running_mean"].clone(),
                     P["z.batchnorm1.running_var"].clone(), P["z.batchnorm1.weight"],
                     P["z.batchnorm1.bias"], train, 0.1, 1e-5)
    t = F.max_pool3d(F.relu(t), (1, 2, 2))
    t = F.conv3d(t, P["z.conv3d2.weight"], P["z.conv3d2.bias"], (1, 2, 2), (1, 0, 1),
                 (1, 2, 1), 2)
    t = F.avg_pool3d(F.relu(t), 2, ceil_mode=True, count_include_pad=False)
    t = F.conv3d(t, P["z.conv3d3.weight"])
    return t.amax(dim=(2, 3, 4))


CASES = [
    pytest.param(SIGNAL, "x", (3, 2, 64), "y", _torch_signal, id="signal"),
    pytest.param(VOLUME, "v", (2, 3, 6, 14, 14), "z", _torch_volume, id="volume"),
]


def test_shapes_params_and_macs():
    net = cnnc.check(_one_line(SIGNAL))
    assert net.ok, net.render()
    shapes = {name: node.shape for name, node in net.nodes.items()}
    assert shapes["y.conv1d1"] == (8, 32) and shapes["y.maxpool1d1"] == (8, 16)
    assert shapes["y.avgpool1d1"] == (8, 8) and shapes["y.global_avgpool1"] == (6, 1)
    net = cnnc.check(_one_line(VOLUME))
    assert net.ok, net.render()
    shapes = {name: node.shape for name, node in net.nodes.items()}
    assert shapes["z.conv3d1"] == (8, 6, 14, 14) and shapes["z.maxpool3d1"] == (8, 6, 7, 7)
    assert shapes["z.conv3d2"] == (8, 6, 2, 4) and shapes["z.avgpool3d1"] == (8, 3, 1, 2)
    assert shapes["z.global_maxpool1"] == (4, 1, 1, 1)
    from cnnc.compiler.plan import lower

    plan = lower(cnnc.compile(_one_line(VOLUME)).network)
    ops = [step.op.value for step in plan.steps]
    assert ops.count("conv3d") == 3 and "maxpool3d" in ops and "avgpool3d" in ops


@pytest.mark.torch
@pytest.mark.parametrize("source, name, shape, out, reference", CASES)
def test_inference_matches_pytorch(source, name, shape, out, reference):
    torch = pytest.importorskip("torch")
    model = _model(source)
    x = np.random.default_rng(5).standard_normal(shape)
    got = model({name: x})
    P = {k: torch.tensor(np.asarray(v)) for k, v in model.params.items()}
    want = reference(torch, P, torch.tensor(x), False).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10)
    # the plan folded the batchnorm and fused the relu into the first convolution
    first = model.executor.eplan.execs[0]
    assert first.fold and first.attrs["act"][0] == "relu"
    np.testing.assert_allclose(model.interpret({name: x}), got, rtol=1e-9, atol=1e-10)
    model32 = _model(source, "float32")
    model32.params.update({k: np.asarray(v, np.float32) for k, v in model.params.items()})
    model32.mark_changed()
    np.testing.assert_allclose(model32({name: x.astype(np.float32)}), want, rtol=1e-4,
                               atol=1e-4)


@pytest.mark.torch
@pytest.mark.parametrize("source, name, shape, out, reference", CASES)
def test_training_gradients_match_pytorch(source, name, shape, out, reference):
    torch = pytest.importorskip("torch")
    model = _model(source)
    x = np.random.default_rng(6).standard_normal(shape)
    P = {k: torch.tensor(np.asarray(v).copy(), requires_grad=not k.endswith(
        ("running_mean", "running_var"))) for k, v in model.params.items()}
    y = model.forward({name: x}, train=True)
    dy = np.random.default_rng(7).standard_normal(np.shape(y))
    gx = model.backward(dy)
    leaf = torch.tensor(x, requires_grad=True)
    want = reference(torch, P, leaf, True)
    np.testing.assert_allclose(y, want.detach().numpy(), rtol=1e-9, atol=1e-10)
    want.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(gx, leaf.grad.numpy(), rtol=1e-6, atol=1e-8)
    for key, grad in model.grads.items():
        np.testing.assert_allclose(grad, P[key].grad.numpy(), rtol=1e-6, atol=1e-8,
                                   err_msg=key)


@pytest.mark.parametrize("source, name, shape, out, reference", CASES)
def test_onnx_export_runs_the_same(source, name, shape, out, reference):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = _model(source, "float32")
    x = np.random.default_rng(8).standard_normal(shape).astype(np.float32)
    want = model({name: x})
    session = ort.InferenceSession(model.export().SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    (got,) = session.run([out], {name: x})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
