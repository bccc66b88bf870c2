"""Sliding windows, shared by the convolution and pooling families: argument
normalisation for the kernels, the output-size rule with its diagnostics, and the checker's
hooks for windowed layers (the unused-tail warning, the formula shown in a merge's notes,
and the padding or ceil fix that would make a merge agree).

The size formulas themselves live in `compiler/shapes.py`, the one place for the
arithmetic; here the kernels take a padding that is either one integer (the same on both
sides) or a pair ``(begin, end)``.

Every function works on any number of spatial dims: ``[C, L]`` signals (length),
``[C, H, W]`` maps (height, width) and ``[C, D, H, W]`` volumes (depth, height, width). A
kernel, stride or dilation is an integer or one value per spatial dim (``dims``); a padding
is an integer, one value per dim, or ``(begin, end)`` per dim flattened in dim order
(``pad_pairs``; ``pads4`` is its 2-D form, ``(top, bottom, left, right)``).
"""

from __future__ import annotations

from ..compiler import shapes
from ..compiler.shapes import conv_out_asym, pool_out_asym
from ..compiler.symbolic import is_concrete, shape_text

# Spatial dims -> the names of the axes, what one step along each is, and its unit.
AXIS_NAMES = {1: ("length",), 2: ("height", "width"), 3: ("depth", "height", "width")}
AXES = AXIS_NAMES[2]
CELLS = {"length": "sample", "depth": "slice", "height": "row", "width": "column"}
UNITS = {"length": "samples long", "depth": "slices deep", "height": "rows high",
         "width": "columns wide"}
# Spatial dims -> the map in words, its dims' letters, a kernel's letters.
MAP_WORDS = {1: "[C, L]", 2: "[C, H, W]", 3: "[C, D, H, W]"}
KIND_WORDS = {1: "signals", 2: "maps", 3: "volumes"}
DIM_LETTERS = {1: "L", 2: "H, W", 3: "D, H, W"}
KERNEL_LETTERS = {1: "k", 2: "kh, kw", 3: "kd, kh, kw"}


# ---- the kernels' side -----------------------------------------------------------------------


def pair(value, what="value"):
    """``3 -> (3, 3)``, ``(3, 5) -> (3, 5)``."""
    if isinstance(value, int):
        return (value, value)
    items = tuple(int(v) for v in value)
    if len(items) != 2:
        raise ValueError(f"{what} must be an integer or a pair [h, w], got {value!r}")
    return items


def dims(value, n, what="value"):
    """An integer or ``n`` values, one per spatial dim, as an ``n``-tuple: ``3 -> (3, 3, 3)``
    for ``n`` = 3. ``dims(v, 2)`` is ``pair(v)``."""
    if isinstance(value, int):
        return (value,) * n
    items = tuple(int(v) for v in value)
    if len(items) != n:
        names = ", ".join(AXIS_NAMES.get(n, ()))
        listed = f" [{names}]" if names else ""
        raise ValueError(f"{what} must be an integer or a list of {n}{listed}, got {value!r}")
    return items


def pad_pairs(pad, n):
    """A padding of ``n`` spatial dims as ``((begin, end), ...)``, one pair per dim.

    Accepts ``p``, one value per dim, or ``(begin, end)`` per dim flattened in dim order
    (``(top, bottom, left, right)`` in 2-D, as ``pads4``)."""
    if isinstance(pad, int):
        return ((pad, pad),) * n
    items = tuple(int(v) for v in pad)
    if len(items) == n:
        return tuple((p, p) for p in items)
    if len(items) == 2 * n:
        return tuple((items[2 * i], items[2 * i + 1]) for i in range(n))
    raise ValueError(f"pad must be p, a list of {n} or {2 * n} values (begin, end per dim), "
                     f"got {pad!r}")


def flat_pads(pairs) -> tuple:
    """``((begin, end), ...)`` -> ``(begin0, end0, begin1, end1, ...)``: a kernel's ``pad``."""
    return tuple(p for pair_ in pairs for p in pair_)


def window_view(xpad, kernel, stride, dilation, outs, xp):
    """Read-only view ``(N, C, k..., o...)`` of every window of ``xpad (N, C, ...)``: the
    kernel taps first, then the output positions; no copy."""
    head = xpad.strides[:2]
    cells = xpad.strides[2:]
    shape = xpad.shape[:2] + tuple(kernel) + tuple(outs)
    strides = (head + tuple(s * d for s, d in zip(cells, dilation))
               + tuple(s * t for s, t in zip(cells, stride)))
    return xp.lib.stride_tricks.as_strided(xpad, shape=shape, strides=strides)


def tap_slices(tap, stride, dilation, outs, first=None):
    """The slices of a padded ``(N, C, ...)`` array that tap ``tap`` (one index per spatial
    dim) of every window reads; ``first``: only output rows ``first[0] .. first[1]-1``
    along the first spatial dim."""
    out = [slice(None), slice(None)]
    for axis, (i, s, d, o) in enumerate(zip(tap, stride, dilation, outs)):
        start = i * d
        if axis == 0 and first is not None:
            start += first[0] * s
            o = first[1] - first[0]
        out.append(slice(start, start + s * (o - 1) + 1, s))
    return tuple(out)


