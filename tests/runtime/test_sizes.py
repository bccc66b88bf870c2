"""Sizes known before anything is allocated: what training keeps, estimated from the plan
(exactly what a training forward keeps, for every primitive), a model too big to build
refused with its largest layer, the size and the memory available, initialisation that
never holds more than the model, and weight files with NaN, infinite or complex values."""

from __future__ import annotations

import copy
import json
import math
import time
import tracemalloc

import numpy as np
import pytest

import cnnc
from cnnc.compiler.plan import Plan, Step
from cnnc.ops import PRIMITIVES, Op
from cnnc.runtime import files
from cnnc.runtime.model import (
    Model, TooLargeError, WeightFileError, arrays_in, estimate_saved_bytes,
    param_bytes,
)

MISC = """\
network misc
input x: [3, 9, 7]
a = x -> layernorm -> groupnorm(3) -> dropout(0.5) -> adaptive_maxpool([4, 3]) -> hardswish
b = x -> dropout(0.0) -> upsample(2) -> conv_transpose(3, 3) -> adaptive_avgpool(2) -> gelu
a2 = a -> global_avgpool
b2 = b -> global_avgpool
output y = concat(a2, b2) -> flatten -> dense(4) -> sigmoid -> flatten -> dense(2)
"""
EVERY_OP = """
network every
input x: [4, 10, 10]
a = x -> conv(8, 3, pad=same) -> batchnorm -> prelu -> lrn(3) -> leaky_relu(0.2)
b = x -> maxpool(3, stride=2, pad=1, ceil=true) -> elu -> avgpool(2, stride=1, count_pad=false)
c = x -> conv(8, [3, 5], stride=2, pad=[1, 2], groups=4, bias=false) -> selu
d = concat(b, c) -> swish(1.5) -> softplus -> sigmoid -> tanh -> maxout(2) -> silu
e = a -> avgpool(2, ceil=true) -> conv(8, 1)
e2 = a -> maxpool(2) -> conv(8, 1, dilation=1) -> dropout(0.3)
f = add(e, e2) -> relu
d2 = d -> conv(8, 1)
g = concat(f, d2) -> global_avgpool -> flatten
h = d -> global_maxpool -> flatten
output logits = concat(g, h) -> dense(6) -> softmax
"""


def _sibling(name):
    """Another test module of this folder (tests are imported by path, not as a package)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_cnnc_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _measured(model, batch):
    rng = np.random.default_rng(0)
    model.forward({k: rng.standard_normal((batch,) + tuple(s))
                   for k, s in model.plan.inputs.items()}, train=True)
    return model.saved_bytes()


@pytest.mark.parametrize("source", ["examples/lenet5.cnn", "examples/digits.cnn",
                                    "examples/ng_39x39.cnn", "examples/nin_cifar10.cnn",
                                    EVERY_OP, MISC])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_estimate_is_what_a_training_forward_keeps(source, dtype):
    compiled = cnnc.compile(source)
    model = compiled.build(backend="numpy", dtype=dtype)
    for batch in (2, 3):
        assert estimate_saved_bytes(compiled.plan, dtype, batch) == _measured(model, batch)


def _root(a):
    while getattr(a, "base", None) is not None and hasattr(a.base, "nbytes"):
        a = a.base
    return a


def _kept(saved, params) -> int:
    """Model.saved_bytes over one step's ``saved``."""
    exclude = {id(_root(p)) for p in params if p is not None}
    seen = {}
    for item in arrays_in(saved):
        root = _root(item)
        if id(root) not in exclude:
            seen[id(root)] = int(root.nbytes)
    return sum(seen.values())


CASES = [pytest.param(name, i, id=f"{name}-{i}") for name, p in PRIMITIVES.items()
         for i in range(len(p.examples(np.random.default_rng(0))))]


