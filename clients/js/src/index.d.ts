// Types for taskcast-client (plain ES modules, no build step).

export interface BackoffOptions {
  /** First reconnect window in ms (default 500). */
  baseMs?: number;
  /** Largest reconnect window in ms (default 30000). */
  maxMs?: number;
}

export interface ConnectOptions {
  /** The WebSocket endpoint: `wss://rt.example.com/ws` (http(s):// is turned into ws(s)://; relative URLs resolve against the page). */
  url: string | URL;
  /**
   * Called before every connection and every refresh, e.g. BetterAuth's
   * `async () => (await authClient.token()).data?.token`. `request.reason`
   * says why: `reauthenticate` (the server closed with 4011) and `expired`
   * ask for a newly minted token, not a cached one.
   */
  getToken: (request: TokenRequest) => string | Promise<string>;
  /**
   * A subscription token for `channel`, asked when the connection token does
   * not grant it (the server answered `forbidden`); minted by the app's
   * server (see taskcast-client/server's mintSubscriptionToken).
   */
  getSubscriptionToken?: (channel: string) => string | Promise<string>;
  /**
   * A WebSocket class. Required where there is no `window` (Node 20:
   * `import { WebSocket } from 'ws'`): connect() refuses to start during
   * server rendering otherwise.
   */
  WebSocket?: unknown;
  /** Log each step (connect, auth, subscribe, refusals; never a token) with console.debug, or to this function. */
  debug?: boolean | ((line: string) => void);
  /** Put the token in the URL (`?token=`) instead of the first message (default false: in-band authentication). */
  tokenInUrl?: boolean;
  /** In-band authentication: give up on a socket whose `auth` the server has not answered within this (default 10000). */
  authTimeoutMs?: number;
  backoff?: BackoffOptions;
  /** A connection open this long resets the backoff (default 10000). */
  stableMs?: number;
  /** Send a fresh token this long before `exp` (default 60000; half the lifetime for shorter tokens); `false`: never refresh in band. */
  refreshBeforeMs?: number | false;
  /** After 1008/1009/1002/1003/1007 (the app's or client's bug): reconnect after 50-100 % of this (default 60000). */
  appErrorDelayMs?: number;
  /** After 1012/1001 (deploy, shutdown): reconnect after a random delay up to this (default 5000). */
  restartJitterMs?: number;
  /** Send `{"type":"ping"}` this often (default 25000; 0: off) ... */
  pingIntervalMs?: number;
  /** ... and reconnect when nothing arrives within this (default 10000). */
  pongTimeoutMs?: number;
  /** Retry delay after getToken fails or returns a token no newer than the current one (default 5000). */
  tokenRetryMs?: number;
  /** Global broadcasts (no channel): same as `client.on('message', fn)`. */
  onBroadcast?: (message: BroadcastMessage) => void;
  /** For tests: the random source of the jitter (default Math.random). */
  random?: () => number;
}

/** A broadcast to everyone: `{"type": T, "payload": P}`. */
export interface BroadcastMessage<P = unknown> {
  type: string;
  payload: P;
}

/** A channel message: `{"type", "payload", "channel", "offset"}`. */
export interface ChannelMessage<P = unknown> extends BroadcastMessage<P> {
  channel: string;
  offset: number;
}

export interface TokenRequest {
  /** `connect`, `refresh` (in band, before exp), `expired` (closed with 4001), `reauthenticate` (closed with 4011). */
  reason: 'connect' | 'refresh' | 'expired' | 'reauthenticate';
}

/** A channel position: `{epoch, offset}` from `subscribed`, or from the server's channel position API. */
export interface ChannelSince {
  epoch: string;
  offset: number;
}

export interface SubscribedInfo {
  channel: string;
  epoch: string;
  offset: number;
  recovered: boolean;
}

export interface ResyncInfo {
  channel: string;
  epoch: string | null;
  offset: number | null;
  /** `not_recovered`: the server could not replay the gap (or a new epoch); `gap`: an offset was skipped; `granted`: refused before, subscribed now. */
  reason: 'not_recovered' | 'gap' | 'granted';
}

export interface SubscribeHandlers<P = unknown> {
  /** Each channel message once, in offset order, replayed ones included. */
  onMessage?: (message: ChannelMessage<P>) => void;
  /** What was missed cannot be replayed: refetch this channel's data. */
  onResync?: (info: ResyncInfo) => void;
  /** Every `subscribed` answer (after each (re)connect). */
  onSubscribed?: (info: SubscribedInfo) => void;
  /**
   * A refusal (`forbidden`, `invalid_channel`, ...), or the server ended the
   * subscription (`unsubscribed`, with the server's `reason`). A refused
   * channel stays registered and is asked again under a newer token
   * (refreshToken(), an in-band refresh, a reconnect with another token).
   */
  onError?: (error: TaskcastError) => void;
  /** A per-channel subscription token, or a function fetching one for each subscribe. */
  token?: string | ((channel: string) => string | Promise<string>);
  /**
   * Start after this position (a server-rendered page's `{epoch, offset}`):
   * the messages after it are delivered, or onResync is called when the
   * server can no longer replay them.
   */
  since?: ChannelSince;
}

