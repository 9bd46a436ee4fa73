//! One connection's write queue: the encoded frames not yet written, and one state that
//! says what the queue still accepts and who writes it.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::Bytes;

/// Most frames queued when the connection queues one of its own (a ping, a pong): the
/// room bounds its frames after each flush, and this bounds a peer that sends pings but
/// never reads the pongs.
pub(super) const QUEUE_LEN_MAX: usize = 8 * 1024;
/// Queue slots an empty queue keeps; a join's burst (hundreds of frames) would otherwise
/// leave every idle connection holding kilobytes of empty slots.
const QUEUE_CAPACITY_KEPT: usize = 8;

/// Who writes the queue to the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flusher {
    /// Whoever queued writes at once (the room, on the direct path).
    Caller,
    /// The socket did not take everything (or only the connection's task may write): the
    /// connection's task writes until the queue is empty, and callers only queue.
    Task,
}

/// What the queue still accepts, and who writes it.
///
/// ```text
///   Open ──peer sent a close──► PeerClosing
///     │                             │
///     └──close frame / finish()─────┴──► Closed ──queue written──► done (`drive` returns)
///
///   any state ──a write failed──► Broken (the queue is dropped; nothing more is written)
/// ```
/// States only move along the arrows: `peer_closing()` after a close changes nothing, and
/// nothing leaves `Broken`. The [`Flusher`] moves between `Caller` and `Task` in every
/// state but `Broken`, which has nothing to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum QueueState {
    /// Room frames and the connection's own control frames are queued.
    Open(Flusher),
    /// The peer sent a close: room frames are dropped, the answer to it still goes out.
    PeerClosing(Flusher),
    /// A close frame is queued, or the connection is finishing: nothing more is queued,
    /// what is queued is still written.
    Closed(Flusher),
    /// A write failed: nothing is queued or written.
    Broken,
}

/// What happened to a control frame of the connection's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ControlQueued {
    /// Queued.
    Yes,
    /// The queue is closed or broken: dropped.
    Dropped,
    /// The queue is at [`QUEUE_LEN_MAX`]: dropped, and the peer is too slow.
    Full,
}

/// Encoded frames not yet written; the first may be partly written.
#[derive(Debug)]
pub(super) struct WriteQueue {
    pending: VecDeque<Bytes>,
    /// Bytes of the first pending frame already written.
    written: usize,
    state: QueueState,
}

impl Default for WriteQueue {
    fn default() -> Self {
        WriteQueue {
            pending: VecDeque::new(),
            written: 0,
            state: QueueState::Open(Flusher::Caller),
        }
    }
}

impl WriteQueue {
    #[cfg(test)]
    pub(super) fn state(&self) -> QueueState {
        self.state
    }

    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub(super) fn is_broken(&self) -> bool {
        self.state == QueueState::Broken
    }

    /// Closed and fully written: the connection's task has nothing left to do.
    pub(super) fn is_done(&self) -> bool {
        matches!(self.state, QueueState::Closed(_)) && self.pending.is_empty()
    }

    /// Who writes; `None` once broken.
    pub(super) fn flusher(&self) -> Option<Flusher> {
        match self.state {
            QueueState::Open(flusher)
            | QueueState::PeerClosing(flusher)
            | QueueState::Closed(flusher) => Some(flusher),
            QueueState::Broken => None,
        }
    }

    /// Whether the connection's task should write now: it owns the flushing, or the queue
    /// is closed with frames left (nobody else will flush them).
    pub(super) fn task_has_work(&self) -> bool {
        match self.state {
            QueueState::Open(flusher) | QueueState::PeerClosing(flusher) => {
                flusher == Flusher::Task
            }
            QueueState::Closed(flusher) => flusher == Flusher::Task || !self.pending.is_empty(),
            QueueState::Broken => false,
        }
    }

    fn set_flusher(&mut self, flusher: Flusher) {
        self.state = match self.state {
            QueueState::Open(_) => QueueState::Open(flusher),
            QueueState::PeerClosing(_) => QueueState::PeerClosing(flusher),
            QueueState::Closed(_) => QueueState::Closed(flusher),
            QueueState::Broken => QueueState::Broken,
        };
    }

    /// The connection's task writes from now on, until the queue is empty.
    pub(super) fn hand_to_task(&mut self) {
        self.set_flusher(Flusher::Task);
    }

