"""`cnnc lsp`: the language server for editors, over standard input and output.

    cnnc lsp                 # started by the editor, not by hand (docs/editors.md)

It needs pygls and lsprotocol, the `lsp` extra: ``pip install 'cnnc[lsp]'``.
"""

from __future__ import annotations

import sys

from .common import CommandError


def add_parser(sub):
    parser = sub.add_parser(
        "lsp", help="run the language server for editors (over stdio)",
        description="Run the language server for .cnn files on standard input and output: "
        "diagnostics while typing, hover with shapes and costs, go to definition, "
        "references, rename, completion, outline, formatting and quick fixes. An editor starts it; "
        "see docs/editors.md. Needs the lsp extra: pip install 'cnnc[lsp]'.",
    )
    parser.add_argument("--stdio", action="store_true",
                        help="talk over standard input and output (the default and only "
                        "transport; accepted because some editors pass it)")
    parser.add_argument("--log", metavar="FILE",
                        help="append the server's log to FILE (for reporting a problem)")
    return parser


def main(args) -> int:
    try:
        import pygls  # noqa: F401 - only whether they are there
        import lsprotocol  # noqa: F401
    except ImportError as err:
        raise CommandError(f"cnnc lsp needs the {err.name} package, which is not installed: "
                           "pip install 'cnnc[lsp]'") from None
    if args.log:
        import logging

        try:
            logging.basicConfig(filename=args.log, level=logging.INFO,
                                format="%(asctime)s %(name)s %(levelname)s %(message)s")
        except OSError as err:
            raise CommandError(f"cannot write {args.log}: {err.strerror or err}") from None
    if sys.stdin is not None and sys.stdin.isatty():
        print("cnnc lsp: a language server, started by an editor and spoken to in JSON-RPC on "
              "standard input and output; see docs/editors.md for VS Code, Neovim and Emacs. "
              "Ctrl-D ends it.", file=sys.stderr)
    from ..lsp.server import serve

    return serve()
