//! Routing: what each HTTP request gets. Pure decisions, no I/O — the event
//! loop carries them out (writes the response, upgrades, fans out).
//!
//! | route | methods | answer |
//! |---|---|---|
//! | `/health` | GET, HEAD | `{"status":"ok","connectedClients":N}` |
//! | `/ready` | GET, HEAD | `{"status":"ready"}`, or 503 `{"status":"not_ready","reason":R}` |
//! | `/metrics` | GET, HEAD | Prometheus text (no CORS), or 401 without METRICS_API_KEY |
//! | `/ws` | GET + Upgrade | 101, or 400/401/403/426/429/503 and close (503 while draining); `?auth=message`: 101, then the token in the first message ([`UpgradeAuth::FirstMessage`]) |
//! | `/api/broadcast` | POST | `{"status":"ok","recipients":N}` (+ `channels` when targeted; + `duplicate` for a repeated `Idempotency-Key`), or 400/415/429/503, or 401/403 and close |
//! | `/api/unsubscribe`, `/api/disconnect`, `/api/revoke` | POST | the server API ([`crate::control`]): CONTROL_API_KEY (or BROADCAST_API_KEY) only; 400/415/503, or 401/403 and close |
//! | `/api/channels/<channel>`, `/api/history` | GET | a channel's position, its held messages; same credential |
//! | any | OPTIONS | CORS preflight: 204 for allowed origins, else 403 |
//! | `/`, `/demo.js`, `/taskcast-client.js` | GET, HEAD | development mode only: the demo page ([`crate::demo`]); else 404 |
//!
//! Cheap refusals come before any signature check (503/429 for full
//! servers and addresses, 429 for an address with too many failed
//! authentications), a refused upgrade or credential closes the connection
//! (no pipelined retries at a signature check each), and a broadcast's
//! credential is checked from its head, before its body is read ([`admit`]).

use std::net::IpAddr;
use std::time::Instant;

use serde_json::json;
use subtle::ConstantTimeEq;

use crate::auth::{self, AuthError, Claims, Verifier};
use crate::broadcast;
use crate::config::{Config, Origins};
use crate::control;
use crate::demo;
use crate::http::{Head, Method, Response};
use crate::limits::Limits;
use crate::metrics::{Metrics, auth_reason};
use crate::refusals::RefusalLog;

/// What the loop needs to know to route one request.
pub struct Ctx<'a> {
    pub config: &'a Config,
    pub verifier: &'a Verifier,
    /// Client counts and the limits on them.
    pub limits: &'a Limits,
    /// The request's client address (the peer, or X-Forwarded-For from a
    /// trusted proxy).
    pub ip: IpAddr,
    /// Counters for refusals decided here (auth failures).
    pub metrics: &'a Metrics,
    /// Where refusals are logged for the operator (rate-limited).
    pub refusals: &'a RefusalLog,
    /// A drain (SIGTERM) is under way: /ready says 503, upgrades are refused.
    pub draining: bool,
    /// Cluster mode: is the Redis link up? (`None`: single process.)
    pub redis_up: Option<bool>,
    /// This turn's time (for the per-address failure window).
    pub now: Instant,
    /// The head already passed [`admit`] (its credential was checked
    /// while the body was still arriving): not checked twice.
    pub admitted: bool,
    /// Revocations in force: a revoked token's upgrade gets 401.
    pub control: &'a crate::control::Store,
}

/// The decision for one request.
pub enum Action {
    Respond(Response),
    /// Accept the WebSocket: send 101 with this key's accept value.
    Upgrade {
        key: String,
        auth: UpgradeAuth,
    },
    /// Fan this out (to everyone, or to its channels), then answer with
    /// the recipient counts.
    Broadcast(broadcast::Publish),
    /// Answer with a scrape of the metrics (the loop holds their values).
    Metrics,
    /// A server API request (authenticated, validated): the loop carries
    /// it out (see `server::control`).
    Control(control::Request),
}

/// How an accepted upgrade is authenticated.
pub enum UpgradeAuth {
    /// By the token in the request (`Authorization: Bearer` or `?token=`), verified here.
    Verified(Claims),
    /// In band (`GET /ws?auth=message`, asked for by the client): the first
    /// message must be `{"type":"auth","token":…}` within REQUEST_TIMEOUT_SECS.
    /// Refusals then close the WebSocket with a code and a reason the page
    /// can read — a refused upgrade only shows a browser 1006. `origin_ok`
    /// false: closed at once with 4003 "origin not allowed".
    FirstMessage { origin_ok: bool },
}

