"""The errors a running model raises to its caller, each naming what it is about."""

from __future__ import annotations


class InputError(ValueError):
    """An input array that does not fit the model."""


class WeightFileError(ValueError):
    """A weight file that cannot be read or does not match the model."""


class LayerError(ValueError):
    """A kernel refused its arguments at run time; the message names the layer and where
    the `.cnn` file defines it."""

    def __init__(self, message: str, layer: str, where: str):
        super().__init__(message)
        self.layer = layer
        self.where = where


def at_layer(step, file: str, err: Exception) -> LayerError:
    """``err``, raised by the kernel of plan ``step``, as a LayerError that points at the
    step's layer: ``model.cnn:12:5: layer `b1.conv2` (conv): <what the kernel said>``."""
    span = getattr(step, "span", None)
    where = f"{file}:{span.at()}" if span is not None else file
    context = "".join(f" (in block `{block}` called at {call.at()})"
                      for block, call in getattr(step, "trace", ()) if call is not None)
    message = f"{where}: layer `{step.name}` ({step.op.value}){context}: {err}"
    return LayerError(message, step.name, where)
