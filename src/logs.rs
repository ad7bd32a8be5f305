//! The log: env_logger's text (the default), or `LOG_FORMAT=json` — one
//! JSON object per line for log shippers:
//!
//! ```text
//! {"timestamp":"2026-12-01T18:35:52.123456Z","level":"INFO","target":"taskcast::server","message":"..."}
//! ```
//!
//! Both carry the same messages, so the rule that no token is ever logged
//! holds for both (tests/security.rs checks each at trace level).

use std::io::Write;

use serde::Serialize;

use crate::config::ConfigError;

/// LOG_FORMAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// env_logger's human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// Reads LOG_FORMAT through `get`: unset or empty is `text`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<LogFormat, ConfigError> {
        match get("LOG_FORMAT").as_deref().map(str::trim) {
            None | Some("") | Some("text") => Ok(LogFormat::Text),
            Some("json") => Ok(LogFormat::Json),
            Some(other) => Err(ConfigError { var: "LOG_FORMAT", message: format!("{other:?} is not text or json") }),
        }
    }
}

/// One line of the JSON log (fields in this order).
#[derive(Serialize)]
struct Line<'a> {
    /// RFC 3339, UTC, microseconds.
    timestamp: String,
    level: &'static str,
    target: &'a str,
    message: String,
}

/// Installs the global logger: RUST_LOG filters (default `info`), `format`
/// shapes each line.
pub fn init(format: LogFormat) {
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    // tungstenite logs whole messages at trace level (an in-band auth
    // message carries a token) and every close at debug: keep it to
    // warnings whatever RUST_LOG says.
    builder.filter_module("tungstenite", log::LevelFilter::Warn);
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            let line = Line {
                timestamp: buf.timestamp_micros().to_string(),
                level: record.level().as_str(),
                target: record.target(),
                message: record.args().to_string(),
            };
            // Serializing strings cannot fail; a write error is env_logger's to handle.
            let json = serde_json::to_string(&line).map_err(std::io::Error::other)?;
            writeln!(buf, "{json}")
        });
    }
    builder.init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_values() {
        let get = |v: &'static str| move |k: &str| (k == "LOG_FORMAT").then(|| v.to_string());
        assert_eq!(LogFormat::from_lookup(|_| None).unwrap(), LogFormat::Text);
        assert_eq!(LogFormat::from_lookup(get("")).unwrap(), LogFormat::Text);
        assert_eq!(LogFormat::from_lookup(get("text")).unwrap(), LogFormat::Text);
        assert_eq!(LogFormat::from_lookup(get(" json ")).unwrap(), LogFormat::Json);
        assert_eq!(LogFormat::from_lookup(get("JSON-ish")).unwrap_err().var, "LOG_FORMAT");
    }
}
