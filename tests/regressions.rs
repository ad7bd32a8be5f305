//! Inputs the fuzzers (tests/fuzz, run by `.ci/fuzz`) found, replayed as
//! the fuzz harness sends them: over a real socket to an in-process server,
//! the client half-closing after its bytes, then reading until the server
//! closes. A test marked `#[ignore = "server bug: ..."]` describes a bug not
//! fixed yet; remove the mark with the fix.

mod common;
/// Issue 22, delivery you can prove: each test failed on the code the issue
/// was filed against (see its doc comment).
#[path = "regressions/delivery.rs"]
mod delivery;
/// Issue 18's fail-closed round: each test failed before its fix.
#[path = "regressions/fail_closed.rs"]
mod fail_closed;
/// Issue 10's hardening round: each test failed before its fix.
#[path = "regressions/hardening.rs"]
mod hardening;
/// Fixed Ed25519/RSA test keys (shared with tests/jwks.rs).
#[path = "jwks/keys.rs"]
mod jwks_keys;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// How the server ended one exchange.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// It closed (FIN or RST) within the wait.
    Closed,
    /// It still held the connection open when the wait ran out.
    StillOpen,
}

/// Writes `bytes` on a fresh connection, half-closes, reads until the
/// server closes or `wait` passes. The fuzz harness's exchange, with the
/// bytes sent in one write.
fn exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> (Vec<u8>, End) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    finish(s, bytes, wait)
}

fn upgrade_request(token: &str, version: &str, body: &str) -> String {
    format!(
        "GET /ws?&token={token} HTTP/{version}\r\nHost: fuzz\r\nConnection: keep-alive, Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Found by `http_requests` (crash-df3007299c9fa5bcfafe88cc8ea5d92de8c9e630):
/// an upgrade request whose client half-closes right after it. When the
/// request and the FIN arrive in one read, `read_http` sees EOF, upgrades,
/// and then skips its `begin_close` because the phase is now `Ws`; the EOF
/// is never seen again (edge-triggered), so the connection stays open and
/// counted in `connectedClients` until PONG_WAIT (60 s) drops it. Fixed in
/// fe2b799 (`read_http` re-reads an upgraded connection that saw EOF).
#[test]
fn upgrade_then_fin_in_one_read_is_closed() {
    let server = start();
    let token = token("fuzz");
    // The crash as found (HTTP/1.0, a body on the GET), then the plainest
    // form. Several tries each: the FIN must land in the same read as the
    // request, which it nearly always does on loopback.
    let body = r#"{"type":"task_status_changed","data":{"":null}}"#;
    for req in [upgrade_request(&token, "1.0", body), upgrade_request(&token, "1.1", "")] {
        for attempt in 0..5 {
            let (got, end) = exchange(server.addr, req.as_bytes(), Duration::from_secs(2));
            let text = String::from_utf8_lossy(&got);
            assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
            assert_eq!(
                end,
                End::Closed,
                "attempt {attempt}: the server kept the upgraded connection after the client's FIN"
            );
            wait_clients(server.addr, 0);
        }
    }
}

/// Found by `http_requests` while checking that HEAD answers carry no body:
/// a HEAD refused before routing (here 411 for a chunked body; also 400,
/// 413, 431, 408) gets the JSON error body anyway. RFC 9110 §9.3.2: the
/// server SHOULD NOT send content in a response to HEAD; a client reading
/// the 411 as a HEAD answer finds stray bytes after it. (The connection
/// closes right after, so the damage is small.) Fixed in fe2b799.
#[test]
fn head_refused_before_routing_has_no_body() {
    let server = start();
    for req in [
        "HEAD /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HEAD /api/broadcast HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999\r\n\r\n",
    ] {
        let (got, end) = exchange(server.addr, req.as_bytes(), WAIT);
        assert_eq!(end, End::Closed);
        let text = String::from_utf8_lossy(&got);
        let head_end = text.find("\r\n\r\n").expect("a response head") + 4;
        assert!(text.starts_with("HTTP/1.1 4"), "{text}");
        assert_eq!(&text[head_end..], "", "body sent in answer to {req:?}");
    }
}

/// The same exchanges the fuzz harness makes, as a smoke test that the
/// replay path itself works (and stays working): a pipelined pair of
/// requests then FIN is answered twice and closed.
#[test]
fn pipelined_requests_then_fin_are_answered_and_closed() {
    let server = start();
    let (got, end) =
        exchange(server.addr, b"GET /health HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\n\r\n", WAIT);
    assert_eq!(end, End::Closed);
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("HTTP/1.1 ").count(), 2, "{text}");
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(text.contains("HTTP/1.1 404 "), "{text}");
}

/// Found by `broadcast_parse` (a body `["7pe", 3]`): serde's derived
/// `Deserialize` for `broadcast::Body` also accepts a JSON array, reading its
/// elements as the fields in order, so `["task_created", {...}]` is accepted
/// and broadcast as `{"type":"task_created","payload":{...}}`. The README
/// says a body that is not an object gets 400. (`broadcast::parse`; check
/// that the body is an object before or instead of the derive's seq form.)
#[test]
fn broadcast_body_that_is_an_array_is_refused() {
    let server = start();
    let mut client = ws(server.addr, &token("reader"));
    wait_clients(server.addr, 1);
    for body in [r#"["task_created",{"id":1}]"#, "[ \"7pe\"\r\r\r, \r\r\r \r\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t 3]"] {
        let resp = broadcast(server.addr, &token("prop"), body);
        assert_eq!(resp.status, 400, "{body:?} was accepted: {}", resp.body);
    }
    // Nothing reached the client: the next message is this one.
    broadcast(server.addr, &token("prop"), r#"{"type":"task_created","data":"after"}"#);
    assert_eq!(next_json(&mut client)["payload"], "after");
}

/// Found by `ws_conn` (crash-b63cd267ddd1131f6d7c5f27029cc5c98ad80148): 101
/// masked Pings in a row. The 101st trips the rate limit (burst 100), and
/// `fail_ws` sends close 1008, but tungstenite answers that Ping too: its
/// `_write` buffers the frame it is given (our Close) *before* the pending
/// Pong, so a Pong follows the server's close frame on the wire. The close
/// frame should be the last frame the server sends (RFC 6455 §5.5.1: after
/// sending a Close frame nothing more; §5.5.2 lets a closing endpoint skip
/// the Pong). In `server.rs`, `fail_ws`/`close_ws` could `ctx.flush` the
/// pending Pong before `ctx.close`, or not answer a Ping that trips the limit.
#[test]
fn close_frame_is_the_last_frame_after_a_ping_flood() {
    let server = start();
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET /ws?token={} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        token("flood")
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1);
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "));
    // The crash's frames: masked Pings (0x89 0x89 = FIN+Ping, masked, 9 bytes).
    let ping = [0x89u8, 0x89, 0x89, 0x89, 0x89, 0x89, 0x89, 0x89, 0x89, 0x89, 0x89, 0x89, 0x89, 0x89, 0x89];
    let flood: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * 101).collect();
    let (got, _) = finish(s, &flood, WAIT);
    // Walk the server's frames: (opcode, length) each.
    let mut frames = Vec::new();
    let mut rest = &got[..];
    while rest.len() >= 2 {
        let len = (rest[1] & 0x7f) as usize; // server frames here are short
        assert!(len < 126 && rest.len() >= 2 + len, "unexpected frame {:02x?}", &rest[..rest.len().min(16)]);
        frames.push((rest[0] & 0x0f, u16::from_be_bytes([rest[2], rest.get(3).copied().unwrap_or(0)])));
        rest = &rest[2 + len..];
    }
    let close_at = frames.iter().position(|(op, _)| *op == 8).expect("a close frame");
    assert_eq!(frames[close_at].1, 1008, "rate limited");
    assert_eq!(close_at, frames.len() - 1, "frames after the close frame: {:?}", &frames[close_at..]);
}

