import { notFound } from "next/navigation";
import { requireUser } from "@/lib/auth";
import { membersOf, projectFor, tasksOf } from "@/lib/projects";
import { channelPosition } from "@/lib/taskcast";
import { projectChannel } from "@/lib/tasks";
import { Board } from "@/components/board";

export default async function ProjectPage({ params }: PageProps<"/projects/[id]">) {
  const { id } = await params;
  const me = await requireUser();
  const project = await projectFor(me.id, id);
  if (!project) notFound(); // not a member: the same answer as no such project
  // The channel's position first, then the rows: every change after that
  // position reaches the page, whether or not the rows already hold it.
  const since = await channelPosition(projectChannel(id));
  const [tasks, members] = await Promise.all([tasksOf(id), membersOf(id)]);
  return <Board project={project} tasks={tasks} members={members} since={since} />;
}
