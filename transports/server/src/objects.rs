//! Object registries: every room and counter is one task that owns its core
//! state machine, addressed by [`ObjectId`] through a registry, created on first use.
//!
//! The registries are generic over the message type (and a room's dormant record): they
//! know nothing of rooms or counters. Each kind of object wraps one with what its tasks
//! need (`room::Rooms`, `counter::Counters`).
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
//! Rooms have a registry of their own, [`HibernatingRegistry`], because a room retires while
//! it still has sockets: once it is evicted and nothing is in flight, its task ends and
//! leaves a dormant record (for a room, each socket's writer and attachment, tens of bytes)
//! in the registry, as Durable Objects hibernate. The next message for it starts a task from that record.
//! ```text
//!   (none) ─first message─► Live ─evicted, idle─► Retiring ─queue drained─► Dormant
//!                            ▲                    (messages park here,   │  (or gone, with
//!                            │                     in order)             │   no sockets)
//!                            └──────────── next message, or parked ones ─┘
//! ```

use std::collections::HashMap;
use std::sync::Mutex;

use edgechat_core::ids::ObjectId;
use tokio::sync::mpsc;

/// How often a message is re-addressed when the task it was sent to has just retired.
pub(crate) const SEND_ATTEMPTS_MAX: usize = 8;

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

    /// Sends `msg` to `id`'s task (spawned with `spawn` if none is alive), following the
    /// object across a retirement.
    ///
    /// # Errors
    /// Gives the message back if no task would take it.
    pub(crate) async fn send(
        &self,
        id: ObjectId,
        mut msg: M,
        spawn: impl Fn(mpsc::Receiver<M>),
    ) -> Result<(), M> {
        for _ in 0..SEND_ATTEMPTS_MAX {
            match self.get_or_spawn(id, &spawn).send(msg).await {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(back)) => msg = back,
            }
        }
        Err(msg)
    }
}

#[derive(Debug)]
enum Slot<M, D> {
    Live(mpsc::Sender<M>),
    /// The task is draining its closed inbox; messages wait here, in order, for the next.
    Retiring(Vec<M>),
    Dormant(D),
}

/// Where a message for an object went.
#[derive(Debug)]
pub(crate) enum Route<M> {
    /// Send it to this inbox (it may have closed since: route again).
    Inbox(mpsc::Sender<M>, M),
    /// The object is handing over to a new task; the message is queued for it.
    Parked,
}

/// How a task starts: its inbox, the dormant record it wakes from, and messages that
/// arrived during the handover (handled first).
pub(crate) struct Start<M, D> {
    pub inbox: mpsc::Receiver<M>,
    pub dormant: Option<D>,
    pub pending: Vec<M>,
}

/// The registry of objects that hibernate: a retired task may leave a dormant record `D`
/// (see the module docs).
#[derive(Debug)]
pub(crate) struct HibernatingRegistry<M, D> {
    slots: Mutex<HashMap<ObjectId, Slot<M, D>>>,
    capacity: usize,
}

