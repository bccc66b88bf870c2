"""Batch norm, layer norm, group norm, scale and LRN (ops/norm.py): the layers, the kernels
against the naive reference and PyTorch, the training pair against finite differences and
autograd, running statistics, errors, and the ONNX emitters."""

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnc.ops import norm
from cnnc.ops.base import ExportError, weight_keys
from ops_support import StepGraph

DTYPES = [np.float32, np.float64]
# float32 kernels sum up to a few hundred products
TOLERANCES = {
    np.dtype(np.float32): dict(rtol=2e-4, atol=2e-5),
    np.dtype(np.float64): dict(rtol=1e-10, atol=1e-12),
}
FD_STEP = 1e-5
FD_TOL = dict(rtol=1e-6, atol=1e-7)


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


def assert_close(actual, expected, dtype=None):
    """Same shape, values within the tolerance of ``dtype`` (the actual array's)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, **TOLERANCES[np.dtype(dtype or actual.dtype)])


def _stats(rng, channels, dtype):
    weight = rng.uniform(0.5, 2.0, channels).astype(dtype)
    bias = rng.standard_normal(channels).astype(dtype)
    mean = rng.standard_normal(channels).astype(dtype)
    var = rng.uniform(0.1, 3.0, channels).astype(dtype)
    return weight, bias, mean, var


# ---------------------------------------------------------------- the layers

LAYERS = {layer.name: layer for layer in norm.LAYERS}
PRIMITIVES = {p.name: p for p in norm.PRIMITIVES}


def _node(kind, args, params=None, buffers=None):
    return SimpleNamespace(name=f"net.{kind}1", op=kind, args=args, params=params or {},
                           buffers=buffers or {})


def test_batchnorm_layer():
    layer = LAYERS["batchnorm"]
    assert [(a.name, a.kind, a.default) for a in layer.args] == [
        ("eps", "positive_float", 1e-5), ("momentum", "unit_float", 0.1)]
    assert layer.ranks == (1, 2, 3, 4) and not layer.changes_shape
    args = dict(eps=1e-3, momentum=0.2)
    for shape in [(4, 5, 6), (7,), (4, 9), (4, 2, 5, 6)]:
        assert layer.infer(shape, args, None) == shape
        assert layer.params(shape, args) == {"weight": (shape[0],), "bias": (shape[0],)}
        assert layer.buffers(shape, args) == {"running_mean": (shape[0],),
                                              "running_var": (shape[0],)}
        assert layer.macs(shape, shape, args) == 0
    node = _node("batchnorm", args, layer.params((4, 5, 6), args), layer.buffers((4, 5, 6), args))
    assert layer.lower(node, [(4, 5, 6)]) == ("batchnorm", dict(eps=1e-3, momentum=0.2))
    assert weight_keys(node) == ["net.batchnorm1.weight", "net.batchnorm1.bias",
                                 "net.batchnorm1.running_mean", "net.batchnorm1.running_var"]
    assert [layer.init(k) for k in ("weight", "bias", "running_mean", "running_var")] == [
        "ones", "zeros", "zeros", "ones"]


def test_lrn_layer():
    layer = LAYERS["lrn"]
    assert [(a.name, a.kind, a.default) for a in layer.args] == [
        ("size", "count", 5), ("alpha", "float", 1e-4), ("beta", "float", 0.75),
        ("k", "float", 1.0)]
    assert layer.ranks == (3,) and not layer.changes_shape
    args = dict(size=3, alpha=0.5, beta=0.6, k=2.0)
    assert layer.infer((4, 5, 6), args, None) == (4, 5, 6)
    assert layer.params((4, 5, 6), args) == {} and layer.buffers((4, 5, 6), args) == {}
    assert layer.lower(_node("lrn", args), [(4, 5, 6)]) == ("lrn", args)
    assert layer.rank_help((12,)) == "`lrn` works on [C, H, W] maps; move it before `flatten`"


def test_primitive_flags():
    bn, lrn = PRIMITIVES["batchnorm"], PRIMITIVES["lrn"]
    assert bn.accepts_out and bn.in_place == "first" and not bn.alias
    assert not lrn.accepts_out and lrn.in_place is None and not lrn.alias
    assert bn.gpu_kernel is norm.batchnorm_gpu and lrn.gpu_kernel is norm.lrn_gpu
    assert bn.gpu_forward is None and lrn.gpu_forward is None  # the generic pair runs on CuPy


# ---------------------------------------------------------------- batchnorm: inference


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 5, 3, 4), (3, 5)])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_matches_reference(rng, dtype, shape, affine):
    x = rng.standard_normal(shape).astype(dtype)
    weight, bias, mean, var = _stats(rng, 5, dtype)
    if not affine:
        weight = bias = None
    y = norm.batchnorm(x, weight, bias, mean, var, eps=1e-3)
    assert y.dtype == dtype
    assert_close(y, norm.batchnorm_reference(x, weight, bias, mean, var, eps=1e-3))


def test_batchnorm_reports_wrong_parameter_shape(rng):
    weight, bias, mean, var = _stats(rng, 4, np.float64)
    with pytest.raises(ValueError, match=r"running_mean must be \[5\].*got \(3,\)"):
        norm.batchnorm(np.zeros((1, 5, 2, 2)), None, None, mean[:3], np.ones(5))


def test_batchnorm_writes_into_out_and_in_place(rng):
    x = rng.standard_normal((2, 3, 4, 4))
    stats = _stats(rng, 3, np.float64)
    expected = norm.batchnorm(x, *stats, eps=1e-5)
    out = np.empty_like(x)
    assert norm.batchnorm(x, *stats, eps=1e-5, out=out) is out
    np.testing.assert_array_equal(out, expected)
    assert norm.batchnorm(x, *stats, eps=1e-5, out=x) is x  # in_place="first"
    np.testing.assert_array_equal(x, expected)


@pytest.mark.torch
@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (3, 4)])
def test_batchnorm_matches_torch(rng, shape):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal(shape)
    weight, bias, mean = (rng.standard_normal(4) for _ in range(3))
    var = rng.uniform(0.2, 2.0, 4)
    y = norm.batchnorm(x, weight, bias, mean, var, eps=1e-5)
    t = [torch.from_numpy(a) for a in (x, mean, var, weight, bias)]
    expected = torch.nn.functional.batch_norm(t[0], t[1], t[2], t[3], t[4], training=False,
                                              eps=1e-5)
    assert_close(y, expected.numpy())


# ---------------------------------------------------------------- batchnorm: training


def _fd_check(forward, backward, inputs, params=(), buffers=(), seed=0, **attrs):
    """``backward`` against central finite differences of ``sum(y * r)`` for every input
    and every parameter with a gradient. ``buffers``: indices of params copied afresh per
    call (running statistics, which the forward moves in place)."""
    inputs = [np.array(a, dtype=np.float64) for a in inputs]
    params = [None if p is None else np.array(p, dtype=np.float64) for p in params]

    def run():
        ps = [p.copy() if i in buffers else p for i, p in enumerate(params)]
        return forward(*inputs, *ps, rng=np.random.default_rng(seed), **attrs)

    y, saved = run()
    r = np.random.default_rng(seed + 1).standard_normal(y.shape)
    gxs, gps = backward(saved, r)
    assert len(gxs) == len(inputs) and len(gps) == len(params)

    def f():
        return float(np.sum(run()[0] * r))

    for a, g in list(zip(inputs, gxs)) + list(zip(params, gps)):
        if g is None:
            continue
        assert g.dtype == np.float64 and g.shape == a.shape
        numeric = np.empty_like(a)
        for index in np.ndindex(*a.shape):
            keep = a[index]
            a[index] = keep + FD_STEP
            up = f()
            a[index] = keep - FD_STEP
            down = f()
            a[index] = keep
            numeric[index] = (up - down) / (2 * FD_STEP)
        np.testing.assert_allclose(g, numeric, **FD_TOL)


@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 3, 2)])
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_finite_differences(shape, train):
    rng = np.random.default_rng(8)
    c = shape[1]
    params = [rng.standard_normal(c), rng.standard_normal(c), rng.standard_normal(c),
              rng.uniform(0.5, 2.0, c)]
    _fd_check(norm.batchnorm_forward, norm.batchnorm_backward,
              [rng.standard_normal(shape) * 2 + 1], params, buffers=(2, 3), train=train,
              eps=1e-3, momentum=0.1)


@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_without_affine_finite_differences(train):
    rng = np.random.default_rng(9)
    params = [None, None, rng.standard_normal(3), rng.uniform(0.5, 2.0, 3)]
    _fd_check(norm.batchnorm_forward, norm.batchnorm_backward,
              [rng.standard_normal((4, 3, 2, 2))], params, buffers=(2, 3), train=train,
              eps=1e-5, momentum=0.1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 3, 5, 2), (4, 6)])
def test_batchnorm_inference_forward_equals_the_kernel(dtype, shape):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(dtype)
    stats = _stats(rng, x.shape[1], dtype)
    y, _ = norm.batchnorm_forward(x, *stats, train=False, eps=1e-5, momentum=0.1)
    np.testing.assert_array_equal(y, norm.batchnorm(x, *stats, eps=1e-5))


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5, 4)])
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_training_matches_torch(dtype, shape, train):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    weight, bias = rng.standard_normal(3).astype(dtype), rng.standard_normal(3).astype(dtype)
    mean0 = rng.standard_normal(3).astype(dtype)
    var0 = rng.uniform(0.5, 2.0, 3).astype(dtype)
    ours_mean, ours_var = mean0.copy(), var0.copy()
    torch_mean, torch_var = torch.tensor(mean0), torch.tensor(var0)
    y, saved = norm.batchnorm_forward(x, weight, bias, ours_mean, ours_var, train=train,
                                      eps=1e-3, momentum=0.3)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    (gx,), (gW, gb, g_mean, g_var) = norm.batchnorm_backward(saved, dy)
    leaves = [torch.tensor(a, requires_grad=True) for a in (x, weight, bias)]
    expected = torch.nn.functional.batch_norm(leaves[0], torch_mean, torch_var, leaves[1],
                                              leaves[2], training=train, momentum=0.3,
                                              eps=1e-3)
    expected.backward(torch.from_numpy(dy))
    assert g_mean is None and g_var is None
    for ours, theirs in [(y, expected), (gx, leaves[0].grad), (gW, leaves[1].grad),
                         (gb, leaves[2].grad), (ours_mean, torch_mean), (ours_var, torch_var)]:
        assert ours.dtype == dtype
        assert_close(ours, theirs.detach().numpy())


@pytest.mark.torch
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_torch_mapping(rng, training):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((4, 3, 2, 2))
    stats = list(_stats(rng, 3, np.float64))
    step = SimpleNamespace(name="bn", attrs=dict(eps=1e-3, momentum=0.2), shape=(3, 2, 2),
                           inputs=["x"], params=["w", "b", "rm", "rv"])
    # autograd leaves, running statistics included (as an oracle test may hand them)
    ws = [torch.tensor(s.copy(), requires_grad=True) for s in stats]
    y = norm.batchnorm_torch(step, [torch.from_numpy(x)], ws, training)
    ours, _ = norm.batchnorm_forward(x, *stats, train=training, eps=1e-3, momentum=0.2)
    assert_close(y.detach().numpy(), ours)
    # both moved their running statistics, or neither
    assert_close(ws[2].detach().numpy(), stats[2])
    assert_close(ws[3].detach().numpy(), stats[3])


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 2, 5)])
def test_batchnorm_moves_running_statistics_by_momentum(shape):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape) * 3 + 2
    weight, bias = rng.standard_normal(3), rng.standard_normal(3)
    mean0, var0 = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    running_mean, running_var = mean0.copy(), var0.copy()
    y, _ = norm.batchnorm_forward(x, weight, bias, running_mean, running_var, eps=1e-5,
                                  momentum=0.2)
    axes = (0,) + tuple(range(2, x.ndim))
    per_channel = (1, 3) + (1,) * (x.ndim - 2)
    batch_mean = x.mean(axis=axes)
    np.testing.assert_allclose(running_mean, 0.8 * mean0 + 0.2 * batch_mean, rtol=1e-12)
    np.testing.assert_allclose(running_var, 0.8 * var0 + 0.2 * x.var(axis=axes, ddof=1),
                               rtol=1e-12)  # unbiased variance in the running estimate
    xhat = (x - batch_mean.reshape(per_channel)) / np.sqrt(
        x.var(axis=axes).reshape(per_channel) + 1e-5)  # biased variance to normalise
    np.testing.assert_allclose(y, xhat * weight.reshape(per_channel)
                               + bias.reshape(per_channel), rtol=1e-10, atol=1e-12)


def test_batchnorm_without_training_leaves_running_statistics():
    rng = np.random.default_rng(4)
    stats = [rng.standard_normal(3), rng.standard_normal(3), rng.standard_normal(3),
             rng.uniform(0.5, 2, 3)]
    before = [s.copy() for s in stats]
    norm.batchnorm_forward(rng.standard_normal((4, 3)), *stats, train=False, eps=1e-5,
                           momentum=0.5)
    for s, b in zip(stats, before):
        np.testing.assert_array_equal(s, b)


def test_batchnorm_dparams_follow_the_params_given():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 4, 5))
    stats = [rng.standard_normal(3), rng.standard_normal(3), rng.standard_normal(3),
             rng.uniform(0.5, 2.0, 3)]
    y, saved = norm.batchnorm_forward(x, *stats, train=True, eps=1e-5, momentum=0.1)
    _, gps = norm.batchnorm_backward(saved, np.ones_like(y))
    assert gps[0] is not None and gps[1] is not None and gps[2:] == (None, None)
    # no affine part: no weight or bias gradient either
    y, saved = norm.batchnorm_forward(x, None, None, *stats[2:], train=True, eps=1e-5,
                                      momentum=0.1)
    assert norm.batchnorm_backward(saved, np.ones_like(y))[1] == (None, None, None, None)


def test_batchnorm_training_errors():
    ones = np.ones(3)
    with pytest.raises(ValueError, match=r"batchnorm: .*more than one value.*\(1, 3\)"):
        norm.batchnorm_forward(np.ones((1, 3)), ones, ones, ones, ones, eps=1e-5, momentum=0.1)
    with pytest.raises(ValueError, match=r"batchnorm: running_var must be \[3\].*\(4,\)"):
        norm.batchnorm_forward(np.ones((2, 3)), ones, ones, ones, np.ones(4), eps=1e-5,
                               momentum=0.1)
    with pytest.raises(ValueError, match=r"batchnorm: needs running_mean \(a \[3\] array\)"):
        norm.batchnorm_forward(np.ones((2, 3)), ones, ones, None, ones)
    with pytest.raises(ValueError, match=r"batchnorm: momentum must be in \[0, 1\], got 1.5"):
        norm.batchnorm_forward(np.ones((2, 3)), ones, ones, ones, ones, momentum=1.5)
    with pytest.raises(ValueError, match=r"batchnorm: input must be \[N, C, \.\.\.\]"):
        norm.batchnorm_forward(np.ones(3), ones, ones, ones, ones)
    y, saved = norm.batchnorm_forward(np.ones((2, 3)) * [[1], [2]], ones, ones, ones, ones)
    with pytest.raises(ValueError, match=r"batchnorm backward: dy must have .*\(2, 3\)"):
        norm.batchnorm_backward(saved, np.ones((3, 3)))


# ---------------------------------------------------------------- LRN: inference

LRN_PARAMS = [
    dict(),  # defaults: size 5, alpha 1e-4, beta 0.75, k 1
    dict(size=1, alpha=0.5, beta=0.5, k=2.0),
    dict(size=2, alpha=0.3, beta=0.75, k=1.0),
    dict(size=3, alpha=1.0, beta=1.0, k=0.5),
    dict(size=4, alpha=0.2, beta=0.6, k=1.0),
    dict(size=9, alpha=0.5, beta=0.75, k=1.0),  # window wider than the 6 channels
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("params", LRN_PARAMS, ids=str)
@pytest.mark.parametrize("shape", [(2, 6, 3, 4), (2, 6, 5)])
def test_lrn_matches_reference(rng, dtype, params, shape):
    x = (2 * rng.standard_normal(shape)).astype(dtype)
    y = norm.lrn(x, **params)
    assert y.dtype == dtype
    assert_close(y, norm.lrn_reference(x, **params))


def test_lrn_window_by_hand():
    # size 2 looks at channels c-1 and c: b_c = x_c / (k + alpha/2 * (x_{c-1}^2 + x_c^2))
    x = np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    y = norm.lrn(x, size=2, alpha=2.0, beta=1.0, k=1.0)
    expected = [1 / (1 + 1), 2 / (1 + 1 + 4), 3 / (1 + 4 + 9)]
    np.testing.assert_allclose(y.ravel(), expected)


def test_lrn_errors():
    with pytest.raises(ValueError, match=r"lrn: input must be \[N, C, \.\.\.\], got shape"):
        norm.lrn(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"lrn: size must be >= 1, got 0"):
        norm.lrn(np.ones((2, 3, 4, 4)), size=0)
    with pytest.raises(ValueError, match=r"lrn: size must be >= 1, got 0"):
        norm.lrn_forward(np.ones((2, 3, 4, 4)), size=0)


def test_lrn_integers_compute_in_float64():
    x = np.arange(24).reshape(1, 4, 2, 3)
    y = norm.lrn(x, size=3, alpha=0.1, beta=0.75, k=1.0)
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, norm.lrn(x.astype(np.float64), size=3, alpha=0.1))


def test_lrn_batch_runs_in_cache_sized_parts(rng):
    """Images big enough that the kernel walks the batch a few at a time."""
    x = rng.standard_normal((5, 64, 32, 32)).astype(np.float32)  # 256 KiB per image
    y = norm.lrn(x, size=5, alpha=1e-2, beta=0.75, k=1.0)
    y_whole, _ = norm.lrn_forward(x, size=5, alpha=1e-2, beta=0.75, k=1.0)
    np.testing.assert_array_equal(y, y_whole)


@pytest.mark.torch
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 9])
@pytest.mark.parametrize("alpha, beta, k", [(1e-4, 0.75, 1.0), (0.5, 0.6, 2.0)])
def test_lrn_matches_torch(rng, size, alpha, beta, k):
    torch = pytest.importorskip("torch")
    x = 3 * rng.standard_normal((2, 7, 4, 5))
    y = norm.lrn(x, size=size, alpha=alpha, beta=beta, k=k)
    expected = torch.nn.functional.local_response_norm(torch.from_numpy(x), size, alpha=alpha,
                                                       beta=beta, k=k)
    assert_close(y, expected.numpy())
    step = SimpleNamespace(name="lrn", attrs=dict(size=size, alpha=alpha, beta=beta, k=k),
                           shape=x.shape[1:], inputs=["x"], params=[])
    assert_close(norm.lrn_torch(step, [torch.from_numpy(x)], [], False).numpy(), y)


SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data())
def test_lrn_random(rng, dtype, data):
    size = data.draw(st.integers(1, 8))
    channels = data.draw(st.integers(1, 7))
    x = (3 * rng.standard_normal((2, channels, 3, 2))).astype(dtype)
    params = dict(size=size, alpha=data.draw(st.floats(1e-4, 1.0)),
                  beta=data.draw(st.floats(0.25, 1.0)), k=data.draw(st.floats(0.5, 2.0)))
    assert_close(norm.lrn(x, **params), norm.lrn_reference(x, **params))


# ---------------------------------------------------------------- LRN: training


@pytest.mark.parametrize("size, alpha, beta, k", [
    (1, 1e-2, 0.75, 1.0),
    (2, 0.5, 0.75, 2.0),  # even window: one more channel before than after
    (3, 1.0, 0.5, 1.0),
    (5, 0.3, 1.5, 0.5),
    (9, 0.2, 0.75, 1.0),  # wider than the channels
])
def test_lrn_finite_differences(size, alpha, beta, k):
    x = np.random.default_rng(7).standard_normal((2, 6, 3, 2))
    _fd_check(norm.lrn_forward, norm.lrn_backward, [x], size=size, alpha=alpha, beta=beta,
              k=k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta", [0.5, 0.75, 1.0, 1.3])
def test_lrn_forward_equals_the_kernel(dtype, beta):
    x = np.random.default_rng(5).standard_normal((3, 5, 4, 3)).astype(dtype)
    y, _ = norm.lrn_forward(x, size=3, alpha=0.4, beta=beta, k=1.5)
    np.testing.assert_array_equal(y, norm.lrn(x, size=3, alpha=0.4, beta=beta, k=1.5))


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size, alpha, beta, k", [
    (5, 1e-4, 0.75, 1.0),  # AlexNet's
    (2, 0.5, 0.75, 2.0),
    (3, 1.0, 0.5, 1.0),
    (4, 0.3, 1.5, 0.5),
])
def test_lrn_training_matches_torch(dtype, size, alpha, beta, k):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(6).standard_normal((2, 7, 4, 3)).astype(dtype)
    y, saved = norm.lrn_forward(x, size=size, alpha=alpha, beta=beta, k=k)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    (gx,), gps = norm.lrn_backward(saved, dy)
    assert gps == ()
    leaf = torch.tensor(x, requires_grad=True)
    expected = torch.nn.functional.local_response_norm(leaf, size, alpha, beta, k)
    expected.backward(torch.from_numpy(dy))
    assert y.dtype == dtype and gx.dtype == dtype
    assert_close(y, expected.detach().numpy())
    assert_close(gx, leaf.grad.numpy())


def test_lrn_backward_checks_dy():
    x = np.ones((2, 3, 2, 2))
    _, saved = norm.lrn_forward(x, size=3)
    with pytest.raises(ValueError, match=r"lrn backward: dy must have .*\(2, 3, 2, 2\)"):
        norm.lrn_backward(saved, np.ones((1, 3, 2, 2)))


# ---------------------------------------------------------------- examples


@pytest.mark.parametrize("name", sorted(PRIMITIVES))
def test_examples_run_through_the_kernels(name):
    p = PRIMITIVES[name]
    examples = p.examples(np.random.default_rng(0))
    assert 3 <= len(examples) <= 8
    for ex in examples:
        assert all(a.dtype == np.float64 for a in ex.inputs + ex.params)
        y = p.kernel(*ex.inputs, *[w.copy() for w in ex.params], **ex.attrs)
        assert_close(y, p.reference(*ex.inputs, *ex.params, **ex.attrs))
        y_forward, _ = p.forward(*ex.inputs, *[w.copy() for w in ex.params], train=False,
                                 **ex.attrs)
        np.testing.assert_array_equal(y_forward, y)
    sizes = {ex.attrs.get("size") for ex in examples}
    if name == "lrn":  # odd and even windows
        assert {s % 2 for s in sizes} == {0, 1}


# ---------------------------------------------------------------- ONNX



def _onnx_model(emit, attrs, in_shape, params=()):
    """An ONNX model of one step ``emit`` on input ``x`` of per-sample ``in_shape``."""
    onnx = pytest.importorskip("onnx")
    keys = [f"layer.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
    arrays = {k: np.asarray(p, np.float32) for k, p in zip(keys, params)}
    step = SimpleNamespace(name="layer", attrs=attrs, shape=in_shape, inputs=["x"],
                           params=list(arrays), span=None)
    g = StepGraph(onnx, step, arrays)
    emit(g, step, ["x"], list(arrays), "y", [in_shape])
    info = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["N", *in_shape])
            for n in ("x", "y")]
    graph = onnx.helper.make_graph(g.nodes, "step", info[:1], info[1:], g.initializers)
    opsets = [onnx.helper.make_opsetid("", 17)]
    model = onnx.helper.make_model(graph, opset_imports=opsets,
                                   ir_version=onnx.helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(model, full_check=True)
    return model


def _onnxruntime(model, x):
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("size, alpha, beta, k", [
    (5, 0.5, 0.75, 2.0), (4, 0.7, 0.6, 1.5), (2, 1.0, 1.0, 1.0), (1, 0.9, 0.5, 0.5),
    (5, 1e-4, 0.75, 1.0), (9, 0.3, 0.75, 1.0),
])
def test_lrn_onnx_in_onnxruntime(rng, size, alpha, beta, k):
    attrs = dict(size=size, alpha=alpha, beta=beta, k=k)
    model = _onnx_model(norm.lrn_onnx, attrs, (6, 3, 4))
    types = [n.op_type for n in model.graph.node]
    if size % 2:
        assert types == ["LRN"]
    else:
        assert "LRN" not in types
    x = (2 * rng.standard_normal((3, 6, 3, 4))).astype(np.float32)
    np.testing.assert_allclose(_onnxruntime(model, x), norm.lrn(x, **attrs), rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("size", [2, 4])
def test_even_lrn_onnx_in_the_reference_evaluator(rng, size):
    """The written-out even-size LRN. ONNX's own LRN (odd sizes) is wrong in the reference
    evaluator of onnx 1.23 (its loop runs over the batch axis), so ONNX Runtime checks it."""
    reference = pytest.importorskip("onnx.reference")
    attrs = dict(size=size, alpha=0.7, beta=0.6, k=1.5)
    model = _onnx_model(norm.lrn_onnx, attrs, (5, 2, 3))
    x = (2 * rng.standard_normal((2, 5, 2, 3))).astype(np.float32)
    got = reference.ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, norm.lrn(x, **attrs), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(4, 3, 5), (6,)])
def test_batchnorm_onnx_in_onnxruntime(rng, shape):
    stats = _stats(rng, shape[0], np.float32)
    model = _onnx_model(norm.batchnorm_onnx, dict(eps=1e-3, momentum=0.2), shape, stats)
    node = model.graph.node[0]
    onnx = pytest.importorskip("onnx")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert node.op_type == "BatchNormalization"
    assert attrs["momentum"] == pytest.approx(0.8)  # ONNX keeps 0.8 of the old statistic
    assert attrs["epsilon"] == pytest.approx(1e-3)
    x = rng.standard_normal((3,) + shape).astype(np.float32)
    np.testing.assert_allclose(_onnxruntime(model, x), norm.batchnorm(x, *stats, eps=1e-3),
                               rtol=1e-4, atol=1e-5)


def test_batchnorm_onnx_needs_four_parameters():
    step = SimpleNamespace(name="net.bn", attrs=dict(eps=1e-5, momentum=0.1))
    with pytest.raises(ExportError, match=r"net.bn: batchnorm needs weight, bias, "
                                          r"running_mean and running_var"):
        norm.batchnorm_onnx(None, step, ["x"], ["net.bn.weight"], "y", [(3,)])


# ================================================================ spec section 9: layernorm,
# groupnorm, scale, and batchnorm on every rank
#
# Shapes per sample: [F], [C, L], [C, H, W], [C, D, H, W] (the batch comes first here).

RANK_SHAPES = [(3, 7), (2, 5, 6), (2, 4, 3, 5), (2, 3, 2, 3, 4)]
F32_FORWARD = dict(rtol=1e-4, atol=1e-4)  # float32 forward against PyTorch
F64_GRAD = dict(rtol=1e-6, atol=1e-6)  # float64 gradients against PyTorch autograd


def _torch_layernorm(torch, x, weight, bias, eps):
    """PyTorch's LayerNorm over the channels: ``F.layer_norm`` on the channels-last
    permutation of a map, on a vector as it is."""
    if x.dim() == 2:
        return torch.nn.functional.layer_norm(x, (x.shape[1],), weight, bias, eps)
    last = (0,) + tuple(range(2, x.dim())) + (1,)
    back = tuple(int(i) for i in np.argsort(last))
    y = torch.nn.functional.layer_norm(x.permute(last), (x.shape[1],), weight, bias, eps)
    return y.permute(back)


def _torch_groupnorm(torch, x, weight, bias, eps, groups):
    module = torch.nn.GroupNorm(groups, x.shape[1], eps=eps).to(x.dtype)
    with torch.no_grad():
        module.weight.copy_(weight)
        module.bias.copy_(bias)
    return module(x), module


def _torch_scale(torch, x, weight, bias):
    view = (x.shape[1],) + (1,) * (x.dim() - 2)
    y = x * weight.view(view)
    return y if bias is None else y + bias.view(view)


def _against_torch(forward, backward, kernel, torch_fn, x, params, attrs):
    """``kernel`` in float32 against ``torch_fn`` (float64 tensors in, a tensor out) within
    1e-4, and the training pair's input and parameter gradients in float64 within 1e-6."""
    torch = pytest.importorskip("torch")
    p32 = [np.asarray(p, np.float32) for p in params]
    y32 = kernel(x.astype(np.float32), *p32, **attrs)
    assert y32.dtype == np.float32
    tx = torch.tensor(x, requires_grad=True)
    tps = [torch.tensor(p, requires_grad=True) for p in params]
    ty = torch_fn(tx, *tps)
    np.testing.assert_allclose(y32, ty.detach().numpy(), **F32_FORWARD)
    y, saved = forward(x, *params, train=True, **attrs)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-10)
    dy = np.random.default_rng(11).standard_normal(y.shape)
    (gx,), gps = backward(saved, dy)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(gx, tx.grad.numpy(), **F64_GRAD)
    assert len(gps) == len(params)
    for g, t in zip(gps, tps):
        np.testing.assert_allclose(g, t.grad.numpy(), **F64_GRAD)


