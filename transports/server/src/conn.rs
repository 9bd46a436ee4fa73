//! The sending side of one WebSocket connection, shared by its room and its own task.
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
//! ```text
//!   open ──room frames, raw frames──► open
//!     │ the peer sent a close        │ close(code) / finish()
//!     ▼                              ▼
//!   closing (raw frames only: the   closed (nothing more is queued; once the queue is
//!   answer to the close)             written, `drive` returns)
//! ```
//! The queue is bounded twice: the room closes a connection that still holds more than its
//! limit of earlier turns' frames after a flush (a slow consumer), and the connection's own
//! control frames are refused past `QUEUE_LEN_MAX` queued frames (a peer that pings but
//! never reads).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::{BufMut as _, Bytes, BytesMut};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Most queued frames handed to one `writev`.
const FRAMES_PER_WRITE_MAX: usize = 64;
/// Most frames queued when the connection queues one of its own (a ping, a pong): the
/// room bounds its frames after each flush, and this bounds a peer that sends pings but
/// never reads the pongs.
const QUEUE_LEN_MAX: usize = 8 * 1024;
/// Queue slots an empty queue keeps; a join's burst (hundreds of frames) would otherwise
/// leave every idle connection holding kilobytes of empty slots.
const QUEUE_CAPACITY_KEPT: usize = 8;

const OPCODE_TEXT: u8 = 0x1;
const OPCODE_CLOSE: u8 = 0x8;
const OPCODE_PING: u8 = 0x9;
/// The FIN bit: every frame this server sends is a whole message.
const FIN: u8 = 0x80;

/// A server-to-client frame (unmasked, as RFC 6455 requires) with `payload`.
fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut wire = BytesMut::with_capacity(payload.len() + 10);
    wire.put_u8(FIN | opcode);
    match payload.len() {
        len @ 0..=125 => wire.put_u8(len as u8),
        len @ 126..=0xFFFF => {
            wire.put_u8(126);
            wire.put_u16(len as u16);
        }
        len => {
            wire.put_u8(127);
            wire.put_u64(len as u64);
        }
    }
    wire.put_slice(payload);
    wire.freeze()
}

/// A text frame carrying `text`, ready to be written to any number of connections.
pub(crate) fn text_frame(text: &str) -> Bytes {
    frame(OPCODE_TEXT, text.as_bytes())
}

/// A close frame with `code` and `reason` (at most 123 bytes, as every reason here is).
pub(crate) fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
    frame(OPCODE_CLOSE, &payload)
}

/// An empty ping frame.
fn ping_frame() -> Bytes {
    frame(OPCODE_PING, &[])
}

/// Any byte stream a WebSocket can run over (TLS, a framework's upgraded connection).
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A connection that only its own task writes to.
pub(crate) type TaskIo = Box<dyn Io>;

/// Where a connection's bytes go.
#[derive(Debug)]
enum Sink {
    /// Plain TCP: anyone holding the writer may write without blocking.
    Tcp(OwnedWriteHalf),
    /// Anything else (TLS): only the connection's task writes, through its own half.
    Task,
}

/// What the room learns from queueing a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Queued {
    /// Queued; [`ConnWriter::flush`] sends it.
    Yes,
    /// The connection is closing or gone: the frame was dropped.
    Closed,
}

#[derive(Debug, Default)]
struct WriteState {
    /// Encoded frames not yet written; the first may be partly written.
    pending: VecDeque<Bytes>,
    /// Bytes of the first pending frame already written.
    written: usize,
    /// The peer sent a close: room frames are dropped, the answer still goes out.
    peer_closing: bool,
    /// A close frame is queued, or the connection is finishing: nothing more is queued.
    closed: bool,
    /// A write failed: nothing more is written and the queue is dropped.
    broken: bool,
    /// The connection's task owns the flushing until the queue is empty.
    task_flushing: bool,
}

/// The shared sending side of one connection.
#[derive(Debug)]
pub(crate) struct ConnWriter {
    sink: Sink,
    state: Mutex<WriteState>,
    /// Wakes the connection's task when it has something to write.
    wake: Notify,
}

