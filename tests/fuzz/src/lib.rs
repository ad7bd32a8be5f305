//! The harness the socket-level fuzz targets share.
//!
//! One real taskcast server runs in a thread of the fuzzing process
//! ([`server`]): the same `Server::spawn` the integration tests use, so every
//! input goes through the real event loop and the real per-connection state
//! machine (`Phase::Http` → `Phase::Ws` → `Phase::Closing`), not a copy of
//! it. libFuzzer's coverage counters are process-wide, so code the server
//! thread runs counts as coverage of the input that made it run.
//!
//! Per input a target opens one loopback connection, writes the peer's bytes,
//! half-closes (`shutdown(Write)`), and reads until the server closes
//! ([`Exchange`]). Then it checks what came back:
//! - every HTTP response is well formed, starts with `HTTP/1.1 `, has a known
//!   status, and nothing follows a `Connection: close` response
//!   ([`check_http`]);
//! - after a `101`, every frame the server sends parses, is unmasked and
//!   final, text is JSON, close codes are taskcast's documented ones (or the
//!   echo of the client's own close, RFC 6455 §5.5.1), and nothing follows a
//!   close frame ([`check_ws`]);
//! - the server closes after the client's FIN instead of waiting out a timer;
//! - every [`HEALTH_EVERY`] inputs, `/health` answers 200 and counts zero
//!   connected clients (each input's connection is gone by then), so a dead
//!   loop or a leaked client count is caught near the input that caused it.
//!
//! A panic on the server thread aborts the process (libfuzzer-sys installs an
//! aborting panic hook), which libFuzzer reports as a crash of the input.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use taskcast::{Config, Server};

/// The server's JWT secret (the seeds' tokens are signed with it).
pub const SECRET: &str = "fuzz-secret-fuzz-secret-fuzz-secret!";
/// The `sub` of the harness's tokens.
pub const SUB: &str = "fuzz";
/// Close codes taskcast itself sends (README, "Close codes the server
/// sends"), plus 1000 for a normal close.
pub const CLOSE_CODES: [u16; 10] = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1013, 4001, 4003];
/// Statuses taskcast answers with (`http::status_text`).
pub const STATUSES: [u16; 16] = [101, 200, 204, 400, 401, 403, 404, 405, 408, 411, 413, 415, 426, 429, 431, 503];
/// Inputs between two `/health` checks.
pub const HEALTH_EVERY: u64 = 200;
/// How long the server may take to close after the client's FIN. Nothing in
/// taskcast waits on a timer once the peer has half-closed, so this only
/// fires on a hang.
pub const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// The running server and the tokens inputs use.
pub struct Harness {
    pub addr: SocketAddr,
    /// A valid token for [`SUB`] (10 years).
    pub token: String,
    /// A valid token for another subject (in-band refresh must refuse it).
    pub other_token: String,
    /// An expired token (beyond the leeway).
    pub expired_token: String,
    execs: AtomicU64,
}

/// Starts the server on first use (one per fuzzing process).
pub fn server() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        // libFuzzer's C main does not ignore SIGPIPE the way a Rust main
        // does; both sides write to sockets the peer may have closed.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let mut config = Config::for_tests(SECRET);
        // Short, so a half-sent request cannot keep a connection long.
        config.request_timeout = Duration::from_millis(200);
        // Every input comes from 127.0.0.1, thousands a second: per-IP and
        // broadcast rate limits would answer most of them with 429 and hide
        // the paths behind.
        config.max_connections_per_ip = 0;
        config.broadcast_rate = 0;
        // Likewise the per-address limit on failed authentications (most
        // fuzzed tokens are forged).
        config.auth_failures_per_min = 0;
        let (addr, _handle, thread) = Server::spawn(config).expect("bind the fuzzed server");
        // The server lives as long as the process.
        std::mem::forget(thread);
        let secret = SECRET.as_bytes();
        // Beyond the 30 s leeway: refused.
        let expired = sign(secret, &serde_json::json!({"sub": SUB, "exp": taskcast::auth::now_secs() - 3600}));
        Harness {
            addr,
            token: taskcast::auth::mint(secret, SUB, 10 * 365 * 24 * 3600),
            other_token: taskcast::auth::mint(secret, "someone-else", 10 * 365 * 24 * 3600),
            expired_token: expired,
            execs: AtomicU64::new(0),
        }
    })
}

