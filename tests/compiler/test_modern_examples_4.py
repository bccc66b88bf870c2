"""The 1-D and 3-D examples against their published figures and against PyTorch.

M5 (examples/m5.cnn; Dai et al. 2017, raw waveforms, [1, 8000] at 8 kHz, 35 Speech Commands
classes) and C3D (examples/c3d.cnn; Tran et al. 2015, [3, 16, 112, 112] clips, 487 Sports-1M
classes). Each checks with no diagnostics, and its parameter and MAC totals are counted
three ways: by cnnc, by a sum over the paper's layer table written out below, and by a
transcription of the network in plain `torch.nn` (parameters with `numel`, MACs with forward
hooks). Neither network is in torchvision, so the transcription is the PyTorch reference:
seeded random weights are moved into the cnnc model by structure (the layers with parameters,
in order, against Conv1d/Conv3d, BatchNorm1d and Linear, with kernel, stride, padding and
pooling checked on the way) and the outputs compared. `cnnc run` is exercised end to end on
M5 through `cnnc.cli.main`, with .npy files in a temporary folder.
"""

from pathlib import Path

import numpy as np
import pytest

import cnnc
from cnnc.cli import main as cli_main
from cnnc.compiler.summary import report
from examples_support import weighted_depth

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
M5 = EXAMPLES / "m5.cnn"
C3D = EXAMPLES / "c3d.cnn"

# ---- M5 -------------------------------------------------------------------------------------

M5_LENGTH = 8000
M5_CLASSES = 35
# the paper's Table 1 for M5: (channels, kernel, stride) of each convolution, each followed
# by batchnorm, ReLU and a 4-wide max pool. Padding is the example's choice ("same"): 38 for
# the first (8000 / 4 = 2000 out), 1 for the 3-wide ones; the pools round up.
M5_TABLE = [(128, 80, 4, 38), (128, 3, 1, 1), (256, 3, 1, 1), (512, 3, 1, 1)]
M5_PARAMS = 571_939       # the paper's 0.5M is with 10 classes: 571,939 - 25 * 513 = 559,114
M5_MACS = 69_944_832
M5_LENGTHS = [2000, 500, 125, 32, 8]  # after the first convolution, then after each pool


def m5_table_totals(classes=M5_CLASSES, length=M5_LENGTH):
    params = macs = 0
    cin, lengths = 1, []
    for cout, k, s, p in M5_TABLE:
        length = (length + 2 * p - k) // s + 1
        lengths.append(length)
        params += cout * cin * k + cout + 2 * cout  # weight, bias, batchnorm's weight and bias
        macs += length * cout * cin * k
        length = -(-(length - 4) // 4) + 1            # maxpool1d(4, ceil=true)
        cin = cout
    lengths.append(length)
    params += cin * classes + classes
    macs += cin * classes
    return params, macs, lengths


def m5_transcription(classes=M5_CLASSES):
    """M5 in plain torch.nn, the layout of the PyTorch tutorial's `M5` class with the paper's
    widths and the example's padding and ceil-mode pools."""
    nn = pytest.importorskip("torch.nn")
    import torch

    class M5Net(nn.Module):
        def __init__(self):
            super().__init__()
            layers, cin = [], 1
            for cout, k, s, p in M5_TABLE:
                layers += [nn.Conv1d(cin, cout, k, stride=s, padding=p), nn.BatchNorm1d(cout),
                           nn.ReLU(), nn.MaxPool1d(4, ceil_mode=True)]
                cin = cout
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(cin, classes)

        def forward(self, x):
            x = self.features(x)
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool1d(x, 1), 1))

    return M5Net()


# ---- C3D ------------------------------------------------------------------------------------

C3D_CLASSES = 487
# the paper's Figure 3: convolution widths of each group; all 3x3x3, stride 1, pad 1
C3D_GROUPS = [[64], [128], [256, 256], [512, 512], [512, 512]]
C3D_POOLS = [((1, 2, 2), (0, 0, 0)), ((2, 2, 2), (0, 0, 0)), ((2, 2, 2), (0, 0, 0)),
             ((2, 2, 2), (0, 0, 0)), ((2, 2, 2), (0, 1, 1))]
