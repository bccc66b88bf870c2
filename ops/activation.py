"""Activations, softmax and maxout: the element-wise and channel-wise non-linearities.

==========================================  ============  ===================================
layer                                       primitive     attributes
==========================================  ============  ===================================
relu, relu6, sigmoid, tanh, selu, softplus  ACTIVATION    name, alpha=None, beta=None
silu, hardsigmoid, hardswish, mish          ACTIVATION    name, alpha=None, beta=None
gelu(approximate=none|tanh)                 ACTIVATION    name gelu | gelu_tanh, alpha=None,
                                                          beta=None
leaky_relu(alpha=0.01), elu(alpha=1.0)      ACTIVATION    name, alpha, beta=None
swish(beta=1.0)                             ACTIVATION    name, alpha=None, beta
prelu (learned slopes, 1 or C, init 0.25)   ACTIVATION    name, alpha=None, beta=None
softmax                                     SOFTMAX       axis=1
maxout(k)                                   MAXOUT        k
==========================================  ============  ===================================

Every activation is one entry of ``ACTIVATIONS`` (an ``Activation``): its defaults, what its
backward keeps, its in-place NumPy-API function, its gradient, its scalar reference, its
ONNX nodes and its PyTorch function. The layers, the kernel's dispatch, the backward, the
reference, the ONNX export and the PyTorch oracle all read that table; adding an activation
is adding an entry (and its device code to ``ops/cuda_kernels.py``, whose
``ACTIVATION_CODES`` give each activation its number in the CUDA kernels). ``identity`` is
the no-op epilogue of conv and dense: an activation, but not a layer.

conv and dense run an activation as a fused epilogue: ``apply_act_`` (NumPy API),
``bias_act``/``act_backward`` and the ``ActSpec`` helpers (CUDA), ``reference_act``,
``emit_fused``/``emit_activation`` (ONNX).

An activation argument that is a word from a fixed set picks one of several entries of the
table (``Activation.choice``): ``gelu(approximate=tanh)`` lowers to the entry ``gelu_tanh``,
which is no layer of its own. So a word never reaches the kernels, the CUDA codes or the
fused epilogues: they only see entry names, alpha and beta.

NumPy has no erf: ``erf`` and ``erfc`` here are vectorised ones, float64 to about an ulp
(gelu's).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

from ..compiler.symbolic import is_concrete
from . import gpu
from .base import ArgSpec, Example, ExportError, Layer, Primitive, divisor_help, elements
from .base import keeps_output, same_shape
from .cuda_kernels import ACTIVATION_CODES
from .xp import as_grad, floating, get_array_module, index_dtype, np, prod

# Klambauer et al. 2017, "Self-Normalizing Neural Networks", eq. 14 (as in PyTorch).
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


# ================================================================ activation: the table


@dataclass(frozen=True)
class Activation:
    """One activation, everything about it.

    - ``alpha``/``beta``: the defaults (PyTorch's) of the arguments it takes, None where it
      takes none; the functions below get them resolved.
    - ``keeps``: what the backward needs: ``"mask"`` (x > 0), ``"x"``, ``"y"`` or None.
    - ``apply_(y, alpha, beta, weight, xp) -> y``: the activation, in place on ``y``.
    - ``backward(kept, dy, alpha, beta, weight, xp) -> (gx, param grads)``.
    - ``scalar(v, alpha, beta, slope) -> float``: the reference, on one Python float.
    - ``onnx(g, x, out, purpose, alpha, beta, slope, shape)``: its ONNX nodes.
    - ``torch(torch, x, alpha, beta, ws) -> tensor``: the same in PyTorch.
    - ``args``: which of alpha/beta its layer takes; ``ranks``, ``params``, ``init``: the
      layer's; ``layer``: False for an activation that is no layer (identity, gelu_tanh).
    - ``choice``: ``(argument, {word: entry name})`` for a layer argument that is a word
      from a fixed set and picks the entry the layer lowers to; the first word is the
      default (gelu: ``("approximate", {"none": "gelu", "tanh": "gelu_tanh"})``).
    """

    name: str
    apply_: Callable
    backward: Callable
    scalar: Callable
    onnx: Callable
    torch: Callable
    alpha: float | None = None
    beta: float | None = None
    keeps: str | None = None
    args: tuple = ()
    ranks: tuple | None = None
    params: Callable | None = None
    init: str | None = None
    layer: bool = True
    choice: tuple | None = None
    doc: str = ""


# ---- shared pieces of the entries


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


def _exp_grad(x, dy, alpha, xp):
    """``dy`` where x > 0, else ``dy * alpha e^x``: elu's and selu's gradient."""
    d = xp.minimum(x, 0)
    xp.exp(d, out=d)
    d *= alpha  # alpha e^min(x, 0)
    return xp.where(x > 0, dy, dy * d)


def _ref_sigmoid(v):
    if v >= 0:
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)
    return e / (1.0 + e)


def _ref_softplus(v):
    if v > 0:
        return v + math.log1p(math.exp(-v))
    return math.log1p(math.exp(v))


def _onnx_op(op_type):
    """The ONNX emission of an activation that is one ONNX operator without attributes."""

    def emit(g, x, out, purpose, alpha, beta, slope, shape):
        g.node(op_type, [x], out, purpose)

    return emit


# ---- leaky_relu


def _leaky_relu_(y, alpha, beta, weight, xp):
    if 0 <= alpha <= 1:
        # max(x, a*x) is leaky relu exactly when 0 <= a <= 1
        return xp.maximum(y, y * alpha, out=y)
    return _two_slopes_(y, alpha, xp)


def _leaky_relu_onnx(g, x, out, purpose, alpha, beta, slope, shape):
    g.node("LeakyRelu", [x], out, purpose, alpha=float(alpha))


# ---- prelu


def _prelu_(y, alpha, beta, weight, xp):
    if weight is None:
        raise ValueError("prelu: needs its per-channel weight, got none")
    return _two_slopes_(y, _channel_view(weight, y, xp), xp)


def _prelu_backward(x, dy, alpha, beta, weight, xp):
    slope = _channel_view(weight, x, xp)  # (C, 1, ...) or a scalar
    positive = x > 0
    gx = xp.where(positive, dy, dy * slope)
    neg = xp.where(positive, x.dtype.type(0), x)  # min(x, 0)
    neg *= dy
    if weight.size == 1 or x.ndim < 2:
        gW = neg.sum()
    else:
        gW = neg.sum(axis=(0,) + tuple(range(2, x.ndim)))
    return gx, (gW.reshape(weight.shape),)


def _prelu_onnx(g, x, out, purpose, alpha, beta, slope, shape):
    if slope is None:
        raise ExportError(f"{g.step.name}: prelu needs its slope parameter")
    if len(shape) > 1:
        # slopes (C,) -> (C, 1, 1) so that they broadcast along channels
        axes = g.const("slope_axes", list(range(1, len(shape))), np.int64)
        slope = g.node("Unsqueeze", [slope, axes], g.temp("slope"), "slope")
    g.node("PRelu", [x, slope], out, purpose)


def _prelu_params(shape, args):
    return {"weight": (shape[0],)}


# ---- elu and selu


def _elu_(y, alpha, beta, weight, xp):
    neg = _exp_part(y, alpha, xp)
    xp.maximum(y, 0, out=y)
    y += neg
    return y


def _elu_onnx(g, x, out, purpose, alpha, beta, slope, shape):
    g.node("Elu", [x], out, purpose, alpha=float(alpha))


def _selu_(y, alpha, beta, weight, xp):
    neg = _exp_part(y, SELU_ALPHA, xp)
    xp.maximum(y, 0, out=y)
    y += neg
    y *= SELU_SCALE
    return y


def _selu_backward(x, dy, alpha, beta, weight, xp):
    gx = _exp_grad(x, dy, SELU_ALPHA, xp)
    gx *= SELU_SCALE
    return gx, ()


def _selu_onnx(g, x, out, purpose, alpha, beta, slope, shape):
    g.node("Selu", [x], out, purpose, alpha=SELU_ALPHA, gamma=SELU_SCALE)


# ---- sigmoid, tanh, softplus


def _sigmoid_backward(y, dy, alpha, beta, weight, xp):
    gx = 1 - y
    gx *= y
    gx *= dy
    return gx, ()


def _tanh_backward(y, dy, alpha, beta, weight, xp):
    gx = y * y
    xp.subtract(1, gx, out=gx)
    gx *= dy
    return gx, ()


def _softplus_(y, alpha, beta, weight, xp):
    # log(1 + e^x) = max(x, 0) + log1p(e^-|x|), finite for every x
    t = xp.abs(y)
    xp.negative(t, out=t)
    xp.exp(t, out=t)
    xp.log1p(t, out=t)
    xp.maximum(y, 0, out=y)
    y += t
    return y


def _softplus_backward(x, dy, alpha, beta, weight, xp):
    gx = _sigmoid_(x.copy(), xp)
    gx *= dy
    return gx, ()


# ---- swish and silu: x * sigmoid(beta * x)


def _swish_(y, alpha, beta, weight, xp):
    s = y * beta
    _sigmoid_(s, xp)
    y *= s
    return y


def _swish_backward(x, dy, alpha, beta, weight, xp):
    # d/dx x s(beta x) = s + beta x s (1 - s)
    s = _sigmoid_(x * beta, xp)
    gx = 1 - s
    gx *= x
    gx *= beta
    gx += 1
    gx *= s
    gx *= dy
    return gx, ()


def _swish_onnx(g, x, out, purpose, alpha, beta, slope, shape):
    scaled = x
    if float(beta) != 1.0:
        scaled = g.node("Mul", [x, g.const("beta", beta, np.float32)], g.temp("beta_x"),
                        "beta_x")
    gate = g.node("Sigmoid", [scaled], g.temp("sigmoid"), "sigmoid")
    g.node("Mul", [x, gate], out, purpose)


def _swish_torch(torch, x, alpha, beta, ws):
    return x * torch.sigmoid(beta * x)


def _swish(name, args, doc):
    return Activation(
        name, _swish_, _swish_backward,
        scalar=lambda v, alpha, beta, slope: v * _ref_sigmoid(beta * v),
        onnx=_swish_onnx, torch=_swish_torch, beta=1.0, keeps="x", args=args, doc=doc,
    )


# ---- relu6: MobileNet's bounded relu


def _relu6_(y, alpha, beta, weight, xp):
    return xp.clip(y, 0, 6, out=y)


def _relu6_backward(x, dy, alpha, beta, weight, xp):
    # PyTorch's choice at the kinks: no gradient at 0 nor at 6
    inside = (x > 0) & (x < 6)
    return dy * inside, ()


def _relu6_onnx(g, x, out, purpose, alpha, beta, slope, shape):
    low = g.const("min", 0.0, np.float32)
    high = g.const("max", 6.0, np.float32)
    g.node("Clip", [x, low, high], out, purpose)


# ---- erf and erfc, vectorised (NumPy has neither; SciPy is no dependency of cnnc)
#
# Two Chebyshev series, each the interpolant of its function at 96 (48) nodes in 50-digit
# arithmetic (mpmath), cut where the coefficients fall below 1e-19 of the largest. A dtype
# uses the terms its precision needs, as powers of s (``_powers``) for Horner's rule; those
# powers sum in absolute value to about the largest value of the function, so the
# evaluation loses nothing to cancellation. No piece, no branch: every element takes the
# same arithmetic. Against math.erf and math.erfc on a dense grid (tests/ops/
# test_activation.py): float64 within 4e-16 and 1e-15 relative.

# f(s) = (1 + x/4) erfcx(x) for x in [0, inf), s = (4 - x) / (4 + x) in (-1, 1]: so
# erfc(x) = e^(-x^2) f(s) (1 + s) / 2. Weideman's map (SIAM J. Numer. Anal. 31, 1994);
# f falls from 1 at x = 0 to 1 / (4 sqrt(pi)) = 0.141 as x grows.
_ERFC_SERIES = (
    0.40802446954913146, 0.37635823567636745, 0.14758035457222363, 0.049571317930027586,
    0.014227107557117175, 0.003443493262717524, 0.000682254183283808, 0.00010340451975756189,
    9.72854595199015e-06, -1.1988713758412045e-07, -2.1747767703449563e-07,
    -3.0291767735991394e-08, 9.47991756520455e-10, 8.633411694990956e-10,
    6.872156425953403e-11, -1.7034898438296277e-11, -3.3921306868290887e-12,
    2.6158087668540244e-13, 1.212767580310864e-13, -2.114689543244809e-15,
    -4.117340933404178e-15, -6.328712721700708e-17, 1.4393110983449846e-16,
    4.5614947982841305e-18, -5.339094257978135e-18, -1.7350920089597047e-19,
    2.108875643117355e-19,
)
_ERFC_SERIES_LEAST = 0.141
# erf(x) / x for |x| <= 1, in s = 2 x^2 - 1; it falls from 2 / sqrt(pi) to erf(1) = 0.843
_ERF_SERIES = (
    0.9754769393826541, -0.14226120510371365, 0.010035582187599796, -0.0005768764699767485,
    2.741993125219606e-05, -1.1043175507344507e-06, 3.8488755420345036e-08,
    -1.1808582533875466e-09, 3.2334215826050907e-11, -7.991015947004549e-13,
    1.7990725113961456e-14, -3.718635487818693e-16, 7.103599003714253e-18,
    -1.2612455119155226e-19,
)
_ERF_SERIES_LEAST = 0.84


@functools.lru_cache(maxsize=None)
def _powers(series, least, eps):
    """The Chebyshev ``series`` as coefficients of powers of s, to precision ``eps``: the
    terms left out add up to less than eps/8 of ``least``, the smallest value the
    function takes. float64 keeps them all, float32 about half."""
    n = len(series)
    while n > 2 and sum(abs(c) for c in series[n - 1:]) < eps * least / 8:
        n -= 1
    return tuple(float(c) for c in np.polynomial.chebyshev.cheb2poly(series[:n]))


def _horner(coefficients, s):
    """``sum(c_k s^k)``: a new array."""
    y = s * coefficients[-1]
    y += coefficients[-2]
    for c in reversed(coefficients[:-2]):
        y *= s
        y += c
    return y


def _float_input(x, xp):
    """``x`` as float32 or float64 (integers as float64, float16 as float32)."""
    x = floating(x, xp)
    if x.dtype.itemsize < 4:
        x = x.astype(xp.float32)
    return x


def _erfc_of_magnitude(a, xp):
    """``erfc(a)`` for a float array ``a >= 0`` (NaN passes through): a new array, float32
    or float64."""
    a = xp.minimum(_float_input(a, xp), 30.0)  # erfc(30) underflows to 0 in float64
    eps = float(np.finfo(a.dtype).eps)
    powers = _powers(_ERFC_SERIES, _ERFC_SERIES_LEAST, eps)
    s = 4 - a
    s /= 4 + a
    y = _horner(powers, s)
    s += 1
    s *= 0.5
    y *= s
    if a.dtype != xp.float64:
        # float32: e^(-a^2) with a^2 rounded, within a^2 2^-24 relative (5e-6 at a = 9.2,
        # where erfc underflows)
        e = a * a
        xp.negative(e, out=e)
        y *= xp.exp(e, out=e)
        return y
    # float64: e^(-a^2) to a few ulp, as e^(-z^2) e^((z - a)(z + a)): z, a < 32 rounded
    # to a multiple of 2^-21, has at most 26 bits, so z^2 is exact
    z = a * 2.0 ** 21
    xp.rint(z, out=z)
    z *= 2.0 ** -21
    low = (z - a) * (z + a)
    z *= z
    xp.negative(z, out=z)
    y *= xp.exp(z, out=z)
    y *= xp.exp(low, out=low)
    return y


def erfc(x):
    """``1 - erf(x)``, element-wise: a new array of x's float type (float64 for integers).
    float64 is within 1e-15 relative of the true value, the tail to the right too, whose
    digits ``1 - erf(x)`` would lose; float32 within 7e-7 for |x| < 4, 5e-6 in the far
    tail."""
    xp = get_array_module(x)
    shape = xp.shape(x)
    x = _float_input(x, xp).reshape(-1)
    y = _erfc_of_magnitude(xp.abs(x), xp)
    # erfc(-a) = 2 - erfc(a): y, or -y + 2 where x is negative
    xp.copysign(y, x, out=y)
    negative = xp.signbit(x)
    y += negative
    y += negative
    return y.reshape(shape)


def erf(x):
    """The error function, element-wise: a new array of x's float type (float64 for
    integers); float64 within 4e-16 relative of the true value, float32 within 2e-7."""
    xp = get_array_module(x)
    shape = xp.shape(x)
    x = _float_input(x, xp).reshape(-1)
    a = xp.abs(x)
    far = _erfc_of_magnitude(a, xp)
    xp.subtract(1, far, out=far)
    xp.copysign(far, x, out=far)  # sign(x) (1 - erfc|x|)
    # |x| < 1: x P(2x^2 - 1), without 1 - erfc's cancellation near 0
    s = xp.minimum(a, 1.0)
    s *= s
    s *= 2
    s -= 1
    near = _horner(_powers(_ERF_SERIES, _ERF_SERIES_LEAST, float(np.finfo(x.dtype).eps)), s)
    near *= x
    return xp.where(a < 1, near, far).reshape(shape)


# ---- hardsigmoid and hardswish: MobileNet V3's piecewise-linear gates


def _hardsigmoid_(y, alpha, beta, weight, xp):
    # PyTorch's arithmetic: min(max(x + 3, 0), 6) / 6
    y += 3
    xp.clip(y, 0, 6, out=y)
    y /= 6
    return y


def _hardsigmoid_backward(x, dy, alpha, beta, weight, xp):
    # PyTorch's choice at the kinks: no gradient at -3 nor at 3
    inside = (x > -3) & (x < 3)
    gx = dy * inside
    gx *= 1 / 6
    return gx, ()


def _hardsigmoid_onnx(g, x, out, purpose, alpha, beta, slope, shape):
    g.node("HardSigmoid", [x], out, purpose, alpha=1 / 6, beta=0.5)


def _ref_hardsigmoid(v):
    return min(max(v + 3.0, 0.0), 6.0) / 6.0


def _hardswish_(y, alpha, beta, weight, xp):
    # x hardsigmoid(x): PyTorch's x * min(max(x + 3, 0), 6) / 6 to one rounding, and no
    # overflow of x * 6 near the largest floats
    y *= _hardsigmoid_(y.copy(), alpha, beta, weight, xp)
    return y


def _hardswish_backward(x, dy, alpha, beta, weight, xp):
    # x/3 + 1/2 inside (-3, 3); at the kinks PyTorch's choice, the outer slopes: 0 at -3
    # and below, 1 at 3 and above
    slope = x / 3
    slope += 0.5
    gx = xp.where(x <= -3, 0, xp.where(x < 3, slope, 1)).astype(dy.dtype, copy=False)
    gx *= dy
    return gx, ()


# ---- gelu: x Phi(x), exact (erf) or with PyTorch's tanh approximation

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
_GELU_K = math.sqrt(2 / math.pi)  # the tanh approximation's sqrt(2/pi) ...
_GELU_C = 0.044715  # ... and its cubic coefficient


def _gelu_(y, alpha, beta, weight, xp):
    # x Phi(x) = max(x, 0) - |x| erfc(|x| / sqrt 2) / 2: Phi(x) = erfc(-x / sqrt 2) / 2,
    # and for x > 0, erfc(-a) = 2 - erfc(a). No select, and for x < 0 the tiny values keep
    # their digits, which x (1 + erf(x / sqrt 2)) / 2, PyTorch's form, loses.
    a = xp.abs(y)
    tail = _erfc_of_magnitude(a * _SQRT_HALF, xp)
    tail *= a
    tail *= 0.5
    xp.maximum(y, 0, out=y)
    y -= tail
    return y


def _normal_cdf(x, xp):
    """Phi(x) = erfc(-x / sqrt 2) / 2: 1 - erfc(|x| / sqrt 2) / 2 where x >= 0 (its sign
    bit clear), erfc(|x| / sqrt 2) / 2 elsewhere."""
    half = _erfc_of_magnitude(xp.abs(x) * _SQRT_HALF, xp)
    half *= 0.5
    xp.copysign(half, x, out=half)
    xp.subtract(~xp.signbit(x), half, out=half)
    return half


def _gelu_backward(x, dy, alpha, beta, weight, xp):
    # d/dx x Phi(x) = Phi(x) + x phi(x); beyond |x| = 40, x phi(x) is 0 (and no x^2 overflows)
    c = xp.clip(x, -40, 40)
    gx = c * c
    gx *= -0.5
    xp.exp(gx, out=gx)
    gx *= _INV_SQRT_2PI
    gx *= c
    gx += _normal_cdf(x, xp)
    gx *= dy
    return gx, ()


def _gelu_tanh_gate(x, xp):
    """sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3): (1 + tanh u) / 2 without its
    cancellation for x < 0; and the clipped x, beyond which the gate is 0 or 1 exactly."""
    c = xp.clip(x, -64, 64)
    u = c * c
    u *= _GELU_C
    u += 1
    u *= c
    u *= 2 * _GELU_K
    return _sigmoid_(u, xp), c


def _gelu_tanh_(y, alpha, beta, weight, xp):
    gate, _ = _gelu_tanh_gate(y, xp)
    y *= gate
    return y


def _gelu_tanh_backward(x, dy, alpha, beta, weight, xp):
    # d/dx x s(2u) = s + x 2 s (1 - s) u', u' = sqrt(2/pi) (1 + 3 0.044715 x^2)
    s, c = _gelu_tanh_gate(x, xp)
    slope = c * c
    slope *= 3 * _GELU_C
    slope += 1
    slope *= 2 * _GELU_K
    slope *= c
    slope *= 1 - s
    slope += 1
    slope *= s
    slope *= dy
    return slope, ()


def _gelu_onnx(g, x, out, purpose, alpha, beta, slope, shape):
    if g.opset >= 20:
        g.node("Gelu", [x], out, purpose, approximate="none")
        return
    # before opset 20 ONNX has no Gelu: x * (1 + erf(x / sqrt 2)) / 2 from Erf
    scaled = g.node("Mul", [x, g.const("sqrt_half", _SQRT_HALF, np.float32)],
                    g.temp("scaled"), "scaled")
    erf_x = g.node("Erf", [scaled], g.temp("erf"), "erf")
    one_plus = g.node("Add", [erf_x, g.const("one", 1.0, np.float32)], g.temp("one_plus"),
                      "one_plus")
    half = g.node("Mul", [one_plus, g.const("half", 0.5, np.float32)], g.temp("cdf"), "cdf")
    g.node("Mul", [x, half], out, purpose)


def _gelu_tanh_onnx(g, x, out, purpose, alpha, beta, slope, shape):
    if g.opset >= 20:
        g.node("Gelu", [x], out, purpose, approximate="tanh")
        return
    # before opset 20 ONNX has no Gelu: x * (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2
    square = g.node("Mul", [x, x], g.temp("square"), "square")
    cube = g.node("Mul", [square, x], g.temp("cube"), "cube")
    term = g.node("Mul", [cube, g.const("c", _GELU_C, np.float32)], g.temp("term"), "term")
    inner = g.node("Add", [x, term], g.temp("inner"), "inner")
    u = g.node("Mul", [inner, g.const("k", _GELU_K, np.float32)], g.temp("u"), "u")
    tanh_u = g.node("Tanh", [u], g.temp("tanh"), "tanh")
    one_plus = g.node("Add", [tanh_u, g.const("one", 1.0, np.float32)], g.temp("one_plus"),
                      "one_plus")
    half = g.node("Mul", [one_plus, g.const("half", 0.5, np.float32)], g.temp("gate"), "gate")
    g.node("Mul", [x, half], out, purpose)


def _ref_gelu(v):
    return 0.5 * v * math.erfc(-v * _SQRT_HALF)


def _ref_gelu_tanh(v):
    return 0.5 * v * (1.0 + math.tanh(_GELU_K * (v + _GELU_C * v ** 3)))


# ---- mish: x tanh(softplus(x))


def _tanh_softplus(x, xp):
    t = _softplus_(x.copy(), None, None, None, xp)
    return xp.tanh(t, out=t)


def _mish_(y, alpha, beta, weight, xp):
    y *= _tanh_softplus(y, xp)
    return y


def _mish_backward(x, dy, alpha, beta, weight, xp):
    # d/dx x t = t + x sigmoid(x) (1 - t^2), t = tanh(softplus(x)), as PyTorch
    t = _tanh_softplus(x, xp)
    gx = t * t
    xp.subtract(1, gx, out=gx)
    gx *= _sigmoid_(x.copy(), xp)
    gx *= x
    gx += t
    gx *= dy
    return gx, ()


def _mish_onnx(g, x, out, purpose, alpha, beta, slope, shape):
    if g.opset >= 18:
        g.node("Mish", [x], out, purpose)
        return
    # before opset 18 ONNX has no Mish: x * tanh(softplus(x))
    soft = g.node("Softplus", [x], g.temp("softplus"), "softplus")
    gate = g.node("Tanh", [soft], g.temp("tanh"), "tanh")
    g.node("Mul", [x, gate], out, purpose)


# ---- the table: one entry per activation (keeps: what the backward needs)

ACTIVATIONS = {act.name: act for act in [
    Activation(
        "identity",
        apply_=lambda y, alpha, beta, weight, xp: y,
        backward=lambda x, dy, alpha, beta, weight, xp: (dy.copy(), ()),
        scalar=lambda v, alpha, beta, slope: v,
        onnx=_onnx_op("Identity"),
        torch=lambda torch, x, alpha, beta, ws: x,
        layer=False, doc="x (the epilogue of a conv or dense without activation)",
    ),
    Activation(
        "relu",
        apply_=lambda y, alpha, beta, weight, xp: xp.maximum(y, 0, out=y),
        backward=lambda mask, dy, alpha, beta, weight, xp: (dy * mask, ()),
        scalar=lambda v, alpha, beta, slope: v if v > 0 else 0.0,
        onnx=_onnx_op("Relu"),
        torch=lambda torch, x, alpha, beta, ws: torch.nn.functional.relu(x),
        keeps="mask", doc="max(x, 0)",
    ),
    Activation(
        "sigmoid",
        apply_=lambda y, alpha, beta, weight, xp: _sigmoid_(y, xp),
        backward=_sigmoid_backward,
        scalar=lambda v, alpha, beta, slope: _ref_sigmoid(v),
        onnx=_onnx_op("Sigmoid"),
        torch=lambda torch, x, alpha, beta, ws: torch.sigmoid(x),
        keeps="y", doc="1 / (1 + e^-x)",
    ),
    Activation(
        "tanh",
        apply_=lambda y, alpha, beta, weight, xp: xp.tanh(y, out=y),
        backward=_tanh_backward,
        scalar=lambda v, alpha, beta, slope: math.tanh(v),
        onnx=_onnx_op("Tanh"),
        torch=lambda torch, x, alpha, beta, ws: torch.tanh(x),
        keeps="y", doc="tanh(x)",
    ),
    Activation(
        "selu", _selu_, _selu_backward,
        scalar=lambda v, alpha, beta, slope: SELU_SCALE * (
            v if v > 0 else SELU_ALPHA * math.expm1(v)),
        onnx=_selu_onnx,
        torch=lambda torch, x, alpha, beta, ws: torch.nn.functional.selu(x),
        keeps="x", doc="scale * (x if x > 0 else alpha (e^x - 1)), fixed scale and alpha",
    ),
    Activation(
        "softplus", _softplus_, _softplus_backward,
        scalar=lambda v, alpha, beta, slope: _ref_softplus(v),
        onnx=_onnx_op("Softplus"),
        torch=lambda torch, x, alpha, beta, ws: torch.nn.functional.softplus(x),
        keeps="x", doc="log(1 + e^x)",
    ),
    _swish("silu", (), "x * sigmoid(x)"),
    Activation(
        "leaky_relu", _leaky_relu_,
        backward=lambda mask, dy, alpha, beta, weight, xp: (xp.where(mask, dy, dy * alpha), ()),
        scalar=lambda v, alpha, beta, slope: v if v > 0 else alpha * v,
        onnx=_leaky_relu_onnx,
        torch=lambda torch, x, alpha, beta, ws: torch.nn.functional.leaky_relu(x, alpha),
        alpha=0.01, keeps="mask", args=("alpha",), doc="x if x > 0 else alpha x",
    ),
    Activation(
        "prelu", _prelu_, _prelu_backward,
        scalar=lambda v, alpha, beta, slope: v if v > 0 else slope * v,
        onnx=_prelu_onnx,
        torch=lambda torch, x, alpha, beta, ws: torch.nn.functional.prelu(x, ws[0]),
        keeps="x", ranks=(1, 3), params=_prelu_params, init="0.25",
        doc="with a learned slope per channel",
    ),
    Activation(
        "elu", _elu_,
        backward=lambda x, dy, alpha, beta, weight, xp: (_exp_grad(x, dy, alpha, xp), ()),
        scalar=lambda v, alpha, beta, slope: v if v > 0 else alpha * math.expm1(v),
        onnx=_elu_onnx,
        torch=lambda torch, x, alpha, beta, ws: torch.nn.functional.elu(x, alpha),
        alpha=1.0, keeps="x", args=("alpha",), doc="x if x > 0 else alpha (e^x - 1)",
    ),
    _swish("swish", ("beta",), "x * sigmoid(beta x)"),
    Activation(
        "relu6", _relu6_, _relu6_backward,
        scalar=lambda v, alpha, beta, slope: min(max(v, 0.0), 6.0),
        onnx=_relu6_onnx,
        torch=lambda torch, x, alpha, beta, ws: torch.nn.functional.relu6(x),
        keeps="x", doc="min(max(x, 0), 6)",
    ),
    Activation(
        "hardsigmoid", _hardsigmoid_, _hardsigmoid_backward,
        scalar=lambda v, alpha, beta, slope: _ref_hardsigmoid(v),
        onnx=_hardsigmoid_onnx,
        torch=lambda torch, x, alpha, beta, ws: torch.nn.functional.hardsigmoid(x),
        keeps="x", doc="min(max(x + 3, 0), 6) / 6",
    ),
    Activation(
        "hardswish", _hardswish_, _hardswish_backward,
        scalar=lambda v, alpha, beta, slope: v * _ref_hardsigmoid(v),
        onnx=_onnx_op("HardSwish"),
        torch=lambda torch, x, alpha, beta, ws: torch.nn.functional.hardswish(x),
        keeps="x", doc="x min(max(x + 3, 0), 6) / 6",
    ),
    Activation(
        "gelu", _gelu_, _gelu_backward,
        scalar=lambda v, alpha, beta, slope: _ref_gelu(v),
        onnx=_gelu_onnx,
        torch=lambda torch, x, alpha, beta, ws: torch.nn.functional.gelu(x),
        keeps="x", choice=("approximate", {"none": "gelu", "tanh": "gelu_tanh"}),
        doc="x Phi(x), Phi the standard normal CDF; approximate=tanh: PyTorch's tanh form",
    ),
    Activation(
        "gelu_tanh", _gelu_tanh_, _gelu_tanh_backward,
        scalar=lambda v, alpha, beta, slope: _ref_gelu_tanh(v),
        onnx=_gelu_tanh_onnx,
        torch=lambda torch, x, alpha, beta, ws: torch.nn.functional.gelu(x, approximate="tanh"),
        keeps="x", layer=False,
        doc="x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2 (gelu(approximate=tanh))",
    ),
    Activation(
        "mish", _mish_, _mish_backward,
        scalar=lambda v, alpha, beta, slope: v * math.tanh(_ref_softplus(v)),
        onnx=_mish_onnx,
        torch=lambda torch, x, alpha, beta, ws: torch.nn.functional.mish(x),
        keeps="x", doc="x tanh(softplus(x))",
    ),
]}


def _lookup(name, where=""):
    if name not in ACTIVATIONS:
        known = ", ".join(sorted(ACTIVATIONS))
        raise ValueError(f"{where}unknown activation {name!r}; known: {known}")
    return ACTIVATIONS[name]


def _resolved(act, alpha, beta):
    """``alpha``/``beta`` with the activation's defaults where None."""
    return (act.alpha if alpha is None else alpha, act.beta if beta is None else beta)


