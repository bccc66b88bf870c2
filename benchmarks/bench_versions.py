"""Two checkouts of cnnc side by side: is a change slower than the code before it?

    python benchmarks/bench_versions.py /path/to/old/checkout /path/to/new/checkout

Each checkout is imported as the package ``cnnc`` in fresh child processes (a symlink named
``cnnc`` in a temporary folder put first on ``PYTHONPATH``), and the two are interleaved
round by round, so that a busy moment of a shared machine hits both alike. Measured:

- ``check googlenet``: one whole `cnnc check examples/googlenet.cnn` process (start-up,
  imports, parse, check, print), wall-clock;
- ``check 10k chain``: inside one process, checking a generated chain of 10,000 conv/relu
  layers;
- ``infer <model> b<N>``: NumPy-backend inference per image, float32, median of the timed
  calls after warm-up (one BLAS thread, so the two versions are not fighting for cores).

Children run with bytecode caching on (as an installed package does), after a warm-up round
that writes the ``.pyc`` files. The medians over rounds and the new/old ratios are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

CHECK = """
import sys, time
from cnnc.cli import main
t = time.perf_counter()
with open('/dev/null', 'w') as sink:
    out = sys.stdout
    sys.stdout = sink
    main(['check', sys.argv[1]])
    sys.stdout = out
print(time.perf_counter() - t)
"""

CHAIN = """
import sys, time
from cnnc.compiler.check import check_source
n = 10000
lines = ['network chain', 'input x: [8, 32, 32]', 'h0 = x']
for i in range(1, n // 2 + 1):
    lines.append(f'h{i} = h{i - 1} -> conv(8, 3, pad=1) -> relu')
lines.append(f'output y = h{n // 2}')
text = '\\n'.join(lines) + '\\n'
t = time.perf_counter()
net = check_source(text, 'chain.cnn')
assert net.ok
print(time.perf_counter() - t)
"""

INFER = """
import sys, time, statistics
import numpy as np
import cnnc
path, batch, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model = cnnc.compile(path).build(backend='numpy', dtype='float32', seed=0)
shape = next(iter(model.plan.inputs.values()))
x = np.random.default_rng(0).standard_normal((batch,) + tuple(shape)).astype(np.float32)
model(x)
model(x)
times = []
for _ in range(reps):
    t = time.perf_counter()
    model(x)
    times.append((time.perf_counter() - t) / batch)
print(statistics.median(times))
"""


def _run(pkg_dir, code, *args, cwd):
    env = dict(os.environ, PYTHONPATH=pkg_dir, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    # as installed packages run: with their .pyc files (written by the warm-up round)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, env=env, cwd=cwd)
    if done.returncode != 0:
        raise SystemExit(f"{pkg_dir}: {done.stderr.strip()}")
    return float(done.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--models", nargs="+", default=["googlenet", "resnet18"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    folders = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label in ("old", "new"):
            folder = os.path.join(tmp, label)
            os.mkdir(folder)
            os.symlink(os.path.abspath(getattr(args, label)), os.path.join(folder, "cnnc"))
            folders[label] = folder
        results: dict = {}
        for label in ("old", "new"):  # warm-up: compile and cache every module once
            root = os.path.abspath(getattr(args, label))
            _run(folders[label], CHECK, os.path.join(root, "examples/googlenet.cnn"), cwd=tmp)
            _run(folders[label], INFER, os.path.join(root, "examples/lenet5.cnn"), "1", "1",
                 cwd=tmp)
        for _ in range(args.rounds):
            for label in ("old", "new"):
                root = os.path.abspath(getattr(args, label))
                cases = {
                    "check googlenet": (CHECK, os.path.join(root, "examples/googlenet.cnn")),
                    "check 10k chain": (CHAIN,),
                }
                for model in args.models:
                    cases[f"infer {model} b{args.batch}"] = (
                        INFER, os.path.join(root, f"examples/{model}.cnn"), str(args.batch),
                        str(args.reps))
                for name, (code, *rest) in cases.items():
                    value = _run(folders[label], code, *rest, cwd=tmp)
                    results.setdefault(name, {}).setdefault(label, []).append(value)
    print(f"{'measure':<26}{'old (median)':>14}{'new (median)':>14}{'new/old':>9}")
    for name, by_label in results.items():
        old = statistics.median(by_label["old"])
        new = statistics.median(by_label["new"])
        unit = 1000.0
        print(f"{name:<26}{old * unit:>11.1f} ms{new * unit:>11.1f} ms{new / old:>9.2f}")


if __name__ == "__main__":
    main()
