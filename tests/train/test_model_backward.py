"""Whole-network training passes: Model.forward(train=True) and Model.backward against
PyTorch autograd and finite differences, several inputs and outputs, logits, and the
memory `cnnc summary --train` reports."""

import json

import numpy as np
import pytest

import cnnc
from cnnc.runtime.model import InputError

# Every op but dropout (whose mask PyTorch would draw differently).
EVERY_OP = """
network every
input x: [4, 10, 10]
a = x -> conv(8, 3, pad=same) -> batchnorm -> prelu -> lrn(3) -> leaky_relu(0.2)
b = x -> maxpool(3, stride=2, pad=1, ceil=true) -> elu -> avgpool(2, stride=1, count_pad=false)
c = x -> conv(8, [3, 5], stride=2, pad=[1, 2], groups=4, bias=false) -> selu
d = concat(b, c) -> swish(1.5) -> softplus -> sigmoid -> tanh -> maxout(2) -> silu
e = a -> avgpool(2, ceil=true) -> conv(8, 1)
e2 = a -> maxpool(2) -> conv(8, 1, dilation=1)
f = add(e, e2) -> relu
d2 = d -> conv(8, 1)
g = concat(f, d2) -> global_avgpool -> flatten
h = d -> global_maxpool -> flatten
output logits = concat(g, h) -> dense(6) -> softmax
"""

TWO_HEADS = """
network heads
input x: [2, 6, 6]
input z: [3, 6, 6]
t = concat(x, z) -> conv(4, 3, pad=1) -> batchnorm -> relu
output p = t -> global_avgpool -> flatten -> dense(3)
u = z -> conv(4, 1)
output q = add(t, u) -> conv(2, 1)
"""


def _inputs(model, n, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal((n,) + s) for k, s in model.plan.inputs.items()}


def _perturb_running_stats(model):
    rng = np.random.default_rng(5)
    for key in model.params:
        if key.endswith("running_var"):
            model.params[key] = np.abs(rng.standard_normal(model.params[key].shape)) + 0.5
        elif key.endswith("running_mean"):
            model.params[key] = rng.standard_normal(model.params[key].shape)


@pytest.mark.parametrize("train", [True, False])
def test_every_op_matches_torch_autograd(train):
    torch = pytest.importorskip("torch")
    from cnnc.runtime.torch_ref import TorchPlan

    model = cnnc.compile(EVERY_OP).build(backend="numpy", dtype="float64", seed=1)
    _perturb_running_stats(model)
    before = {k: v.copy() for k, v in model.state().items()}
    xs = _inputs(model, 3)
    y = model.forward(xs, train=train)
    dy = np.random.default_rng(2).standard_normal(y.shape)
    dx = model.backward(dy)

    ref = TorchPlan(model.plan, {k: v.copy() for k, v in before.items()}, training=train)
    trainable = {k: v.requires_grad_() for k, v in ref.params.items() if k in model.plan.params}
    tx = {k: torch.from_numpy(v).requires_grad_() for k, v in xs.items()}
    ty = ref(tx)["logits"]
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dx, tx["x"].grad.numpy(), rtol=1e-7, atol=1e-10)
    assert set(model.grads) == set(model.plan.params)
    for key, t in trainable.items():
        np.testing.assert_allclose(model.grads[key], t.grad.numpy(), rtol=1e-7, atol=1e-10,
                                   err_msg=key)
    # training mode moved the running statistics exactly as PyTorch does
    for key in model.plan.buffers:
        np.testing.assert_allclose(model.params[key], ref.params[key].numpy(), rtol=1e-12)
        assert np.array_equal(model.params[key], before[key]) != train


def test_every_op_matches_finite_differences():
    model = cnnc.compile(EVERY_OP).build(backend="numpy", dtype="float64", seed=3)
    xs = _inputs(model, 2, seed=4)
    r = np.random.default_rng(6).standard_normal((2, 6))

    def loss():
        return float(np.sum(model.forward(xs, train=False) * r))

    model.forward(xs, train=False)
    dx = model.backward(r)
    grads = dict(model.grads)
    rng = np.random.default_rng(7)
    eps = 1e-6
    for key in ["a.conv1.weight", "c.conv1.weight", "a.prelu1.weight", "logits.dense1.bias",
                "a.batchnorm1.weight"]:
        direction = rng.standard_normal(model.params[key].shape)
        base = model.params[key].copy()
        model.params[key] = base + eps * direction
        up = loss()
        model.params[key] = base - eps * direction
        down = loss()
        model.params[key] = base
        assert (up - down) / (2 * eps) == pytest.approx(np.sum(grads[key] * direction),
                                                        rel=1e-5, abs=1e-8), key
    direction = rng.standard_normal(xs["x"].shape)
    base = xs["x"]
    xs["x"] = base + eps * direction
    up = loss()
    xs["x"] = base - eps * direction
    down = loss()
    assert (up - down) / (2 * eps) == pytest.approx(np.sum(dx * direction), rel=1e-5)


def test_logits_skip_the_final_softmax():
    model = cnnc.compile(EVERY_OP).build(backend="numpy", dtype="float64", seed=1)
    xs = _inputs(model, 2)
    probs = model.forward(xs, train=False)
    logits = model.forward(xs, train=False, logits=True)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs, e / e.sum(axis=1, keepdims=True), rtol=1e-12)
    model.backward(np.ones_like(logits))
    assert np.abs(model.grads["logits.dense1.bias"] - 2.0).max() < 1e-12


