"""`cnnc check`: report every error in .cnn files, with its place and values.

    cnnc check model.cnn [more.cnn ...] [--werror] [--format json] [--size H=224] [--shapes]

Every file is checked, even after one that fails; the exit status is the worst seen (2 for a
file that cannot be read, 1 for one with errors, or with warnings under --werror).
"""

from __future__ import annotations

import json
import sys

from .common import (
    EXIT_ERRORS, EXIT_OK, CommandError, add_size_option, check_data, fail, lets, print_diagnostics,
    read_source,
)


def add_parser(sub):
    parser = sub.add_parser(
        "check", help="report every error in .cnn files",
        description="Check .cnn files and report every problem with its place and values. "
        "Exit 0 with no errors, 1 with errors, 2 when a file cannot be read.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="a .cnn file, or - for stdin")
    parser.add_argument("--werror", action="store_true", help="treat warnings as errors")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    add_size_option(parser)
    parser.add_argument("--shapes", action="store_true",
                        help="also print every layer's output shape")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="print diagnostics only, not the line for files that pass")
    return parser


def main(args) -> int:
    from ..compiler.symbolic import shape_text

    sizes = dict(args.size)
    everything = []
    status = EXIT_OK
    errors = warnings = 0
    for path in args.files:
        try:
            net, text = check_data(read_source(path), path, sizes, lets(args))
        except CommandError as err:  # the file cannot be read: say so, go on with the rest
            status = max(status, fail(err))
            continue
        diags = net.diagnostics
        n_err = sum(d.severity == "error" for d in diags)
        n_warn = len(diags) - n_err
        errors += n_err
        warnings += n_warn
        if n_err or (args.werror and n_warn):
            status = max(status, EXIT_ERRORS)
        if args.format == "json":
            everything += [d.to_json() for d in diags]
            continue
        print_diagnostics(diags, text, sys.stdout)
        if not n_err and not (args.werror and n_warn) and not args.quiet:
            print(_ok_line(net, n_warn))
        if args.shapes and not n_err:
            for node in net.nodes.values():
                shape = shape_text(node.shape) if node.shape is not None else "?"
                print(f"  {node.name:<40} {shape}")
    if args.format == "json":
        print(json.dumps(everything, indent=2))
    elif errors or warnings:
        print(f"{_plural(errors, 'error')}, {_plural(warnings, 'warning')} in "
              f"{_plural(len(args.files), 'file')}")
    return status


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _ok_line(net, warnings: int) -> str:
    from ..compiler.symbolic import is_concrete
    from ..dsl.diagnostics import printable

    params = 0
    for node in net.layers:
        params = node.param_count + params
    count = f"{params:,}" if is_concrete(params) else str(params)  # as `cnnc summary` writes it
    line = (f"{net.file}: ok: network {net.name}, {_plural(len(net.layers), 'layer')}, "
            f"{count} parameters")
    if warnings:
        line += f", {_plural(warnings, 'warning')}"
    if net.valid_sizes:
        line += "\n  valid for " + ", ".join(v.describe() for v in net.valid_sizes)
    for cond in net.conditions:
        line += f"\n  valid only when {cond.lhs} = {cond.rhs}"
    return printable(line)  # the file name may hold control characters
