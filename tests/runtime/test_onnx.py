"""ONNX export: the checker accepts every example; ONNX Runtime computes what the NumPy
backend computes, op by op and attribute by attribute, at batch 1 and 3 from one file;
names, the symbolic batch and the parameters carry over; files are written atomically.

The comparisons run the exported graph in ONNX Runtime (CPUExecutionProvider) and the same
parameters in `Model` (NumPy, float32). Pooling in ceil mode is also run in ONNX's own
reference evaluator, because runtimes disagree on ONNX's `ceil_mode` and the exporter avoids
it: the graph must mean the same everywhere, not just in ONNX Runtime.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest

import cnnc
from cnnc.ops import Op
from cnnc.runtime.model import Model
from cnnc.ops.window import pool_out

onnx = pytest.importorskip("onnx")

from cnnc.runtime import onnx_export  # noqa: E402 - needs onnx only when called, but skip together
from cnnc.runtime import files  # noqa: E402
from cnnc.runtime.onnx_export import EMITTERS, ExportError, export, export_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p.stem for p in (ROOT / "examples").glob("*.cnn"))
# The 224x224 AlexNet and VGG-16 carry 61 and 138 million parameters; serialising and checking
# half a gigabyte takes many seconds, so they are checked with a smaller input and narrower
# hidden dense layers, which changes only sizes (the same layers, nodes and attributes).
REDUCED = {"alexnet": 64, "vgg16": 32}
# ONNX Runtime runs these (the others at a smaller input: same graph, less arithmetic).
ORT_EXAMPLES = {"lenet5": None, "ng_39x39": None, "nin_cifar10": None, "googlenet": 64,
                "resnet18": 64}
TOL = dict(rtol=1e-4, atol=1e-5)


def _source(stem: str, side: int | None = None) -> str:
    text = (ROOT / "examples" / f"{stem}.cnn").read_text()
    if side is not None:
        assert "[3, 224, 224]" in text
        text = text.replace("[3, 224, 224]", f"[3, {side}, {side}]")
        text = text.replace("dense(4096)", "dense(256)")
    return text


def _random_params(plan, seed=0) -> dict:
    """Parameters far from their defaults, so that every one of them matters: normal
    weights (scaled by fan-in), biases and running means, running variances in [0.5, 2]."""
    rng = np.random.default_rng(seed)
    shapes = dict(plan.params)
    shapes.update(plan.buffers)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("running_var"):
            value = rng.uniform(0.5, 2.0, shape)
        elif key.endswith(".weight") and len(shape) > 1:
            value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
        else:
            value = rng.standard_normal(shape)
        out[key] = value.astype(np.float32)
    return out


def _model(source, sizes=None, params="random") -> Model:
    model = Model(cnnc.compile(source, sizes).plan, backend="numpy", seed=0, dtype="float32")
    if params == "random":
        model.params = _random_params(model.plan)
    return model


def _session(proto_or_path):
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if isinstance(proto_or_path, onnx.ModelProto):
        proto_or_path = proto_or_path.SerializeToString()
    return ort.InferenceSession(proto_or_path, options, providers=["CPUExecutionProvider"])


def _inputs(plan, batch, seed=1, scale=1.0) -> dict:
    rng = np.random.default_rng(seed + batch)
    return {name: (scale * rng.standard_normal((batch,) + tuple(shape))).astype(np.float32)
            for name, shape in plan.inputs.items()}


def _outputs(model, xs) -> dict:
    y = model(xs)
    return y if isinstance(y, dict) else {next(iter(model.plan.outputs)): y}


def _assert_same(model, proto, batches=(1, 3), scale=1.0, tol=TOL):
    """ONNX Runtime and the NumPy backend agree on every output, at each batch size, with
    one session (the batch is symbolic). ``proto`` may be a written file's path."""
    session = _session(proto)
    names = [o.name for o in session.get_outputs()]
    assert names == list(model.plan.outputs)
    for batch in batches:
        xs = _inputs(model.plan, batch, scale=scale)
        theirs = dict(zip(names, session.run(None, xs)))
        for name, ours in _outputs(model, xs).items():
            assert theirs[name].shape == ours.shape, name
            np.testing.assert_allclose(theirs[name], ours, err_msg=name, **tol)


