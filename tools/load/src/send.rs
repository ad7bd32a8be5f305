//! The send phase of `latency` and `throughput`: sender threads post the
//! broadcasts while the engine's loop receives them; then the posts, the
//! deliveries and the cost are reported, in that order.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::args::{Auth, Config, Mode};
use crate::engine::Engine;
use crate::http::{self, SendShared, SenderPlan, SenderResult};
use crate::stats::{Hist, round3};
use crate::sysinfo;
use crate::{Report, kib, report_closed};

/// Where the server and the load tool stood when posting began.
struct CpuMark {
    server_ticks: Option<u64>,
    own_ms: f64,
}

/// What the phase ran into, for the reports after it.
struct PhaseEnd {
    t0: Instant,
    completed: bool,
    server_ticks_after: Option<u64>,
    own_cpu_ms: f64,
    fatal: Option<String>,
}

/// The posts' totals the delivery report needs.
struct Posts {
    sent: u64,
    rejected: u64,
    unknown: u64,
    /// Nanoseconds since `SendShared::base` of the first POST written.
    first_post_ns: u64,
}

/// The delivery totals the cost report needs.
struct Deliveries {
    delivered: u64,
}

/// `load` row of the run header: the shape of the load every figure below
/// was produced by.
pub(crate) fn describe_load(cfg: &Config, rep: &mut Report) {
    let rated = cfg.mode == Mode::Latency || (cfg.mode == Mode::TaskApp && cfg.rate > 0.0);
    let rate = if rated { format!(" at {}/s", cfg.rate) } else { String::new() };
    let what = if cfg.mode == Mode::TaskApp {
        format!("publishes to random projects ({} of {} clients each)", cfg.conns / cfg.group, cfg.group)
    } else {
        "broadcasts".to_string()
    };
    rep.add(
        "load",
        "load",
        json!({"senders": cfg.senders, "pipeline": cfg.pipeline, "msgs": cfg.msgs, "payload": cfg.payload,
               "rate": if rated { json!(cfg.rate) } else { Value::Null },
               "projects": if cfg.mode == Mode::TaskApp { json!(cfg.conns / cfg.group) } else { Value::Null },
               "api_key": cfg.api_key.is_some()}),
        format!(
            "{} {what} of {} B{rate} from {} keep-alive sender(s), pipeline {} (requests in flight per sender{})",
            cfg.msgs,
            cfg.payload,
            cfg.senders,
            cfg.pipeline,
            if cfg.pipeline == 1 { ": each POST waits for the previous answer" } else { "" }
        ),
    );
}

pub(crate) fn send_phase(
    cfg: &Config,
    engine: &mut Engine,
    rep: &mut Report,
    addr: SocketAddr,
    host_header: &str,
) -> Result<(), String> {
    let k = cfg.senders.max(1);
    let shared = Arc::new(SendShared::new(cfg.msgs));
    engine.start_tracking(cfg.msgs, k, shared.clone());
    let tokens = sender_tokens(cfg, k)?;
    let mark = CpuMark { server_ticks: cfg.server_pid.and_then(sysinfo::cpu_ticks), own_ms: sysinfo::own_cpu_ms() };
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(cfg.timeout);
    let handles = start_senders(cfg, tokens, addr, host_header, deadline, &shared)?;
    let (completed, server_ticks_after) = receive(cfg, engine, &shared, t0, deadline)?;
    let own_cpu_ms = sysinfo::own_cpu_ms() - mark.own_ms;
    let server_ticks_after = server_ticks_after.or_else(|| cfg.server_pid.and_then(sysinfo::cpu_ticks));
    shared.stop.store(true, Ordering::SeqCst);
    let mut results = Vec::with_capacity(k);
    for h in handles {
        results.push(h.join().map_err(|_| "a sender thread panicked".to_string())?);
    }
    let end = PhaseEnd { t0, completed, server_ticks_after, own_cpu_ms, fatal: shared.fatal() };
    let posts = report_posts(cfg, rep, &shared, engine.tracked_count(), results, &end);
    let deliveries = report_deliveries(cfg, engine, rep, &shared, &posts, &end);
    report_cost(cfg, engine, rep, &mark, &end, &deliveries);
    Ok(())
}

