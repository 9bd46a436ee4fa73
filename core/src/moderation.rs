//! Moderation: the actions a moderator (or the admin API) takes in a room, the room's own
//! settings, and the frames that tell clients about them (see `PROTOCOL.md`, "Moderation").
//!
//! One JSON shape serves both ways in: the body of `POST /api/room/<room>/moderate` (admin
//! token) and a WebSocket frame from a session whose token grants `moderator` (or, for
//! deleting and editing its own messages, the author). Each object names exactly one action:
//!
//! | action | JSON |
//! |---|---|
//! | delete a message | `{"delete": 12}` |
//! | edit a message | `{"edit": 12, "message": "new text"}` |
//! | close a user's sockets | `{"kick": "<user>"}` |
//! | ban a user or an IP | `{"ban": "<user>"}`, `{"ban_ip": "203.0.113.7"}`, optional `"for_ms": 3600000` |
//! | lift a ban | `{"unban": "<user>"}`, `{"unban_ip": "203.0.113.7"}` |
//! | make a user read-only | `{"mute": "<user>"}`, optional `"for_ms"` |
//! | lift a mute | `{"unmute": "<user>"}` |
//! | change settings | `{"settings": {"history_max": 100, "history_max_age_ms": null, "members_max": 50, "read_only": true, "topic": "…"}}` |
//!
//! `<user>` is who a session is: its token's `sub` when it has one, otherwise the name it
//! joined with. Settings not named in a `settings` object keep their value; `null` clears one.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::protocol::{utf16_len, Frame, MessageText, CLIENT_FRAME_LEN_MAX_BYTES};
use crate::time::Timestamp;

/// Close code for a connection a moderator removed (kick).
pub const CLOSE_KICKED: u16 = 4010;
/// Close reason for a connection a moderator removed.
pub const CLOSE_REASON_KICKED: &str = "Removed by a moderator.";
/// Close code for a banned user's or IP's connection.
pub const CLOSE_BANNED: u16 = 4011;
/// Close reason for a banned user's or IP's connection.
pub const CLOSE_REASON_BANNED: &str = "Banned from this room.";
/// The error a muted user's message gets.
pub const ERROR_MUTED: &str = "You are muted in this room.";
/// The error a message gets in a read-only room from anyone but a moderator.
pub const ERROR_READ_ONLY: &str = "This room is read-only.";
/// Longest topic, in UTF-16 code units.
pub const TOPIC_LEN_MAX_UTF16: usize = 256;
/// Most bans and mutes a room keeps (each is a stored record, restored with the room).
pub const RESTRICTIONS_MAX: usize = 1_000;
/// Longest user a ban, mute or kick names, in bytes (a token `sub` or a name).
pub const USER_LEN_MAX_BYTES: usize = 256;

/// Who a session is, for bans, mutes, kicks and authorship: a token's subject, or the
/// name an anonymous session joined with.
pub type UserKey = String;

/// One moderation action, decoded and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModAction {
    /// Replace message `id` with a tombstone, everywhere.
    Delete {
        /// The message.
        id: u64,
    },
    /// Replace the text of message `id`.
    Edit {
        /// The message.
        id: u64,
        /// Its new text.
        message: MessageText,
    },
    /// Close every socket of `user` in the room.
    Kick {
        /// Who.
        user: UserKey,
    },
    /// Refuse `target` in this room (and close its sockets), until `for_ms` has passed.
    Ban {
        /// Who.
        target: BanTarget,
        /// For how long; `None`: until lifted.
        for_ms: Option<u64>,
    },
    /// Lift a ban.
    Unban {
        /// Who.
        target: BanTarget,
    },
    /// Make `user` read-only in this room, until `for_ms` has passed.
    Mute {
        /// Who.
        user: UserKey,
        /// For how long; `None`: until lifted.
        for_ms: Option<u64>,
    },
    /// Lift a mute.
    Unmute {
        /// Who.
        user: UserKey,
    },
    /// Change some of the room's settings.
    Settings(SettingsPatch),
}