@pytest.mark.parametrize("name, index", CASES)
def test_the_estimate_knows_every_primitive(name, index):
    """Every primitive of the registry, on its own examples: the plan-only estimate
    (runtime/model.py) equals what its training forward keeps, for the primitives it knows,
    and is never less for one it does not know yet."""
    p = PRIMITIVES[name]
    ex = copy.deepcopy(p.examples(np.random.default_rng(0))[index])
    for dtype in (np.float32, np.float64):
        xs = [np.asarray(a, dtype=dtype) for a in ex.inputs]
        ws = [None if w is None else np.asarray(w, dtype=dtype) for w in ex.params]
        try:
            y, saved = p.forward(*xs, *ws, train=True, rng=np.random.default_rng(1), **ex.attrs)
        except ValueError:
            continue  # an example training does not take (one value per channel)
        names = [f"in{i}" for i in range(len(xs))]
        keys = [f"w{i}" for i, w in enumerate(ws) if w is not None]
        step = Step(Op(name), "out", names, dict(ex.attrs), keys, tuple(y.shape[1:]))
        plan = Plan("one", {n: tuple(x.shape[1:]) for n, x in zip(names, xs)}, {"y": "out"},
                    [step], {k: tuple(w.shape) for k, w in zip(keys, [w for w in ws if
                                                                    w is not None])}, {})
        estimate, kept = estimate_saved_bytes(plan, dtype, xs[0].shape[0]), _kept(saved, ws)
        if p.keeps is not None:  # the primitive says what it keeps: exactly that
            assert estimate == kept, dtype
        else:  # a primitive that says nothing: never less than it keeps
            assert estimate >= kept, dtype


def test_summary_train_builds_and_runs_nothing(monkeypatch, capsys):
    from cnnc.cli import main

    monkeypatch.setattr(Model, "__init__", lambda *a, **k: pytest.fail("a model was built"))
    started = time.perf_counter()
    assert main(["summary", "examples/vgg16.cnn", "--train", "--format", "json"]) == 0
    assert time.perf_counter() - started < 5
    rep = json.loads(capsys.readouterr().out)
    plan = cnnc.compile("examples/vgg16.cnn").plan
    assert rep["train_saved_bytes"] == estimate_saved_bytes(plan, "float32", 2) // 2


# ---- too big to build ---------------------------------------------------------------------------

FORGOTTEN_POOL = """\
network big
input image: [3, 224, 224]
output y = image -> conv(64, 3, pad=1) -> relu -> flatten -> dense(4096) -> relu -> dense(10)
"""


