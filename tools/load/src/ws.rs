//! Minimal client side of RFC 6455: the upgrade request/response and frame
//! parsing/encoding. Hand-written so that a connection costs no more than a
//! few hundred bytes of state (no per-connection 128 KiB buffers).

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// One parsed (unmasked, server-to-client) frame borrowed from the input.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub fin: bool,
    pub opcode: u8,
    pub payload: &'a [u8],
}

#[derive(Debug, PartialEq, Eq)]
pub enum FrameParse<'a> {
    /// More bytes are needed.
    Incomplete,
    /// A whole frame, and how many input bytes it took.
    Frame(Frame<'a>, usize),
    /// Protocol violation by the server.
    Error(&'static str),
}

/// Parses one frame at the start of `buf`. Server frames must not be masked.
pub fn parse_frame(buf: &[u8], max_payload: u64) -> FrameParse<'_> {
    if buf.len() < 2 {
        return FrameParse::Incomplete;
    }
    let b0 = buf[0];
    let b1 = buf[1];
    let fin = b0 & 0x80 != 0;
    if b0 & 0x70 != 0 {
        return FrameParse::Error("reserved bits set in frame header");
    }
    let opcode = b0 & 0x0F;
    if b1 & 0x80 != 0 {
        return FrameParse::Error("server sent a masked frame");
    }
    let (len, header) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return FrameParse::Incomplete;
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4usize)
        }
        127 => {
            if buf.len() < 10 {
                return FrameParse::Incomplete;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(b);
            if len >> 63 != 0 {
                return FrameParse::Error("64-bit frame length has its top bit set");
            }
            (len, 10usize)
        }
        n => (n as u64, 2usize),
    };
    match opcode {
        OP_CONT | OP_TEXT | OP_BINARY => {}
        OP_CLOSE | OP_PING | OP_PONG => {
            if !fin {
                return FrameParse::Error("fragmented control frame");
            }
            if len > 125 {
                return FrameParse::Error("control frame longer than 125 bytes");
            }
        }
        _ => return FrameParse::Error("unknown opcode"),
    }
    if len > max_payload {
        return FrameParse::Error("frame larger than the client's limit");
    }
    let total = header + len as usize;
    if buf.len() < total {
        return FrameParse::Incomplete;
    }
    FrameParse::Frame(Frame { fin, opcode, payload: &buf[header..total] }, total)
}

/// Appends a masked client frame (FIN set) to `out`.
pub fn encode_client_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | (opcode & 0x0F));
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// Cheap xorshift64* generator for masking keys (not cryptographic; a load
/// generator only needs the keys to vary).
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        XorShift(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_le_bytes()
    }
}

/// Finds the number following the first `"seq":` in a message without
/// parsing the JSON.
pub fn find_seq(msg: &[u8]) -> Option<u64> {
    find_uint_after(msg, b"\"seq\":")
}

/// Finds the unsigned integer that follows the first occurrence of `key`
/// (spaces allowed in between).
pub fn find_uint_after(msg: &[u8], key: &[u8]) -> Option<u64> {
    let first = *key.first()?;
    let mut i = 0;
    while i + key.len() <= msg.len() {
        if msg[i] == first && &msg[i..i + key.len()] == key {
            let mut j = i + key.len();
            while j < msg.len() && msg[j] == b' ' {
                j += 1;
            }
            let start = j;
            let mut v: u64 = 0;
            while j < msg.len() && msg[j].is_ascii_digit() {
                v = v.checked_mul(10)?.checked_add((msg[j] - b'0') as u64)?;
                j += 1;
            }
            return if j > start { Some(v) } else { None };
        }
        i += 1;
    }
    None
}

/// Builds the HTTP upgrade request.
pub fn build_upgrade_request(host_header: &str, path: &str, key: &str, bearer: Option<&str>) -> Vec<u8> {
    let mut s = String::with_capacity(256 + bearer.map_or(0, str::len));
    s.push_str("GET ");
    s.push_str(path);
    s.push_str(" HTTP/1.1\r\nHost: ");
    s.push_str(host_header);
    s.push_str("\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ");
    s.push_str(key);
    s.push_str("\r\n");
    if let Some(t) = bearer {
        s.push_str("Authorization: Bearer ");
        s.push_str(t);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

#[derive(Debug, PartialEq, Eq)]
pub enum Upgrade {
    Incomplete,
    /// 101 with a correct accept key; `consumed` bytes belong to the response
    /// (anything after them is already WebSocket frames).
    Upgraded {
        consumed: usize,
    },
    /// The server answered with another status (body as far as received).
    Rejected {
        status: u16,
        body: String,
    },
    Invalid(String),
}

fn header_has_token(value: &[u8], token: &str) -> bool {
    std::str::from_utf8(value).map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))).unwrap_or(false)
}

