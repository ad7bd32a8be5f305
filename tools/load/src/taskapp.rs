//! `taskapp`: the load a task-management app puts on the server, rather
//! than a firehose to everyone.
//!
//! N clients in projects of `--group` (client i is `load-<i>`, member of
//! `project:<i / group>`): each is granted its project in its token's
//! `channels` claim, subscribes to it once open, and is (as every
//! connection) in its own `user:load-<i>` channel. Publishers post
//! `{"type":"task_updated","channel":"project:<p>","data":{"seq":…}}` to
//! projects picked at random (`http::project_of`), at `--rate` publishes
//! per second or as fast as the answers come (`--pipeline 1`: a Server
//! Action waits for each answer).
//!
//! Checked per delivery: it is for the client's own project (no message
//! reaches a tab that should not see it), its offset follows the previous
//! one exactly (nothing lost, doubled or reordered), and at the end every
//! client has every accepted publish to its project. Reported: publishes
//! per second, publish-to-delivery latency (POST written → frame read),
//! POST answer time, and the server's CPU per publish and per delivery.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::args::Config;
use crate::engine::Engine;
use crate::http::{self, ST_ACCEPTED, SendShared};
use crate::stats::{Hist, round3};
use crate::ws::{find_seq, find_uint_after};
use crate::{Report, send, sysinfo};

/// Examples of each kind of problem kept for the report.
const EXAMPLES: usize = 5;

/// What the receiving loop records (see the module doc).
pub struct TaskTrack {
    pub group: usize,
    /// Set when publishing starts (messages before it are unexpected).
    pub shared: Option<Arc<SendShared>>,
    /// Per client: the offset its next project message must carry (0: not
    /// subscribed yet).
    next_offset: Vec<u64>,
    /// Per client: project messages received.
    received: Vec<u32>,
    pub subscribed: usize,
    /// Subscribe refusals and other `error` messages.
    pub refused: u64,
    pub deliveries: u64,
    /// A message for a channel the client is not in, or a publish to
    /// another project.
    pub wrong_channel: u64,
    /// Offsets skipped (messages lost) and offsets not past the last one
    /// (doubled or reordered).
    pub gaps: u64,
    pub repeats: u64,
    /// Messages that are none of the above (no channel, offset or seq).
    pub unexpected: u64,
    pub latency: Hist,
    pub last_delivery: Option<Instant>,
    pub examples: Vec<String>,
}

impl TaskTrack {
    pub fn new(conns: usize, group: usize) -> TaskTrack {
        TaskTrack {
            group,
            shared: None,
            next_offset: vec![0; conns],
            received: vec![0; conns],
            subscribed: 0,
            refused: 0,
            deliveries: 0,
            wrong_channel: 0,
            gaps: 0,
            repeats: 0,
            unexpected: 0,
            latency: Hist::new(),
            last_delivery: None,
            examples: Vec::new(),
        }
    }

    /// The channel client `id` subscribes to.
    pub fn project_channel(&self, id: usize) -> String {
        format!("project:{}", id / self.group)
    }

    fn example(&mut self, what: String) {
        if self.examples.len() < EXAMPLES {
            self.examples.push(what);
        }
    }

    /// One text message to client `id`.
    pub fn on_message(&mut self, id: usize, msg: &[u8], now: Instant) {
        let own = self.project_channel(id);
        if msg.starts_with(br#"{"type":"subscribed""#) {
            match (channel_of(msg), find_uint_after(msg, b"\"offset\":")) {
                (Some(c), Some(offset)) if c == own.as_bytes() && self.next_offset[id] == 0 => {
                    self.next_offset[id] = offset + 1;
                    self.subscribed += 1;
                }
                _ => {
                    self.unexpected += 1;
                    self.example(format!("client {id}: {}", String::from_utf8_lossy(msg)));
                }
            }
            return;
        }
        if msg.starts_with(br#"{"type":"error""#) {
            self.refused += 1;
            self.example(format!("client {id}: {}", String::from_utf8_lossy(msg)));
            return;
        }
        let (Some(channel), Some(offset), Some(seq)) =
            (channel_of(msg), find_uint_after(msg, b"\"offset\":"), find_seq(msg))
        else {
            self.unexpected += 1;
            return;
        };
        let projects = self.received.len() / self.group;
        if channel != own.as_bytes() || http::project_of(seq, projects) != id / self.group {
            self.wrong_channel += 1;
            self.example(format!("client {id} ({own}) got seq {seq} on {}", String::from_utf8_lossy(channel)));
            return;
        }
        let want = self.next_offset[id];
        if want == 0 {
            self.unexpected += 1;
            self.example(format!("client {id}: a message before its subscribe was answered"));
            return;
        }
        if offset < want {
            self.repeats += 1;
            self.example(format!("client {id}: offset {offset} after {}", want.saturating_sub(1)));
            return;
        }
        if offset > want {
            self.gaps += offset - want;
            self.example(format!("client {id}: offset {offset}, expected {want}"));
        }
        self.next_offset[id] = offset + 1;
        self.received[id] += 1;
        self.deliveries += 1;
        self.last_delivery = Some(now);
        if let Some(sh) = &self.shared
            && let Some(sent) = sh.send_ns.get(seq as usize).map(|a| a.load(Ordering::Acquire))
            && sent != 0
        {
            let now_ns = now.saturating_duration_since(sh.base).as_nanos() as u64 + 1;
            self.latency.record_us(now_ns.saturating_sub(sent) / 1000);
        }
    }

