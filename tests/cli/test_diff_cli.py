"""`cnnc diff`: exit 0 same, 1 different, 2 trouble; text and JSON."""

from __future__ import annotations

import json
from pathlib import Path

from cnnc.cli import main

ROOT = Path(__file__).resolve().parents[2]
ALEXNET = ROOT / "examples" / "alexnet.cnn"


def _wider(tmp_path) -> Path:
    text = ALEXNET.read_text().replace("conv(64, 11, stride=4, pad=2) -> relu",
                                       "conv(96, 11, stride=4, pad=2) -> batchnorm -> relu")
    path = tmp_path / "alexnet_bn.cnn"
    path.write_text(text)
    return path


def test_the_same_model_exits_0(capsys):
    assert main(["diff", str(ALEXNET), str(ALEXNET)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("same: 22 layers")


def test_different_models_exit_1_with_every_change(tmp_path, capsys):
    wider = _wider(tmp_path)
    assert main(["diff", str(ALEXNET), str(wider)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"--- {ALEXNET} (network alexnet)"
    assert lines[1] == f"+++ {wider} (network alexnet)"
    assert lines[2].startswith("+ features.batchnorm1: batchnorm -> [96, 55, 55]")
    assert any(line.startswith("~ features.conv1: conv(64, 11, stride=4, pad=2) -> "
                               "conv(96, 11, stride=4, pad=2), [64, 55, 55] -> [96, 55, 55]")
               for line in lines)
    assert "first shape change: features.conv1: [64, 55, 55] -> [96, 55, 55]" in lines
    parameters = next(line for line in lines if line.startswith("parameters"))
    assert parameters.split()[1:3] == ["61,100,840", "61,266,280"]  # torchvision's 61,100,840
    assert lines[-1] == "1 added, 0 removed, 4 changed, 18 the same"


def test_json(tmp_path, capsys):
    assert main(["diff", "--format", "json", str(ALEXNET), str(_wider(tmp_path))]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert rep["same"] is False
    assert [a["name"] for a in rep["added"]] == ["features.batchnorm1"]
    assert rep["totals"]["params"] == {"old": 61_100_840, "new": 61_266_280,
                                       "delta": 165_440}


def test_trouble_exits_2(tmp_path, capsys):
    assert main(["diff", str(ALEXNET), str(tmp_path / "missing.cnn")]) == 2
    assert "cannot read" in capsys.readouterr().err
    broken = ROOT / "examples" / "broken" / "typos.cnn"
    assert main(["diff", str(ALEXNET), str(broken)]) == 2
    err = capsys.readouterr().err
    assert "has errors" in err and "error[" in err
    assert main(["diff", "-", "-"]) == 2
    assert "only one of the two models" in capsys.readouterr().err
