//! Rate limiters: one core [`RateLimiter`] per client IP (or per known user), shared by every
//! room and connection, held in this process and answered synchronously.
//!
//! A room asks with [`Limiters::decide`] while it drains its outputs and hands the answer
//! straight back to its core room, in the same turn: no task, no channel, no wake-up between
//! a frame and its verdict, so a connection's pipelined frames are decided together. (A task
//! per limiter cost two wake-ups per frame, about 6 ms under load, and a fast sender's held
//! frames overflowed the core's queue while they waited.) The Worker keeps a Durable Object
//! per limiter: there, rooms run in other isolates.
//!
//! The limiters sit in a sharded map; a shard's lock is held for one lookup and one
//! [`RateLimiter::handle_action`], never across an `.await`. All arithmetic is the core's.
//!
//! Memory stays bounded. A limiter that [`RateLimiter::is_idle`] is equivalent to a fresh
//! one, so a shard drops its idle limiters at most once per [`SWEEP_INTERVAL_MS`] (on the
//! next question it gets) and whenever it is full. A shard full of busy limiters (more than
//! [`SHARD_LIMITERS_MAX`] clients acting within their cooldowns) leaves a new client's
//! question unanswered: the core asks again after `VERDICT_TIMEOUT_MS`, which only makes the
//! limit stricter, never looser; dropping a busy limiter instead would reset its budget.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use edgechat_core::ids::ObjectId;
use edgechat_core::limiter::{RateLimiter, RateLimiterConfig};
use edgechat_core::Timestamp;

use crate::metrics::{inc, Metrics};

/// Shards of the limiter map (locks that rooms on different threads rarely share).
const SHARDS: usize = 16;
/// Most limiters one shard holds: 262,144 in all, about 100 bytes each.
pub(crate) const SHARD_LIMITERS_MAX: usize = 16_384;
/// How often, at most, a shard drops its idle limiters.
pub(crate) const SWEEP_INTERVAL_MS: u64 = 1_000;

/// One shard: its limiters and when it last dropped the idle ones.
#[derive(Debug, Default)]
struct Shard {
    limiters: HashMap<ObjectId, RateLimiter>,
    swept_at: Timestamp,
}

/// The rate limiters of this process.
#[derive(Debug)]
pub(crate) struct Limiters {
    shards: Box<[Mutex<Shard>]>,
    /// Picks a shard from an id.
    hasher: std::collections::hash_map::RandomState,
    metrics: Arc<Metrics>,
    config: RateLimiterConfig,
}

impl Limiters {
    pub(crate) fn new(metrics: Arc<Metrics>, config: RateLimiterConfig) -> Arc<Limiters> {
        Arc::new(Limiters {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            metrics,
            config,
        })
    }

    /// Counts one action at `now` against limiter `id` (an IP's or a user's, see
    /// [`limiter_id_for`](edgechat_core::limiter::limiter_id_for)) and returns how many
    /// milliseconds the client must wait; `None` if the limiter could not be held (its shard
    /// is full of busy limiters), and then the room asks again after `VERDICT_TIMEOUT_MS`.
    pub(crate) fn decide(&self, id: ObjectId, now: Timestamp) -> Option<u64> {
        let index = usize::try_from(self.hasher.hash_one(id) % SHARDS as u64).unwrap_or(0);
        // A panic while the lock was held cannot leave a limiter half-updated (one call into
        // the core), so a poisoned lock is still safe to use.
        let mut shard = self.shards[index]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let full = shard.limiters.len() >= SHARD_LIMITERS_MAX;
        if full || now >= shard.swept_at.plus_millis(SWEEP_INTERVAL_MS) {
            self.sweep(&mut shard, now);
        }
        if let Some(limiter) = shard.limiters.get_mut(&id) {
            return Some(limiter.handle_action(now));
        }
        if shard.limiters.len() >= SHARD_LIMITERS_MAX {
            drop(shard);
            inc(&self.metrics.limiter_asks_dropped);
            tracing::warn!(limiter = %id, "rate limiters full; question left unanswered");
            return None;
        }
        let mut limiter = RateLimiter::new(self.config);
        let wait_ms = limiter.handle_action(now);
        // One that is already idle again (a limiter that never waits) need not be kept.
        if !limiter.is_idle(now) {
            shard.limiters.insert(id, limiter);
            inc(&self.metrics.limiters);
        }
        Some(wait_ms)
    }

