//! One WebSocket connection: a reader that turns frames into room inputs, and a writer that
//! drains the connection's bounded outbound queue into the socket.
//!
//! ```text
//!   accepted ──Connect (acked)──► open ──┬─ client closes ─► reply to its close ─┐
//!                                        ├─ room closes (code) ─► close, await reply ─┤
//!                                        ├─ too slow / ping timeout / shutdown ───────┤
//!                                        └─ transport error ──────────────────────────┴─► Closed to room
//! ```
//! The writer never blocks the room: the room `try_send`s into the queue and closes the
//! connection when it is full. A send stuck on a full TCP buffer is abandoned as soon as a
//! close is requested, so a peer that stops reading cannot hold anything up.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edgechat_core::ids::ObjectId;
use edgechat_core::room::ConnId;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::metrics::{dec, inc, Metrics};
use crate::objects::Shared;
use crate::room::{CloseNow, Outbound, RoomMsg};

/// An upgraded connection (plain TCP or TLS underneath).
pub(crate) type WebSocket = WebSocketStream<hyper::upgrade::Upgraded>;

/// Connection ids are global, so they are unique within every room for the process's life.
static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Most queued frames written before one flush.
const FRAMES_PER_FLUSH_MAX: usize = 64;
/// Room for close requests (the room, the reader); more than one is never needed.
const CLOSE_QUEUE_LEN: usize = 4;
/// How long a close frame may take to send, and the peer to answer it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

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
const CLOSE_INTERNAL_ERROR: u16 = 1011;
const CLOSE_REASON_UNAVAILABLE: &str = "Room unavailable.";

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
    socket: WebSocket,
    shared: Arc<Shared>,
    room: ObjectId,
    ip: IpAddr,
    guard: ConnectionGuard,
) {
    let conn = ConnId(NEXT_CONN.fetch_add(1, Ordering::Relaxed));
    let (outbound, outbound_rx) = mpsc::channel(shared.config.outbound_queue_len.max(1));
    let (close_now, close_now_rx) = mpsc::channel(CLOSE_QUEUE_LEN);
    let (writer_done, writer_done_rx) = watch::channel(false);
    let (sink, stream) = socket.split();
    let ping_every = Duration::from_millis(shared.config.ping_interval_ms.max(1));
    let writer = tokio::spawn(write_loop(
        sink,
        outbound_rx,
        close_now_rx,
        shared.shutdown.subscribe(),
        ping_every,
        writer_done,
    ));

    let (ack, acked) = oneshot::channel();
    let connect = RoomMsg::Connect {
        conn,
        ip,
        outbound,
        close_now: close_now.clone(),
        ack,
    };
    let joined = shared.send_room(room, connect).await.is_ok() && acked.await.is_ok();
    if joined {
        tracing::debug!(conn = conn.0, %ip, room = %room, "connection open");
        read_loop(
            stream,
            &shared,
            room,
            conn,
            &close_now,
            writer_done_rx,
            ping_every,
        )
        .await;
        let _ = shared.send_room(room, RoomMsg::Closed { conn }).await;
    } else {
        let _ = close_now.try_send((CLOSE_INTERNAL_ERROR, CLOSE_REASON_UNAVAILABLE));
        drop(stream);
    }
    // The writer ends when the room drops the connection's queues (after `Closed`), or
    // after sending a close frame.
    drop(close_now);
    let abort = writer.abort_handle();
    if tokio::time::timeout(CLOSE_TIMEOUT, writer).await.is_err() {
        abort.abort();
    }
    tracing::debug!(conn = conn.0, "connection closed");
    drop(guard);
}

