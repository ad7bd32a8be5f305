//! REDIS_URL and REDIS_PREFIX: whether this instance runs in cluster mode,
//! and under which names it keeps its keys. Parsed once at start-up by
//! [`parse_redis_env`]; `config.rs` calls it and keeps the result.

use std::fmt;

use redis::{ConnectionAddr, IntoConnectionInfo};

/// REDIS_PREFIX when unset.
pub const DEFAULT_PREFIX: &str = "taskcast";
/// REDIS_PREFIX at most, in bytes: it starts every key and pub/sub channel name.
pub const MAX_PREFIX_BYTES: usize = 64;

/// Where the shared Redis is, and the namespace this app uses in it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// REDIS_URL as given: `redis://[user:password@]host[:port][/db]` or
    /// `redis+unix:///path`. It may hold a password, so it is never logged:
    /// [`RedisConfig::redacted_url`] is what logs show.
    pub url: String,
    /// REDIS_PREFIX: starts every key and pub/sub channel, so several apps
    /// (or a staging and a production taskcast) can share one Redis. Pub/sub
    /// ignores the database number in the URL, so the prefix is what keeps
    /// two apps' messages apart even on different databases.
    pub prefix: String,
}

impl RedisConfig {
    /// The URL with any password replaced by `***`, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }
}

impl fmt::Debug for RedisConfig {
    /// Never prints the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig").field("url", &self.redacted_url()).field("prefix", &self.prefix).finish()
    }
}

/// Reads REDIS_URL and REDIS_PREFIX through `get` (the environment, or a map
/// in tests). `Ok(None)` when REDIS_URL is unset or empty: single-process
/// mode, no Redis anywhere. A bad value is an error naming its variable
/// (`config.rs` turns it into its `ConfigError`; this module does not import
/// config, so the two do not depend on each other).
pub fn parse_redis_env(get: &impl Fn(&str) -> Option<String>) -> Result<Option<RedisConfig>, RedisEnvError> {
    let prefix = match get("REDIS_PREFIX") {
        Some(p) if !p.trim().is_empty() => p.trim().to_string(),
        _ => DEFAULT_PREFIX.to_string(),
    };
    check_prefix(&prefix).map_err(|message| RedisEnvError { var: "REDIS_PREFIX", message })?;
    let url = match get("REDIS_URL") {
        Some(u) if !u.trim().is_empty() => u.trim().to_string(),
        _ => return Ok(None),
    };
    check_url(&url).map_err(|message| RedisEnvError { var: "REDIS_URL", message })?;
    Ok(Some(RedisConfig { url, prefix }))
}

/// A bad REDIS_URL or REDIS_PREFIX: the variable and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisEnvError {
    pub var: &'static str,
    pub message: String,
}

impl fmt::Display for RedisEnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.var, self.message)
    }
}

/// Letters, digits and `_ - . :`, like channel names: no spaces or glob
/// characters (`*?[]`) that would make the keys awkward to inspect or match
/// with `SCAN MATCH prefix:*`, and no `{}`, which are Redis Cluster hash tags.
fn check_prefix(p: &str) -> Result<(), String> {
    if p.len() > MAX_PREFIX_BYTES {
        return Err(format!("{p:?} is longer than {MAX_PREFIX_BYTES} bytes"));
    }
    if let Some(c) = p.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))) {
        return Err(format!("{p:?} contains {c:?}: use ASCII letters, digits and _ - . : only"));
    }
    Ok(())
}

