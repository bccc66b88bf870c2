"""Joining Ray (distributed/session.py): an address that does not answer is refused at
once, naming it, instead of Ray's minutes of retries; and nothing but `--ray` imports Ray."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from cnnc.cli import main
from cnnc.distributed.session import RayError, probe


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_address_that_does_not_answer():
    port = closed_port()
    with pytest.raises(RayError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}: "):
        probe(f"127.0.0.1:{port}")
    probe("auto")  # left to Ray


def test_train_with_an_unreachable_cluster(tmp_path, monkeypatch, capsys):
    pytest.importorskip("ray")
    pytest.importorskip("sklearn")
    monkeypatch.chdir(tmp_path)
    port = closed_port()
    (tmp_path / "m.cnn").write_text("network m\ninput x: [1, 8, 8]\n"
                                    "output y = x -> flatten -> dense(10)\n")
    status = main(["train", "m.cnn", "--data", "digits", "--ray", "--address",
                   f"127.0.0.1:{port}"])
    _, err = capsys.readouterr()
    assert status == 2 and f"cannot reach the Ray cluster at 127.0.0.1:{port}" in err


def test_plain_commands_never_import_ray(tmp_path):
    (tmp_path / "m.cnn").write_text("network m\ninput x: [1, 8, 8]\n"
                                    "output y = x -> flatten -> dense(10)\n")
    code = ("import sys\nfrom cnnc.cli import main\n"
            f"main(['check', {str(tmp_path / 'm.cnn')!r}])\n"
            "print('ray' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip().splitlines()[-1] == "False", done.stderr
