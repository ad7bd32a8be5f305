//! Where the memory of one connection goes, phase by phase.
//!
//! A counting global allocator (this bench binary only; the server uses the
//! system allocator unchanged) tracks every live heap block by its
//! requested size. The server runs in this process (`Server::spawn`); N raw
//! clients connect over loopback and walk through the phases of a
//! connection's life, and after each phase the live heap is compared with
//! the one before it:
//!
//! 1. accepted: TCP connected, nothing sent (an HTTP connection);
//! 2. request arriving: the first part of the upgrade request sent (the
//!    HTTP buffer holds it);
//! 3. idle: the rest sent, `101` read — an upgraded, authenticated
//!    WebSocket in its user channel, nothing in flight;
//! 4. idle after a message: each client sent `{"type":"ping"}` and read the
//!    pong (what is left once tungstenite has read a frame).
//!
//! For each phase it prints bytes requested, blocks, and the malloc
//! footprint (usable size + an 8-byte chunk header) per connection, and
//! the block sizes that appeared about once per connection (the table
//! growth of slabs, heaps and hash maps shows as "shared tables"). The
//! clients allocate nothing while a phase is measured: their requests are
//! built before the baseline, their reads go to the stack.
//!
//! Run: `cargo bench --bench conn_memory` (CONNS=N, default 5000: the
//! clients' and the server's sockets share this process's open-file limit).
//! RSS per connection, kernel memory included, is the load tool's job
//! (`taskcast-load idle`, see docs/performance.md).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use taskcast::Config;

const SECRET: &str = "bench-secret-bench-secret-bench-secret";

/// Block sizes counted one by one; larger ones are summed.
const SIZES: usize = 4097;

struct Counting;

static BYTES: AtomicIsize = AtomicIsize::new(0);
static BLOCKS: AtomicIsize = AtomicIsize::new(0);
static USABLE: AtomicIsize = AtomicIsize::new(0);
/// Allocation calls (alloc, alloc_zeroed, realloc), freed or not.
static CALLS: AtomicIsize = AtomicIsize::new(0);
static BY_SIZE: [AtomicIsize; SIZES] = [const { AtomicIsize::new(0) }; SIZES];

fn record(sign: isize, size: usize, ptr: *mut u8) {
    if sign > 0 {
        CALLS.fetch_add(1, Relaxed);
    }
    BYTES.fetch_add(sign * size as isize, Relaxed);
    BLOCKS.fetch_add(sign, Relaxed);
    // SAFETY: `ptr` is a live block of the system allocator (malloc).
    let usable = unsafe { libc::malloc_usable_size(ptr.cast()) };
    USABLE.fetch_add(sign * usable as isize, Relaxed);
    BY_SIZE[size.min(SIZES - 1)].fetch_add(sign, Relaxed);
}

// SAFETY: every call is passed on to `System`; counting has no effect on it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            record(1, layout.size(), p);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            record(1, layout.size(), p);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record(-1, layout.size(), ptr);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(-1, layout.size(), ptr);
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            record(1, layout.size(), ptr);
        } else {
            record(1, new_size, p);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The live heap at one moment, and the process's resident memory.
struct Snapshot {
    bytes: isize,
    blocks: isize,
    usable: isize,
    by_size: Vec<isize>,
    rss: isize,
    calls: isize,
}

fn snapshot() -> Snapshot {
    Snapshot {
        bytes: BYTES.load(Relaxed),
        blocks: BLOCKS.load(Relaxed),
        usable: USABLE.load(Relaxed),
        by_size: BY_SIZE.iter().map(|c| c.load(Relaxed)).collect(),
        rss: rss_bytes(),
        calls: CALLS.load(Relaxed),
    }
}

/// VmRSS of this process (the server's heap and tables; the clients hold
/// only sockets, which are kernel memory).
fn rss_bytes() -> isize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next());
    kib.and_then(|k| k.parse::<isize>().ok()).unwrap_or(0) * 1024
}

/// Waits until the server stops allocating (it has handled what the
/// clients sent): the live heap unchanged for 300 ms, at most 20 s.
fn settled() -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = (BYTES.load(Relaxed), BLOCKS.load(Relaxed));
    let mut since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let now = (BYTES.load(Relaxed), BLOCKS.load(Relaxed));
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= Duration::from_millis(300) {
            return snapshot();
        }
    }
    panic!("the server kept allocating for 20 s");
}

