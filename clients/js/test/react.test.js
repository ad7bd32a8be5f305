// taskcast-client/react: server rendering with react-dom/server in Node (no
// client is made there), and the bindings in a real browser under
// StrictMode against the real taskcast binary.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { createElement as h } from 'react';
import { renderToString } from 'react-dom/server';

import { TaskcastProvider, useChannel, useConnectionState, useTaskcast } from '../src/react.js';
import { broadcast } from '../src/server.js';
import { CHROMIUM, launchChromium, metric, serveRoutes, sign, startServer, token } from './helpers.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const API_KEY = 'publisher-key-for-the-react-tests-0123';
const WAIT = { timeout: 10_000 };
const ATTACHED = { state: 'attached', timeout: 10_000 };

test('server rendering: no client, no getToken call, state "connecting", hooks usable', () => {
  let tokenCalls = 0;
  let state = null;
  let ctx = null;
  function Page() {
    state = useConnectionState();
    ctx = useTaskcast();
    useChannel('project:ssr', () => {});
    return h('p', { id: 'state' }, state);
  }
  const html = renderToString(
    h(TaskcastProvider, { url: 'ws://127.0.0.1:9/ws', getToken: () => tokenCalls++ }, h(Page)),
  );
  assert.equal(html, '<p id="state">connecting</p>');
  assert.equal(state, 'connecting');
  assert.deepEqual(ctx, { client: null, state: 'connecting', lastError: null });
  assert.equal(tokenCalls, 0);
});

test('hooks outside <TaskcastProvider> say so', () => {
  function Lost() {
    useChannel('project:x', () => {});
    return null;
  }
  assert.throws(() => renderToString(h(Lost)), /useChannel must be used inside <TaskcastProvider>/);
});

/** The fixture app bundled for the browser, development build (StrictMode double-mounts effects). */
async function bundleApp() {
  const esbuild = await import('esbuild');
  const out = await esbuild.build({
    entryPoints: [path.join(here, 'fixtures', 'react-app.js')],
    bundle: true,
    format: 'esm',
    write: false,
    define: { 'process.env.NODE_ENV': '"development"' },
    alias: { 'taskcast-client/react': path.join(here, '..', 'src', 'react.js') },
    logLevel: 'silent',
  });
  return out.outputFiles[0].text;
}