/// What the redis crate would refuse at connect time, refused at start-up
/// instead, with a message that says what to write. Never echoes the URL
/// itself (it may hold a password), only its redacted form.
fn check_url(url: &str) -> Result<(), String> {
    let shown = redact(url);
    let scheme = url.split("://").next().unwrap_or("").to_ascii_lowercase();
    match scheme.as_str() {
        "redis" | "valkey" | "redis+unix" | "valkey+unix" | "unix" => {}
        "rediss" | "valkeys" => {
            return Err(format!(
                "{shown}: TLS (rediss://) is not built in; reach Redis over a private network, \
                 a unix socket (redis+unix:///run/redis.sock) or a local TLS tunnel (stunnel) and use redis://"
            ));
        }
        _ => return Err(format!("{shown} is not a redis:// URL (like redis://127.0.0.1:6379/0)")),
    }
    let info = url.into_connection_info().map_err(|e| format!("{shown}: {e}"))?;
    if let ConnectionAddr::Tcp(host, _) = info.addr()
        && host.is_empty()
    {
        return Err(format!("{shown} names no host"));
    }
    Ok(())
}

/// Query parameters whose values are shown as they are: the redis crate
/// reads `db`, `protocol` and `user` (none secret) besides `pass`. Any
/// other parameter's value is shown as `***` — `pass`, `password`, and
/// names we cannot vouch for (`pa%73s` is `pass` to the crate).
const SHOWN_PARAMS: [&str; 3] = ["db", "protocol", "user"];

