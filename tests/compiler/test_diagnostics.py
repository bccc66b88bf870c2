"""Checker diagnostics (E2xx names and arguments, E3xx shapes, W4xx warnings): spec section 6.

Each test is a small broken model. It pins the code, the place, and the values the message
must state (the expected and the actual number), and the notes and help where a user needs
them to fix the model. Known gaps are strict xfails whose reason says what is wrong.
"""

import pytest

from cnnc.compiler.check import check_source
from cnnc.compiler.elaborate import MAX_BLOCK_DEPTH
from cnnc.compiler.passes.values import listing
from cnnc.dsl.diagnostics import CODES, Diagnostic, Span, render
from cnnc.ops import MERGES

HEAD = "input x: [3, 8, 8]\n"


def diagnose(text, sizes=None, consts=None):
    return check_source(text, "m.cnn", sizes, consts).diagnostics


def codes(text, sizes=None):
    return [d.code for d in diagnose(text, sizes)]


def only(text, code, sizes=None):
    """The one diagnostic of `text`, which must carry `code`: no cascade, no noise."""
    diags = diagnose(text, sizes)
    assert [d.code for d in diags] == [code], [(d.code, d.message) for d in diags]
    return diags[0]


def pick(diags, code):
    """The one diagnostic with `code` among several."""
    found = [d for d in diags if d.code == code]
    assert len(found) == 1, [(d.code, d.message) for d in diags]
    return found[0]


def at(diag):
    return (diag.span.line, diag.span.column)


# ---- E201 undefined name ------------------------------------------------------------------------

def test_undefined_tensor_with_did_you_mean():
    src = (
        "input image: [3, 8, 8]\n"
        "a = image -> relu\n"
        "b = imag -> tanh\n"
        "output y = concat(a, b)\n"
    )
    d = only(src, "E201")
    assert at(d) == (3, 5)
    assert d.span.end_column == 9
    assert d.message == "undefined name `imag`"
    assert d.help == "did you mean `image`?"


def test_undefined_tensor_without_a_close_name():
    d = only(HEAD + "output y = features -> relu\n" + "output z = x\n", "E201")
    assert at(d) == (2, 12)
    assert d.message == "undefined name `features`"
    assert d.help is None


def test_undefined_constant_with_did_you_mean():
    src = HEAD + "let width = 16\noutput y = x -> conv(widht, 3)\n"
    d = only(src, "E201")
    assert at(d) == (3, 22)
    assert d.message == "undefined name `widht`"
    assert d.help == "did you mean `width`?"


def test_tensor_used_as_an_argument():
    src = HEAD + "feat = x -> relu\noutput y = feat -> conv(feat, 3)\n"
    d = only(src, "E201")
    assert at(d) == (3, 25)
    assert d.notes == ["`feat` is a tensor; arguments take numbers, lists and words"]


def test_block_cannot_see_outer_tensors():
    src = (
        HEAD
        + "feat = x -> relu\n"
        + "block b() {\n"
        + "  return feat -> relu\n"
        + "}\n"
        + "output y = feat -> b\n"
    )
    d = only(src, "E201")
    assert at(d) == (4, 10)
    assert d.notes == ["a block sees only `in`, its own bindings and its parameters",
                       "in block `b` called at 6:20"]
    assert d.help == "pipe the tensor into the block with `->`"


def test_undefined_enum_word_names_the_accepted_values():
    d = only(HEAD + "output y = x -> conv(8, 3, pad=full)\n", "E201")
    assert at(d) == (2, 32)
    assert d.message == "undefined name `full` (expected an integer, a pair, `same` or `valid`)"


def test_constant_used_as_a_tensor():
    src = HEAD + "let c = 3\noutput y = c -> relu\noutput z = x\n"
    d = only(src, "E201")
    assert at(d) == (3, 12)
    assert any("constant" in note for note in d.notes)


# ---- E202 duplicate name ------------------------------------------------------------------------

def test_binding_bound_twice():
    src = HEAD + "feat = x -> relu\nfeat = x -> tanh\noutput y = feat\n"
    d = only(src, "E202")
    assert at(d) == (3, 1)
    assert d.message == "`feat` is already defined"
    assert d.notes == ["first bound at 2:1"]
    assert d.help == "names are bound once; choose a new name"


def test_constant_with_the_name_of_an_input():
    d = only(HEAD + "let x = 16\noutput y = x -> relu\n", "E202")
    assert at(d) == (2, 5)
    assert d.notes == ["first bound at 1:7"]


def test_constant_defined_twice_points_at_the_first():
    src = HEAD + "let width = 16\nlet width = 8\noutput y = x -> conv(width, 3)\n"
    d = only(src, "E202")
    assert at(d) == (3, 5)
    assert d.notes == ["first bound at 2:5"]


def test_block_parameter_given_twice():
    src = HEAD + "block b(c, c) {\n  return in -> conv(c, 1)\n}\noutput y = x -> b(1, 2)\n"
    d = only(src, "E202")
    assert at(d) == (2, 12)
    assert "`c`" in d.message


def test_constant_in_a_block_shadowing_a_parameter():
    src = HEAD + "block b(c) {\n  let c = 2\n  return in -> conv(c, 1)\n}\noutput y = x -> b(1)\n"
    d = only(src, "E202")
    assert at(d) == (3, 7)
    assert d.message == "`c` is already defined"


def test_block_defined_twice():
    src = (
        HEAD
        + "block u() {\n  return in -> relu\n}\n"
        + "block u() {\n  return in -> tanh\n}\n"
        + "output y = x -> u\n"
    )
    d = only(src, "E202")
    assert at(d) == (5, 7)
    assert d.message == "block `u` is defined twice"
    assert d.notes == ["first defined at 2:7"]


def test_block_with_the_name_of_a_layer():
    src = HEAD + "block conv(c) {\n  return in -> relu\n}\noutput y = x -> relu\n"
    d = only(src, "E202")
    assert at(d) == (2, 7)
    assert d.message == "block `conv` has the name of a built-in layer"
    assert d.help == "rename the block, e.g. `my_conv`"


