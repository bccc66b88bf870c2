"""A new user's hard model files (issue 15), each answered with a diagnostic in cnnc's voice,
the documented exit status, no traceback, and nothing changed:

- huge integers (class 1): literals past 2**63 - 1 (thousands of digits), sums and products
  past it, `--size` past it, other scripts' digits;
- slow refusals (class 5): a file past the layer limit is refused by a scan before parsing,
  a repeat past it before the first copy, an endless stream at the file-size limit;
- what is echoed (class 6): control characters of a source line or a file name are escaped,
  a long line is cut to a window around the span;
- recovery (class 8): an error whose output shape is still known does not stop checking.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cnnc.cli import main
from cnnc.compiler import check as check_module
from cnnc.compiler.check import MAX_SOURCE_BYTES, check_bytes

CNNC = str(Path(sys.executable).with_name("cnnc"))
HEAD = "input x: [3, 8, 8]\n"


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cli(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, out, err


def checked(capsys, folder: Path, source: str, *more) -> tuple[int, str]:
    """``cnnc check m.cnn MORE`` on ``source``: ``(status, output)``, the file unchanged."""
    path = folder / "m.cnn"
    path.write_text(source)
    status, out, err = cli(capsys, "check", path, *more)
    assert path.read_text() == source
    return status, out + err


# ---- class 1: huge integers ------------------------------------------------------------------

BIG = "9" * 5000


@pytest.mark.parametrize("source", [
    HEAD + f"output y = x -> relu * {BIG}\n",                  # a repeat count
    HEAD + f"output y = x -> conv({BIG}, 3)\n",                # an argument
    f"input x: [{BIG}, 8, 8]\noutput y = x -> relu\n",         # an input dim
    f"let n = {BIG}\n" + HEAD + "output y = x -> conv(n, 3)\n",  # a let
    HEAD + "output y = x -> conv(9223372036854775808, 3)\n",   # one past the largest
])
def test_integer_literals_past_the_largest(work, capsys, source):
    status, text = checked(capsys, work, source)
    assert status == 1
    assert "error[E106]: integer " in text
    assert "is larger than 9,223,372,036,854,775,807" in text
    assert "(5,000 digits)" in text or "9223372036854775808" in text
    assert len(text) < 2000  # the 5,000 digits are not echoed


@pytest.mark.parametrize("expression,value", [
    ("4294967296 * 4294967296", "18446744073709551616"),
    ("9223372036854775807 + 1", "9223372036854775808"),
    ("0 - 9223372036854775807 - 2", "-9223372036854775809"),
])
def test_arithmetic_past_the_largest(work, capsys, expression, value):
    status, text = checked(capsys, work, f"let n = {expression}\n" + HEAD
                           + "output y = x -> conv(n, 3)\n")
    assert status == 1
    assert f"is {value}, beyond the largest integer 9,223,372,036,854,775,807" in text


def test_the_largest_sizes_still_check_and_summarise(work, capsys):
    # every number a summary shows stays an integer: no float overflow, no traceback
    big = "9223372036854775807"
    source = (f"input x: [{big}, {big}, {big}, {big}]\n"
              f"output y = x -> conv3d({big}, 1) -> flatten -> dense({big}) -> dense({big})\n")
    (work / "m.cnn").write_text(source)
    assert cli(capsys, "check", "m.cnn")[0] == 0
    status, out, err = cli(capsys, "summary", "m.cnn")
    assert status == 0
    assert "Total parameters:" in out
    status, out, err = cli(capsys, "summary", "m.cnn", "--format", "json")
    assert status == 0
    import json

    assert json.loads(out)["total_params"] > 2**200
    status, out, err = cli(capsys, "summary", "m.cnn", "--train")
    assert status == 0
    assert "needs about 2^" in err and "about about" not in err


@pytest.mark.parametrize("value,message", [
    ("9223372036854775808", "size H must be at most 9,223,372,036,854,775,807 (2**63 - 1), "
                            "got a number of 19 digits"),
    ("9" * 999, "got a number of 999 digits"),
])
def test_sizes_past_the_largest(work, capsys, value, message):
    (work / "m.cnn").write_text("input x: [3, H, 8]\noutput y = x -> relu\n")
    with pytest.raises(SystemExit) as done:
        main(["check", "m.cnn", "--size", f"H={value}"])
    assert done.value.code == 2
    assert message in capsys.readouterr().err


def test_other_scripts_digits_are_no_numbers(work, capsys):
    status, text = checked(capsys, work, HEAD + "output y = x -> conv(\u0663, 3)\n")
    assert status == 1
    assert "error[E103]: invalid character `\u0663`" in text


# ---- class 5: slow refusals --------------------------------------------------------------------

def test_a_file_past_the_layer_limit_is_refused_before_parsing(work, capsys, monkeypatch):
    monkeypatch.setattr(check_module, "MAX_LAYERS", 1000)

    def no_parse(*args):
        raise AssertionError("parsed")

    monkeypatch.setattr(check_module, "parse", no_parse)
    source = HEAD + "# a comment -> relu -> relu\noutput y = x" + " -> relu" * 1001 + "\n"
    status, text = checked(capsys, work, source)
    assert status == 1
    assert "error[E220]: the network has more than 1,000 layers: this stage is past the limit"\
        in text
    # the span is the 1,001st stage, on line 3 (the comment's arrows do not count)
    assert "m.cnn:3:" in text
    assert len(text) < 2000


def test_block_stages_are_not_counted_as_layers_by_the_scan(work, capsys, monkeypatch):
    monkeypatch.setattr(check_module, "MAX_LAYERS", 1000)
    source = ("block same() {\n  return in\n}\n" + HEAD + "output y = x"
              + " -> same" * 1500 + " -> relu\n")
    status, text = checked(capsys, work, source)
    assert "E220" not in text


def test_a_repeat_past_the_limit_is_refused_before_the_first_copy(work, capsys):
    source = ("block b(n) {\n  return in -> relu * n\n}\n" + HEAD
              + "output y = x -> b(1000000)\n")
    status, text = checked(capsys, work, source)
    assert status == 1
    assert ("error[E220]: the network would expand to more than 1,000,000 layers: "
            "1,000,000 copies of at least 1 layers each, after 1") in text


def test_a_repeat_of_a_block_past_the_limit(work, capsys):
    source = ("block pair() {\n  return in -> relu -> relu\n}\n" + HEAD
              + "let n = 600000\noutput y = x -> pair * n\n")
    status, text = checked(capsys, work, source)
    assert status == 1
    assert "600,000 copies of at least 2 layers each" in text


def test_a_file_past_the_size_limit(work, capsys, monkeypatch):
    monkeypatch.setattr(check_module, "MAX_SOURCE_BYTES", 100)
    network, text = check_bytes(b"#" * 101, "m.cnn")
    assert text is None
    assert [(d.code, d.message) for d in network.diagnostics] == [
        ("E107", "the file is larger than 0 MiB, the most a model file may be")]


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
@pytest.mark.parametrize("how", ["path", "stdin"])
def test_an_endless_stream_stops_at_the_size_limit(how):
    if how == "path":
        done = subprocess.run([CNNC, "check", "/dev/zero"], capture_output=True, text=True,
                              timeout=120)
    else:
        with open("/dev/zero", "rb") as zero:
            done = subprocess.run([CNNC, "check", "-"], stdin=zero, capture_output=True,
                                  text=True, timeout=120)
    assert done.returncode == 1
    assert (f"error[E107]: the file is larger than {MAX_SOURCE_BYTES >> 20} MiB, the most "
            "a model file may be") in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


# ---- class 6: what is echoed -------------------------------------------------------------------

def test_control_characters_of_a_line_are_escaped(work, capsys):
    source = HEAD + "output y = x -> conv(4, 3) \x1b[2J\x1b]0;pwned\x07 -> relu\n"
    status, text = checked(capsys, work, source)
    assert status == 1
    assert "\x1b" not in text and "\x07" not in text
    assert "\\x1b[2J" in text


def test_the_caret_stays_under_the_span_after_escapes(work, capsys):
    source = HEAD + "a = x\x1b -> conv(4, 3) -> bogus\noutput y = a\n"
    status, text = checked(capsys, work, source)
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("2 | ") and "bogus" in line:
            caret = lines[i + 1]
            column = caret.index("^")
            assert line[column:column + 5] in ("bogus", "\\x1b ")
            break


def test_a_nul_byte_is_escaped(work, capsys):
    status, text = checked(capsys, work, HEAD + "output y = x -> relu\x00\n")
    assert status == 1
    assert "\x00" not in text
    assert "\\x00" in text


def test_a_file_name_with_escapes(work, capsys):
    name = "evil\x1b[31m.cnn"
    (work / name).write_text(HEAD + "output y = x -> bogus\n")
    status, out, err = cli(capsys, "check", name)
    assert status == 1
    assert "\x1b" not in out + err
    assert "evil\\x1b[31m.cnn" in out + err


def test_a_missing_file_name_with_escapes(work, capsys):
    status, out, err = cli(capsys, "check", "gone\x1b[31m.cnn")
    assert status == 2
    assert "\x1b" not in out + err


def test_a_long_line_is_cut_around_the_span(work, capsys):
    source = HEAD + "output y = x" + " -> relu" * 100000 + " -> bogus" + " -> relu" * 1000 + "\n"
    status, text = checked(capsys, work, source)
    assert status == 1
    assert len(text) < 3000
    excerpt = [line for line in text.splitlines() if line.startswith("2 | ")][0]
    assert excerpt.startswith("2 | ...") and excerpt.endswith("...")
    assert "bogus" in excerpt
    caret = text.splitlines()[text.splitlines().index(excerpt) + 1]
    column = caret.index("^")
    assert excerpt[column:column + 5] == "bogus"
    assert caret.count("^") == 5


# ---- class 8: recovery after an error ----------------------------------------------------------

@pytest.mark.parametrize("layer", [
    "conv(8, 3, groups=4)",            # groups does not divide the input channels
    "conv(6, 3, groups=6) -> conv(9, 1, groups=2)",  # nor the output channels
    "groupnorm(4)",
    "channel_shuffle(4)",
    "maxout(4)",
    "conv_transpose(8, 2, groups=4)",
])
def test_checking_goes_on_past_an_error_whose_shape_is_known(work, capsys, layer):
    source = f"input x: [6, 16, 16]\na = x -> {layer}\nb = a -> relu\noutput y = b -> dense(10)\n"
    status, text = checked(capsys, work, source)
    assert status == 1
    assert "error[E305]" in text
    assert "error[E304]: `dense` expects a 1-D input [F]" in text  # three lines later


def test_a_renamed_layer_is_the_input_of_the_next(work, capsys):
    # found by the formatter's generated files: the alias `second` is taken by the block call,
    # so the relu is renamed (E202), and the gelu after it must take the renamed relu as its
    # input rather than the taken name (which was a KeyError in the infer pass)
    source = ("input x: [16]\nblock unit {\n    return in -> conv(4, 3) as second -> "
              "upsample([])\n}\nb = x -> unit as second -> relu as second -> gelu\n"
              "output y = b\n")
    status, text = checked(capsys, work, source)
    assert status == 1
    assert "error[E202]: the name `b.second` is claimed twice" in text
