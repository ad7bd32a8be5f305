//! JWKS: the public keys the front end publishes (BetterAuth's `jwt()`
//! plugin serves them at `/api/auth/jwks`), kept fresh without ever blocking
//! the event loop.
//!
//! - [`keyset`]: a JWK Set parsed into usable keys by `kid` (pure).
//! - [`fetch`]: getting the documents — JWKS_URL over http or https (ureq,
//!   rustls, SSL_CERT_FILE for a private CA), JWKS_FILE from disk — and
//!   merging the two sources.
//! - [`Keys`] (here): the loop's handle — the current set behind a lock held
//!   only to clone an `Arc`, a non-blocking request for a refetch, and
//!   [`Keys::health`].
//! - One helper thread, `taskcast-jwks`, owns every fetch after start-up:
//!   every JWKS_REFRESH_SECS, and when a token names an unknown `kid` — at
//!   most once per [`REFETCH_MIN_INTERVAL`], so a stream of bogus kids cannot
//!   make us hammer the front end. A failed fetch keeps the last good keys.
//!   A panic inside a refresh is caught, logged and counted as a failure;
//!   should the thread end any other way than with its [`Keys`] (so the
//!   server) being dropped, it logs an error and [`JwksHealth::thread_alive`]
//!   turns false.

pub mod fetch;
pub mod keyset;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use serde::Serialize;

pub use keyset::{Key, KeySet};

use crate::config::{Config, ConfigError};
use fetch::{Fetcher, Sources};

/// Refetches triggered by unknown `kid`s happen at most this often.
pub const REFETCH_MIN_INTERVAL: Duration = Duration::from_secs(30);

/// The key fetcher's state, as [`Keys::health`] reports it: for `/ready`,
/// metrics and logs. Serializes with camelCase names (`keys`, `fetches`,
/// `failures`, `secsSinceSuccess`, `threadAlive`, `lastError`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JwksHealth {
    /// Usable keys tokens are checked against now (JWKS_URL's and
    /// JWKS_FILE's merged). Never 0 while the server runs: start-up fails
    /// without a key, and a refresh that yields none keeps the old ones.
    pub keys: usize,
    /// Refreshes attempted since start-up, the start-up load included; each
    /// reads every configured source once (timer and unknown-kid refetches
    /// alike; refetches skipped by the rate limit do not count).
    pub fetches: u64,
    /// How many of those failed: at least one source could not be fetched,
    /// read or parsed (that source's last good keys were kept).
    pub failures: u64,
    /// Whole seconds since the last refresh in which every source succeeded;
    /// `None` if none has yet (e.g. JWKS_URL down since start-up, keys from
    /// JWKS_FILE only). Grows past JWKS_REFRESH_SECS while fetches fail.
    pub secs_since_success: Option<u64>,
    /// Whether the fetch thread is running. `false` means the keys are
    /// frozen: no interval refresh, no unknown-kid refetch (the thread's end
    /// was logged as an error). Worth failing a readiness check on.
    pub thread_alive: bool,
    /// Why the most recent refresh failed (sources and reasons, one line; no
    /// token is ever part of it); `None` when it succeeded.
    pub last_error: Option<String>,
}

