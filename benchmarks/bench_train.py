"""Train examples/digits.cnn with cnnc and the same network in PyTorch eager, side by side.

Both train on the same data (scikit-learn's 8x8 digits, the fixed stratified 80/20 split of
`cnnc train --data digits`), from the same initial weights (copied from the cnnc model),
on the same mini-batches (one seeded shuffle per epoch), with the same optimizer (Adam,
PyTorch's defaults unless given) in float32 on the CPU. For each it prints the seconds of
training (steps only), the seconds including the per-epoch test evaluation, training
images per second, and the final train loss and test accuracy.

    python benchmarks/bench_train.py                    # 10 epochs, batch 32, Adam 1e-3
    python benchmarks/bench_train.py --epochs 20 --lr 0.003 --runs 3

With ``--runs`` above 1 the two take turns (cnnc, torch, cnnc, torch, ...) so a change in
the machine's load touches both alike, and the median of each figure is printed.
PyTorch uses ``torch.get_num_threads()`` threads (all cores unless ``--threads``); cnnc's
steps run under ``runtime.threads.limit()`` (the count cnnc decides: ``CNNC_NUM_THREADS``, or
the cores other processes leave free), as ``Model.forward`` and ``backward`` do once they
call it themselves; ``--cnnc-threads blas`` leaves NumPy's BLAS at its own default instead.

``--part resnet18`` times one SGD step (momentum 0.9) of ResNet-18 at batch 8, 224 x 224,
float32: cnnc's forward, loss, backward and optimizer step against the same plan in PyTorch
eager with autograd (runtime/torch_ref.py, training mode), from the same weights, taking
turns step by step; it prints the median seconds per step, the ratio, and the first step's
losses (which must agree). ``--neighbours K`` keeps K busy processes beside it.
``--profile`` then runs as many cnnc steps again and prints where they go: forward, loss,
backward and optimizer, and each op family's training forward and backward. ``--memory``
runs the ResNet-18 steps of each framework alone in a fresh process and prints how far the
peak memory (``VmHWM``, reset through ``/proc/self/clear_refs``) rose above the memory at
rest: over the first step, and over the ``--steps`` steps after it.
Run from an installed checkout (``pip install -e .``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

# Before PyTorch's OpenMP and numba's load: idle OpenMP threads sleep rather than spin, or
# the framework timed next shares its cores with the other's spinning threads (as in
# bench_runtime.py). Both frameworks run with it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

import cnnc  # noqa: E402
from cnnc.runtime import optim, train
from cnnc.runtime.losses import accuracy_count, softmax_cross_entropy

# the busy neighbours of the inference benchmark (this folder is on the path of a script run)
from bench_runtime import _rss_kib, neighbours  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits.cnn"
RESNET = Path(__file__).resolve().parents[1] / "examples" / "resnet18.cnn"


def cnnc_threads(args):
    """The context cnnc's steps run in: ``runtime.threads.limit()``, or nothing."""
    if args.cnnc_threads == "blas":
        return contextlib.nullcontext()
    from cnnc.runtime import threads

    return threads.limit()


