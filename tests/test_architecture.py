"""The shape of the house (docs/adding-a-layer.md, style notes): which package may import
which, no import cycles between modules (imports inside functions count), and no private
name imported from another module."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("dsl", "compiler", "ops", "runtime", "commands", "lsp", "interop", "data",
            "distributed")
TOP = ("api", "cli", "__init__")


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    for name in TOP:
        out[name if name != "__init__" else ""] = ROOT / f"{name}.py"
    return out


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute (package-relative) name an ``from ... import`` refers to."""
    if node.level == 0:
        name = node.module or ""
        return name[len("cnnc."):] if name.startswith("cnnc.") else ("" if name == "cnnc"
                                                                     else "<outside>")
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".") if module else []
    if not is_package:
        base = base[:-1]
    base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str):
    """``(imported module, names, line)`` for every project import of ``module``."""
    tree = ast.parse(MODULES[module].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            if target == "<outside>":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target else alias.name
                if sub in MODULES:
                    yield sub, [], node.lineno
                else:
                    yield target, [alias.name], node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("cnnc."):
                    yield alias.name[len("cnnc."):], [], node.lineno


def _graph():
    edges = {}
    for module in MODULES:
        edges[module] = {target for target, _, _ in _imports(module)
                         if target in MODULES and target != module}
    return edges


def test_no_import_cycles():
    import networkx as nx

    g = nx.DiGraph()
    for module, targets in _graph().items():
        g.add_node(module)
        for target in targets:
            # importing a submodule runs its package's __init__; a package importing its
            # own submodules is not a cycle through them
            if not target or module.startswith(target + "."):
                continue
            g.add_edge(module, target)
    cycles = list(nx.simple_cycles(g))
    assert not cycles, cycles


@pytest.mark.parametrize("module", sorted(MODULES))
def test_layering(module):
    top = module.split(".")[0]
    for target, _, line in _imports(module):
        head = target.split(".")[0]
        if top == "dsl":
            assert head == "dsl", f"{module}:{line} imports {target}: dsl imports no project code"
        if top in ("compiler", "ops"):
            assert head not in ("runtime", "commands", "cli", "api", "lsp", "interop", "data",
                                "distributed"), f"{module}:{line} imports {target}"
        if top in ("runtime", "data", "interop"):
            assert head not in ("commands", "cli", "lsp", "distributed"), \
                f"{module}:{line} imports {target}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_name_crosses_a_module(module):
    for target, names, line in _imports(module):
        for name in names:
            assert not (name.startswith("_") and not name.startswith("__")), \
                f"{module}:{line} imports private {target}.{name}"