/// One token per sender (`sub` = `load-sender-<i>` when minted; the
/// publisher key when one is given).
pub(crate) fn sender_tokens(cfg: &Config, k: usize) -> Result<Vec<String>, String> {
    (0..k)
        .map(|i| match &cfg.auth {
            _ if cfg.api_key.is_some() => Ok(cfg.api_key.clone().unwrap_or_default()),
            Auth::Secret(s) => http::mint_token(s, &format!("load-sender-{i}")),
            Auth::Token(t) => Ok(t.clone()),
            Auth::Random => Err("need --secret or --token".into()),
        })
        .collect()
}

pub(crate) fn start_senders(
    cfg: &Config,
    tokens: Vec<String>,
    addr: SocketAddr,
    host_header: &str,
    deadline: Instant,
    shared: &Arc<SendShared>,
) -> Result<Vec<JoinHandle<SenderResult>>, String> {
    let k = tokens.len();
    let rate = match cfg.mode {
        Mode::Latency => Some(cfg.rate),
        // taskapp: --rate is for all senders together
        Mode::TaskApp if cfg.rate > 0.0 => Some(cfg.rate / k as f64),
        _ => None,
    };
    let projects = if cfg.mode == Mode::TaskApp { cfg.conns / cfg.group } else { 0 };
    let mut handles = Vec::with_capacity(k);
    for (i, token) in tokens.into_iter().enumerate() {
        let plan = SenderPlan {
            id: i,
            senders: k,
            total_msgs: cfg.msgs,
            rate,
            pipeline: cfg.pipeline,
            addr,
            url: cfg.url.clone(),
            host_header: host_header.to_string(),
            token,
            payload: cfg.payload,
            deadline,
            projects,
        };
        let sh = shared.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("sender-{i}"))
                .spawn(move || http::run_sender(plan, sh))
                .map_err(|e| format!("cannot start sender thread: {e}"))?,
        );
    }
    Ok(handles)
}

/// Runs the receiving loop until every sender is done and every tracked
/// client has everything (or left), or the deadline. Returns whether it
/// finished before the deadline, and the server's CPU ticks at the moment
/// it did (so the teardown is not counted).
fn receive(
    cfg: &Config,
    engine: &mut Engine,
    shared: &SendShared,
    t0: Instant,
    deadline: Instant,
) -> Result<(bool, Option<u64>), String> {
    let (k, msgs, pid) = (cfg.senders.max(1), cfg.msgs, cfg.server_pid);
    let tracked = engine.tracked_count();
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
    Ok((completed, cpu_after))
}

/// The senders' results added up.
#[derive(Default)]
pub(crate) struct Merged {
    statuses: BTreeMap<u16, u64>,
    bodies: BTreeMap<u16, String>,
    pub ack: Hist,
    errors: Vec<String>,
    reconnects: u64,
}

pub(crate) fn merge(results: Vec<SenderResult>) -> Merged {
    let mut m = Merged::default();
    for r in results {
        for (s, c) in r.statuses {
            *m.statuses.entry(s).or_default() += c;
        }
        for (s, b) in r.bodies {
            m.bodies.entry(s).or_insert(b);
        }
        m.ack.merge(&r.ack);
        m.errors.extend(r.errors);
        m.reconnects += r.reconnects;
    }
    m
}

/// What was posted, how the server answered and how fast.
fn report_posts(
    cfg: &Config,
    rep: &mut Report,
    shared: &SendShared,
    tracked: usize,
    results: Vec<SenderResult>,
    end: &PhaseEnd,
) -> Posts {
    let (k, msgs) = (cfg.senders.max(1), cfg.msgs);
    let sent = shared.sent.load(Ordering::Relaxed);
    let accepted = shared.accepted.load(Ordering::Relaxed);
    let rejected = shared.rejected.load(Ordering::Relaxed);
    let unknown = shared.unknown.load(Ordering::Relaxed);
    let m = merge(results);
    let send_times: Vec<u64> = shared.send_ns.iter().map(|a| a.load(Ordering::Relaxed)).filter(|&v| v != 0).collect();
    let first_post_ns = send_times.iter().copied().min().unwrap_or(1) - 1;
    let last_post_ns = send_times.iter().copied().max().unwrap_or(1) - 1;
    let send_secs = (last_post_ns - first_post_ns) as f64 / 1e9;
    let status_str: Vec<String> = m.statuses.iter().map(|(s, c)| format!("{s}: {c}")).collect();
    rep.add(
        "posts",
        "broadcasts posted",
        json!({"wanted": msgs, "sent": sent, "accepted": accepted, "rejected": rejected,
               "unanswered": unknown, "statuses": m.statuses.iter().map(|(s, c)| (s.to_string(), json!(c))).collect::<Map<_, _>>(),
               "senders": k, "pipeline": cfg.pipeline, "reconnects": m.reconnects}),
        format!(
            "{sent}/{msgs} sent by {k} sender(s) (pipeline {}), accepted {accepted}, rejected {rejected}, unanswered {unknown} [{}]",
            cfg.pipeline,
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
            "{recipients} (sum of `recipients` in 200 responses; {tracked} clients × {accepted} accepted = {})",
            tracked as u64 * accepted
        ),
    );
    if let Some(s) = m.ack.summary() {
        // request written → its response read, per POST: what a Server
        // Action waits for (with pipeline > 1 it includes the answers queued
        // ahead of it on the same connection)
        rep.add("post_ack", "POST answer time", s.to_json(), s.line());
    }
    post_problems(rep, &m, rejected, unknown, &end.fatal);
    Posts { sent, rejected, unknown, first_post_ns }
}

