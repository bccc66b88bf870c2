"""Naive reference implementations: the oracle that the fast kernels are tested against.

One function per ``Op``, with the same signature as the kernel it checks (see ``ops.py``).
Each is written to be obviously right rather than fast: Python loops over output
positions and window taps, bounds checked tap by tap instead of padded arrays, sizes
from the formula written out. They compute in float64 and return float64 (the structural
ops keep their input dtype), and are meant for tiny inputs only.
"""

import math

import numpy as np

from .ops import Op
from .shapes import pads4, pair

# Written out again rather than imported: the oracle shares no arithmetic with the kernels.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def out_len(n, k, s, p_begin, p_end, d, ceil):
    """floor (or ceil) of ``(n + p_begin + p_end - d(k-1) - 1) / s``, plus 1; in ceil mode
    a last window starting in the right padding is dropped (PyTorch)."""
    exact = (n + p_begin + p_end - d * (k - 1) - 1) / s
    if ceil:
        out = math.ceil(exact) + 1
        last_start = (out - 1) * s - p_begin  # in input coordinates
        if last_start >= n:
            out -= 1
    else:
        out = math.floor(exact) + 1
    if out < 1:
        raise ValueError(f"output size {out} < 1")
    return out


# ---------------------------------------------------------------- activations


def _sigmoid(v):
    if v >= 0:
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)
    return e / (1.0 + e)


def _softplus(v):
    if v > 0:
        return v + math.log1p(math.exp(-v))
    return math.log1p(math.exp(v))


def _scalar_fn(name, alpha, beta):
    """The activation as a function of one Python float."""
    if name == "identity":
        return lambda v: v
    if name == "relu":
        return lambda v: v if v > 0 else 0.0
    if name == "leaky_relu":
        a = 0.01 if alpha is None else alpha
        return lambda v: v if v > 0 else a * v
    if name == "elu":
        a = 1.0 if alpha is None else alpha
        return lambda v: v if v > 0 else a * math.expm1(v)
    if name == "selu":
        return lambda v: SELU_SCALE * (v if v > 0 else SELU_ALPHA * math.expm1(v))
    if name == "sigmoid":
        return _sigmoid
    if name == "tanh":
        return math.tanh
    if name == "softplus":
        return _softplus
    if name in ("swish", "silu"):
        b = 1.0 if beta is None else beta
        return lambda v: v * _sigmoid(b * v)
    raise ValueError(f"unknown activation {name!r}")


def activation(x, weight=None, *, name, alpha=None, beta=None):
    x = _f64(x)
    y = np.empty_like(x)
    if name == "prelu":
        slopes = _f64(weight).reshape(-1)
        for index in np.ndindex(*x.shape):
            c = index[1] if x.ndim > 1 and slopes.size > 1 else 0
            v = float(x[index])
            y[index] = v if v > 0 else slopes[c] * v
        return y
    fn = _scalar_fn(name, alpha, beta)
    for index in np.ndindex(*x.shape):
        y[index] = fn(float(x[index]))
    return y


def _apply_act(y, act):
    if act is None:
        return y
    if isinstance(act, str):
        return activation(y, name=act)
    name, params = act
    return activation(y, name=name, **dict(params or {}))


def softmax(x, *, axis=1):
    x = np.moveaxis(_f64(x), axis, -1)
    y = np.empty_like(x)
    for index in np.ndindex(*x.shape[:-1]):
        row = [float(v) for v in x[index]]
        top = max(row)
        exps = [math.exp(v - top) for v in row]
        total = sum(exps)
        y[index] = [e / total for e in exps]
    return np.moveaxis(y, -1, axis)


def maxout(x, *, k):
    x = _f64(x)
    groups = x.shape[1] // k
    y = np.empty((x.shape[0], groups) + x.shape[2:])
    for i in range(groups):
        best = x[:, k * i]
        for j in range(1, k):
            best = np.maximum(best, x[:, k * i + j])
        y[:, i] = best
    return y


# ---------------------------------------------------------------- conv and dense


def conv2d(x, w, b=None, *, stride=1, pad=0, dilation=1, groups=1, act=None):
    x = _f64(x)
    w = _f64(w)
    n_batch, _, height, width = x.shape
    out_ch, group_ch, kh, kw = w.shape
    sh, sw = pair(stride)
    dh, dw = pair(dilation)
    top, bottom, left, right = pads4(pad)
    ho = out_len(height, kh, sh, top, bottom, dh, False)
    wo = out_len(width, kw, sw, left, right, dw, False)
    per_group = out_ch // groups
    y = np.zeros((n_batch, out_ch, ho, wo))
    for n in range(n_batch):
        for o in range(out_ch):
            g = o // per_group
            channels = slice(g * group_ch, (g + 1) * group_ch)
            for oh in range(ho):
                for ow in range(wo):
                    total = 0.0 if b is None else float(b[o])
                    for i in range(kh):
                        ih = oh * sh - top + i * dh
                        if not 0 <= ih < height:
                            continue
                        for j in range(kw):
                            iw = ow * sw - left + j * dw
                            if not 0 <= iw < width:
                                continue
                            total += float(x[n, channels, ih, iw] @ w[o, :, i, j])
                    y[n, o, oh, ow] = total
    return _apply_act(y, act)


