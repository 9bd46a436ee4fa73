//! The Cloudflare Workers adapter of edgechat.
//!
//! The same sans-IO core as the standalone server, driven by the Durable Objects runtime:
//!
//! - the Worker's fetch handler routes requests with [`edgechat_core::http::route`] and
//!   forwards them to objects;
//! - [`ChatRoom`] is one room per Durable Object, using the WebSocket Hibernation API (the
//!   runtime keeps sockets open while the object is evicted; each socket carries the core's
//!   attachment) and SQLite-backed storage;
//! - [`RateLimiter`] is one object per client IP (`CF-Connecting-IP`);
//! - [`Counter`] serves `/api/counter/<name>`.
//!
//! This crate only translates: requests, socket events and clock readings become core
//! inputs; core outputs become socket sends, storage transactions and calls to other objects.
//! It builds only for `wasm32-unknown-unknown`, with `worker-build` (see `ci.sh`).

// `#[durable_object]` generates public glue methods without docs; our own items are documented.
#[allow(missing_docs)]
mod counter;
#[allow(missing_docs)]
mod limiter;
#[allow(missing_docs)]
mod room;
mod sql;

pub use counter::Counter;
pub use limiter::RateLimiter;
pub use room::ChatRoom;

use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr};

use edgechat_core::http::{self, Method, Refusal, Route};
use edgechat_core::ids::{IdSecret, Namespace, ObjectId, PRIVATE_ID_RANDOM_LEN_BYTES};
use edgechat_core::Timestamp;
use worker::{event, Context, Env, Request, Response, ResponseBuilder, Result};

/// The chat page, the same file the standalone server serves.
const PAGE_HTML: &str = include_str!("../../web/index.html");

/// Binding names, as in `wrangler.toml`.
const ROOMS_BINDING: &str = "ROOMS";
const LIMITERS_BINDING: &str = "LIMITERS";
const COUNTERS_BINDING: &str = "COUNTERS";

/// The header that carries the client's IP on Workers.
const CLIENT_IP_HEADER: &str = "CF-Connecting-IP";

thread_local! {
    /// Requests this isolate has answered (the only metric a stateless isolate can own).
    static REQUESTS_SERVED: Cell<u64> = const { Cell::new(0) };
}

/// The current time: `Date.now()`, the only clock a Worker has.
pub(crate) fn now() -> Timestamp {
    Timestamp(worker::Date::now().as_millis())
}

/// Random bytes from the runtime (the core has no randomness of its own).
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    let array = js_sys::Uint8Array::new_with_length(N as u32);
    // `crypto.getRandomValues` is a global in every Workers isolate.
    let crypto = js_sys::Reflect::get(&js_sys::global(), &"crypto".into())
        .ok()
        .filter(|c| !c.is_undefined());
    let filled = crypto.and_then(|crypto| {
        let get = js_sys::Reflect::get(&crypto, &"getRandomValues".into()).ok()?;
        let get: js_sys::Function = wasm_bindgen::JsCast::dyn_into(get).ok()?;
        get.call1(&crypto, &array).ok()
    });
    if filled.is_some() {
        array.copy_to(&mut bytes);
    } else {
        for byte in &mut bytes {
            *byte = (js_sys::Math::random() * 256.0) as u8;
        }
    }
    bytes
}

