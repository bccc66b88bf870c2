"""The inference memory plan: fusions, in-place ops, concat slices and buffer reuse.

`plan_memory(plan)` turns a lowered `Plan` into an `ExecPlan`, the schedule a runtime
executes for inference. It is pure bookkeeping over names and per-sample sizes; every size
scales with the batch, so one plan serves every batch size.

Rewrites, in this order:

1. **Batchnorm folding.** A batchnorm whose input is a conv or dense output read by nothing
   else is folded into that layer: the runtime scales the weights and shifts the bias once
   (``fold`` names the batchnorm's weight-file keys).
2. **Epilogue fusion.** An activation whose input is a conv or dense output read by nothing
   else becomes that layer's epilogue (``attrs["act"]``), applied while the tile is hot
   (hardswish, silu, relu6 and the rest alike). A ``scale`` layer (per-channel weight and
   bias: ConvNeXt's layer scale) on such an output, before any activation, is folded into
   the layer's per-channel scale and bias (``scales`` names its weight-file keys), so it
   costs nothing at run time. A ``mul`` whose one input is a convolution's output read by
   nothing else and whose other input is a per-channel gate (``[C, 1, ...]`` or all ones,
   computed before the convolution runs: a squeeze-and-excitation gate) becomes the
   convolution's last epilogue step (``gate`` names the gate tensor; the kernel multiplies
   each output channel of each image while writing it).
3. **Aliases.** Inference dropout is the identity and flatten a reshape: their outputs are
   the input's storage under another name, and nothing runs.
4. **Concat slices.** An input of a concat that only the concat reads is written by its
   producer straight into its channel slice of the concat's output; the concat then only
   copies the inputs it could not place (a graph input, or a tensor read elsewhere too).
5. **In place.** An activation, batchnorm or add whose input dies at that step writes over
   the input's storage.
6. **Buffer reuse.** Every remaining storage lives from its first write to its last read;
   storages whose lifetimes do not overlap share one slot (best fit by size). Graph outputs
   get storage of their own, outside the slots, so results stay valid after the call.

The slots' total is the planned peak; `naive` is the sum of every layer's output, what an
interpreter that keeps everything would hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

from ..ops import PRIMITIVES, Op, ops_where
from .plan import Plan, Step

# Ops whose epilogue can absorb a batchnorm, an activation and a scale layer.
_GEMM = ops_where("gemm")
# Of those, the ones that can multiply a per-channel gate in: the convolutions.
_GATED = frozenset({Op.CONV1D, Op.CONV2D, Op.CONV3D}) & _GEMM
# Ops that may write over their first input (or any input) when it dies there.
_IN_PLACE = {Op(name): p.in_place for name, p in PRIMITIVES.items() if p.in_place}
# Ops whose inference output is their input under another name (identity, reshape).
_ALIAS = ops_where("alias")


@dataclass
class Tensor:
    name: str
    shape: tuple  # per sample
    storage: str  # the root tensor whose memory this one is (itself for a root)
    parent: str | None = None  # a concat output this tensor is a channel slice of
    offset: int = 0  # first channel within ``parent``
    fresh: bool = False  # a graph output: allocated per call, never reused

    @property
    def size(self) -> int:
        return prod(self.shape)


@dataclass
class Exec:
    step: Step  # the plan step this runs (name, span, trace)
    op: Op
    inputs: list[str]
    out: str
    params: list[str]
    attrs: dict
    fold: list[str] = field(default_factory=list)  # batchnorm keys folded into a GEMM
    fold_eps: float = 0.0
    act_params: list[str] = field(default_factory=list)  # prelu slopes of a fused epilogue
    scales: list[list[str]] = field(default_factory=list)  # scale layers' keys folded in
    gate: str | None = None  # a per-channel gate multiplied in last (also the last input)
    # a per-channel gate multiplied into the input (a squeeze-and-excitation ``mul`` before
    # a 1x1 convolution); an input too, before ``gate``
    in_gate: str | None = None
    skip: bool = False  # an alias: nothing to compute
    in_place: int | None = None  # which input's storage the output overwrites
    fused: list[str] = field(default_factory=list)  # names of the steps merged into this one


@dataclass
class ExecPlan:
    plan: Plan
    execs: list[Exec]
    tensors: dict[str, Tensor]
    slots: list[int]  # per-sample elements of each reusable slot
    slot_of: dict[str, int]  # root storage -> slot index
    naive: int  # per-sample elements: every layer output kept
    live_peak: int  # per-sample elements: the most that is ever live at once
    outputs: dict[str, str] = field(default_factory=dict)  # output name -> tensor

    @property
    def planned(self) -> int:
        """Per-sample elements of the slots plus the graph outputs' own storage."""
        fresh = sum(t.size for t in self.tensors.values() if t.fresh and t.storage == t.name)
        return sum(self.slots) + fresh


