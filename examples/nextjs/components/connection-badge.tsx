"use client";
import { useConnectionState, useTaskcastError } from "taskcast-client/react";

const LABELS = { connecting: "connecting…", open: "live", closed: "offline", error: "stopped" } as const;

/** The connection's state; when taskcast refused it, why (e.g. an origin or issuer mismatch). */
export function ConnectionBadge() {
  const state = useConnectionState();
  const error = useTaskcastError();
  return (
    <span className={`badge badge-${state}`} data-testid="connection" data-state={state} title={error?.message}>
      {LABELS[state]}
      {state === "error" && error ? `: ${error.message}` : null}
    </span>
  );
}