def test_layer_name_taken_twice_with_as():
    d = only(HEAD + "output y = x -> relu as r -> tanh as r\n", "E202")
    assert at(d) == (2, 30)
    assert d.message == "layer name `y.r` is already taken"
    assert d.notes == ["by relu at 2:17"]
    assert d.help == "choose another name with `as`"


def test_output_defined_twice():
    d = only(HEAD + "output y = x -> relu\noutput y = x -> tanh\n", "E202")
    assert at(d) == (3, 8)
    assert d.message == "output `y` is defined twice"


def test_network_named_twice():
    d = only("network a\nnetwork b\n" + HEAD + "output y = x\n", "E202")
    assert at(d) == (2, 9)
    assert d.message == "the network is named twice"


# ---- E203 unknown layer or block ----------------------------------------------------------------

def test_unknown_layers_with_did_you_mean_are_all_reported():
    src = HEAD + "output y = x -> conv(8, 3) -> rleu -> maxpol(2)\n"
    first, second = diagnose(src)
    assert (first.code, at(first), first.message) == (
        "E203", (2, 31), "unknown layer or block `rleu`")
    assert first.help == "did you mean `relu`?"
    assert (second.code, at(second), second.message) == (
        "E203", (2, 39), "unknown layer or block `maxpol`")
    assert second.help == "did you mean `maxpool`?"


def test_unknown_layer_suggests_a_block():
    src = HEAD + "block inception() {\n  return in\n}\noutput y = x -> inceptoin\n"
    d = pick(diagnose(src), "E203")
    assert at(d) == (5, 17)
    assert d.help == "did you mean `inception`?"


def test_tensor_used_as_a_layer():
    d = only(HEAD + "output y = x -> relu -> x\n", "E203")
    assert at(d) == (2, 25)
    assert d.message == "`x` is a tensor, not a layer"
    assert "concat(a, b)" in d.help


def test_merge_used_as_a_stage():
    d = only(HEAD + "output y = x -> relu -> add\n", "E203")
    assert at(d) == (2, 25)
    assert d.message == "`add` is a merge and starts a chain"
    assert d.help == "write `add(a, b)` at the start of a chain"


def test_unknown_merge():
    d = only(HEAD + "output y = stack(x, x)\n", "E203")
    assert at(d) == (2, 12)
    assert d.message == "unknown merge `stack`"
    assert d.help == "merges are " + listing(MERGES)


def test_unknown_merge_with_another_frameworks_name():
    d = only(HEAD + "output y = cat(x, x)\n", "E203")
    assert d.message == "unknown merge `cat`"
    assert d.help == "did you mean `concat`?"


def test_no_cascade_after_an_unknown_last_layer():
    # the output statement is there; its chain failing must not add "no output" (E217)
    assert codes(HEAD + "output y = x -> conv(8, 3) -> rleu\n") == ["E203"]


# ---- E204 missing, E205 unknown, E209 extra, E210 repeated argument -----------------------------

def test_missing_layer_argument():
    d = only(HEAD + "output y = x -> conv(8)\n", "E204")
    assert at(d) == (2, 17)
    assert d.span.end_column == 24  # the whole call, closing parenthesis included
    assert d.message == "`conv` is missing argument `kernel`"
    assert d.help == "call it as conv(out, kernel, ...)"


def test_missing_argument_of_a_bare_layer():
    d = only(HEAD + "output y = x -> flatten -> dense\n", "E204")
    assert at(d) == (2, 28)
    assert d.message == "`dense` is missing argument `out`"


def test_missing_block_argument():
    src = HEAD + "block unit(c, k, s=1) {\n  return in -> conv(c, k, stride=s)\n}\n"
    d = only(src + "output y = x -> unit(4)\n", "E204")
    assert at(d) == (5, 17)
    assert d.message == "block `unit` is missing argument `k`"
    assert d.help == "call it as unit(c, k, ...)"


def test_unknown_argument_lists_the_arguments():
    d = only(HEAD + "output y = x -> conv(8, 3, strid=2)\n", "E205")
    assert at(d) == (2, 28)
    assert d.span.end_column == 33  # the argument's name
    assert d.message == "`conv` has no argument `strid`"
    assert d.notes == ["its arguments are: out, kernel, stride, pad, dilation, groups, bias"]
    assert d.help == "did you mean `stride`?"


def test_unknown_argument_of_a_layer_without_arguments():
    d = only(HEAD + "output y = x -> relu(alpha=0.1)\n", "E205")
    assert d.message == "`relu` has no argument `alpha`"
    assert d.notes == ["its arguments are: none"]


def test_too_many_positional_arguments():
    d = only(HEAD + "output y = x -> conv(8, 3, 1, 0, 1, 1, true, 5)\n", "E209")
    assert at(d) == (2, 46)  # the first argument too many
    assert d.message == (
        "`conv` takes 7 arguments (out, kernel, stride, pad, dilation, groups, bias), got 8")


def test_too_many_block_arguments():
    src = HEAD + "block unit(c, k) {\n  return in -> conv(c, k)\n}\n"
    d = only(src + "output y = x -> unit(4, 3, 2)\n", "E209")
    assert at(d) == (5, 28)
    assert d.message == "block `unit` takes 2 arguments (c, k), got 3"


def test_positional_after_keyword():
    d = only(HEAD + "output y = x -> conv(8, kernel=3, 1)\n", "E209")
    assert at(d) == (2, 35)
    assert d.message == "a positional argument after a keyword argument"
    assert d.help == "put positional arguments first"


def test_keyword_given_twice():
    d = only(HEAD + "output y = x -> conv(8, 3, stride=2, stride=1)\n", "E210")
    assert at(d) == (2, 38)
    assert d.message == "argument `stride` of `conv` is given twice"
    assert d.notes == ["first given at 2:28"]


