"""A backend: the array module, the kernel and gradient tables, and what the kernels can do.

Every table comes from the op registry (``ops/__init__.py``); a model asks its backend,
never its name. ``runtime/model.select_backend`` makes one by name (``"auto"`` picks CuPy
when a CUDA device is usable).
"""

from __future__ import annotations

from dataclasses import dataclass



@dataclass(frozen=True)
class Backend:
    name: str  # "numpy" or "cupy"
    xp: object  # the array module
    kernels: dict  # Op -> inference kernel
    grads: dict  # Op -> (forward, backward)
    accepts_out: frozenset  # ops whose kernel writes into ``out=``
    accepts_scale: frozenset  # ops whose kernel takes a folded batchnorm's ``scale=``
    on_device: bool  # arrays live on a GPU: NumPy inputs are copied there
    # ops whose backward takes ``input_grad=False`` (weights' gradients alone)
    skips_input_grad: frozenset = frozenset()
    # ops whose training pair a step may run on shares of the batch, one thread each
    # (``Primitive.per_image``; the CPU backend: a GPU runs one op at a time)
    per_image: frozenset = frozenset()
    # ops whose inference kernel keeps what it derives from the weights in ``prepared=``
    # (``Primitive.accepts_prepared``; the NumPy kernels)
    accepts_prepared: frozenset = frozenset()

    def __str__(self) -> str:
        return self.name

    def asarray(self, value, dtype):
        """``value`` as an array of this backend (copied to or from the device as needed)."""
        if not self.on_device and type(value).__module__.startswith("cupy"):
            value = value.get()
        return self.xp.asarray(value, dtype=dtype)

    def to_host(self, value):
        """A NumPy view or copy of an array of this backend."""
        return value.get() if self.on_device else value


def gpu_usable() -> bool:
    try:
        import cupy

        return bool(cupy.cuda.is_available())
    except Exception:  # no CuPy, or no usable CUDA driver: the CPU it is
        return False
