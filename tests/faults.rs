//! Faults: resets mid-frame and mid-request, half-finished broadcasts,
//! running out of file descriptors, SIGTERM under load.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tungstenite::Message;

/// Closes `s` with an RST instead of a FIN (SO_LINGER with a zero timeout).
fn reset(s: TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid fd and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    assert_eq!(rc, 0);
    drop(s);
}

#[test]
fn reset_mid_frame_and_mid_request_harms_no_one() {
    let s = start();
    let mut bystander = ws(s.addr, &token("bystander"));
    let victim = ws(s.addr, &token("victim"));
    wait_clients(s.addr, 2);
    // Half a masked text frame (header says 100 bytes, 10 arrive), then RST.
    let mut sock = victim.into_inner();
    sock.write_all(&[0x81, 0x80 | 100, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    reset(sock);
    // Half a request head, then RST; half a body, then RST.
    let mut h = TcpStream::connect(s.addr).unwrap();
    h.write_all(b"GET /health HTTP/1.1\r\nHo").unwrap();
    reset(h);
    let mut h = TcpStream::connect(s.addr).unwrap();
    let raw = broadcast_request(&token("srv"), r#"{"type":"task_created","data":1}"#);
    h.write_all(&raw.as_bytes()[..raw.len() - 5]).unwrap();
    reset(h);

    wait_clients(s.addr, 1);
    assert_eq!(broadcast(s.addr, &token("srv"), r#"{"type":"task_created","data":"ok"}"#).status, 200);
    assert_eq!(next_json(&mut bystander)["payload"], "ok");
}

#[test]
fn half_sent_broadcast_is_never_delivered() {
    let s = start();
    let mut c = ws(s.addr, &token("u"));
    wait_clients(s.addr, 1);
    let t = token("srv");
    // Slowly, then gone: head and half the body, a pause, then FIN.
    let raw = broadcast_request(&t, r#"{"type":"task_created","data":"partial"}"#);
    let cut = raw.len() - 10;
    let mut h = TcpStream::connect(s.addr).unwrap();
    for chunk in raw.as_bytes()[..cut].chunks(20) {
        h.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    h.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    h.set_read_timeout(Some(WAIT)).unwrap();
    h.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "an incomplete request gets no answer: {:?}", String::from_utf8_lossy(&rest));
    // The next message the client sees is the next complete broadcast.
    assert_eq!(broadcast(s.addr, &t, r#"{"type":"task_created","data":"whole"}"#).status, 200);
    assert_eq!(next_json(&mut c)["payload"], "whole");
}

/// The binary with its open-file limit (soft and hard) set to `nofile`.
fn start_limited(nofile: u64) -> Binary {
    use std::os::unix::process::CommandExt;
    let mut cmd = taskcast_cmd();
    cmd.envs([("JWT_SECRET", SECRET), ("MAX_CONNECTIONS", "100000"), ("RUST_LOG", "warn,taskcast::server=info")])
        .stdout(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe; runs in the child before exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit { rlim_cur: nofile, rlim_max: nofile };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    start_binary(&mut cmd)
}

#[test]
fn out_of_fds_pauses_accepting_without_spinning_then_recovers() {
    let mut srv = start_limited(40);
    let addr = srv.addr;
    // Far more clients than fds: some upgrades succeed, the rest wait in
    // the backlog while the server is at EMFILE.
    let mut clients = Vec::new();
    for i in 0..30 {
        match ws_try(addr, &format!("/ws?token={}", token(&format!("c{i}"))), &[]) {
            Ok(c) => clients.push(c),
            Err(e) => panic!("refused: {e:?}"),
        }
    }
    let mut stuck = Vec::new();
    for _ in 0..20 {
        let s = TcpStream::connect(addr).unwrap(); // completes in the kernel backlog
        stuck.push(s);
    }
    let before = srv.cpu_secs();
    std::thread::sleep(Duration::from_millis(1000));
    let used = srv.cpu_secs() - before;
    assert!(used < 0.3, "server burned {used:.2}s of CPU in 1s while out of fds (spinning?)");
    srv.wait_log("pausing accepts"); // EMFILE was reached

    // Clients leave: service resumes, a new client gets in.
    drop(clients);
    drop(stuck);
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(mut c) = ws_try(addr, &format!("/ws?token={}", token("late")), &[]) {
            c.send(Message::text(r#"{"type":"ping"}"#)).unwrap();
            assert_eq!(next_json(&mut c)["type"], "pong");
            break;
        }
        assert!(Instant::now() < deadline, "service did not resume");
        std::thread::sleep(Duration::from_millis(50));
    }
    srv.signal(libc::SIGINT);
    assert!(srv.wait_exit(WAIT).success());
}

#[test]
fn sigterm_during_heavy_fan_out_exits_0_in_grace() {
    let mut srv = start_binary(
        taskcast_cmd()
            // DRAIN_SECS=0: every client gets its 1012 at once, then the grace.
            .envs([
                ("JWT_SECRET", SECRET),
                ("SHUTDOWN_GRACE_SECS", "3"),
                ("BROADCAST_RATE_PER_SEC", "0"),
                ("DRAIN_SECS", "0"),
            ])
            .stdout(Stdio::null()),
    );
    let addr = srv.addr;
    let clients: Vec<Ws> = (0..40).map(|i| ws(addr, &token(&format!("c{i}")))).collect();
    wait_clients(addr, 40);
    // Readers drain in threads; a publisher hammers broadcasts.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                loop {
                    match c.read() {
                        Ok(Message::Close(f)) => return f.map(|f| u16::from(f.code)),
                        Ok(_) => {}
                        // A clean TCP close after the grace period is allowed too.
                        Err(_) => return None,
                    }
                }
            })
        })
        .collect();
    let publisher = std::thread::spawn(move || {
        let t = token("srv");
        let body = format!(r#"{{"type":"task_updated","data":"{}"}}"#, "x".repeat(2000));
        let mut h = Http::connect(addr);
        for _ in 0..100_000 {
            if h.stream.write_all(broadcast_request(&t, &body).as_bytes()).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    srv.signal(libc::SIGTERM);
    let status = srv.wait_exit(Duration::from_secs(6));
    assert_eq!(status.code(), Some(0));
    assert!(t0.elapsed() < Duration::from_millis(4500), "took {:?}", t0.elapsed());
    for r in readers {
        let code = r.join().unwrap();
        assert!(matches!(code, Some(1012) | None), "close code {code:?}");
    }
    let _ = publisher.join();
}