@contextlib.contextmanager
def timed_ops(model, totals: dict):
    """Inside the block, every training forward and backward of ``model``'s ops adds its
    seconds to ``totals[("forward" or "backward", op name)]``. A step run in image lanes
    (threads.in_lanes) counts the calling thread's share alone: about the step's wall time,
    where the sum of the lanes would be its CPU time."""
    table = model.backend.grads
    kept = dict(table)
    caller = threading.get_ident()

    def timed(phase, op, kernel):
        def run(*args, **kwargs):
            if threading.get_ident() != caller:
                return kernel(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return kernel(*args, **kwargs)
            finally:
                key = (phase, op.value)
                totals[key] = totals.get(key, 0.0) + time.perf_counter() - t0
        return run

    try:
        for op, (forward, backward) in kept.items():
            table[op] = (timed("forward", op, forward), timed("backward", op, backward))
        yield
    finally:
        table.update(kept)


def profile_steps(model, opt, x, labels, args):
    """Seconds per cnnc step in each phase and in each op family (``--profile``)."""
    phases = {"forward": 0.0, "loss": 0.0, "backward": 0.0, "optimizer": 0.0}
    ops: dict = {}
    with timed_ops(model, ops):
        for _ in range(args.steps):
            with cnnc_threads(args):
                t0 = time.perf_counter()
                logits = model.forward(x, train=True, logits=True)
                t1 = time.perf_counter()
                _, dlogits = softmax_cross_entropy(logits, labels)
                t2 = time.perf_counter()
                model.backward(dlogits, input_grad=False)
                t3 = time.perf_counter()
                opt.step()
                t4 = time.perf_counter()
            for phase, seconds in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                phases[phase] += seconds
    total = sum(phases.values())
    print(f"cnnc step, mean of {args.steps}: {total / args.steps:.3f} s = "
          + ", ".join(f"{k} {v / args.steps:.3f}" for k, v in phases.items()))
    for (phase, op), seconds in sorted(ops.items(), key=lambda kv: -kv[1]):
        if seconds / total >= 0.002:
            print(f"  {op:<16}{phase:<9}{seconds / args.steps:8.3f} s  "
                  f"{seconds / total:6.1%}")


def resnet_steps(torch, args, which=("cnnc", "torch")):
    """``(model, opt, x, labels, {framework: step})``: one SGD step (momentum 0.9) of
    ResNet-18 at ``--resnet-batch`` in each framework of ``which`` (PyTorch where given),
    from the same weights, each returning its loss."""
    from cnnc.runtime.torch_ref import TorchPlan

    model = cnnc.compile(RESNET).build(backend="numpy", seed=args.seed, dtype="float32")
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.resnet_batch, 3, 224, 224)).astype(np.float32)
    labels = rng.integers(0, 1000, args.resnet_batch)
    opt = optim.SGD(model, lr=0.01, momentum=0.9)
    initial = {k: v.copy() for k, v in model.state().items()}

    def cnnc_step():
        with cnnc_threads(args):
            logits = model.forward(x, train=True, logits=True)
            loss, dlogits = softmax_cross_entropy(logits, labels)
            model.backward(dlogits, input_grad=False)
            opt.step()
        return float(loss)

    steps = {"cnnc": cnnc_step} if "cnnc" in which else {}
    if torch is not None and "torch" in which:
        ref = TorchPlan(model.plan, initial, training=True)
        leaves = [ref.params[k].requires_grad_() for k in model.plan.params]
        topt = torch.optim.SGD(leaves, lr=0.01, momentum=0.9)
        tx = torch.from_numpy(x)
        ty = torch.from_numpy(labels)
        (name,) = model.plan.inputs
        del initial  # (the plan's copy is torch's own)

        def torch_step():
            topt.zero_grad(set_to_none=True)
            out = next(iter(ref({name: tx}).values()))
            loss = torch.nn.functional.cross_entropy(out, ty)
            loss.backward()
            topt.step()
            return loss.item()

        steps["torch"] = torch_step
    return model, opt, x, labels, steps


def resnet_step(torch, args):
    """Median seconds per SGD step of ResNet-18 at batch 8, cnnc and PyTorch side by side."""
    model, opt, x, labels, steps = resnet_steps(torch, args)
    rows = []
    for load in args.neighbours:
        with neighbours(load):
            first = {fw: step() for fw, step in steps.items()}  # warm-up; the same weights
            times = {fw: [] for fw in steps}
            for _ in range(args.steps):
                for fw, step in steps.items():
                    t0 = time.perf_counter()
                    step()
                    times[fw].append(time.perf_counter() - t0)
            loadavg = os.getloadavg()[0]
        med = {fw: statistics.median(t) for fw, t in times.items()}
        line = (f"resnet18 SGD step, batch {args.resnet_batch}, busy {load}: "
                + "  ".join(f"{fw} {med[fw]:.3f} s (first loss {first[fw]:.5f})"
                            for fw in steps))
        if "torch" in med:
            line += f"  cnnc/torch {med['cnnc'] / med['torch']:.2f}"
        # "first loss": each row's warm-up step; both have trained the same steps before it
        print(line + f"  load {loadavg:.1f}", flush=True)
        rows.append({"neighbours": load, **med})
    if args.profile:
        profile_steps(model, opt, x, labels, args)
    return rows


