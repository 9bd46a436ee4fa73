//! Who may connect where: the mode, token-only rooms, and the decision adapters call.

use std::borrow::Cow;
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::token::{TokenVerifier, VerifiedToken};
use super::{AuthError, Role};
use crate::ids::ObjectId;
use crate::protocol::UserName;
use crate::time::Timestamp;

/// How strictly identities are checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AuthMode {
    /// No tokens are read: today's behaviour, the default.
    #[default]
    Off,
    /// A token, when present, must be valid and fixes the identity; rooms marked token-only
    /// need one.
    Optional,
    /// Every connection needs a valid token.
    Required,
}

/// A verified user in one room: who, under which name, with which role, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The user's id (`sub`).
    pub sub: String,
    /// The display name, which replaces the one the client asks for.
    pub name: UserName,
    /// The role the token grants in this room.
    pub role: Role,
    /// When the token stops being valid (its `exp` plus the leeway), if ever.
    pub expires_at: Option<Timestamp>,
}

/// Who is connecting, as [`AuthConfig::admit`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// No identity: the client picks its name, as in the demo.
    Anonymous,
    /// A verified user.
    User(Identity),
}

impl Access {
    /// Whether this client may send messages: anonymous clients may (the mode admitted
    /// them), users only with a role that writes.
    ///
    /// # Errors
    /// [`AuthError::ReadOnly`] for a user whose role in the room is [`Role::Read`].
    pub fn check_send(&self) -> Result<(), AuthError> {
        match self {
            Access::User(identity) if !identity.role.may_send() => Err(AuthError::ReadOnly),
            _ => Ok(()),
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `optional` and `required` need keys to verify tokens with.
    #[error("auth mode {0:?} needs a token key (an HS256 secret, a PEM key or a JWKS)")]
    NoVerifier(AuthMode),
    /// Token-only rooms mean nothing with auth off.
    #[error("token-only rooms need auth mode optional or required")]
    TokenOnlyRoomsWhileOff,
}

/// The whole access policy: mode, keys, token-only rooms.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    mode: AuthMode,
    verifier: Option<TokenVerifier>,
    token_only_rooms: BTreeSet<ObjectId>,
}

impl AuthConfig {
    /// A policy. `token_only_rooms` are room ids (see
    /// [`http::room_id`](crate::http::room_id) for turning a name or private id into one).
    ///
    /// # Errors
    /// [`ConfigError`] for a mode without keys, or token-only rooms with auth off.
    pub fn new(
        mode: AuthMode,
        verifier: Option<TokenVerifier>,
        token_only_rooms: impl IntoIterator<Item = ObjectId>,
    ) -> Result<AuthConfig, ConfigError> {
        let token_only_rooms: BTreeSet<ObjectId> = token_only_rooms.into_iter().collect();
        match mode {
            AuthMode::Off if !token_only_rooms.is_empty() => {
                return Err(ConfigError::TokenOnlyRoomsWhileOff)
            }
            AuthMode::Optional | AuthMode::Required if verifier.is_none() => {
                return Err(ConfigError::NoVerifier(mode))
            }
            _ => {}
        }
        Ok(AuthConfig {
            mode,
            verifier,
            token_only_rooms,
        })
    }

    /// The mode.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Whether `room` admits no one without a valid token.
    pub fn needs_token(&self, room: &ObjectId) -> bool {
        match self.mode {
            AuthMode::Off => false,
            AuthMode::Optional => self.token_only_rooms.contains(room),
            AuthMode::Required => true,
        }
    }

