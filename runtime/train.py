"""Training a classifier: data sets, the fit loop, checkpoints that resume exactly.

    import cnnc
    from cnnc.runtime import optim, train

    model = cnnc.compile("examples/digits.cnn").build(backend="numpy", dtype="float32")
    data = train.load_data("digits")            # or "path/to/data.npz"
    train.check_data(model.plan, data)          # refuses data that does not fit, before training
    opt = optim.Adam(model, lr=1e-3)
    trainer = train.Trainer(model, opt, batch_size=32, seed=0, checkpoint="digits.ckpt.npz")
    history = trainer.fit(data, epochs=10)      # one EpochStats per epoch

``fit`` takes a `Dataset` (arrays in memory: digits, an .npz file) or any streamed `Source`
(``cnnc.data.images.ImageFolder`` reads an image folder from disk batch by batch); both give
the trainer ``(x, y)`` batches of the same seeded shuffle.

Each step draws a mini-batch from a seeded shuffle, runs ``model.forward(x, train=True,
logits=True)``, takes the fused softmax cross-entropy, back-propagates and lets the optimizer
update the parameters in place. After each epoch the test split is scored by inference
(``model(x)``) and, when a checkpoint path is set, everything needed to go on is written to
it atomically: parameters, buffers, optimizer state, schedule, epoch, step and every
generator's state. ``Trainer.restore`` takes such a file back, and the run then continues
exactly as if it had never stopped.

A non-finite loss stops training with `TrainingDiverged` (naming the epoch and the step);
the checkpoint on disk is then still the last good one. Ctrl-C (SIGINT) is honoured at the
next step boundary: the checkpoint is written there and `TrainingInterrupted` raised. A
second Ctrl-C stops at once without saving.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np

from .files import NUMBERS, ArrayFileError, NpzFile, kind_words, shown, write_atomically
from .losses import accuracy_count, softmax_cross_entropy
from .model import finite_as
from .optim import DECAY_CHOICES, OPTIMIZERS, SCHEDULES, Optimizer, OptimizerStateError, Schedule

CHECKPOINT_FORMAT = "cnnc-checkpoint/1"


class DataError(ValueError):
    """A data set that cannot train this model; the message gives expected and actual."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit this model or run."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite. ``checkpoint`` is the last good checkpoint on disk
    (None when none was written yet)."""

    def __init__(self, message: str, epoch: int, step: int, checkpoint: str | None):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.checkpoint = checkpoint


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C: the state after the last whole step was saved to ``checkpoint`` (None when
    the trainer has no checkpoint path)."""

    def __init__(self, message: str, epoch: int, step: int, checkpoint: str | None):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.checkpoint = checkpoint


# ---- data -------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """Training and test arrays as NumPy arrays: ``x`` as [N, ...] floats, ``y`` as [N] ints."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def train_size(self) -> int:
        return int(len(self.x_train))

    @property
    def test_size(self) -> int:
        return int(len(self.x_test))

    def check(self, plan) -> None:
        """`check_data`: refuse arrays that do not fit ``plan``'s network."""
        check_data(plan, self)

    def fingerprint(self) -> str:
        """A digest of every array, so a checkpoint can tell whether it is resumed on the
        data it was trained on."""
        h = hashlib.blake2b(digest_size=16)
        for arr in (self.x_train, self.y_train, self.x_test, self.y_test):
            arr = np.ascontiguousarray(arr)
            h.update(f"{arr.dtype.str}{arr.shape}".encode())
            h.update(arr.tobytes())
        return h.hexdigest()


def _split(x, y, origin: str):
    """The fixed stratified 80/20 split (scikit-learn's, random_state=0)."""
    try:
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise DataError("splitting a data set needs scikit-learn: pip install 'cnnc[train]'; "
                        "or give x_test and y_test in the file") from None
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < 2:
        rare = classes[counts.argmin()]
        raise DataError(f"{origin}: cannot split into stratified train and test sets: class "
                        f"{rare} has {counts.min()} example (at least 2 needed); give x_test "
                        "and y_test in the file")
    try:
        x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y,
                                                  random_state=0)
    except ValueError as err:
        raise DataError(f"{origin}: cannot split into stratified train and test sets: "
                        f"{err}; give x_test and y_test in the file") from None
    return x_tr, x_te, y_tr, y_te


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits: 1,797 images [1, 8, 8] scaled from 0..16 to
    [0, 1], ten classes, split 80/20 (1,437 / 360) stratified with random_state=0."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError:
        raise DataError("--data digits needs scikit-learn: pip install 'cnnc[train]'") from None
    x, y = sk_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 1, 8, 8)
    y = y.astype(np.int64)
    x_tr, x_te, y_tr, y_te = _split(x, y, "digits")
    return Dataset("digits", x_tr, y_tr, x_te, y_te)


_LARGEST_LABEL = 2 ** 53  # beyond it a float label is no longer exact


