//! The client side: one mio poll loop driving every WebSocket connection.
//!
//! Per connection the loop keeps a socket, a state byte, the expected
//! accept key, a counter and two usually-empty vectors (leftover partial
//! frame, unsent output). Reads go into one shared 64 KiB scratch buffer and
//! are drained until WouldBlock (mio is edge-triggered); frames are parsed in
//! place and only a trailing partial frame is copied into the connection.
//!
//! The soak adds clients while running ([`Engine::add_client`], slots are
//! reused), each with a [`Life`]: its role (healthy, slow reader, silent,
//! sender of a bad frame), the seqs it received, and how it ended. Healthy
//! clients leave with a close handshake ([`Engine::begin_leave`]) so that
//! every broadcast fanned out to them before they left is read first.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::http::{ST_ACCEPTED, SendShared};
use crate::roles::{Life, Outcome, ROLES, Role, Stall};
use crate::stats::Hist;
use crate::taskapp::TaskTrack;
use crate::ws::{self, FrameParse, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, Upgrade, XorShift};

/// Largest message the client accepts (server frames are small JSON).
const MAX_MESSAGE: u64 = 16 * 1024 * 1024;
/// A leftover buffer larger than this is freed once it has been consumed.
const KEEP_PENDING_CAPACITY: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    NotStarted,
    Connecting,
    Handshaking,
    Open,
    /// We sent our close frame; reading on until the server answers it.
    Leaving,
    Closed,
}

struct Client {
    stream: Option<TcpStream>,
    st: St,
    /// Unparsed input (a partial frame or partial HTTP head).
    pending: Vec<u8>,
    /// Output not yet accepted by the socket.
    out: Vec<u8>,
    /// Fragmented message being reassembled (rare).
    frag: Option<Vec<u8>>,
    /// Expected Sec-WebSocket-Accept (base64 of a SHA-1: 28 bytes).
    accept: [u8; 28],
    started: Instant,
    /// Distinct tracked messages received.
    uniq: u32,
    /// Incremented each time the slot is reused, so that a timer set for
    /// an earlier connection in this slot is recognised as stale.
    epoch: u32,
    /// Soak clients only: role and record (boxed: the other modes keep
    /// tens of thousands of clients and pay one pointer each).
    life: Option<Box<Life>>,
}

impl Client {
    fn new(now: Instant) -> Client {
        Client {
            stream: None,
            st: St::NotStarted,
            pending: Vec::new(),
            out: Vec::new(),
            frag: None,
            accept: [0; 28],
            started: now,
            uniq: 0,
            epoch: 0,
            life: None,
        }
    }
}

/// How WebSocket clients authenticate.
pub enum ClientAuth {
    Secret(String),
    Token(String),
}

/// Counters of the connection side.
#[derive(Default)]
pub struct Stats {
    pub started: usize,
    pub in_flight: usize,
    /// Currently open.
    pub open: usize,
    /// Ever completed the handshake.
    pub opened_total: usize,
    pub failed: BTreeMap<String, u64>,
    /// First error text seen per failure cause.
    pub failure_examples: BTreeMap<String, String>,
    /// Open connections that were later closed, by reason.
    pub closed: BTreeMap<String, u64>,
    pub closed_examples: BTreeMap<String, String>,
    pub handshake: Hist,
    pub pings: u64,
    pub pongs: u64,
    pub fd_exhausted: bool,
    pub ports_exhausted: bool,
    /// Close handshakes we started and the server answered.
    pub left: u64,
    /// Currently leaving (counted in `open` too).
    pub leaving: usize,
    pub first_open: Option<Instant>,
    pub last_open: Option<Instant>,
}

impl Stats {
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }
    pub fn closed_total(&self) -> u64 {
        self.closed.values().sum()
    }
    fn fail(&mut self, cause: &str, detail: String) {
        *self.failed.entry(cause.to_string()).or_default() += 1;
        self.failure_examples.entry(cause.to_string()).or_insert(detail);
    }
}

/// Per-message bookkeeping during a send phase.
pub struct Tracker {
    pub msgs: usize,
    pub senders: usize,
    words: usize,
    /// One bit per (client, seq).
    seen: Vec<u64>,
    /// Per (client, sender): index of the last message seen from that sender.
    last_idx: Vec<u32>,
    pub lat: Hist,
    pub raw: u64,
    pub uniq_total: u64,
    pub dup: u64,
    pub ooo: u64,
    pub unexpected: u64,
    pub last_delivery: Option<Instant>,
    /// Unique deliveries of clients that closed during the phase.
    pub dead_uniq: u64,
    /// Clients open when tracking started.
    pub tracked: Vec<bool>,
    pub shared: Arc<SendShared>,
}

impl Tracker {
    fn on_message(&mut self, id: usize, c_uniq: &mut u32, msg: &[u8], now: Instant, now_ns: u64) {
        self.raw += 1;
        let Some(seq) = ws::find_seq(msg) else {
            self.unexpected += 1;
            return;
        };
        if seq >= self.msgs as u64 || !self.tracked[id] {
            self.unexpected += 1;
            return;
        }
        let s = seq as usize;
        let w = id * self.words + s / 64;
        let bit = 1u64 << (s % 64);
        if self.seen[w] & bit != 0 {
            self.dup += 1;
            return;
        }
        self.seen[w] |= bit;
        *c_uniq += 1;
        self.uniq_total += 1;
        self.last_delivery = Some(now);
        let sent = self.shared.send_ns[s].load(Ordering::Acquire);
        if sent != 0 {
            let us = (now_ns + 1).saturating_sub(sent) / 1000;
            self.lat.record_us(us);
        }
        let k = s % self.senders;
        let idx = (s / self.senders) as u32;
        let last = &mut self.last_idx[id * self.senders + k];
        if *last != u32::MAX && idx < *last {
            self.ooo += 1;
        } else {
            *last = idx;
        }
    }

