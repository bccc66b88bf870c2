"""No input, however mangled, makes `cnnc check` crash.

Whatever the bytes, `cnnc check FILE` must end with a status and diagnostics: 0 and an "ok"
line, or 1 and at least one `error[E...]`; never a Python traceback. Inputs come from
hypothesis (token soup, cut-off and mutated example files, random bytes, random programs that
parse) and from a few hand-made extremes (10,000 nested blocks, brackets and stages).

Most cases call `cnnc.cli.main` in-process, which is fast; two run the real command to see
what a shell user sees on stderr.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnc.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("**/*.cnn"))
SOURCES = [path.read_bytes() for path in EXAMPLES]
GOOGLENET = (ROOT / "examples" / "googlenet.cnn").read_bytes()

DIAGNOSTIC_KEYS = {
    "code", "severity", "message", "file", "line", "column", "end_line", "end_column", "notes",
}

KEYWORDS = ["network", "input", "output", "block", "return", "in", "let", "true", "false", "as"]
PUNCTUATION = ["->", "(", ")", "[", "]", "{", "}", ",", "=", ":", "*", "//", "+", "-", "#"]
LAYERS = [
    "conv", "maxpool", "avgpool", "global_avgpool", "global_maxpool", "flatten", "dense",
    "dropout", "batchnorm", "lrn", "relu", "sigmoid", "tanh", "selu", "softplus", "softmax",
    "leaky_relu", "prelu", "elu", "swish", "silu", "maxout", "concat", "add",
]
ARGUMENTS = [
    "out", "kernel", "stride", "pad", "dilation", "groups", "bias", "ceil", "count_pad", "p",
    "eps", "momentum", "size", "alpha", "beta", "k", "same", "valid",
]
LITERALS = ["0", "1", "2", "3", "7", "64", "224", "-1", "0.4", "1e-4", "1e999", "x", "y", "H",
            "W", "image", "b1", "stem", "inception", "99999999999999999999"]
TOKENS = KEYWORDS + PUNCTUATION + LAYERS + ARGUMENTS + LITERALS

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def cnnc(*argv) -> tuple[int, str, str]:
    """Run `cnnc ARGV` in-process; (status, stdout, stderr). Any exception fails the test."""
    out = io.StringIO()
    err = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def assert_checks_cleanly(path: Path, data: bytes) -> None:
    """`cnnc check` on DATA, as text and as JSON: a status and diagnostics, nothing else."""
    path.write_bytes(data)

    status, out, err = cnnc("check", path)
    # the file can be read, so 2 (unreadable, misused) is as wrong as a crash
    assert status in (0, 1), (status, out, err)
    assert "Traceback" not in out + err
    if status == 1:
        assert re.search(r"error\[E\d{3}\]", out), out
    else:
        assert "error[E" not in out
        assert f"{path}: ok: " in out

    json_status, out, err = cnnc("check", "--format", "json", path)
    assert json_status == status
    diags = json.loads(out)
    for diag in diags:
        assert set(diag) == DIAGNOSTIC_KEYS
        assert diag["severity"] in ("error", "warning")
        assert re.fullmatch(r"[EW]\d{3}", diag["code"])
    has_errors = any(diag["severity"] == "error" for diag in diags)
    assert has_errors == (status == 1)


# ---- strategies -----------------------------------------------------------------------------

token_soup = st.lists(
    st.tuples(st.sampled_from(TOKENS), st.sampled_from([" ", " ", "\n", "", "\t"])),
    max_size=80,
).map(lambda pairs: "".join(token + gap for token, gap in pairs).encode("utf-8"))


@st.composite
def prefixes(draw) -> bytes:
    source = draw(st.sampled_from(SOURCES))
    return source[: draw(st.integers(0, len(source)))]


@st.composite
def mutations(draw) -> bytes:
    """An example file with a few characters deleted, inserted, swapped or replaced."""
    text = bytearray(draw(st.sampled_from(SOURCES)))
    inserts = st.one_of(
        st.sampled_from([t.encode() for t in TOKENS]),
        st.binary(min_size=1, max_size=3),
        st.text(min_size=1, max_size=2).map(lambda s: s.encode("utf-8")),
    )
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["delete", "insert", "swap", "replace"]))
        if edit == "delete" and text:
            del text[at: at + draw(st.integers(1, 20))]
        elif edit == "insert":
            text[at:at] = draw(inserts)
        elif edit == "swap" and len(text) > 1:
            other = draw(st.integers(0, len(text) - 1))
            at = min(at, len(text) - 1)
            text[at], text[other] = text[other], text[at]
        elif edit == "replace" and text:
            at = min(at, len(text) - 1)
            text[at] = draw(st.integers(0, 255))
    return bytes(text)


@st.composite
def spliced_bytes(draw) -> bytes:
    """Random bytes, alone or dropped into an example: invalid UTF-8, NULs, control bytes."""
    noise = draw(st.binary(max_size=200))
    if draw(st.booleans()):
        return noise
    source = draw(st.sampled_from(SOURCES))
    at = draw(st.integers(0, len(source)))
    return source[:at] + noise + source[at:]


# Random programs that parse, so the checker (not only the parser) sees odd input:
# wrong ranks, bad arguments, unknown names, symbolic sizes, blocks, merges and repeats.
numbers = st.sampled_from(["0", "1", "1", "2", "3", "3", "5", "8", "16", "-1", "0.5", "1e-4"])
words = st.sampled_from(["true", "false", "same", "valid", "H", "W", "c", "n", "x"])


def _values(depth: int = 0):
    if depth >= 2:
        return st.one_of(numbers, words)
    inner = _values(depth + 1)
    return st.one_of(
        numbers,
        numbers,
        words,
        st.lists(inner, max_size=3).map(lambda items: "[" + ", ".join(items) + "]"),
        st.tuples(inner, st.sampled_from(["+", "-", "*", "//"]), inner).map(" ".join),
        inner.map(lambda v: f"({v})"),
    )


values = _values()  # built once: making strategies is slower than drawing from them


@st.composite
def calls(draw, blocks: list[str]) -> str:
    name = draw(st.sampled_from(LAYERS + blocks + ["reluu", "in"]))
    if draw(st.booleans()):
        positional = draw(st.lists(values, max_size=3))
        keywords = draw(st.lists(st.tuples(st.sampled_from(ARGUMENTS), values), max_size=2))
        args = positional + [f"{key}={value}" for key, value in keywords]
        name = f"{name}({', '.join(args)})"
    if draw(st.integers(0, 9)) == 0:
        name += " * " + draw(st.sampled_from(["2", "3", "0", "-1", "c", "1.5", "true"]))
    if draw(st.integers(0, 9)) == 0:
        name += " as " + draw(st.sampled_from(["a", "conv1", "z"]))
    return name


@st.composite
def chains(draw, names: list[str], blocks: list[str]) -> str:
    if draw(st.integers(0, 4)) == 0:
        merge = draw(st.sampled_from(["concat", "add", "cat"]))
        sources = draw(st.lists(st.sampled_from(names), max_size=3))
        start = f"{merge}({', '.join(sources)})"
    else:
        start = draw(st.sampled_from(names))
    stages = draw(st.lists(calls(blocks), max_size=6))
    return " -> ".join([start] + stages)


@st.composite
def programs(draw) -> bytes:
    dims = draw(st.one_of(
        st.just("3, 32, 32"),
        st.just("3, H, W"),
        st.just("10"),
        st.lists(st.sampled_from(["0", "1", "3", "32", "H", "W", "c"]), max_size=4).map(
            ", ".join),
    ))
    lines = [f"input x: [{dims}]"]
    if draw(st.booleans()):
        lines.insert(0, "network fuzzed")
    if draw(st.booleans()):
        lines.append(f"let c = {draw(values)}")
    blocks: list[str] = []
    for index in range(draw(st.integers(0, 2))):
        name = f"b{index}"
        params = draw(st.lists(st.sampled_from(["c", "n=2", "s=1", "p"]), max_size=2))
        scope = blocks + [name]  # a block may call itself: E208
        body = []
        inner = ["in"]
        for k in range(draw(st.integers(0, 2))):
            body.append(f"    t{k} = {draw(chains(inner, scope))}")
            inner.append(f"t{k}")
        body.append(f"    return {draw(chains(inner, scope))}")
        lines.append(f"block {name}({', '.join(params)}) {{")
        lines += body
        lines.append("}")
        blocks.append(name)
    names = ["x"]
    for index in range(draw(st.integers(0, 3))):
        lines.append(f"v{index} = {draw(chains(names, blocks))}")
        names.append(f"v{index}")
    lines.append(f"output {draw(chains(names, blocks))}")
    return ("\n".join(lines) + "\n").encode("utf-8")


# ---- property tests -------------------------------------------------------------------------

@FUZZ
@given(data=token_soup)
def test_token_soup(workdir, data):
    assert_checks_cleanly(workdir / "soup.cnn", data)


@FUZZ
@given(data=prefixes())
def test_cut_off_examples(workdir, data):
    assert_checks_cleanly(workdir / "prefix.cnn", data)


@FUZZ
@given(data=spliced_bytes())
def test_random_bytes(workdir, data):
    assert_checks_cleanly(workdir / "bytes.cnn", data)


@FUZZ
@given(data=mutations())
def test_mutated_examples(workdir, data):
    assert_checks_cleanly(workdir / "mutant.cnn", data)


@settings(FUZZ, max_examples=200)
@given(data=programs())
def test_random_programs(workdir, data):
    assert_checks_cleanly(workdir / "program.cnn", data)


@settings(FUZZ, max_examples=50)
@given(data=programs(), sizes=st.lists(st.sampled_from(["H=1", "H=7", "W=224", "c=3"]),
                                       max_size=2))
def test_random_programs_summary_and_sizes(workdir, data, sizes):
    """`cnnc summary` and `--size` on random programs: a report or diagnostics, no crash."""
    path = workdir / "sized.cnn"
    path.write_bytes(data)
    options = [f"--size={size}" for size in sizes]
    status, out, err = cnnc("check", *options, path)
    assert status in (0, 1)
    summary_status, out, err = cnnc("summary", "--format", "json", *options, path)
    assert summary_status == status
    if status == 0:
        assert "layers" in json.loads(out)
    else:
        assert "error[E" in err


# ---- extremes -------------------------------------------------------------------------------

N = 10_000
HEADER = "network deep\ninput x: [3, 8, 8]\n"


def codes(text: str) -> list[str]:
    return re.findall(r"(?:error|warning)\[([EW]\d{3})\]", text)


def test_block_calls_10000_deep(workdir):
    """b0 calls b1 calls ... b9999: a nesting limit error, not a RecursionError."""
    lines = [HEADER]
    for i in range(N - 1):
        lines.append(f"block b{i}() {{ return in -> b{i + 1} }}\n")
    lines.append(f"block b{N - 1}() {{ return in -> relu }}\noutput y = x -> b0\n")
    path = workdir / "calls.cnn"
    path.write_text("".join(lines))
    # JSON keeps this fast; the text path is exercised by the smaller cases.
    status, out, _ = cnnc("check", "--format", "json", path)
    assert status == 1
    assert "E215" in [diag["code"] for diag in json.loads(out)]


def test_blocks_syntactically_nested_10000_deep(workdir):
    source = HEADER + "block a() {\n" * N + "return in\n" + "}\n" * N + "output y = x -> a\n"
    path = workdir / "nested_blocks.cnn"
    path.write_text(source)
    status, out, _ = cnnc("check", path)
    assert status == 1
    assert codes(out) == ["E101"]  # a block inside a block is a syntax error
    assert ":4:" in out  # at the second `block`, on line 4


@pytest.mark.parametrize("open_, close", [("(", ")"), ("[", "]"), ("-", "")])
def test_brackets_10000_deep(workdir, open_, close):
    source = HEADER + f"output y = x -> conv({open_ * N}1{close * N}, 1)\n"
    path = workdir / "brackets.cnn"
    path.write_text(source)
    status, out, _ = cnnc("check", path)
    assert status == 1
    assert codes(out) == ["E105"]


def test_chain_of_10000_stages(workdir):
    path = workdir / "long.cnn"
    path.write_text(HEADER + "output y = x" + " -> conv(3, 3, pad=1) -> relu" * (N // 2) + "\n")
    status, out, _ = cnnc("check", path)
    assert status == 0
    assert f"ok: network deep, {N} layers" in out


def test_10000_statements_with_errors(workdir):
    """Many diagnostics in one file: each is reported, none is lost or crashes."""
    path = workdir / "many.cnn"
    path.write_text(HEADER + "".join(f"v{i} = x -> conv(0, 1)\n" for i in range(1000))
                    + "output y = x\n")
    status, out, _ = cnnc("check", "--format", "json", path)
    assert status == 1
    found = [diag["code"] for diag in json.loads(out)]
    assert found.count("E207") == 1000


def test_nesting_limit_does_not_cascade(workdir):
    """Blocks the nesting limit kept from being expanded are not 'never called' (W403)."""
    depth = 100
    lines = [HEADER]
    for i in range(depth - 1):
        lines.append(f"block b{i}() {{ return in -> b{i + 1} }}\n")
    lines.append(f"block b{depth - 1}() {{ return in -> relu }}\noutput y = x -> b0\n")
    path = workdir / "calls100.cnn"
    path.write_text("".join(lines))
    status, out, _ = cnnc("check", path)
    assert status == 1
    assert codes(out) == ["E215"]


def test_repeat_beyond_the_layer_budget(workdir):
    path = workdir / "repeat.cnn"
    path.write_text(HEADER + "output y = x -> relu * 1000000000000\n")
    status, out, _ = cnnc("check", path)
    assert status == 1
    assert codes(out) == ["E220"]


# ---- expansion bombs -------------------------------------------------------------------------

MEMORY_LIMIT = 256 << 20  # address space for the child; `cnnc check` on googlenet needs ~25 MiB


def limit_memory():  # runs in the child before exec
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def test_exponential_expansion_is_refused_before_it_is_built(tmp_path):
    lines = ["input x: [3, 8, 8]", "block b0() { return in -> relu * 10 }"]
    for i in range(1, 10):
        lines.append(f"block b{i}() {{ return in -> b{i - 1} * 10 }}")
    lines.append("output y = x -> b9")  # 10**10 layers
    path = tmp_path / "bomb.cnn"
    path.write_text("\n".join(lines) + "\n")
    # The timeout is a hang guard, not a measure. A checker that built the layers before
    # counting them would run out of the capped memory and die with a MemoryError.
    done = subprocess.run([sys.executable, "-m", "cnnc.cli", "check", path],
                          capture_output=True, text=True, timeout=120,
                          preexec_fn=limit_memory)
    assert done.returncode == 1
    assert "error[E220]" in done.stdout
    assert "Traceback" not in done.stderr
    assert "MemoryError" not in done.stderr


# ---- the real command ------------------------------------------------------------------------

def command() -> list:
    script = Path(sys.executable).with_name("cnnc")
    return [script] if script.exists() else [sys.executable, "-m", "cnnc.cli"]


def test_script_on_binary_stdin():
    noise = bytes(range(256)) * 4 + b"\xff\xfe\x00" + GOOGLENET[:500]
    done = subprocess.run(command() + ["check", "-"], input=noise, capture_output=True,
                          timeout=60)
    assert done.returncode == 1
    assert b"error[E104]" in done.stdout
    assert b"Traceback" not in done.stderr
    assert done.stderr == b""


def test_script_on_deep_nesting(tmp_path):
    path = tmp_path / "deep.cnn"
    path.write_text(HEADER + f"output y = x -> conv({'(' * N}8{')' * N}, {'[' * N}3{']' * N})\n")
    done = subprocess.run(command() + ["check", path], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert "error[E105]" in done.stdout
    assert "Traceback" not in done.stderr
    assert "RecursionError" not in done.stdout + done.stderr
