//! The room's side of identity: who each connection is, what its token lets it do, and
//! closing it when the token runs out.
//!
//! ```text
//!   connect_as(identity) ──► token valid ──{"token": fresh}──► token valid (later expiry)
//!                                │
//!                                └── now ≥ expires_at ──► Closing (4001 "Token expired.")
//! ```

use std::net::IpAddr;
use std::sync::Arc;

use serde::Deserialize;

use super::{ConnId, Output, Phase, Room, RoomError};
use crate::auth::{AuthConfig, AuthError, Identity};
use crate::ids::ObjectId;
use crate::planted::PlantedBug;
use crate::protocol::{self, Frame, CLIENT_FRAME_LEN_MAX_BYTES};
use crate::time::Timestamp;

/// Close code for a connection whose token expired without a refresh.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// Close reason for a connection whose token expired (the text of [`AuthError::Expired`]).
pub const CLOSE_REASON_TOKEN_EXPIRED: &str = "Token expired.";

/// What a room needs to check refreshed tokens: the policy, and which room it is (grants
/// name rooms by id).
#[derive(Debug, Clone)]
pub struct RoomAuth {
    /// The policy (shared by every room of a process).
    pub config: Arc<AuthConfig>,
    /// This room's id.
    pub room: ObjectId,
}

impl PartialEq for RoomAuth {
    fn eq(&self, other: &RoomAuth) -> bool {
        Arc::ptr_eq(&self.config, &other.config) && self.room == other.room
    }
}

impl Eq for RoomAuth {}

/// `{"token": "<jwt>"}`: a connection presents a fresh token.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFrame {
    token: String,
}

