//! Refusals told to whoever runs taskcast. A browser whose Origin is not in
//! ALLOWED_ORIGINS, or whose token has the wrong issuer, sees only a closed
//! WebSocket (1006); the operator must see why. Each refusal is logged at
//! INFO (target `taskcast::refusals`) with its reason and the offending
//! value — the origin, the token's `iss`/`aud`/`kid`, the address — and
//! never a token, key or password.
//!
//! Rate-limited per reason, so a flood of forged requests cannot flood the
//! log: at most one line per reason per [`LOG_EVERY`]; the next line after
//! a quiet spell says how many of that reason were not logged.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use log::{Level, info, log_enabled};

/// At most one line per reason this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// The refusals logged, per reason: when a line was last written and how
/// many were left out since. Reasons are a fixed set of labels (the
/// `taskcast_auth_failures_total` ones, `origin_not_allowed`, ...), so the
/// map stays small.
#[derive(Default)]
pub struct RefusalLog {
    /// `RefCell`: the loop's routing decisions see it through `&` (like the
    /// metrics); the loop is one thread.
    reasons: RefCell<HashMap<&'static str, Logged>>,
}

struct Logged {
    at: Instant,
    left_out: u64,
}

impl RefusalLog {
    pub fn new() -> RefusalLog {
        RefusalLog::default()
    }

    /// One refusal for `reason`: logged, or counted toward the next line.
    /// `describe` builds the line (only when it is written: a flood costs
    /// a map lookup per refusal, not a formatted string).
    pub fn note(&self, reason: &'static str, now: Instant, describe: impl FnOnce() -> String) {
        if !log_enabled!(target: "taskcast::refusals", Level::Info) {
            return;
        }
        let Some(left_out) = self.line_due(reason, now) else { return };
        let line = describe();
        if left_out > 0 {
            info!(target: "taskcast::refusals", "refused ({reason}): {line} [{left_out} more refused for this reason since the last line]");
        } else {
            info!(target: "taskcast::refusals", "refused ({reason}): {line}");
        }
    }

    /// Is a line due for `reason` now? `Some(n)`: yes, and `n` refusals of
    /// that reason were left out since the last one; `None`: count this one
    /// toward the next line.
    fn line_due(&self, reason: &'static str, now: Instant) -> Option<u64> {
        let mut reasons = self.reasons.borrow_mut();
        match reasons.get_mut(reason) {
            Some(l) if now.saturating_duration_since(l.at) < LOG_EVERY => {
                l.left_out += 1;
                None
            }
            Some(l) => Some(std::mem::replace(l, Logged { at: now, left_out: 0 }).left_out),
            None => {
                reasons.insert(reason, Logged { at: now, left_out: 0 });
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_reason_per_window_with_the_count_left_out() {
        let log = RefusalLog::new();
        let t0 = Instant::now();
        assert_eq!(log.line_due("origin_not_allowed", t0), Some(0));
        for i in 1..=5 {
            assert_eq!(log.line_due("origin_not_allowed", t0 + Duration::from_secs(i)), None);
        }
        // Another reason has its own window.
        assert_eq!(log.line_due("wrong_issuer", t0 + Duration::from_secs(1)), Some(0));
        assert_eq!(log.line_due("origin_not_allowed", t0 + LOG_EVERY), Some(5));
        assert_eq!(log.line_due("origin_not_allowed", t0 + LOG_EVERY), None);
        assert_eq!(log.line_due("origin_not_allowed", t0 + 3 * LOG_EVERY), Some(1));
    }
}
