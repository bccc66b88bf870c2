"""`cnnc run`: run a model on arrays read from a .npy or .npz file and write its outputs.

    cnnc run model.cnn --input x.npy -o y.npy [--weights w.npz] [--size H=224]

One input reads from a .npy file (or an .npz holding that input's name); several inputs
from an .npz keyed by input name. One output writes a .npy file (or an .npz when the name
ends in .npz); several outputs need an .npz, keyed by output name. ``-o -`` writes the one
output's .npy bytes to standard output (not to a terminal). Symbolic sizes that --size
does not give are read off the input arrays' shapes.

Before anything is allocated, the parameters and the memory plan's peak for the batch are
compared with the memory available; a model that would not fit is refused (exit 2).
"""

from __future__ import annotations

import os
import sys

from .common import (
    EXIT_ERRORS, EXIT_OK, CommandError, add_report_options, add_size_option, add_threads_option,
    add_weights_option, apply_threads, check_model, decimal_number, int_at_least, lets,
    number_at_least, read_source, remove_stale_temporaries, require_concrete_sizes,
    require_memory, require_readable, standard_output_for, write_atomically,
)

NUMERIC_KINDS = "biuf"  # bool, signed and unsigned integers, floats


def add_parser(sub):
    parser = sub.add_parser(
        "run", help="run a model on arrays from a .npy or .npz file, or on images",
        description="Run a model on the arrays in a .npy or .npz file and write its outputs; "
        "or classify every image in a folder (--input FOLDER); or run many shards through "
        "Ray (--ray). "
        "Without --weights the model runs with its seeded default initialisation (seed 0). "
        "Exit 0 on success, 1 when the model has errors, 2 when a file cannot be read or "
        "written or does not fit the model, or the run would not fit in the memory "
        "available.",
    )
    parser.add_argument("file", metavar="MODEL", help="a .cnn file, or - for stdin")
    parser.add_argument("--input", "-i", required=True, metavar="X",
                        help="a .npy file for a network with one input, or an .npz file "
                        "keyed by input name; the first axis is the batch")
    parser.add_argument("-o", "--output", required=True, metavar="Y",
                        help="where to write the outputs: a .npy file for one output, an "
                        ".npz file keyed by output name (required for several outputs); "
                        "- writes the one output's .npy bytes to standard output")
    add_weights_option(parser)
    parser.add_argument("--backend", choices=("auto", "numpy", "cupy", "onnxruntime"),
                        default="auto",
                        help="what to run on; auto takes CuPy when a GPU is usable; "
                        "onnxruntime runs the exported graph in ONNX Runtime (default: auto)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="floating-point type to compute in (default: float32)")
    add_size_option(parser, more="symbols not given are read off the input arrays")
    add_threads_option(parser)
    add_report_options(parser, "the file, the sizes used and every output's shape")
    images = parser.add_argument_group(
        "image folders (--input FOLDER)",
        "Every image under the folder is classified; -o names a .csv or .json file (or - "
        "for CSV on standard output) with the file, the class and its score per image. "
        "The preprocessing and class names are read from the settings `cnnc train` wrote "
        "beside the weights (W.json for W.npz); the flags below override them.")
    images.add_argument("--batch", type=int_at_least(1), metavar="N",
                        help="samples per forward pass: images (default 64) or rows of a "
                        "shard with --ray (default 256)")
    images.add_argument("--resize", type=int_at_least(1), metavar="N",
                        help="the shorter side before the centre crop (default: as trained, "
                        "else the input's larger side)")
    images.add_argument("--mean", type=_numbers, metavar="M[,M,M]",
                        help="per-channel mean (default: as trained, else ImageNet's)")
    images.add_argument("--std", type=_numbers, metavar="S[,S,S]",
                        help="per-channel standard deviation (default: as trained, else "
                        "ImageNet's)")
    images.add_argument("--loaders", type=int_at_least(1), metavar="N",
                        help="background threads decoding images (default: the CPU count, "
                        "at most 4)")
    ray = parser.add_argument_group(
        "many shards through Ray (--ray; pip install 'cnnc[ray]')",
        "--input is a glob pattern in quotes ('shards/*.npy') or a folder of .npy/.npz "
        "shards; -o is a folder that gets one output per shard, same name, each written "
        "atomically. Shards whose output exists are skipped, so a rerun resumes.")
    ray.add_argument("--ray", action="store_true",
                     help="run the shards on a pool of Ray actors, each building the model "
                     "once")
    ray.add_argument("--address", metavar="ADDR",
                     help="the Ray cluster to join (as `ray start --head` prints, or auto); "
                     "default: start Ray on this machine")
    ray.add_argument("--actors", type=int_at_least(1), metavar="N",
                     help="actors in the pool (default 1)")
    ray.add_argument("--gpus-per-actor", type=number_at_least(0), metavar="G",
                     help="GPUs each actor reserves, e.g. 1 or 0.5 (default 0)")
    return parser


def _numbers(text: str) -> list:
    import argparse

    try:
        return [decimal_number(part) for part in text.split(",")]
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


IMAGE_FLAGS = ("resize", "mean", "std", "loaders")


def main(args) -> int:
    apply_threads(args)
    from ..compiler.plan import lower

    if not args.ray:
        given = [f for f in ("address", "actors", "gpus_per_actor") if getattr(args, f)]
        if given:
            raise CommandError(f"--{given[0].replace('_', '-')} applies with --ray")
    if args.ray:
        return _run_ray(args)
    if os.path.isdir(args.input):
        return _run_images(args)
    given = [k for k in IMAGE_FLAGS if getattr(args, k) is not None]
    if given:
        raise CommandError(f"--{given[0]} applies to an image folder; --input {args.input} is "
                           "not a folder")
    if args.batch is not None:
        raise CommandError("--batch applies to an image folder or to --ray; a single .npy or "
                           ".npz input runs as one batch")
    data = read_source(args.file)
    loaded = _read_arrays(args.input, "input")
    given = dict(args.size)
    net = check_model(data, args.file, given, consts=lets(args))
    arrays = _match_inputs(loaded, list(net.inputs), args.input, net.name)
    _check_arrays(arrays, args.input)
    sizes = _bind_sizes(net, arrays, given, args.input)
    if sizes:
        found = ", ".join(f"{k}={v}" for k, v in sizes.items())
        net = check_model(data, args.file, {**given, **sizes}, consts=lets(args),
                          context=f"for {found} (read off {args.input})")
    require_concrete_sizes(net, args.file, "running it",
                           f"they cannot be read off {args.input}")
    stdout = _check_output_path(args.output, list(net.outputs), args.format)
    plan = lower(net)
    _require_memory(plan, args, next(iter(arrays.values())).shape[0])
    model = _build(plan, args)
    outputs = _infer(model, arrays)
    if stdout is not None:
        sys.stdout.flush()
        _save(stdout, outputs, "-")
        stdout.flush()
    else:
        write_atomically(args.output, lambda f: _save(f, outputs, args.output))
    if args.format == "json":
        import json

        print(json.dumps({
            "output": args.output, "network": plan.network, "backend": str(model.backend),
            "dtype": str(model.dtype), "sizes": {**given, **sizes},
            "outputs": [{"name": name, "shape": list(a.shape)} for name, a in outputs.items()],
        }, indent=2))
    elif not args.quiet:
        shapes = ", ".join(f"{name} {list(a.shape)}" for name, a in outputs.items())
        where = "standard output" if stdout is not None else args.output
        print(f"cnnc: wrote {where}: {shapes} {model.dtype} on {model.backend}",
              file=sys.stderr)
    return EXIT_OK


# ---- reading the inputs --------------------------------------------------------------------

# Every dtype but objects is read; `_check_arrays` then names the input a dtype does not fit.
ANY_DTYPE = "biufcUSVMm"


def _read_arrays(path: str, what: str):
    """An array (.npy) or a dict of arrays (.npz), told apart by content, not by name; each
    header checked against the file's size and the memory available before its data is
    read (runtime/files.py)."""
    from ..runtime.files import ArrayFileError, read_arrays

    try:
        return read_arrays(path, kinds=ANY_DTYPE)
    except ArrayFileError as err:
        raise CommandError(f"cannot read {what} file {path}: {err}") from None


def _match_inputs(loaded, names: list, path: str, network: str) -> dict:
    """Input name -> array; a lone .npy array feeds a network with exactly one input."""
    if not isinstance(loaded, dict):
        if len(names) != 1:
            raise CommandError(f"network {network} has inputs {', '.join(names)}; give them "
                               f"as an .npz file keyed by input name, not the one array in "
                               f"{path}")
        return {names[0]: loaded}
    missing = [n for n in names if n not in loaded]
    extra = sorted(set(loaded) - set(names))
    if missing or extra:
        problems = [f"missing {n}" for n in missing] + [f"unexpected {n}" for n in extra]
        raise CommandError(f"{path} does not fit the inputs of network {network} "
                           f"({', '.join(names)}): {'; '.join(problems)}")
    return {n: loaded[n] for n in names}


def _check_arrays(arrays: dict, path: str) -> None:
    """Numbers only, a batch axis, no empty axis, one batch size for every input."""
    batches = {}
    for name, a in arrays.items():
        if a.dtype.kind not in NUMERIC_KINDS:
            raise CommandError(f"input `{name}` in {path} has dtype {a.dtype} ({_kind(a)}); "
                               "cnnc runs on bool, integer or float arrays")
        if a.ndim < 2:
            raise CommandError(f"input `{name}` in {path} has shape {list(a.shape)}; it needs "
                               "a batch axis first and the sample's axes after it")
        if 0 in a.shape:
            raise CommandError(f"input `{name}` in {path} is empty: shape {list(a.shape)}")
        batches[name] = a.shape[0]
    if len(set(batches.values())) > 1:
        listed = ", ".join(f"{n} has {b}" for n, b in batches.items())
        raise CommandError(f"the inputs in {path} disagree in batch size: {listed}")


def _kind(a) -> str:
    kinds = {"c": "complex numbers", "U": "text", "S": "bytes", "O": "Python objects",
             "V": "structured records", "M": "dates", "m": "time spans"}
    return kinds.get(a.dtype.kind, "not numbers")


def _bare_symbol(dim):
    """The symbol's name when ``dim`` is exactly one size symbol (``H``), else None."""
    from ..compiler.symbolic import Expr, Sym

    if isinstance(dim, Expr) and dim.const == 0 and len(dim.terms) == 1:
        atom, coeff = dim.terms[0]
        if coeff == 1 and isinstance(atom, Sym):
            return atom.name
    return None


def _bind_sizes(net, arrays: dict, given: dict, path: str) -> dict:
    """Match each input's declared shape to its array. Returns the symbols read off the
    arrays (those --size did not give); a mismatch is an error naming the input, the
    declared shape and the array's."""
    from ..compiler.symbolic import evaluate

    env = dict(given)
    origin = {}  # symbol -> where its value came from
    for name in net.inputs:
        declared = tuple(net.nodes[name].shape)
        shape = arrays[name].shape
        if len(shape) == len(declared) + 1:
            for axis, dim in enumerate(declared, start=1):
                symbol = _bare_symbol(dim)
                if symbol is not None and symbol not in env:
                    env[symbol] = int(shape[axis])
                    origin[symbol] = f"axis {axis} of `{name}`"
    for name in net.inputs:
        declared = tuple(net.nodes[name].shape)
        shape = arrays[name].shape
        expected = "[N, " + ", ".join(str(d) for d in declared) + "]"
        if len(shape) != len(declared) + 1:
            raise CommandError(f"input `{name}` expects {expected}, got {list(shape)} in "
                               f"{path}: {len(shape)} axes instead of {len(declared) + 1}")
        for axis, dim in enumerate(declared, start=1):
            try:
                want = evaluate(dim, env)
            except KeyError:
                continue  # an expression over a symbol no input gives; reported later
            if want == shape[axis]:
                continue
            why = ""
            symbol = _bare_symbol(dim)
            if symbol in origin:
                why = f", since {symbol} = {want} from {origin[symbol]}"
            elif symbol is not None:
                why = f", since --size gives {symbol}={want}"
            raise CommandError(f"input `{name}` expects {expected}, got {list(shape)} in "
                               f"{path}: axis {axis} is {shape[axis]}, expected {want}{why}")
    return {symbol: env[symbol] for symbol in origin}


# ---- running and writing -------------------------------------------------------------------

def _check_output_path(path: str, outputs: list, fmt: str = "text"):
    """Fail before any work when the outputs cannot go where asked. Returns standard
    output's byte stream for ``-o -``, else None (and removes what a killed earlier run
    left behind while writing ``path``)."""
    if path == "-":
        several = ""
        if len(outputs) > 1:
            several = (f"the network has {len(outputs)} outputs ({', '.join(outputs)}); -o - "
                       "writes one .npy to standard output, so name an .npz file instead")
        return standard_output_for("the output's .npy bytes", fmt, several)
    if len(outputs) > 1 and not path.endswith(".npz"):
        raise CommandError(f"the network has {len(outputs)} outputs ({', '.join(outputs)}); "
                           f"-o must name an .npz file, got {path}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CommandError(f"cannot write {path}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise CommandError(f"cannot write {path}: it is a folder")
    remove_stale_temporaries(path)
    return None


def _require_memory(plan, args, batch: int) -> None:
    """Refuse, before building anything, a run whose parameters and memory plan (at its
    peak, for ``batch`` samples) need more memory than is available."""
    from ..runtime.model import activation_bytes, param_bytes, select_backend

    try:
        on_device = select_backend(args.backend).on_device
    except RuntimeError as err:  # e.g. backend cupy without CuPy
        raise CommandError(str(err)) from None
    require_memory(plan, f"running network {plan.network} on a batch of {batch}",
                   [("parameters", param_bytes(plan, args.dtype)),
                    ("activations at the memory plan's peak",
                     activation_bytes(plan, args.dtype, batch))],
                   args.dtype, batch, on_device)


def _build(plan, args):
    from ..runtime.model import Model, TooLargeError, WeightFileError

    try:
        model = Model(plan, backend=args.backend, seed=0, dtype=args.dtype)
    except (RuntimeError, ValueError, TooLargeError) as err:  # e.g. cupy without CuPy,
        raise CommandError(str(err)) from None  # onnxruntime in float64
    if args.weights is None:
        if not args.quiet and args.format == "text":
            print("cnnc: note: no --weights given; running with the default initialisation "
                  "(seed 0)", file=sys.stderr)
        return model
    require_readable(args.weights, "weight file")
    try:
        mapping = model.load(args.weights)
    except WeightFileError as err:
        raise CommandError(str(err)) from None
    if args.show_mapping:
        print(mapping.describe(), file=sys.stderr)
    return model


def _infer(model, arrays: dict) -> dict:
    """Output name -> NumPy array."""
    import numpy as np

    from ..runtime.model import InputError

    try:
        result = model(arrays)
    except InputError as err:
        raise CommandError(str(err)) from None
    except MemoryError:
        raise CommandError("out of memory running the model; try a smaller batch") from None
    except ValueError as err:  # a kernel refusing its arguments: a cnnc bug, said plainly
        raise CommandError(f"running network {model.plan.network} failed: {err}",
                           EXIT_ERRORS) from None
    if not isinstance(result, dict):
        result = {next(iter(model.plan.outputs)): result}
    return {name: a if isinstance(a, np.ndarray) else a.get() for name, a in result.items()}


def _save(f, outputs: dict, path: str) -> None:
    """One .npy, or an .npz written member by member (``np.savez(f, **outputs)`` would
    trip over an output named ``file`` or ``allow_pickle``)."""
    import zipfile

    import numpy as np

    if not path.endswith(".npz"):
        np.save(f, next(iter(outputs.values())), allow_pickle=False)
        return
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, array in outputs.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)


# ---- image folders ---------------------------------------------------------------------------

def _run_images(args) -> int:
    """Classify every image under the folder ``args.input``; write one row per image."""
    from ..compiler.plan import lower
    from ..data import images
    from ..runtime.train import DataError

    data = read_source(args.file)
    net = check_model(data, args.file, dict(args.size), consts=lets(args))
    require_concrete_sizes(net, args.file, "running it on images")
    if len(net.inputs) != 1 or len(net.outputs) != 1:
        raise CommandError(f"network {net.name} has {len(net.inputs)} inputs and "
                           f"{len(net.outputs)} outputs; classifying images needs one of each")
    (out_name, out_node), = net.outputs.items()
    out_shape = list(net.nodes[out_node].shape)
    if len(out_shape) != 1:
        raise CommandError(f"classifying images needs an output of class scores [classes]; "
                           f"output `{out_name}` of {net.name} is {out_shape}")
    kind = _prediction_format(args.output)
    stdout = None
    if args.output == "-":
        stdout = standard_output_for("the predictions", args.format)
    else:
        _check_output_path(args.output, ["predictions"], args.format)
    settings = _image_settings(args)
    plan = lower(net)
    (shape,) = plan.inputs.values()
    try:
        preprocess = images.Preprocess.for_input(
            shape, args.resize if args.resize is not None else settings.get("resize"),
            args.mean if args.mean is not None else settings.get("mean"),
            args.std if args.std is not None else settings.get("std"),
            where=f"input `{next(iter(plan.inputs))}` of {plan.network}")
    except DataError as err:
        raise CommandError(str(err)) from None
    args.batch = args.batch or 64
    _require_memory(plan, args, args.batch)
    model = _build(plan, args)

    def skipped(path, why):
        print(f"cnnc: warning: skipped {path}: {why}", file=sys.stderr, flush=True)

    loaders = args.loaders or min(4, os.cpu_count() or 1)
    try:
        rows, reader = images.predict(model, args.input, preprocess, args.batch, loaders,
                                      skipped, settings.get("classes"))
    except DataError as err:
        raise CommandError(str(err)) from None
    text = _prediction_text(rows, kind)
    if stdout is not None:
        sys.stdout.flush()
        stdout.write(text.encode("utf-8"))
        stdout.flush()
    else:
        write_atomically(args.output, lambda f: f.write(text.encode("utf-8")))
    unread = len(reader.skipped)
    if args.format == "json":
        import json

        print(json.dumps({"output": args.output, "network": plan.network,
                          "images": len(rows), "skipped": sorted(reader.skipped)}, indent=2))
    elif not args.quiet:
        where = "standard output" if stdout is not None else args.output
        tail = f"; skipped {unread} unreadable image{'s' * (unread != 1)}" if unread else ""
        print(f"cnnc: wrote {where}: predictions for {len(rows):,} image"
              f"{'s' * (len(rows) != 1)}{tail}", file=sys.stderr)
    return EXIT_OK


def _prediction_format(path: str) -> str:
    if path == "-" or path.lower().endswith(".csv"):
        return "csv"
    if path.lower().endswith(".json"):
        return "json"
    raise CommandError(f"-o {path}: predictions for an image folder are written as .csv or "
                       ".json (or - for CSV on standard output)")


def _image_settings(args) -> dict:
    """What `cnnc train` saved beside the weights (W.json), or nothing."""
    from ..data import images
    from ..runtime.train import DataError

    if args.weights is None:
        return {}
    path = images.settings_path(args.weights)
    if not os.path.exists(path):
        return {}
    try:
        return images.read_settings(path)
    except DataError as err:
        raise CommandError(str(err)) from None


def _prediction_text(rows: list, kind: str) -> str:
    """CSV with a header (file,class,name,score; name only when the classes are named) or a
    JSON list of objects."""
    import csv
    import io
    import json

    if kind == "json":
        return json.dumps(rows, indent=1) + "\n"
    named = any("name" in row for row in rows)
    fields = ["file", "class"] + (["name"] if named else []) + ["score"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "score": f"{row['score']:.6f}"})
    return out.getvalue()


