"""Syntax diagnostics (E1xx) of the .cnn language: spec sections 2 and 6.

Every case is a small broken source; each test pins the code, the place (line and column,
counting from 1) and the words of the message: what was found and what was expected.
"""

import pytest

from cnnc.compiler.check import check_bytes, check_source
from cnnc.dsl.diagnostics import CODES, render
from cnnc.dsl.parser import MAX_DEPTH, RESERVED

HEAD = "input x: [3, 8, 8]\n"


def diagnose(text):
    return check_source(text, "m.cnn").diagnostics


def only(text, code):
    """The one diagnostic of `text`, which must carry `code`."""
    diags = diagnose(text)
    assert [d.code for d in diags] == [code], [(d.code, d.message) for d in diags]
    return diags[0]


def at(diag):
    return (diag.span.line, diag.span.column)


# ---- E101 unexpected token ------------------------------------------------------------------

def test_fat_arrow_instead_of_arrow():
    d = only(HEAD + "output y = x => relu\n", "E101")
    assert at(d) == (2, 14)
    assert d.message == "unexpected `=`; expected `(`, `->` or a new statement"
    assert d.help == "stages are joined with `->`, not `=>`"


def test_colon_for_keyword_argument():
    d = only(HEAD + "output y = x -> conv(8, 3, stride: 2)\n", "E101")
    assert at(d) == (2, 34)
    assert d.message.startswith("unexpected `:`; expected ")
    # the expected tokens are written as a reader spells them
    assert "`)`" in d.message and "`,`" in d.message and "`=`" in d.message
    assert d.help == "keyword arguments use `=`, as in `stride=2`"


def test_missing_comma_between_arguments():
    d = only(HEAD + "output y = x -> conv(8 3)\n", "E101")
    assert at(d) == (2, 24)
    assert d.message == "unexpected `3`; expected `)`, `*`, `+`, `,`, `-` or `//`"
    assert d.help == "close the argument list with `)` or separate arguments with `,`"


def test_unclosed_argument_list_before_arrow():
    d = only(HEAD + "output y = x -> conv(8, 3 -> relu\n", "E101")
    assert at(d) == (2, 27)
    assert d.span.end_column == 29  # the whole `->`
    assert d.message == "unexpected `->`; expected `)` or `,`"


def test_unclosed_list():
    d = only(HEAD + "output y = x -> conv(8, [3, 3) -> relu\n", "E101")
    assert at(d) == (2, 30)
    assert d.message == "unexpected `)`; expected `,` or `]`"


def test_two_stages_without_arrow():
    d = only(HEAD + "output y = x -> conv(8, 3) 3\n", "E101")
    assert at(d) == (2, 28)
    assert d.message == "unexpected `3`; expected `*`, `->`, `as` or a new statement"
    assert d.help == "stages of a chain are joined with `->`"


def test_binding_continued_on_next_line_with_equals():
    d = only(HEAD + "output y = x -> relu\n  = x\n", "E101")
    assert at(d) == (3, 3)
    assert "a new statement" in d.message
    assert d.help.startswith("a binding needs a line of its own")


def test_missing_colon_in_input():
    d = only("input x [3, 8, 8]\n", "E101")
    assert at(d) == (1, 9)
    assert d.message == "unexpected `[`; expected `:`"


def test_stray_closing_brace():
    d = only(HEAD + "output y = x -> relu\n}\n", "E101")
    assert at(d) == (3, 1)
    assert d.message == "unexpected `}`; expected a new statement"


def test_block_without_return():
    src = HEAD + "block b(c) {\n  y = in -> relu\n}\noutput z = x -> b(1)\n"
    d = only(src, "E101")
    assert at(d) == (4, 1)
    assert d.message == "unexpected `}`; expected `let`, `return` or a name"
    assert d.help == "a block must end with `return CHAIN`"


def test_unclosed_block_runs_into_next_statement():
    src = HEAD + "block b(c) {\n  return in\n\noutput y = x -> b(1)\n"
    d = only(src, "E101")
    assert at(d) == (5, 1)
    assert d.message == "unexpected `output`; expected `}`"


