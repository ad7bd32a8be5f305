//! The Redis link against a real redis-server, driven the way the event loop
//! drives it: commands in with `send`, events out with `try_recv` after a
//! mio `Waker` fires. Every wait is bounded.

mod common;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use mio::{Events, Poll, Token, Waker};
use taskcast::cluster::{BROADCAST, Command, Entry, Event, HistorySettings, RedisConfig, RedisLink};

/// Upper bound for one expected event.
const WAIT: Duration = Duration::from_secs(10);
/// Reconnect backoff tops out at 5 s (jittered): a LinkUp after a restart
/// comes within that plus a connect.
const RECONNECT_WAIT: Duration = Duration::from_secs(15);

/// One "instance": a link, and the poll loop that wakes for it.
struct Instance {
    link: RedisLink,
    poll: Poll,
    events: Events,
    /// Events received but not yet asked for.
    backlog: VecDeque<Event>,
    /// The slowest `send`/`try_recv` call so far: the loop must never wait.
    slowest_call: Duration,
}

impl Instance {
    /// A link to `redis`, once it is up.
    fn start(redis: &RedisServer, prefix: &str, history_size: usize) -> Instance {
        let mut i = Instance::connect(&redis.url(), prefix, history_size);
        i.expect(WAIT, "LinkUp", |e| matches!(e, Event::LinkUp));
        i
    }

    /// A link to `url`, up or not.
    fn connect(url: &str, prefix: &str, history_size: usize) -> Instance {
        let _ = env_logger::builder().is_test(true).try_init();
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(0)).unwrap());
        let config = RedisConfig { url: url.into(), prefix: prefix.into() };
        let history = HistorySettings { size: history_size, ttl: Duration::from_secs(300) };
        let link = RedisLink::start(&config, history, waker).unwrap();
        Instance {
            link,
            poll,
            events: Events::with_capacity(8),
            backlog: VecDeque::new(),
            slowest_call: Duration::ZERO,
        }
    }

    fn send(&mut self, c: Command) {
        let t = Instant::now();
        let r = self.link.send(c);
        self.slowest_call = self.slowest_call.max(t.elapsed());
        r.expect("queued");
    }

    fn publish(&mut self, id: u64, channel: &str, kind: &str, payload: &str) {
        self.send(Command::Publish { id, channel: channel.into(), kind: kind.into(), payload: payload.into() });
    }

    fn history(&mut self, id: u64, channel: &str, since: Option<(&str, u64)>) -> (String, u64, Option<Vec<Entry>>) {
        self.send(Command::History { id, channel: channel.into(), since: since.map(|(e, o)| (e.to_string(), o)) });
        match self.expect(WAIT, "History", |e| matches!(e, Event::History { id: i, .. } if *i == id)) {
            Event::History { epoch, offset, entries, .. } => (epoch, offset, entries),
            _ => unreachable!(),
        }
    }

    fn subscribe(&mut self, channel: &str) {
        self.send(Command::Subscribe { channel: channel.into() });
        self.expect(WAIT, "Subscribed", |e| matches!(e, Event::Subscribed { channel: c } if c == channel));
    }

    /// Waits for `id`'s Published; its (epoch, offset).
    fn published(&mut self, id: u64) -> (String, u64) {
        match self.expect(
            WAIT,
            "Published",
            |e| matches!(e, Event::Published { id: i, .. } | Event::PublishFailed { id: i, .. } if *i == id),
        ) {
            Event::Published { epoch, offset, .. } => (epoch, offset),
            other => panic!("publish {id} failed: {other:?}"),
        }
    }

    /// The next `n` messages on `channel`, as (epoch, offset, kind, payload).
    fn messages(&mut self, channel: &str, n: usize) -> Vec<(String, u64, String, String)> {
        (0..n)
            .map(|_| {
                match self.expect(WAIT, "Message", |e| matches!(e, Event::Message { channel: c, .. } if c == channel)) {
                    Event::Message { epoch, offset, kind, payload, .. } => (epoch, offset, kind, payload),
                    _ => unreachable!(),
                }
            })
            .collect()
    }

    /// The first event (backlog first) that matches; others stay queued.
    fn expect(&mut self, within: Duration, what: &str, want: impl Fn(&Event) -> bool) -> Event {
        let deadline = Instant::now() + within;
        loop {
            if let Some(i) = self.backlog.iter().position(&want) {
                return self.backlog.remove(i).unwrap();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {what} within {within:?}; got {:?}", self.backlog);
            self.poll.poll(&mut self.events, Some(left)).unwrap();
            self.drain();
        }
    }

    fn drain(&mut self) {
        loop {
            let t = Instant::now();
            let e = self.link.try_recv();
            self.slowest_call = self.slowest_call.max(t.elapsed());
            match e {
                Some(e) => self.backlog.push_back(e),
                None => break,
            }
        }
    }

    /// Fails if any event on `channel` is queued.
    fn assert_no_message(&mut self, channel: &str) {
        self.drain();
        let stray: Vec<&Event> =
            self.backlog.iter().filter(|e| matches!(e, Event::Message { channel: c, .. } if c == channel)).collect();
        assert!(stray.is_empty(), "unexpected messages on {channel}: {stray:?}");
    }
}