def dense(x, w, b=None, *, act=None):
    x = _f64(x)
    w = _f64(w)
    y = np.zeros((x.shape[0], w.shape[0]))
    for n in range(x.shape[0]):
        for o in range(w.shape[0]):
            total = 0.0 if b is None else float(b[o])
            for f in range(x.shape[1]):
                total += x[n, f] * w[o, f]
            y[n, o] = total
    return _apply_act(y, act)


# ---------------------------------------------------------------- pooling


def maxpool2d(x, *, kernel, stride=None, pad=0, dilation=1, ceil=False):
    x = _f64(x)
    n_batch, channels, height, width = x.shape
    kh, kw = pair(kernel)
    sh, sw = pair(kernel if stride is None else stride)
    dh, dw = pair(dilation)
    top, bottom, left, right = pads4(pad)
    ho = out_len(height, kh, sh, top, bottom, dh, ceil)
    wo = out_len(width, kw, sw, left, right, dw, ceil)
    y = np.empty((n_batch, channels, ho, wo))
    for oh in range(ho):
        for ow in range(wo):
            best = np.full((n_batch, channels), -np.inf)
            for i in range(kh):
                ih = oh * sh - top + i * dh
                for j in range(kw):
                    iw = ow * sw - left + j * dw
                    if 0 <= ih < height and 0 <= iw < width:
                        best = np.maximum(best, x[:, :, ih, iw])
            y[:, :, oh, ow] = best
    return y


def avgpool2d(x, *, kernel, stride=None, pad=0, ceil=False, count_pad=True):
    x = _f64(x)
    n_batch, channels, height, width = x.shape
    kh, kw = pair(kernel)
    sh, sw = pair(kernel if stride is None else stride)
    top, bottom, left, right = pads4(pad)
    ho = out_len(height, kh, sh, top, bottom, 1, ceil)
    wo = out_len(width, kw, sw, left, right, 1, ceil)
    y = np.empty((n_batch, channels, ho, wo))
    for oh in range(ho):
        for ow in range(wo):
            total = np.zeros((n_batch, channels))
            real_cells = 0
            padded_cells = 0  # cells inside the padded input, real ones included
            for i in range(kh):
                ih = oh * sh - top + i
                for j in range(kw):
                    iw = ow * sw - left + j
                    if -top <= ih < height + bottom and -left <= iw < width + right:
                        padded_cells += 1
                    if 0 <= ih < height and 0 <= iw < width:
                        real_cells += 1
                        total += x[:, :, ih, iw]
            divisor = padded_cells if count_pad else real_cells
            y[:, :, oh, ow] = total / divisor
    return y


def global_avgpool(x):
    x = _f64(x)
    y = np.zeros(x.shape[:2] + (1, 1))
    for h in range(x.shape[2]):
        for w in range(x.shape[3]):
            y[:, :, 0, 0] += x[:, :, h, w]
    return y / (x.shape[2] * x.shape[3])


def global_maxpool(x):
    x = _f64(x)
    y = np.full(x.shape[:2] + (1, 1), -np.inf)
    for h in range(x.shape[2]):
        for w in range(x.shape[3]):
            y[:, :, 0, 0] = np.maximum(y[:, :, 0, 0], x[:, :, h, w])
    return y


# ---------------------------------------------------------------- normalisation


def lrn(x, *, size=5, alpha=1e-4, beta=0.75, k=1.0):
    x = _f64(x)
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


def batchnorm(x, weight, bias, running_mean, running_var, *, eps=1e-5, momentum=0.1):
    x = _f64(x)
    y = np.empty_like(x)
    for c in range(x.shape[1]):
        scale = 1.0 if weight is None else float(weight[c])
        shift = 0.0 if bias is None else float(bias[c])
        std = math.sqrt(float(running_var[c]) + eps)
        y[:, c] = (x[:, c] - float(running_mean[c])) / std * scale + shift
    return y


# ---------------------------------------------------------------- structure


def flatten(x):
    x = np.asarray(x)
    y = np.empty((x.shape[0], x[0].size), dtype=x.dtype)
    for n in range(x.shape[0]):
        for flat, index in enumerate(np.ndindex(*x.shape[1:])):
            y[n, flat] = x[(n,) + index]
    return y


def concat(*xs, axis=1):
    xs = [np.asarray(x) for x in xs]
    sizes = [x.shape[axis] for x in xs]
    shape = list(xs[0].shape)
    shape[axis] = sum(sizes)
    y = np.empty(shape, dtype=np.result_type(*xs))
    start = 0
    for x, size in zip(xs, sizes):
        index = [slice(None)] * y.ndim
        index[axis] = slice(start, start + size)
        y[tuple(index)] = x
        start += size
    return y


def add(*xs):
    y = np.zeros(np.shape(xs[0]))
    for x in xs:
        y = y + _f64(x)
    return y


def dropout(x, *, p=0.5):
    return np.array(x, copy=True)


REFERENCE = {
    Op.CONV2D: conv2d,
    Op.MAXPOOL2D: maxpool2d,
    Op.AVGPOOL2D: avgpool2d,
    Op.GLOBAL_AVGPOOL: global_avgpool,
    Op.GLOBAL_MAXPOOL: global_maxpool,
    Op.LRN: lrn,
    Op.BATCHNORM: batchnorm,
    Op.ACTIVATION: activation,
    Op.SOFTMAX: softmax,
    Op.MAXOUT: maxout,
    Op.DENSE: dense,
    Op.FLATTEN: flatten,
    Op.CONCAT: concat,
    Op.ADD: add,
    Op.DROPOUT: dropout,
}
