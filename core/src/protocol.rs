//! The wire protocol: client frames in, server frames out (see `PROTOCOL.md`).
//!
//! Decoding never panics: any input, however malformed or large, becomes either a
//! [`ClientFrame`] or a [`FrameError`] whose text is sent back to the peer. Encoding produces
//! the exact key order the demo's page expects, once per frame, as a shared [`Frame`].
//!
//! A name or a message that has passed its length rule is a [`UserName`] or a
//! [`MessageText`]: the rules live in their constructors, and the decoder and the publish
//! endpoint produce them, so the room never sees an unchecked one.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// A serialized server frame (JSON text), shared by every recipient of a broadcast.
pub type Frame = Arc<str>;

/// Longest accepted user name, in UTF-16 code units (as JavaScript counts `string.length`).
pub const NAME_LEN_MAX_UTF16: usize = 32;
/// Longest accepted chat message, in UTF-16 code units.
pub const MESSAGE_LEN_MAX_UTF16: usize = 256;
/// Longest client frame the decoder will parse, in bytes.
///
/// The largest legitimate frame is a 256-unit message where every unit is escaped as
/// `\uXXXX` (6 bytes), plus the keys: well under 2 KiB. Anything above this limit is refused
/// before parsing, so a hostile peer cannot make the room spend time on megabytes of JSON.
pub const CLIENT_FRAME_LEN_MAX_BYTES: usize = 4 * 1024;
/// The name given to a user who joins without one (or with an empty one).
pub const ANONYMOUS_NAME: &str = "anonymous";

/// The error text for a name over [`NAME_LEN_MAX_UTF16`].
pub const ERROR_NAME_TOO_LONG: &str = "Name too long.";
/// The error text for a message over [`MESSAGE_LEN_MAX_UTF16`].
pub const ERROR_MESSAGE_TOO_LONG: &str = "Message too long.";
/// The error text sent while a session's rate limiter holds it back.
pub const ERROR_RATE_LIMITED: &str = "Your IP is being rate-limited, please try again later.";

/// The error text a sender gets when the write that held its message failed: the message
/// was not stored and nobody received it.
pub const ERROR_STORAGE_UNAVAILABLE: &str = "Message not sent: storage unavailable.";

/// The error text a client gets when it resends a keyed message that a moderator has since
/// deleted: the message was stored once and is not stored again.
pub const ERROR_RESEND_DELETED: &str = "Message not sent again: a moderator deleted it.";

/// Largest WebSocket message an adapter accepts from a client, in bytes; a larger one closes
/// the connection with [`CLOSE_FRAME_TOO_LARGE`].
pub const WS_MESSAGE_LEN_MAX_BYTES: usize = 64 * 1024;
/// WebSocket close code for a message over [`WS_MESSAGE_LEN_MAX_BYTES`] ("message too big").
pub const CLOSE_FRAME_TOO_LARGE: u16 = 1009;
/// WebSocket close reason for a message over [`WS_MESSAGE_LEN_MAX_BYTES`].
pub const CLOSE_REASON_FRAME_TOO_LARGE: &str = "Frame too large.";

/// WebSocket close code for a name that is too long (the demo's choice: "message too big").
pub const CLOSE_NAME_TOO_LONG: u16 = 1009;
/// WebSocket close code for a session whose state could not be restored.
pub const CLOSE_INTERNAL_ERROR: u16 = 1011;
/// WebSocket close reason for a session whose state could not be restored.
pub const CLOSE_REASON_STATE_LOST: &str = "Session state lost.";
/// WebSocket close reason (with [`CLOSE_INTERNAL_ERROR`]) for a room whose stored state
/// cannot be read (its storage fails, or its records are corrupt): only that room is out of
/// service.
pub const CLOSE_REASON_ROOM_UNAVAILABLE: &str = "Room unavailable.";

/// A user name: 1 to [`NAME_LEN_MAX_UTF16`] UTF-16 code units.
///
/// It serializes as a plain string, and deserializing checks the rule again, so stored
/// state (a hibernation attachment) cannot smuggle in a name that breaks it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserName(String);

