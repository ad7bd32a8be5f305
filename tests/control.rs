//! The server API (issue 19) through real sockets and real signed tokens:
//! unsubscribe, disconnect and revoke a user; a channel's position and
//! history; idempotent publishes — in one process, and across three
//! instances on one real redis-server, including an instance cut off from
//! Redis while the action is taken. Every wait is bounded.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::*;
use serde_json::{Value, json};
use tungstenite::Message;

const KEY: &str = "control-key-for-the-tests-0123456789";
/// Reconnect backoff tops out at 5 s (jittered), plus a connect.
const RECONNECT_WAIT: Duration = Duration::from_secs(15);

fn control_config() -> taskcast::Config {
    let mut c = config();
    c.control_api_key = Some(KEY.into());
    c
}

/// A user's connection token: `iat` as given, a channels claim for `project:*`.
fn member_at(sub: &str, iat: u64) -> String {
    sign(&json!({"sub": sub, "iat": iat, "exp": now() + 3600, "channels": ["project:*"]}))
}

/// A token issued a while ago (still valid): older than any action a test takes.
fn old_member(sub: &str) -> String {
    member_at(sub, now() - 60)
}

/// A subscription token for one channel, with its `iat`.
fn sub_token(sub: &str, channel: &str, iat: u64) -> String {
    sign(&json!({"sub": sub, "channel": channel, "iat": iat, "exp": now() + 3600}))
}

