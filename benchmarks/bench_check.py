"""How long `cnnc check` takes, as a user sees it: whole processes, wall-clock time.

    python benchmarks/bench_check.py              # all four parts, about 2 minutes
    python benchmarks/bench_check.py --runs 5 --sizes 1000 10000 --no-torch

(a) `cnnc check examples/googlenet.cnn`: the median of ``--runs`` fresh processes, beside
    `python -c pass` (the interpreter's own start-up) and `import networkx`; and the same
    check without .pyc files for cnnc, and without the cached parser table. Goal: at most
    0.3 s in the normal case (both cached).
(b) generated chains of conv/relu layers, 1,000 to 10,000 layers: whole-process time per size
    and, inside one process, the parse and the full check, to show the growth is linear.
    Goal: 10,000 layers in at most 3 s.
(c) for comparison, where PyTorch is installed: `import torch, torchinfo` alone, and building
    the same GoogLeNet in torch and printing its torchinfo summary, in a fresh process.
(d) files with thousands of diagnostics, rendered as text and as JSON.

Run from an installed checkout (``pip install -e .``); the `cnnc` console script next to
the running Python is used, or ``python -m cnnc.cli`` where there is none.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOOGLENET = ROOT / "examples" / "googlenet.cnn"

# GoogLeNet as examples/googlenet.cnn writes it (Caffe's deploy variant, no auxiliary
# classifiers), in PyTorch; run with `python -c` so the import cost is measured too.
TORCH_GOOGLENET = """
import torch
from torch import nn
import torchinfo


def relu_conv(cin, cout, kernel, **kw):
    return [nn.Conv2d(cin, cout, kernel, **kw), nn.ReLU()]


class Inception(nn.Module):
    def __init__(self, cin, c1, c3r, c3, c5r, c5, pp):
        super().__init__()
        self.b1 = nn.Sequential(*relu_conv(cin, c1, 1))
        self.b2 = nn.Sequential(*relu_conv(cin, c3r, 1), *relu_conv(c3r, c3, 3, padding=1))
        self.b3 = nn.Sequential(*relu_conv(cin, c5r, 1), *relu_conv(c5r, c5, 5, padding=2))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), *relu_conv(cin, pp, 1))
        self.out = c1 + c3 + c5 + pp

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


def pool():
    return nn.MaxPool2d(3, stride=2, ceil_mode=True)


def lrn():
    return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)


layers = [*relu_conv(3, 64, 7, stride=2, padding=3), pool(), lrn(),
          *relu_conv(64, 64, 1), *relu_conv(64, 192, 3, padding=1), lrn(), pool()]
cin = 192
for config in ["64 96 128 16 32 32", "128 128 192 32 96 64", "pool",
               "192 96 208 16 48 64", "160 112 224 24 64 64", "128 128 256 24 64 64",
               "112 144 288 32 64 64", "256 160 320 32 128 128", "pool",
               "256 160 320 32 128 128", "384 192 384 48 128 128"]:
    if config == "pool":
        layers.append(pool())
        continue
    block = Inception(cin, *map(int, config.split()))
    layers.append(block)
    cin = block.out
layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.4), nn.Linear(cin, 1000)]
model = nn.Sequential(*layers).eval()
stats = torchinfo.summary(model, input_size=(1, 3, 224, 224), verbose=0, device="cpu")
print(stats.total_params, stats.total_mult_adds)
"""


def cnnc_command() -> list[str]:
    script = Path(sys.executable).with_name("cnnc")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cnnc.cli"]


def wall(argv: list[str], runs: int, env: dict | None = None, fresh_tmp: Path | None = None,
         expect: int = 0) -> list[float]:
    """Wall-clock seconds of `runs` fresh processes of ARGV (output discarded). With
    FRESH_TMP, each process gets a new empty XDG_CACHE_HOME under it (no parser table cache)."""
    times = []
    for _ in range(runs):
        run_env = dict(env if env is not None else os.environ)
        if fresh_tmp is not None:
            run_env["XDG_CACHE_HOME"] = tempfile.mkdtemp(dir=fresh_tmp)
        start = time.perf_counter()
        done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=run_env)
        times.append(time.perf_counter() - start)
        if done.returncode != expect:
            sys.exit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()}")
    return times


def cached_bytecode(scratch: Path) -> dict:
    """An environment in which Python keeps .pyc files, the normal case after a first run.
    They go under a private PYTHONPYCACHEPREFIX, so the checkout is left as it is."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(scratch / "pycache")
    return env


