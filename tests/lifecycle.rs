//! Start-up and shutdown of the real binary and of in-process servers.

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn taskcast() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_taskcast"));
    // A clean environment and an empty working dir (no stray .env).
    c.env_clear().current_dir(std::env::temp_dir()).env("RUST_LOG", "info");
    c
}

#[test]
fn bad_configuration_exits_2_naming_the_variable() {
    let cases = [
        (vec![("PORT", "abc")], "PORT"),
        (vec![("PING_INTERVAL_SECS", "60"), ("PONG_WAIT_SECS", "30")], "PING_INTERVAL_SECS"),
        (vec![("ALLOWED_ORIGINS", "not-an-origin")], "ALLOWED_ORIGINS"),
        (vec![("MAX_MESSAGE_BYTES", "0")], "MAX_MESSAGE_BYTES"),
    ];
    for (env, var) in cases {
        let out = taskcast().envs(env.clone()).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{env:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(var), "{env:?}: {err}");
    }
}

#[test]
fn token_command_signs_with_the_configured_secret() {
    let out =
        taskcast().args(["token", "--sub", "cli-user", "--ttl", "60"]).env("JWT_SECRET", SECRET).output().unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let s = start();
    let _c = ws(s.addr, &token);
    wait_clients(s.addr, 1);

    let out = taskcast().arg("token").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "no secret: nothing to sign with");
}

/// Starts the binary on an ephemeral port and returns it with its address.
fn spawn_binary(
    env: &[(&str, &str)],
) -> (std::process::Child, std::net::SocketAddr, BufReader<std::process::ChildStderr>) {
    let mut child = taskcast()
        .envs(env.iter().copied())
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let deadline = Instant::now() + WAIT;
    let addr = loop {
        assert!(Instant::now() < deadline, "no start-up line");
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "exited before listening");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    (child, addr, err)
}

fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_closes_clients_with_1001_and_exits_0() {
    let (mut child, addr, _err) = spawn_binary(&[("JWT_SECRET", SECRET), ("SHUTDOWN_GRACE_SECS", "2")]);
    let mut clients: Vec<Ws> = (0..3).map(|i| ws(addr, &token(&format!("u{i}")))).collect();
    wait_clients(addr, 3);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    for c in &mut clients {
        assert_eq!(close_code(c), 1001);
    }
    drop(clients);
    let st = wait_exit(&mut child);
    assert_eq!(st.code(), Some(0));
}

#[test]
fn dev_mode_prints_a_working_token() {
    let (mut child, addr, _err) = spawn_binary(&[]);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut token = None;
    let mut line = String::new();
    while token.is_none() && out.read_line(&mut line).unwrap() > 0 {
        token = line.trim().strip_prefix("TOKEN=").map(str::to_string);
        line.clear();
    }
    let token = token.expect("a TOKEN= line");
    let r = broadcast(addr, &token, r#"{"type":"task_created","data":{"id":"1"}}"#);
    assert_eq!(r.status, 200);
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(wait_exit(&mut child).code(), Some(0));
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
        let mut c = taskcast();
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
