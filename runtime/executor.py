"""Runs an `ExecPlan` (compiler/memory.py) for inference on one backend.

The executor owns the arena: one flat array per slot of the plan, allocated for the batch
size of the call and reused by the next call with the same batch size, so steady-state
inference allocates only its outputs and the kernels' small workspaces. Every tensor of the
plan is a view: of its slot, of its alias target, or of its channel slice in a concat.

Folded parameters (a batchnorm folded into the conv before it), and what a kernel derives
from a layer's weights (``prepared=``: the Winograd transforms of the 3x3 convolutions, the
1x1 tiles' packed weights) are computed once and kept until `invalidate()`; `Model` calls
it whenever its parameters may have changed.

Each call runs under `runtime.threads.limit`: the BLAS and the compiled kernels run the
number of threads cnnc decides (``threads=`` here, else ``set_threads`` or
``CNNC_NUM_THREADS``, else the cores other processes leave free).

With two threads or more and a batch of two images or more, the batch is split instead:
each thread runs the whole plan on its share of the images, with one BLAS thread and one
compiled-kernel thread, in an arena of its own (a lane). Every step of a plan is per image
(the plan's shapes leave the batch out), so the shares are independent: no thread waits for
another until the outputs are joined. Threads inside each matrix product wait for each
other at every barrier, and the Winograd convolutions and the NumPy copies between the
products ran on one core anyway: measured on ResNet-18 at batch 8, splitting the batch ran
the forward pass in a fraction of the time the same two threads took inside each kernel
(docs/performance.md). ``SPLIT_BATCH = False`` turns it off.

Under the automatic count a split batch takes a lane per usable core even when other
processes keep some of them busy: lanes share nothing until the join, so a lane on a busy
core runs slower rather than holding the others at a barrier. With one of two cores kept
busy, batch 8 ran in 0.79-0.88x the time that one lane took (GoogLeNet, ResNet-18,
MobileNet V2, EfficientNet-B0). A fixed count (``threads=``, ``set_threads``,
``CNNC_NUM_THREADS``) is the number of lanes as given. Each lane runs on a core of its own,
and one that finishes first lends its core to the compiled kernels of the lanes still
running and takes over the lanes' slower core, moving a running lane onto its own
(`runtime.threads.in_lanes`), so a lane held up on a shared or slower core is helped rather
than waited for; where the lanes' cores ran far apart in recent calls, the shares
follow their speeds (`_shares`).
"""

from __future__ import annotations

import itertools
import time

from ..compiler.memory import ExecPlan
from ..ops import Op, primitive
from ..ops.base import Prepared
from . import threads as threads_
from .backend import Backend
from .errors import at_layer


_ACCEPTS_GATE = frozenset({Op.CONV1D, Op.CONV2D})
# What a plan keeps so, at most: the transforms of F(4x4, 3x3) are 4x the weights of the
# layers that take it, F(2x2, 3x3)'s 16/9x (ResNet-18: 69 MiB for 45 MiB of weights; VGG-16
# about 170). Past it, a layer computes them on every call.
PREPARED_BYTES = 256 << 20

# Split a batch among the threads (see the module's docstring); False: every kernel runs
# the threads itself.
SPLIT_BATCH = True

# A split batch is cut unevenly only where the lanes' cores ran this many times apart in
# recent calls (a core shared with a busy process runs a lane at about half speed); closer
# speeds are the noise of a shared machine, and the shares stay equal.
UNEVEN = 1.5
# A lane's time counts towards its core's speed only when it ran at least this long (a
# small network's lanes take a millisecond or two, which any hiccup doubles).
TIMED_SECONDS = 0.01


