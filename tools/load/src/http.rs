//! Plain HTTP/1.1 pieces: token minting, `/health`, and the broadcast
//! senders (blocking keep-alive connections, one thread each, pipelined).

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::stats::Hist;
use crate::ws::find_uint_after;

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
    /// The channels claim (the server's CHANNELS_CLAIM default).
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    channels: &'a [String],
}

/// Mints an HS256 token with `sub`, `iat` = now and `exp` = now + 1 hour.
pub fn mint_token(secret: &str, sub: &str) -> Result<String, String> {
    mint_token_with_channels(secret, sub, &[])
}

/// [`mint_token`], granting `channels` too (the `channels` claim).
pub fn mint_token_with_channels(secret: &str, sub: &str, channels: &[String]) -> Result<String, String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let claims = Claims { sub, exp: now + 3600, iat: now, channels };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("cannot mint token: {e}"))
}

/// One parsed HTTP response at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// Bytes of the buffer that belong to this response (head + body).
    pub consumed: usize,
    pub body_start: usize,
    /// The server announced `Connection: close`.
    pub close: bool,
}

/// Parses one complete response with a Content-Length body.
/// Ok(None) means more bytes are needed.
pub fn parse_http_response(buf: &[u8]) -> Result<Option<HttpResponse>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > 64 * 1024 {
                return Err("response headers exceed 64 KiB".into());
            }
            return Ok(None);
        }
        Err(e) => return Err(format!("bad HTTP response: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    let mut len: Option<usize> = None;
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).unwrap_or("").trim();
            len = Some(v.parse().map_err(|_| format!("bad Content-Length `{v}`"))?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("chunked responses are not supported".into());
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if v.contains("close") {
                close = true;
            } else if v.contains("keep-alive") {
                close = false;
            }
        }
    }
    let len = match len {
        Some(l) => l,
        None if status == 204 || status == 304 || (100..200).contains(&status) => 0,
        None => return Err(format!("HTTP {status} response without Content-Length")),
    };
    if buf.len() < head + len {
        return Ok(None);
    }
    Ok(Some(HttpResponse { status, consumed: head + len, body_start: head, close }))
}

