"""The modern examples against their published figures and against PyTorch.

MobileNet V2 (examples/mobilenet_v2.cnn): it checks with no diagnostics; its parameter and
MAC totals equal torchvision's (3,504,872 parameters, 0.301 GMACs, which torchvision's docs
call GFLOPS), counted three ways: by cnnc, by a sum over the paper's Table 2 written out
below, and, where torchvision can be imported, with forward hooks on torchvision's own
`mobilenet_v2()`. Then torchvision's seeded random weights are moved into the cnnc model and
the two outputs compared.

Weights are matched by structure, not by name: the layers of the cnnc network that have
parameters, in order, against torchvision's Conv2d, BatchNorm2d and Linear modules in order,
with every kind, shape, stride, padding and group count checked on the way. So the test does
not depend on how cnnc numbers layers whose kind ends in a digit (`relu6`).

torchvision is optional. Where it is absent or cannot be imported the torchvision tests skip,
and the outputs are still compared against a transcription of torchvision's MobileNetV2 in
plain `torch.nn` (same module tree, so the same state-dict keys); where torchvision can be
imported, a test checks that the transcription is torchvision's model.
"""

from pathlib import Path

import numpy as np
import pytest

import cnnc
from cnnc.compiler.summary import report
from examples_support import torchvision_models

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MOBILENET_V2 = EXAMPLES / "mobilenet_v2.cnn"

# torchvision docs, MobileNet_V2_Weights.IMAGENET1K_V1: 3,504,872 params, 0.30 GFLOPS (0.301)
MOBILENET_V2_PARAMS = 3_504_872
# The exact count behind the 0.301: conv and dense multiply-accumulates for one 3x224x224
# image. Verified equal to the sum of forward hooks over torchvision 0.29's mobilenet_v2()
# (Conv2d: output elements x in/groups x kh x kw; Linear: in x out), which
# test_mobilenet_v2_macs_match_torchvision redoes wherever torchvision imports.
MOBILENET_V2_MACS = 300_774_272

# the paper's Table 2, torchvision's inverted_residual_setting: expansion t, channels c,
# repeats n, stride s of the first repeat
SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1)]


