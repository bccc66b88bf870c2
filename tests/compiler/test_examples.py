"""The example models against their published figures.

Each example must check with no diagnostics at all, and match the parameter count its
source publishes. MAC totals are asserted exactly, against an independent sum over the
architecture's layer table written out below; where the source publishes a rounded figure,
the exact total is also checked against it.
"""

import functools
from pathlib import Path

import pytest

from cnnc.compiler.check import check_source
from cnnc.compiler.summary import report
from cnnc.compiler.symbolic import evaluate
from examples_support import weighted_depth

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@functools.lru_cache(maxsize=None)
def load(name):
    path = EXAMPLES / f"{name}.cnn"
    return check_source(path.read_text(encoding="utf-8"), str(path))


def conv_macs(size, cout, cin, k):
    """MACs of a square convolution with a size x size output: each output element costs
    cin * k * k multiply-accumulates."""
    return size * size * cout * cin * k * k


def conv_params(cout, cin, k, bias=True):
    return cout * cin * k * k + (cout if bias else 0)


def dense_params(fin, fout):
    return fin * fout + fout



# ---- every example --------------------------------------------------------------------------

# name: (parameters, MACs, outputs, weighted depth)
TOTALS = {
    "lenet5": (61_706, 416_520, {"logits": (10,)}, 5),
    "ng_39x39": (44_950, 2_814_230, {"probs": (10,)}, 4),
    "alexnet": (61_100_840, 714_188_480, {"logits": (1000,)}, 8),
    "vgg16": (138_357_544, 15_470_264_320, {"logits": (1000,)}, 16),
    "nin_cifar10": (966_986, 222_486_528, {"logits": (10,)}, 9),
    "resnet18": (11_689_512, 1_814_073_344, {"logits": (1000,)}, 18),
    "googlenet": (6_998_552, 1_582_671_872, {"logits": (1000,)}, 22),
    # the training example, counted in its own header: conv 9,216 + 294,912 + 294,912 MACs
    # (8x8, 8x8 and 4x4 outputs), dense 256 * 64 + 64 * 10
    "digits": (40_506, 616_064, {"logits": (10,)}, 5),
    # torchvision's mobilenet_v2: 3,504,872 parameters, 0.301 GFLOPS (MACs); depth 53: 52
    # convolutions and the classifier on the longest path
    "mobilenet_v2": (3_504_872, 300_774_272, {"logits": (1000,)}, 53),
    # torchvision: efficientnet_b0 5,288,548 / 0.39 GFLOPS, convnext_tiny 28,589,128 / 4.46,
    # shufflenet_v2_x1_0 2,278,604 / 0.14 (MACs); the rest counted in their headers and tests
    "efficientnet_b0": (5_288_548, 385_814_752, {"logits": (1000,)}, 82),
    "convnext_tiny": (28_589_128, 4_455_531_264, {"logits": (1000,)}, 59),
    "shufflenet_v2": (2_278_604, 144_907_992, {"logits": (1000,)}, 51),
    "unet": (31_030_658, 192_384_335_872, {"scores": (2, 512, 512)}, 23),
    "m5": (571_939, 69_944_832, {"logits": (35,)}, 5),
    "c3d": (79_991_015, 38_548_959_232, {"logits": (487,)}, 11),
}


def test_every_example_is_covered():
    assert sorted(p.stem for p in EXAMPLES.glob("*.cnn")) == sorted(TOTALS)


@pytest.mark.parametrize("name", sorted(TOTALS))
def test_example_checks_clean(name):
    net = load(name)
    assert net.diagnostics == []
    assert net.ok
    assert net.name == name
    assert all(node.shape is not None for node in net.nodes.values())


@pytest.mark.parametrize("name", sorted(TOTALS))
def test_example_totals(name):
    params, macs, outputs, _ = TOTALS[name]
    net = load(name)
    assert sum(node.param_count for node in net.layers) == params
    assert sum(node.macs for node in net.layers) == macs
    assert {out: net.nodes[node].shape for out, node in net.outputs.items()} == outputs


@pytest.mark.parametrize("name", sorted(TOTALS))
def test_example_report_agrees(name):
    params, macs, outputs, _ = TOTALS[name]
    net = load(name)
    rep = report(net)
    assert rep.network == name
    assert rep.total_params == params
    assert rep.total_macs == macs
    assert rep.outputs == list(outputs.items())
    assert [row.name for row in rep.rows] == [node.name for node in net.layers]
    data = rep.to_json()
    assert data["total_params"] == params
    assert data["total_macs"] == macs


