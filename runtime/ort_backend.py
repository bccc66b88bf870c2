"""Inference through ONNX Runtime: ``cnnc.compile(...).build(backend="onnxruntime")``.

The model keeps its parameters as NumPy arrays (so ``load``, ``save`` and ``state`` work as
on the NumPy backend); inference exports the plan with those parameters
(runtime/onnx_export.py) and runs the graph in an ONNX Runtime session, built on the first
call and again after the parameters change. Training is not offered: ``forward`` and
``backward`` stay on the NumPy and CuPy backends and say so.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

__all__ = ["NAME", "OrtInference", "TRAINING_REFUSED"]

NAME = "onnxruntime"
TRAINING_REFUSED = ("the onnxruntime backend runs inference only; training stays on the "
                    "NumPy and CuPy backends: build with backend='numpy' (or 'cupy'), "
                    "load the same weights, and train there")


class OrtInference:
    """Stands where the NumPy executor stands in a `Model`: ``run(inputs, params)`` and
    ``invalidate()``."""

    def __init__(self, plan, dtype):
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise RuntimeError("backend onnxruntime needs the onnxruntime package: "
                               "pip install onnxruntime") from None
        if np.dtype(dtype) != np.float32:
            raise ValueError(f"backend onnxruntime runs float32 only (the exported graph's "
                             f"type), not {np.dtype(dtype)}")
        self.plan = plan
        self._session = None

    def invalidate(self) -> None:
        """Forget the session (the parameters changed); the next call exports again."""
        self._session = None

    def session(self, params: dict):
        if self._session is None:
            import onnxruntime as ort

            from .onnx_export import export

            proto = export(self.plan, params)
            options = ort.SessionOptions()
            options.log_severity_level = 3
            self._session = ort.InferenceSession(proto.SerializeToString(), options,
                                                 providers=["CPUExecutionProvider"])
        return self._session

    def run(self, inputs: dict, params: dict) -> dict:
        session = self.session(params)
        feeds = {name: np.ascontiguousarray(value, dtype=np.float32)
                 for name, value in inputs.items()}
        try:
            values = session.run(None, feeds)
        except Exception as err:  # onnxruntime's own exception types
            raise InputError(f"ONNX Runtime refused the inputs: {err}") from None
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, values))
