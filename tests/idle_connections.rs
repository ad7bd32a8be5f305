//! Issue 21: an idle WebSocket holds no protocol state — tungstenite's
//! context and the frame meter are lent to a connection while it reads and
//! taken back once nothing is partly read. What a client sends across
//! pauses (each pause ends a read with WouldBlock) must be read exactly as
//! if it came at once, and what must outlive a pause (the message-rate
//! bucket, a message in fragments) does.
//!
//! Raw sockets, bytes written piece by piece with TCP_NODELAY and a pause
//! between pieces, so the server reads each piece in a turn of its own.

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Long enough that the server has read (and run out of) one piece before
/// the next is sent.
const PAUSE: Duration = Duration::from_millis(100);

/// Upgrades a raw socket; returns it just past the 101 head.
fn raw_ws(addr: SocketAddr, token: &str) -> TcpStream {
    raw_ws_at(addr, &format!("/ws?token={token}"))
}

/// Upgrades a raw socket at `target` (`/ws?auth=message`: in band).
fn raw_ws_at(addr: SocketAddr, target: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed during the handshake");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "), "{}", String::from_utf8_lossy(&head));
    s
}

/// A masked client frame (RFC 6455 §5.2), with a real mask key.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n @ 0..=125 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Writes `bytes` to each client in pieces cut at `cuts`: piece 1 to every
/// client, a pause, piece 2 to every client, and so on — so each client's
/// frame is partly read while the others' are read too.
fn send_in_pieces(clients: &mut [TcpStream], bytes: &[u8], cuts: &[usize]) {
    let mut from = 0;
    for &to in cuts.iter().chain([bytes.len()].iter()) {
        for c in clients.iter_mut() {
            c.write_all(&bytes[from..to]).unwrap();
        }
        std::thread::sleep(PAUSE);
        from = to;
    }
}

/// Reads one server frame (unmasked): opcode and payload.
fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).unwrap();
            u16::from_be_bytes(l) as usize
        }
        127 => panic!("no server frame here is that long"),
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).unwrap();
    (h[0] & 0x0f, payload)
}

/// The next text frame's text, skipping our pings.
fn read_text(s: &mut TcpStream) -> String {
    loop {
        match read_frame(s) {
            (0x1, p) => return String::from_utf8(p).unwrap(),
            (0x9, _) => {}
            (op, p) => panic!("opcode {op:#x}: {:?}", String::from_utf8_lossy(&p)),
        }
    }
}

