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

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use tungstenite::protocol::{Message, Role, WebSocketConfig, WebSocketContext};

use crate::api::{self, Action, Ctx};
use crate::auth::{self, Verifier};
use crate::config::Config;
use crate::http::{self, Head, Response};
use crate::outqueue::{Flush, OutQueue};
use crate::timers::{Due, Timers};
use crate::ws::{self, Inbound, Reason, TokenBucket, Wire, WsConn};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);

/// Bytes read from one socket per turn before others get a go.
const READ_BUDGET_BYTES: usize = 256 * 1024;
/// WebSocket messages handled from one client per turn.
const READ_BUDGET_MESSAGES: usize = 64;
/// An HTTP client with this much unread output gets no more requests
/// parsed until it reads (pipelining without reading cannot grow memory).
const HTTP_OUT_HIGH_WATER: usize = 256 * 1024;
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

/// One accepted socket.
struct Conn {
    /// Unique for the server's lifetime: slab keys are reused, timer entries
    /// carry this to tell a live connection from a reused key.
    id: u64,
    stream: TcpStream,
    peer: SocketAddr,
    out: OutQueue,
    phase: Phase,
    /// When this connection's timer next fires (see `on_timer`).
    deadline: Instant,
    /// Already listed in `Server::dirty` for this turn's flush.
    dirty: bool,
}

/// A connection's life: HTTP requests, maybe an upgrade, then closing.
enum Phase {
    Http(HttpConn),
    Ws(Box<WsConn>),
    /// Sending the last queued bytes, then FIN, then discarding input until
    /// the peer closes (closing with unread input would send RST and could
    /// destroy our last response before the peer reads it).
    Closing {
        fin_sent: bool,
    },
}

