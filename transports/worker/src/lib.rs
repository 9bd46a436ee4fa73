//! The Cloudflare Workers adapter of edgechat.
//!
//! The same sans-IO core as the standalone server, driven by the Durable Objects runtime:
//!
//! - the Worker's fetch handler routes requests with [`edgechat_core::http::route`] and
//!   forwards them to objects;
//! - [`ChatRoom`] is one room per Durable Object, using the WebSocket Hibernation API (the
//!   runtime keeps sockets open while the object is evicted; each socket carries the core's
//!   attachment) and SQLite-backed storage;
//! - [`RateLimiter`] is one object per client IP (`CF-Connecting-IP`), or per user when a
//!   verified token names one;
//! - [`Counter`] serves `/api/counter/<name>`.
//!
//! Identity and access (signed tokens, token-only rooms, the origin allow-list) are core's
//! [`AuthConfig`](edgechat_core::auth::AuthConfig), built from the environment by [`auth`].
//!
//! This crate only translates: requests, socket events and clock readings become core
//! inputs; core outputs become socket sends, storage transactions and calls to other objects.
//! It builds only for `wasm32-unknown-unknown`, with `worker-build` (see `ci.sh`).

// `#[durable_object]` generates public glue methods without docs; our own items are documented.
mod auth;
#[allow(missing_docs)]
mod counter;
#[allow(missing_docs)]
mod limiter;
#[allow(missing_docs)]
mod room;
mod socket;
mod sql;

pub use counter::Counter;
pub use limiter::RateLimiter;
pub use room::ChatRoom;

use std::cell::Cell;
use std::net::IpAddr;

use edgechat_core::auth::{token_from_query, PageScheme};
use edgechat_core::counter::CounterOp;
use edgechat_core::http::answer::{self, Answer};
use edgechat_core::http::{self, Method, Route};
use edgechat_core::ids::{IdSecret, Namespace, ObjectId, PRIVATE_ID_RANDOM_LEN_BYTES};
use edgechat_core::Timestamp;
use worker::{event, Context, Env, Request, RequestInit, Response, ResponseBuilder, Result};

/// The chat page and its files, the same ones the standalone server serves.
const PAGE_HTML: &str = include_str!("../../web/index.html");
const PAGE_SCRIPT: &str = include_str!("../../web/page.js");
const PAGE_STYLE: &str = include_str!("../../web/page.css");
/// The admin page and its files (the same ones the standalone server serves).
const ADMIN_PAGE: &str = include_str!("../../web/admin.html");
const ADMIN_SCRIPT: &str = include_str!("../../web/admin.js");
const ADMIN_STYLE: &str = include_str!("../../web/admin.css");
const CLIENT_MODULE: &str = include_str!("../../../clients/js/edgechat.js");

/// Binding names, as in `wrangler.toml`.
const ROOMS_BINDING: &str = "ROOMS";
const LIMITERS_BINDING: &str = "LIMITERS";
const COUNTERS_BINDING: &str = "COUNTERS";

/// The header that carries the client's IP on Workers (Cloudflare sets it; clients cannot).
const CLIENT_IP_HEADER: &str = "CF-Connecting-IP";

/// The secret that signs private room ids.
const ID_SECRET_NAME: &str = "ID_SECRET";

thread_local! {
    /// Requests this isolate has answered (the only metric a stateless isolate can own).
    static REQUESTS_SERVED: Cell<u64> = const { Cell::new(0) };
}

/// The current time: `Date.now()`, the only clock a Worker has.
pub(crate) fn now() -> Timestamp {
    Timestamp(worker::Date::now().as_millis())
}

/// Random bytes from the runtime's `crypto.getRandomValues` (the core has no randomness of
/// its own).
///
/// # Errors
/// If the runtime offers no secure randomness; there is deliberately no weaker fallback.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    let array = js_sys::Uint8Array::new_with_length(N as u32);
    let crypto = js_sys::Reflect::get(&js_sys::global(), &"crypto".into())
        .ok()
        .filter(|c| !c.is_undefined());
    let filled = crypto.and_then(|crypto| {
        let get = js_sys::Reflect::get(&crypto, &"getRandomValues".into()).ok()?;
        let get: js_sys::Function = wasm_bindgen::JsCast::dyn_into(get).ok()?;
        get.call1(&crypto, &array).ok()
    });
    if filled.is_none() {
        return Err(worker::Error::RustError(
            "crypto.getRandomValues is not available: no secure randomness".into(),
        ));
    }
    array.copy_to(&mut bytes);
    Ok(bytes)
}

/// The client's IP from `CF-Connecting-IP` (core's rule); `None` if the header is missing
/// or unreadable. A Worker has no peer address to fall back to.
pub(crate) fn client_ip(req: &Request) -> Option<IpAddr> {
    let header = req.headers().get(CLIENT_IP_HEADER).ok().flatten();
    http::client_ip(header.as_deref(), None)
}