@pytest.mark.parametrize(
    "line, column, word",
    [
        ("input in: [3, 8, 8]", 7, "in"),
        ("let block = 3", 5, "block"),
        ("let true = 3", 5, "true"),
        ("return = x -> relu", 1, "return"),
        ("output y = x -> relu as output", 25, "output"),
        ("block b(in) {\n return in\n}", 9, "in"),
    ],
)
def test_reserved_word_as_a_name(line, column, word):
    d = only(HEAD + line + "\n", "E101")
    assert at(d) == (2, column)
    assert d.span.end_column == column + len(word)
    assert d.message == f"unexpected `{word}`; expected a name"
    assert d.help == f"`{word}` is a reserved word; choose another name"


def test_reserved_word_as_the_network_name():
    d = only("network input\n" + HEAD + "output y = x\n", "E101")
    assert at(d) == (1, 9)
    assert d.message == "unexpected `input`; expected a name"


def test_reserved_words_are_those_of_the_spec():
    # spec section 2
    assert RESERVED == {"network", "input", "output", "block", "return", "in", "let", "true",
                        "false"}


def test_reserved_word_as_a_value_is_a_syntax_error():
    d = only(HEAD + "let c =\noutput y = x\n", "E101")
    assert at(d) == (3, 1)
    assert "`output`" in d.message
    assert "reserved word" in d.help


def test_missing_arrow_before_a_call():
    d = only(HEAD + "output y = x -> conv(8, 3) conv(8, 3)\n", "E101")
    assert d.span.line == 2
    assert d.help is not None and "->" in d.help


@pytest.mark.xfail(strict=True, reason="a chain starting with a layer call with arguments, "
                   "`conv(x, 3)`, is read as a merge; no hint to write `x -> conv(...)`")
def test_chain_starting_with_a_layer_call():
    d = only(HEAD + "output y = conv(x, 3)\n", "E101")
    assert at(d) == (2, 20)
    assert d.help is not None and "x -> conv" in d.help


# ---- E102 unexpected end of file --------------------------------------------------------------

def test_end_of_file_inside_argument_list():
    d = only(HEAD + "output y = x -> conv(8, 3\n", "E102")
    assert at(d) == (2, 26)  # just after the last character, so the line can be shown
    assert d.message == "unexpected end of file; expected `)` or `,`"


def test_end_of_file_after_arrow():
    d = only(HEAD + "output y = x ->\n", "E102")
    assert at(d) == (2, 16)
    assert d.message == "unexpected end of file; expected a name"


def test_end_of_file_in_expression():
    d = only(HEAD + "output y = x\nlet c = 2 *\n", "E102")
    assert at(d) == (3, 12)
    assert d.message.startswith("unexpected end of file; expected `(`, `-`")
    assert "an integer" in d.message and "a name" in d.message


def test_unclosed_block_at_end_of_file():
    d = only(HEAD + "block b(c) {\n  y = in -> conv(c, 1)\n  return y\n", "E102")
    assert at(d) == (4, 11)
    assert d.message == "unexpected end of file; expected `}`"
    assert d.help == "a block ends with `return CHAIN` and a closing `}`"


def test_unclosed_block_without_return_at_end_of_file():
    d = only(HEAD + "block b(c) {\n  y = in -> conv(c, 1)\n", "E102")
    assert at(d) == (3, 23)
    assert d.message == "unexpected end of file; expected `let`, `return` or a name"
    assert d.help is not None and "return" in d.help and "}" in d.help


# ---- E103 invalid character ---------------------------------------------------------------------

@pytest.mark.parametrize(
    "stage, column, shown, help_part",
    [
        ('conv(8, 3, pad="same")', 32, '"', "write `pad=same`"),
        ("conv(8, 3) -> 'relu'", 31, "'", "enum values are bare words"),
        ("dense(10 / 2)", 26, "/", "integer division is `//`"),
        ("dense(10);", 26, ";", "statements need no separator"),
        ("stem.conv1", 21, ".", "names cannot contain `.`"),
        ("dense(10) > relu", 27, ">", "stages are joined with `->`"),
    ],
)
def test_invalid_character(stage, column, shown, help_part):
    d = only(HEAD + f"output y = x -> {stage}\n", "E103")
    assert at(d) == (2, column)
    assert d.span.end_column == column + 1
    assert d.message == f"invalid character `{shown}`"
    assert help_part in d.help


