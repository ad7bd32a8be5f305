//! One delivery suite, two homes (centrifuge's way: one broker contract,
//! memory and Redis behind it, the same tests for both). A [`Home`] is
//! either one in-process server or three instances sharing one real
//! redis-server under a prefix of their own; a scenario written against it
//! runs unchanged in both, with [`both_homes!`] generating the tests.
//!
//! Connections and publishers are numbered by the scenario: `ws(i, …)`
//! connects to instance `i % n` and `publish(j, …)` posts to instance
//! `j % n`, so in cluster mode clients and publishers spread over the
//! instances and every message crosses Redis; in one process every number
//! is the one server.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use taskcast::Config;

use super::redis_server::RedisServer;
use super::*;

/// Instances in a cluster home: enough that a client, a publisher and a
/// reconnect can each be on a different one.
pub const CLUSTER_INSTANCES: usize = 3;

/// Config changes applied to every instance of a home.
pub type Tune = fn(&mut Config);

/// No config changes.
pub fn untuned(_: &mut Config) {}

/// Where a scenario runs.
pub struct Home {
    /// The instances (one in one process).
    servers: Vec<TestServer>,
    /// The redis-server the instances share (cluster mode), shared in turn
    /// with the other cluster homes alive in this test process.
    redis: Option<Arc<RedisServer>>,
    /// This home's REDIS_PREFIX: no key or pub/sub channel is shared with
    /// another home on the same redis-server.
    prefix: String,
}

/// The redis-server of the cluster homes alive now; started by the first,
/// killed when the last one is dropped (a static would never be dropped,
/// leaving the process behind).
static SHARED_REDIS: Mutex<Weak<RedisServer>> = Mutex::new(Weak::new());
/// Makes every home's prefix unique within this test process.
static HOMES: AtomicU64 = AtomicU64::new(0);

fn shared_redis() -> Arc<RedisServer> {
    let mut shared = SHARED_REDIS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = shared.upgrade() {
        return r;
    }
    let r = Arc::new(RedisServer::start());
    *shared = Arc::downgrade(&r);
    r
}

impl Home {
    /// One in-process server.
    pub fn one_process(tune: Tune) -> Home {
        let mut cfg = config();
        tune(&mut cfg);
        Home { servers: vec![start_with(cfg)], redis: None, prefix: String::new() }
    }

    /// Three instances on one real redis-server, under a prefix no other
    /// home uses; returns once each one's Redis link is up.
    pub fn cluster(tune: Tune) -> Home {
        let redis = shared_redis();
        let prefix = format!("home{}-{}", std::process::id(), HOMES.fetch_add(1, Ordering::Relaxed));
        let servers = (0..CLUSTER_INSTANCES).map(|_| instance_with(&redis, &prefix, tune)).collect();
        Home { servers, redis: Some(redis), prefix }
    }

    /// How many instances.
    pub fn n(&self) -> usize {
        self.servers.len()
    }

    pub fn is_cluster(&self) -> bool {
        self.redis.is_some()
    }