# ---------------------------------------------------------------- the layers


def test_layernorm_groupnorm_and_scale_layers():
    ln, gn, sc = LAYERS["layernorm"], LAYERS["groupnorm"], LAYERS["scale"]
    assert [(a.name, a.kind, a.default) for a in ln.args] == [("eps", "positive_float", 1e-5)]
    assert [(a.name, a.kind) for a in gn.args] == [("groups", "count"),
                                                   ("eps", "positive_float")]
    assert gn.args[1].default == 1e-5
    assert [(a.name, a.kind, a.default) for a in sc.args] == [("bias", "bool", False),
                                                              ("init", "float", 1.0)]
    for layer in (ln, gn, sc):
        assert layer.ranks is None and not layer.changes_shape
        assert layer.buffers((4, 5), {}) == {}
    for shape in [(8,), (4, 9), (4, 5, 6), (4, 2, 5, 6)]:
        assert ln.infer(shape, dict(eps=1e-5), None) == shape
        assert gn.infer(shape, dict(groups=2, eps=1e-5), None) == shape
        assert sc.infer(shape, dict(bias=False, init=1.0), None) == shape
        both = {"weight": (shape[0],), "bias": (shape[0],)}
        assert ln.params(shape, dict(eps=1e-5)) == both
        assert gn.params(shape, dict(groups=2, eps=1e-5)) == both
        assert sc.params(shape, dict(bias=True, init=1.0)) == both
        assert sc.params(shape, dict(bias=False, init=1.0)) == {"weight": (shape[0],)}
        for layer in (ln, gn, sc):
            assert layer.macs(shape, shape, dict(groups=2, bias=True)) == 0  # not counted
    assert [ln.init(k) for k in ("weight", "bias")] == ["ones", "zeros"]
    assert [gn.init(k) for k in ("weight", "bias")] == ["ones", "zeros"]
    assert ln.lower(_node("layernorm", dict(eps=1e-3)), [(4, 5, 6)]) == (
        "layernorm", dict(eps=1e-3))
    assert gn.lower(_node("groupnorm", dict(groups=3, eps=1e-4)), [(6, 5, 6)]) == (
        "groupnorm", dict(groups=3, eps=1e-4))
    assert sc.lower(_node("scale", dict(bias=True, init=0.5)), [(6, 5, 6)]) == ("scale", {})


