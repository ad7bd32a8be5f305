//! The cluster soak's publisher: one thread, one keep-alive connection per
//! instance, broadcast `seq` posted to instance `seq mod N`, each one only
//! after the previous one was answered.
//!
//! Why one at a time: in cluster mode `POST /api/broadcast` answers once
//! Redis has stored the message (and published it), so posting seq s+1
//! only after the answer to seq s makes Redis's order — the order every
//! instance delivers in — the seq order. Every healthy client on every
//! instance must then see strictly increasing seqs, which the ordinary
//! in-order score checks; two instances delivering in different orders
//! would show up as disorder on one of them. (The single-server soak keeps
//! its pipelined sender in `http.rs`.)

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::http::{self, MAX_RECONNECTS, ST_SENT, ST_UNKNOWN, SendShared, SenderResult};

/// An answer not read within this is a failed exchange (the connection is
/// dropped and made again for the next post to that instance).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

pub struct RoundRobinPlan {
    pub targets: Vec<SocketAddr>,
    pub token: String,
    /// Broadcasts per second, over all instances together.
    pub rate: f64,
    pub payload: usize,
    pub total_msgs: usize,
    pub deadline: Instant,
}

/// Which instance gets broadcast `seq`.
pub fn target_of(seq: usize, instances: usize) -> usize {
    seq % instances.max(1)
}

/// When broadcast `seq` is due, counted from the sender's start.
pub fn due_after(seq: usize, rate: f64) -> Duration {
    Duration::from_secs_f64(seq as f64 / rate)
}

/// One instance's keep-alive connection (made on first use, again after a
/// failure).
struct Link {
    addr: SocketAddr,
    head: String,
    stream: Option<TcpStream>,
    rbuf: Vec<u8>,
}

impl Link {
    fn new(addr: SocketAddr, token: &str) -> Link {
        let head = format!(
            "POST /api/broadcast HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: "
        );
        Link { addr, head, stream: None, rbuf: Vec::with_capacity(4096) }
    }

    fn connect(&mut self) -> Result<(), String> {
        let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
            .map_err(|e| format!("round-robin sender: cannot connect to {}: {e}", self.addr))?;
        let _ = s.set_nodelay(true);
        let _ = s.set_write_timeout(Some(ANSWER_TIMEOUT));
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        self.stream = Some(s);
        self.rbuf.clear();
        Ok(())
    }

    /// Writes one request and reads its answer: (status, body, close).
    fn exchange(&mut self, req: &[u8]) -> Result<(u16, Vec<u8>, bool), String> {
        let addr = self.addr;
        let s = self.stream.as_mut().ok_or("not connected")?;
        s.write_all(req).map_err(|e| format!("write to {addr} failed: {e}"))?;
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(r) = http::parse_http_response(&self.rbuf)? {
                let body = self.rbuf[r.body_start..r.consumed].to_vec();
                self.rbuf.drain(..r.consumed);
                return Ok((r.status, body, r.close));
            }
            match s.read(&mut chunk) {
                Ok(0) => return Err(format!("{addr} closed the keep-alive connection before answering")),
                Ok(n) => self.rbuf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read from {addr} failed: {e}")),
            }
            if Instant::now() >= deadline {
                return Err(format!("no answer from {addr} within {ANSWER_TIMEOUT:?}"));
            }
        }
    }
}

/// Posts every broadcast at the plan's rate, in turn to each instance, until
/// done, drained, stopped or past the deadline.
pub fn run(plan: RoundRobinPlan, sh: Arc<SendShared>) -> SenderResult {
    let mut links: Vec<Link> = plan.targets.iter().map(|&a| Link::new(a, &plan.token)).collect();
    let mut res = SenderResult::default();
    let start = Instant::now();
    for seq in 0..plan.total_msgs.min(sh.send_ns.len()) {
        if !wait_due(&sh, start + due_after(seq, plan.rate)) {
            break;
        }
        if Instant::now() >= plan.deadline {
            res.errors.push(format!("round-robin sender: phase timeout after {seq} posts"));
            break;
        }
        let link = &mut links[target_of(seq, plan.targets.len())];
        if !post_one(link, seq, &plan, &sh, &mut res) {
            break;
        }
    }
    sh.senders_done.fetch_add(1, Ordering::SeqCst);
    res
}

