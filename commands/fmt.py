"""`cnnc fmt`: rewrite .cnn files in the one canonical layout (docs/formatting.md).

    cnnc fmt model.cnn [more.cnn ...]      rewrite in place, only the files that change
    cnnc fmt --check FILE...               change nothing; exit 1 if a file would change
    cnnc fmt --diff FILE...                change nothing; print a unified diff
    cnnc fmt -  < model.cnn                formatted text on standard output

Every file is handled, even after one that fails; the exit status is the worst seen: 2 for a
file that cannot be read or written, 1 for one with syntax errors (printed as `cnnc check`
prints them, the file left as it is) or, with --check, one that would change.
"""

from __future__ import annotations

import sys

from .common import (
    EXIT_ERRORS, EXIT_OK, CommandError, fail, print_diagnostics, read_source,
)


def add_parser(sub):
    parser = sub.add_parser(
        "fmt", help="rewrite .cnn files in the canonical layout",
        description="Rewrite .cnn files in the canonical layout (spacing, indentation, one "
        "stage per line for chains longer than 100 columns, comments kept). Files are "
        "rewritten in place, and only when their text changes. Exit 0 on success, 1 when a "
        "file has syntax errors (or, with --check, would change), 2 when a file cannot be "
        "read or written.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="a .cnn file, or - to format standard input to standard output")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; list the files that would change and exit 1 if "
                        "there are any (for CI and pre-commit)")
    parser.add_argument("--diff", action="store_true",
                        help="change nothing; print what would change as a unified diff")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="print only errors, not the line per file and the summary")
    return parser


def main(args) -> int:
    if args.files.count("-") > 1:
        raise CommandError("- (standard input) may be given only once")
    status = EXIT_OK
    changed = unchanged = failed = 0
    for path in args.files:
        try:
            old, new = _format_file(path)
        except CommandError as err:
            status = max(status, fail(err))
            failed += 1
            continue
        if old == new:
            unchanged += 1
            if path == "-" and not (args.check or args.diff):
                _write_stdout(new)
            continue
        changed += 1
        if args.diff:
            _print_diff(path, old, new)
        if args.check:
            status = max(status, EXIT_ERRORS)
            _say(args, f"would reformat {_shown(path)}")
        if args.check or args.diff:
            continue
        if path == "-":
            _write_stdout(new)
        else:
            try:
                _rewrite(path, new)
            except CommandError as err:
                status = max(status, fail(err))
                changed -= 1
                failed += 1
                continue
            _say(args, f"reformatted {_shown(path)}")
    if not (len(args.files) == 1 and args.files[0] == "-"):
        _say(args, _summary(changed, unchanged, failed, would=args.check or args.diff))
    return status


def _format_file(path: str) -> tuple[str, str]:
    """(the file's text as read, its formatted text); CommandError when the file cannot be
    read, is not UTF-8 or has syntax errors (whose diagnostics are printed first)."""
    from ..compiler.check import decode
    from ..dsl.format import FormatError, format_source

    data = read_source(path)
    name = "<stdin>" if path == "-" else path
    text, diagnostics = decode(data, name)
    untouched = "nothing was written" if path == "-" else "it was left as it is"
    if text is None:
        print_diagnostics(diagnostics, None, sys.stderr)
        raise CommandError(f"{name} is not UTF-8 text; {untouched}", EXIT_ERRORS)
    try:
        formatted = format_source(text, name)
    except FormatError as err:
        print_diagnostics(err.diagnostics, text, sys.stderr)
        raise CommandError(f"{name} has syntax errors; {untouched}", EXIT_ERRORS) from None
    except AssertionError as err:  # the formatter's own check of its result failed
        raise CommandError(f"{name}: {err}", EXIT_ERRORS) from None
    # compare with the bytes read: a byte-order mark or CRLF line ends are a change too
    original = data.decode("utf-8")
    return original, formatted


def _rewrite(path: str, text: str) -> None:
    """Replace the file (the file a symbolic link points to, not the link) atomically,
    keeping its permission bits."""
    import os
    import stat

    from ..runtime.files import write_atomically as write_file

    target = os.path.realpath(path)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError as err:
        raise CommandError(f"cannot write {path}: {err.strerror or err}") from None
    try:
        write_file(target, lambda f: f.write(text.encode("utf-8")), mode=mode)
    except OSError as err:
        raise CommandError(f"cannot write {path}: {err.strerror or err}") from None


def _print_diff(path: str, old: str, new: str) -> None:
    import difflib

    name = _shown(path)
    lines = difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                 fromfile=name, tofile=f"{name} (formatted)")
    for line in lines:
        sys.stdout.write(line if line.endswith("\n") else line + "\n\\ No newline at end of "
                         "file\n")


def _write_stdout(text: str) -> None:
    stream = getattr(sys.stdout, "buffer", None)
    if stream is None:
        sys.stdout.write(text)
        return
    sys.stdout.flush()
    stream.write(text.encode("utf-8"))
    stream.flush()


def _shown(path: str) -> str:
    return "<stdin>" if path == "-" else path


def _say(args, line: str) -> None:
    if not args.quiet:
        print(line, file=sys.stderr)


def _summary(changed: int, unchanged: int, failed: int, would: bool) -> str:
    verb = "would be reformatted" if would else "reformatted"
    parts = []
    if changed:
        parts.append(f"{_files(changed)} {verb}")
    if unchanged:
        parts.append(f"{_files(unchanged)} already formatted")
    if failed:
        parts.append(f"{_files(failed)} left as {'it is' if failed == 1 else 'they are'}")
    return ", ".join(parts)


def _files(n: int) -> str:
    return f"{n} file{'s' if n != 1 else ''}"