    /// Accepted publishes per project.
    fn accepted_per_project(&self, sh: &SendShared) -> Vec<u64> {
        let projects = self.received.len() / self.group;
        let mut per = vec![0u64; projects];
        for (seq, st) in sh.status.iter().enumerate() {
            if st.load(Ordering::Relaxed) == ST_ACCEPTED {
                per[http::project_of(seq as u64, projects)] += 1;
            }
        }
        per
    }

    /// Deliveries the accepted publishes owe: `group` each.
    fn expected(&self, sh: &SendShared) -> u64 {
        sh.accepted.load(Ordering::Relaxed) * self.group as u64
    }
}

/// The value of the first `"channel":"…"` in a message.
fn channel_of(msg: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = br#""channel":""#;
    let start = msg.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = msg[start..].iter().position(|&b| b == b'"')?;
    Some(&msg[start..start + len])
}

/// Subscribes every open client (bounded by --timeout); the clients send
/// their subscribe as soon as they are open, so this waits for the answers.
pub fn subscribe_phase(cfg: &Config, engine: &mut Engine, rep: &mut Report) -> Result<(), String> {
    let t0 = Instant::now();
    let open = engine.stats.open;
    let done = engine
        .run(
            t0 + Duration::from_secs_f64(cfg.timeout),
            &mut |e: &Engine| e.taskapp.as_ref().is_some_and(|t| t.subscribed + t.refused as usize >= open),
            &mut |e: &Engine| {
                let t = e.taskapp.as_ref().expect("taskapp");
                eprintln!("[subscribe {:5.1}s] {}/{open} subscribed", t0.elapsed().as_secs_f64(), t.subscribed);
            },
        )
        .map_err(|e| format!("poll failed: {e}"))?;
    let t = engine.taskapp.as_ref().expect("taskapp");
    rep.add(
        "subscribed",
        "clients subscribed",
        json!(t.subscribed),
        format!("{}/{open} to their project in {:.2} s", t.subscribed, t0.elapsed().as_secs_f64()),
    );
    if !done || t.subscribed < open {
        rep.problem(format!("{} of {open} clients were not subscribed ({} refused)", open - t.subscribed, t.refused));
    }
    Ok(())
}

