//! Start-up and shutdown of the real binary and of in-process servers.

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

#[test]
fn bad_configuration_exits_2_naming_the_variable() {
    let cases = [
        (vec![("PORT", "abc")], "PORT"),
        (vec![("PING_INTERVAL_SECS", "60"), ("PONG_WAIT_SECS", "30")], "PING_INTERVAL_SECS"),
        (vec![("ALLOWED_ORIGINS", "not-an-origin")], "ALLOWED_ORIGINS"),
        (vec![("MAX_MESSAGE_BYTES", "0")], "MAX_MESSAGE_BYTES"),
    ];
    for (env, var) in cases {
        let out = taskcast_cmd().envs(env.clone()).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{env:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(var), "{env:?}: {err}");
    }
}

#[test]
fn token_command_signs_with_the_configured_secret() {
    let out =
        taskcast_cmd().args(["token", "--sub", "cli-user", "--ttl", "60"]).env("JWT_SECRET", SECRET).output().unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let s = start();
    let _c = ws(s.addr, &token);
    wait_clients(s.addr, 1);

    let out = taskcast_cmd().arg("token").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "no secret: nothing to sign with");
}

/// SIGINT (Ctrl-C) stops at once; SIGTERM drains (tests/drain.rs).
#[test]
fn sigint_closes_clients_with_1001_and_exits_0() {
    let mut srv = start_binary(taskcast_cmd().envs([("JWT_SECRET", SECRET), ("SHUTDOWN_GRACE_SECS", "2")]));
    let mut clients: Vec<Ws> = (0..3).map(|i| ws(srv.addr, &token(&format!("u{i}")))).collect();
    wait_clients(srv.addr, 3);
    srv.signal(libc::SIGINT);
    for c in &mut clients {
        assert_eq!(close_code(c), 1001);
    }
    drop(clients);
    assert_eq!(srv.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn dev_mode_prints_a_working_token() {
    let mut cmd = taskcast_cmd();
    cmd.stdout(Stdio::piped());
    let mut srv = start_binary(&mut cmd);
    let mut out = BufReader::new(srv.child.stdout.take().unwrap());
    let mut token = None;
    let mut line = String::new();
    while token.is_none() && out.read_line(&mut line).unwrap() > 0 {
        token = line.trim().strip_prefix("TOKEN=").map(str::to_string);
        line.clear();
    }
    let token = token.expect("a TOKEN= line");
    let r = broadcast(srv.addr, &token, r#"{"type":"task_created","data":{"id":"1"}}"#);
    assert_eq!(r.status, 200);
    srv.wait_log("JWT_SECRET is not set");
    srv.signal(libc::SIGINT);
    assert_eq!(srv.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn in_process_shutdown_sends_1001_after_queued_messages() {
    let s = start();
    let mut c = ws(s.addr, &token("u"));
    wait_clients(s.addr, 1);
    assert_eq!(broadcast(s.addr, &token("srv"), r#"{"type":"task_created","data":"last"}"#).status, 200);
    let handle = s.handle.clone();
    handle.shutdown();
    assert_eq!(next_json(&mut c)["payload"], "last");
    assert_eq!(close_code(&mut c), 1001);
    drop(c);
    s.stop().unwrap();
}

#[test]
fn dotenv_file_is_read_and_the_environment_wins() {
    let dir = std::env::temp_dir().join(format!("taskcast-dotenv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(".env"), "PORT=not-a-port\nJWT_SECRET=from-dotenv-from-dotenv-from-dotenv\n").unwrap();
    let run = |extra: &[(&str, &str)]| {
        let mut c = taskcast_cmd();
        c.current_dir(&dir).envs(extra.iter().copied());
        c
    };
    // The .env value is used (and rejected, naming the variable)...
    let out = run(&[]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PORT"));
    // ...unless the real environment sets it.
    let out = run(&[("PORT", "0")]).arg("token").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap();
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        token.trim(),
        &jsonwebtoken::DecodingKey::from_secret(b"from-dotenv-from-dotenv-from-dotenv"),
        &jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256),
    );
    assert!(claims.is_ok(), "token signed with the .env secret");
    std::fs::remove_dir_all(&dir).unwrap();
}
