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
 * `users` (their `user:` channels). Resolves to the server's answer
 * (`{status, recipients, channels?}`); throws a BroadcastError on any other
 * answer, on no answer within `timeoutMs` (default 2000), or when taskcast
 * cannot be reached. In a Server Action whose database write has already
 * committed, prefer tryBroadcast(), which never throws.
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
  fetch: fetchImpl = globalThis.fetch,
} = {}) {
  const bad = (message) => new BroadcastError(0, 'bad_arguments', `broadcast: ${message}`);
  if (!url) throw bad('url is required (or set TASKCAST_URL)');
  if (!apiKey) throw bad('apiKey is required (or set BROADCAST_API_KEY, the same key taskcast has)');
  if (typeof type !== 'string' || type === '') throw bad('type must be a non-empty string');
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) throw bad('timeoutMs must be a positive number');
  const body = { type, data };
  if (channel !== undefined) body.channel = channel;
  if (channels !== undefined) body.channels = channels;
  if (users !== undefined) body.users = users;
  const endpoint = broadcastUrl(url);
  const timeout = AbortSignal.timeout(timeoutMs);
  let res;
  let text;
  try {
    res = await fetchImpl(endpoint, {
      method: 'POST',
      headers: { Authorization: `Bearer ${apiKey}`, 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
      signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
    });
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
