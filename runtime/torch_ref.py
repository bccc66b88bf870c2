"""An independent interpreter of a plan in PyTorch: the oracle the tests compare whole
networks against, and the PyTorch-eager side of the runtime benchmark. Each step runs its
primitive's PyTorch mapping (``Primitive.torch``, in the op's family module).

Only tests and benchmarks import this module, and only where PyTorch is installed; cnnc
itself never needs PyTorch.
"""

from __future__ import annotations

from ..compiler.plan import Plan
from ..ops import primitive


class TorchPlan:
    """``TorchPlan(plan, params)(inputs)``: run ``plan`` eagerly in PyTorch.

    ``params`` maps weight-file keys to NumPy arrays; they are converted once. ``inputs``
    maps input names to tensors; the result maps output names to tensors. With
    ``training=True`` batchnorm uses batch statistics and updates the running ones
    (dropout stays the identity, so results are deterministic).
    """

    def __init__(self, plan: Plan, params: dict, dtype=None, training: bool = False):
        self.training = training
        import torch

        self.plan = plan
        self.params = {k: torch.from_numpy(v).to(dtype) if dtype else torch.from_numpy(v)
                       for k, v in params.items()}

    def __call__(self, inputs: dict) -> dict:
        values = dict(inputs)
        for step in self.plan.steps:
            xs = [values[i] for i in step.inputs]
            ws = [self.params[k] for k in step.params]
            values[step.name] = self._step(step, xs, ws)
        return {name: values[buf] for name, buf in self.plan.outputs.items()}

    def _step(self, step, xs, ws):
        return primitive(step.op).torch(step, xs, ws, self.training)
