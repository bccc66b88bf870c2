"""Data-parallel training over Ray actors, gradients averaged every step.

    trainer = DataParallelTrainer(model, optimizer, spec=spec, workers=2, batch_size=64)
    trainer.fit(data, epochs=10)            # as `runtime.train.Trainer.fit`

The driver keeps the one true copy of the model, the optimizer, the shuffle and the
checkpoints: it is a `runtime.train.Trainer` whose `train_step` is spread out. Each step
splits the global mini-batch into ``workers`` contiguous parts; every worker (a Ray actor
that built the model once) receives the current parameters, runs forward and backward on
its part with the loss averaged over that part, and sends back its gradients. The driver
weighs each by its part's share of the batch, ``g = sum(n_i / n * g_i)``, which is the
gradient of the mean loss over the whole batch, and takes the optimizer step. With the
same global batch and seed the result is single-process training's, up to the order of
floating-point sums.

Two things differ from one process, as in PyTorch's DistributedDataParallel: batch
normalisation normalises each part with its own statistics (the running statistics are the
parts' average), and dropout draws its masks on each worker from ``seed + rank``.
"""

from __future__ import annotations

import math

import numpy as np

from ..runtime.train import Trainer


class GradientWorker:
    """A Ray actor: the model built once; `gradients` runs one part of a batch."""

    def __init__(self, spec, rank: int, label_smoothing: float):
        # dropout masks drawn from seed + rank, different on every worker
        self.model = spec.build(seed=spec.seed + rank)
        self.buffers = tuple(self.model.plan.buffers)
        self.label_smoothing = label_smoothing

    def gradients(self, params: dict, x, y):
        """``(loss, correct, grads, buffers)`` for the part ``x``, ``y`` at ``params``:
        the loss averaged over the part, host arrays."""
        from ..runtime.losses import accuracy_count, softmax_cross_entropy

        model = self.model
        xp = model.xp
        model.params = {k: xp.array(v) for k, v in params.items()}  # Ray's are read-only
        model.mark_changed()
        with np.errstate(all="ignore"):
            logits = model.forward(x, train=True, logits=True)
            loss, dlogits = softmax_cross_entropy(logits, xp.asarray(y), self.label_smoothing)
        correct = accuracy_count(logits, xp.asarray(y))
        if not math.isfinite(loss):
            return loss, correct, None, None
        model.backward(dlogits, input_grad=False)
        host = model.backend.to_host
        grads = {k: host(g) for k, g in model.grads.items()}
        buffers = {k: host(model.params[k]) for k in self.buffers}
        return loss, correct, grads, buffers


class DataParallelTrainer(Trainer):
    """`runtime.train.Trainer` with each step's gradients computed by ``workers`` Ray
    actors (see the module docstring). ``spec`` is a `distributed.inference.ModelSpec` of
    the same network; ``address`` the cluster to join (None: this machine)."""

    def __init__(self, model, optimizer, *, spec, workers: int = 2, address=None,
                 cpus_per_worker: float = 1, gpus_per_worker: float = 0, **options):
        super().__init__(model, optimizer, **options)
        from .session import connect, require_resources

        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        ray = connect(address)
        require_resources(workers, cpus_per_worker, gpus_per_worker, "workers")
        self.ray = ray
        actor = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)(GradientWorker)
        self.workers = [actor.remote(spec, rank, self.label_smoothing)
                        for rank in range(workers)]

    def train_step(self, xb, yb, step: int) -> tuple[float, int]:
        model = self.model
        host = model.backend.to_host
        x, y = host(xb), host(yb)
        n = len(y)
        parts = [p for p in np.array_split(np.arange(n), len(self.workers)) if len(p)]
        params = self.ray.put(model.state() if not model.backend.on_device else
                              {k: host(v) for k, v in model.params.items()})
        futures = [w.gradients.remote(params, x[p[0]:p[-1] + 1], y[p[0]:p[-1] + 1])
                   for w, p in zip(self.workers, parts)]
        try:
            results = self.ray.get(futures)
        except self.ray.exceptions.RayTaskError as err:  # the worker's own error, unwrapped
            cause = getattr(err, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise
        shares = [len(p) / n for p in parts]
        loss = sum(share * r[0] for share, r in zip(shares, results))
        correct = sum(r[1] for r in results)
        if not math.isfinite(loss) or any(r[2] is None for r in results):
            self._diverged(loss if not math.isfinite(loss) else float("nan"), step)
        xp = model.xp
        grads = {}
        for key in results[0][2]:
            total = sum(share * r[2][key] for share, r in zip(shares, results))
            grads[key] = xp.asarray(total.astype(model.dtype, copy=False))
        for key in results[0][3]:  # running statistics: the parts' average
            total = sum(share * r[3][key] for share, r in zip(shares, results))
            model.params[key][...] = xp.asarray(total.astype(model.dtype, copy=False))
        model.grads = grads
        self.optimizer.step()
        return float(loss), int(correct)

    def close(self) -> None:
        """Stop the workers."""
        for w in self.workers:
            self.ray.kill(w)
        self.workers = []
