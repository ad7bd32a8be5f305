//! A seed-driven checker that hunts delivery races (issue 22; TigerBeetle's
//! VOPR and FoundationDB's simulator are the models): it runs the real
//! `taskcast` binary — one process, or three instances on one real
//! redis-server — drives random interleavings of client and publisher
//! actions and Redis faults from a seeded PRNG, logs every frame every
//! connection receives, and checks the rules below on all of it.
//!
//! # What is checked (the guarantees, in both modes)
//!
//! For every connection and every frame it receives:
//! 1. **Only while subscribed, only if granted.** A channel message arrives
//!    only between the `subscribed` answer and the `unsubscribed` answer
//!    (or the close) — messages sent between the client's `unsubscribe` and
//!    its answer are allowed, the answer is the boundary — and only for a
//!    channel the connection's token grants (after an `auth_ok`, the grants
//!    of that token) or its own `user:` channel, which it is in from the
//!    start. A `subscribed` answer for a channel the token in force did not
//!    grant is a violation, and so is a `forbidden` one for a channel it did.
//! 2. **In order, once.** After `subscribed` at R, the channel's messages
//!    carry R+1, R+2, … (with `recovered:true` from `since` S: S+1, S+2, …,
//!    the replay then live) — no gap, no duplicate, nothing older. An unasked
//!    `subscribed` with `recovered:false` at R restarts the count at R+1
//!    (the client refetches; what came before it is not judged). The `user:`
//!    channel joined at connect has no answer: its first message starts the
//!    count, and must not come after a message published (answered 200)
//!    after the connection was open.
//! 3. **One stream everywhere.** Every payload carries a unique id: every
//!    copy of it, on every instance, has the same offset in the same
//!    channel, and the offset the publish was answered with.
//! 4. **Answers in request order.** `subscribe` (→ `subscribed` or an error
//!    naming the channel), `unsubscribe` (→ `unsubscribed`), `auth`
//!    (→ `auth_ok`) and `ping` (→ `pong`) are answered in the order they were
//!    sent; `MAX_SUBSCRIPTIONS` counts every subscription the connection
//!    holds when the request is read (so joining past it is a violation).
//! 5. **Nothing after the close frame** (RFC 6455 §5.5.1), and only the close
//!    codes this run can cause (1000, 1013).
//! 6. **Every answered publish reaches every subscription that stayed.** At
//!    the end (faults stopped, every instance ready) one more message is
//!    published to every channel; every open subscription must reach it,
//!    which with rule 2 means it got everything after its position, and
//!    every request must have been answered.
//! 7. **Nothing leaks, nothing panics.** With every client gone, each
//!    process's `/metrics` returns to its start: `taskcast_clients`,
//!    `taskcast_subscriptions` and `taskcast_channels` 0 (one process: once
//!    history expired) and `process_open_fds` back to its baseline; every
//!    process is alive and logged no panic.
//!
//! At most once, and not checked: the broadcast to everyone (no channel,
//! no offset). In cluster mode a publish answered 503 may or may not have
//! been stored (rule 3 still holds for it if it was).
//!
//! # Running it
//! `cargo test --test invariants` runs a fixed seed set for each mode.
//! A failure panics with its seed and the last events; replay it with
//! `INVARIANT_SEED=n` (the same actions; thread timing differs, so a race
//! may need a few runs). Long mode: `INVARIANT_SEEDS=a..b` (a range, end
//! excluded) and `INVARIANT_STEPS=n` (actions per seed).

mod common;

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::raw_ws::{self, Frame, Frames};
use common::redis_server::RedisServer;
use common::*;
use serde_json::{Value, json};

// ---- settings ------------------------------------------------------------------

/// MAX_SUBSCRIPTIONS for every process (the user channel counts).
const MAX_SUBS: usize = 5;
/// HISTORY_TTL_SECS in one process: short, so the channels' history is
/// gone soon after the end and `taskcast_channels` must reach 0.
const SINGLE_TTL_SECS: u64 = 3;
const USERS: [&str; 5] = ["u0", "u1", "u2", "u3", "u4"];
/// Grant sets a token may carry (`channels` claim).
const GRANTS: [&[&str]; 5] =
    [&["project:*"], &["project:0", "project:1"], &["team:*", "project:2"], &[], &["project:*", "team:*"]];
const MAX_CONNS: usize = 14;

fn channels() -> Vec<String> {
    let mut c: Vec<String> = ["project:0", "project:1", "project:2", "team:a", "team:b"].map(String::from).to_vec();
    // A long name: its answers are large, so a client that stops reading
    // overflows MAX_OUTPUT_BYTES sooner.
    c.push(format!("project:{}", "l".repeat(100)));
    c
}

fn granted(channel: &str, grants: &[String]) -> bool {
    grants.iter().any(|g| g == channel || g.strip_suffix('*').is_some_and(|ns| channel.starts_with(ns)))
}

// ---- seeded randomness --------------------------------------------------------

/// splitmix64: tiny, and every seed gives its own sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

// ---- the processes -------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    OneProcess,
    Cluster,
}

struct Instances {
    procs: Vec<Binary>,
    redis: Option<RedisServer>,
    /// process_open_fds of each, once up.
    fds: Vec<u64>,
}

