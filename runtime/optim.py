"""Optimizers and learning-rate schedules, with PyTorch's update rules.

    opt = SGD(model, lr=0.1, momentum=0.9)      # or Adam(...), AdamW(...)
    model.forward(x, train=True, logits=True); model.backward(dloss)
    opt.step()                                  # reads model.grads, updates model.params in place

An optimizer is given either a built ``Model`` (it then updates the trainable entries of
``model.params``, the keys of ``model.plan.params``, never the running statistics, and reads
``model.grads``) or a plain dict ``name -> array`` (it updates those arrays; ``step`` then
needs the gradients as a dict). Arrays are looked up by name at every step, so a model
whose weights were reloaded is still the one being trained.

Weight decay applies to every trainable parameter by default, biases and batch-norm scales
included, as PyTorch does when given ``model.parameters()``. ``decay="weights"`` limits it to
parameters with two or more dimensions (conv and dense weights), the common recipe that
leaves biases, batch-norm scales and shifts and prelu slopes alone.

``state_dict()`` returns plain data (floats, ints, NumPy arrays) and ``load_state_dict()``
takes it back, so a checkpoint resumes with the very same moments and step counts.
"""

from __future__ import annotations

import math

import numpy as np

from ..ops.xp import get_array_module

DECAY_CHOICES = ("all", "weights")


class OptimizerStateError(ValueError):
    """A saved optimizer state that does not fit this optimizer or its parameters."""


def _check(name: str, value: float, low: float, high: float | None = None,
           high_open: bool = True) -> float:
    value = float(value)
    bad = not math.isfinite(value) or value < low
    if high is not None:
        bad = bad or (value >= high if high_open else value > high)
    if bad:
        upper = "" if high is None else (f" and < {high}" if high_open else f" and <= {high}")
        raise ValueError(f"{name} must be >= {low}{upper}, got {value}")
    return value


def _to_numpy(a):
    if isinstance(a, np.ndarray):
        return a
    return a.get()  # a CuPy array


