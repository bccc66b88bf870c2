"""`cnnc import`: turn an ONNX model, a Caffe deploy file or a Darknet .cfg into `.cnn`
source, and its weights into a cnnc weight file.

    cnnc import model.onnx -o model.cnn --weights-out model.npz
    cnnc import deploy.prototxt -o model.cnn
    cnnc import yolov3-tiny.cfg -o model.cnn

The source comes out checked: the command runs cnnc's checker on what it wrote and refuses
(writing nothing) if the checker would not take it. What the file uses that cnnc cannot
express is listed, every node or line of it, in one message; nothing is written then either.
"""

from __future__ import annotations

import os
import sys

from .common import EXIT_ERRORS, EXIT_OK, EXIT_USAGE, CommandError, add_report_options

FORMATS = ("onnx", "caffe", "darknet")


def add_parser(sub):
    parser = sub.add_parser(
        "import", help="turn an ONNX, Caffe or Darknet model into a .cnn file",
        description="Turn an ONNX model (.onnx), a Caffe network (.prototxt) or a Darknet "
        "network (.cfg) into readable .cnn source with the original layer names, and an "
        "ONNX model's weights into a cnnc weight file (--weights-out). The result is "
        "checked before it is written; a file using what cnnc cannot express is refused "
        "with every such node or line listed, and nothing is written. ONNX needs the onnx "
        "package (pip install 'cnnc[interop]'). Exit 0 on success, 1 when the file cannot "
        "be expressed in cnnc, 2 when a file cannot be read or written.",
    )
    parser.add_argument("file", metavar="MODEL", help="an .onnx, .prototxt or .cfg file")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.cnn",
                        help="the .cnn file to write; - writes it to standard output")
    parser.add_argument("--weights-out", metavar="W.npz",
                        help="where to write the imported weights (.npz or .safetensors); "
                        "ONNX models only")
    parser.add_argument("--from", dest="kind", choices=FORMATS,
                        help="the input's format (default: from its extension)")
    parser.add_argument("--no-blocks", action="store_true",
                        help="write every layer out; by default repeated modules of the "
                        "graph become blocks with parameters")
    parser.add_argument("--name", metavar="NAME",
                        help="the network's name (default: the input file's name)")
    add_report_options(parser, "the files written, the network, its layer and parameter "
                       "counts")
    return parser


def _kind(path: str, given: str | None) -> str:
    if given:
        return given
    lower = path.lower()
    if lower.endswith(".onnx"):
        return "onnx"
    if lower.endswith((".prototxt", ".pbtxt")):
        return "caffe"
    if lower.endswith(".cfg"):
        return "darknet"
    raise CommandError(f"cannot tell the format of {path} from its extension (.onnx, "
                       ".prototxt or .cfg); give --from onnx|caffe|darknet")


def main(args) -> int:
    from ..interop.source import ImportProblem

    kind = _kind(args.file, args.kind)
    if not os.path.exists(args.file):
        raise CommandError(f"cannot read {args.file}: No such file or directory")
    if args.weights_out is not None and args.weights_out == args.output:
        raise CommandError(f"-o and --weights-out name the same file, {args.output}")
    if args.weights_out is not None and kind != "onnx":
        where = "the .caffemodel" if kind == "caffe" else "the .weights file"
        raise CommandError(f"--weights-out: {args.file} holds the network only (its weights "
                           f"are in {where}, which cnnc does not read); leave it out")
    try:
        source = _import(kind, args.file, args.name, not args.no_blocks)
    except ImportProblem as err:
        raise CommandError(str(err), EXIT_USAGE if err.unreadable else EXIT_ERRORS) from None
    net = _checked(source.text, args.file)
    if not args.quiet and args.format == "text":
        for note in source.notes:
            print(f"cnnc: note: {note}", file=sys.stderr)
    if args.weights_out is None and source.weights and not args.quiet \
            and args.format == "text":
        print(f"cnnc: note: {args.file} holds weights; add --weights-out W.npz to keep them",
              file=sys.stderr)
    _write(args, source)
    params = sum(_count(node) for node in net.nodes.values())
    if args.format == "json":
        import json

        print(json.dumps({"output": args.output, "weights": args.weights_out,
                          "notes": source.notes,
                          "network": net.name, "layers": len(net.nodes) - len(net.inputs),
                          "parameters": params}, indent=2))
    elif not args.quiet:
        weights = f" and {args.weights_out}" if args.weights_out else ""
        where = "standard output" if args.output == "-" else args.output
        print(f"cnnc: wrote {where}{weights}: network {net.name}, "
              f"{len(net.nodes) - len(net.inputs)} layers, {params:,} parameters",
              file=sys.stderr)
    return EXIT_OK


def _count(node) -> int:
    import math

    return sum(math.prod(int(d) for d in shape) for shape in node.params.values())


def _import(kind: str, path: str, name: str | None, blocks: bool):
    if kind == "onnx":
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise CommandError("cnnc import of ONNX files needs the onnx package: "
                               "pip install 'cnnc[interop]'") from None
        from ..interop.onnx_import import import_onnx

        return import_onnx(path, name, blocks)
    if kind == "caffe":
        from ..interop.caffe import import_caffe

        return import_caffe(path, name, blocks)
    from ..interop.darknet import import_darknet

    return import_darknet(path, name, blocks)


def _checked(text: str, path: str):
    """The checked network of the written source; a cnnc bug if it has errors."""
    from .common import check_data, print_diagnostics

    net, _ = check_data(text.encode("utf-8"), "<imported>")
    if not net.ok:
        print_diagnostics(net.errors, text, sys.stderr)
        raise CommandError(f"the source imported from {path} fails cnnc's checker (a cnnc "
                           "bug; please report it with the file)", EXIT_ERRORS)
    return net


def _write(args, source) -> None:
    """The weights, then the source; if the source cannot be written, the weights written
    just now are taken back, so that a failure leaves nothing behind."""
    from ..runtime.files import ArrayFileError, write_weights
    from .common import remove_stale_temporaries, standard_output_for, write_atomically

    stdout = None
    if args.output == "-":
        stdout = standard_output_for("the .cnn source", args.format)
    else:
        remove_stale_temporaries(args.output)
    existed = args.weights_out is not None and os.path.exists(args.weights_out)
    if args.weights_out is not None:
        try:
            write_weights(args.weights_out, source.weights)
        except ArrayFileError as err:
            raise CommandError(str(err)) from None
        except OSError as err:
            raise CommandError(f"cannot write {args.weights_out}: {err.strerror or err}") \
                from None
    data = source.text.encode("utf-8")
    if stdout is not None:
        stdout.write(data)
        stdout.flush()
        return
    try:
        write_atomically(args.output, lambda f: f.write(data))
    except CommandError:
        if args.weights_out is not None and not existed:
            try:
                os.unlink(args.weights_out)
            except OSError:
                pass
        raise
