"""Fixtures for the CuPy backend tests: one ``device`` fixture, two ways to run.

- ``cupy``: the real thing, CuPy arrays and NVRTC-compiled kernels on a CUDA device. Marked
  ``gpu``; skipped unless CuPy imports and sees a device.
- ``emulated``: the same backend code with NumPy as its array module and the same CUDA
  text compiled by the host C++ compiler, each launch run one thread after another. The
  kernels use no shared memory, atomics or synchronisation (``ops/cuda_kernels.py``),
  so a serial run computes exactly what the GPU computes, up to floating-point rounding.
  This checks index arithmetic, launch arguments and the host logic on a machine with no
  GPU; skipped when there is no ``g++``. Blocks are kept small here so that every
  grid-stride loop goes round more than once.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
import pytest

from cnnc.ops import cuda_kernels, gpu

_CTYPES = {
    "T": None,  # by element type, below
    "int": ctypes.c_int32,
    "long long": ctypes.c_int64,
}
_ELEMENT_CTYPES = {"float": ctypes.c_float, "double": ctypes.c_double}
_SCALAR_NUMPY = {"int": np.int32, "long long": np.int64}

_HARNESS_HEAD = """
#include <math.h>
struct cnnc_uint3 { unsigned int x, y, z; };
static cnnc_uint3 threadIdx, blockIdx, blockDim, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
"""


def _wrappers() -> str:
    """One ``extern "C"`` function per kernel instantiation that runs a whole launch."""
    out = []
    for name, params in cuda_kernels.signatures().items():
        for ctype in _ELEMENT_CTYPES:
            decl = ", ".join(f"{t.replace('T', ctype) if 'T' in t else t} {p}"
                             for t, p in params)
            call = ", ".join(p for _, p in params)
            out.append(
                f'extern "C" void emu_{name}_{ctype}(unsigned int grid, unsigned int block, '
                f"{decl}) {{\n"
                "    gridDim.x = grid; gridDim.y = gridDim.z = 1;\n"
                "    blockDim.x = block; blockDim.y = blockDim.z = 1;\n"
                "    blockIdx.y = blockIdx.z = threadIdx.y = threadIdx.z = 0;\n"
                "    for (unsigned int b = 0; b < grid; ++b) {\n"
                "        blockIdx.x = b;\n"
                "        for (unsigned int t = 0; t < block; ++t) {\n"
                "            threadIdx.x = t;\n"
                f"            {name}<{ctype}>({call});\n"
                "        }\n"
                "    }\n"
                "}\n"
            )
    return "\n".join(out)


def harness_source() -> str:
    return _HARNESS_HEAD + cuda_kernels.source() + _wrappers()


class EmulatedKernel:
    """Called like a ``cupy.RawKernel``: ``kernel(grid, block, args)``."""

    def __init__(self, lib, name, ctype):
        self.name = name
        self.ctype = ctype
        self.params = cuda_kernels.signatures()[name]
        self.fn = getattr(lib, f"emu_{name}_{ctype}")
        argtypes = [ctypes.c_uint, ctypes.c_uint]
        for t, _ in self.params:
            if "*" in t:
                argtypes.append(ctypes.c_void_p)
            elif t == "T":
                argtypes.append(_ELEMENT_CTYPES[ctype])
            else:
                argtypes.append(_CTYPES[t])
        self.fn.argtypes = argtypes
        self.fn.restype = None

    def __call__(self, grid, block, args):
        assert len(grid) == 1 and len(block) == 1, (grid, block)
        assert len(args) == len(self.params)
        element = np.float32 if self.ctype == "float" else np.float64
        converted = []
        for (t, pname), value in zip(self.params, args):
            where = f"{self.name}<{self.ctype}> {pname}"
            if "*" in t:
                want = np.int32 if "int" in t else element
                assert isinstance(value, np.ndarray), where
                assert value.dtype == want and value.flags.c_contiguous, where
                if "const" not in t:
                    assert value.flags.writeable, where
                converted.append(value.ctypes.data)
            else:
                # exactly the scalar type the kernel declares, as gpu.pack_args makes
                want = element if t == "T" else _SCALAR_NUMPY[t]
                assert type(value) is want, (where, type(value))
                converted.append(value.item())
        self.fn(int(grid[0]), int(block[0]), *converted)


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    """A C++ build of every kernel instantiation; ``emulator(name, dtype_name)``."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("no g++ to build the CUDA kernels for the CPU")
    folder = tmp_path_factory.mktemp("cuda_emulator")
    src = folder / "kernels.cpp"
    lib_path = folder / "libkernels.so"
    src.write_text(harness_source())
    cmd = [compiler, "-std=c++14", "-O1", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror",
           "-Wno-unused-parameter", "-o", str(lib_path), str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lib = ctypes.CDLL(str(lib_path))
    cache = {}

    def kernel(name, dtype_name):
        key = (name, dtype_name)
        if key not in cache:
            cache[key] = EmulatedKernel(lib, name, cuda_kernels.ELEMENT_TYPES[dtype_name])
        return cache[key]

    return kernel


@dataclass
class Device:
    name: str
    put: object  # NumPy array -> device array
    get: object  # device array -> NumPy array
    xp: object


def _cupy_device():
    cupy = pytest.importorskip("cupy")
    try:
        available = cupy.cuda.is_available()
    except Exception:  # a driver that fails to load counts as no device
        available = False
    if not available:
        pytest.skip("CuPy sees no CUDA device")
    return Device("cupy", cupy.asarray, cupy.asnumpy, cupy)


@pytest.fixture(params=[pytest.param("cupy", marks=pytest.mark.gpu), "emulated"])
def device(request, monkeypatch):
    if request.param == "cupy":
        return _cupy_device()
    kernel = request.getfixturevalue("emulator")
    monkeypatch.setattr(gpu, "cupy", lambda: np)
    monkeypatch.setattr(gpu, "kernel", kernel)
    monkeypatch.setattr(gpu, "BLOCK", 32)
    monkeypatch.setattr(gpu, "MAX_BLOCKS", 3)
    return Device("emulated", np.asarray, np.asarray, np)


@pytest.fixture
def rng():
    return np.random.default_rng(20240917)
