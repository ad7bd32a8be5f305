// Reading from taskcast on the server (publishing is in lib/publish.ts).
import "server-only";

/** The browser's WebSocket URL for taskcast, read at request time (so one build runs anywhere). */
export function taskcastPublicUrl(): string {
  return process.env.TASKCAST_PUBLIC_URL ?? "ws://localhost:8080/ws";
}

export type Position = { epoch: string; offset: number };

/**
 * A channel's current position (`GET /api/channels/<channel>`), read BEFORE
 * the page reads its rows: the browser subscribes with it as `since` and
 * receives every message published after it, so nothing made between the
 * render and the subscribe is lost (what the rows already hold comes again
 * with the same version: a no-op). Null when taskcast cannot say (down, or
 * a version without this endpoint): the page then refetches once it has
 * subscribed.
 */
export async function channelPosition(channel: string): Promise<Position | null> {
  const base = process.env.TASKCAST_URL;
  const key = process.env.CONTROL_API_KEY ?? process.env.BROADCAST_API_KEY;
  if (!base || !key) return null;
  try {
    // Channel names are letters, digits and `_ - . :`: safe in a path as they are.
    const res = await fetch(new URL(`/api/channels/${channel}`, base), {
      headers: { Authorization: `Bearer ${key}` },
      cache: "no-store",
      signal: AbortSignal.timeout(1000),
    });
    if (!res.ok) return null;
    const { epoch, offset } = (await res.json()) as Partial<Position>;
    return typeof epoch === "string" && Number.isSafeInteger(offset) ? { epoch, offset: offset as number } : null;
  } catch {
    return null;
  }
}