/**
 * A handle on a channel. Handles on one channel share one server
 * subscription; the channel is left when the last handle unsubscribes.
 */
export declare class Subscription {
  /** null for subscribeUser() until the first token names the user (its `sub`). */
  readonly channel: string | null;
  readonly epoch: string | null;
  readonly offset: number | null;
  /** False after unsubscribe(). */
  readonly active: boolean;
  readonly state: 'subscribing' | 'subscribed' | 'refused' | 'closed';
  unsubscribe(): void;
}

export interface ClientEvents {
  connecting: { attempt: number };
  connected: Record<string, never>;
  disconnected: { code: number; reason: string; willReconnect: boolean; delayMs: number };
  refreshed: { expMs: number | null };
  message: BroadcastMessage;
  error: TaskcastError;
  closed: Record<string, never>;
  /** `state` or `lastError` changed. */
  state: ClientStatus;
}

/** `connecting` (also while waiting to reconnect), `open`, `closed` (close()), `error` (stopped by a refusal: see lastError). */
export type ConnectionState = 'connecting' | 'open' | 'closed' | 'error';

export interface ClientStatus {
  readonly state: ConnectionState;
  readonly lastError: TaskcastError | null;
}

export declare class Client {
  readonly state: ConnectionState;
  /** The last connection-level error (a refusal with the server's reason, a failed getToken); null once open again. */
  readonly lastError: TaskcastError | null;
  /** `{state, lastError}`: a new frozen object on each change (for useSyncExternalStore). */
  readonly status: ClientStatus;
  /** `user:<sub>`, once the server has named it. */
  readonly userChannel: string | null;
  on<E extends keyof ClientEvents>(event: E, fn: (value: ClientEvents[E]) => void): () => void;
  off<E extends keyof ClientEvents>(event: E, fn: (value: ClientEvents[E]) => void): void;
  subscribe<P = unknown>(channel: string, handlers?: SubscribeHandlers<P>): Subscription;
  subscribeUser<P = unknown>(handlers?: SubscribeHandlers<P>): Subscription;
  /** Fetch a fresh token now and send it (refused channels are retried under it); resolves once the server accepted it. */
  refreshToken(): Promise<void>;
  close(): void;
}

export declare class TaskcastError extends Error {
  /** `auth_failed` (4003), `disconnected` (4009), `auth_timeout`, `rate_limited`, `message_too_big`, `protocol_error`, `token`, `forbidden`, `invalid_channel`, `unsubscribed`, ... */
  readonly code: string;
  readonly channel?: string;
  readonly closeCode?: number;
  /** The close frame's reason text (why the server refused: "invalid token: wrong issuer", "origin not allowed", ...). */
  readonly closeReason?: string;
  /** For `unsubscribed`: the reason the server gave. */
  readonly reason?: string;
}

export declare function connect(options: ConnectOptions): Client;

// Pure helpers (exported for tests and for apps that want the same rules).
export declare const DEFAULTS: Readonly<
  Required<Omit<ConnectOptions, 'url' | 'getToken' | 'getSubscriptionToken' | 'WebSocket' | 'onBroadcast' | 'random' | 'debug' | 'tokenInUrl'>>
>;
export declare function isValidSince(since: unknown): since is ChannelSince;
/** The text with any `token=` URL parameter's value replaced by `[redacted]`. */
export declare function redact(text: string): string;
export declare const MAX_CHANNEL_BYTES: number;
export declare function backoffDelay(attempt: number, backoff: Required<BackoffOptions>, random?: () => number): number;
export declare function decodeJwtPayload(token: string): Record<string, unknown> | null;
export declare function tokenLifetime(token: string): { expMs: number; iatMs: number | null } | null;
export declare function refreshDelay(lifetime: { expMs: number; iatMs: number | null } | null, nowMs: number, refreshBeforeMs: number): number | null;
export declare function closePolicy(
  code: number,
  attempt: number,
  opts: { backoff: Required<BackoffOptions>; appErrorDelayMs: number; restartJitterMs: number },
  random?: () => number,
): { reconnect: boolean; delayMs: number; error: string | null };
export declare function isValidChannel(name: string): boolean;
export declare class ChannelPosition {
  epoch: string | null;
  offset: number | null;
  pending: boolean;
  start(since: ChannelSince): void;
  since(): { epoch: string; offset: number } | undefined;
  requested(): void;
  disconnected(): void;
  subscribed(answer: { epoch: string; offset: number; recovered: boolean }): boolean;
  message(offset: number): 'deliver' | 'drop' | 'gap';
}
