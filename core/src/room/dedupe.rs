//! Idempotent sends: a chat frame that carries a [`SendKey`] is stored once per sender and
//! key, however often it arrives, while the room retains the message.
//!
//! Why the room and not the client: a client that loses its connection with a frame in
//! flight cannot know whether the frame was stored. It rejoins with `since` and looks for the
//! message in the replay; but the old connection's frame may still be on its way to the room
//! (in the server's socket buffer, or waiting for the limiter or storage), so a message
//! missing from the replay can still be stored a moment later. Only the room sees both
//! copies, so only the room can keep one.

use std::collections::BTreeMap;

use crate::planted::PlantedBug;
use crate::protocol::{SendKey, ERROR_RESEND_DELETED};
use crate::storage::Value;

use super::{ConnId, PendingEntry, Room};

/// A sender (a verified user's subject, or a name) and the key it gave a message.
type SenderKey = (String, String);

/// The keys of the retained and waiting messages that carried one, both ways round.
#[derive(Debug, Default)]
pub(super) struct RecentKeys {
    ids: BTreeMap<SenderKey, u64>,
    keys: BTreeMap<u64, SenderKey>,
}

/// Who else sent a waiting message again, to hear if its write fails (bounded: a client
/// resends once per reconnect, and each copy costs it a limiter action).
pub(super) const DUPLICATE_SENDERS_MAX: usize = 8;

impl RecentKeys {
    fn id_of(&self, sender: &str, key: &str) -> Option<u64> {
        self.ids.get(&(sender.to_owned(), key.to_owned())).copied()
    }

    fn remember(&mut self, sender: String, key: String, id: u64) {
        self.keys.insert(id, (sender.clone(), key.clone()));
        self.ids.insert((sender, key), id);
    }

    /// Forgets the messages with ids from `first` on (their write failed).
    pub(super) fn forget_from(&mut self, first: u64) {
        for (_, sender_key) in self.keys.split_off(&first) {
            self.ids.remove(&sender_key);
        }
    }

    /// Forgets the messages with ids below `oldest` (no longer retained).
    pub(super) fn forget_below(&mut self, oldest: u64) {
        while let Some(entry) = self.keys.first_entry() {
            if *entry.key() >= oldest {
                break;
            }
            let sender_key = entry.remove();
            self.ids.remove(&sender_key);
        }
    }
}

/// The sender and key of a stored record, if it is a chat message that carried a key.
#[derive(serde::Deserialize)]
struct KeyedRecord {
    name: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    key: Option<String>,
}

impl Room {
    /// If `key` from `conn` names a message the room holds or is storing, answers the
    /// duplicate and returns `true`: a stored message is sent to `conn` (as its echo); one
    /// still waiting for storage reaches it with the broadcast, and `conn` hears if its write
    /// fails.
    pub(super) fn answer_duplicate(&mut self, conn: ConnId, key: &SendKey) -> bool {
        // Planted: every resend is a new message.
        if self.config.planted(PlantedBug::ResendStoredTwice) {
            return false;
        }
        let Some(sender) = self.user_key(conn) else {
            return false;
        };
        let Some(id) = self.recent_keys.id_of(&sender, key.as_str()) else {
            return false;
        };
        if id <= self.durable_id {
            if self.live_message(id).is_none() {
                // Deleted (or being deleted): its tombstone would not answer the send, and
                // storing it again would undo the moderator.
                self.send_error(conn, ERROR_RESEND_DELETED);
                return true;
            }
            let front = self.history.front().map_or(u64::MAX, |message| message.id);
            let stored = id
                .checked_sub(front)
                .and_then(|offset| usize::try_from(offset).ok())
                .and_then(|offset| self.history.get(offset));
            if let Some(stored) = stored {
                let frame = stored.frame.clone();
                self.send(conn, frame);
            }
            return true;
        }
        let waiting = self
            .in_flight
            .iter_mut()
            .flat_map(|in_flight| in_flight.entries.iter_mut())
            .chain(self.pending.iter_mut())
            .find_map(|entry| match entry {
                PendingEntry::Message(message) if message.message.id == id => Some(message),
                _ => None,
            });
        if let Some(message) = waiting {
            let duplicates = &mut message.duplicate_senders;
            if message.sender != Some(conn)
                && !duplicates.contains(&conn)
                && duplicates.len() < DUPLICATE_SENDERS_MAX
            {
                duplicates.push(conn);
            }
        }
        true
    }

