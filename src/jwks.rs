//! JWKS: the public keys the front end publishes (BetterAuth's `jwt()`
//! plugin serves them at `/api/auth/jwks`), kept fresh without ever blocking
//! the event loop.
//!
//! - [`KeySet`]: the usable keys of a JWK Set (RFC 7517 §5), by `kid`. Each
//!   key verifies only the algorithms its own type allows (and only its
//!   `alg`, when the JWK states one): what a token's header says never
//!   widens that. Symmetric (`oct`) keys are refused: HS256 is JWT_SECRET's.
//! - [`Keys`]: the loop's handle — the current set behind a lock held only
//!   to clone an `Arc`, and a non-blocking request for a refetch.
//! - One helper thread, `taskcast-jwks`, owns every fetch after start-up:
//!   every JWKS_REFRESH_SECS, and when a token names an unknown `kid` — at
//!   most once per [`REFETCH_MIN_INTERVAL`], so a stream of bogus kids cannot
//!   make us hammer the front end. A failed fetch keeps the last good keys.
//!   The thread holds no socket between fetches and ends once the [`Keys`]
//!   (so the server) is dropped.
//! - [`fetch`]: one blocking HTTP/1.1 GET over a plain `TcpStream`, bounded
//!   by timeouts. No TLS: the JWKS comes from the co-located app over local
//!   http, or from JWKS_FILE.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use log::{debug, info, warn};
use serde_json::Value;

use crate::config::{Config, ConfigError};

/// Refetches triggered by unknown `kid`s happen at most this often.
pub const REFETCH_MIN_INTERVAL: Duration = Duration::from_secs(30);
/// Per address tried when connecting to JWKS_URL.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A whole fetch (connect, send, read the answer) ends by then.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A JWKS is a few hundred bytes per key; anything this large is not one.
const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Response header lines we parse at most.
const MAX_HEADERS: usize = 64;
/// RSA moduli we accept, in bits: below 2048 is too weak to trust, and the
/// RSA implementation refuses keys above 4096.
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=4096;

// ---- the URL --------------------------------------------------------------