/// HS256-signs arbitrary claims (`mint` cannot make an expired token).
fn sign(secret: &[u8], claims: &serde_json::Value) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// How reading the server's answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The server closed cleanly (FIN).
    Eof,
    /// The server reset the connection: the tail of its output may be lost.
    Reset,
}

/// What the server sent on one connection.
#[derive(Debug)]
pub struct Exchange {
    pub bytes: Vec<u8>,
    pub end: End,
}

/// Opens a connection with bounded reads and writes.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("server at {addr} is gone: {e}"));
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(CLOSE_WAIT)).unwrap();
    // A server that stops reading (it pauses a client that does not read its
    // responses) must not block the harness forever.
    s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    s
}

/// Writes `data` (errors are fine: the server may have closed already),
/// half-closes, and reads until the server closes. Panics if it does not
/// close within [`CLOSE_WAIT`].
pub fn finish(mut s: TcpStream, data: &[u8], mut bytes: Vec<u8>) -> Exchange {
    let _ = s.write_all(data);
    let _ = s.shutdown(Shutdown::Write);
    let deadline = Instant::now() + CLOSE_WAIT;
    let mut chunk = [0u8; 16 * 1024];
    let end = loop {
        match s.read(&mut chunk) {
            Ok(0) => break End::Eof,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break End::Reset,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => panic!(
                "server did not close within {CLOSE_WAIT:?} of the client's FIN; it sent {} bytes: {:?}",
                bytes.len(),
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
            ),
            Err(e) => panic!("read: {e}"),
        }
        assert!(Instant::now() < deadline, "server kept sending for {CLOSE_WAIT:?} after the client's FIN");
    };
    abort_close(s);
    Exchange { bytes, end }
}

