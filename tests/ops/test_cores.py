"""`ops/cores.usable_cores`: the CPU affinity, capped by a cgroup v2 CPU quota; the compiled
kernels' default thread count and `runtime/threads.py`'s both read it."""

from __future__ import annotations

import os

import pytest

from cnnc.ops import cores


def _affinity():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@pytest.mark.parametrize("text, cap", [
    ("150000 100000\n", 2),  # 1.5 CPUs: two cores, one of them part-time
    ("100000 100000\n", 1),
    ("50000 100000\n", 1),  # under one CPU: still one
    ("max 100000\n", None),
    ("garbage\n", None),
    ("", None),
])
def test_a_cgroup_quota_caps_the_affinity(tmp_path, monkeypatch, text, cap):
    limit = tmp_path / "cpu.max"
    limit.write_text(text)
    monkeypatch.setattr(cores, "CPU_MAX", str(limit))
    expected = _affinity() if cap is None else min(_affinity(), cap)
    assert cores.usable_cores() == expected


def test_no_cgroup_file_is_the_affinity(tmp_path, monkeypatch):
    monkeypatch.setattr(cores, "CPU_MAX", str(tmp_path / "missing"))
    assert cores.usable_cores() == _affinity()


def test_the_kernels_default_and_the_runtime_read_the_same_count(tmp_path, monkeypatch):
    fast = pytest.importorskip("cnnc.ops.fast")
    from cnnc.runtime import threads

    limit = tmp_path / "cpu.max"
    limit.write_text("100000 100000\n")
    monkeypatch.setattr(cores, "CPU_MAX", str(limit))
    monkeypatch.setattr(cores, "_last", None)  # (the kernels reuse a reading for 1 s)
    fast.set_threads(None)
    assert fast.get_threads() == threads.usable_cores() == 1


def test_a_reading_is_reused_only_within_max_age(tmp_path, monkeypatch):
    limit = tmp_path / "cpu.max"
    limit.write_text("100000 100000\n")
    monkeypatch.setattr(cores, "CPU_MAX", str(limit))
    assert cores.usable_cores() == 1
    limit.write_text("max 100000\n")
    assert cores.usable_cores(max_age=60) == 1  # the reading of a moment ago
    assert cores.usable_cores() == _affinity()  # max_age 0: read again
