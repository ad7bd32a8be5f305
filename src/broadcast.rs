//! `/api/broadcast` bodies in, WebSocket frames out.
//!
//! A broadcast is validated once, turned into the envelope
//! `{"type": T, "payload": <data>}` once, and framed once; the resulting
//! bytes are shared by every recipient's queue. `data` is carried as the raw
//! JSON text the caller sent (validated, never re-serialized).
//!
//! A broadcast may name its recipients: `"channel"`, `"channels"` or
//! `"users"` (sugar for `user:` channels). Only a body with none of these
//! keys goes to every client, as in the original design; a body that is
//! ambiguous about its recipients fails closed with a 400 — a target key
//! present with `null`, a key we do not know (a typo such as `"chanel"`),
//! a key given twice. A channel message's envelope
//! also carries its channel and offset, so it is framed once per channel
//! (the offset differs), still shared by all of that channel's recipients.

use std::rc::Rc;

use serde::Deserialize;
use serde_json::value::RawValue;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Data, OpCode};

/// The message types the front end is documented to handle. Others that
/// match [`valid_type`] are delivered too (apps grow their own types).
pub const DOCUMENTED_TYPES: [&str; 4] = ["task_created", "task_updated", "task_deleted", "task_status_changed"];

/// Longest accepted `type`.
pub const MAX_TYPE_LEN: usize = 64;

/// The top-level keys of a broadcast body. A body is read key by key
/// (not with serde's derive) so that an unknown key and a key given twice
/// are refused, not ignored: a typo such as `"chanel"` must never turn a
/// targeted broadcast into one to everyone.
#[derive(Default)]
struct Body<'a> {
    kind: Option<String>,
    /// `Some` even for `"data": null` (null is a value like any other).
    data: Option<&'a RawValue>,
    /// Target keys: `Some(None)` is a key present with `null` (refused).
    channel: Option<Option<String>>,
    channels: Option<Option<Vec<String>>>,
    users: Option<Option<Vec<String>>>,
    /// The first key that is none of the above (refused, named).
    unknown: Option<String>,
    /// The first key given twice (refused: which one counts is ambiguous).
    duplicate: Option<&'static str>,
}

/// One top-level key.
enum Key {
    Type,
    Data,
    Channel,
    Channels,
    Users,
    /// Anything else, cut to [`MAX_KEY_SHOWN`] characters for the error.
    Other(String),
}

/// How much of an unknown key a 400 answer repeats.
const MAX_KEY_SHOWN: usize = 64;

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: serde::de::Error>(self, k: &str) -> Result<Key, E> {
                Ok(match k {
                    "type" => Key::Type,
                    "data" => Key::Data,
                    "channel" => Key::Channel,
                    "channels" => Key::Channels,
                    "users" => Key::Users,
                    other => Key::Other(other.chars().take(MAX_KEY_SHOWN).collect()),
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

impl<'de> Deserialize<'de> for Body<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Body<'de>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Body<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("{\"type\": string, \"data\": any JSON}")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Body<'de>, M::Error> {
                /// Stores a key's value, or notes the key as given twice.
                fn set<T>(slot: &mut Option<T>, value: T, name: &'static str, dup: &mut Option<&'static str>) {
                    if slot.is_some() {
                        dup.get_or_insert(name);
                    }
                    *slot = Some(value);
                }
                let mut b = Body::default();
                while let Some(key) = map.next_key::<Key>()? {
                    let dup = &mut b.duplicate;
                    match key {
                        Key::Type => set(&mut b.kind, map.next_value()?, "type", dup),
                        Key::Data => set(&mut b.data, map.next_value()?, "data", dup),
                        Key::Channel => set(&mut b.channel, map.next_value()?, "channel", dup),
                        Key::Channels => set(&mut b.channels, map.next_value()?, "channels", dup),
                        Key::Users => set(&mut b.users, map.next_value()?, "users", dup),
                        Key::Other(name) => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            b.unknown.get_or_insert(name);
                        }
                    }
                }
                Ok(b)
            }
        }
        d.deserialize_map(V)
    }
}

