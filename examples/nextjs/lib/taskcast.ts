// Reading from taskcast on the server (publishing is in lib/publish.ts).
import "server-only";
import { position } from "taskcast-client/server";

/** The browser's WebSocket URL for taskcast, read at request time (so one build runs anywhere). */
export function taskcastPublicUrl(): string {
  return process.env.TASKCAST_PUBLIC_URL ?? "ws://localhost:8080/ws";
}

export type Position = { epoch: string; offset: number };

/**
 * A channel's current position (`GET /api/channels/<channel>`, with
 * CONTROL_API_KEY or else BROADCAST_API_KEY), read BEFORE the page reads its
 * rows: the browser subscribes with it as `since` and receives every message
 * published after it, so nothing made between the render and the subscribe
 * is lost (what the rows already hold comes again with the same version: a
 * no-op). Null when taskcast cannot say within a second (down, or a version
 * without this endpoint): the page then refetches once it has subscribed.
 */
export async function channelPosition(channel: string): Promise<Position | null> {
  try {
    const { epoch, offset } = await position(channel, { signal: AbortSignal.timeout(1000) });
    return { epoch, offset };
  } catch {
    return null;
  }
}
