//! Publisher credential, rate limits, and tokens kept out of logs.

mod common;
use common::*;
use serde_json::json;
use std::io::Read;
use std::process::Stdio;
use std::time::Duration;
use tungstenite::Message;

const KEY: &str = "publisher-key-0123456789abcdef";
const BODY: &str = r#"{"type":"task_created","data":{"id":"1"}}"#;

fn with_key() -> TestServer {
    let mut c = config();
    c.broadcast_api_key = Some(KEY.into());
    start_with(c)
}

fn post(addr: std::net::SocketAddr, auth_header: &str) -> HttpResponse {
    request(
        addr,
        &format!(
            "POST /api/broadcast HTTP/1.1\r\nHost: t\r\n{auth_header}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
            BODY.len()
        ),
    )
}

#[test]
fn api_key_is_the_only_publisher_credential() {
    let s = with_key();
    let mut c = ws(s.addr, &token("viewer")); // users still connect with JWTs
    wait_clients(s.addr, 1);

    let r = post(s.addr, &format!("Authorization: Bearer {KEY}\r\n"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["recipients"], 1);
    assert_eq!(next_json(&mut c)["type"], "task_created");
    assert_eq!(post(s.addr, &format!("X-API-Key: {KEY}\r\n")).status, 200);

    let r = post(s.addr, &format!("Authorization: Bearer {}\r\n", token("user")));
    assert_eq!(r.status, 403, "a user's JWT must not broadcast when a key is set");
    let r = post(s.addr, "Authorization: Bearer publisher-key-0123456789abcdeX\r\n");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["message"], "invalid API key");
    let r = post(s.addr, "");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["message"], "missing API key");
    let r = post(s.addr, &format!("X-API-Key: {}\r\n", &KEY[..10]));
    assert_eq!(r.status, 401);
}

#[test]
fn per_ip_connection_limit_gives_429() {
    let mut c = config();
    c.max_connections_per_ip = 2;
    let s = start_with(c);
    let t = token("u");
    let path = format!("/ws?token={t}");
    let from = |ip: &'static str| [("X-Forwarded-For", ip)];
    let _a = ws_try(s.addr, &path, &from("10.0.0.1")).expect("1st");
    let b = ws_try(s.addr, &path, &from("10.0.0.1")).expect("2nd");
    let Err((status, _)) = ws_try(s.addr, &path, &from("10.0.0.1")) else { panic!("3rd from one IP accepted") };
    assert_eq!(status, 429);
    // Another address is unaffected.
    let _c = ws_try(s.addr, &path, &from("10.0.0.2")).expect("other IP");
    // A slot frees when a client leaves.
    drop(b);
    wait_clients(s.addr, 2);
    let _d = ws_try(s.addr, &path, &from("10.0.0.1")).expect("after one left");
}

#[test]
fn broadcast_rate_limit_gives_429_with_retry_after() {
    let mut c = config();
    c.broadcast_rate = 2;
    c.broadcast_burst = 5;
    let s = start_with(c);
    let t = token("srv");
    let mut h = Http::connect(s.addr);
    let mut statuses = Vec::new();
    for _ in 0..8 {
        h.send(broadcast_request(&t, BODY).as_bytes());
        let r = h.response();
        if r.status == 429 {
            assert_eq!(r.header("retry-after"), Some("1"));
        }
        statuses.push(r.status);
    }
    assert_eq!(statuses[..5], [200; 5], "{statuses:?}");
    assert!(statuses[5..].contains(&429), "{statuses:?}");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(broadcast(s.addr, &t, BODY).status, 200, "the bucket refills");
}

/// A full session against the real binary at RUST_LOG=trace: the token
/// (in the URL, a header, an in-band refresh, a refused request) must not
/// appear anywhere in what the process prints.
#[test]
fn tokens_never_reach_the_logs() {
    tokens_never_reach_the_logs_in("text");
}

/// The same session with LOG_FORMAT=json.
#[test]
fn tokens_never_reach_the_json_logs() {
    tokens_never_reach_the_logs_in("json");
}

fn tokens_never_reach_the_logs_in(format: &str) {
    let mut srv = start_binary(
        taskcast_cmd()
            .envs([("JWT_SECRET", SECRET), ("RUST_LOG", "trace"), ("LOG_FORMAT", format), ("DRAIN_SECS", "0")])
            .stdout(Stdio::piped()),
    );
    let addr = srv.addr;
    let t = token("secret-user");
    let expired = sign(&json!({"sub":"secret-user","exp": now() - 3600}));
    let fresh = sign(&json!({"sub":"secret-user","exp": now() + 7200, "n": 1}));
    let mut c = ws(addr, &t);
    let _h = ws_try(addr, "/ws", &[("Authorization", &format!("Bearer {t}"))]).unwrap();
    assert_eq!(ws_try(addr, &format!("/ws?token={expired}&x=1"), &[]).err().unwrap().0, 401);
    c.send(Message::text(json!({"type":"auth","token": fresh}).to_string())).unwrap();
    assert_eq!(next_json(&mut c)["type"], "auth_ok");
    c.send(Message::text(json!({"type":"auth","token": expired}).to_string())).unwrap();
    assert_eq!(close_code(&mut c), 4003);
    assert_eq!(broadcast(addr, &t, BODY).status, 200);
    assert_eq!(broadcast(addr, &expired, BODY).status, 401);
    let _ = request(addr, &format!("GET /nope?token={t} HTTP/1.1\r\nHost: t\r\n\r\n"));
    srv.signal(libc::SIGTERM);
    let mut out = String::new();
    srv.child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(srv.wait_exit(WAIT).success());
    std::thread::sleep(Duration::from_millis(100)); // let the log thread take the last lines
    let text = srv.log() + &out;
    assert!(text.contains("secret-user"), "the session was logged at all (sub appears): {text}");
    for (name, tok) in [("token", &t), ("expired", &expired), ("fresh", &fresh)] {
        // Any of the three JWT parts would be a leak; the signature is unique.
        let sig = tok.rsplit('.').next().unwrap();
        assert!(!text.contains(sig), "{name} token leaked into the output:\n{text}");
    }
}
