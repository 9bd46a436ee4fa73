//! The object host: the part of the Durable Objects runtime that every adapter needs.
//!
//! A [`RoomHost`] owns one room's state machine while it is resident, evicts it after an idle
//! time (hibernation: the sockets stay open with their attachments, memory is dropped), and
//! rebuilds it from attachments and storage on the next event. The server and the simulator
//! both drive rooms through this type, so the simulator tests the same eviction logic the
//! server runs; on Workers the platform itself decides when to evict, and the adapter uses
//! [`RoomHost::restore`] alone.
//!
//! # Contract
//! Before handing a room an input, check [`RoomHost::is_resident`]; if it is not, read
//! [`RoomConfig::restore_queries`] from storage and call [`RoomHost::restore`] with the open
//! connections' attachments. Then [`RoomHost::handle_input`], drain
//! [`RoomHost::poll_output`], and sleep until [`RoomHost::poll_timeout`], where
//! [`RoomHost::handle_timeout`] may evict the room.
//!
//! An eviction never happens while a batch is unconfirmed: like a Durable Object, which is
//! not hibernated while storage IO is outstanding, the host defers a requested eviction until
//! the room is quiescent. (Evicting earlier would leave durable messages that no live client
//! was sent.)

use crate::room::{ConnId, Input, Output, RestoreError, Room, RoomConfig, RoomError, RoomStats};
use crate::storage::Value;
use crate::time::Timestamp;

/// Default idle time before a room is evicted from memory.
pub const IDLE_EVICTION_MS_DEFAULT: u64 = 10_000;

/// What the host asks its adapter to do: the room's outputs, and eviction news.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostOutput {
    /// An output of the room; see [`Output`].
    Room(Output),
    /// The room was evicted from memory (its sockets stay open).
    Hibernated,
}

/// Misuse of a [`RoomHost`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// An input was given while the room is evicted; restore it first.
    #[error("the room is not resident; restore it first")]
    NotResident,
    /// The room refused the input.
    #[error(transparent)]
    Room(#[from] RoomError),
}

/// Hosts one room: resident or hibernated, with idle eviction.
#[derive(Debug)]
pub struct RoomHost {
    config: RoomConfig,
    idle_ms: u64,
    room: Option<Room>,
    last_activity: Timestamp,
    eviction_requested: bool,
    hibernated_event: bool,
    /// Counts of the last residency not yet taken by [`RoomHost::take_stats`].
    stats_before_eviction: RoomStats,
    /// While evicted: the room's next timeout when it was evicted (see [`RoomHost::wake_at`]).
    wake_at: Option<Timestamp>,
}

impl RoomHost {
    /// A host whose room is not yet resident (it is restored on its first event, from
    /// storage that may be empty).
    pub fn new(config: RoomConfig, idle_ms: u64) -> RoomHost {
        RoomHost {
            config,
            idle_ms,
            room: None,
            last_activity: Timestamp::ZERO,
            eviction_requested: false,
            hibernated_event: false,
            stats_before_eviction: RoomStats::default(),
            wake_at: None,
        }
    }

    /// Whether the room is in memory.
    pub fn is_resident(&self) -> bool {
        self.room.is_some()
    }

    /// The room's settings (and so its [`RoomConfig::restore_queries`]).
    pub fn config(&self) -> &RoomConfig {
        &self.config
    }

    /// The resident room, for read-only queries (presence, history pages).
    pub fn room(&self) -> Option<&Room> {
        self.room.as_ref()
    }

    /// Rebuilds the room from storage and the open connections' attachments.
    ///
    /// # Errors
    /// [`RestoreError`] if storage is corrupt; the room stays evicted.
    pub fn restore<'a>(
        &mut self,
        stored: &[(String, Value)],
        attachments: impl IntoIterator<Item = (ConnId, &'a [u8])>,
        now: Timestamp,
    ) -> Result<(), RestoreError> {
        debug_assert!(self.room.is_none(), "restore of a resident room");
        let mut room = Room::restore(self.config.clone(), stored, attachments)?;
        room.trim_history(now);
        self.room = Some(room);
        self.wake_at = None;
        self.last_activity = now;
        self.eviction_requested = false;
        Ok(())
    }

