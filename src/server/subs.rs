//! A connection's channels: `subscribe`, `unsubscribe`, the re-check after
//! a token refresh, the user channel at connect, and leaving everything
//! when it closes. The hub's index (who is in a channel) and the
//! connection's own list (`WsConn::subs`, with each subscription's
//! position) change together, here and only here:
//!
//! - [`Server::add_subscription`] puts a connection in a channel (both
//!   places, or neither if it is closing);
//! - [`Server::end_subscription`] takes it out of one (idempotent);
//! - [`Server::leave_all`] takes it out of every one — on every close path,
//!   whatever state the close is in, so a slab key that is reused by a new
//!   connection is never left in a channel.
//!
//! After any write to a connection (an answer can overflow its output bound
//! and start its close), it is checked to be still open before more state
//! is changed for it.

use std::time::Instant;

use log::debug;

use super::Server;
use super::conn::Phase;
use crate::auth;
use crate::channels::{self, Refusal};
use crate::hub::{ChannelId, Since};
use crate::subscription::{Position, State, Subscription};

impl Server {
    /// `{"type":"subscribe"}`: checks the name, the limit and the grant,
    /// then joins. In one process this turn answers with the channel's
    /// position and queues the replay (all of what the client missed since
    /// `since`, or nothing and `recovered: false`), so no message can fall
    /// between the replay and live delivery. In cluster mode the position
    /// comes from Redis: the subscription is *joining* until it does (see
    /// `cluster.rs`), and the client's later requests wait for its answer.
    pub(super) fn subscribe(
        &mut self,
        key: usize,
        channel: &str,
        token: Option<&str>,
        since: Option<Since>,
        now: Instant,
    ) {
        let refuse = |r: Refusal, m: &str| channels::error(r, m, Some(channel));
        if !channels::valid_name(channel) {
            return self.send_text(key, refuse(Refusal::InvalidChannel, channels::NAME_RULE));
        }
        let Some(ws) = self.conns[key].ws() else { return };
        if ws.closing() {
            return;
        }
        let existing = self.sub_index(key, channel);
        if existing.is_none() && ws.subs.len() >= self.config.max_subscriptions {
            let msg =
                format!("at most {} subscriptions per connection (MAX_SUBSCRIPTIONS)", self.config.max_subscriptions);
            return self.send_text(key, refuse(Refusal::TooManySubscriptions, &msg));
        }
        let token_exp = match self.grant(key, channel, token) {
            Ok(exp) => exp,
            Err(error) => return self.send_text(key, error),
        };
        let Some(ws) = self.conns[key].ws() else { return };
        // Joined again (say, with a fresh subscription token): keep the
        // longer-lived grant.
        let token_exp = match existing.and_then(|i| ws.subs.get(i)) {
            Some(s) if s.token_exp().is_some() && token_exp.is_some() => s.token_exp().max(token_exp),
            Some(_) => None,
            None => token_exp,
        };
        if self.cluster.is_some() {
            return self.cluster_join(key, channel, token_exp, since, false);
        }
        let id = self.hub.subscribe(channel, key);
        let replay = since.as_ref().and_then(|s| self.hub.replay(id, s, now));
        // A replay must fit MAX_OUTPUT_BYTES with what is queued already;
        // one that does not is not sent (recovered:false: the app refetches,
        // which costs it one request instead of a 1013 loop).
        let queued = self.conns[key].out.bytes();
        let max = self.config.max_output_bytes;
        let replay = replay.filter(|r| queued + r.iter().map(|f| f.len()).sum::<usize>() <= max);
        if since.is_some() {
            self.metrics.recovery(replay.is_some());
        }
        let c = self.hub.channel(id);
        let at = Position { epoch: c.epoch.clone(), offset: c.offset };
        let answer = channels::subscribed(channel, &c.epoch, c.offset, replay.is_some());
        debug!(
            "{} subscribed to {channel} (since {:?}: {:?} replayed)",
            self.conns[key].peer,
            since,
            replay.as_ref().map(Vec::len)
        );
        // In the channel before the answer is written: if writing it closes
        // the connection, the close takes it out again with the rest.
        self.add_subscription(key, Subscription::joined(id, token_exp, at));
        self.send_text(key, answer);
        if !self.is_open_ws(key) {
            return; // closed by its own answer: nothing may follow the close frame
        }
        let conn = &mut self.conns[key];
        for frame in replay.into_iter().flatten() {
            conn.out.push_shared(frame);
        }
        self.mark_dirty(key);
    }

    /// `{"type":"unsubscribe"}`: leaves the channel (answered even if the
    /// connection was not in it, so the client's state converges).
    pub(super) fn unsubscribe(&mut self, key: usize, channel: &str) {
        if !channels::valid_name(channel) {
            let e = channels::error(Refusal::InvalidChannel, channels::NAME_RULE, Some(channel));
            return self.send_text(key, e);
        }
        self.end_subscription(key, channel, None);
        self.send_text(key, channels::unsubscribed(channel, None));
    }

