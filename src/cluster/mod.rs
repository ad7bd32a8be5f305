//! Cluster mode: several taskcast instances joined through one Redis (or
//! Valkey). Publishes go to Redis first; every instance delivers what Redis
//! hands back, so per channel every instance delivers the same messages in
//! the same order with the same offsets, and history lives in Redis, so a
//! client can recover on any instance.
//!
//! The event loop never waits on Redis. It owns a [`RedisLink`] and talks to
//! it only through channels: [`RedisLink::send`] queues a [`Command`] and
//! returns at once; answers and incoming messages come back as [`Event`]s
//! from [`RedisLink::try_recv`] after the loop's `mio::Waker` fires. Behind
//! the link, two helper threads each own one connection:
//!
//! - `taskcast-redis` (`commands.rs`): publishes, history reads and control
//!   records, each one atomic Lua script (`publish.lua`, `history.lua`,
//!   `broadcast_once.lua`, `control.lua`, `control_load.lua`, `page.lua`,
//!   kept as files next to the code), pipelined: whatever has queued up while a round trip was out
//!   goes in the next one.
//! - `taskcast-redis-sub` (`subscriber.rs`): the pub/sub connection, SUBSCRIBEd
//!   to the broadcast channel and to every channel the loop asked for.
//!
//! Keys and channel names are in [`keys`]; the pub/sub message format and the
//! replay rule ("the whole gap or nothing") in [`wire`]; REDIS_URL and
//! REDIS_PREFIX in [`config`].
//!
//! # What the loop does with it
//! - **Publish**: send one [`Command::Publish`] per target channel (each is
//!   atomic on its own; a publish to several channels is not); answer the
//!   HTTP request when every one has a [`Event::Published`] (its offset goes
//!   in the answer) or on the first [`Event::PublishFailed`] (503 with
//!   Retry-After). Deliver nothing on `Published`: the message comes back as
//!   an [`Event::Message`] like everyone else's, and delivering only those is
//!   what keeps this instance's order equal to Redis's.
//! - **A client subscribes to a channel no local client had**: send
//!   [`Command::Subscribe`], wait for [`Event::Subscribed`], then send
//!   [`Command::History`] (with the client's `since`, if any). Keep the
//!   channel's [`Event::Message`]s that arrive before the history answer;
//!   then deliver the history's entries (if `Some`) and after them the kept
//!   messages whose offset is above the history's `offset`. Reading history
//!   only after `Subscribed` is what makes this gap-free: anything published
//!   before the SUBSCRIBE took effect is in the history, anything after comes
//!   as a message, and the overlap is removed by offset.
//! - **Its last local client leaves**: send [`Command::Unsubscribe`]. Reference
//!   counting is the loop's job; the link does what it is told. Messages for
//!   a channel can still arrive shortly after its `Unsubscribe`: drop them.
//! - **Gaps**: pub/sub is at-most-once. After [`Event::LinkDown`] →
//!   [`Event::LinkUp`] every subscribed channel may have missed messages
//!   (the link has resubscribed all of them before `LinkUp`). Send
//!   [`Command::History`] with `since` = (epoch, last offset delivered) for
//!   each: `entries: Some` fills the gap, `None` means it cannot be filled
//!   (tell the channel's clients `recovered:false`). The same applies when a
//!   [`Event::Message`]'s offset is not last+1, or its epoch differs from the
//!   one the loop knows (the channel's meta was flushed or evicted in Redis:
//!   offsets restarted at 1 under a new epoch).
//! - **The server API** (`crate::control`): a publish with an
//!   `Idempotency-Key` is a [`Command::PublishOnce`]; an unsubscribe,
//!   disconnect or revoke is stored and announced with [`Command::Control`];
//!   every instance hears them as [`Event::Control`] (the pub/sub connection
//!   is always in the control channel, like the broadcast one) and, after
//!   every [`Event::LinkUp`], sends [`Command::LoadControl`] before any gap
//!   repair, to catch up on what it missed. Positions and history for pages
//!   are [`Command::Page`].

