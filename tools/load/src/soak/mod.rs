//! `taskcast-load soak`: a bounded, scripted run against one server that
//! checks what must hold over time, not just at a peak.
//!
//! Timeline (every phase bounded in time):
//! 1. start the server (or attach to one), wait for `/health`, take the
//!    baseline of its open fds;
//! 2. connect the base population;
//! 3. main phase (`--duration`): one keep-alive sender posts numbered
//!    broadcasts at `--rate`; churn clients connect at `--churn-rate` and
//!    leave after 1–20 s; slow readers, silent clients and senders of bad
//!    frames are replenished continuously; RSS and fds sampled every second;
//! 4. wind-down: nothing new starts, the broadcasts go on until the
//!    short-lived clients have ended;
//! 5. the sender drains and stops, every client leaves (close handshake);
//! 6. settle: fds back to baseline, `/health` back to 0;
//! 7. SIGTERM to a server started here; its log is judged.
//!
//! `--cluster N`: the same run against N instances on their own ports,
//! joined through a redis-server started here (`redis.rs`). Every client
//! goes to one instance (healthy ones in turn, misbehaving slots fixed),
//! broadcasts are posted to the instances in turn, one at a time
//! (`round_robin.rs`), and every per-server check is made per instance
//! (`instance.rs`), plus one on each instance's deliveries and one on
//! Redis staying up.
//!
//! The verdicts are in `verdict.rs`; the clients' behaviour in `roles.rs`
//! and the engine.

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::args::{Auth, Config, SoakArgs};
use crate::engine::{ClientAuth, Engine, EngineOptions, SoakTrack};
use crate::http::{self, SendShared, SenderPlan};
use crate::roles::{INVALID_KINDS, Life, Outcome, ROLES, Role, SeqLog};
use crate::serverproc::ServerProc;
use crate::stats::Hist;
use crate::sysinfo;
use crate::verdict;

mod instance;
mod redis;
mod report;
mod round_robin;
use instance::{Instance, Settle, health_clients};
use redis::RedisProc;
use report::{ReportInputs, SoakReport};
use round_robin::RoundRobinPlan;

/// Engine slice between two scheduling steps (churn at 100/s: ~2 per slice).
const SLICE: Duration = Duration::from_millis(20);
/// How often slow readers look at /proc/net/tcp.
const SLOW_WATCH_EVERY: Duration = Duration::from_millis(250);
/// A slow reader stops reading for at most this long.
const MAX_STALL: Duration = Duration::from_secs(30);
/// A misbehaving client the server has not closed this long after it
/// misbehaved leaves by itself (and fails its expectation).
const MISBEHAVE_BOUND: Duration = Duration::from_secs(10);
/// Our close frame must be answered within this.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Progress line interval.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Where the run stands, for progress lines.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connect,
    Main,
    WindDown,
    Leave,
    Settle,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Main => "soak",
            Phase::WindDown => "wind-down",
            Phase::Leave => "leave",
            Phase::Settle => "settle",
        }
    }
}

/// A healthy client's record kept for scoring at the end (when every POST
/// has been answered and the rejected ones are known).
struct HealthyRec {
    /// The instance it was connected to (0 with one server).
    instance: usize,
    opened: Instant,
    /// When it started leaving (or, if it was lost, when that was seen).
    until: Instant,
    seqs: SeqLog,
    lost: bool,
}

/// Records of ended clients, summed up.
#[derive(Default)]
struct Book {
    /// Per role: outcome label → count.
    outcomes: [BTreeMap<String, u64>; ROLES.len()],
    /// Per role: ended as expected / not.
    good: [u64; ROLES.len()],
    bad: [u64; ROLES.len()],
    /// Per role: a few descriptions of unexpected endings.
    bad_examples: [Vec<String>; ROLES.len()],
    /// Clients that never completed their handshake, by cause.
    handshake_failures: BTreeMap<String, u64>,
    healthy: Vec<HealthyRec>,
    /// Silent clients: seconds from the 101 to the drop, min and max.
    silent_secs: Option<(f64, f64)>,
    /// Slow readers released by MAX_STALL rather than by the full queue.
    stall_timeouts: u64,
    /// Slow readers' messages skipped before their close (the server may
    /// drop queued messages, only from the tail).
    slow_gaps: u64,
    /// Messages slow readers received before their 1013, min and max.
    slow_received: Option<(u64, u64)>,
    base_ended: usize,
    ended: u64,
}

fn widen(r: &mut Option<(f64, f64)>, v: f64) {
    *r = Some(r.map_or((v, v), |(a, b)| (a.min(v), b.max(v))));
}