/// The query parameter with which a client asks for in-band authentication.
pub const IN_BAND_AUTH: (&str, &str) = ("auth", "message");

/// How long browsers may cache a preflight answer.
const PREFLIGHT_MAX_AGE_SECS: u32 = 600;

pub fn route(head: &Head, body: &[u8], ctx: &Ctx) -> Action {
    if head.path == METRICS_PATH {
        // Before CORS handling: a scrape is for Prometheus, never for a page
        // (not even a preflight answer).
        return metrics(head, ctx);
    }
    let origin_ok = origin_ok(head, ctx.config);
    if head.method() == Method::Options {
        return Action::Respond(preflight(head, origin_ok, ctx));
    }
    match head.path.as_str() {
        "/health" => match head.method() {
            Method::Get | Method::Head => {
                Action::Respond(Response::json(200, &json!({"status": "ok", "connectedClients": ctx.limits.clients()})))
            }
            _ => Action::Respond(not_allowed("GET, HEAD, OPTIONS")),
        },
        "/ready" => match head.method() {
            Method::Get | Method::Head => Action::Respond(ready(ctx)),
            _ => Action::Respond(not_allowed("GET, HEAD, OPTIONS")),
        },
        "/ws" => match upgrade(head, origin_ok, ctx) {
            // A refused upgrade is not retried on the same connection.
            Action::Respond(resp) => Action::Respond(resp.closing()),
            upgrade => upgrade,
        },
        "/api/broadcast" => match head.method() {
            Method::Post => broadcast(head, body, origin_ok, ctx),
            _ => Action::Respond(not_allowed("POST, OPTIONS")),
        },
        p if control::is_control_path(p) => control_request(head, body, ctx),
        _ => Action::Respond(
            demo::route(head, ctx.config)
                .unwrap_or_else(|| Response::error(404, "no such endpoint: try /health, /ws or /api/broadcast")),
        ),
    }
}

/// May a page from the request's Origin use this endpoint? No Origin (not
/// a browser, or a same-origin GET) is fine; otherwise ALLOWED_ORIGINS
/// decides — or, in development mode, the demo page's own origin.
fn origin_ok(head: &Head, config: &Config) -> bool {
    head.origin.as_deref().is_none_or(|o| config.allowed_origins.allows(o)) || demo::same_origin_dev(head, config)
}

/// Where Prometheus scrapes.
pub const METRICS_PATH: &str = "/metrics";

/// `GET /metrics`: with METRICS_API_KEY set, only that key (Bearer,
/// compared in constant time) may scrape.
fn metrics(head: &Head, ctx: &Ctx) -> Action {
    if !matches!(head.method(), Method::Get | Method::Head) {
        return Action::Respond(not_allowed("GET, HEAD"));
    }
    if let Some(key) = &ctx.config.metrics_api_key {
        let presented = head.authorization_bearer().unwrap_or("");
        if !bool::from(presented.as_bytes().ct_eq(key.expose().as_bytes())) {
            ctx.refusals.note("bad_metrics_key", ctx.now, || {
                format!("{} from {}: not METRICS_API_KEY", request_line(head), ctx.ip)
            });
            return Action::Respond(
                Response::error(401, "send METRICS_API_KEY as Authorization: Bearer <key>")
                    .header("WWW-Authenticate", "Bearer"),
            );
        }
    }
    Action::Metrics
}

/// `GET /ready`: may a load balancer send new clients here? Not while
/// draining (they would be closed again), and not without the keys that
/// verify their tokens. `/health` stays "the process is alive".
fn ready(ctx: &Ctx) -> Response {
    let reason = if ctx.draining {
        Some("draining")
    } else if ctx.verifier.jwks_ready() == Some(false) {
        Some("jwks_not_loaded")
    } else if ctx.redis_up == Some(false) {
        Some("redis_down")
    } else {
        None
    };
    match reason {
        None => Response::json(200, &json!({"status": "ready"})),
        Some(reason) => Response::json(503, &json!({"status": "not_ready", "reason": reason})),
    }
}

fn not_allowed(allow: &'static str) -> Response {
    Response::error(405, "method not allowed").header("Allow", allow)
}

