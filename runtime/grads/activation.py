"""Activations, softmax and maxout, training: the inference kernels forward, and what each
derivative needs kept (a mask, the input, or the output).

==============  ===========  ==================================================
activation      keeps        gx / dy
==============  ===========  ==================================================
relu            x > 0        1 where x > 0, else 0
leaky_relu      x > 0        1 where x > 0, else alpha
prelu           x            1 where x > 0, else the channel's slope
elu             x            1 where x > 0, else alpha * e^x
selu            x            scale where x > 0, else scale * alpha * e^x
sigmoid         y            y (1 - y)
tanh            y            1 - y^2
softplus        x            sigmoid(x)
swish, silu     x            s + beta x s (1 - s), s = sigmoid(beta x)
identity        nothing      1
==============  ===========  ==================================================
"""

from ..kernels.activation import DEFAULTS, SELU_ALPHA, SELU_SCALE, _channel_view, _sigmoid_
from ..kernels.activation import activation as activation_inference
from ..kernels.activation import maxout as maxout_inference
from ..kernels.activation import softmax as softmax_inference
from ..xp import floating, get_array_module
from ._util import as_grad, index_dtype, prod

# what each activation's backward keeps: the mask x > 0, the input x, the output y, or nothing
KEEPS = {
    "identity": None,
    "relu": "mask",
    "leaky_relu": "mask",
    "prelu": "x",
    "elu": "x",
    "selu": "x",
    "sigmoid": "y",
    "tanh": "y",
    "softplus": "x",
    "swish": "x",
    "silu": "x",
}


def activation_forward(x, weight=None, *, name, alpha=None, beta=None, train=True, rng=None):
    if name not in KEEPS:
        known = ", ".join(sorted(KEEPS))
        raise ValueError(f"activation: unknown activation {name!r}; known: {known}")
    xp = get_array_module(x)
    x = floating(x, xp)
    y = activation_inference(x, weight, name=name, alpha=alpha, beta=beta)
    default_alpha, default_beta = DEFAULTS[name]
    alpha = default_alpha if alpha is None else alpha
    beta = default_beta if beta is None else beta
    keeps = KEEPS[name]
    if keeps == "mask":
        kept = x > 0
    elif keeps == "x":
        kept = x
    elif keeps == "y":
        kept = y
    else:
        kept = None
    weight = None if name != "prelu" else weight
    return y, (name, alpha, beta, weight, kept, tuple(x.shape), x.dtype)


def _prelu_backward(x, dy, weight, xp):
    slope = _channel_view(weight, x, xp)  # (C, 1, ...) or a scalar
    positive = x > 0
    gx = xp.where(positive, dy, dy * slope)
    neg = xp.where(positive, x.dtype.type(0), x)  # min(x, 0)
    neg *= dy
    if weight.size == 1 or x.ndim < 2:
        gW = neg.sum()
    else:
        gW = neg.sum(axis=(0,) + tuple(range(2, x.ndim)))
    return gx, gW.reshape(weight.shape)


def activation_backward(saved, dy):
    name, alpha, beta, weight, kept, x_shape, dtype = saved
    xp = get_array_module(dy) if kept is None else get_array_module(kept)
    dy = as_grad(dy, x_shape, dtype, xp, f"activation {name}")
    if name == "identity":
        return (dy.copy(),), ()
    if name == "relu":
        return (dy * kept,), ()
    if name == "leaky_relu":
        return (xp.where(kept, dy, dy * alpha),), ()
    if name == "prelu":
        gx, gW = _prelu_backward(kept, dy, weight, xp)
        return (gx,), (gW,)
    if name in ("elu", "selu"):
        if name == "selu":
            alpha = SELU_ALPHA
        d = xp.minimum(kept, 0)
        xp.exp(d, out=d)
        d *= alpha  # alpha e^min(x, 0)
        gx = xp.where(kept > 0, dy, dy * d)
        if name == "selu":
            gx *= SELU_SCALE
        return (gx,), ()
    if name == "sigmoid":
        gx = 1 - kept
        gx *= kept
        gx *= dy
        return (gx,), ()
    if name == "tanh":
        gx = kept * kept
        xp.subtract(1, gx, out=gx)
        gx *= dy
        return (gx,), ()
    if name == "softplus":
        gx = _sigmoid_(kept.copy(), xp)
        gx *= dy
        return (gx,), ()
    # swish / silu: d/dx x s(beta x) = s + beta x s (1 - s)
    s = _sigmoid_(kept * beta, xp)
    gx = 1 - s
    gx *= kept
    gx *= beta
    gx += 1
    gx *= s
    gx *= dy
    return (gx,), ()


def activation_saved(step, input_shapes):
    name = step.attrs["name"]
    if KEEPS.get(name) is None:
        return 0
    return prod(input_shapes[0])


# ---------------------------------------------------------------- softmax


def softmax_forward(x, *, axis=1, train=True, rng=None):
    y = softmax_inference(x, axis=axis)
    return y, (y, axis)


def softmax_backward(saved, dy):
    y, axis = saved
    xp = get_array_module(y)
    dy = as_grad(dy, y.shape, y.dtype, xp, "softmax")
    gx = dy * y
    gx -= y * gx.sum(axis=axis, keepdims=True)  # y (dy - sum(dy y))
    return (gx,), ()


def softmax_saved(step, input_shapes):
    return prod(input_shapes[0])  # y


# ---------------------------------------------------------------- maxout


def maxout_forward(x, *, k, train=True, rng=None):
    """Channel i is the max of channels ``k*i .. k*i+k-1``; keeps which one (ties: first)."""
    xp = get_array_module(x)
    x = floating(x, xp)
    y = maxout_inference(x, k=k)
    grouped = x.reshape((x.shape[0], x.shape[1] // k, k) + tuple(x.shape[2:]))
    index = grouped.argmax(axis=2).astype(index_dtype(k))  # (N, C/k, ...)
    return y, (index, k, x.dtype)


def maxout_backward(saved, dy):
    index, k, dtype = saved
    xp = get_array_module(index)
    dy = as_grad(dy, index.shape, dtype, xp, "maxout")
    n, groups = index.shape[:2]
    gx = xp.empty((n, groups, k) + tuple(index.shape[2:]), dtype=dtype)
    zero = gx.dtype.type(0)
    for j in range(k):
        gx[:, :, j] = xp.where(index == j, dy, zero)
    return (gx.reshape((n, groups * k) + tuple(index.shape[2:])),), ()


def maxout_saved(step, input_shapes):
    return prod(input_shapes[0]) // step.attrs["k"]  # index
