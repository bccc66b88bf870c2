"""Normalisation, training: batch norm with batch statistics, LRN across channels.

Batch norm keeps the normalised input ``xhat`` and ``1/sqrt(var + eps)`` per channel; with
``m`` values per channel and ``g = dy * weight``,

    gx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps)     (batch statistics)
    gx = g / sqrt(running_var + eps)                                 (running statistics)
    gW = sum(dy * xhat),  gb = sum(dy)

LRN keeps ``x`` and its base ``b = k + alpha/size * sum(x_j^2)`` (``y = x / b^beta``):

    gx_c = dy_c / b_c^beta - 2 alpha beta / size * x_c * sum_j(dy_j x_j / b_j^(beta+1))

where ``j`` runs over the channels whose window contains ``c`` (the mirrored window).
"""

from ..kernels.norm import _per_channel, channel_window_sum, lrn_base, power_
from ..kernels.norm import batchnorm as batchnorm_inference
from ..xp import floating, get_array_module
from ._util import as_grad, prod


# ---------------------------------------------------------------- batch normalisation


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
        y = batchnorm_inference(x, weight, bias, running_mean, running_var, eps=eps)
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


def batchnorm_saved(step, input_shapes):
    return prod(input_shapes[0])  # xhat


# ---------------------------------------------------------------- local response norm


def lrn_forward(x, *, size=5, alpha=1e-4, beta=0.75, k=1.0, train=True, rng=None):
    """``y = x / base^beta`` exactly as ``kernels.norm.lrn``; keeps ``x`` and ``base``."""
    xp = get_array_module(x)
    x = floating(x, xp)
    base = lrn_base(x, size, alpha, k)
    y = power_(base.copy(), beta, xp)  # the inference kernel's own power, for equal bits
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
    s = channel_window_sum(t, (size - 1) // 2, size // 2)  # the mirrored window
    s *= x
    s *= -2.0 * alpha * beta / size
    gx = dy * scale
    gx += s
    return (gx,), ()


def lrn_saved(step, input_shapes):
    return 2 * prod(input_shapes[0])  # x and base
