//! The WebSocket side of a connection: reading frames through tungstenite,
//! acting on client messages, our pings, and the close state machine
//! (close frame → wait for the answer → FIN → linger).

use std::io::{self, Read};
use std::time::Instant;

use log::{debug, warn};
use tungstenite::protocol::Message;

use super::conn::Phase;
use super::{CLOSE_WAIT, READ_BUDGET_BYTES, READ_BUDGET_MESSAGES, Server};
use crate::auth;
use crate::channels::{self, Refusal};
use crate::metrics::auth_reason;
use crate::ws::{self, Inbound, Reason, Wire};

impl Server {
    /// Reads the client's frames (each one metered: see
    /// [`crate::frame_meter`]) and acts on its messages, within the turn's
    /// budget of frames, bytes and messages.
    pub(super) fn read_ws(&mut self, key: usize) {
        let now = Instant::now();
        if self.conns.get(key).and_then(|c| c.ws()).is_some_and(|ws| ws.awaiting_answer()) {
            return; // read when its subscribe is answered
        }
        if let Some(Phase::Ws(ws)) = self.conns.get_mut(key).map(|c| &mut c.phase) {
            self.protocol.reading(ws, now).meter.start_turn(now);
        }
        for _ in 0..READ_BUDGET_MESSAGES {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let Phase::Ws(ws) = &mut conn.phase else {
                return;
            };
            let r = self.protocol.reading(ws, now);
            let mut wire = Wire { sock: &mut conn.stream, out: &mut conn.out, meter: Some(&mut r.meter) };
            let result = r.ctx.read(&mut wire);
            if !conn.out.is_empty() {
                self.mark_dirty(key); // tungstenite may have queued a pong or close reply
                if self.output_overflows(key, now) {
                    return;
                }
            }
            let conn = &mut self.conns[key];
            let peer = conn.peer;
            let Phase::Ws(ws) = &mut conn.phase else {
                return;
            };
            use tungstenite::Error as E;
            if let Some(reason) = ws.reading.as_ref().and_then(|r| r.meter.refused) {
                return self.fail_ws(key, reason);
            }
            match result {
                Ok(msg) => {
                    ws.last_seen = now.into();
                    match msg {
                        Message::Text(text) => self.on_client_text(key, text.as_str(), now),
                        Message::Binary(_) => return self.fail_ws(key, Reason::Binary),
                        // Pings are answered by tungstenite; pongs and the
                        // peer's close only refresh `last_seen`.
                        _ => {}
                    }
                    // A subscribe waits for Redis: the requests behind it
                    // wait unread, so answers leave in request order
                    // (reading resumes when it is answered).
                    if self.conns.get(key).and_then(|c| c.ws()).is_some_and(|ws| ws.awaiting_answer()) {
                        return;
                    }
                }
                Err(E::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    if ws.reading.as_ref().is_some_and(|r| r.meter.spent || r.meter.has_pending()) {
                        self.again.push(key); // budget spent: more next turn
                    }
                    // Idle again: the Reading goes back (if nothing is
                    // partly read).
                    self.protocol.release(ws);
                    return;
                }
                Err(E::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                // The close handshake finished: send what is queued, then FIN.
                Err(E::ConnectionClosed | E::AlreadyClosed) => return self.begin_close(key),
                Err(E::Capacity(_)) => return self.fail_ws(key, Reason::TooBig),
                Err(E::Utf8(_)) => return self.fail_ws(key, Reason::BadUtf8),
                Err(E::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake)) => {
                    // FIN without a close frame. It may still read (a
                    // half-close): send what is queued, then close.
                    debug!("{peer} closed without a close frame");
                    return self.begin_close(key);
                }
                Err(E::Protocol(e)) => {
                    debug!("{peer} protocol error: {e}");
                    return self.fail_ws(key, Reason::Protocol);
                }
                Err(e) => {
                    debug!("{peer} read error: {e}");
                    return self.remove(key);
                }
            }
        }
        self.again.push(key);
    }

