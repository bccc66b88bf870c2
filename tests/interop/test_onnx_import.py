"""ONNX in: `cnnc import model.onnx` gives back checked, readable `.cnn` source and the
weights; ops cnnc lacks are refused together; the round trip .cnn -> ONNX -> .cnn gives the
same network; torchvision models exported by `torch.onnx.export` import and agree with ONNX
Runtime."""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest

import cnnc
from cnnc.cli import main
from cnnc.compiler.summary import report

onnx = pytest.importorskip("onnx")

from cnnc.interop.onnx_import import import_model, import_onnx, module_path  # noqa: E402
from cnnc.interop.source import ImportProblem  # noqa: E402

# Every layer kind the importer maps, in one network that cnnc exports exactly. (Not dropout:
# cnnc exports it as an Identity node, the inference graph, so it does not come back.)
MIXED = """\
network mixed
input image: [3, 16, 16]

block branch(c) {
    a = in -> conv(c, 1) -> batchnorm(eps=0.001) -> relu
    b = in -> conv(c, [1, 3], pad=[0, 1], bias=false) -> batchnorm(eps=0.001) -> leaky_relu(0.2)
    return concat(a, b)
}

stem = image -> conv(8, 3, stride=2, pad=1, groups=1) -> batchnorm(eps=0.001) -> relu6
    -> branch(4) -> branch(4)
pooled = stem -> avgpool(3, stride=1, pad=1, count_pad=false) -> maxpool(2)
gate = pooled -> global_avgpool -> conv(8, 1) -> sigmoid
mixed = mul(pooled, gate) -> conv(8, 3, pad=1, groups=4) -> silu -> elu -> lrn(size=3)
output logits = add(mixed, pooled) -> flatten -> dense(10) -> softmax
"""


def _cli(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


def _macs(net) -> int:
    return int(report(net).total_macs)


def _params(net) -> int:
    return int(report(net).total_params)


def _shapes(plan) -> list:
    return [(step.op, tuple(step.shape)) for step in plan.steps]


def test_round_trip_gives_the_same_network(tmp_path):
    """.cnn -> ONNX (cnnc's export) -> .cnn: the same parameters, MACs, shapes and outputs."""
    first = cnnc.compile(MIXED)
    model = first.build(backend="numpy", seed=3)
    proto = model.export(tmp_path / "mixed.onnx")
    source = import_model(proto, "mixed")
    second = cnnc.compile(source.text)
    assert _params(second) == _params(first)
    assert _macs(second) == _macs(first)
    assert _shapes(second.plan) == _shapes(first.plan)
    again = second.build(backend="numpy")
    again_arrays = {**second.plan.params, **second.plan.buffers}
    assert {k: tuple(v.shape) for k, v in source.weights.items()} == again_arrays
    np.savez(tmp_path / "w.npz", **source.weights)
    assert again.load(tmp_path / "w.npz").how == "name"
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(again(x), model(x), rtol=1e-5, atol=1e-6)


def test_round_trip_of_flat_source_is_the_same_text(tmp_path):
    """Source the importer wrote (without blocks), exported and imported again, comes back
    line for line: the layer names survive the trip."""
    model = cnnc.compile(MIXED).build(backend="numpy")
    once = import_model(model.export(), "mixed", blocks=False)
    net = cnnc.compile(once.text).build(backend="numpy")
    np.savez(tmp_path / "w.npz", **once.weights)
    net.load(tmp_path / "w.npz")
    twice = import_model(net.export(), "mixed", blocks=False)
    body = [line for line in once.text.splitlines() if not line.startswith("#")]
    assert [line for line in twice.text.splitlines() if not line.startswith("#")] == body


def test_readable_source_with_names_from_the_graph():
    """Layer names come from the nodes' scoped names, and a repeated float becomes a let."""
    source = import_model(cnnc.compile(MIXED).build(backend="numpy").export(), "mixed")
    text = source.text
    assert text.startswith("# mixed: imported from")
    assert "let eps = 0.001" in text
    assert "batchnorm(eps=eps)" in text
    assert "input image: [3, 16, 16]" in text
    assert "output logits = " in text
    assert "conv(4, [1, 3], pad=[0, 1], bias=false)" in text


def test_module_paths_of_pytorch_node_names():
    assert module_path("/layer1/layer1.0/conv1/Conv") == "layer1.0.conv1"
    assert module_path("/features/features.1/block/block.1/fc1/Conv") == \
        "features.1.block.1.fc1"
    assert module_path("/fc/Gemm") == "fc"
    assert module_path("stem.conv1") == "stem.conv1"  # cnnc's export
    assert module_path("Conv_12:bad") == ""


def _graph(nodes, inits, in_shape=(1, 3, 8, 8), out="y"):
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_ops_cnnc_lacks_are_refused_in_one_message():
    from onnx import helper

    w = np.zeros((4, 3, 3, 3))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="/stem/conv/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Resize", ["c", "", "scales"], ["r"], name="/up/Resize"),
        helper.make_node("Conv", ["r", "w2"], ["d"], name="/head/Conv", pads=[0, 0, 1, 1]),
        helper.make_node("Tile", ["d", "reps"], ["y"], name="/tile/Tile"),
    ]
    model = _graph(nodes, {"w": w, "w2": np.zeros((4, 4, 3, 3)), "scales": [1, 1, 2, 2],
                           "reps": [1, 1, 1, 1]})
    with pytest.raises(ImportProblem) as info:
        import_model(model, "bad", "bad.onnx")
    assert str(info.value) == (
        "bad.onnx uses 3 nodes cnnc cannot express:\n"
        "  Resize (node /up/Resize)\n"
        "  Conv (node /head/Conv): asymmetric padding [0, 0, 1, 1]; cnnc pads both sides of "
        "an axis alike\n"
        "  Tile (node /tile/Tile)")


