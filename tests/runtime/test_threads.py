"""runtime/threads.py: the thread count's sources and their order, the limit a call runs
under (and the counts restored after it), the load sampler's arithmetic, and the executor
running under it."""

import numpy as np
import pytest

from cnnc.runtime import threads

threadpoolctl = pytest.importorskip("threadpoolctl")


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    monkeypatch.delenv(threads.ENV, raising=False)
    threads.set_threads(None)
    yield
    threads.set_threads(None)


def blas_threads():
    return threads.blas_threads()


@pytest.mark.parametrize("text, want", [("3", 3), (" 1 ", 1), ("auto", None), ("", None),
                                        (None, None), (2, 2)])
def test_parse_accepts_counts_and_auto(text, want):
    assert threads.parse(text) == want


@pytest.mark.parametrize("text", ["0", "-2", "two", "1.5"])
def test_parse_names_the_source_and_the_value(text):
    with pytest.raises(threads.ThreadsError, match=rf"CNNC_NUM_THREADS .*{text!r}|{text}"):
        threads.parse(text)


def test_python_setting_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv(threads.ENV, "3")
    assert threads.setting() == 3
    threads.set_threads(1)
    assert threads.setting() == 1 and threads.decide() == 1
    threads.set_threads("auto")
    assert threads.setting() == 3
    assert threads.decide(2) == 2  # a call's own count wins over both


def test_a_bad_environment_value_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(threads.ENV, "many")
    with pytest.raises(threads.ThreadsError, match="CNNC_NUM_THREADS"):
        threads.decide()


def test_limit_sets_blas_threads_inside_and_restores_them_after():
    before = blas_threads()
    if not before:
        pytest.skip("no BLAS library that threadpoolctl controls")
    with threads.limit(1) as count:
        assert count == 1
        assert set(blas_threads()) == {1}
    assert blas_threads() == before


def test_auto_is_between_one_and_the_usable_cores():
    cores = threads.usable_cores()
    assert 1 <= threads.auto_threads() <= cores


def test_sampler_subtracts_this_process_and_counts_the_rest(monkeypatch):
    sampler = threads.LoadSampler(cpus=[0])
    readings = iter([(10.0, 50.0, 5.0), (11.0, 51.5, 5.5)])  # wall, busy, own seconds
    sampler.last = next(readings)
    monkeypatch.setattr(sampler, "read", lambda: next(readings))
    monkeypatch.setattr(threads.time, "monotonic", lambda: 11.0)
    # 1.5 CPU seconds busy in 1 s of wall time, 0.5 of them ours: others hold 1 core
    assert sampler.others(0.5) == pytest.approx(1.0)
    # asked again within the sampling interval: the same answer, no new reading
    assert sampler.others(0.5) == pytest.approx(1.0)


def test_auto_leaves_the_busy_cores_to_their_owners(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)

    class Busy:
        def others(self, min_seconds=0.0):
            return 2.8

    monkeypatch.setattr(threads, "_sampler", Busy())
    assert threads.auto_threads() == 1
    Busy.others = lambda self, min_seconds=0.0: 0.2
    assert threads.auto_threads() == 4
    Busy.others = lambda self, min_seconds=0.0: 9.0  # a crowd: still one thread
    assert threads.auto_threads() == 1


def test_the_executor_runs_under_the_limit(monkeypatch):
    import cnnc

    seen = []
    real = threads.limit

    def spy(n=None):
        seen.append(n)
        return real(n)

    monkeypatch.setattr(threads, "limit", spy)
    source = "network t\ninput x: [2, 6, 6]\noutput y = x -> conv(3, 3, pad=1) -> relu\n"
    model = cnnc.compile(source).build(backend="numpy", dtype="float64")
    x = np.random.default_rng(0).standard_normal((2, 2, 6, 6))
    first = model(x)
    threads.set_threads(1)
    np.testing.assert_array_equal(model(x), first)
    assert len(seen) == 2


def test_a_lane_that_finishes_lends_its_core_to_the_others():
    """In a split batch each lane's compiled kernels run one thread while every lane runs,
    and one more for each lane that has finished (its core would idle otherwise)."""
    fast = pytest.importorskip("cnnc.ops.fast")
    import threading

    first_done = threading.Event()
    counts = {}

    def work(i):
        if i == 0:  # lane 0 finishes once lane 1 has looked
            while 1 not in counts:
                first_done.wait(0.01)
            return "early"
        counts[1] = fast.get_threads()  # lane 0 is still running
        deadline = 3000
        while fast.get_threads() == 1 and deadline:  # until lane 0 has finished
            first_done.wait(0.01)
            deadline -= 1
        counts["after"] = fast.get_threads()
        return "late"

    assert threads.in_lanes(work, 2) == ["early", "late"]
    assert counts[1] == 1
    assert counts["after"] == 2
    monkey = pytest.MonkeyPatch()
    monkey.setattr(threads, "HELP", False)
    try:
        counts.clear()
        seen = threads.in_lanes(lambda i: fast.get_threads(), 3)
    finally:
        monkey.undo()
    assert seen == [1, 1, 1]  # without lending, a lane keeps one thread to its end


