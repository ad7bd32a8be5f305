//! Channels over real sockets with real tokens: who receives what, who may
//! join, replay after a reconnect, what happens when it cannot replay, and
//! the promise itself — every message once, in order, only to subscribers.
//!
//! Every delivery scenario is a function of a [`Home`] and runs twice (see
//! [`both_homes!`] at the bottom): in `one_process::` against one server,
//! and in `cluster::` against three instances on one real redis-server,
//! with clients, publishers and reconnects spread over the instances. What
//! only one process has (a restart changes the epoch) is a plain test.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::home::{Home, untuned};
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

fn subscribe_msg(channel: &str, since: Option<(&str, u64)>) -> Value {
    let mut msg = json!({"type": "subscribe", "channel": channel});
    if let Some((epoch, offset)) = since {
        msg["since"] = json!({"epoch": epoch, "offset": offset});
    }
    msg
}

/// Sends a subscribe and returns the answer (subscribed or error).
fn subscribe(c: &mut Ws, channel: &str, since: Option<(&str, u64)>) -> Value {
    send(c, subscribe_msg(channel, since));
    next_json(c)
}

/// Reads channel messages until `n` have arrived; returns their offsets.
fn offsets(c: &mut Ws, n: usize) -> Vec<u64> {
    (0..n).map(|_| next_json(c)["offset"].as_u64().unwrap_or_else(|| panic!("not a channel message"))).collect()
}

/// The next text message, or `None` if none comes within [`WAIT`] (so a
/// caller can report what it got before a gap instead of panicking).
fn try_next(c: &mut Ws) -> Option<Value> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match c.read() {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).expect("server sent JSON")),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(other) => panic!("expected text, got {other:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                return None;
            }
            Err(e) => panic!("read: {e}"),
        }
    }
    None
}

/// Reads `channel`'s messages until offset `last` (or until none comes
/// within [`WAIT`]); returns their offsets. Anything else is a failure.
fn read_until(c: &mut Ws, channel: &str, last: u64) -> Vec<u64> {
    let mut got = Vec::new();
    while got.last() != Some(&last) {
        let Some(m) = try_next(c) else { break };
        assert_eq!(m["channel"], channel, "after {got:?}: {m}");
        got.push(m["offset"].as_u64().unwrap_or_else(|| panic!("{m}")));
    }
    got
}

