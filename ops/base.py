"""What an op family module declares: its layers and its primitives.

A family module (``ops/conv.py``, ``ops/pool.py``, ...) holds one op family's whole story
and ends with two lists that the registry (``ops/__init__.py``) collects:

    LAYERS = [Layer(...), ...]          # the .cnn layer kinds: arguments, shape rule, cost,
                                        # checks and fix hints, lowering
    PRIMITIVES = [Primitive(...), ...]  # the plan ops: every implementation of each

Every table of the project (the checker's layer table, the plan's ``Op`` enum, each
backend's kernels and gradients, the memory plan's fusion and in-place sets, the ONNX
exporters, the slow references, the PyTorch oracle, the test examples) is derived from
these two lists; nothing is kept by hand beside them.

The training contract: a forward that keeps what the backward pass needs, and that backward.

Every primitive has a pair ``(forward, backward)`` (each backend's ``GRADS`` table):

    y, saved = forward(*inputs, *params, train=True, rng=None, **step.attrs)
    dinputs, dparams = backward(saved, dy)

- ``inputs`` and ``params`` are positional, in the plan step's order (``step.inputs`` then
  ``step.params``), exactly as for the inference kernels.
- ``y`` equals the inference kernel's output exactly (same arithmetic, same dtype) whenever
  the op has no training behaviour of its own, and always with ``train=False``.
- ``train`` selects training behaviour: batchnorm normalises with the batch's statistics and
  updates ``running_mean``/``running_var`` in place with ``momentum`` (the running variance
  is the unbiased one, as PyTorch keeps it); dropout draws an inverted mask from ``rng``
  (a NumPy or CuPy ``Generator``) and keeps it. With ``train=False`` both behave as at
  inference and the backward pass is still available. Only dropout with ``train=True`` and
  ``p > 0`` needs ``rng``.
- Training plans keep activations as steps of their own: conv2d and dense raise a
  ``ValueError`` for a fused ``act`` other than None.
- ``saved`` is whatever the backward needs (arrays, shapes, masks); nothing else holds it.
  It may refer to the forward's inputs, its parameters and ``y`` itself rather than copy
  them, so none of these may change in place between the forward and its backward (an
  optimizer steps after the backward pass).
- ``dy`` must have ``y``'s shape; it is cast to the dtype the forward computed in.
- ``backward`` returns a tuple of input gradients (one per data input) and a tuple of
  parameter gradients, one per parameter array the forward was given (conv2d and dense
  without a bias get ``(gW,)``; prelu ``(gW,)``; other activations ``()``); batchnorm always
  gets four, ``(gW, gb, None, None)``: ``None`` for its running statistics, which are
  buffers, not trainable (and for a weight or bias passed as None).
- Every gradient is a new array owned by the caller: it aliases neither ``dy``, nor
  ``saved``, nor another returned gradient, so it may be accumulated into in place.
- Gradients have the dtype the forward computed in (float32 or float64, as the inference
  kernels choose) and live on the same device. Kernels pick their array module from their
  inputs (``ops/xp.py``), so the same functions serve NumPy and, where a primitive has no
  GPU pair of its own, CuPy.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

REQUIRED = object()


class ExportError(ValueError):
    """A plan (or a step of it) that cannot be written as ONNX."""


@dataclass(frozen=True)
class ArgSpec:
    """One layer argument. ``kind`` is how the checker (``compiler/passes/args.py``) types
    and converts it; the layer's hooks get the converted value:

    - ``count``: an integer >= 1; ``natural``: an integer >= 0.
    - ``pair``: an integer or a list of two, each >= 1 -> ``(h, w)`` (an integer ``k`` gives
      ``(k, k)``); ``ppad``: the same, each >= 0; ``cpad``: as ``ppad``, or the words
      ``same`` (-> ``"same"``) and ``valid`` (-> ``(0, 0)``).
    - ``ints``: an integer or a list of any length >= 1, each >= 1; an integer stays an
      ``int``, a list becomes a tuple (``upsample(factor)``, ``adaptive_avgpool(size)``).
    - ``dims``: the same, said as "one per spatial dim" (the kernel, stride and dilation of
      N-d windows); ``dpad``: as ``dims``, each >= 0; ``dcpad``: as ``dpad``, or ``same``
      (-> ``"same"``) and ``valid`` (-> ``0``). Rank-free: the layer's shape rule expands an
      ``int`` to its input's spatial rank and checks a tuple's length against it.
    - ``choice:w1|w2|...``: one of the bare words (``approximate=tanh``) -> the word as a
      ``str``; a default may be a word or None. A wrong word is E207 with the choices.
    - ``bool``: true or false. ``float``: a finite number; ``prob`` in [0, 1);
      ``positive_float`` above 0; ``unit_float`` in [0, 1].
    - ``any``: anything (block parameters).
    """

    name: str
    kind: str
    default: object = REQUIRED


def _no_params(shape, args):
    return {}


def _no_macs(shape_in, shape_out, args):
    return 0


def default_init(key: str, args: dict | None = None) -> str:
    """PyTorch's default: weights kaiming-uniform, the rest U(-1/sqrt(fan_in), +).
    ``args``: the layer's resolved arguments (unused here)."""
    return "kaiming_uniform" if key == "weight" else "fan_in_uniform"


