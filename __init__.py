"""cnnc: a declarative architecture compiler for convolutional networks.

    import cnnc
    net = cnnc.compile("examples/googlenet.cnn")   # raises cnnc.CompileError on errors
    net = cnnc.check("model.cnn")                   # diagnostics in net.diagnostics
    module = cnnc.to_torch(net)                     # a torch.nn.Module (PyTorch needed)
"""

__version__ = "0.1.0"

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
