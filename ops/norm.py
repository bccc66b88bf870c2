"""Normalisation: batch normalisation with running statistics, layer and group
normalisation, a learnable per-channel scale, and local response normalisation (LRN) across
channels.

=========  ===============================  =========  ===========================================
layer      arguments                        primitive  kernel
=========  ===============================  =========  ===========================================
batchnorm  eps=1e-5, momentum=0.1           batchnorm  (x, weight, bias, running_mean,
                                                       running_var, *, eps, momentum)
layernorm  eps=1e-5                         layernorm  (x, weight, bias, *, eps)
groupnorm  groups, eps=1e-5                 groupnorm  (x, weight, bias, *, groups, eps)
scale      bias=false, init=1.0             scale      (x, weight, bias=None)
lrn        size=5, alpha=1e-4, beta=0.75,   lrn        (x, *, size, alpha, beta, k)
           k=1.0
=========  ===============================  =========  ===========================================

Every layer here but ``lrn`` is rank-generic: its input is ``[N, C, ...]`` (``[N, F]`` for a
vector, whose features count as its channels) and its parameters are ``[C]``.

Batch norm keeps the normalised input ``xhat`` and ``1/sqrt(var + eps)`` per channel; with
``m`` values per channel and ``g = dy * weight``,

    gx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps)     (batch statistics)
    gx = g / sqrt(running_var + eps)                                 (running statistics)
    gW = sum(dy * xhat),  gb = sum(dy)

Layer norm (over the channels at each position: ConvNeXt's channels-first LayerNorm) and
group norm (over each group of ``C/groups`` channels and every position of a sample) have the
same backward with their own statistics: the means run over the values that share a mean
and a variance (the ``C`` channels of a position; the ``C/groups * positions`` values of a
group), ``gW`` and ``gb`` sum over the batch and the positions.

Scale: ``y = x * weight[c] (+ bias[c])``; ``gx = dy * weight[c]``, ``gW = sum(dy * x)``.

LRN keeps ``x`` and its base ``b = k + alpha/size * sum(x_j^2)`` (``y = x / b^beta``):

    gx_c = dy_c / b_c^beta - 2 alpha beta / size * x_c * sum_j(dy_j x_j / b_j^(beta+1))

where ``j`` runs over the channels whose window contains ``c`` (the mirrored window).

The GPU has an inference kernel for batch norm, scale (one pass of ``cnnc_scale_shift``
each) and LRN (``cnnc_lrn_forward``); layer norm and group norm run their NumPy-API kernels
on CuPy arrays (a few whole-array passes, as fast as the device's reductions), and training
runs the generic forward and backward on CuPy arrays.
"""

from __future__ import annotations

import math

from ..compiler.symbolic import is_concrete
from . import gpu
from .base import ArgSpec, Example, ExportError, Layer, Primitive, divisor_help, elements
from .base import keeps_input, same_shape
from .window import map_only_help
from .xp import as_grad, floating, get_array_module, np

# ================================================================ batch normalisation

# ---- the layer


def _params_batchnorm(shape, args):
    return {"weight": (shape[0],), "bias": (shape[0],)}


def _buffers_batchnorm(shape, args):
    return {"running_mean": (shape[0],), "running_var": (shape[0],)}


_BATCHNORM_INIT = {
    "weight": "ones",
    "bias": "zeros",
    "running_mean": "zeros",
    "running_var": "ones",
}


def _init_batchnorm(key, args=None):
    return _BATCHNORM_INIT[key]


def _lower_batchnorm(node, in_shapes):
    a = node.args
    return "batchnorm", dict(eps=a["eps"], momentum=a["momentum"])


# ---- the kernel


def _per_channel(v, x):
    """A ``(C,)`` vector shaped to broadcast along axis 1 of ``x``."""
    return v.reshape((x.shape[1],) + (1,) * (x.ndim - 2))


def _check_vectors(x, weight, bias, running_mean, running_var):
    """Every vector given is ``[C]`` for input ``x``; else a ValueError naming the first."""
    channels = x.shape[1]
    for label, v in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                     ("running_var", running_var)):
        if v is not None and tuple(v.shape) != (channels,):
            raise ValueError(
                f"batchnorm: {label} must be [{channels}] for input {tuple(x.shape)}, "
                f"got {tuple(v.shape)}"
            )


def batchnorm(x, weight, bias, running_mean, running_var, *, eps=1e-5, momentum=0.1,
              out=None):
    """``(x - mean) / sqrt(var + eps) * weight + bias`` per channel (axis 1).

    ``momentum`` only matters in training (how fast the running statistics move); it is
    accepted here so that inference and training read the same step attributes.

    Folded into one scale and one shift per channel; ``weight``/``bias`` may be None
    (no affine part). Works on ``(N, C)`` and ``(N, C, ...)`` of any rank.
    """
    xp = get_array_module(x)
    x = floating(x, xp)
    _check_vectors(x, weight, bias, running_mean, running_var)
    scale = 1.0 / xp.sqrt(xp.asarray(running_var, dtype=xp.float64) + eps)  # (C,)
    if weight is not None:
        scale = scale * weight
    shift = -xp.asarray(running_mean, dtype=xp.float64) * scale  # (C,)
    if bias is not None:
        shift = shift + bias
    y = xp.multiply(x, _per_channel(scale.astype(x.dtype), x), out=out)
    y += _per_channel(shift.astype(x.dtype), x)
    return y


# ---- training


def _check_batchnorm(x, weight, bias, running_mean, running_var, momentum):
    if x.ndim < 2:
        raise ValueError(f"batchnorm: input must be [N, C, ...], got shape {tuple(x.shape)}")
    channels = x.shape[1]
    for label, v in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                     ("running_var", running_var)):
        if v is None and label.startswith("running"):
            raise ValueError(f"batchnorm: needs {label} (a [{channels}] array), got None")
        if v is not None and tuple(v.shape) != (channels,):
            raise ValueError(
                f"batchnorm: {label} must be [{channels}] for input {tuple(x.shape)}, "
                f"got {tuple(v.shape)}"
            )
    if momentum is None or not 0 <= momentum <= 1:
        raise ValueError(f"batchnorm: momentum must be in [0, 1], got {momentum!r}")