def test_positional_repeated_as_keyword():
    d = only(HEAD + "output y = x -> conv(8, 3, kernel=5)\n", "E210")
    assert at(d) == (2, 28)
    assert d.message == "argument `kernel` of `conv` is given twice"
    assert d.notes == ["first given at 2:25"]


# ---- E206 ill-typed argument --------------------------------------------------------------------

@pytest.mark.parametrize(
    "stage, column, message",
    [
        ("conv(8, 3, bias=1)", 33, "conv bias expects true or false, got 1"),
        ("dropout(p=true)", 27, "dropout p expects a number, got true"),
        ("conv(2.5, 3)", 22, "conv out expects an integer, got 2.5"),
        ("conv(8, [3, 3, 3])", 25,
         "conv kernel expects an integer or a pair [h, w], got [3, 3, 3]"),
        ("conv(8, 3.0 // 2)", 25, "`//` needs integers, got 3.0 // 2"),
        ("conv(true + 1, 3)", 22, "expected a number in arithmetic, got true"),
        ("maxpool(2, ceil=1)", 33, "maxpool ceil expects true or false, got 1"),
    ],
)
def test_ill_typed_argument(stage, column, message):
    d = only(HEAD + f"output y = x -> {stage}\n", "E206")
    assert at(d) == (2, column)
    assert d.message == message


def test_ill_typed_conv_pad_names_every_accepted_form():
    d = only(HEAD + "output y = x -> conv(8, 3, pad=true)\n", "E206")
    assert at(d) == (2, 32)
    assert "same" in d.message and "valid" in d.message and "pair" in d.message


def test_word_for_a_boolean_argument_names_true_and_false():
    d = only(HEAD + "output y = x -> conv(8, 3, bias=yes)\n", "E201")
    assert at(d) == (2, 33)
    assert "true or false" in " ".join([d.message] + d.notes + [d.help or ""])


def test_pool_pad_same_says_it_is_for_conv():
    d = only(HEAD + "output y = x -> maxpool(3, pad=same)\n", "E201")
    assert at(d) == (2, 32)
    assert "conv" in " ".join([d.message] + d.notes + [d.help or ""])


# ---- E207 invalid value -------------------------------------------------------------------------

@pytest.mark.parametrize(
    "stage, column, message",
    [
        ("conv(8, 0)", 25, "conv kernel must be at least 1, got 0"),
        ("conv(8, [3, 0])", 25, "conv kernel must be at least 1, got 0"),
        ("conv(8, 3, stride=0)", 35, "conv stride must be at least 1, got 0"),
        ("conv(8, 3, groups=0)", 35, "conv groups must be at least 1, got 0"),
        ("conv(8, 3, dilation=0)", 37, "conv dilation must be at least 1, got 0"),
        ("conv(0, 3)", 22, "conv out must be at least 1, got 0"),
        ("conv(8, 3, pad=-1)", 32, "conv pad must be at least 0, got -1"),
        ("dropout(1.0)", 25, "dropout p must be in [0, 1), got 1"),
        ("dropout(-0.1)", 25, "dropout p must be in [0, 1), got -0.1"),
        ("batchnorm(eps=0)", 31, "batchnorm eps must be above 0, got 0"),
        ("batchnorm(momentum=2)", 36, "batchnorm momentum must be in [0, 1], got 2"),
        ("conv(8 // 0, 3)", 27, "division by zero"),
    ],
)
def test_invalid_argument_value(stage, column, message):
    d = only(HEAD + f"output y = x -> {stage}\n", "E207")
    assert at(d) == (2, column)
    assert d.message == message


def test_dropout_p_zero_is_valid():
    assert codes(HEAD + "output y = x -> dropout(0)\n") == []


@pytest.mark.parametrize(
    "stage, column, message, limit",
    [
        ("maxpool(3, pad=2)", 32, "maxpool pad=2 is more than half the kernel 3", 1),
        ("avgpool(2, pad=2)", 32, "avgpool pad=2 is more than half the kernel 2", 1),
        ("maxpool(5, pad=[1, 3])", 32, "maxpool pad=3 is more than half the kernel 5", 2),
        # PyTorch's limit is half the kernel, whatever the dilation
        ("maxpool(3, dilation=2, pad=2)", 44, "maxpool pad=2 is more than half the kernel 3",
         1),
    ],
)
def test_pool_pad_above_half_the_kernel(stage, column, message, limit):
    d = only(HEAD + f"output y = x -> {stage}\n", "E207")
    assert at(d) == (2, column)
    assert d.message == message
    assert d.help == f"use pad={limit} at most; a window must see some input"


def test_pool_pad_of_exactly_half_the_kernel_is_valid():
    assert codes(HEAD + "output y = x -> maxpool(3, stride=1, pad=1)\n") == []


# ---- E208 recursive block -----------------------------------------------------------------------

def test_block_calling_itself():
    src = (
        HEAD
        + "block loop(c) {\n"
        + "  return in -> conv(c, 1) -> loop(c)\n"
        + "}\n"
        + "output y = x -> loop(4)\n"
    )
    d = only(src, "E208")
    assert at(d) == (3, 30)
    assert d.message == "block `loop` calls itself: loop -> loop"
    assert d.help == "a block cannot contain itself; unroll it or use `* N`"


def test_mutually_recursive_blocks():
    src = (
        HEAD
        + "block ping(c) {\n  return in -> pong(c)\n}\n"
        + "block pong(c) {\n  return in -> relu -> ping(c)\n}\n"
        + "output y = x -> ping(4)\n"
    )
    d = only(src, "E208")
    assert at(d) == (6, 24)
    assert d.message == "block `ping` calls itself: ping -> pong -> ping"


# ---- E211 chain start, E212 `in`, E213 repeat, E214 merge arity ---------------------------------