    fn on_client_text(&mut self, key: usize, text: &str, now: Instant) {
        // A connection that is closing (say, its last answer overflowed its
        // output bound) takes no more requests: nothing may follow its
        // close frame, and it must join nothing.
        if !self.is_open_ws(key) {
            return;
        }
        if self.conns[key].ws().is_some_and(|w| w.awaiting_auth) {
            return self.authenticate_first_message(key, text, now);
        }
        match ws::on_text(text, self.config.max_message_bytes) {
            Inbound::Ignore => debug!("{} sent an unhandled message", self.conns[key].peer),
            Inbound::Reply(reply) => self.send_text(key, reply),
            Inbound::Close(reason) => self.fail_ws(key, reason),
            Inbound::Auth(token) => self.refresh_auth(key, &token, now),
            Inbound::Refuse(error) => self.send_text(key, error),
            Inbound::Subscribe { channel, token, since } => self.subscribe(key, &channel, token.as_deref(), since, now),
            Inbound::Unsubscribe { channel } => self.unsubscribe(key, &channel),
        }
    }

    /// May this connection join `channel`? `Ok(Some(exp))` when only a
    /// subscription token grants it; `Err` is the error message to send.
    /// A subscription token that fails verification counts as a failed
    /// authentication of the connection's address (AUTH_FAILURES_PER_MIN),
    /// and an address past that limit gets no more of them checked.
    pub(super) fn grant(&mut self, key: usize, channel: &str, token: Option<&str>) -> Result<Option<u64>, String> {
        let refuse = |r: Refusal, m: &str| Err(channels::error(r, m, Some(channel)));
        let Some(ws) = self.conns[key].ws() else {
            return refuse(Refusal::Forbidden, "not connected");
        };
        // Before any grant is looked at: nothing opens another user's channel.
        if channels::user_channel_of_other(channel, &ws.sub) {
            return refuse(Refusal::Forbidden, "a user: channel is only open to its own user");
        }
        // A denial or revocation from the server API refuses whatever grants it.
        self.control_denies(ws, channel, token)?;
        if channels::may_join_user(channel, &ws.sub) || channels::granted(channel, &ws.grants) {
            return Ok(None);
        }
        let Some(token) = token else {
            return refuse(
                Refusal::Forbidden,
                "not allowed to join this channel: no grant in the token, no subscription token",
            );
        };
        let now = Instant::now();
        if self.limits.check_auth_failures(&self.config, ws.ip.into(), now).is_err() {
            let ip = std::net::IpAddr::from(ws.ip);
            self.refusals.note("too_many_auth_failures", now, || {
                format!("subscription token for {channel} from {ip}: not checked (over AUTH_FAILURES_PER_MIN)")
            });
            return refuse(
                Refusal::RateLimited,
                "too many failed authentications from this address: retry in a minute",
            );
        }
        match self.verifier.verify(token) {
            Ok(claims) if claims.sub.as_deref().unwrap_or("") != ws.sub => {
                refuse(Refusal::Forbidden, "the subscription token is for another user")
            }
            Ok(claims) if claims.extra.get("channel").and_then(|c| c.as_str()) != Some(channel) => {
                refuse(Refusal::Forbidden, "the subscription token is for another channel")
            }
            Ok(claims) => Ok(Some(claims.exp)),
            Err(e) => {
                self.metrics.auth_failed(e);
                let ip = std::net::IpAddr::from(ws.ip);
                self.refusals.note(auth_reason(e), now, || {
                    let why = auth::describe_refusal(token, e, &self.config);
                    format!("subscription token for {channel} from {ip}: {why}")
                });
                if e.counts_as_failure() {
                    self.limits.record_auth_failure(&self.config, ip, now);
                }
                refuse(Refusal::InvalidToken, &format!("subscription token refused: {}", e.message()))
            }
        }
    }