/// What the loop and the fetch thread share: the key set and the counters
/// behind [`JwksHealth`]. Readers take no lock but the set's (to clone an
/// `Arc`) and, for `last_error` only, a mutex held to clone a string.
struct Shared {
    /// The set every verification reads; replaced whole after each refresh.
    current: RwLock<Arc<KeySet>>,
    /// `current`'s length, so `health` needs no lock for it.
    keys: AtomicUsize,
    fetches: AtomicU64,
    failures: AtomicU64,
    /// Milliseconds from `started` to the last fully good refresh, plus 1;
    /// 0 = never.
    last_success: AtomicU64,
    started: Instant,
    /// Cleared by the fetch thread's guard as the thread ends, however it ends.
    alive: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl Shared {
    fn new(set: KeySet) -> Shared {
        Shared {
            keys: AtomicUsize::new(set.len()),
            current: RwLock::new(Arc::new(set)),
            fetches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_success: AtomicU64::new(0),
            started: Instant::now(),
            alive: AtomicBool::new(true),
            last_error: Mutex::new(None),
        }
    }

    /// Counts one refresh and publishes its keys (`None`: keep the current set).
    fn record(&self, set: Option<KeySet>, outcome: Result<(), String>) {
        if let Some(set) = set {
            self.keys.store(set.len(), Ordering::Relaxed);
            *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        }
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let error = match outcome {
            Ok(()) => {
                let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
                self.last_success.store(ms + 1, Ordering::Relaxed);
                None
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                Some(e)
            }
        };
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }
}

/// The loop's handle on the keys.
pub struct Keys {
    shared: Arc<Shared>,
    /// Refetch requests to the fetch thread. Capacity 1 with `try_send`: a
    /// request already pending covers a new one, and the loop never waits.
    /// Dropping it (with the server) ends the thread.
    refetch: SyncSender<()>,
    /// The fetch thread; `is_finished` backs `thread_alive`.
    thread: JoinHandle<()>,
    /// Set once the thread's absence has been logged by `request_refetch`,
    /// so a stream of unknown kids logs it once.
    gone_logged: AtomicBool,
}

impl Keys {
    /// Loads the keys once — blocking, at start-up, before the loop runs —
    /// then starts the fetch thread. `None` when no JWKS is configured.
    ///
    /// Fails, naming the variable, when JWKS_FILE is set but unreadable or
    /// holds no usable key, when SSL_CERT_FILE is needed but unusable, or
    /// when JWKS_URL answers nothing usable (unreachable, refused
    /// certificate, not a JWKS) and no key is available from JWKS_FILE.
    pub fn start(config: &Config) -> Result<Option<Keys>, ConfigError> {
        if config.jwks_url.is_none() && config.jwks_file.is_none() {
            return Ok(None);
        }
        let fetcher = match &config.jwks_url {
            Some(url) => Some(Fetcher::new(url, config.ssl_cert_file.as_deref())?),
            None => None,
        };
        let mut sources = Sources::new(fetcher, config.jwks_file.clone());
        if let Some(path) = &config.jwks_file {
            sources
                .load_file()
                .map_err(|e| ConfigError { var: "JWKS_FILE", message: format!("{}: {e}", path.display()) })?;
        }
        let mut outcome = Ok(());
        if let Some(url) = &config.jwks_url
            && let Err(e) = sources.load_url()
        {
            if !sources.file_has_keys() {
                return Err(ConfigError {
                    var: "JWKS_URL",
                    message: format!("{url}: {e}; no key is available to start with (is the app running?)"),
                });
            }
            warn!("JWKS_URL {url}: {e}; starting with the keys from JWKS_FILE only");
            outcome = Err(format!("JWKS_URL {url}: {e}"));
        }
        let set = sources.current();
        info!("JWKS loaded from {sources}: {set}");
        let shared = Arc::new(Shared::new(KeySet::default()));
        shared.record(Some(set), outcome);
        let keys = Keys::spawn(shared, move || sources.refresh(), config.jwks_refresh).map_err(|e| ConfigError {
            var: if config.jwks_url.is_some() { "JWKS_URL" } else { "JWKS_FILE" },
            message: format!("cannot start the JWKS thread: {e}"),
        })?;
        Ok(Some(keys))
    }

    /// Starts the fetch thread around `refresh` (one reload of every source).
    fn spawn(
        shared: Arc<Shared>,
        refresh: impl FnMut() -> (KeySet, Result<(), String>) + Send + 'static,
        interval: Duration,
    ) -> std::io::Result<Keys> {
        let (refetch, requests) = mpsc::sync_channel(1);
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("taskcast-jwks".into())
            .spawn(move || run(thread_shared, refresh, requests, interval))?;
        Ok(Keys { shared, refetch, thread, gone_logged: AtomicBool::new(false) })
    }