    /// The task wrote what it took; with the queue empty, callers write directly again.
    pub(super) fn task_wrote(&mut self) {
        if self.pending.is_empty() {
            self.set_flusher(Flusher::Caller);
        }
    }

    /// Queues a room frame; only an open queue takes one.
    pub(super) fn push_room(&mut self, frame: Bytes) -> bool {
        if !matches!(self.state, QueueState::Open(_)) {
            return false;
        }
        self.pending.push_back(frame);
        true
    }

    /// Queues a control frame of the connection's own (a ping, the answer to a close).
    pub(super) fn push_control(&mut self, frame: Bytes) -> ControlQueued {
        match self.state {
            QueueState::Closed(_) | QueueState::Broken => ControlQueued::Dropped,
            _ if self.pending.len() >= QUEUE_LEN_MAX => ControlQueued::Full,
            _ => {
                self.pending.push_back(frame);
                ControlQueued::Yes
            }
        }
    }

    /// Queues `close` after everything queued so far and closes the queue; with `at_once`,
    /// frames not yet started are dropped first. Returns whether it was queued (not if the
    /// queue was already closed or broken).
    pub(super) fn push_close(&mut self, close: Bytes, at_once: bool) -> bool {
        let flusher = match self.state {
            QueueState::Open(flusher) | QueueState::PeerClosing(flusher) => flusher,
            QueueState::Closed(_) | QueueState::Broken => return false,
        };
        if at_once {
            let started = usize::from(self.written > 0);
            self.pending.truncate(started);
        }
        self.pending.push_back(close);
        self.state = QueueState::Closed(flusher);
        true
    }

    /// The peer sent a close: room frames are dropped from now on.
    pub(super) fn peer_closing(&mut self) {
        if let QueueState::Open(flusher) = self.state {
            self.state = QueueState::PeerClosing(flusher);
        }
    }

    /// Nothing more will be queued.
    pub(super) fn finish(&mut self) {
        if let QueueState::Open(flusher) | QueueState::PeerClosing(flusher) = self.state {
            self.state = QueueState::Closed(flusher);
        }
    }

    /// A write failed: drop everything.
    pub(super) fn fail(&mut self) {
        self.state = QueueState::Broken;
        self.pending = VecDeque::new();
        self.written = 0;
    }

