"""Where inference time goes, op kind by op kind: cnnc's executor beside ONNX Runtime's own
profiler, on the same network, weights and batch, one thread each.

    python benchmarks/bench_ops.py mobilenet_v2                 # batch 4, 5 timed calls
    python benchmarks/bench_ops.py efficientnet_b0 --batch 8 --reps 3 --layers 20

cnnc: every kernel of the inference executor is wrapped with a CPU-time counter of the
calling thread (``time.thread_time``; one thread, so no split batch and no worker threads),
and the counters are summed by kind: convolutions as ``conv 1x1``, ``conv dw KxK``
(depthwise) or ``conv KxK``, the other ops by name. ``--layers N`` also prints the N
costliest convolution shapes, with their strides, beside ONNX Runtime's time for the same
shapes (its nodes matched by weight shape and input and output map; a shape that occurs
several times is summed on both sides). ONNX Runtime: ``SessionOptions.enable_profiling`` on cnnc's
ONNX export (every graph optimisation on, spinning off); its node events are summed by the
same kinds, read from each node's input shapes (ORT's fused ``Conv`` with its activation
counts as a convolution; a separate activation node, such as its ``QuickGelu`` for SiLU,
counts under its own name). Figures are ms per image; the machine's noise moves them from
one minute to the next, so compare the two columns of one run.

The models are bench_runtime.py's. Needs onnxruntime (the test extras).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time

os.environ["CNNC_NUM_THREADS"] = "1"  # before cnnc reads it: one thread, no split batch
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_runtime  # noqa: E402


def conv_kind(x_shape, w_shape, stride=None) -> str:
    """``conv 1x1``, ``conv dw 3x3 s2`` or ``conv 3x3 s2`` from the input and weight shapes."""
    c, cg = x_shape[1], w_shape[1]
    window = "x".join(str(k) for k in w_shape[2:])
    step = "" if stride is None else f" s{max(stride) if isinstance(stride, tuple) else stride}"
    if all(k == 1 for k in w_shape[2:]) and cg == c:
        return "conv 1x1"
    if cg == 1 and c > 1:
        return f"conv dw {window}{step}"
    return f"conv {window}{step}"


def cnnc_profile(model, x, reps: int):
    """``(ms per image by kind, ms per image by conv shape, whole ms per image)``; a conv
    shape is ``(kind with stride, input shape, weight shape, output map)``."""
    from cnnc.ops import Op
    from cnnc.runtime import threads

    executor = model.executor
    kinds: dict = collections.defaultdict(float)
    shapes: dict = collections.defaultdict(float)
    original = dict(executor.kernels)

    def timed(op, kernel):
        def run(*args, **attrs):
            started = time.thread_time()
            result = kernel(*args, **attrs)
            spent = time.thread_time() - started
            if op in (Op.CONV2D, Op.CONV1D):
                kind = conv_kind(args[0].shape, args[1].shape)
                strided = conv_kind(args[0].shape, args[1].shape, attrs.get("stride"))
                made = attrs.get("out") if result is None else result
                shapes[(strided, tuple(args[0].shape[1:]), tuple(args[1].shape),
                        tuple(made.shape[2:]))] += spent
            else:
                kind = op.value
            kinds[kind] += spent
            return result
        return run

    executor.kernels = {op: timed(op, k) for op, k in original.items()}
    try:
        with threads.limit(1):
            model(x)  # warm-up: arenas, compiled kernels
            kinds.clear()
            shapes.clear()
            started = time.thread_time()
            for _ in range(reps):
                model(x)
            whole = time.thread_time() - started
    finally:
        executor.kernels = original
    per = 1e3 / (reps * len(x))
    return ({k: v * per for k, v in kinds.items()}, {k: v * per for k, v in shapes.items()},
            whole * per)


def ort_profile(model, x, reps: int):
    """``(ms per image by kind, ms per image by conv shape, whole ms per image)`` from ONNX
    Runtime's profiler; a conv shape is ``(weight shape, input map, output map)``."""
    import onnxruntime as ort

    from cnnc.runtime.onnx_export import export

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with tempfile.TemporaryDirectory() as folder:
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(folder, "ort")
        session = ort.InferenceSession(export(model.plan, model.state()).SerializeToString(),
                                       opts, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        session.run(None, feed)  # warm-up, profiled too: its events are dropped below
        started = time.thread_time()
        for _ in range(reps):
            session.run(None, feed)
        whole = time.thread_time() - started
        with open(session.end_profiling()) as f:
            events = json.load(f)
    runs = [e for e in events if e.get("name") == "model_run"]
    first_end = runs[0]["ts"] + runs[0]["dur"] if runs else 0
    kinds: dict = collections.defaultdict(float)
    shapes: dict = collections.defaultdict(float)
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        if e["ts"] < first_end:
            continue  # the warm-up's
        args = e["args"]
        inputs = [next(iter(s.values())) for s in args.get("input_type_shape", [])]
        if args["op_name"] in ("Conv", "FusedConv") and len(inputs) > 1 and len(inputs[1]) >= 3:
            kind = conv_kind(inputs[0], inputs[1])
            outputs = [next(iter(s.values())) for s in args.get("output_type_shape", [])]
            if outputs:  # (maps at [2:4] in NCHW and in ORT's blocked NCHWc alike)
                key = (tuple(inputs[1]), tuple(inputs[0][2:4]), tuple(outputs[0][2:4]))
                shapes[key] += e["dur"] / 1e3
        else:
            kind = args["op_name"]
        kinds[kind] += e["dur"] / 1e3  # microseconds -> ms
    per = 1 / (reps * len(x))
    return ({k: v * per for k, v in kinds.items()}, {k: v * per for k, v in shapes.items()},
            whole * 1e3 * per)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=bench_runtime.MODELS)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--layers", type=int, default=0,
                        help="also print this many of cnnc's costliest convolution shapes")
    args = parser.parse_args()
    model = bench_runtime._model(args.model, None)
    x = bench_runtime._input(model, args.batch)
    kinds, shapes, whole = cnnc_profile(model, x, args.reps)
    try:
        theirs, their_shapes, their_whole = ort_profile(model, x, args.reps)
    except ImportError:
        print("(onnxruntime not installed: cnnc alone)")
        theirs, their_shapes, their_whole = {}, {}, None
    print(f"{args.model}, batch {args.batch}, one thread, ms per image, mean of {args.reps}")
    print(f"{'kind':<22}{'cnnc':>9}{'ORT':>9}")
    for kind in sorted(set(kinds) | set(theirs), key=lambda k: -max(kinds.get(k, 0),
                                                                    theirs.get(k, 0))):
        mine = f"{kinds[kind]:9.2f}" if kind in kinds else f"{'':9}"
        other = f"{theirs[kind]:9.2f}" if kind in theirs else f"{'':9}"
        print(f"{kind:<22}{mine}{other}")
    line = f"{'whole':<22}{whole:9.2f}"
    if their_whole is not None:
        line += f"{their_whole:9.2f}   cnnc / ORT {whole / their_whole:.2f}"
    print(line)
    if args.layers:
        print(f"\ncnnc's {args.layers} costliest convolution shapes (input, weight), ms per "
              f"image:")
        print(f"  {'':<16}{'input':<18}{'weight':<20}{'cnnc':>8}{'ORT':>8}{'ratio':>7}")
        for (kind, x_shape, w_shape, out_hw), ms in sorted(
                shapes.items(), key=lambda kv: -kv[1])[:args.layers]:
            other = their_shapes.get((w_shape, x_shape[1:3], out_hw))
            versus = f"{other:8.3f}{ms / other:7.2f}" if other else ""
            print(f"  {kind:<16}{str(list(x_shape)):<18}{str(list(w_shape)):<20}{ms:8.3f}"
                  f"{versus}")


if __name__ == "__main__":
    main()
