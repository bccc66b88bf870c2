"""Ops that only move or combine arrays, training: flatten, concat, add, and dropout.

None of them keeps more than shapes, except dropout in training, which keeps its mask.
"""

import numpy

from ..kernels.tensor import add as add_inference
from ..kernels.tensor import concat as concat_inference
from ..kernels.tensor import dropout as dropout_inference
from ..kernels.tensor import flatten as flatten_inference
from ..xp import floating, get_array_module
from ._util import as_grad, prod


def flatten_forward(x, *, train=True, rng=None):
    y = flatten_inference(x)
    return y, (tuple(x.shape), _grad_dtype(y))


def flatten_backward(saved, dy):
    x_shape, dtype = saved
    xp = get_array_module(dy)
    dy = as_grad(dy, (x_shape[0], prod(x_shape[1:])), dtype, xp, "flatten")
    return (dy.reshape(x_shape).copy(),), ()


def flatten_saved(step, input_shapes):
    return 0


def concat_forward(*xs, axis=1, train=True, rng=None):
    y = concat_inference(*xs, axis=axis)
    sizes = tuple(x.shape[axis] for x in xs)
    return y, (sizes, axis, tuple(y.shape), _grad_dtype(y))


def _grad_dtype(y):
    return y.dtype if y.dtype.kind == "f" else numpy.dtype(numpy.float64)


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


def concat_saved(step, input_shapes):
    return 0


def add_forward(*xs, train=True, rng=None):
    y = add_inference(*xs)
    return y, (len(xs), tuple(y.shape), _grad_dtype(y))


def add_backward(saved, dy):
    count, y_shape, dtype = saved
    xp = get_array_module(dy)
    dy = as_grad(dy, y_shape, dtype, xp, "add")
    return tuple(dy.copy() for _ in range(count)), ()


def add_saved(step, input_shapes):
    return 0


def dropout_forward(x, *, p=0.5, train=True, rng=None):
    """Inverted dropout: with ``train``, zero each element with probability ``p`` and scale
    the rest by ``1/(1-p)``; the mask is drawn from ``rng`` and kept. Else the identity."""
    y = dropout_inference(x, p=p)  # checks p
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


def dropout_saved(step, input_shapes):
    if step.attrs.get("p", 0.5) == 0:
        return 0
    return prod(input_shapes[0])  # the mask
