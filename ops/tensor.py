"""Ops that only move or combine arrays: flatten, dropout, drop_path, slice, channel_shuffle,
and the merges concat, add and mul.

===============  ===========  ===============  ===================  =========================
layer            arguments    primitive        kernel               memory plan
===============  ===========  ===============  ===================  =========================
flatten                       flatten          (x)                  an alias of its input
dropout          p=0.5        dropout          (x, *, p)            an alias (inference)
drop_path        p            drop_path        (x, *, p)            an alias (inference)
slice            start, stop  slice            (x, *, start, stop)  takes out=
channel_shuffle  groups       channel_shuffle  (x, *, groups)       takes out=
concat           merge        concat           (*xs, axis=1)        inputs written into its
                                                                    channel slices
add              merge        add              (*xs)                takes out=, which may be
                                                                    any input of the output's
                                                                    shape
mul              merge        mul              (*xs)                as add
===============  ===========  ===============  ===================  =========================

``add`` and ``mul`` broadcast as NumPy does over the per-sample shape (equal ranks; along each
axis the sizes other than 1 agree): ``mul(x, gate)`` with a ``[C, 1, 1]`` gate is
squeeze-and-excitation; their backward passes sum the gradient over the broadcast axes.
None of these ops keeps more than shapes for the backward pass, except dropout and drop_path
in training, which keep their masks, and mul, which keeps its inputs. There are no GPU kernels
here: the generic ones are CuPy's own array operations (a reshape, ``concatenate``, ``add``,
``multiply``, a transposed copy) when handed CuPy arrays.
"""

from __future__ import annotations

from ..compiler.symbolic import is_concrete
from .base import ArgSpec, Example, Layer, Merge, Primitive, divisor_help, elements
from .base import keeps_nothing, same_shape
from .xp import as_grad, floating, get_array_module, np, prod


def _grad_dtype(y):
    return y.dtype if y.dtype.kind == "f" else np.dtype(np.float64)


# ================================================================ flatten

# ---- the layer


def _infer_flatten(shape, args, ctx):
    total = 1
    for d in shape:
        total = d * total
    return (total,)


def _lower_flatten(node, in_shapes):
    return "flatten", {}


# ---- the kernel, forward and backward


def flatten(x):
    """``(N, C, H, W) -> (N, C*H*W)``; a view when ``x`` is contiguous."""
    features = 1
    for d in x.shape[1:]:
        features *= d
    return x.reshape(x.shape[0], features)  # spelled out: -1 is ambiguous for an empty batch


def flatten_forward(x, *, train=True, rng=None):
    y = flatten(x)
    return y, (tuple(x.shape), _grad_dtype(y))


def flatten_backward(saved, dy):
    x_shape, dtype = saved
    xp = get_array_module(dy)
    dy = as_grad(dy, (x_shape[0], prod(x_shape[1:])), dtype, xp, "flatten")
    return (dy.reshape(x_shape).copy(),), ()


# ---- reference, ONNX, PyTorch


def flatten_reference(x):
    x = np.asarray(x)
    y = np.empty((x.shape[0], x[0].size), dtype=x.dtype)
    for n in range(x.shape[0]):
        for flat, index in enumerate(np.ndindex(*x.shape[1:])):
            y[n, flat] = x[(n,) + index]
    return y


def flatten_onnx(g, step, xs, ws, out, in_shapes):
    g.node("Flatten", xs, out, axis=1)


def flatten_torch(step, xs, ws, training):
    return xs[0].flatten(1)


# ---- examples


def flatten_examples(rng):
    return [
        Example([rng.standard_normal((2, 3, 2, 2))], note="[C, H, W] -> [C*H*W]"),
        Example([rng.standard_normal((2, 5))], note="a vector stays as it is"),
    ]


# ================================================================ dropout

# ---- the layer


def _lower_dropout(node, in_shapes):
    return "dropout", dict(p=node.args["p"])


# ---- the kernel, forward and backward