def test_scale_weight_starts_at_init_as_text():
    sc = LAYERS["scale"]
    assert sc.init("weight", dict(bias=False, init=1e-6)) == "1e-06"
    assert sc.init("weight", dict(bias=True, init=2)) == "2.0"
    assert sc.init("bias", dict(bias=True, init=1e-6)) == "zeros"
    assert float(sc.init("weight", dict(bias=False, init=-0.25))) == -0.25
    assert sc.init("weight") == "1.0"  # the default init=1.0


def test_scale_init_reaches_the_plan():
    import cnnc
    from cnnc.compiler.plan import lower

    net = cnnc.check("network t\ninput x: [3, 4, 4]\noutput y = x -> scale(init=1e-6)\n")
    assert lower(net).initial["y.scale1.weight"] == "1e-06"


def test_new_primitive_flags():
    ln, gn, sc = PRIMITIVES["layernorm"], PRIMITIVES["groupnorm"], PRIMITIVES["scale"]
    for p in (ln, gn, sc):
        assert p.accepts_out and p.in_place == "first" and not p.alias and not p.gemm
        assert not p.accepts_scale and p.gpu_forward is None
    assert sc.gpu_kernel is norm.scale_gpu
    assert ln.gpu_kernel is None and gn.gpu_kernel is None  # NumPy-API kernels on CuPy


