"""Image folders: one sub-folder per class, read with Pillow and streamed from disk in
batches, decoded by background threads.

    photos/                       photos/
      cat/a.jpg  cat/b.png          train/cat/...  train/dog/...
      dog/c.jpg  ...                val/cat/...    val/dog/...

Without a ``val/`` folder a fixed, stratified fraction of each class is held out
(``val_fraction``). Every image is turned into the model's input the same way
(`Preprocess`): oriented by its EXIF tag, converted to RGB (3 channels) or grey (1 channel),
its shorter side resized to ``resize``, centre-cropped to the input's height and width, scaled
to [0, 1] and normalised per channel with ``mean`` and ``std``. Training adds augmentation:
a random crop from the image padded by ``padding`` zeros on each side, and a horizontal flip
with probability 1/2, drawn from ``(seed, epoch, sample)`` so that a resumed run and any
number of decoding threads see the same images.

A file that cannot be decoded is reported once (by ``on_skip``) and left out of its batch;
`ImageFolder.skipped` keeps them all.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from ..runtime.train import DataError, Source

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
            ".pgm", ".pbm")
# ImageNet's channel statistics, the usual defaults (torchvision's recipes use them)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VAL_FRACTION = 0.2
PADDING = 4
SPLIT_SEED = 0  # the held-out split is fixed, whatever the training seed


def pillow():
    """Pillow's Image module, or a DataError naming the extra to install."""
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise DataError("image folders are read with Pillow: pip install 'cnnc[images]'") from None
    return Image, ImageOps


def is_image_name(name: str) -> bool:
    return name.lower().endswith(SUFFIXES) and not name.startswith(".")


# ---- turning a file into an input ------------------------------------------------------------


@dataclass(frozen=True)
class Preprocess:
    """How a file becomes a ``[channels, height, width]`` float32 input."""

    channels: int  # 1 (grey) or 3 (RGB)
    height: int
    width: int
    resize: int  # the shorter side before the centre crop; at least max(height, width)
    mean: tuple
    std: tuple

    @classmethod
    def for_input(cls, shape, resize: int | None = None, mean=None, std=None,
                  where: str = "the network's input") -> "Preprocess":
        """The preprocessing for an input of ``shape`` ``(C, H, W)``; DataError in words for
        a shape images cannot fill or settings that do not fit it."""
        shape = tuple(int(d) for d in shape)
        if len(shape) != 3 or shape[0] not in (1, 3):
            dims = ", ".join(str(d) for d in shape)
            raise DataError(f"{where} is [{dims}]; images fill [1, H, W] (grey) or [3, H, W] "
                            "(RGB)")
        c, h, w = shape
        resize = max(h, w) if resize is None else int(resize)
        if resize < max(h, w):
            raise DataError(f"--resize {resize} is smaller than the input's {h} x {w}; the "
                            f"centre crop needs the shorter side at least {max(h, w)}")
        mean = _per_channel(mean, IMAGENET_MEAN, c, "--mean")
        std = _per_channel(std, IMAGENET_STD, c, "--std")
        if min(std) <= 0:
            raise DataError(f"--std must be above 0 for every channel, got "
                            f"{','.join(f'{v:g}' for v in std)}")
        return cls(c, h, w, resize, mean, std)

    def describe(self) -> dict:
        return {"channels": self.channels, "height": self.height, "width": self.width,
                "resize": self.resize, "mean": list(self.mean), "std": list(self.std)}

    def load(self, path: str, augment: "Augment | None" = None, key=None) -> np.ndarray:
        """The file at ``path`` as ``[C, H, W]`` float32; an exception from Pillow (or
        OSError) when it cannot be decoded. ``augment`` with ``key``, a tuple of ints, draws
        the random crop and flip."""
        Image, ImageOps = pillow()
        with Image.open(path) as img:
            mode = "RGB" if self.channels == 3 else "L"
            img.draft(mode, (self.resize, self.resize))  # JPEG: decode at a reduced scale
            img = ImageOps.exif_transpose(img)
            img = img.convert(mode)
            w, h = img.size
            scale = self.resize / min(w, h)
            size = (max(self.width, round(w * scale)), max(self.height, round(h * scale)))
            if size != (w, h):
                img = img.resize(size, Image.BILINEAR)
            left = (size[0] - self.width) // 2
            top = (size[1] - self.height) // 2
            img = img.crop((left, top, left + self.width, top + self.height))
            pixels = np.asarray(img, dtype=np.float32)
        pixels = pixels.reshape(self.height, self.width, self.channels)  # (H, W, C)
        x = pixels.transpose(2, 0, 1) / np.float32(255)  # (C, H, W) in [0, 1]
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        x = (x - mean) / std
        if augment is not None:
            x = augment.apply(x, np.random.default_rng(key))
        return np.ascontiguousarray(x, dtype=np.float32)


