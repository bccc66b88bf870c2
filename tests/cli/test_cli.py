"""The `cnnc` command line: exit codes, several files, stdin, JSON, summaries, usage errors.

Spec sections 6-8 (shared/spec/cnn-language.md) are the contract. Most tests call
`cnnc.cli.main` in-process with capsys, which is fast; a few run the installed `cnnc` console
script to check what a shell user sees.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import cnnc
from cnnc.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
GOOGLENET = ROOT / "examples" / "googlenet.cnn"

# Caffe's BVLC GoogLeNet deploy net without the auxiliary classifiers (Szegedy et al. 2014):
# 6,998,552 parameters, weights and biases; 1,582,671,872 conv and dense multiply-accumulates
# for one 3x224x224 image, counted as torchvision counts MACs.
GOOGLENET_PARAMS = 6_998_552
GOOGLENET_MACS = 1_582_671_872

DIAGNOSTIC_KEYS = {
    "code", "severity", "message", "file", "line", "column", "end_line", "end_column", "notes",
}
SUMMARY_KEYS = {"network", "inputs", "outputs", "total_params", "total_macs", "layers"}
LAYER_KEYS = {"name", "op", "output_shape", "params", "macs"}

# conv: 8*3*3*3 + 8 = 224 params, 8*32*32 outputs x 3*3*3 = 221,184 MACs;
# dense: 8*10 + 10 = 90 params, 80 MACs.
CLEAN = """\
network tiny
input x: [3, 32, 32]
output y = x -> conv(8, 3, pad=1) -> relu -> global_avgpool -> flatten -> dense(10)
"""
CLEAN_PARAMS = 314
CLEAN_MACS = 221_264

SYMBOLIC = CLEAN.replace("[3, 32, 32]", "[3, H, W]")

# One warning: W402, a binding never used.
WARNED = """\
network warned
input x: [3, 32, 32]
spare = x -> relu
output y = x -> conv(8, 3, pad=1) -> relu -> global_avgpool -> flatten -> dense(10)
"""

# One error: E304, a dense on a 3-D input.
BROKEN = """\
network broken
input x: [3, 32, 32]
output y = x -> conv(8, 3, pad=1) -> dense(10)
"""


def run(capsys, *argv) -> tuple[int, str, str]:
    """Run `cnnc ARGV` in-process: (exit status, stdout, stderr). argparse's own exits
    (--help, --version, usage errors) raise SystemExit; they count as a status too."""
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exit:
        status = exit.code
    out, err = capsys.readouterr()
    return status, out, err


def codes(text: str) -> list[str]:
    """The diagnostic codes in rendered output, in order."""
    return re.findall(r"(?:error|warning)\[([EW]\d{3})\]", text)


@pytest.fixture
def write(tmp_path):
    def make(name: str, text: str | bytes) -> Path:
        path = tmp_path / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return path

    return make


@pytest.fixture
def stdin(monkeypatch):
    """`stdin(data)` makes `data` the process's standard input, as bytes."""

    def feed(data: str | bytes):
        if isinstance(data, str):
            data = data.encode("utf-8")
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))

    return feed


# ---- exit codes ------------------------------------------------------------------------------

def test_clean_file_exits_0(capsys, write):
    path = write("tiny.cnn", CLEAN)
    status, out, err = run(capsys, "check", path)
    assert status == 0
    assert f"{path}: ok: network tiny, 5 layers, 314 parameters" in out
    assert codes(out) == []
    assert err == ""


def test_googlenet_checks_clean(capsys):
    status, out, err = run(capsys, "check", GOOGLENET)
    assert status == 0
    assert "ok: network googlenet" in out
    assert f"{GOOGLENET_PARAMS:,} parameters" in out
    assert err == ""


def test_warnings_only_exit_0(capsys, write):
    path = write("warned.cnn", WARNED)
    status, out, _ = run(capsys, "check", path)
    assert status == 0
    assert codes(out) == ["W402"]
    assert f"{path}:3:1: warning[W402]: binding `spare` is never used" in out
    assert "ok: network warned" in out
    assert "0 errors, 1 warning in 1 file" in out


