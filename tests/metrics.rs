//! `GET /metrics` (Prometheus text) and `GET /ready` against a real server:
//! the counters move with what really happened, the scrape carries no user
//! data and no CORS headers, and METRICS_API_KEY guards it.

mod common;
use common::*;
use serde_json::json;
use std::collections::HashMap;
use tungstenite::Message;

const KEY: &str = "metrics-key-0123456789abcdef";

/// A scrape as `name{labels}` -> value (comments skipped).
fn scrape(addr: std::net::SocketAddr, auth: &str) -> (HttpResponse, HashMap<String, f64>) {
    let r = request(addr, &format!("GET /metrics HTTP/1.1\r\nHost: t\r\nOrigin: http://localhost:3000\r\n{auth}\r\n"));
    let mut values = HashMap::new();
    let text = if r.status == 200 { r.body.as_str() } else { "" };
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample line: {line:?}"));
        values.insert(name.to_string(), value.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {line:?}")));
    }
    (r, values)
}

fn value(m: &HashMap<String, f64>, name: &str) -> f64 {
    *m.get(name).unwrap_or_else(|| panic!("{name} missing from the scrape: {m:?}"))
}

#[test]
fn counters_follow_what_happened_and_carry_no_user_data() {
    let s = start();
    let addr = s.addr;
    let mut a = ws(addr, &token("metrics-user-a"));
    let mut b = ws(addr, &token("metrics-user-b"));
    wait_clients(addr, 2);
    let body = r#"{"type":"task_created","data":{"id":"1"}}"#;
    assert_eq!(broadcast(addr, &token("srv"), body).status, 200);
    assert_eq!(next_json(&mut a)["type"], "task_created");
    assert_eq!(next_json(&mut b)["type"], "task_created");
    assert_eq!(broadcast(addr, "not-a-token", body).status, 401);
    let expired = sign(&json!({"sub": "metrics-user-c", "exp": now() - 3600}));
    assert_eq!(ws_try(addr, &format!("/ws?token={expired}"), &[]).err().map(|e| e.0), Some(401));
    b.send(Message::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(close_code(&mut b), 1003);
    wait_clients(addr, 1);

    let (r, m) = scrape(addr, "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    assert!(
        !r.headers.iter().any(|(k, _)| k.to_ascii_lowercase().starts_with("access-control")),
        "no CORS on /metrics: {:?}",
        r.headers
    );
    for (name, want) in [
        ("taskcast_clients", 1.0),
        ("taskcast_upgrades_total{code=\"101\"}", 2.0),
        ("taskcast_upgrades_total{code=\"401\"}", 1.0),
        ("taskcast_broadcasts_total{code=\"200\"}", 1.0),
        ("taskcast_broadcasts_total{code=\"401\"}", 1.0),
        ("taskcast_messages_delivered_total", 2.0),
        ("taskcast_closes_total{code=\"1003\"}", 1.0),
        ("taskcast_auth_failures_total{reason=\"expired\"}", 1.0),
        ("taskcast_auth_failures_total{reason=\"malformed\"}", 1.0),
        ("taskcast_fanout_seconds_count", 1.0),
        ("taskcast_slow_client_closes_total", 0.0),
    ] {
        assert_eq!(value(&m, name), want, "{name}");
    }
    // This scrape's own connection speaks HTTP.
    assert!(value(&m, "taskcast_http_connections") >= 1.0);
    // 3 upgrades, 2 broadcasts, the polls of /health, this scrape.
    assert!(value(&m, "taskcast_connections_accepted_total") >= 6.0);
    // Two 101 answers and two deliveries at least.
    assert!(value(&m, "taskcast_bytes_written_total") > 300.0);
    assert!(value(&m, "taskcast_loop_turn_seconds_count") > 0.0);
    assert!(value(&m, "process_resident_memory_bytes") > 1e6);
    assert!(value(&m, "process_open_fds") >= 4.0);
    assert!(!r.body.contains("metrics-user"), "a user id in the scrape:\n{}", r.body);
    assert!(!r.body.contains("jwks"), "no JWKS configured, no JWKS family");

    // POST is not a scrape.
    assert_eq!(request(addr, "POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n").status, 405);
    // A preflight gets no CORS grant either.
    let pre = request(
        addr,
        "OPTIONS /metrics HTTP/1.1\r\nHost: t\r\nOrigin: http://localhost:3000\r\nAccess-Control-Request-Method: GET\r\n\r\n",
    );
    assert_eq!(pre.status, 405);
    assert_eq!(pre.header("access-control-allow-origin"), None);
}

#[test]
fn metrics_api_key_guards_the_scrape() {
    let mut c = config();
    c.metrics_api_key = Some(KEY.into());
    let s = start_with(c);
    let (r, _) = scrape(s.addr, "");
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let (r, _) = scrape(s.addr, &format!("Authorization: Bearer {}X\r\n", &KEY[..KEY.len() - 1]));
    assert_eq!(r.status, 401);
    let (r, m) = scrape(s.addr, &format!("Authorization: Bearer {KEY}\r\n"));
    assert_eq!(r.status, 200);
    assert_eq!(value(&m, "taskcast_clients"), 0.0);
    // The other endpoints do not need it.
    assert_eq!(get(s.addr, "/health").status, 200);
    assert_eq!(get(s.addr, "/ready").status, 200);
}

#[test]
fn ready_and_health_bodies() {
    let s = start();
    let r = get(s.addr, "/ready");
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"status":"ready"}"#));
    let h = get(s.addr, "/health");
    assert_eq!(h.json(), json!({"status": "ok", "connectedClients": 0}));
    assert_eq!(request(s.addr, "POST /ready HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n").status, 405);
}
