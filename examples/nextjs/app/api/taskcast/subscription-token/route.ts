// A subscription token: lets this user's connection join one project's
// channel that its connection token does not list (a project joined after
// the token was minted). Signed by BetterAuth with its own key, so taskcast
// checks it through the same JWKS as every other token.
import { auth, currentUser } from "@/lib/auth";
import { isMember } from "@/lib/projects";

const LIFETIME_SECS = 300;

export async function GET(req: Request) {
  const me = await currentUser();
  if (!me) return Response.json({ error: "sign in first" }, { status: 401 });
  const channel = new URL(req.url).searchParams.get("channel") ?? "";
  const projectId = /^project:([\w-]{1,64})$/.exec(channel)?.[1];
  if (!projectId || !(await isMember(me.id, projectId))) {
    return Response.json({ error: "not a member of this project" }, { status: 403 });
  }
  const now = Math.floor(Date.now() / 1000);
  const { token } = await auth.api.signJWT({
    body: { payload: { sub: me.id, channel, iat: now, exp: now + LIFETIME_SECS } },
  });
  return Response.json({ token }, { headers: { "Cache-Control": "no-store" } });
}
