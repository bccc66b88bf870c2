"""`cnnc graph`: draw a model: one box per layer, edges labelled with tensor shapes.

    cnnc graph model.cnn -o model.svg [--blocks] [--expand NAME]... [--layout auto|dot|builtin]

The picture's format comes from the output's extension (.svg, .png, .pdf, .dot) or
``--type``. Graphviz's `dot` lays it out where it is installed; without it cnnc's own
layered layout draws the SVG, PNG and PDF (compiler/draw.py). A model with errors is still
drawn, each failing layer marked with its diagnostic code; the exit status is then 1.
"""

from __future__ import annotations

import sys

from .common import (
    EXIT_ERRORS, EXIT_OK, CommandError, add_size_option, check_data, lets, print_diagnostics,
    read_source, remove_stale_temporaries, standard_output_for, write_atomically,
)

FORMATS = ("svg", "png", "pdf", "dot")  # compiler/draw.py's, written out: no import here


def add_parser(sub):
    parser = sub.add_parser(
        "graph", help="draw a model as SVG, PNG, PDF or Graphviz DOT",
        description="Draw one box per layer (name, layer, output shape, parameters), edges "
        "labelled with the tensor shape they carry, inputs and outputs marked. A model with "
        "errors is still drawn, each failing layer marked with its diagnostic code. Uses "
        "Graphviz's dot program where it is installed, cnnc's own layout otherwise. Exit 0 "
        "on success, 1 when the model has errors (the picture is written all the same), 2 "
        "when a file cannot be read or written or the command is misused.",
    )
    parser.add_argument("file", metavar="MODEL", help="a .cnn file, or - for stdin")
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="the picture to write (.svg, .png, .pdf or .dot); - writes it "
                        "to standard output; without -o, DOT text goes to standard output")
    parser.add_argument("-T", "--type", choices=FORMATS,
                        help="the picture's format (default: from the output's extension)")
    parser.add_argument("--blocks", action="store_true",
                        help="draw each block call as one box with its totals")
    parser.add_argument("--expand", action="append", default=[], metavar="NAME",
                        help="with --blocks, draw this block call layer by layer: a call's "
                        "scope (i3.inception1) or a block's name (inception); repeatable")
    parser.add_argument("--layout", choices=("auto", "dot", "builtin"), default="auto",
                        help="auto: Graphviz's dot where installed, else cnnc's own layout "
                        "(default); dot: always dot; builtin: always cnnc's own")
    add_size_option(parser)
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    return parser


def main(args) -> int:
    import subprocess

    from ..compiler.draw import DotMissing, MissingLibrary, find_dot, picture, render

    fmt = _format(args)
    net, text = check_data(read_source(args.file), args.file, dict(args.size), lets(args))
    if not net.nodes:
        print_diagnostics(net.diagnostics, text, sys.stderr)
        raise CommandError(f"{args.file} has errors before any layer could be built; "
                           f"nothing to draw (run `cnnc check {args.file}`)", EXIT_ERRORS)
    blocks = args.blocks or bool(args.expand)
    _check_expand(net, args.expand)
    pic = picture(net, blocks=blocks, expand=args.expand)
    stdout = None
    if args.output in (None, "-"):
        stdout = standard_output_for(f"the {fmt.upper()} picture") if fmt != "dot" or \
            args.output == "-" else sys.stdout.buffer
    else:
        remove_stale_temporaries(args.output)
    try:
        data = render(pic, fmt, args.layout)
    except MissingLibrary as err:
        raise CommandError(str(err)) from None
    except DotMissing as err:
        message = str(err)
        if args.output not in (None, "-"):
            dot_path = _with_suffix(args.output, ".dot")
            data = render(pic, "dot")
            write_atomically(dot_path, lambda f: f.write(data))
            message += f"; wrote the DOT text to {dot_path}"
        raise CommandError(message) from None
    except (OSError, RuntimeError, subprocess.CalledProcessError) as err:
        # graphviz's ExecutableNotFound (a RuntimeError) and CalledProcessError from dot
        raise CommandError(f"Graphviz's dot failed to draw {args.file}: {err}") from None
    if stdout is not None:
        sys.stdout.flush()
        stdout.write(data)
        stdout.flush()
    else:
        write_atomically(args.output, lambda f: f.write(data))
    if not net.ok:
        print_diagnostics(net.diagnostics, text, sys.stderr)
    if not args.quiet and stdout is None:
        how = "" if fmt == "dot" else (
            ", laid out by Graphviz's dot" if args.layout == "dot" or (
                args.layout == "auto" and find_dot()) else ", laid out by cnnc")
        errors = len(net.errors)
        marked = f"; {errors} error{'s' * (errors != 1)} marked" if errors else ""
        print(f"cnnc: wrote {args.output}: network {net.name}, {len(pic.boxes)} boxes, "
              f"{len(pic.edges)} edges{how}{marked}", file=sys.stderr)
    return EXIT_OK if net.ok else EXIT_ERRORS


def _format(args) -> str:
    if args.type:
        return args.type
    if args.output in (None, "-"):
        return "dot"
    suffix = args.output.rsplit(".", 1)[-1].lower() if "." in args.output else ""
    if suffix in FORMATS:
        return suffix
    if suffix == "gv":
        return "dot"
    raise CommandError(f"cannot tell the picture's format from {args.output!r}: end it in "
                       ".svg, .png, .pdf or .dot, or give --type")


def _with_suffix(path: str, suffix: str) -> str:
    head, dot, tail = path.rpartition(".")
    if dot and "/" not in tail:
        return head + suffix
    return path + suffix


def _check_expand(net, names) -> None:
    """Every --expand NAME names a block call's scope or a block; else a CommandError with
    the ones there are."""
    if not names:
        return
    from ..compiler.draw import block_calls

    calls = block_calls(net)
    known = set(calls) | set(calls.values())
    for name in names:
        if name not in known:
            scopes = sorted(calls)
            shown = ", ".join(scopes[:8]) + (", ..." if len(scopes) > 8 else "")
            hint = f"the block calls are {shown}" if scopes else "the model calls no block"
            import difflib

            close = difflib.get_close_matches(name, sorted(known), n=1)
            maybe = f"did you mean {close[0]}? " if close else ""
            raise CommandError(f"--expand {name}: no block call or block of that name in "
                               f"{net.file}; {maybe}{hint}")
