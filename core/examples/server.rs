//! A minimal server that embeds one edgechat room: how to put the core inside your own
//! server. Run it with `cargo run -p edgechat-core --example server`, then connect a
//! WebSocket client to `ws://127.0.0.1:8788/` and send `{"name":"ada"}`.
//!
//! One task owns the room (no locks); connection tasks send it inputs over a channel and get
//! frames back on their own bounded queues. Storage is in memory and the rate limiter answers
//! in line: a real deployment would use `edgechat-server`, which adds SQLite, many rooms,
//! hibernation and the HTTP routes.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use edgechat_core::host::{HostOutput, RoomHost};
use edgechat_core::limiter::{RateLimiter, RateLimiterConfig};
use edgechat_core::protocol::Frame;
use edgechat_core::room::{ConnId, Input, Output, RoomConfig};
use edgechat_core::storage::MemoryStore;
use edgechat_core::Timestamp;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// What a connection task tells the room task.
enum Event {
    Open(ConnId, IpAddr, mpsc::Sender<Message>),
    Input(Input),
}

/// The IO shell supplies the clock; the core never reads one.
#[allow(clippy::disallowed_methods)]
fn now() -> Timestamp {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp(since_epoch.as_millis() as u64)
}

async fn run_room(mut events: mpsc::Receiver<Event>) {
    let mut host = RoomHost::new(RoomConfig::default(), u64::MAX);
    let mut storage = MemoryStore::new();
    let mut limiter = RateLimiter::new(RateLimiterConfig::default());
    let mut sockets: BTreeMap<ConnId, mpsc::Sender<Message>> = BTreeMap::new();
    let mut inbox = Vec::new();
    while let Some(event) = events.recv().await {
        inbox.push(match event {
            Event::Open(conn, ip, outbound) => {
                sockets.insert(conn, outbound);
                Input::Connect { conn, ip }
            }
            Event::Input(input) => input,
        });
        while let Some(input) = inbox.pop() {
            if !host.is_resident() {
                let stored = storage.list_each(&host.config().restore_queries());
                host.restore(&stored, [], now())
                    .expect("memory storage is never corrupt");
            }
            if let Err(error) = host.handle_input(input, now()) {
                eprintln!("ignored input: {error}");
            }
            while let Some(output) = host.poll_output() {
                match output {
                    HostOutput::Room(Output::Send { conn, frame }) => send(&sockets, conn, &frame),
                    HostOutput::Room(Output::Broadcast { recipients, frame }) => {
                        for conn in recipients.iter() {
                            send(&sockets, *conn, &frame);
                        }
                    }
                    HostOutput::Room(Output::Persist(batch)) => {
                        storage.apply(&batch);
                        inbox.push(Input::Durable { batch: batch.id });
                    }
                    HostOutput::Room(Output::AskRateLimiter { request, .. }) => {
                        let wait_ms = limiter.handle_action(now());
                        inbox.push(Input::Verdict { request, wait_ms });
                    }
                    HostOutput::Room(Output::Close { conn, .. }) => {
                        sockets.remove(&conn);
                    }
                    _ => {}
                }
            }
        }
    }
}

fn send(sockets: &BTreeMap<ConnId, mpsc::Sender<Message>>, conn: ConnId, frame: &Frame) {
    if let Some(outbound) = sockets.get(&conn) {
        // A full queue means a slow reader; this example simply drops the frame.
        let _ = outbound.try_send(Message::text(frame.to_string()));
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:8788").await?;
    println!("listening on ws://{}/", listener.local_addr()?);
    let (room, events) = mpsc::channel(1024);
    tokio::spawn(run_room(events));
    for next_id in 1.. {
        let (stream, peer): (_, SocketAddr) = listener.accept().await?;
        let room = room.clone();
        tokio::spawn(async move {
            let Ok(socket) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            let conn = ConnId(next_id);
            let (mut write, mut read) = socket.split();
            let (outbound, mut frames) = mpsc::channel(256);
            let _ = room.send(Event::Open(conn, peer.ip(), outbound)).await;
            let writer = tokio::spawn(async move {
                while let Some(frame) = frames.recv().await {
                    if write.send(frame).await.is_err() {
                        break;
                    }
                }
            });
            while let Some(Ok(message)) = read.next().await {
                let input = match message {
                    Message::Text(text) => Input::Text {
                        conn,
                        text: text.to_string(),
                    },
                    Message::Binary(_) => Input::Binary { conn },
                    Message::Close(_) => break,
                    _ => continue,
                };
                if room.send(Event::Input(input)).await.is_err() {
                    break;
                }
            }
            let _ = room.send(Event::Input(Input::Closed { conn })).await;
            writer.abort();
        });
    }
    Ok(())
}
