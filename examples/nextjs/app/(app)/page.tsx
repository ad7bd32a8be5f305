import { requireUser } from "@/lib/auth";
import { projectsOf, tasksOf } from "@/lib/projects";
import { ProjectList } from "@/components/project-list";

export default async function Home() {
  const me = await requireUser();
  const projects = await projectsOf(me.id);
  const tasks = (await Promise.all(projects.map((p) => tasksOf(p.id)))).flat();
  return <ProjectList userId={me.id} projects={projects} tasks={tasks} positions={{}} />;
}
