"""`to_torch`: a cnnc network as a `torch.nn.Module` whose state_dict keys are cnnc's
weight-file keys, whose forward is cnnc's, and which trains in PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

import cnnc

torch = pytest.importorskip("torch")

from cnnc.interop.torch import to_torch  # noqa: E402
from cnnc.runtime.model import Model  # noqa: E402

pytestmark = pytest.mark.torch

# Every kind of step a small network needs: blocks (dotted names), batchnorm, a concat and an
# add, pooling, dropout, dense, and two outputs.
NET = """\
network mix
input image: [3, 16, 16]

block unit(c) {
    body = in -> conv(c, 3, pad=1, bias=false) -> batchnorm -> relu
    return add(body, in)
}

stem = image -> conv(8, 3, pad=1) -> batchnorm -> relu -> unit(8) * 2
side = stem -> maxpool(2)
wide = stem -> avgpool(2) -> conv(8, 1)
output logits = concat(side, wide) -> global_avgpool -> flatten -> dropout(0.3) -> dense(5)
output feats = side -> flatten
"""


@pytest.fixture(scope="module")
def compiled():
    return cnnc.compile(NET)


def _x(shape=(4, 3, 16, 16), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_state_dict_keys_are_the_weight_file_keys(compiled):
    model = compiled.build(backend="numpy")
    module = to_torch(compiled)
    assert sorted(module.state_dict()) == sorted(model.state())
    # layer by layer, each layer's parameters then its buffers, as in a PyTorch state_dict
    assert list(module.state_dict()) == [k for step in compiled.plan.steps for k in step.params]
    assert "num_batches_tracked" not in " ".join(module.state_dict())
    # nested modules for dotted names: stem.unit1.body.conv1 is stem -> unit1 -> body -> conv1
    conv = module.get_submodule("stem.unit1.body.conv1")
    assert tuple(conv.weight.shape) == (8, 8, 3, 3)
    assert set(dict(module.named_buffers())) == set(compiled.plan.buffers)
    assert set(dict(module.named_parameters())) == set(compiled.plan.params)


def test_forward_equals_cnnc(compiled):
    model = compiled.build(backend="numpy", seed=4)
    module = to_torch(model).eval()
    x = _x()
    ours = model(x)
    with torch.no_grad():
        theirs = module(torch.from_numpy(x))
    assert set(theirs) == {"logits", "feats"}
    for name in ours:
        np.testing.assert_allclose(theirs[name].numpy(), ours[name], rtol=1e-5, atol=1e-5)


def test_default_parameters_are_build_seed(compiled):
    model = compiled.build(backend="numpy", seed=7)
    module = to_torch(compiled, seed=7)
    for key, value in model.state().items():
        np.testing.assert_array_equal(module.state_dict()[key].numpy(), value)


def test_trains_with_autograd_and_moves(compiled):
    module = to_torch(compiled).to(torch.float64)
    module.train()
    before = module.state_dict()["stem.batchnorm1.running_mean"].clone()
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    x = torch.from_numpy(_x()).double()
    target = torch.tensor([0, 1, 2, 3])
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(module(x)["logits"], target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert module.stem.conv1.weight.grad is not None
    assert module.stem.conv1.weight.dtype == torch.float64
    # batchnorm's running statistics move in training mode, as PyTorch's do
    assert not torch.equal(before, module.state_dict()["stem.batchnorm1.running_mean"])
    module.to("cpu")  # .to(device) keeps the keys
    assert sorted(module.state_dict()) == sorted(compiled.build(backend="numpy").state())


def test_dropout_draws_masks_in_training_only(compiled):
    module = to_torch(compiled)
    x = torch.from_numpy(_x())
    module.eval()
    with torch.no_grad():
        a, b = module(x)["logits"], module(x)["logits"]
    assert torch.equal(a, b)
    module.train()
    torch.manual_seed(0)
    with torch.no_grad():
        c, d = module(x)["logits"], module(x)["logits"]
    assert not torch.equal(c, d)


def test_weights_round_trip_through_safetensors(compiled, tmp_path):
    """.cnn -> to_torch -> state_dict -> .safetensors -> cnnc gives the same outputs."""
    safetensors_torch = pytest.importorskip("safetensors.torch")
    module = to_torch(compiled, seed=3)
    with torch.no_grad():  # change every parameter, so that the file is not the default
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path / "w.safetensors"
    safetensors_torch.save_file(module.state_dict(), str(path))
    model = compiled.build(backend="numpy", seed=0)
    mapping = model.load(path)
    assert mapping.how == "name"
    x = _x()
    with torch.no_grad():
        theirs = module.eval()(torch.from_numpy(x))
    for name, value in model(x).items():
        np.testing.assert_allclose(value, theirs[name].numpy(), rtol=1e-5, atol=1e-5)


def test_inputs_by_name_and_errors(compiled):
    module = to_torch(compiled).eval()
    x = torch.from_numpy(_x())
    with torch.no_grad():
        assert torch.equal(module(image=x)["feats"], module(x)["feats"])
    with pytest.raises(TypeError, match="no input 'picture'"):
        module(picture=x)
    with pytest.raises(TypeError, match="takes 1 input"):
        module(x, x)


def test_wrong_parameters_are_listed(compiled):
    params = compiled.build(backend="numpy").state()
    del params["stem.conv1.bias"]
    params["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as info:
        to_torch(compiled, params=params)
    assert "missing stem.conv1.bias [8]" in str(info.value)
    assert "unexpected extra.weight [3]" in str(info.value)


def test_symbolic_sizes_need_values():
    net = cnnc.compile("input x: [3, H, W]\noutput y = x -> conv(4, 3)\n")
    with pytest.raises(ValueError, match="symbolic sizes H, W"):
        to_torch(net)


def test_torch_compile_runs(compiled):
    module = to_torch(compiled).eval()
    x = torch.from_numpy(_x())
    try:
        fast = torch.compile(module, backend="eager")
        with torch.no_grad():
            got = fast(x)
    except Exception as err:  # no dynamo on this platform
        pytest.skip(f"torch.compile cannot compile here: {type(err).__name__}: {err}")
    with torch.no_grad():
        want = module(x)
    for name in want:
        torch.testing.assert_close(got[name], want[name])


def test_plan_and_model_are_accepted(compiled):
    model = Model(compiled.plan, backend="numpy", seed=2)
    assert sorted(to_torch(compiled.plan).state_dict()) == sorted(model.state())
    np.testing.assert_array_equal(to_torch(model).state_dict()["stem.conv1.weight"].numpy(),
                                  model.state()["stem.conv1.weight"])
