// taskcast-client/server: publishing from your server (a Next.js Server
// Action, a route handler, a job). Uses the global fetch (Node >= 18).
// Never import this in browser code: it carries the publisher API key.

/** An answer other than 2xx from POST /api/broadcast. */
export class BroadcastError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.name = 'BroadcastError';
    /** The HTTP status (400, 401, 403, 413, 415, 429, 503). */
    this.status = status;
    /** The server's short error code (`bad_request`, `unauthorized`, ...). */
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
 * (`{status, recipients, channels?}`); throws a BroadcastError carrying the
 * server's message and status on any other answer.
 */
export async function broadcast({
  url = env('TASKCAST_URL'),
  apiKey = env('TASKCAST_API_KEY'),
  type,
  data = null,
  channel,
  channels,
  users,
  signal,
  fetch: fetchImpl = globalThis.fetch,
} = {}) {
  if (!url) throw new TypeError('broadcast: url is required (or set TASKCAST_URL)');
  if (!apiKey) throw new TypeError('broadcast: apiKey is required (or set TASKCAST_API_KEY)');
  if (typeof type !== 'string' || type === '') throw new TypeError('broadcast: type must be a non-empty string');
  // Fail closed: a target computed as null (`channel: id ?? null`) must not
  // become a broadcast to everyone. Leave the key out (undefined) for that.
  for (const [name, value] of Object.entries({ channel, channels, users })) {
    if (value === null) {
      throw new TypeError(`broadcast: ${name} is null (leave out channel, channels and users to reach everyone)`);
    }
  }
  const body = { type, data };
  if (channel !== undefined) body.channel = channel;
  if (channels !== undefined) body.channels = channels;
  if (users !== undefined) body.users = users;
  const res = await fetchImpl(broadcastUrl(url), {
    method: 'POST',
    headers: { Authorization: `Bearer ${apiKey}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
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
    throw new BroadcastError(res.status, answer?.error ?? null, message, Number.isFinite(retry) ? retry : null);
  }
  return answer;
}
