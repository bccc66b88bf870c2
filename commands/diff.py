"""`cnnc diff`: what changed between two models, layer by layer and in total.

    cnnc diff old.cnn new.cnn [--format text|json] [--size H=224]

Exit status as diff's: 0 the models are the same, 1 they differ, 2 trouble (a file cannot
be read, a model has errors, or the command is misused).
"""

from __future__ import annotations

import sys

from .common import (
    EXIT_USAGE, CommandError, add_size_option, check_data, lets, print_diagnostics, read_source,
)

EXIT_SAME = 0
EXIT_DIFFERENT = 1


def add_parser(sub):
    parser = sub.add_parser(
        "diff", help="compare two models: layers added, removed and changed",
        description="Compare two models: the layers added, removed and changed (matched by "
        "name, then by structure), per-layer and total deltas in parameters, MACs, "
        "activation memory and output shapes, and the first layer whose output shape "
        "differs. Exit 0 when the models are the same, 1 when they differ, 2 on trouble (a "
        "file cannot be read, a model has errors, the command is misused).",
    )
    parser.add_argument("old", metavar="OLD", help="a .cnn file, or - for stdin")
    parser.add_argument("new", metavar="NEW", help="a .cnn file, or - for stdin")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="text: a line per layer and the totals (default); json: an "
                        "object with every layer and total")
    add_size_option(parser, more="applies to both models")
    return parser


def main(args) -> int:
    import json

    from ..compiler.diff import diff, render

    if args.old == "-" and args.new == "-":
        raise CommandError("only one of the two models can come from standard input")
    sizes = dict(args.size)
    old = _load(args.old, sizes, lets(args))
    new = _load(args.new, sizes, lets(args))
    result = diff(old, new)
    if args.format == "json":
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(render(result, _label(args.old), _label(args.new)))
    return EXIT_SAME if result.same else EXIT_DIFFERENT


def _label(path: str) -> str:
    return "<stdin>" if path == "-" else path


def _load(path: str, sizes: dict, consts: dict):
    """A checked network; a model with errors is trouble (exit 2), as for diff."""
    net, text = check_data(read_source(path), path, sizes, consts)
    if not net.ok:
        print_diagnostics(net.diagnostics, text, sys.stderr)
        raise CommandError(f"{_label(path)} has errors; run `cnnc check {path}`", EXIT_USAGE)
    return net
