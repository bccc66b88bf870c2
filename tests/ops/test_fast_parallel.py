"""`ops/fast.parallel`: the compiled kernels' jobs shared among cnnc's own threads.

Every kernel is a serial loop over a range of jobs; the ranges cover each job once, run on
as many threads as the calling thread's count says, and a kernel's result does not depend
on that count (each job writes its own outputs). numba's own threading layer never starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from cnnc.ops.cores import usable_cores
from cnnc.runtime import threads

fast = pytest.importorskip("cnnc.ops.fast")
if not fast.ENABLED:
    pytest.skip("numba not installed or CNNC_FAST=0", allow_module_level=True)


@pytest.fixture(autouse=True)
def _default_count():
    yield
    fast.set_threads(None)


def _recorder(parties):
    """A kernel that records each range it gets and the thread running it; a thread's first
    range waits until ``parties`` threads are running one at once (a broken barrier, after
    30 s, if they never are), so each of them has taken a range before any takes two."""
    seen = []
    lock = threading.Lock()
    barrier = threading.Barrier(max(1, parties), timeout=30)
    threads_seen = set()

    def kernel(start, stop, tag):
        ident = threading.get_ident()
        with lock:
            seen.append((start, stop, tag, ident))
            first = ident not in threads_seen
            threads_seen.add(ident)
        if first:
            barrier.wait()

    return kernel, seen


@pytest.mark.parametrize("count, jobs", [(1, 5), (2, 5), (3, 7), (4, 2), (8, 1), (3, 0),
                                         (2, 100)])
def test_the_pieces_cover_every_job_once_on_every_thread_at_once(count, jobs):
    kernel, seen = _recorder(min(count, jobs))
    fast.set_threads(count)
    fast.parallel(kernel, jobs, "t")
    covered = sorted(j for start, stop, _, _ in seen for j in range(start, stop))
    assert covered == list(range(jobs))
    assert all(stop > start for start, stop, *_ in seen)  # none empty
    threads_count = min(count, jobs)
    # one range on one thread; else PIECES a thread, taken as the threads come for them
    assert len(seen) == (min(jobs, 1) if threads_count <= 1
                         else min(jobs, threads_count * fast.PIECES))
    assert all(tag == "t" for _, _, tag, _ in seen)
    if threads_count > 1:
        assert len({ident for *_, ident in seen}) == threads_count
        assert threading.get_ident() in {ident for *_, ident in seen}  # the caller works too


def test_a_slow_thread_takes_fewer_pieces():
    """The pieces go to the threads as they finish the last: one thread held up (a core
    shared with another process) does not hold up the others' share of the work."""
    lock = threading.Lock()
    slow = []
    rest_done = threading.Event()
    done = []

    def kernel(start, stop):
        with lock:
            if not slow:
                slow.append(threading.get_ident())  # the first thread to start
        if threading.get_ident() == slow[0]:
            assert rest_done.wait(30)  # held until the other thread has done the rest
        with lock:
            done.append((start, threading.get_ident()))
            if len(done) == 7:
                rest_done.set()

    fast.set_threads(2)
    fast.parallel(kernel, 8)
    assert sorted(j for j, _ in done) == list(range(8))
    assert sum(ident == slow[0] for _, ident in done) == 1  # the other took the rest


def test_an_error_stops_the_handing_out_and_is_raised_after_every_piece_stops():
    started, ended = [], []

    def kernel(start, stop):
        started.append(start)
        if start == 2:
            raise ValueError(f"piece {start}-{stop}")
        time.sleep(0.05)
        ended.append(start)

    fast.set_threads(3)
    with pytest.raises(ValueError, match="piece 2-3"):
        fast.parallel(kernel, 12)
    # every piece that started ran to its end before the call returned; after the failure
    # no thread took another piece (each may have held one then)
    assert sorted(ended) == sorted(j for j in started if j != 2)
    assert len(started) < 12


