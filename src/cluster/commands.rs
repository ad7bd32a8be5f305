//! The `taskcast-redis` thread: one connection for publishes, history
//! reads and control records, each an atomic Lua script run with EVALSHA.
//!
//! Requests are pipelined: the thread takes everything that has queued up
//! (up to [`MAX_BATCH`]) and sends it in one write, then reads the answers in
//! order. One publish alone costs one round trip; eight in flight cost about
//! one too. Redis runs the scripts one at a time in the order sent, so
//! pipelining changes nothing about ordering.
//!
//! Faults: every read and write is bounded by [`COMMAND_TIMEOUT`]. A broken
//! or timed-out connection fails the requests that were out (a publish then
//! may or may not have been stored: the caller hears "failed", never a false
//! "ok"), and is replaced; while there is none, requests fail at once with
//! the last connect error, and reconnects follow [`super::Backoff`]. An idle
//! connection is PINGed every [`IDLE_PING`], and at once when the pub/sub
//! thread saw Redis go away, so an outage is noticed before a publish hits it.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use log::{debug, warn};
use redis::{Client, Cmd, Connection, ConnectionLike, Script, ServerErrorKind, Value};

use super::keys::Names;
use super::{BROADCAST, Backoff, Command, Conn, Entry, Event, HistorySettings, META_TTL, Outbox, Rng, wire};

/// Connecting (TCP, AUTH, SELECT, loading the scripts) must finish by then.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Each read and write on the connection: an answer slower than this means
/// the connection (or Redis) is stuck, and it is replaced.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// An idle connection is checked this often.
pub const IDLE_PING: Duration = Duration::from_secs(1);
/// Requests sent in one pipeline at most.
pub const MAX_BATCH: usize = 64;

const PUBLISH_LUA: &str = include_str!("publish.lua");
const HISTORY_LUA: &str = include_str!("history.lua");
const BROADCAST_ONCE_LUA: &str = include_str!("broadcast_once.lua");
const CONTROL_LUA: &str = include_str!("control.lua");
const CONTROL_LOAD_LUA: &str = include_str!("control_load.lua");
const PAGE_LUA: &str = include_str!("page.lua");

/// Every script this thread runs, loaded on each new connection (and again
/// after a SCRIPT FLUSH).
struct Scripts {
    publish: Script,
    history: Script,
    broadcast_once: Script,
    control: Script,
    control_load: Script,
    page: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            publish: Script::new(PUBLISH_LUA),
            history: Script::new(HISTORY_LUA),
            broadcast_once: Script::new(BROADCAST_ONCE_LUA),
            control: Script::new(CONTROL_LUA),
            control_load: Script::new(CONTROL_LOAD_LUA),
            page: Script::new(PAGE_LUA),
        }
    }

    fn load(&self, conn: &mut Connection) -> redis::RedisResult<()> {
        for s in [&self.publish, &self.history, &self.broadcast_once, &self.control, &self.control_load, &self.page] {
            s.prepare_invoke().load(conn)?;
        }
        Ok(())
    }
}

/// What the thread is asked to do.
pub enum Job {
    Run(Request),
    /// Check the connection now (the pub/sub connection just broke).
    Probe,
}

/// The [`Command`]s this thread runs (the others go to the subscriber).
pub enum Request {
    Publish {
        id: u64,
        channel: String,
        kind: String,
        payload: String,
    },
    History {
        id: u64,
        channel: String,
        since: Option<(String, u64)>,
    },
    /// Everything but Publish and History is kept as the command itself.
    Other(Command),
}

impl Request {
    /// `Err` gives back the commands that are not requests.
    pub fn from_command(c: Command) -> Result<Request, Command> {
        match c {
            Command::Publish { id, channel, kind, payload } => Ok(Request::Publish { id, channel, kind, payload }),
            Command::History { id, channel, since } => Ok(Request::History { id, channel, since }),
            c @ (Command::PublishOnce { .. }
            | Command::Control { .. }
            | Command::LoadControl { .. }
            | Command::Page { .. }) => Ok(Request::Other(c)),
            other => Err(other),
        }
    }

    pub fn into_command(self) -> Command {
        match self {
            Request::Publish { id, channel, kind, payload } => Command::Publish { id, channel, kind, payload },
            Request::History { id, channel, since } => Command::History { id, channel, since },
            Request::Other(c) => c,
        }
    }
}