def plan_memory(plan: Plan, fuse: bool = True, input_gates: bool = True) -> ExecPlan:
    """The inference schedule and memory plan of ``plan``; ``fuse=False`` keeps every step
    as it is (still with aliases, concat slices, in-place ops and reuse);
    ``input_gates=False`` keeps a gate before a 1x1 convolution a step of its own (for
    kernels that cannot multiply it in as they read: the CuPy backend's)."""
    outputs = set(plan.outputs.values())
    execs = [Exec(s, s.op, list(s.inputs), s.name, list(s.params), dict(s.attrs))
             for s in plan.steps]
    if fuse:
        shape_of = dict(plan.inputs)
        shape_of.update((st.name, tuple(st.shape)) for st in plan.steps)
        execs = _fuse(execs, outputs, shape_of, plan.params if input_gates else None)

    tensors: dict[str, Tensor] = {}
    for name, shape in plan.inputs.items():
        tensors[name] = Tensor(name, tuple(shape), name)
    shape_of = {s.name: tuple(s.shape) for s in plan.steps}
    for e in execs:
        tensors[e.out] = Tensor(e.out, shape_of[e.out], e.out, fresh=e.out in outputs)

    readers = _readers(execs)
    # 3. aliases
    for e in execs:
        if e.op in _ALIAS:
            src = tensors[e.inputs[0]]
            if not tensors[e.out].fresh and src.name not in plan.inputs:
                e.skip = True
                tensors[e.out].storage = src.storage
    # 4. concat slices
    producer = {e.out: e for e in execs}
    aliased = {t.storage for t in tensors.values() if t.storage != t.name}
    for e in execs:
        if e.op is not Op.CONCAT:
            continue
        offset = 0
        for name in e.inputs:
            t = tensors[name]
            p = producer.get(name)
            if (p is not None and not p.skip and not t.fresh and t.storage == name
                    and readers[name] == [e.out] and name not in aliased):
                t.parent, t.offset = e.out, offset
            offset += t.shape[0]
    # 5. in place
    _, last_read = _spans(execs, tensors)
    held: dict[str, list[str]] = {}  # root storage -> the tensors it holds
    for t in tensors.values():
        held.setdefault(t.storage, []).append(t.name)
    for i, e in enumerate(execs):
        if e.op not in _IN_PLACE or e.skip:
            continue
        out = tensors[e.out]
        if out.fresh or out.parent is not None:
            continue
        candidates = e.inputs if _IN_PLACE[e.op] == "any" else e.inputs[:1]
        for name in candidates:
            t = tensors[name]
            root = tensors[t.storage]
            if (name in plan.inputs or t.parent is not None or root.fresh
                    or root.parent is not None or t.size != out.size
                    or e.inputs.count(name) > 1 or last_read[t.storage] != i):
                continue
            for other in held.pop(e.out, [e.out]):
                tensors[other].storage = t.storage
                held.setdefault(t.storage, [t.storage]).append(other)
            e.in_place = e.inputs.index(name)
            # the input's storage now also lives as long as the output did
            last_read[t.storage] = max(last_read[t.storage], last_read.pop(e.out))
            break
    # 6. slots
    slots, slot_of, live_peak = _assign(execs, tensors, plan)
    naive = sum(prod(s.shape) for s in plan.steps)
    return ExecPlan(plan, execs, tensors, slots, slot_of, naive, live_peak,
                    dict(plan.outputs))