def batchnorm_forward(x, weight, bias, running_mean, running_var, *, eps=1e-5, momentum=0.1,
                      train=True, rng=None):
    """Normalise with the batch's statistics (``train=True``; the running statistics move
    by ``momentum``, in place) or with the running ones (``train=False``)."""
    xp = get_array_module(x)
    x = floating(x, xp)
    _check_batchnorm(x, weight, bias, running_mean, running_var, momentum)
    axes = (0,) + tuple(range(2, x.ndim))
    if not train:
        y = batchnorm(x, weight, bias, running_mean, running_var, eps=eps)
        inv_std = 1.0 / xp.sqrt(xp.asarray(running_var, dtype=xp.float64) + eps)
        inv_std = inv_std.astype(x.dtype)  # (C,)
        xhat = x - _per_channel(xp.asarray(running_mean, dtype=x.dtype), x)
        xhat *= _per_channel(inv_std, x)
        return y, (xhat, inv_std, weight, bias is not None, False)

    count = x.size // x.shape[1]  # values per channel
    if count < 2:
        raise ValueError(
            f"batchnorm: training needs more than one value per channel to estimate a "
            f"variance, got input shape {tuple(x.shape)}"
        )
    compiled = _compiled_batchnorm(x)
    if compiled is not None:  # three passes per channel, in parallel over the channels
        mean, var, inv_std, xhat, y = _batchnorm_train_compiled(compiled, x, weight, bias,
                                                                eps)
    else:
        mean = x.mean(axis=axes, dtype=xp.float64)  # (C,), accumulated in float64
        xhat = x - _per_channel(mean.astype(x.dtype), x)
        var = xp.square(xhat).mean(axis=axes, dtype=xp.float64)  # biased, (C,)
        inv_std64 = 1.0 / xp.sqrt(var + eps)
        inv_std = inv_std64.astype(x.dtype)
        xhat *= _per_channel(inv_std, x)
        y = _affine_forward(xhat, weight, bias, xp)

    running_mean *= 1 - momentum
    running_mean += (momentum * mean).astype(running_mean.dtype)
    running_var *= 1 - momentum
    running_var += (momentum * var * (count / (count - 1))).astype(running_var.dtype)
    return y, (xhat, inv_std, weight, bias is not None, True)


def batchnorm_backward(saved, dy):
    xhat, inv_std, weight, has_bias, batch_stats = saved
    xp = get_array_module(xhat)
    dy = as_grad(dy, xhat.shape, xhat.dtype, xp, "batchnorm")
    compiled = _compiled_batchnorm(xhat, dy) if batch_stats else None
    if compiled is not None:
        n, c = xhat.shape[:2]
        w = None if weight is None else np.asarray(weight, dtype=xhat.dtype)
        gx = np.empty(xhat.shape, dtype=xhat.dtype)
        gW = np.empty(c, dtype=xhat.dtype)
        gb = np.empty(c, dtype=xhat.dtype)
        compiled[1](xhat.reshape(n, c, -1), dy.reshape(n, c, -1), w is not None,
                    np.ones(c, xhat.dtype) if w is None else w, inv_std,
                    gx.reshape(n, c, -1), gW, gb)
        return (gx,), (None if weight is None else gW, gb if has_bias else None, None, None)
    axes = (0,) + tuple(range(2, xhat.ndim))
    gb = dy.sum(axis=axes)  # (C,)
    gW = (dy * xhat).sum(axis=axes)  # (C,)
    if weight is None:
        g = dy
        g_sum, g_dot = gb, gW  # sum(g), sum(g * xhat)
    else:
        w = xp.asarray(weight, dtype=xhat.dtype)
        g = dy * _per_channel(w, dy)
        g_sum, g_dot = gb * w, gW * w
    if batch_stats:
        count = xhat.size // xhat.shape[1]
        gx = xhat * _per_channel(g_dot / -count, xhat)
        gx += g
        gx -= _per_channel(g_sum / count, xhat)
        gx *= _per_channel(inv_std, xhat)
    else:
        gx = g * _per_channel(inv_std, xhat)
    dparams = (None if weight is None else gW, gb if has_bias else None, None, None)
    return (gx,), dparams


# ---- the compiled training pair
# Where ops/fast.py's kernels run (numba): per channel, the forward reads x twice (mean, then
# the centred sum of squares, both accumulated in float64) and writes xhat and y in a third
# pass; the backward reads dy and xhat twice (the two sums, then gx). The NumPy-API code
# above makes about eight whole-array passes each way, one thread.
_BATCHNORM_COMPILED = []  # [(forward, backward)] once built


def _compiled_batchnorm(*arrays):
    """The compiled ``(forward, backward)`` of batch norm's training pair when
    ``ops/fast.py``'s kernels take ``arrays``; else None."""
    from . import fast

    if not fast.usable(*arrays):
        return None
    if not _BATCHNORM_COMPILED:
        _BATCHNORM_COMPILED.append(_build_batchnorm())
    return _BATCHNORM_COMPILED[0]


def _batchnorm_train_compiled(compiled, x, weight, bias, eps):
    """``(mean, var, inv_std, xhat, y)`` of a training forward, by the compiled kernel:
    ``mean`` and ``var`` (biased) in float64, the rest in ``x``'s dtype, with the NumPy
    code's arithmetic (``xhat = (x - mean) * inv_std``, ``y = xhat * weight + bias``)."""
    n, c = x.shape[:2]
    x3 = x.reshape(n, c, -1)  # (N, C, positions)
    xhat = np.empty(x.shape, dtype=x.dtype)
    y = np.empty(x.shape, dtype=x.dtype)
    mean = np.empty(c, dtype=np.float64)
    var = np.empty(c, dtype=np.float64)
    inv_std = np.empty(c, dtype=x.dtype)
    w = np.ones(c, x.dtype) if weight is None else np.asarray(weight, dtype=x.dtype)
    b = np.zeros(c, x.dtype) if bias is None else np.asarray(bias, dtype=x.dtype)
    compiled[0](x3, weight is not None, w, bias is not None, b, float(eps),
                xhat.reshape(n, c, -1), y.reshape(n, c, -1), mean, var, inv_std)
    return mean, var, inv_std, xhat, y


def _build_batchnorm():
    """The compiled pair, module-level functions of ops/fast.py (nested ones, each process
    would compile again: numba's cache keys a closure by the objects it holds)."""
    from . import fast

    return fast.batchnorm_train_forward, fast.batchnorm_train_backward


# ---- the GPU kernel


def batchnorm_gpu(x, weight, bias, running_mean, running_var, *, eps=1e-5, momentum=0.1,
                  out=None):
    """Inference batch norm, folded to one scale and one shift per channel (computed in
    float64 as the NumPy kernel does) and applied in one pass; into ``out`` when given
    (which may be ``x`` itself)."""
    dtype = gpu.compute_dtype(x.dtype)
    if dtype is None:
        # float16 x with float32 or float64 statistics: the backend's dtype test saw theirs
        return batchnorm(x, weight, bias, running_mean, running_var, eps=eps,
                         momentum=momentum, out=out)
    _check_vectors(x, weight, bias, running_mean, running_var)
    xp = gpu.cupy()
    x = gpu.contiguous(x, dtype, xp)
    scale = 1.0 / xp.sqrt(xp.asarray(running_var, dtype=xp.float64) + eps)  # (C,)
    if weight is not None:
        scale = scale * xp.asarray(weight)
    shift = -xp.asarray(running_mean, dtype=xp.float64) * scale  # (C,)
    if bias is not None:
        shift = shift + xp.asarray(bias)
    scale = gpu.contiguous(scale, dtype, xp)
    shift = gpu.contiguous(shift, dtype, xp)
    y = gpu.target(out, x.shape, dtype, xp, "batchnorm")
    channels, inner = gpu.channels_inner(x.shape)
    gpu.launch("cnnc_scale_shift", dtype, x.size, x, y, scale, shift, x.size, channels, inner)
    return gpu.deliver(y, out)