# ================================================================ activation: layers


def chosen_entry(op, args):
    """The entry of ``ACTIVATIONS`` a layer ``op`` with ``args`` runs: ``op`` itself, or
    the one its word argument picks (``gelu`` with ``approximate=tanh``: ``gelu_tanh``)."""
    act = _lookup(op)
    if act.choice is None:
        return op
    key, entries = act.choice
    word = args.get(key)
    if word is None:
        word = next(iter(entries))
    if word not in entries:
        words = " or ".join(entries)
        raise ValueError(f"{op}: {key} must be {words}, got {word!r}")
    return entries[word]


def _lower_activation(node, in_shapes):
    a = node.args
    name = chosen_entry(node.op, a)
    return "activation", dict(name=name, alpha=a.get("alpha"), beta=a.get("beta"))


def _choice_spec(act):
    """The layer argument of ``act.choice``: a word from a fixed set (kind
    ``choice:w1|w2``), the first by default."""
    key, entries = act.choice
    return ArgSpec(key, "choice:" + "|".join(entries), next(iter(entries)))


def _activation_layer(act):
    extra = {}
    if act.params is not None:
        extra = dict(params=act.params, init=lambda key, args=None: act.init)
    args = [ArgSpec(key, "float", getattr(act, key)) for key in act.args]
    if act.choice is not None:
        args.append(_choice_spec(act))
    return Layer(
        act.name,
        args,
        act.ranks,
        same_shape,
        _lower_activation,
        changes_shape=False,
        doc=f"activation {act.doc}",
        **extra,
    )