def _readers(execs) -> dict[str, list[str]]:
    readers: dict[str, list[str]] = {}
    for e in execs:
        for name in e.inputs:
            readers.setdefault(name, []).append(e.out)
    return readers


def _gate_input(e: Exec, by_out: dict, shape_of: dict, position: dict):
    """``(map, gate)`` of a ``mul`` that can be a convolution's gate epilogue, else None:
    two inputs, one a convolution's output of the mul's own shape, the other a per-channel
    gate made before that convolution runs."""
    if len(e.inputs) != 2 or e.inputs[0] == e.inputs[1]:
        return None
    for a, g in (e.inputs, e.inputs[::-1]):
        src = by_out.get(a)
        if src is None or src.op not in _GATED or shape_of.get(a) != shape_of[e.out]:
            continue
        shape = shape_of.get(g)
        channels = shape_of[a][0]
        if (shape is None or len(shape) != len(shape_of[a]) or shape[0] not in (1, channels)
                or any(d != 1 for d in shape[1:])):
            continue
        made = by_out.get(g)
        if made is not None and position[id(made)] > position[id(src)]:
            continue  # the gate is computed after the convolution
        return a, g
    return None


def _input_gate(e: Exec, readers: dict, by_out: dict, shape_of: dict, outputs: set,
                param_shapes: dict):
    """``(map, gate, conv)`` of a ``mul`` whose one reader is a 1x1, stride-1, unpadded,
    ungrouped convolution that can multiply the gate into its input as it reads it (a
    squeeze-and-excitation block's ``mul`` before its projection), else None."""
    if len(e.inputs) != 2 or e.inputs[0] == e.inputs[1] or e.out in outputs:
        return None
    reader = readers.get(e.out)
    conv = by_out.get(reader[0]) if reader and len(reader) == 1 else None
    if (conv is None or conv.op is not Op.CONV2D or conv.in_gate is not None
            or conv.inputs.count(e.out) != 1 or conv.inputs[0] != e.out):
        return None
    a = conv.attrs
    weight = param_shapes.get(conv.params[0]) if conv.params else None
    if (weight is None or tuple(weight[2:]) != (1, 1) or a.get("groups", 1) != 1
            or any(v != 1 for v in _pair(a.get("stride", 1)))
            or any(v != 0 for v in _pair(a.get("pad", 0)))):
        return None
    for m, g in (e.inputs, e.inputs[::-1]):
        shape = shape_of.get(g)
        if (shape_of.get(m) != shape_of[e.out] or shape is None
                or len(shape) != len(shape_of[m]) or shape[0] not in (1, shape_of[m][0])
                or any(d != 1 for d in shape[1:])):
            continue
        return m, g, conv
    return None


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,)


