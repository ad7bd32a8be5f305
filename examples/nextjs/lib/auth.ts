// BetterAuth: email and password sign-in, and its jwt plugin, whose tokens
// taskcast checks with the public keys at /api/auth/jwks (no shared secret).
import "server-only";
import { betterAuth } from "better-auth";
import { drizzleAdapter } from "better-auth/adapters/drizzle";
import { jwt } from "better-auth/plugins";
import { headers } from "next/headers";
import { redirect } from "next/navigation";
import { cache } from "react";
import { db } from "./db";
import { projectIdsOf } from "./projects";
import * as schema from "./schema";
import { projectChannel } from "./tasks";

export const auth = betterAuth({
  // The tokens' `iss` and `aud`: taskcast's JWT_ISSUER and JWT_AUDIENCE.
  baseURL: process.env.BETTER_AUTH_URL,
  secret: process.env.BETTER_AUTH_SECRET,
  database: drizzleAdapter(db, { provider: "pg", schema }),
  emailAndPassword: { enabled: true },
  telemetry: { enabled: false },
  plugins: [
    jwt({
      jwt: {
        // GET /api/auth/token mints one; the browser client asks again
        // before `exp` and hands it to taskcast in band.
        expirationTime: process.env.AUTH_JWT_TTL ?? "15m",
        // Only what taskcast needs (the default payload is the whole user
        // row). `sub` is the user id. CHANNELS_CLAIM=channels (taskcast's
        // default): the projects the user is a member of when the token is
        // minted; projects joined later are reached with a subscription
        // token (app/api/taskcast/subscription-token/route.ts) until the
        // next refresh brings them here.
        definePayload: async ({ user }) => ({
          channels: (await projectIdsOf(user.id)).map(projectChannel),
        }),
      },
    }),
  ],
});

export type SessionUser = typeof auth.$Infer.Session.user;

/** The signed-in user, or null (asked once per request, however many components ask). */
export const currentUser = cache(async (): Promise<SessionUser | null> => {
  const session = await auth.api.getSession({ headers: await headers() });
  return session?.user ?? null;
});

/** The signed-in user; anyone else goes to the sign-in page. */
export async function requireUser(): Promise<SessionUser> {
  const user = await currentUser();
  if (!user) redirect("/sign-in");
  return user;
}