# ---------------------------------------------------------------- checking networks


def _check(source):
    import cnnc

    return cnnc.check(source)


def _node_of(net, op, k=1):
    return [n for n in net.nodes.values() if n.op == op][k - 1]


def test_new_layers_check_on_maps_and_vectors():
    net = _check("network t\ninput x: [6, 8, 8]\n"
                 "output y = x -> conv(6, 3) -> layernorm -> groupnorm(3) -> scale(init=1e-6)"
                 " -> scale(true) -> flatten -> layernorm(eps=1e-6) -> groupnorm(4)"
                 " -> scale\n")
    assert net.ok, [d.message for d in net.diagnostics]
    assert _node_of(net, "layernorm", 1).shape == (6, 6, 6)
    assert _node_of(net, "layernorm", 2).shape == (216,)
    assert _node_of(net, "groupnorm", 2).params == {"weight": (216,), "bias": (216,)}
    assert _node_of(net, "scale", 1).params == {"weight": (6,)}
    assert _node_of(net, "scale", 2).params == {"weight": (6,), "bias": (6,)}
    assert all(n.macs == 0 for n in net.nodes.values() if n.op in ("layernorm", "groupnorm",
                                                                    "scale"))


def test_batchnorm_and_the_new_norms_keep_symbolic_sizes():
    net = _check("network t\ninput x: [4, H, W]\n"
                 "output y = x -> batchnorm -> layernorm -> groupnorm(2) -> scale(true)\n")
    assert net.ok, [d.message for d in net.diagnostics]
    shapes = {n.op: n.shape for n in net.nodes.values() if n.op != "input"}
    want = net.nodes["x"].shape
    assert shapes == {"batchnorm": want, "layernorm": want, "groupnorm": want, "scale": want}