def table_totals():
    """Parameters, MACs and identity shortcuts of MobileNet V2 at 224 x 224, from SETTING:
    every convolution is bias-free and followed by a batchnorm (2 parameters a channel)."""
    params = macs = 0

    def conv_bn(cout, cin, k, size, groups=1):
        nonlocal params, macs
        params += cout * (cin // groups) * k * k + 2 * cout
        macs += size * size * cout * (cin // groups) * k * k

    size = 112
    conv_bn(32, 3, 3, size)                          # the stem, stride 2
    cin, shortcuts = 32, 0
    for t, c, n, s in SETTING:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            if t != 1:
                conv_bn(hidden, cin, 1, size)        # expansion
            size = (size + 2 - 3) // stride + 1
            conv_bn(hidden, hidden, 3, size, groups=hidden)  # depthwise
            conv_bn(c, hidden, 1, size)              # linear projection
            shortcuts += stride == 1 and cin == c
            cin = c
    conv_bn(1280, cin, 1, size)
    params += 1280 * 1000 + 1000
    macs += 1280 * 1000
    return params, macs, shortcuts


# ---- the compiler's figures ------------------------------------------------------------------


def test_mobilenet_v2_checks_clean():
    net = cnnc.check(MOBILENET_V2)
    assert net.diagnostics == []
    assert net.ok
    assert net.name == "mobilenet_v2"
    assert all(node.shape is not None for node in net.nodes.values())
    assert {out: net.nodes[node].shape for out, node in net.outputs.items()} == {
        "logits": (1000,)}


def test_mobilenet_v2_totals():
    net = cnnc.check(MOBILENET_V2)
    params, macs, shortcuts = table_totals()
    assert params == MOBILENET_V2_PARAMS
    assert macs == MOBILENET_V2_MACS
    assert round(macs / 1e9, 3) == 0.301
    assert sum(node.param_count for node in net.layers) == MOBILENET_V2_PARAMS
    assert sum(node.macs for node in net.layers) == MOBILENET_V2_MACS
    rep = report(net)
    assert rep.total_params == MOBILENET_V2_PARAMS
    assert rep.total_macs == MOBILENET_V2_MACS
    # 52 convolutions (the stem, 17 blocks of 2 or 3, the head), one batchnorm after each,
    # and the identity shortcuts where a block keeps its shape
    ops = [node.op for node in net.layers]
    assert ops.count("conv") == ops.count("batchnorm") == 52
    assert ops.count("relu6") == 35
    assert ops.count("add") == shortcuts == 10
    assert ops.count("dense") == 1
    dropouts = [node for node in net.layers if node.op == "dropout"]
    assert [node.args["p"] for node in dropouts] == [0.2]
    # every 3x3 convolution after the stem is depthwise
    convs = [node for node in net.layers if node.op == "conv"]
    assert all("bias" not in node.params for node in convs)
    depthwise = [node for node in convs[1:] if node.args["kernel"] == (3, 3)]
    assert len(depthwise) == 17
    assert all(node.args["groups"] == node.shape[0] == node.params["weight"][0]
               and node.params["weight"][1] == 1 for node in depthwise)


# ---- PyTorch ---------------------------------------------------------------------------------


def transcription():
    """torchvision's MobileNetV2 (width 1.0, torchvision/models/mobilenetv2.py) in plain
    torch.nn: the same module tree and forward, so the same state-dict keys. Initialisation is
    PyTorch's default; the tests overwrite every weight."""
    nn = pytest.importorskip("torch.nn")
    import torch

    def cna(cin, cout, k=3, stride=1, groups=1):  # Conv2dNormActivation
        return nn.Sequential(
            nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, t):
            super().__init__()
            hidden = cin * t
            self.use_res_connect = stride == 1 and cin == cout
            layers = [cna(cin, hidden, k=1)] if t != 1 else []
            layers += [cna(hidden, hidden, stride=stride, groups=hidden),
                       nn.Conv2d(hidden, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self):
            super().__init__()
            features, cin = [cna(3, 32, stride=2)], 32
            for t, c, n, s in SETTING:
                for i in range(n):
                    features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                    cin = c
            features.append(cna(cin, 1280, k=1))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))

        def forward(self, x):
            x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
            return self.classifier(torch.flatten(x, 1))

    return MobileNetV2()


def reference(kind, seed=0):
    """The PyTorch model, seeded: torchvision's `mobilenet_v2()` with its own random
    initialisation, or the transcription. Batchnorm's affine parameters and running statistics
    and the classifier's bias start at constants (ones and zeros) in torchvision; they are
    drawn at random here too, so that a wrong mapping of any of them shows in the output."""
    import torch

    torch.manual_seed(seed)
    model = torchvision_models().mobilenet_v2() if kind == "torchvision" else transcription()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                size = module.num_features
                module.weight.copy_(0.5 + torch.rand(size, generator=gen))
                module.bias.copy_(0.1 * torch.randn(size, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(size, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(size, generator=gen))
            elif isinstance(module, torch.nn.Linear):
                module.bias.copy_(0.01 * torch.randn(module.out_features, generator=gen))
    return model.eval()


def torch_macs(model):
    """Conv2d and Linear multiply-accumulates for one 3x224x224 image, with forward hooks."""
    import torch

    total = 0

    def count(module, inputs, output):
        nonlocal total
        per_sample = output[0].numel()
        if isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            total += per_sample * (module.in_channels // module.groups) * kh * kw
        else:
            total += per_sample * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    for hook in hooks:
        hook.remove()
    return total


def weight_file(net, model):
    """cnnc weight-file arrays taken from a PyTorch MobileNet V2, matched by structure: the
    layers with parameters in order against Conv2d, BatchNorm2d and Linear in order."""
    import torch

    kinds = {"conv": torch.nn.Conv2d, "batchnorm": torch.nn.BatchNorm2d,
             "dense": torch.nn.Linear}
    ours = [node for node in net.layers if node.params or node.buffers]
    theirs = [m for m in model.modules() if isinstance(m, tuple(kinds.values()))]
    assert [node.op for node in ours] == [
        next(op for op, cls in kinds.items() if isinstance(m, cls)) for m in theirs]
    arrays = {}
    for node, module in zip(ours, theirs):
        if node.op == "conv":
            args = node.args
            assert args["stride"] == module.stride, node.name
            assert args["pad"] == module.padding, node.name
            assert args["dilation"] == module.dilation, node.name
            assert args["groups"] == module.groups, node.name
            assert ("bias" in node.params) == (module.bias is not None), node.name
        elif node.op == "batchnorm":
            assert node.args["eps"] == module.eps, node.name
            assert node.args["momentum"] == module.momentum, node.name
        for key, shape in {**node.params, **node.buffers}.items():
            value = getattr(module, key).detach().numpy()
            assert value.shape == tuple(shape), f"{node.name}.{key}"
            arrays[f"{node.name}.{key}"] = value
    return arrays


def test_mobilenet_v2_macs_match_torchvision():
    model = reference("torchvision")
    assert sum(p.numel() for p in model.parameters()) == MOBILENET_V2_PARAMS
    assert torch_macs(model) == MOBILENET_V2_MACS
    assert sum(block.use_res_connect for block in model.features
               if hasattr(block, "use_res_connect")) == table_totals()[2]


def test_transcription_is_torchvision():
    """The plain-PyTorch transcription has torchvision's state-dict keys and shapes, and with
    the same weights computes the same function."""
    import torch

    theirs = reference("torchvision")
    ours = transcription().eval()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()}
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


@pytest.mark.parametrize("kind", ["torchvision", "transcription"])
def test_mobilenet_v2_outputs_match_pytorch(kind, tmp_path):
    """torchvision's seeded random weights in the cnnc model (NumPy backend, float32, through a
    weight file): the logits agree within 1e-4 of their largest magnitude."""
    torch = pytest.importorskip("torch")
    model = reference(kind)
    assert sum(p.numel() for p in model.parameters()) == MOBILENET_V2_PARAMS
    compiled = cnnc.compile(MOBILENET_V2)
    arrays = weight_file(compiled.network, model)
    ours = compiled.build(backend="numpy", seed=0, dtype="float32")
    assert set(arrays) == set(ours.params)
    np.savez(tmp_path / "weights.npz", **arrays)
    ours.load(tmp_path / "weights.npz")

    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = np.asarray(ours(x))
    assert got.shape == expected.shape == (2, 1000)
    scale = np.abs(expected).max()
    assert scale > 0
    assert np.abs(got - expected).max() <= 1e-4 * scale