def test_finished_lanes_cores_are_shared_equally_among_the_running_ones(monkeypatch):
    """Three lanes: while one has finished, each of the two running ones keeps one thread
    (a core lent to both would put three threads on two cores); once two have finished,
    the last runs three. The finished lanes' cores are the helpers' (`spare_cores`)."""
    fast = pytest.importorskip("cnnc.ops.fast")
    import threading

    from cnnc.ops import cores

    step = [threading.Event() for _ in range(3)]
    seen = {}

    def wait_for(event):
        assert event.wait(30)

    def work(i):
        if i == 0:
            return "first"  # finishes at once
        if i == 1:
            wait_for(step[0])  # lane 2 has looked with one lane finished
            seen[1] = fast.get_threads()
            step[1].set()
            return "second"
        for _ in range(3000):  # until lane 0 has finished (seen where lanes are held)
            if lanes is None or cores.spare_cores():
                break
            step[2].wait(0.01)
        seen["one finished"] = (fast.get_threads(), cores.spare_cores())
        step[0].set()
        wait_for(step[1])
        for _ in range(3000):  # until lane 1 has finished too
            if fast.get_threads() == 3:
                break
            step[2].wait(0.01)
        seen["two finished"] = (fast.get_threads(), cores.spare_cores())
        return "third"

    monkeypatch.setattr(threads, "MOVE", False)  # (the cores stay where the lanes began)
    lanes = threads.lane_cores(3)
    assert threads.in_lanes(work, 3, lanes) == ["first", "second", "third"]
    assert seen[1] == 1
    assert seen["one finished"][0] == 1
    assert seen["two finished"][0] == 3
    if lanes is not None:  # held on cores: the finished lanes' are offered to helpers
        assert seen["two finished"][1] == [lanes[0], lanes[1]] or \
            seen["two finished"][1] == [lanes[1], lanes[0]]


def test_a_worker_is_held_on_a_core_other_than_the_callers(monkeypatch):
    fast = pytest.importorskip("cnnc.ops.fast")
    from cnnc.ops import cores

    usable = cores.allowed_cores()
    if len(usable) < 2 or cores.current_core() is None:
        pytest.skip("needs Linux and two usable cores")
    import os

    monkeypatch.setattr(fast, "_idle", [])  # workers of this test's own, that end soon
    monkeypatch.setattr(fast, "IDLE_SECONDS", 0.2)
    for here, there in ((usable[0], usable[1]), (usable[1], usable[0])):
        monkeypatch.setattr(fast, "current_core", lambda here=here: here)  # the caller's
        fast.set_threads(2)
        try:
            fast.parallel(lambda start, stop: None, 2)
        finally:
            fast.set_threads(None)
        (worker,) = fast._idle
        assert worker.cpu == there
        assert os.sched_getaffinity(worker.tid) == {there}


def test_the_current_core_is_one_of_the_allowed_cores():
    from cnnc.ops import cores

    here = cores.current_core()
    if here is None:
        pytest.skip("no sched_getcpu here")
    assert here in cores.allowed_cores()


def test_each_lane_runs_on_a_core_of_its_own_and_the_callers_cores_come_back(monkeypatch):
    import os

    from cnnc.ops import cores

    usable = cores.allowed_cores()
    if len(usable) < 2 or cores.current_core() is None:
        pytest.skip("needs Linux and two usable cores")
    before = os.sched_getaffinity(0)
    seen = threads.in_lanes(lambda i: os.sched_getaffinity(0), 2)
    assert all(len(s) == 1 for s in seen)
    assert seen[0] != seen[1]  # two cores, one lane each
    assert os.sched_getaffinity(0) == before

    def fails(i):
        raise ValueError(f"lane {i}")

    with pytest.raises(ValueError, match="lane"):
        threads.in_lanes(fails, 2)
    assert os.sched_getaffinity(0) == before  # given back after an error too
    monkeypatch.setattr(threads, "PIN_LANES", False)
    assert threads.in_lanes(lambda i: os.sched_getaffinity(0), 2) == [before, before]


def test_a_finished_lane_moves_a_running_one_onto_its_core_and_all_come_back():
    import os
    import threading

    from cnnc.ops import cores

    usable = cores.allowed_cores()
    if len(usable) < 2 or cores.current_core() is None:
        pytest.skip("needs Linux and two usable cores")
    planned = threads.lane_cores(2)
    first_done = threading.Event()
    seen = {}

    started = threading.Event()

    def work(i):
        if i == 0:  # finishes once lane 1 runs
            assert started.wait(30)
            return os.sched_getaffinity(0)
        seen["before"] = os.sched_getaffinity(0)
        started.set()
        for _ in range(3000):  # until lane 0 has finished and moved this lane
            if os.sched_getaffinity(0) != seen["before"]:
                break
            first_done.wait(0.01)
        seen["after"] = os.sched_getaffinity(0)
        seen["spare"] = cores.spare_cores()
        return threading.get_native_id()

    before = os.sched_getaffinity(0)
    first, tid = threads.in_lanes(work, 2, planned)
    assert first == {planned[0]} and seen["before"] == {planned[1]}
    assert seen["after"] == {planned[0]}  # onto the finished lane's core
    assert seen["spare"] == [planned[1]]  # its own left to its helpers
    assert os.sched_getaffinity(0) == before
    assert os.sched_getaffinity(tid) == before  # the worker thread's set given back