@pytest.mark.parametrize("source, message, help", [
    ("input x: [6, 8, 8]\noutput y = x -> groupnorm(4)",
     "groupnorm groups=4 does not divide the 6 input channels",
     "6 divides by groups=2 or groups=3 or groups=6"),
    ("input x: [10]\noutput y = x -> groupnorm(3)",
     "groupnorm groups=3 does not divide the 10 input features",
     "10 divides by groups=1 or groups=2 or groups=5"),
    ("input x: [4, 8, 8]\noutput y = x -> groupnorm(8)",
     "groupnorm groups=8 does not divide the 4 input channels",
     "4 divides by groups=1 or groups=2 or groups=4"),
    ("input x: [6, H, W]\noutput y = x -> groupnorm(4)",
     "groupnorm groups=4 does not divide the 6 input channels",
     "6 divides by groups=2 or groups=3 or groups=6"),
])
def test_groupnorm_groups_must_divide_the_channels(source, message, help):
    net = _check("network t\n" + source + "\n")
    (d,) = net.diagnostics
    assert (d.code, d.message, d.help) == ("E305", message, help)
    assert d.notes and d.notes[0].startswith("input is ")


@pytest.mark.parametrize("call, code", [
    ("groupnorm(0)", "E207"), ("groupnorm", "E204"), ("layernorm(eps=0)", "E207"),
    ("groupnorm(2, eps=-1)", "E207"), ("scale(bias=1)", "E206"), ("scale(init=true)", "E206"),
])
def test_new_layers_argument_errors(call, code):
    net = _check(f"network t\ninput x: [4, 8, 8]\noutput y = x -> {call}\n")
    assert [d.code for d in net.diagnostics] == [code]


# ---------------------------------------------------------------- layernorm


