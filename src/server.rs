//! The event loop: one thread, one `mio::Poll`, every socket in one `Slab`.
//!
//! Each turn (like Redis's `ae.c`):
//! 1. wait for readiness, at most until the nearest timer;
//! 2. accept, read and act on every ready socket — broadcasts are queued to
//!    their recipients as they are parsed, in the order they were accepted,
//!    and the publisher's answer is written at once; Redis's answers and
//!    messages (cluster mode) arrive through the waker;
//! 3. run due timers (pings, silent clients, slowloris, token expiry) and
//!    expire channel history;
//! 4. "before sleep": write each connection that has output, once, with one
//!    vectored write — so N broadcasts in a turn cost one syscall per client;
//!    connections holding only broadcast frames wait up to
//!    FLUSH_DELAY_MICROS when broadcasts come faster than that.
//!
//! mio is edge-triggered: a readable socket is read until WouldBlock (or a
//! per-turn budget, so one flooding peer cannot starve the rest; it is then
//! revisited next turn), and output that would block waits in the
//! connection's `OutQueue` for the next writable event.
//!
//! This file is the loop and the connection table. What happens to one
//! connection lives next to it: `conn` (the table entry and its phases),
//! `http_conn` (requests, the upgrade), `ws_conn` (frames, client messages,
//! pings, the close handshake), `subs` (joining and leaving channels),
//! `fanout` (broadcasts to
//! recipients), `cluster` (cluster mode: parked publishes, history reads,
//! gap repair), `flush` (the "before sleep" writes, in rounds), `control`
//! (the server API: unsubscribe, disconnect, revoke, positions and history
//! for pages); and `drain` (signals, the staggered drain, shutdown),
//! `scrape` (`/metrics`).

mod cluster;
mod conn;
mod control;
mod drain;
mod fanout;
mod flush;
mod http_conn;
mod scrape;
mod subs;
mod ws_conn;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use self::conn::{Conn, Phase};
use crate::auth::Verifier;
use crate::config::Config;
use crate::hub::{HistoryLimits, Hub};
use crate::limits::{Limits, READ_BUDGET_BYTES};
use crate::metrics::Metrics;
use crate::refusals::RefusalLog;
use crate::timers::{Due, Timers};
use crate::ws::{self, Reason};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);

/// WebSocket messages handled from one client per turn.
const READ_BUDGET_MESSAGES: usize = 64;
/// How long a closing connection may take to read our last bytes and close.
const LINGER: Duration = Duration::from_secs(2);
/// A client we sent a close frame gets this long to answer it.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Back-off before accepting again after EMFILE/ENFILE.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Pending connections the kernel queues for us (capped by
/// net.core.somaxconn). std/mio use 128, which overflows when a few hundred
/// tabs reconnect at once (after a deploy): SYNs are dropped and retried
/// a second later.
const LISTEN_BACKLOG: i32 = 4096;
/// Longest stretch one turn spends writing held broadcast frames before it
/// polls again (see `flush_deferred`): what a publisher's answer may wait.
const FLUSH_SLICE: Duration = Duration::from_micros(200);
/// One read buffer for every HTTP read (then copied into the connection's).
const SCRATCH_BYTES: usize = 64 * 1024;

