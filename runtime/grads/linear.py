"""Fully connected layer, training: ``y = x @ W.T + b``; keeps ``x``.

    gx = dy @ W      # (N, O) @ (O, F)
    gW = dy.T @ x    # (O, N) @ (N, F)
    gb = sum(dy, axis=0)
"""

from ..kernels.linear import dense as dense_inference
from ..xp import float_dtype, get_array_module
from ._util import as_grad, no_act, prod


def dense_forward(x, w, b=None, *, act=None, train=True, rng=None):
    no_act(act, "dense")
    xp = get_array_module(x, w)
    dtype = float_dtype(xp, x, w)
    x = xp.asarray(x, dtype=dtype)
    w = xp.asarray(w, dtype=dtype)
    y = dense_inference(x, w, b)
    return y, (x, w, b is not None)


def dense_backward(saved, dy):
    x, w, has_bias = saved
    xp = get_array_module(x, w)
    dy = as_grad(dy, (x.shape[0], w.shape[0]), x.dtype, xp, "dense")
    gx = xp.matmul(dy, w)  # (N, F)
    gW = xp.matmul(dy.T, x)  # (O, F)
    if not has_bias:
        return (gx,), (gW,)
    return (gx,), (gW, dy.sum(axis=0))


def dense_saved(step, input_shapes):
    return prod(input_shapes[0])  # x
