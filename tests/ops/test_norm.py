"""Batch norm and LRN (ops/norm.py): the layers, the kernels against the naive reference and
PyTorch, the training pair against finite differences and autograd, running statistics,
errors, and the ONNX emitters."""

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnc.ops import norm
from cnnc.ops.base import ExportError, weight_keys

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
    assert layer.ranks == (1, 3) and not layer.changes_shape
    args = dict(eps=1e-3, momentum=0.2)
    for shape in [(4, 5, 6), (7,)]:
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


class _Graph:
    """The part of runtime/onnx_export's graph builder an emitter uses, for one step."""

    def __init__(self, onnx, step, arrays, opset=17):
        self.onnx = onnx
        self.step = step
        self.arrays = arrays
        self.opset = opset
        self.nodes = []
        self.initializers = [onnx.numpy_helper.from_array(v, k) for k, v in arrays.items()]
        self.taken = set(arrays)

    def temp(self, purpose):
        name = f"{self.step.name}/{purpose}"
        k = 1
        while name in self.taken:
            name = f"{self.step.name}/{purpose}:{k}"
            k += 1
        self.taken.add(name)
        return name

    def node(self, op_type, inputs, output, purpose=None, **attrs):
        name = self.step.name if purpose is None else f"{self.step.name}/{purpose}"
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [output], name=name,
                                                     **attrs))
        return output

    def const(self, purpose, value, dtype):
        name = self.temp(purpose)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(value, dtype),
                                                                   name))
        return name


def _onnx_model(emit, attrs, in_shape, params=()):
    """An ONNX model of one step ``emit`` on input ``x`` of per-sample ``in_shape``."""
    onnx = pytest.importorskip("onnx")
    keys = [f"layer.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
    arrays = {k: np.asarray(p, np.float32) for k, p in zip(keys, params)}
    step = SimpleNamespace(name="layer", attrs=attrs, shape=in_shape, inputs=["x"],
                           params=list(arrays), span=None)
    g = _Graph(onnx, step, arrays)
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
