"""Syntax tree to checked network: the checker's passes, in order (see `passes/`).

    consts  constants set from outside (--let), read and matched to the file's `let`s
    expand  name resolution, block expansion, naming, argument binding and typing
    infer   shape inference per node, through the layers' hooks and the merge rule
    lints   unused names, a network without input or output, unknown `--size` symbols
    sizes   symbolic solving: the valid values of each size symbol

Every problem becomes a `Diagnostic`: nothing is raised, and checking goes on wherever the
shape is still known.
"""

from __future__ import annotations

from ..dsl import syntax as ast
from ..dsl.diagnostics import source_lines
from .graph import Network
from .passes.consts import check_consts_used, read_consts
from .passes.expand import Expander
from .passes.infer import infer_shapes
from .passes.lints import check_complete, lint_unused
from .passes.names import MAX_BLOCK_DEPTH, MAX_LAYERS
from .passes.report import Reporter
from .passes.sizes import solve_sizes

__all__ = ["MAX_BLOCK_DEPTH", "MAX_LAYERS", "elaborate"]


def elaborate(module: ast.Module, file: str, source: str, sizes: dict | None = None,
              consts: dict | None = None) -> Network:
    """The checked network of a parsed module, its diagnostics in the order found;
    ``consts`` replace top-level ``let`` values (`passes/consts.py`)."""
    sizes = dict(sizes or {})
    stem = file.replace("\\", "/").rsplit("/", 1)[-1]
    stem = stem[:-4] if stem.endswith(".cnn") else stem
    net = Network(name=stem if stem.isidentifier() else "network", file=file)
    reporter = Reporter(file)
    values = read_consts(consts, reporter)
    check_consts_used(module, consts or {}, reporter)
    walk = Expander(module, net, reporter, source_lines(source), sizes, values)
    if walk.run():
        conditions = infer_shapes(net, walk.jobs, reporter)
        lint_unused(walk.names, reporter, walk.expansion_cut)
        check_complete(module, net.inputs, sizes, reporter)
        net.symbols = list(walk.symbols)
        solve_sizes(net, walk.symbols, conditions, reporter)
    net.diagnostics = reporter.diagnostics
    return net