/// A parsed `http://host[:port][/path][?query]` (JWKS_URL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// As written (a name, an IPv4 address, or `[IPv6]`); resolved at every
    /// fetch, so a changed DNS answer is picked up.
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`: the request target.
    pub path: String,
}

impl HttpUrl {
    /// Parses JWKS_URL; the error says what is wrong (for a [`ConfigError`]).
    pub fn parse(s: &str) -> Result<HttpUrl, String> {
        let s = s.trim();
        let Some(rest) = strip_prefix_ignore_case(s, "http://") else {
            if strip_prefix_ignore_case(s, "https://").is_some() {
                return Err("https is not supported: serve the JWKS over plain http from the co-located app \
                            (e.g. http://localhost:3000/api/auth/jwks), or have the app write it to a file \
                            and set JWKS_FILE"
                    .into());
            }
            return Err(format!("{s:?} is not an http:// URL (like http://localhost:3000/api/auth/jwks)"));
        };
        let rest = rest.split('#').next().unwrap_or("");
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('?') => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        if authority.contains('@') {
            return Err("credentials in the URL are not supported".into());
        }
        // RFC 9112 §3.2: the request target is visible ASCII; refusing
        // anything else also keeps CR/LF out of the request line.
        if !path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("path {path:?} must be visible ASCII (percent-encode spaces and the like)"));
        }
        let (host, port) = if authority.starts_with('[') {
            let end = authority.find(']').ok_or_else(|| format!("{authority:?}: unclosed [IPv6] host"))?;
            (&authority[..=end], authority[end + 1..].strip_prefix(':'))
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() || host.len() > 253 {
            return Err(format!("{s:?} names no host"));
        }
        let port = match port {
            None => 80,
            Some(p) => p.parse().ok().filter(|p| *p != 0).ok_or_else(|| format!("{p:?} is not a port (1-65535)"))?,
        };
        Ok(HttpUrl { host: host.to_ascii_lowercase(), port, path })
    }

    /// The `Host` header value (RFC 9110 §7.2: the port only when not 80).
    fn authority(&self) -> String {
        match self.port {
            80 => self.host.clone(),
            p => format!("{}:{p}", self.host),
        }
    }

    fn socket_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        Ok((host, self.port).to_socket_addrs()?.collect())
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.path)
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

// ---- the key set ------------------------------------------------------------

/// One verification key from a JWKS.
#[derive(Clone)]
pub struct Key {
    /// The only algorithms this key verifies: its type's (one curve's, for
    /// EC), narrowed to the JWK's own `alg` when it states one.
    pub algorithms: Vec<Algorithm>,
    pub key: DecodingKey,
}

/// The usable keys of one or more JWKS documents, by `kid`.
#[derive(Clone, Default)]
pub struct KeySet {
    /// Sorted, so logs list kids in a stable order.
    keys: BTreeMap<String, Key>,
}

impl KeySet {
    /// Parses a JWKS document. Keys taskcast cannot use are left out, each
    /// with the reason (for a warning); only a document that is not a JWKS
    /// at all is an error.
    pub fn parse(json: &[u8]) -> Result<(KeySet, Vec<String>), String> {
        let doc: Value = serde_json::from_slice(json).map_err(|e| format!("not JSON ({e})"))?;
        let keys = doc.get("keys").and_then(Value::as_array).ok_or("not a JWKS (no \"keys\" array)")?;
        let mut set = KeySet::default();
        let mut skipped = Vec::new();
        for (i, jwk) in keys.iter().enumerate() {
            let name = match jwk.get("kid").and_then(Value::as_str) {
                Some(kid) => format!("key {kid:?}"),
                None => format!("key #{i}"),
            };
            match parse_key(jwk) {
                Ok((kid, _)) if set.keys.contains_key(&kid) => {
                    skipped.push(format!("{name}: duplicate kid (the first one is kept)"))
                }
                Ok((kid, key)) => {
                    set.keys.insert(kid, key);
                }
                Err(why) => skipped.push(format!("{name}: {why}")),
            }
        }
        Ok((set, skipped))
    }

    /// The key a token's `kid` names.
    pub fn get(&self, kid: &str) -> Option<&Key> {
        self.keys.get(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// `self`'s keys plus `other`'s; on a shared kid, `self`'s copy wins.
    fn merged(&self, other: &KeySet) -> KeySet {
        let mut keys = other.keys.clone();
        keys.extend(self.keys.iter().map(|(k, v)| (k.clone(), v.clone())));
        KeySet { keys }
    }
}

impl fmt::Display for KeySet {
    /// `2 keys (kid-a, kid-b)`: for logs (kids are public).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<&str> = self.kids().collect();
        let s = if kids.len() == 1 { "" } else { "s" };
        write!(f, "{} key{s} ({})", kids.len(), kids.join(", "))
    }
}

/// One JWK to a usable key, or why not.
fn parse_key(v: &Value) -> Result<(String, Key), String> {
    let kid =
        v.get("kid").and_then(Value::as_str).filter(|k| !k.is_empty()).ok_or("no kid, so no token can name it")?;
    // RFC 7517 §4.2/4.3: a key meant for encryption is not a signing key.
    if let Some(u) = v.get("use").filter(|u| *u != "sig") {
        return Err(format!("\"use\" is {u}, not \"sig\""));
    }
    if let Some(ops) = v.get("key_ops").and_then(Value::as_array)
        && !ops.iter().any(|op| op == "verify")
    {
        return Err("\"key_ops\" does not include \"verify\"".into());
    }
    let jwk: Jwk = serde_json::from_value(v.clone()).map_err(|e| format!("not a valid JWK ({e})"))?;
    let (family, len_ok): (&[Algorithm], fn(&DecodingKey) -> bool) = match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            (&[Algorithm::EdDSA], |k| k.try_get_as_bytes().is_ok_and(|b| b.len() == 32))
        }
        // SEC1 uncompressed points: 0x04 || x || y.
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            (&[Algorithm::ES256], |k| k.try_get_as_bytes().is_ok_and(|b| b.len() == 65))
        }
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => {
            (&[Algorithm::ES384], |k| k.try_get_as_bytes().is_ok_and(|b| b.len() == 97))
        }
        AlgorithmParameters::RSA(_) => (
            &[
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            |k| match k.kind() {
                DecodingKeyKind::RsaModulusExponent { n, e } => {
                    RSA_BITS.contains(&bit_len(n)) && (1..=8).contains(&e.len())
                }
                DecodingKeyKind::SecretOrDer(_) => false,
            },
        ),
        AlgorithmParameters::OctetKey(_) => {
            return Err("a symmetric (oct) key: HS256 is verified with JWT_SECRET, never with a published key".into());
        }
        _ => {
            let field = |f: &str| v.get(f).and_then(Value::as_str).unwrap_or("-").to_string();
            return Err(format!(
                "unsupported key type (kty {}, crv {}): use Ed25519, P-256, P-384 or RSA",
                field("kty"),
                field("crv")
            ));
        }
    };
    let algorithms = match jwk.common.key_algorithm {
        None => family.to_vec(),
        Some(stated) => match Algorithm::try_from(stated) {
            Ok(alg) if family.contains(&alg) => vec![alg],
            Ok(alg) => return Err(format!("states alg {alg:?}, which does not fit its key type")),
            Err(_) => return Err(format!("states alg {stated}, which taskcast does not verify")),
        },
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable ({e})"))?;
    if !len_ok(&key) {
        return Err("key material has the wrong size for its type".into());
    }
    // Build the verifier once now, so a point off the curve is reported here
    // and not on the first token (the signature is empty: only the key's
    // validity matters).
    if let Err(e) = jsonwebtoken::crypto::verify("", b"", &key, algorithms[0]) {
        return Err(format!("unusable ({e})"));
    }
    Ok((kid.to_string(), Key { algorithms, key }))
}

/// Bits in a big-endian unsigned integer.
fn bit_len(be: &[u8]) -> usize {
    match be.iter().position(|b| *b != 0) {
        Some(i) => (be.len() - i) * 8 - be[i].leading_zeros() as usize,
        None => 0,
    }
}

// ---- sources and the fetch thread -------------------------------------------

/// Where keys come from, and the last good set from each: a failed fetch or
/// read keeps serving what that source gave last.
struct Sources {
    url: Option<HttpUrl>,
    file: Option<PathBuf>,
    from_url: KeySet,
    from_file: KeySet,
}

impl Sources {
    /// Fetches JWKS_URL; on success its keys replace the URL's last ones.
    fn load_url(&mut self) -> Result<(), String> {
        let Some(url) = &self.url else { return Ok(()) };
        let body = fetch(url)?;
        self.from_url = usable(&body, &url.to_string())?;
        Ok(())
    }

    /// Reads JWKS_FILE; on success its keys replace the file's last ones.
    fn load_file(&mut self) -> Result<(), String> {
        let Some(path) = &self.file else { return Ok(()) };
        let body = std::fs::read(path).map_err(|e| format!("cannot read it ({e})"))?;
        self.from_file = usable(&body, &path.display().to_string())?;
        Ok(())
    }

    /// Both sources' keys (the URL's copy wins a shared kid: it is the live one).
    fn current(&self) -> KeySet {
        self.from_url.merged(&self.from_file)
    }

    /// Reloads both sources, warning about (and surviving) failures.
    fn refresh(&mut self) -> KeySet {
        let mut ok = true;
        if let Err(e) = self.load_file() {
            warn!("JWKS_FILE {}: {e}; keeping its last good keys", self.file.as_ref().unwrap().display());
            ok = false;
        }
        if let Err(e) = self.load_url() {
            warn!("JWKS_URL {}: {e}; keeping its last good keys", self.url.as_ref().unwrap());
            ok = false;
        }
        let set = self.current();
        match ok {
            true => info!("JWKS refreshed from {self}: {set}"),
            false => info!("JWKS: still serving {set}"),
        }
        set
    }
}

impl fmt::Display for Sources {
    /// `http://app/api/auth/jwks and /path/jwks.json`: for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.url, &self.file) {
            (Some(url), Some(file)) => write!(f, "{url} and {}", file.display()),
            (Some(url), None) => write!(f, "{url}"),
            (None, Some(file)) => write!(f, "{}", file.display()),
            (None, None) => f.write_str("nowhere"),
        }
    }
}

