// taskcast-client/server: publishing from your server (a Next.js Server
// Action, a route handler, a job). Uses the global fetch (Node >= 18).
// Never import this in browser code: it carries the publisher API key
// (BROADCAST_API_KEY). Bundlers that honour the "browser" export condition
// get a module that throws at load; the check below catches the others.
if (typeof window !== 'undefined' && typeof document !== 'undefined') {
  throw new Error(
    'taskcast-client/server was loaded in a browser: import it only on the server (Server Actions, route handlers); ' +
      'it carries BROADCAST_API_KEY',
  );
}

/** How long broadcast() waits for taskcast by default: a Server Action must not hang on it. */
export const DEFAULT_TIMEOUT_MS = 2000;

/**
 * A broadcast that did not go through: an answer other than 2xx (`status`
 * is its HTTP status), or no answer at all (`status` 0, `code` `timeout` or
 * `unreachable`), or bad arguments (`status` 0, `code` `bad_arguments`).
 */
export class BroadcastError extends Error {
  constructor(status, code, message, retryAfter = null, options = undefined) {
    super(message, options);
    this.name = 'BroadcastError';
    /** The HTTP status (400, 401, 403, 413, 415, 429, 503), or 0 without an answer. */
    this.status = status;
    /** The server's short error code (`bad_request`, `unauthorized`, ...), or `timeout`, `unreachable`, `bad_arguments`. */
    this.code = code;
    /** Seconds, from Retry-After (429/503), else null. */
    this.retryAfter = retryAfter;
  }
}

const env = (name) => globalThis.process?.env?.[name];

/** The /api/broadcast endpoint for a taskcast base URL (or the endpoint itself). */
export function broadcastUrl(url) {
  const u = new URL(String(url));
  if (u.protocol === 'ws:') u.protocol = 'http:';
  if (u.protocol === 'wss:') u.protocol = 'https:';
  if (/\/api\/broadcast\/?$/.test(u.pathname)) return u.toString();
  if (u.pathname.endsWith('/ws')) u.pathname = u.pathname.slice(0, -2);
  if (!u.pathname.endsWith('/')) u.pathname += '/';
  return new URL('api/broadcast', u).toString();
}

/**
 * Publishes `{type, data}`: to everyone, or to `channel`, `channels` or
 * `users` (their `user:` channels); a target given as null throws rather
 * than reach everyone. Resolves to the server's answer
 * (`{status, recipients, channels?, duplicate?}`); throws a BroadcastError on
 * any other answer, on no answer within `timeoutMs` (default 2000, retries
 * included), or when taskcast cannot be reached. In a Server Action whose
 * database write has already committed, prefer tryBroadcast(), which never
 * throws.
 *
 * Every call carries an `Idempotency-Key` (a random UUID unless you pass
 * `idempotencyKey`; `null` sends none), so a retry never publishes twice:
 * a network error or a 503 is retried `retries` times (default 2) with the
 * same key while `timeoutMs` lasts, and the server answers a repeat with the
 * first publish's offsets and `duplicate: true`. Pass your own key (say, the
 * id of the change in your database) to make retries of the whole Server
 * Action safe too.
 */
export async function broadcast({
  url = env('TASKCAST_URL'),
  apiKey = env('BROADCAST_API_KEY'),
  type,
  data = null,
  channel,
  channels,
  users,
  signal,
  timeoutMs = DEFAULT_TIMEOUT_MS,
  idempotencyKey = globalThis.crypto?.randomUUID?.() ?? null,
  retries = 2,
  fetch: fetchImpl = globalThis.fetch,
} = {}) {
  const bad = (message) => new BroadcastError(0, 'bad_arguments', `broadcast: ${message}`);
  if (!url) throw bad('url is required (or set TASKCAST_URL)');
  if (!apiKey) throw bad('apiKey is required (or set BROADCAST_API_KEY, the same key taskcast has)');
  if (typeof type !== 'string' || type === '') throw bad('type must be a non-empty string');
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) throw bad('timeoutMs must be a positive number');
  // Fail closed: a target computed as null (`channel: id ?? null`) must not
  // become a broadcast to everyone. Leave the key out (undefined) for that.
  for (const [name, value] of Object.entries({ channel, channels, users })) {
    if (value === null) {
      throw bad(`${name} is null (leave out channel, channels and users to reach everyone)`);
    }
  }
  const body = { type, data };
  if (channel !== undefined) body.channel = channel;
  if (channels !== undefined) body.channels = channels;
  if (users !== undefined) body.users = users;
  const endpoint = broadcastUrl(url);
  const timeout = AbortSignal.timeout(timeoutMs);
  let res;
  let text;
  try {
    const headers = { Authorization: `Bearer ${apiKey}`, 'Content-Type': 'application/json' };
    if (idempotencyKey) headers['Idempotency-Key'] = String(idempotencyKey);
    const init = { method: 'POST', headers, body: JSON.stringify(body), signal: signal ? AbortSignal.any([signal, timeout]) : timeout };
    // Without a key a retry could publish twice: then there is none.
    res = await withRetries(() => fetchImpl(endpoint, init), idempotencyKey ? retries : 0, init.signal);
    text = await res.text();
  } catch (e) {
    if (timeout.aborted) {
      throw new BroadcastError(0, 'timeout', `taskcast did not answer within ${timeoutMs} ms (${new URL(endpoint).origin})`, null, { cause: e });
    }
    if (signal?.aborted) throw e; // the caller's own abort
    const why = e?.cause?.code ?? e?.message ?? String(e);
    throw new BroadcastError(0, 'unreachable', `cannot reach taskcast at ${new URL(endpoint).origin}: ${why}`, null, { cause: e });
  }
  let answer = null;
  try {
    answer = text ? JSON.parse(text) : null;
  } catch {
    // not JSON (a proxy's error page): reported below with the status
  }
  if (!res.ok) {
    const retry = Number.parseInt(res.headers.get('retry-after') ?? '', 10);
    const message = answer?.message ?? `taskcast answered ${res.status}${text ? `: ${text.slice(0, 200)}` : ''}`;
    throw new BroadcastError(res.status, answer?.error ?? null, message, Number.isFinite(retry) ? retry : null);
  }
  return answer;
}

