"""The NumPy backend: every primitive's NumPy-API kernel and training pair, from the op
registry (``ops/``). The kernels pick their array module from their inputs, so the CuPy
backend reuses them wherever an op has no CUDA kernel of its own."""

from ..ops import PRIMITIVES, Op, ops_where
from .backend import Backend

KERNELS = {Op(name): p.kernel for name, p in PRIMITIVES.items()}
GRADS = {Op(name): (p.forward, p.backward) for name, p in PRIMITIVES.items()}
# Ops whose kernel takes ``out=`` (an array the memory plan assigns) or ``scale=`` (a
# batchnorm folded into it, per output channel).
ACCEPTS_OUT = ops_where("accepts_out")
ACCEPTS_SCALE = ops_where("accepts_scale")
SKIPS_INPUT_GRAD = ops_where("skips_input_grad")
PER_IMAGE = ops_where("per_image")
ACCEPTS_PREPARED = ops_where("accepts_prepared")


def make_backend() -> Backend:
    import numpy

    return Backend("numpy", numpy, KERNELS, GRADS, ACCEPTS_OUT, ACCEPTS_SCALE,
                   on_device=False, skips_input_grad=SKIPS_INPUT_GRAD,
                   per_image=PER_IMAGE, accepts_prepared=ACCEPTS_PREPARED)
