//! Publishers answered first, subscriber writes coalesced under load: the
//! order and completeness guarantees hold, answers do not wait for fan-out,
//! and a lone broadcast is not held back.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use tungstenite::Message;

#[test]
fn concurrent_publishers_every_subscriber_gets_everything_in_one_order() {
    let mut cfg = config();
    cfg.flush_delay = Duration::from_millis(2);
    cfg.broadcast_rate = 0;
    let s = start_with(cfg);
    let mut subs: Vec<Ws> = (0..20).map(|i| ws(s.addr, &token(&format!("s{i}")))).collect();
    wait_clients(s.addr, 20);
    const PUBLISHERS: usize = 4;
    const EACH: usize = 500;
    let threads: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let addr = s.addr;
            std::thread::spawn(move || {
                // One request in flight, as a Server Action posts.
                let mut h = Http::connect(addr);
                let t = token("publisher");
                for i in 0..EACH {
                    let body = format!(r#"{{"type":"t","data":{{"p":{p},"i":{i}}}}}"#);
                    h.send(broadcast_request(&t, &body).as_bytes());
                    assert_eq!(h.response().status, 200);
                }
            })
        })
        .collect();
    let mut first: Option<Vec<(u64, u64)>> = None;
    for c in subs.iter_mut() {
        let got: Vec<(u64, u64)> = (0..PUBLISHERS * EACH)
            .map(|_| {
                let v = next_json(c);
                (v["payload"]["p"].as_u64().unwrap(), v["payload"]["i"].as_u64().unwrap())
            })
            .collect();
        for p in 0..PUBLISHERS as u64 {
            let mine: Vec<u64> = got.iter().filter(|(q, _)| *q == p).map(|(_, i)| *i).collect();
            assert_eq!(mine, (0..EACH as u64).collect::<Vec<_>>(), "publisher {p}'s messages, in its order");
        }
        match &first {
            None => first = Some(got),
            Some(f) => assert_eq!(f, &got, "every subscriber sees the same accepted order"),
        }
    }
    for t in threads {
        t.join().unwrap();
    }
}

/// Reads one text message if one arrives within `wait`.
fn try_next(c: &mut Ws, wait: Duration) -> Option<Value> {
    c.get_ref().set_read_timeout(Some(wait)).unwrap();
    let r = loop {
        match c.read() {
            Ok(Message::Text(t)) => break Some(serde_json::from_str(&t).unwrap()),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                break None;
            }
            Err(e) => panic!("{e}"),
        }
    };
    c.get_ref().set_read_timeout(Some(WAIT)).unwrap();
    r
}

#[test]
fn the_answer_leaves_before_held_back_frames_and_a_lone_broadcast_is_not_held() {
    let mut cfg = config();
    // A long window makes "held back" observable without racing the clock.
    cfg.flush_delay = Duration::from_millis(400);
    let s = start_with(cfg);
    let mut sub = ws(s.addr, &token("s"));
    wait_clients(s.addr, 1);
    let t = token("publisher");
    let mut h = Http::connect(s.addr);
    // Idle: the first broadcast is written at once.
    h.send(broadcast_request(&t, r#"{"type":"t","data":1}"#).as_bytes());
    assert_eq!(h.response().json()["recipients"], 1);
    assert_eq!(try_next(&mut sub, Duration::from_millis(200)).expect("not delayed")["payload"], 1);
    // Right behind it: this one is held for the window, but its answer is not.
    h.send(broadcast_request(&t, r#"{"type":"t","data":2}"#).as_bytes());
    assert_eq!(h.response().json()["recipients"], 1);
    assert!(try_next(&mut sub, Duration::from_millis(50)).is_none(), "frame 2 should still be held back");
    assert_eq!(next_json(&mut sub)["payload"], 2, "held at most the window, then written");
    // Idle again for longer than the window: not delayed.
    std::thread::sleep(Duration::from_millis(450));
    h.send(broadcast_request(&t, r#"{"type":"t","data":3}"#).as_bytes());
    assert_eq!(h.response().status, 200);
    assert_eq!(try_next(&mut sub, Duration::from_millis(200)).expect("a lone broadcast is not delayed")["payload"], 3);
    // Control answers never wait: a ping right after a held broadcast.
    h.send(broadcast_request(&t, r#"{"type":"t","data":4}"#).as_bytes());
    assert_eq!(h.response().status, 200);
    h.send(broadcast_request(&t, r#"{"type":"t","data":5}"#).as_bytes());
    assert_eq!(h.response().status, 200);
    sub.send(Message::text(r#"{"type":"ping"}"#)).unwrap();
    // The pong flushes the connection, held frames included, in order.
    let got: Vec<Value> = (0..3).map(|_| try_next(&mut sub, Duration::from_millis(200)).expect("not held")).collect();
    assert_eq!(got[0]["payload"], 4);
    assert_eq!(got[1]["payload"], 5);
    assert_eq!(got[2]["type"], "pong");
}

#[test]
fn flush_delay_zero_writes_every_turn() {
    let mut cfg = config();
    cfg.flush_delay = Duration::ZERO;
    let s = start_with(cfg);
    let mut sub = ws(s.addr, &token("s"));
    wait_clients(s.addr, 1);
    let t = token("publisher");
    let mut h = Http::connect(s.addr);
    for i in 0..5 {
        h.send(broadcast_request(&t, &format!(r#"{{"type":"t","data":{i}}}"#)).as_bytes());
        assert_eq!(h.response().status, 200);
        assert_eq!(try_next(&mut sub, Duration::from_millis(300)).expect("written at once")["payload"], i);
    }
}