    /// Drops `shard`'s idle limiters (each equivalent to a fresh one).
    fn sweep(&self, shard: &mut Shard, now: Timestamp) {
        let before = shard.limiters.len();
        shard.limiters.retain(|_, limiter| !limiter.is_idle(now));
        let dropped = before - shard.limiters.len();
        self.metrics
            .limiters
            .fetch_sub(dropped as u64, Ordering::Relaxed);
        shard.swept_at = now;
    }
}

#[cfg(test)]
mod tests {
    use edgechat_core::ids::Namespace;

    use super::*;

    fn limiters(cost_ms: u64, grace_ms: u64) -> Arc<Limiters> {
        Limiters::new(
            Arc::new(Metrics::default()),
            RateLimiterConfig { cost_ms, grace_ms },
        )
    }

    fn id(n: usize) -> ObjectId {
        ObjectId::from_name(Namespace::RateLimiter, &n.to_string())
    }

    fn held(limiters: &Limiters) -> usize {
        limiters
            .shards
            .iter()
            .map(|shard| shard.lock().unwrap().limiters.len())
            .sum()
    }

    #[test]
    fn answers_as_the_core_limiter_does() {
        let limiters = limiters(5_000, 20_000);
        let mut core = RateLimiter::new(limiters.config);
        for ms in [0, 10, 20, 30, 40, 50, 6_000, 6_001] {
            let at = Timestamp(1_000_000 + ms);
            assert_eq!(limiters.decide(id(1), at), Some(core.handle_action(at)));
        }
        // Another id has its own budget.
        assert_eq!(limiters.decide(id(2), Timestamp(1_006_001)), Some(0));
    }

    #[test]
    fn idle_limiters_are_dropped_and_busy_ones_kept() {
        let limiters = limiters(5_000, 20_000);
        let start = Timestamp(1_000_000);
        for n in 0..100 {
            limiters.decide(id(n), start);
        }
        assert_eq!(held(&limiters), 100);
        assert_eq!(limiters.metrics.limiters.load(Ordering::Relaxed), 100);
        // Id 0 acts again; every other one is idle once its cost has passed.
        limiters.decide(id(0), start.plus_millis(4_000));
        let later = start.plus_millis(6_000);
        // The next question a shard gets sweeps it.
        limiters.decide(id(0), later);
        let shard_of_0 = limiters
            .shards
            .iter()
            .find(|shard| shard.lock().unwrap().limiters.contains_key(&id(0)))
            .expect("a busy limiter is kept");
        assert_eq!(shard_of_0.lock().unwrap().limiters.len(), 1);
        for shard in limiters.shards.iter() {
            limiters.sweep(&mut shard.lock().unwrap(), later);
        }
        assert_eq!(held(&limiters), 1);
        assert_eq!(limiters.metrics.limiters.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_full_shard_of_busy_limiters_answers_nothing_new() {
        let limiters = limiters(60_000, 0);
        let at = Timestamp(1_000_000);
        let mut unanswered = 0;
        for n in 0..SHARDS * SHARD_LIMITERS_MAX + 1 {
            if limiters.decide(id(n), at).is_none() {
                unanswered += 1;
            }
        }
        assert!(unanswered >= 1, "more limiters than room for them");
        assert!(held(&limiters) <= SHARDS * SHARD_LIMITERS_MAX);
        // A limiter already held still answers, with the core's arithmetic.
        assert_eq!(limiters.decide(id(0), at), Some(120_000));
    }

    #[test]
    fn a_limiter_that_never_waits_holds_nothing() {
        let limiters = limiters(0, 0);
        for n in 0..10 {
            assert_eq!(limiters.decide(id(n), Timestamp(1_000)), Some(0));
        }
        assert_eq!(held(&limiters), 0);
    }
}