    /// Ends every subscription that only a subscription token granted, once
    /// that token has expired (`exp` + JWT_LEEWAY_SECS, like a connection
    /// token). A client keeps it by subscribing again with a fresh token
    /// before then; a channel the connection token's claim grants by now is
    /// kept (the claim is its grant from here on). The client is told:
    /// `{"type":"unsubscribed","channel":C,"reason":"subscription token expired"}`.
    pub(super) fn expire_subscription_tokens(&mut self, key: usize) {
        let now = auth::now_secs();
        let leeway = self.config.jwt_leeway_secs;
        let Some(Phase::Ws(ws)) = self.conns.get_mut(key).map(|c| &mut c.phase) else { return };
        let ws = &mut *ws;
        let mut ended = Vec::new();
        for s in &mut ws.subs {
            let Some(exp) = s.token_exp() else { continue };
            if exp.saturating_add(leeway) > now {
                continue;
            }
            let name = &self.hub.channel(s.channel).name;
            if channels::granted(name, &ws.grants) {
                s.set_token_exp(None);
            } else {
                ended.push(name.to_string());
            }
        }
        for name in ended {
            self.end_subscription(key, &name, Some("subscription token expired"));
            if !self.is_open_ws(key) {
                return; // its answer closed it: nothing may follow the close frame
            }
        }
    }