@dataclass
class Layer:
    """A layer kind of the language.

    - ``infer(shape, args, ctx) -> shape | None``: the per-sample output shape, concrete or
      symbolic; problems go through ``ctx.error(code, message, notes=(), help=None)`` and a
      symbolic size that must be >= 1 through ``ctx.positive(size, what)``.
    - ``params`` / ``buffers(shape, args) -> {key: shape}``: trainable parameters and
      running statistics, in kernel order (a step's params are these keys, then buffers).
    - ``init(key, args=None) -> rule``: "kaiming_uniform", "fan_in_uniform", "ones",
      "zeros" or a float given as text (e.g. "0.25"); ``args`` are the node's resolved
      arguments (``scale(init=1e-6)``), None where they are not known.
    - ``macs(shape_in, shape_out, args)``: multiply-accumulates per sample.
    - ``lower(node, in_shapes) -> (primitive name, attrs)``: the plan step it becomes.
    - ``check_args(args, spans, call_span, report) -> args | None``: cross-argument rules
      run before inference (e.g. pooling's stride default); ``report(code, message, span,
      help=None)``. Return None after reporting to stop checking this layer.
    - ``lint(node, in_shape, report)``: warnings once the shape is known; ``report(code,
      message, span, notes=(), help=None)``.
    - ``formula(node, in_shape, axis) -> str | None``: the arithmetic of the output size
      along shape ``axis``, shown in a merge's notes.
    - ``fix(node, in_shape, axis, target) -> str | None``: a change to this layer that makes
      its output ``target`` along shape ``axis``, offered as a merge's help.
    - ``rank_help(shape) -> str | None``: the help of E304 when the input rank is wrong.
    - ``field``: how much of its input one output unit sees, for receptive fields
      (compiler/receptive.py): "pointwise" (the unit at the same place; the default),
      "window" (a sliding window of ``kernel``, ``stride``, ``pad``, ``dilation``),
      "whole" (all of it), "adaptive" (PyTorch's adaptive windows of ``size``), "upsample"
      (``factor``) or "transpose" (a transposed convolution).
    """

    name: str
    args: list[ArgSpec]
    ranks: tuple | None  # accepted input ranks, None for any
    infer: Callable
    lower: Callable
    params: Callable = _no_params
    buffers: Callable = _no_params
    init: Callable = default_init
    macs: Callable = _no_macs
    changes_shape: bool = True  # False: the output shape always equals the input's
    check_args: Callable | None = None
    lint: Callable | None = None
    formula: Callable | None = None
    fix: Callable | None = None
    rank_help: Callable | None = None
    field: str = "pointwise"
    doc: str = ""