def test_an_error_in_the_callers_piece_waits_for_the_workers():
    both = threading.Barrier(3, timeout=30)  # the caller's piece and the two workers'
    done = []

    def kernel(start, stop):
        if threading.current_thread() is threading.main_thread():
            both.wait()  # the workers are inside their pieces when it fails
            raise ValueError("the caller's piece")
        if len(done) < 2 and start < 3:
            both.wait()
            time.sleep(0.1)
        done.append(start)

    fast.set_threads(3)
    with pytest.raises(ValueError, match="caller"):
        fast.parallel(kernel, 3)  # one piece a thread
    assert len(done) == 2  # the two pieces the workers held ran to their end


def test_an_idle_worker_holds_no_array_of_the_last_call():
    import gc
    import weakref

    def kernel(start, stop, a):
        a[start:stop] = 1.0

    fast.set_threads(2)
    a = np.zeros(8)
    fast.parallel(kernel, 8, a)
    assert (a == 1).all()
    ref = weakref.ref(a)
    del a
    gc.collect()
    assert ref() is None


def test_idle_workers_end_after_a_while_and_new_ones_come_when_needed(monkeypatch):
    monkeypatch.setattr(fast, "IDLE_SECONDS", 0.2)
    monkeypatch.setattr(fast, "_idle", [])  # a pool of this test's own
    before = {t.ident for t in threading.enumerate() if t.name == "cnnc-kernel"}
    kernel, seen = _recorder(3)
    fast.set_threads(3)
    fast.parallel(kernel, 3, "first")
    made = [t for t in threading.enumerate()
            if t.name == "cnnc-kernel" and t.ident not in before]
    assert len(made) == 2 and len(fast._idle) == 2
    for thread in made:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in made)
    assert fast._idle == []
    kernel, seen = _recorder(3)
    fast.parallel(kernel, 3, "again")
    assert sorted(a for a, *_ in seen) == [0, 1, 2]
    assert len({ident for *_, ident in seen}) == 3


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork here")
def test_a_forked_child_makes_workers_of_its_own():
    kernel, seen = _recorder(2)
    fast.set_threads(2)
    fast.parallel(kernel, 4, "parent")  # the parent's workers exist, idle
    pid = os.fork()
    if pid == 0:  # the child: its ranges must run (the parent's worker threads are gone)
        import signal

        signal.alarm(60)  # a child that hangs dies, rather than the test suite waiting
        code = 1
        try:
            kernel2, seen2 = _recorder(2)
            fast.parallel(kernel2, 4, "child")
            code = 0 if sorted(a for a, *_ in seen2) == [0, 1, 2, 3] else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_a_small_call_runs_on_the_calling_thread():
    kernel, seen = _recorder(1)
    fast.set_threads(4)
    fast.parallel(kernel, 8, "s", values=fast.MIN_PARALLEL_VALUES - 1)
    assert [(start, stop) for start, stop, *_ in seen] == [(0, 8)]
    assert seen[0][3] == threading.get_ident()
    kernel, seen = _recorder(4)
    fast.parallel(kernel, 8, "s", values=fast.MIN_PARALLEL_VALUES)
    assert len({ident for *_, ident in seen}) == 4


def test_the_count_is_per_thread_and_limit_sets_it():
    fast.set_threads(3)
    other = []
    t = threading.Thread(target=lambda: other.append(fast.get_threads()))
    t.start()
    t.join()
    assert fast.get_threads() == 3
    assert other == [usable_cores()]  # a thread that set nothing: every usable core
    with threads.limit(2):
        assert fast.get_threads() == 2
        with threads.this_thread_only():
            assert fast.get_threads() == 1
        assert fast.get_threads() == 2
    assert fast.get_threads() == 3


