//! A WebSocket client over a bare `TcpStream`, for tests that need what a
//! tungstenite client hides: a client that stops reading (with a small
//! receive buffer, so the server's output piles up in its own queue), every
//! frame the server sends in order — including frames after its close
//! frame — and writes from one thread while another reads.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::WAIT;

/// Opens a WebSocket with `?token=`; returns the socket just past the 101
/// head. `rcvbuf`: SO_RCVBUF set before connecting (the kernel then
/// advertises a small window, so a client that stops reading stops taking
/// the server's bytes after a few KiB).
pub fn connect(addr: SocketAddr, token: &str, rcvbuf: Option<usize>) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n).unwrap();
    }
    sock.connect_timeout(&addr.into(), WAIT).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_nodelay(true).unwrap();
    write!(
        s,
        "GET /ws?token={token} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed during the handshake: {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "), "{}", String::from_utf8_lossy(&head));
    s
}

/// A masked client frame (mask key 0, so the payload goes as is).
pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// A text frame.
pub fn text(payload: &str) -> Vec<u8> {
    frame(0x1, payload.as_bytes())
}

/// A close frame with `code`.
pub fn close(code: u16) -> Vec<u8> {
    frame(0x8, &code.to_be_bytes())
}

/// One frame the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Close(u16),
    /// Ping, pong, binary or continuation: (opcode, length).
    Other(u8, usize),
}

/// Splits the server's byte stream into frames.
#[derive(Default)]
pub struct Frames {
    buf: Vec<u8>,
}

impl Frames {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame in what was pushed, if any (server frames are
    /// unmasked and, from taskcast, never fragmented).
    pub fn next(&mut self) -> Option<Frame> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        let (len, at) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        if b.len() < at + len {
            return None;
        }
        let payload = &b[at..at + len];
        let f = match b[0] & 0x0f {
            0x1 => Frame::Text(String::from_utf8_lossy(payload).into_owned()),
            0x8 => Frame::Close(if payload.len() >= 2 { u16::from_be_bytes([payload[0], payload[1]]) } else { 1005 }),
            op => Frame::Other(op, len),
        };
        self.buf.drain(..at + len);
        Some(f)
    }
}

/// Reads every frame until the server ends the connection (EOF or reset)
/// or `wait` passes, answering nothing. Returns the frames in order and
/// whether the connection ended.
pub fn read_to_end(s: &mut TcpStream, wait: Duration) -> (Vec<Frame>, bool) {
    let deadline = Instant::now() + wait;
    let mut frames = Frames::default();
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut ended = false;
    while Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) => {
                ended = true;
                break;
            }
            Ok(n) => frames.push(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                ended = true;
                break;
            }
        }
        while let Some(f) = frames.next() {
            got.push(f);
        }
    }
    while let Some(f) = frames.next() {
        got.push(f);
    }
    (got, ended)
}

/// Reads frames until the server's close frame (bounded by `wait`), then
/// keeps reading for `after` to catch anything sent behind it. Returns
/// (frames before the close, the close code, frames after it).
pub fn read_past_close(s: &mut TcpStream, wait: Duration, after: Duration) -> (Vec<Frame>, Option<u16>, Vec<Frame>) {
    let deadline = Instant::now() + wait;
    let mut frames = Frames::default();
    let mut before = Vec::new();
    let mut code = None;
    let mut behind = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut until = deadline;
    while Instant::now() < until {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => frames.push(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
        while let Some(f) = frames.next() {
            match (&code, f) {
                (None, Frame::Close(c)) => {
                    code = Some(c);
                    until = Instant::now() + after;
                }
                (None, f) => before.push(f),
                (Some(_), f) => behind.push(f),
            }
        }
    }
    (before, code, behind)
}
