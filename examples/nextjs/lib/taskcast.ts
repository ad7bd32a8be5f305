// Reading from taskcast on the server (publishing is in lib/publish.ts).
import "server-only";

/** The browser's WebSocket URL for taskcast, read at request time (so one build runs anywhere). */
export function taskcastPublicUrl(): string {
  return process.env.TASKCAST_PUBLIC_URL ?? "ws://localhost:8080/ws";
}