impl Book {
    fn add(&mut self, life: &Life, pong_wait: f64) {
        self.ended += 1;
        let role = life.role;
        let i = role.index();
        let outcome = life.outcome.clone().unwrap_or(Outcome::Error("unknown".into()));
        *self.outcomes[i].entry(outcome.label()).or_default() += 1;
        if role == Role::Healthy && life.lifetime.is_none() {
            self.base_ended += 1;
        }
        let Some(opened) = life.opened else {
            *self.handshake_failures.entry(outcome.label()).or_default() += 1;
            self.bad[i] += 1;
            return;
        };
        let secs = life.open_secs().unwrap_or(0.0);
        let mut ok = outcome.matches(role.expect());
        let mut why = outcome.label();
        match role {
            Role::Healthy => {
                let until = life.left.or(life.ended).unwrap_or(opened);
                self.healthy.push(HealthyRec {
                    instance: life.instance,
                    opened,
                    until,
                    seqs: life.seqs.clone(),
                    lost: !ok,
                });
            }
            Role::Silent if ok => {
                widen(&mut self.silent_secs, secs);
                let from_request = life.request_secs().unwrap_or(0.0);
                if !verdict::silent_drop_on_time(from_request, secs, pong_wait) {
                    ok = false;
                    why = format!(
                        "dropped {from_request:.2} s after its upgrade request (PONG_WAIT {pong_wait} s; at most 2 s later than that after the 101)"
                    );
                }
            }
            Role::Slow => {
                self.stall_timeouts += life.stall_timed_out as u64;
                self.slow_gaps += life.seqs.gap_seqs;
                if ok {
                    let n = life.seqs.count;
                    self.slow_received = Some(self.slow_received.map_or((n, n), |(a, b)| (a.min(n), b.max(n))));
                }
                if ok && life.seqs.gap_seqs > 0 {
                    ok = false;
                    why = format!("{} messages missing before its close", life.seqs.gap_seqs);
                }
                if !ok && life.stall_timed_out {
                    why += &format!(" (its queue did not fill within {} s of not reading)", MAX_STALL.as_secs());
                }
            }
            _ => {}
        }
        if ok {
            self.good[i] += 1;
        } else {
            self.bad[i] += 1;
            if self.bad_examples[i].len() < 3 {
                self.bad_examples[i].push(format!("{why}; ended {secs:.2} s after its 101"));
            }
        }
    }
}

/// A misbehaving-client slot: one client at a time, replaced when it ends.
struct Slot {
    role: Role,
    busy: bool,
    next_start: Instant,
    /// Spawns so far (oversized alternates its two sizes, invalid cycles kinds).
    spawns: u64,
}

struct Run<'a> {
    cfg: &'a Config,
    sa: &'a SoakArgs,
    engine: Engine,
    /// The server, or a cluster soak's instances (`--cluster`).
    inst: Vec<Instance>,
    /// A cluster soak's Redis.
    redis: Option<RedisProc>,
    /// Redis ended during the run (or stopped answering), and how.
    redis_died: Option<String>,
    /// Redis's RSS: last and highest sample.
    redis_rss: Option<(u64, u64)>,
    shared: Arc<SendShared>,
    book: Book,
    slots: Vec<Slot>,
    t0: Instant,
    main_start: Instant,
    phase: Phase,
    abort: Option<String>,
    base_added: usize,
    churn_started: u64,
    /// Healthy clients spread so far (the next one goes to instance
    /// `spread mod N`).
    spread: usize,
    peak_clients: usize,
    next_sample: Instant,
    next_progress: Instant,
    next_slow_watch: Instant,
    rng: crate::ws::XorShift,
    /// When the last engine slice began, and the longest time between two
    /// (normally SLICE plus bookkeeping; more means this process stalled).
    last_step: Option<Instant>,
    longest_turn: Duration,
}

pub fn run(cfg: &Config) -> Result<i32, String> {
    let sa = cfg.soak.as_ref().ok_or("soak settings missing")?;
    sysinfo::raise_nofile_limit();
    let t0 = Instant::now();
    let creds = credentials(cfg, sa)?;
    let redis = if sa.cluster > 1 { Some(RedisProc::start(&workdir()?)?) } else { None };
    let (servers, url) = start_or_attach(cfg, sa, &creds, redis.as_ref())?;
    let mut inst = Vec::new();
    for (server, addr) in servers {
        inst.push(Instance::ready(server, addr, PROGRESS_EVERY)?);
    }

    let horizon = sa.duration + wind_down_bound(sa).as_secs_f64() + 30.0;
    let shared = Arc::new(SendShared::new((cfg.rate * horizon).ceil() as usize + 1000));
    let Credentials { secret, client_auth, api_key } = creds;
    let engine = soak_engine(cfg, sa, &inst, client_auth, &shared)?;
    let seed = t0.elapsed().as_nanos() as u64 ^ std::process::id() as u64;
    let mut r = Run::new(cfg, engine, inst, redis, shared, t0, seed);
    let cost_start = CostMark::now(&r.pids());

    let sender_result = r.drive(&url, api_key, secret.as_deref())?;
    let main_end_secs = r.secs();
    r.leave_all();
    for i in 0..r.inst.len() {
        r.inst[i].health.stop();
    }
    for i in 0..r.inst.len() {
        r.inst[i].settle = r.settle(i);
    }
    let cost = cost_start.since(&r.pids());
    r.stop_all();

    let mut rep = SoakReport::default();
    r.report(
        &mut rep,
        ReportInputs {
            sender: sender_result,
            main_end_secs,
            cpu: cost.server_cpu_ms,
            own_cpu_ms: cost.own_cpu_ms,
            server_cpu_wait: cost.server_wait,
            own_cpu_wait: cost.own_wait,
        },
    );
    let ok = rep.ok();
    rep.print(cfg.json);
    Ok(if ok { 0 } else { 1 })
}

