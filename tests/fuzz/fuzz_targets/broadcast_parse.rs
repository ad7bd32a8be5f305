//! `broadcast::parse` and `parse_publish` directly: an accepted body becomes
//! exactly one final, unmasked text frame holding `{"type": T, "payload":
//! <data as sent>}`; and a body reaches everyone only when it names no
//! recipients at all (issue 18: a target key present with null, an unknown
//! key or a key given twice is refused, never read as "everyone").
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use taskcast::broadcast::{Target, parse, parse_publish, valid_type};
use taskcast_fuzz::parse_frame;

/// The only top-level keys a broadcast body may have.
const KEYS: [&str; 5] = ["type", "data", "channel", "channels", "users"];
const TARGET_KEYS: [&str; 3] = ["channel", "channels", "users"];

fuzz_target!(|data: &[u8]| {
    check_publish(data);
    let Ok((kind, frame)) = parse(data) else { return };
    assert!(valid_type(&kind), "{kind:?}");
    let (f, n) = parse_frame(&frame).expect("a whole frame");
    assert_eq!(n, frame.len(), "one frame, nothing after it");
    assert!(f.fin && f.rsv == 0 && f.opcode == 1 && !f.masked, "{f:?}");
    // The envelope is JSON text (serde's IgnoredAny checks syntax only, so
    // numbers beyond f64 are still accepted, as they are in the body).
    serde_json::from_slice::<serde::de::IgnoredAny>(&f.payload)
        .unwrap_or_else(|e| panic!("envelope is not JSON ({e}): {:?}", String::from_utf8_lossy(&f.payload)));
    // Where both parse as values, the payload is the body's data.
    if let (Ok(env), Ok(body)) = (serde_json::from_slice::<Value>(&f.payload), serde_json::from_slice::<Value>(data)) {
        // README: a body that is not an object gets 400
        // (tests/regressions.rs, broadcast_body_that_is_an_array_is_refused).
        assert!(body.is_object(), "accepted a body that is not an object: {body}");
        assert_eq!(env.as_object().map(|o| o.len()), Some(2), "{env}");
        assert_eq!(env["type"], Value::from(kind));
        assert_eq!(env["payload"], body["data"]);
    }
});

/// Who an accepted body reaches follows from its keys alone.
fn check_publish(data: &[u8]) {
    let result = parse_publish(data, 8, true);
    // serde_json's Value keeps the last of a repeated key; a body with one
    // is refused, so compare only bodies whose keys are all distinct.
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(publish) = result else { return };
    if let Some(k) = body.keys().find(|k| !KEYS.contains(&k.as_str())) {
        panic!("accepted a body with the unknown key {k:?}");
    }
    if let Some(k) = TARGET_KEYS.iter().find(|k| body.get(**k).is_some_and(Value::is_null)) {
        panic!("accepted a body whose {k:?} is null");
    }
    let named = TARGET_KEYS.iter().filter(|k| body.contains_key(**k)).count();
    match publish.target {
        Target::All(_) => assert_eq!(named, 0, "a body naming recipients went to everyone: {body:?}"),
        Target::Channels(list) => {
            assert_eq!(named, 1, "{body:?}");
            assert!(!list.is_empty() && list.len() <= 8, "{list:?}");
        }
    }
}
