"""ShuffleNet V2 and U-Net, the modern examples, against their figures and against PyTorch.

ShuffleNet V2 x1.0 (examples/shufflenet_v2.cnn): it checks with no diagnostics; its parameter
and MAC totals equal torchvision's (2,278,604 parameters, 0.145 GMACs, which torchvision's
docs call GFLOPS), counted by cnnc, by a sum over the paper's Table 5 written out below, and,
where torchvision can be imported, with forward hooks on torchvision's own
`shufflenet_v2_x1_0()`. Then seeded random weights are moved into the cnnc model and the
outputs compared, against torchvision's model and against a plain-torch transcription of it.

U-Net (examples/unet.cnn): the paper's structure with padded 3x3 convolutions, one input
channel, two classes. The paper publishes no parameter count, so the totals are checked
against a sum over the levels written out below and against a small `torch.nn` transcription
(parameters counted by PyTorch, MACs by forward hooks), and the outputs compared with that
transcription's. The comparison of outputs runs at 64 x 64 (the same weights fit any size)
to keep the NumPy forward quick.

Weights are matched by structure, not by name: the layers of the cnnc network that have
parameters, in order, against PyTorch's Conv2d, ConvTranspose2d, BatchNorm2d and Linear
modules in order, with every kind, shape, stride, padding and group count checked on the way.

torchvision is optional: where it is absent or cannot be imported its tests skip.
"""

from pathlib import Path

import numpy as np
import pytest

import cnnc
from cnnc.compiler.summary import report
from examples_support import torchvision_models
from cnnc.compiler.symbolic import evaluate

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SHUFFLENET_V2 = EXAMPLES / "shufflenet_v2.cnn"
UNET = EXAMPLES / "unet.cnn"

# torchvision docs, ShuffleNet_V2_X1_0_Weights.IMAGENET1K_V1: 2,278,604 params, 0.14 GFLOPS
# (0.145 in the weights' metadata)
SHUFFLENET_V2_PARAMS = 2_278_604
# The exact count behind the 0.145: conv and dense multiply-accumulates for one 3x224x224
# image (Conv2d: output elements x in/groups x kh x kw; Linear: in x out), from the Table 5
# sum below and, where torchvision imports, from forward hooks on its model.
SHUFFLENET_V2_MACS = 144_907_992

# the paper's Table 5 for 1x, torchvision's stages_repeats and stages_out_channels
REPEATS = [4, 8, 4]
CHANNELS = [24, 116, 232, 464, 1024]

# U-Net: channels of the five levels of the contracting path, input channels, classes
LEVELS = [64, 128, 256, 512, 1024]
UNET_IN, UNET_CLASSES, UNET_SIZE = 1, 2, 512
UNET_DIMS = "[1, size, size]"  # size is a let, 512
UNET_SMALL = 64  # the size at which outputs are compared


