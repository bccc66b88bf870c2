"""`cnnc summary`: one row per layer (name, layer, output shape, parameters, MACs) and the
totals of one model.

    cnnc summary model.cnn [--format json] [--size H=224] [--train]
"""

from __future__ import annotations

import json
import sys

from .common import (
    EXIT_ERRORS, EXIT_OK, add_size_option, check_data, print_diagnostics, read_source,
    require_concrete_sizes,
)


def add_parser(sub):
    parser = sub.add_parser(
        "summary", help="print each layer's shape, parameters and MACs",
        description="Print one row per layer (name, layer, output shape, parameters, MACs) and "
        "totals: parameters, MACs and activation memory for one sample in float32.",
    )
    parser.add_argument("file", metavar="FILE", help="a .cnn file, or - for stdin")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    add_size_option(parser)
    parser.add_argument("--train", action="store_true",
                        help="also report what training keeps per sample for the backward "
                        "pass, and the parameters' gradients")
    return parser


def main(args) -> int:
    from ..compiler.summary import render_table, report

    net, text = check_data(read_source(args.file), args.file, dict(args.size))
    if not net.ok:
        print_diagnostics(net.diagnostics, text, sys.stderr)
        print(f"cnnc: {args.file} has errors; run `cnnc check {args.file}`", file=sys.stderr)
        return EXIT_ERRORS
    rep = report(net)
    if args.train:
        require_concrete_sizes(net, args.file, "--train")
        rep.train_saved_bytes = _train_saved_bytes(net)
    if args.format == "json":
        print(json.dumps(rep.to_json(), indent=2))
    else:
        print(render_table(rep))
    return EXIT_OK


def _train_saved_bytes(net) -> int:
    """Float32 bytes per sample that a training forward keeps for the backward pass,
    measured: one training forward on two samples, every kept array counted once."""
    import numpy as np

    from ..compiler.plan import lower
    from ..runtime.model import Model

    model = Model(lower(net), backend="numpy", seed=0, dtype="float32")
    rng = np.random.default_rng(0)
    model.forward({name: rng.standard_normal((2,) + tuple(shape)).astype(np.float32)
                   for name, shape in model.plan.inputs.items()}, train=True)
    return model.saved_bytes() // 2