/// Parses a JWKS body, warns about the keys left out, and insists on at
/// least one usable key (an empty answer is treated as a failure, so a
/// broken front end cannot lock every client out).
fn usable(body: &[u8], source: &str) -> Result<KeySet, String> {
    let (set, skipped) = KeySet::parse(body)?;
    for why in &skipped {
        warn!("JWKS {source}: {why}: left out");
    }
    if set.is_empty() {
        return Err("holds no usable signing key".into());
    }
    Ok(set)
}

/// The loop's handle on the keys.
pub struct Keys {
    /// The set every verification reads; the fetch thread replaces the inner
    /// `Arc` whole, so a reader holds the lock only to clone it.
    current: Arc<RwLock<Arc<KeySet>>>,
    /// Refetch requests to the fetch thread. Capacity 1 with `try_send`: a
    /// request already pending covers a new one, and the loop never waits.
    /// Dropping it (with the server) ends the thread.
    refetch: SyncSender<()>,
}

impl Keys {
    /// Loads the keys once — blocking, at start-up, before the loop runs —
    /// then starts the fetch thread. `None` when no JWKS is configured.
    ///
    /// Fails, naming the variable, when JWKS_FILE is set but unreadable or
    /// holds no usable key, or when JWKS_URL answers nothing usable and no
    /// key is available from JWKS_FILE.
    pub fn start(config: &Config) -> Result<Option<Keys>, ConfigError> {
        if config.jwks_url.is_none() && config.jwks_file.is_none() {
            return Ok(None);
        }
        let mut sources = Sources {
            url: config.jwks_url.clone(),
            file: config.jwks_file.clone(),
            from_url: KeySet::default(),
            from_file: KeySet::default(),
        };
        if let Some(path) = &config.jwks_file {
            sources
                .load_file()
                .map_err(|e| ConfigError { var: "JWKS_FILE", message: format!("{}: {e}", path.display()) })?;
        }
        if let Some(url) = &config.jwks_url
            && let Err(e) = sources.load_url()
        {
            if sources.from_file.is_empty() {
                return Err(ConfigError {
                    var: "JWKS_URL",
                    message: format!("{url}: {e}; no key is available to start with (is the app running?)"),
                });
            }
            warn!("JWKS_URL {url}: {e}; starting with the keys from JWKS_FILE only");
        }
        let set = sources.current();
        info!("JWKS loaded from {sources}: {set}");
        let current = Arc::new(RwLock::new(Arc::new(set)));
        let (refetch, requests) = mpsc::sync_channel(1);
        let shared = current.clone();
        let interval = config.jwks_refresh;
        std::thread::Builder::new()
            .name("taskcast-jwks".into())
            .spawn(move || run(sources, shared, requests, interval))
            .map_err(|e| ConfigError {
                var: if config.jwks_url.is_some() { "JWKS_URL" } else { "JWKS_FILE" },
                message: format!("cannot start the JWKS thread: {e}"),
            })?;
        Ok(Some(Keys { current, refetch }))
    }

