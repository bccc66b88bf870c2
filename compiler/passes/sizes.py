"""Symbolic sizes: the values of each size symbol that keep every shape valid."""

from __future__ import annotations

from ..graph import Network
from ..symbolic import solve
from .merge import input_notes
from .report import Reporter


def solve_sizes(net: Network, symbols: list[str], conditions: list, reporter: Reporter):
    """Fill ``net.valid_sizes`` (one set per symbol, in order) and ``net.conditions`` (those
    on several symbols, left undecided); E306 for a symbol no value of which is valid."""
    by_symbol: dict = {}
    for cond in conditions:
        syms = cond.symbols()
        if len(syms) == 1:
            by_symbol.setdefault(next(iter(syms)), []).append(cond)
        else:
            net.conditions.append(cond)
    for symbol in symbols:
        conds = by_symbol.get(symbol, [])
        valid = solve(symbol, conds, {})
        net.valid_sizes.append(valid)
        if valid.start is None:
            explain_unsatisfiable(net, symbol, conds, reporter)


def explain_unsatisfiable(net: Network, symbol: str, conds: list, reporter: Reporter):
    """E306 at the first merge whose inputs cannot agree, else at no place."""
    for cond in conds:
        if cond.kind != "eq":
            continue
        node, merge, axis_name = cond.origin
        reporter.report("E306", merge.span, symbol=symbol, op=node.op, axis=axis_name,
                        lhs=cond.lhs, rhs=cond.rhs, notes=input_notes(net, merge, node.inputs))
        return
    reporter.report("E306", None, variant="network", symbol=symbol)
