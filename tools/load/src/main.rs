//! `taskcast-load` — load generator for the taskcast WebSocket broadcast
//! server.
//!
//! It opens many WebSocket clients from one mio poll loop (hand-written
//! RFC 6455 client: ~200 bytes of state per idle connection, one shared
//! 64 KiB read buffer), answers the server's pings, and posts broadcasts
//! from blocking keep-alive HTTP/1.1 sender threads (pipelined). Every
//! broadcast carries a sequence number; each client records which ones it
//! received, in what order, and how long after the POST was written.
//!
//! # Usage
//!
//! ```text
//! # 19,000 idle connections, server memory per connection, hold 10 s
//! taskcast-load idle --conns 19000 --server-pid $(pgrep -x taskcast) --hold 10 \
//!     --secret "$JWT_SECRET"
//!
//! # fan-out latency: 1,000 clients, 100 broadcasts at 10/s, 200-byte payloads
//! taskcast-load latency --conns 1000 --msgs 100 --rate 10 --secret "$JWT_SECRET"
//!
//! # throughput: 1,000 clients × 5,000 broadcasts from 4 pipelined senders,
//! # with the server's CPU time per 1,000 deliveries
//! taskcast-load throughput --conns 1000 --msgs 5000 --senders 4 \
//!     --server-pid $(pgrep -x taskcast) --secret "$JWT_SECRET" --json
//!
//! # soak: starts the server itself, 10 minutes of churn (100 connects/s
//! # over 500 steady clients), 50 broadcasts/s, slow readers, silent
//! # clients and bad frames; a PASS/FAIL table (see .ci/soak)
//! taskcast-load soak --spawn-server target/release/taskcast --duration 600
//! ```
//!
//! `soak` checks that every healthy client received every broadcast sent
//! while it was connected, in order; that server RSS stays flat after
//! warm-up; that its fds and `/health` return to baseline when everyone has
//! left; that it logged no errors; and that misbehaving clients got the
//! close codes the README promises (module `soak`).
//!
//! Common flags: `--url http://127.0.0.1:8080` (http only), `--secret S`
//! (mint HS256 tokens, `sub` = `load-<i>`, exp 1 h; defaults to
//! `$JWT_SECRET`) or `--token T` (used as is), `--query-token` (send the
//! token as `?token=`), `--timeout SECS` (bound of each phase, default 60),
//! `--connect-timeout SECS` (one handshake, default 10), `--concurrency N`
//! (handshakes in flight, default 500), `--pipeline N` (requests in flight
//! per sender), `--json` (one JSON object on stdout instead of the table).
//!
//! Progress goes to stderr once a second; the summary goes to stdout. The
//! exit status is 0 when every connection opened and (latency/throughput)
//! every client received every broadcast exactly once and in order, 1 when
//! anything was missing, failed or timed out, 2 on bad arguments.
//!
//! The soft `RLIMIT_NOFILE` is raised to the hard limit at start; each
//! client needs one file descriptor and one local port. Toward a loopback
//! server, clients are spread over source addresses 127.0.0.1..127.0.0.N
//! (`--source-ips N`, default one address per 1,000 clients): the server
//! admits 1,000 clients per address by default (MAX_CONNECTIONS_PER_IP), and
//! Linux's port search gets slow once ~14,000 ports toward one destination
//! are in use.

