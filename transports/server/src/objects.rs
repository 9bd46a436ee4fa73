//! The object host: every room, counter and rate limiter is one task that owns its core
//! state machine, addressed by [`ObjectId`] through a registry, created on first use.
//!
//! # Lifecycle of an object task
//! ```text
//!   first message ──► spawned (registry entry) ──► running ──► retiring ──► gone
//!                                                  (idle/evicted)   │
//!                                     leftover messages re-sent ────┘ to a fresh task
//! ```
//! A task retires by closing its inbox and removing its registry entry under the registry
//! lock, so no second task for the same id can ever run alongside it. Messages already
//! queued in its inbox are re-sent through the registry (which spawns a fresh task), and a
//! sender that finds the inbox closed looks the id up again. Nothing is lost in the handover,
//! and the lock is never held across an `.await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgechat_core::ids::{IdSecret, ObjectId};
use edgechat_core::Timestamp;
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;
use crate::store::Store;
use crate::Config;

/// How often a message is re-addressed when the task it was sent to has just retired.
const SEND_ATTEMPTS_MAX: usize = 8;

/// Wall-clock time as the core wants it: milliseconds since the Unix epoch.
///
/// The core clamps clocks that step backwards, so the wall clock is safe to pass in.
pub(crate) fn now() -> Timestamp {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    Timestamp(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
}

/// How long from now until `deadline` (zero if it has passed).
pub(crate) fn until(deadline: Timestamp) -> Duration {
    Duration::from_millis(deadline.millis_since(now()))
}

/// Maps object ids to the inboxes of their live tasks.
#[derive(Debug)]
pub(crate) struct Registry<M> {
    inboxes: Mutex<HashMap<ObjectId, mpsc::Sender<M>>>,
    capacity: usize,
}

impl<M> Registry<M> {
    pub(crate) fn new(capacity: usize) -> Registry<M> {
        Registry {
            inboxes: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The inbox of `id`'s task, spawning the task with `spawn` if none is alive.
    pub(crate) fn get_or_spawn(
        &self,
        id: ObjectId,
        spawn: impl FnOnce(mpsc::Receiver<M>),
    ) -> mpsc::Sender<M> {
        let mut inboxes = self.inboxes.lock().expect("registry lock poisoned");
        if let Some(inbox) = inboxes.get(&id) {
            if !inbox.is_closed() {
                return inbox.clone();
            }
        }
        let (inbox, rx) = mpsc::channel(self.capacity);
        inboxes.insert(id, inbox.clone());
        spawn(rx);
        inbox
    }

    /// Retires `id`'s task: closes its inbox and removes its entry, atomically with respect
    /// to [`Registry::get_or_spawn`]. The caller then drains what was already queued.
    pub(crate) fn retire(&self, id: ObjectId, inbox: &mut mpsc::Receiver<M>) {
        let mut inboxes = self.inboxes.lock().expect("registry lock poisoned");
        inbox.close();
        if inboxes.get(&id).is_some_and(mpsc::Sender::is_closed) {
            inboxes.remove(&id);
        }
    }

    /// Every live inbox (for broadcasts such as shutdown or forced hibernation).
    pub(crate) fn inboxes(&self) -> Vec<mpsc::Sender<M>> {
        let inboxes = self.inboxes.lock().expect("registry lock poisoned");
        inboxes.values().cloned().collect()
    }
}

/// Everything the object tasks and connection handlers share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: Config,
    pub secret: IdSecret,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub rooms: Registry<crate::room::RoomMsg>,
    pub limiters: Registry<crate::limiter::LimiterMsg>,
    pub counters: Registry<crate::counter::CounterMsg>,
    /// Flips to `true` once when the server starts shutting down. Held here (not by the
    /// [`Server`](crate::Server) handle) so that dropping the handle does not stop anything.
    pub shutdown: watch::Sender<bool>,
}

impl Shared {
    /// The inbox of room `id`.
    pub(crate) fn room(self: &Arc<Self>, id: ObjectId) -> mpsc::Sender<crate::room::RoomMsg> {
        self.rooms
            .get_or_spawn(id, |rx| crate::room::spawn(self.clone(), id, rx))
    }

    /// Sends `msg` to room `id`, following the room across a retirement.
    ///
    /// # Errors
    /// Gives the message back if no task would take it (only during shutdown).
    pub(crate) async fn send_room(
        self: &Arc<Self>,
        id: ObjectId,
        mut msg: crate::room::RoomMsg,
    ) -> Result<(), crate::room::RoomMsg> {
        for _ in 0..SEND_ATTEMPTS_MAX {
            match self.room(id).send(msg).await {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(back)) => msg = back,
            }
        }
        Err(msg)
    }

    /// The inbox of counter `id`.
    pub(crate) fn counter(
        self: &Arc<Self>,
        id: ObjectId,
    ) -> mpsc::Sender<crate::counter::CounterMsg> {
        self.counters
            .get_or_spawn(id, |rx| crate::counter::spawn(self.clone(), id, rx))
    }

    /// Sends `msg` to counter `id`, following the counter across a retirement.
    ///
    /// # Errors
    /// Gives the message back if no task would take it.
    pub(crate) async fn send_counter(
        self: &Arc<Self>,
        id: ObjectId,
        mut msg: crate::counter::CounterMsg,
    ) -> Result<(), crate::counter::CounterMsg> {
        for _ in 0..SEND_ATTEMPTS_MAX {
            match self.counter(id).send(msg).await {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(back)) => msg = back,
            }
        }
        Err(msg)
    }

    /// The inbox of rate limiter `id`.
    pub(crate) fn limiter(
        self: &Arc<Self>,
        id: ObjectId,
    ) -> mpsc::Sender<crate::limiter::LimiterMsg> {
        self.limiters
            .get_or_spawn(id, |rx| crate::limiter::spawn(self.clone(), id, rx))
    }
}
