//! The soak's pass criteria as pure functions: which broadcasts a client
//! must have received, whether server memory stayed flat, what the server
//! log says. The driver (`soak.rs`) gathers the data; this decides.

use std::collections::{BTreeMap, VecDeque};

use crate::roles::SeqLog;

/// First index in `0..n` for which `pred` is false, assuming `pred` is
/// true on a prefix and false after it.
pub fn partition_point(n: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// The broadcasts a healthy client must receive: the seqs `[lo, hi)`.
///
/// - From the first broadcast whose POST was *written* after the client
///   read its 101: the server upgraded the client before it read that
///   request, so the broadcast is fanned out to it. (The POST's *response*
///   arriving after the 101 is not enough: the server may answer a POST
///   and send a 101 in the same loop turn, fan-out first, and the two
///   threads read them in either order.)
/// - To the last broadcast whose POST response arrived before the client
///   wrote its close frame: the server fanned it out before answering,
///   hence before reading our close, and our close handshake waits for
///   the server's close reply, which is queued behind it.
///
/// `send_ns(s)` / `ack_ns(s)`: when the POST for seq `s` was written / its
/// response read, as nanoseconds since a common base + 1 (0 = not yet);
/// both grow with `s` (one sender, responses in order). `opened_ns` and
/// `left_ns` use the same clock (`left_ns` = u64::MAX if the client never
/// left).
pub fn expected_window(
    n: usize,
    send_ns: impl Fn(usize) -> u64,
    ack_ns: impl Fn(usize) -> u64,
    opened_ns: u64,
    left_ns: u64,
) -> (u64, u64) {
    let lo = partition_point(n, |s| {
        let t = send_ns(s);
        t != 0 && t <= opened_ns
    });
    let hi = partition_point(n, |s| {
        let t = ack_ns(s);
        t != 0 && t < left_ns
    });
    (lo as u64, hi.max(lo) as u64)
}

/// How many values of the ascending slice `sorted` lie in `[lo, hi)`.
pub fn count_in(sorted: &[u64], lo: u64, hi: u64) -> u64 {
    if hi <= lo {
        return 0;
    }
    (sorted.partition_point(|&v| v < hi) - sorted.partition_point(|&v| v < lo)) as u64
}

/// One healthy client's deliveries against its window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Score {
    /// Accepted broadcasts in the window.
    pub expected: u64,
    /// Of those, received.
    pub delivered: u64,
    /// Accepted broadcasts skipped between two received ones, in or out of
    /// the window.
    pub gaps: u64,
    /// Duplicates and out-of-order arrivals.
    pub disorder: u64,
    /// Seqs that count as failures: expected and not received, plus
    /// skipped ones outside the window (each counted once).
    pub failures: u64,
}

/// Scores `log` against the window `[lo, hi)`. `rejected` lists (sorted)
/// the seqs the server did not accept: nobody should receive them, so
/// they are neither expected nor holes.
pub fn score(log: &SeqLog, (lo, hi): (u64, u64), rejected: &[u64]) -> Score {
    let expected = (hi - lo) - count_in(rejected, lo, hi);
    let accepted_in = |a: u64, b: u64| if b > a { (b - a) - count_in(rejected, a, b) } else { 0 };
    let Some(first) = log.first else {
        return Score { expected, delivered: 0, gaps: 0, disorder: log.disorder, failures: expected };
    };
    let span_end = log.last + 1;
    // Received = [first, span_end) minus the holes.
    let (a, b) = (lo.max(first), hi.min(span_end));
    let mut delivered = accepted_in(a, b);
    let mut gaps = 0;
    let mut gaps_in_window = 0;
    let mut listed = 0;
    for &(g0, g1) in &log.gaps {
        listed += g1 - g0;
        gaps += accepted_in(g0, g1);
        let w = accepted_in(g0.max(lo), g1.min(hi));
        gaps_in_window += w;
        delivered -= w.min(delivered);
    }
    // Holes past MAX_GAPS: positions unknown; count them as failures.
    let unlisted = log.gap_seqs.saturating_sub(listed);
    gaps += unlisted;
    let missing = expected - delivered.min(expected);
    Score { expected, delivered, gaps, disorder: log.disorder, failures: missing + (gaps - gaps_in_window) }
}

