"""The public Python API: check or compile a `.cnn` model from a path or from source text."""

from __future__ import annotations

import os

from .compiler import display  # noqa: F401 - fills in Network's notebook display
from .compiler.check import MAX_SOURCE_BYTES, check_bytes
from .compiler.graph import Network


class CompileError(Exception):
    """A model has errors. `network` is the checked network, `diagnostics` every problem
    found; str() renders the errors against the source."""

    def __init__(self, network: Network):
        self.network = network
        self.diagnostics = list(network.diagnostics)
        self.source = network.source
        errors = network.errors
        text = network.render(errors)
        super().__init__(f"{len(errors)} error{'s' * (len(errors) != 1)}\n{text}")


def _load(source) -> tuple[bytes, str]:
    if isinstance(source, bytes):
        return source, "<bytes>"
    if isinstance(source, os.PathLike) or (
        isinstance(source, str) and "\n" not in source and source.endswith(".cnn")
    ):
        path = os.fspath(source)
        with open(path, "rb") as f:  # the checker refuses a file past the limit (E107)
            return f.read(MAX_SOURCE_BYTES + 1), path
    if isinstance(source, str):
        return source.encode("utf-8"), "<string>"
    raise TypeError(f"expected a path or source text, got {type(source).__name__}")


def check(source, sizes: dict | None = None, consts: dict | None = None) -> Network:
    """Check a model (a path ending in .cnn, a PathLike, or source text). Never raises for
    problems in the model: they are in `Network.diagnostics`, and `Network.render()` draws
    them against the source the network carries.

    ``sizes`` give size symbols values (``{"H": 224}``); ``consts`` replace the values of
    top-level ``let`` constants (``{"width": 32}``, or text read as a `.cnn` value)."""
    data, name = _load(source)
    net, _ = check_bytes(data, name, sizes, consts)
    return net


class Compiled:
    """A checked network, ready to lower and build. Attributes of the `Network` (nodes,
    graph, diagnostics, ...) are reachable directly."""

    def __init__(self, network: Network):
        self.network = network
        self._plan = None

    def __getattr__(self, name):
        return getattr(self.network, name)

    @property
    def plan(self):
        if self._plan is None:
            from .compiler.plan import lower

            self._plan = lower(self.network)
        return self._plan

    def build(self, backend: str = "auto", seed: int = 0, dtype="float32", threads=None):
        """A runnable model with freshly initialised parameters (PyTorch's defaults).
        ``threads``: how many threads the CPU kernels run, an int >= 1, "auto", or None
        (the environment's CNNC_NUM_THREADS, else automatic)."""
        from .runtime.model import Model

        return Model(self.plan, backend=backend, seed=seed, dtype=dtype, threads=threads)


def compile(source, sizes: dict | None = None,  # noqa: A001 - the public name
            consts: dict | None = None) -> Compiled:
    """Check a model (see `check` for ``sizes`` and ``consts``); raise `CompileError` if it
    has errors."""
    data, name = _load(source)
    net, _ = check_bytes(data, name, sizes, consts)
    if not net.ok:
        raise CompileError(net)
    return Compiled(net)