# ---- reference, ONNX, PyTorch


def batchnorm_reference(x, weight, bias, running_mean, running_var, *, eps=1e-5,
                        momentum=0.1):
    x = np.asarray(x, dtype=np.float64)
    y = np.empty_like(x)
    for c in range(x.shape[1]):
        scale = 1.0 if weight is None else float(weight[c])
        shift = 0.0 if bias is None else float(bias[c])
        std = math.sqrt(float(running_var[c]) + eps)
        y[:, c] = (x[:, c] - float(running_mean[c])) / std * scale + shift
    return y


def batchnorm_onnx(g, step, xs, ws, out, in_shapes):
    if len(ws) != 4:
        raise ExportError(f"{step.name}: batchnorm needs weight, bias, running_mean and "
                          f"running_var; the plan gives {ws}")
    a = step.attrs
    momentum = a.get("momentum")
    extra = {} if momentum is None else {"momentum": 1.0 - float(momentum)}  # ONNX's is 1 - ours
    g.node("BatchNormalization", xs + ws, out, epsilon=float(a["eps"]), **extra)


def batchnorm_torch(step, xs, ws, training):
    """Batch statistics (updating the running ones in place) when ``training``. The running
    statistics are buffers: detached (same storage), so that autograd leaves may be given."""
    import torch

    a = step.attrs
    running_mean, running_var = ws[2].detach(), ws[3].detach()
    return torch.nn.functional.batch_norm(xs[0], running_mean, running_var, ws[0], ws[1],
                                          training, a.get("momentum", 0.1), a["eps"])


# ---- examples


def batchnorm_examples(rng):
    def vectors(channels):  # weight, bias, running_mean, running_var (> 0)
        return [rng.uniform(0.5, 2.0, channels), rng.standard_normal(channels),
                rng.standard_normal(channels), rng.uniform(0.5, 2.0, channels)]

    return [
        Example([rng.standard_normal((2, 3, 3, 2)) * 2 + 1], vectors(3),
                dict(eps=1e-5, momentum=0.1), note="[C, H, W]"),
        Example([rng.standard_normal((2, 2, 2, 3))], vectors(2),
                dict(eps=1e-3, momentum=0.3), note="[C, H, W], other eps and momentum"),
        Example([rng.standard_normal((4, 5)) * 2 + 1], vectors(5),
                dict(eps=1e-5, momentum=0.1), note="[F]: batch 4, the values of a feature"),
        Example([rng.standard_normal((3, 2, 5)) * 2 - 1], vectors(2),
                dict(eps=1e-5, momentum=0.1), note="[C, L]: a 1-D signal"),
        Example([rng.standard_normal((2, 3, 2, 3, 2)) + 0.5], vectors(3),
                dict(eps=1e-4, momentum=0.2), note="[C, D, H, W]: a volume"),
    ]


# ================================================================ shared by the affine norms

# ---- the layers


def _params_affine(shape, args):
    """``weight [C]`` and ``bias [C]``, C the channels (a vector's features)."""
    return {"weight": (shape[0],), "bias": (shape[0],)}


def _init_affine(key, args=None):
    return {"weight": "ones", "bias": "zeros"}[key]


# ---- the kernels


def _param_axes(x):
    """The axes a per-channel parameter's gradient sums over: batch and positions."""
    return (0,) + tuple(range(2, x.ndim))


def _check_affine(op, x, weight, bias):
    """``x`` is ``[N, C, ...]`` and every vector given is ``[C]``; else a ValueError."""
    if x.ndim < 2:
        raise ValueError(f"{op}: input must be [N, C, ...], got shape {tuple(x.shape)}")
    channels = x.shape[1]
    for label, v in (("weight", weight), ("bias", bias)):
        if v is not None and tuple(v.shape) != (channels,):
            raise ValueError(
                f"{op}: {label} must be [{channels}] for input {tuple(x.shape)}, "
                f"got {tuple(v.shape)}"
            )


def _inv_std(centred, subscripts, count, eps, xp):
    """``1/sqrt(var + eps)`` in ``centred``'s dtype, the variance being the sum of squares
    that ``einsum(subscripts, centred, centred)`` gives (one pass, no squared copy) over
    ``count`` values, then in float64."""
    squares = xp.einsum(subscripts, centred, centred)
    var = squares.astype(xp.float64) / count
    return (1.0 / xp.sqrt(var + eps)).astype(centred.dtype)


def _affine_(y, weight, bias, xp):
    """``y * weight[c] + bias[c]`` in place (either may be None); returns ``y``."""
    if weight is not None:
        y *= _per_channel(xp.asarray(weight, dtype=y.dtype), y)
    if bias is not None:
        y += _per_channel(xp.asarray(bias, dtype=y.dtype), y)
    return y


def _affine_forward(xhat, weight, bias, xp):
    """The training forward's ``y`` from the kept ``xhat``, with the inference kernel's
    arithmetic (``xhat * weight``, then ``+ bias``), in a new array."""
    if weight is None:
        y = xhat.copy()
    else:
        y = xhat * _per_channel(xp.asarray(weight, dtype=xhat.dtype), xhat)
    if bias is not None:
        y += _per_channel(xp.asarray(bias, dtype=xhat.dtype), xhat)
    return y


def _normalised_backward(xhat, inv_std, weight, has_bias, dy, axis, grouped, xp):
    """The backward of ``y = xhat * weight + bias`` where ``xhat`` was normalised with
    statistics of its own: ``grouped(a)`` views ``a`` (x's shape) so that the values sharing
    a mean and a variance lie along ``axis`` (``inv_std`` broadcasts against that view)."""
    axes = _param_axes(xhat)
    gb = dy.sum(axis=axes)  # (C,)
    gW = (dy * xhat).sum(axis=axes)  # (C,)
    if weight is None:
        g = dy
    else:
        g = dy * _per_channel(xp.asarray(weight, dtype=xhat.dtype), dy)
    g = grouped(g)
    xg = grouped(xhat)
    gx = xg * (g * xg).mean(axis=axis, keepdims=True)
    xp.subtract(g, gx, out=gx)
    gx -= g.mean(axis=axis, keepdims=True)
    gx *= inv_std
    dparams = (None if weight is None else gW, gb if has_bias else None)
    return (gx.reshape(xhat.shape),), dparams


def _channel_onnx(g, v, rank, purpose):
    """A ``[C]`` initializer shaped ``(C, 1, ...)`` to broadcast along the channels of a
    per-sample shape of ``rank`` dims (a vector's ``[F]`` broadcasts as it is)."""
    if rank <= 1:
        return v
    axes = g.const(f"{purpose}_axes", list(range(1, rank)), np.int64)
    return g.node("Unsqueeze", [v, axes], g.temp(purpose), purpose)