impl<M, D> HibernatingRegistry<M, D> {
    pub(crate) fn new(capacity: usize) -> HibernatingRegistry<M, D> {
        HibernatingRegistry {
            slots: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectId, Slot<M, D>>> {
        self.slots.lock().expect("registry lock poisoned")
    }

    /// Routes `msg` to `id`, starting its task (fresh or from its dormant record) with
    /// `spawn` if none is live.
    pub(crate) fn route(&self, id: ObjectId, msg: M, spawn: impl FnOnce(Start<M, D>)) -> Route<M> {
        let mut slots = self.slots();
        match slots.get_mut(&id) {
            Some(Slot::Live(inbox)) if !inbox.is_closed() => {
                return Route::Inbox(inbox.clone(), msg);
            }
            Some(Slot::Retiring(parked)) => {
                parked.push(msg);
                return Route::Parked;
            }
            _ => {}
        }
        let dormant = match slots.remove(&id) {
            Some(Slot::Dormant(dormant)) => Some(dormant),
            _ => None,
        };
        let (inbox, rx) = mpsc::channel(self.capacity);
        slots.insert(id, Slot::Live(inbox.clone()));
        spawn(Start {
            inbox: rx,
            dormant,
            pending: Vec::new(),
        });
        Route::Inbox(inbox, msg)
    }

    /// Starts `id`'s retirement: closes its inbox; from now on its messages are parked.
    /// The task then drains the inbox and calls [`HibernatingRegistry::finish_retiring`].
    pub(crate) fn begin_retiring(&self, id: ObjectId, inbox: &mut mpsc::Receiver<M>) {
        let mut slots = self.slots();
        inbox.close();
        slots.insert(id, Slot::Retiring(Vec::new()));
    }

    /// Ends `id`'s retirement. The messages drained from its inbox (`leftovers`) and those
    /// parked meanwhile go, in that order, to a new task at once; with none, the object
    /// stays dormant (or is forgotten, without a dormant record).
    pub(crate) fn finish_retiring(
        &self,
        id: ObjectId,
        dormant: Option<D>,
        mut leftovers: Vec<M>,
        spawn: impl FnOnce(Start<M, D>),
    ) {
        let mut slots = self.slots();
        if let Some(Slot::Retiring(parked)) = slots.remove(&id) {
            leftovers.extend(parked);
        }
        if leftovers.is_empty() {
            if let Some(dormant) = dormant {
                slots.insert(id, Slot::Dormant(dormant));
            }
            return;
        }
        let (inbox, rx) = mpsc::channel(self.capacity);
        slots.insert(id, Slot::Live(inbox));
        spawn(Start {
            inbox: rx,
            dormant,
            pending: leftovers,
        });
    }

    /// Every live task's inbox (dormant objects have nothing in flight).
    pub(crate) fn inboxes(&self) -> Vec<mpsc::Sender<M>> {
        self.slots()
            .values()
            .filter_map(|slot| match slot {
                Slot::Live(inbox) => Some(inbox.clone()),
                _ => None,
            })
            .collect()
    }

    /// Every object the registry holds, in id order: a live task's inbox, or what
    /// `dormant` reads off a dormant record (an object handing over counts as live: `None`).
    pub(crate) fn survey<S>(
        &self,
        dormant: impl Fn(&D) -> S,
    ) -> Vec<(ObjectId, Option<mpsc::Sender<M>>, Option<S>)> {
        let mut objects: Vec<_> = self
            .slots()
            .iter()
            .map(|(id, slot)| match slot {
                Slot::Live(inbox) => (*id, Some(inbox.clone()), None),
                Slot::Retiring(_) => (*id, None, None),
                Slot::Dormant(record) => (*id, None, Some(dormant(record))),
            })
            .collect();
        objects.sort_by_key(|(id, _, _)| *id);
        objects
    }

    /// Sends `msg` to `id`, following it across a retirement.
    ///
    /// # Errors
    /// Gives the message back if no task would take it (only during shutdown).
    pub(crate) async fn send(
        &self,
        id: ObjectId,
        mut msg: M,
        spawn: impl Fn(Start<M, D>),
    ) -> Result<(), M> {
        for _ in 0..SEND_ATTEMPTS_MAX {
            match self.route(id, msg, &spawn) {
                Route::Parked => return Ok(()),
                Route::Inbox(inbox, back) => match inbox.send(back).await {
                    Ok(()) => return Ok(()),
                    Err(mpsc::error::SendError(back)) => msg = back,
                },
            }
        }
        Err(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message: its number.
    type Msg = u64;
    /// A dormant record: the sockets it kept.
    #[derive(Debug, Default)]
    struct Dormant;
    type Rooms = HibernatingRegistry<Msg, Dormant>;

    fn binary(n: u64) -> Msg {
        n
    }

    fn conn_of(msg: &Msg) -> u64 {
        *msg
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
        let dormant = Dormant;
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
        rooms.finish_retiring(id, Some(Dormant), Vec::new(), |_| {
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
