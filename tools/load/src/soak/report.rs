//! The soak's summary: information rows and the table of checks (table or
//! JSON). The verdicts themselves are computed in `verdict.rs`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::instance::{self, Instance};
use super::{Run, mib, warmup_secs};
use crate::http::{self, ST_ACCEPTED};
use crate::roles::{ROLES, Role};
use crate::stats::round3;
use crate::sysinfo;
use crate::verdict::{self, Check};

/// What the run measured besides the clients' records.
pub(super) struct ReportInputs {
    pub(super) sender: Option<http::SenderResult>,
    pub(super) main_end_secs: f64,
    pub(super) cpu: Option<f64>,
    pub(super) own_cpu_ms: f64,
    /// Seconds the server's / the load tool's main thread waited for a CPU.
    pub(super) server_cpu_wait: Option<f64>,
    pub(super) own_cpu_wait: Option<f64>,
}

/// Totals of the healthy clients' scores.
#[derive(Default)]
struct HealthyScore {
    expected: u64,
    delivered: u64,
    /// Broadcasts missing or skipped.
    failures: u64,
    gaps: u64,
    /// Duplicates and out-of-order deliveries.
    disorder: u64,
    failed_clients: u64,
    /// The first few incomplete clients, described.
    examples: Vec<String>,
}

/// The summary: information rows, then the checks.
#[derive(Default)]
pub(super) struct SoakReport {
    info: Vec<(String, String)>,
    json: Map<String, Value>,
    checks: Vec<Check>,
}

impl SoakReport {
    fn info(&mut self, key: &str, label: &str, value: Value, shown: String) {
        self.json.insert(key.into(), value);
        self.info.push((label.into(), shown));
    }

    /// A row shown in the table only (its data is in another JSON field).
    fn row(&mut self, label: &str, shown: String) {
        self.info.push((label.into(), shown));
    }

    fn check(&mut self, c: Check) {
        self.checks.push(c);
    }

    pub(super) fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.pass != Some(false))
    }

    pub(super) fn print(mut self, as_json: bool) {
        use std::io::Write;
        let ok = self.ok();
        let out = std::io::stdout();
        let mut out = out.lock();
        if as_json {
            let checks: Vec<Value> =
                self.checks.iter().map(|c| json!({"check": c.name, "result": c.label(), "detail": c.detail})).collect();
            self.json.insert("checks".into(), Value::Array(checks));
            self.json.insert("ok".into(), Value::Bool(ok));
            let _ = writeln!(out, "{}", Value::Object(self.json));
            return;
        }
        let w = self.info.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        for (l, v) in &self.info {
            let _ = writeln!(out, "{l:<w$}  {v}");
        }
        let _ = writeln!(out);
        let w = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let _ = writeln!(out, "{:>2}  {:<w$}  {:<6}  detail", "#", "check", "result");
        for (i, c) in self.checks.iter().enumerate() {
            let _ = writeln!(out, "{:>2}  {:<w$}  {:<6}  {}", i + 1, c.name, c.label(), c.detail);
        }
        let failed = self.checks.iter().filter(|c| c.pass == Some(false)).count();
        if ok {
            let _ = writeln!(out, "\nresult: PASS ({} checks)", self.checks.len());
        } else {
            let _ = writeln!(out, "\nresult: FAIL ({failed} of {} checks failed)", self.checks.len());
        }
    }
}

