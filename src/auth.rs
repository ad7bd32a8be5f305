//! JWT verification (and minting, for `taskcast token` and tests).
//!
//! Only the configured algorithm (HS256 with JWT_SECRET) is accepted: the
//! token's own `alg` header is never trusted to choose the check, so `none`
//! and algorithm-confusion tokens fail. `exp` is required. Error messages
//! describe what was wrong with a token, never its contents.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Seconds of clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;

/// The claims taskcast reads. Others (BetterAuth's user object, ...) are ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id; kept on the connection for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// Why a token was refused (the text goes into the 401 body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Expired,
    NotYetValid,
    BadSignature,
    WrongAlgorithm,
    WrongIssuer,
    WrongAudience,
    Malformed,
}

impl AuthError {
    pub fn message(self) -> &'static str {
        match self {
            AuthError::Missing => "missing token: send Authorization: Bearer <jwt> or ?token=<jwt>",
            AuthError::Expired => "token expired",
            AuthError::NotYetValid => "token not yet valid (nbf)",
            AuthError::BadSignature => "token signature is invalid",
            AuthError::WrongAlgorithm => "token algorithm is not accepted",
            AuthError::WrongIssuer => "token issuer is not accepted",
            AuthError::WrongAudience => "token audience is not accepted",
            AuthError::Malformed => "token is malformed",
        }
    }
}

/// Checks tokens against the configured secret and claims.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    pub fn new(config: &Config) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(iss) = &config.jwt_issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &config.jwt_audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            // BetterAuth tokens carry `aud`; without JWT_AUDIENCE we do not
            // check it (jsonwebtoken would otherwise reject any token with one).
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Verifier { key: DecodingKey::from_secret(&config.jwt_secret), validation }
    }

    /// Verifies a compact JWT and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map(|d| d.claims).map_err(|e| {
            match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
                    AuthError::WrongAlgorithm
                }
                ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
                ErrorKind::InvalidAudience => AuthError::WrongAudience,
                _ => AuthError::Malformed,
            }
        })
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// How long a token with this `exp` stays acceptable (leeway included).
pub fn time_left(exp: u64) -> std::time::Duration {
    std::time::Duration::from_secs((exp + LEEWAY_SECS).saturating_sub(now_secs()))
}

/// Signs an HS256 token for `sub`, valid for `ttl_secs`.
pub fn mint(secret: &[u8], sub: &str, ttl_secs: u64) -> String {
    let now = now_secs();
    let claims = Claims { sub: Some(sub.to_string()), exp: now + ttl_secs, iat: Some(now) };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret))
        .expect("HS256 signing cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn sign(header: Header, claims: serde_json::Value, secret: &str) -> String {
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    fn verifier(iss: Option<&str>, aud: Option<&str>) -> Verifier {
        let mut c = Config::for_tests(SECRET);
        c.jwt_issuer = iss.map(Into::into);
        c.jwt_audience = aud.map(Into::into);
        Verifier::new(&c)
    }

    #[test]
    fn table() {
        let now = now_secs();
        let v = verifier(None, None);
        let hs = || Header::new(Algorithm::HS256);
        let cases: Vec<(String, Result<(), AuthError>)> = vec![
            (mint(SECRET.as_bytes(), "u1", 60), Ok(())),
            (String::new(), Err(AuthError::Missing)),
            ("abc".into(), Err(AuthError::Malformed)),
            ("a.b.c".into(), Err(AuthError::Malformed)),
            (sign(hs(), json!({"sub":"u","exp": now - 3600}), SECRET), Err(AuthError::Expired)),
            // within leeway: still accepted
            (sign(hs(), json!({"sub":"u","exp": now - 5}), SECRET), Ok(())),
            (sign(hs(), json!({"sub":"u","exp": now + 60, "nbf": now + 3600}), SECRET), Err(AuthError::NotYetValid)),
            (
                sign(hs(), json!({"sub":"u","exp": now + 60}), "another-secret-another-secret-xx"),
                Err(AuthError::BadSignature),
            ),
            (sign(hs(), json!({"sub":"u"}), SECRET), Err(AuthError::Malformed)),
            (
                sign(Header::new(Algorithm::HS384), json!({"sub":"u","exp": now + 60}), SECRET),
                Err(AuthError::WrongAlgorithm),
            ),
            // aud present but not configured: accepted
            (sign(hs(), json!({"sub":"u","exp": now + 60, "aud": "x"}), SECRET), Ok(())),
        ];
        for (i, (token, want)) in cases.iter().enumerate() {
            assert_eq!(v.verify(token).map(|_| ()), *want, "case {i}");
        }
    }

    #[test]
    fn alg_none_is_refused() {
        use base64_url as b64;
        let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64(format!(r#"{{"sub":"u","exp":{}}}"#, now_secs() + 60).as_bytes());
        let token = format!("{header}.{body}.");
        assert!(verifier(None, None).verify(&token).is_err());
    }

    /// Minimal base64url (no padding) for hand-built tokens.
    fn base64_url(input: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in input.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn issuer_and_audience() {
        let now = now_secs();
        let v = verifier(Some("https://app"), Some("https://app"));
        let hs = Header::new(Algorithm::HS256);
        let good = sign(hs.clone(), json!({"sub":"u","exp":now+60,"iss":"https://app","aud":"https://app"}), SECRET);
        let bad_iss =
            sign(hs.clone(), json!({"sub":"u","exp":now+60,"iss":"https://evil","aud":"https://app"}), SECRET);
        let bad_aud =
            sign(hs.clone(), json!({"sub":"u","exp":now+60,"iss":"https://app","aud":"https://evil"}), SECRET);
        let no_iss = sign(hs, json!({"sub":"u","exp":now+60,"aud":"https://app"}), SECRET);
        assert!(v.verify(&good).is_ok());
        assert_eq!(v.verify(&bad_iss).unwrap_err(), AuthError::WrongIssuer);
        assert_eq!(v.verify(&bad_aud).unwrap_err(), AuthError::WrongAudience);
        assert!(v.verify(&no_iss).is_err());
    }
}