def _labels(y, key: str, origin: str) -> np.ndarray:
    if y.ndim != 1:
        raise DataError(f"{origin}: `{key}` must be [N] class labels, got shape {list(y.shape)}")
    if y.dtype.kind in "iu":
        if y.size and y.dtype.kind == "u" and y.dtype.itemsize >= 8:
            i = int(np.argmax(y))
            if int(y[i]) > np.iinfo(np.int64).max:
                raise DataError(f"{origin}: `{key}` holds {int(y[i])} at {key}[{i}] (dtype "
                                f"{y.dtype}), too large for a class label")
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        wide = y.astype(np.float64)  # 2**53 is past float16's range: compare in float64
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(wide) & (wide == np.round(wide)) & (np.abs(wide) <= _LARGEST_LABEL)
        if whole.all():
            return y.astype(np.int64)
        i = int(np.argmin(whole))
        raise DataError(f"{origin}: `{key}` must hold integer class labels; {key}[{i}] is "
                        f"{y[i].item()} (dtype {y.dtype})")
    raise DataError(f"{origin}: `{key}` must hold integer class labels, got dtype {y.dtype}")


def _features(x, key: str, origin: str) -> np.ndarray:
    if x.dtype.kind not in "iuf":
        raise DataError(f"{origin}: `{key}` must hold numbers, got dtype {x.dtype}")
    if x.ndim < 2:
        raise DataError(f"{origin}: `{key}` must be [N, C, H, W] samples, got shape "
                        f"{list(x.shape)}")
    if x.dtype.kind == "f" and x.size and not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        where = ", ".join(str(int(i)) for i in bad)
        raise DataError(f"{origin}: `{key}` holds a non-finite value, {x[tuple(bad)].item()} at "
                        f"[{where}]")
    return x


def load_npz(path) -> Dataset:
    """An .npz file with ``x`` [N, C, H, W] and integer labels ``y`` [N], optionally
    ``x_test`` and ``y_test``; without them the stratified 80/20 split is used."""
    path = os.fspath(path)
    try:
        with NpzFile(path, kinds=_ANY_BUT_OBJECTS) as npz:
            _check_data_headers(npz.members, path)
            arrays = npz.read([k for k in DATA_KEYS if k in npz.members])
    except ArrayFileError as err:
        raise DataError(f"cannot read data file {path}: {err}") from None
    x = _features(arrays["x"], "x", path)
    y = _labels(arrays["y"], "y", path)
    if len(x) != len(y):
        raise DataError(f"{path}: x has {len(x)} samples but y has {len(y)} labels")
    if "x_test" in arrays:
        x_te = _features(arrays["x_test"], "x_test", path)
        y_te = _labels(arrays["y_test"], "y_test", path)
        if len(x_te) != len(y_te):
            raise DataError(f"{path}: x_test has {len(x_te)} samples but y_test has "
                            f"{len(y_te)} labels")
        x_tr, y_tr = x, y
    else:
        x_tr, x_te, y_tr, y_te = _split(x, y, path)
    if len(x_tr) == 0:
        raise DataError(f"{path}: the training set is empty")
    return Dataset(path, x_tr, y_tr, x_te, y_te)


DATA_KEYS = ("x", "y", "x_test", "y_test")
_ANY_BUT_OBJECTS = "biufcUSVMm"


def _check_data_headers(members: dict, path: str) -> None:
    """Refuse from the headers alone, before any data is read: missing arrays, dtypes
    that are not numbers (labels: not integers or floats) and a training set without
    samples. Members other than `DATA_KEYS` are never read."""
    found = ", ".join(shown(k) for k in sorted(members)) or "nothing"
    missing = [k for k in ("x", "y") if k not in members]
    if missing:
        raise DataError(f"{path}: missing {', '.join(f'`{k}`' for k in missing)}; expected "
                        f"arrays x [N, C, H, W] and y [N] (optionally x_test and y_test), "
                        f"found: {found}")
    if ("x_test" in members) != ("y_test" in members):
        have, lack = ("x_test", "y_test") if "x_test" in members else ("y_test", "x_test")
        raise DataError(f"{path}: has `{have}` but not `{lack}`; give both or neither "
                        f"(found: {found})")
    for key in ("x", "x_test", "y", "y_test"):
        member = members.get(key)
        if member is None:
            continue
        dtype = member.dtype
        plain = dtype.names is None and dtype.subdtype is None
        if plain and dtype.kind in NUMBERS:
            continue
        if key.startswith("x"):
            raise DataError(f"{path}: `{key}` must hold numbers, got dtype {dtype} "
                            f"({kind_words(dtype)})")
        raise DataError(f"{path}: `{key}` must hold integer class labels, got dtype {dtype}")
    shape = members["x"].shape
    if not shape or shape[0] == 0:
        raise DataError(f"{path}: `x` holds no samples (shape {list(shape)}); a data set "
                        "needs at least one")


def load_data(spec: str) -> Dataset:
    """``"digits"`` or a path to an .npz file."""
    if spec == "digits":
        return load_digits()
    return load_npz(spec)


def classifier_shape(plan) -> tuple[str, tuple, str, int]:
    """``(input name, input shape, output name, classes)`` of a one-input, one-output network
    whose output is a vector of class scores; DataError otherwise."""
    if len(plan.inputs) != 1:
        raise DataError(f"training needs a network with one input; {plan.network} has "
                        f"{len(plan.inputs)}: {', '.join(plan.inputs)}")
    if len(plan.outputs) != 1:
        raise DataError(f"training needs a network with one output; {plan.network} has "
                        f"{len(plan.outputs)}: {', '.join(plan.outputs)}")
    (in_name, in_shape), = plan.inputs.items()
    (out_name, buf), = plan.outputs.items()
    shape = next((s.shape for s in plan.steps if s.name == buf), None)
    if shape is None:  # the output is the input itself
        shape = plan.inputs.get(buf, ())
    if len(shape) != 1:
        dims = ", ".join(str(d) for d in shape)
        raise DataError(f"training needs an output of class scores [classes]; output "
                        f"`{out_name}` of {plan.network} is [{dims}] (add flatten and dense)")
    return in_name, tuple(in_shape), out_name, int(shape[0])


