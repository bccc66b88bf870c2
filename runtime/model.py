"""A built model: a plan, its parameter arrays, and one backend's kernel table.

    model = Model(plan, backend="numpy", seed=0, dtype="float32")
    y = model(x)               # inference; one output -> an array, several -> a dict
    model.save("w.npz")        # parameters and buffers under the spec's layer names
    model.load("w.npz")        # all-or-nothing: a bad file leaves the model unchanged

    y = model.forward(x, train=True)   # training mode; keeps what backward needs
    dx = model.backward(dy)            # fills model.grads[weight-file key]
"""

from __future__ import annotations

import os

import numpy as np

from ..compiler.plan import Plan
from ..ops import Op
from .backend import Backend, gpu_usable
from .errors import InputError, LayerError, WeightFileError, at_layer
from .files import weight_problems

__all__ = ["InputError", "LayerError", "Model", "WeightFileError", "select_backend"]


def select_backend(name: str) -> Backend:
    """The backend called ``name``: "numpy", "cupy", or "auto" (CuPy when a CUDA device is
    usable, else NumPy)."""
    if name == "auto":
        name = "cupy" if gpu_usable() else "numpy"
    if name == "numpy":
        from .numpy_backend import make_backend
    elif name == "cupy":
        from .cupy_backend import make_backend
    else:
        raise ValueError(f"unknown backend {name!r}; expected 'auto', 'numpy' or 'cupy'")
    return make_backend()


