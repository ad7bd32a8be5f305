//! Property tests (proptest) over the real connection state machine: each
//! property starts its own in-process server and talks to it over real
//! sockets, like the fuzz targets in tests/fuzz but bounded to a few seconds
//! inside `cargo test` (64 cases or fewer, every read with a timeout).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::Value;

/// Runs `test` on `cases` inputs from `strategy`; panics with the shrunk
/// failing input. No failure files: the properties are cheap to re-run.
fn check<S: Strategy>(cases: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let config = ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() };
    if let Err(e) = TestRunner::new(config).run(&strategy, test) {
        panic!("{e}");
    }
}

// ---- strategies ---------------------------------------------------------------

/// Any JSON value, a few levels deep (floats finite: JSON has no NaN).
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e300f64..1e300).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((".{0,8}", inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A valid broadcast `type`: a documented one or 1-64 of `[A-Za-z0-9_.:-]`.
fn kind() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(taskcast::broadcast::DOCUMENTED_TYPES.to_vec()).prop_map(String::from),
        "[A-Za-z0-9_.:-]{1,64}",
    ]
}

/// One request of a valid keep-alive sequence.
#[derive(Debug, Clone)]
enum Req {
    Health,
    Broadcast { kind: String, data: Value, pretty: bool },
    NotFound(String),
    WrongMethod,
    Preflight,
}

fn req() -> impl Strategy<Value = Req> {
    prop_oneof![
        Just(Req::Health),
        (kind(), json(), any::<bool>()).prop_map(|(kind, data, pretty)| Req::Broadcast { kind, data, pretty }),
        "/[a-z0-9/]{0,20}"
            .prop_filter("not a route", |p| !["/health", "/ws", "/api/broadcast"].contains(&p.as_str()))
            .prop_map(Req::NotFound),
        Just(Req::WrongMethod),
        Just(Req::Preflight),
    ]
}

/// The `data` text as sent (compact or pretty: passed through either way).
fn data_text(data: &Value, pretty: bool) -> String {
    if pretty { serde_json::to_string_pretty(data).unwrap() } else { data.to_string() }
}

fn broadcast_body(kind: &str, data: &Value, pretty: bool) -> String {
    format!(r#"{{"type":{},"data":{}}}"#, Value::from(kind), data_text(data, pretty))
}

impl Req {
    fn bytes(&self, token: &str) -> String {
        match self {
            Req::Health => "GET /health HTTP/1.1\r\nHost: t\r\n\r\n".into(),
            Req::Broadcast { kind, data, pretty } => broadcast_request(token, &broadcast_body(kind, data, *pretty)),
            Req::NotFound(path) => format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"),
            Req::WrongMethod => "DELETE /api/broadcast HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n".into(),
            Req::Preflight => "OPTIONS /api/broadcast HTTP/1.1\r\nHost: t\r\nOrigin: http://localhost:3000\r\n\
                               Access-Control-Request-Method: POST\r\n\r\n"
                .into(),
        }
    }
}

// ---- (1) how TCP splits requests does not matter ------------------------------

/// Any valid sequence of requests, written in random chunk sizes with tiny
/// pauses over one keep-alive connection, gets exactly the responses it gets
/// when written whole.
#[test]
fn split_requests_get_the_same_responses_as_whole() {
    let server = start();
    let token = token("prop");
    let input = (prop::collection::vec(req(), 1..6), prop::collection::vec(1usize..40, 1..8));
    check(48, input, |(reqs, chunks)| {
        let bytes: Vec<u8> = reqs.iter().flat_map(|r| r.bytes(&token).into_bytes()).collect();
        let whole = responses(server.addr, &[bytes.as_slice()], reqs.len());
        let mut pieces = Vec::new();
        let mut rest = bytes.as_slice();
        for size in chunks.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at((*size).min(rest.len()));
            pieces.push(piece);
            rest = tail;
        }
        let split = responses(server.addr, &pieces, reqs.len());
        prop_assert_eq!(&whole, &split);
        // And they are the right answers.
        for (r, (status, _, _)) in reqs.iter().zip(&whole) {
            let want = match r {
                Req::Health | Req::Broadcast { .. } => 200,
                Req::NotFound(_) => 404,
                Req::WrongMethod => 405,
                Req::Preflight => 204,
            };
            prop_assert_eq!(*status, want, "{:?}", r);
        }
        Ok(())
    });
}

