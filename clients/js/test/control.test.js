// The server API helpers of taskcast-client/server (unsubscribe, disconnect,
// revoke, position, history, and broadcast's Idempotency-Key) against the
// real taskcast binary (target/release/taskcast), with plain `ws` sockets as
// the users' tabs: real sockets, real signed tokens, no mocks.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { WebSocket } from 'ws';

import { ControlError, baseUrl, broadcast, disconnect, history, position, revoke, unsubscribe } from '../src/server.js';
import { nowSecs, sign, startServer, token, until } from './helpers.js';

const API_KEY = 'publisher-key-for-the-js-tests-0123456789';
const CONTROL_KEY = 'control-key-for-the-js-tests-0123456789';

/** A raw tab: every message and the close, recorded. */
async function tab(server, tok) {
  const ws = new WebSocket(`${server.ws}?token=${tok}`);
  const t = { ws, messages: [], closed: null, send: (o) => ws.send(JSON.stringify(o)) };
  ws.on('message', (d) => t.messages.push(JSON.parse(String(d))));
  ws.on('close', (code, reason) => (t.closed = { code, reason: String(reason) }));
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  return t;
}

/** The next message of `t` whose type is `type` (waits, bounded). */
async function next(t, type) {
  return until(() => t.messages.find((m) => m.type === type), `a ${type} message`);
}

/** A token issued a minute ago: older than any action a test takes. */
const oldToken = (sub) => token(sub, { iat: nowSecs() - 60 });

