"""The resizing family (ops/resize.py): upsample, conv_transpose, adaptive_avgpool and
adaptive_maxpool. The layers through the checker (shapes, symbolic sizes, diagnostics, merge
notes and fixes, parameters and MACs), the shape rules on every rank, the kernels against
PyTorch over grids that hit the edges (forward float32 within 1e-4, gradients float64 within
1e-6), ties, infinities, ``out=`` slices, kernel refusals, ONNX Runtime, and a small U-Net
end to end. The generic checks (reference, float32, finite differences, the CuPy backend)
run from the family's examples in tests/ops/test_conformance.py and tests/gpu/.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import cnnc
from cnnc.compiler.plan import Plan, Step
from cnnc.compiler.symbolic import evaluate, sym
from cnnc.dsl.diagnostics import CODES
from cnnc.ops import Op, resize
from cnnc.ops.base import REQUIRED
from cnnc.ops.window import pair

LAYERS = {layer.name: layer for layer in resize.LAYERS}
PRIMS = {p.name: p for p in resize.PRIMITIVES}
F32 = dict(rtol=1e-4, atol=1e-4)
F64 = dict(rtol=1e-6, atol=1e-8)


@pytest.fixture
def rng():
    return np.random.default_rng(20261201)


def _check(body):
    return cnnc.check("network t\n" + body)


def _errors(net):
    return [(d.code, d.message, d.help) for d in net.diagnostics if d.severity == "error"]


class Ctx:
    """What a shape rule may call, recorded."""

    def __init__(self):
        self.errors = []
        self.conditions = []

    def error(self, code, message=None, notes=(), help=None, *, variant=None, **values):
        if message is None:
            message = CODES[code].format(variant, **values)
        self.errors.append((code, message, help))

    def positive(self, size, what):
        self.conditions.append((size, what))


def _infer(name, shape, **args):
    layer = LAYERS[name]
    full = {a.name: a.default for a in layer.args if a.default is not REQUIRED}
    full.update(args)
    ctx = Ctx()
    return layer.infer(tuple(shape), full, ctx), ctx


# ================================================================ the layers

def test_the_family_declares_its_layers_and_primitives():
    assert set(LAYERS) == {"upsample", "conv_transpose", "adaptive_avgpool",
                           "adaptive_maxpool"}
    assert set(PRIMS) == {"upsample", "conv_transpose2d", "adaptive_avgpool",
                          "adaptive_maxpool"}
    assert [(a.name, a.default) for a in LAYERS["conv_transpose"].args] == [
        ("out", REQUIRED), ("kernel", REQUIRED), ("stride", 1), ("pad", 0), ("output_pad", 0),
        ("dilation", 1), ("groups", 1), ("bias", True)]
    assert LAYERS["conv_transpose"].ranks == (3,)
    for name in ("upsample", "adaptive_avgpool", "adaptive_maxpool"):
        assert LAYERS[name].ranks is None  # rank-generic


def test_shapes_params_and_macs_through_the_checker():
    net = _check("""input x: [3, 8, 6]
a = x -> conv_transpose(4, 3, stride=2, pad=1, output_pad=1)
b = x -> conv_transpose(6, [2, 3], stride=[2, 1], groups=3, bias=false)
c = x -> upsample(2)
d = x -> upsample([1, 3])
e = x -> adaptive_avgpool([3, 2])
f = x -> adaptive_maxpool(1)
g = b -> adaptive_maxpool([3, 2])
output y = concat(a, c) -> flatten
output z = concat(e, g) -> flatten
output w = concat(d, d) -> flatten
output v = f -> flatten
""")
    assert net.ok, net.render()
    node = {n.name: n for n in net.layers}
    assert node["a.conv_transpose1"].shape == (4, 16, 12)  # (8-1)*2 - 2 + 2 + 1 + 1
    assert node["a.conv_transpose1"].params == {"weight": (3, 4, 3, 3), "bias": (4,)}
    assert node["a.conv_transpose1"].macs == 3 * 8 * 6 * 4 * 9  # input x out/groups x k
    assert node["b.conv_transpose1"].shape == (6, 16, 8)
    assert node["b.conv_transpose1"].params == {"weight": (3, 2, 2, 3)}
    assert node["b.conv_transpose1"].macs == 3 * 8 * 6 * 2 * 6
    assert node["c.upsample1"].shape == (3, 16, 12)
    assert node["d.upsample1"].shape == (3, 8, 18)
    assert node["e.adaptive_avgpool1"].shape == (3, 3, 2)
    assert node["f.adaptive_maxpool1"].shape == (3, 1, 1)
    for name in ("c.upsample1", "e.adaptive_avgpool1", "f.adaptive_maxpool1"):
        assert node[name].macs == 0 and node[name].params == {}


def test_the_lowering():
    model = cnnc.compile("""network t