    /// The current key set (a brief read lock to clone an `Arc`).
    pub fn current(&self) -> Arc<KeySet> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Asks the fetch thread for a refetch; never blocks. The thread decides
    /// whether the rate limit allows it.
    pub fn request_refetch(&self) {
        match self.refetch.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) => {}
            Err(TrySendError::Disconnected(())) => debug!("JWKS thread is gone; refetch not possible"),
        }
    }
}

/// Spaces out refetches asked for by unknown kids.
#[derive(Default)]
struct RefetchLimit {
    last: Option<Instant>,
}

impl RefetchLimit {
    /// True (and the clock restarts) if a refetch may happen at `now`.
    fn allow(&mut self, now: Instant) -> bool {
        if self.last.is_some_and(|t| now.saturating_duration_since(t) < REFETCH_MIN_INTERVAL) {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// The fetch thread: refresh every `interval`, and on (rate-limited)
/// request; ends when the [`Keys`] is dropped.
fn run(mut sources: Sources, shared: Arc<RwLock<Arc<KeySet>>>, requests: Receiver<()>, interval: Duration) {
    let mut next = Instant::now() + interval;
    let mut limit = RefetchLimit::default();
    loop {
        match requests.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(()) if limit.allow(Instant::now()) => info!("a token named an unknown kid: refetching the JWKS"),
            Ok(()) => {
                debug!("unknown kid: refetch skipped (at most one per {}s)", REFETCH_MIN_INTERVAL.as_secs());
                continue;
            }
            Err(RecvTimeoutError::Timeout) => next = Instant::now() + interval,
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let set = Arc::new(sources.refresh());
        *shared.write().unwrap_or_else(|e| e.into_inner()) = set;
    }
}

// ---- HTTP -------------------------------------------------------------------

/// GETs `url` and returns the body of its 200 answer. Blocking, bounded by
/// `FETCH_TIMEOUT`: for start-up and the fetch thread, never the loop.
pub fn fetch(url: &HttpUrl) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + FETCH_TIMEOUT;
    let addrs = url.socket_addrs().map_err(|e| format!("cannot resolve {} ({e})", url.host))?;
    let mut last_err = format!("{} resolves to no address", url.host);
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = format!("cannot connect to {addr} ({e})"),
        }
    }
    let mut stream = stream.ok_or(last_err)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nUser-Agent: taskcast/{}\r\nConnection: close\r\n\r\n",
        url.path,
        url.authority(),
        env!("CARGO_PKG_VERSION")
    );
    stream.set_write_timeout(Some(CONNECT_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.write_all(request.as_bytes()).map_err(|e| format!("cannot send the request ({e})"))?;

    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(body) = parse_response(&buf, false)? {
            return Ok(body);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no complete answer within {}s", FETCH_TIMEOUT.as_secs()));
        }
        stream.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match stream.read(&mut chunk) {
            Ok(0) => {
                return parse_response(&buf, true)?.ok_or_else(|| "connection closed mid-answer".to_string());
            }
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_RESPONSE_BYTES {
                    return Err(format!("answer larger than {MAX_RESPONSE_BYTES} bytes"));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(format!("no complete answer within {}s", FETCH_TIMEOUT.as_secs()));
            }
            Err(e) => return Err(format!("read failed ({e})")),
        }
    }
}