/// Who a broadcast is for.
#[derive(Debug)]
pub enum Target {
    /// Every connected client (no channel named): framed once, here.
    All(Rc<[u8]>),
    /// These channels (valid names, no duplicates, in the order given).
    Channels(Vec<String>),
}

/// An accepted `/api/broadcast` body.
#[derive(Debug)]
pub struct Publish {
    pub kind: String,
    /// The raw JSON text of `data`, as sent: for channel envelopes, and for
    /// Redis in cluster mode (empty for a broadcast to everyone otherwise).
    pub payload: Box<str>,
    pub target: Target,
}

/// A `type` is 1-64 characters of letters, digits and `_ . : -`: safe to
/// embed in JSON and in logs without escaping.
pub fn valid_type(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_TYPE_LEN
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// Validates a broadcast to everyone and returns `(type, framed envelope)`,
/// or the message for a 400 (a body naming channels is refused here: see
/// [`parse_publish`]).
pub fn parse(body: &[u8]) -> Result<(String, Rc<[u8]>), String> {
    let p = parse_publish(body, usize::MAX, false)?;
    match p.target {
        Target::All(frame) => Ok((p.kind, frame)),
        Target::Channels(_) => Err("a targeted broadcast is not a broadcast to everyone".into()),
    }
}

/// Validates any `/api/broadcast` body (at most `max_channels` targets),
/// or returns the message for a 400. A broadcast to everyone is framed
/// here; its raw `data` is kept too only with `keep_raw` (cluster mode sends
/// it to Redis), so the single-process path copies nothing extra.
pub fn parse_publish(body: &[u8], max_channels: usize, keep_raw: bool) -> Result<Publish, String> {
    // serde's derived struct reader also accepts an array (`["t", data]`
    // fills the fields in order); only an object is a broadcast.
    if body.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|&b| b != b'{')
        && serde_json::from_slice::<&RawValue>(body).is_ok()
    {
        return Err("body must be a JSON object: {\"type\": string, \"data\": any JSON}".into());
    }
    let parsed: Body = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            format!("body must be {{\"type\": string, \"data\": any JSON}}: {e}")
        }
        _ => format!("invalid JSON: {e}"),
    })?;
    // Fail closed: whatever is not understood is refused before anything
    // else, so it can never mean "everyone".
    if let Some(key) = parsed.unknown {
        return Err(format!(
            "unknown key {}: a broadcast body has \"type\", \"data\" and at most one of \"channel\", \"channels\", \"users\"",
            serde_json::Value::from(key)
        ));
    }
    if let Some(key) = parsed.duplicate {
        return Err(format!("\"{key}\" is given twice"));
    }
    let kind = match parsed.kind {
        None => return Err("missing \"type\"".into()),
        Some(t) if !valid_type(&t) => {
            return Err("\"type\" must be 1-64 characters of letters, digits and _ . : -".into());
        }
        Some(t) => t,
    };
    let data = parsed.data.ok_or("missing \"data\"")?;
    // A target key present with null is a mistake (`channel: id ?? null`),
    // never a broadcast to everyone: that is only the absence of all three.
    for (key, is_null) in [
        ("channel", matches!(parsed.channel, Some(None))),
        ("channels", matches!(parsed.channels, Some(None))),
        ("users", matches!(parsed.users, Some(None))),
    ] {
        if is_null {
            return Err(format!(
                "\"{key}\" is null: name the recipients, or leave out \"channel\", \"channels\" and \"users\" to broadcast to everyone"
            ));
        }
    }
    let targets = match (parsed.channel.flatten(), parsed.channels.flatten(), parsed.users.flatten()) {
        (None, None, None) => {
            let frame = frame(&envelope(&kind, data.get()));
            let payload = if keep_raw { data.get().into() } else { Box::from("") };
            return Ok(Publish { kind, payload, target: Target::All(frame) });
        }
        (Some(c), None, None) => vec![c],
        (None, Some(list), None) => list,
        (None, None, Some(users)) => {
            if users.iter().any(|u| !crate::channels::valid_id(u)) {
                return Err(format!(
                    "\"users\" must be user ids of letters, digits and _ . : - (at most {} bytes)",
                    crate::channels::MAX_NAME_LEN - crate::channels::USER_PREFIX.len()
                ));
            }
            users.iter().map(|u| format!("{}{u}", crate::channels::USER_PREFIX)).collect()
        }
        _ => return Err("give one of \"channel\", \"channels\" or \"users\", not several".into()),
    };
    if targets.is_empty() {
        return Err("no channel named: \"channels\"/\"users\" must not be empty".into());
    }
    if targets.len() > max_channels {
        return Err(format!("at most {max_channels} channels per broadcast (MAX_PUBLISH_CHANNELS)"));
    }
    let mut unique: Vec<String> = Vec::with_capacity(targets.len());
    for name in targets {
        if !crate::channels::valid_name(&name) {
            return Err(format!("invalid channel name: {}", crate::channels::NAME_RULE));
        }
        if !unique.contains(&name) {
            unique.push(name);
        }
    }
    Ok(Publish { kind, payload: data.get().into(), target: Target::Channels(unique) })
}

