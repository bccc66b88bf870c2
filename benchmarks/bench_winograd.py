"""Time the Winograd F(2x2, 3x3) kernel (``ops/winograd.py``) on ResNet-18's 3x3 stride-1
layers against cnnc's GEMM ``conv2d`` (Winograd off) and PyTorch.

    python benchmarks/bench_winograd.py                        # batch 8 and 1, 1 and 2 threads
    python benchmarks/bench_winograd.py --batch 8 --threads 1 --repeat 30
    python benchmarks/bench_winograd.py --budgets 2 4 8 16 32  # the workspace budget, MiB
    python benchmarks/bench_winograd.py --tiles --batch 4 --threads 1  # F(4x4) / F(2x2)

Every layer is ``conv(C -> C, 3x3, pad 1)`` with a folded batchnorm's scale and bias and
a ReLU, float32, as ResNet-18 runs it. Per layer, batch and thread count (set by
``cnnc.runtime.threads.limit`` for cnnc, ``torch.set_num_threads`` for PyTorch) the three
run interleaved, one call each per round, and the best of ``--repeat`` rounds is printed
in milliseconds (the best time is the one least disturbed on a shared machine), with the
ratio GEMM / Winograd (above 1: Winograd faster) and the largest difference from the GEMM
result relative to its largest value. ``U ms`` is the weight transform alone, which
Winograd's time includes here (recomputed on every call, as in training; an inference
plan keeps it).

``--budgets`` times the Winograd kernel alone at each workspace budget
(``winograd.WORKSPACE_BYTES``: bytes of the transformed input and output of one chunk of
images).

``--tiles`` times F(2x2, 3x3) against F(4x4, 3x3) (``tile=4``), each with its weight
transform computed beforehand (as an inference plan keeps it), on ResNet-18's layers and
GoogLeNet's 3x3 layers of 28x28 and 14x14 (their input and output channels differ), with
the largest difference of each from the GEMM result relative to its largest value: the
measurements behind ``winograd.tile_for``.
"""

import argparse
import os
import time

# Before NumPy and PyTorch load their thread pools: idle OpenMP threads sleep rather than
# spin (PyTorch's threads and OpenBLAS's take turns on the same cores).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from cnnc.ops import conv, winograd  # noqa: E402
from cnnc.runtime import threads  # noqa: E402

# ResNet-18's 3x3 stride-1 convolutions: (channels, height = width)
LAYERS = [(64, 56), (128, 28), (256, 14), (512, 7)]


def rounds(fns, repeat):
    """Best time in ms of each function, calling them in turn ``repeat`` times after one
    warm-up call each."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return [b * 1e3 for b in best]


def layer(c, hw, n, rng):
    x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
    w = (rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    scale = rng.uniform(0.5, 1.5, c).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    return x, w, scale, b


def gemm_conv(x, w, b, scale):
    """cnnc's conv2d with the Winograd kernel off."""
    was = winograd.WINOGRAD
    winograd.WINOGRAD = False
    try:
        return conv.conv2d(x, w, b, pad=1, act="relu", scale=scale)
    finally:
        winograd.WINOGRAD = was


def compare(args):
    try:
        import torch
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    print(f"{'layer':>10} {'N':>2} {'thr':>3} {'winograd':>9} {'U ms':>6} {'gemm':>8} "
          f"{'torch':>8} {'gemm/wino':>9} {'torch/wino':>10} {'max rel diff':>12}")
    for n in args.batch:
        for c, hw in LAYERS:
            x, w, scale, b = layer(c, hw, n, rng)
            out = np.empty((n, c, hw, hw), dtype=np.float32)
            if torch is not None:
                tx, tw = torch.from_numpy(x), torch.from_numpy(w * scale[:, None, None, None])
                tb = torch.from_numpy(b)

                def torch_conv():
                    with torch.no_grad():
                        return torch.relu(torch.nn.functional.conv2d(tx, tw, tb, 1, 1))

            def wino():
                assert winograd.winograd_conv2d(x, w, b, scale, "relu", out, (1, 1, 1, 1))

            for count in args.threads:
                fns = [wino, lambda: winograd.weight_transform(w),
                       lambda: gemm_conv(x, w, b, scale)]
                if torch is not None:
                    torch.set_num_threads(count)
                    fns.append(torch_conv)
                with threads.limit(count):
                    times = rounds(fns, args.repeat)
                    wino()
                    want = gemm_conv(x, w, b, scale)
                diff = float(np.abs(out - want).max() / np.abs(want).max())
                t_torch = times[3] if torch is not None else float("nan")
                print(f"{c:>4}@{hw:<5} {n:>2} {count:>3} {times[0]:>9.2f} {times[1]:>6.2f} "
                      f"{times[2]:>8.2f} {t_torch:>8.2f} {times[2] / times[0]:>9.2f} "
                      f"{t_torch / times[0]:>10.2f} {diff:>12.1e}", flush=True)