/// The body of a complete 200 response in `buf`; `None` if more bytes are
/// needed. `eof`: the server has closed, so a body without framing ends here.
fn parse_response(buf: &[u8], eof: bool) -> Result<Option<Vec<u8>>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if eof => return Err("connection closed inside the response head".into()),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("not an HTTP response ({e})")),
    };
    let status = resp.code.unwrap_or(0);
    // RFC 9110 §15.2: a 1xx is interim; the real answer follows it.
    if (100..200).contains(&status) {
        return parse_response(&buf[head_len..], eof);
    }
    let header = |name: &'static str| {
        resp.headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| String::from_utf8_lossy(h.value))
    };
    if status != 200 {
        let reason = resp.reason.unwrap_or("");
        return Err(match header("location").next() {
            Some(to) => format!("answered {status} {reason} to {to} (redirects are not followed: set the final URL)"),
            None => format!("answered {status} {reason}"),
        });
    }
    let body = &buf[head_len..];
    // RFC 9112 §6.3: Transfer-Encoding wins over Content-Length; chunked
    // last means chunked framing, any other coding means "until close".
    if let Some(te) = header("transfer-encoding").next_back() {
        if !te.rsplit(',').next().is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked")) {
            return Err(format!("unsupported Transfer-Encoding {te:?}"));
        }
        return match decode_chunked(body)? {
            Some(b) => Ok(Some(b)),
            None if eof => Err("connection closed inside a chunked body".into()),
            None => Ok(None),
        };
    }
    let mut lengths = header("content-length");
    match lengths.next() {
        Some(len) => {
            let n: usize = len.trim().parse().map_err(|_| format!("bad Content-Length {len:?}"))?;
            if lengths.any(|other| other.trim() != len.trim()) {
                return Err("conflicting Content-Length headers".into());
            }
            if n > MAX_RESPONSE_BYTES {
                return Err(format!("answer larger than {MAX_RESPONSE_BYTES} bytes"));
            }
            match body.len() >= n {
                true => Ok(Some(body[..n].to_vec())),
                false if eof => Err(format!("connection closed after {} of {n} body bytes", body.len())),
                false => Ok(None),
            }
        }
        // No framing: the body runs to the close (we sent Connection: close).
        None => Ok(eof.then(|| body.to_vec())),
    }
}

