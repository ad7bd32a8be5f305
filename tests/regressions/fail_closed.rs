//! Issue 18, "fail closed": a mistake in a request never widens who
//! receives a message, never locks out valid users, and the HTTP edges
//! behave as RFC 9110/9112 say. One section per item of the issue; each
//! test failed against the code before its fix.

use std::net::SocketAddr;

use serde_json::{Value, json};
use tungstenite::Message;

use crate::common::*;

fn send(c: &mut Ws, v: Value) {
    c.send(Message::text(v.to_string())).unwrap();
}

/// A subscription token: one user, one channel.
fn sub_token(sub: &str, channel: &str, exp: u64) -> String {
    sign(&json!({"sub": sub, "channel": channel, "exp": exp}))
}

/// Proves each of `clients` received nothing before now: a broadcast to
/// everyone sent now must be the very next message each reads.
fn assert_nothing_before_sentinel(addr: SocketAddr, clients: &mut [&mut Ws]) {
    let r = broadcast(addr, &token("publisher"), r#"{"type":"sentinel","data":null}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    for c in clients {
        assert_eq!(next_json(c), json!({"type": "sentinel", "payload": null}));
    }
}

fn binary_with(env: &[(&str, &str)]) -> Binary {
    let mut cmd = taskcast_cmd();
    cmd.env("JWT_SECRET", SECRET);
    for (k, v) in env {
        cmd.env(k, v);
    }
    start_binary(&mut cmd)
}

// ---- 1. a null or misspelt target is never "everyone" ----------------------