/// The client's IP from `CF-Connecting-IP`; unknown clients share `0.0.0.0`.
pub(crate) fn client_ip(req: &Request) -> IpAddr {
    req.headers()
        .get(CLIENT_IP_HEADER)
        .ok()
        .flatten()
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// A plain-text answer.
pub(crate) fn text(status: u16, body: &str) -> Result<Response> {
    Ok(ResponseBuilder::new()
        .with_status(status)
        .with_header("Content-Type", "text/plain;charset=UTF-8")?
        .fixed(body.as_bytes().to_vec()))
}

/// A JSON answer from an already encoded body.
pub(crate) fn json(status: u16, body: String) -> Result<Response> {
    Ok(ResponseBuilder::new()
        .with_status(status)
        .with_header("Content-Type", "application/json")?
        .fixed(body.into_bytes()))
}

fn refusal(refusal: Refusal) -> Result<Response> {
    text(refusal.status, refusal.body)
}

/// A secret or variable from the environment, if set and not empty.
fn env_string(env: &Env, name: &str) -> Option<String> {
    env.secret(name)
        .map(|s| s.to_string())
        .or_else(|_| env.var(name).map(|v| v.to_string()))
        .ok()
        .filter(|s| !s.is_empty())
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    REQUESTS_SERVED.with(|n| n.set(n.get() + 1));
    let Some(secret) = env_string(&env, "ID_SECRET") else {
        worker::console_error!("ID_SECRET is not set; refusing to serve");
        return text(500, "Server misconfigured: ID_SECRET is not set.");
    };
    let secret = IdSecret::new(secret.into_bytes());
    let url = req.url()?;
    let is_upgrade = req
        .headers()
        .get("Upgrade")?
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let method = Method::parse(req.inner().method().as_str());
    let route = match http::route(method, url.path(), url.query(), is_upgrade, &secret) {
        Ok(route) => route,
        Err(refused) => return refusal(refused),
    };
    match route {
        Route::Page => Ok(ResponseBuilder::new()
            .with_header("Content-Type", "text/html;charset=UTF-8")?
            .fixed(PAGE_HTML.as_bytes().to_vec())),
        Route::CreateRoom => {
            let random = random_bytes::<PRIVATE_ID_RANDOM_LEN_BYTES>();
            let id = ObjectId::mint_private(Namespace::Room, random, &secret);
            Ok(text(200, &id.to_hex())?.with_headers({
                let headers = worker::Headers::new();
                headers.set("Content-Type", "text/plain;charset=UTF-8")?;
                headers.set("Access-Control-Allow-Origin", "*")?;
                headers
            }))
        }
        Route::RoomWebSocket(room) | Route::RoomHistory(room, _) | Route::RoomPresence(room) => {
            room_stub(&env, room.id)?.fetch_with_request(req).await
        }
        Route::RoomPublish(room) => {
            let authorization = req.headers().get("Authorization")?;
            let token = env_string(&env, "ADMIN_TOKEN");
            if !http::is_authorized(authorization.as_deref(), token.as_deref()) {
                return text(401, "Unauthorized");
            }
            room_stub(&env, room.id)?.fetch_with_request(req).await
        }
        Route::Counter(id, _) => {
            env.durable_object(COUNTERS_BINDING)?
                .id_from_name(&id.to_hex())?
                .get_stub()?
                .fetch_with_request(req)
                .await
        }
        Route::Health => text(200, "ok"),
        Route::Metrics => {
            let served = REQUESTS_SERVED.with(Cell::get);
            text(
                200,
                &format!(
                    "# HELP edgechat_worker_isolate_requests_total Requests answered by this isolate.\n\
                     # TYPE edgechat_worker_isolate_requests_total counter\n\
                     edgechat_worker_isolate_requests_total {served}\n"
                ),
            )
        }
        // `Route` is non-exhaustive: a route this adapter does not know yet.
        _ => text(404, "Not found"),
    }
}

/// The stub of the room with core id `id` (the object is named by the id's hex form).
fn room_stub(env: &Env, id: ObjectId) -> Result<worker::Stub> {
    env.durable_object(ROOMS_BINDING)?
        .id_from_name(&id.to_hex())?
        .get_stub()
}

/// The stub of `ip`'s rate limiter.
pub(crate) fn limiter_stub(env: &Env, ip: IpAddr) -> Result<worker::Stub> {
    let id = ObjectId::from_name(Namespace::RateLimiter, &ip.to_string());
    env.durable_object(LIMITERS_BINDING)?
        .id_from_name(&id.to_hex())?
        .get_stub()
}