mod commands;
pub mod config;
pub mod keys;
mod subscriber;
pub mod wire;

use std::cell::Cell;
use std::io;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::{info, warn};

pub use config::{RedisConfig, parse_redis_env};

/// The channel name in [`Command::Publish`] and [`Event::Message`] that means
/// the original broadcast to everyone: no offset, no epoch, no history.
/// (`*` is not a valid channel name, so it cannot clash with one.)
pub const BROADCAST: &str = "*";

/// How long a channel's meta hash (epoch and last offset) lives after its
/// last publish. Much longer than the history: while it lives, a quiet
/// channel keeps its epoch and its offsets keep counting up, so a client
/// coming back after the history expired gets an honest `recovered:false`
/// instead of a new epoch whose offsets restart below the ones it has seen.
pub const META_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Publishes and history reads queued for the Redis thread at most; past
/// that [`RedisLink::send`] hands the command back (answer 503).
pub const COMMAND_QUEUE: usize = 16 * 1024;
/// Events queued for the loop at most. When the loop falls this far behind,
/// the helper threads wait: pub/sub then backs up into Redis, whose output
/// buffer limit for pub/sub clients eventually drops the connection — a
/// LinkDown/LinkUp, i.e. a gap the loop repairs from history, instead of
/// unbounded memory here.
pub const EVENT_QUEUE: usize = 64 * 1024;

/// What the loop asks of Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Store `kind`/`payload` as the channel's next message (offset, stream
    /// entry) and PUBLISH it, in one atomic script. Answered by
    /// [`Event::Published`] or [`Event::PublishFailed`] with the same `id`.
    /// With `channel` = [`BROADCAST`]: only PUBLISH to every instance.
    Publish {
        /// The loop's own tag (e.g. the parked HTTP request), echoed back.
        id: u64,
        channel: String,
        /// The message type (`"task_updated"`).
        kind: String,
        /// The message data as raw JSON text; passed through untouched.
        payload: String,
    },
    /// The channel's current epoch and latest offset and, with `since`, the
    /// messages after it. Answered by [`Event::History`] or
    /// [`Event::HistoryFailed`]. Fixes the channel's epoch in Redis if it had
    /// none yet, so the answer's epoch is the one its first message will carry.
    History {
        id: u64,
        channel: String,
        /// `(epoch, offset)` the subscriber last saw.
        since: Option<(String, u64)>,
    },
    /// [`Command::Publish`] with an `Idempotency-Key`: stored and published
    /// only if `key` was not seen on this channel within `ttl_secs`, in the
    /// same atomic step. Answered by [`Event::Published`] (with `duplicate`
    /// set, and the first publish's epoch and offset, when it was seen) or
    /// [`Event::PublishFailed`]. [`BROADCAST`] works too (PUBLISH only).
    PublishOnce { id: u64, channel: String, kind: String, payload: String, key: String, ttl_secs: u64 },
    /// Store a control record under `field` (the later `before` wins) and
    /// PUBLISH `message` on the control channel, in one step (`control.lua`).
    /// Answered by [`Event::ControlStored`] or [`Event::ControlFailed`].
    Control { id: u64, field: String, record: String, message: String, before: u64, expires: u64 },
    /// Every control record in force. Answered by [`Event::ControlLoaded`]
    /// or [`Event::ControlFailed`].
    LoadControl { id: u64 },
    /// A channel's position, the oldest offset it holds, and up to `limit`
    /// held messages after `since` (from the oldest without it, or when its
    /// epoch is not the channel's). Fixes the epoch like [`Command::History`].
    /// Answered by [`Event::Page`] or [`Event::ControlFailed`].
    Page { id: u64, channel: String, since: Option<(String, u64)>, limit: usize },
    /// SUBSCRIBE to the channel; answered by [`Event::Subscribed`] once it is
    /// in effect. The broadcast channel is always subscribed.
    Subscribe { channel: String },
    /// UNSUBSCRIBE from the channel. No answer.
    Unsubscribe { channel: String },
}