/// Stops a running [`Server`] from another thread (tests, embedding).
#[derive(Clone)]
pub struct ShutdownHandle {
    stop: Arc<AtomicBool>,
    /// Asks for the staggered drain (see `drain`).
    drain: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl ShutdownHandle {
    /// Starts the graceful shutdown: close 1001 to every client, then exit
    /// (during a drain: finishes it at once).
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

/// The server: bind it, maybe take a [`ShutdownHandle`], then `run` it.
pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    conns: Slab<Conn>,
    /// Every connection's next deadline (pings, silence, timeouts, expiry).
    timers: Timers,
    /// Connections with output queued this turn, flushed before sleeping.
    dirty: Vec<usize>,
    /// Connections with only broadcast frames queued: flushed before
    /// sleeping too, unless broadcasts come faster than FLUSH_DELAY_MICROS
    /// (see `flush_deferred`).
    deferred: Vec<usize>,
    /// How far this flush round has got through `deferred` (a round spans
    /// turns when it is longer than FLUSH_SLICE).
    deferred_pos: usize,
    /// When the round in progress started (`None`: no round in progress).
    round_start: Option<Instant>,
    /// The last finished round: its cost and its end. The hold before the
    /// next round is that cost, capped at FLUSH_DELAY_MICROS.
    last_round_cost: Duration,
    last_round_end: Option<Instant>,
    /// When held-back frames must be written (set only while holding).
    fanout_flush_at: Option<Instant>,
    /// Connections with input left over (budget spent, or bytes that arrived
    /// with the upgrade request): read again next turn without waiting.
    again: Vec<usize>,
    /// WebSockets waiting for their in-band `auth` message. While 0 (the
    /// usual case) a broadcast to everyone skips the per-client check.
    awaiting_auth: usize,
    scratch: Box<[u8]>,
    config: Config,
    verifier: Verifier,
    /// tungstenite's settings, the spare [`ws::Reading`], and writing for
    /// idle connections (see [`ws::Protocol`]).
    protocol: ws::Protocol,
    /// Client counts and rate limits (see [`crate::limits`]).
    limits: Limits,
    /// Channels: subscribers, offsets, history (see [`crate::hub`]).
    hub: Hub,
    /// Cluster mode (REDIS_URL): the Redis link and what waits on it.
    cluster: Option<cluster::Cluster>,
    /// The link had more events than one turn takes: drain again next turn.
    cluster_again: bool,
    /// The server API: denials and revocations in force, idempotency keys,
    /// requests waiting for Redis (see `control`).
    control: control::ControlState,
    next_id: u64,
    stop: Arc<AtomicBool>,
    /// Set by [`ShutdownHandle::drain`]; the loop starts the drain.
    drain_requested: Arc<AtomicBool>,
    /// The drain under way (SIGTERM), until the final shutdown begins.
    drain: Option<drain::Drain>,
    waker: Arc<Waker>,
    /// The pipe signal handlers write to (see `drain`).
    signals: Option<mio::net::UnixStream>,
    /// How many SIGTERMs and SIGINTs arrived and are not handled yet
    /// (counted by their handlers).
    signal_counts: [Arc<AtomicUsize>; 2],
    /// What `/metrics` reports (see [`crate::metrics`]).
    metrics: Metrics,
    /// Refusals logged for the operator, rate-limited (see [`crate::refusals`]).
    refusals: RefusalLog,
    /// Set once shutdown starts: the loop ends by then at the latest.
    shutdown_deadline: Option<Instant>,
    accept_paused_until: Option<Instant>,
}

impl Server {
    /// Binds the listener; nothing is accepted until [`Server::run`].
    /// With JWKS configured, the keys are loaded first: failing that is an
    /// `InvalidInput` error wrapping the [`crate::config::ConfigError`].
    pub fn bind(config: Config) -> io::Result<Server> {
        let verifier = Verifier::new(&config).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let verifier_has_jwks = verifier.jwks_keys().is_some();
        let poll = Poll::new()?;
        let mut listener = TcpListener::from_std(crate::sys::listen(config.addr, LISTEN_BACKLOG, config.reuse_port)?);
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let cluster = match &config.redis {
            Some(redis) => {
                let history =
                    crate::cluster::HistorySettings { size: config.history_size.max(1), ttl: config.history_ttl };
                Some(cluster::Cluster::new(crate::cluster::RedisLink::start(redis, history, waker.clone())?))
            }
            None => None,
        };
        Ok(Server {
            local_addr: listener.local_addr()?,
            listener: Some(listener),
            conns: Slab::with_capacity(1024),
            timers: Timers::new(),
            dirty: Vec::new(),
            deferred: Vec::new(),
            deferred_pos: 0,
            round_start: None,
            last_round_cost: Duration::ZERO,
            last_round_end: None,
            fanout_flush_at: None,
            again: Vec::new(),
            awaiting_auth: 0,
            scratch: vec![0; SCRATCH_BYTES].into_boxed_slice(),
            verifier,
            protocol: ws::Protocol::new(&config),
            limits: Limits::new(&config, Instant::now()),
            // In cluster mode history lives in Redis; the hub only indexes
            // who is subscribed where.
            hub: Hub::new(HistoryLimits {
                size: if config.redis.is_some() { 0 } else { config.history_size },
                ttl: config.history_ttl,
                max_bytes: config.history_max_bytes,
            }),
            cluster,
            cluster_again: false,
            control: control::ControlState::new(&config),
            metrics: Metrics::new(verifier_has_jwks, config.redis.is_some()),
            refusals: RefusalLog::new(),
            config,
            next_id: 0,
            stop: Arc::new(AtomicBool::new(false)),
            drain_requested: Arc::new(AtomicBool::new(false)),
            drain: None,
            waker,
            signals: None,
            signal_counts: Default::default(),
            shutdown_deadline: None,
            accept_paused_until: None,
            poll,
        })
    }

