"""Training kernels: a forward that keeps what the backward pass needs, and that backward.

``GRADS`` maps every ``Op`` to a pair ``(forward, backward)``:

    y, saved = forward(*inputs, *params, train=True, rng=None, **step.attrs)
    dinputs, dparams = backward(saved, dy)

- ``inputs`` and ``params`` are positional, in the plan step's order (``step.inputs`` then
  ``step.params``), exactly as for the inference kernels in ``runtime/ops.py``.
- ``train`` selects training behaviour: batchnorm normalises with the batch's statistics and
  updates ``running_mean``/``running_var`` in place with ``momentum`` (the running variance
  is the unbiased one, as PyTorch keeps it); dropout draws an inverted mask from ``rng``
  (a NumPy or CuPy ``Generator``) and keeps it. With ``train=False`` both behave as at
  inference and the backward pass is still available.
- ``saved`` is whatever the backward needs (arrays, shapes, masks); nothing else holds it.
- ``backward`` returns a tuple of input gradients (one per data input) and a tuple of
  parameter gradients (one per ``step.params`` entry; ``None`` for batchnorm's running
  statistics, which are buffers, not trainable).
- Gradients have the dtype of the forward's arrays (float32 or float64) and live on the same
  device. Kernels pick their array module from their inputs (``runtime/xp.py``), so the same
  table serves NumPy and, where the CuPy backend does not override an entry, CuPy.
- ``saved_elements(step, input_shapes)`` (per op, in ``SAVED``) gives how many array elements
  the forward keeps per sample, for ``cnnc summary --train``.
"""