/// RSS samples `(seconds since the main phase began, KiB)` judged for
/// flatness after warm-up.
#[derive(Debug, Clone, PartialEq)]
pub struct RssVerdict {
    /// First sample at or after the warm-up.
    pub first: (f64, u64),
    /// Last sample of the main phase.
    pub last: (f64, u64),
    /// Highest sample of the whole run.
    pub peak: (f64, u64),
    /// `last` may not exceed this.
    pub limit: u64,
    /// Least-squares slope over the post-warm-up samples, KiB per minute.
    pub slope_kib_per_min: f64,
    pub pass: bool,
}

/// Memory must not grow under a steady load: the last sample of the main
/// phase may exceed the first one after warm-up by at most `tol_pct`
/// percent plus `tol_kib`. The fixed part absorbs the population swinging
/// with churn (a few KiB per connection); the proportional part absorbs
/// the allocator keeping freed memory. A leak of a few hundred bytes per
/// connection, with tens of thousands of connections made, exceeds both.
pub fn rss_flat(
    samples: &[(f64, u64)],
    warmup_secs: f64,
    end_secs: f64,
    tol_pct: f64,
    tol_kib: u64,
) -> Option<RssVerdict> {
    let peak = *samples.iter().max_by_key(|s| s.1)?;
    let steady: Vec<(f64, u64)> = samples.iter().copied().filter(|s| s.0 >= warmup_secs && s.0 <= end_secs).collect();
    let first = *steady.first()?;
    let last = *steady.last()?;
    let limit = (first.1 as f64 * (1.0 + tol_pct / 100.0)).round() as u64 + tol_kib;
    Some(RssVerdict { first, last, peak, limit, slope_kib_per_min: slope(&steady) * 60.0, pass: last.1 <= limit })
}