# ================================================================ activation: the kernel


# The activations ops/fast.py computes in one vectorised pass for float32 (NumPy needs eight
# passes and two exps for a SiLU, 10 times the time: docs/performance.md), from this many
# values on (below it NumPy's passes are as quick as importing numba is slow).
_COMPILED = frozenset({"sigmoid", "silu", "swish"})
_COMPILED_FROM = 1 << 12


def activate_(y, name, alpha=None, beta=None, weight=None):
    """Apply activation ``name`` to the float array ``y`` in place and return it.

    ``alpha``/``beta`` default as in PyTorch (leaky_relu 0.01, elu 1.0, swish 1.0);
    ``weight`` holds prelu's per-channel slopes, broadcast along axis 1.
    """
    xp = get_array_module(y)
    act = _lookup(name)
    alpha, beta = _resolved(act, alpha, beta)
    if (name in _COMPILED and y.size >= _COMPILED_FROM and type(y) is np.ndarray
            and y.dtype == np.float32 and y.flags.c_contiguous):
        from . import fast  # numba's kernels load on the first large call only

        if fast.usable(y) and fast.activate_(y, (name, {"alpha": alpha, "beta": beta})):
            return y
    return act.apply_(y, alpha, beta, weight, xp)


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


# ---- training


def activation_forward(x, weight=None, *, name, alpha=None, beta=None, train=True, rng=None):
    act = _lookup(name, "activation: ")
    xp = get_array_module(x)
    x = floating(x, xp)
    y = activation(x, weight, name=name, alpha=alpha, beta=beta)
    alpha, beta = _resolved(act, alpha, beta)
    if act.keeps == "mask":
        kept = x > 0
    elif act.keeps == "x":
        kept = x
    elif act.keeps == "y":
        kept = y
    else:
        kept = None
    weight = weight if act.params is not None else None
    return y, (act, alpha, beta, weight, kept, tuple(x.shape), x.dtype)


