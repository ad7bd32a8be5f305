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
//! # task app: 10,000 clients in 1,000 projects of 10, each subscribed to its
//! # project; 20,000 publishes to random projects at 1,000/s from 4 senders
//! taskcast-load taskapp --conns 10000 --group 10 --msgs 20000 --rate 1000 \
//!     --server-pid $(pgrep -x taskcast) --secret "$JWT_SECRET"
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
mod send;
mod serverproc;
mod soak;
mod stats;
mod sysinfo;
mod taskapp;
mod verdict;
mod ws;

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::args::{Auth, Config, Mode};
use crate::engine::{ClientAuth, Engine, EngineOptions};
use crate::stats::round3;

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
    warn_fd_limit(cfg, fd_limit);
    let addr = resolve(cfg)?;
    let host_header = cfg.host_header();
    let health_before = preflight(cfg, addr, &host_header)?;

    let mut rep = Report::new();
    rep.add("mode", "mode", json!(cfg.mode.name()), cfg.mode.name().into());
    rep.add("url", "server", json!(cfg.url), format!("{} ({addr})", cfg.url));
    if matches!(cfg.mode, Mode::Latency | Mode::Throughput | Mode::TaskApp) {
        send::describe_load(cfg, &mut rep);
    }
    if let Some(n) = health_before {
        rep.add("server_clients_before", "server clients before", json!(n), n.to_string());
    }
    let rss_before = cfg.server_pid.and_then(sysinfo::rss_kib);
    if let (Some(p), None) = (cfg.server_pid, rss_before) {
        eprintln!("taskcast-load: warning: cannot read /proc/{p}/status (wrong --server-pid?)");
    }

    let mut engine = new_engine(cfg, addr, &host_header)?;
    let overflows_before = sysinfo::listen_overflows();
    let (finished, connect_secs) = connect_all(cfg, &mut engine)?;
    report_connect(cfg, &engine, &mut rep, addr, finished, connect_secs);
    report_listen_overflows(&mut rep, addr, overflows_before);
    connect_problems(cfg, &engine, &mut rep, addr, fd_limit);

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
                send::send_phase(cfg, &mut engine, &mut rep, addr, &host_header)?;
            }
        }
        Mode::TaskApp => {
            if engine.stats.open == 0 {
                rep.problem("no client connected; nothing to measure".into());
            } else {
                taskapp::subscribe_phase(cfg, &mut engine, &mut rep)?;
                taskapp::publish_phase(cfg, &mut engine, &mut rep, addr, &host_header)?;
            }
        }
    }
    engine.close_all();
    let ok = rep.problems.is_empty();
    rep.print(cfg.json);
    Ok(if ok { 0 } else { 1 })
}

fn warn_fd_limit(cfg: &Config, fd_limit: u64) {
    let fds_needed = (cfg.conns + cfg.senders + 32) as u64;
    if fds_needed > fd_limit {
        eprintln!(
            "taskcast-load: warning: {} connections need about {fds_needed} file descriptors but RLIMIT_NOFILE is {fd_limit} (already raised to the hard limit); raise it, e.g. `ulimit -n {}` as root",
            cfg.conns,
            fds_needed.next_power_of_two().max(65536)
        );
    }
}

/// Is the server there at all? Returns its `connectedClients` if it says.
fn preflight(cfg: &Config, addr: SocketAddr, host_header: &str) -> Result<Option<u64>, String> {
    match http::get_health(addr, host_header) {
        Ok((200, body)) => Ok(serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.get("connectedClients").and_then(Value::as_u64))),
        Ok((st, body)) => {
            eprintln!("taskcast-load: warning: GET /health answered HTTP {st}: {body}");
            Ok(None)
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            Err(format!("connection refused by {addr}: is the taskcast server running at {}?", cfg.url))
        }
        Err(e) if engine::is_fd_limit(&e) => Err(format!("out of file descriptors ({e}); raise `ulimit -n`")),
        Err(e) => Err(format!("GET {}/health failed: {e}", cfg.url.trim_end_matches('/'))),
    }
}

fn new_engine(cfg: &Config, addr: SocketAddr, host_header: &str) -> Result<Engine, String> {
    let auth = match &cfg.auth {
        Auth::Secret(s) => {
            http::mint_token(s, "load-probe")?; // fail early on a bad secret format
            ClientAuth::Secret(s.clone())
        }
        Auth::Token(t) => ClientAuth::Token(t.clone()),
        Auth::Random => return Err("need --secret or --token".into()),
    };
    Engine::new(EngineOptions {
        conns: cfg.conns,
        addr,
        host_header: host_header.to_string(),
        auth,
        query_token: cfg.query_token,
        concurrency: cfg.concurrency,
        connect_timeout: Duration::from_secs_f64(cfg.connect_timeout),
        source_ips: source_ips(cfg, addr),
        group: if cfg.mode == Mode::TaskApp { cfg.group } else { 0 },
    })
    .map_err(|e| format!("cannot create the poll: {e}"))
}

