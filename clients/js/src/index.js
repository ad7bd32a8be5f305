// taskcast-client: the browser (and Node >= 20) side of taskcast's protocol.
//
// One file, no dependencies, so taskcast's development mode can serve it to
// its demo page as is. The pure parts (backoff, token expiry, what a close
// code means, per-channel positions) are exported for the unit tests.
//
// Protocol: docs/protocol.md (in-band authentication, messages, channels
// with `since` and `recovered`, close codes).

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
  // In-band authentication: the server must answer `auth` within this.
  authTimeoutMs: 10_000,
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
    case 4003: // the token was refused (in-band auth or refresh): the reason says why
      return { reconnect: false, delayMs: 0, error: 'auth_failed' };
    case 4009: // the app's server disconnected this user for good (sign-out, ban)
      return { reconnect: false, delayMs: 0, error: 'disconnected' };
    case 4001: // token expired: a new token, at once the first time
    case 4011: // the app's server wants a fresh token (revoked, grants changed)
      return { reconnect: true, delayMs: attempt === 0 ? 0 : backoff(), error: null };
    case 4008: // no auth message in time: a slow network or a stuck getToken
      return { reconnect: true, delayMs: backoff(), error: 'auth_timeout' };
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

  /**
   * Starts from a known position (a server-rendered `{epoch, offset}`): the
   * first subscribe asks for what came after it, as a resubscribe would.
   */
  start(since) {
    this.epoch = since.epoch;
    this.offset = since.offset;
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

/** A valid `since`: `{epoch, offset}` as `subscribed` and the position API give it. */
export function isValidSince(since) {
  return (
    since !== null &&
    typeof since === 'object' &&
    typeof since.epoch === 'string' &&
    since.epoch !== '' &&
    Number.isSafeInteger(since.offset) &&
    since.offset >= 0
  );
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

/**
 * One channel as the server sees it: one subscription, whatever the number
 * of listeners (`Subscription`s) the app holds on it.
 */
class Channel {
  constructor(name) {
    this.name = name;
    this.position = new ChannelPosition();
    /** The Subscriptions listening; the channel is left when the last one goes. */
    this.listeners = new Set();
    /** 'subscribing' | 'subscribed' | 'refused' (forbidden, or dropped by the server). */
    this.state = 'subscribing';
    /** The token generation a refusal happened under: retried only with a newer token. */
    this.refusedGen = -1;
    /** Was refused: the next `subscribed` tells listeners to refetch. */
    this.wasRefused = false;
    /** Subscribe with a subscription token (a listener's `token`, or getSubscriptionToken). */
    this.useSubToken = false;
  }
}

/**
 * The app's handle on a channel. Several handles on one channel share one
 * server subscription; each gets every message once.
 */
export class Subscription {
  constructor(client, channel, handlers) {
    /** The channel name; null for subscribeUser() until the token names the user. */
    this.channel = channel;
    this.handlers = handlers;
    /** False after unsubscribe(). */
    this.active = true;
    this._client = client;
    /** The shared Channel, once attached. */
    this._ch = null;
    /** A `since` for a channel already live: messages up to it were seen by the app already. */
    this._floor = null;
  }

  get epoch() {
    return this._ch?.position.epoch ?? null;
  }

  get offset() {
    return this._ch?.position.offset ?? null;
  }

  /** 'subscribing' | 'subscribed' | 'refused' | 'closed'. */
  get state() {
    if (!this.active) return 'closed';
    return this._ch?.state ?? 'subscribing';
  }

  unsubscribe() {
    if (!this.active) return;
    this.active = false;
    this._client._release(this);
  }
}

export class Client {
  constructor(options) {
    if (!options || typeof options.getToken !== 'function') throw new TypeError('connect: getToken must be a function');
    if (!options.url) throw new TypeError('connect: url is required');
    // A client created during server rendering (a module-level singleton in
    // a "use client" file runs in Next's server too, which has a global
    // WebSocket) would connect from the server, without the user's session.
    if (!options.WebSocket && typeof window === 'undefined') {
      throw new TypeError(
        'connect: no window here (server rendering?): create the client in the browser, e.g. in useEffect or with ' +
          'taskcast-client/react, or pass { WebSocket } explicitly to run it in Node',
      );
    }
    if (options.getSubscriptionToken !== undefined && typeof options.getSubscriptionToken !== 'function') {
      throw new TypeError('connect: getSubscriptionToken must be a function');
    }
    this._url = wsUrl(options.url);
    this._getToken = options.getToken;
    this._getSubscriptionToken = options.getSubscriptionToken ?? null;
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== 'function') {
      throw new TypeError('connect: no global WebSocket here: pass one, e.g. { WebSocket } from the "ws" package');
    }
    this._opts = {
      ...DEFAULTS,
      ...Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)),
      backoff: { ...DEFAULTS.backoff, ...(options.backoff ?? {}) },
    };
    // By default the token travels in the first message, not the URL: URLs
    // end up in browser consoles, proxy logs and history.
    this._tokenInUrl = options.tokenInUrl === true;
    this._debug = typeof options.debug === 'function' ? options.debug : options.debug ? (...a) => console.debug('taskcast:', ...a) : null;
    this._random = options.random ?? Math.random;
    /** 'connecting' | 'open' | 'closed' | 'error' (stopped by a refusal; see lastError). */
    this.state = 'connecting';
    /** The last connection-level error (a refusal, a close the app should hear about); null once open again. */
    this.lastError = null;
    this._status = Object.freeze({ state: this.state, lastError: null });
    /** `user:<sub>`, from the connection token's `sub` (the server puts
     * every connection in it; subscribe to it to get its messages). */
    this.userChannel = null;
    this._listeners = new Map();
    this._channels = new Map(); // name -> Channel
    this._userSubs = new Set(); // subscribeUser() before the user channel is known
    this._ws = null;
    this._token = null;
    /** Bumped whenever the connection token changes: a refused channel is retried under a new one. */
    this._tokenGen = 0;
    /** In-band authentication of this socket is under way (no auth_ok yet). */
    this._authing = false;
    this._attempt = 0;
    this._nextTokenReason = 'connect';
    this._refreshWaiters = [];
    this._timers = new Map(); // name -> timeout id
    if (options.onBroadcast) this.on('message', options.onBroadcast);
    // The browser knows when the network is back: do not wait for the backoff.
    this._onOnline = () => this._online();
    globalThis.addEventListener?.('online', this._onOnline);
    // Next microtask: listeners added right after connect() see 'connecting',
    // and a client closed at once (React StrictMode) never opens a socket.
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

  /** `{state, lastError}`, a new frozen object on each change (for useSyncExternalStore). */
  get status() {
    return this._status;
  }

  /**
   * Joins a channel. Its messages reach `onMessage` once each, in order, also
   * across reconnects (resubscribed with `since`); `onResync` is called when
   * the app must refetch. Subscribing again to a channel shares its server
   * subscription; the channel is left when the last handle unsubscribes.
   */
  subscribe(channel, handlers = {}) {
    if (!isValidChannel(channel)) throw new TypeError(`subscribe: invalid channel name ${JSON.stringify(channel)}`);
    if (handlers.since !== undefined && handlers.since !== null && !isValidSince(handlers.since)) {
      throw new TypeError('subscribe: since must be {epoch: string, offset: integer >= 0}');
    }
    if (this.state === 'closed' || this.state === 'error') throw new Error(`subscribe: client is ${this.state}`);
    const sub = new Subscription(this, channel, handlers);
    this._attach(sub, channel);
    return sub;
  }

  /** Joins the connection's own `user:<sub>` channel (named by the token's `sub`). */
  subscribeUser(handlers = {}) {
    if (this.userChannel) return this.subscribe(this.userChannel, handlers);
    const sub = new Subscription(this, null, handlers);
    this._userSubs.add(sub);
    return sub;
  }

  /**
   * Fetches a fresh token now and sends it in band (or connects with it when
   * disconnected). Call it after the app changed the user's grants (added
   * to a project): refused channels are retried under the new token.
   * Resolves once the server accepted the token.
   */
  refreshToken() {
    if (this.state === 'closed' || this.state === 'error') return Promise.reject(new Error(`refreshToken: client is ${this.state}`));
    const done = new Promise((resolve, reject) => this._refreshWaiters.push({ resolve, reject }));
    if (this.state === 'open' && !this._authing) {
      this._refresh(this._token, true);
    } else if (this._timers.has('reconnect')) {
      this._clear('reconnect');
      this._connect();
    } // else a connect is under way and fetches a token of its own
    return done;
  }

  /** Stops for good: no reconnect. */
  close() {
    if (this.state === 'closed') return;
    this._stop('closed');
    this._emit('closed', {});
  }

  // ------------------------------------------------------------ connection

  async _connect() {
    if (this.state === 'closed' || this.state === 'error') return;
    this._setState('connecting');
    this._emit('connecting', { attempt: this._attempt });
    let token;
    try {
      token = await this._getToken({ reason: this._nextTokenReason });
      if (typeof token !== 'string' || token === '') throw new Error('getToken returned no token');
    } catch (e) {
      if (this.state === 'closed' || this.state === 'error') return;
      this._fail(new TaskcastError('token', `getToken failed: ${e?.message ?? e}`, { cause: e }));
      return this._scheduleReconnect(backoffDelay(this._attempt++, this._opts.backoff, this._random));
    }
    if (this.state === 'closed' || this.state === 'error') return;
    this._nextTokenReason = 'connect';
    this._setToken(token);
    const url = new URL(this._url);
    if (this._tokenInUrl) url.searchParams.set('token', token);
    else url.searchParams.set('auth', 'message');
    this._log(`connecting to ${redact(url)}`);
    let ws;
    try {
      ws = new this._WebSocket(url.toString());
    } catch (e) {
      this._fail(new TaskcastError('url', `cannot open WebSocket to ${redact(url)}: ${redact(e?.message ?? e)}`));
      return this._stop('error');
    }
    this._ws = ws;
    this._authing = !this._tokenInUrl;
    ws.onopen = () => ws === this._ws && this._onSocketOpen();
    ws.onmessage = (ev) => ws === this._ws && this._onMessage(ev.data);
    ws.onclose = (ev) => ws === this._ws && this._onClose(ev.code, ev.reason ?? '');
    ws.onerror = () => {}; // a close event follows, with the code
  }

  _onSocketOpen() {
    if (!this._authing) return this._onOpen();
    // In-band authentication: the token is the first message.
    this._send({ type: 'auth', token: this._token });
    this._later('auth', this._opts.authTimeoutMs, () => this._abandon(4008, 'no auth_ok from the server in time'));
  }

  /** The connection is usable: authenticated (at the upgrade or in band). */
  _onOpen() {
    this._authing = false;
    this._clear('auth');
    this.lastError = null;
    this._setState('open');
    this._later('stable', this._opts.stableMs, () => {
      this._attempt = 0;
    });
    this._scheduleRefresh(this._token);
    this._schedulePing();
    this._log('open');
    this._emit('connected', {});
    for (const ch of this._channels.values()) {
      if (ch.state === 'refused' && ch.refusedGen === this._tokenGen) continue; // same token, same answer
      this._sendSubscribe(ch);
    }
    this._settleRefresh(null);
  }

  _onClose(code, reason, why) {
    this._ws = null;
    this._authing = false;
    this._clearTimers();
    for (const ch of this._channels.values()) ch.position.disconnected();
    if (this.state === 'closed' || this.state === 'error') return;
    const policy = closePolicy(code, this._attempt, this._opts, this._random);
    this._log(`closed ${code}${reason ? ` (${reason})` : ''}${why ? `: ${why}` : ''}`);
    this._setState('connecting');
    this._emit('disconnected', { code, reason: why ?? reason, willReconnect: policy.reconnect, delayMs: policy.delayMs });
    if (code === 4011) this._nextTokenReason = 'reauthenticate';
    if (code === 4001) this._nextTokenReason = 'expired';
    if (policy.error) {
      const said = reason ? `: ${reason}` : '';
      const msg = {
        auth_failed: `the server refused the token (4003${said}): not reconnecting`,
        disconnected: `the server disconnected this user (4009${said}): not reconnecting`,
        auth_timeout: `authentication timed out (${code}${said})`,
        rate_limited: `the server closed the connection for sending too many messages (1008${said})`,
        message_too_big: `the server closed the connection for a message over its size limit (1009${said})`,
        protocol_error: `the server closed the connection for a protocol error (${code}${said})`,
      }[policy.error];
      this._fail(new TaskcastError(policy.error, msg, { closeCode: code, closeReason: reason }));
    }
    if (!policy.reconnect) {
      this._settleRefresh(this.lastError);
      return this._stop('error');
    }
    this._attempt++;
    this._scheduleReconnect(policy.delayMs);
  }

  /** Gives up on this socket (no answer in time) as if the network had dropped it with `code`. */
  _abandon(code, why) {
    const ws = this._ws;
    this._ws = null;
    try {
      ws?.close();
    } catch {
      // ignore
    }
    this._onClose(code, '', why);
  }

  _scheduleReconnect(delayMs) {
    if (this.state === 'closed' || this.state === 'error') return;
    this._setState('connecting');
    this._later('reconnect', delayMs, () => this._connect());
  }

  /** The browser's `online` event: reconnect now instead of at the end of the backoff; probe an open socket. */
  _online() {
    if (this._timers.has('reconnect')) {
      this._log('online: reconnecting now');
      this._clear('reconnect');
      this._attempt = 0;
      return this._connect();
    }
    if (this.state === 'open' && this._opts.pingIntervalMs && !this._timers.has('pong')) {
      // The socket may have died with the old network: ask, and give up on it soon if nothing comes.
      this._ping();
    }
  }

  _stop(state) {
    this._setState(state);
    this._clearTimers();
    globalThis.removeEventListener?.('online', this._onOnline);
    this._settleRefresh(new Error(`client is ${state}`));
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

  _setToken(token) {
    if (token === this._token) return;
    this._token = token;
    this._tokenGen++;
    this._learnUserChannel(token);
  }

  _scheduleRefresh(token) {
    if (this._opts.refreshBeforeMs === false) return;
    const delay = refreshDelay(tokenLifetime(token), Date.now(), this._opts.refreshBeforeMs);
    if (delay === null) return;
    this._later('refresh', delay, () => this._refresh(token));
  }

  /** Sends a fresh token in band. `forced` (refreshToken()): any other token will do, not only a later exp. */
  async _refresh(current, forced = false) {
    const ws = this._ws;
    let fresh;
    try {
      fresh = await this._getToken({ reason: 'refresh' });
    } catch (e) {
      if (ws !== this._ws) return;
      const err = new TaskcastError('token', `getToken failed: ${e?.message ?? e}`, { cause: e });
      this._fail(err);
      if (forced) return this._settleRefresh(err);
      return this._later('refresh', this._opts.tokenRetryMs, () => this._refresh(current));
    }
    if (ws !== this._ws) return;
    if (typeof fresh !== 'string' || fresh === '' || fresh === current) {
      if (forced) return this._settleRefresh(null); // nothing new to send: nothing changes
      return this._later('refresh', this._opts.tokenRetryMs, () => this._refresh(current));
    }
    // A cached token that is no newer would have us refresh in a tight loop.
    const oldExp = tokenLifetime(current)?.expMs ?? 0;
    const newExp = tokenLifetime(fresh)?.expMs ?? 0;
    if (!forced && newExp <= oldExp) {
      return this._later('refresh', this._opts.tokenRetryMs, () => this._refresh(current));
    }
    this._pendingToken = fresh;
    this._send({ type: 'auth', token: fresh });
  }

  _settleRefresh(error) {
    const waiters = this._refreshWaiters;
    this._refreshWaiters = [];
    for (const w of waiters) (error ? w.reject(error) : w.resolve());
  }

  // ------------------------------------------------------------ liveness

  _schedulePing() {
    if (!this._opts.pingIntervalMs) return;
    this._later('ping', this._opts.pingIntervalMs, () => this._ping());
  }

  _ping() {
    this._send({ type: 'ping' });
    // Nothing arrived: the network is gone without a close (a lid closed,
    // Wi-Fi switched). Do not wait for the browser to notice.
    this._later('pong', this._opts.pongTimeoutMs, () => this._abandon(1006, 'no answer from the server'));
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
      if (!s.active) continue;
      s.channel = channel;
      this._attach(s, channel);
    }
  }

  /** Adds a handle to its channel, joining the channel on the server if it is the first. */
  _attach(sub, name) {
    let ch = this._channels.get(name);
    const since = isValidSince(sub.handlers.since) ? sub.handlers.since : null;
    if (ch) {
      ch.listeners.add(sub);
      sub._ch = ch;
      if (ch.leaving) ch.leaving = false; // a release in the same tick (StrictMode): the subscription stays
      if (since) sub._floor = since;
      // Already answered: this handle learns where the channel stands, after
      // subscribe() has returned it.
      if (ch.state === 'subscribed') queueMicrotask(() => sub.active && this._joined(ch, sub));
      return;
    }
    ch = new Channel(name);
    if (since) ch.position.start(since);
    ch.useSubToken = sub.handlers.token !== undefined;
    ch.listeners.add(sub);
    sub._ch = ch;
    this._channels.set(name, ch);
    if (this.state === 'open' && !this._authing) this._sendSubscribe(ch);
  }

  /** A handle that joined a live channel: its `since` against the channel's position. */
  _joined(ch, sub) {
    const pos = ch.position;
    this._callOne(sub, 'onSubscribed', { channel: ch.name, epoch: pos.epoch, offset: pos.offset, recovered: true });
    const floor = sub._floor;
    if (!floor) return;
    if (floor.epoch !== pos.epoch || floor.offset < pos.offset) {
      // Messages between its `since` and now went to the others only.
      sub._floor = null;
      this._callOne(sub, 'onResync', { channel: ch.name, epoch: pos.epoch, offset: pos.offset, reason: 'not_recovered' });
    }
  }

  /** A handle let go. The channel is left one microtask later, if no handle came back (StrictMode remounts at once). */
  _release(sub) {
    this._userSubs.delete(sub);
    const ch = sub._ch;
    if (!ch || this._channels.get(ch.name) !== ch) return;
    ch.listeners.delete(sub);
    if (ch.listeners.size > 0) return;
    ch.leaving = true;
    queueMicrotask(() => {
      if (!ch.leaving || ch.listeners.size > 0 || this._channels.get(ch.name) !== ch) return;
      this._channels.delete(ch.name);
      this._log(`leaving ${ch.name}`);
      if (this.state === 'open' && ch.state !== 'refused') this._send({ type: 'unsubscribe', channel: ch.name });
    });
  }

  _onSubscribed(msg) {
    const ch = this._channels.get(msg.channel);
    if (!ch) return;
    if (!ch.position.pending) {
      // Unasked: the server lost messages it could not replay (cluster mode,
      // after a Redis outage): take the new position and refetch.
      if (msg.recovered === false && typeof msg.epoch === 'string') {
        ch.position.subscribed(msg);
        this._resync(ch, 'not_recovered');
      }
      return;
    }
    const hadPosition = ch.position.epoch !== null;
    let resync = ch.position.subscribed(msg);
    const reason = resync ? 'not_recovered' : 'granted';
    // Refused before, granted now: whatever the app shows for it is stale.
    if (ch.wasRefused && !hadPosition) resync = true;
    ch.state = 'subscribed';
    ch.wasRefused = false;
    this._log(`subscribed ${ch.name} at ${msg.offset}${msg.recovered ? ' (recovered)' : ''}`);
    const info = { channel: ch.name, epoch: msg.epoch, offset: msg.offset, recovered: msg.recovered === true };
    for (const sub of [...ch.listeners]) {
      this._callOne(sub, 'onSubscribed', info);
      if (resync) sub._floor = null; // the refetch covers it
      const floor = sub._floor;
      if (floor && (floor.epoch !== msg.epoch || floor.offset < msg.offset) && !resync) {
        sub._floor = null;
        this._callOne(sub, 'onResync', { channel: ch.name, epoch: msg.epoch, offset: msg.offset, reason: 'not_recovered' });
      }
    }
    if (resync) this._resync(ch, reason);
  }

  _onChannelMessage(msg) {
    const ch = this._channels.get(msg.channel);
    if (!ch) return;
    const verdict = ch.position.message(msg.offset);
    if (verdict === 'drop') return;
    for (const sub of [...ch.listeners]) {
      const floor = sub._floor;
      if (floor) {
        if (floor.epoch === ch.position.epoch && msg.offset <= floor.offset) continue; // this handle has it already
        sub._floor = null;
      }
      this._callOne(sub, 'onMessage', msg);
    }
    if (verdict === 'gap') this._resync(ch, 'gap');
  }

  _onUnsubscribed(msg) {
    const ch = this._channels.get(msg.channel);
    if (!ch || !msg.reason) return; // our own unsubscribe's answer
    // A join only a subscription token granted ends when that token
    // expires: renew it with a fresh one at once, from where we were
    // (`since`), so nothing is missed. The app hears nothing of it.
    if (msg.reason === 'subscription token expired' && this._subTokenSource(ch)) {
      ch.useSubToken = true;
      this._log(`${ch.name}: subscription token expired; renewing it`);
      return this._sendSubscribe(ch);
    }
    // The server ended it (the member was removed, a refreshed token no
    // longer grants it). The handles stay: a newer token may grant it again.
    this._refuse(ch, new TaskcastError('unsubscribed', `left ${msg.channel}: ${msg.reason}`, { channel: msg.channel, reason: msg.reason }));
  }

  /** The channel is refused under the current token: tell its handles; retried with a newer token. */
  _refuse(ch, err) {
    ch.position.pending = false;
    ch.state = 'refused';
    ch.wasRefused = true;
    ch.refusedGen = this._tokenGen;
    ch.useSubToken = [...ch.listeners].some((s) => s.handlers.token !== undefined);
    this._log(`refused ${ch.name}: ${err.code}`);
    this._call(ch, 'onError', err);
    this._emit('error', err);
  }

  _onServerError(payload) {
    const err = new TaskcastError(payload.code ?? 'server_error', payload.message ?? 'error from the server', {
      channel: payload.channel,
    });
    const ch = payload.channel ? this._channels.get(payload.channel) : null;
    if (payload.code === 'invalid_token' && this._pendingToken) {
      this._pendingToken = null;
      this._settleRefresh(err);
    }
    if (!ch) return this._emit('error', err);
    ch.position.pending = false;
    if (payload.code === 'forbidden') {
      // Not granted by the connection token: ask the app's server for a
      // subscription token once, then report the refusal.
      if (!ch.useSubToken && this._subTokenSource(ch)) {
        ch.useSubToken = true;
        this._log(`${ch.name} not granted by the connection token: asking for a subscription token`);
        return this._sendSubscribe(ch);
      }
      return this._refuse(ch, err);
    }
    this._call(ch, 'onError', err);
    // Cluster mode, Redis unreachable for a moment: ask again after a
    // random 1-3 s (on this connection; a reconnect resubscribes anyway).
    if (payload.code === 'unavailable') {
      const ws = this._ws;
      setTimeout(() => {
        if (ws === this._ws && this._channels.get(ch.name) === ch) this._sendSubscribe(ch);
      }, 1000 + Math.floor(this._random() * 2000));
    }
    this._emit('error', err);
  }

  _onAuthOk() {
    if (this._authing) return this._onOpen();
    const token = this._pendingToken;
    this._pendingToken = null;
    if (!token) return;
    this._setToken(token);
    this._log('token refreshed');
    this._emit('refreshed', { expMs: tokenLifetime(token)?.expMs ?? null });
    this._scheduleRefresh(token);
    // New grants may have come with it.
    for (const ch of this._channels.values()) {
      if (ch.state === 'refused' && ch.refusedGen !== this._tokenGen) this._sendSubscribe(ch);
    }
    this._settleRefresh(null);
  }

  _resync(ch, reason) {
    this._call(ch, 'onResync', { channel: ch.name, epoch: ch.position.epoch, offset: ch.position.offset, reason });
  }

  /** Where a subscription token for this channel comes from: a handle's `token`, else getSubscriptionToken. */
  _subTokenSource(ch) {
    for (const sub of ch.listeners) {
      const { token } = sub.handlers;
      if (typeof token === 'function') return token;
      if (typeof token === 'string') return () => token;
    }
    return this._getSubscriptionToken;
  }

  async _sendSubscribe(ch) {
    const ws = this._ws;
    const msg = { type: 'subscribe', channel: ch.name };
    const since = ch.position.since();
    if (since) msg.since = since;
    ch.position.requested();
    if (ch.state !== 'subscribed') ch.state = 'subscribing';
    const source = ch.useSubToken ? this._subTokenSource(ch) : null;
    if (source) {
      try {
        msg.token = await source(ch.name);
        if (typeof msg.token !== 'string' || msg.token === '') throw new Error('no token');
      } catch (e) {
        if (ws !== this._ws || this._channels.get(ch.name) !== ch) return;
        return this._refuse(ch, new TaskcastError('token', `subscription token for ${ch.name}: ${e?.message ?? e}`, { channel: ch.name, cause: e }));
      }
      if (ws !== this._ws || this._channels.get(ch.name) !== ch) return;
    }
    this._log(`subscribe ${ch.name}${since ? ` since ${since.offset}` : ''}${source ? ' with a subscription token' : ''}`);
    this._send(msg);
  }

  _send(obj) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return false;
    ws.send(JSON.stringify(obj));
    return true;
  }

  // ------------------------------------------------------------ plumbing

  _setState(state) {
    if (this.state === 'closed' || this.state === 'error' || this.state === state) return;
    this.state = state;
    this._publishStatus();
  }

  _publishStatus() {
    if (this._status.state === this.state && this._status.lastError === this.lastError) return;
    this._status = Object.freeze({ state: this.state, lastError: this.lastError });
    this._emit('state', this._status);
  }

  /** A connection-level error: kept as lastError and emitted. */
  _fail(err) {
    this.lastError = err;
    this._publishStatus();
    this._emit('error', err);
  }

  _log(text) {
    if (this._debug) this._debug(text);
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

  /** Calls a handler on every handle of a channel. */
  _call(ch, name, value) {
    for (const sub of [...ch.listeners]) this._callOne(sub, name, value);
  }

  /** Calls an app handler; a throw is reported and does not break the bookkeeping. */
  _callOne(sub, name, value) {
    const fn = sub.handlers[name];
    if (typeof fn !== 'function' || !sub.active) return;
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
  if (u.protocol !== 'ws:' && u.protocol !== 'wss:') throw new TypeError(`connect: url must be ws(s):// or http(s)://, got ${redact(url)}`);
  return u.toString();
}

/** A URL (or a message quoting one) with any `token` parameter's value hidden: never print a token. */
export function redact(text) {
  return String(text).replace(/([?&]token=)[^&\s'"]*/gi, '$1[redacted]');
}
