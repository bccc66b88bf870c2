"""ONNX in: an ONNX graph of ops cnnc has becomes `.cnn` source and a weight file.

    source = import_onnx("resnet50.onnx")
    source.text      # the .cnn file
    source.weights   # weight-file key -> array

Each ONNX node becomes a cnnc layer (``Conv`` -> ``conv``, ``Gemm`` -> ``dense``, ``Concat``
-> ``concat``, ...), a few node patterns become one layer (``x * Sigmoid(x)`` -> ``silu``,
``Clip(0, 6)`` -> ``relu6``, ``MatMul`` + ``Add`` -> ``dense``), and constants that only
feed a weight input are folded into the layer's parameters. Layer names come from the
nodes' scoped names (``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0.conv1``), as PyTorch's
exporter writes them. Ops cnnc lacks, and attributes it cannot express (asymmetric
padding, say), are refused together, in one message listing each op and node.
"""

from __future__ import annotations

import math
import os
import re

import numpy as np

from .source import ImportProblem, Layer
from .writer import write_source

__all__ = ["import_model", "import_onnx", "module_path"]

# ONNX activations that map one to one, without attributes (or with their defaults).
_SIMPLE = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Softplus": "softplus",
           "HardSwish": "hardswish", "Mish": "mish", "Selu": "selu"}


_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
_GENERIC_GRAPH_NAMES = ("main_graph", "torch_jit", "torch-jit-export", "graph", "model")


