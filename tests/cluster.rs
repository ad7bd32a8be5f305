//! Several taskcast instances on one real Redis: a client recovers on any
//! instance (even when its own went away), and Redis faults have defined
//! answers. The delivery scenarios that hold in both homes (same order and
//! offsets on every instance, replay, hand-off, …) run in tests/channels.rs
//! against three instances too.

mod common;

use std::net::SocketAddr;
use std::time::Instant;

use common::home::{instance, instance_with, wait_ready};
use common::redis_server::RedisServer;
use common::*;
use serde_json::{Value, json};
use tungstenite::Message;

fn member(sub: &str) -> String {
    sign(&json!({"sub": sub, "exp": now() + 3600, "channels": ["project:*"]}))
}

fn subscribe(c: &mut Ws, channel: &str, since: Option<(&str, u64)>) -> Value {
    let mut msg = json!({"type": "subscribe", "channel": channel});
    if let Some((epoch, offset)) = since {
        msg["since"] = json!({"epoch": epoch, "offset": offset});
    }
    c.send(Message::text(msg.to_string())).unwrap();
    next_json(c)
}

fn publish(addr: SocketAddr, channel: &str, data: Value) -> HttpResponse {
    broadcast(addr, &token("publisher"), &json!({"type": "task_updated", "data": data, "channel": channel}).to_string())
}

fn offsets(c: &mut Ws, n: usize) -> Vec<(u64, Value)> {
    (0..n)
        .map(|_| {
            let m = next_json(c);
            (m["offset"].as_u64().unwrap_or_else(|| panic!("not a channel message: {m}")), m["payload"].clone())
        })
        .collect()
}

#[test]
fn a_client_moving_to_another_instance_recovers_exactly_what_it_missed() {
    let redis = RedisServer::start();
    let (a, b) = (instance(&redis, "t2"), instance(&redis, "t2"));
    let t = member("mover");
    let mut c = ws(a.addr, &t);
    let ok = subscribe(&mut c, "project:7", None);
    let epoch = ok["epoch"].as_str().unwrap().to_string();
    for i in 0..3 {
        assert_eq!(publish(a.addr, "project:7", json!(i)).status, 200);
    }
    let seen = offsets(&mut c, 3);
    let last = seen[2].0;
    // Its instance goes away (a deploy); messages keep coming meanwhile.
    drop(c);
    a.stop().unwrap();
    for i in 3..8 {
        assert_eq!(publish(b.addr, "project:7", json!(i)).status, 200);
    }
    let mut c = ws(b.addr, &t);
    let ok = subscribe(&mut c, "project:7", Some((&epoch, last)));
    assert_eq!(ok["recovered"], true, "{ok}");
    assert_eq!(ok["offset"], last + 5);
    let got = offsets(&mut c, 5);
    assert_eq!(got.iter().map(|(o, _)| *o).collect::<Vec<_>>(), (last + 1..=last + 5).collect::<Vec<_>>());
    assert_eq!(got.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>(), (3..8).map(|i| json!(i)).collect::<Vec<_>>());
    // Then live.
    assert_eq!(publish(b.addr, "project:7", json!("live")).status, 200);
    assert_eq!(offsets(&mut c, 1)[0], (last + 6, json!("live")));
}

