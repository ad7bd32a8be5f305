//! The `taskcast-redis-sub` thread: the pub/sub connection.
//!
//! It speaks RESP itself over a plain socket (the redis crate packs the
//! commands and parses the replies), instead of using the crate's `PubSub`:
//! that one confirms a SUBSCRIBE by the first reply that is not a message,
//! which may be the leftover confirmation of an earlier multi-channel
//! SUBSCRIBE, and the loop must know exactly when a subscription is in
//! effect (see [`super`]: history is read after it, and that is what makes a
//! subscribe gap-free). Here every batch of SUBSCRIBE/UNSUBSCRIBE is followed
//! by `PING <n>`; Redis answers in order, so the pong carrying `n` proves
//! that every command before it has been applied. The same pings, sent when
//! the connection is idle, are its liveness check.
//!
//! The socket reads with a short timeout ([`POLL`]) so that the thread also
//! picks up subscription changes from the loop; the RESP parser keeps a
//! partly read reply across timeouts. That poll interval is the most a
//! SUBSCRIBE waits before it is sent; messages are read as they arrive.

use std::collections::{HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::time::{Duration, Instant};

use log::{debug, warn};
use redis::{Client, ConnectionAddr, Parser, Value};

use super::commands::{COMMAND_TIMEOUT, CONNECT_TIMEOUT, Job};
use super::keys::Names;
use super::{BROADCAST, Backoff, Conn, Event, Outbox, Rng, wire};

/// How long a read waits before the thread looks at subscription changes.
pub const POLL: Duration = Duration::from_millis(10);
/// A connection that has been silent this long gets a PING...
pub const PING_EVERY: Duration = Duration::from_secs(1);
/// ...and is given up when a PING is unanswered for this long.
pub const PONG_WAIT: Duration = Duration::from_secs(3);
/// Channels per SUBSCRIBE/UNSUBSCRIBE command at most.
const SUBSCRIBE_CHUNK: usize = 512;

/// A subscription change from the loop.
pub enum Change {
    Subscribe(String),
    Unsubscribe(String),
}

impl Change {
    pub fn into_channel(self) -> String {
        match self {
            Change::Subscribe(c) | Change::Unsubscribe(c) => c,
        }
    }
}

/// Why a session ended.
enum End {
    /// The link was dropped: the thread ends.
    LoopGone,
    /// The connection failed; reconnect.
    Lost(String),
}

pub struct Worker {
    client: Client,
    names: Names,
    outbox: Arc<Outbox>,
    changes: Receiver<Change>,
    /// To ask the command thread to check its own connection.
    commands: SyncSender<Job>,
    rng: Rng,
    backoff: Backoff,
    /// Every channel the loop wants, subscribed or to be.
    wanted: HashSet<String>,
    /// Subscribes not yet confirmed, each with the PING whose pong confirms
    /// it (`None`: not sent yet, the connection is down).
    unconfirmed: VecDeque<(Option<u64>, String)>,
    /// The last PING number sent.
    seq: u64,
    /// When the oldest PING not yet answered was sent.
    ping_out: Option<Instant>,
}

impl Worker {
    pub fn new(
        client: Client,
        names: Names,
        outbox: Arc<Outbox>,
        changes: Receiver<Change>,
        commands: SyncSender<Job>,
    ) -> Worker {
        Worker {
            client,
            names,
            outbox,
            changes,
            commands,
            rng: Rng::new(),
            backoff: Backoff::new(),
            wanted: HashSet::new(),
            unconfirmed: VecDeque::new(),
            seq: 0,
            ping_out: None,
        }
    }

    /// Runs until the link is dropped.
    pub fn run(mut self) {
        loop {
            let error = match self.connect() {
                Ok(sock) => match self.session(sock) {
                    End::LoopGone => return,
                    End::Lost(e) => e,
                },
                Err(e) => format!("cannot connect to Redis for pub/sub: {e}"),
            };
            // Whatever was waiting for a pong on the old connection waits
            // for the first one on the next.
            self.unconfirmed.iter_mut().for_each(|(seq, _)| *seq = None);
            self.outbox.set(Conn::PubSub, Err(&error));
            let _ = self.commands.try_send(Job::Probe);
            let until = Instant::now() + self.backoff.delay(&mut self.rng);
            loop {
                match self.changes.recv_timeout(until.saturating_duration_since(Instant::now())) {
                    Ok(change) => {
                        self.apply(change);
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        }
    }

    /// Records a change in `wanted`; true if Redis must be told.
    fn apply(&mut self, change: Change) -> bool {
        match change {
            Change::Subscribe(c) => {
                self.unconfirmed.push_back((None, c.clone()));
                self.wanted.insert(c)
            }
            Change::Unsubscribe(c) => {
                self.unconfirmed.retain(|(_, u)| *u != c);
                self.wanted.remove(&c)
            }
        }
    }

    /// TCP or unix socket, AUTH if the URL has a password. Pub/sub ignores
    /// the database number, so there is no SELECT.
    fn connect(&self) -> Result<Socket, String> {
        let info = self.client.get_connection_info();
        let sock = match info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host} resolves to no address"));
                let mut found = None;
                for addr in (host.as_str(), *port).to_socket_addrs().map_err(|e| e.to_string())? {
                    match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let s = found.ok_or_else(|| last.to_string())?;
                s.set_nodelay(true).map_err(|e| e.to_string())?;
                Socket::Tcp(s)
            }
            ConnectionAddr::Unix(path) => Socket::Unix(UnixStream::connect(path).map_err(|e| e.to_string())?),
            other => return Err(format!("unsupported address {other:?}")),
        };
        sock.set_timeouts(Some(CONNECT_TIMEOUT)).map_err(|e| e.to_string())?;
        let mut sock = sock;
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = settings.username() {
                auth.arg(user);
            }
            auth.arg(password);
            sock.write_all(&auth.get_packed_command()).map_err(|e| e.to_string())?;
            match Parser::new().parse_value(&mut sock) {
                Ok(Value::Okay) => {}
                Ok(Value::ServerError(e)) => return Err(format!("AUTH refused: {}", e.code())),
                Ok(other) => return Err(format!("unexpected answer to AUTH: {other:?}")),
                Err(e) => return Err(e.to_string()),
            }
        }
        sock.set_timeouts(Some(POLL)).map_err(|e| e.to_string())?;
        Ok(sock)
    }

    /// One connection's life: subscribe to everything wanted, then read
    /// messages and apply changes until it fails or the link is dropped.
    fn session(&mut self, mut sock: Socket) -> End {
        // Messages are large and pongs tiny; both come through one parser,
        // which keeps a partly read reply across read timeouts.
        let mut parser = Parser::new();
        // The control channel with the broadcast: both are subscribed before
        // LinkUp, which is what the loop's load of control records after
        // LinkUp relies on (see control.lua).
        let mut all: Vec<String> = vec![self.names.broadcast().to_string(), self.names.control()];
        all.extend(self.wanted.iter().map(|c| self.names.pubsub(c)));
        if let Err(e) = send(&mut sock, "SUBSCRIBE", &all) {
            return End::Lost(e);
        }
        // LinkUp waits for this pong: everything is subscribed by then, and
        // so are the subscribes asked for while the link was down.
        self.ping_out = None;
        let first = match self.ping(&mut sock) {
            Ok(n) => n,
            Err(e) => return End::Lost(e),
        };
        self.unconfirmed.iter_mut().for_each(|(s, _)| *s = Some(first));
        let mut up = false;
        let mut last_read = Instant::now();
        loop {
            match self.take_changes(&mut sock) {
                Ok(true) => {}
                Ok(false) => return End::LoopGone,
                Err(e) => return End::Lost(e),
            }
            match parser.parse_value(&mut sock) {
                Ok(v) => {
                    last_read = Instant::now();
                    match self.handle(v) {
                        Reply::Message => {}
                        Reply::LoopGone => return End::LoopGone,
                        Reply::Pong(n) => {
                            if n == self.seq {
                                self.ping_out = None;
                            }
                            if !up && n >= first {
                                up = true;
                                self.backoff.reset();
                                self.outbox.set(Conn::PubSub, Ok(()));
                            }
                            if !self.confirm(n) {
                                return End::LoopGone;
                            }
                        }
                        Reply::Broken(e) => return End::Lost(e),
                    }
                }
                Err(e) if e.is_timeout() => {}
                Err(e) => return End::Lost(format!("pub/sub connection to Redis lost: {e}")),
            }
            match self.ping_out {
                Some(t) if t.elapsed() > PONG_WAIT => {
                    return End::Lost(format!("Redis did not answer PING within {PONG_WAIT:?}"));
                }
                None if last_read.elapsed() >= PING_EVERY => {
                    if let Err(e) = self.ping(&mut sock) {
                        return End::Lost(e);
                    }
                }
                _ => {}
            }
        }
    }

    /// Applies the loop's pending changes, in order, in as few commands as
    /// possible, then PINGs so that their pong confirms the new subscribes.
    /// `Ok(false)` when the link was dropped.
    fn take_changes(&mut self, sock: &mut Socket) -> Result<bool, String> {
        let mut subscribing = true;
        let mut batch: Vec<String> = Vec::new();
        let mut any = false;
        loop {
            let change = match self.changes.try_recv() {
                Ok(c) => c,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Ok(false),
            };
            any = true;
            let is_sub = matches!(change, Change::Subscribe(_));
            // A change of direction sends what is batched first, so that
            // unsubscribe-then-subscribe of one channel ends subscribed.
            if is_sub != subscribing && !batch.is_empty() {
                send(sock, if subscribing { "SUBSCRIBE" } else { "UNSUBSCRIBE" }, &batch)?;
                batch.clear();
            }
            subscribing = is_sub;
            let name = match &change {
                Change::Subscribe(c) | Change::Unsubscribe(c) => self.names.pubsub(c),
            };
            if self.apply(change) {
                batch.push(name);
            }
        }
        if !batch.is_empty() {
            send(sock, if subscribing { "SUBSCRIBE" } else { "UNSUBSCRIBE" }, &batch)?;
        }
        if any && self.unconfirmed.iter().any(|(s, _)| s.is_none()) {
            let n = self.ping(sock)?;
            self.unconfirmed.iter_mut().filter(|(s, _)| s.is_none()).for_each(|(s, _)| *s = Some(n));
        }
        Ok(true)
    }

    /// Sends `PING <n>` with the next number; its pong confirms everything
    /// sent before it.
    fn ping(&mut self, sock: &mut Socket) -> Result<u64, String> {
        self.seq += 1;
        send(sock, "PING", &[self.seq.to_string()])?;
        self.ping_out.get_or_insert_with(Instant::now);
        Ok(self.seq)
    }

    /// Posts Subscribed for every subscribe the pong `n` confirms (those
    /// unsubscribed since were dropped from the list). False when the loop is gone.
    fn confirm(&mut self, n: u64) -> bool {
        while let Some((Some(s), _)) = self.unconfirmed.front()
            && *s <= n
        {
            let (_, channel) = self.unconfirmed.pop_front().expect("front exists");
            if !self.outbox.post(Event::Subscribed { channel }) {
                return false;
            }
        }
        true
    }

    fn handle(&mut self, v: Value) -> Reply {
        let Value::Array(mut items) = v else {
            return match v {
                Value::ServerError(e) => Reply::Broken(format!("Redis error on the pub/sub connection: {e:?}")),
                other => Reply::Broken(format!("unexpected pub/sub reply {other:?}")),
            };
        };
        let kind = match items.first() {
            Some(Value::BulkString(k)) => k.as_slice(),
            _ => return Reply::Broken(format!("unexpected pub/sub reply {items:?}")),
        };
        match kind {
            b"message" if items.len() == 3 => {
                let (Some(Value::BulkString(payload)), Some(Value::BulkString(name))) = (items.pop(), items.pop())
                else {
                    return Reply::Broken("malformed pub/sub message".into());
                };
                let name = String::from_utf8_lossy(&name);
                if name == self.names.control() {
                    let Ok(message) = String::from_utf8(payload) else {
                        warn!("ignoring a control message that is not UTF-8 (not written by taskcast?)");
                        return Reply::Message;
                    };
                    return if self.outbox.post(Event::Control { message }) { Reply::Message } else { Reply::LoopGone };
                }
                let channel = match self.names.channel_of(&name) {
                    Some(Some(c)) => c.to_string(),
                    Some(None) => BROADCAST.to_string(),
                    None => {
                        debug!("ignoring a message on {name:?}, not a channel of ours");
                        return Reply::Message;
                    }
                };
                match wire::decode(&payload) {
                    Ok(w) => {
                        let ev = Event::Message {
                            channel,
                            epoch: w.epoch,
                            offset: w.offset,
                            kind: w.kind,
                            payload: w.payload,
                        };
                        if self.outbox.post(ev) { Reply::Message } else { Reply::LoopGone }
                    }
                    Err(e) => {
                        warn!("ignoring a malformed message on {name:?} (not written by taskcast?): {e}");
                        Reply::Message
                    }
                }
            }
            b"pong" => {
                let n = match items.get(1) {
                    Some(Value::BulkString(b)) => std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()),
                    _ => None,
                };
                match n {
                    Some(n) => Reply::Pong(n),
                    None => Reply::Broken(format!("unexpected pong {items:?}")),
                }
            }
            b"subscribe" | b"unsubscribe" => Reply::Message,
            _ => Reply::Broken(format!("unexpected pub/sub reply {items:?}")),
        }
    }
}