impl ModAction {
    /// Whether the author of message `id` may take this action without being a moderator
    /// (deleting or editing their own message).
    pub fn target_message(&self) -> Option<u64> {
        match self {
            ModAction::Delete { id } | ModAction::Edit { id, .. } => Some(*id),
            _ => None,
        }
    }
}

/// Whom a ban names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BanTarget {
    /// A user (token subject or anonymous name).
    User(UserKey),
    /// Every connection from an IP.
    Ip(IpAddr),
}

/// The settings a moderator changes while the room runs; stored with the room.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomSettings {
    /// Keep at most this many of the newest messages (never more than the server allows).
    pub history_max: Option<u32>,
    /// Drop messages older than this.
    pub history_max_age_ms: Option<u64>,
    /// At most this many joined members (never more than the server allows).
    pub members_max: Option<u32>,
    /// Only moderators and the publish API may write.
    pub read_only: bool,
    /// Shown to every joiner (`{"topic": …}` before `ready`) and broadcast when it changes.
    pub topic: Option<String>,
}

/// Which settings a `settings` action changes: `Some(value)` sets, absent keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingsPatch {
    /// New `history_max` (`Some(None)` clears it).
    pub history_max: Option<Option<u32>>,
    /// New `history_max_age_ms`.
    pub history_max_age_ms: Option<Option<u64>>,
    /// New `members_max`.
    pub members_max: Option<Option<u32>>,
    /// New `read_only`.
    pub read_only: Option<bool>,
    /// New topic.
    pub topic: Option<Option<String>>,
}

impl RoomSettings {
    /// These settings with `patch` applied.
    pub fn patched(&self, patch: &SettingsPatch) -> RoomSettings {
        RoomSettings {
            history_max: patch.history_max.unwrap_or(self.history_max),
            history_max_age_ms: patch.history_max_age_ms.unwrap_or(self.history_max_age_ms),
            members_max: patch.members_max.unwrap_or(self.members_max),
            read_only: patch.read_only.unwrap_or(self.read_only),
            topic: patch.topic.clone().unwrap_or_else(|| self.topic.clone()),
        }
    }
}

/// Why a moderation action was refused. The `Display` text is what the actor receives
/// (as `{"error": …}` on a WebSocket, or the body of the HTTP answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModError {
    /// Not JSON naming exactly one known action with well-formed arguments.
    #[error("Malformed moderation request: {0}")]
    Malformed(&'static str),
    /// The actor may not take this action.
    #[error("Only moderators may do that.")]
    NotAllowed,
    /// No retained, undeleted message has this id.
    #[error("No such message.")]
    NoSuchMessage,
    /// The new text is longer than a message may be.
    #[error("Message too long.")]
    MessageTooLong,
    /// The topic is longer than [`TOPIC_LEN_MAX_UTF16`].
    #[error("Topic too long.")]
    TopicTooLong,
    /// The room already keeps [`RESTRICTIONS_MAX`] bans and mutes.
    #[error("Too many bans and mutes in this room.")]
    TooManyRestrictions,
    /// Too many writes wait for storage.
    #[error("Room is busy, please try again later.")]
    Busy,
    /// The write that held the change failed: nothing changed.
    #[error("Not changed: storage unavailable.")]
    StorageUnavailable,
}

impl ModError {
    /// The HTTP status of this refusal.
    pub fn status(&self) -> u16 {
        match self {
            ModError::Malformed(_) | ModError::MessageTooLong | ModError::TopicTooLong => 400,
            ModError::NotAllowed => 403,
            ModError::NoSuchMessage => 404,
            ModError::TooManyRestrictions => 409,
            ModError::Busy | ModError::StorageUnavailable => 503,
        }
    }
}

/// The keys that make a JSON object a moderation request rather than a chat message.
const ACTION_KEYS: [&str; 10] = [
    "delete", "edit", "kick", "ban", "ban_ip", "unban", "unban_ip", "mute", "unmute", "settings",
];

/// Whether a client frame is a moderation request (it names an action key), so that a
/// room decodes it with [`decode_action`] instead of as a chat message.
pub fn is_action(object: &Map<String, Json>) -> bool {
    ACTION_KEYS.iter().any(|key| object.contains_key(*key))
}

