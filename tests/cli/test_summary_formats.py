"""`cnnc summary`: CSV, receptive-field columns and JSON keys, and the rich table on a
terminal; the plain table stays the same when stdout is not a terminal."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import cnnc
from cnnc.cli import main
from cnnc.compiler.summary import render_table, report

ROOT = Path(__file__).resolve().parents[2]
LENET = ROOT / "examples" / "lenet5.cnn"


def test_csv_has_a_row_per_layer_with_plain_numbers(capsys):
    assert main(["summary", "--format", "csv", str(LENET)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    net = cnnc.check(LENET)
    assert [r["name"] for r in rows] == [n.name for n in net.layers]
    assert rows[0] == {"name": "features.c1", "op": "conv", "layer": "conv(6, 5)",
                       "output_shape": "[6, 28, 28]", "params": "156", "macs": "117600"}
    assert sum(int(r["params"]) for r in rows) == 61_706  # LeCun et al. 1998's C1..F6 + out


def test_csv_with_receptive_fields(capsys):
    assert main(["summary", "--format", "csv", "--rf", str(LENET)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    # c1 5x5; s2 2x2 stride 2 -> 6; c3 5x5 at jump 2 -> 14; s4 -> 16; c5 at jump 4 -> 32
    assert [(r["receptive_field"], r["jump"]) for r in rows[:7:2]] == \
        [("5", "1"), ("6", "2"), ("14", "2"), ("32", "4")]
    assert rows[-1]["receptive_field"] == "all"


def test_rf_columns_and_the_note_under_the_table(capsys):
    assert main(["summary", "--rf", str(LENET)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("Layer"))
    assert header.split()[-3:] == ["RF", "Jump", "Offset"]
    assert "RF: receptive field in input units" in out
    assert "MACs count convolutions and dense layers only; not counted: tanh" in out


def test_plain_table_without_rf_is_unchanged(capsys):
    assert main(["summary", str(LENET)]) == 0
    out = capsys.readouterr().out
    assert out == render_table(report(cnnc.check(LENET))) + "\n"
    assert "RF" not in out


def test_json_has_receptive_fields_beside_the_old_keys(capsys):
    assert main(["summary", "--format", "json", str(LENET)]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert set(rep["layers"][0]) == {"name", "op", "output_shape", "params", "macs"}
    fields = rep["receptive_fields"]
    assert list(fields) == [layer["name"] for layer in rep["layers"]]
    assert fields["features.c1"] == {"size": [5, 5], "jump": [1, 1], "offset": [2, 2]}
    assert fields["features.s2"] == {"size": [6, 6], "jump": [2, 2], "offset": [2.5, 2.5]}
    assert fields["logits.out"]["size"] == "all"
    assert rep["receptive_field_warnings"] == []


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_the_rich_table(monkeypatch):
    out = _Terminal()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setenv("COLUMNS", "120")
    assert main(["summary", str(LENET)]) == 0
    text = out.getvalue()
    assert "network lenet5" in text and "features.c1" in text and "117,600" in text
    assert "─" in text  # rich's rule under the header, not the plain dashes
    assert "-" * 20 not in text
    assert "Total parameters:  61,706" in text


# ---- the training progress (commands/progress.py): rich on a terminal, plain lines else ----

def _stats(**kw):
    from types import SimpleNamespace

    values = dict(epoch=3, train_loss=0.123456, train_accuracy=0.9512, test_accuracy=0.9375,
                  images_per_second=12345.6, seconds=2.04, lr=0.001)
    values.update(kw)
    return SimpleNamespace(**values)


def _one_epoch(progress):
    progress.start_epoch(3, 10, 4)
    for done in range(1, 5):
        progress.step(done, 4, 0.5 / done, 0.25 * done, 1000.0 * done)
    progress.end_epoch(_stats(), 10)


def test_progress_off_a_terminal_is_one_plain_line_per_epoch():
    from cnnc.commands.progress import Lines, progress_for

    out = io.StringIO()
    progress = progress_for(out)
    assert isinstance(progress, Lines)
    _one_epoch(progress)
    progress.end_epoch(_stats(epoch=4, test_accuracy=None), 10)
    # the format `cnnc train` has always printed: scripts read it
    assert out.getvalue().splitlines() == [
        "epoch  3/10  loss 0.1235  train acc 95.12%  test acc 93.75%  12,346 img/s  2.0s  "
        "lr 0.001",
        "epoch  4/10  loss 0.1235  train acc 95.12%  test acc -  12,346 img/s  2.0s  lr 0.001",
    ]


def test_progress_on_a_terminal_draws_a_rich_bar_and_leaves_the_epoch_line():
    from cnnc.commands.progress import Bar, epoch_line, progress_for

    out = _Terminal()
    progress = progress_for(out)
    assert isinstance(progress, Bar)
    _one_epoch(progress)
    text = out.getvalue()
    assert "\x1b[" in text  # drawn in place with terminal controls
    assert text.rstrip().endswith(epoch_line(_stats(), 10))