def test_a_model_too_big_to_build_is_refused_before_allocating():
    # 13 billion parameters: 49 GiB in float32, 98 GiB in float64
    plan = cnnc.compile(FORGOTTEN_POOL).plan
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(TooLargeError) as err:
            _build_with_memory(plan, 8 << 30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 1
    assert peak < 10 << 20
    assert isinstance(err.value, MemoryError)
    assert str(err.value) == (
        "building network big in float64 needs 98.0 GiB for its parameters, more than the "
        "8.0 GiB of memory available; the largest layer is `y.dense1` (dense at "
        "<string>:3:62): 98.0 GiB of parameters")
    assert err.value.needed == param_bytes(plan, "float64") and err.value.available == 8 << 30


def _build_with_memory(plan, available, dtype="float64"):
    original = files.available_memory
    files.available_memory = lambda: available
    try:
        return Model(plan, backend="numpy", dtype=dtype)
    finally:
        files.available_memory = original


def test_a_model_of_exabytes_is_refused_on_any_machine():
    plan = cnnc.compile("network vast\ninput x: [1000000000]\n"
                        "output y = x -> dense(1000000000)\n").plan
    with pytest.raises(TooLargeError) as err:
        cnnc.compile("network vast\ninput x: [1000000000]\n"
                     "output y = x -> dense(1000000000)\n").build(backend="numpy")
    assert str(err.value).startswith("building network vast in float32 needs 3.5 EiB for its "
                                     "parameters, more than the ")
    assert str(err.value).endswith("the largest layer is `y.dense1` (dense at <string>:3:17): "
                                   "3.5 EiB of parameters")
    assert param_bytes(plan, "float32") == 4 * (10 ** 18 + 10 ** 9)


def test_a_model_that_fits_is_built(monkeypatch):
    plan = cnnc.compile("examples/lenet5.cnn").plan
    monkeypatch.setattr(files, "available_memory", lambda: param_bytes(plan, "float32"))
    Model(plan, backend="numpy")
    monkeypatch.setattr(files, "available_memory", lambda: None)  # unknown: no refusal
    Model(plan, backend="numpy")


# ---- initialisation -----------------------------------------------------------------------------


def _old_init(plan, seed, dtype):
    """The initialisation as it was: one float64 draw per array, then cast."""
    rng = np.random.default_rng(seed)
    shapes = dict(plan.params)
    shapes.update(plan.buffers)
    out = {}
    for key, shape in shapes.items():
        rule = plan.initial[key]
        if rule == "ones":
            value = np.ones(shape)
        elif rule == "zeros":
            value = np.zeros(shape)
        elif rule not in ("kaiming_uniform", "fan_in_uniform"):
            value = np.full(shape, float(rule))
        else:
            fan_in = int(np.prod(shapes[key.rsplit(".", 1)[0] + ".weight"][1:]))
            value = rng.uniform(-1 / np.sqrt(fan_in), 1 / np.sqrt(fan_in), size=shape)
        out[key] = np.asarray(value, dtype=dtype)
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_initial_values_are_unchanged(dtype):
    for source in ("examples/alexnet.cnn", EVERY_OP):  # alexnet: arrays over one chunk
        plan = cnnc.compile(source).plan
        model = Model(plan, backend="numpy", seed=3, dtype=dtype)
        want = _old_init(plan, 3, dtype)
        for key, value in want.items():
            assert model.params[key].dtype == np.dtype(dtype)
            np.testing.assert_array_equal(model.params[key], value, err_msg=key)


def test_initialisation_holds_little_more_than_the_model():
    plan = cnnc.compile("network wide\ninput x: [4096]\noutput y = x -> dense(4096) "
                        "-> dense(4096)\n").plan
    size = param_bytes(plan, "float32")  # 128 MiB
    tracemalloc.start()
    try:
        model = Model(plan, backend="numpy", dtype="float32")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < size + (16 << 20)  # the model and one chunk of draws, not 3x
    assert sum(v.nbytes for v in model.params.values()) == size


# ---- weights that are not numbers ---------------------------------------------------------------

SMALL = "network s\ninput x: [3]\noutput y = x -> dense(2)\n"


@pytest.mark.parametrize("change, message", [
    (lambda w: w["y.dense1.weight"].__setitem__((1, 2), np.nan),
     "weight file {p}: `y.dense1.weight` holds 1 NaN value (the first at [1, 2], nan); cnnc "
     "refuses weights that are not finite in float32"),
    (lambda w: w["y.dense1.bias"].__setitem__(slice(None), [np.inf, -np.inf]),
     "weight file {p}: `y.dense1.bias` holds 2 infinite values (the first at [0], inf); cnnc "
     "refuses weights that are not finite in float32"),
    (lambda w: w.__setitem__("y.dense1.bias", np.array([1e300, np.nan])),
     "weight file {p}: `y.dense1.bias` holds 1 NaN value and 1 value too large for float32 "
     "(the first at [0], 1e+300); cnnc refuses weights that are not finite in float32"),
    (lambda w: w.__setitem__("y.dense1.bias", np.zeros(2, complex)),
     "cannot read weight file {p}: member `y.dense1.bias` has dtype complex128 (complex "
     "numbers); cnnc reads integers and floating-point numbers here"),
    (lambda w: w.__setitem__("y.dense1.bias", np.zeros(2, bool)),
     "cannot read weight file {p}: member `y.dense1.bias` has dtype bool (booleans); cnnc "
     "reads integers and floating-point numbers here"),
    (lambda w: w.__setitem__("y.dense1.bias", np.array(["a", "b"])),
     "cannot read weight file {p}: member `y.dense1.bias` has dtype <U1 (text); cnnc reads "
     "integers and floating-point numbers here"),
])
def test_weights_that_are_not_finite_numbers_are_refused(tmp_path, change, message):
    model = cnnc.compile(SMALL).build(backend="numpy", dtype="float32")
    weights = {k: v.astype(np.float64) for k, v in model.state().items()}
    change(weights)
    path = tmp_path / "w.npz"
    np.savez(path, **weights)
    before = model.state()
    with pytest.raises(WeightFileError) as err:
        model.load(path)
    assert str(err.value) == message.format(p=path)
    for key, value in before.items():
        np.testing.assert_array_equal(model.params[key], value)


def test_a_weight_bomb_is_refused_by_its_header(tmp_path, monkeypatch):
    """A member that would inflate to 1 GiB but whose header does not fit the model is
    refused without reading a byte of its data."""
    _bomb = _sibling("test_files")._bomb

    model = cnnc.compile(SMALL).build(backend="numpy")
    path = _bomb(tmp_path / "w.npz", 1 << 27, member="y.dense1.weight.npy")
    monkeypatch.setattr(files, "_read_data", lambda *a: pytest.fail("data was read"))
    with pytest.raises(WeightFileError) as err:
        model.load(path)
    assert str(err.value) == (f"weight file {path} does not fit network s:\n"
                              "  missing y.dense1.bias [2]\n"
                              "  y.dense1.weight has shape [134217728], expected [2, 3]")
    assert math.isfinite(model.params["y.dense1.weight"].sum())
