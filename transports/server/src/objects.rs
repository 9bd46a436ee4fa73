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
//!
//! Rooms have a registry of their own, [`Rooms`], because a room retires while it still has
//! sockets: once it is evicted and nothing is in flight, its task ends and leaves a
//! [`DormantRoom`] (each socket's writer and attachment, tens of bytes) in the registry, as
//! Durable Objects hibernate. The next message for it starts a task from that record.
//! ```text
//!   (none) ─first message─► Live ─evicted, idle─► Retiring ─queue drained─► Dormant
//!                            ▲                    (messages park here,   │  (or gone, with
//!                            │                     in order)             │   no sockets)
//!                            └──────────── next message, or parked ones ─┘
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgechat_core::ids::{IdSecret, ObjectId};
use edgechat_core::room::ConnId;
use edgechat_core::Timestamp;
use tokio::sync::{mpsc, watch};

use crate::conn::ConnWriter;
use crate::room::RoomMsg;

use crate::metrics::Metrics;
use crate::runtime::Settings;
use crate::store::Store;

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

/// A room without a task: evicted, nothing in flight, its sockets kept open.
#[derive(Debug, Default)]
pub(crate) struct DormantRoom {
    /// Each socket's writer and the core's attachment for it.
    pub sockets: Vec<(ConnId, Arc<ConnWriter>, Box<[u8]>)>,
}

#[derive(Debug)]
enum RoomSlot {
    Live(mpsc::Sender<RoomMsg>),
    /// The task is draining its closed inbox; messages wait here, in order, for the next.
    Retiring(Vec<RoomMsg>),
    Dormant(DormantRoom),
}

/// Where a message for a room went.
#[derive(Debug)]
pub(crate) enum Route {
    /// Send it to this inbox (it may have closed since: route again).
    Inbox(mpsc::Sender<RoomMsg>, RoomMsg),
    /// The room is handing over to a new task; the message is queued for it.
    Parked,
}

/// How a room task starts: its inbox, the dormant record it wakes from, and messages that
/// arrived during the handover (handled first).
pub(crate) struct RoomStart {
    pub inbox: mpsc::Receiver<RoomMsg>,
    pub dormant: Option<DormantRoom>,
    pub pending: Vec<RoomMsg>,
}

/// The room registry (see the module docs).
#[derive(Debug)]
pub(crate) struct Rooms {
    slots: Mutex<HashMap<ObjectId, RoomSlot>>,
    capacity: usize,
}

