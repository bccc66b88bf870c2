"""Losses: softmax cross-entropy and mean squared error, their values and gradients.

Analytic cases and finite differences need nothing else; PyTorch, where installed, is the
oracle for values and autograd gradients.
"""

import math

import numpy as np
import pytest

from cnnc.runtime.losses import (
    LossInputError,
    accuracy_count,
    mean_squared_error,
    softmax_cross_entropy,
)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


# ---- analytic, no torch ----------------------------------------------------------------------


def test_uniform_logits_give_log_k():
    # softmax of equal logits is 1/K for every class: loss log K, gradient (1/K - onehot)/N
    logits = np.zeros((4, 5))
    labels = np.array([0, 1, 2, 4])
    loss, grad = softmax_cross_entropy(logits, labels)
    assert loss == pytest.approx(math.log(5), rel=1e-12)
    expected = np.full((4, 5), 1 / 5)
    expected[np.arange(4), labels] -= 1
    np.testing.assert_allclose(grad, expected / 4, rtol=1e-12)


def test_confident_right_answer_costs_nothing():
    logits = np.array([[100.0, 0.0, 0.0], [0.0, 0.0, 100.0]])
    loss, grad = softmax_cross_entropy(logits, np.array([0, 2]))
    assert 0 <= loss < 1e-40
    assert np.abs(grad).max() < 1e-40


def test_huge_logits_stay_finite():
    # exp(1e4) overflows; the log-sum-exp after subtracting the row maximum does not
    logits = np.array([[1e4, -1e4, 0.0], [3e4, 3e4, 3e4]])
    loss, grad = softmax_cross_entropy(logits, np.array([1, 0]))
    # row 1: -log softmax = 2e4; row 2: log 3
    assert loss == pytest.approx((2e4 + math.log(3)) / 2, rel=1e-12)
    assert np.isfinite(grad).all()


def test_shift_invariance(rng):
    logits = rng.normal(size=(6, 4))
    labels = rng.integers(0, 4, 6)
    a = softmax_cross_entropy(logits, labels)
    b = softmax_cross_entropy(logits + 1234.5, labels)
    assert a[0] == pytest.approx(b[0], rel=1e-9)
    np.testing.assert_allclose(a[1], b[1], atol=1e-12)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_cross_entropy_gradient_by_finite_differences(rng, smoothing):
    logits = rng.normal(size=(3, 4))
    labels = np.array([3, 0, 1])
    _, grad = softmax_cross_entropy(logits, labels, smoothing)
    h = 1e-6
    numeric = np.zeros_like(logits)
    for idx in np.ndindex(logits.shape):
        up, down = logits.copy(), logits.copy()
        up[idx] += h
        down[idx] -= h
        numeric[idx] = (softmax_cross_entropy(up, labels, smoothing)[0]
                        - softmax_cross_entropy(down, labels, smoothing)[0]) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)
    # the gradient of a mean of softmax rows sums to zero along each row
    np.testing.assert_allclose(grad.sum(axis=1), 0, atol=1e-15)


def test_label_smoothing_on_uniform_logits():
    # target (1 - e) onehot + e/K against uniform probabilities: the loss is still log K
    loss, _ = softmax_cross_entropy(np.zeros((2, 10)), np.array([3, 7]), 0.2)
    assert loss == pytest.approx(math.log(10), rel=1e-12)


def test_float32_in_float32_out(rng):
    logits = rng.normal(size=(5, 3)).astype(np.float32)
    loss, grad = softmax_cross_entropy(logits, np.array([0, 1, 2, 0, 1]))
    assert grad.dtype == np.float32
    assert isinstance(loss, float)


def test_mse_analytic():
    pred = np.array([[1.0, 2.0], [3.0, 4.0]])
    target = np.array([[1.0, 0.0], [3.0, 8.0]])
    loss, grad = mean_squared_error(pred, target)
    assert loss == pytest.approx((0 + 4 + 0 + 16) / 4)
    np.testing.assert_allclose(grad, [[0.0, 1.0], [0.0, -2.0]])  # 2 (p - t) / 4


def test_accuracy_count():
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert accuracy_count(scores, np.array([1, 1, 1])) == 2


@pytest.mark.parametrize("labels, message", [
    (np.array([0, 3]), "label 3 is out of range for 3 classes (0..2)"),
    (np.array([-1, 0]), "label -1 is out of range for 3 classes (0..2)"),
    (np.array([0.0, 1.0]), "labels must be integers, got float64"),
    (np.array([0, 1, 2]), "labels must be [2] for logits [2, 3], got shape [3]"),
])
def test_cross_entropy_refuses(labels, message):
    with pytest.raises(LossInputError) as err:
        softmax_cross_entropy(np.zeros((2, 3)), labels)
    assert message in str(err.value)


def test_cross_entropy_refuses_rank_and_smoothing():
    with pytest.raises(LossInputError,
                       match=r"logits must be \[N, classes\], got shape \[2, 3, 1\]"):
        softmax_cross_entropy(np.zeros((2, 3, 1)), np.array([0, 1]))
    with pytest.raises(LossInputError, match=r"label_smoothing must be in \[0, 1\], got 1.5"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1]), 1.5)


def test_mse_refuses_shape_mismatch():
    with pytest.raises(LossInputError, match=r"shape \[2, 2\], got \[4\]"):
        mean_squared_error(np.zeros((2, 2)), np.zeros(4))


# ---- against PyTorch -------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_cross_entropy_matches_torch(rng, smoothing, dtype, tol):
    torch = pytest.importorskip("torch")
    logits = (rng.normal(size=(16, 10)) * 5).astype(dtype)
    labels = rng.integers(0, 10, 16)
    loss, grad = softmax_cross_entropy(logits, labels, smoothing)
    t = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(t, torch.tensor(labels), label_smoothing=smoothing)
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=tol)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=tol * 10, atol=tol)


@pytest.mark.torch
def test_mse_matches_torch(rng):
    torch = pytest.importorskip("torch")
    pred = rng.normal(size=(8, 3))
    target = rng.normal(size=(8, 3))
    loss, grad = mean_squared_error(pred, target)
    t = torch.tensor(pred, requires_grad=True)
    ref = torch.nn.functional.mse_loss(t, torch.tensor(target))
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-12)