mod args;
mod engine;
mod http;
mod roles;
mod serverproc;
mod soak;
mod stats;
mod sysinfo;
mod verdict;
mod ws;

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::args::{Auth, Config, Mode};
use crate::engine::{ClientAuth, Engine, EngineOptions};
use crate::http::{SendShared, SenderPlan};
use crate::stats::{Hist, round3};

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match args::parse(&argv, std::env::var("JWT_SECRET").ok()) {
        Ok(c) => c,
        // prints help (exit 0) or the syntax error with usage (exit 2)
        Err(args::ParseError::Syntax(e)) => e.exit(),
        Err(args::ParseError::Invalid(e)) => {
            eprintln!("taskcast-load: {e}\n(see taskcast-load <mode> --help)");
            std::process::exit(2);
        }
    };
    let result = if cfg.mode == Mode::Soak { crate::soak::run(&cfg) } else { run(&cfg) };
    let code = match result {
        Ok(c) => c,
        Err(e) => {
            eprintln!("taskcast-load: error: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// Table rows and JSON fields of the summary, built side by side.
struct Report {
    rows: Vec<(String, String)>,
    json: Map<String, Value>,
    problems: Vec<String>,
}

impl Report {
    fn new() -> Self {
        Report { rows: Vec::new(), json: Map::new(), problems: Vec::new() }
    }
    fn add(&mut self, key: &str, label: &str, value: Value, shown: String) {
        self.json.insert(key.to_string(), value);
        self.rows.push((label.to_string(), shown));
    }
    fn json_only(&mut self, key: &str, value: Value) {
        self.json.insert(key.to_string(), value);
    }
    fn problem(&mut self, p: String) {
        self.problems.push(p);
    }
    fn print(mut self, as_json: bool) {
        self.json.insert("ok".into(), Value::Bool(self.problems.is_empty()));
        self.json.insert("problems".into(), Value::Array(self.problems.iter().cloned().map(Value::String).collect()));
        let out = io::stdout();
        let mut out = out.lock();
        if as_json {
            let _ = writeln!(out, "{}", Value::Object(self.json));
            return;
        }
        let w = self.rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        for (l, v) in &self.rows {
            let _ = writeln!(out, "{l:<w$}  {v}");
        }
        if self.problems.is_empty() {
            let _ = writeln!(out, "{:<w$}  OK", "result");
        } else {
            for p in &self.problems {
                let _ = writeln!(out, "{:<w$}  FAIL: {p}", "result");
            }
        }
    }
}

fn resolve(cfg: &Config) -> Result<SocketAddr, String> {
    let host = cfg.host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> =
        (host, cfg.port).to_socket_addrs().map_err(|e| format!("cannot resolve {}: {e}", cfg.host))?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{} resolves to no address", cfg.host))
}

fn kib(v: u64) -> String {
    if v >= 10 * 1024 { format!("{:.1} MiB ({v} KiB)", v as f64 / 1024.0) } else { format!("{v} KiB") }
}

fn counts_str(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "0".into();
    }
    let total: u64 = m.values().sum();
    let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!("{total} ({})", parts.join(", "))
}

fn connected_clients(addr: SocketAddr, host_header: &str) -> Option<u64> {
    let (st, body) = http::get_health(addr, host_header).ok()?;
    if st != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    v.get("connectedClients")?.as_u64()
}

fn run(cfg: &Config) -> Result<i32, String> {
    let fd_limit = sysinfo::raise_nofile_limit();
    let fds_needed = (cfg.conns + cfg.senders + 32) as u64;
    if fds_needed > fd_limit {
        eprintln!(
            "taskcast-load: warning: {} connections need about {fds_needed} file descriptors but RLIMIT_NOFILE is {fd_limit} (already raised to the hard limit); raise it, e.g. `ulimit -n {}` as root",
            cfg.conns,
            fds_needed.next_power_of_two().max(65536)
        );
    }
    let addr = resolve(cfg)?;
    let host_header = cfg.host_header();

    // Preflight: is the server there at all?
    let health_before = match http::get_health(addr, &host_header) {
        Ok((200, body)) => {
            serde_json::from_str::<Value>(&body).ok().and_then(|v| v.get("connectedClients").and_then(Value::as_u64))
        }
        Ok((st, body)) => {
            eprintln!("taskcast-load: warning: GET /health answered HTTP {st}: {body}");
            None
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            return Err(format!("connection refused by {addr}: is the taskcast server running at {}?", cfg.url));
        }
        Err(e) if crate::engine::is_fd_limit(&e) => {
            return Err(format!("out of file descriptors ({e}); raise `ulimit -n`"));
        }
        Err(e) => {
            return Err(format!("GET {}/health failed: {e}", cfg.url.trim_end_matches('/')));
        }
    };

    let mut rep = Report::new();
    rep.add("mode", "mode", json!(cfg.mode.name()), cfg.mode.name().into());
    rep.add("url", "server", json!(cfg.url), format!("{} ({addr})", cfg.url));
    if let Some(n) = health_before {
        rep.add("server_clients_before", "server clients before", json!(n), n.to_string());
    }

    let pid = cfg.server_pid;
    let rss_before = pid.and_then(sysinfo::rss_kib);
    if let (Some(p), None) = (pid, rss_before) {
        eprintln!("taskcast-load: warning: cannot read /proc/{p}/status (wrong --server-pid?)");
    }

    let auth = match &cfg.auth {
        Auth::Secret(s) => {
            http::mint_token(s, "load-probe")?; // fail early on a bad secret format
            ClientAuth::Secret(s.clone())
        }
        Auth::Token(t) => ClientAuth::Token(t.clone()),
        Auth::Random => return Err("need --secret or --token".into()),
    };
    let source_ips = cfg.source_ips.unwrap_or_else(|| crate::engine::auto_source_ips(addr, cfg.conns));
    let mut engine = Engine::new(EngineOptions {
        conns: cfg.conns,
        addr,
        host_header: host_header.clone(),
        auth,
        query_token: cfg.query_token,
        concurrency: cfg.concurrency,
        connect_timeout: Duration::from_secs_f64(cfg.connect_timeout),
        source_ips,
    })
    .map_err(|e| format!("cannot create the poll: {e}"))?;

    // ---- connect phase ----
    let overflows_before = sysinfo::listen_overflows();
    let t0 = Instant::now();
    let connect_deadline = t0 + Duration::from_secs_f64(cfg.timeout);
    let n = cfg.conns;
    let finished = engine
        .run(
            connect_deadline,
            &mut |e: &Engine| {
                e.connect_done()
                    // every token is minted the same way: one 401 with no success means all fail
                    || (e.stats.failed.contains_key("http_401") && e.stats.opened_total == 0)
                    || (e.stats.failed.get("refused").copied().unwrap_or(0) > 0
                        && e.stats.opened_total == 0
                        && e.stats.in_flight == 0)
            },
            &mut |e: &Engine| {
                eprintln!(
                    "[connect {:5.1}s] open {}/{n}, in flight {}, failed {}",
                    t0.elapsed().as_secs_f64(),
                    e.stats.open,
                    e.stats.in_flight,
                    e.stats.failed_total()
                );
            },
        )
        .map_err(|e| format!("poll failed: {e}"))?;
    let connect_secs = engine.stats.last_open.map_or(t0.elapsed(), |t| t.duration_since(t0)).as_secs_f64();
    let opened = engine.stats.opened_total;
    rep.add("conns_target", "connections wanted", json!(n), n.to_string());
    if source_ips > 1 && addr.is_ipv4() && addr.ip().is_loopback() {
        rep.add(
            "source_ips",
            "client source addresses",
            json!(source_ips),
            format!("127.0.0.1 .. 127.0.0.{source_ips}"),
        );
    }
    rep.add(
        "conns_open",
        "connections opened",
        json!(opened),
        format!("{opened} in {connect_secs:.2} s ({:.0}/s)", opened as f64 / connect_secs.max(1e-9)),
    );
    rep.json_only("connect_secs", json!(round3(connect_secs)));
    let failed = engine.stats.failed.clone();
    let mut failed_json = Map::new();
    let not_attempted = engine.not_attempted();
    let mut failed_display = failed.clone();
    if engine.stats.in_flight > 0 {
        // still handshaking when the phase ended (timeout, or aborted early)
        let key = if finished { "aborted" } else { "phase_timeout" };
        failed_display.insert(key.into(), engine.stats.in_flight as u64);
    }
    if not_attempted > 0 {
        failed_display.insert("not_attempted".into(), not_attempted as u64);
    }
    for (k, v) in &failed_display {
        failed_json.insert(k.clone(), json!(v));
    }
    rep.add("conns_failed", "connections failed", Value::Object(failed_json), counts_str(&failed_display));
    if let Some(s) = engine.stats.handshake.summary() {
        rep.add("handshake", "handshake latency", s.to_json(), s.line());
    }
    if let (Some(b), Some(a)) = (overflows_before, sysinfo::listen_overflows()) {
        let d = a.saturating_sub(b);
        rep.add(
            "listen_overflows",
            "listen queue overflows",
            json!(d),
            format!("{d} (kernel TcpExt ListenOverflows, system-wide, during connect)"),
        );
        if d > 0 && addr.ip().is_loopback() {
            eprintln!(
                "taskcast-load: note: the server's accept queue overflowed {d} times; those SYNs were dropped and retried after ~1 s (lower --concurrency, or give the server a larger listen backlog)"
            );
        }
    }
    for (cause, example) in &engine.stats.failure_examples {
        eprintln!("taskcast-load: connection failure `{cause}`, e.g.: {example}");
    }
    // Clear diagnostics for the common failure causes.
    if failed.contains_key("http_401") {
        let msg = format!(
            "the server rejected the token (HTTP 401): {}",
            match &cfg.auth {
                Auth::Secret(_) | Auth::Random => "--secret (or $JWT_SECRET) does not match the server's JWT_SECRET",
                Auth::Token(_) => "the --token is invalid or expired",
            }
        );
        eprintln!("taskcast-load: {msg}");
        rep.problem(msg);
    }
    if failed.contains_key("refused") {
        let msg = format!(
            "connection refused by {addr}: is the server still running at {}? ({} refused)",
            cfg.url, failed["refused"]
        );
        eprintln!("taskcast-load: {msg}");
        rep.problem(msg);
    }
    if engine.stats.fd_exhausted {
        let msg = format!(
            "out of file descriptors after {} connections (RLIMIT_NOFILE {fd_limit}): raise `ulimit -n` (hard limit) and retry",
            engine.stats.started
        );
        eprintln!("taskcast-load: {msg}");
        rep.problem(msg);
    }
    if engine.stats.ports_exhausted {
        let msg = "no free local ports (EADDRNOTAVAIL): widen net.ipv4.ip_local_port_range or wait for TIME_WAIT sockets to expire".to_string();
        eprintln!("taskcast-load: {msg}");
        rep.problem(msg);
    }
    if failed.contains_key("http_429") {
        let example = engine.stats.failure_examples.get("http_429").cloned().unwrap_or_default();
        rep.problem(format!(
            "server refused {} connections with 429 ({example}); per-address limit? see --source-ips",
            failed["http_429"]
        ));
    }
    if failed.contains_key("http_503") {
        let example = engine.stats.failure_examples.get("http_503").cloned().unwrap_or_default();
        rep.problem(format!("server refused {} connections with 503 ({example})", failed["http_503"]));
    }
    if opened < n {
        rep.problem(format!("{} of {n} connections did not open", n - opened));
    }

    match cfg.mode {
        Mode::Soak => unreachable!("soak runs from soak::run"),
        Mode::Idle if engine.stats.open == 0 => {
            rep.problem("no client connected; nothing to hold".into());
        }
        Mode::Idle => idle_phase(cfg, &mut engine, &mut rep, addr, &host_header, rss_before),
        Mode::Latency | Mode::Throughput => {
            if engine.stats.open == 0 {
                rep.problem("no client connected; nothing to measure".into());
            } else {
                send_phase(cfg, &mut engine, &mut rep, addr, &host_header)?;
            }
        }
    }
    engine.close_all();
    let ok = rep.problems.is_empty();
    rep.print(cfg.json);
    Ok(if ok { 0 } else { 1 })
}

fn idle_phase(
    cfg: &Config,
    engine: &mut Engine,
    rep: &mut Report,
    addr: SocketAddr,
    host_header: &str,
    rss_before: Option<u64>,
) {
    let t = Instant::now();
    let until = t + Duration::from_secs_f64(cfg.hold);
    let _ = engine.run(until, &mut |_| false, &mut |e: &Engine| {
        eprintln!(
            "[hold    {:5.1}s] open {}, pings answered {}, closed by server {}",
            t.elapsed().as_secs_f64(),
            e.stats.open,
            e.stats.pongs,
            e.stats.closed_total()
        );
    });
    let open = engine.stats.open;
    rep.add("hold_secs", "held", json!(cfg.hold), format!("{:.1} s, {open} still open at the end", cfg.hold));
    rep.json_only("conns_open_after_hold", json!(open));
    rep.add("pings_answered", "pings answered", json!(engine.stats.pongs), engine.stats.pongs.to_string());
    report_closed(engine, rep);

    if let Some(c) = connected_clients(addr, host_header) {
        rep.add("server_clients", "server connectedClients", json!(c), c.to_string());
        if c < open as u64 {
            rep.problem(format!("/health reports {c} connected clients while {open} are open"));
        }
    }
    if let Some(pid) = cfg.server_pid {
        let after = sysinfo::rss_kib(pid);
        if let Some(b) = rss_before {
            rep.add("server_rss_before_kib", "server RSS before", json!(b), kib(b));
        }
        if let Some(a) = after {
            rep.add("server_rss_after_kib", "server RSS after", json!(a), kib(a));
        }
        if let (Some(b), Some(a)) = (rss_before, after) {
            let per = (a as f64 - b as f64) * 1024.0 / open.max(1) as f64;
            rep.add(
                "server_bytes_per_conn",
                "server RSS per connection",
                json!(per.round()),
                format!("{:.0} bytes ({:.2} KiB) over {open} open", per, per / 1024.0),
            );
        }
    }
    if let Some(r) = sysinfo::own_rss_kib() {
        rep.add(
            "client_rss_kib",
            "load tool RSS",
            json!(r),
            format!("{} ({:.0} bytes/conn)", kib(r), r as f64 * 1024.0 / open.max(1) as f64),
        );
    }
}

fn report_closed(engine: &Engine, rep: &mut Report) {
    let closed = &engine.stats.closed;
    let mut m = Map::new();
    for (k, v) in closed {
        m.insert(k.clone(), json!(v));
    }
    rep.add("closed_by_server", "connections lost", Value::Object(m), counts_str(closed));
    if !closed.is_empty() {
        for (cause, ex) in &engine.stats.closed_examples {
            eprintln!("taskcast-load: open connection lost `{cause}`, e.g.: {ex}");
        }
        rep.problem(format!("{} open connections were lost ({})", engine.stats.closed_total(), counts_str(closed)));
    }
}

fn send_phase(
    cfg: &Config,
    engine: &mut Engine,
    rep: &mut Report,
    addr: SocketAddr,
    host_header: &str,
) -> Result<(), String> {
    let msgs = cfg.msgs;
    let k = cfg.senders.max(1);
    let shared = Arc::new(SendShared::new(msgs));
    engine.start_tracking(msgs, k, shared.clone());
    let tracked = engine.tracked_count();
    let clk = sysinfo::clock_ticks_per_sec();
    let pid = cfg.server_pid;

    let mut tokens = Vec::with_capacity(k);
    for i in 0..k {
        tokens.push(match &cfg.auth {
            Auth::Secret(s) => http::mint_token(s, &format!("load-sender-{i}"))?,
            Auth::Token(t) => t.clone(),
            Auth::Random => return Err("need --secret or --token".into()),
        });
    }
    let cpu_before = pid.and_then(sysinfo::cpu_ticks);
    let own_cpu_before = sysinfo::own_cpu_ms();
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(cfg.timeout);
    let rate = if cfg.mode == Mode::Latency { Some(cfg.rate) } else { None };
    let mut handles = Vec::with_capacity(k);
    for (i, token) in tokens.into_iter().enumerate() {
        let plan = SenderPlan {
            id: i,
            senders: k,
            total_msgs: msgs,
            rate,
            pipeline: cfg.pipeline,
            addr,
            url: cfg.url.clone(),
            host_header: host_header.to_string(),
            token,
            payload: cfg.payload,
            deadline,
        };
        let sh = shared.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("sender-{i}"))
                .spawn(move || http::run_sender(plan, sh))
                .map_err(|e| format!("cannot start sender thread: {e}"))?,
        );
    }

    let expected_nominal = (cfg.conns * msgs) as u64;
    let label = cfg.mode.name();
    let mut cpu_after = None;
    let mut last_uniq = 0u64;
    let completed = engine
        .run(
            deadline,
            &mut |e: &Engine| {
                if shared.stop.load(Ordering::Relaxed) {
                    return true;
                }
                let done = shared.senders_done.load(Ordering::SeqCst) == k
                    && (e.deliveries_complete() || e.open_tracked() == 0);
                if done {
                    cpu_after = pid.and_then(sysinfo::cpu_ticks);
                }
                done
            },
            &mut |e: &Engine| {
                let t = e.tracker.as_ref().expect("tracking");
                let d = t.uniq_total;
                eprintln!(
                    "[{label:<7} {:5.1}s] posts {}/{msgs} (ok {}), delivered {d}/{} ({:.0}/s), clients open {}",
                    t0.elapsed().as_secs_f64(),
                    shared.sent.load(Ordering::Relaxed),
                    shared.accepted.load(Ordering::Relaxed),
                    tracked * msgs,
                    (d - last_uniq) as f64,
                    e.stats.open
                );
                last_uniq = d;
            },
        )
        .map_err(|e| format!("poll failed: {e}"))?;
    let own_cpu_ms = sysinfo::own_cpu_ms() - own_cpu_before;
    if cpu_after.is_none() {
        cpu_after = pid.and_then(sysinfo::cpu_ticks);
    }
    shared.stop.store(true, Ordering::SeqCst);
    let mut results = Vec::with_capacity(k);
    for h in handles {
        results.push(h.join().map_err(|_| "a sender thread panicked".to_string())?);
    }
    let fatal = shared.fatal();
    let timed_out = !completed
        || (fatal.is_none() && (!engine.deliveries_complete() || shared.sent.load(Ordering::Relaxed) < msgs as u64));

    // ---- posts ----
    let sent = shared.sent.load(Ordering::Relaxed);
    let accepted = shared.accepted.load(Ordering::Relaxed);
    let rejected = shared.rejected.load(Ordering::Relaxed);
    let unknown = shared.unknown.load(Ordering::Relaxed);
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let mut bodies: BTreeMap<u16, String> = BTreeMap::new();
    let mut ack = Hist::new();
    let mut sender_errors: Vec<String> = Vec::new();
    let mut reconnects = 0;
    for r in results {
        for (s, c) in r.statuses {
            *statuses.entry(s).or_default() += c;
        }
        for (s, b) in r.bodies {
            bodies.entry(s).or_insert(b);
        }
        ack.merge(&r.ack);
        sender_errors.extend(r.errors);
        reconnects += r.reconnects;
    }
    let send_times: Vec<u64> = shared.send_ns.iter().map(|a| a.load(Ordering::Relaxed)).filter(|&v| v != 0).collect();
    let first_post_ns = send_times.iter().copied().min().unwrap_or(1) - 1;
    let last_post_ns = send_times.iter().copied().max().unwrap_or(1) - 1;
    let send_secs = (last_post_ns - first_post_ns) as f64 / 1e9;
    let status_str: Vec<String> = statuses.iter().map(|(s, c)| format!("{s}: {c}")).collect();
    rep.add(
        "posts",
        "broadcasts posted",
        json!({"wanted": msgs, "sent": sent, "accepted": accepted, "rejected": rejected,
               "unanswered": unknown, "statuses": statuses.iter().map(|(s, c)| (s.to_string(), json!(c))).collect::<Map<_, _>>(),
               "senders": k, "pipeline": cfg.pipeline, "reconnects": reconnects}),
        format!(
            "{sent}/{msgs} sent by {k} sender(s), accepted {accepted}, rejected {rejected}, unanswered {unknown} [{}]",
            status_str.join(", ")
        ),
    );
    if sent > 1 {
        let r = (sent - 1) as f64 / send_secs.max(1e-9);
        rep.add("post_rate", "post rate achieved", json!(r.round()), format!("{r:.1}/s over {send_secs:.2} s"));
    }
    let recipients = shared.recipients.load(Ordering::Relaxed);
    rep.add(
        "recipients_sum",
        "recipients reported",
        json!(recipients),
        format!(
            "{recipients} (sum of `recipients` in 200 responses; {} clients × {accepted} accepted = {})",
            tracked,
            tracked as u64 * accepted
        ),
    );
    if let Some(s) = ack.summary() {
        rep.add("post_ack", "POST response time", s.to_json(), s.line());
    }
    for (s, b) in &bodies {
        eprintln!("taskcast-load: POST /api/broadcast answered {s}: {b}");
    }
    for e in sender_errors.iter().take(10) {
        eprintln!("taskcast-load: {e}");
    }
    if rejected > 0 {
        let why: Vec<String> = statuses
            .iter()
            .filter(|(s, _)| **s != 200)
            .map(|(s, c)| format!("{c}× {s} {}", bodies.get(s).map(String::as_str).unwrap_or("")))
            .collect();
        rep.problem(format!("{rejected} broadcasts were rejected by the server: {}", why.join("; ")));
    }
    if unknown > 0 {
        rep.problem(format!("{unknown} broadcasts got no answer"));
    }
    if reconnects > 0 {
        rep.problem(format!("sender connections were re-established {reconnects} times"));
    }
    if let Some(f) = &fatal {
        eprintln!("taskcast-load: {f}");
        rep.problem(f.clone());
    }

    // ---- deliveries ----
    let t = engine.tracker.as_ref().expect("tracking");
    let accepted_mask = t.accepted_mask();
    let all_mask = t.all_mask();
    let counts = engine.client_counts();
    let mut missing_total = 0u64;
    let mut missing_accepted = 0u64;
    let mut incomplete = Vec::new();
    let mut complete = 0usize;
    let mut min_recv = u32::MAX;
    let mut max_recv = 0u32;
    for &(id, open, got) in &counts {
        let (miss, first) = t.missing_for(id, &all_mask);
        missing_total += miss;
        missing_accepted += t.missing_for(id, &accepted_mask).0;
        min_recv = min_recv.min(got);
        max_recv = max_recv.max(got);
        if miss == 0 {
            complete += 1;
        } else if incomplete.len() < 5 {
            incomplete.push(
                json!({"client": id, "open": open, "received": got, "missing": miss, "first_missing_seqs": first}),
            );
        }
    }
    let delivered = t.uniq_total;
    let expected = tracked as u64 * msgs as u64;
    rep.add(
        "delivered",
        "delivered",
        json!(delivered),
        format!(
            "{delivered} / {expected} expected ({tracked} clients × {msgs} msgs{})",
            if expected != expected_nominal {
                format!("; nominal {expected_nominal} for {} clients", cfg.conns)
            } else {
                String::new()
            }
        ),
    );
    rep.json_only("expected", json!(expected));
    rep.json_only("expected_nominal", json!(expected_nominal));
    rep.add(
        "missing",
        "missing",
        json!(missing_total),
        format!(
            "{missing_total} ({missing_accepted} of broadcasts the server accepted, {} of broadcasts not sent or not accepted)",
            missing_total - missing_accepted
        ),
    );
    rep.json_only("missing_accepted", json!(missing_accepted));
    rep.add("duplicates", "duplicates", json!(t.dup), t.dup.to_string());
    rep.add(
        "out_of_order",
        "out of order",
        json!(t.ooo),
        if k > 1 { format!("{} (checked per sender)", t.ooo) } else { t.ooo.to_string() },
    );
    rep.add("unexpected", "unexpected messages", json!(t.unexpected), t.unexpected.to_string());
    rep.add(
        "clients_complete",
        "clients complete",
        json!(complete),
        format!(
            "{complete}/{} (received per client: min {}, max {max_recv})",
            counts.len(),
            if counts.is_empty() { 0 } else { min_recv }
        ),
    );
    if !incomplete.is_empty() {
        for i in &incomplete {
            eprintln!("taskcast-load: incomplete client: {i}");
        }
        rep.json_only("incomplete_examples", Value::Array(incomplete));
    }
    report_closed(engine, rep);

    if sent < msgs as u64 {
        rep.problem(format!("only {sent} of {msgs} broadcasts were sent before the phase ended"));
    }
    if timed_out {
        let msg = format!(
            "timed out after {:.1} s with {delivered} of {expected} deliveries ({missing_accepted} deliveries of accepted broadcasts missing)",
            t0.elapsed().as_secs_f64()
        );
        eprintln!("taskcast-load: {msg}");
        rep.problem(msg);
    } else if missing_accepted > 0 {
        rep.problem(format!("{missing_accepted} deliveries of accepted broadcasts missing"));
    }
    if delivered < expected && !timed_out && missing_accepted == 0 && rejected + unknown == 0 {
        rep.problem(format!("only {delivered} of {expected} deliveries"));
    }
    if t.dup > 0 {
        rep.problem(format!("{} duplicate deliveries", t.dup));
    }
    if t.ooo > 0 {
        rep.problem(format!("{} out-of-order deliveries", t.ooo));
    }

    if let Some(s) = engine.tracker.as_ref().expect("tracking").lat.summary() {
        rep.add("latency", "delivery latency", s.to_json(), s.line());
    }

    let t = engine.tracker.as_ref().expect("tracking");
    let base = shared.base;
    if let Some(last) = t.last_delivery {
        let first_post = base + Duration::from_nanos(first_post_ns);
        let secs = last.saturating_duration_since(first_post).as_secs_f64();
        let rate = delivered as f64 / secs.max(1e-9);
        rep.add("duration_secs", "first POST → last delivery", json!(round3(secs)), format!("{secs:.3} s"));
        rep.add("deliveries_per_sec", "deliveries/s", json!(rate.round()), format!("{rate:.0}"));
    }
    if let (Some(b), Some(a)) = (pid.and(cpu_before), cpu_after) {
        let ms = (a.saturating_sub(b)) as f64 * 1000.0 / clk as f64;
        let per_k = if delivered > 0 { ms / (delivered as f64 / 1000.0) } else { 0.0 };
        rep.add(
            "server_cpu_ms",
            "server CPU time",
            json!(round3(ms)),
            format!("{ms:.0} ms (utime+stime, {clk} ticks/s)"),
        );
        rep.add("server_cpu_ms_per_1k", "server CPU per 1k deliveries", json!(round3(per_k)), format!("{per_k:.3} ms"));
        if let Some(r) = pid.and_then(sysinfo::rss_kib) {
            rep.add("server_rss_kib", "server RSS", json!(r), kib(r));
        }
    }
    rep.add(
        "client_cpu_ms",
        "load tool CPU time",
        json!(round3(own_cpu_ms)),
        format!("{own_cpu_ms:.0} ms ({:.3} ms per 1k deliveries)", own_cpu_ms / (delivered.max(1) as f64 / 1000.0)),
    );
    rep.add("pings_answered", "pings answered", json!(engine.stats.pongs), engine.stats.pongs.to_string());
    Ok(())
}
