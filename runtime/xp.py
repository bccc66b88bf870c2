"""Pick the array module (NumPy or CuPy) that owns the given arrays.

Kernels are written once against the NumPy API and call ``get_array_module`` on their
inputs, as Chainer does. CuPy is imported only when a CuPy array is actually passed in,
so the NumPy path never needs it installed.
"""

import numpy


def get_array_module(*arrays):
    for a in arrays:
        if type(a).__module__.startswith("cupy"):
            import cupy

            return cupy
    return numpy


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
