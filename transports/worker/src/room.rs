//! The `ChatRoom` Durable Object: one chat room, driven by the core's [`Room`].
//!
//! # Hibernation
//! Sockets are accepted with the WebSocket Hibernation API (`state.acceptWebSocket` with a
//! tag `conn:<id>` that names the core's [`ConnId`]), so the runtime may evict the object
//! while its sockets stay open. Everything the core needs about a socket is in its
//! attachment (the core's bytes, hex-encoded); everything else is in SQLite. The object keeps
//! the room in memory only as a cache: every event first checks it, and an object
//! constructed anew (after an eviction) rebuilds the room with [`Room::restore`] from the
//! newest stored messages and the open sockets' attachments.
//!
//! # Events
//! The runtime delivers one event at a time, except that other events may run while an
//! event awaits a call to another object. Every event therefore handles its input and
//! carries out the room's outputs synchronously, without holding the room across an await;
//! only the rate-limiter questions are awaited, and their answers are fed back as inputs.
//!
//! # Durability before visibility
//! A [`Output::Persist`] batch is committed in one SQLite transaction before the room hears
//! it is durable and broadcasts its messages; the runtime's output gate additionally holds
//! those sends until the write is confirmed on disk.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::IpAddr;

use edgechat_core::http::{HistoryQuery, PublishBody};
use edgechat_core::limiter::VerdictRequest;
use edgechat_core::protocol::{CLOSE_INTERNAL_ERROR, CLOSE_REASON_STATE_LOST};
use edgechat_core::room::{ConnId, Output, PublishError, PublishId, Room, RoomConfig, RoomError};
use serde::{Deserialize, Serialize};
use worker::{
    durable_object, DurableObject, Env, Request, Response, Result, State, WebSocket,
    WebSocketIncomingMessage, WebSocketPair,
};

use crate::{client_ip, json, limiter_stub, now, random_bytes, sql, text};

/// Prefix of the socket tag that carries the connection id.
const CONN_TAG_PREFIX: &str = "conn:";
/// The version of [`SocketAttachment`].
const ATTACHMENT_VERSION: u8 = 1;

/// What each hibernatable socket carries (at most 16 KiB on Workers; this is about 100 B).
#[derive(Debug, Serialize, Deserialize)]
struct SocketAttachment {
    /// [`ATTACHMENT_VERSION`].
    v: u8,
    /// The core's attachment bytes, hex-encoded.
    core: String,
}

/// One chat room.
#[durable_object]
pub struct ChatRoom {
    state: State,
    env: Env,
    resident: RefCell<Option<Resident>>,
    next_publish: Cell<u64>,
}

/// The room in memory, and its sockets by connection id.
struct Resident {
    room: Room,
    sockets: BTreeMap<ConnId, WebSocket>,
}

/// What a round of outputs left for the event to do after the room is released.
#[derive(Default)]
struct Pending {
    asks: Vec<(VerdictRequest, IpAddr)>,
    published: Vec<(PublishId, u64)>,
}