def activation_backward(saved, dy):
    act, alpha, beta, weight, kept, x_shape, dtype = saved
    xp = get_array_module(dy) if kept is None else get_array_module(kept)
    dy = as_grad(dy, x_shape, dtype, xp, f"activation {act.name}")
    gx, gws = act.backward(kept, dy, alpha, beta, weight, xp)
    return (gx,), gws


# ---- GPU: the activation as the CUDA kernels take it, shared with conv's and dense's
# epilogues


@dataclass(frozen=True)
class ActSpec:
    """An activation as the kernels take it: code, alpha, beta and prelu's slopes."""

    name: str
    code: int
    alpha: float
    beta: float
    weight: object = None  # prelu's slopes, an array of 1 or C values

    @property
    def identity(self):
        return self.code == ACTIVATION_CODES["identity"]


def act_spec(act):
    """Normalise a fused activation (None, a name, or ``(name, params)``) to an ActSpec,
    with the defaults of ``ACTIVATIONS``."""
    if act is None:
        return make_act_spec("identity")
    if isinstance(act, str):
        return make_act_spec(act)
    name, params = act
    return make_act_spec(name, **dict(params or {}))


def make_act_spec(name, alpha=None, beta=None, weight=None):
    act = _lookup(name)
    alpha, beta = _resolved(act, alpha, beta)
    if act.params is not None and weight is None:
        raise ValueError(f"{name}: needs its per-channel weight, got none")
    return ActSpec(name, ACTIVATION_CODES[name], float(alpha or 0.0), float(beta or 0.0),
                   weight if act.params is not None else None)


