"""Weights from anywhere: `Model.load` reads cnnc's .npz, .safetensors and PyTorch
checkpoints, by name or by structure; `Model.save` writes them by extension; bad files are
refused in words before anything is allocated, and the model keeps its weights."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import cnnc
from cnnc.runtime.model import WeightFileError

SMALL = """\
network small
input image: [3, 8, 8]
output logits = image -> conv(4, 3, pad=1) -> batchnorm -> relu -> maxpool(2) -> flatten
    -> dense(5)
"""


@pytest.fixture()
def model():
    return cnnc.compile(SMALL).build(backend="numpy", seed=1)


def _x():
    return np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)


def _same(a, b):
    for key in a.params:
        np.testing.assert_array_equal(a.state()[key], b.state()[key])


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_save_and_load_by_extension(model, tmp_path, suffix):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    path = tmp_path / f"w{suffix}"
    model.save(path)
    other = cnnc.compile(SMALL).build(backend="numpy", seed=2)
    mapping = other.load(path)
    assert mapping.how == "name"
    _same(model, other)
    if suffix == ".safetensors":
        assert path.read_bytes()[8:9] == b"{"  # the safetensors header, not a zip


def test_safetensors_written_by_cnnc_reads_with_the_safetensors_package(model, tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    model.save(tmp_path / "w.safetensors")
    arrays = st.load_file(str(tmp_path / "w.safetensors"))
    assert sorted(arrays) == sorted(model.state())


def test_pytorch_checkpoint_by_name(model, tmp_path):
    torch = pytest.importorskip("torch")
    state = {k: torch.from_numpy(v) for k, v in model.state().items()}
    state["logits.batchnorm1.num_batches_tracked"] = torch.tensor(7)
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "w.pt")
    other = cnnc.compile(SMALL).build(backend="numpy", seed=2)
    mapping = other.load(tmp_path / "w.pt")
    assert mapping.how == "name"
    _same(model, other)


def test_pytorch_checkpoint_with_code_is_refused(model, tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"state_dict": torch.nn.Linear(2, 2)}, tmp_path / "w.pt")
    before = model.state()
    with pytest.raises(WeightFileError) as info:
        model.load(tmp_path / "w.pt")
    assert "holds Python objects other than tensors" in str(info.value)
    _same_state(model, before)


def _same_state(model, state):
    for key, value in state.items():
        np.testing.assert_array_equal(model.state()[key], value)


def test_by_structure_when_names_differ(model, tmp_path):
    """A PyTorch-style file: other names, the same layers in the same order."""
    theirs = {}
    renames = {"logits.conv1": "features.0", "logits.batchnorm1": "features.1",
               "logits.dense1": "classifier"}
    for key, value in model.state().items():
        owner, _, leaf = key.rpartition(".")
        theirs[f"{renames[owner]}.{leaf}"] = value
    np.savez(tmp_path / "theirs.npz", **theirs)
    other = cnnc.compile(SMALL).build(backend="numpy", seed=2)
    mapping = other.load(tmp_path / "theirs.npz")
    assert mapping.how == "structure"
    assert ("logits.conv1.weight", "features.0.weight", (4, 3, 3, 3)) in mapping.pairs
    text = mapping.describe()
    assert text.splitlines()[0] == "weights matched by structure: 8 arrays"
    assert "logits.dense1.weight" in text and "<- classifier.weight [5, 64]" in text
    np.testing.assert_array_equal(model(_x()), other(_x()))


def test_by_structure_refusal_names_the_first_disagreement(model, tmp_path):
    state = model.state()
    theirs = {"a.weight": state["logits.conv1.weight"], "a.bias": state["logits.conv1.bias"],
              "b.weight": np.zeros(7, np.float32), "b.bias": np.zeros(7, np.float32),
              "b.running_mean": np.zeros(7, np.float32),
              "b.running_var": np.ones(7, np.float32)}
    np.savez(tmp_path / "theirs.npz", **theirs)
    before = model.state()
    with pytest.raises(WeightFileError) as info:
        model.load(tmp_path / "theirs.npz", by="structure")
    message = str(info.value)
    assert message.startswith(f"weight file {tmp_path / 'theirs.npz'} does not fit network "
                              "small by structure: layer 2 with parameters, "
                              "`logits.batchnorm1` (batchnorm: weight [4], bias [4], "
                              "running_mean [4], running_var [4]), meets `b` in the file "
                              "(weight [7], bias [7], running_mean [7], running_var [7])")
    _same_state(model, before)


def test_torchvision_resnet18_loads_into_the_example_by_structure(tmp_path):
    """A torchvision ResNet-18 checkpoint (random init) loads into examples/resnet18.cnn
    by structure, from a .pt and from a .safetensors (whose keys are stored sorted), and
    the outputs match torchvision's."""
    torch = pytest.importorskip("torch")
    from examples_support import torchvision_models

    models = torchvision_models()
    torch.manual_seed(0)
    reference = models.resnet18().eval()
    with torch.no_grad():  # batchnorm statistics that are not the identity
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pt")
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        want = reference(torch.from_numpy(x)).numpy()
    net = cnnc.compile("examples/resnet18.cnn")
    model = net.build(backend="numpy")
    mapping = model.load(tmp_path / "resnet18.pt")
    assert mapping.how == "structure"
    assert mapping.pairs[0] == ("stem.conv1.weight", "conv1.weight", (64, 3, 7, 7))
    assert ("layer2.down1.short.conv1.weight", "layer2.0.downsample.0.weight",
            (128, 64, 1, 1)) in mapping.pairs
    assert mapping.ignored  # the num_batches_tracked counters
    np.testing.assert_allclose(model(x), want, rtol=1e-4, atol=1e-4)
    safetensors_torch = pytest.importorskip("safetensors.torch")
    safetensors_torch.save_file(reference.state_dict(), str(tmp_path / "resnet18.safetensors"))
    again = net.build(backend="numpy", seed=5)
    again.load(tmp_path / "resnet18.safetensors")
    np.testing.assert_allclose(again(x), want, rtol=1e-4, atol=1e-4)