/// Where started processes keep their logs (one directory per run).
fn workdir() -> Result<std::path::PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("taskcast-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// The JWT secret (for minting and for a started server), what the clients
/// authenticate with, and the publisher key.
struct Credentials {
    secret: Option<String>,
    client_auth: ClientAuth,
    api_key: Option<String>,
}

fn credentials(cfg: &Config, sa: &SoakArgs) -> Result<Credentials, String> {
    let (secret, client_auth) = match &cfg.auth {
        Auth::Secret(s) => (Some(s.clone()), ClientAuth::Secret(s.clone())),
        Auth::Random => {
            let s = sysinfo::random_hex(32)?;
            (Some(s.clone()), ClientAuth::Secret(s))
        }
        Auth::Token(t) if sa.spawn_server.is_none() => (None, ClientAuth::Token(t.clone())),
        Auth::Token(_) => return Err("--token cannot be used with --spawn-server (its JWT_SECRET is needed)".into()),
    };
    if let Some(s) = &secret {
        http::mint_token(s, "soak-probe")?;
    }
    let api_key = match (&sa.api_key, &sa.spawn_server) {
        (Some(k), _) => Some(k.clone()),
        (None, Some(_)) => Some(sysinfo::random_hex(24)?),
        (None, None) => None,
    };
    Ok(Credentials { secret, client_auth, api_key })
}

/// Starts the server (`--spawn-server`; `--cluster N`: N of them, joined
/// through `redis`) or attaches to `--url` + `--server-pid`. Returns them
/// with their addresses, and the base URL of the first.
fn start_or_attach(
    cfg: &Config,
    sa: &SoakArgs,
    creds: &Credentials,
    redis: Option<&RedisProc>,
) -> Result<(Vec<(ServerProc, SocketAddr)>, String), String> {
    let Some(path) = &sa.spawn_server else {
        let pid = cfg.server_pid.ok_or("--server-pid is needed with --url")?;
        let host = cfg.host.trim_start_matches('[').trim_end_matches(']');
        let addr = (host, cfg.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", cfg.host))?
            .find(SocketAddr::is_ipv4)
            .ok_or_else(|| format!("{} has no IPv4 address", cfg.host))?;
        return Ok((vec![(ServerProc::attach(pid)?, addr)], cfg.url.clone()));
    };
    let n = sa.cluster.max(1);
    let mut env = server_env(sa, creds.secret.as_deref().unwrap_or_default(), creds.api_key.as_deref());
    if let Some(r) = redis {
        env.push(("REDIS_URL".into(), r.url()));
        // its own key space, should the Redis be shared after all
        env.push(("REDIS_PREFIX".into(), format!("taskcast-soak-{}", std::process::id())));
    }
    let mut servers = Vec::new();
    for i in 0..n {
        let dir = if n == 1 { workdir()? } else { workdir()?.join(instance::letter(i).to_lowercase()) };
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut server = ServerProc::spawn(path, &env, &dir)?;
        let listening = server.wait_listening(Duration::from_secs(10))?;
        let addr: SocketAddr =
            listening.parse().map_err(|_| format!("cannot read the server's address from `{listening}`"))?;
        eprintln!(
            "taskcast-load: started {path}{} (pid {}) on {addr}; its log: {}",
            if n == 1 { String::new() } else { format!(" as {}", instance::label(i, n)) },
            server.pid,
            server.log_path.as_ref().map_or(String::new(), |p| p.display().to_string())
        );
        servers.push((server, addr));
    }
    if let Some(r) = redis {
        eprintln!(
            "taskcast-load: redis-server (pid {}) on 127.0.0.1:{}; its log: {}",
            r.pid,
            r.port,
            r.log_path.display()
        );
    }
    let url = format!("http://{}", servers[0].1);
    Ok((servers, url))
}

/// The client loop, with soak bookkeeping and no clients yet.
fn soak_engine(
    cfg: &Config,
    sa: &SoakArgs,
    inst: &[Instance],
    auth: ClientAuth,
    shared: &Arc<SendShared>,
) -> Result<Engine, String> {
    let mut engine = Engine::new(EngineOptions {
        conns: 0,
        addr: inst[0].addr,
        host_header: inst[0].host_header.clone(),
        auth,
        query_token: cfg.query_token,
        concurrency: cfg.concurrency,
        connect_timeout: Duration::from_secs_f64(cfg.connect_timeout),
        source_ips: cfg.source_ips.unwrap_or(4),
        group: 0,
    })
    .map_err(|e| format!("cannot create the poll: {e}"))?;
    engine.soak = Some(SoakTrack {
        shared: shared.clone(),
        latency: Hist::new(),
        delivered: 0,
        unexpected: 0,
        max_message_bytes: sa.max_message_bytes,
        leave_timeout: LEAVE_TIMEOUT,
    });
    if inst.len() > 1 {
        engine.targets = inst.iter().map(|i| i.addr).collect();
    }
    Ok(engine)
}

/// One slot per misbehaving client kept alive at once.
fn misbehaver_slots(sa: &SoakArgs, now: Instant) -> Vec<Slot> {
    let mut slots = Vec::new();
    for (role, n) in [(Role::Slow, sa.slow), (Role::Silent, sa.silent), (Role::Oversized, sa.oversized)] {
        slots.extend((0..n).map(|_| Slot { role, busy: false, next_start: now, spawns: 0 }));
    }
    for i in 0..sa.invalid {
        // An --invalid slot: `role` is the first of INVALID_KINDS, the kind
        // actually used cycles; each slot starts on a different one.
        slots.push(Slot { role: INVALID_KINDS[0], busy: false, next_start: now, spawns: i as u64 });
    }
    slots
}

/// CPU time and CPU wait of the server (all instances together) and of
/// this process, at one moment.
struct CostMark {
    server_ticks: Option<u64>,
    own_ms: f64,
    /// `sysinfo::sched_ns` of the server(s) and of this process.
    server_sched: Option<(u64, u64)>,
    own_sched: Option<(u64, u64)>,
}

/// What the run cost between two marks.
struct Cost {
    server_cpu_ms: Option<f64>,
    own_cpu_ms: f64,
    server_wait: Option<f64>,
    own_wait: Option<f64>,
}

impl CostMark {
    fn now(pids: &[u32]) -> CostMark {
        let sched: Option<Vec<(u64, u64)>> = pids.iter().map(|&p| sysinfo::sched_ns(Some(p))).collect();
        CostMark {
            server_ticks: pids.iter().map(|&p| sysinfo::cpu_ticks(p)).sum(),
            own_ms: sysinfo::own_cpu_ms(),
            server_sched: sched.map(|v| v.iter().fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))),
            own_sched: sysinfo::sched_ns(None),
        }
    }

    fn since(&self, pids: &[u32]) -> Cost {
        let end = CostMark::now(pids);
        let waited = |a: Option<(u64, u64)>, b: Option<(u64, u64)>| Some(b?.1.saturating_sub(a?.1) as f64 / 1e9);
        let hz = sysinfo::clock_ticks_per_sec() as f64;
        Cost {
            server_cpu_ms: self
                .server_ticks
                .zip(end.server_ticks)
                .map(|(a, b)| b.saturating_sub(a) as f64 * 1000.0 / hz),
            own_cpu_ms: end.own_ms - self.own_ms,
            server_wait: waited(self.server_sched, end.server_sched),
            own_wait: waited(self.own_sched, end.own_sched),
        }
    }
}

