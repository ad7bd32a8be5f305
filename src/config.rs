//! Configuration from the environment (and `.env`, loaded by `main`).
//!
//! Every variable is parsed here, once, at start-up. A bad value is a
//! [`ConfigError`] that names the variable; `main` prints it and exits 2, so a
//! typo in a deployment never turns into a server running with a surprise.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::proxies::TrustedProxies;

/// Fds kept back from the open-file limit when MAX_CONNECTIONS is derived:
/// the listener, epoll, the waker, signal pipes, log files and HTTP callers
/// (broadcasts, health checks) that arrive while the WebSocket count is full.
pub const FD_RESERVE: usize = 256;

/// JWKS_REFRESH_SECS at most: a removed (revoked) key stops being accepted
/// within a day at the latest.
pub const MAX_JWKS_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// JWKS_URL, checked at start-up: an `http://` or `https://` URL with a
/// host. Parsed by the HTTP client's own URI type (`http::Uri`, re-exported
/// by ureq), so what is accepted here is exactly what the fetcher can request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksUrl(String);

impl JwksUrl {
    /// Validates JWKS_URL; the error says what is wrong (for a [`ConfigError`]).
    pub fn parse(s: &str) -> Result<JwksUrl, String> {
        let s = s.trim();
        let example = "like https://app.example.com/api/auth/jwks or http://localhost:3000/api/auth/jwks";
        // A fragment never reaches the server (RFC 9110 §4.2.4); `Uri` refuses one.
        let s = s.split('#').next().unwrap_or("");
        let uri: ureq::http::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL ({e}), {example}"))?;
        let scheme = uri.scheme_str().map(str::to_ascii_lowercase);
        if !matches!(scheme.as_deref(), Some("http" | "https")) {
            return Err(format!("{s:?} is not an http:// or https:// URL, {example}"));
        }
        let Some(authority) = uri.authority() else { return Err(format!("{s:?} names no host")) };
        if authority.as_str().contains('@') {
            return Err("credentials in the URL are not supported".into());
        }
        if authority.host().is_empty() {
            return Err(format!("{s:?} names no host"));
        }
        // `Uri` leaves a port it cannot read as a number to the caller.
        if let Some((_, port)) = authority.as_str().rsplit_once(':').filter(|(_, p)| !p.contains(']'))
            && !port.parse::<u16>().is_ok_and(|p| p != 0)
        {
            return Err(format!("{s:?}: {port:?} is not a port (1-65535)"));
        }
        // `Uri` keeps the scheme and host as written; lower-case them so logs
        // and comparisons see one spelling.
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
        Ok(JwksUrl(format!("{}://{}{path}", scheme.unwrap(), authority.as_str().to_ascii_lowercase())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for `https://` (the only case in which SSL_CERT_FILE is read).
    pub fn is_https(&self) -> bool {
        self.0.starts_with("https://")
    }
}

impl fmt::Display for JwksUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The largest value of any rate or burst variable.
pub const MAX_RATE: u32 = 1_000_000_000;
/// PING_INTERVAL_SECS and PONG_WAIT_SECS at most.
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(24 * 3600);
/// REQUEST_TIMEOUT_SECS and SHUTDOWN_GRACE_SECS at most.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// JWT_LEEWAY_SECS at most.
pub const MAX_LEEWAY_SECS: u64 = 3600;
/// MAX_MESSAGE_BYTES and MAX_AUTH_MESSAGE_BYTES at most.
pub const MAX_CLIENT_MESSAGE: usize = 1024 * 1024;
/// MAX_BROADCAST_BYTES at most.
pub const MAX_BROADCAST: usize = 16 * 1024 * 1024;
/// MAX_OUTPUT_BYTES at most.
pub const MAX_OUTPUT: usize = 1024 * 1024 * 1024;
/// SEND_QUEUE_LIMIT, MAX_CONNECTIONS and the per-address counts at most.
pub const MAX_COUNT: usize = 10_000_000;

/// A value that must never reach a log: `Debug` prints `Secret(..)`, and
/// the value is read only through [`Secret::expose`], so every use is
/// visible in the code. Wrap any new credential (a Redis password, ...) in
/// one and `Config`'s derived `Debug` stays safe to print.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Secret<T> {
        Secret(value)
    }

    /// The secret itself: for checking credentials, never for printing.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl From<&str> for Secret<String> {
    fn from(s: &str) -> Secret<String> {
        Secret(s.to_string())
    }
}

impl From<String> for Secret<String> {
    fn from(s: String) -> Secret<String> {
        Secret(s)
    }
}

impl From<Vec<u8>> for Secret<Vec<u8>> {
    fn from(b: Vec<u8>) -> Secret<Vec<u8>> {
        Secret(b)
    }
}

/// Which `Origin` headers may talk to us (browsers always send one; servers
/// and CLI tools usually do not, and are allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    /// `ALLOWED_ORIGINS=*`: any origin.
    Any,
    /// Exact origins (`scheme://host[:port]`), compared case-insensitively.
    List(Vec<String>),
}

