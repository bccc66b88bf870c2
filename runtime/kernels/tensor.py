"""Ops that only move or combine arrays: flatten, concat, add, and inference dropout."""

from ..xp import get_array_module


def flatten(x):
    """``(N, C, H, W) -> (N, C*H*W)``; a view when ``x`` is contiguous."""
    features = 1
    for d in x.shape[1:]:
        features *= d
    return x.reshape(x.shape[0], features)  # spelled out: -1 is ambiguous for an empty batch


def concat(*xs, axis=1):
    """Join arrays along ``axis`` (channels by default)."""
    if not xs:
        raise ValueError("concat: needs at least one input, got none")
    xp = get_array_module(*xs)
    return xp.concatenate(xs, axis=axis)


def add(*xs, out=None):
    """Element-wise sum of one or more arrays of one shape; a fresh array unless ``out`` is
    given (which may be one of the inputs)."""
    if not xs:
        raise ValueError("add: needs at least one input, got none")
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) != 1:
        raise ValueError(f"add: inputs must share one shape, got {[tuple(x.shape) for x in xs]}")
    xp = get_array_module(*xs)
    if len(xs) == 1:
        if out is None:
            return xs[0].copy()
        out[...] = xs[0]
        return out
    out = xp.add(xs[0], xs[1], out=out)
    for x in xs[2:]:
        out += x
    return out


def dropout(x, *, p=0.5):
    """Identity at inference (PyTorch scales at training time, so nothing to undo)."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    return x