def test_chain_starting_with_a_layer():
    d = only(HEAD + "output y = relu(x)\n", "E211")
    assert at(d) == (2, 12)
    assert d.message == "a chain must start with a tensor or a merge, not the layer `relu`"


def test_chain_starting_with_a_layer_suggests_piping():
    d = only(HEAD + "output y = relu(x)\n", "E211")
    assert d.help == "pipe a tensor into it: `x -> relu`"


def test_chain_starting_with_a_block():
    src = HEAD + "block b() {\n  return in -> relu\n}\noutput y = b(x)\n"
    d = pick(diagnose(src), "E211")
    assert at(d) == (5, 12)
    assert d.message == "a chain must start with a tensor or a merge, not the block `b`"


def test_in_outside_a_block():
    src = HEAD + "output y = in -> relu\noutput z = x\n"
    d = only(src, "E212")
    assert at(d) == (2, 12)
    assert d.span.end_column == 14
    assert d.message == "`in` is only defined inside a block"
    assert d.help == "start the chain with an input or a binding name"


@pytest.mark.parametrize(
    "repeat, column, shown",
    [("0", 24, "0"), ("2.5", 24, "2.5"), ("-1", 24, "-1"), ("true", 24, "true")],
)
def test_invalid_repeat_count(repeat, column, shown):
    d = only(HEAD + f"output y = x -> relu * {repeat}\n", "E213")
    assert at(d) == (2, column)
    assert d.message == f"repeat count must be an integer of at least 1, got {shown}"


def test_repeat_count_from_an_undefined_name():
    d = only(HEAD + "output y = x -> relu * n\n", "E201")
    assert at(d) == (2, 24)
    assert d.message == "undefined name `n` (expected a repeat count)"


def test_repeated_stage_cannot_take_one_name():
    d = only(HEAD + "output y = x -> conv(8, 1) * 2 as c\n", "E213")
    assert at(d) == (2, 35)
    assert d.message == "a stage repeated 2 times cannot take one name `c`"
    assert d.help == "drop `as`; the copies are numbered automatically"


@pytest.mark.parametrize("merge", ["concat", "add"])
def test_merge_with_one_input(merge):
    d = only(HEAD + f"output y = {merge}(x)\n", "E214")
    assert at(d) == (2, 12)
    assert d.message == f"{merge} needs at least two inputs, got 1"


# ---- E215 block nesting -------------------------------------------------------------------------

def _deep_blocks(levels):
    lines = [HEAD.rstrip("\n")]
    for i in range(levels):
        lines.append(f"block b{i}() {{ return in -> b{i + 1} }}")
    lines.append(f"block b{levels}() {{ return in -> relu }}")
    lines.append("output y = x -> b0")
    return "\n".join(lines) + "\n"


def test_blocks_nested_too_deeply():
    src = _deep_blocks(MAX_BLOCK_DEPTH + 6)
    d = pick(diagnose(src), "E215")
    assert d.message == f"block calls nested deeper than {MAX_BLOCK_DEPTH} levels"
    # reported once, at the call that goes one level too deep: b63's body calls b64
    assert at(d) == (MAX_BLOCK_DEPTH + 1, 28)


def test_blocks_nested_up_to_the_limit_are_accepted():
    assert codes(_deep_blocks(MAX_BLOCK_DEPTH - 1)) == []


def test_blocks_nested_too_deeply_give_no_false_never_called():
    assert codes(_deep_blocks(MAX_BLOCK_DEPTH + 6)) == ["E215"]


# ---- E216 no input, E217 no output, E218 input shape, E219 --size -------------------------------

def test_no_input():
    diags = diagnose("let c = 3\noutput y = c\n")
    d = pick(diags, "E216")
    assert d.span is None
    assert d.message == "the network has no input"
    assert d.help == "declare one: `input image: [3, 224, 224]`"


def test_no_output():
    diags = diagnose(HEAD + "feat = x -> relu\n")
    d = pick(diags, "E217")
    assert d.span is None
    assert d.message == "the network has no output"
    assert d.help == "mark a result: `output logits = x -> dense(10)`"


def test_empty_file_has_neither_input_nor_output():
    assert codes("# nothing here\n") == ["E216", "E217"]


def test_input_with_five_dims():
    d = only("input x: [1, 3, 4, 8, 8]\noutput y = x\n", "E218")
    assert at(d) == (1, 7)
    assert d.message == ("input `x` has 5 dims; expected [F], [C, L], [C, H, W] or "
                         "[C, D, H, W]")
    assert d.help == "give the per-sample shape; the batch dimension is implicit"


@pytest.mark.parametrize("dims", ["[8]", "[3, 16]", "[3, 8, 8]", "[3, 4, 8, 8]", "[3, L]",
                                  "[3, D, H, W]"])
def test_inputs_of_every_rank_from_one_to_four(dims):
    net = check_source(f"input x: {dims}\noutput y = x -> relu\n", "m.cnn")
    assert net.diagnostics == []
    assert len(net.nodes["y.relu1"].shape) == dims.count(",") + 1


def test_input_with_a_zero_dim():
    d = only("input x: [3, 0, 8]\noutput y = x\n", "E218")
    assert at(d) == (1, 14)
    assert d.message == "input dims must be at least 1, got 0"


def test_size_for_an_unknown_symbol():
    d = only("input x: [3, H, W]\noutput y = x -> relu\n", "E219", sizes={"Q": 3})
    assert d.span is None
    assert d.message == "--size gives `Q`, but no input has that symbol"


def test_size_for_an_unknown_symbol_lists_the_known_ones():
    d = only("input x: [3, H, W]\noutput y = x -> relu\n", "E219", sizes={"h": 3})
    assert d.message == "--size gives `h`, but no input has that symbol"
    known = " ".join(d.notes + [d.help or ""])
    assert "`H`" in known and "`W`" in known


def test_size_makes_a_symbol_concrete():
    d = only("input x: [3, H, W]\noutput y = x -> conv(8, 3)\n", "E301",
             sizes={"H": 2, "W": 9})
    assert d.message == "conv output height would be 0, below 1: 2 - 3 + 1 = 0"


