//! A real `redis-server` for the cluster tests: started on a free port of
//! 127.0.0.1 with no persistence, killed on drop, and stoppable/restartable
//! on the same port for fault tests. `.ci/run` installs the Debian package.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Upper bound for redis-server to start answering PING.
const START_WAIT: Duration = Duration::from_secs(10);
/// Ports tried before giving up (another process may take the free port we
/// picked before redis-server binds it).
const PORT_TRIES: usize = 5;

pub struct RedisServer {
    pub port: u16,
    /// Extra redis-server arguments (e.g. `--requirepass`), kept for restarts.
    args: Vec<String>,
    /// The password from `--requirepass`, for [`RedisServer::url`].
    password: Option<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one on a free port; panics (with how to install it) if
    /// redis-server is missing or never answers.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Like [`RedisServer::start`] with extra redis-server arguments.
    pub fn start_with(args: &[&str]) -> RedisServer {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let password = args.iter().position(|a| a == "--requirepass").and_then(|i| args.get(i + 1)).cloned();
        for _ in 0..PORT_TRIES {
            // Bind port 0 to learn a free port, then release it for redis.
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut server = RedisServer { port, args: args.clone(), password: password.clone(), child: None };
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on any of {PORT_TRIES} free ports");
    }

    /// `redis://127.0.0.1:PORT/0`, with the password when there is one.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// Kills it (SIGKILL: like a crash, nothing is flushed) and waits.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A paused process dies of SIGKILL too; SIGCONT first anyway so
            // nothing is left stopped if the kill fails.
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes it (SIGSTOP): connections stay open but nothing is answered,
    /// like a hung server or a network partition.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Undoes [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().expect("running").id();
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(pid as i32, sig) };
    }

    /// Starts it again on the same port, empty (there is no persistence).
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + START_WAIT;
        while !self.spawn() {
            assert!(Instant::now() < deadline, "redis-server did not restart on port {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A direct connection, for inspecting and tampering in tests.
    pub fn client(&self) -> redis::Connection {
        let c = redis::Client::open(self.url()).unwrap();
        let conn = c.get_connection_with_timeout(Duration::from_secs(2)).expect("connect to the test redis");
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn
    }

    /// Runs one command directly.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query(&mut self.client()).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// Starts the process and waits until it answers PING. False if it
    /// exited (the port was taken meanwhile).
    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", std::env::temp_dir().to_str().unwrap()])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                panic!("cannot run redis-server ({e}); install it: apt-get install redis-server (.ci/run does this)")
            }
        };
        let deadline = Instant::now() + START_WAIT;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if serves(&self.url(), child.id()) {
                self.child = Some(child);
                return true;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-server on port {} did not answer PING within {START_WAIT:?}", self.port);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// True if the redis-server with process id `pid` answers at `url` (and
/// not some other test's, which may have taken the port meanwhile).
fn serves(url: &str, pid: u32) -> bool {
    let Ok(client) = redis::Client::open(url) else { return false };
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(500)) else { return false };
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    let Ok(info) = redis::cmd("INFO").arg("server").query::<String>(&mut conn) else { return false };
    info.lines().any(|l| l.trim() == format!("process_id:{pid}"))
}
