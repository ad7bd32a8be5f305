//! The usable keys of a JWK Set (RFC 7517 §5), by `kid`: parsing a JWKS
//! document into [`DecodingKey`]s and the algorithms each may verify. Pure:
//! no I/O, no logging (the caller warns about the keys left out), so it is
//! also a fuzz target (`tests/fuzz/fuzz_targets/jwks_parse.rs`).
//!
//! Each key verifies only the algorithms its own type allows (and only its
//! `alg`, when the JWK states one): what a token's header says never widens
//! that. Symmetric (`oct`) keys are refused: HS256 is JWT_SECRET's.

use std::collections::BTreeMap;
use std::fmt;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use serde_json::Value;

/// RSA moduli we accept, in bits: below 2048 is too weak to trust, and the
/// RSA implementation refuses keys above 4096.
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=4096;

/// One verification key from a JWKS.
#[derive(Clone)]
pub struct Key {
    /// The only algorithms this key verifies: its type's (one curve's, for
    /// EC), narrowed to the JWK's own `alg` when it states one.
    pub algorithms: Vec<Algorithm>,
    /// The public key, checked at parse time (size, point on the curve).
    pub key: DecodingKey,
}

/// The usable keys of one or more JWKS documents, by `kid`.
#[derive(Clone, Default)]
pub struct KeySet {
    /// Sorted, so logs list kids in a stable order.
    keys: BTreeMap<String, Key>,
}

impl KeySet {
    /// Parses a JWKS document. Keys taskcast cannot use are left out, each
    /// with the reason (for a warning); only a document that is not a JWKS
    /// at all is an error.
    pub fn parse(json: &[u8]) -> Result<(KeySet, Vec<String>), String> {
        let doc: Value = serde_json::from_slice(json).map_err(|e| format!("not JSON ({e})"))?;
        let keys = doc.get("keys").and_then(Value::as_array).ok_or("not a JWKS (no \"keys\" array)")?;
        let mut set = KeySet::default();
        let mut skipped = Vec::new();
        for (i, jwk) in keys.iter().enumerate() {
            let name = match jwk.get("kid").and_then(Value::as_str) {
                Some(kid) => format!("key {kid:?}"),
                None => format!("key #{i}"),
            };
            match parse_key(jwk) {
                Ok((kid, _)) if set.keys.contains_key(&kid) => {
                    skipped.push(format!("{name}: duplicate kid (the first one is kept)"))
                }
                Ok((kid, key)) => {
                    set.keys.insert(kid, key);
                }
                Err(why) => skipped.push(format!("{name}: {why}")),
            }
        }
        Ok((set, skipped))
    }

    /// The key a token's `kid` names.
    pub fn get(&self, kid: &str) -> Option<&Key> {
        self.keys.get(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// `self`'s keys plus `other`'s; on a shared kid, `self`'s copy wins.
    pub(crate) fn merged(&self, other: &KeySet) -> KeySet {
        let mut keys = other.keys.clone();
        keys.extend(self.keys.iter().map(|(k, v)| (k.clone(), v.clone())));
        KeySet { keys }
    }
}

impl fmt::Display for KeySet {
    /// `2 keys (kid-a, kid-b)`: for logs (kids are public).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<&str> = self.kids().collect();
        let s = if kids.len() == 1 { "" } else { "s" };
        write!(f, "{} key{s} ({})", kids.len(), kids.join(", "))
    }
}

/// One JWK to a usable key, or why not.
fn parse_key(v: &Value) -> Result<(String, Key), String> {
    let kid =
        v.get("kid").and_then(Value::as_str).filter(|k| !k.is_empty()).ok_or("no kid, so no token can name it")?;
    // RFC 7517 §4.2/4.3: a key meant for encryption is not a signing key.
    if let Some(u) = v.get("use").filter(|u| *u != "sig") {
        return Err(format!("\"use\" is {u}, not \"sig\""));
    }
    if let Some(ops) = v.get("key_ops").and_then(Value::as_array)
        && !ops.iter().any(|op| op == "verify")
    {
        return Err("\"key_ops\" does not include \"verify\"".into());
    }
    let jwk: Jwk = serde_json::from_value(v.clone()).map_err(|e| format!("not a valid JWK ({e})"))?;
    let (family, len_ok): (&[Algorithm], fn(&DecodingKey) -> bool) = match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            (&[Algorithm::EdDSA], |k| k.try_get_as_bytes().is_ok_and(|b| b.len() == 32))
        }
        // SEC1 uncompressed points: 0x04 || x || y.
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            (&[Algorithm::ES256], |k| k.try_get_as_bytes().is_ok_and(|b| b.len() == 65))
        }
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => {
            (&[Algorithm::ES384], |k| k.try_get_as_bytes().is_ok_and(|b| b.len() == 97))
        }
        AlgorithmParameters::RSA(_) => (
            &[
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            |k| match k.kind() {
                DecodingKeyKind::RsaModulusExponent { n, e } => {
                    RSA_BITS.contains(&bit_len(n)) && (1..=8).contains(&e.len())
                }
                DecodingKeyKind::SecretOrDer(_) => false,
            },
        ),
        AlgorithmParameters::OctetKey(_) => {
            return Err("a symmetric (oct) key: HS256 is verified with JWT_SECRET, never with a published key".into());
        }
        _ => {
            let field = |f: &str| v.get(f).and_then(Value::as_str).unwrap_or("-").to_string();
            return Err(format!(
                "unsupported key type (kty {}, crv {}): use Ed25519, P-256, P-384 or RSA",
                field("kty"),
                field("crv")
            ));
        }
    };
    let algorithms = match jwk.common.key_algorithm {
        None => family.to_vec(),
        Some(stated) => match Algorithm::try_from(stated) {
            Ok(alg) if family.contains(&alg) => vec![alg],
            Ok(alg) => return Err(format!("states alg {alg:?}, which does not fit its key type")),
            Err(_) => return Err(format!("states alg {stated}, which taskcast does not verify")),
        },
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable ({e})"))?;
    if !len_ok(&key) {
        return Err("key material has the wrong size for its type".into());
    }
    // Build the verifier once now, so a point off the curve is reported here
    // and not on the first token (the signature is empty: only the key's
    // validity matters).
    if let Err(e) = jsonwebtoken::crypto::verify("", b"", &key, algorithms[0]) {
        return Err(format!("unusable ({e})"));
    }
    Ok((kid.to_string(), Key { algorithms, key }))
}