/// Why a text is not a [`UserName`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty (callers apply their default name before checking).
    #[error("Name is empty.")]
    Empty,
    /// The name is longer than [`NAME_LEN_MAX_UTF16`].
    #[error("Name too long.")]
    TooLong,
}

impl UserName {
    /// Checks `name` against the rule.
    ///
    /// # Errors
    /// [`NameError`] if it is empty or too long.
    pub fn parse(name: &str) -> Result<UserName, NameError> {
        UserName::check(name)?;
        Ok(UserName(name.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The one place the rule is written.
    fn check(name: &str) -> Result<(), NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if utf16_len(name) > NAME_LEN_MAX_UTF16 {
            return Err(NameError::TooLong);
        }
        Ok(())
    }
}

impl TryFrom<String> for UserName {
    type Error = NameError;

    fn try_from(name: String) -> Result<UserName, NameError> {
        UserName::check(&name)?;
        Ok(UserName(name))
    }
}

/// A chat message text: at most [`MESSAGE_LEN_MAX_UTF16`] UTF-16 code units (it may be
/// empty, as in the demo).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MessageText(String);

/// Why a text is not a [`MessageText`]: it is longer than [`MESSAGE_LEN_MAX_UTF16`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Message too long.")]
pub struct MessageTooLong;

impl MessageText {
    /// Checks `text` against the rule.
    ///
    /// # Errors
    /// [`MessageTooLong`] if it is too long.
    pub fn parse(text: &str) -> Result<MessageText, MessageTooLong> {
        MessageText::check(text)?;
        Ok(MessageText(text.to_owned()))
    }

    /// The message as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The one place the rule is written.
    fn check(text: &str) -> Result<(), MessageTooLong> {
        if utf16_len(text) > MESSAGE_LEN_MAX_UTF16 {
            return Err(MessageTooLong);
        }
        Ok(())
    }
}

impl TryFrom<String> for MessageText {
    type Error = MessageTooLong;

    fn try_from(text: String) -> Result<MessageText, MessageTooLong> {
        MessageText::check(&text)?;
        Ok(MessageText(text))
    }
}

/// The longest [`SendKey`], in bytes (all its characters are ASCII).
pub const SEND_KEY_LEN_MAX: usize = 64;

/// A chat frame's idempotency key (extension): chosen by the client, unique per message it
/// sends, and sent again unchanged with a retry. The room stores a message once per sender
/// and key, however many times it arrives, for as long as it retains the message.
///
/// 1 to [`SEND_KEY_LEN_MAX`] letters, digits, `-` or `_` (a UUID, hex or base64url token),
/// so it is safe to store, echo and log.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SendKey(String);

/// Why a text is not a [`SendKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Malformed frame: \"key\" must be 1 to 64 letters, digits, '-' or '_'.")]
pub struct BadSendKey;

impl SendKey {
    /// Checks `key` against the rule.
    ///
    /// # Errors
    /// [`BadSendKey`] if it is empty, too long, or has another character.
    pub fn parse(key: &str) -> Result<SendKey, BadSendKey> {
        SendKey::check(key)?;
        Ok(SendKey(key.to_owned()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The one place the rule is written.
    fn check(key: &str) -> Result<(), BadSendKey> {
        let allowed = |byte: &u8| byte.is_ascii_alphanumeric() || *byte == b'-' || *byte == b'_';
        if key.is_empty() || key.len() > SEND_KEY_LEN_MAX || !key.bytes().all(|b| allowed(&b)) {
            return Err(BadSendKey);
        }
        Ok(())
    }
}

impl TryFrom<String> for SendKey {
    type Error = BadSendKey;

    fn try_from(key: String) -> Result<SendKey, BadSendKey> {
        SendKey::check(&key)?;
        Ok(SendKey(key))
    }
}

/// Read access as `str` for the checked types: they are strings with a proof attached.
macro_rules! checked_text {
    ($type:ident) => {
        impl Deref for $type {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $type {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<$type> for String {
            fn from(checked: $type) -> String {
                checked.0
            }
        }

        impl PartialEq<str> for $type {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $type {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

checked_text!(UserName);
checked_text!(MessageText);
checked_text!(SendKey);

/// A decoded client frame; its name or text has passed its length rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// The first frame of a session: who the user is and, optionally, the last id it saw.
    Join {
        /// The user name, defaulted to [`ANONYMOUS_NAME`] when missing or empty.
        name: UserName,
        /// Resume after this message id (extension).
        since: Option<u64>,
    },
    /// Any later frame: a chat message.
    Message {
        /// The message text.
        text: MessageText,
        /// Its idempotency key, if the client sent one (extension).
        key: Option<SendKey>,
    },
}

/// Why a client frame was refused. The `Display` text is what the peer receives.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A binary WebSocket frame; the protocol is JSON text.
    #[error("Binary frames are not supported.")]
    Binary,
    /// A frame longer than [`CLIENT_FRAME_LEN_MAX_BYTES`].
    #[error("Frame too large.")]
    TooLarge,
    /// Not JSON, or not a JSON object.
    #[error("Malformed frame: expected a JSON object.")]
    Malformed,
    /// The join frame's `name` is not a string.
    #[error("Malformed frame: \"name\" must be a string.")]
    NameNotString,
    /// The join frame's `since` is not a non-negative integer.
    #[error("Malformed frame: \"since\" must be a non-negative integer.")]
    SinceNotInteger,
    /// A chat frame without a string `message`.
    #[error("Malformed frame: expected {{\"message\": string}}.")]
    MessageNotString,
    /// The join frame's name is longer than [`NAME_LEN_MAX_UTF16`]; the session is closed
    /// with [`CLOSE_NAME_TOO_LONG`].
    #[error("Name too long.")]
    NameTooLong,
    /// The chat frame's message is longer than [`MESSAGE_LEN_MAX_UTF16`].
    #[error("Message too long.")]
    MessageTooLong,
    /// The chat frame's `key` is not a [`SendKey`].
    #[error("{}", BadSendKey)]
    BadSendKey,
}

/// The loose shape of any client frame: typed checks happen after parsing so that each
/// problem gets its own clear error.
#[derive(Deserialize)]
struct RawClientFrame {
    #[serde(default)]
    name: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<serde_json::Value>,
    #[serde(default)]
    since: Option<serde_json::Value>,
    #[serde(default)]
    key: Option<serde_json::Value>,
}

/// Which frame the session expects next: the first frame joins, every later one chats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expecting {
    /// The session has not named itself yet.
    Join,
    /// The session has joined.
    Message,
}

/// Decodes one text frame from a client.
///
/// # Errors
/// Returns a [`FrameError`] for anything that is not a well-formed frame of the expected kind.
pub fn decode_client_frame(text: &str, expecting: Expecting) -> Result<ClientFrame, FrameError> {
    if text.len() > CLIENT_FRAME_LEN_MAX_BYTES {
        return Err(FrameError::TooLarge);
    }
    // serde would also read a struct from a JSON array; only an object is a frame.
    if !text.trim_start().starts_with('{') {
        return Err(FrameError::Malformed);
    }
    let raw: RawClientFrame = serde_json::from_str(text).map_err(|_| FrameError::Malformed)?;
    match expecting {
        Expecting::Join => {
            // JavaScript's `data.name || "anonymous"`: missing, null and "" all default.
            let name = match raw.name {
                None | Some(serde_json::Value::Null) => ANONYMOUS_NAME.to_owned(),
                Some(serde_json::Value::String(s)) if s.is_empty() => ANONYMOUS_NAME.to_owned(),
                Some(serde_json::Value::String(s)) => s,
                Some(_) => return Err(FrameError::NameNotString),
            };
            let since = match raw.since {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::Number(n)) => {
                    Some(n.as_u64().ok_or(FrameError::SinceNotInteger)?)
                }
                Some(_) => return Err(FrameError::SinceNotInteger),
            };
            // Checked last, so that a malformed `since` is reported first, as always. The
            // name is not empty here, so too long is the only way it can fail.
            let name = UserName::try_from(name).map_err(|_| FrameError::NameTooLong)?;
            Ok(ClientFrame::Join { name, since })
        }
        Expecting::Message => match raw.message {
            Some(serde_json::Value::String(text)) => {
                let key = match raw.key {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::String(key)) => {
                        Some(SendKey::try_from(key).map_err(|_| FrameError::BadSendKey)?)
                    }
                    Some(_) => return Err(FrameError::BadSendKey),
                };
                let text = MessageText::try_from(text).map_err(|_| FrameError::MessageTooLong)?;
                Ok(ClientFrame::Message { text, key })
            }
            _ => Err(FrameError::MessageNotString),
        },
    }
}

/// Length of `s` in UTF-16 code units, as JavaScript's `string.length` counts it.
pub fn utf16_len(s: &str) -> usize {
    // Characters outside the Basic Multilingual Plane take two units; all others one.
    s.chars().map(char::len_utf16).sum()
}

/// A chat message as broadcast and stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// The sender's name.
    pub name: String,
    /// The message text.
    pub message: String,
    /// When the room accepted it, strictly increasing within a room.
    pub timestamp: Timestamp,
    /// The room's gap-free sequence number (extension), starting at 1.
    pub id: u64,
}

impl ChatMessage {
    /// Serializes the message as the frame every recipient gets; keys in the demo's order.
    pub fn encode(&self) -> Frame {
        encode(self)
    }

    /// Parses a frame produced by [`ChatMessage::encode`] (used to restore stored history).
    ///
    /// # Errors
    /// Returns an error if `frame` is not such a frame.
    pub fn decode(frame: &str) -> Result<ChatMessage, serde_json::Error> {
        serde_json::from_str(frame)
    }
}

/// The id and time of a stored record: a chat message's `id` and `timestamp`, or a change
/// record's `id` and `at` (a deletion, an edit, a tombstone; see
/// [`crate::moderation::ChangeRecord`]). `None` for any other frame.
pub fn record_id_and_time(frame: &str) -> Option<(u64, Timestamp)> {
    use crate::moderation::ChangeRecord;
    if let Ok(message) = ChatMessage::decode(frame) {
        return Some((message.id, message.timestamp));
    }
    match ChangeRecord::decode(frame)? {
        ChangeRecord::Deleted { id, at, .. } | ChangeRecord::Edited { id, at, .. } => {
            Some((id, at))
        }
    }
}

#[derive(Serialize)]
struct JoinedFrame<'a> {
    joined: &'a str,
}

#[derive(Serialize)]
struct QuitFrame<'a> {
    quit: &'a str,
}

#[derive(Serialize)]
struct ReadyFrame {
    ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
}

#[derive(Serialize)]
struct ErrorFrame<'a> {
    error: &'a str,
}

fn encode<T: Serialize>(value: &T) -> Frame {
    // Serializing plain structs of strings, integers and bools to a String cannot fail.
    let json = serde_json::to_string(value).expect("server frames always serialize");
    Frame::from(json)
}

/// `{"joined": name}`.
pub fn encode_joined(name: &str) -> Frame {
    encode(&JoinedFrame { joined: name })
}

/// `{"quit": name}`.
pub fn encode_quit(name: &str) -> Frame {
    encode(&QuitFrame { quit: name })
}

/// `{"ready": true}`, with `"recovered"` when the client asked to resume with `since`.
pub fn encode_ready(recovered: Option<bool>) -> Frame {
    encode(&ReadyFrame {
        ready: true,
        recovered,
    })
}

/// `{"error": text}`.
pub fn encode_error(text: &str) -> Frame {
    encode(&ErrorFrame { error: text })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_adapters_message_limit_leaves_room_for_the_decoders_answer() {
        // A frame over 4 KiB but far under the message limit must reach the decoder and get
        // `Frame too large.` (PROTOCOL.md), not a 1009 close from the adapter.
        let (message_max, frame_max) = (WS_MESSAGE_LEN_MAX_BYTES, CLIENT_FRAME_LEN_MAX_BYTES);
        assert!(
            message_max >= 16 * frame_max,
            "{message_max} vs {frame_max}"
        );
    }

    #[test]
    fn decodes_join_frames() {
        let cases: &[(&str, Result<ClientFrame, FrameError>)] = &[
            (r#"{"name":"alice"}"#, Ok(join("alice", None))),
            (r#"{"name":""}"#, Ok(join("anonymous", None))),
            (r#"{}"#, Ok(join("anonymous", None))),
            (r#"{"name":null}"#, Ok(join("anonymous", None))),
            (r#"{"name":"bob","since":7}"#, Ok(join("bob", Some(7)))),
            (
                r#"{"name":"bob","since":-1}"#,
                Err(FrameError::SinceNotInteger),
            ),
            (
                r#"{"name":"bob","since":1.5}"#,
                Err(FrameError::SinceNotInteger),
            ),
            (
                r#"{"name":"bob","since":"3"}"#,
                Err(FrameError::SinceNotInteger),
            ),
            (r#"{"name":5}"#, Err(FrameError::NameNotString)),
            (r#"{"name":["a"]}"#, Err(FrameError::NameNotString)),
            (r#"[1,2]"#, Err(FrameError::Malformed)),
            (r#""text""#, Err(FrameError::Malformed)),
            ("not json", Err(FrameError::Malformed)),
            ("", Err(FrameError::Malformed)),
            (r#"{"name":"a","name":"b"}"#, Err(FrameError::Malformed)),
            (
                r#"{"name":"a","extra":{"deep":[1,2,3]}}"#,
                Ok(join("a", None)),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                &decode_client_frame(input, Expecting::Join),
                expected,
                "input {input}"
            );
        }
    }

    #[test]
    fn decodes_message_frames() {
        let cases: &[(&str, Result<ClientFrame, FrameError>)] = &[
            (r#"{"message":"hi"}"#, Ok(message("hi"))),
            (r#"{"message":""}"#, Ok(message(""))),
            (r#"{"message":"\u00e9\ud83d\ude00"}"#, Ok(message("é😀"))),
            (r#"{"name":"x"}"#, Err(FrameError::MessageNotString)),
            (r#"{"message":3}"#, Err(FrameError::MessageNotString)),
            (r#"{"message":null}"#, Err(FrameError::MessageNotString)),
            ("{", Err(FrameError::Malformed)),
            (r#"{"message":"hi","key":null}"#, Ok(message("hi"))),
        ];
        for (input, expected) in cases {
            assert_eq!(
                &decode_client_frame(input, Expecting::Message),
                expected,
                "input {input}"
            );
        }
    }

    #[test]
    fn send_keys_are_1_to_64_letters_digits_dashes_or_underscores() {
        let longest = "k".repeat(SEND_KEY_LEN_MAX);
        for key in [
            "a",
            "0f-_Z",
            "123e4567-e89b-12d3-a456-426614174000",
            &longest,
        ] {
            let frame = format!(r#"{{"message":"hi","key":"{key}"}}"#);
            let expected = ClientFrame::Message {
                text: MessageText::parse("hi").unwrap(),
                key: Some(SendKey::parse(key).unwrap()),
            };
            assert_eq!(
                decode_client_frame(&frame, Expecting::Message),
                Ok(expected)
            );
        }
        let too_long = "k".repeat(SEND_KEY_LEN_MAX + 1);
        for key in [
            r#""""#,
            r#""a b""#,
            r#""é""#,
            r#""a.b""#,
            "7",
            "[]",
            &format!(r#""{too_long}""#),
        ] {
            let frame = format!(r#"{{"message":"hi","key":{key}}}"#);
            let refused = decode_client_frame(&frame, Expecting::Message);
            assert_eq!(refused, Err(FrameError::BadSendKey), "key {key}");
            assert_eq!(
                FrameError::BadSendKey.to_string(),
                r#"Malformed frame: "key" must be 1 to 64 letters, digits, '-' or '_'."#
            );
        }
        // A frame with both faults reports the key first (the text is checked last).
        let both = format!(r#"{{"message":"{}","key":""}}"#, "m".repeat(300));
        assert_eq!(
            decode_client_frame(&both, Expecting::Message),
            Err(FrameError::BadSendKey)
        );
    }

    #[test]
    fn refuses_huge_frames_before_parsing() {
        let huge = format!(r#"{{"message":"{}"}}"#, "a".repeat(1 << 20));
        assert_eq!(
            decode_client_frame(&huge, Expecting::Message),
            Err(FrameError::TooLarge)
        );
        let deep = "[".repeat(100_000);
        assert_eq!(
            decode_client_frame(&deep, Expecting::Message),
            Err(FrameError::TooLarge)
        );
        let nested = "[".repeat(3000);
        assert_eq!(
            decode_client_frame(&nested, Expecting::Message),
            Err(FrameError::Malformed)
        );
    }

    #[test]
    fn a_frame_of_exactly_the_limit_is_parsed() {
        // JSON whitespace pads a valid join frame to the byte limit, then one byte over it.
        let frame = |len: usize| format!(r#"{{"name":"a"{}}}"#, " ".repeat(len - 12));
        assert_eq!(
            frame(CLIENT_FRAME_LEN_MAX_BYTES).len(),
            CLIENT_FRAME_LEN_MAX_BYTES
        );
        assert_eq!(
            decode_client_frame(&frame(CLIENT_FRAME_LEN_MAX_BYTES), Expecting::Join),
            Ok(join("a", None))
        );
        assert_eq!(
            decode_client_frame(&frame(CLIENT_FRAME_LEN_MAX_BYTES + 1), Expecting::Join),
            Err(FrameError::TooLarge)
        );
    }

    #[test]
    fn a_message_text_reads_back_as_written() {
        assert_eq!(MessageText::parse("hi 😀").unwrap().as_str(), "hi 😀");
    }

    #[test]
    fn counts_utf16_units_like_javascript() {
        assert_eq!(utf16_len(""), 0);
        assert_eq!(utf16_len("abc"), 3);
        assert_eq!(utf16_len("é"), 1);
        assert_eq!(utf16_len("😀"), 2);
        assert_eq!(utf16_len("שלום"), 4);
    }

    #[test]
    fn encodes_frames_in_the_demos_key_order() {
        let msg = ChatMessage {
            name: "a\"b".into(),
            message: "hi\n".into(),
            timestamp: Timestamp(1700000000000),
            id: 9,
        };
        assert_eq!(
            &*msg.encode(),
            r#"{"name":"a\"b","message":"hi\n","timestamp":1700000000000,"id":9}"#
        );
        assert_eq!(ChatMessage::decode(&msg.encode()).unwrap(), msg);
        assert_eq!(&*encode_joined("x"), r#"{"joined":"x"}"#);
        assert_eq!(&*encode_quit("x"), r#"{"quit":"x"}"#);
        assert_eq!(&*encode_ready(None), r#"{"ready":true}"#);
        assert_eq!(
            &*encode_ready(Some(false)),
            r#"{"ready":true,"recovered":false}"#
        );
        assert_eq!(
            &*encode_error(ERROR_RATE_LIMITED),
            r#"{"error":"Your IP is being rate-limited, please try again later."}"#
        );
    }

    fn join(name: &str, since: Option<u64>) -> ClientFrame {
        ClientFrame::Join {
            name: UserName::parse(name).unwrap(),
            since,
        }
    }

    fn message(text: &str) -> ClientFrame {
        ClientFrame::Message {
            text: MessageText::parse(text).unwrap(),
            key: None,
        }
    }

    #[test]
    fn user_names_are_1_to_32_units() {
        let cases: Vec<(String, Result<(), NameError>)> = vec![
            ("a".into(), Ok(())),
            ("n".repeat(32), Ok(())),
            ("n".repeat(33), Err(NameError::TooLong)),
            ("😀".repeat(16), Ok(())),
            (format!("{}a", "😀".repeat(16)), Err(NameError::TooLong)),
            ("é".repeat(32), Ok(())),
            (String::new(), Err(NameError::Empty)),
        ];
        for (name, expected) in cases {
            let parsed = UserName::parse(&name);
            assert_eq!(
                parsed.as_ref().map(|_| ()),
                expected.as_ref().map(|_| ()),
                "{name}"
            );
            assert_eq!(parsed.clone().err(), expected.err(), "{name}");
            assert_eq!(UserName::try_from(name.clone()), parsed, "{name}");
            if let Ok(parsed) = parsed {
                assert_eq!(parsed.as_str(), name);
                assert_eq!(String::from(parsed), name);
            }
        }
        assert_eq!(NameError::TooLong.to_string(), ERROR_NAME_TOO_LONG);
    }

    #[test]
    fn message_texts_are_at_most_256_units() {
        let cases: Vec<(String, bool)> = vec![
            (String::new(), true),
            ("x".repeat(256), true),
            ("x".repeat(257), false),
            ("😀".repeat(128), true),
            (format!("{}x", "😀".repeat(128)), false),
        ];
        for (text, ok) in cases {
            let parsed = MessageText::parse(&text);
            assert_eq!(parsed.is_ok(), ok, "{} units", utf16_len(&text));
            assert_eq!(MessageText::try_from(text.clone()), parsed);
        }
        assert_eq!(MessageTooLong.to_string(), ERROR_MESSAGE_TOO_LONG);
    }

    #[test]
    fn checked_texts_serialize_as_strings_and_check_again() {
        let name = UserName::parse("ada").unwrap();
        let bytes = postcard::to_allocvec(&name).unwrap();
        assert_eq!(bytes, postcard::to_allocvec("ada").unwrap());
        assert_eq!(postcard::from_bytes::<UserName>(&bytes).unwrap(), name);
        let long = postcard::to_allocvec(&"n".repeat(33)).unwrap();
        assert!(postcard::from_bytes::<UserName>(&long).is_err());
        assert!(serde_json::from_str::<UserName>(r#""""#).is_err());
        assert!(serde_json::from_str::<MessageText>(&format!(r#""{}""#, "x".repeat(257))).is_err());
        assert_eq!(
            serde_json::to_string(&MessageText::parse("hi").unwrap()).unwrap(),
            r#""hi""#
        );
    }

    #[test]
    fn length_rules_are_frame_errors_checked_after_the_shape() {
        let long_name = "n".repeat(33);
        let long_text = "x".repeat(257);
        let cases: Vec<(String, Expecting, Result<ClientFrame, FrameError>)> = vec![
            (
                format!(r#"{{"name":"{long_name}"}}"#),
                Expecting::Join,
                Err(FrameError::NameTooLong),
            ),
            (
                format!(r#"{{"name":"{}"}}"#, "n".repeat(32)),
                Expecting::Join,
                Ok(join(&"n".repeat(32), None)),
            ),
            // A bad `since` is reported before the name's length, as it always was.
            (
                format!(r#"{{"name":"{long_name}","since":-1}}"#),
                Expecting::Join,
                Err(FrameError::SinceNotInteger),
            ),
            (
                format!(r#"{{"message":"{long_text}"}}"#),
                Expecting::Message,
                Err(FrameError::MessageTooLong),
            ),
            (
                format!(r#"{{"message":"{}"}}"#, "x".repeat(256)),
                Expecting::Message,
                Ok(message(&"x".repeat(256))),
            ),
        ];
        for (input, expecting, expected) in cases {
            assert_eq!(decode_client_frame(&input, expecting), expected, "{input}");
        }
        assert_eq!(FrameError::NameTooLong.to_string(), ERROR_NAME_TOO_LONG);
        assert_eq!(
            FrameError::MessageTooLong.to_string(),
            ERROR_MESSAGE_TOO_LONG
        );
    }
}
