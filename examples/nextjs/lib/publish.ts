// Publishing from Server Actions, after the database write has committed.
// (Written for the current broadcast(); moves to its timeout/throwOnError
// options when they land.)
import "server-only";
import { broadcast } from "taskcast-client/server";
import type { Messages } from "./tasks";
type Target = { channel: string } | { channels: string[] } | { users: string[] };
export async function publish<T extends keyof Messages>(type: T, data: Messages[T], to: Target): Promise<void> {
  try {
    await broadcast({ type, data, ...to, apiKey: process.env.BROADCAST_API_KEY, signal: AbortSignal.timeout(2000) });
  } catch (e) {
    console.warn(`taskcast: ${type} not published: ${(e as Error).message}`);
  }
}
