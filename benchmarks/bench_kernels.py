"""Time cnnc's NumPy conv2d on GoogLeNet-like layer shapes, against PyTorch if installed.

Prints milliseconds and GFLOP/s (2 FLOPs per multiply-accumulate) per layer, best of
``--repeat`` runs after one warm-up, and the largest difference from PyTorch's result.

    OPENBLAS_CORETYPE=SkylakeX python benchmarks/bench_kernels.py
    python benchmarks/bench_kernels.py --depthwise            # MobileNet V1's 13 layers

``--training`` times ResNet-18's training kernels that have a compiled path of their own:
max pooling with the index of each maximum (cnnc, and PyTorch's ``return_indices``), and
the weight gradient of its 3x3 stride-1 layers (the Winograd path, the column path it
replaces, and PyTorch's), at ``--threads``:

    python benchmarks/bench_kernels.py --training --threads 1

``--pointwise`` times the 1x1 convolutions of MobileNet V2, EfficientNet-B0 and GoogLeNet
(``--models``) as each network runs them (its shapes, batchnorm folded as a scale, bias,
activation and gate, captured from one inference of the compiled example): the compiled
tiles (``ops/pointwise.py``), the GEMM they replace (``CNNC_POINTWISE`` off: OpenBLAS and
the compiled epilogue) and PyTorch's conv2d with its activation, timed in turns, at
``--threads``:

    python benchmarks/bench_kernels.py --pointwise --threads 1

``--depthwise`` times MobileNet V1's 13 depthwise 3x3 convolutions (with batchnorm folded
as a scale, bias and ReLU), forward and backward: the compiled kernels (``ops/fast.py``, and
the tiles of ``ops/depthwise.py`` where they apply; ``fwd direct``: ``ops/fast.py``'s
direct kernel alone), the NumPy-API kernels they replace (``CNNC_FAST`` off), and PyTorch,
all at one thread (``--threads``), best of ``--repeat`` (the best time is the one least
disturbed on a shared machine).

NumPy's OpenBLAS picks its GEMM kernels by CPU type; on AVX-512 machines it may not
recognise (such as recent AMD EPYC) it falls back to Haswell kernels, and setting
``OPENBLAS_CORETYPE=SkylakeX`` roughly doubles float32 GEMM speed. It must be set in the
environment before NumPy is imported. Run from an installed checkout (``pip install -e .``)
or with a directory holding a ``cnnc`` link to the repository on ``PYTHONPATH``.
"""

import argparse
import functools
import os
import time

import numpy as np

from cnnc.ops.conv import conv2d

# name, (C, H, W), out channels, kernel, stride, pad: GoogLeNet (Szegedy et al. 2014)
LAYERS = [
    ("conv1 7x7/2", (3, 224, 224), 64, 7, 2, 3),
    ("conv2 reduce 1x1", (64, 56, 56), 64, 1, 1, 0),
    ("conv2 3x3", (64, 56, 56), 192, 3, 1, 1),
    ("3a 1x1", (192, 28, 28), 64, 1, 1, 0),
    ("3a 3x3", (96, 28, 28), 128, 3, 1, 1),
    ("3a 5x5", (16, 28, 28), 32, 5, 1, 2),
    ("4a 3x3", (96, 14, 14), 208, 3, 1, 1),
    ("5b 1x1", (832, 7, 7), 384, 1, 1, 0),
    ("5b 3x3", (192, 7, 7), 384, 3, 1, 1),
]