/// A refused token: counted, logged for the operator (rate-limited; see
/// [`crate::refusals`]), and answered with 401.
fn token_refused(head: &Head, token: &str, e: AuthError, ctx: &Ctx) -> Response {
    ctx.metrics.auth_failed(e);
    ctx.refusals.note(auth_reason(e), ctx.now, || {
        format!("{} from {}: {}", request_line(head), ctx.ip, auth::describe_refusal(token, e, ctx.config))
    });
    let mut resp = Response::error(401, e.message()).header("WWW-Authenticate", "Bearer").closing();
    resp.auth_failure = e.counts_as_failure();
    resp
}

/// A request refused for its Origin: logged for the operator, answered 403.
fn origin_refused(head: &Head, ctx: &Ctx) -> Response {
    ctx.refusals.note("origin_not_allowed", ctx.now, || match head.origin.as_deref() {
        Some(o) => format!(
            "{} from {}: Origin {} is not in ALLOWED_ORIGINS ({})",
            request_line(head),
            ctx.ip,
            auth::shown(o),
            ctx.config.allowed_origins
        ),
        None => format!("{} from {}: a CORS preflight without an Origin", request_line(head), ctx.ip),
    });
    Response::error(403, "origin not allowed")
}

/// A refusal decided by a limit: logged for the operator and passed on.
fn limit_refused(head: &Head, resp: Response, reason: &'static str, ctx: &Ctx) -> Response {
    ctx.refusals.note(reason, ctx.now, || {
        format!("{} from {}: {} ({})", request_line(head), ctx.ip, resp.status, reason.replace('_', " "))
    });
    resp
}

/// [`Limits::check_auth_failures`], logged when it refuses.
fn check_auth_failures(head: &Head, ctx: &Ctx) -> Result<(), Response> {
    let check = ctx.limits.check_auth_failures(ctx.config, ctx.ip, ctx.now);
    check.map_err(|r| limit_refused(head, r, "too_many_auth_failures", ctx))
}

/// `GET /ws`: the method and path (never the query: it may hold a token).
fn request_line(head: &Head) -> String {
    format!("{} {}", head.method().as_str(), head.path)
}

/// Checks what a request with a body can be refused for from its head
/// alone — for `/api/broadcast`, the origin and the publisher's
/// credential — so a forged one gets its 401/403 at once, without the
/// server waiting for (and buffering) a body it will not use.
pub fn admit(head: &Head, ctx: &Ctx) -> Result<(), Response> {
    if head.method() != Method::Post {
        return Ok(());
    }
    if control::is_action_path(&head.path) {
        return controller(head, ctx);
    }
    if head.path != "/api/broadcast" {
        return Ok(());
    }
    // The same check `route` makes once the body is in: a demo-page publish
    // (development mode) whose body arrives after its head must pass here too.
    if !origin_ok(head, ctx.config) {
        return Err(origin_refused(head, ctx).closing());
    }
    publisher(head, ctx)
}

fn preflight(head: &Head, origin_ok: bool, ctx: &Ctx) -> Response {
    if head.cors_request_method.is_none() {
        // A plain OPTIONS: say what exists.
        return Response::new(204).header("Allow", "GET, HEAD, POST, OPTIONS");
    }
    if head.origin.is_none() || !origin_ok {
        return origin_refused(head, ctx);
    }
    Response::new(204)
        .header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
        .header("Access-Control-Allow-Headers", "Authorization, Content-Type")
        .header("Access-Control-Max-Age", PREFLIGHT_MAX_AGE_SECS.to_string())
}

