//! The counter object: the smallest example of the object model (state, storage, replies
//! after durability), served at `/api/counter/<name>`.

use std::collections::VecDeque;

use crate::storage::{keys, BatchId, Value, Write, WriteBatch};

/// Correlates a counter request with its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CounterRequest(pub u64);

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterOp {
    /// Read the value.
    Get,
    /// Add one.
    Increment,
    /// Subtract one.
    Decrement,
}

/// Something the adapter must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CounterOutput {
    /// Commit these writes atomically, then call [`Counter::handle_durable`].
    Persist(WriteBatch),
    /// Answer `request` with `value`.
    Reply {
        /// The request answered.
        request: CounterRequest,
        /// The counter's value after it.
        value: i64,
    },
}

/// Why a stored counter value could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt counter value {0:?}")]
pub struct CorruptCounter(pub String);

/// A counter: changes are answered only once durable, reads see only durable values.
#[derive(Debug, Default)]
pub struct Counter {
    durable: i64,
    latest: i64,
    /// Changes since the last batch: (request, value after it).
    pending: Vec<(CounterRequest, i64)>,
    in_flight: Option<(BatchId, Vec<(CounterRequest, i64)>)>,
    next_batch: u64,
    outputs: VecDeque<CounterOutput>,
}

impl Counter {
    /// Restores a counter from its stored value ([`keys::COUNTER_VALUE`]), if any.
    ///
    /// # Errors
    /// [`CorruptCounter`] if the stored value is not an integer.
    pub fn restore(stored: Option<&str>) -> Result<Counter, CorruptCounter> {
        let value = match stored {
            None => 0,
            Some(text) => text
                .parse()
                .map_err(|_| CorruptCounter(text.chars().take(64).collect()))?,
        };
        Ok(Counter {
            durable: value,
            latest: value,
            ..Counter::default()
        })
    }

    /// Handles one request. Reads are answered at once; changes once durable.
    pub fn handle_request(&mut self, request: CounterRequest, op: CounterOp) {
        let delta = match op {
            CounterOp::Get => {
                self.outputs.push_back(CounterOutput::Reply {
                    request,
                    value: self.durable,
                });
                return;
            }
            CounterOp::Increment => 1,
            CounterOp::Decrement => -1,
        };
        self.latest = self.latest.saturating_add(delta);
        self.pending.push((request, self.latest));
    }

    /// The batch `batch` is durable: its changes are answered.
    ///
    /// # Errors
    /// Returns the batch id back if it is not the batch in flight (caller misuse).
    pub fn handle_durable(&mut self, batch: BatchId) -> Result<(), BatchId> {
        match self.in_flight.take() {
            Some((id, changes)) if id == batch => {
                for (request, value) in changes {
                    self.durable = value;
                    self.outputs
                        .push_back(CounterOutput::Reply { request, value });
                }
                Ok(())
            }
            other => {
                self.in_flight = other;
                Err(batch)
            }
        }
    }

    /// The batch `batch` could not be committed: none of its changes, nor those accepted
    /// after them, happened. The counter goes back to its durable value and returns every
    /// change request that failed, in order, for the adapter to refuse.
    ///
    /// # Errors
    /// Returns the batch id back if it is not the batch in flight (caller misuse).
    pub fn handle_write_failed(&mut self, batch: BatchId) -> Result<Vec<CounterRequest>, BatchId> {
        match self.in_flight.take() {
            Some((id, changes)) if id == batch => {
                let failed = changes
                    .into_iter()
                    .chain(std::mem::take(&mut self.pending))
                    .map(|(request, _)| request)
                    .collect();
                self.latest = self.durable;
                Ok(failed)
            }
            other => {
                self.in_flight = other;
                Err(batch)
            }
        }
    }

    /// The next thing to do, if any (changes since the last poll share one batch).
    pub fn poll_output(&mut self) -> Option<CounterOutput> {
        if let Some(output) = self.outputs.pop_front() {
            return Some(output);
        }
        if self.in_flight.is_none() && !self.pending.is_empty() {
            let changes = std::mem::take(&mut self.pending);
            let batch = BatchId(self.next_batch);
            self.next_batch += 1;
            let value = Value::from(self.latest.to_string());
            self.in_flight = Some((batch, changes));
            return Some(CounterOutput::Persist(WriteBatch {
                id: batch,
                writes: vec![Write::Put {
                    key: keys::COUNTER_VALUE.to_owned(),
                    value,
                }],
            }));
        }
        None
    }

    /// The durable value.
    pub fn value(&self) -> i64 {
        self.durable
    }

