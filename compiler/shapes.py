"""Output-size rules: pure functions, the one place the arithmetic lives.

Each works on `int` sizes and on symbolic sizes (`symbolic.Expr`) alike. The checker, the
cost report and the runtime all call these.
"""

from __future__ import annotations

from .symbolic import CeilPool, Expr, atom_expr


def effective_kernel(k: int, d: int = 1) -> int:
    """The span a dilated kernel covers: d(k - 1) + 1."""
    return d * (k - 1) + 1


def conv_out(n, k: int, s: int = 1, p: int = 0, d: int = 1):
    """floor((n + 2p - d(k-1) - 1)/s) + 1, the size of a convolution's output."""
    return (n + 2 * p - effective_kernel(k, d)) // s + 1


def conv_out_asym(n, k: int, s: int, before: int, after: int, d: int = 1):
    """Output size with different padding before and after."""
    return (n + before + after - effective_kernel(k, d)) // s + 1


def pool_out_asym(n: int, k: int, s: int, before: int, after: int, d: int = 1,
                  ceil: bool = False) -> int:
    """Concrete pooling output size with padding `before` and `after`, PyTorch's ceil rule:
    a last window that would start at or past n + before (in the right padding) is dropped."""
    if not ceil:
        return conv_out_asym(n, k, s, before, after, d)
    out = (n + before + after - effective_kernel(k, d) + s - 1) // s + 1
    if (out - 1) * s >= n + before:
        out -= 1
    return out


def transpose_out(n, k: int, s: int = 1, p: int = 0, q: int = 0, d: int = 1):
    """(n - 1)s - 2p + d(k - 1) + q + 1, the size of a transposed convolution's output (q its
    output padding); concrete or symbolic."""
    return (n - 1) * s - 2 * p + d * (k - 1) + q + 1


def same_pads(n: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """Padding for `pad=same`: the output is ceil(n / s); the odd pixel goes after
    (TensorFlow's and PyTorch's choice)."""
    out = (n + s - 1) // s
    total = max((out - 1) * s + effective_kernel(k, d) - n, 0)
    return total // 2, total - total // 2


def same_out(n, s: int):
    """The output size of `pad=same`: ceil(n / s)."""
    return (n + s - 1) // s


def pool_out(n, k: int, s: int, p: int = 0, d: int = 1, ceil: bool = False):
    """Pooling output size. With `ceil`, round up, but drop a last window that would start in
    the right padding (PyTorch's rule, so that every window sees at least one input)."""
    eff = effective_kernel(k, d)
    if not ceil:
        return (n + 2 * p - eff) // s + 1
    if isinstance(n, int):
        return pool_out_asym(n, k, s, p, p, d, ceil)
    out = (n + 2 * p - eff + s - 1) // s + 1
    if eff - p >= s:
        # ceil(x/s)*s - x <= s - 1 < eff - p: the last window always starts inside
        return out
    return atom_expr(CeilPool(n if isinstance(n, Expr) else n, eff, s, p))


def ceil_window_dropped(n: int, k: int, s: int, p: int, d: int = 1) -> bool:
    """True when ceil mode's extra last window is dropped by PyTorch's rule."""
    eff = effective_kernel(k, d)
    out = (n + 2 * p - eff + s - 1) // s + 1
    return (out - 1) * s >= n + p


def unused_tail(n: int, k: int, s: int, p: int = 0, d: int = 1) -> int:
    """Input rows that no window reaches at the end: (n + 2p - eff) mod s, less the right
    padding (a window may skip padding without losing data)."""
    eff = effective_kernel(k, d)
    if n + 2 * p < eff:
        return 0
    return max((n + 2 * p - eff) % s - p, 0)


def min_input(k: int, p: int = 0, d: int = 1) -> int:
    """The smallest input size giving an output of at least 1 (no ceil)."""
    return max(effective_kernel(k, d) - 2 * p, 1)


def conv_formula(n, k: int, s: int, p, d: int = 1, ceil: bool = False) -> str:
    """The output-size arithmetic with numbers, e.g. `floor((56 - 3)/2) + 1 = 27`."""
    eff = effective_kernel(k, d)
    if isinstance(p, tuple):
        pad_total = p[0] + p[1]
    else:
        pad_total = 2 * p
    inner = f"{n}"
    if pad_total:
        inner += f" + {pad_total}"
    inner += f" - {eff}"
    if isinstance(p, tuple):
        out = conv_out_asym(n, k, s, p[0], p[1], d)
    else:
        out = pool_out(n, k, s, p, d, ceil) if ceil else conv_out(n, k, s, p, d)
    if s == 1:
        text = f"{inner} + 1"
    else:
        rounding = "ceil" if ceil else "floor"
        text = f"{rounding}(({inner})/{s}) + 1"
    if ceil and isinstance(n, int) and not isinstance(p, tuple) and ceil_window_dropped(n, k, s, p, d):
        text += " - 1 (the last window would start in the padding)"
    return f"{text} = {out}"


# The names of a per-sample shape's axes, by rank (spec section 9: "Shape errors keep naming
# the dim: length, depth, height, width").
AXIS_NAMES = {
    1: ("features",),
    2: ("channels", "length"),
    3: ("channels", "height", "width"),
    4: ("channels", "depth", "height", "width"),
}


def axis_names(rank: int) -> tuple:
    """The name of each axis of a per-sample shape of ``rank``: ``("channels", "length")``
    for ``[C, L]``; ``("channels", "depth", "height", "width")`` for ``[C, D, H, W]``; for a
    rank beyond 4, ``channels`` then ``dim 1``, ``dim 2``, ..."""
    if rank in AXIS_NAMES:
        return AXIS_NAMES[rank]
    return ("channels",) + tuple(f"dim {i}" for i in range(1, rank))


def spatial_names(rank: int) -> tuple:
    """The spatial axes' names of a ``[C, ...]`` shape of ``rank``: ``("height", "width")``
    for ``[C, H, W]``; none for ``[F]``."""
    return axis_names(rank)[1:] if rank > 1 else ()