C3D_PARAMS = 79_991_015
C3D_PARAMS_101 = 78_409_573  # the "about 78 M" usually quoted: fc8 to UCF101's 101 classes
C3D_MACS = 38_548_959_232


def c3d_table_totals(classes=C3D_CLASSES):
    params = macs = 0
    cin, shape = 3, (16, 112, 112)
    for widths, (kernel, pad) in zip(C3D_GROUPS, C3D_POOLS):
        for cout in widths:
            params += cout * cin * 27 + cout
            macs += int(np.prod(shape)) * cout * cin * 27
            cin = cout
        shape = tuple((n + 2 * p - k) // k + 1 for n, k, p in zip(shape, kernel, pad))
    features = cin * int(np.prod(shape))
    for fin, fout in [(features, 4096), (4096, 4096), (4096, classes)]:
        params += fin * fout + fout
        macs += fin * fout
    return params, macs, features


def c3d_transcription(classes=C3D_CLASSES):
    """C3D in plain torch.nn, the layout of the common PyTorch ports of the Caffe model
    (conv1 .. conv5b, pool5 padded (0, 1, 1), fc6 .. fc8 with ReLU and dropout)."""
    nn = pytest.importorskip("torch.nn")
    import torch

    class C3DNet(nn.Module):
        def __init__(self):
            super().__init__()
            layers, cin = [], 3
            for widths, (kernel, pad) in zip(C3D_GROUPS, C3D_POOLS):
                for cout in widths:
                    layers += [nn.Conv3d(cin, cout, 3, padding=1), nn.ReLU()]
                    cin = cout
                layers.append(nn.MaxPool3d(kernel, stride=kernel, padding=pad))
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Sequential(
                nn.Linear(8192, 4096), nn.ReLU(), nn.Dropout(0.5),
                nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, classes))

        def forward(self, x):
            return self.classifier(torch.flatten(self.features(x), 1))

    return C3DNet()


# ---- shared ---------------------------------------------------------------------------------



