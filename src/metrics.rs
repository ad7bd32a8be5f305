//! What `GET /metrics` reports, in the Prometheus text format (0.0.4),
//! encoded by `prometheus-client` synchronously inside the loop.
//!
//! [`Metrics`] owns the registry and a typed handle for every family; the
//! server holds one and bumps a handle where the event happens (a one-line
//! call at each site, listed on each field). Values that already exist as
//! server state (clients, HTTP connections, JWKS keys) are not counted twice:
//! they are copied into their gauges at scrape time from a [`Snapshot`].
//! Process RSS and open fds are read from `/proc` at scrape time.
//!
//! Cost: counters are relaxed atomic adds (the server is single-threaded,
//! so never contended); a family lookup (`get_or_create`) is a read lock and
//! a small hash, used only on refusals and closes. The fan-out path adds
//! once per broadcast (the recipient count), never per client.
//!
//! Labels: status and close codes, and fixed reason words — never a token,
//! a user id or a channel id (cardinality and privacy); a namespace at most.
//!
//! # Adding a family
//! One field, one `register` line in [`Metrics::new`], one call at the site:
//!
//! ```ignore
//! // field:
//! pub subscriptions: Gauge,
//! // in Metrics::new:
//! reg.register("subscriptions", "Channel subscriptions open now", m.subscriptions.clone());
//! // at the call site:
//! self.metrics.subscriptions.inc();
//! ```
//!
//! A family with a label is a `Family<L, Counter>` with `L` a
//! `#[derive(EncodeLabelSet)]` struct like [`CodeLabel`]. A value another
//! thread owns (JWKS fetches, the Redis link) is best copied into a gauge
//! in [`Metrics::encode`] from the [`Snapshot`], like `jwks_keys`.

use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::auth::AuthError;
use crate::http::{Head, Method};
use crate::ws::Reason;

/// The `Content-Type` of a scrape.
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// An HTTP status or WebSocket close code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: u16,
}

/// A fixed reason word (see [`auth_reason`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Server state copied into gauges at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    /// Open WebSocket clients (what /health reports).
    pub clients: usize,
    /// Connections still speaking HTTP (publishers, health checks, upgrades
    /// in progress).
    pub http_connections: usize,
    /// Keys in the JWKS key set, when JWKS is configured.
    pub jwks_keys: Option<usize>,
    /// The key fetcher's counts, when JWKS is configured: fetches,
    /// failures, seconds since the last fully good fetch.
    pub jwks_fetches: Option<(u64, u64, Option<u64>)>,
    /// Channels held (with subscribers or history), and subscriptions.
    pub channels: usize,
    pub subscriptions: usize,
    /// History entries held and their bytes (all channels).
    pub history_entries: usize,
    pub history_bytes: usize,
    /// Cluster mode: is the Redis link up?
    pub redis_up: Option<bool>,
}

/// `recovered="true"|"false"` for resubscribes with `since`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RecoveredLabel {
    pub recovered: bool,
}

/// Every metric family, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    /// Set at scrape time from [`Snapshot::clients`].
    clients: Gauge,
    /// Set at scrape time from [`Snapshot::http_connections`].
    http_connections: Gauge,
    /// Set at scrape time from [`Snapshot::jwks_keys`] (registered only
    /// with JWKS configured).
    jwks_keys: Gauge,
    /// TCP connections accepted (`Server::accept`).
    pub connections_accepted: Counter,
    /// `/ws` upgrade answers by status: 101 when accepted (`upgrade`), the
    /// refusal's status otherwise (`respond`).
    pub upgrades: Family<CodeLabel, Counter>,
    /// Close frames we started, by close code (`close_ws`, `fail_ws`).
    pub closes: Family<CodeLabel, Counter>,
    /// Broadcast messages queued to clients: the recipient count, added
    /// once per broadcast (`broadcast`).
    pub messages_delivered: Counter,
    /// Bytes written to sockets, all connections (`flush_dirty`, and the
    /// early write of a full queue in `fan_out`).
    pub bytes_written: Counter,
    /// `/api/broadcast` answers by status: 200 accepted, the refusal's
    /// status otherwise (`respond`).
    pub broadcasts: Family<CodeLabel, Counter>,
    /// Clients closed with 1013 for reading too slowly (`fan_out`).
    pub slow_client_closes: Counter,
    /// Tokens (and publisher keys) refused, by reason (`api::route`,
    /// `refresh_auth`).
    pub auth_failures: Family<ReasonLabel, Counter>,
    /// Time one loop turn spends working, from poll's return to the end of
    /// the flush (the wait is not included).
    pub loop_turn: Histogram,
    /// Time to queue one broadcast to every recipient.
    pub fanout: Histogram,
    /// Set at scrape time from the [`Snapshot`]'s channel figures.
    channels: Gauge,
    subscriptions: Gauge,
    history_entries: Gauge,
    history_bytes: Gauge,
    /// Subscribes with `since`, by whether the gap was replayed
    /// (`ws_conn::subscribe`, `cluster::finish_subscribe`).
    pub recoveries: Family<RecoveredLabel, Counter>,
    /// From the key fetcher's health, at scrape time (JWKS only).
    jwks_fetches: Counter,
    jwks_failures: Counter,
    jwks_age: Gauge,
    /// Cluster mode: 1 while the Redis link is up (at scrape time).
    redis_up: Gauge,
    /// Cluster mode: publish sent to Redis → stored (`cluster::on_published`).
    pub redis_publish: Histogram,
}

