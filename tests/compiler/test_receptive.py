"""Receptive fields: by hand on chains (AlexNet, VGG-16), measured on branchy networks
(GoogLeNet, ResNet-18) through the NumPy runtime's input gradients."""

from __future__ import annotations

import pathlib
import re
from fractions import Fraction

import pytest

import cnnc
from cnnc.compiler.receptive import Field, axes_text, field_json, receptive_fields

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def _chain_by_hand(layers):
    """The textbook recurrence over ``(kernel, stride, pad)`` triples, one axis."""
    r, j, c = 1, 1, Fraction(0)
    out = []
    for k, s, p in layers:
        r = r + (k - 1) * j
        c = c + (Fraction(k - 1, 2) - p) * j
        j = j * s
        out.append((r, j, c))
    return out


def _windows(net):
    """``(name, (kernel, stride, pad))`` of every sliding window of a plain chain."""
    out = []
    for node in net.layers:
        if node.op in ("conv", "maxpool"):
            out.append((node.name, (node.args["kernel"][0], node.args["stride"][0],
                                    node.args["pad"][0])))
    return out


@pytest.mark.parametrize("example, last", [
    # AlexNet's pool5 sees 195 x 195 pixels, VGG-16's 212 x 212 (Araujo et al., Distill
    # 2019, table of receptive fields), both with a jump of 32.
    ("alexnet", 195),
    ("vgg16", 212),
])
def test_chains_match_the_recurrence_by_hand(example, last):
    net = cnnc.check(EXAMPLES / f"{example}.cnn")
    fields = receptive_fields(net)
    windows = _windows(net)
    expected = _chain_by_hand([w for _, w in windows])
    for (name, _), (r, j, c) in zip(windows, expected):
        assert fields[name] == Field((r, r), (j, j), (c, c)), name
    assert expected[-1][:2] == (last, 32)
    assert fields.warnings == []


def test_layers_that_see_everything_have_no_size():
    net = cnnc.check(EXAMPLES / "alexnet.cnn")
    fields = receptive_fields(net)
    dense = [n for n in net.layers if n.op == "dense"]
    assert dense and all(fields[n.name].whole for n in dense)
    assert field_json(fields[dense[0].name])["size"] == "all"


def test_symbolic_input_sizes_do_not_change_sizes_or_jumps():
    text = (EXAMPLES / "vgg16.cnn").read_text()
    symbolic = re.sub(r"input image: \[3, 224, 224\]", "input image: [3, H, W]", text)
    assert symbolic != text
    fixed = receptive_fields(cnnc.check(text))
    free = receptive_fields(cnnc.check(symbolic))
    assert fixed.by_node == free.by_node


def test_misaligned_branches_are_warned_about():
    # a 2x2 stride-2 window is centred between two pixels; a 1x1 stride-2 one on a pixel
    net = cnnc.check("""network skew
input x: [1, 32, 32]
a = x -> conv(4, 2, stride=2)
b = x -> conv(4, 1, stride=2)
output y = add(a, b)
""")
    assert net.ok, net.render()
    fields = receptive_fields(net)
    (name, message), = fields.warnings
    assert net.nodes[name].op == "add"
    assert "not aligned" in message and "offset 0.5" in message and "offset 0" in message
    # the merge sees both: input units 0 and 1 around 0.5, as the wider branch does
    assert fields[name] == Field((2, 2), (2, 2), (Fraction(1, 2),) * 2)


def test_aligned_branches_are_not_warned_about():
    net = cnnc.check(EXAMPLES / "googlenet.cnn")
    fields = receptive_fields(net)
    assert fields.warnings == []
    concat = next(n for n in net.layers if n.op == "concat")
    widest = max(fields[src].size[0] for src in concat.inputs)
    assert fields[concat.name].size == (widest, widest)


def test_text_of_a_field():
    assert axes_text((11, 11)) == "11"
    assert axes_text((11, 7)) == "11x7"
    assert axes_text((Fraction(1, 2), Fraction(1, 2))) == "0.5"
    assert axes_text(None) == "all"


# ---- measured: the input gradient of one output unit, every weight positive ----------------

def _small(text: str, blocks: dict, size: int, output: str) -> str:
    """A cheap copy of an example with the same geometry: every convolution 1 channel wide,
    max pools as average pools (a max pool's gradient reaches one input per window; an
    average pool has the same windows and reaches them all), the input ``size`` square,
    and the output ``output`` (the classifier, which sees everything, left out)."""
    text = re.sub(r"conv(_transpose)?\(\d+,", r"conv\1(1,", text)
    for block, count in blocks.items():
        narrow = f"{block}({', '.join(['1'] * count)})"
        text = re.sub(r"(?<!block )" + block + r"\([^)]*\)", narrow, text)
    text = text.replace("maxpool(", "avgpool(")
    text = re.sub(r"input image: \[(\d+), \d+, \d+\]", rf"input image: [\1, {size}, {size}]",
                  text)
    text = re.sub(r"output \w+ = .*", f"output features = {output}", text)
    return text


