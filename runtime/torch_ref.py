"""An independent interpreter of a plan on ``torch.nn.functional``: the oracle the tests
compare whole networks against, and the PyTorch-eager side of the runtime benchmark.

Only tests and benchmarks import this module, and only where PyTorch is installed; cnnc
itself never needs PyTorch.
"""

from __future__ import annotations

from ..compiler.plan import Op, Plan


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

        self.torch = torch
        self.F = torch.nn.functional
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
        torch, F, a = self.torch, self.F, step.attrs
        x = xs[0] if xs else None
        op = step.op
        if op is Op.CONV2D:
            top, bottom, left, right = a["pad"]
            if top == bottom and left == right:
                return F.conv2d(x, ws[0], ws[1] if len(ws) > 1 else None, a["stride"],
                                (top, left), a["dilation"], a["groups"])
            x = F.pad(x, (left, right, top, bottom))
            return F.conv2d(x, ws[0], ws[1] if len(ws) > 1 else None, a["stride"], 0,
                            a["dilation"], a["groups"])
        if op is Op.MAXPOOL2D:
            return F.max_pool2d(x, a["kernel"], a["stride"], a["pad"], a["dilation"],
                                ceil_mode=a["ceil"])
        if op is Op.AVGPOOL2D:
            return F.avg_pool2d(x, a["kernel"], a["stride"], a["pad"], ceil_mode=a["ceil"],
                                count_include_pad=a["count_pad"])
        if op is Op.GLOBAL_AVGPOOL:
            return x.mean(dim=(2, 3), keepdim=True)
        if op is Op.GLOBAL_MAXPOOL:
            return x.amax(dim=(2, 3), keepdim=True)
        if op is Op.LRN:
            return F.local_response_norm(x, a["size"], a["alpha"], a["beta"], a["k"])
        if op is Op.BATCHNORM:
            return F.batch_norm(x, ws[2], ws[3], ws[0], ws[1], self.training,
                                a.get("momentum", 0.1), a["eps"])
        if op is Op.ACTIVATION:
            return self._activation(a, x, ws)
        if op is Op.SOFTMAX:
            return F.softmax(x, dim=1)
        if op is Op.MAXOUT:
            k = a["k"]
            return x.reshape(x.shape[0], x.shape[1] // k, k, *x.shape[2:]).amax(dim=2)
        if op is Op.DENSE:
            return F.linear(x, ws[0], ws[1] if len(ws) > 1 else None)
        if op is Op.FLATTEN:
            return x.flatten(1)
        if op is Op.CONCAT:
            return torch.cat(xs, dim=1)
        if op is Op.ADD:
            return sum(xs[1:], xs[0])
        if op is Op.DROPOUT:
            return x
        raise AssertionError(f"no PyTorch rule for {op}")

    def _activation(self, a, x, ws):
        torch, F = self.torch, self.F
        name = a["name"]
        simple = {"relu": F.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
                  "selu": F.selu, "softplus": F.softplus}
        if name in simple:
            return simple[name](x)
        if name == "leaky_relu":
            return F.leaky_relu(x, 0.01 if a.get("alpha") is None else a["alpha"])
        if name == "elu":
            return F.elu(x, 1.0 if a.get("alpha") is None else a["alpha"])
        if name == "prelu":
            return F.prelu(x, ws[0])
        if name in ("swish", "silu"):
            beta = 1.0 if a.get("beta") is None else a["beta"]
            return x * torch.sigmoid(beta * x)
        raise AssertionError(f"no PyTorch rule for activation {name!r}")
