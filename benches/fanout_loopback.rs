//! Fan-out of one broadcast to N WebSocket clients over real loopback
//! sockets: the release `taskcast` binary runs as a child process (so the
//! bench's N client sockets and the server's N sockets do not share one
//! open-file limit), N raw WebSocket clients connect, and each iteration
//! POSTs one ~200-byte broadcast on a keep-alive connection and reads the
//! frame from every client. Time = POST sent → last client has its frame.
//!
//! Run: `cargo bench --bench fanout_loopback` (10,000 clients need
//! `ulimit -n` ≥ 10,100 for the bench process; the limit is raised to the
//! hard limit automatically).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const SECRET: &str = "bench-secret-bench-secret-bench-secret";

struct ServerProcess {
    child: Child,
    addr: SocketAddr,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server() -> ServerProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_taskcast"))
        .env_clear()
        .envs([
            ("JWT_SECRET", SECRET),
            ("HOST", "127.0.0.1"),
            ("PORT", "0"),
            ("RUST_LOG", "warn,taskcast::server=info"),
            ("MAX_CONNECTIONS_PER_IP", "0"),
            ("BROADCAST_RATE_PER_SEC", "0"),
            ("SEND_QUEUE_LIMIT", "100000"),
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn taskcast (cargo bench builds it)");
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "server exited");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    ServerProcess { child, addr }
}

/// A raw WebSocket client: handshake by hand, then read whole frames.
fn connect(addr: SocketAddr, token: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /ws?token={token} HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    s
}

fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain struct in/out.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

fn fanout(c: &mut Criterion) {
    raise_fd_limit();
    let server = start_server();
    let token = taskcast::auth::mint(SECRET.as_bytes(), "bench", 3600);
    let body = format!(r#"{{"type":"task_updated","data":{{"id":"t-1","title":"{}"}}}}"#, "x".repeat(150));
    let request = format!(
        "POST /api/broadcast HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let frame_len = taskcast::broadcast::parse(body.as_bytes()).unwrap().1.len();
    let mut publisher = TcpStream::connect(server.addr).unwrap();
    publisher.set_nodelay(true).unwrap();
    let mut clients: Vec<TcpStream> = Vec::new();
    let mut g = c.benchmark_group("fanout_loopback");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    let mut frame = vec![0u8; frame_len];
    let mut resp = vec![0u8; 4096];
    for n in [1usize, 100, 1000, 10_000] {
        while clients.len() < n {
            clients.push(connect(server.addr, &token));
        }
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |bench, _| {
            bench.iter(|| {
                publisher.write_all(request.as_bytes()).unwrap();
                for cl in &mut clients {
                    cl.read_exact(&mut frame).unwrap();
                }
                // The 200 response (small; one read gets it whole on loopback).
                let got = publisher.read(&mut resp).unwrap();
                assert!(resp[..got].starts_with(b"HTTP/1.1 200"));
            })
        });
    }
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
