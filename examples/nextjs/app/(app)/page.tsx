import { requireUser } from "@/lib/auth";
import { projectsOf, tasksOf } from "@/lib/projects";
import { channelPosition } from "@/lib/taskcast";
import { projectChannel } from "@/lib/tasks";
import { ProjectList } from "@/components/project-list";

export default async function Home() {
  const me = await requireUser();
  const projects = await projectsOf(me.id);
  // Positions first, rows second (see channelPosition).
  const positions = Object.fromEntries(await Promise.all(projects.map(async (p) => [p.id, await channelPosition(projectChannel(p.id))])));
  const tasks = (await Promise.all(projects.map((p) => tasksOf(p.id)))).flat();
  return <ProjectList userId={me.id} projects={projects} tasks={tasks} positions={positions} />;
}
