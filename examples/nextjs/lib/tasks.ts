// What a task looks like outside the database: in Server Action results, in
// broadcasts, in the browser's store. Plain JSON (dates as ISO strings), so a
// row reads the same whichever way it arrived. Safe to import anywhere.
import type { Status } from "./schema";

export type { Status };
export const STATUSES: readonly Status[] = ["todo", "doing", "done"];
export const STATUS_LABELS: Record<Status, string> = { todo: "To do", doing: "Doing", done: "Done" };

export interface TaskRow {
  id: string;
  projectId: string;
  title: string;
  status: Status;
  /** Grows with every write; the browser never applies a lower one over a higher one. */
  version: number;
  createdAt: string;
  updatedAt: string;
}

export interface ProjectRow {
  id: string;
  name: string;
}

export interface MemberRow {
  id: string;
  name: string;
  email: string;
}

/** A deleted task: its id and the version the delete gave it. */
export interface TaskGone {
  id: string;
  projectId: string;
  version: number;
}

/** The message types the Server Actions publish, and what each carries. */
export interface Messages {
  task_created: TaskRow;
  task_updated: TaskRow;
  task_status_changed: TaskRow;
  task_deleted: TaskGone;
  /** To the project's channel (its members list) and to the new member's `user:` channel (the project). */
  member_added: { project: ProjectRow; member: MemberRow };
}

/** The channel a project's updates travel on; its members may join it. */
export const projectChannel = (projectId: string) => `project:${projectId}`;

/** Every user's tabs are in `user:<id>` from the start. */
export const userChannel = (userId: string) => `user:${userId}`;

export const MAX_TITLE = 200;
