"""Optimizers and schedules: PyTorch's update rules, step for step.

Each optimizer is run side by side with its torch.optim counterpart on the same parameters
and the same sequence of gradients; hand-computed steps check the rules without torch.
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest

from cnnc.runtime.optim import (
    SGD,
    Adam,
    AdamW,
    OptimizerStateError,
    Schedule,
    make_optimizer,
)

SHAPES = {"conv.weight": (4, 3, 3, 3), "conv.bias": (4,), "dense.weight": (5, 36),
          "dense.bias": (5,)}
STEPS = 6


def fresh_params(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(dtype) for k, s in SHAPES.items()}


def grad_sequence(steps=STEPS, seed=1):
    rng = np.random.default_rng(seed)
    return [{k: rng.normal(size=s) for k, s in SHAPES.items()} for _ in range(steps)]


# ---- hand-computed steps, no torch -------------------------------------------------------------


def test_sgd_plain_step():
    p = {"w": np.array([1.0, -2.0])}
    SGD(p, lr=0.5).step({"w": np.array([0.2, 0.4])})
    np.testing.assert_allclose(p["w"], [0.9, -2.2])


def test_sgd_momentum_and_decay_by_hand():
    p = {"w": np.array([1.0])}
    opt = SGD(p, lr=0.1, momentum=0.9, weight_decay=0.5)
    opt.step({"w": np.array([1.0])})  # g = 1 + 0.5 = 1.5, buf = 1.5, p = 1 - 0.15 = 0.85
    np.testing.assert_allclose(p["w"], [0.85])
    opt.step({"w": np.array([1.0])})  # g = 1.425, buf = 1.35 + 1.425 = 2.775, p = 0.5725
    np.testing.assert_allclose(p["w"], [0.5725])


def test_sgd_nesterov_by_hand():
    p = {"w": np.array([0.0])}
    opt = SGD(p, lr=1.0, momentum=0.5, nesterov=True)
    opt.step({"w": np.array([1.0])})  # buf = 1, step = 1 + 0.5 * 1 = 1.5
    np.testing.assert_allclose(p["w"], [-1.5])
    opt.step({"w": np.array([1.0])})  # buf = 1.5, step = 1 + 0.75
    np.testing.assert_allclose(p["w"], [-3.25])


def test_adam_first_step_is_lr_times_sign():
    # after one step m/(1-b1) = g and sqrt(v/(1-b2)) = |g|: the step is lr * sign(g)
    p = {"w": np.array([1.0, 1.0, 1.0])}
    Adam(p, lr=0.01, eps=0.0).step({"w": np.array([3.0, -0.001, 250.0])})
    np.testing.assert_allclose(p["w"], [0.99, 1.01, 0.99], rtol=1e-12)


def test_adamw_decays_the_weight_not_the_gradient():
    # zero gradient: Adam's moments stay 0, only the decoupled decay moves the weight
    p = {"w": np.array([2.0])}
    AdamW(p, lr=0.1, weight_decay=0.5, eps=1e-8).step({"w": np.array([0.0])})
    np.testing.assert_allclose(p["w"], [2.0 * (1 - 0.1 * 0.5)])


def test_decay_weights_only_leaves_one_dimensional_parameters_alone():
    params = {"w": np.ones((2, 2)), "b": np.ones(2)}
    opt = SGD(params, lr=0.1, weight_decay=1.0, decay="weights")
    opt.step({"w": np.zeros((2, 2)), "b": np.zeros(2)})
    np.testing.assert_allclose(params["w"], 0.9)
    np.testing.assert_allclose(params["b"], 1.0)


def test_updates_in_place_and_keeps_dtype():
    params = fresh_params(dtype=np.float32)
    before = {k: v for k, v in params.items()}
    opt = Adam(params, lr=0.01)
    opt.step({k: g.astype(np.float32) for k, g in grad_sequence(1)[0].items()})
    for k in params:
        assert params[k] is before[k]
        assert params[k].dtype == np.float32
        assert opt.slots["exp_avg"][k].dtype == np.float32


def test_model_source_updates_trainable_params_only():
    # a Model-like object: plan.params lists the trainable keys; buffers are not touched
    model = SimpleNamespace(
        plan=SimpleNamespace(params={"w": (2,)}, buffers={"bn.running_mean": (2,)}),
        params={"w": np.ones(2), "bn.running_mean": np.ones(2)},
        grads={"w": np.ones(2)},
    )
    opt = SGD(model, lr=0.5, weight_decay=1.0)
    opt.step()
    np.testing.assert_allclose(model.params["w"], 0.0)
    np.testing.assert_allclose(model.params["bn.running_mean"], 1.0)
    # the weights may be replaced wholesale (Model.load does): the optimizer follows
    model.params = {"w": np.full(2, 4.0), "bn.running_mean": np.ones(2)}
    opt.step()
    np.testing.assert_allclose(model.params["w"], 4.0 - 0.5 * (1 + 4))


def test_missing_gradient_skips_the_parameter():
    params = {"a": np.ones(2), "b": np.ones(2)}
    opt = Adam(params, lr=0.1)
    opt.step({"a": np.ones(2)})
    assert opt.counts == {"a": 1, "b": 0}
    np.testing.assert_allclose(params["b"], 1.0)


@pytest.mark.parametrize("make", [
    lambda p: SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda p: Adam(p, lr=0.01, weight_decay=1e-3),
    lambda p: AdamW(p, lr=0.01, betas=(0.8, 0.99)),
])
def test_state_dict_resumes_exactly(make):
    grads = grad_sequence()
    straight = fresh_params()
    opt = make(straight)
    for g in grads:
        opt.step(g)

    resumed = fresh_params()
    first = make(resumed)
    for g in grads[:3]:
        first.step(g)
    state = first.state_dict()
    copy = {k: v.copy() for k, v in resumed.items()}
    second = make(copy)
    second.lr = 123.0  # overwritten by the state
    second.load_state_dict(state)
    assert second.lr == first.lr
    for g in grads[3:]:
        second.step(g)
    for k in straight:
        np.testing.assert_array_equal(copy[k], straight[k])


def test_load_state_dict_refuses_and_changes_nothing():
    params = fresh_params()
    adam = Adam(params, lr=0.01)
    adam.step(grad_sequence(1)[0])
    sgd = SGD(fresh_params(), lr=0.1, momentum=0.9)
    with pytest.raises(OptimizerStateError, match="saved optimizer is 'adam', this one is 'sgd'"):
        sgd.load_state_dict(adam.state_dict())
    other = Adam({"conv.weight": np.zeros((2, 2)), "conv.bias": np.zeros(4),
                  "dense.weight": np.zeros((5, 36)), "dense.bias": np.zeros(5)}, lr=0.5)
    with pytest.raises(OptimizerStateError) as err:
        other.load_state_dict(adam.state_dict())
    assert "exp_avg of conv.weight has shape [4, 3, 3, 3], expected [2, 2]" in str(err.value)
    assert other.lr == 0.5
    assert other.counts["conv.bias"] == 0


@pytest.mark.parametrize("call, message", [
    (lambda: SGD({}, lr=-1), "lr must be >= 0.0, got -1.0"),
    (lambda: SGD({}, lr=0.1, nesterov=True), "nesterov momentum needs momentum > 0"),
    (lambda: Adam({}, betas=(1.0, 0.9)), "beta1 must be >= 0.0 and < 1.0, got 1.0"),
    (lambda: SGD({}, lr=0.1, decay="biases"), "decay must be one of all, weights"),
    (lambda: make_optimizer("rmsprop", {}), "unknown optimizer 'rmsprop'"),
    (lambda: SGD({}, lr=float("nan")), "lr must be >= 0.0, got nan"),
    (lambda: Schedule(0.1, "linear"), "unknown schedule 'linear'"),
    (lambda: Schedule(0.1, "step", step_size=0), "step_size must be >= 1, got 0"),
])
def test_bad_hyperparameters(call, message):
    with pytest.raises(ValueError) as err:
        call()
    assert message in str(err.value)


# ---- schedules -------------------------------------------------------------------------------


def test_step_schedule_by_hand():
    s = Schedule(1.0, "step", step_size=3, gamma=0.5)
    assert [s.lr_at(e) for e in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]


def test_cosine_schedule_by_hand():
    s = Schedule(1.0, "cosine", t_max=4, eta_min=0.2)
    assert s.lr_at(0) == 1.0
    assert s.lr_at(2) == pytest.approx(0.6)
    assert s.lr_at(4) == pytest.approx(0.2)


def test_warmup_then_main_schedule():
    s = Schedule(0.3, "step", step_size=2, gamma=0.1, warmup=2)
    lrs = [s.lr_at(e) for e in range(5)]
    np.testing.assert_allclose(lrs, [0.1, 0.2, 0.3, 0.3, 0.03])


def test_schedule_state_roundtrip():
    s = Schedule(0.1, "cosine", t_max=7, eta_min=1e-4, warmup=1)
    t = Schedule.from_state_dict(s.state_dict())
    assert [t.lr_at(e) for e in range(10)] == [s.lr_at(e) for e in range(10)]


# ---- against PyTorch --------------------------------------------------------------------------

CASES = [
    ("sgd", dict(lr=0.1)),
    ("sgd", dict(lr=0.05, momentum=0.9)),
    ("sgd", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-2)),
    ("sgd", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=5e-3)),
    ("adam", dict(lr=1e-2)),
    ("adam", dict(lr=3e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=1e-2)),
    ("adamw", dict(lr=1e-2)),
    ("adamw", dict(lr=5e-3, betas=(0.85, 0.9), weight_decay=0.1)),
]


def torch_optimizer(torch, kind, tensors, hyper, decay="all"):
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind]
    hyper = dict(hyper)
    if "betas" in hyper:
        hyper["betas"] = tuple(hyper["betas"])
    if decay == "weights":
        wd = hyper.pop("weight_decay")
        groups = [{"params": [t for k, t in tensors.items() if t.ndim >= 2], "weight_decay": wd},
                  {"params": [t for k, t in tensors.items() if t.ndim < 2], "weight_decay": 0}]
        return cls(groups, **hyper)
    return cls(list(tensors.values()), **hyper)


@pytest.mark.torch
@pytest.mark.parametrize("kind, hyper", CASES)
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_matches_torch(kind, hyper, dtype, tol):
    torch = pytest.importorskip("torch")
    params = fresh_params(dtype=dtype)
    tensors = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    ours = make_optimizer(kind, params, **hyper)
    theirs = torch_optimizer(torch, kind, tensors, hyper)
    for grads in grad_sequence():
        ours.step({k: g.astype(dtype) for k, g in grads.items()})
        for k, t in tensors.items():
            t.grad = torch.tensor(grads[k].astype(dtype))
        theirs.step()
    for k, t in tensors.items():
        np.testing.assert_allclose(params[k], t.detach().numpy(), rtol=tol, atol=tol)


@pytest.mark.torch
@pytest.mark.parametrize("kind, hyper", [
    ("sgd", dict(lr=0.05, momentum=0.9, weight_decay=0.1)),
    ("adamw", dict(lr=1e-2, weight_decay=0.3)),
])
def test_decay_weights_matches_torch_param_groups(kind, hyper):
    torch = pytest.importorskip("torch")
    params = fresh_params()
    tensors = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    ours = make_optimizer(kind, params, decay="weights", **hyper)
    theirs = torch_optimizer(torch, kind, tensors, hyper, decay="weights")
    for grads in grad_sequence():
        ours.step(grads)
        for k, t in tensors.items():
            t.grad = torch.tensor(grads[k])
        theirs.step()
    for k, t in tensors.items():
        np.testing.assert_allclose(params[k], t.detach().numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.torch
@pytest.mark.parametrize("kind, options, make", [
    ("step", dict(step_size=3, gamma=0.5),
     lambda torch, opt: torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)),
    ("cosine", dict(t_max=5, eta_min=1e-3),
     lambda torch, opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5, eta_min=1e-3)),
])
def test_schedules_match_torch(kind, options, make):
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.2)
    sched = make(torch, opt)
    ours = Schedule(0.2, kind, **options)
    for epoch in range(17):  # past t_max twice: cosine climbs back as PyTorch's does
        assert ours.lr_at(epoch) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9,
                                                  abs=1e-12), epoch
        opt.step()
        sched.step()


def test_cosine_period():
    s = Schedule(1.0, "cosine", t_max=3)
    assert s.lr_at(6) == pytest.approx(1.0)
    assert s.lr_at(3) == pytest.approx(0.0, abs=1e-15)
    assert math.isclose(s.lr_at(1), s.lr_at(5))


# ---- the compiled updates ----------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda p: SGD(p, lr=0.1),
    lambda p: SGD(p, lr=0.1, momentum=0.9),
    lambda p: SGD(p, lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01),
    lambda p: SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.02,
                  decay="weights"),
    lambda p: Adam(p, lr=0.01),
    lambda p: Adam(p, lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.05),
    lambda p: AdamW(p, lr=0.01, weight_decay=0.1),
], ids=["sgd", "momentum", "dampening", "nesterov", "adam", "adam-decay", "adamw"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_updates_equal_numpys_to_the_bit(make, dtype, monkeypatch):
    """One compiled pass per parameter (numba) where NumPy makes five to nine: the same
    operations in the same order in the parameter's dtype, so the same bits, step after
    step (first steps included: SGD's momentum buffer is made by NumPy)."""
    pytest.importorskip("numba")
    from cnnc.ops import fast
    from cnnc.runtime import optim

    if not fast.ENABLED:
        pytest.skip("the compiled kernels are off (CNNC_FAST=0)")
    results = []
    for enabled in (True, False):
        monkeypatch.setattr(fast, "ENABLED", enabled)
        params = fresh_params(dtype=dtype)
        opt = make(params)
        for grads in grad_sequence():
            opt.step({k: g.astype(dtype) for k, g in grads.items()})
        results.append((params, opt.state_dict()))
    assert optim._KERNELS, "the compiled updates ran"
    (compiled, c_state), (plain, p_state) = results
    for key in SHAPES:
        assert compiled[key].dtype == dtype
        np.testing.assert_array_equal(compiled[key], plain[key], err_msg=key)
    for name, slots in p_state["slots"].items():
        for key, value in slots.items():
            np.testing.assert_array_equal(c_state["slots"][name][key], value,
                                          err_msg=f"{name} {key}")


def test_compiled_updates_leave_strided_parameters_to_numpy():
    pytest.importorskip("numba")
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    params = {"w": base[:, ::2]}  # a strided view: updated in place all the same
    opt = Adam(params, lr=0.1)
    opt.step({"w": np.ones((4, 3), np.float32)})
    np.testing.assert_allclose(base[:, ::2], np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]
                               - 0.1, rtol=1e-6)
    np.testing.assert_array_equal(base[:, 1::2], np.arange(24).reshape(4, 6)[:, 1::2])