def _affine_onnx(g, x, weight, bias, out, rank):
    """``out = x * weight[c] + bias[c]`` (``bias`` may be None)."""
    w = _channel_onnx(g, weight, rank, "weight")
    if bias is None:
        g.node("Mul", [x, w], out)
        return
    scaled = g.node("Mul", [x, w], g.temp("scaled"), "scale")
    g.node("Add", [scaled, _channel_onnx(g, bias, rank, "bias")], out)


def _channel_torch(v, x):
    """A ``(C,)`` tensor viewed to broadcast along dim 1 of ``x``."""
    return v.view((x.shape[1],) + (1,) * (x.dim() - 2))


# ================================================================ layer normalisation

# ---- the layer


def _lower_layernorm(node, in_shapes):
    return "layernorm", dict(eps=node.args["eps"])


# ---- the kernel


def _layernorm_centred(x, xp, out=None):
    """``x`` minus its mean over the channels (axis 1) at each position, into ``out``; the
    mean is accumulated in float64 (a sum across planes, not pairwise)."""
    mean = x.mean(axis=1, keepdims=True, dtype=xp.float64).astype(x.dtype)  # (N, 1, ...)
    return xp.subtract(x, mean, out=out)


def _layernorm_inv_std(centred, eps, xp):
    """``1/sqrt(var + eps)`` per position, ``(N, 1, ...)``."""
    inv_std = _inv_std(centred, "nc...,nc...->n...", centred.shape[1], eps, xp)
    return xp.expand_dims(inv_std, 1)


def layernorm(x, weight=None, bias=None, *, eps=1e-5, out=None):
    """``(x - mean) / sqrt(var + eps) * weight + bias`` with the mean and the (biased)
    variance over the channels at each position (axis 1 of ``(N, C, ...)``; over the
    features of ``(N, F)``); ``weight``/``bias`` are per channel and may be None.

    Into ``out`` when given, which may be ``x`` itself."""
    xp = get_array_module(x)
    x = floating(x, xp)
    _check_affine("layernorm", x, weight, bias)
    y = _layernorm_centred(x, xp, out)
    y *= _layernorm_inv_std(y, eps, xp)
    return _affine_(y, weight, bias, xp)


# ---- training


def layernorm_forward(x, weight=None, bias=None, *, eps=1e-5, train=True, rng=None):
    """The inference arithmetic (layer norm has no training behaviour of its own); keeps
    ``xhat`` and ``1/sqrt(var + eps)`` per position."""
    xp = get_array_module(x)
    x = floating(x, xp)
    _check_affine("layernorm", x, weight, bias)
    xhat = _layernorm_centred(x, xp)
    inv_std = _layernorm_inv_std(xhat, eps, xp)  # (N, 1, ...)
    xhat *= inv_std
    y = _affine_forward(xhat, weight, bias, xp)
    return y, (xhat, inv_std, weight, bias is not None)


def layernorm_backward(saved, dy):
    xhat, inv_std, weight, has_bias = saved
    xp = get_array_module(xhat)
    dy = as_grad(dy, xhat.shape, xhat.dtype, xp, "layernorm")
    # the channels of a position share its statistics: axis 1 as it is
    return _normalised_backward(xhat, inv_std, weight, has_bias, dy, 1, lambda a: a, xp)


# ---- reference, ONNX, PyTorch


def layernorm_reference(x, weight=None, bias=None, *, eps=1e-5):
    x = np.asarray(x, dtype=np.float64)
    channels = x.shape[1]
    y = np.empty_like(x)
    for n in range(x.shape[0]):
        for position in np.ndindex(*x.shape[2:]):
            values = [float(x[(n, c) + position]) for c in range(channels)]
            mean = math.fsum(values) / channels
            var = math.fsum((v - mean) ** 2 for v in values) / channels
            for c, v in enumerate(values):
                scale = 1.0 if weight is None else float(weight[c])
                shift = 0.0 if bias is None else float(bias[c])
                y[(n, c) + position] = (v - mean) / math.sqrt(var + eps) * scale + shift
    return y


def layernorm_onnx(g, step, xs, ws, out, in_shapes):
    """ONNX LayerNormalization (opset 17) normalises over the last axes: a vector is
    normalised as it is; a map is transposed channels-last, normalised over its last axis
    and transposed back (ConvNeXt's channels-first LayerNorm, as PyTorch exports it)."""
    if len(ws) != 2:
        raise ExportError(f"{step.name}: layernorm needs weight and bias; the plan gives {ws}")
    eps = float(step.attrs["eps"])
    rank = len(in_shapes[0])  # per sample
    if rank == 1:
        g.node("LayerNormalization", xs + ws, out, axis=-1, epsilon=eps)
        return
    last = [0] + list(range(2, rank + 1)) + [1]  # (N, C, ...) -> (N, ..., C)
    first = [0, rank] + list(range(1, rank))  # and back
    moved = g.node("Transpose", xs, g.temp("channels_last"), "channels_last", perm=last)
    normed = g.node("LayerNormalization", [moved] + ws, g.temp("normalised"), "normalise",
                    axis=-1, epsilon=eps)
    g.node("Transpose", [normed], out, perm=first)


def layernorm_torch(step, xs, ws, training):
    """``F.layer_norm`` over the last axis of the channels-last permutation."""
    import torch

    x = xs[0]
    eps = step.attrs["eps"]
    weight, bias = (ws + [None, None])[:2]
    if x.dim() == 2:
        return torch.nn.functional.layer_norm(x, (x.shape[1],), weight, bias, eps)
    moved = x.movedim(1, -1)
    normed = torch.nn.functional.layer_norm(moved, (x.shape[1],), weight, bias, eps)
    return normed.movedim(-1, 1)


# ---- examples


def _affine_vectors(rng, channels):
    return [rng.uniform(0.5, 2.0, channels), rng.standard_normal(channels)]


def layernorm_examples(rng):
    return [
        Example([rng.standard_normal((2, 4, 3, 2)) * 2 + 1], _affine_vectors(rng, 4),
                dict(eps=1e-5), note="[C, H, W]"),
        Example([rng.standard_normal((3, 5)) * 2 - 1], _affine_vectors(rng, 5),
                dict(eps=1e-5), note="[F]: over the features"),
        Example([rng.standard_normal((2, 3, 5))], _affine_vectors(rng, 3),
                dict(eps=1e-3), note="[C, L], another eps"),
        Example([rng.standard_normal((2, 3, 2, 3, 2)) + 0.5], _affine_vectors(rng, 3),
                dict(eps=1e-6), note="[C, D, H, W]"),
        Example([rng.standard_normal((2, 2, 3, 3)) * 3], _affine_vectors(rng, 2),
                dict(eps=1e-5), note="two channels: xhat is +-1"),
        Example([rng.standard_normal((2, 1, 2, 2))], _affine_vectors(rng, 1),
                dict(eps=1e-5), note="one channel: y is the bias, no input gradient"),
    ]


# ================================================================ group normalisation