# ---- E301 output size below 1 -------------------------------------------------------------------

def test_conv_output_below_one_after_a_strided_conv():
    src = HEAD + "output y = x -> conv(8, 3, stride=2) -> conv(8, 5)\n"
    d = pick(diagnose(src), "E301")
    assert at(d) == (2, 41)
    assert d.message == "conv output height would be -1, below 1: 3 - 5 + 1 = -1"
    assert d.notes == ["input is [8, 3, 3], from conv(8, 3, stride=2) at 2:17"]
    assert d.help.startswith("the input must be at least 5 rows high for this conv; it is 3.")


def test_pool_output_below_one_shows_the_floor_formula():
    d = only("input x: [3, 2, 9]\noutput y = x -> maxpool(3, stride=2)\n", "E301")
    assert at(d) == (2, 17)
    assert d.message == (
        "maxpool output height would be 0, below 1: floor((2 - 3)/2) + 1 = 0")
    assert d.notes == ["input is [3, 2, 9], from input `x`"]
    assert "at least 3 rows high for this maxpool; it is 2" in d.help


def test_output_below_one_in_width():
    src = "input x: [3, 9, 4]\noutput y = x -> conv(8, 3, pad=1, dilation=3)\n"
    d = only(src, "E301")
    # dilation 3 spreads a 3-tap kernel over d(k-1)+1 = 7 columns
    assert d.message == "conv output width would be 0, below 1: 4 + 2 - 7 + 1 = 0"
    assert "at least 5 columns wide for this conv; it is 4" in d.help


def test_output_below_one_deep_in_a_chain():
    src = (
        "input x: [3, 32, 32]\n"
        "output y = x -> conv(8, 5) -> maxpool(2) -> conv(8, 5) -> maxpool(2)\n"
        "    -> conv(8, 5) -> maxpool(2)\n"
    )
    d = only(src, "E301")
    assert at(d) == (3, 22)
    assert d.message == "maxpool output height would be 0, below 1: floor((1 - 2)/2) + 1 = 0"
    assert d.notes == ["input is [8, 1, 1], from conv(8, 5) at 3:8"]


# ---- E302 concat, E303 add ---------------------------------------------------------------------

SPEC_CONCAT = (
    "input x: [32, 56, 56]\n"
    "b1 = x -> conv(64, 1, stride=2)\n"
    "b2 = x -> maxpool(3, stride=2)\n"
    "out = concat(b1, b2)\n"
    "output y = out -> conv(10, 3) -> relu\n"
)


def test_concat_height_mismatch_traces_each_input():
    # the spec's section 6 example: a 1x1 conv branch and a 3x3/2 max pool branch on 56x56
    d = pick(diagnose(SPEC_CONCAT), "E302")
    assert at(d) == (4, 7)
    assert d.span.end_column == 21  # the whole merge, closing parenthesis included
    assert d.message == "concat inputs disagree in height: 28 vs 27"
    assert d.notes == [
        "b1 is [64, 28, 28], from conv(64, 1, stride=2) at 2:11",
        "b2 is [32, 27, 27], from maxpool(3, stride=2) at 3:11 ; floor((56 - 3)/2) + 1 = 27",
    ]
    assert d.help == "use pad=1 or ceil=true on the maxpool at 3:11"


def test_concat_mismatch_renders_like_the_spec():
    [warning, error] = diagnose(SPEC_CONCAT)
    assert warning.code == "W401"
    assert render(error, SPEC_CONCAT) == "\n".join([
        "m.cnn:4:7: error[E302]: concat inputs disagree in height: 28 vs 27",
        "  |",
        "4 | out = concat(b1, b2)",
        "  |       ^^^^^^^^^^^^^^",
        "  = note: b1 is [64, 28, 28], from conv(64, 1, stride=2) at 2:11",
        "  = note: b2 is [32, 27, 27], from maxpool(3, stride=2) at 3:11 ; "
        "floor((56 - 3)/2) + 1 = 27",
        "  = help: use pad=1 or ceil=true on the maxpool at 3:11",
    ])


def test_concat_mismatch_suggests_padding_the_conv():
    src = (
        "input x: [16, 28, 28]\n"
        "a = x -> conv(8, 1)\n"
        "b = x -> conv(8, 3)\n"
        "output y = concat(a, b)\n"
    )
    d = only(src, "E302")
    assert d.message == "concat inputs disagree in height: 28 vs 26"
    assert d.notes[1] == "b is [8, 26, 26], from conv(8, 3) at 3:10 ; 28 - 3 + 1 = 26"
    assert d.help == "use pad=1 on the conv at 3:10"


def test_concat_mismatch_in_width_only():
    src = (
        "input x: [4, 8, 8]\n"
        "a = x -> conv(4, [1, 3])\n"
        "b = x -> conv(4, 1)\n"
        "output y = concat(a, b)\n"
    )
    d = only(src, "E302")
    assert d.message == "concat inputs disagree in width: 6 vs 8"


def test_concat_of_a_map_and_a_vector():
    src = HEAD + "a = x -> flatten\noutput y = concat(x, a)\n"
    d = only(src, "E302")
    assert at(d) == (3, 12)
    assert d.message == "concat inputs disagree in rank: [3, 8, 8] vs [192]"
    assert d.notes == ["x is [3, 8, 8], from input `x`", "a is [192], from flatten at 2:10"]


def test_add_channel_mismatch_traces_through_shape_keeping_layers():
    src = (
        "input x: [8, 6, 6]\n"
        "a = x -> conv(16, 3, pad=1) -> relu -> batchnorm\n"
        "output y = add(a, x)\n"
    )
    d = only(src, "E303")
    assert at(d) == (3, 12)
    assert d.message == "add inputs disagree in channels: 16 vs 8"
    # the note names the conv that set the shape, not the relu or batchnorm after it
    assert d.notes == ["a is [16, 6, 6], from conv(16, 3, pad=1) at 2:10",
                       "x is [8, 6, 6], from input `x`"]