/// Least-squares slope of y over x (0 for fewer than two distinct x).
pub fn slope(points: &[(f64, u64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1 as f64).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 as f64 - my)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

/// One env_logger line: `[2026-01-02T03:04:05Z WARN  taskcast::server] msg`
/// (the target is any module path; see `is_server_target`).
/// Returns (level, target, message).
pub fn parse_log_line(line: &str) -> Option<(&str, &str, &str)> {
    let rest = line.strip_prefix('[')?;
    let (head, msg) = rest.split_once(']')?;
    let mut it = head.split_whitespace();
    let _time = it.next()?;
    let level = it.next()?;
    let target = it.next().unwrap_or("");
    if !matches!(level, "ERROR" | "WARN" | "INFO" | "DEBUG" | "TRACE") {
        return None;
    }
    Some((level, target, msg.strip_prefix(' ').unwrap_or(msg)))
}

/// A log message with what varies per line taken out (addresses, quoted
/// names, numbers), so that lines can be counted by kind.
pub fn template(msg: &str) -> String {
    let mut words = Vec::new();
    for w in msg.split(' ') {
        let start = w.len() - w.trim_start_matches('(').len();
        let core = w[start..].trim_end_matches([')', ',', ';', ':']);
        let (open, close) = (&w[..start], &w[start + core.len()..]);
        if core.parse::<std::net::SocketAddr>().is_ok() || core.parse::<std::net::IpAddr>().is_ok() {
            words.push(format!("{open}<addr>{close}"));
        } else if core.len() >= 2 && core.starts_with('"') && core.ends_with('"') {
            words.push(format!("{open}\"…\"{close}"));
        } else {
            let mut t = String::with_capacity(w.len());
            let mut in_digits = false;
            for ch in w.chars() {
                if !ch.is_ascii_digit() {
                    t.push(ch);
                } else if !in_digits {
                    t.push('N');
                }
                in_digits = ch.is_ascii_digit();
            }
            words.push(t);
        }
    }
    let t = words.join(" ");
    if t.chars().count() > 80 { t.chars().take(80).collect::<String>() + "…" } else { t }
}

/// Whether a log record is the server's own. Its targets are `taskcast` and
/// `taskcast::<module path>`, and which module logs a message moves as the
/// server is refactored (`taskcast::server` today, `taskcast::server::ws_conn`
/// or `taskcast::conn` tomorrow), so the verdict goes by this prefix and by
/// message text, never by module.
pub fn is_server_target(target: &str) -> bool {
    target == "taskcast" || target.starts_with("taskcast::")
}

/// Prefix of the counting key of a record from another target (a dependency
/// logging through `log`): never an expected kind, whatever its text.
const FOREIGN: &str = "(from ";

/// Counting key of a record: its template, marked with the target when the
/// record is not the server's own.
fn kind_key(target: &str, msg: &str) -> String {
    if is_server_target(target) { template(msg) } else { format!("{FOREIGN}{target}) {}", template(msg)) }
}

/// Warning kinds a soak provokes on purpose.
pub const EXPECTED_WARNINGS: &[&str] = &["too slow"];
/// Error kinds a soak provokes on purpose: none.
pub const EXPECTED_ERRORS: &[&str] = &[];

/// What the server wrote to stderr, counted.
#[derive(Debug, Default, Clone)]
pub struct LogBook {
    pub lines: u64,
    /// Lines per level (ERROR, WARN, INFO, ...).
    pub by_level: BTreeMap<String, u64>,
    /// Warning counts by message template.
    pub warnings: BTreeMap<String, u64>,
    /// Error counts by message template.
    pub errors: BTreeMap<String, u64>,
    /// The first unexpected error lines, whole.
    pub error_lines: Vec<String>,
    /// Lines that are not log records (a panic message, say), the first few.
    pub other_lines: Vec<String>,
    pub other: u64,
    /// Where the server said it listens.
    pub listening: Option<String>,
    /// The last lines, for when the server dies.
    pub tail: VecDeque<String>,
}

const KEEP_LINES: usize = 20;

impl LogBook {
    pub fn add(&mut self, line: &str) {
        self.lines += 1;
        if self.tail.len() == KEEP_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_string());
        let Some((level, target, msg)) = parse_log_line(line) else {
            self.other += 1;
            if self.other_lines.len() < KEEP_LINES {
                self.other_lines.push(line.to_string());
            }
            return;
        };
        *self.by_level.entry(level.to_string()).or_default() += 1;
        match level {
            "ERROR" => {
                let key = kind_key(target, msg);
                if !is_expected(&key, EXPECTED_ERRORS) && self.error_lines.len() < KEEP_LINES {
                    self.error_lines.push(line.to_string());
                }
                *self.errors.entry(key).or_default() += 1;
            }
            "WARN" => *self.warnings.entry(kind_key(target, msg)).or_default() += 1,
            "INFO" if is_server_target(target) => {
                if let Some(rest) = msg.strip_prefix("taskcast listening on ") {
                    self.listening = rest.split_whitespace().next().map(str::to_string);
                }
            }
            _ => {}
        }
    }

    pub fn count(&self, level: &str) -> u64 {
        self.by_level.get(level).copied().unwrap_or(0)
    }

    /// Error lines not in EXPECTED_ERRORS, plus lines that are not log
    /// records at all.
    pub fn unexpected_errors(&self) -> u64 {
        self.errors.iter().filter(|(t, _)| !is_expected(t, EXPECTED_ERRORS)).map(|(_, n)| n).sum::<u64>() + self.other
    }

    /// Warning templates not in EXPECTED_WARNINGS, with their counts.
    pub fn unexpected_warnings(&self) -> Vec<(String, u64)> {
        self.warnings.iter().filter(|(t, _)| !is_expected(t, EXPECTED_WARNINGS)).map(|(t, n)| (t.clone(), *n)).collect()
    }

    /// The server's own warnings whose text contains `text`.
    pub fn server_warnings_containing(&self, text: &str) -> u64 {
        self.warnings.iter().filter(|(t, _)| is_expected(t, &[text])).map(|(_, n)| n).sum()
    }
}

/// Whether a counting key is one of `kinds` (by text) from the server itself.
fn is_expected(key: &str, kinds: &[&str]) -> bool {
    !key.starts_with(FOREIGN) && kinds.iter().any(|k| key.contains(k))
}

/// Whether a silent client was dropped on time. The server drops a client
/// PONG_WAIT after the last frame it read from it; a silent client's last
/// frame is its upgrade request, read after we wrote it and before we read
/// the 101. So the drop (seen when we read the EOF) comes at least
/// PONG_WAIT after we wrote the request, and at most PONG_WAIT after we
/// read the 101 plus 2 s (timer rounding, the loop's turn, a loaded
/// machine). `from_request` / `from_open`: seconds from the request write /
/// the 101 read to the EOF. (Timing from the 101 alone would blame the
/// server for our own late reads: on a starved machine the 101 can be read
/// a second or more after the server upgraded the connection.)
pub fn silent_drop_on_time(from_request: f64, from_open: f64, pong_wait: f64) -> bool {
    from_request >= pong_wait && from_open <= pong_wait + 2.0
}