fn report(phase: &str, before: &Snapshot, after: &Snapshot, n: usize) {
    let per = |a: isize, b: isize| (a - b) as f64 / n as f64;
    let blocks = per(after.blocks, before.blocks);
    let usable = per(after.usable, before.usable);
    println!(
        "\n{phase}: {:.0} B requested, {:.2} blocks, {:.0} B malloc footprint, {:.0} B RSS per connection \
         ({:.1} allocation calls each on the way)",
        per(after.bytes, before.bytes),
        blocks,
        usable + 8.0 * blocks,
        per(after.rss, before.rss),
        per(after.calls, before.calls)
    );
    let mut explained = 0.0;
    for (size, (a, b)) in after.by_size.iter().zip(&before.by_size).enumerate() {
        let d = (a - b) as f64 / n as f64;
        if d.abs() >= 0.25 && size < SIZES - 1 {
            println!("  {size:>5} B blocks: {d:+.2} per connection");
            explained += d * size as f64;
        }
    }
    let rest = per(after.bytes, before.bytes) - explained;
    println!("  shared tables and the rest: {rest:+.0} B per connection");
}

fn upgrade_request(i: usize) -> Vec<u8> {
    let token = taskcast::auth::mint(SECRET.as_bytes(), &format!("load-{i}"), 3600);
    format!(
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Reads until `want` bytes or a blank line ends an HTTP head; no heap.
fn read_some(s: &mut TcpStream, head: bool, want: usize) -> ([u8; 512], usize) {
    let mut buf = [0u8; 512];
    let mut n = 0;
    loop {
        let k = s.read(&mut buf[n..]).expect("read");
        assert!(k > 0, "server closed the connection");
        n += k;
        if (head && buf[..n].windows(4).any(|w| w == b"\r\n\r\n")) || (!head && n >= want) {
            return (buf, n);
        }
    }
}

fn main() {
    let n: usize = std::env::var("CONNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5000);
    println!("per-connection types (inline bytes):");
    for (name, size) in taskcast::server::memory_layout() {
        println!("  {name:<40} {size:>5}");
    }

    let mut config = Config::for_tests(SECRET);
    config.max_connections = n + 100;
    config.max_connections_per_ip = 0;
    let (addr, handle, thread): (SocketAddr, _, _) = taskcast::Server::spawn(config).expect("server");
    let requests: Vec<Vec<u8>> = (0..n).map(upgrade_request).collect();
    let split = requests[0].len() / 2;
    let mut clients: Vec<TcpStream> = Vec::with_capacity(n);
    let ping: [u8; 21] = {
        // A masked text frame (RFC 6455 §5.3: clients mask), mask 0.
        let mut f = [0u8; 21];
        f[0] = 0x81;
        f[1] = 0x80 | 15;
        f[6..].copy_from_slice(br#"{"type":"ping"}"#);
        f
    };
    let base = settled();

    for _ in 0..n {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        clients.push(s);
    }
    let accepted = settled();
    report("1. accepted (TCP only)", &base, &accepted, n);

    for (s, r) in clients.iter_mut().zip(&requests) {
        s.write_all(&r[..split]).expect("write");
    }
    let arriving = settled();
    report("2. upgrade request arriving (first half)", &accepted, &arriving, n);

    for (s, r) in clients.iter_mut().zip(&requests) {
        s.write_all(&r[split..]).expect("write");
        let (buf, len) = read_some(s, true, 0);
        assert!(buf[..len].starts_with(b"HTTP/1.1 101"), "no 101");
    }
    let idle = settled();
    report("3. upgraded, authenticated, idle", &arriving, &idle, n);
    if std::env::var("TRIM").is_ok() {
        unsafe { libc::malloc_trim(0) };
        let t = snapshot();
        report("   after malloc_trim", &arriving, &t, n);
    }
    report("   total for an idle WebSocket (1+2+3)", &base, &idle, n);

    for s in clients.iter_mut() {
        s.write_all(&ping).expect("write");
        let (buf, len) = read_some(s, false, 17);
        assert!(buf[..len].ends_with(br#"{"type":"pong"}"#), "no pong");
    }
    let after = settled();
    report("4. idle again after one client message", &idle, &after, n);
    report("   total for an idle WebSocket after a message", &base, &after, n);

    drop(clients);
    handle.shutdown();
    let _ = thread.join();
}
