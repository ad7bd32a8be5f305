// A subscription token: lets this user's connection join one project's
// channel that its connection token does not list (a project joined after
// the token was minted). Signed by BetterAuth with its own key
// (auth.api.signJWT), so taskcast checks it through the same JWKS as every
// other token: no shared secret.
import { mintSubscriptionToken } from "taskcast-client/server";
import { auth, currentUser } from "@/lib/auth";
import { isMember } from "@/lib/projects";

export async function GET(req: Request) {
  const me = await currentUser();
  if (!me) return Response.json({ error: "sign in first" }, { status: 401 });
  const channel = new URL(req.url).searchParams.get("channel") ?? "";
  const projectId = /^project:([\w-]{1,64})$/.exec(channel)?.[1];
  if (!projectId || !(await isMember(me.id, projectId))) {
    return Response.json({ error: "not a member of this project" }, { status: 403 });
  }
  const token = await mintSubscriptionToken({ auth, userId: me.id, channel, expiresIn: 300 });
  return Response.json({ token }, { headers: { "Cache-Control": "no-store" } });
}
