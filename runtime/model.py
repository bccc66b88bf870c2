"""A built model: a plan, its parameter arrays, and one backend's kernel table.

    model = Model(plan, backend="numpy", seed=0, dtype="float32")
    y = model(x)               # inference; one output -> an array, several -> a dict
    model.save("w.npz")        # parameters and buffers under the spec's layer names
    model.load("w.npz")        # all-or-nothing: a bad file leaves the model unchanged

    y = model.forward(x, train=True)   # training mode; keeps what backward needs
    dx = model.backward(dy)            # fills model.grads[weight-file key]
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..compiler.plan import Plan
from ..ops import Op, primitive
from . import files
from .backend import Backend, gpu_usable
from .errors import InputError, LayerError, WeightFileError, at_layer
from .files import format_bytes

__all__ = ["InputError", "LayerError", "Model", "TooLargeError", "WeightFileError",
           "estimate_saved_bytes", "require_memory", "select_backend"]

_DRAW_CHUNK = 1 << 20  # values drawn at a time by the default initialisation


class TooLargeError(MemoryError):
    """A model, or a run of it, that needs more memory than is available; raised by
    `require_memory` before anything is allocated. The message names what needs the
    memory, the largest layer, the size and the memory available (``needed`` and
    ``available``, in bytes)."""

    def __init__(self, message: str, needed: int, available: int):
        super().__init__(message)
        self.needed = needed
        self.available = available


def select_backend(name: str) -> Backend:
    """The backend called ``name``: "numpy", "cupy", or "auto" (CuPy when a CUDA device is
    usable, else NumPy). "onnxruntime" keeps its arrays in NumPy; its `Model` runs
    inference in ONNX Runtime (runtime/ort_backend.py)."""
    if name == "auto":
        name = "cupy" if gpu_usable() else "numpy"
    if name in ("numpy", "onnxruntime"):  # onnxruntime keeps its parameters in NumPy
        from .numpy_backend import make_backend
    elif name == "cupy":
        from .cupy_backend import make_backend
    else:
        raise ValueError(f"unknown backend {name!r}; expected 'auto', 'numpy', 'cupy' or "
                         "'onnxruntime'")
    backend = make_backend()
    if name == "onnxruntime":
        import dataclasses

        backend = dataclasses.replace(backend, name="onnxruntime")
    return backend


class Model:
    def __init__(self, plan: Plan, backend: str = "auto", seed: int = 0, dtype="float32",
                 threads=None):
        from . import threads as threads_

        self.plan = plan
        # threads for the CPU kernels: an int >= 1, "auto", or None (CNNC_NUM_THREADS, else
        # automatic: the cores other processes leave free; runtime/threads.py)
        self.threads = threads_.parse(threads, "threads")
        self.backend = select_backend(backend)
        self.xp = self.backend.xp
        self.kernels = self.backend.kernels
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        require_memory(plan, f"building network {plan.network}",
                       [("parameters", param_bytes(plan, self.dtype))], self.dtype,
                       on_device=self.backend.on_device)
        self.params = self._init(seed)
        self.grads: dict = {}
        self._executor = None
        if self.backend.name == "onnxruntime":
            _ = self.executor  # refuses now: no onnxruntime, or a dtype it does not run
        self._tape = None  # what the last forward(...) kept for backward
        self._free = None  # buffers whose gradient no parameter needs (_grad_free)
        self._share_cache = None  # ((batch, cores), the training steps' shares: _shares)
        self._last = None  # per step, the buffers read for the last time (_last_readers)
        # Dropout masks in training; its state is part of a training checkpoint.
        self.rng = self.xp.random.default_rng(seed)

    @property
    def executor(self):
        """The inference executor over the memory plan (built on first use)."""
        if self._executor is None and self.backend.name == "onnxruntime":
            from .ort_backend import OrtInference

            self._executor = OrtInference(self.plan, self.dtype)
        if self._executor is None:
            from ..compiler.memory import plan_memory
            from .executor import Executor

            eplan = plan_memory(self.plan, input_gates=not self.backend.on_device)
            self._executor = Executor(eplan, self.backend, self.dtype, threads=self.threads)
        return self._executor

    def mark_changed(self) -> None:
        """Tell the model its parameter arrays were changed in place (optimizers, `load`
        and a restored checkpoint call this): inference then refolds batchnorms into the
        convolutions before them and remakes what its kernels derived from the weights
        (the Winograd transforms of the 3x3 convolutions, the 1x1 tiles' packed weights),
        which it otherwise keeps from call to call."""
        if self._executor is not None:
            self._executor.invalidate()

    # ---- parameters ---------------------------------------------------------------------
    def _init(self, seed: int) -> dict:
        """PyTorch's default initialisation: weights and biases U(-1/sqrt(fan_in), +).

        Each array is made in the model's dtype, one at a time: the uniform draws come in
        float64 (so the values are those of one float64 draw of the whole array, rounded),
        a million at a time, so building never holds more than the model and one chunk."""
        rng = np.random.default_rng(seed)
        out = {}
        shapes = dict(self.plan.params)
        shapes.update(self.plan.buffers)
        xp, dtype = self.xp, self.dtype
        for key, shape in shapes.items():
            rule = self.plan.initial[key]
            if rule == "ones":
                out[key] = xp.ones(shape, dtype=dtype)
            elif rule == "zeros":
                out[key] = xp.zeros(shape, dtype=dtype)
            elif rule not in ("kaiming_uniform", "fan_in_uniform"):
                out[key] = xp.full(shape, float(rule), dtype=dtype)  # e.g. prelu's 0.25
            else:
                weight_shape = shapes[key.rsplit(".", 1)[0] + ".weight"]
                fan_in = math.prod(int(d) for d in weight_shape[1:])
                bound = 1.0 / np.sqrt(fan_in)
                out[key] = xp.asarray(_uniform(rng, bound, shape, dtype))
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
        """Write parameters and buffers atomically, in the format the extension names:
        ``.safetensors``, ``.pt``/``.pth`` (a PyTorch state_dict), else an .npz."""
        files.write_weights(path, self._host())

    def export(self, path=None, opset: int = 17):
        """The model as ONNX (runtime/onnx_export.py), written atomically when ``path`` is
        given; returns the ``onnx.ModelProto``. Needs the ``onnx`` package."""
        from .onnx_export import export

        return export(self.plan, self._host(), path, opset)

    def load(self, path, by: str = "auto"):
        """Read a weight file: cnnc's .npz, a .safetensors file or a PyTorch checkpoint
        (``.pt``/``.pth``, tensors only). Arrays are matched to the network's keys by name,
        else by structure (``by``: "auto", "name" or "structure"; see interop/weights.py).
        Returns the `Mapping` used (``mapping.describe()`` prints it). Every problem is
        listed in a `WeightFileError`; on any problem the model keeps its current weights."""
        from ..interop.weights import MappingError, match

        path = os.fspath(path)
        expected = {k: tuple(v.shape) for k, v in self.params.items()}
        try:
            with files.open_weights(path) as source:  # every header checked, no data read
                try:
                    mapping = match(expected, weight_groups(self.plan), source.members,
                                    self.plan.network, by)
                except MappingError as err:
                    raise WeightFileError(f"weight file {path} {err}") from None
                arrays = source.read([theirs for _, theirs, _ in mapping.pairs])
        except files.ArrayFileError as err:
            raise WeightFileError(f"cannot read weight file {path}: {err}") from None
        params = {}
        for ours, theirs, _ in mapping.pairs:
            params[ours] = self.xp.asarray(finite_as(arrays.pop(theirs), self.dtype,
                                                     f"weight file {path}: `{theirs}`",
                                                     WeightFileError))
        self.params = {key: params[key] for key in expected}  # the model's own order
        self.mark_changed()
        return mapping

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

    def _repr_html_(self):
        """The plan's steps, parameter count, dtype and backend, and its picture, in a
        notebook (compiler/display.py)."""
        from ..compiler.display import model_html

        return model_html(self)

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
    def _thread_limit(self):
        """The CPU kernels' thread count for one call (nothing to set on a GPU)."""
        import contextlib

        from . import threads as threads_

        if self.backend.on_device:
            return contextlib.nullcontext()
        from ..ops import fast  # noqa: F401 - loaded first, so the count reaches its kernels

        return threads_.limit(self.threads)

    def forward(self, x, train: bool = True, logits: bool = False):
        """Run the network and keep what `backward` needs.

        ``train=True`` is training mode: batchnorm normalises with the batch's statistics and
        updates its running ones, dropout draws a fresh mask. ``train=False`` computes what
        ``model(x)`` computes, still differentiably. With ``logits=True``, an output made by
        a final softmax comes back as that softmax's input, for a fused softmax
        cross-entropy loss; `backward` then takes the gradient with respect to it.
        """
        with self._thread_limit() as count:
            return self._forward(x, train, logits, count or 1)

    def _forward(self, x, train: bool, logits: bool, threads: int = 1):
        if self.backend.name == "onnxruntime":
            from .ort_backend import TRAINING_REFUSED

            raise RuntimeError(TRAINING_REFUSED)
        values = self._inputs(x)
        self._tape = None
        self.mark_changed()  # batchnorm's running statistics move in training
        shares = self._shares(next(iter(values.values())).shape[0])
        heads = self._heads(logits)
        shapes = {name: a.shape for name, a in values.items()}
        with _blas_for(shares):
            tape = self._run_forward(values, shapes, set(heads.values()), train, shares,
                                     threads)
        outputs = {name: values[buf] for name, buf in heads.items()}
        self._tape = (tape, heads, shapes, bool(shares))
        return _one_or_dict(outputs)

    def _last_readers(self) -> list:
        """For each step, the buffers no later step reads (`_run_forward` lets them go)."""
        if self._last is None:
            last = {}
            for i, step in enumerate(self.plan.steps):
                for name in step.inputs:
                    last[name] = i
            self._last = [[] for _ in self.plan.steps]
            for name, i in last.items():
                if name not in self.plan.inputs:
                    self._last[i].append(name)
        return self._last

    def _run_forward(self, values: dict, shapes: dict, heads: set, train: bool,
                     shares: dict, threads: int) -> list:
        """Each step's training forward, its output into ``values`` and its shape into
        ``shapes``; the tape of what each keeps. A buffer that no later step reads leaves
        ``values`` (unless an output): what a backward needs is in the tape, and the rest
        would hold every map of the network until the end of the pass (ResNet-18 at batch
        8: a peak of 383 MiB for the 151 the tape keeps)."""
        table = self.backend.grads
        tape = []
        done = self._last_readers()
        for i, step in enumerate(self.plan.steps):
            forward, _ = table[step.op]
            args = [values[i] for i in step.inputs] + [self.params[p] for p in step.params]
            try:
                bounds = shares.get(step.name)
                if bounds is None:
                    values[step.name], saved = forward(*args, train=train, rng=self.rng,
                                                       **step.attrs)
                else:
                    values[step.name], saved = _forward_in_shares(
                        forward, args, len(step.inputs), bounds, threads, self.xp,
                        dict(step.attrs, train=train, rng=self.rng))
            except ValueError as err:
                raise at_layer(step, self.plan.file, err) from err
            shapes[step.name] = values[step.name].shape
            tape.append((step, saved))
            for name in done[i]:
                if name not in heads:
                    del values[name]
        return tape

    def saved_bytes(self) -> int:
        """Bytes that the last `forward` keeps for `backward`: every distinct array in the
        tape, counted once however many steps refer to it; parameters excluded."""
        if self._tape is None:
            return 0
        params = {id(_root(a)) for a in self.params.values()}
        seen: dict = {}
        for item in arrays_in([saved for _, saved in self._tape[0]]):
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

    def backward(self, dy, input_grad: bool = True):
        """Back-propagate ``dy`` (the loss's gradient with respect to the output, or a dict
        output name -> gradient) through the last `forward`.

        Fills ``grads`` with the gradient of every trainable parameter (zeros for those the
        outputs do not depend on) and returns the gradient with respect to the input (a dict
        when the network has several inputs). Each call replaces the previous gradients.

        With ``input_grad=False`` (training: nothing uses the image's gradient) it returns
        None, and the convolutions that only the inputs feed compute their weights'
        gradients alone (a GEMM convolution skips half its backward pass; a depthwise one
        computes the input's in the same loops and drops it).
        """
        with self._thread_limit() as count:
            return self._backward(dy, input_grad, count or 1)

    def _shares(self, n: int) -> dict:
        """Where a training call cuts the batch of ``n`` images into shares: step name ->
        ``[0, ..., n]``, for the steps whose training pair treats each image alone
        (``Primitive.per_image``: the convolutions), as many shares as the process has
        usable cores (and images), each with at least ``SHARE_MIN_VALUES`` input values.
        Empty: every step runs whole. The threads of a call take the shares in turn
        (`_on_threads`): the BLAS threads of one product wait for each other at every
        barrier and the compiled transforms between the products ran on one thread; a share
        of the images a thread took a ResNet-18 SGD step (batch 8, two threads) in about 0.8
        of the time (docs/performance.md). The shares follow the machine, never the thread
        count of the call (``auto`` moves with the load), so a step computes the same at any
        count: the same products on the same images, summed in the same order."""
        if n < 2 or not self.backend.per_image:
            return {}
        from .threads import usable_cores

        key = (n, usable_cores(max_age=1.0))
        if self._share_cache is None or self._share_cache[0] != key:
            shapes = dict(self.plan.inputs)
            shapes.update((step.name, step.shape) for step in self.plan.steps)
            shares = {}
            for step in self.plan.steps:
                if step.op not in self.backend.per_image:
                    continue
                values = n * math.prod(shapes[step.inputs[0]])
                count = min(key[1], n, values // SHARE_MIN_VALUES)
                if count >= 2:
                    shares[step.name] = [n * i // count for i in range(count + 1)]
            self._share_cache = (key, shares)
        return self._share_cache[1]

    def _grad_free(self) -> frozenset:
        """The buffers whose gradient no parameter's needs: the inputs, and what layers
        without parameters make from them alone."""
        if self._free is None:
            free = set(self.plan.inputs)
            for step in self.plan.steps:
                if not step.params and all(name in free for name in step.inputs):
                    free.add(step.name)
            self._free = frozenset(free)
        return self._free

    def _backward(self, dy, input_grad=True, threads=1):
        if self._tape is None:
            raise RuntimeError("backward() needs a forward(x) first: model(x) keeps nothing, "
                               "and each backward uses up its forward's tape (an error "
                               "inside one too)")
        tape, heads, shapes, split = self._tape
        with _blas_for(split):
            return self._run_backward(tape, heads, shapes, dy, input_grad, threads)

    def _run_backward(self, tape, heads, shapes, dy, input_grad, threads):
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
        free = frozenset() if input_grad else self._grad_free()
        # the tape is used up: each step's saved arrays go as soon as its backward has run
        # (held to the end, they add up to the forward's whole tape at the last step); the
        # previous gradients go now rather than once the new ones are all there
        self._tape = None
        self.grads = {}
        while tape:
            step, saved = tape.pop()
            g = flowing.pop(step.name, None)
            if g is None or step.name in free:
                continue  # nothing downstream reaches an output, or no gradient is wanted
            _, backward = table[step.op]
            alone = (all(name in free for name in step.inputs)
                     and step.op in self.backend.skips_input_grad)
            options = {"input_grad": False} if alone else {}
            try:
                if isinstance(saved, _Shares):
                    dinputs, dparams = _backward_in_shares(backward, saved, g, threads,
                                                           self.xp, options)
                else:
                    dinputs, dparams = backward(saved, g, **options)
            except ValueError as err:
                raise at_layer(step, self.plan.file, err) from err
            for name, d in zip(step.inputs, dinputs):
                if name not in free:
                    _accumulate(flowing, name, d)
            for key, d in zip(step.params, dparams):
                if d is not None:
                    grads[key] = d
        for key, shape in self.plan.params.items():
            if key not in grads:
                grads[key] = self.xp.zeros(shape, dtype=self.dtype)
        self.grads = grads
        self._tape = None
        if not input_grad:
            return None
        dx = {name: flowing.get(name, self.xp.zeros(shapes[name], dtype=self.dtype))
              for name in self.plan.inputs}
        return _one_or_dict(dx)


def weight_groups(plan) -> list:
    """The plan's layers with parameters or buffers, in order, as ``(name, op, {key:
    shape})``: what a weight file is matched against by structure."""
    shapes = dict(plan.params)
    shapes.update(plan.buffers)
    return [(step.name, step.op.value, {k: tuple(shapes[k]) for k in step.params})
            for step in plan.steps if step.params]


def finite_as(array, dtype, what: str, error=ValueError, noun: str = "weights"):
    """``array`` as a NumPy array of ``dtype``; ``error`` naming ``what`` and the count
    when it holds NaN or infinite values, or values too large for ``dtype``."""
    with np.errstate(all="ignore"):
        out = np.asarray(array, dtype=dtype)
    if out.dtype.kind != "f" or out.size == 0:
        return out
    finite = np.isfinite(out)
    if finite.all():
        return out
    bad = out.size - int(np.count_nonzero(finite))
    source = np.asarray(array)
    if source.dtype.kind == "f":
        nan = int(np.count_nonzero(np.isnan(source)))
        inf = int(np.count_nonzero(np.isinf(source)))
    else:
        nan = inf = 0
    large = bad - nan - inf

    def values(n):
        return f"{n:,} value{'s' if n != 1 else ''}"

    parts = []
    if nan:
        parts.append(f"{nan:,} NaN value{'s' if nan != 1 else ''}")
    if inf:
        parts.append(f"{inf:,} infinite value{'s' if inf != 1 else ''}")
    if large:
        parts.append(f"{values(large)} too large for {np.dtype(dtype)}")
    index = tuple(int(i) for i in np.argwhere(~finite)[0])
    where = f"[{', '.join(map(str, index))}]" if index else "its only element"
    raise error(f"{what} holds {' and '.join(parts)} (the first at {where}, "
                f"{source[index].item()}); cnnc refuses {noun} that are not finite in "
                f"{np.dtype(dtype)}")


def _uniform(rng, bound, shape, dtype) -> np.ndarray:
    """``rng.uniform(-bound, bound, size=shape)`` rounded to ``dtype``, drawn in chunks:
    the same values, without a float64 copy of the whole array."""
    n = math.prod(int(d) for d in shape)
    out = np.empty(n, dtype=dtype)
    for start in range(0, n, _DRAW_CHUNK):
        stop = min(n, start + _DRAW_CHUNK)
        out[start:stop] = rng.uniform(-bound, bound, size=stop - start)
    return out.reshape(shape)


# ---- memory ---------------------------------------------------------------------------------

def param_bytes(plan, dtype, trainable: bool = False) -> int:
    """Bytes of the plan's parameters (and buffers, unless ``trainable``) in ``dtype``."""
    item = np.dtype(dtype).itemsize
    shapes = list(plan.params.values()) + ([] if trainable else list(plan.buffers.values()))
    return sum(math.prod(int(d) for d in s) for s in shapes) * item


def activation_bytes(plan, dtype, batch: int) -> int:
    """Bytes of inference's memory plan at its peak (compiler/memory.py) for ``batch``
    samples in ``dtype``: the arena and the outputs."""
    from ..compiler.memory import plan_memory

    return plan_memory(plan).planned * int(batch) * np.dtype(dtype).itemsize


def available_memory(on_device: bool = False) -> int | None:
    """Bytes free to allocate: host memory (runtime/files.py), or the GPU's free memory
    for a model on the device. None when unknown."""
    if on_device:
        try:
            import cupy

            return int(cupy.cuda.runtime.memGetInfo()[0])
        except Exception:  # no CuPy or no device: nothing to say
            return None
    return files.available_memory()


def require_memory(plan, doing: str, parts: list, dtype="float32", batch: int = 0,
                   on_device: bool = False) -> None:
    """Raise `TooLargeError` when ``parts`` (``(what, bytes)`` pairs, e.g. the parameters
    and the activations of a batch) together exceed the memory available. The message
    says ``doing`` (as in "running network big on a batch of 8"), the total and its parts,
    the memory available and the largest layer: its parameters and, with ``batch``, its
    output for the batch. Nothing is allocated; the plan's sizes are all it reads."""
    needed = sum(int(b) for _, b in parts)
    available = available_memory(on_device)
    if available is None or needed <= available:
        return
    shown = [(what, int(b)) for what, b in parts if b]
    if len(shown) == 1:
        total = f"{format_bytes(needed)} for its {shown[0][0]}"
    else:
        words = format_bytes(needed)  # "about 2^N bytes" past what a float holds
        total = (f"{words if words.startswith('about') else 'about ' + words} ("
                 + ", ".join(f"{format_bytes(b)} of {what}" for what, b in shown) + ")")
    kind = "GPU memory free" if on_device else "memory available"
    message = (f"{doing} in {np.dtype(dtype)} needs {total}, more than the "
               f"{format_bytes(available)} of {kind}")
    layer = _largest_layer(plan, dtype, batch)
    if layer:
        message += f"; the largest layer is {layer}"
    raise TooLargeError(message, needed, available)


def _largest_layer(plan, dtype, batch: int) -> str:
    """``fc1`` (dense at m.cnn:3:40): 98.0 GiB of parameters, ...: the step whose
    parameters and output (for ``batch`` samples) take the most memory."""
    item = np.dtype(dtype).itemsize
    shapes = dict(plan.params)
    shapes.update(plan.buffers)
    best, best_size = None, 0
    for step in plan.steps:
        weights = sum(math.prod(int(d) for d in shapes[k]) for k in step.params
                      if k in shapes) * item
        output = math.prod(int(d) for d in step.shape) * int(batch) * item
        if weights + output > best_size:
            best, best_size = (step, weights, output), weights + output
    if best is None:
        return ""
    step, weights, output = best
    span = getattr(step, "span", None)
    where = f" at {plan.file}:{span.at()}" if span is not None else ""
    sizes = []
    if weights:
        sizes.append(f"{format_bytes(weights)} of parameters")
    if output:
        whom = "one sample" if batch == 1 else f"a batch of {batch}"
        sizes.append(f"{format_bytes(output)} of output for {whom}")
    return f"`{step.name}` ({step.op.value}{where}): {' and '.join(sizes)}"


def estimate_saved_bytes(plan, dtype, batch: int, every_output: bool = False) -> int:
    """Bytes that a training forward (`Model.forward`) keeps for the backward pass on
    ``batch`` samples in ``dtype``, from the plan alone: what `Model.saved_bytes` measures
    after one, each array counted once, parameters excluded. With ``every_output``, also
    every layer output, all of which the forward holds until it returns: its peak."""
    arrays = _training_arrays(plan, np.dtype(dtype), every_output)
    return sum(per_sample * int(batch) + fixed for per_sample, fixed in arrays.values())


def _training_arrays(plan, dtype, every_output: bool) -> dict:
    """What each step's training forward keeps, as its primitive says (``Primitive.keeps``
    in ops/): key -> ``(bytes per sample, bytes independent of the batch)``. A tensor of
    the plan kept by several steps is one entry (``("tensor", root)``)."""
    item = dtype.itemsize
    shape_of = {name: tuple(shape) for name, shape in plan.inputs.items()}
    shape_of.update({step.name: tuple(step.shape) for step in plan.steps})
    size = {name: math.prod(int(d) for d in shape) for name, shape in shape_of.items()}
    root = {name: name for name in shape_of}
    kept: dict = {}

    def tensor(name):
        kept[("tensor", root[name])] = (size[root[name]] * item, 0)

    for step in plan.steps:
        in_shapes = [shape_of[name] for name in step.inputs]
        keeps = primitive(step.op).keeps
        items = keeps(step, in_shapes, item) if keeps is not None else None
        if items == [("alias",)]:
            root[step.name] = root[step.inputs[0]]
            continue
        if every_output:
            tensor(step.name)
        if items is None:  # nothing said: at most its inputs and its output
            items = [("input", i) for i in range(len(step.inputs))] + [("output",)]
        for entry in items:
            if entry[0] == "input":
                tensor(step.inputs[entry[1]])
            elif entry[0] == "output":
                tensor(step.name)
            else:
                _, what, per_sample, fixed = entry
                kept[(step.name, what)] = (per_sample, fixed)
    return kept


def arrays_in(saved) -> list:
    """Every array in what a training forward keeps (tuples, lists and dicts of them, a
    step's shares), repeats included."""
    found, stack = [], [saved]
    while stack:
        item = stack.pop()
        if isinstance(item, (tuple, list)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif hasattr(item, "nbytes") and hasattr(item, "shape"):
            found.append(item)
    return found


def _root(a):
    """The array that owns ``a``'s memory."""
    while getattr(a, "base", None) is not None and hasattr(a.base, "nbytes"):
        a = a.base
    return a


# a training step's share of the batch has at least this many input values
# (`Model._shares`): the digits example's 16 x 8 x 8 maps at batch 32 ran slower in lanes
SHARE_MIN_VALUES = 1 << 16


def _blas_for(shares):
    """A training call that runs shares of its batch runs NumPy's BLAS at one thread
    throughout: a product run at two threads between the lanes leaves OpenBLAS's worker
    spinning on the core that a lane then wants (and the shares' products are the same
    whatever the count)."""
    import contextlib

    from . import threads as threads_

    return threads_.blas_limit(1) if shares else contextlib.nullcontext()


class _Shares(tuple):
    """What a forward run in shares keeps: ``(bounds, [each share's saved])``."""


def _on_threads(work, shares: int, threads: int) -> list:
    """``[work(0), ..., work(shares - 1)]``: on ``min(threads, shares)`` threads at one
    thread each (`threads.in_lanes`), thread ``t`` taking shares ``t, t + lanes, ...``; on
    the calling thread alone when it has one thread."""
    from . import threads as threads_

    lanes = min(threads, shares)
    if lanes < 2:
        return [work(i) for i in range(shares)]
    parts = threads_.in_lanes(lambda t: [work(i) for i in range(t, shares, lanes)], lanes)
    return [parts[i % lanes][i // lanes] for i in range(shares)]


def _forward_in_shares(forward, args, n_inputs, bounds, threads, xp, attrs):
    """``forward`` on each share ``bounds[i]:bounds[i + 1]`` of the data inputs (the
    parameters whole), the shares on ``threads`` threads; the outputs joined."""

    def share(i):
        a, b = bounds[i], bounds[i + 1]
        return forward(*[x[a:b] for x in args[:n_inputs]], *args[n_inputs:], **attrs)

    parts = _on_threads(share, len(bounds) - 1, threads)
    y = xp.concatenate([p[0] for p in parts])
    return y, _Shares((bounds, [p[1] for p in parts]))


def _backward_in_shares(backward, saved, dy, threads, xp, options):
    """The backward of `_forward_in_shares`: each share's input gradients joined, the
    parameters' summed in the shares' order (None stays None)."""
    bounds, kept = saved

    def share(i):
        return backward(kept[i], dy[bounds[i]:bounds[i + 1]], **options)

    parts = _on_threads(share, len(bounds) - 1, threads)
    dinputs = tuple(None if d[0] is None else xp.concatenate(d)
                    for d in zip(*(p[0] for p in parts)))
    dparams = []
    for d in zip(*(p[1] for p in parts)):
        if d[0] is None:
            dparams.append(None)
        else:
            total = d[0]
            for more in d[1:]:
                total += more  # each share's gradient is its own array
            dparams.append(total)
    return dinputs, tuple(dparams)


def _accumulate(flowing: dict, name: str, g) -> None:
    if name in flowing:
        flowing[name] = flowing[name] + g  # never in place: g may be another op's array
    else:
        flowing[name] = g


def _one_or_dict(values: dict):
    if len(values) == 1:
        return next(iter(values.values()))
    return values