def test_werror_makes_warnings_fail(capsys, write):
    path = write("warned.cnn", WARNED)
    status, out, _ = run(capsys, "check", "--werror", path)
    assert status == 1
    assert codes(out) == ["W402"]


def test_werror_without_warnings_still_exits_0(capsys, write):
    status, _, _ = run(capsys, "check", "--werror", write("tiny.cnn", CLEAN))
    assert status == 0


def test_errors_exit_1(capsys, write):
    path = write("broken.cnn", BROKEN)
    status, out, err = run(capsys, "check", path)
    assert status == 1
    assert codes(out) == ["E304"]
    assert f"{path}:3:38: error[E304]: `dense` expects a 1-D input [F], got [8, 32, 32]" in out
    # the rendered source line and the carets under `dense(10)`
    assert "3 | output y = x -> conv(8, 3, pad=1) -> dense(10)" in out
    assert "  |" + " " * 38 + "^" * len("dense(10)") in out
    assert "help: insert `flatten`" in out
    assert "ok:" not in out
    assert "1 error, 0 warnings in 1 file" in out
    assert "Traceback" not in out + err


def test_every_problem_is_reported(capsys, write):
    source = """\
input x: [3, 32, 32]
a = x -> conv(8, 3, stride=0)
b = x -> maxpool(3, stride=2) -> dropout(1.5)
output y = concat(a, b) -> flatten -> dense(10)
"""
    status, out, _ = run(capsys, "check", write("many.cnn", source))
    assert status == 1
    assert "E207" in codes(out)  # stride=0 and p=1.5: invalid values
    assert codes(out).count("E207") == 2


def test_one_mistake_one_diagnostic(capsys, write):
    source = "input x: [3, 8, 8]\noutput y = x -> reluu\n"
    status, out, _ = run(capsys, "check", write("typo.cnn", source))
    assert status == 1
    # no E217 'the network has no output' as well: the file has an output statement
    assert codes(out) == ["E203"]


@pytest.mark.parametrize("call", [
    "batchnorm(eps=1e999 - 1e999)",  # nan
    "batchnorm(eps=1e999)",  # inf
    "leaky_relu(1e999)",
    "lrn(alpha=-1e999 + 1e999)",
])
def test_non_finite_float_arguments_are_errors(capsys, write, call):
    source = f"input x: [3, 8, 8]\noutput y = x -> {call}\n"
    status, out, _ = run(capsys, "check", write("inf.cnn", source))
    assert status == 1
    assert codes(out) == ["E207"]


@pytest.mark.parametrize("call", ["dropout(1e999 - 1e999)", "dropout(1e999)"])
def test_non_finite_dropout_is_an_error(capsys, write, call):
    source = f"input x: [3, 8, 8]\noutput y = x -> {call}\n"
    status, out, _ = run(capsys, "check", write("inf.cnn", source))
    assert status == 1
    assert codes(out) == ["E207"]


def test_missing_file_exits_2(capsys, tmp_path):
    missing = tmp_path / "nowhere.cnn"
    status, out, err = run(capsys, "check", missing)
    assert status == 2
    assert f"cannot read {missing}" in err
    assert "No such file" in err
    assert "Traceback" not in err


def test_directory_exits_2(capsys, tmp_path):
    status, _, err = run(capsys, "check", tmp_path)
    assert status == 2
    assert f"cannot read {tmp_path}" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [
    ["--bogus"],
    ["check", "--bogus", "x.cnn"],
    ["summary", "--bogus", "x.cnn"],
    ["check", "--format", "xml", "x.cnn"],
    ["frobnicate", "x.cnn"],
    ["check"],  # no FILE
    ["summary"],
    ["summary", "a.cnn", "b.cnn"],  # summary takes one file
])
def test_misuse_exits_2_with_usage(capsys, argv):
    status, out, err = run(capsys, *argv)
    assert status == 2
    assert "usage: cnnc" in err
    assert "cnnc: error:" in err
    assert out == ""