def pad_to(x, pairs, fill, xp):
    """``x (N, C, ...)`` padded by ``pairs`` (one ``(begin, end)`` per spatial dim) with
    ``fill``; ``x`` itself when there is no padding."""
    if not any(b or e for b, e in pairs):
        return x
    shape = x.shape[:2] + tuple(n + b + e for n, (b, e) in zip(x.shape[2:], pairs))
    xpad = xp.full(shape, fill, dtype=x.dtype)
    xpad[(slice(None), slice(None)) + tuple(slice(b, b + n) for n, (b, _) in
                                           zip(x.shape[2:], pairs))] = x
    return xpad


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

def unit(axis: int, n: int = 2) -> str:
    """How a size along spatial ``axis`` of an ``n``-dim map reads: "rows high"."""
    return UNITS[AXIS_NAMES[n][axis]]


def spatial(op, shape, ctx, kernel, stride, pad, dilation=None, ceil=False):
    """The spatial output sizes (``(H', W')`` on a ``[C, H, W]`` map) of a windowed layer
    on a ``[C, ...]`` map, reporting sizes below 1 through ``ctx`` (None then)."""
    rank = len(shape) - 1
    names = AXIS_NAMES[rank]
    if dilation is None:
        dilation = (1,) * rank
    out = []
    for axis in range(rank):
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
                    f"{op} output {names[axis]} would be {size}, below 1: {formula}",
                    help=f"the input must be at least {need} {unit(axis, rank)} for this {op}; "
                    f"it is {n}. Use a smaller kernel or stride, more padding, "
                    f"or fewer downsampling layers before it",
                )
                return None
        else:
            ctx.positive(size, f"{op} output {names[axis]}")
        out.append(size)
    return tuple(out)


def lint_unused_tail(node, shape, report, ceil_fixes: bool):
    """W401: a window layer whose last windows stop short of the input's end.
    ``ceil_fixes``: whether ``ceil=true`` is a fix to offer (pooling)."""
    args = node.args
    pad = args["pad"]
    if pad == "same" or args.get("ceil"):
        return
    rank = len(shape) - 1
    parts = []
    sums = []
    for axis in range(rank):
        n = shape[axis + 1]
        if not is_concrete(n):
            continue
        k = args["kernel"][axis]
        s = args["stride"][axis]
        p = pad[axis]
        d = args.get("dilation", (1,) * rank)[axis]
        eff = shapes.effective_kernel(k, d)
        if eff < s:
            continue  # windows with gaps between them skip input by design
        tail = shapes.unused_tail(n, k, s, p, d)
        if tail:
            what = CELLS[AXIS_NAMES[rank][axis]]
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
    """The output-size arithmetic of ``node`` along shape ``axis`` (1 .. spatial dims), or
    None."""
    n = in_shape[axis]
    a = node.args
    if not is_concrete(n) or a["pad"] == "same":
        return None
    k, s, p = a["kernel"][axis - 1], a["stride"][axis - 1], a["pad"][axis - 1]
    d = a.get("dilation", (1,) * (len(in_shape) - 1))[axis - 1]
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
    d = a.get("dilation", (1,) * (len(in_shape) - 1))[i]
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


def namesake_help(op: str, family: dict, shape):
    """Rank help for a windowed layer of ``family`` (spatial dims -> layer name, e.g.
    ``{1: "conv1d", 2: "conv", 3: "conv3d"}``) given an input of the wrong rank: its
    namesake for that rank, or, for a vector, to move it before `flatten`."""
    need = next(n for n, name in family.items() if name == op)
    if len(shape) == 1:
        return f"`{op}` works on {MAP_WORDS[need]} {KIND_WORDS[need]}; move it before `flatten`"
    got = len(shape) - 1
    if got not in family:
        return None
    return (f"`{op}` works on {MAP_WORDS[need]} {KIND_WORDS[need]}; use `{family[got]}` on a "
            f"{MAP_WORDS[got]} {KIND_WORDS[got][:-1]}")


def per_dim(value, n):
    """A layer argument of a rank-free kind (``dims``, ``dpad``, ``dcpad``: an integer, or a
    list the checker made a tuple) as one value per spatial dim; None when a list has the
    wrong length."""
    if isinstance(value, int):
        return (value,) * n
    items = tuple(value)
    return items if len(items) == n else None


def per_dim_checks(op: str, n: int, names, then=None):
    """A ``check_args`` hook: the arguments ``names`` of a windowed layer with ``n`` spatial
    dims made one value per dim (E207 for a list of another length; ``same`` stays), then
    ``then(args, spans, call_span, report)`` where given."""
    axes = ", ".join(AXIS_NAMES[n])

    def check_args(args, spans, call_span, report):
        for name in names:
            value = args[name]
            if value is None or value == "same":
                continue
            items = per_dim(value, n)
            if items is None:
                text = "[" + ", ".join(str(v) for v in value) + "]"
                report("E207", f"{op} {name}={text} gives {len(value)} values, but a "
                       f"{MAP_WORDS[n]} map has {n} spatial dim{'s' * (n > 1)}",
                       spans.get(name, call_span),
                       help=f"give one integer for every spatial dim, or a list [{axes}]")
                return None
            args[name] = items
        return args if then is None else then(args, spans, call_span, report)

    return check_args
