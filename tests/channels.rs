//! Channels over real sockets with real tokens: who receives what, who may
//! join, replay after a reconnect, and what happens when it cannot replay.

mod common;

use common::*;
use serde_json::{Value, json};
use tungstenite::Message;

/// A connection token for `sub` with a channels claim.
fn token_with(sub: &str, channels: &[&str]) -> String {
    sign(&json!({"sub": sub, "exp": now() + 3600, "channels": channels}))
}

/// A subscription token: one user, one channel.
fn sub_token(sub: &str, channel: &str, exp: u64) -> String {
    sign(&json!({"sub": sub, "channel": channel, "exp": exp}))
}

fn send(c: &mut Ws, v: Value) {
    c.send(Message::text(v.to_string())).unwrap();
}

/// Sends a subscribe and returns the answer (subscribed or error).
fn subscribe(c: &mut Ws, channel: &str, since: Option<(&str, u64)>) -> Value {
    let mut msg = json!({"type": "subscribe", "channel": channel});
    if let Some((epoch, offset)) = since {
        msg["since"] = json!({"epoch": epoch, "offset": offset});
    }
    send(c, msg);
    next_json(c)
}

fn publish(addr: std::net::SocketAddr, target: Value, data: Value) -> Value {
    let mut body = json!({"type": "task_updated", "data": data});
    for (k, v) in target.as_object().unwrap() {
        body[k] = v.clone();
    }
    let r = broadcast(addr, &token("publisher"), &body.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// Proves `c` received nothing before now: a global broadcast sent now
/// must be the very next message it reads.
fn assert_nothing_before_sentinel(addr: std::net::SocketAddr, c: &mut Ws) {
    let r = broadcast(addr, &token("publisher"), r#"{"type":"sentinel","data":null}"#);
    assert_eq!(r.status, 200);
    assert_eq!(next_json(c), json!({"type": "sentinel", "payload": null}));
}

#[test]
fn user_channels_reach_only_that_user() {
    let s = start();
    let mut a1 = ws(s.addr, &token("a"));
    let mut a2 = ws(s.addr, &token("a"));
    let mut b = ws(s.addr, &token("b"));
    wait_clients(s.addr, 3);
    let answer = publish(s.addr, json!({"users": ["a"]}), json!({"id": 1}));
    assert_eq!(answer["recipients"], 2);
    assert_eq!(answer["channels"]["user:a"], json!({"offset": 1, "recipients": 2}));
    for c in [&mut a1, &mut a2] {
        assert_eq!(
            next_json(c),
            json!({"type": "task_updated", "payload": {"id": 1}, "channel": "user:a", "offset": 1})
        );
    }
    assert_nothing_before_sentinel(s.addr, &mut b);
    // B may not join A's channel.
    let e = subscribe(&mut b, "user:a", None);
    assert_eq!(e["type"], "error");
    assert_eq!(e["payload"]["code"], "forbidden");
    assert_eq!(e["payload"]["channel"], "user:a");
    let r = publish(s.addr, json!({"channel": "user:a"}), json!(2));
    assert_eq!(r["recipients"], 2);
    assert_nothing_before_sentinel(s.addr, &mut b);
}

#[test]
fn project_messages_reach_exactly_its_subscribers() {
    let s = start();
    let mut member = ws(s.addr, &token_with("m", &["project:42"]));
    let mut wildcard = ws(s.addr, &token_with("w", &["project:*"]));
    let mut outsider = ws(s.addr, &token_with("o", &["project:43"]));
    let mut idle = ws(s.addr, &token_with("i", &["project:42"])); // granted, never subscribes
    for c in [&mut member, &mut wildcard] {
        let ok = subscribe(c, "project:42", None);
        assert_eq!(ok["type"], "subscribed", "{ok}");
        assert_eq!((ok["offset"].as_u64(), ok["recovered"].as_bool()), (Some(0), Some(false)));
        assert!(ok["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let e = subscribe(&mut outsider, "project:42", None);
    assert_eq!(e["payload"]["code"], "forbidden");
    // The refused client keeps working.
    send(&mut outsider, json!({"type": "ping"}));
    assert_eq!(next_json(&mut outsider), json!({"type": "pong"}));

    let r = publish(s.addr, json!({"channel": "project:42"}), json!({"title": "x"}));
    assert_eq!(r, json!({"status": "ok", "recipients": 2, "channels": {"project:42": {"offset": 1, "recipients": 2}}}));
    for c in [&mut member, &mut wildcard] {
        let m = next_json(c);
        assert_eq!((m["channel"].as_str(), m["offset"].as_u64()), (Some("project:42"), Some(1)));
    }
    assert_nothing_before_sentinel(s.addr, &mut outsider);
    for c in [&mut member, &mut wildcard, &mut idle] {
        assert_eq!(next_json(c)["type"], "sentinel", "the sentinel reaches everyone");
    }
    assert_nothing_before_sentinel(s.addr, &mut idle);
    for c in [&mut member, &mut wildcard, &mut outsider] {
        assert_eq!(next_json(c)["type"], "sentinel");
    }

    // One copy per channel for a client in several of the targets.
    assert_eq!(subscribe(&mut wildcard, "project:7", None)["type"], "subscribed");
    let r = publish(s.addr, json!({"channels": ["project:42", "project:7"]}), json!(3));
    assert_eq!(r["recipients"], 3);
    assert_eq!(r["channels"]["project:7"], json!({"offset": 1, "recipients": 1}));
    let got: Vec<Value> = (0..2).map(|_| next_json(&mut wildcard)).collect();
    assert_eq!(got[0]["channel"], "project:42");
    assert_eq!(got[1]["channel"], "project:7");
    assert_eq!(next_json(&mut member)["offset"], 2);

    // Unsubscribed: no more messages.
    send(&mut member, json!({"type": "unsubscribe", "channel": "project:42"}));
    assert_eq!(next_json(&mut member), json!({"type": "unsubscribed", "channel": "project:42"}));
    assert_eq!(publish(s.addr, json!({"channel": "project:42"}), json!(4))["recipients"], 1);
    assert_nothing_before_sentinel(s.addr, &mut member);
}

#[test]
fn refused_subscribes_get_their_error_and_the_connection_works() {
    let mut cfg = config();
    cfg.max_subscriptions = 3; // the user channel counts
    let s = start_with(cfg);
    let mut c = ws(s.addr, &token_with("u", &["team:*"]));
    let cases: Vec<(Value, &str)> = vec![
        (json!({"type": "subscribe", "channel": "no-namespace"}), "invalid_channel"),
        (json!({"type": "subscribe", "channel": "a:b c"}), "invalid_channel"),
        (json!({"type": "subscribe", "channel": format!("p:{}", "x".repeat(200))}), "invalid_channel"),
        (json!({"type": "subscribe"}), "invalid_channel"),
        (json!({"type": "subscribe", "channel": "project:1"}), "forbidden"),
        (json!({"type": "subscribe", "channel": "user:someone-else"}), "forbidden"),
        (json!({"type": "subscribe", "channel": "team:a", "since": {"epoch": 5}}), "bad_request"),
        (
            json!({"type": "subscribe", "channel": "project:1", "token": sub_token("u", "project:1", now() - 3600)}),
            "invalid_token",
        ),
        (
            json!({"type": "subscribe", "channel": "project:1", "token": sub_token("other", "project:1", now() + 60)}),
            "forbidden",
        ),
        (
            json!({"type": "subscribe", "channel": "project:1", "token": sub_token("u", "project:2", now() + 60)}),
            "forbidden",
        ),
        (json!({"type": "subscribe", "channel": "project:1", "token": "not.a.jwt"}), "invalid_token"),
    ];
    for (msg, code) in cases {
        send(&mut c, msg.clone());
        let e = next_json(&mut c);
        assert_eq!(e["type"], "error", "{msg}: {e}");
        assert_eq!(e["payload"]["code"], code, "{msg}: {e}");
    }
    // A valid subscription token works; the limit then stops the third.
    let ok = subscribe(&mut c, "team:a", None);
    assert_eq!(ok["type"], "subscribed");
    send(
        &mut c,
        json!({"type": "subscribe", "channel": "project:1", "token": sub_token("u", "project:1", now() + 60)}),
    );
    assert_eq!(next_json(&mut c)["type"], "subscribed");
    let e = subscribe(&mut c, "team:b", None);
    assert_eq!(e["payload"]["code"], "too_many_subscriptions");
    // Subscribing again to a channel it is in does not count twice.
    assert_eq!(subscribe(&mut c, "team:a", None)["type"], "subscribed");
    send(&mut c, json!({"type": "ping"}));
    assert_eq!(next_json(&mut c), json!({"type": "pong"}));
    assert_eq!(publish(s.addr, json!({"channel": "project:1"}), json!(1))["recipients"], 1);
    assert_eq!(next_json(&mut c)["channel"], "project:1");
}

/// Reads channel messages until `n` have arrived; returns their offsets.
fn offsets(c: &mut Ws, n: usize) -> Vec<u64> {
    (0..n).map(|_| next_json(c)["offset"].as_u64().unwrap()).collect()
}

#[test]
fn reconnect_with_since_replays_exactly_the_gap_then_live() {
    let s = start();
    let t = token_with("u", &["project:1"]);
    let mut c = ws(s.addr, &t);
    let ok = subscribe(&mut c, "project:1", None);
    let epoch = ok["epoch"].as_str().unwrap().to_string();
    for i in 0..2 {
        publish(s.addr, json!({"channel": "project:1"}), json!(i));
    }
    assert_eq!(offsets(&mut c, 2), [1, 2]);
    drop(c);
    wait_clients(s.addr, 0);
    for i in 2..5 {
        publish(s.addr, json!({"channel": "project:1"}), json!(i));
    }
    let mut c = ws(s.addr, &t);
    let ok = subscribe(&mut c, "project:1", Some((&epoch, 2)));
    assert_eq!(
        ok,
        json!({"type": "subscribed", "channel": "project:1", "epoch": epoch, "offset": 5, "recovered": true})
    );
    let replayed: Vec<Value> = (0..3).map(|_| next_json(&mut c)).collect();
    assert_eq!(replayed.iter().map(|m| m["offset"].as_u64().unwrap()).collect::<Vec<_>>(), [3, 4, 5]);
    assert_eq!(replayed.iter().map(|m| m["payload"].clone()).collect::<Vec<_>>(), [json!(2), json!(3), json!(4)]);
    publish(s.addr, json!({"channel": "project:1"}), json!("live"));
    let live = next_json(&mut c);
    assert_eq!((live["offset"].as_u64(), live["payload"].as_str()), (Some(6), Some("live")));
    // Already up to date: recovered, nothing replayed.
    let ok = subscribe(&mut c, "project:1", Some((&epoch, 6)));
    assert_eq!(ok["recovered"], true);
    assert_nothing_before_sentinel(s.addr, &mut c);
    // A bogus epoch or a future offset: nothing replayed, recovered false.
    for since in [("nope", 3), (epoch.as_str(), 99)] {
        let ok = subscribe(&mut c, "project:1", Some(since));
        assert_eq!((ok["recovered"].as_bool(), ok["offset"].as_u64()), (Some(false), Some(6)), "{since:?}");
    }
    assert_nothing_before_sentinel(s.addr, &mut c);
}

#[test]
fn the_user_channel_recovers_too() {
    let s = start();
    let mut c = ws(s.addr, &token("u"));
    let ok = subscribe(&mut c, "user:u", None);
    let epoch = ok["epoch"].as_str().unwrap().to_string();
    drop(c);
    wait_clients(s.addr, 0);
    publish(s.addr, json!({"users": ["u"]}), json!("missed"));
    let mut c = ws(s.addr, &token("u"));
    assert_eq!(subscribe(&mut c, "user:u", Some((&epoch, 0)))["recovered"], true);
    assert_eq!(next_json(&mut c)["payload"], "missed");
}

#[test]
fn publishes_racing_a_resubscribe_leave_no_gap_or_duplicate() {
    let s = start();
    let t = token_with("u", &["project:1"]);
    let mut c = ws(s.addr, &t);
    let epoch = subscribe(&mut c, "project:1", None)["epoch"].as_str().unwrap().to_string();
    let addr = s.addr;
    let total = 300u64;
    let publisher = std::thread::spawn(move || {
        let mut h = Http::connect(addr);
        let t = token("publisher");
        for i in 0..total {
            h.send(broadcast_request(&t, &format!(r#"{{"type":"t","data":{i},"channel":"project:1"}}"#)).as_bytes());
            assert_eq!(h.response().status, 200);
        }
    });
    // Reconnect three times mid-stream, each time from the last offset seen.
    let mut seen: Vec<u64> = Vec::new();
    for round in 0..4 {
        let want = if round < 3 { (round + 1) * 40 } else { total as usize };
        while seen.len() < want {
            let m = next_json(&mut c);
            if m["type"] == "subscribed" {
                assert_eq!(m["recovered"], true, "{m}");
                continue;
            }
            seen.push(m["offset"].as_u64().unwrap());
        }
        if round < 3 {
            drop(c);
            c = ws(s.addr, &t);
            let last = *seen.last().unwrap();
            send(
                &mut c,
                json!({"type": "subscribe", "channel": "project:1", "since": {"epoch": epoch, "offset": last}}),
            );
        }
    }
    publisher.join().unwrap();
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
}

#[test]
fn history_overflow_gives_recovered_false_and_no_replay() {
    let mut cfg = config();
    cfg.history_size = 3;
    let s = start_with(cfg);
    let t = token_with("u", &["project:1"]);
    let mut c = ws(s.addr, &t);
    let epoch = subscribe(&mut c, "project:1", None)["epoch"].as_str().unwrap().to_string();
    drop(c);
    wait_clients(s.addr, 0);
    for i in 0..5 {
        publish(s.addr, json!({"channel": "project:1"}), json!(i));
    }
    let mut c = ws(s.addr, &t);
    let ok = subscribe(&mut c, "project:1", Some((&epoch, 0)));
    assert_eq!((ok["recovered"].as_bool(), ok["offset"].as_u64()), (Some(false), Some(5)));
    publish(s.addr, json!({"channel": "project:1"}), json!("live"));
    assert_eq!(next_json(&mut c)["offset"], 6, "nothing replayed before the live message");
    // Within what history still holds (3..=5): recovered.
    let ok = subscribe(&mut c, "project:1", Some((&epoch, 3)));
    assert_eq!(ok["recovered"], true);
    assert_eq!(offsets(&mut c, 3), [4, 5, 6]);
}

#[test]
fn a_restart_changes_the_epoch() {
    let s = start();
    let t = token_with("u", &["project:1"]);
    let mut c = ws(s.addr, &t);
    let epoch = subscribe(&mut c, "project:1", None)["epoch"].as_str().unwrap().to_string();
    publish(s.addr, json!({"channel": "project:1"}), json!(1));
    assert_eq!(offsets(&mut c, 1), [1]);
    drop(c);
    s.stop().unwrap();
    let s = start();
    publish(s.addr, json!({"channel": "project:1"}), json!(2));
    let mut c = ws(s.addr, &t);
    let ok = subscribe(&mut c, "project:1", Some((&epoch, 1)));
    assert_ne!(ok["epoch"], epoch);
    assert_eq!(ok["recovered"], false);
    assert_nothing_before_sentinel(s.addr, &mut c);
}

#[test]
fn a_refresh_that_drops_a_grant_leaves_that_channel() {
    let s = start();
    let mut c = ws(s.addr, &token_with("u", &["project:1", "project:2"]));
    for ch in ["project:1", "project:2"] {
        assert_eq!(subscribe(&mut c, ch, None)["type"], "subscribed");
    }
    send(&mut c, json!({"type": "auth", "token": token_with("u", &["project:2"])}));
    assert_eq!(next_json(&mut c), json!({"type": "auth_ok"}));
    assert_eq!(next_json(&mut c), json!({"type": "unsubscribed", "channel": "project:1", "reason": "grant revoked"}));
    assert_eq!(publish(s.addr, json!({"channel": "project:1"}), json!(1))["recipients"], 0);
    assert_eq!(publish(s.addr, json!({"channel": "project:2"}), json!(2))["recipients"], 1);
    assert_eq!(next_json(&mut c)["channel"], "project:2");
    // And it can no longer join it.
    assert_eq!(subscribe(&mut c, "project:1", None)["payload"]["code"], "forbidden");
}

#[test]
fn bad_publish_bodies_get_400_and_global_broadcasts_are_unchanged() {
    let s = start();
    let mut c = ws(s.addr, &token("u"));
    let t = token("publisher");
    for body in [
        r#"{"type":"t","data":1,"channel":"bad name"}"#,
        r#"{"type":"t","data":1,"channels":[]}"#,
        r#"{"type":"t","data":1,"channel":"a:1","channels":["b:1"]}"#,
        r#"{"type":"t","data":1,"users":["a b"]}"#,
    ] {
        let r = broadcast(s.addr, &t, body);
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(r.json()["error"], "bad_request");
    }
    let many: Vec<String> = (0..101).map(|i| format!("p:{i}")).collect();
    let r = broadcast(s.addr, &t, &json!({"type": "t", "data": 1, "channels": many}).to_string());
    assert_eq!(r.status, 400);
    assert!(r.json()["message"].as_str().unwrap().contains("MAX_PUBLISH_CHANNELS"));
    let r = broadcast(s.addr, &t, r#"{"type":"task_created","data":{"id":"1"}}"#);
    assert_eq!(r.json(), json!({"status": "ok", "recipients": 1}));
    assert_eq!(next_json(&mut c), json!({"type": "task_created", "payload": {"id": "1"}}));
}

#[test]
fn a_slow_client_closed_with_1013_recovers_what_it_missed() {
    let mut cfg = config();
    cfg.send_queue_limit = 16;
    cfg.history_size = 10_000;
    let s = start_with(cfg);
    let t = token_with("slow", &["project:1"]);
    let mut fast = ws(s.addr, &token_with("fast", &["project:1"]));
    let mut slow = ws(s.addr, &t);
    assert_eq!(subscribe(&mut fast, "project:1", None)["type"], "subscribed");
    let epoch = subscribe(&mut slow, "project:1", None)["epoch"].as_str().unwrap().to_string();
    let pad = "x".repeat(4096);
    let mut h = Http::connect(s.addr);
    let pt = token("publisher");
    let mut sent = 0u64;
    loop {
        assert!(sent < 5000, "slow client never dropped");
        let body = format!(r#"{{"type":"t","data":{{"pad":"{pad}"}},"channel":"project:1"}}"#);
        h.send(broadcast_request(&pt, &body).as_bytes());
        let r = h.response().json();
        sent += 1;
        assert_eq!(next_json(&mut fast)["offset"], sent);
        if r["recipients"] == 1 {
            break;
        }
    }
    // A few more while it is gone.
    for _ in 0..5 {
        h.send(broadcast_request(&pt, r#"{"type":"t","data":"later","channel":"project:1"}"#).as_bytes());
        assert_eq!(h.response().status, 200);
        sent += 1;
    }
    slow.get_ref().set_read_timeout(Some(WAIT)).unwrap();
    let mut last = 0;
    let code = loop {
        match slow.read() {
            Ok(Message::Text(m)) => {
                let v: Value = serde_json::from_str(&m).unwrap();
                assert_eq!(v["offset"], last + 1);
                last += 1;
            }
            Ok(Message::Close(f)) => break f.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(code, Some(1013));
    assert!(last < sent);
    let mut again = ws(s.addr, &t);
    let ok = subscribe(&mut again, "project:1", Some((&epoch, last)));
    assert_eq!((ok["recovered"].as_bool(), ok["offset"].as_u64()), (Some(true), Some(sent)));
    assert_eq!(offsets(&mut again, (sent - last) as usize), (last + 1..=sent).collect::<Vec<_>>());
}

/// Property: random interleavings of publish / disconnect / reconnect-with-
/// since never lose or duplicate a message that history still holds, and
/// never replay part of a gap it does not hold.
#[test]
fn random_interleavings_never_lose_or_duplicate_what_history_holds() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};

    #[derive(Debug, Clone)]
    enum Op {
        Publish { channel: usize, n: u64 },
        Disconnect(usize),
        Reconnect(usize),
    }
    let op = prop_oneof![
        3 => (0..2usize, 1..5u64).prop_map(|(channel, n)| Op::Publish { channel, n }),
        1 => (0..2usize).prop_map(Op::Disconnect),
        1 => (0..2usize).prop_map(Op::Reconnect),
    ];
    const HISTORY: u64 = 6;
    const CHANNELS: [&str; 2] = ["project:0", "project:1"];

    struct Client {
        ws: Option<Ws>,
        /// Per channel: (epoch, last offset seen).
        pos: [(String, u64); 2],
    }

    let runner_config = ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() };
    let result = TestRunner::new(runner_config).run(&proptest::collection::vec(op, 1..24), |ops| {
        let mut cfg = config();
        cfg.history_size = HISTORY as usize;
        let s = start_with(cfg);
        let t = token_with("u", &["project:*"]);
        let mut latest = [0u64; 2];
        let connect = |pos: &mut [(String, u64); 2], latest: &[u64; 2], first: bool| -> Result<Ws, TestCaseError> {
            let mut c = ws(s.addr, &t);
            for (i, ch) in CHANNELS.iter().enumerate() {
                let (epoch, last) = pos[i].clone();
                let ok = subscribe(&mut c, ch, (!first).then_some((epoch.as_str(), last)));
                prop_assert_eq!(ok["type"].as_str(), Some("subscribed"));
                prop_assert_eq!(ok["offset"].as_u64(), Some(latest[i]));
                let missed = latest[i] - last;
                let recovered = ok["recovered"].as_bool().unwrap();
                if !first {
                    prop_assert_eq!(recovered, missed <= HISTORY, "missed {} with history {}", missed, HISTORY);
                }
                pos[i].0 = ok["epoch"].as_str().unwrap().to_string();
                if recovered {
                    for want in last + 1..=latest[i] {
                        prop_assert_eq!(next_json(&mut c)["offset"].as_u64(), Some(want));
                    }
                }
                pos[i].1 = latest[i]; // replayed, or refetched by the app
            }
            Ok(c)
        };
        let mut clients: Vec<Client> = Vec::new();
        for _ in 0..2 {
            let mut pos = [(String::new(), 0), (String::new(), 0)];
            let ws = connect(&mut pos, &latest, true)?;
            clients.push(Client { ws: Some(ws), pos });
        }
        for op in ops {
            match op {
                Op::Publish { channel, n } => {
                    for _ in 0..n {
                        latest[channel] += 1;
                        let r = publish(s.addr, json!({"channel": CHANNELS[channel]}), json!(latest[channel]));
                        prop_assert_eq!(r["channels"][CHANNELS[channel]]["offset"].as_u64(), Some(latest[channel]));
                    }
                    for c in clients.iter_mut() {
                        if let Some(ws) = &mut c.ws {
                            for want in c.pos[channel].1 + 1..=latest[channel] {
                                let m = next_json(ws);
                                prop_assert_eq!(m["channel"].as_str(), Some(CHANNELS[channel]));
                                prop_assert_eq!(m["offset"].as_u64(), Some(want));
                            }
                            c.pos[channel].1 = latest[channel];
                        }
                    }
                }
                Op::Disconnect(i) => clients[i].ws = None,
                Op::Reconnect(i) => {
                    clients[i].ws = None;
                    let mut pos = clients[i].pos.clone();
                    clients[i].ws = Some(connect(&mut pos, &latest, false)?);
                    clients[i].pos = pos;
                }
            }
        }
        for c in clients.iter_mut() {
            if let Some(ws) = &mut c.ws {
                assert_nothing_before_sentinel(s.addr, ws);
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn a_replay_larger_than_max_output_bytes_is_not_sent() {
    let mut cfg = config();
    cfg.max_broadcast_bytes = 1000;
    cfg.max_output_bytes = 4000;
    let s = start_with(cfg);
    let t = token_with("u", &["project:1"]);
    let mut c = ws(s.addr, &t);
    let epoch = subscribe(&mut c, "project:1", None)["epoch"].as_str().unwrap().to_string();
    drop(c);
    wait_clients(s.addr, 0);
    let pad = "x".repeat(800);
    for _ in 0..10 {
        publish(s.addr, json!({"channel": "project:1"}), json!(pad));
    }
    let mut c = ws(s.addr, &t);
    // 10 x ~850 B would not fit 4000 B: not replayed, the app refetches.
    let ok = subscribe(&mut c, "project:1", Some((&epoch, 0)));
    assert_eq!((ok["recovered"].as_bool(), ok["offset"].as_u64()), (Some(false), Some(10)));
    assert_nothing_before_sentinel(s.addr, &mut c);
    // The last two fit: replayed.
    let ok = subscribe(&mut c, "project:1", Some((&epoch, 8)));
    assert_eq!(ok["recovered"], true);
    assert_eq!(offsets(&mut c, 2), [9, 10]);
}

/// Reads one gauge from a real scrape.
fn gauge(addr: std::net::SocketAddr, name: &str) -> u64 {
    let body = get(addr, "/metrics").body;
    let line = body.lines().find(|l| l.split(' ').next() == Some(name)).unwrap_or_else(|| panic!("{name} in {body}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn thousands_of_subscribes_and_unsubscribes_leave_nothing_behind() {
    let mut cfg = config();
    cfg.client_msg_rate = 1_000_000;
    cfg.client_msg_burst = 1_000_000;
    let s = start_with(cfg);
    let mut c = ws(s.addr, &token_with("u", &["project:*"]));
    for i in 0..3000 {
        let ch = format!("project:{i}");
        send(&mut c, json!({"type": "subscribe", "channel": ch, "since": {"epoch": "bogus", "offset": u64::MAX}}));
        send(&mut c, json!({"type": "unsubscribe", "channel": ch}));
    }
    for _ in 0..3000 {
        let ok = next_json(&mut c);
        assert_eq!((ok["type"].as_str(), ok["recovered"].as_bool()), (Some("subscribed"), Some(false)), "{ok}");
        assert_eq!(next_json(&mut c)["type"], "unsubscribed");
    }
    // Only the connection's own user channel is left, with one subscription.
    assert_eq!(gauge(s.addr, "taskcast_channels"), 1);
    assert_eq!(gauge(s.addr, "taskcast_subscriptions"), 1);
    assert_eq!(gauge(s.addr, "taskcast_history_entries"), 0);
    drop(c);
    wait_clients(s.addr, 0);
    assert_eq!(gauge(s.addr, "taskcast_channels"), 0, "nothing left once the client is gone");
}
