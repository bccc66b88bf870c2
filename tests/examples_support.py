"""Helpers the example tests share (tests/compiler/test_modern_examples*.py); the test
configuration puts this folder on the import path."""

from __future__ import annotations

import sys

import pytest


def _forget_torchvision():
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]


def torchvision_models():
    """`torchvision.models`, or a skip.

    A torchvision wheel built for another torch release fails in its own import: its compiled
    ops do not load, and `torchvision/_meta_registrations.py` then registers a fake kernel for
    an op that does not exist (RuntimeError "operator torchvision::nms does not exist"). The
    model classes need none of the compiled ops, so the import is retried once with
    `torch.library.register_fake` made a no-op for its duration (and restored after)."""
    torch = pytest.importorskip("torch")
    try:
        import torchvision.models as models

        return models
    except ImportError as err:
        pytest.skip(f"torchvision cannot be imported: {err}")
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
    _forget_torchvision()
    register_fake = torch.library.register_fake
    torch.library.register_fake = lambda *args, **kwargs: (lambda fn: fn)
    try:
        import torchvision.models as models
    except (ImportError, RuntimeError) as err:
        _forget_torchvision()
        pytest.skip(f"torchvision cannot be imported: {type(err).__name__}: {err}")
    finally:
        torch.library.register_fake = register_fake
    return models


def weighted_depth(net):
    """The largest number of convolution and dense layers on one path from an input to an
    output: the depth that gives AlexNet 8, VGG 16, ResNet 18 and GoogLeNet 22."""
    import networkx as nx

    kinds = ("conv", "conv1d", "conv3d", "conv_transpose", "dense")
    g = net.graph
    depth = {}
    for name in nx.topological_sort(g):
        before = max((depth[p] for p in g.predecessors(name)), default=0)
        depth[name] = before + (g.nodes[name]["op"] in kinds)
    return max(depth[node] for node in net.outputs.values())