    /// In-band token refresh: the same user's fresh token extends the
    /// connection; anything else closes it with 4003.
    fn refresh_auth(&mut self, key: usize, token: &str, now: Instant) {
        let conn = &mut self.conns[key];
        let Phase::Ws(ws) = &mut conn.phase else {
            return;
        };
        match self.verifier.verify(token) {
            Ok(claims) if claims.sub.as_deref().unwrap_or("") == ws.sub => {
                if let Err(why) = self.control.store.check_token(&ws.sub, claims.iat, claims.exp, auth::now_secs()) {
                    debug!("{} refresh token refused: {}", conn.peer, why.message());
                    self.metrics.auth_failed_because(why.label());
                    return self.close_ws(key, Reason::AuthRevoked, now);
                }
                // A fresh token lifts the denials issued before it.
                ws.iat = claims.iat.into();
                ws.expires_at = auth::expires_at(now, claims.exp, self.config.jwt_leeway_secs).into();
                let grants = channels::grants_from_claim(
                    claims.extra.get(&self.config.channels_claim),
                    self.config.max_subscriptions,
                );
                self.send_text(key, r#"{"type":"auth_ok"}"#.to_string());
                self.recheck_grants(key, grants);
                self.reschedule_ws(key);
            }
            Ok(_) => {
                let ip = std::net::IpAddr::from(ws.ip);
                self.refusals.note("wrong_subject", now, || {
                    format!("in-band auth from {ip}: the token is for another subject (closed with 4003)")
                });
                self.metrics.auth_failed_because("wrong_subject");
                self.close_ws(key, Reason::AuthOtherUser, now);
            }
            Err(e) => {
                let ip = std::net::IpAddr::from(ws.ip);
                self.refusals.note(auth_reason(e), now, || {
                    let why = auth::describe_refusal(token, e, &self.config);
                    format!("in-band auth from {ip}: {why} (closed with 4003)")
                });
                self.metrics.auth_failed(e);
                self.close_ws(key, Reason::AuthInvalid, now);
            }
        }
    }

    /// Makes connection `key` the authenticated connection of `claims`'s
    /// user: its subject, grants and expiry, and its own `user:` channel.
    /// The one path for both ways in (a token in the upgrade request, or
    /// in band), so both end in the same state.
    pub(super) fn authenticate(&mut self, key: usize, claims: auth::Claims, now: Instant) {
        let expires_at = auth::expires_at(now, claims.exp, self.config.jwt_leeway_secs);
        let grants =
            channels::grants_from_claim(claims.extra.get(&self.config.channels_claim), self.config.max_subscriptions);
        let iat = claims.iat;
        let sub = claims.sub.unwrap_or_default();
        let user_channel = channels::user_channel(&sub);
        let conn = &mut self.conns[key];
        let Phase::Ws(ws) = &mut conn.phase else { return };
        if std::mem::take(&mut ws.awaiting_auth) {
            self.awaiting_auth -= 1;
        }
        ws.iat = iat.into();
        ws.sub = ws::Subject::new(&sub);
        ws.grants = grants;
        ws.expires_at = expires_at.into();
        // Most connections stay in their user channel alone: room for one
        // subscription (a Vec's first push would make room for four).
        ws.subs.reserve_exact(1);
        debug!("{} connected as {:?}; {} clients", conn.peer, ws.sub, self.limits.clients());
        // Every connection is in its own user's channel.
        if let Some(name) = user_channel {
            self.join_user_channel(key, &name);
            // The subject shares the channel's name (`user:<sub>`): one
            // allocation for the hub's channel, its index and every tab.
            if let Some(id) = self.hub.find(&name)
                && let Some(Phase::Ws(ws)) = self.conns.get_mut(key).map(|c| &mut c.phase)
            {
                ws.sub = ws::Subject::shared(self.hub.channel(id).name.clone());
            }
        }
    }

    /// In-band authentication (`GET /ws?auth=message`): the first message
    /// must be `{"type":"auth","token":…}`. A valid token authenticates the
    /// connection ([`Server::authenticate`]) and is answered `auth_ok`;
    /// anything else closes it with a code and the reason (4001 expired,
    /// 1013 unknown key, 4003 refused or not an auth message), and counts
    /// as a failed authentication of its address, like a 401 at the upgrade.
    fn authenticate_first_message(&mut self, key: usize, text: &str, now: Instant) {
        let ip = self.conns[key].ws().map(|w| std::net::IpAddr::from(w.ip));
        let reason = match ws::on_text(text, self.config.max_message_bytes) {
            Inbound::Auth(token) => match self.verifier.verify(&token) {
                Ok(claims) => {
                    // Revoked (POST /api/revoke) or too long-lived: as at the
                    // upgrade, not counted against the address.
                    let sub = claims.sub.as_deref().unwrap_or("");
                    if let Err(why) = self.control.store.check_token(sub, claims.iat, claims.exp, auth::now_secs()) {
                        debug!("{} in-band token refused: {}", self.conns[key].peer, why.message());
                        self.metrics.auth_failed_because(why.label());
                        return self.close_ws(key, Reason::AuthRevoked, now);
                    }
                    self.authenticate(key, claims, now);
                    self.send_text(key, r#"{"type":"auth_ok"}"#.to_string());
                    return self.reschedule_ws(key);
                }
                Err(e) => {
                    self.metrics.auth_failed(e);
                    // As at the upgrade: no token, or an unknown key, cost no signature check.
                    if matches!(e, auth::AuthError::Missing | auth::AuthError::UnknownKey) {
                        return self.close_ws(key, Reason::AuthRefused(e), now);
                    }
                    Reason::AuthRefused(e)
                }
            },
            Inbound::Close(reason) => return self.fail_ws(key, reason),
            _ => {
                self.metrics.auth_failed_because("not_an_auth_message");
                Reason::AuthExpected
            }
        };
        if let Some(ip) = ip {
            self.limits.record_auth_failure(&self.config, ip, now);
        }
        debug!("{} in-band authentication refused: {}", self.conns[key].peer, reason.text());
        self.close_ws(key, reason, now);
    }

    /// Sends a text message through tungstenite (so it respects the close state).
    pub(super) fn send_text(&mut self, key: usize, text: String) {
        if let Some((ws, mut wire)) = self.conns[key].ws_wire()
            && ws.can_write()
        {
            let _ = self.protocol.write(ws, &mut wire, Message::text(text));
            self.mark_dirty(key);
            self.output_overflows(key, Instant::now());
        }
    }

    /// Bounds a client's output in bytes whatever queued it (pongs to its
    /// Pings, replies, our Pings — broadcasts check before queueing): past
    /// MAX_OUTPUT_BYTES, after one more try at writing, its unsent output
    /// is dropped and it is closed with 1013 like a slow consumer. True
    /// when it was closed.
    pub(super) fn output_overflows(&mut self, key: usize, now: Instant) -> bool {
        let max = self.config.max_output_bytes;
        let conn = &mut self.conns[key];
        // Closing already: nothing more is queued, and the close frame
        // at the end of the queue must stay.
        if conn.out.bytes() <= max || conn.ws().is_none_or(|w| w.close_deadline.is_some() || !w.can_write()) {
            return false;
        }
        if !conn.corked() && conn.out.write_to(&mut crate::sys::Send(&conn.stream)).is_ok() && conn.out.bytes() <= max {
            return false;
        }
        let sub = conn.ws().map_or("", |w| w.sub.as_str());
        warn!("{} ({sub:?}) not reading: {} B queued; closing with 1013", conn.peer, conn.out.bytes());
        conn.out.drop_unstarted();
        self.close_ws(key, Reason::SlowConsumer, now);
        true
    }

    /// Discards input from a closing connection until the peer closes.
    pub(super) fn read_closing(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let mut total = 0;
        loop {
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => return self.remove(key),
                Ok(n) => {
                    total += n;
                    if total >= READ_BUDGET_BYTES {
                        self.again.push(key);
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.remove(key),
            }
        }
    }

    /// Starts the close handshake (graceful): the client gets `reason`, and
    /// CLOSE_WAIT to answer; messages already queued go first.
    pub(super) fn close_ws(&mut self, key: usize, reason: Reason, now: Instant) {
        let conn = &mut self.conns[key];
        if !matches!(&conn.phase, Phase::Ws(ws) if ws.close_deadline.is_none()) {
            return; // not a WebSocket, or closing already
        }
        // From here on it no longer counts as a connected client.
        self.uncount(key, reason.text());
        self.metrics.close_sent(reason);
        let conn = &mut self.conns[key];
        conn.send_close(reason, &mut self.protocol);
        if let Phase::Ws(ws) = &mut conn.phase {
            ws.close_deadline = Some((now + CLOSE_WAIT).into());
        }
        self.mark_dirty(key);
        self.reschedule_ws(key);
    }

    /// Fails the connection (RFC 6455 §7.1.7): a close frame with `reason`,
    /// then no more reading of what is presumably garbage.
    pub(super) fn fail_ws(&mut self, key: usize, reason: Reason) {
        self.metrics.close_sent(reason);
        self.conns[key].send_close(reason, &mut self.protocol);
        self.begin_close(key);
    }

    /// A WebSocket's next wake-up: the earliest of ping, silence limit,
    /// token expiry, subscription token expiry and close deadline.
    pub(super) fn reschedule_ws(&mut self, key: usize) {
        let Some(ws) = self.conns[key].ws() else {
            return;
        };
        let mut at = ws.next_ping.min(ws.last_seen + self.config.pong_wait).min(ws.expires_at);
        if let Some(d) = ws.close_deadline {
            at = at.min(d);
        }
        let mut at = at.instant();
        // The first subscription token to expire (see expire_subscription_tokens).
        if let Some(exp) = ws.subs.iter().filter_map(|s| s.token_exp()).min() {
            at = at.min(auth::expires_at(Instant::now(), exp, self.config.jwt_leeway_secs));
        }
        self.set_deadline(key, at);
    }

    /// A WebSocket's deadline: close handshake overdue, silent client,
    /// expired token, expired subscription tokens, or time to ping.
    pub(super) fn on_ws_timer(&mut self, key: usize, now: Instant) {
        let conn = &self.conns[key];
        let peer = conn.peer;
        let Some(ws) = conn.ws() else {
            return;
        };
        if ws.close_deadline.is_some_and(|d| now >= d) {
            debug!("{peer} did not answer our close frame");
            return self.remove(key);
        }
        if now >= ws.last_seen + self.config.pong_wait {
            debug!("{peer} ({:?}) silent for {:?}: dropping", ws.sub, self.config.pong_wait);
            return self.remove(key);
        }
        if now >= ws.expires_at {
            if ws.awaiting_auth {
                // Holding a connection slot without authenticating counts like a failure.
                let ip = std::net::IpAddr::from(ws.ip);
                self.metrics.auth_failed_because("auth_timeout");
                self.limits.record_auth_failure(&self.config, ip, now);
                return self.close_ws(key, Reason::AuthTimeout, now);
            }
            return self.close_ws(key, Reason::TokenExpired, now);
        }
        if ws.close_deadline.is_none() && ws.subs.iter().any(|s| s.token_exp().is_some()) {
            self.expire_subscription_tokens(key);
        }
        let Some((ws, mut wire)) = self.conns[key].ws_wire() else {
            return;
        };
        if now >= ws.next_ping {
            ws.next_ping = (now + self.config.ping_interval).into();
            // Idle housekeeping: a ring of output slots a past burst left.
            wire.out.release_idle();
            if ws.can_write() {
                let _ = self.protocol.write(ws, &mut wire, Message::Ping(Default::default()));
                self.mark_dirty(key);
                if self.output_overflows(key, now) {
                    return;
                }
            }
        }
        self.reschedule_ws(key);
    }
}
