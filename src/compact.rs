//! Compact forms of std types for what every connection keeps (10,000
//! idle connections are the server's common load; see
//! `benches/conn_memory.rs`). The loop itself keeps using the std types.
//!
//! - [`Millis`]: whole milliseconds since this process first read the
//!   clock, in 8 bytes where an `Instant` takes 16 (an `Option<Millis>` 8,
//!   an `Option<Instant>` 16). A connection keeps five moments (token
//!   expiry, last frame, next ping, close deadline, its rate bucket).
//!   Converting truncates to the millisecond, and a `Millis` converted back
//!   is exactly that millisecond, so a deadline set from a `Millis` and the
//!   `Millis` of the moment it fires compare as expected (`now >= deadline`).
//! - [`PackedIp`], [`PackedAddr`]: an address in 16 bytes (IPv4 as
//!   IPv4-mapped IPv6) where `IpAddr` takes 17 and pads to 24 beside
//!   8-byte fields; a socket address in 18 where `SocketAddr` takes 32
//!   (flow info and scope id are never used here).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU64;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Milliseconds since [`start`], plus one (so `Option<Millis>` needs no
/// extra word). u64: no wrap-around in any server's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(NonZeroU64);

/// The process's clock origin (the first call fixes it).
fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

impl Millis {
    /// Whole milliseconds since the origin.
    pub fn since_start(self) -> u64 {
        self.0.get() - 1
    }

    /// The moment as an `Instant` (exact: a whole millisecond after the origin).
    pub fn instant(self) -> Instant {
        start() + Duration::from_millis(self.since_start())
    }

    /// The first whole millisecond at or after `t` (a deadline kept so
    /// never fires early).
    pub fn ceil(t: Instant) -> Millis {
        let m = Millis::from(t);
        if m.instant() < t { m + Duration::from_millis(1) } else { m }
    }

    /// The time from `earlier` to this moment (zero if `earlier` is later).
    pub fn saturating_since(self, earlier: Millis) -> Duration {
        Duration::from_millis(self.0.get().saturating_sub(earlier.0.get()))
    }
}

impl From<Instant> for Millis {
    /// Truncates to the millisecond; moments before the origin become it.
    fn from(t: Instant) -> Millis {
        let ms = u64::try_from(t.saturating_duration_since(start()).as_millis()).unwrap_or(u64::MAX - 1);
        Millis(NonZeroU64::MIN.saturating_add(ms))
    }
}

impl From<Millis> for Instant {
    fn from(m: Millis) -> Instant {
        m.instant()
    }
}

impl std::ops::Add<Duration> for Millis {
    type Output = Millis;
    /// Whole milliseconds of `d` later (saturating far in the future).
    fn add(self, d: Duration) -> Millis {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Millis(self.0.saturating_add(ms))
    }
}

impl PartialEq<Instant> for Millis {
    fn eq(&self, other: &Instant) -> bool {
        *self == Millis::from(*other)
    }
}

impl PartialOrd<Instant> for Millis {
    /// Compares with `other` truncated to the millisecond.
    fn partial_cmp(&self, other: &Instant) -> Option<std::cmp::Ordering> {
        Some(self.cmp(&Millis::from(*other)))
    }
}

impl PartialEq<Millis> for Instant {
    fn eq(&self, other: &Millis) -> bool {
        Millis::from(*self) == *other
    }
}

impl PartialOrd<Millis> for Instant {
    /// Compares this moment truncated to the millisecond with `other`.
    fn partial_cmp(&self, other: &Millis) -> Option<std::cmp::Ordering> {
        Some(Millis::from(*self).cmp(other))
    }
}

/// An IP address in 16 bytes, alignment 1 (IPv4 as IPv4-mapped IPv6).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PackedIp([u8; 16]);

impl From<IpAddr> for PackedIp {
    fn from(ip: IpAddr) -> PackedIp {
        PackedIp(match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        })
    }
}

impl From<PackedIp> for IpAddr {
    /// IPv4-mapped addresses come back as IPv4 (as `to_canonical` gives).
    fn from(p: PackedIp) -> IpAddr {
        Ipv6Addr::from(p.0).to_canonical()
    }
}

impl std::fmt::Display for PackedIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        IpAddr::from(*self).fmt(f)
    }
}

impl std::fmt::Debug for PackedIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        IpAddr::from(*self).fmt(f)
    }
}

/// A socket address in 18 bytes, alignment 1.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PackedAddr {
    ip: PackedIp,
    port: [u8; 2],
}

impl PackedAddr {
    pub fn ip(&self) -> IpAddr {
        self.ip.into()
    }

    pub fn port(&self) -> u16 {
        u16::from_ne_bytes(self.port)
    }
}

impl From<SocketAddr> for PackedAddr {
    fn from(a: SocketAddr) -> PackedAddr {
        PackedAddr { ip: a.ip().into(), port: a.port().to_ne_bytes() }
    }
}

impl From<PackedAddr> for SocketAddr {
    fn from(a: PackedAddr) -> SocketAddr {
        SocketAddr::new(a.ip(), a.port())
    }
}

impl std::fmt::Display for PackedAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        SocketAddr::from(*self).fmt(f)
    }
}

impl std::fmt::Debug for PackedAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        SocketAddr::from(*self).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_addresses_round_trip() {
        for a in ["127.0.0.1:8080", "[::1]:443", "[2001:db8::7]:1", "10.1.2.3:0"] {
            let sa: SocketAddr = a.parse().unwrap();
            let p = PackedAddr::from(sa);
            assert_eq!(SocketAddr::from(p), sa);
            assert_eq!(p.to_string(), sa.to_string());
            assert_eq!(IpAddr::from(PackedIp::from(sa.ip())), sa.ip());
        }
        assert_eq!((std::mem::size_of::<PackedAddr>(), std::mem::align_of::<PackedAddr>()), (18, 1));
        assert_eq!(std::mem::size_of::<PackedIp>(), 16);
    }

    #[test]
    fn round_trips_to_the_millisecond_and_orders_like_instants() {
        let _ = start(); // moments before the origin are clamped to it
        let t0 = Instant::now();
        let m = Millis::from(t0);
        assert!(m.instant() <= t0 && t0 - m.instant() < Duration::from_millis(1));
        assert_eq!(Millis::from(m.instant()), m, "a Millis converted back is exact");
        let later = m + Duration::from_millis(1500);
        assert_eq!(later.saturating_since(m), Duration::from_millis(1500));
        assert_eq!(m.saturating_since(later), Duration::ZERO);
        // A deadline fires when its instant has come, not a millisecond early.
        assert!(later.instant() >= later && later.instant() - Duration::from_micros(10) < later);
        assert!(t0 + Duration::from_secs(2) >= later && t0 < later);
        assert_eq!(std::mem::size_of::<Option<Millis>>(), 8);
        assert!(m + Duration::MAX > later, "saturates, never wraps");
        let c = Millis::ceil(t0 + Duration::from_micros(1));
        assert!(c.instant() > t0 && c.instant() - t0 <= Duration::from_millis(1));
        assert_eq!(Millis::ceil(m.instant()), m, "a whole millisecond is its own ceiling");
    }
}
