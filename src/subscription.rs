//! One connection's subscriptions, each with its own position, and the one
//! rule that decides whether a channel message reaches it.
//!
//! A subscription is either
//! - **joining**: the `subscribe` was seen and granted, and the server waits
//!   for the channel's position (and any replay) from Redis (cluster mode).
//!   Live messages that arrive meanwhile are held here, in order;
//! - **joined** at `(epoch, offset)`: the client has been sent everything up
//!   to `offset` (the `subscribed` answer's offset, then each message since).
//!
//! The rule ([`Subscription::offer`]): a message reaches a joined
//! subscription only if it is exactly the next one — same epoch, offset + 1.
//! At or below the position it is a duplicate (a replay covered it, or
//! Redis's pub/sub delivered it after the history read that included it)
//! and is dropped; above it, or in another epoch, something was missed, and
//! the caller repairs the gap from history or tells the client
//! `recovered:false`. Replay-to-live hand-off, gap repair and duplicate
//! suppression are all this one comparison, per connection — no state
//! shared between connections that could hand a message to the wrong one.
//!
//! Costs: a connection has at most MAX_SUBSCRIPTIONS of these, found by a
//! linear scan (a handful in practice); `offer` is one comparison.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::rc::Rc;

use crate::hub::{ChannelId, Epoch, Since};

/// Messages held for one joining subscription at most; past that the
/// oldest go, and the gap they leave is repaired from history once joined.
pub const MAX_HELD: usize = 1024;

/// One channel a connection is in (or joining). 24 bytes, so a
/// connection's list of one (its user channel: most connections have no
/// other) is one 32-byte heap block.
#[derive(Debug)]
pub struct Subscription {
    /// The hub's slot for the channel (valid while anyone is in it).
    pub channel: ChannelId,
    /// See [`Subscription::token_exp`]: in 4 bytes, saturating at
    /// `u32::MAX` (2106-02-07: for an expiry, "not before then").
    token_exp: Option<NonZeroU32>,
    pub state: State,
}

#[derive(Debug)]
pub enum State {
    /// Waiting for the channel's position from Redis (boxed: rare and short).
    Joining(Box<Joining>),
    /// Sent everything up to this position.
    Joined(Position),
}

/// A point in a channel's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Shared with the channel (and every subscription at this epoch):
    /// 8 bytes.
    pub epoch: Epoch,
    pub offset: u64,
}

#[derive(Debug)]
pub struct Joining {
    /// The history read answering this join (0: not sent yet — the
    /// channel's pub/sub SUBSCRIBE is not confirmed).
    pub read: u64,
    /// The position the client asked to recover from.
    pub since: Option<Since>,
    /// Joined by the server itself (the user channel at connect): no
    /// `subscribed` answer is sent when the position arrives.
    pub silent: bool,
    /// Live messages that arrived while joining, oldest first.
    pub held: VecDeque<Held>,
}

/// A live channel message held for a joining subscription.
#[derive(Debug, Clone)]
pub struct Held {
    pub epoch: Epoch,
    pub offset: u64,
    pub frame: Rc<[u8]>,
}

/// What [`Subscription::offer`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Exactly the next message: queue it (the position has moved).
    Deliver,
    /// At or below the position: already sent, drop it.
    Stale,
    /// Messages before it are missing (or its epoch is another): the
    /// position did not move; repair, or resync the client.
    Gap,
    /// Joining: kept until the position is known.
    Held,
}

impl Subscription {
    /// Joined at a known position (one process; a replay already queued).
    pub fn joined(channel: ChannelId, token_exp: Option<u64>, at: Position) -> Subscription {
        Subscription { channel, token_exp: compact_exp(token_exp), state: State::Joined(at) }
    }

    /// Waiting for its position (cluster mode).
    pub fn joining(channel: ChannelId, token_exp: Option<u64>, since: Option<Since>, silent: bool) -> Subscription {
        let j = Joining { read: 0, since, silent, held: VecDeque::new() };
        Subscription { channel, token_exp: compact_exp(token_exp), state: State::Joining(Box::new(j)) }
    }

    /// Joined with a subscription token expiring then (seconds since the
    /// epoch); `None`: granted by the connection token (or its own user).
    pub fn token_exp(&self) -> Option<u64> {
        self.token_exp.map(|e| u64::from(e.get()))
    }