/// Closes with SO_LINGER 0 (RST, no TIME_WAIT): thousands of connections a
/// second would otherwise exhaust the ephemeral ports.
fn abort_close(s: TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// One raw exchange on a fresh connection.
pub fn exchange(data: &[u8]) -> Exchange {
    finish(connect(server().addr), data, Vec::new())
}

/// The upgrade request [`upgrade`] sends.
pub fn upgrade_request(token: &str, in_query: bool) -> String {
    let (path, auth) = if in_query {
        (format!("/ws?token={token}"), String::new())
    } else {
        ("/ws".to_string(), format!("Authorization: Bearer {token}\r\n"))
    };
    format!(
        "GET {path} HTTP/1.1\r\nHost: fuzz\r\n{auth}Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Opens a WebSocket with the harness token and reads the 101. Returns the
/// stream and any bytes that followed the 101 head.
pub fn upgrade(in_query: bool) -> (TcpStream, Vec<u8>) {
    let h = server();
    let mut s = connect(h.addr);
    s.write_all(upgrade_request(&h.token, in_query).as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]);
            assert!(head.starts_with("HTTP/1.1 101 "), "upgrade refused: {head}");
            let rest = buf.split_off(i + 4);
            return (s, rest);
        }
        // libFuzzer's -timeout alarm (SIGALRM, every second) interrupts reads.
        let n = match s.read(&mut chunk) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            r => r.expect("read the 101"),
        };
        assert!(n > 0, "server closed during the upgrade: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Counts an input; every [`HEALTH_EVERY`] inputs checks the server is
/// alive and counts no client (every earlier connection has been closed).
pub fn after_input() {
    let n = server().execs.fetch_add(1, Ordering::Relaxed) + 1;
    if n.is_multiple_of(HEALTH_EVERY) {
        check_health();
    }
}

/// `/health` answers 200 and, within a short wait, `connectedClients: 0`.
pub fn check_health() {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let clients = health();
        if clients == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "connectedClients stays {clients} with no client connected");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `connectedClients` from a `/health` that must answer 200.
pub fn health() -> u64 {
    let ex = exchange(b"GET /health HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n");
    let text = String::from_utf8_lossy(&ex.bytes);
    assert!(text.starts_with("HTTP/1.1 200 "), "/health: {text:?}");
    let body = &text[text.find("\r\n\r\n").expect("head end") + 4..];
    let v: serde_json::Value = serde_json::from_str(body).expect("/health body is JSON");
    v["connectedClients"].as_u64().expect("connectedClients")
}

// ---- checking HTTP ------------------------------------------------------

/// What the close frame a server sends may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseRule {
    /// Only [`CLOSE_CODES`], or the echo of this client close (code or
    /// `None` = the client's close had no code), if it sent one.
    Known(Option<Option<u16>>),
    /// The client's bytes are not known frame by frame (the raw HTTP
    /// targets): any code a server may send (1000-4999 less the reserved).
    Any,
}

/// Checks the server's side of an HTTP connection. `head_requests[i]` says
/// whether the i-th request was a HEAD (its response has no body); `None`:
/// unknown, so a response whose announced body is not JSON is taken as a
/// HEAD answer. After a 101 the rest is checked by [`check_ws`].
pub fn check_http(ex: &Exchange, head_requests: Option<&[bool]>, close: CloseRule) -> Result<(), String> {
    let mut rest = &ex.bytes[..];
    let mut i = 0;
    // The last thing read was a `100 Continue` (a final answer must follow).
    let mut interim = false;
    while !rest.is_empty() {
        let show = || String::from_utf8_lossy(&rest[..rest.len().min(200)]).into_owned();
        if !rest.starts_with(b"HTTP/1.1 ") {
            return Err(format!("response {i} does not start with \"HTTP/1.1 \": {:?}", show()));
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if ex.end == End::Reset => return Ok(()),
            Ok(httparse::Status::Partial) => return Err(format!("response {i} is cut short: {:?}", show())),
            Err(e) => return Err(format!("response {i} does not parse ({e}): {:?}", show())),
        };
        let status = resp.code.unwrap_or(0);
        if status == 100 {
            // RFC 9110 §10.1.1 / §15.2: an interim answer to `Expect:
            // 100-continue`, bare, at most once before the request's final one.
            if interim || n != b"HTTP/1.1 100 Continue\r\n\r\n".len() {
                return Err(format!("response {i}: unexpected 100 Continue: {:?}", show()));
            }
            interim = true;
            rest = &rest[n..];
            continue;
        }
        interim = false;
        if !STATUSES.contains(&status) {
            return Err(format!("response {i}: unexpected status {status}"));
        }
        let header = |name: &str| {
            resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| String::from_utf8_lossy(h.value))
        };
        if status == 101 {
            return check_ws(&rest[n..], ex.end, close);
        }
        let connection = header("connection").ok_or_else(|| format!("response {i}: no Connection header"))?;
        let close_after = match &*connection {
            "close" => true,
            "keep-alive" => false,
            other => return Err(format!("response {i}: Connection: {other}")),
        };
        let len = match header("content-length") {
            Some(v) => v.parse::<usize>().map_err(|_| format!("response {i}: Content-Length: {v}"))?,
            None if status == 204 => 0,
            None => return Err(format!("response {i}: no Content-Length")),
        };
        let body_start = &rest[n..];
        let is_head = match head_requests.and_then(|h| h.get(i)) {
            Some(h) => *h,
            None => len > 0 && !body_start.starts_with(b"{"),
        };
        let body_len = if is_head { 0 } else { len };
        if body_start.len() < body_len {
            return if ex.end == End::Reset { Ok(()) } else { Err(format!("response {i}: body cut short")) };
        }
        if body_len > 0 {
            let body = &body_start[..body_len];
            serde_json::from_slice::<serde_json::Value>(body)
                .map_err(|e| format!("response {i}: body is not JSON ({e}): {:?}", String::from_utf8_lossy(body)))?;
        }
        rest = &body_start[body_len..];
        if close_after && !rest.is_empty() {
            return Err(format!("response {i} said Connection: close, then more bytes followed: {:?}", show()));
        }
        i += 1;
    }
    Ok(())
}