def test_invalid_character_without_a_hint():
    d = only(HEAD + "output y = x -> dense(10) @\n", "E103")
    assert at(d) == (2, 27)
    assert d.message == "invalid character `@`"
    assert d.help is None


def test_non_ascii_letter_in_a_name():
    d = only(HEAD + "output y = x -> relu\u00e9\n", "E103")
    assert at(d) == (2, 21)
    assert d.message == "invalid character `\u00e9`"


def test_tab_counts_as_one_column():
    d = only(HEAD + "\toutput y = x -> dense(10) > relu\n", "E103")
    assert at(d) == (2, 28)


# ---- E104 not UTF-8 -----------------------------------------------------------------------------

def test_latin1_byte_in_a_comment():
    data = (HEAD + "output y = x -> relu  # caf\xe9\n").encode("latin-1")
    net, text = check_bytes(data, "m.cnn")
    assert text is None
    [d] = net.diagnostics
    assert d.code == "E104"
    assert at(d) == (2, 28)
    offset = data.index(b"\xe9")
    assert d.message == f"byte 0xe9 at offset {offset} is not valid UTF-8"
    assert d.help == "save the file as UTF-8"
    assert d.file == "m.cnn"


def test_bad_byte_after_a_multibyte_character():
    data = (HEAD + "output y = x -> relu  # \u00e9").encode("utf-8") + b"\xe9\n"
    net, _ = check_bytes(data, "m.cnn")
    [d] = net.diagnostics
    assert d.code == "E104"
    # `output y = x -> relu  # ` is 24 characters, then `é`: the bad byte is character 26
    assert at(d) == (2, 26)


def test_byte_order_mark_is_skipped():
    data = "\ufeff".encode("utf-8") + (HEAD + "output y = x -> relu\n").encode("utf-8")
    net, text = check_bytes(data, "m.cnn")
    assert net.diagnostics == []
    assert text.startswith("input")


# ---- E105 nesting too deep ----------------------------------------------------------------------

def test_parentheses_nested_too_deep():
    depth = MAX_DEPTH + 50
    expr = "(" * depth + "1" + ")" * depth
    d = only(HEAD + f"output y = x -> dense({expr})\n", "E105")
    assert d.message == f"expression nested deeper than {MAX_DEPTH} levels"
    assert d.span.line == 2
    # the span starts inside the argument list, at the parenthesis that goes past the limit
    assert 23 <= d.span.column < 23 + depth


def test_lists_nested_too_deep():
    depth = MAX_DEPTH + 1
    value = "[" * depth + "1" + "]" * depth
    d = only(HEAD + f"output y = x -> conv(8, {value})\n", "E105")
    assert d.message == f"expression nested deeper than {MAX_DEPTH} levels"


def test_nesting_at_the_limit_is_accepted():
    expr = "(" * (MAX_DEPTH - 1) + "10" + ")" * (MAX_DEPTH - 1)
    net = check_source(HEAD + f"output y = x -> flatten -> dense({expr})\n", "m.cnn")
    assert net.diagnostics == []


# ---- rendering ---------------------------------------------------------------------------------

def test_syntax_error_renders_with_carets():
    src = HEAD + "output y = x => relu\n"
    [d] = diagnose(src)
    assert render(d, src) == "\n".join([
        "m.cnn:2:14: error[E101]: unexpected `=`; expected `(`, `->` or a new statement",
        "  |",
        "2 | output y = x => relu",
        "  |              ^",
        "  = help: stages are joined with `->`, not `=>`",
    ])


def test_every_syntax_code_is_registered():
    for code in ("E101", "E102", "E103", "E104", "E105"):
        assert code in CODES
