//! The `ChatRoom` Durable Object: one chat room, driven by the core's [`Room`].
//!
//! # Hibernation
//! Sockets are accepted with the WebSocket Hibernation API (see [`crate::socket`]), so the
//! runtime may evict the object while its sockets stay open. Everything the core needs about
//! a socket is in its attachment; everything else is in SQLite. The object keeps the room in
//! memory only as a cache: an object constructed anew (after an eviction) rebuilds the room
//! with [`Room::restore`] from the newest stored messages and the open sockets' attachments.
//!
//! # Turns
//! An event (a socket message, a close, a request) only hands its input to the room. The
//! first event of a turn then yields once to the runtime (a zero-delay timer), so that every
//! other event already delivered to the object hands its input in too, and only then carries
//! out the room's outputs for all of them:
//!
//! ```text
//!   event A: input ─ yield ─ drain: one commit, sends, attachments ─ ask limiters ─ drain
//!   event B:          input (turn is open)
//!   event C:          input (turn is open)
//! ```
//!
//! So the messages of one turn land in one [`Output::Persist`] batch, committed in one
//! `transactionSync`, and each socket's attachment is written at most once per drain, and
//! only if its bytes changed. The event that drains also awaits the rate limiters' answers
//! and feeds them back (another drain); while it awaits, the next turn may start.
//!
//! # Identity
//! A client the Worker admitted with a token is admitted again here (core's
//! [`AuthConfig::admit`](edgechat_core::auth::AuthConfig::admit), so the Worker passes no
//! identity the client could forge) and joins with
//! [`Room::handle_connect_as`]. Its identity lives in the core's attachment, so it survives
//! hibernation. The earliest token expiry among the sockets ([`Room::poll_timeout`]) is the
//! object's alarm: the alarm wakes the object even when it was evicted, the room is rebuilt
//! from the attachments, and [`Room::handle_timeout`] closes the expired sockets (4001).
//!
//! # Durability before visibility
//! A batch is committed before the room hears it is durable and broadcasts its messages; the
//! runtime's output gate additionally holds those sends until the write is confirmed on
//! disk.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use edgechat_core::auth::{token_from_query, Access, AuthMode, Identity};
use edgechat_core::http::answer;
use edgechat_core::http::{HistoryQuery, PublishBody};
use edgechat_core::ids::{IdSecret, ObjectId};
use edgechat_core::limiter::{limiter_id_for, VerdictRequest};
use edgechat_core::moderation::{self, ModError};
use edgechat_core::protocol::{
    CLOSE_FRAME_TOO_LARGE, CLOSE_REASON_FRAME_TOO_LARGE, WS_MESSAGE_LEN_MAX_BYTES,
};
use edgechat_core::room::{ConnId, Output, PublishId, Room, RoomAuth, RoomConfig, RoomError};
use edgechat_core::storage::Write;
use edgechat_core::Timestamp;
use serde::Deserialize;
use wasm_bindgen::JsValue;
use worker::{
    durable_object, DurableObject, Env, Request, Response, Result, State, WebSocket,
    WebSocketIncomingMessage, WebSocketPair,
};

use crate::socket::{self, close_lost, conn_of, room_of, CONN_TAG_PREFIX, ROOM_TAG_PREFIX};
use crate::{client_ip, limiter_stub, now, random_bytes, respond, sql};

/// The variable that names the end-to-end test's storage fault (see
/// `ChatRoom::fail_writes_containing`).
const FAIL_WRITES_VAR: &str = "E2E_FAIL_WRITES_CONTAINING";

/// One chat room.
#[durable_object]
pub struct ChatRoom {
    state: State,
    env: Env,
    resident: RefCell<Option<Resident>>,
    next_publish: Cell<u64>,
    /// An event has inputs waiting and will drain the room after yielding.
    turn_open: Cell<bool>,
    /// The end-to-end test's storage fault: a batch that stores a value containing this
    /// text fails to commit (the variable exists only in `[env.e2e]`).
    fail_writes_containing: Option<String>,
    /// Publishes and moderation requests that are settled, until their request reads them:
    /// the message id (0 for a moderation), or `None` if its write failed.
    published: RefCell<BTreeMap<PublishId, Option<u64>>>,
    /// The core id of this room (the object's name), once known: token grants name rooms.
    room: Cell<Option<ObjectId>>,
    /// The alarm this object set last (a token expiry), while it is in memory.
    alarm_at: Cell<Option<Timestamp>>,
}