impl Origins {
    /// Is a request carrying this `Origin` header allowed?
    pub fn allows(&self, origin: &str) -> bool {
        match self {
            Origins::Any => true,
            Origins::List(list) => {
                let origin = origin.trim_end_matches('/');
                list.iter().any(|o| o.eq_ignore_ascii_case(origin))
            }
        }
    }
}

impl fmt::Display for Origins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origins::Any => f.write_str("*"),
            Origins::List(l) => f.write_str(&l.join(",")),
        }
    }
}

/// Everything the server needs to run. Tests build one with
/// [`Config::for_tests`] and adjust fields directly.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen (HOST:PORT).
    pub addr: SocketAddr,
    /// True when development mode (no JWT_SECRET, no JWKS) chose 127.0.0.1
    /// because HOST was not set; `main` says so at start-up.
    pub dev_loopback_only: bool,
    /// Front-end origins allowed by CORS and by the WebSocket Origin check.
    pub allowed_origins: Origins,
    /// HS256 secret shared with the front end (the app mints its own
    /// tokens). `None` when JWT_SECRET is unset and JWKS is configured:
    /// HS256 tokens are then refused (an `Option`, not an empty key, so no
    /// code path can end up checking HMACs against an empty secret).
    pub jwt_secret: Option<Secret<Vec<u8>>>,
    /// True when neither JWT_SECRET nor JWKS is set and a per-run secret was
    /// generated: `main` then prints a ready-made token so a newcomer can try it.
    pub jwt_secret_generated: bool,
    /// Seconds of clock skew tolerated on `exp` and `nbf` (JWT_LEEWAY_SECS).
    pub jwt_leeway_secs: u64,
    /// Required `iss` claim, when set (checked for every algorithm).
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, when set (checked for every algorithm).
    pub jwt_audience: Option<String>,
    /// Largest ordinary client -> server message.
    pub max_message_bytes: usize,
    /// Largest client message that carries a token (`{"type":"auth"}`):
    /// BetterAuth JWTs hold the user object and run 600-1000+ bytes.
    pub max_auth_message_bytes: usize,
    /// Largest `/api/broadcast` body, checked against Content-Length
    /// before any of the body is read.
    pub max_broadcast_bytes: usize,
    /// How often the server pings each WebSocket client.
    pub ping_interval: Duration,
    /// How long a client may stay silent (no frame at all) before it is dropped.
    pub pong_wait: Duration,
    /// Messages queued for one client before it counts as too slow and is closed.
    pub send_queue_limit: usize,
    /// Unsent bytes one WebSocket client may have queued, whatever queued
    /// them (broadcasts, pongs to its Pings, replies, our Pings); past that
    /// it is closed with 1013 like a slow consumer. MAX_OUTPUT_BYTES.
    pub max_output_bytes: usize,
    /// Open WebSocket clients at most; further upgrades get 503.
    pub max_connections: usize,
    /// An HTTP request must arrive whole within this time (slowloris guard);
    /// also the idle timeout of a keep-alive connection.
    pub request_timeout: Duration,
    /// On SIGTERM/SIGINT, how long clients get to receive close 1001.
    pub shutdown_grace: Duration,
    /// Messages (of any kind) one client may send per second, sustained...
    pub client_msg_rate: u32,
    /// ...and in a burst; past that the client is closed with 1008.
    pub client_msg_burst: u32,
    /// When set, `/api/broadcast` takes only this key (a publisher
    /// credential), and user JWTs get 403.
    pub broadcast_api_key: Option<Secret<String>>,
    /// Open WebSocket clients per client IP (0 = no limit); then 429.
    pub max_connections_per_ip: usize,
    /// Open plain-HTTP connections per TCP peer address (0 = no limit),
    /// trusted proxies exempt; past it a new connection gets 429 and is closed.
    pub max_http_connections_per_ip: usize,
    /// Failed authentications (forged/expired tokens, wrong API keys) one
    /// client address may make per minute (0 = no limit); then 429 before
    /// any signature is checked. AUTH_FAILURES_PER_MIN.
    pub auth_failures_per_min: u32,
    /// TRUSTED_PROXIES: peers whose X-Forwarded-For gives the client
    /// address (default loopback: a proxy on this machine).
    pub trusted_proxies: TrustedProxies,
    /// Broadcasts accepted per second, sustained (0 = no limit)...
    pub broadcast_rate: u32,
    /// ...and in a burst; past that `/api/broadcast` answers 429.
    pub broadcast_burst: u32,
    /// JWKS_URL: where the front end publishes its public keys (BetterAuth:
    /// `<app>/api/auth/jwks`), over http or https.
    pub jwks_url: Option<JwksUrl>,
    /// SSL_CERT_FILE: a PEM bundle of the CA certificates an https JWKS_URL
    /// is checked against, instead of the built-in (Mozilla/webpki) roots;
    /// for an app whose certificate comes from a private CA. Read only when
    /// JWKS_URL is https.
    pub ssl_cert_file: Option<PathBuf>,
    /// JWKS_FILE: a JWKS on disk (written by the app, or pasted), re-read at
    /// every refresh; works without any HTTP, and keeps start-up possible
    /// while JWKS_URL is down.
    pub jwks_file: Option<PathBuf>,
    /// JWKS_REFRESH_SECS: how often the key set is fetched again (a token
    /// with an unknown `kid` also triggers a fetch, rate-limited).
    pub jwks_refresh: Duration,
    /// TCP_NODELAY on client sockets: a broadcast leaves at once instead of
    /// waiting for the previous segment's ACK (Nagle). Batching comes from
    /// one writev per loop turn either way.
    pub tcp_nodelay: bool,
    /// CHANNELS_CLAIM: the JWT claim listing the channels a connection may
    /// join (`project:42`, or `project:*` for a whole namespace).
    pub channels_claim: String,
    /// MAX_SUBSCRIPTIONS: channels one connection may be in (its own
    /// `user:` channel included); more get `too_many_subscriptions`.
    pub max_subscriptions: usize,
    /// MAX_PUBLISH_CHANNELS: channels one broadcast may name.
    pub max_publish_channels: usize,
    /// HISTORY_SIZE: messages kept per channel for replay (0 = none).
    pub history_size: usize,
    /// HISTORY_TTL_SECS: how long a message stays replayable.
    pub history_ttl: Duration,
    /// HISTORY_MAX_BYTES: all channels' history together; past it the
    /// oldest entries go first.
    pub history_max_bytes: usize,
    /// FLUSH_DELAY_MICROS: between two rounds of subscriber writes, frames
    /// wait as long as the last round took, at most this (0 = write every
    /// turn). A lone broadcast to few clients is never delayed.
    pub flush_delay: Duration,
    /// REDIS_URL / REDIS_PREFIX: cluster mode, when set.
    pub redis: Option<crate::cluster::RedisConfig>,
    /// REUSE_PORT: SO_REUSEPORT on the listener, so several processes on
    /// one machine share the port (the kernel spreads connections).
    pub reuse_port: bool,
    /// DRAIN_SECS: on SIGTERM, the window over which clients are closed
    /// with 1012, spread evenly, so they reconnect to other instances
    /// gradually instead of all at once (0 = all at once).
    pub drain: Duration,
    /// METRICS_API_KEY: when set, `GET /metrics` needs it as a Bearer token.
    pub metrics_api_key: Option<Secret<String>>,
    /// CONTROL_API_KEY: the credential of the server API (`/api/unsubscribe`,
    /// `/api/disconnect`, `/api/revoke`, `/api/channels/..`, `/api/history`);
    /// when unset, BROADCAST_API_KEY is; with neither, that API is off (403).
    pub control_api_key: Option<Secret<String>>,
    /// IDEMPOTENCY_TTL_SECS: how long an `Idempotency-Key` of
    /// `/api/broadcast` is remembered (a repeat within it delivers nothing).
    pub idempotency_ttl: Duration,
    /// JWT_MAX_LIFETIME_SECS: the longest `exp - iat` a token may have. A
    /// revocation or denial must outlive every token issued before it, so it
    /// is kept this long (plus JWT_LEEWAY_SECS); a token living longer could
    /// outlast it, and is refused.
    pub jwt_max_lifetime_secs: u64,
}

