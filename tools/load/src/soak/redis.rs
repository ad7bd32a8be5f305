//! The cluster soak's Redis: a real `redis-server` from PATH started here
//! on a free port of 127.0.0.1 with no persistence (`--save ''
//! --appendonly no`), its output kept in the run's directory, stopped at the
//! end; and a PING over plain TCP to tell it is up.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::sysinfo;

/// Upper bound for redis-server to start answering PING.
const START_WAIT: Duration = Duration::from_secs(10);
/// Free ports tried (another process may take the one we picked before
/// redis-server binds it).
const PORT_TRIES: usize = 5;

pub struct RedisProc {
    pub port: u16,
    pub pid: u32,
    child: Child,
    pub log_path: PathBuf,
    /// How it ended, once it has.
    pub exit: Option<String>,
}

/// The first `name` in the directories of a PATH value.
pub fn find_in_path(path_var: &str, name: &str) -> Option<PathBuf> {
    std::env::split_paths(path_var).map(|d| d.join(name)).find(|p| p.is_file())
}

/// redis-server's arguments: this port on loopback, no persistence, its
/// working directory (where it would write) the run's directory.
pub fn server_args(port: u16, dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", &dir]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// True when `reply` is a complete RESP answer to PING.
pub fn is_pong(reply: &[u8]) -> bool {
    reply.starts_with(b"+PONG\r\n")
}

/// One PING on a new connection, bounded; true on PONG.
pub fn ping(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < 7 {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got += n,
        }
    }
    is_pong(&buf[..got])
}

impl RedisProc {
    /// Starts one in `dir`; a clear error if redis-server is not on PATH.
    pub fn start(dir: &Path) -> Result<RedisProc, String> {
        let path_var = std::env::var("PATH").unwrap_or_default();
        let exe = find_in_path(&path_var, "redis-server").ok_or(
            "--cluster needs redis-server on PATH (Debian: apt-get install redis-server; .ci/run installs it)",
        )?;
        let log_path = dir.join("redis.log");
        let mut last = String::new();
        for _ in 0..PORT_TRIES {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("cannot find a free port: {e}"))?
                .port();
            match RedisProc::spawn(&exe, port, dir, &log_path) {
                Ok(r) => return Ok(r),
                Err(e) => last = e,
            }
        }
        Err(format!("redis-server did not start on any of {PORT_TRIES} free ports: {last}"))
    }

    fn spawn(exe: &Path, port: u16, dir: &Path, log_path: &Path) -> Result<RedisProc, String> {
        let log = std::fs::File::create(log_path).map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(exe);
        cmd.args(server_args(port, dir)).stdin(Stdio::null()).stdout(log).stderr(err);
        // As for the taskcast instances: if this tool dies, so does Redis.
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child
        // between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let mut r = RedisProc { port, pid: child.id(), child, log_path: log_path.to_path_buf(), exit: None };
        let deadline = Instant::now() + START_WAIT;
        while !ping(port) {
            if let Some(e) = r.check_exit() {
                return Err(format!("redis-server exited at start-up ({e}); see {}", log_path.display()));
            }
            if Instant::now() >= deadline {
                return Err(format!("redis-server did not answer PING on port {port} within {START_WAIT:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Some(how it ended) once the process is gone.
    pub fn check_exit(&mut self) -> Option<String> {
        if self.exit.is_none() {
            match self.child.try_wait() {
                Ok(Some(st)) => self.exit = Some(st.to_string()),
                Ok(None) => {}
                Err(e) => self.exit = Some(format!("cannot wait for it: {e}")),
            }
        }
        self.exit.clone()
    }

    pub fn rss_kib(&self) -> Option<u64> {
        sysinfo::rss_kib(self.pid)
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self) {
        if self.check_exit().is_some() {
            return;
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.check_exit().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.exit = Some("killed after 5 s".into());
        }
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pong_is_recognised() {
        assert!(is_pong(b"+PONG\r\n"));
        assert!(!is_pong(b"+PON"));
        assert!(!is_pong(b"-NOAUTH Authentication required.\r\n"));
        assert!(!is_pong(b""));
    }

    #[test]
    fn args_disable_persistence() {
        let a = server_args(6399, Path::new("/tmp/x"));
        let at = |k: &str| a.iter().position(|s| s == k).map(|i| a[i + 1].as_str());
        assert_eq!(at("--port"), Some("6399"));
        assert_eq!(at("--bind"), Some("127.0.0.1"));
        assert_eq!(at("--save"), Some(""), "an empty --save turns RDB snapshots off");
        assert_eq!(at("--appendonly"), Some("no"));
        assert_eq!(at("--dir"), Some("/tmp/x"));
    }

    #[test]
    fn path_lookup() {
        let dir = std::env::temp_dir().join(format!("taskcast-load-path-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("some-tool"), b"").unwrap();
        let path = format!("/nonexistent-dir:{}", dir.display());
        assert_eq!(find_in_path(&path, "some-tool"), Some(dir.join("some-tool")));
        assert_eq!(find_in_path(&path, "other-tool"), None);
        assert_eq!(find_in_path("", "some-tool"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Through a real redis-server when the machine has one (CI does:
    /// `.ci/run` installs it).
    #[test]
    fn starts_answers_and_stops() {
        if find_in_path(&std::env::var("PATH").unwrap_or_default(), "redis-server").is_none() {
            eprintln!("redis-server not on PATH; skipped");
            return;
        }
        let dir = std::env::temp_dir().join(format!("taskcast-load-redis-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = RedisProc::start(&dir).unwrap();
        assert!(ping(r.port));
        assert!(r.url().ends_with(&format!(":{}/0", r.port)));
        r.stop();
        assert!(r.exit.is_some());
        assert!(!ping(r.port), "stopped: nothing answers on its port");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