/// The room in memory, its sockets, and what their attachments hold.
struct Resident {
    room: Room,
    sockets: BTreeMap<ConnId, WebSocket>,
    /// The core's attachment bytes each socket carries now.
    written: BTreeMap<ConnId, Vec<u8>>,
}

impl DurableObject for ChatRoom {
    fn new(state: State, env: Env) -> Self {
        if let Err(error) = sql::ensure_schema(&state.storage()) {
            worker::console_error!("room: cannot create its table: {error}");
        }
        let fail_writes_containing = env
            .var(FAIL_WRITES_VAR)
            .ok()
            .map(|v| v.to_string())
            .filter(|v| !v.is_empty());
        // The Worker names each room object by the hex form of the room's core id.
        let room = state
            .id()
            .name()
            .and_then(|name| ObjectId::parse_hex(&name).ok());
        ChatRoom {
            state,
            env,
            resident: RefCell::new(None),
            next_publish: Cell::new(1),
            turn_open: Cell::new(false),
            fail_writes_containing,
            published: RefCell::new(BTreeMap::new()),
            room: Cell::new(room),
            alarm_at: Cell::new(None),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        // The Worker routed and checked this request; the last segment says what it is.
        let url = req.url()?;
        if self.room.get().is_none() {
            self.room.set(room_in_path(&self.env, url.path()));
        }
        let action = url.path().rsplit('/').next().unwrap_or("").to_owned();
        match action.as_str() {
            "websocket" => self.accept_socket(&req).await,
            "history" => {
                let query = match HistoryQuery::parse(url.query()) {
                    Ok(query) => query,
                    Err(refusal) => return respond(answer::refused(refusal)),
                };
                let frames =
                    self.with_room(None, |room| room.history_page(query.before, query.limit))?;
                respond(answer::history(&frames, query))
            }
            "presence" => {
                let names: Vec<String> =
                    self.with_room(None, |room| room.presence().map(str::to_owned).collect())?;
                respond(answer::presence(&names))
            }
            "messages" => self.publish(req).await,
            "moderate" => self.moderate(req).await,
            "admin" => {
                let view = self.with_room(None, |room| room.admin_view(now()))?;
                respond(answer::room_view(&view))
            }
            _ => respond(answer::not_found()),
        }
    }

    async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> Result<()> {
        let Some(conn) = conn_of(&self.state, &ws) else {
            close_lost(&ws);
            return Ok(());
        };
        let len = match &message {
            WebSocketIncomingMessage::String(text) => text.len(),
            WebSocketIncomingMessage::Binary(bytes) => bytes.len(),
        };
        if len > WS_MESSAGE_LEN_MAX_BYTES {
            // The runtime takes messages up to its own limit; the rule is core's.
            let _ = ws.close(
                Some(CLOSE_FRAME_TOO_LARGE),
                Some(CLOSE_REASON_FRAME_TOO_LARGE),
            );
            self.closed(&ws)?;
            return self.finish_turn(false).await;
        }
        let at = now();
        let result = self.input(Some(&ws), |room| match &message {
            WebSocketIncomingMessage::String(text) => room.handle_text(conn, text, at),
            WebSocketIncomingMessage::Binary(_) => room.handle_binary(conn, at),
        })?;
        match result {
            Ok(()) => self.finish_turn(false).await,
            Err(RoomError::UnknownConnection(_)) => {
                close_lost(&ws);
                Ok(())
            }
            Err(error) => Err(worker::Error::RustError(error.to_string())),
        }
    }

    async fn websocket_close(
        &self,
        ws: WebSocket,
        code: usize,
        reason: String,
        _was_clean: bool,
    ) -> Result<()> {
        self.closed(&ws)?;
        // Complete the closing handshake (1005/1006 are not codes one may send).
        let code = match code {
            1000..=1003 | 1007..=1014 | 3000..=4999 => code as u16,
            _ => 1000,
        };
        let _ = ws.close(Some(code), Some(reason));
        self.finish_turn(false).await
    }

    async fn websocket_error(&self, ws: WebSocket, error: worker::Error) -> Result<()> {
        worker::console_log!("room: socket error: {error}");
        self.closed(&ws)?;
        self.finish_turn(false).await
    }

    /// A token expiry is due: the room (rebuilt from the attachments if the object was
    /// evicted) closes every socket whose token has expired.
    async fn alarm(&self) -> Result<Response> {
        self.alarm_at.set(None);
        if self.state.get_websockets().is_empty() && self.resident.borrow().is_none() {
            return Response::empty();
        }
        let at = now();
        let _ = self.input(None, |room| {
            room.handle_timeout(at);
            Ok::<(), std::convert::Infallible>(())
        })?;
        self.finish_turn(true).await?;
        Response::empty()
    }
}

impl ChatRoom {
    /// Accepts a hibernatable WebSocket as a new connection.
    async fn accept_socket(&self, req: &Request) -> Result<Response> {
        // The Worker refused requests without a client address before forwarding them.
        let Some(ip) = client_ip(req) else {
            return respond(answer::client_unknown());
        };
        let identity = match self.admit(req) {
            Ok(identity) => identity,
            Err(refused) => return respond(refused),
        };
        let pair = WebSocketPair::new()?;
        self.register(&pair.server, ip, identity)?;
        self.finish_turn(false).await?;
        Response::from_websocket(pair.client)
    }