/// What one reply on the pub/sub connection was.
enum Reply {
    /// A message (posted), or something to ignore.
    Message,
    Pong(u64),
    LoopGone,
    Broken(String),
}

/// Writes `command` with `args`, as several commands of at most
/// [`SUBSCRIBE_CHUNK`] arguments when there are many (a resubscribe).
fn send(sock: &mut Socket, command: &str, args: &[String]) -> Result<(), String> {
    let mut packed = Vec::new();
    for chunk in args.chunks(SUBSCRIBE_CHUNK) {
        let mut cmd = redis::cmd(command);
        for a in chunk {
            cmd.arg(a);
        }
        cmd.write_packed_command(&mut packed);
    }
    sock.write_all(&packed).map_err(|e| format!("pub/sub connection to Redis lost: {e}"))
}

/// The pub/sub socket.
enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    /// Reads wait `read` at most; writes wait [`COMMAND_TIMEOUT`] at most.
    fn set_timeouts(&self, read: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => {
                s.set_read_timeout(read)?;
                s.set_write_timeout(Some(COMMAND_TIMEOUT))
            }
            Socket::Unix(s) => {
                s.set_read_timeout(read)?;
                s.set_write_timeout(Some(COMMAND_TIMEOUT))
            }
        }
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read(buf),
            Socket::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write(buf),
            Socket::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