describe('server API helpers against taskcast', () => {
  let server;
  let opts;
  before(async () => {
    server = await startServer({ BROADCAST_API_KEY: API_KEY, CONTROL_API_KEY: CONTROL_KEY });
    opts = { url: server.http, apiKey: CONTROL_KEY };
  });
  after(() => server.stop());

  test('baseUrl: any taskcast URL gives its base', () => {
    for (const u of ['http://h:1', 'http://h:1/', 'ws://h:1/ws', 'http://h:1/api/broadcast', 'http://h:1/ws?token=x']) {
      assert.equal(baseUrl(u), 'http://h:1/', u);
    }
    assert.equal(baseUrl('wss://rt.example.com/taskcast/ws'), 'https://rt.example.com/taskcast/');
  });

  test('unsubscribe: the tab hears why and cannot rejoin with its old token', async () => {
    const t = await tab(server, oldToken('js-u1'));
    try {
      t.send({ type: 'subscribe', channel: 'project:js1' });
      await next(t, 'subscribed');
      const answer = await unsubscribe({ ...opts, user: 'js-u1', channel: 'project:*', reason: 'removed from project' });
      assert.deepEqual(answer, { status: 'ok', unsubscribed: 1 });
      assert.deepEqual(await next(t, 'unsubscribed'), {
        type: 'unsubscribed',
        channel: 'project:js1',
        reason: 'removed from project',
      });
      t.send({ type: 'subscribe', channel: 'project:js1' });
      const err = await next(t, 'error');
      assert.equal(err.payload.code, 'forbidden');
    } finally {
      t.ws.close();
    }
  });

  test('disconnect: 4009 with the reason, or 4011 to come back with a fresh token', async () => {
    const a = await tab(server, oldToken('js-u2'));
    const b = await tab(server, oldToken('js-u2'));
    assert.deepEqual(await disconnect({ ...opts, user: 'js-u2', reason: 'signed out' }), { status: 'ok', disconnected: 2 });
    await until(() => a.closed && b.closed, 'both tabs closed');
    assert.deepEqual([a.closed, b.closed], [{ code: 4009, reason: 'signed out' }, { code: 4009, reason: 'signed out' }]);
    const c = await tab(server, oldToken('js-u2'));
    assert.equal((await disconnect({ ...opts, user: 'js-u2', reconnect: true })).disconnected, 1);
    await until(() => c.closed, 'closed');
    assert.equal(c.closed.code, 4011);
  });

  test('revoke: the old token is refused, its tab is closed with 4011, a fresh one works', async () => {
    const old = oldToken('js-u3');
    const t = await tab(server, old);
    const answer = await revoke({ ...opts, user: 'js-u3' });
    assert.equal(answer.disconnected, 1);
    assert.ok(Math.abs(answer.issued_before - nowSecs()) <= 2, `default: now (${answer.issued_before})`);
    await until(() => t.closed, 'closed');
    assert.equal(t.closed.code, 4011);
    await assert.rejects(tab(server, old), /401/);
    await new Promise((resolve) => setTimeout(resolve, 1100)); // a token must be issued a second later
    const fresh = await tab(server, token('js-u3'));
    fresh.ws.close();
    // issuedBefore as a Date.
    const since = new Date(Date.now() - 30_000);
    assert.equal((await revoke({ ...opts, user: 'js-u4', issuedBefore: since })).issued_before, Math.floor(since / 1000));
  });

  test('position, then history: exactly the messages published in between', async () => {
    const p = await position('project:js5', opts);
    assert.deepEqual({ ...p, epoch: typeof p.epoch }, { channel: 'project:js5', epoch: 'string', offset: 0, subscribers: 0 });
    for (const i of [1, 2, 3]) {
      await broadcast({ url: server.http, apiKey: API_KEY, type: 'task_updated', data: { i }, channel: 'project:js5' });
    }
    const h = await history('project:js5', { ...opts, since: p });
    assert.equal(h.complete, true);
    assert.deepEqual(h.messages.map((m) => [m.offset, m.type, m.payload.i]), [[1, 'task_updated', 1], [2, 'task_updated', 2], [3, 'task_updated', 3]]);
    const page = await history('project:js5', { ...opts, since: `${p.epoch}:1`, limit: 1 });
    assert.deepEqual(page.messages.map((m) => m.offset), [2]);
    // And the browser's subscribe with that position gets the same three.
    const t = await tab(server, token('js-viewer'));
    try {
      t.send({ type: 'subscribe', channel: 'project:js5', since: { epoch: p.epoch, offset: p.offset } });
      const sub = await next(t, 'subscribed');
      assert.equal(sub.recovered, true);
      await until(() => t.messages.filter((m) => m.type === 'task_updated').length === 3, 'the replay');
      assert.deepEqual(t.messages.filter((m) => m.type === 'task_updated').map((m) => m.offset), [1, 2, 3]);
    } finally {
      t.ws.close();
    }
  });

  test('broadcast: a lost answer is retried with the same Idempotency-Key and delivered once', async () => {
    const t = await tab(server, token('js-watcher'));
    try {
      t.send({ type: 'subscribe', channel: 'project:js6' });
      await next(t, 'subscribed');
      const keys = [];
      // The real request goes through; its answer is lost on the way back
      // the first time (as when the network drops after the server acted).
      const lossy = async (url, init) => {
        keys.push(init.headers['Idempotency-Key']);
        const res = await fetch(url, init);
        if (keys.length === 1) {
          await res.text();
          throw new TypeError('fetch failed');
        }
        return res;
      };
      const answer = await broadcast({ url: server.http, apiKey: API_KEY, type: 't', data: 'once', channel: 'project:js6', fetch: lossy });
      assert.equal(keys.length, 2);
      assert.match(keys[0], /^[0-9a-f-]{36}$/, 'a random UUID');
      assert.equal(keys[0], keys[1], 'the retry carries the same key');
      assert.equal(answer.duplicate, true);
      assert.equal(answer.channels['project:js6'].offset, 1, "the first publish's offset");
      // A round trip after it: exactly one message arrived.
      t.send({ type: 'ping' });
      await next(t, 'pong');
      assert.equal(t.messages.filter((m) => m.type === 't').length, 1);
      // Two calls are two publishes (a key per call), unless given one key.
      const body = { url: server.http, apiKey: API_KEY, type: 't', data: 2, channel: 'project:js6' };
      assert.equal((await broadcast(body)).duplicate, false);
      assert.equal((await broadcast({ ...body, idempotencyKey: 'order-42' })).duplicate, false);
      assert.equal((await broadcast({ ...body, idempotencyKey: 'order-42' })).duplicate, true);
      const plain = await broadcast({ ...body, idempotencyKey: null });
      assert.equal(plain.duplicate, undefined, 'no key: the answer of old');
    } finally {
      t.ws.close();
    }
  });

  test('errors: a ControlError with the status and the server message', async () => {
    await assert.rejects(revoke({ ...opts, apiKey: 'wrong-control-key-0123', user: 'x' }), (e) => {
      assert.ok(e instanceof ControlError);
      assert.equal(e.status, 401);
      assert.equal(e.message, 'invalid API key');
      return true;
    });
    await assert.rejects(revoke({ ...opts, apiKey: sign({ sub: 'u', exp: nowSecs() + 60 }), user: 'x' }), { status: 403 });
    await assert.rejects(unsubscribe({ ...opts, user: 'has space', channel: 'project:1' }), (e) => e.status === 400 && /user id/.test(e.message));
    await assert.rejects(history('not a channel', opts), (e) => e.status === 400 && e.code === 'bad_request');
    await assert.rejects(position('p:1', { apiKey: CONTROL_KEY }), TypeError);
  });
});
