//! One taskcast process under test (the only one, or one of a cluster
//! soak's instances): its address, its /health poller, the RSS and fd
//! samples taken from it, and how it ended.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http;
use crate::serverproc::ServerProc;
use crate::verdict::LogBook;

pub(super) struct Instance {
    pub(super) server: ServerProc,
    pub(super) addr: SocketAddr,
    pub(super) host_header: String,
    pub(super) health: HealthPoller,
    pub(super) samples: Samples,
    /// Its open fds at rest, before any client.
    pub(super) fd_baseline: usize,
    pub(super) rss_start: Option<u64>,
    /// It exited during the run (not stopped by us).
    pub(super) died: bool,
    /// Filled in at the end of the run.
    pub(super) settle: Settle,
    pub(super) exit: Option<String>,
    pub(super) log: Option<LogBook>,
}

impl Instance {
    /// Waits (bounded) for its /health, takes its fd baseline and starts
    /// polling /health.
    pub(super) fn ready(mut server: ServerProc, addr: SocketAddr, poll_every: Duration) -> Result<Instance, String> {
        let host_header = addr.to_string();
        wait_health(addr, &host_header, &mut server, Duration::from_secs(10))?;
        let fd_baseline = baseline_fds(&server).ok_or("cannot read the server's /proc/PID/fd")?;
        let rss_start = server.rss_kib();
        let samples = Samples { last_fds: Some(fd_baseline), ..Samples::default() };
        Ok(Instance {
            health: HealthPoller::start(addr, host_header.clone(), poll_every),
            server,
            addr,
            host_header,
            samples,
            fd_baseline,
            rss_start,
            died: false,
            settle: Settle::default(),
            exit: None,
            log: None,
        })
    }
}

/// What a report row calls instance `i` of `n`: "server" when it is the
/// only one, else "instance A", "instance B", ...
pub(super) fn label(i: usize, n: usize) -> String {
    if n <= 1 { "server".into() } else { format!("instance {}", letter(i)) }
}

/// A, B, ... (then I9 and so on past Z, which --cluster never reaches).
pub(super) fn letter(i: usize) -> String {
    if i < 26 { char::from(b'A' + i as u8).to_string() } else { format!("I{i}") }
}

/// The JSON key of a per-instance value: `key` with one server, `key_a`
/// (`_b`, ...) in a cluster soak.
pub(super) fn json_key(key: &str, i: usize, n: usize) -> String {
    if n <= 1 { key.to_string() } else { format!("{key}_{}", letter(i).to_lowercase()) }
}

/// Polls /health from its own thread: a slow answer (a starved server) must
/// not stall the clients' loop, which would delay their reads and show up
/// as delivery latency. The latest answer is read from an atomic.
pub(super) struct HealthPoller {
    /// connectedClients, or u64::MAX before the first answer / after a failure.
    latest: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HealthPoller {
    pub(super) fn start(addr: SocketAddr, host_header: String, every: Duration) -> HealthPoller {
        let latest = Arc::new(AtomicU64::new(u64::MAX));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (latest.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("health".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    l.store(health_clients(addr, &host_header).unwrap_or(u64::MAX), Ordering::Relaxed);
                    // sleep in steps so that stop is prompt
                    let until = Instant::now() + every;
                    while !s.load(Ordering::Relaxed) && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
            .ok();
        HealthPoller { latest, stop, thread }
    }

    pub(super) fn latest(&self) -> Option<u64> {
        Some(self.latest.load(Ordering::Relaxed)).filter(|&n| n != u64::MAX)
    }

    /// Stops and joins (bounded: one /health request times out within 8 s).
    pub(super) fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// RSS/fd samples, seconds since the main phase began.
#[derive(Default)]
pub(super) struct Samples {
    pub(super) rss: Vec<(f64, u64)>,
    pub(super) fds_peak: usize,
    pub(super) last_fds: Option<usize>,
    pub(super) last_health: Option<u64>,
}

pub(super) fn health_clients(addr: SocketAddr, host_header: &str) -> Option<u64> {
    let (st, body) = http::get_health(addr, host_header).ok()?;
    if st != 200 {
        return None;
    }
    serde_json::from_str::<Value>(&body).ok()?.get("connectedClients")?.as_u64()
}

fn wait_health(addr: SocketAddr, host_header: &str, server: &mut ServerProc, bound: Duration) -> Result<(), String> {
    let deadline = Instant::now() + bound;
    loop {
        match http::get_health(addr, host_header) {
            Ok((200, _)) => return Ok(()),
            Ok((st, body)) if Instant::now() >= deadline => {
                return Err(format!("GET /health answered {st}: {body}"));
            }
            Err(e) if Instant::now() >= deadline => return Err(format!("GET /health on {addr} failed: {e}")),
            _ => {}
        }
        if let Some(e) = server.check_exit() {
            return Err(format!("the server exited ({e}); its log:\n{}", server.log_tail()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The server's fds at rest: the least of a few samples (our /health
/// connection may still be closing when the first is taken).
fn baseline_fds(server: &ServerProc) -> Option<usize> {
    let mut best = None;
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(n) = server.fds() {
            best = Some(best.map_or(n, |b: usize| b.min(n)));
        }
    }
    best
}

/// How the end state was reached.
#[derive(Default)]
pub(super) struct Settle {
    pub(super) fds: Option<usize>,
    pub(super) fds_at: Option<f64>,
    pub(super) health: Option<u64>,
    pub(super) health_at: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_keep_the_single_server_wording() {
        assert_eq!(label(0, 1), "server");
        assert_eq!(label(0, 2), "instance A");
        assert_eq!(label(1, 2), "instance B");
        assert_eq!(json_key("rss_kib", 0, 1), "rss_kib");
        assert_eq!(json_key("rss_kib", 1, 3), "rss_kib_b");
        assert_eq!(letter(25), "Z");
        assert_eq!(letter(26), "I26");
    }
}