pub(crate) fn post_problems(rep: &mut Report, m: &Merged, rejected: u64, unknown: u64, fatal: &Option<String>) {
    for (s, b) in &m.bodies {
        eprintln!("taskcast-load: POST /api/broadcast answered {s}: {b}");
    }
    for e in m.errors.iter().take(10) {
        eprintln!("taskcast-load: {e}");
    }
    if rejected > 0 {
        let why: Vec<String> = m
            .statuses
            .iter()
            .filter(|(s, _)| **s != 200)
            .map(|(s, c)| format!("{c}× {s} {}", m.bodies.get(s).map(String::as_str).unwrap_or("")))
            .collect();
        rep.problem(format!("{rejected} broadcasts were rejected by the server: {}", why.join("; ")));
    }
    if unknown > 0 {
        rep.problem(format!("{unknown} broadcasts got no answer"));
    }
    if m.reconnects > 0 {
        rep.problem(format!("sender connections were re-established {} times", m.reconnects));
    }
    if let Some(f) = fatal {
        eprintln!("taskcast-load: {f}");
        rep.problem(f.clone());
    }
}

/// Per-client completeness over every (client, message) pair.
struct Completeness {
    missing_total: u64,
    missing_accepted: u64,
    complete: usize,
    clients: usize,
    min_recv: u32,
    max_recv: u32,
    incomplete: Vec<Value>,
}

fn completeness(engine: &Engine) -> Completeness {
    let t = engine.tracker.as_ref().expect("tracking");
    let accepted_mask = t.accepted_mask();
    let all_mask = t.all_mask();
    let counts = engine.client_counts();
    let mut c = Completeness {
        missing_total: 0,
        missing_accepted: 0,
        complete: 0,
        clients: counts.len(),
        min_recv: if counts.is_empty() { 0 } else { u32::MAX },
        max_recv: 0,
        incomplete: Vec::new(),
    };
    for &(id, open, got) in &counts {
        let (miss, first) = t.missing_for(id, &all_mask);
        c.missing_total += miss;
        c.missing_accepted += t.missing_for(id, &accepted_mask).0;
        c.min_recv = c.min_recv.min(got);
        c.max_recv = c.max_recv.max(got);
        if miss == 0 {
            c.complete += 1;
        } else if c.incomplete.len() < 5 {
            c.incomplete.push(
                json!({"client": id, "open": open, "received": got, "missing": miss, "first_missing_seqs": first}),
            );
        }
    }
    c
}