    pub fn set_token_exp(&mut self, exp: Option<u64>) {
        self.token_exp = compact_exp(exp);
    }

    /// The rule: may this message be sent to the client now?
    pub fn offer(&mut self, epoch: &Epoch, offset: u64, frame: &Rc<[u8]>) -> Verdict {
        match &mut self.state {
            State::Joining(j) => {
                if j.held.len() >= MAX_HELD {
                    j.held.pop_front();
                }
                j.held.push_back(Held { epoch: epoch.clone(), offset, frame: frame.clone() });
                Verdict::Held
            }
            State::Joined(at) => {
                if !at.epoch.same(epoch) {
                    return Verdict::Gap;
                }
                if offset <= at.offset {
                    Verdict::Stale
                } else if offset == at.offset + 1 {
                    at.offset = offset;
                    Verdict::Deliver
                } else {
                    Verdict::Gap
                }
            }
        }
    }

    /// The position, once joined.
    pub fn position(&self) -> Option<&Position> {
        match &self.state {
            State::Joined(at) => Some(at),
            State::Joining(_) => None,
        }
    }

    /// The read this subscription waits for (joining only).
    pub fn joining_read(&self) -> Option<u64> {
        match &self.state {
            State::Joining(j) => Some(j.read),
            State::Joined(_) => None,
        }
    }
}

/// An expiry in 4 bytes: 0 (long past) as 1, past 2106 as `u32::MAX`.
fn compact_exp(exp: Option<u64>) -> Option<NonZeroU32> {
    exp.map(|e| NonZeroU32::MIN.saturating_add(u32::try_from(e).unwrap_or(u32::MAX).saturating_sub(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Rc<[u8]> {
        Rc::from(&b"x"[..])
    }

    #[test]
    fn exactly_the_next_offset_is_delivered() {
        let e = Epoch::from("e1");
        let mut s = Subscription::joined(0, None, Position { epoch: e.clone(), offset: 4 });
        assert_eq!(s.offer(&e, 4, &frame()), Verdict::Stale);
        assert_eq!(s.offer(&e, 3, &frame()), Verdict::Stale);
        assert_eq!(s.offer(&e, 6, &frame()), Verdict::Gap, "5 is missing");
        assert_eq!(s.position().unwrap().offset, 4, "a gap does not move the position");
        assert_eq!(s.offer(&e, 5, &frame()), Verdict::Deliver);
        assert_eq!(s.offer(&e, 5, &frame()), Verdict::Stale, "no duplicate");
        assert_eq!(s.offer(&Epoch::from("e1"), 6, &frame()), Verdict::Deliver, "epochs compare by value");
        assert_eq!(s.offer(&Epoch::from("e2"), 7, &frame()), Verdict::Gap, "another epoch");
        assert_eq!(s.position().unwrap().offset, 6);
    }

    #[test]
    fn joining_holds_in_order_and_bounded() {
        let e = Epoch::from("e1");
        let mut s = Subscription::joining(0, None, None, false);
        for o in 1..=(MAX_HELD as u64 + 5) {
            assert_eq!(s.offer(&e, o, &frame()), Verdict::Held);
        }
        let State::Joining(j) = &s.state else { panic!() };
        assert_eq!(j.held.len(), MAX_HELD);
        assert_eq!(j.held.front().unwrap().offset, 6, "the oldest went");
        assert!(s.position().is_none());
    }

    #[test]
    fn a_subscription_is_24_bytes_and_keeps_its_token_expiry() {
        assert_eq!(std::mem::size_of::<Subscription>(), 24);
        let at = || Position { epoch: Epoch::from("e"), offset: 0 };
        for exp in [None, Some(1), Some(1_767_225_600), Some(u64::from(u32::MAX))] {
            assert_eq!(Subscription::joined(0, exp, at()).token_exp(), exp);
        }
        assert_eq!(Subscription::joined(0, Some(0), at()).token_exp(), Some(1), "long past stays past");
        let far = Subscription::joined(0, Some(u64::MAX), at()).token_exp();
        assert_eq!(far, Some(u64::from(u32::MAX)), "past 2106: not before then");
    }
}
