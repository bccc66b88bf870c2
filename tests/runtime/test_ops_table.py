"""Every backend table and the reference cover exactly the closed set of ops."""

from cnnc.runtime.numpy_backend import KERNELS
from cnnc.runtime.ops import Op
from cnnc.runtime.reference import REFERENCE


def test_numpy_backend_covers_every_op():
    assert set(KERNELS) == set(Op)
    assert all(callable(kernel) for kernel in KERNELS.values())


def test_reference_covers_every_op():
    assert set(REFERENCE) == set(Op)


def test_fast_kernels_are_not_the_reference():
    for op in Op:
        assert KERNELS[op] is not REFERENCE[op], op