/// Decodes a chunked body (RFC 9112 §7.1); `None` until it is complete.
fn decode_chunked(mut data: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let (used, size) = match httparse::parse_chunk_size(data) {
            Ok(httparse::Status::Complete(c)) => c,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err("bad chunk size line".into()),
        };
        data = &data[used..];
        if size == 0 {
            // Optional trailer fields, then an empty line.
            let done = data.starts_with(b"\r\n") || data.windows(4).any(|w| w == b"\r\n\r\n");
            return Ok(done.then_some(out));
        }
        let size = usize::try_from(size)
            .ok()
            .filter(|s| out.len() + s <= MAX_RESPONSE_BYTES)
            .ok_or_else(|| format!("answer larger than {MAX_RESPONSE_BYTES} bytes"))?;
        if data.len() < size + 2 {
            return Ok(None);
        }
        if &data[size..size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ed25519 public key (test-only; the private half lives in tests/jwks/keys.rs).
    const ED_X: &str = "NJ4Kp5tr9HV5MfaiSVwbxhTuSPiOtA5QDUOOcwQimSY";
    const EC_X: &str = "R8Q-zuw-gotg-BC-svdbyiyW6layifEFopTllWGyWv4";
    const EC_Y: &str = "8W5FkL3HL7PVbH3lHfYBzYnaD9c1n8ChjfDTtn5IJTw";
    const RSA_N: &str = "rYpkVM7D_oouLp8h4E9cqUBMBFzF8OOEwo-HsMponDZXF69RH7FBOCZ4URoEo_sN3phi3x03qYvgaUoyxIcOcDWH_flTcv-x-ZPfeFx-Mv1EH12cA5NHQRflLKLzBQHxzConk0clvIfj2EJ5YevAyND64MZQ2BK1qocsptGcHBTQAxL0dQEftbA3L6d7HK0K7ZPtSCHhwngrWRql8oWtNRjQIhedoMt0YqXdnxGoKuP_AlyxZPqp3lMW4gQ-4IryKgLdUf_HgPLJW-TYm4MIEHeeK9jfYGLBtMVnyieb9BGcJqQss2seknkQqEhPHelh1WUch75kzLSwhNL-MCzBPw";

    fn one(jwk: serde_json::Value) -> Result<Vec<Algorithm>, String> {
        let doc = serde_json::json!({ "keys": [jwk] });
        let (set, skipped) = KeySet::parse(doc.to_string().as_bytes()).unwrap();
        match set.get("k") {
            Some(k) => Ok(k.algorithms.clone()),
            None => Err(skipped.join("; ")),
        }
    }

    #[test]
    fn key_types_and_their_algorithms() {
        use Algorithm::*;
        use serde_json::json;
        let rsa_all = vec![RS256, RS384, RS512, PS256, PS384, PS512];
        let table: Vec<(serde_json::Value, Result<Vec<Algorithm>, &str>)> = vec![
            // BetterAuth's default: OKP Ed25519, with or without "alg".
            (json!({"kid":"k","kty":"OKP","crv":"Ed25519","x":ED_X}), Ok(vec![EdDSA])),
            (json!({"kid":"k","kty":"OKP","crv":"Ed25519","x":ED_X,"alg":"EdDSA","use":"sig"}), Ok(vec![EdDSA])),
            (json!({"kid":"k","kty":"EC","crv":"P-256","x":EC_X,"y":EC_Y}), Ok(vec![ES256])),
            (json!({"kid":"k","kty":"EC","crv":"P-256","x":EC_X,"y":EC_Y,"alg":"ES256"}), Ok(vec![ES256])),
            (json!({"kid":"k","kty":"RSA","n":RSA_N,"e":"AQAB"}), Ok(rsa_all)),
            (json!({"kid":"k","kty":"RSA","n":RSA_N,"e":"AQAB","alg":"RS256"}), Ok(vec![RS256])),
            (json!({"kid":"k","kty":"RSA","n":RSA_N,"e":"AQAB","alg":"PS256"}), Ok(vec![PS256])),
            // A stated alg must fit the key type.
            (json!({"kid":"k","kty":"OKP","crv":"Ed25519","x":ED_X,"alg":"HS256"}), Err("does not fit")),
            (json!({"kid":"k","kty":"RSA","n":RSA_N,"e":"AQAB","alg":"ES256"}), Err("does not fit")),
            (json!({"kid":"k","kty":"RSA","n":RSA_N,"e":"AQAB","alg":"RSA-OAEP"}), Err("does not verify")),
            (json!({"kid":"k","kty":"EC","crv":"P-256","x":EC_X,"y":EC_Y,"alg":"ES384"}), Err("does not fit")),
            // Symmetric keys never come from a JWKS.
            (json!({"kid":"k","kty":"oct","k":"c2VjcmV0"}), Err("symmetric")),
            (json!({"kid":"k","kty":"oct","k":"c2VjcmV0","alg":"HS256"}), Err("symmetric")),
            // Unsupported curves and types.
            (json!({"kid":"k","kty":"OKP","crv":"Ed448","x":ED_X}), Err("unsupported key type (kty OKP, crv Ed448)")),
            (json!({"kid":"k","kty":"EC","crv":"P-521","x":EC_X,"y":EC_Y}), Err("unsupported")),
            (json!({"kid":"k","kty":"OKP","crv":"X25519","x":ED_X}), Err("unsupported")),
            // Not for signatures.
            (json!({"kid":"k","kty":"RSA","n":RSA_N,"e":"AQAB","use":"enc"}), Err("\"use\" is \"enc\"")),
            (json!({"kid":"k","kty":"RSA","n":RSA_N,"e":"AQAB","key_ops":["encrypt"]}), Err("key_ops")),
            // Broken key material.
            (json!({"kid":"k","kty":"OKP","crv":"Ed25519","x":"AAAA"}), Err("wrong size")),
            (json!({"kid":"k","kty":"EC","crv":"P-256","x":EC_X,"y":EC_X}), Err("unusable")),
            (json!({"kid":"k","kty":"RSA","n":"AQAB","e":"AQAB"}), Err("wrong size")),
            (json!({"kid":"k","kty":"OKP","crv":"Ed25519","x":"!!"}), Err("unusable")),
        ];
        for (i, (jwk, want)) in table.into_iter().enumerate() {
            match (one(jwk), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "case {i}"),
                (Err(why), Err(want)) => assert!(why.contains(want), "case {i}: {why:?} should say {want:?}"),
                (got, want) => panic!("case {i}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn set_keeps_usable_keys_and_explains_the_rest() {
        let doc = format!(
            r#"{{"keys":[
                {{"kid":"a","kty":"OKP","crv":"Ed25519","x":"{ED_X}"}},
                {{"kty":"OKP","crv":"Ed25519","x":"{ED_X}"}},
                {{"kid":"a","kty":"EC","crv":"P-256","x":"{EC_X}","y":"{EC_Y}"}},
                {{"kid":"b","kty":"oct","k":"c2VjcmV0"}},
                {{"kid":"c","kty":"EC","crv":"P-256","x":"{EC_X}","y":"{EC_Y}"}}
            ]}}"#
        );
        let (set, skipped) = KeySet::parse(doc.as_bytes()).unwrap();
        assert_eq!(set.kids().collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(set.get("a").unwrap().algorithms, [Algorithm::EdDSA], "first of a duplicate kid wins");
        assert_eq!(set.to_string(), "2 keys (a, c)");
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(skipped[0].starts_with("key #1: no kid"), "{skipped:?}");
        assert!(skipped[1].contains("duplicate kid"), "{skipped:?}");
        assert!(skipped[2].starts_with("key \"b\""), "{skipped:?}");

        for bad in [&b"not json"[..], b"{}", br#"{"keys":{}}"#, b"[]"] {
            assert!(KeySet::parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(usable(br#"{"keys":[]}"#, "test").is_err(), "an empty set is not a usable answer");
    }

    #[test]
    fn merged_prefers_the_first_set() {
        let parse = |json: String| KeySet::parse(json.as_bytes()).unwrap().0;
        let url = parse(format!(r#"{{"keys":[{{"kid":"a","kty":"OKP","crv":"Ed25519","x":"{ED_X}"}}]}}"#));
        let file = parse(format!(
            r#"{{"keys":[{{"kid":"a","kty":"EC","crv":"P-256","x":"{EC_X}","y":"{EC_Y}"}},
                        {{"kid":"b","kty":"EC","crv":"P-256","x":"{EC_X}","y":"{EC_Y}"}}]}}"#
        ));
        let both = url.merged(&file);
        assert_eq!(both.to_string(), "2 keys (a, b)");
        assert_eq!(both.get("a").unwrap().algorithms, [Algorithm::EdDSA]);
        assert_eq!(both.get("b").unwrap().algorithms, [Algorithm::ES256]);
    }

    #[test]
    fn urls() {
        let ok = |s: &str, host: &str, port: u16, path: &str, shown: &str| {
            let u = HttpUrl::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!((u.host.as_str(), u.port, u.path.as_str()), (host, port, path), "{s}");
            assert_eq!(u.to_string(), shown, "{s}");
        };
        ok(
            "http://localhost:3000/api/auth/jwks",
            "localhost",
            3000,
            "/api/auth/jwks",
            "http://localhost:3000/api/auth/jwks",
        );
        ok("HTTP://App.Local/jwks?v=1#frag", "app.local", 80, "/jwks?v=1", "http://app.local/jwks?v=1");
        ok("http://127.0.0.1:8000", "127.0.0.1", 8000, "/", "http://127.0.0.1:8000/");
        ok("http://[::1]:3000/jwks", "[::1]", 3000, "/jwks", "http://[::1]:3000/jwks");
        ok("http://host?x=1", "host", 80, "/?x=1", "http://host/?x=1");
        for bad in [
            "https://app/jwks",
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
            assert!(HttpUrl::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(HttpUrl::parse("http://[::1]:3000/").unwrap().socket_addrs().unwrap()[0].is_ipv6());
    }

    /// Response framing: (raw bytes, closed by the server?, expected).
    #[test]
    fn responses() {
        type Want = Result<Option<&'static str>, &'static str>;
        let table: &[(&str, bool, Want)] = &[
            ("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", false, Ok(Some("{}"))),
            ("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n{}", false, Ok(None)),
            ("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n{}", true, Err("after 2 of 4")),
            ("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", false, Err("conflicting")),
            ("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}", false, Ok(Some("{}"))),
            ("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", false, Err("bad Content-Length")),
            ("HTTP/1.1 200 OK\r\nContent-Len", false, Ok(None)),
            ("HTTP/1.1 200 OK\r\nContent-Len", true, Err("inside the response head")),
            // No framing: until the close.
            ("HTTP/1.1 200 OK\r\n\r\n{\"keys\"", false, Ok(None)),
            ("HTTP/1.1 200 OK\r\n\r\n{\"keys\":[]}", true, Ok(Some("{\"keys\":[]}"))),
            // Chunked, as Next.js may answer; it wins over Content-Length.
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", false, Ok(Some("{}"))),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;ext=1\r\n{\r\n1\r\n}\r\n0\r\n\r\n",
                false,
                Ok(Some("{}")),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-T: 1\r\n\r\n",
                false,
                Ok(Some("{}")),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
                false,
                Ok(Some("{}")),
            ),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n", false, Ok(None)),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{", false, Ok(None)),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{", true, Err("inside a chunked body")),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", false, Err("chunk size")),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}xx0\r\n\r\n", false, Err("CRLF")),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false, Err("Transfer-Encoding")),
            // Not a 200.
            ("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", false, Err("answered 404 Not Found")),
            ("HTTP/1.1 308 Permanent Redirect\r\nLocation: /x\r\n\r\n", false, Err("to /x (redirects")),
            ("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", false, Ok(Some("{}"))),
            ("SSH-2.0-OpenSSH\r\n", false, Err("not an HTTP response")),
        ];
        for (i, (raw, eof, want)) in table.iter().enumerate() {
            let got = parse_response(raw.as_bytes(), *eof);
            match (got, want) {
                (Ok(got), Ok(want)) => {
                    assert_eq!(got.as_deref(), want.map(str::as_bytes), "case {i}: {raw:?}")
                }
                (Err(e), Err(want)) => assert!(e.contains(want), "case {i}: {e:?} should say {want:?}"),
                (got, want) => panic!("case {i} {raw:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn refetch_limit() {
        let t0 = Instant::now();
        let mut limit = RefetchLimit::default();
        assert!(limit.allow(t0), "the first unknown kid refetches at once");
        assert!(!limit.allow(t0 + Duration::from_secs(1)));
        assert!(!limit.allow(t0 + REFETCH_MIN_INTERVAL - Duration::from_millis(1)));
        assert!(limit.allow(t0 + REFETCH_MIN_INTERVAL));
        assert!(!limit.allow(t0 + REFETCH_MIN_INTERVAL + Duration::from_secs(29)));
    }

    #[test]
    fn bit_lengths() {
        assert_eq!(bit_len(&[]), 0);
        assert_eq!(bit_len(&[0, 0]), 0);
        assert_eq!(bit_len(&[1]), 1);
        assert_eq!(bit_len(&[0, 0x80, 0]), 16);
        assert_eq!(bit_len(&[0x01, 0, 1]), 17);
    }
}
