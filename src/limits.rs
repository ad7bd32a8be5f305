//! Every limit and rate decision in one place: how many clients (in all and
//! per address), how fast one client may send, how fast publishers may
//! broadcast. The loop asks; this module answers with the refusal to send.
//!
//! | limit | bound | refusal |
//! |---|---|---|
//! | `MAX_CONNECTIONS` | open WebSocket clients | 503 + Retry-After |
//! | `MAX_CONNECTIONS_PER_IP` | open WebSocket clients per client address | 429 + Retry-After |
//! | `AUTH_FAILURES_PER_MIN` | failed token/key checks per client address per minute | 429 + Retry-After, before any signature |
//! | `MAX_HTTP_CONNECTIONS_PER_IP` | open plain HTTP connections per TCP peer (trusted proxies exempt) | 429 + close at accept |
//! | `CLIENT_MESSAGES_PER_SEC` / `_BURST` | frames (of any kind) from one client | close 1008 |
//! | `BROADCAST_RATE_PER_SEC` / `BROADCAST_BURST` | accepted broadcasts, all publishers | 429 + Retry-After |
//! | [`MAX_MESSAGE_FRAGMENTS`] | frames in one fragmented client message | close 1009 |
//! | [`READ_BUDGET_BYTES`] / [`READ_BUDGET_FRAMES`] | what one socket is read per loop turn | the rest waits a turn |

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::compact::Millis;

use crate::config::Config;
use crate::http::Response;

/// Bytes read from one socket per turn before others get a go.
pub const READ_BUDGET_BYTES: usize = 256 * 1024;
/// WebSocket frames (of any kind) taken from one client per turn: the
/// bound on the work one turn does for one client, whatever it sends
/// (256 KiB of empty frames would be ~44k of them).
pub const READ_BUDGET_FRAMES: usize = 512;
/// Addresses whose failed authentications are tracked at once. Past that
/// (an attacker with many addresses), new addresses share one window.
pub const MAX_TRACKED_ADDRESSES: usize = 10_000;
/// The AUTH_FAILURES_PER_MIN window.
const AUTH_WINDOW: Duration = Duration::from_secs(60);
/// Where untracked addresses count once the table is full (`::` is
/// never a peer's address).
const SHARED_WINDOW: IpAddr = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);

/// Frames one fragmented message may arrive in. Browsers never fragment
/// the small messages taskcast takes; a message in more pieces than this
/// is a flood of (possibly empty) continuation frames: close 1009.
pub const MAX_MESSAGE_FRAGMENTS: u32 = 128;

/// A token bucket: `burst` messages at once, refilled at `per_sec`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f32,
    /// 8 bytes, not an Instant's 16: every WebSocket client has a bucket.
    last: Millis,
}

impl TokenBucket {
    pub fn new(burst: u32, now: Instant) -> TokenBucket {
        TokenBucket { tokens: burst as f32, last: now.into() }
    }

    /// Takes one token; false when the bucket is empty.
    pub fn take(&mut self, burst: u32, per_sec: u32, now: Instant) -> bool {
        // Both ends truncated to the millisecond: over many calls the
        // elapsed times add up to the true total (no refill is lost).
        let now = Millis::from(now);
        let refill = now.saturating_since(self.last).as_secs_f32() * per_sec as f32;
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
    /// Failed authentications per address: (window start, failures in it).
    /// At most MAX_TRACKED_ADDRESSES entries (+ the shared one).
    auth_failures: HashMap<IpAddr, (Instant, u32)>,
    /// When expired windows were last swept out of `auth_failures`.
    auth_swept: Instant,
}

impl Limits {
    pub fn new(config: &Config, now: Instant) -> Limits {
        Limits {
            clients: 0,
            per_ip: HashMap::new(),
            broadcasts: TokenBucket::new(config.broadcast_burst, now),
            http_per_ip: HashMap::new(),
            auth_failures: HashMap::new(),
            auth_swept: now,
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

    /// Has `ip` failed authentication AUTH_FAILURES_PER_MIN times in its
    /// current minute? Then 429 until the window ends — checked before any
    /// signature, so forged tokens stop buying verifications.
    pub fn check_auth_failures(&self, config: &Config, ip: IpAddr, now: Instant) -> Result<(), Response> {
        let limit = config.auth_failures_per_min;
        if limit == 0 {
            return Ok(());
        }
        let key = self.auth_key(ip);
        match self.auth_failures.get(&key) {
            Some(&(start, n)) if n >= limit && now.saturating_duration_since(start) < AUTH_WINDOW => {
                let left = AUTH_WINDOW.saturating_sub(now.saturating_duration_since(start)).as_secs() + 1;
                Err(Response::error(429, "too many failed authentications from this address")
                    .header("Retry-After", left.to_string())
                    .closing())
            }
            _ => Ok(()),
        }
    }

    /// Counts one failed authentication from `ip`.
    pub fn record_auth_failure(&mut self, config: &Config, ip: IpAddr, now: Instant) {
        if config.auth_failures_per_min == 0 {
            return;
        }
        if self.auth_failures.len() >= MAX_TRACKED_ADDRESSES
            && !self.auth_failures.contains_key(&ip)
            && now.saturating_duration_since(self.auth_swept) >= Duration::from_secs(1)
        {
            // Full: drop windows that ended (at most once a second: O(n)).
            self.auth_swept = now;
            self.auth_failures.retain(|_, (start, _)| now.saturating_duration_since(*start) < AUTH_WINDOW);
        }
        let key = self.auth_key(ip);
        let (start, n) = self.auth_failures.entry(key).or_insert((now, 0));
        if now.saturating_duration_since(*start) >= AUTH_WINDOW {
            (*start, *n) = (now, 0);
        }
        *n = n.saturating_add(1);
    }

    /// The table entry `ip` counts in: its own, or the shared one when full.
    fn auth_key(&self, ip: IpAddr) -> IpAddr {
        if self.auth_failures.contains_key(&ip) || self.auth_failures.len() < MAX_TRACKED_ADDRESSES {
            ip
        } else {
            SHARED_WINDOW
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
    fn failed_authentications_per_address() {
        let mut c = Config::for_tests("x");
        c.auth_failures_per_min = 2;
        let t0 = Instant::now();
        let mut l = Limits::new(&c, t0);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        l.record_auth_failure(&c, a, t0);
        assert!(l.check_auth_failures(&c, a, t0).is_ok());
        l.record_auth_failure(&c, a, t0);
        let refused = l.check_auth_failures(&c, a, t0 + Duration::from_secs(20)).unwrap_err();
        assert_eq!((refused.status, refused.close), (429, true));
        assert!(refused.headers.contains(&("Retry-After", "41".to_string())), "{:?}", refused.headers);
        assert!(l.check_auth_failures(&c, b, t0).is_ok());
        assert!(l.check_auth_failures(&c, a, t0 + AUTH_WINDOW).is_ok(), "the window ends");
        // A full table: new addresses share one window; expired ones are swept.
        for i in 0..MAX_TRACKED_ADDRESSES as u32 {
            l.record_auth_failure(&c, IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i)), t0);
        }
        assert!(l.auth_failures.len() <= MAX_TRACKED_ADDRESSES + 1);
        let later = t0 + AUTH_WINDOW + Duration::from_secs(1);
        l.record_auth_failure(&c, "12.0.0.1".parse().unwrap(), later);
        assert!(l.auth_failures.len() < 10, "expired windows swept: {}", l.auth_failures.len());
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