fn upgrade(head: &Head, origin_ok: bool, ctx: &Ctx) -> Action {
    if head.method() != Method::Get {
        return Action::Respond(not_allowed("GET"));
    }
    // Only when the client asks for it: older clients keep the 401/403 before the upgrade.
    let in_band = match head.query_param(IN_BAND_AUTH.0) {
        None => false,
        Some(v) if v == IN_BAND_AUTH.1 => true,
        Some(_) => return Action::Respond(Response::error(400, "auth must be \"message\" (or absent)")),
    };
    if in_band && head.bearer_token().is_some() {
        // Two places for one credential: which one counts is ambiguous. Refuse.
        return Action::Respond(Response::error(400, "auth=message: send the token in the first message only"));
    }
    if !origin_ok && !in_band {
        return Action::Respond(origin_refused(head, ctx));
    }
    // RFC 6455 §4.2.1: an opening handshake is a GET with Upgrade: websocket,
    // Connection: Upgrade, a Sec-WebSocket-Key and version 13.
    if !head.upgrade_websocket {
        return Action::Respond(
            Response::error(426, "this endpoint only speaks WebSocket").header("Upgrade", "websocket"),
        );
    }
    if !head.connection_upgrade {
        return Action::Respond(Response::error(400, "Connection header must include Upgrade"));
    }
    let Some(key) = head.ws_key.as_deref().filter(|k| !k.is_empty()) else {
        return Action::Respond(Response::error(400, "missing Sec-WebSocket-Key"));
    };
    if head.ws_version.as_deref() != Some("13") {
        // §4.4: answer with the versions we do speak.
        return Action::Respond(
            Response::error(426, "unsupported WebSocket version").header("Sec-WebSocket-Version", "13"),
        );
    }
    // Cheap refusals before the signature check: a flood of upgrades with
    // forged tokens must not buy signature verifications once we are full.
    if ctx.draining {
        // A client that connected now would be closed again within the
        // drain: send it elsewhere (the load balancer has seen /ready fail).
        return Action::Respond(Response::error(503, "server restarting").header("Retry-After", "5"));
    }
    if let Err(resp) = ctx.limits.check_upgrade(ctx.config, ctx.ip) {
        let reason = if resp.status == 503 { "server_full" } else { "too_many_connections_from_address" };
        return Action::Respond(limit_refused(head, resp, reason, ctx));
    }
    if let Err(resp) = check_auth_failures(head, ctx) {
        return Action::Respond(resp);
    }
    if in_band {
        return Action::Upgrade { key: key.to_string(), auth: UpgradeAuth::FirstMessage { origin_ok } };
    }
    let token = head.bearer_token().unwrap_or("");
    let claims = match ctx.verifier.verify(token) {
        Ok(c) => c,
        Err(e) => return Action::Respond(token_refused(head, token, e, ctx)),
    };
    // A valid signature, but revoked (POST /api/revoke) or too long-lived
    // for a revocation to cover. Not counted against the address: it is a
    // real user whose app should fetch a fresh token.
    let sub = claims.sub.as_deref().unwrap_or("");
    if let Err(why) = ctx.control.check_token(sub, claims.iat, claims.exp, crate::auth::now_secs()) {
        ctx.metrics.auth_failed_because(why.label());
        return Action::Respond(Response::error(401, why.message()).header("WWW-Authenticate", "Bearer"));
    }
    Action::Upgrade { key: key.to_string(), auth: UpgradeAuth::Verified(claims) }
}

fn broadcast(head: &Head, body: &[u8], origin_ok: bool, ctx: &Ctx) -> Action {
    if !origin_ok {
        return Action::Respond(origin_refused(head, ctx));
    }
    if !ctx.admitted
        && let Err(resp) = publisher(head, ctx)
    {
        return Action::Respond(resp);
    }
    if let Some(ct) = &head.content_type {
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/json") {
            return Action::Respond(Response::error(415, "Content-Type must be application/json"));
        }
    }
    if head.idempotency_key.as_deref().is_some_and(|k| !control::valid_idempotency_key(k)) {
        return Action::Respond(Response::error(
            400,
            "Idempotency-Key must be 1-128 visible ASCII characters (one header; a random UUID is a good key)",
        ));
    }
    match broadcast::parse_publish(body, ctx.config.max_publish_channels, ctx.redis_up.is_some()) {
        Ok(publish) => Action::Broadcast(publish),
        Err(msg) => Action::Respond(Response::error(400, &msg)),
    }
}