class Model:
    def __init__(self, plan: Plan, backend: str = "auto", seed: int = 0, dtype="float32"):
        self.plan = plan
        self.backend = select_backend(backend)
        self.xp = self.backend.xp
        self.kernels = self.backend.kernels
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self.params = self._init(seed)
        self.grads: dict = {}
        self._tape = None  # what the last forward(...) kept for backward
        # Dropout masks in training; its state is part of a training checkpoint.
        self.rng = self.xp.random.default_rng(seed)
        self._executor = None

    @property
    def executor(self):
        """The inference executor over the memory plan (built on first use)."""
        if self._executor is None:
            from ..compiler.memory import plan_memory
            from .executor import Executor

            self._executor = Executor(plan_memory(self.plan), self.backend, self.dtype)
        return self._executor

    def mark_changed(self) -> None:
        """Tell the model its parameter arrays were changed in place (optimizers call this):
        inference then refolds batchnorms into the convolutions before them."""
        if self._executor is not None:
            self._executor.invalidate()

    # ---- parameters ---------------------------------------------------------------------
    def _init(self, seed: int) -> dict:
        """PyTorch's default initialisation: weights and biases U(-1/sqrt(fan_in), +)."""
        rng = np.random.default_rng(seed)
        out = {}
        shapes = dict(self.plan.params)
        shapes.update(self.plan.buffers)
        for key, shape in shapes.items():
            rule = self.plan.initial[key]
            if rule == "ones":
                value = np.ones(shape)
            elif rule == "zeros":
                value = np.zeros(shape)
            elif rule not in ("kaiming_uniform", "fan_in_uniform"):
                value = np.full(shape, float(rule))  # a constant, e.g. prelu's 0.25
            else:
                weight_shape = shapes[key.rsplit(".", 1)[0] + ".weight"]
                fan_in = int(np.prod(weight_shape[1:]))
                bound = 1.0 / np.sqrt(fan_in)
                value = rng.uniform(-bound, bound, size=shape)
            out[key] = self.xp.asarray(value, dtype=self.dtype)
        return out

    def state(self) -> dict:
        """A copy of every parameter and buffer as a NumPy array, keyed by weight-file name
        (later training does not change it)."""
        if self.backend.on_device:
            return self._host()
        return {k: v.copy() for k, v in self.params.items()}

    def _host(self) -> dict:
        """Parameters and buffers on the host, without a copy where they already are."""
        return {k: self.backend.to_host(v) for k, v in self.params.items()}

    def save(self, path) -> None:
        """Write parameters and buffers to an .npz file, atomically."""
        from .files import write_atomically

        state = self._host()
        write_atomically(path, lambda f: np.savez(f, **state))

    def export(self, path=None, opset: int = 17):
        """The model as ONNX (runtime/onnx_export.py), written atomically when ``path`` is
        given; returns the ``onnx.ModelProto``. Needs the ``onnx`` package."""
        from .onnx_export import export

        return export(self.plan, self._host(), path, opset)

    def load(self, path) -> None:
        """Read an .npz weight file. Every missing, extra or mis-shaped entry is listed; on
        any problem the model keeps its current weights."""
        from .files import read_npz

        path = os.fspath(path)
        try:
            arrays = read_npz(path)
        except ValueError as err:
            raise WeightFileError(f"cannot read weight file {path}: {err}") from None
        expected = {k: tuple(v.shape) for k, v in self.params.items()}
        problems = weight_problems(expected, arrays)
        if problems:
            raise WeightFileError(f"weight file {path} does not fit network "
                                  f"{self.plan.network}:\n  " + "\n  ".join(problems))
        self.params = {k: self.xp.asarray(arrays[k], dtype=self.dtype) for k in expected}
        self.mark_changed()

    # ---- inference ----------------------------------------------------------------------
    def _inputs(self, x) -> dict:
        names = list(self.plan.inputs)
        if not isinstance(x, dict):
            if len(names) != 1:
                raise InputError(f"network {self.plan.network} has inputs {', '.join(names)}; "
                                 "pass a dict name -> array")
            x = {names[0]: x}
        unknown = sorted(set(x) - set(names))
        missing = [n for n in names if n not in x]
        if unknown or missing:
            raise InputError(f"inputs given: {sorted(x)}; the network takes {names}")
        out = {}
        for name in names:
            arr = self._on_device(x[name], name)
            want = self.plan.inputs[name]
            if arr.ndim != len(want) + 1 or tuple(arr.shape[1:]) != tuple(want):
                dims = ", ".join(str(d) for d in want)
                raise InputError(f"input `{name}` expects [N, {dims}], got "
                                 f"{list(arr.shape)}")
            out[name] = arr
        batches = {name: int(a.shape[0]) for name, a in out.items()}
        if len(set(batches.values())) > 1:
            sizes = ", ".join(f"{name} has {n}" for name, n in batches.items())
            raise InputError(f"inputs must share one batch size: {sizes}")
        return out

    def _on_device(self, value, name):
        """``value`` as an array of the model's dtype on the model's device: a CuPy array
        given to a NumPy model is copied to the host, a NumPy array given to a CuPy model
        to the GPU."""
        try:
            return self.backend.asarray(value, self.dtype)
        except (TypeError, ValueError) as err:
            raise InputError(f"input `{name}` is not a numeric array: {err}") from None

    def __call__(self, x):
        """Inference: the memory-planned, fused schedule (see compiler/memory.py)."""
        return _one_or_dict(self.executor.run(self._inputs(x), self.params))

    def interpret(self, x):
        """Inference step by step over the plan, every layer output kept: no fusion, no
        buffer reuse. The reference the planned schedule is tested against."""
        values = self._inputs(x)
        for step in self.plan.steps:
            kernel = self.kernels[step.op]
            args = [values[i] for i in step.inputs] + [self.params[p] for p in step.params]
            try:
                values[step.name] = kernel(*args, **step.attrs)
            except ValueError as err:
                raise at_layer(step, self.plan.file, err) from err
        outputs = {name: values[buf] for name, buf in self.plan.outputs.items()}
        return _one_or_dict(outputs)

    # ---- training -----------------------------------------------------------------------
    def forward(self, x, train: bool = True, logits: bool = False):
        """Run the network and keep what `backward` needs.

        ``train=True`` is training mode: batchnorm normalises with the batch's statistics and
        updates its running ones, dropout draws a fresh mask. ``train=False`` computes what
        ``model(x)`` computes, still differentiably. With ``logits=True``, an output made by
        a final softmax comes back as that softmax's input, for a fused softmax
        cross-entropy loss; `backward` then takes the gradient with respect to it.
        """
        table = self.backend.grads
        values = self._inputs(x)
        self._tape = None
        self.mark_changed()  # batchnorm's running statistics move in training
        tape = []
        for step in self.plan.steps:
            forward, _ = table[step.op]
            args = [values[i] for i in step.inputs] + [self.params[p] for p in step.params]
            try:
                values[step.name], saved = forward(*args, train=train, rng=self.rng,
                                                   **step.attrs)
            except ValueError as err:
                raise at_layer(step, self.plan.file, err) from err
            tape.append((step, saved))
        heads = self._heads(logits)
        outputs = {name: values[buf] for name, buf in heads.items()}
        self._tape = (tape, heads, {name: values[name].shape for name in values})
        return _one_or_dict(outputs)

    def saved_bytes(self) -> int:
        """Bytes that the last `forward` keeps for `backward`: every distinct array in the
        tape, counted once however many steps refer to it; parameters excluded."""
        if self._tape is None:
            return 0
        params = {id(_root(a)) for a in self.params.values()}
        seen: dict = {}
        stack = [saved for _, saved in self._tape[0]]
        while stack:
            item = stack.pop()
            if isinstance(item, (tuple, list)):
                stack.extend(item)
            elif isinstance(item, dict):
                stack.extend(item.values())
            elif hasattr(item, "nbytes") and hasattr(item, "shape"):
                root = _root(item)
                if id(root) not in params:
                    seen[id(root)] = int(root.nbytes)
        return sum(seen.values())

    def _heads(self, logits: bool) -> dict:
        """Output name -> the buffer it is read from (the softmax's input with ``logits``)."""
        if not logits:
            return dict(self.plan.outputs)
        made_by = {step.name: step for step in self.plan.steps}
        heads = {}
        for name, buf in self.plan.outputs.items():
            step = made_by.get(buf)
            heads[name] = step.inputs[0] if step is not None and step.op is Op.SOFTMAX else buf
        return heads

    def backward(self, dy):
        """Back-propagate ``dy`` (the loss's gradient with respect to the output, or a dict
        output name -> gradient) through the last `forward`.

        Fills ``grads`` with the gradient of every trainable parameter (zeros for those the
        outputs do not depend on) and returns the gradient with respect to the input (a dict
        when the network has several inputs). Each call replaces the previous gradients.
        """
        if self._tape is None:
            raise RuntimeError("backward() needs a forward(x) first (model(x) keeps nothing)")
        tape, heads, shapes = self._tape
        table = self.backend.grads
        if not isinstance(dy, dict):
            if len(heads) != 1:
                raise InputError(f"network {self.plan.network} has outputs "
                                 f"{', '.join(heads)}; pass a dict name -> gradient")
            dy = {next(iter(heads)): dy}
        unknown = sorted(set(dy) - set(heads))
        if unknown:
            raise InputError(f"gradients given for {unknown}; the outputs are {list(heads)}")
        flowing: dict = {}  # buffer name -> gradient of the loss with respect to it
        for name, g in dy.items():
            buf = heads[name]
            g = self.xp.asarray(g, dtype=self.dtype)
            if tuple(g.shape) != tuple(shapes[buf]):
                raise InputError(f"gradient for output `{name}` must have shape "
                                 f"{list(shapes[buf])}, got {list(g.shape)}")
            _accumulate(flowing, buf, g)
        grads = {}
        for step, saved in reversed(tape):
            g = flowing.pop(step.name, None)
            if g is None:
                continue  # nothing downstream of this step reaches an output
            _, backward = table[step.op]
            try:
                dinputs, dparams = backward(saved, g)
            except ValueError as err:
                raise at_layer(step, self.plan.file, err) from err
            for name, d in zip(step.inputs, dinputs):
                _accumulate(flowing, name, d)
            for key, d in zip(step.params, dparams):
                if d is not None:
                    grads[key] = d
        for key, shape in self.plan.params.items():
            if key not in grads:
                grads[key] = self.xp.zeros(shape, dtype=self.dtype)
        self.grads = grads
        self._tape = None
        dx = {name: flowing.get(name, self.xp.zeros(shapes[name], dtype=self.dtype))
              for name in self.plan.inputs}
        return _one_or_dict(dx)


def _root(a):
    """The array that owns ``a``'s memory."""
    while getattr(a, "base", None) is not None and hasattr(a.base, "nbytes"):
        a = a.base
    return a


def _accumulate(flowing: dict, name: str, g) -> None:
    if name in flowing:
        flowing[name] = flowing[name] + g  # never in place: g may be another op's array
    else:
        flowing[name] = g


def _one_or_dict(values: dict):
    if len(values) == 1:
        return next(iter(values.values()))
    return values