def dropout(x, *, p=0.5):
    """Identity at inference (PyTorch scales at training time, so nothing to undo)."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    return x


def dropout_forward(x, *, p=0.5, train=True, rng=None):
    """Inverted dropout: with ``train``, zero each element with probability ``p`` and scale
    the rest by ``1/(1-p)``; the mask is drawn from ``rng`` and kept. Else the identity."""
    y = dropout(x, p=p)  # checks p
    xp = get_array_module(x)
    if not train or p == 0:
        return y, (None, None, tuple(x.shape), y.dtype)
    if rng is None:
        raise ValueError(
            f"dropout: training with p={p} needs rng (a NumPy or CuPy Generator), got None"
        )
    x = floating(x, xp)
    keep = xp.asarray(rng.random(x.shape, dtype=x.dtype)) >= p  # (N, ...), bool
    return _masked(x, keep, p)


def _masked(x, keep, p):
    """``x`` times the bool ``keep`` (which broadcasts over ``x``) and ``1/(1-p)``, and what
    the backward needs: the forward's end for dropout and drop_path alike."""
    scale = x.dtype.type(1 / (1 - p))
    y = x * keep
    y *= scale
    return y, (keep, scale, tuple(x.shape), x.dtype)


def _masked_backward(saved, dy, where):
    keep, scale, x_shape, dtype = saved
    xp = get_array_module(dy) if keep is None else get_array_module(keep)
    dy = as_grad(dy, x_shape, dtype, xp, where)
    if keep is None:
        return (dy.copy(),), ()
    gx = dy * keep
    gx *= scale
    return (gx,), ()


def dropout_backward(saved, dy):
    return _masked_backward(saved, dy, "dropout")


# ---- reference, ONNX, PyTorch


def dropout_reference(x, *, p=0.5):
    return np.array(x, copy=True)


def dropout_onnx(g, step, xs, ws, out, in_shapes):
    g.node("Identity", xs, out)  # inference: dropout passes its input through


def dropout_torch(step, xs, ws, training):
    """The identity, in training too: the oracle stays deterministic."""
    return xs[0]


# ---- examples


def dropout_examples(rng):
    return [
        Example([rng.standard_normal((2, 3, 2, 2))], attrs=dict(p=0.0), note="p=0: no mask"),
        Example([rng.standard_normal((2, 3, 2, 2))], attrs=dict(p=0.5), torch=False,
                note="training draws a mask from rng; the PyTorch mapping is the identity"),
        Example([rng.standard_normal((2, 5))], attrs=dict(p=0.3), torch=False,
                note="[F]; training draws a mask from rng"),
    ]


# ================================================================ concat

# ---- the merge


def _lower_concat(node, in_shapes):
    return "concat", dict(axis=1)


# ---- the kernel, forward and backward


def concat(*xs, axis=1):
    """Join arrays along ``axis`` (channels by default)."""
    if not xs:
        raise ValueError("concat: needs at least one input, got none")
    xp = get_array_module(*xs)
    return xp.concatenate(xs, axis=axis)


def concat_forward(*xs, axis=1, train=True, rng=None):
    y = concat(*xs, axis=axis)
    sizes = tuple(x.shape[axis] for x in xs)
    return y, (sizes, axis, tuple(y.shape), _grad_dtype(y))


def concat_backward(saved, dy):
    sizes, axis, y_shape, dtype = saved
    xp = get_array_module(dy)
    dy = as_grad(dy, y_shape, dtype, xp, "concat")
    gxs = []
    start = 0
    for size in sizes:
        index = [slice(None)] * dy.ndim
        index[axis] = slice(start, start + size)
        gxs.append(dy[tuple(index)].copy())  # fresh and contiguous
        start += size
    return tuple(gxs), ()


# ---- reference, ONNX, PyTorch


def concat_reference(*xs, axis=1):
    xs = [np.asarray(x) for x in xs]
    sizes = [x.shape[axis] for x in xs]
    shape = list(xs[0].shape)
    shape[axis] = sum(sizes)
    y = np.empty(shape, dtype=np.result_type(*xs))
    start = 0
    for x, size in zip(xs, sizes):
        index = [slice(None)] * y.ndim
        index[axis] = slice(start, start + size)
        y[tuple(index)] = x
        start += size
    return y


def concat_onnx(g, step, xs, ws, out, in_shapes):
    g.node("Concat", xs, out, axis=int(step.attrs.get("axis", 1)))


def concat_torch(step, xs, ws, training):
    import torch

    return torch.cat(xs, dim=int(step.attrs.get("axis", 1)))


# ---- examples


def concat_examples(rng):
    return [
        Example([rng.standard_normal((2, c, 2, 3)) for c in (1, 3)], attrs=dict(axis=1),
                note="two maps"),
        Example([rng.standard_normal((2, c, 2, 3)) for c in (2, 1, 3)], attrs=dict(axis=1),
                note="three maps"),
        Example([rng.standard_normal((2, f)) for f in (4, 2)], attrs=dict(axis=1),
                note="two vectors, joined along features"),
    ]


