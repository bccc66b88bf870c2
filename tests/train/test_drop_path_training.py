"""drop_path in the training loop: its per-sample masks come from the model's generator, so
a run is reproducible from its seed, and a checkpoint (which saves that generator, as for
dropout) resumes exactly."""

import numpy as np

import cnnc
from cnnc.runtime import optim, train

RESIDUAL = """\
network residual
input x: [1, 4, 4]
a = x -> conv(4, 3, pad=1) -> relu
b = a -> conv(4, 3, pad=1) -> drop_path(0.5)
output y = add(a, b) -> maxpool(2) -> flatten -> dense(3)
"""


def build(seed=0):
    return cnnc.compile(RESIDUAL).build(backend="numpy", seed=seed, dtype="float64")


def dataset(n_train=48, n_test=16):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n_train + n_test)
    x = rng.normal(0, 0.3, size=(n_train + n_test, 1, 4, 4))
    for i, label in enumerate(y):
        r, c = divmod(int(label), 2)
        x[i, 0, 2 * r:2 * r + 2, 2 * c:2 * c + 2] += 2.0
    return train.Dataset("quadrants", x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def trainer_for(model, checkpoint=None):
    opt = optim.make_optimizer("adam", model, lr=0.01)
    return train.Trainer(model, opt, batch_size=16, seed=3, checkpoint=checkpoint)


def test_training_is_reproducible_from_the_seed():
    data = dataset()
    one, two = build(), build()
    trainer_for(one).fit(data, epochs=2)
    trainer_for(two).fit(data, epochs=2)
    for key in one.params:
        np.testing.assert_array_equal(one.params[key], two.params[key], err_msg=key)


def test_the_masks_matter():
    """Another generator state, other masks, other weights: drop_path drew from it."""
    data = dataset()
    one, other = build(), build()
    other.rng = np.random.default_rng(12345)
    trainer_for(one).fit(data, epochs=1)
    trainer_for(other).fit(data, epochs=1)
    assert any(not np.array_equal(one.params[k], other.params[k]) for k in one.params)


def test_resume_equals_an_uninterrupted_run(tmp_path):
    data = dataset()
    straight = build()
    trainer_for(straight).fit(data, epochs=4)
    ckpt = tmp_path / "run.ckpt.npz"
    trainer_for(build(), ckpt).fit(data, epochs=2)
    resumed = build(seed=99)
    trainer = trainer_for(resumed, ckpt)
    trainer.restore(ckpt)
    trainer.fit(data, epochs=4)
    for key in straight.params:
        np.testing.assert_array_equal(resumed.params[key], straight.params[key], err_msg=key)