    /// Binds and runs a server on a new thread (the server itself is not
    /// `Send`: its queues share frames through `Rc`). For tests, benches and
    /// embedding; returns once the listener is bound.
    pub fn spawn(config: Config) -> io::Result<(SocketAddr, ShutdownHandle, std::thread::JoinHandle<io::Result<()>>)> {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new().name("taskcast".into()).spawn(move || {
            let server = match Server::bind(config) {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return Ok(());
                }
            };
            let _ = tx.send(Ok((server.local_addr(), server.shutdown_handle())));
            server.run()
        })?;
        let (addr, handle) = rx.recv().map_err(|_| io::Error::other("server thread died"))??;
        Ok((addr, handle, thread))
    }

    /// The address actually bound (resolves port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle { stop: self.stop.clone(), drain: self.drain_requested.clone(), waker: self.waker.clone() }
    }

    /// Runs the loop until shutdown completes.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            self.check_requests(now);
            if let Some(deadline) = self.shutdown_deadline
                && (self.conns.is_empty() || now >= deadline)
            {
                info!("shutdown complete ({} connections cut at the deadline)", self.conns.len());
                return Ok(());
            }

            // Output queued outside the turn's flush (the shutdown's close
            // frames, queued just above) must not wait for the poll timeout.
            let busy = !self.again.is_empty()
                || !self.dirty.is_empty()
                || self.round_start.is_some()
                || std::mem::take(&mut self.cluster_again);
            if busy && self.cluster.is_some() {
                self.on_cluster_events();
            }
            let timeout = if busy { Some(Duration::ZERO) } else { self.poll_timeout(now) };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let turn = Instant::now();

            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => self.on_cluster_events(),
                    SIGNALS => self.on_signal_pipe(turn),
                    Token(key) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_readable(key);
                        }
                        if event.is_writable() {
                            self.mark_dirty(key);
                        }
                    }
                }
            }
            for key in std::mem::take(&mut self.again) {
                self.on_readable(key);
            }
            let now = Instant::now();
            self.run_timers(now);
            self.hub.expire(now);
            self.flush_dirty();
            self.flush_deferred(now);
            self.metrics.loop_turn.observe(turn.elapsed().as_secs_f64());
        }
    }

    /// Time until the nearest timer (or the accept back-off / shutdown end).
    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        let drain = self.drain.as_ref().map(|d| d.next);
        let next = [
            self.timers.next(),
            self.accept_paused_until,
            self.shutdown_deadline,
            self.hub.next_expiry(),
            self.fanout_flush_at,
            self.next_cluster_retry(),
            drain,
        ]
        .into_iter()
        .flatten()
        .min()?;
        // Round up to whole milliseconds: epoll's resolution; rounding down
        // would wake early and spin until the deadline.
        Some(next.saturating_duration_since(now) + Duration::from_micros(999))
    }

    // ---- accepting -----------------------------------------------------

    fn accept(&mut self) {
        if self.accept_paused_until.is_some() {
            return;
        }
        let Some(listener) = &self.listener else {
            return;
        };
        loop {
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    // Nagle off by default: broadcasts are small and latency
                    // matters; batching comes from the one-writev-per-turn flush.
                    if self.config.tcp_nodelay {
                        let _ = stream.set_nodelay(true);
                    }
                    let entry = self.conns.vacant_entry();
                    let key = entry.key();
                    if let Err(e) =
                        self.poll.registry().register(&mut stream, Token(key), Interest::READABLE | Interest::WRITABLE)
                    {
                        warn!("register {peer}: {e}");
                        continue;
                    }
                    self.next_id += 1;
                    let now = Instant::now();
                    let mut conn = Conn::new(self.next_id, stream, peer);
                    let mut deadline = now + self.config.request_timeout;
                    // Plain HTTP connections count per address too (they hold
                    // fds); a trusted proxy's connections carry many clients.
                    let ip = peer.ip().to_canonical();
                    if !self.config.trusted_proxies.contains(ip) {
                        match self.limits.add_http(&self.config, ip) {
                            Ok(()) => {
                                if let Phase::Http(h) = &mut conn.phase {
                                    h.http_ip = Some(ip);
                                }
                            }
                            Err(resp) => {
                                self.refusals.note("too_many_http_connections", now, || {
                                    format!("connection from {ip}: 429 (over MAX_HTTP_CONNECTIONS_PER_IP)")
                                });
                                conn.out.push_owned(resp.encode(false, false));
                                conn.phase = Phase::Closing { fin_sent: false, http_ip: None };
                                deadline = now + LINGER;
                                conn.dirty = true;
                                self.dirty.push(key);
                            }
                        }
                    }
                    self.metrics.connections_accepted.inc();
                    self.timers.set(deadline, key);
                    entry.insert(conn);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) =>
                {
                    // Out of fds: the pending connection stays in the backlog
                    // and the listener would report ready forever. Stop
                    // accepting for a moment instead of spinning.
                    warn!(
                        "accept: {e}; pausing accepts for {ACCEPT_BACKOFF:?} ({} open connections)",
                        self.conns.len()
                    );
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
                // ECONNABORTED and friends concern one connection only.
                Err(e) => debug!("accept: {e}"),
            }
        }
    }

    /// The final shutdown: no more accepts, 1001 to every client left, and
    /// `grace` for the close handshakes before the loop ends.
    fn begin_shutdown(&mut self, now: Instant, grace: Duration) {
        self.drain = None;
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.shutdown_deadline = Some(now + grace);
        info!("closing {} clients with 1001 (grace {grace:?})", self.limits.clients());
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            match &self.conns[key].phase {
                Phase::Ws(_) => self.close_ws(key, Reason::Shutdown, now),
                Phase::Http(h) if h.is_idle() => self.begin_close(key),
                // Mid-request: let it finish (bounded by the deadline);
                // its response will carry Connection: close.
                _ => {}
            }
        }
    }

    // ---- reading ---------------------------------------------------------

    fn on_readable(&mut self, key: usize) {
        match self.conns.get(key).map(|c| &c.phase) {
            Some(Phase::Http(_)) => self.read_http(key),
            Some(Phase::Ws(_)) => self.read_ws(key),
            Some(Phase::Closing { .. }) => self.read_closing(key),
            None => {}
        }
    }

    // ---- closing -----------------------------------------------------------

    /// Moves to `Closing`: flush, FIN, drain until the peer closes or LINGER.
    fn begin_close(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let _ = conn;
        self.uncount(key, "disconnected");
        let conn = &mut self.conns[key];
        if !matches!(conn.phase, Phase::Closing { .. }) {
            conn.phase = Phase::Closing { fin_sent: false, http_ip: conn.phase.http_ip() };
        }
        self.mark_dirty(key);
        let until = Instant::now() + LINGER;
        self.set_deadline(key, self.shutdown_deadline.map_or(until, |d| d.min(until)));
    }

    /// Drops the connection now (closing the socket deregisters it).
    fn remove(&mut self, key: usize) {
        if self.conns.contains(key) {
            self.uncount(key, "dropped");
            self.timers.cancel(key);
            if let Some(ip) = self.conns.remove(key).phase.http_ip() {
                self.limits.remove_http(ip);
            }
        }
    }

    /// Stops counting `key` as a connected client — once: a client we sent
    /// a close frame was uncounted then (`close_deadline` is set). Leaves
    /// every channel every time (idempotent): nothing more is sent to it,
    /// and its slab key may be reused.
    fn uncount(&mut self, key: usize, what: &str) {
        self.leave_all(key);
        let conn = &self.conns[key];
        let Some(ws) = conn.ws() else { return };
        if ws.close_deadline.is_some() {
            return;
        }
        self.limits.remove_client(ws.ip.into());
        if ws.awaiting_auth {
            self.awaiting_auth -= 1;
        }
        debug!("{} ({:?}) {what}; {} clients", conn.peer, ws.sub, self.limits.clients());
    }

    // ---- timers ------------------------------------------------------------

    /// Re-arms `key`'s one timer entry (a popped entry is gone, so this
    /// sets it even when the deadline did not change).
    fn set_deadline(&mut self, key: usize, at: Instant) {
        self.timers.set(at, key);
    }

    fn run_timers(&mut self, now: Instant) {
        self.drain_tick(now);
        self.run_cluster_retries(now);
        if self.accept_paused_until.is_some_and(|t| now >= t) {
            self.accept_paused_until = None;
            self.accept();
        }
        // A connection's one entry is re-armed in place and cancelled with
        // it (`remove`), so a due entry is the current deadline of the
        // connection at its key.
        while let Some(Due { key }) = self.timers.pop_due(now) {
            if self.conns.contains(key) {
                self.on_timer(key, now);
            }
        }
    }

    fn on_timer(&mut self, key: usize, now: Instant) {
        match &self.conns[key].phase {
            Phase::Http(_) => self.on_http_timer(key),
            Phase::Ws(_) => self.on_ws_timer(key, now),
            Phase::Closing { .. } => self.remove(key),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.conns.is_empty() {
            debug!("dropping {} connections", self.conns.len());
        }
    }
}