def test_add_height_mismatch_suggests_a_fix():
    src = (
        "input x: [8, 6, 6]\n"
        "a = x -> conv(8, 3)\n"
        "output y = add(x, a)\n"
    )
    d = only(src, "E303")
    assert d.message == "add inputs disagree in height: 6 vs 4"
    assert d.help == "use pad=1 on the conv at 2:10"


def test_one_diagnostic_per_merge():
    # channels and height both disagree; the first axis is reported, once
    src = SPEC_CONCAT.replace("concat", "add")
    d = pick(diagnose(src), "E303")
    assert d.message == "add inputs disagree in channels: 64 vs 32"


# ---- E304 rank -----------------------------------------------------------------------------------

def test_dense_on_a_feature_map_suggests_flatten():
    d = only(HEAD + "output y = x -> conv(4, 3) -> dense(10)\n", "E304")
    assert at(d) == (2, 31)
    assert d.message == "`dense` expects a 1-D input [F], got [4, 6, 6]"
    assert d.notes == ["its input is [4, 6, 6], from conv(4, 3) at 2:17"]
    assert d.help == "insert `flatten` (or `global_avgpool -> flatten`) before `dense`"


def test_conv_on_a_vector():
    d = only(HEAD + "output y = x -> flatten -> conv(8, 3)\n", "E304")
    assert at(d) == (2, 28)
    assert d.message == "`conv` expects a [C, H, W] input, got [192]"
    assert d.notes == ["its input is [192], from flatten at 2:17"]
    assert d.help == "`conv` works on [C, H, W] maps; move it before `flatten`"


@pytest.mark.parametrize("layer", ["maxpool(2)", "global_avgpool", "lrn"])
def test_spatial_layers_on_a_vector(layer):
    src = "input v: [64]\noutput y = v -> " + layer + "\n"
    d = only(src, "E304")
    # a 2-D layer says "a [C, H, W] input"; a rank-generic one lists the maps it takes
    assert "expects a" in d.message and "[C, H, W]" in d.message
    assert d.message.endswith(", got [64]")
    assert "move it before `flatten`" in d.help


# ---- E305 divisibility --------------------------------------------------------------------------

def test_groups_not_dividing_input_channels():
    d = only("input x: [6, 8, 8]\noutput y = x -> conv(8, 3, groups=4)\n", "E305")
    assert at(d) == (2, 17)
    assert d.message == "conv groups=4 does not divide the 6 input channels"
    assert d.notes == ["input is [6, 8, 8], from input `x`"]
    assert d.help == "6 divides by groups=2 or groups=3 or groups=6"


def test_groups_not_dividing_output_channels():
    d = only("input x: [6, 8, 8]\noutput y = x -> conv(8, 3, groups=3)\n", "E305")
    assert d.message == "conv groups=3 does not divide the 8 output channels"
    assert d.help == "8 divides by groups=1 or groups=2 or groups=4"


def test_maxout_on_channels():
    d = only("input x: [6, 4, 4]\noutput y = x -> maxout(4)\n", "E305")
    assert d.message == "maxout k=4 does not divide the 6 input channels"
    assert d.help == "6 divides by k=2 or k=3 or k=6"


def test_maxout_on_features():
    d = only("input x: [16]\noutput y = x -> maxout(3)\n", "E305")
    assert d.message == "maxout k=3 does not divide the 16 input features"
    assert d.notes == ["input is [16], from input `x`"]


# ---- E306 symbolic sizes -----------------------------------------------------------------------

def test_no_size_makes_a_concat_agree():
    src = (
        "input x: [3, H, 32]\n"
        "a = x -> conv(8, 1)\n"
        "b = x -> conv(8, 3, pad=[0, 1])\n"
        "output y = concat(a, b)\n"
    )
    d = only(src, "E306")
    assert at(d) == (4, 12)
    assert d.message == "no value of H makes the concat inputs agree in height: H vs H - 2"
    assert d.notes == ["a is [8, H, 32], from conv(8, 1) at 2:10",
                       "b is [8, H - 2, 32], from conv(8, 3, pad=[0, 1]) at 3:10"]


def test_symbolic_sizes_that_can_agree_are_not_errors():
    # floor(H/2) and floor((H - 1)/2) + 1 agree for every even H
    src = (
        "input x: [3, H, H]\n"
        "a = x -> maxpool(2)\n"
        "b = x -> conv(3, 3, stride=2, pad=1)\n"
        "output y = concat(a, b)\n"
    )
    net = check_source(src, "m.cnn")
    assert net.diagnostics == []
    assert [v.describe() for v in net.valid_sizes] == ["H >= 2 and H = 0 mod 2"]


# ---- W401-W404 warnings ------------------------------------------------------------------------

def test_strided_pool_leaves_rows_unused():
    d = only("input x: [3, 56, 56]\noutput y = x -> maxpool(3, stride=2)\n", "W401")
    assert d.severity == "warning"
    assert at(d) == (2, 17)
    assert d.message == ("maxpool leaves the last 1 input row and 1 input column unused: "
                         "(56 - 3) mod 2 = 1")
    assert d.notes == ["input is [3, 56, 56]"]
    assert d.help == "use ceil=true, or an input size that fits the stride"


def test_strided_conv_leaves_columns_unused():
    d = only("input x: [3, 8, 9]\noutput y = x -> conv(4, 3, stride=2)\n", "W401")
    assert d.message == ("conv leaves the last 1 input row unused: (8 - 3) mod 2 = 1")
    assert d.help == "use an input size that fits the stride"


