//! Pipelined frames: a connection may send while the limiter's answer about its previous
//! frame is still on its way.
//!
//! The demo rejects every frame that arrives while an answer is outstanding, so one client
//! sending faster than a round trip to its limiter (a bot, a bridge, a pasted paragraph) has
//! most of its messages refused although the limiter would allow them. Here such frames wait
//! in a small per-connection queue and are decided in order as answers arrive: each is still
//! one action counted by the limiter before it takes effect, and a frame reached during a
//! cooldown is still refused, so the limiter lets through exactly what it did before. Only
//! frames beyond the queue's bounds get the rate-limit error at once.

use std::collections::VecDeque;

use super::{ConnId, Phase, Room, RoomError};
use crate::protocol::{FrameError, ERROR_RATE_LIMITED};
use crate::time::Timestamp;

/// The most frames one connection may have waiting for its limiter's answer; more are
/// refused with the rate-limit error. Enough for a paste of a few lines or a bridge's burst.
pub const PIPELINED_FRAMES_MAX: usize = 8;

/// The longest a frame is held waiting for its connection's limiter answers. A limiter
/// slower than this is overloaded or unreachable: the frame is then refused with the
/// rate-limit error (what the demo answers at once), so that no client waits long for an
/// answer.
pub const PIPELINE_WAIT_MAX_MS: u64 = 1_000;

/// The most bytes of text one connection may have waiting for its limiter's answer, so that
/// held frames cost at most this much memory per connection (a chat frame is well under
/// 1 KiB; larger ones would be refused anyway).
pub const PIPELINED_BYTES_MAX: usize = 8 * 1024;

/// A frame as it arrives from a connection.
#[derive(Debug, Clone, Copy)]
pub(super) enum Incoming<'a> {
    Text(&'a str),
    /// A binary frame (its bytes are never needed: it is answered with an error).
    Binary,
}

/// The frames one connection has waiting for its limiter's answer, oldest first.
#[derive(Debug, Clone, Default)]
pub(super) struct HeldFrames {
    /// Each frame with when it arrived; `None` for a binary frame.
    frames: VecDeque<(Timestamp, Option<Box<str>>)>,
    bytes: usize,
}

impl HeldFrames {
    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Holds `frame`, arrived at `now`, if it fits within the bounds; `false` if it does not.
    fn try_push(&mut self, frame: Incoming<'_>, now: Timestamp) -> bool {
        let len = match frame {
            Incoming::Text(text) => text.len(),
            Incoming::Binary => 0,
        };
        if self.frames.len() >= PIPELINED_FRAMES_MAX || self.bytes + len > PIPELINED_BYTES_MAX {
            return false;
        }
        self.bytes += len;
        let frame = match frame {
            Incoming::Text(text) => Some(text.into()),
            Incoming::Binary => None,
        };
        self.frames.push_back((now, frame));
        true
    }

    fn pop(&mut self) -> Option<Option<Box<str>>> {
        let (_, frame) = self.frames.pop_front()?;
        self.bytes -= frame.as_deref().map_or(0, str::len);
        Some(frame)
    }

    /// When the oldest held frame has waited as long as it may.
    fn deadline(&self) -> Option<Timestamp> {
        let (arrived_at, _) = self.frames.front()?;
        Some(arrived_at.plus_millis(PIPELINE_WAIT_MAX_MS))
    }

    /// Whether the oldest held frame has waited as long as it may at `now`, or the clock has
    /// stepped back past its arrival (its wait can no longer be measured, and must not
    /// stretch by the size of the step).
    fn is_late(&self, now: Timestamp) -> bool {
        self.frames.front().is_some_and(|(arrived_at, _)| {
            now < *arrived_at || now >= arrived_at.plus_millis(PIPELINE_WAIT_MAX_MS)
        })
    }
}

