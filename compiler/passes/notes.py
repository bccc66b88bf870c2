"""Where a shape came from, for the notes of shape diagnostics."""

from __future__ import annotations

from ...ops import LAYERS
from ..graph import Network
from ..symbolic import shape_text


def producer(net: Network, name: str) -> str:
    """The node that last changed the shape: walk back through shape-keeping layers."""
    node = net.nodes[name]
    while node.op in LAYERS and not LAYERS[node.op].changes_shape and node.inputs:
        node = net.nodes[node.inputs[0]]
    return node.name


def origin_note(net: Network, label: str, name: str) -> str:
    """``x is [3, 8, 8], from conv(8, 3) at 2:10``: node ``name``'s shape and its producer."""
    node = net.nodes[name]
    source = net.nodes[producer(net, name)]
    shape = shape_text(node.shape) if node.shape is not None else "?"
    origin = source.describe() if source.op != "input" else f"input `{source.name}`"
    return f"{label} is {shape}, from {origin}"
