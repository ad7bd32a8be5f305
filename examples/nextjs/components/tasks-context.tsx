"use client";
// The page's tasks store, and the hook that keeps one project current.
import { createContext, useCallback, useContext, useRef, useState, type ReactNode } from "react";
import { useStore } from "zustand";
import { useChannel } from "taskcast-client/react";
import { createTasksStore, type InitialTasks, type TasksState, type TasksStore } from "@/lib/tasks-store";
import { projectChannel, type TaskRow } from "@/lib/tasks";

const TasksContext = createContext<TasksStore | null>(null);

/** A store for this page, made once from the server-rendered rows. */
export function TasksProvider({ initial, children }: { initial: InitialTasks; children: ReactNode }) {
  const [store] = useState(() => createTasksStore(initial));
  return <TasksContext.Provider value={store}>{children}</TasksContext.Provider>;
}

export function useTasksStore(): TasksStore {
  const store = useContext(TasksContext);
  if (!store) throw new Error("useTasksStore must be used inside <TasksProvider>");
  return store;
}

export function useTasks<T>(selector: (s: TasksState) => T): T {
  return useStore(useTasksStore(), selector);
}

/** A channel position rendered by the server: messages after it reach the page. */
export type Position = { epoch: string; offset: number } | null;

/**
 * Keeps `projectId`'s tasks current: applies its channel's messages, and
 * refetches when taskcast cannot replay what the tab missed (a restart, a
 * gap too old to replay) or when the channel was just granted. With a
 * server-rendered position (`since`), nothing between the render and the
 * subscribe is lost; without one, the first subscribe refetches once.
 */
export function useProjectSync(projectId: string, since: Position) {
  const store = useTasksStore();
  const needsFirstRefetch = useRef(since === null);

  const refetch = useCallback(async () => {
    for (let attempt = 0; attempt < 5; attempt++) {
      const startedAt = store.getState().startRefetch();
      try {
        const res = await fetch(`/api/projects/${projectId}/tasks`, { cache: "no-store" });
        if (res.ok) {
          const { tasks } = (await res.json()) as { tasks: TaskRow[] };
          store.getState().merge(projectId, tasks, startedAt);
          return;
        }
        if (res.status === 401 || res.status === 404) return; // signed out, or no longer a member
      } catch {
        // offline: try again below
      }
      await new Promise((r) => setTimeout(r, 500 * 2 ** attempt));
    }
  }, [projectId, store]);

  useChannel(projectChannel(projectId), (message) => store.getState().receive(message), {
    since,
    onResync: () => void refetch(),
    onSubscribed: () => {
      if (needsFirstRefetch.current) {
        needsFirstRefetch.current = false;
        void refetch();
      }
    },
  });
}
