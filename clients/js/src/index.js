// taskcast-client: the browser (and Node >= 20) side of taskcast's protocol.
//
// One file, no dependencies, so taskcast's development mode can serve it to
// its demo page as is. The pure parts (backoff, token expiry, what a close
// code means, per-channel positions) are exported for the unit tests.
//
// Protocol: the README's `GET /ws` section (messages, channels with
// `since` and `recovered`, close codes).

/** Channel names: `namespace:id`, ASCII letters, digits and `_ - . :`, <= 128 bytes. */
const CHANNEL_RE = /^[A-Za-z0-9_.-]+:[A-Za-z0-9_.:-]*$/;
export const MAX_CHANNEL_BYTES = 128;

/** setTimeout keeps delays in a signed 32-bit int: longer ones fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export const DEFAULTS = Object.freeze({
  backoff: Object.freeze({ baseMs: 500, maxMs: 30_000 }),
  // A connection that stays open this long resets the backoff.
  stableMs: 10_000,
  // Refresh the token this long before `exp` (half the lifetime if shorter).
  refreshBeforeMs: 60_000,
  // A close the server blames on the app (1008 rate, 1009 size, 1002/1003/1007
  // protocol): reconnect only after 50-100 % of this, never in a tight loop.
  appErrorDelayMs: 60_000,
  // 1012 (deploy drain) and 1001 (shutdown): reconnect after a random delay in
  // [0, this], so a restart does not bring every tab back in the same instant.
  restartJitterMs: 5_000,
  // Application-level liveness check: a `ping` this often, and the connection
  // counts as dead when nothing at all arrives within pongTimeoutMs (0: off).
  pingIntervalMs: 25_000,
  pongTimeoutMs: 10_000,
  // After getToken fails, or hands back a token no newer than the current one.
  tokenRetryMs: 5_000,
});

// ---------------------------------------------------------------- pure logic

/**
 * Exponential backoff with full jitter: a random delay in
 * [0, min(maxMs, baseMs * 2^attempt)]. Full jitter spreads a crowd of clients
 * that lost the server at the same moment over the whole window.
 */
export function backoffDelay(attempt, { baseMs, maxMs }, random = Math.random) {
  const cap = Math.min(maxMs, baseMs * 2 ** Math.min(Math.max(attempt, 0), 52));
  return Math.floor(random() * cap);
}

/** The JWT payload as an object (base64url JSON, not verified), or null. */
export function decodeJwtPayload(token) {
  if (typeof token !== 'string') return null;
  const parts = token.split('.');
  if (parts.length !== 3 || parts[1] === '') return null;
  try {
    let b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    b64 += '='.repeat((4 - (b64.length % 4)) % 4);
    const bin = atob(b64);
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    const obj = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
    return obj !== null && typeof obj === 'object' && !Array.isArray(obj) ? obj : null;
  } catch {
    return null;
  }
}

/** `{ expMs, iatMs }` from a token's claims (iatMs null when absent), or null without a numeric `exp`. */
export function tokenLifetime(token) {
  const claims = decodeJwtPayload(token);
  if (!claims || typeof claims.exp !== 'number' || !Number.isFinite(claims.exp)) return null;
  const iatMs = typeof claims.iat === 'number' && Number.isFinite(claims.iat) ? claims.iat * 1000 : null;
  return { expMs: claims.exp * 1000, iatMs };
}

/**
 * Milliseconds from `nowMs` until a token with this lifetime should be
 * replaced: `refreshBeforeMs` before exp, or half its lifetime when that is
 * shorter (a 2-minute token is refreshed after 1 minute, not at once).
 * 0 when that moment has passed; null when the token has no exp.
 */
export function refreshDelay(lifetime, nowMs, refreshBeforeMs) {
  if (!lifetime) return null;
  const issued = lifetime.iatMs ?? nowMs;
  const before = Math.min(refreshBeforeMs, Math.max(0, lifetime.expMs - issued) / 2);
  return Math.max(0, Math.round(lifetime.expMs - before - nowMs));
}

