"""Small helpers shared by the training kernels."""

import math

import numpy


def as_grad(dy, shape, dtype, xp, where):
    """``dy`` as an array of the forward output's ``shape`` and ``dtype``, or a ValueError."""
    dy = xp.asarray(dy)
    if tuple(dy.shape) != tuple(shape):
        raise ValueError(
            f"{where} backward: dy must have the forward output's shape {tuple(shape)}, "
            f"got {tuple(dy.shape)}"
        )
    return dy.astype(dtype, copy=False)


def index_dtype(count):
    """The smallest unsigned integer dtype that holds indices ``0 .. count-1``."""
    for dtype in (numpy.uint8, numpy.uint16, numpy.uint32):
        if count <= numpy.iinfo(dtype).max + 1:
            return numpy.dtype(dtype)
    return numpy.dtype(numpy.int64)


def prod(shape):
    return math.prod(int(s) for s in shape)


def no_act(act, where):
    """Training plans keep activations as steps of their own; a fused one has no backward."""
    if act is not None:
        raise ValueError(
            f"{where}: training needs act=None (activations are separate steps in a training "
            f"plan), got act={act!r}"
        )