# ---- the examples ----------------------------------------------------------------------------

@pytest.mark.parametrize("stem", EXAMPLES)
def test_checker_accepts_every_example(stem):
    plan = cnnc.compile(_source(stem, REDUCED.get(stem))).plan
    shapes = dict(plan.params)
    shapes.update(plan.buffers)
    params = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    proto = export(plan, params)  # export runs check_model(full_check=True) itself
    onnx.checker.check_model(proto, full_check=True)
    assert {n.name for n in proto.graph.node} >= {s.name for s in plan.steps}


@pytest.mark.parametrize("stem", sorted(ORT_EXAMPLES))
def test_onnxruntime_matches_numpy_on_examples(stem, tmp_path):
    model = _model(_source(stem, ORT_EXAMPLES[stem]), params="default")
    path = tmp_path / f"{stem}.onnx"
    export_model(model, path)
    # default initialisation: outputs of order 0.01-1, hence an absolute floor below TOL's
    _assert_same(model, str(path), tol=dict(rtol=1e-4, atol=1e-6))


def test_every_op_has_an_emitter():
    assert set(EMITTERS) == set(Op)


def test_the_cli_knows_the_exporters_opsets():
    from cnnc.commands import export as command

    assert (command.DEFAULT_OPSET, command.MIN_OPSET) == (
        onnx_export.DEFAULT_OPSET, onnx_export.MIN_OPSET)


# ---- every op and attribute variant ----------------------------------------------------------

