//! Every limit and rate decision in one place: how many clients (in all and
//! per address), how fast one client may send, how fast publishers may
//! broadcast. The loop asks; this module answers with the refusal to send.
//!
//! | limit | bound | refusal |
//! |---|---|---|
//! | `MAX_CONNECTIONS` | open WebSocket clients | 503 + Retry-After |
//! | `MAX_CONNECTIONS_PER_IP` | open WebSocket clients per client address | 429 + Retry-After |
//! | `AUTH_FAILURES_PER_MIN` | failed token/key checks (subscription tokens too) per client address per minute | 429 + Retry-After, before any signature |
//! | `MAX_HTTP_CONNECTIONS_PER_IP` | open plain HTTP connections per TCP peer (trusted proxies exempt) | 429 + close at accept |
//! | `CLIENT_MESSAGES_PER_SEC` / `_BURST` | frames (of any kind) from one client | close 1008 |
//! | `BROADCAST_RATE_PER_SEC` / `BROADCAST_BURST` | accepted broadcasts, all publishers | 429 + Retry-After |
//! | [`MAX_MESSAGE_FRAGMENTS`] | frames in one fragmented client message | close 1009 |
//! | [`READ_BUDGET_BYTES`] / [`READ_BUDGET_FRAMES`] | what one socket is read per loop turn | the rest waits a turn |
//!
//! "Per address" is per [`AddrKey`]: an IPv4 address, or an IPv6 /64 (one
//! host is usually given a whole /64, and could otherwise count as 2^64
//! addresses).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
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
/// Addresses whose failed authentications are tracked at once (memory:
/// ~40 B each). When an attacker with more addresses than this fills the
/// table, room is made by forgetting the least telling windows (see
/// [`Limits::make_room`]) — never by letting addresses share one window:
/// an address with no failures of its own is always verified.
pub const MAX_TRACKED_ADDRESSES: usize = 10_000;
/// The AUTH_FAILURES_PER_MIN window.
const AUTH_WINDOW: Duration = Duration::from_secs(60);

/// What a per-address limit counts in: an IPv4 address, or the /64 an IPv6
/// address is in (its low 64 bits cleared). IPv4-mapped IPv6 addresses
/// (`::ffff:10.0.0.1`) count as their IPv4 address.
///
/// Why /64: an IPv6 host is routinely given a whole /64 (SLAAC, privacy
/// addresses) and can send from any address in it, so counting single
/// IPv6 addresses would let one host open unlimited connections and try
/// unlimited tokens. A /64 is the smallest block one customer is assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddrKey(IpAddr);

impl AddrKey {
    pub fn of(ip: IpAddr) -> AddrKey {
        match ip.to_canonical() {
            IpAddr::V6(v6) => AddrKey(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64)))),
            v4 => AddrKey(v4),
        }
    }
}

impl std::fmt::Display for AddrKey {
    /// `10.0.0.1`, or `2001:db8:1:2::/64`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Frames one fragmented message may arrive in. Browsers never fragment
/// the small messages taskcast takes; a message in more pieces than this
/// is a flood of (possibly empty) continuation frames: close 1009.
pub const MAX_MESSAGE_FRAGMENTS: u32 = 128;

/// A token bucket: `burst` messages at once, refilled at `per_sec`.
///
/// 12 bytes at 4-byte alignment (packed: every WebSocket client has one,
/// and 16 bytes at 8-byte alignment would round `WsConn` up by 8).
#[derive(Debug, Clone, Copy)]
#[repr(C, packed(4))]
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
    per_ip: HashMap<AddrKey, usize>,
    /// Accepted broadcasts, shared by all publishers.
    broadcasts: TokenBucket,
    /// Open HTTP (not yet upgraded) connections per TCP peer address;
    /// entries removed at 0.
    http_per_ip: HashMap<AddrKey, usize>,
    /// Failed authentications per address: (window start, failures in it).
    /// At most MAX_TRACKED_ADDRESSES entries.
    auth_failures: HashMap<AddrKey, (Instant, u32)>,
}

impl Limits {
    pub fn new(config: &Config, now: Instant) -> Limits {
        Limits {
            clients: 0,
            per_ip: HashMap::new(),
            broadcasts: TokenBucket::new(config.broadcast_burst, now),
            http_per_ip: HashMap::new(),
            auth_failures: HashMap::new(),
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
        if per_ip > 0 && self.per_ip.get(&AddrKey::of(ip)).copied().unwrap_or(0) >= per_ip {
            return Err(Response::error(429, "too many connections from this address").header("Retry-After", "5"));
        }
        Ok(())
    }

    /// Counts a newly upgraded client.
    pub fn add_client(&mut self, ip: IpAddr) {
        self.clients += 1;
        *self.per_ip.entry(AddrKey::of(ip)).or_default() += 1;
    }

    /// Stops counting a client (once per client: the caller makes sure).
    pub fn remove_client(&mut self, ip: IpAddr) {
        self.clients -= 1;
        let key = AddrKey::of(ip);
        if let Some(n) = self.per_ip.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&key);
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
        let n = self.http_per_ip.entry(AddrKey::of(ip)).or_default();
        if max > 0 && *n >= max {
            return Err(Response::error(429, "too many HTTP connections from this address").header("Retry-After", "5"));
        }
        *n += 1;
        Ok(())
    }

