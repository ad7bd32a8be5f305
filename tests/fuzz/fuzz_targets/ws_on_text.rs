//! `ws::on_text` directly: replies are JSON, only oversized messages close
//! (1009), an `Auth` carries the message's own token, and channel
//! messages carry what the message said (refusals are JSON errors).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use taskcast::ws::{Inbound, Reason, on_text};

fuzz_target!(|data: &[u8]| {
    // First two bytes: the message limit.
    if data.len() < 2 {
        return;
    }
    let max_bytes = u16::from_le_bytes([data[0], data[1]]) as usize;
    let Ok(text) = std::str::from_utf8(&data[2..]) else { return };
    let parsed = serde_json::from_str::<Value>(text).ok();
    match on_text(text, max_bytes) {
        Inbound::Reply(reply) => {
            let v: Value = serde_json::from_str(&reply).expect("reply is JSON");
            assert!(v["type"] == "pong" || v["type"] == "error", "{reply}");
        }
        Inbound::Close(reason) => {
            assert_eq!(reason, Reason::TooBig);
            assert!(text.len() > max_bytes, "closed a message within the limit");
        }
        Inbound::Auth(token) => {
            if let Some(v) = parsed {
                assert_eq!(v["type"], "auth");
                assert_eq!(v["token"], Value::from(token));
            }
        }
        Inbound::Subscribe { channel, token, since } => {
            let v = parsed.expect("a subscribe was parsed from JSON");
            assert_eq!(v["type"], "subscribe");
            assert_eq!(v["channel"], Value::from(channel));
            assert_eq!(token.is_some(), v["token"].is_string());
            if let Some(s) = since {
                assert_eq!(v["since"]["offset"].as_u64(), Some(s.offset));
            }
        }
        Inbound::Unsubscribe { channel } => {
            let v = parsed.expect("an unsubscribe was parsed from JSON");
            assert_eq!(v["channel"], Value::from(channel));
        }
        Inbound::Refuse(error) => {
            let v: Value = serde_json::from_str(&error).expect("refusal is JSON");
            assert_eq!(v["type"], "error");
            assert!(v["payload"]["code"].is_string(), "{error}");
        }
        Inbound::Ignore => {}
    }
});