def test_no_command_exits_2_with_help(capsys):
    status, out, err = run(capsys)
    assert status == 2
    assert "usage: cnnc" in err
    assert "check" in err and "summary" in err
    assert out == ""


# ---- several files in one run -------------------------------------------------------------

def test_several_files_report_everything(capsys, write):
    clean = write("tiny.cnn", CLEAN)
    warned = write("warned.cnn", WARNED)
    broken = write("broken.cnn", BROKEN)
    status, out, _ = run(capsys, "check", clean, broken, warned)
    assert status == 1
    assert f"{clean}: ok" in out
    assert f"{warned}: ok" in out
    assert f"{broken}:3:38: error[E304]" in out
    assert f"{warned}:3:1: warning[W402]" in out
    assert "1 error, 1 warning in 3 files" in out


@pytest.mark.parametrize("order", ["missing first", "missing last"])
def test_unreadable_file_wins_over_errors(capsys, write, tmp_path, order):
    broken = write("broken.cnn", BROKEN)
    clean = write("tiny.cnn", CLEAN)
    missing = tmp_path / "nowhere.cnn"
    files = [missing, broken, clean] if order == "missing first" else [broken, clean, missing]
    status, out, err = run(capsys, "check", *files)
    assert status == 2
    # the readable files are still checked and reported
    assert f"{broken}:3:38: error[E304]" in out
    assert f"{clean}: ok" in out
    assert f"cannot read {missing}" in err


def test_werror_applies_to_every_file(capsys, write):
    clean = write("tiny.cnn", CLEAN)
    warned = write("warned.cnn", WARNED)
    assert run(capsys, "check", clean, warned)[0] == 0
    assert run(capsys, "check", "--werror", clean, warned)[0] == 1


def test_quiet_hides_ok_lines_only(capsys, write):
    clean = write("tiny.cnn", CLEAN)
    broken = write("broken.cnn", BROKEN)
    status, out, _ = run(capsys, "check", "-q", clean, broken)
    assert status == 1
    assert "ok:" not in out
    assert "error[E304]" in out


def test_shapes_lists_every_layer(capsys, write):
    status, out, _ = run(capsys, "check", "--shapes", write("tiny.cnn", CLEAN))
    assert status == 0
    rows = [line.split(maxsplit=1) for line in out.splitlines() if line.startswith("  ")]
    shapes = dict(rows)
    assert shapes == {
        "x": "[3, 32, 32]",
        "y.conv1": "[8, 32, 32]",
        "y.relu1": "[8, 32, 32]",
        "y.global_avgpool1": "[8, 1, 1]",
        "y.flatten1": "[8]",
        "y.dense1": "[10]",
    }


# ---- stdin ----------------------------------------------------------------------------------

def test_check_reads_stdin(capsys, stdin):
    stdin(BROKEN)
    status, out, _ = run(capsys, "check", "-")
    assert status == 1
    assert "<stdin>:3:38: error[E304]" in out
    assert "3 | output y = x -> conv(8, 3, pad=1) -> dense(10)" in out


def test_check_clean_stdin(capsys, stdin):
    stdin(CLEAN)
    status, out, _ = run(capsys, "check", "-")
    assert status == 0
    assert "<stdin>: ok: network tiny" in out


def test_stdin_beside_files(capsys, stdin, write):
    stdin(WARNED)
    clean = write("tiny.cnn", CLEAN)
    status, out, _ = run(capsys, "check", clean, "-")
    assert status == 0
    assert f"{clean}: ok" in out
    assert "<stdin>:3:1: warning[W402]" in out


def test_stdin_not_utf8(capsys, stdin):
    stdin(b"input x: [3, 8, 8]\noutput y = x -> relu # caf\xe9\n")
    status, out, _ = run(capsys, "check", "-")
    assert status == 1
    assert codes(out) == ["E104"]
    assert "<stdin>:2:" in out
    assert "0xe9" in out


@pytest.mark.parametrize("command", ["check", "summary"])
def test_closed_stdin_cannot_be_read(capsys, monkeypatch, command):
    monkeypatch.setattr(sys, "stdin", None)
    status, out, err = run(capsys, command, "-")
    assert status == 2
    assert "cannot read" in err


