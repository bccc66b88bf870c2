"""The CUDA text of the CuPy backend compiles, without a GPU and without CuPy.

CuPy compiles ``cuda_kernels.source()`` with NVRTC when a kernel is first used; a syntax or
type error would only show up then, on a GPU machine. Here ``nvcc`` compiles the same text,
every kernel instantiated for float and double, to a cubin for the H100 (sm_90), with every
warning an error: one compiler run, a few seconds. NVRTC has no standard headers while
``nvcc`` quietly includes the CUDA runtime's, so the text is also checked for what only
those headers would provide.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from cnnc.ops import cuda_kernels

SOURCE = cuda_kernels.source()


def test_kernels_are_parsed_with_known_parameter_types():
    signatures = cuda_kernels.signatures()
    assert len(signatures) == len(re.findall(r"__global__", SOURCE))
    for name, params in signatures.items():
        assert name.startswith("cnnc_")
        assert params, name
        for ctype, pname in params:
            assert ctype in cuda_kernels.PARAM_TYPES, (name, ctype)
            assert pname.isidentifier()
    assert len(cuda_kernels.instantiations()) == 2 * len(signatures)
    assert "cnnc_im2col<float>" in cuda_kernels.instantiations()
    assert cuda_kernels.instantiation("cnnc_col2im", "float64") == "cnnc_col2im<double>"


def test_source_uses_nothing_nvrtc_lacks():
    """No headers, no standard library, nothing that only the CUDA runtime headers define."""
    code = re.sub(r"//[^\n]*", "", SOURCE)  # comments may say anything
    for banned in ["#include", "std::", "size_t", "INFINITY", "NAN", "printf", "assert(",
                   "uint32_t", "int64_t", "nullptr_t", "CUDART_"]:
        assert banned not in code, banned


def test_kernels_are_independent_per_thread():
    """What lets the tests run the kernels one thread after another on a CPU, and makes
    every result deterministic: no shared memory, no atomics, no barriers, and every kernel
    walks its items with the grid-stride loop."""
    code = re.sub(r"//[^\n]*", "", SOURCE)
    for banned in ["__shared__", "atomic", "__syncthreads", "__syncwarp", "__shfl"]:
        assert banned not in code, banned
    bodies = re.split(r"template <typename T>\s*__global__", code)[1:]
    assert len(bodies) == len(cuda_kernels.signatures())
    for body in bodies:
        assert "CNNC_LOOP(i, n)" in body, body[:80]


def test_activation_codes_are_defined_in_the_source():
    for name, code in cuda_kernels.ACTIVATION_CODES.items():
        canonical = "swish" if name == "silu" else name
        assert f"#define CNNC_ACT_{canonical.upper()} {code}\n" in SOURCE


def test_nvcc_compiles_every_kernel_for_float_and_double(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("no nvcc on PATH")
    unit = tmp_path / "cnnc_kernels.cu"
    unit.write_text(SOURCE + cuda_kernels.explicit_instantiations())
    cubin = tmp_path / "cnnc_kernels.cubin"
    # C++11: the oldest dialect NVRTC may be asked for; ptxas runs too (--cubin)
    cmd = [nvcc, "-std=c++11", "-arch=sm_90", "--cubin", "-Werror", "all-warnings",
           "-o", str(cubin), str(unit)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr.strip() == ""
    symbols = set(re.findall(rb"_Z\d+(cnnc_\w+?)I([fd])E", cubin.read_bytes()))
    expected = {(name.encode(), t) for name in cuda_kernels.signatures() for t in (b"f", b"d")}
    assert expected <= symbols, sorted(expected - symbols)


def test_selu_constants_are_the_activation_family_s():
    from cnnc.ops.activation import SELU_ALPHA, SELU_SCALE

    assert float(cuda_kernels.SELU_DEFINES["CNNC_SELU_ALPHA"]) == SELU_ALPHA
    assert float(cuda_kernels.SELU_DEFINES["CNNC_SELU_SCALE"]) == SELU_SCALE
