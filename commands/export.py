"""`cnnc export`: write a model as an ONNX file.

    cnnc export model.cnn -o model.onnx [--weights w.npz] [--size H=224] [--opset 17]

--weights also takes a .safetensors file or a PyTorch checkpoint, by name or by structure
(runtime/model.py's `Model.load`); --show-mapping prints which array went where.

The batch dimension stays symbolic in the ONNX graph; every other size must be fixed, so a
model with symbolic sizes needs --size for each of them. Without --weights the seeded
default initialisation (random weights) is exported, and a note says so. ``-o -`` writes
the ONNX bytes to standard output (not to a terminal).
"""

from __future__ import annotations

import sys

from .common import (
    EXIT_ERRORS, EXIT_OK, CommandError, add_report_options, add_size_option, add_threads_option,
    add_weights_option, apply_threads, lets, load_network, remove_stale_temporaries,
    require_concrete_sizes, require_memory, require_readable, standard_output_for, whole_number,
)

# runtime/onnx_export.py's DEFAULT_OPSET and MIN_OPSET (a test keeps them equal), written out
# so that building the parser imports neither NumPy nor ONNX.
DEFAULT_OPSET = 17
MIN_OPSET = 17


def add_parser(sub):
    parser = sub.add_parser(
        "export", help="write a model as an ONNX file",
        description="Write a model as an ONNX file with a symbolic batch dimension N, layer "
        "names as node names and weight-file keys as initializer names. Without --weights "
        "the model's seeded default initialisation (seed 0) is exported. Needs the onnx "
        "package (pip install 'cnnc[onnx]'). Exit 0 on success, 1 when the model has "
        "errors, 2 when a file cannot be read or written, the model would not fit in the "
        "memory available, or the command is misused.",
    )
    parser.add_argument("file", metavar="MODEL", help="a .cnn file, or - for stdin")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.onnx",
                        help="the ONNX file to write; - writes its bytes to standard output")
    add_weights_option(parser)
    add_size_option(parser, more="every symbol needs one")
    add_threads_option(parser)
    parser.add_argument("--opset", type=_opset, default=DEFAULT_OPSET, metavar="N",
                        help=f"ONNX opset version, {MIN_OPSET} or newer "
                        f"(default: {DEFAULT_OPSET})")
    add_report_options(parser, "the file, opset, node and initializer counts and the "
                       "graph's inputs and outputs")
    return parser


def _opset(text: str) -> int:
    import argparse

    try:
        return whole_number(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main(args) -> int:
    apply_threads(args)
    try:
        import onnx
    except ImportError:
        raise CommandError("cnnc export needs the onnx package: pip install 'cnnc[onnx]'") \
            from None
    from ..compiler.plan import lower
    from ..runtime.model import Model, WeightFileError, param_bytes
    from ..runtime.onnx_export import ExportError, export_model

    net = load_network(args.file, dict(args.size), lets(args))
    require_concrete_sizes(net, args.file, "ONNX export", "only the batch stays symbolic")
    stdout = None
    if args.output == "-":
        stdout = standard_output_for("the ONNX bytes", args.format)
    else:
        remove_stale_temporaries(args.output)
    plan = lower(net)
    weights = param_bytes(plan, "float32")
    require_memory(plan, f"exporting network {plan.network}",
                   [("parameters", weights), ("copies in the ONNX graph", 3 * weights)])
    model = Model(plan, backend="numpy", seed=0, dtype="float32")
    if args.weights is not None:
        require_readable(args.weights, "weight file")
        try:
            mapping = model.load(args.weights)
        except WeightFileError as err:
            raise CommandError(str(err)) from None
        if args.show_mapping:
            print(mapping.describe(), file=sys.stderr)
    elif not args.quiet and args.format == "text":
        print("cnnc: note: no --weights given; exporting the default initialisation (seed 0), "
              "random weights", file=sys.stderr)
    try:
        proto = export_model(model, None if stdout is not None else args.output,
                             opset=args.opset)
    except ExportError as err:
        raise CommandError(str(err)) from None
    except onnx.checker.ValidationError as err:
        raise CommandError(f"the exported graph fails the ONNX checker (a cnnc bug; please "
                           f"report it): {err}", EXIT_ERRORS) from None
    except OSError as err:
        raise CommandError(f"cannot write {args.output}: {err.strerror or err}") from None
    except ValueError as err:  # e.g. protobuf's 2 GB limit on one message
        raise CommandError(f"cannot export {args.file}: {err}") from None
    if stdout is not None:
        sys.stdout.flush()
        stdout.write(proto.SerializeToString())
        stdout.flush()
    graph = proto.graph
    if args.format == "json":
        import json

        print(json.dumps({
            "output": args.output, "network": net.name, "opset": args.opset,
            "nodes": len(graph.node), "initializers": len(graph.initializer),
            "inputs": [_value_json(v) for v in graph.input],
            "outputs": [_value_json(v) for v in graph.output],
        }, indent=2))
    elif not args.quiet:
        where = "standard output" if stdout is not None else args.output
        print(f"cnnc: wrote {where}: network {net.name}, opset {args.opset}, "
              f"{len(graph.node)} nodes, {len(graph.initializer)} initializers",
              file=sys.stderr)
    return EXIT_OK


def _value_json(value) -> dict:
    """A graph input or output as ``{"name", "shape"}``, the batch as "N"."""
    dims = value.type.tensor_type.shape.dim
    return {"name": value.name, "shape": [d.dim_param or d.dim_value for d in dims]}
