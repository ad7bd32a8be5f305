//! Getting JWKS documents: one blocking GET per fetch with `ureq` (rustls
//! for https), and the [`Sources`] — JWKS_URL and/or JWKS_FILE — whose keys
//! are merged into the one set tokens are checked against.
//!
//! Every fetch is bounded: [`CONNECT_TIMEOUT`] per address, [`FETCH_TIMEOUT`]
//! for the whole exchange (redirects included), [`MAX_RESPONSE_BYTES`] of
//! body, ureq's 64 KiB of response head. Interim `1xx` answers, chunked
//! framing and the rest of HTTP/1.1 are ureq's (its `ureq-proto` parser is
//! iterative and checks chunk sizes), so a hostile endpoint can make a fetch
//! fail, never hang the thread or exhaust its stack. Called from start-up
//! and the fetch thread only, never from the event loop.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use ureq::Agent;
use ureq::http::{StatusCode, Uri};
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

use super::keyset::KeySet;
use crate::config::{ConfigError, JwksUrl};

/// Per address tried when connecting to JWKS_URL.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A whole fetch (resolve, connect, TLS, request, every redirect, the
/// body) ends by then.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A JWKS is a few hundred bytes per key; anything this large is not one.
pub const MAX_RESPONSE_BYTES: u64 = 1 << 20;
/// Redirects followed at most, each to the same scheme only: an https
/// JWKS_URL never ends up fetched over plain http (and an http one is not
/// silently moved to another scheme either — set the final URL instead).
const MAX_REDIRECTS: usize = 3;

/// A configured JWKS_URL and the HTTP agent that fetches it.
pub struct Fetcher {
    url: JwksUrl,
    agent: Agent,
}

impl Fetcher {
    /// The agent for `url`. With an https URL and `ca_file` (SSL_CERT_FILE)
    /// set, the server's certificate must chain to one of that file's
    /// certificates, and only to those; otherwise to the built-in Mozilla
    /// roots (`webpki-roots`). Fails, naming SSL_CERT_FILE, when that file
    /// cannot be read or holds no certificate.
    pub fn new(url: &JwksUrl, ca_file: Option<&Path>) -> Result<Fetcher, ConfigError> {
        let roots = match ca_file {
            Some(path) if url.is_https() => RootCerts::from(load_roots(path)?),
            _ => RootCerts::WebPki,
        };
        let agent = Agent::config_builder()
            .timeout_global(Some(FETCH_TIMEOUT))
            .timeout_connect(Some(CONNECT_TIMEOUT))
            // Redirects are followed by hand, same scheme only (`get`).
            .max_redirects(0)
            // Non-200 answers are described by `get` (with the Location).
            .http_status_as_error(false)
            // The JWKS comes straight from the app: proxy variables set for
            // other programs (HTTP_PROXY, ...) are not picked up.
            .proxy(None)
            // No socket is kept between fetches (minutes apart).
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .user_agent(concat!("taskcast/", env!("CARGO_PKG_VERSION")))
            .accept("application/json")
            .tls_config(TlsConfig::builder().root_certs(roots).build())
            .build()
            .new_agent();
        Ok(Fetcher { url: url.clone(), agent })
    }

    pub fn url(&self) -> &JwksUrl {
        &self.url
    }