/// Posts the publishes and receives them; then the report.
pub fn publish_phase(
    cfg: &Config,
    engine: &mut Engine,
    rep: &mut Report,
    addr: std::net::SocketAddr,
    host_header: &str,
) -> Result<(), String> {
    let k = cfg.senders;
    let shared = Arc::new(SendShared::new(cfg.msgs));
    engine.taskapp.as_mut().expect("taskapp").shared = Some(shared.clone());
    let tokens = send::sender_tokens(cfg, k)?;
    let server_ticks = cfg.server_pid.and_then(sysinfo::cpu_ticks_split);
    let own_ms = sysinfo::own_cpu_ms();
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(cfg.timeout);
    let handles = send::start_senders(cfg, tokens, addr, host_header, deadline, &shared)?;
    let mut server_ticks_after = None;
    let mut last = 0u64;
    let completed = engine
        .run(
            deadline,
            &mut |e: &Engine| {
                let t = e.taskapp.as_ref().expect("taskapp");
                let done = shared.stop.load(Ordering::Relaxed)
                    || (shared.senders_done.load(Ordering::SeqCst) == k
                        && t.deliveries + t.gaps >= t.expected(&shared));
                if done {
                    server_ticks_after = cfg.server_pid.and_then(sysinfo::cpu_ticks_split);
                }
                done
            },
            &mut |e: &Engine| {
                let t = e.taskapp.as_ref().expect("taskapp");
                eprintln!(
                    "[taskapp {:5.1}s] publishes {}/{} (ok {}), delivered {} ({:.0}/s)",
                    t0.elapsed().as_secs_f64(),
                    shared.sent.load(Ordering::Relaxed),
                    cfg.msgs,
                    shared.accepted.load(Ordering::Relaxed),
                    t.deliveries,
                    (t.deliveries - last) as f64
                );
                last = t.deliveries;
            },
        )
        .map_err(|e| format!("poll failed: {e}"))?;
    let own_cpu_ms = sysinfo::own_cpu_ms() - own_ms;
    let server_ticks_after = server_ticks_after.or_else(|| cfg.server_pid.and_then(sysinfo::cpu_ticks_split));
    shared.stop.store(true, Ordering::SeqCst);
    let mut results = Vec::with_capacity(k);
    for h in handles {
        results.push(h.join().map_err(|_| "a sender thread panicked".to_string())?);
    }
    let merged = send::merge(results);
    send::post_problems(
        rep,
        &merged,
        shared.rejected.load(Ordering::Relaxed),
        shared.unknown.load(Ordering::Relaxed),
        &shared.fatal(),
    );
    let t = engine.taskapp.as_ref().expect("taskapp");
    report(cfg, t, rep, &shared, &merged.ack, completed, t0);
    let clk = sysinfo::clock_ticks_per_sec();
    if let (Some(b), Some(a)) = (server_ticks, server_ticks_after) {
        let to_ms = |ticks: u64| ticks as f64 * 1000.0 / clk as f64;
        let (user, system) = (to_ms(a.0.saturating_sub(b.0)), to_ms(a.1.saturating_sub(b.1)));
        let ms = user + system;
        let publishes = shared.accepted.load(Ordering::Relaxed).max(1) as f64;
        let deliveries = t.deliveries.max(1) as f64;
        rep.add(
            "server_cpu_ms",
            "server CPU time",
            json!(round3(ms)),
            format!("{ms:.0} ms (user {user:.0} + kernel {system:.0})"),
        );
        rep.json_only("server_cpu_user_ms", json!(round3(user)));
        rep.add(
            "server_cpu_us_per_publish",
            "server CPU per publish",
            json!(round3(ms * 1000.0 / publishes)),
            format!(
                "{:.1} µs (user {:.1}, kernel {:.1})",
                ms * 1000.0 / publishes,
                user * 1000.0 / publishes,
                system * 1000.0 / publishes
            ),
        );
        rep.add(
            "server_cpu_us_per_delivery",
            "server CPU per delivery",
            json!(round3(ms * 1000.0 / deliveries)),
            format!("{:.2} µs", ms * 1000.0 / deliveries),
        );
        if let Some(r) = cfg.server_pid.and_then(sysinfo::rss_kib) {
            rep.add("server_rss_kib", "server RSS", json!(r), crate::kib(r));
        }
    }
    rep.add("client_cpu_ms", "load tool CPU time", json!(round3(own_cpu_ms)), format!("{own_cpu_ms:.0} ms"));
    Ok(())
}

