"""What the subcommands share: the ``--size`` option, reading and checking a model file,
printing its diagnostics, exit statuses, refusals, and a clear `cnnc: error: ...` line
instead of a traceback.

Nothing heavy is imported at the top: `cnnc check` builds every subcommand's parser on each
start, and its start-up time is budgeted.
"""

from __future__ import annotations

import argparse
import sys

EXIT_OK = 0
EXIT_ERRORS = 1  # a model has errors (or, for `train`, training failed)
EXIT_USAGE = 2  # a file cannot be read or written, or the command is misused


class CommandError(Exception):
    """A user-facing failure: the message is printed as `cnnc: error: MESSAGE` and the
    command exits with ``status``."""

    def __init__(self, message: str, status: int = EXIT_USAGE):
        super().__init__(message)
        self.status = status


def fail(err: CommandError) -> int:
    """Print ``err`` as `cnnc: error: ...` on stderr; return its exit status."""
    print(f"cnnc: error: {err}", file=sys.stderr)
    return err.status


# ---- options ----------------------------------------------------------------------------------

def parse_size(text: str) -> tuple[str, int]:
    """The argparse type of ``--size``: ``NAME=N`` -> ``(NAME, N)``, N a whole number >= 1."""
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


def add_size_option(parser, example: str = "H=224", more: str = "") -> None:
    """The repeatable ``--size NAME=N``; ``args.size`` is a list of (name, value) pairs.
    ``more`` ends the help text, after a semicolon."""
    tail = f"; {more}" if more else ""
    parser.add_argument("--size", type=parse_size, action="append", default=[],
                        metavar="NAME=N", help=f"give a size symbol a value, e.g. --size "
                        f"{example} (repeatable){tail}")


def add_report_options(parser, json_holds: str) -> None:
    """``--format text|json`` and ``-q`` for a command that writes a file: text is one line
    on stderr naming what was written, json an object on stdout with ``json_holds``."""
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="text: one line on stderr naming what was written; json: an "
                        f"object on stdout with {json_holds} (default: text)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="print nothing on success (with text format)")


# ---- reading and checking a model --------------------------------------------------------------

def read_source(path: str) -> bytes:
    """The bytes of a model file, or of stdin for ``-``; CommandError when unreadable."""
    if path == "-":
        if sys.stdin is None:
            raise CommandError("cannot read <stdin>: standard input is closed")
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise CommandError(f"cannot read {path}: {err.strerror or err}") from None


def check_data(data: bytes, path: str, sizes: dict | None = None):
    """Check source bytes read from ``path`` (``-``: stdin, named ``<stdin>``). Returns
    ``(network, text)``; ``text`` is None when the bytes do not decode."""
    from ..compiler.check import check_bytes

    name = "<stdin>" if path == "-" else path
    return check_bytes(data, name, sizes or {})


def print_diagnostics(diagnostics, text: str | None, file) -> None:
    """Every diagnostic rendered against the source ``text``, each followed by a blank line."""
    from ..dsl.diagnostics import render, source_lines

    lines = source_lines(text) if text is not None else None
    for d in diagnostics:
        print(render(d, lines), file=file)
        print(file=file)


def load_network(path: str, sizes: dict | None = None):
    """Read and check a model file. Returns the checked `Network`; when the model has
    errors, prints every diagnostic to stderr and raises CommandError with status 1."""
    return check_model(read_source(path), path, sizes)


def check_model(data: bytes, path: str, sizes: dict | None = None, context: str = ""):
    """`load_network` on source bytes already read (so a model from stdin can be checked
    twice, e.g. again once its sizes are known). ``context`` ends the error line, as in
    "for H=5 (read off x.npy)"."""
    net, text = check_data(data, path, sizes)
    if not net.ok:
        print_diagnostics(net.diagnostics, text, sys.stderr)
        where = f" {context}" if context else ""
        raise CommandError(f"{path} has errors{where}; run `cnnc check {path}`", EXIT_ERRORS)
    return net


def require_concrete_sizes(net, path: str, needed_for: str, note: str = "") -> None:
    """Refuse a network that still has symbolic sizes: a CommandError naming them and a
    ``--size`` flag for each, as in "m.cnn has symbolic sizes H, W; ONNX export needs them
    fixed (only the batch stays symbolic): add e.g. --size H=32 --size W=32". ``needed_for``
    says what needs them; ``note``, when given, is put in parentheses after it."""
    if not net.symbols:
        return
    symbols = ", ".join(net.symbols)
    example = " ".join(f"--size {s}=32" for s in net.symbols)
    why = f" ({note})" if note else ""
    raise CommandError(f"{path} has symbolic sizes {symbols}; {needed_for} needs them "
                       f"fixed{why}: add e.g. {example}")


def require_readable(path: str, what: str) -> None:
    """Raise CommandError ("cannot read weight file w.npz: No such file or directory") when
    ``path`` cannot be opened for reading."""
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise CommandError(f"cannot read {what} {path}: {err.strerror or err}") from None


# ---- writing ----------------------------------------------------------------------------------

def write_atomically(path: str, write) -> None:
    """``runtime.files.write_atomically``, with an OSError turned into a CommandError naming
    the path."""
    from ..runtime.files import write_atomically as write_file

    try:
        write_file(path, write)
    except OSError as err:
        raise CommandError(f"cannot write {path}: {err.strerror or err}") from None