/// One stored message, as history returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub offset: u64,
    pub kind: String,
    /// Raw JSON text, as it was published.
    pub payload: String,
}

/// What Redis answered, or sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Redis stored and published the message: it now has `offset` in its
    /// channel (0 and an empty epoch for [`BROADCAST`]).
    Published {
        id: u64,
        channel: String,
        epoch: String,
        offset: u64,
        /// A [`Command::PublishOnce`] whose key was seen: nothing was
        /// stored or published; `epoch` and `offset` are the first publish's.
        duplicate: bool,
    },
    /// Not published, or not known to be: Redis is down, the link is
    /// reconnecting, the queue is full, or the connection broke while the
    /// script was out (then it may have run). The loop answers 503.
    PublishFailed {
        id: u64,
        channel: String,
        error: String,
    },
    /// A message on a subscribed channel (or [`BROADCAST`], with offset 0 and
    /// an empty epoch), from any instance, in Redis's order for that channel.
    /// At most once: see [`Event::LinkUp`].
    Message {
        channel: String,
        epoch: String,
        offset: u64,
        kind: String,
        payload: String,
    },
    /// The channel's `epoch` and latest `offset` (0: no message yet; the next
    /// one gets `offset + 1`). `entries` is `Some` only when `since` was
    /// given and the whole gap after it is still in history under the same
    /// epoch: exactly the messages `since.offset+1 ..= offset`, in order
    /// (empty when nothing was missed). Otherwise `None`: recovered:false,
    /// never a partial replay.
    History {
        id: u64,
        channel: String,
        epoch: String,
        offset: u64,
        entries: Option<Vec<Entry>>,
    },
    HistoryFailed {
        id: u64,
        channel: String,
        error: String,
    },
    /// The SUBSCRIBE for this channel is in effect: every message published
    /// from now on will arrive. One per [`Command::Subscribe`], unless the
    /// channel was unsubscribed before the SUBSCRIBE was confirmed. A
    /// Subscribe sent while the link is down is confirmed once the pub/sub
    /// connection is back (around [`Event::LinkUp`], in either order).
    Subscribed {
        channel: String,
    },
    /// A [`Command::Control`] is stored and published.
    ControlStored {
        id: u64,
    },
    /// The control records in force, as stored (see [`crate::control::Record`]).
    ControlLoaded {
        id: u64,
        records: Vec<String>,
    },
    /// A [`Command::Control`], [`Command::LoadControl`] or [`Command::Page`]
    /// failed (Redis down or refused, or the connection broke: a Control
    /// may or may not have been stored).
    ControlFailed {
        id: u64,
        error: String,
    },
    /// The answer to [`Command::Page`]: `first` is the oldest offset the
    /// channel's history holds (0: none); `entries` oldest first.
    Page {
        id: u64,
        channel: String,
        epoch: String,
        offset: u64,
        first: u64,
        entries: Vec<Entry>,
    },
    /// A message on the control channel: `<instance> <record>`, from any
    /// instance (this one's own included). At most once, like every pub/sub
    /// message: [`Command::LoadControl`] after [`Event::LinkUp`] catches up.
    Control {
        message: String,
    },
    /// Both connections are up (again) and every channel asked for is
    /// subscribed. After a [`Event::LinkDown`], every subscribed channel may
    /// have missed messages while the link was down: pub/sub does not keep
    /// them. Ask [`Command::History`] with `since` to find and fill the gaps.
    LinkUp,
    /// A connection to Redis failed. Sent once per outage (not per retry);
    /// publishes and history reads fail fast until [`Event::LinkUp`], while
    /// the link reconnects with capped, jittered exponential backoff.
    LinkDown {
        error: String,
    },
}