/// The URL with every credential replaced by `***`, for logs and errors:
/// `redis://user:secret@host/0` -> `redis://user:***@host/0`,
/// `redis+unix:///run/redis.sock?pass=secret&db=1` ->
/// `redis+unix:///run/redis.sock?pass=***&db=1`.
///
/// Fails closed, since the input may be a malformed URL being refused:
/// everything up to the last `@` before the query counts as userinfo (a
/// password holding an unescaped `/` or `@` stays hidden), only the values
/// of [`SHOWN_PARAMS`] are shown, and a fragment is dropped.
fn redact(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, _)) => (r, true),
        None => (rest, false),
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let mut out = String::with_capacity(url.len());
    if let Some(scheme) = scheme {
        out.push_str(scheme);
        out.push_str("://");
    }
    match before_query.rfind('@') {
        Some(at) => {
            match before_query[..at].split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push_str(":***@");
                }
                // `redis://secret@host`: a bare userinfo is the password to the crate.
                None => out.push_str("***@"),
            }
            out.push_str(&before_query[at + 1..]);
        }
        None => out.push_str(before_query),
    }
    if let Some(query) = query {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, _)) if !SHOWN_PARAMS.contains(&name) => {
                    out.push_str(name);
                    out.push_str("=***");
                }
                _ => out.push_str(pair),
            }
        }
    }
    if fragment {
        out.push_str("#***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<Option<RedisConfig>, RedisEnvError> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        parse_redis_env(&|k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn unset_or_empty_url_is_single_process_mode() {
        assert_eq!(parse(&[]).unwrap(), None);
        assert_eq!(parse(&[("REDIS_URL", "  ")]).unwrap(), None);
    }

    #[test]
    fn good_urls_and_the_default_prefix() {
        for url in [
            "redis://127.0.0.1:6379/0",
            "redis://localhost",
            "redis://:pw@10.0.0.5:6380/2",
            "redis://app:pw@redis.internal/1",
            "redis+unix:///run/redis/redis.sock",
            "valkey://[::1]:6379",
        ] {
            let c = parse(&[("REDIS_URL", url)]).unwrap_or_else(|e| panic!("{url}: {e}")).unwrap();
            assert_eq!(c.url, url);
            assert_eq!(c.prefix, DEFAULT_PREFIX);
        }
        let c = parse(&[("REDIS_URL", "redis://h"), ("REDIS_PREFIX", "app-1.prod:tc")]).unwrap().unwrap();
        assert_eq!(c.prefix, "app-1.prod:tc");
    }

    #[test]
    fn bad_values_name_their_variable() {
        // (variables, the one named, a word the message must contain)
        type Row = (&'static [(&'static str, &'static str)], &'static str, &'static str);
        let table: &[Row] = &[
            (&[("REDIS_URL", "http://h:6379")], "REDIS_URL", "not a redis:// URL"),
            (&[("REDIS_URL", "rediss://h:6379")], "REDIS_URL", "TLS"),
            (&[("REDIS_URL", "redis://h:notaport")], "REDIS_URL", "redis://h:notaport"),
            (&[("REDIS_URL", "redis://h/notadb")], "REDIS_URL", "atabase"),
            (&[("REDIS_URL", "localhost:6379")], "REDIS_URL", "not a redis:// URL"),
            (&[("REDIS_URL", "redis://h"), ("REDIS_PREFIX", "my app")], "REDIS_PREFIX", "' '"),
            (&[("REDIS_URL", "redis://h"), ("REDIS_PREFIX", "a{b}")], "REDIS_PREFIX", "'{'"),
            (&[("REDIS_URL", "redis://h"), ("REDIS_PREFIX", "a*")], "REDIS_PREFIX", "'*'"),
        ];
        for (vars, var, needle) in table {
            let e = parse(vars).expect_err(&format!("{vars:?} should be refused"));
            assert_eq!(e.var, *var, "{vars:?}");
            assert!(e.message.contains(needle), "{vars:?}: {:?} should mention {needle:?}", e.message);
        }
        let long = "p".repeat(MAX_PREFIX_BYTES + 1);
        assert_eq!(parse(&[("REDIS_PREFIX", &long)]).unwrap_err().var, "REDIS_PREFIX");
    }

    #[test]
    fn a_password_is_never_shown() {
        let e = parse(&[("REDIS_URL", "redis://u:hunter2@h:bad/0")]).unwrap_err();
        assert!(!e.message.contains("hunter2"), "{}", e.message);
        let e = parse(&[("REDIS_URL", "rediss://:hunter2@h")]).unwrap_err();
        assert!(!e.message.contains("hunter2"), "{}", e.message);
        let c = parse(&[("REDIS_URL", "redis://u:hunter2@h:6379/0")]).unwrap().unwrap();
        assert_eq!(c.redacted_url(), "redis://u:***@h:6379/0");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(redact("redis://hunter2@h"), "redis://***@h");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    fn a_credential_is_redacted_wherever_it_sits() {
        let table = [
            ("redis+unix:///run/redis.sock?pass=hunter2", "redis+unix:///run/redis.sock?pass=***"),
            ("redis+unix:///run/r.sock?db=1&user=app&pass=hunter2", "redis+unix:///run/r.sock?db=1&user=app&pass=***"),
            ("unix:///r.sock?password=hunter2&db=2", "unix:///r.sock?password=***&db=2"),
            ("redis://h:6379/0?password=hunter2", "redis://h:6379/0?password=***"),
            ("redis+unix:///r.sock?pa%73s=hunter2", "redis+unix:///r.sock?pa%73s=***"),
            ("redis://u:hunter2@h/0?db=1", "redis://u:***@h/0?db=1"),
            ("redis://u:hun/ter2@h:6379", "redis://u:***@h:6379"),
            ("redis://u:hun@ter2@h:6379", "redis://u:***@h:6379"),
            ("redis://u:pw@h#hunter2", "redis://u:***@h#***"),
            ("u:hunter2@h:6379", "u:***@h:6379"),
            ("redis+unix://:hunter2@/r.sock", "redis+unix://:***@/r.sock"),
            ("redis://h:6379/0?protocol=resp3", "redis://h:6379/0?protocol=resp3"),
        ];
        for (url, want) in table {
            assert_eq!(redact(url), want, "{url}");
        }
        // Everywhere the URL is shown: the config's Debug, and start-up errors.
        let c = parse(&[("REDIS_URL", "redis+unix:///run/redis.sock?pass=hunter2")]).unwrap().unwrap();
        assert_eq!(c.redacted_url(), "redis+unix:///run/redis.sock?pass=***");
        assert!(!format!("{c:?}").contains("hunter2"));
        let e = parse(&[("REDIS_URL", "http://h/?pass=hunter2")]).unwrap_err();
        assert!(!e.message.contains("hunter2"), "{}", e.message);
        let e = parse(&[("REDIS_URL", "redis://u:hun/ter2@h:notaport")]).unwrap_err();
        assert!(!e.message.contains("ter2"), "{}", e.message);
    }
}
