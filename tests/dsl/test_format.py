"""`cnnc fmt` and `dsl.format.format_source`: the one canonical layout of .cnn text
(docs/formatting.md).

Golden cases (inline, and format_cases/NAME.in.cnn -> NAME.out.cnn) pin the layout of every
construct of the language and of comments in awkward places; property tests check, over the
examples and generated files, that formatting is idempotent, independent of the input's
layout, and never changes the checked network; the command is driven through
`cnnc.cli.main`.

The property tests make 400 + 200 + 40 files by default (about 30 s of CPU); set
CNNC_FMT_EXAMPLES=N for N + N/2 + N/10 (N=2500 passed when they were written).
"""

from __future__ import annotations

import io
import os
import random
import re
import stat
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnc.cli import main
from cnnc.compiler.check import check_source
from cnnc.dsl.diagnostics import render, source_lines
from cnnc.dsl.format import INDENT, WIDTH, FormatError, format_source

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("**/*.cnn"))
CASES = Path(__file__).with_name("format_cases")
GOLDEN = sorted(CASES.glob("*.in.cnn"))


def fmt(text: str) -> str:
    return format_source(textwrap.dedent(text))


def same(text: str) -> str:
    return textwrap.dedent(text)


# ---- layout of every construct -----------------------------------------------------------------

LAYOUT = {
    "spacing around -> , = : and brackets": (
        "network   n\ninput x : [ 3 , 32 , 32 ]\noutput  y=x->relu->conv( 8,3 ,pad = 1 )\n",
        """\
        network n
        input x: [3, 32, 32]
        output y = x -> relu -> conv(8, 3, pad=1)
        """),
    "every statement": (
        "network n\ninput a: [3, H, W]\ninput v: [16]\nlet c = 8\nlet r = 1e-4\n"
        "let on = true\nlet sizes = [1,[2 ,3]]\nh = a -> conv(c, 3)\noutput h\n  -> relu\n"
        "output named = v -> dense(10)\n",
        """\
        network n
        input a: [3, H, W]
        input v: [16]
        let c = 8
        let r = 1e-4
        let on = true
        let sizes = [1, [2, 3]]
        h = a -> conv(c, 3)
        output h -> relu
        output named = v -> dense(10)
        """),
    "values keep their spelling; operators get spaces, a sign none": (
        "let a = -(2+3)*4//2 - -1\nlet b = .5\nlet c = [ ]\nlet d = (((1)))\n"
        "let e = false\nlet f = 1E-3\n",
        """\
        let a = -(2 + 3) * 4 // 2 - -1
        let b = .5
        let c = []
        let d = (((1)))
        let e = false
        let f = 1E-3
        """),
    "stages: calls, `()` dropped, repeats and names": (
        "input x: [3, 8, 8]\noutput y = x -> relu() -> conv(8, 3) * 2 as c -> unit(4)*n->"
        "pool as p\n",
        """\
        input x: [3, 8, 8]
        output y = x -> relu -> conv(8, 3) * 2 as c -> unit(4) * n -> pool as p
        """),
    "merges, trailing comma dropped": (
        "input x: [3, 8, 8]\na = concat( x,x ) -> relu\nb = add(x ,a,) -> mul(a,b)\n"
        "output mul(a, b)\n",
        """\
        input x: [3, 8, 8]
        a = concat(x, x) -> relu
        b = add(x, a) -> mul(a, b)
        output mul(a, b)
        """),
    "blocks: body indented, `()` dropped, a blank line around each": (
        "block unit(c, k=3, s = 1,) {\n\n\n  y = in->conv(c,k,stride=s)\n   let m = c//2\n"
        "  return add(y,in)\n\n}\nblock plain() { return in->relu }\nblock bare { return in }\n",
        """\
        block unit(c, k=3, s=1) {
            y = in -> conv(c, k, stride=s)
            let m = c // 2
            return add(y, in)
        }

        block plain {
            return in -> relu
        }

        block bare {
            return in
        }
        """),
    "a chain too long for one line: one stage per line": (
        "input image: [3, 224, 224]\nfeatures = image -> conv(64, 11, stride=4, pad=2) -> relu"
        " -> maxpool(3, stride=2) -> conv(192, 5, pad=2) -> relu\nshort = features\n -> relu\n",
        """\
        input image: [3, 224, 224]
        features = image
            -> conv(64, 11, stride=4, pad=2)
            -> relu
            -> maxpool(3, stride=2)
            -> conv(192, 5, pad=2)
            -> relu
        short = features -> relu
        """),
    "a chain inside a block continues one level deeper": (
        "block b(c) {\n body = in -> conv(c, 3, stride=2, pad=1, bias=false) -> batchnorm -> "
        "relu -> conv(c, 3, pad=1, bias=false)\n return body\n}\n",
        """\
        block b(c) {
            body = in
                -> conv(c, 3, stride=2, pad=1, bias=false)
                -> batchnorm
                -> relu
                -> conv(c, 3, pad=1, bias=false)
            return body
        }
        """),
    "arguments too long for one line: one per line, with a trailing comma": (
        "input x: [3, 8, 8]\noutput y = x -> conv(out=123456789, kernel=[1234567, 1234567], "
        "stride=[1234567, 1234567], pad=[1234567, 1234567])\n",
        """\
        input x: [3, 8, 8]
        output y = x
            -> conv(
                out=123456789,
                kernel=[1234567, 1234567],
                stride=[1234567, 1234567],
                pad=[1234567, 1234567],
            )
        """),
    "blank lines: at most one, none at the ends": (
        "\n\n\nnetwork n\n\n\n\ninput x: [3, 8, 8]\ny = x -> relu\nblock b { return in }\n"
        "output y -> b\n\n\n",
        """\
        network n

        input x: [3, 8, 8]
        y = x -> relu

        block b {
            return in
        }

        output y -> b
        """),
    "nothing at all": ("\n \n\t\n", ""),
}