# ---- many shards through Ray -----------------------------------------------------------------

def _shards(pattern: str) -> list:
    """The shards a glob pattern or a folder names, sorted; CommandError when none."""
    import glob

    if os.path.isdir(pattern):
        found = [os.path.join(pattern, name) for name in os.listdir(pattern)
                 if name.endswith((".npy", ".npz"))]
    else:
        found = glob.glob(pattern)
    found = sorted(p for p in found if os.path.isfile(p))
    if not found:
        raise CommandError(f"--input {pattern} names no shard files (a glob pattern in quotes, "
                           "as 'shards/*.npy', or a folder of .npy/.npz files)")
    stems: dict = {}
    for path in found:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in stems:
            raise CommandError(f"shards {stems[stem]} and {path} would both write "
                               f"{stem} in the output folder; rename one")
        stems[stem] = path
    return found


def _output_folder(path: str) -> None:
    if path == "-":
        raise CommandError("-o -: with --ray, -o names a folder for one output per shard")
    if os.path.exists(path) and not os.path.isdir(path):
        raise CommandError(f"-o {path}: with --ray, -o names a folder; {path} is a file")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CommandError(f"cannot create output folder {path}: folder {parent} does not "
                           "exist")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise CommandError(f"cannot create output folder {path}: {err.strerror or err}") \
            from None