fn start_instances(mode: Mode, seed: u64) -> Instances {
    let redis = (mode == Mode::Cluster).then(RedisServer::start);
    let n = if mode == Mode::Cluster { 3 } else { 1 };
    let ttl = if mode == Mode::Cluster { "60".to_string() } else { SINGLE_TTL_SECS.to_string() };
    let procs: Vec<Binary> = (0..n)
        .map(|_| {
            let mut cmd = taskcast_cmd();
            cmd.envs([
                ("JWT_SECRET", SECRET),
                ("SEND_QUEUE_LIMIT", "64"),
                ("MAX_OUTPUT_BYTES", "131072"),
                ("CLIENT_MESSAGES_PER_SEC", "100000"),
                ("CLIENT_MESSAGE_BURST", "100000"),
                ("MAX_SUBSCRIPTIONS", &MAX_SUBS.to_string()),
                ("HISTORY_SIZE", "50"),
                ("HISTORY_TTL_SECS", &ttl),
                ("BROADCAST_RATE_PER_SEC", "0"),
            ]);
            if let Some(r) = &redis {
                cmd.env("REDIS_URL", r.url()).env("REDIS_PREFIX", format!("inv{seed}"));
            }
            start_binary(&mut cmd)
        })
        .collect();
    for p in &procs {
        wait_ready(p.addr);
    }
    let fds = procs.iter().map(|p| steady_fds(p.addr)).collect();
    Instances { procs, redis, fds }
}

