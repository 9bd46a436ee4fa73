//! The rate limiter under arbitrary clocks.

use arbitrary::{Arbitrary, Unstructured};
use edgechat_core::limiter::{
    RateLimiter, RateLimiterConfig, SessionLimiter, SessionLimiterState, VERDICT_TIMEOUT_MS,
};
use edgechat_core::Timestamp;

/// The latest clock reading considered: JavaScript's largest safe integer.
///
/// A Durable Object's clock is `Date.now()`, which never exceeds 8.64e15, far below this.
/// Above it the limiter's arithmetic saturates at `u64::MAX` (the end of time), where no
/// budget can be enforced; that is outside any clock an adapter can supply.
pub const CLOCK_MAX_MS: u64 = (1 << 53) - 1;

/// The most clock events one input runs.
const EVENTS_MAX: usize = 256;

#[derive(Debug, Arbitrary)]
enum Clock {
    Forward(u16),
    Jump(u32),
    Back(u32),
    Set(u64),
}

#[derive(Debug, Arbitrary)]
struct Event {
    clock: Clock,
    /// How many actions happen at this reading (0 to 7).
    actions: u8,
    /// A session-limiter operation at this reading.
    session: SessionOp,
}

#[derive(Debug, Arbitrary)]
enum SessionOp {
    None,
    TryAccept,
    /// Answer question `seq` (or the current one) with `wait_ms`.
    Verdict {
        stale: Option<u32>,
        wait_ms: u32,
    },
}

/// Drives a [`RateLimiter`] and a [`SessionLimiter`] with arbitrary settings and clocks.
///
/// Checks, over every window of every run:
/// - at most [`RateLimiterConfig::burst_max`] actions are answered "no wait" in any window,
///   measured on the limiter's monotonic view of time (the latest clock any action was
///   counted at), so a clock stepping back cannot reset the budget;
/// - a wait never exceeds `actions so far * cost` (no overflow, no inflation from a clock
///   going back);
/// - an idle limiter answers like a fresh one;
/// - the session limiter accepts a frame only when idle, after its cooldown, or after the
///   verdict timeout, and applies only the answer to its latest question.
pub fn rate_limiter(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let (Ok(cost), Ok(grace), Ok(start)) = (
        u.int_in_range(1..=u64::from(u32::MAX)),
        u.int_in_range(0..=1u64 << 40),
        u.int_in_range(0..=CLOCK_MAX_MS),
    ) else {
        return;
    };
    let config = RateLimiterConfig {
        cost_ms: cost,
        grace_ms: grace,
    };
    let events: Vec<Event> = match u.arbitrary_iter::<Event>() {
        Ok(iter) => iter.take(EVENTS_MAX).map_while(Result::ok).collect(),
        Err(_) => return,
    };
    let mut limiter = RateLimiter::new(config);
    let mut session = SessionLimiter::default();
    let mut now = start;
    let mut monotonic = 0u64;
    let mut actions: u128 = 0;
    // Monotonic times of the zero-wait answers, in order.
    let mut free: Vec<u64> = Vec::new();
    for event in &events {
        now = match event.clock {
            Clock::Forward(ms) => now.saturating_add(ms.into()),
            Clock::Jump(ms) => now.saturating_add(ms.into()),
            Clock::Back(ms) => now.saturating_sub(ms.into()),
            Clock::Set(t) => t,
        }
        .min(CLOCK_MAX_MS);
        let t = Timestamp(now);

        if limiter.is_idle(t) {
            let mut fresh = RateLimiter::new(config);
            assert_eq!(
                limiter.clone().handle_action(t),
                fresh.handle_action(t),
                "an idle limiter must answer like a fresh one"
            );
        }
        let actions_now = event.actions % 8;
        if actions_now > 0 {
            // The limiter's own view of time: the latest clock an action was counted at.
            monotonic = monotonic.max(now);
        }
        for _ in 0..actions_now {
            let wait = limiter.handle_action(t);
            actions += 1;
            assert!(
                u128::from(wait) <= actions * u128::from(cost),
                "wait {wait} after {actions} actions of {cost} ms"
            );
            if wait == 0 {
                free.push(monotonic);
                check_burst(&config, &free);
            }
        }
        check_session(&mut session, &event.session, t);
    }
}

/// The newest zero-wait answer, with every earlier one, must fit the burst bound.
fn check_burst(config: &RateLimiterConfig, free: &[u64]) {
    let newest = *free.last().expect("just pushed");
    for (index, &earlier) in free.iter().enumerate().rev() {
        let count = (free.len() - index) as u64;
        let window = newest - earlier;
        let bound = config.burst_max(window);
        assert!(
            count <= bound,
            "{count} free actions within {window} ms, burst_max is {bound} ({config:?})"
        );
        // Earlier pairs span wider windows (so larger bounds) but never count more than
        // every free action: once the bound covers them all, nothing earlier can break it.
        if bound >= free.len() as u64 {
            break;
        }
    }
}

fn check_session(session: &mut SessionLimiter, op: &SessionOp, now: Timestamp) {
    let before = *session;
    match op {
        SessionOp::None => {}
        SessionOp::TryAccept => {
            let expected = match before.state {
                SessionLimiterState::Idle => true,
                SessionLimiterState::Waiting { asked_at } => {
                    now.millis_since(asked_at) >= VERDICT_TIMEOUT_MS
                }
                SessionLimiterState::Cooldown { until } => now >= until,
            };
            assert_eq!(session.try_accept(now), expected);
            if expected {
                assert_eq!(session.seq, before.seq.wrapping_add(1));
                assert_eq!(
                    session.state,
                    SessionLimiterState::Waiting { asked_at: now }
                );
            } else {
                assert_eq!(*session, before);
            }
        }
        SessionOp::Verdict { stale, wait_ms } => {
            let seq = stale.unwrap_or(before.seq);
            let wait_ms = u64::from(*wait_ms);
            let applies =
                seq == before.seq && matches!(before.state, SessionLimiterState::Waiting { .. });
            assert_eq!(session.handle_verdict(seq, wait_ms, now), applies);
            if !applies {
                assert_eq!(*session, before);
            } else if wait_ms == 0 {
                assert_eq!(session.state, SessionLimiterState::Idle);
            } else {
                assert_eq!(
                    session.state,
                    SessionLimiterState::Cooldown {
                        until: now.plus_millis(wait_ms)
                    }
                );
            }
        }
    }
}
