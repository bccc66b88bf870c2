"""How fast each core of this machine is, alone and while the others work: the context for
every multi-threaded figure in docs/performance.md.

    python benchmarks/bench_cores.py            # every usable core, 5 rounds
    python benchmarks/bench_cores.py --rounds 10

Each core runs the same single-threaded float32 matrix product (NumPy's BLAS at one thread)
in a process pinned to it: first one core at a time, then every core at once. On a virtual
machine the cores are the host's to share: the 2-core VM of these sessions showed one core
at 0.63x of the other's speed while both worked, at some minutes, and both equal at others.
Then a batch split into equal shares (one a core) waits for the slower share, and a ratio
measured against a framework that shares its work out dynamically (ONNX Runtime) moves
with the minute. Linux only (``os.sched_setaffinity``).
"""

import argparse
import os
import subprocess
import sys
import time

WORK = 20  # products of 512 x 512 matrices per timing


def _time_here(rounds: int) -> list:
    """ms per ``WORK`` products on this process's core, ``rounds`` times."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)
    times = []
    with threadpool_limits(1):
        a @ a  # warm-up
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(WORK):
                a @ a
            times.append((time.perf_counter() - start) * 1e3)
    return times


def _pinned(core: int, rounds: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--child", str(core), "--rounds",
                             str(rounds)], stdout=subprocess.PIPE, text=True)


def _read(proc: subprocess.Popen) -> list:
    out, _ = proc.communicate()
    return [float(t) for t in out.split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not hasattr(os, "sched_setaffinity"):
        print("bench_cores: needs Linux (os.sched_setaffinity)")
        return
    if args.child is not None:
        os.sched_setaffinity(0, {args.child})
        print(" ".join(f"{t:.2f}" for t in _time_here(args.rounds)))
        return
    cores = sorted(os.sched_getaffinity(0))
    print(f"cores {cores}; ms per {WORK} products of 512 x 512 float32 matrices, one thread "
          f"each, best / median of {args.rounds}; load average {os.getloadavg()[0]:.2f}")
    alone = {core: _read(_pinned(core, args.rounds)) for core in cores}
    procs = {core: _pinned(core, args.rounds) for core in cores}
    together = {core: _read(proc) for core, proc in procs.items()}
    fastest = min(min(t) for t in together.values())
    for core in cores:
        a, b = sorted(alone[core]), sorted(together[core])
        print(f"core {core:>2}: alone {a[0]:7.2f} / {a[len(a) // 2]:7.2f}   all at once "
              f"{b[0]:7.2f} / {b[len(b) // 2]:7.2f}   speed beside the others "
              f"{fastest / b[len(b) // 2]:.2f} of the fastest")


if __name__ == "__main__":
    main()
