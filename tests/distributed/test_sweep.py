"""`cnnc sweep`: the grid of `let` values, every configuration checked before any trial
(the invalid ones listed with their first diagnostic), one Ray Tune trial per valid one,
results as a table and JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnnc.cli import main
from cnnc.distributed.sweep import check_configuration, configurations, split_values

pytestmark = pytest.mark.ray

SWEEP = """\
network sweep
let width = 4
let depth = 1
input x: [1, 4, 4]
block unit(c) {
    return in -> conv(c, 3, pad=1) -> relu -> maxpool(2)
}
output y = x -> unit(width) * depth -> flatten -> dense(3)
"""


def test_values_and_grid():
    assert split_values("16,32, 64") == ["16", "32", "64"]
    assert split_values("[1,2],[3,4]") == ["[1,2]", "[3,4]"]
    grid = configurations({"width": ["2", "4"], "depth": ["1", "2", "3"]})
    assert len(grid) == 6
    assert grid[:2] == [{"width": "2", "depth": "1"}, {"width": "2", "depth": "2"}]


def test_configurations_are_checked_without_ray():
    ok = check_configuration(SWEEP.encode(), "s.cnn", {"width": "4", "depth": "1"})
    # conv 4*(1*9)+4 = 40, dense 3*(4*2*2)+3 = 51
    assert ok.ok and ok.params == 91 and ok.macs > 0
    bad = check_configuration(SWEEP.encode(), "s.cnn", {"width": "4", "depth": "3"})
    assert not bad.ok
    assert bad.error.startswith("s.cnn:6:") and "E301" in bad.error


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweep.cnn").write_text(SWEEP)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 40)
    x = rng.normal(size=(40, 1, 4, 4))
    x[np.arange(40), 0, y, 0] += 3
    np.savez(tmp_path / "d.npz", x=x[:32], y=y[:32], x_test=x[32:], y_test=y[32:])
    return tmp_path


def test_sweep_trains_the_valid_ones(work, capsys, ray_session):
    status = main(["sweep", "sweep.cnn", "--let", "width=2,4", "--let", "depth=1,3",
                   "--data", "d.npz", "--epochs", "1", "-o", "results.json"])
    out, err = capsys.readouterr()
    assert status == 1  # two configurations have errors
    assert "2 of 4 configurations have errors and will not be trained" in err
    assert "width=2 depth=3: sweep.cnn:6:" in err and "E301" in err
    header = out.splitlines()[0].split()
    assert header == ["width", "depth", "accuracy", "parameters", "MACs", "seconds"]
    report = json.loads((work / "results.json").read_text())
    trials = report["trials"]
    assert [t["let"] for t in trials] == [{"width": "2", "depth": "1"},
                                          {"width": "4", "depth": "1"}]
    for t in trials:
        assert t["error"] is None and 0 <= t["accuracy"] <= 1 and t["seconds"] > 0
    assert [t["parameters"] for t in trials] == [2 * 9 + 2 + 3 * 8 + 3, 91]
    assert len(report["invalid"]) == 2


def test_nothing_valid_is_refused_before_ray(work, capsys):
    status = main(["sweep", "sweep.cnn", "--let", "depth=3,4", "--data", "d.npz"])
    _, err = capsys.readouterr()
    assert status == 1 and "none of the 2 configurations checks" in err


def test_a_sweep_leaves_the_interrupt_handler_as_it_was(tmp_path, monkeypatch, capsys,
                                                      ray_session):
    import signal

    pytest.importorskip("sklearn")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.cnn").write_text("network m\nlet width = 8\ninput x: [1, 8, 8]\n"
                                    "output y = x -> flatten -> dense(width) -> dense(10)\n")
    before = signal.getsignal(signal.SIGINT)
    assert main(["sweep", "m.cnn", "--let", "width=4,8", "--data", "digits",
                 "--epochs", "1"]) == 0
    assert signal.getsignal(signal.SIGINT) is before