@pytest.mark.parametrize(
    "stage",
    [
        "maxpool(3, stride=2, ceil=true)",  # ceil mode covers the tail
        "maxpool(3, stride=2, pad=1)",  # the tail is padding
        "conv(4, 3, stride=2, pad=same)",
        "maxpool(1, stride=2)",  # gaps between windows are the point
    ],
)
def test_no_unused_input_warning(stage):
    assert codes("input x: [3, 56, 56]\noutput y = x -> " + stage + "\n") == []


def test_binding_never_used():
    d = only(HEAD + "feat = x -> relu\noutput y = x -> tanh\n", "W402")
    assert at(d) == (2, 1)
    assert d.message == "binding `feat` is never used"
    assert d.help == "use it in an output, or make it one: `output NAME = ...`"


def test_binding_in_a_block_never_used():
    src = HEAD + "block b() {\n  t = in -> relu\n  return in -> tanh\n}\noutput y = x -> b\n"
    d = only(src, "W402")
    assert at(d) == (3, 3)
    assert d.message == "binding `t` in block `b` is never used"


def test_block_never_called():
    src = HEAD + "block spare(c) {\n  return in -> conv(c, 1)\n}\noutput y = x -> relu\n"
    d = only(src, "W403")
    assert at(d) == (2, 7)
    assert d.message == "block `spare` is never called"
    assert d.help == "call it in a chain, or delete it"


def test_input_never_used():
    d = only(HEAD + "input z: [3, 8, 8]\noutput y = x -> relu\n", "W404")
    assert at(d) == (2, 7)
    assert d.message == "input `z` is never used"


def test_warnings_do_not_make_a_network_fail():
    net = check_source(HEAD + "input z: [3, 8, 8]\noutput y = x -> relu\n", "m.cnn")
    assert net.ok
    assert [d.severity for d in net.diagnostics] == ["warning"]


# ---- every problem in one run, and recovery ---------------------------------------------------

def test_all_errors_of_a_file_in_one_run():
    src = (
        "input x: [3, 32, 32]\n"                        # 1
        "a = x -> conv(16, 3, strid=1)\n"               # 2  E205
        "b = x -> rleu\n"                               # 3  E203
        "c = x -> conv(16, 0)\n"                        # 4  E207
        "d = imput -> relu\n"                           # 5  E201
        "e = x -> conv(8, 3) -> dense(10)\n"            # 6  E304
        "f = x -> conv(8, 3, groups=2)\n"               # 7  E305
        "output y = concat(a, b, c, d, e, f)\n"         # 8
        "output z = x -> dropout(1.5)\n"                # 9  E207
    )
    diags = diagnose(src)
    assert [(d.code, d.span.line) for d in diags] == [
        ("E205", 2), ("E203", 3), ("E207", 4), ("E201", 5), ("E304", 6), ("E305", 7),
        ("E207", 9),
    ]


def test_diagnostics_are_sorted_by_place():
    src = (
        HEAD
        + "output y = x -> conv(8, 0)\n"
        + "output z = x -> conv(0, 3) -> dropout(2)\n"
    )
    diags = diagnose(src)
    places = [(d.span.line, d.span.column) for d in diags]
    assert places == sorted(places)
    assert len(diags) == 3


def test_checking_goes_on_after_a_concat_mismatch():
    # the merge keeps a shape (channels summed, the first input's H and W), so the dense
    # after it is still checked
    src = SPEC_CONCAT.replace("conv(10, 3) -> relu", "dense(10)")
    diags = diagnose(src)
    assert [d.code for d in diags] == ["W401", "E302", "E304"]
    d = diags[2]
    assert at(d) == (5, 19)
    assert d.message == "`dense` expects a 1-D input [F], got [96, 28, 28]"


def test_checking_goes_on_after_an_undefined_name():
    src = (
        HEAD
        + "a = nope -> relu\n"
        + "output y = x -> conv(8, 9)\n"
        + "output z = a -> dense(3)\n"
    )
    diags = diagnose(src)
    assert [(d.code, d.span.line) for d in diags] == [("E201", 2), ("E301", 3)]


def test_an_error_repeated_by_two_outputs_is_reported_once_per_place():
    src = HEAD + "a = x -> conv(8, 0)\noutput y = a\noutput z = a -> relu\n"
    assert codes(src) == ["E207"]


# ---- blocks: the instantiation trace ------------------------------------------------------------

NESTED = (
    "input x: [16, 4, 4]\n"
    "block down(c) {\n"
    "  return in -> conv(c, 3, stride=2)\n"
    "}\n"
    "block outer(c) {\n"
    "  return in -> down(c) -> down(c)\n"
    "}\n"
    "output y = x -> outer(8)\n"
)


def test_error_in_a_nested_block_names_each_call():
    d = pick(diagnose(NESTED), "E301")
    assert at(d) == (3, 16)  # in the block body
    assert d.message == "conv output height would be 0, below 1: floor((1 - 3)/2) + 1 = 0"
    assert d.notes == [
        "input is [8, 1, 1], from conv(c, 3, stride=2) at 3:16",
        "in block `down` called at 6:27",
        "in block `outer` called at 8:17",
    ]


def test_one_block_body_two_calls_two_errors():
    src = (
        "input x: [8, 6, 6]\n"
        "block down(k) {\n"
        "  return in -> conv(4, k)\n"
        "}\n"
        "output y = x -> down(7)\n"
        "output z = x -> down(9)\n"
    )
    first, second = diagnose(src)
    assert first.message == "conv output height would be 0, below 1: 6 - 7 + 1 = 0"
    assert first.notes[-1] == "in block `down` called at 5:17"
    assert second.message == "conv output height would be -2, below 1: 6 - 9 + 1 = -2"
    assert second.notes[-1] == "in block `down` called at 6:17"


def test_groups_error_in_a_block_names_the_call():
    src = (
        HEAD
        + "block unit(c) {\n"
        + "  return in -> conv(c, 1, groups=3)\n"
        + "}\n"
        + "output y = x -> conv(6, 1) -> unit(4)\n"
    )
    d = only(src, "E305")
    assert at(d) == (3, 16)
    assert d.notes == ["input is [6, 8, 8], from conv(6, 1) at 5:17",
                       "in block `unit` called at 5:31"]