async fn read_loop(
    mut stream: SplitStream<WebSocket>,
    shared: &Arc<Shared>,
    room: ObjectId,
    conn: ConnId,
    close_now: &mpsc::Sender<CloseNow>,
    mut writer_done: watch::Receiver<bool>,
    ping_every: Duration,
) {
    let mut inbox = shared.room(room);
    let mut liveness = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    let mut last_seen = Instant::now();
    // Set once a close is under way: the peer gets this long to complete the handshake.
    let mut close_deadline: Option<Instant> = None;
    let mut writer_running = true;
    loop {
        let msg = tokio::select! {
            frame = stream.next() => match frame {
                None => return,
                Some(Ok(frame)) => {
                    last_seen = Instant::now();
                    match frame {
                        // tungstenite has checked the UTF-8 already.
                        Message::Text(text) => RoomMsg::Text {
                            conn,
                            text: text.as_str().to_owned(),
                        },
                        Message::Binary(_) => RoomMsg::Binary { conn },
                        Message::Close(_) => {
                            // The next read sends our answer and then ends the stream.
                            close_deadline.get_or_insert(Instant::now() + CLOSE_TIMEOUT);
                            continue;
                        }
                        // Pings are answered by tungstenite; pongs only prove liveness.
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                    }
                }
                Some(Err(error)) => {
                    tracing::debug!(conn = conn.0, %error, "websocket read failed");
                    // tungstenite reports an oversized frame or message as a capacity error.
                    let close = if matches!(error, WsError::Capacity(_)) {
                        (CLOSE_TOO_BIG, CLOSE_REASON_TOO_BIG)
                    } else {
                        (CLOSE_PROTOCOL_ERROR, CLOSE_REASON_PROTOCOL_ERROR)
                    };
                    let _ = close_now.try_send(close);
                    return;
                }
            },
            _ = liveness.tick() => {
                if last_seen.elapsed() > 2 * ping_every && close_deadline.is_none() {
                    tracing::debug!(conn = conn.0, "no pong: closing");
                    let _ = close_now.try_send((CLOSE_GOING_AWAY, CLOSE_REASON_PING_TIMEOUT));
                    close_deadline = Some(Instant::now() + CLOSE_TIMEOUT);
                }
                continue;
            }
            _ = writer_done.changed(), if writer_running => {
                // The writer sent a close (or the socket broke): wait for the peer's answer.
                writer_running = false;
                close_deadline.get_or_insert(Instant::now() + CLOSE_TIMEOUT);
                continue;
            }
            () = sleep_until(close_deadline) => return,
        };
        // Backpressure: a full room inbox stops this reader, and so the peer.
        let mut msg = msg;
        loop {
            match inbox.send(msg).await {
                Ok(()) => break,
                // The room holds this socket, so its task cannot retire; this is shutdown.
                Err(mpsc::error::SendError(back)) => {
                    msg = back;
                    inbox = shared.room(room);
                    if *shared.shutdown.borrow() {
                        return;
                    }
                }
            }
        }
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut outbound: mpsc::Receiver<Outbound>,
    mut close_now: mpsc::Receiver<CloseNow>,
    mut shutdown: watch::Receiver<bool>,
    ping_every: Duration,
    done: watch::Sender<bool>,
) {
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    let mut batch: Vec<Message> = Vec::with_capacity(FRAMES_PER_FLUSH_MAX);
    let close = 'run: loop {
        let mut close_after = None;
        tokio::select! {
            biased;
            Some(close) = close_now.recv() => break 'run Some(close),
            _ = shutdown.wait_for(|stopping| *stopping) => {
                break 'run Some((CLOSE_GOING_AWAY, CLOSE_REASON_SHUTDOWN));
            }
            item = outbound.recv() => match item {
                // Shared bytes: a reference count per recipient, not a copy.
                Some(Outbound::Frame(frame)) => batch.push(Message::Text(frame)),
                Some(Outbound::Frames(frames)) => batch.extend(frames.into_iter().map(Message::Text)),
                Some(Outbound::Close { code, reason }) => break 'run Some((code, reason)),
                // The room dropped this connection (it closed): nothing more to write.
                None => break 'run None,
            },
            _ = ping.tick() => batch.push(Message::Ping(Default::default())),
        }
        while batch.len() < FRAMES_PER_FLUSH_MAX {
            match outbound.try_recv() {
                Ok(Outbound::Frame(frame)) => batch.push(Message::Text(frame)),
                Ok(Outbound::Frames(frames)) => {
                    batch.extend(frames.into_iter().map(Message::Text));
                }
                Ok(Outbound::Close { code, reason }) => {
                    close_after = Some((code, reason));
                    break;
                }
                Err(_) => break,
            }
        }
        let write = async {
            for message in batch.drain(..) {
                sink.feed(message).await?;
            }
            sink.flush().await
        };
        // A peer that stops reading blocks this write; a close request abandons it.
        tokio::select! {
            biased;
            Some(close) = close_now.recv() => break 'run Some(close),
            _ = shutdown.wait_for(|stopping| *stopping) => {
                break 'run Some((CLOSE_GOING_AWAY, CLOSE_REASON_SHUTDOWN));
            }
            written = write => {
                if written.is_err() {
                    break 'run None;
                }
            }
        }
        batch.clear();
        if close_after.is_some() {
            break 'run close_after;
        }
    };
    if let Some((code, reason)) = close {
        let closing = sink.send(Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: Utf8Bytes::from_static(reason),
        })));
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
    }
    let _ = done.send(true);
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