def _slopes(spec, shape, dtype, xp):
    """``(slopes array, count)`` for the kernels; a dummy unless the activation is prelu."""
    if spec.weight is None:
        return gpu.dummy(dtype, xp), 1
    slopes = gpu.contiguous(spec.weight, dtype, xp).reshape(-1)
    channels = shape[1] if len(shape) > 1 else 1
    if slopes.size not in (1, channels):
        raise ValueError(
            f"prelu: weight has {slopes.size} slopes, expected 1 or {channels} "
            f"(one per channel of input {tuple(shape)})"
        )
    return slopes, slopes.size


def act_args(spec, shape, dtype, xp):
    """The activation's trailing kernel arguments: code, alpha, beta, slopes, n_slopes."""
    slopes, n_slopes = _slopes(spec, shape, dtype, xp)
    return (spec.code, spec.alpha, spec.beta, slopes, n_slopes)


def bias_act(x, y, bias, spec, xp):
    """``y = act(x + bias[c])`` in one pass; ``y`` may be ``x``."""
    if bias is None and spec.identity and y is x:
        return y  # nothing to do
    dtype = x.dtype
    channels, inner = gpu.channels_inner(x.shape)
    has_bias = bias is not None
    b = gpu.contiguous(bias, dtype, xp) if has_bias else gpu.dummy(dtype, xp)
    gpu.launch("cnnc_bias_act", dtype, x.size, x, y, b, int(has_bias), x.size, channels,
               inner, *act_args(spec, x.shape, dtype, xp))
    return y


