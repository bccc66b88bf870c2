"""Built models: whole-network inference, weight files, and input checking."""

import numpy as np
import pytest

import cnnc
from cnnc.runtime.model import InputError, WeightFileError

EXAMPLES = ["lenet5", "ng_39x39", "nin_cifar10", "resnet18", "googlenet", "alexnet"]


def _input(model, n=2, seed=1):
    shape = next(iter(model.plan.inputs.values()))
    return np.random.default_rng(seed).standard_normal((n,) + shape)


def _torch_forward(plan, params, x):
    """The plan evaluated by PyTorch (runtime/torch_ref.py), outputs as NumPy arrays."""
    torch = pytest.importorskip("torch")
    from cnnc.runtime.torch_ref import TorchPlan

    inputs = {next(iter(plan.inputs)): torch.from_numpy(x)}
    return {k: v.numpy() for k, v in TorchPlan(plan, params)(inputs).items()}


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_runs_and_matches_torch(example):
    model = cnnc.compile(f"examples/{example}.cnn").build(backend="numpy", dtype="float64")
    x = _input(model, n=1 if example in ("googlenet", "alexnet") else 2)
    y = model(x)
    out_shape = next(iter(model.plan.outputs.values()))
    assert y.shape == (x.shape[0],) + model.plan.steps[-1].shape or out_shape
    assert np.all(np.isfinite(y))
    ref = _torch_forward(model.plan, model.state(), x)
    np.testing.assert_allclose(y, next(iter(ref.values())), rtol=1e-7, atol=1e-9)


ALL_LAYERS = """
input x: [8, 12, 12]
a = x -> conv(8, 3, pad=same) -> batchnorm -> prelu -> lrn(3) -> leaky_relu(0.2)
b = x -> maxpool(3, stride=2, pad=1, ceil=true) -> elu -> avgpool(2, stride=1, count_pad=false)
c = x -> conv(8, [3, 5], stride=2, pad=[1, 2], dilation=1, groups=4, bias=false) -> selu
d = concat(b, c) -> swish(1.5) -> softplus -> sigmoid -> tanh -> maxout(2) -> silu
e = a -> global_maxpool
f = d -> global_avgpool
output y = add(e, add(f, f) -> relu) -> flatten -> dropout(0.3) -> dense(5) -> softmax
"""


def test_every_layer_matches_torch():
    src = ALL_LAYERS.replace("add(e, add(f, f) -> relu)", "add(e, f)")
    model = cnnc.compile(src).build(backend="numpy", dtype="float64", seed=3)
    x = _input(model, n=3, seed=4)
    y = model(x)
    ref = _torch_forward(model.plan, model.state(), x)
    np.testing.assert_allclose(y, ref["y"], rtol=1e-7, atol=1e-10)


def test_float32_model_stays_float32():
    model = cnnc.compile("examples/lenet5.cnn").build(backend="numpy", dtype="float32")
    y = model(_input(model).astype(np.float32))
    assert y.dtype == np.float32


def test_wrong_input_shape_names_the_input():
    model = cnnc.compile("examples/lenet5.cnn").build(backend="numpy")
    with pytest.raises(InputError) as info:
        model(np.zeros((2, 3, 32, 32)))
    msg = str(info.value)
    assert "`digit`" in msg and "[N, 1, 32, 32]" in msg and "[2, 3, 32, 32]" in msg


def test_save_load_round_trip(tmp_path):
    net = cnnc.compile("examples/resnet18.cnn")
    a = net.build(backend="numpy", seed=0)
    b = net.build(backend="numpy", seed=1)
    path = tmp_path / "w.npz"
    a.save(path)
    keys = set(np.load(path).files)
    assert "stem.conv1.weight" in keys or any(k.endswith("conv1.weight") for k in keys)
    assert any(k.endswith("running_var") for k in keys)
    b.load(path)
    x = _input(a, n=1)
    np.testing.assert_array_equal(a(x), b(x))


def test_bad_weight_file_lists_every_problem_and_changes_nothing(tmp_path):
    model = cnnc.compile("examples/lenet5.cnn").build(backend="numpy")
    state = model.state()
    names = sorted(state)
    broken = dict(state)
    del broken[names[0]]
    broken["extra.weight"] = np.zeros(3)
    broken[names[1]] = np.zeros((7, 7))
    path = tmp_path / "bad.npz"
    np.savez(path, **broken)
    before = model.state()
    with pytest.raises(WeightFileError) as info:
        model.load(path)
    msg = str(info.value)
    assert f"missing {names[0]}" in msg
    assert "unexpected extra.weight [3]" in msg
    assert f"{names[1]} has shape [7, 7]" in msg
    after = model.state()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_unreadable_weight_file(tmp_path):
    model = cnnc.compile("examples/lenet5.cnn").build(backend="numpy")
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(WeightFileError, match="cannot read weight file"):
        model.load(path)
    with pytest.raises(WeightFileError, match="cannot read weight file"):
        model.load(tmp_path / "absent.npz")


def test_a_kernel_refusing_its_arguments_names_the_layer_and_its_place():
    from cnnc.runtime.model import LayerError

    source = "network t\ninput x: [3, 8, 8]\noutput y = x -> conv(4, 3)\n    -> relu\n"
    model = cnnc.compile(source).build(backend="numpy")
    model.params["y.conv1.weight"] = np.zeros((4, 5, 3, 3), dtype=np.float32)  # 5, not 3
    x = np.zeros((2, 3, 8, 8), dtype=np.float32)
    for run in (model, model.interpret, model.forward):
        with pytest.raises(LayerError) as err:
            run(x)
        assert str(err.value).startswith("<string>:3:17: layer `y.conv1` (conv2d): ")
        assert err.value.layer == "y.conv1"
        assert err.value.where == "<string>:3:17"


def test_the_backend_is_an_object_the_model_asks():
    model = cnnc.compile("network t\ninput x: [2]\noutput y = x -> dense(3)\n").build(
        backend="numpy")
    assert str(model.backend) == "numpy"
    assert model.backend.xp is np
    assert not model.backend.on_device
    assert set(model.backend.kernels) == set(model.backend.grads)
