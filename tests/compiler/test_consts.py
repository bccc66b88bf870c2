"""Constants set from outside the file: ``consts=`` in Python, ``--let NAME=VALUE`` on the
command line. They replace top-level ``let`` values; unknown names are E221, unreadable
values E222, each naming the constant and the value given."""

import pytest

import cnnc
from cnnc.cli import main
from cnnc.dsl.diagnostics import CODES

SOURCE = """\
let width = 16
let kernel = [3, 3]
let mode = nearest
input x: [3, 32, 32]
block stage(c) {
  let pad_ = 0
  return in -> conv(c, kernel, pad=pad_) -> relu
}
output y = x -> stage(width) -> upsample(2, mode=mode) -> global_avgpool -> flatten -> dense(10)
"""


def shapes(net):
    return {node.name: node.shape for node in net.nodes.values()}


def messages(net, code):
    return [d.message for d in net.diagnostics if d.code == code]


def test_a_constant_replaces_the_files_value():
    base = shapes(cnnc.check(SOURCE))
    wide = shapes(cnnc.check(SOURCE, consts={"width": 32}))
    conv = [name for name in base if "conv" in name][0]
    assert base[conv] == (16, 30, 30)
    assert wide[conv] == (32, 30, 30)


@pytest.mark.parametrize("given,expected", [
    ("48", (48, 30, 30)),
    ("2 * 24", (48, 30, 30)),
    (48, (48, 30, 30)),
])
def test_text_is_read_as_a_cnn_value(given, expected):
    net = cnnc.check(SOURCE, consts={"width": given})
    assert net.ok, net.render(net.errors)
    conv = [name for name in shapes(net) if "conv" in name][0]
    assert shapes(net)[conv] == expected


def test_lists_and_words():
    net = cnnc.compile(SOURCE, consts={"kernel": "[5, 1]", "mode": "bilinear"})
    conv = [n for n in net.nodes.values() if n.op == "conv"][0]
    assert conv.shape == (16, 28, 32)
    up = [n for n in net.nodes.values() if n.op == "upsample"][0]
    assert up.args["mode"] == "bilinear"
    assert cnnc.check(SOURCE, consts={"kernel": [5, 1]}).ok


def test_only_top_level_lets_are_set():
    # the block's own `let pad_` is not a top-level constant
    net = cnnc.check(SOURCE, consts={"pad_": 1})
    assert messages(net, "E221") == [
        "--let gives `pad_`, but the model has no top-level `let pad_`"]


def test_an_unknown_name_is_an_error_that_lists_the_constants():
    net = cnnc.check(SOURCE, consts={"widht": 8})
    assert not net.ok
    (d,) = [d for d in net.diagnostics if d.code == "E221"]
    assert d.message == "--let gives `widht`, but the model has no top-level `let widht`"
    assert d.notes == ["the model's constants are `width`, `kernel`, `mode`"]
    assert d.help == "did you mean `width`?"


@pytest.mark.parametrize("given,reason", [
    ("[1,", "it is not a value such as 32, 0.5, [3, 3], true or bilinear"),
    ("", "the value is empty"),
    ("1\n2", "the value holds a control character"),
    ("1 // 0", "division by zero"),
    ("9" * 2000, "a value is at most 1,000 characters, got 2,000"),
])
def test_unreadable_text(given, reason):
    net = cnnc.check(SOURCE, consts={"width": given})
    (message,) = messages(net, "E222")
    assert message.endswith(": " + reason)
    assert message.startswith("--let width=")
    assert len(message) < 200


@pytest.mark.parametrize("given", [object(), float("nan"), {"a": 1}, 10 ** 2000])
def test_unreadable_python_values(given):
    net = cnnc.check(SOURCE, consts={"width": given})
    assert messages(net, "E222")


def test_compile_raises_with_the_diagnostic():
    with pytest.raises(cnnc.CompileError) as err:
        cnnc.compile(SOURCE, consts={"depth": 3})
    assert "E221" in str(err.value)


def test_the_templates_are_the_registrys():
    assert CODES["E221"].title == "unknown constant"
    assert CODES["E222"].title == "invalid constant value"


def test_cli_let(tmp_path, capsys):
    model = tmp_path / "m.cnn"
    model.write_text(SOURCE)
    assert main(["check", str(model), "--let", "width=32", "--shapes"]) == 0
    out = capsys.readouterr().out
    assert "[32, 30, 30]" in out
    assert main(["check", str(model), "--let", "depth=3"]) == 1
    err = capsys.readouterr()
    assert "error[E221]" in err.out + err.err


def test_cli_let_needs_a_name(tmp_path, capsys):
    model = tmp_path / "m.cnn"
    model.write_text(SOURCE)
    with pytest.raises(SystemExit) as done:
        main(["check", str(model), "--let", "32"])
    assert done.value.code == 2
    assert "expected NAME=VALUE, as in width=32; got 32" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["summary"])
def test_every_model_command_applies_let(tmp_path, capsys, command):
    import json

    model = tmp_path / "m.cnn"
    model.write_text(SOURCE)
    assert main([command, str(model), "--format", "json"]) == 0
    narrow = json.loads(capsys.readouterr().out)
    assert main([command, str(model), "--let", "width=32", "--format", "json"]) == 0
    wide = json.loads(capsys.readouterr().out)
    assert narrow != wide


def test_graph_and_diff_apply_let(tmp_path, capsys):
    model = tmp_path / "m.cnn"
    model.write_text(SOURCE)
    assert main(["graph", str(model), "--let", "width=32", "-o", str(tmp_path / "m.dot")]) == 0
    assert "[32, 30, 30]" in (tmp_path / "m.dot").read_text()
    capsys.readouterr()
    assert main(["diff", str(model), str(model), "--let", "width=32"]) == 0