// ---- checking WebSocket frames --------------------------------------------

/// One frame as it appears on the wire (unmasked payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireFrame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

/// Parses one frame from the front of `buf`: `None` if incomplete.
pub fn parse_frame(buf: &[u8]) -> Option<(WireFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (b0, b1) = (buf[0], buf[1]);
    let mut at = 2;
    let len = match b1 & 0x7f {
        126 => {
            let b = buf.get(2..4)?;
            at = 4;
            u16::from_be_bytes([b[0], b[1]]) as u64
        }
        127 => {
            let b = buf.get(2..10)?;
            at = 10;
            u64::from_be_bytes(b.try_into().unwrap())
        }
        n => n as u64,
    };
    let masked = b1 & 0x80 != 0;
    let key = if masked {
        let k = buf.get(at..at + 4)?;
        at += 4;
        Some([k[0], k[1], k[2], k[3]])
    } else {
        None
    };
    let len = usize::try_from(len).ok()?;
    let mut payload = buf.get(at..at.checked_add(len)?)?.to_vec();
    if let Some(k) = key {
        payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= k[i % 4]);
    }
    let frame = WireFrame { fin: b0 & 0x80 != 0, rsv: (b0 >> 4) & 7, opcode: b0 & 0x0f, masked, payload };
    Some((frame, at + len))
}

/// The first close frame a client stream carries, as far as it parses:
/// `Some(code)` (`None` = no code in it), or `None` if there is none.
pub fn first_client_close(mut buf: &[u8]) -> Option<Option<u16>> {
    while let Some((f, n)) = parse_frame(buf) {
        if f.opcode == 8 {
            return Some((f.payload.len() >= 2).then(|| u16::from_be_bytes([f.payload[0], f.payload[1]])));
        }
        buf = &buf[n..];
    }
    None
}

/// The code tungstenite answers a client close with (RFC 6455 §5.5.1: the
/// endpoint echoes the status code it received; a code not allowed on the
/// wire is answered with 1002).
pub fn echo_of(code: u16) -> u16 {
    use tungstenite::protocol::frame::coding::CloseCode;
    if CloseCode::from(code).is_allowed() { code } else { 1002 }
}

/// Checks every frame the server sent after the 101.
pub fn check_ws(mut buf: &[u8], end: End, close: CloseRule) -> Result<(), String> {
    let mut i = 0;
    while !buf.is_empty() {
        let Some((f, n)) = parse_frame(buf) else {
            return if end == End::Reset {
                Ok(())
            } else {
                Err(format!("frame {i} is cut short: {:02x?}", &buf[..buf.len().min(64)]))
            };
        };
        if !f.fin || f.rsv != 0 || f.masked {
            return Err(format!(
                "frame {i}: fin {} rsv {} masked {} (a server frame is final, plain and unmasked)",
                f.fin, f.rsv, f.masked
            ));
        }
        match f.opcode {
            1 => {
                let text = std::str::from_utf8(&f.payload).map_err(|_| format!("frame {i}: text is not UTF-8"))?;
                let v: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| format!("frame {i}: text is not JSON ({e}): {text:?}"))?;
                if !v["type"].is_string() {
                    return Err(format!("frame {i}: message without a string \"type\": {text}"));
                }
            }
            9 | 10 if f.payload.len() <= 125 => {}
            8 => {
                check_close(&f.payload, close).map_err(|e| format!("frame {i}: {e}"))?;
                // Nothing follows our close frame (tests/regressions.rs,
                // close_frame_is_the_last_frame_after_a_ping_flood).
                let tail = &buf[n..];
                if !tail.is_empty() {
                    return Err(format!("frame {i} is a close frame, then {} more bytes followed", tail.len()));
                }
            }
            op => return Err(format!("frame {i}: opcode {op} with {} bytes", f.payload.len())),
        }
        buf = &buf[n..];
        i += 1;
    }
    Ok(())
}