input x: [4, 5, 6]
a = x -> conv_transpose(2, [3, 2], stride=2, pad=[1, 0], output_pad=[0, 1], dilation=[1, 2])
output y = a -> upsample([2, 3]) -> adaptive_avgpool([3, 4]) -> adaptive_maxpool(2)
""")
    steps = model.plan.steps
    assert [s.op for s in steps] == [Op.CONV_TRANSPOSE2D, Op.UPSAMPLE, Op.ADAPTIVE_AVGPOOL,
                                     Op.ADAPTIVE_MAXPOOL]
    assert steps[0].attrs == dict(stride=(2, 2), pad=(1, 0), output_pad=(0, 1),
                                  dilation=(1, 2), groups=1)
    assert steps[0].params == ["a.conv_transpose1.weight", "a.conv_transpose1.bias"]
    assert steps[1].attrs == dict(factor=(2, 3), mode="nearest", align_corners=False)
    assert steps[2].attrs == dict(size=(3, 4))
    assert steps[3].attrs == dict(size=(2, 2))
    assert model.plan.initial["a.conv_transpose1.weight"] == "kaiming_uniform"


def test_symbolic_sizes_flow_through_transposed_convolutions_and_upsampling():
    net = _check("""input x: [3, H, W]
a = x -> maxpool(2) -> conv(8, 3, pad=1) -> conv_transpose(3, 2, stride=2)
b = x -> maxpool(2) -> upsample(2)
output y = concat(x, a, b) -> adaptive_avgpool(4)
""")
    assert net.ok, net.render()
    assert [v.describe() for v in net.valid_sizes] == ["H >= 2 and H = 0 mod 2",
                                                      "W >= 2 and W = 0 mod 2"]
    node = {n.name: n for n in net.layers}
    h = node["a.conv_transpose1"].shape[1]
    assert evaluate(h, {"H": 9}) == 8 and evaluate(h, {"H": 10}) == 10
    assert node["y.adaptive_avgpool1"].shape == (9, 4, 4)


def test_a_padded_transposed_convolution_needs_a_large_enough_symbolic_input():
    net = _check("input x: [3, H, 8]\noutput y = x -> conv_transpose(4, 3, pad=3)\n")
    assert net.ok, net.render()
    assert net.valid_sizes[0].describe() == "H >= 5"  # H - 1 - 6 + 2 + 1 >= 1
    shape, ctx = _infer("conv_transpose", (3, sym("H"), 8), out=4, kernel=(3, 3),
                        stride=(2, 2), pad=(1, 1), output_pad=(1, 1), dilation=(1, 1))
    assert evaluate(shape[1], {"H": 7}) == 14 and shape[2] == 16
    assert [what for _, what in ctx.conditions] == ["conv_transpose output height"]


def test_output_pad_must_be_below_the_stride_or_the_dilation():
    net = _check("input x: [3, 8, 8]\n"
                 "output y = x -> conv_transpose(4, 3, stride=2, output_pad=2)\n")
    assert _errors(net) == [(
        "E207", "conv_transpose output_pad=2 must be below max(stride, dilation) = "
        "max(2, 1) = 2", "use output_pad=1 at most, or a larger stride")]
    net = _check("input x: [3, 8, 8]\n"
                 "output y = x -> conv_transpose(4, 3, stride=[1, 2], output_pad=[1, 0])\n")
    assert _errors(net) == [(
        "E207", "conv_transpose output_pad=1 must be below max(stride, dilation) = "
        "max(1, 1) = 1 in height",
        "drop output_pad (it only picks among the output sizes a stride above 1 allows), "
        "or a larger stride")]
    # a dilation allows an output_pad at the stride, as PyTorch does
    net = _check("input x: [3, 8, 8]\n"
                 "output y = x -> conv_transpose(4, 3, dilation=2, output_pad=1)\n")
    assert net.ok and net.layers[0].shape == (4, 13, 13)


def test_transposed_convolution_diagnostics():
    net = _check("input x: [3, 2, 8]\noutput y = x -> conv_transpose(4, 3, pad=3)\n")
    assert _errors(net) == [(
        "E301", "conv_transpose output height would be -2, below 1: "
        "(2 - 1)*1 - 2*3 + 1*(3 - 1) + 0 + 1 = -2",
        "use pad=1 at most on this input: 2*pad may not exceed (2 - 1)*1 + 1*(3 - 1) + 0")]
    net = _check("input x: [3, 8, 8]\noutput y = x -> conv_transpose(4, 3, groups=2)\n")
    assert _errors(net) == [("E305", "conv_transpose groups=2 does not divide the 3 input "
                             "channels", "3 divides by groups=1 or groups=3")]
    net = _check("input x: [4, 8, 8]\noutput y = x -> conv_transpose(5, 3, groups=2)\n")
    assert _errors(net)[0][:2] == ("E305", "conv_transpose groups=2 does not divide the 5 "
                                   "output channels")
    net = _check("input x: [4, 8, 8]\noutput y = x -> flatten -> conv_transpose(5, 3)\n")
    (code, message, help), = _errors(net)
    assert code == "E304" and "got [256]" in message
    assert help == "`conv_transpose` works on [C, H, W] maps; move it before `flatten`"
    net = _check("input x: [4, 8, 8]\noutput y = x -> conv_transpose(5, 3, pad=same)\n")
    assert [e[0] for e in _errors(net)] == ["E201"]


def test_a_merge_names_the_transposed_convolutions_arithmetic_and_fix():
    net = _check("""input x: [3, 8, 8]