impl Room {
    /// A frame arrived from `conn`: decided now, held until the limiter answers, or refused
    /// when the connection's queue is full.
    pub(super) fn receive_frame(
        &mut self,
        conn: ConnId,
        frame: Incoming<'_>,
        now: Timestamp,
    ) -> Result<(), RoomError> {
        if !self.sessions.contains_key(&conn) {
            return Err(RoomError::UnknownConnection(conn));
        }
        // An answer that never came must not keep earlier frames waiting behind this one.
        self.release_held(conn, now);
        let may_wait = self.config.limiter_may_wait;
        let session = self.sessions.get_mut(&conn).expect("checked above");
        let must_wait =
            !session.held.is_empty() || (may_wait && session.limiter.awaiting_answer(now));
        if !must_wait || session.phase == Phase::Closing {
            return self.decide_frame(conn, frame, now);
        }
        if session.held.try_push(frame, now) {
            self.held_conns.insert(conn);
        } else {
            self.stats.frames_rate_limited += 1;
            self.send_error(conn, ERROR_RATE_LIMITED);
        }
        Ok(())
    }

    /// Decides one frame now: through the limiter, then as a join, chat, token or binary
    /// frame.
    fn decide_frame(
        &mut self,
        conn: ConnId,
        frame: Incoming<'_>,
        now: Timestamp,
    ) -> Result<(), RoomError> {
        let Some(expecting) = self.admit_frame(conn, now)? else {
            return Ok(());
        };
        match frame {
            Incoming::Text(text) => self.process_text(conn, expecting, text, now),
            Incoming::Binary => self.send_error(conn, &FrameError::Binary.to_string()),
        }
        Ok(())
    }

    /// Decides `conn`'s held frames in order while no answer is outstanding: after an answer
    /// (a cooldown refuses them one by one, as it would have had they arrived then) or once
    /// the answer is overdue.
    pub(super) fn release_held(&mut self, conn: ConnId, now: Timestamp) {
        let may_wait = self.config.limiter_may_wait;
        loop {
            let Some(session) = self.sessions.get_mut(&conn) else {
                self.held_conns.remove(&conn);
                return;
            };
            if session.held.is_empty() {
                self.held_conns.remove(&conn);
                return;
            }
            if may_wait && session.limiter.awaiting_answer(now) {
                if session.held.is_late(now) {
                    self.refuse_late(conn, now);
                }
                return;
            }
            let frame = session.held.pop().expect("checked above");
            let frame = match &frame {
                Some(text) => Incoming::Text(text),
                None => Incoming::Binary,
            };
            // The session exists (checked above), so this cannot fail.
            let _ = self.decide_frame(conn, frame, now);
        }
    }

    /// Refuses, each with the rate-limit error, the frames `conn` has held as long as they
    /// may (younger ones keep waiting: a refused frame never reorders the accepted ones).
    fn refuse_late(&mut self, conn: ConnId, now: Timestamp) {
        let mut refused = 0;
        if let Some(session) = self.sessions.get_mut(&conn) {
            while session.held.is_late(now) {
                session.held.pop();
                refused += 1;
            }
            if session.held.is_empty() {
                self.held_conns.remove(&conn);
            }
            // A closing socket gets nothing more: its frames are moot (as in `admit_frame`).
            if session.phase == Phase::Closing {
                return;
            }
        }
        for _ in 0..refused {
            self.stats.frames_rate_limited += 1;
            self.send_error(conn, ERROR_RATE_LIMITED);
        }
    }

    /// When held frames must be refused because they have waited as long as they may (see
    /// [`PIPELINE_WAIT_MAX_MS`]).
    pub(super) fn held_frames_timeout(&self) -> Option<Timestamp> {
        self.held_conns
            .iter()
            .filter_map(|conn| self.sessions.get(conn)?.held.deadline())
            .min()
    }

    /// Settles the held frames of every connection whose oldest has waited as long as it may
    /// at `now`.
    pub(super) fn release_overdue(&mut self, now: Timestamp) {
        let overdue: Vec<ConnId> = self
            .held_conns
            .iter()
            .filter(|conn| {
                self.sessions.get(conn).is_some_and(|session| {
                    !session.limiter.awaiting_answer(now) || session.held.is_late(now)
                })
            })
            .copied()
            .collect();
        for conn in overdue {
            self.release_held(conn, now);
        }
    }
}