/**
 * broadcast() that never throws: resolves to `{ ok: true, answer }` or
 * `{ ok: false, error }` (a BroadcastError). For a Server Action that has
 * already written to its database: a taskcast outage must not fail it (the
 * tabs refetch when they reconnect).
 */
export async function tryBroadcast(options) {
  try {
    return { ok: true, answer: await broadcast(options) };
  } catch (e) {
    const error = e instanceof BroadcastError ? e : new BroadcastError(0, 'aborted', e?.message ?? String(e), null, { cause: e });
    return { ok: false, error };
  }
}

/** Channel names: the same rule as the server and the browser client. */
const CHANNEL_RE = /^[A-Za-z0-9_.-]+:[A-Za-z0-9_.:-]*$/;

/**
 * A subscription token for `channel`, signed by BetterAuth's own key (its
 * jwt plugin, `auth.api.signJWT`), which taskcast already checks through
 * JWKS_URL: no shared secret. Its claims are `sub` (the user), `channel`,
 * `iat` and `exp` (`expiresIn` seconds, default 600); BetterAuth adds its
 * `iss` and `aud`. Hand it to the browser from a route that has checked the
 * user may see the channel (getSubscriptionToken in the browser client).
 */
export async function mintSubscriptionToken({ auth, userId, channel, expiresIn = 600 } = {}) {
  if (typeof auth?.api?.signJWT !== 'function') {
    throw new TypeError("mintSubscriptionToken: auth.api.signJWT is missing: pass your betterAuth() instance, with the jwt() plugin");
  }
  if (typeof userId !== 'string' || userId === '') throw new TypeError('mintSubscriptionToken: userId must be a non-empty string');
  if (typeof channel !== 'string' || channel.length > 128 || !CHANNEL_RE.test(channel)) {
    throw new TypeError(`mintSubscriptionToken: invalid channel name ${JSON.stringify(channel)}`);
  }
  if (!Number.isInteger(expiresIn) || expiresIn <= 0) throw new TypeError('mintSubscriptionToken: expiresIn must be a positive whole number of seconds');
  const iat = Math.floor(Date.now() / 1000);
  const { token } = await auth.api.signJWT({ body: { payload: { sub: userId, channel, iat, exp: iat + expiresIn } } });
  if (typeof token !== 'string' || token === '') throw new Error('mintSubscriptionToken: auth.api.signJWT returned no token');
  return token;
}

/** How long a retry waits at most (Retry-After is capped to this). */
const MAX_RETRY_DELAY_MS = 2000;

/**
 * Runs `attempt` (a fetch) again after a network error or a 503, at most
 * `retries` more times, after Retry-After (capped) or 200 ms, 400 ms, ...
 * An abort through `signal` is never retried.
 */
async function withRetries(attempt, retries, signal) {
  for (let n = 0; ; n++) {
    let res = null;
    let error = null;
    try {
      res = await attempt();
    } catch (e) {
      error = e;
    }
    const again = n < retries && !signal?.aborted && (error !== null || res.status === 503);
    if (!again) {
      if (error) throw error;
      return res;
    }
    const retryAfter = Number.parseFloat(res?.headers.get('retry-after') ?? '');
    const ms = Number.isFinite(retryAfter) ? retryAfter * 1000 : 200 * 2 ** n;
    await res?.body?.cancel?.();
    await new Promise((resolve) => setTimeout(resolve, Math.min(ms, MAX_RETRY_DELAY_MS)));
  }
}

// ------------------------------------------------------------------ server API

