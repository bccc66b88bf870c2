"""Darknet in: a ``.cfg`` network (``[net]``, ``[convolutional]``, ``[maxpool]``,
``[route]``, ``[shortcut]``, ``[upsample]``, ``[yolo]`` sections) becomes `.cnn` source.

    source = import_darknet("yolov3-tiny.cfg")

Darknet names its layers by their index; cnnc keeps the index in each name (``conv0``,
``maxpool1``, ``route9``...). ``[convolutional]`` with ``batch_normalize=1`` is a conv
without bias and a batchnorm; its activation (``leaky`` is ``leaky_relu(0.1)``) follows.
``[route]`` of several layers is a concat; of one layer, a reference to it. ``[yolo]`` and
``[region]`` detection heads are not network layers in cnnc: the tensor each reads becomes a
network output, and the heads are listed as left out. Sections cnnc cannot express are
refused together, each with its line. The ``.weights`` file is not read.
"""

from __future__ import annotations

import os

from .source import ImportProblem, Layer, read_text_file
from .writer import write_source

__all__ = ["import_darknet", "parse_cfg"]

_ACTIVATIONS = {"linear": None, "relu": ("relu", {}), "leaky": ("leaky_relu", {"alpha": 0.1}),
                "logistic": ("sigmoid", {}), "tanh": ("tanh", {}), "mish": ("mish", {}),
                "swish": ("silu", {}), "elu": ("elu", {}), "relu6": ("relu6", {})}
_HEADS = ("yolo", "region", "detection", "cost", "softmax_head")


def parse_cfg(text: str, origin: str = "<cfg>") -> list:
    """``[(section, {key: value}, line)]``, in order; keys and values are text."""
    sections = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise ImportProblem(f"{origin}:{number}: a section header must be [name], "
                                    f"got {line!r}", True)
            sections.append((line[1:-1].strip().lower(), {}, number))
            continue
        if "=" not in line:
            raise ImportProblem(f"{origin}:{number}: expected key=value or [section], got "
                                f"{line!r}", True)
        if not sections:
            raise ImportProblem(f"{origin}:{number}: {line!r} comes before any [section]",
                                True)
        key, _, value = line.partition("=")
        sections[-1][1][key.strip()] = value.strip()
    return sections


def import_darknet(path, network: str | None = None, blocks: bool = True):
    """Read a Darknet ``.cfg``; return a `Source` (no weights) whose ``notes`` list the
    detection heads left out. Raises `ImportProblem` listing what cnnc cannot express."""
    path = os.fspath(path)
    text = read_text_file(path, "a .weights file holds weights, not the network: give the "
                          ".cfg")
    sections = parse_cfg(text, path)
    if not sections or sections[0][0] not in ("net", "network"):
        raise ImportProblem(f"{path}: a Darknet .cfg starts with a [net] section", True)
    return _Import(sections, path, network, blocks).run()