def check_data(plan, data: Dataset) -> None:
    """Refuse, before any training, data that does not fit the network: wrong sample shape,
    labels outside ``0 .. classes-1``."""
    in_name, in_shape, out_name, classes = classifier_shape(plan)
    want = "[N, " + ", ".join(str(d) for d in in_shape) + "]"
    for part, x, y in (("x", data.x_train, data.y_train), ("x_test", data.x_test, data.y_test)):
        if data.name == "digits":
            part = "digits"
        if x.ndim != len(in_shape) + 1 or tuple(x.shape[1:]) != in_shape:
            raise DataError(f"input `{in_name}` of {plan.network} expects {want}; {part} from "
                            f"{data.name} is {list(x.shape)}")
        if len(y):
            low, high = int(y.min()), int(y.max())
            if low < 0 or high >= classes:
                bad = low if low < 0 else high
                index = int(np.argmax(y == bad))
                key = "y_test" if part == "x_test" else "y"
                raise DataError(f"label {bad} ({key}[{index}] in {data.name}) is out of range "
                                f"for output `{out_name}` of {plan.network}, which scores "
                                f"{classes} classes: labels must be 0..{classes - 1}")


# ---- sources: what the trainer reads batches from ------------------------------------------


class Source:
    """A data set read batch by batch (an image folder streamed from disk, say), so that one
    larger than memory trains. A subclass gives ``name``, ``train_size``, ``test_size`` and:

    - ``check(plan)``: DataError when it cannot train ``plan``'s network;
    - ``fingerprint()``: a digest that changes when the data does (checkpoints keep it);
    - ``train_batches(order, bounds, first, epoch, seed)``: an iterator (a generator, so it
      can be closed) of ``(x, y)`` NumPy batches, the samples ``order[b:e]`` for each
      ``(b, e)`` of ``bounds[first:]``; random augmentation may depend on ``epoch``,
      ``seed`` and the sample, never on the order of decoding; a batch may come back
      smaller when samples are unreadable;
    - ``test_batches(size)``: ``(x, y)`` batches of the test split, in order.
    """

    name = ""
    train_size = 0
    test_size = 0


class ArrayBatches(Source):
    """A `Dataset`'s arrays converted once to the model's dtype and device, and sliced."""

    def __init__(self, data: Dataset, model):
        xp, dtype = model.xp, model.dtype
        self.name = data.name
        self.train_size, self.test_size = data.train_size, data.test_size
        self.x_train = xp.asarray(finite_as(data.x_train, dtype, f"{data.name}: `x`",
                                            DataError, "values"))
        self.y_train = xp.asarray(data.y_train, dtype=np.int64)
        self.x_test = xp.asarray(finite_as(data.x_test, dtype, f"{data.name}: `x_test`",
                                           DataError, "values"))
        self.y_test = xp.asarray(data.y_test, dtype=np.int64)
        self.xp = xp

    def train_batches(self, order, bounds, first, epoch, seed):
        order = self.xp.asarray(order)
        for begin, end in bounds[first:]:
            idx = order[begin:end]
            yield self.x_train[idx], self.y_train[idx]

    def test_batches(self, size):
        for i in range(0, self.test_size, size):
            yield self.x_test[i:i + size], self.y_test[i:i + size]


# ---- checkpoints ------------------------------------------------------------------------------


def _atomic_savez(path: str, arrays: dict) -> None:
    """An .npz written next to ``path`` and moved into place (runtime/files.py): a reader
    sees the old file or the new one, never a half-written one."""
    write_atomically(path, lambda f: np.savez(f, **arrays))


@dataclass
class Checkpoint:
    """A checkpoint read back: ``meta`` (plain JSON data) and named NumPy arrays."""

    path: str
    meta: dict
    model: dict  # weight-file key -> array
    optim: dict  # slot -> key -> array


def _open_checkpoint(path: str) -> NpzFile:
    """The checkpoint's .npz opened, every header checked; its marker checked too."""
    try:
        npz = NpzFile(path, kinds=NUMBERS, text=("format", "meta"))
    except ArrayFileError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from None
    try:
        marker = npz.members.get("format")
        text = None
        if marker is not None and marker.dtype.kind == "U" and marker.shape == ():
            text = str(npz.read(["format"])["format"])
        if text != CHECKPOINT_FORMAT:
            what = ("no format marker" if marker is None else
                    f"format {shown(text[:40]) if text is not None else marker.describe()!r}")
            raise CheckpointError(f"{path} is not a cnnc training checkpoint ({what}; expected "
                                  f"{CHECKPOINT_FORMAT!r}; a weights file written by -o is not "
                                  "a checkpoint)")
        if "meta" not in npz.members:
            raise CheckpointError(f"checkpoint {path} has no readable metadata: no member "
                                  "`meta`")
    except ArrayFileError as err:
        npz.close()
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from None
    except BaseException:
        npz.close()
        raise
    return npz