pub struct Worker {
    client: Client,
    names: Names,
    history: HistorySettings,
    outbox: Arc<Outbox>,
    jobs: Receiver<Job>,
    rng: Rng,
    scripts: Scripts,
    conn: Option<Connection>,
    /// Why the last connect failed: the error a request gets while down.
    last_error: String,
    backoff: Backoff,
    /// When to try connecting again (while `conn` is `None`).
    retry_at: Instant,
}

impl Worker {
    pub fn new(
        client: Client,
        names: Names,
        history: HistorySettings,
        outbox: Arc<Outbox>,
        jobs: Receiver<Job>,
    ) -> Worker {
        Worker {
            client,
            names,
            history,
            outbox,
            jobs,
            rng: Rng::new(),
            scripts: Scripts::new(),
            conn: None,
            last_error: "not connected yet".into(),
            backoff: Backoff::new(),
            retry_at: Instant::now(),
        }
    }

    /// Runs until the link is dropped.
    pub fn run(mut self) {
        loop {
            if self.conn.is_none() && Instant::now() >= self.retry_at {
                self.connect();
            }
            let wait = match self.conn {
                Some(_) => IDLE_PING,
                None => self.retry_at.saturating_duration_since(Instant::now()),
            };
            let first = match self.jobs.recv_timeout(wait) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => Job::Probe,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match self.jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            if !self.run_batch(batch) {
                return;
            }
        }
    }

    fn connect(&mut self) {
        let attempt = || -> redis::RedisResult<Connection> {
            let mut conn = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
            conn.set_read_timeout(Some(COMMAND_TIMEOUT))?;
            conn.set_write_timeout(Some(COMMAND_TIMEOUT))?;
            self.scripts.load(&mut conn)?;
            Ok(conn)
        };
        match attempt() {
            Ok(conn) => {
                self.conn = Some(conn);
                self.backoff.reset();
                self.outbox.set(Conn::Commands, Ok(()));
            }
            Err(e) => {
                self.last_error = format!("cannot connect to Redis: {e}");
                self.retry_at = Instant::now() + self.backoff.delay(&mut self.rng);
                self.outbox.set(Conn::Commands, Err(&self.last_error));
            }
        }
    }

    /// Sends the batch as one pipeline and posts an event per request.
    /// False when the loop is gone.
    fn run_batch(&mut self, batch: Vec<Job>) -> bool {
        let requests: Vec<Request> = batch
            .into_iter()
            .filter_map(|j| match j {
                Job::Run(c) => Some(c),
                Job::Probe => None,
            })
            .collect();
        let Some(conn) = self.conn.as_mut() else {
            let error = format!("Redis is unreachable ({})", self.last_error);
            return requests.into_iter().all(|c| self.outbox.post(failed(c, &error)));
        };
        let mut cmds: Vec<Cmd> = Vec::with_capacity(requests.len() + 1);
        if requests.is_empty() {
            cmds.push(redis::cmd("PING"));
        }
        for c in &requests {
            cmds.push(to_redis(c, &self.names, self.history, &mut self.rng, &self.scripts));
        }
        let answers = match pipeline(conn, &cmds) {
            Ok(mut answers) => {
                // NOSCRIPT: someone ran SCRIPT FLUSH. Those requests did not
                // run at all, so loading the scripts and sending them again
                // is safe (and happens at most once per batch).
                let stale: Vec<usize> = (0..answers.len()).filter(|&i| is_noscript(&answers[i])).collect();
                if !stale.is_empty() {
                    debug!("Redis lost our scripts; loading them again");
                    let again: Vec<Cmd> = stale.iter().map(|&i| cmds[i].clone()).collect();
                    let reloaded = self.scripts.load(conn).and_then(|_| pipeline(conn, &again));
                    match reloaded {
                        Ok(retried) => stale.iter().zip(retried).for_each(|(&i, v)| answers[i] = v),
                        Err(e) => return self.lost(requests, e),
                    }
                }
                answers
            }
            Err(e) => return self.lost(requests, e),
        };
        if requests.is_empty() {
            return true;
        }
        requests.into_iter().zip(answers).all(|(c, v)| self.outbox.post(answer(c, v)))
    }

    /// The connection broke (or timed out) with `requests` out: each fails,
    /// and the next loop turn reconnects at once.
    fn lost(&mut self, requests: Vec<Request>, e: redis::RedisError) -> bool {
        self.conn = None;
        self.retry_at = Instant::now();
        self.last_error = format!("connection to Redis lost: {e}");
        warn!("{}", self.last_error);
        self.outbox.set(Conn::Commands, Err(&self.last_error));
        let error = format!("{}; the message may or may not have been stored", self.last_error);
        requests.into_iter().all(|c| self.outbox.post(failed(c, &error)))
    }
}

