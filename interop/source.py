"""`.cnn` source from an imported graph: the pieces every importer shares.

An importer (ONNX, Caffe, Darknet) turns its file into a list of `Layer`s in a valid order,
each reading tensors by name and writing one tensor, with its arguments in cnnc's words and
its parameter arrays under cnnc's leaf names (``weight``, ``bias``, ``running_mean``, ...).
`writer.write_source` turns that list into readable source:

- a chain per run of layers that each feed only the next one, bound to a name at every
  tensor read twice, read by a merge, or given out (``layer1_0 = stem -> conv(...) -> ...``);
- each layer named from the graph (``as conv1``), so that its weight-file keys are
  ``<binding>.<name>.weight`` and can be traced back to the original graph;
- ``let`` constants for a float argument value that repeats (``let eps = 0.001``);
- repeated sub-graphs as blocks with parameters (`blocks.py`) where the graph says which
  nodes belong to one module (scoped names, as exporters from PyTorch write them).

It returns the text and the weight-file arrays keyed as the text's layers will be named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["ImportProblem", "KEYWORDS", "Layer", "Names", "Source", "constants",
           "emit_body", "identifier", "render_value", "value_key"]

MERGE_KINDS = ("concat", "add", "mul")

# Positional arguments per layer kind (the rest are written by keyword), as in
# docs/language.md section 8.
POSITIONAL = {"conv": ("out", "kernel"), "dense": ("out",), "maxpool": ("kernel",),
              "avgpool": ("kernel",), "dropout": ("p",), "maxout": ("k",),
              "upsample": ("factor",)}


class ImportProblem(ValueError):
    """A file that cannot be imported; the message names the nodes or lines and values.
    ``unreadable``: the file could not be read or is not of its format at all (as opposed to
    a model that uses what cnnc cannot express)."""

    def __init__(self, message: str, unreadable: bool = False):
        super().__init__(message)
        self.unreadable = unreadable


def read_text_file(path: str, not_text: str) -> str:
    """The UTF-8 text of a network file; an unreadable `ImportProblem` when it cannot be
    read, or is not text (``not_text`` ends that message: what was likely given instead)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as err:
        raise ImportProblem(f"cannot read {path}: {err.strerror or err}", True) from None
    except UnicodeDecodeError:
        raise ImportProblem(f"{path} is not text ({not_text})", True) from None


@dataclass
class Layer:
    """One layer of an imported graph."""

    kind: str  # a cnnc layer or merge keyword: conv, relu, add, ...
    inputs: list  # tensor names read
    output: str  # tensor name written
    args: dict = field(default_factory=dict)  # cnnc argument name -> value, defaults left out
    params: dict = field(default_factory=dict)  # leaf key -> NumPy array, in kernel order
    path: str = ""  # where the layer lives in the original graph: "layer1.0.conv1"
    origin: str = ""  # the node or line, for messages: "node /layer1/conv1/Conv"


@dataclass
class Source:
    """What `write_source` returns: ``text`` (the `.cnn` file), ``weights`` (weight-file key
    -> array), ``names`` (original path -> cnnc layer name) and ``notes`` (what was left
    out, in words, for the command to print)."""

    text: str
    weights: dict
    names: dict
    notes: list = field(default_factory=list)


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
KEYWORDS = {"network", "input", "output", "let", "block", "return", "in", "as", "true",
             "false", "same", "valid"}


def identifier(text: str, fallback: str = "t") -> str:
    """``layer1.0/conv1`` -> ``layer1_0_conv1``: a valid cnnc name made from any text."""
    out = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")
    out = re.sub(r"_+", "_", out)
    if not out:
        out = fallback
    if not out[0].isalpha():  # 0 -> conv_0, _x -> conv_x
        out = f"{fallback}_{out.lstrip('_')}"
    if out in KEYWORDS:
        out = f"{out}_"
    return out


