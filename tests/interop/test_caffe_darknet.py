"""Caffe and Darknet in: `cnnc import deploy.prototxt` and `cnnc import net.cfg` give checked
`.cnn` source with the original layer names; what cannot be expressed is listed, every
layer of it, and nothing is written. The fixtures are written from the published layer
tables (tests/interop/fixtures)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import cnnc
from cnnc.cli import main
from cnnc.compiler.summary import report
from cnnc.interop.caffe import import_caffe, parse_prototxt
from cnnc.interop.darknet import import_darknet
from cnnc.interop.source import ImportProblem

FIXTURES = Path(__file__).parent / "fixtures"


def _cli(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


def test_alexnet_deploy_keeps_names_and_the_published_parameter_count():
    source = import_caffe(FIXTURES / "alexnet_deploy.prototxt")
    net = cnnc.check(source.text)
    assert net.ok and not net.diagnostics, net.render(net.diagnostics)
    # 60,965,224: AlexNet with its grouped convolutions, as Caffe's bvlc_alexnet counts it
    assert report(net).total_params == 60_965_224
    for name in ("conv1", "norm1", "pool1", "conv2", "fc6", "drop7", "fc8", "prob"):
        assert f" as {name}" in source.text
    assert "conv(256, 5, pad=2, groups=2) as conv2" in source.text
    assert "maxpool(3, stride=2, ceil=true) as pool1" in source.text  # Caffe rounds up
    assert "flatten as fc6_flatten -> dense(4096) as fc6" in source.text
    assert list(net.outputs) == ["prob"]
    assert net.nodes[net.outputs["prob"]].shape == (1000,)


def test_batchnorm_and_scale_become_one_batchnorm_and_eltwise_an_add():
    source = import_caffe(FIXTURES / "resnet_unit.prototxt")
    net = cnnc.compile(source.text)
    assert "scale_conv1" not in source.text
    assert "batchnorm(momentum=momentum) as bn_conv1" in source.text
    assert "let momentum = 0.001" in source.text  # Caffe's moving_average_fraction 0.999
    assert "add(pool1, bn2a_branch2b)" in source.text
    assert [n.op for n in net.nodes.values()].count("batchnorm") == 3


def test_caffe_layers_cnnc_lacks_are_listed_together(tmp_path):
    path = tmp_path / "odd.prototxt"
    path.write_text(
        'input: "data"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
        'layer { name: "p" type: "Python" bottom: "data" top: "p" }\n'
        'layer { name: "pool" type: "Pooling" bottom: "p" top: "pool"\n'
        '  pooling_param { pool: STOCHASTIC kernel_size: 2 } }\n'
        'layer { name: "e" type: "Eltwise" bottom: "pool" bottom: "pool" top: "e"\n'
        '  eltwise_param { operation: MAX } }\n')
    with pytest.raises(ImportProblem) as info:
        import_caffe(path)
    assert str(info.value) == (
        f"{path} uses 3 layers cnnc cannot express:\n"
        f"  {path}:3: layer p (Python)\n"
        f"  {path}:4: layer pool (Pooling): pool STOCHASTIC\n"
        f"  {path}:6: layer e (Eltwise): operation MAX")


def test_prototxt_syntax_errors_name_the_line():
    with pytest.raises(ImportProblem, match=r"<prototxt>:2:9: not Caffe's text format"):
        parse_prototxt('name: "x"\nlayer { : }\n')
    message = parse_prototxt('a: 1 b { c: "x" d: 2.5e-3 e: TRUE } b { }')
    assert message.one("a") == 1
    assert message.all("b")[0].one("d") == 0.0025
    assert message.all("b")[0].one("e") == "TRUE"


def test_darknet19_from_the_paper():
    source = import_darknet(FIXTURES / "darknet19.cfg")
    net = cnnc.check(source.text)
    assert net.ok and not net.diagnostics, net.render(net.diagnostics)
    ops = [n.op for n in net.nodes.values()]
    assert ops.count("conv") == 19 and ops.count("maxpool") == 5  # the paper's Table 6
    # "Darknet-19 only requires 5.58 billion operations" (YOLO9000, section 3): 2 per MAC
    assert round(2 * report(net).total_macs / 1e9, 2) == 5.58
    assert "conv(32, 3, pad=1, bias=false) as conv0 -> batchnorm as bn0" in source.text
    assert "leaky_relu(alpha=alpha) as leaky0" in source.text and "let alpha = 0.1" in source.text


YOLO = """\
[net]
width=64
height=64
channels=3

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=32
size=3
stride=2
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=32
size=3
stride=1
pad=1
activation=leaky

[shortcut]
from=-3
activation=linear

[convolutional]
filters=18
size=1
stride=1
pad=1
activation=linear

[yolo]
mask = 0,1,2
classes=1

[route]
layers = -3