a = x -> conv_transpose(4, 3, stride=2, pad=1)
b = x -> upsample(2)
output y = concat(b, a)
""")
    (diag,) = net.errors
    assert diag.code == "E302" and diag.message == "concat inputs disagree in height: 16 vs 15"
    assert diag.notes[1].endswith("; (8 - 1)*2 - 2*1 + 1*(3 - 1) + 0 + 1 = 15")
    assert diag.help == "use output_pad=1 on the conv_transpose at 3:10"
    net = _check("""input x: [3, 8, 6]
a = x -> conv_transpose(4, 4, stride=2)
b = x -> upsample(2)
output y = concat(b, a)
""")
    (diag,) = net.errors
    assert diag.help == "use pad=[1, 0] on the conv_transpose at 3:10"


def test_a_merge_names_the_upsampling_and_the_adaptive_size():
    net = _check("""input x: [3, 8, 8]
a = x -> maxpool(2) -> upsample(3)
output y = concat(x, a)
""")
    (diag,) = net.errors
    assert diag.notes[1].endswith("; 4*3 = 12")
    assert diag.help == "use factor=2 on the upsample at 3:24"
    net = _check("""input x: [3, 7, 7]
a = x -> adaptive_avgpool(4)
b = x -> maxpool(2)
output y = concat(b, a)
""")
    (diag,) = net.errors
    assert diag.notes[1].endswith("; size 4, whatever the input's 7")
    assert diag.help == "use size=3 on the adaptive_avgpool at 3:10"


def test_upsample_diagnostics():
    net = _check("input x: [3, 8, 8]\noutput y = x -> upsample(2, align_corners=true)\n")
    assert _errors(net) == [("E207", "upsample align_corners=true needs mode=linear, "
                             "bilinear or trilinear; mode is nearest",
                             "drop align_corners, or use mode=bilinear")]
    net = _check("input x: [3, 8, 8]\noutput y = x -> flatten -> upsample(2)\n")
    assert _errors(net) == [("E304", "`upsample` expects a map [C, L], [C, H, W] or "
                             "[C, D, H, W], got [192]",
                             "`upsample` works on maps; move it before `flatten`")]
    net = _check("input x: [3, 8, 8]\noutput y = x -> upsample(2, mode=bilinaer)\n")
    (code, message, help), = _errors(net)
    assert code == "E207" and message.startswith("upsample mode must be `nearest`")
    assert help == "did you mean `bilinear`?"
    net = _check("input x: [3, 8, 8]\noutput y = x -> upsample(2, mode=trilinear)\n")
    assert _errors(net)[0][:2] == ("E207", "upsample mode=trilinear needs a [C, D, H, W] "
                                   "map, got [3, 8, 8], a [C, H, W] map")
    net = _check("input x: [3, 8, 8]\n"
                 "output y = x -> upsample([2, 3], mode=bilinear, align_corners=true)\n")
    assert net.ok and net.layers[0].shape == (3, 16, 24)
    net = _check("input x: [3, 8, 8]\noutput y = x -> upsample(0)\n")
    assert [e[0] for e in _errors(net)] == ["E207"]
    net = _check("input x: [3, 8, 8]\noutput y = x -> flatten -> adaptive_maxpool(2)\n")
    assert _errors(net)[0][0] == "E304"


def test_upsample_and_adaptive_pools_on_every_rank():
    for shape, factor, want in [((4, 10), 3, (4, 30)), ((4, 5, 6), (2, 3), (4, 10, 18)),
                                ((2, 3, 4, 5), (1, 2, 3), (2, 3, 8, 15)),
                                ((2, 3, 4, 5), 2, (2, 6, 8, 10))]:
        out, ctx = _infer("upsample", shape, factor=factor)
        assert out == want and not ctx.errors
    assert _infer("upsample", (4, 10), factor=2, mode="linear")[0] == (4, 20)
    assert _infer("upsample", (2, 3, 4, 5), factor=2, mode="trilinear")[0] == (2, 6, 8, 10)
    assert _infer("adaptive_avgpool", (4, 10), size=3)[0] == (4, 3)
    assert _infer("adaptive_maxpool", (2, 3, 4, 5), size=(1, 2, 3))[0] == (2, 1, 2, 3)
    assert _infer("adaptive_maxpool", (2, 3, 4, 5), size=2)[0] == (2, 2, 2, 2)
    (h,) = _infer("upsample", (4, sym("L")), factor=3)[0][1:]
    assert evaluate(h, {"L": 7}) == 21


def test_a_mode_or_a_factor_that_does_not_fit_the_rank_is_e207():
    _, ctx = _infer("upsample", (4, 10), factor=2, mode="bilinear")
    assert ctx.errors == [("E207", "upsample mode=bilinear needs a [C, H, W] map, got "
                           "[4, 10], a [C, L] map",
                           "use mode=linear (or nearest) on a [C, L] map")]
    _, ctx = _infer("upsample", (4, 5, 6), factor=2, mode="trilinear")
    assert ctx.errors[0][1].startswith("upsample mode=trilinear needs a [C, D, H, W] map")
    _, ctx = _infer("upsample", (4, 5, 6), factor=2, mode="cubic")
    assert ctx.errors[0][:2] == ("E207", "upsample mode must be `nearest`, `linear`, "
                                 "`bilinear` or `trilinear`, got `cubic`")
    _, ctx = _infer("upsample", (4, 10), factor=(2, 3))
    assert ctx.errors == [("E207", "upsample factor=[2, 3] gives 2 values, but a [C, L] map "
                           "has 1 spatial dim",
                           "give one integer for every spatial dim, or a list [length]")]
    _, ctx = _infer("adaptive_avgpool", (2, 3, 4, 5), size=(2, 3))
    assert ctx.errors[0][1] == ("adaptive_avgpool size=[2, 3] gives 2 values, but a "
                                "[C, D, H, W] map has 3 spatial dims")


# ================================================================ kernels against PyTorch


def _torch_check(torch_fn, ours_forward, ours_backward, arrays, rng):
    """Forward float32 within 1e-4 and every gradient float64 within 1e-6, against
    autograd. ``arrays``: float64 NumPy inputs (None for an absent bias)."""
    torch = pytest.importorskip("torch")
    present = [a for a in arrays if a is not None]
    y32, _ = ours_forward(*[None if a is None else a.astype(np.float32) for a in arrays])
    want32 = torch_fn(*[None if a is None else torch.from_numpy(a.astype(np.float32))
                        for a in arrays])
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, want32.numpy(), **F32)
    y, saved = ours_forward(*arrays)
    dy = rng.standard_normal(y.shape)
    gxs, gws = ours_backward(saved, dy)
    tensors = [None if a is None else torch.tensor(a, requires_grad=True) for a in arrays]
    want = torch_fn(*tensors)
    np.testing.assert_allclose(y, want.detach().numpy(), rtol=1e-9, atol=1e-10)
    want.backward(torch.from_numpy(dy))
    grads = [g for g in list(gxs) + list(gws) if g is not None]
    assert len(grads) == len(present)
    for g, t in zip(grads, [t for t in tensors if t is not None]):
        np.testing.assert_allclose(g, t.grad.numpy(), **F64)


TRANSPOSE_GRID = [
    case for case in itertools.product(
        [1, 2, 3, (2, 3)],  # kernel
        [1, 2, (2, 1), 3],  # stride
        [0, 1, (1, 0)],  # pad
        [1, (1, 2)],  # dilation
        [1, 2],  # groups
    )
]


@pytest.mark.torch
@pytest.mark.parametrize("kernel, stride, pad, dilation, groups", TRANSPOSE_GRID)
def test_conv_transpose2d_matches_torch(rng, kernel, stride, pad, dilation, groups):
    torch = pytest.importorskip("torch")
    kh, kw = pair(kernel)
    s, d = pair(stride), pair(dilation)
    largest = tuple(max(a, b) - 1 for a, b in zip(s, d))
    for output_pad, bias in [(0, True), (largest, False)]:
        x = rng.standard_normal((2, 4, 4, 5))
        w = rng.standard_normal((4, 6 // groups, kh, kw))
        b = rng.standard_normal(6) if bias else None
        attrs = dict(stride=stride, pad=pad, output_pad=output_pad, dilation=dilation,
                     groups=groups)
        shape = [resize.transpose_out(n, k, ss, p, q, dd) for n, k, ss, p, q, dd in zip(
            (4, 5), (kh, kw), s, pair(pad), pair(output_pad), d)]
        if min(shape) < 1:
            continue

        def torch_fn(x, w, b, attrs=attrs):
            return torch.nn.functional.conv_transpose2d(
                x, w, b, s, pair(pad), pair(attrs["output_pad"]), groups, d)

        def forward(x, w, b, attrs=attrs):
            return resize.conv_transpose2d_forward(x, w, b, **attrs)

        _torch_check(torch_fn, forward, resize.conv_transpose2d_backward, [x, w, b], rng)
        got = resize.conv_transpose2d(x, w, b, **attrs)
        assert got.shape[2:] == tuple(shape) and got.flags.c_contiguous


UPSAMPLE_GRID = [
    ((2, 3, 5), 3, "nearest", False),
    ((2, 3, 5), 1, "linear", False),
    ((2, 3, 5), 2, "linear", False),
    ((2, 3, 5), 3, "linear", True),
    ((2, 3, 1), 4, "linear", False),
    ((2, 3, 1), 4, "linear", True),
    ((2, 2, 3, 4), 2, "nearest", False),
    ((2, 2, 3, 4), (1, 3), "nearest", False),
    ((2, 2, 3, 4), 2, "bilinear", False),
    ((2, 2, 3, 4), (3, 2), "bilinear", False),
    ((2, 2, 3, 4), (2, 5), "bilinear", True),
    ((2, 2, 1, 2), (4, 3), "bilinear", True),
    ((2, 2, 1, 2), (4, 3), "bilinear", False),
    ((1, 2, 2, 3, 2), 2, "nearest", False),
    ((1, 2, 2, 3, 2), (3, 1, 2), "nearest", False),
    ((1, 2, 2, 3, 2), 2, "trilinear", False),
    ((1, 2, 2, 3, 2), (3, 2, 1), "trilinear", True),
    ((1, 2, 1, 3, 2), (2, 2, 3), "trilinear", False),
]


@pytest.mark.torch
@pytest.mark.parametrize("shape, factor, mode, align", UPSAMPLE_GRID)
def test_upsample_matches_torch(rng, shape, factor, mode, align):
    torch = pytest.importorskip("torch")
    dims = len(shape) - 2
    factors = (factor,) * dims if isinstance(factor, int) else factor
    attrs = dict(factor=factor, mode=mode, align_corners=align)

    def torch_fn(x):
        return torch.nn.functional.interpolate(
            x, scale_factor=tuple(float(f) for f in factors), mode=mode,
            align_corners=None if mode == "nearest" else align)

    def forward(x):
        return resize.upsample_forward(x, **attrs)

    _torch_check(torch_fn, forward, resize.upsample_backward, [rng.standard_normal(shape)],
                 rng)
    want = resize.reference_upsample(rng.standard_normal(shape), **attrs)
    assert want.shape == shape[:2] + tuple(n * f for n, f in zip(shape[2:], factors))


ADAPTIVE_GRID = [
    ((2, 3, 7), 3), ((2, 3, 10), 4), ((2, 3, 5), 7), ((2, 3, 5), 1), ((2, 3, 6), 6),
    ((2, 2, 7, 5), (3, 2)), ((2, 2, 6, 6), (2, 3)), ((2, 2, 3, 2), (5, 4)),
    ((2, 2, 13, 11), (6, 4)), ((2, 2, 5, 5), 1), ((2, 2, 4, 9), (4, 5)),
    ((1, 2, 5, 4, 6), (2, 3, 4)), ((1, 2, 3, 7, 4), (5, 3, 1)), ((1, 2, 4, 4, 4), 2),
]


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("shape, size", ADAPTIVE_GRID)
def test_adaptive_pools_match_torch(rng, kind, shape, size):
    torch = pytest.importorskip("torch")
    dims = len(shape) - 2
    sizes = (size,) * dims if isinstance(size, int) else size
    fn = getattr(torch.nn.functional, f"adaptive_{kind}_pool{dims}d")
    forward = getattr(resize, f"adaptive_{kind}pool_forward")
    backward = getattr(resize, f"adaptive_{kind}pool_backward")
    x = rng.permutation(int(np.prod(shape))).reshape(shape) * 0.01  # no ties
    _torch_check(lambda t: fn(t, sizes), lambda a: forward(a, size=size), backward, [x], rng)


@pytest.mark.torch
@pytest.mark.parametrize("shape, size", [((2, 3, 7, 5), (3, 2)), ((2, 3, 3, 2), (5, 4)),
                                         ((2, 2, 6), 4), ((1, 2, 3, 4, 5), (2, 3, 3))])
def test_adaptive_maxpool_ties_go_to_the_first_cell_as_in_torch(rng, shape, size):
    torch = pytest.importorskip("torch")
    dims = len(shape) - 2
    sizes = (size,) * dims if isinstance(size, int) else size
    for x in (np.zeros(shape), rng.integers(0, 3, shape).astype(np.float64)):
        y, saved = resize.adaptive_maxpool_forward(x, size=size)
        dy = rng.standard_normal(y.shape)
        (gx,), _ = resize.adaptive_maxpool_backward(saved, dy)
        t = torch.tensor(x, requires_grad=True)
        getattr(torch.nn.functional, f"adaptive_max_pool{dims}d")(t, sizes).backward(
            torch.from_numpy(dy))
        np.testing.assert_allclose(gx, t.grad.numpy(), rtol=1e-12, atol=1e-15)


# ================================================================ kernel edges


def test_an_infinity_next_to_an_adaptive_window_stays_out_of_it():
    torch = pytest.importorskip("torch")
    x = np.zeros((1, 1, 7))
    x[0, 0, 4] = np.inf  # windows of 7 -> 3: [0, 3), [2, 5), [4, 7)
    want = torch.nn.functional.adaptive_avg_pool1d(torch.from_numpy(x), 3).numpy()
    got = resize.adaptive_avgpool(x, size=3)
    np.testing.assert_array_equal(got, want)
    assert np.isfinite(got[0, 0, 0])


def test_integer_inputs():
    x = np.arange(12).reshape(1, 2, 2, 3)
    up = resize.upsample(x, factor=2)
    assert up.dtype == x.dtype and up[0, 1, 3, 5] == x[0, 1, 1, 2]
    pooled = resize.adaptive_maxpool(x, size=(1, 2))
    assert pooled.dtype == x.dtype
    np.testing.assert_array_equal(pooled[0, :, 0], [[4, 5], [10, 11]])
    assert resize.adaptive_avgpool(x, size=1).dtype == np.float64


def test_an_empty_batch_runs(rng):
    x = np.zeros((0, 3, 4, 5))
    w = rng.standard_normal((3, 2, 3, 3))
    y, saved = resize.conv_transpose2d_forward(x, w, np.zeros(2), stride=2)
    assert y.shape == (0, 2, 9, 11)
    (gx,), (gW, gb) = resize.conv_transpose2d_backward(saved, y)
    assert gx.shape == x.shape and not gW.any() and not gb.any()
    for kernel in (resize.adaptive_avgpool, resize.adaptive_maxpool):
        assert kernel(x, size=(3, 2)).shape == (0, 3, 3, 2)
    assert resize.upsample(x, factor=2, mode="bilinear").shape == (0, 3, 8, 10)


@pytest.mark.parametrize("name, attrs", [
    ("upsample", dict(factor=2, mode="nearest", align_corners=False)),
    ("upsample", dict(factor=(2, 3), mode="bilinear", align_corners=True)),
    ("conv_transpose2d", dict(stride=2, pad=1, output_pad=1, dilation=1, groups=2)),
])
def test_out_may_be_a_channel_slice(rng, name, attrs):
    p = PRIMS[name]
    x = rng.standard_normal((2, 4, 3, 4))
    params = [rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(6)] if name.startswith(
        "conv") else []
    want = p.kernel(x, *params, **attrs)
    whole = np.full((2, want.shape[1] + 3) + want.shape[2:], np.nan)
    got = p.kernel(x, *params, out=whole[:, 1:1 + want.shape[1]], **attrs)
    np.testing.assert_array_equal(got, want)
    assert np.isnan(whole[:, 0]).all() and np.isnan(whole[:, -2:]).all()


def test_kernels_refuse_what_does_not_fit():
    x = np.zeros((1, 2, 3, 4))
    w = np.zeros((2, 3, 3, 3))
    with pytest.raises(ValueError, match="output_pad must be below max"):
        resize.conv_transpose2d(x, w, stride=2, output_pad=2)
    with pytest.raises(ValueError, match=r"height: output size must be at least 1, got "
                       r"\(3 - 1\)\*1 - 2\*3 \+ 1\*\(3 - 1\) \+ 0 \+ 1 = -1"):
        resize.conv_transpose2d(x, w, pad=3)
    with pytest.raises(ValueError, match="the 3 input channels do not divide by groups=2"):
        resize.conv_transpose2d(np.zeros((1, 3, 3, 4)), np.zeros((3, 1, 2, 2)), groups=2)
    with pytest.raises(ValueError, match=r"weight \(3, 1, 2, 2\) is for 3 input channels, "
                       "the input has 2"):
        resize.conv_transpose2d(np.zeros((1, 2, 3, 4)), np.zeros((3, 1, 2, 2)))
    with pytest.raises(ValueError, match="bias must be"):
        resize.conv_transpose2d(x, w, np.zeros(2))
    with pytest.raises(ValueError, match="mode 'trilinear' does not fit"):
        resize.upsample(x, factor=2, mode="trilinear")
    with pytest.raises(ValueError, match="align_corners=True needs a linear mode"):
        resize.upsample(x, factor=2, align_corners=True)
    with pytest.raises(ValueError, match="factor must be an integer >= 1 or 2 of them"):
        resize.upsample(x, factor=(2, 2, 2))
    with pytest.raises(ValueError, match="at least one spatial dim"):
        resize.adaptive_avgpool(np.zeros((2, 3)), size=1)
    with pytest.raises(ValueError, match="size must be an integer >= 1"):
        resize.adaptive_maxpool(x, size=0)
    with pytest.raises(ValueError, match="dy must have"):
        _, saved = resize.upsample_forward(x, factor=2)
        resize.upsample_backward(saved, np.zeros((1, 2, 3, 4)))


def test_bands_are_the_matrices_they_stand_for():
    """A band and its transpose, applied to identity matrices, are M and M.T."""
    for band, n in [(resize._linear_band(3, 4, False), 3), (resize._linear_band(1, 3, True), 1),
                    (resize._avg_band(7, 3)[0], 7), (resize._avg_band(2, 5)[0], 2)]:
        m = len(band[0])
        dense = resize._band_apply(np.eye(n)[None, None], 3, band, np)[0, 0]  # (n, m)
        back = resize._band_apply(np.eye(m)[None, None], 3, resize._transpose_band(band, n),
                                  np)[0, 0]
        np.testing.assert_allclose(back, dense.T, atol=1e-15)


# ================================================================ ONNX


def _onnx_roundtrip(name, inputs, params, attrs):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from cnnc.runtime.onnx_export import export

    p = PRIMS[name]
    want = p.kernel(*[np.asarray(a, np.float32) for a in inputs + params], **attrs)
    step = Step(Op(name), "layer", [f"x{i}" for i in range(len(inputs))], dict(attrs),
                [f"layer.p{i}" for i in range(len(params))], tuple(want.shape[1:]))
    plan = Plan("one", {f"x{i}": tuple(x.shape[1:]) for i, x in enumerate(inputs)},
                {"y": "layer"}, [step],
                {k: tuple(np.shape(w)) for k, w in zip(step.params, params)}, {}, {})
    proto = export(plan, dict(zip(step.params, params)))
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    feeds = {f"x{i}": np.asarray(x, dtype=np.float32) for i, x in enumerate(inputs)}
    (got,) = session.run(["y"], feeds)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    return [node.op_type for node in proto.graph.node]


@pytest.mark.parametrize("bias", [True, False])
def test_onnx_output_pad_past_the_stride(rng, bias):
    x = rng.standard_normal((2, 3, 3, 4))
    params = [rng.standard_normal((3, 2, 3, 2))] + ([rng.standard_normal(2)] if bias else [])
    ops = _onnx_roundtrip("conv_transpose2d", [x], params,
                          dict(stride=1, pad=0, output_pad=(1, 2), dilation=(2, 3), groups=1))
    assert ops[:2] == ["ConvTranspose", "Pad"]


def test_onnx_output_pad_taken_off_the_end_padding(rng):
    x = rng.standard_normal((2, 4, 3, 3))
    params = [rng.standard_normal((4, 1, 3, 3)), rng.standard_normal(2)]
    ops = _onnx_roundtrip("conv_transpose2d", [x], params,
                          dict(stride=3, pad=(2, 1), output_pad=(2, 1), dilation=1, groups=2))
    assert ops == ["ConvTranspose", "Identity"]


@pytest.mark.parametrize("kind", ["adaptive_avgpool", "adaptive_maxpool"])
@pytest.mark.parametrize("shape, size, first", [
    ((2, 3, 10), 1, "Global"), ((2, 3, 10), 5, "Pool"), ((2, 3, 10), 4, "Gather"),
    ((2, 2, 6, 4), (3, 4), "Pool"), ((2, 2, 7, 4), (3, 3), "Gather"),
    ((1, 2, 5, 4, 6), (2, 4, 4), "Gather"), ((1, 2, 4, 4, 6), (2, 1, 3), "Pool"),
])
def test_onnx_adaptive_pools(rng, kind, shape, size, first):
    ops = _onnx_roundtrip(kind, [rng.standard_normal(shape)], [], dict(size=size))
    assert first in ops[0]


@pytest.mark.parametrize("shape, factor, mode, align", [
    ((2, 3, 4), 3, "nearest", False), ((2, 3, 4), 3, "linear", False),
    ((2, 3, 4), 2, "linear", True), ((1, 2, 2, 3, 2), (2, 1, 3), "nearest", False),
])
def test_onnx_upsample_on_other_ranks(rng, shape, factor, mode, align):
    ops = _onnx_roundtrip("upsample", [rng.standard_normal(shape)], [],
                          dict(factor=factor, mode=mode, align_corners=align))
    assert ops[0] == "Resize"


# ================================================================ a network of them

UNET = """network unet
input x: [3, 8, 8]
e1 = x -> conv(4, 3, pad=1) -> relu
e2 = e1 -> maxpool(2) -> conv(8, 3, pad=1) -> relu
u1 = e2 -> conv_transpose(4, 2, stride=2) as up
d1 = concat(e1, u1) -> conv(4, 3, pad=1) -> relu
u2 = e2 -> conv_transpose(2, 3, stride=2, pad=1, output_pad=1, groups=2) -> upsample(1)
u3 = e2 -> upsample(2) -> conv(2, 1)
m = concat(d1, u2, u3)
output y = m -> adaptive_avgpool([3, 2]) -> adaptive_maxpool(1) -> flatten -> dense(2)
"""


def test_a_small_unet_summary():
    net = cnnc.check(UNET)
    assert net.ok, net.render()
    node = {n.name: n for n in net.layers}
    assert node["u1.up"].shape == (4, 8, 8) and node["u1.up"].macs == 8 * 4 * 4 * 4 * 4
    assert node["u2.conv_transpose1"].shape == (2, 8, 8)
    assert node["m.concat1"].shape == (8, 8, 8)


@pytest.mark.torch
def test_a_small_unet_matches_torch_in_inference_and_training():
    torch = pytest.importorskip("torch")
    from cnnc.runtime.torch_ref import TorchPlan

    model = cnnc.compile(UNET).build(backend="numpy", dtype="float64", seed=4)
    before = {k: v.copy() for k, v in model.state().items()}
    x = np.random.default_rng(5).standard_normal((3, 3, 8, 8))
    ref = TorchPlan(model.plan, {k: v.copy() for k, v in before.items()})
    want = ref({"x": torch.from_numpy(x)})["y"].numpy()
    np.testing.assert_allclose(model(x), want, rtol=1e-9, atol=1e-10)  # the planned schedule
    y = model.forward(x)
    dy = np.random.default_rng(6).standard_normal(y.shape)
    dx = model.backward(dy)
    trainable = {k: v.requires_grad_() for k, v in ref.params.items() if k in model.plan.params}
    tx = torch.from_numpy(x).requires_grad_()
    ref({"x": tx})["y"].backward(torch.from_numpy(dy))
    np.testing.assert_allclose(dx, tx.grad.numpy(), **F64)
    for key, t in trainable.items():
        np.testing.assert_allclose(model.grads[key], t.grad.numpy(), err_msg=key, **F64)


def test_a_small_unet_exports_to_onnx():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = cnnc.compile(UNET).build(backend="numpy", dtype="float32", seed=7)
    session = ort.InferenceSession(model.export().SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    x = np.random.default_rng(8).standard_normal((2, 3, 8, 8)).astype(np.float32)
    (got,) = session.run(["y"], {"x": x})
    np.testing.assert_allclose(got, model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("n, m", [(200, 3), (3, 70), (40, 1)])
def test_wide_adaptive_windows_are_reduced_in_one_call(rng, kind, n, m):
    """Windows (or, backwards, holders) wider than WIDE_BAND taps take the gathered path."""
    torch = pytest.importorskip("torch")
    fn = getattr(torch.nn.functional, f"adaptive_{kind}_pool1d")
    forward = getattr(resize, f"adaptive_{kind}pool_forward")
    backward = getattr(resize, f"adaptive_{kind}pool_backward")
    x = rng.permutation(2 * 3 * n).reshape(2, 3, n) * 0.01
    _torch_check(lambda t: fn(t, m), lambda a: forward(a, size=m), backward, [x], rng)