def best_time(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def best_in_turns(fns, repeat):
    """The best time of each of ``fns``, run in turns (each first in a turn as often as the
    others), after one warm-up each."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for turn in range(repeat):
        for j in range(len(fns)):
            i = (turn + j) % len(fns)
            start = time.perf_counter()
            fns[i]()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def torch_conv_relu(torch, x, weight, bias, stride, pad):
    with torch.no_grad():
        return torch.relu(torch.nn.functional.conv2d(x, weight, bias, stride, pad))


# MobileNet V1 (Howard et al. 2017, Table 1): the depthwise layers' (channels, input size,
# stride)
DEPTHWISE = [(32, 112, 1), (64, 112, 2), (128, 56, 1), (128, 56, 2), (256, 28, 1),
             (256, 28, 2)] + [(512, 14, 1)] * 5 + [(512, 14, 2), (1024, 7, 1)]


def depthwise(args, torch):
    from cnnc.ops import conv, depthwise as tiles, fast
    from cnnc.runtime import threads

    threads.set_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    print(f"MobileNet V1 depthwise 3x3, batch {args.batch}, float32, {args.threads} thread(s), "
          f"best of {args.repeat}; compiled kernels {'on' if fast.ENABLED else 'OFF'}")
    print(f"{'layer':<16} {'fwd fast':>9} {'fwd numpy':>10} {'fwd torch':>10} "
          f"{'bwd fast':>9} {'bwd numpy':>10} {'bwd torch':>10} {'fwd direct':>10}  ms")
    rng = np.random.default_rng(0)
    totals = np.zeros(7)
    for c, size, s in DEPTHWISE:
        x = rng.standard_normal((args.batch, c, size, size), dtype=np.float32)
        w = rng.standard_normal((c, 1, 3, 3), dtype=np.float32)
        b = rng.standard_normal(c, dtype=np.float32)
        g = rng.uniform(0.5, 1.5, c).astype(np.float32)
        attrs = dict(stride=s, pad=1, groups=c)
        row = []
        for on in (True, False):
            fast.ENABLED = on

            def forward():
                with threads.limit():
                    return conv.conv2d(x, w, b, act="relu", scale=g, **attrs)

            y, saved = conv.conv2d_forward(x, w, b, **attrs)
            dy = np.ones_like(y)

            def backward():
                with threads.limit():
                    return conv.conv2d_backward(saved, dy)

            row += [best_time(forward, args.repeat), best_time(backward, args.repeat)]
        fast.ENABLED = True
        if torch is not None:
            tx, tw, tb = map(torch.from_numpy, (x, w, b))

            def torch_forward():
                with torch.no_grad():
                    return torch.relu(torch.nn.functional.conv2d(tx, tw, tb, s, 1, 1, c))

            leaf = tx.clone().requires_grad_()
            tw_leaf = tw.clone().requires_grad_()
            ty = torch.nn.functional.conv2d(leaf, tw_leaf, None, s, 1, 1, c)
            grad = torch.ones_like(ty)

            def torch_backward():
                return torch.autograd.grad(ty, (leaf, tw_leaf), grad, retain_graph=True)

            row += [best_time(torch_forward, args.repeat), best_time(torch_backward, args.repeat)]
        else:
            row += [float("nan")] * 2
        def forward_with(on):  # the tiles on, or the direct kernel of ops/fast.py alone
            def run():
                tiles.DEPTHWISE = on
                try:
                    with threads.limit():
                        return conv.conv2d(x, w, b, act="relu", scale=g, **attrs)
                finally:
                    tiles.DEPTHWISE = True
            return run

        # the two compiled forwards again, in turns (a shared machine's speed drifts)
        row[0], fwd_direct = best_in_turns([forward_with(True), forward_with(False)],
                                           args.repeat)
        fwd_fast, bwd_fast, fwd_np, bwd_np, fwd_t, bwd_t = row
        cells = [fwd_fast, fwd_np, fwd_t, bwd_fast, bwd_np, bwd_t, fwd_direct]
        totals += cells
        print(f"{c:>4}x{size:<3} s{s:<7} " + " ".join(f"{v * 1e3:9.2f} " for v in cells))
    print(f"{'total':<16} " + " ".join(f"{v * 1e3:9.2f} " for v in totals))


# ResNet-18's 3x3 stride-1 layers: (channels, map size)
RESNET_3X3 = [(64, 56), (128, 28), (256, 14), (512, 7)]


def training(args, torch):
    from cnnc.ops import conv, pool, winograd
    from cnnc.runtime import threads

    threads.set_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    n = args.batch
    rng = np.random.default_rng(0)
    print(f"ResNet-18's training kernels, batch {n}, float32, {args.threads} thread(s), "
          f"best of {args.repeat}, ms")
    x = rng.standard_normal((n, 64, 112, 112), dtype=np.float32)

    def ours_pool():
        with threads.limit():
            return pool.maxpool2d_forward(x, kernel=3, stride=2, pad=1)

    ours = best_time(ours_pool, args.repeat)
    line = f"{'max pool 3x3/2 with indices, 64 x 112':<40} cnnc {ours * 1e3:8.2f}"
    if torch is not None:
        tx = torch.from_numpy(x)
        t = best_time(lambda: torch.nn.functional.max_pool2d(tx, 3, 2, 1, return_indices=True),
                      args.repeat)
        line += f"   torch {t * 1e3:8.2f}"
    print(line)
    for c, size in RESNET_3X3:
        x = rng.standard_normal((n, c, size, size), dtype=np.float32)
        w = rng.standard_normal((c, c, 3, 3), dtype=np.float32)
        _, saved = conv.conv2d_forward(x, w, None, pad=1)
        dy = rng.standard_normal((n, c, size, size), dtype=np.float32)
        row = []
        for on in (True, False):
            winograd.GRADIENT = on

            def weight_grad():
                with threads.limit():  # (the kernels' own thread count, as in training)
                    return conv.conv2d_backward(saved, dy, input_grad=False)

            row.append(best_time(weight_grad, args.repeat))
        winograd.GRADIENT = True
        line = (f"{f'weight gradient 3x3, {c} -> {c} at {size}':<40} "
                f"cnnc {row[0] * 1e3:8.2f} (columns {row[1] * 1e3:8.2f})")
        if torch is not None:
            tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)
            leaf = torch.from_numpy(w).clone().requires_grad_()
            ty = torch.nn.functional.conv2d(tx, leaf, None, 1, 1)

            def torch_grad():
                return torch.autograd.grad(ty, (leaf,), tdy, retain_graph=True)

            line += f"   torch {best_time(torch_grad, args.repeat) * 1e3:8.2f}"
        print(line)


def _network_pointwise_layers(name, batch):
    """``[(args, attrs, count)]``: the 1x1, stride-1, ungrouped CONV2D calls of one
    inference of ``examples/<name>.cnn`` at ``batch`` (copies of their arguments)."""
    import collections
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_runtime

    from cnnc.ops import Op

    model = bench_runtime._model(name, None)
    executor = model.executor
    seen = collections.OrderedDict()
    original = executor.kernels[Op.CONV2D]

    def capture(*args, **attrs):
        x, w = args[0], args[1]
        if (w.shape[2:] == (1, 1) and attrs.get("groups", 1) == 1
                and attrs.get("stride", 1) in (1, (1, 1))
                and not any(np.atleast_1d(attrs.get("pad", 0)))):
            key = (tuple(x.shape), tuple(w.shape), str(attrs.get("act")),
                   attrs.get("gate") is not None)
            if key not in seen:
                copies = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
                kept = {k: v.copy() if isinstance(v, np.ndarray) else v
                        for k, v in attrs.items()}
                if "out" in kept:  # the arena's slot, as the executor passes it
                    kept["out"] = np.empty_like(attrs["out"])
                seen[key] = [copies, kept, 0]
            seen[key][2] += 1
        return original(*args, **attrs)

    kernels = executor.kernels
    executor.kernels = {**kernels, Op.CONV2D: capture}
    try:
        model(bench_runtime._input(model, batch))
    finally:
        executor.kernels = kernels
    return list(seen.values())


def _torch_pointwise(torch, x, w, b, attrs):
    """PyTorch's conv2d with the scale folded into the weights, its activation and gate."""
    scale, act, gate = attrs.get("scale"), attrs.get("act"), attrs.get("gate")
    if scale is not None:
        w = w * scale[:, None, None, None]
    name = act if isinstance(act, str) or act is None else act[0]
    f = {None: None, "relu": torch.relu, "relu6": lambda t: torch.nn.functional.hardtanh(t, 0, 6),
         "silu": torch.nn.functional.silu, "swish": torch.nn.functional.silu,
         "sigmoid": torch.sigmoid}[name]
    tx, tw = torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(w))
    tb = None if b is None else torch.from_numpy(b)
    tg = None if gate is None else torch.from_numpy(np.asarray(gate, np.float32))

    def run():
        with torch.no_grad():
            y = torch.nn.functional.conv2d(tx, tw, tb)
            if f is not None:
                y = f(y)
            return y if tg is None else y * tg

    return run