impl<'a> Run<'a> {
    fn new(
        cfg: &'a Config,
        engine: Engine,
        inst: Vec<Instance>,
        redis: Option<RedisProc>,
        shared: Arc<SendShared>,
        t0: Instant,
        seed: u64,
    ) -> Run<'a> {
        let sa = cfg.soak.as_ref().expect("soak settings");
        let now = Instant::now();
        Run {
            cfg,
            sa,
            engine,
            inst,
            redis,
            redis_died: None,
            redis_rss: None,
            shared,
            book: Book::default(),
            slots: misbehaver_slots(sa, now),
            t0,
            main_start: now,
            phase: Phase::Connect,
            abort: None,
            base_added: 0,
            churn_started: 0,
            spread: 0,
            peak_clients: 0,
            next_sample: now,
            next_progress: now + PROGRESS_EVERY,
            next_slow_watch: now,
            rng: crate::ws::XorShift::new(seed ^ 0xA5A5),
            last_step: None,
            longest_turn: Duration::ZERO,
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.inst.iter().map(|i| i.server.pid).collect()
    }

    /// A new healthy client, on the next instance in turn.
    fn healthy_life(&mut self) -> Life {
        let mut life = Life::new(Role::Healthy);
        life.instance = self.spread % self.inst.len();
        self.spread += 1;
        life
    }