class Optimizer:
    """What every optimizer shares: the parameter source, the lr, decay, step counts and
    named per-parameter state arrays ("slots")."""

    kind = ""
    slot_names: tuple[str, ...] = ()

    def __init__(self, params, *, lr: float, weight_decay: float = 0.0, decay: str = "all"):
        self._source = params
        if hasattr(params, "plan") and hasattr(params, "params"):
            shapes = {k: tuple(v) for k, v in params.plan.params.items()}
        elif isinstance(params, dict):
            shapes = {k: tuple(v.shape) for k, v in params.items()}
        else:
            raise TypeError(f"expected a Model or a dict of arrays, got {type(params).__name__}")
        if decay not in DECAY_CHOICES:
            raise ValueError(f"decay must be one of {', '.join(DECAY_CHOICES)}, got {decay!r}")
        self.shapes = shapes
        self.lr = _check("lr", lr, 0.0)
        self.weight_decay = _check("weight_decay", weight_decay, 0.0)
        self.decay = decay
        self.decayed = {k for k, s in shapes.items() if decay == "all" or len(s) >= 2}
        self.counts = {k: 0 for k in shapes}  # steps taken per parameter, as PyTorch keeps
        self.slots = {name: {} for name in self.slot_names}

    # ---- stepping -------------------------------------------------------------------------
    def _params(self) -> dict:
        if isinstance(self._source, dict):
            return self._source
        return self._source.params

    def step(self, grads: dict | None = None) -> None:
        """One update of every trainable parameter that has a gradient (a missing or None
        gradient skips that parameter, as PyTorch skips ``grad is None``)."""
        if grads is None:
            if isinstance(self._source, dict):
                raise TypeError("step() needs the gradients when the optimizer was given a dict")
            grads = self._source.grads
        params = self._params()
        for key in self.shapes:
            g = grads.get(key)
            if g is None:
                continue
            self.counts[key] += 1
            wd = self.weight_decay if key in self.decayed else 0.0
            self._update(key, params[key], g, wd)
        changed = getattr(self._source, "mark_changed", None)
        if changed is not None:
            changed()  # a Model refolds its batchnorms before the next inference

    def _update(self, key, p, g, wd):  # pragma: no cover - each optimizer defines it
        raise NotImplementedError

    # ---- state ----------------------------------------------------------------------------
    def hyper(self) -> dict:
        """The hyperparameters, as keyword arguments of the constructor."""
        return {"lr": self.lr, "weight_decay": self.weight_decay, "decay": self.decay}

    def state_dict(self) -> dict:
        return {
            "kind": self.kind,
            "hyper": self.hyper(),
            "counts": dict(self.counts),
            "slots": {name: {k: _to_numpy(v) for k, v in arrays.items()}
                      for name, arrays in self.slots.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Take back a ``state_dict()``; checks everything before changing anything."""
        if state.get("kind") != self.kind:
            raise OptimizerStateError(f"saved optimizer is {state.get('kind')!r}, this one is "
                                      f"{self.kind!r}")
        counts = state.get("counts", {})
        problems = [f"no step count for {k}" for k in self.shapes if k not in counts]
        problems += [f"step count for unknown parameter {k}" for k in counts
                     if k not in self.shapes]
        slots = state.get("slots", {})
        for name in self.slot_names:
            for key, arr in slots.get(name, {}).items():
                if key not in self.shapes:
                    problems.append(f"{name} for unknown parameter {key}")
                elif tuple(arr.shape) != self.shapes[key]:
                    problems.append(f"{name} of {key} has shape {list(arr.shape)}, expected "
                                    f"{list(self.shapes[key])}")
        if problems:
            raise OptimizerStateError("saved optimizer state does not fit:\n  "
                                      + "\n  ".join(problems))
        hyper = dict(state.get("hyper", {}))
        fresh = type(self)(self._source, **hyper)  # validates every hyperparameter
        params = self._params()
        self.__dict__.update({k: v for k, v in fresh.__dict__.items()
                              if k not in ("_source", "slots", "counts")})
        self.counts = {k: int(counts[k]) for k in self.shapes}
        self.slots = {name: {} for name in self.slot_names}
        for name in self.slot_names:
            for key, arr in slots.get(name, {}).items():
                p = params[key]
                xp = get_array_module(p)
                self.slots[name][key] = xp.array(arr, dtype=p.dtype)


# ---- the updates compiled (numba, where ops/fast.py's kernels run) ------------------------
# One pass over each parameter where NumPy's expressions make five to nine, each with a
# temporary: the digits example's Adam step took 0.47 ms of its 10.6 ms training step (12
# small arrays, about 40 NumPy calls), ResNet-18's SGD step 26-31 ms of 1.2 s. The same
# operations in the same order in the parameter's dtype, scalars rounded to it first as
# NumPy rounds a Python float meeting a float32 array; no contraction into fused
# multiply-adds (numba's default), so the results are NumPy's to the bit.
_KERNELS = []  # [(sgd, adam)] once built


def _compiled(*arrays):
    """The compiled ``(sgd, adam)`` updates where they take these arrays (numba installed
    and on, NumPy float32 or float64 arrays of one dtype, each contiguous and writable);
    else None, and NumPy's expressions run: also where NumPy is asked to raise on a
    floating-point error (``np.errstate``), which compiled loops do not report."""
    from ..ops import fast

    if not fast.usable(*arrays) or not all(a.flags.c_contiguous and a.flags.writeable
                                           for a in arrays):
        return None
    if "raise" in np.geterr().values():
        return None
    if not _KERNELS:
        _KERNELS.append(_build(fast))
    return _KERNELS[0]


def _flat(*arrays):
    return [a.reshape(-1) for a in arrays]


def _scalars(dtype, *values):
    return [dtype.type(v) for v in values]


def _build(fast):
    jit = fast.jit(fastmath=())

    @jit
    def sgd(p, g, buf, wd, momentum, keep, lr, decay, has_momentum, damped, nesterov):
        for i in range(p.shape[0]):
            d = g[i] + wd * p[i] if decay else g[i]
            if has_momentum:
                b = buf[i] * momentum
                b = b + keep * d if damped else b + d
                buf[i] = b
                d = d + momentum * b if nesterov else b
            p[i] = p[i] - lr * d

    @jit
    def adam(p, g, m, v, rest1, beta2, rest2, root2, eps, step):
        for i in range(p.shape[0]):
            gi = g[i]
            mi = m[i] + rest1 * (gi - m[i])
            vi = v[i] * beta2
            vi = vi + rest2 * (gi * gi)
            m[i] = mi
            v[i] = vi
            denom = np.sqrt(vi) / root2 + eps
            p[i] = p[i] - step * (mi / denom)

    return sgd, adam


class SGD(Optimizer):
    """Stochastic gradient descent as ``torch.optim.SGD``:

        g = grad + weight_decay * p
        buf = g (first step), else momentum * buf + (1 - dampening) * g
        g = g + momentum * buf if nesterov else buf            (when momentum > 0)
        p = p - lr * g
    """

    kind = "sgd"
    slot_names = ("momentum_buffer",)

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, decay: str = "all"):
        super().__init__(params, lr=lr, weight_decay=weight_decay, decay=decay)
        self.momentum = _check("momentum", momentum, 0.0)
        self.dampening = _check("dampening", dampening, 0.0)
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening = 0, got "
                             f"momentum={self.momentum}, dampening={self.dampening}")

    def hyper(self) -> dict:
        return {**super().hyper(), "momentum": self.momentum, "dampening": self.dampening,
                "nesterov": self.nesterov}

    def _update(self, key, p, g, wd):
        buffers = self.slots["momentum_buffer"]
        # the same arithmetic in one pass (a first step with momentum makes its buffer)
        buf = buffers.get(key, p) if self.momentum else p  # (p: not read without momentum)
        kernels = _compiled(p, g, buf)
        if kernels is not None and (not self.momentum or key in buffers):
            kernels[0](*_flat(p, g, buf), *_scalars(
                p.dtype, wd, self.momentum, 1.0 - self.dampening, self.lr),
                bool(wd), bool(self.momentum), bool(self.dampening), self.nesterov)
            return
        d = g + wd * p if wd else g
        if self.momentum:
            buf = buffers.get(key)
            if buf is None:
                buf = buffers[key] = d.astype(p.dtype, copy=True)
            else:
                buf *= self.momentum
                buf += (1.0 - self.dampening) * d if self.dampening else d
            d = d + self.momentum * buf if self.nesterov else buf
        p -= self.lr * d


class Adam(Optimizer):
    """Adam as ``torch.optim.Adam`` (no amsgrad). With ``t`` this parameter's step count:

        g = grad + weight_decay * p                            (L2 decay, in the gradient)
        m = m + (1 - beta1) * (g - m);   v = beta2 * v + (1 - beta2) * g * g
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    """

    kind = "adam"
    slot_names = ("exp_avg", "exp_avg_sq")
    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decay: str = "all"):
        super().__init__(params, lr=lr, weight_decay=weight_decay, decay=decay)
        beta1, beta2 = betas
        self.betas = (_check("beta1", beta1, 0.0, 1.0), _check("beta2", beta2, 0.0, 1.0))
        self.eps = _check("eps", eps, 0.0)

    def hyper(self) -> dict:
        return {**super().hyper(), "betas": list(self.betas), "eps": self.eps}

    def _update(self, key, p, g, wd):
        beta1, beta2 = self.betas
        if wd:
            if self.decoupled:
                p *= 1.0 - self.lr * wd
            else:
                g = g + wd * p
        xp = get_array_module(p)
        m = self.slots["exp_avg"].get(key)
        if m is None:
            m = self.slots["exp_avg"][key] = xp.zeros_like(p)
            self.slots["exp_avg_sq"][key] = xp.zeros_like(p)
        v = self.slots["exp_avg_sq"][key]
        t = self.counts[key]
        kernels = _compiled(p, g, m, v)
        if kernels is not None:  # the same arithmetic in one pass
            kernels[1](*_flat(p, g, m, v), *_scalars(
                p.dtype, 1.0 - beta1, beta2, 1.0 - beta2, math.sqrt(1.0 - beta2 ** t),
                self.eps, self.lr / (1.0 - beta1 ** t)))
            return
        m += (1.0 - beta1) * (g - m)
        v *= beta2
        v += (1.0 - beta2) * (g * g)
        t = self.counts[key]
        step_size = self.lr / (1.0 - beta1 ** t)
        denom = xp.sqrt(v)
        denom /= math.sqrt(1.0 - beta2 ** t)
        denom += self.eps
        p -= step_size * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay, as ``torch.optim.AdamW``: before the Adam step,
    ``p = p * (1 - lr * weight_decay)``; the gradient itself is not changed."""

    kind = "adamw"
    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, decay: str = "all"):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         decay=decay)