    /// Who the client of an upgrade is: core's decision on the token of its URL (the Worker
    /// already refused the clients core refuses; a token that expired since is refused here).
    fn admit(&self, req: &Request) -> std::result::Result<Option<Identity>, answer::Answer> {
        let policy = crate::auth::policy(&self.env)?;
        if policy.auth.mode() == AuthMode::Off {
            return Ok(None);
        }
        let Some(room) = self.room.get() else {
            // Never expected: the object is named by the room's id.
            worker::console_error!("room: its id is unknown; refusing a token");
            return Err(answer::unavailable());
        };
        let url = req.url().map_err(|_| answer::unavailable())?;
        let token = token_from_query(url.query());
        match policy.admit(&room, token.as_deref(), now())? {
            Access::Anonymous => Ok(None),
            Access::User(identity) => Ok(Some(identity)),
        }
    }

    /// The room's core settings: the defaults, with the access policy aimed at this room
    /// when auth is on (refreshed tokens are checked with it).
    fn room_config(&self) -> RoomConfig {
        let mut config = RoomConfig {
            // A limiter that never makes anyone wait is not asked at all.
            limiter_may_wait: !crate::limiter::limiter_config(&self.env).never_waits(),
            ..RoomConfig::default()
        };
        let policy = crate::auth::policy(&self.env).ok();
        let auth = policy.filter(|policy| policy.auth.mode() != AuthMode::Off);
        if let (Some(policy), Some(room)) = (auth, self.room.get()) {
            config.auth = Some(RoomAuth {
                config: policy.auth.clone(),
                room,
            });
        }
        config
    }

    /// Registers `server` and hands the room its connect.
    fn register(&self, server: &WebSocket, ip: IpAddr, identity: Option<Identity>) -> Result<()> {
        let at = now();
        let mut slot = self.resident.borrow_mut();
        let resident = self.ensure_resident(&mut slot, None)?;
        let conn = loop {
            let conn = ConnId(u64::from_le_bytes(random_bytes::<8>()?));
            if !resident.sockets.contains_key(&conn) {
                break conn;
            }
        };
        let tag = format!("{CONN_TAG_PREFIX}{}", conn.0);
        // The room's id rides along too, for a runtime that does not give objects their name.
        let room_tag = self
            .room
            .get()
            .map(|room| format!("{ROOM_TAG_PREFIX}{}", room.to_hex()));
        let mut tags = vec![tag.as_str()];
        tags.extend(room_tag.as_deref());
        self.state.accept_websocket_with_tags(server, &tags);
        resident.sockets.insert(conn, server.clone());
        resident
            .room
            .handle_connect_as(conn, ip, identity, at)
            .map_err(|e| worker::Error::RustError(e.to_string()))
    }

