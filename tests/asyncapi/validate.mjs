// Validates an AsyncAPI 3.0.0 document twice, and exits non-zero on any finding:
//
// 1. against the official JSON Schema of the specification (`@asyncapi/specs`,
//    schemas/3.0.0.json, which bundles the bindings' schemas too), with ajv;
// 2. with the official parser (`@asyncapi/parser`), which also resolves every $ref
//    and applies the specification's rules a JSON Schema cannot express (an
//    operation's messages belong to its channel, a reply's messages to the reply's
//    channel, message examples match their payload and headers schemas, …).
//    Errors fail; so do warnings, so that the document stays clean.
//
// Usage: node validate.mjs <asyncapi.json>   (scripts/asyncapi-check runs it)

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import Ajv from "ajv";
import addFormats from "ajv-formats";
import { Parser } from "@asyncapi/parser";

const require = createRequire(import.meta.url);
const path = process.argv[2];
if (!path) {
  console.error("usage: node validate.mjs <asyncapi.json>");
  process.exit(2);
}
const text = readFileSync(path, "utf8");
const doc = JSON.parse(text);
let failed = false;

// 1. The official JSON Schema.
const schema = require("@asyncapi/specs/schemas/3.0.0.json");
// The bundle carries its own copy of the draft-07 meta-schema (same $id as ajv's
// built-in one), so ajv starts without its own.
const ajv = new Ajv({ strict: false, allErrors: true, meta: false, validateSchema: false });
addFormats(ajv);
const validate = ajv.compile(schema);
if (validate(doc)) {
  console.log(`${path}: valid against the AsyncAPI 3.0.0 JSON Schema (@asyncapi/specs)`);
} else {
  failed = true;
  console.error(`${path}: INVALID against the AsyncAPI 3.0.0 JSON Schema:`);
  for (const e of validate.errors) {
    console.error(`  ${e.instancePath || "/"}: ${e.message} ${JSON.stringify(e.params)}`);
  }
}

// 2. The parser's rules. Severity: 0 error, 1 warning, 2 info, 3 hint.
const parser = new Parser();
const { document, diagnostics } = await parser.parse(text, { source: path });
const findings = diagnostics.filter((d) => d.severity <= 1);
for (const d of findings) {
  const where = d.path && d.path.length ? d.path.join("/") : "/";
  console.error(`  ${d.severity === 0 ? "error" : "warning"} ${d.code} at ${where}: ${d.message}`);
}
if (!document || findings.length > 0) {
  failed = true;
  console.error(`${path}: the AsyncAPI parser reported ${findings.length} error(s)/warning(s)`);
} else {
  console.log(
    `${path}: parsed by @asyncapi/parser without errors or warnings ` +
      `(${document.channels().length} channels, ${document.operations().length} operations, ` +
      `${document.messages().length} messages)`,
  );
}
// 3. Two rules the parser (3.6) leaves out.
const problems = [];
// A reply's messages must be messages of the reply's channel (AsyncAPI 3.0.0, Operation
// Reply Object); the parser checks this for an operation's own messages only.
for (const [name, op] of Object.entries(doc.operations ?? {})) {
  if (!op.reply) continue;
  const channel = (op.reply.channel ?? op.channel).$ref;
  for (const m of op.reply.messages ?? []) {
    if (!m.$ref.startsWith(`${channel}/messages/`)) {
      problems.push(`operations/${name}/reply: ${m.$ref} is not a message of ${channel}`);
    }
  }
}
// Every message example matches its message's payload and headers schemas.
const docAjv = new Ajv({ strict: false, allErrors: true });
addFormats(docAjv);
// Only the components: the document's own `id` is not a schema keyword ajv accepts,
// and every $ref of a schema points into the components anyway.
docAjv.addSchema({ components: doc.components }, "https://asyncapi.invalid/document.json");
const check = (pointer) => docAjv.compile({ $ref: `https://asyncapi.invalid/document.json#${pointer}` });
for (const [name, m] of Object.entries(doc.components?.messages ?? {})) {
  (m.examples ?? []).forEach((example, i) => {
    for (const part of ["payload", "headers"]) {
      if (!(part in example)) continue;
      if (!m[part]) {
        problems.push(`components/messages/${name}/examples/${i}: has ${part} but the message has no ${part} schema`);
        continue;
      }
      const valid = check(`/components/messages/${name}/${part}`);
      if (!valid(example[part])) {
        problems.push(
          `components/messages/${name}/examples/${i} (${example.name}): ${part} does not match its schema: ` +
            valid.errors.map((e) => `${e.instancePath || "/"} ${e.message}`).join("; "),
        );
      }
    }
  });
}
for (const p of problems) console.error(`  error ${p}`);
if (problems.length > 0) {
  failed = true;
  console.error(`${path}: ${problems.length} problem(s) with replies or examples`);
} else {
  console.log(`${path}: every reply belongs to its channel and every message example matches its schemas`);
}

process.exit(failed ? 1 : 0);
