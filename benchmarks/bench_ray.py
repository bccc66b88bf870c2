"""Ray in cnnc (docs/scale.md): images per second of `cnnc run --ray` with 1 and 2 actors
against one process running the same shards in a loop (what a user without Ray does), and
the overhead Ray Tune adds to each trial of `cnnc sweep` against training the same
configurations one after another in-process.

    python benchmarks/bench_ray.py [--shards 16] [--rows 256] [--trials 4]

Needs Ray (pip install 'cnnc[ray]') and scikit-learn (the sweep trains on digits). Ray's
own start is timed apart and left out of the rates.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

TINY = """\
network tiny
input image: [3, 32, 32]
block reduce(c) {
    conv_path = in -> conv(c, 3, stride=2, pad=1) -> batchnorm -> relu
    pool_path = in -> maxpool(3, stride=2, pad=1)
    return concat(conv_path, pool_path)
}
features = image -> conv(32, 3, pad=1) -> relu -> reduce(32) -> reduce(64)
output logits = features -> global_avgpool -> flatten -> dense(10)
"""

SWEEP = """\
network sweep
let width = 16
let depth = 2
input image: [1, 8, 8]
block unit(c) {
    return in -> conv(c, 3, pad=1) -> relu -> maxpool(2)
}
features = image -> unit(width) * depth
output logits = features -> flatten -> dense(10)
"""


def inference(folder: str, shards: int, rows: int) -> None:
    from cnnc.distributed.inference import ModelSpec, infer_shards, output_path, run_shard
    from cnnc.distributed.session import connect

    rng = np.random.default_rng(0)
    paths = []
    for i in range(shards):
        path = os.path.join(folder, f"shard{i}.npy")
        np.save(path, rng.normal(size=(rows, 3, 32, 32)).astype(np.float32))
        paths.append(path)
    spec = ModelSpec(TINY.encode(), "tiny.cnn", backend="numpy")
    images = shards * rows

    model = spec.build()
    out = os.path.join(folder, "loop")
    os.makedirs(out)
    t0 = time.perf_counter()
    for p in paths:
        run_shard(model, p, output_path(p, out, False), 256)
    loop = time.perf_counter() - t0
    print(f"one process, a loop over the shards: {images / loop:,.0f} images/s ({loop:.1f}s)")

    t0 = time.perf_counter()
    connect()
    print(f"Ray's start: {time.perf_counter() - t0:.1f}s")
    for actors in (1, 2):
        out = os.path.join(folder, f"ray{actors}")
        os.makedirs(out)
        jobs = [(p, output_path(p, out, False)) for p in paths]
        t0 = time.perf_counter()
        rows = infer_shards(spec, jobs, actors=actors, batch=256)
        seconds = time.perf_counter() - t0
        busy = sum(r["seconds"] for r in rows) / actors  # each actor's share of the work
        print(f"Ray Data, {actors} actor{'s' * (actors > 1)}: {images / seconds:,.0f} "
              f"images/s for the whole job ({seconds:.1f}s, the actors' start included); "
              f"{images / busy:,.0f} images/s inside the actors")


def sweep(trials: int) -> None:
    from cnnc.distributed.sweep import Job, run_trials, train_configuration

    grid = [{"width": str(8 * (i + 1))} for i in range(trials)]
    job = Job(SWEEP.encode(), "sweep.cnn", {}, "digits", epochs=1)
    t0 = time.perf_counter()
    inline = [train_configuration(job, c)["seconds"] for c in grid]
    loop = time.perf_counter() - t0
    print(f"{trials} trials in one process: {loop:.1f}s ({sum(inline):.1f}s training)")
    t0 = time.perf_counter()
    rows = run_trials(job, grid, at_once=1)
    wall = time.perf_counter() - t0
    training = sum(r["seconds"] for r in rows)
    print(f"{trials} trials through Ray Tune, one at a time: {wall:.1f}s ({training:.1f}s "
          f"training): {(wall - training) / trials:.1f}s overhead per trial "
          f"(in-process: {(loop - sum(inline)) / trials:.1f}s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--trials", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        inference(folder, args.shards, args.rows)
    sweep(args.trials)


if __name__ == "__main__":
    main()