/// GET /health with a fresh connection. Returns status and body.
pub fn get_health(addr: SocketAddr, host_header: &str) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET /health HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        match parse_http_response(&buf) {
            Ok(Some(r)) => {
                let body = String::from_utf8_lossy(&buf[r.body_start..r.consumed]).into_owned();
                return Ok((r.status, body));
            }
            Ok(None) => {}
            Err(e) => return Err(io::Error::other(e)),
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the /health response was complete",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `data` object of broadcast `seq`, padded with a `zpad` string so that it
/// is about `payload` bytes long. `seq` comes first (also after a server
/// re-serialises with sorted keys) so receivers find it quickly.
pub fn broadcast_data(seq: u64, payload: usize) -> String {
    let digits = seq.to_string();
    let fixed = r#"{"seq":,"zpad":""}"#.len() + digits.len();
    let pad = payload.saturating_sub(fixed);
    let mut s = String::with_capacity(fixed + pad);
    s.push_str(r#"{"seq":"#);
    s.push_str(&digits);
    s.push_str(r#","zpad":""#);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str(r#""}"#);
    s
}

/// Appends one POST of broadcast `seq`: to everyone, or to channel
/// `project:<project>`.
pub(crate) fn append_request(out: &mut Vec<u8>, head: &str, seq: u64, payload: usize, project: Option<usize>) {
    let data = broadcast_data(seq, payload);
    let channel = project.map(|p| format!(r#""channel":"project:{p}","#)).unwrap_or_default();
    let body_len = r#"{"type":"task_updated","data":}"#.len() + channel.len() + data.len();
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body_len.to_string().as_bytes());
    out.extend_from_slice(b"\r\n\r\n{\"type\":\"task_updated\",");
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(b"\"data\":");
    out.extend_from_slice(data.as_bytes());
    out.push(b'}');
}

/// The project publish `seq` goes to, of `projects`: spread evenly and at
/// random-looking (splitmix64), the same in the senders and the receivers.
pub fn project_of(seq: u64, projects: usize) -> usize {
    let mut z = seq.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) % projects as u64) as usize
}

pub const ST_UNSENT: u8 = 0;
pub const ST_SENT: u8 = 1;
pub const ST_ACCEPTED: u8 = 2;
pub const ST_REJECTED: u8 = 3;
pub const ST_UNKNOWN: u8 = 4;

/// State shared by the senders and the receiving loop.
pub struct SendShared {
    pub base: Instant,
    /// Per seq: nanoseconds since `base` at which the POST was written, + 1
    /// (0 = not sent yet).
    pub send_ns: Vec<AtomicU64>,
    /// Per seq: nanoseconds since `base` at which the POST's response was
    /// parsed (or the sender gave up on it), + 1 (0 = unresolved). With one
    /// sender this grows with seq, like `send_ns`.
    pub ack_ns: Vec<AtomicU64>,
    /// Per seq: ST_* outcome of the POST.
    pub status: Vec<AtomicU8>,
    pub sent: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub unknown: AtomicU64,
    pub recipients: AtomicU64,
    pub senders_done: AtomicUsize,
    pub stop: AtomicBool,
    /// Stop posting new broadcasts but wait for the answers to those in
    /// flight (a clean end, unlike `stop`).
    pub drain: AtomicBool,
    pub fatal: Mutex<Option<String>>,
}

impl SendShared {
    pub fn new(msgs: usize) -> Self {
        SendShared {
            base: Instant::now(),
            send_ns: (0..msgs).map(|_| AtomicU64::new(0)).collect(),
            ack_ns: (0..msgs).map(|_| AtomicU64::new(0)).collect(),
            status: (0..msgs).map(|_| AtomicU8::new(ST_UNSENT)).collect(),
            sent: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            recipients: AtomicU64::new(0),
            senders_done: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            drain: AtomicBool::new(false),
            fatal: Mutex::new(None),
        }
    }

    pub fn set_fatal(&self, msg: String) {
        let mut f = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(msg);
        }
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

pub struct SenderPlan {
    pub id: usize,
    pub senders: usize,
    pub total_msgs: usize,
    /// Messages per second for this sender (None: as fast as possible).
    pub rate: Option<f64>,
    pub pipeline: usize,
    pub addr: SocketAddr,
    pub url: String,
    pub host_header: String,
    pub token: String,
    pub payload: usize,
    pub deadline: Instant,
    /// taskapp: each publish goes to channel `project:<project_of(seq)>`
    /// of this many (0: a broadcast to everyone).
    pub projects: usize,
}

impl SenderPlan {
    /// This sender posts seqs id, id + K, id + 2K, ... below total_msgs.
    pub fn count(&self) -> usize {
        if self.id >= self.total_msgs { 0 } else { (self.total_msgs - self.id).div_ceil(self.senders) }
    }
}

#[derive(Default)]
pub struct SenderResult {
    /// POST answer times: request written → its response read.
    pub ack: Hist,
    pub statuses: BTreeMap<u16, u64>,
    /// First body seen for each non-200 status.
    pub bodies: BTreeMap<u16, String>,
    pub errors: Vec<String>,
    pub reconnects: u64,
}

pub(crate) const MAX_RECONNECTS: u64 = 5;

fn connect_sender(plan: &SenderPlan) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&plan.addr, Duration::from_secs(5)).map_err(|e| {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            format!("sender {}: connection refused by {} — is the server running at {}?", plan.id, plan.addr, plan.url)
        } else {
            format!("sender {}: cannot connect to {}: {e}", plan.id, plan.addr)
        }
    })?;
    let _ = s.set_nodelay(true);
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    Ok(s)
}

/// Runs one sender to completion (or until stop/deadline).
pub fn run_sender(plan: SenderPlan, sh: Arc<SendShared>) -> SenderResult {
    let stream = match connect_sender(&plan) {
        Ok(s) => s,
        Err(e) => {
            sh.set_fatal(e);
            sh.senders_done.fetch_add(1, Ordering::SeqCst);
            return SenderResult::default();
        }
    };
    let mut s = Sender::new(plan, sh, stream);
    s.run();
    s.mark_unknown();
    s.sh.senders_done.fetch_add(1, Ordering::SeqCst);
    s.res
}

/// One sender's connection and its requests in flight. Each turn writes
/// every request that is due and fits in the pipeline window, then reads
/// answers until the next one is due (bounded, for the stop checks).
struct Sender {
    plan: SenderPlan,
    sh: Arc<SendShared>,
    stream: TcpStream,
    res: SenderResult,
    /// Request head up to the Content-Length value.
    head: String,
    start: Instant,
    /// Index (not seq) of this sender's next request, and how many to post.
    next: usize,
    count: usize,
    /// (seq, when it was written), oldest first: answers come in this order.
    inflight: VecDeque<(usize, Instant)>,
    out: Vec<u8>,
    rbuf: Vec<u8>,
    chunk: Vec<u8>,
    cur_timeout: Option<Duration>,
    reconnect_needed: bool,
}