OPTIMIZERS = {cls.kind: cls for cls in (SGD, Adam, AdamW)}


def make_optimizer(kind: str, params, **hyper) -> Optimizer:
    try:
        cls = OPTIMIZERS[kind]
    except KeyError:
        raise ValueError(f"unknown optimizer {kind!r}; expected one of "
                         f"{', '.join(OPTIMIZERS)}") from None
    return cls(params, **hyper)


# ---- learning-rate schedules ------------------------------------------------------------------

SCHEDULES = ("constant", "step", "cosine")


class Schedule:
    """A per-epoch learning rate, ``lr_at(epoch)`` for epoch 0, 1, 2, ... (set it before the
    epoch runs; this is what PyTorch gives by calling ``scheduler.step()`` after each epoch).

    - ``constant``: ``base_lr`` throughout.
    - ``step``: ``base_lr * gamma ** (epoch // step_size)``, as ``torch.optim.lr_scheduler.StepLR``.
    - ``cosine``: ``eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / t_max)) / 2``, as
      ``CosineAnnealingLR``; it reaches ``eta_min`` at ``t_max`` and, like PyTorch's, climbs
      back after it.
    - ``warmup = w`` (any kind): epochs ``0 .. w-1`` run at ``lr_at_main(0) * (e + 1) / (w + 1)``,
      rising linearly; the main schedule then starts at epoch ``w`` as if it were its epoch 0.
    """

    def __init__(self, base_lr: float, kind: str = "constant", *, step_size: int = 30,
                 gamma: float = 0.1, t_max: int = 10, eta_min: float = 0.0, warmup: int = 0):
        if kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {kind!r}; expected one of {', '.join(SCHEDULES)}")
        self.base_lr = _check("lr", base_lr, 0.0)
        self.kind = kind
        self.step_size = int(step_size)
        self.gamma = _check("gamma", gamma, 0.0)
        self.t_max = int(t_max)
        self.eta_min = _check("eta_min", eta_min, 0.0)
        self.warmup = int(warmup)
        if self.step_size < 1:
            raise ValueError(f"step_size must be >= 1, got {self.step_size}")
        if self.t_max < 1:
            raise ValueError(f"t_max must be >= 1, got {self.t_max}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")

    def _main(self, epoch: int) -> float:
        if self.kind == "step":
            return self.base_lr * self.gamma ** (epoch // self.step_size)
        if self.kind == "cosine":
            cos = math.cos(math.pi * epoch / self.t_max)
            return self.eta_min + (self.base_lr - self.eta_min) * (1.0 + cos) / 2.0
        return self.base_lr

    def lr_at(self, epoch: int) -> float:
        if epoch < self.warmup:
            return self._main(0) * (epoch + 1) / (self.warmup + 1)
        return self._main(epoch - self.warmup)

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr, "kind": self.kind, "step_size": self.step_size,
                "gamma": self.gamma, "t_max": self.t_max, "eta_min": self.eta_min,
                "warmup": self.warmup}

    @classmethod
    def from_state_dict(cls, state: dict) -> "Schedule":
        state = dict(state)
        return cls(state.pop("base_lr"), state.pop("kind"), **state)