/// JWT_MAX_LIFETIME_SECS when unset: a week (BetterAuth's JWTs live 15 minutes).
pub const DEFAULT_JWT_MAX_LIFETIME_SECS: u64 = 7 * 24 * 3600;
/// JWT_MAX_LIFETIME_SECS at most: as long as a connection may live on one
/// token (`auth` uses the same bound for any token's `exp`).
pub const MAX_JWT_LIFETIME_SECS: u64 = 366 * 24 * 3600;

/// DRAIN_SECS at most: a deploy should not wait more than an hour.
pub const MAX_DRAIN: Duration = Duration::from_secs(3600);

/// A bad configuration value: names the variable and says what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.var, self.message)
    }
}

impl std::error::Error for ConfigError {}

fn err(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError { var, message: message.into() }
}

/// Parses a variable with `FromStr`, or returns the default when unset/empty.
fn parse_or<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
    what: &str,
) -> Result<T, ConfigError> {
    match get(var) {
        None => Ok(default),
        Some(v) if v.trim().is_empty() => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| err(var, format!("{v:?} is not {what}"))),
    }
}

/// A whole number in `min..=max` (the default when unset). Every count and
/// duration has a documented maximum, so no value can overflow the
/// arithmetic it feeds (`Instant + Duration`, `as u32`, sums of sizes).
fn bounded(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let v = parse_or(get, var, default, "a whole number")?;
    if !(min..=max).contains(&v) {
        return Err(err(var, format!("{v} is out of range: must be {min} to {max}")));
    }
    Ok(v)
}

/// [`bounded`] for sizes and counts.
fn count(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: usize,
    min: usize,
    max: usize,
) -> Result<usize, ConfigError> {
    Ok(bounded(get, var, default as u64, min as u64, max as u64)? as usize)
}