impl Metrics {
    /// Registers every family. `jwks` says whether JWKS is configured (its
    /// gauge exists only then).
    pub fn new(jwks: bool, cluster: bool) -> Metrics {
        let mut registry = Registry::default();
        // 10 µs .. ~0.7 s: a turn is tens of µs idle, ms under a broadcast storm.
        let loop_turn = Histogram::new(exponential_buckets(1e-5, 4.0, 9));
        // 1 µs .. ~0.3 s: ~1 ns per recipient, so 10k clients is ~10-50 µs.
        let fanout = Histogram::new(exponential_buckets(1e-6, 4.0, 10));
        let m = Metrics {
            clients: Gauge::default(),
            http_connections: Gauge::default(),
            jwks_keys: Gauge::default(),
            connections_accepted: Counter::default(),
            upgrades: Family::default(),
            closes: Family::default(),
            messages_delivered: Counter::default(),
            bytes_written: Counter::default(),
            broadcasts: Family::default(),
            slow_client_closes: Counter::default(),
            auth_failures: Family::default(),
            loop_turn,
            fanout,
            channels: Gauge::default(),
            subscriptions: Gauge::default(),
            history_entries: Gauge::default(),
            history_bytes: Gauge::default(),
            recoveries: Family::default(),
            jwks_fetches: Counter::default(),
            jwks_failures: Counter::default(),
            jwks_age: Gauge::default(),
            redis_up: Gauge::default(),
            // 10 µs .. ~0.7 s: a local Redis answers in tens of µs.
            redis_publish: Histogram::new(exponential_buckets(1e-5, 4.0, 9)),
            registry: Registry::default(),
        };
        let reg = registry.sub_registry_with_prefix("taskcast");
        reg.register("clients", "Open WebSocket clients", m.clients.clone());
        reg.register("http_connections", "Connections still speaking HTTP", m.http_connections.clone());
        reg.register("connections_accepted", "TCP connections accepted", m.connections_accepted.clone());
        reg.register("upgrades", "WebSocket upgrade answers by HTTP status (101 = accepted)", m.upgrades.clone());
        reg.register("closes", "WebSocket close frames sent by the server, by close code", m.closes.clone());
        reg.register(
            "messages_delivered",
            "Broadcast messages queued to clients (one per recipient)",
            m.messages_delivered.clone(),
        );
        reg.register("bytes_written", "Bytes written to sockets", m.bytes_written.clone());
        reg.register("broadcasts", "POST /api/broadcast answers by HTTP status (200 = accepted)", m.broadcasts.clone());
        reg.register(
            "slow_client_closes",
            "Clients closed with 1013 because their send queue was full",
            m.slow_client_closes.clone(),
        );
        reg.register("auth_failures", "Tokens and publisher keys refused, by reason", m.auth_failures.clone());
        reg.register_with_unit(
            "loop_turn",
            "Time one event-loop turn spends working (waiting excluded)",
            Unit::Seconds,
            m.loop_turn.clone(),
        );
        reg.register_with_unit(
            "fanout",
            "Time to queue one broadcast to every recipient",
            Unit::Seconds,
            m.fanout.clone(),
        );
        reg.register("channels", "Channels held (with subscribers or history)", m.channels.clone());
        reg.register("subscriptions", "Channel subscriptions open now", m.subscriptions.clone());
        reg.register("history_entries", "Messages held in channel history", m.history_entries.clone());
        reg.register_with_unit("history", "Bytes of channel history held", Unit::Bytes, m.history_bytes.clone());
        reg.register(
            "recoveries",
            "Subscribes with since, by whether the whole gap was replayed",
            m.recoveries.clone(),
        );
        if jwks {
            reg.register("jwks_keys", "Keys in the JWKS key set now", m.jwks_keys.clone());
            reg.register("jwks_fetches", "JWKS refreshes attempted", m.jwks_fetches.clone());
            reg.register("jwks_fetch_failures", "JWKS refreshes where a source failed", m.jwks_failures.clone());
            reg.register_with_unit(
                "jwks_since_success",
                "Seconds since the last fully good JWKS fetch (-1: never)",
                Unit::Seconds,
                m.jwks_age.clone(),
            );
        }
        if cluster {
            reg.register("redis_up", "1 while the Redis link is up", m.redis_up.clone());
            reg.register_with_unit(
                "redis_publish",
                "Publish sent to Redis until stored",
                Unit::Seconds,
                m.redis_publish.clone(),
            );
        }
        registry.register_collector(Box::new(Process));
        Metrics { registry, ..m }
    }

