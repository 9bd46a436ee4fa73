//! Decoding what was stored: attachments and storage records.

use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};
use edgechat_core::counter::{Counter, CounterOp, CounterOutput, CounterRequest};
use edgechat_core::protocol::{ChatMessage, CLOSE_INTERNAL_ERROR};
use edgechat_core::room::{
    validate_attachment, AttachmentError, ConnId, Output, Room, RoomConfig,
    ATTACHMENT_LEN_MAX_BYTES,
};
use edgechat_core::storage::{keys, Value};
use edgechat_core::Timestamp;
use serde_json::Value as Json;

const NOW: Timestamp = Timestamp(1_700_000_000_000);

/// Decodes an attachment (any bytes) and restores a room around it.
///
/// `validate_attachment` never panics and agrees with `Room::restore`: a valid attachment
/// becomes a session, an invalid one a close with 1011. The restored session then joins,
/// chats and closes without a panic, and every attachment the room writes back is valid.
pub fn attachment(data: &[u8]) {
    let valid = validate_attachment(data);
    if data.len() > ATTACHMENT_LEN_MAX_BYTES {
        assert_eq!(valid, Err(AttachmentError::TooLong));
    }
    let conn = ConnId(7);
    let mut room = Room::restore(RoomConfig::default(), &[], [(conn, data)])
        .expect("no stored records cannot be corrupt");
    match valid {
        Ok(()) => assert_eq!(room.connection_count(), 1),
        Err(_) => {
            assert_eq!(room.connection_count(), 0);
            assert_eq!(
                room.poll_output(),
                Some(Output::Close {
                    conn,
                    code: CLOSE_INTERNAL_ERROR,
                    reason: edgechat_core::protocol::CLOSE_REASON_STATE_LOST,
                })
            );
            return;
        }
    }
    exercise(&mut room, conn, NOW);
}

/// One stored record, shaped so that the fuzzer reaches the checks past key parsing.
#[derive(Debug, Arbitrary)]
enum FuzzKey {
    /// `keys::message(id)`.
    Message(u64),
    /// `keys::message(id)` for a small id, so that runs of consecutive ids are likely.
    Small(u8),
    /// Any key.
    Raw(String),
}

#[derive(Debug, Arbitrary)]
enum FuzzValue {
    /// A well-formed chat frame; `id` is the key's id unless `other_id` says otherwise.
    Chat {
        name: String,
        message: String,
        timestamp: u64,
        other_id: Option<u64>,
    },
    /// Any text.
    Raw(String),
}

#[derive(Debug, Arbitrary)]
struct StoredInput {
    records: Vec<(FuzzKey, FuzzValue)>,
    /// Sort and deduplicate the records, as storage lists them.
    sorted: bool,
    attachments: Vec<Vec<u8>>,
    counter: Option<String>,
    clock: u64,
}

/// Restores a room from arbitrary storage records (and attachments) and a counter from an
/// arbitrary stored value.
///
/// `Room::restore` never panics; when it accepts the records, the restored room's history is
/// exactly them, and a new message gets the next id and a later timestamp. `Counter::restore`
/// accepts exactly the `i64`s.
pub fn stored_records(data: &[u8]) {
    let Ok(input) = StoredInput::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let mut records: Vec<(String, Value)> = input
        .records
        .into_iter()
        .map(|(key, value)| {
            let (key, id) = match key {
                FuzzKey::Message(id) => (keys::message(id), id),
                FuzzKey::Small(id) => (keys::message(id.into()), id.into()),
                FuzzKey::Raw(key) => (key, 0),
            };
            let value: Value = match value {
                FuzzValue::Chat {
                    name,
                    message,
                    timestamp,
                    other_id,
                } => ChatMessage {
                    name,
                    message,
                    timestamp: Timestamp(timestamp),
                    id: other_id.unwrap_or(id),
                }
                .encode(),
                FuzzValue::Raw(text) => Arc::from(text),
            };
            (key, value)
        })
        .collect();
    if input.sorted {
        records.sort_by(|a, b| a.0.cmp(&b.0));
        records.dedup_by(|a, b| a.0 == b.0);
    }
    let attachments: Vec<(ConnId, &[u8])> = input
        .attachments
        .iter()
        .enumerate()
        .map(|(index, bytes)| (ConnId(index as u64), bytes.as_slice()))
        .collect();
    let now = Timestamp(input.clock);
    if let Ok(mut room) = Room::restore(RoomConfig::default(), &records, attachments) {
        check_restored(&mut room, &records, now);
    }
    check_counter(input.counter.as_deref());
}

