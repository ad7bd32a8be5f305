//! Linux process statistics (/proc) and resource limits.

use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4};

/// VmRSS of a process in KiB, from /proc/PID/status.
pub fn rss_kib(pid: u32) -> Option<u64> {
    parse_vmrss(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

pub fn parse_vmrss(status: &str) -> Option<u64> {
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of a process in clock ticks, from /proc/PID/stat.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    parse_stat_cpu(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// utime and stime of a process in clock ticks (user space, kernel).
pub fn cpu_ticks_split(pid: u32) -> Option<(u64, u64)> {
    parse_stat_cpu_split(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

pub fn parse_stat_cpu(stat: &str) -> Option<u64> {
    parse_stat_cpu_split(stat).map(|(u, s)| u + s)
}

/// The command name may contain spaces and parentheses, so fields are
/// counted after the last ')': state is field 3, utime 14, stime 15.
pub fn parse_stat_cpu_split(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state), so field n is rest[n - 3].
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some((utime, stime))
}

pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// CPU time (user + system) used by this process so far, in milliseconds.
pub fn own_cpu_ms() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

pub fn own_rss_kib() -> Option<u64> {
    parse_vmrss(&fs::read_to_string("/proc/self/status").ok()?)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the soft limit
/// now in force.
pub fn raise_nofile_limit() -> u64 {
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit { rlim_cur: rl.rlim_max, rlim_max: rl.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
        rl.rlim_cur as u64
    }
}

/// The kernel's TcpExt ListenOverflows counter (system-wide, from
/// /proc/net/netstat): SYNs dropped because an accept queue was full.
pub fn listen_overflows() -> Option<u64> {
    parse_netstat_field(&fs::read_to_string("/proc/net/netstat").ok()?, "TcpExt:", "ListenOverflows")
}

/// /proc/net/netstat holds pairs of lines: `Prefix: names...` then
/// `Prefix: values...`.
pub fn parse_netstat_field(text: &str, prefix: &str, field: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let names = lines.next()?;
    let values = lines.next()?;
    let idx = names.split_whitespace().position(|n| n == field)?;
    values.split_whitespace().nth(idx)?.parse().ok()
}

/// Time a process's main thread ran and waited for a CPU (run queue), in
/// nanoseconds, from /proc/PID/schedstat (`run_ns wait_ns timeslices`).
/// Waiting time is how much the machine's other load delayed it.
pub fn sched_ns(pid: Option<u32>) -> Option<(u64, u64)> {
    let path = pid.map_or("/proc/self/schedstat".to_string(), |p| format!("/proc/{p}/schedstat"));
    parse_schedstat(&fs::read_to_string(path).ok()?)
}

pub fn parse_schedstat(s: &str) -> Option<(u64, u64)> {
    let mut f = s.split_whitespace();
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// The 1-minute load average.
pub fn loadavg() -> Option<f64> {
    fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// Open file descriptors of a process: the entries of /proc/PID/fd.
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// Send and receive queue bytes of the IPv4 TCP sockets in /proc/net/tcp
/// (all sockets of this network namespace, other processes' included)
/// whose (local, remote) pair is in `wanted`.
pub fn tcp_queues(
    wanted: &std::collections::HashSet<(SocketAddrV4, SocketAddrV4)>,
) -> Option<std::collections::HashMap<(SocketAddrV4, SocketAddrV4), (u64, u64)>> {
    let text = fs::read_to_string("/proc/net/tcp").ok()?;
    let mut found = std::collections::HashMap::with_capacity(wanted.len());
    for line in text.lines().skip(1) {
        if let Some((local, remote, tx, rx)) = parse_tcp_line(line)
            && wanted.contains(&(local, remote))
        {
            found.insert((local, remote), (tx, rx));
        }
    }
    Some(found)
}

/// One line of /proc/net/tcp: `sl local rem st tx_queue:rx_queue ...`,
/// addresses as `0100007F:1F90` (the IPv4 address as the kernel's
/// in-memory u32 printed in hex, then the port in hex).
pub fn parse_tcp_line(line: &str) -> Option<(SocketAddrV4, SocketAddrV4, u64, u64)> {
    let mut f = line.split_whitespace();
    let _sl = f.next()?;
    let addr = |s: &str| -> Option<SocketAddrV4> {
        let (ip, port) = s.split_once(':')?;
        let ip = u32::from_str_radix(ip, 16).ok()?;
        Some(SocketAddrV4::new(Ipv4Addr::from(ip.to_ne_bytes()), u16::from_str_radix(port, 16).ok()?))
    };
    let local = addr(f.next()?)?;
    let remote = addr(f.next()?)?;
    let _st = f.next()?;
    let (tx, rx) = f.next()?.split_once(':')?;
    Some((local, remote, u64::from_str_radix(tx, 16).ok()?, u64::from_str_radix(rx, 16).ok()?))
}

/// Random bytes from the kernel, hex-encoded (secrets for a started server).
pub fn random_hex(bytes: usize) -> Result<String, String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        let s = "Name:\ttaskcast\nVmPeak:\t  20000 kB\nVmRSS:\t   12345 kB\nThreads:\t1\n";
        assert_eq!(parse_vmrss(s), Some(12345));
        assert_eq!(parse_vmrss("Name: x\n"), None);
    }

    #[test]
    fn parses_stat_with_odd_comm() {
        let s = "4242 (task cast) (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0 12345 1000 200";
        assert_eq!(parse_stat_cpu(s), Some(325));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn parses_netstat() {
        let t = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 17 18\nIpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(parse_netstat_field(t, "TcpExt:", "ListenOverflows"), Some(17));
        assert_eq!(parse_netstat_field(t, "TcpExt:", "Nope"), None);
        assert_eq!(parse_netstat_field(t, "IpExt:", "InNoRoutes"), Some(0));
    }

    #[test]
    fn parses_proc_net_tcp() {
        let l = "   3: 0100007F:1F90 0200007F:A2C4 01 0000ABCD:00000010 00:00000000 00000000  1000        0 123 1 0 20 4 30 10 -1";
        let (local, remote, tx, rx) = parse_tcp_line(l).unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(local, "127.0.0.1:8080".parse().unwrap());
            assert_eq!(remote, "127.0.0.2:41668".parse().unwrap());
        }
        assert_eq!((tx, rx), (0xABCD, 0x10));
        assert!(parse_tcp_line("  sl  local_address rem_address   st tx_queue rx_queue").is_none());
        assert!(parse_tcp_line("").is_none());
    }

    #[test]
    fn finds_own_socket_in_proc_net_tcp() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        std::io::Write::write_all(&mut s, b"hello").unwrap();
        let v4 = |a: std::net::SocketAddr| match a {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        let key = (v4(c.local_addr().unwrap()), v4(c.peer_addr().unwrap()));
        let wanted = [key].into_iter().collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let got = tcp_queues(&wanted).unwrap();
            if got.get(&key) == Some(&(0, 5)) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{got:?}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn parses_schedstat() {
        assert_eq!(parse_schedstat("123 456 7\n"), Some((123, 456)));
        assert_eq!(parse_schedstat("x"), None);
        assert!(sched_ns(None).is_some());
        assert!(loadavg().is_some());
    }

    #[test]
    fn fds_and_liveness_of_own_process() {
        let pid = std::process::id();
        assert!(fd_count(pid).unwrap() >= 3);
        assert!(alive(pid));
        assert!(!alive(u32::MAX));
        assert_eq!(random_hex(4).unwrap().len(), 8);
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(cpu_ticks(pid).is_some());
        assert!(clock_ticks_per_sec() > 0);
    }
}
