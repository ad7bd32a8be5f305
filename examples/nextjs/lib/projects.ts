// Reads: who is in which project, and what a project holds. Every read that
// answers a user checks membership first.
import "server-only";
import { and, asc, eq } from "drizzle-orm";
import { db } from "./db";
import { member, project, task, user } from "./schema";
import type { MemberRow, ProjectRow, TaskRow } from "./tasks";

export function toTaskRow(row: typeof task.$inferSelect): TaskRow {
  return {
    id: row.id,
    projectId: row.projectId,
    title: row.title,
    status: row.status,
    version: row.version,
    createdAt: row.createdAt.toISOString(),
    updatedAt: row.updatedAt.toISOString(),
  };
}

export async function projectIdsOf(userId: string): Promise<string[]> {
  const rows = await db.select({ id: member.projectId }).from(member).where(eq(member.userId, userId));
  return rows.map((r) => r.id);
}

export async function isMember(userId: string, projectId: string): Promise<boolean> {
  const rows = await db
    .select({ id: member.projectId })
    .from(member)
    .where(and(eq(member.userId, userId), eq(member.projectId, projectId)))
    .limit(1);
  return rows.length > 0;
}

export async function projectsOf(userId: string): Promise<ProjectRow[]> {
  return db
    .select({ id: project.id, name: project.name })
    .from(project)
    .innerJoin(member, eq(member.projectId, project.id))
    .where(eq(member.userId, userId))
    .orderBy(asc(project.createdAt), asc(project.id));
}

/** The project, if `userId` is one of its members; null otherwise (whether or not it exists). */
export async function projectFor(userId: string, projectId: string): Promise<ProjectRow | null> {
  const rows = await db
    .select({ id: project.id, name: project.name })
    .from(project)
    .innerJoin(member, eq(member.projectId, project.id))
    .where(and(eq(member.userId, userId), eq(project.id, projectId)))
    .limit(1);
  return rows[0] ?? null;
}

export async function membersOf(projectId: string): Promise<MemberRow[]> {
  return db
    .select({ id: user.id, name: user.name, email: user.email })
    .from(user)
    .innerJoin(member, eq(member.userId, user.id))
    .where(eq(member.projectId, projectId))
    .orderBy(asc(member.createdAt), asc(user.id));
}

export async function tasksOf(projectId: string): Promise<TaskRow[]> {
  const rows = await db
    .select()
    .from(task)
    .where(eq(task.projectId, projectId))
    .orderBy(asc(task.createdAt), asc(task.id));
  return rows.map(toTaskRow);
}
