//! Every limit and rate decision in one place: how many clients (in all and
//! per address), how fast one client may send, how fast publishers may
//! broadcast. The loop asks; this module answers with the refusal to send.
//!
//! | limit | bound | refusal |
//! |---|---|---|
//! | `MAX_CONNECTIONS` | open WebSocket clients | 503 + Retry-After |
//! | `MAX_CONNECTIONS_PER_IP` | open WebSocket clients per client address | 429 + Retry-After |
//! | `MAX_HTTP_CONNECTIONS_PER_IP` | open plain HTTP connections per TCP peer (trusted proxies exempt) | 429 + close at accept |
//! | `CLIENT_MESSAGES_PER_SEC` / `_BURST` | frames (of any kind) from one client | close 1008 |
//! | `BROADCAST_RATE_PER_SEC` / `BROADCAST_BURST` | accepted broadcasts, all publishers | 429 + Retry-After |
//! | [`MAX_MESSAGE_FRAGMENTS`] | frames in one fragmented client message | close 1009 |
//! | [`READ_BUDGET_BYTES`] / [`READ_BUDGET_FRAMES`] | what one socket is read per loop turn | the rest waits a turn |

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use crate::config::Config;
use crate::http::Response;

/// Bytes read from one socket per turn before others get a go.
pub const READ_BUDGET_BYTES: usize = 256 * 1024;
/// WebSocket frames (of any kind) taken from one client per turn: the
/// bound on the work one turn does for one client, whatever it sends
/// (256 KiB of empty frames would be ~44k of them).
pub const READ_BUDGET_FRAMES: usize = 512;
/// Frames one fragmented message may arrive in. Browsers never fragment
/// the small messages taskcast takes; a message in more pieces than this
/// is a flood of (possibly empty) continuation frames: close 1009.
pub const MAX_MESSAGE_FRAGMENTS: u32 = 128;

/// A token bucket: `burst` messages at once, refilled at `per_sec`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f32,
    last: Instant,
}

impl TokenBucket {
    pub fn new(burst: u32, now: Instant) -> TokenBucket {
        TokenBucket { tokens: burst as f32, last: now }
    }

    /// Takes one token; false when the bucket is empty.
    pub fn take(&mut self, burst: u32, per_sec: u32, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.last).as_secs_f32() * per_sec as f32;
        self.tokens = (self.tokens + refill).min(burst as f32);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The counters and buckets the server-wide limits need.
pub struct Limits {
    /// Open, authenticated WebSocket clients (what /health reports).
    clients: usize,
    /// Open WebSocket clients per client address (entries removed at 0, so
    /// the map holds only addresses with clients).
    per_ip: HashMap<IpAddr, usize>,
    /// Accepted broadcasts, shared by all publishers.
    broadcasts: TokenBucket,
    /// Open HTTP (not yet upgraded) connections per TCP peer address;
    /// entries removed at 0.
    http_per_ip: HashMap<IpAddr, usize>,
}

impl Limits {
    pub fn new(config: &Config, now: Instant) -> Limits {
        Limits {
            clients: 0,
            per_ip: HashMap::new(),
            broadcasts: TokenBucket::new(config.broadcast_burst, now),
            http_per_ip: HashMap::new(),
        }
    }

    /// Open WebSocket clients now.
    pub fn clients(&self) -> usize {
        self.clients
    }

    /// May a client from `ip` open one more WebSocket? Checked before any
    /// signature: a refusal that costs nothing comes first.
    pub fn check_upgrade(&self, config: &Config, ip: IpAddr) -> Result<(), Response> {
        if self.clients >= config.max_connections {
            return Err(Response::error(503, "too many connections").header("Retry-After", "5"));
        }
        let per_ip = config.max_connections_per_ip;
        if per_ip > 0 && self.per_ip.get(&ip).copied().unwrap_or(0) >= per_ip {
            return Err(Response::error(429, "too many connections from this address").header("Retry-After", "5"));
        }
        Ok(())
    }

    /// Counts a newly upgraded client.
    pub fn add_client(&mut self, ip: IpAddr) {
        self.clients += 1;
        *self.per_ip.entry(ip).or_default() += 1;
    }

    /// Stops counting a client (once per client: the caller makes sure).
    pub fn remove_client(&mut self, ip: IpAddr) {
        self.clients -= 1;
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    /// Counts a new HTTP connection from `ip`, or returns the 429 it gets
    /// (then it is closed) when the address has MAX_HTTP_CONNECTIONS_PER_IP.
    /// Keep-alive connections otherwise stay as long as they make a request
    /// every REQUEST_TIMEOUT_SECS: without this, one address could hold
    /// every file descriptor and pause accepting for everyone.
    pub fn add_http(&mut self, config: &Config, ip: IpAddr) -> Result<(), Response> {
        let max = config.max_http_connections_per_ip;
        let n = self.http_per_ip.entry(ip).or_default();
        if max > 0 && *n >= max {
            return Err(Response::error(429, "too many HTTP connections from this address").header("Retry-After", "5"));
        }
        *n += 1;
        Ok(())
    }

    /// Stops counting an HTTP connection (it closed or upgraded).
    pub fn remove_http(&mut self, ip: IpAddr) {
        if let Some(n) = self.http_per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.http_per_ip.remove(&ip);
            }
        }
    }

    /// One more broadcast accepted, or the 429 to answer.
    pub fn take_broadcast(&mut self, config: &Config, now: Instant) -> Result<(), Response> {
        let (rate, burst) = (config.broadcast_rate, config.broadcast_burst);
        if rate > 0 && !self.broadcasts.take(burst, rate, now) {
            return Err(Response::error(429, "too many broadcasts").header("Retry-After", "1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3, t0);
        assert!(b.take(3, 1, t0) && b.take(3, 1, t0) && b.take(3, 1, t0));
        assert!(!b.take(3, 1, t0));
        assert!(b.take(3, 1, t0 + Duration::from_millis(1100)));
        assert!(!b.take(3, 1, t0 + Duration::from_millis(1100)));
    }

    #[test]
    fn upgrade_limits() {
        let mut c = Config::for_tests("x");
        c.max_connections = 3;
        c.max_connections_per_ip = 2;
        let mut l = Limits::new(&c, Instant::now());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        l.add_client(a);
        l.add_client(a);
        assert_eq!(l.check_upgrade(&c, a).unwrap_err().status, 429);
        assert!(l.check_upgrade(&c, b).is_ok());
        l.add_client(b);
        assert_eq!(l.check_upgrade(&c, b).unwrap_err().status, 503);
        l.remove_client(a);
        assert!(l.check_upgrade(&c, a).is_ok());
        assert_eq!(l.clients(), 2);
    }

    #[test]
    fn http_connections_per_address() {
        let mut c = Config::for_tests("x");
        c.max_http_connections_per_ip = 2;
        let mut l = Limits::new(&c, Instant::now());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(l.add_http(&c, a).is_ok() && l.add_http(&c, a).is_ok());
        assert_eq!(l.add_http(&c, a).unwrap_err().status, 429);
        assert!(l.add_http(&c, "10.0.0.2".parse().unwrap()).is_ok());
        l.remove_http(a);
        assert!(l.add_http(&c, a).is_ok());
        l.remove_http(a);
        l.remove_http(a);
        assert!(!l.http_per_ip.contains_key(&a), "entries go at 0");
    }
}
