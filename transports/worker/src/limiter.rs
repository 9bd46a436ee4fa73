//! The `RateLimiter` Durable Object: one per client IP, wrapping the core's
//! [`edgechat_core::limiter::RateLimiter`].
//!
//! A room asks with `POST /action`; the answer is `{"wait_ms": n}`. The limiter lives in
//! memory. The object may be evicted whenever it is idle on the platform's terms (no request
//! for a few seconds), which can be long before the core limiter is idle (its budget can
//! reach 20 s and more into the future), so storage must always hold a state at least as
//! strict as the one in memory. The object therefore stores a reservation a little ahead of
//! the state (core's `RateLimiter::reservation`: one action's cost and a second) and writes
//! again only when memory outgrows it: about once a second while the IP is busy, never while
//! it is idle. After an eviction a client may wait up to that much longer than it would have,
//! never less. The write is one statement, before the answer leaves.

use std::cell::RefCell;

use edgechat_core::http::answer;
use edgechat_core::limiter::{RateLimiter as CoreLimiter, RateLimiterConfig, RateLimiterState};
use edgechat_core::storage::keys;
use worker::{durable_object, DurableObject, Env, Request, Response, Result, State};

use crate::{now, respond, sql};

/// One client IP's rate limiter.
#[durable_object]
pub struct RateLimiter {
    state: State,
    config: RateLimiterConfig,
    resident: RefCell<Option<Resident>>,
}

/// The variable that overrides the limiter's cost per action, in ms (the benchmark's
/// `[env.bench]` sets 0, so that nobody ever waits). Unset means the core's default.
const COST_MS_VAR: &str = "RATE_LIMIT_COST_MS";

/// The limiters' settings: core's defaults, with the cost overridden by [`COST_MS_VAR`].
/// Rooms read it too: a limiter that never waits is not asked at all.
pub(crate) fn limiter_config(env: &Env) -> RateLimiterConfig {
    let mut config = RateLimiterConfig::default();
    if let Some(cost_ms) = env
        .var(COST_MS_VAR)
        .ok()
        .and_then(|v| v.to_string().parse().ok())
    {
        config.cost_ms = cost_ms;
    }
    config
}

/// The limiter in memory, and the state that storage holds.
struct Resident {
    limiter: CoreLimiter,
    stored: RateLimiterState,
}

impl DurableObject for RateLimiter {
    fn new(state: State, env: Env) -> Self {
        if let Err(error) = sql::ensure_schema(&state.storage()) {
            worker::console_error!("rate limiter: cannot create its table: {error}");
        }
        RateLimiter {
            state,
            config: limiter_config(&env),
            resident: RefCell::new(None),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        if req.path() != "/action" {
            return respond(answer::not_found());
        }
        let storage = self.state.storage();
        let mut slot = self.resident.borrow_mut();
        if slot.is_none() {
            // A state that does not decode (never written, or corrupt) is a fresh limiter:
            // the worst case is one extra burst for one IP.
            let stored = sql::get(&storage, keys::LIMITER_STATE)?
                .as_deref()
                .and_then(|s| RateLimiterState::decode(s).ok())
                .unwrap_or_default();
            *slot = Some(Resident {
                limiter: CoreLimiter::from_state(self.config, stored),
                stored,
            });
        }
        let resident = slot.as_mut().expect("restored above");
        let at = now();
        let wait_ms = resident.limiter.handle_action(at);
        // The object may be evicted without warning, so storage must never hold a looser
        // limiter than memory: a reservation ahead of it is stored whenever memory outgrows
        // the last one (about once a second while busy, not on every action).
        if resident.limiter.outgrows(&resident.stored, at) {
            let state = resident.limiter.reservation();
            // Durable before the answer leaves (the output gate would hold it anyway).
            if let Err(error) = sql::put(&storage, keys::LIMITER_STATE, &state.encode()) {
                // Forget the unstored action: the next request restores from storage.
                *slot = None;
                return Err(error);
            }
            resident.stored = state;
        }
        // The room's question and this answer are internal to the adapter.
        Response::ok(format!(r#"{{"wait_ms":{wait_ms}}}"#))
    }
}
