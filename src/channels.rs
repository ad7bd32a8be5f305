//! Channel names, who may join a channel, and the JSON of the channel
//! protocol's answers. Pure functions; the state (who is in which channel,
//! offsets, history) is [`crate::hub`].
//!
//! A channel name is `namespace:id`: ASCII letters, digits and `_ - . :`,
//! at most 128 bytes, with a non-empty namespace before the first `:` and a
//! non-empty rest. `user:<sub>` is built in: every connection is in its own
//! user's channel, and no other user may join it. Any other namespace needs
//! a grant: a name (or `namespace:*`) in the connection token's channels
//! claim, or a subscription token for that channel.

use serde_json::Value;

/// Longest channel name in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// The built-in per-user namespace.
pub const USER_PREFIX: &str = "user:";
/// The rule, as error messages and the README state it.
pub const NAME_RULE: &str =
    "a channel is namespace:id, ASCII letters, digits and _ - . : only, at most 128 bytes (e.g. project:42)";

fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':')
}

/// Is `name` a valid channel name? (Safe to embed in JSON and logs as is.)
pub fn valid_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN
        && name.bytes().all(allowed)
        && name.split_once(':').is_some_and(|(ns, id)| !ns.is_empty() && !id.is_empty())
}

/// Could `id` follow `user:` in a valid name? (Also used for `"users"`.)
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() + USER_PREFIX.len() <= MAX_NAME_LEN && id.bytes().all(allowed)
}

/// The user channel of a token subject, if the subject can name one.
pub fn user_channel(sub: &str) -> Option<String> {
    valid_id(sub).then(|| format!("{USER_PREFIX}{sub}"))
}

/// Does the channels claim `grants` let a connection join `channel`?
/// Entries are exact names or `namespace:*`. `user:` channels are never
/// granted this way (only the user's own, by [`may_join_user`]).
pub fn granted(channel: &str, grants: &[Box<str>]) -> bool {
    if channel.starts_with(USER_PREFIX) {
        return false;
    }
    grants.iter().any(|g| match g.strip_suffix('*') {
        Some(prefix) if prefix.ends_with(':') => channel.starts_with(prefix),
        _ => **g == *channel,
    })
}

/// Is `channel` a `user:` channel that is not `sub`'s own? No grant of any
/// kind opens one (a claim, a subscription token, a wildcard): alice
/// joining `user:bob` would receive bob's notifications.
pub fn user_channel_of_other(channel: &str, sub: &str) -> bool {
    channel.starts_with(USER_PREFIX) && !may_join_user(channel, sub)
}

/// Is `channel` the user channel of `sub`?
pub fn may_join_user(channel: &str, sub: &str) -> bool {
    channel.strip_prefix(USER_PREFIX).is_some_and(|id| !id.is_empty() && id == sub)
}

/// The channels claim of a token: a JSON array of strings (anything else,
/// or an entry that is neither a name nor `ns:*`, is ignored).
pub fn grants_from_claim(claim: Option<&Value>, max: usize) -> Box<[Box<str>]> {
    let Some(Value::Array(list)) = claim else {
        return Box::new([]);
    };
    list.iter()
        .filter_map(Value::as_str)
        .filter(|g| valid_name(g) || g.strip_suffix(":*").is_some_and(|ns| !ns.is_empty() && ns.bytes().all(allowed)))
        .take(max)
        .map(Box::from)
        .collect()
}

/// Error codes of the channel protocol (`payload.code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Forbidden,
    InvalidChannel,
    TooManySubscriptions,
    InvalidToken,
    BadRequest,
    /// Cluster mode, Redis unreachable: retry.
    Unavailable,
    /// The client's address failed AUTH_FAILURES_PER_MIN times this
    /// minute: its subscription tokens are not checked until it ends.
    RateLimited,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Forbidden => "forbidden",
            Refusal::InvalidChannel => "invalid_channel",
            Refusal::TooManySubscriptions => "too_many_subscriptions",
            Refusal::InvalidToken => "invalid_token",
            Refusal::BadRequest => "bad_request",
            Refusal::Unavailable => "unavailable",
            Refusal::RateLimited => "rate_limited",
        }
    }
}

