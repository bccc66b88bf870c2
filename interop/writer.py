"""Writing the `.cnn` file of an imported graph: `write_source` (the design is in
`source.py`; the blocks in `blocks.py`)."""

from __future__ import annotations

from .blocks import find_blocks
from .source import (
    KEYWORDS, Layer, Names, Source, constants, emit_body, identifier, render_value, value_key,
)

__all__ = ["write_source"]


def write_source(network: str, inputs: dict, layers: list, outputs: dict,
                 header: str = "", blocks: bool = True) -> Source:
    """`.cnn` text for ``layers``.

    ``inputs``: input name -> per-sample shape (ints or size symbols); ``outputs``: output
    name -> the tensor it gives out. ``header``: comment lines put at the top. ``blocks``:
    turn repeated modules into blocks (see `find_blocks`).
    """
    consts = constants(layers)
    found, layers = find_blocks(layers, inputs, outputs, consts) if blocks else ([], layers)
    top = Names(KEYWORDS | {b.name for b in found} | set(consts.values()))
    binding = {name: top.claim(identifier(name, "x")) for name in inputs}
    lines = []
    if header:
        lines.extend(f"# {line}".rstrip() for line in header.splitlines())
    lines.append(f"network {identifier(network, 'net')}")
    lines.append("")
    for name, shape in inputs.items():
        dims = ", ".join(str(d) for d in shape)
        lines.append(f"input {binding[name]}: [{dims}]")
    if consts:
        lines.append("")
        for (arg, key), cname in consts.items():
            value = next(layer.args[arg] for layer in _all_layers(layers)
                         if arg in layer.args and value_key(layer.args[arg]) == key)
            lines.append(f"let {cname} = {render_value(value)}")
    for block in found:
        lines.append("")
        lines.extend(block.lines)
    lines.append("")
    results = {}
    for name, t in outputs.items():
        results.setdefault(t, name)
    body, full = emit_body(layers, binding, results, consts, top)
    lines.extend(body)
    given = set(results.values())
    for out_name, t in outputs.items():
        if out_name not in given or t in inputs:
            lines.append(f"output {top.claim(identifier(out_name, 'y'))} = {binding[t]}")
    weights: dict = {}
    names: dict = {}
    for layer in layers:
        _record(layer, full[id(layer)], weights, names)
    return Source("\n".join(lines) + "\n", weights, names)


def _all_layers(layers):
    for layer in layers:
        yield layer
        yield from getattr(layer, "members", ())


def _record(layer: Layer, full: str, weights: dict, names: dict) -> None:
    for leaf, array in layer.params.items():
        weights[f"{full}.{leaf}"] = array
    if layer.path:
        names[layer.path] = full
    block = getattr(layer, "block", None)
    if block is not None:  # a block call: its members' weights under the call's scope
        for member, inner in zip(layer.members, block.inner_names):
            _record(member, f"{full}.{inner}", weights, names)
