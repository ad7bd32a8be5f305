//! The staggered drain (SIGTERM / `ShutdownHandle::drain`): /ready turns
//! 503 at once, upgrades are refused, clients get 1012 spread over
//! DRAIN_SECS, then the grace period and exit 0; a second signal finishes
//! at once with 1001.

mod common;
use common::*;
use std::time::{Duration, Instant};

#[test]
fn sigterm_spreads_1012_closes_over_drain_secs_then_exits_0() {
    const N: usize = 20;
    let mut srv = start_binary(taskcast_cmd().envs([
        ("JWT_SECRET", SECRET),
        ("DRAIN_SECS", "2"),
        ("SHUTDOWN_GRACE_SECS", "2"),
        ("MAX_CONNECTIONS_PER_IP", "0"),
    ]));
    let addr = srv.addr;
    let r = get(addr, "/ready");
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"status":"ready"}"#));
    let watchers: Vec<_> =
        (0..N).map(|i| watch_close(ws(addr, &token(&format!("u{i}"))), Duration::from_secs(10))).collect();
    wait_clients(addr, N as u64);

    let t0 = Instant::now();
    srv.signal(libc::SIGTERM);
    let r = wait_status(addr, "/ready", 503);
    assert_eq!(r.json(), serde_json::json!({"status": "not_ready", "reason": "draining"}));
    assert!(t0.elapsed() < Duration::from_secs(1), "/ready took {:?} to fail", t0.elapsed());
    // The process is alive and says so; it only wants no new clients.
    let h = get(addr, "/health");
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");
    match ws_try(addr, &format!("/ws?token={}", token("late")), &[]) {
        Err((status, _)) => assert_eq!(status, 503, "an upgrade during the drain"),
        Ok(_) => panic!("an upgrade during the drain was accepted"),
    }
    // (The drain ends at 2 s, and the listener with it.)
    assert!(t0.elapsed() < Duration::from_millis(1500), "the checks above ran late: {:?}", t0.elapsed());

    let mut closes: Vec<(Instant, u16)> =
        watchers.into_iter().map(|w| w.join().unwrap().expect("every client gets a close frame")).collect();
    assert!(
        closes.iter().all(|&(_, code)| code == 1012),
        "codes: {:?}",
        closes.iter().map(|c| c.1).collect::<Vec<_>>()
    );
    closes.sort();
    let (first, last) = (closes[0].0, closes[N - 1].0);
    let offsets: Vec<u128> = closes.iter().map(|c| (c.0 - t0).as_millis()).collect();
    assert!(last - first >= Duration::from_secs(1), "closes not spread: ms after SIGTERM {offsets:?}");
    assert!(last - t0 <= Duration::from_millis(3000), "the drain overran DRAIN_SECS: {offsets:?}");
    // Evenly: no 0.5 s slot holds more than about a third of the clients.
    for &(start, _) in &closes {
        let in_slot = closes.iter().filter(|c| c.0 >= start && c.0 < start + Duration::from_millis(500)).count();
        assert!(in_slot <= N / 3 + 1, "{in_slot} closes within 0.5 s: ms after SIGTERM {offsets:?}");
    }
    assert_eq!(srv.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert!(t0.elapsed() < Duration::from_secs(5), "exit took {:?} (drain 2 s + grace 2 s)", t0.elapsed());
}

#[test]
fn second_sigterm_ends_a_long_drain_with_1001() {
    const N: usize = 30;
    let mut srv = start_binary(taskcast_cmd().envs([
        ("JWT_SECRET", SECRET),
        ("DRAIN_SECS", "30"),
        ("SHUTDOWN_GRACE_SECS", "5"),
        ("MAX_CONNECTIONS_PER_IP", "0"),
    ]));
    let addr = srv.addr;
    let watchers: Vec<_> =
        (0..N).map(|i| watch_close(ws(addr, &token(&format!("u{i}"))), Duration::from_secs(20))).collect();
    wait_clients(addr, N as u64);
    srv.signal(libc::SIGTERM);
    // One client a second: wait until the first has gone.
    wait_clients(addr, N as u64 - 1);
    let t1 = Instant::now();
    srv.signal(libc::SIGTERM);
    assert_eq!(srv.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert!(t1.elapsed() < Duration::from_secs(2), "the second SIGTERM took {:?} to end it", t1.elapsed());
    let codes: Vec<u16> = watchers.into_iter().map(|w| w.join().unwrap().expect("a close frame").1).collect();
    let restarted = codes.iter().filter(|&&c| c == 1012).count();
    assert!((1..N / 2).contains(&restarted), "codes: {codes:?}");
    assert!(codes.iter().all(|&c| c == 1012 || c == 1001), "codes: {codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 1001).count(), N - restarted);
}

#[test]
fn in_process_drain_closes_with_1012_and_shutdown_finishes_it() {
    // A drain that runs to its end.
    let mut c = config();
    c.drain = Duration::from_millis(300);
    let s = start_with(c);
    let watchers: Vec<_> = (0..3).map(|i| watch_close(ws(s.addr, &token(&format!("u{i}"))), WAIT)).collect();
    wait_clients(s.addr, 3);
    s.handle.drain();
    assert_eq!(wait_status(s.addr, "/ready", 503).json()["reason"], "draining");
    for w in watchers {
        assert_eq!(w.join().unwrap().map(|c| c.1), Some(1012));
    }
    s.stop().unwrap();

    // shutdown() during a long drain: the rest get 1001 now.
    let mut c = config();
    c.drain = Duration::from_secs(60);
    let s = start_with(c);
    let watchers: Vec<_> = (0..3).map(|i| watch_close(ws(s.addr, &token(&format!("u{i}"))), WAIT)).collect();
    wait_clients(s.addr, 3);
    s.handle.drain();
    wait_status(s.addr, "/ready", 503);
    let t = Instant::now();
    s.stop().unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "shutdown during a drain took {:?}", t.elapsed());
    for w in watchers {
        assert_eq!(w.join().unwrap().map(|c| c.1), Some(1001));
    }
}
