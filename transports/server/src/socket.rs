//! One WebSocket connection, served by one task: it reads frames and hands them to the room,
//! pings the peer and checks that it answers, and writes whatever the room could not write
//! straight into the socket (the room writes directly; see [`crate::conn`]).
//!
//! ```text
//!   accepted ──Connect (acked)──► open ──┬─ client closes ─► answer its close ──────────┐
//!                                        ├─ room closes (code) ─► close, await answer ───┤
//!                                        ├─ too slow / ping timeout / shutdown ──────────┤
//!                                        └─ transport error ─────────────────────────────┴─► Closed to room
//! ```
//! Nothing here blocks the room: it queues into the shared writer and closes a connection
//! whose queue keeps growing. A close request drops the frames not yet started, so a peer
//! that stops reading cannot hold anything up.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edgechat_core::auth::Identity;
use edgechat_core::ids::ObjectId;
use edgechat_core::protocol::{CLOSE_INTERNAL_ERROR, CLOSE_REASON_ROOM_UNAVAILABLE};
use edgechat_core::room::ConnId;
use futures_util::StreamExt as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::conn::{self, ConnIo, ConnWriter, Io, Split};
use crate::metrics::{dec, inc, Metrics};
use crate::objects::Route;
use crate::room::{Connect, RoomMsg, Rooms};

/// A WebSocket as tungstenite reads it (its writes go to the shared writer).
type WebSocket = WebSocketStream<ConnIo>;

/// Connection ids are global, so they are unique within every room for the process's life.
static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// How long a close frame may take to send, and the peer to answer it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a frame is re-routed to a room that keeps retiring under it (never more than
/// once or twice in practice).
const ROUTE_ATTEMPTS_MAX: usize = 8;

/// Close code when the server stops ("going away").
pub(crate) const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_REASON_SHUTDOWN: &str = "Server shutting down.";
const CLOSE_REASON_PING_TIMEOUT: &str = "Ping timeout.";
/// Close code for a frame over `max_frame_bytes` ("message too big").
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_REASON_TOO_BIG: &str = "Frame too large.";
/// Close code for a WebSocket protocol violation.
const CLOSE_PROTOCOL_ERROR: u16 = 1002;
const CLOSE_REASON_PROTOCOL_ERROR: &str = "Protocol error.";

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

/// tungstenite's settings for a server connection whose peer may send `max_frame_bytes`.
fn ws_config(max_frame_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .write_buffer_size(WS_WRITE_BUFFER_BYTES)
        .max_write_buffer_size(WS_MAX_WRITE_BUFFER_BYTES.max(max_frame_bytes.saturating_mul(2)))
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes))
}

/// The settings of every WebSocket connection (a slice of the runtime's).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SocketSettings {
    /// Largest frame or message a client may send, in bytes.
    pub max_frame_bytes: usize,
    /// Interval between keepalive pings.
    pub ping_interval_ms: u64,
}

/// What a connection's task needs: the rooms to talk to, its settings, and the runtime's
/// shutdown signal.
#[derive(Debug)]
pub(crate) struct SocketContext {
    pub rooms: Arc<Rooms>,
    pub settings: SocketSettings,
    /// Turns `true` once the runtime starts shutting down.
    pub shutdown: watch::Receiver<bool>,
}

/// Counts one open connection for as long as it lives (also when an upgrade never
/// completes and the guard is dropped unused).
#[derive(Debug)]
pub(crate) struct ConnectionGuard {
    metrics: Arc<Metrics>,
}

impl ConnectionGuard {
    /// Reserves a connection slot, or `None` at `max`.
    pub(crate) fn try_new(metrics: &Arc<Metrics>, max: usize) -> Option<ConnectionGuard> {
        let max = max as u64;
        metrics
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .ok()?;
        inc(&metrics.connections_accepted);
        Some(ConnectionGuard {
            metrics: metrics.clone(),
        })
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        dec(&self.metrics.connections);
    }
}

/// Serves one upgraded WebSocket in room `room` until it closes.
pub(crate) async fn serve(
    io: impl Io,
    context: SocketContext,
    room: ObjectId,
    ip: IpAddr,
    identity: Option<Identity>,
    guard: ConnectionGuard,
) {
    let conn = ConnId(NEXT_CONN.fetch_add(1, Ordering::Relaxed));
    let Split {
        io,
        writer,
        mut task_sink,
    } = conn::split(io);
    let config = ws_config(context.settings.max_frame_bytes);
    let mut socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let write_side = writer.drive(task_sink.as_mut());
    tokio::pin!(write_side);

    let (ack, acked) = oneshot::channel();
    let connect = RoomMsg::Connect(Box::new(Connect {
        conn,
        ip,
        identity,
        writer: writer.clone(),
        ack,
    }));
    let rooms = &context.rooms;
    let joined = rooms.send(room, connect).await.is_ok() && acked.await.is_ok();
    let mut write_done = false;
    if joined {
        tracing::debug!(conn = conn.0, %ip, room = %room, "connection open");
        write_done = run(
            &mut socket,
            &writer,
            write_side.as_mut(),
            &context,
            room,
            conn,
        )
        .await;
        let _ = rooms.send(room, RoomMsg::Closed { conn }).await;
    } else {
        writer.close(CLOSE_INTERNAL_ERROR, CLOSE_REASON_ROOM_UNAVAILABLE, true);
    }
    // Write what is still queued (a close frame, the answer to the peer's close), within
    // limits, before the socket is dropped.
    writer.finish();
    if !write_done {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, write_side).await;
    }
    tracing::debug!(conn = conn.0, "connection closed");
    drop(guard);
}