#[derive(Default)]
struct HttpConn {
    /// Bytes received; `buf[consumed..]` is not yet handled.
    buf: Vec<u8>,
    /// Requests handled from the front of `buf`. Compacted once per read,
    /// not per request: pipelined requests would otherwise cost a memmove
    /// of the whole buffer each.
    consumed: usize,
    /// A parsed head whose body is still arriving (boxed: keeps every
    /// slab entry small).
    head: Option<Box<Head>>,
    /// Parsing stopped until the client reads its responses.
    paused: bool,
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
    /// Open, authenticated WebSocket clients (what /health reports).
    clients: usize,
    /// Open WebSocket clients per client IP (MAX_CONNECTIONS_PER_IP).
    clients_per_ip: HashMap<IpAddr, usize>,
    /// Accepted broadcasts (BROADCAST_RATE_PER_SEC), shared by all publishers.
    broadcast_bucket: TokenBucket,
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
            broadcast_bucket: TokenBucket::new(config.broadcast_burst, Instant::now()),
            config,
            clients: 0,
            clients_per_ip: HashMap::new(),
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
                    let deadline = Instant::now() + self.config.request_timeout;
                    entry.insert(Conn {
                        id: self.next_id,
                        stream,
                        peer,
                        out: OutQueue::default(),
                        phase: Phase::Http(HttpConn::default()),
                        deadline,
                        dirty: false,
                    });
                    self.timers.schedule(deadline, key, self.next_id);
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
        info!("closing {} clients with 1001 (grace {:?})", self.clients, self.config.shutdown_grace);
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            match &self.conns[key].phase {
                Phase::Ws(_) => self.close_ws(key, Reason::Shutdown, now),
                Phase::Http(h) if h.buf.is_empty() && h.head.is_none() => self.begin_close(key),
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

    fn read_http(&mut self, key: usize) {
        let limit = http::MAX_HEAD_BYTES + self.config.max_broadcast_bytes;
        let mut total = 0;
        let mut eof = false;
        {
            let conn = &mut self.conns[key];
            let Phase::Http(h) = &mut conn.phase else {
                return;
            };
            if h.paused {
                return;
            }
            if h.consumed > 0 {
                h.buf.drain(..h.consumed);
                h.consumed = 0;
            }
            loop {
                // Never hold more than one head + one body: parse_head
                // rejects what would not fit, so stop reading past that.
                if h.buf.len() >= limit || total >= READ_BUDGET_BYTES {
                    self.again.push(key);
                    break;
                }
                let want = (limit - h.buf.len()).min(self.scratch.len());
                match conn.stream.read(&mut self.scratch[..want]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        h.buf.extend_from_slice(&self.scratch[..n]);
                        total += n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return self.remove(key),
                }
            }
        }
        self.process_http(key);
        if eof {
            match self.conns.get(key).map(|c| &c.phase) {
                // Half-close: answer what arrived whole, then close.
                Some(Phase::Http(_)) => self.begin_close(key),
                // The EOF came in the same read as an upgrade request: let
                // the WebSocket read see it (edge-triggered: no new event).
                Some(Phase::Ws(_)) => self.again.push(key),
                _ => {}
            }
        }
    }

    /// Handles every complete request in the buffer, in order.
    fn process_http(&mut self, key: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let Phase::Http(h) = &mut conn.phase else {
                return;
            };
            if conn.out.bytes() >= HTTP_OUT_HIGH_WATER {
                h.paused = true;
                return;
            }
            let head = match h.head.take() {
                Some(head) => head,
                None => match http::parse_head(&h.buf[h.consumed..], self.config.max_broadcast_bytes) {
                    Ok(Some(head)) => Box::new(head),
                    Ok(None) => return,
                    Err(reject) => {
                        debug!("{} bad request: {} {}", conn.peer, reject.status, reject.message);
                        // The framing is lost (or the body unwanted): answer and close.
                        let resp = Response::error(reject.status, reject.message);
                        let head_request = h.buf[h.consumed..].starts_with(b"HEAD ");
                        conn.out.push_owned(resp.encode(false, head_request));
                        h.buf = Vec::new();
                        self.begin_close(key);
                        return;
                    }
                },
            };
            let (start, end) = (h.consumed + head.head_len, h.consumed + head.head_len + head.content_length);
            if h.buf.len() < end {
                h.head = Some(head);
                return;
            }
            let ip = http::client_ip(conn.peer.ip(), &head);
            let ctx = Ctx {
                config: &self.config,
                verifier: &self.verifier,
                clients: self.clients,
                clients_from_ip: self.clients_per_ip.get(&ip).copied().unwrap_or(0),
            };
            let action = api::route(&head, &h.buf[start..end], &ctx);
            if let Action::Upgrade { key: ws_key, claims } = action {
                let leftover = h.buf.split_off(end);
                return self.upgrade(key, &head, ip, &ws_key, claims, leftover);
            }
            h.consumed = end;
            if h.consumed == h.buf.len() {
                h.buf.clear();
                h.consumed = 0;
            }
            let resp = match action {
                Action::Respond(resp) => resp,
                Action::Broadcast { kind, frame } => {
                    let (rate, burst) = (self.config.broadcast_rate, self.config.broadcast_burst);
                    if rate > 0 && !self.broadcast_bucket.take(burst, rate, Instant::now()) {
                        debug!("broadcast {kind} refused: over BROADCAST_RATE_PER_SEC");
                        Response::error(429, "too many broadcasts").header("Retry-After", "1")
                    } else {
                        let n = self.fan_out(frame);
                        debug!("broadcast {kind} to {n} clients");
                        api::broadcast_ok(n)
                    }
                }
                Action::Upgrade { .. } => unreachable!(),
            };
            let resp = api::with_cors(resp, &head, &self.config.allowed_origins);
            let conn = &mut self.conns[key];
            // Log the path only: the query may hold a token.
            debug!("{} {:?} {} -> {}", conn.peer, head.method(), head.path, resp.status);
            let keep = head.keep_alive && self.shutdown_deadline.is_none();
            conn.out.push_owned(resp.encode(keep, head.method() == http::Method::Head));
            self.mark_dirty(key);
            if !keep {
                return self.begin_close(key);
            }
            // A request was served: the keep-alive idle clock restarts.
            self.set_deadline(key, Instant::now() + self.config.request_timeout);
        }
    }