def test_compiled_updates_follow_numpy_on_odd_layouts_and_errors(monkeypatch):
    """A Fortran-ordered first gradient makes a Fortran-ordered momentum buffer (its
    updates must land in it, not in a flattened copy); a read-only parameter and
    ``errstate(raise)`` get NumPy's errors."""
    pytest.importorskip("numba")
    from cnnc.ops import fast

    def run(enabled):
        monkeypatch.setattr(fast, "ENABLED", enabled)
        params = {"w": np.ones((3, 4), np.float32)}
        opt = SGD(params, lr=0.1, momentum=0.9)
        for _ in range(4):
            opt.step({"w": np.asfortranarray(np.ones((3, 4), np.float32))})
        return params["w"], opt.slots["momentum_buffer"]["w"]

    (w, buf), (w_np, buf_np) = run(True), run(False)
    np.testing.assert_array_equal(buf, buf_np)
    np.testing.assert_array_equal(w, w_np)
    assert not np.allclose(buf, 1.0)  # the buffer moved

    monkeypatch.setattr(fast, "ENABLED", True)
    frozen = np.ones(5, np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        Adam({"w": frozen}, lr=0.1).step({"w": np.ones(5, np.float32)})
    huge = {"w": np.full(4, 3e38, np.float32)}
    with np.errstate(all="raise"), pytest.raises(FloatingPointError):
        SGD(huge, lr=1.0).step({"w": np.full(4, -3e38, np.float32)})