describe('React bindings in chromium', { skip: existsSync(CHROMIUM) ? false : `${CHROMIUM} is missing` }, () => {
  let context;
  let app;
  let server;

  before(async () => {
    const bundle = await bundleApp();
    app = await serveRoutes({
      '/': { type: 'text/html', body: '<!doctype html><meta charset="utf-8"><div id="root"></div><script type="module" src="/app.js"></script>' },
      '/app.js': { type: 'text/javascript', body: bundle },
    });
    context = await launchChromium();
    server = await startServer({ BROADCAST_API_KEY: API_KEY, ALLOWED_ORIGINS: app.origin });
  });

  after(async () => {
    await context?.close();
    await server?.stop();
    app?.close();
  });

  /** A page of the app whose getToken mints `sub`'s tokens; `frames.sent` logs what its sockets send. */
  async function appPage(sub, mint = token) {
    const page = await context.newPage();
    const frames = { sent: [], received: [], sockets: 0 };
    page.on('websocket', (ws) => {
      frames.sockets++;
      ws.on('framesent', (f) => frames.sent.push(JSON.parse(f.payload)));
      ws.on('framereceived', (f) => frames.received.push(JSON.parse(f.payload)));
    });
    await page.exposeFunction('getToken', () => mint(sub));
    await page.goto(`${app.origin}/`);
    await page.waitForFunction(() => window.ready === true, null, WAIT);
    page.frames = frames;
    return page;
  }

  test('StrictMode, two components mounted on an open client, one channel: one subscribe, both get each message once, in order', async () => {
    const before = await metric(server.http, 'taskcast_subscriptions');
    const page = await appPage('react-1');
    const channel = 'project:react-shared';
    try {
      // The provider first (as in a layout), the boards once it is open (a
      // page navigated to): StrictMode mounts, unmounts and mounts their
      // effects again.
      await page.evaluate(({ url, channel }) => window.render({ url, channel, boards: [] }), { url: server.ws, channel });
      await page.waitForSelector('#status[data-state="open"]', ATTACHED);
      // (React double-mounts per component: one alone on the channel is the case where it matters.)
      await page.evaluate(({ url, channel }) => window.render({ url, channel, boards: ['a'] }), { url: server.ws, channel });
      await waitFor(() => page.frames.received.some((m) => m.type === 'subscribed' && m.channel === channel));
      await page.evaluate(({ url, channel }) => window.render({ url, channel, boards: ['a', 'b'] }), { url: server.ws, channel });
      // The user channel and this one; not one per component or per mount.
      assert.equal(await metric(server.http, 'taskcast_subscriptions'), before + 2);
      for (const n of [1, 2, 3]) {
        await broadcast({ url: server.http, apiKey: API_KEY, channel, type: 'task', data: n });
        // Rendered before the next one, so each message meets a new onMessage closure.
        await page.waitForFunction((n) => document.querySelectorAll('#a li').length === n && document.querySelectorAll('#b li').length === n, n, WAIT);
      }
      const log = await page.evaluate(() => window.log);
      for (const name of ['a', 'b']) {
        assert.deepEqual(log.messages[name].map((m) => [m.type, m.payload, m.channel, m.offset]), [
          ['task', 1, channel, 1],
          ['task', 2, channel, 2],
          ['task', 3, channel, 3],
        ]);
        // The latest onMessage closure ran each time (a stale one would see 0 items).
        assert.deepEqual(log.messages[name].map((m) => m.renderedItems), [0, 1, 2]);
      }
      assert.equal(await page.locator('#a li').count(), 3);
      const subscribes = page.frames.sent.filter((m) => m.type === 'subscribe');
      assert.deepEqual(subscribes.map((m) => m.channel), [channel], 'exactly one subscribe');
      assert.deepEqual(page.frames.sent.filter((m) => m.type === 'unsubscribe'), []);
      assert.deepEqual(log.resyncs, []);
      assert.deepEqual(log.errors, []);
      // One socket: the client StrictMode's first mount made was closed before it connected.
      assert.equal(page.frames.sockets, 1);
      assert.deepEqual([...new Set(log.states)], ['connecting', 'open']);

      // One component leaves: the channel stays. The last leaves: one unsubscribe.
      await page.evaluate(({ url, channel }) => window.render({ url, channel, boards: ['a'] }), { url: server.ws, channel });
      await page.waitForFunction(() => !document.getElementById('b'), null, WAIT); // React commits asynchronously
      await broadcast({ url: server.http, apiKey: API_KEY, channel, type: 'task', data: 4 });
      await page.waitForFunction(() => window.log.messages.a.length === 4, null, WAIT);
      assert.equal(await page.evaluate(() => window.log.messages.b.length), 3);
      assert.deepEqual(page.frames.sent.filter((m) => m.type === 'unsubscribe'), []);
      await page.evaluate(({ url, channel }) => window.render({ url, channel, boards: [] }), { url: server.ws, channel });
      await waitFor(() => page.frames.sent.some((m) => m.type === 'unsubscribe'));
      assert.deepEqual(page.frames.sent.filter((m) => m.type === 'unsubscribe').map((m) => m.channel), [channel]);
      await waitFor(async () => (await metric(server.http, 'taskcast_subscriptions')) === before + 1);

      // Unmounting the provider closes the client: the server sees the socket go.
      await page.evaluate(() => window.unmountAll());
      await waitFor(async () => (await metric(server.http, 'taskcast_subscriptions')) === before);
    } finally {
      await page.close();
    }
  });

  test('a refused token: useConnectionState() is "error" and useTaskcast().lastError names the reason', async () => {
    const now = Math.floor(Date.now() / 1000);
    const page = await appPage('react-refused', (sub) => sign({ sub, iat: now, exp: now + 600 }, 'not-the-server-secret-0123456789'));
    try {
      await page.evaluate(({ url }) => window.render({ url, channel: 'project:r', boards: ['a'] }), { url: server.ws });
      await page.waitForSelector('#status[data-state="error"]', ATTACHED);
      const text = await page.textContent('#status');
      assert.match(text, /^auth_failed: .*token signature is invalid/);
      assert.equal(page.frames.sockets, 1, 'not retried');
      assert.deepEqual([...new Set(await page.evaluate(() => window.log.states))], ['connecting', 'error']);
    } finally {
      await page.close();
    }
  });
});

/** Polls `cond` every 20 ms for up to 10 s. */
async function waitFor(cond, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${ms} ms: ${cond}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
