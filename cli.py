"""The `cnnc` command: a thin layer that runs the stages in order and prints their results.

Exit codes: 0 no errors, 1 a model has errors, 2 a file cannot be read or the command is
misused.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__

# Subcommands that live in `commands/` (see its __init__ for the protocol).
COMMANDS = ("run", "export", "train")

EXIT_OK = 0
EXIT_ERRORS = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors exit 2 with the usage line, never a traceback
        self.print_usage(sys.stderr)
        print(f"cnnc: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _size(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, as in H=224; got {text!r}")
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {name} must be an integer, got {value!r}")
    if number < 1:
        raise argparse.ArgumentTypeError(f"size {name} must be at least 1, got {number}")
    return name, number


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cnnc",
        description="Check, cost and run convolutional networks written in the .cnn language.",
    )
    parser.add_argument("--version", action="version", version=f"cnnc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    check = sub.add_parser(
        "check", help="report every error in .cnn files",
        description="Check .cnn files and report every problem with its place and values. "
        "Exit 0 with no errors, 1 with errors, 2 when a file cannot be read.",
    )
    check.add_argument("files", nargs="+", metavar="FILE", help="a .cnn file, or - for stdin")
    check.add_argument("--werror", action="store_true", help="treat warnings as errors")
    check.add_argument("--format", choices=("text", "json"), default="text")
    check.add_argument("--size", type=_size, action="append", default=[], metavar="NAME=N",
                       help="give a size symbol a value, e.g. --size H=224 (repeatable)")
    check.add_argument("--shapes", action="store_true",
                       help="also print every layer's output shape")
    check.add_argument("-q", "--quiet", action="store_true",
                       help="print diagnostics only, not the line for files that pass")

    summary = sub.add_parser(
        "summary", help="print each layer's shape, parameters and MACs",
        description="Print one row per layer (name, layer, output shape, parameters, MACs) and "
        "totals: parameters, MACs and activation memory for one sample in float32.",
    )
    summary.add_argument("file", metavar="FILE", help="a .cnn file, or - for stdin")
    summary.add_argument("--format", choices=("text", "json"), default="text")
    summary.add_argument("--size", type=_size, action="append", default=[], metavar="NAME=N",
                         help="give a size symbol a value, e.g. --size H=224 (repeatable)")
    summary.add_argument("--train", action="store_true",
                         help="also report what training keeps per sample for the backward "
                         "pass, and the parameters' gradients")

    import importlib

    for name in COMMANDS:
        module = importlib.import_module(f".commands.{name}", __package__)
        module.add_parser(sub).set_defaults(handler=module.main)
    return parser


def _read(path: str) -> bytes:
    if path == "-":
        if sys.stdin is None:
            raise OSError(0, "standard input is closed")
        return sys.stdin.buffer.read()
    with open(path, "rb") as f:
        return f.read()


def _load(path: str, sizes: dict):
    """Read and check one file. Returns (network, text) or raises OSError."""
    from .compiler.check import check_bytes

    data = _read(path)
    name = "<stdin>" if path == "-" else path
    return check_bytes(data, name, sizes)


def _cant_read(path: str, err: OSError) -> None:
    reason = err.strerror or str(err)
    print(f"cnnc: error: cannot read {path}: {reason}", file=sys.stderr)


def cmd_check(args) -> int:
    from .dsl.diagnostics import render, source_lines
    from .compiler.symbolic import shape_text

    sizes = dict(args.size)
    everything = []
    status = EXIT_OK
    errors = warnings = 0
    for path in args.files:
        try:
            net, text = _load(path, sizes)
        except OSError as err:
            _cant_read(path, err)
            status = EXIT_USAGE
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
        lines = source_lines(text) if text is not None else None
        for d in diags:
            print(render(d, lines))
            print()
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
    from .compiler.summary import _num

    params = 0
    for node in net.layers:
        params = node.param_count + params
    line = (f"{net.file}: ok: network {net.name}, {_plural(len(net.layers), 'layer')}, "
            f"{_num(params)} parameters")
    if warnings:
        line += f", {_plural(warnings, 'warning')}"
    if net.valid_sizes:
        line += "\n  valid for " + ", ".join(v.describe() for v in net.valid_sizes)
    for cond in net.conditions:
        line += f"\n  valid only when {cond.lhs} = {cond.rhs}"
    return line


def cmd_summary(args) -> int:
    from .dsl.diagnostics import render
    from .compiler.summary import render_table, report

    try:
        net, text = _load(args.file, dict(args.size))
    except OSError as err:
        _cant_read(args.file, err)
        return EXIT_USAGE
    if not net.ok:
        for d in net.diagnostics:
            print(render(d, text), file=sys.stderr)
            print(file=sys.stderr)
        print(f"cnnc: {args.file} has errors; run `cnnc check {args.file}`", file=sys.stderr)
        return EXIT_ERRORS
    rep = report(net)
    if args.train:
        if net.symbols:
            names = ", ".join(f"{s}=..." for s in net.symbols)
            print(f"cnnc: error: --train needs concrete sizes; give --size {names}",
                  file=sys.stderr)
            return EXIT_USAGE
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

    from .compiler.plan import lower
    from .runtime.model import Model

    model = Model(lower(net), backend="numpy", seed=0, dtype="float32")
    rng = np.random.default_rng(0)
    model.forward({name: rng.standard_normal((2,) + tuple(shape)).astype(np.float32)
                   for name, shape in model.plan.inputs.items()}, train=True)
    return model.saved_bytes() // 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    handlers = {"check": cmd_check, "summary": cmd_summary}
    handler = handlers.get(args.command) or args.handler
    try:
        from .commands.common import CommandError, fail

        try:
            status = handler(args)
        except CommandError as err:
            status = fail(err)
        sys.stdout.flush()
        return status
    except KeyboardInterrupt:
        print("cnnc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`cnnc check bad.cnn | head`). The full status is unknown, so
        # fail rather than claim success; point stdout at /dev/null so the exit flush is quiet.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERRORS
    except OSError as err:  # e.g. a full disk under `cnnc check x.cnn > out.txt`
        import os

        print(f"cnnc: error: cannot write the output: {err.strerror or err}", file=sys.stderr)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