/// Decodes a moderation request (an HTTP body or a WebSocket frame).
///
/// # Errors
/// [`ModError::Malformed`] with what is wrong, [`ModError::MessageTooLong`] or
/// [`ModError::TopicTooLong`].
pub fn decode_action(text: &str) -> Result<ModAction, ModError> {
    if text.len() > CLIENT_FRAME_LEN_MAX_BYTES {
        return Err(ModError::Malformed("too large"));
    }
    let Ok(Json::Object(object)) = serde_json::from_str::<Json>(text) else {
        return Err(ModError::Malformed("expected a JSON object"));
    };
    decode_object(&object)
}

/// [`decode_action`] for a request body as received (bytes that must be UTF-8).
///
/// # Errors
/// As [`decode_action`]; bytes that are not UTF-8 are not a JSON object.
pub fn decode_body(body: &[u8]) -> Result<ModAction, ModError> {
    std::str::from_utf8(body)
        .map_err(|_| ModError::Malformed("expected a JSON object"))
        .and_then(decode_action)
}

/// [`decode_action`] for an object already parsed.
///
/// # Errors
/// As [`decode_action`].
pub fn decode_object(object: &Map<String, Json>) -> Result<ModAction, ModError> {
    let named: Vec<&str> = ACTION_KEYS
        .iter()
        .copied()
        .filter(|key| object.contains_key(*key))
        .collect();
    let [action] = named.as_slice() else {
        return Err(ModError::Malformed("name exactly one action"));
    };
    let allowed: &[&str] = match *action {
        "edit" => &["edit", "message"],
        "ban" | "ban_ip" | "mute" => &[action, "for_ms"],
        _ => &[action],
    };
    if object.keys().any(|key| !allowed.contains(&key.as_str())) {
        return Err(ModError::Malformed("unexpected key"));
    }
    let value = &object[*action];
    let for_ms = || match object.get("for_ms") {
        None | Some(Json::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .filter(|ms| *ms > 0)
            .map(Some)
            .ok_or(ModError::Malformed("\"for_ms\" must be a positive integer")),
    };
    Ok(match *action {
        "delete" => ModAction::Delete {
            id: message_id(value)?,
        },
        "edit" => {
            let Some(Json::String(text)) = object.get("message") else {
                return Err(ModError::Malformed("\"message\" must be a string"));
            };
            let message =
                MessageText::try_from(text.clone()).map_err(|_| ModError::MessageTooLong)?;
            ModAction::Edit {
                id: message_id(value)?,
                message,
            }
        }
        "kick" => ModAction::Kick { user: user(value)? },
        "ban" => ModAction::Ban {
            target: BanTarget::User(user(value)?),
            for_ms: for_ms()?,
        },
        "ban_ip" => ModAction::Ban {
            target: BanTarget::Ip(ip(value)?),
            for_ms: for_ms()?,
        },
        "unban" => ModAction::Unban {
            target: BanTarget::User(user(value)?),
        },
        "unban_ip" => ModAction::Unban {
            target: BanTarget::Ip(ip(value)?),
        },
        "mute" => ModAction::Mute {
            user: user(value)?,
            for_ms: for_ms()?,
        },
        "unmute" => ModAction::Unmute { user: user(value)? },
        _ => ModAction::Settings(settings_patch(value)?),
    })
}

fn message_id(value: &Json) -> Result<u64, ModError> {
    value
        .as_u64()
        .filter(|id| *id > 0)
        .ok_or(ModError::Malformed(
            "a message id must be a positive integer",
        ))
}

fn user(value: &Json) -> Result<UserKey, ModError> {
    match value {
        Json::String(user) if !user.is_empty() && user.len() <= USER_LEN_MAX_BYTES => {
            Ok(user.clone())
        }
        _ => Err(ModError::Malformed("a user must be a non-empty string")),
    }
}

fn ip(value: &Json) -> Result<IpAddr, ModError> {
    value
        .as_str()
        .and_then(|text| text.parse().ok())
        .ok_or(ModError::Malformed("an IP must be an IPv4 or IPv6 address"))
}

fn settings_patch(value: &Json) -> Result<SettingsPatch, ModError> {
    let Json::Object(object) = value else {
        return Err(ModError::Malformed("\"settings\" must be an object"));
    };
    let mut patch = SettingsPatch::default();
    for (key, value) in object {
        match key.as_str() {
            "history_max" => patch.history_max = Some(optional_u32(value)?),
            "members_max" => patch.members_max = Some(optional_u32(value)?),
            "history_max_age_ms" => {
                patch.history_max_age_ms = Some(match value {
                    Json::Null => None,
                    value => Some(value.as_u64().filter(|ms| *ms > 0).ok_or(
                        ModError::Malformed("\"history_max_age_ms\" must be a positive integer"),
                    )?),
                });
            }
            "read_only" => {
                patch.read_only = Some(
                    value
                        .as_bool()
                        .ok_or(ModError::Malformed("\"read_only\" must be a boolean"))?,
                );
            }
            "topic" => {
                patch.topic = Some(match value {
                    Json::Null => None,
                    Json::String(topic) if utf16_len(topic) > TOPIC_LEN_MAX_UTF16 => {
                        return Err(ModError::TopicTooLong)
                    }
                    Json::String(topic) if topic.is_empty() => None,
                    Json::String(topic) => Some(topic.clone()),
                    _ => return Err(ModError::Malformed("\"topic\" must be a string")),
                });
            }
            _ => return Err(ModError::Malformed("unknown setting")),
        }
    }
    Ok(patch)
}

fn optional_u32(value: &Json) -> Result<Option<u32>, ModError> {
    match value {
        Json::Null => Ok(None),
        value => value
            .as_u64()
            .filter(|n| *n > 0)
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or(ModError::Malformed("a limit must be a positive integer")),
    }
}

/// A record in the room's message sequence that is not a chat message: a deleted message's
/// tombstone, or the event that deleted or edited one. Each has its own id, so replays with
/// `since` deliver the change in order; none has a `timestamp` key, so the demo's page
/// (which shows any frame with a newer timestamp as a message) ignores them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ChangeRecord {
    /// Message `deleted` is gone. At id `deleted` itself, this is the tombstone.
    Deleted {
        /// The deleted message's id.
        deleted: u64,
        /// This record's id.
        id: u64,
        /// When it was written (the tombstone keeps the message's own timestamp).
        at: Timestamp,
    },
    /// Message `edited` now says `message`.
    Edited {
        /// The edited message's id.
        edited: u64,
        /// The new text.
        message: String,
        /// This record's id.
        id: u64,
        /// When the edit was accepted.
        at: Timestamp,
    },
}

