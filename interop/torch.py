"""A cnnc network as a `torch.nn.Module`: ``to_torch(net)``.

    import cnnc
    from cnnc.interop.torch import to_torch

    module = to_torch(cnnc.compile("examples/resnet18.cnn"))
    module.state_dict().keys()     # stem.conv1.weight, ...: cnnc's weight-file keys
    y = module(torch.randn(8, 3, 224, 224))

Each layer with parameters is a small module at its dotted name (``stem.conv1`` is the
submodule ``conv1`` of the submodule ``stem``), holding exactly the parameters and buffers of
cnnc's weight file under the same names (no ``num_batches_tracked``), so ``state_dict()``
saves to and loads from cnnc's weight files as they are. The forward runs the plan's steps
through each primitive's PyTorch mapping (``Primitive.torch``, in the op's family module),
so it is cnnc's forward within float32 rounding, differentiable, movable with ``.to()`` and
traceable by ``torch.compile``. In training mode (``module.train()``) batchnorm uses batch
statistics and dropout and drop_path draw masks, as in PyTorch.

PyTorch is optional: only this module imports it.
"""

from __future__ import annotations

from ..compiler.plan import Plan
from ..ops import Op, primitive

__all__ = ["to_torch", "plan_of", "state_of"]


def plan_of(net) -> Plan:
    """The plan of ``net``: a `Plan`, a built `Model`, a compiled network (``cnnc.compile``)
    or a checked `Network` without errors and with concrete sizes."""
    from ..compiler.graph import Network
    from ..compiler.plan import lower

    if isinstance(net, Plan):
        return net
    inner = getattr(net, "network", net)
    if not isinstance(inner, Network):
        plan = getattr(net, "plan", None)  # a built Model
        if isinstance(plan, Plan):
            return plan
        raise TypeError(f"expected a network (cnnc.compile(...)), a Plan or a Model, got "
                        f"{type(net).__name__}")
    if not inner.ok:
        raise ValueError(f"network {inner.name} has errors; `cnnc check` lists them")
    if inner.symbols:
        raise ValueError(f"network {inner.name} has symbolic sizes "
                         f"{', '.join(inner.symbols)}; compile it with sizes="
                         "{...} giving each a value")
    plan = getattr(net, "plan", None) if net is not inner else None  # compiled: cached
    return plan if isinstance(plan, Plan) else lower(inner)


def state_of(net, seed: int = 0) -> dict:
    """Weight-file key -> NumPy array: a `Model`'s current parameters, else the seeded
    default initialisation that ``build(seed=seed)`` gives."""
    from ..runtime.model import Model

    if isinstance(net, Model):
        return net.state()
    return Model(plan_of(net), backend="numpy", seed=seed).state()


def to_torch(net, params: dict | None = None, seed: int = 0, dtype=None):
    """A `torch.nn.Module` computing ``net``.

    ``net``: a compiled network, a `Plan` or a built `Model` (whose current parameters are
    taken). ``params``: weight-file key -> array (NumPy or torch), every key of the network;
    without it, a `Model`'s parameters or the default initialisation of seed ``seed``, the
    same as ``cnnc.compile(...).build(seed=seed)``. ``dtype``: a torch dtype (default
    ``torch.float32``). The module's forward takes one tensor per input (positionally in the
    order of the inputs, or by name) and returns a tensor, or a dict when the network has
    several outputs.
    """
    import numpy as np
    import torch

    plan = plan_of(net)
    if params is None:
        params = state_of(net, seed)
    from ..runtime.files import weight_problems

    expected = dict(plan.params)
    expected.update(plan.buffers)
    problems = weight_problems(expected, params)
    if problems:
        raise ValueError(f"parameters do not fit network {plan.network}:\n  "
                         + "\n  ".join(problems))
    dtype = dtype or torch.float32
    tensors = {}
    for key, value in params.items():
        if isinstance(value, torch.Tensor):
            tensors[key] = value.detach().to(dtype).clone()
        else:
            tensors[key] = torch.from_numpy(np.array(value)).to(dtype)
    return _module_class()(plan, tensors)