    fn upgrade(&mut self, key: usize, head: &Head, ip: IpAddr, ws_key: &str, claims: auth::Claims, leftover: Vec<u8>) {
        let now = Instant::now();
        let expires_at = now + auth::time_left(claims.exp);
        let sub = claims.sub.unwrap_or_default();
        let conn = &mut self.conns[key];
        conn.out.push_owned(ws::handshake_response(ws_key));
        let has_leftover = !leftover.is_empty();
        conn.phase = Phase::Ws(Box::new(WsConn {
            ctx: WebSocketContext::from_partially_read(leftover, Role::Server, Some(self.ws_config)),
            sub,
            ip,
            expires_at,
            last_seen: now,
            next_ping: now + self.config.ping_interval,
            close_deadline: None,
            bucket: TokenBucket::new(self.config.client_msg_burst, now),
        }));
        self.clients += 1;
        *self.clients_per_ip.entry(ip).or_default() += 1;
        let peer = conn.peer;
        debug!(
            "{peer} connected as {:?} (origin {:?}); {} clients",
            self.ws_sub(key),
            head.origin.as_deref().unwrap_or("-"),
            self.clients
        );
        self.mark_dirty(key);
        self.reschedule_ws(key);
        if has_leftover {
            // Frames that came in the same read as the request.
            self.again.push(key);
        }
    }

    fn ws_sub(&self, key: usize) -> &str {
        match &self.conns[key].phase {
            Phase::Ws(ws) => &ws.sub,
            _ => "",
        }
    }