/// Until a publish is accepted (in cluster mode the link reports up after start).
fn wait_ready(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = broadcast(addr, &token("probe"), r#"{"type":"probe","data":null,"channel":"probe:x"}"#);
        if r.status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "never ready: {} {}", r.status, r.body);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// process_open_fds once it reads the same three times 20 ms apart (the
/// probes' HTTP connections are closed by then).
fn steady_fds(addr: SocketAddr) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = VecDeque::new();
    loop {
        seen.push_back(gauge(addr, "process_open_fds"));
        if seen.len() > 3 {
            seen.pop_front();
        }
        if seen.len() == 3 && seen.iter().all(|&v| v == seen[0]) || Instant::now() > deadline {
            return *seen.back().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn gauge(addr: SocketAddr, name: &str) -> u64 {
    gauges(addr, &[name])[0]
}

/// Several gauges from one scrape (a scrape per gauge would count the
/// previous scrape's connection, still closing, in `process_open_fds`).
fn gauges(addr: SocketAddr, names: &[&str]) -> Vec<u64> {
    let body = get(addr, "/metrics").body;
    names
        .iter()
        .map(|name| {
            let line =
                body.lines().find(|l| l.split(' ').next() == Some(*name)).unwrap_or_else(|| panic!("{name} in {body}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        })
        .collect()
}

// ---- connections: a writer for the driver, a reader thread logging all ---------

/// What a reader thread saw.
enum Rx {
    Text(Value),
    Close(u16),
    End,
}

type Inbox = Arc<Mutex<Vec<(usize, Rx)>>>;

struct Conn {
    id: usize,
    user: &'static str,
    instance: usize,
    writer: Arc<Mutex<TcpStream>>,
    /// The reader stops reading while set (a client that stops reading).
    paused: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    model: Model,
}

fn open(
    id: usize,
    addr: SocketAddr,
    token: &str,
    small_buffer: bool,
    inbox: Inbox,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<TcpStream>>, Arc<AtomicBool>, JoinHandle<()>) {
    let sock = raw_ws::connect(addr, token, small_buffer.then_some(4096));
    let writer = Arc::new(Mutex::new(sock.try_clone().unwrap()));
    let paused = Arc::new(AtomicBool::new(false));
    let (w, p) = (writer.clone(), paused.clone());
    let reader = std::thread::spawn(move || read_loop(id, sock, w, p, inbox, stop));
    (writer, paused, reader)
}

fn read_loop(
    id: usize,
    mut sock: TcpStream,
    writer: Arc<Mutex<TcpStream>>,
    paused: Arc<AtomicBool>,
    inbox: Inbox,
    stop: Arc<AtomicBool>,
) {
    sock.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut frames = Frames::default();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut answered_close = false;
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if paused.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        match sock.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => frames.push(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        }
        let mut got = Vec::new();
        while let Some(f) = frames.next() {
            match f {
                Frame::Text(t) => got.push(Rx::Text(serde_json::from_str(&t).unwrap_or(Value::String(t)))),
                Frame::Close(code) => {
                    got.push(Rx::Close(code));
                    if !answered_close {
                        answered_close = true;
                        let _ = writer.lock().unwrap().write_all(&raw_ws::close(1000));
                    }
                }
                Frame::Other(..) => {}
            }
        }
        if !got.is_empty() {
            inbox.lock().unwrap().extend(got.into_iter().map(|r| (id, r)));
        }
    }
    inbox.lock().unwrap().push((id, Rx::End));
}

// ---- the model of one connection ---------------------------------------------

#[derive(Debug, Clone)]
enum Req {
    Sub { channel: String, since: Option<(String, u64)>, granted: bool },
    Unsub { channel: String },
    Auth { grants: Vec<String> },
    Ping,
}

#[derive(Debug, Clone, Default)]
struct Window {
    /// The next offset due; `None`: not known yet (the user channel before
    /// its first message).
    next: Option<u64>,
    epoch: Option<String>,
    /// For the user channel joined at connect: the offset of the first
    /// publish answered 200 after the connection was open.
    must_start_by: Option<u64>,
}

#[derive(Default)]
struct Model {
    /// The grants the server applies to the next request (latest auth sent).
    grants: Vec<String>,
    /// The grants in force per the answers received so far.
    acked_grants: Vec<String>,
    pending: VecDeque<Req>,
    windows: HashMap<String, Window>,
    /// The server's close frame (or the end of the stream) arrived.
    closed: bool,
    /// We sent a close frame or dropped the socket.
    leaving: bool,
    unavailable: usize,
    small_buffer: bool,
    paused: bool,
}

impl Model {
    fn joining(&self, channel: &str) -> bool {
        self.pending.iter().any(|r| matches!(r, Req::Sub { channel: c, .. } if c == channel))
    }
    fn live(&self) -> bool {
        !self.closed && !self.leaving
    }
}

// ---- the run ------------------------------------------------------------------

#[derive(Default)]
struct Stats {
    /// 1013 closes (slow readers) and unasked `recovered:false` notices seen.
    slow_closes: u64,
    resyncs: u64,
    steps: u64,
    checked: u64,
    publishes: u64,
    faults: u64,
    conns: u64,
}

struct Run {
    seed: u64,
    mode: Mode,
    rng: Rng,
    inst: Instances,
    conns: Vec<Conn>,
    inbox: Inbox,
    stop: Arc<AtomicBool>,
    publishers: Vec<Option<Http>>,
    next_id: u64,
    /// (payload id, channel) → offset: what a publish was answered with,
    /// and what deliveries carried.
    answered: HashMap<(u64, String), u64>,
    delivered: HashMap<(u64, String), u64>,
    /// Last position seen per (user, channel), for reconnects with `since`.
    positions: HashMap<(&'static str, String), (String, u64)>,
    log: VecDeque<String>,
    stats: Stats,
}

impl Run {
    fn new(seed: u64, mode: Mode) -> Run {
        let inst = start_instances(mode, seed);
        let n = inst.procs.len();
        Run {
            seed,
            mode,
            rng: Rng(seed ^ 0x7461_736b_6361_7374),
            inst,
            conns: Vec::new(),
            inbox: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
            publishers: (0..n).map(|_| None).collect(),
            next_id: 0,
            answered: HashMap::new(),
            delivered: HashMap::new(),
            positions: HashMap::new(),
            log: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    fn note(&mut self, s: String) {
        if self.log.len() == 60 {
            self.log.pop_front();
        }
        self.log.push_back(s);
    }

    fn fail(&self, what: String) -> ! {
        let test = if self.mode == Mode::Cluster { "three_instances" } else { "one_process" };
        let events: Vec<&str> = self.log.iter().map(String::as_str).collect();
        panic!(
            "invariant violated ({:?}, seed {}, step {}): {what}\nreplay: INVARIANT_SEED={} cargo test --test invariants {test}\nlast events:\n  {}",
            self.mode,
            self.seed,
            self.stats.steps,
            self.seed,
            events.join("\n  ")
        );
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.inst.procs[i].addr
    }

    fn tag(&self, c: usize) -> String {
        let k = &self.conns[c];
        format!("c{}({}@{})", k.id, k.user, k.instance)
    }

    // ---- sending ----------------------------------------------------------

    fn write(&mut self, c: usize, bytes: &[u8]) {
        let _ = self.conns[c].writer.lock().unwrap().write_all(bytes);
    }

    fn request(&mut self, c: usize, req: Req) -> Vec<u8> {
        let text = match &req {
            Req::Sub { channel, since, .. } => {
                let mut m = json!({"type": "subscribe", "channel": channel});
                if let Some((e, o)) = since {
                    m["since"] = json!({"epoch": e, "offset": o});
                }
                m
            }
            Req::Unsub { channel } => json!({"type": "unsubscribe", "channel": channel}),
            Req::Auth { grants } => {
                let t = sign(&json!({"sub": self.conns[c].user, "exp": now() + 3600, "channels": grants}));
                json!({"type": "auth", "token": t})
            }
            Req::Ping => json!({"type": "ping"}),
        };
        let tag = self.tag(c);
        let shown = match &req {
            Req::Auth { grants } => format!("auth {grants:?}"),
            _ => text.to_string(),
        };
        self.note(format!("{tag} -> {shown}"));
        let m = &mut self.conns[c].model;
        if let Req::Auth { grants } = &req {
            m.grants = grants.clone();
        }
        m.pending.push_back(req);
        raw_ws::text(&text.to_string())
    }

    fn subscribe_req(&mut self, c: usize, channel: &str, long: bool) -> Req {
        let user = self.conns[c].user;
        let since = match (self.positions.get(&(user, channel.to_string())), self.rng.below(6)) {
            (Some((e, o)), 0..=2) => Some((e.clone(), if long { o.saturating_sub(40) } else { *o })),
            (Some((e, o)), 3) => Some((e.clone(), o.saturating_sub(1 + self.rng.below(60) as u64))),
            (_, 4) => Some(("bogus".to_string(), self.rng.below(5) as u64)),
            _ => None,
        };
        let m = &self.conns[c].model;
        let granted = granted(channel, &m.grants) || channel == format!("user:{user}");
        Req::Sub { channel: channel.to_string(), since, granted }
    }

    // ---- actions ---------------------------------------------------------

    fn live_conns(&self) -> Vec<usize> {
        (0..self.conns.len()).filter(|&c| self.conns[c].model.live()).collect()
    }

    fn connect(&mut self, user: &'static str, grants: Vec<String>, instance: usize) -> usize {
        let small = self.rng.chance(25);
        let id = self.conns.len();
        let t = sign(&json!({"sub": user, "exp": now() + 3600, "channels": grants}));
        let (writer, paused, reader) = open(id, self.addr(instance), &t, small, self.inbox.clone(), self.stop.clone());
        let mut model = Model { grants: grants.clone(), acked_grants: grants, small_buffer: small, ..Model::default() };
        model.windows.insert(format!("user:{user}"), Window::default());
        self.conns.push(Conn { id, user, instance, writer, paused, reader: Some(reader), model });
        self.stats.conns += 1;
        let tag = self.tag(id);
        self.note(format!("{tag} connected{}", if small { " (small receive buffer)" } else { "" }));
        id
    }

    fn random_grants(&mut self) -> Vec<String> {
        self.rng.pick(&GRANTS).iter().map(|s| s.to_string()).collect()
    }

    /// A channel for `c` to subscribe to: mostly one it may join and is not
    /// in (nor joining); sometimes one it may not join.
    fn channel_for(&mut self, c: usize) -> Option<String> {
        let m = &self.conns[c].model;
        let all = channels();
        let free: Vec<&String> = all.iter().filter(|ch| !m.windows.contains_key(*ch) && !m.joining(ch)).collect();
        let (ok, refused): (Vec<&String>, Vec<&String>) = free.into_iter().partition(|ch| granted(ch, &m.grants));
        let pool = if refused.is_empty() || (!ok.is_empty() && self.rng.chance(85)) { ok } else { refused };
        (!pool.is_empty()).then(|| pool[self.rng.below(pool.len())].clone())
    }

    fn step(&mut self) {
        self.stats.steps += 1;
        let live = self.live_conns();
        let cluster = self.mode == Mode::Cluster;
        let roll = self.rng.below(if cluster { 110 } else { 100 });
        let any = |rng: &mut Rng| (!live.is_empty()).then(|| live[rng.below(live.len())]);
        match roll {
            0..=7 => {
                if live.len() < MAX_CONNS {
                    let (user, grants, inst) =
                        (*self.rng.pick(&USERS), self.random_grants(), self.rng.below(self.inst.procs.len()));
                    self.connect(user, grants, inst);
                }
            }
            8..=27 => {
                if let Some(c) = any(&mut self.rng)
                    && let Some(ch) = self.channel_for(c)
                {
                    let req = self.subscribe_req(c, &ch, false);
                    let bytes = self.request(c, req);
                    self.write(c, &bytes);
                }
            }
            28..=33 => self.race_subscribes(),
            34..=39 => {
                // Subscribe and unsubscribe in one write: the unsubscribe is
                // read while the subscribe may still be joining.
                if let Some(c) = any(&mut self.rng)
                    && let Some(ch) = self.channel_for(c)
                {
                    let req = self.subscribe_req(c, &ch, true);
                    let mut bytes = self.request(c, req);
                    bytes.extend(self.request(c, Req::Unsub { channel: ch }));
                    self.write(c, &bytes);
                }
            }
            40..=45 => {
                if let Some(c) = any(&mut self.rng) {
                    let m = &self.conns[c].model;
                    let mut cands: Vec<String> = m.windows.keys().cloned().collect();
                    cands.extend(m.pending.iter().filter_map(|r| match r {
                        Req::Sub { channel, .. } => Some(channel.clone()),
                        _ => None,
                    }));
                    if !cands.is_empty() {
                        let ch = cands[self.rng.below(cands.len())].clone();
                        let bytes = self.request(c, Req::Unsub { channel: ch });
                        self.write(c, &bytes);
                    }
                }
            }
            46..=50 => {
                if let Some(c) = any(&mut self.rng) {
                    let grants = self.random_grants();
                    let bytes = self.request(c, Req::Auth { grants });
                    self.write(c, &bytes);
                }
            }
            51..=72 => {
                let n = if self.rng.chance(15) { 5 + self.rng.below(40) } else { 1 };
                let inst = self.rng.below(self.inst.procs.len());
                let target = self.random_target();
                for _ in 0..n {
                    self.publish(inst, target.clone());
                }
            }
            73..=76 => self.stall(),
            77..=80 => {
                let paused: Vec<usize> = live.iter().copied().filter(|&c| self.conns[c].model.paused).collect();
                if !paused.is_empty() {
                    let c = paused[self.rng.below(paused.len())];
                    self.conns[c].model.paused = false;
                    self.conns[c].paused.store(false, Ordering::Relaxed);
                    let tag = self.tag(c);
                    self.note(format!("{tag} reads again"));
                }
            }
            81..=84 => {
                if let Some(c) = any(&mut self.rng) {
                    let graceful = self.rng.chance(50);
                    self.disconnect(c, graceful);
                }
            }
            85..=92 => self.reconnect(),
            93..=95 => {
                if let Some(c) = any(&mut self.rng) {
                    let bytes = self.request(c, Req::Ping);
                    self.write(c, &bytes);
                }
            }
            96..=99 => std::thread::sleep(Duration::from_millis(2 + self.rng.below(20) as u64)),
            _ => self.fault(),
        }
        self.pump();
    }

    /// Two or three connections on one instance subscribe to one channel at
    /// once, some with a long `since` (overlapping history reads).
    fn race_subscribes(&mut self) {
        let inst = self.rng.below(self.inst.procs.len());
        let ch = self.rng.pick(&channels()).clone();
        let cands: Vec<usize> = self
            .live_conns()
            .into_iter()
            .filter(|&c| {
                let m = &self.conns[c].model;
                self.conns[c].instance == inst
                    && granted(&ch, &m.grants)
                    && !m.windows.contains_key(&ch)
                    && !m.joining(&ch)
            })
            .collect();
        let mut out = Vec::new();
        for &c in cands.iter().take(3) {
            let long = self.rng.chance(60);
            let req = self.subscribe_req(c, &ch, long);
            let bytes = self.request(c, req);
            out.push((c, bytes));
        }
        for (c, bytes) in out {
            self.write(c, &bytes);
        }
    }

    /// A client stops reading, keeps asking (subscribes answered into a
    /// full queue) and is published to: its output overflows.
    fn stall(&mut self) {
        let live = self.live_conns();
        let small: Vec<usize> = live.iter().copied().filter(|&c| self.conns[c].model.small_buffer).collect();
        let pool = if small.is_empty() { &live } else { &small };
        if pool.is_empty() {
            return;
        }
        let c = pool[self.rng.below(pool.len())];
        self.conns[c].model.paused = true;
        self.conns[c].paused.store(true, Ordering::Relaxed);
        let tag = self.tag(c);
        self.note(format!("{tag} stops reading"));
        let long = channels().pop().unwrap();
        let target_ch = if granted(&long, &self.conns[c].model.grants) { Some(long) } else { self.channel_for(c) };
        let mut bytes = Vec::new();
        if let Some(ch) = target_ch
            && !self.conns[c].model.windows.contains_key(&ch)
            && !self.conns[c].model.joining(&ch)
        {
            for _ in 0..(10 + self.rng.below(80)) {
                let req = self.subscribe_req(c, &ch, true);
                bytes.extend(self.request(c, req));
                bytes.extend(self.request(c, Req::Unsub { channel: ch.clone() }));
            }
            if self.rng.chance(50) {
                let req = self.subscribe_req(c, &ch, true);
                bytes.extend(self.request(c, req));
            }
        }
        // The kernel takes 2-3 MB for a client that does not read (the
        // send buffer grows to tcp_wmem's max) before the server's own
        // queue fills: 1.5-4 MB of 60 KB messages to its user channel, then
        // the subscribes, so their answers may be what overflows.
        let user = self.conns[c].user;
        let inst = self.rng.below(self.inst.procs.len());
        let n = 25 + self.rng.below(42);
        for _ in 0..n / 8 {
            self.publish_many(inst, json!({"users": [user]}), 8, 60_000);
        }
        self.write(c, &bytes);
        for _ in 0..self.rng.below(10) {
            self.publish(inst, json!({"users": [user]}));
        }
    }

    fn disconnect(&mut self, c: usize, graceful: bool) {
        let tag = self.tag(c);
        self.note(format!("{tag} {}", if graceful { "sends close" } else { "drops the connection" }));
        self.conns[c].model.leaving = true;
        self.conns[c].paused.store(false, Ordering::Relaxed);
        if graceful {
            self.write(c, &raw_ws::close(1000));
        } else {
            let _ = self.conns[c].writer.lock().unwrap().shutdown(Shutdown::Both);
        }
    }

    /// A user's tab comes back (to any instance) and resumes each channel
    /// from the last position seen, like the browser client.
    fn reconnect(&mut self) {
        if self.live_conns().len() >= MAX_CONNS {
            return;
        }
        let gone: Vec<usize> = (0..self.conns.len()).filter(|&c| !self.conns[c].model.live()).collect();
        if gone.is_empty() {
            return;
        }
        let old = gone[self.rng.below(gone.len())];
        let (user, grants) = (self.conns[old].user, self.conns[old].model.grants.clone());
        let inst = self.rng.below(self.inst.procs.len());
        let c = self.connect(user, grants, inst);
        let mut bytes = Vec::new();
        let mut chans: Vec<String> = self
            .positions
            .keys()
            .filter(|(u, ch)| *u == user && !ch.starts_with("user:"))
            .map(|(_, ch)| ch.clone())
            .collect();
        chans.sort();
        for ch in chans.into_iter().take(MAX_SUBS - 1) {
            let since = self.positions.get(&(user, ch.clone())).cloned();
            let granted = granted(&ch, &self.conns[c].model.grants);
            bytes.extend(self.request(c, Req::Sub { channel: ch, since, granted }));
        }
        self.write(c, &bytes);
    }

    fn random_target(&mut self) -> Value {
        let all = channels();
        match self.rng.below(10) {
            0..=5 => json!({"channel": self.rng.pick(&all)}),
            6..=7 => json!({"users": [self.rng.pick(&USERS)]}),
            _ => {
                let a = self.rng.pick(&all).clone();
                let b = self.rng.pick(&all).clone();
                if a == b { json!({"channel": a}) } else { json!({"channels": [a, b]}) }
            }
        }
    }

    fn publish(&mut self, inst: usize, target: Value) -> Option<HashMap<String, u64>> {
        self.publish_many(inst, target, 1, 0).pop().unwrap()
    }

    /// `n` publishes to `target`, pipelined on `inst`'s keep-alive
    /// connection, each with `pad` bytes of padding; their answers.
    fn publish_many(&mut self, inst: usize, target: Value, n: usize, pad: usize) -> Vec<Option<HashMap<String, u64>>> {
        let addr = self.addr(inst);
        let mut ids = Vec::new();
        let mut raw = Vec::new();
        for _ in 0..n {
            self.next_id += 1;
            let id = self.next_id;
            let mut body = json!({"type": "t", "data": {"id": id}});
            if pad > 0 {
                body["data"]["pad"] = json!("p".repeat(pad));
            }
            for (k, v) in target.as_object().unwrap() {
                body[k] = v.clone();
            }
            raw.extend_from_slice(broadcast_request(&token("publisher"), &body.to_string()).as_bytes());
            ids.push(id);
        }
        let h = self.publishers[inst].get_or_insert_with(|| Http::connect(addr));
        h.send(&raw);
        let answers: Vec<HttpResponse> = ids.iter().map(|_| h.response()).collect();
        if answers.iter().any(|r| r.header("Connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))) {
            self.publishers[inst] = None;
        }
        ids.into_iter().zip(answers).map(|(id, r)| self.on_published(inst, id, &target, r)).collect()
    }

    fn on_published(&mut self, inst: usize, id: u64, target: &Value, r: HttpResponse) -> Option<HashMap<String, u64>> {
        self.note(format!("publish #{id} {target} via {inst} -> {} {}", r.status, r.body));
        match r.status {
            200 => {}
            503 if self.mode == Mode::Cluster => return None,
            s => self.fail(format!("publish #{id} answered {s}: {}", r.body)),
        }
        self.stats.publishes += 1;
        let mut offsets = HashMap::new();
        for (ch, v) in r.json()["channels"].as_object().unwrap() {
            let o = v["offset"].as_u64().unwrap();
            offsets.insert(ch.clone(), o);
            if let Some(&seen) = self.delivered.get(&(id, ch.clone()))
                && seen != o
            {
                self.fail(format!("#{id} was delivered in {ch} at offset {seen} but answered with {o}"));
            }
            self.answered.insert((id, ch.clone()), o);
            // The user channel's subscribers joined at connect: this one was
            // published after they were open, so it must reach them.
            for k in &mut self.conns {
                if k.model.live()
                    && ch == &format!("user:{}", k.user)
                    && let Some(w) = k.model.windows.get_mut(ch)
                    && w.next.is_none()
                    && w.must_start_by.is_none()
                {
                    w.must_start_by = Some(o);
                }
            }
        }
        Some(offsets)
    }

    fn fault(&mut self) {
        let Some(redis) = &mut self.inst.redis else { return };
        self.stats.faults += 1;
        let what = match self.rng.below(10) {
            0..=3 => {
                let list: String = redis.cmd(&["CLIENT", "LIST", "TYPE", "pubsub"]);
                kill_one(redis, &list, self.rng.next());
                "CLIENT KILL of a pub/sub connection"
            }
            4..=6 => {
                let list: String = redis.cmd(&["CLIENT", "LIST", "TYPE", "normal"]);
                let list: String =
                    list.lines().filter(|l| !l.contains("cmd=client|list")).collect::<Vec<_>>().join("\n");
                kill_one(redis, &list, self.rng.next());
                "CLIENT KILL of a command connection"
            }
            7..=8 => {
                let _: String = redis.cmd(&["FLUSHALL"]);
                "FLUSHALL"
            }
            _ => {
                redis.restart();
                "Redis restarted (empty)"
            }
        };
        self.note(format!("fault: {what}"));
    }

    // ---- checking -------------------------------------------------------

    /// Feeds every frame received so far to the models.
    fn pump(&mut self) {
        let got = std::mem::take(&mut *self.inbox.lock().unwrap());
        for (c, rx) in got {
            match rx {
                Rx::Text(m) => self.on_text(c, m),
                Rx::Close(code) => {
                    let tag = self.tag(c);
                    self.note(format!("{tag} <- close {code}"));
                    let m = &mut self.conns[c].model;
                    if m.closed {
                        self.fail(format!("{tag}: a second close frame ({code})"));
                    }
                    m.closed = true;
                    m.windows.clear();
                    m.pending.clear();
                    self.stats.slow_closes += u64::from(code == 1013);
                    if !matches!(code, 1000 | 1013) {
                        self.fail(format!("{tag}: closed with {code}"));
                    }
                }
                Rx::End => {
                    let m = &mut self.conns[c].model;
                    m.closed = true;
                    m.windows.clear();
                    m.pending.clear();
                }
            }
        }
    }

    fn on_text(&mut self, c: usize, m: Value) {
        let tag = self.tag(c);
        let mut brief = m.clone();
        if let Some(pad) = brief.get_mut("payload").and_then(|p| p.get_mut("pad")) {
            *pad = json!(format!("<{} B>", pad.as_str().map_or(0, str::len)));
        }
        let shown: String = brief.to_string().chars().take(200).collect();
        self.note(format!("{tag} <- {shown}"));
        if self.conns[c].model.closed {
            self.fail(format!("{tag}: a frame after the close frame: {shown}"));
        }
        let user = self.conns[c].user;
        let own = format!("user:{user}");
        let kind = m["type"].as_str().unwrap_or("").to_string();
        let channel = m["channel"].as_str().map(str::to_string);
        // A channel message.
        if let (Some(ch), Some(o), Some(payload)) = (channel.clone(), m["offset"].as_u64(), m.get("payload")) {
            self.stats.checked += 1;
            let model = &mut self.conns[c].model;
            let Some(w) = model.windows.get_mut(&ch) else {
                self.fail(format!("{tag} got {ch} offset {o} while not subscribed to it"));
            };
            if ch != own && !granted(&ch, &model.acked_grants) {
                let g = model.acked_grants.clone();
                self.fail(format!("{tag} got {ch} offset {o}, which its token (grants {g:?}) does not grant"));
            }
            let (next, must) = (w.next, w.must_start_by);
            w.next = Some(o + 1);
            let epoch = w.epoch.clone();
            match (next, must) {
                (Some(n), _) if o < n => {
                    self.fail(format!("{tag}: {ch} offset {o} again or out of order (next due {n})"))
                }
                (Some(n), _) if o > n => self.fail(format!("{tag}: {ch} offsets {n}..={} lost (got {o})", o - 1)),
                (None, Some(f)) if o > f => self.fail(format!(
                    "{tag}: first message on {ch} is offset {o}; offset {f} was published after it connected"
                )),
                _ => {}
            }
            if let Some(e) = epoch {
                self.positions.insert((user, ch.clone()), (e, o));
            }
            if let Some(id) = payload["id"].as_u64() {
                let key = (id, ch.clone());
                if let Some(&a) = self.answered.get(&key)
                    && a != o
                {
                    self.fail(format!("{tag}: #{id} in {ch} at offset {o}, but its publish was answered with {a}"));
                }
                match self.delivered.get(&key) {
                    Some(&d) if d != o => self.fail(format!("{tag}: #{id} in {ch} at offset {o}, elsewhere at {d}")),
                    Some(_) => {}
                    None => {
                        self.delivered.insert(key, o);
                    }
                }
            }
            return;
        }
        let head = self.conns[c].model.pending.front().cloned();
        match kind.as_str() {
            "subscribed" => {
                let ch = channel.unwrap_or_default();
                let (epoch, r) = (m["epoch"].as_str().unwrap_or("").to_string(), m["offset"].as_u64().unwrap_or(0));
                let recovered = m["recovered"] == true;
                match head {
                    Some(Req::Sub { channel, since, granted }) if channel == ch => {
                        self.conns[c].model.pending.pop_front();
                        if !granted {
                            self.fail(format!("{tag} joined {ch}, which the token in force did not grant"));
                        }
                        let held = self.conns[c].model.windows.len();
                        if held >= MAX_SUBS && !self.conns[c].model.windows.contains_key(&ch) {
                            self.fail(format!(
                                "{tag} joined {ch} holding {held} subscriptions (MAX_SUBSCRIPTIONS {MAX_SUBS})"
                            ));
                        }
                        let next = match (&since, recovered) {
                            (Some((e, s)), true) if *e == epoch && *s <= r => s + 1,
                            (_, true) => self.fail(format!("{tag}: recovered:true for since {since:?}: {m}")),
                            (_, false) => r + 1,
                        };
                        self.positions.insert((user, ch.clone()), (epoch.clone(), next - 1));
                        self.conns[c]
                            .model
                            .windows
                            .insert(ch, Window { next: Some(next), epoch: Some(epoch), must_start_by: None });
                    }
                    _ => {
                        // Unasked: the instance lost messages it cannot replay.
                        self.stats.resyncs += 1;
                        if recovered {
                            self.fail(format!("{tag}: {m} is no answer (oldest request: {head:?})"));
                        }
                        let Some(w) = self.conns[c].model.windows.get_mut(&ch) else {
                            self.fail(format!("{tag}: {m} for a channel it is not in (oldest request: {head:?})"));
                        };
                        *w = Window { next: Some(r + 1), epoch: Some(epoch.clone()), must_start_by: None };
                        self.positions.insert((user, ch), (epoch, r));
                    }
                }
            }
            "unsubscribed" => {
                let ch = channel.unwrap_or_default();
                if m["reason"] == "grant revoked" {
                    let model = &mut self.conns[c].model;
                    if granted(&ch, &model.acked_grants) || ch == own {
                        self.fail(format!("{tag}: {m} though its token grants {ch}"));
                    }
                    if model.windows.remove(&ch).is_none() {
                        self.fail(format!("{tag}: {m} for a channel it was not in"));
                    }
                    return;
                }
                match head {
                    Some(Req::Unsub { channel }) if channel == ch => {
                        self.conns[c].model.pending.pop_front();
                        self.conns[c].model.windows.remove(&ch);
                    }
                    _ => self.fail(format!("{tag}: {m} while the oldest request waiting is {head:?}")),
                }
            }
            "auth_ok" => match head {
                Some(Req::Auth { grants }) => {
                    let model = &mut self.conns[c].model;
                    model.pending.pop_front();
                    model.acked_grants = grants;
                }
                _ => self.fail(format!("{tag}: {m} while the oldest request waiting is {head:?}")),
            },
            "pong" => {
                if !matches!(head, Some(Req::Ping)) {
                    self.fail(format!("{tag}: {m} while the oldest request waiting is {head:?}"));
                }
                self.conns[c].model.pending.pop_front();
            }
            "error" => {
                let ch = m["payload"]["channel"].as_str().unwrap_or("").to_string();
                let code = m["payload"]["code"].as_str().unwrap_or("").to_string();
                let Some(Req::Sub { channel, granted: was_granted, .. }) =
                    head.clone().filter(|r| matches!(r, Req::Sub { channel, .. } if *channel == ch))
                else {
                    self.fail(format!("{tag}: {m} while the oldest request waiting is {head:?}"));
                };
                self.conns[c].model.pending.pop_front();
                let model = &mut self.conns[c].model;
                let held = model.windows.len() + model.unavailable;
                // A refresh read while the subscribe was joining may take
                // the grant away, and an unsubscribe may cancel it: either
                // may end it with an error.
                let later = |f: &dyn Fn(&Req) -> bool| model.pending.iter().any(f);
                let revoked = later(&|r| matches!(r, Req::Auth { grants } if !granted(&channel, grants)));
                let cancelled = later(&|r| matches!(r, Req::Unsub { channel: x } if *x == channel));
                let ok = cancelled
                    || match code.as_str() {
                        "forbidden" => !was_granted || revoked,
                        "too_many_subscriptions" => held >= MAX_SUBS,
                        "unavailable" => {
                            model.unavailable += 1;
                            self.mode == Mode::Cluster
                        }
                        _ => false,
                    };
                if !ok {
                    self.fail(format!("{tag}: {m} for {channel} (granted {was_granted}, holding {held})"));
                }
            }
            _ if channel.is_none() && m.get("payload").is_some() => {} // to everyone: at most once
            _ => self.fail(format!("{tag}: unexpected {m}")),
        }
    }

    // ---- the end ----------------------------------------------------------

    fn finish(mut self) -> Stats {
        for k in &mut self.conns {
            k.model.paused = false;
            k.paused.store(false, Ordering::Relaxed);
        }
        if self.mode == Mode::Cluster {
            for i in 0..self.inst.procs.len() {
                wait_ready(self.addr(i));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        self.pump();
        // One more message in every channel an open subscription is in.
        let mut targets: Vec<String> = channels();
        targets.extend(USERS.iter().map(|u| format!("user:{u}")));
        let mut last: HashMap<String, u64> = HashMap::new();
        for ch in targets {
            let deadline = Instant::now() + Duration::from_secs(10);
            let target = match ch.strip_prefix("user:") {
                Some(u) => json!({"users": [u]}),
                None => json!({"channel": ch}),
            };
            let inst = self.rng.below(self.inst.procs.len());
            loop {
                if let Some(offsets) = self.publish(inst, target.clone()) {
                    last.insert(ch.clone(), offsets[&ch]);
                    break;
                }
                if Instant::now() > deadline {
                    self.fail(format!("the final publish to {ch} kept failing"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        let behind = |run: &Run| -> Vec<String> {
            let mut out = Vec::new();
            for (c, k) in run.conns.iter().enumerate() {
                if !k.model.live() {
                    continue;
                }
                if !k.model.pending.is_empty() {
                    out.push(format!("{} has unanswered requests: {:?}", run.tag(c), k.model.pending));
                }
                for (ch, w) in &k.model.windows {
                    let f = last[ch];
                    if w.next.unwrap_or(0) <= f {
                        out.push(format!("{} in {ch}: next due {:?}, the last published is {f}", run.tag(c), w.next));
                    }
                }
            }
            out
        };
        loop {
            self.pump();
            let open = behind(&self);
            if open.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                self.fail(format!("after the final publishes: {}", open.join("; ")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Everyone leaves; the processes must return to where they started.
        for c in 0..self.conns.len() {
            if !self.conns[c].model.closed {
                self.write(c, &raw_ws::close(1000));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.conns.iter().any(|k| k.reader.as_ref().is_some_and(|r| !r.is_finished())) {
            if Instant::now() > deadline {
                self.stop.store(true, Ordering::Relaxed);
                break;
            }
            self.pump();
            std::thread::sleep(Duration::from_millis(10));
        }
        self.pump();
        for k in &mut self.conns {
            let _ = k.writer.lock().unwrap().shutdown(Shutdown::Both);
            if let Some(r) = k.reader.take() {
                let _ = r.join();
            }
        }
        self.publishers.iter_mut().for_each(|p| *p = None);
        let settle = Duration::from_secs(if self.mode == Mode::Cluster { 10 } else { SINGLE_TTL_SECS + 10 });
        for i in 0..self.inst.procs.len() {
            let deadline = Instant::now() + settle;
            loop {
                let names = ["taskcast_clients", "taskcast_subscriptions", "taskcast_channels", "process_open_fds"];
                let now = gauges(self.addr(i), &names);
                let want = [0, 0, 0, self.inst.fds[i]];
                let got: Vec<(&str, u64, u64)> = (0..4).map(|k| (names[k], now[k], want[k])).collect();
                if got.iter().all(|(_, v, want)| v == want) {
                    break;
                }
                if Instant::now() > deadline {
                    self.fail(format!("instance {i} did not return to its baseline (name, now, baseline): {got:?}"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        for (i, p) in self.inst.procs.iter_mut().enumerate() {
            let log = p.log();
            if let Some(line) = log.lines().find(|l| l.contains("panicked")) {
                let line = line.to_string();
                self.fail(format!("instance {i} panicked: {line}"));
            }
            if let Ok(Some(st)) = p.child.try_wait() {
                self.fail(format!("instance {i} exited: {st}"));
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        std::mem::take(&mut self.stats)
    }
}

fn kill_one(redis: &RedisServer, list: &str, pick: u64) {
    let ids: Vec<&str> = list.lines().filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id="))).collect();
    if !ids.is_empty() {
        let id = ids[(pick % ids.len() as u64) as usize];
        let _: redis::RedisResult<i64> = redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id).query(&mut redis.client());
    }
}

// ---- seeds and modes -------------------------------------------------------------

/// The seeds to run: INVARIANT_SEED=n, INVARIANT_SEEDS=a..b, or `default`.
fn seeds(default: std::ops::Range<u64>) -> Vec<u64> {
    if let Ok(s) = std::env::var("INVARIANT_SEED") {
        return vec![s.parse().expect("INVARIANT_SEED is a number")];
    }
    if let Ok(r) = std::env::var("INVARIANT_SEEDS") {
        let (a, b) = r.split_once("..").expect("INVARIANT_SEEDS is a..b");
        return (a.parse().expect("a number")..b.parse().expect("a number")).collect();
    }
    default.collect()
}

fn steps(default: u64) -> u64 {
    std::env::var("INVARIANT_STEPS").map_or(default, |s| s.parse().expect("INVARIANT_STEPS is a number"))
}

fn run_mode(mode: Mode, default_seeds: std::ops::Range<u64>, default_steps: u64) {
    let _ = env_logger::builder().is_test(true).try_init();
    let started = Instant::now();
    let (mut steps_done, mut checked, mut publishes, mut faults, mut conns) = (0, 0, 0, 0, 0);
    let list = seeds(default_seeds);
    for &seed in &list {
        let t = Instant::now();
        let mut run = Run::new(seed, mode);
        for _ in 0..steps(default_steps) {
            run.step();
        }
        let s = run.finish();
        eprintln!(
            "{mode:?} seed {seed}: {} steps, {} connections ({} closed 1013), {} publishes, {} channel messages checked, {} faults, {} resyncs, {:.1} s",
            s.steps,
            s.conns,
            s.slow_closes,
            s.publishes,
            s.checked,
            s.faults,
            s.resyncs,
            t.elapsed().as_secs_f64()
        );
        (steps_done, checked, publishes, faults, conns) =
            (steps_done + s.steps, checked + s.checked, publishes + s.publishes, faults + s.faults, conns + s.conns);
    }
    eprintln!(
        "{mode:?}: {} seeds, {steps_done} steps, {conns} connections, {publishes} publishes, {checked} messages checked, {faults} faults in {:.1} s",
        list.len(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn one_process() {
    run_mode(Mode::OneProcess, 1..11, 300);
}

#[test]
fn three_instances() {
    run_mode(Mode::Cluster, 1..11, 300);
}