@pytest.mark.parametrize("before, after", LAYOUT.values(), ids=list(LAYOUT))
def test_layout(before, after):
    assert format_source(before) == textwrap.dedent(after)


def test_a_chain_of_exactly_the_width_stays_on_one_line():
    line = "y = x -> conv(8, 3)"
    while len(line) + len(" -> relu") + len(" -> r") <= WIDTH:
        line += " -> relu"
    line += " -> " + "r" * (WIDTH - len(line) - len(" -> "))
    assert len(line) == WIDTH
    assert format_source(line + "\n") == line + "\n"
    longer = line + "r"
    broken = longer.replace(" -> ", "\n" + " " * INDENT + "-> ")
    assert format_source(longer + "\n") == broken + "\n"


def test_tabs_and_crlf_line_ends():
    assert format_source("input x: [3, 8, 8]\r\n\ty = x ->\trelu  # a\r\n") == (
        "input x: [3, 8, 8]\ny = x -> relu  # a\n")


def test_byte_order_mark_is_dropped():
    assert format_source("\ufeffinput x: [3, 8, 8]\n") == "input x: [3, 8, 8]\n"


# ---- comments --------------------------------------------------------------------------------

COMMENTS = {
    "header, trailing and own-line comments; trailing ones aligned": (
        """\
        # header

        # more header
        network n # the name
        input x: [3, 8, 8]      # an input
        # before y
        y = x -> relu # y
        """,
        """\
        # header

        # more header
        network n           # the name
        input x: [3, 8, 8]  # an input
        # before y
        y = x -> relu  # y
        """),
    "a chain that fits breaks only where its comments are": (
        """\
        y = x
            -> conv(64, 3) -> relu # first
            -> relu
            # the last one
            -> maxpool(2)
        """,
        """\
        y = x -> conv(64, 3) -> relu  # first
            -> relu
            # the last one
            -> maxpool(2)
        """),
    "a chain too long with comments: one stage per line, the comments after theirs": (
        """\
        features = image
            -> conv(64, 11, stride=4, pad=2) -> relu -> maxpool(3, stride=2)     # [64, 27, 27]
            -> conv(192, 5, pad=2) -> relu -> maxpool(3, stride=2)               # [192, 13, 13]
        """,
        """\
        features = image
            -> conv(64, 11, stride=4, pad=2)
            -> relu
            -> maxpool(3, stride=2)  # [64, 27, 27]
            -> conv(192, 5, pad=2)
            -> relu
            -> maxpool(3, stride=2)  # [192, 13, 13]
        """),
    "comments in an argument list, before its closing bracket": (
        """\
        y = x -> conv(64, # out
           3,
           # before pad
           pad = 1 ,
           # before )
           )
        """,
        """\
        y = x
            -> conv(
                64,  # out
                3,
                # before pad
                pad=1,
                # before )
            )
        """),
    "comments in a block: after `{`, before `}`, no blank line at its start": (
        """\
        block b(c) {   # open

          # first
          y = in -> relu   # y
          return y
          # before }
        }
        """,
        """\
        block b(c) {  # open
            # first
            y = in -> relu  # y
            return y
            # before }
        }
        """),
    "comments between a block and what follows get a blank line before them": (
        """\
        block b { return in }
        # about y
        y = x -> b
        """,
        """\
        block b {
            return in
        }

        # about y
        y = x -> b
        """),
    "comments at the end of the file": (
        """\
        y = x -> relu
        # end 1


        # end 2
        """,
        """\
        y = x -> relu
        # end 1

        # end 2
        """),
    "an own-line comment hanging deeper than the code around it is the line's": (
        """\
        s2 = s1 -> down(192) -> cn(192, 3)
                                             # [192, 28, 28]
        s3 = s2 -> relu
        """,
        """\
        s2 = s1 -> down(192) -> cn(192, 3)  # [192, 28, 28]
        s3 = s2 -> relu
        """),
    "comments where nothing may break move to the end of the line": (
        """\
        let k = 4 * # times
          2
        network # keyword
          n
        """,
        """\
        let k = 4 * 2  # times
        network n      # keyword
        """),
    "comments on dropped tokens: a trailing comma, an empty ()": (
        """\
        input x: [3, 8, 8, # last dim
        ]
        y = x -> relu( # empty
        ) -> tanh
        """,
        """\
        input x: [
            3,
            8,
            8,         # last dim
        ]
        y = x -> relu  # empty
            -> tanh
        """),
    "an own-line comment inside an expression goes before the item": (
        """\
        y = x -> conv(64, 4 *
        # times c
          c)
        """,
        """\
        y = x
            -> conv(
                64,
                # times c
                4 * c,
            )
        """),
    "a merge broken by a comment": (
        """\
        output o = concat(x, # a
         x) -> relu
        """,
        """\
        output o = concat(
            x,  # a
            x,
        )
            -> relu
        """),
    "only comments": ("# just a note\n\n\n# and another", "# just a note\n\n# and another\n"),
}