def memory_child(torch, args, fw):
    """In a fresh process: the peak memory of ``fw``'s ResNet-18 steps above the memory at
    rest (the model built, nothing run), over the first step (with its one-time
    allocations: numba's compiler for cnnc) and over the steps after it, printed as JSON.
    Both frameworks keep their gradients and momentum between steps, so the later steps'
    figure holds those, the memory their allocators kept, and each step's peak."""
    model, opt, x, labels, steps = resnet_steps(torch, args, which=(fw,))
    if fw not in steps:
        raise SystemExit(f"{fw} is not installed")
    step = steps[fw]
    rest = _rss_kib("VmRSS")
    peaks = []
    for count in (1, args.steps):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the peak-RSS counter back to the current RSS
        for _ in range(count):
            step()
        peaks.append((_rss_kib("VmHWM") - rest) / 1024)
    print(json.dumps({"rest_mib": rest / 1024, "first_step_mib": peaks[0],
                      "later_steps_mib": peaks[1]}))


def memory(args):
    """`memory_child` for cnnc and PyTorch, each alone in a fresh process."""
    for fw in ("cnnc", "torch"):
        cmd = [sys.executable, __file__, "--memory-child", fw, "--steps", str(args.steps),
               "--resnet-batch", str(args.resnet_batch), "--seed", str(args.seed),
               "--cnnc-threads", args.cnnc_threads]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not done.stdout.strip():
            print(f"{fw}: no figure ({done.stderr.strip().splitlines()[-1:]})")
            continue
        got = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"resnet18 SGD step, batch {args.resnet_batch}, peak above rest: {fw} first "
              f"step +{got['first_step_mib']:.0f} MiB, later steps "
              f"+{got['later_steps_mib']:.0f} MiB (rest {got['rest_mib']:.0f} MiB)",
              flush=True)