    /// Bitmap of the seqs whose POST was accepted (HTTP 200).
    pub fn accepted_mask(&self) -> Vec<u64> {
        let mut m = vec![0u64; self.words];
        for (s, st) in self.shared.status.iter().enumerate() {
            if st.load(Ordering::Relaxed) == ST_ACCEPTED {
                m[s / 64] |= 1 << (s % 64);
            }
        }
        m
    }

    /// Bitmap of every seq of the run.
    pub fn all_mask(&self) -> Vec<u64> {
        let mut m = vec![u64::MAX; self.words];
        if let (false, Some(last)) = (self.msgs.is_multiple_of(64), m.last_mut()) {
            *last = (1u64 << (self.msgs % 64)) - 1;
        }
        m
    }

    /// Seqs in `mask` that client `id` did not receive: count and the first
    /// few.
    pub fn missing_for(&self, id: usize, mask: &[u64]) -> (u64, Vec<usize>) {
        let row = &self.seen[id * self.words..(id + 1) * self.words];
        let mut n = 0u64;
        let mut first = Vec::new();
        for (wi, (&a, &s)) in mask.iter().zip(row).enumerate() {
            let miss = a & !s;
            n += miss.count_ones() as u64;
            if miss != 0 && first.len() < 10 {
                for b in 0..64 {
                    if miss & (1 << b) != 0 && first.len() < 10 {
                        first.push(wi * 64 + b);
                    }
                }
            }
        }
        (n, first)
    }
}

/// Soak bookkeeping the engine updates as messages arrive.
pub struct SoakTrack {
    /// Send/answer times per seq (latency, accepted count for slow readers).
    pub shared: Arc<SendShared>,
    /// Healthy clients' delivery latency: POST written → message read.
    pub latency: Hist,
    /// Messages healthy clients received.
    pub delivered: u64,
    /// Messages without a readable seq.
    pub unexpected: u64,
    /// MAX_MESSAGE_BYTES (oversized clients exceed it).
    pub max_message_bytes: usize,
    /// How long a close handshake we start may take.
    pub leave_timeout: Duration,
}

/// Socket options set before connecting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SockOpts {
    pub rcvbuf: Option<i32>,
    pub maxseg: Option<i32>,
}

/// A slow reader's socket: a 4 KiB receive buffer and a 536-byte MSS (the
/// IPv4 default, as on a poor mobile link). On loopback (64 KiB MSS) the
/// server's send buffer autotunes to megabytes and a stopped reader takes
/// minutes to fill it at a steady broadcast rate; with a small MSS the
/// server's buffer starts, and stays, small, so its queue fills in seconds.
pub const SLOW_READER_SOCKET: SockOpts = SockOpts { rcvbuf: Some(4096), maxseg: Some(536) };

/// What the connection side needs to know.
pub struct EngineOptions {
    pub conns: usize,
    pub addr: SocketAddr,
    pub host_header: String,
    pub auth: ClientAuth,
    /// Send the token as `?token=` instead of an Authorization header.
    pub query_token: bool,
    /// Handshakes in flight at once.
    pub concurrency: usize,
    pub connect_timeout: Duration,
    /// Loopback source addresses to spread connections over (1: no binding).
    pub source_ips: usize,
    /// taskapp: clients per project (0: no projects). Client i's token
    /// grants `project:<i / group>`, which it subscribes to once open.
    pub group: usize,
}

pub struct Engine {
    poll: Poll,
    events: Events,
    clients: Vec<Client>,
    scratch: Vec<u8>,
    addr: SocketAddr,
    host_header: String,
    auth: ClientAuth,
    query_token: bool,
    concurrency: usize,
    connect_timeout: Duration,
    rng: XorShift,
    /// Loopback source addresses to bind to (empty: let the kernel choose).
    sources: Vec<std::net::Ipv4Addr>,
    next_to_start: usize,
    /// Handshake deadlines: (when, client, its epoch).
    deadlines: VecDeque<(Instant, usize, u32)>,
    pub stats: Stats,
    pub tracker: Option<Tracker>,
    /// Soak only: bookkeeping, reusable slots, timers, ended clients.
    pub soak: Option<SoakTrack>,
    /// taskapp only: the project subscriptions and their deliveries.
    pub taskapp: Option<TaskTrack>,
    free: Vec<usize>,
    /// Planned departures of churn clients (a heap: lifetimes vary).
    departures: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    /// Close handshakes in progress (constant bound: FIFO order).
    leave_deadlines: VecDeque<(Instant, usize, u32)>,
    /// Records of soak clients that ended, for the driver to collect.
    pub finished: Vec<Life>,
    /// Soak clients alive (connecting or open) per role (`Role::index`).
    pub live: [usize; ROLES.len()],
    /// Cluster soak: the instances' addresses; a soak client connects to
    /// `targets[life.instance]` (empty: every client to `addr`).
    pub targets: Vec<SocketAddr>,
}