/// The connection's loop; returns whether the write side has finished.
async fn run(
    socket: &mut WebSocket,
    writer: &ConnWriter,
    mut write_side: Pin<&mut impl Future<Output = io::Result<()>>>,
    context: &SocketContext,
    room: ObjectId,
    conn: ConnId,
) -> bool {
    let rooms = &context.rooms;
    let ping_every = Duration::from_millis(context.settings.ping_interval_ms.max(1));
    let mut liveness = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    let mut last_seen = Instant::now();
    let mut shutdown = context.shutdown.clone();
    let mut stopping = false;
    // Set once a close is under way: the peer gets this long to complete the handshake.
    let mut close_deadline: Option<Instant> = None;
    let mut write_done = false;
    // A frame read but not yet taken by the room's (full) inbox: reading waits until it is
    // (backpressure stops this reader, and so the peer). No inbox is kept otherwise, so a
    // dormant room's channel is not held open by its sockets.
    let mut to_room: Option<(mpsc::Sender<RoomMsg>, RoomMsg)> = None;
    loop {
        if !stopping && *shutdown.borrow_and_update() {
            stopping = true;
            writer.close(CLOSE_GOING_AWAY, CLOSE_REASON_SHUTDOWN, true);
        }
        tokio::select! {
            frame = socket.next(), if to_room.is_none() => match frame {
                None => return write_done,
                Some(Ok(frame)) => {
                    last_seen = Instant::now();
                    match frame {
                        // tungstenite has checked the UTF-8 already.
                        Message::Text(text) => {
                            let text = text.as_str().to_owned();
                            to_room = hand_to_room(rooms, room, RoomMsg::Text { conn, text });
                        }
                        Message::Binary(_) => {
                            to_room = hand_to_room(rooms, room, RoomMsg::Binary { conn });
                        }
                        Message::Close(_) => {
                            // The next read queues tungstenite's answer and ends the stream.
                            writer.peer_closing();
                            close_deadline.get_or_insert(Instant::now() + CLOSE_TIMEOUT);
                        }
                        // Pings are answered by tungstenite; pongs only prove liveness.
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    }
                }
                Some(Err(error)) => {
                    tracing::debug!(conn = conn.0, %error, "websocket read failed");
                    // tungstenite reports an oversized frame or message as a capacity error.
                    if matches!(error, WsError::Capacity(_)) {
                        writer.close(CLOSE_TOO_BIG, CLOSE_REASON_TOO_BIG, true);
                    } else {
                        writer.close(CLOSE_PROTOCOL_ERROR, CLOSE_REASON_PROTOCOL_ERROR, true);
                    }
                    return write_done;
                }
            },
            permit = reserve(to_room.as_ref().map(|(inbox, _)| inbox.clone())) => {
                let (_, msg) = to_room.take().expect("pending while nothing waits");
                match permit {
                    Ok(permit) => drop(permit.send(msg)),
                    Err(_) if *context.shutdown.borrow() => return write_done,
                    // The room task retired meanwhile: route again.
                    Err(_) => to_room = hand_to_room(rooms, room, msg),
                }
            }
            written = write_side.as_mut(), if !write_done => {
                write_done = true;
                if written.is_err() {
                    return true;
                }
                // Our close frame is out: wait for the peer's answer.
                close_deadline.get_or_insert(Instant::now() + CLOSE_TIMEOUT);
            }
            _ = liveness.tick() => {
                if last_seen.elapsed() > 2 * ping_every {
                    if close_deadline.is_none() {
                        tracing::debug!(conn = conn.0, "no pong: closing");
                        writer.close(CLOSE_GOING_AWAY, CLOSE_REASON_PING_TIMEOUT, true);
                        close_deadline = Some(Instant::now() + CLOSE_TIMEOUT);
                    }
                } else {
                    writer.ping();
                }
            }
            changed = shutdown.changed(), if !stopping => {
                if changed.is_err() {
                    stopping = true;
                    writer.close(CLOSE_GOING_AWAY, CLOSE_REASON_SHUTDOWN, true);
                }
            }
            () = sleep_until(close_deadline) => return write_done,
        }
    }
}

/// Hands `msg` to room `room` without waiting; gives it back with the inbox if that is full.
fn hand_to_room(
    rooms: &Arc<Rooms>,
    room: ObjectId,
    mut msg: RoomMsg,
) -> Option<(mpsc::Sender<RoomMsg>, RoomMsg)> {
    for _ in 0..ROUTE_ATTEMPTS_MAX {
        match rooms.route(room, msg) {
            Route::Parked => return None,
            Route::Inbox(inbox, back) => match inbox.try_send(back) {
                Ok(()) => return None,
                Err(mpsc::error::TrySendError::Full(back)) => return Some((inbox, back)),
                // Retired between the lookup and the send: look it up again.
                Err(mpsc::error::TrySendError::Closed(back)) => msg = back,
            },
        }
    }
    tracing::warn!(room = %room, "room kept retiring; frame dropped");
    None
}

/// Waits for room in `inbox` (never, without one).
async fn reserve(
    inbox: Option<mpsc::Sender<RoomMsg>>,
) -> Result<mpsc::OwnedPermit<RoomMsg>, mpsc::error::SendError<()>> {
    match inbox {
        Some(inbox) => inbox.reserve_owned().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
