"""What the subcommands share: the ``--size`` option, reading and checking a model file,
printing its diagnostics, exit statuses, refusals, and a clear `cnnc: error: ...` line
instead of a traceback.

Nothing heavy is imported at the top: `cnnc check` builds every subcommand's parser on each
start, and its start-up time is budgeted.
"""

from __future__ import annotations

import argparse
import re
import sys

EXIT_OK = 0
EXIT_ERRORS = 1  # a model has errors (or, for `train`, training failed)
EXIT_USAGE = 2  # a file cannot be read or written, too little memory, or misuse


class CommandError(Exception):
    """A user-facing failure: the message is printed as `cnnc: error: MESSAGE` and the
    command exits with ``status``."""

    def __init__(self, message: str, status: int = EXIT_USAGE):
        super().__init__(message)
        self.status = status


def fail(err: CommandError) -> int:
    """Print ``err`` as `cnnc: error: ...` on stderr, control characters (of a file name,
    say) escaped; return its exit status."""
    from ..dsl.diagnostics import printable

    print(printable(f"cnnc: error: {err}"), file=sys.stderr)
    return err.status


# ---- options ----------------------------------------------------------------------------------

_DIGITS = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
MAX_DIGITS = 1000  # more digits than any size or count a run could use
MAX_SIZE = 2**63 - 1  # the largest size or integer a model may hold (dsl.parser.MAX_INT)


def whole_number(text: str) -> int:
    """A whole number written in ASCII digits, as a command-line option's value: ``32``.
    Python's ``int`` also reads other scripts' digits (``٣٢``), underscores (``3_2``),
    signs and spaces; an option does not. ValueError, in words, otherwise."""
    if not _DIGITS.fullmatch(text):
        raise ValueError(f"expected a whole number in the digits 0-9, got {text!r}")
    if len(text) > MAX_DIGITS:
        raise ValueError(f"expected a whole number, got one of {len(text):,} digits")
    return int(text)


def decimal_number(text: str) -> float:
    """A number written in ASCII, as in ``0.05``, ``1e-3`` or ``-2``; not ``nan``, ``inf``,
    ``1_0`` or other scripts' digits, which Python's ``float`` reads. ValueError in words."""
    if len(text) > MAX_DIGITS or not _DECIMAL.fullmatch(text):
        raise ValueError(f"expected a number such as 0.05 or 1e-3, got {text!r}")
    return float(text)