def act_backward(dy, x, spec, xp):
    """``dy * act'(x)``, a new array; ``dy`` already has ``x``'s shape."""
    dtype = x.dtype
    dy = gpu.contiguous(dy, dtype, xp)
    dx = xp.empty_like(x)
    channels, inner = gpu.channels_inner(x.shape)
    gpu.launch("cnnc_act_backward", dtype, x.size, dy, x, dx, x.size, channels, inner,
               *act_args(spec, x.shape, dtype, xp))
    return dx


def refuse_fused_prelu(spec, where):
    """Training: a fused activation with trainable slopes has no gradient to return."""
    if spec.weight is not None:
        raise ValueError(
            f"{where}: a fused prelu has trainable slopes that this step cannot return a "
            f"gradient for; keep prelu as its own step for training"
        )


def gpu_activation(x, weight=None, *, name, alpha=None, beta=None, out=None):
    """The ACTIVATION op on the GPU: a new array and ``x`` untouched, unless ``out`` is given
    (which may be ``x`` itself: in place)."""
    xp = gpu.cupy()
    dtype = gpu.compute_dtype(x.dtype)
    spec = make_act_spec(name, alpha, beta, weight)
    x = gpu.contiguous(x, dtype, xp)
    y = gpu.target(out, x.shape, dtype, xp, "activation")
    return gpu.deliver(bias_act(x, y, None, spec, xp), out)


def gpu_activation_forward(x, weight=None, *, train=True, rng=None, name, alpha=None,
                           beta=None):
    xp = gpu.cupy()
    dtype = gpu.compute_dtype(x.dtype)
    spec = make_act_spec(name, alpha, beta, weight)
    x = gpu.contiguous(x, dtype, xp)
    y = bias_act(x, xp.empty_like(x), None, spec, xp)
    return y, dict(x=x, spec=spec, weight=weight)