def test_patterns_become_one_layer():
    """x * Sigmoid(x) -> silu, Clip(0, 6) -> relu6, MatMul + Add -> dense."""
    from onnx import helper

    nodes = [
        helper.make_node("Sigmoid", ["x"], ["s"], name="/act/Sigmoid"),
        helper.make_node("Mul", ["x", "s"], ["m"], name="/act/Mul"),
        helper.make_node("Clip", ["m", "lo", "hi"], ["c"], name="/clip/Clip"),
        helper.make_node("Flatten", ["c"], ["f"], name="/flat/Flatten"),
        helper.make_node("MatMul", ["f", "w"], ["mm"], name="/fc/MatMul"),
        helper.make_node("Add", ["mm", "b"], ["y"], name="/fc/Add"),
    ]
    model = _graph(nodes, {"lo": 0.0, "hi": 6.0, "w": np.ones((192, 5)), "b": np.arange(5)})
    source = import_model(model, "patterns")
    assert "silu as act" in source.text and "relu6 as clip" in source.text
    assert "dense(5) as fc" in source.text
    net = cnnc.compile(source.text)
    assert [step.op.value for step in net.plan.steps] == [
        "activation", "activation", "flatten", "dense"]
    np.testing.assert_array_equal(source.weights["y.fc.weight"], np.ones((5, 192)))


def test_cli_import_writes_checked_source_and_weights(tmp_path, capsys):
    model = cnnc.compile(MIXED).build(backend="numpy")
    model.export(tmp_path / "m.onnx")
    status, _, err = _cli(capsys, "import", tmp_path / "m.onnx", "-o", tmp_path / "m.cnn",
                          "--weights-out", tmp_path / "m.safetensors")
    assert status == 0, err
    assert err.startswith(f"cnnc: wrote {tmp_path / 'm.cnn'} and {tmp_path / 'm.safetensors'}"
                          ": network mixed, ")
    status, _, err = _cli(capsys, "check", tmp_path / "m.cnn")
    assert status == 0, err
    back = cnnc.compile(tmp_path / "m.cnn").build(backend="numpy")
    back.load(tmp_path / "m.safetensors")
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(back(x), model(x), rtol=1e-5, atol=1e-6)