def _read_meta(npz: NpzFile, path: str) -> dict:
    try:
        text = str(npz.read(["meta"])["meta"])
    except ArrayFileError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from None
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise CheckpointError(f"checkpoint {path} has no readable metadata: {err}") from None
    check_meta(meta, path)
    return meta


def read_checkpoint_meta(path) -> dict:
    """A checkpoint's metadata alone (epoch, step, network, settings), checked; its arrays
    are not read. CheckpointError as `read_checkpoint`."""
    path = os.fspath(path)
    with _open_checkpoint(path) as npz:
        return _read_meta(npz, path)


def read_checkpoint(path, plan=None) -> Checkpoint:
    """A checkpoint read back, its metadata checked (`check_meta`). With ``plan``, the
    network's name and every model array's shape are checked against it from the headers,
    before any array is read."""
    path = os.fspath(path)
    with _open_checkpoint(path) as npz:
        meta = _read_meta(npz, path)
        keys = [k for k in npz.members if k.startswith(("model/", "optim/"))]
        if plan is not None:
            _check_fits(meta, {k[len("model/"):]: npz.members[k] for k in keys
                               if k.startswith("model/")}, plan, path)
        try:
            arrays = npz.read(keys)
        except ArrayFileError as err:
            raise CheckpointError(f"cannot read checkpoint {path}: {err}") from None
    model, optim = {}, {}
    for key, arr in arrays.items():
        if key.startswith("model/"):
            model[key[len("model/"):]] = arr
        else:
            slot, _, name = key[len("optim/"):].partition("/")
            optim.setdefault(slot, {})[name] = arr
    return Checkpoint(path, meta, model, optim)


def _check_fits(meta: dict, arrays: dict, plan, path: str) -> None:
    """The checkpoint is of ``plan``'s network and its model arrays (key -> anything with
    a shape) have the plan's keys and shapes; CheckpointError listing every difference."""
    if meta.get("network") != plan.network:
        raise CheckpointError(f"checkpoint {path} is for network {meta.get('network')}, "
                              f"not {plan.network}")
    expected = {k: tuple(v) for k, v in plan.params.items()}
    expected.update({k: tuple(v) for k, v in plan.buffers.items()})
    problems = [f"missing {k} {list(s)}" for k, s in sorted(expected.items())
                if k not in arrays]
    problems += [f"unexpected {shown(k)} {list(a.shape)}" for k, a in sorted(arrays.items())
                 if k not in expected]
    problems += [f"{k} has shape {list(a.shape)}, expected {list(expected[k])}"
                 for k, a in sorted(arrays.items())
                 if k in expected and tuple(a.shape) != expected[k]]
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit network "
                              f"{plan.network}:\n  " + "\n  ".join(problems))


# ---- checking a checkpoint's metadata ---------------------------------------------------------


def _is_int(v) -> bool:
    return type(v) is int


def _is_real(v) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _whole(low: int):
    return lambda v: _is_int(v) and v >= low, f"a whole number >= {low}"


def _real(low: float, high: float | None = None, high_open: bool = True):
    def ok(v):
        if not _is_real(v) or v < low:
            return False
        return high is None or (v < high if high_open else v <= high)

    bound = "" if high is None else (f" and < {high}" if high_open else f" and <= {high}")
    return ok, f"a finite number >= {low}{bound}"


def _one_of(choices):
    return lambda v: v in choices, "one of " + ", ".join(repr(c) for c in choices)


_ANY_REAL = (_is_real, "a finite number")
_STRING = (lambda v: isinstance(v, str), "a string")
_DICT = (lambda v: isinstance(v, dict), "an object")
_DICT_OR_NONE = (lambda v: v is None or isinstance(v, dict), "an object or null")
_BOOL = (lambda v: type(v) is bool, "true or false")
_FRACTION = _real(0, 1, high_open=False)
_FRACTION_OR_NONE = (lambda v: v is None or _FRACTION[0](v), "null or a number in [0, 1]")

_META = {
    "network": _STRING, "dtype": _one_of(("float32", "float64")), "epoch": _whole(0),
    "step": _whole(0), "batch_size": _whole(1), "seed": _whole(0),
    "label_smoothing": _real(0, 1), "optimizer": _DICT, "schedule": _DICT,
    "shuffle_rng": _DICT, "epoch_rng": _DICT_OR_NONE, "dropout_rng": _DICT_OR_NONE,
    "partial": _DICT, "history": (lambda v: isinstance(v, list), "a list"),
    "elapsed": _real(0), "data": _DICT_OR_NONE,
}
_OPTIMIZER = {"kind": _one_of(tuple(OPTIMIZERS)), "hyper": _DICT, "counts": _DICT}
_HYPER = {"lr": _real(0), "weight_decay": _real(0), "decay": _one_of(DECAY_CHOICES)}
_SGD = {"momentum": _real(0), "dampening": _real(0), "nesterov": _BOOL}
_ADAM = {"betas": (lambda v: isinstance(v, list) and len(v) == 2
                   and all(_real(0, 1)[0](b) for b in v), "two numbers in [0, 1)"),
         "eps": _real(0)}