impl Rooms {
    pub(crate) fn new(capacity: usize) -> Rooms {
        Rooms {
            slots: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectId, RoomSlot>> {
        self.slots.lock().expect("room registry lock poisoned")
    }

    /// Routes `msg` to room `id`, starting its task (fresh or from its dormant record) with
    /// `spawn` if none is live.
    pub(crate) fn route(&self, id: ObjectId, msg: RoomMsg, spawn: impl FnOnce(RoomStart)) -> Route {
        let mut slots = self.slots();
        match slots.get_mut(&id) {
            Some(RoomSlot::Live(inbox)) if !inbox.is_closed() => {
                return Route::Inbox(inbox.clone(), msg);
            }
            Some(RoomSlot::Retiring(parked)) => {
                parked.push(msg);
                return Route::Parked;
            }
            _ => {}
        }
        let dormant = match slots.remove(&id) {
            Some(RoomSlot::Dormant(dormant)) => Some(dormant),
            _ => None,
        };
        let (inbox, rx) = mpsc::channel(self.capacity);
        slots.insert(id, RoomSlot::Live(inbox.clone()));
        spawn(RoomStart {
            inbox: rx,
            dormant,
            pending: Vec::new(),
        });
        Route::Inbox(inbox, msg)
    }

    /// Starts `id`'s retirement: closes its inbox; from now on its messages are parked.
    /// The task then drains the inbox and calls [`Rooms::finish_retiring`].
    pub(crate) fn begin_retiring(&self, id: ObjectId, inbox: &mut mpsc::Receiver<RoomMsg>) {
        let mut slots = self.slots();
        inbox.close();
        slots.insert(id, RoomSlot::Retiring(Vec::new()));
    }

    /// Ends `id`'s retirement. The messages drained from its inbox (`leftovers`) and those
    /// parked meanwhile go, in that order, to a new task at once; with none, the room stays
    /// dormant (or is forgotten, without sockets).
    pub(crate) fn finish_retiring(
        &self,
        id: ObjectId,
        dormant: Option<DormantRoom>,
        mut leftovers: Vec<RoomMsg>,
        spawn: impl FnOnce(RoomStart),
    ) {
        let mut slots = self.slots();
        if let Some(RoomSlot::Retiring(parked)) = slots.remove(&id) {
            leftovers.extend(parked);
        }
        if leftovers.is_empty() {
            if let Some(dormant) = dormant {
                slots.insert(id, RoomSlot::Dormant(dormant));
            }
            return;
        }
        let (inbox, rx) = mpsc::channel(self.capacity);
        slots.insert(id, RoomSlot::Live(inbox));
        spawn(RoomStart {
            inbox: rx,
            dormant,
            pending: leftovers,
        });
    }

    /// Every live room's inbox (dormant rooms have nothing in flight).
    pub(crate) fn inboxes(&self) -> Vec<mpsc::Sender<RoomMsg>> {
        self.slots()
            .values()
            .filter_map(|slot| match slot {
                RoomSlot::Live(inbox) => Some(inbox.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Everything the object tasks and connection handlers share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: Settings,
    pub secret: IdSecret,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub rooms: Rooms,
    pub limiters: Registry<crate::limiter::LimiterMsg>,
    pub counters: Registry<crate::counter::CounterMsg>,
    /// Flips to `true` once when the server starts shutting down. Held here (not by the
    /// [`Server`](crate::Server) handle) so that dropping the handle does not stop anything.
    pub shutdown: watch::Sender<bool>,
}

impl Shared {
    /// Routes `msg` to room `id`, starting its task if needed.
    pub(crate) fn route_room(self: &Arc<Self>, id: ObjectId, msg: RoomMsg) -> Route {
        self.rooms
            .route(id, msg, |start| crate::room::spawn(self.clone(), id, start))
    }

    /// Sends `msg` to room `id`, following the room across a retirement.
    ///
    /// # Errors
    /// Gives the message back if no task would take it (only during shutdown).
    pub(crate) async fn send_room(
        self: &Arc<Self>,
        id: ObjectId,
        mut msg: RoomMsg,
    ) -> Result<(), RoomMsg> {
        for _ in 0..SEND_ATTEMPTS_MAX {
            match self.route_room(id, msg) {
                Route::Parked => return Ok(()),
                Route::Inbox(inbox, back) => match inbox.send(back).await {
                    Ok(()) => return Ok(()),
                    Err(mpsc::error::SendError(back)) => msg = back,
                },
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

#[cfg(test)]
mod tests {
    use super::*;

    fn binary(conn: u64) -> RoomMsg {
        RoomMsg::Binary { conn: ConnId(conn) }
    }

    fn conn_of(msg: &RoomMsg) -> u64 {
        match msg {
            RoomMsg::Binary { conn } => conn.0,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// The handover: messages already in the old inbox come first, then those parked while
    /// it drained, and the new task gets the dormant sockets.
    #[test]
    fn a_retiring_room_parks_messages_and_hands_them_on_in_order() {
        let rooms = Rooms::new(8);
        let id = ObjectId::from_name(edgechat_core::ids::Namespace::Room, "retiring");
        let mut started = Vec::new();
        let Route::Inbox(inbox, first) = rooms.route(id, binary(1), |start| started.push(start))
        else {
            panic!("a fresh room has an inbox");
        };
        inbox.try_send(first).unwrap();
        let mut task = started.pop().expect("a task started");
        assert!(task.dormant.is_none() && task.pending.is_empty());

        rooms.begin_retiring(id, &mut task.inbox);
        assert!(matches!(
            rooms.route(id, binary(2), |_| panic!("no task while retiring")),
            Route::Parked
        ));
        assert!(matches!(
            rooms.route(id, binary(3), |_| panic!("no task while retiring")),
            Route::Parked
        ));
        assert!(
            rooms.inboxes().is_empty(),
            "a retiring room gets no broadcasts"
        );
        let leftovers = vec![task.inbox.try_recv().expect("message 1 was queued")];
        let dormant = DormantRoom::default();
        rooms.finish_retiring(id, Some(dormant), leftovers, |start| started.push(start));

        let next = started
            .pop()
            .expect("the parked messages started a new task");
        assert!(next.dormant.is_some(), "with the sockets");
        let order: Vec<u64> = next.pending.iter().map(conn_of).collect();
        assert_eq!(order, [1, 2, 3]);
        assert_eq!(rooms.inboxes().len(), 1);
    }

    #[test]
    fn a_quiet_handover_leaves_a_dormant_room_that_the_next_message_wakes() {
        let rooms = Rooms::new(8);
        let id = ObjectId::from_name(edgechat_core::ids::Namespace::Room, "dormant");
        let mut started = Vec::new();
        let _ = rooms.route(id, binary(1), |start| started.push(start));
        let mut task = started.pop().expect("a task started");
        rooms.begin_retiring(id, &mut task.inbox);
        rooms.finish_retiring(id, Some(DormantRoom::default()), Vec::new(), |_| {
            panic!("nothing to hand on")
        });
        assert!(rooms.inboxes().is_empty(), "dormant: no task, no inbox");

        let _ = rooms.route(id, binary(2), |start| started.push(start));
        let woken = started.pop().expect("the message woke the room");
        assert!(woken.dormant.is_some() && woken.pending.is_empty());

        // Without sockets a retired room is forgotten: the next task starts fresh.
        let mut task = woken;
        rooms.begin_retiring(id, &mut task.inbox);
        rooms.finish_retiring(id, None, Vec::new(), |_| panic!("nothing to hand on"));
        let _ = rooms.route(id, binary(3), |start| started.push(start));
        assert!(started.pop().expect("a fresh task").dormant.is_none());
    }
}