def _measured(text: str, units: list):
    """For each output unit (an index per spatial axis) of the output ``features``: the
    first and last input row and column whose gradient is nonzero, every channel of the
    unit together (a concat's channels come from different branches), with every weight,
    bias and input positive. Returns ``(network, {unit: ((row, row), (col, col))})``."""
    np = pytest.importorskip("numpy")
    compiled = cnnc.compile(text)
    model = compiled.build()
    rng = np.random.default_rng(0)
    for key, value in model.params.items():
        if key.endswith("running_mean"):
            value[...] = 0.0
        elif key.endswith("running_var"):
            value[...] = 1.0
        else:  # positive, and scaled by the fan-in so that no value over- or underflows
            fan_in = value[0].size if value.ndim > 1 else 1
            value[...] = rng.uniform(0.5, 1.0, value.shape) / fan_in
    shape = compiled.network.nodes["image"].shape
    x = rng.uniform(0.5, 1.5, (1,) + shape)
    found = {}
    for unit in units:
        y = model.forward(x, train=False)
        dy = np.zeros_like(y)
        dy[(0, slice(None)) + tuple(unit)] = 1.0
        dx = model.backward(dy)
        rows = np.nonzero(np.abs(dx[0]).sum(axis=(0, 2)))[0]
        cols = np.nonzero(np.abs(dx[0]).sum(axis=(0, 1)))[0]
        found[tuple(unit)] = ((int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1])))
    return compiled.network, found


def _centre(net, name):
    return tuple(n // 2 for n in net.nodes[name].shape[1:])


@pytest.mark.parametrize("example, blocks, size, output, inner", [
    # GoogLeNet through inception 4e and its pool: four parallel branches merged by
    # concat seven times (a field of 459 pixels)
    ("googlenet", {"inception": 6}, 544, "i4", "i3"),
    # ResNet-18 to its last stage: residual additions, strided projection shortcuts
    ("resnet18", {"basic": 1, "down": 1}, 480, "layer4", "layer2"),
])
def test_branchy_networks_match_the_measured_gradient(example, blocks, size, output, inner):
    text = (EXAMPLES / f"{example}.cnn").read_text()
    for out in (inner, output):
        small = _small(text, blocks, size, out)
        net = cnnc.check(small)
        node = net.outputs["features"]
        centre = _centre(net, node)
        _, found = _measured(small, [centre])
        field = receptive_fields(net)[node]
        interval = field.interval(centre)
        assert interval is not None
        # the whole field lies inside the input, so nothing is clipped
        assert interval[0][0] >= 0 and interval[0][1] < size
        assert found[centre] == tuple((int(lo), int(hi)) for lo, hi in interval), out
        rows = found[centre][0]
        assert rows[1] - rows[0] + 1 == field.size[0]


def test_upsampling_networks_match_the_measured_gradient_unit_by_unit():
    """U-Net: transposed convolutions and skip connections. Below a transposed
    convolution neighbouring units alternate between phases; each unit's exact interval
    and the largest field over the phases are checked."""
    small = _small((EXAMPLES / "unet.cnn").read_text(), {"double": 1}, 256, "d1 -> conv(2, 1)")
    net = cnnc.check(small)
    fields = receptive_fields(net)
    for name in ("u3.conv_transpose1", net.outputs["features"]):
        at = _centre(net, name)[0]
        units = [(i, i) for i in range(at, at + 4)]
        text = re.sub(r"output features = .*", f"output features = {name.split('.')[0]}",
                      small) if name != net.outputs["features"] else small
        sub, found = _measured(text, units)
        last = sub.outputs["features"]
        sub_fields = receptive_fields(sub)
        for unit in units:
            assert found[unit] == tuple(sub_fields.unit_interval(last, unit)), (name, unit)
        widest = max(hi - lo + 1 for (lo, hi), _ in found.values())
        assert fields[name].size[0] == widest == sub_fields[last].size[0]


@pytest.mark.parametrize("chain", [
    "conv(2, 3, stride=2, pad=1) -> upsample(2) -> conv(2, 3, pad=1)",
    "conv(2, 3, stride=2, pad=1) -> upsample(2, mode=bilinear) -> conv(2, 3, pad=1)",
    "conv(2, 3, stride=2, pad=1) -> upsample(3, mode=bilinear)",
    "conv(2, 3, stride=2, pad=1) -> upsample(2, mode=bilinear, align_corners=true)",
    "conv(2, 3, stride=2) -> conv_transpose(2, 3, stride=2, pad=1)",
    "conv(2, 3, stride=2, pad=1) -> conv(2, 3, stride=2, pad=1) -> upsample(4) "
    "-> conv(2, 3, pad=1) -> avgpool(2) -> conv(2, 3, pad=1)",
])
def test_upsampling_layers_unit_by_unit(chain):
    text = f"network up\ninput image: [1, 48, 48]\noutput features = image -> {chain}\n"
    net = cnnc.check(text)
    name = net.outputs["features"]
    at = _centre(net, name)[0]
    units = [(i, i) for i in range(at - 2, at + 3)]
    _, found = _measured(text, units)
    fields = receptive_fields(net)
    for unit in units:
        assert found[unit] == tuple(fields.unit_interval(name, unit)), unit
    assert fields[name].size[0] == max(hi - lo + 1 for (lo, hi), _ in found.values())
