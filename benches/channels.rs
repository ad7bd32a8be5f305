//! Channel fan-out and replay, CPU only (no network), plus what a
//! subscription and a history entry cost in memory.
//!
//! - `channel_publish/one_channel_1k_of_10k` vs `global_broadcast_10k`: a
//!   channel message costs in proportion to its subscribers, not to all
//!   connections (the hub's channel → connections index).
//! - `subscribe_replay_100`: a reconnecting client recovering 100 messages.
//! - memory: bytes allocated per subscription and per history entry,
//!   counted by a counting global allocator (printed before the benches).
//!
//! Run: `cargo bench --bench channels`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use taskcast::broadcast;
use taskcast::hub::{HistoryLimits, Hub, Since};
use taskcast::outqueue::OutQueue;

/// Counts live heap bytes (for the memory figures only).
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const PAYLOAD: &str = r#"{"id":"t-1","title":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;

fn limits() -> HistoryLimits {
    HistoryLimits { size: 100, ttl: Duration::from_secs(300), max_bytes: 1 << 30 }
}

/// 10k connections' queues; 1k of them in `project:1`.
fn setup() -> (Hub, Vec<OutQueue>) {
    let mut hub = Hub::new(limits());
    for key in 0..1000 {
        hub.subscribe("project:1", key * 10);
    }
    (hub, (0..10_000).map(|_| OutQueue::default()).collect())
}

fn publish(c: &mut Criterion) {
    let mut g = c.benchmark_group("channel_publish");
    let (mut hub, mut queues) = setup();
    let now = Instant::now();
    g.throughput(Throughput::Elements(1000));
    g.bench_function("one_channel_1k_of_10k", |b| {
        b.iter(|| {
            let p = hub.publish("project:1", "task_updated", black_box(PAYLOAD), now);
            for &key in hub.subscribers("project:1") {
                queues[key].push_shared(Rc::clone(&p.frame));
            }
            for &key in hub.subscribers("project:1") {
                queues[key].drop_unstarted();
            }
        })
    });
    g.throughput(Throughput::Elements(10_000));
    let body = format!(r#"{{"type":"task_updated","data":{PAYLOAD}}}"#);
    g.bench_function("global_broadcast_10k", |b| {
        b.iter(|| {
            let (_, frame) = broadcast::parse(black_box(body.as_bytes())).unwrap();
            for q in queues.iter_mut() {
                q.push_shared(Rc::clone(&frame));
            }
            for q in queues.iter_mut() {
                q.drop_unstarted();
            }
        })
    });
    g.finish();
}

fn replay(c: &mut Criterion) {
    let mut hub = Hub::new(limits());
    let now = Instant::now();
    let id = hub.subscribe("project:1", 0);
    for _ in 0..100 {
        hub.publish("project:1", "task_updated", PAYLOAD, now);
    }
    let since = Since { epoch: hub.channel(id).epoch.to_string(), offset: 0 };
    let mut q = OutQueue::default();
    c.bench_function("subscribe_replay_100", |b| {
        b.iter(|| {
            let frames = hub.replay(id, black_box(&since), now).expect("all 100 held");
            for f in frames {
                q.push_shared(f);
            }
            q.drop_unstarted();
        })
    });
}

/// Live heap bytes per subscription and per history entry.
fn memory() {
    let now = Instant::now();
    let before = LIVE.load(Ordering::Relaxed);
    let mut hub = Hub::new(limits());
    let base = LIVE.load(Ordering::Relaxed);
    const SUBS: usize = 100_000;
    for key in 0..SUBS {
        // 10 subscribers in each of 10k channels.
        hub.subscribe(&format!("project:{}", key / 10), key);
    }
    let subs = LIVE.load(Ordering::Relaxed) - base;
    let mut hub2 = Hub::new(limits());
    let base2 = LIVE.load(Ordering::Relaxed);
    const ENTRIES: usize = 100_000;
    for i in 0..ENTRIES {
        hub2.publish(&format!("project:{}", i % 1000), "task_updated", PAYLOAD, now);
    }
    let history = LIVE.load(Ordering::Relaxed) - base2;
    let frame = broadcast::frame(&broadcast::channel_envelope("task_updated", PAYLOAD, "project:1", 1)).len();
    println!(
        "memory: {:.0} B per subscription (100k in 10k channels, channel state included); \
         {:.0} B per history entry of a {frame} B frame ({:.0} B overhead; 100k entries in 1k channels)",
        subs as f64 / SUBS as f64,
        history as f64 / ENTRIES as f64,
        history as f64 / ENTRIES as f64 - frame as f64,
    );
    drop((hub, hub2));
    let _ = before;
}

criterion_group!(benches, publish, replay);

fn main() {
    memory();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