/// Non-blocking connect from `src` (port chosen at connect time thanks to
/// IP_BIND_ADDRESS_NO_PORT, so each source address has its own port space),
/// with `opts` set before the SYN (a receive buffer and MSS only take full
/// effect if set before the connection is made).
fn connect_from(src: Option<std::net::Ipv4Addr>, addr: SocketAddr, opts: SockOpts) -> io::Result<TcpStream> {
    let SocketAddr::V4(dst) = addr else {
        return TcpStream::connect(addr);
    };
    if src.is_none() && opts == SockOpts::default() {
        return TcpStream::connect(addr);
    }
    use std::os::fd::FromRawFd;
    let sin = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(ip.octets()) },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket syscalls on an fd we own (wrapped right away so
    // that it is closed on every error path) and on local structs.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let std_stream = std::net::TcpStream::from_raw_fd(fd);
        let set = |level: libc::c_int, name: libc::c_int, v: libc::c_int| -> io::Result<()> {
            let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            if libc::setsockopt(fd, level, name, &v as *const libc::c_int as *const libc::c_void, size) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        };
        if let Some(src) = src {
            let _ = set(libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1);
            let local = sin(src, 0);
            if libc::bind(fd, &local as *const libc::sockaddr_in as *const libc::sockaddr, len) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some(b) = opts.rcvbuf {
            set(libc::SOL_SOCKET, libc::SO_RCVBUF, b)?;
        }
        if let Some(m) = opts.maxseg {
            set(libc::IPPROTO_TCP, libc::TCP_MAXSEG, m)?;
        }
        let remote = sin(*dst.ip(), dst.port());
        if libc::connect(fd, &remote as *const libc::sockaddr_in as *const libc::sockaddr, len) != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e);
            }
        }
        Ok(TcpStream::from_std(std_stream))
    }
}

/// Clients per loopback source address by default: the server's default
/// MAX_CONNECTIONS_PER_IP (beyond it: 429), and well below the point where
/// Linux's ephemeral port search slows down (about 1 ms per connect once
/// half of the ports toward one destination are taken, ~14k).
pub const CLIENTS_PER_SOURCE_IP: usize = 1000;

/// How many loopback source addresses to spread `conns` connections over.
pub fn auto_source_ips(addr: SocketAddr, conns: usize) -> usize {
    match addr {
        SocketAddr::V4(a) if a.ip().is_loopback() => conns.div_ceil(CLIENTS_PER_SOURCE_IP).clamp(1, 250),
        _ => 1,
    }
}

fn classify(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => return "fd_limit",
        Some(libc::EADDRNOTAVAIL) => return "no_local_ports",
        _ => {}
    }
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "refused",
        io::ErrorKind::ConnectionReset => "reset",
        io::ErrorKind::ConnectionAborted => "aborted",
        io::ErrorKind::TimedOut => "timeout",
        io::ErrorKind::BrokenPipe => "broken_pipe",
        _ => "io_error",
    }
}

impl Engine {
    pub fn new(o: EngineOptions) -> io::Result<Engine> {
        let EngineOptions {
            conns,
            addr,
            host_header,
            auth,
            query_token,
            concurrency,
            connect_timeout,
            source_ips,
            group,
        } = o;
        let now = Instant::now();
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
                ^ ((std::process::id() as u64) << 32);
        let mut clients = Vec::with_capacity(conns);
        for _ in 0..conns {
            clients.push(Client::new(now));
        }
        Ok(Engine {
            poll: Poll::new()?,
            events: Events::with_capacity(4096),
            clients,
            scratch: vec![0u8; 64 * 1024],
            addr,
            host_header,
            auth,
            query_token,
            concurrency,
            connect_timeout,
            rng: XorShift::new(seed ^ 0x9E37_79B9_7F4A_7C15),
            sources: if source_ips > 1 && addr.is_ipv4() && addr.ip().is_loopback() {
                (0..source_ips.min(250)).map(|i| std::net::Ipv4Addr::new(127, 0, 0, 1 + i as u8)).collect()
            } else {
                Vec::new()
            },
            next_to_start: 0,
            deadlines: VecDeque::new(),
            stats: Stats::default(),
            tracker: None,
            soak: None,
            taskapp: (group > 0).then(|| TaskTrack::new(conns, group)),
            free: Vec::new(),
            departures: BinaryHeap::new(),
            leave_deadlines: VecDeque::new(),
            finished: Vec::new(),
            live: [0; ROLES.len()],
            targets: Vec::new(),
        })
    }

    /// All connection attempts have finished (open or failed).
    pub fn connect_done(&self) -> bool {
        (self.next_to_start >= self.clients.len() || self.stats.fd_exhausted) && self.stats.in_flight == 0
    }

    /// Connections never attempted because the fd limit was hit.
    pub fn not_attempted(&self) -> usize {
        self.clients.len() - self.next_to_start
    }

    fn token_for(&self, id: usize) -> Result<String, String> {
        match &self.auth {
            ClientAuth::Token(t) => Ok(t.clone()),
            ClientAuth::Secret(s) => match &self.taskapp {
                Some(t) => crate::http::mint_token_with_channels(s, &format!("load-{id}"), &[t.project_channel(id)]),
                None => crate::http::mint_token(s, &format!("load-{id}")),
            },
        }
    }

