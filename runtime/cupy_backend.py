"""The CuPy (GPU) backend: the registry's CUDA kernels where an op has them, its generic
NumPy-API kernels (which run on CuPy arrays unchanged) everywhere else.

An op's GPU kernels (``Primitive.gpu_kernel``, ``gpu_forward``, ``gpu_backward``, written
in its family module over ``ops/gpu.py``) handle float32 and float64; for any other dtype
(float16, integers) the wrappers here hand the call to the generic kernel, once for every
op rather than in each kernel.

CuPy is imported inside functions, never at module level, so this module imports on a
machine without CuPy or a GPU.
"""

from __future__ import annotations

from ..ops import PRIMITIVES, Op, gpu, ops_where
from .backend import Backend

ACCEPTS_OUT = ops_where("accepts_out")
ACCEPTS_SCALE = ops_where("accepts_scale")
SKIPS_INPUT_GRAD = ops_where("skips_input_grad")


def _has_cuda_dtype(args) -> bool:
    """Whether the CUDA kernels have an instantiation for the dtype the first input computes
    in (float32 or float64; not float16, and integers compute in float64 only where the
    generic kernel says so)."""
    x = args[0] if args else None
    return x is not None and gpu.is_cuda_float(x.dtype)


def _kernel(p):
    if p.gpu_kernel is None:
        return p.kernel

    def kernel(*args, **attrs):
        if _has_cuda_dtype(args):
            return p.gpu_kernel(*args, **attrs)
        return p.kernel(*args, **attrs)

    kernel.__name__ = f"{p.name}_gpu"
    return kernel


def _grads(p):
    if p.gpu_forward is None:
        return p.forward, p.backward

    def forward(*args, **attrs):
        if _has_cuda_dtype(args):
            y, saved = p.gpu_forward(*args, **attrs)
            return y, (True, saved)
        y, saved = p.forward(*args, **attrs)
        return y, (False, saved)

    def backward(saved, dy, **options):
        on_gpu, saved = saved
        return (p.gpu_backward if on_gpu else p.backward)(saved, dy, **options)

    forward.__name__ = f"{p.name}_forward_gpu"
    backward.__name__ = f"{p.name}_backward_gpu"
    return forward, backward


KERNELS = {Op(name): _kernel(p) for name, p in PRIMITIVES.items()}
GRADS = {Op(name): _grads(p) for name, p in PRIMITIVES.items()}


def make_backend() -> Backend:
    try:
        import cupy
    except ImportError as err:
        raise RuntimeError("backend 'cupy' needs CuPy: pip install 'cnnc[gpu]'") from err
    return Backend("cupy", cupy, KERNELS, GRADS, ACCEPTS_OUT, ACCEPTS_SCALE, on_device=True,
                   skips_input_grad=SKIPS_INPUT_GRAD)