/// Copies one of core's answers onto a response.
pub(crate) fn respond(answer: Answer) -> Result<Response> {
    let mut builder = ResponseBuilder::new().with_status(answer.status);
    for (name, value) in &answer.headers {
        builder = builder.with_header(name, value)?;
    }
    Ok(builder.fixed(answer.body.into_owned().into_bytes()))
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
    let Some(secret) = env_string(&env, ID_SECRET_NAME) else {
        worker::console_error!("{ID_SECRET_NAME} is not set; refusing to serve");
        return respond(answer::misconfigured(ID_SECRET_NAME));
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
        Err(refused) => return respond(answer::refused(refused)),
    };
    match route {
        Route::Page => respond(answer::page_with_security_headers(PAGE_HTML)),
        Route::PageScript => respond(answer::page_script(PAGE_SCRIPT)),
        Route::PageStyle => respond(answer::page_style(PAGE_STYLE)),
        Route::AdminPage => respond(answer::page_with_security_headers(ADMIN_PAGE)),
        Route::AdminScript => respond(answer::page_script(ADMIN_SCRIPT)),
        Route::AdminStyle => respond(answer::page_style(ADMIN_STYLE)),
        Route::ClientModule => respond(answer::client_module(CLIENT_MODULE)),
        Route::CreateRoom => match random_bytes::<PRIVATE_ID_RANDOM_LEN_BYTES>() {
            Ok(random) => respond(answer::room_created(&ObjectId::mint_private(
                Namespace::Room,
                random,
                &secret,
            ))),
            Err(error) => {
                worker::console_error!("create room: {error}");
                respond(answer::no_secure_randomness())
            }
        },
        Route::RoomWebSocket(room) => {
            let policy = match auth::policy(&env) {
                Ok(policy) => policy,
                Err(misconfigured) => return respond(misconfigured),
            };
            let origin = req.headers().get("Origin")?;
            // The page's own origin: this request's host, with the scheme the URL says.
            let host = url.host_str().map(|host| match url.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_owned(),
            });
            let scheme = if url.scheme() == "https" {
                PageScheme::Https
            } else {
                PageScheme::Http
            };
            if let Err(refused) = policy.check_origin(origin.as_deref(), host.as_deref(), scheme) {
                return respond(refused);
            }
            // Refused here, before any object wakes up; the room admits the token again to
            // learn who the client is. The token is never logged.
            let token = token_from_query(url.query());
            if let Err(refused) = policy.admit(&room.id, token.as_deref(), now()) {
                return respond(refused);
            }
            // The room counts every frame against the client's limiter: without a known
            // client, refuse rather than let all such clients share one limiter.
            if client_ip(&req).is_none() {
                return respond(answer::client_unknown());
            }
            room_stub(&env, room.id)?.fetch_with_request(req).await
        }
        Route::RoomHistory(room, _) | Route::RoomPresence(room) => {
            // The admin token, or a bearer token that admits the reader (core's rule).
            let admin_token = env_string(&env, "ADMIN_TOKEN");
            let admitted = auth::policy(&env).and_then(|policy| {
                let authorization = req.headers().get("Authorization").ok().flatten();
                policy.admit_reader(
                    &room.id,
                    authorization.as_deref(),
                    admin_token.as_deref(),
                    now(),
                )
            });
            if let Err(refused) = admitted {
                return respond(refused);
            }
            room_stub(&env, room.id)?.fetch_with_request(req).await
        }
        Route::RoomPublish(room) => {
            if !is_admin(&req, &env)? {
                return respond(answer::unauthorized());
            }
            room_stub(&env, room.id)?.fetch_with_request(req).await
        }
        Route::RoomModerate(room) | Route::RoomAdmin(room) => {
            if !is_admin(&req, &env)? {
                return respond(answer::unauthorized());
            }
            room_stub(&env, room.id)?.fetch_with_request(req).await
        }
        Route::AdminRooms => {
            if !is_admin(&req, &env)? {
                return respond(answer::unauthorized());
            }
            respond(answer::rooms_not_listed())
        }
        Route::AdminHibernate => {
            if !is_admin(&req, &env)? {
                return respond(answer::unauthorized());
            }
            // Nothing inside a Worker can evict an object (see README.md, "Differences").
            respond(answer::not_found())
        }
        Route::Counter(id, op) => {
            // The operation is the one core routed, not a guess from the path: a counter
            // may be named `increment`.
            let op = match op {
                CounterOp::Get => "get",
                CounterOp::Increment => "increment",
                CounterOp::Decrement => "decrement",
            };
            env.durable_object(COUNTERS_BINDING)?
                .id_from_name(&id.to_hex())?
                .get_stub()?
                .fetch_with_request(Request::new_with_init(
                    &format!("https://counter.invalid/{op}"),
                    RequestInit::new().with_method(worker::Method::Post),
                )?)
                .await
        }
        Route::Health => respond(answer::health()),
        Route::Metrics => {
            let served = REQUESTS_SERVED.with(Cell::get);
            respond(answer::metrics(format!(
                "# HELP edgechat_worker_isolate_requests_total Requests answered by this isolate.\n\
                 # TYPE edgechat_worker_isolate_requests_total counter\n\
                 edgechat_worker_isolate_requests_total {served}\n"
            )))
        }
        // `Route` is non-exhaustive: a route this adapter does not serve yet.
        _ => respond(answer::not_found()),
    }
}

/// Whether the request carries the admin token (core's constant-time check).
fn is_admin(req: &Request, env: &Env) -> Result<bool> {
    let authorization = req.headers().get("Authorization")?;
    let token = env_string(env, "ADMIN_TOKEN");
    Ok(http::is_authorized(
        authorization.as_deref(),
        token.as_deref(),
    ))
}

/// The stub of the room with core id `id` (the object is named by the id's hex form).
fn room_stub(env: &Env, id: ObjectId) -> Result<worker::Stub> {
    env.durable_object(ROOMS_BINDING)?
        .id_from_name(&id.to_hex())?
        .get_stub()
}

/// The stub of rate limiter `id` (an IP's or a user's, see
/// [`limiter_id_for`](edgechat_core::limiter::limiter_id_for)).
pub(crate) fn limiter_stub(env: &Env, id: ObjectId) -> Result<worker::Stub> {
    env.durable_object(LIMITERS_BINDING)?
        .id_from_name(&id.to_hex())?
        .get_stub()
}