/// A response as (status, headers, body).
type Answer = (u16, Vec<(String, String)>, String);

/// Sends `pieces` on one connection (a millisecond apart) and reads `n`
/// responses.
fn responses(addr: SocketAddr, pieces: &[&[u8]], n: usize) -> Vec<Answer> {
    let mut c = Http::connect(addr);
    for (i, p) in pieces.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        c.send(p);
    }
    (0..n)
        .map(|_| {
            let r = c.response();
            (r.status, r.headers, r.body)
        })
        .collect()
}

// ---- (2) garbage does not hurt ------------------------------------------------

/// Random bytes (alone, or after the start of a real request) sent to a
/// fresh connection never crash the server: whatever it answers is HTTP, it
/// closes, and afterwards `/health` answers 200 with `connectedClients`
/// unchanged (one WebSocket client stays connected throughout).
#[test]
fn garbage_never_hurts_the_server() {
    let server = start();
    let mut client = ws(server.addr, &token("watcher"));
    wait_clients(server.addr, 1);
    let prefixes = prop::sample::select(vec![
        "",
        "GET ",
        "GET /health HTTP/1.1\r\n",
        "POST /api/broadcast HTTP/1.1\r\nContent-Length: ",
        "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
    ]);
    check(64, (prefixes, prop::collection::vec(any::<u8>(), 0..2048)), |(prefix, garbage)| {
        let mut bytes = prefix.as_bytes().to_vec();
        bytes.extend_from_slice(&garbage);
        let (got, closed) = send_and_close(server.addr, &bytes);
        prop_assert!(closed, "the server did not close after the client's FIN");
        prop_assert!(got.is_empty() || got.starts_with(b"HTTP/1.1 "), "{:?}", String::from_utf8_lossy(&got));
        let health = get(server.addr, "/health");
        prop_assert_eq!(health.status, 200);
        prop_assert_eq!(health.json()["connectedClients"].as_u64(), Some(1));
        Ok(())
    });
    // The watcher is still served.
    broadcast(server.addr, &token("prop"), r#"{"type":"task_created","data":1}"#);
    assert_eq!(next_json(&mut client)["payload"], 1);
}

/// Writes `bytes`, half-closes, reads until the server closes (bounded).
fn send_and_close(addr: SocketAddr, bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let _ = s.write_all(bytes); // the server may close first
    let _ = s.shutdown(Shutdown::Write);
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (got, true),
            Err(_) => return (got, false),
        }
    }
}

// ---- (3) data round-trips ------------------------------------------------------