    /// SIGTERM to every started instance (each judged by its exit status
    /// and its log), then Redis is checked and stopped.
    fn stop_all(&mut self) {
        for i in &mut self.inst {
            i.exit = i.server.stop(Duration::from_secs(15));
            i.log = i.server.log_book();
        }
        if let Some(r) = self.redis.as_mut() {
            if let Some(e) = r.check_exit() {
                self.redis_died.get_or_insert(e);
            } else if !redis::ping(r.port) {
                self.redis_died.get_or_insert("no answer to PING after the instances exited".into());
            }
            r.stop();
        }
    }

    /// Base clients, then the sender, the main phase and the wind-down;
    /// then posting stops (cleanly: answers to posts in flight are
    /// awaited, bounded). Returns the sender's result if it ran.
    fn drive(
        &mut self,
        url: &str,
        api_key: Option<String>,
        secret: Option<&str>,
    ) -> Result<Option<http::SenderResult>, String> {
        self.connect_base();
        let sender = if self.abort.is_none() { Some(self.start_sender(url, api_key, secret)?) } else { None };
        self.main_start = Instant::now();
        if self.abort.is_none() {
            self.main_phase();
        }
        if self.abort.is_none() {
            self.wind_down();
        }
        self.shared.drain.store(true, Ordering::SeqCst);
        if self.abort.is_some() {
            self.shared.stop.store(true, Ordering::SeqCst);
        }
        let until = Instant::now() + Duration::from_secs(15);
        let shared = self.shared.clone();
        let _ = self.engine.run(until, &mut |_| shared.senders_done.load(Ordering::SeqCst) >= 1, &mut |_| {});
        sender.map(|h| h.join().map_err(|_| "the sender thread panicked".to_string())).transpose()
    }
}

/// The started server's whole environment: soak-friendly heartbeat and
/// queue, no per-address or broadcast rate limits (the clients share a few
/// addresses and the sender is the only publisher), a publisher key (no
/// start-up warning; user tokens cannot publish).
fn server_env(sa: &SoakArgs, secret: &str, api_key: Option<&str>) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("HOST", "127.0.0.1".to_string()),
        ("PORT", sa.port.to_string()),
        ("JWT_SECRET", secret.to_string()),
        ("PING_INTERVAL_SECS", sa.ping_interval.to_string()),
        ("PONG_WAIT_SECS", sa.pong_wait.to_string()),
        ("SEND_QUEUE_LIMIT", sa.send_queue_limit.to_string()),
        ("MAX_MESSAGE_BYTES", sa.max_message_bytes.to_string()),
        ("MAX_CONNECTIONS_PER_IP", "0".to_string()),
        ("BROADCAST_RATE_PER_SEC", "0".to_string()),
        ("RUST_LOG", "info".to_string()),
        // SIGTERM at the end closes every client at once (1012), not over
        // the 10 s default drain window.
        ("DRAIN_SECS", "0".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if let Some(k) = api_key {
        env.push(("BROADCAST_API_KEY".into(), k.to_string()));
    }
    env
}

/// When RSS must stop growing: after `--warmup-pct` of the main phase, and
/// not before the churn population has reached its steady size (every
/// client alive then was started after the run began: `life_max`).
fn warmup_secs(sa: &SoakArgs) -> f64 {
    (sa.duration * sa.warmup_pct / 100.0).max(sa.life_max + 2.0).min(sa.duration * 0.9)
}

/// Longest the wind-down may take: the longest churn lifetime, a slow
/// reader's longest stall plus its bound, a silent client's drop.
fn wind_down_bound(sa: &SoakArgs) -> Duration {
    let secs = sa
        .life_max
        .max((MAX_STALL + MISBEHAVE_BOUND).as_secs_f64())
        .max(sa.pong_wait as f64 + MISBEHAVE_BOUND.as_secs_f64());
    Duration::from_secs_f64(secs + 5.0)
}

