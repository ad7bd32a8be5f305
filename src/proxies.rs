//! Which peers are our reverse proxies, and the client address their
//! `X-Forwarded-For` gives.
//!
//! Only a peer listed in TRUSTED_PROXIES (addresses or CIDR blocks; by
//! default loopback, i.e. a proxy on this machine) has its
//! `X-Forwarded-For` read, and then the header is walked from the right:
//! each proxy appends the address it received the request from, so the
//! right-most address that is not itself a trusted proxy is the client.
//! Everything left of it was written by the client and proves nothing
//! (a client can put any address there), which is why the left-most entry
//! is never believed.

use std::fmt;
use std::net::IpAddr;

/// One address block: `10.0.0.0/8`, `::1/128`, or a bare address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR` or `ADDR/PREFIX`.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
            },
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| -> (u128, u32) {
            match ip {
                IpAddr::V4(v) => (u32::from(v) as u128, 32),
                IpAddr::V6(v) => (u128::from(v), 128),
            }
        };
        let (net, width) = bits(self.addr);
        let (ip, ip_width) = bits(ip.to_canonical());
        if width != ip_width {
            return false;
        }
        let shift = width - u32::from(self.prefix);
        shift >= width || (net >> shift) == (ip >> shift)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// TRUSTED_PROXIES: the peers whose `X-Forwarded-For` is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// The default: a proxy on this machine (127.0.0.0/8 and ::1).
    pub fn loopback() -> TrustedProxies {
        TrustedProxies(vec![Cidr::parse("127.0.0.0/8").expect("valid"), Cidr::parse("::1").expect("valid")])
    }

    /// A comma-separated list of addresses and CIDR blocks; `none` trusts
    /// no one (the TCP peer is always the client).
    pub fn parse(s: &str) -> Result<TrustedProxies, String> {
        if s.trim().eq_ignore_ascii_case("none") {
            return Ok(TrustedProxies(Vec::new()));
        }
        let list =
            s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(Cidr::parse).collect::<Result<Vec<_>, _>>()?;
        if list.is_empty() {
            return Err("lists no address (use none to trust no proxy)".into());
        }
        Ok(TrustedProxies(list))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The request's client address: the TCP peer, or — when the peer is a
    /// trusted proxy — the right-most `X-Forwarded-For` address that is
    /// not a trusted proxy. If every address is trusted, the left-most one;
    /// an entry that is not an address stops the walk at the last good one.
    pub fn client_ip(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        let mut last = peer;
        for entry in forwarded_for.unwrap_or("").rsplit(',') {
            let Ok(ip) = entry.trim().parse::<IpAddr>() else {
                return last;
            };
            let ip = ip.to_canonical();
            if !self.contains(ip) {
                return ip;
            }
            last = ip;
        }
        last
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let list: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&list.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_blocks() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains(ip("10.1.200.3")) && !c.contains(ip("10.2.0.1")) && !c.contains(ip("::1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(Cidr::parse("127.0.0.1").unwrap().contains(ip("::ffff:127.0.0.1")));
        for bad in ["10.0.0.0/33", "::/129", "nope", "10.0.0.0/x", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn right_most_untrusted_address_is_the_client() {
        let t = TrustedProxies::parse("127.0.0.1, 10.0.0.0/8").unwrap();
        let cases: &[(&str, Option<&str>, &str)] = &[
            // An untrusted peer's header is ignored.
            ("9.9.9.9", Some("1.2.3.4"), "9.9.9.9"),
            // nginx on loopback appended the client's address.
            ("127.0.0.1", Some("203.0.113.7"), "203.0.113.7"),
            // The client wrote a fake address first: the appended one wins.
            ("127.0.0.1", Some("6.6.6.6, 203.0.113.7"), "203.0.113.7"),
            // Two trusted hops (an internal load balancer, then nginx).
            ("127.0.0.1", Some("6.6.6.6, 203.0.113.7, 10.0.0.5"), "203.0.113.7"),
            // All trusted: the left-most.
            ("127.0.0.1", Some("10.0.0.9, 10.0.0.5"), "10.0.0.9"),
            // No header, or junk: the last trusted hop.
            ("127.0.0.1", None, "127.0.0.1"),
            ("127.0.0.1", Some("junk"), "127.0.0.1"),
            ("127.0.0.1", Some("203.0.113.7, junk, 10.0.0.5"), "10.0.0.5"),
        ];
        for (peer, xff, want) in cases {
            assert_eq!(t.client_ip(ip(peer), *xff), ip(want), "{peer} {xff:?}");
        }
        let none = TrustedProxies::parse("none").unwrap();
        assert_eq!(none.client_ip(ip("127.0.0.1"), Some("1.2.3.4")), ip("127.0.0.1"));
        assert!(TrustedProxies::parse(" , ").is_err());
        assert_eq!(TrustedProxies::loopback().client_ip(ip("::1"), Some("1.2.3.4")), ip("1.2.3.4"));
    }
}
