//! JWKS verification end to end: real keys (tests/jwks/keys.rs), a real
//! JWKS endpoint on 127.0.0.1:0 (counting its requests), a real taskcast
//! server in this process and a real WebSocket client. Every wait is bounded.

mod common;
#[path = "jwks/keys.rs"]
mod keys;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keys::*;
use serde_json::{Value, json};
use taskcast::auth::{AuthError, Verifier};
use taskcast::config::{ConfigError, JwksUrl};
use taskcast::jwks::REFETCH_MIN_INTERVAL;
use taskcast::{Config, Server};

/// BetterAuth sets both `iss` and `aud` to the app's base URL.
const APP: &str = "http://localhost:3000";
const JWKS_PATH: &str = "/api/auth/jwks";

// ---- a JWKS endpoint ----------------------------------------------------------

/// What the endpoint serves now; tests change it to rotate keys or fail.
struct Served {
    jwks: String,
    status: u16,
    chunked: bool,
}

/// A tiny HTTP server in a thread answering `GET /api/auth/jwks`.
struct JwksServer {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    served: Arc<Mutex<Served>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl JwksServer {
    fn start(keys: &[Value]) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(Mutex::new(Served { jwks: jwks_doc(keys), status: 200, chunked: false }));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s, st) = (hits.clone(), served.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(conn) = conn {
                    answer(conn, &h, &s);
                }
            }
        });
        JwksServer { addr, hits, served, stop, thread: Some(thread) }
    }

    fn url(&self) -> String {
        format!("http://{}{JWKS_PATH}", self.addr)
    }

    /// Requests received so far.
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until at least `n` requests have arrived.
    fn wait_hits(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.hits() < n {
            assert!(Instant::now() < deadline, "JWKS requests stayed at {}, want {n}", self.hits());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// From now on, serve these keys (the app rotated).
    fn serve(&self, keys: &[Value]) {
        self.served.lock().unwrap().jwks = jwks_doc(keys);
    }

    fn set_status(&self, status: u16) {
        self.served.lock().unwrap().status = status;
    }

    fn set_chunked(&self, chunked: bool) {
        self.served.lock().unwrap().chunked = chunked;
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request head, counts it, answers, closes.
fn answer(mut conn: TcpStream, hits: &AtomicUsize, served: &Mutex<Served>) {
    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let request_line = head.lines().next().unwrap_or("");
    if request_line != format!("GET {JWKS_PATH} HTTP/1.1") {
        let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    hits.fetch_add(1, Ordering::SeqCst);
    let (status, body, chunked) = {
        let s = served.lock().unwrap();
        (s.status, s.jwks.clone(), s.chunked)
    };
    let response = if chunked {
        // Next.js style: Transfer-Encoding: chunked, body in two chunks.
        let (a, b) = body.split_at(body.len() / 2);
        format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
             {:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        )
    } else {
        format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let _ = conn.write_all(response.as_bytes());
}

// ---- keys, tokens, configs ------------------------------------------------------

fn jwks_doc(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

/// An Ed25519 JWK as BetterAuth publishes it.
fn ed_jwk(kid: &str, x: &str) -> Value {
    json!({"crv": "Ed25519", "x": x, "kty": "OKP", "kid": kid, "alg": "EdDSA"})
}

fn rsa_jwk(kid: &str, alg: Option<&str>) -> Value {
    let mut k = json!({"kty": "RSA", "n": RSA_N, "e": RSA_E, "kid": kid});
    if let Some(alg) = alg {
        k["alg"] = alg.into();
    }
    k
}

/// Claims like BetterAuth's: 15 minutes, iss = aud = the app's base URL.
fn claims(sub: &str) -> Value {
    json!({"sub": sub, "iss": APP, "aud": APP, "iat": now(), "exp": now() + 900, "email": "u@example.com"})
}

fn signed(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(Into::into);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn ed_token(private_pem: &str, kid: &str, claims: &Value) -> String {
    signed(Algorithm::EdDSA, Some(kid), claims, &EncodingKey::from_ed_pem(private_pem.as_bytes()).unwrap())
}

fn rsa_token(alg: Algorithm, kid: &str, claims: &Value) -> String {
    signed(alg, Some(kid), claims, &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap())
}

fn hs_token(secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    signed(Algorithm::HS256, kid, claims, &EncodingKey::from_secret(secret))
}

/// JWKS from `url` only (no JWT_SECRET), iss/aud checks as BetterAuth sets them.
fn jwks_config(url: &str) -> Config {
    let mut c = Config::for_tests(SECRET);
    c.jwt_secret = None;
    c.jwks_url = Some(JwksUrl::parse(url).unwrap());
    c.jwt_issuer = Some(APP.into());
    c.jwt_audience = Some(APP.into());
    c
}

/// The 401 message for `token` at /ws (panics on any other outcome).
fn refused(addr: SocketAddr, token: &str) -> String {
    match ws_try(addr, &format!("/ws?token={token}"), &[]) {
        Ok(_) => panic!("token was accepted"),
        Err((status, body)) => {
            assert_eq!(status, 401, "{body}");
            let body: Value = serde_json::from_str(&body).unwrap();
            body["message"].as_str().unwrap().to_string()
        }
    }
}

/// Retries the upgrade until it succeeds (the key set is being refreshed).
fn ws_eventually(addr: SocketAddr, token: &str) -> Ws {
    let deadline = Instant::now() + WAIT;
    loop {
        match ws_try(addr, &format!("/ws?token={token}"), &[]) {
            Ok(ws) => return ws,
            Err((status, body)) => {
                assert_eq!(status, 401, "{body}");
                assert!(Instant::now() < deadline, "still refused: {body}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// A port with nothing listening on it.
fn dead_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A fresh path in the temp dir (removed when dropped).
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str) -> TempFile {
        static N: AtomicU16 = AtomicU16::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        TempFile(std::env::temp_dir().join(format!("taskcast-{}-{n}-{name}", std::process::id())))
    }

    fn write(&self, contents: &str) {
        // Write then rename: a reader never sees a half-written file.
        let tmp = self.0.with_extension("tmp");
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, &self.0).unwrap();
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ---- the tests ----------------------------------------------------------------

#[test]
fn betterauth_eddsa_token_upgrades_and_broadcasts() {
    let jwks = JwksServer::start(&[ed_jwk("key-a", ED_A_X)]);
    let s = start_with(jwks_config(&jwks.url()));
    assert_eq!(jwks.hits(), 1, "keys are fetched once at start-up");

    let token = ed_token(ED_A_PRIVATE, "key-a", &claims("user-1"));
    let mut client = ws(s.addr, &token);
    wait_clients(s.addr, 1);

    // The Server Action side can post with the same kind of token.
    let r = broadcast(s.addr, &token, r#"{"type":"task_created","data":{"id":"1","title":"Hello"}}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["recipients"], 1);
    assert_eq!(next_json(&mut client), json!({"type": "task_created", "payload": {"id": "1", "title": "Hello"}}));

    // Without JWT_SECRET, HS256 is simply off.
    let hs = hs_token(SECRET.as_bytes(), None, &claims("user-1"));
    assert_eq!(refused(s.addr, &hs), AuthError::SecretNotSet.message());
    let r = broadcast(s.addr, &hs, r#"{"type":"t","data":{}}"#);
    assert_eq!(r.status, 401);
    assert_eq!(jwks.hits(), 1, "known kids never refetch");
}

#[test]
fn unknown_kid_refetches_once_and_passes_after_rotation() {
    let jwks = JwksServer::start(&[ed_jwk("key-a", ED_A_X)]);
    let s = start_with(jwks_config(&jwks.url()));
    assert_eq!(jwks.hits(), 1);

    // The app rotates: its JWKS now has key B too; our copy is stale.
    jwks.serve(&[ed_jwk("key-a", ED_A_X), ed_jwk("key-b", ED_B_X)]);
    let token_b = ed_token(ED_B_PRIVATE, "key-b", &claims("user-2"));
    let message = refused(s.addr, &token_b);
    assert_eq!(message, AuthError::UnknownKey.message());
    assert!(message.contains("unknown") && message.contains("refresh"), "{message}");

    jwks.wait_hits(2);
    let _client = ws_eventually(s.addr, &token_b);
    let _old = ws(s.addr, &ed_token(ED_A_PRIVATE, "key-a", &claims("user-1")));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(jwks.hits(), 2, "exactly one refetch");
}

#[test]
fn bogus_kids_cause_at_most_one_refetch() {
    let jwks = JwksServer::start(&[ed_jwk("key-a", ED_A_X)]);
    let s = start_with(jwks_config(&jwks.url()));
    let started = Instant::now();
    for i in 0..25 {
        let token = ed_token(ED_C_PRIVATE, &format!("bogus-{i}"), &claims("mallory"));
        assert_eq!(refused(s.addr, &token), AuthError::UnknownKey.message());
    }
    jwks.wait_hits(2);
    std::thread::sleep(Duration::from_millis(200));
    for i in 25..35 {
        let token = ed_token(ED_C_PRIVATE, &format!("bogus-{i}"), &claims("mallory"));
        assert_eq!(refused(s.addr, &token), AuthError::UnknownKey.message());
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(started.elapsed() < REFETCH_MIN_INTERVAL, "the test must run inside one rate-limit window");
    assert_eq!(jwks.hits(), 2, "start-up fetch + at most one refetch per {REFETCH_MIN_INTERVAL:?}");
    // Meanwhile the server answers everyone else as usual.
    let _ok = ws(s.addr, &ed_token(ED_A_PRIVATE, "key-a", &claims("user-1")));
}

#[test]
fn foreign_key_wrong_claims_and_expiry_are_refused() {
    let jwks = JwksServer::start(&[ed_jwk("key-a", ED_A_X)]);
    let s = start_with(jwks_config(&jwks.url()));
    let with = |patch: Value| {
        let mut c = claims("user-1");
        for (k, v) in patch.as_object().unwrap() {
            match v {
                Value::Null => c.as_object_mut().unwrap().remove(k),
                v => c.as_object_mut().unwrap().insert(k.clone(), v.clone()),
            };
        }
        c
    };
    let cases: Vec<(&str, String, AuthError)> = vec![
        // Signed by key C, claiming to be key A.
        ("foreign key", ed_token(ED_C_PRIVATE, "key-a", &claims("user-1")), AuthError::BadSignature),
        ("wrong iss", ed_token(ED_A_PRIVATE, "key-a", &with(json!({"iss": "http://evil"}))), AuthError::WrongIssuer),
        ("wrong aud", ed_token(ED_A_PRIVATE, "key-a", &with(json!({"aud": "http://evil"}))), AuthError::WrongAudience),
        // Issue 18: a missing required claim says so (it was "malformed").
        ("no iss", ed_token(ED_A_PRIVATE, "key-a", &with(json!({"iss": null}))), AuthError::MissingIssuer),
        ("no aud", ed_token(ED_A_PRIVATE, "key-a", &with(json!({"aud": null}))), AuthError::MissingAudience),
        ("expired", ed_token(ED_A_PRIVATE, "key-a", &with(json!({"exp": now() - 3600}))), AuthError::Expired),
        ("nbf ahead", ed_token(ED_A_PRIVATE, "key-a", &with(json!({"nbf": now() + 3600}))), AuthError::NotYetValid),
        // An EdDSA key verifies EdDSA only, whatever the header says.
        ("RS256 on an Ed key", rsa_token(Algorithm::RS256, "key-a", &claims("user-1")), AuthError::WrongAlgorithm),
        (
            "no kid",
            signed(
                Algorithm::EdDSA,
                None,
                &claims("user-1"),
                &EncodingKey::from_ed_pem(ED_A_PRIVATE.as_bytes()).unwrap(),
            ),
            AuthError::MissingKeyId,
        ),
    ];
    for (name, token, want) in &cases {
        assert_eq!(refused(s.addr, token), want.message(), "{name}");
        let r = broadcast(s.addr, token, r#"{"type":"t","data":{}}"#);
        assert_eq!(r.status, 401, "{name}: {}", r.body);
    }
    assert_eq!(jwks.hits(), 1, "none of these name an unknown kid");
}

#[test]
fn hs256_signed_with_the_public_key_is_refused() {
    let keys = [ed_jwk("key-a", ED_A_X), rsa_jwk("key-rsa", Some("RS256"))];
    let jwks = JwksServer::start(&keys);
    // Classic algorithm confusion: HS256 "signed" with what the attacker
    // knows, the published public key, naming that key's kid.
    let forged = |kid: &str, secret: &[u8]| hs_token(secret, Some(kid), &claims("admin"));
    let attempts = [
        forged("key-a", &ED_A_RAW),
        forged("key-a", ED_A_PUBLIC_PEM.as_bytes()),
        forged("key-a", ED_A_X.as_bytes()),
        forged("key-rsa", RSA_PUBLIC_PEM.as_bytes()),
        forged("key-rsa", RSA_N.as_bytes()),
    ];
    // Both with HS256 off (JWKS only) and on (JWT_SECRET set too).
    for secret in [None, Some(SECRET)] {
        let mut config = jwks_config(&jwks.url());
        config.jwt_secret = secret.map(|s| s.as_bytes().to_vec().into());
        let s = start_with(config);
        for (i, token) in attempts.iter().enumerate() {
            let want = if secret.is_some() { AuthError::BadSignature } else { AuthError::SecretNotSet };
            assert_eq!(refused(s.addr, token), want.message(), "attempt {i}, JWT_SECRET set: {}", secret.is_some());
            assert_eq!(broadcast(s.addr, token, r#"{"type":"t","data":{}}"#).status, 401, "attempt {i}");
        }
    }
    assert_eq!(jwks.hits(), 2, "one start-up fetch per server; forged tokens trigger none");
}

#[test]
fn rsa_jwks_over_chunked_http() {
    let jwks = JwksServer::start(&[]);
    // Next.js may answer chunked: the fetcher must decode it.
    jwks.set_chunked(true);
    jwks.serve(&[rsa_jwk("rsa-rs256", Some("RS256")), rsa_jwk("rsa-any", None), ed_jwk("key-a", ED_A_X)]);
    let s = start_with(jwks_config(&jwks.url()));

    let _rs = ws(s.addr, &rsa_token(Algorithm::RS256, "rsa-rs256", &claims("user-1")));
    // The JWK states RS256: PS256 with the same key is refused...
    let ps = rsa_token(Algorithm::PS256, "rsa-rs256", &claims("user-1"));
    assert_eq!(refused(s.addr, &ps), AuthError::WrongAlgorithm.message());
    // ...while a JWK without "alg" allows its whole family.
    let _ps = ws(s.addr, &rsa_token(Algorithm::PS256, "rsa-any", &claims("user-1")));
    let _rs512 = ws(s.addr, &rsa_token(Algorithm::RS512, "rsa-any", &claims("user-1")));
    let _ed = ws(s.addr, &ed_token(ED_A_PRIVATE, "key-a", &claims("user-1")));
    let r = broadcast(s.addr, &rsa_token(Algorithm::RS256, "rsa-rs256", &claims("server")), r#"{"type":"t","data":1}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    wait_clients(s.addr, 4);
}

#[test]
fn hs256_with_jwt_secret_works_alongside_jwks() {
    let jwks = JwksServer::start(&[ed_jwk("key-a", ED_A_X)]);
    let mut config = jwks_config(&jwks.url());
    config.jwt_secret = Some(SECRET.as_bytes().to_vec().into());
    let s = start_with(config);

    // A token the app mints itself with the shared secret (iss/aud still checked).
    let hs = hs_token(SECRET.as_bytes(), None, &claims("server"));
    let mut a = ws(s.addr, &hs);
    // An HS256 token goes to the secret even when it carries a kid.
    let _b = ws(s.addr, &hs_token(SECRET.as_bytes(), Some("app-secret-1"), &claims("user-2")));
    let _c = ws(s.addr, &ed_token(ED_A_PRIVATE, "key-a", &claims("user-3")));
    wait_clients(s.addr, 3);
    let r = broadcast(s.addr, &hs, r#"{"type":"task_updated","data":{"id":"7"}}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(next_json(&mut a)["type"], "task_updated");

    // JWT_ISSUER / JWT_AUDIENCE apply to HS256 too.
    let mut no_iss = claims("server");
    no_iss["iss"] = "http://elsewhere".into();
    assert_eq!(refused(s.addr, &hs_token(SECRET.as_bytes(), None, &no_iss)), AuthError::WrongIssuer.message());
    assert_eq!(
        refused(s.addr, &hs_token(b"not-the-secret-not-the-secret!!!", None, &claims("x"))),
        AuthError::BadSignature.message()
    );
    assert_eq!(jwks.hits(), 1, "HS256 tokens never touch the JWKS");
}

#[test]
fn jwks_down_at_start_is_a_config_error_naming_jwks_url() {
    let url = format!("http://127.0.0.1:{}{JWKS_PATH}", dead_port());
    let config = jwks_config(&url);

    let e = Verifier::new(&config).err().expect("nothing listening: start must fail");
    assert_eq!(e.var, "JWKS_URL");
    assert!(e.to_string().contains(&url), "{e}");

    // Through Server::bind (what main runs): an io::Error carrying it.
    let e = Server::spawn(config.clone()).err().expect("bind must fail");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<ConfigError>()).expect("a ConfigError inside");
    assert_eq!(inner.var, "JWKS_URL");

    // An endpoint that answers, but not a JWKS, is no better.
    let jwks = JwksServer::start(&[]);
    jwks.set_status(500);
    assert_eq!(Verifier::new(&jwks_config(&jwks.url())).err().unwrap().var, "JWKS_URL");
    jwks.set_status(200);
    let e = Verifier::new(&jwks_config(&jwks.url())).err().unwrap();
    assert!(e.var == "JWKS_URL" && e.message.contains("no usable"), "{e}");

    // With a key from JWKS_FILE, the server starts anyway and uses it.
    let file = TempFile::new("jwks.json");
    file.write(&jwks_doc(&[ed_jwk("key-a", ED_A_X)]));
    let mut config = config;
    config.jwks_file = Some(file.0.clone());
    let s = start_with(config);
    let _ok = ws(s.addr, &ed_token(ED_A_PRIVATE, "key-a", &claims("user-1")));
}

/// Runs the real binary with only `env` set; returns (exit code, stderr).
fn run_binary(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = std::env::temp_dir(); // no .env here to pick up
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_taskcast"))
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("taskcast did not exit within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (status.code(), stderr)
}

#[test]
fn binary_exits_2_naming_jwks_url() {
    let url = format!("http://127.0.0.1:{}{JWKS_PATH}", dead_port());
    let base = [("HOST", "127.0.0.1"), ("PORT", "0"), ("RUST_LOG", "off")];
    let (code, stderr) = run_binary(&[base.as_slice(), &[("JWKS_URL", url.as_str())]].concat());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("JWKS_URL") && stderr.contains(&url), "{stderr}");

    let (code, stderr) = run_binary(&[base.as_slice(), &[("JWKS_URL", "ftp://127.0.0.1/api/auth/jwks")]].concat());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("invalid JWKS_URL") && stderr.contains("https://"), "{stderr}");

    let (code, stderr) = run_binary(&[base.as_slice(), &[("JWKS_FILE", "/nonexistent/jwks.json")]].concat());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("JWKS_FILE"), "{stderr}");
}

#[test]
fn jwks_file_works_without_any_http() {
    let file = TempFile::new("jwks.json");
    file.write(&jwks_doc(&[ed_jwk("key-a", ED_A_X)]));
    let mut config = Config::for_tests(SECRET);
    config.jwt_secret = None;
    config.jwks_file = Some(file.0.clone());
    let s = start_with(config);

    let _a = ws(s.addr, &ed_token(ED_A_PRIVATE, "key-a", &claims("user-1")));
    assert_eq!(refused(s.addr, &hs_token(SECRET.as_bytes(), None, &claims("u"))), AuthError::SecretNotSet.message());

    // The app writes a new key: an unknown kid re-reads the file.
    file.write(&jwks_doc(&[ed_jwk("key-a", ED_A_X), ed_jwk("key-b", ED_B_X)]));
    let token_b = ed_token(ED_B_PRIVATE, "key-b", &claims("user-2"));
    let _b = ws_eventually(s.addr, &token_b);

    // A missing file at start-up names JWKS_FILE.
    let mut config = Config::for_tests(SECRET);
    config.jwks_file = Some(std::env::temp_dir().join("taskcast-no-such-jwks.json"));
    assert_eq!(Verifier::new(&config).err().unwrap().var, "JWKS_FILE");
}

#[test]
fn refreshes_on_the_interval_and_keeps_the_last_good_keys() {
    let jwks = JwksServer::start(&[ed_jwk("key-a", ED_A_X)]);
    let mut config = jwks_config(&jwks.url());
    config.jwks_refresh = Duration::from_secs(1);
    let s = start_with(config);

    // No token at all: the set is still fetched again on the interval.
    jwks.wait_hits(2);

    // The endpoint breaks: the next refresh fails and the old keys stay.
    jwks.set_status(500);
    let broken_at = jwks.hits();
    jwks.wait_hits(broken_at + 1);
    std::thread::sleep(Duration::from_millis(50));
    drop(ws(s.addr, &ed_token(ED_A_PRIVATE, "key-a", &claims("user-1"))));

    // Mended, with a rotated set (key A retired): picked up by the timer.
    jwks.set_status(200);
    jwks.serve(&[ed_jwk("key-b", ED_B_X)]);
    let mended_at = jwks.hits();
    jwks.wait_hits(mended_at + 1);
    let token_a = ed_token(ED_A_PRIVATE, "key-a", &claims("user-1"));
    let deadline = Instant::now() + WAIT;
    while ws_try(s.addr, &format!("/ws?token={token_a}"), &[]).is_ok() {
        assert!(Instant::now() < deadline, "retired key A is still accepted");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(ws(s.addr, &ed_token(ED_B_PRIVATE, "key-b", &claims("user-2"))));

    // The fetch thread ends with the server: no more requests after it stops.
    s.stop().unwrap();
    std::thread::sleep(Duration::from_millis(200)); // a fetch already under way lands
    let stopped_at = jwks.hits();
    std::thread::sleep(Duration::from_millis(1300)); // more than one JWKS_REFRESH_SECS
    assert_eq!(jwks.hits(), stopped_at, "the JWKS thread outlived its server");
}

// ---- hostile endpoints ----------------------------------------------------------
//
// Regressions for the hand-written client ureq replaced (issue 10): it
// recursed once per `1xx` answer (`Continues` overflowed the stack and
// aborted the process), and a 16-hex-digit chunk size after a first chunk
// overflowed its arithmetic (`ChunkSize16` panicked). Both checked against
// the old code (ba2cb68). Each hostile answer must end the fetch with a
// logged failure within the fetch timeout, and the server keep serving with
// the keys it had.

/// How the hostile endpoint answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hostile {
    /// A good JWKS (key A).
    Good,
    /// `HTTP/1.1 100 Continue` 100,000 times (2.5 MB), then the close.
    Continues,
    /// A chunk size of 17 hex digits (more than 64 bits).
    ChunkSize17,
    /// A 1-byte chunk, then a chunk size of 16 hex digits (2^64 - 1) and
    /// data until the close (the old decoder's `len + size` overflowed).
    ChunkSize16,
    /// 200 without framing, then JSON-ish bytes without end (up to 64 MiB).
    EndlessBody,
    /// A Content-Length of 10 GB, then the same endless bytes.
    HugeLength,
    /// A good head, then one body byte per 100 ms, forever.
    Trickle,
}

/// A raw TCP endpoint answering every request as `mode` says.
struct HostileServer {
    url: String,
    mode: Arc<Mutex<Hostile>>,
    /// Requests answered with something other than [`Hostile::Good`].
    hostile_hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HostileServer {
    fn start(mode: Hostile) -> HostileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(Mutex::new(mode));
        let hostile_hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, h, st) = (mode.clone(), hostile_hits.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let mode = *m.lock().unwrap();
                if mode != Hostile::Good {
                    h.fetch_add(1, Ordering::SeqCst);
                }
                // One thread per answer: a trickle must not hold up the next request.
                let st = st.clone();
                std::thread::spawn(move || answer_hostile(conn, mode, &st));
            }
        });
        HostileServer { url: format!("http://{addr}{JWKS_PATH}"), mode, hostile_hits, stop, addr, thread: Some(thread) }
    }

    fn set(&self, mode: Hostile) {
        *self.mode.lock().unwrap() = mode;
    }

    fn hostile_hits(&self) -> usize {
        self.hostile_hits.load(Ordering::SeqCst)
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads the request head, then misbehaves. Every write loop is bounded
/// in bytes and ends when the client goes away or the server stops.
fn answer_hostile(mut conn: TcpStream, mode: Hostile, stop: &AtomicBool) {
    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    conn.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let endless = |conn: &mut TcpStream, limit: usize| {
        let filler = [b' '; 16384];
        let mut sent = 0;
        while sent < limit && !stop.load(Ordering::SeqCst) && conn.write_all(&filler).is_ok() {
            sent += filler.len();
        }
    };
    let _ = match mode {
        Hostile::Good => {
            let body = jwks_doc(&[ed_jwk("key-a", ED_A_X)]);
            conn.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes())
        }
        Hostile::Continues => {
            let many = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(100_000);
            conn.write_all(&many)
        }
        Hostile::ChunkSize17 => conn.write_all(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n{\"keys\":[]}\r\n0\r\n\r\n",
        ),
        Hostile::ChunkSize16 => {
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\nffffffffffffffff\r\n\"keys\":[",
            );
            endless(&mut conn, 4 << 20);
            Ok(())
        }
        Hostile::EndlessBody => {
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"keys\":[");
            endless(&mut conn, 64 << 20);
            Ok(())
        }
        Hostile::HugeLength => {
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n{\"keys\":[");
            endless(&mut conn, 64 << 20);
            Ok(())
        }
        Hostile::Trickle => {
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
            for _ in 0..300 {
                if stop.load(Ordering::SeqCst) || conn.write_all(b" ").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        }
    };
}

const HOSTILE: [Hostile; 5] =
    [Hostile::Continues, Hostile::ChunkSize17, Hostile::ChunkSize16, Hostile::EndlessBody, Hostile::HugeLength];

/// What the failure of each hostile answer must say (ureq's words, or ours).
fn failure_says(mode: Hostile) -> &'static str {
    match mode {
        Hostile::ChunkSize16 | Hostile::EndlessBody | Hostile::HugeLength => "larger than 1048576 bytes",
        Hostile::Trickle => "within 10s",
        // ureq counts interim answers into its 64 KiB response-head limit.
        Hostile::Continues => "header is too big",
        Hostile::ChunkSize17 => "chunk length",
        Hostile::Good => unreachable!("not hostile"),
    }
}

/// At start-up every hostile answer is a clean config error naming
/// JWKS_URL, within the fetch timeout; the trickle runs into it.
#[test]
fn hostile_jwks_endpoint_at_start_is_a_bounded_config_error() {
    let hostile = HostileServer::start(Hostile::Good);
    for mode in HOSTILE.into_iter().chain([Hostile::Trickle]) {
        hostile.set(mode);
        let started = Instant::now();
        let e = Verifier::new(&jwks_config(&hostile.url)).err().unwrap_or_else(|| panic!("{mode:?}: accepted"));
        let took = started.elapsed();
        assert_eq!(e.var, "JWKS_URL", "{mode:?}: {e}");
        assert!(e.message.contains(failure_says(mode)), "{mode:?}: {e}");
        assert!(took < Duration::from_secs(12), "{mode:?}: took {took:?}");
        if mode != Hostile::Trickle {
            assert!(took < Duration::from_secs(5), "{mode:?} should fail fast, took {took:?}: {e}");
        }
    }
}

/// The endpoint turns hostile after start-up: each kind of answer is a
/// counted failure in `jwks_health`, the keys stay, the thread lives.
#[test]
fn hostile_refreshes_are_failures_in_jwks_health() {
    let hostile = HostileServer::start(Hostile::Good);
    let mut config = jwks_config(&hostile.url);
    config.jwks_refresh = Duration::from_secs(1);
    let verifier = Verifier::new(&config).unwrap();
    let h = verifier.jwks_health().expect("JWKS is configured");
    assert_eq!((h.keys, h.fetches, h.failures, h.thread_alive, h.last_error.clone()), (1, 1, 0, true, None), "{h:?}");
    let token = ed_token(ED_A_PRIVATE, "key-a", &claims("user-1"));
    for mode in HOSTILE {
        hostile.set(mode);
        let failures = verifier.jwks_health().unwrap().failures;
        let deadline = Instant::now() + Duration::from_secs(15);
        while verifier.jwks_health().unwrap().failures == failures {
            assert!(Instant::now() < deadline, "{mode:?}: no failure recorded: {:?}", verifier.jwks_health());
            std::thread::sleep(Duration::from_millis(20));
        }
        let h = verifier.jwks_health().unwrap();
        assert!(h.thread_alive && h.keys == 1, "{mode:?}: {h:?}");
        let error = h.last_error.unwrap_or_default();
        assert!(error.contains("JWKS_URL") && error.contains(failure_says(mode)), "{mode:?}: {error}");
        assert!(verifier.verify(&token).is_ok(), "{mode:?}: the last good key still verifies");
    }
    hostile.set(Hostile::Good);
    let deadline = Instant::now() + Duration::from_secs(15);
    while verifier.jwks_health().unwrap().last_error.is_some() {
        assert!(Instant::now() < deadline, "never recovered: {:?}", verifier.jwks_health());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(verifier.jwks_health().unwrap().secs_since_success.is_some_and(|s| s <= 2));
}

/// The real binary against an endpoint that turns hostile: every failure
/// is logged (warn), the process does not crash, and it keeps serving.
#[test]
fn binary_survives_a_hostile_jwks_endpoint() {
    let hostile = HostileServer::start(Hostile::Good);
    let mut cmd = taskcast_cmd();
    cmd.env("JWKS_URL", &hostile.url).env("JWKS_REFRESH_SECS", "1").stdout(std::process::Stdio::null());
    let mut bin = start_binary(&mut cmd);
    let token = ed_token(ED_A_PRIVATE, "key-a", &claims("user-1"));
    let warned = |log: &str| log.matches("; keeping its last good keys").count();
    for mode in HOSTILE {
        hostile.set(mode);
        let hits = hostile.hostile_hits();
        let deadline = Instant::now() + Duration::from_secs(15);
        // Every hostile answer so far (at least one of this kind) logged as a failure.
        while hostile.hostile_hits() <= hits || warned(&bin.log()) < hostile.hostile_hits() {
            assert!(Instant::now() < deadline, "{mode:?}: failure not logged: {}", bin.log());
            assert!(bin.child.try_wait().unwrap().is_none(), "{mode:?}: taskcast died: {}", bin.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(get(bin.addr, "/health").status, 200, "{mode:?}");
        drop(ws(bin.addr, &token));
    }
    let log = bin.log();
    assert!(log.contains("WARN") && log.contains(&format!("JWKS_URL {}", hostile.url)), "{log}");
    assert!(log.contains("larger than 1048576 bytes"), "{log}");
    assert!(bin.child.try_wait().unwrap().is_none(), "taskcast died: {log}");
    bin.signal(libc::SIGTERM);
    assert!(bin.wait_exit(WAIT).success(), "{}", bin.log());
}
