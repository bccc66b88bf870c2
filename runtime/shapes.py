"""Argument normalisation for the kernels, and the output-size rules they check against.

The size formulas themselves live in `compiler/shapes.py` (one place for the arithmetic, used
by the checker, the cost report and the kernels); here they take a padding that is either one
integer (the same on both sides) or a pair ``(begin, end)``.
"""

from ..compiler.shapes import conv_out_asym, pool_out_asym


def pair(value, what="value"):
    """``3 -> (3, 3)``, ``(3, 5) -> (3, 5)``."""
    if isinstance(value, int):
        return (value, value)
    items = tuple(int(v) for v in value)
    if len(items) != 2:
        raise ValueError(f"{what} must be an integer or a pair [h, w], got {value!r}")
    return items


def pads4(pad):
    """Normalise a 2-D padding to ``(top, bottom, left, right)``.

    Accepts ``p``, ``(ph, pw)`` or ``(top, bottom, left, right)``.
    """
    if isinstance(pad, int):
        return (pad, pad, pad, pad)
    items = tuple(int(v) for v in pad)
    if len(items) == 2:
        return (items[0], items[0], items[1], items[1])
    if len(items) == 4:
        return items
    raise ValueError(f"pad must be p, [ph, pw] or [top, bottom, left, right], got {pad!r}")


def _begin_end(p):
    if isinstance(p, int):
        return (p, p)
    return (int(p[0]), int(p[1]))


def conv_out(n, k, s=1, p=0, d=1):
    """Output length of a convolution: ``floor((n + 2p - d(k-1) - 1) / s) + 1``.

    ``p`` may be ``(begin, end)`` for an asymmetric padding. The result may be below 1;
    callers decide how to report that.
    """
    p0, p1 = _begin_end(p)
    return conv_out_asym(n, k, s, p0, p1, d)


def pool_out(n, k, s, p=0, d=1, ceil=False):
    """Output length of a pooling window, with PyTorch's ceil-mode rule (a last window that
    would start in the right padding is dropped)."""
    p0, p1 = _begin_end(p)
    return pool_out_asym(n, k, s, p0, p1, d, ceil)


def checked_out(n, k, s, p, d, ceil, where):
    """``pool_out`` (``conv_out`` when not ``ceil``) that raises on sizes below 1.

    The message names the op in ``where`` and shows the formula with its numbers.
    """
    out = pool_out(n, k, s, p, d, ceil)
    if out >= 1:
        return out
    p0, p1 = _begin_end(p)
    rounding = "ceil" if ceil else "floor"
    formula = f"{rounding}(({n} + {p0} + {p1} - {d}*({k}-1) - 1)/{s}) + 1 = {out}"
    raise ValueError(f"{where}: output size must be at least 1, got {formula}")
