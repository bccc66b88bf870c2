"""The op registry: every op family of cnnc, and the tables derived from them.

One module per op family holds everything about its ops (``ops/base.py`` says what):

    conv        conv                                         -> CONV2D
    linear      dense                                        -> DENSE
    pool        maxpool, avgpool, global pools               -> MAXPOOL2D, AVGPOOL2D, ...
    norm        batchnorm, lrn                               -> BATCHNORM, LRN
    activation  every activation, softmax, maxout            -> ACTIVATION, SOFTMAX, MAXOUT
    tensor      flatten, dropout, and the merges concat, add -> FLATTEN, DROPOUT, CONCAT, ADD
    resize      upsample, conv_transpose, adaptive pools

Adding a family is adding its module to ``FAMILIES``; adding a layer to a family is adding it
to that module's lists. Nothing else names ops: the checker, the lowering, every backend's
tables, the memory plan, ONNX export, the references and the PyTorch oracle all read the
tables below.
"""

from __future__ import annotations

import enum

from . import activation, conv, linear, norm, pool, resize, tensor
from .base import Layer, Merge, Primitive

FAMILIES = (conv, linear, pool, norm, activation, tensor, resize)


def _collect():
    layers: dict[str, Layer] = {}
    merges: dict[str, Merge] = {}
    primitives: dict[str, Primitive] = {}
    for family in FAMILIES:
        for item in getattr(family, "LAYERS", ()):
            table = merges if isinstance(item, Merge) else layers
            if item.name in layers or item.name in merges:
                raise AssertionError(f"layer {item.name!r} is defined twice")
            table[item.name] = item
        for prim in getattr(family, "PRIMITIVES", ()):
            if prim.name in primitives:
                raise AssertionError(f"primitive {prim.name!r} is defined twice")
            primitives[prim.name] = prim
    return layers, merges, primitives


LAYERS, MERGES, PRIMITIVES = _collect()

# What other frameworks call a layer or merge (lower-cased) -> the cnnc name, or
# ``(name, help)``: each family's own ``FOREIGN_NAMES``, for the checker's "did you mean".
FOREIGN_NAMES = {}
for _family in FAMILIES:
    FOREIGN_NAMES.update(getattr(_family, "FOREIGN_NAMES", {}))

# The closed vocabulary between compiler and runtime: one member per primitive, its value the
# primitive's name (``Op.CONV2D.value == "conv2d"``).
Op = enum.Enum("Op", {name.upper(): name for name in PRIMITIVES}, module=__name__)
Op.__doc__ = "The primitive ops a plan is made of (see ops/__init__.py)."


def primitive(op) -> Primitive:
    """The primitive of an ``Op`` member (or of its name)."""
    return PRIMITIVES[op.value if isinstance(op, Op) else op]


def ops_where(flag: str) -> frozenset:
    """The ``Op`` members whose primitive has ``flag`` set (e.g. ``"accepts_out"``)."""
    return frozenset(Op(name) for name, p in PRIMITIVES.items() if getattr(p, flag))


def table(attribute: str, fallback: str | None = None) -> dict:
    """``{Op: primitive.<attribute>}`` for every op, ``<fallback>`` where that is None."""
    out = {}
    for name, p in PRIMITIVES.items():
        value = getattr(p, attribute)
        if value is None and fallback is not None:
            value = getattr(p, fallback)
        out[Op(name)] = value
    return out


__all__ = ["FAMILIES", "FOREIGN_NAMES", "LAYERS", "MERGES", "PRIMITIVES", "Op", "ops_where",
           "primitive", "table"]
