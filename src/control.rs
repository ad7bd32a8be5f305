//! The server API's pure side: what `/api/unsubscribe`, `/api/disconnect`,
//! `/api/revoke`, `/api/channels/<channel>` and `/api/history` accept; the
//! denials and revocations every token is checked against, with their
//! bounds; the text they travel in through Redis; and the `Idempotency-Key`
//! cache of `/api/broadcast` (single-process mode). No I/O here:
//! `server::control` carries the requests out.
//!
//! # Token age
//! A revocation ("refuse u1's tokens issued before T") and a denial ("u1
//! may not join project:7 again until a token issued after this moment")
//! compare a token's `iat` with a cut-off: a token with `iat < before` is
//! old. JWT times are whole seconds, so an action taken "now" cuts at
//! `now + 1`: a token minted in the same second as the action counts as
//! old (fail closed) and the app's fresh token must be minted at least a
//! second later. A token without `iat` is old whenever a cut-off applies
//! to its user: its age cannot be told, so it cannot lift a denial.
//!
//! # Bounds
//! A record must outlive every token issued before its cut-off. Tokens
//! with `exp - iat` over JWT_MAX_LIFETIME_SECS are refused everywhere, so
//! a record is kept until `cut-off + JWT_MAX_LIFETIME_SECS +
//! JWT_LEEWAY_SECS`, then dropped. Per user there is one revocation (a
//! later one with a later cut-off replaces it) and one denial per channel
//! or pattern, at most [`MAX_RECORDS`] in all: a new action past that is
//! refused (503) rather than any record dropped early (that would let old
//! tokens back in). The idempotency cache keeps at most
//! [`MAX_IDEMPOTENCY_KEYS`] keys, the oldest evicted first.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::channels;
use crate::hub::Since;

/// Longest `reason`: a close frame's reason must fit in 123 bytes (RFC 6455
/// §5.5: a control frame's payload is at most 125 bytes, 2 of them the code).
pub const MAX_REASON_BYTES: usize = 123;
/// Longest `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;
/// `/api/history`'s `limit` when absent, and at most.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;
pub const MAX_HISTORY_LIMIT: usize = 1000;
/// Denials and revocations held at most (see "Bounds").
pub const MAX_RECORDS: usize = 1_000_000;
/// Idempotency keys remembered at most in one process (oldest evicted).
pub const MAX_IDEMPOTENCY_KEYS: usize = 100_000;
/// How far in the future `issued_before` may be (clock skew between the
/// app and this server); later would lock the user out for a while.
pub const FUTURE_SKEW_SECS: u64 = 60;

/// The routes of the server API.
pub const UNSUBSCRIBE: &str = "/api/unsubscribe";
pub const DISCONNECT: &str = "/api/disconnect";
pub const REVOKE: &str = "/api/revoke";
pub const HISTORY: &str = "/api/history";
pub const CHANNELS_PREFIX: &str = "/api/channels/";

/// Is `path` one of the server API's (taking CONTROL_API_KEY)?
pub fn is_control_path(path: &str) -> bool {
    matches!(path, UNSUBSCRIBE | DISCONNECT | REVOKE | HISTORY) || path.starts_with(CHANNELS_PREFIX)
}

/// Is `path` a server API route answered to POST (the others to GET)?
pub fn is_action_path(path: &str) -> bool {
    matches!(path, UNSUBSCRIBE | DISCONNECT | REVOKE)
}

/// One validated server API request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// End `user`'s subscriptions to `channel` (a name or `ns:*`) and deny
    /// rejoining with a token issued before now.
    Unsubscribe { user: String, channel: String, reason: Option<String> },
    /// Close all of `user`'s connections: 4009 (stop), or 4011 (reconnect
    /// with a fresh token) with `reconnect`.
    Disconnect { user: String, reconnect: bool, reason: Option<String> },
    /// Refuse `user`'s tokens issued before `issued_before` (default: now).
    Revoke { user: String, issued_before: Option<u64> },
    /// A channel's position (epoch, offset) and local subscribers.
    Position { channel: String },
    /// The held messages after `since` (all held ones without it).
    History { channel: String, since: Option<Since>, limit: usize },
}

const UNSUBSCRIBE_SHAPE: &str = r#"{"user": string, "channel": "ns:id" or "ns:*", "reason"?: string}"#;
const DISCONNECT_SHAPE: &str = r#"{"user": string, "reconnect": true|false, "reason"?: string}"#;
const REVOKE_SHAPE: &str = r#"{"user": string, "issued_before"?: unix seconds}"#;