def test_cli_refusals_write_nothing(tmp_path, capsys):
    from onnx import helper

    bad = _graph([helper.make_node("Tile", ["x", "reps"], ["y"], name="/t/Tile")],
                 {"reps": [1, 1, 1, 1]})
    onnx.save(bad, tmp_path / "bad.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07not a protobuf at all" * 3)
    before = sorted(os.listdir(tmp_path))
    out = tmp_path / "m.cnn"
    status, _, err = _cli(capsys, "import", tmp_path / "bad.onnx", "-o", out,
                          "--weights-out", tmp_path / "w.npz")
    assert status == 1
    assert err == (f"cnnc: error: {tmp_path / 'bad.onnx'} uses 1 node cnnc cannot express:\n"
                   "  Tile (node /t/Tile)\n")
    status, _, err = _cli(capsys, "import", tmp_path / "junk.onnx", "-o", out)
    assert status == 2 and "is not an ONNX model" in err
    status, _, err = _cli(capsys, "import", tmp_path / "none.onnx", "-o", out)
    assert status == 2 and "No such file or directory" in err
    status, _, err = _cli(capsys, "import", tmp_path / "bad.txt", "-o", out)
    assert status == 2 and "give --from onnx|caffe|darknet" in err
    assert sorted(os.listdir(tmp_path)) == before


# ---- torchvision models exported by torch.onnx.export ----------------------------------------