impl ChangeRecord {
    /// The record's frame, as stored, broadcast and replayed.
    pub fn encode(&self) -> Frame {
        let json = serde_json::to_string(self).expect("change records always serialize");
        Frame::from(json)
    }

    /// Decodes a stored record that is a change (not a chat message).
    pub fn decode(frame: &str) -> Option<ChangeRecord> {
        serde_json::from_str(frame).ok()
    }
}

/// `{"topic": "…"}` (an empty string when the topic is cleared).
pub fn encode_topic(topic: Option<&str>) -> Frame {
    #[derive(Serialize)]
    struct TopicFrame<'a> {
        topic: &'a str,
    }
    let json = serde_json::to_string(&TopicFrame {
        topic: topic.unwrap_or(""),
    })
    .expect("topic frames always serialize");
    Frame::from(json)
}

/// A stored ban or mute: until when (`None`: until lifted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restriction {
    /// When it ends.
    pub until: Option<Timestamp>,
}

impl Restriction {
    /// Whether it still holds at `now`.
    pub fn holds(&self, now: Timestamp) -> bool {
        self.until.is_none_or(|until| now < until)
    }
}

/// The room's bans, mutes and settings, as restored and kept in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restrictions {
    /// Banned users and IPs.
    pub bans: BTreeMap<BanTarget, Restriction>,
    /// Muted users.
    pub mutes: BTreeMap<UserKey, Restriction>,
    /// The room's settings.
    pub settings: RoomSettings,
}

