//! Identity and access: signed tokens (JWT, RFC 7519), room grants, modes, origins.
//!
//! Everything here is pure: verification takes `now` as an argument and never reads a
//! clock, so the server and the Worker decide identically. Adapters call [`AuthConfig::admit`]
//! when a WebSocket upgrade or an HTTP call arrives, and answer a refusal with
//! [`answer::auth_refused`](crate::http::answer::auth_refused).
//!
//! # Modes
//! - [`AuthMode::Off`] (the default): no token is read; anyone joins under any name.
//! - [`AuthMode::Optional`]: a token, when present, must be valid and fixes the identity;
//!   without one the client is anonymous, except in rooms marked token-only.
//! - [`AuthMode::Required`]: no valid token, no connection.
//!
//! # Tokens
//! A token is a JWS in compact form, signed with HS256 (a secret shared with the
//! application), RS256, ES256 or EdDSA (public keys from PEM or a JWKS document; see
//! [`VerifyingKeys`]). The key decides the algorithm: a token whose `alg` differs from its
//! key's is refused, and `alg: none` always is. Claims:
//!
//! | claim   | meaning |
//! |---------|---------|
//! | `sub`   | the user's id; required, 1 to [`SUBJECT_LEN_MAX_BYTES`] bytes |
//! | `name`  | the display name (a [`UserName`](crate::protocol::UserName)); without it, `sub` cut to 32 UTF-16 units |
//! | `exp`   | expiry (seconds since the epoch); required unless [`TokenVerifier::require_exp`] is off |
//! | `nbf`   | not valid before; optional |
//! | `iss`   | checked when [`TokenVerifier::issuer`] is set |
//! | `aud`   | must name [`TokenVerifier::audience`]; a token with an `aud` is refused when none is set |
//! | `rooms` | `{"<room>": "read" \| "write" \| "moderator", "*": ...}`: see [`Grants`] |
//!
//! `exp` and `nbf` get [`TokenVerifier::leeway_ms`] of slack (30 s by default). A room key
//! is the room's URL path segment: a name, or the 64-hex id of a private room; `"*"` grants
//! every room without an entry of its own. A token without `rooms` grants nothing, so in a
//! room that needs a token it cannot join.
//!
//! # Issuing a token (the application's side)
//! An application that shares an HS256 secret with edgechat issues a token like this, with
//! the same `jsonwebtoken` crate:
//!
//! ```
//! use jsonwebtoken::{encode, EncodingKey, Header};
//! use serde_json::json;
//!
//! let secret = b"at least thirty-two bytes of secret!!"; // shared with edgechat
//! let claims = json!({
//!     "sub": "user-42",
//!     "name": "Ada",
//!     "exp": 1_700_000_600, // ten minutes after issue
//!     "rooms": { "lobby": "write", "announcements": "read" },
//! });
//! let token = encode(&Header::default(), &claims, &EncodingKey::from_secret(secret)).unwrap();
//! // The page opens `wss://chat.example/api/room/lobby/websocket?token=<token>`.
//!
//! // edgechat's side, which the adapters run:
//! use edgechat_core::auth::{TokenVerifier, VerifyingKeys};
//! use edgechat_core::Timestamp;
//! let verifier = TokenVerifier::new(VerifyingKeys::hs256(secret).unwrap());
//! let verified = verifier.verify(&token, Timestamp(1_700_000_000_000)).unwrap();
//! assert_eq!(verified.sub, "user-42");
//! assert_eq!(verified.name.as_str(), "Ada");
//! ```

mod keys;
mod origin;
mod policy;
mod token;

#[cfg(test)]
mod tests;

pub use keys::{
    Algorithm, KeyError, VerifyingKeys, HS256_SECRET_LEN_MIN_BYTES, KEYS_MAX,
    KEY_DOCUMENT_LEN_MAX_BYTES,
};
pub use origin::{
    origin_allowed, own_origins, upgrade_origin_allowed, PageScheme, HOST_LEN_MAX_BYTES,
};
pub use policy::{
    bearer_token, token_from_query, Access, AuthConfig, AuthMode, ConfigError, Identity,
};
pub use token::{
    Grants, TokenVerifier, VerifiedToken, GRANT_WILDCARD, LEEWAY_MS_DEFAULT, ROOM_GRANTS_MAX,
    SUBJECT_LEN_MAX_BYTES, TOKEN_LEN_MAX_BYTES,
};

use serde::{Deserialize, Serialize};

/// What a token allows in a room, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// May join and read.
    Read,
    /// May also send.
    Write,
    /// May also moderate: every action of [`crate::moderation`] from its own WebSocket.
    Moderator,
}

impl Role {
    /// The role called `name` in a `rooms` claim.
    pub fn from_name(name: &str) -> Option<Role> {
        match name {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            "moderator" => Some(Role::Moderator),
            _ => None,
        }
    }

    /// Whether this role may send messages.
    pub fn may_send(self) -> bool {
        self >= Role::Write
    }
}

/// Why a client is refused. The `Display` text is what the client sees (in an error frame,
/// a close reason or an HTTP body); it never contains the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No token where one is needed.
    #[error("A token is required.")]
    Missing,
    /// Not a compact JWS, or a part does not decode.
    #[error("Malformed token.")]
    Malformed,
    /// The header's `alg` is not the algorithm of any configured key (this includes `none`).
    #[error("Token algorithm not allowed.")]
    AlgorithmNotAllowed,
    /// The header's `kid` names no configured key.
    #[error("Token signed by an unknown key.")]
    UnknownKey,
    /// The signature does not verify.
    #[error("Invalid token signature.")]
    BadSignature,
    /// `exp` (plus the leeway) has passed.
    #[error("Token expired.")]
    Expired,
    /// `nbf` (minus the leeway) has not come yet.
    #[error("Token not yet valid.")]
    NotYetValid,
    /// The token has no `exp`, and one is required.
    #[error("Token has no expiry.")]
    MissingExpiry,
    /// `iss` is not the configured issuer.
    #[error("Wrong token issuer.")]
    WrongIssuer,
    /// `aud` does not name the configured audience.
    #[error("Wrong token audience.")]
    WrongAudience,
    /// The token has no `sub`.
    #[error("Token has no subject.")]
    MissingSubject,
    /// `sub` is not a non-empty string of at most [`SUBJECT_LEN_MAX_BYTES`] bytes.
    #[error("Token subject is invalid.")]
    BadSubject,
    /// `name` is not a valid user name (1 to 32 characters).
    #[error("Token name must be 1 to 32 characters.")]
    BadName,
    /// `rooms` is not an object of at most [`ROOM_GRANTS_MAX`] room keys to role names.
    #[error("Token room grants are invalid.")]
    BadGrants,
    /// The token does not grant the room.
    #[error("Token does not grant this room.")]
    RoomNotGranted,
    /// The token grants the room for reading only, and the client tried to send.
    #[error("Token grants read-only access to this room.")]
    ReadOnly,
    /// A refreshed token names a different user than the connection's.
    #[error("A refreshed token must name the same user.")]
    SubjectChanged,
}

impl AuthError {
    /// The HTTP status of this refusal: 403 when the token is good but does not grant what
    /// was asked, 401 (with `WWW-Authenticate: Bearer`) otherwise.
    pub fn status(self) -> u16 {
        match self {
            AuthError::RoomNotGranted | AuthError::ReadOnly | AuthError::SubjectChanged => 403,
            _ => 401,
        }
    }
}
