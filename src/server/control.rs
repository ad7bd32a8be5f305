//! The server API in the loop: what an unsubscribe, disconnect or revoke
//! does to this instance's connections, the checks a denial or revocation
//! adds to joins and tokens, a channel's position and history for a
//! server-rendered page, and (cluster mode) the same actions arriving from
//! other instances through Redis. The requests are validated in
//! [`crate::control`]; this file carries them out.
//!
//! In cluster mode an action is applied here at once, then stored in Redis
//! and published on the control channel in one script; the HTTP answer
//! waits for Redis (a 200 means every instance will apply it). Every
//! instance applies what the control channel brings, and loads every
//! record in force at start-up and after each reconnect to Redis, applying
//! them to its live connections: an instance cut off while the action was
//! taken applies it once it is back (see docs/cluster.md for the bound).

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use log::{debug, info, warn};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use super::conn::Phase;
use super::{CLOSE_WAIT, Server};
use crate::auth;
use crate::channels::{self, Refusal};
use crate::close::Reason;
use crate::cluster::{Command, Entry, Event};
use crate::config::Config;
use crate::control::{self, HeldMessage, IdempotencyCache, Record, Request, Store};
use crate::http::{Head, Response};
use crate::hub::{ChannelId, Since};
use crate::ws::WsConn;

/// Channels held for pages at most (see `hold`); past it the oldest hold
/// ends early.
const MAX_HELD: usize = 100_000;
/// The `reason` of an `unsubscribed` when the app gave none.
const DEFAULT_UNSUBSCRIBE_REASON: &str = "unsubscribed by the server";
/// The close reason of a revocation.
const REVOKED_REASON: &str = "token revoked: reconnect with a fresh token";

/// The server API's state on this instance.
pub(super) struct ControlState {
    /// Denials and revocations in force (checked at upgrades, refreshes, joins).
    pub store: Store,
    /// `Idempotency-Key`s of single-process publishes.
    pub idempotency: IdempotencyCache,
    /// Channels held for pages (single-process): until when, by name...
    held: HashMap<Box<str>, Instant>,
    /// ...and in the order the holds were taken (entries refreshed since
    /// are moved on when they reach the front).
    held_order: VecDeque<(Instant, Box<str>)>,
    /// Requests waiting for Redis (cluster mode), by command id.
    parked: HashMap<u64, Parked>,
    next_id: u64,
    /// The last LoadControl sent (its answer is applied, others ignored).
    loading: u64,
    /// This instance's name on the control channel, so it can skip its own
    /// messages (it applied them when it took the action).
    origin: String,
}

/// A server API request waiting for Redis.
struct Parked {
    key: usize,
    conn_id: u64,
    head: Box<Head>,
    pending: Pending,
}

enum Pending {
    /// An action: this answer once Redis has stored it.
    Stored(Response),
    Position,
    History {
        since: Option<Since>,
        limit: usize,
    },
}

/// How a record is applied to live connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Apply {
    /// As it is taken (here, or on another instance): every connection of the user.
    Now,
    /// Loaded after (re)connecting to Redis: it may be old, so a disconnect
    /// closes only the connections opened by then.
    CatchUp,
}