/// Delivered, missing, duplicated, out of order; the delivery latency.
fn report_deliveries(
    cfg: &Config,
    engine: &Engine,
    rep: &mut Report,
    shared: &SendShared,
    posts: &Posts,
    end: &PhaseEnd,
) -> Deliveries {
    let (k, msgs) = (cfg.senders.max(1), cfg.msgs);
    let t = engine.tracker.as_ref().expect("tracking");
    let tracked = engine.tracked_count();
    let c = completeness(engine);
    let delivered = t.uniq_total;
    let expected = tracked as u64 * msgs as u64;
    let expected_nominal = (cfg.conns * msgs) as u64;
    let nominal = if expected != expected_nominal {
        format!("; nominal {expected_nominal} for {} clients", cfg.conns)
    } else {
        String::new()
    };
    rep.add(
        "delivered",
        "delivered",
        json!(delivered),
        format!("{delivered} / {expected} expected ({tracked} clients × {msgs} msgs{nominal})"),
    );
    rep.json_only("expected", json!(expected));
    rep.json_only("expected_nominal", json!(expected_nominal));
    rep.add(
        "missing",
        "missing",
        json!(c.missing_total),
        format!(
            "{} ({} of broadcasts the server accepted, {} of broadcasts not sent or not accepted)",
            c.missing_total,
            c.missing_accepted,
            c.missing_total - c.missing_accepted
        ),
    );
    rep.json_only("missing_accepted", json!(c.missing_accepted));
    rep.add("duplicates", "duplicates", json!(t.dup), t.dup.to_string());
    let ooo = if k > 1 { format!("{} (checked per sender)", t.ooo) } else { t.ooo.to_string() };
    rep.add("out_of_order", "out of order", json!(t.ooo), ooo);
    rep.add("unexpected", "unexpected messages", json!(t.unexpected), t.unexpected.to_string());
    rep.add(
        "clients_complete",
        "clients complete",
        json!(c.complete),
        format!("{}/{} (received per client: min {}, max {})", c.complete, c.clients, c.min_recv, c.max_recv),
    );
    if !c.incomplete.is_empty() {
        for i in &c.incomplete {
            eprintln!("taskcast-load: incomplete client: {i}");
        }
        rep.json_only("incomplete_examples", Value::Array(c.incomplete.clone()));
    }
    report_closed(engine, rep);
    delivery_problems(cfg, engine, rep, posts, end, &c, expected);
    if let Some(s) = t.lat.summary() {
        rep.add("latency", "delivery latency", s.to_json(), s.line());
    }
    if let Some(last) = t.last_delivery {
        let first_post = shared.base + Duration::from_nanos(posts.first_post_ns);
        let secs = last.saturating_duration_since(first_post).as_secs_f64();
        let rate = delivered as f64 / secs.max(1e-9);
        rep.add("duration_secs", "first POST → last delivery", json!(round3(secs)), format!("{secs:.3} s"));
        rep.add("deliveries_per_sec", "deliveries/s", json!(rate.round()), format!("{rate:.0}"));
    }
    Deliveries { delivered }
}

fn delivery_problems(
    cfg: &Config,
    engine: &Engine,
    rep: &mut Report,
    posts: &Posts,
    end: &PhaseEnd,
    c: &Completeness,
    expected: u64,
) {
    let msgs = cfg.msgs;
    let t = engine.tracker.as_ref().expect("tracking");
    let delivered = t.uniq_total;
    let timed_out =
        !end.completed || (end.fatal.is_none() && (!engine.deliveries_complete() || posts.sent < msgs as u64));
    if posts.sent < msgs as u64 {
        rep.problem(format!("only {} of {msgs} broadcasts were sent before the phase ended", posts.sent));
    }
    if timed_out {
        let msg = format!(
            "timed out after {:.1} s with {delivered} of {expected} deliveries ({} deliveries of accepted broadcasts missing)",
            end.t0.elapsed().as_secs_f64(),
            c.missing_accepted
        );
        eprintln!("taskcast-load: {msg}");
        rep.problem(msg);
    } else if c.missing_accepted > 0 {
        rep.problem(format!("{} deliveries of accepted broadcasts missing", c.missing_accepted));
    }
    if delivered < expected && !timed_out && c.missing_accepted == 0 && posts.rejected + posts.unknown == 0 {
        rep.problem(format!("only {delivered} of {expected} deliveries"));
    }
    if t.dup > 0 {
        rep.problem(format!("{} duplicate deliveries", t.dup));
    }
    if t.ooo > 0 {
        rep.problem(format!("{} out-of-order deliveries", t.ooo));
    }
}

/// Server and load tool CPU time, per 1,000 deliveries.
fn report_cost(cfg: &Config, engine: &Engine, rep: &mut Report, mark: &CpuMark, end: &PhaseEnd, d: &Deliveries) {
    let pid = cfg.server_pid;
    let clk = sysinfo::clock_ticks_per_sec();
    if let (Some(b), Some(a)) = (pid.and(mark.server_ticks), end.server_ticks_after) {
        let ms = (a.saturating_sub(b)) as f64 * 1000.0 / clk as f64;
        let per_k = if d.delivered > 0 { ms / (d.delivered as f64 / 1000.0) } else { 0.0 };
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
    let own = end.own_cpu_ms;
    rep.add(
        "client_cpu_ms",
        "load tool CPU time",
        json!(round3(own)),
        format!("{own:.0} ms ({:.3} ms per 1k deliveries)", own / (d.delivered.max(1) as f64 / 1000.0)),
    );
    rep.add("pings_answered", "pings answered", json!(engine.stats.pongs), engine.stats.pongs.to_string());
}
