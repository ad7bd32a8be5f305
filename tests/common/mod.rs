//! Helpers every integration test uses: a real server on 127.0.0.1:0 in a
//! thread of this process, real signed tokens, a real WebSocket client, and
//! raw HTTP over a real socket. Every wait is bounded.
#![allow(dead_code)]

pub mod home;
pub mod raw_ws;
pub mod redis_server;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use taskcast::{Config, Server, ShutdownHandle};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

pub const SECRET: &str = "test-secret-test-secret-test-secret!";
/// Upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(5);

pub type Ws = WebSocket<TcpStream>;

/// A server running in a thread; shut down (and joined) on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    pub handle: ShutdownHandle,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Shuts down and waits for the loop to return.
    pub fn stop(mut self) -> std::io::Result<()> {
        self.handle.shutdown();
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.handle.shutdown();
            let _ = t.join();
        }
    }
}

pub fn config() -> Config {
    Config::for_tests(SECRET)
}

pub fn start() -> TestServer {
    start_with(config())
}

pub fn start_with(config: Config) -> TestServer {
    let _ = env_logger::builder().is_test(true).try_init();
    let (addr, handle, thread) = Server::spawn(config).expect("bind");
    TestServer { addr, handle, thread: Some(thread) }
}

pub fn token(sub: &str) -> String {
    taskcast::auth::mint(SECRET.as_bytes(), sub, 3600)
}

/// Signs arbitrary claims with HS256 and the test secret.
pub fn sign(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

pub fn now() -> u64 {
    taskcast::auth::now_secs()
}

/// Opens a WebSocket with `?token=`; panics if the upgrade fails.
pub fn ws(addr: SocketAddr, token: &str) -> Ws {
    ws_try(addr, &format!("/ws?token={token}"), &[]).expect("upgrade")
}

/// Opens a WebSocket at `path` with extra headers; returns the HTTP status
/// and body on refusal.
pub fn ws_try(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Ws, (u16, String)> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    match tungstenite::client(req, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            Err((resp.status().as_u16(), body))
        }
        Err(e) => panic!("handshake: {e}"),
    }
}

/// The next text message as JSON, skipping control frames; panics on timeout.
pub fn next_json(ws: &mut Ws) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no message within {WAIT:?}");
        match ws.read().expect("read") {
            Message::Text(t) => return serde_json::from_str(&t).expect("server sent JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// Reads until the server's close frame arrives; returns it.
pub fn expect_close(ws: &mut Ws) -> Option<CloseFrame> {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no close within {WAIT:?}");
        match ws.read() {
            Ok(Message::Close(f)) => return f,
            Ok(_) => continue,
            Err(e) => panic!("expected a close frame, got error {e}"),
        }
    }
}

/// The close code the server sent.
pub fn close_code(ws: &mut Ws) -> u16 {
    expect_close(ws).map(|f| u16::from(f.code)).unwrap_or(1005)
}

/// One raw HTTP exchange result.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body {:?} is not JSON: {e}", self.body))
    }
}

/// A raw keep-alive HTTP connection.
pub struct Http {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Http {
    pub fn connect(addr: SocketAddr) -> Http {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Http { stream, buf: Vec::new() }
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).unwrap();
    }

    /// Reads one response (uses Content-Length; none means no body).
    pub fn response(&mut self) -> HttpResponse {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = resp.parse(&self.buf) {
                let hs: Vec<(String, String)> = resp
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect();
                let len = hs
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, v)| v.parse().unwrap());
                if self.buf.len() >= n + len {
                    let status = resp.code.unwrap();
                    let body = String::from_utf8_lossy(&self.buf[n..n + len]).into_owned();
                    self.buf.drain(..n + len);
                    return HttpResponse { status, headers: hs, body };
                }
            }
            assert!(
                Instant::now() < deadline,
                "no full response within {WAIT:?}: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            let mut chunk = [0u8; 16384];
            let n = self.stream.read(&mut chunk).expect("read response");
            assert!(n > 0, "connection closed before a full response: {:?}", String::from_utf8_lossy(&self.buf));
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// True if the server closes the connection (EOF) within the wait.
    pub fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// One request on a fresh connection.
pub fn request(addr: SocketAddr, raw: &str) -> HttpResponse {
    let mut c = Http::connect(addr);
    c.send(raw.as_bytes());
    c.response()
}

pub fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    request(addr, &format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"))
}

/// The raw request for a broadcast.
pub fn broadcast_request(token: &str, body: &str) -> String {
    format!(
        "POST /api/broadcast HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

pub fn broadcast(addr: SocketAddr, token: &str, body: &str) -> HttpResponse {
    request(addr, &broadcast_request(token, body))
}

/// Polls /health until `connectedClients` equals `n` (bounded).
pub fn wait_clients(addr: SocketAddr, n: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = get(addr, "/health").json()["connectedClients"].as_u64().unwrap();
        if got == n {
            return;
        }
        assert!(Instant::now() < deadline, "connectedClients stayed {got}, want {n}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The real `taskcast` binary, started on 127.0.0.1:0 as a child process;
/// its stderr (the log) is collected in the background. Killed on drop.
pub struct Binary {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

/// A `taskcast` command with a clean environment, run in an empty temp
/// dir (no stray `.env`), logging at info.
pub fn taskcast_cmd() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_taskcast"));
    c.env_clear().current_dir(std::env::temp_dir()).env("RUST_LOG", "info");
    c
}

/// Starts `cmd` (from [`taskcast_cmd`]) listening on an ephemeral port and
/// waits for its start-up line. Stdout is left as the caller set it.
pub fn start_binary(cmd: &mut std::process::Command) -> Binary {
    use std::io::BufRead;
    cmd.env("HOST", "127.0.0.1").env("PORT", "0").stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn taskcast");
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "taskcast exited before listening: {}", log.lock().unwrap());
        log.lock().unwrap().push_str(&line);
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    let sink = log.clone();
    std::thread::spawn(move || {
        let mut line = String::new();
        while err.read_line(&mut line).unwrap_or(0) > 0 {
            sink.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
    Binary { child, addr, log }
}

impl Binary {
    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (bounded) until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.log().contains(needle) {
            assert!(Instant::now() < deadline, "{needle:?} never logged: {}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits (bounded by `within`) for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "taskcast did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// CPU seconds (user + system) the process has used so far.
    pub fn cpu_secs(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `ws` on a thread until the server's close frame; the thread
/// returns when it came and its code (`None`: no close frame within
/// `within`, or the connection ended without one). It answers the close
/// (tungstenite replies on the next read), so the server's handshake ends.
pub fn watch_close(mut ws: Ws, within: Duration) -> JoinHandle<Option<(Instant, u16)>> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + within;
        let mut got = None;
        while Instant::now() < deadline {
            match ws.read() {
                Ok(Message::Close(f)) if got.is_none() => {
                    got = Some((Instant::now(), f.map_or(1005, |f| u16::from(f.code))));
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        got
    })
}

/// Polls `path` until it answers `status` (bounded by [`WAIT`]).
pub fn wait_status(addr: SocketAddr, path: &str, status: u16) -> HttpResponse {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = get(addr, path);
        if r.status == status {
            return r;
        }
        assert!(Instant::now() < deadline, "{path} stayed {} ({}), want {status}", r.status, r.body);
        std::thread::sleep(Duration::from_millis(10));
    }
}