/// Parses the body of a POST to one of [`is_action_path`]'s routes, or
/// returns the message for a 400.
pub fn parse_action(path: &str, body: &[u8], now: u64) -> Result<Request, String> {
    match path {
        UNSUBSCRIBE => {
            let mut o = object(body, &["user", "channel", "reason"], UNSUBSCRIBE_SHAPE)?;
            let user = user(&mut o)?;
            let channel = match o.remove("channel") {
                Some(Value::String(c)) => pattern(c)?,
                _ => return Err(format!("missing \"channel\": {UNSUBSCRIBE_SHAPE}")),
            };
            Ok(Request::Unsubscribe { user, channel, reason: reason(&mut o)? })
        }
        DISCONNECT => {
            let mut o = object(body, &["user", "reconnect", "reason"], DISCONNECT_SHAPE)?;
            let user = user(&mut o)?;
            let reconnect = match o.remove("reconnect") {
                Some(Value::Bool(b)) => b,
                _ => {
                    return Err("\"reconnect\" must be true or false (false: the client stops, close 4009; \
                                true: it reconnects with a fresh token, close 4011)"
                        .into());
                }
            };
            Ok(Request::Disconnect { user, reconnect, reason: reason(&mut o)? })
        }
        REVOKE => {
            let mut o = object(body, &["user", "issued_before"], REVOKE_SHAPE)?;
            let user = user(&mut o)?;
            let issued_before = match o.remove("issued_before") {
                None | Some(Value::Null) => None,
                Some(v) => match v.as_u64() {
                    Some(t) if t <= now + FUTURE_SKEW_SECS => Some(t),
                    Some(_) => {
                        return Err(format!(
                            "\"issued_before\" is more than {FUTURE_SKEW_SECS} s in the future: it names the \
                             time before which the user's tokens were issued (unix seconds; default: now)"
                        ));
                    }
                    None => return Err("\"issued_before\" must be a whole number of unix seconds".into()),
                },
            };
            Ok(Request::Revoke { user, issued_before })
        }
        _ => Err("no such endpoint".into()),
    }
}

/// Parses a GET of `/api/channels/<channel>` or `/api/history?...`, or
/// returns the message for a 400.
pub fn parse_read(path: &str, query: Option<&str>) -> Result<Request, String> {
    if let Some(raw) = path.strip_prefix(CHANNELS_PREFIX) {
        if query.is_some_and(|q| !q.is_empty()) {
            return Err("/api/channels/<channel> takes no query parameters".into());
        }
        let channel = percent_decode(raw).ok_or("the channel in the path is not valid percent-encoding")?;
        if !channels::valid_name(&channel) {
            return Err(format!("invalid channel in the path: {}", channels::NAME_RULE));
        }
        return Ok(Request::Position { channel });
    }
    if path != HISTORY {
        return Err("no such endpoint".into());
    }
    let (mut channel, mut since, mut limit) = (None, None, None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v).ok_or_else(|| format!("{k:?} is not valid percent-encoding"))?;
        let slot = match k {
            "channel" => &mut channel,
            "since" => &mut since,
            "limit" => &mut limit,
            _ => return Err("unknown query parameter: /api/history takes channel, since and limit".into()),
        };
        if slot.replace(v).is_some() {
            return Err(format!("{k} is given twice"));
        }
    }
    let channel = channel.ok_or("missing channel: /api/history?channel=<channel>&since=<epoch>:<offset>&limit=N")?;
    if !channels::valid_name(&channel) {
        return Err(format!("invalid channel: {}", channels::NAME_RULE));
    }
    let since = match since {
        None => None,
        Some(s) => Some(parse_since(&s).ok_or(
            "since must be <epoch>:<offset>, as a subscribed message or GET /api/channels gives them (e.g. 9f3a2b:17)",
        )?),
    };
    let limit = match limit {
        None => DEFAULT_HISTORY_LIMIT,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_HISTORY_LIMIT).contains(&n) => n,
            _ => return Err(format!("limit must be a whole number from 1 to {MAX_HISTORY_LIMIT}")),
        },
    };
    Ok(Request::History { channel, since, limit })
}

/// `<epoch>:<offset>`: an epoch of 1-64 letters, digits and `-`.
fn parse_since(s: &str) -> Option<Since> {
    let (epoch, offset) = s.rsplit_once(':')?;
    let epoch_ok =
        !epoch.is_empty() && epoch.len() <= 64 && epoch.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let digits_ok = !offset.is_empty() && offset.bytes().all(|b| b.is_ascii_digit());
    if !epoch_ok || !digits_ok {
        return None;
    }
    Some(Since { epoch: epoch.to_string(), offset: offset.parse().ok()? })
}

/// The body as a JSON object holding only `allowed` fields.
fn object(body: &[u8], allowed: &[&str], shape: &str) -> Result<Map<String, Value>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(format!("empty body: send {shape}"));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(o) = v else {
        return Err(format!("body must be a JSON object: {shape}"));
    };
    if let Some(k) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
        // A typo ("users", "issuedBefore") must not pass as a narrower action.
        let k: String = k.chars().take(40).collect();
        return Err(format!("unknown field {k:?}: {shape}"));
    }
    Ok(o)
}