    /// After a token refresh: leaves every channel the new token no longer
    /// grants (a subscription token that has not expired still does).
    pub(super) fn recheck_grants(&mut self, key: usize, grants: Box<[Box<str>]>) {
        let now = auth::now_secs();
        let Some(Phase::Ws(ws)) = self.conns.get_mut(key).map(|c| &mut c.phase) else { return };
        ws.grants = grants;
        let ws = &*ws;
        let revoked: Vec<String> = ws
            .subs
            .iter()
            .map(|s| (&*self.hub.channel(s.channel).name, s.token_exp()))
            .filter(|(name, exp)| {
                !(channels::may_join_user(name, &ws.sub)
                    || channels::granted(name, &ws.grants)
                    || exp.is_some_and(|exp| exp > now))
            })
            .map(|(name, _)| name.to_string())
            .collect();
        for name in revoked {
            self.end_subscription(key, &name, Some("grant revoked"));
        }
    }

    /// Every connection is in its own user's channel, joined by the server
    /// at connect (no `subscribed` answer): at the channel's position now
    /// in one process, at the position Redis gives in cluster mode (the
    /// 101 is sent then).
    pub(super) fn join_user_channel(&mut self, key: usize, channel: &str) {
        if let Some(cluster) = &self.cluster {
            // The 101 waits for the position (one Redis round trip), so
            // whatever is published after the client sees the upgrade is
            // after the position. While Redis is down it does not wait: the
            // channel is joined when the link is back.
            if cluster.up {
                self.conns[key].set_corked(true);
            }
            return self.cluster_join(key, channel, None, None, true);
        }
        let id = self.hub.subscribe(channel, key);
        let c = self.hub.channel(id);
        let at = Position { epoch: c.epoch.clone(), offset: c.offset };
        self.add_subscription(key, Subscription::joined(id, None, at));
    }

    /// Lists `sub` in `key`'s own list (replacing its subscription to that
    /// channel, if any), right after the caller put `key` in the hub's
    /// index with `hub.subscribe`: the two change together. A connection
    /// that is closing or gone joins nothing (the hub entry is undone).
    pub(super) fn add_subscription(&mut self, key: usize, sub: Subscription) {
        let id = sub.channel;
        let token_exp = sub.token_exp();
        match self.conns.get_mut(key).map(|c| &mut c.phase) {
            Some(Phase::Ws(ws)) if !ws.closing() => match ws.subs.iter_mut().find(|s| s.channel == id) {
                Some(s) => *s = sub,
                None => ws.subs.push(sub),
            },
            _ => return self.hub.unsubscribe(id, key),
        }
        if token_exp.is_some() {
            // Only a subscription token grants it: its expiry is now one
            // of the connection's deadlines (see expire_subscription_tokens).
            self.reschedule_ws(key);
        }
    }

    /// Takes `key` out of `channel` (joining or joined); with a `reason`,
    /// the client is told `{"type":"unsubscribed","reason":…}`. Idempotent;
    /// true if it was in the channel.
    pub(super) fn end_subscription(&mut self, key: usize, channel: &str, reason: Option<&str>) -> bool {
        let Some(i) = self.sub_index(key, channel) else { return false };
        let Some(Phase::Ws(ws)) = self.conns.get_mut(key).map(|c| &mut c.phase) else { return false };
        let sub = ws.subs.swap_remove(i);
        self.hub.unsubscribe(sub.channel, key);
        self.maybe_unsubscribe_remote(channel);
        if let State::Joining(j) = &sub.state
            && !j.silent
        {
            // Its requests waited for this join: read them now.
            self.again.push(key);
        }
        if let Some(reason) = reason {
            self.send_text(key, channels::unsubscribed(channel, Some(reason)));
        }
        true
    }

    /// Takes `key` out of every channel. On every close path: whatever
    /// state the close is in, and as often as it is called.
    pub(super) fn leave_all(&mut self, key: usize) {
        let Some(Phase::Ws(ws)) = self.conns.get_mut(key).map(|c| &mut c.phase) else { return };
        for s in std::mem::take(&mut ws.subs) {
            let name = self.cluster.as_ref().map(|_| self.hub.channel(s.channel).name.to_string());
            self.hub.unsubscribe(s.channel, key);
            if let Some(name) = name {
                self.maybe_unsubscribe_remote(&name);
            }
        }
    }

    /// Where `channel` is in `key`'s list, if it is there.
    pub(super) fn sub_index(&self, key: usize, channel: &str) -> Option<usize> {
        let id = self.hub.find(channel)?;
        self.conns.get(key)?.ws()?.subs.iter().position(|s| s.channel == id)
    }

    /// `key` is an open WebSocket (not closing, not gone).
    pub(super) fn is_open_ws(&self, key: usize) -> bool {
        self.conns.get(key).and_then(|c| c.ws()).is_some_and(|ws| !ws.closing())
    }

    /// Tells one subscriber its view may be stale (`subscribed` with
    /// `recovered:false`: refetch, then carry on from `at`), and moves its
    /// position there.
    pub(super) fn resync(&mut self, key: usize, id: ChannelId, at: Position) {
        let name = self.hub.channel(id).name.to_string();
        let note = channels::subscribed(&name, &at.epoch, at.offset, false);
        let Some(Phase::Ws(ws)) = self.conns.get_mut(key).map(|c| &mut c.phase) else { return };
        if let Some(s) = ws.subs.iter_mut().find(|s| s.channel == id) {
            s.state = State::Joined(at);
            self.send_text(key, note);
        }
    }
}