impl Sender {
    fn new(plan: SenderPlan, sh: Arc<SendShared>, stream: TcpStream) -> Sender {
        let head = format!(
            "POST /api/broadcast HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: ",
            plan.host_header, plan.token
        );
        let out = Vec::with_capacity(plan.pipeline * (head.len() + plan.payload + 128));
        Sender {
            count: plan.count(),
            inflight: VecDeque::with_capacity(plan.pipeline),
            plan,
            sh,
            stream,
            res: SenderResult::default(),
            head,
            start: Instant::now(),
            next: 0,
            out,
            rbuf: Vec::with_capacity(16 * 1024),
            chunk: vec![0u8; 16 * 1024],
            cur_timeout: None,
            reconnect_needed: false,
        }
    }

    fn run(&mut self) {
        while self.next < self.count || !self.inflight.is_empty() {
            if self.sh.drain.load(Ordering::Relaxed) {
                self.count = self.next; // post nothing more; finish what is in flight
            }
            if self.sh.stop.load(Ordering::Relaxed) {
                break;
            }
            if Instant::now() >= self.plan.deadline {
                let (id, next, count) = (self.plan.id, self.next, self.count);
                self.res.errors.push(format!("sender {id}: phase timeout with {next} of {count} posts sent"));
                break;
            }
            if self.reconnect_needed {
                if !self.reconnect() {
                    break;
                }
                continue;
            }
            let next_due = self.write_due();
            if self.reconnect_needed {
                continue;
            }
            if self.inflight.is_empty() {
                // Rate mode, waiting for the next due time.
                if let Some(due) = next_due {
                    std::thread::sleep(due.saturating_duration_since(Instant::now()).min(Duration::from_millis(100)));
                }
                continue;
            }
            if self.read_some(next_due) {
                self.take_answers();
            }
        }
    }

