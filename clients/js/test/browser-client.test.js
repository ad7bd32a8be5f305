// The browser client in Debian's chromium against the real taskcast
// binary: in-band authentication and the refusals the app hears (with the
// server's reason, and no retry loop), no token in any console line or URL,
// reconnect on the browser's `online` event, shared subscriptions, refused
// channels retried under a newer token, the server ending a subscription.
// The page is served from its own origin, as a Next.js app would be, and
// loads src/index.js as is.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { broadcast } from '../src/server.js';
import { CHROMIUM, SECRET, launchChromium, nowSecs, serveRoutes, sign, startProxy, startServer, token } from './helpers.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const CLIENT_JS = readFileSync(path.join(here, '..', 'src', 'index.js'));
const API_KEY = 'publisher-key-for-the-browser-client-tests';
const ISSUER = 'https://app.test';
const WAIT = { timeout: 10_000 };

const PAGE = `<!doctype html><meta charset="utf-8"><title>client</title>
<script type="module">
import { connect } from '/taskcast-client.js';
window.ev = []; window.msgs = []; window.resyncs = []; window.subErrors = []; window.subs = {};
window.start = (url, flags = {}) => {
  const c = connect({
    url,
    getToken: () => window.getToken(),
    getSubscriptionToken: flags.subTokens ? (channel) => window.getSubscriptionToken(channel) : undefined,
    backoff: flags.slowBackoff ? { baseMs: 20000, maxMs: 20000 } : { baseMs: 50, maxMs: 400 },
    random: flags.slowBackoff ? () => 0.99 : Math.random,
    restartJitterMs: 100,
    debug: flags.debug === true,
  });
  if (!flags.quiet) {
    for (const e of ['connecting', 'connected', 'disconnected', 'refreshed', 'error', 'closed'])
      c.on(e, (v) => window.ev.push({ event: e, code: v && v.code, closeCode: v && v.closeCode,
        closeReason: v && v.closeReason, message: v && v.message, reason: v && v.reason }));
  }
  window.client = c;
};
window.sub = (channel, tag) => {
  window.subs[tag] = window.client.subscribe(channel, {
    onMessage: (m) => window.msgs.push({ tag, channel: m.channel, offset: m.offset, payload: m.payload }),
    onResync: (r) => window.resyncs.push({ tag, reason: r.reason }),
    onError: (e) => window.subErrors.push({ tag, code: e.code, reason: e.reason }),
  });
};
window.count = (event) => window.ev.filter((e) => e.event === event).length;
window.ready = true;
</script>`;

const hs = (claims, secret = SECRET) => sign(claims, secret);
/** A user token from the issuer the server trusts. */
const userToken = (sub, extra = {}) => token(sub, { iss: ISSUER, ...extra });