OP_MODELS = {
    # 'same' pads are asymmetric here: 10 -> 5 at stride 2 pads (0, 1); an even kernel
    # pads (1, 2); then rectangular, dilated, grouped, bias-free and strided variants
    "conv": """
        input x: [4, 10, 11]
        output y = x -> conv(6, 3, stride=2, pad=same) -> conv(6, 4, pad=same)
            -> conv(6, [3, 1], pad=[1, 0], dilation=2, groups=2, bias=false)
            -> conv(4, 3, stride=[2, 1], pad=valid, groups=2) -> conv(4, [1, 2], dilation=[1, 2])
    """,
    "maxpool": """
        input x: [3, 9, 10]
        a = x -> maxpool(3, stride=2, pad=1, ceil=true)
            -> maxpool([3, 2], stride=[2, 1], pad=[1, 0])
        b = x -> maxpool(2, stride=3, ceil=true) -> maxpool(2, stride=1, dilation=2, ceil=true)
        output y = a
        output z = b
        output w = x -> maxpool(3, stride=2, dilation=2, pad=1)
    """,
    # stride 3, dilation 2 on 4 columns: ceil mode's last window needs 2 columns past the
    # input, as many as the kernel, which ONNX Runtime refuses as MaxPool pads (so: Pad)
    "maxpool_wide_tail": """
        input x: [2, 4, 7]
        output y = x -> maxpool(2, stride=3, dilation=2, ceil=true)
    """,
    "avgpool": """
        input x: [3, 9, 10]
        output a = x -> avgpool(3, stride=2, pad=1, ceil=true)
        output b = x -> avgpool(3, stride=2, pad=1, ceil=true, count_pad=false)
        output c = x -> avgpool(2, stride=3, ceil=true)
        output d = x -> avgpool(3, stride=2, pad=1)
        output e = x -> avgpool([3, 2], stride=[2, 3], pad=[1, 0], ceil=true)
        output f = x -> avgpool([3, 2], stride=[2, 3], pad=[1, 1], ceil=true, count_pad=false)
    """,
    "global_pools": """
        input x: [5, 6, 7]
        output a = x -> global_avgpool -> flatten
        output b = x -> global_maxpool
    """,
    # odd sizes map to ONNX LRN; even sizes are written out (PyTorch's window)
    "lrn": """
        input x: [7, 4, 5]
        output a = x -> lrn(size=5, alpha=0.5, beta=0.75, k=2.0)
        output b = x -> lrn(size=4, alpha=0.7, beta=0.6, k=1.5)
        output c = x -> lrn(size=2, alpha=1.0, beta=1.0, k=1.0)
        output d = x -> lrn(size=1, alpha=0.9, beta=0.5, k=0.5)
        output e = x -> lrn
    """,
    "batchnorm": """
        input x: [4, 5, 6]
        output a = x -> batchnorm(eps=1e-3)
        output b = x -> flatten -> dense(8) -> batchnorm
    """,
    "activations": """
        input x: [3, 4, 5]
        output relu = x -> relu
        output sigmoid = x -> sigmoid
        output tanh = x -> tanh
        output selu = x -> selu
        output softplus = x -> softplus
        output silu = x -> silu
        output swish = x -> swish
        output swish_beta = x -> swish(beta=1.7)
        output leaky_relu = x -> leaky_relu
        output leaky_steep = x -> leaky_relu(alpha=1.5)
        output elu = x -> elu
        output elu_alpha = x -> elu(alpha=0.3)
        output prelu = x -> prelu
        output prelu_flat = x -> flatten -> prelu
        output softmax = x -> softmax
        output softmax_flat = x -> flatten -> softmax
    """,
    "maxout": """
        input x: [6, 3, 4]
        output a = x -> maxout(3)
        output b = x -> flatten -> dense(8) -> maxout(2)
        output c = x -> maxout(1)
    """,
    "dense_flatten_dropout": """
        input x: [2, 3, 3]
        output y = x -> flatten -> dropout(0.3) -> dense(5, bias=false) -> dense(4) -> dropout
    """,
    # several inputs and outputs: a 1-D input, n-ary add (an input twice), two outputs from
    # one layer, an output straight from an input's first layer
    "several_io": """
        input a: [3, 6, 6]
        input b: [3, 6, 6]
        input v: [5]
        s = add(a, b, a) -> conv(4, 3, pad=1) as mixed
        c = concat(s, a, b) -> conv(4, 1)
        t = add(c, s) -> relu
        output first = s
        output same = s
        output pair = add(a, b)
        output feats = concat(t, s) -> global_avgpool -> flatten
        output vec = v -> dense(3)
    """,
}


@pytest.mark.parametrize("name", sorted(OP_MODELS))
def test_onnxruntime_matches_numpy_per_op(name):
    model = _model(OP_MODELS[name])
    _assert_same(model, export_model(model, None), scale=3.0)


def test_conv_pads_in_onnx_order():
    """'same' at stride 2 pads 10 rows (0, 1) and 11 columns (1, 1); an even kernel then pads
    (1, 2) both ways. ONNX lists begins then ends: [top, left, bottom, right]."""
    proto = export_model(_model(OP_MODELS["conv"]), None)
    pads = {}
    for node in proto.graph.node:
        for a in node.attribute:
            if a.name == "pads":
                pads[node.name] = list(a.ints)
    assert pads["y.conv1"] == [0, 1, 1, 1]
    assert pads["y.conv2"] == [1, 1, 2, 2]
    assert pads["y.conv3"] == [1, 0, 1, 0]


def test_activations_far_out():
    """Inputs up to about +-100: no overflow or cancellation on either side."""
    model = _model(OP_MODELS["activations"])
    _assert_same(model, export_model(model, None), scale=30.0)