def budgets(args):
    rng = np.random.default_rng(0)
    sizes = [int(mib * (1 << 20)) for mib in args.budgets]
    print(f"{'layer':>10} {'N':>2} {'thr':>3} " + " ".join(f"{m:>7g}M" for m in args.budgets))
    was = winograd.WORKSPACE_BYTES
    try:
        for n in args.batch:
            for c, hw in LAYERS:
                x, w, scale, b = layer(c, hw, n, rng)
                out = np.empty((n, c, hw, hw), dtype=np.float32)
                u = winograd.weight_transform(w)

                def at(size):
                    def run():
                        winograd.WORKSPACE_BYTES = size
                        winograd.winograd_conv2d(x, w, b, scale, "relu", out, (1, 1, 1, 1), u=u)
                    return run

                for count in args.threads:
                    with threads.limit(count):
                        times = rounds([at(s) for s in sizes], args.repeat)
                    print(f"{c:>4}@{hw:<5} {n:>2} {count:>3} "
                          + " ".join(f"{t:>8.2f}" for t in times), flush=True)
    finally:
        winograd.WORKSPACE_BYTES = was


# GoogLeNet's 3x3 convolutions of stride 1 with at least 64 inputs: (in, out, height = width)
GOOGLENET = [(64, 192, 56), (96, 128, 28), (128, 192, 28), (96, 208, 14), (112, 224, 14),
             (160, 320, 14), (160, 320, 7), (192, 384, 7)]


def tiles(args):
    rng = np.random.default_rng(0)
    print(f"{'layer':>14} {'N':>2} {'thr':>3} {'F(2x2)':>8} {'F(4x4)':>8} {'F2/F4':>6} "
          f"{'F2 diff':>8} {'F4 diff':>8}")
    shapes = [(c, c, hw) for c, hw in LAYERS] + GOOGLENET
    for n in args.batch:
        for c, o, hw in shapes:
            x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
            w = (rng.standard_normal((o, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
            scale = rng.uniform(0.5, 1.5, o).astype(np.float32)
            b = rng.standard_normal(o).astype(np.float32)
            outs = {2: np.empty((n, o, hw, hw), np.float32), 4: np.empty((n, o, hw, hw), np.float32)}
            us = {2: winograd.weight_transform(w), 4: winograd.weight_transform4(w)}

            def run(tile):
                return lambda: winograd.winograd_conv2d(x, w, b, scale, "relu", outs[tile],
                                                        (1, 1, 1, 1), u=us[tile], tile=tile)

            for count in args.threads:
                with threads.limit(count):
                    t2, t4 = rounds([run(2), run(4)], args.repeat)
                    want = gemm_conv(x, w, b, scale)
                top = float(np.abs(want).max())
                d2, d4 = (float(np.abs(outs[t] - want).max()) / top for t in (2, 4))
                print(f"{c:>4}->{o:<4}@{hw:<3} {n:>2} {count:>3} {t2:>8.2f} {t4:>8.2f} "
                      f"{t2 / t4:>6.2f} {d2:>8.1e} {d4:>8.1e}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 1])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--budgets", type=float, nargs="+",
                        help="time the Winograd kernel at these workspace budgets (MiB)")
    parser.add_argument("--tiles", action="store_true",
                        help="time F(2x2, 3x3) against F(4x4, 3x3), transforms kept")
    args = parser.parse_args()
    if args.tiles:
        tiles(args)
    elif args.budgets:
        budgets(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
