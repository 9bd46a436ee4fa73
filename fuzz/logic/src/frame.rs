//! Client frame decoding.

use edgechat_core::protocol::{
    decode_client_frame, encode_error, utf16_len, ChatMessage, ClientFrame, Expecting, FrameError,
    ANONYMOUS_NAME, CLIENT_FRAME_LEN_MAX_BYTES, MESSAGE_LEN_MAX_UTF16, NAME_LEN_MAX_UTF16,
};
use edgechat_core::Timestamp;
use serde_json::Value;

/// Decodes a client frame: the first byte picks the session phase (even: join, odd:
/// message), the rest is the frame (invalid UTF-8 replaced, as a WebSocket library would
/// refuse it anyway).
///
/// Never panics in the decoder; anything accepted must be a JSON object whose fields say
/// exactly what was decoded, and every refusal must make a short, valid error frame.
pub fn client_frame(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let expecting = if selector & 1 == 0 {
        Expecting::Join
    } else {
        Expecting::Message
    };
    let text = String::from_utf8_lossy(rest);
    check_frame(&text, expecting);
}

fn check_frame(text: &str, expecting: Expecting) {
    let result = decode_client_frame(text, expecting);
    let decoded = match result {
        Err(error) => {
            let shown = error.to_string();
            assert!(
                !shown.is_empty() && shown.len() <= 80,
                "error text {shown:?}"
            );
            let frame = encode_error(&shown);
            let parsed: Value = serde_json::from_str(&frame).expect("error frames are JSON");
            assert_eq!(parsed["error"], Value::String(shown));
            if text.len() > CLIENT_FRAME_LEN_MAX_BYTES {
                assert_eq!(error, FrameError::TooLarge, "oversized frame");
            }
            // A length refusal is only for a well-formed field that really is too long.
            let field_len = |key: &str| {
                let object: serde_json::Map<String, Value> = serde_json::from_str(text).ok()?;
                object.get(key)?.as_str().map(utf16_len)
            };
            match error {
                FrameError::NameTooLong => {
                    assert!(field_len("name").is_some_and(|len| len > NAME_LEN_MAX_UTF16));
                }
                FrameError::MessageTooLong => {
                    assert!(field_len("message").is_some_and(|len| len > MESSAGE_LEN_MAX_UTF16));
                }
                _ => {}
            }
            return;
        }
        Ok(decoded) => decoded,
    };
    assert!(
        text.len() <= CLIENT_FRAME_LEN_MAX_BYTES,
        "accepted a frame of {} bytes",
        text.len()
    );
    // Anything accepted is a JSON object, and the decoded fields are exactly its fields.
    let object: serde_json::Map<String, Value> = match serde_json::from_str(text) {
        Ok(object) => object,
        // Fields the decoder ignores are skipped without decoding their values, so a lone
        // surrogate escape or a number like 1e999 there (both fine for JavaScript's
        // JSON.parse) is not refused. Only those leniencies are allowed.
        Err(error) if text.trim_start().starts_with('{') && is_lenient(&error.to_string()) => {
            return;
        }
        Err(error) => panic!("accepted {text:?}, which is not a JSON object: {error}"),
    };
    match (expecting, decoded) {
        (Expecting::Join, ClientFrame::Join { name, since }) => {
            match object.get("name") {
                None | Some(Value::Null) => assert_eq!(name, ANONYMOUS_NAME),
                Some(Value::String(s)) if s.is_empty() => assert_eq!(name, ANONYMOUS_NAME),
                Some(Value::String(s)) => assert_eq!(name.as_str(), s),
                Some(other) => panic!("accepted a join whose name is {other}"),
            }
            assert!(!name.is_empty() && utf16_len(&name) <= NAME_LEN_MAX_UTF16);
            match object.get("since") {
                None | Some(Value::Null) => assert_eq!(since, None),
                Some(other) => assert_eq!(since, other.as_u64().map(Some).unwrap_or(None)),
            }
            assert!(since.is_none() || object.get("since").is_some_and(Value::is_u64));
            check_utf16(&name);
        }
        (Expecting::Message, ClientFrame::Message { text: message, key }) => {
            match object.get("key") {
                None | Some(Value::Null) => assert_eq!(key, None),
                Some(other) => assert_eq!(other.as_str(), key.as_ref().map(|key| key.as_str())),
            }
            let message = String::from(message);
            assert_eq!(object.get("message"), Some(&Value::String(message.clone())));
            check_utf16(&message);
            assert!(utf16_len(&message) <= MESSAGE_LEN_MAX_UTF16);
            // Whatever was accepted survives the broadcast/storage round trip unchanged.
            let chat = ChatMessage {
                name: "n".into(),
                message,
                timestamp: Timestamp(1_700_000_000_000),
                id: 1,
            };
            let encoded = chat.encode();
            assert_eq!(ChatMessage::decode(&encoded).ok(), Some(chat));
        }
        (expecting, decoded) => panic!("expected {expecting:?}, decoded {decoded:?}"),
    }
}

fn is_lenient(error: &str) -> bool {
    ["surrogate", "hex escape", "number out of range"]
        .iter()
        .any(|kind| error.contains(kind))
}

fn check_utf16(s: &str) {
    assert_eq!(utf16_len(s), s.encode_utf16().count());
}