    /// Hands the resident room an input.
    ///
    /// # Errors
    /// [`HostError::NotResident`] if the room must be restored first; the room's own errors.
    pub fn handle_input(&mut self, input: Input, now: Timestamp) -> Result<(), HostError> {
        let room = self.room.as_mut().ok_or(HostError::NotResident)?;
        self.last_activity = self.last_activity.max(now);
        room.handle_input(input, now)?;
        Ok(())
    }

    /// The resident room, to call its `handle_*` methods directly; counts as activity.
    pub fn room_mut(&mut self, now: Timestamp) -> Option<&mut Room> {
        let room = self.room.as_mut()?;
        self.last_activity = self.last_activity.max(now);
        Some(room)
    }

    /// What the room has done since the last call, across evictions.
    pub fn take_stats(&mut self) -> RoomStats {
        let mut stats = std::mem::take(&mut self.stats_before_eviction);
        if let Some(room) = self.room.as_mut() {
            let resident = room.take_stats();
            stats.messages_durable += resident.messages_durable;
            stats.frames_rate_limited += resident.frames_rate_limited;
            stats.messages_refused_storage += resident.messages_refused_storage;
        }
        stats
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<HostOutput> {
        if let Some(output) = self.room.as_mut().and_then(Room::poll_output) {
            return Some(HostOutput::Room(output));
        }
        if self.eviction_requested {
            self.try_evict();
        }
        if std::mem::take(&mut self.hibernated_event) {
            return Some(HostOutput::Hibernated);
        }
        None
    }

    /// The room's next output other than a new batch, between the inputs of one turn (see
    /// [`Room::poll_output_within_turn`]); never evicts. Drain [`RoomHost::poll_output`] at
    /// the turn's end.
    pub fn poll_output_within_turn(&mut self) -> Option<Output> {
        self.room.as_mut()?.poll_output_within_turn()
    }

    /// When to call [`RoomHost::handle_timeout`] next, if ever: the idle deadline, or a
    /// token expiry or a message ageing out of the room's history if that comes first.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let room = self.room.as_ref()?;
        let idle = self.last_activity.plus_millis(self.idle_ms);
        let due = room
            .poll_timeout()
            .into_iter()
            .chain(room.history_age_deadline());
        Some(due.fold(idle, Timestamp::min))
    }

    /// While the room is evicted: when it must be restored (from storage and its sockets'
    /// attachments, as for any event) and given [`RoomHost::handle_timeout`], because
    /// something was due then when it was evicted (a token expiry: an evicted room must
    /// still close the sockets whose tokens run out). `None` while resident, or if nothing
    /// is due. Hosts whose platform keeps a timer across eviction (a Durable Object alarm)
    /// need not use it.
    pub fn wake_at(&self) -> Option<Timestamp> {
        self.room.is_none().then_some(self.wake_at).flatten()
    }