describe('browser client in chromium', { skip: existsSync(CHROMIUM) ? false : `${CHROMIUM} is missing` }, () => {
  let context;
  let app;
  let server;

  before(async () => {
    app = await serveRoutes({
      '/': { type: 'text/html', body: PAGE },
      '/taskcast-client.js': { type: 'text/javascript', body: CLIENT_JS },
    });
    context = await launchChromium();
    server = await startServer({ BROADCAST_API_KEY: API_KEY, ALLOWED_ORIGINS: app.origin, JWT_ISSUER: ISSUER });
  });

  after(async () => {
    await context?.close();
    await server?.stop();
    app?.close();
  });

  /**
   * A new page. `tokens()` answers its getToken (change `page.tokens` to
   * hand out others); its sockets' URLs and frames, and every console
   * line, are recorded.
   */
  async function appPage(tokens) {
    const page = await context.newPage();
    page.tokens = tokens;
    page.subTokens = () => null;
    page.sockets = [];
    page.sent = [];
    page.consoleLines = [];
    page.on('console', (m) => page.consoleLines.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => page.consoleLines.push(`pageerror: ${e}`));
    page.on('websocket', (ws) => {
      page.sockets.push(ws.url());
      ws.on('framesent', (f) => page.sent.push(JSON.parse(f.payload)));
    });
    await page.exposeFunction('getToken', () => page.tokens());
    await page.exposeFunction('getSubscriptionToken', (channel) => page.subTokens(channel));
    await page.goto(`${app.origin}/`);
    await page.waitForFunction(() => window.ready === true, null, WAIT);
    return page;
  }
  const waitEvent = (page, event, n = 1) => page.waitForFunction(([e, n]) => window.count(e) >= n, [event, n], WAIT);
  const pub = (body, base = server.http) => broadcast({ url: base, apiKey: API_KEY, ...body });
  const subscribes = (page, channel) => page.sent.filter((m) => m.type === 'subscribe' && m.channel === channel);

  test('in-band authentication: the token is in no URL and in no console line, with debug on', async () => {
    const secret = userToken('console-check');
    const page = await appPage(() => secret);
    try {
      await page.evaluate((url) => window.start(url, { debug: true }), server.ws);
      await waitEvent(page, 'connected');
      await page.evaluate(() => window.sub('project:console', 'a'));
      await page.waitForFunction(() => window.subs.a.state === 'subscribed', null, WAIT);
      await pub({ type: 't', data: 1, channel: 'project:console' });
      await page.waitForFunction(() => window.msgs.length === 1, null, WAIT);
      assert.equal(page.sockets.length, 1);
      assert.equal(new URL(page.sockets[0]).search, '?auth=message');
      assert.deepEqual(page.sent[0], { type: 'auth', token: secret }, 'the token travels in the first message');
      assert.ok(page.consoleLines.some((l) => l.includes('subscribe project:console')), 'debug lines were printed');
      for (const line of page.consoleLines) {
        assert.ok(!line.includes(secret) && !line.includes(secret.split('.')[1]), `token in console: ${line}`);
      }
    } finally {
      await page.close();
    }
  });

  test('refusals reach the app as an error naming the reason, once: no reconnect loop, and no token printed', async () => {
    const other = await startServer({ ALLOWED_ORIGINS: 'https://elsewhere.example', JWT_ISSUER: ISSUER });
    const now = nowSecs();
    const cases = [
      ['bad signature', server.ws, hs({ sub: 'x', iss: ISSUER, iat: now, exp: now + 600 }, 'another-secret-0123456789abcdef'), 'token signature is invalid'],
      ['wrong issuer', server.ws, token('x', { iss: 'https://evil.test' }), 'token issuer is not accepted'],
      ['origin not allowed', other.ws, userToken('x'), 'origin not allowed'],
    ];
    try {
      for (const [what, url, tok, reason] of cases) {
        const page = await appPage(() => tok);
        try {
          await page.evaluate((url) => window.start(url), url);
          await waitEvent(page, 'error');
          const err = await page.evaluate(() => window.ev.find((e) => e.event === 'error'));
          assert.equal(err.code, 'auth_failed', what);
          assert.equal(err.closeCode, 4003, what);
          assert.equal(err.closeReason, reason, what);
          assert.ok(err.message.includes(reason), `${what}: ${err.message}`);
          assert.equal(await page.evaluate(() => window.client.state), 'error', what);
          assert.equal(await page.evaluate(() => window.client.lastError.closeReason), reason, what);
          // Longer than any backoff window here (maxMs 400): no second attempt.
          await new Promise((r) => setTimeout(r, 1000));
          assert.equal(page.sockets.length, 1, `${what}: one connection attempt`);
          assert.deepEqual(await page.evaluate(() => window.ev.map((e) => e.event)), ['connecting', 'disconnected', 'error'], what);
        } finally {
          await page.close();
        }
      }
      // With no error listener the client warns on the console: the reason, never the token.
      const tok = token('x', { iss: 'https://evil.test' });
      const page = await appPage(() => tok);
      try {
        await page.evaluate((url) => window.start(url, { quiet: true, debug: true }), server.ws);
        await page.waitForFunction(() => window.client.state === 'error', null, WAIT);
        await page.waitForTimeout(200);
        assert.ok(page.consoleLines.some((l) => l.startsWith('warning:') && l.includes('token issuer is not accepted')), page.consoleLines.join('\n'));
        for (const line of page.consoleLines) assert.ok(!line.includes(tok.split('.')[1]), `token in console: ${line}`);
      } finally {
        await page.close();
      }
    } finally {
      await other.stop();
    }
  });

  test("the browser's online event reconnects at once instead of waiting for the backoff", async () => {
    const proxy = await startProxy(server.port);
    const page = await appPage(() => userToken('online'));
    try {
      // Backoff of ~20 s: only the online event can bring it back within the wait.
      await page.evaluate((url) => window.start(url, { slowBackoff: true }), proxy.ws);
      await waitEvent(page, 'connected');
      proxy.cut();
      await waitEvent(page, 'disconnected');
      const delay = await page.evaluate(() => window.ev.find((e) => e.event === 'disconnected'));
      assert.equal(delay.code, 1006);
      const started = Date.now();
      await context.setOffline(true);
      await context.setOffline(false); // chromium fires 'online'
      await waitEvent(page, 'connected', 2);
      assert.ok(Date.now() - started < 5000, `reconnected after ${Date.now() - started} ms`);
    } finally {
      await context.setOffline(false);
      await page.close();
      await proxy.close();
    }
  });

  test('two subscribes to one channel share one server subscription; it is left when the last one goes', async () => {
    const page = await appPage(() => userToken('shared'));
    const channel = 'project:shared-plain';
    try {
      await page.evaluate((url) => window.start(url), server.ws);
      await waitEvent(page, 'connected');
      await page.evaluate((c) => {
        window.sub(c, 'a');
        window.sub(c, 'b');
      }, channel);
      await page.waitForFunction(() => window.subs.a.state === 'subscribed' && window.subs.b.state === 'subscribed', null, WAIT);
      await pub({ type: 't', data: 1, channel });
      await page.waitForFunction(() => window.msgs.length === 2, null, WAIT);
      assert.deepEqual(await page.evaluate(() => window.msgs.map((m) => [m.tag, m.offset, m.payload])), [['a', 1, 1], ['b', 1, 1]]);
      await page.evaluate(() => window.subs.a.unsubscribe());
      await pub({ type: 't', data: 2, channel });
      await page.waitForFunction(() => window.msgs.length === 3, null, WAIT);
      assert.deepEqual(await page.evaluate(() => window.msgs[2].tag), 'b');
      assert.equal(page.sent.filter((m) => m.type === 'unsubscribe').length, 0);
      await page.evaluate(() => window.subs.b.unsubscribe());
      await waitUntil(() => page.sent.some((m) => m.type === 'unsubscribe'));
      assert.equal(subscribes(page, channel).length, 1);
      assert.deepEqual(page.sent.filter((m) => m.type === 'unsubscribe').map((m) => m.channel), [channel]);
    } finally {
      await page.close();
    }
  });

  test('forbidden, not asked again on a reconnect with the same token, granted after refreshToken()', async () => {
    const proxy = await startProxy(server.port);
    const withoutGrant = userToken('late-member', { channels: [] });
    const page = await appPage(() => withoutGrant);
    const channel = 'project:granted-later';
    try {
      await page.evaluate((url) => window.start(url), proxy.ws);
      await waitEvent(page, 'connected');
      await page.evaluate((c) => window.sub(c, 'a'), channel);
      await page.waitForFunction(() => window.subErrors.length === 1, null, WAIT);
      assert.deepEqual(await page.evaluate(() => window.subErrors), [{ tag: 'a', code: 'forbidden', reason: undefined }]);
      assert.equal(await page.evaluate(() => window.subs.a.state), 'refused');
      // A reconnect with the same token: the same answer, so not asked again.
      proxy.cut();
      await waitEvent(page, 'connected', 2);
      await page.waitForTimeout(300);
      assert.equal(subscribes(page, channel).length, 1);
      // The app added the member: a token with the grant.
      page.tokens = () => userToken('late-member', { channels: ['project:*'], iat: nowSecs() + 1 });
      await page.evaluate(() => window.client.refreshToken());
      await page.waitForFunction(() => window.subs.a.state === 'subscribed', null, WAIT);
      assert.deepEqual(await page.evaluate(() => window.resyncs), [{ tag: 'a', reason: 'granted' }]);
      await pub({ type: 't', data: 'welcome', channel });
      await page.waitForFunction(() => window.msgs.length === 1, null, WAIT);
      assert.equal(subscribes(page, channel).length, 2);
    } finally {
      await page.close();
      await proxy.close();
    }
  });

  test('forbidden by the connection token: retried with getSubscriptionToken(channel)', async () => {
    const page = await appPage(() => userToken('guest', { channels: [] }));
    page.subTokens = (channel) => hs({ sub: 'guest', channel, iat: nowSecs(), exp: nowSecs() + 600, iss: ISSUER });
    const channel = 'board:shared-with-guest';
    try {
      await page.evaluate((url) => window.start(url, { subTokens: true }), server.ws);
      await waitEvent(page, 'connected');
      await page.evaluate((c) => window.sub(c, 'a'), channel);
      await page.waitForFunction(() => window.subs.a.state === 'subscribed', null, WAIT);
      const sent = subscribes(page, channel);
      assert.equal(sent.length, 2);
      assert.equal(sent[0].token, undefined, 'first with the connection token');
      assert.equal(typeof sent[1].token, 'string', 'then with a subscription token');
      assert.deepEqual(await page.evaluate(() => window.subErrors), [], 'the first refusal is not reported: it was recovered');
      await pub({ type: 't', data: 1, channel });
      await page.waitForFunction(() => window.msgs.length === 1, null, WAIT);
    } finally {
      await page.close();
    }
  });

  test('a subscription token that expires is renewed with a fresh one: nothing is missed, the app hears nothing', async () => {
    // No leeway: the server ends the join at the token's exp.
    const strict = await startServer({ BROADCAST_API_KEY: API_KEY, ALLOWED_ORIGINS: app.origin, JWT_ISSUER: ISSUER, JWT_LEEWAY_SECS: '0' });
    const page = await appPage(() => userToken('guest2', { channels: [] }));
    let minted = 0;
    page.subTokens = (channel) => {
      minted += 1;
      return hs({ sub: 'guest2', channel, iat: nowSecs(), exp: nowSecs() + 2, iss: ISSUER });
    };
    const channel = 'board:short-lived';
    try {
      await page.evaluate((url) => window.start(url, { subTokens: true }), strict.ws);
      await waitEvent(page, 'connected');
      await page.evaluate((c) => window.sub(c, 'a'), channel);
      await page.waitForFunction(() => window.subs.a.state === 'subscribed', null, WAIT);
      // Publish across two expiries, one message every 250 ms.
      for (let i = 1; i <= 20; i++) {
        await pub({ type: 't', data: i, channel }, strict.http);
        await new Promise((r) => setTimeout(r, 250));
      }
      await page.waitForFunction(() => window.msgs.length >= 20, null, WAIT);
      const got = await page.evaluate(() => window.msgs.map((m) => m.payload));
      assert.deepEqual(got, Array.from({ length: 20 }, (_, i) => i + 1), 'every message once, in order');
      assert.ok(minted >= 2, `renewed (${minted} subscription tokens minted)`);
      assert.deepEqual(await page.evaluate(() => window.subErrors), [], 'the renewal is silent');
    } finally {
      await page.close();
      await strict.stop();
    }
  });

  test('the server ends a subscription (a refresh without the grant): the app hears why; a later grant brings it back', async () => {
    const page = await appPage(() => userToken('removed', { channels: ['project:*'] }));
    const channel = 'project:removal';
    try {
      await page.evaluate((url) => window.start(url), server.ws);
      await waitEvent(page, 'connected');
      await page.evaluate((c) => window.sub(c, 'a'), channel);
      await page.waitForFunction(() => window.subs.a.state === 'subscribed', null, WAIT);
      page.tokens = () => userToken('removed', { channels: [], iat: nowSecs() + 1 });
      await page.evaluate(() => window.client.refreshToken());
      await page.waitForFunction(() => window.subErrors.length === 1, null, WAIT);
      assert.deepEqual(await page.evaluate(() => window.subErrors), [{ tag: 'a', code: 'unsubscribed', reason: 'grant revoked' }]);
      const appError = await page.evaluate(() => window.ev.find((e) => e.event === 'error'));
      assert.equal(appError.code, 'unsubscribed');
      await pub({ type: 't', data: 'not for you', channel });
      page.tokens = () => userToken('removed', { channels: ['project:*'], iat: nowSecs() + 2 });
      await page.evaluate(() => window.client.refreshToken());
      await page.waitForFunction(() => window.subs.a.state === 'subscribed', null, WAIT);
      await pub({ type: 't', data: 'back', channel });
      await page.waitForFunction(() => window.msgs.some((m) => m.payload === 'back'), null, WAIT);
    } finally {
      await page.close();
    }
  });

  // POST /api/disconnect comes with the control API (issue 19): these run
  // once the server has it.
  for (const [reconnect, code] of [[false, 4009], [true, 4011]]) {
    test(`close ${code} from POST /api/disconnect (reconnect: ${reconnect})`, async (t) => {
      const sub = `disc-${code}`;
      const page = await appPage(() => userToken(sub));
      try {
        await page.evaluate((url) => window.start(url), server.ws);
        await waitEvent(page, 'connected');
        const res = await fetch(`${server.http}/api/disconnect`, {
          method: 'POST',
          headers: { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json' },
          body: JSON.stringify({ user: sub, reconnect, reason: 'test' }),
        });
        if (res.status === 404) return t.skip('this server has no POST /api/disconnect yet');
        assert.equal(res.status, 200, await res.text());
        await waitEvent(page, 'disconnected');
        const closed = await page.evaluate(() => window.ev.find((e) => e.event === 'disconnected'));
        assert.equal(closed.code, code);
        if (reconnect) {
          await waitEvent(page, 'connected', 2);
          assert.equal(page.sockets.length, 2);
        } else {
          await page.waitForFunction(() => window.client.state === 'error', null, WAIT);
          assert.equal(await page.evaluate(() => window.client.lastError.code), 'disconnected');
          await page.waitForTimeout(1000);
          assert.equal(page.sockets.length, 1, 'no reconnect after 4009');
        }
      } finally {
        await page.close();
      }
    });
  }
});

/** Polls `cond` every 20 ms for up to 10 s. */
async function waitUntil(cond, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${ms} ms: ${cond}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