# ================================================================ add and mul

# ---- the merges


def _lower_add(node, in_shapes):
    return "add", {}


def _lower_mul(node, in_shapes):
    return "mul", {}


# ---- the kernels, forward and backward


def _broadcast_shape(xs, where):
    """The shape ``xs`` broadcast to, as NumPy's broadcasting gives it for arrays of one rank
    and one batch size: along each per-sample axis, the size other than 1 (1 if none)."""
    shapes = [tuple(x.shape) for x in xs]
    if len({len(s) for s in shapes}) != 1 or len({s[0] for s in shapes}) != 1:
        raise ValueError(f"{where}: inputs must share one rank and one batch size, got "
                         f"{[list(s) for s in shapes]}")
    out = [shapes[0][0]]
    for axis in range(1, len(shapes[0])):
        sizes = {s[axis] for s in shapes if s[axis] != 1}
        if len(sizes) > 1:
            raise ValueError(f"{where}: inputs do not broadcast: {[list(s) for s in shapes]} "
                             f"differ in axis {axis} ({sorted(sizes)}), where each must "
                             f"be equal or 1")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def _combine(where, ufunc, xs, out):
    """``ufunc`` (``add`` or ``multiply``) folded over ``xs``, broadcast; into ``out`` when
    given (the broadcast shape; it may be any input of that shape: in_place="any")."""
    if not xs:
        raise ValueError(f"{where}: needs at least one input, got none")
    shape = _broadcast_shape(xs, where)
    xp = get_array_module(*xs)
    if out is not None and tuple(out.shape) != shape:
        raise ValueError(f"{where}: out must have the output's shape {list(shape)}, got "
                         f"{list(out.shape)}")
    if len(xs) == 1:
        if out is None:
            return xs[0].copy()
        out[...] = xs[0]
        return out
    if out is None:
        out = xp.empty(shape, dtype=xp.result_type(*[x.dtype for x in xs]))
    else:
        # ``out`` may be an input (the memory plan's in_place="any"): read that one first,
        # before anything is written over it
        for i in range(1, len(xs)):
            if xp.may_share_memory(xs[i], out):
                xs = (xs[i],) + xs[:i] + xs[i + 1:]
                break
    ufunc = getattr(xp, ufunc)
    if tuple(xs[0].shape) == shape or tuple(xs[1].shape) == shape:
        ufunc(xs[0], xs[1], out=out)
        rest = xs[2:]
    else:  # neither of the first two has the whole shape: start from a broadcast copy
        out[...] = xs[0]
        rest = xs[1:]
    for x in rest:
        ufunc(out, x, out=out)
    return out


def _broadcast_axes(shape, out_shape):
    """The axes along which an input of ``shape`` was broadcast to ``out_shape``."""
    return tuple(axis for axis, (n, m) in enumerate(zip(shape, out_shape)) if n == 1 and m != 1)


def _unbroadcast(g, shape, xp):
    """``g`` summed over the axes along which an input of ``shape`` was broadcast, keeping
    them (size 1); always a new array."""
    axes = _broadcast_axes(shape, g.shape)
    if not axes:
        return g.copy()
    return xp.sum(g, axis=axes, keepdims=True)


def add(*xs, out=None):
    """Element-wise sum of one or more arrays that broadcast to one shape (equal ranks; along
    each axis the sizes other than 1 agree); a fresh array unless ``out`` is given (the
    output's shape; it may be any input of that shape)."""
    return _combine("add", "add", xs, out)


def add_forward(*xs, train=True, rng=None):
    y = add(*xs)
    return y, (tuple(tuple(x.shape) for x in xs), tuple(y.shape), _grad_dtype(y))


def add_backward(saved, dy):
    shapes, y_shape, dtype = saved
    xp = get_array_module(dy)
    dy = as_grad(dy, y_shape, dtype, xp, "add")
    return tuple(_unbroadcast(dy, shape, xp) for shape in shapes), ()


def mul(*xs, out=None):
    """Element-wise product of one or more arrays that broadcast to one shape (a squeeze-
    and-excitation gate: ``(N, C, H, W) * (N, C, 1, 1)``); a fresh array unless ``out`` is
    given (the output's shape; it may be any input of that shape)."""
    return _combine("mul", "multiply", xs, out)


def mul_forward(*xs, train=True, rng=None):
    y = mul(*xs)
    return y, (xs, tuple(y.shape), _grad_dtype(y))


