//! Verifying a token: signature with a configured key, then the claims against `now`.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::Validation;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::keys::{Algorithm, VerifyingKey, VerifyingKeys};
use super::{AuthError, Role};
use crate::ids::{self, Namespace, ObjectId};
use crate::protocol::{self, UserName, NAME_LEN_MAX_UTF16};
use crate::time::Timestamp;

/// The longest token accepted, in bytes (a WebSocket client frame is at most 4 KiB, and a
/// refresh must fit in one).
pub const TOKEN_LEN_MAX_BYTES: usize = 4 * 1024;
/// The longest `sub` accepted, in bytes (it travels in every hibernation attachment).
pub const SUBJECT_LEN_MAX_BYTES: usize = 256;
/// The most room grants one token may carry.
pub const ROOM_GRANTS_MAX: usize = 64;
/// The default allowance for clock differences between the issuer and edgechat.
pub const LEEWAY_MS_DEFAULT: u64 = 30_000;
/// The room key that grants every room (named or private) not named on its own.
pub const GRANT_WILDCARD: &str = "*";

/// How tokens are checked: which keys, which issuer and audience, how much clock leeway.
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    keys: VerifyingKeys,
    /// The `iss` a token must carry, if set.
    pub issuer: Option<String>,
    /// A value the token's `aud` must contain, if set. When unset, a token that carries an
    /// `aud` at all is refused (RFC 7519 §4.1.3: a recipient not named in `aud` must
    /// reject).
    pub audience: Option<String>,
    /// The allowance on `exp` and `nbf` for clocks that disagree.
    pub leeway_ms: u64,
    /// Whether a token without `exp` is refused (the default; a token that never expires
    /// cannot be taken back).
    pub require_exp: bool,
}

/// What a valid token says, before any room is considered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The user's id (`sub`).
    pub sub: String,
    /// The display name (`name`, or `sub` cut to fit when the token names none).
    pub name: UserName,
    /// The rooms granted, by room id, and the role in each.
    pub grants: Grants,
    /// The first instant the token is no longer valid (`exp` plus the leeway), if it expires.
    pub expires_at: Option<Timestamp>,
}

/// The rooms a token grants, each with a role; `"*"` grants every other room.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    rooms: BTreeMap<ObjectId, Role>,
    wildcard: Option<Role>,
}

impl Grants {
    /// The role granted in `room`: its own entry if it has one (even a lower one), else the
    /// wildcard's, else none.
    pub fn role_for(&self, room: &ObjectId) -> Option<Role> {
        self.rooms.get(room).copied().or(self.wildcard)
    }

    /// Parses the `rooms` claim: an object from room key to role name.
    ///
    /// A key is written as the room appears in its URL path segment: 64 lowercase hex
    /// digits name a private room by its id, anything else is a room name, and `"*"` is the
    /// wildcard (so a room literally named `*` is reachable only through the wildcard).
    fn parse(value: &Value) -> Result<Grants, AuthError> {
        let Value::Object(map) = value else {
            return Err(AuthError::BadGrants);
        };
        if map.len() > ROOM_GRANTS_MAX {
            return Err(AuthError::BadGrants);
        }
        let mut grants = Grants::default();
        for (key, role) in map {
            let role = role
                .as_str()
                .and_then(Role::from_name)
                .ok_or(AuthError::BadGrants)?;
            if key == GRANT_WILDCARD {
                grants.wildcard = Some(role);
            } else if ids::is_lower_hex_id(key) {
                let id = ObjectId::parse_hex(key).map_err(|_| AuthError::BadGrants)?;
                grants.rooms.insert(id, role);
            } else {
                grants
                    .rooms
                    .insert(ObjectId::from_name(Namespace::Room, key), role);
            }
        }
        Ok(grants)
    }
}

/// The header fields read before verifying: which key, and whether the algorithm is ours.
#[derive(Deserialize)]
struct PeekedHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

impl TokenVerifier {
    /// A verifier with these keys, no issuer or audience check, the default leeway, and
    /// `exp` required.
    pub fn new(keys: VerifyingKeys) -> TokenVerifier {
        TokenVerifier {
            keys,
            issuer: None,
            audience: None,
            leeway_ms: LEEWAY_MS_DEFAULT,
            require_exp: true,
        }
    }

    /// The keys signatures are checked with.
    pub fn keys(&self) -> &VerifyingKeys {
        &self.keys
    }

    /// Verifies `token` at `now`: signature, then `exp`, `nbf`, `iss`, `aud`, `sub`, `name`
    /// and `rooms`. Pure: no clock, no randomness, no IO.
    ///
    /// # Errors
    /// The [`AuthError`] naming the first check that failed.
    pub fn verify(&self, token: &str, now: Timestamp) -> Result<VerifiedToken, AuthError> {
        let claims = self.verified_claims(token)?;
        self.check_claims(&claims, now)
    }

    /// The token's claims if a configured key signed it, and with that key's algorithm.
    fn verified_claims(&self, token: &str) -> Result<Map<String, Value>, AuthError> {
        if token.len() > TOKEN_LEN_MAX_BYTES {
            return Err(AuthError::Malformed);
        }
        let header = peek_header(token)?;
        let alg = Algorithm::from_name(&header.alg).ok_or(AuthError::AlgorithmNotAllowed)?;
        // A token without a kid may be checked against every key (a bounded set); one that
        // names a kid only against that key and keys without a kid (PEM, shared secret).
        let by_kid: Vec<&VerifyingKey> = self
            .keys
            .keys
            .iter()
            .filter(|key| header.kid.is_none() || key.kid.is_none() || key.kid == header.kid)
            .collect();
        if by_kid.is_empty() {
            return Err(AuthError::UnknownKey);
        }
        let mut last = AuthError::AlgorithmNotAllowed;
        // The key's algorithm, not the header's, decides: a key only verifies its own.
        for key in by_kid.into_iter().filter(|key| key.algorithm == alg) {
            match decode_with(token, key) {
                Ok(claims) => return Ok(claims),
                Err(error) => last = error,
            }
        }
        Err(last)
    }