/// The history settings the scripts apply (HISTORY_SIZE, HISTORY_TTL_SECS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistorySettings {
    /// Messages kept per channel stream (exact MAXLEN); at least 1.
    pub size: usize,
    /// A channel's stream expires this long after its last publish.
    pub ttl: Duration,
}

/// The loop's handle on Redis. Dropping it ends both helper threads (each
/// within its current round trip or poll interval).
pub struct RedisLink {
    /// Publishes and history reads, to the `taskcast-redis` thread. Bounded,
    /// so a Redis that stalls cannot make the loop queue without limit.
    commands: SyncSender<commands::Job>,
    /// Subscribe and unsubscribe, to the `taskcast-redis-sub` thread.
    /// Unbounded: the loop sends at most one per channel change.
    subscriptions: Sender<subscriber::Change>,
    events: Receiver<Event>,
    /// Set once the loss of the helper threads has been reported, so it is
    /// reported once.
    gone: Cell<bool>,
}

impl RedisLink {
    /// Starts the two helper threads; they connect in the background, and
    /// the first event is [`Event::LinkUp`] or [`Event::LinkDown`]. `waker`
    /// is woken after every event.
    pub fn start(redis: &RedisConfig, history: HistorySettings, waker: Arc<mio::Waker>) -> io::Result<RedisLink> {
        let client = redis::Client::open(redis.url.as_str())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("REDIS_URL: {e}")))?;
        let (event_tx, events) = mpsc::sync_channel(EVENT_QUEUE);
        let outbox = Arc::new(Outbox { events: event_tx, waker, status: Mutex::new(Status::default()) });
        let names = keys::Names::new(&redis.prefix);
        let history = HistorySettings { size: history.size.max(1), ttl: history.ttl.max(Duration::from_secs(1)) };

        let (commands, jobs) = mpsc::sync_channel(COMMAND_QUEUE);
        let (subscriptions, changes) = mpsc::channel();
        let cmd_thread = commands::Worker::new(client.clone(), names.clone(), history, outbox.clone(), jobs);
        std::thread::Builder::new().name("taskcast-redis".into()).spawn(move || cmd_thread.run())?;
        // The subscriber tells the command thread to check its connection
        // when it sees Redis go away, so a publish after an outage fails (or
        // reconnects) at once instead of at the next idle ping.
        let sub_thread = subscriber::Worker::new(client, names, outbox, changes, commands.clone());
        std::thread::Builder::new().name("taskcast-redis-sub".into()).spawn(move || sub_thread.run())?;
        info!("cluster mode: Redis at {} with prefix {:?}", redis.redacted_url(), redis.prefix);
        Ok(RedisLink { commands, subscriptions, events, gone: Cell::new(false) })
    }

    /// Queues a command; never blocks. `Err` gives the command back when it
    /// cannot be queued (the queue is full, or a helper thread is gone):
    /// answer it as failed (503) right away — no event will come for it.
    pub fn send(&self, command: Command) -> Result<(), Command> {
        match command {
            Command::Subscribe { channel } => self
                .subscriptions
                .send(subscriber::Change::Subscribe(channel))
                .map_err(|e| Command::Subscribe { channel: e.0.into_channel() }),
            Command::Unsubscribe { channel } => self
                .subscriptions
                .send(subscriber::Change::Unsubscribe(channel))
                .map_err(|e| Command::Unsubscribe { channel: e.0.into_channel() }),
            command => {
                let request = commands::Request::from_command(command)?;
                match self.commands.try_send(commands::Job::Run(request)) {
                    Ok(()) => Ok(()),
                    Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => match job {
                        commands::Job::Run(r) => Err(r.into_command()),
                        commands::Job::Probe => Ok(()),
                    },
                }
            }
        }
    }

    /// The next event, if one is waiting. Call it until `None` each time
    /// the waker fires.
    pub fn try_recv(&self) -> Option<Event> {
        match self.events.try_recv() {
            Ok(e) => Some(e),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                // Both threads hold the sender until the link is dropped, so
                // this means one panicked; the link's state is then unknown.
                (!self.gone.replace(true)).then(|| Event::LinkDown { error: "the Redis threads have stopped".into() })
            }
        }
    }
}