    /// Points `slices` at the unwritten bytes of the first frames; returns how many it set.
    pub(super) fn fill<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        let mut count = 0;
        for (slot, frame) in slices.iter_mut().zip(&self.pending) {
            let skip = if count == 0 { self.written } else { 0 };
            *slot = IoSlice::new(&frame[skip..]);
            count += 1;
        }
        count
    }

    /// `written` bytes from the head of the queue went out.
    pub(super) fn advance(&mut self, mut written: usize) {
        while written > 0 {
            let head_left = self.pending[0].len() - self.written;
            if written >= head_left {
                written -= head_left;
                self.written = 0;
                self.pending.pop_front();
            } else {
                self.written += written;
                written = 0;
            }
        }
        self.shrink();
    }

    /// Takes up to `max` whole frames out, for a writer that cannot borrow the queue while
    /// it writes (the connection's task, under TLS).
    pub(super) fn take(&mut self, max: usize) -> Vec<Bytes> {
        debug_assert_eq!(self.written, 0, "only the direct path writes partly");
        let count = self.pending.len().min(max);
        let frames = self.pending.drain(..count).collect();
        self.shrink();
        frames
    }

    fn shrink(&mut self) {
        if self.pending.is_empty() && self.pending.capacity() > QUEUE_CAPACITY_KEPT {
            self.pending = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(byte: u8, len: usize) -> Bytes {
        Bytes::from(vec![byte; len])
    }

    fn queue_in(state: QueueState) -> WriteQueue {
        WriteQueue {
            state,
            ..WriteQueue::default()
        }
    }

    /// Each row: a state, and what room frames, control frames and a close do in it.
    #[test]
    fn what_each_state_accepts() {
        use Flusher::{Caller, Task};
        let rows = [
            (QueueState::Open(Caller), true, ControlQueued::Yes, true),
            (QueueState::Open(Task), true, ControlQueued::Yes, true),
            (
                QueueState::PeerClosing(Caller),
                false,
                ControlQueued::Yes,
                true,
            ),
            (
                QueueState::Closed(Caller),
                false,
                ControlQueued::Dropped,
                false,
            ),
            (
                QueueState::Closed(Task),
                false,
                ControlQueued::Dropped,
                false,
            ),
            (QueueState::Broken, false, ControlQueued::Dropped, false),
        ];
        for (state, room, control, close) in rows {
            assert_eq!(queue_in(state).push_room(frame(1, 1)), room, "{state:?}");
            assert_eq!(
                queue_in(state).push_control(frame(2, 1)),
                control,
                "{state:?}"
            );
            assert_eq!(
                queue_in(state).push_close(frame(8, 2), false),
                close,
                "{state:?}"
            );
        }
    }

    /// Each row: a state, an event, the state after it.
    #[test]
    fn transitions_only_move_forward() {
        use Flusher::{Caller, Task};
        type Event = fn(&mut WriteQueue);
        let peer_closing: Event = WriteQueue::peer_closing;
        let finish: Event = WriteQueue::finish;
        let fail: Event = WriteQueue::fail;
        let close: Event = |queue| {
            let _ = queue.push_close(frame(8, 2), true);
        };
        let rows: [(QueueState, Event, QueueState); 11] = [
            (
                QueueState::Open(Caller),
                peer_closing,
                QueueState::PeerClosing(Caller),
            ),
            (QueueState::Open(Task), finish, QueueState::Closed(Task)),
            (QueueState::Open(Caller), close, QueueState::Closed(Caller)),
            (
                QueueState::PeerClosing(Task),
                close,
                QueueState::Closed(Task),
            ),
            (
                QueueState::PeerClosing(Caller),
                finish,
                QueueState::Closed(Caller),
            ),
            (
                QueueState::Closed(Caller),
                peer_closing,
                QueueState::Closed(Caller),
            ),
            (QueueState::Closed(Task), finish, QueueState::Closed(Task)),
            (QueueState::Open(Task), fail, QueueState::Broken),
            (QueueState::Closed(Caller), fail, QueueState::Broken),
            (QueueState::Broken, finish, QueueState::Broken),
            (QueueState::Broken, peer_closing, QueueState::Broken),
        ];
        for (before, event, after) in rows {
            let mut queue = queue_in(before);
            event(&mut queue);
            assert_eq!(queue.state(), after, "from {before:?}");
        }
    }

    #[test]
    fn the_task_flushes_until_the_queue_is_empty() {
        let mut queue = WriteQueue::default();
        assert!(queue.push_room(frame(1, 10)));
        assert!(!queue.task_has_work(), "the caller flushes an open queue");
        queue.hand_to_task();
        assert_eq!(queue.flusher(), Some(Flusher::Task));
        queue.task_wrote();
        assert_eq!(queue.flusher(), Some(Flusher::Task), "frames are left");
        queue.advance(10);
        queue.task_wrote();
        assert_eq!(queue.flusher(), Some(Flusher::Caller));
        // Closed with frames left: the task writes them even when it does not own flushing.
        assert!(queue.push_close(frame(8, 2), false));
        assert!(queue.task_has_work() && !queue.is_done());
        queue.advance(2);
        assert!(queue.is_done());
        queue.fail();
        assert_eq!(queue.flusher(), None);
        assert!(!queue.task_has_work());
    }

    #[test]
    fn partial_writes_advance_through_frames_and_a_close_keeps_the_started_one() {
        let mut queue = WriteQueue::default();
        for byte in 1..=3 {
            assert!(queue.push_room(frame(byte, 4)));
        }
        queue.advance(6); // the first frame and half of the second
        let unwritten = |queue: &WriteQueue| {
            let mut slices = [IoSlice::new(&[]); 4];
            let count = queue.fill(&mut slices);
            slices[..count]
                .iter()
                .map(|slice| slice.to_vec())
                .collect::<Vec<_>>()
        };
        assert_eq!(unwritten(&queue), [vec![2, 2], vec![3, 3, 3, 3]]);
        // A close at once drops the third frame but finishes the started second.
        assert!(queue.push_close(frame(8, 2), true));
        assert_eq!(unwritten(&queue), [vec![2, 2], vec![8, 8]]);
    }

    #[test]
    fn control_frames_are_bounded() {
        let mut queue = WriteQueue::default();
        for _ in 0..QUEUE_LEN_MAX {
            assert_eq!(queue.push_control(frame(9, 2)), ControlQueued::Yes);
        }
        assert_eq!(queue.push_control(frame(9, 2)), ControlQueued::Full);
        assert_eq!(queue.len(), QUEUE_LEN_MAX);
    }
}
