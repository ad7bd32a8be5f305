//! HTTP/1.1 request heads (httparse) and responses.
//!
//! [`parse_head`] is called on a connection's read buffer each time bytes
//! arrive; it answers "not yet", a [`Head`] (with the body length it
//! announces), or the error status to send. Nothing a peer sends is trusted:
//! the head is bounded (431), Content-Length must be one plain number within
//! the body limit (400/413), and chunked bodies are refused with 411 rather
//! than half-supported (RFC 9112 §6.3 lets a server require a length).

use std::fmt::Write as _;

/// Request line + headers larger than this get 431.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Headers beyond this count get 431.
pub const MAX_HEADERS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Options,
    Other,
}

/// The parts of a request head that taskcast acts on.
#[derive(Debug, Default, Clone)]
pub struct Head {
    pub method: Option<Method>,
    /// The path without the query string (safe to log).
    pub path: String,
    /// The query string, if any. It may carry a token: never log it.
    pub query: Option<String>,
    /// HTTP/1.1 keeps the connection by default, 1.0 closes it (RFC 9112 §9.3);
    /// `Connection: close` closes it whatever else the field lists (§9.6).
    pub keep_alive: bool,
    /// `Expect: 100-continue` in an HTTP/1.1 request: the client waits for
    /// `100 Continue` (or a final answer) before sending its body (RFC 9110
    /// §10.1.1; an HTTP/1.0 request's expectation is ignored, as it says).
    pub expect_continue: bool,
    /// Body length announced by Content-Length (0 when absent).
    pub content_length: usize,
    /// Bytes of request line + headers, i.e. where the body starts.
    pub head_len: usize,
    pub origin: Option<String>,
    pub authorization: Option<String>,
    pub api_key: Option<String>,
    pub content_type: Option<String>,
    /// `Upgrade: websocket` present.
    pub upgrade_websocket: bool,
    /// `Connection: upgrade` present.
    pub connection_upgrade: bool,
    pub ws_key: Option<String>,
    pub ws_version: Option<String>,
    /// `Access-Control-Request-Method`: marks a CORS preflight.
    pub cors_request_method: Option<String>,
    /// `X-Forwarded-For` (repeated headers joined with commas, in order),
    /// read only from a trusted proxy (see [`crate::proxies`]).
    pub forwarded_for: Option<String>,
    /// `Host` (the development demo page checks it is a loopback name), or
    /// the authority of an absolute-form target, which replaces it.
    pub host: Option<String>,
    /// `Idempotency-Key` of a broadcast (repeated headers joined with
    /// ", ", which no valid key contains: an ambiguous key is refused).
    pub idempotency_key: Option<String>,
}

impl Method {
    /// The method's name, for logs (`OTHER` for any we do not serve).
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Options => "OPTIONS",
            Method::Other => "OTHER",
        }
    }
}

impl Head {
    pub fn method(&self) -> Method {
        self.method.unwrap_or(Method::Other)
    }

    /// The value of query parameter `name` (no percent-decoding: JWTs are
    /// base64url and dots, which need none).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.as_deref()?.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// The token from `Authorization: Bearer ...`, else from `?token=`.
    pub fn bearer_token(&self) -> Option<&str> {
        self.authorization_bearer().or_else(|| self.query_param("token"))
    }

    /// The token from `Authorization: Bearer ...` only.
    pub fn authorization_bearer(&self) -> Option<&str> {
        let v = self.authorization.as_deref()?.trim();
        let (scheme, rest) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    }
}

/// A request the server refuses before routing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub message: &'static str,
}

const fn reject(status: u16, message: &'static str) -> Reject {
    Reject { status, message }
}