/// Sizes in bytes of what each connection holds (inline parts only; heap
/// parts are counted by `benches/conn_memory.rs`, which prints this).
pub fn memory_layout() -> Vec<(&'static str, usize)> {
    use std::mem::size_of;
    // slab 0.4's entry, mirrored to learn its size.
    #[allow(dead_code)]
    enum SlabEntry<T> {
        Vacant(usize),
        Occupied(T),
    }
    vec![
        ("slab entry of a Conn", size_of::<SlabEntry<Conn>>()),
        ("Conn", size_of::<Conn>()),
        ("conn::HttpConn", size_of::<conn::HttpConn>()),
        ("ws::WsConn", size_of::<ws::WsConn>()),
        ("ws::Reading (only while reading or closing)", size_of::<ws::Reading>()),
        ("  tungstenite WebSocketContext", size_of::<tungstenite::protocol::WebSocketContext>()),
        ("  frame_meter::FrameMeter", size_of::<crate::frame_meter::FrameMeter>()),
        ("outqueue::OutQueue", size_of::<crate::outqueue::OutQueue>()),
        ("timers entry", crate::timers::ENTRY_BYTES),
        ("slab entry of a hub::Channel", size_of::<SlabEntry<crate::hub::Channel>>()),
        ("hub::Channel", size_of::<crate::hub::Channel>()),
        ("ws::Subscription", size_of::<ws::Subscription>()),
        ("compact::PackedAddr (std SocketAddr: 32)", size_of::<crate::compact::PackedAddr>()),
        ("compact::Millis (std Instant: 16)", size_of::<crate::compact::Millis>()),
    ]
}

/// Logs the start-up line.
pub fn log_startup(server: &Server) {
    let c = &server.config;
    info!(
        "taskcast listening on {} | origins {} | max {} clients | messages <= {} B (auth {} B) | broadcasts <= {} B | ping {}s, pong wait {}s | queue {} msgs",
        server.local_addr,
        c.allowed_origins,
        c.max_connections,
        c.max_message_bytes,
        c.max_auth_message_bytes,
        c.max_broadcast_bytes,
        c.ping_interval.as_secs(),
        c.pong_wait.as_secs(),
        c.send_queue_limit
    );
    if c.broadcast_api_key.is_none() {
        warn!("BROADCAST_API_KEY is not set: any signed-in user's token can broadcast to everyone");
    }
    if c.control_api_key.is_none() && c.broadcast_api_key.is_none() {
        info!(
            "the server API (/api/unsubscribe, /api/disconnect, /api/revoke, ...) is off: set CONTROL_API_KEY to use it"
        );
    }
    if c.allowed_origins == crate::config::Origins::Any {
        warn!("ALLOWED_ORIGINS=* lets any web page connect with a user's token; list your front-end origins instead");
    }
}
