//! `jwks::KeySet::parse` directly (what every JWKS_URL answer and JWKS_FILE
//! goes through): any bytes give a set or an error, never a panic, and an
//! accepted key keeps the promises `auth` relies on — a non-empty kid the
//! document really lists, at least one algorithm, never an HMAC one (HS256
//! is JWT_SECRET's), and every key's algorithms within one family.
#![no_main]

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use taskcast::jwks::KeySet;

fuzz_target!(|data: &[u8]| {
    let Ok((set, skipped)) = KeySet::parse(data) else { return };
    let doc: Value = serde_json::from_slice(data).expect("parse accepted something that is not JSON");
    let listed = doc["keys"].as_array().expect("parse accepted a document without a keys array");
    assert_eq!(set.len() + skipped.len(), listed.len(), "each listed key is kept or explained");
    for kid in set.kids() {
        assert!(!kid.is_empty());
        assert!(listed.iter().any(|k| k["kid"] == *kid), "kid {kid:?} is not in the document");
        let key = set.get(kid).expect("a listed kid resolves");
        let family = key.algorithms.first().expect("a key verifies at least one algorithm").family();
        assert_ne!(family, AlgorithmFamily::Hmac, "{kid:?}: a published key must never verify HMAC");
        assert!(key.algorithms.iter().all(|a| a.family() == family), "{kid:?}: {:?}", key.algorithms);
        assert!(!key.algorithms.contains(&Algorithm::HS256));
    }
    let _ = set.to_string();
});
