//! The HTTP side of a connection: reading requests into the connection's
//! buffer, answering each one in order (pipelining), and the upgrade to a
//! WebSocket. What each request gets is decided by [`crate::api::route`];
//! this module only carries it out.

use std::io::{self, Read};
use std::net::IpAddr;
use std::time::Instant;

use log::debug;

use super::conn::Phase;
use super::{READ_BUDGET_BYTES, Server};
use crate::api::{self, Action, Ctx, UpgradeAuth};
use crate::http::{self, Head, Response};
use crate::ws::{self, Reason, WsConn};

/// An HTTP client with this much unread output gets no more requests
/// parsed until it reads (pipelining without reading cannot grow memory).
pub(super) const HTTP_OUT_HIGH_WATER: usize = 256 * 1024;

/// The interim answer to `Expect: 100-continue` (RFC 9110 §15.2.1).
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl Server {
    pub(super) fn read_http(&mut self, key: usize) {
        let limit = http::MAX_HEAD_BYTES + self.config.max_broadcast_bytes;
        let mut total = 0;
        let mut eof = false;
        let started;
        {
            let conn = &mut self.conns[key];
            let Phase::Http(h) = &mut conn.phase else {
                return;
            };
            if h.paused {
                return;
            }
            if h.consumed > 0 {
                h.buf.drain(..h.consumed);
                h.consumed = 0;
            }
            let was_idle = h.is_idle();
            loop {
                // Never hold more than one head + one body: parse_head
                // rejects what would not fit, so stop reading past that.
                if h.buf.len() >= limit || total >= READ_BUDGET_BYTES {
                    self.again.push(key);
                    break;
                }
                let want = (limit - h.buf.len()).min(self.scratch.len());
                match conn.stream.read(&mut self.scratch[..want]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        h.buf.extend_from_slice(&self.scratch[..n]);
                        total += n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return self.remove(key),
                }
            }
            // A request's first byte: its REQUEST_TIMEOUT_SECS start now,
            // not when the previous response left (which would leave a
            // request that starts late in an idle keep-alive connection
            // only what remains of that wait).
            started = was_idle && !h.buf.is_empty();
        }
        if started {
            self.set_deadline(key, Instant::now() + self.config.request_timeout);
        }
        if self.process_http(key) {
            // Publishers first: a Server Action waits for this answer, so it
            // leaves now, before the loop writes to any subscriber or reads
            // another socket (subscribers still get broadcasts in order).
            self.flush_conn(key);
        }
        if eof {
            match self.conns.get(key).map(|c| &c.phase) {
                // A publish waiting for Redis (cluster mode) is answered
                // first: its answer reads again, sees this EOF, and closes.
                Some(Phase::Http(h)) if h.parked => {}
                // Half-close: answer what arrived whole, then close.
                Some(Phase::Http(_)) => self.begin_close(key),
                // The EOF came in the same read as an upgrade request: let
                // the WebSocket read see it (edge-triggered: no new event).
                Some(Phase::Ws(_)) => self.again.push(key),
                _ => {}
            }
        }
    }

    /// Handles every complete request in the buffer, in order. True if one
    /// of them was a broadcast (its answer should leave at once).
    fn process_http(&mut self, key: usize) -> bool {
        let mut published = false;
        loop {
            let draining = self.stopping();
            let Some(conn) = self.conns.get_mut(key) else {
                return published;
            };
            let Phase::Http(h) = &mut conn.phase else {
                return published;
            };
            if conn.out.bytes() >= HTTP_OUT_HIGH_WATER {
                h.paused = true;
                return published;
            }
            // A publish waiting for Redis: answers go out in request order,
            // so the requests behind it wait too.
            if h.parked {
                return published;
            }
            let head = match h.head.take() {
                Some(head) => head,
                None => match http::parse_head(&h.buf[h.consumed..], self.config.max_broadcast_bytes) {
                    Ok(Some(head)) => Box::new(head),
                    Ok(None) => return published,
                    Err(reject) => {
                        debug!("{} bad request: {} {}", conn.peer, reject.status, reject.message);
                        // The framing is lost (or the body unwanted): answer and close.
                        let resp = Response::error(reject.status, reject.message);
                        conn.out.push_owned(resp.encode(false, h.pending_is_head()));
                        h.buf = Vec::new();
                        self.begin_close(key);
                        return published;
                    }
                },
            };
            let (start, end) = (h.consumed + head.head_len, h.consumed + head.head_len + head.content_length);
            let ip = self.config.trusted_proxies.client_ip(conn.peer.ip(), head.forwarded_for.as_deref());
            let now = Instant::now();
            if h.buf.len() < end {
                // The body is still arriving: refuse what the head alone
                // can refuse now (a forged credential), without waiting.
                if !h.admitted {
                    let ctx = Ctx {
                        config: &self.config,
                        verifier: &self.verifier,
                        limits: &self.limits,
                        ip,
                        now,
                        admitted: false,
                        metrics: &self.metrics,
                        refusals: &self.refusals,
                        draining,
                        redis_up: self.cluster.as_ref().map(|c| c.up),
                        control: &self.control.store,
                    };
                    if let Err(resp) = api::admit(&head, &ctx) {
                        h.buf = Vec::new();
                        h.consumed = 0;
                        if resp.auth_failure {
                            self.limits.record_auth_failure(&self.config, ip, now);
                        }
                        self.respond(key, &head, resp);
                        return published;
                    }
                    h.admitted = true;
                    // RFC 9110 §10.1.1: a client that sent `Expect:
                    // 100-continue` waits for this before its body (curl,
                    // for a second). A refusal above went out as the final
                    // status instead, without the body being read.
                    if head.expect_continue && h.buf.len() == start {
                        conn.out.push_owned(CONTINUE.to_vec());
                        if !conn.dirty {
                            conn.dirty = true;
                            self.dirty.push(key);
                        }
                    }
                }
                h.head = Some(head);
                return published;
            }
            let admitted = std::mem::take(&mut h.admitted);
            let ctx = Ctx {
                config: &self.config,
                verifier: &self.verifier,
                limits: &self.limits,
                ip,
                now,
                admitted,
                metrics: &self.metrics,
                refusals: &self.refusals,
                draining,
                redis_up: self.cluster.as_ref().map(|c| c.up),
                control: &self.control.store,
            };
            let action = api::route(&head, &h.buf[start..end], &ctx);
            if let Action::Upgrade { key: ws_key, auth } = action {
                let leftover = h.buf.split_off(end);
                self.upgrade(key, &head, ip, &ws_key, auth, leftover);
                return published;
            }
            h.consumed = end;
            if h.consumed == h.buf.len() {
                h.buf.clear();
                h.consumed = 0;
            }
            let resp = match action {
                Action::Respond(resp) => {
                    if resp.auth_failure {
                        self.limits.record_auth_failure(&self.config, ip, now);
                    }
                    resp
                }
                Action::Broadcast(publish) => {
                    published = true;
                    match self.broadcast(key, &head, publish) {
                        Some(resp) => resp,
                        None => return published, // parked until Redis answers
                    }
                }
                Action::Metrics => self.scrape(),
                Action::Control(req) => {
                    // Like a publish: a server waits for this answer.
                    published = true;
                    match self.control(key, &head, req) {
                        Some(resp) => resp,
                        None => return published, // parked until Redis answers
                    }
                }
                Action::Upgrade { .. } => unreachable!("handled above"),
            };
            self.respond(key, &head, resp);
            if !matches!(self.conns.get(key).map(|c| &c.phase), Some(Phase::Http(_))) {
                return published;
            }
        }
    }

    /// Queues the answer to one request; closes after it unless kept alive.
    pub(super) fn respond(&mut self, key: usize, head: &Head, resp: Response) {
        let resp = api::with_cors(resp, head, &self.config.allowed_origins);
        self.metrics.answered(head, resp.status);
        // Stopping: callers should reconnect, to another instance.
        let keep = head.keep_alive && !resp.close && !self.stopping();
        let conn = &mut self.conns[key];
        // Log the path only: the query may hold a token.
        debug!("{} {:?} {} -> {}", conn.peer, head.method(), head.path, resp.status);
        conn.out.push_owned(resp.encode(keep, head.method() == http::Method::Head));
        self.mark_dirty(key);
        if !keep {
            return self.begin_close(key);
        }
        // A request was served: the keep-alive idle clock restarts.
        self.set_deadline(key, Instant::now() + self.config.request_timeout);
    }

    /// Sends 101 and makes the connection a WebSocket. With the token
    /// verified already it is authenticated at once; in band it waits for
    /// its first message until REQUEST_TIMEOUT_SECS ([`Server::authenticate`]
    /// is the one path that sets up an authenticated connection either way).
    fn upgrade(&mut self, key: usize, head: &Head, ip: IpAddr, ws_key: &str, auth: UpgradeAuth, leftover: Vec<u8>) {
        let now = Instant::now();
        let conn = &mut self.conns[key];
        conn.out.push_owned(ws::handshake_response(ws_key));
        let has_leftover = !leftover.is_empty();
        // Bytes that came with the request go through a meter first, like
        // every other frame byte.
        let (reading, bucket) = self.protocol.open(leftover, now);
        let http_ip = conn.phase.http_ip();
        conn.phase = Phase::Ws(WsConn {
            reading,
            sub: ws::Subject::new(""),
            ip: ip.into(),
            // Replaced by the token's expiry once authenticated.
            expires_at: (now + self.config.request_timeout).into(),
            last_seen: now.into(),
            next_ping: (now + self.config.ping_interval).into(),
            close_deadline: None,
            bucket,
            grants: Box::default(),
            subs: Vec::new(),
            awaiting_auth: matches!(auth, UpgradeAuth::FirstMessage { .. }),
            iat: ws::IssuedAt::default(),
            opened_at: crate::auth::now_secs(),
            corked: false,
        });
        let conn = &mut self.conns[key];
        self.limits.add_client(ip);
        if matches!(auth, UpgradeAuth::FirstMessage { .. }) {
            self.awaiting_auth += 1;
        }
        self.metrics.upgrade_answered(101);
        if let Some(http_ip) = http_ip {
            self.limits.remove_http(http_ip); // a WebSocket now: counted as one
        }
        debug!("{} upgraded (origin {:?})", conn.peer, head.origin.as_deref().unwrap_or("-"));
        match auth {
            UpgradeAuth::Verified(claims) => self.authenticate(key, claims, now),
            // Refused after the upgrade, so the page learns why from the close frame.
            UpgradeAuth::FirstMessage { origin_ok: false } => return self.close_ws(key, Reason::OriginRefused, now),
            UpgradeAuth::FirstMessage { origin_ok: true } => {}
        }
        self.mark_dirty(key);
        self.reschedule_ws(key);
        if has_leftover {
            // Frames that came in the same read as the request.
            self.again.push(key);
        }
    }

    /// An HTTP connection's deadline: idle keep-alive ends quietly; a
    /// request still arriving gets 408 (slowloris guard).
    pub(super) fn on_http_timer(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let Phase::Http(h) = &mut conn.phase else {
            return;
        };
        if h.is_idle() {
            return self.remove(key);
        }
        if h.parked {
            // Its publish is with Redis, stored or about to be: a 408 now
            // would make the client retry a message that is delivered. The
            // link answers or fails every command (REDIS_* timeouts).
            let at = Instant::now() + self.config.request_timeout;
            return self.set_deadline(key, at);
        }
        debug!("{} request not completed in time: 408", conn.peer);
        let resp = Response::error(408, "request not completed in time");
        conn.out.push_owned(resp.encode(false, h.pending_is_head()));
        self.begin_close(key);
    }
}
