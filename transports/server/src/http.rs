//! HTTP: [`Handle`] as a hyper and tower `Service` that hands every request to the core's
//! [`route`](edgechat_core::http::route) and carries out the answer.
//!
//! Routing and every answer are the core's ([`edgechat_core::http::answer`]); this module
//! only translates requests into core calls and answers into responses.
//!
//! Mounting under a prefix and the peer address: see [`Handle`].

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf as _, Bytes};
use edgechat_core::auth::token_from_query;
use edgechat_core::counter::CounterOp;
use edgechat_core::http::answer::{self, Answer};
use edgechat_core::http::{
    is_authorized, route, HistoryQuery, Method, PublishBody, Route, MODERATE_BODY_LEN_MAX_BYTES,
    PUBLISH_BODY_LEN_MAX_BYTES,
};
use edgechat_core::ids::{Namespace, ObjectId, PRIVATE_ID_RANDOM_LEN_BYTES};
use edgechat_core::moderation;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::counter::CounterMsg;
use crate::room::RoomMsg;
use crate::runtime::{Handle, PeerAddr, Refused, ServedOverTls};

/// The body of every response a [`Handle`] gives.
pub type Body = Full<Bytes>;

/// The error type a request body may fail with.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The chat page, one HTML file with no build step; its script, style sheet and the client
/// module it imports are separate files, so that its policy can forbid inline code.
const PAGE: &str = include_str!("../../web/index.html");
const PAGE_SCRIPT: &str = include_str!("../../web/page.js");
const PAGE_STYLE: &str = include_str!("../../web/page.css");
/// The admin page and its own files, static like the chat page (the page asks for the admin
/// token; the API calls it makes carry it).
const ADMIN_PAGE: &str = include_str!("../../web/admin.html");
const ADMIN_SCRIPT: &str = include_str!("../../web/admin.js");
const ADMIN_STYLE: &str = include_str!("../../web/admin.css");
const CLIENT_MODULE: &str = include_str!("../../../clients/js/edgechat.js");

/// The future of one request to a [`Handle`].
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<B> tower_service::Service<Request<B>> for Handle
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> ResponseFuture {
        let handle = self.clone();
        Box::pin(async move { Ok(handle.respond(request).await) })
    }
}

impl<B> hyper::service::Service<Request<B>> for Handle
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, request: Request<B>) -> ResponseFuture {
        let handle = self.clone();
        Box::pin(async move { Ok(handle.respond(request).await) })
    }
}