    fn check_claims(
        &self,
        claims: &Map<String, Value>,
        now: Timestamp,
    ) -> Result<VerifiedToken, AuthError> {
        let exp = numeric_date(claims.get("exp"))?;
        let nbf = numeric_date(claims.get("nbf"))?;
        let expires_at = exp.map(|exp| exp.plus_millis(self.leeway_ms));
        match expires_at {
            Some(expires_at) if now >= expires_at => return Err(AuthError::Expired),
            None if self.require_exp => return Err(AuthError::MissingExpiry),
            _ => {}
        }
        if let Some(nbf) = nbf {
            if now.plus_millis(self.leeway_ms) < nbf {
                return Err(AuthError::NotYetValid);
            }
        }
        self.check_issuer(claims.get("iss"))?;
        self.check_audience(claims.get("aud"))?;
        let sub = match claims.get("sub") {
            Some(Value::String(sub)) if !sub.is_empty() && sub.len() <= SUBJECT_LEN_MAX_BYTES => {
                sub.clone()
            }
            Some(_) => return Err(AuthError::BadSubject),
            None => return Err(AuthError::MissingSubject),
        };
        let name = match claims.get("name") {
            None => name_from_subject(&sub),
            Some(Value::String(name)) => UserName::parse(name).map_err(|_| AuthError::BadName)?,
            Some(_) => return Err(AuthError::BadName),
        };
        let grants = match claims.get("rooms") {
            None => Grants::default(),
            Some(rooms) => Grants::parse(rooms)?,
        };
        Ok(VerifiedToken {
            sub,
            name,
            grants,
            expires_at,
        })
    }

    fn check_issuer(&self, iss: Option<&Value>) -> Result<(), AuthError> {
        let Some(expected) = &self.issuer else {
            return Ok(());
        };
        match iss {
            Some(Value::String(iss)) if iss == expected => Ok(()),
            _ => Err(AuthError::WrongIssuer),
        }
    }

    fn check_audience(&self, aud: Option<&Value>) -> Result<(), AuthError> {
        let names_us = |value: &Value| {
            self.audience
                .as_deref()
                .is_some_and(|expected| value.as_str() == Some(expected))
        };
        match (aud, &self.audience) {
            (None, None) => Ok(()),
            (Some(Value::String(_)), _) if aud.is_some_and(names_us) => Ok(()),
            (Some(Value::Array(list)), _) if list.iter().any(names_us) => Ok(()),
            // RFC 7519 §4.1.3: an `aud` that does not name us, or none when we need one.
            _ => Err(AuthError::WrongAudience),
        }
    }
}

/// Reads the header's `alg` and `kid` (nothing is trusted yet: they only choose the key).
fn peek_header(token: &str) -> Result<PeekedHeader, AuthError> {
    if token.split('.').count() != 3 {
        return Err(AuthError::Malformed);
    }
    let encoded = token.split('.').next().unwrap_or("");
    let json = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| AuthError::Malformed)
}

/// Verifies the signature with `key` (its algorithm only) and returns the claims.
///
/// Every time check of the crate is off: it would read the wall clock, which core has
/// none of; `exp` and `nbf` are checked against `now` in [`TokenVerifier::check_claims`].
fn decode_with(token: &str, key: &VerifyingKey) -> Result<Map<String, Value>, AuthError> {
    let mut validation = Validation::new(key.algorithm.to_jwt());
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    validation.reject_tokens_expiring_in_less_than = 0;
    jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
        .map(|data| data.claims)
        .map_err(|error| match error.kind() {
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
                AuthError::AlgorithmNotAllowed
            }
            ErrorKind::InvalidToken
            | ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_) => AuthError::Malformed,
            // A signature that fails, or does not even parse as one for this key.
            _ => AuthError::BadSignature,
        })
}

/// A NumericDate claim (seconds since the epoch, possibly fractional) in milliseconds.
fn numeric_date(value: Option<&Value>) -> Result<Option<Timestamp>, AuthError> {
    let Some(value) = value else {
        return Ok(None);
    };
    if let Some(secs) = value.as_u64() {
        return Ok(Some(Timestamp(secs.saturating_mul(1_000))));
    }
    match value.as_f64() {
        Some(secs) if secs.is_finite() && secs >= 0.0 => {
            // Saturating float-to-int conversion; sub-millisecond parts are dropped.
            Ok(Some(Timestamp((secs * 1_000.0) as u64)))
        }
        _ => Err(AuthError::Malformed),
    }
}

/// The display name of a token without `name`: its `sub`, cut to the name length rule on a
/// character boundary (a `sub` is never empty, so neither is the result).
fn name_from_subject(sub: &str) -> UserName {
    let mut units = 0;
    let end = sub
        .char_indices()
        .find(|(_, c)| {
            units += c.len_utf16();
            units > NAME_LEN_MAX_UTF16
        })
        .map_or(sub.len(), |(index, _)| index);
    debug_assert!(protocol::utf16_len(&sub[..end]) <= NAME_LEN_MAX_UTF16);
    UserName::parse(&sub[..end]).expect("a non-empty subject cut to the length rule is a name")
}
