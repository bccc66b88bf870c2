"""Training kernels: a forward that keeps what the backward pass needs, and that backward.

``GRADS`` maps every ``Op`` to a pair ``(forward, backward)``:

    y, saved = forward(*inputs, *params, train=True, rng=None, **step.attrs)
    dinputs, dparams = backward(saved, dy)

- ``inputs`` and ``params`` are positional, in the plan step's order (``step.inputs`` then
  ``step.params``), exactly as for the inference kernels in ``runtime/ops.py``.
- ``y`` equals the inference kernel's output exactly (same arithmetic, same dtype) whenever
  the op has no training behaviour of its own, and always with ``train=False``.
- ``train`` selects training behaviour: batchnorm normalises with the batch's statistics and
  updates ``running_mean``/``running_var`` in place with ``momentum`` (the running variance
  is the unbiased one, as PyTorch keeps it); dropout draws an inverted mask from ``rng``
  (a NumPy or CuPy ``Generator``) and keeps it. With ``train=False`` both behave as at
  inference and the backward pass is still available. Only dropout with ``train=True`` and
  ``p > 0`` needs ``rng``.
- Training plans keep activations as steps of their own: conv2d and dense raise a
  ``ValueError`` for a fused ``act`` other than None.
- ``saved`` is whatever the backward needs (arrays, shapes, masks); nothing else holds it.
  It may refer to the forward's inputs, its parameters and ``y`` itself rather than copy
  them, so none of these may change in place between the forward and its backward (an
  optimizer steps after the backward pass).
- ``dy`` must have ``y``'s shape; it is cast to the dtype the forward computed in.
- ``backward`` returns a tuple of input gradients (one per data input) and a tuple of
  parameter gradients, one per parameter array the forward was given (conv2d and dense
  without a bias get ``(gW,)``; prelu ``(gW,)``; other activations ``()``); batchnorm always
  gets four, ``(gW, gb, None, None)``: ``None`` for its running statistics, which are
  buffers, not trainable (and for a weight or bias passed as None).
- Every gradient is a new array owned by the caller: it aliases neither ``dy``, nor
  ``saved``, nor another returned gradient, so it may be accumulated into in place.
- Gradients have the dtype the forward computed in (float32 or float64, as the inference
  kernels choose) and live on the same device. Kernels pick their array module from their
  inputs (``runtime/xp.py``), so the same table serves NumPy and, where the CuPy backend
  does not override an entry, CuPy.
- ``saved_elements(step, input_shapes)`` (per op, in ``SAVED``) gives how many array elements
  the forward keeps per sample, for ``cnnc summary --train``. ``input_shapes`` are the
  per-sample shapes of ``step.inputs`` (no batch axis, as ``plan.inputs`` and ``step.shape``
  hold them). It counts what a ``train=True`` forward keeps that grows with the batch,
  whatever its dtype (a bool mask or a uint8 index counts one per element), inputs and
  ``y`` kept by reference included; not the parameters, nor per-channel vectors such as
  batchnorm's ``1/sqrt(var + eps)``. Dropout with ``train=False`` keeps nothing.
"""

from ..ops import Op
from . import activation, conv, linear, norm, pool, tensor

GRADS = {
    Op.CONV2D: (conv.conv2d_forward, conv.conv2d_backward),
    Op.MAXPOOL2D: (pool.maxpool2d_forward, pool.maxpool2d_backward),
    Op.AVGPOOL2D: (pool.avgpool2d_forward, pool.avgpool2d_backward),
    Op.GLOBAL_AVGPOOL: (pool.global_avgpool_forward, pool.global_avgpool_backward),
    Op.GLOBAL_MAXPOOL: (pool.global_maxpool_forward, pool.global_maxpool_backward),
    Op.LRN: (norm.lrn_forward, norm.lrn_backward),
    Op.BATCHNORM: (norm.batchnorm_forward, norm.batchnorm_backward),
    Op.ACTIVATION: (activation.activation_forward, activation.activation_backward),
    Op.SOFTMAX: (activation.softmax_forward, activation.softmax_backward),
    Op.MAXOUT: (activation.maxout_forward, activation.maxout_backward),
    Op.DENSE: (linear.dense_forward, linear.dense_backward),
    Op.FLATTEN: (tensor.flatten_forward, tensor.flatten_backward),
    Op.CONCAT: (tensor.concat_forward, tensor.concat_backward),
    Op.ADD: (tensor.add_forward, tensor.add_backward),
    Op.DROPOUT: (tensor.dropout_forward, tensor.dropout_backward),
}

SAVED = {
    Op.CONV2D: conv.conv2d_saved,
    Op.MAXPOOL2D: pool.maxpool2d_saved,
    Op.AVGPOOL2D: pool.avgpool2d_saved,
    Op.GLOBAL_AVGPOOL: pool.global_avgpool_saved,
    Op.GLOBAL_MAXPOOL: pool.global_maxpool_saved,
    Op.LRN: norm.lrn_saved,
    Op.BATCHNORM: norm.batchnorm_saved,
    Op.ACTIVATION: activation.activation_saved,
    Op.SOFTMAX: activation.softmax_saved,
    Op.MAXOUT: activation.maxout_saved,
    Op.DENSE: linear.dense_saved,
    Op.FLATTEN: tensor.flatten_saved,
    Op.CONCAT: tensor.concat_saved,
    Op.ADD: tensor.add_saved,
    Op.DROPOUT: tensor.dropout_saved,
}

__all__ = ["GRADS", "SAVED"]