#[test]
fn redis_down_means_503_clients_kept_and_back_means_delivery_resumes() {
    let mut redis = RedisServer::start();
    let (a, b) = (instance(&redis, "t3"), instance(&redis, "t3"));
    let mut c = ws(b.addr, &member("u"));
    assert_eq!(subscribe(&mut c, "project:1", None)["type"], "subscribed");
    assert_eq!(publish(a.addr, "project:1", json!(1)).status, 200);
    assert_eq!(offsets(&mut c, 1)[0].1, json!(1));
    redis.stop();
    // Never a 200 for a message that was not stored.
    let deadline = Instant::now() + WAIT;
    let r = loop {
        let r = publish(a.addr, "project:1", json!("lost?"));
        if r.status != 200 || Instant::now() > deadline {
            break r;
        }
    };
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.header("Retry-After").is_some());
    assert_eq!(r.json()["error"], "service_unavailable");
    // Readiness says why; /health keeps its meaning (the process is up).
    let ready = get(a.addr, "/ready");
    assert_eq!((ready.status, ready.json()["reason"].as_str()), (503, Some("redis_down")));
    assert_eq!(get(a.addr, "/health").status, 200);
    // Clients stay connected.
    c.send(Message::text(r#"{"type":"ping"}"#)).unwrap();
    loop {
        let m = next_json(&mut c);
        if m["type"] == "pong" {
            break;
        }
        assert_ne!(m["payload"], "lost?", "a refused publish was delivered");
    }
    redis.restart();
    wait_ready(a.addr);
    wait_ready(b.addr);
    assert_eq!(get(a.addr, "/ready").status, 200);
    // Redis came back empty (no persistence): the stream restarted under a
    // new epoch, so B tells its client to refetch rather than hide the gap.
    let mut saw_resync = false;
    while !saw_resync {
        let m = next_json(&mut c);
        assert_ne!(m["payload"], "lost?", "a refused publish was delivered");
        // Its user channel (joined at connect, at its position then) is
        // told too: the new epoch may hide messages it did not get.
        if m["type"] == "subscribed" {
            assert_eq!(m["recovered"], false, "{m}");
            saw_resync |= m["channel"] == "project:1";
        }
    }
    // Then live delivery resumes.
    assert_eq!(publish(a.addr, "project:1", json!("after")).status, 200);
    let m = loop {
        let m = next_json(&mut c);
        if m["channel"] == "project:1" {
            break m;
        }
        assert_eq!((&m["type"], &m["channel"]), (&json!("subscribed"), &json!("user:u")), "{m}");
    };
    assert_eq!((&m["offset"], &m["payload"]), (&json!(1), &json!("after")), "{m}");
    assert!(saw_resync, "the gap was reported");
}

#[test]
fn a_lost_pubsub_connection_is_repaired_from_history() {
    let redis = RedisServer::start();
    let (a, b) = (instance(&redis, "t4"), instance(&redis, "t4"));
    let mut c = ws(b.addr, &member("u"));
    let first = subscribe(&mut c, "project:1", None)["offset"].as_u64().unwrap();
    // Cut B's pub/sub connection (the one in the most channels: broadcast,
    // control, user:u and project:1; A's is only in broadcast and control)
    // while A publishes: B misses them on pub/sub and must fill them from
    // the stream.
    let list: String = redis.cmd(&["CLIENT", "LIST", "TYPE", "pubsub"]);
    let ids: Vec<String> = list
        .lines()
        .filter(|l| l.split(' ').any(|f| f.strip_prefix("sub=").and_then(|n| n.parse::<u32>().ok()) >= Some(3)))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")).map(str::to_string))
        .collect();
    assert_eq!(ids.len(), 1, "{list}");
    let _: i64 = redis.cmd(&["CLIENT", "KILL", "ID", &ids[0]]);
    for i in 0..5 {
        assert_eq!(publish(a.addr, "project:1", json!(i)).status, 200);
    }
    let got = offsets(&mut c, 5);
    assert_eq!(got.iter().map(|(o, _)| *o).collect::<Vec<_>>(), (first + 1..=first + 5).collect::<Vec<_>>());
    assert_eq!(publish(a.addr, "project:1", json!("next")).status, 200);
    assert_eq!(offsets(&mut c, 1)[0].1, json!("next"));
}

#[test]
fn flushall_gives_recovered_false_never_a_wrong_replay() {
    let redis = RedisServer::start();
    let a = instance(&redis, "t5");
    let t = member("u");
    let mut c = ws(a.addr, &t);
    let ok = subscribe(&mut c, "project:1", None);
    let epoch = ok["epoch"].as_str().unwrap().to_string();
    for i in 0..3 {
        assert_eq!(publish(a.addr, "project:1", json!(i)).status, 200);
    }
    let last = offsets(&mut c, 3)[2].0;
    drop(c);
    wait_clients(a.addr, 0);
    let _: String = redis.cmd(&["FLUSHALL"]);
    for i in 0..5 {
        assert_eq!(publish(a.addr, "project:1", json!(i)).status, 200);
    }
    let mut c = ws(a.addr, &t);
    let ok = subscribe(&mut c, "project:1", Some((&epoch, last)));
    assert_eq!(ok["recovered"], false, "{ok}");
    assert_ne!(ok["epoch"], epoch);
    assert_eq!(publish(a.addr, "project:1", json!("live")).status, 200);
    assert_eq!(offsets(&mut c, 1)[0].1, json!("live"), "nothing replayed");
}

#[test]
fn two_processes_share_one_port_with_reuse_port() {
    let redis = RedisServer::start();
    let mk = |port: u16| {
        let mut cfg = config();
        cfg.reuse_port = true;
        cfg.addr = format!("127.0.0.1:{port}").parse().unwrap();
        cfg.redis = taskcast::cluster::parse_redis_env(&|k| match k {
            "REDIS_URL" => Some(redis.url()),
            "REDIS_PREFIX" => Some("t6".to_string()),
            _ => None,
        })
        .unwrap();
        start_with(cfg)
    };
    let a = mk(0);
    let b = mk(a.addr.port());
    assert_eq!(a.addr, b.addr, "both listen on one port");
    wait_ready(a.addr);
    // Without REUSE_PORT the same bind fails.
    let mut plain = config();
    plain.addr = a.addr;
    assert!(taskcast::Server::bind(plain).is_err());
    // Clients spread over both (the kernel's choice); every one of them gets
    // a broadcast published through the shared port.
    let mut clients: Vec<Ws> = (0..16).map(|i| ws(a.addr, &token(&format!("u{i}")))).collect();
    // The instance whose link to Redis is not up yet (only one port can be
    // probed) joins its clients' user channels once it is, and says so with
    // an unasked `subscribed` (recovered:false): not what this test is about.
    let next = |c: &mut Ws| loop {
        let m = next_json(c);
        if !(m["type"] == "subscribed" && m["channel"].as_str().is_some_and(|ch| ch.starts_with("user:"))) {
            break m;
        }
    };
    for c in clients.iter_mut() {
        c.send(Message::text(r#"{"type":"ping"}"#)).unwrap();
        assert_eq!(next(c)["type"], "pong");
    }
    let r = broadcast(a.addr, &token("publisher"), r#"{"type":"task_created","data":1}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    for c in clients.iter_mut() {
        assert_eq!(next(c), json!({"type": "task_created", "payload": 1}));
    }
}

#[test]
fn an_instance_killed_under_load_loses_nothing_its_clients_recover_elsewhere() {
    let redis = RedisServer::start();
    let mut a = start_binary(taskcast_cmd().envs([
        ("JWT_SECRET", SECRET),
        ("REDIS_URL", &redis.url()),
        ("REDIS_PREFIX", "t7"),
        // Room for the whole run: how far the publisher gets before the
        // client is back depends on the machine's load.
        ("HISTORY_SIZE", "1000"),
    ]));
    wait_ready(a.addr);
    let b = instance_with(&redis, "t7", |c| c.history_size = 1000);
    let t = member("victim");
    let mut c = ws(a.addr, &t);
    let ok = subscribe(&mut c, "project:9", None);
    let (epoch, base) = (ok["epoch"].as_str().unwrap().to_string(), ok["offset"].as_u64().unwrap());
    const TOTAL: u64 = 300;
    let addr = b.addr;
    let publisher = std::thread::spawn(move || {
        let mut h = Http::connect(addr);
        let t = token("publisher");
        for i in 0..TOTAL {
            let body = format!(r#"{{"type":"t","data":{i},"channel":"project:9"}}"#);
            h.send(broadcast_request(&t, &body).as_bytes());
            assert_eq!(h.response().status, 200);
        }
    });
    let mut seen: Vec<u64> = (0..50).map(|_| offsets(&mut c, 1)[0].0).collect();
    // The instance dies mid-stream: no close frame, no drain.
    a.signal(libc::SIGKILL);
    let _ = a.wait_exit(WAIT);
    drop(c);
    let mut c = ws(b.addr, &t);
    let last = *seen.last().unwrap();
    let ok = subscribe(&mut c, "project:9", Some((&epoch, last)));
    assert_eq!(ok["recovered"], true, "{ok}");
    while seen.len() < TOTAL as usize {
        seen.push(offsets(&mut c, 1)[0].0);
    }
    publisher.join().unwrap();
    assert_eq!(seen, (base + 1..=base + TOTAL).collect::<Vec<_>>(), "every message once, in order");
}