@pytest.mark.torch
@pytest.mark.parametrize("shape", RANK_SHAPES + [(2, 1, 3, 3), (2, 2, 4)], ids=str)
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_layernorm_matches_torch(shape, eps):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(21)
    channels = shape[1]
    x = rng.standard_normal(shape) * 2 + 1
    params = [rng.uniform(0.5, 2.0, channels), rng.standard_normal(channels)]

    def reference(tx, w, b):
        return _torch_layernorm(torch, tx, w, b, eps)

    _against_torch(norm.layernorm_forward, norm.layernorm_backward, norm.layernorm, reference,
                   x, params, dict(eps=eps))


@pytest.mark.parametrize("shape", RANK_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_layernorm_matches_reference_and_normalises_each_position(shape, dtype):
    rng = np.random.default_rng(22)
    x = (rng.standard_normal(shape) * 3 - 2).astype(dtype)
    y = norm.layernorm(x, None, None, eps=1e-5)
    assert y.dtype == dtype
    assert_close(y, norm.layernorm_reference(x, eps=1e-5))
    # every position of every sample: mean 0 and variance 1 over the channels
    tol = TOLERANCES[np.dtype(dtype)]
    np.testing.assert_allclose(y.mean(axis=1), 0, atol=20 * tol["atol"])
    np.testing.assert_allclose(y.var(axis=1), 1, rtol=1e-3)


def test_layernorm_float32_keeps_precision_far_from_zero():
    """A large common offset: the float32 kernel subtracts a float64-accumulated mean."""
    rng = np.random.default_rng(23)
    x = rng.standard_normal((2, 64, 5, 5)) + 100.0
    weight, bias = rng.uniform(0.5, 2, 64), rng.standard_normal(64)
    want = norm.layernorm_reference(x, weight, bias, eps=1e-5)
    got = norm.layernorm(x.astype(np.float32), weight.astype(np.float32),
                         bias.astype(np.float32), eps=1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 2, 2)], ids=str)
@pytest.mark.parametrize("affine", [True, False])
def test_layernorm_finite_differences(shape, affine):
    rng = np.random.default_rng(24)
    c = shape[1]
    params = [rng.uniform(0.5, 2.0, c), rng.standard_normal(c)] if affine else [None, None]
    _fd_check(norm.layernorm_forward, norm.layernorm_backward,
              [rng.standard_normal(shape) * 2], params, eps=1e-3)


def test_layernorm_of_one_channel_is_its_bias():
    x = np.random.default_rng(25).standard_normal((2, 1, 3, 3))
    y = norm.layernorm(x, np.array([3.0]), np.array([0.5]), eps=1e-5)
    np.testing.assert_array_equal(y, np.full_like(x, 0.5))
    _, saved = norm.layernorm_forward(x, np.array([3.0]), np.array([0.5]), eps=1e-5)
    (gx,), (gW, gb) = norm.layernorm_backward(saved, np.ones_like(x))
    np.testing.assert_array_equal(gx, 0.0)
    assert gW == 0.0 and gb == 18.0


# ---------------------------------------------------------------- groupnorm


GROUP_CASES = [
    ((2, 6, 3, 4), 1), ((2, 6, 3, 4), 2), ((2, 6, 3, 4), 3), ((2, 6, 3, 4), 6),
    ((3, 8), 4), ((3, 8), 8), ((2, 4, 7), 2), ((2, 4, 2, 3, 2), 2), ((2, 4, 2, 3, 2), 4),
]