/// Checks the publisher's credential. With BROADCAST_API_KEY set, only that
/// key (Bearer or X-API-Key, compared in constant time) may broadcast; a
/// user's JWT is recognised and refused with 403. Without it, any valid JWT
/// may (the original design). Only headers count: a credential in a URL
/// would end up in logs.
///
/// Refusals close the connection; an address past AUTH_FAILURES_PER_MIN
/// gets 429 before any signature is checked.
fn publisher(head: &Head, ctx: &Ctx) -> Result<(), Response> {
    let bearer = head.authorization_bearer();
    let Some(key) = &ctx.config.broadcast_api_key else {
        check_auth_failures(head, ctx)?;
        let token = bearer.unwrap_or("");
        return ctx.verifier.verify(token).map(|_| ()).map_err(|e| token_refused(head, token, e, ctx));
    };
    let presented = head.api_key.as_deref().or(bearer).unwrap_or("");
    if bool::from(presented.as_bytes().ct_eq(key.expose().as_bytes())) {
        return Ok(());
    }
    let refused = |reason: &'static str, what: &str| {
        ctx.metrics.auth_failed_because(reason);
        ctx.refusals.note(reason, ctx.now, || format!("{} from {}: {what}", request_line(head), ctx.ip));
    };
    if presented.is_empty() {
        refused("missing_api_key", "no API key (BROADCAST_API_KEY is set)");
        return Err(Response::error(401, "missing API key").header("WWW-Authenticate", "Bearer").closing());
    }
    check_auth_failures(head, ctx)?;
    if ctx.verifier.verify(presented).is_ok() {
        refused("user_token_as_publisher", "a user's token, not BROADCAST_API_KEY");
        return Err(Response::error(403, "user tokens cannot broadcast: use the publisher API key").closing());
    }
    refused("bad_api_key", "not BROADCAST_API_KEY");
    let mut resp = Response::error(401, "invalid API key").header("WWW-Authenticate", "Bearer").closing();
    resp.auth_failure = true;
    Err(resp)
}

/// The server API: POST `/api/unsubscribe`, `/api/disconnect`,
/// `/api/revoke`; GET `/api/channels/<channel>`, `/api/history`. For your
/// servers only (like `/metrics`): no CORS, and a request from a page
/// (with an Origin header) is refused.
fn control_request(head: &Head, body: &[u8], ctx: &Ctx) -> Action {
    let post = control::is_action_path(&head.path);
    match (head.method(), post) {
        (Method::Post, true) | (Method::Get, false) => {}
        (_, true) => return Action::Respond(not_allowed("POST")),
        (_, false) => return Action::Respond(not_allowed("GET")),
    }
    if !(post && ctx.admitted)
        && let Err(resp) = controller(head, ctx)
    {
        return Action::Respond(resp);
    }
    let parsed = if post {
        if let Some(ct) = &head.content_type {
            let mime = ct.split(';').next().unwrap_or("").trim();
            if !mime.eq_ignore_ascii_case("application/json") {
                return Action::Respond(Response::error(415, "Content-Type must be application/json"));
            }
        }
        control::parse_action(&head.path, body, crate::auth::now_secs())
    } else {
        control::parse_read(&head.path, head.query.as_deref())
    };
    match parsed {
        Ok(req) => Action::Control(req),
        Err(msg) => Action::Respond(Response::error(400, &msg)),
    }
}

/// Checks the server API's credential: CONTROL_API_KEY, or BROADCAST_API_KEY
/// when that is unset (Bearer or X-API-Key, compared in constant time;
/// headers only). With neither set the API is off. A user's JWT is
/// recognised and refused with 403. Refusals close the connection; an
/// address past AUTH_FAILURES_PER_MIN gets 429 before any signature check.
fn controller(head: &Head, ctx: &Ctx) -> Result<(), Response> {
    if head.origin.is_some() {
        return Err(Response::error(
            403,
            "the server API is for your servers: requests from a web page (with an Origin header) are refused",
        )
        .closing());
    }
    let Some(key) = ctx.config.control_api_key.as_ref().or(ctx.config.broadcast_api_key.as_ref()) else {
        ctx.metrics.auth_failed_because("control_api_off");
        return Err(Response::error(
            403,
            "the server API is off: set CONTROL_API_KEY (or BROADCAST_API_KEY) and send it as Authorization: Bearer <key>",
        )
        .closing());
    };
    let presented = head.api_key.as_deref().or(head.authorization_bearer()).unwrap_or("");
    if bool::from(presented.as_bytes().ct_eq(key.expose().as_bytes())) {
        return Ok(());
    }
    if presented.is_empty() {
        ctx.metrics.auth_failed_because("missing_api_key");
        return Err(Response::error(401, "missing API key: send CONTROL_API_KEY as Authorization: Bearer <key>")
            .header("WWW-Authenticate", "Bearer")
            .closing());
    }
    ctx.limits.check_auth_failures(ctx.config, ctx.ip, ctx.now)?;
    if ctx.verifier.verify(presented).is_ok() {
        ctx.metrics.auth_failed_because("user_token_as_controller");
        return Err(Response::error(403, "user tokens cannot use the server API: use CONTROL_API_KEY").closing());
    }
    ctx.metrics.auth_failed_because("bad_api_key");
    let mut resp = Response::error(401, "invalid API key").header("WWW-Authenticate", "Bearer").closing();
    resp.auth_failure = true;
    Err(resp)
}

