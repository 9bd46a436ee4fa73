//! HTTP: one catch-all warp filter that hands every request to the core's
//! [`route`](edgechat_core::http::route) and carries out the answer.
//!
//! Routing and refusals are the core's; this module only translates requests and replies.
//! The one route of its own is `POST /admin/hibernate` (admin token), an operations hook
//! that evicts every room now, so that tests can force hibernation deterministically.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use edgechat_core::counter::CounterOp;
use edgechat_core::http::{
    is_authorized, route, HistoryQuery, Method, PublishBody, Route, PUBLISH_BODY_LEN_MAX_BYTES,
};
use edgechat_core::ids::{Namespace, ObjectId, PRIVATE_ID_RANDOM_LEN_BYTES};
use edgechat_core::protocol::ChatMessage;
use edgechat_core::room::PublishError;
use futures_util::{Stream, StreamExt as _};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use warp::filters::path::FullPath;
use warp::http::{header, HeaderMap, HeaderValue, StatusCode};
use warp::hyper::body::{Body, Buf};
use warp::reply::Response;
use warp::Filter;

use crate::counter::CounterMsg;
use crate::objects::Shared;
use crate::room::RoomMsg;
use crate::socket::ConnectionGuard;

/// The chat page, one HTML file with no build step.
const PAGE: &str = include_str!("../../web/index.html");
const ADMIN_HIBERNATE_PATH: &str = "/admin/hibernate";

/// The TCP peer of a request, put into its extensions by the server's accept loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub SocketAddr);

/// Bytes read from the socket per read call, and the read buffer each connection keeps
/// (chat frames from clients are a few hundred bytes; a larger frame takes several reads).
/// Measured in bench `idle-conns`: 4 KiB costs ~2 KB more per idle connection than 2 KiB,
/// and 2 KiB ~1.5 KB more than 1 KiB.
const WS_READ_BUFFER_BYTES: usize = 1024;
/// tungstenite only writes control frames (answers to pings and closes), and hands each
/// to the shared writer at once (see `conn`), so it keeps no write buffer.
const WS_WRITE_BUFFER_BYTES: usize = 0;
/// The bound tungstenite checks before handing a control frame on (they are tiny).
const WS_MAX_WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// hyper's upgrade handle of a request that asks for one, taken out of the request by the
/// server's service before warp sees it (warp 0.3 only exposes it to its own `ws` filter,
/// whose WebSocket layer needs an owned `String` per message).
#[derive(Debug, Clone)]
pub(crate) struct PendingUpgrade(Arc<Mutex<Option<hyper::upgrade::OnUpgrade>>>);

impl PendingUpgrade {
    /// Moves the upgrade handle of `request` into its extensions, if it asks to upgrade.
    pub(crate) fn stash(request: &mut hyper::Request<Body>) {
        if request.headers().contains_key(header::UPGRADE) {
            let on_upgrade = hyper::upgrade::on(&mut *request);
            request
                .extensions_mut()
                .insert(PendingUpgrade(Arc::new(Mutex::new(Some(on_upgrade)))));
        }
    }

    fn take(&self) -> Option<hyper::upgrade::OnUpgrade> {
        self.0.lock().ok()?.take()
    }
}

/// The filter serving every route.
pub(crate) fn routes(
    shared: Arc<Shared>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    // Optional parts: a request without them is still routed (and refused by the core).
    let upgrade = warp::ext::optional::<PendingUpgrade>();
    let query = warp::query::raw()
        .map(Some)
        .or(warp::any().map(|| None))
        .unify();
    // The server's accept loops (plain and TLS) record the peer.
    let remote = warp::ext::optional::<Peer>().map(|peer: Option<Peer>| peer.map(|peer| peer.0));
    warp::any()
        .and(warp::method())
        .and(warp::path::full())
        .and(query)
        .and(warp::header::headers_cloned())
        .and(remote)
        .and(upgrade)
        .and(warp::body::stream())
        .then(
            move |method: warp::http::Method,
                  path: FullPath,
                  query: Option<String>,
                  headers: HeaderMap,
                  remote: Option<SocketAddr>,
                  upgrade: Option<PendingUpgrade>,
                  body| {
                let shared = shared.clone();
                async move {
                    let request = Request {
                        method,
                        path,
                        query,
                        headers,
                        remote,
                    };
                    handle(shared, request, upgrade, body).await
                }
            },
        )
}

struct Request {
    method: warp::http::Method,
    path: FullPath,
    query: Option<String>,
    headers: HeaderMap,
    remote: Option<SocketAddr>,
}