# ---- the layer


def _infer_groupnorm(shape, a, ctx):
    channels = shape[0]
    groups = a["groups"]
    if is_concrete(channels) and channels % groups:
        what = "features" if len(shape) == 1 else "channels"
        ctx.error(
            "E305",
            f"groupnorm groups={groups} does not divide the {channels} input {what}",
            help=divisor_help("groups", channels, groups),
        )  # an error, but the output shape is known: checking goes on
    return shape


def _lower_groupnorm(node, in_shapes):
    a = node.args
    return "groupnorm", dict(groups=a["groups"], eps=a["eps"])


# ---- the kernel


def _check_groupnorm(x, weight, bias, groups):
    _check_affine("groupnorm", x, weight, bias)
    channels = x.shape[1]
    if groups < 1 or channels % groups:
        raise ValueError(f"groupnorm: groups={groups} does not divide the {channels} "
                         f"channels of input {tuple(x.shape)}")


def _grouped(a, groups):
    """``a`` (N, C, ...) as (N, groups, C/groups * positions): a view when it can be."""
    per_sample = math.prod(a.shape[1:])
    return a.reshape(a.shape[0], groups, per_sample // groups)


def _groupnorm_stats(x, groups, eps, xp):
    """``x`` minus its group's mean, ``(N, groups, C/groups * positions)`` (a new array),
    and ``1/sqrt(var + eps)`` per (sample, group), ``(N, groups, 1)``. The mean is a
    pairwise sum along the contiguous last axis, in ``x``'s dtype."""
    xg = _grouped(x, groups)  # (N, G, M)
    centred = xg - xg.mean(axis=2, keepdims=True)
    inv_std = _inv_std(centred, "ngm,ngm->ng", centred.shape[2], eps, xp)
    return centred, inv_std[:, :, None]


def _group_factor(inv_std, weight, x, xp):
    """``inv_std[n, group of c] * weight[c]``, shaped ``(N, C, 1, ...)`` to multiply ``x``:
    normalisation and weight in one pass."""
    n, channels = x.shape[:2]
    groups = inv_std.shape[1]
    per_channel = xp.broadcast_to(inv_std, (n, groups, channels // groups))  # (N, G, C/G)
    if weight is not None:
        w = xp.asarray(weight, dtype=x.dtype).reshape(groups, channels // groups)
        per_channel = per_channel * w
    return per_channel.reshape((n, channels) + (1,) * (x.ndim - 2))


def groupnorm(x, weight=None, bias=None, *, groups, eps=1e-5, out=None):
    """``torch.nn.GroupNorm``: the channels split into ``groups`` consecutive groups; each
    group of each sample normalised by its mean and (biased) variance over its channels and
    positions, then ``* weight[c] + bias[c]``. Into ``out`` when given (may be ``x``).

    Computed as ``(x - mean) * (inv_std * weight) + bias``: two passes after the
    statistics."""
    xp = get_array_module(x)
    x = floating(x, xp)
    _check_groupnorm(x, weight, bias, groups)
    centred, inv_std = _groupnorm_stats(x, groups, eps, xp)
    factor = _group_factor(inv_std, weight, x, xp)
    if out is None:
        out = centred.reshape(x.shape)  # a view of the new array: in place
    y = xp.multiply(centred.reshape(x.shape), factor, out=out)
    return _affine_(y, None, bias, xp)


# ---- training


def groupnorm_forward(x, weight=None, bias=None, *, groups, eps=1e-5, train=True, rng=None):
    """The inference arithmetic (no training behaviour of its own); keeps ``xhat`` and
    ``1/sqrt(var + eps)`` per (sample, group)."""
    xp = get_array_module(x)
    x = floating(x, xp)
    _check_groupnorm(x, weight, bias, groups)
    centred, inv_std = _groupnorm_stats(x, groups, eps, xp)
    y = centred.reshape(x.shape) * _group_factor(inv_std, weight, x, xp)
    _affine_(y, None, bias, xp)
    centred *= inv_std  # now xhat
    return y, (centred.reshape(x.shape), inv_std, weight, bias is not None, groups)


def groupnorm_backward(saved, dy):
    xhat, inv_std, weight, has_bias, groups = saved
    xp = get_array_module(xhat)
    dy = as_grad(dy, xhat.shape, xhat.dtype, xp, "groupnorm")

    def grouped(a):
        return _grouped(a, groups)  # (N, G, M)

    return _normalised_backward(xhat, inv_std, weight, has_bias, dy, 2, grouped, xp)


# ---- reference, ONNX, PyTorch


def groupnorm_reference(x, weight=None, bias=None, *, groups, eps=1e-5):
    x = np.asarray(x, dtype=np.float64)
    per_group = x.shape[1] // groups
    y = np.empty_like(x)
    for n in range(x.shape[0]):
        for k in range(groups):
            channels = range(k * per_group, (k + 1) * per_group)
            values = [float(v) for c in channels for v in x[n, c].ravel()]
            mean = math.fsum(values) / len(values)
            var = math.fsum((v - mean) ** 2 for v in values) / len(values)
            for c in channels:
                scale = 1.0 if weight is None else float(weight[c])
                shift = 0.0 if bias is None else float(bias[c])
                y[n, c] = (x[n, c] - mean) / math.sqrt(var + eps) * scale + shift
    return y


def groupnorm_onnx(g, step, xs, ws, out, in_shapes):
    """Composed for every opset: ONNX's GroupNormalization only arrived in opset 18 (with a
    scale and bias per group until opset 21 made them per channel). The input is reshaped to
    ``(N, groups, C/groups * positions)``; InstanceNormalization over its last axis (scale 1,
    bias 0) gives each group's normalised values, which are reshaped back and given the
    per-channel weight and bias (Mul, Add)."""
    if len(ws) != 2:
        raise ExportError(f"{step.name}: groupnorm needs weight and bias; the plan gives {ws}")
    a = step.attrs
    groups = int(a["groups"])
    shape = [int(d) for d in in_shapes[0]]  # per sample
    size = math.prod(shape)
    grouped_shape = g.const("grouped_shape", [0, groups, size // groups], np.int64)
    grouped = g.node("Reshape", [xs[0], grouped_shape], g.temp("grouped"), "group")
    ones = g.const("ones", np.ones(groups), np.float32)
    zeros = g.const("zeros", np.zeros(groups), np.float32)
    normed = g.node("InstanceNormalization", [grouped, ones, zeros], g.temp("normalised"),
                    "normalise", epsilon=float(a["eps"]))
    back_shape = g.const("shape", [0] + shape, np.int64)
    back = g.node("Reshape", [normed, back_shape], g.temp("ungrouped"), "ungroup")
    _affine_onnx(g, back, ws[0], ws[1], out, len(shape))


def groupnorm_torch(step, xs, ws, training):
    import torch

    a = step.attrs
    weight, bias = (ws + [None, None])[:2]
    return torch.nn.functional.group_norm(xs[0], a["groups"], weight, bias, a["eps"])


# ---- examples


def groupnorm_examples(rng):
    return [
        Example([rng.standard_normal((2, 6, 3, 2)) * 2 + 1], _affine_vectors(rng, 6),
                dict(groups=3, eps=1e-5), note="[C, H, W], two channels a group"),
        Example([rng.standard_normal((2, 4, 2, 3))], _affine_vectors(rng, 4),
                dict(groups=1, eps=1e-5), note="one group: the whole sample"),
        Example([rng.standard_normal((2, 3, 2, 2)) - 1], _affine_vectors(rng, 3),
                dict(groups=3, eps=1e-3), note="a group per channel: instance norm"),
        Example([rng.standard_normal((3, 8)) * 2], _affine_vectors(rng, 8),
                dict(groups=2, eps=1e-5), note="[F]: groups of features"),
        Example([rng.standard_normal((2, 4, 5))], _affine_vectors(rng, 4),
                dict(groups=2, eps=1e-5), note="[C, L]"),
        Example([rng.standard_normal((2, 4, 2, 2, 3)) + 0.5], _affine_vectors(rng, 4),
                dict(groups=2, eps=1e-6), note="[C, D, H, W]"),
    ]


# ================================================================ per-channel scale

# ---- the layer


def _params_scale(shape, args):
    out = {"weight": (shape[0],)}
    if args["bias"]:
        out["bias"] = (shape[0],)
    return out


def _init_scale(key, args=None):
    """The weight starts at the layer's ``init`` (a float as text), the bias at zeros.
    Without the arguments, the default ``init=1.0``."""
    if key == "bias":
        return "zeros"
    return repr(float(1.0 if args is None else args["init"]))


def _lower_scale(node, in_shapes):
    return "scale", {}


# ---- the kernel


def scale(x, weight, bias=None, *, out=None):
    """``x * weight[c] (+ bias[c])`` per channel (axis 1 of ``(N, C, ...)``, the features
    of ``(N, F)``); into ``out`` when given, which may be ``x`` itself."""
    xp = get_array_module(x)
    x = floating(x, xp)
    _check_affine("scale", x, weight, bias)
    y = xp.multiply(x, _per_channel(xp.asarray(weight, dtype=x.dtype), x), out=out)
    if bias is not None:
        y += _per_channel(xp.asarray(bias, dtype=x.dtype), x)
    return y


# ---- training


def scale_forward(x, weight, bias=None, *, train=True, rng=None):
    """The inference kernel's output; keeps ``x`` (not a copy) and the weight."""
    xp = get_array_module(x)
    x = floating(x, xp)
    y = scale(x, weight, bias)
    return y, (x, weight, bias is not None)


def scale_backward(saved, dy):
    x, weight, has_bias = saved
    xp = get_array_module(x)
    dy = as_grad(dy, x.shape, x.dtype, xp, "scale")
    axes = _param_axes(x)
    gx = dy * _per_channel(xp.asarray(weight, dtype=x.dtype), x)
    gW = (dy * x).sum(axis=axes)  # (C,)
    if not has_bias:
        return (gx,), (gW,)
    return (gx,), (gW, dy.sum(axis=axes))


# ---- the GPU kernel


def scale_gpu(x, weight, bias=None, *, out=None):
    """``x * weight[c] + bias[c]`` in one pass of batch norm's ``cnnc_scale_shift`` (a zero
    shift without a bias); into ``out`` when given, which may be ``x`` itself."""
    dtype = gpu.compute_dtype(x.dtype)
    if dtype is None:
        return scale(x, weight, bias, out=out)
    _check_affine("scale", x, weight, bias)
    xp = gpu.cupy()
    x = gpu.contiguous(x, dtype, xp)
    factor = gpu.contiguous(weight, dtype, xp)
    if bias is None:
        shift = xp.zeros(x.shape[1], dtype=dtype)
    else:
        shift = gpu.contiguous(bias, dtype, xp)
    y = gpu.target(out, x.shape, dtype, xp, "scale")
    channels, inner = gpu.channels_inner(x.shape)
    gpu.launch("cnnc_scale_shift", dtype, x.size, x, y, factor, shift, x.size, channels,
               inner)
    return gpu.deliver(y, out)


# ---- reference, ONNX, PyTorch


def scale_reference(x, weight, bias=None):
    x = np.asarray(x, dtype=np.float64)
    y = np.empty_like(x)
    for c in range(x.shape[1]):
        shift = 0.0 if bias is None else float(bias[c])
        y[:, c] = x[:, c] * float(weight[c]) + shift
    return y


def scale_onnx(g, step, xs, ws, out, in_shapes):
    """Mul by the weight shaped ``(C, 1, ...)`` (and Add the bias likewise)."""
    if len(ws) not in (1, 2):
        raise ExportError(f"{step.name}: scale needs a weight (and a bias); the plan gives "
                          f"{ws}")
    bias = ws[1] if len(ws) == 2 else None
    _affine_onnx(g, xs[0], ws[0], bias, out, len(in_shapes[0]))


def scale_torch(step, xs, ws, training):
    """``x * w.view(C, 1, ...) (+ b.view(C, 1, ...))``."""
    x = xs[0]
    y = x * _channel_torch(ws[0], x)
    if len(ws) > 1:
        y = y + _channel_torch(ws[1], x)
    return y


# ---- examples


def scale_examples(rng):
    return [
        Example([rng.standard_normal((2, 3, 2, 3))], [rng.standard_normal(3)],
                note="[C, H, W], no bias"),
        Example([rng.standard_normal((2, 3, 2, 3))], _affine_vectors(rng, 3),
                note="[C, H, W] with a bias"),
        Example([rng.standard_normal((3, 5))], [rng.standard_normal(5) * 1e-6],
                note="[F]: ConvNeXt's small layer scale"),
        Example([rng.standard_normal((2, 4, 5))], _affine_vectors(rng, 4), note="[C, L]"),
        Example([rng.standard_normal((2, 2, 2, 3, 2))], [rng.standard_normal(2)],
                note="[C, D, H, W]"),
    ]


# ================================================================ local response normalisation

# ---- the layer


def _lower_lrn(node, in_shapes):
    a = node.args
    return "lrn", dict(size=a["size"], alpha=a["alpha"], beta=a["beta"], k=a["k"])


def _rank_help_lrn(shape):
    return map_only_help("lrn", shape)


# ---- the kernel


def _check_lrn(x, size):
    if x.ndim < 3:
        raise ValueError(f"lrn: input must be [N, C, ...], got shape {tuple(x.shape)}")
    if size < 1:
        raise ValueError(f"lrn: size must be >= 1, got {size}")


def _channel_window_sum(a, before, after):
    """``out[:, c] = sum(a[:, j])`` for ``j`` from ``c - before`` to ``c + after``, channels
    outside ``[0, C)`` counting as zero; a fresh array. LRN's backward pass sums over the
    mirrored window (``before`` and ``after`` swapped)."""
    channels = a.shape[1]
    out = a.copy()  # offset 0 of the window
    for offset in range(-before, after + 1):
        if offset == 0 or abs(offset) >= channels:
            continue
        if offset > 0:
            out[:, :channels - offset] += a[:, offset:]
        else:
            out[:, -offset:] += a[:, :channels + offset]
    return out


def _lrn_base(x, size, alpha, k):
    """LRN's base ``k + alpha/size * sum(x_j^2)`` over the window of each channel, before it
    is raised to ``beta``; ``x`` is a float array. Shared with the training forward."""
    _check_lrn(x, size)
    acc = _channel_window_sum(x * x, size // 2, (size - 1) // 2)
    acc *= alpha / size
    acc += k
    return acc


def _power_(a, beta, xp):
    """``a ** beta`` in place for ``a > 0``. The exponents LRN uses in practice (0.75, the
    AlexNet/GoogLeNet value, and 0.5, 1) are built from square roots, several times faster
    than a general power and as accurate."""
    if beta == 1:
        return a
    if beta == 0.5:
        return xp.sqrt(a, out=a)
    if beta == 0.75:
        root = xp.sqrt(a)  # a^(1/2)
        xp.sqrt(root, out=a)  # a^(1/4)
        a *= root
        return a
    return xp.power(a, beta, out=a)


def lrn(x, *, size=5, alpha=1e-4, beta=0.75, k=1.0):
    """Local response normalisation across channels, as ``torch.nn.LocalResponseNorm``:

    ``y_c = x_c / (k + alpha/size * sum(x_j^2))^beta`` with ``j`` from ``c - size//2`` to
    ``c + (size-1)//2``, channels outside ``[0, C)`` counting as zero.
    """
    xp = get_array_module(x)
    x = floating(x, xp)
    _check_lrn(x, size)
    out = xp.empty(x.shape, dtype=x.dtype)
    # A few images at a time, so the window sums run in cache.
    per_image = max(1, math.prod(x.shape[1:]) * x.itemsize)
    step = max(1, (2 << 20) // per_image)
    for n0 in range(0, x.shape[0], step):
        part = x[n0:n0 + step]
        acc = _lrn_base(part, size, alpha, k)
        _power_(acc, beta, xp)
        xp.divide(part, acc, out=out[n0:n0 + step])
    return out


# ---- training


def lrn_forward(x, *, size=5, alpha=1e-4, beta=0.75, k=1.0, train=True, rng=None):
    """``y = x / base^beta`` exactly as ``lrn``; keeps ``x`` and ``base``."""
    xp = get_array_module(x)
    x = floating(x, xp)
    base = _lrn_base(x, size, alpha, k)
    y = _power_(base.copy(), beta, xp)  # the inference kernel's own power, for equal bits
    xp.divide(x, y, out=y)
    return y, (x, base, size, alpha, beta)


def lrn_backward(saved, dy):
    x, base, size, alpha, beta = saved
    xp = get_array_module(x)
    dy = as_grad(dy, x.shape, x.dtype, xp, "lrn")
    scale = xp.power(base, -beta)  # b^-beta
    t = dy * x
    t *= scale
    t /= base  # dy_j x_j / b_j^(beta+1)
    s = _channel_window_sum(t, (size - 1) // 2, size // 2)  # the mirrored window
    s *= x
    s *= -2.0 * alpha * beta / size
    gx = dy * scale
    gx += s
    return (gx,), ()


# ---- the GPU kernel


def lrn_gpu(x, *, size=5, alpha=1e-4, beta=0.75, k=1.0):
    """LRN across channels, as ``torch.nn.LocalResponseNorm``; one pass."""
    _check_lrn(x, size)
    xp = gpu.cupy()
    dtype = gpu.compute_dtype(x.dtype)
    x = gpu.contiguous(x, dtype, xp)
    y = xp.empty_like(x)
    channels, inner = gpu.channels_inner(x.shape)
    gpu.launch("cnnc_lrn_forward", dtype, x.size, x, y, x.size, channels, inner, size,
               alpha / size, beta, k)
    return y


# ---- reference, ONNX, PyTorch


def lrn_reference(x, *, size=5, alpha=1e-4, beta=0.75, k=1.0):
    x = np.asarray(x, dtype=np.float64)
    channels = x.shape[1]
    y = np.empty_like(x)
    for c in range(channels):
        lo = max(0, c - size // 2)
        hi = min(channels - 1, c + (size - 1) // 2)
        squares = np.zeros(x.shape[:1] + x.shape[2:])
        for j in range(lo, hi + 1):
            squares += x[:, j] ** 2
        y[:, c] = x[:, c] / (k + alpha / size * squares) ** beta
    return y


def lrn_onnx(g, step, xs, ws, out, in_shapes):
    """ONNX LRN for an odd ``size``; an even one is written out as primitives, since ONNX
    centres its window the other way round (and ONNX Runtime refuses even sizes)."""
    a = step.attrs
    size = int(a["size"])
    if size % 2 == 1:
        # ONNX sums channels c - (size-1)/2 .. c + (size-1)/2, as the kernel does for odd size.
        g.node("LRN", xs, out, size=size, alpha=float(a["alpha"]), beta=float(a["beta"]),
               bias=float(a["k"]))
        return
    # Even size: the kernel sums channels c - size/2 .. c + size/2 - 1 (PyTorch's window).
    # mean of squares over that window = a 3-D average pool over (N, 1, C, H, W), padded
    # size/2 channels before and size/2 - 1 after, counting the padding.
    x = xs[0]
    sq = g.node("Mul", [x, x], g.temp("square"), "square")
    axis1 = g.const("axis1", [1], np.int64)
    sq5 = g.node("Unsqueeze", [sq, axis1], g.temp("square5d"), "unsqueeze")
    mean = g.node("AveragePool", [sq5], g.temp("window_mean5d"), "window_mean",
                  kernel_shape=[size, 1, 1], strides=[1, 1, 1],
                  pads=[size // 2, 0, 0, (size - 1) // 2, 0, 0], count_include_pad=1)
    mean = g.node("Squeeze", [mean, axis1], g.temp("window_mean"), "squeeze")
    scaled = g.node("Mul", [mean, g.const("alpha", a["alpha"], np.float32)],
                    g.temp("scaled"), "scale")
    base = g.node("Add", [scaled, g.const("k", a["k"], np.float32)], g.temp("base"), "shift")
    denom = g.node("Pow", [base, g.const("beta", a["beta"], np.float32)], g.temp("denominator"),
                   "power")
    g.node("Div", [x, denom], out)


def lrn_torch(step, xs, ws, training):
    import torch

    a = step.attrs
    return torch.nn.functional.local_response_norm(xs[0], a["size"], a["alpha"], a["beta"],
                                                   a["k"])


# ---- examples


def lrn_examples(rng):
    def x():
        return rng.standard_normal((2, 6, 3, 2)) * 2

    return [
        Example([x()], attrs=dict(size=5, alpha=1e-4, beta=0.75, k=1.0), note="the defaults"),
        Example([x()], attrs=dict(size=3, alpha=1.0, beta=0.5, k=1.0), note="odd size"),
        Example([x()], attrs=dict(size=1, alpha=0.5, beta=1.0, k=2.0), note="size 1"),
        Example([x()], attrs=dict(size=2, alpha=0.5, beta=0.75, k=2.0),
                note="even size: one more channel before than after"),
        Example([x()], attrs=dict(size=4, alpha=0.3, beta=1.5, k=0.5), note="even size"),
        Example([x()], attrs=dict(size=9, alpha=0.2, beta=0.6, k=1.0),
                note="a window wider than the channels"),
    ]


# ================================================================ the tables

LAYERS = [
    Layer(
        "batchnorm",
        [ArgSpec("eps", "positive_float", 1e-5), ArgSpec("momentum", "unit_float", 0.1)],
        (1, 2, 3, 4),  # [F], [C, L], [C, H, W], [C, D, H, W]: per channel on any of them
        same_shape,
        _lower_batchnorm,
        params=_params_batchnorm,
        buffers=_buffers_batchnorm,
        init=_init_batchnorm,
        changes_shape=False,
        doc="batch normalisation",
    ),
    Layer(
        "layernorm",
        [ArgSpec("eps", "positive_float", 1e-5)],
        None,
        same_shape,
        _lower_layernorm,
        params=_params_affine,
        init=_init_affine,
        changes_shape=False,
        doc="layer normalisation over the channels at each position (features of a vector)",
    ),
    Layer(
        "groupnorm",
        [ArgSpec("groups", "count"), ArgSpec("eps", "positive_float", 1e-5)],
        None,
        _infer_groupnorm,
        _lower_groupnorm,
        params=_params_affine,
        init=_init_affine,
        changes_shape=False,
        doc="group normalisation: each group of channels over its channels and positions",
    ),
    Layer(
        "scale",
        [ArgSpec("bias", "bool", False), ArgSpec("init", "float", 1.0)],
        None,
        same_shape,
        _lower_scale,
        params=_params_scale,
        init=_init_scale,
        changes_shape=False,
        doc="a learnable per-channel multiplier (and bias), e.g. ConvNeXt's layer scale",
    ),
    Layer(
        "lrn",
        [
            ArgSpec("size", "count", 5),
            ArgSpec("alpha", "float", 1e-4),
            ArgSpec("beta", "float", 0.75),
            ArgSpec("k", "float", 1.0),
        ],
        (3,),
        same_shape,
        _lower_lrn,
        changes_shape=False,
        rank_help=_rank_help_lrn,
        doc="local response normalisation across channels",
    ),
]


# ---- what the training forwards keep (Primitive.keeps)


def _batchnorm_keeps(step, in_shapes, itemsize):
    # x-hat, and 1/sqrt(var + eps) per channel
    return [("new", "xhat", elements(in_shapes[0]) * itemsize, in_shapes[0][0] * itemsize)]


def _layernorm_keeps(step, in_shapes, itemsize):
    # x-hat, and 1/sqrt(var + eps) per position
    spatial = elements(in_shapes[0][1:])
    return [("new", "xhat", (elements(in_shapes[0]) + spatial) * itemsize, 0)]


def _groupnorm_keeps(step, in_shapes, itemsize):
    # x-hat, and 1/sqrt(var + eps) per group
    groups = int(step.attrs["groups"])
    return [("new", "xhat", (elements(in_shapes[0]) + groups) * itemsize, 0)]


def _lrn_keeps(step, in_shapes, itemsize):
    # x, and the base k + alpha/size * sum of squares
    return [("input", 0), ("new", "base", elements(in_shapes[0]) * itemsize, 0)]


PRIMITIVES = [
    Primitive(
        "batchnorm",
        "(x, weight, bias, running_mean, running_var, *, eps, momentum)",
        kernel=batchnorm,
        forward=batchnorm_forward,
        backward=batchnorm_backward,
        reference=batchnorm_reference,
        onnx=batchnorm_onnx,
        torch=batchnorm_torch,
        examples=batchnorm_examples,
        gpu_kernel=batchnorm_gpu,
        accepts_out=True,
        in_place="first",
        doc="per-channel normalisation: batch statistics in training, running ones else",
        keeps=_batchnorm_keeps,
    ),
    Primitive(
        "layernorm",
        "(x, weight, bias, *, eps)",
        kernel=layernorm,
        forward=layernorm_forward,
        backward=layernorm_backward,
        reference=layernorm_reference,
        onnx=layernorm_onnx,
        torch=layernorm_torch,
        examples=layernorm_examples,
        accepts_out=True,
        in_place="first",
        doc="normalisation over the channels at each position",
        keeps=_layernorm_keeps,
    ),
    Primitive(
        "groupnorm",
        "(x, weight, bias, *, groups, eps)",
        kernel=groupnorm,
        forward=groupnorm_forward,
        backward=groupnorm_backward,
        reference=groupnorm_reference,
        onnx=groupnorm_onnx,
        torch=groupnorm_torch,
        examples=groupnorm_examples,
        accepts_out=True,
        in_place="first",
        doc="normalisation over each group of channels and every position",
        keeps=_groupnorm_keeps,
    ),
    Primitive(
        "scale",
        "(x, weight, bias=None)",
        kernel=scale,
        forward=scale_forward,
        backward=scale_backward,
        reference=scale_reference,
        onnx=scale_onnx,
        torch=scale_torch,
        examples=scale_examples,
        gpu_kernel=scale_gpu,
        accepts_out=True,
        in_place="first",
        doc="a per-channel multiplier and bias",
        keeps=keeps_input,
    ),
    Primitive(
        "lrn",
        "(x, *, size, alpha, beta, k)",
        kernel=lrn,
        forward=lrn_forward,
        backward=lrn_backward,
        reference=lrn_reference,
        onnx=lrn_onnx,
        torch=lrn_torch,
        examples=lrn_examples,
        gpu_kernel=lrn_gpu,
        doc="local response normalisation across channels (PyTorch's window)",
        keeps=_lrn_keeps,
    ),
]


# What other frameworks (PyTorch, Keras, Caffe, ONNX) call this family's layers, lower-cased:
# the "did you mean" of an unknown layer (E203). A value is the cnnc layer, or
# ``(layer, help)`` where the spelling takes more than a name.
FOREIGN_NAMES = {
    "bn": "batchnorm",
    "batchnorm1d": "batchnorm",
    "batchnorm2d": "batchnorm",
    "batchnorm3d": "batchnorm",
    "batch_norm": "batchnorm",
    "batchnormalization": "batchnorm",
    "batch_normalization": "batchnorm",
    "ln": "layernorm",
    "layer_norm": "layernorm",
    "layernormalization": "layernorm",
    "gn": "groupnorm",
    "group_norm": "groupnorm",
    "groupnormalization": "groupnorm",
    "localresponsenorm": "lrn",
    "local_response_norm": "lrn",
    "layerscale": "scale",
    "layer_scale": "scale",
}