def orders(seed: int, n: int, epochs: int):
    """One shuffle per epoch, the same for both frameworks."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(n) for _ in range(epochs)]


def run_cnnc(data, args, perms):
    model = cnnc.compile(EXAMPLE).build(backend="numpy", seed=args.seed, dtype="float32")
    initial = {k: v.copy() for k, v in model.state().items()}  # state() may alias params
    opt = optim.Adam(model, lr=args.lr)
    trainer = train.Trainer(model, opt, batch_size=args.batch, seed=args.seed)
    x = data.x_train.astype(np.float32)
    y = data.y_train
    train_seconds = 0.0
    started = time.perf_counter()
    for perm in perms:
        loss_sum = 0.0
        for i in range(0, len(perm), args.batch):
            idx = perm[i:i + args.batch]
            t0 = time.perf_counter()
            with cnnc_threads(args):
                logits = model.forward(x[idx], train=True, logits=True)
                loss, dlogits = softmax_cross_entropy(logits, y[idx])
                model.backward(dlogits, input_grad=False)
                opt.step()
            train_seconds += time.perf_counter() - t0
            loss_sum += loss * len(idx)
        accuracy = trainer.evaluate(data.x_test.astype(np.float32), data.y_test)
    total = time.perf_counter() - started
    return initial, {"train_s": train_seconds, "total_s": total,
                     "images_per_s": len(perms) * len(x) / train_seconds,
                     "train_loss": loss_sum / len(x), "test_accuracy": accuracy}


def torch_model(torch, initial):
    nn = torch.nn

    def conv(cin, cout):
        return nn.Conv2d(cin, cout, 3, padding=1, bias=False)

    net = nn.Sequential(
        conv(1, 16), nn.BatchNorm2d(16), nn.ReLU(),
        conv(16, 32), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        conv(32, 64), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.25), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 10),
    )
    # cnnc's weight-file names, in the order torch's state_dict lists the same tensors
    names = []
    for i in (1, 2, 3):
        names += [f"features.conv{i}.weight"]
        names += [f"features.batchnorm{i}.{k}"
                  for k in ("weight", "bias", "running_mean", "running_var")]
    names += ["logits.dense1.weight", "logits.dense1.bias", "logits.dense2.weight",
              "logits.dense2.bias"]
    state = net.state_dict()
    keys = [k for k in state if not k.endswith("num_batches_tracked")]
    assert len(keys) == len(names), (keys, names)
    for key, name in zip(keys, names):
        assert tuple(state[key].shape) == initial[name].shape, (key, name)
        state[key] = torch.from_numpy(initial[name].copy())
    net.load_state_dict(state)
    return net


def run_torch(torch, data, args, perms, initial):
    torch.manual_seed(args.seed)
    net = torch_model(torch, initial)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    x = torch.from_numpy(data.x_train.astype(np.float32))
    y = torch.from_numpy(data.y_train)
    x_test = torch.from_numpy(data.x_test.astype(np.float32))
    y_test = data.y_test
    train_seconds = 0.0
    started = time.perf_counter()
    for perm in perms:
        net.train()
        loss_sum = 0.0
        for i in range(0, len(perm), args.batch):
            idx = torch.from_numpy(perm[i:i + args.batch])
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
            train_seconds += time.perf_counter() - t0
            loss_sum += loss.item() * len(idx)
        net.eval()
        with torch.no_grad():
            scores = net(x_test).numpy()
        accuracy = accuracy_count(scores, y_test) / len(y_test)
    total = time.perf_counter() - started
    return {"train_s": train_seconds, "total_s": total,
            "images_per_s": len(perms) * len(x) / train_seconds,
            "train_loss": loss_sum / len(x), "test_accuracy": accuracy}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--part", choices=("digits", "resnet18", "both"), default="both")
    parser.add_argument("--steps", type=int, default=5, help="timed ResNet-18 steps")
    parser.add_argument("--resnet-batch", type=int, default=8)
    parser.add_argument("--neighbours", nargs="+", type=int, default=[0],
                        help="busy processes beside the ResNet-18 steps, a row per value")
    parser.add_argument("--cnnc-threads", choices=("limit", "blas"), default="limit")
    parser.add_argument("--profile", action="store_true",
                        help="after the ResNet-18 rows, where cnnc's step goes")
    parser.add_argument("--memory", action="store_true",
                        help="the ResNet-18 step's peak memory, each framework alone")
    parser.add_argument("--memory-child", choices=("cnnc", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory:
        memory(args)
        return

    torch = None
    if args.memory_child == "cnnc":
        args.no_torch = True  # (PyTorch not even loaded)
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("torch is not installed: cnnc only")
    if torch is not None and args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(torch, args, args.memory_child)
        return

    print(f"load average at start: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.part in ("resnet18", "both"):
        resnet_step(torch, args)
        if args.part == "resnet18":
            return
    data = train.load_digits()
    print(f"digits: {len(data.x_train)} training and {len(data.x_test)} test images; "
          f"{args.epochs} epochs, batch {args.batch}, Adam lr {args.lr}, float32, seed "
          f"{args.seed}" + (f", torch {torch.__version__} with {torch.get_num_threads()} "
                            "threads" if torch is not None else ""))
    perms = orders(args.seed, len(data.x_train), args.epochs)
    results = {"cnnc": [], "torch": []}
    for _ in range(args.runs):
        initial, figures = run_cnnc(data, args, perms)
        results["cnnc"].append(figures)
        if torch is not None:
            results["torch"].append(run_torch(torch, data, args, perms, initial))

    header = (f"{'':<8}{'train s':>10}{'with eval s':>13}{'images/s':>11}"
              f"{'train loss':>12}{'test acc':>10}")
    print(header)
    print("-" * len(header))
    for name, runs in results.items():
        if not runs:
            continue
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{name:<8}{med['train_s']:>10.2f}{med['total_s']:>13.2f}"
              f"{med['images_per_s']:>11,.0f}{med['train_loss']:>12.4f}"
              f"{med['test_accuracy']:>10.2%}")
    print(f"load average at end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