/// One pipeline round trip: every answer, server errors included as
/// `Value::ServerError`; `Err` only when the connection failed.
fn pipeline(conn: &mut Connection, cmds: &[Cmd]) -> redis::RedisResult<Vec<Value>> {
    let mut packed = Vec::new();
    for c in cmds {
        c.write_packed_command(&mut packed);
    }
    conn.req_packed_commands(&packed, 0, cmds.len())
}

fn is_noscript(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript))
}

/// The Redis command for a request.
fn to_redis(c: &Request, names: &Names, history: HistorySettings, rng: &mut Rng, scripts: &Scripts) -> Cmd {
    let (publish, read_history) = (&scripts.publish, &scripts.history);
    let meta_ttl = META_TTL.as_secs().max(history.ttl.as_secs());
    match c {
        Request::Publish { channel, kind, payload, .. } if channel == BROADCAST => {
            redis::cmd("PUBLISH").arg(names.broadcast()).arg(wire::encode_broadcast(kind, payload)).to_owned()
        }
        Request::Publish { channel, kind, payload, .. } => redis::cmd("EVALSHA")
            .arg(publish.get_hash())
            .arg(2)
            .arg(names.meta(channel))
            .arg(names.stream(channel))
            .arg(rng.epoch())
            .arg(kind)
            .arg(payload)
            .arg(history.size)
            .arg(history.ttl.as_secs())
            .arg(meta_ttl)
            .arg(names.pubsub(channel))
            .to_owned(),
        Request::History { channel, since, .. } => {
            let (since_epoch, since_offset) = match since {
                Some((e, o)) => (e.as_str(), *o),
                None => ("", 0),
            };
            redis::cmd("EVALSHA")
                .arg(read_history.get_hash())
                .arg(2)
                .arg(names.meta(channel))
                .arg(names.stream(channel))
                .arg(rng.epoch())
                // A read fixes a silent channel's epoch only for as long as
                // its history would last: a subscribe alone never makes a
                // long-lived key (a publish extends it to META_TTL).
                .arg(history.ttl.as_secs().max(1))
                .arg(since_epoch)
                .arg(since_offset)
                .arg(history.size)
                .to_owned()
        }
        Request::Other(Command::PublishOnce { channel, kind, payload, key, ttl_secs, .. }) if channel == BROADCAST => {
            redis::cmd("EVALSHA")
                .arg(scripts.broadcast_once.get_hash())
                .arg(1)
                .arg(names.idempotency(BROADCAST, key))
                .arg(ttl_secs)
                .arg(names.broadcast())
                .arg(wire::encode_broadcast(kind, payload))
                .to_owned()
        }
        Request::Other(Command::PublishOnce { channel, kind, payload, key, ttl_secs, .. }) => redis::cmd("EVALSHA")
            .arg(publish.get_hash())
            .arg(3)
            .arg(names.meta(channel))
            .arg(names.stream(channel))
            .arg(names.idempotency(channel, key))
            .arg(rng.epoch())
            .arg(kind)
            .arg(payload)
            .arg(history.size)
            .arg(history.ttl.as_secs())
            .arg(meta_ttl)
            .arg(names.pubsub(channel))
            .arg(ttl_secs)
            .to_owned(),
        Request::Other(Command::Control { field, record, message, before, expires, .. }) => redis::cmd("EVALSHA")
            .arg(scripts.control.get_hash())
            .arg(2)
            .arg(names.control_records())
            .arg(names.control_expiry())
            .arg(field)
            .arg(record)
            .arg(before)
            .arg(expires)
            .arg(crate::auth::now_secs())
            .arg(names.control())
            .arg(message)
            .to_owned(),
        Request::Other(Command::LoadControl { .. }) => redis::cmd("EVALSHA")
            .arg(scripts.control_load.get_hash())
            .arg(2)
            .arg(names.control_records())
            .arg(names.control_expiry())
            .arg(crate::auth::now_secs())
            .to_owned(),
        Request::Other(Command::Page { channel, since, limit, .. }) => {
            let (since_epoch, since_offset) = match since {
                Some((e, o)) => (e.as_str(), *o),
                None => ("", 0),
            };
            redis::cmd("EVALSHA")
                .arg(scripts.page.get_hash())
                .arg(2)
                .arg(names.meta(channel))
                .arg(names.stream(channel))
                .arg(rng.epoch())
                // Like a subscribe's read: a page's read fixes a silent
                // channel's epoch for as long as its history would last.
                .arg(history.ttl.as_secs().max(1))
                .arg(since_epoch)
                .arg(since_offset)
                .arg(limit)
                .to_owned()
        }
        // Subscribe/Unsubscribe go to the pub/sub thread (see `from_command`).
        Request::Other(_) => redis::cmd("PING"),
    }
}

