//! Rate-limiter objects: one task per client IP (or per known user), shared by every room and connection.
//!
//! A room asks with [`Limiters::ask`] and never waits: the question is a `try_send`, the
//! answer ([`Verdict`]) comes back on the room's channel. If a limiter's inbox is full the
//! question is dropped, and the core's session limiter asks again after its timeout, which
//! only makes the limit stricter; so a flood from one IP can neither block a room nor loosen
//! its own limit. A limiter whose state is idle (equivalent to a fresh one) retires its task.

use std::sync::Arc;

use edgechat_core::ids::ObjectId;
use edgechat_core::limiter::{RateLimiter, RateLimiterConfig, VerdictRequest};
use tokio::sync::mpsc;

use crate::clock::{now, until};
use crate::metrics::{dec, inc, Metrics};
use crate::objects::Registry;

/// Inbox size of one limiter.
const LIMITER_INBOX_LEN: usize = 256;
/// How often a question is re-addressed when its limiter has just retired.
const ASK_ATTEMPTS_MAX: usize = 8;

/// A limiter's answer: the session behind `request` waits `wait_ms` before acting again.
#[derive(Debug)]
pub(crate) struct Verdict {
    pub request: VerdictRequest,
    pub wait_ms: u64,
}

/// A question to a limiter: count one action and answer on `reply`.
#[derive(Debug)]
pub(crate) struct LimiterMsg {
    request: VerdictRequest,
    reply: mpsc::UnboundedSender<Verdict>,
}

/// The rate limiters: their registry and what their tasks need.
#[derive(Debug)]
pub(crate) struct Limiters {
    registry: Registry<LimiterMsg>,
    metrics: Arc<Metrics>,
    config: RateLimiterConfig,
}

impl Limiters {
    pub(crate) fn new(metrics: Arc<Metrics>, config: RateLimiterConfig) -> Arc<Limiters> {
        Arc::new(Limiters {
            registry: Registry::new(LIMITER_INBOX_LEN),
            metrics,
            config,
        })
    }

    /// The inbox of limiter `id`, starting its task if none is alive.
    fn inbox(self: &Arc<Self>, id: ObjectId) -> mpsc::Sender<LimiterMsg> {
        self.registry.get_or_spawn(id, |inbox| {
            inc(&self.metrics.limiters);
            tokio::spawn(run(self.clone(), id, inbox));
        })
    }

    /// Counts one action against limiter `id` (an IP's or a user's, see
    /// [`limiter_id_for`](edgechat_core::limiter::limiter_id_for)); the verdict arrives on `reply`. Returns
    /// whether the question was sent (an overloaded limiter drops it: the room asks again
    /// after `VERDICT_TIMEOUT_MS`).
    pub(crate) fn ask(
        self: &Arc<Self>,
        id: ObjectId,
        request: VerdictRequest,
        reply: mpsc::UnboundedSender<Verdict>,
    ) -> bool {
        let mut msg = LimiterMsg { request, reply };
        for _ in 0..ASK_ATTEMPTS_MAX {
            match self.inbox(id).try_send(msg) {
                Ok(()) => return true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    inc(&self.metrics.limiter_asks_dropped);
                    tracing::warn!(limiter = %id, "rate limiter overloaded; question dropped");
                    return false;
                }
                Err(mpsc::error::TrySendError::Closed(back)) => msg = back,
            }
        }
        false
    }
}

async fn run(limiters: Arc<Limiters>, id: ObjectId, mut inbox: mpsc::Receiver<LimiterMsg>) {
    let config = limiters.config;
    let mut limiter = RateLimiter::new(config);
    // A fresh task waits for its first question (sent right after the spawn) before it may
    // retire; from then on, until the core says the limiter is idle.
    let mut check_at = now().plus_millis(config.cost_ms + config.grace_ms);
    loop {
        tokio::select! {
            msg = inbox.recv() => {
                let Some(msg) = msg else { break };
                let at = now();
                let wait_ms = limiter.handle_action(at);
                check_at = check_at.max(limiter.poll_timeout().unwrap_or(at));
                let _ = msg.reply.send(Verdict {
                    request: msg.request,
                    wait_ms,
                });
            }
            () = tokio::time::sleep(until(check_at)) => {
                let at = now();
                if limiter.is_idle(at) {
                    break;
                }
                // The clock stepped back: wait for the idle time again.
                check_at = limiter
                    .poll_timeout()
                    .unwrap_or(at)
                    .max(at.plus_millis(1));
            }
        }
    }
    limiters.registry.retire(id, &mut inbox);
    dec(&limiters.metrics.limiters);
    // Questions that raced with the retirement go to a fresh limiter, which is equivalent.
    let mut leftovers = Vec::new();
    while let Some(msg) = inbox.recv().await {
        leftovers.push(msg);
    }
    for mut msg in leftovers {
        for _ in 0..ASK_ATTEMPTS_MAX {
            match limiters.inbox(id).try_send(msg) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => break,
                Err(mpsc::error::TrySendError::Closed(back)) => msg = back,
            }
        }
    }
}