/**
 * What to do after the server (or the network) closed the connection.
 * Returns `{ reconnect, delayMs, error }`; `error` (a code) means the app
 * should hear about it. `attempt` counts reconnects since the last stable
 * connection.
 */
export function closePolicy(code, attempt, opts, random = Math.random) {
  const backoff = () => backoffDelay(attempt, opts.backoff, random);
  switch (code) {
    case 4003: // the in-band refresh token was refused or for another user
      return { reconnect: false, delayMs: 0, error: 'auth_failed' };
    case 4001: // token expired: a new token, at once the first time
      return { reconnect: true, delayMs: attempt === 0 ? 0 : backoff(), error: null };
    case 1008:
    case 1009:
    case 1002:
    case 1003:
    case 1007: {
      const error = { 1008: 'rate_limited', 1009: 'message_too_big' }[code] ?? 'protocol_error';
      return { reconnect: true, delayMs: Math.floor(opts.appErrorDelayMs * (0.5 + random() / 2)), error };
    }
    case 1012: // service restart (drain on deploy)
    case 1001: // going away
      return { reconnect: true, delayMs: Math.floor(random() * opts.restartJitterMs), error: null };
    default: // 1013 too slow (recover), 1006 network, 1011, 1000...
      return { reconnect: true, delayMs: backoff(), error: null };
  }
}

/** True for a valid channel name (same rule as the server). */
export function isValidChannel(name) {
  return typeof name === 'string' && new TextEncoder().encode(name).length <= MAX_CHANNEL_BYTES && CHANNEL_RE.test(name);
}

/**
 * One channel's position: the epoch of its stream and the last offset the
 * app has been given. Decides, message by message, what reaches the app, so
 * each message is delivered once and in order whatever the server replays.
 */
export class ChannelPosition {
  constructor() {
    /** Epoch of the stream our offset belongs to; null until the first `subscribed`. */
    this.epoch = null;
    /** Last offset delivered (or the baseline from `subscribed`). */
    this.offset = null;
    /** A subscribe was sent on this connection and not answered yet. */
    this.pending = false;
  }

  /** The `since` for a subscribe, or undefined without a position. */
  since() {
    return this.epoch === null ? undefined : { epoch: this.epoch, offset: this.offset };
  }

  /** A subscribe is on its way. Channel messages before its answer are dropped: they are <= its offset. */
  requested() {
    this.pending = true;
  }

  /** The connection is gone: nothing is pending any more, the position stays. */
  disconnected() {
    this.pending = false;
  }

  /**
   * The `subscribed` answer. Returns true when the app must refetch: it had a
   * position and the server could not replay the gap (`recovered:false`, or
   * another epoch). With `recovered:true` the replay follows and our offset
   * stays, so the replayed messages pass `message()` one by one.
   */
  subscribed({ epoch, offset, recovered }) {
    this.pending = false;
    const had = this.epoch !== null;
    if (had && recovered === true && epoch === this.epoch) return false;
    this.epoch = epoch;
    this.offset = typeof offset === 'number' ? offset : 0;
    return had;
  }

  /**
   * A channel message with this offset: 'deliver', 'drop' (already seen, or
   * before the answer), or 'gap' (deliver it, but something before it was
   * never seen: the app must refetch).
   */
  message(offset) {
    if (this.pending || this.epoch === null || typeof offset !== 'number') return 'drop';
    if (offset <= this.offset) return 'drop';
    const gap = offset !== this.offset + 1;
    this.offset = offset;
    return gap ? 'gap' : 'deliver';
  }
}

// ---------------------------------------------------------------- the client

/** An error the client reports through its `error` event. */
export class TaskcastError extends Error {
  constructor(code, message, details = {}) {
    super(message);
    this.name = 'TaskcastError';
    this.code = code;
    Object.assign(this, details);
  }
}

const PROTOCOL_TYPES = new Set(['subscribed', 'unsubscribed', 'pong', 'auth_ok']);

/** Opens a client and starts connecting. See index.d.ts for the options. */
export function connect(options) {
  return new Client(options);
}

