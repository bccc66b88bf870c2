"""An editor in miniature: `cnnc lsp` started as a subprocess and spoken to in JSON-RPC over
its standard input and output (Content-Length framing), as VS Code or Neovim do.

The ``editor`` fixture is one server for the whole module (starting one costs an import of
pygls); each test opens documents of its own URIs. Skipped when pygls is not installed.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
WAIT = 60  # seconds: a hang guard only, not a measure of speed


class Editor:
    """A JSON-RPC client of `cnnc lsp` with the few requests an editor makes."""

    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.next_id = 0
        self.inbox: queue.Queue = queue.Queue()
        self.notifications: list = []
        self.versions: dict = {}
        self.texts: dict = {}
        threading.Thread(target=self._read, daemon=True).start()

    # ---- framing ------------------------------------------------------------------------------
    def _read(self):
        stream = self.process.stdout
        while True:
            length = None
            while True:
                line = stream.readline()
                if not line:
                    self.inbox.put(None)
                    return
                line = line.strip()
                if not line:
                    break
                name, _, value = line.decode("ascii").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            self.inbox.put(json.loads(stream.read(length)))

    def send(self, message: dict):
        body = json.dumps({"jsonrpc": "2.0", **message}).encode("utf-8")
        self.process.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.process.stdin.flush()

    def receive(self, wanted) -> dict:
        """The first message for which ``wanted(message)`` holds; the others are kept
        (notifications) or answered (requests from the server)."""
        for i, message in enumerate(self.notifications):
            if wanted(message):
                return self.notifications.pop(i)
        while True:
            message = self.inbox.get(timeout=WAIT)
            if message is None:
                raise EOFError("the server closed its output")
            if "method" in message and "id" in message:  # a request from the server
                self.send({"id": message["id"], "result": None})
                continue
            if wanted(message):
                return message
            if "method" in message:
                self.notifications.append(message)

    def request(self, method: str, params) -> object:
        self.next_id += 1
        ident = self.next_id
        self.send({"id": ident, "method": method, "params": params})
        reply = self.receive(lambda m: m.get("id") == ident and "method" not in m)
        assert "error" not in reply, reply["error"]
        return reply["result"]

    def notify(self, method: str, params):
        self.send({"method": method, "params": params})

    # ---- documents ----------------------------------------------------------------------------
    def open(self, name: str, text: str) -> list:
        """Open a document; its first diagnostics."""
        uri = uri_of(name)
        self.versions[uri] = 1
        self.texts[uri] = text
        self.notify("textDocument/didOpen", {"textDocument": {
            "uri": uri, "languageId": "cnn", "version": 1, "text": text}})
        return self.diagnostics(uri, 1)

    def change(self, name: str, edits: list) -> list:
        """Edit a document (``(range, new text)`` pairs, applied in order, or a whole text
        as ``[(None, text)]``); the diagnostics of the new version."""
        uri = uri_of(name)
        self.versions[uri] += 1
        changes = []
        for rng, text in edits:
            changes.append({"text": text} if rng is None else {"range": rng, "text": text})
        self.notify("textDocument/didChange", {
            "textDocument": {"uri": uri, "version": self.versions[uri]},
            "contentChanges": changes})
        return self.diagnostics(uri, self.versions[uri])

    def diagnostics(self, uri: str, version: int) -> list:
        message = self.receive(lambda m: m.get("method") == "textDocument/publishDiagnostics"
                               and m["params"]["uri"] == uri
                               and m["params"].get("version") == version)
        return message["params"]["diagnostics"]

    def at(self, name: str, line: int, character: int) -> dict:
        return {"textDocument": {"uri": uri_of(name)},
                "position": {"line": line, "character": character}}

    # the helpers below are reached through the fixture (a test module cannot import
    # conftest under --import-mode=importlib)
    @staticmethod
    def uri(name: str) -> str:
        return uri_of(name)

    @staticmethod
    def position_of(text: str, needle: str, nth: int = 0, shift: int = 0) -> tuple[int, int]:
        return position_of(text, needle, nth, shift)

    @staticmethod
    def apply_edits(text: str, edits: list) -> str:
        return apply_edits(text, edits)


def uri_of(name: str) -> str:
    return (ROOT / "tests" / "lsp" / "virtual" / name).as_uri()


def position_of(text: str, needle: str, nth: int = 0, shift: int = 0) -> tuple[int, int]:
    """The 0-based (line, character) of the ``nth`` occurrence of ``needle`` in ``text``,
    moved right by ``shift`` characters (ASCII text: characters are UTF-16 units)."""
    start = -1
    for _ in range(nth + 1):
        start = text.index(needle, start + 1)
    start += shift
    line = text.count("\n", 0, start)
    return line, start - (text.rfind("\n", 0, start) + 1)


def apply_edits(text: str, edits: list) -> str:
    """A text with LSP TextEdits made (ASCII text), last first."""
    lines = text.split("\n")
    starts = [0]
    for line in lines[:-1]:
        starts.append(starts[-1] + len(line) + 1)

    def offset(p):
        return starts[p["line"]] + p["character"] if p["line"] < len(starts) else len(text)

    for edit in sorted(edits, key=lambda e: (e["range"]["start"]["line"],
                                             e["range"]["start"]["character"]), reverse=True):
        a, b = offset(edit["range"]["start"]), offset(edit["range"]["end"])
        text = text[:a] + edit["newText"] + text[b:]
    return text


@pytest.fixture(scope="module")
def editor():
    pytest.importorskip("pygls")
    pytest.importorskip("lsprotocol")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen([sys.executable, "-m", "cnnc.cli", "lsp"], cwd=ROOT,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env)
    client = Editor(process)
    result = client.request("initialize", {"processId": os.getpid(), "rootUri": None,
                                           "capabilities": {}})
    client.capabilities = result["capabilities"]
    client.notify("initialized", {})
    yield client
    if process.poll() is None:
        try:
            client.request("shutdown", None)
            client.notify("exit", None)
            process.wait(timeout=WAIT)
        except Exception:
            process.kill()
            process.wait()
    process.stdin.close()
    process.stdout.close()
    process.stderr.close()