@pytest.mark.parametrize("name", sorted(TOTALS))
def test_example_weighted_depth(name):
    assert weighted_depth(load(name)) == TOTALS[name][3]


# (example, input dims as written, the same with symbols, smallest valid H and W)
SYMBOLIC = [
    ("lenet5", "[1, 32, 32]", "[1, H, W]", 32),
    ("alexnet", "[3, 224, 224]", "[3, H, W]", 63),
    ("vgg16", "[3, 224, 224]", "[3, H, W]", 32),
    ("nin_cifar10", "[3, 32, 32]", "[3, H, W]", 4),
    ("resnet18", "[3, 224, 224]", "[3, H, W]", 1),
    ("googlenet", "[3, 224, 224]", "[3, H, W]", 31),
]


@pytest.mark.parametrize("name, dims, symbolic, smallest", SYMBOLIC)
def test_example_with_symbolic_input_size(name, dims, symbolic, smallest):
    """With H and W for the input size, the totals are expressions that give the published
    figures at the example's own size, and the valid sizes agree with concrete checks."""
    text = (EXAMPLES / f"{name}.cnn").read_text(encoding="utf-8")
    assert text.count(dims) == 1
    text = text.replace(dims, symbolic)
    net = check_source(text)
    assert net.ok
    size = int(dims.split(",")[1])
    rep = report(net)
    params, macs, _, _ = TOTALS[name]
    assert evaluate(rep.total_params, {"H": size, "W": size}) == params
    assert evaluate(rep.total_macs, {"H": size, "W": size}) == macs
    valid_h, valid_w = net.valid_sizes
    for valid in (valid_h, valid_w):
        assert valid.start == smallest
        assert valid.contains(size)
    for h in (smallest - 1, smallest, smallest + 1):
        if h >= 1:
            sized = check_source(text, sizes={"H": h, "W": size})
            assert sized.ok == valid_h.contains(h), h


def shapes_of(net, names):
    return {name: net.nodes[name].shape for name in names}


# ---- LeNet-5 --------------------------------------------------------------------------------


def test_lenet5():
    # LeCun et al. 1998, Fig. 2: C1 6@28x28, S2 6@14x14, C3 16@10x10, S4 16@5x5, C5 120,
    # F6 84, output 10. 61,706 parameters is the count quoted for this variant, with C3
    # connected to all six S2 maps.
    net = load("lenet5")
    assert shapes_of(net, ["features.c1", "features.s2", "features.c3", "features.s4",
                           "features.c5", "logits.f6", "logits.out"]) == {
        "features.c1": (6, 28, 28),
        "features.s2": (6, 14, 14),
        "features.c3": (16, 10, 10),
        "features.s4": (16, 5, 5),
        "features.c5": (120, 1, 1),
        "logits.f6": (84,),
        "logits.out": (10,),
    }
    # dense C3: every one of the 16 maps sees all 6 inputs
    assert net.nodes["features.c3"].params == {"weight": (16, 6, 5, 5), "bias": (16,)}
    expected = (conv_params(6, 1, 5) + conv_params(16, 6, 5) + conv_params(120, 16, 5)
                + dense_params(120, 84) + dense_params(84, 10))
    assert expected == 61_706
    macs = (conv_macs(28, 6, 1, 5) + conv_macs(10, 16, 6, 5) + conv_macs(1, 120, 16, 5)
            + 120 * 84 + 84 * 10)
    assert macs == TOTALS["lenet5"][1]


# ---- the 39x39 course network ----------------------------------------------------------------


def test_ng_39x39():
    # Ng's course: 39x39x3 -> 37x37x10 -> 17x17x20 -> 7x7x40 -> 1960 features
    net = load("ng_39x39")
    assert shapes_of(net, ["features.conv1", "features.conv2", "features.conv3",
                           "features.flatten1", "probs.dense1", "probs.softmax1"]) == {
        "features.conv1": (10, 37, 37),
        "features.conv2": (20, 17, 17),
        "features.conv3": (40, 7, 7),
        "features.flatten1": (1960,),
        "probs.dense1": (10,),
        "probs.softmax1": (10,),
    }
    # the course's exercise: 10 filters of 3x3x3 with a bias each make 280 parameters
    assert net.nodes["features.conv1"].param_count == 280
    macs = (conv_macs(37, 10, 3, 3) + conv_macs(17, 20, 10, 5) + conv_macs(7, 40, 20, 5)
            + 1960 * 10)
    assert macs == TOTALS["ng_39x39"][1]