def shufflenet_table_totals():
    """Parameters and MACs of ShuffleNet V2 x1.0 at 224 x 224, from REPEATS and CHANNELS:
    every convolution is bias-free and followed by a batchnorm (2 parameters a channel)."""
    params = macs = 0

    def conv_bn(cout, cin, k, size, groups=1):
        nonlocal params, macs
        params += cout * (cin // groups) * k * k + 2 * cout
        macs += size * size * cout * (cin // groups) * k * k

    size = 112
    conv_bn(CHANNELS[0], 3, 3, size)                 # conv1, stride 2
    size = (size + 2 - 3) // 2 + 1                   # the max pool: 56
    cin = CHANNELS[0]
    for repeats, cout in zip(REPEATS, CHANNELS[1:]):
        half = cout // 2
        size = (size + 2 - 3) // 2 + 1               # the stride-2 unit halves the map
        conv_bn(cin, cin, 3, size, groups=cin)       # branch1: depthwise, stride 2
        conv_bn(half, cin, 1, size)                  # branch1: 1x1
        conv_bn(half, cin, 1, size * 2)              # branch2: 1x1 before the stride
        conv_bn(half, half, 3, size, groups=half)    # branch2: depthwise, stride 2
        conv_bn(half, half, 1, size)                 # branch2: 1x1
        for _ in range(repeats - 1):                 # stride-1 units on half the channels
            conv_bn(half, half, 1, size)
            conv_bn(half, half, 3, size, groups=half)
            conv_bn(half, half, 1, size)
        cin = cout
    conv_bn(CHANNELS[-1], cin, 1, size)              # conv5
    params += CHANNELS[-1] * 1000 + 1000
    macs += CHANNELS[-1] * 1000
    return params, macs


def unet_level_totals(size=UNET_SIZE):
    """Parameters and MACs of the padded U-Net on a size x size input, level by level: every
    convolution has a bias; an up-convolution costs input elements x out x 2 x 2."""
    params = macs = 0

    def conv(cout, cin, k, side):
        nonlocal params, macs
        params += cout * cin * k * k + cout
        macs += side * side * cout * cin * k * k

    def up(cout, cin, side_in):
        nonlocal params, macs
        params += cin * cout * 2 * 2 + cout
        macs += side_in * side_in * cin * cout * 2 * 2

    cin, side = UNET_IN, size
    sides = []
    for i, c in enumerate(LEVELS):
        if i:
            side //= 2
        conv(c, cin, 3, side)
        conv(c, c, 3, side)
        sides.append(side)
        cin = c
    for c, side in zip(reversed(LEVELS[:-1]), reversed(sides[:-1])):
        up(c, cin, side // 2)
        conv(c, 2 * c, 3, side)                      # the skip and the up-convolution
        conv(c, c, 3, side)
        cin = c
    conv(UNET_CLASSES, cin, 1, size)
    return params, macs


# ---- the compiler's figures: ShuffleNet V2 ---------------------------------------------------


def test_shufflenet_v2_checks_clean():
    net = cnnc.check(SHUFFLENET_V2)
    assert net.diagnostics == []
    assert net.ok
    assert net.name == "shufflenet_v2"
    assert all(node.shape is not None for node in net.nodes.values())
    assert {out: net.nodes[node].shape for out, node in net.outputs.items()} == {
        "logits": (1000,)}
    assert net.nodes["stem.maxpool1"].shape == (24, 56, 56)
    assert net.nodes["stage2.unit3.channel_shuffle1"].shape == (116, 28, 28)
    assert net.nodes["stage3.unit7.channel_shuffle1"].shape == (232, 14, 14)
    assert net.nodes["stage4.unit3.channel_shuffle1"].shape == (464, 7, 7)
    assert net.nodes["conv5.pw1.relu1"].shape == (1024, 7, 7)


def test_shufflenet_v2_totals():
    net = cnnc.check(SHUFFLENET_V2)
    params, macs = shufflenet_table_totals()
    assert params == SHUFFLENET_V2_PARAMS
    assert macs == SHUFFLENET_V2_MACS
    assert round(macs / 1e9, 3) == 0.145
    assert sum(node.param_count for node in net.layers) == SHUFFLENET_V2_PARAMS
    assert sum(node.macs for node in net.layers) == SHUFFLENET_V2_MACS
    rep = report(net)
    assert rep.total_params == SHUFFLENET_V2_PARAMS
    assert rep.total_macs == SHUFFLENET_V2_MACS
    # conv1, five convolutions in each of the 3 stride-2 units, three in each of the 13
    # stride-1 units, conv5; a batchnorm after each
    ops = [node.op for node in net.layers]
    units = sum(REPEATS) - len(REPEATS)
    assert units == 13
    assert ops.count("conv") == ops.count("batchnorm") == 1 + 5 * 3 + 3 * units + 1 == 56
    assert ops.count("slice") == 2 * units
    assert ops.count("concat") == ops.count("channel_shuffle") == sum(REPEATS) == 16
    assert ops.count("dense") == 1
    assert ops.count("add") == 0
    assert all(node.args["groups"] == 2 for node in net.layers if node.op == "channel_shuffle")
    # every slice takes one half of the unit's input: channels [0, c/2) and [c/2, c)
    for node in net.layers:
        if node.op == "slice":
            c = node.shape[0] * 2
            assert (node.args["start"], node.args["stop"]) in {(0, c // 2), (c // 2, c)}
    # every 3x3 convolution after the stem is depthwise and bias-free
    convs = [node for node in net.layers if node.op == "conv"]
    assert all("bias" not in node.params for node in convs)
    depthwise = [node for node in convs[1:] if node.args["kernel"] == (3, 3)]
    assert len(depthwise) == 2 * 3 + units
    assert all(node.args["groups"] == node.shape[0] == node.params["weight"][0]
               and node.params["weight"][1] == 1 for node in depthwise)


# ---- the compiler's figures: U-Net -----------------------------------------------------------


def test_unet_checks_clean():
    net = cnnc.check(UNET)
    assert net.diagnostics == []
    assert net.ok
    assert net.name == "unet"
    assert all(node.shape is not None for node in net.nodes.values())
    assert {out: net.nodes[node].shape for out, node in net.outputs.items()} == {
        "scores": (UNET_CLASSES, UNET_SIZE, UNET_SIZE)}
    assert net.nodes["e5.double1.relu2"].shape == (1024, 32, 32)
    for level, c in zip((4, 3, 2, 1), reversed(LEVELS[:-1])):
        side = UNET_SIZE >> (level - 1)
        assert net.nodes[f"u{level}.conv_transpose1"].shape == (c, side, side)
        assert net.nodes[f"d{level}.concat1"].shape == (2 * c, side, side)
        assert net.nodes[f"d{level}.double1.relu2"].shape == (c, side, side)


def test_unet_totals():
    net = cnnc.check(UNET)
    params, macs = unet_level_totals()
    assert sum(node.param_count for node in net.layers) == params
    assert sum(node.macs for node in net.layers) == macs
    rep = report(net)
    assert rep.total_params == params
    assert rep.total_macs == macs
    # the figures in the example's header
    assert params == 31_030_658
    assert macs == 192_384_335_872
    ops = [node.op for node in net.layers]
    assert ops.count("conv") == 2 * 5 + 2 * 4 + 1 == 19
    assert ops.count("conv_transpose") == ops.count("concat") == ops.count("maxpool") == 4
    assert ops.count("relu") == 18
    assert "batchnorm" not in ops
    convs = [node for node in net.layers if node.op == "conv"]
    assert all("bias" in node.params for node in convs)
    assert all(node.args["pad"] == (1, 1) for node in convs if node.args["kernel"] == (3, 3))
    ups = [node for node in net.layers if node.op == "conv_transpose"]
    assert all(node.args["kernel"] == node.args["stride"] == (2, 2) for node in ups)


def test_unet_valid_sizes_are_multiples_of_16():
    """With [1, H, W] the totals are expressions that give the figures at 512, and the valid
    sizes are the multiples of 16: four poolings, each undone by an up-convolution that must
    meet its skip connection."""
    text = UNET.read_text(encoding="utf-8")
    assert text.count(UNET_DIMS) == 1
    net = cnnc.check(text.replace(UNET_DIMS, "[1, H, W]"))
    assert net.ok
    rep = report(net)
    for size in (UNET_SIZE, 16, 48, 96):
        params, macs = unet_level_totals(size)
        assert evaluate(rep.total_params, {"H": size, "W": size}) == params
        assert evaluate(rep.total_macs, {"H": size, "W": size}) == macs
    for valid in net.valid_sizes:
        assert valid.start == 16
        assert [h for h in range(1, 100) if valid.contains(h)] == [16, 32, 48, 64, 80, 96]
    # a concrete size that is not a multiple of 16 fails at a skip connection
    bad = cnnc.check(text.replace(UNET_DIMS, "[1, 520, 520]"))
    assert not bad.ok
    assert any(d.code == "E302" for d in bad.diagnostics)


# ---- PyTorch ---------------------------------------------------------------------------------


def shufflenet_transcription():
    """torchvision's ShuffleNetV2 x1.0 (torchvision/models/shufflenetv2.py) in plain torch.nn:
    the same module tree and forward, so the same state-dict keys."""
    nn = pytest.importorskip("torch.nn")
    import torch

    def channel_shuffle(x, groups):
        n, c, h, w = x.size()
        x = x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous()
        return x.view(n, c, h, w)

    def depthwise(c, stride):
        return nn.Conv2d(c, c, 3, stride, 1, bias=False, groups=c)

    class InvertedResidual(nn.Module):
        def __init__(self, inp, oup, stride):
            super().__init__()
            self.stride = stride
            half = oup // 2
            if stride > 1:
                self.branch1 = nn.Sequential(
                    depthwise(inp, stride), nn.BatchNorm2d(inp),
                    nn.Conv2d(inp, half, 1, 1, 0, bias=False), nn.BatchNorm2d(half),
                    nn.ReLU(inplace=True))
            else:
                self.branch1 = nn.Sequential()
            self.branch2 = nn.Sequential(
                nn.Conv2d(inp if stride > 1 else half, half, 1, 1, 0, bias=False),
                nn.BatchNorm2d(half), nn.ReLU(inplace=True),
                depthwise(half, stride), nn.BatchNorm2d(half),
                nn.Conv2d(half, half, 1, 1, 0, bias=False), nn.BatchNorm2d(half),
                nn.ReLU(inplace=True))

        def forward(self, x):
            if self.stride == 1:
                x1, x2 = x.chunk(2, dim=1)
                out = torch.cat((x1, self.branch2(x2)), dim=1)
            else:
                out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
            return channel_shuffle(out, 2)

    class ShuffleNetV2(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Sequential(nn.Conv2d(3, CHANNELS[0], 3, 2, 1, bias=False),
                                       nn.BatchNorm2d(CHANNELS[0]), nn.ReLU(inplace=True))
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            cin = CHANNELS[0]
            for name, repeats, cout in zip(("stage2", "stage3", "stage4"), REPEATS,
                                           CHANNELS[1:]):
                seq = [InvertedResidual(cin, cout, 2)]
                seq += [InvertedResidual(cout, cout, 1) for _ in range(repeats - 1)]
                setattr(self, name, nn.Sequential(*seq))
                cin = cout
            self.conv5 = nn.Sequential(nn.Conv2d(cin, CHANNELS[-1], 1, 1, 0, bias=False),
                                       nn.BatchNorm2d(CHANNELS[-1]), nn.ReLU(inplace=True))
            self.fc = nn.Linear(CHANNELS[-1], 1000)

        def forward(self, x):
            x = self.maxpool(self.conv1(x))
            x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
            return self.fc(x.mean([2, 3]))

    return ShuffleNetV2()


def unet_transcription():
    """The padded U-Net of examples/unet.cnn in plain torch.nn, written from the paper's
    Figure 1 independently of the .cnn file; modules are created in forward order."""
    nn = pytest.importorskip("torch.nn")
    import torch

    def double(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                             nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            chans = [UNET_IN] + LEVELS
            self.down = nn.ModuleList(double(a, b) for a, b in zip(chans, chans[1:]))
            self.up = nn.ModuleList()
            for c in reversed(LEVELS[:-1]):
                self.up.append(nn.ModuleDict({"upconv": nn.ConvTranspose2d(2 * c, c, 2, 2),
                                              "conv": double(2 * c, c)}))
            self.head = nn.Conv2d(LEVELS[0], UNET_CLASSES, 1)

        def forward(self, x):
            skips = []
            for i, level in enumerate(self.down):
                x = level(nn.functional.max_pool2d(x, 2) if i else x)
                skips.append(x)
            for up, skip in zip(self.up, reversed(skips[:-1])):
                x = up["conv"](torch.cat((skip, up["upconv"](x)), dim=1))
            return self.head(x)

    return UNet()


def randomise(model, seed):
    """Batchnorm's affine parameters and running statistics, and every bias, drawn at random
    (PyTorch starts some at constants), so that a wrong mapping of any of them shows."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                size = module.num_features
                module.weight.copy_(0.5 + torch.rand(size, generator=gen))
                module.bias.copy_(0.1 * torch.randn(size, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(size, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(size, generator=gen))
            elif getattr(module, "bias", None) is not None:
                module.bias.copy_(0.01 * torch.randn(module.bias.shape, generator=gen))
    return model.eval()


def shufflenet_reference(kind, seed=0):
    import torch

    torch.manual_seed(seed)
    if kind == "torchvision":
        model = torchvision_models().shufflenet_v2_x1_0()
    else:
        model = shufflenet_transcription()
    return randomise(model, seed)


def unet_reference(seed=0):
    import torch

    torch.manual_seed(seed)
    return randomise(unet_transcription(), seed)


def torch_macs(model, shape):
    """Conv2d, ConvTranspose2d and Linear multiply-accumulates for one input of `shape`, with
    forward hooks: a convolution costs output elements x in/groups x kh x kw, an
    up-convolution input elements x out/groups x kh x kw, a dense layer in x out."""
    import torch

    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, torch.nn.ConvTranspose2d):
            kh, kw = module.kernel_size
            total += inputs[0][0].numel() * (module.out_channels // module.groups) * kh * kw
        elif isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            total += output[0].numel() * (module.in_channels // module.groups) * kh * kw
        else:
            total += output[0].numel() * module.in_features

    kinds = (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)
    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for hook in hooks:
        hook.remove()
    return total


def weight_file(net, model):
    """cnnc weight-file arrays taken from a PyTorch model, matched by structure: the layers
    with parameters in order against Conv2d, ConvTranspose2d, BatchNorm2d and Linear in
    order."""
    import torch

    kinds = {"conv": torch.nn.Conv2d, "conv_transpose": torch.nn.ConvTranspose2d,
             "batchnorm": torch.nn.BatchNorm2d, "dense": torch.nn.Linear}

    def kind_of(module):  # ConvTranspose2d is not a Conv2d, but test it first all the same
        if isinstance(module, torch.nn.ConvTranspose2d):
            return "conv_transpose"
        return next(op for op, cls in kinds.items() if isinstance(module, cls))

    ours = [node for node in net.layers if node.params or node.buffers]
    theirs = [m for m in model.modules() if isinstance(m, tuple(kinds.values()))]
    assert [node.op for node in ours] == [kind_of(m) for m in theirs]
    arrays = {}
    for node, module in zip(ours, theirs):
        if node.op in ("conv", "conv_transpose"):
            args = node.args
            assert args["stride"] == module.stride, node.name
            assert args["pad"] == module.padding, node.name
            assert args["dilation"] == module.dilation, node.name
            assert args["groups"] == module.groups, node.name
            assert ("bias" in node.params) == (module.bias is not None), node.name
            if node.op == "conv_transpose":
                assert args["output_pad"] == module.output_padding, node.name
        elif node.op == "batchnorm":
            assert node.args["eps"] == module.eps, node.name
            assert node.args["momentum"] == module.momentum, node.name
        for key, shape in {**node.params, **node.buffers}.items():
            value = getattr(module, key).detach().numpy()
            assert value.shape == tuple(shape), f"{node.name}.{key}"
            arrays[f"{node.name}.{key}"] = value
    return arrays


def compare(compiled, model, shape, tmp_path, batch=2):
    """The PyTorch model's weights in the cnnc model (NumPy backend, float32, through a weight
    file): the outputs agree within 1e-4 of their largest magnitude."""
    import torch

    arrays = weight_file(compiled.network, model)
    ours = compiled.build(backend="numpy", seed=0, dtype="float32")
    assert set(arrays) == set(ours.params)
    np.savez(tmp_path / "weights.npz", **arrays)
    ours.load(tmp_path / "weights.npz")
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = np.asarray(ours(x))
    assert got.shape == expected.shape
    scale = np.abs(expected).max()
    assert scale > 0
    assert np.abs(got - expected).max() <= 1e-4 * scale
    return got


def test_shufflenet_v2_macs_match_torchvision():
    model = shufflenet_reference("torchvision")
    assert sum(p.numel() for p in model.parameters()) == SHUFFLENET_V2_PARAMS
    assert torch_macs(model, (3, 224, 224)) == SHUFFLENET_V2_MACS


def test_shufflenet_transcription_is_torchvision():
    """The plain-PyTorch transcription has torchvision's state-dict keys and shapes, and with
    the same weights computes the same function."""
    import torch

    theirs = shufflenet_reference("torchvision")
    ours = shufflenet_transcription().eval()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()}
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


@pytest.mark.parametrize("kind", ["torchvision", "transcription"])
def test_shufflenet_v2_outputs_match_pytorch(kind, tmp_path):
    pytest.importorskip("torch")
    model = shufflenet_reference(kind)
    assert sum(p.numel() for p in model.parameters()) == SHUFFLENET_V2_PARAMS
    got = compare(cnnc.compile(SHUFFLENET_V2), model, (3, 224, 224), tmp_path)
    assert got.shape == (2, 1000)


def test_unet_figures_match_pytorch():
    """PyTorch counts the transcription's parameters, and its forward hooks the MACs at 64 x
    64 and at 512 x 512's level sums; both equal cnnc's."""
    model = unet_reference()
    params, macs = unet_level_totals()
    assert sum(p.numel() for p in model.parameters()) == params
    text = UNET.read_text(encoding="utf-8")
    small = cnnc.check(text.replace(UNET_DIMS, f"[1, {UNET_SMALL}, {UNET_SMALL}]"))
    assert small.ok
    hooked = torch_macs(model, (UNET_IN, UNET_SMALL, UNET_SMALL))
    assert hooked == sum(node.macs for node in small.layers)
    assert hooked == unet_level_totals(UNET_SMALL)[1]


def test_unet_outputs_match_pytorch(tmp_path):
    """The transcription's seeded weights in the cnnc U-Net, compiled at 64 x 64 (the example
    with its input size replaced: the weights do not depend on it)."""
    pytest.importorskip("torch")
    text = UNET.read_text(encoding="utf-8")
    compiled = cnnc.compile(text.replace(UNET_DIMS, f"[1, {UNET_SMALL}, {UNET_SMALL}]"))
    got = compare(compiled, unet_reference(), (UNET_IN, UNET_SMALL, UNET_SMALL), tmp_path)
    assert got.shape == (2, UNET_CLASSES, UNET_SMALL, UNET_SMALL)