@dataclass
class Merge:
    """A merge of several tensors (``concat(a, b)``, ``add(a, b)``, ``mul(x, gate)``).

    ``join_axis``: the per-sample axis the inputs are joined along (0, channels, for
    concat); every other axis must agree. None: every axis must agree. ``broadcast``: the
    inputs broadcast as NumPy's do over the per-sample shape (equal ranks; along each axis
    the sizes other than 1 agree), and the output takes the size other than 1 of each axis
    (add, mul). ``code``: the diagnostic for inputs that disagree.
    """

    name: str
    code: str
    lower: Callable  # (node, in_shapes) -> (primitive name, attrs)
    join_axis: int | None = None
    broadcast: bool = False
    doc: str = ""


@dataclass
class Example:
    """One input set for the generic conformance tests: data inputs, parameter arrays (in
    the step's order) and attributes, as the kernel takes them. ``grad``: whether finite
    differences apply (False where the op is not smooth at these inputs or has no
    gradient). ``onnx``: whether the ONNX round trip applies."""

    inputs: list
    params: list = field(default_factory=list)
    attrs: dict = field(default_factory=dict)
    grad: bool = True
    onnx: bool = True
    torch: bool = True
    note: str = ""


@dataclass
class Primitive:
    """A plan op and everything that runs it.

    Calling conventions, shared by every implementation: data inputs and parameter arrays
    are positional (``step.inputs`` then ``step.params``), attributes are keywords.

    - ``kernel(*xs, *ws, **attrs)``: inference, written once against the NumPy API
      (``ops.xp.get_array_module``), so it runs on CuPy arrays too. With ``accepts_out``
      it also takes ``out=`` (an array of the output's shape to write into, which may be
      its first input when ``in_place`` allows); with ``accepts_scale``, ``scale=`` (a
      per-output-channel factor before the bias: a folded batchnorm); with
      ``accepts_prepared``, ``prepared=`` (the layer's `PreparedLayer`: what the kernel
      derives from the weights, kept while they stay unchanged; the NumPy kernel only).
    - ``forward(*xs, *ws, train=True, rng=None, **attrs) -> (y, saved)`` and
      ``backward(saved, dy) -> (input grads, param grads)``: training (the
      contract is at the top of this module).
    - ``reference(*xs, *ws, **attrs)``: the slow loop implementation, obviously right,
      float64; the oracle of the fast kernels.
    - ``onnx(g, step, xs, ws, out, in_shapes)``: add the ONNX nodes computing ``out``.
    - ``torch(step, xs, ws, training)``: the same computation in PyTorch (tensors in,
      tensor out), for the oracle tests and the benchmark.
    - ``gpu_kernel``, ``gpu_forward``, ``gpu_backward``: CuPy implementations (raw CUDA
      kernels through ``ops.gpu``) for float32 and float64 inputs; None where ``kernel``,
      ``forward``, ``backward`` already run well on CuPy arrays. The CuPy backend sends
      other dtypes to the generic ones.
    - ``examples(rng) -> [Example]``: inputs for the generic conformance tests.
    - ``keeps(step, in_shapes, itemsize) -> [item]``: what the training forward keeps for
      the backward pass, from the plan alone (``cnnc summary --train`` and the memory check
      before training read it; ``tests/runtime/test_sizes.py`` holds it to what a forward
      really keeps). Items: ``("input", i)`` or ``("output",)``, a tensor of the plan kept
      by reference; ``("new", what, bytes per sample, bytes in all)``, an array of its own;
      ``("alias",)`` alone: the output is the input's memory. None: at most the inputs and
      the output (an estimate from above).
    """

    name: str  # the ``Op`` value, e.g. "conv2d"
    signature: str  # the kernel's arguments, for the docs: "(x, w, b=None, *, stride, ...)"
    kernel: Callable
    forward: Callable
    backward: Callable
    reference: Callable
    onnx: Callable
    torch: Callable
    examples: Callable
    gpu_kernel: Callable | None = None
    gpu_forward: Callable | None = None
    gpu_backward: Callable | None = None
    accepts_out: bool = False
    accepts_scale: bool = False
    accepts_prepared: bool = False
    in_place: str | None = None  # None, "first" or "any": which input the output may overwrite
    alias: bool = False  # inference output is the input itself, reshaped (flatten, dropout)
    gemm: bool = False  # may absorb a following batchnorm and activation as its epilogue
    # backward (and gpu_backward) take ``input_grad=False``: the parameters' gradients alone,
    # None for the inputs' (a first layer in training, whose input is the data)
    skips_input_grad: bool = False
    # the training forward and backward treat each image alone (no statistic across the
    # batch, no random draw) and the parameters' gradients are sums over the images: a
    # training step may run each thread's share of the batch through them on its own
    per_image: bool = False
    keeps: Callable | None = None
    doc: str = ""


