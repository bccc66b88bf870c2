"""The training-kernel table: every op covered, forwards that match inference exactly,
``SAVED`` equal to what the forward really keeps, and gradients the caller owns."""

import numpy as np
import pytest

from cnnc.compiler.plan import Step
from cnnc.runtime.grads import GRADS, SAVED
from cnnc.runtime.numpy_backend import KERNELS
from cnnc.runtime.ops import Op

# id -> (op, attrs, per-sample input shapes, parameter shapes); at least one case per op
CASES = {
    "conv": (Op.CONV2D, dict(stride=(2, 1), pad=(0, 2, 1, 0), dilation=(1, 2), groups=2,
                             act=None), [(4, 6, 5)], [(6, 2, 3, 2), (6,)]),
    "conv_no_bias": (Op.CONV2D, dict(stride=1, pad=(1, 1), dilation=1, groups=1, act=None),
                     [(3, 5, 5)], [(2, 3, 3, 3)]),
    "conv_1x1": (Op.CONV2D, dict(stride=1, pad=(0, 0, 0, 0), dilation=1, groups=1, act=None),
                 [(3, 4, 4)], [(5, 3, 1, 1), (5,)]),
    "maxpool": (Op.MAXPOOL2D, dict(kernel=3, stride=2, pad=(1, 1), dilation=1, ceil=True),
                [(3, 7, 6)], []),
    "maxpool_dilated": (Op.MAXPOOL2D, dict(kernel=(2, 3), stride=None, pad=(1, 0, 0, 1),
                                           dilation=2, ceil=False), [(2, 8, 9)], []),
    "avgpool": (Op.AVGPOOL2D, dict(kernel=3, stride=2, pad=(1, 1), ceil=True,
                                   count_pad=False), [(3, 7, 6)], []),
    "avgpool_count_pad": (Op.AVGPOOL2D, dict(kernel=(2, 3), stride=None, pad=(1, 0, 1, 1),
                                             ceil=False, count_pad=True), [(2, 7, 8)], []),
    "global_avgpool": (Op.GLOBAL_AVGPOOL, {}, [(3, 4, 5)], []),
    "global_maxpool": (Op.GLOBAL_MAXPOOL, {}, [(3, 4, 5)], []),
    "lrn": (Op.LRN, dict(size=3, alpha=0.5, beta=0.75, k=2.0), [(5, 3, 3)], []),
    "batchnorm": (Op.BATCHNORM, dict(eps=1e-5, momentum=0.1), [(3, 4, 5)],
                  [(3,), (3,), (3,), (3,)]),
    "batchnorm_features": (Op.BATCHNORM, dict(eps=1e-3, momentum=0.3), [(6,)],
                           [(6,), (6,), (6,), (6,)]),
    "prelu": (Op.ACTIVATION, dict(name="prelu", alpha=None, beta=None), [(3, 4, 2)], [(3,)]),
    "prelu_shared": (Op.ACTIVATION, dict(name="prelu", alpha=None, beta=None), [(5,)],
                     [(1,)]),
    "softmax": (Op.SOFTMAX, dict(axis=1), [(5,)], []),
    "softmax_spatial": (Op.SOFTMAX, dict(axis=1), [(3, 2, 2)], []),
    "maxout": (Op.MAXOUT, dict(k=2), [(6, 2, 2)], []),
    "maxout_features": (Op.MAXOUT, dict(k=3), [(6,)], []),
    "dense": (Op.DENSE, dict(act=None), [(5,)], [(3, 5), (3,)]),
    "dense_no_bias": (Op.DENSE, dict(act=None), [(5,)], [(3, 5)]),
    "flatten": (Op.FLATTEN, {}, [(3, 2, 2)], []),
    "concat": (Op.CONCAT, dict(axis=1), [(1, 2, 2), (3, 2, 2), (2, 2, 2)], []),
    "add": (Op.ADD, {}, [(3, 2, 2)] * 3, []),
    "add_one": (Op.ADD, {}, [(3, 2, 2)], []),
    "dropout": (Op.DROPOUT, dict(p=0.5), [(3, 4)], []),
    "dropout_off": (Op.DROPOUT, dict(p=0.0), [(3, 4)], []),
}
for _name in ("identity", "relu", "leaky_relu", "elu", "selu", "sigmoid", "tanh", "softplus",
              "swish", "silu"):
    CASES[_name] = (Op.ACTIVATION, dict(name=_name, alpha=None, beta=None), [(3, 2, 2)], [])
CASES["leaky_relu_steep"] = (Op.ACTIVATION, dict(name="leaky_relu", alpha=1.5, beta=None),
                             [(4,)], [])
CASES["swish_beta"] = (Op.ACTIVATION, dict(name="swish", alpha=None, beta=0.5), [(4,)], [])

# ops whose training forward differs from inference: batch statistics, dropout masks
TRAINING_BEHAVIOUR = {Op.BATCHNORM, Op.DROPOUT}


