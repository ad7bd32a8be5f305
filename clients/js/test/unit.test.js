// Pure logic of the client: backoff, token expiry, close codes, positions.
// No network here: the parts that talk to taskcast are in server.test.js.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  DEFAULTS,
  ChannelPosition,
  backoffDelay,
  closePolicy,
  connect,
  decodeJwtPayload,
  isValidChannel,
  refreshDelay,
  tokenLifetime,
} from '../src/index.js';
import { broadcastUrl } from '../src/server.js';
import { sign } from './helpers.js';

const B = { baseMs: 500, maxMs: 30_000 };

test('backoff: full jitter spans [0, min(max, base*2^n)]', () => {
  for (const [attempt, cap] of [[0, 500], [1, 1000], [3, 4000], [6, 30_000], [60, 30_000], [5000, 30_000]]) {
    assert.equal(backoffDelay(attempt, B, () => 0), 0, `attempt ${attempt} low end`);
    const top = backoffDelay(attempt, B, () => 0.999999);
    assert.ok(top <= cap && top >= cap - 1, `attempt ${attempt}: ${top} vs cap ${cap}`);
    assert.equal(backoffDelay(attempt, B, () => 0.5), Math.floor(cap / 2));
  }
});

test('backoff: Math.random stays inside the window and spreads over it', () => {
  const samples = Array.from({ length: 2000 }, () => backoffDelay(4, B));
  assert.ok(samples.every((d) => Number.isInteger(d) && d >= 0 && d < 8000));
  // Full jitter: both halves of the window are used (not "cap plus a little").
  assert.ok(samples.filter((d) => d < 4000).length > 700);
  assert.ok(samples.filter((d) => d >= 4000).length > 700);
});

test('close policy: each close code gets its documented answer', () => {
  const opts = { backoff: B, appErrorDelayMs: 60_000, restartJitterMs: 5000 };
  const half = () => 0.5;
  const rows = [
    // code, attempt, reconnect, delayMs, error
    [4003, 0, false, 0, 'auth_failed'], // refused (bad token, issuer, audience, origin): the reason says why
    [4009, 0, false, 0, 'disconnected'], // the app's server ended the session: stop
    [4011, 0, true, 0, null], // fresh token, at once
    [4011, 2, true, 1000, null], // ... and backing off if it keeps coming
    [4008, 1, true, 500, 'auth_timeout'],
    [4001, 0, true, 0, null], // first expiry: straight back with a new token
    [4001, 3, true, 2000, null], // repeated expiries back off
    [1008, 0, true, 45_000, 'rate_limited'], // never a tight loop
    [1009, 0, true, 45_000, 'message_too_big'],
    [1002, 0, true, 45_000, 'protocol_error'],
    [1012, 0, true, 2500, null],
    [1001, 7, true, 2500, null], // restart jitter, whatever the attempt
    [1013, 1, true, 500, null],
    [1006, 2, true, 1000, null],
    [1000, 0, true, 250, null],
  ];
  for (const [code, attempt, reconnect, delayMs, error] of rows) {
    assert.deepEqual(closePolicy(code, attempt, opts, half), { reconnect, delayMs, error }, `close ${code}`);
  }
  // The app-error delay stays in [50 %, 100 %] of appErrorDelayMs.
  assert.equal(closePolicy(1008, 0, opts, () => 0).delayMs, 30_000);
  assert.ok(closePolicy(1008, 0, opts, () => 0.9999).delayMs <= 60_000);
});

const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');

test('token expiry: exp and iat read from the payload, garbage gives null', () => {
  const t = sign({ sub: 'u1', exp: 2_000_000_000, iat: 1_999_999_000 });
  assert.deepEqual(tokenLifetime(t), { expMs: 2_000_000_000_000, iatMs: 1_999_999_000_000 });
  assert.deepEqual(tokenLifetime(`x.${b64({ exp: 5 })}.y`), { expMs: 5000, iatMs: null });
  // A payload with "-" and "_" (base64url, not base64) and UTF-8 text.
  const name = 'Zoë ~~~ ???>>>';
  assert.equal(decodeJwtPayload(`h.${b64({ name, exp: 1 })}.s`).name, name);
  for (const bad of [
    undefined,
    '',
    'abc',
    'a.b',
    'a..c',
    'a.b.c.d',
    'a.!!!.c',
    `a.${Buffer.from('not json').toString('base64url')}.c`,
    `a.${b64([1, 2])}.c`,
    `a.${b64('str')}.c`,
    `a.${Buffer.from([0xff, 0xfe]).toString('base64url')}.c`,
  ]) {
    assert.equal(tokenLifetime(bad), null, `token ${JSON.stringify(bad)}`);
  }
  for (const exp of [undefined, '2000000000', null, 'NaN']) {
    assert.equal(tokenLifetime(`a.${b64({ sub: 'u', exp })}.c`), null, `exp ${exp}`);
  }
});

