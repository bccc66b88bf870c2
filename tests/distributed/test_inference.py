"""`cnnc run --ray`: shards through Ray Data's actor pool, outputs equal to a plain
`cnnc run` of each shard, finished shards skipped on a rerun, failures listed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnnc.cli import main

pytestmark = pytest.mark.ray

SMALL = """\
network small
input x: [2, H, 6]
output y = x -> conv(3, 3, pad=1) -> relu -> global_avgpool -> flatten -> dense(4)
"""


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "small.cnn").write_text(SMALL)
    (tmp_path / "shards").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        np.save(tmp_path / "shards" / f"part{i}.npy",
                rng.normal(size=(5 + i, 2, 6, 6)).astype(np.float32))
    return tmp_path


def test_shards_match_single_runs_and_resume(work, capsys, ray_session):
    status = main(["run", "small.cnn", "--input", "shards/*.npy", "-o", "out", "--ray",
                   "--actors", "2", "--batch", "4"])
    _, err = capsys.readouterr()
    assert status == 0, err
    assert "wrote 3 shards to out: 18 samples" in err and "with 2 actors" in err
    for i in range(3):
        assert main(["run", "small.cnn", "--input", f"shards/part{i}.npy", "-o",
                     f"single{i}.npy", "-q"]) == 0
        np.testing.assert_allclose(np.load(work / "out" / f"part{i}.npy"),
                                   np.load(work / f"single{i}.npy"), rtol=1e-6, atol=1e-6)
    # a rerun skips what is done; a removed output is made again
    (work / "out" / "part1.npy").unlink()
    capsys.readouterr()
    status = main(["run", "small.cnn", "--input", "shards", "-o", "out", "--ray",
                   "--format", "json"])
    out, _ = capsys.readouterr()
    report = json.loads(out)
    assert status == 0
    assert report["shards"] == 1 and report["samples"] == 6
    assert report["skipped"] == ["shards/part0.npy", "shards/part2.npy"]


def test_failed_shards_are_listed_and_not_written(work, capsys, ray_session):
    np.save(work / "shards" / "wide.npy", np.zeros((2, 2, 6, 7), np.float32))  # W is 6
    status = main(["run", "small.cnn", "--input", "shards/*.npy", "-o", "out2", "--ray"])
    _, err = capsys.readouterr()
    assert status == 2
    assert "1 of 4 shards failed" in err and "shards/wide.npy:" in err
    assert not (work / "out2" / "wide.npy").exists()
    assert (work / "out2" / "part0.npy").exists()


@pytest.mark.parametrize("argv, words", [
    (["--input", "nothing/*.npy", "-o", "out", "--ray"], "names no shard files"),
    (["--input", "shards/*.npy", "-o", "-", "--ray"], "-o names a folder"),
    (["--input", "shards/part0.npy", "-o", "y.npy", "--actors", "2"], "--actors applies with "
     "--ray"),
])
def test_refusals_before_ray_starts(work, capsys, argv, words):
    status = main(["run", "small.cnn", *argv])
    _, err = capsys.readouterr()
    assert status == 2 and words in err and "Traceback" not in err


def test_a_pool_the_cluster_cannot_hold_is_refused(work, capsys, ray_session):
    # the test session's Ray has 2 CPUs and no GPU: waiting for these would never end
    status = main(["run", "small.cnn", "--input", "shards", "-o", "out3", "--ray",
                   "--gpus-per-actor", "1"])
    _, err = capsys.readouterr()
    assert status == 2
    assert "cnnc: error: 1 actor of 1 GPU each need 1 GPU; the Ray cluster has 0" in err
    status = main(["run", "small.cnn", "--input", "shards", "-o", "out3", "--ray",
                   "--actors", "3"])
    _, err = capsys.readouterr()
    assert status == 2 and "3 actors of 1 CPU each need 3 CPUs; the Ray cluster has 2" in err
