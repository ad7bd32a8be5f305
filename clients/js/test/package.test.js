// Packaging: `npm pack`, then `npm install <tarball>` into a fresh project
// (no symlink, as Next's bundlers need), and what each entry point resolves
// to there — in Node, and in a browser bundle (esbuild, "browser" condition).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { lstatSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const pkgDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const pkg = JSON.parse(readFileSync(path.join(pkgDir, 'package.json'), 'utf8'));
const npm = (args, cwd) => execFileSync('npm', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000 });
let work;
let app;

before(() => {
  work = mkdtempSync(path.join(tmpdir(), 'taskcast-pack-'));
  npm(['pack', '--pack-destination', work, '--silent'], pkgDir);
  app = path.join(work, 'app');
  execFileSync('mkdir', [app]);
  writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
  npm(['install', '--offline', '--no-audit', '--no-fund', '--loglevel=error', path.join(work, `taskcast-client-${pkg.version}.tgz`)], app);
});
after(() => rmSync(work, { recursive: true, force: true }));

test('the tarball holds the sources, types, README and LICENSE, and no tests', () => {
  const [{ files }] = JSON.parse(npm(['pack', '--dry-run', '--json', '--silent'], pkgDir));
  const names = files.map((f) => f.path).sort();
  for (const want of ['LICENSE', 'README.md', 'package.json', 'src/index.js', 'src/index.d.ts', 'src/react.js', 'src/react.d.ts', 'src/server.js', 'src/server.d.ts', 'src/server-browser.js']) {
    assert.ok(names.includes(want), `${want} in ${names}`);
  }
  assert.deepEqual(names.filter((n) => n.startsWith('test/')), []);
  // Tree-shakeable, except the two modules whose load-time check is the point.
  assert.deepEqual(pkg.sideEffects, ['./src/server.js', './src/server-browser.js']);
  assert.equal(pkg.license, 'MIT');
  assert.deepEqual(pkg.peerDependenciesMeta, { react: { optional: true } });
  for (const entry of ['.', './react', './server']) assert.ok(pkg.exports[entry].types, `types for ${entry}`);
});

test('installed from the tarball: a real directory, and each entry point imports in Node', () => {
  assert.equal(lstatSync(path.join(app, 'node_modules', 'taskcast-client')).isSymbolicLink(), false);
  assert.equal(lstatSync(path.join(app, 'node_modules', 'react'), { throwIfNoEntry: false }), undefined, 'React is not installed for non-React users');
  const out = execFileSync(
    process.execPath,
    ['--input-type=module', '-e', `
      const client = await import('taskcast-client');
      const server = await import('taskcast-client/server');
      console.log(JSON.stringify([typeof client.connect, typeof server.broadcast, typeof server.tryBroadcast, typeof server.mintSubscriptionToken]));
    `],
    { cwd: app, encoding: 'utf8' },
  );
  assert.deepEqual(JSON.parse(out), ['function', 'function', 'function', 'function']);
});

test('a browser bundle that imports taskcast-client/server gets the module that refuses to load', async () => {
  const esbuild = await import('esbuild');
  const bundle = async (contents, platform) => {
    const out = await esbuild.build({
      stdin: { contents, resolveDir: app, loader: 'js' },
      bundle: true,
      write: false,
      platform,
      format: 'esm',
      logLevel: 'silent',
    });
    return out.outputFiles[0].text;
  };
  const browserServer = await bundle("import { broadcast } from 'taskcast-client/server'; console.log(broadcast);", 'browser');
  assert.match(browserServer, /was bundled into browser code/);
  assert.doesNotMatch(browserServer, /function broadcast/);
  const nodeServer = await bundle("import { broadcast } from 'taskcast-client/server'; console.log(broadcast);", 'node');
  assert.match(nodeServer, /function broadcast/);
  const browserClient = await bundle("import { connect } from 'taskcast-client'; console.log(connect);", 'browser');
  assert.match(browserClient, /function connect/);
  assert.doesNotMatch(browserClient, /BROADCAST_API_KEY/, 'nothing of the server helper in the browser client');
});