#[test]
fn frames_split_across_pauses_are_read_whole() {
    let s = start();
    let mut cs: Vec<TcpStream> = (0..3).map(|i| raw_ws(s.addr, &token(&format!("u{i}")))).collect();
    let ping = frame(true, 0x1, br#"{"type":"ping"}"#);
    // Cut inside the header, inside the mask, inside the payload.
    send_in_pieces(&mut cs, &ping, &[1, 4, 9]);
    for c in cs.iter_mut() {
        assert_eq!(read_text(c), r#"{"type":"pong"}"#);
    }
    // A 16-bit length, cut between its two bytes; then a whole one.
    let long = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(200));
    send_in_pieces(&mut cs, &frame(true, 0x1, long.as_bytes()), &[3, 100]);
    for c in cs.iter_mut() {
        assert_eq!(read_text(c), r#"{"type":"pong"}"#);
        c.write_all(&ping).unwrap();
        assert_eq!(read_text(c), r#"{"type":"pong"}"#);
    }
}

#[test]
fn a_message_in_fragments_across_pauses_is_read_whole() {
    let s = start();
    let mut cs: Vec<TcpStream> = (0..3).map(|i| raw_ws(s.addr, &token(&format!("u{i}")))).collect();
    // Text in two fragments, a protocol ping between them (RFC 6455 §5.4:
    // control frames may be injected in the middle of a fragmented message);
    // each client's pieces interleaved with the others'.
    for piece in [frame(false, 0x1, br#"{"type":"#), frame(true, 0x9, b"mid")] {
        for c in cs.iter_mut() {
            c.write_all(&piece).unwrap();
        }
        std::thread::sleep(PAUSE);
    }
    for c in cs.iter_mut() {
        assert_eq!(read_frame(c), (0xA, b"mid".to_vec()), "the ping is answered mid-message");
        c.write_all(&frame(true, 0x0, br#""ping"}"#)).unwrap();
    }
    for c in cs.iter_mut() {
        assert_eq!(read_text(c), r#"{"type":"pong"}"#);
    }
}

#[test]
fn the_message_rate_bucket_outlives_idle_stretches() {
    let mut cfg = config();
    cfg.client_msg_rate = 1;
    cfg.client_msg_burst = 3;
    let s = start_with(cfg);
    let mut c = raw_ws(s.addr, &token("u"));
    let ping = frame(true, 0x1, br#"{"type":"ping"}"#);
    // Three messages, each answered (so the connection is idle between
    // them): the burst. Were the bucket refilled whenever the connection
    // went idle, a fourth right away would pass too.
    for _ in 0..3 {
        c.write_all(&ping).unwrap();
        assert_eq!(read_text(&mut c), r#"{"type":"pong"}"#);
    }
    c.write_all(&ping).unwrap();
    let (op, payload) = read_frame(&mut c);
    assert_eq!(op, 0x8, "a close frame, not {:?}", String::from_utf8_lossy(&payload));
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1008);
}

/// `text` as a fragmented text message: fragments of `size` bytes, each
/// its own frame (the first opcode 1, the rest continuations).
fn fragments(text: &str, size: usize) -> Vec<Vec<u8>> {
    let chunks: Vec<&[u8]> = text.as_bytes().chunks(size).collect();
    let last = chunks.len() - 1;
    chunks.iter().enumerate().map(|(i, c)| frame(i == last, if i == 0 { 0x1 } else { 0x0 }, c)).collect()
}

/// Sends each frame to each client, with a pause after each round: every
/// fragment ends a read, so the connection is between frames (but inside
/// a message) at every pause.
fn send_with_pauses(clients: &mut [TcpStream], frames: &[Vec<u8>]) {
    for f in frames {
        for c in clients.iter_mut() {
            c.write_all(f).unwrap();
        }
        std::thread::sleep(PAUSE);
    }
}

/// The close code of the next close frame (pings skipped).
fn close_code(s: &mut TcpStream) -> u16 {
    loop {
        match read_frame(s) {
            (0x8, p) => return u16::from_be_bytes([p[0], p[1]]),
            (0x9, _) => {}
            (op, p) => panic!("opcode {op:#x}: {:?}", String::from_utf8_lossy(&p)),
        }
    }
}

#[test]
fn a_fragmented_message_keeps_its_limit_across_pauses() {
    // MAX_MESSAGE_BYTES 512 (MAX_AUTH_MESSAGE_BYTES 8192): an ordinary
    // message in 100-byte fragments is refused (1009) at the fragment that
    // takes it past 512, though the connection went idle after each one.
    let s = start();
    let mut cs: Vec<TcpStream> = (0..3).map(|i| raw_ws(s.addr, &token(&format!("u{i}")))).collect();
    let text = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(2000));
    send_with_pauses(&mut cs, &fragments(&text, 100)[..6]);
    for c in cs.iter_mut() {
        assert_eq!(close_code(c), 1009);
    }
}

#[test]
fn in_band_auth_in_fragments_across_pauses() {
    // An idle in-band connection holds no protocol state; its auth message
    // may come in fragments past MAX_MESSAGE_BYTES (its start says it may
    // carry a token), each read in a turn of its own.
    let s = start();
    let mut cs: Vec<TcpStream> = (0..3).map(|_| raw_ws_at(s.addr, "/ws?auth=message")).collect();
    std::thread::sleep(PAUSE);
    for (i, c) in cs.iter_mut().enumerate() {
        let text = format!(r#"{{"type":"auth","token":"{}","pad":"{}"}}"#, token(&format!("u{i}")), "x".repeat(900));
        assert!(text.len() > 512);
        send_with_pauses(std::slice::from_mut(c), &fragments(&text, 150));
    }
    let ping = frame(true, 0x1, br#"{"type":"ping"}"#);
    for c in cs.iter_mut() {
        assert_eq!(read_text(c), r#"{"type":"auth_ok"}"#);
        c.write_all(&ping).unwrap();
        assert_eq!(read_text(c), r#"{"type":"pong"}"#);
    }
}
