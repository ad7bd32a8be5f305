//! The names taskcast uses in Redis, all under REDIS_PREFIX.
//!
//! | name | type | holds |
//! |---|---|---|
//! | `{prefix}:meta:{<channel>}` | hash | `epoch` (random string), `offset` (last offset given out) |
//! | `{prefix}:stream:{<channel>}` | stream | the last HISTORY_SIZE messages, entry ID `<offset>-0`, fields `k` (type) and `p` (payload) |
//! | `{prefix}:ch:{<channel>}` | pub/sub channel | each message as it is published (see [`super::wire`]) |
//! | `{prefix}:broadcast` | pub/sub channel | the original broadcast to everyone (no offset, no history) |
//! | `{prefix}:idem:{<channel>}:<key>` | string | `<epoch> <offset>` the first publish with `Idempotency-Key: <key>` got (`{*}`: a broadcast to everyone); expires after IDEMPOTENCY_TTL_SECS |
//! | `{prefix}:control:{*}` | hash | the denials, revocations and disconnects in force ([`crate::control::Record`] text), one field per user (and pattern) |
//! | `{prefix}:control-expiry:{*}` | sorted set | the same fields, scored by when each may be dropped (unix seconds) |
//! | `{prefix}:control` | pub/sub channel | each control action as it is taken: `<instance> <record>` |
//!
//! The braces do two jobs. They are Redis Cluster hash tags: a channel's meta
//! and stream hash to the same slot, which a script touching both needs
//! there. And since neither a prefix nor a channel name may contain a brace
//! (both are letters, digits and `_ - . :`), everything before the first `{`
//! is `{prefix}:meta:` (or `:stream:`, `:ch:`), so two prefixes never share a
//! name — without them, prefix `app` with channel `ch:x` and prefix `app:ch`
//! with channel `x` would both publish on `app:ch:ch:x`.

/// Key and pub/sub names for one prefix.
#[derive(Debug, Clone)]
pub struct Names {
    /// REDIS_PREFIX, already validated.
    prefix: String,
    /// `{prefix}:ch:`, kept to strip it from every incoming message's
    /// channel without formatting it again.
    channel_head: String,
    /// `{prefix}:broadcast`.
    broadcast: String,
}

impl Names {
    pub fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_string(),
            channel_head: format!("{prefix}:ch:"),
            broadcast: format!("{prefix}:broadcast"),
        }
    }

    pub fn meta(&self, channel: &str) -> String {
        format!("{}:meta:{{{channel}}}", self.prefix)
    }

    pub fn stream(&self, channel: &str) -> String {
        format!("{}:stream:{{{channel}}}", self.prefix)
    }

    /// The pub/sub channel a taskcast channel's messages travel on.
    pub fn pubsub(&self, channel: &str) -> String {
        format!("{}{{{channel}}}", self.channel_head)
    }

    /// The pub/sub channel of the original broadcast to everyone.
    pub fn broadcast(&self) -> &str {
        &self.broadcast
    }

    /// Where a publish's `Idempotency-Key` is remembered: tagged with its
    /// channel (in the slot of the channel's meta hash, which
    /// `publish.lua` touches in the same step), or `*` for everyone.
    pub fn idempotency(&self, channel: &str, key: &str) -> String {
        format!("{}:idem:{{{channel}}}:{key}", self.prefix)
    }

    /// The hash of control records and its expiry index (one hash tag, so
    /// one script may touch both under Redis Cluster; `*` is no channel).
    pub fn control_records(&self) -> String {
        format!("{}:control:{{*}}", self.prefix)
    }

    pub fn control_expiry(&self) -> String {
        format!("{}:control-expiry:{{*}}", self.prefix)
    }

    /// The pub/sub channel control actions travel on (not a channel name
    /// [`Names::channel_of`] accepts).
    pub fn control(&self) -> String {
        format!("{}:control", self.prefix)
    }

    /// Which taskcast channel a pub/sub channel name carries: `Some(None)`
    /// for the broadcast, `None` for a name that is not ours.
    pub fn channel_of<'a>(&self, pubsub: &'a str) -> Option<Option<&'a str>> {
        if pubsub == self.broadcast {
            return Some(None);
        }
        let tagged = pubsub.strip_prefix(self.channel_head.as_str())?;
        tagged.strip_prefix('{')?.strip_suffix('}').filter(|c| !c.is_empty()).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_their_inverse() {
        let n = Names::new("app");
        assert_eq!(n.meta("project:42"), "app:meta:{project:42}");
        assert_eq!(n.stream("project:42"), "app:stream:{project:42}");
        assert_eq!(n.pubsub("project:42"), "app:ch:{project:42}");
        assert_eq!(n.broadcast(), "app:broadcast");
        assert_eq!(n.idempotency("project:42", "k-1"), "app:idem:{project:42}:k-1");
        assert_eq!(n.control_records(), "app:control:{*}");
        assert_eq!(n.control_expiry(), "app:control-expiry:{*}");
        assert_eq!(n.channel_of(&n.control()), None, "control messages are not a channel's");
        assert_eq!(n.channel_of("app:ch:{project:42}"), Some(Some("project:42")));
        assert_eq!(n.channel_of("app:broadcast"), Some(None));
        assert_eq!(n.channel_of("app:ch:{}"), None);
        assert_eq!(n.channel_of("app:ch:project:42"), None);
        assert_eq!(n.channel_of("other:ch:{project:42}"), None);
        // Prefix `app` + channel `ch:x` and prefix `app:ch` + channel `x`
        // would collide without the braces.
        assert_ne!(n.pubsub("ch:x"), Names::new("app:ch").pubsub("x"));
        assert_eq!(Names::new("app:ch").channel_of(&n.pubsub("ch:x")), None);
    }
}