/// `"channel": null` (a Server Action's `task.projectId ?? null`) was read
/// as "no target" and reached every connected client; so did a typo such
/// as `"chanel"`, an unknown key serde ignored. Now both get 400 naming the
/// key, and only a body with no target key at all goes to everyone.
#[test]
fn null_or_unknown_target_keys_are_400_and_reach_no_one() {
    let s = start();
    let mut alice = ws(s.addr, &token("alice"));
    let mut bob = ws(s.addr, &token("bob"));
    wait_clients(s.addr, 2);
    let t = token("publisher");
    for (body, needle) in [
        (r#"{"type":"t","data":1,"channel":null}"#, r#""channel" is null"#),
        (r#"{"type":"t","data":1,"channels":null}"#, r#""channels" is null"#),
        (r#"{"type":"t","data":1,"users":null}"#, r#""users" is null"#),
        (r#"{"type":"t","data":1,"chanel":"project:7"}"#, r#"unknown key "chanel""#),
        (r#"{"type":"t","data":1,"user":["bob"]}"#, r#"unknown key "user""#),
        (r#"{"type":"t","data":1,"users":["bob"],"users":null}"#, r#""users" is given twice"#),
    ] {
        let r = broadcast(s.addr, &t, body);
        assert_eq!(r.status, 400, "{body} was accepted: {}", r.body);
        assert_eq!(r.json()["error"], "bad_request");
        let message = r.json()["message"].as_str().unwrap().to_string();
        assert!(message.contains(needle), "{body}: {message}");
    }
    assert_nothing_before_sentinel(s.addr, &mut [&mut alice, &mut bob]);
    // No target key at all: everyone, as before.
    let r = broadcast(s.addr, &t, r#"{"type":"all","data":2}"#);
    assert_eq!(r.json(), json!({"status": "ok", "recipients": 2}));
    assert_eq!(next_json(&mut alice)["type"], "all");
}

// ---- 2. another user's channel stays closed --------------------------------

/// A subscription token `{"sub":"alice","channel":"user:bob"}` let alice
/// join bob's channel and read his notifications. No grant opens another
/// user's channel: not a subscription token, not a claim (`user:*`,
/// `user:bob`).
#[test]
fn no_grant_opens_another_users_channel() {
    let s = start();
    let claims = sign(&json!({"sub": "alice", "exp": now() + 3600, "channels": ["user:*", "user:bob"]}));
    let mut alice = ws(s.addr, &claims);
    let mut bob = ws(s.addr, &token("bob"));
    wait_clients(s.addr, 2);
    for msg in [
        json!({"type": "subscribe", "channel": "user:bob", "token": sub_token("alice", "user:bob", now() + 600)}),
        json!({"type": "subscribe", "channel": "user:bob"}),
    ] {
        send(&mut alice, msg.clone());
        let e = next_json(&mut alice);
        assert_eq!(e["type"], "error", "{msg}: {e}");
        assert_eq!(e["payload"]["code"], "forbidden", "{msg}: {e}");
    }
    let r = broadcast(s.addr, &token("publisher"), r#"{"type":"note","data":"for bob","users":["bob"]}"#);
    assert_eq!(r.json()["recipients"], 1, "{}", r.body);
    assert_eq!(next_json(&mut bob)["payload"], "for bob");
    assert_nothing_before_sentinel(s.addr, &mut [&mut alice, &mut bob]);
}

/// A join that only a subscription token granted lasted until the next
/// token refresh (or forever, without one). Now it ends when that token
/// expires, with `unsubscribed` and a reason — unless the client renews it
/// by subscribing again with a fresh token.
#[test]
fn a_subscription_token_grant_ends_when_the_token_expires_unless_renewed() {
    let mut cfg = config();
    cfg.jwt_leeway_secs = 0;
    let s = start_with(cfg);
    let mut c = ws(s.addr, &token("u"));
    let mut renewing = ws(s.addr, &token("v"));
    wait_clients(s.addr, 2);
    let soon = now() + 2;
    send(&mut c, json!({"type": "subscribe", "channel": "project:1", "token": sub_token("u", "project:1", soon)}));
    assert_eq!(next_json(&mut c)["type"], "subscribed");
    send(
        &mut renewing,
        json!({"type": "subscribe", "channel": "project:1", "token": sub_token("v", "project:1", soon)}),
    );
    assert_eq!(next_json(&mut renewing)["type"], "subscribed");
    // Renewal: the same subscribe with a fresh token, before the first expires.
    send(
        &mut renewing,
        json!({"type": "subscribe", "channel": "project:1", "token": sub_token("v", "project:1", now() + 3600)}),
    );
    assert_eq!(next_json(&mut renewing)["type"], "subscribed");
    // Within WAIT of the expiry (whole seconds, so at most ~3 s from now).
    assert_eq!(
        next_json(&mut c),
        json!({"type": "unsubscribed", "channel": "project:1", "reason": "subscription token expired"})
    );
    let r = broadcast(s.addr, &token("publisher"), r#"{"type":"t","data":"after","channel":"project:1"}"#);
    assert_eq!(r.json()["recipients"], 1, "only the renewed subscription: {}", r.body);
    assert_eq!(next_json(&mut renewing)["payload"], "after");
    assert_nothing_before_sentinel(s.addr, &mut [&mut c, &mut renewing]);
}

// ---- 3. per-address limits never lock out others --------------------------

/// A forged upgrade "from" `xff` (loopback is a trusted proxy, so the
/// X-Forwarded-For address is the client's); returns the status.
fn upgrade_from(addr: SocketAddr, xff: &str, token: &str) -> u16 {
    request(
        addr,
        &format!(
            "GET /ws?token={token} HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {xff}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ),
    )
    .status
}

/// Once MAX_TRACKED_ADDRESSES (10,000) distinct addresses had failed, every
/// new address counted in one shared window, consulted before any
/// verification: a valid token from an address that never failed got 429.
/// Now only an address's own failures count.
#[test]
fn failures_from_many_addresses_never_lock_out_a_fresh_one() {
    let mut cfg = config();
    cfg.auth_failures_per_min = 1;
    let s = start_with(cfg);
    let n = taskcast::limits::MAX_TRACKED_ADDRESSES as u32 + 50;
    for i in 0..n {
        let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
        assert_eq!(upgrade_from(s.addr, &ip.to_string(), "forged"), 401, "{ip}");
    }
    // A fresh address with a valid token is verified and accepted...
    assert_eq!(upgrade_from(s.addr, "192.0.2.1", &token("fresh")), 101);
    // ...while an address that failed is still refused before verification.
    let last = std::net::Ipv4Addr::from(0x0a00_0000 + n - 1);
    assert_eq!(upgrade_from(s.addr, &last.to_string(), &token("again")), 429);
}

/// Per-address limits counted single IPv6 addresses, so one host with a
/// /64 could open any number of connections and try any number of tokens.
/// Now they count per /64.
#[test]
fn per_address_limits_count_an_ipv6_64_as_one_address() {
    let mut cfg = config();
    cfg.auth_failures_per_min = 2;
    cfg.max_connections_per_ip = 2;
    let s = start_with(cfg);
    let t = token("v6");
    let open = |xff: &str| ws_try(s.addr, &format!("/ws?token={t}"), &[("X-Forwarded-For", xff)]).map_err(|e| e.0);
    let _a = open("2001:db8:1:2::1").expect("first in the /64");
    let _b = open("2001:db8:1:2::2").expect("second in the /64");
    assert_eq!(open("2001:db8:1:2::3").err(), Some(429), "third in the same /64");
    let _c = open("2001:db8:1:3::1").expect("another /64");
    for host in ["2001:db8:5:5::1", "2001:db8:5:5::2"] {
        assert_eq!(upgrade_from(s.addr, host, "forged"), 401);
    }
    assert_eq!(upgrade_from(s.addr, "2001:db8:5:5::3", "forged"), 429, "the /64 failed twice");
    assert_eq!(upgrade_from(s.addr, "2001:db8:5:6::1", "forged"), 401, "another /64 has its own count");
}

/// A forged subscription token cost a signature check and counted nowhere:
/// a connected client could try them without limit. Now each counts as a
/// failed authentication of its address, and past AUTH_FAILURES_PER_MIN
/// they are refused unchecked (and so are that address's upgrades).
#[test]
fn failed_subscription_tokens_count_as_auth_failures_of_the_address() {
    let mut cfg = config();
    cfg.auth_failures_per_min = 2;
    let s = start_with(cfg);
    let t = token("u");
    let mut c = ws_try(s.addr, &format!("/ws?token={t}"), &[("X-Forwarded-For", "198.51.100.7")]).unwrap();
    let forged = json!({"type": "subscribe", "channel": "project:1", "token": "not.a.jwt"});
    for code in ["invalid_token", "invalid_token", "rate_limited"] {
        send(&mut c, forged.clone());
        let e = next_json(&mut c);
        assert_eq!(e["payload"]["code"], code, "{e}");
    }
    assert_eq!(upgrade_from(s.addr, "198.51.100.7", &t), 429);
    assert_eq!(upgrade_from(s.addr, "198.51.100.8", &t), 101, "another address");
}

// ---- 4. a Redis password is never logged -----------------------------------

/// `REDIS_URL=redis+unix:///…?pass=…` (the redis crate's way to give a
/// password over a unix socket) was logged in clear in the start-up INFO
/// line: only a password in the userinfo was redacted. Here a real
/// redis-server on a unix socket requires the password; taskcast reaches it
/// (`/ready` says 200) and logs none of it, at debug level.
#[test]
fn a_redis_password_in_the_query_is_never_logged() {
    let password = "query-password-0123456789";
    let socket = std::env::temp_dir().join(format!("taskcast-fc-{}.sock", std::process::id()));
    let socket = socket.to_str().unwrap();
    let _redis = crate::common::redis_server::RedisServer::start_with(&[
        "--unixsocket",
        socket,
        "--unixsocketperm",
        "700",
        "--requirepass",
        password,
    ]);
    let url = format!("redis+unix://{socket}?db=0&pass={password}");
    let srv = binary_with(&[("REDIS_URL", &url), ("RUST_LOG", "debug")]);
    wait_status(srv.addr, "/ready", 200);
    srv.wait_log("cluster mode: Redis at");
    let log = srv.log();
    assert!(!log.contains(password), "the password was logged: {log}");
    assert!(log.contains(&format!("redis+unix://{socket}?db=0&pass=***")), "{log}");
}
