// What the tests share: the real taskcast binary, real HS256 tokens, a real
// TCP proxy to cut connections with, and bounded waits. No mocks.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync, mkdtempSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const SECRET = 'js-client-tests-secret-0123456789abcdef';
const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(here, '../../..');
export const BIN = process.env.TASKCAST_BIN ?? path.join(REPO, 'target/release/taskcast');
/** Upper bound for one wait. */
export const WAIT_MS = 10_000;

export const nowSecs = () => Math.floor(Date.now() / 1000);

/** An HS256 JWT over `claims`, signed with `secret`. */
export function sign(claims, secret = SECRET) {
  const enc = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const body = `${enc({ alg: 'HS256', typ: 'JWT' })}.${enc(claims)}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

/** A token for `sub`, valid for `ttl` seconds (negative: already past exp, within the server's leeway). */
export function token(sub, { ttl = 3600, ...extra } = {}) {
  const now = nowSecs();
  return sign({ sub, iat: now, exp: now + ttl, channels: ['project:*', 'board:*'], ...extra });
}

const running = new Set();
process.on('exit', () => {
  for (const p of running) p.kill('SIGKILL');
});

/**
 * Starts target/release/taskcast on 127.0.0.1 and an OS-chosen port, in an
 * empty directory (so no .env applies), and resolves once it logs its
 * address. `env` adds variables; JWT_SECRET defaults to SECRET (pass
 * `JWT_SECRET: undefined` for development mode).
 */
export async function startServer(env = {}) {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run cargo build --release in ${REPO}`);
  // DRAIN_SECS=0: a stop closes every client at once (1012) instead of over 10 s.
  const full = { PATH: process.env.PATH, HOST: '127.0.0.1', PORT: '0', RUST_LOG: 'info', JWT_SECRET: SECRET, DRAIN_SECS: '0', ...env };
  for (const [k, v] of Object.entries(full)) if (v === undefined) delete full[k];
  const proc = spawn(BIN, [], { cwd: mkdtempSync(path.join(tmpdir(), 'taskcast-js-')), env: full, stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(proc);
  let stdout = '';
  let stderr = '';
  proc.stdout.on('data', (d) => (stdout += d));
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => {
    running.delete(proc);
    resolve({ code, signal });
  }));
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`taskcast did not start in ${WAIT_MS} ms:\n${stderr}`)), WAIT_MS);
    proc.stderr.on('data', (d) => {
      stderr += d;
      const m = /taskcast listening on (\S+)/.exec(stderr);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    exited.then(({ code }) => reject(new Error(`taskcast exited with ${code}:\n${stderr}`)));
  });
  const port = Number(addr.split(':').pop());
  return {
    port,
    http: `http://127.0.0.1:${port}`,
    ws: `ws://127.0.0.1:${port}/ws`,
    stdout: () => stdout,
    stderr: () => stderr,
    exited,
    /** SIGTERM (a drain: clients get 1012 at once, as DRAIN_SECS=0), then SIGKILL if it is still there after WAIT_MS. */
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), WAIT_MS);
      await exited;
      clearTimeout(t);
    },
  };
}

/**
 * A TCP proxy in front of a server: `cut()` destroys every open connection
 * (the client sees the network drop, close 1006), `hold()` makes new
 * connections fail until `release()`, `retarget(port)` points it at a
 * restarted server.
 */
export async function startProxy(targetPort) {
  let target = targetPort;
  let held = false;
  const sockets = new Set(); // every live socket, both sides, until its own 'close'
  const track = (sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
  };
  const server = net.createServer((client) => {
    track(client);
    if (held) return client.destroy();
    const upstream = net.connect(target, '127.0.0.1');
    track(upstream);
    // A close passes on as an end (so a close frame in flight still gets
    // through); an error destroys both sides.
    const fail = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', fail).on('close', () => upstream.end());
    upstream.on('error', fail).on('close', () => client.end());
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = server.address().port;
  return {
    port,
    http: `http://127.0.0.1:${port}`,
    ws: `ws://127.0.0.1:${port}/ws`,
    /** Destroys every connection at once: the client sees the network drop. */
    cut() {
      for (const sock of sockets) {
        try {
          sock.resetAndDestroy(); // RST, as a dropped network looks to the peer
        } catch {
          sock.destroy(); // not connected yet
        }
      }
    },
    hold() {
      held = true;
    },
    release() {
      held = false;
    },
    retarget(p) {
      target = p;
    },
    close() {
      const closed = new Promise((resolve) => server.close(resolve));
      for (const sock of sockets) sock.destroy();
      return closed;
    },
  };
}

/**
 * Resolves with the next `event` from `client` that passes `filter`, or
 * rejects after `ms`.
 */
export function nextEvent(client, event, { ms = WAIT_MS, filter = () => true } = {}) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${event} event within ${ms} ms`));
    }, ms);
    const off = client.on(event, (v) => {
      if (!filter(v)) return;
      clearTimeout(timer);
      off();
      resolve(v);
    });
  });
}

/** Polls `cond` every 20 ms until it is truthy; rejects after `ms`. For state kept outside an event. */
export async function until(cond, what, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Records a client's events in order, for assertions. */
export function record(client, events = ['connecting', 'connected', 'disconnected', 'refreshed', 'message', 'error', 'closed']) {
  const log = [];
  for (const e of events) client.on(e, (v) => log.push({ event: e, ...(v instanceof Error ? { code: v.code, message: v.message } : v) }));
  return log;
}

/**
 * Whether this server speaks channels: a subscribe is answered with
 * `subscribed` within 2 s. Tests that need channels skip without.
 */
export async function channelsSupported(server) {
  const { WebSocket } = await import('ws');
  const ws = new WebSocket(`${server.ws}?token=${token('probe')}`);
  try {
    return await new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), 2000);
      ws.on('open', () => ws.send(JSON.stringify({ type: 'subscribe', channel: 'project:probe' })));
      ws.on('message', (d) => {
        const m = JSON.parse(String(d));
        if (m.type === 'subscribed' && m.channel === 'project:probe') {
          clearTimeout(timer);
          resolve(true);
        }
      });
      ws.on('error', () => resolve(false));
    });
  } finally {
    ws.terminate();
  }
}

/** POST /api/broadcast with a bearer token; resolves `{status, body}`. */
export async function post(base, body, bearer = token('publisher')) {
  const res = await fetch(`${base}/api/broadcast`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${bearer}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

/** Debian's chromium through playwright-core, headless, in a throwaway profile. */
export async function launchChromium() {
  const { chromium } = await import('playwright-core');
  const { mkdtempSync: mkdtemp } = await import('node:fs');
  return chromium.launchPersistentContext(mkdtemp(path.join(tmpdir(), 'taskcast-chromium-')), {
    executablePath: CHROMIUM,
    headless: true,
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

/** A small HTTP server on 127.0.0.1 answering `routes[path]` (`{type, body}`); 404 otherwise. Resolves with its origin and close(). */
export async function serveRoutes(routes) {
  const http = await import('node:http');
  const server = http.createServer((req, res) => {
    const route = routes[new URL(req.url, 'http://x').pathname];
    if (!route) return res.writeHead(404).end();
    res.writeHead(200, { 'Content-Type': route.type });
    res.end(typeof route.body === 'function' ? route.body() : route.body);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { origin: `http://127.0.0.1:${server.address().port}`, close: () => server.close() };
}

/** The value of a gauge or counter in the server's /metrics (first sample line), or null. */
export async function metric(base, name) {
  const text = await (await fetch(`${base}/metrics`)).text();
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)`, 'm').exec(text);
  return m ? Number(m[1]) : null;
}