#[test]
fn every_subscribed_instance_gets_each_message_in_the_same_order_with_the_same_offset() {
    let redis = RedisServer::start();
    let mut a = Instance::start(&redis, "t", 100);
    let mut b = Instance::start(&redis, "t", 100);
    let mut c = Instance::start(&redis, "t", 100);
    b.subscribe("project:1");
    c.subscribe("project:1");

    // Fifty publishes queued at once (pipelined), with payloads that would
    // trip a naive encoding: spaces, newlines, separators, non-ASCII.
    let n = 50;
    for i in 0..n {
        let payload = format!("{{\"i\":{i},\"t\":\"a b\\n 0 - 7 ünï {i}\"}}");
        a.publish(i, "project:1", &format!("kind {i}"), &payload);
    }
    let mut stored = Vec::new();
    for i in 0..n {
        stored.push(a.published(i));
    }
    let epoch = stored[0].0.clone();
    assert!(stored.iter().all(|(e, _)| *e == epoch), "one epoch: {stored:?}");
    assert_eq!(stored.iter().map(|(_, o)| *o).collect::<Vec<_>>(), (1..=n).collect::<Vec<_>>());

    let at_b = b.messages("project:1", n as usize);
    let at_c = c.messages("project:1", n as usize);
    assert_eq!(at_b, at_c, "B and C see the same sequence");
    for (i, (e, offset, kind, payload)) in at_b.iter().enumerate() {
        assert_eq!((e.as_str(), *offset), (epoch.as_str(), i as u64 + 1));
        assert_eq!(kind, &format!("kind {i}"));
        assert_eq!(payload, &format!("{{\"i\":{i},\"t\":\"a b\\n 0 - 7 ünï {i}\"}}"));
    }

    // The broadcast to everyone reaches every instance, unsubscribed A too.
    a.publish(100, BROADCAST, "hello", "{\"to\":\"all\"}");
    assert_eq!(a.published(100), (String::new(), 0));
    for inst in [&mut a, &mut b, &mut c] {
        assert_eq!(inst.messages(BROADCAST, 1), vec![(String::new(), 0, "hello".into(), "{\"to\":\"all\"}".into())]);
    }
    // A never subscribed to project:1, so it got none of its messages.
    a.assert_no_message("project:1");
}

#[test]
fn history_returns_exactly_the_missed_messages_or_nothing() {
    let redis = RedisServer::start();
    let mut a = Instance::start(&redis, "t", 100);

    // A channel's epoch is fixed when it is first looked at, before any
    // message: the first message carries that epoch.
    let (epoch, offset, entries) = a.history(1, "board:7", None);
    assert_eq!((offset, entries), (0, None));
    for i in 1..=10 {
        a.publish(i, "board:7", "t", &format!("{{\"n\":{i}}}"));
    }
    for i in 1..=10 {
        assert_eq!(a.published(i), (epoch.clone(), i));
    }

    // The gap after 4 is 5..=10, exactly.
    let (e, latest, entries) = a.history(20, "board:7", Some((&epoch, 4)));
    assert_eq!((e.as_str(), latest), (epoch.as_str(), 10));
    let want: Vec<Entry> =
        (5..=10).map(|i| Entry { offset: i, kind: "t".into(), payload: format!("{{\"n\":{i}}}") }).collect();
    assert_eq!(entries, Some(want));
    // Nothing missed: recovered, nothing to replay.
    assert_eq!(a.history(21, "board:7", Some((&epoch, 10))).2, Some(vec![]));
    // Another epoch, or an offset from the future: not recoverable.
    assert_eq!(a.history(22, "board:7", Some(("0123456789abcdef", 4))).2, None);
    assert_eq!(a.history(23, "board:7", Some((&epoch, 11))).2, None);
    // Without since: the position only.
    assert_eq!(a.history(24, "board:7", None), (epoch.clone(), 10, None));

    // SCRIPT FLUSH makes Redis forget the scripts; the link loads them again.
    let _: () = redis.cmd(&["SCRIPT", "FLUSH"]);
    a.publish(30, "board:7", "t", "{}");
    assert_eq!(a.published(30), (epoch.clone(), 11));
    assert_eq!(a.history(31, "board:7", Some((&epoch, 10))).2.map(|v| v.len()), Some(1));
}

