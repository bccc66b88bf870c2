"""The `cnnc` command: a thin layer that runs the stages in order and prints their results.

Each subcommand lives in its own module under `commands/`; this module builds the argument
parser from them and dispatches.

Exit codes: 0 no errors, 1 a model has errors, 2 a file cannot be read or the command is
misused.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import warnings

from . import __version__
from .commands.common import EXIT_ERRORS, EXIT_USAGE, CommandError, fail

# The subcommands, one module each in `commands/` (see its __init__ for the protocol). Every
# module there with an `add_parser` is a subcommand; `cnnc --help` lists these first, in this
# order, then any others by name.
ORDER = ("check", "summary", "run", "export", "train", "graph", "diff", "fmt", "lsp",
         "import_", "sweep")


def command_modules() -> list[str]:
    """The names of the subcommand modules in `commands/`, in `cnnc --help` order."""
    from . import commands

    names = [m.name for m in pkgutil.iter_modules(commands.__path__) if m.name != "common"]
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(names, key=lambda name: (rank.get(name, len(ORDER)), name))


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors exit 2 with the usage line, never a traceback
        from .dsl.diagnostics import printable

        self.print_usage(sys.stderr)
        print(printable(f"cnnc: error: {message}"), file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cnnc",
        description="Check, cost and run convolutional networks written in the .cnn language.",
    )
    parser.add_argument("--version", action="version", version=f"cnnc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in command_modules():
        module = importlib.import_module(f".commands.{name}", __package__)
        if hasattr(module, "add_parser"):
            module.add_parser(sub).set_defaults(handler=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    with warnings.catch_warnings():
        # A library's warning (NumPy's, say) is said in cnnc's voice: no internal path.
        warnings.showwarning = _show_warning
        return _run(args)


def _run(args) -> int:
    try:
        try:
            status = args.handler(args)
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
        _silence_stdout()
        return EXIT_ERRORS
    except OSError as err:  # e.g. a full disk under `cnnc check x.cnn > out.txt`
        from .dsl.diagnostics import printable

        what = err.filename if err.filename is not None else "the output"
        print(printable(f"cnnc: error: cannot write {what}: {err.strerror or err}"),
              file=sys.stderr)
        _silence_stdout()
        return EXIT_USAGE


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    text = " ".join(str(message).split())
    print(f"cnnc: warning: {text}", file=sys.stderr)


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
