// docs/nextjs.md walks through this example; each of its code blocks that
// starts with `// from examples/nextjs/<file>` is cut from that file. This
// checks that every such block still is, verbatim, so the walkthrough shows
// the code the end-to-end test runs.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { APP_DIR, REPO } from './harness.mjs';

test('every code block of docs/nextjs.md that names an example file is in that file', () => {
  const doc = readFileSync(path.join(REPO, 'docs/nextjs.md'), 'utf8');
  const blocks = [...doc.matchAll(/^```\w*\n([\s\S]*?)^```$/gm)].map((m) => m[1]);
  let checked = 0;
  for (const block of blocks) {
    const from = /^\/\/ from examples\/nextjs\/(\S+)\n/.exec(block);
    if (!from) continue;
    const body = block.slice(from[0].length);
    const file = readFileSync(path.join(APP_DIR, from[1]), 'utf8');
    assert.ok(file.includes(body), `docs/nextjs.md shows code that examples/nextjs/${from[1]} no longer has:\n${body}`);
    checked++;
  }
  assert.ok(checked >= 15, `only ${checked} blocks name an example file`);
});