    fn start_connects(&mut self) {
        while self.stats.in_flight < self.concurrency
            && self.next_to_start < self.clients.len()
            && !self.stats.fd_exhausted
        {
            let id = self.next_to_start;
            self.next_to_start += 1;
            self.start(id);
        }
    }

    fn start(&mut self, id: usize) {
        self.stats.started += 1;
        let now = Instant::now();
        let src = if self.sources.is_empty() { None } else { Some(self.sources[id % self.sources.len()]) };
        let life = self.clients[id].life.as_ref();
        let slow = life.is_some_and(|l| l.role == Role::Slow);
        let opts = if slow { SLOW_READER_SOCKET } else { SockOpts::default() };
        let addr = life.and_then(|l| self.targets.get(l.instance)).copied().unwrap_or(self.addr);
        let mut stream = match connect_from(src, addr, opts) {
            Ok(s) => s,
            Err(e) => {
                let cause = classify(&e);
                if cause == "fd_limit" {
                    self.stats.fd_exhausted = true;
                }
                if cause == "no_local_ports" {
                    self.stats.ports_exhausted = true;
                }
                self.stats.fail(cause, e.to_string());
                self.clients[id].st = St::Closed;
                self.retire(id, Outcome::Error(format!("connect: {cause}")));
                return;
            }
        };
        if let Err(e) = self.poll.registry().register(&mut stream, Token(id), Interest::READABLE | Interest::WRITABLE) {
            let cause = classify(&e);
            if cause == "fd_limit" {
                self.stats.fd_exhausted = true;
            }
            self.stats.fail(cause, format!("register: {e}"));
            self.clients[id].st = St::Closed;
            self.retire(id, Outcome::Error(format!("connect: {cause}")));
            return;
        }
        let c = &mut self.clients[id];
        c.stream = Some(stream);
        c.st = St::Connecting;
        c.started = now;
        self.stats.in_flight += 1;
        self.deadlines.push_back((now + self.connect_timeout, id, c.epoch));
    }