def seeded(model, seed=0):
    """Random weights everywhere, batchnorm statistics included, so that a wrong mapping of
    any of them shows in the output."""
    import torch

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                size = module.num_features
                module.weight.copy_(0.5 + torch.rand(size, generator=gen))
                module.bias.copy_(0.1 * torch.randn(size, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(size, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(size, generator=gen))
            elif isinstance(module, (torch.nn.Conv1d, torch.nn.Conv3d, torch.nn.Linear)):
                module.bias.copy_(0.05 * torch.randn(module.bias.shape, generator=gen))
    return model.eval()


def torch_macs(model, shape):
    """Convolution and Linear multiply-accumulates for one input of `shape`, with hooks."""
    import torch

    total = 0

    def count(module, inputs, output):
        nonlocal total
        per_sample = output[0].numel()
        if isinstance(module, torch.nn.Linear):
            total += per_sample * module.in_features
        else:
            total += per_sample * (module.in_channels // module.groups) * int(
                np.prod(module.kernel_size))

    kinds = (torch.nn.Conv1d, torch.nn.Conv3d, torch.nn.Linear)
    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    for hook in hooks:
        hook.remove()
    return total


def weight_file(net, model):
    """cnnc weight-file arrays taken from a PyTorch model, matched by structure: the layers
    with parameters in order against the convolutions, batchnorms and Linear in order; the
    pools are matched in order too, kernel, stride, padding and rounding."""
    import torch

    kinds = {"conv1d": torch.nn.Conv1d, "conv3d": torch.nn.Conv3d,
             "batchnorm": torch.nn.BatchNorm1d, "dense": torch.nn.Linear}
    ours = [node for node in net.layers if node.params or node.buffers]
    theirs = [m for m in model.modules() if isinstance(m, tuple(kinds.values()))]
    assert [node.op for node in ours] == [
        next(op for op, cls in kinds.items() if isinstance(m, cls)) for m in theirs]

    pools = (torch.nn.MaxPool1d, torch.nn.MaxPool3d)
    our_pools = [node for node in net.layers if node.op in ("maxpool1d", "maxpool3d")]
    their_pools = [m for m in model.modules() if isinstance(m, pools)]
    assert len(our_pools) == len(their_pools)
    for node, module in zip(our_pools, their_pools):
        rank = len(node.args["kernel"])
        as_tuple = (lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * rank)
        assert node.args["kernel"] == as_tuple(module.kernel_size), node.name
        assert node.args["stride"] == as_tuple(module.stride), node.name
        assert node.args["pad"] == as_tuple(module.padding), node.name
        assert node.args["ceil"] == module.ceil_mode, node.name

    arrays = {}
    for node, module in zip(ours, theirs):
        if node.op in ("conv1d", "conv3d"):
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


def compare(path, model, x, tmp_path):
    """The cnnc model (NumPy backend, float32, weights from a file) against `model` on x:
    within 1e-4 of the largest magnitude of PyTorch's output."""
    import torch

    compiled = cnnc.compile(path)
    arrays = weight_file(compiled.network, model)
    ours = compiled.build(backend="numpy", seed=0, dtype="float32")
    assert set(arrays) == set(ours.params)
    np.savez(tmp_path / "weights.npz", **arrays)
    ours.load(tmp_path / "weights.npz")
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = np.asarray(ours(x))
    assert got.shape == expected.shape
    scale = np.abs(expected).max()
    assert scale > 0
    assert np.abs(got - expected).max() <= 1e-4 * scale


# ---- M5: the compiler's figures -------------------------------------------------------------


def test_m5_checks_clean():
    net = cnnc.check(M5)
    assert net.diagnostics == []
    assert net.ok
    assert net.name == "m5"
    assert [net.nodes[node].shape for node in net.inputs] == [(1, M5_LENGTH)]
    assert all(node.shape is not None for node in net.nodes.values())
    assert {out: net.nodes[node].shape for out, node in net.outputs.items()} == {
        "logits": (M5_CLASSES,)}


def test_m5_totals():
    net = cnnc.check(M5)
    params, macs, lengths = m5_table_totals()
    assert (params, macs, lengths) == (M5_PARAMS, M5_MACS, M5_LENGTHS)
    # the paper's 10-class M5, "0.5M"
    assert m5_table_totals(classes=10)[0] == 559_114
    assert sum(node.param_count for node in net.layers) == M5_PARAMS
    assert sum(node.macs for node in net.layers) == M5_MACS
    rep = report(net)
    assert (rep.total_params, rep.total_macs) == (M5_PARAMS, M5_MACS)
    ops = [node.op for node in net.layers]
    assert ops.count("conv1d") == ops.count("batchnorm") == ops.count("maxpool1d") == 4
    assert ops.count("dense") == 1
    convs = [node for node in net.layers if node.op == "conv1d"]
    assert [(n.shape[0], n.args["kernel"], n.args["stride"], n.args["pad"]) for n in convs] == [
        (c, (k,), (s,), (p,)) for c, k, s, p in M5_TABLE]
    assert [n.shape[1] for n in convs] + [8] == [2000, 500, 125, 32, 8]
    pools = [node for node in net.layers if node.op == "maxpool1d"]
    assert [n.shape[1] for n in pools] == M5_LENGTHS[1:]
    assert weighted_depth(net) == 5


# ---- C3D: the compiler's figures ------------------------------------------------------------


def test_c3d_checks_clean():
    net = cnnc.check(C3D)
    assert net.diagnostics == []
    assert net.ok
    assert net.name == "c3d"
    assert [net.nodes[node].shape for node in net.inputs] == [(3, 16, 112, 112)]
    assert all(node.shape is not None for node in net.nodes.values())
    assert {out: net.nodes[node].shape for out, node in net.outputs.items()} == {
        "logits": (C3D_CLASSES,)}


def test_c3d_totals():
    net = cnnc.check(C3D)
    params, macs, features = c3d_table_totals()
    assert (params, macs, features) == (C3D_PARAMS, C3D_MACS, 8192)
    assert c3d_table_totals(classes=101)[0] == C3D_PARAMS_101
    assert round(C3D_PARAMS_101 / 1e6) == 78
    assert sum(node.param_count for node in net.layers) == C3D_PARAMS
    assert sum(node.macs for node in net.layers) == C3D_MACS
    rep = report(net)
    assert (rep.total_params, rep.total_macs) == (C3D_PARAMS, C3D_MACS)
    ops = [node.op for node in net.layers]
    assert ops.count("conv3d") == 8
    assert ops.count("maxpool3d") == 5
    assert ops.count("dense") == 3
    assert [node.args["p"] for node in net.layers if node.op == "dropout"] == [0.5, 0.5]
    pools = [node for node in net.layers if node.op == "maxpool3d"]
    assert [node.shape for node in pools] == [
        (64, 16, 56, 56), (128, 8, 28, 28), (256, 4, 14, 14), (512, 2, 7, 7), (512, 1, 4, 4)]
    assert [(n.args["kernel"], n.args["pad"]) for n in pools] == C3D_POOLS
    convs = [node for node in net.layers if node.op == "conv3d"]
    assert [n.shape[0] for n in convs] == [c for group in C3D_GROUPS for c in group]
    assert all(n.args["kernel"] == (3, 3, 3) and n.args["pad"] == (1, 1, 1) for n in convs)
    assert weighted_depth(net) == 11


# ---- PyTorch --------------------------------------------------------------------------------


def test_m5_transcription_figures():
    model = m5_transcription()
    assert sum(p.numel() for p in model.parameters()) == M5_PARAMS
    assert torch_macs(model, (1, M5_LENGTH)) == M5_MACS
    assert sum(p.numel() for p in m5_transcription(classes=10).parameters()) == 559_114


def test_c3d_transcription_figures():
    model = c3d_transcription()
    assert sum(p.numel() for p in model.parameters()) == C3D_PARAMS
    assert torch_macs(model, (3, 16, 112, 112)) == C3D_MACS
    assert sum(p.numel() for p in c3d_transcription(classes=101).parameters()) == (
        C3D_PARAMS_101)


def test_m5_outputs_match_pytorch(tmp_path):
    pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((2, 1, M5_LENGTH)).astype(np.float32)
    compare(M5, seeded(m5_transcription()), x, tmp_path)


def test_c3d_outputs_match_pytorch(tmp_path):
    pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 112, 112)).astype(np.float32)
    compare(C3D, seeded(c3d_transcription()), x, tmp_path)