impl ConnWriter {
    fn new(sink: Sink) -> ConnWriter {
        ConnWriter {
            sink,
            state: Mutex::new(WriteState::default()),
            wake: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, WriteState> {
        // The lock guards plain data and is never held across an await or a panic site.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a room frame (not yet written: call [`ConnWriter::flush`]).
    pub(crate) fn queue(&self, frame: Bytes) -> Queued {
        let mut state = self.state();
        if state.closed || state.peer_closing || state.broken {
            return Queued::Closed;
        }
        state.pending.push_back(frame);
        Queued::Yes
    }

    /// Queues a close frame after everything queued so far; nothing is queued after it.
    /// With `at_once`, frames not yet started are dropped first (a slow consumer, a
    /// shutdown, a failure: the close must not wait behind a queue that may never drain).
    pub(crate) fn close(&self, code: u16, reason: &str, at_once: bool) {
        {
            let mut state = self.state();
            if state.closed || state.broken {
                return;
            }
            if at_once {
                let started = usize::from(state.written > 0);
                state.pending.truncate(started);
            }
            state.pending.push_back(close_frame(code, reason));
            state.closed = true;
        }
        self.flush();
    }

    /// Queues a control frame of the connection's own (a ping, the answer to a close).
    fn queue_raw(&self, frame: Bytes) {
        {
            let mut state = self.state();
            if state.closed || state.broken {
                return;
            }
            if state.pending.len() < QUEUE_LEN_MAX {
                state.pending.push_back(frame);
            } else {
                drop(state);
                tracing::debug!("control frames pile up unread: closing");
                self.close(
                    crate::room::CLOSE_TOO_SLOW,
                    crate::room::CLOSE_REASON_TOO_SLOW,
                    true,
                );
                return;
            }
        }
        self.flush();
    }

    /// Sends a ping.
    pub(crate) fn ping(&self) {
        self.queue_raw(ping_frame());
    }

    /// The peer sent a close: from now on only the answer to it is written.
    pub(crate) fn peer_closing(&self) {
        self.state().peer_closing = true;
    }

    /// Nothing more will be queued: [`ConnWriter::drive`] returns once the queue is written.
    pub(crate) fn finish(&self) {
        self.state().closed = true;
        self.wake.notify_one();
    }

    /// Writes what is queued, as far as the socket takes it without blocking, and returns
    /// how many frames are still queued. The rest is left to the connection's task.
    pub(crate) fn flush(&self) -> usize {
        let mut state = self.state();
        if state.pending.is_empty() || state.task_flushing || state.broken {
            return state.pending.len();
        }
        if let Sink::Tcp(tcp) = &self.sink {
            match write_some(tcp, &mut state) {
                Ok(()) if state.pending.is_empty() => return 0,
                Ok(()) => {}
                Err(error) => {
                    tracing::debug!(%error, "websocket write failed");
                    state.broken = true;
                    state.pending.clear();
                    // The task notices and ends the connection.
                    self.wake.notify_one();
                    return 0;
                }
            }
        }
        state.task_flushing = true;
        self.wake.notify_one();
        state.pending.len()
    }

    /// The connection task's half of the writing: waits to be woken, writes what the
    /// room could not, and returns once the writer is closed and its queue written
    /// (`Ok`), or a write failed (`Err`). It lives as long as the connection, so that a
    /// partly written frame is never abandoned.
    pub(crate) async fn drive(
        &self,
        mut task_sink: Option<&mut WriteHalf<TaskIo>>,
    ) -> io::Result<()> {
        loop {
            let has_work = {
                let state = self.state();
                if state.broken {
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
                if state.pending.is_empty() && state.closed {
                    return Ok(());
                }
                state.task_flushing || (state.closed && !state.pending.is_empty())
            };
            if !has_work {
                self.wake.notified().await;
                continue;
            }
            match (&self.sink, task_sink.as_deref_mut()) {
                (Sink::Tcp(tcp), _) => {
                    if let Err(error) = tcp.writable().await {
                        self.state().broken = true;
                        return Err(error);
                    }
                    self.write_from_task(tcp)?;
                }
                (Sink::Task, Some(sink)) => {
                    // Take the frames out (clones of shared bytes) and write them without the
                    // lock; this future is never dropped mid-write while the connection lives.
                    let frames: Vec<Bytes> = {
                        let mut state = self.state();
                        let count = state.pending.len().min(FRAMES_PER_WRITE_MAX);
                        let frames = state.pending.drain(..count).collect();
                        if state.pending.is_empty()
                            && state.pending.capacity() > QUEUE_CAPACITY_KEPT
                        {
                            state.pending = VecDeque::new();
                        }
                        frames
                    };
                    for frame in &frames {
                        if let Err(error) = sink.write_all(frame).await {
                            self.state().broken = true;
                            return Err(error);
                        }
                    }
                    if let Err(error) = sink.flush().await {
                        self.state().broken = true;
                        return Err(error);
                    }
                    self.task_wrote();
                }
                (Sink::Task, None) => return Err(io::ErrorKind::Unsupported.into()),
            }
        }
    }
    /// Writes from the connection's task once the socket is writable.
    fn write_from_task(&self, tcp: &OwnedWriteHalf) -> io::Result<()> {
        let mut state = self.state();
        if let Err(error) = write_some(tcp, &mut state) {
            state.broken = true;
            state.pending.clear();
            return Err(error);
        }
        if state.pending.is_empty() {
            state.task_flushing = false;
        }
        Ok(())
    }

    /// The task wrote what it took; it keeps flushing while more is queued.
    fn task_wrote(&self) {
        let mut state = self.state();
        if state.pending.is_empty() {
            state.task_flushing = false;
        }
    }
}

/// One non-blocking `writev` of the queue's head; partial writes and `WouldBlock` leave
/// the rest queued.
fn write_some(tcp: &OwnedWriteHalf, state: &mut WriteState) -> io::Result<()> {
    while !state.pending.is_empty() {
        let written = {
            let mut slices = [IoSlice::new(&[]); FRAMES_PER_WRITE_MAX];
            let mut count = 0;
            for (index, frame) in state.pending.iter().take(FRAMES_PER_WRITE_MAX).enumerate() {
                let skip = if index == 0 { state.written } else { 0 };
                slices[index] = IoSlice::new(&frame[skip..]);
                count += 1;
            }
            match tcp.try_write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => written,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) => return Err(error),
            }
        };
        let mut left = written;
        while left > 0 {
            let head_left = state.pending[0].len() - state.written;
            if left >= head_left {
                left -= head_left;
                state.written = 0;
                state.pending.pop_front();
            } else {
                state.written += left;
                left = 0;
            }
        }
    }
    if state.pending.capacity() > QUEUE_CAPACITY_KEPT {
        state.pending = VecDeque::new();
    }
    Ok(())
}

/// The reading half of a connection, with the bytes hyper had already read in front.
enum ReadSide {
    Tcp(OwnedReadHalf),
    Task(ReadHalf<TaskIo>),
}

impl std::fmt::Debug for ReadSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadSide::Tcp(read) => f.debug_tuple("Tcp").field(read).finish(),
            ReadSide::Task(_) => f.write_str("Task"),
        }
    }
}

