"""`cnnc train`: fit a one-input classifier to a data set and save its weights.

    cnnc train examples/digits.cnn --data digits
    cnnc train model.cnn --data data.npz --epochs 20 --optimizer sgd --lr 0.05 -o w.npz
    cnnc train model.cnn --data data.npz --epochs 30 --resume w.ckpt.npz
    cnnc train model.cnn --data photos/ --resize 256 --epochs 20       # an image folder
    cnnc train model.cnn --data data.npz --ray --workers 4             # data-parallel

Progress: a bar per epoch when stdout is a terminal, one plain line per epoch otherwise;
with ``--format json`` the last line is a JSON object with the run's results. A checkpoint
is written after every epoch (and on Ctrl-C); ``--resume`` continues it exactly, keeping the
settings it was started with. A checkpoint that already holds trained epochs is never
replaced by a fresh run unless ``--force`` says so, and a training run that would not fit
in memory is refused before anything is built.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .common import (
    EXIT_ERRORS, EXIT_OK, CommandError, add_size_option, add_threads_option, apply_threads,
    check_model, decimal_number, int_at_least, lets, read_source, remove_stale_temporaries,
    require_concrete_sizes, require_memory, require_readable, write_atomically,
)
from .progress import progress_for

# Defaults of the flags that a checkpoint remembers. They are filled in after parsing, so
# that a resumed run can tell a flag the user gave from a default.
DEFAULTS = {
    "optimizer": "adam",
    "batch": 32,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": None,  # 0, or 0.01 for adamw
    "decay": "all",
    "schedule": "constant",
    "step_size": 10,
    "gamma": 0.1,
    "eta_min": 0.0,
    "warmup": 0,
    "label_smoothing": 0.0,
    "seed": 0,
    "dtype": "float32",
}
LEARNING_RATES = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}
EPOCHS = 10


_positive_int = int_at_least(1)
_count = int_at_least(0)


def _nonnegative(text: str) -> float:
    try:
        value = decimal_number(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _nonnegative(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train", help="train a classifier and save its weights",
        description="Train a one-input network whose output scores classes, with softmax "
        "cross-entropy, on scikit-learn's 8x8 digits, on an .npz file (x [N, C, H, W], "
        "integer labels y [N], optionally x_test and y_test; else a stratified 80/20 split), "
        "or on an image folder (one sub-folder per class; train/ and val/, or a held-out "
        "fraction), streamed from disk. "
        "A checkpoint is written after every epoch and on Ctrl-C; --resume continues one "
        "exactly, and a checkpoint holding trained epochs is replaced only with --force. "
        "Exit 0 when trained, 1 when the model has errors or training fails (a non-finite "
        "loss), 2 for bad input or files or a run too large for the memory available, 130 "
        "when interrupted.",
    )
    p.add_argument("file", metavar="FILE", help="the .cnn model")
    p.add_argument("--data", required=True, metavar="digits|PATH.npz|FOLDER",
                   help="'digits' (scikit-learn's 8x8 digits), an .npz file, or an image "
                   "folder with one sub-folder per class (and optionally train/ and val/)")
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help=f"train until this many epochs are done in all (default {EPOCHS}; "
                   "with --resume, the total including the checkpoint's)")
    p.add_argument("--batch", type=_positive_int, help="mini-batch size (default 32)")
    p.add_argument("--optimizer", choices=("sgd", "adam", "adamw"),
                   help="default adam")
    p.add_argument("--lr", type=_nonnegative,
                   help="learning rate (default 0.05 for sgd, 0.001 for adam and adamw)")
    p.add_argument("--momentum", type=_nonnegative, help="sgd momentum (default 0.9)")
    p.add_argument("--nesterov", action="store_true", default=None,
                   help="sgd with Nesterov momentum")
    p.add_argument("--weight-decay", type=_nonnegative,
                   help="L2 decay for sgd and adam, decoupled decay for adamw (default 0; "
                   "0.01 for adamw)")
    p.add_argument("--decay", choices=("all", "weights"),
                   help="which parameters weight decay applies to: all trainable ones "
                   "(default), or conv and dense weights only")
    p.add_argument("--schedule", choices=("constant", "step", "cosine"),
                   help="per-epoch learning-rate schedule (default constant); cosine anneals "
                   "to --eta-min over the run's epochs")
    p.add_argument("--step-size", type=_positive_int,
                   help="step schedule: epochs between decays (default 10)")
    p.add_argument("--gamma", type=_nonnegative, help="step schedule: decay factor (default 0.1)")
    p.add_argument("--eta-min", type=_nonnegative,
                   help="cosine schedule: the final learning rate (default 0)")
    p.add_argument("--warmup", type=_count,
                   help="epochs of linear warm-up before the schedule (default 0)")
    p.add_argument("--label-smoothing", type=_fraction, help="default 0")
    p.add_argument("--seed", type=_count, help="seeds initial weights, shuffling and dropout "
                   "(default 0)")
    p.add_argument("-o", "--output", metavar="WEIGHTS.npz",
                   help="where to save the final weights (default MODEL.weights.npz in the "
                   "current folder)")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="checkpoint written after each epoch (default: the --resume file, "
                   "else next to the weights as NAME.ckpt.npz)")
    p.add_argument("--init", metavar="W",
                   help="start from these weights (.npz, .safetensors or a PyTorch .pt/.pth, "
                   "by name or by structure) instead of the seeded initialisation")
    p.add_argument("--show-mapping", action="store_true",
                   help="print which array of --init went to which parameter")
    p.add_argument("--resume", metavar="CKPT.npz",
                   help="continue from a checkpoint, with the settings it was started with")
    p.add_argument("--force", action="store_true",
                   help="start afresh even where the checkpoint file already holds trained "
                   "epochs, replacing it (without --force such a run is refused)")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="json: the last line is a JSON object with the results")
    p.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="auto")
    p.add_argument("--dtype", choices=("float32", "float64"))
    add_size_option(p, example="H=8")
    add_threads_option(p)
    _add_image_options(p)
    g = p.add_argument_group("data-parallel training through Ray (--ray; pip install "
                             "'cnnc[ray]')")
    g.add_argument("--ray", action="store_true",
                   help="split every mini-batch over Ray workers and average their "
                   "gradients each step (the same result as one process, up to rounding, "
                   "for networks without batchnorm or dropout)")
    g.add_argument("--workers", type=_positive_int, metavar="N",
                   help="Ray workers, one CPU each (default 2)")
    g.add_argument("--address", metavar="ADDR",
                   help="the Ray cluster to join (as `ray start --head` prints, or auto); "
                   "default: start Ray on this machine")
    return p


IMAGE_FLAGS = ("val_fraction", "resize", "mean", "std", "crop_padding", "no_flip", "loaders")


def _numbers(text: str) -> list:
    """``0.5`` or ``0.485,0.456,0.406``: one number, or one per channel."""
    try:
        return [decimal_number(part) for part in text.split(",")]
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_image_options(p) -> None:
    g = p.add_argument_group("image folders (--data FOLDER)")
    g.add_argument("--val-fraction", type=_fraction, metavar="F",
                   help="without a val/ folder, hold out this fraction of each class, a "
                   "fixed choice (default 0.2)")
    g.add_argument("--resize", type=_positive_int, metavar="N",
                   help="resize each image's shorter side to N before the centre crop to the "
                   "input's size (default: the input's larger side; e.g. 256 for 224)")
    g.add_argument("--mean", type=_numbers, metavar="M[,M,M]",
                   help="per-channel mean subtracted from pixels in [0, 1] (default "
                   "ImageNet's 0.485,0.456,0.406; grey 0.449)")
    g.add_argument("--std", type=_numbers, metavar="S[,S,S]",
                   help="per-channel standard deviation divided by (default ImageNet's "
                   "0.229,0.224,0.225; grey 0.226)")
    g.add_argument("--crop-padding", type=_count, metavar="P",
                   help="training: random crop from the image padded by P zeros on each side "
                   "(default 4; 0 turns it off)")
    g.add_argument("--no-flip", action="store_true", default=None,
                   help="training: no random horizontal flips (default: flip half the images)")
    g.add_argument("--loaders", type=_positive_int, metavar="N",
                   help="background threads decoding images (default: the CPU count, at "
                   "most 4)")


# ---- settings ---------------------------------------------------------------------------------


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _settings(args) -> dict:
    """Every training setting: the flags given, defaults for the rest."""
    s = {k: getattr(args, k) for k in DEFAULTS}
    for key, value in DEFAULTS.items():
        if s[key] is None:
            s[key] = value
    if s["weight_decay"] is None:
        s["weight_decay"] = 0.01 if s["optimizer"] == "adamw" else 0.0
    s["lr"] = args.lr if args.lr is not None else LEARNING_RATES[s["optimizer"]]
    if s["optimizer"] != "sgd":
        for key in ("momentum", "nesterov"):
            if getattr(args, key) is not None:
                raise CommandError(f"{_flag(key)} applies to --optimizer sgd, not "
                                   f"{s['optimizer']}")
    if s["nesterov"] and s["momentum"] == 0:
        raise CommandError("--nesterov needs --momentum above 0")
    owners = {"step_size": "step", "gamma": "step", "eta_min": "cosine"}
    for key, schedule in owners.items():
        if getattr(args, key) is not None and s["schedule"] != schedule:
            raise CommandError(f"{_flag(key)} applies to --schedule {schedule}, not "
                               f"{s['schedule']}")
    return s


def _resumed_settings(args, meta: dict, path: str) -> dict:
    """The checkpoint's settings; a flag given with another value is refused."""
    opt = meta["optimizer"]
    hyper = opt["hyper"]
    sched = meta["schedule"]
    saved = {
        "optimizer": opt["kind"], "batch": meta["batch_size"], "lr": sched["base_lr"],
        "weight_decay": hyper["weight_decay"], "decay": hyper["decay"],
        "schedule": sched["kind"], "step_size": sched["step_size"], "gamma": sched["gamma"],
        "eta_min": sched["eta_min"], "warmup": sched["warmup"],
        "label_smoothing": meta["label_smoothing"], "seed": meta["seed"],
        "dtype": meta["dtype"], "momentum": hyper.get("momentum"),
        "nesterov": hyper.get("nesterov"), "t_max": sched["t_max"],
    }
    for key, value in saved.items():
        given = getattr(args, key, None)
        if given is None or given == value:
            continue
        if value is None:
            raise CommandError(f"{_flag(key)} does not apply to the checkpoint's optimizer, "
                               f"{opt['kind']} ({path})")
        raise CommandError(f"{_flag(key)} {given} differs from the checkpoint's {value} "
                           f"({path}); a resumed run keeps the settings it was started with, "
                           "so leave the flag out")
    return saved