fn user(o: &mut Map<String, Value>) -> Result<String, String> {
    match o.remove("user") {
        Some(Value::String(u)) if channels::valid_id(&u) => Ok(u),
        Some(Value::String(_)) => Err(format!(
            "\"user\" must be a user id (the token's sub): letters, digits and _ . : -, at most {} bytes",
            channels::MAX_NAME_LEN - channels::USER_PREFIX.len()
        )),
        _ => Err("missing \"user\": the user id (the token's sub)".into()),
    }
}

/// A channel name or a `ns:*` pattern, outside `user:` (a user's own channel
/// is ended by /api/disconnect or /api/revoke).
fn pattern(c: String) -> Result<String, String> {
    if c.starts_with(channels::USER_PREFIX) {
        return Err("\"channel\" cannot be a user: channel: use /api/disconnect or /api/revoke for a user".into());
    }
    if valid_pattern(&c) {
        return Ok(c);
    }
    Err(format!("invalid \"channel\": a channel name or ns:* ({})", channels::NAME_RULE))
}

/// A channel name or `ns:*`.
pub fn valid_pattern(p: &str) -> bool {
    channels::valid_name(p)
        || p.strip_suffix(":*").is_some_and(|ns| !ns.is_empty() && channels::valid_name(&format!("{ns}:x")))
}

fn reason(o: &mut Map<String, Value>) -> Result<Option<String>, String> {
    match o.remove("reason") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(r)) if valid_reason(&r) => Ok(Some(r)),
        Some(_) => Err(format!(
            "\"reason\" must be text of at most {MAX_REASON_BYTES} bytes without control characters (it is sent \
             to the client, in a close frame for a disconnect)"
        )),
    }
}

fn valid_reason(r: &str) -> bool {
    r.len() <= MAX_REASON_BYTES && !r.chars().any(char::is_control)
}

/// An `Idempotency-Key` is 1-128 visible ASCII characters (a repeated
/// header arrives joined with ", ", so it fails this).
pub fn valid_idempotency_key(k: &str) -> bool {
    !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY_BYTES && k.bytes().all(|b| b.is_ascii_graphic())
}

/// `%XX` escapes decoded (what URLSearchParams and encodeURIComponent send
/// for `:`); `None` for a broken escape or bytes that are not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

// ---- records ---------------------------------------------------------------

/// One action that outlives its request: kept here (denials and
/// revocations) and, in cluster mode, in Redis, so instances that start or
/// come back later apply it too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// `user`'s tokens with `iat < before` are refused; their connections
    /// are closed with 4011.
    Revoke { user: String, before: u64, expires: u64 },
    /// `user` may not join channels matching `pattern` with a token whose
    /// `iat < before`; such subscriptions end with `reason`.
    Deny { user: String, pattern: String, before: u64, expires: u64, reason: String },
    /// `user`'s connections opened by `at` are closed, with 4009 (or 4011
    /// with `reconnect`) and `reason`. Not kept in memory: stored in Redis
    /// only, for instances that missed it.
    Disconnect { user: String, at: u64, reconnect: bool, expires: u64, reason: String },
}

impl Record {
    pub fn user(&self) -> &str {
        match self {
            Record::Revoke { user, .. } | Record::Deny { user, .. } | Record::Disconnect { user, .. } => user,
        }
    }

    /// The cut-off (`at` for a disconnect): a later record of the same
    /// [`Record::field`] replaces an earlier one.
    pub fn before(&self) -> u64 {
        match self {
            Record::Revoke { before, .. } | Record::Deny { before, .. } => *before,
            Record::Disconnect { at, .. } => *at,
        }
    }

    /// Unix seconds after which the record no longer matters.
    pub fn expires(&self) -> u64 {
        match self {
            Record::Revoke { expires, .. } | Record::Deny { expires, .. } | Record::Disconnect { expires, .. } => {
                *expires
            }
        }
    }

    /// What a record replaces in Redis: one revocation and one disconnect
    /// per user, one denial per user and pattern.
    pub fn field(&self) -> String {
        match self {
            Record::Revoke { user, .. } => format!("r {user}"),
            Record::Deny { user, pattern, .. } => format!("d {user} {pattern}"),
            Record::Disconnect { user, .. } => format!("x {user}"),
        }
    }