impl Restrictions {
    /// How many bans and mutes are stored.
    pub fn len(&self) -> usize {
        self.bans.len() + self.mutes.len()
    }

    /// Whether there are no bans or mutes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `user` (if named yet) or `ip` is banned at `now`.
    pub fn is_banned(&self, user: Option<&str>, ip: IpAddr, now: Timestamp) -> bool {
        let holds = |target: &BanTarget| self.bans.get(target).is_some_and(|r| r.holds(now));
        holds(&BanTarget::Ip(ip)) || user.is_some_and(|user| holds(&BanTarget::User(user.into())))
    }

    /// Whether `user` is muted at `now`.
    pub fn is_muted(&self, user: &str, now: Timestamp) -> bool {
        self.mutes.get(user).is_some_and(|r| r.holds(now))
    }
}

/// A ban or a mute as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestrictionView {
    /// The banned or muted user, if it names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The banned IP, if it names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// When it ends (`null`: until lifted).
    pub until: Option<Timestamp>,
}

/// One room as the admin API shows it: `GET /api/room/<room>/admin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomView {
    /// The newest durable record's id.
    pub last_id: u64,
    /// Open connections.
    pub connections: usize,
    /// Every connection (joined or not), in connection order.
    pub members: Vec<crate::room::Member>,
    /// Bans in force, users then IPs.
    pub bans: Vec<RestrictionView>,
    /// Mutes in force.
    pub mutes: Vec<RestrictionView>,
    /// The room's settings.
    pub settings: RoomSettings,
}

/// One room in the admin API's list of rooms: `GET /api/admin/rooms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomSummary {
    /// The room's object id (hex).
    pub id: String,
    /// The room's name as last addressed (`null` if not known, or a private room's id).
    pub room: Option<String>,
    /// Open connections.
    pub connections: usize,
    /// Joined members (`null` while the room is hibernated: counting them would wake it).
    pub members: Option<usize>,
    /// The newest durable record's id (`null` while hibernated); a rate is its change over time.
    pub last_id: Option<u64>,
    /// Whether the room is in memory.
    pub resident: bool,
}

/// Storage keys of a room's moderation state (under [`crate::storage::keys::ROOM_STATE_PREFIX`]).
pub mod keys {
    use super::BanTarget;
    use crate::storage::keys::ROOM_STATE_PREFIX;

    /// The room's settings.
    pub const SETTINGS: &str = "room/settings";
    const BAN_USER: &str = "room/ban/user/";
    const BAN_IP: &str = "room/ban/ip/";
    const MUTE: &str = "room/mute/";

    /// The key of a ban.
    pub fn ban(target: &BanTarget) -> String {
        match target {
            BanTarget::User(user) => format!("{BAN_USER}{user}"),
            BanTarget::Ip(ip) => format!("{BAN_IP}{ip}"),
        }
    }

    /// The key of a mute.
    pub fn mute(user: &str) -> String {
        format!("{MUTE}{user}")
    }

