// What the end-to-end test runs: the real app (`next build`, `next start`,
// PGlite in a temporary directory), the real taskcast release binary
// checking BetterAuth's tokens through the app's JWKS, TCP proxies to cut a
// tab's network or stall taskcast, and Debian's Chromium through
// playwright-core. No mocks. Every wait is bounded; every process started
// here is killed when the test process exits.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const APP_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const REPO = path.resolve(APP_DIR, '../..');
export const TASKCAST_BIN = process.env.TASKCAST_BIN ?? path.join(REPO, 'target/release/taskcast');
/** Upper bound for one wait. */
export const WAIT_MS = 15_000;
export const BROADCAST_API_KEY = 'e2e-broadcast-key-0123456789abcdef';
const BETTER_AUTH_SECRET = 'e2e-better-auth-secret-0123456789abcdef';
const NEXT_BIN = path.join(APP_DIR, 'node_modules/next/dist/bin/next');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `cond` until it returns something truthy; throws naming `what` after `ms`. */
export async function until(cond, what, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await cond();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(50);
  }
}

/** Resolves with `promise`, or throws naming `what` if it takes longer than `ms`. */
export async function within(promise, what, ms = WAIT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** A port nobody listens on right now (the OS picks it). */
export async function freePort() {
  const srv = net.createServer();
  await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address();
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

// Every child runs in its own process group, killed whole at exit (next
// start forks a server process of its own).
const children = new Set();
process.on('exit', () => {
  for (const child of children) killGroup(child, 'SIGKILL');
});

function killGroup(child, signal) {
  try {
    process.kill(-child.pid, signal);
  } catch {
    // already gone
  }
}

/**
 * Spawns `cmd` in its own process group. Resolves once a line of its output
 * matches `ready`; rejects if it exits first or takes longer than `ms`.
 */
function start(name, cmd, args, { env, cwd, ready, ms = WAIT_MS }) {
  const child = spawn(cmd, args, { cwd, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let output = '';
  const exited = new Promise((resolve) =>
    child.on('exit', (code, signal) => {
      children.delete(child);
      resolve({ code, signal });
    }),
  );
  const started = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} not ready within ${ms} ms:\n${output}`)), ms);
    const onData = (d) => {
      output += d;
      const m = ready.exec(output);
      if (m) {
        clearTimeout(timer);
        resolve(m);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited (${code ?? signal}) before it was ready:\n${output}`));
    });
  });
  return {
    child,
    started,
    exited,
    output: () => output,
    /** SIGTERM to the whole group, SIGKILL after `ms`; resolves when it is gone. */
    async stop(signal = 'SIGTERM', ms = WAIT_MS) {
      if (child.exitCode !== null || child.signalCode !== null) return;
      killGroup(child, signal);
      const t = setTimeout(() => killGroup(child, 'SIGKILL'), ms);
      await exited;
      clearTimeout(t);
    },
  };
}

/** The variables the app reads, for `next build` and `next start` alike. */
function appEnv(extra) {
  return {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    NODE_ENV: 'production',
    NEXT_TELEMETRY_DISABLED: '1',
    BETTER_AUTH_SECRET,
    ...extra,
  };
}

/** `next build`, once per run (`E2E_SKIP_BUILD=1` reuses .next while working on the test itself). */
export async function buildApp() {
  if (process.env.E2E_SKIP_BUILD === '1' && existsSync(path.join(APP_DIR, '.next/BUILD_ID'))) return;
  const build = start('next build', process.execPath, [NEXT_BIN, 'build'], {
    cwd: APP_DIR,
    env: appEnv({}),
    ready: /Route \(app\)/,
    ms: 300_000,
  });
  await build.started;
  const { code } = await build.exited;
  if (code !== 0) throw new Error(`next build failed (${code}):\n${build.output()}`);
}

/**
 * `next start` on `port`, with a fresh database, publishing to
 * `taskcastHttp` and pointing browsers at `taskcastWs`. Resolves once the
 * JWKS answers (which makes BetterAuth create its first key, so taskcast
 * finds one at start-up).
 */