class _Graph:
    def __init__(self, model):
        from onnx import numpy_helper

        g = model.graph
        self.graph = g
        self.consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        self.nodes = list(g.node)
        self.producer = {}
        self.readers: dict = {}
        for node in self.nodes:
            for out in node.output:
                self.producer[out] = node
            for t in node.input:
                if t:
                    self.readers.setdefault(t, []).append(node)
        self.problems = []  # (op, node, why)
        self.layers = []
        self.alias = {}  # tensor -> the tensor it equals (Identity, Dropout at inference)
        self.skip = set()  # ids of nodes folded into another
        self.ranks = {}

    def const(self, name: str):
        name = self.alias.get(name, name)
        return self.consts.get(name)

    def tensor(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name


def _attrs(node) -> dict:
    from onnx import helper

    out = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        out[a.name] = value
    return out


def module_path(node_name: str) -> str:
    """``/features/features.1/block/block.1/fc1/Conv`` -> ``features.1.block.1.fc1``: the
    scoped name PyTorch's exporter gives a node, as a dotted module path."""
    if not node_name.startswith("/"):
        # cnnc's own export names each node after its layer: ``layer1.conv1``
        return node_name if _DOTTED.fullmatch(node_name) else ""
    parts = [p for p in node_name.strip("/").split("/") if p]
    if len(parts) < 2:
        return ""
    path, prev = "", ""
    for part in parts[:-1]:
        if prev and part.startswith(prev + "."):
            path += part[len(prev):]
        else:
            path = f"{path}.{part}" if path else part
        prev = part
    return path


def _symmetric(pads, node, g) -> tuple | None:
    """ONNX ``pads`` [top, left, bottom, right] as cnnc's symmetric ``pad``; None (and a
    problem noted) when the two sides differ."""
    n = len(pads) // 2
    begin, end = list(pads[:n]), list(pads[n:])
    if begin != end:
        g.problems.append((node.op_type, node.name, f"asymmetric padding {list(pads)}; "
                           "cnnc pads both sides of an axis alike"))
        return None
    return tuple(int(p) for p in begin)


def _spatial(node, g, same_ok: bool = False) -> str | None:
    """The node's ``auto_pad``: ``NOTSET`` (explicit ``pads``), ``VALID``, or with
    ``same_ok`` ``SAME_UPPER`` (cnnc's ``pad=same``); None (and a problem noted) else."""
    mode = _attrs(node).get("auto_pad", "NOTSET")
    if mode in ("NOTSET", "VALID") or (same_ok and mode == "SAME_UPPER"):
        return mode
    g.problems.append((node.op_type, node.name, f"auto_pad={mode}; cnnc pads explicitly, "
                       "or as SAME_UPPER (pad=same) in a conv"))
    return None


def import_onnx(path, network: str | None = None, blocks: bool = True):
    """Read an ONNX file; return a `Source` (text, weights, names). Raises `ImportProblem`
    for a file that is not an ONNX model, or one using what cnnc lacks (every such node
    listed). ``blocks=False`` writes every layer out, without blocks."""
    import onnx

    from ..runtime.files import available_memory, format_bytes

    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
    except OSError as err:
        raise ImportProblem(f"cannot read {path}: {err.strerror or err}", True) from None
    available = available_memory()
    if available is not None and 2 * size > available:
        raise ImportProblem(f"{path} takes {format_bytes(size)}; importing it needs about "
                            f"twice that, more than the {format_bytes(available)} of memory "
                            "available", True)
    try:
        # External data (weights in side files) is read only from the model's own folder,
        # through onnx's own checks of the paths it names.
        model = onnx.load(path, load_external_data=False)
    except OSError as err:
        raise ImportProblem(f"cannot read {path}: {err.strerror or err}", True) from None
    except Exception as err:  # protobuf's DecodeError and friends
        raise ImportProblem(f"{path} is not an ONNX model: {err}", True) from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        try:
            onnx.external_data_helper.load_external_data_for_model(
                model, os.path.dirname(os.path.abspath(path)))
        except Exception as err:  # a missing side file, or a path outside the folder
            raise ImportProblem(f"cannot read the weights {path} keeps in other files: "
                                f"{getattr(err, 'strerror', None) or err}", True) from None
    if network is None:
        name = model.graph.name
        network = name if name.isidentifier() and name not in _GENERIC_GRAPH_NAMES \
            else _stem(path)
    return import_model(model, network, path, blocks)


def _stem(path: str) -> str:
    base = os.path.basename(path)
    return base.rsplit(".", 1)[0] if "." in base else base


def import_model(model, network: str = "imported", origin: str = "<onnx>",
                 blocks: bool = True):
    """`import_onnx` on an ``onnx.ModelProto`` already loaded."""
    import onnx

    if not isinstance(model, onnx.ModelProto) or not model.graph.node:
        raise ImportProblem(f"{origin} holds no graph (an ONNX model with nodes)", True)
    g = _Graph(model)
    inputs = {}
    for value in g.graph.input:
        if value.name in g.consts:
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) < 2:
            raise ImportProblem(f"{origin}: input `{value.name}` has rank {len(dims)}; cnnc "
                               "takes inputs of a batch and [F] or [C, H, W]")
        shape = []
        for d in list(dims)[1:]:
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param.isidentifier():
                shape.append(d.dim_param)
            else:
                raise ImportProblem(f"{origin}: input `{value.name}` has a size without a "
                                   "value or a name; export with fixed sizes")
        inputs[value.name] = tuple(shape)
        g.ranks[value.name] = len(shape)
    for node in g.nodes:
        if id(node) in g.skip:
            continue
        _convert(node, g)
    if g.problems:
        lines = [f"  {op} (node {name or '<unnamed>'}){': ' + why if why else ''}"
                 for op, name, why in g.problems]
        raise ImportProblem(f"{origin} uses {len(g.problems)} node"
                           f"{'s' * (len(g.problems) != 1)} cnnc cannot express:\n"
                           + "\n".join(lines))
    outputs = {}
    for value in g.graph.output:
        outputs[value.name] = g.tensor(value.name)
    header = (f"{network}: imported from {os.path.basename(origin)} by `cnnc import`\n"
              f"(producer {model.producer_name or 'unknown'} "
              f"{model.producer_version or ''}, opset {_opset(model)})")
    return write_source(network, inputs, g.layers, outputs, header=header, blocks=blocks)


def _opset(model) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
               default=0)


def _add(g, node, kind, x, args=None, params=None, output=None):
    layer = Layer(kind, [g.tensor(t) for t in x], output or node.output[0], args or {},
                  params or {}, module_path(node.name), f"node {node.name}")
    g.layers.append(layer)
    rank = g.ranks.get(layer.inputs[0], 3) if layer.inputs else 3
    if kind in ("flatten", "dense"):
        rank = 1
    g.ranks[layer.output] = rank
    return layer


