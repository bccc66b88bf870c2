"""Ops that only move or combine arrays: flatten, dropout, and the merges concat and add.

========  ==========  =========  ===================  =======================================
layer     arguments   primitive  kernel               memory plan
========  ==========  =========  ===================  =======================================
flatten               flatten    (x)                  an alias of its input
dropout   p=0.5       dropout    (x, *, p)            an alias of its input (inference)
concat    merge       concat     (*xs, axis=1)        inputs written into its channel slices
add       merge       add        (*xs)                takes out=, which may be any input
========  ==========  =========  ===================  =======================================

None of them keeps more than shapes for the backward pass, except dropout in training, which
keeps its mask. There are no GPU kernels here: the generic ones are CuPy's own array
operations (a reshape, ``concatenate``, ``add``) when handed CuPy arrays.
"""

from __future__ import annotations


from .base import ArgSpec, Example, Layer, Merge, Primitive, same_shape
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
    scale = x.dtype.type(1 / (1 - p))
    y = x * keep
    y *= scale
    return y, (keep, scale, tuple(x.shape), x.dtype)


def dropout_backward(saved, dy):
    keep, scale, x_shape, dtype = saved
    xp = get_array_module(dy) if keep is None else get_array_module(keep)
    dy = as_grad(dy, x_shape, dtype, xp, "dropout")
    if keep is None:
        return (dy.copy(),), ()
    gx = dy * keep
    gx *= scale
    return (gx,), ()


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


# ================================================================ add

# ---- the merge


def _lower_add(node, in_shapes):
    return "add", {}


# ---- the kernel, forward and backward


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
    if out is not None:
        # ``out`` may be any input (the memory plan's in_place="any"): read that one first,
        # before the first sum overwrites it
        for i in range(2, len(xs)):
            if xp.may_share_memory(xs[i], out):
                xs = (xs[i],) + xs[:i] + xs[i + 1:]
                break
    out = xp.add(xs[0], xs[1], out=out)
    for x in xs[2:]:
        out += x
    return out


def add_forward(*xs, train=True, rng=None):
    y = add(*xs)
    return y, (len(xs), tuple(y.shape), _grad_dtype(y))


def add_backward(saved, dy):
    count, y_shape, dtype = saved
    xp = get_array_module(dy)
    dy = as_grad(dy, y_shape, dtype, xp, "add")
    return tuple(dy.copy() for _ in range(count)), ()


# ---- reference, ONNX, PyTorch


def add_reference(*xs):
    y = np.zeros(np.shape(xs[0]))
    for x in xs:
        y = y + np.asarray(x, dtype=np.float64)
    return y


def add_onnx(g, step, xs, ws, out, in_shapes):
    if len(xs) == 1:
        g.node("Identity", xs, out)
    elif len(xs) == 2:
        g.node("Add", xs, out)
    else:
        g.node("Sum", xs, out)


def add_torch(step, xs, ws, training):
    return sum(xs[1:], xs[0])


# ---- examples


def add_examples(rng):
    return [
        Example([rng.standard_normal((2, 3, 2, 2)) for _ in range(2)], note="two maps"),
        Example([rng.standard_normal((2, 3, 2, 2)) for _ in range(3)], note="three maps"),
        Example([rng.standard_normal((2, 4)) for _ in range(2)], note="two vectors"),
    ]


# ================================================================ the tables

LAYERS = [
    Layer("flatten", [], None, _infer_flatten, _lower_flatten, doc="to [C*H*W]"),
    Layer(
        "dropout",
        [ArgSpec("p", "prob", 0.5)],
        None,
        same_shape,
        _lower_dropout,
        changes_shape=False,
        doc="inverted dropout; identity at inference",
    ),
    Merge("concat", code="E302", lower=_lower_concat, join_axis=0,
          doc="join along channels (features for vectors)"),
    Merge("add", code="E303", lower=_lower_add, join_axis=None, doc="element-wise sum"),
]

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
        doc="element-wise sum of arrays of one shape",
    ),
]