/// `{"type":"error","payload":{"code":..,"message":..,"channel":..}}`.
/// `channel` is echoed only when it is a valid name (never raw peer text).
pub fn error(refusal: Refusal, message: &str, channel: Option<&str>) -> String {
    let mut payload = serde_json::json!({"code": refusal.code(), "message": message});
    if let Some(c) = channel.filter(|c| valid_name(c)) {
        payload["channel"] = Value::from(c);
    }
    format!(r#"{{"type":"error","payload":{payload}}}"#)
}

/// `{"type":"subscribed","channel":C,"epoch":E,"offset":N,"recovered":B}`.
pub fn subscribed(channel: &str, epoch: &str, offset: u64, recovered: bool) -> String {
    format!(
        r#"{{"type":"subscribed","channel":"{channel}","epoch":"{epoch}","offset":{offset},"recovered":{recovered}}}"#
    )
}

/// `{"type":"unsubscribed","channel":C}`, with a reason when the server
/// ended the subscription itself.
pub fn unsubscribed(channel: &str, reason: Option<&str>) -> String {
    match reason {
        Some(r) => format!(r#"{{"type":"unsubscribed","channel":"{channel}","reason":{}}}"#, Value::from(r)),
        None => format!(r#"{{"type":"unsubscribed","channel":"{channel}"}}"#),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["project:42", "user:u1", "a:b", "team:acme.eu-1_x", "a:b:c", &format!("p:{}", "x".repeat(126))] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "project", ":42", "project:", "a b:c", "p:é", "p:x\"y", &format!("p:{}", "x".repeat(127))] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert_eq!(user_channel("u1").as_deref(), Some("user:u1"));
        assert_eq!(user_channel(""), None);
        assert_eq!(user_channel("a b"), None);
    }

    #[test]
    fn grants() {
        let g = grants_from_claim(
            Some(&serde_json::json!(["project:42", "board:*", "bad name", 7, "user:*", "*", ":*"])),
            100,
        );
        assert_eq!(&*g, &["project:42".into(), "board:*".into(), "user:*".into()] as &[Box<str>]);
        assert!(granted("project:42", &g));
        assert!(!granted("project:43", &g));
        assert!(granted("board:7", &g));
        assert!(!granted("boardx:7", &g));
        assert!(!granted("user:someone", &g), "user channels are never granted by claim");
        assert!(may_join_user("user:u1", "u1"));
        assert!(!may_join_user("user:u1", "u2"));
        assert!(!may_join_user("user:", ""));
        assert!(user_channel_of_other("user:bob", "alice"));
        assert!(user_channel_of_other("user:", "alice"));
        assert!(user_channel_of_other("user:alice2", "alice"));
        assert!(!user_channel_of_other("user:alice", "alice"));
        assert!(!user_channel_of_other("project:bob", "alice"));
        assert!(user_channel_of_other("user:", ""), "an empty subject has no user channel");
        assert!(grants_from_claim(Some(&serde_json::json!("project:1")), 100).is_empty());
    }

    #[test]
    fn answers_are_json() {
        let v: Value = serde_json::from_str(&subscribed("project:1", "abc", 7, true)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"subscribed","channel":"project:1","epoch":"abc","offset":7,"recovered":true})
        );
        let v: Value = serde_json::from_str(&error(Refusal::Forbidden, "no \"grant\"", Some("a b"))).unwrap();
        assert_eq!(v, serde_json::json!({"type":"error","payload":{"code":"forbidden","message":"no \"grant\""}}));
        let v: Value = serde_json::from_str(&unsubscribed("p:1", Some("grant revoked"))).unwrap();
        assert_eq!(v["reason"], "grant revoked");
    }
}
