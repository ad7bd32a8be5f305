//! The HTTP side through a real socket: routes, status codes, CORS,
//! keep-alive and pipelining, and hostile input.

mod common;
use common::*;
use std::time::Duration;

#[test]
fn health_reports_status_and_clients() {
    let s = start();
    let r = get(s.addr, "/health");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json(), serde_json::json!({"status": "ok", "connectedClients": 0}));
    let _a = ws(s.addr, &token("a"));
    let _b = ws(s.addr, &token("b"));
    wait_clients(s.addr, 2);
}

#[test]
fn head_health_has_length_but_no_body() {
    let s = start();
    let mut c = Http::connect(s.addr);
    c.send(b"HEAD /health HTTP/1.1\r\nHost: t\r\n\r\nGET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    // The HEAD answer announces a length but sends no body, so the next
    // response must follow immediately: parse both.
    let mut raw = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline && raw.windows(4).filter(|w| w == b"\r\n\r\n").count() < 2 {
        let mut b = [0u8; 4096];
        let n = std::io::Read::read(&mut c.stream, &mut b).unwrap();
        raw.extend_from_slice(&b[..n]);
    }
    let text = String::from_utf8(raw).unwrap();
    let first = text.split("\r\n\r\n").next().unwrap();
    assert!(first.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(first.contains("Content-Length: 36"), "{text}");
    assert!(text.split("\r\n\r\n").nth(1).unwrap().starts_with("HTTP/1.1 200 OK"), "{text}");
}

#[test]
fn unknown_path_and_wrong_methods() {
    let s = start();
    let r = get(s.addr, "/nope");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "not_found");

    let r = request(s.addr, "DELETE /health HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD, OPTIONS"));

    let r = get(s.addr, "/api/broadcast");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST, OPTIONS"));

    let r = request(s.addr, "POST /ws HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
}

#[test]
fn cors_preflight_allowed_origin() {
    let s = start();
    let r = request(
        s.addr,
        "OPTIONS /api/broadcast HTTP/1.1\r\nHost: t\r\nOrigin: http://localhost:3000\r\n\
         Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, content-type\r\n\r\n",
    );
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("http://localhost:3000"));
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST, OPTIONS"));
    assert_eq!(r.header("access-control-allow-headers"), Some("Authorization, Content-Type"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert!(r.header("access-control-max-age").unwrap().parse::<u32>().unwrap() > 0);
    assert_eq!(r.header("vary"), Some("Origin"));
    assert_eq!(r.body, "");
}

#[test]
fn cors_preflight_disallowed_origin() {
    let s = start();
    let r = request(
        s.addr,
        "OPTIONS /api/broadcast HTTP/1.1\r\nHost: t\r\nOrigin: https://evil.example\r\nAccess-Control-Request-Method: POST\r\n\r\n",
    );
    assert_eq!(r.status, 403);
    assert_eq!(r.header("access-control-allow-origin"), None);
}

#[test]
fn cors_headers_on_responses() {
    let s = start();
    let r = request(s.addr, "GET /health HTTP/1.1\r\nHost: t\r\nOrigin: http://localhost:3000\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("http://localhost:3000"));
    assert_eq!(r.header("vary"), Some("Origin"));

    let r = request(s.addr, "GET /health HTTP/1.1\r\nHost: t\r\nOrigin: https://evil.example\r\n\r\n");
    assert_eq!(r.header("access-control-allow-origin"), None);

    // A browser page from another origin cannot broadcast.
    let body = r#"{"type":"task_created","data":{}}"#;
    let raw =
        broadcast_request(&token("u"), body).replace("Host: t\r\n", "Host: t\r\nOrigin: https://evil.example\r\n");
    let r = request(s.addr, &raw);
    assert_eq!(r.status, 403);
    assert_eq!(r.header("access-control-allow-origin"), None);
}

#[test]
fn wildcard_origins_allow_any() {
    let mut c = config();
    c.allowed_origins = taskcast::config::Origins::Any;
    let s = start_with(c);
    let r = request(s.addr, "GET /health HTTP/1.1\r\nHost: t\r\nOrigin: https://anything.example\r\n\r\n");
    assert_eq!(r.header("access-control-allow-origin"), Some("https://anything.example"));
    ws_try(s.addr, &format!("/ws?token={}", token("u")), &[("Origin", "https://anything.example")]).expect("upgrade");
}

#[test]
fn broadcast_answers() {
    let s = start();
    let t = token("publisher");
    let ok = r#"{"type":"task_created","data":{"id":"1"}}"#;
    let cases: Vec<(String, u16, &str)> = vec![
        (broadcast_request(&t, ok), 200, ""),
        (broadcast_request("", ok), 401, "missing token"),
        (broadcast_request("not.a.jwt", ok), 401, "malformed"),
        (broadcast_request(&sign(&serde_json::json!({"sub":"x","exp": now() - 3600})), ok), 401, "expired"),
        (broadcast_request(&t, "{nope"), 400, "invalid JSON"),
        (broadcast_request(&t, r#"{"type":"task_created"}"#), 400, "missing \"data\""),
        (broadcast_request(&t, r#"{"data":{}}"#), 400, "missing \"type\""),
        (broadcast_request(&t, r#"{"type":"","data":{}}"#), 400, "1-64"),
        (broadcast_request(&t, r#"{"type":"has space","data":{}}"#), 400, "1-64"),
        (broadcast_request(&t, &"x".repeat(100)), 400, "invalid JSON"),
        (broadcast_request(&t, ok).replace("application/json", "text/plain"), 415, "application/json"),
    ];
    for (raw, status, msg) in cases {
        let r = request(s.addr, &raw);
        assert_eq!(r.status, status, "{raw}\n{}", r.body);
        if status == 200 {
            assert_eq!(r.json(), serde_json::json!({"status":"ok","recipients":0}));
        } else {
            let body = r.json();
            assert!(body["message"].as_str().unwrap().contains(msg), "{raw}: {body}");
            assert!(body["error"].is_string());
        }
        if status == 401 {
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
    }
}

#[test]
fn broadcast_token_in_query_is_not_accepted() {
    let s = start();
    let body = r#"{"type":"task_created","data":{}}"#;
    let raw = format!(
        "POST /api/broadcast?token={} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
        token("u"),
        body.len()
    );
    assert_eq!(request(s.addr, &raw).status, 401);
}

#[test]
fn oversized_body_is_refused_from_content_length() {
    let mut c = config();
    c.max_broadcast_bytes = 1000;
    let s = start_with(c);
    let mut h = Http::connect(s.addr);
    // Only the head is sent: the 413 must come without reading any body.
    h.send(
        format!(
            "POST /api/broadcast HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nContent-Length: 1001\r\n\r\n",
            token("u")
        )
        .as_bytes(),
    );
    let r = h.response();
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(h.closed());
}

#[test]
fn chunked_body_gets_411() {
    let s = start();
    let r = request(
        s.addr,
        &format!(
            "POST /api/broadcast HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            token("u")
        ),
    );
    assert_eq!(r.status, 411);
}

#[test]
fn keep_alive_and_pipelining() {
    let s = start();
    let mut h = Http::connect(s.addr);
    let t = token("u");
    // Three requests in one write, a fourth split across writes.
    let mut raw = String::new();
    raw.push_str("GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    raw.push_str(&broadcast_request(&t, r#"{"type":"task_updated","data":1}"#));
    raw.push_str("GET /nope HTTP/1.1\r\nHost: t\r\n\r\n");
    h.send(raw.as_bytes());
    assert_eq!(h.response().status, 200);
    assert_eq!(h.response().json()["recipients"], 0);
    assert_eq!(h.response().status, 404);
    let split = broadcast_request(&t, r#"{"type":"task_updated","data":2}"#);
    for part in split.as_bytes().chunks(7) {
        h.send(part);
        std::thread::sleep(Duration::from_millis(1));
    }
    let r = h.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("keep-alive"));
}

#[test]
fn connection_close_is_honoured() {
    let s = start();
    let mut h = Http::connect(s.addr);
    h.send(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let r = h.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(h.closed());

    // HTTP/1.0 closes by default.
    let mut h = Http::connect(s.addr);
    h.send(b"GET /health HTTP/1.0\r\n\r\n");
    assert_eq!(h.response().status, 200);
    assert!(h.closed());
}

#[test]
fn oversized_head_gets_431() {
    let s = start();
    let mut h = Http::connect(s.addr);
    let pad = "a".repeat(17 * 1024);
    h.send(format!("GET /health HTTP/1.1\r\nHost: t\r\nX-Pad: {pad}\r\n\r\n").as_bytes());
    assert_eq!(h.response().status, 431);
    assert!(h.closed());
}

#[test]
fn garbage_gets_400_and_close() {
    let s = start();
    for garbage in [&b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..], b"HELLO\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n"] {
        let mut h = Http::connect(s.addr);
        h.send(garbage);
        assert_eq!(h.response().status, 400, "{garbage:?}");
        assert!(h.closed());
    }
    // The server is still fine.
    assert_eq!(get(s.addr, "/health").status, 200);
}

#[test]
fn slowloris_is_cut_off() {
    let mut c = config();
    c.request_timeout = Duration::from_millis(300);
    let s = start_with(c);
    let mut h = Http::connect(s.addr);
    h.send(b"GET /health HTTP/1.1\r\nHost: t\r\n");
    std::thread::sleep(Duration::from_millis(150));
    h.send(b"X-Slow: 1\r\n");
    let r = h.response();
    assert_eq!(r.status, 408);
    assert!(h.closed());

    // An idle keep-alive connection is closed too, without a response.
    let mut idle = Http::connect(s.addr);
    idle.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(idle.response().status, 200);
    assert!(idle.closed());
}

#[test]
fn half_closed_client_still_gets_its_answer() {
    let s = start();
    let mut h = Http::connect(s.addr);
    h.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    h.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(h.response().status, 200);
    assert!(h.closed());
}