def pointwise_layers(args, torch):
    from cnnc.ops import conv, pointwise
    from cnnc.runtime import threads

    threads.set_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    print(f"1x1 convolutions as the networks run them, batch {args.batch}, float32, "
          f"{args.threads} thread(s), best of {args.repeat} taken in turns, ms per image; "
          f"tiles chosen on this CPU: {pointwise.CHOSEN_HERE}")
    for name in args.models:
        layers = _network_pointwise_layers(name, args.batch)
        print(f"\n{name}: {len(layers)} shapes, {sum(c for *_, c in layers)} layers")
        print(f"{'input':>16} {'out':>5} {'act':>8} {'n':>2} {'tiles':>8} {'gemm':>8} "
              f"{'torch':>8} {'gemm/tiles':>10} {'torch/tiles':>11}")
        totals = [0.0, 0.0, 0.0]
        for call_args, attrs, count in layers:
            x, w = call_args[0], call_args[1]
            b = call_args[2] if len(call_args) > 2 else attrs.get("b")

            def ours(on):
                def run():
                    pointwise.POINTWISE = on
                    try:
                        with threads.limit():
                            return conv.conv2d(*call_args, **attrs)
                    finally:
                        pointwise.POINTWISE = True
                return run

            runs = [ours(True), ours(False)]
            if torch is not None:
                runs.append(_torch_pointwise(torch, x, w, b, attrs))
            best = best_in_turns(runs, args.repeat)
            per = [t * 1e3 / args.batch for t in best] + [float("nan")] * (3 - len(best))
            for i in range(3):
                totals[i] += per[i] * count
            act = attrs.get("act")
            act = act if isinstance(act, str) or act is None else act[0]
            print(f"{str(list(x.shape[1:])):>16} {w.shape[0]:5d} {str(act):>8} {count:2d} "
                  f"{per[0]:8.3f} {per[1]:8.3f} {per[2]:8.3f} {per[1] / per[0]:10.2f} "
                  f"{per[2] / per[0]:11.2f}")
        print(f"{'total':>16} {'':5} {'':8} {'':2} {totals[0]:8.3f} {totals[1]:8.3f} "
              f"{totals[2]:8.3f} {totals[1] / totals[0]:10.2f} {totals[2] / totals[0]:11.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--depthwise", action="store_true")
    parser.add_argument("--training", action="store_true")
    parser.add_argument("--pointwise", action="store_true")
    parser.add_argument("--models", nargs="+",
                        default=["mobilenet_v2", "efficientnet_b0", "googlenet"],
                        help="with --pointwise")
    parser.add_argument("--threads", type=int, default=1,
                        help="with --depthwise, --training and --pointwise")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        torch = None
    if args.depthwise:
        depthwise(args, torch)
        return
    if args.training:
        training(args, torch)
        return
    if args.pointwise:
        pointwise_layers(args, torch)
        return

    coretype = os.environ.get("OPENBLAS_CORETYPE", "(unset)")
    print(f"batch {args.batch}, float32, best of {args.repeat}; OPENBLAS_CORETYPE={coretype}")
    if torch is not None:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    header = f"{'layer':<18} {'GFLOP':>6} {'cnnc ms':>8} {'GFLOP/s':>8}"
    if torch is not None:
        header += f" {'torch ms':>9} {'GFLOP/s':>8} {'max|diff|':>10}"
    print(header)

    rng = np.random.default_rng(0)
    total_flops = 0.0
    total_ours = 0.0
    total_torch = 0.0
    for name, (c, h, w), out, k, s, p in LAYERS:
        x = rng.standard_normal((args.batch, c, h, w), dtype=np.float32)
        weight = rng.standard_normal((out, c, k, k), dtype=np.float32)
        weight /= (c * k * k) ** 0.5
        bias = rng.standard_normal(out, dtype=np.float32)
        y = conv2d(x, weight, bias, stride=s, pad=p, act="relu")
        flops = 2.0 * y.size * c * k * k
        ours = best_time(
            functools.partial(conv2d, x, weight, bias, stride=s, pad=p, act="relu"), args.repeat
        )
        total_flops += flops
        total_ours += ours
        row = f"{name:<18} {flops / 1e9:6.2f} {ours * 1e3:8.2f} {flops / ours / 1e9:8.1f}"
        if torch is not None:
            run_torch = functools.partial(
                torch_conv_relu, torch, *map(torch.from_numpy, (x, weight, bias)), s, p
            )
            theirs = best_time(run_torch, args.repeat)
            total_torch += theirs
            diff = float(np.abs(run_torch().numpy() - y).max())
            row += f" {theirs * 1e3:9.2f} {flops / theirs / 1e9:8.1f} {diff:10.2e}"
        print(row)

    row = f"{'total':<18} {total_flops / 1e9:6.2f} {total_ours * 1e3:8.2f} "
    row += f"{total_flops / total_ours / 1e9:8.1f}"
    if torch is not None:
        row += f" {total_torch * 1e3:9.2f} {total_flops / total_torch / 1e9:8.1f}"
    print(row)


if __name__ == "__main__":
    main()
