// taskcast-client/server against real servers: the default timeout against
// a server that accepts and never answers, tryBroadcast() never throwing,
// the environment names, a subscription token minted by a real BetterAuth
// (jwt plugin, memory adapter) and checked by taskcast through its JWKS,
// and a subscribe from a server-rendered position.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { WebSocket } from 'ws';

import { connect } from '../src/index.js';
import { BroadcastError, DEFAULT_TIMEOUT_MS, broadcast, mintSubscriptionToken, tryBroadcast } from '../src/server.js';
import { nextEvent, startServer, token, until } from './helpers.js';

const API_KEY = 'publisher-key-for-the-helper-tests-01234';

/** A TCP server that accepts connections and never answers (a hung taskcast). */
async function silentServer() {
  const sockets = new Set();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => {});
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise((r) => server.close(r));
    },
  };
}

/** A port nothing listens on. */
async function closedPort() {
  const s = net.createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

test('broadcast: a taskcast that never answers costs at most the timeout (default 2 s), as a BroadcastError', async () => {
  assert.equal(DEFAULT_TIMEOUT_MS, 2000);
  const hung = await silentServer();
  try {
    const started = Date.now();
    await assert.rejects(broadcast({ url: hung.url, apiKey: API_KEY, type: 't', data: 1 }), (e) => {
      assert.ok(e instanceof BroadcastError);
      assert.equal(e.code, 'timeout');
      assert.equal(e.status, 0);
      assert.ok(e.message.includes('2000 ms') && !e.message.includes(API_KEY), e.message);
      return true;
    });
    const took = Date.now() - started;
    assert.ok(took >= 1900 && took < 6000, `gave up after ${took} ms`);
    const quick = await tryBroadcast({ url: hung.url, apiKey: API_KEY, type: 't', timeoutMs: 200 });
    assert.equal(quick.ok, false);
    assert.equal(quick.error.code, 'timeout');
  } finally {
    await hung.close();
  }
});

test('tryBroadcast never throws: no server, bad arguments, a refusal, and success', async () => {
  const down = await tryBroadcast({ url: `http://127.0.0.1:${await closedPort()}`, apiKey: API_KEY, type: 't' });
  assert.equal(down.ok, false);
  assert.equal(down.error.code, 'unreachable');
  assert.match(down.error.message, /cannot reach taskcast at http:\/\/127\.0\.0\.1:\d+: ECONNREFUSED/);
  const bad = await tryBroadcast({ url: 'http://127.0.0.1:1', apiKey: API_KEY, type: '' });
  assert.deepEqual([bad.ok, bad.error.code], [false, 'bad_arguments']);
  const server = await startServer({ BROADCAST_API_KEY: API_KEY });
  try {
    const refused = await tryBroadcast({ url: server.http, apiKey: 'wrong-key-wrong-key', type: 't' });
    assert.deepEqual([refused.ok, refused.error.status, refused.error.code], [false, 401, 'unauthorized']);
    const done = await tryBroadcast({ url: server.http, apiKey: API_KEY, type: 't', data: 1 });
    assert.deepEqual(done, { ok: true, answer: { status: 'ok', recipients: 0 } });
  } finally {
    await server.stop();
  }
});

test('broadcast reads TASKCAST_URL and BROADCAST_API_KEY, the server\'s own name for the key', async () => {
  const server = await startServer({ BROADCAST_API_KEY: API_KEY });
  const saved = { url: process.env.TASKCAST_URL, key: process.env.BROADCAST_API_KEY };
  try {
    process.env.TASKCAST_URL = server.http;
    process.env.BROADCAST_API_KEY = API_KEY;
    assert.deepEqual(await broadcast({ type: 't', data: 1 }), { status: 'ok', recipients: 0 });
    delete process.env.BROADCAST_API_KEY;
    await assert.rejects(broadcast({ type: 't' }), { code: 'bad_arguments', message: /set BROADCAST_API_KEY/ });
  } finally {
    for (const [k, v] of [['TASKCAST_URL', saved.url], ['BROADCAST_API_KEY', saved.key]]) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    await server.stop();
  }
});

describe('with BetterAuth signing (jwt plugin) and taskcast checking its JWKS', () => {
  let auth;
  let server;

  before(async () => {
    const { betterAuth } = await import('better-auth');
    const { jwt } = await import('better-auth/plugins');
    const { memoryAdapter } = await import('better-auth/adapters/memory');
    auth = betterAuth({
      baseURL: 'http://127.0.0.1:3000',
      secret: 'better-auth-secret-for-the-taskcast-tests-0123',
      database: memoryAdapter({ user: [], session: [], account: [], verification: [], jwks: [] }),
      plugins: [jwt()],
      logger: { disabled: true },
    });
    // Creates BetterAuth's key pair; taskcast reads the public half.
    await auth.api.signJWT({ body: { payload: { sub: 'warm-up' } } });
    const dir = mkdtempSync(path.join(tmpdir(), 'taskcast-jwks-'));
    const file = path.join(dir, 'jwks.json');
    writeFileSync(file, JSON.stringify(await auth.api.getJwks()));
    server = await startServer({
      BROADCAST_API_KEY: API_KEY,
      JWT_SECRET: undefined,
      JWKS_FILE: file,
      JWT_ISSUER: 'http://127.0.0.1:3000',
      JWT_AUDIENCE: 'http://127.0.0.1:3000',
      ALLOWED_ORIGINS: 'http://127.0.0.1:3000',
    });
  });
  after(() => server?.stop());

  /** A connection token from BetterAuth, granting no channel. */
  const connectionToken = async (sub) => (await auth.api.signJWT({ body: { payload: { sub } } })).token;

  test('mintSubscriptionToken: BetterAuth signs it, taskcast accepts it for its channel only', async () => {
    const minted = await mintSubscriptionToken({ auth, userId: 'member-1', channel: 'project:ba', expiresIn: 120 });
    const claims = JSON.parse(Buffer.from(minted.split('.')[1], 'base64url').toString());
    assert.equal(claims.sub, 'member-1');
    assert.equal(claims.channel, 'project:ba');
    assert.equal(claims.exp - claims.iat, 120);
    assert.equal(JSON.parse(Buffer.from(minted.split('.')[0], 'base64url').toString()).alg, 'EdDSA');

    const got = [];
    const c = connect({
      url: server.ws,
      WebSocket,
      getToken: () => connectionToken('member-1'),
      getSubscriptionToken: (channel) => mintSubscriptionToken({ auth, userId: 'member-1', channel }),
    });
    const errors = [];
    c.on('error', (e) => errors.push(e.code));
    try {
      await nextEvent(c, 'connected');
      const sub = c.subscribe('project:ba', { onMessage: (m) => got.push(m.payload) });
      await until(() => sub.state === 'subscribed', 'subscribed with the minted token');
      await broadcast({ url: server.http, apiKey: API_KEY, channel: 'project:ba', type: 't', data: 'hello' });
      await until(() => got.length === 1, 'the message');
      assert.deepEqual(got, ['hello']);
      assert.deepEqual(errors, []);
      // The token is for its channel: another channel with it is refused.
      const other = c.subscribe('project:other', { token: minted });
      await until(() => other.state === 'refused', 'refused');
    } finally {
      c.close();
    }
    await assert.rejects(mintSubscriptionToken({ auth: {}, userId: 'u', channel: 'project:1' }), /jwt\(\) plugin/);
    await assert.rejects(mintSubscriptionToken({ auth, userId: 'u', channel: 'no colon' }), /invalid channel/);
  });
});

test('subscribe from a server-rendered position: exactly the messages after it, recovered, no resync', async () => {
  const server = await startServer({ BROADCAST_API_KEY: API_KEY });
  const channel = 'project:rendered';
  const pub = (data) => broadcast({ url: server.http, apiKey: API_KEY, channel, type: 't', data });
  const clients = [];
  const open = (sub) => {
    const c = connect({ url: server.ws, WebSocket, getToken: () => token(sub) });
    clients.push(c);
    return c;
  };
  try {
    // The epoch comes from any subscriber (the position API gives it too).
    const first = open('renderer');
    const watcher = first.subscribe(channel, {});
    await until(() => watcher.state === 'subscribed', 'first subscribed');
    const answer = await pub(1);
    // "Rendered" here: the page shows the state as of offset 1.
    const rendered = { epoch: watcher.epoch, offset: answer.channels[channel].offset };
    await pub(2);
    await pub(3);
    const got = [];
    const resyncs = [];
    const infos = [];
    const page = open('viewer');
    page.subscribe(channel, {
      since: rendered,
      onMessage: (m) => got.push([m.offset, m.payload]),
      onResync: (r) => resyncs.push(r.reason),
      onSubscribed: (i) => infos.push(i.recovered),
    });
    await until(() => got.length === 2, 'the two messages after the render');
    await pub(4);
    await until(() => got.length === 3, 'live after the replay');
    assert.deepEqual(got, [[2, 2], [3, 3], [4, 4]]);
    assert.deepEqual(resyncs, []);
    assert.deepEqual(infos, [true]);
    // A position from another epoch (a restart lost the history): refetch.
    const stale = [];
    page.subscribe('project:elsewhere', { since: { epoch: 'not-this-epoch', offset: 5 }, onResync: (r) => stale.push(r.reason) });
    await until(() => stale.length === 1, 'the resync');
    assert.deepEqual(stale, ['not_recovered']);
    assert.throws(() => page.subscribe(channel, { since: { epoch: 'e', offset: -1 } }), /since must be/);
  } finally {
    for (const c of clients) c.close();
    await server.stop();
  }
});
