//! The sending side of one WebSocket connection, shared by its room and its own task.
//! It knows nothing of rooms or objects: it takes encoded frames and writes them.
//!
//! - `frame`: encoding, once per frame for every recipient (tungstenite's header format);
//! - `queue`: the frames waiting for the socket and the queue's one state enum;
//! - `io`: the socket glue (direct `writev` on plain TCP, the task's writes under TLS);
//! - `writer`: [`ConnWriter`], the queue and the glue behind one lock;
//! - `batch`: a room's turn of writes to many sockets in one io_uring submission;
//! - `stream`: [`ConnIo`], the stream tungstenite reads (and answers pings) through.
//!
//! Frames are encoded for the wire once ([`text_frame`]: header and payload in one shared
//! buffer) and every recipient queues a reference to the same bytes. The room queues a
//! turn's frames for each recipient, then calls [`ConnWriter::flush`] once per recipient:
//! on plain TCP that writes everything queued in one non-blocking `writev`, straight from
//! the room's task, so an idle connection costs no task wakeup and no copy per frame. What
//! the socket does not take at once stays queued and the connection's own task writes it
//! when the socket is writable ([`ConnWriter::drive`]). Under TLS the connection's task
//! does every write (the TLS state is not shareable), so there the room only queues.
//!
//! The queue's states and their transitions are drawn on `queue::QueueState`.
//!
//! The queue is bounded twice: the room closes a connection that still holds more than its
//! limit of earlier turns' frames after a flush (a slow consumer), and the connection's own
//! control frames are refused past `QUEUE_LEN_MAX` queued frames (a peer that pings but
//! never reads).

mod batch;
mod frame;
mod io;
mod queue;
mod stream;
mod writer;

use std::sync::Arc;

use tokio::io::WriteHalf;

pub(crate) use self::batch::{flush_all, BATCH_WRITERS_MIN};
pub(crate) use self::frame::text_frame;
pub(crate) use self::io::{Io, TaskIo};
pub(crate) use self::stream::ConnIo;
pub(crate) use self::writer::{ConnWriter, Queued, CLOSE_REASON_TOO_SLOW, CLOSE_TOO_SLOW};

/// A connection split into the stream tungstenite reads, the shared writer, and (under TLS)
/// the write half that only the connection's task uses.
pub(crate) struct Split {
    pub io: ConnIo,
    pub writer: Arc<ConnWriter>,
    pub task_sink: Option<WriteHalf<TaskIo>>,
}

/// Splits a connection; plain TCP (a `TcpStream`, or hyper's upgraded connection served
/// straight from a `TokioIo<TcpStream>`) gets the direct write path.
pub(crate) fn split<T: Io>(io: T) -> Split {
    let halves = self::io::halves(io);
    let writer = Arc::new(ConnWriter::new(halves.sink));
    Split {
        io: ConnIo {
            prefix: halves.prefix,
            read: halves.read,
            writer: writer.clone(),
        },
        writer,
        task_sink: halves.task_sink,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use hyper_util::rt::TokioIo;
    use tokio::io::AsyncWriteExt as _;
    use tokio::net::TcpStream;

    use super::frame::{close_frame, text_frame};
    use super::io::Sink;
    use super::queue::QUEUE_LEN_MAX;
    use super::*;

    /// A peer that stops reading: what the socket does not take stays queued, the task
    /// writes it once the peer reads again, and the bytes arrive whole and in order.
    #[tokio::test]
    async fn partial_writes_resume_in_order_from_the_task() {
        use tokio::io::AsyncReadExt as _;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_read, write) = server.into_split();
        let writer = Arc::new(ConnWriter::new(Sink::Tcp(write)));

        let frames: Vec<Bytes> = (0..4_000u32)
            .map(|n| text_frame(&format!("{n:>6}{}", "x".repeat(1_000))))
            .collect();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        for frame in &frames {
            assert_eq!(writer.queue(frame.clone()), Queued::Yes);
        }
        let left = writer.flush();
        assert!(left > 0, "4 MB should not fit a socket buffer at once");
        writer.close(1000, "bye", false);
        let expected_len = expected.len() + close_frame(1000, "bye").len();

        let driver = {
            let writer = writer.clone();
            tokio::spawn(async move { writer.drive(None).await })
        };
        let mut received = Vec::with_capacity(expected_len);
        while received.len() < expected_len {
            let mut chunk = [0u8; 64 * 1024];
            let read = peer.read(&mut chunk).await.unwrap();
            assert!(read > 0, "connection ended early");
            received.extend_from_slice(&chunk[..read]);
        }
        driver.await.unwrap().unwrap();
        assert_eq!(&received[..expected.len()], &expected[..]);
        assert_eq!(&received[expected.len()..], &close_frame(1000, "bye")[..]);
        // Closed: nothing more is queued.
        assert_eq!(writer.queue(text_frame("late")), Queued::Closed);
    }

    /// A peer that never reads cannot make its own control frames (pongs to its pings)
    /// pile up without bound: past the limit the connection is closed.
    #[tokio::test]
    async fn unread_control_frames_are_bounded() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_read, write) = server.into_split();
        let writer = ConnWriter::new(Sink::Tcp(write));
        let pong = Bytes::from_static(&[0x8A, 1, b'x']);
        let mut queued = 0;
        while writer.queue(text_frame("probe")) == Queued::Yes {
            writer.queue_control(pong.clone());
            queued += 1;
            assert!(queued < 1_000_000, "never closed");
        }
        assert!(writer.queue_lock().len() <= QUEUE_LEN_MAX + 1);
    }

    /// hyper's upgraded connection, served over a plain `TokioIo<TcpStream>`, is split for
    /// direct writes (no task sink); any other stream is written by its own task.
    #[tokio::test]
    async fn an_upgraded_plain_tcp_connection_gets_the_direct_write_path() {
        use std::sync::{Arc, Mutex};
        use tokio::io::AsyncReadExt as _;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            let request = "GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n";
            tcp.write_all(request.as_bytes()).await.unwrap();
            let mut head = [0u8; 256];
            let read = tcp.read(&mut head).await.unwrap();
            assert!(head[..read].starts_with(b"HTTP/1.1 101"));
            tcp
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let (upgraded, on_upgraded) = tokio::sync::oneshot::channel();
        let upgraded = Arc::new(Mutex::new(Some(upgraded)));
        let service = hyper::service::service_fn(move |mut request: http::Request<_>| {
            let on_upgrade = hyper::upgrade::on(&mut request);
            let upgraded = upgraded.lock().unwrap().take();
            tokio::spawn(async move {
                if let (Some(upgraded), Ok(io)) = (upgraded, on_upgrade.await) {
                    let _ = upgraded.send(io);
                }
            });
            let switching = http::Response::builder()
                .status(101)
                .header("upgrade", "x")
                .header("connection", "upgrade")
                .body(http_body_util::Empty::<Bytes>::new());
            std::future::ready(switching)
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        tokio::spawn(connection);
        let upgraded = on_upgraded.await.expect("the connection upgrades");
        let _client = client.await.unwrap();

        assert!(split(TokioIo::new(upgraded)).task_sink.is_none());
        let (other, _peer) = tokio::io::duplex(64);
        assert!(split(other).task_sink.is_some());
    }
}
