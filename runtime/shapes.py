"""Size arithmetic for windowed ops (conv and pooling), local to the runtime.

The compiler keeps its own copy of these rules for checking; the runtime must not import
the compiler, so the few formulas the kernels need live here as small pure functions.
A padding is either one integer (the same on both sides) or a pair ``(begin, end)``.
"""


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
    span = d * (k - 1) + 1
    return (n + p0 + p1 - span) // s + 1


def pool_out(n, k, s, p=0, d=1, ceil=False):
    """Output length of a pooling window, with PyTorch's ceil-mode rule.

    With ``ceil`` the division rounds up, but a last window that would start in the right
    padding (at or past ``n + p_begin`` in padded coordinates) is dropped.
    """
    if not ceil:
        return conv_out(n, k, s, p, d)
    p0, p1 = _begin_end(p)
    span = d * (k - 1) + 1
    out = -(-(n + p0 + p1 - span) // s) + 1
    if (out - 1) * s >= n + p0:
        out -= 1
    return out


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