    /// The address of instance `i % n`.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.servers[i % self.n()].addr
    }

    /// A WebSocket to instance `i % n`.
    pub fn ws(&self, i: usize, token: &str) -> Ws {
        ws(self.addr(i), token)
    }

    /// Publishes `{"type":"task_updated","data":…}` plus the `target`'s
    /// fields (`channel`, `channels` or `users`) through instance `j % n`;
    /// asserts 200 and returns the answer.
    pub fn publish(&self, j: usize, target: Value, data: Value) -> Value {
        let mut body = json!({"type": "task_updated", "data": data});
        for (k, v) in target.as_object().expect("a target object") {
            body[k] = v.clone();
        }
        let r = broadcast(self.addr(j), &token("publisher"), &body.to_string());
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    /// What `recipients` counts for a publish through `publish(j, …)` to
    /// subscribers opened as `ws(i, …)` for each `i` in `conns`: those on
    /// the answering instance (cluster mode asks no other instance; in one
    /// process that is all of them).
    pub fn local(&self, j: usize, conns: &[usize]) -> u64 {
        conns.iter().filter(|&&i| i % self.n() == j % self.n()).count() as u64
    }

    /// Instance `i % n`'s `/metrics`.
    pub fn scrape(&self, i: usize) -> String {
        let r = get(self.addr(i), "/metrics");
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    }

    /// One gauge of instance `i % n`.
    pub fn gauge(&self, i: usize, name: &str) -> u64 {
        let body = self.scrape(i);
        let line =
            body.lines().find(|l| l.split(' ').next() == Some(name)).unwrap_or_else(|| panic!("{name} in {body}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    /// Waits (bounded) until `gauge(i, name)` is `want`.
    pub fn wait_gauge(&self, i: usize, name: &str, want: u64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.gauge(i, name);
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "{name} on instance {} stayed {got}, want {want}", i % self.n());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits (bounded) until the instances have `n` WebSocket clients in all.
    pub fn wait_clients(&self, n: u64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let got: u64 =
                (0..self.n()).map(|i| get(self.addr(i), "/health").json()["connectedClients"].as_u64().unwrap()).sum();
            if got == n {
                return;
            }
            assert!(Instant::now() < deadline, "connectedClients stayed {got} in all, want {n}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Proves `c` received nothing before now: a broadcast to everyone sent
    /// now (through instance `j % n`) must be the very next message it
    /// reads. In cluster mode it crosses Redis like every channel message
    /// published before it, on the same pub/sub connection, so it arrives
    /// after them.
    pub fn sentinel(&self, j: usize, c: &mut Ws) {
        let r = broadcast(self.addr(j), &token("publisher"), r#"{"type":"sentinel","data":null}"#);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(next_json(c), json!({"type": "sentinel", "payload": null}));
    }

    /// The redis-server (cluster mode).
    pub fn redis(&self) -> Option<&RedisServer> {
        self.redis.as_deref()
    }

    /// The pub/sub channels of this home that some instance is subscribed
    /// to (cluster mode), sorted: Redis's view of who still listens.
    pub fn redis_channels(&self) -> Option<Vec<String>> {
        let redis = self.redis()?;
        let mut v: Vec<String> = redis.cmd(&["PUBSUB", "CHANNELS", &format!("{}:*", self.prefix)]);
        v.sort();
        Some(v)
    }

    /// The prefix's pub/sub name of `channel` (see src/cluster/keys.rs).
    pub fn redis_channel(&self, channel: &str) -> String {
        format!("{}:ch:{{{channel}}}", self.prefix)
    }

    /// The prefix's pub/sub name of the broadcast to everyone.
    pub fn redis_broadcast(&self) -> String {
        format!("{}:broadcast", self.prefix)
    }

    /// The prefix's control channel (the server API's actions, every instance).
    pub fn redis_control(&self) -> String {
        format!("{}:control", self.prefix)
    }
}

/// One cluster instance on `redis` under `prefix`, tuned; returns once its
/// Redis link is up.
pub fn instance_with(redis: &RedisServer, prefix: &str, tune: impl FnOnce(&mut Config)) -> TestServer {
    let mut cfg = config();
    tune(&mut cfg);
    cfg.redis = taskcast::cluster::parse_redis_env(&|k| match k {
        "REDIS_URL" => Some(redis.url()),
        "REDIS_PREFIX" => Some(prefix.to_string()),
        _ => None,
    })
    .unwrap();
    let s = start_with(cfg);
    wait_ready(s.addr);
    s
}

/// One untuned cluster instance.
pub fn instance(redis: &RedisServer, prefix: &str) -> TestServer {
    instance_with(redis, prefix, |_| {})
}

/// Until a publish is accepted (the link reports up shortly after start).
pub fn wait_ready(addr: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = broadcast(addr, &token("probe"), r#"{"type":"probe","data":null,"channel":"probe:x"}"#);
        if r.status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "cluster link never came up: {} {}", r.status, r.body);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Generates, for every scenario `name: tune` (a `fn(Home)` in the calling
/// file, and the [`Tune`] its homes start with), a test in
/// `mod one_process` and one in `mod cluster`. A row may end in
/// `=> cluster #[attribute]` for the cluster test alone — the project's
/// `#[ignore = "server bug: …"]` for a scenario that finds a bug not fixed
/// yet (run it with `--ignored`).
#[macro_export]
macro_rules! both_homes {
    ($($name:ident: $tune:expr $(=> cluster #[$cluster:meta])?),* $(,)?) => {
        mod one_process {
            // The tunes name what the calling file has in scope.
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $name() {
                    super::$name($crate::common::home::Home::one_process($tune));
                }
            )*
        }
        mod cluster {
            // The tunes name what the calling file has in scope.
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                $(#[$cluster])?
                fn $name() {
                    super::$name($crate::common::home::Home::cluster($tune));
                }
            )*
        }
    };
}