/// Parses the head at the start of `buf`. `Ok(None)`: incomplete, read more.
pub fn parse_head(buf: &[u8], max_body: usize) -> Result<Option<Head>, Reject> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD_BYTES => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD_BYTES => return Ok(None),
        Ok(_) => return Err(reject(431, "request head exceeds 16 KiB")),
        Err(httparse::Error::TooManyHeaders) => return Err(reject(431, "too many headers")),
        Err(_) => return Err(reject(400, "malformed HTTP request")),
    };

    let (authority, target) = split_target(req.path.unwrap_or("/"))?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (target, None),
    };
    // `http://host` and `http://host?q` name the root.
    let path = if path.is_empty() { "/" } else { path };
    let mut head = Head {
        method: Some(match req.method.unwrap_or("") {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }),
        path: path.to_string(),
        query,
        keep_alive: req.version == Some(1),
        head_len,
        ..Head::default()
    };

    let mut content_length: Option<usize> = None;
    let (mut saw_close, mut saw_keep_alive) = (false, false);
    for h in req.headers.iter() {
        let name = h.name;
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        // Only headers we act on must be text; others pass unread.
        let text = || std::str::from_utf8(h.value).map(str::trim).map_err(|_| reject(400, "header value is not UTF-8"));
        if is("content-length") {
            let v = text()?;
            // RFC 9110 §8.6: one decimal number; differing repeats are an error.
            if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(reject(400, "invalid Content-Length"));
            }
            let n: usize = v.parse().map_err(|_| reject(400, "invalid Content-Length"))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(reject(400, "conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if is("transfer-encoding") {
            // Content-Length and Transfer-Encoding together is the classic
            // smuggling vector (RFC 9112 §6.1); chunked alone needs a length.
            return Err(reject(411, "chunked bodies are not supported: send Content-Length"));
        } else if is("connection") {
            for token in text()?.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    saw_close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    saw_keep_alive = true;
                } else if token.eq_ignore_ascii_case("upgrade") {
                    head.connection_upgrade = true;
                }
            }
        } else if is("expect") {
            head.expect_continue = text()?.eq_ignore_ascii_case("100-continue");
        } else if is("upgrade") {
            head.upgrade_websocket = text()?.split(',').any(|p| p.trim().eq_ignore_ascii_case("websocket"));
        } else if is("origin") {
            head.origin = Some(text()?.to_string());
        } else if is("authorization") {
            head.authorization = Some(text()?.to_string());
        } else if is("x-api-key") {
            head.api_key = Some(text()?.to_string());
        } else if is("content-type") {
            head.content_type = Some(text()?.to_string());
        } else if is("sec-websocket-key") {
            head.ws_key = Some(text()?.to_string());
        } else if is("sec-websocket-version") {
            head.ws_version = Some(text()?.to_string());
        } else if is("x-forwarded-for") {
            // Repeated headers are one comma-separated list (RFC 9110 §5.3).
            let v = text()?;
            head.forwarded_for = Some(match head.forwarded_for.take() {
                Some(earlier) => format!("{earlier}, {v}"),
                None => v.to_string(),
            });
        } else if is("idempotency-key") {
            let v = text()?;
            head.idempotency_key = Some(match head.idempotency_key.take() {
                Some(earlier) => format!("{earlier}, {v}"),
                None => v.to_string(),
            });
        } else if is("host") {
            head.host = Some(text()?.to_string());
        } else if is("access-control-request-method") {
            head.cors_request_method = Some(text()?.to_string());
        }
    }
    // RFC 9112 §9.6: a "close" option means the connection closes after
    // this response, whatever else Connection lists (`close, keep-alive`).
    head.keep_alive = !saw_close && (head.keep_alive || saw_keep_alive);
    // RFC 9110 §10.1.1: only an HTTP/1.1 client waits for 100 Continue.
    head.expect_continue &= req.version == Some(1);
    // RFC 9112 §3.2.2: with an absolute-form target, the Host field is
    // ignored and the target's authority used instead.
    if let Some(authority) = authority {
        head.host = Some(authority.to_string());
    }
    head.content_length = content_length.unwrap_or(0);
    if head.content_length > max_body {
        return Err(reject(413, "request body too large"));
    }
    Ok(Some(head))
}