def test_several_inputs_and_outputs():
    model = cnnc.compile(TWO_HEADS).build(backend="numpy", dtype="float32", seed=0)
    xs = _inputs(model, 3)
    out = model.forward(xs, train=True)
    assert set(out) == {"p", "q"}
    dx = model.backward({"q": np.ones_like(out["q"])})  # p's gradient is taken as zero
    assert set(dx) == {"x", "z"} and dx["z"].dtype == np.float32
    assert not model.grads["p.dense1.weight"].any()
    assert model.grads["q.conv1.weight"].any()


def test_backward_errors():
    model = cnnc.compile(TWO_HEADS).build(backend="numpy", dtype="float64")
    with pytest.raises(RuntimeError, match="forward"):
        model.backward({"p": np.zeros((1, 3))})
    xs = _inputs(model, 2)
    model.forward(xs)
    with pytest.raises(InputError, match="pass a dict"):
        model.backward(np.zeros((2, 3)))
    with pytest.raises(InputError, match=r"outputs are \['p', 'q'\]"):
        model.backward({"r": np.zeros((2, 3))})
    with pytest.raises(InputError, match=r"output `p` must have shape \[2, 3\], got \[2, 4\]"):
        model.backward({"p": np.zeros((2, 4))})


def test_saved_bytes_counts_each_array_once():
    model = cnnc.compile(EVERY_OP).build(backend="numpy", dtype="float32")
    assert model.saved_bytes() == 0
    model.forward(_inputs(model, 2), train=True)
    kept = model.saved_bytes()
    outputs = sum(4 * 2 * int(np.prod(s.shape)) for s in model.plan.steps)
    assert 0 < kept < outputs + 4 * 2 * 4 * 10 * 10
    model.forward(_inputs(model, 4), train=True)
    assert abs(model.saved_bytes() - 2 * kept) <= 1024  # per-channel vectors do not grow


def test_summary_train(capsys):
    from cnnc.cli import main

    assert main(["summary", "examples/lenet5.cnn", "--train", "--format", "json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    model = cnnc.compile("examples/lenet5.cnn").build(backend="numpy", dtype="float32")
    model.forward(np.zeros((2, 1, 32, 32), np.float32), train=True)
    assert rep["train_saved_bytes"] == model.saved_bytes() // 2
    assert rep["train_grad_bytes"] == 4 * 61706
    assert main(["summary", "examples/lenet5.cnn", "--train"]) == 0
    assert "Training keeps:" in capsys.readouterr().out


def test_inference_after_optimizer_steps_sees_the_new_weights():
    from cnnc.runtime.optim import SGD

    model = cnnc.compile(TWO_HEADS).build(backend="numpy", dtype="float64", seed=0)
    xs = _inputs(model, 4)
    model(xs)  # folds batchnorm into the conv before it
    opt = SGD(model, lr=0.5)
    for _ in range(2):
        out = model.forward(xs, train=True)
        model.backward({k: np.ones_like(v) for k, v in out.items()})
        opt.step()
    planned, interpreted = model(xs), model.interpret(xs)
    for k in planned:
        np.testing.assert_allclose(planned[k], interpreted[k], rtol=1e-12, atol=1e-12)


def test_state_is_a_snapshot():
    model = cnnc.compile(TWO_HEADS).build(backend="numpy", dtype="float64", seed=0)
    snap = model.state()
    key = next(iter(model.plan.params))
    model.params[key] += 1
    assert not np.array_equal(snap[key], model.params[key])


ONE_AND_THREE_D = [
    """
network wave
input x: [3, 20]
output y = x -> conv1d(4, 5, stride=2, pad=2) -> relu -> conv1d(4, 3, pad=1) -> global_avgpool
    -> flatten -> dense(2)
""",
    """
network clip
input x: [2, 5, 6, 6]
output y = x -> conv3d(3, 3, stride=[1, 2, 2], pad=1) -> relu -> global_avgpool -> flatten
    -> dense(2)
""",
]


@pytest.mark.parametrize("source", [EVERY_OP, TWO_HEADS] + ONE_AND_THREE_D,
                         ids=["every-op", "two-heads", "conv1d", "conv3d"])
def test_without_the_input_gradient_the_weights_gradients_are_the_same(source):
    model = cnnc.compile(source).build(backend="numpy", dtype="float64", seed=2)
    _perturb_running_stats(model)
    xs = _inputs(model, 2, seed=4)
    out = model.forward(xs, train=True)
    dy = ({k: np.cos(v) for k, v in out.items()} if isinstance(out, dict) else np.cos(out))
    dx = model.backward(dy)
    assert dx is not None
    full = dict(model.grads)
    model.forward(xs, train=True)
    assert model.backward(dy, input_grad=False) is None
    assert set(model.grads) == set(full)
    for key, g in full.items():
        np.testing.assert_allclose(model.grads[key], g, rtol=1e-12, atol=1e-12, err_msg=key)


def test_without_the_input_gradient_the_first_convolution_skips_it(monkeypatch):
    """The first conv's backward is asked for its weights' gradient alone; a conv fed by a
    layer with parameters is asked for both."""
    from cnnc.ops import Op
    from cnnc.runtime import numpy_backend

    asked = []
    forward, real = numpy_backend.GRADS[Op.CONV2D]

    def spy(saved, dy, input_grad=True):
        asked.append(input_grad)
        return real(saved, dy, input_grad)

    monkeypatch.setitem(numpy_backend.GRADS, Op.CONV2D, (forward, spy))
    source = """
network two
input x: [3, 8, 8]
output y = x -> maxpool(2) -> conv(4, 3, pad=1) -> relu -> conv(2, 3) -> global_avgpool
    -> flatten
"""
    model = cnnc.compile(source).build(backend="numpy", dtype="float32", seed=0)
    model.forward(_inputs(model, 2), train=True)
    model.backward(np.ones((2, 2), np.float32), input_grad=False)
    assert asked == [True, False]