def mul_backward(saved, dy):
    """The gradient of input i is dy times every other input, summed over the axes along
    which input i was broadcast."""
    xs, y_shape, dtype = saved
    xp = get_array_module(dy)
    dy = as_grad(dy, y_shape, dtype, xp, "mul")
    gxs = []
    for i, x in enumerate(xs):
        g = dy
        for j, other in enumerate(xs):
            if j != i:
                g = g * other  # (N, ...) the output's shape: dy's is the whole one
        if g is dy:  # one input: its gradient is dy itself
            gxs.append(dy.copy())
            continue
        axes = _broadcast_axes(x.shape, g.shape)
        gxs.append(xp.sum(g, axis=axes, keepdims=True) if axes else g)  # new either way
    return tuple(gxs), ()


# ---- reference, ONNX, PyTorch


def _broadcast_reference(xs, combine):
    xs = [np.asarray(x, dtype=np.float64) for x in xs]
    shape = _broadcast_shape(xs, "reference")
    y = np.empty(shape)
    for index in np.ndindex(*shape):
        value = None
        for x in xs:
            v = x[tuple(i if n != 1 else 0 for i, n in zip(index, x.shape))]
            value = v if value is None else combine(value, v)
        y[index] = value
    return y


def add_reference(*xs):
    return _broadcast_reference(xs, lambda a, b: a + b)


def mul_reference(*xs):
    return _broadcast_reference(xs, lambda a, b: a * b)


def add_onnx(g, step, xs, ws, out, in_shapes):
    # Add and Sum broadcast as NumPy does; the batch axis comes first on every input
    if len(xs) == 1:
        g.node("Identity", xs, out)
    elif len(xs) == 2:
        g.node("Add", xs, out)
    else:
        g.node("Sum", xs, out)


def mul_onnx(g, step, xs, ws, out, in_shapes):
    # Mul broadcasts as NumPy does; ONNX has no n-ary product, so three inputs or more are a
    # chain of Mul nodes
    if len(xs) == 1:
        g.node("Identity", xs, out)
        return
    product = xs[0]
    for i, x in enumerate(xs[1:], start=1):
        target = out if i == len(xs) - 1 else g.temp(f"product{i}")
        g.node("Mul", [product, x], target, None if target == out else f"product{i}")
        product = target


def add_torch(step, xs, ws, training):
    return sum(xs[1:], xs[0])


def mul_torch(step, xs, ws, training):
    y = xs[0]
    for x in xs[1:]:
        y = y * x
    return y


# ---- examples


def _merge_examples(rng):
    return [
        Example([rng.standard_normal((2, 3, 2, 2)) for _ in range(2)], note="two maps"),
        Example([rng.standard_normal((2, 3, 2, 2)) for _ in range(3)], note="three maps"),
        Example([rng.standard_normal((2, 4)) for _ in range(2)], note="two vectors"),
        Example([rng.standard_normal((2, 3, 4, 2)), rng.standard_normal((2, 3, 1, 1))],
                note="a per-channel gate [C, 1, 1] on [C, H, W] (squeeze-and-excitation)"),
        Example([rng.standard_normal((2, 3, 1, 1)), rng.standard_normal((2, 3, 2, 3))],
                note="the gate first"),
        Example([rng.standard_normal(s) for s in ((2, 3, 1, 3), (2, 1, 2, 1), (2, 3, 2, 1))],
                note="three inputs, none of the whole shape"),
        Example([rng.standard_normal((2, 4, 5)), rng.standard_normal((2, 4, 1))],
                note="[C, L] with a [C, 1] gate"),
        Example([rng.standard_normal((2, 2, 3, 2, 2)), rng.standard_normal((2, 1, 3, 1, 2))],
                note="[C, D, H, W] with a [1, D, 1, W] factor"),
    ]


def add_examples(rng):
    return _merge_examples(rng)


def mul_examples(rng):
    return _merge_examples(rng)


# ================================================================ slice

# ---- the layer


def _check_slice(args, spans, call_span, report):
    start, stop = args["start"], args["stop"]
    if stop <= start:
        report("E207", f"slice stop must be at least {start + 1}, got {stop}",
               spans.get("stop", call_span),
               help=f"slice(start, stop) keeps channels start .. stop-1, x[:, start:stop]: "
                    f"slice({start}, {stop}) would keep none; use stop={start + 1} or more")
        return None
    return args


