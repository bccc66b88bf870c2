"""What every kernel shares: the array module of its inputs (NumPy or CuPy), the dtype it
computes in, and the checks of the training kernels.

Kernels are written once against the NumPy API and call ``get_array_module`` on their
inputs, as Chainer does. CuPy is imported only when a CuPy array is actually passed in,
so the NumPy path never needs it installed.
"""

import importlib
import math
import sys


class LazyModule:
    """A module imported on first use of one of its attributes: ``np.zeros`` imports NumPy
    then, not when the op families are imported. Checking a model (``cnnc check``, the
    layers' shape rules) never touches an array, so it never pays NumPy's import; kernels
    pay one attribute lookup, and each attribute is looked up once."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attribute):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        value = getattr(importlib.import_module(self._name), attribute)
        setattr(self, attribute, value)
        return value

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


# NumPy for every module of ops/: ``from .xp import np`` (or ``numpy``).
np = numpy = LazyModule("numpy")


def get_array_module(*arrays):
    for a in arrays:
        if type(a).__module__.startswith("cupy"):
            import cupy

            return cupy
    # (sys.modules first: import_module's lookup cost 0.5 ms a training step of the digits
    # example, 60 calls)
    return sys.modules.get("numpy") or importlib.import_module("numpy")


def float_dtype(xp, *arrays):
    """The dtype an op computes in: the inputs' common float type, float64 for integers."""
    dtype = xp.result_type(*[a.dtype for a in arrays])
    if dtype.kind != "f":
        return xp.dtype(xp.float64)
    return dtype


def floating(x, xp):
    """``x`` itself when it is a float array, else a float64 copy."""
    x = xp.asarray(x)
    if x.dtype.kind == "f":
        return x
    return x.astype(xp.float64)


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
