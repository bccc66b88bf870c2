"""Caffe in: a deploy ``.prototxt`` (Caffe's network in protobuf text format) becomes `.cnn`
source with the same layer names.

    source = import_caffe("deploy.prototxt")

The text format is parsed with Lark (``prototxt.lark`` beside this module): messages
``name { ... }`` and fields ``name: value``. Layers map one to one (``Convolution`` ->
``conv``, ``Pooling`` -> ``maxpool``/``avgpool`` with Caffe's rounding up, ``InnerProduct``
-> ``dense`` after a ``flatten`` where its input is a map, ``Eltwise`` -> ``add``/``mul``,
``BatchNorm`` with the ``Scale`` after it -> one ``batchnorm``); in-place layers (``top`` equal
to ``bottom``) chain as they run. A deploy file holds no weights (those are in the binary
``.caffemodel``, which cnnc does not read), so only the source comes out. Layers cnnc cannot
express are refused together, each named with its line.
"""

from __future__ import annotations

import os
from pathlib import Path

from .source import ImportProblem, Layer, read_text_file
from .writer import write_source

__all__ = ["import_caffe", "parse_prototxt"]

_GRAMMAR = Path(__file__).with_name("prototxt.lark")
_PARSER = None


class Message(dict):
    """A parsed message: field name -> list of values (numbers, text, words or `Message`s);
    ``line`` is where it starts."""

    line = 0

    def one(self, name, default=None):
        values = self.get(name)
        return values[-1] if values else default

    def all(self, name) -> list:
        return self.get(name, [])


def parse_prototxt(text: str, origin: str = "<prototxt>") -> Message:
    """The top message of a protobuf text-format document."""
    global _PARSER
    from lark import Lark, Transformer, v_args
    from lark.exceptions import UnexpectedInput

    if _PARSER is None:
        _PARSER = Lark(_GRAMMAR.read_text(), parser="lalr", propagate_positions=True)
    try:
        tree = _PARSER.parse(text)
    except UnexpectedInput as err:
        shown = getattr(err, "token", None) or getattr(err, "char", "")
        raise ImportProblem(f"{origin}:{err.line}:{err.column}: not Caffe's text format "
                            f"(unexpected {str(shown)!r})", True) from None

    class Build(Transformer):
        @v_args(meta=True)
        def message(self, meta, items):
            name, *fields = items
            body = Message()
            body.line = meta.line
            for key, value in fields:
                body.setdefault(key, []).append(value)
            return (str(name), body)

        def pair(self, items):
            name, value = items
            return (str(name), value)

        def string(self, items):
            raw = str(items[0])[1:-1]
            return raw.encode("utf-8").decode("unicode_escape") if "\\" in raw else raw

        def number(self, items):
            text = str(items[0])
            return float(text) if any(c in text for c in ".eE") and not text.startswith(
                "0x") else int(text, 0)

        def word(self, items):
            return str(items[0])

        @v_args(meta=True)
        def start(self, meta, items):
            top = Message()
            top.line = 1
            for key, value in items:
                top.setdefault(key, []).append(value)
            return top

    return Build().transform(tree)


# Caffe V1 (``layers { type: CONVOLUTION }``) type words -> the V2 names.
_V1 = {"CONVOLUTION": "Convolution", "POOLING": "Pooling", "RELU": "ReLU",
       "INNER_PRODUCT": "InnerProduct", "LRN": "LRN", "DROPOUT": "Dropout",
       "SOFTMAX": "Softmax", "CONCAT": "Concat", "ELTWISE": "Eltwise", "SIGMOID": "Sigmoid",
       "TANH": "TanH", "SPLIT": "Split", "DATA": "Data", "SOFTMAX_LOSS": "SoftmaxWithLoss"}
_SKIP = {"Data", "ImageData", "HDF5Data", "DummyData", "Accuracy", "SoftmaxWithLoss",
         "Silence"}  # training-only layers: left out of a deploy network