def _infer_slice(shape, args, ctx):
    start, stop = args["start"], args["stop"]
    channels = shape[0]
    unit = "features" if len(shape) == 1 else "channels"
    if is_concrete(channels):
        if stop > channels:
            if start < channels:
                help = (f"the input has {unit} 0 .. {channels - 1}: use stop={channels} to "
                        f"keep {start} .. {channels - 1} (x[:, {start}:{channels}])")
            else:
                help = (f"the input has {unit} 0 .. {channels - 1}: start must be below "
                        f"{channels}")
            ctx.error("E207", f"slice stop={stop} is beyond the {channels} input {unit}",
                      help=help)
            return None
    else:
        ctx.positive(channels - stop + 1, f"slice input {unit} - stop + 1")
    return (stop - start,) + tuple(shape[1:])


def _lower_slice(node, in_shapes):
    return "slice", dict(start=node.args["start"], stop=node.args["stop"])


# ---- the kernel, forward and backward


def _check_slice_bounds(x, start, stop):
    channels = x.shape[1]
    if not 0 <= start < stop <= channels:
        raise ValueError(f"slice: needs 0 <= start < stop <= {channels} (the input's "
                         f"channels), got start={start}, stop={stop}")


def channel_slice(x, *, start, stop, out=None):
    """Channels ``start .. stop-1``: ``x[:, start:stop]``, a fresh array unless ``out`` is
    given."""
    _check_slice_bounds(x, start, stop)
    part = x[:, start:stop]  # (N, stop - start, ...), a view
    if out is None:
        return part.copy()
    out[...] = part
    return out


def slice_forward(x, *, start, stop, train=True, rng=None):
    y = channel_slice(x, start=start, stop=stop)
    return y, (tuple(x.shape), start, stop, _grad_dtype(y))


def slice_backward(saved, dy):
    x_shape, start, stop, dtype = saved
    xp = get_array_module(dy)
    y_shape = (x_shape[0], stop - start) + tuple(x_shape[2:])
    dy = as_grad(dy, y_shape, dtype, xp, "slice")
    gx = xp.zeros(x_shape, dtype=dtype)  # (N, C, ...)
    gx[:, start:stop] = dy
    return (gx,), ()


# ---- reference, ONNX, PyTorch


def slice_reference(x, *, start, stop):
    x = np.asarray(x, dtype=np.float64)
    y = np.empty((x.shape[0], stop - start) + x.shape[2:])
    for n in range(x.shape[0]):
        for c in range(stop - start):
            y[n, c] = x[n, start + c]
    return y


def slice_onnx(g, step, xs, ws, out, in_shapes):
    a = step.attrs
    starts = g.const("starts", [int(a["start"])], np.int64)
    ends = g.const("ends", [int(a["stop"])], np.int64)
    axes = g.const("axes", [1], np.int64)
    g.node("Slice", [xs[0], starts, ends, axes], out)


def slice_torch(step, xs, ws, training):
    return xs[0][:, int(step.attrs["start"]):int(step.attrs["stop"])]


# ---- examples


def slice_examples(rng):
    return [
        Example([rng.standard_normal((2, 5, 3, 2))], attrs=dict(start=0, stop=2),
                note="the first channels"),
        Example([rng.standard_normal((2, 5, 3, 2))], attrs=dict(start=2, stop=5),
                note="the last channels"),
        Example([rng.standard_normal((2, 4, 2, 2))], attrs=dict(start=0, stop=4),
                note="every channel"),
        Example([rng.standard_normal((2, 4, 3, 2))], attrs=dict(start=3, stop=4),
                note="one channel"),
        Example([rng.standard_normal((2, 6))], attrs=dict(start=1, stop=4), note="[F]"),
        Example([rng.standard_normal((2, 4, 5))], attrs=dict(start=1, stop=3), note="[C, L]"),
        Example([rng.standard_normal((2, 4, 2, 3, 2))], attrs=dict(start=2, stop=4),
                note="[C, D, H, W]"),
    ]


# ================================================================ channel_shuffle

# ---- the layer


def _infer_shuffle(shape, args, ctx):
    channels = shape[0]
    groups = args["groups"]
    if is_concrete(channels) and channels % groups:
        unit = "features" if len(shape) == 1 else "channels"
        ctx.error("E305", f"channel_shuffle groups={groups} does not divide the {channels} "
                  f"input {unit}", help=divisor_help("groups", channels, groups))
    return shape  # an error above or not, the output shape is known: checking goes on


def _lower_shuffle(node, in_shapes):
    return "channel_shuffle", dict(groups=node.args["groups"])


# ---- the kernel, forward and backward