impl Request {
    fn header(&self, name: impl header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    fn is_authorized(&self, shared: &Shared) -> bool {
        is_authorized(
            self.header(header::AUTHORIZATION),
            shared.config.admin_token.as_deref(),
        )
    }

    /// The client's IP: the trusted proxy header if configured and valid, else the peer.
    fn client_ip(&self, shared: &Shared) -> IpAddr {
        let forwarded = shared
            .config
            .trust_proxy_header
            .as_deref()
            .and_then(|name| self.header(name))
            // `X-Forwarded-For: client, proxy1, proxy2`: the first entry is the client.
            .and_then(|value| value.split(',').next())
            .and_then(|first| first.trim().parse().ok());
        forwarded
            .or(self.remote.map(|remote| remote.ip()))
            .unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }
}

async fn handle<S, B>(
    shared: Arc<Shared>,
    request: Request,
    upgrade: Option<PendingUpgrade>,
    body: S,
) -> Response
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf,
{
    let method = Method::parse(request.method.as_str());
    if request.path.as_str() == ADMIN_HIBERNATE_PATH {
        return admin_hibernate(&shared, &request, method).await;
    }
    let is_upgrade = request
        .header(header::UPGRADE)
        .is_some_and(|value| value.eq_ignore_ascii_case("websocket"));
    let routed = route(
        method,
        request.path.as_str(),
        request.query.as_deref(),
        is_upgrade,
        &shared.secret,
    );
    let route = match routed {
        Ok(route) => route,
        Err(refusal) => return text(refusal.status, refusal.body),
    };
    match route {
        Route::Page => {
            let mut response = Response::new(Body::from(PAGE));
            set_content_type(&mut response, "text/html;charset=UTF-8");
            response
        }
        Route::CreateRoom => {
            let random: [u8; PRIVATE_ID_RANDOM_LEN_BYTES] = rand::random();
            let id = ObjectId::mint_private(Namespace::Room, random, &shared.secret);
            let mut response = text(200, &id.to_hex());
            response.headers_mut().insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
            response
        }
        Route::RoomWebSocket(room) => upgrade_websocket(&shared, &request, upgrade, room.id),
        Route::RoomHistory(room, query) => history(&shared, room.id, query).await,
        Route::RoomPresence(room) => {
            let (reply, answer) = oneshot::channel();
            let msg = RoomMsg::Presence { reply };
            match ask_room(&shared, room.id, msg, answer).await {
                Some(users) => json(200, &serde_json::json!({ "users": users }).to_string()),
                None => unavailable(),
            }
        }
        Route::RoomPublish(room) => publish(&shared, &request, room.id, body).await,
        Route::Counter(id, op) => counter(&shared, id, op).await,
        Route::Metrics => {
            let mut response = Response::new(Body::from(shared.metrics.render()));
            set_content_type(&mut response, "text/plain; version=0.0.4; charset=utf-8");
            response
        }
        Route::Health => text(200, "ok"),
        // A route this adapter does not serve yet.
        _ => text(404, "Not found"),
    }
}

/// Answers a WebSocket handshake with 101 and serves the upgraded connection (RFC 6455
/// section 4.2; the checks are those of warp's `ws` filter).
fn upgrade_websocket(
    shared: &Arc<Shared>,
    request: &Request,
    upgrade: Option<PendingUpgrade>,
    room: ObjectId,
) -> Response {
    // Every value of every such header line, as a comma-separated list of tokens.
    let has_token = |name, token: &str| {
        request.headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|value| {
                value
                    .split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    let key = request.headers.get(header::SEC_WEBSOCKET_KEY);
    let handshake = request.method == warp::http::Method::GET
        && has_token(header::CONNECTION, "upgrade")
        && request.header(header::SEC_WEBSOCKET_VERSION) == Some("13");
    // The core saw `Upgrade: websocket`, but the rest of the handshake is missing.
    let (Some(key), Some(on_upgrade), true) = (key, upgrade.and_then(|u| u.take()), handshake)
    else {
        return text(400, "expected websocket");
    };
    if *shared.shutdown.borrow() {
        return text(503, "Server shutting down");
    }
    let Some(guard) = ConnectionGuard::try_new(&shared.metrics, shared.config.max_connections)
    else {
        crate::metrics::inc(&shared.metrics.connections_refused);
        return text(503, "Too many connections");
    };
    let accept = derive_accept_key(key.as_bytes());
    let ip = request.client_ip(shared);
    let shared = shared.clone();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%error, "websocket upgrade failed");
                return;
            }
        };
        let limit = shared.config.max_frame_bytes;
        let config = WebSocketConfig::default()
            .read_buffer_size(WS_READ_BUFFER_BYTES)
            .write_buffer_size(WS_WRITE_BUFFER_BYTES)
            .max_write_buffer_size(WS_MAX_WRITE_BUFFER_BYTES.max(limit.saturating_mul(2)))
            .max_message_size(Some(limit))
            .max_frame_size(Some(limit));
        crate::socket::serve(upgraded, config, shared, room, ip, guard).await;
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

async fn history(shared: &Arc<Shared>, room: ObjectId, query: HistoryQuery) -> Response {
    let (reply, answer) = oneshot::channel();
    let Some(frames) = ask_room(shared, room, RoomMsg::History { query, reply }, answer).await
    else {
        return unavailable();
    };
    // A full page may have older messages behind it; the client pages on with
    // `before=<next_before>` until `next_before` is null.
    let next_before = if frames.len() == query.limit {
        frames
            .last()
            .and_then(|frame| ChatMessage::decode(frame).ok())
            .map(|message| message.id)
    } else {
        None
    };
    // The frames are JSON objects already: splice them in as they were broadcast.
    let mut body = String::with_capacity(64 + frames.iter().map(|f| f.len() + 1).sum::<usize>());
    body.push_str("{\"messages\":[");
    for (index, frame) in frames.iter().enumerate() {
        if index > 0 {
            body.push(',');
        }
        body.push_str(frame);
    }
    body.push_str("],\"next_before\":");
    match next_before {
        Some(id) => body.push_str(&id.to_string()),
        None => body.push_str("null"),
    }
    body.push('}');
    json(200, &body)
}

async fn publish<S, B>(shared: &Arc<Shared>, request: &Request, room: ObjectId, body: S) -> Response
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf,
{
    if !request.is_authorized(shared) {
        return unauthorized();
    }
    let Some(body) = read_body(body, PUBLISH_BODY_LEN_MAX_BYTES).await else {
        return text(400, "Could not read the body.");
    };
    let (name, message) = match PublishBody::parse(&body) {
        Ok(parsed) => parsed,
        Err(why) => return text(400, why),
    };
    let (reply, answer) = oneshot::channel();
    let msg = RoomMsg::Publish {
        name: name.into(),
        message: message.into(),
        reply,
    };
    match ask_room(shared, room, msg, answer).await {
        Some(Ok(id)) => json(200, &serde_json::json!({ "id": id }).to_string()),
        Some(Err(error @ PublishError::Busy)) => text(503, &error.to_string()),
        Some(Err(error)) => text(400, &error.to_string()),
        None => unavailable(),
    }
}

async fn counter(shared: &Arc<Shared>, id: ObjectId, op: CounterOp) -> Response {
    let (reply, answer) = oneshot::channel();
    if shared
        .send_counter(id, CounterMsg::Request { op, reply })
        .await
        .is_err()
    {
        return unavailable();
    }
    match answer.await {
        Ok(value) => json(200, &serde_json::json!({ "counter": value }).to_string()),
        Err(_) => unavailable(),
    }
}

async fn admin_hibernate(shared: &Arc<Shared>, request: &Request, method: Method) -> Response {
    if method != Method::Post {
        return text(405, "Method not allowed");
    }
    if !request.is_authorized(shared) {
        return unauthorized();
    }
    let mut answers = Vec::new();
    for inbox in shared.rooms.inboxes() {
        let (reply, answer) = oneshot::channel();
        if inbox.send(RoomMsg::Hibernate { reply }).await.is_ok() {
            answers.push(answer);
        }
    }
    let rooms = answers.len();
    let mut hibernated = 0;
    for answer in answers {
        if answer.await.unwrap_or(true) {
            hibernated += 1;
        }
    }
    json(
        200,
        &serde_json::json!({ "rooms": rooms, "hibernated": hibernated }).to_string(),
    )
}

/// Sends `msg` to a room and waits for its answer; `None` if the room could not answer.
async fn ask_room<T>(
    shared: &Arc<Shared>,
    room: ObjectId,
    msg: RoomMsg,
    answer: oneshot::Receiver<T>,
) -> Option<T> {
    shared.send_room(room, msg).await.ok()?;
    answer.await.ok()
}

/// Reads at most `limit + 1` bytes (enough for the core to see that a body is too large).
async fn read_body<S, B>(body: S, limit: usize) -> Option<Vec<u8>>
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf,
{
    let mut body = std::pin::pin!(body);
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.ok()?;
        while chunk.has_remaining() && bytes.len() <= limit {
            let piece = chunk.chunk();
            let take = piece.len().min(limit + 1 - bytes.len());
            bytes.extend_from_slice(&piece[..take]);
            chunk.advance(take);
        }
        if bytes.len() > limit {
            break;
        }
    }
    Some(bytes)
}

fn set_content_type(response: &mut Response, value: &'static str) {
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
}

fn text(status: u16, body: &str) -> Response {
    let mut response = Response::new(Body::from(body.to_owned()));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    set_content_type(&mut response, "text/plain;charset=UTF-8");
    response
}

fn json(status: u16, body: &str) -> Response {
    let mut response = text(status, body);
    set_content_type(&mut response, "application/json");
    response
}

fn unauthorized() -> Response {
    let mut response = text(401, "Unauthorized");
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn unavailable() -> Response {
    text(503, "Unavailable, please try again later.")
}
