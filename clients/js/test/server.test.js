// The client against the real taskcast binary (target/release/taskcast):
// real sockets, real signed tokens, a real TCP proxy to cut connections.
// Channel tests skip themselves when the server does not answer a
// subscribe with `subscribed` (a build from before channels).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { WebSocket } from 'ws';

import { connect } from '../src/index.js';
import { BroadcastError, broadcast } from '../src/server.js';
import { channelsSupported, nextEvent, record, startProxy, startServer, token, until } from './helpers.js';

const API_KEY = 'publisher-key-for-the-js-tests-0123456789';

/** A client with test-friendly timings; `tokens` is called for each getToken. */
function client(url, tokens, extra = {}) {
  const calls = { n: 0 };
  const c = connect({
    url,
    WebSocket,
    getToken: async () => tokens(calls.n++),
    backoff: { baseMs: 50, maxMs: 400 },
    restartJitterMs: 100,
    ...extra,
  });
  c.calls = calls;
  return c;
}

describe('against taskcast', () => {
  let server;
  let channels = false;
  before(async () => {
    server = await startServer({ BROADCAST_API_KEY: API_KEY });
    channels = await channelsSupported(server);
  });
  after(() => server.stop());
  const pub = (body) => broadcast({ url: server.http, apiKey: API_KEY, ...body });

  test('two clients connect and each receives a broadcast to everyone once', async () => {
    const got = [[], []];
    const clients = [0, 1].map((i) => client(server.ws, () => token(`u${i}`), { onBroadcast: (m) => got[i].push(m) }));
    try {
      await Promise.all(clients.map((c) => (c.state === 'open' ? null : nextEvent(c, 'connected'))));
      const answer = await pub({ type: 'task_created', data: { id: 't1', title: 'Write tests' } });
      assert.equal(answer.status, 'ok');
      assert.equal(answer.recipients, 2);
      await until(() => got[0].length && got[1].length, 'both broadcasts');
      // A round trip on each socket after the broadcast: nothing else came.
      for (const c of clients) assert.equal(c.state, 'open');
      assert.deepEqual(got, [0, 1].map(() => [{ type: 'task_created', payload: { id: 't1', title: 'Write tests' } }]));
    } finally {
      clients.forEach((c) => c.close());
    }
  });

  test('broadcast helper: non-2xx answers throw with the server message and status', async () => {
    await assert.rejects(broadcast({ url: server.http, apiKey: 'wrong-key', type: 't', data: 1 }), (e) => {
      assert.ok(e instanceof BroadcastError);
      assert.equal(e.status, 401);
      assert.equal(e.code, 'unauthorized');
      assert.equal(e.message, 'invalid API key');
      return true;
    });
    await assert.rejects(broadcast({ url: server.http, apiKey: token('user-not-publisher'), type: 't', data: 1 }), {
      status: 403,
      message: 'user tokens cannot broadcast: use the publisher API key',
    });
    await assert.rejects(pub({ type: 'has spaces', data: 1 }), (e) => e.status === 400 && /"type" must be/.test(e.message));
  });

  test('the network drops: the client reconnects by itself and receives again', async () => {
    const proxy = await startProxy(server.port);
    const got = [];
    const c = client(proxy.ws, () => token('cut'), { onBroadcast: (m) => got.push(m) });
    try {
      await nextEvent(c, 'connected');
      const down = nextEvent(c, 'disconnected');
      const back = nextEvent(c, 'connected', { ms: 5000 });
      proxy.cut();
      const d = await down;
      assert.equal(d.code, 1006);
      assert.ok(d.willReconnect && d.delayMs >= 0 && d.delayMs <= 50, `first retry inside [0, base]: ${d.delayMs}`);
      await back;
      assert.equal(c.calls.n, 2, 'a token per connection');
      await pub({ type: 'after_cut', data: 1 });
      await until(() => got.length === 1, 'the broadcast after the reconnect');
    } finally {
      c.close();
      await proxy.close();
    }
  });

  test('token expiry without refresh: close 4001, a new token, connected again', async () => {
    // exp 28 s ago: still inside the server's 30 s leeway, so the server
    // accepts it and closes with 4001 about 2 s later.
    const c = client(server.ws, (n) => token('exp', { ttl: n === 0 ? -28 : 3600 }), { refreshBeforeMs: false });
    const log = record(c);
    try {
      await nextEvent(c, 'connected');
      const d = await nextEvent(c, 'disconnected', { ms: 6000 });
      assert.equal(d.code, 4001);
      assert.equal(d.delayMs, 0, 'the first expiry reconnects at once');
      await nextEvent(c, 'connected');
      assert.equal(c.calls.n, 2);
      assert.deepEqual(log.map((e) => e.event), ['connecting', 'connected', 'disconnected', 'connecting', 'connected']);
    } finally {
      c.close();
    }
  });

  test('in-band refresh: auth_ok, and the connection outlives the first token', async () => {
    const got = [];
    // The first token is past its exp (within leeway: the server closes at
    // about +2 s unless refreshed), so the client refreshes at once.
    const c = client(server.ws, (n) => token('fresh', { ttl: n === 0 ? -28 : 3600 }), { onBroadcast: (m) => got.push(m) });
    const log = record(c);
    try {
      await nextEvent(c, 'connected');
      const r = await nextEvent(c, 'refreshed');
      assert.ok(r.expMs > Date.now() + 3000 * 1000);
      // Past the first token's deadline (exp + 30 s leeway = +2 s), with margin.
      await new Promise((resolve) => setTimeout(resolve, 3500));
      await pub({ type: 'still_here', data: 2 });
      await until(() => got.length === 1, 'a broadcast on the same connection');
      assert.deepEqual(log.filter((e) => e.event !== 'message').map((e) => e.event), ['connecting', 'connected', 'refreshed']);
      assert.equal(c.calls.n, 2);
    } finally {
      c.close();
    }
  });

  test('a refresh token for another user: close 4003, an auth_failed error, no reconnect', async () => {
    const c = client(server.ws, (n) => token(n === 0 ? 'alice' : 'mallory', { ttl: n === 0 ? -28 : 3600 }));
    const log = record(c);
    try {
      await nextEvent(c, 'connected');
      const err = await nextEvent(c, 'error');
      assert.equal(err.code, 'auth_failed');
      assert.equal(err.closeCode, 4003);
      assert.equal(c.state, 'error');
      // Longer than any backoff window here (maxMs 400): nothing more happens.
      await new Promise((resolve) => setTimeout(resolve, 1000));
      assert.equal(c.calls.n, 2);
      assert.deepEqual(log.map((e) => e.event), ['connecting', 'connected', 'disconnected', 'error']);
      assert.equal(log[2].code, 4003);
      assert.equal(log[2].willReconnect, false);
    } finally {
      c.close();
    }
  });

  test('close 1008 (too many messages) is reported as the app\'s bug and not retried in a tight loop', async () => {
    const strict = await startServer({ CLIENT_MESSAGES_PER_SEC: '1', CLIENT_MESSAGE_BURST: '3' });
    // A ping every 5 ms: far over 1 message/s, so the server closes with 1008.
    const c = client(strict.ws, () => token('flood'), { pingIntervalMs: 5, pongTimeoutMs: 5000, appErrorDelayMs: 2000 });
    const log = record(c);
    try {
      const err = await nextEvent(c, 'error');
      assert.equal(err.code, 'rate_limited');
      assert.equal(err.closeCode, 1008);
      const d = log.find((e) => e.event === 'disconnected');
      assert.equal(d.code, 1008);
      assert.ok(d.willReconnect && d.delayMs >= 1000 && d.delayMs <= 2000, `50-100 % of appErrorDelayMs: ${d.delayMs}`);
      // Nothing happens before the long delay is over...
      await new Promise((resolve) => setTimeout(resolve, 900));
      assert.equal(log.filter((e) => e.event === 'connecting').length, 1);
      // ...and then it does reconnect.
      await nextEvent(c, 'connecting', { ms: 3000 });
    } finally {
      c.close();
      await strict.stop();
    }
  });

  test('server restart: the client comes back to the new server', async () => {
    const first = await startServer({ BROADCAST_API_KEY: API_KEY, SHUTDOWN_GRACE_SECS: '1' });
    const proxy = await startProxy(first.port);
    const got = [];
    const c = client(proxy.ws, () => token('restart'), { onBroadcast: (m) => got.push(m) });
    let second;
    try {
      await nextEvent(c, 'connected');
      const down = nextEvent(c, 'disconnected');
      await first.stop();
      // SIGTERM drains: 1012 (service restart), written at once.
      assert.equal((await down).code, 1012);
      second = await startServer({ BROADCAST_API_KEY: API_KEY });
      proxy.retarget(second.port);
      await nextEvent(c, 'connected', { ms: 5000 });
      await broadcast({ url: second.http, apiKey: API_KEY, type: 'hello_again', data: null });
      await until(() => got.length === 1, 'a broadcast from the new server');
    } finally {
      c.close();
      await proxy.close();
      await second?.stop();
    }
  });

  // ---------------------------------------------------------------- channels

  const channelTest = (name, fn) => test(name, async (t) => {
    if (!channels) return t.skip('server does not support channels yet (no "subscribed" answer)');
    await fn(t);
  });

  channelTest('channels: messages reach onMessage once each, in order, with their offsets', async () => {
    const got = [];
    const c = client(server.ws, () => token('ch1'));
    try {
      const sub = c.subscribe('project:c1', { onMessage: (m) => got.push(m) });
      const subscribed = new Promise((resolve) => (sub.handlers.onSubscribed = resolve));
      const info = await subscribed;
      assert.equal(info.recovered, false);
      const answers = [];
      for (let i = 1; i <= 3; i++) answers.push(await pub({ type: 'task_updated', data: { i }, channel: 'project:c1' }));
      await until(() => got.length === 3, 'three channel messages');
      assert.deepEqual(got.map((m) => m.payload.i), [1, 2, 3]);
      assert.deepEqual(got.map((m) => m.offset), answers.map((a) => a.channels['project:c1'].offset));
      assert.ok(got.every((m) => m.channel === 'project:c1' && m.type === 'task_updated'));
    } finally {
      c.close();
    }
  });

  channelTest('channels: after a network drop the missed messages arrive exactly once, in order', async () => {
    const proxy = await startProxy(server.port);
    const got = [];
    const resyncs = [];
    const c = client(proxy.ws, () => token('ch2'));
    try {
      const sub = c.subscribe('project:c2', { onMessage: (m) => got.push(m.payload), onResync: (r) => resyncs.push(r) });
      await until(() => sub.epoch !== null, 'subscribed');
      await pub({ type: 'm', data: 1, channel: 'project:c2' });
      await until(() => got.length === 1, 'first message');
      proxy.hold();
      const down = nextEvent(c, 'disconnected');
      proxy.cut();
      await down;
      for (let i = 2; i <= 5; i++) await pub({ type: 'm', data: i, channel: 'project:c2' });
      const recovered = new Promise((resolve) => (sub.handlers.onSubscribed = resolve));
      proxy.release();
      assert.equal((await recovered).recovered, true);
      await pub({ type: 'm', data: 6, channel: 'project:c2' });
      await until(() => got.length >= 6, 'replayed and live messages');
      assert.deepEqual(got, [1, 2, 3, 4, 5, 6]);
      assert.deepEqual(resyncs, []);
    } finally {
      c.close();
      await proxy.close();
    }
  });

  channelTest('channels: a restart loses history, so onResync fires and delivery goes on', async () => {
    const first = await startServer({ BROADCAST_API_KEY: API_KEY });
    const proxy = await startProxy(first.port);
    const got = [];
    const resyncs = [];
    const c = client(proxy.ws, () => token('ch3'));
    let second;
    try {
      c.subscribe('project:c3', { onMessage: (m) => got.push(m.payload), onResync: (r) => resyncs.push(r) });
      await until(() => c.state === 'open', 'open');
      await until(async () => {
        await broadcast({ url: first.http, apiKey: API_KEY, type: 'm', data: 'before', channel: 'project:c3' });
        return got.length > 0;
      }, 'a message before the restart');
      await first.stop();
      second = await startServer({ BROADCAST_API_KEY: API_KEY });
      proxy.retarget(second.port);
      await until(() => resyncs.length === 1, 'onResync');
      assert.equal(resyncs[0].reason, 'not_recovered');
      await broadcast({ url: second.http, apiKey: API_KEY, type: 'm', data: 'after', channel: 'project:c3' });
      await until(() => got.at(-1) === 'after', 'a message after the restart');
    } finally {
      c.close();
      await proxy.close();
      await second?.stop();
    }
  });

  channelTest('channels: the user channel through subscribeUser, published with users:[...]', async () => {
    const got = [];
    const c = client(server.ws, () => token('ch4-user'));
    try {
      const sub = c.subscribeUser({ onMessage: (m) => got.push(m) });
      await until(() => sub.epoch !== null, 'user channel subscribed');
      assert.equal(c.userChannel, 'user:ch4-user');
      await pub({ type: 'notice', data: 'hi', users: ['ch4-user'] });
      await until(() => got.length === 1, 'user message');
      assert.equal(got[0].channel, 'user:ch4-user');
    } finally {
      c.close();
    }
  });

  channelTest('channels: a refused subscribe reports forbidden and the connection keeps working', async () => {
    const got = [];
    const c = client(server.ws, () => token('ch5'), { onBroadcast: (m) => got.push(m) });
    try {
      const errors = [];
      c.subscribe('team:not-granted', { onError: (e) => errors.push(e) });
      await until(() => errors.length === 1, 'the refusal');
      assert.equal(errors[0].code, 'forbidden');
      await pub({ type: 'global', data: 1 });
      await until(() => got.length === 1, 'a broadcast after the refusal');
      assert.equal(c.state, 'open');
    } finally {
      c.close();
    }
  });
});