def int_at_least(minimum: int):
    """An argparse type: a whole number in ASCII digits no smaller than ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = whole_number(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def number_at_least(minimum: float, strictly: bool = False):
    """An argparse type: a finite decimal number at least (or, ``strictly``, above)
    ``minimum``."""

    def parse(text: str) -> float:
        try:
            value = decimal_number(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        if not (value > minimum if strictly else value >= minimum) or value == float("inf"):
            bound = "above" if strictly else "at least"
            raise argparse.ArgumentTypeError(f"must be a finite number {bound} {minimum:g}, "
                                             f"got {text}")
        return value

    return parse


def parse_size(text: str) -> tuple[str, int]:
    """The argparse type of ``--size``: ``NAME=N`` -> ``(NAME, N)``, N a whole number >= 1
    in ASCII digits."""
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, as in H=224; got {text!r}")
    sign = value[:1] if value[:1] in "+-" else ""
    try:
        number = whole_number(value[len(sign):]) if value[len(sign):] else None
    except ValueError:
        number = None
    if number is None:
        raise argparse.ArgumentTypeError(f"size {name} must be an integer in the digits 0-9, "
                                         f"got {value!r}") from None
    if sign == "-":
        number = -number
    if number < 1:
        raise argparse.ArgumentTypeError(f"size {name} must be at least 1, got {number}")
    if number > MAX_SIZE:
        raise argparse.ArgumentTypeError(f"size {name} must be at most {MAX_SIZE:,} (2**63 - 1), "
                                         f"got a number of {len(str(number)):,} digits")
    return name, number


def parse_let(text: str) -> tuple[str, str]:
    """The argparse type of ``--let``: ``NAME=VALUE`` -> ``(NAME, VALUE)``; the checker reads
    VALUE as a `.cnn` value (E222 when it cannot)."""
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        shown = text if len(text) <= 60 and text.isprintable() else ascii(text[:60])
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, as in width=32; got {shown}")
    return name, value


def add_size_option(parser, example: str = "H=224", more: str = "") -> None:
    """The repeatable ``--size NAME=N``; ``args.size`` is a list of (name, value) pairs.
    ``more`` ends the help text, after a semicolon. Also the repeatable ``--let NAME=VALUE``
    (``args.let``; `lets` makes the dict the checker takes as ``consts``), so that every
    command that takes sizes takes constants too."""
    tail = f"; {more}" if more else ""
    parser.add_argument("--size", type=parse_size, action="append", default=[],
                        metavar="NAME=N", help=f"give a size symbol a value, e.g. --size "
                        f"{example} (repeatable){tail}")
    parser.add_argument("--let", type=parse_let, action="append", default=[],
                        metavar="NAME=VALUE", help="replace the value of the model's "
                        "top-level `let NAME`, e.g. --let width=32 (repeatable)")


def add_weights_option(parser, noun: str = "the weight file") -> None:
    """``--weights W`` in every format `Model.load` reads, and ``--show-mapping``."""
    parser.add_argument("--weights", metavar="W",
                        help="the parameters: a cnnc .npz, a .safetensors file or a PyTorch "
                        ".pt/.pth checkpoint, matched by name (keys as stem.conv1.weight) or "
                        "else by structure; without it, the seeded default initialisation "
                        "(seed 0)")
    parser.add_argument("--show-mapping", action="store_true",
                        help=f"print which array of {noun} went to which parameter")


def add_threads_option(parser) -> None:
    """``--threads N|auto``: how many threads the CPU kernels run (runtime/threads.py)."""
    parser.add_argument("--threads", metavar="N", default=None,
                        help="threads for the CPU kernels: a number or `auto` (default: "
                        "$CNNC_NUM_THREADS, else auto: the cores other processes leave free)")


def apply_threads(args) -> None:
    """Put ``--threads`` (and a CNNC_NUM_THREADS from the environment) in force, or a
    CommandError naming the bad value."""
    from ..runtime import threads

    try:
        if getattr(args, "threads", None) is not None:
            threads.set_threads(threads.parse(args.threads, "--threads"))
        threads.setting()  # reads CNNC_NUM_THREADS, refusing a bad value now
    except threads.ThreadsError as err:
        raise CommandError(str(err)) from None


def lets(args) -> dict:
    """The ``--let`` constants of parsed arguments, as ``consts`` for the checker; the last
    of a repeated name wins."""
    return dict(getattr(args, "let", None) or [])


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
    """The bytes of a model file, or of stdin for ``-``; CommandError when unreadable. At
    most one byte past the largest model file is read (the checker refuses that, E107), so a
    device or pipe without end (/dev/zero) stops there."""
    from ..compiler.check import MAX_SOURCE_BYTES

    if path == "-":
        if sys.stdin is None:
            raise CommandError("cannot read <stdin>: standard input is closed")
        return sys.stdin.buffer.read(MAX_SOURCE_BYTES + 1)
    try:
        with open(path, "rb") as f:
            return f.read(MAX_SOURCE_BYTES + 1)
    except OSError as err:
        raise CommandError(f"cannot read {path}: {err.strerror or err}") from None


def check_data(data: bytes, path: str, sizes: dict | None = None, consts: dict | None = None):
    """Check source bytes read from ``path`` (``-``: stdin, named ``<stdin>``). Returns
    ``(network, text)``; ``text`` is None when the bytes do not decode."""
    from ..compiler.check import check_bytes

    name = "<stdin>" if path == "-" else path
    return check_bytes(data, name, sizes or {}, consts)


def print_diagnostics(diagnostics, text: str | None, file) -> None:
    """Every diagnostic rendered against the source ``text``, each followed by a blank line."""
    from ..dsl.diagnostics import render, source_lines

    lines = source_lines(text) if text is not None else None
    for d in diagnostics:
        print(render(d, lines), file=file)
        print(file=file)


def load_network(path: str, sizes: dict | None = None, consts: dict | None = None):
    """Read and check a model file. Returns the checked `Network`; when the model has
    errors, prints every diagnostic to stderr and raises CommandError with status 1."""
    return check_model(read_source(path), path, sizes, consts=consts)


def check_model(data: bytes, path: str, sizes: dict | None = None, context: str = "",
                consts: dict | None = None):
    """`load_network` on source bytes already read (so a model from stdin can be checked
    twice, e.g. again once its sizes are known). ``context`` ends the error line, as in
    "for H=5 (read off x.npy)"."""
    net, text = check_data(data, path, sizes, consts)
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


def remove_stale_temporaries(path: str) -> None:
    """Remove what a killed earlier run left behind while writing ``path`` (hidden
    ``.cnnc-NAME.*.tmp`` files next to it; runtime/files.py)."""
    from ..runtime.files import remove_stale_temporaries as remove

    remove(path)


def standard_output_for(what: str, fmt: str = "text", several: str = ""):
    """``sys.stdout.buffer`` for ``-o -``, once it is known to be fit for ``what`` (as in
    "the .npy bytes"): refused when standard output is a terminal, when ``--format json``
    also writes there, or when ``several`` says why one stream will not do."""
    if several:
        raise CommandError(several)
    if fmt == "json":
        raise CommandError(f"-o - writes {what} to standard output, where --format json "
                           "writes its report; give -o a file name, or leave out --format "
                           "json")
    stream = getattr(sys.stdout, "buffer", None)
    if stream is None:
        raise CommandError(f"-o - writes {what} to standard output, which takes no bytes here")
    try:
        terminal = sys.stdout.isatty()
    except (ValueError, OSError):
        terminal = False
    if terminal:
        raise CommandError(f"-o - writes {what} to standard output, which is a terminal; "
                           "redirect it (-o - > FILE) or pipe it, or give -o a file name")
    return stream


def require_memory(plan, doing: str, parts: list, dtype="float32", batch: int = 0,
                   on_device: bool = False) -> None:
    """``runtime.model.require_memory``, its refusal as a CommandError (exit 2)."""
    from ..runtime.model import TooLargeError
    from ..runtime.model import require_memory as require

    try:
        require(plan, doing, parts, dtype, batch, on_device)
    except TooLargeError as err:
        raise CommandError(str(err)) from None
