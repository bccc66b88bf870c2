// The cnnc extension: highlights .cnn files (syntaxes/cnn.tmLanguage.json, declared in
// package.json) and starts the cnnc language server, `cnnc lsp`, over stdio for them.
"use strict";

const vscode = require("vscode");
const { LanguageClient } = require("vscode-languageclient/node");

let client;

// The command that starts the server, from the settings `cnnc.server.path` and
// `cnnc.server.args`.
function serverCommand(settings) {
  const command = settings.get("server.path") || "cnnc";
  const args = settings.get("server.args") || ["lsp"];
  return { command, args };
}

async function start() {
  const settings = vscode.workspace.getConfiguration("cnnc");
  const { command, args } = serverCommand(settings);
  const server = { command, args };
  client = new LanguageClient(
    "cnnc",
    "cnnc language server",
    { run: server, debug: server },
    { documentSelector: [{ language: "cnn" }] },
  );
  try {
    await client.start();
  } catch (err) {
    client = undefined;
    vscode.window.showErrorMessage(
      `cnnc: could not start \`${command} ${args.join(" ")}\` (${err.message || err}). ` +
        "Install the server with `pip install 'cnnc[lsp]'`, or set cnnc.server.path " +
        "to the cnnc command of your environment.",
    );
  }
}

async function stop() {
  if (client) {
    const running = client;
    client = undefined;
    await running.stop();
  }
}

async function activate(context) {
  context.subscriptions.push(
    vscode.workspace.onDidChangeConfiguration(async (event) => {
      if (event.affectsConfiguration("cnnc.server")) {
        await stop();
        await start();
      }
    }),
  );
  await start();
}

function deactivate() {
  return stop();
}

module.exports = { activate, deactivate, serverCommand };