@pytest.mark.parametrize("before, after", COMMENTS.values(), ids=list(COMMENTS))
def test_comments(before, after):
    assert fmt(before) == same(after)


@pytest.mark.parametrize("path", GOLDEN, ids=[p.name for p in GOLDEN])
def test_golden_files(path):
    """format_cases/NAME.in.cnn formats to NAME.out.cnn, which is already formatted."""
    expected = path.with_name(path.name.replace(".in.", ".out.")).read_text()
    assert format_source(path.read_text()) == expected
    assert format_source(expected) == expected


def test_the_golden_files_are_there():
    assert GOLDEN, f"no golden cases in {CASES}"


# ---- idempotent, and meaning kept ---------------------------------------------------------------

ALL_CASES = [b for b, _ in LAYOUT.values()] + [textwrap.dedent(b) for b, _ in COMMENTS.values()]


@pytest.mark.parametrize("text", ALL_CASES)
def test_idempotent_on_the_cases(text):
    once = format_source(text)
    assert format_source(once) == once


def network_facts(text: str):
    """What a model means, as the checker sees it: every node's name, op, resolved arguments,
    inputs, output shape and parameters, the inputs, outputs, and the diagnostics' codes. The
    checker never raises, so a generated file that makes it raise fails this test too."""
    net = check_source(text, "m.cnn")
    nodes = [(n.name, n.op, repr(n.args), tuple(n.inputs), repr(n.shape), repr(n.params),
              repr(n.buffers), str(n.param_count), str(n.macs),
              tuple(block for block, _ in n.trace))
             for n in net.nodes.values()]
    return (net.name, nodes, list(net.inputs), dict(net.outputs), net.symbols,
            [(d.code, d.severity) for d in net.diagnostics])


def lexer():
    """A Lark lexer of the grammar, to see a text's tokens and comments as the parser does."""
    global _LEXER
    if _LEXER is None:
        from lark import Lark

        _LEXER = Lark((ROOT / "dsl" / "grammar.lark").read_text(), parser="lalr")
    return _LEXER


_LEXER = None