def test_summary_reads_stdin(capsys, stdin):
    stdin(CLEAN)
    status, out, _ = run(capsys, "summary", "--format", "json", "-")
    assert status == 0
    assert json.loads(out)["total_params"] == CLEAN_PARAMS


# ---- check --format json --------------------------------------------------------------------

def test_json_diagnostics(capsys, write):
    path = write("broken.cnn", BROKEN)
    status, out, err = run(capsys, "check", "--format", "json", path)
    assert status == 1
    assert err == ""
    diags = json.loads(out)  # stdout is one JSON document and nothing else
    assert isinstance(diags, list)
    assert len(diags) == 1
    diag = diags[0]
    assert set(diag) == DIAGNOSTIC_KEYS
    assert diag["code"] == "E304"
    assert diag["severity"] == "error"
    assert diag["message"] == "`dense` expects a 1-D input [F], got [8, 32, 32]"
    assert diag["file"] == str(path)
    assert (diag["line"], diag["column"]) == (3, 38)
    assert (diag["end_line"], diag["end_column"]) == (3, 38 + len("dense(10)"))
    assert isinstance(diag["notes"], list)
    assert all(isinstance(note, str) for note in diag["notes"])
    assert any("from conv(8, 3, pad=1) at 3:17" in note for note in diag["notes"])


def test_json_clean_file_is_an_empty_list(capsys, write):
    status, out, _ = run(capsys, "check", "--format", "json", write("tiny.cnn", CLEAN))
    assert status == 0
    assert json.loads(out) == []


def test_json_warning(capsys, write):
    path = write("warned.cnn", WARNED)
    status, out, _ = run(capsys, "check", "--format", "json", path)
    assert status == 0
    (diag,) = json.loads(out)
    assert set(diag) == DIAGNOSTIC_KEYS
    assert (diag["code"], diag["severity"], diag["line"], diag["column"]) == (
        "W402", "warning", 3, 1)
    assert run(capsys, "check", "--format", "json", "--werror", path)[0] == 1


def test_json_several_files_one_list(capsys, write, tmp_path):
    warned = write("warned.cnn", WARNED)
    broken = write("broken.cnn", BROKEN)
    missing = tmp_path / "nowhere.cnn"
    status, out, err = run(capsys, "check", "--format", "json", warned, missing, broken)
    assert status == 2
    diags = json.loads(out)
    assert [(d["file"], d["code"]) for d in diags] == [(str(warned), "W402"),
                                                       (str(broken), "E304")]
    assert f"cannot read {missing}" in err


def test_json_diagnostic_without_a_place(capsys, write):
    # a file with no input and no output: E216 and E217 belong to no span
    status, out, _ = run(capsys, "check", "--format", "json", write("empty.cnn", "# nothing\n"))
    assert status == 1
    diags = json.loads(out)
    assert [d["code"] for d in diags] == ["E216", "E217"]
    for diag in diags:
        assert set(diag) == DIAGNOSTIC_KEYS
        assert diag["line"] is None and diag["end_column"] is None


def test_json_syntax_error(capsys, write):
    source = "input x: [3, 8, 8]\noutput y = x -> conv(8, 3 -> relu\n"
    status, out, _ = run(capsys, "check", "--format", "json", write("syntax.cnn", source))
    assert status == 1
    (diag,) = json.loads(out)
    assert diag["code"].startswith("E1")
    assert diag["line"] == 2
    assert "expected" in diag["message"]


# ---- summary ---------------------------------------------------------------------------------

def test_summary_googlenet_text(capsys):
    status, out, err = run(capsys, "summary", GOOGLENET)
    assert status == 0
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == "network googlenet"
    assert "input   image: [3, 224, 224]" in lines
    assert f"Total parameters:  {GOOGLENET_PARAMS:,} " in out
    assert f"Total MACs:        {GOOGLENET_MACS:,} " in out
    assert "Output logits: [1000]" in lines
    # spec section 5 names
    for name in ("stem.conv1", "stem.conv3", "i3.inception2.b3.conv2", "logits.dense1"):
        assert any(line.split()[:1] == [name] for line in lines), name