# ---- AlexNet ----------------------------------------------------------------------------------


def test_alexnet():
    # torchvision docs, AlexNet_Weights.IMAGENET1K_V1: 61,100,840 params, 0.71 GFLOPS
    net = load("alexnet")
    assert shapes_of(net, ["features.conv1", "features.maxpool1", "features.conv2",
                           "features.maxpool2", "features.conv5", "features.maxpool3",
                           "logits.flatten1", "logits.dense1", "logits.dense3"]) == {
        "features.conv1": (64, 55, 55),
        "features.maxpool1": (64, 27, 27),
        "features.conv2": (192, 27, 27),
        "features.maxpool2": (192, 13, 13),
        "features.conv5": (256, 13, 13),
        "features.maxpool3": (256, 6, 6),
        "logits.flatten1": (9216,),
        "logits.dense1": (4096,),
        "logits.dense3": (1000,),
    }
    assert net.nodes["features.conv1"].params == {"weight": (64, 3, 11, 11), "bias": (64,)}
    assert net.nodes["logits.dense1"].params == {"weight": (4096, 9216), "bias": (4096,)}
    macs = (conv_macs(55, 64, 3, 11) + conv_macs(27, 192, 64, 5) + conv_macs(13, 384, 192, 3)
            + conv_macs(13, 256, 384, 3) + conv_macs(13, 256, 256, 3)
            + 9216 * 4096 + 4096 * 4096 + 4096 * 1000)
    total = TOTALS["alexnet"][1]
    assert macs == total
    assert round(total / 1e9, 2) == 0.71
    # The exact figure behind torchvision's 0.71 is 714,197,696: 9,216 = 256 * 6 * 6 more, one
    # per output of the AdaptiveAvgPool2d(6) that this file leaves out. The spec counts conv
    # and dense only.
    assert 714_197_696 - total == 256 * 6 * 6


# ---- VGG-16 -----------------------------------------------------------------------------------

VGG16_STAGES = [(64, 2, 224), (128, 2, 112), (256, 3, 56), (512, 3, 28), (512, 3, 14)]