    /// Soak: starts a new client with this record, in a free slot.
    pub fn add_client(&mut self, life: Life) -> (usize, u32) {
        let now = Instant::now();
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.clients.push(Client::new(now));
                // soak slots are started here, never by start_connects
                self.next_to_start = self.clients.len();
                self.clients.len() - 1
            }
        };
        self.live[life.role.index()] += 1;
        let c = &mut self.clients[id];
        c.epoch = c.epoch.wrapping_add(1);
        c.uniq = 0;
        c.frag = None;
        c.pending = Vec::new();
        c.out = Vec::new();
        c.life = Some(Box::new(life));
        let epoch = c.epoch;
        self.start(id);
        (id, epoch)
    }

    /// Soak: a client ended; hands its record to the driver and frees the
    /// slot. `outcome` applies unless one was already recorded (a close
    /// code read from the server).
    fn retire(&mut self, id: usize, outcome: Outcome) {
        let Some(mut life) = self.clients[id].life.take() else {
            return;
        };
        if life.outcome.is_none() {
            life.outcome = Some(outcome);
        }
        life.ended = Some(Instant::now());
        life.stall = None;
        self.live[life.role.index()] -= 1;
        self.finished.push(*life);
        self.free.push(id);
    }

    /// Soak: starts the close handshake of an open client (RFC 6455 §5.5.1:
    /// after sending a Close frame the endpoint reads on until it receives
    /// the peer's). `left` is taken before our close frame is written.
    pub fn begin_leave(&mut self, id: usize, epoch: u32) -> bool {
        let now = Instant::now();
        let timeout = self.soak.as_ref().map_or(Duration::from_secs(10), |s| s.leave_timeout);
        let Some(c) = self.clients.get_mut(id) else {
            return false;
        };
        if c.epoch != epoch || c.st != St::Open {
            return false;
        }
        if let Some(l) = c.life.as_deref_mut() {
            l.left = Some(now);
            l.stall = None;
        }
        ws::encode_client_frame(&mut c.out, OP_CLOSE, &1000u16.to_be_bytes(), self.rng.mask());
        c.st = St::Leaving;
        self.stats.leaving += 1;
        self.leave_deadlines.push_back((now + timeout, id, epoch));
        self.flush(id);
        // edge-triggered: input that arrived while we did not read (a
        // stalled reader) would not be announced again
        self.read_all(id);
        true
    }

    /// Soak: every open client starts leaving.
    pub fn leave_all(&mut self) {
        for id in 0..self.clients.len() {
            let epoch = self.clients[id].epoch;
            self.begin_leave(id, epoch);
        }
    }

    /// Soak: a stalled slow reader reads again (and at once: no readiness
    /// edge announces what is already waiting).
    pub fn resume(&mut self, id: usize, epoch: u32, timed_out: bool) {
        let Some(c) = self.clients.get_mut(id).filter(|c| c.epoch == epoch) else {
            return;
        };
        if let Some(l) = c.life.as_deref_mut().filter(|l| l.stall.is_some()) {
            l.stall = None;
            l.resumed = Some(Instant::now());
            l.stall_timed_out = timed_out;
            self.read_all(id);
        }
    }

    /// Soak: an unsolicited Pong (RFC 6455 §5.5.3 allows one as a
    /// heartbeat): a stalled reader still shows it is alive.
    pub fn heartbeat(&mut self, id: usize, epoch: u32) {
        let Some(c) = self.clients.get_mut(id).filter(|c| c.epoch == epoch && c.st == St::Open) else {
            return;
        };
        ws::encode_client_frame(&mut c.out, OP_PONG, b"", self.rng.mask());
        self.flush(id);
    }

    /// Soak: the clients alive now: (slot, epoch, open, record).
    pub fn lives(&self) -> impl Iterator<Item = (usize, u32, bool, &Life)> {
        self.clients.iter().enumerate().filter_map(|(i, c)| {
            let l = c.life.as_deref()?;
            Some((i, c.epoch, c.st == St::Open, l))
        })
    }

    pub fn life_mut(&mut self, id: usize, epoch: u32) -> Option<&mut Life> {
        self.clients.get_mut(id).filter(|c| c.epoch == epoch)?.life.as_deref_mut()
    }

    /// Soak clients alive, all roles.
    pub fn live_total(&self) -> usize {
        self.live.iter().sum()
    }

    /// Ends a connection that has not finished its handshake.
    fn fail_handshake(&mut self, id: usize, cause: &str, detail: String) {
        let c = &mut self.clients[id];
        if !matches!(c.st, St::Connecting | St::Handshaking) {
            return;
        }
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        c.st = St::Closed;
        c.pending = Vec::new();
        c.out = Vec::new();
        self.stats.in_flight -= 1;
        self.stats.fail(cause, detail);
        self.retire(id, Outcome::Error(format!("handshake: {cause}")));
    }

    /// Ends an open connection (server closed it, protocol error, or our
    /// close handshake finished: `reason` "left").
    fn close_open(&mut self, id: usize, reason: &str, detail: String) {
        let c = &mut self.clients[id];
        if !matches!(c.st, St::Open | St::Leaving) {
            return;
        }
        if c.st == St::Leaving {
            self.stats.leaving -= 1;
        }
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        c.st = St::Closed;
        c.pending = Vec::new();
        c.out = Vec::new();
        c.frag = None;
        self.stats.open -= 1;
        if reason == "left" {
            self.stats.left += 1;
        } else {
            *self.stats.closed.entry(reason.to_string()).or_default() += 1;
            self.stats.closed_examples.entry(reason.to_string()).or_insert(detail);
        }
        if let Some(t) = self.tracker.as_mut().filter(|t| t.tracked[id]) {
            t.dead_uniq += c.uniq as u64;
        }
        let outcome = match reason {
            "left" => Outcome::Left,
            "leave_timeout" => Outcome::LeaveTimeout,
            "eof" => Outcome::Eof,
            other => Outcome::Error(other.to_string()),
        };
        self.retire(id, outcome);
    }

    fn end_with_error(&mut self, id: usize, cause: &str, detail: String) {
        match self.clients[id].st {
            St::Connecting | St::Handshaking => self.fail_handshake(id, cause, detail),
            St::Open | St::Leaving => self.close_open(id, cause, detail),
            _ => {}
        }
    }

    fn check_timeouts(&mut self, now: Instant) {
        while let Some(&Reverse((at, id, epoch))) = self.departures.peek() {
            if at > now {
                break;
            }
            self.departures.pop();
            self.begin_leave(id, epoch);
        }
        while let Some(&(deadline, id, epoch)) = self.leave_deadlines.front() {
            if deadline > now {
                break;
            }
            self.leave_deadlines.pop_front();
            let c = &self.clients[id];
            if c.epoch == epoch && c.st == St::Leaving {
                self.close_open(id, "leave_timeout", "our close frame was not answered in time".into());
            }
        }
        while let Some(&(deadline, id, epoch)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            let st = self.clients[id].st;
            if matches!(st, St::Connecting | St::Handshaking) && self.clients[id].epoch == epoch {
                let what = if st == St::Connecting { "TCP connect" } else { "WebSocket handshake" };
                self.fail_handshake(id, "timeout", format!("{what} not finished within {:?}", self.connect_timeout));
            }
        }
    }

    fn on_connected(&mut self, id: usize) {
        let token = match self.token_for(id) {
            Ok(t) => t,
            Err(e) => {
                self.fail_handshake(id, "token", e);
                return;
            }
        };
        let key = tungstenite::handshake::client::generate_key();
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let path = if self.query_token { format!("/ws?token={token}") } else { "/ws".to_string() };
        let bearer = if self.query_token { None } else { Some(token.as_str()) };
        let req = ws::build_upgrade_request(&self.host_header, &path, &key, bearer);
        let c = &mut self.clients[id];
        if let Some(s) = c.stream.as_ref() {
            let _ = s.set_nodelay(true);
            if let Some(l) = c.life.as_deref_mut() {
                l.local = s.local_addr().ok();
                l.requested = Some(Instant::now());
            }
        }
        c.accept.copy_from_slice(&accept.as_bytes()[..28]);
        c.out = req;
        c.st = St::Handshaking;
        self.flush(id);
    }

    fn flush(&mut self, id: usize) {
        let c = &mut self.clients[id];
        let Some(s) = c.stream.as_mut() else { return };
        let mut written = 0;
        let mut err = None;
        while written < c.out.len() {
            match s.write(&c.out[written..]) {
                Ok(0) => {
                    err = Some(io::Error::new(io::ErrorKind::WriteZero, "write returned 0"));
                    break;
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        if written == c.out.len() {
            c.out = Vec::new();
        } else {
            c.out.drain(..written);
        }
        if let Some(e) = err {
            self.end_with_error(id, classify(&e), format!("write: {e}"));
        }
    }

    fn on_event(&mut self, id: usize, readable: bool, writable: bool, hup: bool) {
        if id >= self.clients.len() {
            return;
        }
        match self.clients[id].st {
            St::NotStarted | St::Closed => return,
            St::Connecting => {
                let s = self.clients[id].stream.as_ref().expect("connecting stream");
                match s.take_error() {
                    Ok(Some(e)) | Err(e) => {
                        self.fail_handshake(id, classify(&e), e.to_string());
                        return;
                    }
                    Ok(None) => {}
                }
                match s.peer_addr() {
                    Ok(_) => self.on_connected(id),
                    Err(e) if e.kind() == io::ErrorKind::NotConnected && !hup => return,
                    Err(e) => {
                        self.fail_handshake(id, classify(&e), e.to_string());
                        return;
                    }
                }
            }
            St::Handshaking | St::Open | St::Leaving => {
                if writable && !self.clients[id].out.is_empty() {
                    self.flush(id);
                }
            }
        }
        if readable || hup {
            self.read_all(id);
        }
    }

    fn read_all(&mut self, id: usize) {
        loop {
            let c = &mut self.clients[id];
            if !matches!(c.st, St::Handshaking | St::Open | St::Leaving) {
                return;
            }
            if c.life.as_ref().is_some_and(|l| l.stall.is_some()) {
                return; // a slow reader that stopped reading
            }
            let Some(s) = c.stream.as_mut() else { return };
            match s.read(&mut self.scratch) {
                Ok(0) => {
                    let detail = "server closed the TCP connection".to_string();
                    if matches!(c.st, St::Open | St::Leaving) {
                        self.close_open(id, "eof", detail);
                    } else {
                        self.fail_handshake(id, "eof", detail);
                    }
                    return;
                }
                Ok(n) => {
                    self.on_data(id, n);
                    if !self.clients[id].out.is_empty() {
                        self.flush(id);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.end_with_error(id, classify(&e), format!("read: {e}"));
                    return;
                }
            }
        }
    }

    fn on_data(&mut self, id: usize, n: usize) {
        let now = Instant::now();
        let c = &mut self.clients[id];
        let result = if c.pending.is_empty() {
            let buf = &self.scratch[..n];
            let mut ctx = Ctx {
                stats: &mut self.stats,
                tracker: self.tracker.as_mut(),
                soak: self.soak.as_mut(),
                taskapp: self.taskapp.as_mut(),
                rng: &mut self.rng,
                departures: &mut self.departures,
            };
            let r = process(id, c, buf, now, &mut ctx);
            if let Ok(used) = r
                && used < n
            {
                c.pending.extend_from_slice(&buf[used..]);
            }
            r
        } else {
            c.pending.extend_from_slice(&self.scratch[..n]);
            let buf = std::mem::take(&mut c.pending);
            let mut ctx = Ctx {
                stats: &mut self.stats,
                tracker: self.tracker.as_mut(),
                soak: self.soak.as_mut(),
                taskapp: self.taskapp.as_mut(),
                rng: &mut self.rng,
                departures: &mut self.departures,
            };
            let r = process(id, c, &buf, now, &mut ctx);
            if let Ok(used) = r {
                let mut buf = buf;
                buf.drain(..used);
                if buf.is_empty() && buf.capacity() > KEEP_PENDING_CAPACITY {
                    buf = Vec::new();
                }
                c.pending = buf;
            }
            r
        };
        if let Err((cause, detail)) = result {
            // flush a close reply if one was queued, best effort
            if !self.clients[id].out.is_empty() {
                self.flush(id);
            }
            self.end_with_error(id, cause, detail);
        }
    }

    /// Polls until `done` says so or `until` passes; calls `progress` about
    /// once a second. Returns whether `done` was reached.
    pub fn run(
        &mut self,
        until: Instant,
        done: &mut dyn FnMut(&Engine) -> bool,
        progress: &mut dyn FnMut(&Engine),
    ) -> io::Result<bool> {
        let mut next_progress = Instant::now() + Duration::from_secs(1);
        loop {
            self.start_connects();
            if done(self) {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= until {
                return Ok(false);
            }
            let timeout =
                (until - now).min(Duration::from_millis(50)).min(next_progress.saturating_duration_since(now));
            match self.poll.poll(&mut self.events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let evs: Vec<(usize, bool, bool, bool)> = self
                .events
                .iter()
                .map(|e| (e.token().0, e.is_readable(), e.is_writable(), e.is_error() || e.is_read_closed()))
                .collect();
            for (id, r, w, h) in evs {
                self.on_event(id, r, w, h);
            }
            let now = Instant::now();
            self.check_timeouts(now);
            if now >= next_progress {
                progress(self);
                next_progress = now + Duration::from_secs(1);
            }
        }
    }

    /// Starts per-message tracking for a send phase over the open clients.
    pub fn start_tracking(&mut self, msgs: usize, senders: usize, shared: Arc<SendShared>) {
        let words = msgs.div_ceil(64);
        let n = self.clients.len();
        let tracked: Vec<bool> = self.clients.iter().map(|c| c.st == St::Open).collect();
        self.tracker = Some(Tracker {
            msgs,
            senders,
            words,
            seen: vec![0u64; n * words],
            last_idx: vec![u32::MAX; n * senders],
            lat: Hist::new(),
            raw: 0,
            uniq_total: 0,
            dup: 0,
            ooo: 0,
            unexpected: 0,
            last_delivery: None,
            dead_uniq: 0,
            tracked,
            shared,
        });
    }

    /// Every tracked client still open has received every accepted message
    /// (only meaningful once all senders are done).
    pub fn deliveries_complete(&self) -> bool {
        let Some(t) = self.tracker.as_ref() else {
            return true;
        };
        let target = t.shared.accepted.load(Ordering::Relaxed);
        let open_tracked = self.open_tracked();
        if t.uniq_total < open_tracked as u64 * target + t.dead_uniq {
            return false;
        }
        self.clients.iter().zip(&t.tracked).all(|(c, &tr)| !tr || c.st != St::Open || c.uniq as u64 >= target)
    }

    pub fn open_tracked(&self) -> usize {
        match self.tracker.as_ref() {
            None => 0,
            Some(t) => self.clients.iter().zip(&t.tracked).filter(|(c, tr)| **tr && c.st == St::Open).count(),
        }
    }

    pub fn tracked_count(&self) -> usize {
        self.tracker.as_ref().map_or(0, |t| t.tracked.iter().filter(|&&b| b).count())
    }

    /// Per tracked client: (id, still open, unique received).
    pub fn client_counts(&self) -> Vec<(usize, bool, u32)> {
        let Some(t) = self.tracker.as_ref() else {
            return Vec::new();
        };
        self.clients
            .iter()
            .enumerate()
            .filter(|(i, _)| t.tracked[*i])
            .map(|(i, c)| (i, c.st == St::Open, c.uniq))
            .collect()
    }

    /// Sends a Close frame on every open connection and drops all sockets.
    pub fn close_all(&mut self) {
        let mut frame = Vec::with_capacity(8);
        for c in self.clients.iter_mut() {
            if let Some(mut s) = c.stream.take() {
                if c.st == St::Open {
                    frame.clear();
                    ws::encode_client_frame(&mut frame, OP_CLOSE, &1000u16.to_be_bytes(), self.rng.mask());
                    let _ = s.write(&frame);
                }
                let _ = self.poll.registry().deregister(&mut s);
            }
            c.st = St::Closed;
            c.pending = Vec::new();
            c.out = Vec::new();
        }
        self.stats.open = 0;
        self.stats.in_flight = 0;
        self.stats.leaving = 0;
        for id in 0..self.clients.len() {
            self.retire(id, Outcome::Error("cut off at the end of the run".into()));
        }
    }
}

type ProcResult = Result<usize, (&'static str, String)>;

/// The engine state `process` updates besides the connection itself.
struct Ctx<'a> {
    stats: &'a mut Stats,
    tracker: Option<&'a mut Tracker>,
    soak: Option<&'a mut SoakTrack>,
    taskapp: Option<&'a mut TaskTrack>,
    rng: &'a mut XorShift,
    departures: &'a mut BinaryHeap<Reverse<(Instant, usize, u32)>>,
}

/// Handles bytes received on one connection; returns how many were used.
fn process(id: usize, c: &mut Client, buf: &[u8], now: Instant, ctx: &mut Ctx<'_>) -> ProcResult {
    let mut off = 0;
    if c.st == St::Handshaking {
        match read_upgrade(id, c, buf, now, ctx)? {
            None => return Ok(0),
            Some(consumed) => off = consumed,
        }
    }
    let now_ns = ctx.tracker.as_ref().map_or(0, |t| now.duration_since(t.shared.base).as_nanos() as u64);
    loop {
        let (frame, used) = match ws::parse_frame(&buf[off..], MAX_MESSAGE) {
            FrameParse::Incomplete => return Ok(off),
            FrameParse::Error(e) => return Err(("protocol_error", e.to_string())),
            FrameParse::Frame(f, n) => (f, n),
        };
        off += used;
        on_frame(id, c, &frame, now, now_ns, ctx)?;
    }
}

/// The server's answer to the upgrade request: Ok(None) while incomplete,
/// Ok(Some(bytes it took)) once upgraded, Err(cause) when refused.
fn read_upgrade(
    id: usize,
    c: &mut Client,
    buf: &[u8],
    now: Instant,
    ctx: &mut Ctx<'_>,
) -> Result<Option<usize>, (&'static str, String)> {
    match ws::parse_upgrade_response(buf, &c.accept) {
        Upgrade::Incomplete => Ok(None),
        Upgrade::Upgraded { consumed } => {
            c.st = St::Open;
            let stats = &mut *ctx.stats;
            stats.in_flight -= 1;
            stats.open += 1;
            stats.opened_total += 1;
            stats.first_open.get_or_insert(now);
            stats.last_open = Some(now);
            stats.handshake.record_between(c.started, now);
            if let Some(life) = c.life.as_deref_mut() {
                on_soak_open(id, c.epoch, life, &mut c.out, now, ctx);
            }
            if let Some(t) = ctx.taskapp.as_deref() {
                let msg = format!(r#"{{"type":"subscribe","channel":"{}"}}"#, t.project_channel(id));
                ws::encode_client_frame(&mut c.out, OP_TEXT, msg.as_bytes(), ctx.rng.mask());
            }
            Ok(Some(consumed))
        }
        Upgrade::Rejected { status, body } => {
            let cause = match status {
                401 => "http_401",
                403 => "http_403",
                429 => "http_429",
                503 => "http_503",
                _ => "http_other",
            };
            Err((cause, format!("HTTP {status}: {body}")))
        }
        Upgrade::Invalid(msg) => Err(("bad_handshake", msg)),
    }
}

/// One frame from the server; Err ends the connection with that cause.
fn on_frame(
    id: usize,
    c: &mut Client,
    frame: &ws::Frame<'_>,
    now: Instant,
    now_ns: u64,
    ctx: &mut Ctx<'_>,
) -> Result<(), (&'static str, String)> {
    match frame.opcode {
        OP_TEXT | OP_BINARY => {
            if c.frag.is_some() {
                return Err(("protocol_error", "new message inside a fragmented one".into()));
            }
            if frame.fin {
                on_message(id, c, frame.payload, now, now_ns, ctx);
            } else {
                c.frag = Some(frame.payload.to_vec());
            }
        }
        OP_CONT => {
            let Some(f) = c.frag.as_mut() else {
                return Err(("protocol_error", "continuation without a start".into()));
            };
            if (f.len() + frame.payload.len()) as u64 > MAX_MESSAGE {
                return Err(("protocol_error", "fragmented message too large".into()));
            }
            f.extend_from_slice(frame.payload);
            if frame.fin {
                let msg = c.frag.take().unwrap_or_default();
                on_message(id, c, &msg, now, now_ns, ctx);
            }
        }
        OP_PING => {
            ctx.stats.pings += 1;
            if let Some(life) = c.life.as_deref_mut().filter(|l| l.role == Role::Silent) {
                life.pings += 1; // and no answer: that is the point
            } else if c.st == St::Open {
                ctx.stats.pongs += 1;
                ws::encode_client_frame(&mut c.out, OP_PONG, frame.payload, ctx.rng.mask());
            }
        }
        OP_PONG => {}
        OP_CLOSE => return Err(on_close(c, frame.payload, ctx)),
        _ => return Err(("protocol_error", "unexpected opcode".into())),
    }
    Ok(())
}

/// A close frame from the server: the answer to ours (`left`), or the
/// server closing (echoed, `server_close`). Either way the connection ends.
fn on_close(c: &mut Client, payload: &[u8], ctx: &mut Ctx<'_>) -> (&'static str, String) {
    let code = if payload.len() >= 2 { u16::from_be_bytes([payload[0], payload[1]]) } else { 1005 };
    let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or(&[])).into_owned();
    if c.st == St::Leaving {
        // The answer to our close frame: the handshake is done.
        if let Some(life) = c.life.as_deref_mut()
            && code != 1000
        {
            life.outcome = Some(Outcome::Closed(code));
        }
        return ("left", format!("close answered with {code} {reason}"));
    }
    if let Some(life) = c.life.as_deref_mut() {
        life.outcome = Some(Outcome::Closed(code));
    }
    let echo: &[u8] = if payload.len() >= 2 { &payload[..2] } else { &[] };
    ws::encode_client_frame(&mut c.out, OP_CLOSE, echo, ctx.rng.mask());
    ("server_close", format!("close frame code {code} {reason}"))
}

/// A soak client just read its 101: start its behaviour.
fn on_soak_open(id: usize, epoch: u32, life: &mut Life, out: &mut Vec<u8>, now: Instant, ctx: &mut Ctx<'_>) {
    life.opened = Some(now);
    if let Some(d) = life.lifetime {
        ctx.departures.push(Reverse((now + d, id, epoch)));
    }
    let Some(soak) = ctx.soak.as_deref() else {
        return;
    };
    if life.role == Role::Slow {
        life.stall = Some(Stall {
            since: now,
            written: 0,
            accepted_at_change: soak.shared.accepted.load(Ordering::Relaxed),
            last_heartbeat: now,
        });
    }
    if let Some(frame) = life.role.bad_frame(soak.max_message_bytes, life.big, ctx.rng.mask()) {
        out.extend_from_slice(&frame);
    }
}

/// One whole data message.
fn on_message(id: usize, c: &mut Client, msg: &[u8], now: Instant, now_ns: u64, ctx: &mut Ctx<'_>) {
    if let Some(life) = c.life.as_deref_mut() {
        let Some(soak) = ctx.soak.as_deref_mut() else {
            return;
        };
        let Some(seq) = ws::find_seq(msg) else {
            soak.unexpected += 1;
            return;
        };
        life.seqs.on_seq(seq);
        if life.role == Role::Healthy {
            soak.delivered += 1;
            if let Some(sent) = soak.shared.send_ns.get(seq as usize).map(|a| a.load(Ordering::Acquire))
                && sent != 0
            {
                let now_ns = now.saturating_duration_since(soak.shared.base).as_nanos() as u64 + 1;
                soak.latency.record_us(now_ns.saturating_sub(sent) / 1000);
            }
        }
    } else if let Some(t) = ctx.taskapp.as_deref_mut() {
        t.on_message(id, msg, now);
    } else if let Some(t) = ctx.tracker.as_deref_mut() {
        t.on_message(id, &mut c.uniq, msg, now, now_ns);
    }
}

/// Whether an error (from connect or elsewhere) means the fd limit was hit.
pub fn is_fd_limit(e: &io::Error) -> bool {
    classify(e) == "fd_limit"
}