    /// Remembers the key of message `id`, just accepted from `conn` (a key is scoped to its
    /// sender: the token's subject, or else the name).
    pub(super) fn remember_key(&mut self, conn: ConnId, key: SendKey, id: u64) {
        if let Some(sender) = self.user_key(conn) {
            self.recent_keys.remember(sender, key.into(), id);
        }
    }

    /// Remembers the key of a restored record (a record without one, or not a chat
    /// message, is skipped).
    pub(super) fn restore_key(&mut self, id: u64, value: &Value) {
        // Most records carry no key: skip them without a second parse.
        if !value.contains("\"key\":") {
            return;
        }
        if let Ok(KeyedRecord {
            name,
            user,
            key: Some(key),
        }) = serde_json::from_str(value)
        {
            self.recent_keys.remember(user.unwrap_or(name), key, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use crate::moderation::decode_action;
    use crate::protocol::{ERROR_RESEND_DELETED, ERROR_STORAGE_UNAVAILABLE};
    use crate::room::{ConnId, Output, PublishId, Room, RoomConfig};

    use super::DUPLICATE_SENDERS_MAX;
    use crate::storage::{Value, Write, WriteBatch};
    use crate::Timestamp;

    const NOW: Timestamp = Timestamp(1_000);

    /// A room that decides every frame at once (no limiter questions).
    fn room(history_retained_max: usize) -> Room {
        Room::new(RoomConfig {
            limiter_may_wait: false,
            history_retained_max,
            ..RoomConfig::default()
        })
    }

    fn join(room: &mut Room, conn: u64, name: &str) {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        room.handle_connect(ConnId(conn), ip, NOW).unwrap();
        room.handle_text(ConnId(conn), &format!(r#"{{"name":"{name}"}}"#), NOW)
            .unwrap();
        drain(room);
    }

    fn send(room: &mut Room, conn: u64, message: &str, key: &str) {
        let frame = format!(r#"{{"message":"{message}","key":"{key}"}}"#);
        room.handle_text(ConnId(conn), &frame, NOW).unwrap();
    }

    /// What the room put out: frames per recipient (broadcasts expanded) and batches.
    #[derive(Default)]
    struct Drained {
        frames: Vec<(ConnId, String)>,
        batches: Vec<WriteBatch>,
        /// Batches [`settle`] committed.
        committed: usize,
    }

    impl Drained {
        fn to(&self, conn: u64) -> Vec<&str> {
            let frames = self.frames.iter().filter(|(c, _)| *c == ConnId(conn));
            frames.map(|(_, frame)| frame.as_str()).collect()
        }
    }

    fn drain(room: &mut Room) -> Drained {
        let mut drained = Drained::default();
        while let Some(output) = room.poll_output() {
            match output {
                Output::Send { conn, frame } => drained.frames.push((conn, frame.to_string())),
                Output::Broadcast { recipients, frame } => {
                    let each = recipients.iter().map(|conn| (*conn, frame.to_string()));
                    drained.frames.extend(each);
                }
                Output::Persist(batch) => drained.batches.push(batch),
                _ => {}
            }
        }
        drained
    }

    /// Commits every batch the room starts until it has nothing waiting; returns what it put
    /// out meanwhile and the puts it made.
    fn settle(room: &mut Room, stored: &mut Vec<(String, Value)>) -> Drained {
        let mut all = drain(room);
        while let Some(batch) = all.batches.pop() {
            all.committed += 1;
            for write in &batch.writes {
                match write {
                    Write::Put { key, value } => stored.push((key.clone(), value.clone())),
                    Write::Delete { key } => stored.retain(|(k, _)| k != key),
                }
            }
            room.handle_durable(batch.id, NOW).unwrap();
            let more = drain(room);
            all.frames.extend(more.frames);
            all.batches.extend(more.batches);
        }
        stored.sort();
        all
    }

    #[test]
    fn a_message_sent_again_with_its_key_is_stored_once_and_answered_with_the_stored_one() {
        let mut room = room(1_000);
        let mut stored = Vec::new();
        join(&mut room, 1, "ada");
        send(&mut room, 1, "hi", "k1");
        let first = settle(&mut room, &mut stored);
        let echo = first.to(1);
        assert_eq!(echo.len(), 1);
        assert!(echo[0].contains(r#""id":1"#) && echo[0].ends_with(r#","key":"k1"}"#));

        // The same sender on another connection (a client that reconnected) resends.
        join(&mut room, 2, "ada");
        send(&mut room, 2, "hi", "k1");
        let again = settle(&mut room, &mut stored);
        assert!(again.committed == 0, "nothing new is stored");
        assert_eq!(again.to(2), echo, "the resender gets the stored message");
        assert!(again.to(1).is_empty(), "nobody else sees it twice");
        assert_eq!(stored.len(), 1);
        assert_eq!(room.last_durable_id(), 1);
    }

    /// A client that missed its echo and resends after a moderator deleted the message
    /// must hear a refusal (its tombstone would not answer the send), and the message must
    /// not come back.
    #[test]
    fn a_resend_of_a_deleted_message_is_refused_and_not_stored_again() {
        let mut room = room(1_000);
        let mut stored = Vec::new();
        join(&mut room, 1, "ada");
        send(&mut room, 1, "oops", "k1");
        settle(&mut room, &mut stored);
        let delete = decode_action(r#"{"delete":1}"#).unwrap();
        room.handle_moderate(PublishId(1), delete, NOW).unwrap();
        settle(&mut room, &mut stored);
        let stored_before = stored.clone();

        join(&mut room, 2, "ada");
        send(&mut room, 2, "oops", "k1");
        let again = settle(&mut room, &mut stored);
        assert_eq!(again.committed, 0, "nothing new is stored");
        assert_eq!(
            again.to(2),
            [format!(r#"{{"error":"{ERROR_RESEND_DELETED}"}}"#)]
        );
        assert!(again.to(1).is_empty());
        assert_eq!(stored, stored_before);
    }

    #[test]
    fn keys_are_scoped_to_their_sender() {
        let mut room = room(1_000);
        let mut stored = Vec::new();
        join(&mut room, 1, "ada");
        join(&mut room, 2, "bob");
        send(&mut room, 1, "hi", "same");
        send(&mut room, 2, "hi", "same");
        settle(&mut room, &mut stored);
        assert_eq!(room.last_durable_id(), 2, "two senders, two messages");
    }

    #[test]
    fn a_resend_while_the_first_is_being_written_waits_for_it_and_hears_its_failure() {
        let mut room = room(1_000);
        let mut stored = Vec::new();
        join(&mut room, 1, "ada");
        join(&mut room, 2, "ada");
        send(&mut room, 1, "hi", "k1");
        let batch = drain(&mut room).batches.pop().expect("the first write");
        send(&mut room, 2, "hi", "k1");
        let meanwhile = drain(&mut room);
        assert!(meanwhile.batches.is_empty() && meanwhile.to(2).is_empty());

        room.handle_write_failed(batch.id, NOW).unwrap();
        let failed = drain(&mut room);
        let refusal = format!(r#"{{"error":"{ERROR_STORAGE_UNAVAILABLE}"}}"#);
        assert_eq!(failed.to(1), [refusal.as_str()]);
        assert_eq!(
            failed.to(2),
            [refusal.as_str()],
            "the resender hears it too"
        );

        // Nothing was stored, so the next resend is a new message, with the freed id.
        send(&mut room, 2, "hi", "k1");
        let retried = settle(&mut room, &mut stored);
        assert_eq!(retried.to(2).len(), 1);
        assert!(retried.to(2)[0].contains(r#""id":1"#));
        assert_eq!(stored.len(), 1);
    }

    #[test]
    fn a_resend_while_the_first_is_being_written_gets_its_broadcast_once() {
        let mut room = room(1_000);
        let mut stored = Vec::new();
        join(&mut room, 1, "ada");
        join(&mut room, 2, "ada");
        send(&mut room, 1, "hi", "k1");
        send(&mut room, 2, "hi", "k1");
        let settled = settle(&mut room, &mut stored);
        assert_eq!(settled.to(2).len(), 1, "one broadcast, no second copy");
        assert_eq!(stored.len(), 1);
    }

    #[test]
    fn keys_survive_a_restore_and_are_forgotten_with_their_message() {
        let mut room = room(2);
        let mut stored = Vec::new();
        join(&mut room, 1, "ada");
        send(&mut room, 1, "first", "k1");
        settle(&mut room, &mut stored);

        let config = room.config().clone();
        let mut restored = Room::restore(config.clone(), &stored, []).unwrap();
        join(&mut restored, 2, "ada");
        send(&mut restored, 2, "first", "k1");
        let again = settle(&mut restored, &mut stored);
        assert!(again.committed == 0, "still known after the restore");
        assert!(again.to(2)[0].contains(r#""id":1"#));

        // Two newer messages push message 1 out of the retained history: its key goes too.
        send(&mut restored, 2, "second", "k2");
        send(&mut restored, 2, "third", "k3");
        settle(&mut restored, &mut stored);
        send(&mut restored, 2, "first", "k1");
        let late = settle(&mut restored, &mut stored);
        assert!(late.to(2)[0].contains(r#""id":4"#), "{:?}", late.to(2));
        let mut restored = Room::restore(config, &stored, []).unwrap();
        join(&mut restored, 3, "ada");
        send(&mut restored, 3, "third", "k3");
        assert!(settle(&mut restored, &mut stored).committed == 0);
    }

    /// Fails the first write after `resend` ran with message 1 (key "k1", from conn 1)
    /// waiting, and returns the refusals each connection heard.
    fn refusals_after_a_failed_write(conns: u64, resend: impl FnOnce(&mut Room)) -> Vec<usize> {
        let mut room = room(1_000);
        for conn in 1..=conns {
            join(&mut room, conn, "ada");
        }
        send(&mut room, 1, "hi", "k1");
        let batch = drain(&mut room).batches.pop().expect("the first write");
        resend(&mut room);
        drain(&mut room);
        room.handle_write_failed(batch.id, NOW).unwrap();
        let failed = drain(&mut room);
        let refusal = format!(r#"{{"error":"{ERROR_STORAGE_UNAVAILABLE}"}}"#);
        let heard = |conn| failed.to(conn).iter().filter(|f| **f == refusal).count();
        (1..=conns).map(heard).collect()
    }

    #[test]
    fn a_failed_write_is_heard_once_by_each_sender_however_often_it_resent() {
        // The sender itself resends on the same connection: one refusal, not two.
        let heard = refusals_after_a_failed_write(1, |room| send(room, 1, "hi", "k1"));
        assert_eq!(heard, [1]);
        // Another connection resends twice: it too hears it once.
        let heard = refusals_after_a_failed_write(2, |room| {
            send(room, 2, "hi", "k1");
            send(room, 2, "hi", "k1");
        });
        assert_eq!(heard, [1, 1]);
    }

    #[test]
    fn at_most_duplicate_senders_max_resenders_hear_a_failure() {
        let resenders = DUPLICATE_SENDERS_MAX as u64 + 1;
        let heard = refusals_after_a_failed_write(1 + resenders, |room| {
            for conn in 2..=1 + resenders {
                send(room, conn, "hi", "k1");
            }
        });
        let mut expected = vec![1; 1 + DUPLICATE_SENDERS_MAX];
        expected.push(0);
        assert_eq!(heard, expected);
    }

    #[test]
    fn a_resend_waits_for_its_own_message_not_an_earlier_one() {
        let mut room = room(1_000);
        let mut stored = Vec::new();
        join(&mut room, 1, "ada");
        join(&mut room, 2, "ada");
        send(&mut room, 1, "one", "k1");
        let first = drain(&mut room).batches.pop().expect("the first write");
        // Message 2 waits behind message 1's write; conn 2 resends it.
        send(&mut room, 1, "two", "k2");
        send(&mut room, 2, "two", "k2");
        drain(&mut room);
        room.handle_durable(first.id, NOW).unwrap();
        let second = drain(&mut room).batches.pop().expect("the second write");
        room.handle_write_failed(second.id, NOW).unwrap();
        let failed = drain(&mut room);
        let refusal = format!(r#"{{"error":"{ERROR_STORAGE_UNAVAILABLE}"}}"#);
        assert_eq!(
            failed.to(2),
            [refusal.as_str()],
            "the resender of message 2 hears"
        );
        assert!(settle(&mut room, &mut stored).committed == 0);
    }
}