def _optimizer(s: dict, model):
    from ..runtime import optim

    common = dict(lr=s["lr"], weight_decay=s["weight_decay"], decay=s["decay"])
    if s["optimizer"] == "sgd":
        return optim.SGD(model, momentum=s["momentum"], nesterov=s["nesterov"], **common)
    return optim.make_optimizer(s["optimizer"], model, **common)


def _schedule(s: dict, epochs: int):
    from ..runtime.optim import Schedule

    t_max = s.get("t_max") or max(1, epochs - s["warmup"])
    return Schedule(s["lr"], s["schedule"], step_size=s["step_size"], gamma=s["gamma"],
                    t_max=t_max, eta_min=s["eta_min"], warmup=s["warmup"])


# ---- files ------------------------------------------------------------------------------------


def _default_output(model_path: str) -> str:
    stem = "model" if model_path == "-" else os.path.splitext(os.path.basename(model_path))[0]
    return f"{stem}.weights.npz"


def _default_checkpoint(output: str) -> str:
    stem = output[:-4] if output.endswith(".npz") else output
    if stem.endswith(".weights"):
        stem = stem[: -len(".weights")]
    return stem + ".ckpt.npz"


def _check_writable(path: str, what: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CommandError(f"cannot write {what} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise CommandError(f"cannot write {what} {path}: folder {folder} is not writable")
    if os.path.isdir(path):
        raise CommandError(f"cannot write {what} {path}: it is a folder")


def _same_file(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _refuse_to_replace(checkpoint: str, args) -> None:
    """A fresh run writes its checkpoint over ``checkpoint``: refuse, unless --force, when
    that file holds trained epochs (or is something other than a cnnc checkpoint), naming
    what it holds and how to continue it."""
    from ..runtime import train

    if args.force or not os.path.lexists(checkpoint):
        return
    try:
        held = train.read_checkpoint_meta(checkpoint)
    except train.CheckpointError as err:
        raise CommandError(f"the checkpoint path {checkpoint} holds a file that is not a "
                           f"readable cnnc checkpoint ({err}); choose another --checkpoint, "
                           "or give --force to replace it") from None
    epochs, step = held.get("epoch", 0), held.get("step", 0)
    if not epochs and not step:
        return
    done = f"{epochs} trained epoch{'s' if epochs != 1 else ''}"
    if step:
        done += f" and {step} step{'s' if step != 1 else ''} of the next"
    raise CommandError(f"checkpoint {checkpoint} holds {done} of network "
                       f"{held.get('network')}; continue it with --resume {checkpoint}, or "
                       "give --force to start afresh and replace it")


def _image_folder(args, plan, out):
    """The image folder ``args.data`` as a training source; unreadable images are reported
    on stderr as they are met."""
    from ..data import images
    from ..runtime import train

    in_name, in_shape, _, _ = train.classifier_shape(plan)

    def skipped(path, why):
        out.flush()
        print(f"cnnc: warning: skipped {path}: {why}", file=sys.stderr, flush=True)

    loaders = args.loaders or min(4, os.cpu_count() or 1)
    padding = images.PADDING if args.crop_padding is None else args.crop_padding
    try:
        return images.open_folder(args.data, in_shape, val_fraction=args.val_fraction,
                                  resize=args.resize, mean=args.mean, std=args.std,
                                  padding=padding, flip=not args.no_flip, workers=loaders,
                                  on_skip=skipped)
    except train.DataError as err:
        raise CommandError(str(err)) from None


def _load_data(args, plan, out):
    from ..runtime import train

    folder = os.path.isdir(args.data)
    if not folder:
        given = [k for k in IMAGE_FLAGS if getattr(args, k) is not None]
        if given:
            raise CommandError(f"{_flag(given[0])} applies to an image folder; --data "
                               f"{args.data} is not a folder")
        data = train.load_data(args.data)
        train.check_data(plan, data)
        return data
    data = _image_folder(args, plan, out)
    data.check(plan)
    return data


def _trainer(args, source: bytes, s: dict, model, optimizer, schedule, checkpoint):
    """The single-process trainer, or with --ray the data-parallel one."""
    from ..runtime import train

    options = dict(schedule=schedule, batch_size=s["batch"], seed=s["seed"],
                   label_smoothing=s["label_smoothing"], checkpoint=checkpoint)
    if not args.ray:
        return train.Trainer(model, optimizer, **options)
    from ..distributed.inference import ModelSpec
    from ..distributed.session import RayError
    from ..distributed.training import DataParallelTrainer

    spec = ModelSpec(source, args.file, dict(args.size), lets(args), None, model.backend.name,
                     str(model.dtype), s["seed"])
    try:
        return DataParallelTrainer(model, optimizer, spec=spec, workers=args.workers or 2,
                                   address=args.address, **options)
    except RayError as err:
        raise CommandError(str(err)) from None


def _describe_folder(data, out) -> None:
    """One line: the classes, the split and how many files were left out."""
    from ..data.images import describe

    print(describe(data), file=out, flush=True)


def _write_image_settings(data, weights: str) -> str | None:
    """Beside the weights, what `cnnc run` needs to read images as training did: the class
    names and the preprocessing. None for data that is not an image folder."""
    from ..data import images

    if not isinstance(data, images.ImageFolder):
        return None
    path = images.settings_path(weights)
    text = json.dumps(images.settings_of(data), indent=2) + "\n"
    write_atomically(path, lambda f: f.write(text.encode("utf-8")))
    return path


def _require_memory(plan, s: dict, data, on_device: bool) -> None:
    """Refuse, before the model is built, a run whose parameters, gradients, optimizer
    state, activations for one batch and (once ``data`` is read) the data's copy in the
    model's dtype need more memory than is available."""
    import numpy as np

    from ..runtime.model import estimate_saved_bytes, param_bytes

    dtype = np.dtype(s["dtype"])
    batch = s["batch"] if data is None else min(s["batch"], max(1, data.train_size))
    trainable = param_bytes(plan, dtype, trainable=True)
    slots = {"sgd": 1 if s["momentum"] else 0, "adam": 2, "adamw": 2}[s["optimizer"]]
    parts = [("parameters", param_bytes(plan, dtype)), ("gradients", trainable),
             ("optimizer state", slots * trainable),
             (f"activations for a batch of {batch}",
              estimate_saved_bytes(plan, dtype, batch, every_output=True))]
    if data is not None and hasattr(data, "x_train"):  # arrays in memory, not a stream
        copies = [a for a in (data.x_train, data.x_test) if on_device or a.dtype != dtype]
        parts.append((f"the data in {dtype}", sum(a.size for a in copies) * dtype.itemsize))
    require_memory(plan, f"training network {plan.network}", parts, dtype, batch, on_device)


# ---- main -------------------------------------------------------------------------------------


def main(args) -> int:
    apply_threads(args)
    from ..api import Compiled
    from ..runtime import train
    from ..runtime.model import LayerError, Model, TooLargeError, select_backend

    if not args.ray:
        given = [f for f in ("workers", "address") if getattr(args, f) is not None]
        if given:
            raise CommandError(f"--{given[0]} applies with --ray")
    net_source = read_source(args.file)
    net = check_model(net_source, args.file, dict(args.size), consts=lets(args))
    require_concrete_sizes(net, args.file, "training")
    plan = Compiled(net).plan
    try:
        train.classifier_shape(plan)
    except train.DataError as err:
        raise CommandError(f"{args.file}: {err}") from None

    ckpt = None
    if args.init is not None:
        if args.resume is not None:
            raise CommandError("--init starts a run from given weights and --resume continues "
                               "one from its checkpoint; give one of them")
        require_readable(args.init, "weight file")
    if args.resume is not None:
        try:
            ckpt = train.read_checkpoint(args.resume, plan)
            s = _resumed_settings(args, ckpt.meta, args.resume)
        except train.CheckpointError as err:
            raise CommandError(str(err)) from None
        except (KeyError, TypeError) as err:
            raise CommandError(f"checkpoint {args.resume} is damaged: missing {err}") from None
    else:
        s = _settings(args)
    epochs = args.epochs or EPOCHS

    output = args.output or _default_output(args.file)
    checkpoint = args.checkpoint or args.resume or _default_checkpoint(output)
    for path, flag in ((output, "-o"), (checkpoint, "--checkpoint")):
        if path == "-":
            raise CommandError(f"{flag} -: training writes its weights and checkpoint to "
                               "files; give a file name")
    if _same_file(output, checkpoint):
        raise CommandError(f"the weights (-o {output}) and the checkpoint ({checkpoint}) must "
                           "be different files")
    for path, what in ((output, "weights"), (checkpoint, "checkpoint")):
        if args.data != "digits" and _same_file(path, args.data):
            raise CommandError(f"the {what} path {path} is the data file; choose another")
        _check_writable(path, what)
    if args.resume is None or not _same_file(checkpoint, args.resume):
        _refuse_to_replace(checkpoint, args)
    for path in (output, checkpoint):
        remove_stale_temporaries(path)

    try:
        backend = select_backend(args.backend)
    except RuntimeError as err:  # e.g. backend cupy without CuPy
        raise CommandError(str(err)) from None
    _require_memory(plan, s, None, backend.on_device)  # before the data is even read
    out = sys.stdout
    try:
        data = _load_data(args, plan, out)
    except train.DataError as err:
        raise CommandError(str(err)) from None
    _require_memory(plan, s, data, backend.on_device)
    if hasattr(data, "layout"):
        _describe_folder(data, out)
    try:
        model = Model(plan, backend=backend.name, seed=s["seed"], dtype=s["dtype"])
        if args.init is not None:  # a WeightFileError is a ValueError
            mapping = model.load(args.init)
            if args.show_mapping:
                print(mapping.describe(), file=sys.stderr)
        optimizer = _optimizer(s, model)
        schedule = _schedule(s, epochs)
    except (RuntimeError, ValueError, TooLargeError) as err:
        raise CommandError(str(err)) from None
    trainer = _trainer(args, net_source, s, model, optimizer, schedule, checkpoint)
    if args.ray:
        print(f"data-parallel: each batch of {s['batch']} split over {len(trainer.workers)} "
              "Ray workers, gradients averaged every step", file=out, flush=True)
    if ckpt is not None:
        try:
            trainer.restore(ckpt)
            if trainer.epoch < epochs:
                trainer.check_resume(data)
        except (train.CheckpointError, train.DataError) as err:
            raise CommandError(str(err)) from None

    progress = progress_for(out)
    if ckpt is not None and trainer.epoch >= epochs:
        print(f"{args.resume} already holds {trainer.epoch} epochs; nothing to train", file=out)
    elif ckpt is not None:
        print(f"resuming {args.resume} at epoch {trainer.epoch + 1}"
              + (f", step {trainer.step_in_epoch + 1}" if trainer.step_in_epoch else ""),
              file=out)
    try:
        history = trainer.fit(data, epochs, progress)
    except (train.CheckpointError, train.DataError) as err:
        raise CommandError(str(err)) from None
    except train.TrainingDiverged as err:
        raise CommandError(str(err), EXIT_ERRORS) from None
    except (ValueError, MemoryError) as err:  # a kernel refusing its input, memory running out
        # a LayerError already says where (file:line:col and layer); others say what
        what = str(err) if isinstance(err, LayerError) else f"{type(err).__name__}: {err}"
        raise CommandError(f"training failed at epoch {trainer.epoch + 1}, step "
                           f"{trainer.step_in_epoch + 1}: {what}", EXIT_ERRORS) from None
    except train.TrainingInterrupted as err:
        out.flush()
        hint = f"; continue with --resume {err.checkpoint}" if err.checkpoint else ""
        print(f"cnnc: {err}{hint}", file=sys.stderr)
        return 130
    except OSError as err:  # writing the checkpoint: a full disk, a folder gone
        if err.filename is None or not _same_file(os.fsdecode(err.filename), checkpoint):
            raise
        kept = ("nothing was saved" if trainer.saved_epoch is None else
                f"{checkpoint} still holds the state after epoch {trainer.saved_epoch}")
        where = (f"after epoch {trainer.epoch}" if not trainer.step_in_epoch else
                 f"in epoch {trainer.epoch + 1}, after step {trainer.step_in_epoch}")
        raise CommandError(f"cannot write checkpoint {checkpoint}: {err.strerror or err}; "
                           f"training stopped {where} ({kept})") from None

    try:
        model.save(output)
    except OSError as err:
        raise CommandError(f"cannot write weights {output}: {err.strerror or err}") from None
    settings = _write_image_settings(data, output)
    skipped = len(getattr(data, "skipped", ()))
    last = history[-1]
    if args.format == "json":
        report = {
            "epochs": len(history),
            "train_loss": last.train_loss,
            "train_accuracy": last.train_accuracy,
            "test_accuracy": last.test_accuracy,
            "seconds": round(trainer.elapsed, 3),
            "weights": output,
        }
        if settings is not None:
            report.update(image_settings=settings, classes=list(data.classes),
                          skipped=sorted(data.skipped))
        print(json.dumps(report))
    else:
        test = "-" if last.test_accuracy is None else f"{last.test_accuracy:.2%}"
        print(f"trained {plan.network} for {len(history)} epoch{'s' * (len(history) != 1)} in {trainer.elapsed:.1f}s: "
              f"test accuracy {test}; weights saved to {output}, checkpoint {checkpoint}")
        if settings is not None:
            unread = (f"; skipped {skipped} unreadable image{'s' * (skipped != 1)}"
                      if skipped else "")
            print(f"classes {', '.join(data.classes)} and the preprocessing saved to "
                  f"{settings}{unread}")
    return EXIT_OK