def divisor_help(what, total, bad):
    """``"64 divides by groups=2 or groups=4"``: the divisors of ``total`` nearest ``bad``."""
    divs = [d for d in range(1, min(total, 4 * bad + 8) + 1) if total % d == 0]
    near = sorted(divs, key=lambda d: (abs(d - bad), d))[:3]
    listed = " or ".join(f"{what}={d}" for d in sorted(near))
    return f"{total} divides by {listed}"


def same_shape(shape, args, ctx):
    """The shape rule of a layer that keeps its input's shape."""
    return shape


def keeps_input(step, in_shapes, itemsize):
    """``keeps`` of a primitive whose backward needs its (first) input."""
    return [("input", 0)]


def keeps_output(step, in_shapes, itemsize):
    """``keeps`` of a primitive whose backward needs its output."""
    return [("output",)]


def keeps_nothing(step, in_shapes, itemsize):
    """``keeps`` of a primitive whose backward needs nothing but shapes."""
    return []


def elements(shape) -> int:
    """The number of elements of a per-sample shape."""
    total = 1
    for d in shape:
        total *= int(d)
    return total


def weight_keys(node) -> list[str]:
    """A step's parameter names: the layer's params, then its buffers."""
    return [f"{node.name}.{k}" for k in list(node.params) + list(node.buffers)]


class Prepared:
    """Arrays that kernels derive from a plan's weights (the Winograd transforms of its 3x3
    convolutions, the 1x1 tiles' packed weights), kept for as long as the weights stay
    unchanged: the inference executor holds one and replaces it when told the parameters
    changed (`Model.mark_changed`). The layers share ``budget`` bytes; past it, a kernel
    derives what it needs on every call, as without one."""

    def __init__(self, budget: int):
        self.left = int(budget)
        self._layers: dict = {}
        self._lock = threading.Lock()

    def layer(self, name) -> "PreparedLayer":
        """The arrays of layer ``name`` (the argument a kernel's ``prepared=`` takes)."""
        with self._lock:
            got = self._layers.get(name)
            if got is None:
                got = self._layers[name] = PreparedLayer(self)
            return got


class PreparedLayer:
    """One layer's share of a `Prepared`."""

    def __init__(self, plan: Prepared):
        self._plan = plan
        self._arrays: dict = {}  # key -> (source, array)

    def kept(self, key, nbytes: int, make: Callable, source=None):
        """The array kept under ``key`` for ``source`` (the weight array it derives from:
        another array, a parameter replaced rather than changed in place, is made anew;
        the source is held, so that no new array can take its place in memory);
        else ``make()``, kept, if its ``nbytes`` fit in what is left of the budget; else
        None (nothing made). Under the plan's lock, so that lanes asking at once make it
        once."""
        plan = self._plan
        with plan._lock:
            got = self._arrays.get(key)
            if got is not None and got[0] is source:
                return got[1]
            if got is not None:  # made from another array: its bytes come back
                del self._arrays[key]
                plan.left += got[1].nbytes
            if nbytes > plan.left:
                return None
            array = make()
            plan.left -= array.nbytes
            self._arrays[key] = (source, array)
            return array
