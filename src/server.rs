//! The event loop: one thread, one `mio::Poll`, every socket in one `Slab`.
//!
//! Each turn (like Redis's `ae.c`):
//! 1. wait for readiness, at most until the nearest timer;
//! 2. accept, read and act on every ready socket — broadcasts are queued to
//!    every client as they are parsed, in the order they were accepted;
//! 3. run due timers (pings, silent clients, slowloris, token expiry);
//! 4. "before sleep": write each connection that has output, once, with one
//!    vectored write — so N broadcasts in a turn cost one syscall per client.
//!
//! mio is edge-triggered: a readable socket is read until WouldBlock (or a
//! per-turn budget, so one flooding peer cannot starve the rest; it is then
//! revisited next turn), and output that would block waits in the
//! connection's [`OutQueue`] for the next writable event.
//!
//! This file is the loop and the connection table. What happens to one
//! connection lives next to it: [`conn`] (the table entry and its phases),
//! `http_conn` (requests, the upgrade), `ws_conn` (frames, client messages,
//! pings, the close handshake), `fanout` (broadcasts to recipients).

mod conn;
mod fanout;
mod http_conn;
mod ws_conn;

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use tungstenite::protocol::WebSocketConfig;

use self::conn::{Conn, Phase};
use crate::auth::Verifier;
use crate::config::Config;
use crate::limits::{Limits, READ_BUDGET_BYTES};
use crate::outqueue::Flush;
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
/// One read buffer for every HTTP read (then copied into the connection's).
const SCRATCH_BYTES: usize = 64 * 1024;

/// Stops a running [`Server`] from another thread (tests, embedding).
#[derive(Clone)]
pub struct ShutdownHandle {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl ShutdownHandle {
    /// Starts the graceful shutdown: close 1001 to every client, then exit.
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
    /// Connections with input left over (budget spent, or bytes that arrived
    /// with the upgrade request): read again next turn without waiting.
    again: Vec<usize>,
    scratch: Box<[u8]>,
    config: Config,
    verifier: Verifier,
    ws_config: WebSocketConfig,
    /// Client counts and rate limits (see [`crate::limits`]).
    limits: Limits,
    next_id: u64,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    signals: Option<mio::net::UnixStream>,
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
        let poll = Poll::new()?;
        let mut listener = TcpListener::from_std(crate::sys::listen(config.addr, LISTEN_BACKLOG)?);
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(Server {
            local_addr: listener.local_addr()?,
            listener: Some(listener),
            conns: Slab::with_capacity(1024),
            timers: Timers::new(),
            dirty: Vec::new(),
            again: Vec::new(),
            scratch: vec![0; SCRATCH_BYTES].into_boxed_slice(),
            verifier,
            ws_config: ws::config(&config),
            limits: Limits::new(&config, Instant::now()),
            config,
            next_id: 0,
            stop: Arc::new(AtomicBool::new(false)),
            waker,
            signals: None,
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
        ShutdownHandle { stop: self.stop.clone(), waker: self.waker.clone() }
    }

    /// SIGINT and SIGTERM start the graceful shutdown. The handler only
    /// writes a byte to a pipe the loop polls (async-signal-safe).
    pub fn shutdown_on_signals(&mut self) -> io::Result<()> {
        let (read, write) = std::os::unix::net::UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        let write2 = write.try_clone()?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGTERM, write)?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGINT, write2)?;
        let mut read = mio::net::UnixStream::from_std(read);
        self.poll.registry().register(&mut read, SIGNALS, Interest::READABLE)?;
        self.signals = Some(read);
        Ok(())
    }