@pytest.mark.parametrize("opset", [17, 18, 21])
def test_opsets(opset):
    """Opset 18 moved the Reduce* axes from an attribute to an input (maxout uses one)."""
    model = _model(OP_MODELS["maxout"])
    proto = export_model(model, None, opset=opset)
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", opset)]
    _assert_same(model, proto)


def test_fused_activations():
    """A plan whose conv and dense carry an activation epilogue (as a fusing pass would
    leave them) exports the activation after the Conv or Gemm."""
    model = _model("""
        input x: [3, 8, 8]
        output y = x -> conv(4, 3) -> flatten -> dense(5) -> dense(3)
    """)
    acts = {"y.conv1": "relu", "y.dense1": ("swish", {"beta": 1.5}),
            "y.dense2": ("leaky_relu", {"alpha": 0.2})}
    for step in model.plan.steps:
        if step.name in acts:
            step.attrs["act"] = acts[step.name]
    proto = export_model(model, None)
    assert {"y.conv1/conv", "y.dense1/gemm", "y.dense2/gemm"} <= {n.name for n in proto.graph.node}
    _assert_same(model, proto, scale=3.0)


def _pool_grid():
    """Every pooling layer over a grid of sizes, kernels, strides, pads and dilations that
    the checker accepts, in ceil mode (floor mode is the plain case)."""
    layers = []
    for n, k, s, p, d in itertools.product((3, 4, 5, 6, 7), (1, 2, 3, 4), (1, 2, 3), (0, 1, 2),
                                           (1, 2)):
        if p > k // 2 or pool_out(n, k, s, p, d, True) < 1:
            continue
        layers.append((n, f"maxpool({k}, stride={s}, pad={p}, dilation={d}, ceil=true)"))
        if d == 1:
            for count in ("true", "false"):
                layers.append((n, f"avgpool({k}, stride={s}, pad={p}, ceil=true, "
                                  f"count_pad={count})"))
    return layers


def test_ceil_mode_pools_mean_the_same_everywhere():
    """All ceil-mode pools of the grid as outputs of one network (inputs [1, n, n + 1]):
    ONNX Runtime and ONNX's reference evaluator both agree with the NumPy kernels."""
    from onnx.reference import ReferenceEvaluator

    layers = _pool_grid()
    sizes = sorted({n for n, _ in layers})
    lines = [f"input x{n}: [1, {n}, {n + 1}]" for n in sizes]
    lines += [f"output o{i} = x{n} -> {layer}" for i, (n, layer) in enumerate(layers)]
    model = _model("\n".join(lines))
    proto = export_model(model, None)
    _assert_same(model, proto, batches=(2,))
    xs = _inputs(model.plan, 2)
    ours = _outputs(model, xs)
    theirs = ReferenceEvaluator(proto).run(None, xs)
    for (name, want), got in zip(ours.items(), theirs):
        np.testing.assert_allclose(got, want, err_msg=f"{name}: {layers[int(name[1:])]}", **TOL)


def test_even_lrn_in_the_reference_evaluator():
    """The written-out even-size LRN (outputs b and c). The odd sizes are ONNX's own LRN,
    which the reference evaluator of onnx 1.23 gets wrong: its loop runs over the batch
    axis, not the channels (onnx/reference/ops/op_lrn.py), so only ONNX Runtime checks it."""
    from onnx.reference import ReferenceEvaluator

    model = _model(OP_MODELS["lrn"])
    proto = export_model(model, None)
    xs = _inputs(model.plan, 2)
    theirs = ReferenceEvaluator(proto).run(["b", "c"], xs)
    ours = _outputs(model, xs)
    for name, got in zip(["b", "c"], theirs):
        np.testing.assert_allclose(got, ours[name], err_msg=name, **TOL)


# ---- names, shapes and parameters ------------------------------------------------------------

