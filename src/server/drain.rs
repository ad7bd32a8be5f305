//! Stopping: signals, the staggered drain, and the final shutdown.
//!
//! | event | running | draining | final grace |
//! |---|---|---|---|
//! | SIGTERM, [`ShutdownHandle::drain`] | start the drain | finish now | finish now |
//! | SIGINT, [`ShutdownHandle::shutdown`] | shut down now (1001) | finish now | finish now |
//!
//! The drain (a deploy behind a load balancer): `/ready` answers 503 at
//! once, new upgrades get 503 + Retry-After, and the clients connected when
//! it began are closed with 1012 ("service restart") spread evenly over
//! DRAIN_SECS — so their reconnects reach the other instances gradually,
//! not as one storm. The listener stays open meanwhile (health checks and
//! publishers still get answers). Then the final shutdown: the listener
//! closes, what is left gets 1001, and SHUTDOWN_GRACE_SECS for clients to
//! answer their close frames.
//!
//! "Finish now" closes every remaining client with 1001 at once and allows
//! [`FINISH_GRACE`] at most for the close frames to leave.
//!
//! The drain is a timer of the loop, not a sleep: [`Drain::next`] is one of
//! the deadlines `poll_timeout` waits for, and each tick closes the slice
//! of clients that is due by then.

use std::io::{self, Read};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use log::info;
use mio::Interest;

use super::conn::Phase;
use super::{SIGNALS, Server, ShutdownHandle};
use crate::ws::Reason;

/// A second signal (or a stop during the drain) leaves this long at most
/// for the 1001 close frames to go out.
pub(super) const FINISH_GRACE: Duration = Duration::from_secs(1);

/// Ticks closer together than this close several clients each instead
/// (10k clients over 10 s: ten per 10 ms tick, not one per millisecond).
const MIN_TICK: Duration = Duration::from_millis(10);

/// A drain in progress.
pub(super) struct Drain {
    started: Instant,
    /// DRAIN_SECS.
    window: Duration,
    /// The clients open when the drain began (key, id), closed from the
    /// back. No client joins later: upgrades are refused while draining.
    queue: Vec<(usize, u64)>,
    /// `queue`'s length at the start.
    total: usize,
    /// When the next slice is due.
    pub next: Instant,
}

impl Drain {
    /// How many clients should have been closed by `now`: the k-th of N at
    /// `started + window * k / N`, so the last one goes at the window's end.
    fn due(&self, now: Instant) -> usize {
        if self.window.is_zero() {
            return self.total;
        }
        let elapsed = now.saturating_duration_since(self.started).as_secs_f64();
        ((self.total as f64 * elapsed / self.window.as_secs_f64()) as usize).min(self.total)
    }

    fn handled(&self) -> usize {
        self.total - self.queue.len()
    }

    /// When the client after the `handled`-th is due.
    fn next_after(&self, now: Instant) -> Instant {
        let k = (self.handled() + 1) as f64 / self.total.max(1) as f64;
        (self.started + self.window.mul_f64(k)).max(now + MIN_TICK)
    }
}

/// Which signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Signal {
    Term,
    Int,
}