    /// Publishes a message from the admin endpoint (already authorized by the Worker).
    async fn publish(&self, mut req: Request) -> Result<Response> {
        let body = req.bytes().await?;
        let (name, message) = match PublishBody::parse(&body) {
            Ok(parsed) => parsed,
            Err(why) => return respond(answer::publish_rejected(why)),
        };
        let request = PublishId(self.next_publish.get());
        self.next_publish.set(request.0 + 1);
        let at = now();
        let result = self.input(None, |room| {
            room.handle_publish_checked(request, name, message, at)
        })?;
        if let Err(error) = result {
            return respond(answer::publish_failed(&error));
        }
        // Drain even if another event of this turn will: the answer needs the id now.
        self.finish_turn(true).await?;
        match self.published.borrow_mut().remove(&request) {
            Some(Some(id)) => respond(answer::published(id)),
            // The write failed, or (never expected) the room did not settle it.
            Some(None) | None => respond(answer::unavailable()),
        }
    }

    /// Takes a moderation action from the admin endpoint (already authorized by the Worker).
    async fn moderate(&self, mut req: Request) -> Result<Response> {
        let body = req.bytes().await?;
        let action = match moderation::decode_body(&body) {
            Ok(action) => action,
            Err(error) => return respond(answer::moderation_refused(&error)),
        };
        let request = PublishId(self.next_publish.get());
        self.next_publish.set(request.0 + 1);
        let at = now();
        let result = self.input(None, |room| room.handle_moderate(request, action, at))?;
        if let Err(error) = result {
            return respond(answer::moderation_refused(&error));
        }
        self.finish_turn(true).await?;
        match self.published.borrow_mut().remove(&request) {
            Some(Some(_)) => respond(answer::moderated()),
            Some(None) => respond(answer::moderation_refused(&ModError::StorageUnavailable)),
            None => respond(answer::unavailable()),
        }
    }

    /// A socket closed or broke: the room hears it once.
    fn closed(&self, ws: &WebSocket) -> Result<()> {
        let Some(conn) = conn_of(&self.state, ws) else {
            return Ok(());
        };
        let at = now();
        let mut slot = self.resident.borrow_mut();
        let resident = self.ensure_resident(&mut slot, Some(ws))?;
        resident.sockets.remove(&conn);
        resident.written.remove(&conn);
        match resident.room.handle_close(conn, at) {
            // Already closed (an error then a close, or a socket the room never knew).
            Ok(()) | Err(RoomError::UnknownConnection(_)) => Ok(()),
            Err(error) => Err(worker::Error::RustError(error.to_string())),
        }
    }

    /// Makes the room resident and hands it one input with `f`; its outputs wait for the
    /// end of the turn.
    fn input<E>(
        &self,
        event_ws: Option<&WebSocket>,
        f: impl FnOnce(&mut Room) -> std::result::Result<(), E>,
    ) -> Result<std::result::Result<(), E>> {
        let mut slot = self.resident.borrow_mut();
        let resident = self.ensure_resident(&mut slot, event_ws)?;
        Ok(f(&mut resident.room))
    }

    /// Ends the turn: unless another event already will (or `always`), yields once so that
    /// the events already delivered hand in their inputs, then carries out every output,
    /// awaits the rate limiters, and writes the attachments that changed.
    async fn finish_turn(&self, always: bool) -> Result<()> {
        if self.turn_open.replace(true) && !always {
            return Ok(());
        }
        worker::Delay::from(Duration::ZERO).await;
        self.turn_open.set(false);
        let asks = self.drain()?;
        self.settle(asks).await?;
        self.schedule_expiry().await
    }

    /// Sets the alarm to the room's next timeout (a token expiry, or a held frame's longest
    /// wait), unless one is set already for that time or earlier. An alarm left from a
    /// timeout that no longer applies (a refresh, a close, an answer that came) only wakes
    /// the object once for nothing, and the alarm is then set again; this keeps a storage
    /// write for the alarm off the path of most messages.
    async fn schedule_expiry(&self) -> Result<()> {
        let next = self
            .resident
            .borrow()
            .as_ref()
            .and_then(|r| {
                let aged = r.room.history_age_deadline();
                r.room.poll_timeout().into_iter().chain(aged).min()
            });
        let Some(next) = next else {
            return Ok(());
        };
        if self.alarm_at.get().is_some_and(|set| set <= next) {
            return Ok(());
        }
        let date = js_sys::Date::new(&JsValue::from_f64(next.0 as f64));
        self.state
            .storage()
            .set_alarm(worker::ScheduledTime::new(date))
            .await?;
        self.alarm_at.set(Some(next));
        Ok(())
    }