[upsample]
stride=2

[route]
layers = -1, 0

[convolutional]
filters=18
size=1
stride=1
pad=1
activation=linear

[yolo]
mask = 0,1,2
classes=1
"""


def test_darknet_route_shortcut_upsample_and_heads(tmp_path, capsys):
    path = tmp_path / "yolo.cfg"
    path.write_text(YOLO)
    out = tmp_path / "yolo.cnn"
    status, _, err = _cli(capsys, "import", path, "-o", out)
    assert status == 0, err
    assert "cnnc: note: left out the detection head [yolo] at line 49 (layer 6)" in err
    text = out.read_text()
    assert "shortcut4 = add(" in text
    assert "upsample(2) as upsample8" in text
    assert "concat(" in text
    net = cnnc.compile(out)
    assert {name: net.nodes[t].shape for name, t in net.outputs.items()} == {
        "yolo6": (18, 32, 32), "yolo11": (18, 64, 64)}


def test_darknet_sections_cnnc_lacks_are_listed_and_nothing_is_written(tmp_path, capsys):
    path = tmp_path / "tiny.cfg"
    path.write_text("[net]\nwidth=13\nheight=13\nchannels=3\n\n"
                    "[maxpool]\nsize=2\nstride=1\n\n"
                    "[reorg]\nstride=2\n\n"
                    "[convolutional]\nfilters=4\nsize=1\nactivation=gelu_ish\n")
    before = sorted(os.listdir(tmp_path))
    status, _, err = _cli(capsys, "import", path, "-o", tmp_path / "tiny.cnn")
    assert status == 1
    assert err == (f"cnnc: error: {path} uses 3 sections cnnc cannot express:\n"
                   f"  {path}:6: [maxpool] (layer 0): size=2, stride=1 on a 13x13 map pads "
                   "one side only (padding=1)\n"
                   f"  {path}:10: [reorg] (layer 1)\n"
                   f"  {path}:13: activation=gelu_ish (layer 2)\n")
    assert sorted(os.listdir(tmp_path)) == before


def test_darknet_bad_files(tmp_path):
    path = tmp_path / "bad.cfg"
    path.write_text("width=3\n")
    with pytest.raises(ImportProblem, match=r"bad.cfg:1: 'width=3' comes before any"):
        import_darknet(path)
    path.write_text("[convolutional]\nfilters=3\n")
    with pytest.raises(ImportProblem, match="starts with a \\[net\\] section"):
        import_darknet(path)


def test_squeezenet_fire_modules_become_one_block():
    """Caffe's slash-scoped names (fire2/squeeze1x1) say which layers form a module; the
    eight fire modules become calls of one block `fire` with their widths as parameters."""
    source = import_caffe(FIXTURES / "squeezenet_v1.1_deploy.prototxt")
    net = cnnc.check(source.text)
    assert net.ok and not net.diagnostics, net.render(net.diagnostics)
    # 1,235,496: SqueezeNet v1.1's parameter count (torchvision's squeezenet1_1 agrees)
    assert report(net).total_params == 1_235_496
    assert "# 8 modules of the graph: fire2, fire3, fire4, fire5, ...\n" \
           "block fire(c, expand1x1_out) {" in source.text
    assert "-> fire(16, 64) as fire2" in source.text
    assert "-> fire(64, 256) as fire9" in source.text
    assert net.nodes[net.outputs["prob"]].shape == (1000, 1, 1)


def test_googlenet_deploy_is_the_example_network():
    """GoogLeNet from its Caffe deploy layers has the parameters and MACs of
    examples/googlenet.cnn (written by hand from the paper), and its nine inception modules
    become one block with the six widths of the paper's Table 1 as parameters."""
    source = import_caffe(FIXTURES / "googlenet_deploy.prototxt")
    ours = report(cnnc.check(source.text))
    example = report(cnnc.check("examples/googlenet.cnn"))
    assert ours.total_params == example.total_params == 6_998_552
    assert ours.total_macs == example.total_macs
    assert "# 9 modules of the graph: inception_3a, inception_3b, inception_4a" in source.text
    assert "-> inception(64, 96, 128, 16, 32, 32) as inception_3a" in source.text
    assert "-> inception(384, 192, 384, 48, 128, 128) as inception_5b" in source.text
    assert "dropout(0.4) as drop_7x7_s1" in source.text


def test_weights_out_is_refused_for_files_without_weights(tmp_path, capsys):
    status, _, err = _cli(capsys, "import", FIXTURES / "alexnet_deploy.prototxt", "-o",
                          tmp_path / "a.cnn", "--weights-out", tmp_path / "a.npz")
    assert status == 2
    assert "holds the network only (its weights are in the .caffemodel" in err
    assert not (tmp_path / "a.cnn").exists() and not (tmp_path / "a.npz").exists()
