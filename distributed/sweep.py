"""Sweeps over a model's ``let`` constants with Ray Tune.

    grid = configurations({"width": ["16", "32"], "depth": ["2", "3"]})   # 4 dicts
    checked = [check_configuration(source, "m.cnn", c) for c in grid]    # before any trial
    rows = run_trials(job, [c for c in checked if c.ok])

Every configuration is checked first, on the driver, without Ray: the ones with errors are
listed with their first diagnostic and never become trials. Each valid one is one Tune trial
(one CPU) that compiles the model with its constants, trains it for a few epochs on the
data and reports its test accuracy; the driver adds parameters and MACs from the checker's
cost report.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field


def split_values(text: str) -> list[str]:
    """``16,32,64`` -> ``["16", "32", "64"]``; commas inside brackets stay (``[1,2],[3,4]``
    is two lists)."""
    values, depth, current = [], 0, []
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            values.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    values.append("".join(current).strip())
    return values


def configurations(axes: dict) -> list[dict]:
    """Every combination of the values of ``axes`` (name -> list of values), in order: the
    last name varies fastest."""
    names = list(axes)
    return [dict(zip(names, combo)) for combo in itertools.product(*axes.values())]


@dataclass
class Checked:
    """One configuration after the checker: its cost, or its first error."""

    consts: dict
    ok: bool
    params: int = 0
    macs: int = 0
    error: str = ""  # "m.cnn:12:9: E301 ...": the first diagnostic

    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.consts.items())


def check_configuration(source: bytes, file: str, consts: dict, sizes: dict | None = None):
    """`Checked` for ``consts``: the network's parameters and MACs, or its first error."""
    from ..compiler.check import check_bytes
    from ..compiler.summary import report

    net, _ = check_bytes(source, file, sizes or {}, consts)
    if not net.ok:
        return Checked(consts, False, error=first_error(net, file))
    if net.symbols:
        example = " ".join(f"--size {s}=32" for s in net.symbols)
        return Checked(consts, False, error=f"{file}: symbolic sizes {', '.join(net.symbols)}; "
                       f"training needs them fixed: add e.g. {example}")
    rep = report(net)
    return Checked(consts, True, params=_whole(rep.total_params), macs=_whole(rep.total_macs))


def _whole(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):  # symbolic: the sweep needs concrete sizes
        return 0


def first_error(net, file: str) -> str:
    d = net.errors[0]
    where = file
    span = d.span
    if span is not None and getattr(span, "line", None):
        where = f"{file}:{span.line}:{getattr(span, 'column', 1)}"
    return f"{where}: {d.code} {d.message}"


@dataclass
class Job:
    """What every trial needs: the model, where the data is and the training settings."""

    source: bytes
    file: str
    sizes: dict
    data: str  # "digits", an .npz path or an image folder, absolute
    epochs: int = 3
    batch: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    seed: int = 0
    settings: dict = field(default_factory=dict)


def train_configuration(job: Job, consts: dict) -> dict:
    """Compile with ``consts``, train on the job's data, return ``{"accuracy", "loss",
    "seconds"}``: the last epoch's test accuracy and training loss, training's time."""
    from ..compiler.check import check_bytes
    from ..compiler.plan import lower
    from ..runtime import optim, train
    from ..runtime.model import Model

    net, _ = check_bytes(job.source, job.file, job.sizes, consts)
    plan = lower(net)
    model = Model(plan, backend="numpy", seed=job.seed)
    data = load_data(job.data, plan)
    opt = optim.make_optimizer(job.optimizer, model, lr=job.lr)
    trainer = train.Trainer(model, opt, batch_size=job.batch, seed=job.seed)
    started = time.perf_counter()
    history = trainer.fit(data, job.epochs)
    last = history[-1]
    return {"accuracy": last.test_accuracy, "loss": last.train_loss,
            "seconds": time.perf_counter() - started}


def load_data(spec: str, plan):
    """``digits``, an .npz file or an image folder, as `runtime.train.Trainer.fit` takes."""
    from ..runtime import train

    if os.path.isdir(spec):
        from ..data.images import open_folder

        _, in_shape, _, _ = train.classifier_shape(plan)
        folder = open_folder(spec, in_shape, workers=1)
        folder.check(plan)
        return folder
    data = train.load_data(spec)
    train.check_data(plan, data)
    return data


def _trial(config: dict, job: Job = None, grid: list = None):
    """A Tune function trainable: one configuration, trained, its metrics reported."""
    from ray import tune

    tune.report(train_configuration(job, grid[config["index"]]))


def run_trials(job: Job, grid: list[dict], *, at_once: int | None = None,
               address: str | None = None) -> list[dict]:
    """One Tune trial per configuration of ``grid`` (a list of consts dicts), at most
    ``at_once`` at a time (default: one per CPU). Returns, in grid order, dicts with the
    metrics of `train_configuration` or an ``error``."""
    from .session import connect

    connect(address)
    from ray import tune

    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # no banners: cnnc prints its own table
    storage = tempfile.mkdtemp(prefix="cnnc-sweep-")
    interrupt = signal.getsignal(signal.SIGINT)  # Tune installs its own and leaves it
    try:
        trainable = tune.with_resources(tune.with_parameters(_trial, job=job, grid=grid),
                                        {"cpu": 1})
        tuner = tune.Tuner(
            trainable,
            param_space={"index": tune.grid_search(list(range(len(grid))))},
            tune_config=tune.TuneConfig(max_concurrent_trials=at_once, reuse_actors=True),
            run_config=tune.RunConfig(storage_path=storage, name="sweep", verbose=0),
        )
        with contextlib.redirect_stdout(io.StringIO()):  # Tune's own "view results" lines
            results = tuner.fit()
        rows: list = [None] * len(grid)
        for result in results:
            index = result.config["index"]
            if result.error is not None:
                text = str(result.error).strip().splitlines()
                rows[index] = {"error": text[-1] if text else type(result.error).__name__}
            else:
                metrics = result.metrics
                rows[index] = {k: metrics.get(k) for k in ("accuracy", "loss", "seconds")}
        return [row or {"error": "no result"} for row in rows]
    finally:
        signal.signal(signal.SIGINT, interrupt)
        shutil.rmtree(storage, ignore_errors=True)
