// A project's tasks, for the board's refetch when taskcast cannot replay
// what a tab missed (onResync).
import { currentUser } from "@/lib/auth";
import { projectFor, tasksOf } from "@/lib/projects";

export async function GET(_req: Request, ctx: RouteContext<"/api/projects/[id]/tasks">) {
  const { id } = await ctx.params;
  const me = await currentUser();
  if (!me) return Response.json({ error: "sign in first" }, { status: 401 });
  if (!(await projectFor(me.id, id))) return Response.json({ error: "no such project" }, { status: 404 });
  return Response.json({ tasks: await tasksOf(id) }, { headers: { "Cache-Control": "no-store" } });
}