impl DurableObject for ChatRoom {
    fn new(state: State, env: Env) -> Self {
        if let Err(error) = sql::ensure_schema(&state.storage()) {
            worker::console_error!("room: cannot create its table: {error}");
        }
        ChatRoom {
            state,
            env,
            resident: RefCell::new(None),
            next_publish: Cell::new(1),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        // The Worker routed and checked this request; the last segment says what it is.
        let url = req.url()?;
        let action = url.path().rsplit('/').next().unwrap_or("").to_owned();
        match action.as_str() {
            "websocket" => self.accept_socket(&req).await,
            "history" => {
                let query = match HistoryQuery::parse(url.query()) {
                    Ok(query) => query,
                    Err(refusal) => return text(refusal.status, refusal.body),
                };
                let frames =
                    self.with_room(None, |room| room.history_page(query.before, query.limit))?;
                json(200, format!(r#"{{"messages":[{}]}}"#, frames.join(",")))
            }
            "presence" => {
                let names: Vec<String> =
                    self.with_room(None, |room| room.presence().map(str::to_owned).collect())?;
                json(200, serde_json::json!({ "users": names }).to_string())
            }
            "messages" => self.publish(req).await,
            _ => text(404, "Not found"),
        }
    }

    async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> Result<()> {
        let Some(conn) = self.conn_of(&ws) else {
            return close_lost(&ws);
        };
        let at = now();
        let result = self.handle(Some(&ws), |room| match &message {
            WebSocketIncomingMessage::String(text) => room.handle_text(conn, text, at),
            WebSocketIncomingMessage::Binary(_) => room.handle_binary(conn, at),
        })?;
        match result {
            Ok(pending) => self.settle(pending).await,
            Err(RoomError::UnknownConnection(_)) => close_lost(&ws),
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
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, error: worker::Error) -> Result<()> {
        worker::console_log!("room: socket error: {error}");
        self.closed(&ws)
    }
}

impl ChatRoom {
    /// Accepts a hibernatable WebSocket as a new connection.
    async fn accept_socket(&self, req: &Request) -> Result<Response> {
        let ip = client_ip(req);
        let pair = WebSocketPair::new()?;
        let server = pair.server;
        let at = now();
        let pending = self.register(&server, ip, at)?;
        self.settle(pending).await?;
        Response::from_websocket(pair.client)
    }

    /// Registers `server` and hands the room its connect (all synchronous).
    fn register(
        &self,
        server: &WebSocket,
        ip: IpAddr,
        at: edgechat_core::Timestamp,
    ) -> Result<Pending> {
        let mut slot = self.resident.borrow_mut();
        self.ensure_resident(&mut slot, None)?;
        let resident = slot.as_mut().expect("resident");
        let conn = loop {
            let conn = ConnId(u64::from_le_bytes(random_bytes::<8>()));
            if !resident.sockets.contains_key(&conn) {
                break conn;
            }
        };
        let tag = format!("{CONN_TAG_PREFIX}{}", conn.0);
        self.state
            .accept_websocket_with_tags(server, &[tag.as_str()]);
        resident.sockets.insert(conn, server.clone());
        resident
            .room
            .handle_connect(conn, ip, at)
            .map_err(|e| worker::Error::RustError(e.to_string()))?;
        self.drive(&mut slot)
    }

    /// Publishes a message from the admin endpoint (already authorized by the Worker).
    async fn publish(&self, mut req: Request) -> Result<Response> {
        let body = req.bytes().await?;
        let (name, message) = match PublishBody::parse(&body) {
            Ok(parsed) => parsed,
            Err(why) => return text(400, why),
        };
        let request = PublishId(self.next_publish.get());
        self.next_publish.set(request.0 + 1);
        let at = now();
        let result = self.handle(None, |room| {
            room.handle_publish(request, &name, &message, at)
        })?;
        let pending = match result {
            Ok(pending) => pending,
            Err(error @ PublishError::Busy) => return text(503, &error.to_string()),
            Err(error) => return text(400, &error.to_string()),
        };
        let id = pending
            .published
            .iter()
            .find(|(r, _)| *r == request)
            .map(|(_, id)| *id);
        self.settle(pending).await?;
        match id {
            Some(id) => json(200, format!(r#"{{"id":{id}}}"#)),
            None => text(500, "The message was not confirmed."),
        }
    }

    /// A socket closed or broke: the room hears it once.
    fn closed(&self, ws: &WebSocket) -> Result<()> {
        let Some(conn) = self.conn_of(ws) else {
            return Ok(());
        };
        let at = now();
        let mut slot = self.resident.borrow_mut();
        self.ensure_resident(&mut slot, Some(ws))?;
        let resident = slot.as_mut().expect("resident");
        resident.sockets.remove(&conn);
        match resident.room.handle_close(conn, at) {
            // Already closed (an error then a close, or a socket the room never knew).
            Ok(()) | Err(RoomError::UnknownConnection(_)) => {}
            Err(error) => return Err(worker::Error::RustError(error.to_string())),
        }
        // A quit carries no rate-limiter question, so nothing remains to await.
        let _ = self.drive(&mut slot)?;
        Ok(())
    }

    /// Makes the room resident, hands it one input with `f`, and carries out its outputs.
    fn handle<T, E>(
        &self,
        event_ws: Option<&WebSocket>,
        f: impl FnOnce(&mut Room) -> std::result::Result<T, E>,
    ) -> Result<std::result::Result<Pending, E>> {
        let mut slot = self.resident.borrow_mut();
        self.ensure_resident(&mut slot, event_ws)?;
        let room = &mut slot.as_mut().expect("resident").room;
        if let Err(error) = f(room) {
            // A refused input may still have queued outputs (none today); carry them out.
            self.drive(&mut slot)?;
            return Ok(Err(error));
        }
        Ok(Ok(self.drive(&mut slot)?))
    }

    /// Reads the resident room (restoring it first if needed).
    fn with_room<T>(&self, event_ws: Option<&WebSocket>, f: impl FnOnce(&Room) -> T) -> Result<T> {
        let mut slot = self.resident.borrow_mut();
        self.ensure_resident(&mut slot, event_ws)?;
        Ok(f(&slot.as_ref().expect("resident").room))
    }

    /// Rebuilds the room from storage and the open sockets' attachments, unless resident.
    fn ensure_resident(
        &self,
        slot: &mut Option<Resident>,
        event_ws: Option<&WebSocket>,
    ) -> Result<()> {
        if slot.is_some() {
            return Ok(());
        }
        let config = RoomConfig::default();
        let stored = sql::list(&self.state.storage(), config.restore_query())?;
        let mut sockets = BTreeMap::new();
        let mut attachments = Vec::new();
        let mut all = self.state.get_websockets();
        // A socket whose close is being delivered may no longer be listed.
        if let Some(ws) = event_ws {
            if let Some(conn) = self.conn_of(ws) {
                if !all.iter().any(|other| self.conn_of(other) == Some(conn)) {
                    all.push(ws.clone());
                }
            }
        }
        for ws in all {
            let Some(conn) = self.conn_of(&ws) else {
                let _ = close_lost(&ws);
                continue;
            };
            let bytes = ws
                .deserialize_attachment::<SocketAttachment>()
                .ok()
                .flatten()
                .filter(|a| a.v == ATTACHMENT_VERSION)
                .and_then(|a| from_hex(&a.core));
            // A socket without a readable attachment gets empty bytes: the core closes it
            // with "Session state lost." rather than guessing.
            attachments.push((conn, bytes.unwrap_or_default()));
            sockets.insert(conn, ws);
        }
        let room = Room::restore(
            config,
            &stored,
            attachments
                .iter()
                .map(|(conn, bytes)| (*conn, bytes.as_slice())),
        )
        .map_err(|error| {
            worker::console_error!("room: cannot restore: {error}");
            worker::Error::RustError(error.to_string())
        })?;
        worker::console_log!(
            "room: rebuilt from {} stored messages and {} sockets",
            stored.len(),
            sockets.len()
        );
        *slot = Some(Resident { room, sockets });
        Ok(())
    }

    /// Carries out the room's outputs until it has none; returns what must be awaited.
    fn drive(&self, slot: &mut Option<Resident>) -> Result<Pending> {
        let mut pending = Pending::default();
        let resident = slot.as_mut().expect("resident");
        let storage = self.state.storage();
        while let Some(output) = resident.room.poll_output() {
            match output {
                Output::Send { conn, frame } => {
                    if let Some(ws) = resident.sockets.get(&conn) {
                        let _ = ws.send_with_str(&*frame);
                    }
                }
                Output::Broadcast { recipients, frame } => {
                    for conn in recipients.iter() {
                        if let Some(ws) = resident.sockets.get(conn) {
                            // A socket that broke is reported by its own close event.
                            let _ = ws.send_with_str(&*frame);
                        }
                    }
                }
                Output::Close { conn, code, reason } => {
                    if let Some(ws) = resident.sockets.get(&conn) {
                        let _ = ws.close(Some(code), Some(reason));
                    }
                }
                Output::Persist(batch) => {
                    if let Err(error) = sql::commit(&storage, &batch) {
                        worker::console_error!("room: storage write failed: {error}");
                        // The room believes in writes that did not happen: forget it, so the
                        // next event rebuilds it from what storage really holds.
                        *slot = None;
                        return Err(error);
                    }
                    resident
                        .room
                        .handle_durable(batch.id, now())
                        .map_err(|e| worker::Error::RustError(e.to_string()))?;
                }
                Output::SetAttachment { conn, attachment } => {
                    if let Some(ws) = resident.sockets.get(&conn) {
                        ws.serialize_attachment(SocketAttachment {
                            v: ATTACHMENT_VERSION,
                            core: to_hex(&attachment),
                        })?;
                    }
                }
                Output::AskRateLimiter { request, ip } => pending.asks.push((request, ip)),
                Output::Published { request, id } => pending.published.push((request, id)),
            }
        }
        Ok(pending)
    }

    /// Asks the rate limiters, feeds their verdicts back, and repeats until nothing is asked.
    async fn settle(&self, mut pending: Pending) -> Result<()> {
        while !pending.asks.is_empty() {
            let asks = std::mem::take(&mut pending.asks);
            let answers = futures_util::future::join_all(
                asks.into_iter().map(|(request, ip)| self.ask(request, ip)),
            )
            .await;
            let mut slot = self.resident.borrow_mut();
            self.ensure_resident(&mut slot, None)?;
            for (request, wait_ms) in answers.into_iter().flatten() {
                let room = &mut slot.as_mut().expect("resident").room;
                room.handle_rate_limit_verdict(request, wait_ms, now());
            }
            pending = self.drive(&mut slot)?;
        }
        Ok(())
    }

    /// One action against `ip`'s limiter; `None` if it could not be asked (the core asks
    /// again after its verdict timeout, which only makes the limit stricter).
    async fn ask(&self, request: VerdictRequest, ip: IpAddr) -> Option<(VerdictRequest, u64)> {
        let answer = async {
            let mut response = limiter_stub(&self.env, ip)?
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
                worker::console_error!("room: rate limiter for {ip} did not answer: {error}");
                None
            }
        }
    }

    /// The connection id in a socket's tag.
    fn conn_of(&self, ws: &WebSocket) -> Option<ConnId> {
        self.state
            .get_tags(ws)
            .iter()
            .find_map(|tag| tag.strip_prefix(CONN_TAG_PREFIX)?.parse().ok())
            .map(ConnId)
    }
}

/// Closes a socket whose session state cannot be found.
fn close_lost(ws: &WebSocket) -> Result<()> {
    let _ = ws.close(Some(CLOSE_INTERNAL_ERROR), Some(CLOSE_REASON_STATE_LOST));
    Ok(())
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    out
}

fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return None;
    }
    hex.as_bytes()
        .chunks_exact(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}
