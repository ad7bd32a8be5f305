//! In-band authentication (`GET /ws?auth=message`, then the token as the
//! first message): it ends in exactly the state a token in the upgrade
//! request gives; refusals close with a code and a reason text a page can
//! read; it is bounded in time and counted against the per-address limits;
//! clients that do not ask keep the refusals before the upgrade.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use taskcast::config::Origins;
use tungstenite::Message;

const PUBLISHER_KEY: &str = "publisher-key-for-inband-tests-0123456789";

/// A WebSocket that asked for in-band authentication (not authenticated yet).
fn in_band(addr: std::net::SocketAddr, headers: &[(&str, &str)]) -> Ws {
    ws_try(addr, "/ws?auth=message", headers).expect("upgrade")
}

fn send(ws: &mut Ws, msg: Value) {
    ws.send(Message::text(msg.to_string())).unwrap();
}

/// Opens, sends `token` in band, and expects `auth_ok`.
fn authenticated(addr: std::net::SocketAddr, token: &str) -> Ws {
    let mut ws = in_band(addr, &[]);
    send(&mut ws, json!({"type": "auth", "token": token}));
    assert_eq!(next_json(&mut ws), json!({"type": "auth_ok"}));
    ws
}

/// The close frame the server sends: (code, reason).
fn closed_with(ws: &mut Ws) -> (u16, String) {
    let f = expect_close(ws).expect("a close frame with a code");
    (u16::from(f.code), f.reason.to_string())
}

