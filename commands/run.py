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
    EXIT_ERRORS, EXIT_OK, CommandError, add_report_options, add_size_option, check_model,
    read_source, remove_stale_temporaries, require_concrete_sizes, require_memory,
    require_readable, standard_output_for, write_atomically,
)

NUMERIC_KINDS = "biuf"  # bool, signed and unsigned integers, floats


def add_parser(sub):
    parser = sub.add_parser(
        "run", help="run a model on arrays from a .npy or .npz file",
        description="Run a model on the arrays in a .npy or .npz file and write its outputs. "
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
    parser.add_argument("--weights", metavar="W.npz",
                        help="parameters saved by cnnc (keys as stem.conv1.weight); without "
                        "it, the seeded default initialisation (seed 0)")
    parser.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="auto",
                        help="array library to run on; auto takes CuPy when a GPU is usable "
                        "(default: auto)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="floating-point type to compute in (default: float32)")
    add_size_option(parser, more="symbols not given are read off the input arrays")
    add_report_options(parser, "the file, the sizes used and every output's shape")
    return parser


def main(args) -> int:
    from ..compiler.plan import lower

    data = read_source(args.file)
    loaded = _read_arrays(args.input, "input")
    given = dict(args.size)
    net = check_model(data, args.file, given)
    arrays = _match_inputs(loaded, list(net.inputs), args.input, net.name)
    _check_arrays(arrays, args.input)
    sizes = _bind_sizes(net, arrays, given, args.input)
    if sizes:
        found = ", ".join(f"{k}={v}" for k, v in sizes.items())
        net = check_model(data, args.file, {**given, **sizes},
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
    except (RuntimeError, TooLargeError) as err:  # e.g. backend cupy without CuPy
        raise CommandError(str(err)) from None
    if args.weights is None:
        if not args.quiet and args.format == "text":
            print("cnnc: note: no --weights given; running with the default initialisation "
                  "(seed 0)", file=sys.stderr)
        return model
    require_readable(args.weights, "weight file")
    try:
        model.load(args.weights)
    except WeightFileError as err:
        raise CommandError(str(err)) from None
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