/// The frame acknowledging a refresh.
fn encode_refreshed() -> Frame {
    Frame::from(r#"{"refreshed":true}"#)
}

impl Room {
    /// A WebSocket was accepted for a client [`AuthConfig::admit`] identified (or `None`
    /// for an anonymous one, as [`Room::handle_connect`]). A user joins under the token's
    /// name whatever name it asks for, may send only if its role writes, and is closed with
    /// [`CLOSE_TOKEN_EXPIRED`] when its token expires unless it sends a fresh one.
    ///
    /// # Errors
    /// [`RoomError::DuplicateConnection`] if `conn` is already open.
    pub fn handle_connect_as(
        &mut self,
        conn: ConnId,
        ip: IpAddr,
        identity: Option<Identity>,
        now: Timestamp,
    ) -> Result<(), RoomError> {
        self.handle_connect(conn, ip, now)?;
        if let Some(session) = self.sessions.get_mut(&conn) {
            session.identity = identity;
            self.push_attachment(conn);
        }
        Ok(())
    }

    /// The verified identity of `conn`, if it has one (adapters choose its rate limiter with
    /// [`limiter_id_for`](crate::limiter::limiter_id_for)).
    pub fn identity(&self, conn: ConnId) -> Option<&Identity> {
        self.sessions.get(&conn)?.identity.as_ref()
    }

    /// When to call [`Room::handle_timeout`] next: the earliest token expiry among open
    /// connections, or the earliest limiter answer given up on while frames wait for it, if
    /// any.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let held = self.held_frames_timeout();
        let expiry = self
            .sessions
            .values()
            .filter(|session| session.phase != Phase::Closing)
            .filter_map(|session| session.identity.as_ref()?.expires_at)
            .min();
        expiry.into_iter().chain(held).min()
    }

    /// Closes every connection whose token has expired by `now` (a joined user's `quit` is
    /// broadcast to the others), and decides frames held for a limiter answer that is
    /// overdue, and drops messages older than the room keeps. Early or repeated calls are
    /// harmless.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.release_overdue(now);
        self.trim_history(now);
        let expired: Vec<ConnId> = self
            .sessions
            .iter()
            .filter(|(_, session)| session.phase != Phase::Closing)
            .filter(|(_, session)| {
                let expires_at = session.identity.as_ref().and_then(|i| i.expires_at);
                expires_at.is_some_and(|expires_at| now >= expires_at)
            })
            .map(|(conn, _)| *conn)
            .collect();
        for conn in expired {
            self.close_expired(conn);
        }
    }

    /// Handles `text` if it is a token frame from an identified session; `false` if it is
    /// not one (the caller decodes it as a chat frame).
    pub(super) fn handle_token_frame(&mut self, conn: ConnId, text: &str, now: Timestamp) -> bool {
        let Some(current) = self.identity(conn).cloned() else {
            return false;
        };
        if text.len() > CLIENT_FRAME_LEN_MAX_BYTES {
            return false;
        }
        let Ok(frame) = serde_json::from_str::<TokenFrame>(text) else {
            return false;
        };
        let result = match &self.config.auth {
            Some(auth) => auth.config.refresh(&auth.room, &current, &frame.token, now),
            None => Err(AuthError::Missing),
        };
        match result {
            Ok(mut fresh) => {
                if self.config.planted(PlantedBug::RefreshKeepsOldExpiry) {
                    fresh.expires_at = current.expires_at;
                }
                if let Some(session) = self.sessions.get_mut(&conn) {
                    session.identity = Some(fresh);
                }
                self.push_attachment(conn);
                self.send(conn, encode_refreshed());
            }
            Err(error) => self.send_error(conn, &error.to_string()),
        }
        true
    }

    /// Whether `conn` may send a chat message; if not, it has been told why.
    pub(super) fn check_send(&mut self, conn: ConnId) -> bool {
        let read_only = !self.config.planted(PlantedBug::ReadRoleMaySend)
            && self
                .identity(conn)
                .is_some_and(|identity| !identity.role.may_send());
        if read_only {
            self.send_error(conn, &AuthError::ReadOnly.to_string());
        }
        !read_only
    }

    fn close_expired(&mut self, conn: ConnId) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        let was_joined = match std::mem::replace(&mut session.phase, Phase::Closing) {
            Phase::Joined { name } => Some(name),
            _ => None,
        };
        session.joined_frame = None;
        self.outputs.push_back(Output::Close {
            conn,
            code: CLOSE_TOKEN_EXPIRED,
            reason: CLOSE_REASON_TOKEN_EXPIRED,
        });
        self.push_attachment(conn);
        if let Some(name) = was_joined {
            // Out of the roster first, so the quit goes to everyone else.
            self.roster_cache = None;
            self.broadcast(protocol::encode_quit(name.as_str()));
        }
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    use super::*;
    use crate::auth::{Access, AuthMode, Role, TokenVerifier, VerifyingKeys};
    use crate::ids::Namespace;
    use crate::room::{Attachment, AttachmentV1, RoomConfig, ATTACHMENT_VERSION};

    const SECRET: &[u8] = b"a room test secret of 32 bytes or more";
    const NOW_SECS: u64 = 1_700_000_000;
    const NOW: Timestamp = Timestamp(NOW_SECS * 1_000);
    const LEEWAY_MS: u64 = 1_000;

    fn lobby() -> ObjectId {
        ObjectId::from_name(Namespace::Room, "lobby")
    }

    fn auth() -> RoomAuth {
        let mut verifier = TokenVerifier::new(VerifyingKeys::hs256(SECRET).unwrap());
        verifier.leeway_ms = LEEWAY_MS;
        let config = AuthConfig::new(AuthMode::Required, Some(verifier), []).unwrap();
        RoomAuth {
            config: Arc::new(config),
            room: lobby(),
        }
    }

    fn token(sub: &str, role: &str, exp_secs: u64) -> String {
        let claims = json!({"sub": sub, "name": sub.to_uppercase(), "exp": exp_secs,
            "rooms": {"lobby": role}});
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn identity(auth: &RoomAuth, token: &str) -> Identity {
        match auth.config.admit(&auth.room, Some(token), NOW).unwrap() {
            Access::User(identity) => identity,
            Access::Anonymous => panic!("a user"),
        }
    }

    /// A room with `ada` (write, expiring in 60 s) and `bob` (read, 600 s) joined; outputs
    /// drained. Rate-limit questions are answered at once with no wait.
    fn room_with_two() -> (Room, RoomAuth) {
        let auth = auth();
        let config = RoomConfig {
            auth: Some(auth.clone()),
            ..RoomConfig::default()
        };
        let mut room = Room::new(config);
        let ip = "127.0.0.1".parse().unwrap();
        for (conn, sub, role, exp) in [(1, "ada", "write", 60), (2, "bob", "read", 600)] {
            let identity = identity(&auth, &token(sub, role, NOW_SECS + exp));
            room.handle_connect_as(ConnId(conn), ip, Some(identity), NOW)
                .unwrap();
            text(&mut room, conn, r#"{"name":"someone else"}"#, NOW);
        }
        (room, auth)
    }

    /// Feeds a text frame and returns the outputs (frames as text, closes, persists).
    fn text(room: &mut Room, conn: u64, frame: &str, now: Timestamp) -> Vec<String> {
        room.handle_text(ConnId(conn), frame, now).unwrap();
        drain(room, now)
    }

    fn drain(room: &mut Room, now: Timestamp) -> Vec<String> {
        let mut seen = Vec::new();
        while let Some(output) = room.poll_output() {
            match output {
                Output::Send { conn, frame } => seen.push(format!("{}<{frame}", conn.0)),
                Output::Broadcast { recipients, frame } => {
                    let to: Vec<String> = recipients.iter().map(|c| c.0.to_string()).collect();
                    seen.push(format!("{}<{frame}", to.join(",")));
                }
                Output::Close { conn, code, reason } => {
                    seen.push(format!("{} closed {code} {reason}", conn.0));
                }
                Output::AskRateLimiter { request, .. } => {
                    room.handle_rate_limit_verdict(request, 0, now);
                }
                Output::Persist(batch) => seen.push(format!("persist {}", batch.id.0)),
                _ => {}
            }
        }
        seen
    }

    #[test]
    fn users_join_under_their_token_name_and_readers_cannot_send() {
        let (mut room, _) = room_with_two();
        assert_eq!(room.presence().collect::<Vec<_>>(), ["ADA", "BOB"]);
        assert_eq!(
            text(&mut room, 2, r#"{"message":"hi"}"#, NOW),
            [r#"2<{"error":"Token grants read-only access to this room."}"#]
        );
        assert_eq!(
            text(&mut room, 1, r#"{"message":"hi"}"#, NOW),
            ["persist 1"]
        );
        assert_eq!(room.identity(ConnId(2)).unwrap().role, Role::Read);
    }

    #[test]
    fn an_evicted_room_says_when_it_must_wake_for_an_expiry() {
        let auth = auth();
        let config = RoomConfig {
            auth: Some(auth.clone()),
            ..RoomConfig::default()
        };
        let mut host = crate::host::RoomHost::new(config, 600_000);
        host.restore(&[], std::iter::empty(), NOW).unwrap();
        let identity = identity(&auth, &token("ada", "write", NOW_SECS + 60));
        let room = host.room_mut(NOW).unwrap();
        room.handle_connect_as(ConnId(1), "127.0.0.1".parse().unwrap(), Some(identity), NOW)
            .unwrap();
        text(room, 1, r#"{"name":"ada"}"#, NOW);
        assert_eq!(host.wake_at(), None, "a resident room keeps its own timer");
        host.request_eviction();
        assert!(!host.is_resident());
        let expires = Timestamp((NOW_SECS + 60) * 1_000 + LEEWAY_MS);
        assert_eq!(host.wake_at(), Some(expires));
        host.restore(&[], std::iter::empty(), NOW).unwrap();
        assert_eq!(host.wake_at(), None);
    }

    #[test]
    fn an_expired_token_closes_its_connection_once() {
        let (mut room, _) = room_with_two();
        let ada_expires = Timestamp((NOW_SECS + 60) * 1_000 + LEEWAY_MS);
        assert_eq!(room.poll_timeout(), Some(ada_expires));
        room.handle_timeout(Timestamp(ada_expires.0 - 1));
        assert_eq!(
            drain(&mut room, NOW),
            Vec::<String>::new(),
            "valid until then"
        );
        room.handle_timeout(ada_expires);
        room.handle_timeout(ada_expires); // a second call is harmless
        assert_eq!(
            drain(&mut room, ada_expires),
            ["1 closed 4001 Token expired.", r#"2<{"quit":"ADA"}"#]
        );
        assert_eq!(room.presence().collect::<Vec<_>>(), ["BOB"]);
        let bob_expires = Timestamp((NOW_SECS + 600) * 1_000 + LEEWAY_MS);
        assert_eq!(room.poll_timeout(), Some(bob_expires));
        assert_eq!(
            text(&mut room, 1, r#"{"message":"late"}"#, ada_expires),
            Vec::<String>::new()
        );
        room.handle_close(ConnId(1), ada_expires).unwrap();
        assert_eq!(
            drain(&mut room, ada_expires),
            Vec::<String>::new(),
            "no second quit"
        );
    }

    #[test]
    fn a_fresh_token_extends_the_connection() {
        let (mut room, _) = room_with_two();
        let later = token("ada", "read", NOW_SECS + 3_600);
        let frame = format!(r#"{{"token":"{later}"}}"#);
        assert_eq!(text(&mut room, 1, &frame, NOW), [r#"1<{"refreshed":true}"#]);
        let expected = Timestamp((NOW_SECS + 600) * 1_000 + LEEWAY_MS); // bob's is now first
        assert_eq!(room.poll_timeout(), Some(expected));
        assert_eq!(
            room.identity(ConnId(1)).unwrap().role,
            Role::Read,
            "grant updated"
        );
        let cases = [
            (
                token("eve", "write", NOW_SECS + 3_600),
                "A refreshed token must name the same user.",
            ),
            (token("ada", "write", NOW_SECS - 3_600), "Token expired."),
            ("not a token".to_owned(), "Malformed token."),
        ];
        for (bad, why) in cases {
            let frame = format!(r#"{{"token":"{bad}"}}"#);
            assert_eq!(
                text(&mut room, 1, &frame, NOW),
                [format!(r#"1<{{"error":"{why}"}}"#)]
            );
        }
        assert_eq!(
            room.identity(ConnId(1)).unwrap().sub,
            "ada",
            "kept after refusals"
        );
    }

    #[test]
    fn identities_survive_hibernation_and_old_attachments_restore() {
        let (room, auth) = room_with_two();
        let ada = room.identity(ConnId(1)).cloned().unwrap();
        let session = &room.sessions[&ConnId(1)];
        let v2 = Attachment {
            version: ATTACHMENT_VERSION,
            ip: session.ip,
            phase: session.phase.clone(),
            limiter: session.limiter,
            identity: Some(ada.clone()),
        }
        .encode();
        let v1 = postcard::to_allocvec(&AttachmentV1 {
            version: 1,
            ip: session.ip,
            phase: session.phase.clone(),
            limiter: session.limiter,
        })
        .unwrap();
        let config = RoomConfig {
            auth: Some(auth),
            ..RoomConfig::default()
        };
        let restored = Room::restore(
            config,
            &[],
            [(ConnId(1), v2.as_slice()), (ConnId(2), v1.as_slice())],
        )
        .unwrap();
        assert_eq!(restored.identity(ConnId(1)), Some(&ada));
        assert_eq!(
            restored.identity(ConnId(2)),
            None,
            "a version 1 attachment is anonymous"
        );
        assert_eq!(restored.presence().collect::<Vec<_>>(), ["ADA", "ADA"]);
        assert_eq!(restored.poll_timeout(), ada.expires_at);
    }

    #[test]
    fn room_auths_are_equal_only_for_the_same_policy_and_room() {
        let lobby_auth = auth();
        assert_eq!(lobby_auth, lobby_auth.clone());
        let hall = RoomAuth {
            config: lobby_auth.config.clone(),
            room: ObjectId::from_name(Namespace::Room, "hall"),
        };
        assert_ne!(lobby_auth, hall, "another room");
        // A policy built again (as on a reload) is another policy, even if it reads the same.
        assert_ne!(lobby_auth, auth());
    }

    #[test]
    fn a_token_frame_up_to_the_frame_limit_is_checked_and_a_longer_one_is_too_long() {
        let (mut room, _) = room_with_two();
        let frame = |len: usize| {
            let (head, tail) = (r#"{"token":""#, r#""}"#);
            format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len()))
        };
        let at_limit = text(&mut room, 1, &frame(CLIENT_FRAME_LEN_MAX_BYTES), NOW);
        let beyond = text(&mut room, 1, &frame(CLIENT_FRAME_LEN_MAX_BYTES + 1), NOW);
        let too_long = crate::protocol::FrameError::TooLarge.to_string();
        assert_eq!(at_limit.len(), 1, "{at_limit:?}");
        assert!(!at_limit[0].contains(&too_long), "{at_limit:?}");
        assert!(at_limit[0].contains("oken"), "a token error: {at_limit:?}");
        assert_eq!(beyond, [format!(r#"1<{{"error":"{too_long}"}}"#)]);
    }
}