#[test]
fn a_gap_longer_than_the_history_is_not_recovered() {
    let redis = RedisServer::start();
    let mut a = Instance::start(&redis, "t", 5);
    for i in 1..=12 {
        a.publish(i, "project:9", "t", "{}");
    }
    let (epoch, _) = a.published(12);
    // Exact MAXLEN: the stream holds the last 5 (8..=12), not "about 5".
    let len: u64 = redis.cmd(&["XLEN", "t:stream:{project:9}"]);
    assert_eq!(len, 5);
    let got = a.history(20, "project:9", Some((&epoch, 7))).2.expect("8..=12 are all there");
    assert_eq!(got.iter().map(|e| e.offset).collect::<Vec<_>>(), vec![8, 9, 10, 11, 12]);
    assert_eq!(a.history(21, "project:9", Some((&epoch, 6))).2, None, "7 is gone: no partial replay");
    assert_eq!(a.history(22, "project:9", Some((&epoch, 0))).2, None);
}

#[test]
fn a_flushed_redis_gives_a_new_epoch_and_no_replay_across_it() {
    let redis = RedisServer::start();
    let mut a = Instance::start(&redis, "t", 100);
    let mut b = Instance::start(&redis, "t", 100);
    b.subscribe("project:2");
    for i in 1..=3 {
        a.publish(i, "project:2", "t", "{}");
    }
    let (old, _) = a.published(3);
    b.messages("project:2", 3);

    let _: () = redis.cmd(&["FLUSHALL"]);
    a.publish(10, "project:2", "t", "{\"after\":1}");
    let (new, offset) = a.published(10);
    assert_ne!(new, old, "a flushed channel must not keep its epoch");
    assert_eq!(offset, 1, "offsets restart under the new epoch");
    // Subscribers see the new epoch on the message itself...
    assert_eq!(b.messages("project:2", 1), vec![(new.clone(), 1, "t".into(), "{\"after\":1}".into())]);
    // ...and a client that saw the old epoch cannot recover across it,
    // even at an offset the new epoch has reached.
    assert_eq!(a.history(11, "project:2", Some((&old, 1))).2, None);
    assert_eq!(a.history(12, "project:2", Some((&old, 0))).2, None);
    assert_eq!(a.history(13, "project:2", Some((&new, 0))).2.map(|v| v.len()), Some(1));
}