def _arrays(case, n, dtype, seed=0):
    op, attrs, in_shapes, param_shapes = case
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal((n,) + s).astype(dtype) for s in in_shapes]
    params = [rng.standard_normal(s).astype(dtype) for s in param_shapes]
    if op == Op.BATCHNORM:
        params[3] = rng.uniform(0.5, 2.0, param_shapes[3]).astype(dtype)  # running_var > 0
    return inputs, params


def _step(case, y):
    op, attrs, in_shapes, param_shapes = case
    return Step(op, "layer", [f"in{i}" for i in range(len(in_shapes))], dict(attrs),
                [f"layer.p{i}" for i in range(len(param_shapes))], tuple(y.shape[1:]))


def _kept_arrays(saved, params):
    """Every distinct array in ``saved`` (nested tuples, lists, dicts), parameters excluded."""
    found = {}

    def walk(item):
        if isinstance(item, np.ndarray):
            if not any(item is p for p in params):
                found[id(item)] = item
        elif isinstance(item, (tuple, list)):
            for part in item:
                walk(part)
        elif isinstance(item, dict):
            for part in item.values():
                walk(part)

    walk(saved)
    return list(found.values())


def test_tables_cover_every_op_exactly():
    assert set(GRADS) == set(Op)
    assert set(SAVED) == set(Op)
    for op, pair in GRADS.items():
        forward, backward = pair
        assert callable(forward) and callable(backward), op
        assert callable(SAVED[op]), op


def test_cases_cover_every_op():
    assert {case[0] for case in CASES.values()} == set(Op)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_without_training_is_the_inference_kernel(name, dtype):
    case = CASES[name]
    op, attrs = case[:2]
    inputs, params = _arrays(case, 3, dtype)
    before = [p.copy() for p in params]
    expected = KERNELS[op](*inputs, *params, **attrs)
    forward = GRADS[op][0]
    y, _ = forward(*inputs, *params, train=False, rng=None, **attrs)
    assert y.dtype == expected.dtype == dtype
    np.testing.assert_array_equal(y, expected)
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p, b)  # no running statistics moved
    if op not in TRAINING_BEHAVIOUR:
        y, _ = forward(*inputs, *params, train=True, rng=np.random.default_rng(0), **attrs)
        np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("name", sorted(CASES))
def test_saved_counts_what_the_forward_keeps_per_sample(name):
    """Count every array ``saved`` holds at three batch sizes: the count grows by exactly
    ``SAVED`` per sample (what stays is per-batch, e.g. batchnorm's 1/std per channel)."""
    case = CASES[name]
    op, attrs = case[:2]
    counts = {}
    for n in (2, 3, 5):
        inputs, params = _arrays(case, n, np.float32)
        y, saved = GRADS[op][0](*inputs, *params, train=True, rng=np.random.default_rng(0),
                                **attrs)
        counts[n] = sum(a.size for a in _kept_arrays(saved, params))
    per_sample = SAVED[op](_step(case, y), case[2])
    assert isinstance(per_sample, int)
    assert counts[3] - counts[2] == per_sample
    assert counts[5] - counts[3] == 2 * per_sample
    assert counts[2] - 2 * per_sample >= 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_keep_dtype_and_shape_and_belong_to_the_caller(name, dtype):
    case = CASES[name]
    op, attrs = case[:2]
    inputs, params = _arrays(case, 3, dtype)
    forward, backward = GRADS[op]
    y, saved = forward(*inputs, *params, train=True, rng=np.random.default_rng(0), **attrs)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    dy_before = dy.copy()
    gxs, gps = backward(saved, dy)
    np.testing.assert_array_equal(dy, dy_before)  # dy is read, never written
    assert len(gxs) == len(inputs) and len(gps) == len(params)
    grads = [g for g in gxs + gps if g is not None]
    for g, a in zip(gxs, inputs):
        assert g.shape == a.shape and g.dtype == dtype
    for g, p in zip(gps, params):
        if g is not None:
            assert g.shape == p.shape and g.dtype == dtype
    kept = _kept_arrays(saved, []) + inputs + params + [y, dy]
    for i, g in enumerate(grads):
        for other in kept + grads[i + 1:]:
            assert not np.shares_memory(g, other), name


def test_dparams_follow_the_params_given():
    # batchnorm: trainable weight and bias, then the running statistics (buffers: None)
    inputs, params = _arrays(CASES["batchnorm"], 4, np.float64)
    forward, backward = GRADS[Op.BATCHNORM]
    y, saved = forward(*inputs, *params, train=True, eps=1e-5, momentum=0.1)
    _, gps = backward(saved, np.ones_like(y))
    assert gps[0] is not None and gps[1] is not None and gps[2:] == (None, None)
    # no affine part: no weight or bias gradient either
    y, saved = forward(inputs[0], None, None, *params[2:], train=True, eps=1e-5,
                       momentum=0.1)
    assert backward(saved, np.ones_like(y))[1] == (None, None, None, None)
    # activations other than prelu take no parameter
    y, saved = GRADS[Op.ACTIVATION][0](inputs[0], name="relu", alpha=None, beta=None)
    assert GRADS[Op.ACTIVATION][1](saved, y)[1] == ()
