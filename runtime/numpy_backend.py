"""The NumPy backend: an explicit table from every primitive ``Op`` to its kernel.

The kernels are written against the NumPy API and pick their array module from their
inputs, so a CuPy backend can reuse most of this table and replace only what differs.
"""

from .kernels.activation import activation, maxout, softmax
from .kernels.conv import conv2d
from .kernels.linear import dense
from .kernels.norm import batchnorm, lrn
from .kernels.pool import avgpool2d, global_avgpool, global_maxpool, maxpool2d
from .kernels.tensor import add, concat, dropout, flatten
from .ops import Op

# Ops whose kernel takes ``out=`` (an array to write into, as the memory plan assigns);
# the executor copies the result into place for the others.
ACCEPTS_OUT = frozenset({
    Op.CONV2D, Op.DENSE, Op.MAXPOOL2D, Op.AVGPOOL2D, Op.ACTIVATION, Op.ADD, Op.BATCHNORM,
})

# Ops whose kernel takes ``scale=`` (per output channel, before the bias): a batchnorm folded
# into them needs no scaled copy of the weights.
ACCEPTS_SCALE = frozenset({Op.CONV2D, Op.DENSE})

KERNELS = {
    Op.CONV2D: conv2d,
    Op.MAXPOOL2D: maxpool2d,
    Op.AVGPOOL2D: avgpool2d,
    Op.GLOBAL_AVGPOOL: global_avgpool,
    Op.GLOBAL_MAXPOOL: global_maxpool,
    Op.LRN: lrn,
    Op.BATCHNORM: batchnorm,
    Op.ACTIVATION: activation,
    Op.SOFTMAX: softmax,
    Op.MAXOUT: maxout,
    Op.DENSE: dense,
    Op.FLATTEN: flatten,
    Op.CONCAT: concat,
    Op.ADD: add,
    Op.DROPOUT: dropout,
}