    /// Reads the resident room (restoring it first if needed).
    fn with_room<T>(&self, event_ws: Option<&WebSocket>, f: impl FnOnce(&Room) -> T) -> Result<T> {
        let mut slot = self.resident.borrow_mut();
        Ok(f(&self.ensure_resident(&mut slot, event_ws)?.room))
    }

    /// Rebuilds the room from storage and the open sockets' attachments, unless resident.
    fn ensure_resident<'a>(
        &self,
        slot: &'a mut Option<Resident>,
        event_ws: Option<&WebSocket>,
    ) -> Result<&'a mut Resident> {
        if slot.is_none() {
            *slot = Some(self.restore(event_ws)?);
        }
        Ok(slot.as_mut().expect("resident"))
    }

    fn restore(&self, event_ws: Option<&WebSocket>) -> Result<Resident> {
        let mut all = self.state.get_websockets();
        if self.room.get().is_none() {
            self.room.set(
                all.iter()
                    .chain(event_ws)
                    .find_map(|ws| room_of(&self.state, ws)),
            );
        }
        let config = self.room_config();
        let mut stored = Vec::new();
        for query in config.restore_queries() {
            stored.extend(sql::list(&self.state.storage(), query)?);
        }
        // A socket whose close is being delivered may no longer be listed.
        if let Some(ws) = event_ws {
            if let Some(conn) = conn_of(&self.state, ws) {
                if !all
                    .iter()
                    .any(|other| conn_of(&self.state, other) == Some(conn))
                {
                    all.push(ws.clone());
                }
            }
        }
        let mut sockets = BTreeMap::new();
        let mut written = BTreeMap::new();
        for ws in all {
            let Some(conn) = conn_of(&self.state, &ws) else {
                close_lost(&ws);
                continue;
            };
            // A socket without a readable attachment gets empty bytes: the core closes it
            // with "Session state lost." rather than guessing.
            written.insert(conn, socket::read_attachment(&ws).unwrap_or_default());
            sockets.insert(conn, ws);
        }
        let mut room = Room::restore(
            config,
            &stored,
            written
                .iter()
                .map(|(conn, bytes)| (*conn, bytes.as_slice())),
        )
        .map_err(|error| {
            worker::console_error!("room: cannot restore: {error}");
            worker::Error::RustError(error.to_string())
        })?;
        room.trim_history(now());
        worker::console_log!(
            "room: rebuilt from {} stored messages and {} sockets",
            stored.len(),
            sockets.len()
        );
        Ok(Resident {
            room,
            sockets,
            written,
        })
    }

    /// Carries out the room's outputs until it has none, then writes the attachments that
    /// changed (each once, before anything is awaited, so that an eviction during the await
    /// finds them current); returns the limiter questions.
    fn drain(&self) -> Result<Vec<(VerdictRequest, ObjectId)>> {
        let mut slot = self.resident.borrow_mut();
        let resident = self.ensure_resident(&mut slot, None)?;
        let mut asks = Vec::new();
        let mut attachments = BTreeMap::new();
        let mut failed = None;
        while let Some(output) = resident.room.poll_output() {
            match output {
                Output::Send { conn, frame } => {
                    if let Some(ws) = resident.sockets.get(&conn) {
                        socket::send(ws, &JsValue::from_str(&frame));
                    }
                }
                Output::Broadcast { recipients, frame } => {
                    let frame = JsValue::from_str(&frame);
                    for conn in recipients.iter() {
                        if let Some(ws) = resident.sockets.get(conn) {
                            socket::send(ws, &frame);
                        }
                    }
                }
                Output::Close { conn, code, reason } => {
                    if let Some(ws) = resident.sockets.get(&conn) {
                        let _ = ws.close(Some(code), Some(reason));
                    }
                }
                Output::Persist(batch) => {
                    let inject = self.fail_writes_containing.as_deref().is_some_and(|text| {
                        batch.writes.iter().any(
                            |write| matches!(write, Write::Put { value, .. } if value.contains(text)),
                        )
                    });
                    let settled = match sql::commit(&self.state.storage(), &batch, inject) {
                        Ok(()) => resident.room.handle_durable(batch.id, now()),
                        Err(error) => {
                            // Nothing of the batch was written: the room tells each sender
                            // (core's error frame) and broadcasts nothing.
                            worker::console_error!("room: storage write failed: {error}");
                            resident
                                .room
                                .handle_write_failed(batch.id, now())
                                .map(|failed| {
                                    let mut published = self.published.borrow_mut();
                                    published.extend(failed.into_iter().map(|r| (r, None)));
                                })
                        }
                    };
                    if let Err(error) = settled {
                        failed = Some(worker::Error::RustError(error.to_string()));
                        break;
                    }
                }
                Output::SetAttachment { conn, attachment } => {
                    attachments.insert(conn, attachment);
                }
                Output::AskRateLimiter { request, ip } => {
                    // A known user's actions count against the user's limiter, wherever from.
                    let user = resident.room.identity(request.conn);
                    let limiter = limiter_id_for(user.map(|identity| identity.sub.as_str()), ip);
                    asks.push((request, limiter));
                }
                Output::Published { request, id } => {
                    self.published.borrow_mut().insert(request, Some(id));
                }
                Output::Moderated { request } => {
                    self.published.borrow_mut().insert(request, Some(0));
                }
            }
        }
        for (conn, bytes) in attachments {
            let Some(ws) = resident.sockets.get(&conn) else {
                continue;
            };
            if resident.written.get(&conn) == Some(&bytes) {
                continue;
            }
            match socket::write_attachment(ws, &bytes) {
                Ok(()) => {
                    resident.written.insert(conn, bytes);
                }
                Err(error) => worker::console_error!("room: cannot write an attachment: {error}"),
            }
        }
        if let Some(error) = failed {
            // A broken contract between this adapter and the room: start over from what
            // storage holds.
            worker::console_error!("room: {error}");
            *slot = None;
            return Err(error);
        }
        Ok(asks)
    }

    /// Asks the rate limiters, feeds their verdicts back, and repeats until nothing is asked.
    async fn settle(&self, mut asks: Vec<(VerdictRequest, ObjectId)>) -> Result<()> {
        while !asks.is_empty() {
            let answers = futures_util::future::join_all(
                std::mem::take(&mut asks)
                    .into_iter()
                    .map(|(request, limiter)| self.ask(request, limiter)),
            )
            .await;
            {
                let mut slot = self.resident.borrow_mut();
                let room = &mut self.ensure_resident(&mut slot, None)?.room;
                let at = now();
                for (request, wait_ms) in answers.into_iter().flatten() {
                    room.handle_rate_limit_verdict(request, wait_ms, at);
                }
            }
            asks = self.drain()?;
        }
        Ok(())
    }

    /// One action against limiter `limiter`; `None` if it could not be asked (the core asks
    /// again after its verdict timeout, which only makes the limit stricter).
    async fn ask(
        &self,
        request: VerdictRequest,
        limiter: ObjectId,
    ) -> Option<(VerdictRequest, u64)> {
        let answer = async {
            let mut response = limiter_stub(&self.env, limiter)?
                .fetch_with_str("https://limiter.invalid/action")
                .await?;
            #[derive(Deserialize)]
            struct Verdict {
                wait_ms: u64,
            }
            let verdict: Verdict = response.json().await?;
            Ok::<u64, worker::Error>(verdict.wait_ms)
        };
        match answer.await {
            Ok(wait_ms) => Some((request, wait_ms)),
            Err(error) => {
                worker::console_error!("room: rate limiter {limiter} did not answer: {error}");
                None
            }
        }
    }
}

/// The core id of the room in a forwarded request's path (`/api/room/<room>/<action>`), for
/// a runtime that does not give objects their name.
fn room_in_path(env: &Env, path: &str) -> Option<ObjectId> {
    let segment = path.strip_prefix("/api/room/")?.split('/').next()?;
    let secret = crate::env_string(env, crate::ID_SECRET_NAME)?;
    edgechat_core::http::room_id(segment, &IdSecret::new(secret.into_bytes())).ok()
}