@pytest.mark.torch
@pytest.mark.parametrize("shape, groups", GROUP_CASES, ids=str)
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_groupnorm_matches_torch(shape, groups, eps):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(31)
    channels = shape[1]
    x = rng.standard_normal(shape) * 2 - 1
    params = [rng.uniform(0.5, 2.0, channels), rng.standard_normal(channels)]

    def reference(tx, w, b):
        return torch.nn.functional.group_norm(tx, groups, w, b, eps)

    _against_torch(norm.groupnorm_forward, norm.groupnorm_backward, norm.groupnorm, reference,
                   x, params, dict(groups=groups, eps=eps))
    # and torch.nn.GroupNorm itself, the module named in the spec
    y_module, _ = _torch_groupnorm(torch, torch.from_numpy(x), torch.from_numpy(params[0]),
                                   torch.from_numpy(params[1]), eps, groups)
    np.testing.assert_allclose(norm.groupnorm(x, *params, groups=groups, eps=eps),
                               y_module.detach().numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape, groups", GROUP_CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_groupnorm_matches_reference(shape, groups, dtype):
    rng = np.random.default_rng(32)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    weight, bias = rng.uniform(0.5, 2.0, shape[1]), rng.standard_normal(shape[1])
    y = norm.groupnorm(x, weight.astype(dtype), bias.astype(dtype), groups=groups, eps=1e-5)
    assert y.dtype == dtype
    assert_close(y, norm.groupnorm_reference(x, weight, bias, groups=groups, eps=1e-5))


@pytest.mark.torch
def test_groupnorm_extremes_are_instance_norm_and_layer_norm_of_the_sample():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(33).standard_normal((2, 4, 3, 5))
    instance = torch.nn.functional.instance_norm(torch.from_numpy(x), eps=1e-5)
    np.testing.assert_allclose(norm.groupnorm(x, groups=4, eps=1e-5), instance.numpy(),
                               rtol=1e-10, atol=1e-10)
    whole = torch.nn.functional.layer_norm(torch.from_numpy(x), x.shape[1:], eps=1e-5)
    np.testing.assert_allclose(norm.groupnorm(x, groups=1, eps=1e-5), whole.numpy(),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape, groups", [((4, 6), 3), ((2, 4, 2, 3), 2), ((2, 3, 5), 3)],
                         ids=str)
@pytest.mark.parametrize("affine", [True, False])
def test_groupnorm_finite_differences(shape, groups, affine):
    rng = np.random.default_rng(34)
    c = shape[1]
    params = [rng.uniform(0.5, 2.0, c), rng.standard_normal(c)] if affine else [None, None]
    _fd_check(norm.groupnorm_forward, norm.groupnorm_backward,
              [rng.standard_normal(shape) * 2], params, groups=groups, eps=1e-3)


def test_groupnorm_kernel_errors():
    x = np.ones((2, 6, 3))
    with pytest.raises(ValueError, match=r"groupnorm: groups=4 does not divide the 6 channels "
                                         r"of input \(2, 6, 3\)"):
        norm.groupnorm(x, groups=4)
    with pytest.raises(ValueError, match=r"groupnorm: groups=0 does not divide"):
        norm.groupnorm_forward(x, groups=0)
    with pytest.raises(ValueError, match=r"groupnorm: weight must be \[6\] for input "
                                         r"\(2, 6, 3\), got \(3,\)"):
        norm.groupnorm(x, np.ones(3), None, groups=2)
    with pytest.raises(ValueError, match=r"groupnorm: input must be \[N, C, \.\.\.\]"):
        norm.groupnorm(np.ones(6), groups=2)
    _, saved = norm.groupnorm_forward(x * np.arange(3), groups=2)
    with pytest.raises(ValueError, match=r"groupnorm backward: dy must have .*\(2, 6, 3\)"):
        norm.groupnorm_backward(saved, np.ones((2, 6)))


def test_layernorm_and_scale_kernel_errors():
    x = np.ones((2, 3, 4))
    with pytest.raises(ValueError, match=r"layernorm: bias must be \[3\] for input "
                                         r"\(2, 3, 4\), got \(4,\)"):
        norm.layernorm(x, np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match=r"layernorm: input must be \[N, C, \.\.\.\]"):
        norm.layernorm_forward(np.ones(3))
    with pytest.raises(ValueError, match=r"scale: weight must be \[3\] for input "
                                         r"\(2, 3, 4\), got \(1,\)"):
        norm.scale(x, np.ones(1))
    _, saved = norm.layernorm_forward(x * np.arange(3)[:, None])
    with pytest.raises(ValueError, match=r"layernorm backward: dy must have"):
        norm.layernorm_backward(saved, np.ones((2, 3)))
    _, saved = norm.scale_forward(x, np.ones(3))
    with pytest.raises(ValueError, match=r"scale backward: dy must have"):
        norm.scale_backward(saved, np.ones((2, 3)))


# ---------------------------------------------------------------- scale


@pytest.mark.torch
@pytest.mark.parametrize("shape", RANK_SHAPES, ids=str)
@pytest.mark.parametrize("bias", [False, True])
def test_scale_matches_torch(shape, bias):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(41)
    channels = shape[1]
    weight = rng.standard_normal(channels)
    weight[0] = 1e-6  # ConvNeXt's layer scale starts there
    params = [weight] + ([rng.standard_normal(channels)] if bias else [])

    def reference(tx, w, b=None):
        return _torch_scale(torch, tx, w, b)

    _against_torch(norm.scale_forward, norm.scale_backward, norm.scale, reference,
                   rng.standard_normal(shape), params, {})


@pytest.mark.parametrize("shape", RANK_SHAPES, ids=str)
@pytest.mark.parametrize("bias", [False, True])
def test_scale_finite_differences_and_reference(shape, bias):
    rng = np.random.default_rng(42)
    c = shape[1]
    params = [rng.standard_normal(c)] + ([rng.standard_normal(c)] if bias else [])
    x = rng.standard_normal(shape)
    assert_close(norm.scale(x, *params), norm.scale_reference(x, *params))
    _fd_check(norm.scale_forward, norm.scale_backward, [x], params)


def test_scale_gradients_follow_the_params_given():
    x = np.random.default_rng(43).standard_normal((2, 3, 4))
    y, saved = norm.scale_forward(x, np.ones(3))
    (gx,), gps = norm.scale_backward(saved, np.ones_like(y))
    assert len(gps) == 1 and gps[0].shape == (3,)
    y, saved = norm.scale_forward(x, np.ones(3), np.zeros(3))
    _, gps = norm.scale_backward(saved, np.ones_like(y))
    assert [g.shape for g in gps] == [(3,), (3,)]
    np.testing.assert_array_equal(gps[1], 8.0)


# ---------------------------------------------------------------- out= and in place


@pytest.mark.parametrize("name, params, attrs", [
    ("layernorm", 2, dict(eps=1e-5)),
    ("groupnorm", 2, dict(groups=2, eps=1e-5)),
    ("scale", 1, {}),
    ("scale", 2, {}),
])
@pytest.mark.parametrize("dtype", DTYPES)
def test_new_kernels_write_into_out_in_place_and_channel_slices(name, params, attrs, dtype):
    kernel = PRIMITIVES[name].kernel
    rng = np.random.default_rng(44)
    x = rng.standard_normal((2, 4, 3, 5)).astype(dtype)
    ps = [rng.uniform(0.5, 2.0, 4).astype(dtype) for _ in range(params)]
    want = kernel(x, *ps, **attrs)
    out = np.full_like(x, np.nan)
    assert kernel(x, *ps, out=out, **attrs) is out
    np.testing.assert_array_equal(out, want)
    wide = np.full((2, 7, 3, 5), 7.0, dtype=dtype)  # a concat buffer: a channel slice
    part = wide[:, 2:6]
    kernel(x, *ps, out=part, **attrs)
    np.testing.assert_array_equal(part, want)
    assert (wide[:, :2] == 7).all() and (wide[:, 6:] == 7).all()
    same = x.copy()
    assert kernel(same, *ps, out=same, **attrs) is same  # in_place="first"
    np.testing.assert_array_equal(same, want)
    view = wide[:, 1:5]  # in place on a non-contiguous view
    view[...] = x
    kernel(view, *ps, out=view, **attrs)
    np.testing.assert_array_equal(view, want)


@pytest.mark.parametrize("name, params, attrs", [
    ("layernorm", 2, dict(eps=1e-5)),
    ("groupnorm", 2, dict(groups=2, eps=1e-5)),
    ("scale", 2, {}),
    ("batchnorm", 4, dict(eps=1e-5, momentum=0.1)),
])
def test_new_kernels_run_an_empty_batch(name, params, attrs):
    p = PRIMITIVES[name]
    x = np.zeros((0, 4, 3, 2))
    ps = [np.ones(4) for _ in range(params)]
    assert p.kernel(x, *ps, **attrs).shape == x.shape
    y, saved = p.forward(x, *[q.copy() for q in ps], train=False, **attrs)
    (gx,), _ = p.backward(saved, y)
    assert y.shape == gx.shape == x.shape


# ---------------------------------------------------------------- batchnorm on every rank


@pytest.mark.torch
@pytest.mark.parametrize("shape", [(3, 4, 7), (2, 4, 2, 3, 4)], ids=["[C, L]", "[C, D, H, W]"])
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_on_signals_and_volumes_matches_torch(shape, train):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(51)
    x = rng.standard_normal(shape) * 2 + 1
    weight, bias, mean = (rng.standard_normal(4) for _ in range(3))
    var = rng.uniform(0.5, 2.0, 4)
    y32 = norm.batchnorm(*(a.astype(np.float32) for a in (x, weight, bias, mean, var)),
                         eps=1e-5)
    module = (torch.nn.BatchNorm1d if len(shape) == 3 else torch.nn.BatchNorm3d)(
        4, eps=1e-5, momentum=0.3).double()
    with torch.no_grad():
        for name, value in dict(weight=weight, bias=bias, running_mean=mean,
                                running_var=var).items():
            getattr(module, name).copy_(torch.from_numpy(value))
    module.eval()
    np.testing.assert_allclose(y32, module(torch.from_numpy(x)).detach().numpy(), **F32_FORWARD)
    module.train(train)
    ours_mean, ours_var = mean.copy(), var.copy()
    y, saved = norm.batchnorm_forward(x, weight, bias, ours_mean, ours_var, train=train,
                                      eps=1e-5, momentum=0.3)
    tx = torch.tensor(x, requires_grad=True)
    ty = module(tx)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-10)
    dy = np.random.default_rng(52).standard_normal(y.shape)
    (gx,), (gW, gb, _, _) = norm.batchnorm_backward(saved, dy)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(gx, tx.grad.numpy(), **F64_GRAD)
    np.testing.assert_allclose(gW, module.weight.grad.numpy(), **F64_GRAD)
    np.testing.assert_allclose(gb, module.bias.grad.numpy(), **F64_GRAD)
    np.testing.assert_allclose(ours_mean, module.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours_var, module.running_var.numpy(), rtol=1e-12)


