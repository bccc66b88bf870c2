"""The VS Code grammar (editors/vscode) names every layer and merge of the op registry, so a
new layer is highlighted as one; read as JSON, no Node needed (the grammar's own tests run
with `npm test` in editors/vscode)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cnnc.ops import LAYERS, MERGES

VSCODE = Path(__file__).resolve().parents[2] / "editors" / "vscode"


def _words(pattern: str) -> set:
    m = re.match(r"\\b\(([\w|]+)\)", pattern)  # \b(conv|conv1d|...)
    assert m, pattern
    return set(m.group(1).split("|"))


def test_the_grammar_names_every_layer_and_merge():
    grammar = json.loads((VSCODE / "syntaxes" / "cnn.tmLanguage.json").read_text())
    repository = grammar["repository"]
    assert _words(repository["layer"]["match"]) == set(LAYERS)
    merge = repository["call"]["patterns"][0]["begin"]
    assert _words(merge) == set(MERGES)


def test_the_manifest_points_at_the_grammar_and_the_server():
    manifest = json.loads((VSCODE / "package.json").read_text())
    grammar = manifest["contributes"]["grammars"][0]
    assert (VSCODE / grammar["path"]).is_file()
    settings = manifest["contributes"]["configuration"]["properties"]
    assert settings["cnnc.server.args"]["default"] == ["lsp"]
