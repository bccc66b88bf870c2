"""How fast `cnnc lsp` answers an editor, measured through a real client over stdio.

    python benchmarks/bench_lsp.py                 # about 20 seconds
    python benchmarks/bench_lsp.py --edits 200 --file examples/resnet18.cnn

The server is started as an editor starts it (`cnnc lsp`, a fresh process) and spoken to in
JSON-RPC with Content-Length framing. On `examples/googlenet.cnn` (143 nodes after block
expansion) it measures, wall-clock, from just before the client writes its message:

(a) edit -> diagnostics: an edit of the classifier's width (`dense(1000)` -> `dense(1001)`
    -> ..., every text new, sent as an incremental change), until the `publishDiagnostics`
    of that version arrives; the next edit is sent 50 ms after it, as when typing with
    pauses. Goal: within 100 ms. An edit after a pause is checked at once (see
    ``lsp.server.CnncServer.schedule``).
(b) a burst: ``--burst`` edits sent 20 ms apart (fast typing, a paste), then the time from
    the last one to the diagnostics of the final version: the server waits for a pause of
    ``lsp.server.DEBOUNCE`` and checks once.
(c) hover on a layer inside the inception block (a table of its 9 instances), completion
    at the start of a line, and code actions: request -> response.
(d) for comparison, what an editor without a language server does: run `cnnc check` on the
    saved file, a fresh process per save (a linter plugin such as ALE or flymake does that).
(e) where the time goes, in this process: `check_source` (what `cnnc check` does after
    start-up, and all that publishing diagnostics needs) and the check with the syntax tree
    and the index of names, which the first hover or definition after an edit adds.

Run from an installed checkout (``pip install -e '.[lsp]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOOGLENET = ROOT / "examples" / "googlenet.cnn"


def cnnc_command() -> list[str]:
    """The `cnnc` console script next to the running Python, or ``python -m cnnc.cli``."""
    script = Path(sys.executable).with_name("cnnc")
    if script.exists():
        return [str(script)]
    found = shutil.which("cnnc")
    return [found] if found else [sys.executable, "-m", "cnnc.cli"]


class Client:
    def __init__(self):
        self.process = subprocess.Popen(cnnc_command() + ["lsp"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.inbox: queue.Queue = queue.Queue()
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        stream = self.process.stdout
        while True:
            length = None
            while True:
                line = stream.readline()
                if not line:
                    self.inbox.put((time.perf_counter(), None))
                    return
                line = line.strip()
                if not line:
                    break
                name, _, value = line.decode("ascii").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            message = json.loads(stream.read(length))
            self.inbox.put((time.perf_counter(), message))

    def send(self, message: dict) -> float:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode("utf-8")
        sent = time.perf_counter()
        self.process.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.process.stdin.flush()
        return sent

    def wait(self, wanted) -> tuple[float, dict]:
        while True:
            at, message = self.inbox.get(timeout=120)
            if message is None:
                raise SystemExit("the server stopped")
            if "method" in message and "id" in message:  # a request from the server
                self.send({"id": message["id"], "result": None})
            elif wanted(message):
                return at, message

    def request(self, method: str, params) -> tuple[float, dict]:
        """``(seconds to the answer, answer)``."""
        self.next_id += 1
        ident = self.next_id
        sent = self.send({"id": ident, "method": method, "params": params})
        at, reply = self.wait(lambda m: m.get("id") == ident and "method" not in m)
        return at - sent, reply.get("result")

    def diagnostics_of(self, uri: str, version: int) -> float:
        at, _ = self.wait(lambda m: m.get("method") == "textDocument/publishDiagnostics"
                          and m["params"]["uri"] == uri
                          and m["params"].get("version") == version)
        return at


def figures(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
    return (f"median {statistics.median(ms):6.1f} ms   p90 {p90:6.1f} ms   "
            f"min {ms[0]:6.1f} ms   max {ms[-1]:6.1f} ms   (n={len(ms)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", type=Path, default=GOOGLENET, help="the model to edit")
    parser.add_argument("--edits", type=int, default=60, help="edits in part (a)")
    parser.add_argument("--burst", type=int, default=10, help="edits in one burst (b)")
    parser.add_argument("--requests", type=int, default=30, help="requests of each kind (c)")
    parser.add_argument("--checks", type=int, default=10, help="cnnc check processes (d)")
    args = parser.parse_args()

    text = args.file.read_text()
    needle = "dense("
    if needle not in text:
        raise SystemExit(f"{args.file} has no dense layer to edit")
    before = text[: text.rindex(needle) + len(needle)]
    line = before.count("\n")
    character = len(before) - (before.rfind("\n") + 1)  # the width's first digit
    width = text[len(before):].split(")")[0].split(",")[0]
    if not width.isdigit():
        raise SystemExit(f"{args.file}: the last dense layer's width is not a number")

    from cnnc.lsp.server import DEBOUNCE

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, {platform.system()}")
    print(f"file: {args.file.relative_to(ROOT) if args.file.is_relative_to(ROOT) else args.file}"
          f" ({len(text.splitlines())} lines); server debounce {DEBOUNCE * 1000:.0f} ms")

    client = Client()
    started = time.perf_counter()
    client.request("initialize", {"processId": os.getpid(), "rootUri": None,
                                  "capabilities": {}})
    client.send({"method": "initialized", "params": {}})
    uri = args.file.resolve().as_uri()
    sent = client.send({"method": "textDocument/didOpen", "params": {"textDocument": {
        "uri": uri, "languageId": "cnn", "version": 1, "text": text}}})
    first = client.diagnostics_of(uri, 1)
    print(f"start-up: initialize + open -> first diagnostics {1000 * (first - started):.0f} ms "
          f"(of which open -> diagnostics {1000 * (first - sent):.0f} ms)")

    version = 1
    current = width

    def edit() -> float:
        """The width one more: a text the server has not seen (no cached check helps)."""
        nonlocal version, current
        version += 1
        new = str(int(current) + 1)
        start = {"line": line, "character": character}
        end = {"line": line, "character": character + len(current)}
        current = new
        return client.send({"method": "textDocument/didChange", "params": {
            "textDocument": {"uri": uri, "version": version},
            "contentChanges": [{"range": {"start": start, "end": end}, "text": new}]}})

    for _ in range(5):  # warm-up
        edit()
        client.diagnostics_of(uri, version)
    times = []
    for _ in range(args.edits):
        time.sleep(0.05)  # a pause, as between keystrokes
        sent = edit()
        times.append(client.diagnostics_of(uri, version) - sent)
    print(f"(a) edit -> diagnostics:       {figures(times)}")
    within = sum(t <= 0.1 for t in times)
    print(f"    within 100 ms: {within} of {len(times)}")

    bursts = []
    for _ in range(5):
        time.sleep(0.2)
        for _ in range(args.burst):
            sent = edit()
            time.sleep(0.02)
        bursts.append(client.diagnostics_of(uri, version) - sent)
    print(f"(b) last of {args.burst} fast edits -> diagnostics: {figures(bursts)}")

    position = {"line": 6, "character": 16}  # conv(c1, 1) in googlenet's inception block
    hover_at = {"textDocument": {"uri": uri}, "position": position}
    complete_at = {"textDocument": {"uri": uri}, "position": {"line": line, "character": 0}}
    action_at = {"textDocument": {"uri": uri}, "range": {"start": position, "end": position},
                 "context": {"diagnostics": []}}
    for name, method, params in (("hover", "textDocument/hover", hover_at),
                                 ("completion", "textDocument/completion", complete_at),
                                 ("code actions", "textDocument/codeAction", action_at)):
        took = [client.request(method, params)[0] for _ in range(args.requests)]
        print(f"(c) {name + ':':27s}{figures(took)}")

    client.request("shutdown", None)
    client.send({"method": "exit", "params": None})
    client.process.wait(timeout=60)

    checks = []
    for _ in range(args.checks):
        start = time.perf_counter()
        subprocess.run(cnnc_command() + ["check", str(args.file)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        checks.append(time.perf_counter() - start)
    print(f"(d) `cnnc check` per save:     {figures(checks)}")

    from cnnc.compiler.check import check_source
    from cnnc.lsp.analysis import Analysis

    name = str(args.file)
    for label, work in (("check_source", lambda: check_source(text, name)),
                        ("check + tree + index", lambda: Analysis(text, name).index)):
        work()
        took = []
        for _ in range(args.requests):
            start = time.perf_counter()
            work()
            took.append(time.perf_counter() - start)
        print(f"(e) {label + ':':27s}{figures(took)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
