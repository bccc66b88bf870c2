"""Helpers the op families' tests share (tests/ops/test_*.py); the test configuration puts
this folder on the import path."""

from __future__ import annotations

import numpy as np


class StepGraph:
    """The part of runtime/onnx_export's graph builder an emitter uses, for one step: the
    tests call a primitive's ONNX emitter on it and build a model from its nodes."""

    def __init__(self, onnx, step, arrays, opset=17):
        self.onnx = onnx
        self.step = step
        self.arrays = arrays
        self.opset = opset
        self.nodes = []
        self.initializers = [onnx.numpy_helper.from_array(a, k) for k, a in arrays.items()]
        self.taken = set(arrays) | {"x", "y"}

    def temp(self, purpose):
        name = f"{self.step.name}/{purpose}"
        k = 1
        while name in self.taken:
            name = f"{self.step.name}/{purpose}:{k}"
            k += 1
        self.taken.add(name)
        return name

    def node(self, op_type, inputs, output, purpose=None, **attrs):
        name = self.step.name if purpose is None else f"{self.step.name}/{purpose}"
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [output], name=name,
                                                     **attrs))
        return output

    def const(self, purpose, value, dtype):
        name = self.temp(purpose)
        array = np.asarray(value, dtype=dtype)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def reduce(self, op_type, x, axes, output, purpose=None):
        if self.opset >= 18:
            return self.node(op_type, [x, self.const("axes", axes, np.int64)], output,
                             purpose, keepdims=0)
        return self.node(op_type, [x], output, purpose, axes=axes, keepdims=0)


def reference_epilogue(z, b=None, scale=None, act=None, gate=None):
    """What a convolution's fused epilogue makes of its product ``z (N, O, ...)``: times
    ``scale`` ``(O,)``, plus ``b`` ``(O,)``, through ``act`` (the reference activation),
    times ``gate`` ``(N, O)``."""
    from cnnc.ops import conv

    extra = (None,) * (z.ndim - 2)
    if scale is not None:
        z = z * scale[(slice(None),) + extra]
    if b is not None:
        z = z + b[(slice(None),) + extra]
    y = conv.reference_act(z, act)
    return y if gate is None else y * gate[(slice(None), slice(None)) + extra]