    /// One scrape: copies `snap` into its gauges and encodes every family.
    pub fn encode(&self, snap: &Snapshot) -> String {
        self.clients.set(snap.clients as i64);
        self.http_connections.set(snap.http_connections as i64);
        if let Some(n) = snap.jwks_keys {
            self.jwks_keys.set(n as i64);
        }
        if let Some((fetches, failures, age)) = snap.jwks_fetches {
            // Counters owned by the fetch thread: move ours up to its totals.
            self.jwks_fetches.inc_by(fetches.saturating_sub(self.jwks_fetches.get()));
            self.jwks_failures.inc_by(failures.saturating_sub(self.jwks_failures.get()));
            self.jwks_age.set(age.map_or(-1, |a| a.min(i64::MAX as u64) as i64));
        }
        self.channels.set(snap.channels as i64);
        self.subscriptions.set(snap.subscriptions as i64);
        self.history_entries.set(snap.history_entries as i64);
        self.history_bytes.set(snap.history_bytes as i64);
        if let Some(up) = snap.redis_up {
            self.redis_up.set(i64::from(up));
        }
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// A broadcast was queued to `recipients` clients in `took`.
    pub fn fanned_out(&self, recipients: usize, took: Duration) {
        self.messages_delivered.inc_by(recipients as u64);
        self.fanout.observe(took.as_secs_f64());
    }

    /// A subscribe with `since` was answered.
    pub fn recovery(&self, recovered: bool) {
        self.recoveries.get_or_create(&RecoveredLabel { recovered }).inc();
    }

    /// We sent a close frame with `reason`.
    pub fn close_sent(&self, reason: Reason) {
        self.closes.get_or_create(&CodeLabel { code: reason.code() }).inc();
    }

    /// A token was refused.
    pub fn auth_failed(&self, e: AuthError) {
        self.auth_failed_because(auth_reason(e));
    }

    /// A credential was refused for a reason that is not an [`AuthError`]
    /// (`bad_api_key`, `wrong_subject`).
    pub fn auth_failed_because(&self, reason: &'static str) {
        self.auth_failures.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts the answer to `head` where a family wants it: `GET /ws`
    /// refusals (upgrades), `POST /api/broadcast` answers (broadcasts).
    pub fn answered(&self, head: &Head, status: u16) {
        match (head.method(), head.path.as_str()) {
            (Method::Get, "/ws") => self.upgrade_answered(status),
            (Method::Post, "/api/broadcast") => self.broadcast_answered(status),
            _ => {}
        }
    }

    /// A `/ws` request got `status` (101: upgraded).
    pub fn upgrade_answered(&self, status: u16) {
        self.upgrades.get_or_create(&CodeLabel { code: status }).inc();
    }

    /// A `POST /api/broadcast` got `status`.
    pub fn broadcast_answered(&self, status: u16) {
        self.broadcasts.get_or_create(&CodeLabel { code: status }).inc();
    }
}

/// The `reason` label of a refused token.
pub fn auth_reason(e: AuthError) -> &'static str {
    match e {
        AuthError::Missing => "missing",
        AuthError::Expired => "expired",
        AuthError::NotYetValid => "not_yet_valid",
        AuthError::BadSignature => "bad_signature",
        AuthError::WrongAlgorithm => "wrong_algorithm",
        AuthError::WrongIssuer => "wrong_issuer",
        AuthError::WrongAudience => "wrong_audience",
        AuthError::MissingIssuer => "missing_iss",
        AuthError::MissingAudience => "missing_aud",
        AuthError::Malformed => "malformed",
        AuthError::UnknownKey => "unknown_kid",
        AuthError::MissingKeyId => "missing_kid",
        AuthError::SecretNotSet => "hs256_disabled",
    }
}

/// `process_resident_memory_bytes` and `process_open_fds` (the names the
/// official clients use), read from `/proc/self` at each scrape.
#[derive(Debug)]
struct Process;

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(rss) = rss_bytes() {
            let g = ConstGauge::new(rss as i64);
            let e = encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                None,
                g.metric_type(),
            )?;
            g.encode(e)?;
        }
        if let Some(fds) = open_fds() {
            let g = ConstGauge::new(fds as i64);
            let e = encoder.encode_descriptor("process_open_fds", "Open file descriptors", None, g.metric_type())?;
            g.encode(e)?;
        }
        Ok(())
    }
}