#[test]
fn redis_down_fails_fast_then_reconnects_and_resubscribes() {
    let mut redis = RedisServer::start();
    let mut a = Instance::start(&redis, "t", 100);
    a.subscribe("project:3");

    redis.stop();
    let down_at = Instant::now();
    a.expect(WAIT, "LinkDown", |e| matches!(e, Event::LinkDown { .. }));
    let noticed = down_at.elapsed();

    // Requests while down fail at once, and the calls never wait.
    let t = Instant::now();
    a.publish(1, "project:3", "t", "{}");
    let failed = a.expect(WAIT, "PublishFailed", |e| matches!(e, Event::PublishFailed { id: 1, .. }));
    let fail_after = t.elapsed();
    assert!(matches!(&failed, Event::PublishFailed { error, .. } if error.contains("Redis")), "{failed:?}");
    a.send(Command::History { id: 2, channel: "project:3".into(), since: None });
    a.expect(WAIT, "HistoryFailed", |e| matches!(e, Event::HistoryFailed { id: 2, .. }));
    // A subscribe asked for while down is confirmed after the reconnect.
    a.send(Command::Subscribe { channel: "project:4".into() });
    eprintln!("LinkDown {noticed:?} after the kill; PublishFailed {fail_after:?} after the send");
    assert!(fail_after < Duration::from_secs(2), "a publish while down took {fail_after:?} to fail");

    redis.restart();
    a.expect(RECONNECT_WAIT, "LinkUp", |e| matches!(e, Event::LinkUp));
    // One LinkDown per outage, however many reconnect attempts failed.
    assert!(!a.backlog.iter().any(|e| matches!(e, Event::LinkDown { .. })), "{:?}", a.backlog);
    a.expect(WAIT, "Subscribed project:4", |e| matches!(e, Event::Subscribed { channel } if channel == "project:4"));

    // Both subscriptions were restored: another instance's publishes arrive.
    let mut b = Instance::start(&redis, "t", 100);
    b.publish(1, "project:3", "t", "{\"back\":3}");
    b.publish(2, "project:4", "t", "{\"back\":4}");
    assert_eq!(b.published(1).1, 1, "Redis restarted empty: a new stream");
    b.published(2);
    assert_eq!(a.messages("project:3", 1)[0].3, "{\"back\":3}");
    assert_eq!(a.messages("project:4", 1)[0].3, "{\"back\":4}");
    // And A's own publishes work again.
    a.publish(3, "project:3", "t", "{}");
    assert_eq!(a.published(3).1, 2);
    eprintln!("slowest send/try_recv: {:?}", a.slowest_call);
    assert!(a.slowest_call < Duration::from_millis(50), "the loop waited {:?} in a link call", a.slowest_call);
}

#[test]
fn two_prefixes_on_one_redis_do_not_see_each_other() {
    let redis = RedisServer::start();
    // `app` + channel `ch:x` and `app:ch` + channel `x` would share a
    // pub/sub name with naive key naming.
    let mut one = Instance::start(&redis, "app", 100);
    let mut two = Instance::start(&redis, "app:ch", 100);
    one.subscribe("ch:x");
    two.subscribe("x");
    two.subscribe("ch:x");

    one.publish(1, "ch:x", "t", "{\"from\":1}");
    assert_eq!(one.published(1).1, 1);
    one.publish(2, BROADCAST, "t", "{\"all\":1}");
    one.published(2);
    assert_eq!(one.messages("ch:x", 1)[0].3, "{\"from\":1}");
    one.messages(BROADCAST, 1);

    // Two's own first message is offset 1 in its own namespace, and it is
    // the first thing two receives: nothing of one's came before it.
    two.publish(1, "ch:x", "t", "{\"from\":2}");
    assert_eq!(two.published(1).1, 1);
    assert_eq!(two.messages("ch:x", 1)[0].3, "{\"from\":2}");
    two.assert_no_message("x");
    two.assert_no_message(BROADCAST);
}

#[test]
fn unsubscribe_stops_delivery() {
    let redis = RedisServer::start();
    let mut a = Instance::start(&redis, "t", 100);
    let mut b = Instance::start(&redis, "t", 100);
    b.subscribe("project:5");
    a.publish(1, "project:5", "t", "{}");
    b.messages("project:5", 1);

    // The unsubscribe is applied before the next subscribe's confirmation
    // (the link keeps their order), so after Subscribed(marker) nothing
    // more of project:5 can come.
    b.send(Command::Unsubscribe { channel: "project:5".into() });
    b.subscribe("marker:1");
    a.publish(2, "project:5", "t", "{}");
    a.publish(3, "marker:1", "t", "{}");
    b.messages("marker:1", 1);
    b.assert_no_message("project:5");

    // Unsubscribe then subscribe again in one go ends subscribed.
    b.send(Command::Unsubscribe { channel: "marker:1".into() });
    b.subscribe("marker:1");
    a.publish(4, "marker:1", "t", "{\"again\":1}");
    assert_eq!(b.messages("marker:1", 1)[0].3, "{\"again\":1}");
}

