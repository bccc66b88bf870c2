"""CuPy device plumbing shared by every op family's GPU kernels.

The CUDA text lives in ``ops/cuda_kernels.py``. All array work of a GPU kernel goes through
``cupy()`` and every launch through ``launch()`` (which asks ``kernel()`` for the compiled
function); the CPU tests replace ``cupy`` and ``kernel`` here with NumPy and a C++ build of
the same CUDA text, so call them as ``gpu.cupy()`` and ``gpu.launch(...)``, never bind them
at import.

GPU kernels take float32 or float64 arrays only: the CuPy backend (``runtime/cupy_backend``)
hands every other dtype to the op's generic NumPy-API kernel before they are called.

CuPy is imported inside functions, never at module level, so this module imports on a
machine without CuPy or a GPU.
"""

from __future__ import annotations

import functools


from . import cuda_kernels
from .xp import as_grad, numpy

# Bytes of workspace (column matrix and GEMM result) one convolution chunk may use.
WORKSPACE_BYTES = 256 << 20
# Threads per block, and the most blocks one launch asks for: the kernels' grid-stride
# loops cover any size with any grid.
BLOCK = 256
MAX_BLOCKS = 1 << 16



# ---------------------------------------------------------------- device plumbing


def cupy():
    """The array module every array here lives in."""
    import cupy

    return cupy


@functools.lru_cache(maxsize=None)
def _module(device_id):
    """Every kernel instantiation in one module, compiled by NVRTC on first use (CuPy keeps
    the binary in its kernel cache) and loaded on device ``device_id``."""
    import cupy

    return cupy.RawModule(code=cuda_kernels.source(),
                          name_expressions=cuda_kernels.instantiations())


@functools.lru_cache(maxsize=None)
def _device_kernel(device_id, name, dtype_name):
    return _module(device_id).get_function(cuda_kernels.instantiation(name, dtype_name))


def kernel(name, dtype_name):
    """The compiled kernel ``name`` for one element type, on the current device."""
    import cupy

    return _device_kernel(cupy.cuda.runtime.getDevice(), name, dtype_name)


def launch_geometry(n, block=None, max_blocks=None):
    """``(grid, block)`` for ``n`` work items: one thread per item, in blocks of ``block``
    threads (``BLOCK``), at most ``max_blocks`` blocks (``MAX_BLOCKS``)."""
    block = BLOCK if block is None else block
    max_blocks = MAX_BLOCKS if max_blocks is None else max_blocks
    if n < 1:
        raise ValueError(f"a launch needs at least one work item, got {n}")
    return min(-(-n // block), max_blocks), block


def pack_args(name, dtype, args):
    """Convert ``args`` to the exact types of kernel ``name``'s parameters.

    CuPy passes a Python int as a 64-bit integer and a float as a double whatever the
    kernel declares; a mismatch reads garbage on the device. So every scalar is converted
    here to its declared width, and every array is checked for dtype and C order.
    """
    params = cuda_kernels.signatures()[name]
    if len(args) != len(params):
        raise TypeError(f"{name} takes {len(params)} arguments, got {len(args)}")
    scalar = {"T": dtype.type, "int": numpy.int32, "long long": numpy.int64}
    out = []
    for (ctype, pname), value in zip(params, args):
        if ctype in scalar:
            if ctype == "int" and not -(1 << 31) <= int(value) < (1 << 31):
                raise OverflowError(f"{name}: {pname}={value} does not fit an int32")
            out.append(scalar[ctype](value))
            continue
        want = numpy.dtype(numpy.int32) if "int" in ctype else dtype
        if value.dtype != want or not value.flags.c_contiguous:
            raise TypeError(f"{name}: {pname} must be a C-contiguous {want} array, got "
                            f"{value.dtype} with shape {tuple(value.shape)}")
        out.append(value)
    return tuple(out)


def launch(name, dtype, n, *args):
    """Run kernel ``name`` over ``n`` work items (nothing when ``n`` is 0)."""
    if n == 0:
        return
    grid, block = launch_geometry(n)
    compiled = kernel(name, dtype.name)
    compiled((grid,), (block,), pack_args(name, dtype, args))


def compute_dtype(*dtypes):
    """The float type an op computes in (NumPy's rule: integers compute in float64), or
    None when the CUDA kernels have no instantiation for it (float16)."""
    dtype = numpy.result_type(*dtypes)
    if dtype.kind != "f":
        dtype = numpy.dtype(numpy.float64)
    return dtype if is_cuda_float(dtype) else None


def contiguous(a, dtype, xp):
    """``a`` on the device as a C-contiguous array of ``dtype``; no copy when it is one."""
    return xp.ascontiguousarray(xp.asarray(a, dtype=dtype))


def grad_input(dy, shape, dtype, xp, where):
    """``dy`` as a C-contiguous ``dtype`` array of the forward output's ``shape``."""
    return contiguous(as_grad(dy, shape, dtype, xp, where), dtype, xp)


def target(out, shape, dtype, xp, where):
    """The array a kernel writes its ``shape``/``dtype`` result into: ``out`` itself when
    it is C-contiguous, else a fresh array that ``deliver`` copies into ``out`` (a channel
    slice of a concat buffer, say). ``out`` must have the result's shape and dtype."""
    if out is None:
        return xp.empty(shape, dtype=dtype)
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype:
        raise ValueError(f"{where}: out must be {list(shape)} {dtype}, got "
                         f"{list(out.shape)} {out.dtype}")
    if out.flags.c_contiguous:
        return out
    return xp.empty(shape, dtype=dtype)


def deliver(y, out):
    """``y``, copied into ``out`` first when the kernel could not write there directly."""
    if out is None or y is out:
        return y
    out[...] = y
    return out


def dummy(dtype, xp):
    """A one-element array for a pointer parameter the kernel will not read (a bias when
    there is none, slopes when the activation is not prelu, argmax when not kept)."""
    return xp.empty(1, dtype=dtype)


def channels_inner(shape):
    """``(channels, inner)`` of an array seen as (outer, channels, inner) along axis 1."""
    channels = shape[1] if len(shape) > 1 else 1
    inner = 1
    for d in shape[2:]:
        inner *= d
    return channels, inner


def batch_chunk(n, per_sample_bytes, budget=None):
    """How many samples one chunk takes so that its workspace stays within ``budget``
    bytes (``WORKSPACE_BYTES``); at least one, however large a sample."""
    budget = WORKSPACE_BYTES if budget is None else budget
    return max(1, min(n, budget // max(1, per_sample_bytes)))


def is_cuda_float(dtype) -> bool:
    """Whether the CUDA kernels have an instantiation for ``dtype`` (float32, float64)."""
    return dtype.kind == "f" and dtype.itemsize in (4, 8)