/// [`bounded`] for rates and bursts (token buckets count in `u32`).
fn rate(get: &impl Fn(&str) -> Option<String>, var: &'static str, default: u32, min: u32) -> Result<u32, ConfigError> {
    Ok(bounded(get, var, default.into(), min.into(), MAX_RATE.into())? as u32)
}

/// [`bounded`] for durations in whole seconds, at least 1.
fn secs(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: u64,
    max: Duration,
) -> Result<Duration, ConfigError> {
    Ok(Duration::from_secs(bounded(get, var, default, 1, max.as_secs())?))
}

fn optional(get: &impl Fn(&str) -> Option<String>, var: &str) -> Option<String> {
    get(var).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads configuration through `get` (the environment, or a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let port: u16 = parse_or(&get, "PORT", 8080, "a port number (0-65535)")?;
        let host_set = optional(&get, "HOST");

        let origins = optional(&get, "ALLOWED_ORIGINS").unwrap_or_else(|| "http://localhost:3000".into());
        let allowed_origins = parse_origins(&origins)?;

        let jwks_url = match optional(&get, "JWKS_URL") {
            Some(u) => Some(JwksUrl::parse(&u).map_err(|m| err("JWKS_URL", m))?),
            None => None,
        };
        let jwks_file = optional(&get, "JWKS_FILE").map(PathBuf::from);
        let ssl_cert_file = optional(&get, "SSL_CERT_FILE").map(PathBuf::from);
        let jwks_refresh = secs(&get, "JWKS_REFRESH_SECS", 600, MAX_JWKS_REFRESH)?;
        // A random development secret only when nothing else can verify a
        // token: with JWKS configured, no JWT_SECRET simply means no HS256.
        let (jwt_secret, jwt_secret_generated) = match optional(&get, "JWT_SECRET") {
            Some(s) => (Some(Secret(s.into_bytes())), false),
            None if jwks_url.is_some() || jwks_file.is_some() => (None, false),
            None => (Some(Secret(random_secret())), true),
        };
        // Development mode (a generated secret) listens on loopback unless
        // HOST says otherwise: a production deployment that forgot its
        // JWT_SECRET is then unreachable instead of open with a printed token.
        let dev_loopback_only = jwt_secret_generated && host_set.is_none();
        let host = host_set.unwrap_or_else(|| if dev_loopback_only { "127.0.0.1" } else { "0.0.0.0" }.into());
        let addr = (host.as_str(), port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| err("HOST", format!("{host:?} is not an address to listen on")))?;

        let max_message_bytes = count(&get, "MAX_MESSAGE_BYTES", 512, 1, MAX_CLIENT_MESSAGE)?;
        let max_auth_message_bytes = count(&get, "MAX_AUTH_MESSAGE_BYTES", 8192, 1, MAX_CLIENT_MESSAGE)?;
        if max_auth_message_bytes < max_message_bytes {
            return Err(err(
                "MAX_AUTH_MESSAGE_BYTES",
                format!("must be at least MAX_MESSAGE_BYTES ({max_message_bytes})"),
            ));
        }
        let max_broadcast_bytes = count(&get, "MAX_BROADCAST_BYTES", 65536, 1, MAX_BROADCAST)?;
        let ping_interval = secs(&get, "PING_INTERVAL_SECS", 54, MAX_HEARTBEAT)?;
        let pong_wait = secs(&get, "PONG_WAIT_SECS", 60, MAX_HEARTBEAT)?;
        if ping_interval >= pong_wait {
            return Err(err(
                "PING_INTERVAL_SECS",
                format!(
                    "must be below PONG_WAIT_SECS ({}s), or live clients are dropped between pings",
                    pong_wait.as_secs()
                ),
            ));
        }
        let send_queue_limit = count(&get, "SEND_QUEUE_LIMIT", 256, 1, MAX_COUNT)?;
        let max_output_bytes = count(&get, "MAX_OUTPUT_BYTES", 4 * 1024 * 1024, 1, MAX_OUTPUT)?;
        if max_output_bytes < max_broadcast_bytes + 16 {
            return Err(err(
                "MAX_OUTPUT_BYTES",
                format!("must exceed MAX_BROADCAST_BYTES ({max_broadcast_bytes}) so one broadcast always fits"),
            ));
        }
        let max_connections = count(&get, "MAX_CONNECTIONS", default_max_connections().min(MAX_COUNT), 1, MAX_COUNT)?;
        let request_timeout = secs(&get, "REQUEST_TIMEOUT_SECS", 10, MAX_TIMEOUT)?;
        let shutdown_grace = secs(&get, "SHUTDOWN_GRACE_SECS", 5, MAX_TIMEOUT)?;
        let client_msg_rate = rate(&get, "CLIENT_MESSAGES_PER_SEC", 50, 1)?;
        let client_msg_burst = rate(&get, "CLIENT_MESSAGE_BURST", 100, 1)?;
        let max_connections_per_ip = count(&get, "MAX_CONNECTIONS_PER_IP", 1000, 0, MAX_COUNT)?;
        let auth_failures_per_min = rate(&get, "AUTH_FAILURES_PER_MIN", 30, 0)?;
        let max_http_connections_per_ip = count(&get, "MAX_HTTP_CONNECTIONS_PER_IP", 256, 0, MAX_COUNT)?;
        let broadcast_rate = rate(&get, "BROADCAST_RATE_PER_SEC", 1000, 0)?;
        let broadcast_burst = rate(&get, "BROADCAST_BURST", 10_000, 1)?;
        let jwt_leeway_secs = bounded(&get, "JWT_LEEWAY_SECS", 30, 0, MAX_LEEWAY_SECS)?;
        let trusted_proxies = match optional(&get, "TRUSTED_PROXIES") {
            Some(v) => TrustedProxies::parse(&v).map_err(|m| err("TRUSTED_PROXIES", m))?,
            None => TrustedProxies::loopback(),
        };
        let broadcast_api_key = optional(&get, "BROADCAST_API_KEY").map(Secret);
        if broadcast_api_key.as_ref().is_some_and(|k| k.expose().len() < 16) {
            return Err(err("BROADCAST_API_KEY", "must be at least 16 characters (use a long random string)"));
        }
        let drain =
            Duration::from_secs(parse_or(&get, "DRAIN_SECS", 10, "a whole number of seconds (0 = no spreading)")?);
        if drain > MAX_DRAIN {
            return Err(err("DRAIN_SECS", format!("must be at most {} (an hour)", MAX_DRAIN.as_secs())));
        }
        let metrics_api_key = optional(&get, "METRICS_API_KEY").map(Secret);
        if metrics_api_key.as_ref().is_some_and(|k| k.expose().len() < 16) {
            return Err(err("METRICS_API_KEY", "must be at least 16 characters (use a long random string)"));
        }

        let control_api_key = optional(&get, "CONTROL_API_KEY").map(Secret);
        if control_api_key.as_ref().is_some_and(|k| k.expose().len() < 16) {
            return Err(err("CONTROL_API_KEY", "must be at least 16 characters (use a long random string)"));
        }
        let idempotency_ttl = secs(&get, "IDEMPOTENCY_TTL_SECS", 300, Duration::from_secs(7 * 24 * 3600))?;
        let jwt_max_lifetime_secs =
            bounded(&get, "JWT_MAX_LIFETIME_SECS", DEFAULT_JWT_MAX_LIFETIME_SECS, 60, MAX_JWT_LIFETIME_SECS)?;

        let channels_claim = optional(&get, "CHANNELS_CLAIM").unwrap_or_else(|| "channels".into());
        let max_subscriptions = count(&get, "MAX_SUBSCRIPTIONS", 100, 1, 10_000)?;
        let max_publish_channels = count(&get, "MAX_PUBLISH_CHANNELS", 100, 1, 10_000)?;
        let history_size = count(&get, "HISTORY_SIZE", 100, 0, 10_000)?;
        let history_ttl = secs(&get, "HISTORY_TTL_SECS", 300, Duration::from_secs(7 * 24 * 3600))?;
        let history_max_bytes = count(&get, "HISTORY_MAX_BYTES", 64 << 20, 1, 1 << 40)?;
        let flush_delay = Duration::from_micros(bounded(&get, "FLUSH_DELAY_MICROS", 1000, 0, 100_000)?);

        let redis =
            crate::cluster::parse_redis_env(&get).map_err(|e| ConfigError { var: e.var, message: e.message })?;
        let reuse_port = parse_or(&get, "REUSE_PORT", false, "true or false")?;

        Ok(Config {
            redis,
            reuse_port,
            flush_delay,
            channels_claim,
            max_subscriptions,
            max_publish_channels,
            history_size,
            history_ttl,
            history_max_bytes,
            addr,
            dev_loopback_only,
            allowed_origins,
            jwt_secret,
            jwt_secret_generated,
            jwt_leeway_secs,
            jwt_issuer: optional(&get, "JWT_ISSUER"),
            jwt_audience: optional(&get, "JWT_AUDIENCE"),
            max_message_bytes,
            max_auth_message_bytes,
            max_broadcast_bytes,
            ping_interval,
            pong_wait,
            send_queue_limit,
            max_output_bytes,
            max_connections,
            request_timeout,
            shutdown_grace,
            client_msg_rate,
            client_msg_burst,
            broadcast_api_key,
            max_connections_per_ip,
            max_http_connections_per_ip,
            auth_failures_per_min,
            trusted_proxies,
            broadcast_rate,
            broadcast_burst,
            jwks_url,
            jwks_file,
            ssl_cert_file,
            jwks_refresh,
            tcp_nodelay: parse_or(&get, "TCP_NODELAY", true, "true or false")?,
            drain,
            metrics_api_key,
            control_api_key,
            idempotency_ttl,
            jwt_max_lifetime_secs,
        })
    }

    /// Defaults on 127.0.0.1:0 with a fixed secret; tests tweak fields.
    pub fn for_tests(secret: &str) -> Config {
        let mut c = Config::from_lookup(|k| match k {
            "HOST" => Some("127.0.0.1".into()),
            "PORT" => Some("0".into()),
            "JWT_SECRET" => Some(secret.into()),
            _ => None,
        })
        .expect("test defaults are valid");
        c.max_connections = 10_000;
        c
    }
}

