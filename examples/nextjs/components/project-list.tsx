"use client";
// The signed-in user's projects, each with live task counts. A project the
// user is added to while this page is open appears (a member_added message on
// the user's own channel) and is followed from then on.
import Link from "next/link";
import { useState, useTransition, type FormEvent } from "react";
import { useShallow } from "zustand/shallow";
import { useChannel } from "taskcast-client/react";
import { createProject } from "@/app/actions";
import { STATUS_LABELS, STATUSES, userChannel, type ProjectRow, type TaskRow } from "@/lib/tasks";
import { TasksProvider, useProjectSync, useTasks, useTasksStore, type Position } from "./tasks-context";

export function ProjectList(props: { userId: string; projects: ProjectRow[]; tasks: TaskRow[]; positions: Record<string, Position> }) {
  return (
    <TasksProvider initial={{ projects: props.projects, tasks: props.tasks }}>
      <ProjectListView userId={props.userId} positions={props.positions} />
    </TasksProvider>
  );
}

function ProjectListView({ userId, positions }: { userId: string; positions: Record<string, Position> }) {
  const store = useTasksStore();
  const projects = useTasks((s) => s.projects);
  useChannel(userChannel(userId), (message) => store.getState().receive(message));
  return (
    <>
      <h1>Projects</h1>
      <NewProject />
      <ul className="projects" data-testid="projects">
        {projects.map((p) => (
          <ProjectCard key={p.id} project={p} since={positions[p.id] ?? null} />
        ))}
      </ul>
      {projects.length === 0 && <p className="muted">No projects yet: create one, or ask a member to add you.</p>}
    </>
  );
}

function NewProject() {
  const store = useTasksStore();
  const [name, setName] = useState("");
  const [pending, start] = useTransition();
  const submit = (e: FormEvent) => {
    e.preventDefault();
    const typed = name;
    setName("");
    start(async () => {
      store.getState().addProject(await createProject(typed));
    });
  };
  return (
    <form onSubmit={submit}>
      <input aria-label="Project name" placeholder="New project" value={name} onChange={(e) => setName(e.target.value)} maxLength={200} required />
      <button type="submit" disabled={pending}>
        Create project
      </button>
    </form>
  );
}

function ProjectCard({ project, since }: { project: ProjectRow; since: Position }) {
  useProjectSync(project.id, since);
  const counts = useTasks(
    useShallow((s) => STATUSES.map((status) => Object.values(s.tasks).filter((t) => t.projectId === project.id && t.status === status).length)),
  );
  return (
    <li className="project" data-testid="project" data-project-id={project.id}>
      <Link href={`/projects/${project.id}`}>{project.name}</Link>
      <span className="counts">
        {STATUSES.map((status, i) => (
          <span key={status} data-testid={`count-${status}`}>
            {STATUS_LABELS[status]}: {counts[i]}
          </span>
        ))}
      </span>
    </li>
  );
}
