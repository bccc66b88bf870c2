"""Normalisation: batch normalisation with running statistics, and local response
normalisation (LRN) across channels.

=========  ===============================  =========  ===========================================
layer      arguments                        primitive  kernel
=========  ===============================  =========  ===========================================
batchnorm  eps=1e-5, momentum=0.1           batchnorm  (x, weight, bias, running_mean,
                                                       running_var, *, eps, momentum)
lrn        size=5, alpha=1e-4, beta=0.75,   lrn        (x, *, size, alpha, beta, k)
           k=1.0
=========  ===============================  =========  ===========================================

Batch norm keeps the normalised input ``xhat`` and ``1/sqrt(var + eps)`` per channel; with
``m`` values per channel and ``g = dy * weight``,

    gx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps)     (batch statistics)
    gx = g / sqrt(running_var + eps)                                 (running statistics)
    gW = sum(dy * xhat),  gb = sum(dy)

LRN keeps ``x`` and its base ``b = k + alpha/size * sum(x_j^2)`` (``y = x / b^beta``):

    gx_c = dy_c / b_c^beta - 2 alpha beta / size * x_c * sum_j(dy_j x_j / b_j^(beta+1))

where ``j`` runs over the channels whose window contains ``c`` (the mirrored window).

The GPU has an inference kernel for each (one pass, ``cnnc_scale_shift`` and
``cnnc_lrn_forward``); training runs the generic forward and backward on CuPy arrays.
"""

from __future__ import annotations

import math

import numpy as np

from . import gpu
from .base import ArgSpec, Example, ExportError, Layer, Primitive, same_shape
from .window import map_only_help
from .xp import as_grad, floating, get_array_module

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


def _init_batchnorm(key):
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
    (no affine part). Works on ``(N, C)`` and ``(N, C, H, W)``.
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
    mean = x.mean(axis=axes, dtype=xp.float64)  # (C,), accumulated in float64
    xhat = x - _per_channel(mean.astype(x.dtype), x)
    var = xp.square(xhat).mean(axis=axes, dtype=xp.float64)  # biased, (C,)
    inv_std64 = 1.0 / xp.sqrt(var + eps)
    inv_std = inv_std64.astype(x.dtype)
    xhat *= _per_channel(inv_std, x)
    if weight is None:
        y = xhat.copy()
    else:
        y = xhat * _per_channel(xp.asarray(weight, dtype=x.dtype), x)
    if bias is not None:
        y += _per_channel(xp.asarray(bias, dtype=x.dtype), x)

    running_mean *= 1 - momentum
    running_mean += (momentum * mean).astype(running_mean.dtype)
    running_var *= 1 - momentum
    running_var += (momentum * var * (count / (count - 1))).astype(running_var.dtype)
    return y, (xhat, inv_std, weight, bias is not None, True)


def batchnorm_backward(saved, dy):
    xhat, inv_std, weight, has_bias, batch_stats = saved
    xp = get_array_module(xhat)
    dy = as_grad(dy, xhat.shape, xhat.dtype, xp, "batchnorm")
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
        (1, 3),
        same_shape,
        _lower_batchnorm,
        params=_params_batchnorm,
        buffers=_buffers_batchnorm,
        init=_init_batchnorm,
        changes_shape=False,
        doc="batch normalisation",
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
    ),
]