#[test]
fn a_large_message_arrives_whole() {
    let redis = RedisServer::start();
    let mut a = Instance::start(&redis, "t", 100);
    let mut b = Instance::start(&redis, "t", 100);
    b.subscribe("project:6");
    // 1 MiB: many socket reads, across the subscriber's read timeouts.
    let big = format!("\"{}\"", "x".repeat(1 << 20));
    a.publish(1, "project:6", "big", &big);
    a.publish(2, "project:6", "small", "1");
    a.published(2);
    let got = b.messages("project:6", 2);
    assert_eq!((got[0].1, got[0].2.as_str(), got[0].3.len()), (1, "big", big.len()));
    assert_eq!(got[0].3, big);
    assert_eq!((got[1].1, got[1].3.as_str()), (2, "1"));
}

#[test]
fn an_evicted_meta_hash_starts_a_new_epoch_even_if_the_stream_survived() {
    let redis = RedisServer::start();
    let mut a = Instance::start(&redis, "t", 100);
    for i in 1..=4 {
        a.publish(i, "project:7", "t", &format!("{{\"old\":{i}}}"));
    }
    let (old, _) = a.published(4);
    // What maxmemory eviction can do: drop the meta hash, keep the stream.
    let _: () = redis.cmd(&["DEL", "t:meta:{project:7}"]);
    a.publish(5, "project:7", "t", "{\"new\":1}");
    let (new, offset) = a.published(5);
    assert_ne!(new, old);
    assert_eq!(offset, 1);
    // The old entries went with the old epoch: history under the new one
    // holds only the new message, so no old message is ever replayed as new.
    let entries = a.history(6, "project:7", Some((&new, 0))).2.unwrap();
    assert_eq!(entries, vec![Entry { offset: 1, kind: "t".into(), payload: "{\"new\":1}".into() }]);
    assert_eq!(a.history(7, "project:7", Some((&old, 2))).2, None);
}

#[test]
fn a_link_to_a_redis_that_is_not_there_reports_down_and_fails_fast() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut a = Instance::connect(&format!("redis://127.0.0.1:{port}"), "t", 10);
    let down = a.expect(WAIT, "LinkDown", |e| matches!(e, Event::LinkDown { .. }));
    assert!(matches!(&down, Event::LinkDown { error } if error.contains("connect")), "{down:?}");
    let t = Instant::now();
    a.publish(1, "project:1", "t", "{}");
    a.expect(WAIT, "PublishFailed", |e| matches!(e, Event::PublishFailed { id: 1, .. }));
    assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
}

#[test]
fn a_password_protected_redis_works_and_a_wrong_password_is_reported_without_it() {
    let redis = RedisServer::start_with(&["--requirepass", "s3cret-pw"]);
    // Both connections authenticate: the command one through the redis
    // crate, the pub/sub one with its own AUTH.
    let mut a = Instance::start(&redis, "t", 100);
    let mut b = Instance::start(&redis, "t", 100);
    b.subscribe("project:8");
    a.publish(1, "project:8", "t", "{\"auth\":true}");
    assert_eq!(a.published(1).1, 1);
    assert_eq!(b.messages("project:8", 1)[0].3, "{\"auth\":true}");

    let mut c = Instance::connect(&format!("redis://:wrong-pw@127.0.0.1:{}/0", redis.port), "t", 10);
    let down = c.expect(WAIT, "LinkDown", |e| matches!(e, Event::LinkDown { .. }));
    let Event::LinkDown { error } = &down else { unreachable!() };
    assert!(!error.contains("wrong-pw"), "the password leaked into {error:?}");
    assert!(error.to_ascii_uppercase().contains("PASS") || error.contains("AUTH"), "{error:?}");
}