def _convert(node, g) -> None:
    op = node.op_type
    a = _attrs(node)
    x = [t for t in node.input]
    if node.domain not in ("", "ai.onnx"):
        g.problems.append((f"{node.domain}.{op}", node.name, ""))
        return
    if op == "Constant":
        from onnx import numpy_helper

        if "value" in a:
            g.consts[node.output[0]] = numpy_helper.to_array(a["value"])
        else:
            for key in ("value_float", "value_int"):
                if key in a:
                    g.consts[node.output[0]] = np.asarray(a[key])
            if node.output[0] not in g.consts:
                g.problems.append((op, node.name, "a constant cnnc does not read"))
        return
    if op == "Identity":
        if g.const(x[0]) is not None:
            g.consts[node.output[0]] = g.const(x[0])
        else:
            g.alias[node.output[0]] = g.tensor(x[0])
        return
    if all(g.const(t) is not None for t in x if t) and op not in ("Conv",):
        g.problems.append((op, node.name, "computes on constants only; fold it first "
                           "(onnxsim, or export with do_constant_folding=True)"))
        return
    if op in _SIMPLE:
        if op == "Selu" and not (math.isclose(a.get("alpha", 1.67326), 1.67326, rel_tol=1e-4)
                                 and math.isclose(a.get("gamma", 1.0507), 1.0507,
                                                  rel_tol=1e-4)):
            g.problems.append((op, node.name, "alpha and gamma other than SELU's own"))
            return
        _add(g, node, _SIMPLE[op], x[:1])
    elif op == "Conv":
        _conv(node, a, x, g)
    elif op == "BatchNormalization":
        _batchnorm(node, a, x, g)
    elif op in ("MaxPool", "AveragePool"):
        _pool(node, a, x, g)
    elif op == "GlobalAveragePool":
        _add(g, node, "global_avgpool", x)
    elif op == "GlobalMaxPool":
        _add(g, node, "global_maxpool", x)
    elif op == "Flatten":
        if a.get("axis", 1) != 1:
            g.problems.append((op, node.name, f"axis={a.get('axis')}; cnnc flattens all but "
                               "the batch (axis=1)"))
            return
        _add(g, node, "flatten", x)
    elif op == "Reshape":
        _reshape(node, x, g)
    elif op == "Gemm":
        _gemm(node, a, x, g)
    elif op == "MatMul":
        _matmul(node, x, g)
    elif op in ("Add", "Mul", "Concat"):
        _merge(node, a, x, g)
    elif op == "Clip":
        _clip(node, a, x, g)
    elif op == "LeakyRelu":
        _add(g, node, "leaky_relu", x, _nondefault(alpha=(a.get("alpha", 0.01), 0.01)))
    elif op == "Elu":
        _add(g, node, "elu", x, _nondefault(alpha=(a.get("alpha", 1.0), 1.0)))
    elif op == "HardSigmoid":
        if not (math.isclose(a.get("alpha", 0.2), 1 / 6, rel_tol=1e-6)
                and math.isclose(a.get("beta", 0.5), 0.5)):
            g.problems.append((op, node.name, f"alpha={a.get('alpha', 0.2)}, beta="
                               f"{a.get('beta', 0.5)}; cnnc's hardsigmoid is x/6 + 1/2"))
            return
        _add(g, node, "hardsigmoid", x)
    elif op == "Gelu":
        approx = a.get("approximate", "none")
        _add(g, node, "gelu", x, {"approximate": "tanh"} if approx == "tanh" else {})
    elif op == "PRelu":
        slope = g.const(x[1])
        if slope is None or slope.size < 1:
            g.problems.append((op, node.name, "a slope that is not a constant"))
            return
        _add(g, node, "prelu", x[:1], params={"weight": slope.reshape(-1).astype(np.float32)})
    elif op == "Softmax":
        axis = a.get("axis", -1)
        rank = g.ranks.get(g.tensor(x[0]), 3) + 1
        if axis not in (1, 1 - rank) and not (axis == -1 and rank == 2):
            g.problems.append((op, node.name, f"axis={axis}; cnnc's softmax is over axis 1"))
            return
        _add(g, node, "softmax", x)
    elif op == "LRN":
        args = _nondefault(size=(a["size"], 5), alpha=(a.get("alpha", 1e-4), 1e-4),
                           beta=(a.get("beta", 0.75), 0.75), k=(a.get("bias", 1.0), 1.0))
        _add(g, node, "lrn", x, args)
    elif op == "Dropout":
        ratio = a.get("ratio", 0.5)
        if len(x) > 1 and x[1]:
            ratio = g.const(x[1])
            if ratio is None:
                g.problems.append((op, node.name, "a ratio that is not a constant"))
                return
            ratio = float(ratio)
        _add(g, node, "dropout", x[:1], _nondefault(p=(float(ratio), 0.5)))
    elif op == "ReduceMean":
        _reduce_mean(node, a, x, g)
    else:
        g.problems.append((op, node.name, ""))


def _nondefault(**pairs) -> dict:
    out = {}
    for name, (value, default) in pairs.items():
        if isinstance(default, float):
            value = float(np.float32(value)) if value != default else value
            value = _tidy(value)
            if math.isclose(value, default, rel_tol=1e-6):
                continue
        elif value == default:
            continue
        out[name] = value
    return out


