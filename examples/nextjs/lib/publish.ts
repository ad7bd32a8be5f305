// Publishing from Server Actions, after the database write has committed.
import "server-only";
import { tryBroadcast } from "taskcast-client/server";
import type { Messages } from "./tasks";

type Target = { channel: string } | { channels: string[] } | { users: string[] };

/**
 * Tells taskcast about a change that is already in the database. Never
 * throws (tryBroadcast): the write has committed, so the action must succeed
 * whatever taskcast says, and it gives up after 2 s, so a taskcast that
 * accepts the connection and never answers cannot hold the action. A tab
 * that misses the message catches up when taskcast tells it to refetch.
 * TASKCAST_URL and BROADCAST_API_KEY come from the environment.
 */
export async function publish<T extends keyof Messages>(type: T, data: Messages[T], to: Target): Promise<void> {
  const sent = await tryBroadcast({ type, data, ...to });
  if (!sent.ok) console.warn(`taskcast: ${type} not published: ${sent.error.code}: ${sent.error.message}`);
}