_SCHEDULE = {"base_lr": _real(0), "kind": _one_of(SCHEDULES), "step_size": _whole(1),
             "gamma": _real(0), "t_max": _whole(1), "eta_min": _real(0), "warmup": _whole(0)}
_PARTIAL = {"loss_sum": _ANY_REAL, "correct": _whole(0), "seen": _whole(0),
            "seconds": _real(0)}
_HISTORY = {"epoch": _whole(1), "lr": _real(0), "train_loss": _ANY_REAL,
            "train_accuracy": _FRACTION, "test_accuracy": _FRACTION_OR_NONE,
            "seconds": _real(0), "images_per_second": _real(0)}
_DATA = {"name": _STRING, "fingerprint": _STRING, "train": _whole(0), "test": _whole(0)}


def _value(v) -> str:
    text = json.dumps(v) if not isinstance(v, str) else repr(v)
    return shown(text if len(text) <= 60 else text[:57] + "...")


def _check_fields(d: dict, spec: dict, where: str, path: str, exact: bool = False) -> None:
    for key, (ok, expected) in spec.items():
        if key not in d:
            raise CheckpointError(f"checkpoint {path}: member `meta`: {where}{key} is missing; "
                                  f"expected {expected}")
        if not ok(d[key]):
            raise CheckpointError(f"checkpoint {path}: member `meta`: {where}{key} is "
                                  f"{_value(d[key])}; expected {expected}")
    if exact:
        extra = sorted(set(d) - set(spec))
        if extra:
            raise CheckpointError(f"checkpoint {path}: member `meta`: {where}{shown(extra[0])} "
                                  "is not a field cnnc writes")


def check_meta(meta, path: str) -> None:
    """Refuse a checkpoint's metadata with an impossible value (a negative epoch, a
    learning rate that is NaN, a history that disagrees with the epoch count, ...): a
    CheckpointError naming the file, the member, the field and the value."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path}: member `meta` is {_value(meta)}; expected "
                              "an object")
    _check_fields(meta, _META, "", path)
    opt = meta["optimizer"]
    _check_fields(opt, _OPTIMIZER, "optimizer.", path)
    hyper = dict(_HYPER, **(_SGD if opt["kind"] == "sgd" else _ADAM))
    _check_fields(opt["hyper"], hyper, "optimizer.hyper.", path, exact=True)
    for key, count in opt["counts"].items():
        if not _whole(0)[0](count):
            raise CheckpointError(f"checkpoint {path}: member `meta`: optimizer.counts."
                                  f"{shown(key)} is {_value(count)}; expected a whole number "
                                  ">= 0")
    _check_fields(meta["schedule"], _SCHEDULE, "schedule.", path, exact=True)
    _check_fields(meta["partial"], _PARTIAL, "partial.", path, exact=True)
    partial = meta["partial"]
    if partial["correct"] > partial["seen"]:
        raise CheckpointError(f"checkpoint {path}: member `meta`: partial.correct is "
                              f"{partial['correct']}, more than partial.seen, "
                              f"{partial['seen']}")
    history = meta["history"]
    if len(history) != meta["epoch"]:
        raise CheckpointError(f"checkpoint {path}: member `meta`: epoch is "
                              f"{_value(meta['epoch'])}, but the history holds "
                              f"{len(history)} epochs")
    for i, entry in enumerate(history):
        if not isinstance(entry, dict):
            raise CheckpointError(f"checkpoint {path}: member `meta`: history[{i}] is "
                                  f"{_value(entry)}; expected an object")
        _check_fields(entry, _HISTORY, f"history[{i}].", path, exact=True)
        if entry["epoch"] != i + 1:
            raise CheckpointError(f"checkpoint {path}: member `meta`: history[{i}].epoch is "
                                  f"{_value(entry['epoch'])}; expected {i + 1}")
    if meta["step"] and meta["epoch_rng"] is None:
        raise CheckpointError(f"checkpoint {path}: member `meta`: step is {meta['step']}, "
                              "but epoch_rng, the shuffle of that epoch, is null")
    if meta["data"] is not None:
        _check_fields(meta["data"], _DATA, "data.", path)
    for key in ("shuffle_rng", "epoch_rng", "dropout_rng"):
        state = meta[key]
        if state is None or (key == "dropout_rng" and state.get("bit_generator") != "PCG64"):
            continue  # another generator's (CuPy's): its model checks it
        try:
            np.random.default_rng().bit_generator.state = state
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as err:
            raise CheckpointError(f"checkpoint {path}: member `meta`: {key} is not the state "
                                  f"of a NumPy generator ({type(err).__name__}: {err})") from None


# ---- the loop ---------------------------------------------------------------------------------


@dataclass
class EpochStats:
    epoch: int  # 1-based
    lr: float
    train_loss: float
    train_accuracy: float
    test_accuracy: float | None
    seconds: float  # training steps of this epoch, evaluation excluded
    images_per_second: float


class Progress:
    """Hooks the trainer calls; the default does nothing. ``cnnc train`` draws a bar."""

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        """``epoch`` is 1-based."""

    def step(self, done: int, steps: int, loss: float, accuracy: float, images_per_second: float):
        """After each step: running means of the epoch so far."""

    def end_epoch(self, stats: EpochStats, epochs: int) -> None:
        """After the epoch's evaluation (and checkpoint)."""