fn report(cfg: &Config, t: &TaskTrack, rep: &mut Report, sh: &SendShared, ack: &Hist, completed: bool, t0: Instant) {
    let sent = sh.sent.load(Ordering::Relaxed);
    let accepted = sh.accepted.load(Ordering::Relaxed);
    let times: Vec<u64> = sh.send_ns.iter().map(|a| a.load(Ordering::Relaxed)).filter(|&v| v != 0).collect();
    let (first, last) = (times.iter().min().copied().unwrap_or(1), times.iter().max().copied().unwrap_or(1));
    let secs = (last - first) as f64 / 1e9;
    let rate = if sent > 1 { (sent - 1) as f64 / secs.max(1e-9) } else { 0.0 };
    rep.add(
        "publishes",
        "publishes",
        json!({"wanted": cfg.msgs, "sent": sent, "accepted": accepted, "senders": cfg.senders, "pipeline": cfg.pipeline}),
        format!("{sent}/{} sent by {} sender(s) (pipeline {}), {accepted} accepted", cfg.msgs, cfg.senders, cfg.pipeline),
    );
    rep.add("publishes_per_sec", "publishes/s", json!(rate.round()), format!("{rate:.0} over {secs:.2} s"));
    if let Some(s) = ack.summary() {
        rep.add("post_ack", "POST answer time", s.to_json(), s.line());
    }
    let expected = t.expected(sh);
    rep.add(
        "delivered",
        "delivered",
        json!(t.deliveries),
        format!("{} / {expected} expected ({accepted} publishes × {} clients per project)", t.deliveries, t.group),
    );
    rep.json_only("expected", json!(expected));
    let per_project = t.accepted_per_project(sh);
    let complete = t.received.iter().enumerate().filter(|(id, r)| **r as u64 == per_project[id / t.group]).count();
    rep.add(
        "clients_complete",
        "clients complete",
        json!(complete),
        format!("{complete}/{} have every publish to their project", t.received.len()),
    );
    rep.add(
        "checks",
        "checks",
        json!({"wrong_channel": t.wrong_channel, "gaps": t.gaps, "repeats": t.repeats, "unexpected": t.unexpected,
               "refused": t.refused}),
        format!(
            "{} for another channel, {} offsets skipped, {} repeated or out of order, {} unexpected, {} refused",
            t.wrong_channel, t.gaps, t.repeats, t.unexpected, t.refused
        ),
    );
    for e in &t.examples {
        eprintln!("taskcast-load: {e}");
    }
    if let Some(s) = t.latency.summary() {
        rep.add("latency", "publish → delivery", s.to_json(), s.line());
    }
    if let Some(l) = t.last_delivery {
        let d = l.saturating_duration_since(sh.base + Duration::from_nanos(first - 1)).as_secs_f64();
        rep.add(
            "deliveries_per_sec",
            "deliveries/s",
            json!((t.deliveries as f64 / d.max(1e-9)).round()),
            format!("{:.0}", t.deliveries as f64 / d.max(1e-9)),
        );
    }
    if t.wrong_channel > 0 {
        rep.problem(format!("{} messages reached a client outside their channel", t.wrong_channel));
    }
    if t.gaps + t.repeats > 0 {
        rep.problem(format!("{} offsets skipped, {} repeated or out of order", t.gaps, t.repeats));
    }
    if t.unexpected + t.refused > 0 {
        rep.problem(format!("{} unexpected messages, {} refusals", t.unexpected, t.refused));
    }
    if !completed || t.deliveries < expected {
        rep.problem(format!(
            "{} of {expected} deliveries after {:.1} s{}",
            t.deliveries,
            t0.elapsed().as_secs_f64(),
            if completed { "" } else { " (timed out)" }
        ));
    }
    if sent < cfg.msgs as u64 {
        rep.problem(format!("only {sent} of {} publishes were sent", cfg.msgs));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(channel: &str, offset: u64, seq: u64) -> Vec<u8> {
        format!(
            r#"{{"type":"task_updated","payload":{{"seq":{seq},"zpad":"x"}},"channel":"{channel}","offset":{offset}}}"#
        )
        .into_bytes()
    }

    /// A seq published to project `p` of `projects`.
    fn seq_for(p: usize, projects: usize, skip: usize) -> u64 {
        (0..).filter(|&s| http::project_of(s, projects) == p).nth(skip).unwrap()
    }

    #[test]
    fn checks_channel_and_offset_order() {
        let now = Instant::now();
        let mut t = TaskTrack::new(20, 10); // 2 projects
        t.on_message(
            3,
            br#"{"type":"subscribed","channel":"project:0","epoch":"e","offset":4,"recovered":false}"#,
            now,
        );
        assert_eq!((t.subscribed, t.next_offset[3]), (1, 5));
        t.on_message(3, &frame("project:0", 5, seq_for(0, 2, 0)), now);
        t.on_message(3, &frame("project:0", 6, seq_for(0, 2, 1)), now);
        assert_eq!((t.deliveries, t.gaps, t.repeats), (2, 0, 0));
        t.on_message(3, &frame("project:0", 6, seq_for(0, 2, 1)), now);
        assert_eq!(t.repeats, 1, "the same offset twice");
        t.on_message(3, &frame("project:0", 9, seq_for(0, 2, 2)), now);
        assert_eq!(t.gaps, 2, "offsets 7 and 8 never came");
        t.on_message(3, &frame("project:1", 1, seq_for(1, 2, 0)), now);
        t.on_message(3, &frame("project:0", 10, seq_for(1, 2, 1)), now);
        assert_eq!(t.wrong_channel, 2, "another project's channel, or its publish");
        t.on_message(3, b"{\"type\":\"pong\"}", now);
        assert_eq!(t.unexpected, 1);
        t.on_message(12, &frame("project:1", 1, seq_for(1, 2, 0)), now);
        assert_eq!(t.unexpected, 2, "a message before the subscribe answer");
        t.on_message(12, br#"{"type":"error","payload":{"message":"forbidden"}}"#, now);
        assert_eq!(t.refused, 1);
    }
}