def channel_shuffle(x, *, groups, out=None):
    """PyTorch's ChannelShuffle: ``(N, C, ...)`` viewed as ``(N, g, C/g, ...)``, the two
    group axes swapped, viewed back; output channel ``i`` is input channel
    ``(i % g) * (C/g) + i // g``. A fresh array unless ``out`` is given."""
    xp = get_array_module(x)
    n, channels = x.shape[:2]
    rest = tuple(x.shape[2:])
    if groups < 1 or channels % groups:
        raise ValueError(f"channel_shuffle: groups={groups} must divide the {channels} "
                         f"channels")
    grouped = x.reshape((n, groups, channels // groups) + rest)  # (N, g, C/g, ...)
    swapped = grouped.swapaxes(1, 2)  # (N, C/g, g, ...), a view
    if out is None:
        out = xp.empty(x.shape, dtype=x.dtype)
    if out.flags.c_contiguous:
        out.reshape(swapped.shape)[...] = swapped  # a view of contiguous ``out``: one pass
    else:
        out[...] = swapped.reshape(x.shape)
    return out


def shuffle_forward(x, *, groups, train=True, rng=None):
    y = channel_shuffle(x, groups=groups)
    return y, (tuple(x.shape), groups, _grad_dtype(y))


def shuffle_backward(saved, dy):
    """The inverse permutation: a shuffle with C/g groups."""
    x_shape, groups, dtype = saved
    xp = get_array_module(dy)
    dy = as_grad(dy, x_shape, dtype, xp, "channel_shuffle")
    return (channel_shuffle(dy, groups=x_shape[1] // groups),), ()


# ---- reference, ONNX, PyTorch


def shuffle_reference(x, *, groups):
    x = np.asarray(x, dtype=np.float64)
    channels = x.shape[1]
    per_group = channels // groups
    y = np.empty_like(x)
    for g in range(groups):
        for k in range(per_group):
            y[:, k * groups + g] = x[:, g * per_group + k]
    return y


def shuffle_onnx(g, step, xs, ws, out, in_shapes):
    # no ChannelShuffle in ONNX: Reshape (N, g, C/g, ...), Transpose, Reshape back, as
    # PyTorch exports it; 0 keeps the batch size
    shape = [int(d) for d in in_shapes[0]]
    groups = int(step.attrs["groups"])
    channels, rest = shape[0], shape[1:]
    split = g.const("split", [0, groups, channels // groups] + rest, np.int64)
    merged = g.const("merged", [0, channels] + rest, np.int64)
    grouped = g.node("Reshape", [xs[0], split], g.temp("grouped"), "grouped")
    perm = [0, 2, 1] + list(range(3, 3 + len(rest)))
    swapped = g.node("Transpose", [grouped], g.temp("swapped"), "swapped", perm=perm)
    g.node("Reshape", [swapped, merged], out)


def shuffle_torch(step, xs, ws, training):
    import torch

    x = xs[0]
    groups = int(step.attrs["groups"])
    if x.dim() > 2:
        return torch.nn.functional.channel_shuffle(x, groups)
    # PyTorch's ChannelShuffle wants a map; on (N, F) its own arithmetic, spelled out
    n, channels = x.shape
    return x.reshape(n, groups, channels // groups).transpose(1, 2).reshape(n, channels)


# ---- examples


def shuffle_examples(rng):
    return [
        Example([rng.standard_normal((2, 6, 2, 3))], attrs=dict(groups=2), note="ShuffleNet's"),
        Example([rng.standard_normal((2, 6, 2, 2))], attrs=dict(groups=3), note="three groups"),
        Example([rng.standard_normal((2, 4, 2, 2))], attrs=dict(groups=1),
                note="one group: the identity"),
        Example([rng.standard_normal((2, 4, 1, 2))], attrs=dict(groups=4),
                note="as many groups as channels: the identity"),
        Example([rng.standard_normal((2, 6))], attrs=dict(groups=2), note="[F]"),
        Example([rng.standard_normal((2, 6, 5))], attrs=dict(groups=3), note="[C, L]"),
        Example([rng.standard_normal((2, 4, 2, 2, 3))], attrs=dict(groups=2),
                note="[C, D, H, W]"),
    ]


# ================================================================ drop_path

# ---- the layer


def _lower_drop_path(node, in_shapes):
    return "drop_path", dict(p=node.args["p"])


# ---- the kernel, forward and backward


def drop_path(x, *, p):
    """Identity at inference (the kept samples are scaled at training time)."""
    if not 0 <= p < 1:
        raise ValueError(f"drop_path: p must be in [0, 1), got {p}")
    return x


def drop_path_forward(x, *, p, train=True, rng=None):
    """Stochastic depth ("row" mode): with ``train``, drop each sample's whole input with
    probability ``p`` and scale the rest by ``1/(1-p)``; one draw per sample from ``rng``,
    kept for the backward pass. Else the identity."""
    y = drop_path(x, p=p)  # checks p
    xp = get_array_module(x)
    if not train or p == 0:
        return y, (None, None, tuple(x.shape), _grad_dtype(y))
    if rng is None:
        raise ValueError(
            f"drop_path: training with p={p} needs rng (a NumPy or CuPy Generator), got None"
        )
    x = floating(x, xp)
    draws = xp.asarray(rng.random(x.shape[0]))  # (N,) float64
    keep = (draws >= p).reshape((x.shape[0],) + (1,) * (x.ndim - 1))  # (N, 1, ...), bool
    return _masked(x, keep, p)


def drop_path_backward(saved, dy):
    return _masked_backward(saved, dy, "drop_path")


# ---- reference, ONNX, PyTorch


def drop_path_reference(x, *, p):
    return np.array(x, dtype=np.float64, copy=True)


def drop_path_onnx(g, step, xs, ws, out, in_shapes):
    g.node("Identity", xs, out)  # inference: drop_path passes its input through


def drop_path_torch(step, xs, ws, training):
    """The identity, in training too: the oracle stays deterministic (torchvision's
    ``stochastic_depth`` draws its own mask)."""
    return xs[0]


# ---- examples


def drop_path_examples(rng):
    return [
        Example([rng.standard_normal((3, 3, 2, 2))], attrs=dict(p=0.0), note="p=0: no mask"),
        Example([rng.standard_normal((6, 3, 2, 2))], attrs=dict(p=0.5), torch=False,
                note="training draws one keep per sample from rng; the PyTorch mapping is "
                     "the identity"),
        Example([rng.standard_normal((5, 4))], attrs=dict(p=0.3), torch=False,
                note="[F]; training draws a mask from rng"),
        Example([rng.standard_normal((4, 2, 5))], attrs=dict(p=0.2), torch=False,
                note="[C, L]"),
        Example([rng.standard_normal((4, 2, 2, 2, 3))], attrs=dict(p=0.4), torch=False,
                note="[C, D, H, W]"),
    ]


# ================================================================ the tables

LAYERS = [
    Layer("flatten", [], None, _infer_flatten, _lower_flatten, field="whole",
          doc="to [C*H*W]"),
    Layer(
        "dropout",
        [ArgSpec("p", "prob", 0.5)],
        None,
        same_shape,
        _lower_dropout,
        changes_shape=False,
        doc="inverted dropout; identity at inference",
    ),
    Layer(
        "drop_path",
        [ArgSpec("p", "prob")],
        None,
        same_shape,
        _lower_drop_path,
        changes_shape=False,
        doc="stochastic depth: drops whole samples in training; identity at inference",
    ),
    Layer(
        "slice",
        [ArgSpec("start", "natural"), ArgSpec("stop", "count")],
        None,
        _infer_slice,
        _lower_slice,
        check_args=_check_slice,
        doc="channels start .. stop-1",
    ),
    Layer(
        "channel_shuffle",
        [ArgSpec("groups", "count")],
        None,
        _infer_shuffle,
        _lower_shuffle,
        changes_shape=False,
        doc="interleave the channels of groups",
    ),
    Merge("concat", code="E302", lower=_lower_concat, join_axis=0,
          doc="join along channels (features for vectors)"),
    Merge("add", code="E303", lower=_lower_add, join_axis=None, broadcast=True,
          doc="element-wise sum, broadcasting"),
    Merge("mul", code="E303", lower=_lower_mul, join_axis=None, broadcast=True,
          doc="element-wise product, broadcasting"),
]


# ---- what the training forwards keep (Primitive.keeps)


def _alias_keeps(step, in_shapes, itemsize):
    return [("alias",)]


def _mask_keeps(step, in_shapes, itemsize):
    # p=0 returns the input itself; else a bool mask and the scale as a NumPy scalar
    if step.attrs.get("p", 0.5) == 0:
        return [("alias",)]
    return [("new", "mask", elements(in_shapes[0]), itemsize)]


def _row_mask_keeps(step, in_shapes, itemsize):
    # one keep flag per sample, and the scale
    if step.attrs.get("p", 0.5) == 0:
        return [("alias",)]
    return [("new", "mask", 1, itemsize)]


def _mul_keeps(step, in_shapes, itemsize):
    return [("input", i) for i in range(len(in_shapes))]


PRIMITIVES = [
    Primitive(
        "flatten",
        "(x)",
        kernel=flatten,
        forward=flatten_forward,
        backward=flatten_backward,
        reference=flatten_reference,
        onnx=flatten_onnx,
        torch=flatten_torch,
        examples=flatten_examples,
        alias=True,
        doc="(N, ...) -> (N, prod(...)); a view",
        keeps=_alias_keeps,
    ),
    Primitive(
        "dropout",
        "(x, *, p)",
        kernel=dropout,
        forward=dropout_forward,
        backward=dropout_backward,
        reference=dropout_reference,
        onnx=dropout_onnx,
        torch=dropout_torch,
        examples=dropout_examples,
        alias=True,
        doc="inverted dropout in training; the identity at inference",
        keeps=_mask_keeps,
    ),
    Primitive(
        "concat",
        "(*xs, axis=1)",
        kernel=concat,
        forward=concat_forward,
        backward=concat_backward,
        reference=concat_reference,
        onnx=concat_onnx,
        torch=concat_torch,
        examples=concat_examples,
        doc="join along an axis (channels)",
        keeps=keeps_nothing,
    ),
    Primitive(
        "add",
        "(*xs)",
        kernel=add,
        forward=add_forward,
        backward=add_backward,
        reference=add_reference,
        onnx=add_onnx,
        torch=add_torch,
        examples=add_examples,
        accepts_out=True,
        in_place="any",
        doc="element-wise sum, broadcasting",
        keeps=keeps_nothing,
    ),
    Primitive(
        "mul",
        "(*xs)",
        kernel=mul,
        forward=mul_forward,
        backward=mul_backward,
        reference=mul_reference,
        onnx=mul_onnx,
        torch=mul_torch,
        examples=mul_examples,
        accepts_out=True,
        in_place="any",
        doc="element-wise product, broadcasting",
        keeps=_mul_keeps,
    ),
    Primitive(
        "slice",
        "(x, *, start, stop)",
        kernel=channel_slice,
        forward=slice_forward,
        backward=slice_backward,
        reference=slice_reference,
        onnx=slice_onnx,
        torch=slice_torch,
        examples=slice_examples,
        accepts_out=True,
        doc="x[:, start:stop], a copy",
        keeps=keeps_nothing,
    ),
    Primitive(
        "channel_shuffle",
        "(x, *, groups)",
        kernel=channel_shuffle,
        forward=shuffle_forward,
        backward=shuffle_backward,
        reference=shuffle_reference,
        onnx=shuffle_onnx,
        torch=shuffle_torch,
        examples=shuffle_examples,
        accepts_out=True,
        doc="(N, g, C/g, ...) -> (N, C/g, g, ...): PyTorch's ChannelShuffle",
        keeps=keeps_nothing,
    ),
    Primitive(
        "drop_path",
        "(x, *, p)",
        kernel=drop_path,
        forward=drop_path_forward,
        backward=drop_path_backward,
        reference=drop_path_reference,
        onnx=drop_path_onnx,
        torch=drop_path_torch,
        examples=drop_path_examples,
        alias=True,
        doc="stochastic depth in training; the identity at inference",
        keeps=_row_mask_keeps,
    ),
]


# What other frameworks (PyTorch, Keras, Caffe, ONNX) call this family's layers, lower-cased:
# the "did you mean" of an unknown layer (E203). A value is the cnnc layer, or
# ``(layer, help)`` where the spelling takes more than a name.
_HELP_1 = ("slice", "take each part of the channels with `slice(start, stop)`")
_HELP_2 = ("flatten", "cnnc reshapes with `flatten` only")
FOREIGN_NAMES = {
    "droppath": "drop_path",
    "stochastic_depth": "drop_path",
    "stochasticdepth": "drop_path",
    "channelshuffle": "channel_shuffle",
    "shuffle": "channel_shuffle",
    "split": _HELP_1,
    "view": _HELP_2,
    "reshape": _HELP_2,
    "concatenate": "concat",
    "cat": "concat",
    "sum": "add",
    "eltwise": "add",
    "elementwise_add": "add",
    "multiply": "mul",
    "mult": "mul",
    "prod": "mul",
    "elementwise_mul": "mul",
}
