"""Image folders (data/images.py): the layouts, the preprocessing, augmentation drawn from
(seed, epoch, sample), unreadable files skipped and reported once, and training from a
folder through `cnnc train` and predictions through `cnnc run`. Every tree is made here,
small PNG and JPEG files in tmp_path, some of them broken."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from cnnc.cli import main  # noqa: E402
from cnnc.data import images  # noqa: E402
from cnnc.runtime.train import DataError  # noqa: E402

COLOURS = {"blue": (30, 30, 200), "green": (30, 200, 30), "red": (200, 30, 30)}
SMALL = """\
network small
input image: [3, 8, 8]
output logits = image -> conv(4, 3, pad=1) -> relu -> global_avgpool -> flatten -> dense(3)
"""


def make_tree(root, per_class=6, broken=(), size=(12, 10)):
    """One folder per colour with noisy images of it, PNG and JPEG alternately; ``broken``
    names files (class/name) written with bytes that are no image."""
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        os.makedirs(root / name, exist_ok=True)
        for i in range(per_class):
            h, w = size
            pixels = np.clip(np.array(rgb) + rng.normal(0, 20, (h + i, w, 3)), 0, 255)
            ext = "png" if i % 2 else "jpg"
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i:02d}.{ext}")
    for rel in broken:
        (root / rel).write_bytes(b"this is not an image")
    return root


def preprocess(**kw):
    return images.Preprocess.for_input((3, 8, 8), **kw)


# ---- preprocessing --------------------------------------------------------------------------


def test_resize_and_centre_crop_keep_the_middle(tmp_path):
    # a 20 x 40 image, left half black, right half white: the centre crop of the resized
    # image (8 x 16) is columns 4..12, half black and half white
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, 20:] = 255
    Image.fromarray(a).save(tmp_path / "half.png")
    p = images.Preprocess.for_input((3, 8, 8), mean=[0], std=[1])
    x = p.load(str(tmp_path / "half.png"))
    assert x.shape == (3, 8, 8) and x.dtype == np.float32
    assert np.allclose(x[:, :, :3], 0) and np.allclose(x[:, :, 5:], 1)


def test_normalisation_is_per_channel(tmp_path):
    Image.fromarray(np.full((8, 8, 3), (255, 0, 51), np.uint8)).save(tmp_path / "c.png")
    x = preprocess(mean=[0.5, 0.5, 0.5], std=[0.5, 0.25, 0.2]).load(str(tmp_path / "c.png"))
    assert np.allclose(x[:, 0, 0], [1.0, -2.0, (0.2 - 0.5) / 0.2], atol=1e-5)


def test_grey_input_and_its_defaults(tmp_path):
    Image.fromarray(np.full((9, 9, 3), 255, np.uint8)).save(tmp_path / "w.png")
    p = images.Preprocess.for_input((1, 8, 8))
    assert p.mean == (round(sum(images.IMAGENET_MEAN) / 3, 4),)
    x = p.load(str(tmp_path / "w.png"))
    assert x.shape == (1, 8, 8)
    assert np.allclose(x, (1 - p.mean[0]) / p.std[0])


@pytest.mark.parametrize("shape, words", [((4, 8, 8), "images fill"), ((3, 8), "images fill")])
def test_shapes_images_cannot_fill(shape, words):
    with pytest.raises(DataError, match=words):
        images.Preprocess.for_input(shape)


def test_settings_that_do_not_fit_are_refused():
    with pytest.raises(DataError, match="--resize 6 is smaller than the input's 8 x 8"):
        preprocess(resize=6)
    with pytest.raises(DataError, match="--mean gives 2 values; the input has 3 channels"):
        preprocess(mean=[0.1, 0.2])
    with pytest.raises(DataError, match="--std must be above 0"):
        preprocess(std=[0])


def test_augmentation_depends_on_the_key_only():
    x = np.arange(3 * 8 * 8, dtype=np.float32).reshape(3, 8, 8)
    aug = images.Augment(padding=2, flip=True)
    a = aug.apply(x, np.random.default_rng((0, 1, 5)))
    b = aug.apply(x, np.random.default_rng((0, 1, 5)))
    assert np.array_equal(a, b) and a.shape == x.shape
    drawn = {aug.apply(x, np.random.default_rng((0, e, 5))).tobytes() for e in range(20)}
    assert len(drawn) > 5  # other epochs, other crops and flips
    flip_only = images.Augment(padding=0, flip=True).apply(x, np.random.default_rng((0, 0, 0)))
    assert np.array_equal(flip_only, x) or np.array_equal(flip_only, x[:, :, ::-1])


# ---- layouts --------------------------------------------------------------------------------


def test_class_folders_are_split_stratified_and_fixed(tmp_path):
    make_tree(tmp_path / "photos", per_class=10)
    layout = images.scan(tmp_path / "photos")
    assert layout.classes == ["blue", "green", "red"]
    assert len(layout.train) == 24 and len(layout.val) == 6
    assert sorted(np.bincount(layout.val.labels)) == [2, 2, 2]
    again = images.scan(tmp_path / "photos")
    assert again.val.paths == layout.val.paths
    assert not set(layout.val.paths) & set(layout.train.paths)
    half = images.scan(tmp_path / "photos", val_fraction=0.5)
    assert len(half.val) == 15


def test_train_and_val_folders(tmp_path):
    make_tree(tmp_path / "photos" / "train", per_class=3)
    make_tree(tmp_path / "photos" / "val", per_class=2)
    (tmp_path / "photos" / "train" / "README.txt").write_text("notes")
    layout = images.scan(tmp_path / "photos")
    assert (len(layout.train), len(layout.val), layout.split) == (9, 6, "val/")
    with pytest.raises(DataError, match="--val-fraction applies only"):
        images.scan(tmp_path / "photos", val_fraction=0.1)


def test_folders_that_are_not_image_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        images.scan(tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    with pytest.raises(DataError, match="has no class folders; expected one sub-folder per"):
        images.scan(tmp_path / "flat")
    make_tree(tmp_path / "p" / "train")
    make_tree(tmp_path / "p" / "val")
    (tmp_path / "p" / "val" / "cow").mkdir()
    with pytest.raises(DataError, match="class folder cow that .* does not have"):
        images.scan(tmp_path / "p")
    os.makedirs(tmp_path / "empty" / "a")
    os.makedirs(tmp_path / "empty" / "b")
    with pytest.raises(DataError, match="holds no images in its class folders"):
        images.scan(tmp_path / "empty")


# ---- reading batches ------------------------------------------------------------------------


def test_unreadable_files_are_skipped_and_reported_once(tmp_path):
    make_tree(tmp_path / "photos", per_class=4, broken=["red/bad.jpg", "blue/zero.png"])
    reports = []
    folder = images.open_folder(tmp_path / "photos", (3, 8, 8), val_fraction=0.0,
                                on_skip=lambda path, why: reports.append((path, why)))
    assert folder.train_size == 14
    order = np.arange(14)
    bounds = [(0, 7), (7, 14)]
    for _ in range(2):  # two epochs: each broken file is reported once
        got = list(folder.train_batches(order, bounds, 0, 0, 0))
        assert sum(len(y) for _, y in got) == 12
    assert sorted(os.path.basename(p) for p, _ in reports) == ["bad.jpg", "zero.png"]
    assert all("cannot identify image file" in why for _, why in reports)
    assert len(folder.skipped) == 2


def test_batches_do_not_depend_on_the_number_of_threads(tmp_path):
    make_tree(tmp_path / "photos", per_class=5)
    order = np.random.default_rng(3).permutation(12)
    bounds = [(0, 5), (5, 10), (10, 12)]
    runs = []
    for workers in (1, 3):
        folder = images.open_folder(tmp_path / "photos", (3, 8, 8), workers=workers)
        runs.append(list(folder.train_batches(order, bounds, 1, epoch=2, seed=7)))
    assert len(runs[0]) == 2  # from the second batch on
    for (xa, ya), (xb, yb) in zip(*runs):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert list(runs[0][0][1]) == list(folder.layout.train.labels[order[5:10]])


def test_fingerprint_changes_with_files_and_settings(tmp_path):
    make_tree(tmp_path / "photos", per_class=3)
    a = images.open_folder(tmp_path / "photos", (3, 8, 8)).fingerprint()
    assert images.open_folder(tmp_path / "photos", (3, 8, 8)).fingerprint() == a
    assert images.open_folder(tmp_path / "photos", (3, 8, 8), padding=0).fingerprint() != a
    make_tree(tmp_path / "photos", per_class=4)
    assert images.open_folder(tmp_path / "photos", (3, 8, 8)).fingerprint() != a


# ---- cnnc train and cnnc run on folders -----------------------------------------------------


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "small.cnn").write_text(SMALL)
    make_tree(tmp_path / "photos", per_class=6, broken=["green/broken.jpg"])
    return tmp_path


def test_train_on_a_folder_then_classify_it(work, capsys):
    status = main(["train", "small.cnn", "--data", "photos", "--epochs", "2", "--batch", "4",
                   "--lr", "0.05"])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "photos: 3 classes (blue, green, red); 16 training images, 3 validation" in out
    assert "skipped photos/green/broken.jpg: cannot identify image file" in err
    assert err.count("broken.jpg") == 1
    assert "skipped 1 unreadable image" in out
    settings = json.loads((work / "small.weights.json").read_text())
    assert settings["classes"] == ["blue", "green", "red"] and settings["resize"] == 8

    status = main(["run", "small.cnn", "--input", "photos", "--weights", "small.weights.npz",
                   "-o", "preds.csv"])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "predictions for 18 images; skipped 1 unreadable image" in err
    rows = list(csv.DictReader((work / "preds.csv").open()))
    assert len(rows) == 18 and set(rows[0]) == {"file", "class", "name", "score"}
    assert rows[0]["file"] == os.path.join("blue", "00.jpg")
    for row in rows:
        assert row["name"] == ["blue", "green", "red"][int(row["class"])]
        assert 1 / 3 <= float(row["score"]) <= 1

    status = main(["run", "small.cnn", "--input", "photos/red", "-o", "preds.json", "-q"])
    assert status == 0
    rows = json.loads((work / "preds.json").read_text())
    assert len(rows) == 6 and "name" not in rows[0]  # no weights: no class names


def test_resume_from_a_folder_is_exact(work, capsys):
    args = ["train", "small.cnn", "--data", "photos", "--batch", "4", "--lr", "0.05"]
    assert main([*args, "--epochs", "2", "-o", "straight.npz"]) == 0
    assert main([*args, "--epochs", "1", "-o", "first.npz"]) == 0
    assert main([*args, "--epochs", "2", "-o", "first.npz", "--resume", "first.ckpt.npz"]) == 0
    capsys.readouterr()
    a, b = np.load(work / "straight.npz"), np.load(work / "first.npz")
    for key in a.files:
        assert np.array_equal(a[key], b[key]), key
    # other augmentation is other data: the checkpoint refuses it
    status = main([*args, "--epochs", "3", "-o", "first.npz", "--resume", "first.ckpt.npz",
                   "--crop-padding", "0"])
    _, err = capsys.readouterr()
    assert status == 2 and "trained on other data" in err


@pytest.mark.parametrize("argv, words", [
    (["--data", "photos", "--mean", "0.1,0.2"], "--mean gives 2 values; the input has 3"),
    (["--data", "photos", "--resize", "4"], "--resize 4 is smaller than the input's 8 x 8"),
    (["--data", "nowhere.npz", "--no-flip"], "--no-flip applies to an image folder"),
    (["--data", "photos/red"], "has no class folders"),
])
def test_train_refusals(work, capsys, argv, words):
    status = main(["train", "small.cnn", *argv])
    _, err = capsys.readouterr()
    assert status == 2 and words in err and "Traceback" not in err


def test_more_classes_than_the_network_scores(work, capsys):
    (work / "two.cnn").write_text(SMALL.replace("dense(3)", "dense(2)"))
    status = main(["train", "two.cnn", "--data", "photos"])
    _, err = capsys.readouterr()
    assert status == 2
    assert "photos has 3 classes (blue, green, red), but output `logits` of small" in err


@pytest.mark.parametrize("argv, words", [
    (["-o", "preds.txt"], "written as .csv or .json"),
    (["-o", "p.csv", "--mean", "1,2"], "--mean gives 2 values"),
])
def test_run_refusals(work, capsys, argv, words):
    status = main(["run", "small.cnn", "--input", "photos", *argv])
    _, err = capsys.readouterr()
    assert status == 2 and words in err and "Traceback" not in err


def test_run_needs_class_scores(work, capsys):
    (work / "map.cnn").write_text("network map\ninput image: [3, 8, 8]\n"
                                  "output y = image -> conv(2, 3, pad=1)\n")
    status = main(["run", "map.cnn", "--input", "photos", "-o", "p.csv"])
    _, err = capsys.readouterr()
    assert status == 2
    assert "classifying images needs an output of class scores [classes]; output `y` of " \
           "map is [2, 8, 8]" in err


def test_without_pillow_the_extra_is_named(work, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now fails
    for argv in (["train", "small.cnn", "--data", "photos"],
                 ["run", "small.cnn", "--input", "photos", "-o", "p.csv"]):
        status = main(argv)
        _, err = capsys.readouterr()
        assert status == 2
        assert "image folders are read with Pillow: pip install 'cnnc[images]'" in err
