//! Broadcast delivery: every client gets every message, in order, and a
//! client that stops reading is cut off without costing the others anything.

mod common;
use common::*;
use serde_json::json;
use std::io::Read;
use std::time::Instant;

#[test]
fn broadcast_reaches_every_client_as_envelope() {
    let s = start();
    let mut clients: Vec<Ws> = (0..5).map(|i| ws(s.addr, &token(&format!("u{i}")))).collect();
    wait_clients(s.addr, 5);
    let r = broadcast(
        s.addr,
        &token("srv"),
        r#"{"type":"task_updated","data":{"id":"t1","status":"done","n":[1,2.5,null]}}"#,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"status":"ok","recipients":5}));
    for c in &mut clients {
        assert_eq!(next_json(c), json!({"type":"task_updated","payload":{"id":"t1","status":"done","n":[1,2.5,null]}}));
    }
}

#[test]
fn many_broadcasts_arrive_in_order() {
    let s = start();
    let mut a = ws(s.addr, &token("a"));
    let mut b = ws(s.addr, &token("b"));
    wait_clients(s.addr, 2);
    // 300 broadcasts pipelined on one keep-alive connection: many land in
    // one loop turn, so this also exercises batching into one write.
    let t = token("srv");
    let mut raw = String::new();
    for i in 0..300 {
        raw.push_str(&broadcast_request(&t, &format!(r#"{{"type":"task_created","data":{{"seq":{i}}}}}"#)));
    }
    let mut h = Http::connect(s.addr);
    h.send(raw.as_bytes());
    for _ in 0..300 {
        assert_eq!(h.response().json()["recipients"], 2);
    }
    for c in [&mut a, &mut b] {
        for i in 0..300 {
            assert_eq!(next_json(c)["payload"]["seq"], i);
        }
    }
}

#[test]
fn types_and_payloads_pass_through() {
    let s = start();
    let mut c = ws(s.addr, &token("a"));
    wait_clients(s.addr, 1);
    let t = token("srv");
    let cases = [
        ("task_created", r#"{"id":"1","title":"Write \"docs\" ✓"}"#),
        ("task_deleted", r#"null"#),
        ("task_status_changed", r#"{"id":"1","from":"todo","to":"done"}"#),
        ("board:42.moved-v2", r#"[1,"two",{"three":3}]"#),
    ];
    for (kind, data) in cases {
        let r = broadcast(s.addr, &t, &format!(r#"{{"type":"{kind}","data":{data}}}"#));
        assert_eq!(r.status, 200);
        let got = next_json(&mut c);
        assert_eq!(got["type"], kind);
        assert_eq!(got["payload"], serde_json::from_str::<serde_json::Value>(data).unwrap());
    }
}

#[test]
fn slow_consumer_is_closed_and_others_get_everything() {
    let mut cfg = config();
    cfg.send_queue_limit = 16;
    let s = start_with(cfg);
    let mut fast = ws(s.addr, &token("fast"));
    // The slow client completes the handshake, then never reads again.
    let slow = ws(s.addr, &token("slow"));
    wait_clients(s.addr, 2);

    // Broadcast 4 KiB messages (the fast client reads each one) until the
    // server reports the slow client gone: first its kernel buffers fill,
    // then its queue of 16.
    let pad = "x".repeat(4096);
    let t = token("srv");
    let mut h = Http::connect(s.addr);
    let mut sent = 0i64;
    loop {
        assert!(sent < 5000, "slow client never dropped");
        h.send(
            broadcast_request(&t, &format!(r#"{{"type":"task_updated","data":{{"seq":{sent},"pad":"{pad}"}}}}"#))
                .as_bytes(),
        );
        let recipients = h.response().json()["recipients"].as_u64().unwrap();
        assert_eq!(next_json(&mut fast)["payload"]["seq"], sent);
        sent += 1;
        if recipients == 1 {
            break;
        }
    }
    let total = sent;
    // The slow one was dropped; the fast one is still there.
    wait_clients(s.addr, 1);
    let r = broadcast(s.addr, &t, r#"{"type":"task_updated","data":"after"}"#);
    assert_eq!(r.json()["recipients"], 1);
    assert_eq!(next_json(&mut fast)["payload"], "after");

    // Reading the slow socket now: some messages in order, then close 1013.
    let mut slow = slow;
    slow.get_ref().set_read_timeout(Some(WAIT)).unwrap();
    let mut last = -1i64;
    let code = loop {
        match slow.read() {
            Ok(tungstenite::Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                let seq = v["payload"]["seq"].as_i64().unwrap();
                assert_eq!(seq, last + 1, "slow client saw a gap before its close");
                last = seq;
            }
            Ok(tungstenite::Message::Close(f)) => break f.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(e) => panic!("slow client: {e}"),
        }
    };
    assert_eq!(code, Some(1013));
    assert!(last < total - 1, "slow client cannot have received everything");
}

#[test]
fn recipients_excludes_closed_clients() {
    let s = start();
    let a = ws(s.addr, &token("a"));
    let _b = ws(s.addr, &token("b"));
    wait_clients(s.addr, 2);
    drop(a);
    wait_clients(s.addr, 1);
    let r = broadcast(s.addr, &token("srv"), r#"{"type":"task_created","data":1}"#);
    assert_eq!(r.json()["recipients"], 1);
}

#[test]
fn frames_sent_with_the_upgrade_request_are_handled() {
    // A client that pipelines a ping message right behind its upgrade
    // request (same TCP segment) must still get its pong.
    let s = start();
    let mut sock = std::net::TcpStream::connect(s.addr).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut raw = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        token("u")
    )
    .into_bytes();
    let text = br#"{"type":"ping"}"#;
    let mask = [9u8, 8, 7, 6];
    raw.extend_from_slice(&[0x81, 0x80 | text.len() as u8]);
    raw.extend_from_slice(&mask);
    raw.extend(text.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    std::io::Write::write_all(&mut sock, &raw).unwrap();

    let mut got = Vec::new();
    let want = br#"{"type":"pong"}"#;
    let deadline = Instant::now() + WAIT;
    while !got.windows(want.len()).any(|w| w == want) {
        assert!(Instant::now() < deadline, "{:?}", String::from_utf8_lossy(&got));
        let mut b = [0u8; 1024];
        let n = sock.read(&mut b).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&b[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{text}");
    assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
}

#[test]
fn two_hundred_clients_each_get_every_message() {
    let s = start();
    let n = 200;
    let mut clients: Vec<Ws> = (0..n).map(|i| ws(s.addr, &token(&format!("c{i}")))).collect();
    wait_clients(s.addr, n as u64);
    let t = token("srv");
    let mut h = Http::connect(s.addr);
    for i in 0..20 {
        h.send(broadcast_request(&t, &format!(r#"{{"type":"task_updated","data":{i}}}"#)).as_bytes());
        assert_eq!(h.response().json()["recipients"], n);
    }
    for c in &mut clients {
        for i in 0..20 {
            assert_eq!(next_json(c)["payload"], i);
        }
    }
}