    /// The current key set (a brief read lock to clone an `Arc`).
    pub fn current(&self) -> Arc<KeySet> {
        self.shared.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Asks the fetch thread for a refetch; never blocks. The thread decides
    /// whether the rate limit allows it.
    pub fn request_refetch(&self) {
        match self.refetch.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) => {}
            Err(TrySendError::Disconnected(())) => {
                if !self.gone_logged.swap(true, Ordering::Relaxed) {
                    error!("the JWKS fetch thread is gone: unknown kids cannot be refetched (keys are frozen)");
                }
            }
        }
    }

    /// The fetcher's state; cheap (atomics, plus a mutex held to clone
    /// `last_error`), so `/ready` or a metrics scrape may call it freely.
    pub fn health(&self) -> JwksHealth {
        let s = &self.shared;
        let last = s.last_success.load(Ordering::Relaxed);
        let secs_since_success = (last > 0).then(|| {
            let at = s.started + Duration::from_millis(last - 1);
            Instant::now().saturating_duration_since(at).as_secs()
        });
        JwksHealth {
            keys: s.keys.load(Ordering::Relaxed),
            fetches: s.fetches.load(Ordering::Relaxed),
            failures: s.failures.load(Ordering::Relaxed),
            secs_since_success,
            thread_alive: s.alive.load(Ordering::Relaxed) && !self.thread.is_finished(),
            last_error: s.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

/// Spaces out refetches asked for by unknown kids.
#[derive(Default)]
struct RefetchLimit {
    last: Option<Instant>,
}

impl RefetchLimit {
    /// True (and the clock restarts) if a refetch may happen at `now`.
    fn allow(&mut self, now: Instant) -> bool {
        if self.last.is_some_and(|t| now.saturating_duration_since(t) < REFETCH_MIN_INTERVAL) {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// Marks the thread dead as it ends, and logs an end nobody asked for.
struct AliveGuard {
    shared: Arc<Shared>,
    /// Set just before the normal return (the [`Keys`] was dropped).
    asked_to_stop: bool,
}

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.shared.alive.store(false, Ordering::Relaxed);
        if !self.asked_to_stop {
            error!("the JWKS fetch thread ended unexpectedly: keys are no longer refreshed");
        }
    }
}

/// The fetch thread: refresh every `interval`, and on (rate-limited)
/// request; ends when the [`Keys`] is dropped.
fn run(
    shared: Arc<Shared>,
    mut refresh: impl FnMut() -> (KeySet, Result<(), String>),
    requests: Receiver<()>,
    interval: Duration,
) {
    let mut guard = AliveGuard { shared, asked_to_stop: false };
    let mut next = Instant::now() + interval;
    let mut limit = RefetchLimit::default();
    loop {
        match requests.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(()) if limit.allow(Instant::now()) => info!("a token named an unknown kid: refetching the JWKS"),
            Ok(()) => {
                debug!("unknown kid: refetch skipped (at most one per {}s)", REFETCH_MIN_INTERVAL.as_secs());
                continue;
            }
            Err(RecvTimeoutError::Timeout) => next = Instant::now() + interval,
            Err(RecvTimeoutError::Disconnected) => {
                guard.asked_to_stop = true;
                return;
            }
        }
        // A bug in a parser or the HTTP stack must not silently end key
        // rotation: count it as a failed refresh and go on with the old keys.
        match catch_unwind(AssertUnwindSafe(&mut refresh)) {
            Ok((set, outcome)) => guard.shared.record(Some(set), outcome),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                error!("JWKS refresh panicked ({what}); keeping the current keys");
                guard.shared.record(None, Err(format!("refresh panicked: {what}")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_key() -> KeySet {
        let doc =
            r#"{"keys":[{"kid":"a","kty":"OKP","crv":"Ed25519","x":"NJ4Kp5tr9HV5MfaiSVwbxhTuSPiOtA5QDUOOcwQimSY"}]}"#;
        KeySet::parse(doc.as_bytes()).unwrap().0
    }

    /// Waits (bounded) until `f` holds.
    fn eventually(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "{what}: not within 5s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn refetch_limit() {
        let t0 = Instant::now();
        let mut limit = RefetchLimit::default();
        assert!(limit.allow(t0), "the first unknown kid refetches at once");
        assert!(!limit.allow(t0 + Duration::from_secs(1)));
        assert!(!limit.allow(t0 + REFETCH_MIN_INTERVAL - Duration::from_millis(1)));
        assert!(limit.allow(t0 + REFETCH_MIN_INTERVAL));
        assert!(!limit.allow(t0 + REFETCH_MIN_INTERVAL + Duration::from_secs(29)));
    }

    /// A refresh that panics is a counted, reported failure; the thread
    /// lives on, keeps the keys, and the next refresh works.
    #[test]
    fn a_panicking_refresh_is_a_failure_not_a_dead_thread() {
        let shared = Arc::new(Shared::new(KeySet::default()));
        shared.record(Some(one_key()), Ok(()));
        let mut calls = 0;
        let refresh = move || {
            calls += 1;
            match calls {
                1 => panic!("boom in a parser"),
                2 => (one_key(), Err("JWKS_URL x: answered 500".to_string())),
                _ => (one_key(), Ok(())),
            }
        };
        let keys = Keys::spawn(shared, refresh, Duration::from_secs(3600)).unwrap();
        let h = keys.health();
        assert_eq!((h.keys, h.fetches, h.failures, h.thread_alive, h.last_error), (1, 1, 0, true, None));
        assert_eq!(h.secs_since_success, Some(0));

        keys.request_refetch();
        eventually("the panic is counted", || keys.health().fetches == 2);
        let h = keys.health();
        assert_eq!((h.failures, h.keys, h.thread_alive), (1, 1, true), "{h:?}");
        assert!(h.last_error.as_deref().is_some_and(|e| e.contains("panicked: boom in a parser")), "{h:?}");
        assert_eq!(keys.current().len(), 1, "the keys survive");

        // Past the refetch limit: drive the next refreshes with a short interval instead.
        drop(keys);
        let shared = Arc::new(Shared::new(one_key()));
        let mut calls = 0;
        let refresh = move || {
            calls += 1;
            if calls == 1 { (one_key(), Err("JWKS_URL x: answered 500".to_string())) } else { (one_key(), Ok(())) }
        };
        let keys = Keys::spawn(shared, refresh, Duration::from_millis(20)).unwrap();
        eventually("a failure then a success", || keys.health().fetches >= 2);
        let h = keys.health();
        assert_eq!(h.failures, 1, "{h:?}");
        assert_eq!(h.last_error, None, "a success clears last_error: {h:?}");
        assert_eq!(h.secs_since_success, Some(0));
    }

    #[test]
    fn thread_alive_turns_false_when_the_thread_ends() {
        let keys =
            Keys::spawn(Arc::new(Shared::new(one_key())), || (one_key(), Ok(())), Duration::from_secs(3600)).unwrap();
        assert!(keys.health().thread_alive);
        assert_eq!(keys.health().secs_since_success, None, "nothing recorded yet");
        // End the thread the normal way while keeping the handle's view of it.
        let Keys { shared, refetch, thread, .. } = keys;
        drop(refetch);
        thread.join().unwrap();
        assert!(!shared.alive.load(Ordering::Relaxed));
    }

    #[test]
    fn health_serializes_with_documented_names() {
        let h = JwksHealth {
            keys: 2,
            fetches: 5,
            failures: 1,
            secs_since_success: Some(7),
            thread_alive: true,
            last_error: None,
        };
        assert_eq!(
            serde_json::to_value(&h).unwrap(),
            serde_json::json!({"keys":2,"fetches":5,"failures":1,"secsSinceSuccess":7,"threadAlive":true,"lastError":null})
        );
    }
}
