"""Where the passes send their problems: one `Diagnostic` per code, place and message."""

from __future__ import annotations

from ...dsl.diagnostics import CODES, Diagnostic, Span, did_you_mean


class Reporter:
    """The diagnostics of one check, in the order found, without repeats.

    ``trace`` is the block calls being expanded (outermost first): each diagnostic gets a
    note per call, so a problem inside a block says which call made it.
    """

    def __init__(self, file: str):
        self.file = file
        self.diagnostics: list[Diagnostic] = []
        self.trace: tuple = ()
        self._seen: set = set()

    def report(self, code: str, span: Span | None, *, variant: str | None = None, notes=(),
               help: str | None = None, **values) -> None:
        """A problem of ``code``: its message is the code's template (or ``variant``'s)
        filled in with ``values``."""
        self.say(code, CODES[code].format(variant, **values), span, notes=notes, help=help)

    def say(self, code: str, message: str, span: Span | None, *, notes=(),
            help: str | None = None) -> None:
        """A problem of ``code`` whose message is already written: the ``report`` of the
        layers' ``check_args`` and ``lint`` hooks (``notes`` and ``help`` by keyword)."""
        if code not in CODES:
            raise KeyError(f"diagnostic code {code} is not in the registry")
        key = (code, span, message)
        if key in self._seen:
            return
        self._seen.add(key)
        notes = list(notes)
        for block, call_span in reversed(self.trace):
            notes.append(f"in block `{block}` called at {call_span.at()}")
        self.diagnostics.append(Diagnostic(code, message, span, notes, help, self.file))

    def found(self, code: str) -> bool:
        return any(d.code == code for d in self.diagnostics)


def did_you_mean_help(name: str, candidates) -> str | None:
    """``did you mean `x`?`` for the candidate nearest a misspelt ``name``, if one is near."""
    guess = did_you_mean(name, candidates)
    return f"did you mean `{guess}`?" if guess else None