impl ControlState {
    pub fn new(config: &Config) -> ControlState {
        let mut origin = [0u8; 8];
        crate::sys::fill_random(&mut origin);
        ControlState {
            store: Store::new(config.jwt_max_lifetime_secs, config.jwt_leeway_secs),
            idempotency: IdempotencyCache::new(config.idempotency_ttl, control::MAX_IDEMPOTENCY_KEYS),
            held: HashMap::new(),
            held_order: VecDeque::new(),
            parked: HashMap::new(),
            next_id: 0,
            loading: 0,
            origin: origin.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

impl Server {
    /// Carries out a validated server API request from connection `key`.
    /// `None`: parked until Redis answers (cluster mode).
    pub(super) fn control(&mut self, key: usize, head: &Head, req: Request) -> Option<Response> {
        let now = auth::now_secs();
        let store = &self.control.store;
        match req {
            Request::Unsubscribe { user, channel, reason } => {
                // Tokens of this second count as old: see crate::control.
                let before = now + 1;
                let reason = reason.unwrap_or_else(|| DEFAULT_UNSUBSCRIBE_REASON.into());
                let rec =
                    Record::Deny { user, pattern: channel, before, expires: store.expires_for(before, now), reason };
                self.act(key, head, rec, "unsubscribed")
            }
            Request::Disconnect { user, reconnect, reason } => {
                let expires = store.expires_for(now, now);
                let rec = Record::Disconnect { user, at: now, reconnect, expires, reason: reason.unwrap_or_default() };
                self.act(key, head, rec, "disconnected")
            }
            Request::Revoke { user, issued_before } => {
                let before = issued_before.unwrap_or(now + 1);
                let rec = Record::Revoke { user, before, expires: store.expires_for(before, now) };
                self.act(key, head, rec, "disconnected")
            }
            Request::Position { channel } if self.cluster.is_some() => {
                self.page(key, head, &channel, None, 0, Pending::Position)
            }
            Request::History { channel, since, limit } if self.cluster.is_some() => {
                let pending = Pending::History { since: since.clone(), limit };
                self.page(key, head, &channel, since.as_ref(), limit, pending)
            }
            Request::Position { channel } => Some(self.position_local(&channel)),
            Request::History { channel, since, limit } => Some(self.history_local(&channel, since.as_ref(), limit)),
        }
    }

    /// An unsubscribe, disconnect or revoke: applied here now; in cluster
    /// mode stored in Redis (and so sent to every instance) before the
    /// answer, which counts what it did on this instance as `counted`.
    fn act(&mut self, key: usize, head: &Head, rec: Record, counted: &str) -> Option<Response> {
        let now = auth::now_secs();
        if !matches!(rec, Record::Disconnect { .. }) && self.control.store.is_full(now) {
            warn!("server API: {} denials and revocations in force: refusing a new one", self.control.store.len());
            let msg = format!(
                "{} denials and revocations are in force (the most one instance holds): retry once some expire",
                self.control.store.len()
            );
            return Some(Response::error(503, &msg).header("Retry-After", "60"));
        }
        let n = self.apply_record(&rec, Apply::Now);
        let mut body = json!({"status": "ok", counted: n});
        if let Record::Revoke { before, .. } = &rec {
            body["issued_before"] = (*before).into();
        }
        let answer = Response::json(200, &body);
        let Some(cluster) = &mut self.cluster else {
            return Some(answer);
        };
        if !cluster.up {
            return Some(unavailable("the Redis link is down (the action was applied on this instance only)"));
        }
        let id = self.control.id();
        let record = rec.encode();
        let message = format!("{} {record}", self.control.origin);
        let cmd =
            Command::Control { id, field: rec.field(), record, message, before: rec.before(), expires: rec.expires() };
        if cluster.link.send(cmd).is_err() {
            return Some(unavailable("the Redis queue is full (the action was applied on this instance only)"));
        }
        self.park(key, head, id, Pending::Stored(answer));
        None
    }

    /// Keeps `rec` and applies it to this instance's connections of its
    /// user; returns how many subscriptions (a denial) or connections (the
    /// others) it ended.
    fn apply_record(&mut self, rec: &Record, how: Apply) -> usize {
        let now_secs = auth::now_secs();
        self.control.store.insert(rec, now_secs);
        let now = Instant::now();
        let mut n = 0;
        for key in self.user_connections(rec.user()) {
            let Some(ws) = self.conns[key].ws() else { continue };
            match rec {
                Record::Revoke { before, .. } => {
                    if control::is_old(ws.iat.get(), *before) {
                        self.close_because(key, Reason::Reauthenticate, REVOKED_REASON, now);
                        n += 1;
                        continue;
                    }
                    // A fresh connection token; the subscription tokens its
                    // channels were joined with are of unknown age: those
                    // subscriptions end (fail closed), a fresh one rejoins.
                    for name in self.subscriptions_of(ws, |_, by_token| by_token) {
                        self.end_subscription(key, &name, Some("token revoked"));
                    }
                }
                Record::Deny { pattern, before, reason, .. } => {
                    let old = control::is_old(ws.iat.get(), *before);
                    let pattern: [Box<str>; 1] = [pattern.as_str().into()];
                    // Joined through the token's claim: ended if the token is
                    // old. Through a subscription token: always (its age is
                    // unknown here).
                    let names = self
                        .subscriptions_of(ws, |name, by_token| channels::granted(name, &pattern) && (by_token || old));
                    for name in names {
                        if self.end_subscription(key, &name, Some(reason)) {
                            n += 1;
                        }
                    }
                }
                Record::Disconnect { at, reconnect, reason, .. } => {
                    if how == Apply::CatchUp && ws.opened_at > *at {
                        continue; // opened after the action: not concerned
                    }
                    let r = if *reconnect { Reason::Reauthenticate } else { Reason::Disconnected };
                    let text = if reason.is_empty() { r.text() } else { reason.as_str() };
                    self.close_because(key, r, text, now);
                    n += 1;
                }
            }
        }
        if n > 0 {
            let what = match rec {
                Record::Revoke { .. } => "revoked: connections closed",
                Record::Deny { .. } => "denied: subscriptions ended",
                Record::Disconnect { .. } => "disconnected: connections closed",
            };
            info!("server API: user {:?} {what}: {n}", rec.user());
        }
        n
    }

    /// This instance's open WebSockets of `user` (every connection is in
    /// its user's channel).
    fn user_connections(&self, user: &str) -> Vec<usize> {
        let Some(name) = channels::user_channel(user) else { return Vec::new() };
        self.hub
            .subscribers(&name)
            .copied()
            .filter(|&k| matches!(self.conns.get(k).and_then(|c| c.ws()), Some(ws) if ws.sub == *user && !ws.closing()))
            .collect()
    }

    /// The names of `ws`'s subscriptions for which `pick(name, joined with
    /// a subscription token)` holds.
    fn subscriptions_of(&self, ws: &WsConn, pick: impl Fn(&str, bool) -> bool) -> Vec<String> {
        ws.subs
            .iter()
            .map(|s| (&*self.hub.channel(s.channel).name, s.token_exp().is_some()))
            .filter(|(name, by_token)| pick(name, *by_token))
            .map(|(name, _)| name.to_string())
            .collect()
    }

    /// Like `close_ws`, with the close frame's reason text given (the
    /// app's `reason`, at most 123 bytes: checked in [`crate::control`]).
    fn close_because(&mut self, key: usize, reason: Reason, text: &str, now: Instant) {
        if !self.is_open_ws(key) {
            return;
        }
        self.uncount(key, reason.text());
        self.metrics.close_sent(reason);
        let conn = &mut self.conns[key];
        let peer = conn.peer;
        if let Some((ws, mut wire)) = conn.ws_wire() {
            debug!("{peer} ({:?}) closing: {} {text}", ws.sub, reason.code());
            // A Pong tungstenite still owes goes first (RFC 6455 §5.5.1).
            let ctx = &mut self.protocol.reading(ws, now).ctx;
            let _ = ctx.flush(&mut wire);
            let frame = CloseFrame { code: CloseCode::from(reason.code()), reason: text.to_string().into() };
            let _ = ctx.close(&mut wire, Some(frame));
            ws.close_deadline = Some((now + CLOSE_WAIT).into());
        }
        self.mark_dirty(key);
        self.reschedule_ws(key);
    }

    // ---- checks at joins -----------------------------------------------------

    /// Called first by `grant`: may `ws` join `channel` despite a denial or
    /// revocation? A denial is lifted by a token issued after it: the
    /// connection token (its claim) or the subscription token `token`. A
    /// subscription token must also pass the revocation and lifetime checks.
    /// `Err` is the error message to send.
    pub(super) fn control_denies(&self, ws: &WsConn, channel: &str, token: Option<&str>) -> Result<(), String> {
        let now = auth::now_secs();
        let store = &self.control.store;
        let forbid = |m: &str| Err(channels::error(Refusal::Forbidden, m, Some(channel)));
        // Only a token this user may use counts; `grant` explains the others.
        let claims = token.and_then(|t| self.verifier.verify(t).ok()).filter(|c| {
            c.sub.as_deref() == Some(ws.sub.as_str())
                && c.extra.get("channel").and_then(|v| v.as_str()) == Some(channel)
        });
        let mut token_iat = None;
        if let Some(claims) = &claims {
            if let Err(why) = store.check_token(&ws.sub, claims.iat, claims.exp, now) {
                return forbid(&format!("subscription token refused: {}", why.message()));
            }
            token_iat = Some(claims.iat);
        }
        if let Some(d) = store.denial(&ws.sub, channel, now) {
            let lifted = !control::is_old(ws.iat.get(), d.before)
                || token_iat.is_some_and(|iat| !control::is_old(iat, d.before));
            if !lifted {
                return forbid(&format!(
                    "access to this channel was withdrawn ({}): a token issued after that is needed",
                    d.reason
                ));
            }
        }
        Ok(())
    }

    // ---- positions and history (single process) ----------------------------------

    /// The hub forgets a channel with no subscribers and no history, and
    /// its next stream gets a new epoch. A page that read a channel's
    /// position must find the same stream when its browser subscribes, so
    /// the read holds the channel in the hub for HISTORY_TTL_SECS (one hold
    /// per channel, extended by each read).
    fn hold(&mut self, channel: &str) -> ChannelId {
        let now = Instant::now();
        self.release_holds(now);
        let until = now + self.config.history_ttl;
        if let Some(t) = self.control.held.get_mut(channel) {
            *t = until;
            return self.hub.find(channel).expect("a held channel is kept");
        }
        self.control.held.insert(channel.into(), until);
        self.control.held_order.push_back((until, channel.into()));
        if self.control.held.len() > MAX_HELD
            && let Some((_, oldest)) = self.control.held_order.pop_front()
        {
            self.control.held.remove(&oldest);
            if let Some(id) = self.hub.find(&oldest) {
                self.hub.release(id);
            }
        }
        self.hub.hold(channel)
    }

    /// Ends the holds that are due (done on each read: a hold kept a bit
    /// longer only keeps a channel's epoch a bit longer).
    fn release_holds(&mut self, now: Instant) {
        while let Some((at, _)) = self.control.held_order.front()
            && *at <= now
        {
            let (_, name) = self.control.held_order.pop_front().expect("front exists");
            match self.control.held.get(&name).copied() {
                Some(until) if until > now => self.control.held_order.push_back((until, name)),
                Some(_) => {
                    self.control.held.remove(&name);
                    if let Some(id) = self.hub.find(&name) {
                        self.hub.release(id);
                    }
                }
                None => {}
            }
        }
    }

    fn position_local(&mut self, channel: &str) -> Response {
        let id = self.hold(channel);
        let c = self.hub.channel(id);
        position_answer(channel, &c.epoch, c.offset, self.hub.subscriber_count(id))
    }

    fn history_local(&mut self, channel: &str, since: Option<&Since>, limit: usize) -> Response {
        let id = self.hold(channel);
        let now = Instant::now();
        let (epoch, latest) = {
            let c = self.hub.channel(id);
            (c.epoch.to_string(), c.offset)
        };
        // The oldest offset held: the smallest `s` the hub can replay from,
        // plus one (replays are whole or nothing, so this is a search).
        let at = |o: u64| Since { epoch: epoch.clone(), offset: o };
        let (mut lo, mut hi) = (latest.saturating_sub(self.config.history_size as u64), latest);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.hub.replay(id, &at(mid), now).is_some() { hi = mid } else { lo = mid + 1 }
        }
        let first = lo + 1;
        let (from, complete) = range(since, &epoch, latest, (first <= latest).then_some(first));
        let frames = match from {
            Some(from) => self.hub.replay(id, &at(from), now).unwrap_or_default(),
            None => Vec::new(),
        };
        let parsed: Vec<Envelope> = frames.iter().take(limit).filter_map(|f| envelope(f)).collect();
        let messages: Vec<HeldMessage> =
            parsed.iter().map(|e| HeldMessage { offset: e.offset, kind: e.kind, payload: e.payload.get() }).collect();
        let body = control::history_answer(channel, &epoch, latest, &messages, complete, self.config.max_output_bytes);
        Response::text(200, "application/json", body)
    }

    // ---- cluster mode ------------------------------------------------------------

    /// A position or history read from Redis (`limit` 0: position only).
    fn page(
        &mut self,
        key: usize,
        head: &Head,
        channel: &str,
        since: Option<&Since>,
        limit: usize,
        pending: Pending,
    ) -> Option<Response> {
        let cluster = self.cluster.as_mut()?;
        if !cluster.up {
            return Some(unavailable("the Redis link is down"));
        }
        let id = self.control.id();
        let since = since.map(|s| (s.epoch.clone(), s.offset));
        if cluster.link.send(Command::Page { id, channel: channel.to_string(), since, limit }).is_err() {
            return Some(unavailable("the Redis queue is full"));
        }
        self.park(key, head, id, pending);
        None
    }

    fn park(&mut self, key: usize, head: &Head, id: u64, pending: Pending) {
        let conn_id = self.conns[key].id;
        self.control.parked.insert(id, Parked { key, conn_id, head: Box::new(head.clone()), pending });
        if let Phase::Http(h) = &mut self.conns[key].phase {
            h.parked = true;
        }
    }

    /// Answers a parked request (if its connection is still there), then
    /// lets the requests behind it through.
    fn unpark(&mut self, id: u64, answer: impl FnOnce(&mut Server, Pending) -> Response) {
        let Some(p) = self.control.parked.remove(&id) else { return };
        let resp = answer(self, p.pending);
        if !matches!(self.conns.get(p.key), Some(c) if c.id == p.conn_id) {
            return; // the caller left
        }
        if let Phase::Http(h) = &mut self.conns[p.key].phase {
            h.parked = false;
        }
        self.respond(p.key, &p.head, resp);
        self.flush_conn(p.key);
        self.again.push(p.key);
    }

    /// After every (re)connect to Redis: load the records in force. Sent
    /// before the gap repairs' history reads, so it is answered first.
    pub(super) fn control_link_up(&mut self) {
        let id = self.control.id();
        let Some(cluster) = &mut self.cluster else { return };
        if cluster.link.send(Command::LoadControl { id }).is_err() {
            warn!(
                "server API: cannot load the control records (the Redis queue is full); retried at the next reconnect"
            );
            return;
        }
        self.control.loading = id;
    }

    /// The server API's events from the Redis link.
    pub(super) fn on_control_event(&mut self, event: Event) {
        match event {
            Event::ControlStored { id } => self.unpark(id, |_, p| match p {
                Pending::Stored(resp) => resp,
                _ => unavailable("unexpected answer from Redis"),
            }),
            Event::ControlFailed { id, error } if id == self.control.loading => {
                warn!("server API: loading the control records failed: {error}; retried at the next reconnect");
            }
            Event::ControlFailed { id, error } => {
                warn!("server API: Redis failed a request: {error}");
                self.unpark(id, |_, p| match p {
                    Pending::Stored(_) => {
                        unavailable("Redis did not store the action (it was applied on this instance only): retry it")
                    }
                    _ => unavailable("Redis did not answer the read"),
                })
            }
            Event::ControlLoaded { id, records } if id == self.control.loading => {
                let mut applied = 0;
                for text in &records {
                    match Record::decode(text) {
                        Ok(rec) => {
                            applied += self.apply_record(&rec, Apply::CatchUp);
                        }
                        Err(e) => warn!("server API: ignoring a stored record ({e}): not written by taskcast?"),
                    }
                }
                info!(
                    "server API: {} control records in force; {applied} subscriptions or connections ended",
                    records.len()
                );
            }
            Event::ControlLoaded { .. } => {} // superseded by a later load
            Event::Control { message } => {
                let Some((origin, text)) = message.split_once(' ') else { return };
                if origin == self.control.origin {
                    return; // applied when it was taken here
                }
                match Record::decode(text) {
                    Ok(rec) => {
                        self.apply_record(&rec, Apply::Now);
                    }
                    Err(e) => warn!("server API: ignoring a control message ({e}): not written by taskcast?"),
                }
            }
            Event::Page { id, channel, epoch, offset, first, entries } => self.unpark(id, |server, p| match p {
                Pending::Position => {
                    position_answer(&channel, &epoch, offset, server.hub.subscribers(&channel).count())
                }
                Pending::History { since, limit } => {
                    let first = (first > 0).then_some(first);
                    let (from, complete) = range(since.as_ref(), &epoch, offset, first);
                    let messages: Vec<HeldMessage> =
                        entries.iter().filter(|e| from.is_some_and(|f| e.offset > f)).take(limit).map(held).collect();
                    let max = server.config.max_output_bytes;
                    let body = control::history_answer(&channel, &epoch, offset, &messages, complete, max);
                    Response::text(200, "application/json", body)
                }
                Pending::Stored(resp) => resp,
            }),
            _ => {}
        }
    }
}

/// Which held messages a history read returns, and whether the range
/// asked for is whole: `(Some(s), _)` means "the messages after offset s"
/// (`None`: none at all). Without `since`, every held message (whole by
/// definition); with `since` in the same epoch, those after it, whole if
/// nothing after it is gone; in another epoch (the stream started again),
/// every held one, not whole; from the future, none, not whole.
fn range(since: Option<&Since>, epoch: &str, latest: u64, first: Option<u64>) -> (Option<u64>, bool) {
    let all = first.map(|f| f - 1);
    match since {
        None => (all, true),
        Some(s) if s.epoch != epoch => (all, false),
        Some(s) if s.offset > latest => (None, false),
        Some(s) if s.offset == latest => (Some(s.offset), true),
        Some(s) => match first {
            Some(f) if f <= s.offset + 1 => (Some(s.offset), true),
            _ => (all, false),
        },
    }
}

fn position_answer(channel: &str, epoch: &str, offset: u64, subscribers: usize) -> Response {
    Response::json(200, &json!({"channel": channel, "epoch": epoch, "offset": offset, "subscribers": subscribers}))
}

fn held(e: &Entry) -> HeldMessage<'_> {
    HeldMessage { offset: e.offset, kind: &e.kind, payload: &e.payload }
}

/// A channel message as the hub keeps it (the frame's text).
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(borrow)]
    payload: &'a RawValue,
    offset: u64,
}