/// Any `data` JSON value broadcast reaches a connected client exactly: the
/// message is `{"type":T,"payload":<data as sent, byte for byte>}`.
#[test]
fn broadcast_data_round_trips_exactly() {
    let server = start();
    // RefCell: proptest runs the test as a `Fn`.
    let client = std::cell::RefCell::new(ws(server.addr, &token("reader")));
    wait_clients(server.addr, 1);
    let token = token("prop");
    check(64, (kind(), json(), any::<bool>()), |(kind, data, pretty)| {
        let resp = broadcast(server.addr, &token, &broadcast_body(&kind, &data, pretty));
        prop_assert_eq!(resp.status, 200, "{}", resp.body);
        prop_assert_eq!(resp.json()["recipients"].as_u64(), Some(1));
        let text = next_text(&mut client.borrow_mut());
        let sent = data_text(&data, pretty);
        prop_assert_eq!(&text, &format!(r#"{{"type":{},"payload":{}}}"#, Value::from(kind.as_str()), sent));
        let got: Value = serde_json::from_str(&text).unwrap();
        let want: Value = serde_json::from_str(&sent).unwrap();
        prop_assert_eq!(&got["payload"], &want);
        Ok(())
    });
}

/// The next text message, as text.
fn next_text(ws: &mut Ws) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no message within {WAIT:?}");
        match ws.read().expect("read") {
            tungstenite::Message::Text(t) => return t.to_string(),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

// ---- (4) random frames after the upgrade -----------------------------------------

/// Close codes taskcast sends (README), and 1000.
const CLOSE_CODES: [u16; 10] = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1013, 4001, 4003];

/// One client frame, well formed at the byte level (the length is honest)
/// but free in everything else: opcode (reserved ones too), FIN, RSV bits,
/// masking, payload (JSON, ping, auth, bad UTF-8, close codes, oversized).
#[derive(Debug, Clone)]
struct Frame {
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    payload: Vec<u8>,
}

fn frame() -> impl Strategy<Value = Frame> {
    let opcode = prop_oneof![
        6 => prop::sample::select(vec![0u8, 1, 2, 8, 9, 10]),
        1 => prop::sample::select(vec![3u8, 4, 5, 6, 7, 11, 12, 13, 14, 15]),
    ];
    let close_code = prop::sample::select(vec![
        1000u16, 1001, 1002, 1003, 1005, 1006, 1008, 1011, 1015, 2000, 3000, 4001, 4999, 5000, 0,
    ]);
    let payload = prop_oneof![
        Just(br#"{"type":"ping"}"#.to_vec()),
        Just(br#"{"type":"hello","x":[1,2]}"#.to_vec()),
        Just(b"{not json".to_vec()),
        Just(b"\xff\xfe\xfd".to_vec()),
        Just(br#"{"type":"auth","token":"a.b.c"}"#.to_vec()),
        Just(format!(r#"{{"type":"auth","token":"{}"}}"#, token("frames")).into_bytes()),
        Just(format!(r#"{{"type":"auth","token":"{}"}}"#, token("intruder")).into_bytes()),
        (close_code, ".{0,10}").prop_map(|(c, r)| [&c.to_be_bytes()[..], r.as_bytes()].concat()),
        prop::collection::vec(any::<u8>(), 0..40),
        (1usize..3).prop_map(|k| vec![b'x'; [126, 600, 9000][k]]),
    ];
    let mask = prop_oneof![8 => any::<[u8; 4]>().prop_map(Some), 1 => Just(None)];
    let rsv = prop_oneof![9 => Just(0u8), 1 => 1u8..8];
    (any::<bool>(), rsv, opcode, mask, payload).prop_map(|(fin, rsv, opcode, mask, payload)| Frame {
        fin: fin || opcode >= 8, // mostly legal: control frames are final
        rsv,
        opcode,
        mask,
        payload,
    })
}

impl Frame {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(self.fin) << 7 | (self.rsv & 7) << 4 | self.opcode);
        let m = if self.mask.is_some() { 0x80 } else { 0 };
        let n = self.payload.len();
        if n < 126 {
            out.push(m | n as u8);
        } else if n <= 0xffff {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
        match self.mask {
            Some(k) => {
                out.extend_from_slice(&k);
                out.extend(self.payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
            }
            None => out.extend_from_slice(&self.payload),
        }
    }
}

/// The code the server answers a client close with: the client's own if it
/// may be sent on the wire, else 1002 (RFC 6455 §5.5.1 / §7.4).
fn echo_of(code: u16) -> u16 {
    if tungstenite::protocol::frame::coding::CloseCode::from(code).is_allowed() { code } else { 1002 }
}

/// Random frame sequences after a real upgrade end either in continued
/// service (a Ping sent afterwards is answered with its Pong) or in a close
/// frame with a documented code (or the echo of the client's own close);
/// every frame the server sends is a final, unmasked text/ping/pong/close;
/// and another connected client keeps receiving broadcasts throughout.
#[test]
fn random_frames_end_in_service_or_a_documented_close() {
    let server = start();
    // Cells: proptest runs the test as a `Fn`.
    let watcher = std::cell::RefCell::new(ws(server.addr, &token("watcher")));
    wait_clients(server.addr, 1);
    let broadcaster = token("prop");
    let case = std::cell::Cell::new(0u32);
    check(64, prop::collection::vec(frame(), 0..8), |frames| {
        let n = case.get() + 1;
        case.set(n);
        let mut s = raw_upgrade(server.addr, &token("frames"));
        let mut bytes = Vec::new();
        frames.iter().for_each(|f| f.encode(&mut bytes));
        let client_close = frames
            .iter()
            .find(|f| f.opcode == 8)
            .map(|f| (f.payload.len() >= 2).then(|| u16::from_be_bytes([f.payload[0], f.payload[1]])));
        // The probe: a Ping with a payload no random frame has.
        let probe = format!("probe-{n}");
        Frame { fin: true, rsv: 0, opcode: 9, mask: Some([9, 8, 7, 6]), payload: probe.clone().into_bytes() }
            .encode(&mut bytes);
        let _ = s.write_all(&bytes); // the server may have closed already

        let outcome = read_until_probe_or_close(&mut s, probe.as_bytes());
        match outcome {
            Ok(Outcome::Served) => {}
            Ok(Outcome::Closed(code)) => {
                let ok = match code {
                    Some(c) => CLOSE_CODES.contains(&c) || client_close.flatten().is_some_and(|cc| echo_of(cc) == c),
                    None => client_close == Some(None),
                };
                prop_assert!(ok, "close code {:?} (client close {:?})", code, client_close);
            }
            Err(e) => return Err(TestCaseError::fail(e)),
        }
        drop(s);
        // The other client is still served.
        let resp = broadcast(server.addr, &broadcaster, &format!(r#"{{"type":"task_updated","data":{n}}}"#));
        prop_assert_eq!(resp.status, 200);
        prop_assert_eq!(next_json(&mut watcher.borrow_mut())["payload"].as_u64(), Some(n as u64));
        wait_clients(server.addr, 1);
        Ok(())
    });
}

/// Upgrades a raw socket (token in the query) and reads the 101.
fn raw_upgrade(addr: SocketAddr, token: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET /ws?token={token} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).expect("read the 101"), 1, "closed during the upgrade");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "), "{}", String::from_utf8_lossy(&head));
    s
}

enum Outcome {
    /// The probe Ping was answered: the connection is in service.
    Served,
    /// The server sent a close frame with this code (`None`: no code).
    Closed(Option<u16>),
}

/// Reads server frames until the Pong for `probe` or a close frame;
/// checks each frame on the way.
fn read_until_probe_or_close(s: &mut TcpStream, probe: &[u8]) -> Result<Outcome, String> {
    let deadline = Instant::now() + WAIT;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some((fin, rsv, masked, opcode, payload, used)) = parse_frame(&buf) {
            if !fin || rsv != 0 || masked {
                return Err(format!("server frame fin {fin} rsv {rsv} masked {masked}"));
            }
            match opcode {
                1 => {
                    let v: Value =
                        serde_json::from_slice(&payload).map_err(|e| format!("server text is not JSON: {e}"))?;
                    if !v["type"].is_string() {
                        return Err(format!("server message without a type: {v}"));
                    }
                }
                9 => {}
                10 if payload == probe => return Ok(Outcome::Served),
                10 => {}
                8 => {
                    if payload.len() == 1 || (payload.len() > 2 && std::str::from_utf8(&payload[2..]).is_err()) {
                        return Err(format!("bad close payload {payload:?}"));
                    }
                    return Ok(Outcome::Closed(
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
                    ));
                }
                op => return Err(format!("server sent opcode {op}")),
            }
            buf.drain(..used);
        }
        if Instant::now() >= deadline {
            return Err(format!("neither the probe's Pong nor a close within {WAIT:?}"));
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err(format!("server closed without a close frame ({} bytes pending)", buf.len())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// (fin, rsv, masked, opcode, unmasked payload, bytes used), or `None` if
/// `buf` does not hold a whole frame yet.
fn parse_frame(buf: &[u8]) -> Option<(bool, u8, bool, u8, Vec<u8>, usize)> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    let (len, mut at) = match b1 & 0x7f {
        126 => (u16::from_be_bytes(buf.get(2..4)?.try_into().unwrap()) as usize, 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().unwrap()) as usize, 10),
        n => (n as usize, 2),
    };
    let masked = b1 & 0x80 != 0;
    let key: Option<[u8; 4]> = if masked {
        at += 4;
        Some(buf.get(at - 4..at)?.try_into().unwrap())
    } else {
        None
    };
    let mut payload = buf.get(at..at.checked_add(len)?)?.to_vec();
    if let Some(k) = key {
        payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= k[i % 4]);
    }
    Some((b0 & 0x80 != 0, (b0 >> 4) & 7, masked, b0 & 0x0f, payload, at + len))
}
