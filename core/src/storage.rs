//! Storage as the core sees it: an ordered key-value map per object, written in batches.
//!
//! Both SQLite and Durable Objects storage provide ordered string keys, so the key scheme
//! here works on both: message keys sort in id order because the id is zero-padded.
//! A [`WriteBatch`] is committed atomically (one transaction) by the adapter, which then
//! tells the object it is durable. [`MemoryStore`] is the reference implementation that the
//! simulator, the tests and the embedding example use.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

/// The storage keys of every object kind.
pub mod keys {
    /// Prefix of a room's message records; see [`message`].
    pub const MESSAGE_PREFIX: &str = "msg/";
    /// Prefix of a room's moderation state: settings, bans, mutes (see
    /// [`crate::moderation::keys`]).
    pub const ROOM_STATE_PREFIX: &str = "room/";
    /// A counter's value.
    pub const COUNTER_VALUE: &str = "counter/value";
    /// A rate limiter's state, for hosts that persist limiters.
    pub const LIMITER_STATE: &str = "limiter/state";

    /// The key of message `id`: zero-padded so that lexicographic order is id order.
    pub fn message(id: u64) -> String {
        format!("{MESSAGE_PREFIX}{id:020}")
    }

    /// The id in a message key, if `key` is one.
    pub fn parse_message(key: &str) -> Option<u64> {
        let digits = key.strip_prefix(MESSAGE_PREFIX)?;
        if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }
}

/// A stored value: the exact text the object wrote (shared, never copied per reader).
pub type Value = Arc<str>;

/// One write in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Value,
    },
    /// Remove `key` if present.
    Delete {
        /// The key.
        key: String,
    },
}

/// Identifies a batch so its durability confirmation can be matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchId(pub u64);

/// Writes that must become durable together, in one transaction, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteBatch {
    /// Echo this back in the durability confirmation.
    pub id: BatchId,
    /// The writes, applied in order.
    pub writes: Vec<Write>,
}

/// A read of the keys under a prefix, newest (greatest key) first, as an adapter performs it
/// to restore an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListQuery {
    /// Only keys starting with this.
    pub prefix: &'static str,
    /// At most this many entries (the greatest keys).
    pub limit: usize,
}

/// An in-memory ordered key-value store with the semantics every adapter's storage has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryStore {
    entries: BTreeMap<String, Value>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Applies every write of `batch`, in order (atomically, since nothing else runs).
    pub fn apply(&mut self, batch: &WriteBatch) {
        for write in &batch.writes {
            match write {
                Write::Put { key, value } => {
                    self.entries.insert(key.clone(), value.clone());
                }
                Write::Delete { key } => {
                    self.entries.remove(key);
                }
            }
        }
    }

    /// The value at `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.get(key)
    }

    /// Answers `query`: the greatest keys under the prefix, returned in ascending key order.
    pub fn list(&self, query: ListQuery) -> Vec<(String, Value)> {
        let end = prefix_upper_bound(query.prefix);
        let mut newest: Vec<(String, Value)> = self
            .entries
            .range::<str, _>((Bound::Included(query.prefix), Bound::Excluded(end.as_str())))
            .rev()
            .take(query.limit)
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        newest.reverse();
        newest
    }

    /// Answers each query in turn, concatenated (as [`RoomConfig::restore_queries`](crate::room::RoomConfig::restore_queries) asks).
    pub fn list_each(&self, queries: &[ListQuery]) -> Vec<(String, Value)> {
        queries.iter().flat_map(|query| self.list(*query)).collect()
    }

    /// How many entries the store holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The smallest string greater than every string that starts with `prefix`.
fn prefix_upper_bound(prefix: &str) -> String {
    // Key prefixes are ASCII constants ending in a byte below 0x7f, so bumping the last
    // byte stays valid UTF-8.
    let mut bytes = prefix.as_bytes().to_vec();
    let last = bytes.last_mut().expect("prefixes are not empty");
    debug_assert!(*last < 0x7f);
    *last += 1;
    String::from_utf8(bytes).expect("ASCII prefix")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_keys_sort_in_id_order_and_round_trip() {
        let ids = [0u64, 1, 9, 10, 99, 100, 12345, u64::MAX];
        for pair in ids.windows(2) {
            assert!(keys::message(pair[0]) < keys::message(pair[1]));
        }
        for id in ids {
            assert_eq!(keys::parse_message(&keys::message(id)), Some(id));
        }
        assert_eq!(keys::parse_message("msg/12"), None);
        assert_eq!(keys::parse_message("msg/0000000000000000001x"), None);
        assert_eq!(keys::parse_message("counter/value"), None);
    }

    #[test]
    fn memory_store_applies_batches_and_lists_the_newest() {
        let mut store = MemoryStore::new();
        let puts = (1..=5)
            .map(|id| Write::Put {
                key: keys::message(id),
                value: Value::from(id.to_string()),
            })
            .chain([Write::Put {
                key: keys::COUNTER_VALUE.into(),
                value: "3".into(),
            }])
            .collect();
        store.apply(&WriteBatch {
            id: BatchId(1),
            writes: puts,
        });
        store.apply(&WriteBatch {
            id: BatchId(2),
            writes: vec![Write::Delete {
                key: keys::message(1),
            }],
        });
        let listed = store.list(ListQuery {
            prefix: keys::MESSAGE_PREFIX,
            limit: 2,
        });
        let ids: Vec<_> = listed
            .iter()
            .map(|(k, _)| keys::parse_message(k).unwrap())
            .collect();
        assert_eq!(ids, vec![4, 5]);
        let all = store.list(ListQuery {
            prefix: keys::MESSAGE_PREFIX,
            limit: 100,
        });
        assert_eq!(all.len(), 4);
        assert_eq!(store.get(keys::COUNTER_VALUE).map(|v| &**v), Some("3"));
    }

    #[test]
    fn a_memory_store_is_empty_until_a_write() {
        let mut store = MemoryStore::new();
        assert!(store.is_empty());
        store.apply(&WriteBatch {
            id: BatchId(1),
            writes: vec![Write::Put {
                key: keys::message(1),
                value: "{}".into(),
            }],
        });
        assert!(!store.is_empty());
    }
}
