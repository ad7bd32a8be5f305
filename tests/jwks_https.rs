//! JWKS over https, end to end: a CA and a server certificate generated
//! fresh for each run (rcgen), a real TLS server on 127.0.0.1:0 (rustls)
//! serving the JWKS, the real `taskcast` binary told to trust that CA
//! through SSL_CERT_FILE, and a real EdDSA token with a `kid`. Every wait is
//! bounded.

mod common;
#[path = "jwks/keys.rs"]
mod keys;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keys::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;

const JWKS_PATH: &str = "/api/auth/jwks";

/// A private CA and a certificate it issued for 127.0.0.1 and localhost.
struct Pki {
    /// The CA certificate, PEM: what SSL_CERT_FILE holds.
    ca_pem: String,
    /// The TLS server's configuration (the leaf certificate and its key).
    server: Arc<rustls::ServerConfig>,
}

fn pki(name: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, format!("taskcast test CA {name}"));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf_params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    Pki { ca_pem: ca.pem(), server: Arc::new(server) }
}

/// An https server in a thread answering every `GET /api/auth/jwks` with
/// `jwks`; counts the requests that got through the handshake.
struct TlsJwksServer {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsJwksServer {
    fn start(config: Arc<rustls::ServerConfig>, jwks: String) -> TlsJwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, st) = (hits.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(conn) = conn {
                    answer(conn, &config, &jwks, &h);
                }
            }
        });
        TlsJwksServer { addr, hits, stop, thread: Some(thread) }
    }

    fn url(&self) -> String {
        format!("https://{}{JWKS_PATH}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for TlsJwksServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One TLS connection: handshake, read a request head, answer, close. A
/// client that refuses our certificate ends the handshake: nothing is counted.
fn answer(tcp: TcpStream, config: &Arc<rustls::ServerConfig>, jwks: &str, hits: &AtomicUsize) {
    tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let conn = rustls::ServerConnection::new(config.clone()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    if head.lines().next() != Some(&format!("GET {JWKS_PATH} HTTP/1.1")) {
        let _ = tls.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    hits.fetch_add(1, Ordering::SeqCst);
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{jwks}",
        jwks.len()
    );
    let _ = tls.write_all(response.as_bytes());
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

/// A file in the temp dir, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn with(name: &str, contents: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("taskcast-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn ed_jwks() -> String {
    json!({"keys": [{"crv": "Ed25519", "x": ED_A_X, "kty": "OKP", "kid": "key-a", "alg": "EdDSA"}]}).to_string()
}

fn ed_token(kid: &str) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.into());
    let claims = json!({"sub": "user-1", "iat": now(), "exp": now() + 900});
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_pem(ED_A_PRIVATE.as_bytes()).unwrap()).unwrap()
}

/// Runs `cmd` until it exits (bounded); returns (exit code, stderr).
fn run_to_exit(cmd: &mut std::process::Command) -> (Option<i32>, String) {
    cmd.env("HOST", "127.0.0.1").env("PORT", "0");
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // The fetch gives up within 10 s; a little more for start-up.
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("taskcast did not exit within 15s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (status.code(), stderr)
}

#[test]
fn https_jwks_from_a_private_ca_named_by_ssl_cert_file() {
    let pki = pki("a");
    let ca_file = TempFile::with("ca-a.pem", &pki.ca_pem);
    let jwks = TlsJwksServer::start(pki.server.clone(), ed_jwks());

    let mut cmd = taskcast_cmd();
    cmd.env("JWKS_URL", jwks.url()).env("SSL_CERT_FILE", ca_file.path()).stdout(std::process::Stdio::null());
    let bin = start_binary(&mut cmd);
    assert_eq!(jwks.hits(), 1, "keys fetched once over TLS at start-up: {}", bin.log());
    assert!(bin.log().contains(&format!("JWKS loaded from {}: 1 key (key-a)", jwks.url())), "{}", bin.log());

    // A BetterAuth-style EdDSA token naming that key upgrades.
    let mut client = ws(bin.addr, &ed_token("key-a"));
    client.send(tungstenite::Message::text(r#"{"type":"ping"}"#)).unwrap();
    assert_eq!(next_json(&mut client)["type"], "pong");
    // An unknown kid refetches over the same TLS path.
    assert!(ws_try(bin.addr, &format!("/ws?token={}", ed_token("key-z")), &[]).is_err());
    let deadline = Instant::now() + WAIT;
    while jwks.hits() < 2 {
        assert!(Instant::now() < deadline, "no refetch over https: {}", bin.log());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn untrusted_https_certificate_exits_2_naming_jwks_url() {
    let pki_a = pki("a");
    let jwks = TlsJwksServer::start(pki_a.server.clone(), ed_jwks());
    let url = jwks.url();

    // SSL_CERT_FILE unset: the built-in roots do not know our CA.
    let (code, stderr) = run_to_exit(taskcast_cmd().env("JWKS_URL", &url));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("invalid JWKS_URL") && stderr.contains(&url), "{stderr}");
    assert!(stderr.contains("certificate") && stderr.contains("SSL_CERT_FILE"), "says what to do: {stderr}");

    // SSL_CERT_FILE naming another CA: exactly those roots are used, so no.
    let other = TempFile::with("ca-other.pem", &pki("other").ca_pem);
    let (code, stderr) = run_to_exit(taskcast_cmd().env("JWKS_URL", &url).env("SSL_CERT_FILE", other.path()));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("invalid JWKS_URL"), "{stderr}");
    assert_eq!(jwks.hits(), 0, "no request was sent over an untrusted connection");

    // SSL_CERT_FILE that is not a certificate bundle names SSL_CERT_FILE.
    let junk = TempFile::with("ca-junk.pem", "not a certificate");
    let (code, stderr) = run_to_exit(taskcast_cmd().env("JWKS_URL", &url).env("SSL_CERT_FILE", junk.path()));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("invalid SSL_CERT_FILE") && stderr.contains(junk.path()), "{stderr}");
}