def table(out: str) -> tuple[str, list[str]]:
    """The header and body rows of a summary table: the lines between the dashed rules."""
    lines = out.splitlines()
    rules = [i for i, line in enumerate(lines) if line and set(line) == {"-"}]
    assert len(rules) == 3, rules
    return lines[rules[0] + 1], lines[rules[1] + 1: rules[2]]


def test_summary_table_is_aligned(capsys):
    _, out, _ = run(capsys, "summary", GOOGLENET)
    header, body = table(out)
    assert header.split() == ["Layer", "Op", "Output", "shape", "Params", "MACs"]
    assert len(body) > 100
    starts = [header.index(title) for title in ("Op", "Output shape")]
    params_end = header.index("Params") + len("Params")
    for row in body:
        # left-aligned columns start where their titles start
        for start in starts:
            assert row[start - 1] == " " and row[start] != " ", row
        # numbers are right-aligned under their titles: each row is as long as the header
        assert len(row) == len(header), row
        assert row[params_end - 1].isdigit() and row[params_end] == " ", row
        assert row[-1].isdigit(), row


def test_summary_row_values(capsys, write):
    _, out, _ = run(capsys, "summary", write("tiny.cnn", CLEAN))
    _, body = table(out)
    rows = [re.split(r"\s{2,}", row) for row in body]
    assert rows == [
        ["y.conv1", "conv(8, 3, pad=1)", "[8, 32, 32]", "224", "221,184"],
        ["y.relu1", "relu", "[8, 32, 32]", "0", "0"],
        ["y.global_avgpool1", "global_avgpool", "[8, 1, 1]", "0", "0"],
        ["y.flatten1", "flatten", "[8]", "0", "0"],
        ["y.dense1", "dense(10)", "[10]", "90", "80"],
    ]
    assert "Total parameters:  314 " in out
    assert "Total MACs:        221,264 " in out


def test_summary_googlenet_json(capsys):
    status, out, _ = run(capsys, "summary", "--format", "json", GOOGLENET)
    assert status == 0
    rep = json.loads(out)
    # the spec's keys; the project may add more (it prints activation_bytes too)
    assert SUMMARY_KEYS <= set(rep)
    assert rep["network"] == "googlenet"
    assert rep["inputs"] == [{"name": "image", "shape": [3, 224, 224]}]
    assert rep["outputs"] == [{"name": "logits", "shape": [1000]}]
    assert rep["total_params"] == GOOGLENET_PARAMS
    assert rep["total_macs"] == GOOGLENET_MACS
    layers = rep["layers"]
    for layer in layers:
        assert set(layer) == LAYER_KEYS
    assert sum(layer["params"] for layer in layers) == GOOGLENET_PARAMS
    assert sum(layer["macs"] for layer in layers) == GOOGLENET_MACS
    by_name = {layer["name"]: layer for layer in layers}
    assert len(by_name) == len(layers)  # names are unique
    assert by_name["stem.conv1"] == {
        "name": "stem.conv1", "op": "conv", "output_shape": [64, 112, 112],
        "params": 64 * 3 * 7 * 7 + 64, "macs": 64 * 112 * 112 * 3 * 7 * 7,
    }
    assert by_name["logits.dense1"] == {
        "name": "logits.dense1", "op": "dense", "output_shape": [1000],
        "params": 1024 * 1000 + 1000, "macs": 1024 * 1000,
    }
    assert by_name["i5.inception2.concat1"]["output_shape"] == [1024, 7, 7]


def test_summary_and_check_agree_on_layers(capsys):
    _, out, _ = run(capsys, "check", GOOGLENET)
    count = int(re.search(r"(\d+) layers", out).group(1))
    _, out, _ = run(capsys, "summary", "--format", "json", GOOGLENET)
    assert len(json.loads(out)["layers"]) == count


def test_summary_of_a_broken_file(capsys, write):
    path = write("broken.cnn", BROKEN)
    status, out, err = run(capsys, "summary", path)
    assert status == 1
    assert out == ""
    assert "error[E304]" in err
    assert f"cnnc check {path}" in err


