"use server";
// Server Actions: check who asks, write, then publish to the project's
// channel. Each returns the row it wrote, which the calling tab applies at
// once; its own broadcast then arrives with the same version and changes
// nothing.
import { randomUUID } from "node:crypto";
import { and, eq, inArray, sql } from "drizzle-orm";
import { requireUser } from "@/lib/auth";
import { db } from "@/lib/db";
import { projectFor, toTaskRow } from "@/lib/projects";
import { publish } from "@/lib/publish";
import { member, project, task, user } from "@/lib/schema";
import { MAX_TITLE, projectChannel, STATUSES, userChannel, type MemberRow, type ProjectRow, type Status, type TaskGone, type TaskRow } from "@/lib/tasks";

function cleanTitle(title: unknown): string {
  const t = typeof title === "string" ? title.trim() : "";
  if (t.length === 0 || t.length > MAX_TITLE) throw new Error(`a title has 1 to ${MAX_TITLE} characters`);
  return t;
}

/** The ids of the projects `userId` is a member of, as a subquery (the membership check inside each write). */
const projectsOfUser = (userId: string) => db.select({ id: member.projectId }).from(member).where(eq(member.userId, userId));

export async function createProject(name: string): Promise<ProjectRow> {
  const me = await requireUser();
  const row = { id: randomUUID(), name: cleanTitle(name) };
  await db.transaction(async (tx) => {
    await tx.insert(project).values(row);
    await tx.insert(member).values({ projectId: row.id, userId: me.id });
  });
  // The user's other tabs list it too.
  await publish("member_added", { project: row, member: { id: me.id, name: me.name, email: me.email } }, { users: [me.id] });
  return row;
}

export async function addMember(projectId: string, email: string): Promise<{ member?: MemberRow; error?: string }> {
  const me = await requireUser();
  const proj = await projectFor(me.id, projectId);
  if (!proj) return { error: "no such project" };
  const [other] = await db
    .select({ id: user.id, name: user.name, email: user.email })
    .from(user)
    .where(eq(user.email, String(email).trim().toLowerCase()))
    .limit(1);
  if (!other) return { error: "nobody has signed up with that email" };
  const inserted = await db.insert(member).values({ projectId, userId: other.id }).onConflictDoNothing().returning();
  if (inserted.length === 0) return { error: "already a member" };
  // One message on two channels: the members list of everyone on the
  // board, and the new member's own tabs (the project appears in their
  // list and they subscribe to it).
  await publish("member_added", { project: proj, member: other }, { channels: [projectChannel(projectId), userChannel(other.id)] });
  return { member: other };
}

export async function createTask(projectId: string, title: string): Promise<TaskRow> {
  const me = await requireUser();
  if (!(await projectFor(me.id, projectId))) throw new Error("no such project");
  const [row] = await db.insert(task).values({ id: randomUUID(), projectId, title: cleanTitle(title) }).returning();
  const t = toTaskRow(row);
  await publish("task_created", t, { channel: projectChannel(projectId) });
  return t;
}

/** Writes `changes` to a task of one of the caller's projects, one version up. Null: no such task (or deleted). */
async function writeTask(taskId: string, changes: { title?: string; status?: Status }): Promise<TaskRow | null> {
  const me = await requireUser();
  const [row] = await db
    .update(task)
    .set({ ...changes, version: sql`${task.version} + 1`, updatedAt: sql`now()` })
    .where(and(eq(task.id, taskId), inArray(task.projectId, projectsOfUser(me.id))))
    .returning();
  return row ? toTaskRow(row) : null;
}

export async function renameTask(taskId: string, title: string): Promise<TaskRow | null> {
  const t = await writeTask(taskId, { title: cleanTitle(title) });
  if (t) await publish("task_updated", t, { channel: projectChannel(t.projectId) });
  return t;
}

export async function moveTask(taskId: string, status: Status): Promise<TaskRow | null> {
  if (!STATUSES.includes(status)) throw new Error(`status is one of ${STATUSES.join(", ")}`);
  const t = await writeTask(taskId, { status });
  if (t) await publish("task_status_changed", t, { channel: projectChannel(t.projectId) });
  return t;
}

export async function deleteTask(taskId: string): Promise<TaskGone | null> {
  const me = await requireUser();
  const [row] = await db
    .delete(task)
    .where(and(eq(task.id, taskId), inArray(task.projectId, projectsOfUser(me.id))))
    .returning({ id: task.id, projectId: task.projectId, version: task.version });
  if (!row) return null;
  const gone = { ...row, version: row.version + 1 };
  await publish("task_deleted", gone, { channel: projectChannel(row.projectId) });
  return gone;
}