    /// Closes connections whose tokens expired, and evicts the room if it has been idle long
    /// enough (early or repeated calls are harmless).
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if let Some(room) = self.room.as_mut() {
            room.handle_timeout(now);
        }
        if self.room.is_some() && now >= self.last_activity.plus_millis(self.idle_ms) {
            self.request_eviction();
        }
    }

    /// Asks for eviction now (the platform's choice, or a fault in the simulator); it happens
    /// as soon as the room is quiescent, reported by [`HostOutput::Hibernated`].
    pub fn request_eviction(&mut self) {
        if self.room.is_some() {
            self.eviction_requested = true;
            self.try_evict();
        }
    }

    /// Drops everything in memory, as a process crash would: unconfirmed writes are lost
    /// with it. Storage and (on platforms where sockets survive) attachments are not touched.
    pub fn crash(&mut self) {
        self.room = None;
        self.wake_at = None;
        self.eviction_requested = false;
        self.hibernated_event = false;
    }

    fn try_evict(&mut self) {
        if self.room.as_ref().is_some_and(Room::is_quiescent) {
            self.stats_before_eviction = self.take_stats();
            self.wake_at = self.room.as_ref().and_then(Room::poll_timeout);
            self.room = None;
            self.eviction_requested = false;
            self.hibernated_event = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::PublishId;

    /// Publishes one message in `host`'s room and fails its write, as a full disk would.
    fn publish_and_fail_the_write(host: &mut RoomHost, now: Timestamp) {
        let room = host.room_mut(now).unwrap();
        room.handle_publish(PublishId(1), "ops", "lost", now)
            .unwrap();
        let Some(HostOutput::Room(Output::Persist(batch))) = host.poll_output() else {
            panic!("the publish starts a batch");
        };
        let failed = host
            .room_mut(now)
            .unwrap()
            .handle_write_failed(batch.id, now);
        assert_eq!(failed.unwrap(), vec![PublishId(1)]);
    }

    #[test]
    fn messages_refused_by_storage_are_counted_across_evictions() {
        let mut host = RoomHost::new(RoomConfig::default(), 1_000);
        host.restore(&[], [], Timestamp(5_000)).unwrap();
        publish_and_fail_the_write(&mut host, Timestamp(5_000));
        assert_eq!(host.take_stats().messages_refused_storage, 1);
        assert_eq!(host.take_stats().messages_refused_storage, 0, "taken once");

        publish_and_fail_the_write(&mut host, Timestamp(5_001));
        host.request_eviction();
        assert_eq!(host.poll_output(), Some(HostOutput::Hibernated));
        host.restore(&[], [], Timestamp(9_000)).unwrap();
        publish_and_fail_the_write(&mut host, Timestamp(9_000));
        let stats = host.take_stats();
        assert_eq!(
            stats.messages_refused_storage, 2,
            "one before the eviction, one after"
        );
        assert_eq!(stats.messages_durable, 0);
    }

    #[test]
    fn outputs_within_a_turn_come_out_but_the_batch_waits_for_the_turn_s_end() {
        let mut host = RoomHost::new(RoomConfig::default(), 1_000);
        assert_eq!(host.poll_output_within_turn(), None, "nothing resident");
        let now = Timestamp(5_000);
        host.restore(&[], [], now).unwrap();
        let room = host.room_mut(now).unwrap();
        room.handle_connect(ConnId(1), [10, 0, 0, 1].into(), now)
            .unwrap();
        room.handle_text(ConnId(1), r#"{"name":"ada"}"#, now)
            .unwrap();
        room.handle_publish(PublishId(1), "ops", "hello", now)
            .unwrap();
        let mut within = Vec::new();
        while let Some(output) = host.poll_output_within_turn() {
            within.push(output);
        }
        assert!(
            within.iter().any(|o| matches!(
                o,
                Output::Send {
                    conn: ConnId(1),
                    ..
                }
            )),
            "the join's frames come out within the turn: {within:?}"
        );
        assert!(!within.iter().any(|o| matches!(o, Output::Persist(_))));
        assert!(matches!(
            host.poll_output(),
            Some(HostOutput::Room(Output::Persist(_)))
        ));
    }

    #[test]
    fn an_idle_room_is_due_at_its_idle_deadline_and_evicted_then_not_before() {
        let mut host = RoomHost::new(RoomConfig::default(), 1_000);
        assert_eq!(host.poll_timeout(), None, "nothing resident, nothing due");
        host.restore(&[], [], Timestamp(5_000)).unwrap();
        assert_eq!(host.poll_timeout(), Some(Timestamp(6_000)));
        host.handle_timeout(Timestamp(5_999));
        while host.poll_output().is_some() {}
        assert!(host.is_resident(), "not idle long enough");
        host.handle_timeout(Timestamp(6_000));
        assert_eq!(host.poll_output(), Some(HostOutput::Hibernated));
        assert!(!host.is_resident());
    }
}
