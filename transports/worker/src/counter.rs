//! The `Counter` Durable Object, wrapping the core's [`edgechat_core::counter::Counter`].
//!
//! The Worker forwards what core routed as `POST /get`, `/increment` or `/decrement` (so the
//! operation never depends on the public path: a counter may be named `increment`). Every
//! answer is core's, sent only once the change is durable.

use std::cell::{Cell, RefCell};

use edgechat_core::counter::{Counter as CoreCounter, CounterOp, CounterOutput, CounterRequest};
use edgechat_core::http::answer;
use edgechat_core::storage::keys;
use worker::{durable_object, DurableObject, Env, Request, Response, Result, State};

use crate::{respond, sql};

/// One named counter.
#[durable_object]
pub struct Counter {
    state: State,
    counter: RefCell<Option<CoreCounter>>,
    next_request: Cell<u64>,
}

impl DurableObject for Counter {
    fn new(state: State, _env: Env) -> Self {
        if let Err(error) = sql::ensure_schema(&state.storage()) {
            worker::console_error!("counter: cannot create its table: {error}");
        }
        Counter {
            state,
            counter: RefCell::new(None),
            next_request: Cell::new(1),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        let op = match req.path().as_str() {
            "/get" => CounterOp::Get,
            "/increment" => CounterOp::Increment,
            "/decrement" => CounterOp::Decrement,
            _ => return respond(answer::not_found()),
        };
        let storage = self.state.storage();
        let mut slot = self.counter.borrow_mut();
        if slot.is_none() {
            let stored = sql::get(&storage, keys::COUNTER_VALUE)?;
            match CoreCounter::restore(stored.as_deref()) {
                Ok(counter) => *slot = Some(counter),
                Err(error) => {
                    worker::console_error!("counter: stored value is corrupt: {error}");
                    return respond(answer::unavailable());
                }
            }
        }
        let counter = slot.as_mut().expect("restored above");
        let request = CounterRequest(self.next_request.get());
        self.next_request.set(request.0 + 1);
        counter.handle_request(request, op);
        let mut answer = None;
        let mut failed = None;
        while let Some(output) = counter.poll_output() {
            match output {
                CounterOutput::Persist(batch) => {
                    if let Err(error) = sql::commit(&storage, &batch, false) {
                        failed = Some(error);
                        break;
                    }
                    counter
                        .handle_durable(batch.id)
                        .map_err(|b| worker::Error::RustError(format!("stale batch {b:?}")))?;
                }
                CounterOutput::Reply { request: r, value } if r == request => {
                    answer = Some(value);
                }
                // Every request is answered within its own event, so no other reply exists.
                CounterOutput::Reply { .. } => {}
            }
        }
        if let Some(error) = failed {
            // Forget the unconfirmed change: the next request restores from storage.
            *slot = None;
            return Err(error);
        }
        match answer {
            Some(value) => respond(answer::counter(value)),
            None => respond(answer::unavailable()),
        }
    }
}
