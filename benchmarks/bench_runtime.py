"""Inference speed and memory: cnnc's NumPy backend beside PyTorch eager and ONNX Runtime,
on a quiet machine and beside a busy neighbour.

    python benchmarks/bench_runtime.py                        # every model, batch 1 and 8
    python benchmarks/bench_runtime.py --neighbours 0 1       # quiet, then one busy core
    python benchmarks/bench_runtime.py --models mobilenet_v1 --batches 8 --reps 7
    python benchmarks/bench_runtime.py --memory               # peak memory

Timing: the three run the same network with the same float32 weights in one process, taking
turns call by call after warm-up; the median per image and the ratios are printed, and the
outputs are compared (largest difference relative to the largest output). Each framework
runs at its default thread count unless ``--threads`` fixes all three: cnnc decides its own
(``runtime/threads.py``), PyTorch takes ``torch.get_num_threads()``, ONNX Runtime its
default intra-op pool. ONNX Runtime's spinning is off and OpenMP waits passively, or the
framework timed next would share its cores with spinning threads. PyTorch runs the plan
through ``torch.nn.functional`` under ``inference_mode`` (runtime/torch_ref.py); ONNX
Runtime runs cnnc's own ONNX export with every graph optimisation on.

``--cnnc-threads 1 2 auto`` adds cnnc at those thread settings as columns ``cnnc@N``, timed
in the same rotation (``--no-others`` leaves PyTorch and ONNX Runtime out).

``--neighbours K``: K processes running ``while True: pass`` for the whole of a row's
timing, each started before the warm-up and stopped after the row (a laptop's browser, a
shared CI runner). Several values give one row per value, side by side.

Memory (``--memory``): each framework runs alone in a fresh child process. Once the model is
loaded (weights in memory, nothing run yet) the peak-RSS counter is reset
(``/proc/self/clear_refs``); the script reports how far the peak rose above that during the
first call and the timed calls after it: activations, workspaces and arenas, not weights.

Needs torch and onnxruntime (the test extras); a missing one is skipped. MobileNet V1 is
written below (examples/ has no file for it); the other models are examples/*.cnn.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

# Before NumPy and PyTorch load their thread pools: idle threads sleep rather than spin.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import cnnc  # noqa: E402,F401 - before NumPy, as cnnc's command line is: OPENBLAS_THREAD_TIMEOUT
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FRAMEWORKS = ("cnnc", "torch", "ort")
MODELS = ("googlenet", "resnet18", "mobilenet_v1", "mobilenet_v2", "efficientnet_b0")

# MobileNet V1 (Howard et al. 2017, Table 1), width 1.0 at 224 x 224: 4,231,976 parameters.
MOBILENET_V1 = """\
network mobilenet_v1
input image: [3, 224, 224]
block cbr(c, k=1, s=1, g=1) {
    return in -> conv(c, k, stride=s, pad=k // 2, groups=g, bias=false) -> batchnorm -> relu
}
block sep(cin, c, s) {
    return in -> cbr(cin, 3, s, cin) -> cbr(c)
}
f = image -> cbr(32, 3, 2) -> sep(32, 64, 1) -> sep(64, 128, 2) -> sep(128, 128, 1)
    -> sep(128, 256, 2) -> sep(256, 256, 1) -> sep(256, 512, 2) -> sep(512, 512, 1) * 5
    -> sep(512, 1024, 2) -> sep(1024, 1024, 1)
output logits = f -> global_avgpool -> flatten -> dense(1000)
"""


def _source(name: str):
    if name == "mobilenet_v1":
        return MOBILENET_V1
    return os.path.join(ROOT, "examples", f"{name}.cnn")


def _model(name: str, threads):
    import cnnc

    model = cnnc.compile(_source(name)).build(backend="numpy", dtype="float32", seed=0)
    if threads is not None:
        from cnnc.runtime import threads as cnnc_threads

        cnnc_threads.set_threads(threads)
    return model


def _at(model, count):
    """``model`` run with cnnc's thread setting at ``count`` (a number or ``auto``)."""
    from cnnc.runtime import threads

    def run(x):
        before = threads.setting()
        threads.set_threads(count)
        try:
            return model(x)
        finally:
            threads.set_threads(before)

    return run


def _runners(name: str, threads, which=FRAMEWORKS, variants=()):
    """``(model, {framework: callable(x) -> NumPy output})`` for the available frameworks."""
    model = _model(name, threads)
    runners = {}
    if "cnnc" in which:
        runners["cnnc"] = model
        for count in variants:
            runners[f"cnnc@{count}"] = _at(model, count)
    if "torch" in which:
        try:
            import torch

            from cnnc.runtime.torch_ref import TorchPlan
        except ImportError:
            print("  (torch not installed: skipped)")
        else:
            if threads is not None:
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
            if threads is not None:
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


@contextlib.contextmanager
def neighbours(count: int):
    """``count`` processes keeping a core busy each, for the duration of the block."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
             for _ in range(count)]
    try:
        if procs:
            time.sleep(0.5)  # let them reach full speed (and the load sampler see them)
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def time_all(names, batches, reps, threads, loads, variants=(), which=FRAMEWORKS):
    rows = []
    for name in names:
        model, runners = _runners(name, threads, which, variants)
        for batch in batches:
            x = _input(model, batch)
            for load in loads:
                with neighbours(load):
                    outs = {fw: run(x) for fw, run in runners.items()}  # warm-up, answers
                    times = {fw: [] for fw in runners}
                    for _ in range(reps):
                        for fw, run in runners.items():
                            t0 = time.perf_counter()
                            run(x)
                            times[fw].append(time.perf_counter() - t0)
                    loadavg = os.getloadavg()[0]
                ref = outs.get("torch", outs["cnnc"])
                scale = float(np.abs(ref).max())
                row = {"model": name, "batch": batch, "neighbours": load,
                       "loadavg_1min": loadavg}
                for fw in runners:
                    row[f"{fw}_ms_per_image"] = 1000 * statistics.median(times[fw]) / batch
                    row[f"{fw}_max_rel_diff"] = float(np.abs(outs[fw] - ref).max()) / scale
                rows.append(row)
                _print_row(row)
    return rows


def _print_row(row) -> None:
    parts = [f"{row['model']:<15} batch {row['batch']:<2} busy {row['neighbours']}"]
    for key in row:
        if key.endswith("_ms_per_image"):
            parts.append(f"{key[:-len('_ms_per_image')]} {row[key]:7.2f}")
    if "torch_ms_per_image" in row:
        parts.append(f"cnnc/torch {row['cnnc_ms_per_image'] / row['torch_ms_per_image']:.2f}")
    if "ort_ms_per_image" in row:
        parts.append(f"cnnc/ort {row['cnnc_ms_per_image'] / row['ort_ms_per_image']:.2f}")
    worst = max(v for k, v in row.items() if k.endswith("_max_rel_diff"))
    parts.append(f"agree {worst:.0e}" + ("" if worst < 1e-3 else " DISAGREE"))
    parts.append(f"load {row['loadavg_1min']:.1f}")
    print("  ".join(parts), flush=True)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(fw: str, name: str, batch: int, threads, reps: int) -> None:
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
                       "--reps", str(reps)]
                if threads is not None:
                    cmd += ["--threads", str(threads)]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0 or not done.stdout.strip():
                    continue
                got = json.loads(done.stdout.strip().splitlines()[-1])
                row[f"{fw}_peak_rise_mib"] = got["peak_rise_mib"]
                row[f"{fw}_rest_mib"] = got["rest_mib"]
            rows.append(row)
            print(f"{name:<15} batch {batch:<2} " + "  ".join(
                f"{fw} +{row[f'{fw}_peak_rise_mib']:.1f} MiB (rest {row[f'{fw}_rest_mib']:.0f})"
                for fw in FRAMEWORKS if f"{fw}_peak_rise_mib" in row), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None,
                    help="fix every framework's thread count (default: each its own)")
    ap.add_argument("--neighbours", nargs="+", type=int, default=[0],
                    help="busy processes beside the timing, one row per value")
    ap.add_argument("--cnnc-threads", nargs="+", default=[], metavar="N",
                    help="also time cnnc at these thread settings (numbers or `auto`), "
                         "as columns cnnc@N")
    ap.add_argument("--no-others", action="store_true", help="time cnnc alone")
    ap.add_argument("--memory", action="store_true", help="measure peak memory instead")
    ap.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    ap.add_argument("--child", nargs=3, metavar=("FW", "MODEL", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        fw, name, batch = args.child
        child(fw, name, int(batch), args.threads, args.reps)
        return
    from cnnc.runtime import threads

    print(f"threads: {args.threads or 'each framework its default'}; cnnc {threads.info()}; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    if args.memory:
        rows = memory_all(args.models, args.batches, args.threads, min(args.reps, 3))
    else:
        rows = time_all(args.models, args.batches, args.reps, args.threads, args.neighbours,
                        args.cnnc_threads, ("cnnc",) if args.no_others else FRAMEWORKS)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