def test_invalid_argument_in_a_block_names_the_call():
    src = (
        HEAD
        + "block down(k) {\n"
        + "  return in -> conv(4, k)\n"
        + "}\n"
        + "output y = x -> down(3) -> down(0)\n"
    )
    d = only(src, "E207")
    assert at(d) == (3, 24)
    assert d.message == "conv kernel must be at least 1, got 0"
    assert d.notes == ["in block `down` called at 5:28"]


def test_concat_mismatch_in_a_block_names_the_call():
    src = (
        "input x: [16, 28, 28]\n"
        "block mixed(c) {\n"
        "  a = in -> conv(c, 1)\n"
        "  b = in -> conv(c, 3)\n"
        "  return concat(a, b)\n"
        "}\n"
        "output y = x -> mixed(8)\n"
    )
    d = only(src, "E302")
    assert at(d) == (5, 10)
    assert d.message == "concat inputs disagree in height: 28 vs 26"
    assert "in block `mixed` called at 7:17" in d.notes


# ---- the registry and the data --------------------------------------------------------------

# One small source per code of the checker. The test below makes sure none is missing, so a
# new code in CODES needs a case here.
TRIGGERS = {
    "E201": HEAD + "output y = z\n",
    "E202": HEAD + "y = x\ny = x\noutput o = y\n",
    "E203": HEAD + "output y = x -> rleu\n",
    "E204": HEAD + "output y = x -> conv(8)\n",
    "E205": HEAD + "output y = x -> conv(8, 3, size=1)\n",
    "E206": HEAD + "output y = x -> conv(8, 3, bias=2)\n",
    "E207": HEAD + "output y = x -> conv(8, 3, stride=0)\n",
    "E208": HEAD + "block b() {\n  return in -> b\n}\noutput y = x -> b\n",
    "E209": HEAD + "output y = x -> relu(1)\n",
    "E210": HEAD + "output y = x -> conv(8, 3, out=4)\n",
    "E211": HEAD + "output y = relu(x)\n",
    "E212": HEAD + "output y = in\noutput z = x\n",
    "E213": HEAD + "output y = x -> relu * 0\n",
    "E214": HEAD + "output y = add(x)\n",
    "E215": _deep_blocks(MAX_BLOCK_DEPTH + 1),
    "E216": "output y = z\n",
    "E217": HEAD,
    "E218": "input x: [1, 3, 4, 8, 8]\noutput y = x\n",
    "E219": HEAD + "output y = x\n",  # with sizes={"H": 8}
    "E220": HEAD + "output y = x -> relu * 2000000\n",
    "E221": HEAD + "let width = 8\noutput y = x\n",  # with consts={"depth": 3}
    "E222": HEAD + "let width = 8\noutput y = x\n",  # with consts={"width": "[1,"}
    "E223": HEAD + "let n = 4294967296 * 4294967296\noutput y = x\n",
    "E301": HEAD + "output y = x -> conv(8, 9)\n",
    "E302": HEAD + "a = x -> conv(3, 3)\noutput y = concat(x, a)\n",
    "E303": HEAD + "a = x -> conv(4, 1)\noutput y = add(x, a)\n",
    "E304": HEAD + "output y = x -> dense(10)\n",
    "E305": HEAD + "output y = x -> conv(8, 3, groups=2)\n",
    "E306": "input x: [3, H, 8]\na = x -> conv(3, 3, pad=[0, 1])\noutput y = add(x, a)\n",
    "W401": "input x: [3, 8, 8]\noutput y = x -> maxpool(3, stride=2)\n",
    "W402": HEAD + "a = x\noutput y = x\n",
    "W403": HEAD + "block b() {\n  return in\n}\noutput y = x\n",
    "W404": HEAD + "input z: [3]\noutput y = x\n",
}


def test_every_checker_code_has_a_trigger():
    checker_codes = {c for c in CODES if not c.startswith("E1")}
    assert set(TRIGGERS) == checker_codes


@pytest.mark.parametrize("code", sorted(TRIGGERS))
def test_trigger(code):
    sizes = {"H": 8} if code == "E219" else None
    consts = {"E221": {"depth": 3}, "E222": {"width": "[1,"}}.get(code)
    text = TRIGGERS[code]
    hits = [d for d in diagnose(text, sizes, consts) if d.code == code]
    assert hits
    last_line = text.count("\n") + 1
    for d in hits:
        assert d.severity == ("warning" if code.startswith("W") else "error")
        assert d.file == "m.cnn"
        assert d.span is None or 1 <= d.span.line <= last_line


def test_diagnostic_as_json():
    d = pick(diagnose(SPEC_CONCAT), "E302")
    data = d.to_json()
    assert data == {
        "code": "E302",
        "severity": "error",
        "message": "concat inputs disagree in height: 28 vs 27",
        "file": "m.cnn",
        "line": 4,
        "column": 7,
        "end_line": 4,
        "end_column": 21,
        "notes": [
            "b1 is [64, 28, 28], from conv(64, 1, stride=2) at 2:11",
            "b2 is [32, 27, 27], from maxpool(3, stride=2) at 3:11 ; "
            "floor((56 - 3)/2) + 1 = 27",
            "help: use pad=1 or ceil=true on the maxpool at 3:11",
        ],
    }


def test_render_without_a_span():
    d = Diagnostic("E217", "the network has no output", None, help="mark a result",
                   file="m.cnn")
    assert render(d, "") == "m.cnn: error[E217]: the network has no output\n  = help: mark a result"


def test_render_of_a_span_over_two_lines_underlines_to_the_end_of_the_first():
    d = Diagnostic("E301", "m", Span(1, 3, 2, 4), file="f")
    assert render(d, "abcdef\nxyz\n").splitlines()[3] == "  |   ^^^^"