def test_summary_with_warnings_only(capsys, write):
    status, out, _ = run(capsys, "summary", "--format", "json", write("warned.cnn", WARNED))
    assert status == 0
    assert json.loads(out)["total_params"] == CLEAN_PARAMS


@pytest.mark.parametrize("target", ["missing", "directory"])
def test_summary_unreadable_exits_2(capsys, tmp_path, target):
    path = tmp_path / "nowhere.cnn" if target == "missing" else tmp_path
    status, out, err = run(capsys, "summary", path)
    assert status == 2
    assert out == ""
    assert f"cannot read {path}" in err


# ---- symbolic sizes and --size ---------------------------------------------------------------

def test_symbolic_input_checks(capsys, write):
    status, out, _ = run(capsys, "check", write("sym.cnn", SYMBOLIC))
    assert status == 0
    assert "ok: network tiny" in out
    assert "valid for" in out


def test_size_makes_the_summary_concrete(capsys, write):
    sym = write("sym.cnn", SYMBOLIC)
    concrete = write("tiny.cnn", CLEAN)
    status, out, _ = run(capsys, "summary", "--format", "json", "--size", "H=32",
                         "--size", "W=32", sym)
    assert status == 0
    with_sizes = json.loads(out)
    _, out, _ = run(capsys, "summary", "--format", "json", concrete)
    assert with_sizes == json.loads(out)
    assert with_sizes["total_macs"] == CLEAN_MACS


def test_summary_without_sizes_is_symbolic(capsys, write):
    status, out, _ = run(capsys, "summary", "--format", "json", write("sym.cnn", SYMBOLIC))
    assert status == 0
    rep = json.loads(out)
    assert rep["inputs"] == [{"name": "x", "shape": [3, "H", "W"]}]
    assert rep["total_params"] == CLEAN_PARAMS  # no parameter depends on H or W
    assert isinstance(rep["total_macs"], str)
    assert "H" in rep["total_macs"] and "W" in rep["total_macs"]


def test_size_224_on_googlenet_like_input(capsys, write):
    source = GOOGLENET.read_text().replace("[3, 224, 224]", "[3, H, W]")
    path = write("googlenet_hw.cnn", source)
    status, out, _ = run(capsys, "summary", "--format", "json", "--size", "H=224",
                         "--size", "W=224", path)
    assert status == 0
    rep = json.loads(out)
    assert (rep["total_params"], rep["total_macs"]) == (GOOGLENET_PARAMS, GOOGLENET_MACS)
    status, out, _ = run(capsys, "check", "--size", "H=224", "--size", "W=224", path)
    assert status == 0
    assert f"{GOOGLENET_PARAMS:,} parameters" in out


def test_size_for_one_symbol_leaves_the_other(capsys, write):
    status, out, _ = run(capsys, "check", "--size", "H=224", write("sym.cnn", SYMBOLIC))
    assert status == 0
    valid = [line for line in out.splitlines() if "valid for" in line]
    assert len(valid) == 1
    assert "W" in valid[0] and "H" not in valid[0]


def test_size_for_an_unknown_symbol_is_an_error(capsys, write):
    status, out, _ = run(capsys, "check", "--size", "Q=3", write("sym.cnn", SYMBOLIC))
    assert status == 1
    assert codes(out) == ["E219"]
    assert "`Q`" in out


@pytest.mark.parametrize("command", ["check", "summary"])
@pytest.mark.parametrize("value, reason", [
    ("H", "expected NAME=VALUE"),
    ("H=", "must be an integer"),
    ("=224", "expected NAME=VALUE"),
    ("H=abc", "must be an integer"),
    ("H=2.5", "must be an integer"),
    ("H=0", "at least 1"),
    ("H=-3", "at least 1"),
    ("1=2", "expected NAME=VALUE"),
    ("H W=3", "expected NAME=VALUE"),
])
def test_bad_size_values_exit_2(capsys, write, command, value, reason):
    path = write("sym.cnn", SYMBOLIC)
    status, out, err = run(capsys, command, f"--size={value}", path)
    assert status == 2
    assert out == ""
    assert "--size" in err
    assert reason in err
    assert "Traceback" not in err


