//! The oracle's own model of one session's rate limiting, written from the protocol's rule
//! (docs/PROTOCOL.md, "Rate limiter") and not from core's `SessionLimiter`, so that a bug
//! there is not mirrored by the check meant to catch it.
//!
//! The rule: every frame a room processes is one action, asked of the IP's limiter; until
//! the answer comes the session's next frames wait (or are refused); an answer of `w > 0` ms
//! refuses every frame for `w` ms on the room's clock; an answer never received is given up
//! after [`ANSWER_GIVE_UP_MS`] and the next frame asks again. Times are the room's own clock
//! (milliseconds), so the model agrees with the room under skew and steps: both see the same
//! `now`.
//!
//! Besides the limiter state the model counts the session's frames that arrived and were not
//! yet decided (asked about, or refused): a frame arriving while none is pending and the
//! limiter is open is decided at once, so it must be asked about, never refused with the
//! rate-limit error (the lower bound, [`SessionModel::arrive`]).

/// How long a room waits for its limiter's answer before it asks again (the protocol's
/// 10 s: "an answer can be lost; asking again counts one more action").
pub const ANSWER_GIVE_UP_MS: u64 = 10_000;

/// The rate-limit error's text, as the protocol spells it.
pub const RATE_LIMITED: &str = "Your IP is being rate-limited, please try again later.";

/// Whether `frame` (as the room sends it) is the rate-limit error.
pub fn is_rate_limit_error(frame: &str) -> bool {
    crate::json::Object::parse(frame).is_some_and(|v| v.str("error") == Some(RATE_LIMITED))
}

/// Where a session's limiter stands, in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stand {
    /// No question outstanding, no cooldown: the next frame is processed.
    Open,
    /// A question was asked at `at` and is unanswered.
    Asked { at: u64 },
    /// Frames are refused before `until`.
    Cooling { until: u64 },
}

/// One session's limiter as the rules say it must be.
#[derive(Debug, Clone, Copy)]
pub struct SessionModel {
    /// The number of the latest question the room asked (the room numbers them 1, 2, …).
    seq: u32,
    stand: Stand,
    /// Frames arrived and not yet decided.
    pending: u32,
    /// The frame now arriving must be processed (set by [`SessionModel::arrive`], cleared by
    /// its decision).
    must_admit: bool,
}

impl Default for SessionModel {
    fn default() -> Self {
        SessionModel {
            seq: 0,
            stand: Stand::Open,
            pending: 0,
            must_admit: false,
        }
    }
}

impl SessionModel {
    /// Whether a frame may be processed at `now` by the limiter's state alone.
    fn open_at(&self, now: u64) -> bool {
        match self.stand {
            Stand::Open => true,
            Stand::Asked { at } => now.saturating_sub(at) >= ANSWER_GIVE_UP_MS,
            Stand::Cooling { until } => now >= until,
        }
    }

    /// A frame arrives at `now`. If nothing is pending and the limiter is open, the room
    /// must decide it at once by asking the limiter.
    pub fn arrive(&mut self, now: u64) {
        self.must_admit = self.pending == 0 && self.open_at(now);
        self.pending = self.pending.saturating_add(1);
    }

    /// The room is done with the arriving frame's input: whatever it decided was checked.
    pub fn settle(&mut self) {
        self.must_admit = false;
    }

    /// The room asked the limiter about question `seq` at `now` (it processed a frame).
    /// `Err` with what the model held if that was not allowed.
    pub fn asked(&mut self, seq: u32, now: u64) -> Result<(), String> {
        // Formatted only if wrong: formatting it every time was 2 % of a seed's CPU.
        let before = *self;
        let allowed = self.open_at(now) && seq == self.seq.wrapping_add(1);
        self.seq = seq;
        self.stand = Stand::Asked { at: now };
        self.pending = self.pending.saturating_sub(1);
        self.must_admit = false;
        if allowed {
            Ok(())
        } else {
            Err(format!("{before:?}"))
        }
    }

    /// The room refused a frame with the rate-limit error. `Err` if the model says the
    /// frame had to be processed.
    pub fn refused(&mut self) -> Result<(), String> {
        let before = *self;
        let wrong = self.must_admit;
        self.pending = self.pending.saturating_sub(1);
        self.must_admit = false;
        if wrong {
            Err(format!("{before:?}"))
        } else {
            Ok(())
        }
    }

    /// Whether the room asked the limiter at `now` (so a frame it just answered with a
    /// frame error was counted as an action, as the protocol says every frame is).
    pub fn just_asked(&self, now: u64) -> bool {
        matches!(self.stand, Stand::Asked { at } if at == now)
    }

    /// The limiter answered question `seq`: wait `wait_ms` from `now`. A stale answer (not
    /// the latest question, or one already answered) changes nothing.
    pub fn answer(&mut self, seq: u32, wait_ms: u64, now: u64) {
        if seq != self.seq || !matches!(self.stand, Stand::Asked { .. }) {
            return;
        }
        self.stand = if wait_ms == 0 {
            Stand::Open
        } else {
            Stand::Cooling {
                until: now.saturating_add(wait_ms),
            }
        };
    }
}

/// The most actions a limiter (cost `cost_ms`, grace `grace_ms`) may answer with no wait
/// within any window of `window_ms`: two zero-wait answers `k` actions apart have next-allowed
/// times `k × cost` apart, both within `[window start + cost, window end + grace]`.
pub fn burst_max(cost_ms: u64, grace_ms: u64, window_ms: u64) -> u64 {
    (window_ms + grace_ms) / cost_ms.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cooldown_refuses_then_opens() {
        let mut m = SessionModel::default();
        m.arrive(0);
        assert!(m.asked(1, 0).is_ok());
        m.answer(1, 5_000, 100);
        m.arrive(200);
        assert!(m.refused().is_ok(), "refusing in a cooldown is right");
        m.arrive(5_100);
        assert!(
            m.refused().is_err(),
            "the cooldown is over: must be processed"
        );
        m.arrive(6_000);
        assert!(m.asked(2, 6_000).is_ok());
        m.arrive(6_001);
        assert!(m.asked(3, 6_001).is_err(), "question 2 is still open");
    }

    #[test]
    fn a_lost_answer_is_given_up_after_ten_seconds() {
        let mut m = SessionModel::default();
        m.arrive(0);
        assert!(m.asked(1, 0).is_ok());
        m.arrive(9_999);
        assert!(m.refused().is_ok());
        m.arrive(10_000);
        assert!(m.asked(2, 10_000).is_ok());
        m.answer(1, 0, 10_001);
        m.arrive(10_002);
        assert!(m.refused().is_ok(), "a stale answer opens nothing");
    }
}
