"""Loss functions for training: each returns the loss and its gradient in one call.

    loss, dlogits = softmax_cross_entropy(logits, labels)      # logits (N, K), labels (N,)
    loss, dpred = mean_squared_error(pred, target)             # any shape, same for both

The loss is a Python float (a mean over the batch, as PyTorch's default ``reduction="mean"``);
the gradient is an array of the input's shape, dtype and device. Both are written against the
array module of their inputs (``runtime/xp.py``), so CuPy arrays stay on the GPU until the
single scalar comes back.
"""

from __future__ import annotations

from ..ops.xp import get_array_module


class LossInputError(ValueError):
    """Arrays that a loss cannot take: wrong ranks or shapes, labels out of range."""


def softmax_cross_entropy(logits, labels, label_smoothing: float = 0.0):
    """Softmax followed by cross-entropy against integer class labels, fused.

    ``logits`` is ``(N, K)``; ``labels`` is ``(N,)`` of integers in ``0 .. K-1``. With label
    smoothing ``e`` the target of each sample is ``(1 - e) * one_hot + e / K``, as in
    ``torch.nn.functional.cross_entropy(label_smoothing=e)``.

    Returns ``(loss, dlogits)``: the mean loss over the batch as a float and
    ``d(loss)/d(logits)``, which is ``(softmax(logits) - target) / N``.

    Stable for any logits: the log-sum-exp is taken after subtracting each row's maximum,
    so ``exp`` never sees a positive argument.
    """
    xp = get_array_module(logits)
    if logits.ndim != 2:
        raise LossInputError(f"cross-entropy: logits must be [N, classes], got shape "
                             f"{list(logits.shape)}")
    n, classes = logits.shape
    labels = xp.asarray(labels)
    if labels.shape != (n,):
        raise LossInputError(f"cross-entropy: labels must be [{n}] for logits "
                             f"{list(logits.shape)}, got shape {list(labels.shape)}")
    if labels.dtype.kind not in "iu":
        raise LossInputError(f"cross-entropy: labels must be integers, got {labels.dtype}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise LossInputError(f"cross-entropy: label_smoothing must be in [0, 1], got "
                             f"{label_smoothing}")
    if n == 0:
        raise LossInputError("cross-entropy: the batch is empty")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= classes:
        bad = low if low < 0 else high
        raise LossInputError(f"cross-entropy: label {bad} is out of range for {classes} "
                             f"classes (0..{classes - 1})")

    shifted = logits - logits.max(axis=1, keepdims=True)  # (N, K), every entry <= 0
    exps = xp.exp(shifted)
    sums = exps.sum(axis=1, keepdims=True)  # (N, 1), >= 1
    log_probs = shifted - xp.log(sums)  # (N, K)
    rows = xp.arange(n)
    picked = log_probs[rows, labels]  # (N,)
    if label_smoothing:
        per_sample = ((1.0 - label_smoothing) * picked
                      + (label_smoothing / classes) * log_probs.sum(axis=1))
    else:
        per_sample = picked
    loss = -float(per_sample.sum()) / n

    grad = exps / sums  # softmax, (N, K)
    grad[rows, labels] -= 1.0 - label_smoothing
    if label_smoothing:
        grad -= label_smoothing / classes
    grad *= 1.0 / n
    return loss, grad


def mean_squared_error(pred, target):
    """``mean((pred - target)^2)`` over every element, as ``torch.nn.MSELoss()``.

    Returns ``(loss, dpred)`` with ``dpred = 2 * (pred - target) / pred.size``.
    """
    xp = get_array_module(pred, target)
    target = xp.asarray(target, dtype=pred.dtype)
    if tuple(target.shape) != tuple(pred.shape):
        raise LossInputError(f"mean squared error: target must have the prediction's shape "
                             f"{list(pred.shape)}, got {list(target.shape)}")
    if pred.size == 0:
        raise LossInputError("mean squared error: the prediction is empty")
    diff = pred - target
    loss = float((diff * diff).sum()) / pred.size
    diff *= 2.0 / pred.size
    return loss, diff


def accuracy_count(scores, labels) -> int:
    """How many rows of ``scores`` (N, K) have their largest entry at the row's label."""
    xp = get_array_module(scores)
    return int((scores.argmax(axis=1) == xp.asarray(labels)).sum())
