// The client and the demo page in a real browser: Debian's chromium driven
// by playwright-core, against the real taskcast binary. The app page is
// served by a small HTTP server on another origin (as a Next.js app would
// be) and loads the library as is. Skipped when /usr/bin/chromium is
// missing (.ci/run installs it); channel tests skip until the server
// answers a subscribe with `subscribed`.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { broadcast } from '../src/server.js';
import { channelsSupported, startProxy, startServer, token, until } from './helpers.js';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const here = path.dirname(fileURLToPath(import.meta.url));
const ARTIFACTS = path.join(here, '..', 'test-artifacts');
const CLIENT_JS = readFileSync(path.join(here, '..', 'src', 'index.js'));
const API_KEY = 'publisher-key-for-the-browser-tests-0123';
const WAIT = { timeout: 10_000 };

// The app page: the library, and hooks the tests drive with page.evaluate.
const APP_PAGE = `<!doctype html><meta charset="utf-8"><title>app</title>
<script type="module">
import { connect } from '/taskcast-client.js';
window.events = []; window.received = []; window.channelMsgs = []; window.resyncs = [];
window.start = (url, opts = {}) => {
  const c = connect({ url, getToken: () => window.getToken(), backoff: { baseMs: 50, maxMs: 400 }, restartJitterMs: 100,
    ...opts, onBroadcast: (m) => window.received.push(m) });
  for (const e of ['connecting', 'connected', 'disconnected', 'refreshed', 'error'])
    c.on(e, (v) => window.events.push({ event: e, code: v && v.code }));
  window.client = c;
};
window.subscribe = (channel) => window.client.subscribe(channel, {
  onMessage: (m) => window.channelMsgs.push(m.payload),
  onResync: (r) => window.resyncs.push(r.reason),
  onSubscribed: (i) => window.events.push({ event: 'subscribed', recovered: i.recovered }),
});
window.ready = true;
</script>`;