/// Open fds. Linux 6.2+ reports the count as the size of `/proc/self/fd`
/// (one stat, ~5 µs at 10k fds); older kernels say 0 there, and then the
/// entries are counted (milliseconds at 10k fds, once per scrape).
fn open_fds() -> Option<u64> {
    let size = std::fs::metadata("/proc/self/fd").ok()?.len();
    if size > 0 {
        return Some(size);
    }
    // One entry is the directory handle read_dir itself holds.
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count().saturating_sub(1) as u64)
}

/// Resident set size: `/proc/self/statm`'s second field, in pages.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_has_every_family_without_user_data() {
        let m = Metrics::new(true, true);
        m.connections_accepted.inc();
        m.upgrade_answered(101);
        m.upgrade_answered(503);
        m.close_sent(Reason::SlowConsumer);
        m.slow_client_closes.inc();
        m.broadcast_answered(200);
        m.auth_failed(AuthError::Expired);
        m.fanned_out(3, Duration::from_micros(5));
        m.loop_turn.observe(0.000_02);
        m.bytes_written.inc_by(100);
        m.recovery(true);
        m.recovery(false);
        m.recovery(false);
        m.redis_publish.observe(0.000_05);
        let text = m.encode(&Snapshot {
            clients: 7,
            http_connections: 2,
            jwks_keys: Some(2),
            jwks_fetches: Some((5, 1, Some(12))),
            channels: 3,
            subscriptions: 9,
            history_entries: 40,
            history_bytes: 4000,
            redis_up: Some(true),
        });
        for line in [
            "taskcast_clients 7",
            "taskcast_http_connections 2",
            "taskcast_jwks_keys 2",
            "taskcast_connections_accepted_total 1",
            "taskcast_upgrades_total{code=\"101\"} 1",
            "taskcast_upgrades_total{code=\"503\"} 1",
            "taskcast_closes_total{code=\"1013\"} 1",
            "taskcast_slow_client_closes_total 1",
            "taskcast_broadcasts_total{code=\"200\"} 1",
            "taskcast_auth_failures_total{reason=\"expired\"} 1",
            "taskcast_messages_delivered_total 3",
            "taskcast_bytes_written_total 100",
            "taskcast_fanout_seconds_count 1",
            "taskcast_loop_turn_seconds_count 1",
            "# TYPE taskcast_loop_turn_seconds histogram",
            "taskcast_channels 3",
            "taskcast_subscriptions 9",
            "taskcast_history_entries 40",
            "taskcast_history_bytes 4000",
            "taskcast_recoveries_total{recovered=\"true\"} 1",
            "taskcast_recoveries_total{recovered=\"false\"} 2",
            "taskcast_jwks_fetches_total 5",
            "taskcast_jwks_fetch_failures_total 1",
            "taskcast_jwks_since_success_seconds 12",
            "taskcast_redis_up 1",
            "taskcast_redis_publish_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
        assert!(text.contains("\nprocess_open_fds "), "{text}");
        let plain = Metrics::new(false, false).encode(&Snapshot::default());
        assert!(!plain.contains("jwks") && !plain.contains("redis"), "{plain}");
    }
}