def _tidy(value: float) -> float:
    """A float32 attribute as the short decimal it was written as (0.001, not 0.0010000000474)."""
    for digits in range(1, 10):
        short = float(f"{value:.{digits}g}")
        if np.float32(short) == np.float32(value):
            return short
    return float(value)


def _conv(node, a, x, g) -> None:
    w = g.const(x[1])
    if w is None:
        g.problems.append(("Conv", node.name, "weights that are not a constant"))
        return
    if w.ndim != 4:
        g.problems.append(("Conv", node.name, f"a {w.ndim - 2}-D convolution; the importer "
                           "reads 2-D ones"))
        return
    mode = _spatial(node, g, same_ok=True)
    if mode is None:
        return
    pads = _symmetric(a.get("pads", [0] * 4), node, g) if mode == "NOTSET" else (0, 0)
    if pads is None:
        return
    args = {"out": int(w.shape[0]), "kernel": tuple(int(k) for k in w.shape[2:])}
    args.update(_nondefault(stride=(tuple(a.get("strides", (1, 1))), (1, 1)),
                            pad=(pads, (0, 0)),
                            dilation=(tuple(a.get("dilations", (1, 1))), (1, 1)),
                            groups=(int(a.get("group", 1)), 1)))
    if mode == "SAME_UPPER":
        args = {k: v for k, v in args.items() if k != "pad"}
        args["pad"] = "same"
        args = _in_order(args, ("out", "kernel", "stride", "pad", "dilation", "groups"))
    params = {"weight": w.astype(np.float32)}
    b = g.const(x[2]) if len(x) > 2 and x[2] else None
    if b is None:
        args["bias"] = False
    else:
        params["bias"] = b.astype(np.float32)
    _add(g, node, "conv", x[:1], args, params)


def _in_order(args: dict, order: tuple) -> dict:
    return {k: args[k] for k in order if k in args}


def _batchnorm(node, a, x, g) -> None:
    arrays = [g.const(t) for t in x[1:5]]
    if any(v is None for v in arrays):
        g.problems.append(("BatchNormalization", node.name, "statistics that are not "
                           "constants"))
        return
    scale, bias, mean, var = (v.astype(np.float32) for v in arrays)
    momentum = 1.0 - float(np.float32(a.get("momentum", 0.9)))
    args = _nondefault(eps=(a.get("epsilon", 1e-5), 1e-5), momentum=(momentum, 0.1))
    _add(g, node, "batchnorm", x[:1], args,
         {"weight": scale, "bias": bias, "running_mean": mean, "running_var": var})


def _pool(node, a, x, g) -> None:
    kernel = tuple(int(k) for k in a["kernel_shape"])
    if len(kernel) != 2:
        g.problems.append((node.op_type, node.name, f"a {len(kernel)}-D pool; the importer "
                           "reads 2-D ones"))
        return
    mode = _spatial(node, g)
    if mode is None:
        return
    pads = _symmetric(a.get("pads", [0] * 4), node, g) if mode == "NOTSET" else (0, 0)
    if pads is None:
        return
    args = {"kernel": kernel}
    args.update(_nondefault(stride=(tuple(a.get("strides", (1, 1))), kernel),
                            pad=(pads, (0, 0))))
    if node.op_type == "MaxPool":
        args.update(_nondefault(dilation=(tuple(a.get("dilations", (1, 1))), (1, 1))))
        if len(node.output) > 1 and node.output[1]:
            g.problems.append(("MaxPool", node.name, "the Indices output"))
            return
    args.update(_nondefault(ceil=(bool(a.get("ceil_mode", 0)), False)))
    if node.op_type == "AveragePool" and any(pads):
        args.update(_nondefault(count_pad=(bool(a.get("count_include_pad", 0)), True)))
    _add(g, node, "maxpool" if node.op_type == "MaxPool" else "avgpool", x, args)


def _reshape(node, x, g) -> None:
    shape = g.const(x[1])
    rank = g.ranks.get(g.tensor(x[0]), 3)
    two = shape is not None and shape.ndim == 1 and len(shape) == 2
    if two and (shape[1] == -1 or rank == 1):
        _add(g, node, "flatten", x[:1])
        return
    target = shape.tolist() if shape is not None else "a computed shape"
    g.problems.append(("Reshape", node.name, f"to {target}; cnnc reshapes only to [N, -1] "
                       "(flatten)"))


