//! The CPU-only hot paths, no network: framing a broadcast, parsing a
//! request, verifying a token, queueing to N clients, heartbeat upkeep.
//!
//! `fanout_queue/shared` vs `fanout_queue/encode_per_client` is the guard on
//! the design rule "serialize and frame once, share the bytes": if the
//! shared path ever stops being far cheaper, something regressed.
//!
//! `fanout_queue/shared_with_metrics` is the same fan-out with the
//! metrics `Server::broadcast` records (one counter add and one histogram
//! observation per broadcast, not per client): it must stay level with
//! `shared`. `metrics/scrape_10k` encodes a whole scrape as `/metrics`
//! does, with values a server with 10k clients would have.
//!
//! Run: `cargo bench --bench hot_path`

use std::hint::black_box;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use taskcast::auth::{AuthError, Verifier, mint};
use taskcast::metrics::{Metrics, Snapshot};
use taskcast::outqueue::OutQueue;
use taskcast::timers::Timers;
use taskcast::{Config, broadcast, http};

const SECRET: &str = "bench-secret-bench-secret-bench-secret";

fn body(payload_bytes: usize) -> String {
    format!(r#"{{"type":"task_updated","data":{{"id":"t-1","title":"{}"}}}}"#, "x".repeat(payload_bytes))
}

fn envelope(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope");
    for (name, n) in [("100B", 100), ("1KiB", 1024), ("16KiB", 16 * 1024)] {
        let b = body(n);
        g.throughput(Throughput::Bytes(b.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &b, |bench, b| {
            bench.iter(|| broadcast::parse(black_box(b.as_bytes())).unwrap())
        });
    }
    g.finish();
}

fn request(c: &mut Criterion) {
    // A BetterAuth-sized token (the user object makes it ~900 bytes).
    let claims =
        serde_json::json!({"sub":"u","exp": taskcast::auth::now_secs() + 3600, "user": {"name": "x".repeat(600)}});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let b = body(150);
    let raw = format!(
        "POST /api/broadcast HTTP/1.1\r\nHost: localhost:8080\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: keep-alive\r\nUser-Agent: node\r\n\r\n{b}",
        b.len()
    );
    let mut g = c.benchmark_group("request");
    g.bench_function("parse_head+body", |bench| {
        bench.iter(|| {
            let head = http::parse_head(black_box(raw.as_bytes()), 65536).unwrap().unwrap();
            broadcast::parse(&raw.as_bytes()[head.head_len..]).unwrap()
        })
    });
    let verifier = Verifier::new(&Config::for_tests(SECRET)).expect("HS256 only: nothing to load");
    g.bench_function("verify_jwt_hs256_900B", |bench| bench.iter(|| verifier.verify(black_box(&token)).unwrap()));
    let small = mint(SECRET.as_bytes(), "u", 3600);
    g.bench_function("verify_jwt_hs256_small", |bench| bench.iter(|| verifier.verify(black_box(&small)).unwrap()));
    g.finish();
}

/// Queue one broadcast to N clients, as `Server::fan_out` does, versus
/// building the envelope and frame for each client.
fn fanout_queue(c: &mut Criterion) {
    let b = body(150);
    let mut g = c.benchmark_group("fanout_queue");
    for n in [1usize, 100, 1000, 10_000] {
        g.throughput(Throughput::Elements(n as u64));
        let mut queues: Vec<OutQueue> = (0..n).map(|_| OutQueue::default()).collect();
        g.bench_with_input(BenchmarkId::new("shared", n), &n, |bench, _| {
            bench.iter(|| {
                let (_, frame) = broadcast::parse(b.as_bytes()).unwrap();
                for q in queues.iter_mut() {
                    q.push_shared(Rc::clone(&frame));
                }
                for q in queues.iter_mut() {
                    q.drop_unstarted();
                }
            })
        });
        let metrics = Metrics::new(false, false);
        g.bench_with_input(BenchmarkId::new("shared_with_metrics", n), &n, |bench, _| {
            bench.iter(|| {
                let started = Instant::now();
                let (_, frame) = broadcast::parse(b.as_bytes()).unwrap();
                for q in queues.iter_mut() {
                    q.push_shared(Rc::clone(&frame));
                }
                metrics.fanned_out(queues.len(), started.elapsed());
                for q in queues.iter_mut() {
                    q.drop_unstarted();
                }
            })
        });
        g.bench_with_input(BenchmarkId::new("encode_per_client", n), &n, |bench, _| {
            bench.iter(|| {
                for q in queues.iter_mut() {
                    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
                    let text =
                        serde_json::to_vec(&serde_json::json!({"type": v["type"], "payload": v["data"]})).unwrap();
                    q.push_owned(broadcast::frame(&text).to_vec());
                }
                for q in queues.iter_mut() {
                    q.drop_unstarted();
                }
            })
        });
    }
    g.finish();
}

/// One heartbeat round at 10k clients: every deadline comes due, is popped
/// and rescheduled an interval later (what the loop does each ping round).
fn heartbeat(c: &mut Criterion) {
    const N: usize = 10_000;
    let interval = Duration::from_secs(54);
    c.bench_function("timers/heartbeat_round_10k", |bench| {
        bench.iter_batched_ref(
            || {
                let t0 = Instant::now();
                let mut t = Timers::new();
                for k in 0..N {
                    t.set(t0 + Duration::from_micros(k as u64), k);
                }
                (t, t0 + Duration::from_secs(1))
            },
            |(t, now)| {
                while let Some(due) = t.pop_due(*now) {
                    t.set(*now + interval, due.key);
                }
            },
            criterion::BatchSize::LargeInput,
        )
    });
}

/// One `/metrics` scrape with the values of a busy server: every family
/// populated, the label sets a day of traffic produces.
fn scrape(c: &mut Criterion) {
    let m = Metrics::new(true, true);
    m.connections_accepted.inc_by(1_000_000);
    for code in [101, 400, 401, 403, 426, 429, 503] {
        m.upgrade_answered(code);
    }
    for code in [200, 400, 401, 403, 413, 415, 429] {
        m.broadcast_answered(code);
    }
    for reason in
        [taskcast::ws::Reason::Shutdown, taskcast::ws::Reason::SlowConsumer, taskcast::ws::Reason::TokenExpired]
    {
        m.close_sent(reason);
    }
    for e in [AuthError::Expired, AuthError::BadSignature, AuthError::UnknownKey, AuthError::Malformed] {
        m.auth_failed(e);
    }
    for i in 0..10_000 {
        m.fanned_out(10_000, Duration::from_micros(20 + i % 50));
        m.loop_turn.observe(1e-5 * (i % 300) as f64);
    }
    m.bytes_written.inc_by(123_456_789_000);
    let snap = Snapshot { clients: 10_000, http_connections: 12, jwks_keys: Some(2), ..Snapshot::default() };
    c.bench_function("metrics/scrape_10k", |bench| bench.iter(|| m.encode(black_box(&snap)).len()));
    // What `Server::broadcast` adds per broadcast: the clock read and the
    // record (a counter add and a histogram observation).
    c.bench_function("metrics/per_broadcast", |bench| {
        bench.iter(|| {
            let started = Instant::now();
            m.fanned_out(black_box(10_000), started.elapsed())
        })
    });
}

criterion_group!(benches, envelope, request, fanout_queue, heartbeat, scrape);
criterion_main!(benches);