export async function startApp({ port, taskcastHttp, taskcastWs, tokenTtl }) {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'taskcast-nextjs-db-'));
  const url = `http://127.0.0.1:${port}`;
  const app = start('next start', process.execPath, [NEXT_BIN, 'start', '-p', String(port), '-H', '127.0.0.1'], {
    cwd: APP_DIR,
    env: appEnv({
      BETTER_AUTH_URL: url,
      DATABASE_DIR: dataDir,
      TASKCAST_URL: taskcastHttp,
      TASKCAST_PUBLIC_URL: taskcastWs,
      BROADCAST_API_KEY,
      AUTH_JWT_TTL: tokenTtl,
    }),
    ready: /Ready in/,
    ms: 60_000,
  });
  await app.started;
  await until(async () => (await fetch(`${url}/api/auth/jwks`).catch(() => null))?.ok, 'the app to serve its JWKS', 60_000);
  return {
    ...app,
    url,
    async stop() {
      await app.stop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** The taskcast release binary on `port`, checking the app's BetterAuth tokens. */
export async function startTaskcast({ port, appUrl }) {
  if (!existsSync(TASKCAST_BIN)) throw new Error(`${TASKCAST_BIN} is missing: run cargo build --release in ${REPO}`);
  const cwd = mkdtempSync(path.join(tmpdir(), 'taskcast-nextjs-')); // no .env applies
  const tc = start('taskcast', TASKCAST_BIN, [], {
    cwd,
    env: {
      PATH: process.env.PATH,
      HOST: '127.0.0.1',
      PORT: String(port),
      JWKS_URL: `${appUrl}/api/auth/jwks`,
      JWT_ISSUER: appUrl,
      JWT_AUDIENCE: appUrl,
      // No leeway: a token that was not refreshed in time ends its
      // connection at `exp` (the refresh test would see it).
      JWT_LEEWAY_SECS: '0',
      ALLOWED_ORIGINS: appUrl,
      BROADCAST_API_KEY,
      DRAIN_SECS: '0',
      SHUTDOWN_GRACE_SECS: '1',
      RUST_LOG: 'info',
    },
    ready: /taskcast listening on (\S+)/,
  });
  await tc.started;
  return { ...tc, http: `http://127.0.0.1:${port}`, ws: `ws://127.0.0.1:${port}/ws` };
}

/**
 * A TCP proxy to 127.0.0.1:`targetPort`. Browser connections are told apart
 * by the `e2e-user/<name>` their User-Agent ends with: `cut(name)` drops that
 * user's connections (RST, as a lost network looks), `block(name)` refuses
 * new ones until `unblock(name)`. `stall()` makes it accept connections and
 * never answer (a hung taskcast), until `unstall()`.
 */
export async function startProxy(targetPort) {
  const sockets = new Map(); // socket -> user name ('' for none)
  const blocked = new Set();
  let stalled = false;
  const stalledSockets = new Set();
  const server = net.createServer((client) => {
    sockets.set(client, '');
    client.on('close', () => sockets.delete(client));
    client.on('error', () => client.destroy());
    if (stalled) {
      stalledSockets.add(client); // accepted, never answered
      return;
    }
    let head = Buffer.alloc(0);
    const onHead = (chunk) => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0 && head.length < 65536) return;
      client.off('data', onHead);
      const name = /^user-agent:.*e2e-user\/(\w+)/im.exec(head.subarray(0, end).toString('latin1'))?.[1] ?? '';
      sockets.set(client, name);
      if (blocked.has(name)) return client.resetAndDestroy();
      const upstream = net.connect(targetPort, '127.0.0.1');
      sockets.set(upstream, name);
      upstream.on('close', () => sockets.delete(upstream));
      const fail = () => {
        client.destroy();
        upstream.destroy();
      };
      client.on('error', fail).on('close', () => upstream.end());
      upstream.on('error', fail).on('close', () => client.end());
      upstream.write(head);
      client.pipe(upstream);
      upstream.pipe(client);
    };
    client.on('data', onHead);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  const drop = (sock) => {
    try {
      sock.resetAndDestroy();
    } catch {
      sock.destroy();
    }
  };
  return {
    port,
    http: `http://127.0.0.1:${port}`,
    ws: `ws://127.0.0.1:${port}/ws`,
    /** Open connections of `name`. */
    count: (name) => [...sockets.values()].filter((n) => n === name).length,
    cut(name) {
      for (const [sock, n] of sockets) if (n === name) drop(sock);
    },
    block: (name) => blocked.add(name),
    unblock: (name) => blocked.delete(name),
    /** From now on, connections hang; open ones (kept alive by the caller's HTTP client) are dropped so its next request makes a new one. */
    stall() {
      stalled = true;
      for (const [sock, n] of sockets) if (n === '') drop(sock);
    },
    unstall() {
      stalled = false;
      for (const sock of stalledSockets) drop(sock);
      stalledSockets.clear();
    },
    close() {
      const closed = new Promise((resolve) => server.close(resolve));
      for (const sock of sockets.keys()) sock.destroy();
      return closed;
    },
  };
}

export async function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/**
 * One person: a browser context (own cookies) whose User-Agent names them
 * to the proxy, and a record of what their pages do on the network: every
 * WebSocket (with its frames and whether it closed) and every request
 * path.
 */
export async function person(browser, app, name) {
  const context = await browser.newContext({
    baseURL: app.url,
    userAgent: `Mozilla/5.0 (X11; Linux x86_64) Chromium e2e-user/${name}`,
  });
  context.setDefaultTimeout(WAIT_MS);
  const sockets = [];
  const requests = [];
  const problems = [];
  context.on('page', (page) => watch(page));
  const watch = (page) => {
    page.on('websocket', (ws) => {
      const rec = { page, url: ws.url(), sent: [], received: [], closed: false, openedAt: Date.now() };
      sockets.push(rec);
      ws.on('framesent', (f) => rec.sent.push(String(f.payload)));
      ws.on('framereceived', (f) => rec.received.push(String(f.payload)));
      ws.on('close', () => (rec.closed = true));
    });
    page.on('request', (req) => requests.push(new URL(req.url()).pathname));
    page.on('pageerror', (err) => problems.push(`pageerror: ${err.message}`));
  };
  return { name, email: `${name}@example.com`, password: `${name}-password-123`, context, sockets, requests, problems };
}

/** Signs `who` up through BetterAuth's endpoint (the browser form is tested once, in the test itself). */
export async function signUp(app, who) {
  const res = await who.context.request.post('/api/auth/sign-up/email', {
    data: { name: who.name, email: who.email, password: who.password },
    headers: { Origin: app.url },
  });
  if (!res.ok()) throw new Error(`sign-up of ${who.name}: ${res.status()} ${await res.text()}`);
  return (await res.json()).user;
}

/** The tasks a board page shows: [{id, title, status, version}], sorted by id. */
export async function boardOf(page) {
  const rows = await page.$$eval('[data-testid=task]', (els) =>
    els.map((el) => ({
      id: el.dataset.taskId,
      title: el.querySelector('.title')?.textContent ?? null,
      status: el.closest('section').dataset.testid.replace('column-', ''),
      version: Number(el.dataset.version),
    })),
  );
  return rows.sort((a, b) => a.id.localeCompare(b.id));
}

/** The project's tasks in the database, read through the app's own route as `who`. */
export async function tasksInDb(who, projectId) {
  const res = await who.context.request.get(`/api/projects/${projectId}/tasks`);
  if (!res.ok()) throw new Error(`tasks of ${projectId}: ${res.status()}`);
  const { tasks } = await res.json();
  return tasks.map(({ id, title, status, version }) => ({ id, title, status, version })).sort((a, b) => a.id.localeCompare(b.id));
}

/** Waits until `page`'s board equals `expected` (a list from tasksInDb); the error shows both. */
export async function boardEquals(page, expected, what, ms = WAIT_MS) {
  const want = JSON.stringify(expected);
  let got;
  try {
    await until(async () => (got = JSON.stringify(await boardOf(page))) === want, what, ms);
  } catch (e) {
    throw new Error(`${e.message}\n  board:    ${got}\n  expected: ${want}`);
  }
}

/** The channel messages (`{type, channel, offset, ...}`) a recorded WebSocket received, parsed. */
export function channelFrames(rec, channel) {
  return rec.received
    .map((f) => {
      try {
        return JSON.parse(f);
      } catch {
        return null;
      }
    })
    .filter((m) => m && m.channel === channel);
}