def _gemm(node, a, x, g) -> None:
    w = g.const(x[1])
    if w is None or a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 \
            or a.get("beta", 1.0) != 1.0:
        g.problems.append(("Gemm", node.name, "only x @ W^T + b with constant W, "
                           "alpha = beta = 1 maps to dense"))
        return
    w = w if a.get("transB", 0) else w.T
    args = {"out": int(w.shape[0])}
    params = {"weight": np.ascontiguousarray(w, dtype=np.float32)}
    b = g.const(x[2]) if len(x) > 2 and x[2] else None
    if b is None:
        args["bias"] = False
    else:
        params["bias"] = np.broadcast_to(b, (w.shape[0],)).astype(np.float32)
    _add(g, node, "dense", x[:1], args, params)


def _matmul(node, x, g) -> None:
    w = g.const(x[1])
    if w is None or w.ndim != 2:
        g.problems.append(("MatMul", node.name, "only x @ W with a constant 2-D W maps to "
                           "dense"))
        return
    params = {"weight": np.ascontiguousarray(w.T, dtype=np.float32)}
    args = {"out": int(w.shape[1])}
    readers = g.readers.get(node.output[0], [])
    output = node.output[0]
    if len(readers) == 1 and readers[0].op_type == "Add":
        add = readers[0]
        other = [t for t in add.input if t != node.output[0]]
        b = g.const(other[0]) if len(other) == 1 else None
        if b is not None and b.size == w.shape[1]:
            params["bias"] = b.reshape(-1).astype(np.float32)
            g.skip.add(id(add))
            output = add.output[0]
    if "bias" not in params:
        args["bias"] = False
    _add(g, node, "dense", x[:1], args, params, output=output)


def _merge(node, a, x, g) -> None:
    op = node.op_type
    if op == "Mul" and _silu(node, x, g):
        return
    consts = [t for t in x if g.const(t) is not None]
    if consts:
        g.problems.append((op, node.name, "with a constant operand; cnnc's add and mul "
                           "join tensors"))
        return
    rank = g.ranks.get(g.tensor(x[0]), 3)  # per sample; the batch is axis 0
    if op == "Concat" and a.get("axis") not in (1, -rank):
        g.problems.append((op, node.name, f"axis={a.get('axis')}; cnnc concatenates "
                           "along channels (axis 1)"))
        return
    if len(x) < 2:
        g.alias[node.output[0]] = g.tensor(x[0])
        return
    _add(g, node, op.lower(), x)


def _silu(node, x, g) -> bool:
    """``x * Sigmoid(x)`` (or ``HardSigmoid``) -> one silu (hardswish) layer."""
    for i, j in ((0, 1), (1, 0)):
        gate = g.producer.get(x[j])
        if gate is None or gate.op_type not in ("Sigmoid", "HardSigmoid"):
            continue
        if g.tensor(gate.input[0]) != g.tensor(x[i]) or len(g.readers.get(x[j], [])) != 1:
            continue
        kind = "silu" if gate.op_type == "Sigmoid" else "hardswish"
        # the gate was already converted (it comes first): take its layer back
        g.layers = [layer for layer in g.layers if layer.output != gate.output[0]]
        layer = _add(g, node, kind, [x[i]])
        path = module_path(gate.name)
        if path:
            layer.path = path
        return True
    return False


def _clip(node, a, x, g) -> None:
    lo = a.get("min")
    hi = a.get("max")
    if len(x) > 1 and x[1]:
        lo = g.const(x[1])
    if len(x) > 2 and x[2]:
        hi = g.const(x[2])
    lo = -math.inf if lo is None else float(np.asarray(lo))
    hi = math.inf if hi is None else float(np.asarray(hi))
    if lo == 0 and hi == 6:
        _add(g, node, "relu6", x[:1])
    elif lo == 0 and hi == math.inf:
        _add(g, node, "relu", x[:1])
    else:
        g.problems.append(("Clip", node.name, f"to [{lo}, {hi}]; cnnc has relu (0, inf) and "
                           "relu6 (0, 6)"))


def _reduce_mean(node, a, x, g) -> None:
    axes = a.get("axes")
    if axes is None and len(x) > 1 and x[1]:
        axes = g.const(x[1])
    axes = sorted(int(v) for v in (axes if axes is not None else []))
    if axes not in ([2, 3], [-2, -1]):
        g.problems.append(("ReduceMean", node.name, f"over axes {axes}; cnnc averages over "
                           "the spatial axes [2, 3] (global_avgpool)"))
        return
    layer = _add(g, node, "global_avgpool", x[:1])
    if not a.get("keepdims", 1):
        layer.output = node.output[0] + "/pooled"
        g.ranks[layer.output] = 3
        _add(g, node, "flatten", [layer.output])