    /// Decides who may enter `room` (a WebSocket upgrade, or an HTTP call on the room) with
    /// `token` at `now`.
    ///
    /// With auth off, everyone is [`Access::Anonymous`] and any token is ignored. Otherwise a
    /// token that is present must be valid and grant the room (a bad token is refused, not
    /// quietly downgraded to anonymous); without one, the client is anonymous unless the
    /// room needs a token.
    ///
    /// # Errors
    /// The [`AuthError`] to answer with ([`AuthError::status`] gives 401 or 403).
    pub fn admit(
        &self,
        room: &ObjectId,
        token: Option<&str>,
        now: Timestamp,
    ) -> Result<Access, AuthError> {
        let Some(verifier) = self
            .verifier
            .as_ref()
            .filter(|_| self.mode != AuthMode::Off)
        else {
            return Ok(Access::Anonymous);
        };
        match token.filter(|token| !token.is_empty()) {
            None if self.needs_token(room) => Err(AuthError::Missing),
            None => Ok(Access::Anonymous),
            Some(token) => identity_in(verifier.verify(token, now)?, room).map(Access::User),
        }
    }

    /// Decides whether a read of `room` (history, presence) with this `Authorization`
    /// header may go ahead at `now`. The operator's admin token reads every room in every
    /// mode (the admin page shows a room's recent messages where tokens are required);
    /// otherwise the header's bearer token must admit the reader as joining would
    /// ([`AuthConfig::admit`]; every role reads).
    ///
    /// # Errors
    /// The [`AuthError`] to answer with, as for [`AuthConfig::admit`].
    pub fn admit_reader(
        &self,
        room: &ObjectId,
        authorization: Option<&str>,
        admin_token: Option<&str>,
        now: Timestamp,
    ) -> Result<(), AuthError> {
        if crate::http::is_authorized(authorization, admin_token) {
            return Ok(());
        }
        self.admit(room, bearer_token(authorization), now).map(drop)
    }

    /// Checks a token a connection presents to replace its current one (`current`), at
    /// `now`: it must be valid, grant `room`, and name the same user.
    ///
    /// # Errors
    /// The [`AuthError`] to send back; the connection keeps its current token.
    pub fn refresh(
        &self,
        room: &ObjectId,
        current: &Identity,
        token: &str,
        now: Timestamp,
    ) -> Result<Identity, AuthError> {
        let verifier = self.verifier.as_ref().ok_or(AuthError::Missing)?;
        let fresh = identity_in(verifier.verify(token, now)?, room)?;
        if fresh.sub != current.sub {
            return Err(AuthError::SubjectChanged);
        }
        Ok(fresh)
    }
}

/// The identity a verified token gives in `room`.
fn identity_in(token: VerifiedToken, room: &ObjectId) -> Result<Identity, AuthError> {
    let role = token
        .grants
        .role_for(room)
        .ok_or(AuthError::RoomNotGranted)?;
    Ok(Identity {
        sub: token.sub,
        name: token.name,
        role,
        expires_at: token.expires_at,
    })
}

/// The token in a WebSocket URL's query (`?token=...`), percent-decoded; `None` if absent
/// or empty. Browsers cannot set headers on a WebSocket, so the URL is how a page sends it.
pub fn token_from_query(query: Option<&str>) -> Option<Cow<'_, str>> {
    let value = query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))?;
    if value.is_empty() {
        return None;
    }
    Some(percent_decode(value))
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive,
/// RFC 7235 §2.1); `None` for another scheme or an empty token.
pub fn bearer_token(authorization: Option<&str>) -> Option<&str> {
    let header = authorization?.trim();
    let (scheme, token) = header.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Decodes `%XX` escapes. A `+` stays a `+` (tokens never hold spaces), and an escape that
/// is not two hex digits, or bytes that are not UTF-8, leave the text as given: such a
/// token then fails verification as malformed.
fn percent_decode(value: &str) -> Cow<'_, str> {
    if !value.contains('%') {
        return Cow::Borrowed(value);
    }
    let bytes = value.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = (bytes[index] == b'%')
            .then(|| bytes.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                index += 3;
            }
            None if bytes[index] == b'%' => return Cow::Borrowed(value),
            None => {
                decoded.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8(decoded).map_or(Cow::Borrowed(value), Cow::Owned)
}