/// The event for a request Redis answered with `v`.
fn answer(c: Request, v: Value) -> Event {
    if let Value::ServerError(e) = &v {
        let error = match e.details() {
            Some(d) => format!("Redis refused: {} {d}", e.code()),
            None => format!("Redis refused: {}", e.code()),
        };
        return failed(c, &error);
    }
    let unexpected = |what: &str| format!("unexpected answer from Redis to {what}: {v:?}");
    match c {
        Request::Publish { id, channel, .. } if channel == BROADCAST => {
            Event::Published { id, channel, epoch: String::new(), offset: 0, duplicate: false }
        }
        Request::Publish { id, channel, .. } => match position(&v) {
            Some((epoch, offset)) => Event::Published { id, channel, epoch, offset, duplicate: false },
            None => Event::PublishFailed { id, channel, error: unexpected("publish.lua") },
        },
        Request::History { id, channel, since } => match history(&v, since.as_ref()) {
            Some((epoch, offset, entries)) => Event::History { id, channel, epoch, offset, entries },
            None => Event::HistoryFailed { id, channel, error: unexpected("history.lua") },
        },
        Request::Other(Command::PublishOnce { id, channel, .. }) if channel == BROADCAST => match v {
            Value::Int(n @ (0 | 1)) => {
                Event::Published { id, channel, epoch: String::new(), offset: 0, duplicate: n == 1 }
            }
            _ => Event::PublishFailed { id, channel, error: unexpected("broadcast_once.lua") },
        },
        Request::Other(Command::PublishOnce { id, channel, .. }) => {
            let duplicate = matches!(&v, Value::Array(items) if matches!(items.get(2), Some(Value::Int(1))));
            match position(&v) {
                Some((epoch, offset)) => Event::Published { id, channel, epoch, offset, duplicate },
                None => Event::PublishFailed { id, channel, error: unexpected("publish.lua") },
            }
        }
        Request::Other(Command::Control { id, .. }) => match v {
            Value::Int(1) => Event::ControlStored { id },
            _ => Event::ControlFailed { id, error: unexpected("control.lua") },
        },
        Request::Other(Command::LoadControl { id }) => match texts(&v) {
            Some(records) => Event::ControlLoaded { id, records },
            None => Event::ControlFailed { id, error: unexpected("control_load.lua") },
        },
        Request::Other(Command::Page { id, channel, .. }) => match page(&v) {
            Some((epoch, offset, first, entries)) => Event::Page { id, channel, epoch, offset, first, entries },
            None => Event::ControlFailed { id, error: unexpected("page.lua") },
        },
        Request::Other(c) => failed(Request::Other(c), "not a Redis request"),
    }
}

fn failed(c: Request, error: &str) -> Event {
    let error = error.to_string();
    match c {
        Request::Publish { id, channel, .. } => Event::PublishFailed { id, channel, error },
        Request::History { id, channel, .. } => Event::HistoryFailed { id, channel, error },
        Request::Other(Command::PublishOnce { id, channel, .. }) => Event::PublishFailed { id, channel, error },
        Request::Other(
            Command::Control { id, .. }
            | Command::LoadControl { id }
            | Command::Page { id, .. }
            | Command::Publish { id, .. }
            | Command::History { id, .. },
        ) => Event::ControlFailed { id, error },
        Request::Other(Command::Subscribe { .. } | Command::Unsubscribe { .. }) => {
            Event::ControlFailed { id: 0, error }
        }
    }
}

/// An array of texts (control_load.lua's answer).
fn texts(v: &Value) -> Option<Vec<String>> {
    let Value::Array(items) = v else { return None };
    items.iter().map(text).collect()
}

