"""EfficientNet-B0 and ConvNeXt-Tiny (examples/efficientnet_b0.cnn, examples/convnext_tiny.cnn)
against their published figures and against PyTorch.

Each example checks with no diagnostics; its parameter and MAC totals equal torchvision's
(EfficientNet-B0: 5,288,548 parameters, 0.386 GMACs; ConvNeXt-Tiny: 28,589,128 parameters,
4.456 GMACs; torchvision's docs call MACs GFLOPS), counted by cnnc, by a sum over the
architecture's table written out below, and with forward hooks on the PyTorch model. Then the
PyTorch model's seeded random weights are moved into the cnnc model and the outputs compared.

Weights are matched by structure, not by name: the layers of the cnnc network that have
parameters, in order, against the PyTorch model's Conv2d, BatchNorm2d, LayerNorm and Linear
modules (and ConvNeXt's `layer_scale` parameters) in module order, with every kind, shape,
stride, padding, group count and epsilon checked on the way. ConvNeXt's bottleneck is
nn.Linear on a channels-last permutation; the cnnc example writes it as a 1x1 convolution, so
those Linear weights are reshaped from [out, in] to [out, in, 1, 1], and `layer_scale`
[C, 1, 1] becomes the `scale` weight [C].

torchvision is optional. Where it cannot be imported the torchvision tests skip, and the
outputs are still compared against transcriptions of torchvision's EfficientNet and ConvNeXt
in plain `torch.nn` (same module trees, so the same state-dict keys); where torchvision can be
imported, a test checks that each transcription is torchvision's model.
"""

from pathlib import Path

import numpy as np
import pytest

import cnnc
from cnnc.compiler.summary import report
from examples_support import torchvision_models, weighted_depth

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EFFICIENTNET_B0 = EXAMPLES / "efficientnet_b0.cnn"
CONVNEXT_TINY = EXAMPLES / "convnext_tiny.cnn"

# torchvision docs, EfficientNet_B0_Weights.IMAGENET1K_V1: 5,288,548 params, 0.39 GFLOPS
EFFICIENTNET_B0_PARAMS = 5_288_548
# the exact count behind the 0.39 (0.386): conv and dense multiply-accumulates for one
# 3x224x224 image, equal to the sum of forward hooks over torchvision 0.29's efficientnet_b0()
EFFICIENTNET_B0_MACS = 385_814_752

# torchvision docs, ConvNeXt_Tiny_Weights.IMAGENET1K_V1: 28,589,128 params, 4.46 GFLOPS
CONVNEXT_TINY_PARAMS = 28_589_128
# the exact count behind the 4.46 (4.456), the same way over torchvision's convnext_tiny()
CONVNEXT_TINY_MACS = 4_455_531_264

# torchvision's _efficientnet_conf("efficientnet_b0"), the paper's Table 1: expansion t,
# kernel k, stride s of the first repeat, channels in, channels out, repeats n
B0_SETTING = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
              (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
              (6, 3, 1, 192, 320, 1)]
B0_STOCHASTIC_DEPTH = 0.2

# torchvision's convnext_tiny block_setting: channels, channels after the downsampling that
# follows the stage (None for the last), blocks
CONVNEXT_SETTING = [(96, 192, 3), (192, 384, 3), (384, 768, 9), (768, None, 3)]
CONVNEXT_STOCHASTIC_DEPTH = 0.1