def _shares(n: int, speeds: list) -> list:
    """The bounds of ``n`` images cut into ``len(speeds)`` shares: equal, or, where every
    lane's core has a speed and the fastest is ``UNEVEN`` times the slowest, in proportion
    to them (each share at least one image, where there are enough)."""
    lanes = len(speeds)
    if (None in speeds or min(speeds) <= 0 or max(speeds) < UNEVEN * min(speeds)
            or n < 2 * lanes):
        return [n * i // lanes for i in range(lanes + 1)]
    total = sum(speeds)
    sizes = [max(1, int(round(n * v / total))) for v in speeds]
    while sum(sizes) > n:  # (rounding) take from the largest share, then give to the fastest
        sizes[sizes.index(max(sizes))] -= 1
    while sum(sizes) < n:
        sizes[speeds.index(max(speeds))] += 1
    return [0] + list(itertools.accumulate(sizes))


class Executor:
    def __init__(self, eplan: ExecPlan, backend: Backend, dtype, threads=None):
        self.eplan = eplan
        self.threads = None if threads is None else threads_.parse(threads, "threads")
        self.on_device = backend.on_device
        self.xp = backend.xp
        self.kernels = backend.kernels
        self.accepts_out = backend.accepts_out
        self.accepts_scale = backend.accepts_scale
        # kernels that multiply a fused gate in as they write (the NumPy convolutions)
        self.accepts_gate = frozenset() if backend.on_device else _ACCEPTS_GATE
        # kernels that keep what they derive from a layer's weights in ``prepared=`` (the
        # layer's share of a `Prepared`, replaced when the parameters change)
        self.accepts_prepared = backend.accepts_prepared
        self.dtype = dtype
        # lane -> (images it holds, [slot arrays], {tensor: view}, {fewer images: views})
        self._arenas = {}
        self._speeds = {}  # core -> images a second a lane held on it ran, lately
        # the compiled kernels (ops/fast.py and the op families' own: depthwise and
        # Winograd convolutions, GEMM epilogues, exp activations) load with the first call
        self._compiled_loaded = backend.on_device
        self._folded = None
        self._prepared = Prepared(PREPARED_BYTES)

    def invalidate(self) -> None:
        """Forget folded parameters and what kernels derived from the weights (after the
        parameters changed)."""
        self._folded = None
        self._prepared = Prepared(PREPARED_BYTES)

    # ---- parameters ---------------------------------------------------------------------
    def _params(self, params: dict) -> dict:
        if self._folded is None:
            self._folded = {}
            for e in self.eplan.execs:
                if e.fold or e.scales:
                    self._folded[e.out] = self._fold(e, params)
        return self._folded

    def _fold(self, e, params):
        """``(weight, bias, scale)`` of ``e`` with its batchnorm and then its scale layers
        folded in (computed in float64). Where the kernel takes ``scale=``, the weight is the
        parameter itself and the scale is applied per output channel; otherwise the weight
        is a scaled copy."""
        xp = self.xp
        channels = self.eplan.tensors[e.out].shape[0]
        if len(e.params) > 1:
            b = xp.asarray(params[e.params[1]], dtype=xp.float64)
        else:
            b = xp.zeros(channels, dtype=xp.float64)
        scale = xp.ones(channels, dtype=xp.float64)
        if e.fold:
            gamma, beta, mean, var = (xp.asarray(params[k], dtype=xp.float64)
                                      for k in e.fold)
            scale = gamma / xp.sqrt(var + e.fold_eps)
            b = (b - mean) * scale + beta
        for keys in e.scales:  # y * weight + bias, per channel
            weight = xp.asarray(params[keys[0]], dtype=xp.float64).reshape(-1)
            scale = scale * weight
            b = b * weight
            if len(keys) > 1:
                b = b + xp.asarray(params[keys[1]], dtype=xp.float64).reshape(-1)
        b = b.astype(self.dtype)
        if e.op in self.accepts_scale:
            return None, b, scale.astype(self.dtype)
        w = xp.asarray(params[e.params[0]], dtype=xp.float64)
        w = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
        return w.astype(self.dtype), b, None

    # ---- memory -------------------------------------------------------------------------
    def _resolve(self, name, n, slots, cache, fresh):
        """The array for tensor ``name``: a view of its slot, its alias target, its concat
        slice, or (``fresh`` is not None) of a graph output allocated for this call.
        Returns None for a tensor that needs a per-call array when ``fresh`` is None."""
        v = cache.get(name)
        if v is not None:
            return v
        t = self.eplan.tensors[name]
        shape = (n,) + t.shape
        if t.storage != name:
            base = self._resolve(t.storage, n, slots, cache, fresh)
            if base is None:
                return None
            v = base if base.shape == shape else base.reshape(shape)
        elif t.parent is not None:
            base = self._resolve(t.parent, n, slots, cache, fresh)
            if base is None:
                return None
            v = base[:, t.offset:t.offset + t.shape[0]]
        elif t.fresh:
            if fresh is None:
                return None
            v = self.xp.empty(shape, dtype=self.dtype)
        else:
            v = slots[self.eplan.slot_of[name]][:n * t.size].reshape(shape)
        cache[name] = v
        return v

    def _views(self, n: int, lane: int = 0, fewer: bool = False) -> tuple:
        """``(slots, views)`` of ``lane``'s arena for a batch of ``n``; ``fewer``: an arena
        made for more images serves (views of its first ``n``), as the uneven shares of a
        split batch do."""
        arena = self._arenas.get(lane)
        if arena is not None and arena[0] == n:
            return arena[1], arena[2]
        if arena is not None and fewer and arena[0] > n:
            views = arena[3].get(n)
            if views is None:
                views = arena[3][n] = self._all_views(n, arena[1])
            return arena[1], views
        self._arenas.pop(lane, None)  # let the previous batch size's arena go first
        slots = [self.xp.empty(n * size, dtype=self.dtype) for size in self.eplan.slots]
        self._arenas[lane] = (n, slots, self._all_views(n, slots), {})
        return self._arenas[lane][1], self._arenas[lane][2]

    def _all_views(self, n: int, slots: list) -> dict:
        views: dict = {}
        for name in self.eplan.tensors:
            if name not in self.eplan.plan.inputs:
                self._resolve(name, n, slots, views, None)
        return views

    # ---- running ------------------------------------------------------------------------
    def run(self, inputs: dict, params: dict) -> dict:
        """Outputs for ``inputs`` (name -> array); outputs are fresh arrays."""
        if self.on_device:
            return self._run(inputs, params)
        if not self._compiled_loaded:
            # the compiled kernels' module (and numba) loads before the thread count is set,
            # so that the count reaches its kernels from the first call
            from ..ops import fast  # noqa: F401

            self._compiled_loaded = True
        count = threads_.decide(self.threads)
        n = next(iter(inputs.values())).shape[0]
        lanes = min(count, n)
        if n >= 2 and self.threads is None and threads_.setting() is None:
            lanes = min(threads_.usable_cores(), n)  # auto: see the module's docstring
        if not SPLIT_BATCH or lanes < 2:
            with threads_.limit(count):
                return self._run(inputs, params)
        return self._run_split(inputs, params, lanes)

    def _run_split(self, inputs: dict, params: dict, lanes: int) -> dict:
        """The batch cut into ``lanes`` shares, each run by a thread at one thread."""
        n = next(iter(inputs.values())).shape[0]
        cores = threads_.lane_cores(lanes)
        bounds = _shares(n, [self._speeds.get(c) for c in cores] if cores else [None] * lanes)
        self._params(params)  # folded once, before the lanes read them
        spent = [None] * lanes

        def lane(i):
            part = {k: v[bounds[i]:bounds[i + 1]] for k, v in inputs.items()}
            started = time.perf_counter()
            result = self._run(part, params, lane=i, fewer=True)
            spent[i] = time.perf_counter() - started
            return result

        parts = threads_.in_lanes(lane, lanes, cores)
        if cores:
            for i, core in enumerate(cores):
                images = bounds[i + 1] - bounds[i]
                if images and (spent[i] or 0) >= TIMED_SECONDS:
                    speed = images / spent[i]
                    last = self._speeds.get(core)
                    self._speeds[core] = speed if last is None else (last + speed) / 2
        return {name: self.xp.concatenate([p[name] for p in parts])
                for name in parts[0]}

    def _run(self, inputs: dict, params: dict, lane: int = 0, fewer: bool = False) -> dict:
        n = next(iter(inputs.values())).shape[0]
        slots, arena = self._views(n, lane, fewer)
        tensors = self.eplan.tensors
        values = dict(inputs)
        per_call = dict(arena)
        per_call.update(inputs)

        def get(name):
            return self._resolve(name, n, slots, per_call, True)

        folded = self._params(params)
        for e in self.eplan.execs:
            if e.skip:
                continue
            out = get(e.out)
            xs = [values[i] if i in values else get(i) for i in e.inputs]
            gate = in_gate = None
            if e.gate is not None:  # (N, C or 1, 1...): a per-image, per-channel factor
                gate = xs.pop()
            if e.in_gate is not None:  # the same, multiplied into the input
                in_gate = xs.pop()
            if e.op is Op.CONCAT:
                offset = 0
                for name, x in zip(e.inputs, xs):
                    c = x.shape[1]
                    if tensors[name].parent != e.out:
                        out[:, offset:offset + c] = x
                    offset += c
                values[e.out] = out
                continue
            attrs = e.attrs
            if e.fold or e.scales:
                w, b, scale = folded[e.out]
                ps = [params[e.params[0]] if w is None else w, b]
                if scale is not None:
                    attrs = dict(attrs, scale=scale)
            else:
                ps = [params[k] for k in e.params]
            if e.act_params:
                name, extra = attrs["act"]
                attrs = dict(attrs, act=(name, dict(extra, weight=params[e.act_params[0]])))
            if e.in_place is not None and primitive(e.op).in_place == "first":
                out = xs[e.in_place]
            kernel = self.kernels[e.op]
            if e.op in self.accepts_prepared:
                attrs = dict(attrs, prepared=self._prepared.layer(e.out))
            if gate is not None and e.op in self.accepts_gate:
                attrs = dict(attrs, gate=gate)
                gate = None
            if in_gate is not None:
                if e.op in self.accepts_gate:
                    attrs = dict(attrs, in_gate=in_gate)
                else:  # a kernel without ``in_gate=`` (a plan made for another backend)
                    xs[0] = xs[0] * in_gate
            try:
                if e.op in self.accepts_out:
                    kernel(*xs, *ps, out=out, **attrs)
                else:
                    out[...] = kernel(*xs, *ps, **attrs)
                if gate is not None:  # a kernel without ``gate=``: the product after it
                    out *= gate
            except ValueError as err:
                raise at_layer(e.step, self.eplan.plan.file, err) from err
            values[e.out] = out
        return {name: values[buf] if buf in values else get(buf)
                for name, buf in self.eplan.outputs.items()}
