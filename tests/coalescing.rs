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
fn with_few_subscribers_nothing_is_held_even_back_to_back() {
    let mut cfg = config();
    // A long cap: were frames held for it, the reads below would time out.
    cfg.flush_delay = Duration::from_millis(400);
    let s = start_with(cfg);
    let mut sub = ws(s.addr, &token("s"));
    wait_clients(s.addr, 1);
    let t = token("publisher");
    let mut h = Http::connect(s.addr);
    // Writing one subscriber costs microseconds, so the hold (the last
    // round's cost, capped at the delay) is microseconds too.
    for i in 0..20 {
        h.send(broadcast_request(&t, &format!(r#"{{"type":"t","data":{i}}}"#)).as_bytes());
        assert_eq!(h.response().status, 200);
        assert_eq!(try_next(&mut sub, Duration::from_millis(200)).expect("not held")["payload"], i);
    }
    // Control answers never wait either.
    sub.send(Message::text(r#"{"type":"ping"}"#)).unwrap();
    assert_eq!(try_next(&mut sub, Duration::from_millis(200)).expect("not held")["type"], "pong");
}

/// Answer-first seen from outside: it needs the test thread to look within
/// a window of a few hundred microseconds, which a busy 2-core machine does
/// not give reliably (it failed here on the code it was written for, 41c72f4,
/// as often as on today's). Run it by hand on a quiet machine; the
/// publisher's answer time under load is measured by `.ci/compare` (POST
/// answer p50/p99, docs/performance.md).
#[test]
#[ignore = "timing-dependent: needs a quiet machine (cargo test -- --ignored)"]
fn the_publisher_is_answered_before_the_subscribers_are_written() {
    let mut cfg = config();
    cfg.max_connections_per_ip = 0;
    let s = start_with(cfg);
    // Enough subscribers that writing them all takes many FLUSH_SLICEs.
    let mut subs: Vec<Ws> = (0..1500).map(|i| ws(s.addr, &token(&format!("s{i}")))).collect();
    wait_clients(s.addr, 1500);
    let t = token("publisher");
    let mut h = Http::connect(s.addr);
    let mut held = 0;
    // Up to 40 broadcasts, stopping at the first one seen held back: on a
    // busy machine the test thread may lose the CPU right after an answer
    // (the server then writes everyone before it looks), so one try proves
    // little either way; forty that all miss mean answer-first is broken.
    for i in 0..40 {
        if held > 0 {
            break;
        }
        h.send(broadcast_request(&t, &format!(r#"{{"type":"t","data":{i}}}"#)).as_bytes());
        assert_eq!(h.response().json()["recipients"], 1500);
        // The last subscriber in write order is written slices after the
        // answer left: it has not got the message yet.
        let early = try_next(subs.last_mut().unwrap(), Duration::from_micros(1));
        match &early {
            None => held += 1,
            Some(m) => assert_eq!(m["payload"], i),
        }
        let n = subs.len() - usize::from(early.is_some());
        for c in subs.iter_mut().take(n) {
            assert_eq!(next_json(c)["payload"], i);
        }
    }
    // Before answer-first, the answer left after every subscriber write, so
    // the last subscriber always had the message: `held` stayed 0.
    assert!(held >= 1, "the answer came after the last subscriber write in all 40 broadcasts");
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