/// Which connection a status change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    Commands,
    PubSub,
}

/// Both connections' states, and what the loop was last told.
#[derive(Debug, Default)]
struct Status {
    /// `None` until the first connect attempt ends.
    commands: Option<bool>,
    pubsub: Option<bool>,
    /// The last LinkUp (true) / LinkDown (false) sent.
    reported: Option<bool>,
}

/// Where the helper threads put events: the queue, the loop's waker, and the
/// shared up/down state that turns two connections into one LinkUp/LinkDown.
struct Outbox {
    events: SyncSender<Event>,
    waker: Arc<mio::Waker>,
    status: Mutex<Status>,
}

impl Outbox {
    /// Queues an event and wakes the loop. False when the loop is gone (the
    /// link was dropped): the calling thread should end.
    fn post(&self, event: Event) -> bool {
        if self.events.send(event).is_err() {
            return false;
        }
        if let Err(e) = self.waker.wake() {
            warn!("cannot wake the event loop: {e}");
        }
        true
    }

    /// Records a connection as up or down; sends LinkUp when both are up and
    /// LinkDown when either went down, each only on a change. The lock is
    /// held while posting so two threads cannot report out of order.
    fn set(&self, conn: Conn, up: Result<(), &str>) -> bool {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let slot = match conn {
            Conn::Commands => &mut s.commands,
            Conn::PubSub => &mut s.pubsub,
        };
        *slot = Some(up.is_ok());
        let now = match (s.commands, s.pubsub) {
            (Some(true), Some(true)) => Some(true),
            (Some(false), _) | (_, Some(false)) => Some(false),
            _ => None,
        };
        if now.is_none() || now == s.reported {
            return true;
        }
        s.reported = now;
        match up {
            _ if now == Some(true) => {
                info!("Redis link up");
                self.post(Event::LinkUp)
            }
            Err(error) => {
                warn!("Redis link down: {error}");
                self.post(Event::LinkDown { error: error.to_string() })
            }
            // This connection came up while the other is still down.
            Ok(()) => true,
        }
    }
}

/// Reconnect delays: doubling from [`Backoff::FIRST`] to [`Backoff::MAX`],
/// each drawn at random from its upper half so that instances that lost
/// Redis together do not all come back in the same millisecond.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Backoff {
        Backoff { next: Backoff::FIRST }
    }

    fn reset(&mut self) {
        self.next = Backoff::FIRST;
    }

    fn delay(&mut self, rng: &mut Rng) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Backoff::MAX);
        d / 2 + Duration::from_nanos(rng.next() % (d.as_nanos() as u64 / 2 + 1))
    }
}

/// splitmix64, seeded from the kernel: epochs and jitter without a file
/// read per publish. Not for secrets.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let mut seed = [0u8; 8];
        crate::sys::fill_random(&mut seed);
        Rng(u64::from_le_bytes(seed))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A candidate epoch: 16 hex digits. Used only when a channel has no
    /// meta hash yet, so a flushed or evicted channel gets a new one.
    fn epoch(&mut self) -> String {
        format!("{:016x}", self.next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let mut rng = Rng::new();
        let mut b = Backoff::new();
        let mut ceiling = Backoff::FIRST;
        for _ in 0..12 {
            let d = b.delay(&mut rng);
            assert!(d >= ceiling / 2 && d <= ceiling, "{d:?} not in [{:?}, {ceiling:?}]", ceiling / 2);
            ceiling = (ceiling * 2).min(Backoff::MAX);
        }
        b.reset();
        assert!(b.delay(&mut rng) <= Backoff::FIRST);
    }

    #[test]
    fn epochs_are_hex_and_differ() {
        let mut rng = Rng::new();
        let (a, b) = (rng.epoch(), rng.epoch());
        assert_ne!(a, b);
        assert!(a.len() == 16 && a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
    }
}
