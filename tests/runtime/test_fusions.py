"""The memory plan's fusions of section 9's layers into a convolution (compiler/memory.py):
a `scale` folded into the convolution's per-channel scale and bias, a per-channel `mul`
gate multiplied in by the convolution's epilogue, hardswish as a fused activation; where a
fusion must not happen (an activation before the scale, a gate computed after the
convolution, a map read twice), it does not. Every planned run is compared with the
step-by-step interpreter, with the compiled kernels on and off."""

import numpy as np
import pytest

import cnnc
from cnnc.compiler.memory import plan_memory
from cnnc.ops import Op

HEAD = "network f\ninput x: [4, 7, 6]\n"


def _plan(body):
    return plan_memory(cnnc.compile(HEAD + body).plan)


def _check_runs(body, n=3):
    """The planned schedule equals the interpreter, compiled kernels on and off."""
    from cnnc.ops import conv

    model = cnnc.compile(HEAD + body).build(backend="numpy", dtype="float64", seed=3)
    rng = np.random.default_rng(0)
    for key, value in model.params.items():  # non-trivial scales, biases and statistics
        if key.endswith(("weight", "bias", "running_mean")) and value.ndim == 1:
            value[...] = rng.uniform(0.5, 1.5, value.shape)
    model.mark_changed()
    x = rng.standard_normal((n, 4, 7, 6))
    want = model.interpret(x)
    np.testing.assert_allclose(model(x), want, rtol=1e-11, atol=1e-12)
    try:
        from cnnc.ops import fast
    except ImportError:
        return
    was = fast.ENABLED
    fast.ENABLED = not was
    try:
        model.executor.invalidate()
        np.testing.assert_allclose(model(x), want, rtol=1e-11, atol=1e-12)
    finally:
        fast.ENABLED = was
    assert conv is not None


def _only(eplan, op):
    [e] = [e for e in eplan.execs if e.op is op]
    return e


@pytest.mark.parametrize("body, scales", [
    ("output y = x -> conv(8, 3, pad=1) -> scale\n", 1),
    ("output y = x -> conv(8, 3, pad=1, bias=false) -> batchnorm -> scale -> relu\n", 1),
    ("output y = x -> conv(8, 1) -> scale -> scale\n", 2),
    ("output y = x -> conv(8, 3, pad=1, groups=4) -> scale(bias=true)\n", 1),
])
def test_a_scale_after_a_convolution_is_folded_in(body, scales):
    eplan = _plan(body)
    conv = _only(eplan, Op.CONV2D)
    assert len(conv.scales) == scales
    assert not [e for e in eplan.execs if e.op is Op.SCALE]
    _check_runs(body)


@pytest.mark.parametrize("body", [
    "output y = x -> conv(8, 3, pad=1) -> relu -> scale\n",  # the activation comes first
    "a = x -> conv(8, 1)\nb = a -> scale\noutput y = add(a, b)\n",  # a read twice
])
def test_a_scale_that_cannot_fold_stays_a_step(body):
    eplan = _plan(body)
    assert [e for e in eplan.execs if e.op is Op.SCALE]
    _check_runs(body)


def test_a_batchnorm_after_a_folded_scale_stays_a_step():
    """The fold applies the batchnorm before the scales; one after them cannot join."""
    body = "output y = x -> conv(8, 1) -> scale -> batchnorm\n"
    eplan = _plan(body)
    assert len(_only(eplan, Op.CONV2D).scales) == 1
    assert [e for e in eplan.execs if e.op is Op.BATCHNORM]
    _check_runs(body)


GATED = [
    # a gate from the input, made before the convolution it multiplies
    "g = x -> global_avgpool -> conv(8, 1) -> sigmoid\n"
    "a = x -> conv(8, 3, pad=1) -> relu\noutput y = mul(a, g)\n",
    # the gate first, one gate value for every channel, a depthwise convolution
    "g = x -> global_maxpool -> conv(1, 1) -> hardsigmoid\n"
    "a = x -> conv(4, 3, pad=1, groups=4) -> batchnorm -> hardswish\noutput y = mul(g, a)\n",
    # a strided convolution with a gelu (applied by NumPy after the compiled epilogue)
    "g = x -> global_avgpool -> conv(6, 1) -> sigmoid\n"
    "a = x -> conv(6, 3, stride=2) -> gelu\noutput y = mul(a, g)\n",
    # pointwise
    "g = x -> global_avgpool -> conv(5, 1) -> sigmoid\n"
    "a = x -> conv(5, 1)\noutput y = mul(a, g)\n",
]