/// The answer to a broadcast whose `Idempotency-Key` was seen within
/// IDEMPOTENCY_TTL_SECS: delivered to no one this time.
pub fn broadcast_duplicate() -> Response {
    Response::json(200, &json!({"status": "ok", "recipients": 0, "duplicate": true}))
}

/// The answer to a channel broadcast with an `Idempotency-Key`: per
/// channel, its offset and recipients, and `"duplicate": true` where the key
/// was seen already (that channel got nothing now, and keeps the offset of
/// the first publish). `duplicate` at the top when every channel was one.
pub fn published_once(per_channel: &[(&str, u64, usize, bool)]) -> Response {
    let recipients: usize = per_channel.iter().map(|(_, _, n, _)| n).sum();
    let channels: serde_json::Map<String, serde_json::Value> = per_channel
        .iter()
        .map(|(name, offset, n, dup)| {
            let mut v = json!({"offset": offset, "recipients": n});
            if *dup {
                v["duplicate"] = true.into();
            }
            (name.to_string(), v)
        })
        .collect();
    let duplicate = per_channel.iter().all(|(_, _, _, dup)| *dup);
    Response::json(
        200,
        &json!({"status": "ok", "recipients": recipients, "channels": channels, "duplicate": duplicate}),
    )
}

// The two answers below are written directly, byte for byte what
// serde_json writes for them (keys in sorted order): building them as a
// `serde_json::Value` cost more than parsing the request (issue 21's
// profile: 12k of a publish's ~33k instructions).

/// The answer to an accepted broadcast to everyone.
pub fn broadcast_ok(recipients: usize) -> Response {
    Response::json_text(200, format!(r#"{{"recipients":{recipients},"status":"ok"}}"#))
}

/// The answer to an accepted channel broadcast: per channel, the offset the
/// message got and how many clients it was queued to.
pub fn published_ok(per_channel: &[(&str, u64, usize)]) -> Response {
    use std::fmt::Write;
    let recipients: usize = per_channel.iter().map(|(_, _, n)| n).sum();
    let mut sorted: Vec<&(&str, u64, usize)> = per_channel.iter().collect();
    sorted.sort_unstable_by_key(|c| c.0);
    let mut body = String::with_capacity(48 + 48 * sorted.len());
    body.push_str(r#"{"channels":{"#);
    for (i, (name, offset, n)) in sorted.into_iter().enumerate() {
        // Valid channel names hold no character JSON escapes.
        debug_assert!(crate::channels::valid_name(name));
        let comma = if i > 0 { "," } else { "" };
        let _ = write!(body, r#"{comma}"{name}":{{"offset":{offset},"recipients":{n}}}"#);
    }
    let _ = write!(body, r#"}},"recipients":{recipients},"status":"ok"}}"#);
    Response::json_text(200, body)
}

/// Adds the CORS headers a response to `head` needs: an allowed origin is
/// echoed (with credentials); a disallowed one gets nothing. `Vary: Origin`
/// always, since the answer depends on it.
pub fn with_cors(mut resp: Response, head: &Head, origins: &Origins) -> Response {
    if head.path == METRICS_PATH || control::is_control_path(&head.path) {
        return resp; // never readable from a page
    }
    if let Some(origin) = head.origin.as_deref().filter(|o| origins.allows(o)) {
        resp = resp
            .header("Access-Control-Allow-Origin", origin.to_string())
            .header("Access-Control-Allow-Credentials", "true");
    }
    resp.header("Vary", "Origin")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_answers_are_what_serde_json_writes() {
        assert_eq!(broadcast_ok(3).body, json!({"status": "ok", "recipients": 3}).to_string());
        let cases: &[&[(&str, u64, usize)]] = &[
            &[],
            &[("project:7", 18, 3)],
            &[("user:u2", 1, 0), ("project:7", 18, 3), ("board:a.b_c-d", 9_007_199_254_740_993, 12)],
        ];
        for per_channel in cases {
            let recipients: usize = per_channel.iter().map(|c| c.2).sum();
            let channels: serde_json::Map<String, serde_json::Value> = per_channel
                .iter()
                .map(|(name, offset, n)| (name.to_string(), json!({"offset": offset, "recipients": n})))
                .collect();
            let want = json!({"status": "ok", "recipients": recipients, "channels": channels}).to_string();
            assert_eq!(published_ok(per_channel).body, want);
        }
    }
}
