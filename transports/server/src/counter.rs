//! Counter objects: `GET /api/counter/<name>` and its increment/decrement, each counter one
//! task driving the core [`Counter`], answering changes only once they are durable.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use edgechat_core::counter::{Counter, CounterOp, CounterOutput, CounterRequest};
use edgechat_core::ids::ObjectId;
use edgechat_core::storage::{keys, BatchId};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::{dec, inc, Metrics};
use crate::objects::Registry;
use crate::store::Store;

/// Inbox size of one counter.
const COUNTER_INBOX_LEN: usize = 256;
/// Most queued requests handled before the writes are drained into one batch.
const INPUTS_PER_TURN_MAX: usize = 64;

/// A request to a counter.
#[derive(Debug)]
pub(crate) enum CounterMsg {
    /// Apply `op` and answer with the value after it.
    Request {
        op: CounterOp,
        reply: oneshot::Sender<i64>,
    },
    /// Finish outstanding writes, then answer and stop.
    Shutdown { reply: oneshot::Sender<()> },
}

/// The counters: their registry and what their tasks need.
#[derive(Debug)]
pub(crate) struct Counters {
    registry: Registry<CounterMsg>,
    store: Store,
    metrics: Arc<Metrics>,
    /// How long a counter task without requests stays alive.
    idle_ms: u64,
}

impl Counters {
    pub(crate) fn new(store: Store, metrics: Arc<Metrics>, idle_ms: u64) -> Arc<Counters> {
        Arc::new(Counters {
            registry: Registry::new(COUNTER_INBOX_LEN),
            store,
            metrics,
            idle_ms,
        })
    }

    /// Sends `msg` to counter `id` (starting its task if needed), following the counter
    /// across a retirement.
    ///
    /// # Errors
    /// Gives the message back if no task would take it.
    pub(crate) async fn send(
        self: &Arc<Self>,
        id: ObjectId,
        msg: CounterMsg,
    ) -> Result<(), CounterMsg> {
        self.registry
            .send(id, msg, |inbox| spawn(self.clone(), id, inbox))
            .await
    }

    /// Every live counter's inbox (for shutdown).
    pub(crate) fn inboxes(&self) -> Vec<mpsc::Sender<CounterMsg>> {
        self.registry.inboxes()
    }
}

/// Starts the task of counter `id` (a plain function: the task's future, which may send to
/// a fresh task of the same counter, must not be part of its own type).
fn spawn(counters: Arc<Counters>, id: ObjectId, inbox: mpsc::Receiver<CounterMsg>) {
    inc(&counters.metrics.counters);
    tokio::spawn(run(counters, id, inbox));
}

struct CounterTask {
    counters: Arc<Counters>,
    id: ObjectId,
    counter: Counter,
    /// Storage settles batches here: committed (`true`) or refused (`false`).
    durable: mpsc::UnboundedSender<(BatchId, bool)>,
    replies: BTreeMap<CounterRequest, oneshot::Sender<i64>>,
    next_request: u64,
    stopping: Vec<oneshot::Sender<()>>,
}

async fn run(counters: Arc<Counters>, id: ObjectId, mut inbox: mpsc::Receiver<CounterMsg>) {
    let stored = match counters.store.get(id, keys::COUNTER_VALUE).await {
        Ok(stored) => stored,
        Err(error) => {
            tracing::error!(%error, counter = %id, "reading a counter failed");
            return retire(counters, id, inbox, Vec::new(), false).await;
        }
    };
    let counter = match Counter::restore(stored.as_deref()) {
        Ok(counter) => counter,
        Err(error) => {
            // Dropping the requests answers them with an error (HTTP 503).
            tracing::error!(%error, counter = %id, "stored counter is corrupt");
            return retire(counters, id, inbox, Vec::new(), false).await;
        }
    };
    let (durable, mut durable_rx) = mpsc::unbounded_channel();
    let mut task = CounterTask {
        counters: counters.clone(),
        id,
        counter,
        durable,
        replies: BTreeMap::new(),
        next_request: 1,
        stopping: Vec::new(),
    };
    let idle = Duration::from_millis(counters.idle_ms);
    loop {
        tokio::select! {
            biased;
            Some((batch, durable)) = durable_rx.recv() => {
                if durable {
                    if task.counter.handle_durable(batch).is_err() {
                        tracing::error!(counter = %id, ?batch, "confirmation for a batch not in flight");
                    }
                } else {
                    match task.counter.handle_write_failed(batch) {
                        // Dropping a reply answers its request with an error (HTTP 503).
                        Ok(failed) => {
                            for request in failed {
                                task.replies.remove(&request);
                            }
                        }
                        Err(batch) => {
                            tracing::error!(counter = %id, ?batch, "refusal for a batch not in flight");
                        }
                    }
                }
            }
            msg = inbox.recv() => {
                let Some(msg) = msg else { break };
                task.handle(msg);
                for _ in 0..INPUTS_PER_TURN_MAX {
                    match inbox.try_recv() {
                        Ok(msg) => task.handle(msg),
                        Err(_) => break,
                    }
                }
            }
            () = tokio::time::sleep(idle), if task.is_idle() => break,
        }
        task.drain();
        if !task.stopping.is_empty() && task.is_idle() {
            break;
        }
    }
    let stopping = std::mem::take(&mut task.stopping);
    retire(counters, id, inbox, stopping, true).await;
}

impl CounterTask {
    fn handle(&mut self, msg: CounterMsg) {
        match msg {
            CounterMsg::Request { op, reply } => {
                let request = CounterRequest(self.next_request);
                self.next_request += 1;
                self.replies.insert(request, reply);
                self.counter.handle_request(request, op);
            }
            CounterMsg::Shutdown { reply } => self.stopping.push(reply),
        }
    }

    fn drain(&mut self) {
        while let Some(output) = self.counter.poll_output() {
            match output {
                CounterOutput::Persist(batch) => {
                    let durable = self.durable.clone();
                    let id = batch.id;
                    self.counters.store.write(
                        self.id,
                        batch,
                        Box::new(move |committed| {
                            let _ = durable.send((id, committed));
                        }),
                    );
                }
                CounterOutput::Reply { request, value } => {
                    if let Some(reply) = self.replies.remove(&request) {
                        let _ = reply.send(value);
                    }
                }
            }
        }
    }

    fn is_idle(&self) -> bool {
        self.counter.is_quiescent() && self.replies.is_empty()
    }
}

async fn retire(
    counters: Arc<Counters>,
    id: ObjectId,
    mut inbox: mpsc::Receiver<CounterMsg>,
    stopping: Vec<oneshot::Sender<()>>,
    redispatch: bool,
) {
    counters.registry.retire(id, &mut inbox);
    dec(&counters.metrics.counters);
    for reply in stopping {
        let _ = reply.send(());
    }
    let mut leftovers = Vec::new();
    while let Some(msg) = inbox.recv().await {
        leftovers.push(msg);
    }
    for msg in leftovers {
        match msg {
            // A stopping server does not need a fresh task just to stop it.
            CounterMsg::Shutdown { reply } => drop(reply.send(())),
            // After a storage failure, dropping the request answers it with an error rather
            // than handing it to a fresh task that would fail the same way, forever.
            msg if redispatch => drop(counters.send(id, msg).await),
            msg => drop(msg),
        }
    }
}
