//! The `RateLimiter` Durable Object: one per client IP, wrapping the core's
//! [`edgechat_core::limiter::RateLimiter`].
//!
//! A room asks with `POST /action`; the answer is `{"wait_ms": n}`. The object may be
//! evicted from memory whenever it is idle on the platform's terms (no request for a few
//! seconds), which can be long before the core limiter is idle (its budget can reach 20 s and
//! more into the future). So after every action the adapter stores the limiter's state
//! ([`RateLimiterState`]) and restores it after an eviction.

use std::cell::RefCell;

use edgechat_core::limiter::{RateLimiter as CoreLimiter, RateLimiterConfig, RateLimiterState};
use edgechat_core::storage::{keys, BatchId, Write, WriteBatch};
use worker::{durable_object, DurableObject, Env, Request, Response, Result, State};

use crate::{json, now, sql, text};

/// One client IP's rate limiter.
#[durable_object]
pub struct RateLimiter {
    state: State,
    resident: RefCell<Option<CoreLimiter>>,
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
            // A state that does not decode (never written, or corrupt) is a fresh limiter:
            // the worst case is one extra burst for one IP.
            let stored = sql::get(&storage, keys::LIMITER_STATE)?;
            let state = stored
                .as_deref()
                .and_then(|s| RateLimiterState::decode(s).ok())
                .unwrap_or_default();
            *slot = Some(CoreLimiter::from_state(config, state));
        }
        let limiter = slot.as_mut().expect("restored above");
        let wait_ms = limiter.handle_action(now());
        // Durable before the answer leaves (the output gate would hold it anyway).
        sql::commit(
            &storage,
            &WriteBatch {
                id: BatchId(0),
                writes: vec![Write::Put {
                    key: keys::LIMITER_STATE.to_owned(),
                    value: limiter.state().encode(),
                }],
            },
        )?;
        json(200, format!(r#"{{"wait_ms":{wait_ms}}}"#))
    }
}