/// One line of the final table.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub name: String,
    /// None: skipped (not measurable in this setup).
    pub pass: Option<bool>,
    pub detail: String,
}

impl Check {
    pub fn new(name: &str, pass: bool, detail: String) -> Check {
        Check { name: name.into(), pass: Some(pass), detail }
    }
    pub fn skip(name: &str, detail: String) -> Check {
        Check { name: name.into(), pass: None, detail }
    }
    pub fn label(&self) -> &'static str {
        match self.pass {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "SKIP",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clock of the tests: seq s written at 10·s + 5, answered at 10·s + 8
    /// (ns + 1 units as in SendShared); `sent` seqs so far.
    fn times(sent: usize, answered: usize) -> (impl Fn(usize) -> u64, impl Fn(usize) -> u64) {
        (
            move |s: usize| if s < sent { 10 * s as u64 + 5 } else { 0 },
            move |s: usize| if s < answered { 10 * s as u64 + 8 } else { 0 },
        )
    }

    #[test]
    fn window_is_writes_after_open_to_answers_before_leave() {
        let (send, ack) = times(100, 100);
        // opened at 42: seq 4 was written at 45 > 42, seq 3 at 35.
        // left at 78: seq 7 answered at 78 (not before), seq 6 at 68.
        assert_eq!(expected_window(100, &send, &ack, 42, 78), (4, 7));
        // opened exactly when seq 4 was written: not after it.
        assert_eq!(expected_window(100, &send, &ack, 45, 79), (5, 8));
        // opened before anything was sent; never left.
        assert_eq!(expected_window(100, &send, &ack, 0, u64::MAX), (0, 100));
        // left before it opened (nothing can be expected).
        assert_eq!(expected_window(100, &send, &ack, 500, 100), (50, 50));
        // only 60 sent and 55 answered so far; never left.
        let (send, ack) = times(60, 55);
        assert_eq!(expected_window(100, &send, &ack, 42, u64::MAX), (4, 55));
        // opened after everything sent so far.
        assert_eq!(expected_window(100, &send, &ack, 10_000, u64::MAX), (60, 60));
        assert_eq!(expected_window(0, &send, &ack, 0, u64::MAX), (0, 0));
    }

    #[test]
    fn counts_in_sorted() {
        let v = [2, 5, 5, 9];
        assert_eq!(count_in(&v, 0, 10), 4);
        assert_eq!(count_in(&v, 5, 9), 2);
        assert_eq!(count_in(&v, 6, 9), 0);
        assert_eq!(count_in(&v, 9, 9), 0);
        assert_eq!(count_in(&v, 9, 3), 0);
    }

    fn log_of(seqs: &[u64]) -> SeqLog {
        let mut l = SeqLog::default();
        for &s in seqs {
            l.on_seq(s);
        }
        l
    }

    #[test]
    fn score_complete_and_extra() {
        // Window [10, 20); the client also got 8, 9 (before the window) and
        // 20, 21 (after): all fine.
        let l = log_of(&(8..22).collect::<Vec<_>>());
        assert_eq!(score(&l, (10, 20), &[]), Score { expected: 10, delivered: 10, gaps: 0, disorder: 0, failures: 0 });
    }

    #[test]
    fn score_missing_at_the_edges() {
        // Got 12..18 of [10, 20): 10, 11, 18, 19 missing.
        let l = log_of(&(12..18).collect::<Vec<_>>());
        let s = score(&l, (10, 20), &[]);
        assert_eq!((s.expected, s.delivered, s.gaps, s.failures), (10, 6, 0, 4));
        // Got nothing.
        let s = score(&SeqLog::default(), (10, 20), &[]);
        assert_eq!((s.expected, s.delivered, s.failures), (10, 0, 10));
        // Empty window, nothing received: nothing expected.
        assert_eq!(score(&SeqLog::default(), (7, 7), &[]), Score::default());
    }

    #[test]
    fn score_gaps_inside_and_outside_the_window() {
        // Window [10, 20). Received 5, 6, 8, 10..=14, 17..=25:
        // hole 7 is outside the window (still a failure: strictly between
        // first and last received), hole 9 too, holes 15, 16 inside.
        let mut seqs = vec![5, 6, 8];
        seqs.extend(10..=14);
        seqs.extend(17..=25);
        let s = score(&log_of(&seqs), (10, 20), &[]);
        assert_eq!(s.expected, 10);
        assert_eq!(s.delivered, 8);
        assert_eq!(s.gaps, 4);
        assert_eq!(s.failures, 2 /* 15, 16 */ + 2 /* 7, 9 */);
    }

    #[test]
    fn score_ignores_rejected_broadcasts() {
        // Seqs 13 and 14 were refused by the server: not expected, and not
        // holes when skipped.
        let mut seqs: Vec<u64> = (10..13).collect();
        seqs.extend(15..20);
        let s = score(&log_of(&seqs), (10, 20), &[13, 14]);
        assert_eq!(s, Score { expected: 8, delivered: 8, gaps: 0, disorder: 0, failures: 0 });
    }

    #[test]
    fn score_counts_disorder_and_unlisted_holes() {
        let s = score(&log_of(&[10, 11, 11, 12]), (10, 13), &[]);
        assert_eq!((s.delivered, s.disorder, s.failures), (3, 1, 0));
        // Every other seq missing: more holes than are listed.
        let seqs: Vec<u64> = (0..200).step_by(2).collect();
        let s = score(&log_of(&seqs), (0, 199), &[]);
        assert_eq!(s.gaps, 99);
        assert_eq!(s.failures, 99);
    }

    #[test]
    fn rss_flat_within_tolerance() {
        // Warm-up 0..20 s grows; then flat around 10 MiB.
        let mut v: Vec<(f64, u64)> = (0..20).map(|t| (t as f64, 4000 + 300 * t as u64)).collect();
        v.extend((20..100).map(|t| (t as f64, 10_000 + (t % 3) as u64 * 100)));
        let r = rss_flat(&v, 20.0, 99.0, 10.0, 2048).unwrap();
        assert_eq!(r.first, (20.0, 10_200));
        assert_eq!(r.last, (99.0, 10_000));
        assert_eq!(r.peak.1, 10_200);
        assert_eq!(r.limit, 11_220 + 2048);
        assert!(r.pass);
        assert!(r.slope_kib_per_min.abs() < 10.0, "{}", r.slope_kib_per_min);
    }

    #[test]
    fn rss_growth_fails() {
        // 50 KiB/s after warm-up: 10 MiB -> 14 MiB over 80 s.
        let v: Vec<(f64, u64)> = (0..100).map(|t| (t as f64, 10_000 + 50 * t as u64)).collect();
        let r = rss_flat(&v, 20.0, 99.0, 10.0, 2048).unwrap();
        assert_eq!(r.first.1, 11_000);
        assert_eq!(r.last.1, 14_950);
        assert!(!r.pass);
        assert!((r.slope_kib_per_min - 3000.0).abs() < 1.0);
        // Samples after the main phase (clients gone) are not "last".
        let mut v: Vec<(f64, u64)> = (0..100).map(|t| (t as f64, 10_000)).collect();
        v.push((120.0, 50_000));
        let r = rss_flat(&v, 20.0, 99.0, 10.0, 2048).unwrap();
        assert!(r.pass);
        assert_eq!(r.peak, (120.0, 50_000));
        assert!(rss_flat(&[], 20.0, 99.0, 10.0, 0).is_none());
        assert!(rss_flat(&[(1.0, 5)], 20.0, 99.0, 10.0, 0).is_none());
    }

    #[test]
    fn log_lines() {
        let l = r#"[2026-11-23T23:04:44Z WARN  taskcast::server] 127.0.0.1:36966 ("slow") too slow: 64 messages queued; closing with 1013"#;
        let (level, target, msg) = parse_log_line(l).unwrap();
        assert_eq!((level, target), ("WARN", "taskcast::server"));
        assert!(msg.starts_with("127.0.0.1:36966"));
        assert_eq!(template(msg), r#"<addr> ("…") too slow: N messages queued; closing with N"#);
        assert_eq!(
            template("accept: Too many open files (os error 24); pausing"),
            "accept: Too many open files (os error N); pausing"
        );
        assert_eq!(template("register [::1]:80: boom"), "register <addr>: boom");
        assert!(parse_log_line("thread 'main' panicked at src/server.rs:1:2:").is_none());
        assert!(parse_log_line("[x NOPE y] z").is_none());
    }

    #[test]
    fn log_book_counts() {
        let mut b = LogBook::default();
        b.add("[t INFO  taskcast::server] taskcast listening on 127.0.0.1:4242 | origins x");
        b.add(r#"[t WARN  taskcast::server] 127.0.0.1:1 ("a") too slow: 64 messages queued; closing with 1013"#);
        b.add(r#"[t WARN  taskcast::server] 127.0.0.2:2 ("b") too slow: 65 messages queued; closing with 1013"#);
        b.add("[t WARN  taskcast::server] accept: Too many open files (os error 24); pausing");
        b.add("[t ERROR taskcast] event loop failed: boom");
        b.add("thread 'main' panicked");
        assert_eq!(b.listening.as_deref(), Some("127.0.0.1:4242"));
        assert_eq!((b.count("WARN"), b.count("ERROR"), b.count("INFO"), b.other), (3, 1, 1, 1));
        assert_eq!(b.warnings.len(), 2);
        assert_eq!(b.unexpected_warnings(), vec![("accept: Too many open files (os error N); pausing".to_string(), 1)]);
        assert_eq!(b.unexpected_errors(), 2);
        assert_eq!(b.error_lines.len(), 1);
        assert_eq!(b.tail.len(), 6);
    }

    #[test]
    fn server_targets_by_prefix_not_module() {
        assert!(is_server_target("taskcast"));
        assert!(is_server_target("taskcast::server"));
        assert!(is_server_target("taskcast::server::ws_conn"));
        assert!(is_server_target("taskcast::conn"));
        assert!(!is_server_target("taskcastle"));
        assert!(!is_server_target("tungstenite::protocol"));
        assert!(!is_server_target(""));

        let mut b = LogBook::default();
        // the same messages from the modules the server is being split into
        b.add("[t INFO  taskcast::server::run] taskcast listening on 127.0.0.1:4343 | origins x");
        b.add(
            r#"[t WARN  taskcast::server::ws_conn] 127.0.0.1:1 ("a") too slow: 64 messages queued; closing with 1013"#,
        );
        b.add(r#"[t WARN  taskcast::conn] 127.0.0.1:2 ("b") too slow: 64 messages queued; closing with 1013"#);
        // another crate's lines: never expected, never the listening line
        b.add(r#"[t WARN  tungstenite::protocol] 127.0.0.1:3 too slow: 64 messages queued; closing with 1013"#);
        b.add("[t INFO  mio::poll] taskcast listening on 10.0.0.1:1");
        b.add("[t ERROR hyperthing] boom");
        assert_eq!(b.listening.as_deref(), Some("127.0.0.1:4343"));
        assert_eq!(b.server_warnings_containing("too slow"), 2);
        let unexpected = b.unexpected_warnings();
        assert_eq!(unexpected.len(), 1, "{unexpected:?}");
        assert!(unexpected[0].0.starts_with("(from tungstenite::protocol) "), "{unexpected:?}");
        assert_eq!(b.unexpected_errors(), 1);
        assert_eq!(b.error_lines, vec!["[t ERROR hyperthing] boom".to_string()]);
    }

    #[test]
    fn silent_drop_window() {
        assert!(silent_drop_on_time(5.03, 5.02, 5.0));
        // the 101 was read 1.1 s late: fine, the request went out 5.0 s before
        assert!(silent_drop_on_time(5.0, 3.9, 5.0));
        // dropped before PONG_WAIT had passed since the request: too early
        assert!(!silent_drop_on_time(4.9, 4.8, 5.0));
        // more than 2 s late
        assert!(!silent_drop_on_time(7.6, 7.5, 5.0));
    }

    #[test]
    fn partition() {
        assert_eq!(partition_point(10, |i| i < 3), 3);
        assert_eq!(partition_point(10, |_| true), 10);
        assert_eq!(partition_point(10, |_| false), 0);
        assert_eq!(partition_point(0, |_| true), 0);
    }
}