def test_vgg16():
    # torchvision docs, VGG16_Weights.IMAGENET1K_V1: 138,357,544 params, 15.47 GFLOPS
    net = load("vgg16")
    for index, (channels, convs, size) in enumerate(VGG16_STAGES, start=1):
        stage = f"features.stage{index}"
        for unit in range(1, convs + 1):
            assert net.nodes[f"{stage}.unit{unit}.conv1"].shape == (channels, size, size)
        assert f"{stage}.unit{convs + 1}.conv1" not in net.nodes
        assert net.nodes[f"{stage}.maxpool1"].shape == (channels, size // 2, size // 2)
    assert net.nodes["logits.flatten1"].shape == (25088,)
    assert net.nodes["logits.dense1"].params == {"weight": (4096, 25088), "bias": (4096,)}
    assert sum(node.op == "conv" for node in net.layers) == 13
    params = macs = 0
    cin = 3
    for channels, convs, size in VGG16_STAGES:
        for _ in range(convs):
            params += conv_params(channels, cin, 3)
            macs += conv_macs(size, channels, cin, 3)
            cin = channels
    params += dense_params(25088, 4096) + dense_params(4096, 4096) + dense_params(4096, 1000)
    macs += 25088 * 4096 + 4096 * 4096 + 4096 * 1000
    assert params == 138_357_544
    assert macs == TOTALS["vgg16"][1]
    assert round(macs / 1e9, 2) == 15.47


# ---- Network in Network -----------------------------------------------------------------------


def test_nin_cifar10():
    # the Caffe model of Lin et al.: 966,986 parameters in nine convolutions
    net = load("nin_cifar10")
    assert shapes_of(net, ["mlp1.conv1", "mlp1.conv3", "mlp1.maxpool1", "mlp2.conv1",
                           "mlp2.avgpool1", "mlp3.conv3", "logits.global_avgpool1",
                           "logits.flatten1"]) == {
        "mlp1.conv1": (192, 32, 32),
        "mlp1.conv3": (96, 32, 32),
        "mlp1.maxpool1": (96, 16, 16),     # ceil((32 - 3)/2) + 1; floor would give 15
        "mlp2.conv1": (192, 16, 16),
        "mlp2.avgpool1": (192, 8, 8),      # ceil((16 - 3)/2) + 1; floor would give 7
        "mlp3.conv3": (10, 8, 8),
        "logits.global_avgpool1": (10, 1, 1),
        "logits.flatten1": (10,),
    }
    assert net.nodes["mlp1.maxpool1"].args["ceil"] is True
    assert not [node for node in net.layers if node.op == "dense"]
    layers = [  # (output size, out, in, kernel)
        (32, 192, 3, 5), (32, 160, 192, 1), (32, 96, 160, 1),
        (16, 192, 96, 5), (16, 192, 192, 1), (16, 192, 192, 1),
        (8, 192, 192, 3), (8, 192, 192, 1), (8, 10, 192, 1),
    ]
    assert sum(conv_params(o, i, k) for _, o, i, k in layers) == 966_986
    assert sum(conv_macs(s, o, i, k) for s, o, i, k in layers) == TOTALS["nin_cifar10"][1]


# ---- ResNet-18 --------------------------------------------------------------------------------


def test_resnet18_layers():
    net = load("resnet18")
    assert shapes_of(net, ["stem.conv1", "stem.maxpool1", "layer1.basic2.add1",
                           "layer2.down1.body.conv1", "layer2.down1.short.conv1",
                           "layer2.down1.add1", "layer3.basic1.relu1", "layer4.basic1.relu1",
                           "logits.global_avgpool1", "logits.dense1"]) == {
        "stem.conv1": (64, 112, 112),
        "stem.maxpool1": (64, 56, 56),
        "layer1.basic2.add1": (64, 56, 56),
        "layer2.down1.body.conv1": (128, 28, 28),
        "layer2.down1.short.conv1": (128, 28, 28),
        "layer2.down1.add1": (128, 28, 28),
        "layer3.basic1.relu1": (256, 14, 14),
        "layer4.basic1.relu1": (512, 7, 7),
        "logits.global_avgpool1": (512, 1, 1),
        "logits.dense1": (1000,),
    }
    # torchvision: conv1.weight [64, 3, 7, 7] with no bias; bn1 has weight and bias as
    # parameters and the running statistics as buffers
    assert net.nodes["stem.conv1"].params == {"weight": (64, 3, 7, 7)}
    assert net.nodes["stem.batchnorm1"].params == {"weight": (64,), "bias": (64,)}
    assert net.nodes["stem.batchnorm1"].buffers == {"running_mean": (64,),
                                                    "running_var": (64,)}
    # layer2.0.downsample: a 1x1 stride-2 conv and a batchnorm
    assert net.nodes["layer2.down1.short.conv1"].params == {"weight": (128, 64, 1, 1)}
    assert net.nodes["layer2.down1.short.conv1"].args["stride"] == (2, 2)
    # every conv has no bias and feeds a batchnorm
    convs = [node for node in net.layers if node.op == "conv"]
    assert len(convs) == 20
    assert all("bias" not in node.params for node in convs)
    followers = {node.inputs[0]: node.op for node in net.layers if node.inputs}
    assert all(followers[node.name] == "batchnorm" for node in convs)
    # identity shortcuts add the block's input; projections add the short branch
    assert net.nodes["layer1.basic1.add1"].inputs == ["layer1.basic1.body.batchnorm2",
                                                      "stem.maxpool1"]
    assert net.nodes["layer3.down1.add1"].inputs == ["layer3.down1.body.batchnorm2",
                                                     "layer3.down1.short.batchnorm1"]


def test_resnet18_totals():
    # torchvision docs, ResNet18_Weights.IMAGENET1K_V1: 11,689,512 params, 1.81 GFLOPS
    params = conv_params(64, 3, 7, bias=False) + 2 * 64
    macs = conv_macs(112, 64, 3, 7)
    cin, size = 64, 56
    for channels in (64, 128, 256, 512):
        for block in range(2):
            down = block == 0 and channels != 64
            if down:
                size //= 2
                params += conv_params(channels, cin, 1, bias=False) + 2 * channels
                macs += conv_macs(size, channels, cin, 1)
            params += conv_params(channels, cin, 3, bias=False) + 2 * channels
            params += conv_params(channels, channels, 3, bias=False) + 2 * channels
            macs += conv_macs(size, channels, cin, 3) + conv_macs(size, channels, channels, 3)
            cin = channels
    params += dense_params(512, 1000)
    macs += 512 * 1000
    assert params == 11_689_512
    assert macs == TOTALS["resnet18"][1]
    assert round(macs / 1e9, 2) == 1.81


# ---- GoogLeNet ---------------------------------------------------------------------------------

# Szegedy et al. 2014, Table 1: output size, then #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5,
# pool proj, for inception 3a .. 5b
INCEPTIONS = [
    ("i3.inception1", 28, 192, (64, 96, 128, 16, 32, 32)),
    ("i3.inception2", 28, 256, (128, 128, 192, 32, 96, 64)),
    ("i4.inception1", 14, 480, (192, 96, 208, 16, 48, 64)),
    ("i4.inception2", 14, 512, (160, 112, 224, 24, 64, 64)),
    ("i4.inception3", 14, 512, (128, 128, 256, 24, 64, 64)),
    ("i4.inception4", 14, 512, (112, 144, 288, 32, 64, 64)),
    ("i4.inception5", 14, 528, (256, 160, 320, 32, 128, 128)),
    ("i5.inception1", 7, 832, (256, 160, 320, 32, 128, 128)),
    ("i5.inception2", 7, 832, (384, 192, 384, 48, 128, 128)),
]
# Table 1's output depth of each inception module
DEPTHS = [256, 480, 512, 512, 512, 528, 832, 832, 1024]


def test_googlenet_layers():
    net = load("googlenet")
    assert shapes_of(net, ["stem.conv1", "stem.maxpool1", "stem.conv3", "stem.maxpool2",
                           "i3.maxpool1", "i4.maxpool1", "logits.global_avgpool1",
                           "logits.dense1"]) == {
        "stem.conv1": (64, 112, 112),
        "stem.maxpool1": (64, 56, 56),
        "stem.conv3": (192, 56, 56),
        "stem.maxpool2": (192, 28, 28),
        "i3.maxpool1": (480, 14, 14),
        "i4.maxpool1": (832, 7, 7),
        "logits.global_avgpool1": (1024, 1, 1),
        "logits.dense1": (1000,),
    }
    # spec section 5's example names
    assert net.nodes["i3.inception2.b3.conv2"].shape == (96, 28, 28)
    assert net.nodes["i3.inception2.b3.conv2"].params == {"weight": (96, 32, 5, 5),
                                                          "bias": (96,)}
    assert net.nodes["i3.inception2.b3.conv2"].args["pad"] == (2, 2)
    for (scope, size, cin, (c1, c3r, c3, c5r, c5, pp)), depth in zip(INCEPTIONS, DEPTHS):
        assert c1 + c3 + c5 + pp == depth
        assert net.nodes[f"{scope}.concat1"].shape == (depth, size, size)
        assert net.nodes[f"{scope}.b1.conv1"].shape == (c1, size, size)
        assert net.nodes[f"{scope}.b2.conv1"].shape == (c3r, size, size)
        assert net.nodes[f"{scope}.b2.conv2"].shape == (c3, size, size)
        assert net.nodes[f"{scope}.b3.conv1"].shape == (c5r, size, size)
        assert net.nodes[f"{scope}.b4.maxpool1"].shape == (cin, size, size)
        assert net.nodes[f"{scope}.b4.conv1"].params == {"weight": (pp, cin, 1, 1),
                                                         "bias": (pp,)}


def test_googlenet_totals():
    # Caffe's bvlc_googlenet deploy network, auxiliary classifiers left out: its weights and
    # biases sum to 6,998,552. The paper gives "about 1.5 billion multiply-adds".
    params = conv_params(64, 3, 7) + conv_params(64, 64, 1) + conv_params(192, 64, 3)
    macs = conv_macs(112, 64, 3, 7) + conv_macs(56, 64, 64, 1) + conv_macs(56, 192, 64, 3)
    for _, size, cin, (c1, c3r, c3, c5r, c5, pp) in INCEPTIONS:
        params += (conv_params(c1, cin, 1) + conv_params(c3r, cin, 1) + conv_params(c3, c3r, 3)
                   + conv_params(c5r, cin, 1) + conv_params(c5, c5r, 5) + conv_params(pp, cin, 1))
        macs += (conv_macs(size, c1, cin, 1) + conv_macs(size, c3r, cin, 1)
                 + conv_macs(size, c3, c3r, 3) + conv_macs(size, c5r, cin, 1)
                 + conv_macs(size, c5, c5r, 5) + conv_macs(size, pp, cin, 1))
    params += dense_params(1024, 1000)
    macs += 1024 * 1000
    assert params == 6_998_552
    assert macs == TOTALS["googlenet"][1]
    assert abs(macs - 1.5e9) < 0.06 * 1.5e9