impl Run<'_> {
    /// The whole summary, in the order it is printed.
    pub(super) fn report(&mut self, rep: &mut SoakReport, inp: ReportInputs) {
        if let Some(a) = &self.abort {
            eprintln!("taskcast-load: soak aborted: {a}");
        }
        self.report_run(rep, &inp);
        self.report_connections(rep);
        self.report_broadcasts(rep, &inp);
        self.report_deliveries(rep);
        if self.inst.len() > 1 {
            self.report_per_instance(rep);
        }
        for i in 0..self.inst.len() {
            self.report_rss(rep, i);
        }
        for i in 0..self.inst.len() {
            self.report_settle(rep, i);
        }
        for i in 0..self.inst.len() {
            self.report_log(rep, i);
        }
        self.report_misbehaving(rep);
        for i in 0..self.inst.len() {
            self.report_exit(rep, i);
        }
        if self.redis.is_some() {
            self.report_redis(rep);
        }
        self.report_cost(rep, &inp);
    }

    /// "server", or "instance A" in a cluster soak.
    fn who(&self, i: usize) -> String {
        instance::label(i, self.inst.len())
    }

    fn key(&self, key: &str, i: usize) -> String {
        instance::json_key(key, i, self.inst.len())
    }

    /// The server, its settings and the run's length.
    fn report_run(&mut self, rep: &mut SoakReport, inp: &ReportInputs) {
        let sa = self.sa;
        let spawned = self.inst[0].server.spawned();
        for (i, inst) in self.inst.iter().enumerate() {
            let (addr, server) = (inst.addr, &inst.server);
            rep.info(
                &self.key("server", i),
                &self.who(i),
                json!({"addr": addr.to_string(), "pid": server.pid, "started_here": spawned,
                       "log": server.log_path.as_ref().map(|p| p.display().to_string())}),
                format!(
                    "{addr} (pid {}, {}){}",
                    server.pid,
                    if spawned { "started here" } else { "attached" },
                    server.log_path.as_ref().map_or(String::new(), |p| format!(", log {}", p.display()))
                ),
            );
        }
        if let Some(r) = &self.redis {
            rep.info(
                "redis",
                "redis-server",
                json!({"port": r.port, "pid": r.pid, "log": r.log_path.display().to_string()}),
                format!(
                    "127.0.0.1:{} (pid {}, started here, no persistence), log {}",
                    r.port,
                    r.pid,
                    r.log_path.display()
                ),
            );
        }
        rep.info(
            "settings",
            "server settings",
            json!({"ping_interval": sa.ping_interval, "pong_wait": sa.pong_wait,
                   "send_queue_limit": sa.send_queue_limit, "max_message_bytes": sa.max_message_bytes}),
            format!(
                "PING_INTERVAL_SECS={} PONG_WAIT_SECS={} SEND_QUEUE_LIMIT={} MAX_MESSAGE_BYTES={}{}",
                sa.ping_interval,
                sa.pong_wait,
                sa.send_queue_limit,
                sa.max_message_bytes,
                if spawned { " MAX_CONNECTIONS_PER_IP=0 BROADCAST_RATE_PER_SEC=0 RUST_LOG=info" } else { "" }
            ) + if self.redis.is_some() { " REDIS_URL=(above) REDIS_PREFIX=taskcast-soak-PID" } else { "" },
        );
        rep.info(
            "duration_secs",
            "duration",
            json!({"main": sa.duration, "main_and_wind_down": round3(inp.main_end_secs), "total": round3(self.t0.elapsed().as_secs_f64())}),
            format!(
                "main phase {:.0} s, with wind-down {:.1} s, whole run {:.1} s",
                sa.duration,
                inp.main_end_secs,
                self.t0.elapsed().as_secs_f64()
            ),
        );
    }

    /// The connections made, by kind; the healthy clients among them.
    fn report_connections(&mut self, rep: &mut SoakReport) {
        let sa = self.sa;
        let b = &self.book;
        let mut per_role = Map::new();
        let mut parts = Vec::new();
        for r in ROLES {
            let n: u64 = b.outcomes[r.index()].values().sum();
            per_role.insert(r.name().into(), json!(n));
            if n > 0 {
                parts.push(format!("{} {n}", r.name()));
            }
        }
        let started = self.engine.stats.started as u64;
        rep.info(
            "connections",
            "connections",
            json!({"started": started, "opened": self.engine.stats.opened_total, "ended": b.ended,
                   "left_cleanly": self.engine.stats.left, "by_role": per_role,
                   "peak_clients": self.peak_clients}),
            format!(
                "{started} made, {} opened, {} ended ({} by our close handshake); peak {} at once; by kind: {}",
                self.engine.stats.opened_total,
                b.ended,
                self.engine.stats.left,
                self.peak_clients,
                parts.join(", ")
            ),
        );
        rep.info(
            "healthy",
            "healthy clients",
            json!({"base": self.base_added, "churn": self.churn_started, "churn_rate": sa.churn_rate,
                   "life_secs": [sa.life_min, sa.life_max]}),
            format!(
                "{} base + {} churn ({}/s, living {}-{} s); {} ended with a record",
                self.base_added,
                self.churn_started,
                sa.churn_rate,
                sa.life_min,
                sa.life_max,
                b.healthy.len()
            ),
        );
    }

    /// What the one sender posted and how the server answered.
    fn report_broadcasts(&mut self, rep: &mut SoakReport, inp: &ReportInputs) {
        let sh = &self.shared;
        let sent = sh.sent.load(Ordering::Relaxed);
        let accepted = sh.accepted.load(Ordering::Relaxed);
        let rejected = sh.rejected.load(Ordering::Relaxed);
        let unknown = sh.unknown.load(Ordering::Relaxed);
        let statuses = inp.sender.as_ref().map(|s| s.statuses.clone()).unwrap_or_default();
        let status_str: Vec<String> = statuses.iter().map(|(s, c)| format!("{s}: {c}")).collect();
        rep.info(
            "broadcasts",
            "broadcasts",
            json!({"sent": sent, "accepted": accepted, "rejected": rejected, "unanswered": unknown,
                   "rate": self.cfg.rate, "payload": self.cfg.payload,
                   "statuses": statuses.iter().map(|(s, c)| (s.to_string(), json!(c))).collect::<Map<_, _>>()}),
            format!(
                "{sent} posted at {}/s ({} B data), {accepted} accepted, {rejected} rejected, {unknown} unanswered [{}]",
                self.cfg.rate,
                self.cfg.payload,
                status_str.join(", ")
            ),
        );
        if let Some(s) = &inp.sender {
            for (st, body) in &s.bodies {
                eprintln!("taskcast-load: POST /api/broadcast answered {st}: {body}");
            }
            for e in s.errors.iter().take(10) {
                eprintln!("taskcast-load: {e}");
            }
        }
    }

    /// Check 1: every healthy client got every broadcast of its window, in order, in time.
    fn report_deliveries(&mut self, rep: &mut SoakReport) {
        let sa = self.sa;
        let b = &self.book;
        let HealthyScore { expected, delivered, failures, gaps, disorder, failed_clients, examples } =
            self.score_healthy(None);
        for e in &examples {
            eprintln!("taskcast-load: incomplete healthy client: {e}");
        }
        let soak = self.engine.soak.as_ref().expect("soak track");
        let raw = soak.delivered;
        let unexpected = soak.unexpected;
        let lat = soak.latency.summary();
        rep.info(
            "deliveries",
            "deliveries (healthy)",
            json!({"expected": expected, "delivered": delivered, "received_total": raw, "failures": failures,
                   "holes": gaps, "disorder": disorder, "clients": b.healthy.len(), "clients_failed": failed_clients,
                   "unexpected_messages": unexpected}),
            format!(
                "{delivered} / {expected} expected over {} clients ({raw} received in all, incl. outside the windows); unreadable messages {unexpected}",
                b.healthy.len()
            ),
        );
        if let Some(l) = &lat {
            rep.info("latency", "delivery latency (healthy)", l.to_json(), l.line());
        }
        rep.check(Check::new(
            "healthy clients got every broadcast, in order",
            self.abort.is_none() && failures == 0 && disorder == 0 && expected > 0 && unexpected == 0,
            format!(
                "delivered {delivered}/{expected} expected; missing or skipped {failures}, duplicate/out of order {disorder} ({failed_clients} of {} clients incomplete)",
                b.healthy.len()
            ),
        ));
        self.report_kept(rep);
        let p99 = lat.as_ref().map(|l| l.p99);
        rep.check(Check::new(
            "no one delayed (healthy p99 latency)",
            p99.is_some_and(|p| p <= sa.latency_limit_ms),
            match &lat {
                Some(l) => format!("p99 {:.1} ms, max {:.1} ms; limit p99 {} ms", l.p99, l.max, sa.latency_limit_ms),
                None => "no deliveries".into(),
            },
        ));
    }

    /// Scores every healthy client's record (or only those on instance
    /// `only`) against the broadcasts sent while it was connected (module
    /// `verdict`).
    fn score_healthy(&self, only: Option<usize>) -> HealthyScore {
        let sh = &self.shared;
        let n = sh.send_ns.len();
        let mut rejected_seqs: Vec<u64> = (0..n)
            .filter(|&s| {
                let st = sh.status[s].load(Ordering::Relaxed);
                st != ST_ACCEPTED && sh.send_ns[s].load(Ordering::Relaxed) != 0
            })
            .map(|s| s as u64)
            .collect();
        rejected_seqs.sort_unstable();
        let ns = |t: Instant| t.saturating_duration_since(sh.base).as_nanos() as u64 + 1;
        let send = |s: usize| sh.send_ns[s].load(Ordering::Relaxed);
        let ack = |s: usize| sh.ack_ns[s].load(Ordering::Relaxed);
        let mut t = HealthyScore::default();
        let grace = self.delivery_grace();
        for h in self.book.healthy.iter().filter(|h| only.is_none_or(|i| h.instance == i)) {
            let until = expected_until(h.opened, h.until, grace);
            let w = verdict::expected_window(n, send, ack, ns(h.opened), ns(until));
            let s = verdict::score(&h.seqs, w, &rejected_seqs);
            t.expected += s.expected;
            t.delivered += s.delivered;
            t.failures += s.failures;
            t.gaps += s.gaps;
            t.disorder += s.disorder;
            if s.failures > 0 || s.disorder > 0 {
                t.failed_clients += 1;
                if t.examples.len() < 5 {
                    t.examples.push(format!(
                        "window {}..{}, received {:?}..{} ({} msgs), holes {:?}, {} failures",
                        w.0, w.1, h.seqs.first, h.seqs.last, h.seqs.count, h.seqs.gaps, s.failures
                    ));
                }
            }
        }
        t
    }

    /// How long before a client left a broadcast may have been answered
    /// and still not reach it. None with one server: it queues a broadcast
    /// to every client before answering the POST. In a cluster the answer
    /// comes once Redis has stored the message; every instance, the one
    /// posted to included, delivers what arrives on pub/sub, moments later.
    /// The p99 latency limit bounds those moments (a later delivery fails
    /// the latency check anyway).
    fn delivery_grace(&self) -> Option<Duration> {
        (self.inst.len() > 1).then(|| Duration::from_secs_f64(self.sa.latency_limit_ms / 1000.0))
    }

    /// Cluster check: the healthy clients of every instance, each scored
    /// on its own (every broadcast, strictly in seq order, which is the
    /// order Redis stored them in: the sender posts one at a time).
    fn report_per_instance(&mut self, rep: &mut SoakReport) {
        let mut parts = Vec::new();
        let mut all_ok = self.abort.is_none();
        let mut per = Map::new();
        for i in 0..self.inst.len() {
            let s = self.score_healthy(Some(i));
            let clients = self.book.healthy.iter().filter(|h| h.instance == i).count();
            all_ok &= s.failures == 0 && s.disorder == 0 && s.expected > 0;
            per.insert(
                instance::letter(i),
                json!({"clients": clients, "expected": s.expected, "delivered": s.delivered,
                       "failures": s.failures, "disorder": s.disorder, "clients_failed": s.failed_clients}),
            );
            parts.push(format!(
                "{}: {}/{} over {clients} clients, missing {}, dup/out of order {}",
                instance::letter(i),
                s.delivered,
                s.expected,
                s.failures,
                s.disorder
            ));
        }
        rep.json.insert("deliveries_per_instance".into(), Value::Object(per));
        let grace = self.delivery_grace().map_or(0.0, |g| g.as_secs_f64());
        rep.check(Check::new(
            "every instance delivered every broadcast in Redis order",
            all_ok,
            format!(
                "{} (a broadcast answered < {grace} s before a client left is not required of it)",
                parts.join("; ")
            ),
        ));
    }

    /// Every client connected, and no healthy one was dropped.
    fn report_kept(&self, rep: &mut SoakReport) {
        let b = &self.book;
        let lost = b.healthy.iter().filter(|h| h.lost).count();
        let hs_fail: u64 = b.handshake_failures.values().sum();
        let mut lost_detail = format!(
            "{} of {} healthy left by close handshake; {lost} lost",
            b.good[Role::Healthy.index()],
            b.healthy.len()
        );
        if lost > 0 {
            lost_detail += &format!(" ({:?})", b.outcomes[0]);
        }
        lost_detail += &format!("; handshakes failed {hs_fail}");
        if hs_fail > 0 {
            lost_detail += &format!(" {:?}", b.handshake_failures);
        }
        rep.check(Check::new("every client connected; healthy ones were kept", lost == 0 && hs_fail == 0, lost_detail));
    }

    /// Check 2: server (instance `i`) RSS flat after the warm-up.
    fn report_rss(&mut self, rep: &mut SoakReport, i: usize) {
        let sa = self.sa;
        let warm = warmup_secs(sa);
        let who = self.who(i);
        let inst = &self.inst[i];
        match verdict::rss_flat(&inst.samples.rss, warm, sa.duration, sa.rss_tol_pct, sa.rss_tol_kib) {
            Some(v) => {
                let end = inst.samples.rss.last().map(|s| s.1);
                rep.info(
                    &self.key("rss_kib", i),
                    &format!("{who} RSS"),
                    json!({"start": inst.rss_start, "first_after_warmup": v.first.1, "first_at_secs": round3(v.first.0),
                           "last": v.last.1, "last_at_secs": round3(v.last.0), "peak": v.peak.1, "peak_at_secs": round3(v.peak.0),
                           "limit": v.limit, "slope_kib_per_min": round3(v.slope_kib_per_min), "after_all_left": end,
                           "samples": inst.samples.rss.len()}),
                    format!(
                        "start {}, first after warm-up {} (t={:.0} s), last {} (t={:.0} s), peak {} (t={:.0} s), after all left {}; trend {:+.0} KiB/min",
                        inst.rss_start.map_or("?".into(), mib),
                        mib(v.first.1),
                        v.first.0,
                        mib(v.last.1),
                        v.last.0,
                        mib(v.peak.1),
                        v.peak.0,
                        end.map_or("?".into(), mib),
                        v.slope_kib_per_min
                    ),
                );
                rep.check(Check::new(
                    &format!("{who} RSS flat after warm-up"),
                    v.pass,
                    format!(
                        "first {} KiB (t={:.0} s), last {} KiB (t={:.0} s), peak {} KiB; limit {} KiB = first + {}% + {} KiB",
                        v.first.1, v.first.0, v.last.1, v.last.0, v.peak.1, v.limit, sa.rss_tol_pct, sa.rss_tol_kib
                    ),
                ));
            }
            None => rep.check(Check::new(
                &format!("{who} RSS flat after warm-up"),
                false,
                format!("no RSS samples after the warm-up ({warm:.0} s)"),
            )),
        }
    }

    /// Checks 3 and 4: fds and /health back to their baseline.
    fn report_settle(&mut self, rep: &mut SoakReport, i: usize) {
        let sa = self.sa;
        let who = self.who(i);
        let inst: &Instance = &self.inst[i];
        let (st, fd_baseline) = (&inst.settle, inst.fd_baseline);
        rep.info(
            &self.key("fds", i),
            &format!("{who} fds"),
            json!({"baseline": fd_baseline, "peak": inst.samples.fds_peak, "end": st.fds, "settled_after_secs": st.fds_at}),
            format!(
                "baseline {}, peak {}, end {}",
                fd_baseline,
                inst.samples.fds_peak,
                st.fds.map_or("?".into(), |n| n.to_string())
            ),
        );
        rep.check(Check::new(
            &format!("{who} fds back to baseline"),
            st.fds.is_some_and(|n| n <= fd_baseline),
            match st.fds_at {
                Some(t) => format!(
                    "baseline {}, end {} ({t:.1} s after the last client left)",
                    fd_baseline,
                    st.fds.unwrap_or(0)
                ),
                None => format!(
                    "baseline {}, still {} after {} s",
                    fd_baseline,
                    st.fds.map_or("?".into(), |n| n.to_string()),
                    sa.settle
                ),
            },
        ));
        rep.json.insert(self.key("connected_clients_end", i), json!(st.health));
        let name = if self.inst.len() > 1 {
            format!("{who} /health connectedClients back to 0")
        } else {
            "/health connectedClients back to 0".into()
        };
        rep.check(Check::new(
            &name,
            st.health == Some(0),
            match (st.health, st.health_at) {
                (Some(0), Some(t)) => format!("0 ({t:.1} s after the last client left)"),
                (Some(c), _) => format!("{c} after {} s", sa.settle),
                (None, _) => "no answer from /health".into(),
            },
        ));
    }

    /// Check 5: no error-level server log lines.
    fn report_log(&mut self, rep: &mut SoakReport, i: usize) {
        let who = self.who(i);
        let name = if self.inst.len() > 1 {
            format!("no error-level log lines ({who})")
        } else {
            "no error-level server log lines".into()
        };
        match &self.inst[i].log {
            Some(log) => {
                let warn_parts: Vec<String> = log.warnings.iter().map(|(t, n)| format!("{n}× {t}")).collect();
                rep.info(
                    &self.key("log", i),
                    &format!("{who} log lines"),
                    json!({"lines": log.lines, "by_level": log.by_level, "warnings": log.warnings, "errors": log.errors,
                           "not_log_records": log.other}),
                    format!(
                        "{} lines: error {}, warn {}, info {}, other {}",
                        log.lines,
                        log.count("ERROR"),
                        log.count("WARN"),
                        log.count("INFO"),
                        log.other
                    ),
                );
                if !warn_parts.is_empty() {
                    rep.row("  warnings by kind", warn_parts.join("; "));
                }
                for l in log.error_lines.iter().chain(&log.other_lines) {
                    eprintln!("taskcast-load: {who} log: {l}");
                }
                let unexpected_w = log.unexpected_warnings();
                let slow_warns = log.server_warnings_containing("too slow");
                let mut d = format!(
                    "error lines {} (expected: none), unexpected output lines {}; warn {} ({slow_warns} slow-consumer, expected)",
                    log.count("ERROR"),
                    log.other,
                    log.count("WARN")
                );
                if !unexpected_w.is_empty() {
                    d += &format!(", other warnings: {unexpected_w:?}");
                }
                rep.check(Check::new(&name, log.unexpected_errors() == 0, d));
            }
            None => rep.check(Check::skip(&name, "the log is only captured with --spawn-server".into())),
        }
    }

    /// Check 6: each misbehaving client got the close the README promises.
    fn report_misbehaving(&mut self, rep: &mut SoakReport) {
        let sa = self.sa;
        let b = &self.book;
        let mut mis = Map::new();
        let mut lines = Vec::new();
        let mut all_ok = true;
        let targets = [
            (Role::Slow, sa.slow),
            (Role::Silent, sa.silent),
            (Role::Oversized, sa.oversized),
            (Role::Binary, sa.invalid),
            (Role::Unmasked, sa.invalid),
            (Role::BadOpcode, sa.invalid),
            (Role::BadUtf8, sa.invalid),
        ];
        for (role, target) in targets {
            let i = role.index();
            let (good, bad) = (b.good[i], b.bad[i]);
            let outcomes = &b.outcomes[i];
            mis.insert(
                role.name().into(),
                json!({"expected": role.expect().label(), "as_expected": good, "otherwise": bad, "outcomes": outcomes,
                       "examples": b.bad_examples[i]}),
            );
            if target == 0 {
                continue;
            }
            // Kinds cycled by --invalid slots need at least 4 slots... or
            // enough respawns: any kind with no run at all is a failure.
            let ok = bad == 0 && good > 0;
            all_ok &= ok;
            let o: Vec<String> = outcomes.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
            lines.push(format!(
                "{} {}/{} {}",
                role.name(),
                good,
                good + bad,
                if o.is_empty() { "(none ran)".into() } else { o.join(" ") }
            ));
            for e in &b.bad_examples[i] {
                eprintln!("taskcast-load: {} client: {e}", role.name());
            }
        }
        let mut extra = Vec::new();
        if let Some((lo, hi)) = b.silent_secs {
            extra.push(format!("silent dropped {lo:.2}-{hi:.2} s after the handshake"));
        }
        if let Some((lo, hi)) = b.slow_received {
            extra.push(format!("slow readers got {lo}-{hi} messages before 1013"));
        }
        if b.stall_timeouts > 0 {
            extra.push(format!("{} slow readers never saw their queue fill", b.stall_timeouts));
        }
        rep.json.insert("misbehaving".into(), Value::Object(mis));
        let mut detail = lines.join("; ");
        if !extra.is_empty() {
            detail += &format!(" [{}]", extra.join("; "));
        }
        rep.check(Check::new("misbehaving clients got the expected close", all_ok, detail));
    }

    /// Check 7: the server stayed up, and exited cleanly on SIGTERM if started here.
    fn report_exit(&mut self, rep: &mut SoakReport, i: usize) {
        let inst = &self.inst[i];
        let spawned = inst.server.spawned();
        let completed = self.abort.is_none();
        let up = self.abort.as_deref().map_or("up for the whole run".to_string(), |a| format!("ABORTED: {a}"));
        let (pass, detail) = match &inst.exit {
            Some(e) if spawned && !inst.died => {
                (completed && e == "exit status: 0", format!("{up}; after SIGTERM: {e}"))
            }
            _ => (completed && !inst.died, up),
        };
        rep.check(Check::new(&format!("{} stayed up (and exited cleanly)", self.who(i)), pass, detail));
    }

    /// Cluster check: Redis stayed up until every instance had exited.
    fn report_redis(&mut self, rep: &mut SoakReport) {
        let Some(r) = &self.redis else { return };
        rep.json.insert("redis_died".into(), json!(self.redis_died));
        if let Some((last, peak)) = self.redis_rss {
            rep.info(
                "redis_rss_kib",
                "redis-server RSS",
                json!({"last": last, "peak": peak}),
                format!("last {}, peak {}", mib(last), mib(peak)),
            );
        }
        let detail = match &self.redis_died {
            Some(e) => format!("redis-server ended during the run ({e}); its log: {}", r.log_path.display()),
            None => format!(
                "up for the whole run (checked every second and after the instances exited; then stopped: {})",
                r.exit.as_deref().unwrap_or("?")
            ),
        };
        rep.check(Check::new("redis-server stayed up", self.redis_died.is_none(), detail));
    }

    /// CPU time, memory and how starved the machine was.
    fn report_cost(&mut self, rep: &mut SoakReport, inp: &ReportInputs) {
        if let Some(ms) = inp.cpu {
            rep.info(
                "server_cpu_ms",
                "server CPU time",
                json!(round3(ms)),
                format!("{:.1} s ({:.1}% of one core)", ms / 1000.0, ms / 10.0 / self.t0.elapsed().as_secs_f64()),
            );
        }
        rep.info(
            "client_cpu_ms",
            "load tool CPU time",
            json!(round3(inp.own_cpu_ms)),
            format!(
                "{:.1} s; load tool RSS {}",
                inp.own_cpu_ms / 1000.0,
                sysinfo::own_rss_kib().map_or("?".into(), mib)
            ),
        );
        // Latency and timing checks mean little on a starved machine: say
        // how starved it was.
        let secs = |v: Option<f64>| v.map_or("?".into(), |s| format!("{s:.1} s"));
        rep.info(
            "contention",
            "CPU contention",
            json!({"server_wait_secs": inp.server_cpu_wait.map(round3), "load_tool_wait_secs": inp.own_cpu_wait.map(round3),
                   "load_tool_longest_turn_ms": self.longest_turn.as_millis() as u64, "loadavg_1min": sysinfo::loadavg()}),
            format!(
                "server waited {} for a CPU, load tool {}; load tool's longest loop turn {} ms (normally ~{} ms); load average {}",
                secs(inp.server_cpu_wait),
                secs(inp.own_cpu_wait),
                self.longest_turn.as_millis(),
                super::SLICE.as_millis(),
                sysinfo::loadavg().map_or("?".into(), |l| format!("{l:.2}"))
            ),
        );
        for i in 0..self.inst.len() {
            let series = self.inst[i].samples.rss.iter().map(|&(t, k)| json!([round3(t), k])).collect();
            rep.json.insert(self.key("rss_series", i), Value::Array(series));
        }
    }
}

/// Until when a healthy client must have received every broadcast
/// answered: when it started leaving, less the cluster's delivery grace
/// (not before it opened).
fn expected_until(opened: Instant, until: Instant, grace: Option<Duration>) -> Instant {
    match grace {
        Some(g) => until.checked_sub(g).unwrap_or(opened).max(opened),
        None => until,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_grace_shortens_the_window_end_only() {
        let opened = Instant::now();
        let until = opened + Duration::from_secs(10);
        assert_eq!(expected_until(opened, until, None), until);
        assert_eq!(expected_until(opened, until, Some(Duration::from_secs(1))), opened + Duration::from_secs(9));
        // a client shorter than the grace is expected nothing, not a negative window
        assert_eq!(expected_until(opened, opened + Duration::from_millis(300), Some(Duration::from_secs(1))), opened);
    }
}