    /// What a key under [`ROOM_STATE_PREFIX`] holds.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum StateKey {
        /// [`SETTINGS`].
        Settings,
        /// A ban.
        Ban(BanTarget),
        /// A mute.
        Mute(String),
    }

    /// Parses a room state key.
    pub fn parse(key: &str) -> Option<StateKey> {
        debug_assert!(key.starts_with(ROOM_STATE_PREFIX));
        if key == SETTINGS {
            return Some(StateKey::Settings);
        }
        if let Some(user) = key.strip_prefix(BAN_USER) {
            return Some(StateKey::Ban(BanTarget::User(user.to_owned())));
        }
        if let Some(ip) = key.strip_prefix(BAN_IP) {
            return ip.parse().ok().map(|ip| StateKey::Ban(BanTarget::Ip(ip)));
        }
        key.strip_prefix(MUTE)
            .map(|user| StateKey::Mute(user.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_action() {
        let ok = |json: &str| decode_action(json).unwrap();
        assert_eq!(ok(r#"{"delete":3}"#), ModAction::Delete { id: 3 });
        assert_eq!(
            ok(r#"{"edit":3,"message":"fixed"}"#),
            ModAction::Edit {
                id: 3,
                message: MessageText::parse("fixed").unwrap()
            }
        );
        assert_eq!(
            ok(r#"{"kick":"ada"}"#),
            ModAction::Kick { user: "ada".into() }
        );
        assert_eq!(
            ok(r#"{"ban":"ada","for_ms":60000}"#),
            ModAction::Ban {
                target: BanTarget::User("ada".into()),
                for_ms: Some(60_000)
            }
        );
        assert_eq!(
            ok(r#"{"ban_ip":"2001:db8::1"}"#),
            ModAction::Ban {
                target: BanTarget::Ip("2001:db8::1".parse().unwrap()),
                for_ms: None
            }
        );
        assert_eq!(
            ok(r#"{"unban_ip":"192.0.2.1"}"#),
            ModAction::Unban {
                target: BanTarget::Ip("192.0.2.1".parse().unwrap())
            }
        );
        assert_eq!(
            ok(r#"{"mute":"bob","for_ms":5}"#),
            ModAction::Mute {
                user: "bob".into(),
                for_ms: Some(5)
            }
        );
        assert_eq!(
            ok(r#"{"settings":{"topic":"hi","read_only":true,"history_max":null}}"#),
            ModAction::Settings(SettingsPatch {
                topic: Some(Some("hi".into())),
                read_only: Some(true),
                history_max: Some(None),
                ..SettingsPatch::default()
            })
        );
    }

    #[test]
    fn refuses_malformed_actions_with_a_reason() {
        for json in [
            "[]",
            "not json",
            r#"{}"#,
            r#"{"delete":1,"kick":"a"}"#,
            r#"{"delete":0}"#,
            r#"{"delete":-1}"#,
            r#"{"delete":"1"}"#,
            r#"{"delete":1,"extra":true}"#,
            r#"{"edit":1}"#,
            r#"{"kick":""}"#,
            r#"{"ban_ip":"not-an-ip"}"#,
            r#"{"ban":"a","for_ms":0}"#,
            r#"{"settings":[]}"#,
            r#"{"settings":{"colour":"red"}}"#,
            r#"{"settings":{"members_max":0}}"#,
            r#"{"settings":{"members_max":4294967296}}"#,
            r#"{"settings":{"read_only":"yes"}}"#,
        ] {
            assert!(
                matches!(decode_action(json), Err(ModError::Malformed(_))),
                "{json}"
            );
        }
        let long = format!(r#"{{"edit":1,"message":"{}"}}"#, "x".repeat(257));
        assert_eq!(decode_action(&long), Err(ModError::MessageTooLong));
        let topic = format!(r#"{{"settings":{{"topic":"{}"}}}}"#, "t".repeat(257));
        assert_eq!(decode_action(&topic), Err(ModError::TopicTooLong));
        assert_eq!(
            decode_action(&"x".repeat(CLIENT_FRAME_LEN_MAX_BYTES + 1)),
            Err(ModError::Malformed("too large"))
        );
    }

    #[test]
    fn change_records_round_trip_and_carry_no_timestamp_key() {
        let deleted = ChangeRecord::Deleted {
            deleted: 4,
            id: 9,
            at: Timestamp(7),
        };
        let edited = ChangeRecord::Edited {
            edited: 4,
            message: "new".into(),
            id: 10,
            at: Timestamp(8),
        };
        for record in [deleted, edited] {
            let frame = record.encode();
            assert!(!frame.contains("timestamp"), "{frame}");
            assert_eq!(ChangeRecord::decode(&frame), Some(record));
        }
        assert_eq!(
            ChangeRecord::decode(r#"{"name":"a","message":"b","timestamp":1,"id":1}"#),
            None
        );
    }

    #[test]
    fn restrictions_expire_and_settings_patch() {
        let mut restrictions = Restrictions::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        restrictions.bans.insert(
            BanTarget::Ip(ip),
            Restriction {
                until: Some(Timestamp(100)),
            },
        );
        restrictions
            .mutes
            .insert("bob".into(), Restriction { until: None });
        assert!(restrictions.is_banned(None, ip, Timestamp(99)));
        assert!(!restrictions.is_banned(None, ip, Timestamp(100)));
        assert!(restrictions.is_muted("bob", Timestamp(u64::MAX)));
        let settings = RoomSettings {
            topic: Some("old".into()),
            members_max: Some(3),
            ..RoomSettings::default()
        };
        let patched = settings.patched(&SettingsPatch {
            topic: Some(None),
            read_only: Some(true),
            ..SettingsPatch::default()
        });
        assert_eq!(patched.topic, None);
        assert_eq!(patched.members_max, Some(3));
        assert!(patched.read_only);
    }

    #[test]
    fn each_refusal_has_its_http_status() {
        let statuses = [
            (ModError::Malformed("x"), 400),
            (ModError::MessageTooLong, 400),
            (ModError::TopicTooLong, 400),
            (ModError::NotAllowed, 403),
            (ModError::NoSuchMessage, 404),
            (ModError::TooManyRestrictions, 409),
            (ModError::Busy, 503),
            (ModError::StorageUnavailable, 503),
        ];
        for (error, status) in statuses {
            assert_eq!(error.status(), status, "{error}");
        }
    }

    #[test]
    fn only_edits_and_deletes_name_a_message_their_author_may_touch() {
        let target = |json: &str| decode_action(json).unwrap().target_message();
        assert_eq!(target(r#"{"delete":7}"#), Some(7));
        assert_eq!(target(r#"{"edit":7,"message":"x"}"#), Some(7));
        for json in [
            r#"{"kick":"ada"}"#,
            r#"{"ban":"ada"}"#,
            r#"{"mute":"ada"}"#,
            r#"{"settings":{"topic":"x"}}"#,
        ] {
            assert_eq!(target(json), None, "{json}");
        }
    }

    #[test]
    fn only_objects_naming_an_action_are_actions() {
        let object = |json: &str| match serde_json::from_str(json).unwrap() {
            Json::Object(object) => object,
            _ => unreachable!(),
        };
        assert!(is_action(&object(r#"{"ban":"ada"}"#)));
        assert!(!is_action(&object(r#"{"message":"ban"}"#)));
        assert!(!is_action(&object(r#"{"name":"kick"}"#)));
    }

    #[test]
    fn an_action_up_to_the_frame_limit_decodes_and_a_longer_one_is_too_large() {
        let padded = |len: usize| {
            let action = r#"{"kick":"ada"}"#;
            format!("{action}{}", " ".repeat(len - action.len()))
        };
        assert_eq!(
            decode_action(&padded(CLIENT_FRAME_LEN_MAX_BYTES)),
            Ok(ModAction::Kick { user: "ada".into() })
        );
        assert_eq!(
            decode_action(&padded(CLIENT_FRAME_LEN_MAX_BYTES + 1)),
            Err(ModError::Malformed("too large"))
        );
    }

    #[test]
    fn settings_bounds_are_exact() {
        let settings = |json: &str| decode_action(&format!(r#"{{"settings":{json}}}"#));
        assert!(settings(r#"{"history_max_age_ms":1}"#).is_ok());
        assert!(matches!(
            settings(r#"{"history_max_age_ms":0}"#),
            Err(ModError::Malformed(_))
        ));
        let topic = |len: usize| settings(&format!(r#"{{"topic":"{}"}}"#, "t".repeat(len)));
        assert!(topic(TOPIC_LEN_MAX_UTF16).is_ok());
        assert_eq!(topic(TOPIC_LEN_MAX_UTF16 + 1), Err(ModError::TopicTooLong));
        // An empty topic clears it, as `null` does.
        assert_eq!(settings(r#"{"topic":""}"#), settings(r#"{"topic":null}"#));
    }

    #[test]
    fn restrictions_are_empty_until_a_ban_or_mute() {
        let mut restrictions = Restrictions::default();
        assert!(restrictions.is_empty());
        restrictions
            .mutes
            .insert("ada".into(), Restriction { until: None });
        assert!(!restrictions.is_empty());
        // Settings alone are not restrictions.
        let mut settings_only = Restrictions::default();
        settings_only.settings.read_only = true;
        assert!(settings_only.is_empty());
    }
}
