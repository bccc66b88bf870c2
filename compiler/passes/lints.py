"""Checks of the whole network once it is built: names bound but never used (W402-W404),
a network without input (E216) or output (E217), a `--size` naming no symbol (E219)."""

from __future__ import annotations

from ...dsl import syntax as ast
from .names import Names
from .report import Reporter


def lint_unused(names: Names, reporter: Reporter, expansion_cut: bool):
    """W403 for blocks never called, W402 for bindings never read, W404 for inputs.
    ``expansion_cut``: some block call was not expanded, so uncalled blocks are not told."""
    for name, block in names.blocks.items():
        if name not in names.called:
            if expansion_cut:
                continue  # it may be called from a block that was not expanded
            reporter.report("W403", block.name_span, name=name,
                            help="call it in a chain, or delete it")
            continue
        for item in block.body:
            if isinstance(item, ast.Binding) and item.name_span not in names.used:
                reporter.report("W402", item.name_span, variant="in_block", name=item.name,
                                block=name)
    for name, tensor in names.tensors.items():
        if tensor.span in names.used or tensor.kind == "output":
            continue
        if tensor.kind == "input":
            reporter.report("W404", tensor.span, name=name)
        else:
            reporter.report("W402", tensor.span, name=name,
                            help="use it in an output, or make it one: `output NAME = ...`")


def check_complete(module: ast.Module, inputs: list, sizes: dict, reporter: Reporter):
    """E216 without an input, E217 without an output, E219 for a size that names nothing."""
    if not inputs:
        reporter.report("E216", None, help="declare one: `input image: [3, 224, 224]`")
    if not any(isinstance(s, ast.OutputStmt) for s in module.statements):
        reporter.report("E217", None, help="mark a result: `output logits = x -> dense(10)`")
    declared = set()
    for stmt in module.statements:
        if isinstance(stmt, ast.InputStmt):
            declared |= {d.value for d in stmt.dims if isinstance(d.value, str)}
    for name in sizes:
        if name not in declared:
            known = ", ".join(f"`{s}`" for s in sorted(declared))
            reporter.report("E219", None, name=name,
                            notes=[f"the inputs' symbols are {known}" if known else
                                   "the inputs have no size symbols"])
