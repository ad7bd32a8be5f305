//! The development-mode demo page: `GET /` on a server started without
//! JWT_SECRET or JWKS (so with a per-run secret) serves a small live task
//! list built on the JavaScript client (`clients/js`), so a newcomer sees
//! taskcast work in a browser right after `cargo run --release`.
//!
//! Everything is embedded in the binary and served only in development
//! mode; in production these paths are 404 like any other. The page needs a
//! token: the start-up output prints a link carrying one in the URL fragment
//! (`/#token=...`, which browsers never send to a server, so it is in no
//! log). When the server listens on loopback only, the page also gets a
//! fresh token written into it, for requests whose Host is a loopback name
//! (a DNS-rebinding page has its own host name there) and that did not come
//! through a proxy (no X-Forwarded-For).

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::auth;
use crate::config::Config;
use crate::http::{Head, Method, Response};

const PAGE: &str = include_str!("demo/index.html");
const SCRIPT: &str = include_str!("demo/demo.js");
const CLIENT: &str = include_str!("../clients/js/src/index.js");

/// Where the page writes the injected token (an empty `content` without one).
const TOKEN_SLOT: &str = "{{DEV_TOKEN}}";

/// The subject of development tokens.
pub const DEV_SUB: &str = "dev-user";
/// How long a development token is valid.
pub const DEV_TOKEN_TTL_SECS: u64 = 24 * 3600;