/// Splits an absolute-form request target (`http://host/health?x`) into
/// its authority and the rest (`/health?x`; empty for `http://host`); any
/// other target is returned as it is, with no authority.
///
/// RFC 9112 §3.2.2: "a server MUST accept the absolute-form in requests
/// even though most HTTP/1.1 clients will only send the absolute-form to a
/// proxy". RFC 9110 §4.2.1: an http(s) URI with an empty host "MUST" be
/// rejected as invalid; §4.2.4: userinfo is deprecated, and a recipient
/// "SHOULD parse for userinfo and treat its presence as an error" — both 400.
fn split_target(target: &str) -> Result<(Option<&str>, &str), Reject> {
    let scheme_len = ["http://", "https://"]
        .iter()
        .find(|s| target.as_bytes().get(..s.len()).is_some_and(|p| p.eq_ignore_ascii_case(s.as_bytes())))
        .map(|s| s.len());
    let Some(scheme_len) = scheme_len else {
        return Ok((None, target));
    };
    let rest = &target[scheme_len..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() {
        return Err(reject(400, "absolute request target has no host"));
    }
    if authority.contains('@') {
        return Err(reject(400, "request target must not carry userinfo"));
    }
    Ok((Some(authority), path))
}

/// The reason phrase and the short machine-readable error code of a status.
pub fn status_text(status: u16) -> (&'static str, &'static str) {
    match status {
        101 => ("Switching Protocols", "switching_protocols"),
        200 => ("OK", "ok"),
        204 => ("No Content", "no_content"),
        400 => ("Bad Request", "bad_request"),
        401 => ("Unauthorized", "unauthorized"),
        403 => ("Forbidden", "forbidden"),
        404 => ("Not Found", "not_found"),
        405 => ("Method Not Allowed", "method_not_allowed"),
        408 => ("Request Timeout", "request_timeout"),
        411 => ("Length Required", "length_required"),
        413 => ("Content Too Large", "payload_too_large"),
        415 => ("Unsupported Media Type", "unsupported_media_type"),
        426 => ("Upgrade Required", "upgrade_required"),
        429 => ("Too Many Requests", "too_many_requests"),
        431 => ("Request Header Fields Too Large", "request_header_fields_too_large"),
        503 => ("Service Unavailable", "service_unavailable"),
        _ => ("Internal Server Error", "internal_error"),
    }
}

/// An HTTP response under construction. Bodies are small JSON documents
/// (and, in development mode, the demo page).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// Close the connection after this answer, whatever the request asked
    /// (a refused upgrade or credential: no second try on the same one).
    pub close: bool,
    /// A credential failed a check that cost a signature verification:
    /// counts toward AUTH_FAILURES_PER_MIN for the client's address.
    pub auth_failure: bool,
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response { status, headers: Vec::new(), body: String::new(), close: false, auth_failure: false }
    }

    /// A JSON body.
    pub fn json(status: u16, body: &serde_json::Value) -> Response {
        let mut r = Response::new(status).header("Content-Type", "application/json");
        r.body = body.to_string();
        r
    }

    /// A JSON body already written (answers on the publish path, built
    /// without a `serde_json::Value`).
    pub fn json_text(status: u16, body: String) -> Response {
        let mut r = Response::new(status).header("Content-Type", "application/json");
        r.body = body;
        r
    }

    /// A body of another type (the development demo page and its scripts).
    pub fn text(status: u16, content_type: &'static str, body: impl Into<String>) -> Response {
        let mut r = Response::new(status).header("Content-Type", content_type);
        r.body = body.into();
        r
    }

    /// `{"error": "<code>", "message": "..."}`.
    pub fn error(status: u16, message: &str) -> Response {
        Response::json(status, &serde_json::json!({"error": status_text(status).1, "message": message}))
    }

    /// Closes the connection after this answer.
    pub fn closing(mut self) -> Response {
        self.close = true;
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// Serializes the response. `keep_alive` decides the Connection header;
    /// `omit_body` is for HEAD requests (the length is still announced).
    pub fn encode(&self, keep_alive: bool, omit_body: bool) -> Vec<u8> {
        let mut s = String::with_capacity(160 + self.body.len());
        let _ = write!(s, "HTTP/1.1 {} {}\r\n", self.status, status_text(self.status).0);
        // push_str, not write!: every publish's answer goes through here.
        for (k, v) in &self.headers {
            s.push_str(k);
            s.push_str(": ");
            s.push_str(v);
            s.push_str("\r\n");
        }
        if self.status != 101 && self.status != 204 {
            let _ = write!(s, "Content-Length: {}\r\n", self.body.len());
        }
        if self.status != 101 {
            s.push_str(if keep_alive { "Connection: keep-alive\r\n" } else { "Connection: close\r\n" });
        }
        s.push_str("\r\n");
        if !omit_body {
            s.push_str(&self.body);
        }
        s.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row per edge case: request bytes → expected outcome.
    /// `Ok(Some(len))` = complete head with that Content-Length.
    macro_rules! head_cases {
        ($($name:ident: $input:expr => $want:expr;)*) => {$(
            #[test]
            fn $name() {
                let got = parse_head($input, 1000).map(|h| h.map(|h| h.content_length));
                assert_eq!(got, $want);
            }
        )*};
    }

    fn rej(status: u16) -> Result<Option<usize>, u16> {
        Err(status)
    }

    fn status_of(r: Result<Option<usize>, Reject>) -> Result<Option<usize>, u16> {
        r.map_err(|e| e.status)
    }

    macro_rules! status_cases {
        ($($name:ident: $input:expr => $want:expr;)*) => {$(
            #[test]
            fn $name() {
                let got = status_of(parse_head($input, 1000).map(|h| h.map(|h| h.content_length)));
                assert_eq!(got, $want);
            }
        )*};
    }

    head_cases! {
        empty_is_incomplete: b"" => Ok(None);
        partial_request_line: b"GET /hea" => Ok(None);
        partial_headers: b"GET / HTTP/1.1\r\nHost: x\r\n" => Ok(None);
        complete_get: b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" => Ok(Some(0));
        with_length: b"POST /api/broadcast HTTP/1.1\r\nContent-Length: 12\r\n\r\n" => Ok(Some(12));
        same_length_twice: b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n" => Ok(Some(5));
    }

    status_cases! {
        garbage: b"\x00\x01\x02 nonsense\r\n\r\n" => rej(400);
        bad_length: b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n" => rej(400);
        signed_length: b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n" => rej(400);
        huge_length: b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n" => rej(400);
        conflicting_lengths: b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n" => rej(400);
        over_body_limit: b"POST / HTTP/1.1\r\nContent-Length: 1001\r\n\r\n" => rej(413);
        chunked: b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" => rej(411);
        smuggling: b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n" => rej(411);
        bad_version: b"GET / HTTP/2.0\r\n\r\n" => rej(400);
    }

    #[test]
    fn oversized_head_is_431_whether_partial_or_complete() {
        let mut big = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES));
        assert_eq!(parse_head(&big, 0).unwrap_err().status, 431);
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_head(&big, 0).unwrap_err().status, 431);

        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..MAX_HEADERS + 1 {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_head(&many, 0).unwrap_err().status, 431);
    }

    #[test]
    fn fields() {
        let h = parse_head(
            b"GET /ws?a=1&token=abc.def HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\
              Sec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\nOrigin: http://x\r\n\r\nrest",
            0,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.method(), Method::Get);
        assert_eq!(h.path, "/ws");
        assert_eq!(h.query_param("token"), Some("abc.def"));
        assert_eq!(h.bearer_token(), Some("abc.def"));
        assert!(h.upgrade_websocket && h.connection_upgrade && h.keep_alive);
        assert_eq!(h.ws_key.as_deref(), Some("k"));
        assert_eq!(h.origin.as_deref(), Some("http://x"));

        let h = parse_head(b"GET / HTTP/1.0\r\nAuthorization: bearer  t1 \r\n\r\n", 0).unwrap().unwrap();
        assert!(!h.keep_alive);
        assert_eq!(h.bearer_token(), Some("t1"));
        let h =
            parse_head(b"GET / HTTP/1.1\r\nConnection: close\r\nAuthorization: Basic x\r\n\r\n", 0).unwrap().unwrap();
        assert!(!h.keep_alive);
        assert_eq!(h.bearer_token(), None);
    }

    #[test]
    fn connection_close_wins_over_keep_alive() {
        // RFC 9112 §9.6: close means close, whatever else is listed.
        for raw in [
            "GET / HTTP/1.1\r\nConnection: close, keep-alive\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n",
            "GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n",
        ] {
            assert!(!parse_head(raw.as_bytes(), 0).unwrap().unwrap().keep_alive, "{raw:?}");
        }
        let h = parse_head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 0).unwrap().unwrap();
        assert!(h.keep_alive);
    }

    #[test]
    fn expect_continue_only_in_http_1_1() {
        let parse = |raw: &str| parse_head(raw.as_bytes(), 100).unwrap().unwrap().expect_continue;
        assert!(parse("POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 5\r\n\r\n"));
        assert!(!parse("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"));
        assert!(!parse("POST / HTTP/1.1\r\nExpect: something-else\r\nContent-Length: 5\r\n\r\n"));
        assert!(!parse("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"));
    }

    #[test]
    fn absolute_form_targets() {
        // RFC 9112 §3.2.2: accepted; the target's authority replaces Host.
        let h =
            parse_head(b"GET http://example.test:8080/health?x=1 HTTP/1.1\r\nHost: other\r\n\r\n", 0).unwrap().unwrap();
        assert_eq!((h.path.as_str(), h.query.as_deref()), ("/health", Some("x=1")));
        assert_eq!(h.host.as_deref(), Some("example.test:8080"));
        let h = parse_head(b"GET HTTPS://h HTTP/1.1\r\n\r\n", 0).unwrap().unwrap();
        assert_eq!((h.path.as_str(), h.host.as_deref()), ("/", Some("h")));
        let h = parse_head(b"GET http://h?token=a.b HTTP/1.1\r\n\r\n", 0).unwrap().unwrap();
        assert_eq!((h.path.as_str(), h.query_param("token")), ("/", Some("a.b")));
        for bad in ["GET http:///health HTTP/1.1\r\n\r\n", "GET http://u:p@h/health HTTP/1.1\r\n\r\n"] {
            assert_eq!(parse_head(bad.as_bytes(), 0).unwrap_err().status, 400, "{bad:?}");
        }
        // Found by the parse_head fuzzer: a multi-byte character where the
        // scheme would end is no scheme (and no panic).
        let h = parse_head("GET http:/ѕuzz/health HTTP/1.1\r\n\r\n".as_bytes(), 0).unwrap().unwrap();
        assert_eq!((h.path.as_str(), h.host), ("http:/ѕuzz/health", None));
        // Origin-form is unchanged.
        let h = parse_head(b"GET /ws?token=t HTTP/1.1\r\nHost: h\r\n\r\n", 0).unwrap().unwrap();
        assert_eq!((h.path.as_str(), h.host.as_deref()), ("/ws", Some("h")));
    }

    #[test]
    fn repeated_forwarded_for_headers_join_in_order() {
        let h = parse_head(b"GET / HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8\r\n\r\n", 0)
            .unwrap()
            .unwrap();
        assert_eq!(h.forwarded_for.as_deref(), Some("1.2.3.4, 5.6.7.8"));
    }

    #[test]
    fn encode_response() {
        let r = Response::error(404, "no such path").header("Vary", "Origin");
        let s = String::from_utf8(r.encode(true, false)).unwrap();
        assert!(s.starts_with("HTTP/1.1 404 Not Found\r\n"), "{s}");
        assert!(s.contains("Vary: Origin\r\n"));
        assert!(s.contains("Connection: keep-alive\r\n"));
        let body = r#"{"error":"not_found","message":"no such path"}"#;
        assert!(s.ends_with(&format!("Content-Length: {}\r\nConnection: keep-alive\r\n\r\n{body}", body.len())), "{s}");
        let head_only = String::from_utf8(r.encode(false, true)).unwrap();
        assert!(head_only.ends_with("Connection: close\r\n\r\n"));
    }
}