    /// GETs the JWKS and returns the body of its 200 answer; the error says
    /// what went wrong, for a log line or a [`ConfigError`].
    pub fn get(&self) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + FETCH_TIMEOUT;
        let mut uri: Uri = self.url.as_str().parse().map_err(|e| format!("bad URL ({e})"))?;
        for _ in 0..=MAX_REDIRECTS {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no answer within {}s", FETCH_TIMEOUT.as_secs()));
            }
            let mut resp = self
                .agent
                .get(&uri)
                .config()
                .timeout_global(Some(left))
                .build()
                .call()
                .map_err(|e| self.describe(e))?;
            let status = resp.status();
            if status == StatusCode::OK {
                return resp
                    .body_mut()
                    .with_config()
                    .limit(MAX_RESPONSE_BYTES)
                    .read_to_vec()
                    .map_err(|e| self.describe(e));
            }
            let location = resp.headers().get("location").and_then(|l| l.to_str().ok());
            match location {
                Some(to) if status.is_redirection() => {
                    uri = same_scheme_target(&uri, to)?;
                    debug!("JWKS_URL {}: {status} to {uri}, following", self.url);
                }
                _ => return Err(format!("answered {status}")),
            }
        }
        Err(format!("more than {MAX_REDIRECTS} redirects (set JWKS_URL to the final URL)"))
    }

    /// A ureq error as a log line, with a hint where one helps.
    fn describe(&self, e: ureq::Error) -> String {
        match e {
            ureq::Error::BodyExceedsLimit(_) => format!("answer larger than {MAX_RESPONSE_BYTES} bytes"),
            ureq::Error::Timeout(_) => format!("no complete answer within {}s ({e})", FETCH_TIMEOUT.as_secs()),
            e if self.url.is_https() && e.to_string().contains("certificate") => format!(
                "{e} (is the app's certificate from a private CA? set SSL_CERT_FILE to a PEM file holding that CA)"
            ),
            e => e.to_string(),
        }
    }
}

/// Where a redirect from `from` to `location` leads, if it keeps the scheme.
fn same_scheme_target(from: &Uri, location: &str) -> Result<Uri, String> {
    let not_followed = |why: &str| format!("redirects to {location:?}: {why}, not followed (set the final URL)");
    let to: Uri = location.parse().map_err(|_| not_followed("not a URL"))?;
    match to.scheme_str() {
        Some(s) if from.scheme_str().is_some_and(|f| f.eq_ignore_ascii_case(s)) && to.authority().is_some() => Ok(to),
        Some(_) => Err(not_followed("another scheme")),
        // An absolute path (RFC 9110 §10.2.2: relative to the request's URI).
        None if location.starts_with('/') && !location.starts_with("//") => {
            let mut parts = from.clone().into_parts();
            parts.path_and_query = to.path_and_query().cloned();
            Uri::from_parts(parts).map_err(|_| not_followed("not a URL"))
        }
        None => Err(not_followed("not an absolute URL or path")),
    }
}

/// The certificates of the PEM bundle at `path` (SSL_CERT_FILE).
fn load_roots(path: &Path) -> Result<Vec<Certificate<'static>>, ConfigError> {
    let fail =
        |message: String| ConfigError { var: "SSL_CERT_FILE", message: format!("{}: {message}", path.display()) };
    let pem = std::fs::read(path).map_err(|e| fail(format!("cannot read it ({e})")))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(cert)) => certs.push(cert),
            Ok(_) => {}
            Err(e) => return Err(fail(format!("not a PEM file ({e})"))),
        }
    }
    if certs.is_empty() {
        return Err(fail("holds no certificate (-----BEGIN CERTIFICATE-----)".into()));
    }
    Ok(certs)
}

/// Parses a JWKS body, warns about the keys left out, and insists on at
/// least one usable key (an empty answer is treated as a failure, so a
/// broken front end cannot lock every client out).
pub fn usable(body: &[u8], source: &str) -> Result<KeySet, String> {
    let (set, skipped) = KeySet::parse(body)?;
    for why in &skipped {
        warn!("JWKS {source}: {why}: left out");
    }
    if set.is_empty() {
        return Err("holds no usable signing key".into());
    }
    Ok(set)
}

/// Where keys come from, and the last good set from each: a failed fetch or
/// read keeps serving what that source gave last.
pub struct Sources {
    url: Option<Fetcher>,
    file: Option<PathBuf>,
    from_url: KeySet,
    from_file: KeySet,
}

impl Sources {
    pub fn new(url: Option<Fetcher>, file: Option<PathBuf>) -> Sources {
        Sources { url, file, from_url: KeySet::default(), from_file: KeySet::default() }
    }

    /// Fetches JWKS_URL; on success its keys replace the URL's last ones.
    pub fn load_url(&mut self) -> Result<(), String> {
        let Some(url) = &self.url else { return Ok(()) };
        let body = url.get()?;
        self.from_url = usable(&body, url.url().as_str())?;
        Ok(())
    }