def gpu_activation_backward(saved, dy):
    xp = gpu.cupy()
    x, spec, weight = saved["x"], saved["spec"], saved["weight"]
    dy = gpu.grad_input(dy, x.shape, x.dtype, xp, "activation")
    gx = act_backward(dy, x, spec, xp)
    if spec.weight is None:
        return (gx,), ()
    # prelu's slopes: dL/da_c sums dy * x over the cells of channel c where x <= 0
    contrib = dy * xp.minimum(x, 0)
    if prod(weight.shape) == 1 or x.ndim < 2:
        gW = contrib.sum()
    else:
        gW = contrib.sum(axis=(0,) + tuple(range(2, x.ndim)))
    return (gx,), (gW.reshape(weight.shape).astype(x.dtype, copy=False),)


# ---- reference


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def reference_activation(x, weight=None, *, name, alpha=None, beta=None):
    """Element by element, on Python floats."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}")
    act = ACTIVATIONS[name]
    alpha, beta = _resolved(act, alpha, beta)
    x = _f64(x)
    y = np.empty_like(x)
    slopes = None if weight is None else _f64(weight).reshape(-1)
    for index in np.ndindex(*x.shape):
        slope = None
        if slopes is not None:
            c = index[1] if x.ndim > 1 and slopes.size > 1 else 0
            slope = slopes[c]
        y[index] = act.scalar(float(x[index]), alpha, beta, slope)
    return y


def reference_act(y, act):
    """The reference of a fused epilogue ``act`` (as ``apply_act_`` takes it)."""
    if act is None:
        return y
    if isinstance(act, str):
        return reference_activation(y, name=act)
    name, params = act
    return reference_activation(y, name=name, **dict(params or {}))


# ---- ONNX


def emit_activation(g, name, alpha, beta, x, out, slope, shape, purpose=None):
    """Emit activation ``name`` from ``x`` to ``out``; the last node gets ``purpose``."""
    if name not in ACTIVATIONS:
        raise ExportError(f"{g.step.name}: no ONNX mapping for activation {name!r}")
    act = ACTIVATIONS[name]
    alpha, beta = _resolved(act, alpha, beta)
    act.onnx(g, x, out, purpose, alpha, beta, slope, shape)


def emit_fused(g, act, x, out, shape):
    """A conv's or dense's fused activation: ``name`` or ``(name, {alpha, beta})``."""
    name, options = (act, {}) if isinstance(act, str) else (act[0], dict(act[1] or {}))
    if "weight" in options:
        raise ExportError(f"{g.step.name}: a fused prelu cannot be exported; lower prelu "
                          "as its own ACTIVATION step")
    emit_activation(g, name, options.get("alpha"), options.get("beta"), x, out, None, shape)


def onnx_activation(g, step, xs, ws, out, in_shapes):
    a = step.attrs
    slope = ws[0] if ws else None
    emit_activation(g, a["name"], a.get("alpha"), a.get("beta"), xs[0], out, slope,
                    in_shapes[0])


# ---- PyTorch


def torch_activation(step, xs, ws, training):
    import torch

    a = step.attrs
    name = a["name"]
    if name not in ACTIVATIONS:
        raise AssertionError(f"no PyTorch rule for activation {name!r}")
    act = ACTIVATIONS[name]
    alpha, beta = _resolved(act, a.get("alpha"), a.get("beta"))
    return act.torch(torch, xs[0], alpha, beta, ws)


# ---- examples


def _away_from_kinks(a):
    """Values at least 0.05 from 0, from -3 and 3 and from 6: no kink of relu, prelu,
    hardsigmoid, hardswish or relu6 within a finite difference."""
    a = np.where(a < 0, a - 0.05, a + 0.05)
    for kink in (-3.0, 3.0, 6.0):
        a = np.where(np.abs(a - kink) < 0.05, a + 0.1, a)
    return a


def activation_examples(rng):
    """Every activation with its defaults; the ones with arguments with two other values
    each (a leaky_relu slope above 1 takes the two-slope branch); prelu with C slopes and
    with one."""
    samples = {"alpha": (0.2, 1.5), "beta": (0.5, 1.7)}
    out = []
    for i, act in enumerate(ACTIVATIONS.values()):
        shape = (2, 3, 2, 2) if i % 2 == 0 else (2, 3)
        calls = [dict(alpha=None, beta=None)]
        for key in act.args:
            calls += [dict(dict(alpha=None, beta=None), **{key: v}) for v in samples[key]]
        for attrs in calls:
            x = _away_from_kinks(4 * rng.standard_normal(shape))
            params = [rng.uniform(-0.5, 0.5, 3)] if act.params is not None else []
            out.append(Example([x], params, dict(name=act.name, **attrs), note=act.name))
    x = _away_from_kinks(rng.standard_normal((2, 3, 2, 2)))
    out.append(Example([x], [np.array([0.25])], dict(name="prelu", alpha=None, beta=None),
                       note="prelu, one slope"))
    return out


# ================================================================ softmax


def _lower_softmax(node, in_shapes):
    return "softmax", dict(axis=1)


def softmax(x, *, axis=1):
    """Softmax over ``axis`` (channels / features), shifted by the max for stability."""
    xp = get_array_module(x)
    x = floating(x, xp)
    y = x - x.max(axis=axis, keepdims=True)
    xp.exp(y, out=y)
    y /= y.sum(axis=axis, keepdims=True)
    return y


def softmax_forward(x, *, axis=1, train=True, rng=None):
    y = softmax(x, axis=axis)
    return y, (y, axis)


def softmax_backward(saved, dy):
    y, axis = saved
    xp = get_array_module(y)
    dy = as_grad(dy, y.shape, y.dtype, xp, "softmax")
    gx = dy * y
    gx -= y * gx.sum(axis=axis, keepdims=True)  # y (dy - sum(dy y))
    return (gx,), ()


def reference_softmax(x, *, axis=1):
    x = np.moveaxis(_f64(x), axis, -1)
    y = np.empty_like(x)
    for index in np.ndindex(*x.shape[:-1]):
        row = [float(v) for v in x[index]]
        top = max(row)
        exps = [math.exp(v - top) for v in row]
        total = sum(exps)
        y[index] = [e / total for e in exps]
    return np.moveaxis(y, -1, axis)


def onnx_softmax(g, step, xs, ws, out, in_shapes):
    g.node("Softmax", xs, out, axis=int(step.attrs.get("axis", 1)))


def torch_softmax(step, xs, ws, training):
    import torch

    return torch.nn.functional.softmax(xs[0], dim=step.attrs.get("axis", 1))


def softmax_examples(rng):
    return [
        Example([2 * rng.standard_normal((2, 5))], attrs=dict(axis=1)),
        Example([2 * rng.standard_normal((2, 4, 2, 3))], attrs=dict(axis=1)),
        Example([8 * rng.standard_normal((2, 3))], attrs=dict(axis=1), note="large logits"),
    ]


# ================================================================ maxout


def _infer_maxout(shape, a, ctx):
    channels = shape[0]
    k = a["k"]
    if is_concrete(channels) and channels % k:
        what = "channels" if len(shape) == 3 else "features"
        ctx.error(
            "E305",
            f"maxout k={k} does not divide the {channels} input {what}",
            help=divisor_help("k", channels, k),
        )  # an error, but the output shape is known: checking goes on
    return (channels // k,) + tuple(shape[1:])


def _lower_maxout(node, in_shapes):
    return "maxout", dict(k=node.args["k"])


def maxout(x, *, k):
    """Output channel i is the max of input channels k*i .. k*i+k-1."""
    channels = x.shape[1]
    if k < 1 or channels % k != 0:
        raise ValueError(
            f"maxout: input channels must divide by k: {channels} channels, k={k}"
        )
    grouped = x.reshape((x.shape[0], channels // k, k) + tuple(x.shape[2:]))
    return grouped.max(axis=2)


def maxout_forward(x, *, k, train=True, rng=None):
    """Channel i is the max of channels ``k*i .. k*i+k-1``; keeps which one (ties: first)."""
    xp = get_array_module(x)
    x = floating(x, xp)
    y = maxout(x, k=k)
    grouped = x.reshape((x.shape[0], x.shape[1] // k, k) + tuple(x.shape[2:]))
    index = grouped.argmax(axis=2).astype(index_dtype(k))  # (N, C/k, ...)
    return y, (index, k, x.dtype)


def maxout_backward(saved, dy):
    index, k, dtype = saved
    xp = get_array_module(index)
    dy = as_grad(dy, index.shape, dtype, xp, "maxout")
    n, groups = index.shape[:2]
    gx = xp.empty((n, groups, k) + tuple(index.shape[2:]), dtype=dtype)  # (N, C/k, k, ...)
    zero = gx.dtype.type(0)
    for j in range(k):
        gx[:, :, j] = xp.where(index == j, dy, zero)
    return (gx.reshape((n, groups * k) + tuple(index.shape[2:])),), ()


def reference_maxout(x, *, k):
    x = _f64(x)
    groups = x.shape[1] // k
    y = np.empty((x.shape[0], groups) + x.shape[2:])
    for i in range(groups):
        best = x[:, k * i]
        for j in range(1, k):
            best = np.maximum(best, x[:, k * i + j])
        y[:, i] = best
    return y


def onnx_maxout(g, step, xs, ws, out, in_shapes):
    k = int(step.attrs["k"])
    channels, *rest = in_shapes[0]
    # (N, C, ...) -> (N, C/k, k, ...): 0 copies the batch size, whatever it is at run time
    grouped_shape = g.const("grouped_shape", [0, channels // k, k] + list(rest), np.int64)
    grouped = g.node("Reshape", [xs[0], grouped_shape], g.temp("grouped"), "group")
    g.reduce("ReduceMax", grouped, [2], out)


def torch_maxout(step, xs, ws, training):
    x = xs[0]
    k = step.attrs["k"]
    return x.reshape(x.shape[0], x.shape[1] // k, k, *x.shape[2:]).amax(dim=2)


def _distinct(rng, shape):
    """Values 0.1 apart in random order: no two tie within a finite difference."""
    size = prod(shape)
    return (rng.permutation(size) - size / 2).reshape(shape) * 0.1


def maxout_examples(rng):
    return [
        Example([_distinct(rng, (2, 6, 2, 2))], attrs=dict(k=2)),
        Example([_distinct(rng, (2, 6, 2, 2))], attrs=dict(k=3)),
        Example([_distinct(rng, (2, 6))], attrs=dict(k=2)),
        Example([_distinct(rng, (2, 6))], attrs=dict(k=3)),
        Example([_distinct(rng, (2, 4))], attrs=dict(k=1), note="k=1 is the identity"),
    ]


# ================================================================ the family

LAYERS = [_activation_layer(act) for act in ACTIVATIONS.values() if act.layer] + [
    Layer("softmax", [], None, same_shape, _lower_softmax, changes_shape=False,
          doc="softmax over channels / features"),
    Layer("maxout", [ArgSpec("k", "count")], (1, 3), _infer_maxout, _lower_maxout,
          doc="max over k channels"),
]


# ---- what the training forwards keep (Primitive.keeps)


def _activation_keeps(step, in_shapes, itemsize):
    keeps = ACTIVATIONS[step.attrs["name"]].keeps
    if keeps == "mask":
        return [("new", "mask", elements(in_shapes[0]), 0)]  # x > 0, a byte each
    if keeps == "x":
        return [("input", 0)]
    if keeps == "y":
        return [("output",)]
    return []


def _maxout_keeps(step, in_shapes, itemsize):
    index = index_dtype(int(step.attrs["k"])).itemsize
    return [("new", "index", elements(step.shape) * index, 0)]


PRIMITIVES = [
    Primitive(
        "activation",
        "(x, weight=None, *, name, alpha, beta)",
        kernel=activation,
        forward=activation_forward,
        backward=activation_backward,
        reference=reference_activation,
        onnx=onnx_activation,
        torch=torch_activation,
        examples=activation_examples,
        gpu_kernel=gpu_activation,
        gpu_forward=gpu_activation_forward,
        gpu_backward=gpu_activation_backward,
        accepts_out=True,
        in_place="first",
        doc="an element-wise activation of ACTIVATIONS; weight is prelu's slopes",
        keeps=_activation_keeps,
    ),
    Primitive(
        "softmax",
        "(x, *, axis=1)",
        kernel=softmax,
        forward=softmax_forward,
        backward=softmax_backward,
        reference=reference_softmax,
        onnx=onnx_softmax,
        torch=torch_softmax,
        examples=softmax_examples,
        doc="softmax along axis",
        keeps=keeps_output,
    ),
    Primitive(
        "maxout",
        "(x, *, k)",
        kernel=maxout,
        forward=maxout_forward,
        backward=maxout_backward,
        reference=reference_maxout,
        onnx=onnx_maxout,
        torch=torch_maxout,
        examples=maxout_examples,
        doc="channel i is the max of channels k*i .. k*i+k-1",
        keeps=_maxout_keeps,
    ),
]


# What other frameworks (PyTorch, Keras, Caffe, ONNX) call this family's layers, lower-cased:
# the "did you mean" of an unknown layer (E203). A value is the cnnc layer, or
# ``(layer, help)`` where the spelling takes more than a name.
FOREIGN_NAMES = {
    "leakyrelu": "leaky_relu",
    "lrelu": "leaky_relu",
    "hard_swish": "hardswish",
    "hswish": "hardswish",
    "h_swish": "hardswish",
    "hard_sigmoid": "hardsigmoid",
    "hsigmoid": "hardsigmoid",
    "h_sigmoid": "hardsigmoid",
}
