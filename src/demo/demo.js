// The demo page's logic: the taskcast client library, a task list, a form.
import { connect } from '/taskcast-client.js';

const CHANNEL = 'project:demo';
const $ = (id) => document.getElementById(id);
const tasks = new Map(); // id -> { id, title, done }

function log(line) {
  const el = $('log');
  el.textContent = `${new Date().toLocaleTimeString()} ${line}\n${el.textContent}`.slice(0, 8000);
}

function setStatus(state, text = state) {
  $('status').dataset.state = state;
  $('status').textContent = text;
}

function render() {
  const list = $('tasks');
  list.replaceChildren(
    ...[...tasks.values()].map((t) => {
      const li = document.createElement('li');
      li.dataset.id = t.id;
      li.className = t.done ? 'done' : '';
      const box = document.createElement('input');
      box.type = 'checkbox';
      box.checked = Boolean(t.done);
      box.addEventListener('change', () => publish('task_updated', { id: t.id, done: box.checked }));
      const title = document.createElement('span');
      title.textContent = t.title;
      li.append(box, title);
      return li;
    }),
  );
}

/** Applies one message (a channel message or a broadcast to everyone). */
function apply(msg) {
  const p = msg.payload ?? {};
  log(`${msg.channel ? `${msg.channel}#${msg.offset} ` : ''}${msg.type} ${JSON.stringify(p)}`);
  if (typeof p.id !== 'string') return;
  if (msg.type === 'task_created') tasks.set(p.id, { id: p.id, title: String(p.title ?? ''), done: false });
  else if (msg.type === 'task_updated' || msg.type === 'task_status_changed') {
    const t = tasks.get(p.id);
    if (t) tasks.set(p.id, { ...t, ...p, title: String(p.title ?? t.title), done: Boolean(p.done ?? t.done) });
  } else if (msg.type === 'task_deleted') tasks.delete(p.id);
  render();
}

function startWith(token) {
  $('token-form').style.display = 'none';
  window.taskcastToken = token;
  const client = connect({ url: '/ws', getToken: async () => token, onBroadcast: apply });
  window.taskcastClient = client;
  client.on('connecting', ({ attempt }) => setStatus('connecting', attempt ? `reconnecting… (${attempt})` : 'connecting…'));
  client.on('connected', () => setStatus('connected'));
  client.on('disconnected', ({ code, reason, willReconnect }) => {
    setStatus(willReconnect ? 'disconnected' : 'closed', `disconnected (${code})`);
    log(`disconnected ${code} ${reason}`);
  });
  client.on('error', (e) => log(`error ${e.code}: ${e.message}`));
  client.subscribe(CHANNEL, {
    onMessage: apply,
    onSubscribed: ({ epoch, offset, recovered }) => {
      $('note').textContent = '';
      log(`subscribed ${CHANNEL} epoch ${epoch} offset ${offset} recovered ${recovered}`);
    },
    onResync: ({ reason }) => {
      // A real app refetches the channel's data from its database here.
      $('note').textContent = `missed updates could not be replayed (${reason}): a real app refetches now`;
    },
  });
  // Before channels, the server ignores the subscribe; channel broadcasts then reach everyone.
  setTimeout(() => {
    if (client.state === 'open' && !$('log').textContent.includes('subscribed')) {
      $('note').textContent = 'this server has no channels: showing broadcasts to everyone';
    }
  }, 3000);
}

async function publish(type, data) {
  try {
    const res = await fetch('/api/broadcast', {
      method: 'POST',
      headers: { Authorization: `Bearer ${window.taskcastToken}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ type, data, channel: CHANNEL }),
    });
    const body = await res.json();
    log(res.ok ? `posted ${type}: ${body.recipients} recipient(s)` : `post failed ${res.status}: ${body.message}`);
  } catch (e) {
    log(`post failed: ${e.message}`);
  }
}

$('add').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const title = $('title').value.trim();
  if (!title || !window.taskcastToken) return;
  const id = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
  publish('task_created', { id, title });
  $('title').value = '';
});

const injected = document.querySelector('meta[name="taskcast-dev-token"]')?.content;
const fromFragment = new URLSearchParams(location.hash.slice(1)).get('token');
if (fromFragment || injected) {
  startWith(fromFragment || injected);
} else {
  setStatus('closed', 'no token');
  $('token-form').style.display = 'flex';
  $('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const t = $('token-input').value.trim().replace(/^TOKEN=/, '');
    if (t) startWith(t);
  });
}
