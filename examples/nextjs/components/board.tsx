"use client";
// A project's board: three columns of tasks, live. Every change goes through
// a Server Action; its result is applied here at once, and the broadcast it
// sends reaches every other member's tab (and this one, where it is a no-op).
import { useState, useTransition, type FormEvent } from "react";
import { useShallow } from "zustand/shallow";
import { addMember, createTask, deleteTask, moveTask, renameTask } from "@/app/actions";
import { STATUS_LABELS, STATUSES, type MemberRow, type ProjectRow, type Status, type TaskRow } from "@/lib/tasks";
import { TasksProvider, useProjectSync, useTasks, useTasksStore, type Position } from "./tasks-context";

export function Board(props: { project: ProjectRow; tasks: TaskRow[]; members: MemberRow[]; since: Position }) {
  return (
    <TasksProvider initial={{ projects: [props.project], tasks: props.tasks, members: { [props.project.id]: props.members } }}>
      <BoardView project={props.project} since={props.since} />
    </TasksProvider>
  );
}

function BoardView({ project, since }: { project: ProjectRow; since: Position }) {
  useProjectSync(project.id, since);
  return (
    <>
      <h1>{project.name}</h1>
      <NewTask projectId={project.id} />
      <div className="columns">
        {STATUSES.map((status) => (
          <Column key={status} projectId={project.id} status={status} />
        ))}
      </div>
      <Members projectId={project.id} />
    </>
  );
}

/** Runs a Server Action, applying what it returns; shows its error, if any. */
function useAction() {
  const store = useTasksStore();
  const [pending, start] = useTransition();
  const [error, setError] = useState<string | null>(null);
  const run = (action: () => Promise<void>) =>
    start(async () => {
      setError(null);
      try {
        await action();
      } catch (e) {
        setError(e instanceof Error ? e.message : String(e));
      }
    });
  return { store, pending, error, run };
}

function NewTask({ projectId }: { projectId: string }) {
  const { store, pending, error, run } = useAction();
  const [title, setTitle] = useState("");
  const submit = (e: FormEvent) => {
    e.preventDefault();
    // Cleared now, not after the action: what the user types meanwhile stays.
    const typed = title;
    setTitle("");
    run(async () => {
      try {
        store.getState().apply(await createTask(projectId, typed));
      } catch (err) {
        setTitle((current) => current || typed);
        throw err;
      }
    });
  };
  return (
    <form className="new-task" onSubmit={submit}>
      <input aria-label="New task" placeholder="New task" value={title} onChange={(e) => setTitle(e.target.value)} maxLength={200} required />
      <button type="submit" disabled={pending}>
        Add
      </button>
      {error && <span className="error">{error}</span>}
    </form>
  );
}

function Column({ projectId, status }: { projectId: string; status: Status }) {
  const tasks = useTasks(
    useShallow((s) =>
      Object.values(s.tasks)
        .filter((t) => t.projectId === projectId && t.status === status)
        .sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id)),
    ),
  );
  return (
    <section className="column" data-testid={`column-${status}`}>
      <h2>
        {STATUS_LABELS[status]} <span className="count">{tasks.length}</span>
      </h2>
      <ul>
        {tasks.map((t) => (
          <TaskCard key={t.id} task={t} />
        ))}
      </ul>
    </section>
  );
}

function TaskCard({ task }: { task: TaskRow }) {
  const { store, pending, error, run } = useAction();
  const [editing, setEditing] = useState<string | null>(null);
  const i = STATUSES.indexOf(task.status);
  const move = (to: Status) =>
    run(async () => {
      const row = await moveTask(task.id, to);
      if (row) store.getState().apply(row);
    });
  const save = (e: FormEvent) => {
    e.preventDefault();
    if (editing === null) return;
    run(async () => {
      const row = await renameTask(task.id, editing);
      if (row) store.getState().apply(row);
      setEditing(null);
    });
  };
  return (
    <li className="task" data-testid="task" data-task-id={task.id} data-version={task.version}>
      {editing === null ? (
        <button type="button" className="title" title="Rename" onClick={() => setEditing(task.title)}>
          {task.title}
        </button>
      ) : (
        <form onSubmit={save}>
          <input aria-label="Title" value={editing} onChange={(e) => setEditing(e.target.value)} maxLength={200} autoFocus required />
          <button type="submit" disabled={pending}>
            Save
          </button>
        </form>
      )}
      <span className="actions">
        <button type="button" aria-label="Move left" disabled={pending || i === 0} onClick={() => move(STATUSES[i - 1])}>
          ←
        </button>
        <button type="button" aria-label="Move right" disabled={pending || i === STATUSES.length - 1} onClick={() => move(STATUSES[i + 1])}>
          →
        </button>
        <button
          type="button"
          aria-label="Delete"
          disabled={pending}
          onClick={() =>
            run(async () => {
              const gone = await deleteTask(task.id);
              if (gone) store.getState().remove(gone);
            })
          }
        >
          ×
        </button>
      </span>
      {error && <span className="error">{error}</span>}
    </li>
  );
}

function Members({ projectId }: { projectId: string }) {
  const store = useTasksStore();
  const members = useTasks((s) => s.members[projectId]) ?? [];
  const [email, setEmail] = useState("");
  const [pending, start] = useTransition();
  const [note, setNote] = useState<string | null>(null);
  const submit = (e: FormEvent) => {
    e.preventDefault();
    const typed = email;
    setEmail("");
    start(async () => {
      const r = await addMember(projectId, typed);
      setNote(r.error ?? null);
      if (r.member) store.getState().addMember(projectId, r.member);
      else setEmail((current) => current || typed);
    });
  };
  return (
    <section className="members">
      <h2>Members</h2>
      <ul data-testid="members">
        {members.map((m) => (
          <li key={m.id}>
            {m.name} <span className="muted">{m.email}</span>
          </li>
        ))}
      </ul>
      <form onSubmit={submit}>
        <input aria-label="Member email" type="email" placeholder="email of a signed-up user" value={email} onChange={(e) => setEmail(e.target.value)} required />
        <button type="submit" disabled={pending}>
          Add member
        </button>
        {note && <span className="error">{note}</span>}
      </form>
    </section>
  );
}