@pytest.mark.parametrize("shape", [(3, 4, 7), (2, 4, 2, 3, 4)], ids=["[C, L]", "[C, D, H, W]"])
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_on_signals_and_volumes_reference_and_finite_differences(shape, train):
    rng = np.random.default_rng(53)
    x = rng.standard_normal(shape)
    stats = [rng.uniform(0.5, 2, 4), rng.standard_normal(4), rng.standard_normal(4),
             rng.uniform(0.5, 2, 4)]
    assert_close(norm.batchnorm(x, *stats, eps=1e-5),
                 norm.batchnorm_reference(x, *stats, eps=1e-5))
    small = x[:, :, :3] if len(shape) == 3 else x[:, :, :, :2, :2]
    _fd_check(norm.batchnorm_forward, norm.batchnorm_backward, [small], stats,
              buffers=(2, 3), train=train, eps=1e-3, momentum=0.1)


def test_batchnorm_checks_on_signals_and_volumes():
    """batchnorm takes [C, L] and [C, D, H, W] per its ranks."""
    bn = LAYERS["batchnorm"]
    for shape in [(4, 9), (4, 2, 5, 6)]:
        assert len(shape) in bn.ranks
        assert bn.infer(shape, dict(eps=1e-5, momentum=0.1), None) == shape


# ---------------------------------------------------------------- ONNX


@pytest.mark.parametrize("shape", [s[1:] for s in RANK_SHAPES], ids=str)
def test_layernorm_onnx_in_onnxruntime(shape):
    rng = np.random.default_rng(61)
    params = [rng.uniform(0.5, 2, shape[0]).astype(np.float32),
              rng.standard_normal(shape[0]).astype(np.float32)]
    model = _onnx_model(norm.layernorm_onnx, dict(eps=1e-3), shape, params)
    types = [n.op_type for n in model.graph.node]
    assert "LayerNormalization" in types
    assert types.count("Transpose") == (0 if len(shape) == 1 else 2)
    x = (rng.standard_normal((3,) + shape) * 2 + 1).astype(np.float32)
    np.testing.assert_allclose(_onnxruntime(model, x), norm.layernorm(x, *params, eps=1e-3),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape, groups", [(s[1:], g) for s, g in GROUP_CASES], ids=str)
def test_groupnorm_onnx_in_onnxruntime(shape, groups):
    rng = np.random.default_rng(62)
    params = [rng.uniform(0.5, 2, shape[0]).astype(np.float32),
              rng.standard_normal(shape[0]).astype(np.float32)]
    model = _onnx_model(norm.groupnorm_onnx, dict(groups=groups, eps=1e-4), shape, params)
    types = [n.op_type for n in model.graph.node]
    assert "InstanceNormalization" in types and "GroupNormalization" not in types
    x = (rng.standard_normal((3,) + shape) * 2 - 1).astype(np.float32)
    want = norm.groupnorm(x, *params, groups=groups, eps=1e-4)
    np.testing.assert_allclose(_onnxruntime(model, x), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [s[1:] for s in RANK_SHAPES], ids=str)
@pytest.mark.parametrize("bias", [False, True])
def test_scale_onnx_in_onnxruntime(shape, bias):
    rng = np.random.default_rng(63)
    params = [rng.standard_normal(shape[0]).astype(np.float32) for _ in range(1 + bias)]
    model = _onnx_model(norm.scale_onnx, {}, shape, params)
    assert [n.op_type for n in model.graph.node if n.op_type != "Unsqueeze"] == (
        ["Mul", "Add"] if bias else ["Mul"])
    x = rng.standard_normal((3,) + shape).astype(np.float32)
    np.testing.assert_allclose(_onnxruntime(model, x), norm.scale(x, *params), rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("shape", [(4, 7), (4, 2, 3, 4)], ids=["[C, L]", "[C, D, H, W]"])
def test_batchnorm_onnx_on_signals_and_volumes(rng, shape):
    stats = _stats(rng, shape[0], np.float32)
    model = _onnx_model(norm.batchnorm_onnx, dict(eps=1e-3, momentum=0.2), shape, stats)
    x = rng.standard_normal((3,) + shape).astype(np.float32)
    np.testing.assert_allclose(_onnxruntime(model, x), norm.batchnorm(x, *stats, eps=1e-3),
                               rtol=1e-4, atol=1e-5)


def test_new_onnx_emitters_need_their_parameters():
    step = SimpleNamespace(name="net.ln", attrs=dict(eps=1e-5, groups=2))
    for emit, label in [(norm.layernorm_onnx, "layernorm needs weight and bias"),
                        (norm.groupnorm_onnx, "groupnorm needs weight and bias")]:
        with pytest.raises(ExportError, match=f"net.ln: {label}"):
            emit(None, step, ["x"], ["net.ln.weight"], "y", [(4, 3, 3)])
    with pytest.raises(ExportError, match=r"net.ln: scale needs a weight"):
        norm.scale_onnx(None, step, ["x"], [], "y", [(4, 3, 3)])


# ---------------------------------------------------------------- a whole network


# A ConvNeXt-like block (tanh standing in for GELU), then the norms on a vector.
NORMS_NETWORK = """
network t
input x: [8, 6, 6]
a = x -> conv(8, 3, pad=1, groups=8) -> layernorm -> conv(16, 1) -> tanh
b = a -> conv(8, 1) -> scale(init=1e-6)
c = add(x, b) -> groupnorm(4) -> scale(true) -> batchnorm -> relu
output y = c -> flatten -> layernorm -> groupnorm(2) -> dense(5)
"""


@pytest.mark.torch
@pytest.mark.parametrize("train", [True, False])
def test_a_network_of_the_new_norms_matches_torch_autograd(train):
    torch = pytest.importorskip("torch")
    import cnnc
    from cnnc.runtime.torch_ref import TorchPlan

    model = cnnc.compile(NORMS_NETWORK).build(backend="numpy", dtype="float64",
                                                        seed=2)
    rng = np.random.default_rng(71)
    for key in model.params:  # away from the initial ones and zeros
        if not key.endswith("running_var"):
            model.params[key] = model.params[key] + 0.3 * rng.standard_normal(
                model.params[key].shape)
    before = {k: v.copy() for k, v in model.state().items()}
    x = rng.standard_normal((3, 8, 6, 6))
    # inference, through the memory plan (in-place norms and scales)
    ref = TorchPlan(model.plan, {k: v.copy() for k, v in before.items()})
    want = ref({"x": torch.from_numpy(x)})["y"].numpy()
    np.testing.assert_allclose(model(x), want, rtol=1e-9, atol=1e-10)
    # training
    y = model.forward(x, train=train)
    dy = rng.standard_normal(y.shape)
    dx = model.backward(dy)
    ref = TorchPlan(model.plan, {k: v.copy() for k, v in before.items()}, training=train)
    trainable = {k: v.requires_grad_() for k, v in ref.params.items() if k in model.plan.params}
    tx = torch.from_numpy(x).requires_grad_()
    ty = ref({"x": tx})["y"]
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-6, atol=1e-8)
    for key, t in trainable.items():
        np.testing.assert_allclose(model.grads[key], t.grad.numpy(), rtol=1e-6, atol=1e-8,
                                   err_msg=key)


def test_a_network_of_the_new_norms_exports_to_onnx():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import cnnc

    model = cnnc.compile(NORMS_NETWORK).build(backend="numpy", dtype="float32",
                                                        seed=3)
    proto = model.export()
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    x = np.random.default_rng(72).standard_normal((2, 8, 6, 6)).astype(np.float32)
    (got,) = session.run(["y"], {"x": x})
    np.testing.assert_allclose(got, model(x), rtol=1e-4, atol=1e-5)
