"""What the subcommands share: reading a model file, reporting its errors, printing a
clear `cnnc: error: ...` line instead of a traceback."""

from __future__ import annotations

import sys

EXIT_OK = 0
EXIT_ERRORS = 1
EXIT_USAGE = 2


class CommandError(Exception):
    """A user-facing failure: the message is printed as `cnnc: error: MESSAGE` and the
    command exits with ``status``."""

    def __init__(self, message: str, status: int = EXIT_USAGE):
        super().__init__(message)
        self.status = status


def read_source(path: str) -> bytes:
    if path == "-":
        if sys.stdin is None:
            raise CommandError("cannot read <stdin>: standard input is closed")
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise CommandError(f"cannot read {path}: {err.strerror or err}") from None


def load_network(path: str, sizes: dict | None = None):
    """Read and check a model file. Returns the checked `Network`; when the model has
    errors, prints every diagnostic to stderr and raises CommandError with status 1."""
    return check_model(read_source(path), path, sizes)


def add_report_options(parser, json_holds: str) -> None:
    """``--format text|json`` and ``-q`` for a command that writes a file: text is one line
    on stderr naming what was written, json an object on stdout with ``json_holds``."""
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="text: one line on stderr naming what was written; json: an "
                        f"object on stdout with {json_holds} (default: text)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="print nothing on success (with text format)")


def fail(err: CommandError) -> int:
    print(f"cnnc: error: {err}", file=sys.stderr)
    return err.status


def check_model(data: bytes, path: str, sizes: dict | None = None, context: str = ""):
    """`load_network` on source bytes already read (so a model from stdin can be checked
    twice, e.g. again once its sizes are known). ``context`` ends the error line, as in
    "for H=5 (taken from x.npy)"."""
    from ..compiler.check import check_bytes
    from ..dsl.diagnostics import render, source_lines

    name = "<stdin>" if path == "-" else path
    net, text = check_bytes(data, name, sizes or {})
    if not net.ok:
        lines = source_lines(text) if text is not None else None
        for d in net.diagnostics:
            print(render(d, lines), file=sys.stderr)
            print(file=sys.stderr)
        where = f" {context}" if context else ""
        raise CommandError(f"{path} has errors{where}; run `cnnc check {path}`", EXIT_ERRORS)
    return net


def write_atomically(path: str, write) -> None:
    """``runtime.files.write_atomically``, with an OSError turned into a CommandError naming
    the path."""
    from ..runtime.files import write_atomically as write_file

    try:
        write_file(path, write)
    except OSError as err:
        raise CommandError(f"cannot write {path}: {err.strerror or err}") from None


def require_readable(path: str, what: str) -> None:
    """Raise CommandError ("cannot read weight file w.npz: No such file or directory") when
    ``path`` cannot be opened for reading."""
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise CommandError(f"cannot read {what} {path}: {err.strerror or err}") from None
