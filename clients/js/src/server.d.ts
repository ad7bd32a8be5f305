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
  fetch?: typeof fetch;
}

export interface BroadcastAnswer {
  status: 'ok';
  recipients: number;
  channels?: Record<string, { offset: number; recipients: number }>;
}

export declare class BroadcastError extends Error {
  readonly status: number;
  readonly code: string | null;
  readonly retryAfter: number | null;
}

export declare function broadcastUrl(url: string | URL): string;
export declare function broadcast<D = unknown>(options: BroadcastOptions<D>): Promise<BroadcastAnswer>;