/// Waits (in steps of at most 100 ms, for the stop checks) until `due`;
/// false once the run drains or stops.
fn wait_due(sh: &SendShared, due: Instant) -> bool {
    loop {
        if sh.drain.load(Ordering::Relaxed) || sh.stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= due {
            return true;
        }
        std::thread::sleep((due - now).min(Duration::from_millis(100)));
    }
}

/// Posts broadcast `seq` to one instance and records its answer. False
/// when the sender must give up (the reason is then the run's fatal error).
fn post_one(link: &mut Link, seq: usize, plan: &RoundRobinPlan, sh: &SendShared, res: &mut SenderResult) -> bool {
    let ns = |t: Instant| t.saturating_duration_since(sh.base).as_nanos() as u64 + 1;
    if link.stream.is_none()
        && let Err(e) = link.connect()
    {
        sh.set_fatal(e);
        return false;
    }
    let mut req = Vec::with_capacity(link.head.len() + plan.payload + 128);
    http::append_request(&mut req, &link.head, seq as u64, plan.payload, None);
    let sent_at = Instant::now();
    sh.send_ns[seq].store(ns(sent_at), Ordering::Release);
    sh.status[seq].store(ST_SENT, Ordering::Relaxed);
    sh.sent.fetch_add(1, Ordering::Relaxed);
    match link.exchange(&req) {
        Ok((status, body, close)) => {
            let got = Instant::now();
            res.ack.record_between(sent_at, got);
            sh.ack_ns[seq].store(ns(got), Ordering::Release);
            http::record_outcome(sh, res, seq, status, &body);
            if close {
                res.errors.push(format!("round-robin sender: {} answered `Connection: close`", link.addr));
                link.stream = None;
            }
            true
        }
        Err(e) => {
            // Unanswered: it may or may not have been stored.
            sh.ack_ns[seq].store(ns(Instant::now()), Ordering::Release);
            sh.status[seq].store(ST_UNKNOWN, Ordering::Relaxed);
            sh.unknown.fetch_add(1, Ordering::Relaxed);
            res.errors.push(format!("round-robin sender: {e}; reconnecting"));
            link.stream = None;
            res.reconnects += 1;
            if res.reconnects > MAX_RECONNECTS {
                sh.set_fatal(format!("round-robin sender: {} failed exchanges; giving up", res.reconnects));
                return false;
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_go_to_the_instances_in_turn() {
        let got: Vec<usize> = (0..7).map(|s| target_of(s, 3)).collect();
        assert_eq!(got, vec![0, 1, 2, 0, 1, 2, 0]);
        // every instance gets an equal share (±1)
        let mut per = [0usize; 2];
        (0..1001).for_each(|s| per[target_of(s, 2)] += 1);
        assert_eq!(per, [501, 500]);
        assert_eq!(target_of(5, 1), 0);
        assert_eq!(target_of(5, 0), 0, "no instances must not divide by zero");
    }

    #[test]
    fn due_times_follow_the_overall_rate() {
        assert_eq!(due_after(0, 50.0), Duration::ZERO);
        assert_eq!(due_after(50, 50.0), Duration::from_secs(1));
        assert_eq!(due_after(25, 50.0), Duration::from_millis(500));
    }

    #[test]
    fn request_names_the_instance_and_the_key() {
        let link = Link::new("127.0.0.1:4567".parse().unwrap(), "k3y");
        let mut req = Vec::new();
        http::append_request(&mut req, &link.head, 9, 200, None);
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut r = httparse::Request::new(&mut headers);
        let n = match r.parse(&req).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("partial request"),
        };
        assert_eq!(r.path, Some("/api/broadcast"));
        let h = |name: &str| r.headers.iter().find(|h| h.name == name).map(|h| h.value.to_vec());
        assert_eq!(h("Host").unwrap(), b"127.0.0.1:4567");
        assert_eq!(h("Authorization").unwrap(), b"Bearer k3y");
        let len: usize = String::from_utf8(h("Content-Length").unwrap()).unwrap().parse().unwrap();
        assert_eq!(req.len(), n + len, "exactly one request");
        assert_eq!(crate::ws::find_seq(&req[n..]), Some(9));
    }
}
