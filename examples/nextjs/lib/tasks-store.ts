// The browser's copy of the tasks it shows, in a Zustand store (one per
// page: created from the server-rendered rows, kept current by taskcast
// messages, Server Action results and refetches).
//
// Rows reach a tab three ways — its own Server Action's result, taskcast
// messages (its own included), and refetches — in any order. Two rules make
// the order not matter:
// - per task, the highest `version` wins; an equal one changes nothing
//   (a tab applies its own change, then its own broadcast: a no-op);
// - a deleted task stays deleted (ids are never reused): a refetch that
//   started before the delete cannot bring it back.
// A refetch removes a task it does not return only if the tab knew that
// task before the refetch started; one that arrived meanwhile (created
// after the database was read) stays.
import { createStore } from "zustand/vanilla";
import type { ChannelMessage } from "taskcast-client";
import type { MemberRow, Messages, ProjectRow, TaskGone, TaskRow } from "./tasks";

export interface TasksState {
  projects: ProjectRow[];
  tasks: Record<string, TaskRow>;
  /** Deleted task ids: never shown again, whatever arrives later. */
  gone: Record<string, true>;
  /** Per task, the `clock` value when the tab last learnt of it (0: server-rendered). */
  seenAt: Record<string, number>;
  /** Grows by one with every change applied; a refetch remembers it when it starts. */
  clock: number;
  members: Record<string, MemberRow[]>;

  apply(row: TaskRow): void;
  remove(gone: TaskGone): void;
  /** Call before fetching; pass the result to `merge` with the rows. */
  startRefetch(): number;
  merge(projectId: string, rows: TaskRow[], startedAt: number): void;
  addProject(project: ProjectRow): void;
  addMember(projectId: string, member: MemberRow): void;
  /** A message from a project's channel or the user's own. */
  receive(message: ChannelMessage): void;
}

export interface InitialTasks {
  projects: ProjectRow[];
  tasks: TaskRow[];
  members?: Record<string, MemberRow[]>;
}

export function createTasksStore(initial: InitialTasks) {
  return createStore<TasksState>()((set, get) => ({
    projects: initial.projects,
    tasks: Object.fromEntries(initial.tasks.map((t) => [t.id, t])),
    gone: {},
    seenAt: Object.fromEntries(initial.tasks.map((t) => [t.id, 0])),
    clock: 0,
    members: initial.members ?? {},

    apply(row) {
      set((s) => {
        if (s.gone[row.id]) return s;
        const current = s.tasks[row.id];
        if (current && current.version >= row.version) return s;
        const clock = s.clock + 1;
        return { clock, tasks: { ...s.tasks, [row.id]: row }, seenAt: { ...s.seenAt, [row.id]: clock } };
      });
    },

    remove({ id }) {
      set((s) => {
        if (s.gone[id]) return s;
        const { [id]: _removed, ...tasks } = s.tasks;
        return { clock: s.clock + 1, tasks, gone: { ...s.gone, [id]: true } };
      });
    },

    startRefetch() {
      return get().clock;
    },

    merge(projectId, rows, startedAt) {
      const returned = new Set(rows.map((r) => r.id));
      for (const row of rows) get().apply(row);
      for (const t of Object.values(get().tasks)) {
        if (t.projectId === projectId && !returned.has(t.id) && (get().seenAt[t.id] ?? 0) <= startedAt) {
          get().remove({ id: t.id, projectId, version: t.version + 1 });
        }
      }
    },

    addProject(project) {
      set((s) => (s.projects.some((p) => p.id === project.id) ? s : { projects: [...s.projects, project] }));
    },

    addMember(projectId, member) {
      set((s) => {
        const list = s.members[projectId] ?? [];
        if (list.some((m) => m.id === member.id)) return s;
        return { members: { ...s.members, [projectId]: [...list, member] } };
      });
    },

    receive(message) {
      const s = get();
      switch (message.type as keyof Messages) {
        case "task_created":
        case "task_updated":
        case "task_status_changed":
          s.apply(message.payload as TaskRow);
          break;
        case "task_deleted":
          s.remove(message.payload as TaskGone);
          break;
        case "member_added": {
          // On a project's channel: a new face in its members list. On the
          // user's own channel: a project to list (already listed: no-op).
          const { project, member } = message.payload as Messages["member_added"];
          s.addProject(project);
          s.addMember(project.id, member);
          break;
        }
        default:
          // A type this version of the page does not know: ignore it.
          break;
      }
    },
  }));
}

export type TasksStore = ReturnType<typeof createTasksStore>;
