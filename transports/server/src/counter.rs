//! Counter objects: `GET /api/counter/<name>` and its increment/decrement, each counter one
//! task driving the core [`Counter`], answering changes only once they are durable.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use edgechat_core::counter::{Counter, CounterOp, CounterOutput, CounterRequest};
use edgechat_core::ids::ObjectId;
use edgechat_core::storage::{keys, BatchId};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::{dec, inc};
use crate::objects::Shared;

/// Inbox size of one counter.
pub(crate) const COUNTER_INBOX_LEN: usize = 256;
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

/// Starts the task of counter `id`.
pub(crate) fn spawn(shared: Arc<Shared>, id: ObjectId, inbox: mpsc::Receiver<CounterMsg>) {
    inc(&shared.metrics.counters);
    tokio::spawn(run(shared, id, inbox));
}

struct CounterTask {
    shared: Arc<Shared>,
    id: ObjectId,
    counter: Counter,
    durable: mpsc::UnboundedSender<BatchId>,
    replies: BTreeMap<CounterRequest, oneshot::Sender<i64>>,
    next_request: u64,
    stopping: Vec<oneshot::Sender<()>>,
}

async fn run(shared: Arc<Shared>, id: ObjectId, mut inbox: mpsc::Receiver<CounterMsg>) {
    let stored = match shared.store.get(id, keys::COUNTER_VALUE).await {
        Ok(stored) => stored,
        Err(error) => {
            tracing::error!(%error, counter = %id, "reading a counter failed");
            return retire(shared, id, inbox, Vec::new(), false).await;
        }
    };
    let counter = match Counter::restore(stored.as_deref()) {
        Ok(counter) => counter,
        Err(error) => {
            // Dropping the requests answers them with an error (HTTP 503).
            tracing::error!(%error, counter = %id, "stored counter is corrupt");
            return retire(shared, id, inbox, Vec::new(), false).await;
        }
    };
    let (durable, mut durable_rx) = mpsc::unbounded_channel();
    let mut task = CounterTask {
        shared: shared.clone(),
        id,
        counter,
        durable,
        replies: BTreeMap::new(),
        next_request: 1,
        stopping: Vec::new(),
    };
    let idle = Duration::from_millis(shared.config.idle_ms);
    loop {
        tokio::select! {
            biased;
            Some(batch) = durable_rx.recv() => {
                if task.counter.handle_durable(batch).is_err() {
                    tracing::error!(counter = %id, ?batch, "confirmation for a batch not in flight");
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
    retire(shared, id, inbox, stopping, true).await;
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
                    self.shared.store.write(
                        self.id,
                        batch,
                        Box::new(move || {
                            let _ = durable.send(id);
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
    shared: Arc<Shared>,
    id: ObjectId,
    mut inbox: mpsc::Receiver<CounterMsg>,
    stopping: Vec<oneshot::Sender<()>>,
    redispatch: bool,
) {
    shared.counters.retire(id, &mut inbox);
    dec(&shared.metrics.counters);
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
            msg if redispatch => drop(shared.send_counter(id, msg).await),
            msg => drop(msg),
        }
    }
}