def b0_table_totals():
    """Parameters, MACs and the stochastic-depth probabilities of the blocks with a shortcut,
    for EfficientNet-B0 at 224 x 224, from B0_SETTING: every convolution but the
    squeeze-and-excitation pair is bias-free and followed by a batchnorm (2 parameters a
    channel)."""
    params = macs = 0

    def conv(cout, cin, k, size, groups=1, bias=False, bn=True):
        nonlocal params, macs
        params += cout * (cin // groups) * k * k + (cout if bias else 0) + (2 * cout if bn else 0)
        macs += size * size * cout * (cin // groups) * k * k

    size = 112
    conv(32, 3, 3, size)                                     # the stem, stride 2
    total = sum(n for *_, n in B0_SETTING)
    block, shortcuts = 0, []
    for t, k, s, cin, cout, n in B0_SETTING:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            if t != 1:
                conv(hidden, cin, 1, size)                   # expansion
            size = (size + 2 * (k // 2) - k) // stride + 1
            conv(hidden, hidden, k, size, groups=hidden)     # depthwise
            squeeze = max(1, cin // 4)                       # squeeze-and-excitation
            conv(squeeze, hidden, 1, 1, bias=True, bn=False)
            conv(hidden, squeeze, 1, 1, bias=True, bn=False)
            conv(cout, hidden, 1, size)                      # linear projection
            if stride == 1 and cin == cout:
                shortcuts.append(B0_STOCHASTIC_DEPTH * block / total)
            cin, block = cout, block + 1
    conv(1280, cin, 1, size)
    params += 1280 * 1000 + 1000
    macs += 1280 * 1000
    return params, macs, shortcuts


def convnext_table_totals():
    """Parameters, MACs and stochastic-depth probabilities of ConvNeXt-Tiny at 224 x 224,
    from CONVNEXT_SETTING: every convolution and linear layer has a bias, every layer norm 2
    parameters a channel, every layer scale 1."""
    params = macs = 0

    def conv(cout, cin, k, size, groups=1):
        nonlocal params, macs
        params += cout * (cin // groups) * k * k + cout
        macs += size * size * cout * (cin // groups) * k * k

    size = 56
    conv(96, 3, 4, size)                                     # the stem, 4x4 stride 4
    params += 2 * 96                                         # its layer norm
    total = sum(n for *_, n in CONVNEXT_SETTING)
    block, probs = 0, []
    for c, after, n in CONVNEXT_SETTING:
        for _ in range(n):
            conv(c, c, 7, size, groups=c)                    # depthwise 7x7
            params += 2 * c                                  # layer norm
            conv(4 * c, c, 1, size)                          # the inverted bottleneck
            conv(c, 4 * c, 1, size)
            params += c                                      # layer scale
            probs.append(CONVNEXT_STOCHASTIC_DEPTH * block / (total - 1.0))
            block += 1
        if after is not None:
            params += 2 * c                                  # layer norm
            size //= 2
            conv(after, c, 2, size)                          # 2x2 stride 2
    params += 2 * 768 + 768 * 1000 + 1000                    # head: layer norm, classifier
    macs += 768 * 1000
    return params, macs, probs



# ---- the compiler's figures ------------------------------------------------------------------


@pytest.mark.parametrize("path, name", [(EFFICIENTNET_B0, "efficientnet_b0"),
                                        (CONVNEXT_TINY, "convnext_tiny")])
def test_checks_clean(path, name):
    net = cnnc.check(path)
    assert net.diagnostics == []
    assert net.ok
    assert net.name == name
    assert all(node.shape is not None for node in net.nodes.values())
    assert {out: net.nodes[node].shape for out, node in net.outputs.items()} == {
        "logits": (1000,)}


def test_efficientnet_b0_totals():
    net = cnnc.check(EFFICIENTNET_B0)
    params, macs, shortcuts = b0_table_totals()
    assert params == EFFICIENTNET_B0_PARAMS
    assert macs == EFFICIENTNET_B0_MACS
    assert round(macs / 1e9, 2) == 0.39
    assert sum(node.param_count for node in net.layers) == EFFICIENTNET_B0_PARAMS
    assert sum(node.macs for node in net.layers) == EFFICIENTNET_B0_MACS
    rep = report(net)
    assert rep.total_params == EFFICIENTNET_B0_PARAMS
    assert rep.total_macs == EFFICIENTNET_B0_MACS
    # 16 blocks: 81 convolutions (the stem, 4 in the first block, 5 in each other, the head),
    # a batchnorm after each but the 32 of squeeze-and-excitation
    ops = [node.op for node in net.layers]
    assert ops.count("conv") == 81
    assert ops.count("batchnorm") == 81 - 32
    assert ops.count("silu") == 49
    assert ops.count("sigmoid") == ops.count("mul") == 16
    assert ops.count("add") == ops.count("drop_path") == len(shortcuts) == 9
    assert ops.count("dense") == 1
    assert weighted_depth(net) == 82
    assert all(node.args["eps"] == 1e-5 and node.args["momentum"] == 0.1
               for node in net.layers if node.op == "batchnorm")
    # stochastic depth: torchvision's 0.2 * block index / 16, on the blocks with a shortcut
    drops = [node.args["p"] for node in net.layers if node.op == "drop_path"]
    assert drops == pytest.approx(shortcuts, abs=1e-12)
    assert [node.args["p"] for node in net.layers if node.op == "dropout"] == [0.2]
    # every gate is [C, 1, 1] against a [C, H, W] map
    for node in net.layers:
        if node.op == "mul":
            x, gate = (net.nodes[name].shape for name in net.graph.predecessors(node.name))
            if x[1:] == (1, 1):
                x, gate = gate, x
            assert gate == (x[0], 1, 1) and node.shape == x
    # the depthwise convolutions
    depthwise = [node for node in net.layers if node.op == "conv" and node.args["groups"] > 1]
    assert [node.args["kernel"][0] for node in depthwise] == [
        k for _, k, *_, n in B0_SETTING for _ in range(n)]
    assert all(node.args["groups"] == node.shape[0] == node.params["weight"][0]
               and node.params["weight"][1] == 1 for node in depthwise)


def test_convnext_tiny_totals():
    net = cnnc.check(CONVNEXT_TINY)
    params, macs, probs = convnext_table_totals()
    assert params == CONVNEXT_TINY_PARAMS
    assert macs == CONVNEXT_TINY_MACS
    assert round(macs / 1e9, 2) == 4.46
    assert sum(node.param_count for node in net.layers) == CONVNEXT_TINY_PARAMS
    assert sum(node.macs for node in net.layers) == CONVNEXT_TINY_MACS
    rep = report(net)
    assert rep.total_params == CONVNEXT_TINY_PARAMS
    assert rep.total_macs == CONVNEXT_TINY_MACS
    # 18 blocks of 3 convolutions, the stem and 3 downsamplings; layer norms after the stem,
    # in each block, before each downsampling and in the head
    ops = [node.op for node in net.layers]
    assert ops.count("conv") == 1 + 18 * 3 + 3
    assert ops.count("layernorm") == 1 + 18 + 3 + 1
    assert ops.count("gelu") == ops.count("scale") == ops.count("add") == 18
    assert ops.count("dense") == 1
    assert weighted_depth(net) == 59
    assert all(node.args["eps"] == 1e-6 for node in net.layers if node.op == "layernorm")
    scales = [node for node in net.layers if node.op == "scale"]
    assert all(node.args["init"] == 1e-6 and not node.args["bias"] for node in scales)
    drops = [node.args["p"] for node in net.layers if node.op == "drop_path"]
    assert drops == pytest.approx(probs, abs=1e-12)
    assert net.nodes[net.outputs["logits"]].shape == (1000,)
    # the shortcuts, stage by stage: 96 x 56 x 56, 192 x 28 x 28, 384 x 14 x 14, 768 x 7 x 7
    stages = [node.shape for node in net.layers if node.op == "add"]
    assert [s[0] for s in stages] == [c for c, _, n in CONVNEXT_SETTING for _ in range(n)]
    assert [s[1] for s in stages] == [56] * 3 + [28] * 3 + [14] * 9 + [7] * 3


# ---- PyTorch ---------------------------------------------------------------------------------


def _stochastic_depth():
    """torchvision.ops.StochasticDepth, "row" mode (identity in eval)."""
    import torch
    from torch import nn

    class StochasticDepth(nn.Module):
        def __init__(self, p, mode):
            super().__init__()
            self.p, self.mode = p, mode

        def forward(self, x):
            if not self.training or self.p == 0.0:
                return x
            keep = 1.0 - self.p
            mask = torch.empty([x.shape[0]] + [1] * (x.ndim - 1), dtype=x.dtype).bernoulli_(keep)
            return x * mask.div_(keep) if keep > 0.0 else x * mask

    return StochasticDepth


def efficientnet_transcription():
    """torchvision's EfficientNet-B0 (torchvision/models/efficientnet.py, with
    ops/misc.py's Conv2dNormActivation and SqueezeExcitation) in plain torch.nn: the same
    module tree and forward, so the same state-dict keys. Initialisation is PyTorch's default;
    the tests overwrite every weight."""
    nn = pytest.importorskip("torch.nn")
    import torch

    StochasticDepth = _stochastic_depth()

    def cna(cin, cout, k=3, stride=1, groups=1, act=True):  # Conv2dNormActivation
        layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout)]
        return nn.Sequential(*layers, nn.SiLU(inplace=True)) if act else nn.Sequential(*layers)

    class SqueezeExcitation(nn.Module):
        def __init__(self, channels, squeeze):
            super().__init__()
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc1 = nn.Conv2d(channels, squeeze, 1)
            self.fc2 = nn.Conv2d(squeeze, channels, 1)
            self.activation = nn.SiLU(inplace=True)
            self.scale_activation = nn.Sigmoid()

        def forward(self, x):
            s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
            return s * x

    class MBConv(nn.Module):
        def __init__(self, t, k, stride, cin, cout, p):
            super().__init__()
            self.use_res_connect = stride == 1 and cin == cout
            hidden = cin * t
            layers = [cna(cin, hidden, k=1)] if hidden != cin else []
            layers += [cna(hidden, hidden, k=k, stride=stride, groups=hidden),
                       SqueezeExcitation(hidden, max(1, cin // 4)),
                       cna(hidden, cout, k=1, act=False)]
            self.block = nn.Sequential(*layers)
            self.stochastic_depth = StochasticDepth(p, "row")

        def forward(self, x):
            result = self.block(x)
            if self.use_res_connect:
                result = self.stochastic_depth(result)
                result += x
            return result

    class EfficientNet(nn.Module):
        def __init__(self):
            super().__init__()
            layers = [cna(3, 32, stride=2)]
            total = sum(n for *_, n in B0_SETTING)
            block = 0
            for t, k, s, cin, cout, n in B0_SETTING:
                stage = []
                for i in range(n):
                    p = B0_STOCHASTIC_DEPTH * float(block) / total
                    stage.append(MBConv(t, k, s if i == 0 else 1, cin if i == 0 else cout,
                                        cout, p))
                    block += 1
                layers.append(nn.Sequential(*stage))
            layers.append(cna(320, 1280, k=1))
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Dropout(p=0.2, inplace=True),
                                            nn.Linear(1280, 1000))

        def forward(self, x):
            x = self.avgpool(self.features(x))
            return self.classifier(torch.flatten(x, 1))

    return EfficientNet()


def convnext_transcription():
    """torchvision's ConvNeXt-Tiny (torchvision/models/convnext.py) in plain torch.nn: the
    same module tree and forward, so the same state-dict keys."""
    nn = pytest.importorskip("torch.nn")
    import torch
    from torch.nn import functional as F

    StochasticDepth = _stochastic_depth()

    class LayerNorm2d(nn.LayerNorm):
        def forward(self, x):
            x = x.permute(0, 2, 3, 1)
            x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
            return x.permute(0, 3, 1, 2)

    class Permute(nn.Module):
        def __init__(self, dims):
            super().__init__()
            self.dims = dims

        def forward(self, x):
            return torch.permute(x, self.dims)

    class CNBlock(nn.Module):
        def __init__(self, dim, layer_scale, p):
            super().__init__()
            self.block = nn.Sequential(
                nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True),
                Permute([0, 2, 3, 1]),
                nn.LayerNorm(dim, eps=1e-6),
                nn.Linear(dim, 4 * dim, bias=True),
                nn.GELU(),
                nn.Linear(4 * dim, dim, bias=True),
                Permute([0, 3, 1, 2]),
            )
            self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)
            self.stochastic_depth = StochasticDepth(p, "row")

        def forward(self, x):
            result = self.stochastic_depth(self.layer_scale * self.block(x))
            result += x
            return result

    class ConvNeXt(nn.Module):
        def __init__(self):
            super().__init__()
            norm = lambda c: LayerNorm2d(c, eps=1e-6)  # noqa: E731
            layers = [nn.Sequential(nn.Conv2d(3, 96, kernel_size=4, stride=4, padding=0,
                                              bias=True), norm(96))]
            total = sum(n for *_, n in CONVNEXT_SETTING)
            block = 0
            for c, after, n in CONVNEXT_SETTING:
                stage = []
                for _ in range(n):
                    p = CONVNEXT_STOCHASTIC_DEPTH * block / (total - 1.0)
                    stage.append(CNBlock(c, 1e-6, p))
                    block += 1
                layers.append(nn.Sequential(*stage))
                if after is not None:
                    layers.append(nn.Sequential(norm(c), nn.Conv2d(c, after, 2, stride=2)))
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(norm(768), nn.Flatten(1), nn.Linear(768, 1000))

        def forward(self, x):
            return self.classifier(self.avgpool(self.features(x)))

    return ConvNeXt()


MODELS = {
    "efficientnet_b0": (EFFICIENTNET_B0, EFFICIENTNET_B0_PARAMS, EFFICIENTNET_B0_MACS,
                        efficientnet_transcription),
    "convnext_tiny": (CONVNEXT_TINY, CONVNEXT_TINY_PARAMS, CONVNEXT_TINY_MACS,
                      convnext_transcription),
}


def reference(name, kind, seed=0):
    """The PyTorch model, seeded: torchvision's own with its random initialisation, or the
    transcription. The parameters torchvision starts at constants (batchnorm's and layer
    norm's affine parameters, batchnorm's running statistics, biases, ConvNeXt's layer scale
    of 1e-6) are drawn at random here, so that a wrong mapping of any of them shows."""
    import torch

    torch.manual_seed(seed)
    if kind == "torchvision":
        model = getattr(torchvision_models(), name)()
    else:
        model = MODELS[name][3]()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                size = module.num_features
                module.weight.copy_(0.5 + torch.rand(size, generator=gen))
                module.bias.copy_(0.1 * torch.randn(size, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(size, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(size, generator=gen))
            elif isinstance(module, torch.nn.LayerNorm):
                size = module.weight.shape
                module.weight.copy_(0.5 + torch.rand(size, generator=gen))
                module.bias.copy_(0.1 * torch.randn(size, generator=gen))
            elif isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                if module.bias is not None:
                    module.bias.copy_(0.01 * torch.randn(module.bias.shape, generator=gen))
            if hasattr(module, "layer_scale"):
                module.layer_scale.copy_(0.5 + torch.rand(module.layer_scale.shape,
                                                          generator=gen))
    return model.eval()


def torch_macs(model):
    """Conv2d and Linear multiply-accumulates for one 3x224x224 image, with forward hooks
    (a Linear on a channels-last map counts once per position)."""
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


def torch_units(module):
    """The PyTorch model's parameterised units in forward order: (kind, module) for Conv2d,
    BatchNorm2d, LayerNorm and Linear, and ("layer_scale", parameter) after a ConvNeXt
    block's body."""
    import torch

    kinds = {torch.nn.Conv2d: "Conv2d", torch.nn.BatchNorm2d: "BatchNorm2d",
             torch.nn.LayerNorm: "LayerNorm", torch.nn.Linear: "Linear"}
    for cls, kind in kinds.items():
        if isinstance(module, cls):
            yield kind, module
            return
    for child in module.children():
        yield from torch_units(child)
    if isinstance(getattr(module, "layer_scale", None), torch.nn.Parameter):
        yield "layer_scale", module.layer_scale


def weight_file(net, model):
    """cnnc weight-file arrays from a PyTorch model, matched by structure."""
    ours = [node for node in net.layers if node.params or node.buffers]
    theirs = list(torch_units(model))
    fits = {"conv": ("Conv2d", "Linear"), "batchnorm": ("BatchNorm2d",),
            "layernorm": ("LayerNorm",), "dense": ("Linear",), "scale": ("layer_scale",)}
    assert len(ours) == len(theirs)
    arrays = {}
    for node, (kind, module) in zip(ours, theirs):
        assert kind in fits[node.op], f"{node.name}: {node.op} against {kind}"
        args = node.args
        if kind == "Conv2d":
            assert args["kernel"] == module.kernel_size, node.name
            assert args["stride"] == module.stride, node.name
            assert args["pad"] == module.padding, node.name
            assert args["dilation"] == module.dilation, node.name
            assert args["groups"] == module.groups, node.name
        elif kind == "Linear" and node.op == "conv":    # channels-last Linear as a 1x1 conv
            assert args["kernel"] == args["stride"] == args["dilation"] == (1, 1), node.name
            assert args["pad"] == (0, 0) and args["groups"] == 1, node.name
        elif kind == "BatchNorm2d":
            assert args["eps"] == module.eps, node.name
            assert args["momentum"] == module.momentum, node.name
        elif kind == "LayerNorm":
            assert args["eps"] == module.eps, node.name
            assert module.normalized_shape == (node.shape[0],), node.name
        if kind == "layer_scale":
            assert not args["bias"], node.name
            value = module.detach().numpy()
            assert value.shape == (node.shape[0], 1, 1), node.name
            arrays[f"{node.name}.weight"] = value.reshape(node.params["weight"])
            continue
        if kind in ("Conv2d", "Linear"):
            assert ("bias" in node.params) == (module.bias is not None), node.name
        for key, shape in {**node.params, **node.buffers}.items():
            value = getattr(module, key).detach().numpy()
            if kind == "Linear" and node.op == "conv" and key == "weight":
                value = value.reshape(value.shape + (1, 1))
            assert value.shape == tuple(shape), f"{node.name}.{key}"
            arrays[f"{node.name}.{key}"] = value
    return arrays


@pytest.mark.parametrize("name", sorted(MODELS))
def test_transcription_figures(name):
    """The transcription has the published parameter count and the exact MACs, by hooks."""
    pytest.importorskip("torch")
    _, params, macs, _ = MODELS[name]
    model = reference(name, "transcription")
    assert sum(p.numel() for p in model.parameters()) == params
    assert torch_macs(model) == macs


@pytest.mark.parametrize("name", sorted(MODELS))
def test_macs_match_torchvision(name):
    _, params, macs, _ = MODELS[name]
    model = reference(name, "torchvision")
    assert sum(p.numel() for p in model.parameters()) == params
    assert torch_macs(model) == macs


def test_stochastic_depth_matches_torchvision():
    """The drop_path probabilities in the examples are torchvision's, block by block."""
    models = torchvision_models()
    for name, path in (("efficientnet_b0", EFFICIENTNET_B0), ("convnext_tiny", CONVNEXT_TINY)):
        model = getattr(models, name)()
        theirs = [m.stochastic_depth.p for m in model.modules()
                  if hasattr(m, "stochastic_depth")
                  and getattr(m, "use_res_connect", True)]
        ours = [node.args["p"] for node in cnnc.check(path).layers if node.op == "drop_path"]
        assert ours == pytest.approx(theirs, abs=1e-12), name


@pytest.mark.parametrize("name", sorted(MODELS))
def test_transcription_is_torchvision(name):
    """The plain-PyTorch transcription has torchvision's state-dict keys and shapes, and with
    the same weights computes the same function."""
    import torch

    theirs = reference(name, "torchvision")
    ours = MODELS[name][3]().eval()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()}
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


@pytest.mark.parametrize("kind", ["torchvision", "transcription"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_outputs_match_pytorch(name, kind, tmp_path):
    """The PyTorch model's seeded random weights in the cnnc model (NumPy backend, float32,
    through a weight file): the logits agree within 1e-4 of their largest magnitude."""
    torch = pytest.importorskip("torch")
    path, params, _, _ = MODELS[name]
    model = reference(name, kind)
    assert sum(p.numel() for p in model.parameters()) == params
    compiled = cnnc.compile(path)
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
