"""Argument binding and typing: a call's arguments matched to the parameters of a layer or
block, evaluated, and (for layers) checked against each argument's kind."""

from __future__ import annotations

from ...dsl import syntax as ast
from ...dsl.diagnostics import FOREIGN_ARGUMENTS, foreign_name
from ...ops.base import REQUIRED, ArgSpec
from .report import Reporter, did_you_mean_help
from .values import INVALID, Evaluator, Word, listing, show

FLOAT_KINDS = ("float", "prob", "positive_float", "unit_float")

# Rank-free kinds: an integer (kept an int) or a list of any length >= 1 (made a tuple); the
# layer's shape rule expands an int to its input's spatial rank and checks a list's length.
# Kind -> (the least item, what it takes in words).
RANK_FREE = {
    "ints": (1, "an integer or a list of integers"),
    "dims": (1, "an integer or a list, one per spatial dim"),
    "dpad": (0, "an integer or a list, one per spatial dim"),
    "dcpad": (0, "an integer or a list, one per spatial dim, `same` or `valid`"),
}

# Kinds that also take the words `same` and `valid`: what each word becomes.
PAD_WORDS = {
    "cpad": {"same": "same", "valid": (0, 0)},
    "dcpad": {"same": "same", "valid": 0},
}

# A kind ``choice:w1|w2`` takes one of the words after the colon.
CHOICE = "choice:"

# What an argument of a kind takes, said when it is given a word that names nothing.
WORD_EXPECTED = {
    "cpad": "an integer, a pair, `same` or `valid`",
    "ppad": "an integer or a pair; `same` and `valid` are for conv",
    "dcpad": "an integer, a list, `same` or `valid`",
    "dpad": "an integer or a list; `same` and `valid` are for convolutions",
    "bool": "true or false",
}


