//! JWT verification (and minting, for `taskcast token` and tests): the one
//! place that decides whether a token is accepted.
//!
//! Two kinds of keys, each with only its own algorithms:
//! - the JWKS public keys (JWKS_URL / JWKS_FILE, see [`crate::jwks`]): a
//!   token whose header names a `kid` in the set is checked with that key,
//!   for the algorithms of that key's type (and only the JWK's own `alg`
//!   when it states one) — EdDSA, ES256/384, RS256/384/512, PS256/384/512;
//! - the shared secret (JWT_SECRET), HS256 only: tokens without a `kid`,
//!   and HS256 tokens whatever their `kid`.
//!
//! The token's `alg` header is never trusted to choose the check: it can
//! only pick which of our keys to try, and that key refuses any algorithm
//! outside its family, so `none`, HS256-signed-with-the-public-key and other
//! algorithm-confusion tokens fail. Keys a token carries or points to (`jwk`,
//! `jku`, `x5u` headers) are ignored. `exp` is required; `nbf`, JWT_ISSUER
//! and JWT_AUDIENCE are checked for every algorithm. Error messages describe
//! what was wrong with a token, never its contents.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError};
use crate::jwks;

/// The longest a connection may live on one token, whatever its `exp`
/// says: a far-future `exp` (≈ 9.2e18) would overflow `Instant + Duration`.
/// A client with such a token is closed with 4001 after a year.
pub const MAX_TOKEN_LIFETIME_SECS: u64 = crate::config::MAX_JWT_LIFETIME_SECS;

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
    /// Every other claim (the channels claim, a subscription token's
    /// `channel`, BetterAuth's user object, ...).
    #[serde(flatten, default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
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
    /// No `iss` claim, and JWT_ISSUER requires one.
    MissingIssuer,
    /// No `aud` claim, and JWT_AUDIENCE requires one.
    MissingAudience,
    Malformed,
    /// The `kid` is not in the JWKS (yet): a refetch was requested.
    UnknownKey,
    /// A JWKS-style token without a `kid`: no way to pick its key.
    MissingKeyId,
    /// An HS256 token, but JWT_SECRET is not set (JWKS only).
    SecretNotSet,
}

impl AuthError {
    /// Does this refusal count toward AUTH_FAILURES_PER_MIN for the
    /// client's address? Not a missing token (nothing was tried) nor an
    /// unknown `kid` (a key rotation the set has not caught up with yet):
    /// neither cost a signature check.
    pub fn counts_as_failure(self) -> bool {
        !matches!(self, AuthError::Missing | AuthError::UnknownKey)
    }

    pub fn message(self) -> &'static str {
        match self {
            AuthError::Missing => "missing token: send Authorization: Bearer <jwt> or ?token=<jwt>",
            AuthError::Expired => "token expired",
            AuthError::NotYetValid => "token not yet valid (nbf)",
            AuthError::BadSignature => "token signature is invalid",
            AuthError::WrongAlgorithm => "token algorithm is not accepted",
            AuthError::WrongIssuer => "token issuer is not accepted",
            AuthError::WrongAudience => "token audience is not accepted",
            AuthError::MissingIssuer => "token has no iss claim, and this server requires one (JWT_ISSUER)",
            AuthError::MissingAudience => "token has no aud claim, and this server requires one (JWT_AUDIENCE)",
            AuthError::Malformed => "token is malformed",
            AuthError::UnknownKey => {
                "token signing key (kid) is unknown; a refresh of the key set was requested: retry in a few seconds"
            }
            AuthError::MissingKeyId => "token has no kid header, so no published key can verify it",
            AuthError::SecretNotSet => "HS256 tokens are not accepted: no JWT_SECRET is configured",
        }
    }
}

/// Checks tokens against the configured keys and claims.
pub struct Verifier {
    /// JWT_SECRET, for HS256 tokens; `None` turns HS256 off.
    secret: Option<DecodingKey>,
    /// The JWKS keys and their fetch thread, when JWKS_URL or JWKS_FILE is set.
    jwks: Option<jwks::Keys>,
    /// The claim checks every token gets (exp, nbf, iss, aud). Its
    /// `algorithms` is `[HS256]`, for the secret; a JWKS key gets a copy
    /// holding that key's algorithms.
    validation: Validation,
}

impl Verifier {
    /// Builds the verifier; with JWKS configured this loads the keys
    /// (blocking: start-up only) and starts their fetch thread. Fails,
    /// naming JWKS_URL or JWKS_FILE, when no key can be loaded.
    pub fn new(config: &Config) -> Result<Verifier, ConfigError> {
        // [HS256]: all the shared secret ever verifies (JWKS keys get copies).
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = config.jwt_leeway_secs;
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
        Ok(Verifier {
            secret: config.jwt_secret.as_ref().map(|s| DecodingKey::from_secret(s.expose())),
            jwks: jwks::Keys::start(config)?,
            validation,
        })
    }