/// The envelope inside one server text frame (unmasked: a 2, 4 or 10 byte
/// header, RFC 6455 §5.2).
fn envelope(frame: &[u8]) -> Option<Envelope<'_>> {
    let start = match frame.get(1)? & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    serde_json::from_slice(frame.get(start..)?).ok()
}

fn unavailable(why: &str) -> Response {
    Response::error(503, &format!("cluster unavailable: {why}")).header("Retry-After", "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn since(epoch: &str, offset: u64) -> Since {
        Since { epoch: epoch.into(), offset }
    }

    #[test]
    fn history_ranges() {
        // (since, latest, first held, want)
        type Row = (Option<Since>, u64, Option<u64>, (Option<u64>, bool));
        let table: &[Row] = &[
            (None, 10, Some(4), (Some(3), true)),
            (None, 0, None, (None, true)),
            (Some(since("e", 5)), 10, Some(4), (Some(5), true)),
            (Some(since("e", 3)), 10, Some(4), (Some(3), true)),
            (Some(since("e", 2)), 10, Some(4), (Some(3), false)), // 3 is gone
            (Some(since("e", 10)), 10, Some(4), (Some(10), true)),
            (Some(since("e", 10)), 10, None, (Some(10), true)),
            (Some(since("e", 5)), 10, None, (None, false)),     // expired
            (Some(since("e", 11)), 10, Some(4), (None, false)), // from the future
            (Some(since("x", 5)), 10, Some(4), (Some(3), false)), // another epoch
        ];
        for (s, latest, first, want) in table {
            assert_eq!(range(s.as_ref(), "e", *latest, *first), *want, "{s:?} {latest} {first:?}");
        }
    }

    #[test]
    fn envelopes_from_frames_of_every_length() {
        for n in [1, 200, 70_000] {
            let payload = format!("\"{}\"", "x".repeat(n));
            let f = crate::broadcast::frame(&crate::broadcast::channel_envelope("t", &payload, "p:1", 9));
            let e = envelope(&f).unwrap();
            assert_eq!((e.kind, e.offset, e.payload.get()), ("t", 9, payload.as_str()));
        }
    }
}
