// The database: PGlite (Postgres compiled to WebAssembly, running inside the
// Next.js server process, stored in a directory) through Drizzle. Nothing to
// install, nothing built natively. One process may open a data directory at
// a time, which is what `next start` is.
import "server-only";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { PGlite } from "@electric-sql/pglite";
import { drizzle, type PgliteDatabase } from "drizzle-orm/pglite";
import { migrate } from "drizzle-orm/pglite/migrator";
import * as schema from "./schema";

export type Db = PgliteDatabase<typeof schema>;

// Survives module reloads in `next dev` (a second PGlite on the same
// directory would corrupt it).
const cache = globalThis as unknown as { exampleDb?: Db };

function open(): Db {
  const dataDir = process.env.DATABASE_DIR
    ? path.resolve(/* turbopackIgnore: true */ process.env.DATABASE_DIR)
    : path.join(process.cwd(), ".data", "pglite");
  mkdirSync(dataDir, { recursive: true });
  return drizzle({ client: new PGlite(dataDir), schema });
}

function getDb(): Db {
  return (cache.exampleDb ??= open());
}

/**
 * The database, opened on first use rather than at import: `next build`
 * imports the routes (in worker processes) to collect page data, and must
 * not open or create the data directory.
 */
export const db: Db = new Proxy({} as Db, {
  get(_target, prop) {
    const real = getDb();
    const value = Reflect.get(real, prop, real);
    return typeof value === "function" ? value.bind(real) : value;
  },
});

/** Applies drizzle/*.sql (made by `npm run db:generate`); instrumentation.ts runs it before the first request. */
export async function migrateDatabase(): Promise<void> {
  await migrate(getDb(), { migrationsFolder: path.join(process.cwd(), "drizzle") });
}
