//! `GET /metrics`: the server's state copied into the gauges, then one
//! synchronous encode (see [`crate::metrics`] for the families).

use super::Server;
use super::conn::Phase;
use crate::http::Response;
use crate::metrics::{CONTENT_TYPE, Snapshot};

impl Server {
    /// One scrape. Cost: a pass over the connection table (to count HTTP
    /// connections and subscriptions), reading `/proc/self`, and encoding a
    /// few kB of text.
    pub(super) fn scrape(&self) -> Response {
        let snap = Snapshot {
            clients: self.limits.clients(),
            http_connections: self.conns.iter().filter(|(_, c)| matches!(c.phase, Phase::Http(_))).count(),
            jwks_keys: self.verifier.jwks_keys(),
            jwks_fetches: self.verifier.jwks_health().map(|h| (h.fetches, h.failures, h.secs_since_success)),
            channels: self.hub.channels(),
            subscriptions: self.conns.iter().map(|(_, c)| c.ws().map_or(0, |w| w.subs.len())).sum(),
            history_entries: self.hub.history().0,
            history_bytes: self.hub.history().1,
            redis_up: self.cluster.as_ref().map(|c| c.up),
        };
        let mut resp = Response::new(200).header("Content-Type", CONTENT_TYPE).header("Cache-Control", "no-store");
        resp.body = self.metrics.encode(&snap);
        resp
    }
}