def import_caffe(path, network: str | None = None, blocks: bool = True):
    """Read a Caffe deploy ``.prototxt``; return a `Source` (no weights). Raises
    `ImportProblem` listing every layer cnnc cannot express."""
    path = os.fspath(path)
    text = read_text_file(path, "a .caffemodel holds weights, not the network: give the "
                          "deploy .prototxt")
    top = parse_prototxt(text, path)
    return _Import(top, path, network, blocks).run()


class _Import:
    def __init__(self, top: Message, path: str, network, blocks: bool):
        self.top = top
        self.path = path
        self.network = network or str(top.one("name", "")) or \
            os.path.basename(path).split(".")[0]
        self.blocks = blocks
        self.layers = []
        self.problems = []
        self.current = {}  # blob name -> the tensor that holds it now
        self.rank = {}  # tensor -> 1 or 3
        self.inputs = {}
        self.last = None

    def where(self, message) -> str:
        return f"{self.path}:{message.line}"

    def run(self):
        self._inputs()
        layers = self.top.all("layer") or self.top.all("layers")
        if not layers:
            raise ImportProblem(f"{self.path} holds no layers (layer {{ ... }} messages)",
                                True)
        pending_bn = {}
        for message in layers:
            kind = str(message.one("type", ""))
            kind = _V1.get(kind, kind)
            name = str(message.one("name", f"layer{len(self.layers)}"))
            if kind in _SKIP:
                continue
            if kind == "Input":
                self._input_layer(message, name)
                continue
            bottoms = [self.current.get(b) for b in message.all("bottom")]
            if any(b is None for b in bottoms):
                missing = [b for b in message.all("bottom") if b not in self.current]
                self.problems.append(f"{self.where(message)}: layer {name} reads "
                                     f"{', '.join(missing)}, which no layer above makes")
                continue
            tops = [str(t) for t in message.all("top")] or [name]
            if kind == "Scale" and bottoms and bottoms[0] in pending_bn:
                self._fold_scale(pending_bn.pop(bottoms[0]), message, tops[0])
                continue
            made = self._layer(kind, name, message, bottoms)
            if made is None:  # refused: its tops stand in, so that later layers are checked
                for t in tops:
                    self.current[t] = bottoms[0] if bottoms else t
                continue
            if kind == "BatchNorm":
                pending_bn[made.output] = made
            for t in tops:
                self.current[t] = made.output
        if self.problems:
            listed = "\n".join(f"  {p}" for p in self.problems)
            raise ImportProblem(f"{self.path} uses {len(self.problems)} layer"
                                f"{'s' * (len(self.problems) != 1)} cnnc cannot express:\n"
                                f"{listed}")
        produced = {layer.output for layer in self.layers}
        read = {t for layer in self.layers for t in layer.inputs}
        outputs = {}
        for blob, tensor in self.current.items():
            if tensor in produced and tensor not in read and tensor not in outputs.values():
                outputs[blob] = tensor
        header = (f"{self.network}: imported from {os.path.basename(self.path)} by "
                  "`cnnc import`\n(a Caffe deploy network; its weights, in the .caffemodel, "
                  "are not read)")
        return write_source(self.network, self.inputs, self.layers, outputs, header,
                            self.blocks)

    # ---- inputs ----
    def _inputs(self):
        names = [str(n) for n in self.top.all("input")]
        shapes = [m.all("dim") for m in self.top.all("input_shape")]
        dims = self.top.all("input_dim")
        for i, name in enumerate(names):
            if i < len(shapes):
                shape = shapes[i]
            else:
                shape = dims[4 * i:4 * i + 4]
            self._add_input(name, shape, self.top)

    def _input_layer(self, message, name):
        param = message.one("input_param", Message())
        shapes = [m.all("dim") for m in param.all("shape")]
        for i, top in enumerate(message.all("top") or [name]):
            shape = shapes[min(i, len(shapes) - 1)] if shapes else []
            self._add_input(str(top), shape, message)

    def _add_input(self, name, shape, message):
        if len(shape) not in (2, 4) or not all(isinstance(d, int) and d > 0 for d in shape):
            self.problems.append(f"{self.where(message)}: input {name} has shape "
                                 f"{list(shape)}; cnnc takes [N, C, H, W] or [N, F]")
            return
        self.inputs[name] = tuple(int(d) for d in shape[1:])
        self.current[name] = name
        self.rank[name] = len(shape) - 1

    # ---- layers ----
    def _add(self, kind, name, inputs, args=None, message=None):
        # Caffe scopes names with slashes (fire2/squeeze1x1): a dotted path, so that the
        # modules that repeat can become blocks
        path = ".".join(part for part in name.split("/") if part)
        layer = Layer(kind, list(inputs), f"{name}@{len(self.layers)}", args or {}, {},
                      path, self.where(message) if message is not None else "")
        self.layers.append(layer)
        self.rank[layer.output] = 1 if kind in ("flatten", "dense") else \
            self.rank.get(inputs[0], 3) if inputs else 3
        return layer

    def _refuse(self, message, name, kind, why=""):
        self.problems.append(f"{self.where(message)}: layer {name} ({kind})"
                             f"{': ' + why if why else ''}")
        return None

    def _layer(self, kind, name, message, bottoms):
        if kind == "Convolution":
            return self._conv(message, name, bottoms)
        if kind == "Pooling":
            return self._pool(message, name, bottoms)
        if kind == "InnerProduct":
            p = message.one("inner_product_param", Message())
            x = bottoms[0]
            if self.rank.get(x, 3) != 1:
                x = self._add("flatten", f"{name}_flatten", [x], message=message).output
            args = {"out": int(p.one("num_output", 0))}
            if not _flag(p.one("bias_term", True)):
                args["bias"] = False
            return self._add("dense", name, [x], args, message)
        if kind == "ReLU":
            slope = float(message.one("relu_param", Message()).one("negative_slope", 0))
            if slope:
                return self._add("leaky_relu", name, bottoms, {"alpha": slope}, message)
            return self._add("relu", name, bottoms, message=message)
        simple = {"Sigmoid": "sigmoid", "TanH": "tanh", "Softmax": "softmax", "ELU": "elu",
                  "PReLU": "prelu"}
        if kind in simple:
            return self._add(simple[kind], name, bottoms, message=message)
        if kind == "LRN":
            p = message.one("lrn_param", Message())
            if str(p.one("norm_region", "ACROSS_CHANNELS")) != "ACROSS_CHANNELS":
                return self._refuse(message, name, kind, "norm_region WITHIN_CHANNEL")
            args = {}
            for ours, theirs, default in (("size", "local_size", 5), ("alpha", "alpha", 1e-4),
                                          ("beta", "beta", 0.75), ("k", "k", 1.0)):
                value = p.one(theirs, default)
                if value != default:
                    args[ours] = float(value) if ours != "size" else int(value)
            return self._add("lrn", name, bottoms, args, message)
        if kind == "Dropout":
            ratio = float(message.one("dropout_param", Message()).one("dropout_ratio", 0.5))
            return self._add("dropout", name, bottoms, {"p": ratio} if ratio != 0.5 else {},
                             message)
        if kind == "Concat":
            p = message.one("concat_param", Message())
            if int(p.one("axis", p.one("concat_dim", 1))) != 1:
                return self._refuse(message, name, kind, "concatenation along an axis other "
                                    "than channels")
            return self._merge("concat", name, bottoms, message)
        if kind == "Eltwise":
            op = str(message.one("eltwise_param", Message()).one("operation", "SUM"))
            coeffs = message.one("eltwise_param", Message()).all("coeff")
            if op not in ("SUM", "PROD") or any(float(c) != 1 for c in coeffs):
                return self._refuse(message, name, kind, f"operation {op}"
                                    + (" with coefficients" if coeffs else ""))
            return self._merge("add" if op == "SUM" else "mul", name, bottoms, message)
        if kind == "BatchNorm":
            p = message.one("batch_norm_param", Message())
            eps = float(p.one("eps", 1e-5))
            momentum = 1.0 - float(p.one("moving_average_fraction", 0.999))
            args = {}
            if abs(eps - 1e-5) > 1e-12:
                args["eps"] = eps
            if abs(momentum - 0.1) > 1e-9:
                args["momentum"] = round(momentum, 6)
            return self._add("batchnorm", name, bottoms, args, message)
        if kind == "Scale":
            return self._refuse(message, name, kind, "a Scale that does not follow a "
                                "BatchNorm")
        if kind == "Split":
            layer = Layer("split", bottoms, bottoms[0])  # no layer: the tops alias
            return layer
        if kind == "Flatten":
            return self._add("flatten", name, bottoms, message=message)
        return self._refuse(message, name, kind)

    def _merge(self, kind, name, bottoms, message):
        if len(bottoms) < 2:
            return Layer("alias", bottoms, bottoms[0])
        return self._add(kind, name, bottoms, message=message)

    def _fold_scale(self, bn, message, top):
        """``BatchNorm`` then ``Scale`` in Caffe is cnnc's one affine ``batchnorm``."""
        bn.origin += f" and {self.where(message)}"
        self.current[top] = bn.output

    def _conv(self, message, name, bottoms):
        p = message.one("convolution_param", Message())
        kh, kw = _hw(p, "kernel", None)
        if kh is None:
            return self._refuse(message, name, "Convolution", "no kernel_size")
        args = {"out": int(p.one("num_output", 0)), "kernel": (kh, kw)}
        for ours, theirs, default in (("stride", "stride", 1), ("pad", "pad", 0),
                                      ("dilation", "dilation", 1)):
            value = _hw(p, theirs, default)
            if value != (default, default):
                args[ours] = value
        group = int(p.one("group", 1))
        if group != 1:
            args["groups"] = group
        if not _flag(p.one("bias_term", True)):
            args["bias"] = False
        return self._add("conv", name, bottoms, args, message)

    def _pool(self, message, name, bottoms):
        p = message.one("pooling_param", Message())
        method = str(p.one("pool", "MAX"))
        if method not in ("MAX", "AVE"):
            return self._refuse(message, name, "Pooling", f"pool {method}")
        if _flag(p.one("global_pooling", False)):
            kind = "global_maxpool" if method == "MAX" else "global_avgpool"
            return self._add(kind, name, bottoms, message=message)
        kh, kw = _hw(p, "kernel", None)
        if kh is None:
            return self._refuse(message, name, "Pooling", "no kernel_size")
        args = {"kernel": (kh, kw)}
        stride = _hw(p, "stride", 1)
        if stride != (kh, kw):
            args["stride"] = stride
        pad = _hw(p, "pad", 0)
        if pad != (0, 0):
            args["pad"] = pad
        args["ceil"] = True  # Caffe rounds the output size up
        kind = "maxpool" if method == "MAX" else "avgpool"
        return self._add(kind, name, bottoms, args, message)


def _flag(value) -> bool:
    return value is True or str(value).lower() in ("true", "1")


def _hw(p: Message, base: str, default):
    """``kernel_size: 3`` or ``kernel_h``/``kernel_w`` -> ``(h, w)``."""
    h, w = p.one(f"{base}_h"), p.one(f"{base}_w")
    if h is not None and w is not None:
        return (int(h), int(w))
    values = p.all(f"{base}_size") or p.all(base)
    if not values:
        return (default, default)
    if len(values) == 1:
        return (int(values[0]), int(values[0]))
    return (int(values[0]), int(values[1]))