TORCHVISION = ["mobilenet_v2", "resnet50", "efficientnet_b0", "densenet121", "inception_v3"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> path of the ONNX file, exported once per test session."""
    folder = tmp_path_factory.mktemp("onnx")
    cache = {}

    def export(name):
        if name not in cache:
            cache[name] = _export(name, folder)
        return cache[name]

    return export


def _export(name: str, folder):
    torch = pytest.importorskip("torch")
    from examples_support import torchvision_models

    models = torchvision_models()
    torch.manual_seed(0)
    model = getattr(models, name)().eval()
    with torch.no_grad():  # batchnorm that is not the identity, so outputs have a scale
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.8, 1.2)
                m.bias.uniform_(-0.1, 0.1)
    size = 299 if name == "inception_v3" else 224
    path = folder / f"{name}.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notes
            torch.onnx.export(model, torch.randn(1, 3, size, size), str(path), dynamo=False,
                              opset_version=17, input_names=["image"],
                              output_names=["logits"],
                              dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}})
    except Exception as err:  # an exporter this torch does not have
        pytest.skip(f"torch.onnx.export fails here: {type(err).__name__}: {err}")
    return path, size


def _onnx_figures(proto):
    """Trainable parameters (the initializers that conv, gemm and batchnorm read, without
    batchnorm's running statistics) and MACs (conv and gemm) of an ONNX graph, from its
    inferred shapes: the ONNX file's own account."""
    from onnx import numpy_helper, shape_inference

    inferred = shape_inference.infer_shapes(proto)
    g = inferred.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    alias = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity"}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(g.value_info) + list(g.output)}
    params = macs = 0
    for node in g.node:
        weights = [alias.get(t, t) for t in node.input[1:] if t]
        if node.op_type == "BatchNormalization":
            weights = weights[:2]  # scale and bias; the running statistics are buffers
        if node.op_type in ("Conv", "Gemm", "BatchNormalization"):
            params += sum(inits[t].size for t in weights if t in inits)
        if node.op_type == "Conv":
            w = inits[alias.get(node.input[1], node.input[1])]
            out = shapes[node.output[0]]
            macs += math.prod(out[1:]) * math.prod(w.shape[1:])
        elif node.op_type == "Gemm":
            w = inits[alias.get(node.input[1], node.input[1])]
            macs += w.size
    return params, macs


@pytest.mark.torch
@pytest.mark.parametrize("name", [
    pytest.param(n, marks=() if n == "mobilenet_v2" else pytest.mark.slow)
    for n in TORCHVISION])
def test_torchvision_models_import_and_agree_with_onnx_runtime(name, exported, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path, size = exported(name)
    source = import_onnx(path)
    net = cnnc.check(source.text)
    assert net.ok and not net.diagnostics, net.render(net.diagnostics)
    proto = onnx.load(str(path))
    params, macs = _onnx_figures(proto)
    assert _params(net) == params
    assert _macs(net) == macs
    model = cnnc.compile(source.text).build(backend="numpy")
    np.savez(tmp_path / "w.npz", **source.weights)
    model.load(tmp_path / "w.npz")
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = session.run(None, {"image": x})[0]
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(model(x), want, rtol=0, atol=1e-4 * scale)


def test_repeated_modules_become_blocks(tmp_path):
    """examples/resnet18.cnn through ONNX: its `basic` and `down` blocks come back as blocks
    with the channel count as their parameter, calling blocks for the parts they share
    (`body`, `short`), and stages 2 to 4 as a block calling them; the network is the same."""
    first = cnnc.compile("examples/resnet18.cnn")
    model = first.build(backend="numpy", seed=2)
    source = import_model(model.export(), "resnet18")
    text = source.text
    assert "block body(c, stride) {" in text
    assert ("block basic(c) {\n"
            "    body = in -> body(c, 1) as body\n"
            "    return add(body, in) -> relu as relu1\n"
            "}") in text
    assert ("block down(c) {\n"
            "    body = in -> body(c, 2) as body\n"
            "    short = in -> short(c) as short\n"
            "    return add(body, short) -> relu as relu1\n"
            "}") in text
    assert "layer1 = stem -> basic(64) as basic1 -> basic(64) as basic2" in text
    assert "-> layer(128) as layer2 -> layer(256) as layer3" in text
    second = cnnc.compile(text)
    assert _params(second) == _params(first)
    assert _macs(second) == _macs(first)
    assert _shapes(second.plan) == _shapes(first.plan)
    np.savez(tmp_path / "w.npz", **source.weights)
    again = second.build(backend="numpy")
    again.load(tmp_path / "w.npz", by="name")
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    np.testing.assert_allclose(again(x), model(x), rtol=1e-4, atol=1e-5)


def test_cli_import_json_and_standard_output(tmp_path, capsys):
    import json

    cnnc.compile(MIXED).build(backend="numpy").export(tmp_path / "m.onnx")
    status, out, err = _cli(capsys, "import", tmp_path / "m.onnx", "-o", tmp_path / "m.cnn",
                            "--format", "json", "--no-blocks")
    assert status == 0, err
    report_ = json.loads(out)
    assert report_["network"] == "mixed" and report_["weights"] is None
    assert report_["parameters"] == _params(cnnc.compile(MIXED))
    assert "block " not in (tmp_path / "m.cnn").read_text()
    status, out, err = _cli(capsys, "import", tmp_path / "m.onnx", "-o", "-", "-q")
    assert status == 0 and err == ""
    assert out.startswith("# mixed: imported from m.onnx")


def test_external_data_outside_the_model_folder_is_refused(tmp_path, capsys):
    """An ONNX file whose weights live in a side file outside its own folder (../secret) is
    refused, with onnx's own check of the path, before anything is read or written."""
    from onnx import TensorProto, numpy_helper

    w = numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float32), "w")
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    entry = w.external_data.add()
    entry.key, entry.value = "location", "../secret.bin"
    model = _graph([onnx.helper.make_node("Conv", ["x", "w"], ["y"], name="/c/Conv")], {})
    model.graph.initializer.append(w)
    (tmp_path / "sub").mkdir()
    onnx.save(model, tmp_path / "sub" / "m.onnx")
    (tmp_path / "secret.bin").write_bytes(b"\0" * 432)
    status, _, err = _cli(capsys, "import", tmp_path / "sub" / "m.onnx", "-o",
                          tmp_path / "m.cnn")
    assert status == 2
    assert "cannot read the weights" in err and "points outside the directory" in err
    assert not (tmp_path / "m.cnn").exists()
