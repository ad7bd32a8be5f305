"use client";
// One taskcast connection per tab, for every signed-in page (it lives in
// app/(app)/layout.tsx, so moving between pages keeps it). The provider
// creates the client in an effect: only in the browser, never while Next
// renders on the server.
import type { ReactNode } from "react";
import { TaskcastProvider } from "taskcast-client/react";
import { authClient } from "@/lib/auth-client";

/** A BetterAuth JWT (GET /api/auth/token): asked for every connection and before each expiry. */
async function getToken(): Promise<string> {
  const { data, error } = await authClient.token();
  if (error || !data) throw new Error(`no token: ${error?.message ?? error?.statusText ?? "no answer"}`);
  return data.token;
}

/** For a project the connection token does not list yet (joined since it was minted). */
async function getSubscriptionToken(channel: string): Promise<string> {
  const res = await fetch(`/api/taskcast/subscription-token?channel=${encodeURIComponent(channel)}`, { cache: "no-store" });
  if (!res.ok) throw new Error(`no subscription token for ${channel}: ${res.status}`);
  return ((await res.json()) as { token: string }).token;
}

export function Realtime({ url, children }: { url: string; children: ReactNode }) {
  return (
    <TaskcastProvider url={url} getToken={getToken} getSubscriptionToken={getSubscriptionToken}>
      {children}
    </TaskcastProvider>
  );
}