fn source_ips(cfg: &Config, addr: SocketAddr) -> usize {
    cfg.source_ips.unwrap_or_else(|| engine::auto_source_ips(addr, cfg.conns))
}

/// Opens every client (bounded by --timeout). Returns whether the loop
/// finished before the deadline and how long the last open took.
fn connect_all(cfg: &Config, engine: &mut Engine) -> Result<(bool, f64), String> {
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
    Ok((finished, connect_secs))
}

fn report_connect(cfg: &Config, engine: &Engine, rep: &mut Report, addr: SocketAddr, finished: bool, secs: f64) {
    let (n, opened) = (cfg.conns, engine.stats.opened_total);
    rep.add("conns_target", "connections wanted", json!(n), n.to_string());
    let source_ips = source_ips(cfg, addr);
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
        format!("{opened} in {secs:.2} s ({:.0}/s)", opened as f64 / secs.max(1e-9)),
    );
    rep.json_only("connect_secs", json!(round3(secs)));
    let mut failed_display = engine.stats.failed.clone();
    if engine.stats.in_flight > 0 {
        // still handshaking when the phase ended (timeout, or aborted early)
        let key = if finished { "aborted" } else { "phase_timeout" };
        failed_display.insert(key.into(), engine.stats.in_flight as u64);
    }
    let not_attempted = engine.not_attempted();
    if not_attempted > 0 {
        failed_display.insert("not_attempted".into(), not_attempted as u64);
    }
    let failed_json: Map<String, Value> = failed_display.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    rep.add("conns_failed", "connections failed", Value::Object(failed_json), counts_str(&failed_display));
    if let Some(s) = engine.stats.handshake.summary() {
        rep.add("handshake", "handshake latency", s.to_json(), s.line());
    }
}

fn report_listen_overflows(rep: &mut Report, addr: SocketAddr, before: Option<u64>) {
    let (Some(b), Some(a)) = (before, sysinfo::listen_overflows()) else { return };
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

/// Clear diagnostics for the common connection failure causes.
fn connect_problems(cfg: &Config, engine: &Engine, rep: &mut Report, addr: SocketAddr, fd_limit: u64) {
    let failed = &engine.stats.failed;
    for (cause, example) in &engine.stats.failure_examples {
        eprintln!("taskcast-load: connection failure `{cause}`, e.g.: {example}");
    }
    let loud = |rep: &mut Report, msg: String| {
        eprintln!("taskcast-load: {msg}");
        rep.problem(msg);
    };
    if failed.contains_key("http_401") {
        let why = match &cfg.auth {
            Auth::Secret(_) | Auth::Random => "--secret (or $JWT_SECRET) does not match the server's JWT_SECRET",
            Auth::Token(_) => "the --token is invalid or expired",
        };
        loud(rep, format!("the server rejected the token (HTTP 401): {why}"));
    }
    if let Some(n) = failed.get("refused") {
        loud(rep, format!("connection refused by {addr}: is the server still running at {}? ({n} refused)", cfg.url));
    }
    if engine.stats.fd_exhausted {
        loud(
            rep,
            format!(
                "out of file descriptors after {} connections (RLIMIT_NOFILE {fd_limit}): raise `ulimit -n` (hard limit) and retry",
                engine.stats.started
            ),
        );
    }
    if engine.stats.ports_exhausted {
        loud(rep, "no free local ports (EADDRNOTAVAIL): widen net.ipv4.ip_local_port_range or wait for TIME_WAIT sockets to expire".into());
    }
    let example = |code: &str| engine.stats.failure_examples.get(code).cloned().unwrap_or_default();
    if let Some(n) = failed.get("http_429") {
        rep.problem(format!(
            "server refused {n} connections with 429 ({}); per-address limit? see --source-ips",
            example("http_429")
        ));
    }
    if let Some(n) = failed.get("http_503") {
        rep.problem(format!("server refused {n} connections with 503 ({})", example("http_503")));
    }
    let opened = engine.stats.opened_total;
    if opened < cfg.conns {
        rep.problem(format!("{} of {} connections did not open", cfg.conns - opened, cfg.conns));
    }
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