def _the_gated_convolution(body, field):
    """The plan of ``body`` has no MUL left and one CONV2D that took its gate as ``field``
    (``gate`` or ``in_gate``), read last among its inputs; and it runs as the interpreter
    does."""
    eplan = _plan(body)
    assert not [e for e in eplan.execs if e.op is Op.MUL]
    gated = [e for e in eplan.execs if getattr(e, field) is not None]
    assert len(gated) == 1 and gated[0].op is Op.CONV2D
    assert gated[0].inputs[-1] == getattr(gated[0], field)
    _check_runs(body)


@pytest.mark.parametrize("body", GATED)
def test_a_per_channel_gate_after_a_convolution_joins_its_epilogue(body):
    _the_gated_convolution(body, "gate")


@pytest.mark.parametrize("body", [
    # the convolution runs before the gate is made: the product stays a step
    "a = x -> conv(8, 3, pad=1)\ng = x -> global_avgpool -> conv(8, 1) -> sigmoid\n"
    "output y = mul(a, g)\n",
    # squeeze-and-excitation proper: the map is read by the pool too
    "a = x -> conv(8, 3, pad=1) -> relu\n"
    "g = a -> global_avgpool -> conv(8, 1) -> sigmoid\noutput y = mul(a, g)\n",
    # a full-size second factor is no gate
    "a = x -> conv(4, 3, pad=1)\noutput y = mul(a, x)\n",
])
def test_a_product_that_is_no_fusable_gate_stays_a_step(body):
    _the_product_stays(body, "gate")


def _the_product_stays(body, field):
    """The plan of ``body`` keeps its MUL and no step took a gate as ``field``; it runs as
    the interpreter does."""
    eplan = _plan(body)
    assert [e for e in eplan.execs if e.op is Op.MUL]
    assert all(getattr(e, field) is None for e in eplan.execs)
    _check_runs(body)


def test_hardswish_after_a_convolution_is_its_epilogue():
    body = "output y = x -> conv(8, 3, pad=1, bias=false) -> batchnorm -> hardswish\n"
    eplan = _plan(body)
    conv = _only(eplan, Op.CONV2D)
    assert conv.fold and conv.attrs["act"][0] == "hardswish"
    assert len(eplan.execs) == 1
    _check_runs(body)


def test_the_gate_of_a_1d_and_a_3d_convolution():
    for head, body in [
        ("network f\ninput x: [4, 9]\n",
         "g = x -> global_avgpool -> conv1d(6, 1) -> sigmoid\n"
         "a = x -> conv1d(6, 3, pad=1)\noutput y = mul(a, g)\n"),
        ("network f\ninput x: [2, 4, 5, 5]\n",
         "g = x -> global_avgpool -> conv3d(3, 1) -> sigmoid\n"
         "a = x -> conv3d(3, 3, pad=1)\noutput y = mul(a, g)\n"),
    ]:
        model = cnnc.compile(head + body).build(backend="numpy", dtype="float64", seed=1)
        eplan = plan_memory(model.plan)
        assert sum(e.gate is not None for e in eplan.execs) == 1
        (shape,) = model.plan.inputs.values()
        x = np.random.default_rng(2).standard_normal((3,) + tuple(shape))
        np.testing.assert_allclose(model(x), model.interpret(x), rtol=1e-11, atol=1e-12)


def test_convnext_folds_every_layer_scale():
    """ConvNeXt-Tiny's 18 blocks each end in a layer scale after a 1x1 convolution."""
    import os

    path = os.path.join(os.path.dirname(cnnc.__file__), "examples", "convnext_tiny.cnn")
    eplan = plan_memory(cnnc.compile(path).plan)
    assert sum(len(e.scales) for e in eplan.execs) == 18
    assert not [e for e in eplan.execs if e.op is Op.SCALE]


INPUT_GATED = [
    # squeeze-and-excitation: the map read by the pool and the mul, the product by a 1x1
    "a = x -> conv(8, 3, pad=1) -> relu\n"
    "g = a -> global_avgpool -> conv(2, 1) -> relu -> conv(8, 1) -> sigmoid\n"
    "output y = mul(a, g) -> conv(6, 1, bias=false) -> batchnorm\n",
    # the gate first in the mul, one value for every channel, an activation after
    "a = x -> conv(5, 3, pad=1)\ng = x -> global_avgpool -> conv(1, 1) -> sigmoid\n"
    "output y = mul(g, a) -> conv(7, 1) -> relu\n",
]


