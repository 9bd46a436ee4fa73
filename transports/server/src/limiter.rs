//! Rate-limiter objects: one task per client IP, shared by every room and connection.
//!
//! A room asks with [`ask`] and never waits: the question is a `try_send`, the answer comes
//! back on the room's reply channel. If a limiter's inbox is full the question is dropped,
//! and the core's session limiter asks again after its timeout, which only makes the limit
//! stricter; so a flood from one IP can neither block a room nor loosen its own limit.
//! A limiter whose state is idle (equivalent to a fresh one) retires its task.

use std::net::IpAddr;
use std::sync::Arc;

use edgechat_core::ids::ObjectId;
use edgechat_core::limiter::{limiter_id, RateLimiter, VerdictRequest};
use tokio::sync::mpsc;

use crate::metrics::{dec, inc};
use crate::objects::{now, until, Shared};
use crate::room::RoomReply;

/// Inbox size of one limiter.
pub(crate) const LIMITER_INBOX_LEN: usize = 256;
/// How often a question is re-addressed when its limiter has just retired.
const ASK_ATTEMPTS_MAX: usize = 8;

/// A question to a limiter: count one action and answer on `reply`.
#[derive(Debug)]
pub(crate) struct LimiterMsg {
    request: VerdictRequest,
    reply: mpsc::UnboundedSender<RoomReply>,
}

/// Counts one action against `ip`'s limiter; the verdict arrives on `reply`. Returns
/// whether the question was sent (an overloaded limiter drops it: the room asks again
/// after `VERDICT_TIMEOUT_MS`).
pub(crate) fn ask(
    shared: &Arc<Shared>,
    ip: IpAddr,
    request: VerdictRequest,
    reply: mpsc::UnboundedSender<RoomReply>,
) -> bool {
    let id = limiter_id(ip);
    let mut msg = LimiterMsg { request, reply };
    for _ in 0..ASK_ATTEMPTS_MAX {
        match shared.limiter(id).try_send(msg) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                inc(&shared.metrics.limiter_asks_dropped);
                tracing::warn!(%ip, "rate limiter overloaded; question dropped");
                return false;
            }
            Err(mpsc::error::TrySendError::Closed(back)) => msg = back,
        }
    }
    false
}

/// Starts the task of limiter `id`.
pub(crate) fn spawn(shared: Arc<Shared>, id: ObjectId, inbox: mpsc::Receiver<LimiterMsg>) {
    inc(&shared.metrics.limiters);
    tokio::spawn(run(shared, id, inbox));
}

async fn run(shared: Arc<Shared>, id: ObjectId, mut inbox: mpsc::Receiver<LimiterMsg>) {
    let config = shared.config.rate_limit;
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
                let _ = msg.reply.send(RoomReply::Verdict {
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
    shared.limiters.retire(id, &mut inbox);
    dec(&shared.metrics.limiters);
    // Questions that raced with the retirement go to a fresh limiter, which is equivalent.
    let mut leftovers = Vec::new();
    while let Some(msg) = inbox.recv().await {
        leftovers.push(msg);
    }
    for mut msg in leftovers {
        for _ in 0..ASK_ATTEMPTS_MAX {
            match shared.limiter(id).try_send(msg) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => break,
                Err(mpsc::error::TrySendError::Closed(back)) => msg = back,
            }
        }
    }
}
