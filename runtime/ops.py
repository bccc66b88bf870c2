"""The closed vocabulary of primitive ops that the compiler lowers to and the runtime runs.

Every backend is an explicit table ``{Op: kernel}`` (see ``numpy_backend.KERNELS``), and a
test checks that each table covers every member here. Keep the set small: a new layer kind
should lower to these primitives unless it truly needs a kernel of its own.

Calling convention shared by every kernel table: data inputs and parameter arrays are
positional, attributes are keywords.

==============  ==========================================================================
op              kernel signature
==============  ==========================================================================
CONV2D          ``(x, w, b=None, *, stride, pad, dilation, groups, act)``
MAXPOOL2D       ``(x, *, kernel, stride, pad, dilation, ceil)``
AVGPOOL2D       ``(x, *, kernel, stride, pad, ceil, count_pad)``
GLOBAL_AVGPOOL  ``(x)``
GLOBAL_MAXPOOL  ``(x)``
LRN             ``(x, *, size, alpha, beta, k)``
BATCHNORM       ``(x, weight, bias, running_mean, running_var, *, eps, momentum)``
ACTIVATION      ``(x, weight=None, *, name, alpha, beta)``; ``weight`` is prelu's slopes
SOFTMAX         ``(x, *, axis=1)``
MAXOUT          ``(x, *, k)``
DENSE           ``(x, w, b=None, *, act)``
FLATTEN         ``(x)``
CONCAT          ``(*xs, axis=1)``
ADD             ``(*xs)``
DROPOUT         ``(x, *, p)``; identity at inference
==============  ==========================================================================
"""

# The enum itself is defined by the compiler, which lowers to it (the compiler never imports
# the runtime); the runtime's kernel tables are keyed by the same members.
from ..compiler.plan import Op

__all__ = ["Op"]
