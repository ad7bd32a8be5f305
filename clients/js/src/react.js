// taskcast-client/react: React bindings over the browser client, as thin as
// ably/react's and partysocket/react's.
//
// - <TaskcastProvider> creates the client in an effect, so only in the
//   browser (never during server rendering), and closes it on unmount.
// - useChannel() holds a handle on a channel; the client shares one server
//   subscription among every handle on a channel and leaves it one
//   microtask after the last handle goes, so StrictMode's
//   mount-unmount-mount sends a single subscribe.
// - useConnectionState() and useTaskcast() read the client's status through
//   useSyncExternalStore.
//
// No JSX: plain ES modules, usable without a build step.
import { createContext, createElement, useCallback, useContext, useEffect, useMemo, useRef, useState, useSyncExternalStore } from 'react';

import { connect } from './index.js';

/** What a component sees before the client exists (server rendering, first browser render). */
const NO_CLIENT = Object.freeze({ state: 'connecting', lastError: null });
const noop = () => {};

/** The context value while the provider has no client yet (server render, first browser render). */
const NO_PROVIDER_CLIENT = Object.freeze({ none: true });

const TaskcastContext = createContext(null);

/**
 * Provides one taskcast client to its subtree. Props: `url`, `getToken`,
 * optional `getSubscriptionToken(channel)`, `debug`, `options` (any other
 * connect() option, read when the client is created). The latest
 * `getToken`/`getSubscriptionToken` are used without reconnecting; a new
 * `url` or `debug` makes a new client.
 */
export function TaskcastProvider({ url, getToken, getSubscriptionToken, debug, options, children }) {
  const [client, setClient] = useState(null);
  const tokens = useRef({ getToken, getSubscriptionToken });
  tokens.current = { getToken, getSubscriptionToken };
  const hasSubscriptionTokens = typeof getSubscriptionToken === 'function';
  const optionsRef = useRef(options);
  optionsRef.current = options;

  useEffect(() => {
    const c = connect({
      ...optionsRef.current,
      url,
      debug,
      getToken: (info) => tokens.current.getToken(info),
      getSubscriptionToken: hasSubscriptionTokens ? (channel) => tokens.current.getSubscriptionToken(channel) : undefined,
    });
    setClient(c);
    return () => {
      c.close();
      setClient((current) => (current === c ? null : current));
    };
  }, [url, debug, hasSubscriptionTokens]);

  return createElement(TaskcastContext.Provider, { value: client ?? NO_PROVIDER_CLIENT }, children);
}

function useClientFromContext(hook) {
  const value = useContext(TaskcastContext);
  if (value === null) throw new Error(`${hook} must be used inside <TaskcastProvider>`);
  return value === NO_PROVIDER_CLIENT ? null : value;
}

function useStatus(client) {
  const subscribe = useCallback((onChange) => (client ? client.on('state', onChange) : noop), [client]);
  const getSnapshot = useCallback(() => (client ? client.status : NO_CLIENT), [client]);
  return useSyncExternalStore(subscribe, getSnapshot, getServerSnapshot);
}

function getServerSnapshot() {
  return NO_CLIENT;
}

/**
 * `{ client, state, lastError }`: the client (null until it exists in the
 * browser), its connection state and the last connection-level error (a
 * TaskcastError whose `code` and `message` say why, e.g. `auth_failed`
 * with the server's reason), re-rendering when either changes.
 */
export function useTaskcast() {
  const client = useClientFromContext('useTaskcast');
  const status = useStatus(client);
  return useMemo(() => ({ client, state: status.state, lastError: status.lastError }), [client, status]);
}

/** 'connecting' | 'open' | 'closed' | 'error'. */
export function useConnectionState() {
  return useStatus(useClientFromContext('useConnectionState')).state;
}

/** The last connection-level error (TaskcastError), or null; cleared when the connection opens again. */
export function useTaskcastError() {
  return useStatus(useClientFromContext('useTaskcastError')).lastError;
}

/**
 * Listens to `channel` while the component is mounted: `onMessage(msg)` gets
 * `{type, payload, channel, offset}` once each, in order. Options:
 * `onResync(info)` (refetch: the client could not replay what was missed, or
 * the channel was granted after a refusal), `onError(err)` (refused, or
 * ended by the server), `onSubscribed(info)`, `since` (`{epoch, offset}`
 * from a server render; read when the subscription starts), `enabled`
 * (default true). The latest callbacks are called without resubscribing.
 */
export function useChannel(channel, onMessage, options = {}) {
  const client = useClientFromContext('useChannel');
  const enabled = options.enabled ?? true;
  const latest = useRef(null);
  latest.current = { onMessage, ...options };

  useEffect(() => {
    if (!client || !enabled || !channel) return undefined;
    if (client.state === 'closed' || client.state === 'error') return undefined;
    const sub = client.subscribe(channel, {
      since: latest.current.since ?? undefined,
      onMessage: (msg) => latest.current.onMessage?.(msg),
      onResync: (info) => latest.current.onResync?.(info),
      onError: (err) => latest.current.onError?.(err),
      onSubscribed: (info) => latest.current.onSubscribed?.(info),
    });
    return () => sub.unsubscribe();
  }, [client, channel, enabled]);
}
