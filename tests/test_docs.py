"""The shell examples of README.md and docs/*.md run, and print what the docs show.

A fenced block marked ``console`` is a session: each line starting with ``$ `` is a command,
run by bash from a scratch folder that holds a copy of ``examples/`` (one folder per
document, so a later block sees the files an earlier one wrote), with this environment's
``cnnc`` and ``python`` first on the PATH; the lines after it, up to the next command, are
its expected output (standard output and error together). In the expected output a line
that is exactly ``...`` stands for any number of lines, and ``...`` inside a line for any
text. Two comments steer a block from the line just before its fence:

    <!-- needs: torch onnxruntime -->   skip the document's blocks from here without these
    <!-- file: tiny.cnn -->             save this (non-console) block in the scratch folder

Blocks marked ``sh``, ``python`` or nothing are not run.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)\s*$")
STEER = re.compile(r"^<!--\s*(needs|file):\s*(.*?)\s*-->\s*$")
TIMEOUT = 300  # seconds a command may take


def blocks(path: Path):
    """``(kind, info, first line number, lines)`` of each fenced block; ``info`` holds the
    steering comment just before the fence."""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, kind = match.groups()
        info = {}
        if i > 0:
            steer = STEER.match(lines[i - 1])
            if steer:
                info[steer.group(1)] = steer.group(2)
        body = []
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != fence:
            body.append(lines[j])
            j += 1
        yield kind, info, i + 1, body
        i = j + 1


def sessions(body: list[str]):
    """``(command, expected lines)`` pairs of a console block."""
    out = []
    for line in body:
        if line.startswith("$ "):
            out.append((line[2:], []))
        elif out:
            out[-1][1].append(line)
    return out


def line_matches(expected: str, actual: str) -> bool:
    if "..." not in expected:
        return expected == actual
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, actual) is not None


def output_matches(expected: list[str], actual: list[str]) -> bool:
    """Whether ``actual`` fits ``expected``, where a line ``...`` is any number of lines."""
    expected = [line.rstrip() for line in expected]
    actual = [line.rstrip() for line in actual]
    while expected and not expected[-1]:
        expected.pop()
    while actual and not actual[-1]:
        actual.pop()
    memo = {}

    def fits(i, j):
        key = (i, j)
        if key not in memo:
            if i == len(expected):
                memo[key] = j == len(actual)
            elif expected[i] == "...":
                memo[key] = any(fits(i + 1, k) for k in range(j, len(actual) + 1))
            else:
                memo[key] = (j < len(actual) and line_matches(expected[i], actual[j])
                             and fits(i + 1, j + 1))
        return memo[key]

    return fits(0, 0)


def documents_with_console_blocks():
    return [p for p in DOCUMENTS if any(kind == "console" for kind, *_ in blocks(p))]


def environment() -> dict:
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.update(COLUMNS="100", NO_COLOR="1", TERM="dumb", PYTHONHASHSEED="0",
               CNNC_NUM_THREADS=env.get("CNNC_NUM_THREADS", "1"))
    env.pop("FORCE_COLOR", None)
    return env


@pytest.mark.parametrize("path", documents_with_console_blocks(),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_the_shell_examples_print_what_the_docs_show(path, tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = environment()
    missing = []
    for kind, info, line, body in blocks(path):
        if "needs" in info:
            missing = [m for m in info["needs"].split()
                       if importlib.util.find_spec(m) is None]
        if "file" in info:
            (tmp_path / info["file"]).write_text("\n".join(body) + "\n")
        if kind != "console":
            continue
        if missing:
            continue  # reported below: a skip would hide the blocks that did run
        for command, expected in sessions(body):
            done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=TIMEOUT)
            actual = done.stdout.splitlines()
            assert output_matches(expected, actual), (
                f"{path.name}:{line}: `{command}` printed:\n{done.stdout}\n"
                f"but the docs show:\n" + "\n".join(expected))
    if missing:
        pytest.skip(f"some blocks need {', '.join(missing)}")


# ---- the harness itself ------------------------------------------------------------------------

@pytest.mark.parametrize("expected,actual,fits", [
    (["a", "b"], ["a", "b"], True),
    (["a", "b"], ["a", "c"], False),
    (["a", "...", "d"], ["a", "b", "c", "d"], True),
    (["a", "...", "d"], ["a", "d"], True),
    (["a", "...", "d"], ["a", "b"], False),
    (["took ... s"], ["took 3.2 s"], True),
    (["took ... s"], ["took 3.2 ms"], False),
    (["a"], ["a", "b"], False),
    (["a", ""], ["a"], True),
])
def test_output_matching(expected, actual, fits):
    assert output_matches(expected, actual) is fits


def test_every_document_is_found():
    assert ROOT / "README.md" in DOCUMENTS
    assert ROOT / "docs" / "language.md" in DOCUMENTS
