// Types for taskcast-client/react.
import type { ReactNode } from 'react';

import type { ChannelMessage, Client, ConnectOptions, ResyncInfo, SubscribedInfo, TaskcastError, TokenRequest } from './index.js';

export interface TaskcastProviderProps {
  /** The WebSocket endpoint, e.g. `wss://rt.example.com/ws`. A new url makes a new client. */
  url: string;
  /** Called for every connection and refresh; the latest function is used without reconnecting. */
  getToken: (request: TokenRequest) => string | Promise<string>;
  /** A subscription token for a channel the connection token does not grant (asked after `forbidden`). */
  getSubscriptionToken?: (channel: string) => string | Promise<string>;
  /** Log the client's steps (never a token) with console.debug, or to this function. */
  debug?: boolean | ((line: string) => void);
  /** Any other connect() option; read when the client is created. */
  options?: Omit<ConnectOptions, 'url' | 'getToken' | 'getSubscriptionToken' | 'debug'>;
  children?: ReactNode;
}

/** Creates the client in an effect (only in the browser), connects, and closes it on unmount. */
export declare function TaskcastProvider(props: TaskcastProviderProps): ReactNode;

/** 'connecting' (also while waiting to reconnect) | 'open' | 'closed' | 'error' (stopped by a refusal: see lastError). */
export type ReactConnectionState = 'connecting' | 'open' | 'closed' | 'error';

export interface TaskcastContextValue {
  /** null during server rendering and until the provider's effect created it. */
  client: Client | null;
  state: ReactConnectionState;
  /** The last connection-level error; `code` and `message` say why (e.g. `auth_failed`: "... origin not allowed"). Cleared when the connection opens. */
  lastError: TaskcastError | null;
}

export declare function useTaskcast(): TaskcastContextValue;
export declare function useConnectionState(): ReactConnectionState;
export declare function useTaskcastError(): TaskcastError | null;

export interface UseChannelOptions {
  /** Refetch this channel's data: a gap could not be replayed, a new epoch, or the channel was granted after a refusal. */
  onResync?: (info: ResyncInfo) => void;
  /** A refusal (`forbidden`), or the server ended the subscription (`unsubscribed`, with `reason`). */
  onError?: (error: TaskcastError) => void;
  onSubscribed?: (info: SubscribedInfo) => void;
  /** A server-rendered position: messages after it are delivered (or onResync when they cannot be). Read when the subscription starts. */
  since?: { epoch: string; offset: number } | null;
  /** Default true; false leaves the channel. */
  enabled?: boolean;
}

export declare function useChannel<P = unknown>(
  channel: string | null | undefined,
  onMessage: (message: ChannelMessage<P>) => void,
  options?: UseChannelOptions,
): void;