/// Waits (at most a second) for the clock's next second: a token minted
/// now is then "issued after" an action taken before this call.
fn next_second() {
    let s = now();
    while now() == s {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One request with a body; `auth` is the Authorization header value.
fn call(addr: SocketAddr, method: &str, path: &str, auth: Option<&str>, extra: &str, body: &str) -> HttpResponse {
    let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    request(
        addr,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn post(addr: SocketAddr, path: &str, body: Value) -> HttpResponse {
    call(addr, "POST", path, Some(&format!("Bearer {KEY}")), "", &body.to_string())
}

fn read(addr: SocketAddr, path: &str) -> HttpResponse {
    request(addr, &format!("GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY}\r\n\r\n"))
}

fn ok(r: HttpResponse) -> Value {
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn subscribe(c: &mut Ws, channel: &str, since: Option<(&str, u64)>, token: Option<&str>) -> Value {
    let mut msg = json!({"type": "subscribe", "channel": channel});
    if let Some((epoch, offset)) = since {
        msg["since"] = json!({"epoch": epoch, "offset": offset});
    }
    if let Some(t) = token {
        msg["token"] = t.into();
    }
    c.send(Message::text(msg.to_string())).unwrap();
    next_json(c)
}

fn publish(addr: SocketAddr, channel: &str, data: Value) -> HttpResponse {
    broadcast(addr, &token("publisher"), &json!({"type": "task_updated", "data": data, "channel": channel}).to_string())
}

/// A broadcast with an `Idempotency-Key`.
fn publish_once(addr: SocketAddr, body: &Value, key: &str) -> HttpResponse {
    call(
        addr,
        "POST",
        "/api/broadcast",
        Some(&format!("Bearer {}", token("publisher"))),
        &format!("Idempotency-Key: {key}\r\n"),
        &body.to_string(),
    )
}

/// A round trip on `c`: nothing else is queued before the pong.
fn quiet(c: &mut Ws) {
    c.send(Message::text(r#"{"type":"ping"}"#)).unwrap();
    let m = next_json(c);
    assert_eq!(m["type"], "pong", "expected nothing before the pong, got {m}");
}

fn is_forbidden(m: &Value) -> bool {
    m["type"] == "error" && m["payload"]["code"] == "forbidden"
}

/// The close code and reason the server sent.
fn close_of(c: &mut Ws) -> (u16, String) {
    let f = expect_close(c).expect("a close frame with a code");
    (u16::from(f.code), f.reason.to_string())
}

// ---- one process -----------------------------------------------------------

#[test]
fn a_removed_member_stops_receiving_at_once_and_rejoins_only_with_a_newer_token() {
    let s = start_with(control_config());
    let mut u1 = ws(s.addr, &old_member("u1"));
    let mut u2 = ws(s.addr, &old_member("u2"));
    for c in [&mut u1, &mut u2] {
        assert_eq!(subscribe(c, "project:7", None, None)["type"], "subscribed");
    }
    assert_eq!(subscribe(&mut u1, "project:8", None, None)["type"], "subscribed");
    ok(publish(s.addr, "project:7", json!(1)));
    for c in [&mut u1, &mut u2] {
        assert_eq!(next_json(c)["payload"], 1);
    }

    let r = ok(post(
        s.addr,
        "/api/unsubscribe",
        json!({"user": "u1", "channel": "project:7", "reason": "removed from project"}),
    ));
    assert_eq!(r, json!({"status": "ok", "unsubscribed": 1}));
    assert_eq!(
        next_json(&mut u1),
        json!({"type": "unsubscribed", "channel": "project:7", "reason": "removed from project"})
    );
    ok(publish(s.addr, "project:7", json!(2)));
    assert_eq!(next_json(&mut u2)["payload"], 2, "other members keep receiving");
    quiet(&mut u1);
    // project:8 was not named: still there.
    ok(publish(s.addr, "project:8", json!("eight")));
    assert_eq!(next_json(&mut u1)["payload"], "eight");

    // Not again with the old token's claim, nor with an old subscription token.
    assert!(is_forbidden(&subscribe(&mut u1, "project:7", None, None)));
    let old_sub = sub_token("u1", "project:7", now() - 30);
    let m = subscribe(&mut u1, "project:7", None, Some(&old_sub));
    assert!(is_forbidden(&m), "{m}");
    assert!(m["payload"]["message"].as_str().unwrap().contains("removed from project"), "{m}");
    // Nor from a new tab with a token issued before the removal.
    let mut tab = ws(s.addr, &old_member("u1"));
    assert!(is_forbidden(&subscribe(&mut tab, "project:7", None, None)));

    // Re-added: the app mints a new token, and it works at once.
    next_second();
    let fresh_sub = sub_token("u1", "project:7", now());
    assert_eq!(subscribe(&mut u1, "project:7", None, Some(&fresh_sub))["type"], "subscribed");
    tab.send(Message::text(json!({"type": "auth", "token": member_at("u1", now())}).to_string())).unwrap();
    assert_eq!(next_json(&mut tab)["type"], "auth_ok");
    assert_eq!(subscribe(&mut tab, "project:7", None, None)["type"], "subscribed");
    ok(publish(s.addr, "project:7", json!(3)));
    for c in [&mut u1, &mut tab, &mut u2] {
        assert_eq!(next_json(c)["payload"], 3);
    }

    // A pattern ends every matching subscription of the user, and only theirs.
    let r = ok(post(s.addr, "/api/unsubscribe", json!({"user": "u1", "channel": "project:*"})));
    assert_eq!(r["unsubscribed"], 3, "u1: project:7, project:8; tab: project:7");
    let mut ended = [next_json(&mut u1), next_json(&mut u1)];
    ended.sort_by_key(|m| m["channel"].as_str().unwrap().to_string());
    assert_eq!(ended[0]["channel"], "project:7");
    assert_eq!(ended[1]["channel"], "project:8");
    assert_eq!(ended[1]["reason"], "unsubscribed by the server");
    assert_eq!(next_json(&mut tab)["type"], "unsubscribed");
    quiet(&mut u2);
    ok(publish(s.addr, "project:7", json!(4)));
    assert_eq!(next_json(&mut u2)["payload"], 4);
}

#[test]
fn disconnect_closes_every_tab_of_the_user_with_the_code_asked_for() {
    let s = start_with(control_config());
    let mut tabs = vec![ws(s.addr, &old_member("u1")), ws(s.addr, &old_member("u1"))];
    let mut other = ws(s.addr, &old_member("u2"));
    wait_clients(s.addr, 3);
    let r = ok(post(s.addr, "/api/disconnect", json!({"user": "u1", "reconnect": false, "reason": "signed out"})));
    assert_eq!(r, json!({"status": "ok", "disconnected": 2}));
    for t in &mut tabs {
        assert_eq!(close_of(t), (4009, "signed out".to_string()));
    }
    quiet(&mut other);
    wait_clients(s.addr, 1);

    // Not a ban: the user may connect again, and be sent to get a fresh token.
    let mut back = ws(s.addr, &old_member("u1"));
    wait_clients(s.addr, 2);
    let r = ok(post(s.addr, "/api/disconnect", json!({"user": "u1", "reconnect": true})));
    assert_eq!(r["disconnected"], 1);
    assert_eq!(close_of(&mut back), (4011, "reconnect with a fresh token".to_string()));
    assert_eq!(ok(post(s.addr, "/api/disconnect", json!({"user": "nobody", "reconnect": true})))["disconnected"], 0);
    quiet(&mut other);
}

#[test]
fn revoke_refuses_older_tokens_at_every_door_and_closes_their_connections() {
    let s = start_with(control_config());
    let old = old_member("u1");
    let mut tab = ws(s.addr, &old);
    let mut other = ws(s.addr, &old_member("u2"));
    wait_clients(s.addr, 2);
    let r = ok(post(s.addr, "/api/revoke", json!({"user": "u1"})));
    assert_eq!(r["disconnected"], 1);
    let cut = r["issued_before"].as_u64().unwrap();
    assert!(cut > now() - 2 && cut <= now() + 1, "default: now");
    assert_eq!(close_of(&mut tab), (4011, "token revoked: reconnect with a fresh token".to_string()));
    quiet(&mut other);

    // The upgrade: 401 for the old token, and for one without iat (its age is unknown).
    let (status, body) = ws_try(s.addr, &format!("/ws?token={old}"), &[]).unwrap_err();
    assert_eq!(status, 401);
    assert!(body.contains("token revoked"), "{body}");
    let no_iat = sign(&json!({"sub": "u1", "exp": now() + 3600}));
    assert_eq!(ws_try(s.addr, &format!("/ws?token={no_iat}"), &[]).unwrap_err().0, 401);
    assert!(ws_try(s.addr, &format!("/ws?token={}", sign(&json!({"sub": "u2", "exp": now() + 60}))), &[]).is_ok());

    // A fresh token works; an in-band refresh with the old one gets 4003;
    // an old subscription token is refused.
    next_second();
    let mut fresh = ws(s.addr, &member_at("u1", now()));
    let m = subscribe(&mut fresh, "board:1", None, Some(&sub_token("u1", "board:1", now() - 30)));
    assert!(is_forbidden(&m) && m["payload"]["message"].as_str().unwrap().contains("revoked"), "{m}");
    assert_eq!(subscribe(&mut fresh, "board:1", None, Some(&sub_token("u1", "board:1", now())))["type"], "subscribed");
    fresh.send(Message::text(json!({"type": "auth", "token": old}).to_string())).unwrap();
    assert_eq!(close_code(&mut fresh), 4003);

    // An explicit issued_before: only tokens issued before it.
    let t = now();
    ok(post(s.addr, "/api/revoke", json!({"user": "u3", "issued_before": t - 100})));
    assert_eq!(ws_try(s.addr, &format!("/ws?token={}", member_at("u3", t - 200)), &[]).unwrap_err().0, 401);
    assert!(ws_try(s.addr, &format!("/ws?token={}", member_at("u3", t - 50)), &[]).is_ok());
    // A later revocation with an earlier issued_before does not shorten it.
    ok(post(s.addr, "/api/revoke", json!({"user": "u3", "issued_before": t - 300})));
    assert_eq!(ws_try(s.addr, &format!("/ws?token={}", member_at("u3", t - 200)), &[]).unwrap_err().0, 401);
}

#[test]
fn tokens_living_longer_than_jwt_max_lifetime_are_refused() {
    let mut cfg = control_config();
    cfg.jwt_max_lifetime_secs = 900;
    let s = start_with(cfg);
    let n = now();
    let long = sign(&json!({"sub": "u1", "iat": n, "exp": n + 901}));
    let (status, body) = ws_try(s.addr, &format!("/ws?token={long}"), &[]).unwrap_err();
    assert_eq!(status, 401);
    assert!(body.contains("JWT_MAX_LIFETIME_SECS"), "{body}");
    assert!(
        ws_try(s.addr, &format!("/ws?token={}", sign(&json!({"sub": "u1", "iat": n, "exp": n + 900}))), &[]).is_ok()
    );
}

#[test]
fn the_credential_is_the_control_key_in_a_header_and_nothing_else() {
    // Neither key: the API is off, and says how to turn it on.
    let off = start();
    for r in [post(off.addr, "/api/revoke", json!({"user": "u"})), read(off.addr, "/api/channels/project:1")] {
        assert_eq!(r.status, 403, "{}", r.body);
        let msg = r.json()["message"].as_str().unwrap().to_string();
        assert!(msg.contains("CONTROL_API_KEY") && msg.contains("BROADCAST_API_KEY"), "{msg}");
    }

    // BROADCAST_API_KEY stands in when CONTROL_API_KEY is unset.
    let mut cfg = config();
    cfg.broadcast_api_key = Some("broadcast-key-0123456789".into());
    let fallback = start_with(cfg.clone());
    let auth = Some("Bearer broadcast-key-0123456789");
    assert_eq!(call(fallback.addr, "POST", "/api/revoke", auth, "", r#"{"user":"u"}"#).status, 200);

    cfg.control_api_key = Some(KEY.into());
    let s = start_with(cfg);
    let body = r#"{"user":"u"}"#;
    let user_jwt = format!("Bearer {}", token("u"));
    let cases: &[(Option<&str>, &str, &str, u16, &str)] = &[
        (None, "/api/revoke", "", 401, "missing API key"),
        (Some("Bearer wrong-key-0123456789"), "/api/revoke", "", 401, "invalid API key"),
        (Some("Bearer broadcast-key-0123456789"), "/api/revoke", "", 401, "invalid API key"),
        (Some(&user_jwt), "/api/revoke", "", 403, "user tokens cannot use the server API"),
        // Header only: a key in the URL is never taken (it would be logged).
        (None, &format!("/api/revoke?key={KEY}"), "", 401, "missing API key"),
        (None, &format!("/api/revoke?token={KEY}"), "", 401, "missing API key"),
        (None, "/api/revoke", &format!("X-API-Key: {KEY}\r\n"), 200, ""),
        // A page must never hold the key.
        (Some(&format!("Bearer {KEY}")), "/api/revoke", "Origin: http://localhost:3000\r\n", 403, "web page"),
    ];
    for (auth, path, extra, status, msg) in cases {
        let r = call(s.addr, "POST", path, *auth, extra, body);
        assert_eq!(r.status, *status, "{auth:?} {path} {extra:?}: {}", r.body);
        assert!(r.body.contains(msg), "{auth:?} {path}: {}", r.body);
        assert!(r.header("Access-Control-Allow-Origin").is_none(), "never readable from a page");
    }
    let r = call(s.addr, "GET", "/api/revoke", Some(&format!("Bearer {KEY}")), "", "");
    assert_eq!((r.status, r.header("Allow")), (405, Some("POST")));
    let r = call(s.addr, "POST", "/api/channels/p:1", Some(&format!("Bearer {KEY}")), "", "");
    assert_eq!((r.status, r.header("Allow")), (405, Some("GET")));
    let r = call(s.addr, "POST", "/api/revoke", Some(&format!("Bearer {KEY}")), "", "");
    assert_eq!(r.status, 400);
    let r = request(
        s.addr,
        &format!(
            "POST /api/revoke HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(r.status, 415);
}

#[test]
fn bad_bodies_and_queries_get_400_with_a_clear_message() {
    let s = start_with(control_config());
    let posts: &[(&str, &str, &str)] = &[
        ("/api/unsubscribe", "", "empty body"),
        ("/api/unsubscribe", "{\"user\":", "invalid JSON"),
        ("/api/unsubscribe", "[\"u1\"]", "must be a JSON object"),
        ("/api/unsubscribe", r#"{"channel":"project:7"}"#, "missing \"user\""),
        ("/api/unsubscribe", r#"{"user":"u1"}"#, "missing \"channel\""),
        ("/api/unsubscribe", r#"{"user":"u1","channel":"project"}"#, "invalid \"channel\""),
        ("/api/unsubscribe", r#"{"user":"u1","channel":"user:u1"}"#, "use /api/disconnect"),
        ("/api/unsubscribe", r#"{"user":"u 1","channel":"project:7"}"#, "must be a user id"),
        ("/api/unsubscribe", r#"{"users":["u1"],"channel":"project:7"}"#, "unknown field \"users\""),
        ("/api/disconnect", r#"{"user":"u1"}"#, "\"reconnect\" must be true or false"),
        ("/api/disconnect", r#"{"user":"u1","reconnect":true,"reason":7}"#, "\"reason\" must be text"),
        ("/api/revoke", r#"{"user":"u1","issued_before":"yesterday"}"#, "whole number of unix seconds"),
        ("/api/revoke", r#"{"user":"u1","issued_before":99999999999}"#, "in the future"),
    ];
    for (path, body, want) in posts {
        let r = call(s.addr, "POST", path, Some(&format!("Bearer {KEY}")), "", body);
        assert_eq!(r.status, 400, "{path} {body}: {}", r.body);
        let v = r.json();
        assert_eq!(v["error"], "bad_request");
        assert!(v["message"].as_str().unwrap().contains(want), "{path} {body}: {v}");
    }
    let gets: &[(&str, &str)] = &[
        ("/api/channels/project", "invalid channel"),
        ("/api/channels/p%ZZ", "percent-encoding"),
        ("/api/history", "missing channel"),
        ("/api/history?channel=project:1&since=17", "since must be <epoch>:<offset>"),
        ("/api/history?channel=project:1&limit=0", "limit must be"),
        ("/api/history?channel=project:1&limit=5000", "limit must be"),
        ("/api/history?channel=project:1&cursor=2", "unknown query parameter"),
    ];
    for (path, want) in gets {
        let r = read(s.addr, path);
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        assert!(r.json()["message"].as_str().unwrap().contains(want), "{path}: {}", r.body);
    }
    // The Idempotency-Key of a broadcast.
    let body = json!({"type": "t", "data": 1, "channel": "project:1"});
    for key in ["has space", &"k".repeat(129)] {
        let r = publish_once(s.addr, &body, key);
        assert_eq!(r.status, 400, "{key}");
        assert!(r.body.contains("Idempotency-Key must be 1-128 visible ASCII"), "{}", r.body);
    }
    let two = call(
        s.addr,
        "POST",
        "/api/broadcast",
        Some(&format!("Bearer {}", token("p"))),
        "Idempotency-Key: a\r\nIdempotency-Key: b\r\n",
        &body.to_string(),
    );
    assert_eq!(two.status, 400, "two keys are ambiguous: {}", two.body);
    // The server is fine afterwards.
    assert_eq!(get(s.addr, "/health").status, 200);
}

#[test]
fn a_page_rendered_at_position_p_then_subscribing_since_p_gets_exactly_the_messages_in_between() {
    let s = start_with(control_config());
    // A channel no one is in and nothing was published to.
    let p = ok(read(s.addr, "/api/channels/project%3A9"));
    assert_eq!(
        (p["channel"].as_str(), p["offset"].as_u64(), p["subscribers"].as_u64()),
        (Some("project:9"), Some(0), Some(0))
    );
    let epoch = p["epoch"].as_str().unwrap().to_string();
    // Updates between the render and the browser's subscribe (no subscriber yet).
    for i in 1..=3 {
        ok(publish(s.addr, "project:9", json!(i)));
    }
    let mut c = ws(s.addr, &old_member("viewer"));
    let sub = subscribe(&mut c, "project:9", Some((&epoch, 0)), None);
    assert_eq!(
        (sub["recovered"].as_bool(), sub["epoch"].as_str(), sub["offset"].as_u64()),
        (Some(true), Some(epoch.as_str()), Some(3))
    );
    for i in 1..=3 {
        let m = next_json(&mut c);
        assert_eq!((m["offset"].as_u64(), &m["payload"]), (Some(i), &json!(i)));
    }
    ok(publish(s.addr, "project:9", json!("live")));
    assert_eq!(next_json(&mut c)["offset"], 4);
    // A second page, later: the position counts its subscriber.
    let p = ok(read(s.addr, "/api/channels/project:9"));
    assert_eq!(
        (p["epoch"].as_str(), p["offset"].as_u64(), p["subscribers"].as_u64()),
        (Some(epoch.as_str()), Some(4), Some(1))
    );
    ok(publish(s.addr, "project:9", json!(5)));
    let mut c2 = ws(s.addr, &old_member("viewer2"));
    assert_eq!(subscribe(&mut c2, "project:9", Some((&epoch, 4)), None)["recovered"], true);
    assert_eq!(next_json(&mut c2)["offset"], 5);
    quiet(&mut c2);
}

#[test]
fn a_page_read_holds_the_stream_of_a_channel_whose_history_expired() {
    // A channel that had messages and was forgotten once they expired starts
    // a new stream (a new epoch) when it is next used: the page's read must
    // fix which one, or the browser's subscribe would not recover.
    let mut cfg = control_config();
    cfg.history_ttl = Duration::from_secs(1);
    let s = start_with(cfg);
    ok(publish(s.addr, "project:r", json!("old")));
    let first = ok(read(s.addr, "/api/channels/project:r"))["epoch"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(2200)); // the message and the read's hold expire
    let p = ok(read(s.addr, "/api/channels/project:r"));
    let epoch = p["epoch"].as_str().unwrap().to_string();
    assert_ne!(epoch, first, "a new stream");
    assert_eq!(p["offset"], 0);
    ok(publish(s.addr, "project:r", json!("new")));
    let mut c = ws(s.addr, &old_member("viewer"));
    let sub = subscribe(&mut c, "project:r", Some((&epoch, 0)), None);
    assert_eq!((sub["recovered"].as_bool(), sub["epoch"].as_str()), (Some(true), Some(epoch.as_str())), "{sub}");
    assert_eq!(next_json(&mut c)["payload"], "new");
}

#[test]
fn history_returns_the_held_messages_and_says_when_the_range_is_not_whole() {
    let mut cfg = control_config();
    cfg.history_size = 5;
    let s = start_with(cfg);
    for i in 1..=8 {
        ok(publish(s.addr, "project:h", json!({"n": i})));
    }
    let offsets =
        |v: &Value| v["messages"].as_array().unwrap().iter().map(|m| m["offset"].as_u64().unwrap()).collect::<Vec<_>>();
    let all = ok(read(s.addr, "/api/history?channel=project%3Ah"));
    assert_eq!(
        (all["channel"].as_str(), all["offset"].as_u64(), all["complete"].as_bool()),
        (Some("project:h"), Some(8), Some(true))
    );
    assert_eq!(offsets(&all), [4, 5, 6, 7, 8], "HISTORY_SIZE keeps the last 5");
    assert_eq!(all["messages"][0], json!({"offset": 4, "type": "task_updated", "payload": {"n": 4}}));
    let e = all["epoch"].as_str().unwrap().to_string();
    let h = |q: &str| ok(read(s.addr, &format!("/api/history?channel=project:h&{q}")));
    let r = h(&format!("since={e}:5"));
    assert_eq!((offsets(&r), r["complete"].as_bool()), (vec![6, 7, 8], Some(true)));
    let r = h(&format!("since={e}%3A5&limit=2"));
    assert_eq!((offsets(&r), r["complete"].as_bool()), (vec![6, 7], Some(true)));
    let r = h(&format!("since={e}:8"));
    assert_eq!((offsets(&r), r["complete"].as_bool()), (vec![], Some(true)));
    let r = h(&format!("since={e}:1"));
    assert_eq!((offsets(&r), r["complete"].as_bool()), (vec![4, 5, 6, 7, 8], Some(false)), "2 and 3 are gone");
    let r = h("since=another:3");
    assert_eq!((offsets(&r), r["complete"].as_bool()), (vec![4, 5, 6, 7, 8], Some(false)));
    let r = h(&format!("since={e}:9"));
    assert_eq!((offsets(&r), r["complete"].as_bool()), (vec![], Some(false)), "from the future");
}

#[test]
fn a_publish_repeated_with_the_same_idempotency_key_is_delivered_once() {
    let s = start_with(control_config());
    let mut c = ws(s.addr, &old_member("u1"));
    for ch in ["project:1", "project:2"] {
        assert_eq!(subscribe(&mut c, ch, None, None)["type"], "subscribed");
    }
    let body = json!({"type": "task_created", "data": {"id": 1}, "channel": "project:1"});
    let first = ok(publish_once(s.addr, &body, "k-1"));
    assert_eq!(first["duplicate"], false);
    assert_eq!(first["channels"]["project:1"], json!({"offset": 1, "recipients": 1}));
    let again = ok(publish_once(s.addr, &body, "k-1"));
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["channels"]["project:1"], json!({"offset": 1, "recipients": 0, "duplicate": true}));
    assert_eq!(next_json(&mut c)["payload"], json!({"id": 1}));
    quiet(&mut c);
    // The key is per channel; a publish to several channels completes the
    // ones a first try did not reach.
    let both = json!({"type": "t", "data": 2, "channels": ["project:1", "project:2"]});
    let r = ok(publish_once(s.addr, &both, "k-1"));
    assert_eq!(r["duplicate"], false);
    assert_eq!(r["channels"]["project:1"]["duplicate"], true);
    assert_eq!(r["channels"]["project:2"], json!({"offset": 1, "recipients": 1}));
    assert_eq!(next_json(&mut c)["channel"], "project:2");
    quiet(&mut c);
    // To everyone.
    let all = json!({"type": "announcement", "data": "hi"});
    assert_eq!(ok(publish_once(s.addr, &all, "k-2")), json!({"status": "ok", "recipients": 1}));
    assert_eq!(ok(publish_once(s.addr, &all, "k-2")), json!({"status": "ok", "recipients": 0, "duplicate": true}));
    assert_eq!(next_json(&mut c), json!({"type": "announcement", "payload": "hi"}));
    quiet(&mut c);
    // Without a key, nothing changes (not even the answer's shape).
    let r = ok(publish(s.addr, "project:1", json!(3)));
    assert_eq!(r, json!({"status": "ok", "recipients": 1, "channels": {"project:1": {"offset": 2, "recipients": 1}}}));
}

#[test]
fn idempotency_keys_are_forgotten_after_their_ttl() {
    let mut cfg = control_config();
    cfg.idempotency_ttl = Duration::from_secs(1);
    let s = start_with(cfg);
    let body = json!({"type": "t", "data": 1, "channel": "project:1"});
    assert_eq!(ok(publish_once(s.addr, &body, "k"))["duplicate"], false);
    assert_eq!(ok(publish_once(s.addr, &body, "k"))["duplicate"], true);
    std::thread::sleep(Duration::from_millis(1100));
    let r = ok(publish_once(s.addr, &body, "k"));
    assert_eq!((r["duplicate"].as_bool(), r["channels"]["project:1"]["offset"].as_u64()), (Some(false), Some(2)));
}

// ---- cluster mode ------------------------------------------------------------

fn instance_at(url: &str, prefix: &str) -> TestServer {
    let mut cfg = control_config();
    cfg.redis = taskcast::cluster::parse_redis_env(&|k| match k {
        "REDIS_URL" => Some(url.to_string()),
        "REDIS_PREFIX" => Some(prefix.to_string()),
        _ => None,
    })
    .unwrap();
    let s = start_with(cfg);
    wait_ready(s.addr);
    s
}

fn instance(redis: &RedisServer, prefix: &str) -> TestServer {
    instance_at(&redis.url(), prefix)
}

/// Until a publish is accepted (the link reports up shortly after start).
fn wait_ready(addr: SocketAddr) {
    let deadline = Instant::now() + RECONNECT_WAIT;
    loop {
        let r = broadcast(addr, &token("probe"), r#"{"type":"probe","data":null,"channel":"probe:x"}"#);
        if r.status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "cluster link never came up: {} {}", r.status, r.body);
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn cluster_unsubscribe_and_disconnect_reach_every_instance_within_a_round_trip() {
    let redis = RedisServer::start();
    let (a, b, c) = (instance(&redis, "c1"), instance(&redis, "c1"), instance(&redis, "c1"));
    let mut on_b = ws(b.addr, &old_member("u1"));
    let mut on_c = ws(c.addr, &old_member("u1"));
    let mut keeps = ws(c.addr, &old_member("u2"));
    for t in [&mut on_b, &mut on_c, &mut keeps] {
        assert_eq!(subscribe(t, "project:7", None, None)["type"], "subscribed");
    }
    let r = ok(post(a.addr, "/api/unsubscribe", json!({"user": "u1", "channel": "project:7", "reason": "removed"})));
    assert_eq!(r["unsubscribed"], 0, "no subscription on A itself");
    for t in [&mut on_b, &mut on_c] {
        assert_eq!(next_json(t), json!({"type": "unsubscribed", "channel": "project:7", "reason": "removed"}));
    }
    ok(publish(a.addr, "project:7", json!("after")));
    assert_eq!(next_json(&mut keeps)["payload"], "after");
    quiet(&mut on_b);
    quiet(&mut on_c);
    assert!(is_forbidden(&subscribe(&mut on_b, "project:7", None, None)), "not again with the old token");
    let m = subscribe(&mut on_c, "project:7", None, Some(&sub_token("u1", "project:7", now() - 30)));
    assert!(is_forbidden(&m), "{m}");
    next_second();
    let fresh = sub_token("u1", "project:7", now());
    assert_eq!(subscribe(&mut on_c, "project:7", None, Some(&fresh))["type"], "subscribed");

    let r = ok(post(b.addr, "/api/disconnect", json!({"user": "u1", "reconnect": false, "reason": "banned"})));
    assert_eq!(r["disconnected"], 1, "the tab on B");
    assert_eq!(close_of(&mut on_b), (4009, "banned".to_string()));
    assert_eq!(close_of(&mut on_c), (4009, "banned".to_string()));
    quiet(&mut keeps);
}

/// `taskcast_subscriptions` from `/metrics` (served without Redis).
fn subscriptions(addr: SocketAddr) -> u64 {
    let m = get(addr, "/metrics");
    m.body
        .lines()
        .find_map(|l| l.strip_prefix("taskcast_subscriptions "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no taskcast_subscriptions in {}", m.body))
}

#[test]
fn cluster_a_denial_that_comes_while_a_subscribe_waits_for_redis_ends_it() {
    let mut redis = RedisServer::start();
    let b = instance(&redis, "c6");
    let mut joined = ws(b.addr, &old_member("u1"));
    let mut joining = ws(b.addr, &old_member("u1"));
    assert_eq!(subscribe(&mut joined, "project:7", None, None)["type"], "subscribed");
    let before = subscriptions(b.addr);
    // Redis hangs: a subscribe now is granted, then waits for its history read.
    redis.pause();
    joining.send(Message::text(json!({"type": "subscribe", "channel": "project:7"}).to_string())).unwrap();
    let deadline = Instant::now() + WAIT;
    while subscriptions(b.addr) == before {
        assert!(Instant::now() < deadline, "the subscribe never started joining");
        std::thread::sleep(Duration::from_millis(10));
    }
    let addr = b.addr;
    let denial = std::thread::spawn(move || {
        post(addr, "/api/unsubscribe", json!({"user": "u1", "channel": "project:7", "reason": "removed"}))
    });
    // Applied here at once (its answer waits for Redis), to the joining
    // subscription too.
    let ended = json!({"type": "unsubscribed", "channel": "project:7", "reason": "removed"});
    assert_eq!(next_json(&mut joined), ended);
    assert_eq!(next_json(&mut joining), ended, "the join in progress was ended");
    redis.resume();
    assert_eq!(denial.join().unwrap().status, 200);
    // Its read came back meanwhile: nothing joined, nothing delivered.
    ok(publish(b.addr, "project:7", json!("after")));
    quiet(&mut joining);
    quiet(&mut joined);
    assert!(is_forbidden(&subscribe(&mut joining, "project:7", None, None)));
    redis.stop();
}

#[test]
fn cluster_revocation_reaches_every_instance() {
    let redis = RedisServer::start();
    let (a, b) = (instance(&redis, "c2"), instance(&redis, "c2"));
    let old = old_member("u1");
    let mut on_b = ws(b.addr, &old);
    wait_clients(b.addr, 1);
    let r = ok(post(a.addr, "/api/revoke", json!({"user": "u1"})));
    assert_eq!(r["disconnected"], 0);
    assert_eq!(close_code(&mut on_b), 4011);
    for addr in [a.addr, b.addr] {
        assert_eq!(ws_try(addr, &format!("/ws?token={old}"), &[]).unwrap_err().0, 401);
    }
    // A new instance starting later loads it.
    let late = instance(&redis, "c2");
    let deadline = Instant::now() + WAIT;
    while ws_try(late.addr, &format!("/ws?token={old}"), &[]).is_ok() {
        assert!(Instant::now() < deadline, "the late instance never loaded the revocation");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TCP proxy in front of Redis that a test can cut (every connection
/// closed, new ones dropped) and restore: one instance cut off from Redis
/// while the others are not.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, o) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if c.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else { continue };
                o.lock().unwrap().extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy { addr, cut, open }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

#[test]
fn actions_taken_while_an_instance_is_cut_off_from_redis_hold_there_once_it_is_back() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(format!("127.0.0.1:{}", redis.port).parse().unwrap());
    let a = instance(&redis, "c3");
    let c = instance_at(&format!("redis://{}/0", proxy.addr), "c3");
    let old = old_member("u1");
    let mut revoked = ws(c.addr, &old);
    let mut removed = ws(c.addr, &old_member("u2"));
    assert_eq!(subscribe(&mut removed, "project:7", None, None)["type"], "subscribed");
    wait_clients(c.addr, 2);

    proxy.cut();
    wait_status(c.addr, "/ready", 503);
    ok(post(a.addr, "/api/revoke", json!({"user": "u1"})));
    ok(post(a.addr, "/api/unsubscribe", json!({"user": "u2", "channel": "project:7", "reason": "removed"})));
    // C did not hear of it: its clients are untouched for now.
    quiet(&mut revoked);
    quiet(&mut removed);

    proxy.restore();
    let closed = watch_close(revoked, RECONNECT_WAIT);
    let deadline = Instant::now() + RECONNECT_WAIT;
    let m = loop {
        assert!(Instant::now() < deadline, "the denial never reached C");
        match removed.read() {
            Ok(Message::Text(t)) => break serde_json::from_str::<Value>(&t).unwrap(),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(m, json!({"type": "unsubscribed", "channel": "project:7", "reason": "removed"}));
    assert_eq!(closed.join().unwrap().map(|(_, code)| code), Some(4011), "the revoked tab on C was closed");
    assert_eq!(ws_try(c.addr, &format!("/ws?token={old}"), &[]).unwrap_err().0, 401);
    assert!(is_forbidden(&subscribe(&mut removed, "project:7", None, None)));
}

#[test]
fn cluster_an_idempotent_publish_retried_on_another_instance_is_delivered_once() {
    let redis = RedisServer::start();
    let (a, b, c) = (instance(&redis, "c4"), instance(&redis, "c4"), instance(&redis, "c4"));
    let mut sub = ws(c.addr, &old_member("watcher"));
    assert_eq!(subscribe(&mut sub, "project:1", None, None)["type"], "subscribed");
    let body = json!({"type": "task_created", "data": {"id": 7}, "channel": "project:1"});
    let first = ok(publish_once(a.addr, &body, "retry-1"));
    let offset = first["channels"]["project:1"]["offset"].as_u64().unwrap();
    assert_eq!(first["duplicate"], false);
    let retry = ok(publish_once(b.addr, &body, "retry-1"));
    assert_eq!(retry["duplicate"], true);
    assert_eq!(retry["channels"]["project:1"]["offset"].as_u64(), Some(offset), "the first answer's offset");
    assert_eq!(next_json(&mut sub)["offset"], offset);
    quiet(&mut sub);

    // The same retry at the same moment on two instances: one publish.
    let racers: Vec<_> = [a.addr, b.addr, c.addr]
        .into_iter()
        .map(|addr| {
            let body = json!({"type": "t", "data": "race", "channel": "project:1"});
            std::thread::spawn(move || ok(publish_once(addr, &body, "race-1")))
        })
        .collect();
    let answers: Vec<Value> = racers.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(answers.iter().filter(|r| r["duplicate"] == false).count(), 1, "{answers:?}");
    let offsets: Vec<_> = answers.iter().map(|r| r["channels"]["project:1"]["offset"].clone()).collect();
    assert!(offsets.windows(2).all(|w| w[0] == w[1]), "one offset for all: {offsets:?}");
    assert_eq!(next_json(&mut sub)["payload"], "race");
    quiet(&mut sub);

    // To everyone, retried elsewhere.
    let all = json!({"type": "announcement", "data": 1});
    assert_eq!(ok(publish_once(a.addr, &all, "all-1"))["duplicate"], Value::Null);
    assert_eq!(ok(publish_once(b.addr, &all, "all-1"))["duplicate"], true);
    assert_eq!(next_json(&mut sub), json!({"type": "announcement", "payload": 1}));
    quiet(&mut sub);
}

#[test]
fn cluster_a_page_position_read_on_one_instance_recovers_on_another() {
    let redis = RedisServer::start();
    let (a, b, c) = (instance(&redis, "c5"), instance(&redis, "c5"), instance(&redis, "c5"));
    let p = ok(read(a.addr, "/api/channels/project:5"));
    assert_eq!((p["offset"].as_u64(), p["subscribers"].as_u64()), (Some(0), Some(0)));
    let epoch = p["epoch"].as_str().unwrap().to_string();
    for i in 1..=3 {
        ok(publish(b.addr, "project:5", json!(i)));
    }
    let mut viewer = ws(c.addr, &old_member("viewer"));
    let s = subscribe(&mut viewer, "project:5", Some((&epoch, 0)), None);
    assert_eq!(
        (s["recovered"].as_bool(), s["epoch"].as_str(), s["offset"].as_u64()),
        (Some(true), Some(epoch.as_str()), Some(3))
    );
    let got: Vec<_> = (0..3).map(|_| next_json(&mut viewer)["payload"].clone()).collect();
    assert_eq!(got, [json!(1), json!(2), json!(3)]);
    quiet(&mut viewer);
    let p = ok(read(c.addr, "/api/channels/project%3A5"));
    assert_eq!((p["offset"].as_u64(), p["subscribers"].as_u64()), (Some(3), Some(1)));
    let h = ok(read(b.addr, &format!("/api/history?channel=project:5&since={epoch}:1")));
    assert_eq!(h["complete"], true);
    assert_eq!(
        h["messages"],
        json!([{"offset": 2, "type": "task_updated", "payload": 2}, {"offset": 3, "type": "task_updated", "payload": 3}])
    );
    let h = ok(read(b.addr, "/api/history?channel=project:5&since=gone:1&limit=1"));
    assert_eq!((h["complete"].as_bool(), h["messages"].as_array().map(Vec::len)), (Some(false), Some(1)));
}

// ---- logs --------------------------------------------------------------------

#[test]
fn no_key_or_token_appears_in_any_log() {
    let redis = RedisServer::start();
    let wrong_key = "wrong-control-key-that-must-not-be-logged";
    let binaries: Vec<Binary> = (0..2)
        .map(|i| {
            let mut cmd = taskcast_cmd();
            cmd.envs([("JWT_SECRET", SECRET), ("CONTROL_API_KEY", KEY), ("RUST_LOG", "debug"), ("DRAIN_SECS", "0")]);
            if i == 1 {
                cmd.env("REDIS_URL", redis.url()).env("REDIS_PREFIX", "logs");
            }
            start_binary(&mut cmd)
        })
        .collect();
    let mut secrets = vec![KEY.to_string(), wrong_key.to_string()];
    for b in &binaries {
        wait_ready(b.addr);
        let old = old_member("logged-user");
        secrets.push(old.clone());
        let mut tab = ws(b.addr, &old);
        let user_jwt = token("someone");
        secrets.push(user_jwt.clone());
        assert_eq!(call(b.addr, "POST", "/api/revoke", Some(&format!("Bearer {wrong_key}")), "", "{}").status, 401);
        assert_eq!(call(b.addr, "POST", "/api/revoke", Some(&format!("Bearer {user_jwt}")), "", "{}").status, 403);
        let r = call(b.addr, "POST", &format!("/api/revoke?key={KEY}"), None, "", r#"{"user":"x"}"#);
        assert_eq!(r.status, 401);
        ok(post(b.addr, "/api/unsubscribe", json!({"user": "logged-user", "channel": "project:*"})));
        ok(post(b.addr, "/api/revoke", json!({"user": "logged-user"})));
        assert_eq!(close_code(&mut tab), 4011);
        assert_eq!(ws_try(b.addr, &format!("/ws?token={old}"), &[]).unwrap_err().0, 401);
        let sub = sub_token("logged-user", "project:1", now() - 5);
        secrets.push(sub.clone());
        next_second();
        let mut fresh = ws(b.addr, &member_at("logged-user", now()));
        assert!(is_forbidden(&subscribe(&mut fresh, "project:1", None, Some(&sub))));
        fresh.send(Message::text(json!({"type": "auth", "token": old}).to_string())).unwrap();
        assert_eq!(close_code(&mut fresh), 4003);
        ok(read(b.addr, "/api/history?channel=project:1"));
        let body = json!({"type": "t", "data": 1, "channel": "project:1"});
        ok(publish_once(b.addr, &body, "idem-key-1"));
    }
    for b in &binaries {
        b.wait_log("server API: user \"logged-user\" revoked");
        let log = b.log();
        for s in &secrets {
            assert!(!log.contains(s.as_str()), "a secret was logged:\n{log}");
        }
        // The header names are fine, the values never.
        assert!(log.contains("/api/revoke -> 401"), "{log}");
    }
}
