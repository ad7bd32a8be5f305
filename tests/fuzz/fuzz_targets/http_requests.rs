//! Structured, pipelined HTTP requests on one connection to the real
//! in-process server: the fuzzer picks methods, routes, real or bad tokens,
//! origins, bodies (broadcast JSON or bytes) and how Content-Length is
//! written; responses are checked knowing which requests were HEAD.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use taskcast_fuzz::{CloseRule, after_input, check_http, exchange, server};

#[derive(Arbitrary, Debug)]
enum Method {
    Get,
    Head,
    Post,
    Options,
    Put,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Path {
    Health,
    Ws,
    Broadcast,
    Root,
    Query(String),
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Auth {
    None,
    Valid,
    Expired,
    Query,
    Basic,
    Garbage(String),
}

#[derive(Arbitrary, Debug)]
enum Length {
    Correct,
    Omitted,
    Value(u32),
    Twice,
    Conflicting,
    Chunked,
    Padded,
}

#[derive(Arbitrary, Debug)]
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn value(&self) -> serde_json::Value {
        use serde_json::Value as V;
        match self {
            Json::Null => V::Null,
            Json::Bool(b) => V::Bool(*b),
            Json::Int(i) => V::from(*i),
            Json::Float(f) => serde_json::Number::from_f64(*f).map_or(V::Null, V::Number),
            Json::Str(s) => V::String(s.clone()),
            Json::Arr(a) => V::Array(a.iter().map(Json::value).collect()),
            Json::Obj(o) => V::Object(o.iter().map(|(k, v)| (k.clone(), v.value())).collect()),
        }
    }
}

/// Who a broadcast body names (issue 18: only naming no one is "everyone").
#[derive(Arbitrary, Debug)]
enum Recipients {
    Everyone,
    Channel(String),
    Users(Vec<String>),
    /// `"channel"`, `"channels"` or `"users"` present with null: refused.
    Null(u8),
    /// A key that is not one of the five (a typo such as `"chanel"`): refused.
    Unknown(String),
}

#[derive(Arbitrary, Debug)]
enum Body {
    Empty,
    Broadcast { kind: u8, custom: Option<String>, data: Json, to: Recipients },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Request {
    method: Method,
    path: Path,
    http10: bool,
    connection: Option<u8>,
    auth: Auth,
    origin: Option<u8>,
    content_type: Option<u8>,
    upgrade_headers: bool,
    /// `Expect: 100-continue` (answered with 100 before the body, or not at all).
    expect_continue: bool,
    /// The target in absolute form (`http://fuzz/health`), RFC 9112 §3.2.2.
    absolute: bool,
    body: Body,
    length: Length,
    extra: Vec<(String, String)>,
}

impl Request {
    /// Whether the server will see exactly this request's bytes as one
    /// request (no CR/LF smuggled into a field, an honest length), so the
    /// i-th response answers the i-th request.
    fn framed_exactly(&self) -> bool {
        let clean = |s: &str| !s.contains(['\r', '\n']);
        let fields_clean = match (&self.method, &self.path, &self.auth) {
            (Method::Other(m), _, _) if !clean(m) => false,
            (_, Path::Query(p) | Path::Other(p), _) if !clean(p) => false,
            (_, _, Auth::Garbage(g)) if !clean(g) => false,
            _ => self.extra.iter().all(|(k, v)| {
                let name = k.trim().to_ascii_lowercase();
                clean(k) && clean(v) && name != "content-length" && name != "transfer-encoding"
            }),
        };
        let length_honest = match self.length {
            Length::Correct | Length::Twice | Length::Padded => true,
            Length::Omitted => matches!(&self.body, Body::Empty) || matches!(&self.body, Body::Raw(b) if b.is_empty()),
            _ => false,
        };
        fields_clean && length_honest
    }