/// Parses the server's answer to the upgrade request.
pub fn parse_upgrade_response(buf: &[u8], expected_accept: &[u8]) -> Upgrade {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let consumed = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > 16 * 1024 {
                return Upgrade::Invalid("upgrade response headers exceed 16 KiB".into());
            }
            return Upgrade::Incomplete;
        }
        Err(e) => return Upgrade::Invalid(format!("bad HTTP response: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    if status != 101 {
        let body = String::from_utf8_lossy(&buf[consumed..buf.len().min(consumed + 512)]).trim().to_string();
        return Upgrade::Rejected { status, body };
    }
    let mut upgrade_ok = false;
    let mut connection_ok = false;
    let mut accept: Option<&[u8]> = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade_ok = header_has_token(h.value, "websocket");
        } else if h.name.eq_ignore_ascii_case("connection") {
            connection_ok = header_has_token(h.value, "upgrade");
        } else if h.name.eq_ignore_ascii_case("sec-websocket-accept") {
            accept = Some(h.value);
        }
    }
    if !upgrade_ok {
        return Upgrade::Invalid("101 without `Upgrade: websocket`".into());
    }
    if !connection_ok {
        return Upgrade::Invalid("101 without `Connection: Upgrade`".into());
    }
    match accept {
        None => Upgrade::Invalid("101 without Sec-WebSocket-Accept".into()),
        Some(a) if a.trim_ascii() != expected_accept => {
            Upgrade::Invalid("Sec-WebSocket-Accept does not match the key".into())
        }
        Some(_) => Upgrade::Upgraded { consumed },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_small_text_frame() {
        let mut buf = vec![0x81, 5];
        buf.extend_from_slice(b"hello");
        buf.extend_from_slice(&[0x89, 0]); // a ping after it
        match parse_frame(&buf, 1 << 20) {
            FrameParse::Frame(f, n) => {
                assert!(f.fin);
                assert_eq!(f.opcode, OP_TEXT);
                assert_eq!(f.payload, b"hello");
                assert_eq!(n, 7);
                match parse_frame(&buf[n..], 1 << 20) {
                    FrameParse::Frame(p, 2) => assert_eq!(p.opcode, OP_PING),
                    other => panic!("{other:?}"),
                }
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_16_and_64_bit_lengths() {
        let payload = vec![b'a'; 300];
        let mut buf = vec![0x81, 126];
        buf.extend_from_slice(&300u16.to_be_bytes());
        buf.extend_from_slice(&payload);
        assert!(matches!(parse_frame(&buf, 1 << 20), FrameParse::Frame(ref f, 304) if f.payload.len() == 300));
        // every truncation is incomplete
        for cut in 0..buf.len() {
            assert_eq!(parse_frame(&buf[..cut], 1 << 20), FrameParse::Incomplete);
        }
        let payload = vec![b'b'; 70_000];
        let mut buf = vec![0x82, 127];
        buf.extend_from_slice(&70_000u64.to_be_bytes());
        buf.extend_from_slice(&payload);
        match parse_frame(&buf, 1 << 20) {
            FrameParse::Frame(f, n) => {
                assert_eq!(f.opcode, OP_BINARY);
                assert_eq!(f.payload.len(), 70_000);
                assert_eq!(n, 70_010);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_frame(&buf, 1000), FrameParse::Error("frame larger than the client's limit"));
    }

    #[test]
    fn rejects_protocol_violations() {
        assert!(matches!(parse_frame(&[0x81, 0x85, 0, 0, 0, 0], 100), FrameParse::Error(_)));
        assert!(matches!(parse_frame(&[0xC1, 0], 100), FrameParse::Error(_)));
        assert!(matches!(parse_frame(&[0x09, 0], 100), FrameParse::Error(_))); // non-fin ping
        assert!(matches!(parse_frame(&[0x89, 126, 0, 200], 1000), FrameParse::Error(_)));
        assert!(matches!(parse_frame(&[0x83, 0], 100), FrameParse::Error(_)));
        // fragmented text is fine
        assert!(matches!(parse_frame(&[0x01, 1, b'x'], 100), FrameParse::Frame(ref f, 3) if !f.fin));
    }

    #[test]
    fn encodes_masked_frames() {
        let mut out = Vec::new();
        encode_client_frame(&mut out, OP_PONG, b"abc", [1, 2, 3, 4]);
        assert_eq!(out, vec![0x8A, 0x83, 1, 2, 3, 4, b'a' ^ 1, b'b' ^ 2, b'c' ^ 3]);
        let mut out = Vec::new();
        encode_client_frame(&mut out, OP_TEXT, &[0u8; 200], [0, 0, 0, 0]);
        assert_eq!(&out[..4], &[0x81, 0x80 | 126, 0, 200]);
        assert_eq!(out.len(), 4 + 4 + 200);
    }

    #[test]
    fn finds_seq() {
        assert_eq!(find_seq(br#"{"type":"task_updated","payload":{"seq":12345,"zpad":"xx"}}"#), Some(12345));
        assert_eq!(find_seq(br#"{"payload":{"zpad":"x","seq": 7}}"#), Some(7));
        assert_eq!(find_seq(br#"{"seq":"7"}"#), None);
        assert_eq!(find_seq(br#"{"sequence":1}"#), None);
        assert_eq!(find_seq(b""), None);
        assert_eq!(find_seq(br#"{"seq":0}"#), Some(0));
    }

    #[test]
    fn upgrade_roundtrip() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let req = build_upgrade_request("127.0.0.1:8080", "/ws", key, Some("tok"));
        let req = String::from_utf8(req).unwrap();
        assert!(req.starts_with("GET /ws HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        assert!(req.contains("Authorization: Bearer tok\r\n"));
        assert!(req.ends_with("\r\n\r\n"));

        let mut resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes();
        resp.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
        let b = &resp[..];
        assert_eq!(parse_upgrade_response(&b[..20], accept.as_bytes()), Upgrade::Incomplete);
        assert_eq!(parse_upgrade_response(b, accept.as_bytes()), Upgrade::Upgraded { consumed: b.len() - 4 });
        assert!(matches!(parse_upgrade_response(b, b"wrong"), Upgrade::Invalid(_)));
        let r = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 25\r\n\r\n{\"error\":\"invalid token\"}";
        assert_eq!(
            parse_upgrade_response(r, b""),
            Upgrade::Rejected { status: 401, body: "{\"error\":\"invalid token\"}".into() }
        );
    }
}