    /// Runs the loop until shutdown completes.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            if self.stop.load(Ordering::SeqCst) && self.shutdown_deadline.is_none() {
                self.begin_shutdown(now);
            }
            if let Some(deadline) = self.shutdown_deadline
                && (self.conns.is_empty() || now >= deadline)
            {
                info!("shutdown complete ({} connections cut at the deadline)", self.conns.len());
                return Ok(());
            }

            let timeout = if self.again.is_empty() { self.poll_timeout(now) } else { Some(Duration::ZERO) };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }

            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    SIGNALS => self.drain_signals(),
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
            self.run_timers(Instant::now());
            self.flush_dirty();
        }
    }

    /// Time until the nearest timer (or the accept back-off / shutdown end).
    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        let next =
            [self.timers.next(), self.accept_paused_until, self.shutdown_deadline].into_iter().flatten().min()?;
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
                    let mut conn = Conn::new(self.next_id, stream, peer, now + self.config.request_timeout);
                    // Plain HTTP connections count per address too (they hold
                    // fds); a trusted proxy's connections carry many clients.
                    let ip = peer.ip().to_canonical();
                    if !self.config.trusted_proxies.contains(ip) {
                        match self.limits.add_http(&self.config, ip) {
                            Ok(()) => conn.http_ip = Some(ip),
                            Err(resp) => {
                                debug!("{peer}: over MAX_HTTP_CONNECTIONS_PER_IP: 429");
                                conn.out.push_owned(resp.encode(false, false));
                                conn.phase = Phase::Closing { fin_sent: false };
                                conn.deadline = now + LINGER;
                                conn.dirty = true;
                                self.dirty.push(key);
                            }
                        }
                    }
                    self.timers.set(conn.deadline, key, self.next_id);
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

    fn drain_signals(&mut self) {
        if let Some(s) = &mut self.signals {
            let mut buf = [0u8; 64];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        }
        info!("signal received: shutting down");
        self.stop.store(true, Ordering::SeqCst);
    }

    fn begin_shutdown(&mut self, now: Instant) {
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let deadline = now + self.config.shutdown_grace;
        self.shutdown_deadline = Some(deadline);
        info!("closing {} clients with 1001 (grace {:?})", self.limits.clients(), self.config.shutdown_grace);
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

    // ---- writing -----------------------------------------------------------

    fn mark_dirty(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key)
            && !conn.dirty
        {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }

    /// "Before sleep": one write attempt per connection with output.
    fn flush_dirty(&mut self) {
        for key in std::mem::take(&mut self.dirty) {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.dirty = false;
            match conn.out.write_to(&mut crate::sys::Send(&conn.stream)) {
                Ok(Flush::Blocked) => {}
                Ok(Flush::Done) => match &mut conn.phase {
                    Phase::Closing { fin_sent } if !*fin_sent => {
                        *fin_sent = true;
                        if conn.stream.shutdown(Shutdown::Write).is_err() {
                            self.remove(key);
                        }
                    }
                    Phase::Http(h) if h.paused => {
                        h.paused = false;
                        self.again.push(key);
                    }
                    _ => {}
                },
                Err(e) => {
                    debug!("{} write: {e}", conn.peer);
                    self.remove(key);
                }
            }
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
            conn.phase = Phase::Closing { fin_sent: false };
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
            if let Some(ip) = self.conns.remove(key).http_ip {
                self.limits.remove_http(ip);
            }
        }
    }

    /// Stops counting `key` as a connected client — once: a client we sent
    /// a close frame was uncounted then (`close_deadline` is set).
    fn uncount(&mut self, key: usize, what: &str) {
        let conn = &self.conns[key];
        let Some(ws) = conn.ws() else { return };
        if ws.close_deadline.is_some() {
            return;
        }
        self.limits.remove_client(ws.ip);
        debug!("{} ({:?}) {what}; {} clients", conn.peer, ws.sub, self.limits.clients());
    }

    // ---- timers ------------------------------------------------------------

    /// Re-arms `key`'s one timer entry (a popped entry is gone, so this
    /// sets it even when the deadline did not change).
    fn set_deadline(&mut self, key: usize, at: Instant) {
        let conn = &mut self.conns[key];
        conn.deadline = at;
        self.timers.set(at, key, conn.id);
    }

    fn run_timers(&mut self, now: Instant) {
        if self.accept_paused_until.is_some_and(|t| now >= t) {
            self.accept_paused_until = None;
            self.accept();
        }
        while let Some(Due { key, id }) = self.timers.pop_due(now) {
            match self.conns.get(key) {
                Some(c) if c.id == id && c.deadline <= now => self.on_timer(key, now),
                Some(c) if c.id == id => self.timers.set(c.deadline, key, id),
                _ => {} // stale: the connection is gone (its key reused)
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
    if c.allowed_origins == crate::config::Origins::Any {
        warn!("ALLOWED_ORIGINS=* lets any web page connect with a user's token; list your front-end origins instead");
    }
}
