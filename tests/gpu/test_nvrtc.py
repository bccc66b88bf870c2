"""NVRTC, the compiler CuPy's ``RawModule`` uses, compiles the CUDA text as CuPy will ask
for it: the source alone (no headers of any kind), every name expression registered, and
each lowered to a kernel symbol. Needs only the NVRTC library (no GPU, no CuPy): found via
``CNNC_NVRTC`` (a path to ``libnvrtc.so``), the ``nvidia-cuda-nvrtc-cu12`` wheel, the
system library path or a CUDA toolkit; skipped when there is none. A GPU machine with CuPy
has one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib.util
import os

import pytest

from cnnc.ops import cuda_kernels


def _candidates():
    env = os.environ.get("CNNC_NVRTC")
    if env:
        yield env
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        yield from sorted(glob.glob(os.path.join(root, "cuda_nvrtc", "lib", "libnvrtc.so*")))
    found = ctypes.util.find_library("nvrtc")
    if found:
        yield found
    for home in (os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            yield from sorted(glob.glob(os.path.join(home, "lib64", "libnvrtc.so*")))


def _load_nvrtc():
    for path in _candidates():
        if "builtins" in os.path.basename(path) or ".alt." in os.path.basename(path):
            continue
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


class _Program:
    """The few NVRTC calls CuPy makes, through ctypes."""

    def __init__(self, lib, source, name):
        self.lib = lib
        self.handle = ctypes.c_void_p()
        self._check(lib.nvrtcCreateProgram(ctypes.byref(self.handle), source.encode(),
                                           name.encode(), 0, None, None), "create")

    def _check(self, status, what):
        if status != 0:
            self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p
            message = self.lib.nvrtcGetErrorString(status).decode()
            raise AssertionError(f"nvrtc {what}: {message}\n{self.log()}")

    def add_name_expression(self, expr):
        self._check(self.lib.nvrtcAddNameExpression(self.handle, expr.encode()), expr)

    def compile(self, options):
        array = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        return self.lib.nvrtcCompileProgram(self.handle, len(options), array)

    def log(self):
        size = ctypes.c_size_t()
        self.lib.nvrtcGetProgramLogSize(self.handle, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        self.lib.nvrtcGetProgramLog(self.handle, buf)
        return buf.value.decode(errors="replace")

    def lowered_name(self, expr):
        name = ctypes.c_char_p()
        self._check(self.lib.nvrtcGetLoweredName(self.handle, expr.encode(),
                                                 ctypes.byref(name)), expr)
        return name.value.decode()

    def ptx(self):
        size = ctypes.c_size_t()
        self._check(self.lib.nvrtcGetPTXSize(self.handle, ctypes.byref(size)), "ptx size")
        buf = ctypes.create_string_buffer(size.value)
        self._check(self.lib.nvrtcGetPTX(self.handle, buf), "ptx")
        return buf.value.decode()

    def close(self):
        self.lib.nvrtcDestroyProgram(ctypes.byref(self.handle))


@pytest.mark.parametrize("options", [
    ["--gpu-architecture=compute_90"],  # what CuPy passes for an H100, NVRTC's default C++
    ["--gpu-architecture=compute_90", "--std=c++11"],
])
def test_nvrtc_compiles_every_name_expression(options):
    lib = _load_nvrtc()
    if lib is None:
        pytest.skip("no NVRTC library (set CNNC_NVRTC or install nvidia-cuda-nvrtc-cu12)")
    program = _Program(lib, cuda_kernels.source(), "cnnc_kernels.cu")
    try:
        names = cuda_kernels.instantiations()
        for expr in names:
            program.add_name_expression(expr)
        status = program.compile(options)
        log = program.log()
        assert status == 0, log
        assert "warning" not in log.lower(), log
        ptx = program.ptx()
        for expr in names:
            lowered = program.lowered_name(expr)
            assert f".entry {lowered}(" in ptx, expr
    finally:
        program.close()