    fn read_ws(&mut self, key: usize) {
        let now = Instant::now();
        for _ in 0..READ_BUDGET_MESSAGES {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let Phase::Ws(ws) = &mut conn.phase else {
                return;
            };
            let result = ws.ctx.read(&mut Wire { sock: &mut conn.stream, out: &mut conn.out });
            if !conn.out.is_empty() {
                self.mark_dirty(key); // tungstenite may have queued a pong or close reply
            }
            let Phase::Ws(ws) = &mut self.conns[key].phase else {
                return;
            };
            use tungstenite::Error as E;
            match result {
                Ok(msg) => {
                    ws.last_seen = now;
                    let (burst, rate) = (self.config.client_msg_burst, self.config.client_msg_rate);
                    if !matches!(msg, Message::Close(_)) && !ws.bucket.take(burst, rate, now) {
                        return self.fail_ws(key, Reason::RateLimited);
                    }
                    match msg {
                        Message::Text(text) => self.on_client_text(key, text.as_str(), now),
                        Message::Binary(_) => return self.fail_ws(key, Reason::Binary),
                        // Pings are answered by tungstenite; pongs and the
                        // peer's close only refresh `last_seen`.
                        _ => {}
                    }
                }
                Err(E::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(E::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                // The close handshake finished: send what is queued, then FIN.
                Err(E::ConnectionClosed | E::AlreadyClosed) => return self.begin_close(key),
                Err(E::Capacity(_)) => return self.fail_ws(key, Reason::TooBig),
                Err(E::Utf8(_)) => return self.fail_ws(key, Reason::BadUtf8),
                Err(E::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake)) => {
                    // FIN without a close frame. It may still read (a
                    // half-close): send what is queued, then close.
                    debug!("{} closed without a close frame", self.conns[key].peer);
                    return self.begin_close(key);
                }
                Err(E::Protocol(e)) => {
                    debug!("{} protocol error: {e}", self.conns[key].peer);
                    return self.fail_ws(key, Reason::Protocol);
                }
                Err(e) => {
                    debug!("{} read error: {e}", self.conns[key].peer);
                    return self.remove(key);
                }
            }
        }
        self.again.push(key);
    }

    fn on_client_text(&mut self, key: usize, text: &str, now: Instant) {
        match ws::on_text(text, self.config.max_message_bytes) {
            Inbound::Ignore => debug!("{} sent an unhandled message", self.conns[key].peer),
            Inbound::Reply(reply) => self.send_text(key, reply),
            Inbound::Close(reason) => self.fail_ws(key, reason),
            Inbound::Auth(token) => {
                let Phase::Ws(ws) = &mut self.conns[key].phase else {
                    return;
                };
                match self.verifier.verify(&token) {
                    Ok(claims) if claims.sub.as_deref().unwrap_or("") == ws.sub => {
                        ws.expires_at = now + auth::time_left(claims.exp);
                        self.send_text(key, r#"{"type":"auth_ok"}"#.to_string());
                        self.reschedule_ws(key);
                    }
                    Ok(_) => {
                        debug!("{} refresh token is for another subject", self.conns[key].peer);
                        self.close_ws(key, Reason::AuthFailed, now);
                    }
                    Err(e) => {
                        debug!("{} refresh token refused: {}", self.conns[key].peer, e.message());
                        self.close_ws(key, Reason::AuthFailed, now);
                    }
                }
            }
        }
    }

    /// Sends a text message through tungstenite (so it respects the close state).
    fn send_text(&mut self, key: usize, text: String) {
        let conn = &mut self.conns[key];
        if let Phase::Ws(ws) = &mut conn.phase
            && ws.ctx.can_write()
        {
            let _ = ws.ctx.write(&mut Wire { sock: &mut conn.stream, out: &mut conn.out }, Message::text(text));
            self.mark_dirty(key);
        }
    }

    /// Discards input from a closing connection until the peer closes.
    fn read_closing(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let mut total = 0;
        loop {
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => return self.remove(key),
                Ok(n) => {
                    total += n;
                    if total >= READ_BUDGET_BYTES {
                        self.again.push(key);
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.remove(key),
            }
        }
    }

    // ---- broadcasting ------------------------------------------------------

    /// Queues one framed broadcast to every open client; returns how many.
    ///
    /// Hot path: per client, one refcount bump and one queue push — no
    /// encoding, no copy, no syscall (writes happen in `flush_dirty`).
    fn fan_out(&mut self, frame: std::rc::Rc<[u8]>) -> usize {
        let limit = self.config.send_queue_limit;
        let mut sent = 0;
        let mut slow = Vec::new();
        for (key, conn) in self.conns.iter_mut() {
            let Phase::Ws(ws) = &conn.phase else { continue };
            if !ws.ctx.can_write() {
                continue; // closing: no data after our close frame
            }
            if conn.out.len() >= limit {
                // Maybe the socket has room now (a burst of broadcasts in one
                // turn); only a client that truly is not reading is slow.
                if conn.out.write_to(&mut crate::sys::Send(&conn.stream)).is_err() || conn.out.len() >= limit {
                    slow.push(key);
                    continue;
                }
            }
            conn.out.push_shared(frame.clone());
            sent += 1;
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(key);
            }
        }
        let now = Instant::now();
        for key in slow {
            let c = &self.conns[key];
            warn!("{} ({:?}) too slow: {} messages queued; closing with 1013", c.peer, self.ws_sub(key), c.out.len());
            self.conns[key].out.drop_unstarted();
            self.close_ws(key, Reason::SlowConsumer, now);
        }
        sent
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

    /// Starts the close handshake (graceful): the client gets `reason`, and
    /// CLOSE_WAIT to answer; messages already queued go first.
    fn close_ws(&mut self, key: usize, reason: Reason, now: Instant) {
        let conn = &mut self.conns[key];
        if !matches!(&conn.phase, Phase::Ws(ws) if ws.close_deadline.is_none()) {
            return; // not a WebSocket, or closing already
        }
        // From here on it no longer counts as a connected client.
        uncount(&mut self.clients, &mut self.clients_per_ip, conn, reason.text());
        send_close(conn, reason);
        if let Phase::Ws(ws) = &mut conn.phase {
            ws.close_deadline = Some(now + CLOSE_WAIT);
        }
        self.mark_dirty(key);
        self.reschedule_ws(key);
    }

    /// Fails the connection (RFC 6455 §7.1.7): a close frame with `reason`,
    /// then no more reading of what is presumably garbage.
    fn fail_ws(&mut self, key: usize, reason: Reason) {
        send_close(&mut self.conns[key], reason);
        self.begin_close(key);
    }

    /// Moves to `Closing`: flush, FIN, drain until the peer closes or LINGER.
    fn begin_close(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        uncount(&mut self.clients, &mut self.clients_per_ip, conn, "disconnected");
        if !matches!(conn.phase, Phase::Closing { .. }) {
            conn.phase = Phase::Closing { fin_sent: false };
        }
        self.mark_dirty(key);
        let until = Instant::now() + LINGER;
        self.set_deadline(key, self.shutdown_deadline.map_or(until, |d| d.min(until)));
    }

    /// Drops the connection now (closing the socket deregisters it).
    fn remove(&mut self, key: usize) {
        let Some(conn) = self.conns.try_remove(key) else {
            return;
        };
        uncount(&mut self.clients, &mut self.clients_per_ip, &conn, "dropped");
    }

    // ---- timers ------------------------------------------------------------

    fn set_deadline(&mut self, key: usize, at: Instant) {
        let conn = &mut self.conns[key];
        if conn.deadline != at {
            conn.deadline = at;
            self.timers.schedule(at, key, conn.id);
        }
    }

    /// A WebSocket's next wake-up: the earliest of ping, silence limit,
    /// token expiry and close deadline.
    fn reschedule_ws(&mut self, key: usize) {
        let Phase::Ws(ws) = &self.conns[key].phase else {
            return;
        };
        let mut at = ws.next_ping.min(ws.last_seen + self.config.pong_wait).min(ws.expires_at);
        if let Some(d) = ws.close_deadline {
            at = at.min(d);
        }
        self.set_deadline(key, at);
    }

    fn run_timers(&mut self, now: Instant) {
        if self.accept_paused_until.is_some_and(|t| now >= t) {
            self.accept_paused_until = None;
            self.accept();
        }
        while let Some(Due { key, id }) = self.timers.pop_due(now) {
            match self.conns.get(key) {
                Some(c) if c.id == id && c.deadline <= now => self.on_timer(key, now),
                _ => {} // stale: removed, reused, or moved later
            }
        }
    }

    fn on_timer(&mut self, key: usize, now: Instant) {
        let conn = &mut self.conns[key];
        match &mut conn.phase {
            Phase::Http(h) => {
                if h.buf.is_empty() && h.head.is_none() {
                    return self.remove(key); // idle keep-alive
                }
                debug!("{} request not completed in time: 408", conn.peer);
                let head_request = h.buf[h.consumed..].starts_with(b"HEAD ");
                let resp = Response::error(408, "request not completed in time");
                conn.out.push_owned(resp.encode(false, head_request));
                self.begin_close(key);
            }
            Phase::Closing { .. } => self.remove(key),
            Phase::Ws(ws) => {
                if ws.close_deadline.is_some_and(|d| now >= d) {
                    debug!("{} did not answer our close frame", conn.peer);
                    return self.remove(key);
                }
                if now >= ws.last_seen + self.config.pong_wait {
                    debug!("{} ({:?}) silent for {:?}: dropping", conn.peer, ws.sub, self.config.pong_wait);
                    return self.remove(key);
                }
                if now >= ws.expires_at {
                    return self.close_ws(key, Reason::TokenExpired, now);
                }
                if now >= ws.next_ping {
                    ws.next_ping = now + self.config.ping_interval;
                    if ws.ctx.can_write() {
                        let _ = ws.ctx.write(
                            &mut Wire { sock: &mut conn.stream, out: &mut conn.out },
                            Message::Ping(Default::default()),
                        );
                        self.mark_dirty(key);
                    }
                }
                self.reschedule_ws(key);
            }
        }
    }
}

/// Queues a close frame with `reason` (tungstenite tracks the close state).
fn send_close(conn: &mut Conn, reason: Reason) {
    if let Phase::Ws(ws) = &mut conn.phase {
        debug!("{} ({:?}) closing: {} {}", conn.peer, ws.sub, reason.code(), reason.text());
        let _ = ws.ctx.close(&mut Wire { sock: &mut conn.stream, out: &mut conn.out }, Some(reason.close_frame()));
    }
}

/// Stops counting `conn` as a connected client — once: a client we sent a
/// close frame was uncounted then (`close_deadline` is set).
fn uncount(clients: &mut usize, per_ip: &mut HashMap<IpAddr, usize>, conn: &Conn, what: &str) {
    let Phase::Ws(ws) = &conn.phase else { return };
    if ws.close_deadline.is_some() {
        return;
    }
    *clients -= 1;
    if let Some(n) = per_ip.get_mut(&ws.ip) {
        *n -= 1;
        if *n == 0 {
            per_ip.remove(&ws.ip);
        }
    }
    debug!("{} ({:?}) {what}; {} clients", conn.peer, ws.sub, clients);
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