impl Handle {
    /// Answers one request (every route of the protocol, WebSocket upgrades included).
    pub async fn respond<B>(&self, request: Request<B>) -> Response<Body>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = request.into_parts();
        let is_upgrade = header_str(&parts.headers, header::UPGRADE)
            .is_some_and(|value| value.eq_ignore_ascii_case("websocket"));
        let routed = route(
            Method::parse(parts.method.as_str()),
            parts.uri.path(),
            parts.uri.query(),
            is_upgrade,
            &self.shared.secret,
        );
        let answer = match routed {
            Err(refusal) => answer::refused(refusal),
            Ok(Route::Page) => answer::page_with_security_headers(PAGE),
            Ok(Route::PageScript) => answer::page_script(PAGE_SCRIPT),
            Ok(Route::PageStyle) => answer::page_style(PAGE_STYLE),
            Ok(Route::AdminPage) => answer::page_with_security_headers(ADMIN_PAGE),
            Ok(Route::AdminScript) => answer::page_script(ADMIN_SCRIPT),
            Ok(Route::AdminStyle) => answer::page_style(ADMIN_STYLE),
            Ok(Route::ClientModule) => answer::client_module(CLIENT_MODULE),
            Ok(Route::CreateRoom) => self.create_room(),
            Ok(Route::RoomWebSocket(room)) => {
                return match self.upgrade_websocket(&mut parts, room.id) {
                    Ok(switching) => {
                        if let Some(name) = &room.name {
                            self.shared.rooms.remember_label(room.id, name);
                        }
                        switching
                    }
                    Err(refused) => response(refused),
                }
            }
            Ok(Route::RoomHistory(room, query)) => match self.admit_reader(&parts, room.id) {
                Ok(()) => self.history_answer(room.id, query).await,
                Err(refused) => refused,
            },
            Ok(Route::RoomPresence(room)) => match self.admit_reader(&parts, room.id) {
                Ok(()) => match self.presence_of(room.id).await {
                    Some(users) => answer::presence(&users),
                    None => answer::unavailable(),
                },
                Err(refused) => refused,
            },
            Ok(Route::RoomPublish(room)) => self.publish_answer(&parts, room.id, body).await,
            Ok(Route::RoomModerate(room)) => self.moderate_answer(&parts, room.id, body).await,
            Ok(Route::RoomAdmin(room)) => self.room_admin_answer(&parts, room.id).await,
            Ok(Route::AdminRooms) => match self.is_authorized(&parts.headers) {
                true => answer::room_summaries(&self.shared.rooms.summaries().await),
                false => answer::unauthorized(),
            },
            Ok(Route::Counter(id, op)) => self.counter_answer(id, op).await,
            Ok(Route::Metrics) => answer::metrics(self.shared.metrics.render()),
            Ok(Route::Health) => match self.shared.store.health().failing() {
                Some(reason) => answer::health_failing(&reason),
                None => answer::health(),
            },
            Ok(Route::AdminHibernate) => self.admin_hibernate(&parts).await,
            // A route this adapter does not serve yet.
            Ok(_) => answer::not_found(),
        };
        response(answer)
    }

    /// Mints a private room id from OS randomness; without randomness, refuses.
    fn create_room(&self) -> Answer {
        let mut random = [0u8; PRIVATE_ID_RANDOM_LEN_BYTES];
        if let Err(error) = getrandom::fill(&mut random) {
            tracing::error!(%error, "no OS randomness: refusing to mint a room id");
            return answer::unavailable();
        }
        let id = ObjectId::mint_private(Namespace::Room, random, &self.shared.secret);
        answer::room_created(&id)
    }

    /// Answers a WebSocket handshake with 101 and serves the upgraded connection (RFC 6455
    /// section 4.2).
    fn upgrade_websocket(
        &self,
        parts: &mut Parts,
        room: ObjectId,
    ) -> Result<Response<Body>, Answer> {
        // Every value of every such header line, as a comma-separated list of tokens.
        let has_token = |name, token: &str| {
            parts.headers.get_all(name).iter().any(|value| {
                value.to_str().is_ok_and(|value| {
                    value
                        .split(',')
                        .any(|part| part.trim().eq_ignore_ascii_case(token))
                })
            })
        };
        let handshake = parts.method == http::Method::GET
            && has_token(header::CONNECTION, "upgrade")
            && header_str(&parts.headers, header::SEC_WEBSOCKET_VERSION) == Some("13");
        let key = parts.headers.get(header::SEC_WEBSOCKET_KEY);
        // The core saw `Upgrade: websocket`, but the rest of the handshake is missing (or
        // the connection cannot upgrade).
        let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        let (Some(key), Some(on_upgrade), true) = (key, on_upgrade, handshake) else {
            return Err(answer::expected_websocket());
        };
        let tls = parts.extensions.get::<ServedOverTls>().is_some();
        self.check_origin(&parts.headers, tls)?;
        // The token is on the URL (browsers cannot set headers on a WebSocket); it is never
        // logged.
        let token = token_from_query(parts.uri.query());
        let access = self.admit(room, token.as_deref())?;
        let ticket = self.ticket(room, access)?;
        let accept = derive_accept_key(key.as_bytes());
        let peer = parts.extensions.get::<PeerAddr>().map(|peer| peer.0);
        let ip = self.client_ip(&parts.headers, peer);
        let handle = self.clone();
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    handle
                        .serve_websocket(ticket, ip, TokioIo::new(upgraded))
                        .await;
                }
                Err(error) => tracing::debug!(%error, "websocket upgrade failed"),
            }
        });
        let mut switching = Response::new(Body::default());
        *switching.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = switching.headers_mut();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        Ok(switching)
    }

    async fn history_answer(&self, room: ObjectId, query: HistoryQuery) -> Answer {
        match self.history_frames(room, query).await {
            Some(frames) => answer::history(&frames, query),
            None => answer::unavailable(),
        }
    }

    async fn publish_answer<B>(&self, parts: &Parts, room: ObjectId, body: B) -> Answer
    where
        B: http_body::Body + Send,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        if !self.is_authorized(&parts.headers) {
            return answer::unauthorized();
        }
        let Some(body) = read_body(body, PUBLISH_BODY_LEN_MAX_BYTES).await else {
            return answer::body_unreadable();
        };
        let (name, message) = match PublishBody::parse(&body) {
            Ok(parsed) => parsed,
            Err(why) => return answer::publish_rejected(why),
        };
        match self.publish_to(room, name.into(), message.into()).await {
            Some(Ok(id)) => answer::published(id),
            Some(Err(error)) => answer::publish_failed(&error),
            None => answer::unavailable(),
        }
    }

    async fn moderate_answer<B>(&self, parts: &Parts, room: ObjectId, body: B) -> Answer
    where
        B: http_body::Body + Send,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        if !self.is_authorized(&parts.headers) {
            return answer::unauthorized();
        }
        let Some(body) = read_body(body, MODERATE_BODY_LEN_MAX_BYTES).await else {
            return answer::body_unreadable();
        };
        let action = match moderation::decode_body(&body) {
            Ok(action) => action,
            Err(error) => return answer::moderation_refused(&error),
        };
        match self.moderate_in(room, action).await {
            Some(Ok(())) => answer::moderated(),
            Some(Err(error)) => answer::moderation_refused(&error),
            None => answer::unavailable(),
        }
    }

    async fn room_admin_answer(&self, parts: &Parts, room: ObjectId) -> Answer {
        if !self.is_authorized(&parts.headers) {
            return answer::unauthorized();
        }
        match self.room_view(room).await {
            Some(view) => answer::room_view(&view),
            None => answer::unavailable(),
        }
    }

    async fn counter_answer(&self, id: ObjectId, op: CounterOp) -> Answer {
        let (reply, answer) = oneshot::channel();
        if self
            .shared
            .counters
            .send(id, CounterMsg::Request { op, reply })
            .await
            .is_err()
        {
            return answer::unavailable();
        }
        match answer.await {
            Ok(value) => answer::counter(value),
            Err(_) => answer::unavailable(),
        }
    }

    async fn admin_hibernate(&self, parts: &Parts) -> Answer {
        if !self.is_authorized(&parts.headers) {
            return answer::unauthorized();
        }
        let mut answers = Vec::new();
        for inbox in self.shared.rooms.inboxes() {
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
        answer::hibernated(rooms, hibernated)
    }

    /// Whether a read of `room` (history, presence) may go ahead: by the access policy, with
    /// the request's `Authorization: Bearer` token (every role reads).
    /// Admits a read of `room` (history, presence): the admin token, or a bearer token that
    /// admits the reader (core's [`AuthConfig::admit_reader`]).
    ///
    /// [`AuthConfig::admit_reader`]: edgechat_core::auth::AuthConfig::admit_reader
    fn admit_reader(&self, parts: &Parts, room: ObjectId) -> Result<(), Answer> {
        let config = &self.shared.config;
        config
            .auth
            .admit_reader(
                &room,
                header_str(&parts.headers, header::AUTHORIZATION),
                config.admin_token.as_deref(),
                crate::clock::now(),
            )
            .map_err(answer::auth_refused)
    }

    fn is_authorized(&self, headers: &HeaderMap) -> bool {
        is_authorized(
            header_str(headers, header::AUTHORIZATION),
            self.shared.config.admin_token.as_deref(),
        )
    }
}

fn header_str(headers: &HeaderMap, name: HeaderName) -> Option<&str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// Reads at most `limit + 1` bytes (enough for the core to see that a body is too large).
async fn read_body<B>(body: B, limit: usize) -> Option<Vec<u8>>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(Into::into).map(http_body::Frame::into_data) else {
            return None;
        };
        // Trailers carry no bytes.
        let Ok(mut chunk) = data else { continue };
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

impl Refused {
    /// The whole answer as a response (status, headers and body).
    pub fn into_response(self) -> Response<Body> {
        response(self.answer())
    }
}

/// An [`Answer`] as a response.
pub(crate) fn response(answer: Answer) -> Response<Body> {
    let body = match answer.body {
        Cow::Borrowed(text) => Bytes::from_static(text.as_bytes()),
        Cow::Owned(text) => Bytes::from(text),
    };
    let mut response = Response::new(Body::new(body));
    *response.status_mut() =
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    for (name, value) in answer.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.append(name, value);
        }
    }
    response
}
