"""`cnnc sweep`: train a model for every combination of `let` constants, through Ray Tune.

    cnnc sweep model.cnn --let width=16,32,64 --let depth=2,3 --data digits --epochs 3

Every combination is checked before any trial starts; those with errors are listed with
their first diagnostic and left out. The others are trained, one Tune trial each, and the
results printed as a table (the constants, test accuracy, parameters, MACs, seconds) or,
with --format json, as one JSON object; -o also writes that JSON to a file.
"""

from __future__ import annotations

import json
import os
import sys
import time

from .common import (
    EXIT_ERRORS, EXIT_OK, CommandError, add_size_option, int_at_least, number_at_least,
    read_source, write_atomically,
)


def add_parser(sub):
    p = sub.add_parser(
        "sweep", help="train every combination of let constants (Ray Tune)",
        description="Train the model once for every combination of the values given with "
        "--let NAME=V1,V2,... (needs Ray: pip install 'cnnc[ray]'). Every combination is "
        "shape-checked first; those with errors are listed with their first diagnostic and "
        "not trained. Results: a table of the constants, test accuracy, parameters, MACs "
        "and training seconds, or JSON. Exit 0 when every trial trained, 1 when a "
        "combination has errors or a trial failed, 2 for bad input or when Ray is missing.",
    )
    p.add_argument("file", metavar="MODEL", help="the .cnn model, with top-level `let`s")
    p.add_argument("--data", required=True, metavar="digits|PATH.npz|FOLDER",
                   help="the training data, as for `cnnc train`")
    p.add_argument("--epochs", type=int_at_least(1), default=3,
                   help="epochs per trial (default 3)")
    p.add_argument("--batch", type=int_at_least(1), default=32, help="mini-batch (default 32)")
    p.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default="adam",
                   help="default adam")
    p.add_argument("--lr", type=number_at_least(0, strictly=True), help="learning rate (default 0.05 for sgd, 0.001 "
                   "otherwise)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="initial weights and shuffle "
                   "(default 0)")
    p.add_argument("--trials-at-once", type=int_at_least(1), metavar="N",
                   help="trials running at the same time (default: one per CPU)")
    p.add_argument("--address", metavar="ADDR",
                   help="the Ray cluster to join (default: start Ray on this machine)")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text: a table; json: one object with every configuration")
    p.add_argument("-o", "--output", metavar="RESULTS.json",
                   help="also write the JSON results to this file")
    add_size_option(p, example="H=8")
    return p


def _axes(lets: list) -> dict:
    """``--let`` pairs -> name -> list of values; a repeated name adds values."""
    from ..distributed.sweep import split_values

    axes: dict = {}
    for name, text in lets:
        values = split_values(text)
        if any(v == "" for v in values):
            raise CommandError(f"--let {name}={text}: an empty value; give values as "
                               f"{name}=16,32,64")
        axes.setdefault(name, [])
        axes[name] += [v for v in values if v not in axes[name]]
    return axes


def main(args) -> int:
    from ..distributed.sweep import Job, check_configuration, configurations

    if not args.let:
        raise CommandError("give the constants to sweep, e.g. --let width=16,32 --let "
                           "depth=2,3")
    source = read_source(args.file)
    sizes = dict(args.size)
    grid = configurations(_axes(args.let))
    checked = [check_configuration(source, args.file, consts, sizes) for consts in grid]
    invalid = [c for c in checked if not c.ok]
    valid = [c for c in checked if c.ok]
    if invalid:
        print(f"{len(invalid)} of {len(checked)} configurations have errors and will not be "
              "trained:", file=sys.stderr)
        for c in invalid:
            print(f"  {c.label()}: {c.error}", file=sys.stderr)
    if not valid:
        raise CommandError(f"none of the {len(checked)} configurations checks; nothing to "
                           "train", EXIT_ERRORS)
    data = args.data if args.data == "digits" else os.path.abspath(args.data)
    if data != "digits" and not os.path.exists(data):
        raise CommandError(f"cannot read data {args.data}: No such file or directory")
    lr = args.lr if args.lr is not None else (0.05 if args.optimizer == "sgd" else 1e-3)
    job = Job(source, args.file, sizes, data, args.epochs, args.batch, args.optimizer, lr,
              args.seed)
    from ..distributed.session import RayError
    from ..distributed.sweep import run_trials

    started = time.perf_counter()
    try:
        results = run_trials(job, [c.consts for c in valid], at_once=args.trials_at_once,
                             address=args.address)
    except RayError as err:
        raise CommandError(str(err)) from None
    wall = time.perf_counter() - started
    rows = []
    for c, result in zip(valid, results):
        rows.append({"let": c.consts, "accuracy": result.get("accuracy"),
                     "loss": result.get("loss"), "parameters": c.params, "macs": c.macs,
                     "seconds": result.get("seconds"), "error": result.get("error")})
    report = {"model": args.file, "data": args.data, "epochs": args.epochs, "trials": rows,
              "invalid": [{"let": c.consts, "error": c.error} for c in invalid],
              "wall_seconds": round(wall, 3)}
    if args.output:
        text = json.dumps(report, indent=2) + "\n"
        write_atomically(args.output, lambda f: f.write(text.encode("utf-8")))
    if args.format == "json":
        print(json.dumps(report, indent=2))
    else:
        print(_table(rows, list(valid[0].consts)))
        print(f"{len(rows)} trial{'s' * (len(rows) != 1)} of {args.epochs} epoch"
              f"{'s' * (args.epochs != 1)} in {wall:.1f}s, Ray's start included")
    failed = [r for r in rows if r["error"]]
    return EXIT_ERRORS if failed or invalid else EXIT_OK


def _table(rows: list, names: list) -> str:
    """Best accuracy first; a failed trial shows its error."""
    ranked = sorted(rows, key=lambda r: -(r["accuracy"] or -1))
    head = names + ["accuracy", "parameters", "MACs", "seconds"]
    lines = []
    for r in ranked:
        cells = [str(r["let"][n]) for n in names]
        if r["error"]:
            cells += [f"failed: {r['error']}", f"{r['parameters']:,}", f"{r['macs']:,}", "-"]
        else:
            acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.2%}"
            cells += [acc, f"{r['parameters']:,}", f"{r['macs']:,}", f"{r['seconds']:.1f}"]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) if i < len(names) else h.rjust(w)
                     for i, (h, w) in enumerate(zip(head, widths)))]
    for cells in lines:
        out.append("  ".join(c.ljust(w) if i < len(names) else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))))
    return "\n".join(out)
