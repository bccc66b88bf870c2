"""Fully connected layer (forward, inference)."""

from ..xp import float_dtype, get_array_module
from .activation import apply_act_


def dense(x, w, b=None, *, act=None, out=None, scale=None):
    """``x (N, F) @ w.T + b`` with ``w (O, F)``, ``b (O,)``; returns ``(N, O)``.

    ``act`` is a fused activation applied in place: None, a name, or ``(name, params)``.
    ``out`` is an ``(N, O)`` array to write into; ``scale`` (``(O,)``) multiplies each output
    before the bias is added (a folded batchnorm).
    """
    xp = get_array_module(x, w)
    dtype = float_dtype(xp, x, w)
    x = xp.asarray(x, dtype=dtype)
    w = xp.asarray(w, dtype=dtype)
    if x.ndim != 2 or w.ndim != 2 or w.shape[1] != x.shape[1]:
        raise ValueError(
            f"dense: input must be [N, F] and weight [O, F]; got input {tuple(x.shape)}, "
            f"weight {tuple(w.shape)}"
        )
    y = xp.matmul(x, w.T, out=out)  # (N, O)
    if scale is not None:
        if tuple(scale.shape) != (w.shape[0],):
            raise ValueError(f"dense: scale must be [{w.shape[0]}], got {tuple(scale.shape)}")
        y *= xp.asarray(scale, dtype=dtype)
    if b is not None:
        if tuple(b.shape) != (w.shape[0],):
            raise ValueError(f"dense: bias must be [{w.shape[0]}], got {tuple(b.shape)}")
        y += xp.asarray(b, dtype=dtype)
    return apply_act_(y, act)
