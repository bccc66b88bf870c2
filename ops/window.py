"""Sliding windows, shared by the convolution and pooling families: argument
normalisation for the kernels, the output-size rule with its diagnostics, and the checker's
hooks for windowed layers (the unused-tail warning, the formula shown in a merge's notes,
and the padding or ceil fix that would make a merge agree).

The size formulas themselves live in `compiler/shapes.py`, the one place for the
arithmetic; here the kernels take a padding that is either one integer (the same on both
sides) or a pair ``(begin, end)``.
"""

from __future__ import annotations

from ..compiler import shapes
from ..compiler.shapes import conv_out_asym, pool_out_asym
from ..compiler.symbolic import is_concrete, shape_text

AXES = ("height", "width")


# ---- the kernels' side -----------------------------------------------------------------------


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


# ---- the checker's side ----------------------------------------------------------------------

def unit(axis: int) -> str:
    return "rows high" if axis == 0 else "columns wide"


def spatial(op, shape, ctx, kernel, stride, pad, dilation=(1, 1), ceil=False):
    """``(H', W')`` of a windowed layer on a ``[C, H, W]`` map, reporting sizes below 1
    through ``ctx`` (None then)."""
    out = []
    for axis in range(2):
        n = shape[axis + 1]
        k, s, d = kernel[axis], stride[axis], dilation[axis]
        p = pad[axis] if isinstance(pad, tuple) else pad
        if p == "same":
            out.append(shapes.same_out(n, s))
            continue
        size = shapes.pool_out(n, k, s, p, d, ceil)
        if is_concrete(size):
            if size < 1:
                formula = shapes.conv_formula(n, k, s, p, d, ceil)
                need = shapes.min_input(k, p, d)
                ctx.error(
                    "E301",
                    f"{op} output {AXES[axis]} would be {size}, below 1: {formula}",
                    help=f"the input must be at least {need} {unit(axis)} for this {op}; "
                    f"it is {n}. Use a smaller kernel or stride, more padding, "
                    f"or fewer downsampling layers before it",
                )
                return None
        else:
            ctx.positive(size, f"{op} output {AXES[axis]}")
        out.append(size)
    return tuple(out)


def lint_unused_tail(node, shape, report, ceil_fixes: bool):
    """W401: a window layer whose last windows stop short of the input's end.
    ``ceil_fixes``: whether ``ceil=true`` is a fix to offer (pooling)."""
    args = node.args
    pad = args["pad"]
    if pad == "same" or args.get("ceil"):
        return
    parts = []
    sums = []
    for axis in range(2):
        n = shape[axis + 1]
        if not is_concrete(n):
            continue
        k = args["kernel"][axis]
        s = args["stride"][axis]
        p = pad[axis]
        d = args.get("dilation", (1, 1))[axis]
        eff = shapes.effective_kernel(k, d)
        if eff < s:
            continue  # windows with gaps between them skip input by design
        tail = shapes.unused_tail(n, k, s, p, d)
        if tail:
            what = "row" if axis == 0 else "column"
            parts.append(f"{tail} input {what}{'s' if tail > 1 else ''}")
            padded = f"{n} + {2 * p}" if p else f"{n}"
            sums.append(f"({padded} - {eff}) mod {s} = {(n + 2 * p - eff) % s}")
    if parts:
        fix = "ceil=true, or " if ceil_fixes else ""
        report(
            "W401",
            f"{node.op} leaves the last {' and '.join(parts)} unused: "
            f"{'; '.join(dict.fromkeys(sums))}",
            node.span,
            notes=[f"input is {shape_text(shape)}"],
            help=f"use {fix}an input size that fits the stride",
        )


def formula(node, in_shape, axis):
    """The output-size arithmetic of ``node`` along shape ``axis`` (1 or 2), or None."""
    n = in_shape[axis]
    a = node.args
    if not is_concrete(n) or a["pad"] == "same":
        return None
    k, s, p = a["kernel"][axis - 1], a["stride"][axis - 1], a["pad"][axis - 1]
    d = a.get("dilation", (1, 1))[axis - 1]
    return shapes.conv_formula(n, k, s, p, d, a.get("ceil", False))


def fix(node, in_shape, axis, target, pool: bool):
    """A change to ``node``'s padding (or, for pooling, its rounding) that makes its output
    ``target`` along shape ``axis``, as a help text; None when there is none."""
    a = node.args
    n = in_shape[axis]
    if not is_concrete(n) or a["pad"] == "same":
        return None
    i = axis - 1
    k, s, p = a["kernel"][i], a["stride"][i], a["pad"][i]
    d = a.get("dilation", (1, 1))[i]
    ceil = a.get("ceil", False)
    eff = shapes.effective_kernel(k, d)
    options = []
    limit = eff // 2 if pool else eff
    for q in range(0, limit + 1):
        if q != p and shapes.pool_out(n, k, s, q, d, ceil) == target:
            options.append(f"pad={q}")
            break
    if pool and shapes.pool_out(n, k, s, p, d, not ceil) == target:
        options.append(f"ceil={'false' if ceil else 'true'}")
    if not pool and s == 1 and n == target and f"pad={eff // 2}" not in options:
        options.append("pad=same")
    if not options:
        return None
    return f"use {' or '.join(options)} on the {node.op} at {node.where()}"


def map_only_help(op: str, shape):
    """Rank help for a layer that needs a [C, H, W] map and was given a vector."""
    if len(shape) == 1:
        return f"`{op}` works on [C, H, W] maps; move it before `flatten`"
    return None
