"""The training loop: a network learns, checkpoints resume exactly, a NaN loss stops
training with the last good checkpoint kept, Ctrl-C saves, data that does not fit is refused
before any training with the expected and actual values."""

import json
import os
import signal

import numpy as np
import pytest

import cnnc
from cnnc.runtime import optim, train
from cnnc.runtime.losses import softmax_cross_entropy

TINY = """\
network tiny
input x: [1, 4, 4]
output y = x -> conv(4, 3, pad=1, bias=false) -> batchnorm -> relu -> maxpool(2)
    -> flatten -> dropout(0.2) -> dense(3)
"""


def build(source=TINY, seed=0, dtype="float64"):
    return cnnc.compile(source).build(backend="numpy", seed=seed, dtype=dtype)


def quadrants(n, seed=0):
    """[n, 1, 4, 4] noise with one bright 2x2 quadrant; the label is the quadrant (0..2)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 0.3, size=(n, 1, 4, 4))
    for i, label in enumerate(y):
        r, c = divmod(int(label), 2)
        x[i, 0, 2 * r:2 * r + 2, 2 * c:2 * c + 2] += 2.0
    return x, y


def dataset(n_train=60, n_test=30):
    x, y = quadrants(n_train + n_test)
    return train.Dataset("quadrants", x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def trainer_for(model, checkpoint=None, kind="adam"):
    opt = optim.make_optimizer(kind, model, lr=0.01)
    schedule = optim.Schedule(0.01, "step", step_size=2, gamma=0.5)
    return train.Trainer(model, opt, schedule=schedule, batch_size=16, seed=3,
                         checkpoint=checkpoint)


def assert_same_params(a, b):
    assert set(a.params) == set(b.params)
    for key in a.params:
        np.testing.assert_array_equal(a.params[key], b.params[key], err_msg=key)


# ---- learning -------------------------------------------------------------------------------


def test_loss_on_one_batch_goes_to_zero():
    model = build()
    x, y = quadrants(12, seed=5)
    opt = optim.Adam(model, lr=0.05)
    first = None
    for _ in range(150):
        logits = model.forward(x, train=True, logits=True)
        loss, dlogits = softmax_cross_entropy(logits, y)
        first = loss if first is None else first
        model.backward(dlogits)
        opt.step()
    assert first > 0.5
    assert loss < 0.02


def test_fit_learns_and_reports_each_epoch():
    model = build()
    history = trainer_for(model).fit(dataset(), epochs=4)
    assert [h.epoch for h in history] == [1, 2, 3, 4]
    assert [h.lr for h in history] == [0.01, 0.01, 0.005, 0.005]
    assert history[-1].train_loss < history[0].train_loss
    assert history[-1].test_accuracy >= 0.9
    assert all(h.images_per_second > 0 for h in history)


def test_digits_two_epochs_well_above_chance():
    model = cnnc.compile(os.path.join(os.path.dirname(__file__), "..", "..", "examples",
                                      "digits.cnn")).build(backend="numpy", dtype="float32")
    data = train.load_digits()
    assert data.x_train.shape == (1437, 1, 8, 8)
    assert data.x_test.shape == (360, 1, 8, 8)
    assert 0.0 <= data.x_train.min() and data.x_train.max() == 1.0
    # stratified: each class keeps its share of the test split (within one sample)
    everything = np.concatenate([data.y_train, data.y_test])
    for label in range(10):
        share = (everything == label).mean() * 360
        assert abs((data.y_test == label).sum() - share) <= 1
    opt = optim.Adam(model, lr=1e-3)
    history = train.Trainer(model, opt, batch_size=32).fit(data, epochs=2)
    assert history[-1].test_accuracy > 0.6  # chance is 0.1


# ---- checkpoints ------------------------------------------------------------------------------


def test_resume_equals_an_uninterrupted_run(tmp_path):
    data = dataset()
    straight = build()
    expected = trainer_for(straight).fit(data, epochs=4)

    ckpt = tmp_path / "run.ckpt.npz"
    first = build()
    trainer_for(first, ckpt).fit(data, epochs=2)
    resumed = build(seed=99)  # different initial weights: the checkpoint overrides them
    trainer = trainer_for(resumed, ckpt)
    trainer.restore(ckpt)
    assert trainer.epoch == 2
    history = trainer.fit(data, epochs=4)
    assert_same_params(resumed, straight)
    for a, b in zip(history, expected):
        assert (a.epoch, a.lr, a.train_loss, a.train_accuracy, a.test_accuracy) == (
            b.epoch, b.lr, b.train_loss, b.train_accuracy, b.test_accuracy)


def test_interrupt_mid_epoch_saves_and_resumes_exactly(tmp_path):
    data = dataset()
    straight = build()
    trainer_for(straight).fit(data, epochs=3)

    class CtrlC(train.Progress):
        def step(self, done, steps, *rest):
            if self.epoch == 2 and done == 2:
                signal.raise_signal(signal.SIGINT)

        def start_epoch(self, epoch, epochs, steps):
            self.epoch = epoch

    ckpt = tmp_path / "run.ckpt.npz"
    model = build()
    with pytest.raises(train.TrainingInterrupted) as err:
        trainer_for(model, ckpt).fit(data, epochs=3, progress=CtrlC())
    assert (err.value.epoch, err.value.step) == (1, 2)
    assert str(err.value) == f"interrupted at epoch 2, step 2; checkpoint saved to {ckpt}"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    meta = train.read_checkpoint(ckpt).meta
    assert (meta["epoch"], meta["step"]) == (1, 2)

    resumed = build(seed=5)
    trainer = trainer_for(resumed, ckpt)
    trainer.restore(ckpt)
    trainer.fit(data, epochs=3)
    assert_same_params(resumed, straight)


def test_checkpoint_file(tmp_path):
    ckpt = tmp_path / "c.npz"
    model = build()
    trainer_for(model, ckpt, kind="sgd").fit(dataset(), epochs=1)
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]  # no temporary file left behind
    with np.load(ckpt, allow_pickle=False) as f:
        names = set(f.files)
        assert str(f["format"]) == train.CHECKPOINT_FORMAT
        meta = json.loads(str(f["meta"]))
    assert {f"model/{k}" for k in model.params} <= names
    assert "model/y.batchnorm1.running_var" in names
    assert meta["epoch"] == 1 and meta["optimizer"]["kind"] == "sgd"
    assert meta["data"]["train"] == 60


def test_restore_refuses_and_changes_nothing(tmp_path):
    ckpt = tmp_path / "c.npz"
    trainer_for(build(), ckpt).fit(dataset(), epochs=1)

    weights = tmp_path / "w.npz"
    build().save(weights)
    with pytest.raises(train.CheckpointError, match="is not a cnnc training checkpoint"):
        trainer_for(build(), ckpt).restore(weights)

    other = build(TINY.replace("dense(3)", "dense(3) as head"))
    with pytest.raises(train.CheckpointError) as err:
        trainer_for(other, ckpt).restore(ckpt)
    assert "missing y.head.weight [3, 16]" in str(err.value)
    assert "unexpected y.dense1.weight [3, 16]" in str(err.value)

    sgd_model = build()
    before = {k: v.copy() for k, v in sgd_model.params.items()}
    sgd = trainer_for(sgd_model, kind="sgd")
    with pytest.raises(train.CheckpointError, match="saved optimizer is 'adam', this one is 'sgd'"):
        sgd.restore(ckpt)
    assert sgd.epoch == 0
    for k, v in before.items():
        np.testing.assert_array_equal(sgd_model.params[k], v)

    with pytest.raises(train.CheckpointError, match="trained in float64; this model computes "
                                                     "in float32"):
        trainer_for(build(dtype="float32"), ckpt).restore(ckpt)

    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(train.CheckpointError, match="cannot read checkpoint"):
        train.read_checkpoint(tmp_path / "junk.npz")


def test_resume_on_other_data_is_refused(tmp_path):
    ckpt = tmp_path / "c.npz"
    trainer_for(build(), ckpt).fit(dataset(), epochs=1)
    trainer = trainer_for(build(), ckpt)
    trainer.restore(ckpt)
    with pytest.raises(train.CheckpointError, match="trained on other data"):
        trainer.fit(dataset(n_train=50), epochs=2)


# ---- a non-finite loss -------------------------------------------------------------------------


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    ckpt = tmp_path / "c.npz"
    model = build()

    class Poison(train.Progress):
        def start_epoch(self, epoch, epochs, steps):
            self.epoch = epoch

        def step(self, done, *rest):
            if self.epoch == 2 and done == 1:
                model.params["y.dense1.weight"][0, 0] = np.nan

    trainer = trainer_for(model, ckpt)
    with pytest.raises(train.TrainingDiverged) as err:
        trainer.fit(dataset(), epochs=4, progress=Poison())
    assert (err.value.epoch, err.value.step) == (2, 2)
    assert str(err.value) == (
        f"the loss became nan at epoch 2, step 2; training stopped (the last good checkpoint, "
        f"{ckpt}, holds the state after epoch 1). Try a smaller learning rate.")
    assert err.value.checkpoint == str(ckpt)
    saved = train.read_checkpoint(ckpt)
    assert saved.meta["epoch"] == 1 and saved.meta["step"] == 0
    assert np.isfinite(saved.model["y.dense1.weight"]).all()


def test_nan_before_any_checkpoint():
    model = build()
    model.params["y.dense1.bias"][:] = np.inf
    with pytest.raises(train.TrainingDiverged, match=r"at epoch 1, step 1; training stopped "
                                                     r"\(no checkpoint path was set\)"):
        trainer_for(model).fit(dataset(), epochs=1)


# ---- data -------------------------------------------------------------------------------------


def save_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_npz_with_and_without_test_split(tmp_path):
    x, y = quadrants(50)
    both = train.load_npz(save_npz(tmp_path / "a.npz", x=x[:40], y=y[:40], x_test=x[40:],
                                   y_test=y[40:]))
    assert (len(both.x_train), len(both.x_test)) == (40, 10)
    split = train.load_npz(save_npz(tmp_path / "b.npz", x=x, y=y.astype(np.float32)))
    assert (len(split.x_train), len(split.x_test)) == (40, 10)
    assert split.y_train.dtype == np.int64
    train.check_data(build().plan, split)


REFUSALS = [
    (dict(x="x", y=None), "{p}: missing `y`; expected arrays x [N, C, H, W] and y [N] "
                          "(optionally x_test and y_test), found: x"),
    (dict(y="y"), "{p}: missing `x`; expected arrays x [N, C, H, W] and y [N] (optionally "
                  "x_test and y_test), found: y"),
    (dict(x="x", y="y", x_test="x"), "{p}: has `x_test` but not `y_test`; give both or neither"),
    (dict(x="x", y="half"), "{p}: `y` must hold integer class labels; y[1] is 0.5 "
                            "(dtype float64)"),
    (dict(x="x", y="text"), "{p}: `y` must hold integer class labels, got dtype <U1"),
    (dict(x="x", y="short"), "{p}: x has 30 samples but y has 29 labels"),
    (dict(x="x", y="matrix"), "{p}: `y` must be [N] class labels, got shape [30, 1]"),
    (dict(x="nan", y="y"), "{p}: `x` holds a non-finite value, nan at [3, 0, 1, 2]"),
    (dict(x="x", y="single"), "{p}: cannot split into stratified train and test sets: class "
                              "7 has 1 example (at least 2 needed); give x_test and y_test"),
]


@pytest.mark.parametrize("keys, message", REFUSALS)
def test_npz_refusals(tmp_path, keys, message):
    x, y = quadrants(30)
    nan = x.copy()
    nan[3, 0, 1, 2] = np.nan
    single = y.copy()
    single[0] = 7
    half = y.astype(float)
    half[1] = 0.5
    values = {"x": x, "y": y, "nan": nan, "half": half, "single": single,
              "short": y[:-1], "matrix": y[:, None], "text": np.array(["a"] * 30)}
    path = save_npz(tmp_path / "d.npz", **{k: values[v] for k, v in keys.items() if v})
    with pytest.raises(train.DataError) as err:
        train.load_npz(path)
    assert str(err.value).startswith(message.format(p=path))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_labels_of_every_width_without_a_warning(tmp_path, dtype):
    # float16 cannot hold 2**53, the largest exact label: the check compares in float64
    import warnings

    x, y = quadrants(30)
    for labels, ok in ((y.astype(dtype), True), (np.array([], dtype=dtype), False)):
        path = save_npz(tmp_path / "d.npz", x=x, y=labels)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            if ok:
                data = train.load_npz(path)
                assert data.y_train.dtype == np.int64
            else:
                with pytest.raises(train.DataError):
                    train.load_npz(path)


def test_unreadable_npz(tmp_path):
    with pytest.raises(train.DataError, match="cannot read data file .*nothing.npz"):
        train.load_npz(tmp_path / "nothing.npz")


def test_labels_out_of_range_are_refused():
    data = dataset()
    data.y_train[7] = 3
    with pytest.raises(train.DataError) as err:
        train.check_data(build().plan, data)
    assert str(err.value) == ("label 3 (y[7] in quadrants) is out of range for output `y` of "
                              "tiny, which scores 3 classes: labels must be 0..2")
    data = dataset()
    data.y_test[4] = -1
    with pytest.raises(train.DataError, match=r"label -1 \(y_test\[4\] in quadrants\)"):
        train.check_data(build().plan, data)


def test_sample_shape_is_refused():
    data = dataset()
    data.x_train = data.x_train[:, :, :3, :]
    with pytest.raises(train.DataError) as err:
        train.check_data(build().plan, data)
    assert str(err.value) == ("input `x` of tiny expects [N, 1, 4, 4]; x from quadrants is "
                              "[60, 1, 3, 4]")


@pytest.mark.parametrize("source, message", [
    ("network two\ninput a: [1, 4, 4]\ninput b: [1, 4, 4]\n"
     "output y = concat(a, b) -> flatten -> dense(3)\n",
     "training needs a network with one input; two has 2: a, b"),
    ("network heads\ninput x: [1, 4, 4]\nf = x -> flatten\n"
     "output p = f -> dense(3)\noutput q = f -> dense(2)\n",
     "training needs a network with one output; heads has 2: p, q"),
    ("network maps\ninput x: [1, 4, 4]\noutput y = x -> conv(3, 1)\n",
     "training needs an output of class scores [classes]; output `y` of maps is [3, 4, 4] "
     "(add flatten and dense)"),
])
def test_network_shapes_are_refused(source, message):
    with pytest.raises(train.DataError) as err:
        train.check_data(build(source).plan, dataset())
    assert str(err.value) == message


def test_softmax_output_trains_on_its_logits():
    # a network that ends in softmax: training sees the softmax's input
    model = build(TINY.replace("dense(3)", "dense(3) -> softmax"))
    history = trainer_for(model).fit(dataset(), epochs=3)
    assert history[-1].test_accuracy >= 0.9


def test_model_exposes_its_dropout_generator():
    model = build()
    assert hasattr(model, "rng")


def test_batch_bounds():
    assert train.batch_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert train.batch_bounds(9, 4) == [(0, 4), (4, 9)]  # no batch of one sample
    assert train.batch_bounds(1, 4) == [(0, 1)]
    assert train.batch_bounds(8, 8) == [(0, 8)]


def test_last_batch_of_one_joins_the_previous_one():
    # 33 samples in batches of 16: 16 and 17, so the batchnorm after dense never sees one
    model = build("network bn\ninput x: [1, 4, 4]\noutput y = x -> flatten -> dense(3) "
                  "-> batchnorm\n")
    data = dataset(n_train=33, n_test=6)
    history = trainer_for(model).fit(data, epochs=1)
    assert history[0].train_accuracy >= 0