def _safetensors(header: dict, data: bytes, length: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


@pytest.mark.parametrize("name, content, words", [
    ("short", b"\x05\x00\x00", "shorter than its 8-byte header length"),
    ("huge header", _safetensors({}, b"", length=1 << 40), "header length"),
    ("not json", struct.pack("<Q", 3) + b"{x}", "its header is not JSON"),
    ("beyond the data", _safetensors(
        {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8),
     "ends at byte 16 of the data, but the file holds only 8"),
    ("size mismatch", _safetensors(
        {"w": {"dtype": "F32", "shape": [1000000], "data_offsets": [0, 8]}}, b"\0" * 8),
     "but its offsets span 8 bytes"),
    ("overlap", _safetensors(
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
         "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12),
     "overlap in the data"),
    ("dtype", _safetensors(
        {"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8),
     "has dtype 'C64'"),
])
def test_bad_safetensors_files_are_refused_in_words(model, tmp_path, name, content, words):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    before = model.state()
    with pytest.raises(WeightFileError) as info:
        model.load(path)
    assert str(info.value).startswith(f"cannot read weight file {path}: ")
    assert words in str(info.value)
    _same_state(model, before)


def test_bfloat16_safetensors_read_exactly(tmp_path):
    from cnnc.runtime.files import SafetensorsFile

    values = np.array([1.0, -2.5, 0.15625], np.float32)
    raw = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    path = tmp_path / "b.safetensors"
    path.write_bytes(_safetensors(
        {"w": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}, raw))
    with SafetensorsFile(path) as f:
        assert f.members["w"].dtype == np.float32
        np.testing.assert_array_equal(f.read()["w"], values)


def test_not_a_weight_file(model, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(WeightFileError, match="not a weight file cnnc reads"):
        model.load(path)


def test_cli_export_takes_a_pytorch_checkpoint_by_structure(tmp_path, capsys):
    """`cnnc export --weights lenet.pt --show-mapping`: a plain PyTorch LeNet's state_dict,
    other names, moved in by structure; the ONNX file computes what PyTorch computes."""
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    from cnnc.cli import main

    torch.manual_seed(0)
    nn = torch.nn
    lenet = nn.Sequential(nn.Conv2d(1, 6, 5), nn.Tanh(), nn.AvgPool2d(2),
                          nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2),
                          nn.Conv2d(16, 120, 5), nn.Tanh(), nn.Flatten(),
                          nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, 10)).eval()
    torch.save(lenet.state_dict(), tmp_path / "lenet.pt")
    status = main(["export", "examples/lenet5.cnn", "-o", str(tmp_path / "l.onnx"),
                   "--weights", str(tmp_path / "lenet.pt"), "--show-mapping"])
    _, err = capsys.readouterr()
    assert status == 0, err
    assert err.startswith("weights matched by structure: 10 arrays\n"
                          "  features.c1.weight <- 0.weight [6, 1, 5, 5]\n")
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "l.onnx"),
                                   providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = lenet(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {"digit": x})[0], want, rtol=1e-4,
                               atol=1e-5)