    /// `<kind> <before> <expires> <user> ...`: ASCII fields separated by one
    /// space (user ids and patterns hold none), the reason last as the rest
    /// of the text. The cut-off comes first so `control.lua` can read it.
    pub fn encode(&self) -> String {
        match self {
            Record::Revoke { user, before, expires } => format!("r {before} {expires} {user}"),
            Record::Deny { user, pattern, before, expires, reason } => {
                format!("d {before} {expires} {user} {pattern} {reason}")
            }
            Record::Disconnect { user, at, reconnect, expires, reason } => {
                format!("x {at} {expires} {user} {} {reason}", u8::from(*reconnect))
            }
        }
    }

    /// The inverse of [`Record::encode`]; the error says what is wrong (text
    /// on our Redis names that taskcast did not write).
    pub fn decode(s: &str) -> Result<Record, String> {
        let mut f = s.splitn(6, ' ');
        let kind = f.next().unwrap_or("");
        let num = |v: Option<&str>, what: &str| -> Result<u64, String> {
            v.filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("bad {what}"))
        };
        let before = num(f.next(), "cut-off")?;
        let expires = num(f.next(), "expiry")?;
        let user = f.next().filter(|u| channels::valid_id(u)).ok_or("bad user")?.to_string();
        let rest = |v: Option<&str>| -> Result<String, String> {
            let r = v.unwrap_or("");
            if valid_reason(r) { Ok(r.to_string()) } else { Err("bad reason".into()) }
        };
        match kind {
            "r" if f.next().is_none() => Ok(Record::Revoke { user, before, expires }),
            "d" => {
                let pattern = f.next().filter(|p| valid_pattern(p)).ok_or("bad pattern")?.to_string();
                Ok(Record::Deny { user, pattern, before, expires, reason: rest(f.next())? })
            }
            "x" => {
                let reconnect = match f.next() {
                    Some("0") => false,
                    Some("1") => true,
                    _ => return Err("bad reconnect flag".into()),
                };
                Ok(Record::Disconnect { user, at: before, reconnect, expires, reason: rest(f.next())? })
            }
            _ => Err("unknown record kind".into()),
        }
    }
}

// ---- the store -----------------------------------------------------------------

/// Why a valid token is refused anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// Issued before a revocation of its user (or without `iat` while one applies).
    Revoked,
    /// `exp - iat` over JWT_MAX_LIFETIME_SECS: no revocation would be kept long enough.
    TooLong,
}