    /// Whether nothing waits for storage.
    pub fn is_quiescent(&self) -> bool {
        self.in_flight.is_none() && self.pending.is_empty() && self.outputs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStore;

    fn drain(counter: &mut Counter, store: &mut MemoryStore) -> Vec<(u64, i64)> {
        let mut replies = Vec::new();
        while let Some(output) = counter.poll_output() {
            match output {
                CounterOutput::Persist(batch) => {
                    store.apply(&batch);
                    counter.handle_durable(batch.id).unwrap();
                }
                CounterOutput::Reply { request, value } => replies.push((request.0, value)),
            }
        }
        replies
    }

    #[test]
    fn changes_are_answered_after_durability_and_survive_restore() {
        let mut store = MemoryStore::new();
        let mut counter = Counter::restore(None).unwrap();
        counter.handle_request(CounterRequest(1), CounterOp::Increment);
        counter.handle_request(CounterRequest(2), CounterOp::Increment);
        counter.handle_request(CounterRequest(3), CounterOp::Get);
        // The read sees only the durable value; both increments share one batch.
        let replies = drain(&mut counter, &mut store);
        assert_eq!(replies, vec![(3, 0), (1, 1), (2, 2)]);
        counter.handle_request(CounterRequest(4), CounterOp::Decrement);
        assert_eq!(drain(&mut counter, &mut store), vec![(4, 1)]);

        let stored = store.get(keys::COUNTER_VALUE).map(|v| v.to_string());
        let mut restored = Counter::restore(stored.as_deref()).unwrap();
        restored.handle_request(CounterRequest(5), CounterOp::Get);
        assert_eq!(drain(&mut restored, &mut store), vec![(5, 1)]);
        assert!(Counter::restore(Some("x")).is_err());
    }

    #[test]
    fn a_stale_confirmation_is_refused() {
        let mut counter = Counter::default();
        counter.handle_request(CounterRequest(1), CounterOp::Increment);
        let Some(CounterOutput::Persist(batch)) = counter.poll_output() else {
            panic!("expected a batch");
        };
        assert_eq!(counter.handle_durable(BatchId(99)), Err(BatchId(99)));
        assert_eq!(counter.handle_durable(batch.id), Ok(()));
    }

    #[test]
    fn a_failed_write_refuses_its_changes_and_those_after_and_keeps_the_durable_value() {
        let mut store = MemoryStore::new();
        let mut counter = Counter::restore(None).unwrap();
        counter.handle_request(CounterRequest(1), CounterOp::Increment);
        assert_eq!(drain(&mut counter, &mut store), vec![(1, 1)]);
        counter.handle_request(CounterRequest(2), CounterOp::Increment);
        let Some(CounterOutput::Persist(batch)) = counter.poll_output() else {
            panic!("expected a batch");
        };
        counter.handle_request(CounterRequest(3), CounterOp::Increment);
        assert_eq!(counter.handle_write_failed(BatchId(99)), Err(BatchId(99)));
        let failed = counter.handle_write_failed(batch.id).unwrap();
        assert_eq!(failed, vec![CounterRequest(2), CounterRequest(3)]);
        assert!(counter.is_quiescent());
        // The next change builds on the durable value, not on the refused ones.
        counter.handle_request(CounterRequest(4), CounterOp::Increment);
        assert_eq!(drain(&mut counter, &mut store), vec![(4, 2)]);
    }

    #[test]
    fn a_restored_counter_counts_on_from_its_stored_value_and_reads_only_durable_values() {
        let mut store = MemoryStore::new();
        let mut counter = Counter::restore(Some("5")).unwrap();
        assert_eq!(counter.value(), 5);
        counter.handle_request(CounterRequest(1), CounterOp::Decrement);
        counter.handle_request(CounterRequest(2), CounterOp::Decrement);
        // Not durable yet: the value is still the stored one.
        assert_eq!(counter.value(), 5);
        assert_eq!(drain(&mut counter, &mut store), vec![(1, 4), (2, 3)]);
        assert_eq!(counter.value(), 3);
        counter.handle_request(CounterRequest(3), CounterOp::Increment);
        assert_eq!(drain(&mut counter, &mut store), vec![(3, 4)]);
        assert_eq!(counter.value(), 4);
    }

    #[test]
    fn each_batch_has_its_own_id_and_a_repeated_confirmation_is_refused() {
        let mut counter = Counter::default();
        counter.handle_request(CounterRequest(1), CounterOp::Increment);
        let Some(CounterOutput::Persist(first)) = counter.poll_output() else {
            panic!("expected a batch");
        };
        assert_eq!(counter.handle_durable(first.id), Ok(()));
        assert_eq!(
            counter.poll_output(),
            Some(CounterOutput::Reply {
                request: CounterRequest(1),
                value: 1
            })
        );
        counter.handle_request(CounterRequest(2), CounterOp::Increment);
        let Some(CounterOutput::Persist(second)) = counter.poll_output() else {
            panic!("expected a batch");
        };
        assert_ne!(first.id, second.id);
        // The first batch's confirmation, delivered twice, does not confirm the second.
        assert_eq!(counter.handle_durable(first.id), Err(first.id));
        assert_eq!(counter.value(), 1);
        assert_eq!(counter.handle_durable(second.id), Ok(()));
        assert_eq!(counter.value(), 2);
    }

    #[test]
    fn a_counter_is_quiescent_only_when_nothing_waits() {
        let mut counter = Counter::default();
        assert!(counter.is_quiescent());
        // A change not yet polled waits in `pending`.
        counter.handle_request(CounterRequest(1), CounterOp::Increment);
        assert!(!counter.is_quiescent());
        // Polled: its batch is in flight, nothing else waits.
        let Some(CounterOutput::Persist(batch)) = counter.poll_output() else {
            panic!("expected a batch");
        };
        assert!(!counter.is_quiescent());
        // Durable: only its reply waits.
        counter.handle_durable(batch.id).unwrap();
        assert!(!counter.is_quiescent());
        assert!(counter.poll_output().is_some());
        assert!(counter.is_quiescent());
        // A read waits only as a reply.
        counter.handle_request(CounterRequest(2), CounterOp::Get);
        assert!(!counter.is_quiescent());
        assert!(counter.poll_output().is_some());
        assert!(counter.is_quiescent());
    }
}
