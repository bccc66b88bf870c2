"""cnnc: a declarative architecture compiler for convolutional networks.

    import cnnc
    net = cnnc.compile("examples/googlenet.cnn")   # raises cnnc.CompileError on errors
    net = cnnc.check("model.cnn")                   # diagnostics in net.diagnostics
    module = cnnc.to_torch(net)                     # a torch.nn.Module (PyTorch needed)
"""

import os as _os

__version__ = "0.1.0"

# NumPy's OpenBLAS keeps its threads spinning for about 0.1 s after each product (2^28
# cycles), where cnnc's compiled kernels run next on the same cores: at batch 1 on two cores
# that made MobileNet V2 and EfficientNet-B0 slower on two threads than on one. With this
# (2^12 cycles, read once, when NumPy loads OpenBLAS, so only where cnnc is imported first,
# as its command line does), two threads ran batch 1 in 0.6-0.95x the time
# (docs/performance.md, ninth session). A value already set is kept.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "12")

__all__ = ["check", "compile", "CompileError", "to_torch", "__version__"]


def __getattr__(name):
    # Imported on first use, so that `cnnc --version` and the CLI start fast.
    if name in ("check", "compile", "CompileError"):
        from . import api

        return getattr(api, name)
    if name == "to_torch":  # PyTorch is imported only when this is called
        from .interop.torch import to_torch

        return to_torch
    raise AttributeError(f"module 'cnnc' has no attribute {name!r}")