# ---- --version and --help --------------------------------------------------------------------

def test_version(capsys):
    status, out, _ = run(capsys, "--version")
    assert status == 0
    assert out.strip() == f"cnnc {cnnc.__version__}"


def commands() -> list[str]:
    """Every subcommand the parser knows, so a new command gets its --help tested too."""
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return sorted(action.choices)
    return []


def test_commands_include_check_and_summary():
    assert {"check", "summary"} <= set(commands())


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_top_level_help(capsys, flag):
    status, out, err = run(capsys, flag)
    assert status == 0
    assert out.startswith("usage: cnnc")
    for command in commands():
        assert command in out
    assert err == ""


@pytest.mark.parametrize("command", commands())
def test_command_help(capsys, command):
    status, out, err = run(capsys, command, "--help")
    assert status == 0
    assert out.startswith(f"usage: cnnc {command}")
    if command in ("check", "summary", "run", "export", "train"):  # the commands on a model
        assert "--format" in out
        assert "--size" in out
        assert "--let" in out
    assert err == ""


def test_check_help_mentions_exit_codes_and_werror(capsys):
    _, out, _ = run(capsys, "check", "--help")
    assert "--werror" in out
    assert "Exit 0" in out


# ---- rendering -------------------------------------------------------------------------------

@pytest.mark.parametrize("separator", ["\u0085", "\u2028", "\f", "\r"])
def test_source_line_shown_is_the_line_of_the_span(capsys, write, separator):
    """Lines count at \\n only, as the parser counts them; str.splitlines() also breaks at
    U+0085, U+2028, \\f and a lone \\r, and would show the wrong line under the span."""
    source = f"input x: [3, 8, 8]  # a comment with{separator}inside it\noutput y = x -> reluu\n"
    status, out, _ = run(capsys, "check", write("odd.cnn", source))
    assert status == 1
    assert ":2:17: error[E203]" in out
    assert "2 | output y = x -> reluu" in out


# ---- the installed console script ------------------------------------------------------------

CNNC = Path(sys.executable).with_name("cnnc")
script = pytest.mark.skipif(not CNNC.exists(), reason="the cnnc console script is not installed")


@script
def test_script_checks_googlenet():
    done = subprocess.run([CNNC, "check", GOOGLENET], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0
    assert "ok: network googlenet, " in done.stdout
    assert done.stderr == ""


@script
def test_script_reads_stdin_and_exits_1():
    done = subprocess.run([CNNC, "check", "--format", "json", "-"], input=BROKEN,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert [d["code"] for d in json.loads(done.stdout)] == ["E304"]
    assert json.loads(done.stdout)[0]["file"] == "<stdin>"


@script
def test_script_usage_error_exits_2(tmp_path):
    done = subprocess.run([CNNC, "check", "--size", "H=x", tmp_path / "a.cnn"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "size H must be an integer" in done.stderr
    assert "Traceback" not in done.stderr


@script
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_script_closed_pipe_keeps_the_error_status(tmp_path, fmt):
    # enough diagnostics to fill the pipe before the reader goes away
    lines = "".join(f"v{k} = x -> conv(0, 1)\n" for k in range(3000))
    path = tmp_path / "errors.cnn"
    path.write_text(f"input x: [3, 8, 8]\n{lines}output y = x\n")
    child = subprocess.Popen([CNNC, "check", "--format", fmt, path], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    child.stdout.readline()
    child.stdout.close()  # as `| head -1` does
    err = child.stderr.read().decode()
    status = child.wait(timeout=60)
    assert status == 1
    assert "Traceback" not in err


@script
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_script_full_disk_is_reported_not_raised():
    with open("/dev/full", "w") as full:
        done = subprocess.run([CNNC, "check", GOOGLENET], stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=60)
    assert done.returncode != 0
    assert "cnnc: error" in done.stderr
    assert "Traceback" not in done.stderr