/// Writes `bytes` on an open stream, half-closes, reads until the server
/// closes or `wait` passes.
fn finish(mut s: TcpStream, bytes: &[u8], wait: Duration) -> (Vec<u8>, End) {
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) => return (got, End::Closed),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (got, End::Closed),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    (got, End::StillOpen)
}

/// Found by the browser-client tests: on a signal the close frames were
/// queued, then the loop slept until the grace period ended before writing
/// them. With a 30 s grace they must still arrive within the usual wait —
/// for SIGINT's immediate 1001 and for SIGTERM's drain (1012; `DRAIN_SECS=0`
/// closes everyone at once).
#[test]
fn signal_close_frames_leave_at_once_not_at_the_end_of_the_grace() {
    for (signal, code) in [(libc::SIGINT, 1001), (libc::SIGTERM, 1012)] {
        close_frames_leave_at_once(signal, code);
    }
}

fn close_frames_leave_at_once(signal: i32, code: u16) {
    let mut srv =
        start_binary(taskcast_cmd().envs([("JWT_SECRET", SECRET), ("SHUTDOWN_GRACE_SECS", "30"), ("DRAIN_SECS", "0")]));
    let mut clients: Vec<Ws> = (0..3).map(|i| ws(srv.addr, &token(&format!("u{i}")))).collect();
    // Connected for sure, and no HTTP connection lingering (whose timer
    // would wake the loop and hide the bug).
    for c in &mut clients {
        c.send(tungstenite::Message::text(r#"{"type":"ping"}"#)).unwrap();
        assert_eq!(next_json(c)["type"], "pong");
    }
    srv.signal(signal);
    for c in &mut clients {
        assert_eq!(close_code(c), code);
    }
    drop(clients);
    assert_eq!(srv.wait_exit(Duration::from_secs(10)).code(), Some(0));
}
