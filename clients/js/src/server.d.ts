export interface BroadcastOptions<D = unknown> {
  /** taskcast's base URL (`https://rt.example.com`) or its /api/broadcast; default: TASKCAST_URL. */
  url?: string | URL;
  /** The publisher key (BROADCAST_API_KEY); default: TASKCAST_API_KEY. */
  apiKey?: string;
  type: string;
  data?: D;
  channel?: string;
  channels?: string[];
  /** User ids: sugar for their `user:<id>` channels. */
  users?: string[];
  signal?: AbortSignal;
  /** Sent as Idempotency-Key; default: a random UUID per call. `null`: none (and no retries). */
  idempotencyKey?: string | null;
  /** Retries after a network error or a 503, with the same key (default 2). */
  retries?: number;
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
  readonly status: number;
  readonly code: string | null;
  readonly retryAfter: number | null;
}

export declare function broadcastUrl(url: string | URL): string;
export declare function broadcast<D = unknown>(options: BroadcastOptions<D>): Promise<BroadcastAnswer>;

/** What every server API helper takes besides its own fields. */
export interface ControlOptions {
  /** taskcast's base URL; default: TASKCAST_URL. */
  url?: string | URL;
  /** CONTROL_API_KEY (or BROADCAST_API_KEY); default: TASKCAST_CONTROL_API_KEY, else TASKCAST_API_KEY. */
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