class Binder:
    def __init__(self, reporter: Reporter, evaluator: Evaluator):
        self.reporter = reporter
        self.evaluator = evaluator

    def bind(self, call: ast.Call, specs: list, values: dict, what: str):
        """Match a call's arguments to specs (positional, then keyword) and evaluate them:
        ``(value by name, span by name)``, or None after reporting a mismatch. A missing
        argument with a default gets the default itself, unevaluated."""
        report = self.reporter.report
        given: dict = {}
        ok = True
        names = [s.name for s in specs]
        positional = [a for a in call.args if a.name is None]
        if len(positional) > len(specs):
            extra = positional[len(specs)]
            report("E209", extra.span, what=what, count=len(specs),
                   s="s" * (len(specs) != 1), names=", ".join(names) if names else "none",
                   given=len(positional))
            ok = False
        seen_keyword = False
        index = 0
        for arg in call.args:
            if arg.name is None:
                if seen_keyword:
                    report("E209", arg.span, variant="after_keyword",
                           help="put positional arguments first")
                    ok = False
                    continue
                if index < len(specs):
                    given[specs[index].name] = arg
                index += 1
                continue
            seen_keyword = True
            if arg.name not in names:
                foreign = foreign_name(arg.name, names, FOREIGN_ARGUMENTS)
                guess = (f"did you mean `{foreign[0]}`?" if foreign is not None
                         else did_you_mean_help(arg.name, names))
                listed = ", ".join(names) if names else "none"
                report("E205", arg.name_span or arg.span, what=what, name=arg.name,
                       notes=[f"its arguments are: {listed}"], help=guess)
                ok = False
                continue
            if arg.name in given:
                report("E210", arg.span, name=arg.name, what=what,
                       notes=[f"first given at {given[arg.name].span.at()}"])
                ok = False
                continue
            given[arg.name] = arg
        out: dict = {}
        spans: dict = {}
        for spec in specs:
            arg = given.get(spec.name)
            if arg is None:
                if spec.default is REQUIRED:
                    sig = ", ".join(s.name for s in specs if s.default is REQUIRED)
                    report("E204", call.span, what=what, name=spec.name,
                           help=f"call it as {call.name}({sig}, ...)")
                    ok = False
                out[spec.name] = spec.default
                continue
            spans[spec.name] = arg.value.span
            out[spec.name] = self.evaluator.value(arg.value, values)
        return (out, spans) if ok else None

    def layer_args(self, layer, call: ast.Call, values: dict) -> dict | None:
        """A layer call's arguments, bound, typed and normalised, then checked across each
        other by the layer's ``check_args`` hook; None when any is wrong (reported)."""
        bound = self.bind(call, layer.args, values, f"`{layer.name}`")
        if bound is None:
            return None
        given, spans = bound
        args = {}
        for spec in layer.args:
            args[spec.name] = self.convert(spec, given[spec.name], spans.get(spec.name),
                                           layer.name, values)
        if INVALID in args.values():
            return None
        if layer.check_args is not None:
            return layer.check_args(args, spans, call.span, self.reporter.say)
        return args

    def convert(self, spec: ArgSpec, value, span, what: str, values: dict):
        """Check one layer argument's type and range; return the normalised value."""
        kind = spec.kind
        label = f"{what} {spec.name}"
        if value is INVALID or value is REQUIRED:
            return INVALID
        if value is None:
            return None
        if kind.startswith(CHOICE):
            return self.choice(kind[len(CHOICE):].split("|"), label, value, span)
        if isinstance(value, Word):
            words = PAD_WORDS.get(kind, {})
            if value.name in words:
                return words[value.name]
            self.evaluator.undefined(value, values, WORD_EXPECTED.get(kind, ""))
            return INVALID
        if kind in RANK_FREE:
            return self.rank_free(kind, label, value, span)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            return self.bad_type(label, "true or false", value, span)
        if kind in FLOAT_KINDS:
            return self.real(kind, label, value, span)
        minimum = 0 if kind in ("cpad", "ppad") else 1
        if kind == "count":
            return self.integer(label, value, span, minimum)
        if kind == "natural":
            return self.integer(label, value, span, 0)
        if kind == "cpad" and not isinstance(value, list) and (
                isinstance(value, bool) or not isinstance(value, int)):
            return self.bad_type(label, "an integer, a pair [h, w], `same` or `valid`", value,
                                 span)
        # pair-like: an integer or a list of two
        if isinstance(value, list):
            if len(value) != 2:
                return self.bad_type(label, "an integer or a pair [h, w]", value, span)
            items = [self.integer(label, v, span, minimum) for v in value]
            if INVALID in items:
                return INVALID
            return tuple(items)
        single = self.integer(label, value, span, minimum)
        return INVALID if single is INVALID else (single, single)

    def choice(self, words: list, label: str, value, span):
        """A word from a fixed set (``approximate=tanh``): the word itself, as a str. A
        default given as a str is taken as written."""
        if isinstance(value, str) and value in words:
            return value
        choices = listing([f"`{w}`" for w in words], "or")
        if not isinstance(value, Word):
            return self.bad_type(label, choices, value, span)
        if value.name in words:
            return value.name
        self.reporter.report("E207", span, variant="choice", label=label, choices=choices,
                             value=value.name, help=did_you_mean_help(value.name, words))
        return INVALID

    def rank_free(self, kind: str, label: str, value, span):
        """An integer (kept) or a list of any length >= 1 (a tuple), each item at least the
        kind's minimum."""
        minimum, expected = RANK_FREE[kind]
        if isinstance(value, list):
            if not value:
                return self.bad_type(label, expected, value, span)
            items = [self.integer(label, v, span, minimum) for v in value]
            return INVALID if INVALID in items else tuple(items)
        if isinstance(value, bool) or not isinstance(value, int):
            return self.bad_type(label, expected, value, span)
        return self.integer(label, value, span, minimum)

    def real(self, kind, label, value, span):
        """A float argument: finite, and in the range its kind allows."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return self.bad_type(label, "a number", value, span)
        value = float(value)
        variant = None
        if value != value or value in (float("inf"), float("-inf")):
            variant = "finite"
        elif kind == "prob" and not 0.0 <= value < 1.0:
            variant = "probability"
        elif kind == "positive_float" and value <= 0:
            variant = "positive"
        elif kind == "unit_float" and not 0.0 <= value <= 1.0:
            variant = "unit"
        if variant is not None:
            self.reporter.report("E207", span, variant=variant, label=label, value=value)
            return INVALID
        return value

    def integer(self, label, value, span, minimum):
        if isinstance(value, bool) or not isinstance(value, int):
            return self.bad_type(label, "an integer", value, span)
        if value < minimum:
            self.reporter.report("E207", span, label=label, minimum=minimum, value=value)
            return INVALID
        return value

    def bad_type(self, label, expected, value, span):
        self.reporter.report("E206", span, label=label, expected=expected, value=show(value))
        return INVALID