/** An answer other than 2xx from the server API (/api/unsubscribe, ...). */
export class ControlError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.name = 'ControlError';
    /** The HTTP status (400, 401, 403, 415, 503). */
    this.status = status;
    /** The server's short error code (`bad_request`, `forbidden`, ...). */
    this.code = code;
    /** Seconds, from Retry-After (503), else null. */
    this.retryAfter = retryAfter;
  }
}

/** taskcast's base URL (`http://host:port/`) from any of its URLs (`ws://.../ws`, `.../api/broadcast`). */
export function baseUrl(url) {
  const u = new URL(String(url));
  if (u.protocol === 'ws:') u.protocol = 'http:';
  if (u.protocol === 'wss:') u.protocol = 'https:';
  u.search = '';
  u.hash = '';
  u.pathname = u.pathname.replace(/\/api\/broadcast\/?$/, '/').replace(/\/ws\/?$/, '/');
  if (!u.pathname.endsWith('/')) u.pathname += '/';
  return u.toString();
}

/**
 * One server API call: the server's CONTROL_API_KEY as a Bearer token
 * (default: the CONTROL_API_KEY environment variable, else
 * BROADCAST_API_KEY — the same names, and the same fallback, as the
 * server). Resolves to the JSON answer; throws a ControlError on any other.
 */
async function control(method, path, body, {
  url = env('TASKCAST_URL'),
  apiKey = env('CONTROL_API_KEY') ?? env('BROADCAST_API_KEY'),
  signal,
  fetch: fetchImpl = globalThis.fetch,
} = {}) {
  if (!url) throw new TypeError(`${path}: url is required (or set TASKCAST_URL)`);
  if (!apiKey) throw new TypeError(`${path}: apiKey is required (or set CONTROL_API_KEY)`);
  const headers = { Authorization: `Bearer ${apiKey}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetchImpl(new URL(path, baseUrl(url)), {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  const text = await res.text();
  let answer = null;
  try {
    answer = text ? JSON.parse(text) : null;
  } catch {
    // not JSON (a proxy's error page): reported below with the status
  }
  if (!res.ok) {
    const retry = Number.parseInt(res.headers.get('retry-after') ?? '', 10);
    const message = answer?.message ?? `taskcast answered ${res.status}${text ? `: ${text.slice(0, 200)}` : ''}`;
    throw new ControlError(res.status, answer?.error ?? null, message, Number.isFinite(retry) ? retry : null);
  }
  return answer;
}

/**
 * Ends `user`'s subscriptions to `channel` (a name, or `ns:*`) on every
 * instance; each tab hears `{type: 'unsubscribed', channel, reason}`. Until
 * your app mints the user a token issued after this call (at least a second
 * later), they cannot join those channels again. Resolves to
 * `{status, unsubscribed}` (subscriptions ended on the instance that answered).
 */
export function unsubscribe({ user, channel, reason, ...options } = {}) {
  return control('POST', 'api/unsubscribe', { user, channel, ...(reason === undefined ? {} : { reason }) }, options);
}

/**
 * Closes all of `user`'s connections on every instance: with 4009 (the
 * client stops: sign-out, ban) unless `reconnect` is true, then 4011 (the
 * client gets a fresh token and reconnects). Resolves to `{status, disconnected}`.
 */
export function disconnect({ user, reconnect = false, reason, ...options } = {}) {
  return control('POST', 'api/disconnect', { user, reconnect, ...(reason === undefined ? {} : { reason }) }, options);
}

/**
 * Refuses `user`'s tokens issued before `issuedBefore` (a Date or unix
 * seconds; default: now) at every door, and closes their connections that
 * use one (4011). Resolves to `{status, issued_before, disconnected}`.
 */
export function revoke({ user, issuedBefore, ...options } = {}) {
  const body = { user };
  if (issuedBefore !== undefined) {
    body.issued_before = issuedBefore instanceof Date ? Math.floor(issuedBefore.getTime() / 1000) : issuedBefore;
  }
  return control('POST', 'api/revoke', body, options);
}

/**
 * A channel's position `{channel, epoch, offset, subscribers}`: render a
 * page from your database, hand `{epoch, offset}` to the browser, and its
 * `subscribe(channel, {since})` receives every update made in between.
 */
export function position(channel, options = {}) {
  return control('GET', `api/channels/${encodeURIComponent(channel)}`, undefined, options);
}

/**
 * The messages `channel` still holds after `since` (`{epoch, offset}` or
 * `'epoch:offset'`; all held ones without it), oldest first, at most
 * `limit` (1-1000, default 100): `{channel, epoch, offset, messages:
 * [{offset, type, payload}], complete}`. `complete: false` means part of
 * the range is gone (trimmed, expired, another epoch): refetch the state.
 */
export function history(channel, { since, limit, ...options } = {}) {
  const q = new URLSearchParams({ channel });
  if (since !== undefined && since !== null) {
    q.set('since', typeof since === 'string' ? since : `${since.epoch}:${since.offset}`);
  }
  if (limit !== undefined) q.set('limit', String(limit));
  return control('GET', `api/history?${q}`, undefined, options);
}
