"""Batch inference over many array shards with Ray Data.

    rows = infer_shards(spec, [("shards/a.npy", "out/a.npy"), ...], actors=2)

Each shard becomes one row of a Ray dataset; ``map_batches`` hands the rows to a pool of
`ShardRunner` actors. An actor compiles and builds the model once, when it starts, then for
each shard reads the array, runs it in chunks of ``batch`` samples (CuPy results are brought
to the host), and writes the output next to nothing else: to a temporary in the output
folder, renamed into place, so a shard's output exists only once it is whole. A shard whose
output already exists is never sent (see `pending`), which makes a rerun resume.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np


@dataclass
class ModelSpec:
    """What an actor needs to build the model: the source bytes and where they came from,
    sizes and ``let`` constants, and the weights as host arrays (None: the seeded default
    initialisation)."""

    source: bytes
    file: str
    sizes: dict = field(default_factory=dict)
    consts: dict = field(default_factory=dict)
    weights: dict | None = None
    backend: str = "auto"
    dtype: str = "float32"
    seed: int = 0  # the default initialisation, and dropout's masks

    def plan(self):
        """The checked and lowered network; ValueError when the model has errors."""
        from ..compiler.check import check_bytes
        from ..compiler.plan import lower

        net, _ = check_bytes(self.source, self.file, self.sizes, self.consts or None)
        if not net.ok:
            raise ValueError(f"{self.file} has errors; run `cnnc check {self.file}`")
        return lower(net)

    def build(self, seed: int | None = None):
        """The built `Model`, with the weights when there are some (``seed``: the default
        initialisation's and dropout's, else ``self.seed``)."""
        from ..runtime.model import Model

        seed = self.seed if seed is None else seed
        model = Model(self.plan(), backend=self.backend, seed=seed, dtype=self.dtype)
        if self.weights is not None:
            model.params = {k: model.xp.asarray(v) for k, v in self.weights.items()}
            model.mark_changed()
        return model


def output_path(shard: str, out_dir: str, several: bool) -> str:
    """``shards/a.npy`` -> ``out/a.npy`` (``.npz`` for a network with several outputs)."""
    stem = os.path.splitext(os.path.basename(shard))[0]
    return os.path.join(out_dir, stem + (".npz" if several else ".npy"))


def pending(jobs: list) -> tuple[list, list]:
    """``(to_run, finished)``: the ``(shard, output)`` pairs whose output is missing, and
    those whose output a finished earlier run left."""
    to_run = [(s, o) for s, o in jobs if not os.path.exists(o)]
    finished = [(s, o) for s, o in jobs if os.path.exists(o)]
    return to_run, finished


def run_shard(model, shard: str, output: str, batch: int) -> int:
    """Read one shard, run it in chunks of ``batch`` samples, write its output atomically.
    Returns the number of samples."""
    from ..runtime.files import read_arrays, write_atomically

    x = read_arrays(shard)
    inputs = x if isinstance(x, dict) else {next(iter(model.plan.inputs)): x}
    n = len(next(iter(inputs.values())))
    parts: dict = {}
    for i in range(0, n, batch):
        result = model({k: v[i:i + batch] for k, v in inputs.items()})
        if not isinstance(result, dict):
            result = {next(iter(model.plan.outputs)): result}
        for name, a in result.items():
            parts.setdefault(name, []).append(a if isinstance(a, np.ndarray) else a.get())
    outputs = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    write_atomically(output, lambda f: _save(f, outputs, output))
    return n


def _save(f, outputs: dict, path: str) -> None:
    if path.endswith(".npz"):
        np.savez(f, **outputs)
    else:
        np.save(f, next(iter(outputs.values())), allow_pickle=False)


class ShardRunner:
    """A Ray Data actor: builds the model once; each call runs a batch of shards."""

    def __init__(self, spec, batch: int):
        if not isinstance(spec, ModelSpec):  # a reference to it in Ray's object store
            from .session import ray_module

            spec = ray_module().get(spec)
        self.model = spec.build()
        self.batch = batch

    def __call__(self, rows: dict) -> dict:
        samples, seconds, errors = [], [], []
        for shard, output in zip(rows["shard"], rows["output"]):
            t0 = time.perf_counter()
            try:
                samples.append(run_shard(self.model, str(shard), str(output), self.batch))
                errors.append("")
            except MemoryError:
                raise
            except Exception as err:  # noqa: BLE001 - reported per shard by the driver
                samples.append(0)
                errors.append(f"{type(err).__name__}: {err}".splitlines()[0][:300])
            seconds.append(time.perf_counter() - t0)
        return {"shard": np.asarray(rows["shard"]), "samples": np.asarray(samples),
                "seconds": np.asarray(seconds), "error": np.asarray(errors, dtype=object)}


def infer_shards(spec: ModelSpec, jobs: list, *, actors: int = 1, gpus_per_actor: float = 0,
                 batch: int = 256, address: str | None = None) -> list[dict]:
    """Run every ``(shard, output)`` of ``jobs`` through a pool of ``actors`` actors (each
    with ``gpus_per_actor`` GPUs). Returns one dict per shard: shard, output, samples,
    seconds and error ("" when it went well), in the order of ``jobs``. Paths are made
    absolute for the actors, so on a cluster they must name a file system every node
    shares."""
    from .session import connect, require_resources

    ray = connect(address)
    actors = max(1, min(actors, len(jobs)))  # an actor without a shard would only wait
    require_resources(actors, 1, gpus_per_actor, "actors")
    rows = [{"shard": os.path.abspath(s), "output": os.path.abspath(o)} for s, o in jobs]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    with warnings.catch_warnings():
        # max_restarts=0: a crashed actor's shards are reported, not retried (and Ray then
        # need not keep the constructor's arguments for a restart); Ray 2.60 calls passing
        # it deprecated, with no replacement yet
        warnings.simplefilter("ignore", DeprecationWarning)
        results = ds.map_batches(
            ShardRunner, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=gpus_per_actor or None, max_restarts=0,
            fn_constructor_kwargs={"spec": spec, "batch": batch},
        ).take_all()
    by_shard = {str(r["shard"]): r for r in results}
    report = []
    for (shard, output), row in zip(jobs, rows):
        got = by_shard[row["shard"]]
        report.append({"shard": shard, "output": output, "samples": int(got["samples"]),
                       "seconds": float(got["seconds"]), "error": str(got["error"])})
    return report