# ---- cnnc run -------------------------------------------------------------------------------


def test_m5_cnnc_run_end_to_end(tmp_path, capsys):
    """`cnnc run` on a random [2, 1, 8000] batch: with no weights it gives the seeded default
    model's logits; with weights moved in from PyTorch, PyTorch's logits."""
    x = np.random.default_rng(1).standard_normal((2, 1, M5_LENGTH)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    status = cli_main(["run", str(M5), "--input", str(tmp_path / "x.npy"),
                       "-o", str(tmp_path / "y.npy"), "--backend", "numpy"])
    assert status == 0, capsys.readouterr().err
    y = np.load(tmp_path / "y.npy")
    assert y.shape == (2, M5_CLASSES)
    assert np.isfinite(y).all()
    default = cnnc.compile(M5).build(backend="numpy", seed=0, dtype="float32")
    np.testing.assert_allclose(y, np.asarray(default(x)), rtol=1e-5, atol=1e-6)

    torch = pytest.importorskip("torch")
    model = seeded(m5_transcription(), seed=2)
    np.savez(tmp_path / "w.npz", **weight_file(cnnc.check(M5), model))
    status = cli_main(["run", str(M5), "--input", str(tmp_path / "x.npy"),
                       "-o", str(tmp_path / "z.npy"), "--weights", str(tmp_path / "w.npz"),
                       "--backend", "numpy"])
    assert status == 0, capsys.readouterr().err
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = np.load(tmp_path / "z.npy")
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
