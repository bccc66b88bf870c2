"""Inference speed and memory: cnnc's NumPy backend beside PyTorch eager and ONNX Runtime.

    OPENBLAS_CORETYPE=SkylakeX python benchmarks/bench_runtime.py            # time
    OPENBLAS_CORETYPE=SkylakeX python benchmarks/bench_runtime.py --memory   # peak memory

Timing: the three run the same network with the same float32 weights in one process,
interleaved call by call, after warm-up; the median per image and the ratios are printed,
and the outputs are compared. PyTorch runs the plan through ``torch.nn.functional`` under
``inference_mode`` (runtime/torch_ref.py); ONNX Runtime runs cnnc's own ONNX export with
all graph optimisations. All three are given the same number of threads, and none of them
may spin its threads between calls (ONNX Runtime's ``allow_spinning`` off, OpenMP's wait
policy passive), or the framework timed next would share its cores with spinning threads.

Memory (``--memory``): each framework runs alone in a fresh child process. Once the model is
loaded (weights in memory, nothing run yet) the peak-RSS counter is reset
(``/proc/self/clear_refs``); the script reports how far the peak rose above that during the
first call and the timed calls after it: activations, workspaces and arenas, not weights.

Needs torch and onnxruntime (the test extras); a missing one is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# Before NumPy and PyTorch load their thread pools: idle threads sleep rather than spin.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FRAMEWORKS = ("cnnc", "torch", "ort")


def _model(name: str):
    import cnnc

    return cnnc.compile(os.path.join(ROOT, "examples", f"{name}.cnn")).build(
        backend="numpy", dtype="float32", seed=0)


def _runners(name: str, threads: int, which=FRAMEWORKS) -> dict:
    """framework -> callable(x) -> NumPy output, for the available frameworks."""
    model = _model(name)
    runners = {}
    if "cnnc" in which:
        runners["cnnc"] = model
    if "torch" in which:
        try:
            import torch

            from cnnc.runtime.torch_ref import TorchPlan
        except ImportError:
            print("  (torch not installed: skipped)")
        else:
            torch.set_num_threads(threads)
            tp = TorchPlan(model.plan, model.state())
            input_name = next(iter(model.plan.inputs))

            def run_torch(x):
                with torch.inference_mode():
                    out = tp({input_name: torch.from_numpy(x)})
                return next(iter(out.values())).numpy()

            runners["torch"] = run_torch
    if "ort" in which:
        try:
            import onnxruntime as ort

            from cnnc.runtime.onnx_export import export
        except ImportError:
            print("  (onnxruntime or onnx not installed: skipped)")
        else:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            proto = export(model.plan, model.state())
            session = ort.InferenceSession(proto.SerializeToString(), opts,
                                           providers=["CPUExecutionProvider"])
            feed = session.get_inputs()[0].name

            def run_ort(x):
                return session.run(None, {feed: x})[0]

            runners["ort"] = run_ort
    return model, runners


def _input(model, batch: int) -> np.ndarray:
    shape = next(iter(model.plan.inputs.values()))
    return np.random.default_rng(0).standard_normal((batch,) + shape).astype(np.float32)


def time_all(names, batches, reps, threads) -> list[dict]:
    rows = []
    for name in names:
        model, runners = _runners(name, threads)
        for batch in batches:
            x = _input(model, batch)
            outs = {fw: run(x) for fw, run in runners.items()}  # warm-up, and the answers
            for run in runners.values():
                run(x)
            ref = outs.get("torch", outs["cnnc"])
            scale = float(np.abs(ref).max())
            times = {fw: [] for fw in runners}
            for _ in range(reps):
                for fw, run in runners.items():
                    t0 = time.perf_counter()
                    run(x)
                    times[fw].append(time.perf_counter() - t0)
            row = {"model": name, "batch": batch}
            for fw in runners:
                row[f"{fw}_ms_per_image"] = 1000 * statistics.median(times[fw]) / batch
                row[f"{fw}_max_rel_diff"] = float(np.abs(outs[fw] - ref).max()) / scale
            rows.append(row)
            _print_row(row)
    return rows


def _print_row(row) -> None:
    parts = [f"{row['model']:<10} batch {row['batch']:<2}"]
    for fw in FRAMEWORKS:
        key = f"{fw}_ms_per_image"
        if key in row:
            parts.append(f"{fw} {row[key]:7.2f} ms/img")
    if "torch_ms_per_image" in row:
        parts.append(f"cnnc/torch {row['cnnc_ms_per_image'] / row['torch_ms_per_image']:.2f}x")
    if "ort_ms_per_image" in row:
        parts.append(f"cnnc/ort {row['cnnc_ms_per_image'] / row['ort_ms_per_image']:.2f}x")
    print("  ".join(parts), flush=True)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(fw: str, name: str, batch: int, threads: int, reps: int) -> None:
    model, runners = _runners(name, threads, which=(fw,))
    run = runners[fw]
    x = _input(model, batch)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter to the current RSS
    rest = _rss_kib("VmRSS")
    for _ in range(reps + 1):
        run(x)
    peak = _rss_kib("VmHWM")
    print(json.dumps({"rest_mib": rest / 1024, "peak_rise_mib": (peak - rest) / 1024}))


def memory_all(names, batches, threads, reps) -> list[dict]:
    rows = []
    for name in names:
        for batch in batches:
            row = {"model": name, "batch": batch}
            for fw in FRAMEWORKS:
                cmd = [sys.executable, __file__, "--child", fw, name, str(batch),
                       "--threads", str(threads), "--reps", str(reps)]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0 or not done.stdout.strip():
                    continue
                got = json.loads(done.stdout.strip().splitlines()[-1])
                row[f"{fw}_peak_rise_mib"] = got["peak_rise_mib"]
                row[f"{fw}_rest_mib"] = got["rest_mib"]
            rows.append(row)
            print(f"{name:<10} batch {batch:<2} " + "  ".join(
                f"{fw} +{row[f'{fw}_peak_rise_mib']:.1f} MiB (rest {row[f'{fw}_rest_mib']:.0f})"
                for fw in FRAMEWORKS if f"{fw}_peak_rise_mib" in row), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["googlenet", "resnet18"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--memory", action="store_true", help="measure peak memory instead")
    ap.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    ap.add_argument("--child", nargs=3, metavar=("FW", "MODEL", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        fw, name, batch = args.child
        child(fw, name, int(batch), args.threads, args.reps)
        return
    print(f"threads {args.threads}, OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}")
    if args.memory:
        rows = memory_all(args.models, args.batches, args.threads, min(args.reps, 3))
    else:
        rows = time_all(args.models, args.batches, args.reps, args.threads)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