export class Subscription {
  constructor(client, channel, handlers) {
    /** The channel name; null for the user channel until the server names it. */
    this.channel = channel;
    this.position = new ChannelPosition();
    this.handlers = handlers;
    /** False after unsubscribe() or after the server dropped it. */
    this.active = true;
    this._client = client;
    this._user = channel === null;
  }

  get epoch() {
    return this.position.epoch;
  }

  get offset() {
    return this.position.offset;
  }

  unsubscribe() {
    if (!this.active) return;
    this.active = false;
    this._client._unsubscribe(this);
  }
}

export class Client {
  constructor(options) {
    if (!options || typeof options.getToken !== 'function') throw new TypeError('connect: getToken must be a function');
    if (!options.url) throw new TypeError('connect: url is required');
    this._url = wsUrl(options.url);
    this._getToken = options.getToken;
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== 'function') {
      throw new TypeError('connect: no global WebSocket here: pass one, e.g. { WebSocket } from the "ws" package');
    }
    this._opts = {
      ...DEFAULTS,
      ...Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)),
      backoff: { ...DEFAULTS.backoff, ...(options.backoff ?? {}) },
    };
    this._random = options.random ?? Math.random;
    /** 'connecting' | 'connected' | 'disconnected' | 'closed' */
    this.state = 'disconnected';
    /** `user:<sub>`, from the connection token's `sub` (the server puts
     * every connection in it; subscribe to it to get its messages). */
    this.userChannel = null;
    this._listeners = new Map();
    this._subs = new Map(); // channel -> Subscription
    this._userSubs = new Set(); // subscribeUser() before the user channel is known
    this._ws = null;
    this._token = null;
    this._attempt = 0;
    this._timers = new Map(); // name -> timeout id
    if (options.onBroadcast) this.on('message', options.onBroadcast);
    // Next microtask: listeners added right after connect() see 'connecting'.
    queueMicrotask(() => this._connect());
  }

  // ------------------------------------------------------------ public API

  /** Adds a listener; returns a function that removes it. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
  }

  /**
   * Joins a channel. Its messages reach `onMessage` once each, in order, also
   * across reconnects (resubscribed with `since`); `onResync` is called when
   * the server cannot replay what was missed and the app must refetch.
   */
  subscribe(channel, handlers = {}) {
    if (!isValidChannel(channel)) throw new TypeError(`subscribe: invalid channel name ${JSON.stringify(channel)}`);
    if (this._subs.has(channel)) throw new Error(`subscribe: already subscribed to ${channel}`);
    if (this.state === 'closed') throw new Error('subscribe: client is closed');
    const sub = new Subscription(this, channel, handlers);
    this._subs.set(channel, sub);
    if (this.state === 'connected') this._sendSubscribe(sub);
    return sub;
  }

  /** Joins the connection's own `user:<sub>` channel (named by the server at connect). */
  subscribeUser(handlers = {}) {
    if (this.userChannel) return this.subscribe(this.userChannel, handlers);
    const sub = new Subscription(this, null, handlers);
    this._userSubs.add(sub);
    return sub;
  }

  /** Stops for good: no reconnect. */
  close() {
    if (this.state === 'closed') return;
    this._stop();
    this._emit('closed', {});
  }

  // ------------------------------------------------------------ connection

  async _connect() {
    if (this.state === 'closed') return;
    this._setState('connecting');
    this._emit('connecting', { attempt: this._attempt });
    let token;
    try {
      token = await this._getToken();
      if (typeof token !== 'string' || token === '') throw new Error('getToken returned no token');
    } catch (e) {
      if (this.state === 'closed') return;
      this._emit('error', new TaskcastError('token', `getToken failed: ${e?.message ?? e}`, { cause: e }));
      return this._scheduleReconnect(backoffDelay(this._attempt++, this._opts.backoff, this._random));
    }
    if (this.state === 'closed') return;
    this._token = token;
    this._learnUserChannel(token);
    const url = new URL(this._url);
    url.searchParams.set('token', token);
    let ws;
    try {
      ws = new this._WebSocket(url.toString());
    } catch (e) {
      this._emit('error', new TaskcastError('url', `cannot open WebSocket: ${e?.message ?? e}`, { cause: e }));
      return this._stop();
    }
    this._ws = ws;
    ws.onopen = () => ws === this._ws && this._onOpen();
    ws.onmessage = (ev) => ws === this._ws && this._onMessage(ev.data);
    ws.onclose = (ev) => ws === this._ws && this._onClose(ev.code, ev.reason ?? '');
    ws.onerror = () => {}; // a close event follows, with the code
  }

  _onOpen() {
    this._setState('connected');
    this._later('stable', this._opts.stableMs, () => {
      this._attempt = 0;
    });
    this._scheduleRefresh(this._token);
    this._schedulePing();
    this._emit('connected', {});
    for (const sub of this._subs.values()) this._sendSubscribe(sub);
  }

  _onClose(code, reason, why) {
    this._ws = null;
    this._clearTimers();
    for (const sub of this._subs.values()) sub.position.disconnected();
    if (this.state === 'closed') return;
    const policy = closePolicy(code, this._attempt, this._opts, this._random);
    this._setState('disconnected');
    this._emit('disconnected', {
      code,
      reason: why ?? reason,
      willReconnect: policy.reconnect,
      delayMs: policy.delayMs,
    });
    if (policy.error) {
      const msg = {
        auth_failed: 'the server refused the refreshed token (4003): not reconnecting',
        rate_limited: 'the server closed the connection for sending too many messages (1008)',
        message_too_big: 'the server closed the connection for a message over its size limit (1009)',
        protocol_error: `the server closed the connection for a protocol error (${code})`,
      }[policy.error];
      this._emit('error', new TaskcastError(policy.error, msg, { closeCode: code, closeReason: reason }));
    }
    if (!policy.reconnect) return this._stop();
    this._attempt++;
    this._scheduleReconnect(policy.delayMs);
  }

  _scheduleReconnect(delayMs) {
    if (this.state === 'closed') return;
    this._setState('disconnected');
    this._later('reconnect', delayMs, () => this._connect());
  }

  _stop() {
    this._setState('closed');
    this._clearTimers();
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      try {
        ws.close(1000);
      } catch {
        // already closing
      }
    }
  }

  // ------------------------------------------------------------ token refresh

  _scheduleRefresh(token) {
    if (this._opts.refreshBeforeMs === false) return;
    const delay = refreshDelay(tokenLifetime(token), Date.now(), this._opts.refreshBeforeMs);
    if (delay === null) return;
    this._later('refresh', delay, () => this._refresh(token));
  }

  async _refresh(current) {
    const ws = this._ws;
    let fresh;
    try {
      fresh = await this._getToken();
    } catch (e) {
      if (ws !== this._ws) return;
      this._emit('error', new TaskcastError('token', `getToken failed: ${e?.message ?? e}`, { cause: e }));
      return this._later('refresh', this._opts.tokenRetryMs, () => this._refresh(current));
    }
    if (ws !== this._ws) return;
    // A cached token that is no newer would have us refresh in a tight loop.
    const oldExp = tokenLifetime(current)?.expMs ?? 0;
    const newExp = tokenLifetime(fresh)?.expMs ?? 0;
    if (typeof fresh !== 'string' || newExp <= oldExp) {
      return this._later('refresh', this._opts.tokenRetryMs, () => this._refresh(current));
    }
    this._pendingToken = fresh;
    this._send({ type: 'auth', token: fresh });
  }

  // ------------------------------------------------------------ liveness

  _schedulePing() {
    const { pingIntervalMs, pongTimeoutMs } = this._opts;
    if (!pingIntervalMs) return;
    this._later('ping', pingIntervalMs, () => {
      this._send({ type: 'ping' });
      this._later('pong', pongTimeoutMs, () => {
        // Nothing arrived: the network is gone without a close (a lid
        // closed, Wi-Fi switched). Do not wait for the browser to notice.
        const ws = this._ws;
        this._ws = null;
        try {
          ws?.close();
        } catch {
          // ignore
        }
        this._onClose(1006, '', 'no answer from the server');
      });
    });
  }

  // ------------------------------------------------------------ messages

  _onMessage(data) {
    let msg;
    try {
      msg = JSON.parse(typeof data === 'string' ? data : String(data));
    } catch {
      return this._emit('error', new TaskcastError('protocol', 'the server sent a message that is not JSON'));
    }
    if (msg === null || typeof msg !== 'object') return;
    // Any message proves the connection alive.
    if (this._timers.has('pong')) {
      this._clear('pong');
      this._schedulePing();
    }
    const { type } = msg;
    if (type === 'error') return this._onServerError(msg.payload ?? {});
    if (typeof msg.channel === 'string' && typeof msg.offset === 'number' && 'payload' in msg) {
      return this._onChannelMessage(msg);
    }
    if (PROTOCOL_TYPES.has(type) && !('payload' in msg)) {
      if (type === 'subscribed') return this._onSubscribed(msg);
      if (type === 'unsubscribed') return this._onUnsubscribed(msg);
      if (type === 'auth_ok') return this._onAuthOk();
      return; // pong
    }
    if (typeof type === 'string' && 'payload' in msg) this._emit('message', msg);
  }

  /** The user channel is `user:<sub>` of the connection token; pending
   * subscribeUser() calls join it once it is known. */
  _learnUserChannel(token) {
    const sub = decodeJwtPayload(token)?.sub;
    const channel = typeof sub === 'string' ? `user:${sub}` : null;
    if (!channel || !isValidChannel(channel)) return;
    this.userChannel = channel;
    for (const s of this._userSubs) {
      this._userSubs.delete(s);
      if (!s.active || this._subs.has(channel)) continue;
      s.channel = channel;
      this._subs.set(channel, s);
    }
  }

  _onSubscribed(msg) {
    const sub = this._subs.get(msg.channel);
    if (!sub) return;
    if (!sub.position.pending) {
      // Unasked: the server lost messages it could not replay (cluster mode,
      // after a Redis outage): take the new position and refetch.
      if (msg.recovered === false && typeof msg.epoch === 'string') {
        sub.position.subscribed(msg);
        this._resync(sub, 'not_recovered');
      }
      return;
    }
    const resync = sub.position.subscribed(msg);
    this._call(sub, 'onSubscribed', { channel: sub.channel, epoch: msg.epoch, offset: msg.offset, recovered: msg.recovered === true });
    if (resync) this._resync(sub, 'not_recovered');
  }

  _onChannelMessage(msg) {
    const sub = this._subs.get(msg.channel);
    if (!sub) return;
    const verdict = sub.position.message(msg.offset);
    if (verdict === 'drop') return;
    this._call(sub, 'onMessage', msg);
    if (verdict === 'gap') this._resync(sub, 'gap');
  }

  _onUnsubscribed(msg) {
    const sub = this._subs.get(msg.channel);
    if (!sub || !msg.reason) return; // our own unsubscribe's answer
    // The server dropped us (e.g. a refreshed token no longer grants it).
    this._subs.delete(msg.channel);
    sub.active = false;
    const err = new TaskcastError('unsubscribed', `left ${msg.channel}: ${msg.reason}`, { channel: msg.channel });
    this._call(sub, 'onError', err);
    this._emit('error', err);
  }

  _onServerError(payload) {
    const err = new TaskcastError(payload.code ?? 'server_error', payload.message ?? 'error from the server', {
      channel: payload.channel,
    });
    const sub = payload.channel ? this._subs.get(payload.channel) : null;
    if (sub) {
      sub.position.pending = false;
      this._call(sub, 'onError', err);
      // Cluster mode, Redis unreachable for a moment: ask again after a
      // random 1-3 s (on this connection; a reconnect resubscribes anyway).
      if (payload.code === 'unavailable') {
        const ws = this._ws;
        setTimeout(() => {
          if (ws === this._ws && sub.active && this._subs.get(sub.channel) === sub) this._sendSubscribe(sub);
        }, 1000 + Math.floor(this._random() * 2000));
      }
    }
    if (payload.code === 'invalid_token' && this._pendingToken) this._pendingToken = null;
    this._emit('error', err);
  }

  _onAuthOk() {
    const token = this._pendingToken;
    this._pendingToken = null;
    if (!token) return;
    this._token = token;
    this._emit('refreshed', { expMs: tokenLifetime(token)?.expMs ?? null });
    this._scheduleRefresh(token);
  }

  _resync(sub, reason) {
    this._call(sub, 'onResync', { channel: sub.channel, epoch: sub.position.epoch, offset: sub.position.offset, reason });
  }

  async _sendSubscribe(sub) {
    const ws = this._ws;
    const msg = { type: 'subscribe', channel: sub.channel };
    const since = sub.position.since();
    if (since) msg.since = since;
    sub.position.requested();
    const { token } = sub.handlers;
    if (token) {
      try {
        msg.token = typeof token === 'function' ? await token(sub.channel) : token;
      } catch (e) {
        sub.position.pending = false;
        const err = new TaskcastError('token', `subscription token for ${sub.channel}: ${e?.message ?? e}`, { cause: e });
        this._call(sub, 'onError', err);
        return this._emit('error', err);
      }
      if (ws !== this._ws || !sub.active) return;
    }
    this._send(msg);
  }

  _unsubscribe(sub) {
    this._userSubs.delete(sub);
    if (sub.channel === null || this._subs.get(sub.channel) !== sub) return;
    this._subs.delete(sub.channel);
    if (this.state === 'connected') this._send({ type: 'unsubscribe', channel: sub.channel });
  }

  _send(obj) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return false;
    ws.send(JSON.stringify(obj));
    return true;
  }

  // ------------------------------------------------------------ plumbing

  _setState(state) {
    if (this.state !== 'closed') this.state = state;
  }

  _emit(event, value) {
    const fns = this._listeners.get(event);
    if (!fns || fns.size === 0) {
      if (event === 'error') console.warn('taskcast:', value?.message ?? value);
      return;
    }
    for (const fn of [...fns]) {
      try {
        fn(value);
      } catch (e) {
        if (event !== 'error') this._emit('error', new TaskcastError('handler', `a ${event} listener threw: ${e?.message ?? e}`, { cause: e }));
        else console.error(e);
      }
    }
  }

  /** Calls an app handler; a throw is reported and does not break the bookkeeping. */
  _call(sub, name, value) {
    const fn = sub.handlers[name];
    if (typeof fn !== 'function') return;
    try {
      fn(value);
    } catch (e) {
      this._emit('error', new TaskcastError('handler', `${name} for ${sub.channel} threw: ${e?.message ?? e}`, { cause: e }));
    }
  }

  /** One timer per name; setting it again replaces it. Long delays are re-armed in steps. */
  _later(name, ms, fn) {
    this._clear(name);
    const due = Date.now() + ms;
    const arm = () => {
      const left = due - Date.now();
      const id = setTimeout(() => {
        if (this._timers.get(name) !== id) return;
        if (due - Date.now() > 0) return arm();
        this._timers.delete(name);
        fn();
      }, Math.min(Math.max(left, 0), MAX_TIMER_MS));
      this._timers.set(name, id);
    };
    arm();
  }

  _clear(name) {
    const id = this._timers.get(name);
    if (id !== undefined) clearTimeout(id);
    this._timers.delete(name);
  }

  _clearTimers() {
    for (const id of this._timers.values()) clearTimeout(id);
    this._timers.clear();
  }
}

/** `http(s)://` becomes `ws(s)://`; a relative URL resolves against the page. */
function wsUrl(url) {
  const base = globalThis.location?.href;
  const u = new URL(String(url), base);
  if (u.protocol === 'http:') u.protocol = 'ws:';
  else if (u.protocol === 'https:') u.protocol = 'wss:';
  if (u.protocol !== 'ws:' && u.protocol !== 'wss:') throw new TypeError(`connect: url must be ws(s):// or http(s)://, got ${url}`);
  return u.toString();
}