fn publish(addr: std::net::SocketAddr, body: Value) -> Value {
    let r = broadcast(addr, PUBLISHER_KEY, &body.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn gauge(addr: std::net::SocketAddr, name: &str) -> u64 {
    let body = get(addr, "/metrics").body;
    let line = body.lines().find(|l| l.split(' ').next() == Some(name)).unwrap_or_else(|| panic!("{name} in {body}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

fn server() -> TestServer {
    let mut cfg = config();
    cfg.broadcast_api_key = Some(PUBLISHER_KEY.into());
    start_with(cfg)
}

fn claims(sub: &str, ttl: i64) -> Value {
    let now = now() as i64;
    json!({"sub": sub, "iat": now, "exp": now + ttl, "channels": ["project:*"]})
}

#[test]
fn in_band_and_upgrade_authentication_end_in_the_same_state() {
    let s = server();
    let token = sign(&claims("u1", 3600));
    let mut by_message = authenticated(s.addr, &token);
    let mut by_url = ws(s.addr, &token);
    wait_clients(s.addr, 2);
    // Each is in its user channel: one subscription each.
    assert_eq!(gauge(s.addr, "taskcast_subscriptions"), 2);
    // The same grants: project:* is granted, team:* is not.
    for c in [&mut by_message, &mut by_url] {
        send(c, json!({"type": "subscribe", "channel": "project:1"}));
        assert_eq!(next_json(c)["type"], "subscribed");
        send(c, json!({"type": "subscribe", "channel": "team:1"}));
        assert_eq!(next_json(c)["payload"]["code"], "forbidden");
    }
    // The same deliveries: to the user, to the channel, to everyone.
    publish(s.addr, json!({"type": "to_user", "data": 1, "users": ["u1"]}));
    publish(s.addr, json!({"type": "to_channel", "data": 2, "channel": "project:1"}));
    let all = publish(s.addr, json!({"type": "to_all", "data": 3}));
    assert_eq!(all["recipients"], 2);
    for c in [&mut by_message, &mut by_url] {
        let got: Vec<Value> = (0..3).map(|_| next_json(c)).collect();
        assert_eq!(got[0], json!({"type": "to_user", "payload": 1, "channel": "user:u1", "offset": 1}));
        assert_eq!(got[1], json!({"type": "to_channel", "payload": 2, "channel": "project:1", "offset": 1}));
        assert_eq!(got[2], json!({"type": "to_all", "payload": 3}));
    }
}

#[test]
fn an_in_band_connection_gets_its_token_expiry() {
    let s = server();
    // 29 s past exp: inside the 30 s leeway, so it is accepted and must be
    // closed with 4001 about a second later, as at the upgrade.
    let token = sign(&claims("u-exp", -29));
    let mut c = authenticated(s.addr, &token);
    let started = Instant::now();
    assert_eq!(closed_with(&mut c), (4001, "token expired".to_string()));
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn nothing_reaches_a_connection_before_it_authenticates() {
    let s = server();
    let mut waiting = in_band(s.addr, &[]);
    wait_clients(s.addr, 1); // counted as a connection (limits) from the upgrade on
    let before = publish(s.addr, json!({"type": "early", "data": 0}));
    assert_eq!(before["recipients"], 0, "a connection that has not authenticated is no recipient");
    assert_eq!(gauge(s.addr, "taskcast_subscriptions"), 0, "no user channel before the token");
    send(&mut waiting, json!({"type": "auth", "token": token("u2")}));
    assert_eq!(next_json(&mut waiting), json!({"type": "auth_ok"}));
    let after = publish(s.addr, json!({"type": "late", "data": 1}));
    assert_eq!(after["recipients"], 1);
    // The first message it gets after auth_ok is the second broadcast.
    assert_eq!(next_json(&mut waiting), json!({"type": "late", "payload": 1}));
}

#[test]
fn refusals_close_with_a_code_and_the_reason() {
    let mut cfg = config();
    cfg.jwt_issuer = Some("https://app.example".into());
    cfg.jwt_audience = Some("taskcast".into());
    cfg.allowed_origins = Origins::List(vec!["https://app.example".into()]);
    cfg.auth_failures_per_min = 0; // this test makes many on purpose
    let s = start_with(cfg);
    let now = now();
    let good = json!({"sub": "u", "iat": now, "exp": now + 600, "iss": "https://app.example", "aud": "taskcast"});
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    // Signed with another secret.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &good,
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret-another-secret-0123"),
    )
    .unwrap();
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("bad signature", json!({"type": "auth", "token": forged}), 4003, "token signature is invalid"),
        (
            "wrong issuer",
            json!({"type": "auth", "token": sign(&with("iss", json!("https://evil.example")))}),
            4003,
            "token issuer is not accepted",
        ),
        (
            "wrong audience",
            json!({"type": "auth", "token": sign(&with("aud", json!("other")))}),
            4003,
            "token audience is not accepted",
        ),
        ("expired", json!({"type": "auth", "token": sign(&with("exp", json!(now - 3600)))}), 4001, "token expired"),
        ("not a JWT", json!({"type": "auth", "token": "abc"}), 4003, "token is malformed"),
        (
            "empty token",
            json!({"type": "auth", "token": ""}),
            4003,
            r#"missing token: send {"type":"auth","token":"<jwt>"}"#,
        ),
        (
            "not an auth message",
            json!({"type": "subscribe", "channel": "project:1"}),
            4003,
            r#"the first message must be {"type":"auth","token":"<jwt>"}"#,
        ),
    ];
    for (what, first, code, reason) in cases {
        let mut c = in_band(s.addr, &[("Origin", "https://app.example")]);
        send(&mut c, first);
        assert_eq!(closed_with(&mut c), (code, reason.to_string()), "{what}");
    }
    // The good token from the allowed origin works.
    let mut c = in_band(s.addr, &[("Origin", "https://app.example")]);
    send(&mut c, json!({"type": "auth", "token": sign(&good)}));
    assert_eq!(next_json(&mut c), json!({"type": "auth_ok"}));
    // Another origin: upgraded, then closed at once with the reason, even
    // with a good token on its way.
    let mut c = in_band(s.addr, &[("Origin", "https://evil.example")]);
    let _ = c.send(Message::text(json!({"type": "auth", "token": sign(&good)}).to_string()));
    assert_eq!(closed_with(&mut c), (4003, "origin not allowed".to_string()));
}

#[test]
fn no_auth_message_in_time_closes_with_4008() {
    let mut cfg = config();
    cfg.request_timeout = Duration::from_secs(1);
    let s = start_with(cfg);
    let mut c = in_band(s.addr, &[]);
    let started = Instant::now();
    assert_eq!(closed_with(&mut c), (4008, "no auth message in time".to_string()));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(800) && waited < Duration::from_secs(4), "{waited:?}");
    wait_clients(s.addr, 0);
}

#[test]
fn in_band_refusals_count_against_the_address() {
    let mut cfg = config();
    cfg.auth_failures_per_min = 2;
    let s = start_with(cfg);
    for _ in 0..2 {
        let mut c = in_band(s.addr, &[]);
        send(&mut c, json!({"type": "auth", "token": "forged.token.value"}));
        assert_eq!(closed_with(&mut c).0, 4003);
    }
    // Over AUTH_FAILURES_PER_MIN: refused before the upgrade, as after two 401s.
    let Err(err) = ws_try(s.addr, "/ws?auth=message", &[]) else { panic!("upgraded") };
    assert_eq!(err.0, 429, "{}", err.1);
}

#[test]
fn waiting_connections_count_against_the_per_address_limit() {
    let mut cfg = config();
    cfg.max_connections_per_ip = 2;
    let s = start_with(cfg);
    let _a = in_band(s.addr, &[]);
    let _b = in_band(s.addr, &[]);
    wait_clients(s.addr, 2);
    let Err(err) = ws_try(s.addr, "/ws?auth=message", &[]) else { panic!("upgraded") };
    assert_eq!(err.0, 429, "{}", err.1);
}

#[test]
fn clients_that_do_not_ask_keep_the_refusals_before_the_upgrade() {
    let mut cfg = config();
    cfg.allowed_origins = Origins::List(vec!["https://app.example".into()]);
    let s = start_with(cfg);
    let t = token("u");
    // Path, headers, status, a part of the message.
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("/ws".into(), vec![], 401, "missing token"),
        ("/ws?token=forged.token.value".into(), vec![], 401, "token"),
        (format!("/ws?token={t}"), vec![("Origin", "https://evil.example")], 403, "origin not allowed"),
        // Ambiguous: a token in the request and in-band asked for.
        (format!("/ws?auth=message&token={t}"), vec![], 400, "first message only"),
        ("/ws?auth=message".into(), vec![("Authorization", "Bearer x.y.z")], 400, "first message only"),
        ("/ws?auth=header".into(), vec![], 400, "auth must be"),
    ];
    for (path, headers, status, text) in cases {
        let err = ws_try(s.addr, &path, &headers).err().unwrap_or_else(|| panic!("{path} was upgraded"));
        assert_eq!(err.0, status, "{path}: {}", err.1);
        assert!(err.1.contains(text), "{path}: {}", err.1);
    }
}