_CLASS = None


def _module_class():
    """`CnncModule`, defined on first use so that importing this module needs no torch."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _define()
    return _CLASS


def _define():
    import torch

    class Scope(torch.nn.Module):
        """One level of a dotted layer name; a layer's parameters live on its own scope,
        whose ``op`` names the step (shown by ``print(module)``)."""

        op = ""

        def extra_repr(self) -> str:
            return self.op

    class CnncModule(torch.nn.Module):
        """A cnnc plan as a PyTorch module; see `to_torch`."""

        def __init__(self, plan: Plan, tensors: dict):
            super().__init__()
            self.plan = plan
            self.network = plan.network
            holders = {}
            keys = [key for step in plan.steps for key in step.params]  # layer by layer
            for key in keys:
                owner, _, leaf = key.rpartition(".")
                holder = holders.get(owner)
                if holder is None:
                    holder = holders[owner] = self._holder(owner)
                if key in plan.params:
                    holder.register_parameter(leaf, torch.nn.Parameter(tensors[key]))
                else:
                    holder.register_buffer(leaf, tensors[key])
            # Per step: the module holding its parameters and their attribute names. Held in
            # a plain list (not registered twice); the holders are this module's children.
            self._steps = []
            for step in plan.steps:
                holder = holders.get(step.name) if step.params else None
                if holder is not None:
                    holder.op = step.op.value
                names = [key.rpartition(".")[2] for key in step.params]
                self._steps.append((step, holder, names))
            self._inputs = list(plan.inputs)

        def _holder(self, dotted: str):
            """The (new or existing) submodule at ``dotted``, made level by level."""
            module = self
            for part in dotted.split("."):
                child = module._modules.get(part)
                if child is None:
                    if hasattr(module, part):
                        raise ValueError(f"layer name {dotted} clashes with the attribute "
                                         f"{part!r} of a PyTorch module")
                    child = Scope()
                    module.add_module(part, child)
                module = child
            return module

        def extra_repr(self) -> str:
            return f"network={self.network}, steps={len(self._steps)}"

        def forward(self, *args, **kwargs):
            values = self._bind(args, kwargs)
            for step, holder, names in self._steps:
                xs = [values[name] for name in step.inputs]
                ws = [getattr(holder, n) for n in names] if holder is not None else []
                values[step.name] = _run(step, xs, ws, self.training)
            outputs = {name: values[buf] for name, buf in self.plan.outputs.items()}
            if len(outputs) == 1:
                return next(iter(outputs.values()))
            return outputs

        def _bind(self, args, kwargs) -> dict:
            names = self._inputs
            if len(args) > len(names):
                raise TypeError(f"network {self.network} takes {len(names)} input"
                                f"{'s' * (len(names) != 1)} ({', '.join(names)}), got "
                                f"{len(args)}")
            values = dict(zip(names, args))
            for name, value in kwargs.items():
                if name not in names:
                    raise TypeError(f"network {self.network} has no input {name!r}; its "
                                    f"inputs are {', '.join(names)}")
                if name in values:
                    raise TypeError(f"input {name!r} given twice")
                values[name] = value
            missing = [n for n in names if n not in values]
            if missing:
                raise TypeError(f"network {self.network} needs input "
                                f"{', '.join(missing)}")
            return values

    return CnncModule


def _run(step, xs, ws, training: bool):
    """One step in PyTorch. Dropout and drop_path draw masks in training, as PyTorch's own
    layers do (the oracle's mapping keeps them the identity, for determinism)."""
    import torch

    if step.op is Op.DROPOUT:
        return torch.nn.functional.dropout(xs[0], float(step.attrs.get("p", 0.5)), training)
    if step.op is Op.DROP_PATH:
        p = float(step.attrs.get("p", 0.0))
        x = xs[0]
        if not training or p == 0.0:
            return x
        keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype,
                           device=x.device).bernoulli_(1.0 - p)
        return x * keep / (1.0 - p)
    return primitive(step.op).torch(step, xs, ws, training)