def _run_ray(args) -> int:
    """``--ray``: every shard through Ray Data's actor pool (distributed/inference.py)."""
    import time

    from ..compiler.plan import lower

    shards = _shards(args.input)
    _output_folder(args.output)
    data = read_source(args.file)
    given = dict(args.size)
    net = check_model(data, args.file, given, consts=lets(args))
    sizes = {}
    if net.symbols:  # read off the first shard, as a single run reads them off its input
        first = _match_inputs(_read_arrays(shards[0], "input"), list(net.inputs), shards[0],
                              net.name)
        _check_arrays(first, shards[0])
        sizes = _bind_sizes(net, first, given, shards[0])
        found = ", ".join(f"{k}={v}" for k, v in sizes.items())
        net = check_model(data, args.file, {**given, **sizes}, consts=lets(args),
                          context=f"for {found} (read off {shards[0]})")
    require_concrete_sizes(net, args.file, "running it", f"they cannot be read off "
                           f"{shards[0]}")
    plan = lower(net)
    several = len(plan.outputs) > 1
    from ..distributed.inference import ModelSpec, output_path, pending

    jobs = [(shard, output_path(shard, args.output, several)) for shard in shards]
    to_run, finished = pending(jobs)
    for _, out in jobs:
        remove_stale_temporaries(out)
    weights = _build(plan, args).state() if args.weights is not None else None
    spec = ModelSpec(data, args.file, {**given, **sizes}, lets(args), weights, args.backend,
                     args.dtype)
    results, seconds, start = [], 0.0, 0.0
    if to_run:
        from ..distributed.inference import infer_shards
        from ..distributed.session import RayError, connect

        started = time.perf_counter()
        try:
            connect(args.address)
            start = time.perf_counter() - started
            results = infer_shards(spec, to_run, actors=args.actors or 1,
                                   gpus_per_actor=args.gpus_per_actor or 0,
                                   batch=args.batch or 256, address=args.address)
        except RayError as err:
            raise CommandError(str(err)) from None
        seconds = time.perf_counter() - started - start
    failed = [r for r in results if r["error"]]
    done = [r for r in results if not r["error"]]
    samples = sum(r["samples"] for r in done)
    if args.format == "json":
        import json

        print(json.dumps({"output": args.output, "network": plan.network,
                          "shards": len(done), "samples": samples,
                          "skipped": [s for s, _ in finished], "seconds": round(seconds, 3),
                          "ray_start_seconds": round(start, 3),
                          "actors": min(args.actors or 1, max(1, len(to_run))),
                          "failed": [{"shard": r["shard"], "error": r["error"]}
                                     for r in failed]}, indent=2))
    elif not args.quiet:
        actors = min(args.actors or 1, max(1, len(to_run)))  # as infer_shards starts them
        rate = f", {samples / seconds:,.0f} samples/s" if seconds and samples else ""
        skipped = (f"; {len(finished)} shard{'s' * (len(finished) != 1)} already done, "
                   "skipped") if finished else ""
        if to_run:
            print(f"cnnc: wrote {len(done)} shard{'s' * (len(done) != 1)} to {args.output}: "
                  f"{samples:,} samples in {seconds:.1f}s{rate} with {actors} "
                  f"actor{'s' * (actors != 1)} (Ray's start: {start:.1f}s more){skipped}",
                  file=sys.stderr)
        else:
            print(f"cnnc: nothing to do: the outputs of all {len(jobs)} shards are already "
                  f"in {args.output}", file=sys.stderr)
    if failed:
        lines = "\n".join(f"  {r['shard']}: {r['error']}" for r in failed)
        raise CommandError(f"{len(failed)} of {len(jobs)} shards failed (their outputs were "
                           f"not written; a rerun retries them):\n{lines}")
    return EXIT_OK