@pytest.mark.parametrize("body", INPUT_GATED)
def test_a_gate_before_a_1x1_convolution_joins_its_input(body):
    _the_gated_convolution(body, "in_gate")


def test_a_gate_in_and_a_gate_out_of_one_convolution():
    body = ("a = x -> conv(8, 3, pad=1)\ng = a -> global_avgpool -> conv(8, 1) -> sigmoid\n"
            "h = x -> global_avgpool -> conv(6, 1) -> sigmoid\n"
            "b = mul(a, g) -> conv(6, 1)\noutput y = mul(b, h)\n")
    eplan = _plan(body)
    [conv] = [e for e in eplan.execs if e.in_gate is not None]
    assert conv.gate is not None and conv.inputs[-2:] == [conv.in_gate, conv.gate]
    _check_runs(body)


@pytest.mark.parametrize("body", [
    # a 3x3 convolution after the product
    "a = x -> conv(8, 3, pad=1)\ng = a -> global_avgpool -> conv(8, 1) -> sigmoid\n"
    "output y = mul(a, g) -> conv(4, 3, pad=1)\n",
    # a strided 1x1
    "a = x -> conv(8, 3, pad=1)\ng = a -> global_avgpool -> conv(8, 1) -> sigmoid\n"
    "output y = mul(a, g) -> conv(4, 1, stride=2)\n",
    # the product read twice
    "a = x -> conv(8, 3, pad=1)\ng = a -> global_avgpool -> conv(8, 1) -> sigmoid\n"
    "m = mul(a, g)\nb = m -> conv(8, 1)\noutput y = add(m, b)\n",
])
def test_a_gate_that_cannot_join_the_next_input_stays_a_step(body):
    _the_product_stays(body, "in_gate")


def test_efficientnet_multiplies_every_squeeze_and_excitation_into_its_projection():
    import os

    path = os.path.join(os.path.dirname(cnnc.__file__), "examples", "efficientnet_b0.cnn")
    eplan = plan_memory(cnnc.compile(path).plan)
    assert not [e for e in eplan.execs if e.op is Op.MUL]
    assert sum(e.in_gate is not None for e in eplan.execs) == 16


def test_an_input_gate_in_float32_matches_the_interpreter():
    """float32: the compiled 1x1 kernel multiplies the gate in as it packs its input."""
    body = INPUT_GATED[0]
    model = cnnc.compile(HEAD + body).build(backend="numpy", dtype="float32", seed=3)
    x = np.random.default_rng(1).standard_normal((5, 4, 7, 6)).astype(np.float32)
    want = model.interpret(x.astype(np.float64))
    np.testing.assert_allclose(model(x), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_an_input_gate_for_a_kernel_without_it():
    """A backend whose convolutions take no gates (CuPy's): the executor multiplies the
    input first."""
    model = cnnc.compile(HEAD + INPUT_GATED[0]).build(backend="numpy", dtype="float64", seed=3)
    x = np.random.default_rng(2).standard_normal((3, 4, 7, 6))
    model.executor.accepts_gate = frozenset()
    np.testing.assert_allclose(model(x), model.interpret(x), rtol=1e-11, atol=1e-12)


def test_no_input_gate_for_a_backend_whose_kernels_take_none():
    plan = cnnc.compile(HEAD + INPUT_GATED[0]).plan
    eplan = plan_memory(plan, input_gates=False)
    assert [e for e in eplan.execs if e.op is Op.MUL]
    assert all(e.in_gate is None for e in eplan.execs)


def test_the_gemm_path_takes_an_input_gate_without_a_map_sized_product(monkeypatch):
    """Where the 1x1 tiles do not run (float64 here), conv2d scales each image's weights
    by its gate: the same result as the product first."""
    from cnnc.ops.conv import conv2d

    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 6, 5, 4))
    w = rng.standard_normal((7, 6, 1, 1))
    g = rng.uniform(0, 1, (3, 6, 1, 1))
    np.testing.assert_allclose(conv2d(x, w, act="relu", in_gate=g),
                               conv2d(x * g, w, act="relu"), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="in_gate must be .3, 6 or 1, 1.... .one factor per "
                                         "image and input channel"):
        conv2d(x, w, in_gate=np.ones((3, 7, 1, 1)))
