// The TextMate grammar tokenizes every example model as VS Code would (vscode-textmate with
// the Oniguruma regular expressions VS Code uses), and the manifest holds together.
"use strict";

const test = require("node:test");
const assert = require("node:assert");
const fs = require("node:fs");
const path = require("node:path");
const oniguruma = require("vscode-oniguruma");
const textmate = require("vscode-textmate");

const HERE = path.resolve(__dirname, "..");
const EXAMPLES = path.resolve(HERE, "..", "..", "examples");
const manifest = JSON.parse(fs.readFileSync(path.join(HERE, "package.json"), "utf8"));

async function loadGrammar() {
  const wasm = fs.readFileSync(require.resolve("vscode-oniguruma/release/onig.wasm"));
  await oniguruma.loadWASM(wasm.buffer.slice(wasm.byteOffset, wasm.byteOffset + wasm.length));
  const registry = new textmate.Registry({
    onigLib: Promise.resolve({
      createOnigScanner: (patterns) => new oniguruma.OnigScanner(patterns),
      createOnigString: (s) => new oniguruma.OnigString(s),
    }),
    loadGrammar: async (scopeName) => {
      if (scopeName !== "source.cnn") return null;
      const file = path.join(HERE, manifest.contributes.grammars[0].path);
      return textmate.parseRawGrammar(fs.readFileSync(file, "utf8"), file);
    },
  });
  return registry.loadGrammar("source.cnn");
}

// Every token of a text: { text, scopes } with the scopes innermost last.
function tokenize(grammar, text) {
  const out = [];
  let state = textmate.INITIAL;
  for (const line of text.split("\n")) {
    const result = grammar.tokenizeLine(line, state);
    for (const token of result.tokens) {
      out.push({ text: line.slice(token.startIndex, token.endIndex), scopes: token.scopes });
    }
    state = result.ruleStack;
  }
  return out;
}

function scopesOf(tokens, text) {
  const token = tokens.find((t) => t.text === text);
  assert.ok(token, `no token ${JSON.stringify(text)}`);
  return token.scopes.join(" ");
}

let grammarPromise;
function grammar() {
  grammarPromise = grammarPromise || loadGrammar();
  return grammarPromise;
}

test("the manifest declares the language, its grammar and its settings", () => {
  const language = manifest.contributes.languages[0];
  assert.strictEqual(language.id, "cnn");
  assert.deepStrictEqual(language.extensions, [".cnn"]);
  assert.ok(fs.existsSync(path.join(HERE, language.configuration)));
  const g = manifest.contributes.grammars[0];
  assert.strictEqual(g.language, "cnn");
  assert.strictEqual(g.scopeName, "source.cnn");
  assert.ok(fs.existsSync(path.join(HERE, g.path)));
  assert.ok(fs.existsSync(path.join(HERE, manifest.main)));
  const settings = manifest.contributes.configuration.properties;
  assert.strictEqual(settings["cnnc.server.path"].default, "cnnc");
  assert.deepStrictEqual(settings["cnnc.server.args"].default, ["lsp"]);
  assert.ok(manifest.activationEvents.includes("onLanguage:cnn"));
});

test("the language configuration: # comments and the three brackets", () => {
  const file = path.join(HERE, manifest.contributes.languages[0].configuration);
  const config = JSON.parse(fs.readFileSync(file, "utf8"));
  assert.strictEqual(config.comments.lineComment, "#");
  assert.deepStrictEqual(config.brackets, [["{", "}"], ["[", "]"], ["(", ")"]]);
  const increase = new RegExp(config.indentationRules.increaseIndentPattern);
  assert.ok(increase.test("block reduce(c) {"));
  assert.ok(!increase.test("# a { in a comment"));
  assert.ok(new RegExp(config.indentationRules.decreaseIndentPattern).test("}"));
});

test("every example tokenizes, comments as comments", async () => {
  const g = await grammar();
  const files = fs.readdirSync(EXAMPLES).filter((f) => f.endsWith(".cnn"));
  assert.ok(files.length >= 10, `only ${files.length} examples found in ${EXAMPLES}`);
  for (const file of files) {
    const text = fs.readFileSync(path.join(EXAMPLES, file), "utf8");
    const tokens = tokenize(g, text);
    assert.strictEqual(tokens.map((t) => t.text).join(""), text.split("\n").join(""), file);
    for (const token of tokens) {
      if (token.text.startsWith("#")) {
        assert.match(token.scopes.join(" "), /comment\.line/, `${file}: ${token.text}`);
      }
    }
    const layers = tokens.filter((t) => t.scopes.includes("support.function.layer.cnn"));
    assert.ok(layers.length > 0, `${file}: no layer was recognized`);
  }
});

test("googlenet: keywords, blocks, layers, arguments, numbers and merges", async () => {
  const g = await grammar();
  const text = fs.readFileSync(path.join(EXAMPLES, "googlenet.cnn"), "utf8");
  const tokens = tokenize(g, text);
  assert.match(scopesOf(tokens, "network"), /keyword\.other\.network/);
  assert.match(scopesOf(tokens, "googlenet"), /entity\.name\.namespace/);
  assert.match(scopesOf(tokens, "block"), /keyword\.other\.block/);
  assert.match(scopesOf(tokens, "inception"), /entity\.name\.function\.block/);
  assert.match(scopesOf(tokens, "c3r"), /variable\.parameter/);
  assert.match(scopesOf(tokens, "conv"), /support\.function\.layer/);
  assert.match(scopesOf(tokens, "stride"), /variable\.parameter\.keyword/);
  assert.match(scopesOf(tokens, "->"), /keyword\.operator\.arrow/);
  assert.match(scopesOf(tokens, "concat"), /support\.function\.merge/);
  assert.match(scopesOf(tokens, "224"), /constant\.numeric/);
  assert.match(scopesOf(tokens, "0.4"), /constant\.numeric/);
  assert.match(scopesOf(tokens, "true"), /constant\.language\.boolean/);
  assert.match(scopesOf(tokens, "return"), /keyword\.control\.return/);
  assert.match(scopesOf(tokens, "output"), /keyword\.other\.output/);
  assert.match(scopesOf(tokens, "logits"), /variable\.other\.definition\.output/);
  assert.match(scopesOf(tokens, "image"), /variable\.other\.definition\.input/);
});

test("a block call is a call, a binding a definition, a size symbol a constant", async () => {
  const g = await grammar();
  const text = "input x: [3, H, W]\nlet width = 8 * 2\ny = x -> unit(width, k=3) -> relu as act\n";
  const tokens = tokenize(g, text);
  assert.match(scopesOf(tokens, "H"), /variable\.other\.constant\.size/);
  assert.match(scopesOf(tokens, "width"), /variable\.other\.constant\.definition/);
  assert.match(scopesOf(tokens, "unit"), /entity\.name\.function\.call/);
  assert.match(scopesOf(tokens, "k"), /variable\.parameter\.keyword/);
  assert.match(scopesOf(tokens, "y"), /variable\.other\.definition/);
  assert.match(scopesOf(tokens, "as"), /keyword\.other\.as/);
  assert.match(scopesOf(tokens, "*"), /keyword\.operator\.arithmetic/);
});