    /// The key fetcher's state (see [`jwks::JwksHealth`] for each field), or
    /// `None` when no JWKS is configured. Cheap: for `/ready` and metrics.
    pub fn jwks_health(&self) -> Option<jwks::JwksHealth> {
        self.jwks.as_ref().map(jwks::Keys::health)
    }

    /// Keys in the JWKS key set; `None` when no JWKS is configured (for
    /// `/metrics`).
    pub fn jwks_keys(&self) -> Option<usize> {
        self.jwks_health().map(|h| h.keys)
    }

    /// Can JWKS tokens be verified (keys loaded, fetch thread alive)?
    /// `None` when no JWKS is configured (for `/ready`).
    pub fn jwks_ready(&self) -> Option<bool> {
        self.jwks_health().map(|h| h.keys > 0 && h.thread_alive)
    }

    /// Verifies a compact JWT and returns its claims. Never blocks: an
    /// unknown `kid` only asks the fetch thread for a refetch.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let header = jsonwebtoken::decode_header(token).map_err(refusal)?;
        let hmac = header.alg.family() == AlgorithmFamily::Hmac;
        // A public-key token names its key; the key, not the header, says
        // which algorithms may verify it.
        if let (false, Some(kid), Some(jwks)) = (hmac, &header.kid, &self.jwks) {
            let keys = jwks.current();
            let Some(key) = keys.get(kid) else {
                jwks.request_refetch();
                return Err(AuthError::UnknownKey);
            };
            let mut validation = self.validation.clone();
            validation.algorithms.clone_from(&key.algorithms);
            return decode(token, &key.key, &validation);
        }
        // Everything else is the shared secret's, and only as HS256.
        match &self.secret {
            Some(secret) if hmac => decode(token, secret, &self.validation),
            None if hmac => Err(AuthError::SecretNotSet),
            _ if self.jwks.is_some() && header.kid.is_none() => Err(AuthError::MissingKeyId),
            _ => Err(AuthError::WrongAlgorithm),
        }
    }
}

/// Checks signature and claims with `key`, accepting only `validation.algorithms`.
fn decode(token: &str, key: &DecodingKey, validation: &Validation) -> Result<Claims, AuthError> {
    jsonwebtoken::decode::<Claims>(token, key, validation).map(|d| d.claims).map_err(refusal)
}

/// What a jsonwebtoken error means for the client.
fn refusal(e: jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        // A key that cannot check this signature is a bad signature to the client.
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_) => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
            AuthError::WrongAlgorithm
        }
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => AuthError::MissingIssuer,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => AuthError::MissingAudience,
        _ => AuthError::Malformed,
    }
}

/// A refused token described for the operator's log: what was wrong and
/// the offending value — the `iss` or `aud` it carries (with what
/// JWT_ISSUER / JWT_AUDIENCE want), the `kid` or `alg` its header names, or
/// how long ago it expired. Never the token itself, nor its subject.
///
/// The values are read from the token without verifying it (an unknown
/// `kid` cannot be verified at all), for this description only; they are
/// quoted and cut short by [`shown`] so a token cannot forge log lines.
pub fn describe_refusal(token: &str, e: AuthError, config: &Config) -> String {
    let claim = |name: &str| {
        jsonwebtoken::dangerous::insecure_decode_claims::<serde_json::Value>(token)
            .ok()
            .and_then(|c| {
                c.get(name).map(|v| match v {
                    serde_json::Value::String(s) => shown(s),
                    // JSON text (an `aud` array): already escaped; cut short.
                    other => other.to_string().chars().take(100).collect(),
                })
            })
            .unwrap_or_else(|| "(none)".into())
    };
    let header = jsonwebtoken::decode_header(token).ok();
    let wanted = |v: &Option<String>| v.as_deref().map_or_else(|| "(unset)".into(), shown);
    match e {
        AuthError::WrongIssuer => {
            format!("token iss {} is not JWT_ISSUER {}", claim("iss"), wanted(&config.jwt_issuer))
        }
        AuthError::WrongAudience => {
            format!("token aud {} does not include JWT_AUDIENCE {}", claim("aud"), wanted(&config.jwt_audience))
        }
        AuthError::MissingIssuer => format!("token has no iss claim; JWT_ISSUER is {}", wanted(&config.jwt_issuer)),
        AuthError::MissingAudience => {
            format!("token has no aud claim; JWT_AUDIENCE is {}", wanted(&config.jwt_audience))
        }
        AuthError::UnknownKey => format!(
            "token kid {} is not in the JWKS (a refetch was requested)",
            header.and_then(|h| h.kid).map_or_else(|| "(none)".into(), |k| shown(&k))
        ),
        AuthError::WrongAlgorithm => format!(
            "token alg {} is not accepted for its key",
            header.map_or_else(|| "(unreadable)".into(), |h| format!("{:?}", h.alg))
        ),
        AuthError::Expired => {
            let exp = jsonwebtoken::dangerous::insecure_decode_claims::<serde_json::Value>(token)
                .ok()
                .and_then(|c| c.get("exp").and_then(serde_json::Value::as_u64));
            match exp {
                Some(exp) => format!("token expired {} s ago", now_secs().saturating_sub(exp)),
                None => e.message().to_string(),
            }
        }
        _ => e.message().to_string(),
    }
}