fn check_close(payload: &[u8], rule: CloseRule) -> Result<(), String> {
    if payload.len() > 125 || payload.len() == 1 {
        return Err(format!("close payload of {} bytes", payload.len()));
    }
    let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
    if payload.len() > 2 && std::str::from_utf8(&payload[2..]).is_err() {
        return Err("close reason is not UTF-8".into());
    }
    let ok = match (rule, code) {
        // An empty close only answers a client's empty close.
        (CloseRule::Known(client), None) => client == Some(None),
        (CloseRule::Known(client), Some(c)) => {
            CLOSE_CODES.contains(&c) || client.flatten().is_some_and(|cc| echo_of(cc) == c)
        }
        (CloseRule::Any, None) => true,
        (CloseRule::Any, Some(c)) => echo_of(c) == c && (1000..5000).contains(&c),
    };
    if ok { Ok(()) } else { Err(format!("close code {code:?} (client close: {rule:?})")) }
}

// ---- structured WebSocket input -------------------------------------------

/// A client frame, as the fuzzer chooses it; [`WsFrame::encode`] makes the
/// bytes (mostly well formed, so inputs reach past the frame parser).
#[derive(Arbitrary, Debug, Clone)]
pub struct WsFrame {
    pub fin: bool,
    /// RSV1-3 (low three bits; non-zero is a protocol error without an
    /// extension).
    pub rsv: u8,
    pub opcode: Opcode,
    pub mask: Mask,
    pub payload: Payload,
    pub length: LengthForm,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
    /// One of the reserved opcodes 3-7 and 11-15.
    Reserved(u8),
}

impl Opcode {
    fn nibble(self) -> u8 {
        match self {
            Opcode::Continuation => 0,
            Opcode::Text => 1,
            Opcode::Binary => 2,
            Opcode::Close => 8,
            Opcode::Ping => 9,
            Opcode::Pong => 10,
            Opcode::Reserved(n) => [3, 4, 5, 6, 7, 11, 12, 13, 14, 15][n as usize % 10],
        }
    }
}

/// RFC 6455 §5.3: a client MUST mask; an unmasked frame is a protocol error.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Mask {
    Key([u8; 4]),
    ZeroKey,
    Unmasked,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Payload {
    Raw(Vec<u8>),
    Text(String),
    /// `{"type":"ping"}`: answered with a pong message.
    Ping,
    /// `{"type":"auth","token":...}`.
    Auth(TokenChoice),
    /// A close body: code + reason.
    Close(u16, String),
    /// A close body with one of the codes that matter.
    CloseKnown(u8),
    /// `len` copies of `byte` (up to 64 KiB: over every size limit).
    Fill(u8, u16),
    /// JSON text padded to `len` bytes (around MAX_MESSAGE_BYTES).
    PaddedJson(u16),
}

#[derive(Arbitrary, Debug, Clone)]
pub enum TokenChoice {
    Valid,
    OtherSubject,
    Expired,
    Garbage(String),
}

/// How the payload length is written.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum LengthForm {
    /// The shortest encoding (what RFC 6455 §5.2 requires).
    Minimal,
    /// Always the 16-bit form.
    Sixteen,
    /// Always the 64-bit form.
    SixtyFour,
    /// A length that need not match the bytes that follow.
    Lie(u64),
}