    /// Resolves every request in flight as unanswered.
    fn mark_unknown(&mut self) {
        let now_ns = self.sh.base.elapsed().as_nanos() as u64 + 1;
        for (seq, _) in self.inflight.drain(..) {
            self.sh.ack_ns[seq].store(now_ns, Ordering::Release);
            self.sh.status[seq].store(ST_UNKNOWN, Ordering::Relaxed);
            self.sh.unknown.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A new keep-alive connection after the old one failed; false when it
    /// is time to give up (the failure is then fatal for the run).
    fn reconnect(&mut self) -> bool {
        self.mark_unknown();
        self.rbuf.clear();
        if self.res.reconnects >= MAX_RECONNECTS {
            self.sh.set_fatal(format!(
                "sender {}: keep-alive connection lost {} times; giving up",
                self.plan.id, self.res.reconnects
            ));
            return false;
        }
        self.res.reconnects += 1;
        // a pause before reconnecting to a server that just dropped us
        std::thread::sleep(Duration::from_millis(50));
        match connect_sender(&self.plan) {
            Ok(s) => self.stream = s,
            Err(e) => {
                self.sh.set_fatal(e);
                return false;
            }
        }
        self.cur_timeout = None;
        self.reconnect_needed = false;
        true
    }

    /// Writes every request that is due and fits in the pipeline window, in
    /// one write. Returns when the next one is due (rate mode).
    fn write_due(&mut self) -> Option<Instant> {
        self.out.clear();
        let now = Instant::now();
        let now_ns = now.duration_since(self.sh.base).as_nanos() as u64 + 1;
        let mut next_due = None;
        let mut batch = 0u64;
        while self.next < self.count && self.inflight.len() < self.plan.pipeline {
            if let Some(r) = self.plan.rate {
                let due = self.start + Duration::from_secs_f64(self.next as f64 / r);
                if due > now {
                    next_due = Some(due);
                    break;
                }
            }
            let seq = self.plan.id + self.plan.senders * self.next;
            let project = (self.plan.projects > 0).then(|| project_of(seq as u64, self.plan.projects));
            append_request(&mut self.out, &self.head, seq as u64, self.plan.payload, project);
            self.sh.send_ns[seq].store(now_ns, Ordering::Release);
            self.sh.status[seq].store(ST_SENT, Ordering::Relaxed);
            self.inflight.push_back((seq, now));
            self.next += 1;
            batch += 1;
        }
        if !self.out.is_empty() {
            self.sh.sent.fetch_add(batch, Ordering::Relaxed);
            if let Err(e) = self.stream.write_all(&self.out) {
                self.res.errors.push(format!("sender {}: write failed: {e}; reconnecting", self.plan.id));
                self.reconnect_needed = true;
            }
        }
        next_due
    }

    /// One read, waiting at most until `next_due` (and 100 ms). True when
    /// bytes arrived.
    fn read_some(&mut self, next_due: Option<Instant>) -> bool {
        let mut wait = Duration::from_millis(100);
        if let Some(due) = next_due {
            wait = wait.min(due.saturating_duration_since(Instant::now()));
        }
        let wait = wait.max(Duration::from_millis(1));
        if self.cur_timeout != Some(wait) {
            let _ = self.stream.set_read_timeout(Some(wait));
            self.cur_timeout = Some(wait);
        }
        match self.stream.read(&mut self.chunk) {
            Ok(0) => {
                self.res.errors.push(format!(
                    "sender {}: server closed the keep-alive connection with {} requests unanswered",
                    self.plan.id,
                    self.inflight.len()
                ));
                self.reconnect_needed = true;
                false
            }
            Ok(n) => {
                self.rbuf.extend_from_slice(&self.chunk[..n]);
                true
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::TimedOut
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                false
            }
            Err(e) => {
                self.res.errors.push(format!("sender {}: read failed: {e}; reconnecting", self.plan.id));
                self.reconnect_needed = true;
                false
            }
        }
    }

    /// Matches every complete answer in the buffer to the oldest request in
    /// flight, and records its answer time and outcome.
    fn take_answers(&mut self) {
        let got = Instant::now();
        let got_ns = got.duration_since(self.sh.base).as_nanos() as u64 + 1;
        let mut off = 0;
        loop {
            let r = match parse_http_response(&self.rbuf[off..]) {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    self.res.errors.push(format!("sender {}: {e}; reconnecting", self.plan.id));
                    self.reconnect_needed = true;
                    break;
                }
            };
            let Some((seq, sent_at)) = self.inflight.pop_front() else {
                self.res.errors.push(format!("sender {}: response without a request", self.plan.id));
                self.reconnect_needed = true;
                break;
            };
            self.res.ack.record_between(sent_at, got);
            self.sh.ack_ns[seq].store(got_ns, Ordering::Release);
            let body = &self.rbuf[off + r.body_start..off + r.consumed];
            record_outcome(&self.sh, &mut self.res, seq, r.status, body);
            off += r.consumed;
            if r.close {
                self.res
                    .errors
                    .push(format!("sender {}: server answered `Connection: close`; reconnecting", self.plan.id));
                self.reconnect_needed = true;
                break;
            }
        }
        self.rbuf.drain(..off);
    }
}

/// Counts one answer: accepted (with its `recipients`) or rejected (with
/// the first body per status; a 401 ends the run).
pub(crate) fn record_outcome(sh: &SendShared, res: &mut SenderResult, seq: usize, status: u16, body: &[u8]) {
    *res.statuses.entry(status).or_default() += 1;
    if status == 200 {
        sh.status[seq].store(ST_ACCEPTED, Ordering::Relaxed);
        sh.accepted.fetch_add(1, Ordering::Relaxed);
        if let Some(n) = find_uint_after(body, b"\"recipients\":") {
            sh.recipients.fetch_add(n, Ordering::Relaxed);
        }
        return;
    }
    sh.status[seq].store(ST_REJECTED, Ordering::Relaxed);
    sh.rejected.fetch_add(1, Ordering::Relaxed);
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    res.bodies.entry(status).or_insert_with(|| text.clone());
    if status == 401 {
        sh.set_fatal(format!(
            "POST /api/broadcast was refused with HTTP 401 ({text}): the --secret does not match the server's JWT_SECRET, or the --token is invalid or expired"
        ));
    }
}

/// Number of requests in a buffer of whole requests written by this module.
#[cfg(test)]
fn count_requests(out: &[u8]) -> u64 {
    const P: &[u8] = b"POST /api/broadcast ";
    out.windows(P.len()).filter(|w| *w == P).count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_padded_json() {
        for (seq, want) in [(0u64, 200usize), (123456, 200), (7, 10), (99, 1000)] {
            let d = broadcast_data(seq, want);
            let v: serde_json::Value = serde_json::from_str(&d).unwrap();
            assert_eq!(v["seq"], seq);
            if want >= 30 {
                assert_eq!(d.len(), want);
            }
            assert_eq!(crate::ws::find_seq(d.as_bytes()), Some(seq));
        }
    }

    #[test]
    fn request_is_well_formed() {
        let mut out = Vec::new();
        let head = "POST /api/broadcast HTTP/1.1\r\nHost: h\r\nContent-Length: ";
        append_request(&mut out, head, 5, 100, None);
        append_request(&mut out, head, 6, 100, Some(42));
        assert_eq!(count_requests(&out), 2);
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut req = httparse::Request::new(&mut headers);
        let n = match req.parse(&out).unwrap() {
            httparse::Status::Complete(n) => n,
            _ => panic!(),
        };
        let len: usize = std::str::from_utf8(req.headers[1].value).unwrap().parse().unwrap();
        let body: serde_json::Value = serde_json::from_slice(&out[n..n + len]).unwrap();
        assert_eq!(body["type"], "task_updated");
        assert_eq!(body["data"]["seq"], 5);
        assert!(body.get("channel").is_none());
        assert!(out[n + len..].starts_with(b"POST "));
        let rest = &out[n + len..];
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut req = httparse::Request::new(&mut headers);
        let n = match req.parse(rest).unwrap() {
            httparse::Status::Complete(n) => n,
            _ => panic!(),
        };
        let len: usize = std::str::from_utf8(req.headers[1].value).unwrap().parse().unwrap();
        assert_eq!(n + len, rest.len(), "Content-Length counts the channel");
        let body: serde_json::Value = serde_json::from_slice(&rest[n..]).unwrap();
        assert_eq!((body["channel"].as_str(), body["data"]["seq"].as_u64()), (Some("project:42"), Some(6)));
    }

    #[test]
    fn parses_pipelined_responses() {
        let one = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 33\r\n\r\n{\"status\":\"ok\",\"recipients\":1000}";
        let mut buf = one.to_vec();
        buf.extend_from_slice(b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
        let r = parse_http_response(&buf).unwrap().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.consumed, one.len());
        assert!(!r.close);
        assert_eq!(find_uint_after(&buf[r.body_start..r.consumed], b"\"recipients\":"), Some(1000));
        let r2 = parse_http_response(&buf[r.consumed..]).unwrap().unwrap();
        assert_eq!(r2.status, 429);
        assert!(r2.close);
        assert_eq!(parse_http_response(&buf[..one.len() - 1]).unwrap(), None);
        assert!(parse_http_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(parse_http_response(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
    }

    #[test]
    fn projects_are_spread_evenly() {
        let mut counts = [0u32; 100];
        for seq in 0..100_000 {
            counts[project_of(seq, 100)] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
        assert_eq!(project_of(7, 1), 0);
    }

    #[test]
    fn tokens_carry_granted_channels() {
        let t = mint_token_with_channels("0123456789abcdef0123456789abcdef", "load-3", &["project:0".into()]).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.set_required_spec_claims(&["exp"]);
        let d = jsonwebtoken::decode::<serde_json::Value>(
            &t,
            &jsonwebtoken::DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
            &v,
        )
        .unwrap();
        assert_eq!(d.claims["channels"], serde_json::json!(["project:0"]));
        let plain = mint_token("0123456789abcdef0123456789abcdef", "load-3").unwrap();
        let d = jsonwebtoken::decode::<serde_json::Value>(
            &plain,
            &jsonwebtoken::DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
            &v,
        )
        .unwrap();
        assert!(d.claims.get("channels").is_none());
    }

    #[test]
    fn sender_split() {
        let plan = |id, senders, total| SenderPlan {
            id,
            senders,
            total_msgs: total,
            rate: None,
            pipeline: 1,
            addr: "127.0.0.1:1".parse().unwrap(),
            url: String::new(),
            host_header: String::new(),
            token: String::new(),
            payload: 0,
            deadline: Instant::now(),
            projects: 0,
        };
        let counts: Vec<usize> = (0..4).map(|i| plan(i, 4, 10).count()).collect();
        assert_eq!(counts, vec![3, 3, 2, 2]);
        assert_eq!(plan(5, 8, 3).count(), 0);
        assert_eq!(plan(0, 1, 7).count(), 7);
    }

    #[test]
    fn token_is_hs256() {
        let t = mint_token("0123456789abcdef0123456789abcdef", "load-1").unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.set_required_spec_claims(&["exp", "sub"]);
        let d = jsonwebtoken::decode::<serde_json::Value>(
            &t,
            &jsonwebtoken::DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
            &v,
        )
        .unwrap();
        assert_eq!(d.claims["sub"], "load-1");
        assert!(d.claims["iat"].as_u64().is_some());
    }
}