impl TokenRefusal {
    pub fn message(self) -> &'static str {
        match self {
            TokenRefusal::Revoked => "token revoked: get a fresh token",
            TokenRefusal::TooLong => "token lifetime (exp - iat) is over JWT_MAX_LIFETIME_SECS",
        }
    }

    /// The `reason` label of `taskcast_auth_failures_total`.
    pub fn label(self) -> &'static str {
        match self {
            TokenRefusal::Revoked => "revoked",
            TokenRefusal::TooLong => "lifetime_over_max",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Cut {
    before: u64,
    expires: u64,
}

/// A denial as the store holds it.
#[derive(Debug, Clone)]
pub struct Denied {
    pub pattern: Box<str>,
    pub before: u64,
    pub expires: u64,
    pub reason: Box<str>,
}

/// The denials and revocations in force on this instance.
pub struct Store {
    revoked: HashMap<Box<str>, Cut>,
    denied: HashMap<Box<str>, Vec<Denied>>,
    /// Revocations plus denials held...
    records: usize,
    /// ...and at most ([`MAX_RECORDS`]).
    cap: usize,
    /// JWT_MAX_LIFETIME_SECS and JWT_LEEWAY_SECS: how long a record is kept.
    max_lifetime: u64,
    leeway: u64,
    /// When expired records were last dropped (unix seconds).
    last_purge: u64,
}

/// Expired records are dropped at most this often (each pass is O(records)).
const PURGE_EVERY_SECS: u64 = 60;

impl Store {
    pub fn new(max_lifetime: u64, leeway: u64) -> Store {
        Store {
            revoked: HashMap::new(),
            denied: HashMap::new(),
            records: 0,
            cap: MAX_RECORDS,
            max_lifetime,
            leeway,
            last_purge: 0,
        }
    }

    /// When a record with this cut-off may be dropped: every token issued
    /// before it has expired by then (exp ≤ iat + JWT_MAX_LIFETIME_SECS,
    /// accepted until exp + JWT_LEEWAY_SECS).
    pub fn expires_for(&self, before: u64, now: u64) -> u64 {
        before.max(now).saturating_add(self.max_lifetime).saturating_add(self.leeway).saturating_add(1)
    }

    /// Revocations and denials held.
    pub fn len(&self) -> usize {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// True when no new record may be taken (after dropping expired ones).
    pub fn is_full(&mut self, now: u64) -> bool {
        if self.records >= self.cap {
            self.purge(now);
        }
        self.records >= self.cap
    }

    /// Keeps `rec` (a disconnect is not kept); an earlier record of the same
    /// kind, user (and pattern) is merged: the later cut-off and expiry win.
    pub fn insert(&mut self, rec: &Record, now: u64) {
        if now >= self.last_purge + PURGE_EVERY_SECS {
            self.purge(now);
        }
        if rec.expires() <= now {
            return;
        }
        match rec {
            Record::Revoke { user, before, expires } => {
                let cut = self.revoked.entry(user.as_str().into()).or_insert_with(|| {
                    self.records += 1;
                    Cut { before: 0, expires: 0 }
                });
                cut.before = cut.before.max(*before);
                cut.expires = cut.expires.max(*expires);
            }
            Record::Deny { user, pattern, before, expires, reason } => {
                let list = self.denied.entry(user.as_str().into()).or_default();
                match list.iter_mut().find(|d| *d.pattern == **pattern) {
                    Some(d) => {
                        if *before >= d.before {
                            d.reason = reason.as_str().into();
                        }
                        d.before = d.before.max(*before);
                        d.expires = d.expires.max(*expires);
                    }
                    None => {
                        self.records += 1;
                        list.push(Denied {
                            pattern: pattern.as_str().into(),
                            before: *before,
                            expires: *expires,
                            reason: reason.as_str().into(),
                        });
                    }
                }
            }
            Record::Disconnect { .. } => {}
        }
    }

    /// May a token of `user` with these claims be used (at the upgrade, an
    /// in-band refresh, as a subscription token)?
    pub fn check_token(&self, user: &str, iat: Option<u64>, exp: u64, now: u64) -> Result<(), TokenRefusal> {
        if let Some(iat) = iat
            && exp.saturating_sub(iat) > self.max_lifetime
        {
            return Err(TokenRefusal::TooLong);
        }
        if self.revoked_before(user, now).is_some_and(|before| is_old(iat, before)) {
            return Err(TokenRefusal::Revoked);
        }
        Ok(())
    }

    /// The cut-off of `user`'s revocation, if one is in force.
    pub fn revoked_before(&self, user: &str, now: u64) -> Option<u64> {
        self.revoked.get(user).filter(|c| c.expires > now).map(|c| c.before)
    }

    /// The denial in force for `user` on `channel` with the latest cut-off.
    pub fn denial(&self, user: &str, channel: &str, now: u64) -> Option<&Denied> {
        self.denied
            .get(user)?
            .iter()
            .filter(|d| d.expires > now && channels::granted(channel, std::slice::from_ref(&d.pattern)))
            .max_by_key(|d| d.before)
    }

    /// Drops every expired record.
    pub fn purge(&mut self, now: u64) {
        self.last_purge = now;
        let before = self.revoked.len();
        self.revoked.retain(|_, c| c.expires > now);
        let mut dropped = before - self.revoked.len();
        self.denied.retain(|_, list| {
            let n = list.len();
            list.retain(|d| d.expires > now);
            dropped += n - list.len();
            !list.is_empty()
        });
        self.records -= dropped;
    }
}

/// Is a token with this `iat` older than the cut-off? (No `iat`: yes.)
pub fn is_old(iat: Option<u64>, before: u64) -> bool {
    iat.is_none_or(|iat| iat < before)
}

// ---- idempotency -----------------------------------------------------------------

/// The `Idempotency-Key`s seen in the last IDEMPOTENCY_TTL_SECS, per
/// target (a channel, or `*` for everyone), with the offset the first
/// publish got. Single-process mode only (in cluster mode `publish.lua`
/// keeps them in Redis, so every instance sees them).
pub struct IdempotencyCache {
    /// `"<target> <key>"` (neither holds a space) → offset.
    seen: HashMap<Box<str>, u64>,
    /// The same entries in insertion order, for expiry and the cap.
    order: VecDeque<(Instant, Box<str>)>,
    ttl: Duration,
    cap: usize,
}

impl IdempotencyCache {
    pub fn new(ttl: Duration, cap: usize) -> IdempotencyCache {
        IdempotencyCache { seen: HashMap::new(), order: VecDeque::new(), ttl, cap: cap.max(1) }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front()
            && now.saturating_duration_since(*at) >= self.ttl
        {
            let (_, k) = self.order.pop_front().expect("front exists");
            self.seen.remove(&k);
        }
    }

    /// The offset `key` got on `target`, if it was published within the TTL.
    pub fn get(&mut self, target: &str, key: &str, now: Instant) -> Option<u64> {
        self.expire(now);
        self.seen.get(format!("{target} {key}").as_str()).copied()
    }

    /// Remembers that `key` was published on `target` at `offset`; past the
    /// cap the oldest key is forgotten.
    pub fn insert(&mut self, target: &str, key: &str, offset: u64, now: Instant) {
        self.expire(now);
        let k: Box<str> = format!("{target} {key}").into();
        if self.seen.insert(k.clone(), offset).is_none() {
            self.order.push_back((now, k));
        }
        while self.seen.len() > self.cap
            && let Some((_, old)) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

// ---- answers ---------------------------------------------------------------------

/// One held message of `/api/history`.
pub struct HeldMessage<'a> {
    pub offset: u64,
    pub kind: &'a str,
    /// Raw JSON text, as published.
    pub payload: &'a str,
}

/// The `/api/history` answer: `messages` oldest first, cut at `max_bytes`
/// (at least one message is kept; the caller pages on from the last offset).
pub fn history_answer(
    channel: &str,
    epoch: &str,
    offset: u64,
    messages: &[HeldMessage],
    complete: bool,
    max_bytes: usize,
) -> String {
    let mut out = format!(
        r#"{{"channel":{},"epoch":{},"offset":{offset},"complete":{complete},"messages":["#,
        Value::from(channel),
        Value::from(epoch)
    );
    for (i, m) in messages.iter().enumerate() {
        let one = format!(r#"{{"offset":{},"type":{},"payload":{}}}"#, m.offset, Value::from(m.kind), m.payload);
        if i > 0 && out.len() + one.len() > max_bytes {
            break;
        }
        if i > 0 {
            out.push(',');
        }
        out.push_str(&one);
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn action_bodies() {
        let ok: &[(&str, &str, Request)] = &[
            (
                UNSUBSCRIBE,
                r#"{"user":"u1","channel":"project:7","reason":"removed from project"}"#,
                Request::Unsubscribe {
                    user: "u1".into(),
                    channel: "project:7".into(),
                    reason: Some("removed from project".into()),
                },
            ),
            (
                UNSUBSCRIBE,
                r#"{"user":"u1","channel":"project:*"}"#,
                Request::Unsubscribe { user: "u1".into(), channel: "project:*".into(), reason: None },
            ),
            (
                DISCONNECT,
                r#"{"user":"u1","reconnect":false,"reason":"signed out"}"#,
                Request::Disconnect { user: "u1".into(), reconnect: false, reason: Some("signed out".into()) },
            ),
            (REVOKE, r#"{"user":"u1"}"#, Request::Revoke { user: "u1".into(), issued_before: None }),
            (
                REVOKE,
                r#"{"user":"u1","issued_before":1767225600}"#,
                Request::Revoke { user: "u1".into(), issued_before: Some(1_767_225_600) },
            ),
        ];
        for (path, body, want) in ok {
            assert_eq!(parse_action(path, body.as_bytes(), NOW).as_ref(), Ok(want), "{body}");
        }
        // (path, body, a piece of the message)
        let bad: &[(&str, &str, &str)] = &[
            (UNSUBSCRIBE, "", "empty body"),
            (UNSUBSCRIBE, "{", "invalid JSON"),
            (UNSUBSCRIBE, "[1]", "must be a JSON object"),
            (UNSUBSCRIBE, r#"{"channel":"project:7"}"#, "missing \"user\""),
            (UNSUBSCRIBE, r#"{"user":"u 1","channel":"project:7"}"#, "must be a user id"),
            (UNSUBSCRIBE, r#"{"user":7,"channel":"project:7"}"#, "missing \"user\""),
            (UNSUBSCRIBE, r#"{"user":"u1"}"#, "missing \"channel\""),
            (UNSUBSCRIBE, r#"{"user":"u1","channel":"*"}"#, "invalid \"channel\""),
            (UNSUBSCRIBE, r#"{"user":"u1","channel":"project"}"#, "invalid \"channel\""),
            (UNSUBSCRIBE, r#"{"user":"u1","channel":"user:u1"}"#, "/api/disconnect"),
            (UNSUBSCRIBE, r#"{"user":"u1","channels":["project:7"]}"#, "unknown field \"channels\""),
            (UNSUBSCRIBE, r#"{"user":"u1","channel":"p:1","reason":"a\nb"}"#, "\"reason\" must be"),
            (DISCONNECT, r#"{"user":"u1"}"#, "\"reconnect\" must be true or false"),
            (DISCONNECT, r#"{"user":"u1","reconnect":"yes"}"#, "\"reconnect\" must be"),
            (REVOKE, r#"{"user":"u1","issued_before":-5}"#, "whole number"),
            (REVOKE, r#"{"user":"u1","issued_before":"2026-01-01"}"#, "whole number"),
            (REVOKE, r#"{"user":"u1","issuedBefore":1}"#, "unknown field"),
        ];
        for (path, body, want) in bad {
            let e = parse_action(path, body.as_bytes(), NOW).unwrap_err();
            assert!(e.contains(want), "{body}: {e}");
        }
        let long = format!(r#"{{"user":"u1","reconnect":true,"reason":"{}"}}"#, "é".repeat(62));
        assert!(parse_action(DISCONNECT, long.as_bytes(), NOW).unwrap_err().contains("123 bytes"));
        let future = format!(r#"{{"user":"u1","issued_before":{}}}"#, NOW + FUTURE_SKEW_SECS + 1);
        assert!(parse_action(REVOKE, future.as_bytes(), NOW).unwrap_err().contains("future"));
    }

    #[test]
    fn reads() {
        assert_eq!(
            parse_read("/api/channels/project%3A7", None),
            Ok(Request::Position { channel: "project:7".into() })
        );
        assert_eq!(parse_read("/api/channels/project:7", None), Ok(Request::Position { channel: "project:7".into() }));
        assert_eq!(
            parse_read(HISTORY, Some("channel=project%3A7&since=9f3a-2%3A17&limit=5")),
            Ok(Request::History {
                channel: "project:7".into(),
                since: Some(Since { epoch: "9f3a-2".into(), offset: 17 }),
                limit: 5
            })
        );
        assert_eq!(
            parse_read(HISTORY, Some("channel=project:7")),
            Ok(Request::History { channel: "project:7".into(), since: None, limit: DEFAULT_HISTORY_LIMIT })
        );
        for (path, query, want) in [
            ("/api/channels/", None, "invalid channel"),
            ("/api/channels/a%2Fb", None, "invalid channel"),
            ("/api/channels/p%3", None, "percent-encoding"),
            ("/api/channels/p:1", Some("x=1"), "no query"),
            (HISTORY, None, "missing channel"),
            (HISTORY, Some("channel=bad"), "invalid channel"),
            (HISTORY, Some("channel=p:1&since=17"), "since must be"),
            (HISTORY, Some("channel=p:1&since=e:x"), "since must be"),
            (HISTORY, Some("channel=p:1&limit=0"), "limit must be"),
            (HISTORY, Some("channel=p:1&limit=1001"), "limit must be"),
            (HISTORY, Some("channel=p:1&channel=p:2"), "twice"),
            (HISTORY, Some("channel=p:1&token=abc"), "unknown query parameter"),
        ] {
            let e = parse_read(path, query).unwrap_err();
            assert!(e.contains(want), "{path} {query:?}: {e}");
            assert!(!e.contains("abc"), "a query value is never echoed: {e}");
        }
    }

    #[test]
    fn records_round_trip_and_refuse_garbage() {
        let recs = [
            Record::Revoke { user: "u1".into(), before: 5, expires: 9 },
            Record::Deny { user: "u1".into(), pattern: "project:*".into(), before: 5, expires: 9, reason: "".into() },
            Record::Deny {
                user: "u.1".into(),
                pattern: "p:1".into(),
                before: 5,
                expires: 9,
                reason: "removed from the project".into(),
            },
            Record::Disconnect { user: "u1".into(), at: 5, reconnect: true, expires: 9, reason: "signed out".into() },
        ];
        for r in recs {
            assert_eq!(Record::decode(&r.encode()), Ok(r.clone()), "{}", r.encode());
        }
        for bad in ["", "r", "r 1 2", "r x 2 u", "r 1 2 u extra", "q 1 2 u", "d 1 2 u *", "x 1 2 u 2 r", "r 1 2 a\"b"] {
            assert!(Record::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn store_cuts_by_iat_and_forgets_after_the_longest_lifetime() {
        let mut s = Store::new(3600, 30);
        let exp = NOW + 600;
        assert_eq!(s.check_token("u1", Some(NOW), exp, NOW), Ok(()));
        let expires = s.expires_for(NOW + 1, NOW);
        s.insert(&Record::Revoke { user: "u1".into(), before: NOW + 1, expires }, NOW);
        assert_eq!(s.check_token("u1", Some(NOW), exp, NOW), Err(TokenRefusal::Revoked), "same second: old");
        assert_eq!(s.check_token("u1", None, exp, NOW), Err(TokenRefusal::Revoked), "no iat: old");
        assert_eq!(s.check_token("u1", Some(NOW + 1), exp, NOW + 1), Ok(()));
        assert_eq!(s.check_token("u2", Some(NOW - 100), exp, NOW), Ok(()), "other users untouched");
        assert_eq!(s.check_token("u2", Some(NOW), NOW + 3601, NOW), Err(TokenRefusal::TooLong));
        // An earlier cut-off arriving late does not shorten the later one.
        s.insert(&Record::Revoke { user: "u1".into(), before: NOW - 50, expires: expires - 51 }, NOW);
        assert_eq!(s.revoked_before("u1", NOW), Some(NOW + 1));
        assert_eq!(s.len(), 1);
        // Kept exactly until every token issued before the cut-off expired.
        assert_eq!(expires, NOW + 1 + 3600 + 30 + 1);
        assert!(s.revoked_before("u1", expires - 1).is_some());
        assert!(s.revoked_before("u1", expires).is_none());
        s.purge(expires);
        assert!(s.is_empty());
    }

    #[test]
    fn a_full_store_makes_room_only_by_expiry() {
        let mut s = Store::new(100, 0);
        s.cap = 2;
        let revoke = |user: &str, expires: u64| Record::Revoke { user: user.into(), before: NOW, expires };
        s.insert(&revoke("a", NOW + 10), NOW);
        s.insert(&revoke("b", NOW + 20), NOW);
        assert!(s.is_full(NOW), "nothing expired: no room (no record is dropped early)");
        s.insert(&revoke("a", NOW + 30), NOW);
        assert_eq!(s.len(), 2, "the same user's revocation is merged, not added");
        assert!(!s.is_full(NOW + 20), "b expired: room again");
        assert_eq!(s.revoked_before("a", NOW + 29), Some(NOW), "a was extended to NOW + 30");
        s.purge(NOW + 30);
        assert!(s.is_empty());
    }

    #[test]
    fn denials_match_names_and_patterns() {
        let mut s = Store::new(3600, 0);
        let deny = |pattern: &str, before: u64, reason: &str| Record::Deny {
            user: "u1".into(),
            pattern: pattern.into(),
            before,
            expires: before + 3600,
            reason: reason.into(),
        };
        s.insert(&deny("project:7", NOW, "removed"), NOW);
        s.insert(&deny("board:*", NOW + 5, "left the team"), NOW);
        assert_eq!(s.denial("u1", "project:7", NOW).map(|d| d.before), Some(NOW));
        assert!(s.denial("u1", "project:8", NOW).is_none());
        assert_eq!(s.denial("u1", "board:3", NOW).map(|d| &*d.reason), Some("left the team"));
        assert!(s.denial("u2", "project:7", NOW).is_none());
        s.insert(&deny("project:7", NOW + 9, "removed again"), NOW);
        assert_eq!(s.denial("u1", "project:7", NOW).map(|d| (d.before, &*d.reason)), Some((NOW + 9, "removed again")));
        assert_eq!(s.len(), 2);
        // Disconnects are not kept.
        let x =
            Record::Disconnect { user: "u1".into(), at: NOW, reconnect: false, expires: NOW + 9, reason: "".into() };
        s.insert(&x, NOW);
        assert_eq!(s.len(), 2);
        assert!(s.denial("u1", "project:7", NOW + 9 + 3600).is_none(), "expired");
    }

    #[test]
    fn idempotency_cache_expires_and_is_capped() {
        let t = Instant::now();
        let mut c = IdempotencyCache::new(Duration::from_secs(10), 3);
        c.insert("p:1", "k1", 4, t);
        assert_eq!(c.get("p:1", "k1", t), Some(4));
        assert_eq!(c.get("p:2", "k1", t), None, "per target");
        c.insert("p:1", "k2", 5, t);
        c.insert("p:1", "k3", 6, t);
        c.insert("p:1", "k4", 7, t);
        assert_eq!((c.len(), c.get("p:1", "k1", t)), (3, None), "the oldest goes first");
        assert_eq!(c.get("p:1", "k4", t + Duration::from_secs(9)), Some(7));
        assert_eq!(c.get("p:1", "k4", t + Duration::from_secs(10)), None, "expired");
        assert!(c.is_empty());
    }

    #[test]
    fn idempotency_keys() {
        for ok in ["a", "550e8400-e29b-41d4-a716-446655440000", &"x".repeat(128), "{}~!"] {
            assert!(valid_idempotency_key(ok), "{ok}");
        }
        for bad in ["", "a b", "k1, k2", &"x".repeat(129), "é", "a\tb"] {
            assert!(!valid_idempotency_key(bad), "{bad}");
        }
    }

    #[test]
    fn history_answer_is_json_and_cut_at_the_byte_budget() {
        let msgs: Vec<HeldMessage> =
            (1..=3).map(|o| HeldMessage { offset: o, kind: "t", payload: r#"{"x":[1,2]}"# }).collect();
        let v: Value = serde_json::from_str(&history_answer("p:1", "e", 3, &msgs, true, 1 << 20)).unwrap();
        assert_eq!(v["messages"][2], serde_json::json!({"offset": 3, "type": "t", "payload": {"x": [1, 2]}}));
        assert_eq!(
            (v["epoch"].as_str(), v["offset"].as_u64(), v["complete"].as_bool()),
            (Some("e"), Some(3), Some(true))
        );
        let v: Value = serde_json::from_str(&history_answer("p:1", "e", 3, &msgs, true, 10)).unwrap();
        assert_eq!(v["messages"].as_array().unwrap().len(), 1, "at least one, then cut");
    }
}