def test_names_batch_and_parameters_carry_over():
    model = _model(_source("googlenet"), params="default")
    plan = model.plan
    proto = export_model(model, None)
    graph = proto.graph
    assert graph.name == "googlenet"
    assert proto.producer_name == "cnnc"
    assert {n.name for n in graph.node} >= {s.name for s in plan.steps}
    assert len({n.name for n in graph.node}) == len(graph.node)  # node names are unique

    def dims(value_info):
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    assert [(i.name, dims(i)) for i in graph.input] == [("image", ["N", 3, 224, 224])]
    assert [(o.name, dims(o)) for o in graph.output] == [("logits", ["N", 1000])]
    stored = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    for key, value in model.state().items():
        assert stored[key].dtype == np.float32
        np.testing.assert_array_equal(stored[key], value)
    helpers = set(stored) - set(model.state())
    assert all("/" in name for name in helpers)
    assert "stem.conv1.weight" in stored and stored["stem.conv1.weight"].shape == (64, 3, 7, 7)


def test_source_lines_become_node_doc_strings():
    proto = export_model(_model("input x: [3, 4, 4]\n\noutput y = x -> relu"), None)
    assert proto.graph.node[0].doc_string == "line 3, column 17"


def test_batchnorm_momentum_in_onnx_convention():
    proto = export_model(_model("input x: [3, 4, 4]\noutput y = x -> batchnorm(momentum=0.2)"),
                         None)
    node = next(n for n in proto.graph.node if n.op_type == "BatchNormalization")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["momentum"] == pytest.approx(0.8)  # ONNX keeps 0.8 of the old statistic


def test_float64_parameters_are_stored_as_float32():
    model = Model(cnnc.compile("input x: [3, 4, 4]\noutput y = x -> conv(2, 3)").plan,
                  backend="numpy", dtype="float64")
    proto = export_model(model, None)
    assert {t.data_type for t in proto.graph.initializer} == {onnx.TensorProto.FLOAT}


# ---- bad arguments -----------------------------------------------------------------------------

SMALL = "input x: [3, 6, 6]\noutput y = x -> conv(2, 3) -> flatten -> dense(4)"


def test_parameter_mismatch_lists_every_entry():
    plan = cnnc.compile(SMALL).plan
    params = Model(plan, backend="numpy").state()
    del params["y.conv1.bias"]
    params["y.dense1.weight"] = np.zeros((4, 5), np.float32)
    params["y.extra"] = np.zeros(3)
    with pytest.raises(ExportError) as err:
        export(plan, params)
    text = str(err.value)
    assert "missing y.conv1.bias [2]" in text
    assert "unexpected y.extra [3]" in text
    assert "y.dense1.weight has shape [4, 5], expected [4, 32]" in text


@pytest.mark.parametrize("opset", [16, 10_000, True, "17", 17.0])
def test_bad_opsets_are_refused(opset):
    model = _model(SMALL)
    with pytest.raises(ExportError, match="opset must be"):
        export_model(model, None, opset=opset)


# ---- writing -----------------------------------------------------------------------------------

def test_writes_a_loadable_file_and_nothing_else(tmp_path):
    model = _model(SMALL)
    path = tmp_path / "small.onnx"
    proto = export_model(model, path)
    assert os.listdir(tmp_path) == ["small.onnx"]
    assert onnx.load(str(path)) == proto
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # the usual mode, not mkstemp's 0600


def test_a_failed_export_leaves_the_old_file(tmp_path):
    path = tmp_path / "small.onnx"
    path.write_bytes(b"old")
    plan = cnnc.compile(SMALL).plan
    with pytest.raises(ExportError):
        export(plan, {}, path)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["small.onnx"]


def test_a_failure_while_moving_into_place_removes_the_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "small.onnx"
    path.write_bytes(b"old")
    model = _model(SMALL)

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", refuse)
    with pytest.raises(OSError, match="No space"):
        export_model(model, path)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["small.onnx"]


def test_a_missing_folder_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        export_model(_model(SMALL), tmp_path / "no" / "small.onnx")
    assert os.listdir(tmp_path) == []
