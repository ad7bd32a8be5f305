//! Publish latency through the Redis link against a real local
//! redis-server: `cargo bench --bench redis_link`.
//!
//! For each publish: send → `Published` on the publishing link (the HTTP
//! answer's wait) and send → `Message` on a second, subscribed link (the
//! delivery to another instance). Once with one publish in flight at a
//! time, once with 8 in flight (the thread pipelines what queues up).
//! Prints p50/p99/max; not a pass/fail test.

#[path = "../tests/common/redis_server.rs"]
mod redis_server;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};
use taskcast::cluster::{Command, Event, HistorySettings, RedisConfig, RedisLink};

const N: u64 = 1000;
const WAIT: Duration = Duration::from_secs(10);

struct Side {
    link: RedisLink,
    poll: Poll,
    events: Events,
}

impl Side {
    fn start(url: &str) -> Side {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(0)).unwrap());
        let config = RedisConfig { url: url.into(), prefix: "bench".into() };
        let history = HistorySettings { size: 100, ttl: Duration::from_secs(300) };
        let link = RedisLink::start(&config, history, waker).unwrap();
        Side { link, poll, events: Events::with_capacity(16) }
    }

    /// Waits (bounded) for events and hands each to `f`, until `f` says stop.
    fn until(&mut self, mut f: impl FnMut(Event) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            while let Some(e) = self.link.try_recv() {
                if f(e) {
                    return;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out");
            self.poll.poll(&mut self.events, Some(left)).unwrap();
        }
    }
}

fn publish(side: &Side, id: u64) {
    let payload = format!("{{\"task\":{id},\"title\":\"a typical task update of about a hundred bytes\"}}");
    let cmd = Command::Publish { id, channel: "project:1".into(), kind: "task_updated".into(), payload };
    side.link.send(cmd).expect("queued");
}

/// Runs N publishes with `in_flight` outstanding; send -> Published
/// latency of each. The subscriber is drained as it goes.
fn run(publisher: &mut Side, subscriber: &mut Side, in_flight: u64, first_id: u64) -> Vec<Duration> {
    let mut sent: HashMap<u64, Instant> = HashMap::new();
    let mut acked = Vec::new();
    let mut next = first_id;
    let end = first_id + N;
    while (acked.len() as u64) < N {
        while next < end && (sent.len() as u64) < in_flight {
            sent.insert(next, Instant::now());
            publish(publisher, next);
            next += 1;
        }
        publisher.until(|e| match e {
            Event::Published { id, .. } => {
                acked.push(sent.remove(&id).expect("sent").elapsed());
                true
            }
            Event::Message { .. } => false,
            other => panic!("{other:?}"),
        });
        while subscriber.link.try_recv().is_some() {}
    }
    acked
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

fn report(what: &str, v: &mut [Duration]) {
    println!(
        "{what:<44} p50 {:>8.1?}  p99 {:>8.1?}  max {:>8.1?}  (n={})",
        pct(v, 0.50),
        pct(v, 0.99),
        pct(v, 1.0),
        v.len()
    );
}

fn main() {
    let redis = redis_server::RedisServer::start();
    let url = redis.url();
    let mut publisher = Side::start(&url);
    let mut subscriber = Side::start(&url);
    for side in [&mut publisher, &mut subscriber] {
        side.until(|e| matches!(e, Event::LinkUp));
    }
    subscriber.link.send(Command::Subscribe { channel: "project:1".into() }).unwrap();
    subscriber.until(|e| matches!(e, Event::Subscribed { .. }));

    for (in_flight, first) in [(1, 0), (8, 10 * N)] {
        // Warm-up (connections, script cache, allocator).
        run(&mut publisher, &mut subscriber, in_flight, first + 5 * N);
        let t = Instant::now();
        let mut acked = run(&mut publisher, &mut subscriber, in_flight, first);
        let rate = N as f64 / t.elapsed().as_secs_f64();
        report(&format!("publish -> Published, {in_flight} in flight"), &mut acked);
        println!("{:<44} {rate:.0} publishes/s", "");
    }

    // Delivery to another instance: one at a time, send -> that Message.
    let mut delivered = Vec::new();
    for id in 100 * N..101 * N {
        let t = Instant::now();
        publish(&publisher, id);
        let tag = format!("{{\"task\":{id},");
        subscriber.until(|e| matches!(e, Event::Message { payload, .. } if payload.starts_with(&tag)));
        delivered.push(t.elapsed());
    }
    report("publish -> Message on another link, 1 in flight", &mut delivered);
    while publisher.link.try_recv().is_some() {}
}