def render_value(value) -> str:
    """A Python value as a `.cnn` argument: ``3``, ``[1, 3]``, ``true``, ``0.001``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        if len(value) > 0 and all(v == value[0] for v in value):
            return render_value(value[0])
        return "[" + ", ".join(render_value(v) for v in value) + "]"
    if isinstance(value, float):
        if value == int(value) and abs(value) < 1e15:
            return f"{value:.1f}"
        text = repr(value)
        short = f"{value:.6g}"
        return short if float(short) == value else text
    if isinstance(value, str):
        return value
    return str(int(value))


class Names:
    """Unique names within one scope."""

    def __init__(self, taken=()):
        self.taken = set(taken)

    def claim(self, wanted: str) -> str:
        name = wanted
        k = 2
        while name in self.taken:
            name = f"{wanted}_{k}"
            k += 1
        self.taken.add(name)
        return name


def _call(layer: Layer, consts: dict) -> str:
    """``conv(64, 3, stride=2, pad=1, bias=false)``."""
    args = dict(layer.args)
    if not args:
        return layer.kind
    positional = POSITIONAL.get(layer.kind, ())
    if getattr(layer, "block", None) is not None:  # a block call: every argument in order
        positional = tuple(args)
    parts = []
    keyword = False
    for name, value in args.items():
        shown = consts.get((name, value_key(value)), None) or render_value(value)
        if not keyword and name in positional and positional.index(name) == len(parts):
            parts.append(shown)
        else:
            keyword = True
            parts.append(f"{name}={shown}")
    return f"{layer.kind}({', '.join(parts)})"


def value_key(value):
    return (type(value).__name__, repr(value))


def constants(layers: list) -> dict:
    """``(argument, value) -> constant name`` for float arguments whose value repeats at
    least three times and is not the default (``eps=0.001`` on every batchnorm)."""
    counts: dict = {}
    for layer in layers:
        for name, value in layer.args.items():
            if isinstance(value, float) and not isinstance(value, bool):
                counts[(name, value_key(value))] = counts.get((name, value_key(value)), 0) + 1
    chosen = {}
    names = Names()
    for (name, key), n in sorted(counts.items(), key=lambda item: -item[1]):
        if n >= 3:
            chosen[(name, key)] = names.claim(identifier(name, "c"))
    return chosen


def emit_body(layers: list, binding: dict, results: dict, consts: dict, names,
              returns: str | None = None, width: int = 96):
    """The statements computing ``layers``: one chain per bound tensor. ``binding``: tensor
    -> name, for the tensors already named (inputs, ``in``); it is filled in. ``results``:
    tensor -> output name (top level); ``returns``: the tensor a block returns. ``names``:
    the scope's `Names`. Returns the lines and ``id(layer) -> its name in the scope``
    (``binding.local``, or ``local`` alone in a block's return chain)."""
    producer = {layer.output: layer for layer in layers}
    consumers: dict = {}
    for layer in layers:
        for t in layer.inputs:
            consumers.setdefault(t, []).append(layer)

    def bound(t: str) -> bool:
        readers = consumers.get(t, [])
        return (t in binding or t in results or t == returns or len(readers) != 1
                or readers[0].kind in MERGE_KINDS
                or (returns is None and _crosses(producer.get(t), readers[0])))

    chains = []
    for layer in layers:
        if not bound(layer.output):
            continue
        chain = [layer]
        while (chain[0].kind not in MERGE_KINDS and len(chain[0].inputs) == 1
               and not bound(chain[0].inputs[0])):
            chain.insert(0, producer[chain[0].inputs[0]])
        chains.append((chain, _common_base([item.path for item in chain])))
    last_of_base = {base: chain[-1].output for chain, base in chains}
    lines = []
    full = {}
    block_scope = Names({f"{k}1" for k in MERGE_KINDS})  # a return chain's names
    for chain, base in chains:
        layer = chain[-1]
        t = layer.output
        if t == returns:
            name = None
            scope = block_scope
        else:
            if t in results:
                stem = identifier(results[t], "y")
            elif base and last_of_base[base] != t:  # a branch inside a module
                stem = identifier(f"{base}_{_relative(layer.path, base) or layer.kind}", "t")
            else:
                stem = identifier(base or layer.path or layer.kind, "t")
            name = names.claim(stem)
            block_scope.taken.add(name)
            binding[t] = name
            scope = Names({f"{k}1" for k in MERGE_KINDS})
        prefix = f"{name}." if name else ""
        stages = []
        first = chain[0]
        if first.kind in MERGE_KINDS:
            start = f"{first.kind}({', '.join(binding[i] for i in first.inputs)})"
            full[id(first)] = f"{prefix}{first.kind}1"
            rest = chain[1:]
        else:
            start = binding[first.inputs[0]]
            rest = chain
        for item in rest:
            wanted = identifier(_relative(item.path, base) or item.kind, item.kind)
            if name is None:
                wanted = wanted if wanted not in names.taken else f"{wanted}_"
            local = scope.claim(wanted)
            stages.append(f"{_call(item, consts)} as {local}")
            full[id(item)] = f"{prefix}{local}"
        if name is None:
            lines.append(_wrap(f"return {start}", stages, width))
        elif t in results:
            lines.append(_wrap(f"output {name} = {start}", stages, width))
        else:
            lines.append(_wrap(f"{name} = {start}", stages, width))
    return lines, full


def _crosses(before, after) -> bool:
    """Whether data leaves one top-level module for another between two layers
    (``features.c5`` -> ``classifier.0``; not ``maxpool`` -> ``layer1.0``): the chain is
    cut there, so that each module's layers are bound to its name."""
    if before is None or not before.path or not after.path:
        return False
    a, b = before.path.split("."), after.path.split(".")
    return a[0] != b[0] and (len(a) > 1 or len(b) > 1)


def _common_base(paths: list) -> str:
    """The deepest module path holding every one of ``paths`` (a lone layer: its parent)."""
    split = [p.split(".") for p in paths if p]
    if not split or len(split) != len(paths):
        return ""
    if len(split) == 1:
        return ".".join(split[0][:-1])
    common = []
    for parts in zip(*split):
        if any(part != parts[0] for part in parts):
            break
        common.append(parts[0])
    return ".".join(common)


def _relative(path: str, base: str) -> str:
    if base and path.startswith(base + "."):
        return path[len(base) + 1:]
    return path


def _wrap(head: str, stages: list, width: int = 96) -> str:
    """``head -> s1 -> s2``, broken before ``->`` to keep lines under ``width``."""
    if not stages:
        return head
    line = head
    out = []
    for stage in stages:
        piece = f" -> {stage}"
        if len(line) + len(piece) > width and line.strip():
            out.append(line)
            line = f"    -> {stage}"
        else:
            line += piece
    out.append(line)
    return "\n".join(out)