def _kernel_outputs():
    """One output of each compiled kernel family on the same inputs."""
    from cnnc.ops import conv, norm, pool, winograd

    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 8, 11, 13)).astype(np.float32)
    outs = []
    dw = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
    outs.append(conv.conv2d(x, dw, rng.standard_normal(8).astype(np.float32), stride=2,
                            pad=1, groups=8, act="silu"))
    gx, gw = fast.depthwise_conv2d_backward(x, dw, rng.standard_normal((3, 8, 11, 13))
                                            .astype(np.float32), (1, 1), (1, 1, 1, 1), (1, 1))
    outs += [gx, gw]
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    out = np.empty((3, 16, 11, 13), np.float32)
    assert winograd.winograd_conv2d(x, w, None, None, "relu", out, (1, 1, 1, 1))
    outs.append(out)
    y = np.empty((3, 8, 1, 143), np.float32)
    assert fast.epilogue_(y, x.reshape(3, 8, 1, 143), None, np.ones(8, np.float32), "relu6")
    outs.append(y)
    y, saved = norm.batchnorm_forward(x, np.ones(8, np.float32), np.zeros(8, np.float32),
                                      np.zeros(8, np.float32), np.ones(8, np.float32),
                                      train=True)
    outs.append(y)
    outs.append(norm.batchnorm_backward(saved, 2 * x)[0][0])
    y, saved = pool.maxpool2d_forward(x, kernel=3, stride=2, pad=1)
    outs.append(y)
    outs.append(pool.maxpool2d_backward(saved, np.ones_like(y))[0][0])
    return outs


def test_every_kernel_gives_the_same_result_on_one_thread_and_on_three(monkeypatch):
    monkeypatch.setattr(fast, "MIN_PARALLEL_VALUES", 0)  # small calls share their jobs too
    _kernel_outputs()  # compiled first: numba must not type the patched np.empty below
    real_empty = np.empty

    def nan_empty(*args, **kwargs):  # every float output starts as NaN: a job no range
        a = real_empty(*args, **kwargs)  # ran would show, in both runs alike
        if a.dtype.kind == "f":
            a.fill(np.nan)
        return a

    monkeypatch.setattr(np, "empty", nan_empty)
    fast.set_threads(1)
    one = _kernel_outputs()
    fast.set_threads(3)
    three = _kernel_outputs()
    for a, b in zip(one, three):
        assert not np.isnan(a).any()
        np.testing.assert_array_equal(a, b)


def test_the_in_place_epilogue_on_three_threads(monkeypatch):
    monkeypatch.setattr(fast, "MIN_PARALLEL_VALUES", 0)
    fast.set_threads(3)
    rng = np.random.default_rng(5)
    y = rng.standard_normal((3, 8, 1, 50)).astype(np.float32)
    scale = rng.standard_normal(8).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    want = np.clip(y * scale[:, None, None] + bias[:, None, None], 0, 6)
    assert fast.epilogue_(y, None, scale, bias, "relu6")
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)


def test_numba_threading_layer_never_starts():
    """No kernel is a numba ``parallel=True`` function: its threading layer (which ran on
    whatever OpenMP runtime was loaded first, and whose ``workqueue`` layer stopped the
    process when two threads launched loops at once) is never chosen."""
    script = (
        "import numpy as np, numba, cnnc\n"
        "from cnnc.runtime import threads\n"
        "src = 'network t\\ninput x: [3, 12, 12]\\noutput y = x -> conv(8, 3, pad=1) -> "
        "batchnorm -> relu -> conv(8, 3, groups=8, pad=1) -> maxpool(2) -> flatten -> "
        "dense(4)\\n'\n"
        "m = cnnc.compile(src).build(backend='numpy')\n"
        "x = np.random.default_rng(0).standard_normal((4, 3, 12, 12)).astype(np.float32)\n"
        "with threads.limit(2):\n"
        "    m.forward(x, train=True)\n"
        "    m.backward(np.ones((4, 4), np.float32))\n"
        "    m(x)\n"
        "try:\n"
        "    print(numba.threading_layer())\n"
        "except ValueError:\n"
        "    print('none')\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "none"