@dataclass
class _Partial:
    """The running sums of an epoch in progress."""

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``(begin, end)`` of each mini-batch of an epoch over ``n`` shuffled samples. The last
    batch may be smaller; a last batch of a single sample joins the one before it, since
    batch normalisation cannot estimate a variance from one sample."""
    bounds = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def _generator_state(rng):
    """A JSON-ready copy of a generator's state, or None when it has none to give (CuPy's)."""
    bit = getattr(rng, "bit_generator", None)
    state = getattr(bit, "state", None)
    return json.loads(json.dumps(state)) if isinstance(state, dict) else None


class Trainer:
    """Fits a one-input classifier with softmax cross-entropy. See the module docstring."""

    def __init__(self, model, optimizer: Optimizer, *, schedule: Schedule | None = None,
                 batch_size: int = 32, seed: int = 0, label_smoothing: float = 0.0,
                 checkpoint=None, eval_batch: int = 512):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.optimizer = optimizer
        self.schedule = schedule or Schedule(optimizer.lr)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.label_smoothing = float(label_smoothing)
        self.checkpoint = os.fspath(checkpoint) if checkpoint is not None else None
        self.eval_batch = int(eval_batch)
        self.rng = np.random.default_rng(self.seed)  # the shuffle
        self.epoch = 0  # whole epochs done
        self.step_in_epoch = 0  # steps done in the epoch in progress
        self.epoch_rng_state = None  # the shuffle's state when that epoch began
        self.partial = _Partial()
        self.history: list[EpochStats] = []
        self.elapsed = 0.0  # seconds of fit() so far, over every resumed run
        self.saved_epoch = None  # the epoch of the last checkpoint written or restored
        self._data_id = None
        self._restored = None  # the path of the checkpoint restored
        self._stop = False

    # ---- evaluation -------------------------------------------------------------------------
    def evaluate(self, x, y) -> float | None:
        """Accuracy of inference (``model(x)``, eval mode) on ``x``; None for no samples."""
        if len(x) == 0:
            return None
        correct = 0
        with np.errstate(all="ignore"):  # diverging weights are reported by the loss check
            for i in range(0, len(x), self.eval_batch):
                scores = self.model(x[i:i + self.eval_batch])
                correct += accuracy_count(scores, y[i:i + self.eval_batch])
        return correct / len(x)

    def evaluate_source(self, source) -> float | None:
        """Accuracy of inference on a source's test split; None for no samples."""
        correct = seen = 0
        with np.errstate(all="ignore"):
            for x, y in source.test_batches(self.eval_batch):
                if len(y):
                    correct += accuracy_count(self.model(x), y)
                    seen += len(y)
        return correct / seen if seen else None

    def train_step(self, xb, yb, step: int) -> tuple[float, int]:
        """One optimizer step on a mini-batch: ``(mean loss, correct predictions)``."""
        with np.errstate(all="ignore"):  # a non-finite loss is reported below, once
            logits = self.model.forward(xb, train=True, logits=True)
            loss, dlogits = softmax_cross_entropy(logits, yb, self.label_smoothing)
        if not math.isfinite(loss):
            self._diverged(loss, step)
        self.model.backward(dlogits, input_grad=False)
        self.optimizer.step()
        return loss, accuracy_count(logits, yb)

    # ---- fit ----------------------------------------------------------------------------------
    def fit(self, data, epochs: int, progress: Progress | None = None):
        """Train until ``epochs`` whole epochs are done (counting those of a restored
        checkpoint) and return the history, one `EpochStats` per epoch. ``data`` is a
        `Dataset` (arrays in memory) or a streamed source (`Source`, e.g. an image folder
        read from disk batch by batch)."""
        progress = progress or Progress()
        self._data_id = self.check_resume(data)
        source = data if isinstance(data, Source) else ArrayBatches(data, self.model)
        steps = len(batch_bounds(data.train_size, self.batch_size))
        previous = self._catch_sigint()
        started = time.perf_counter()
        try:
            while self.epoch < epochs:
                self._run_epoch(source, steps, epochs, progress, started)
        finally:
            self.elapsed += time.perf_counter() - started
            self._release_sigint(previous)
        return self.history

    def check_resume(self, data: Dataset) -> dict:
        """Refuse ``data`` that does not fit the network (`check_data`) or, after `restore`,
        is not the data the checkpoint was trained on, or has fewer steps per epoch than
        the checkpoint has done of its epoch in progress. Returns the data's identity, as
        a checkpoint keeps it."""
        data.check(self.model.plan)
        data_id = {"name": os.path.basename(os.path.normpath(data.name)),
                   "fingerprint": data.fingerprint(), "train": data.train_size,
                   "test": data.test_size}
        if self._data_id is not None and self._data_id["fingerprint"] != data_id["fingerprint"]:
            old = self._data_id
            raise CheckpointError(
                f"the checkpoint was trained on other data ({old['name']}: {old['train']} "
                f"training and {old['test']} test samples); this run has {data_id['name']}: "
                f"{data_id['train']} and {data_id['test']}")
        n = data.train_size
        if n == 0:
            raise DataError(f"the training set of {data.name} is empty")
        steps = len(batch_bounds(n, self.batch_size))
        if self.step_in_epoch and self.step_in_epoch >= steps:
            where = f"checkpoint {self._restored}" if self._restored else "the checkpoint"
            raise CheckpointError(
                f"{where} is at step {self.step_in_epoch} of epoch {self.epoch + 1}, but an "
                f"epoch of {n} samples in batches of {self.batch_size} has {steps} steps")
        return data_id

    def epoch_order(self, n: int) -> np.ndarray:
        """The shuffle of the epoch in progress (drawn when it begins; drawn again from the
        saved generator state when resumed inside it)."""
        if self.step_in_epoch == 0:
            self.epoch_rng_state = _generator_state(self.rng)
            self.partial = _Partial()
            return self.rng.permutation(n)
        again = np.random.default_rng()
        again.bit_generator.state = self.epoch_rng_state
        return again.permutation(n)

    def _run_epoch(self, source, steps, epochs, progress, started):
        order = self.epoch_order(source.train_size)
        bounds = batch_bounds(source.train_size, self.batch_size)
        self.optimizer.lr = self.schedule.lr_at(self.epoch)
        progress.start_epoch(self.epoch + 1, epochs, steps)
        part = self.partial
        batches = source.train_batches(order, bounds, self.step_in_epoch, self.epoch, self.seed)
        try:
            for s in range(self.step_in_epoch, steps):
                t0 = time.perf_counter()
                xb, yb = next(batches)
                if len(yb):  # a batch whose every image was unreadable takes no step
                    loss, correct = self.train_step(xb, yb, s)
                    part.loss_sum += loss * len(yb)
                    part.correct += correct
                    part.seen += len(yb)
                part.seconds += time.perf_counter() - t0
                self.step_in_epoch = s + 1
                progress.step(s + 1, steps, part.loss_sum / max(part.seen, 1),
                              part.correct / max(part.seen, 1),
                              part.seen / max(part.seconds, 1e-9))
                if self._stop:
                    self._interrupted(started)
        finally:
            batches.close()
        if part.seen == 0:
            raise DataError(f"epoch {self.epoch + 1} trained on no samples: every image of "
                            f"{source.name} was unreadable")
        test_accuracy = self.evaluate_source(source)
        stats = EpochStats(self.epoch + 1, self.optimizer.lr, part.loss_sum / part.seen,
                           part.correct / part.seen, test_accuracy, part.seconds,
                           part.seen / max(part.seconds, 1e-9))
        self.history.append(stats)
        self.epoch += 1
        self.step_in_epoch = 0
        self.partial = _Partial()
        if self.checkpoint is not None:
            self._save(started)
            self.saved_epoch = self.epoch
        progress.end_epoch(stats, epochs)
        if self._stop:
            self._interrupted(started)

    def _diverged(self, loss: float, step: int):
        where = f"epoch {self.epoch + 1}, step {step + 1}"
        if self.saved_epoch is not None:
            kept = (f"the last good checkpoint, {self.checkpoint}, holds the state after epoch "
                    f"{self.saved_epoch}")
        elif self.checkpoint is not None:
            kept = "no checkpoint had been written yet"
        else:
            kept = "no checkpoint path was set"
        raise TrainingDiverged(f"the loss became {loss} at {where}; training stopped ({kept}). "
                               "Try a smaller learning rate.", self.epoch + 1, step + 1,
                               self.checkpoint if self.saved_epoch is not None else None)

    def _interrupted(self, started):
        where = f"epoch {self.epoch + 1}, step {self.step_in_epoch}"
        if self.step_in_epoch == 0:
            where = f"the end of epoch {self.epoch}"
        if self.checkpoint is None:
            raise TrainingInterrupted(f"interrupted at {where}; no checkpoint path was set, "
                                      "nothing saved", self.epoch, self.step_in_epoch, None)
        self._save(started)
        raise TrainingInterrupted(f"interrupted at {where}; checkpoint saved to "
                                  f"{self.checkpoint}", self.epoch, self.step_in_epoch,
                                  self.checkpoint)

    # ---- Ctrl-C -------------------------------------------------------------------------------
    def _catch_sigint(self):
        """Turn the first SIGINT into a request to stop at the next step boundary; a second
        one raises KeyboardInterrupt at once. Only the main thread can install handlers."""
        self._stop = False
        if threading.current_thread() is not threading.main_thread():
            return None

        def request_stop(signum, frame):
            if self._stop:
                raise KeyboardInterrupt
            self._stop = True

        return signal.signal(signal.SIGINT, request_stop)

    def _release_sigint(self, previous):
        if previous is not None:
            signal.signal(signal.SIGINT, previous)

    # ---- checkpoints --------------------------------------------------------------------------
    def state(self, started: float | None = None) -> tuple[dict, dict]:
        """``(meta, arrays)``: everything a checkpoint holds."""
        elapsed = self.elapsed
        if started is not None:
            elapsed += time.perf_counter() - started
        opt = self.optimizer.state_dict()
        meta = {
            "network": self.model.plan.network,
            "dtype": str(self.model.dtype),
            "epoch": self.epoch,
            "step": self.step_in_epoch,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "label_smoothing": self.label_smoothing,
            "optimizer": {"kind": opt["kind"], "hyper": opt["hyper"], "counts": opt["counts"]},
            "schedule": self.schedule.state_dict(),
            "shuffle_rng": _generator_state(self.rng),
            "epoch_rng": self.epoch_rng_state,
            "dropout_rng": _generator_state(self.model.rng),
            "partial": asdict(self.partial),
            "history": [asdict(h) for h in self.history],
            "elapsed": elapsed,
            "data": self._data_id,
        }
        arrays = {"format": np.array(CHECKPOINT_FORMAT), "meta": np.array(json.dumps(meta))}
        for key, value in self.model.state().items():
            arrays[f"model/{key}"] = value
        for slot, values in opt["slots"].items():
            for key, value in values.items():
                arrays[f"optim/{slot}/{key}"] = value
        return meta, arrays

    def _save(self, started: float | None = None) -> None:
        _, arrays = self.state(started)
        _atomic_savez(self.checkpoint, arrays)

    def restore(self, ckpt: Checkpoint | str) -> None:
        """Take back a checkpoint (a path or `read_checkpoint`'s result): every check first,
        then every change, so a refused checkpoint leaves the trainer and model as they were.
        The optimizer must be of the checkpoint's kind (``meta["optimizer"]["kind"]``)."""
        if not isinstance(ckpt, Checkpoint):
            ckpt = read_checkpoint(ckpt)
        meta, path, model = ckpt.meta, ckpt.path, self.model
        if meta.get("network") != model.plan.network:
            raise CheckpointError(f"checkpoint {path} is for network {meta.get('network')}, "
                                  f"not {model.plan.network}")
        if meta.get("dtype") != str(model.dtype):
            raise CheckpointError(f"checkpoint {path} was trained in {meta.get('dtype')}; this "
                                  f"model computes in {model.dtype} (use --dtype "
                                  f"{meta.get('dtype')})")
        expected = {k: tuple(v.shape) for k, v in model.params.items()}
        problems = [f"missing {k} {list(s)}" for k, s in sorted(expected.items())
                    if k not in ckpt.model]
        problems += [f"unexpected {k} {list(a.shape)}" for k, a in sorted(ckpt.model.items())
                     if k not in expected]
        problems += [f"{k} has shape {list(a.shape)}, expected {list(expected[k])}"
                     for k, a in sorted(ckpt.model.items())
                     if k in expected and tuple(a.shape) != expected[k]]
        if problems:
            raise CheckpointError(f"checkpoint {path} does not fit network "
                                  f"{model.plan.network}:\n  " + "\n  ".join(problems))
        values = {key: finite_as(arr, model.dtype, f"checkpoint {path}: `model/{key}`",
                                 CheckpointError)
                  for key, arr in sorted(ckpt.model.items())}
        for slot, arrays in sorted(ckpt.optim.items()):
            for key, arr in sorted(arrays.items()):
                finite_as(arr, model.dtype, f"checkpoint {path}: `optim/{slot}/{key}`",
                          CheckpointError, "optimizer state")
        try:  # read everything before changing anything
            opt_meta = meta["optimizer"]
            opt_state = {"kind": opt_meta["kind"], "hyper": opt_meta["hyper"],
                         "counts": opt_meta["counts"], "slots": ckpt.optim}
            schedule = Schedule.from_state_dict(meta["schedule"])
            settings = (int(meta["batch_size"]), int(meta["seed"]),
                        float(meta["label_smoothing"]))
            shuffle = np.random.default_rng()
            shuffle.bit_generator.state = meta["shuffle_rng"]
            if meta["epoch_rng"] is not None:
                np.random.default_rng().bit_generator.state = meta["epoch_rng"]
            dropout_state = meta.get("dropout_rng")
            rng = model.rng
            if _generator_state(rng) is None:  # CuPy's generators keep their state hidden
                dropout_state = None
            if dropout_state is not None:
                type(rng.bit_generator)().state = dropout_state
            position = (int(meta["epoch"]), int(meta["step"]), meta["epoch_rng"])
            partial = _Partial(**meta["partial"])
            history = [EpochStats(**h) for h in meta["history"]]
            elapsed = float(meta["elapsed"])
            data_id = meta.get("data")
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as err:
            # NumPy's own checks of a generator's state among them
            raise CheckpointError(f"checkpoint {path} is damaged: {type(err).__name__}: "
                                  f"{err}") from None
        try:
            self.optimizer.load_state_dict(opt_state)  # all-or-nothing itself
        except (OptimizerStateError, ValueError, TypeError) as err:
            raise CheckpointError(f"checkpoint {path}: {err}") from None
        for key, arr in values.items():
            model.params[key][...] = model.xp.asarray(arr)
        model.mark_changed()  # inference refolds and remakes what it derived from them
        self.schedule = schedule
        self.batch_size, self.seed, self.label_smoothing = settings
        self.rng = shuffle
        if dropout_state is not None:
            rng.bit_generator.state = dropout_state
        self.epoch, self.step_in_epoch, self.epoch_rng_state = position
        self.partial = partial
        self.history = history
        self.elapsed = elapsed
        self._data_id = data_id
        self.saved_epoch = self.epoch
        self._restored = path


__all__ = [
    "ArrayBatches", "CHECKPOINT_FORMAT", "Checkpoint", "CheckpointError", "DataError", "Dataset",
    "EpochStats", "Progress", "Source", "Trainer", "TrainingDiverged", "TrainingInterrupted",
    "check_data", "check_meta", "classifier_shape", "load_data", "load_digits", "load_npz",
    "read_checkpoint", "read_checkpoint_meta",
]