    fn encode(&self, out: &mut Vec<u8>) -> bool {
        let h = server();
        let method = match &self.method {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Options => "OPTIONS",
            Method::Put => "PUT",
            Method::Other(m) => m,
        };
        let mut target = match &self.path {
            Path::Health => "/health".to_string(),
            Path::Ws => "/ws".to_string(),
            Path::Broadcast => "/api/broadcast".to_string(),
            Path::Root => "/".to_string(),
            Path::Query(q) => format!("/ws?{q}"),
            Path::Other(p) => p.clone(),
        };
        if self.absolute && target.starts_with('/') {
            target.insert_str(0, "http://fuzz");
        }
        if matches!(self.auth, Auth::Query) {
            target.push_str(&format!("{}token={}", if target.contains('?') { '&' } else { '?' }, h.token));
        }
        let version = if self.http10 { "1.0" } else { "1.1" };
        let mut head = format!("{method} {target} HTTP/{version}\r\nHost: fuzz\r\n");
        match &self.auth {
            Auth::Valid => head.push_str(&format!("Authorization: Bearer {}\r\n", h.token)),
            Auth::Expired => head.push_str(&format!("Authorization: Bearer {}\r\n", h.expired_token)),
            Auth::Basic => head.push_str("Authorization: Basic Zm9vOmJhcg==\r\n"),
            Auth::Garbage(g) => head.push_str(&format!("Authorization: {g}\r\n")),
            Auth::None | Auth::Query => {}
        }
        if let Some(c) = self.connection {
            let v = ["close", "keep-alive", "Upgrade", "keep-alive, Upgrade", "CLOSE", "x", "close, keep-alive"]
                [c as usize % 7];
            head.push_str(&format!("Connection: {v}\r\n"));
        }
        if let Some(o) = self.origin {
            let v = ["http://localhost:3000", "https://evil.example", "null", ""][o as usize % 4];
            head.push_str(&format!("Origin: {v}\r\n"));
            if matches!(self.method, Method::Options) {
                head.push_str("Access-Control-Request-Method: POST\r\n");
            }
        }
        if let Some(c) = self.content_type {
            let v = ["application/json", "application/json; charset=utf-8", "text/plain", "APPLICATION/JSON"];
            head.push_str(&format!("Content-Type: {}\r\n", v[c as usize % 4]));
        }
        if self.upgrade_headers {
            head.push_str(
                "Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
            );
        }
        if self.expect_continue {
            head.push_str("Expect: 100-continue\r\n");
        }
        for (k, v) in &self.extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        let body = match &self.body {
            Body::Empty => Vec::new(),
            Body::Broadcast { kind, custom, data, to } => {
                let types = taskcast::broadcast::DOCUMENTED_TYPES;
                let kind = custom.clone().unwrap_or_else(|| types[*kind as usize % types.len()].to_string());
                let mut body = serde_json::json!({"type": kind, "data": data.value()});
                match to {
                    Recipients::Everyone => {}
                    Recipients::Channel(c) => body["channel"] = c.as_str().into(),
                    Recipients::Users(u) => body["users"] = u.clone().into(),
                    Recipients::Null(k) => {
                        body[["channel", "channels", "users"][*k as usize % 3]] = serde_json::Value::Null
                    }
                    Recipients::Unknown(k) => body[k.as_str()] = "project:1".into(),
                }
                body.to_string().into_bytes()
            }
            Body::Raw(b) => b.clone(),
        };
        match self.length {
            Length::Correct => head.push_str(&format!("Content-Length: {}\r\n", body.len())),
            Length::Omitted => {}
            Length::Value(n) => head.push_str(&format!("Content-Length: {n}\r\n")),
            Length::Twice => head.push_str(&format!("Content-Length: {0}\r\nContent-Length: {0}\r\n", body.len())),
            Length::Conflicting => {
                head.push_str(&format!("Content-Length: {}\r\nContent-Length: {}\r\n", body.len(), body.len() + 1))
            }
            Length::Chunked => head.push_str("Transfer-Encoding: chunked\r\n"),
            Length::Padded => head.push_str(&format!("Content-Length:  0{} \r\n", body.len())),
        }
        head.push_str("\r\n");
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(&body);
        // What the server goes by (a HEAD's answer has no body), also for
        // `Other("HEAD")` and for a line it refuses (`HEAD  x`): 400 to a
        // request that starts "HEAD " has no body either.
        head.starts_with("HEAD ")
    }
}

fuzz_target!(|requests: Vec<Request>| {
    let mut bytes = Vec::new();
    let heads: Vec<bool> = requests.iter().map(|r| r.encode(&mut bytes)).collect();
    let exact = requests.iter().all(Request::framed_exactly);
    let ex = exchange(&bytes);
    if let Err(e) = check_http(&ex, exact.then_some(&heads[..]), CloseRule::Any) {
        panic!("{e}\nclient: {:?}\nserver: {:?}", String::from_utf8_lossy(&bytes), String::from_utf8_lossy(&ex.bytes));
    }
    after_input();
});