/// The byte stream tungstenite reads frames from. Its writes (the answers to pings and to
/// a close) go into the shared queue, in order with the room's frames.
#[derive(Debug)]
pub(crate) struct ConnIo {
    prefix: Bytes,
    read: ReadSide,
    writer: std::sync::Arc<ConnWriter>,
}

/// A connection split into the stream tungstenite reads, the shared writer, and (under TLS)
/// the write half that only the connection's task uses.
pub(crate) struct Split {
    pub io: ConnIo,
    pub writer: std::sync::Arc<ConnWriter>,
    pub task_sink: Option<WriteHalf<TaskIo>>,
}

/// Splits a connection; plain TCP gets the direct write path. That is a `TcpStream` itself,
/// or hyper's upgraded connection (wrapped in [`TokioIo`] to be a tokio stream) when it was
/// served straight from a `TokioIo<TcpStream>` (not through a TLS layer or a rewinding
/// wrapper such as hyper-util's HTTP/1-or-2 sniffing `auto` builder).
pub(crate) fn split<T: Io>(io: T) -> Split {
    let io: Box<dyn std::any::Any> = Box::new(io);
    let io = match io.downcast::<TcpStream>() {
        Ok(tcp) => return split_tcp(*tcp, Bytes::new()),
        Err(other) => other,
    };
    let io = match io.downcast::<TokioIo<hyper::upgrade::Upgraded>>() {
        Ok(upgraded) => match upgraded.into_inner().downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => return split_tcp(parts.io.into_inner(), parts.read_buf),
            Err(upgraded) => return split_task(Box::new(TokioIo::new(upgraded))),
        },
        Err(other) => other,
    };
    match io.downcast::<T>() {
        Ok(io) => split_task(io),
        Err(_) => unreachable!("the box holds a T"),
    }
}