def _per_channel(values, default, channels: int, flag: str) -> tuple:
    if values is None:
        if channels == 3:
            return tuple(default)
        return (round(sum(default) / 3, 4),)  # grey: the mean of the three
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise DataError(f"{flag} gives {len(values)} values; the input has {channels} "
                        f"channel{'s' if channels != 1 else ''} (give {channels} or one)")
    return values


@dataclass(frozen=True)
class Augment:
    """Training's random changes: a crop from the image padded by ``padding`` zeros on each
    side (0: none) and a horizontal flip with probability 1/2 when ``flip``."""

    padding: int = PADDING
    flip: bool = True

    def apply(self, x: np.ndarray, rng) -> np.ndarray:
        c, h, w = x.shape
        p = self.padding
        if p:
            padded = np.zeros((c, h + 2 * p, w + 2 * p), dtype=x.dtype)
            padded[:, p:p + h, p:p + w] = x
            top, left = rng.integers(0, 2 * p + 1, size=2)
            x = padded[:, top:top + h, left:left + w]
        if self.flip and rng.random() < 0.5:
            x = x[:, :, ::-1]
        return x


# ---- finding the files -----------------------------------------------------------------------


@dataclass
class Files:
    """Image paths with their labels (class indices) and sizes in bytes."""

    paths: list
    labels: np.ndarray
    sizes: list

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index) -> "Files":
        return Files([self.paths[i] for i in index], self.labels[index],
                     [self.sizes[i] for i in index])


def _subfolders(folder: str) -> list[str]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as err:
        raise DataError(f"cannot read image folder {folder}: {err.strerror or err}") from None
    return [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]


def list_images(folder: str) -> tuple[list, list, int]:
    """``(paths, sizes, others)``: every image under ``folder`` (recursively, sorted, hidden
    files and folders left out) and the count of other files."""
    paths, sizes, others = [], [], 0
    for top, dirs, names in os.walk(folder, onerror=None):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not is_image_name(name):
                others += not name.startswith(".")
                continue
            path = os.path.join(top, name)
            try:
                sizes.append(os.stat(path).st_size)
            except OSError:
                sizes.append(-1)  # unreadable: reported when it is decoded
            paths.append(path)
    return paths, sizes, others


def _scan_classes(folder: str, classes: list) -> tuple[Files, int]:
    paths, labels, sizes, others = [], [], [], 0
    for label, name in enumerate(classes):
        found, found_sizes, other = list_images(os.path.join(folder, name))
        paths += found
        sizes += found_sizes
        labels += [label] * len(found)
        others += other
    return Files(paths, np.asarray(labels, dtype=np.int64), sizes), others


def _held_out(labels: np.ndarray, fraction: float) -> np.ndarray:
    """A fixed, stratified choice of ``fraction`` of each class (at least one image stays
    for training); a boolean mask."""
    mask = np.zeros(len(labels), dtype=bool)
    rng = np.random.default_rng(SPLIT_SEED)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        take = min(int(round(fraction * len(members))), len(members) - 1)
        if take > 0:
            mask[rng.permutation(members)[:take]] = True
    return mask


@dataclass
class Layout:
    """What was found in an image folder."""

    root: str
    classes: list
    train: Files
    val: Files
    split: str  # "val/" or "held out 20%"
    others: int  # files that are not images, left out


