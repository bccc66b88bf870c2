"""Golden files: each `tests/golden/NAME.cnn` next to the exact text `cnnc check` prints for it.

Run from the repository root, as a user would: `cnnc check tests/golden/NAME.cnn`. To accept
new output after a deliberate change to the messages, run the tests with
`CNNC_UPDATE_GOLDEN=1` and review the diff of the `.txt` files.

The broken models in `examples/broken/` are checked here too: each names, in a comment
starting with `# shows:`, the error codes it must produce.
"""

import os
import re
from pathlib import Path

import pytest

from cnnc.cli import main
from cnnc.compiler.check import check_bytes

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
BROKEN = ROOT / "examples" / "broken"
UPDATE = os.environ.get("CNNC_UPDATE_GOLDEN") == "1"

CASES = sorted(p.stem for p in GOLDEN.glob("*.cnn"))


def test_there_are_golden_files():
    assert len(CASES) >= 6


@pytest.mark.parametrize("name", CASES)
def test_golden(name, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    status = main(["check", f"tests/golden/{name}.cnn"])
    captured = capsys.readouterr()
    assert captured.err == ""
    expected_file = GOLDEN / f"{name}.txt"
    if UPDATE:
        expected_file.write_text(captured.out, encoding="utf-8")
    expected = expected_file.read_text(encoding="utf-8")
    assert captured.out == expected
    # exit 1 when the file has errors, 0 when it has only warnings
    assert status == (1 if "error[" in expected else 0)


def test_every_golden_input_has_its_output():
    outputs = sorted(p.stem for p in GOLDEN.glob("*.txt"))
    assert outputs == CASES


# ---- examples/broken -------------------------------------------------------------------------

EXAMPLES = sorted(p.name for p in BROKEN.glob("*.cnn"))


def declared_codes(text: str) -> set[str]:
    codes = set()
    for line in text.splitlines():
        if line.startswith("# shows:"):
            codes |= set(re.findall(r"\b[EW]\d{3}\b", line))
    return codes


def test_there_are_broken_examples():
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("name", EXAMPLES)
def test_broken_example_shows_what_it_says(name):
    data = (BROKEN / name).read_bytes()
    net, _ = check_bytes(data, name)
    declared = declared_codes(data.decode("utf-8"))
    assert declared, f"{name} has no `# shows:` comment"
    found = {d.code for d in net.diagnostics}
    # every error it shows is declared; a warning that follows from an error may come too
    assert {c for c in found if c.startswith("E")} == {c for c in declared if c.startswith("E")}
    assert {c for c in declared if c.startswith("W")} <= found
    assert not net.ok