#[test]
fn dropping_the_link_ends_its_connections() {
    let redis = RedisServer::start();
    // Our own inspecting connection counts as one client.
    let clients = || -> u64 {
        let info: String = redis.cmd(&["INFO", "clients"]);
        info.lines().find_map(|l| l.strip_prefix("connected_clients:")).unwrap().trim().parse().unwrap()
    };
    let mut a = Instance::start(&redis, "t", 10);
    a.subscribe("project:1");
    assert_eq!(clients(), 3, "a command and a pub/sub connection");
    drop(a);
    // The threads notice within a poll interval or an idle ping (1 s).
    let deadline = Instant::now() + WAIT;
    while clients() != 1 {
        assert!(Instant::now() < deadline, "the link's connections outlived it: {} clients", clients());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn subscribe_then_history_leaves_no_gap_while_others_publish() {
    let redis = RedisServer::start();
    let mut publisher = Instance::start(&redis, "t", 100);
    let mut b = Instance::start(&redis, "t", 100);
    let total = 3000u64;
    // Another instance publishes continuously, 8 in flight.
    let busy = std::thread::spawn(move || {
        let mut next = 1;
        let mut done = 0;
        while done < total {
            while next <= total && next - done <= 8 {
                publisher.publish(next, "project:busy", "t", &format!("{{\"n\":{next}}}"));
                next += 1;
            }
            publisher.published(done + 1);
            done += 1;
        }
    });
    // Wait until publishing is under way, then join the way the loop does:
    // Subscribe, Subscribed, History; messages after the history's offset
    // must then start at offset + 1 with no hole.
    b.history(1, "project:busy", None);
    let deadline = Instant::now() + WAIT;
    while b.history(2, "project:busy", None).1 < 100 {
        assert!(Instant::now() < deadline, "the publisher did not get going");
    }
    b.subscribe("project:busy");
    let (_, at, _) = b.history(3, "project:busy", None);
    assert!(at < total, "publishing ended before the subscribe: the test proves nothing");
    let mut expect = at + 1;
    while expect <= total {
        let (_, offset, _, _) = b.messages("project:busy", 1).pop().unwrap();
        if offset <= at {
            continue; // covered by the history read; the loop drops these
        }
        assert_eq!(offset, expect, "a hole after the history's offset {at}");
        expect += 1;
    }
    busy.join().unwrap();
}

#[test]
fn a_unix_socket_url_works_for_both_connections() {
    let path = std::env::temp_dir().join(format!("taskcast-test-redis-{}.sock", std::process::id()));
    let path = path.to_str().unwrap().to_string();
    let redis = RedisServer::start_with(&["--unixsocket", &path, "--unixsocketperm", "700"]);
    let url = format!("redis+unix://{path}");
    let mut a = Instance::connect(&url, "t", 10);
    a.expect(WAIT, "LinkUp", |e| matches!(e, Event::LinkUp));
    let mut b = Instance::connect(&url, "t", 10);
    b.expect(WAIT, "LinkUp", |e| matches!(e, Event::LinkUp));
    b.subscribe("project:u");
    a.publish(1, "project:u", "t", "{\"unix\":1}");
    assert_eq!(a.published(1).1, 1);
    assert_eq!(b.messages("project:u", 1)[0].3, "{\"unix\":1}");
    drop(redis);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_hung_redis_is_given_up_on_within_the_timeouts_and_rejoined_when_it_wakes() {
    let redis = RedisServer::start();
    let mut a = Instance::start(&redis, "t", 100);
    a.subscribe("project:h");

    redis.pause();
    // A publish into a hung Redis fails after the command timeout (2 s),
    // not never, and the link reports itself down; the calls never wait.
    let t = Instant::now();
    a.publish(1, "project:h", "t", "{}");
    a.expect(WAIT, "PublishFailed", |e| matches!(e, Event::PublishFailed { id: 1, .. }));
    let failed_after = t.elapsed();
    a.expect(WAIT, "LinkDown", |e| matches!(e, Event::LinkDown { .. }));
    let down_after = t.elapsed();
    eprintln!("hung Redis: PublishFailed after {failed_after:?}, LinkDown after {down_after:?}");
    assert!(failed_after < Duration::from_secs(4), "{failed_after:?}");

    redis.resume();
    a.expect(RECONNECT_WAIT, "LinkUp", |e| matches!(e, Event::LinkUp));
    let mut b = Instance::start(&redis, "t", 100);
    b.publish(1, "project:h", "t", "{\"awake\":1}");
    b.published(1);
    // The "failed" publish was in Redis's socket buffer and ran when Redis
    // woke: a failure means "not known to be stored", and here it was. It
    // comes first, then b's, with consecutive offsets.
    let got = a.messages("project:h", 2);
    assert_eq!((got[0].1, got[0].3.as_str()), (1, "{}"));
    assert_eq!((got[1].1, got[1].3.as_str()), (2, "{\"awake\":1}"));
    assert!(a.slowest_call < Duration::from_millis(50), "the loop waited {:?}", a.slowest_call);
}