class _Import:
    def __init__(self, sections, path, network, blocks):
        self.sections = sections
        self.path = path
        self.network = network or os.path.basename(path).rsplit(".", 1)[0]
        self.blocks = blocks
        self.layers = []
        self.problems = []
        self.heads = []
        self.outs = []  # per Darknet layer index: the tensor it gives
        self.shape = {}  # tensor -> [C, H, W]

    def _int(self, options, key, default, line):
        try:
            return int(options.get(key, default))
        except ValueError:
            self.problems.append(f"{self.path}:{line}: {key}={options[key]!r} is not a whole "
                                 "number")
            return int(default)

    def run(self):
        _, net, line = self.sections[0]
        c = self._int(net, "channels", 3, line)
        h = self._int(net, "height", 416, line)
        w = self._int(net, "width", 416, line)
        inputs = {"image": (c, h, w)}
        self.shape["image"] = [c, h, w]
        previous = "image"
        outputs = {}
        for index, (kind, options, line) in enumerate(self.sections[1:]):
            made = self._section(index, kind, options, line, previous)
            if made is None:
                made = previous  # keep the indices aligned; the problem is recorded
            if kind in _HEADS:
                outputs[f"{kind}{index}"] = previous
                self.heads.append(f"[{kind}] at line {line} (layer {index})")
            self.outs.append(made)
            previous = made
        if self.problems:
            listed = "\n".join(f"  {p}" for p in self.problems)
            raise ImportProblem(f"{self.path} uses {len(self.problems)} section"
                                f"{'s' * (len(self.problems) != 1)} cnnc cannot express:\n"
                                f"{listed}")
        if not outputs:
            outputs["probs"] = previous
        header = (f"{self.network}: imported from {os.path.basename(self.path)} by "
                  "`cnnc import` (Darknet .cfg)")
        if self.heads:
            header += "\ndetection heads left out (the tensors they read are the outputs):"
            header += "".join(f"\n  {head}" for head in self.heads)
        source = write_source(self.network, inputs, self.layers, outputs, header,
                              self.blocks)
        source.notes = [f"left out the detection head {head}" for head in self.heads]
        return source

    def _add(self, kind, name, inputs, args, line, shape):
        layer = Layer(kind, list(inputs), f"{name}@{len(self.layers)}", args, {}, name,
                      f"{self.path}:{line}")
        self.layers.append(layer)
        self.shape[layer.output] = shape
        return layer.output

    def _refuse(self, index, kind, line, why=""):
        self.problems.append(f"{self.path}:{line}: [{kind}] (layer {index})"
                             f"{': ' + why if why else ''}")
        return None

    def _ref(self, text, index, line):
        """A layer reference of [route] and [shortcut]: negative is relative."""
        try:
            k = int(text)
        except ValueError:
            self.problems.append(f"{self.path}:{line}: layer reference {text!r} is not a "
                                 "whole number")
            return None
        k = index + k if k < 0 else k
        if not 0 <= k < index:
            self.problems.append(f"{self.path}:{line}: layer {index} refers to layer {k}, "
                                 f"which is not before it")
            return None
        return self.outs[k]

    def _section(self, index, kind, o, line, x):
        c, h, w = (list(self.shape[x]) + [1, 1])[:3]
        if kind in ("convolutional", "conv"):
            filters = self._int(o, "filters", 1, line)
            size = self._int(o, "size", 1, line)
            stride = self._int(o, "stride", 1, line)
            pad = self._int(o, "padding", size // 2 if o.get("pad", "0") == "1" else 0, line)
            groups = self._int(o, "groups", 1, line)
            bn = o.get("batch_normalize", "0") == "1"
            args = {"out": filters, "kernel": size}
            if stride != 1:
                args["stride"] = stride
            if pad:
                args["pad"] = pad
            if groups != 1:
                args["groups"] = groups
            if bn:
                args["bias"] = False
            out = [filters, (h + 2 * pad - size) // stride + 1, (w + 2 * pad - size) // stride + 1]
            y = self._add("conv", f"conv{index}", [x], args, line, out)
            if bn:
                y = self._add("batchnorm", f"bn{index}", [y], {}, line, out)
            return self._activation(o.get("activation", "logistic"), index, line, y, out)
        if kind == "maxpool":
            size = self._int(o, "size", 2, line)
            stride = self._int(o, "stride", size, line)
            padding = self._int(o, "padding", size - 1, line)
            out_h = (h + padding - size) // stride + 1
            out_w = (w + padding - size) // stride + 1
            # cnnc pads both sides alike: Darknet's padding (on the right and bottom) fits
            # when it is even, or when the windows never reach the extra column.
            for pad in sorted({padding // 2, 0}):
                if (h + 2 * pad - size) // stride + 1 == out_h and \
                        (w + 2 * pad - size) // stride + 1 == out_w and \
                        (padding % 2 == 0 or pad == 0):
                    args = {"kernel": size}
                    if stride != size:
                        args["stride"] = stride
                    if pad:
                        args["pad"] = pad
                    return self._add("maxpool", f"maxpool{index}", [x], args, line,
                                     [c, out_h, out_w])
            return self._refuse(index, kind, line, f"size={size}, stride={stride} on a "
                                f"{h}x{w} map pads one side only (padding={padding})")
        if kind == "avgpool":
            return self._add("global_avgpool", f"avgpool{index}", [x], {}, line, [c, 1, 1])
        if kind == "route":
            refs = [self._ref(t.strip(), index, line) for t in o.get("layers", "").split(",")
                    if t.strip()]
            if not refs or any(r is None for r in refs):
                return None
            if "groups" in o:
                return self._refuse(index, kind, line, "groups (a channel slice of a route)")
            if len(refs) == 1:
                return refs[0]
            shape = [sum(self.shape[r][0] for r in refs)] + self.shape[refs[0]][1:]
            return self._add("concat", f"route{index}", refs, {}, line, shape)
        if kind == "shortcut":
            other = self._ref(o.get("from", "-3"), index, line)
            if other is None:
                return None
            y = self._add("add", f"shortcut{index}", [x, other], {}, line, [c, h, w])
            return self._activation(o.get("activation", "linear"), index, line, y, [c, h, w])
        if kind == "upsample":
            stride = self._int(o, "stride", 2, line)
            return self._add("upsample", f"upsample{index}", [x], {"factor": stride}, line,
                             [c, h * stride, w * stride])
        if kind == "connected":
            if len(self.shape[x]) == 3:
                x = self._add("flatten", f"flatten{index}", [x], {}, line, [c * h * w])
            out = self._int(o, "output", 1, line)
            y = self._add("dense", f"connected{index}", [x], {"out": out}, line, [out])
            return self._activation(o.get("activation", "logistic"), index, line, y, [out])
        if kind == "dropout":
            p = float(o.get("probability", 0.5))
            return self._add("dropout", f"dropout{index}", [x],
                             {"p": p} if p != 0.5 else {}, line, self.shape[x])
        if kind == "softmax":
            return self._add("softmax", f"softmax{index}", [x], {}, line, self.shape[x])
        if kind in _HEADS:
            return x
        return self._refuse(index, kind, line)

    def _activation(self, name, index, line, y, shape):
        if name not in _ACTIVATIONS:
            self.problems.append(f"{self.path}:{line}: activation={name} (layer {index})")
            return y
        act = _ACTIVATIONS[name]
        if act is None:
            return y
        kind, args = act
        return self._add(kind, f"{name}{index}", [y], dict(args), line, shape)