/// page.lua's answer: `{epoch, offset, first, entries}`.
fn page(v: &Value) -> Option<(String, u64, u64, Vec<Entry>)> {
    let (epoch, offset) = position(v)?;
    let Value::Array(items) = v else { return None };
    let first = match items.get(2)? {
        Value::Int(n) => u64::try_from(*n).ok()?,
        _ => return None,
    };
    let Value::Array(raw) = items.get(3)? else { return None };
    let entries = raw
        .iter()
        .map(|e| stream_entry(e).map(|(offset, (kind, payload))| Entry { offset, kind, payload }))
        .collect::<Option<Vec<_>>>()?;
    Some((epoch, offset, first, entries))
}

/// `{epoch, offset, ...}` as both scripts return it.
fn position(v: &Value) -> Option<(String, u64)> {
    let Value::Array(items) = v else { return None };
    let epoch = text(items.first()?)?;
    let offset = match items.get(1)? {
        Value::Int(n) => u64::try_from(*n).ok()?,
        _ => return None,
    };
    Some((epoch, offset))
}

/// history.lua's answer, with the replay decided by [`wire::replay`].
fn history(v: &Value, since: Option<&(String, u64)>) -> Option<(String, u64, Option<Vec<Entry>>)> {
    let (epoch, latest) = position(v)?;
    let (Some((since_epoch, since_offset)), Value::Array(items)) = (since, v) else {
        return Some((epoch, latest, None));
    };
    let Some(Value::Array(raw)) = items.get(2) else {
        return Some((epoch, latest, None));
    };
    let mut read = Vec::with_capacity(raw.len());
    for e in raw {
        read.push(stream_entry(e)?);
    }
    let entries = wire::replay((since_epoch, *since_offset), &epoch, latest, read)
        .map(|v| v.into_iter().map(|(offset, (kind, payload))| Entry { offset, kind, payload }).collect());
    Some((epoch, latest, entries))
}

/// `['<offset>-0', ['k', type, 'p', payload]]` from XRANGE.
fn stream_entry(v: &Value) -> Option<(u64, (String, String))> {
    let Value::Array(pair) = v else { return None };
    let id = text(pair.first()?)?;
    let offset = id.strip_suffix("-0")?.parse().ok()?;
    let Some(Value::Array(fields)) = pair.get(1) else { return None };
    let (mut kind, mut payload) = (None, None);
    for kv in fields.chunks(2) {
        match (text(&kv[0])?.as_str(), kv.get(1)) {
            ("k", Some(v)) => kind = text(v),
            ("p", Some(v)) => payload = text(v),
            _ => {}
        }
    }
    Some((offset, (kind?, payload?)))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(offset: u64, kind: &str, payload: &str) -> Value {
        Value::Array(vec![
            bulk(&format!("{offset}-0")),
            Value::Array(vec![bulk("k"), bulk(kind), bulk("p"), bulk(payload)]),
        ])
    }

    #[test]
    fn reads_history_lua_answers() {
        let since = ("e1".to_string(), 1);
        // Position only (no since, or the script decided there is no replay).
        let v = Value::Array(vec![bulk("e1"), Value::Int(3)]);
        assert_eq!(history(&v, None), Some(("e1".into(), 3, None)));
        assert_eq!(history(&v, Some(&since)), Some(("e1".into(), 3, None)));
        // The whole gap.
        let v = Value::Array(vec![
            bulk("e1"),
            Value::Int(3),
            Value::Array(vec![entry(2, "a", "{}"), entry(3, "b c", "[1, 2]")]),
        ]);
        let want = vec![
            Entry { offset: 2, kind: "a".into(), payload: "{}".into() },
            Entry { offset: 3, kind: "b c".into(), payload: "[1, 2]".into() },
        ];
        assert_eq!(history(&v, Some(&since)), Some(("e1".into(), 3, Some(want))));
        // Part of the gap is gone: no replay at all.
        let v = Value::Array(vec![bulk("e1"), Value::Int(3), Value::Array(vec![entry(3, "b", "{}")])]);
        assert_eq!(history(&v, Some(&since)), Some(("e1".into(), 3, None)));
        // Nothing missed.
        let v = Value::Array(vec![bulk("e1"), Value::Int(1), Value::Array(vec![])]);
        assert_eq!(history(&v, Some(&since)), Some(("e1".into(), 1, Some(vec![]))));
        // Not our script's shape.
        assert_eq!(history(&Value::Int(1), None), None);
        assert_eq!(history(&Value::Array(vec![bulk("e"), Value::Int(-1)]), None), None);
    }
}
