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
  /** Sent as Idempotency-Key; default: a random UUID per call. `null`: none (and no retries). */
  idempotencyKey?: string | null;
  /** Retries after a network error or a 503, with the same key (default 2). */
  retries?: number;
  /** Give up (BroadcastError `timeout`) after this many ms; default 2000. */
  timeoutMs?: number;
  fetch?: typeof fetch;
}

export interface BroadcastAnswer {
  status: 'ok';
  recipients: number;
  channels?: Record<string, { offset: number; recipients: number; duplicate?: true }>;
  /** The Idempotency-Key was seen already: nothing was delivered now (offsets are the first publish's). */
  duplicate?: boolean;
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

/** What every server API helper takes besides its own fields. */
export interface ControlOptions {
  /** taskcast's base URL; default: TASKCAST_URL. */
  url?: string | URL;
  /** CONTROL_API_KEY (or BROADCAST_API_KEY); default: the CONTROL_API_KEY environment variable, else BROADCAST_API_KEY. */
  apiKey?: string;
  signal?: AbortSignal;
  fetch?: typeof fetch;
}

export declare class ControlError extends Error {
  readonly status: number;
  readonly code: string | null;
  readonly retryAfter: number | null;
}

export declare function baseUrl(url: string | URL): string;

export declare function unsubscribe(
  options: ControlOptions & { user: string; channel: string; reason?: string },
): Promise<{ status: 'ok'; unsubscribed: number }>;

export declare function disconnect(
  options: ControlOptions & { user: string; reconnect?: boolean; reason?: string },
): Promise<{ status: 'ok'; disconnected: number }>;

export declare function revoke(
  options: ControlOptions & { user: string; issuedBefore?: Date | number },
): Promise<{ status: 'ok'; issued_before: number; disconnected: number }>;

export interface Position {
  channel: string;
  epoch: string;
  offset: number;
  /** Subscribers on the instance that answered. */
  subscribers: number;
}

export declare function position(channel: string, options?: ControlOptions): Promise<Position>;

export interface History<P = unknown> {
  channel: string;
  epoch: string;
  offset: number;
  messages: { offset: number; type: string; payload: P }[];
  complete: boolean;
}

export declare function history<P = unknown>(
  channel: string,
  options?: ControlOptions & { since?: { epoch: string; offset: number } | string; limit?: number },
): Promise<History<P>>;