/// Bits in a big-endian unsigned integer.
fn bit_len(be: &[u8]) -> usize {
    match be.iter().position(|b| *b != 0) {
        Some(i) => (be.len() - i) * 8 - be[i].leading_zeros() as usize,
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ed25519 public key (test-only; the private half lives in tests/jwks/keys.rs).
    const ED_X: &str = "NJ4Kp5tr9HV5MfaiSVwbxhTuSPiOtA5QDUOOcwQimSY";
    const EC_X: &str = "R8Q-zuw-gotg-BC-svdbyiyW6layifEFopTllWGyWv4";
    const EC_Y: &str = "8W5FkL3HL7PVbH3lHfYBzYnaD9c1n8ChjfDTtn5IJTw";
    const RSA_N: &str = "rYpkVM7D_oouLp8h4E9cqUBMBFzF8OOEwo-HsMponDZXF69RH7FBOCZ4URoEo_sN3phi3x03qYvgaUoyxIcOcDWH_flTcv-x-ZPfeFx-Mv1EH12cA5NHQRflLKLzBQHxzConk0clvIfj2EJ5YevAyND64MZQ2BK1qocsptGcHBTQAxL0dQEftbA3L6d7HK0K7ZPtSCHhwngrWRql8oWtNRjQIhedoMt0YqXdnxGoKuP_AlyxZPqp3lMW4gQ-4IryKgLdUf_HgPLJW-TYm4MIEHeeK9jfYGLBtMVnyieb9BGcJqQss2seknkQqEhPHelh1WUch75kzLSwhNL-MCzBPw";

    fn one(jwk: serde_json::Value) -> Result<Vec<Algorithm>, String> {
        let doc = serde_json::json!({ "keys": [jwk] });
        let (set, skipped) = KeySet::parse(doc.to_string().as_bytes()).unwrap();
        match set.get("k") {
            Some(k) => Ok(k.algorithms.clone()),
            None => Err(skipped.join("; ")),
        }
    }

    #[test]
    fn key_types_and_their_algorithms() {
        use Algorithm::*;
        use serde_json::json;
        let rsa_all = vec![RS256, RS384, RS512, PS256, PS384, PS512];
        let table: Vec<(serde_json::Value, Result<Vec<Algorithm>, &str>)> = vec![
            // BetterAuth's default: OKP Ed25519, with or without "alg".
            (json!({"kid":"k","kty":"OKP","crv":"Ed25519","x":ED_X}), Ok(vec![EdDSA])),
            (json!({"kid":"k","kty":"OKP","crv":"Ed25519","x":ED_X,"alg":"EdDSA","use":"sig"}), Ok(vec![EdDSA])),
            (json!({"kid":"k","kty":"EC","crv":"P-256","x":EC_X,"y":EC_Y}), Ok(vec![ES256])),
            (json!({"kid":"k","kty":"EC","crv":"P-256","x":EC_X,"y":EC_Y,"alg":"ES256"}), Ok(vec![ES256])),
            (json!({"kid":"k","kty":"RSA","n":RSA_N,"e":"AQAB"}), Ok(rsa_all)),
            (json!({"kid":"k","kty":"RSA","n":RSA_N,"e":"AQAB","alg":"RS256"}), Ok(vec![RS256])),
            (json!({"kid":"k","kty":"RSA","n":RSA_N,"e":"AQAB","alg":"PS256"}), Ok(vec![PS256])),
            // A stated alg must fit the key type.
            (json!({"kid":"k","kty":"OKP","crv":"Ed25519","x":ED_X,"alg":"HS256"}), Err("does not fit")),
            (json!({"kid":"k","kty":"RSA","n":RSA_N,"e":"AQAB","alg":"ES256"}), Err("does not fit")),
            (json!({"kid":"k","kty":"RSA","n":RSA_N,"e":"AQAB","alg":"RSA-OAEP"}), Err("does not verify")),
            (json!({"kid":"k","kty":"EC","crv":"P-256","x":EC_X,"y":EC_Y,"alg":"ES384"}), Err("does not fit")),
            // Symmetric keys never come from a JWKS.
            (json!({"kid":"k","kty":"oct","k":"c2VjcmV0"}), Err("symmetric")),
            (json!({"kid":"k","kty":"oct","k":"c2VjcmV0","alg":"HS256"}), Err("symmetric")),
            // Unsupported curves and types.
            (json!({"kid":"k","kty":"OKP","crv":"Ed448","x":ED_X}), Err("unsupported key type (kty OKP, crv Ed448)")),
            (json!({"kid":"k","kty":"EC","crv":"P-521","x":EC_X,"y":EC_Y}), Err("unsupported")),
            (json!({"kid":"k","kty":"OKP","crv":"X25519","x":ED_X}), Err("unsupported")),
            // Not for signatures.
            (json!({"kid":"k","kty":"RSA","n":RSA_N,"e":"AQAB","use":"enc"}), Err("\"use\" is \"enc\"")),
            (json!({"kid":"k","kty":"RSA","n":RSA_N,"e":"AQAB","key_ops":["encrypt"]}), Err("key_ops")),
            // Broken key material.
            (json!({"kid":"k","kty":"OKP","crv":"Ed25519","x":"AAAA"}), Err("wrong size")),
            (json!({"kid":"k","kty":"EC","crv":"P-256","x":EC_X,"y":EC_X}), Err("unusable")),
            (json!({"kid":"k","kty":"RSA","n":"AQAB","e":"AQAB"}), Err("wrong size")),
            (json!({"kid":"k","kty":"OKP","crv":"Ed25519","x":"!!"}), Err("unusable")),
        ];
        for (i, (jwk, want)) in table.into_iter().enumerate() {
            match (one(jwk), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "case {i}"),
                (Err(why), Err(want)) => assert!(why.contains(want), "case {i}: {why:?} should say {want:?}"),
                (got, want) => panic!("case {i}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn set_keeps_usable_keys_and_explains_the_rest() {
        let doc = format!(
            r#"{{"keys":[
                {{"kid":"a","kty":"OKP","crv":"Ed25519","x":"{ED_X}"}},
                {{"kty":"OKP","crv":"Ed25519","x":"{ED_X}"}},
                {{"kid":"a","kty":"EC","crv":"P-256","x":"{EC_X}","y":"{EC_Y}"}},
                {{"kid":"b","kty":"oct","k":"c2VjcmV0"}},
                {{"kid":"c","kty":"EC","crv":"P-256","x":"{EC_X}","y":"{EC_Y}"}}
            ]}}"#
        );
        let (set, skipped) = KeySet::parse(doc.as_bytes()).unwrap();
        assert_eq!(set.kids().collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(set.get("a").unwrap().algorithms, [Algorithm::EdDSA], "first of a duplicate kid wins");
        assert_eq!(set.to_string(), "2 keys (a, c)");
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(skipped[0].starts_with("key #1: no kid"), "{skipped:?}");
        assert!(skipped[1].contains("duplicate kid"), "{skipped:?}");
        assert!(skipped[2].starts_with("key \"b\""), "{skipped:?}");

        for bad in [&b"not json"[..], b"{}", br#"{"keys":{}}"#, b"[]"] {
            assert!(KeySet::parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let (set, skipped) = KeySet::parse(br#"{"keys":[]}"#).unwrap();
        assert!(set.is_empty() && skipped.is_empty());
    }

    #[test]
    fn merged_prefers_the_first_set() {
        let parse = |json: String| KeySet::parse(json.as_bytes()).unwrap().0;
        let url = parse(format!(r#"{{"keys":[{{"kid":"a","kty":"OKP","crv":"Ed25519","x":"{ED_X}"}}]}}"#));
        let file = parse(format!(
            r#"{{"keys":[{{"kid":"a","kty":"EC","crv":"P-256","x":"{EC_X}","y":"{EC_Y}"}},
                        {{"kid":"b","kty":"EC","crv":"P-256","x":"{EC_X}","y":"{EC_Y}"}}]}}"#
        ));
        let both = url.merged(&file);
        assert_eq!(both.to_string(), "2 keys (a, b)");
        assert_eq!(both.get("a").unwrap().algorithms, [Algorithm::EdDSA]);
        assert_eq!(both.get("b").unwrap().algorithms, [Algorithm::ES256]);
    }

    #[test]
    fn bit_lengths() {
        assert_eq!(bit_len(&[]), 0);
        assert_eq!(bit_len(&[0, 0]), 0);
        assert_eq!(bit_len(&[1]), 1);
        assert_eq!(bit_len(&[0, 0x80, 0]), 16);
        assert_eq!(bit_len(&[0x01, 0, 1]), 17);
    }
}