function serveApp() {
  const server = http.createServer((req, res) => {
    if (req.url === '/taskcast-client.js') {
      res.writeHead(200, { 'Content-Type': 'text/javascript' });
      return res.end(CLIENT_JS);
    }
    if (req.url === '/') {
      res.writeHead(200, { 'Content-Type': 'text/html' });
      return res.end(APP_PAGE);
    }
    res.writeHead(404).end();
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

const haveChromium = existsSync(CHROMIUM);

describe('in chromium', { skip: haveChromium ? false : `${CHROMIUM} is missing` }, () => {
  let context;
  let app;
  let appOrigin;
  let server;
  let channels = false;

  before(async () => {
    const { chromium } = await import('playwright-core');
    context = await chromium.launchPersistentContext(mkdtempSync(path.join(tmpdir(), 'taskcast-chromium-')), {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    app = await serveApp();
    appOrigin = `http://127.0.0.1:${app.address().port}`;
    server = await startServer({ BROADCAST_API_KEY: API_KEY, ALLOWED_ORIGINS: appOrigin });
    channels = await channelsSupported(server);
  });

  after(async () => {
    await context?.close();
    await server?.stop();
    app?.close();
  });

  /** A new app page whose getToken mints `sub`'s tokens (`ttl(n)` for the n-th call). */
  async function appPage(sub, ttl = () => 3600) {
    const page = await context.newPage();
    let n = 0;
    await page.exposeFunction('getToken', () => token(sub, { ttl: ttl(n++) }));
    await page.goto(`${appOrigin}/`);
    await page.waitForFunction(() => window.ready === true, null, WAIT);
    page.tokenCalls = () => n;
    return page;
  }
  const connected = (page, count = 1) =>
    page.waitForFunction((c) => window.events.filter((e) => e.event === 'connected').length >= c, count, WAIT);
  const pub = (body, base = server.http) => broadcast({ url: base, apiKey: API_KEY, ...body });

  test('two pages receive a broadcast to everyone', async () => {
    const pages = [await appPage('b1'), await appPage('b2')];
    try {
      for (const p of pages) {
        await p.evaluate((url) => window.start(url), server.ws);
        await connected(p);
      }
      const answer = await pub({ type: 'task_created', data: { id: 'x1', title: 'From a Server Action' } });
      assert.equal(answer.recipients, 2);
      for (const p of pages) {
        await p.waitForFunction(() => window.received.length === 1, null, WAIT);
        assert.deepEqual(await p.evaluate(() => window.received), [
          { type: 'task_created', payload: { id: 'x1', title: 'From a Server Action' } },
        ]);
      }
    } finally {
      await Promise.all(pages.map((p) => p.close()));
    }
  });

  test("the page's socket is cut: it reconnects by itself and receives again", async () => {
    const proxy = await startProxy(server.port);
    const page = await appPage('b-cut');
    try {
      await page.evaluate((url) => window.start(url), proxy.ws);
      await connected(page);
      proxy.cut();
      await connected(page, 2);
      const codes = await page.evaluate(() => window.events.filter((e) => e.event === 'disconnected').map((e) => e.code));
      assert.deepEqual(codes, [1006]);
      assert.equal(page.tokenCalls(), 2, 'a fresh token for the new connection');
      await pub({ type: 'after_cut', data: 1 });
      await page.waitForFunction(() => window.received.length === 1, null, WAIT);
    } finally {
      await page.close();
      await proxy.close();
    }
  });

  test('a token that expires during the test is refreshed in band, without a reconnect', async () => {
    // The first token is 28 s past exp: inside the server's 30 s leeway, so
    // it connects, and the server would close it with 4001 about 2 s later.
    const page = await appPage('b-refresh', (n) => (n === 0 ? -28 : 3600));
    try {
      await page.evaluate((url) => window.start(url), server.ws);
      await connected(page);
      await page.waitForFunction(() => window.events.some((e) => e.event === 'refreshed'), null, WAIT);
      // Past the first token's deadline, with margin.
      await new Promise((resolve) => setTimeout(resolve, 3500));
      await pub({ type: 'still_connected', data: 1 });
      await page.waitForFunction(() => window.received.length === 1, null, WAIT);
      const events = await page.evaluate(() => window.events.map((e) => e.event));
      assert.deepEqual(events, ['connecting', 'connected', 'refreshed']);
    } finally {
      await page.close();
    }
  });

  test('the demo page is not served in production mode', async () => {
    const res = await fetch(`${server.http}/`);
    assert.equal(res.status, 404);
  });

  test('demo page: a task added in its form appears in another tab; screenshot kept', async () => {
    const dev = await startServer({ JWT_SECRET: undefined });
    const printed = /TOKEN=(\S+)/.exec(dev.stdout())?.[1] ?? (await until(() => /TOKEN=(\S+)/.exec(dev.stdout())?.[1], 'the printed token'));
    assert.ok(dev.stdout().includes(`http://localhost:${dev.port}/#token=${printed}`), 'start-up output links the demo page');
    // One tab with the token written into the page, one with the printed link.
    const first = await context.newPage();
    const second = await context.newPage();
    const problems = [];
    for (const p of [first, second]) {
      p.on('pageerror', (e) => problems.push(String(e)));
      p.on('console', (m) => m.type() === 'error' && problems.push(m.text()));
    }
    try {
      await first.goto(`http://127.0.0.1:${dev.port}/`);
      await second.goto(`http://localhost:${dev.port}/#token=${printed}`);
      for (const p of [first, second]) await p.waitForSelector('#status[data-state="connected"]', WAIT);
      const title = `Ship the demo ${Date.now()}`;
      await first.fill('#title', title);
      await first.click('#add button[type=submit]');
      for (const p of [first, second]) {
        await p.waitForFunction((t) => [...document.querySelectorAll('#tasks li span')].some((s) => s.textContent === t), title, WAIT);
      }
      // Ticking it in the other tab updates the first.
      await second.click('#tasks li input[type=checkbox]');
      await first.waitForSelector('#tasks li.done', WAIT);
      mkdirSync(ARTIFACTS, { recursive: true });
      await first.screenshot({ path: path.join(ARTIFACTS, 'demo.png'), fullPage: true });
      assert.deepEqual(problems, []);
    } finally {
      await first.close();
      await second.close();
      await dev.stop();
    }
  });

  // ---------------------------------------------------------------- channels

  const channelTest = (name, fn) => test(name, async (t) => {
    if (!channels) return t.skip('server does not support channels yet (no "subscribed" answer)');
    await fn(t);
  });

  channelTest('channels: an offline page gets exactly the missed messages, in order, after it reconnects', async () => {
    const proxy = await startProxy(server.port);
    const page = await appPage('b-recover');
    try {
      await page.evaluate((url) => {
        window.start(url);
        window.subscribe('project:browser-recover');
      }, proxy.ws);
      await page.waitForFunction(() => window.events.some((e) => e.event === 'subscribed'), null, WAIT);
      await pub({ type: 'm', data: 1, channel: 'project:browser-recover' });
      await page.waitForFunction(() => window.channelMsgs.length === 1, null, WAIT);
      proxy.hold();
      proxy.cut();
      await page.waitForFunction(() => window.events.some((e) => e.event === 'disconnected'), null, WAIT);
      for (let i = 2; i <= 4; i++) await pub({ type: 'm', data: i, channel: 'project:browser-recover' });
      proxy.release();
      await page.waitForFunction(() => window.events.filter((e) => e.event === 'subscribed').length === 2, null, WAIT);
      await pub({ type: 'm', data: 5, channel: 'project:browser-recover' });
      await page.waitForFunction(() => window.channelMsgs.length >= 5, null, WAIT);
      assert.deepEqual(await page.evaluate(() => window.channelMsgs), [1, 2, 3, 4, 5]);
      assert.deepEqual(await page.evaluate(() => window.resyncs), []);
      assert.deepEqual(await page.evaluate(() => window.events.filter((e) => e.event === 'subscribed').map((e) => e.recovered)), [false, true]);
    } finally {
      await page.close();
      await proxy.close();
    }
  });

  channelTest('channels: after a restart that loses history, the page gets onResync', async () => {
    const first = await startServer({ BROADCAST_API_KEY: API_KEY, ALLOWED_ORIGINS: appOrigin, SHUTDOWN_GRACE_SECS: '1' });
    const proxy = await startProxy(first.port);
    const page = await appPage('b-resync');
    let second;
    try {
      await page.evaluate((url) => {
        window.start(url);
        window.subscribe('project:browser-resync');
      }, proxy.ws);
      await page.waitForFunction(() => window.events.some((e) => e.event === 'subscribed'), null, WAIT);
      await pub({ type: 'm', data: 'before', channel: 'project:browser-resync' }, first.http);
      await page.waitForFunction(() => window.channelMsgs.length === 1, null, WAIT);
      await first.stop();
      second = await startServer({ BROADCAST_API_KEY: API_KEY, ALLOWED_ORIGINS: appOrigin });
      proxy.retarget(second.port);
      await page.waitForFunction(() => window.resyncs.length === 1, null, WAIT);
      assert.deepEqual(await page.evaluate(() => window.resyncs), ['not_recovered']);
      await pub({ type: 'm', data: 'after', channel: 'project:browser-resync' }, second.http);
      await page.waitForFunction(() => window.channelMsgs.at(-1) === 'after', null, WAIT);
    } finally {
      await page.close();
      await proxy.close();
      await second?.stop();
    }
  });
});
