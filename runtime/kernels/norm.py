"""Normalisation layers (forward, inference): batch norm with running statistics and
local response normalisation across channels."""

import math

from ..xp import floating, get_array_module


def _per_channel(v, x):
    """A ``(C,)`` vector shaped to broadcast along axis 1 of ``x``."""
    return v.reshape((x.shape[1],) + (1,) * (x.ndim - 2))


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
    channels = x.shape[1]
    for label, v in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                     ("running_var", running_var)):
        if v is not None and tuple(v.shape) != (channels,):
            raise ValueError(
                f"batchnorm: {label} must be [{channels}] for input {tuple(x.shape)}, "
                f"got {tuple(v.shape)}"
            )
    scale = 1.0 / xp.sqrt(xp.asarray(running_var, dtype=xp.float64) + eps)  # (C,)
    if weight is not None:
        scale = scale * weight
    shift = -xp.asarray(running_mean, dtype=xp.float64) * scale  # (C,)
    if bias is not None:
        shift = shift + bias
    y = xp.multiply(x, _per_channel(scale.astype(x.dtype), x), out=out)
    y += _per_channel(shift.astype(x.dtype), x)
    return y


def channel_window_sum(a, before, after):
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


def lrn_base(x, size, alpha, k):
    """LRN's base ``k + alpha/size * sum(x_j^2)`` over the window of each channel, before it
    is raised to ``beta``; ``x`` is a float array. Shared with the training kernel."""
    if x.ndim < 3:
        raise ValueError(f"lrn: input must be [N, C, ...], got shape {tuple(x.shape)}")
    if size < 1:
        raise ValueError(f"lrn: size must be >= 1, got {size}")
    acc = channel_window_sum(x * x, size // 2, (size - 1) // 2)
    acc *= alpha / size
    acc += k
    return acc


def lrn(x, *, size=5, alpha=1e-4, beta=0.75, k=1.0):
    """Local response normalisation across channels, as ``torch.nn.LocalResponseNorm``:

    ``y_c = x_c / (k + alpha/size * sum(x_j^2))^beta`` with ``j`` from ``c - size//2`` to
    ``c + (size-1)//2``, channels outside ``[0, C)`` counting as zero.
    """
    xp = get_array_module(x)
    x = floating(x, xp)
    if x.ndim < 3:
        raise ValueError(f"lrn: input must be [N, C, ...], got shape {tuple(x.shape)}")
    out = xp.empty(x.shape, dtype=x.dtype)
    # A few images at a time, so the window sums run in cache.
    per_image = max(1, math.prod(x.shape[1:]) * x.itemsize)
    step = max(1, (2 << 20) // per_image)
    for n0 in range(0, x.shape[0], step):
        part = x[n0:n0 + step]
        acc = lrn_base(part, size, alpha, k)
        power_(acc, beta, xp)
        xp.divide(part, acc, out=out[n0:n0 + step])
    return out


def power_(a, beta, xp):
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