def _fuse(execs: list[Exec], outputs: set, shape_of: dict,
          param_shapes: dict | None = None) -> list[Exec]:
    """Fold batchnorms, activations, scales and gates into the conv or dense before them,
    and (given the parameters' shapes) a gate into the input of the 1x1 convolution after
    it."""
    readers = _readers(execs)
    by_out = {e.out: e for e in execs}
    position = {id(e): i for i, e in enumerate(execs)}
    dropped = set()
    for e in execs:
        if e.op not in (Op.BATCHNORM, Op.ACTIVATION, Op.SCALE, Op.MUL):
            continue
        first = e.inputs[0]
        gate = None
        if e.op is Op.MUL:
            pair = _gate_input(e, by_out, shape_of, position)
            first, gate = pair if pair is not None else (None, None)
        src = by_out.get(first)
        if (src is None or src.op not in _GEMM or src.out in outputs
                or readers.get(src.out) != [e.out] or src.gate is not None):
            if (e.op is Op.MUL and param_shapes is not None
                    and _into_next(e, readers, by_out, shape_of, outputs, param_shapes)):
                dropped.add(id(e))
            continue
        if e.op is not Op.MUL and src.attrs.get("act") is not None:
            continue
        if e.op is Op.BATCHNORM:
            if src.fold or src.scales:
                continue
            src.fold = list(e.params)
            src.fold_eps = e.attrs["eps"]
        elif e.op is Op.SCALE:
            src.scales.append(list(e.params))
        elif e.op is Op.MUL:
            src.gate = gate
            src.inputs.append(gate)
        else:
            a = e.attrs
            src.attrs["act"] = (a["name"], {"alpha": a.get("alpha"), "beta": a.get("beta")})
            src.act_params = list(e.params)
        src.fused.append(e.step.name)
        del by_out[src.out]
        del readers[src.out]  # its only reader, ``e``, is gone; e's readers now read src
        src.out = e.out
        by_out[e.out] = src
        dropped.add(id(e))
    return [e for e in execs if id(e) not in dropped]


def _into_next(e: Exec, readers: dict, by_out: dict, shape_of: dict, outputs: set,
               param_shapes: dict) -> bool:
    """Move the ``mul`` ``e`` into the input of the convolution after it (`_input_gate`),
    if it can be; whether it was."""
    found = _input_gate(e, readers, by_out, shape_of, outputs, param_shapes)
    if found is None:
        return False
    m, g, conv = found
    conv.inputs[0] = m
    conv.inputs.insert(len(conv.inputs) - (conv.gate is not None), g)
    conv.in_gate = g
    conv.fused.append(e.step.name)
    for name in (m, g):
        readers[name] = [conv.out if r == e.out else r for r in readers.get(name, [])]
    del readers[e.out]
    del by_out[e.out]
    return True


def _root(tensors: dict, name: str) -> str:
    """The storage that holds ``name``: its own, its alias target, or its concat parent's."""
    t = tensors[name]
    while True:
        t = tensors[t.storage]
        if t.parent is None:
            return t.name
        t = tensors[t.parent]


def _spans(execs, tensors) -> tuple[dict, dict]:
    """The first and the last exec index that touches each root storage."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, e in enumerate(execs):
        for name in e.inputs + [e.out]:
            root = _root(tensors, name)
            first.setdefault(root, i)
            last[root] = i
    return first, last


def _assign(execs, tensors, plan):
    """Give every reusable root storage a slot; returns (slot sizes, root -> slot, the
    largest live total)."""
    first, last = _spans(execs, tensors)
    reusable = [r for r in first
                if r not in plan.inputs and not tensors[r].fresh]
    starts: dict[int, list[str]] = {}
    ends: dict[int, list[str]] = {}
    for r in reusable:
        starts.setdefault(first[r], []).append(r)
        ends.setdefault(last[r], []).append(r)
    slots: list[int] = []
    free: list[int] = []
    slot_of: dict[str, int] = {}
    live = live_peak = 0
    for i in range(len(execs)):
        for r in sorted(starts.get(i, []), key=lambda r: -tensors[r].size):
            need = tensors[r].size
            fits = [s for s in free if slots[s] >= need]
            if fits:
                s = min(fits, key=lambda s: slots[s])
            elif free:
                s = max(free, key=lambda s: slots[s])  # grow the largest free slot
                slots[s] = need
            else:
                s = len(slots)
                slots.append(need)
            if s in free:
                free.remove(s)
            slot_of[r] = s
            live += need
        live_peak = max(live_peak, live)
        for r in ends.get(i, []):
            free.append(slot_of[r])
            live -= tensors[r].size
    return slots, slot_of, live_peak