/// The page's own rules: scripts only from this server, connections only to
/// it, no framing, nothing cached (it may carry a token).
const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; \
                   img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The answer for a demo path in development mode; `None` otherwise (the
/// caller then answers as for any unknown path).
pub fn route(head: &Head, config: &Config) -> Option<Response> {
    if !config.jwt_secret_generated || !matches!(head.method(), Method::Get | Method::Head) {
        return None;
    }
    let resp = match head.path.as_str() {
        "/" | "/index.html" => {
            let token = match (&config.jwt_secret, may_inject_token(head, config)) {
                (Some(secret), true) => dev_token(secret.expose()),
                _ => String::new(),
            };
            Response::text(200, "text/html; charset=utf-8", PAGE.replace(TOKEN_SLOT, &token))
        }
        "/demo.js" => Response::text(200, "text/javascript; charset=utf-8", SCRIPT),
        "/taskcast-client.js" => Response::text(200, "text/javascript; charset=utf-8", CLIENT),
        _ => return None,
    };
    Some(
        resp.header("Content-Security-Policy", CSP)
            .header("X-Content-Type-Options", "nosniff")
            .header("Referrer-Policy", "no-referrer")
            .header("Cache-Control", "no-store"),
    )
}

/// A token is written into the page only when every request can only come
/// from this machine (the listener is on loopback), the browser addressed us
/// by a loopback name, and no proxy forwarded it.
fn may_inject_token(head: &Head, config: &Config) -> bool {
    config.addr.ip().is_loopback() && head.forwarded_for.is_none() && head.host.as_deref().is_some_and(is_loopback_host)
}

/// `localhost`, `127.0.0.1` or `[::1]`, with or without a port.
pub fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// In development mode the demo page calls this server from its own origin
/// (`http://localhost:8080`), which ALLOWED_ORIGINS does not list: allow an
/// Origin that is exactly `http://<Host>` when Host is a loopback name.
/// (A loopback Host cannot be produced by a DNS-rebinding page, whose Host
/// is its own name.)
pub fn same_origin_dev(head: &Head, config: &Config) -> bool {
    if !config.jwt_secret_generated {
        return false;
    }
    let (Some(origin), Some(host)) = (head.origin.as_deref(), head.host.as_deref()) else {
        return false;
    };
    is_loopback_host(host) && origin.strip_prefix("http://").is_some_and(|o| o.eq_ignore_ascii_case(host))
}

/// A development token: `sub` dev-user, 24 h, granted the `project:*`
/// channels (the demo subscribes to `project:demo`).
pub fn dev_token(secret: &[u8]) -> String {
    let now = auth::now_secs();
    let claims = json!({"sub": DEV_SUB, "iat": now, "exp": now + DEV_TOKEN_TTL_SECS, "channels": ["project:*"]});
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret))
        .expect("HS256 signing cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse_head;

    fn dev_config(host: &str) -> Config {
        let mut c = Config::for_tests("0123456789abcdef0123456789abcdef");
        c.jwt_secret_generated = true;
        c.addr = format!("{host}:8080").parse().unwrap();
        c
    }

    fn get(raw: &str) -> Head {
        parse_head(raw.as_bytes(), 0).unwrap().unwrap()
    }

    fn injected(resp: &Response) -> bool {
        let start = resp.body.find(r#"name="taskcast-dev-token" content=""#).expect("token slot") + 35;
        !resp.body[start..].starts_with('"')
    }

    #[test]
    fn only_in_development_mode() {
        let head = get("GET / HTTP/1.1\r\nHost: localhost:8080\r\n\r\n");
        let mut prod = dev_config("127.0.0.1");
        prod.jwt_secret_generated = false;
        assert!(route(&head, &prod).is_none());
        assert!(route(&get("GET /demo.js HTTP/1.1\r\n\r\n"), &prod).is_none());
        assert!(route(&get("POST / HTTP/1.1\r\n\r\n"), &dev_config("127.0.0.1")).is_none());
        assert!(route(&get("GET /other HTTP/1.1\r\n\r\n"), &dev_config("127.0.0.1")).is_none());
    }

    #[test]
    fn token_only_for_loopback_listeners_hosts_and_direct_requests() {
        // (listen address, request) -> token written into the page
        let cases = [
            ("127.0.0.1", "GET / HTTP/1.1\r\nHost: localhost:8080\r\n\r\n", true),
            ("127.0.0.1", "GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n", true),
            ("127.0.0.1", "GET / HTTP/1.1\r\nHost: evil.example:8080\r\n\r\n", false),
            ("127.0.0.1", "GET / HTTP/1.1\r\n\r\n", false),
            ("127.0.0.1", "GET / HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n", false),
            ("0.0.0.0", "GET / HTTP/1.1\r\nHost: localhost:8080\r\n\r\n", false),
        ];
        for (listen, raw, want) in cases {
            let resp = route(&get(raw), &dev_config(listen)).unwrap();
            assert_eq!(resp.status, 200);
            assert_eq!(injected(&resp), want, "{listen} {raw:?}");
            assert!(resp.headers.iter().any(|(k, v)| *k == "Cache-Control" && v == "no-store"));
        }
    }

    #[test]
    fn the_injected_token_verifies_and_grants_the_demo_channel() {
        let config = dev_config("127.0.0.1");
        let resp = route(&get("GET / HTTP/1.1\r\nHost: localhost:8080\r\n\r\n"), &config).unwrap();
        let start = resp.body.find(r#"content="ey"#).unwrap() + 9;
        let token = &resp.body[start..start + resp.body[start..].find('"').unwrap()];
        let claims = auth::Verifier::new(&config).unwrap().verify(token).unwrap();
        assert_eq!(claims.sub.as_deref(), Some(DEV_SUB));
        let payload: serde_json::Value = jsonwebtoken::dangerous::insecure_decode(token).unwrap().claims;
        assert_eq!(payload["channels"], json!(["project:*"]));
    }

    #[test]
    fn loopback_hosts() {
        for (host, want) in [
            ("localhost", true),
            ("LOCALHOST:3000", true),
            ("127.0.0.1:8080", true),
            ("127.1.2.3", true),
            ("[::1]:8080", true),
            ("[::1]", true),
            ("localhost.evil.example", false),
            ("10.0.0.1:8080", false),
            ("[::2]:80", false),
            ("", false),
        ] {
            assert_eq!(is_loopback_host(host), want, "{host}");
        }
    }

    #[test]
    fn same_origin_in_development_only() {
        let dev = dev_config("0.0.0.0");
        let h = |raw: &str| get(raw);
        assert!(same_origin_dev(
            &h("GET /ws HTTP/1.1\r\nHost: localhost:8080\r\nOrigin: http://localhost:8080\r\n\r\n"),
            &dev
        ));
        assert!(!same_origin_dev(
            &h("GET /ws HTTP/1.1\r\nHost: localhost:8080\r\nOrigin: http://localhost:9999\r\n\r\n"),
            &dev
        ));
        assert!(!same_origin_dev(
            &h("GET /ws HTTP/1.1\r\nHost: evil.example\r\nOrigin: http://evil.example\r\n\r\n"),
            &dev
        ));
        assert!(!same_origin_dev(&h("GET /ws HTTP/1.1\r\nHost: localhost:8080\r\n\r\n"), &dev));
        let mut prod = dev;
        prod.jwt_secret_generated = false;
        assert!(!same_origin_dev(
            &h("GET /ws HTTP/1.1\r\nHost: localhost:8080\r\nOrigin: http://localhost:8080\r\n\r\n"),
            &prod
        ));
    }
}