fn parse_origins(v: &str) -> Result<Origins, ConfigError> {
    if v.trim() == "*" {
        return Ok(Origins::Any);
    }
    let mut list = Vec::new();
    for o in v.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let o = o.trim_end_matches('/');
        let ok = (o.starts_with("http://") || o.starts_with("https://"))
            && !o.split_once("://").is_some_and(|(_, rest)| rest.is_empty() || rest.contains('/'));
        if !ok {
            return Err(err(
                "ALLOWED_ORIGINS",
                format!("{o:?} is not an origin like https://app.example.com (scheme://host[:port], no path)"),
            ));
        }
        list.push(o.to_ascii_lowercase());
    }
    if list.is_empty() {
        return Err(err("ALLOWED_ORIGINS", "lists no origin (use * to allow any)"));
    }
    Ok(Origins::List(list))
}

/// The soft open-file limit less [`FD_RESERVE`] (and never below 1).
fn default_max_connections() -> usize {
    crate::sys::open_file_limit().saturating_sub(FD_RESERVE).max(1)
}

/// 32 random bytes, hex-encoded: a per-run development secret.
fn random_secret() -> Vec<u8> {
    let mut bytes = [0u8; 32];
    crate::sys::fill_random(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect::<String>().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = cfg(&[]).unwrap();
        // Development mode (no secret): loopback only, unless HOST is set.
        assert_eq!(c.addr, "127.0.0.1:8080".parse().unwrap());
        assert!(c.dev_loopback_only);
        let c = cfg(&[("HOST", "0.0.0.0")]).unwrap();
        assert_eq!((c.addr, c.dev_loopback_only), ("0.0.0.0:8080".parse().unwrap(), false));
        let c = cfg(&[("JWT_SECRET", "s")]).unwrap();
        assert_eq!((c.addr, c.dev_loopback_only), ("0.0.0.0:8080".parse().unwrap(), false));
        let c = cfg(&[]).unwrap();
        assert_eq!(c.allowed_origins, Origins::List(vec!["http://localhost:3000".into()]));
        assert!(c.jwt_secret_generated);
        assert_eq!(c.jwt_secret.map(|s| s.expose().len()), Some(64));
        assert_eq!(c.jwks_url, None);
        assert_eq!(c.jwks_file, None);
        assert_eq!(c.jwks_refresh, Duration::from_secs(600));
        assert_eq!(c.max_message_bytes, 512);
        assert_eq!(c.max_broadcast_bytes, 65536);
        assert_eq!(c.ping_interval, Duration::from_secs(54));
        assert_eq!(c.pong_wait, Duration::from_secs(60));
        assert_eq!(c.send_queue_limit, 256);
        assert!(c.max_connections >= 1);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let table: &[(&[(&str, &str)], &str)] = &[
            (&[("PORT", "abc")], "PORT"),
            (&[("PORT", "70000")], "PORT"),
            (&[("HOST", "not a host!")], "HOST"),
            (&[("MAX_MESSAGE_BYTES", "0")], "MAX_MESSAGE_BYTES"),
            (&[("MAX_MESSAGE_BYTES", "-3")], "MAX_MESSAGE_BYTES"),
            (&[("MAX_BROADCAST_BYTES", "lots")], "MAX_BROADCAST_BYTES"),
            (&[("PING_INTERVAL_SECS", "60"), ("PONG_WAIT_SECS", "60")], "PING_INTERVAL_SECS"),
            (&[("PONG_WAIT_SECS", "x")], "PONG_WAIT_SECS"),
            (&[("SEND_QUEUE_LIMIT", "0")], "SEND_QUEUE_LIMIT"),
            (&[("MAX_CONNECTIONS", "1.5")], "MAX_CONNECTIONS"),
            (&[("ALLOWED_ORIGINS", "localhost:3000")], "ALLOWED_ORIGINS"),
            (&[("ALLOWED_ORIGINS", "https://a.com/path")], "ALLOWED_ORIGINS"),
            (&[("ALLOWED_ORIGINS", " , ")], "ALLOWED_ORIGINS"),
            (&[("MAX_AUTH_MESSAGE_BYTES", "100")], "MAX_AUTH_MESSAGE_BYTES"),
            (&[("BROADCAST_API_KEY", "short")], "BROADCAST_API_KEY"),
            (&[("MAX_CONNECTIONS_PER_IP", "-1")], "MAX_CONNECTIONS_PER_IP"),
            (&[("BROADCAST_RATE_PER_SEC", "fast")], "BROADCAST_RATE_PER_SEC"),
            (&[("BROADCAST_BURST", "0")], "BROADCAST_BURST"),
            (&[("TCP_NODELAY", "yes")], "TCP_NODELAY"),
            (&[("JWKS_URL", "ftp://app.example.com/api/auth/jwks")], "JWKS_URL"),
            (&[("JWKS_URL", "https:///api/auth/jwks")], "JWKS_URL"),
            (&[("JWKS_URL", "/api/auth/jwks")], "JWKS_URL"),
            (&[("JWKS_URL", "http://localhost:0/jwks")], "JWKS_URL"),
            (&[("JWKS_URL", "localhost:3000/api/auth/jwks")], "JWKS_URL"),
            (&[("JWKS_URL", "http://:3000/jwks")], "JWKS_URL"),
            (&[("JWKS_URL", "http://localhost:99999/jwks")], "JWKS_URL"),
            (&[("JWKS_URL", "http://user:pw@localhost/jwks")], "JWKS_URL"),
            (&[("JWKS_URL", "http://localhost/a b")], "JWKS_URL"),
            (&[("JWKS_URL", "http://localhost/jwks"), ("JWKS_REFRESH_SECS", "0")], "JWKS_REFRESH_SECS"),
            (&[("JWKS_REFRESH_SECS", "soon")], "JWKS_REFRESH_SECS"),
            (&[("JWKS_REFRESH_SECS", "86401")], "JWKS_REFRESH_SECS"),
            (&[("JWKS_REFRESH_SECS", "99999999999999999999")], "JWKS_REFRESH_SECS"),
            (&[("BROADCAST_BURST", "4294967296")], "BROADCAST_BURST"),
            (&[("CLIENT_MESSAGE_BURST", "4294967296")], "CLIENT_MESSAGE_BURST"),
            (&[("CLIENT_MESSAGES_PER_SEC", "1000000001")], "CLIENT_MESSAGES_PER_SEC"),
            (&[("BROADCAST_RATE_PER_SEC", "4294967296")], "BROADCAST_RATE_PER_SEC"),
            (&[("PONG_WAIT_SECS", "18446744073709551615")], "PONG_WAIT_SECS"),
            (&[("PING_INTERVAL_SECS", "86401"), ("PONG_WAIT_SECS", "86400")], "PING_INTERVAL_SECS"),
            (&[("REQUEST_TIMEOUT_SECS", "3601")], "REQUEST_TIMEOUT_SECS"),
            (&[("SHUTDOWN_GRACE_SECS", "18446744073709551615")], "SHUTDOWN_GRACE_SECS"),
            (&[("MAX_BROADCAST_BYTES", "18446744073709551615")], "MAX_BROADCAST_BYTES"),
            (&[("MAX_MESSAGE_BYTES", "1048577")], "MAX_MESSAGE_BYTES"),
            (&[("MAX_OUTPUT_BYTES", "1000")], "MAX_OUTPUT_BYTES"),
            (&[("SEND_QUEUE_LIMIT", "10000001")], "SEND_QUEUE_LIMIT"),
            (&[("MAX_CONNECTIONS", "0")], "MAX_CONNECTIONS"),
            (&[("JWT_LEEWAY_SECS", "3601")], "JWT_LEEWAY_SECS"),
            (&[("JWT_LEEWAY_SECS", "-1")], "JWT_LEEWAY_SECS"),
            (&[("TRUSTED_PROXIES", "10.0.0.0/40")], "TRUSTED_PROXIES"),
            (&[("TRUSTED_PROXIES", "nginx.local")], "TRUSTED_PROXIES"),
        ];
        for (pairs, var) in table {
            let e = cfg(pairs).unwrap_err();
            assert_eq!(e.var, *var, "{pairs:?}");
            assert!(e.to_string().contains(var), "{e}");
        }
    }

    #[test]
    fn origins() {
        let c = cfg(&[("ALLOWED_ORIGINS", "https://App.example.com/, http://localhost:3000")]).unwrap();
        assert!(c.allowed_origins.allows("https://app.example.com"));
        assert!(c.allowed_origins.allows("http://localhost:3000"));
        assert!(!c.allowed_origins.allows("http://localhost:3001"));
        assert!(!c.allowed_origins.allows("https://app.example.com.evil.com"));
        assert!(!c.allowed_origins.allows("null"));
        assert_eq!(cfg(&[("ALLOWED_ORIGINS", "*")]).unwrap().allowed_origins, Origins::Any);
    }

    #[test]
    fn secret_and_claims() {
        let c = cfg(&[("JWT_SECRET", "s3cret"), ("JWT_ISSUER", "http://a"), ("JWT_AUDIENCE", " ")]).unwrap();
        assert_eq!(c.jwt_secret.as_ref().map(|s| &s.expose()[..]), Some(&b"s3cret"[..]));
        assert!(!c.jwt_secret_generated);
        assert_eq!(c.jwt_issuer.as_deref(), Some("http://a"));
        assert_eq!(c.jwt_audience, None);
    }

    #[test]
    fn jwks() {
        let c = cfg(&[("JWKS_URL", " http://localhost:3000/api/auth/jwks "), ("JWKS_REFRESH_SECS", "60")]).unwrap();
        let url = c.jwks_url.as_ref().unwrap();
        assert_eq!(url.to_string(), "http://localhost:3000/api/auth/jwks");
        assert_eq!(c.jwks_refresh, Duration::from_secs(60));
        // JWKS configured and no JWT_SECRET: HS256 is off, no dev secret.
        assert_eq!(c.jwt_secret, None);
        assert!(!c.jwt_secret_generated);

        let c = cfg(&[("JWKS_FILE", "/etc/taskcast/jwks.json")]).unwrap();
        assert_eq!(c.jwks_file.as_deref(), Some(std::path::Path::new("/etc/taskcast/jwks.json")));
        assert_eq!((c.jwt_secret, c.jwt_secret_generated), (None, false));

        // Both: HS256 tokens keep working next to the JWKS keys.
        let c = cfg(&[("JWKS_URL", "http://127.0.0.1/jwks"), ("JWT_SECRET", "s3cret")]).unwrap();
        assert_eq!(c.jwt_secret.as_ref().map(|s| &s.expose()[..]), Some(&b"s3cret"[..]));
        assert!(!c.jwt_secret_generated);

        let c =
            cfg(&[("JWKS_URL", "https://App.Example.com/api/auth/jwks"), ("SSL_CERT_FILE", "/etc/ca.pem")]).unwrap();
        let url = c.jwks_url.unwrap();
        assert_eq!(url.as_str(), "https://app.example.com/api/auth/jwks");
        assert!(url.is_https());
        assert_eq!(c.ssl_cert_file.as_deref(), Some(std::path::Path::new("/etc/ca.pem")));
    }

    #[test]
    fn jwks_urls() {
        for (given, shown) in [
            ("http://localhost:3000/api/auth/jwks", "http://localhost:3000/api/auth/jwks"),
            ("HTTP://App.Local/jwks?v=1#frag", "http://app.local/jwks?v=1"),
            ("http://127.0.0.1:8000", "http://127.0.0.1:8000/"),
            ("https://[::1]:3000/jwks", "https://[::1]:3000/jwks"),
            ("http://host?x=1", "http://host/?x=1"),
        ] {
            let u = JwksUrl::parse(given).unwrap_or_else(|e| panic!("{given}: {e}"));
            assert_eq!(u.as_str(), shown, "{given}");
        }
        for bad in [
            "ftp://app/jwks",
            "localhost:3000",
            "http://",
            "http://:80/",
            "http://host:0/",
            "http://host:x/",
            "http://host:65536/",
            "http://[::1/jwks",
            "http://u:p@host/",
            "http://host/a b",
            "http://host/a\r\nX: y",
        ] {
            assert!(JwksUrl::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn control_settings() {
        let c = cfg(&[]).unwrap();
        assert_eq!(
            (c.control_api_key, c.idempotency_ttl, c.jwt_max_lifetime_secs),
            (None, Duration::from_secs(300), DEFAULT_JWT_MAX_LIFETIME_SECS)
        );
        let c = cfg(&[
            ("CONTROL_API_KEY", "control-key-0123456789"),
            ("IDEMPOTENCY_TTL_SECS", "60"),
            ("JWT_MAX_LIFETIME_SECS", "900"),
        ])
        .unwrap();
        assert_eq!(c.control_api_key.as_ref().map(|k| k.expose().as_str()), Some("control-key-0123456789"));
        assert_eq!((c.idempotency_ttl, c.jwt_max_lifetime_secs), (Duration::from_secs(60), 900));
        assert!(!format!("{c:?}").contains("control-key-0123456789"), "Debug never prints the key");
    }

    #[test]
    fn drain_and_metrics_key() {
        let c = cfg(&[]).unwrap();
        assert_eq!((c.drain, c.metrics_api_key), (Duration::from_secs(10), None));
        let c = cfg(&[("DRAIN_SECS", "0"), ("METRICS_API_KEY", "metrics-key-0123456789")]).unwrap();
        assert_eq!(
            (c.drain, c.metrics_api_key.as_ref().map(|k| k.expose().as_str())),
            (Duration::ZERO, Some("metrics-key-0123456789"))
        );
        assert_eq!(cfg(&[("DRAIN_SECS", "3600")]).unwrap().drain, MAX_DRAIN);
        for (var, value) in [
            ("DRAIN_SECS", "3601"),
            ("DRAIN_SECS", "-1"),
            ("DRAIN_SECS", "soon"),
            ("DRAIN_SECS", "99999999999999999999"),
            ("METRICS_API_KEY", "short"),
            ("CONTROL_API_KEY", "short"),
            ("IDEMPOTENCY_TTL_SECS", "0"),
            ("IDEMPOTENCY_TTL_SECS", "604801"),
            ("JWT_MAX_LIFETIME_SECS", "59"),
            ("JWT_MAX_LIFETIME_SECS", "31622401"),
        ] {
            let e = cfg(&[(var, value)]).unwrap_err();
            assert_eq!(e.var, var, "{var}={value}");
        }
    }
}
