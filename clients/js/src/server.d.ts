// Types for taskcast-client/server (server-only: it carries BROADCAST_API_KEY).

export interface BroadcastOptions<D = unknown> {
  /** taskcast's base URL (`https://rt.example.com`) or its /api/broadcast; default: process.env.TASKCAST_URL. */
  url?: string | URL;
  /** The publisher key: taskcast's BROADCAST_API_KEY; default: process.env.BROADCAST_API_KEY. */
  apiKey?: string;
  type: string;
  data?: D;
  channel?: string;
  channels?: string[];
  /** User ids: sugar for their `user:<id>` channels. */
  users?: string[];
  /** Abort the request (combined with the timeout). */
  signal?: AbortSignal;
  /** Give up (BroadcastError `timeout`) after this many ms; default 2000. */
  timeoutMs?: number;
  fetch?: typeof fetch;
}

export interface BroadcastAnswer {
  status: 'ok';
  recipients: number;
  channels?: Record<string, { offset: number; recipients: number }>;
}

export declare class BroadcastError extends Error {
  /** The HTTP status, or 0 when there was no answer (`timeout`, `unreachable`) or the arguments were bad. */
  readonly status: number;
  /** The server's error code (`bad_request`, `unauthorized`, ...), or `timeout`, `unreachable`, `bad_arguments`, `aborted`. */
  readonly code: string | null;
  /** Seconds, from Retry-After (429/503), else null. */
  readonly retryAfter: number | null;
}

export type TryBroadcastResult = { ok: true; answer: BroadcastAnswer } | { ok: false; error: BroadcastError };

export declare const DEFAULT_TIMEOUT_MS: number;
export declare function broadcastUrl(url: string | URL): string;
/** Throws a BroadcastError on a refusal, a timeout or no connection. */
export declare function broadcast<D = unknown>(options: BroadcastOptions<D>): Promise<BroadcastAnswer>;
/** Never throws: for Server Actions whose database write has already committed. */
export declare function tryBroadcast<D = unknown>(options: BroadcastOptions<D>): Promise<TryBroadcastResult>;

export interface MintSubscriptionTokenOptions {
  /** Your betterAuth() instance, with the jwt() plugin (its `api.signJWT` signs with BetterAuth's own key). */
  auth: { api: { signJWT: (request: { body: { payload: Record<string, unknown> } }) => Promise<{ token: string }> } };
  userId: string;
  channel: string;
  /** Seconds (default 600). */
  expiresIn?: number;
}

/** A subscription token for `channel` (claims sub, channel, iat, exp), signed by BetterAuth: taskcast checks it through JWKS_URL. */
export declare function mintSubscriptionToken(options: MintSubscriptionTokenOptions): Promise<string>;
