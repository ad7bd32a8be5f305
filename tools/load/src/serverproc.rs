//! The server under test as a process: started by the soak (clean
//! environment, stderr captured line by line into a [`LogBook`] and a log
//! file) or attached to by pid. Either way: liveness, fd count, RSS.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::sysinfo;
use crate::verdict::LogBook;

pub struct ServerProc {
    pub pid: u32,
    /// Set when we started it (and must stop it).
    child: Option<Child>,
    /// What it logged (started servers only).
    pub log: Option<Arc<Mutex<LogBook>>>,
    log_thread: Option<JoinHandle<()>>,
    /// Where every line it logged is kept.
    pub log_path: Option<PathBuf>,
    /// How it ended, once it has.
    pub exit: Option<String>,
}

impl ServerProc {
    /// Starts `path` with exactly `env` (nothing inherited: a stray PORT
    /// or .env of the caller must not change the run) in `workdir` (which
    /// holds no .env), stderr captured.
    pub fn spawn(path: &str, env: &[(String, String)], workdir: &Path) -> Result<ServerProc, String> {
        let log_path = workdir.join("server.log");
        let mut file =
            std::fs::File::create(&log_path).map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        // absolute: the child starts in `workdir`
        let exe = std::fs::canonicalize(path).map_err(|e| format!("cannot start {path}: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.env_clear().current_dir(workdir).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        // If this tool dies (killed by a CI timeout, say), the server gets
        // SIGTERM instead of living on with its port.
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
        let mut child = cmd.spawn().map_err(|e| format!("cannot start {path}: {e}"))?;
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;
        let log = Arc::new(Mutex::new(LogBook::default()));
        let book = log.clone();
        let log_thread = std::thread::Builder::new()
            .name("server-log".into())
            .spawn(move || {
                // Ends when the server closes stderr (exits).
                let mut r = BufReader::new(stderr);
                let mut line = String::new();
                while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
                    let _ = file.write_all(line.as_bytes());
                    book.lock().unwrap_or_else(|e| e.into_inner()).add(line.trim_end());
                    line.clear();
                }
            })
            .map_err(|e| format!("cannot start the log reader: {e}"))?;
        Ok(ServerProc {
            pid: child.id(),
            child: Some(child),
            log: Some(log),
            log_thread: Some(log_thread),
            log_path: Some(log_path),
            exit: None,
        })
    }

    /// A server someone else started.
    pub fn attach(pid: u32) -> Result<ServerProc, String> {
        if !sysinfo::alive(pid) {
            return Err(format!("no process {pid} (--server-pid)"));
        }
        Ok(ServerProc { pid, child: None, log: None, log_thread: None, log_path: None, exit: None })
    }

    pub fn spawned(&self) -> bool {
        self.child.is_some()
    }

    /// Waits (bounded) for the "listening on ADDR" log line.
    pub fn wait_listening(&mut self, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(a) =
                self.log.as_ref().and_then(|l| l.lock().unwrap_or_else(|e| e.into_inner()).listening.clone())
            {
                return Ok(a);
            }
            if let Some(e) = self.check_exit() {
                return Err(format!("the server exited at start-up ({e}); its log:\n{}", self.log_tail()));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the server did not log `listening on` within {timeout:?}; its log:\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Some(how it ended) once the process is gone.
    pub fn check_exit(&mut self) -> Option<String> {
        if self.exit.is_some() {
            return self.exit.clone();
        }
        match self.child.as_mut() {
            Some(c) => match c.try_wait() {
                Ok(Some(st)) => self.exit = Some(st.to_string()),
                Ok(None) => {}
                Err(e) => self.exit = Some(format!("cannot wait for it: {e}")),
            },
            None if !sysinfo::alive(self.pid) => self.exit = Some("process gone".into()),
            None => {}
        }
        self.exit.clone()
    }

    pub fn fds(&self) -> Option<usize> {
        sysinfo::fd_count(self.pid)
    }

    pub fn rss_kib(&self) -> Option<u64> {
        sysinfo::rss_kib(self.pid)
    }

    /// SIGTERM (graceful: a drain closes clients with 1012, exit 0), then waits up to
    /// `grace`; SIGKILL after that. Only for a server we started. Returns
    /// how it exited.
    pub fn stop(&mut self, grace: Duration) -> Option<String> {
        let child = self.child.as_mut()?;
        if self.exit.is_none() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + grace;
            loop {
                match child.try_wait() {
                    Ok(Some(st)) => {
                        self.exit = Some(st.to_string());
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                    _ => {
                        let _ = child.kill();
                        let st = child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                        self.exit = Some(format!("did not exit within {grace:?} of SIGTERM; killed ({st})"));
                        break;
                    }
                }
            }
        }
        if let Some(t) = self.log_thread.take() {
            let _ = t.join();
        }
        self.exit.clone()
    }

    /// The last lines the server logged.
    pub fn log_tail(&self) -> String {
        match &self.log {
            Some(l) => {
                let l = l.lock().unwrap_or_else(|e| e.into_inner());
                l.tail.iter().map(|s| format!("  {s}")).collect::<Vec<_>>().join("\n")
            }
            None => "  (not captured)".into(),
        }
    }

    pub fn log_book(&self) -> Option<LogBook> {
        self.log.as_ref().map(|l| l.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

impl Drop for ServerProc {
    /// Never leave a started server behind (an early error, a panic).
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut()
            && matches!(c.try_wait(), Ok(None))
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
