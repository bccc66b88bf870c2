"""`cnnc summary`: one row per layer (name, layer, output shape, parameters, MACs) and the
totals of one model.

    cnnc summary model.cnn [--format text|json|csv] [--rf] [--size H=224] [--train]

On a terminal the text table is drawn by ``rich``; anywhere else (a pipe, a file, a test) it
is the plain fixed-width table, stable for scripts.
"""

from __future__ import annotations

import json
import sys

from .common import (
    EXIT_ERRORS, EXIT_OK, add_size_option, check_data, lets, print_diagnostics, read_source,
    require_concrete_sizes,
)


def add_parser(sub):
    parser = sub.add_parser(
        "summary", help="print each layer's shape, parameters and MACs",
        description="Print one row per layer (name, layer, output shape, parameters, MACs) and "
        "totals: parameters, MACs and activation memory for one sample in float32.",
    )
    parser.add_argument("file", metavar="FILE", help="a .cnn file, or - for stdin")
    parser.add_argument("--format", choices=("text", "json", "csv"), default="text",
                        help="text: a table (default); json: an object with every figure, "
                        "the receptive fields included; csv: one row per layer")
    parser.add_argument("--rf", action="store_true",
                        help="add each layer's receptive field, jump and centre offset "
                        "(in input units) to the table or the CSV")
    add_size_option(parser)
    parser.add_argument("--train", action="store_true",
                        help="also report what training keeps per sample for the backward "
                        "pass, and the parameters' gradients")
    return parser


def main(args) -> int:
    from ..compiler.summary import add_receptive_fields, render_csv, render_table, report

    net, text = check_data(read_source(args.file), args.file, dict(args.size), lets(args))
    if not net.ok:
        print_diagnostics(net.diagnostics, text, sys.stderr)
        print(f"cnnc: {args.file} has errors; run `cnnc check {args.file}`", file=sys.stderr)
        return EXIT_ERRORS
    rep = report(net)
    if args.train:
        require_concrete_sizes(net, args.file, "--train")
        rep.train_saved_bytes = _train_saved_bytes(net)
        _warn_if_too_large(net)
    if args.rf or args.format == "json":
        add_receptive_fields(rep, net)
    if args.format == "json":
        print(json.dumps(rep.to_json(), indent=2))
    elif args.format == "csv":
        sys.stdout.write(render_csv(rep))
    elif _is_terminal(sys.stdout):
        from rich.console import Console

        from ..compiler.summary import render_rich

        render_rich(rep, Console(file=sys.stdout))
    else:
        print(render_table(rep))
    return EXIT_OK


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _train_saved_bytes(net) -> int:
    """Float32 bytes per sample that a training forward keeps for the backward pass,
    from the plan alone (nothing is built or run): what one training forward on two
    samples keeps, every kept array counted once, halved."""
    from ..compiler.plan import lower
    from ..runtime.model import estimate_saved_bytes

    return estimate_saved_bytes(lower(net), "float32", 2) // 2


def _warn_if_too_large(net) -> None:
    """A `cnnc: warning:` line on stderr when training the model on a single sample would
    not fit in the memory available (parameters, gradients, Adam's two moments and one
    sample's activations, in float32). The summary itself is still printed."""
    from ..compiler.plan import lower
    from ..runtime.model import (
        TooLargeError, estimate_saved_bytes, param_bytes, require_memory,
    )

    plan = lower(net)
    trainable = param_bytes(plan, "float32", trainable=True)
    try:
        require_memory(plan, f"training network {plan.network} on one sample",
                       [("parameters", param_bytes(plan, "float32")),
                        ("gradients and Adam's state", 3 * trainable),
                        ("activations", estimate_saved_bytes(plan, "float32", 1,
                                                             every_output=True))],
                       "float32", batch=1)
    except TooLargeError as err:
        print(f"cnnc: warning: {err}", file=sys.stderr)