/// Text from a peer, fit for a log line: JSON-quoted (so control
/// characters and quotes are escaped) and cut to 100 characters.
pub fn shown(text: &str) -> String {
    const MAX: usize = 100;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", serde_json::Value::from(&text[..cut])),
        None => serde_json::Value::from(text).to_string(),
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// When a token with this `exp` stops being acceptable (`leeway_secs`
/// included), as seen from `now`; at most [`MAX_TOKEN_LIFETIME_SECS`] ahead.
pub fn expires_at(now: std::time::Instant, exp: u64, leeway_secs: u64) -> std::time::Instant {
    let left = exp.saturating_add(leeway_secs).saturating_sub(now_secs()).min(MAX_TOKEN_LIFETIME_SECS);
    now + std::time::Duration::from_secs(left)
}

/// Signs an HS256 token for `sub`, valid for `ttl_secs`.
pub fn mint(secret: &[u8], sub: &str, ttl_secs: u64) -> String {
    let now = now_secs();
    let claims = Claims { sub: Some(sub.to_string()), exp: now + ttl_secs, iat: Some(now), extra: Default::default() };
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
        Verifier::new(&c).unwrap()
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
    fn expiry_is_clamped_not_overflowed() {
        let now = std::time::Instant::now();
        let year = std::time::Duration::from_secs(MAX_TOKEN_LIFETIME_SECS);
        assert_eq!(expires_at(now, u64::MAX, 30), now + year);
        assert_eq!(expires_at(now, 9_200_000_000_000_000_000, 3600), now + year);
        assert_eq!(expires_at(now, 0, 30), now);
        let soon = expires_at(now, now_secs() + 10, 0);
        assert!(soon <= now + std::time::Duration::from_secs(10));
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
        let no_iss = sign(hs.clone(), json!({"sub":"u","exp":now+60,"aud":"https://app"}), SECRET);
        let no_aud = sign(hs.clone(), json!({"sub":"u","exp":now+60,"iss":"https://app"}), SECRET);
        assert!(v.verify(&good).is_ok());
        assert_eq!(v.verify(&bad_iss).unwrap_err(), AuthError::WrongIssuer);
        assert_eq!(v.verify(&bad_aud).unwrap_err(), AuthError::WrongAudience);
        // A missing claim says which, not "malformed".
        assert_eq!(v.verify(&no_iss).unwrap_err(), AuthError::MissingIssuer);
        assert_eq!(v.verify(&no_aud).unwrap_err(), AuthError::MissingAudience);
        assert!(AuthError::MissingIssuer.message().contains("JWT_ISSUER"));
        // The log's description names the offending values, never the token.
        let mut c = Config::for_tests(SECRET);
        c.jwt_issuer = Some("https://app".into());
        c.jwt_audience = Some("https://app".into());
        let d = describe_refusal(&bad_iss, AuthError::WrongIssuer, &c);
        assert_eq!(d, r#"token iss "https://evil" is not JWT_ISSUER "https://app""#);
        let d = describe_refusal(&bad_aud, AuthError::WrongAudience, &c);
        assert_eq!(d, r#"token aud "https://evil" does not include JWT_AUDIENCE "https://app""#);
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k\n\"1".into());
        let odd = sign(h, json!({"exp": now + 60}), SECRET);
        let d = describe_refusal(&odd, AuthError::UnknownKey, &c);
        assert_eq!(d, r#"token kid "k\n\"1" is not in the JWKS (a refetch was requested)"#);
        assert!(!d.contains(&odd));
        assert_eq!(shown(&"é".repeat(150)), format!("\"{}\"…", "é".repeat(100)));
    }
}