impl Run<'_> {
    fn secs(&self) -> f64 {
        self.main_start.elapsed().as_secs_f64()
    }

    /// Runs the engine for one slice, then the bookkeeping that is due.
    fn step(&mut self) {
        let start = Instant::now();
        if let Some(prev) = self.last_step {
            self.longest_turn = self.longest_turn.max(start - prev);
        }
        self.last_step = Some(start);
        let until = start + SLICE;
        if let Err(e) = self.engine.run(until, &mut |_| false, &mut |_| {}) {
            self.abort.get_or_insert(format!("poll failed: {e}"));
        }
        self.collect();
        let now = Instant::now();
        if now >= self.next_slow_watch {
            self.next_slow_watch = now + SLOW_WATCH_EVERY;
            self.watch_slow_readers(now);
        }
        if now >= self.next_sample {
            self.next_sample = now + Duration::from_secs(1);
            self.sample();
            self.bound_misbehavers(now);
        }
        if now >= self.next_progress {
            self.next_progress = now + PROGRESS_EVERY;
            for i in &mut self.inst {
                i.samples.last_health = i.health.latest();
            }
            self.progress();
        }
    }

    /// Takes the records of ended clients; frees their slots.
    fn collect(&mut self) {
        let now = Instant::now();
        for life in std::mem::take(&mut self.engine.finished) {
            if let Some(s) = life.slot.and_then(|i| self.slots.get_mut(i)) {
                s.busy = false;
                s.next_start = now + Duration::from_secs_f64(self.sa.respawn);
            }
            self.book.add(&life, self.sa.pong_wait as f64);
        }
        self.peak_clients = self.peak_clients.max(self.engine.live_total());
    }

    /// RSS and fds every second; every instance (and Redis) must be alive.
    fn sample(&mut self) {
        let secs = self.secs();
        let n = self.inst.len();
        for (i, inst) in self.inst.iter_mut().enumerate() {
            if inst.died {
                continue;
            }
            if let Some(e) = inst.server.check_exit() {
                inst.died = true;
                let who = instance::label(i, n);
                self.abort.get_or_insert(format!(
                    "the {who} died {:.1} s into the run ({e})",
                    self.t0.elapsed().as_secs_f64()
                ));
                eprintln!("taskcast-load: the {who} died ({e}); its last log lines:\n{}", inst.server.log_tail());
                continue;
            }
            if let Some(k) = inst.server.rss_kib() {
                inst.samples.rss.push((secs, k));
            }
            if let Some(f) = inst.server.fds() {
                inst.samples.fds_peak = inst.samples.fds_peak.max(f);
                inst.samples.last_fds = Some(f);
            }
        }
        if let Some(k) = self.redis.as_ref().and_then(|r| r.rss_kib()) {
            self.redis_rss = Some((k, self.redis_rss.map_or(k, |(_, p)| p.max(k))));
        }
        if let Some(e) = self.redis.as_mut().and_then(|r| r.check_exit()) {
            if self.redis_died.is_none() {
                self.abort.get_or_insert(format!(
                    "redis-server died {:.1} s into the run ({e})",
                    self.t0.elapsed().as_secs_f64()
                ));
            }
            self.redis_died.get_or_insert(e);
        }
        if let Some(f) = self.shared.fatal() {
            self.abort.get_or_insert(format!("the broadcast sender failed: {f}"));
        }
    }

    fn progress(&self) {
        let e = &self.engine;
        let d = e.soak.as_ref().map_or(0, |s| s.delivered);
        let live = e.live;
        let bad: usize = live[Role::Oversized.index()..].iter().sum();
        eprintln!(
            "[{:<9} {:6.1}s] clients {} (healthy {}, slow {}, silent {}, bad frames {}), connects {}, ended {} | posts {} ok {} | delivered {} | server rss {}, fds {}, connectedClients {}",
            self.phase.name(),
            self.secs(),
            e.live_total(),
            live[Role::Healthy.index()],
            live[Role::Slow.index()],
            live[Role::Silent.index()],
            bad,
            e.stats.started,
            self.book.ended,
            self.shared.sent.load(Ordering::Relaxed),
            self.shared.accepted.load(Ordering::Relaxed),
            d,
            self.per_instance(|i| i.samples.rss.last().map_or("?".into(), |s| mib(s.1))),
            self.per_instance(|i| i.samples.last_fds.map_or("?".into(), |n| n.to_string())),
            self.per_instance(|i| i.samples.last_health.map_or("?".into(), |n| n.to_string())),
        );
    }

    /// One value per instance, joined by `/` (just the value with one).
    fn per_instance(&self, f: impl Fn(&Instance) -> String) -> String {
        self.inst.iter().map(f).collect::<Vec<_>>().join("/")
    }

    fn connect_base(&mut self) {
        let deadline = Instant::now() + Duration::from_secs_f64(self.cfg.timeout);
        let n = self.sa.base_conns;
        while self.abort.is_none() {
            while self.base_added < n && self.engine.stats.in_flight < self.cfg.concurrency {
                let life = self.healthy_life();
                self.engine.add_client(life);
                self.base_added += 1;
            }
            if self.base_added == n && self.engine.stats.in_flight == 0 {
                break;
            }
            if Instant::now() >= deadline {
                self.abort = Some(format!(
                    "the base population did not connect within {} s ({} open, {} in flight)",
                    self.cfg.timeout, self.engine.stats.open, self.engine.stats.in_flight
                ));
                break;
            }
            self.step();
        }
        if self.abort.is_none() && n > 0 && self.engine.stats.open == 0 {
            self.abort =
                Some(format!("none of the {n} base clients connected: {:?}", self.engine.stats.failure_examples));
        }
    }

    fn start_sender(
        &mut self,
        url: &str,
        api_key: Option<String>,
        secret: Option<&str>,
    ) -> Result<std::thread::JoinHandle<http::SenderResult>, String> {
        let token = match (api_key, secret, &self.cfg.auth) {
            (Some(k), _, _) => k,
            (None, Some(s), _) => http::mint_token(s, "soak-sender")?,
            (None, None, Auth::Token(t)) => t.clone(),
            (None, None, _) => return Err("no credential for /api/broadcast".into()),
        };
        let deadline = Instant::now() + Duration::from_secs_f64(self.sa.duration) + wind_down_bound(self.sa) * 2;
        let sh = self.shared.clone();
        if self.inst.len() > 1 {
            let plan = RoundRobinPlan {
                targets: self.inst.iter().map(|i| i.addr).collect(),
                token,
                rate: self.cfg.rate,
                payload: self.cfg.payload,
                total_msgs: self.shared.send_ns.len(),
                deadline,
            };
            return std::thread::Builder::new()
                .name("sender".into())
                .spawn(move || round_robin::run(plan, sh))
                .map_err(|e| format!("cannot start the sender thread: {e}"));
        }
        let plan = SenderPlan {
            id: 0,
            senders: 1,
            total_msgs: self.shared.send_ns.len(),
            rate: Some(self.cfg.rate),
            pipeline: self.cfg.pipeline,
            addr: self.inst[0].addr,
            url: url.to_string(),
            host_header: self.inst[0].host_header.clone(),
            token,
            payload: self.cfg.payload,
            deadline,
            projects: 0,
        };
        std::thread::Builder::new()
            .name("sender".into())
            .spawn(move || http::run_sender(plan, sh))
            .map_err(|e| format!("cannot start the sender thread: {e}"))
    }

    fn main_phase(&mut self) {
        self.phase = Phase::Main;
        let end = self.main_start + Duration::from_secs_f64(self.sa.duration);
        let (lo, hi) = (self.sa.life_min, self.sa.life_max);
        while self.abort.is_none() && Instant::now() < end {
            // Churn: as many starts as the rate asks for by now (at most a
            // second's worth at once, after a stall of this process).
            let due = (self.sa.churn_rate * self.secs()) as u64;
            let mut budget = self.sa.churn_rate.ceil() as u64;
            while self.churn_started < due && budget > 0 {
                let mut life = self.healthy_life();
                let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                life.lifetime = Some(Duration::from_secs_f64(lo + (hi - lo) * u));
                self.engine.add_client(life);
                self.churn_started += 1;
                budget -= 1;
            }
            self.refill_slots();
            self.step();
        }
    }

    fn refill_slots(&mut self) {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            let s = &mut self.slots[i];
            if s.busy || now < s.next_start {
                continue;
            }
            let role = if INVALID_KINDS.contains(&s.role) {
                INVALID_KINDS[(s.spawns % INVALID_KINDS.len() as u64) as usize]
            } else {
                s.role
            };
            let mut life = Life::new(role);
            life.slot = Some(i);
            life.instance = i % self.inst.len();
            life.big = s.spawns % 2 == 1;
            s.busy = true;
            s.spawns += 1;
            self.engine.add_client(life);
        }
    }

    /// Nothing new starts; broadcasts go on until every client but the
    /// base population has ended (slow readers need broadcasts to fill
    /// their queue), within a bound.
    fn wind_down(&mut self) {
        self.phase = Phase::WindDown;
        let deadline = Instant::now() + wind_down_bound(self.sa);
        let mut forced = false;
        while self.abort.is_none() {
            let base_alive = self.base_added - self.book.base_ended;
            if self.engine.live_total() <= base_alive {
                break;
            }
            if Instant::now() >= deadline && !forced {
                // cannot happen if every bound holds; leave anyway
                forced = true;
                let ids: Vec<(usize, u32)> = self
                    .engine
                    .lives()
                    .filter(|l| l.3.lifetime.is_some() || l.3.role != Role::Healthy)
                    .map(|l| (l.0, l.1))
                    .collect();
                for (id, epoch) in ids {
                    self.engine.begin_leave(id, epoch);
                }
            }
            if Instant::now() >= deadline + LEAVE_TIMEOUT * 2 {
                break;
            }
            self.step();
        }
    }

    /// Every client leaves with a close handshake; waits (bounded) for the
    /// answers.
    fn leave_all(&mut self) {
        self.phase = Phase::Leave;
        self.engine.leave_all();
        let deadline = Instant::now() + LEAVE_TIMEOUT + Duration::from_secs(5);
        while self.engine.live_total() > 0 && Instant::now() < deadline {
            self.step();
        }
        self.engine.close_all();
        self.collect();
    }

    /// After everyone left: fds back to the baseline and /health at 0,
    /// within `--settle`. Returns (fds at the end, seconds it took or None,
    /// connectedClients at the end, seconds or None).
    fn settle(&mut self, i: usize) -> Settle {
        self.phase = Phase::Settle;
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(self.sa.settle);
        let main_start = self.main_start;
        let inst = &mut self.inst[i];
        let mut s = Settle::default();
        loop {
            let fds = inst.server.fds();
            if s.fds_at.is_none() && fds.is_some_and(|n| n <= inst.fd_baseline) {
                s.fds_at = Some(start.elapsed().as_secs_f64());
            }
            s.fds = fds;
            let h = health_clients(inst.addr, &inst.host_header);
            if s.health_at.is_none() && h == Some(0) {
                s.health_at = Some(start.elapsed().as_secs_f64());
            }
            s.health = h;
            if let Some(k) = inst.server.rss_kib() {
                inst.samples.rss.push((main_start.elapsed().as_secs_f64(), k));
            }
            if (s.fds_at.is_some() && s.health_at.is_some()) || Instant::now() >= deadline {
                break;
            }
            if inst.server.check_exit().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        // The /health request itself holds an fd for a moment: count again.
        std::thread::sleep(Duration::from_millis(100));
        if let Some(n) = inst.server.fds() {
            s.fds = Some(s.fds.map_or(n, |m| m.min(n)));
        }
        s
    }

    /// Slow readers that stopped reading: resume once the server has
    /// written nothing to the socket while more broadcasts were accepted
    /// than its queue holds (plus the sender's pipeline, whose posts may
    /// have been fanned out before the last change was seen). The server
    /// then must have closed it with 1013 moments ago, well inside the
    /// 5 s it gives a client to answer a close frame.
    fn watch_slow_readers(&mut self, now: Instant) {
        let v4 = |a: SocketAddr| match a {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0),
        };
        let inst = &self.inst;
        // (client, epoch, its address, the address of the instance it is on)
        let stalled: Vec<(usize, u32, Option<SocketAddrV4>, SocketAddrV4)> = self
            .engine
            .lives()
            .filter(|l| l.3.stall.is_some())
            .map(|l| {
                let local = match l.3.local {
                    Some(SocketAddr::V4(a)) => Some(a),
                    _ => None,
                };
                (l.0, l.1, local, v4(inst[l.3.instance.min(inst.len() - 1)].addr))
            })
            .collect();
        if stalled.is_empty() {
            return;
        }
        let mut wanted = HashSet::new();
        for &(_, _, local, server) in &stalled {
            if let Some(l) = local {
                wanted.insert((server, l));
                wanted.insert((l, server));
            }
        }
        let queues = sysinfo::tcp_queues(&wanted).unwrap_or_default();
        let accepted = self.shared.accepted.load(Ordering::Relaxed);
        let need = (self.sa.send_queue_limit + self.cfg.pipeline + 8) as u64;
        for (id, epoch, local, server) in stalled {
            let written = local.and_then(|l| Some(queues.get(&(server, l))?.0 + queues.get(&(l, server))?.1));
            let Some(life) = self.engine.life_mut(id, epoch) else { continue };
            let Some(stall) = life.stall.as_mut() else { continue };
            let mut resume = None;
            if let Some(w) = written {
                if w != stall.written {
                    stall.written = w;
                    stall.accepted_at_change = accepted;
                } else if accepted.saturating_sub(stall.accepted_at_change) >= need {
                    resume = Some(false);
                }
            }
            if now.duration_since(stall.since) >= MAX_STALL {
                resume = Some(true);
            }
            let heartbeat = now.duration_since(stall.last_heartbeat) >= Duration::from_secs(1);
            if heartbeat {
                stall.last_heartbeat = now;
            }
            match resume {
                Some(timed_out) => self.engine.resume(id, epoch, timed_out),
                None if heartbeat => self.engine.heartbeat(id, epoch),
                None => {}
            }
        }
    }

    /// Misbehaving clients the server should have closed by now leave by
    /// themselves (their outcome, "left", then fails the check).
    fn bound_misbehavers(&mut self, now: Instant) {
        let pong_wait = Duration::from_secs(self.sa.pong_wait);
        let overdue: Vec<(usize, u32)> = self
            .engine
            .lives()
            .filter(|&(_, _, open, l)| {
                let Some(opened) = l.opened.filter(|_| open) else { return false };
                match l.role {
                    Role::Healthy => false,
                    Role::Silent => now > opened + pong_wait + MISBEHAVE_BOUND,
                    Role::Slow => l.resumed.is_some_and(|r| now > r + MISBEHAVE_BOUND),
                    _ => now > opened + MISBEHAVE_BOUND,
                }
            })
            .map(|l| (l.0, l.1))
            .collect();
        for (id, epoch) in overdue {
            self.engine.begin_leave(id, epoch);
        }
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