/// Plain TCP: the room writes straight into the socket; `prefix` is what hyper read past
/// the request head.
fn split_tcp(tcp: TcpStream, prefix: Bytes) -> Split {
    let (read, write) = tcp.into_split();
    let writer = std::sync::Arc::new(ConnWriter::new(Sink::Tcp(write)));
    Split {
        io: ConnIo {
            prefix,
            read: ReadSide::Tcp(read),
            writer: writer.clone(),
        },
        writer,
        task_sink: None,
    }
}

/// Anything else: the connection's task does every write.
fn split_task(io: TaskIo) -> Split {
    let (read, write) = tokio::io::split(io);
    let writer = std::sync::Arc::new(ConnWriter::new(Sink::Task));
    Split {
        io: ConnIo {
            prefix: Bytes::new(),
            read: ReadSide::Task(read),
            writer: writer.clone(),
        },
        writer,
        task_sink: Some(write),
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let count = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(count);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        match &mut self.read {
            ReadSide::Tcp(read) => Pin::new(read).poll_read(cx, buf),
            ReadSide::Task(read) => Pin::new(read).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // tungstenite writes whole frames (its write buffer is flushed per frame).
        if self.writer.state().broken {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        self.writer.queue_raw(Bytes::copy_from_slice(buf));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_the_length_in_the_smallest_form() {
        assert_eq!(&text_frame("hi")[..], &[0x81, 2, b'h', b'i']);
        let medium = "x".repeat(300);
        let wire = text_frame(&medium);
        assert_eq!(&wire[..4], &[0x81, 126, 0x01, 0x2C]);
        assert_eq!(wire.len(), 4 + 300);
        let large = "y".repeat(70_000);
        let wire = text_frame(&large);
        assert_eq!(&wire[..2], &[0x81, 127]);
        assert_eq!(u64::from_be_bytes(wire[2..10].try_into().unwrap()), 70_000);
        assert_eq!(wire.len(), 10 + 70_000);
    }

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
        let writer = std::sync::Arc::new(ConnWriter::new(Sink::Tcp(write)));

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
        let pong = frame(0xA, &[b'x'; 125]);
        let mut queued = 0;
        while writer.queue(text_frame("probe")) == Queued::Yes {
            writer.queue_raw(pong.clone());
            queued += 1;
            assert!(queued < 1_000_000, "never closed");
        }
        assert!(writer.state().pending.len() <= QUEUE_LEN_MAX + 1);
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

    #[test]
    fn close_frames_carry_code_and_reason() {
        let wire = close_frame(1008, "Too slow");
        assert_eq!(&wire[..4], &[0x88, 10, 0x03, 0xF0]);
        assert_eq!(&wire[4..], b"Too slow");
        assert_eq!(&ping_frame()[..], &[0x89, 0]);
    }
}