def no_bytecode() -> dict:
    """An environment in which cnnc's own modules are compiled from source on every run (an
    editable install with PYTHONDONTWRITEBYTECODE=1 and no __pycache__ in the checkout)."""
    env = dict(os.environ)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTHONPYCACHEPREFIX", None)
    return env


# Parse and check times, taken in a fresh process so that no earlier network is alive (the
# cyclic garbage collector's passes grow with every live object); best of 3, collected between.
STAGES = """
import gc, sys, time
from cnnc.compiler.check import check_source
from cnnc.dsl.parser import parse

path = sys.argv[1]
source = open(path, encoding="utf-8").read()
for name, stage in (("parse", parse), ("check", check_source)):
    times = []
    for _ in range(3):
        gc.collect()
        start = time.perf_counter()
        result = stage(source, path)
        times.append(time.perf_counter() - start)
        del result
    print(name, min(times))
"""


def stage_times(path: Path, env: dict) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", STAGES, str(path)], capture_output=True,
                          text=True, check=True, env=env)
    return {name: float(value) for name, value in map(str.split, done.stdout.splitlines())}


def chain_source(layers: int) -> str:
    """A network of LAYERS layers: conv(16, 3, pad=1) -> relu, repeated, on one chain."""
    stages = " -> conv(16, 3, pad=1) -> relu" * (layers // 2)
    return f"network chain\ninput x: [16, 32, 32]\noutput y = x{stages}\n"


def machine() -> list[str]:
    lines = [
        f"Python {platform.python_version()} ({sys.executable})",
        f"{platform.platform()}, {os.cpu_count()} CPUs",
    ]
    if hasattr(os, "getloadavg"):
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        lines.append(f"load average before the run: {load}")
    return lines


def row(label: str, times: list[float]) -> None:
    print(f"  {label:<52} {statistics.median(times):7.3f}s {min(times):7.3f}s "
          f"{max(times):7.3f}s")


def interleaved(variants: list[tuple], runs: int) -> dict[str, list[float]]:
    """Time each (label, argv, env, fresh_tmp) variant RUNS times, taking turns, so that a
    change in the machine's load touches every variant alike."""
    times: dict[str, list[float]] = {label: [] for label, *_ in variants}
    for _ in range(runs):
        for label, argv, env, fresh_tmp in variants:
            times[label] += wall(argv, 1, env, fresh_tmp)
    return times


def part_googlenet(runs: int, goal: float, scratch: Path) -> None:
    print(f"\n(a) cnnc check examples/googlenet.cnn, {runs} fresh processes per row, "
          "rows taking turns")
    check = cnnc_command() + ["check", str(GOOGLENET)]
    cached = cached_bytecode(scratch)
    wall(check, 1, cached)  # writes the .pyc files and the parser table cache
    normal = "cnnc check: .pyc and parser table cached (normal)"
    variants = [
        ("python -c pass", [sys.executable, "-c", "pass"], cached, None),
        ("python -c 'import networkx' (not imported by check)",
         [sys.executable, "-c", "import networkx"], cached, None),
        (normal, check, cached, None),
        ("cnnc check: no .pyc, cnnc compiled on each run", check, no_bytecode(), None),
        ("cnnc check: no parser table cache (fresh XDG_CACHE_HOME)", check, cached, scratch),
    ]
    times = interleaved(variants, runs)
    print(f"  {'':<52} {'median':>8} {'min':>8} {'max':>8}")
    for label, values in times.items():
        row(label, values)
    median = statistics.median(times[normal])
    verdict = "met" if median <= goal else "MISSED"
    print(f"  goal: median <= {goal:.1f} s (normal case): {verdict}")


def part_chains(sizes: list[int], runs: int, goal: float, scratch: Path) -> None:
    print(f"\n(b) generated conv/relu chains; process: median of {runs} fresh `cnnc check` "
          "runs;\n  parse, and check (parse included): best of 3 in one fresh process")
    print(f"  {'layers':>7} {'process':>9} {'per 1k':>8} {'parse':>8} {'check':>8}  growth")
    env = cached_bytecode(scratch)
    previous = None
    points = []
    for size in sizes:
        path = scratch / f"chain{size}.cnn"
        path.write_text(chain_source(size))
        process = statistics.median(wall(cnnc_command() + ["check", str(path)], runs, env))
        stages = stage_times(path, env)
        growth = ""
        if previous:
            growth = f"x{process / previous[1]:.2f} for x{size / previous[0]:.1f} layers"
        print(f"  {size:>7,} {process:8.3f}s {process / size * 1000:7.3f}s "
              f"{stages['parse']:7.3f}s {stages['check']:7.3f}s  {growth}")
        previous = (size, process)
        points.append(previous)
    if len(points) >= 3:
        xs, ys = zip(*points)
        fit = statistics.linear_regression(xs, ys)
        r = statistics.correlation(xs, ys)
        print(f"  least squares: {fit.intercept:.3f} s + {fit.slope * 1e6:.0f} us per layer "
              f"(r^2 = {r * r:.3f})")
    if previous and previous[0] >= 10_000:
        verdict = "met" if previous[1] <= goal else "MISSED"
        print(f"  goal: {previous[0]:,} layers <= {goal:.0f} s: {verdict}")


def part_diagnostics(sizes: list[int], scratch: Path) -> None:
    print("\n(d) many diagnostics: N lines `vK = x -> conv(0, 1)`, each an E207 and a W402;"
          "\n  one fresh `cnnc check` process per figure, text and --format json")
    print(f"  {'lines':>7} {'text':>9} {'json':>9} {'text/json':>10}")
    env = cached_bytecode(scratch)
    for size in sizes:
        path = scratch / f"errors{size}.cnn"
        lines = "".join(f"v{k} = x -> conv(0, 1)\n" for k in range(size))
        path.write_text(f"input x: [3, 8, 8]\n{lines}output y = x\n")
        check = cnnc_command() + ["check", str(path)]
        text = wall(check, 1, env, expect=1)[0]
        json_ = wall(check + ["--format", "json"], 1, env, expect=1)[0]
        print(f"  {size:>7,} {text:8.3f}s {json_:8.3f}s {text / json_:10.1f}")


def part_torch(runs: int, scratch: Path) -> None:
    print(f"\n(c) for comparison: PyTorch + torchinfo, {runs} fresh processes per row, "
          "rows taking turns")
    env = cached_bytecode(scratch)
    probe = subprocess.run([sys.executable, "-c", "import torch, torchinfo; "
                            "print(torch.__version__, torchinfo.__version__)"],
                           capture_output=True, text=True, env=env)
    if probe.returncode != 0:
        print("  skipped: torch or torchinfo is not importable")
        return
    torch_version, torchinfo_version = probe.stdout.split()
    counted = subprocess.run([sys.executable, "-c", TORCH_GOOGLENET], capture_output=True,
                             text=True, check=True, env=env).stdout.split()
    print(f"  torch {torch_version}, torchinfo {torchinfo_version}")
    variants = [
        ('python -c "import torch, torchinfo"',
         [sys.executable, "-c", "import torch, torchinfo"], env, None),
        ("GoogLeNet built in torch + torchinfo.summary",
         [sys.executable, "-c", TORCH_GOOGLENET], env, None),
        ("cnnc summary examples/googlenet.cnn",
         cnnc_command() + ["summary", str(GOOGLENET)], env, None),
    ]
    print(f"  {'':<52} {'median':>8} {'min':>8} {'max':>8}")
    for label, values in interleaved(variants, runs).items():
        row(label, values)
    print(f"  torchinfo counts {int(counted[0]):,} parameters and {int(counted[1]):,} "
          "mult-adds\n  (its mult-adds include one add per bias element; cnnc's MACs, as "
          "torchvision's, do not)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="processes per figure in (a)")
    parser.add_argument("--chain-runs", type=int, default=5, help="processes per size in (b)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 5000, 10000])
    parser.add_argument("--torch-runs", type=int, default=5, help="processes per figure in (c)")
    parser.add_argument("--no-torch", action="store_true", help="skip part (c)")
    parser.add_argument("--diagnostics", type=int, nargs="*", default=[1000, 2000, 4000],
                        metavar="LINES", help="file sizes for part (d); none skips it")
    args = parser.parse_args()

    print("\n".join(machine()))
    with tempfile.TemporaryDirectory(prefix="bench_check-") as tmp:
        scratch = Path(tmp)
        part_googlenet(args.runs, 0.3, scratch)
        part_chains(args.sizes, args.chain_runs, 3.0, scratch)
        if not args.no_torch:
            part_torch(args.torch_runs, scratch)
        if args.diagnostics:
            part_diagnostics(args.diagnostics, scratch)


if __name__ == "__main__":
    main()