def comments_of(text: str) -> list[str]:
    """The comments of a text, in order: `#` to the end of the line, outside tokens."""
    return [str(t).rstrip() for t in lexer().lex(text, dont_ignore=True)
            if t.type == "COMMENT"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_keep_their_network_and_comments(path):
    text = path.read_text()
    once = format_source(text)
    assert format_source(once) == once
    assert network_facts(once) == network_facts(text)
    assert comments_of(once) == comments_of(text)  # all of them, in their order
    assert max(len(line) for line in once.splitlines() if "#" not in line) <= WIDTH


def test_files_with_semantic_errors_are_formatted():
    text = "input x: [3, 8, 8]\ny = nowhere->relu\noutput y->conv(8, 30)\n"
    assert format_source(text) == (
        "input x: [3, 8, 8]\ny = nowhere -> relu\noutput y -> conv(8, 30)\n")


# ---- syntax errors are refused with check's diagnostics -----------------------------------------

BROKEN = [
    "input x: [3, 8, 8]\ny = x => relu\n",  # E101
    "input x: [3, 8, 8]\ny = x -> conv(8,\n",  # E102
    "input x: [3, 8, 8]\ny = x -> conv(8, 3); relu\n",  # E103
    "let in = 3\n",  # a reserved word as a name
    "let k = " + "(" * 300 + "1" + ")" * 300 + "\n",  # E105
]


@pytest.mark.parametrize("text", BROKEN)
def test_syntax_errors_are_refused_with_the_diagnostics_of_check(text):
    with pytest.raises(FormatError) as caught:
        format_source(text, "m.cnn")
    checked = check_source(text, "m.cnn").diagnostics
    lines = source_lines(text)
    assert [render(d, lines) for d in caught.value.diagnostics] == [
        render(d, lines) for d in checked]
    assert caught.value.diagnostics[0].code.startswith("E1")


def test_deep_nesting_within_the_limit_formats():
    depth = 190
    text = "let k = " + "[" * depth + "1" + "]" * depth + "\nlet j = " + " + ".join(
        ["1"] * depth) + "\n"
    once = format_source(text)
    assert format_source(once) == once
    assert network_facts(once) == network_facts(text)


# ---- property tests: generated models, random layouts -------------------------------------------

WORD = re.compile(r"[A-Za-z0-9_.]")
LAYERS = ["relu", "tanh", "batchnorm", "flatten", "global_avgpool", "sigmoid", "gelu", "unit"]
CALLS = {  # a layer and argument lists it takes (the generator mixes them, not always validly)
    "conv": [["8", "3"], ["c", "1"], ["4 * c", "3", "pad=1"], ["8", "[3, 1]", "stride=2"],
             ["c", "3", "pad=same", "groups=1", "bias=false"]],
    "maxpool": [["2"], ["3", "stride=2", "pad=1", "ceil=true"], ["kernel=[2, 2]"]],
    "avgpool": [["2"], ["3", "stride=1", "count_pad=false"]],
    "dense": [["10"], ["c + 2", "bias = false"], ["k // 2"]],
    "dropout": [["0.5"], ["p=.25"], ["1e-1"]],
    "leaky_relu": [["alpha=0.1"], ["- ( 1 - 2 ) * 0.01"]],
    "layernorm": [["eps=1e-6"]],
    "scale": [["init=1e-6"], ["bias=true"]],
    "upsample": [["2"], ["[2, 2]", "mode=bilinear"]],
    "unit": [["c"], ["c", "k=3"], ["8", "( k )"]],
}


@st.composite
def stages(draw, sized: bool):
    """The tokens of one stage: a layer or block call, maybe repeated, maybe named."""
    if draw(st.booleans()):
        name = draw(st.sampled_from(LAYERS))
        tokens = [name] + (["(", ")"] if draw(st.booleans()) else [])
    else:
        name = draw(st.sampled_from(sorted(CALLS)))
        args = draw(st.sampled_from(CALLS[name]))
        tokens = [name, "("]
        for i, arg in enumerate(args):
            tokens += ([","] if i else []) + arg.replace("=", " = ").replace("[", "[ ").replace(
                "]", " ]").replace(",", " ,").split()
        tokens += ([","] if draw(st.integers(0, 4)) == 0 else []) + [")"]
    if draw(st.integers(0, 5)) == 0:
        count = draw(st.sampled_from(["2", "k", "( 1 + 1 )"] if sized else ["2"]))
        tokens += ["*", *count.split()]
    if draw(st.integers(0, 6)) == 0:
        tokens += ["as", draw(st.sampled_from(["first", "second", "named"]))]
    return [t for t in tokens if t]


@st.composite
def chains(draw, sources: list[str], sized: bool = False, most: int = 7):
    if len(sources) > 1 and draw(st.integers(0, 3)) == 0:
        merged = draw(st.lists(st.sampled_from(sources), min_size=2, max_size=3))
        tokens = [draw(st.sampled_from(["concat", "add", "mul"])), "("]
        for i, source in enumerate(merged):
            tokens += ([","] if i else []) + [source]
        tokens.append(")")
    else:
        tokens = [draw(st.sampled_from(sources))]
    for _ in range(draw(st.integers(0 if len(tokens) == 1 and not sized else 1, most))):
        tokens += ["->"] + draw(stages(sized))
    return tokens


@st.composite
def models(draw) -> list[str]:
    """The tokens of a model built from every construct of the language: mostly valid, and
    where not, the checker's diagnostics are compared too."""
    tokens: list[str] = []
    if draw(st.booleans()):
        tokens += ["network", "generated"]
    shape = draw(st.sampled_from([["3", ",", "16", ",", "16"], ["3", ",", "H", ",", "W"],
                                  ["12"], ["2", ",", "32"], ["2", ",", "4", ",", "8", ",", "8"]]))
    tokens += ["input", "x", ":", "["] + shape + ([","] if draw(st.booleans()) else []) + ["]"]
    tokens += ["let", "c", "=", draw(st.sampled_from(["8", "2 * 4", "- ( - 8 )", "16 // 2"]))]
    tokens += ["let", "k", "=", draw(st.sampled_from(["3", "1 + 2"]))]
    tokens = [t for piece in tokens for t in piece.split(" ")]
    if draw(st.booleans()):
        params = draw(st.sampled_from([[], ["c"], ["c", ",", "k", "=", "3"], ["c", ","]]))
        tokens += ["block", "unit"] + (["(", *params, ")"] if params or draw(st.booleans())
                                       else []) + ["{"]
        inner = ["in"]
        for name in draw(st.lists(st.sampled_from(["p", "q"]), max_size=2, unique=True)):
            tokens += [name, "="] + draw(chains(inner, most=3))
            inner.append(name)
        tokens += ["return"] + draw(chains(inner, most=3)) + ["}"]
    else:
        tokens += ["block", "unit", "(", "c", ",", "k", "=", "1", ")", "{", "return", "in",
                   "->", "relu", "}"]
    sources = ["x"]
    for name in draw(st.lists(st.sampled_from(["a", "b", "d"]), max_size=3, unique=True)):
        tokens += [name, "="] + draw(chains(sources))
        sources.append(name)
    for i in range(draw(st.integers(1, 2))):
        tokens += ["output"] + ([f"out{i}", "="] if draw(st.booleans()) else [])
        tokens += draw(chains(sources))
    return [t for piece in tokens for t in piece.split(" ") if t]


COMMENT_CHARS = "abc XYZ 019 #->()[]{},=:*/+-_'\"\\\t é€𝄞"
GAPS = [" ", " ", "", "\n", "\n    ", "  ", "\t", "\n\n\n"]


def layout(tokens: list[str], seed: int, comments: bool = True) -> str:
    """The tokens joined by random white space, blank lines and (when ``comments``) comments
    anywhere a comment may go; random from ``seed`` (cheaper than a hypothesis draw per gap,
    and a failure still shows the seed)."""
    rng = random.Random(seed)

    def comment(label: str) -> str:
        return f"# {label} " + "".join(rng.choice(COMMENT_CHARS) for _ in range(rng.randrange(9)))

    out = []
    if comments and rng.randrange(4) == 0:
        out.append(comment("head") + "\n")
    for i, token in enumerate(tokens):
        if i:
            if comments and rng.randrange(10) == 0:
                where = rng.choice([" ", "\n", "\n\n", "\n       "])
                gap = f"{where}{comment(f'c{i}')}\n"
            else:
                gap = rng.choice(GAPS)
            if not gap and WORD.match(out[-1][-1]) and WORD.match(token[0]):
                gap = " "
            out.append(gap)
        out.append(token)
    if comments and rng.randrange(2):
        out.append(rng.choice([" # the end", "\n# the end", "\n\n# the end\n"]))
    return "".join(out)


SEEDS = st.integers(0, 2**32 - 1)
PROPERTY = settings(max_examples=int(os.environ.get("CNNC_FMT_EXAMPLES", "400")),
                    deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@PROPERTY
@given(tokens=models(), seed=SEEDS)
def test_generated_models_keep_their_network_and_format_idempotently(tokens, seed):
    text = layout(tokens, seed)
    once = format_source(text)
    assert format_source(once) == once
    # comments placed where no line may break can change places with a neighbour
    assert sorted(comments_of(once)) == sorted(comments_of(text))
    assert network_facts(once) == network_facts(text)


@settings(PROPERTY, max_examples=PROPERTY.max_examples // 2)
@given(tokens=models(), seed=SEEDS)
def test_the_layout_does_not_depend_on_the_input_layout(tokens, seed):
    """Without comments and blank lines, every way of spacing a model formats alike."""
    text = layout(tokens, seed, comments=False).replace("\n\n\n", "\n")
    assert format_source(text) == format_source(" ".join(tokens))


@settings(PROPERTY, max_examples=max(len(EXAMPLES), PROPERTY.max_examples // 10))
@given(path=st.sampled_from(EXAMPLES), seed=SEEDS)
def test_examples_with_comments_and_white_space_changed(path, seed):
    """An example with random white space and comments put between its tokens."""
    source = path.read_text()
    tokens = [str(t) for t in lexer().lex(source)]
    text = layout(tokens, seed)
    once = format_source(text)
    assert format_source(once) == once
    assert sorted(comments_of(once)) == sorted(comments_of(text))
    assert network_facts(once) == network_facts(source)


# ---- the command --------------------------------------------------------------------------------

UGLY = "input x : [3,8,8]\noutput y=x->relu\n"
PRETTY = "input x: [3, 8, 8]\noutput y = x -> relu\n"


def cnnc(capsys, *argv, stdin: bytes | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_fmt_rewrites_in_place_only_what_changes(tmp_path, capsys):
    ugly = tmp_path / "ugly.cnn"
    pretty = tmp_path / "pretty.cnn"
    ugly.write_text(UGLY)
    pretty.write_text(PRETTY)
    before = pretty.stat()
    status, out, err = cnnc(capsys, "fmt", ugly, pretty)
    assert status == 0
    assert ugly.read_text() == PRETTY
    after = pretty.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert out == ""
    assert err == f"reformatted {ugly}\n1 file reformatted, 1 file already formatted\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_fmt_keeps_permissions_and_symbolic_links(tmp_path, capsys):
    real = tmp_path / "real.cnn"
    link = tmp_path / "link.cnn"
    real.write_text(UGLY)
    real.chmod(0o640)
    link.symlink_to(real)
    status, _, _ = cnnc(capsys, "fmt", link)
    assert status == 0
    assert link.is_symlink()
    assert real.read_text() == PRETTY
    assert stat.S_IMODE(real.stat().st_mode) == 0o640


def test_check_lists_the_files_that_would_change(tmp_path, capsys):
    ugly = tmp_path / "ugly.cnn"
    pretty = tmp_path / "pretty.cnn"
    ugly.write_text(UGLY)
    pretty.write_text(PRETTY)
    status, out, err = cnnc(capsys, "fmt", "--check", ugly, pretty)
    assert status == 1
    assert ugly.read_text() == UGLY
    assert err == f"would reformat {ugly}\n1 file would be reformatted, 1 file already formatted\n"
    assert cnnc(capsys, "fmt", "--check", pretty)[0] == 0


def test_diff_prints_a_unified_diff_and_changes_nothing(tmp_path, capsys):
    ugly = tmp_path / "ugly.cnn"
    ugly.write_text(UGLY)
    status, out, err = cnnc(capsys, "fmt", "--diff", ugly)
    assert status == 0
    assert ugly.read_text() == UGLY
    assert out == (f"--- {ugly}\n+++ {ugly} (formatted)\n@@ -1,2 +1,2 @@\n"
                   "-input x : [3,8,8]\n-output y=x->relu\n"
                   "+input x: [3, 8, 8]\n+output y = x -> relu\n")
    status, out, _ = cnnc(capsys, "fmt", "--diff", "--check", ugly)
    assert status == 1 and out.startswith("---")


def test_standard_input_to_standard_output(capsys, monkeypatch):
    status, out, err = cnnc(capsys, "fmt", "-", stdin=UGLY.encode(), monkeypatch=monkeypatch)
    assert (status, out, err) == (0, PRETTY, "")
    status, out, err = cnnc(capsys, "fmt", "-", stdin=PRETTY.encode(), monkeypatch=monkeypatch)
    assert (status, out, err) == (0, PRETTY, "")
    status, out, err = cnnc(capsys, "fmt", "--check", "-", stdin=UGLY.encode(),
                            monkeypatch=monkeypatch)
    assert (status, out, err) == (1, "", "would reformat <stdin>\n")


def test_syntax_errors_leave_the_file_untouched_with_checks_diagnostic(tmp_path, capsys):
    bad = tmp_path / "bad.cnn"
    good = tmp_path / "good.cnn"
    bad.write_text("input x : [3, 8, 8]\ny = x => relu\n")
    good.write_text(UGLY)
    status, check_out, _ = cnnc(capsys, "check", bad)
    diagnostic = check_out.split("\n\n")[0]
    assert "error[E101]" in diagnostic
    status, out, err = cnnc(capsys, "fmt", bad, good)
    assert status == 1
    assert bad.read_text() == "input x : [3, 8, 8]\ny = x => relu\n"
    assert good.read_text() == PRETTY  # the other file is still formatted
    assert err.startswith(diagnostic + "\n\n")
    assert f"cnnc: error: {bad} has syntax errors; it was left as it is" in err


def test_unreadable_and_undecodable_files(tmp_path, capsys):
    latin = tmp_path / "latin.cnn"
    latin.write_bytes(b"# caf\xe9\ninput x: [3, 8, 8]\n")
    status, out, err = cnnc(capsys, "fmt", tmp_path / "missing.cnn")
    assert status == 2
    assert "cannot read" in err and "missing.cnn" in err
    status, out, err = cnnc(capsys, "fmt", latin)
    assert status == 1
    assert "error[E104]" in err
    assert latin.read_bytes() == b"# caf\xe9\ninput x: [3, 8, 8]\n"
    assert cnnc(capsys, "fmt", tmp_path / "missing.cnn", latin)[0] == 2  # the worst status


def test_standard_input_only_once(capsys, monkeypatch):
    status, out, err = cnnc(capsys, "fmt", "-", "-", stdin=b"", monkeypatch=monkeypatch)
    assert status == 2
    assert "only once" in err


def test_crlf_and_byte_order_mark_count_as_changes(tmp_path, capsys):
    path = tmp_path / "m.cnn"
    path.write_bytes(b"\xef\xbb\xbf" + PRETTY.replace("\n", "\r\n").encode())
    assert cnnc(capsys, "fmt", "--check", path)[0] == 1
    assert cnnc(capsys, "fmt", path)[0] == 0
    assert path.read_bytes() == PRETTY.encode()


def test_quiet(tmp_path, capsys):
    path = tmp_path / "m.cnn"
    path.write_text(UGLY)
    assert cnnc(capsys, "fmt", "-q", path) == (0, "", "")


def test_a_file_that_cannot_be_replaced(tmp_path, capsys, monkeypatch):
    """The rename that puts the new text in place fails (a read-only folder, say): exit 2,
    the file as it was, no temporary file left behind."""
    path = tmp_path / "m.cnn"
    path.write_text(UGLY)

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    status, out, err = cnnc(capsys, "fmt", path)
    assert status == 2
    assert f"cnnc: error: cannot write {path}: Permission denied" in err
    assert path.read_text() == UGLY
    assert [p.name for p in tmp_path.iterdir()] == ["m.cnn"]


def test_check_does_not_load_the_formatter(tmp_path):
    """`cnnc check` stays as fast as before: neither building the command line nor checking a
    file imports dsl.format or Lark's keep-all-tokens parser."""
    import subprocess

    path = tmp_path / "m.cnn"
    path.write_text(PRETTY)
    code = ("import sys\nfrom cnnc.cli import main\nstatus = main(['check', '-q', sys.argv[1]])\n"
            "assert 'cnnc.dsl.format' not in sys.modules, 'dsl.format was imported'\n"
            "assert 'cnnc.commands.fmt' in sys.modules\nsys.exit(status)\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


def test_standard_input_with_a_syntax_error_writes_nothing(capsys, monkeypatch):
    status, out, err = cnnc(capsys, "fmt", "-", stdin=b"y = x => relu\n",
                            monkeypatch=monkeypatch)
    assert status == 1
    assert out == ""
    assert "<stdin>:1:7: error[E101]" in err
    assert err.endswith("cnnc: error: <stdin> has syntax errors; nothing was written\n")