    /// Stops counting an HTTP connection (it closed or upgraded).
    pub fn remove_http(&mut self, ip: IpAddr) {
        let key = AddrKey::of(ip);
        if let Some(n) = self.http_per_ip.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.http_per_ip.remove(&key);
            }
        }
    }

    /// Has `ip` failed authentication AUTH_FAILURES_PER_MIN times in its
    /// current minute? Then 429 until the window ends — checked before any
    /// signature, so forged tokens stop buying verifications. Only the
    /// address's own failures count: however many other addresses failed,
    /// one with no failures of its own is always let through to verification.
    pub fn check_auth_failures(&self, config: &Config, ip: IpAddr, now: Instant) -> Result<(), Response> {
        let limit = config.auth_failures_per_min;
        if limit == 0 {
            return Ok(());
        }
        match self.auth_failures.get(&AddrKey::of(ip)) {
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
        let key = AddrKey::of(ip);
        if self.auth_failures.len() >= MAX_TRACKED_ADDRESSES && !self.auth_failures.contains_key(&key) {
            self.make_room(config.auth_failures_per_min, now);
        }
        let (start, n) = self.auth_failures.entry(key).or_insert((now, 0));
        if now.saturating_duration_since(*start) >= AUTH_WINDOW {
            (*start, *n) = (now, 0);
        }
        *n = n.saturating_add(1);
    }

    /// The table is full: drop the windows that ended, then, if more than
    /// three quarters of the table is still live, forget windows down to
    /// that — addresses still under the limit before blocked ones, older
    /// windows before newer. Each call frees at least a quarter of the
    /// table, so its O(n) cost is paid at most once per n/4 new addresses.
    /// Forgetting an address only gives it a fresh window: it never blocks
    /// anyone else.
    fn make_room(&mut self, limit: u32, now: Instant) {
        self.auth_failures.retain(|_, (start, _)| now.saturating_duration_since(*start) < AUTH_WINDOW);
        let keep = MAX_TRACKED_ADDRESSES * 3 / 4;
        if self.auth_failures.len() <= keep {
            return;
        }
        let mut order: Vec<(bool, Instant, AddrKey)> =
            self.auth_failures.iter().map(|(k, &(start, n))| (n >= limit, start, *k)).collect();
        let forget = order.len() - keep;
        order.select_nth_unstable_by_key(forget - 1, |&(blocked, start, _)| (blocked, start));
        for (_, _, k) in &order[..forget] {
            self.auth_failures.remove(k);
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
        // A full table never blocks an address with no failures of its own;
        // it stays bounded; expired windows are swept first.
        let v4 = |i: u32| IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i));
        for i in 0..3 * MAX_TRACKED_ADDRESSES as u32 {
            l.record_auth_failure(&c, v4(i), t0 + Duration::from_millis(u64::from(i % 1000)));
            l.record_auth_failure(&c, v4(i), t0 + Duration::from_millis(u64::from(i % 1000)));
            assert!(l.auth_failures.len() <= MAX_TRACKED_ADDRESSES);
        }
        assert!(l.check_auth_failures(&c, "12.0.0.1".parse().unwrap(), t0).is_ok(), "a fresh address is verified");
        let last = v4(3 * MAX_TRACKED_ADDRESSES as u32 - 1);
        assert_eq!(l.check_auth_failures(&c, last, t0).unwrap_err().status, 429, "a recent offender stays blocked");
        let later = t0 + AUTH_WINDOW + Duration::from_secs(1);
        for i in 0..=MAX_TRACKED_ADDRESSES as u32 {
            l.record_auth_failure(&c, IpAddr::V4(std::net::Ipv4Addr::from(0x0c00_0000 + i)), later);
        }
        assert!(l.auth_failures.len() <= MAX_TRACKED_ADDRESSES, "{}", l.auth_failures.len());
        assert!(l.auth_failures.keys().all(|k| matches!(k.0, IpAddr::V4(a) if a.octets()[0] == 12)), "expired first");
    }

    #[test]
    fn blocked_addresses_are_forgotten_last() {
        let mut c = Config::for_tests("x");
        c.auth_failures_per_min = 2;
        let t0 = Instant::now();
        let mut l = Limits::new(&c, t0);
        let blocked: IpAddr = "10.9.9.9".parse().unwrap();
        l.record_auth_failure(&c, blocked, t0);
        l.record_auth_failure(&c, blocked, t0);
        // Many newer addresses with one failure each, over the table's size.
        for i in 0..2 * MAX_TRACKED_ADDRESSES as u32 {
            l.record_auth_failure(
                &c,
                IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i)),
                t0 + Duration::from_secs(1),
            );
        }
        assert_eq!(l.check_auth_failures(&c, blocked, t0 + Duration::from_secs(2)).unwrap_err().status, 429);
    }

    #[test]
    fn addresses_count_per_ipv4_address_and_ipv6_64() {
        let key = |s: &str| AddrKey::of(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
        assert_eq!(key("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(key("10.0.0.1").to_string(), "10.0.0.1");
        // Connections and failures both count per /64.
        let mut c = Config::for_tests("x");
        c.max_connections_per_ip = 2;
        c.auth_failures_per_min = 1;
        let t0 = Instant::now();
        let mut l = Limits::new(&c, t0);
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        l.add_client(ip("2001:db8::1"));
        l.add_client(ip("2001:db8::2"));
        assert_eq!(l.check_upgrade(&c, ip("2001:db8::3")).unwrap_err().status, 429);
        assert!(l.check_upgrade(&c, ip("2001:db8:0:1::3")).is_ok());
        l.remove_client(ip("2001:db8::1"));
        assert!(l.check_upgrade(&c, ip("2001:db8::3")).is_ok());
        l.record_auth_failure(&c, ip("2001:db8::1"), t0);
        assert!(l.check_auth_failures(&c, ip("2001:db8::99"), t0).is_err());
        assert!(l.check_auth_failures(&c, ip("2001:db8:0:1::99"), t0).is_ok());
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
        assert!(!l.http_per_ip.contains_key(&AddrKey::of(a)), "entries go at 0");
    }
}
