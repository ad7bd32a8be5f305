//! The WebSocket side through a real client: upgrade refusals, client
//! messages, close codes, heartbeats and token expiry.

mod common;
use common::*;
use serde_json::json;
use std::time::Duration;
use tungstenite::Message;

#[test]
fn upgrade_with_header_or_query_token() {
    let s = start();
    let t = token("alice");
    let _q = ws(s.addr, &t);
    let _h = ws_try(s.addr, "/ws", &[("Authorization", &format!("Bearer {t}"))]).expect("header token");
    wait_clients(s.addr, 2);
}

#[test]
fn refused_tokens_get_401_before_upgrade() {
    let s = start();
    let n = now();
    let hs384 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS384),
        &json!({"sub":"u","exp": n + 60}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let other_secret = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub":"u","exp": n + 60}),
        &jsonwebtoken::EncodingKey::from_secret(b"some-other-secret-some-other-secret"),
    )
    .unwrap();
    // {"alg":"none"} with a valid-looking body and no signature.
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", {
        let claims = sign(&json!({"sub":"u","exp": n + 60}));
        claims.split('.').nth(1).unwrap().to_string()
    });
    let cases: Vec<(String, &str)> = vec![
        ("/ws".into(), "missing token"),
        ("/ws?token=".into(), "missing token"),
        ("/ws?token=garbage".into(), "malformed"),
        (format!("/ws?token={other_secret}"), "signature"),
        (format!("/ws?token={}", sign(&json!({"sub":"u","exp": n - 3600}))), "expired"),
        (format!("/ws?token={}", sign(&json!({"sub":"u","exp": n + 600, "nbf": n + 300}))), "not yet valid"),
        (format!("/ws?token={}", sign(&json!({"sub":"u"}))), "malformed"),
        (format!("/ws?token={hs384}"), "algorithm"),
        (format!("/ws?token={none}"), ""),
    ];
    for (path, msg) in cases {
        let (status, body) = ws_try(s.addr, &path, &[]).err().unwrap_or_else(|| panic!("{path} was accepted"));
        assert_eq!(status, 401, "{path}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(body["message"].as_str().unwrap().contains(msg), "{path}: {body}");
    }
    // The WWW-Authenticate header, checked on the raw response.
    let r = request(
        s.addr,
        "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    wait_clients(s.addr, 0);
}

#[test]
fn issuer_and_audience_are_checked_when_configured() {
    let mut c = config();
    c.jwt_issuer = Some("http://localhost:3000".into());
    c.jwt_audience = Some("http://localhost:3000".into());
    let s = start_with(c);
    let n = now();
    let good = sign(&json!({"sub":"u","exp":n+60,"iss":"http://localhost:3000","aud":"http://localhost:3000"}));
    let bad_iss = sign(&json!({"sub":"u","exp":n+60,"iss":"http://evil","aud":"http://localhost:3000"}));
    let bad_aud = sign(&json!({"sub":"u","exp":n+60,"iss":"http://localhost:3000","aud":"http://evil"}));
    ws_try(s.addr, &format!("/ws?token={good}"), &[]).expect("good token");
    assert_eq!(ws_try(s.addr, &format!("/ws?token={bad_iss}"), &[]).err().unwrap().0, 401);
    assert_eq!(ws_try(s.addr, &format!("/ws?token={bad_aud}"), &[]).err().unwrap().0, 401);
    assert_eq!(ws_try(s.addr, &format!("/ws?token={}", token("u")), &[]).err().unwrap().0, 401);
}

#[test]
fn origin_policy() {
    let s = start();
    let path = format!("/ws?token={}", token("u"));
    assert_eq!(ws_try(s.addr, &path, &[("Origin", "https://evil.example")]).err().unwrap().0, 403);
    ws_try(s.addr, &path, &[("Origin", "http://localhost:3000")]).expect("allowed origin");
    ws_try(s.addr, &path, &[]).expect("no origin (server/CLI client)");
}

#[test]
fn invalid_upgrades() {
    let s = start();
    let t = token("u");
    let base = |extra: &str| format!("GET /ws?token={t} HTTP/1.1\r\nHost: t\r\n{extra}\r\n");
    let cases = [
        (base(""), 426),
        (
            base("Upgrade: websocket\r\nSec-WebSocket-Key: a2V5a2V5a2V5a2V5a2V5aw==\r\nSec-WebSocket-Version: 13\r\n"),
            400,
        ),
        (base("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"), 400),
        (
            base(
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: a2V5a2V5a2V5a2V5a2V5aw==\r\nSec-WebSocket-Version: 8\r\n",
            ),
            426,
        ),
    ];
    for (raw, status) in cases {
        let r = request(s.addr, &raw);
        assert_eq!(r.status, status, "{raw}");
        if status == 426 && raw.contains("Version: 8") {
            assert_eq!(r.header("sec-websocket-version"), Some("13"));
        }
    }
}

#[test]
fn max_connections_gives_503() {
    let mut c = config();
    c.max_connections = 2;
    let s = start_with(c);
    let a = ws(s.addr, &token("a"));
    let _b = ws(s.addr, &token("b"));
    let Err((status, _)) = ws_try(s.addr, &format!("/ws?token={}", token("c")), &[]) else { panic!("third accepted") };
    assert_eq!(status, 503);
    drop(a);
    wait_clients(s.addr, 1);
    ws_try(s.addr, &format!("/ws?token={}", token("c")), &[]).expect("room again after one left");
}

#[test]
fn app_ping_gets_pong_and_garbage_gets_error() {
    let s = start();
    let mut c = ws(s.addr, &token("u"));
    c.send(Message::text(r#"{"type":"ping"}"#)).unwrap();
    assert_eq!(next_json(&mut c), json!({"type":"pong"}));
    c.send(Message::text("{not json")).unwrap();
    let e = next_json(&mut c);
    assert_eq!(e["type"], "error");
    assert!(e["payload"]["message"].as_str().unwrap().contains("invalid JSON"));
    // A subscribe without a channel is refused; the connection stays.
    c.send(Message::text(r#"{"type":"subscribe","board":1}"#)).unwrap();
    assert_eq!(next_json(&mut c)["payload"]["code"], "invalid_channel");
    // Unknown but well-formed: ignored, connection stays.
    c.send(Message::text(r#"{"type":"hello","board":1}"#)).unwrap();
    c.send(Message::text(r#"{"type":"ping"}"#)).unwrap();
    assert_eq!(next_json(&mut c), json!({"type":"pong"}));
}

#[test]
fn protocol_ping_gets_protocol_pong() {
    let s = start();
    let mut c = ws(s.addr, &token("u"));
    c.send(Message::Ping(b"hi"[..].into())).unwrap();
    loop {
        match c.read().unwrap() {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"hi");
                break;
            }
            Message::Ping(_) => {}
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn oversized_message_closes_1009() {
    let s = start();
    let mut c = ws(s.addr, &token("u"));
    let mut other = ws(s.addr, &token("v"));
    c.send(Message::text(format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(600)))).unwrap();
    assert_eq!(close_code(&mut c), 1009);
    // Others are untouched.
    other.send(Message::text(r#"{"type":"ping"}"#)).unwrap();
    assert_eq!(next_json(&mut other), json!({"type":"pong"}));
    wait_clients(s.addr, 1);
}

#[test]
fn oversized_frame_is_refused_from_its_header() {
    let mut cfg = config();
    cfg.max_auth_message_bytes = 4096;
    let s = start_with(cfg);
    let mut c = ws(s.addr, &token("u"));
    // A header announcing 1 MiB; only the header is sent.
    let mut raw = vec![0x81u8, 0xFF];
    raw.extend_from_slice(&(1u64 << 20).to_be_bytes());
    raw.extend_from_slice(&[1, 2, 3, 4]);
    std::io::Write::write_all(c.get_mut(), &raw).unwrap();
    assert_eq!(close_code(&mut c), 1009);
}

#[test]
fn binary_frames_close_1003() {
    let s = start();
    let mut c = ws(s.addr, &token("u"));
    c.send(Message::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(close_code(&mut c), 1003);
}

#[test]
fn invalid_utf8_closes_1007() {
    let s = start();
    let mut c = ws(s.addr, &token("u"));
    // A masked text frame holding 0xFF (not UTF-8), written raw.
    let mask = [1u8, 2, 3, 4];
    let raw = [0x81, 0x81, mask[0], mask[1], mask[2], mask[3], 0xFF ^ mask[0]];
    std::io::Write::write_all(c.get_mut(), &raw).unwrap();
    assert_eq!(close_code(&mut c), 1007);
}

#[test]
fn client_close_handshake_completes() {
    let s = start();
    let mut c = ws(s.addr, &token("u"));
    wait_clients(s.addr, 1);
    c.close(None).unwrap();
    // tungstenite reports ConnectionClosed once the server's close reply arrived.
    loop {
        match c.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("close handshake: {e}"),
        }
    }
    wait_clients(s.addr, 0);
}

#[test]
fn vanished_client_is_cleaned_up() {
    let s = start();
    let c = ws(s.addr, &token("u"));
    wait_clients(s.addr, 1);
    drop(c); // TCP close without a close frame
    wait_clients(s.addr, 0);
}

#[test]
fn server_pings_and_drops_silent_clients() {
    let mut cfg = config();
    cfg.ping_interval = Duration::from_millis(200);
    cfg.pong_wait = Duration::from_millis(600);
    let s = start_with(cfg);

    // A live client (tungstenite answers pings while we read) stays.
    let mut live = ws(s.addr, &token("live"));
    // A silent client: raw socket after the handshake, never reads or answers.
    let silent = ws(s.addr, &token("silent"));
    wait_clients(s.addr, 2);
    let mut pings = 0;
    let t0 = std::time::Instant::now();
    live.get_ref().set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    while t0.elapsed() < Duration::from_millis(1500) {
        match live.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("live client dropped: {e}"),
        }
        let _ = live.flush();
    }
    assert!(pings >= 3, "only {pings} pings in 1.5 s at a 200 ms interval");
    wait_clients(s.addr, 1);
    drop(silent);
}

#[test]
fn expired_token_closes_4001_unless_refreshed() {
    let s = start();
    // exp in the past but within the 30 s leeway: accepted, then closed
    // about 1 s later when exp + leeway passes.
    let n = now();
    let short = sign(&json!({"sub":"u","exp": n - 29}));
    let mut c = ws(s.addr, &short);
    let t0 = std::time::Instant::now();
    assert_eq!(close_code(&mut c), 4001);
    assert!(t0.elapsed() < Duration::from_secs(4));

    // The same, but refreshed in band with a BetterAuth-sized token first.
    // 3 s left; refreshed at once, it must outlive that.
    let mut r = ws(s.addr, &sign(&json!({"sub":"u","exp": now() - 27})));
    let big = sign(&json!({"sub":"u","exp": n + 3600, "user": {"name": "x".repeat(900)}}));
    assert!(big.len() > 1000);
    r.send(Message::text(json!({"type":"auth","token": big}).to_string())).unwrap();
    assert_eq!(next_json(&mut r), json!({"type":"auth_ok"}));
    r.get_ref().set_read_timeout(Some(Duration::from_millis(4000))).unwrap();
    match r.read() {
        Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("refreshed client should stay open, got {other:?}"),
    }
}

#[test]
fn refresh_with_another_subject_closes_4003() {
    let s = start();
    let mut c = ws(s.addr, &token("alice"));
    c.send(Message::text(json!({"type":"auth","token": token("mallory")}).to_string())).unwrap();
    assert_eq!(close_code(&mut c), 4003);
    let mut d = ws(s.addr, &token("bob"));
    d.send(Message::text(r#"{"type":"auth","token":"garbage"}"#)).unwrap();
    assert_eq!(close_code(&mut d), 4003);
}

#[test]
fn message_flood_closes_1008() {
    let mut cfg = config();
    cfg.client_msg_rate = 5;
    cfg.client_msg_burst = 10;
    let s = start_with(cfg);
    let mut c = ws(s.addr, &token("u"));
    for _ in 0..50 {
        if c.send(Message::text(r#"{"type":"noise"}"#)).is_err() {
            break;
        }
    }
    assert_eq!(close_code(&mut c), 1008);
}