/// Publishes `n` messages to `channel` through `addr`, one request in
/// flight; returns the offsets they got.
fn publish_many(addr: SocketAddr, channel: &str, n: usize) -> Vec<u64> {
    let mut h = Http::connect(addr);
    let t = token("publisher");
    (0..n)
        .map(|i| {
            h.send(broadcast_request(&t, &format!(r#"{{"type":"t","data":{i},"channel":"{channel}"}}"#)).as_bytes());
            let r = h.response();
            assert_eq!(r.status, 200, "{}", r.body);
            r.json()["channels"][channel]["offset"].as_u64().unwrap()
        })
        .collect()
}

/// Sets the flag when dropped: stops helper threads even when the
/// scenario's own thread panics.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

// ---- scenarios, each run in both homes -----------------------------------------

/// Each tab joins its user channel explicitly, as the browser client's
/// `subscribeUser()` does (answered with its position); what is published
/// to the user then reaches both of its tabs once, and no other user, who
/// may not join the channel either.
fn user_channels_reach_only_that_user(home: Home) {
    let mut a1 = home.ws(0, &token("a"));
    let mut a2 = home.ws(1, &token("a"));
    let mut b = home.ws(2, &token("b"));
    for c in [&mut a1, &mut a2] {
        let ok = subscribe(c, "user:a", None);
        assert_eq!((ok["type"].as_str(), ok["offset"].as_u64()), (Some("subscribed"), Some(0)), "{ok}");
    }
    let answer = home.publish(3, json!({"users": ["a"]}), json!({"id": 1}));
    let local = home.local(3, &[0, 1]);
    assert_eq!(answer["recipients"], local);
    assert_eq!(answer["channels"]["user:a"], json!({"offset": 1, "recipients": local}));
    for c in [&mut a1, &mut a2] {
        assert_eq!(
            next_json(c),
            json!({"type": "task_updated", "payload": {"id": 1}, "channel": "user:a", "offset": 1})
        );
    }
    home.sentinel(4, &mut b);
    // B may not join A's channel.
    let e = subscribe(&mut b, "user:a", None);
    assert_eq!(e["type"], "error");
    assert_eq!(e["payload"]["code"], "forbidden");
    assert_eq!(e["payload"]["channel"], "user:a");
    let r = home.publish(4, json!({"channel": "user:a"}), json!(2));
    assert_eq!(r["recipients"], home.local(4, &[0, 1]));
    for c in [&mut a1, &mut a2] {
        assert_eq!(next_json(c)["type"], "sentinel");
        assert_eq!(offsets(c, 1), [2]);
    }
    home.sentinel(5, &mut b);
    for c in [&mut a1, &mut a2] {
        assert_eq!(next_json(c)["type"], "sentinel");
    }
}

/// The user channel the server joins at connect (no `subscribe` from the
/// tab): once a tab is connected — counted in `connectedClients`, and by
/// the publish's `recipients` — what is published to its user reaches it.
fn the_user_channel_joined_at_connect_gets_what_is_published_after(home: Home) {
    let mut a1 = home.ws(0, &token("a"));
    let mut a2 = home.ws(1, &token("a"));
    home.wait_clients(2);
    let answer = home.publish(0, json!({"users": ["a"]}), json!({"id": 1}));
    assert_eq!(answer["channels"]["user:a"], json!({"offset": 1, "recipients": home.local(0, &[0, 1])}));
    for (i, c) in [&mut a1, &mut a2].into_iter().enumerate() {
        let m = try_next(c)
            .unwrap_or_else(|| panic!("tab {i} of a never got the message published after it connected: {answer}"));
        assert_eq!(m, json!({"type": "task_updated", "payload": {"id": 1}, "channel": "user:a", "offset": 1}));
    }
    home.publish(1, json!({"users": ["a"]}), json!({"id": 2}));
    for c in [&mut a1, &mut a2] {
        assert_eq!(offsets(c, 1), [2]);
        home.sentinel(2, c);
    }
}

fn project_messages_reach_exactly_their_subscribers(home: Home) {
    let mut member = home.ws(0, &token_with("m", &["project:42"]));
    let mut wildcard = home.ws(1, &token_with("w", &["project:*"]));
    let mut outsider = home.ws(2, &token_with("o", &["project:43"]));
    let mut idle = home.ws(3, &token_with("i", &["project:42"])); // granted, never subscribes
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

    let r = home.publish(4, json!({"channel": "project:42"}), json!({"title": "x"}));
    let local = home.local(4, &[0, 1]);
    assert_eq!(
        r,
        json!({"status": "ok", "recipients": local, "channels": {"project:42": {"offset": 1, "recipients": local}}})
    );
    for c in [&mut member, &mut wildcard] {
        let m = next_json(c);
        assert_eq!((m["channel"].as_str(), m["offset"].as_u64()), (Some("project:42"), Some(1)));
    }
    home.sentinel(5, &mut outsider);
    for c in [&mut member, &mut wildcard, &mut idle] {
        assert_eq!(next_json(c)["type"], "sentinel", "the sentinel reaches everyone");
    }
    home.sentinel(6, &mut idle);
    for c in [&mut member, &mut wildcard, &mut outsider] {
        assert_eq!(next_json(c)["type"], "sentinel");
    }

    // One copy per channel for a client in several of the targets.
    assert_eq!(subscribe(&mut wildcard, "project:7", None)["type"], "subscribed");
    let r = home.publish(7, json!({"channels": ["project:42", "project:7"]}), json!(3));
    assert_eq!(r["recipients"], home.local(7, &[0, 1]) + home.local(7, &[1]));
    assert_eq!(r["channels"]["project:7"], json!({"offset": 1, "recipients": home.local(7, &[1])}));
    let got: Vec<Value> = (0..2).map(|_| next_json(&mut wildcard)).collect();
    assert_eq!(got[0]["channel"], "project:42");
    assert_eq!(got[1]["channel"], "project:7");
    assert_eq!(next_json(&mut member)["offset"], 2);

    // Unsubscribed: no more messages.
    send(&mut member, json!({"type": "unsubscribe", "channel": "project:42"}));
    assert_eq!(next_json(&mut member), json!({"type": "unsubscribed", "channel": "project:42"}));
    assert_eq!(home.publish(8, json!({"channel": "project:42"}), json!(4))["recipients"], home.local(8, &[1]));
    assert_eq!(offsets(&mut wildcard, 1), [3]);
    home.sentinel(9, &mut member);
}

/// Tune: MAX_SUBSCRIPTIONS 3.
fn refused_subscribes_get_their_error_and_the_connection_works(home: Home) {
    let mut c = home.ws(0, &token_with("u", &["team:*"]));
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
    assert_eq!(home.publish(1, json!({"channel": "project:1"}), json!(1))["recipients"], home.local(1, &[0]));
    assert_eq!(next_json(&mut c)["channel"], "project:1");
    assert_eq!(home.publish(2, json!({"channel": "team:b"}), json!(1))["recipients"], 0, "refused: not joined");
    home.sentinel(0, &mut c);
}

/// The reconnect lands on another instance in cluster mode.
fn reconnect_with_since_replays_exactly_the_gap_then_live(home: Home) {
    let t = token_with("u", &["project:1"]);
    let mut c = home.ws(0, &t);
    let ok = subscribe(&mut c, "project:1", None);
    let epoch = ok["epoch"].as_str().unwrap().to_string();
    for i in 0..2 {
        home.publish(1, json!({"channel": "project:1"}), json!(i));
    }
    assert_eq!(offsets(&mut c, 2), [1, 2]);
    drop(c);
    home.wait_clients(0);
    for i in 2..5 {
        home.publish(2, json!({"channel": "project:1"}), json!(i));
    }
    let mut c = home.ws(1, &t);
    let ok = subscribe(&mut c, "project:1", Some((&epoch, 2)));
    assert_eq!(
        ok,
        json!({"type": "subscribed", "channel": "project:1", "epoch": epoch, "offset": 5, "recovered": true})
    );
    let replayed: Vec<Value> = (0..3).map(|_| next_json(&mut c)).collect();
    assert_eq!(replayed.iter().map(|m| m["offset"].as_u64().unwrap()).collect::<Vec<_>>(), [3, 4, 5]);
    assert_eq!(replayed.iter().map(|m| m["payload"].clone()).collect::<Vec<_>>(), [json!(2), json!(3), json!(4)]);
    home.publish(0, json!({"channel": "project:1"}), json!("live"));
    let live = next_json(&mut c);
    assert_eq!((live["offset"].as_u64(), live["payload"].as_str()), (Some(6), Some("live")));
    // Already up to date: recovered, nothing replayed.
    let ok = subscribe(&mut c, "project:1", Some((&epoch, 6)));
    assert_eq!(ok["recovered"], true);
    home.sentinel(2, &mut c);
    // A bogus epoch or a future offset: nothing replayed, recovered false.
    for since in [("nope", 3), (epoch.as_str(), 99)] {
        let ok = subscribe(&mut c, "project:1", Some(since));
        assert_eq!((ok["recovered"].as_bool(), ok["offset"].as_u64()), (Some(false), Some(6)), "{since:?}");
    }
    home.sentinel(0, &mut c);
    // And live again, exactly once.
    home.publish(2, json!({"channel": "project:1"}), json!("again"));
    assert_eq!(offsets(&mut c, 1), [7]);
    home.sentinel(1, &mut c);
}

fn the_user_channel_recovers_too(home: Home) {
    let mut c = home.ws(0, &token("u"));
    let ok = subscribe(&mut c, "user:u", None);
    let epoch = ok["epoch"].as_str().unwrap().to_string();
    drop(c);
    home.wait_clients(0);
    home.publish(1, json!({"users": ["u"]}), json!("missed"));
    let mut c = home.ws(2, &token("u"));
    assert_eq!(subscribe(&mut c, "user:u", Some((&epoch, 0)))["recovered"], true);
    assert_eq!(next_json(&mut c)["payload"], "missed");
    home.publish(0, json!({"users": ["u"]}), json!("live"));
    let m = next_json(&mut c);
    assert_eq!((m["offset"].as_u64(), m["payload"].as_str()), (Some(2), Some("live")), "{m}");
    home.sentinel(1, &mut c);
}

/// Tune: HISTORY_SIZE 1000, so a reconnect on a loaded machine is always
/// within what history holds.
fn publishes_racing_a_resubscribe_leave_no_gap_or_duplicate(home: Home) {
    let t = token_with("u", &["project:1"]);
    let mut c = home.ws(0, &t);
    let epoch = subscribe(&mut c, "project:1", None)["epoch"].as_str().unwrap().to_string();
    let total = 300usize;
    let addr = home.addr(2);
    let publisher = std::thread::spawn(move || publish_many(addr, "project:1", total));
    // Reconnect three times mid-stream (each time to the next instance),
    // from the last offset seen.
    let mut seen: Vec<u64> = Vec::new();
    for round in 0..4 {
        let want = if round < 3 { (round + 1) * 40 } else { total };
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
            c = home.ws(round + 1, &t);
            let last = *seen.last().unwrap();
            send(&mut c, subscribe_msg("project:1", Some((&epoch, last))));
        }
    }
    publisher.join().unwrap();
    assert_eq!(seen, (1..=total as u64).collect::<Vec<_>>());
    home.sentinel(1, &mut c);
}

/// Tune: HISTORY_SIZE 3.
fn history_overflow_gives_recovered_false_and_no_replay(home: Home) {
    let t = token_with("u", &["project:1"]);
    let mut c = home.ws(0, &t);
    let epoch = subscribe(&mut c, "project:1", None)["epoch"].as_str().unwrap().to_string();
    drop(c);
    home.wait_clients(0);
    for i in 0..5 {
        home.publish(2, json!({"channel": "project:1"}), json!(i));
    }
    let mut c = home.ws(1, &t);
    let ok = subscribe(&mut c, "project:1", Some((&epoch, 0)));
    assert_eq!((ok["recovered"].as_bool(), ok["offset"].as_u64()), (Some(false), Some(5)));
    home.publish(0, json!({"channel": "project:1"}), json!("live"));
    assert_eq!(next_json(&mut c)["offset"], 6, "nothing replayed before the live message");
    // Within what history still holds (4..=6 after the live one): recovered.
    let ok = subscribe(&mut c, "project:1", Some((&epoch, 3)));
    assert_eq!(ok["recovered"], true);
    assert_eq!(offsets(&mut c, 3), [4, 5, 6]);
    home.sentinel(2, &mut c);
}

fn a_refresh_that_drops_a_grant_leaves_that_channel(home: Home) {
    let mut c = home.ws(0, &token_with("u", &["project:1", "project:2"]));
    for ch in ["project:1", "project:2"] {
        assert_eq!(subscribe(&mut c, ch, None)["type"], "subscribed");
    }
    send(&mut c, json!({"type": "auth", "token": token_with("u", &["project:2"])}));
    assert_eq!(next_json(&mut c), json!({"type": "auth_ok"}));
    assert_eq!(next_json(&mut c), json!({"type": "unsubscribed", "channel": "project:1", "reason": "grant revoked"}));
    assert_eq!(home.publish(1, json!({"channel": "project:1"}), json!(1))["recipients"], 0);
    assert_eq!(home.publish(1, json!({"channel": "project:2"}), json!(2))["recipients"], home.local(1, &[0]));
    let m = next_json(&mut c);
    assert_eq!((m["channel"].as_str(), m["offset"].as_u64()), (Some("project:2"), Some(1)), "{m}");
    // And it can no longer join it.
    assert_eq!(subscribe(&mut c, "project:1", None)["payload"]["code"], "forbidden");
    home.sentinel(2, &mut c);
}

/// Tune: SEND_QUEUE_LIMIT 16, HISTORY_SIZE 10000. The publisher posts to
/// the slow client's instance (its `recipients` counts it); the fast one
/// and the reconnect are elsewhere.
fn a_slow_client_closed_with_1013_recovers_what_it_missed(home: Home) {
    let t = token_with("slow", &["project:1"]);
    let mut fast = home.ws(0, &token_with("fast", &["project:1"]));
    let mut slow = home.ws(1, &t);
    assert_eq!(subscribe(&mut fast, "project:1", None)["type"], "subscribed");
    let epoch = subscribe(&mut slow, "project:1", None)["epoch"].as_str().unwrap().to_string();
    let with_slow = home.local(1, &[0, 1]);
    let pad = "x".repeat(4096);
    let mut h = Http::connect(home.addr(1));
    let pt = token("publisher");
    let mut sent = 0u64;
    loop {
        assert!(sent < 5000, "slow client never dropped");
        let body = format!(r#"{{"type":"t","data":{{"pad":"{pad}"}},"channel":"project:1"}}"#);
        h.send(broadcast_request(&pt, &body).as_bytes());
        let r = h.response().json();
        sent += 1;
        assert_eq!(next_json(&mut fast)["offset"], sent);
        if r["recipients"] == with_slow - 1 {
            break;
        }
        assert_eq!(r["recipients"], with_slow, "{r}");
    }
    // A few more while it is gone.
    for _ in 0..5 {
        h.send(broadcast_request(&pt, r#"{"type":"t","data":"later","channel":"project:1"}"#).as_bytes());
        assert_eq!(h.response().status, 200);
        sent += 1;
    }
    assert_eq!(offsets(&mut fast, 5), (sent - 4..=sent).collect::<Vec<_>>());
    slow.get_ref().set_read_timeout(Some(WAIT)).unwrap();
    let mut last = 0;
    let code = loop {
        match slow.read() {
            Ok(Message::Text(m)) => {
                let v: Value = serde_json::from_str(&m).unwrap();
                assert_eq!(v["offset"], last + 1, "{v}");
                last += 1;
            }
            Ok(Message::Close(f)) => break f.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(code, Some(1013));
    assert!(last < sent);
    let mut again = home.ws(2, &t);
    let ok = subscribe(&mut again, "project:1", Some((&epoch, last)));
    assert_eq!((ok["recovered"].as_bool(), ok["offset"].as_u64()), (Some(true), Some(sent)));
    assert_eq!(offsets(&mut again, (sent - last) as usize), (last + 1..=sent).collect::<Vec<_>>());
    home.sentinel(0, &mut again);
}

/// Property (tune: HISTORY_SIZE 6): random interleavings of publish /
/// disconnect / reconnect-with-since never lose or duplicate a message that
/// history still holds, and never replay part of a gap it does not hold.
/// Each case has channels of its own in the one home; publishes and
/// reconnects move from instance to instance.
fn random_interleavings_never_lose_or_duplicate_what_history_holds(home: Home) {
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

    struct Client {
        ws: Option<Ws>,
        /// Per channel: (epoch, last offset seen).
        pos: [(String, u64); 2],
        /// The `home.ws` number it connected with last.
        at: usize,
    }

    let case = AtomicU64::new(0);
    // Which instance the next connection and the next publish go to.
    let next = AtomicU64::new(0);
    let turn = || next.fetch_add(1, Ordering::Relaxed) as usize;
    // Shrinking is bounded in time: a failure that depends on timing fails
    // each shrink step only after a full wait.
    let runner_config =
        ProptestConfig { cases: 24, failure_persistence: None, max_shrink_time: 20_000, ..ProptestConfig::default() };
    let result = TestRunner::new(runner_config).run(&proptest::collection::vec(op, 1..24), |ops| {
        let n = case.fetch_add(1, Ordering::Relaxed);
        let names = [format!("project:c{n}a"), format!("project:c{n}b")];
        let mut latest = [0u64; 2];
        // No broadcast to everyone as a sentinel: in the one home it would
        // reach the next case's connections too, from another instance.
        let user = |i: usize| format!("u{n}-{i}");
        let connect =
            |i: usize, pos: &mut [(String, u64); 2], latest: &[u64; 2], first: bool| -> Result<Client, TestCaseError> {
                let at = turn();
                let mut c = home.ws(at, &token_with(&user(i), &["project:*"]));
                for (i, ch) in names.iter().enumerate() {
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
                Ok(Client { ws: Some(c), pos: pos.clone(), at })
            };
        let mut clients: Vec<Client> = Vec::new();
        for i in 0..2 {
            let mut pos = [(String::new(), 0), (String::new(), 0)];
            clients.push(connect(i, &mut pos, &latest, true)?);
        }
        for op in ops {
            match op {
                Op::Publish { channel, n } => {
                    for _ in 0..n {
                        latest[channel] += 1;
                        let ch = &names[channel];
                        let r = home.publish(turn(), json!({"channel": ch}), json!(latest[channel]));
                        prop_assert_eq!(r["channels"][ch]["offset"].as_u64(), Some(latest[channel]));
                    }
                    for c in clients.iter_mut() {
                        if let Some(ws) = &mut c.ws {
                            for want in c.pos[channel].1 + 1..=latest[channel] {
                                let m = next_json(ws);
                                prop_assert_eq!(m["channel"].as_str(), Some(names[channel].as_str()));
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
                    clients[i] = connect(i, &mut pos, &latest, false)?;
                }
            }
        }
        // Nothing else arrived: one more message on each channel is the
        // next one every connected client reads of it.
        for (channel, ch) in names.iter().enumerate() {
            latest[channel] += 1;
            home.publish(turn(), json!({"channel": ch}), json!("last"));
            for (i, c) in clients.iter_mut().enumerate() {
                if let Some(ws) = &mut c.ws {
                    let m = next_json(ws);
                    prop_assert_eq!(
                        m["channel"].as_str(),
                        Some(ch.as_str()),
                        "client {} on instance {}: {}",
                        i,
                        c.at % home.n(),
                        m
                    );
                    prop_assert_eq!(
                        m["offset"].as_u64(),
                        Some(latest[channel]),
                        "client {} on instance {}: {}",
                        i,
                        c.at % home.n(),
                        m
                    );
                }
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Tune: MAX_BROADCAST_BYTES 1000, MAX_OUTPUT_BYTES 4000.
fn a_replay_larger_than_max_output_bytes_is_not_sent(home: Home) {
    let t = token_with("u", &["project:1"]);
    let mut c = home.ws(0, &t);
    let epoch = subscribe(&mut c, "project:1", None)["epoch"].as_str().unwrap().to_string();
    drop(c);
    home.wait_clients(0);
    let pad = "x".repeat(800);
    for _ in 0..10 {
        home.publish(2, json!({"channel": "project:1"}), json!(pad));
    }
    let mut c = home.ws(1, &t);
    // 10 x ~850 B would not fit 4000 B: not replayed, the app refetches.
    let ok = subscribe(&mut c, "project:1", Some((&epoch, 0)));
    assert_eq!((ok["recovered"].as_bool(), ok["offset"].as_u64()), (Some(false), Some(10)));
    home.sentinel(0, &mut c);
    // The last two fit: replayed.
    let ok = subscribe(&mut c, "project:1", Some((&epoch, 8)));
    assert_eq!(ok["recovered"], true);
    assert_eq!(offsets(&mut c, 2), [9, 10]);
    home.sentinel(2, &mut c);
}

/// Tune: no client message rate limit. Thirty connections spread over the
/// instances each subscribe to and unsubscribe from a hundred channels
/// (the same hundred, at their own pace: joins and leaves of one channel
/// overlap on an instance); afterwards every instance holds only the
/// connections' own user channels, and nothing once they are gone. In
/// cluster mode Redis's view is checked too: the instances listen to the
/// broadcast and those user channels, then to the broadcast only.
fn thousands_of_subscribes_and_unsubscribes_leave_nothing_behind(home: Home) {
    const CONNS: usize = 30;
    const PER_CONN: usize = 100;
    let mut conns: Vec<Ws> = (0..CONNS).map(|k| home.ws(k, &token_with(&format!("u{k}"), &["project:*"]))).collect();
    for c in conns.iter_mut() {
        for i in 0..PER_CONN {
            let ch = format!("project:{i}");
            let since = json!({"epoch": "bogus", "offset": u64::MAX});
            c.write(Message::text(json!({"type": "subscribe", "channel": ch, "since": since}).to_string())).unwrap();
            c.write(Message::text(json!({"type": "unsubscribe", "channel": ch}).to_string())).unwrap();
        }
        c.flush().unwrap();
    }
    for (k, c) in conns.iter_mut().enumerate() {
        for i in 0..PER_CONN {
            let ok = next_json(c);
            assert_eq!(
                (ok["type"].as_str(), ok["recovered"].as_bool()),
                (Some("subscribed"), Some(false)),
                "{k}: {ok}"
            );
            assert_eq!(ok["channel"], format!("project:{i}"), "{k}: {ok}");
            assert_eq!(next_json(c), json!({"type": "unsubscribed", "channel": format!("project:{i}")}), "{k}");
        }
    }
    // Only each connection's own user channel is left, with one subscription.
    for i in 0..home.n() {
        let here = (0..CONNS).filter(|k| k % home.n() == i).count() as u64;
        assert_eq!(home.gauge(i, "taskcast_channels"), here, "instance {i}");
        assert_eq!(home.gauge(i, "taskcast_subscriptions"), here, "instance {i}");
        assert_eq!(home.gauge(i, "taskcast_history_entries"), 0, "instance {i}");
    }
    if home.is_cluster() {
        let mut want: Vec<String> = (0..CONNS).map(|k| home.redis_channel(&format!("user:u{k}"))).collect();
        want.push(home.redis_broadcast());
        want.push(home.redis_control());
        want.sort();
        wait_for(|| home.redis_channels().unwrap() == want, "the instances to unsubscribe in Redis");
    }
    drop(conns);
    home.wait_clients(0);
    for i in 0..home.n() {
        assert_eq!(home.gauge(i, "taskcast_channels"), 0, "instance {i}: nothing left once the clients are gone");
        assert_eq!(home.gauge(i, "taskcast_subscriptions"), 0, "instance {i}");
    }
    if home.is_cluster() {
        let mut want = vec![home.redis_broadcast(), home.redis_control()];
        want.sort();
        wait_for(|| home.redis_channels().unwrap() == want, "the user channels to be unsubscribed in Redis");
    }
}

/// Waits (bounded) until `ok()`.
fn wait_for(ok: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + WAIT;
    while !ok() {
        assert!(Instant::now() < deadline, "waited {WAIT:?} for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Publishers on two instances at once, subscribers on two others: both
/// subscribers see the same messages in the same order with the same
/// offsets, and each publisher's answers name the offsets its messages got.
fn publishers_on_several_instances_give_one_order_and_the_same_offsets(home: Home) {
    let member = token_with("m", &["project:*"]);
    let mut on_b = home.ws(1, &member);
    let mut on_c = home.ws(2, &member);
    let eb = subscribe(&mut on_b, "project:1", None);
    let ec = subscribe(&mut on_c, "project:1", None);
    assert_eq!(eb["type"], "subscribed");
    assert_eq!(eb["epoch"], ec["epoch"], "one stream, one epoch, on every instance");
    let pubs: Vec<_> = [home.addr(0), home.addr(1)]
        .into_iter()
        .enumerate()
        .map(|(p, addr)| {
            std::thread::spawn(move || {
                let mut h = Http::connect(addr);
                let t = token("publisher");
                let mut got = Vec::new();
                for i in 0..50 {
                    let body = format!(r#"{{"type":"t","data":{{"p":{p},"i":{i}}},"channel":"project:1"}}"#);
                    h.send(broadcast_request(&t, &body).as_bytes());
                    let r = h.response();
                    assert_eq!(r.status, 200, "{}", r.body);
                    got.push(r.json()["channels"]["project:1"]["offset"].as_u64().unwrap());
                }
                got
            })
        })
        .collect();
    let answered: Vec<Vec<u64>> = pubs.into_iter().map(|t| t.join().unwrap()).collect();
    let read = |c: &mut Ws| -> Vec<(u64, Value)> {
        (0..100)
            .map(|_| {
                let m = next_json(c);
                (m["offset"].as_u64().unwrap_or_else(|| panic!("not a channel message: {m}")), m["payload"].clone())
            })
            .collect()
    };
    let from_b = read(&mut on_b);
    let from_c = read(&mut on_c);
    assert_eq!(from_b, from_c, "same messages, same order, same offsets");
    let first = eb["offset"].as_u64().unwrap();
    assert_eq!(from_b.iter().map(|(o, _)| *o).collect::<Vec<_>>(), (first + 1..=first + 100).collect::<Vec<_>>());
    for (p, offs) in answered.iter().enumerate() {
        for (i, o) in offs.iter().enumerate() {
            let (_, payload) = from_b.iter().find(|(x, _)| x == o).unwrap();
            assert_eq!(payload, &json!({"p": p, "i": i}));
        }
    }
    // The original broadcast to everyone reaches every instance's clients.
    let mut plain = home.ws(0, &token("u3"));
    home.wait_clients(3);
    let r = broadcast(home.addr(2), &token("publisher"), r#"{"type":"task_created","data":{"id":"9"}}"#);
    assert_eq!(r.status, 200);
    for cl in [&mut on_b, &mut on_c, &mut plain] {
        assert_eq!(next_json(cl), json!({"type": "task_created", "payload": {"id": "9"}}));
    }
}

/// Tune: HISTORY_SIZE 1000. Two subscribes to one channel on one instance
/// at once while messages are published, one of them recovering from the
/// start (a long read): each gets every offset after its `subscribed`
/// exactly once (the long one: its replay, then live). Both orders.
fn two_subscribes_at_once_each_get_every_offset_after_theirs_once(home: Home) {
    const TRIALS: usize = 6;
    const EARLIER: usize = 50;
    const LIVE: usize = 150;
    let t = token_with("u", &["project:*"]);
    for trial in 0..TRIALS {
        let ch = format!("project:twice{trial}");
        let epoch = {
            let mut probe = home.ws(2, &t);
            subscribe(&mut probe, &ch, None)["epoch"].as_str().unwrap().to_string()
        };
        publish_many(home.addr(trial), &ch, EARLIER);
        let (mut plain, mut long) = (home.ws(0, &t), home.ws(0, &t)); // one instance
        let (started_tx, started) = std::sync::mpsc::channel();
        let addr = home.addr(1);
        let chan = ch.clone();
        let publisher = std::thread::spawn(move || {
            let a = publish_many(addr, &chan, 5);
            started_tx.send(()).unwrap();
            a.into_iter().chain(publish_many(addr, &chan, LIVE - 5)).collect::<Vec<_>>()
        });
        started.recv_timeout(WAIT).expect("the publisher started");
        let plain_msg = Message::text(subscribe_msg(&ch, None).to_string());
        let long_msg = Message::text(subscribe_msg(&ch, Some((&epoch, 0))).to_string());
        if trial % 2 == 0 {
            plain.send(plain_msg).unwrap();
            long.send(long_msg).unwrap();
        } else {
            long.send(long_msg).unwrap();
            plain.send(plain_msg).unwrap();
        }
        let last = (EARLIER + LIVE) as u64;
        let ok = next_json(&mut plain);
        assert_eq!((ok["type"].as_str(), ok["recovered"].as_bool()), (Some("subscribed"), Some(false)), "{ok}");
        let r = ok["offset"].as_u64().unwrap();
        let got = read_until(&mut plain, &ch, last);
        assert_eq!(got, (r + 1..=last).collect::<Vec<_>>(), "trial {trial}: the plain subscribe, joined at {r}");
        let ok = next_json(&mut long);
        assert_eq!((ok["type"].as_str(), ok["recovered"].as_bool()), (Some("subscribed"), Some(true)), "{ok}");
        let r = ok["offset"].as_u64().unwrap();
        let got = read_until(&mut long, &ch, last);
        assert_eq!(got, (1..=last).collect::<Vec<_>>(), "trial {trial}: the subscribe since 0, joined at {r}");
        assert_eq!(publisher.join().unwrap(), (EARLIER as u64 + 1..=last).collect::<Vec<_>>());
        // Nothing more of it: the next message is the next one published.
        // (Not a broadcast to everyone: the next trial's new connections
        // could get it.)
        home.publish(trial, json!({"channel": ch}), json!("next"));
        for c in [&mut plain, &mut long] {
            assert_eq!(read_until(c, &ch, last + 1), [last + 1], "trial {trial}");
        }
    }
}

/// Four requests in one write — subscribe A, subscribe B, unsubscribe A,
/// ping — are answered in that order, whether A's subscribe needs a new
/// pub/sub subscription on the instance (cluster mode) or not; afterwards
/// the connection is in B and not in A.
fn answers_leave_in_request_order(home: Home) {
    const ROUNDS: usize = 10;
    let t = token_with("u", &["project:*"]);
    let mut c = home.ws(0, &t);
    // Another connection on the same instance, already in some A channels.
    let mut peer = home.ws(0, &t);
    for round in 0..ROUNDS {
        let (a, b) = (format!("project:order{round}a"), format!("project:order{round}b"));
        if round % 2 == 1 {
            assert_eq!(subscribe(&mut peer, &a, None)["type"], "subscribed");
        }
        let since = (round % 3 == 2).then_some(("bogus", 0));
        for m in [
            subscribe_msg(&a, since),
            subscribe_msg(&b, None),
            json!({"type": "unsubscribe", "channel": a}),
            json!({"type": "ping"}),
        ] {
            c.write(Message::text(m.to_string())).unwrap();
        }
        c.flush().unwrap();
        // What came within the wait (a missing answer shows as "none").
        let got: Vec<(String, String)> = (0..4)
            .map(|_| match try_next(&mut c) {
                Some(m) => {
                    (m["type"].as_str().unwrap_or("?").to_string(), m["channel"].as_str().unwrap_or("").to_string())
                }
                None => ("none".to_string(), String::new()),
            })
            .collect();
        let want: Vec<(String, String)> =
            [("subscribed", a.as_str()), ("subscribed", b.as_str()), ("unsubscribed", a.as_str()), ("pong", "")]
                .iter()
                .map(|(t, ch)| (t.to_string(), ch.to_string()))
                .collect();
        assert_eq!(got, want, "round {round}");
        // In B, not in A.
        let r = home.publish(round + 1, json!({"channel": a}), json!("a"));
        assert_eq!(r["recipients"], if round % 2 == 1 { home.local(round + 1, &[0]) } else { 0 }, "{r}");
        let r = home.publish(round + 1, json!({"channel": b}), json!("b"));
        assert_eq!(r["recipients"], home.local(round + 1, &[0]), "{r}");
        let m = next_json(&mut c);
        assert_eq!((m["channel"].as_str(), m["payload"].as_str()), (Some(b.as_str()), Some("b")), "{m}");
        home.sentinel(round, &mut c);
        if round % 2 == 1 {
            assert_eq!(next_json(&mut peer)["payload"], "a");
        }
        assert_eq!(next_json(&mut peer)["type"], "sentinel");
    }
    // The user channel and every B.
    assert_eq!(home.gauge(0, "taskcast_subscriptions"), 1 + ROUNDS as u64 + 1 + ROUNDS as u64 / 2);
}

/// Tune: HISTORY_SIZE 1000. Publishers keep a channel busy (from two
/// instances) while subscribers on every instance subscribe and unsubscribe
/// again and again, every other time recovering from the last offset they
/// saw: after `subscribed` at R a subscriber gets exactly R+1, R+2, … (or,
/// recovering from S, exactly S+1 … R, R+1 …) — never a message at or
/// below R, never one before its `subscribed`, none after `unsubscribed`.
fn after_subscribed_at_r_no_message_at_or_below_r_arrives(home: Home) {
    const CH: &str = "project:busy";
    const SUBSCRIBERS: usize = 3;
    const CYCLES: usize = 12;
    const PER_CYCLE: u64 = 4;
    const MAX_PUBLISHES: usize = 20_000;
    let addrs: Vec<SocketAddr> = (0..home.n()).map(|i| home.addr(i)).collect();
    let n = home.n();
    let stop = AtomicBool::new(false);
    let published = AtomicU64::new(0);
    let t = token_with("u", &["project:*"]);
    std::thread::scope(|s| {
        for p in 1..=2 {
            let (stop, published, addr) = (&stop, &published, addrs[p % n]);
            s.spawn(move || {
                let mut h = Http::connect(addr);
                let t = token("publisher");
                let deadline = Instant::now() + Duration::from_secs(60);
                for i in 0..MAX_PUBLISHES {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    h.send(broadcast_request(&t, &format!(r#"{{"type":"t","data":{i},"channel":"{CH}"}}"#)).as_bytes());
                    assert_eq!(h.response().status, 200);
                    published.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let _stop = StopOnDrop(&stop);
        let subscribers: Vec<_> = (0..SUBSCRIBERS)
            .map(|k| {
                let (addr, t) = (addrs[k % n], &t);
                s.spawn(move || {
                    let mut c = ws(addr, t);
                    let mut last: Option<(String, u64)> = None;
                    for cycle in 0..CYCLES {
                        let since = last.clone().filter(|_| cycle % 2 == 1);
                        send(&mut c, subscribe_msg(CH, since.as_ref().map(|(e, o)| (e.as_str(), *o))));
                        let ok = next_json(&mut c);
                        assert_eq!(ok["type"], "subscribed", "subscriber {k} cycle {cycle}: before its answer: {ok}");
                        let r = ok["offset"].as_u64().unwrap();
                        let epoch = ok["epoch"].as_str().unwrap().to_string();
                        let mut want = match &since {
                            Some((e, s)) if ok["recovered"] == true => {
                                assert_eq!(e, &epoch);
                                s + 1
                            }
                            Some((e, s)) => {
                                assert!(e != &epoch || r - s > 1000, "{ok} not recovered from {s}");
                                r + 1
                            }
                            None => r + 1,
                        };
                        let until = r.max(want - 1) + PER_CYCLE;
                        while want <= until {
                            let m = next_json(&mut c);
                            assert_eq!(
                                (m["channel"].as_str(), m["offset"].as_u64()),
                                (Some(CH), Some(want)),
                                "subscriber {k} cycle {cycle}: subscribed at {r} (since {since:?}): {m}"
                            );
                            want += 1;
                        }
                        send(&mut c, json!({"type": "unsubscribe", "channel": CH}));
                        loop {
                            let m = next_json(&mut c);
                            if m["type"] == "unsubscribed" {
                                break;
                            }
                            assert_eq!(
                                (m["channel"].as_str(), m["offset"].as_u64()),
                                (Some(CH), Some(want)),
                                "subscriber {k} cycle {cycle}: before unsubscribed: {m}"
                            );
                            want += 1;
                        }
                        last = Some((epoch, want - 1));
                    }
                    // Nothing of the channel after the last `unsubscribed`:
                    // a ping's pong comes next.
                    send(&mut c, json!({"type": "ping"}));
                    assert_eq!(next_json(&mut c), json!({"type": "pong"}), "subscriber {k}");
                })
            })
            .collect();
        for s in subscribers {
            if let Err(e) = s.join() {
                std::panic::resume_unwind(e);
            }
        }
    });
    assert!(published.load(Ordering::Relaxed) > 0);
}

// ---- one process only --------------------------------------------------------------

#[test]
fn a_restart_changes_the_epoch() {
    let s = start();
    let t = token_with("u", &["project:1"]);
    let mut c = ws(s.addr, &t);
    let epoch = subscribe(&mut c, "project:1", None)["epoch"].as_str().unwrap().to_string();
    let r = broadcast(s.addr, &token("publisher"), r#"{"type":"t","data":1,"channel":"project:1"}"#);
    assert_eq!(r.status, 200);
    assert_eq!(offsets(&mut c, 1), [1]);
    drop(c);
    s.stop().unwrap();
    let s = start();
    let r = broadcast(s.addr, &token("publisher"), r#"{"type":"t","data":2,"channel":"project:1"}"#);
    assert_eq!(r.status, 200);
    let mut c = ws(s.addr, &t);
    let ok = subscribe(&mut c, "project:1", Some((&epoch, 1)));
    assert_ne!(ok["epoch"], epoch);
    assert_eq!(ok["recovered"], false);
    let r = broadcast(s.addr, &token("publisher"), r#"{"type":"sentinel","data":null}"#);
    assert_eq!(r.status, 200);
    assert_eq!(next_json(&mut c), json!({"type": "sentinel", "payload": null}), "nothing replayed");
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

both_homes! {
    user_channels_reach_only_that_user: untuned,
    the_user_channel_joined_at_connect_gets_what_is_published_after: untuned,
    project_messages_reach_exactly_their_subscribers: untuned,
    refused_subscribes_get_their_error_and_the_connection_works: |c| c.max_subscriptions = 3,
    reconnect_with_since_replays_exactly_the_gap_then_live: untuned,
    the_user_channel_recovers_too: untuned,
    publishes_racing_a_resubscribe_leave_no_gap_or_duplicate: |c| c.history_size = 1000,
    history_overflow_gives_recovered_false_and_no_replay: |c| c.history_size = 3,
    a_refresh_that_drops_a_grant_leaves_that_channel: untuned,
    a_slow_client_closed_with_1013_recovers_what_it_missed: |c| {
        c.send_queue_limit = 16;
        c.history_size = 10_000;
    },
    random_interleavings_never_lose_or_duplicate_what_history_holds: |c| c.history_size = 6,
    a_replay_larger_than_max_output_bytes_is_not_sent: |c| {
        c.max_broadcast_bytes = 1000;
        c.max_output_bytes = 4000;
    },
    thousands_of_subscribes_and_unsubscribes_leave_nothing_behind: |c| {
        c.client_msg_rate = 1_000_000;
        c.client_msg_burst = 1_000_000;
    },
    publishers_on_several_instances_give_one_order_and_the_same_offsets: untuned,
    two_subscribes_at_once_each_get_every_offset_after_theirs_once: |c| c.history_size = 1000,
    answers_leave_in_request_order: untuned,
    after_subscribed_at_r_no_message_at_or_below_r_arrives: |c| c.history_size = 1000,
}