/// `{"type":"<kind>","payload":<payload>,"channel":"<channel>","offset":N}`:
/// a channel message; `channel` must pass [`crate::channels::valid_name`].
pub fn channel_envelope(kind: &str, payload: &str, channel: &str, offset: u64) -> Vec<u8> {
    debug_assert!(valid_type(kind) && crate::channels::valid_name(channel));
    let mut out = Vec::with_capacity(64 + kind.len() + payload.len() + channel.len());
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"payload\":");
    out.extend_from_slice(payload.as_bytes());
    out.extend_from_slice(b",\"channel\":\"");
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(b"\",\"offset\":");
    out.extend_from_slice(offset.to_string().as_bytes());
    out.push(b'}');
    out
}

/// `{"type":"<kind>","payload":<payload>}`; `kind` must pass [`valid_type`]
/// and `payload` must be JSON text.
pub fn envelope(kind: &str, payload: &str) -> Vec<u8> {
    debug_assert!(valid_type(kind));
    let mut out = Vec::with_capacity(24 + kind.len() + payload.len());
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"payload\":");
    out.extend_from_slice(payload.as_bytes());
    out.push(b'}');
    out
}

/// Frames `text` as one unmasked, final text frame (what a server sends),
/// in a single shared allocation.
pub fn frame(text: &[u8]) -> Rc<[u8]> {
    let header = FrameHeader { opcode: OpCode::Data(Data::Text), ..FrameHeader::default() };
    let mut out = Vec::with_capacity(header.len(text.len() as u64) + text.len());
    header.format(text.len() as u64, &mut out).expect("writing to a Vec cannot fail");
    out.extend_from_slice(text);
    Rc::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::protocol::frame::Frame;

    #[test]
    fn envelope_and_frame() {
        let (kind, f) = parse(br#"{"type":"task_updated","data":{"id":7,"title":"x"}}"#).unwrap();
        assert_eq!(kind, "task_updated");
        assert_eq!(f[0], 0x81); // FIN + text
        let text = &f[2..];
        assert_eq!(f[1] as usize, text.len());
        let v: serde_json::Value = serde_json::from_slice(text).unwrap();
        assert_eq!(v, serde_json::json!({"type":"task_updated","payload":{"id":7,"title":"x"}}));
    }

    #[test]
    fn frame_matches_tungstenite_encoding() {
        for len in [0usize, 125, 126, 65535, 65536, 70000] {
            let text = vec![b'a'; len];
            let mut want = Vec::new();
            Frame::message(text.clone(), OpCode::Data(Data::Text), true).format(&mut want).unwrap();
            assert_eq!(&frame(&text)[..], &want[..], "len {len}");
        }
    }

    #[test]
    fn targets() {
        let p = parse_publish(br#"{"type":"t","data":{"a":1},"channel":"project:42"}"#, 10, false).unwrap();
        assert!(matches!(&p.target, Target::Channels(c) if c == &["project:42"]));
        assert_eq!(&*p.payload, r#"{"a":1}"#);
        let p = parse_publish(br#"{"type":"t","data":1,"channels":["a:1","b:2","a:1"]}"#, 10, false).unwrap();
        assert!(matches!(&p.target, Target::Channels(c) if c == &["a:1", "b:2"]));
        let p = parse_publish(br#"{"type":"t","data":1,"users":["u1","u2"]}"#, 10, false).unwrap();
        assert!(matches!(&p.target, Target::Channels(c) if c == &["user:u1", "user:u2"]));
        let p = parse_publish(br#"{"type":"t","data":1}"#, 10, false).unwrap();
        assert!(matches!(p.target, Target::All(_)));
        let bad: &[(&[u8], &str)] = &[
            (br#"{"type":"t","data":1,"channel":"nocolon"}"#, "invalid channel"),
            (br#"{"type":"t","data":1,"channel":"a:b c"}"#, "invalid channel"),
            (br#"{"type":"t","data":1,"channels":[]}"#, "must not be empty"),
            (br#"{"type":"t","data":1,"channels":["a:1","a:2","a:3"]}"#, "at most 2"),
            (br#"{"type":"t","data":1,"channel":"a:1","users":["u"]}"#, "not several"),
            (br#"{"type":"t","data":1,"users":["a b"]}"#, "user ids"),
            (br#"{"type":"t","data":1,"channel":7}"#, "body must be"),
            // Fail closed: never "everyone" by mistake.
            (br#"{"type":"t","data":1,"channel":null}"#, "\"channel\" is null"),
            (br#"{"type":"t","data":1,"channels":null}"#, "\"channels\" is null"),
            (br#"{"type":"t","data":1,"users":null}"#, "\"users\" is null"),
            (br#"{"type":"t","data":1,"channel":null,"users":null}"#, "is null"),
            (br#"{"type":"t","data":1,"chanel":"a:1"}"#, "unknown key \"chanel\""),
            (br#"{"type":"t","data":1,"Channel":"a:1"}"#, "unknown key \"Channel\""),
            (br#"{"type":"t","data":1,"channel":"a:1","ch\u0061nnel":"b:1"}"#, "given twice"),
            (br#"{"type":"t","data":1,"channel":"a:1","channel":"b:1"}"#, "\"channel\" is given twice"),
            (br#"{"type":"t","data":1,"type":"u"}"#, "\"type\" is given twice"),
        ];
        for (body, want) in bad {
            let e = parse_publish(body, 2, false).unwrap_err();
            assert!(e.contains(want), "{:?}: {e}", String::from_utf8_lossy(body));
        }
        let env = channel_envelope("task_updated", r#"{"id":1}"#, "project:42", 18);
        let v: serde_json::Value = serde_json::from_slice(&env).unwrap();
        assert_eq!(v, serde_json::json!({"type":"task_updated","payload":{"id":1},"channel":"project:42","offset":18}));
    }

    #[test]
    fn rejects() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "invalid JSON"),
            (b"{", "invalid JSON"),
            (b"[1,2]", "body must be"),
            (br#"["task_created",{"id":1}]"#, "JSON object"),
            (b" 7 ", "JSON object"),
            (br#"{"data":1}"#, "missing \"type\""),
            (br#"{"type":"","data":1}"#, "1-64"),
            (br#"{"type":"a b","data":1}"#, "1-64"),
            (br#"{"type":"a\"b","data":1}"#, "1-64"),
            (br#"{"type":7,"data":1}"#, "body must be"),
            (br#"{"type":"task_created"}"#, "missing \"data\""),
        ];
        for (body, want) in cases {
            let e = parse(body).unwrap_err();
            assert!(e.contains(want), "{:?}: {e}", String::from_utf8_lossy(body));
        }
        let long = format!(r#"{{"type":"{}","data":1}}"#, "a".repeat(65));
        assert!(parse(br#"{"type":"t","data":1,"channel":"project:1"}"#).is_err());
        assert!(parse(long.as_bytes()).is_err());
        assert!(parse(format!(r#"{{"type":"{}","data":null}}"#, "a".repeat(64)).as_bytes()).is_ok());
    }
}