    /// Reads JWKS_FILE; on success its keys replace the file's last ones.
    pub fn load_file(&mut self) -> Result<(), String> {
        let Some(path) = &self.file else { return Ok(()) };
        let body = std::fs::read(path).map_err(|e| format!("cannot read it ({e})"))?;
        self.from_file = usable(&body, &path.display().to_string())?;
        Ok(())
    }

    /// True when JWKS_FILE gave at least one key.
    pub fn file_has_keys(&self) -> bool {
        !self.from_file.is_empty()
    }

    /// Both sources' keys (the URL's copy wins a shared kid: it is the live one).
    pub fn current(&self) -> KeySet {
        self.from_url.merged(&self.from_file)
    }

    /// Reloads both sources, warning about (and surviving) failures. Returns
    /// the merged set, and why the refresh failed if any source did (each
    /// failing source keeps its last good keys).
    pub fn refresh(&mut self) -> (KeySet, Result<(), String>) {
        let before: Vec<String> = self.current().kids().map(String::from).collect();
        let mut errors = Vec::new();
        if let Err(e) = self.load_file() {
            let e = format!("JWKS_FILE {}: {e}", self.file.as_ref().map_or("-".into(), |p| p.display().to_string()));
            warn!("{e}; keeping its last good keys");
            errors.push(e);
        }
        if let Err(e) = self.load_url() {
            let e = format!("JWKS_URL {}: {e}", self.url.as_ref().map_or("-", |u| u.url().as_str()));
            warn!("{e}; keeping its last good keys");
            errors.push(e);
        }
        let set = self.current();
        if !set.kids().eq(before.iter().map(String::as_str)) {
            info!("JWKS changed, from {self}: now {set}");
        } else if errors.is_empty() {
            debug!("JWKS refreshed from {self}: {set}");
        } else {
            debug!("JWKS: still serving {set}");
        }
        (set, if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) })
    }
}

impl fmt::Display for Sources {
    /// `https://app/api/auth/jwks and /path/jwks.json`: for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.url, &self.file) {
            (Some(url), Some(file)) => write!(f, "{} and {}", url.url(), file.display()),
            (Some(url), None) => write!(f, "{}", url.url()),
            (None, Some(file)) => write!(f, "{}", file.display()),
            (None, None) => f.write_str("nowhere"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_keep_the_scheme() {
        let from: Uri = "https://app.example.com/api/auth/jwks".parse().unwrap();
        let ok = |to: &str, want: &str| assert_eq!(same_scheme_target(&from, to).unwrap().to_string(), want, "{to}");
        ok("https://www.example.com/api/auth/jwks", "https://www.example.com/api/auth/jwks");
        ok("HTTPS://www.example.com/jwks", "https://www.example.com/jwks");
        ok("/v2/jwks?x=1", "https://app.example.com/v2/jwks?x=1");
        for bad in ["http://app.example.com/api/auth/jwks", "ftp://x/", "//evil.example/jwks", "jwks", "https:/x"] {
            let e = same_scheme_target(&from, bad).unwrap_err();
            assert!(e.contains("not followed"), "{bad}: {e}");
        }
        let from: Uri = "http://localhost:3000/jwks".parse().unwrap();
        assert!(same_scheme_target(&from, "https://localhost:3000/jwks").is_err(), "http is not moved to https either");
    }

    #[test]
    fn ssl_cert_file_errors_name_the_variable() {
        let dir = std::env::temp_dir();
        let missing = dir.join(format!("taskcast-no-such-ca-{}.pem", std::process::id()));
        let not_pem = dir.join(format!("taskcast-not-pem-{}.pem", std::process::id()));
        std::fs::write(&not_pem, "hello").unwrap();
        let url = JwksUrl::parse("https://app.example.com/jwks").unwrap();
        for path in [&missing, &not_pem] {
            let e = Fetcher::new(&url, Some(path)).err().expect("must fail");
            assert_eq!(e.var, "SSL_CERT_FILE");
            assert!(e.message.contains(&path.display().to_string()), "{e}");
        }
        // Not read at all for an http URL.
        let http = JwksUrl::parse("http://localhost:3000/jwks").unwrap();
        assert!(Fetcher::new(&http, Some(&missing)).is_ok());
        let _ = std::fs::remove_file(not_pem);
    }
}
