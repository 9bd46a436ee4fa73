//! The counter object (`/api/counter/<name>`) under the same kind of faults as the rooms,
//! checked against the oracle's own model of the protocol's rule: a change is answered
//! with the value after it, once durable; a read answers the durable value at once; a
//! failed write refuses its changes and every change accepted after them, and the value
//! stays; a restart restores the stored value (a write in flight at the crash either landed
//! whole or not at all).
//!
//! One task plays the counter's host: it feeds core's `Counter` requests (read, increment,
//! decrement), commits its batches to a `MemoryStore` (or fails them), evicts it when
//! quiescent and restores it from storage, crashes it (the write in flight lands or not),
//! and checks a corrupt stored value is refused. Every answer is checked (`counter`).

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use edgechat_core::counter::{Counter, CounterOp, CounterOutput, CounterRequest};
use edgechat_core::storage::{keys, MemoryStore, WriteBatch};
use madsim::rand::{thread_rng, Rng};
use madsim::time::sleep;

use crate::world::Shared;

/// The model: what the counter must answer.
#[derive(Debug, Default)]
struct Model {
    /// The durable value.
    value: i64,
    /// Reads not yet answered.
    reads: BTreeSet<u64>,
    /// Changes accepted since the last batch began: (request, ±1).
    unbatched: VecDeque<(u64, i64)>,
    /// The changes of the batch in flight, in order.
    batched: VecDeque<(u64, i64)>,
}

impl Model {
    fn reply(&mut self, request: u64, value: i64) -> Result<(), String> {
        if self.reads.remove(&request) {
            return if value == self.value {
                Ok(())
            } else {
                Err(format!(
                    "read {request} answered {value}, durable is {}",
                    self.value
                ))
            };
        }
        match self.batched.pop_front() {
            Some((front, delta)) if front == request && value == self.value + delta => {
                self.value = value;
                Ok(())
            }
            front => Err(format!(
                "change {request} answered {value}; the model expected {front:?} after {}",
                self.value
            )),
        }
    }

    fn batch_started(&mut self) -> Result<(), String> {
        if !self.batched.is_empty() {
            return Err("a second batch while one is in flight".into());
        }
        self.batched = std::mem::take(&mut self.unbatched);
        Ok(())
    }

    fn failed(&mut self, refused: &[u64]) -> Result<(), String> {
        let want: Vec<u64> = self
            .batched
            .drain(..)
            .chain(self.unbatched.drain(..))
            .map(|(request, _)| request)
            .collect();
        if refused == want {
            Ok(())
        } else {
            Err(format!("a failed write refused {refused:?}, not {want:?}"))
        }
    }

    fn crashed(&mut self, landed: bool) {
        if landed {
            self.value += self.batched.iter().map(|(_, delta)| delta).sum::<i64>();
        }
        self.batched.clear();
        self.unbatched.clear();
        self.reads.clear();
    }
}

/// Plays the counter's host during the fault phase.
pub(crate) async fn counter_main(world: Shared, fault_ms: u64) {
    let mut store = MemoryStore::new();
    let mut counter = Counter::restore(None).expect("a fresh counter");
    let mut model = Model::default();
    let mut in_flight: Option<WriteBatch> = None;
    let mut next = 0u64;
    loop {
        sleep(Duration::from_millis(thread_rng().gen_range(50..1_000))).await;
        let mut w = world.lock().expect("world lock");
        if w.violation.is_some() || w.elapsed_ms() >= fault_ms {
            return;
        }
        let mut rng = thread_rng();
        let roll: f64 = rng.gen();
        let mut problem = None;
        if roll < 0.5 {
            next += 1;
            let op = match rng.gen_range(0..3) {
                0 => {
                    model.reads.insert(next);
                    CounterOp::Get
                }
                1 => {
                    model.unbatched.push_back((next, 1));
                    CounterOp::Increment
                }
                _ => {
                    model.unbatched.push_back((next, -1));
                    CounterOp::Decrement
                }
            };
            w.count_fault("counter-op");
            counter.handle_request(CounterRequest(next), op);
        } else if roll < 0.85 {
            if let Some(batch) = in_flight.take() {
                if rng.gen_bool(0.85) {
                    store.apply(&batch);
                    let stored = store.get(keys::COUNTER_VALUE).map(|v| v.to_string());
                    let want: i64 = model.value + model.batched.iter().map(|c| c.1).sum::<i64>();
                    if stored.as_deref() != Some(want.to_string().as_str()) {
                        problem = Some(format!("stored {stored:?}, the model {want}"));
                    }
                    if counter.handle_durable(batch.id).is_err() {
                        problem = Some(format!("durable {:?} refused", batch.id));
                    }
                } else {
                    w.count_fault("counter-write-failed");
                    match counter.handle_write_failed(batch.id) {
                        Ok(refused) => {
                            let refused: Vec<u64> = refused.iter().map(|r| r.0).collect();
                            problem = model.failed(&refused).err();
                        }
                        Err(id) => problem = Some(format!("failure of {id:?} refused")),
                    }
                }
            }
        } else if roll < 0.93 {
            if counter.is_quiescent() && in_flight.is_none() {
                w.count_fault("counter-evict");
                let restored;
                (counter, restored) = restore_checked(&store, &model, "an eviction");
                problem = restored.or(problem);
            }
        } else {
            w.count_fault("counter-crash");
            let landed = in_flight.take().is_some_and(|batch| {
                let lands = rng.gen_bool(0.5);
                if lands {
                    store.apply(&batch);
                }
                lands
            });
            model.crashed(landed);
            let restored;
            let after = format!("a crash (write landed: {landed})");
            (counter, restored) = restore_checked(&store, &model, &after);
            problem = restored.or(problem);
            if Counter::restore(Some("12x")).is_ok() {
                problem = Some("a corrupt stored value restored".into());
            }
        }
        while let Some(output) = counter.poll_output() {
            let result = match output {
                CounterOutput::Persist(batch) => {
                    in_flight = Some(batch);
                    model.batch_started()
                }
                CounterOutput::Reply { request, value } => model.reply(request.0, value),
            };
            if let Err(error) = result {
                problem.get_or_insert(error);
            }
        }
        if !model.reads.is_empty() {
            problem.get_or_insert_with(|| format!("reads {:?} not answered at once", model.reads));
        }
        if let Some(problem) = problem {
            w.violate("counter", problem);
            return;
        }
    }
}

/// Restores the counter from storage, as after `after`; with a problem if it does not hold
/// the model's durable value.
fn restore_checked(store: &MemoryStore, model: &Model, after: &str) -> (Counter, Option<String>) {
    let counter = restore(store);
    let problem = (counter.value() != model.value).then(|| {
        format!(
            "restored {} after {after}, the model {}",
            counter.value(),
            model.value
        )
    });
    (counter, problem)
}

fn restore(store: &MemoryStore) -> Counter {
    let stored = store.get(keys::COUNTER_VALUE).map(|v| v.to_string());
    Counter::restore(stored.as_deref()).expect("the counter's own value restores")
}
