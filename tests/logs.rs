//! LOG_FORMAT: the JSON log is one object per line with timestamp, level,
//! target and message; a bad value exits 2 naming the variable.

mod common;
use common::*;
use std::time::Duration;

#[test]
fn json_log_is_one_object_per_line() {
    let mut srv = start_binary(taskcast_cmd().envs([
        ("JWT_SECRET", SECRET),
        ("LOG_FORMAT", "json"),
        ("RUST_LOG", "debug"),
        ("DRAIN_SECS", "0"),
    ]));
    let addr = srv.addr;
    let mut c = ws(addr, &token("json-user"));
    wait_clients(addr, 1);
    assert_eq!(broadcast(addr, &token("srv"), r#"{"type":"t","data":1}"#).status, 200);
    assert_eq!(next_json(&mut c)["type"], "t");
    srv.signal(libc::SIGTERM);
    assert_eq!(close_code(&mut c), 1012);
    drop(c);
    assert_eq!(srv.wait_exit(Duration::from_secs(10)).code(), Some(0));
    std::thread::sleep(Duration::from_millis(100)); // let the log thread take the last lines
    let log = srv.log();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 5, "start-up, connect, broadcast, drain, shutdown: {log}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        let field = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("no string {k:?} in {line}")).to_string();
        let ts = field("timestamp");
        // RFC 3339 in UTC: 2026-12-01T18:35:52.123456Z
        let b = ts.as_bytes();
        assert!(
            ts.len() == 27 && b[4] == b'-' && b[10] == b'T' && b[19] == b'.' && ts.ends_with('Z'),
            "timestamp {ts:?}"
        );
        assert!(["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&field("level").as_str()), "{line}");
        assert!(field("target").starts_with("taskcast"), "{line}");
        assert!(!field("message").is_empty(), "{line}");
    }
    assert!(log.contains("\"level\":\"DEBUG\""), "RUST_LOG still filters: {log}");
    assert!(log.contains("listening on"), "{log}");
}

#[test]
fn bad_log_format_exits_2_naming_it() {
    let out = taskcast_cmd().envs([("JWT_SECRET", SECRET), ("LOG_FORMAT", "xml")]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("LOG_FORMAT") && err.contains("xml"), "{err}");
}