impl Payload {
    fn bytes(&self) -> Vec<u8> {
        let h = server();
        match self {
            Payload::Raw(b) => b.clone(),
            Payload::Text(s) => s.as_bytes().to_vec(),
            Payload::Ping => br#"{"type":"ping"}"#.to_vec(),
            Payload::Auth(t) => {
                let token = match t {
                    TokenChoice::Valid => h.token.clone(),
                    TokenChoice::OtherSubject => h.other_token.clone(),
                    TokenChoice::Expired => h.expired_token.clone(),
                    TokenChoice::Garbage(s) => s.clone(),
                };
                serde_json::json!({"type": "auth", "token": token}).to_string().into_bytes()
            }
            Payload::Close(code, reason) => {
                let mut b = code.to_be_bytes().to_vec();
                b.extend_from_slice(reason.as_bytes());
                b
            }
            Payload::CloseKnown(i) => {
                let codes = [1000u16, 1001, 1002, 1005, 1006, 1011, 1015, 2999, 3000, 4999, 5000, 0];
                codes[*i as usize % codes.len()].to_be_bytes().to_vec()
            }
            Payload::Fill(b, n) => vec![*b; *n as usize],
            Payload::PaddedJson(n) => {
                let pad = (*n as usize).saturating_sub(27);
                format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(pad)).into_bytes()
            }
        }
    }
}

impl WsFrame {
    /// Appends the frame's wire bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let payload = self.payload.bytes();
        out.push(u8::from(self.fin) << 7 | (self.rsv & 7) << 4 | self.opcode.nibble());
        let mask_bit = if matches!(self.mask, Mask::Unmasked) { 0 } else { 0x80 };
        let len = payload.len() as u64;
        match self.length {
            LengthForm::Minimal if len < 126 => out.push(mask_bit | len as u8),
            LengthForm::Minimal | LengthForm::Sixteen if len <= 0xffff => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            LengthForm::Minimal | LengthForm::Sixteen | LengthForm::SixtyFour => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
            LengthForm::Lie(n) => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&n.to_be_bytes());
            }
        }
        let key = match self.mask {
            Mask::Key(k) => Some(k),
            Mask::ZeroKey => Some([0; 4]),
            Mask::Unmasked => None,
        };
        match key {
            Some(k) => {
                out.extend_from_slice(&k);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
            }
            None => out.extend_from_slice(&payload),
        }
    }
}

/// A whole client session after the upgrade.
#[derive(Arbitrary, Debug, Clone)]
pub struct WsSession {
    /// Token in `?token=` rather than `Authorization`.
    pub token_in_query: bool,
    pub frames: Vec<WsFrame>,
    /// End with a well-formed close frame (exercises the close handshake).
    pub close_at_end: Option<u16>,
}

impl WsSession {
    /// The client's byte stream.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for f in &self.frames {
            f.encode(&mut out);
        }
        if let Some(code) = self.close_at_end {
            WsFrame {
                fin: true,
                rsv: 0,
                opcode: Opcode::Close,
                mask: Mask::Key([1, 2, 3, 4]),
                payload: Payload::Close(code, String::new()),
                length: LengthForm::Minimal,
            }
            .encode(&mut out);
        }
        out
    }
}

/// Runs `client` (bytes after the upgrade) through a real WebSocket and
/// checks what the server sends back.
pub fn run_ws(client: &[u8], token_in_query: bool) {
    let (s, rest) = upgrade(token_in_query);
    let ex = finish(s, client, rest);
    let rule = CloseRule::Known(first_client_close(client));
    if let Err(e) = check_ws(&ex.bytes, ex.end, rule) {
        panic!(
            "{e}\nclient bytes: {:02x?}\nserver bytes: {:02x?}",
            &client[..client.len().min(256)],
            &ex.bytes[..ex.bytes.len().min(256)]
        );
    }
    after_input();
}
