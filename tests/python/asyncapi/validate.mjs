// Validates an AsyncAPI document with the AsyncAPI project's own parser
// (the one its CLI and Studio use): JSON Schema of the specification,
// bindings, references, and its semantic rules. Any error or warning fails.
//
//   node validate.mjs ../../../docs/asyncapi.yaml
import { Parser, fromFile } from '@asyncapi/parser';

const path = process.argv[2];
if (!path) {
  console.error('usage: node validate.mjs <asyncapi.yaml>');
  process.exit(2);
}
const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, path).parse();
// Severity: 0 error, 1 warning, 2 information, 3 hint.
const problems = diagnostics.filter((d) => d.severity <= 1);
for (const d of diagnostics) {
  const where = d.path && d.path.length ? d.path.join('.') : '(document)';
  const kind = ['error', 'warning', 'info', 'hint'][d.severity] ?? d.severity;
  console.log(`${kind}: ${where}: ${d.message} [${d.code}]`);
}
if (!document || problems.length > 0) {
  console.error(`${path}: ${problems.length} problem(s); not a valid AsyncAPI document`);
  process.exit(1);
}
const channels = document.channels().length;
const operations = document.operations().length;
const messages = document.components().messages().length;
console.log(`${path}: valid AsyncAPI ${document.version()} (${channels} channels, ${operations} operations, ${messages} messages)`);
