//! The `RateLimiter` Durable Object: one per client IP, wrapping the core's
//! [`edgechat_core::limiter::RateLimiter`].
//!
//! A room asks with `POST /action`; the answer is `{"wait_ms": n}`. The object may be
//! evicted from memory whenever it is idle on the platform's terms (no request for a few
//! seconds), which can be long before the core limiter is idle (its budget can reach 20 s and
//! more into the future). So after every action the adapter stores the limiter's two numbers
//! (the next allowed time and the latest time seen), and rebuilds an identical limiter from
//! them after an eviction, by replaying actions through the core's own API.

use std::cell::RefCell;

use edgechat_core::limiter::{RateLimiter as CoreLimiter, RateLimiterConfig};
use edgechat_core::storage::{BatchId, Value, Write, WriteBatch};
use edgechat_core::Timestamp;
use worker::{durable_object, DurableObject, Env, Request, Response, Result, State};

use crate::{json, now, sql, text};

/// Storage key of the limiter's state: `"<next_allowed_ms>,<latest_now_ms>"`.
const STATE_KEY: &str = "limiter/state";

/// One client IP's rate limiter.
#[durable_object]
pub struct RateLimiter {
    state: State,
    resident: RefCell<Option<Resident>>,
}

/// The limiter and the two numbers that reproduce it.
struct Resident {
    limiter: CoreLimiter,
    latest_now: Timestamp,
}

impl DurableObject for RateLimiter {
    fn new(state: State, _env: Env) -> Self {
        if let Err(error) = sql::ensure_schema(&state.storage()) {
            worker::console_error!("rate limiter: cannot create its table: {error}");
        }
        RateLimiter {
            state,
            resident: RefCell::new(None),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        if req.path() != "/action" {
            return text(404, "Not found");
        }
        let config = RateLimiterConfig::default();
        let storage = self.state.storage();
        let mut slot = self.resident.borrow_mut();
        if slot.is_none() {
            let stored = sql::get(&storage, STATE_KEY)?;
            *slot = Some(restore(config, stored.as_deref()));
        }
        let resident = slot.as_mut().expect("restored above");
        let at = now().max(resident.latest_now);
        let wait_ms = resident.limiter.handle_action(at);
        resident.latest_now = at;
        let next_allowed = next_allowed(&resident.limiter, at, config);
        let value = Value::from(format!("{},{}", next_allowed.0, at.0));
        // Durable before the answer leaves (the output gate would hold it anyway).
        sql::commit(
            &storage,
            &WriteBatch {
                id: BatchId(0),
                writes: vec![Write::Put {
                    key: STATE_KEY.to_owned(),
                    value,
                }],
            },
        )?;
        json(200, format!(r#"{{"wait_ms":{wait_ms}}}"#))
    }
}

/// The limiter's next allowed time: the earliest moment it is idle (equivalent to a fresh
/// limiter). It lies in `[at, at + cost + grace + wait]`; found by bisection on `is_idle`.
fn next_allowed(limiter: &CoreLimiter, at: Timestamp, config: RateLimiterConfig) -> Timestamp {
    let (mut lo, mut hi) = (at.0, at.0.saturating_add(config.cost_ms));
    while !limiter.is_idle(Timestamp(hi)) {
        lo = hi;
        hi = hi.saturating_add(hi - at.0 + 1);
    }
    // Invariant: not idle at `lo` (or `lo == at`), idle at `hi`.
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if limiter.is_idle(Timestamp(mid)) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    if limiter.is_idle(Timestamp(lo)) {
        Timestamp(lo)
    } else {
        Timestamp(hi)
    }
}

/// Rebuilds the limiter whose next allowed time was `next` and latest time seen `latest`.
///
/// Each action moves the next allowed time to `max(next, now) + cost`. From a fresh limiter,
/// `k` actions at `next - (k + 1) * cost` put it at `next - cost`, and one action at `latest`
/// (which is at most `next - cost`) then puts it exactly at `next`, with `latest` as the
/// latest time seen.
fn restore(config: RateLimiterConfig, stored: Option<&str>) -> Resident {
    let mut limiter = CoreLimiter::new(config);
    let parsed = stored.and_then(|s| {
        let (next, latest) = s.split_once(',')?;
        Some((next.parse::<u64>().ok()?, latest.parse::<u64>().ok()?))
    });
    let Some((next, latest)) = parsed else {
        return Resident {
            limiter,
            latest_now: Timestamp::ZERO,
        };
    };
    let cost = config.cost_ms.max(1);
    if next >= latest.saturating_add(cost) {
        let ahead = next - latest; // at least one cost
        let k = ahead.div_ceil(cost).saturating_sub(1).max(1);
        let start = next.saturating_sub((k + 1) * cost);
        for _ in 0..k {
            limiter.handle_action(Timestamp(start));
        }
    }
    limiter.handle_action(Timestamp(latest));
    Resident {
        limiter,
        latest_now: Timestamp(latest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A limiter rebuilt from its two stored numbers answers every later action exactly as
    /// the original does.
    #[test]
    fn restore_reproduces_the_limiter() {
        let config = RateLimiterConfig::default();
        let t0 = 1_700_000_000_000u64;
        // Action times: bursts, pauses, a flood, a clock step backwards.
        let script: Vec<u64> = [0, 0, 0, 0, 0, 1, 2, 7_000, 7_001, 30_000, 30_000, 29_000]
            .into_iter()
            .chain(std::iter::repeat_n(40_000, 30))
            .chain([40_001, 200_000, 200_500])
            .collect();
        for split in 0..script.len() {
            let mut original = CoreLimiter::new(config);
            let mut latest = Timestamp::ZERO;
            for &dt in &script[..=split] {
                let at = Timestamp(t0 + dt).max(latest);
                original.handle_action(at);
                latest = at;
            }
            let next = next_allowed(&original, latest, config);
            let mut rebuilt = restore(config, Some(&format!("{},{}", next.0, latest.0)));
            assert_eq!(rebuilt.latest_now, latest);
            for &dt in &script[split + 1..] {
                let at = Timestamp(t0 + dt);
                assert_eq!(
                    rebuilt.limiter.handle_action(at),
                    original.handle_action(at),
                    "split {split}, action at +{dt}"
                );
            }
            for probe in [0u64, 1, 4_999, 5_000, 25_000, 1_000_000] {
                let at = latest.plus_millis(probe);
                assert_eq!(rebuilt.limiter.is_idle(at), original.is_idle(at));
            }
            assert_eq!(rebuilt.limiter, original, "split {split}");
        }
        // Nothing stored: a fresh limiter.
        assert_eq!(restore(config, None).limiter, CoreLimiter::new(config));
    }
}
