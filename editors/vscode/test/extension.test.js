// extension.js starts `cnnc lsp` with the configured command, for .cnn documents; run here
// with stand-ins for the `vscode` module and the language client (VS Code is not needed).
"use strict";

const test = require("node:test");
const assert = require("node:assert");
const Module = require("node:module");
const path = require("node:path");

function loadExtension(settings) {
  const started = [];
  const messages = [];
  class LanguageClient {
    constructor(id, name, serverOptions, clientOptions) {
      Object.assign(this, { id, name, serverOptions, clientOptions });
    }
    async start() {
      started.push(this);
      if (settings.fail) throw new Error("spawn cnnc ENOENT");
    }
    async stop() {}
  }
  const vscode = {
    workspace: {
      getConfiguration: (section) => ({ get: (key) => settings[`${section}.${key}`] }),
      onDidChangeConfiguration: () => ({ dispose() {} }),
    },
    window: { showErrorMessage: (text) => messages.push(text) },
  };
  const stubs = { vscode, "vscode-languageclient/node": { LanguageClient } };
  const original = Module._load;
  Module._load = function (request, ...rest) {
    return request in stubs ? stubs[request] : original.call(this, request, ...rest);
  };
  const file = path.resolve(__dirname, "..", "extension.js");
  delete require.cache[file];
  try {
    return { extension: require(file), started, messages };
  } finally {
    Module._load = original;
  }
}

test("the server is `cnnc lsp` by default, for cnn documents", async () => {
  const { extension, started } = loadExtension({});
  await extension.activate({ subscriptions: [] });
  assert.strictEqual(started.length, 1);
  const client = started[0];
  assert.deepStrictEqual(client.serverOptions.run, { command: "cnnc", args: ["lsp"] });
  assert.deepStrictEqual(client.clientOptions.documentSelector, [{ language: "cnn" }]);
  await extension.deactivate();
});

test("the settings choose the command and its arguments", async () => {
  const { extension, started } = loadExtension({
    "cnnc.server.path": "/opt/venv/bin/cnnc",
    "cnnc.server.args": ["lsp", "--log", "/tmp/cnnc.log"],
  });
  await extension.activate({ subscriptions: [] });
  assert.deepStrictEqual(started[0].serverOptions.run,
    { command: "/opt/venv/bin/cnnc", args: ["lsp", "--log", "/tmp/cnnc.log"] });
});

test("a server that cannot start is explained, with the extra to install", async () => {
  const { extension, messages } = loadExtension({ fail: true });
  await extension.activate({ subscriptions: [] });
  assert.strictEqual(messages.length, 1);
  assert.match(messages[0], /pip install 'cnnc\[lsp\]'/);
  assert.match(messages[0], /cnnc\.server\.path/);
});