impl ShutdownHandle {
    /// Starts the staggered drain, as SIGTERM does: /ready turns 503,
    /// clients get 1012 spread over `Config::drain`, then the final shutdown.
    pub fn drain(&self) {
        self.drain.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

impl Server {
    /// SIGTERM drains, SIGINT stops at once; a second one of either
    /// finishes at once. Each handler counts its signal, then writes a byte
    /// to a pipe the loop polls (both async-signal-safe). One pipe for both:
    /// every fd counts when the open-file limit is tight.
    pub fn shutdown_on_signals(&mut self) -> io::Result<()> {
        let (read, write) = std::os::unix::net::UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        let write2 = write.try_clone()?;
        // Registered in this order, a handler counts before the byte.
        for (sig, count) in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT].iter().zip(&self.signal_counts)
        {
            let count = count.clone();
            // SAFETY: the action is one atomic add: async-signal-safe, no
            // allocation, no lock.
            unsafe {
                signal_hook::low_level::register(*sig, move || {
                    count.fetch_add(1, Ordering::SeqCst);
                })?;
            }
        }
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGTERM, write)?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGINT, write2)?;
        let mut read = mio::net::UnixStream::from_std(read);
        self.poll.registry().register(&mut read, SIGNALS, Interest::READABLE)?;
        self.signals = Some(read);
        Ok(())
    }

    /// The signal pipe is readable (its bytes only wake us; the counts say
    /// which signals came).
    pub(super) fn on_signal_pipe(&mut self, now: Instant) {
        let mut buf = [0u8; 64];
        while let Some(pipe) = &mut self.signals
            && let Ok(1..) = pipe.read(&mut buf)
        {}
        for (i, signal) in [Signal::Term, Signal::Int].into_iter().enumerate() {
            // Two are as good as more: the second one finishes.
            for _ in 0..self.signal_counts[i].swap(0, Ordering::SeqCst).min(2) {
                self.on_signal(signal, now);
            }
        }
    }

    fn on_signal(&mut self, signal: Signal, now: Instant) {
        match (signal, self.stopping()) {
            (Signal::Term, false) => self.start_drain(now),
            (Signal::Int, false) => {
                info!("SIGINT: shutting down");
                self.stop.store(true, Ordering::SeqCst);
            }
            (_, true) => {
                info!("{signal:?} again: finishing now");
                self.finish_now(now);
            }
        }
    }

    /// Draining or shutting down: /ready fails, upgrades are refused,
    /// responses carry `Connection: close`.
    pub(super) fn stopping(&self) -> bool {
        self.drain.is_some() || self.shutdown_deadline.is_some() || self.stop.load(Ordering::SeqCst)
    }

    /// Acts on [`ShutdownHandle`] requests; called at the top of each turn.
    pub(super) fn check_requests(&mut self, now: Instant) {
        if self.drain_requested.swap(false, Ordering::SeqCst) {
            if self.stopping() { self.finish_now(now) } else { self.start_drain(now) }
        }
        if self.stop.load(Ordering::SeqCst) && self.shutdown_deadline.is_none() {
            // A stop during a drain finishes it; otherwise it is today's
            // immediate shutdown.
            let grace = if self.drain.take().is_some() {
                self.config.shutdown_grace.min(FINISH_GRACE)
            } else {
                self.config.shutdown_grace
            };
            self.begin_shutdown(now, grace);
        }
    }

    fn start_drain(&mut self, now: Instant) {
        let queue: Vec<(usize, u64)> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(&c.phase, Phase::Ws(ws) if ws.close_deadline.is_none()))
            .map(|(k, c)| (k, c.id))
            .collect();
        info!(
            "draining: closing {} clients with 1012 over {:?}, then a grace of {:?}",
            queue.len(),
            self.config.drain,
            self.config.shutdown_grace
        );
        self.drain = Some(Drain { started: now, window: self.config.drain, total: queue.len(), queue, next: now });
        self.drain_tick(now);
    }

    /// Closes the slice of clients due by `now`; after the last one, the
    /// final shutdown begins.
    pub(super) fn drain_tick(&mut self, now: Instant) {
        let Some(drain) = &mut self.drain else { return };
        let mut slice = Vec::new();
        while drain.handled() < drain.due(now)
            && let Some(client) = drain.queue.pop()
        {
            slice.push(client);
        }
        let done = drain.queue.is_empty();
        drain.next = drain.next_after(now);
        for (key, id) in slice {
            if self.conns.get(key).is_some_and(|c| c.id == id) {
                self.close_ws(key, Reason::Restart, now);
            }
        }
        if done {
            self.drain = None;
            self.begin_shutdown(now, self.config.shutdown_grace);
        }
    }

    /// Ends a drain or a grace period early: 1001 to every client left, and
    /// at most [`FINISH_GRACE`] more.
    fn finish_now(&mut self, now: Instant) {
        match self.shutdown_deadline {
            Some(deadline) => self.shutdown_deadline = Some(deadline.min(now + FINISH_GRACE)),
            None => {
                self.drain = None;
                self.begin_shutdown(now, self.config.shutdown_grace.min(FINISH_GRACE));
            }
        }
    }
}