def scan(root: str, val_fraction: float | None = None) -> Layout:
    """The classes and files of an image folder (see the module docstring); DataError in
    words for a folder that is not one."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DataError(f"image folder {root} does not exist" if not os.path.exists(root) else
                        f"{root} is not a folder")
    top = _subfolders(root)
    if "val" in top:
        if val_fraction is not None:
            raise DataError(f"{root} has a val/ folder; --val-fraction applies only to a "
                            "folder without one")
        if "train" not in top:
            raise DataError(f"{root} has a val/ folder but no train/ folder; put the training "
                            f"classes in {os.path.join(root, 'train')}/CLASS/")
        train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
        classes = _subfolders(train_dir)
        _require_classes(classes, train_dir)
        unknown = [c for c in _subfolders(val_dir) if c not in classes]
        if unknown:
            raise DataError(f"{val_dir} has class folder{'s' * (len(unknown) > 1)} "
                            f"{', '.join(unknown)} that {train_dir} does not have (its "
                            f"classes: {', '.join(classes)})")
        train, others = _scan_classes(train_dir, classes)
        val, more = _scan_classes(val_dir, classes)
        split = "val/"
        others += more
    else:
        base = os.path.join(root, "train") if top == ["train"] else root
        classes = _subfolders(base)
        _require_classes(classes, base)
        files, others = _scan_classes(base, classes)
        fraction = VAL_FRACTION if val_fraction is None else val_fraction
        mask = _held_out(files.labels, fraction)
        train, val = files.subset(np.flatnonzero(~mask)), files.subset(np.flatnonzero(mask))
        split = f"{fraction:.0%} held out"
    if not len(train):
        raise DataError(f"{root} holds no images in its class folders ({', '.join(classes)}); "
                        f"images are files ending in {', '.join(SUFFIXES)}")
    return Layout(root, classes, train, val, split, others)


def _require_classes(classes: list, folder: str) -> None:
    if not classes:
        raise DataError(f"{folder} has no class folders; expected one sub-folder per class, "
                        f"as {os.path.join(folder, 'cat', 'a.jpg')}")
    if len(classes) < 2:
        raise DataError(f"{folder} has one class folder, {classes[0]}; a classifier needs at "
                        "least two")


# ---- reading batches -------------------------------------------------------------------------


class Reader:
    """Decodes lists of files into batches on background threads, keeping ``ahead``
    batches in flight; reports each unreadable file once."""

    def __init__(self, preprocess: Preprocess, workers: int = 4, on_skip=None):
        self.preprocess = preprocess
        self.workers = max(1, int(workers))
        self.on_skip = on_skip
        self.skipped: dict = {}  # path -> why
        self._lock = threading.Lock()

    def _decode(self, paths, augment, keys):
        xs, kept, failed = [], [], []
        for i, path in enumerate(paths):
            key = keys[i] if keys is not None else None
            try:
                xs.append(self.preprocess.load(path, augment, key))
                kept.append(i)
            except MemoryError:
                raise
            except Exception as err:  # noqa: BLE001 - any decoding failure skips the file
                failed.append((path, _why(err, path)))
        p = self.preprocess
        x = np.stack(xs) if xs else np.zeros((0, p.channels, p.height, p.width), np.float32)
        return x, kept, failed

    def batches(self, jobs):
        """For each ``(paths, labels, augment, keys)`` of ``jobs``, in order: ``(x, y,
        kept)``, the decoded images, their labels and their positions in ``paths``."""
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="cnnc-images")
        pending = []
        jobs = iter(jobs)
        try:
            while True:
                while len(pending) < 2 * self.workers:
                    job = next(jobs, None)
                    if job is None:
                        break
                    paths, labels, augment, keys = job
                    pending.append((labels, pool.submit(self._decode, paths, augment, keys)))
                if not pending:
                    return
                labels, future = pending.pop(0)
                x, kept, failed = future.result()
                for path, why in failed:
                    self._skip(path, why)
                yield x, np.asarray(labels, dtype=np.int64)[kept], kept
        finally:
            for _, future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def _skip(self, path: str, why: str) -> None:
        with self._lock:
            if path in self.skipped:
                return
            self.skipped[path] = why
        if self.on_skip is not None:
            self.on_skip(path, why)


def _why(err: Exception, path: str) -> str:
    """The reason in a few words, without the path that the report names already."""
    text = str(err).strip() or type(err).__name__
    if isinstance(err, OSError) and err.strerror:
        text = err.strerror
    text = text.replace(f" {path!r}", "").replace(f" {path}", "")
    return text.splitlines()[0][:200]


class ImageFolder(Source):
    """An image folder as the trainer's data source (`runtime.train.Source`)."""

    def __init__(self, layout: Layout, preprocess: Preprocess, augment: Augment | None = None,
                 workers: int = 4, on_skip=None):
        self.layout = layout
        self.name = layout.root
        self.classes = layout.classes
        self.preprocess = preprocess
        self.augment = augment
        self.reader = Reader(preprocess, workers, on_skip)
        self.train_size = len(layout.train)
        self.test_size = len(layout.val)

    @property
    def skipped(self) -> dict:
        return self.reader.skipped

    def check(self, plan) -> None:
        from ..runtime.train import classifier_shape

        in_name, in_shape, out_name, classes = classifier_shape(plan)
        p = self.preprocess
        if tuple(in_shape) != (p.channels, p.height, p.width):
            raise DataError(f"input `{in_name}` of {plan.network} is {list(in_shape)}; the "
                            f"images are prepared as {[p.channels, p.height, p.width]}")
        if len(self.classes) > classes:
            raise DataError(f"{self.name} has {len(self.classes)} classes "
                            f"({_listed(self.classes)}), but output `{out_name}` of "
                            f"{plan.network} scores {classes}; make its last dense "
                            f"{len(self.classes)} wide")

    def fingerprint(self) -> str:
        """Paths (relative to the folder), labels, file sizes and the preprocessing."""
        h = hashlib.blake2b(digest_size=16)
        settings = {"preprocess": self.preprocess.describe(),
                    "augment": asdict(self.augment) if self.augment else None,
                    "classes": self.classes}
        h.update(json.dumps(settings, sort_keys=True).encode())
        for part in (self.layout.train, self.layout.val):
            h.update(b"\0split")
            for path, label, size in zip(part.paths, part.labels, part.sizes):
                rel = os.path.relpath(path, self.layout.root)
                h.update(f"{rel}\0{int(label)}\0{size}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()

    def train_batches(self, order, bounds, first, epoch, seed):
        files = self.layout.train
        order = np.asarray(order)

        def jobs():
            for begin, end in bounds[first:]:
                idx = order[begin:end]
                keys = [(int(seed), int(epoch), int(i)) for i in idx]
                yield [files.paths[i] for i in idx], files.labels[idx], self.augment, keys

        for x, y, _ in self.reader.batches(jobs()):
            yield x, y

    def test_batches(self, size):
        files = self.layout.val

        def jobs():
            for i in range(0, len(files), size):
                yield files.paths[i:i + size], files.labels[i:i + size], None, None

        for x, y, _ in self.reader.batches(jobs()):
            yield x, y


def describe(folder: ImageFolder) -> str:
    """``photos: 3 classes (cat, dog, fox); 120 training images, 30 validation (val/)``."""
    layout = folder.layout
    others = layout.others
    other = f"; {others} other file{'s' * (others != 1)} left out" if others else ""
    return (f"{layout.root}: {len(layout.classes)} classes ({_listed(layout.classes)}); "
            f"{len(layout.train):,} training images, {len(layout.val):,} validation "
            f"({layout.split}){other}")


def _listed(names: list, most: int = 6) -> str:
    if len(names) <= most:
        return ", ".join(names)
    return ", ".join(names[:most]) + f", ... ({len(names) - most} more)"


def open_folder(root: str, input_shape, *, val_fraction: float | None = None,
                resize: int | None = None, mean=None, std=None, padding: int = PADDING,
                flip: bool = True, workers: int = 4, on_skip=None) -> ImageFolder:
    """An image folder ready to train a network whose input is ``input_shape``."""
    pillow()
    preprocess = Preprocess.for_input(input_shape, resize, mean, std)
    layout = scan(root, val_fraction)
    augment = Augment(padding, flip) if padding or flip else None
    return ImageFolder(layout, preprocess, augment, workers, on_skip)


# ---- the settings a trained model keeps ------------------------------------------------------


def settings_path(weights: str) -> str:
    """Where the image settings of a weights file live: ``W.npz`` -> ``W.json``."""
    stem = weights[:-4] if weights.endswith(".npz") else weights
    return stem + ".json"


SETTINGS_FORMAT = "cnnc-image-settings/1"


def settings_of(folder: ImageFolder) -> dict:
    return {"format": SETTINGS_FORMAT, "classes": list(folder.classes),
            **folder.preprocess.describe()}


def read_settings(path: str) -> dict:
    """The image settings written beside a weights file; DataError in words otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            settings = json.load(f)
    except OSError as err:
        raise DataError(f"cannot read image settings {path}: {err.strerror or err}") from None
    except ValueError as err:
        raise DataError(f"image settings {path} are not JSON: {err}") from None
    if not isinstance(settings, dict) or settings.get("format") != SETTINGS_FORMAT:
        raise DataError(f"{path} is not a cnnc image settings file (expected format "
                        f"{SETTINGS_FORMAT!r})")
    classes = settings.get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise DataError(f"image settings {path}: `classes` must be a list of names")
    for key in ("mean", "std"):
        value = settings.get(key)
        if not isinstance(value, list) or not all(type(v) in (int, float) for v in value):
            raise DataError(f"image settings {path}: `{key}` must be a list of numbers")
    if type(settings.get("resize")) is not int or settings["resize"] < 1:
        raise DataError(f"image settings {path}: `resize` must be a whole number >= 1")
    return settings


# ---- predictions -----------------------------------------------------------------------------


def predict(model, root: str, preprocess: Preprocess, batch: int = 64, workers: int = 4,
            on_skip=None, classes: list | None = None):
    """``(rows, reader)``: for every image under ``root`` (recursively), a dict with its path
    relative to ``root``, the class index, the class name (when ``classes`` names them) and
    the score, the top probability. Outputs made by a final softmax are read as
    probabilities; other outputs are taken as logits and put through a softmax."""
    pillow()
    paths, _, _ = list_images(root)
    if not paths:
        raise DataError(f"{root} holds no images (files ending in {', '.join(SUFFIXES)})")
    reader = Reader(preprocess, workers, on_skip)
    probabilities = _ends_in_softmax(model.plan)

    def jobs():
        for i in range(0, len(paths), batch):
            chunk = paths[i:i + batch]
            yield chunk, np.arange(i, i + len(chunk)), None, None

    rows = []
    for x, index, _ in reader.batches(jobs()):
        if not len(index):
            continue
        scores = model(x)
        if isinstance(scores, dict):
            scores = next(iter(scores.values()))
        scores = scores if isinstance(scores, np.ndarray) else scores.get()
        scores = scores.reshape(len(index), -1).astype(np.float64)
        if not probabilities:
            scores = np.exp(scores - scores.max(axis=1, keepdims=True))
            scores /= scores.sum(axis=1, keepdims=True)
        best = scores.argmax(axis=1)
        for r, (i, k) in enumerate(zip(index, best)):
            row = {"file": os.path.relpath(paths[i], root), "class": int(k)}
            if classes is not None and k < len(classes):
                row["name"] = classes[k]
            row["score"] = float(scores[r, k])
            rows.append(row)
    return rows, reader


def _ends_in_softmax(plan) -> bool:
    from ..ops import Op

    made_by = {step.name: step for step in plan.steps}
    (buf,) = plan.outputs.values()
    step = made_by.get(buf)
    return step is not None and step.op is Op.SOFTMAX
