"""Element-wise activations, softmax and maxout (forward, inference).

``activate_`` works in place on an array it owns; conv2d and dense call it as a fused
epilogue on their freshly computed output. ``activation`` is the ACTIVATION op itself and
never writes to its input.
"""

from ..xp import floating, get_array_module

# Klambauer et al. 2017, "Self-Normalizing Neural Networks", eq. 14 (as in PyTorch).
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

# name -> default (alpha, beta); None where the activation takes no such argument.
DEFAULTS = {
    "identity": (None, None),
    "relu": (None, None),
    "leaky_relu": (0.01, None),
    "prelu": (None, None),
    "elu": (1.0, None),
    "selu": (None, None),
    "sigmoid": (None, None),
    "tanh": (None, None),
    "softplus": (None, None),
    "swish": (None, 1.0),
    "silu": (None, 1.0),
}


def _channel_view(weight, y, xp):
    """Shape prelu's slopes ``(C,)`` to broadcast over axis 1 of ``y``."""
    weight = xp.asarray(weight, dtype=y.dtype)
    channels = y.shape[1] if y.ndim > 1 else 1
    if weight.size not in (1, channels):
        raise ValueError(
            f"prelu: weight has {weight.size} slopes, expected 1 or {channels} "
            f"(one per channel of input {tuple(y.shape)})"
        )
    if weight.size == 1 or y.ndim < 2:
        return weight.reshape(())
    return weight.reshape((channels,) + (1,) * (y.ndim - 2))


def _sigmoid_(y, xp):
    """Overflow-free sigmoid, in place: ``e^min(x, 0) / (1 + e^-|x|)``.

    Both exponents are <= 0, and the two branches of the usual stable form (x >= 0 and
    x < 0) become one expression: no mask, which NumPy handles slowly.
    """
    t = xp.abs(y)
    xp.negative(t, out=t)
    xp.exp(t, out=t)
    t += 1  # 1 + e^-|x|, in (1, 2]
    xp.minimum(y, 0, out=y)
    xp.exp(y, out=y)  # e^min(x, 0), in (0, 1]
    y /= t
    return y


def _two_slopes_(y, slope, xp):
    """``max(x, 0) + slope * min(x, 0)`` in place; ``slope`` may broadcast per channel."""
    neg = xp.minimum(y, 0)
    neg *= slope
    xp.maximum(y, 0, out=y)
    y += neg
    return y


def _exp_part(y, alpha, xp):
    """``alpha * expm1(min(y, 0))``, the negative branch of elu and selu."""
    neg = xp.minimum(y, 0)
    xp.expm1(neg, out=neg)
    neg *= alpha
    return neg


def activate_(y, name, alpha=None, beta=None, weight=None):
    """Apply activation ``name`` to the float array ``y`` in place and return it.

    ``alpha``/``beta`` default as in PyTorch (leaky_relu 0.01, elu 1.0, swish 1.0);
    ``weight`` holds prelu's per-channel slopes, broadcast along axis 1.
    """
    xp = get_array_module(y)
    if name not in DEFAULTS:
        known = ", ".join(sorted(DEFAULTS))
        raise ValueError(f"unknown activation {name!r}; known: {known}")
    default_alpha, default_beta = DEFAULTS[name]
    if alpha is None:
        alpha = default_alpha
    if beta is None:
        beta = default_beta
    if name == "identity":
        return y
    if name == "relu":
        return xp.maximum(y, 0, out=y)
    if name == "leaky_relu":
        if 0 <= alpha <= 1:
            # max(x, a*x) is leaky relu exactly when 0 <= a <= 1
            return xp.maximum(y, y * alpha, out=y)
        return _two_slopes_(y, alpha, xp)
    if name == "prelu":
        if weight is None:
            raise ValueError("prelu: needs its per-channel weight, got none")
        return _two_slopes_(y, _channel_view(weight, y, xp), xp)
    if name == "elu":
        neg = _exp_part(y, alpha, xp)
        xp.maximum(y, 0, out=y)
        y += neg
        return y
    if name == "selu":
        neg = _exp_part(y, SELU_ALPHA, xp)
        xp.maximum(y, 0, out=y)
        y += neg
        y *= SELU_SCALE
        return y
    if name == "sigmoid":
        return _sigmoid_(y, xp)
    if name == "tanh":
        return xp.tanh(y, out=y)
    if name == "softplus":
        # log(1 + e^x) = max(x, 0) + log1p(e^-|x|), finite for every x
        t = xp.abs(y)
        xp.negative(t, out=t)
        xp.exp(t, out=t)
        xp.log1p(t, out=t)
        xp.maximum(y, 0, out=y)
        y += t
        return y
    # swish / silu: x * sigmoid(beta * x)
    s = y * beta
    _sigmoid_(s, xp)
    y *= s
    return y


def apply_act_(y, act):
    """Fused epilogue: ``act`` is None, a name, or ``(name, params)`` with params a mapping
    of ``alpha``, ``beta`` and ``weight`` (prelu)."""
    if act is None:
        return y
    if isinstance(act, str):
        return activate_(y, act)
    name, params = act
    return activate_(y, name, **dict(params or {}))


def activation(x, weight=None, *, name, alpha=None, beta=None, out=None):
    """The ACTIVATION op; returns a new array and leaves ``x`` untouched, unless ``out`` is
    given: then the result goes there, and ``out`` may be ``x`` itself (in place)."""
    xp = get_array_module(x)
    if out is None:
        y = floating(x, xp).copy()
    else:
        y = out
        if y is not x:
            y[...] = x
    return activate_(y, name, alpha=alpha, beta=beta, weight=weight)


def softmax(x, *, axis=1):
    """Softmax over ``axis`` (channels / features), shifted by the max for stability."""
    xp = get_array_module(x)
    x = floating(x, xp)
    y = x - x.max(axis=axis, keepdims=True)
    xp.exp(y, out=y)
    y /= y.sum(axis=axis, keepdims=True)
    return y


def maxout(x, *, k):
    """Output channel i is the max of input channels k*i .. k*i+k-1."""
    channels = x.shape[1]
    if k < 1 or channels % k != 0:
        raise ValueError(
            f"maxout: input channels must divide by k: {channels} channels, k={k}"
        )
    grouped = x.reshape((x.shape[0], channels // k, k) + tuple(x.shape[2:]))
    return grouped.max(axis=2)