test('refresh delay: 60 s before exp, half the lifetime for short tokens, 0 when late', () => {
  const now = 1_000_000;
  // One hour token: refresh 60 s before exp.
  assert.equal(refreshDelay({ expMs: now + 3_600_000, iatMs: now }, now, 60_000), 3_540_000);
  // Two minute token: after one minute (half), not at once.
  assert.equal(refreshDelay({ expMs: now + 120_000, iatMs: now }, now, 60_000), 60_000);
  assert.equal(refreshDelay({ expMs: now + 10_000, iatMs: now }, now, 60_000), 5000);
  // No iat: the lifetime counts from now.
  assert.equal(refreshDelay({ expMs: now + 10_000, iatMs: null }, now, 60_000), 5000);
  // Already expired or due: at once.
  assert.equal(refreshDelay({ expMs: now - 5000, iatMs: now - 65_000 }, now, 60_000), 0);
  assert.equal(refreshDelay(null, now, 60_000), null);
});

test('channel names follow the server rule', () => {
  for (const ok of ['project:42', 'user:abc-DEF_1.2', 'a:', 'board:7:col', `x:${'a'.repeat(126)}`]) assert.ok(isValidChannel(ok), ok);
  for (const bad of ['', 'noseparator', ':id', 'project:4 2', 'pröject:1', `x:${'a'.repeat(127)}`, 42, null]) {
    assert.ok(!isValidChannel(bad), String(bad));
  }
});

test('positions: first subscribe sets the baseline, messages pass once and in order', () => {
  const p = new ChannelPosition();
  assert.equal(p.since(), undefined);
  p.requested();
  assert.equal(p.message(3), 'drop', 'before the answer');
  assert.equal(p.subscribed({ epoch: 'e1', offset: 5, recovered: false }), false, 'no position yet: no resync');
  assert.deepEqual(p.since(), { epoch: 'e1', offset: 5 });
  assert.deepEqual(['drop', 'deliver', 'deliver', 'drop', 'drop'], [5, 6, 7, 7, 2].map((o) => p.message(o)));
  assert.equal(p.message(9), 'gap', 'offset 8 never came');
  assert.equal(p.offset, 9);
});

test('positions: a recovered resubscribe keeps the offset so the replay dedupes', () => {
  const p = new ChannelPosition();
  p.requested();
  p.subscribed({ epoch: 'e1', offset: 0, recovered: false });
  p.message(1);
  p.message(2);
  p.disconnected();
  assert.deepEqual(p.since(), { epoch: 'e1', offset: 2 });
  p.requested();
  assert.equal(p.message(4), 'drop', 'live message racing the answer');
  assert.equal(p.subscribed({ epoch: 'e1', offset: 5, recovered: true }), false);
  // The server replays 3..5 and may repeat what we had.
  const got = [2, 3, 3, 4, 5, 6].map((o) => p.message(o));
  assert.deepEqual(got, ['drop', 'deliver', 'drop', 'deliver', 'deliver', 'deliver']);
});

test('positions: recovered:false or a new epoch asks for a resync and rebases', () => {
  const p = new ChannelPosition();
  p.requested();
  p.subscribed({ epoch: 'e1', offset: 10, recovered: false });
  p.message(11);
  p.requested();
  assert.equal(p.subscribed({ epoch: 'e1', offset: 300, recovered: false }), true, 'history trimmed');
  assert.equal(p.message(300), 'drop');
  assert.equal(p.message(301), 'deliver');
  p.requested();
  assert.equal(p.subscribed({ epoch: 'e2', offset: 0, recovered: true }), true, 'restart: another epoch is never a recovery');
  assert.deepEqual(p.since(), { epoch: 'e2', offset: 0 });
  assert.equal(p.message(1), 'deliver');
});

test('broadcastUrl accepts a base URL, a path prefix, the ws URL or the endpoint', () => {
  for (const [given, want] of [
    ['http://localhost:8080', 'http://localhost:8080/api/broadcast'],
    ['https://rt.example.com/', 'https://rt.example.com/api/broadcast'],
    ['https://example.com/rt', 'https://example.com/rt/api/broadcast'],
    ['wss://rt.example.com/ws', 'https://rt.example.com/api/broadcast'],
    ['http://h:1/api/broadcast', 'http://h:1/api/broadcast'],
  ]) {
    assert.equal(broadcastUrl(given), want);
  }
});

test('connect refuses bad options at once', () => {
  assert.throws(() => connect({ url: 'ws://x/ws' }), /getToken/);
  assert.throws(() => connect({ getToken: () => 't' }), /url/);
  assert.throws(() => connect({ url: 'ftp://x/ws', getToken: () => 't', WebSocket: class {} }), /ws\(s\)/);
  // No window (Node, or Next's server rendering, which has a global
  // WebSocket in Node 22): refused unless a WebSocket is passed explicitly.
  assert.equal(typeof window, 'undefined');
  const saved = globalThis.WebSocket;
  globalThis.WebSocket = class {};
  try {
    assert.throws(() => connect({ url: 'ws://x/ws', getToken: () => 't' }), /no window here \(server rendering\?\)/);
  } finally {
    if (saved === undefined) delete globalThis.WebSocket;
    else globalThis.WebSocket = saved;
  }
  assert.throws(() => connect({ url: 'ws://x/ws', getToken: () => 't', WebSocket: class {}, getSubscriptionToken: 'x' }), /getSubscriptionToken/);
  assert.equal(DEFAULTS.refreshBeforeMs, 60_000);
});