fn check_restored(room: &mut Room, records: &[(String, Value)], now: Timestamp) {
    let history = room.history_page(None, usize::MAX);
    assert_eq!(
        history.len(),
        records.len(),
        "every record is history: {records:?}"
    );
    let mut ids = Vec::new();
    let mut newest_timestamp = 0;
    for (key, value) in records {
        let message = ChatMessage::decode(value).expect("accepted records decode");
        assert_eq!(keys::parse_message(key), Some(message.id));
        ids.push(message.id);
        newest_timestamp = newest_timestamp.max(message.timestamp.0);
    }
    assert!(
        ids.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "restore accepted ids that are not consecutive: {ids:?}"
    );
    assert_eq!(room.last_durable_id(), ids.last().copied().unwrap_or(0));

    let conn = ConnId(u64::MAX);
    room.handle_connect(conn, "127.0.0.1".parse().expect("an IP"), now)
        .expect("a new connection");
    let sent = exercise(room, conn, now);
    // A new message continues the stored history: next id, later timestamp.
    if let Some(message) = sent.last() {
        if let Some(&last) = ids.last() {
            assert_eq!(message.id, last + 1, "a new message continues the ids");
        }
        if !ids.is_empty() {
            assert!(
                message.timestamp.0 > newest_timestamp,
                "timestamp {} is not after the stored {newest_timestamp}",
                message.timestamp.0
            );
        }
    }
}

/// Joins `conn`, sends a message, closes it, answering every request like an adapter.
/// Returns the chat messages broadcast.
fn exercise(room: &mut Room, conn: ConnId, now: Timestamp) -> Vec<ChatMessage> {
    let mut chats = Vec::new();
    let frames = [r#"{"name":"fuzz"}"#, r#"{"message":"hello"}"#];
    for frame in frames {
        room.handle_text(conn, frame, now)
            .expect("the connection is open");
        drain(room, now, &mut chats);
    }
    room.handle_binary(conn, now)
        .expect("the connection is open");
    drain(room, now, &mut chats);
    room.handle_close(conn, now)
        .expect("the connection is open");
    drain(room, now, &mut chats);
    chats
}

fn drain(room: &mut Room, now: Timestamp, chats: &mut Vec<ChatMessage>) {
    let mut budget = 10_000;
    while let Some(output) = room.poll_output() {
        budget -= 1;
        assert!(budget > 0, "the room does not stop producing outputs");
        match output {
            Output::Send { frame, .. } | Output::Broadcast { frame, .. } => {
                let parsed: Json = serde_json::from_str(&frame).expect("frames are JSON");
                if parsed.get("message").is_some() && parsed.get("id").is_some() {
                    chats.push(ChatMessage::decode(&frame).expect("chat frames decode"));
                }
            }
            Output::SetAttachment { attachment, .. } => {
                assert!(attachment.len() <= ATTACHMENT_LEN_MAX_BYTES);
                assert_eq!(validate_attachment(&attachment), Ok(()));
            }
            Output::Persist(batch) => {
                room.handle_durable(batch.id, now).expect("in flight");
            }
            Output::AskRateLimiter { request, .. } => {
                room.handle_rate_limit_verdict(request, 0, now);
            }
            Output::Close { .. } | Output::Published { .. } | Output::Moderated { .. } => {}
        }
    }
}

fn check_counter(stored: Option<&str>) {
    let restored = Counter::restore(stored);
    let expected: Option<i64> = match stored {
        None => Some(0),
        Some(text) => text.parse().ok(),
    };
    match (restored, expected) {
        (Ok(mut counter), Some(value)) => {
            assert_eq!(counter.value(), value);
            counter.handle_request(CounterRequest(1), CounterOp::Increment);
            counter.handle_request(CounterRequest(2), CounterOp::Decrement);
            counter.handle_request(CounterRequest(3), CounterOp::Get);
            let mut replies = Vec::new();
            while let Some(output) = counter.poll_output() {
                match output {
                    CounterOutput::Persist(batch) => {
                        counter.handle_durable(batch.id).expect("in flight");
                    }
                    CounterOutput::Reply { request, value } => replies.push((request.0, value)),
                }
            }
            let up = value.saturating_add(1);
            assert_eq!(
                replies,
                vec![(3, value), (1, up), (2, up.saturating_sub(1))]
            );
        }
        (Err(error), None) => assert!(error.0.chars().count() <= 64),
        (restored, expected) => {
            panic!("counter {stored:?}: restored {restored:?}, expected {expected:?}")
        }
    }
}
