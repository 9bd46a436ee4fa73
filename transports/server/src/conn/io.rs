//! The IO glue: which half of a connection writes (plain TCP lets anyone write without
//! blocking; anything else, such as TLS, is written by the connection's task alone), the
//! non-blocking `writev` of the queue's head, and the reading half.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::queue::WriteQueue;

/// Most queued frames handed to one `writev` (or taken by the task at a time).
pub(super) const FRAMES_PER_WRITE_MAX: usize = 64;

/// Any byte stream a WebSocket can run over (TLS, a framework's upgraded connection).
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A connection that only its own task writes to.
pub(crate) type TaskIo = Box<dyn Io>;

/// Where a connection's bytes go.
#[derive(Debug)]
pub(super) enum Sink {
    /// Plain TCP: anyone holding the writer may write without blocking.
    Tcp(OwnedWriteHalf),
    /// Anything else (TLS): only the connection's task writes, through its own half.
    Task,
}

/// The reading half of a connection.
pub(super) enum ReadSide {
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

impl ReadSide {
    pub(super) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self {
            ReadSide::Tcp(read) => Pin::new(read).poll_read(cx, buf),
            ReadSide::Task(read) => Pin::new(read).poll_read(cx, buf),
        }
    }
}

/// A connection taken apart.
pub(super) struct Halves {
    /// What hyper read past the request head (read before the socket).
    pub prefix: Bytes,
    pub read: ReadSide,
    pub sink: Sink,
    /// Under [`Sink::Task`], the half the connection's task writes to.
    pub task_sink: Option<WriteHalf<TaskIo>>,
}

/// Takes a connection apart; plain TCP gets the direct write path. That is a `TcpStream`
/// itself, or hyper's upgraded connection (wrapped in [`TokioIo`] to be a tokio stream) when
/// it was served straight from a `TokioIo<TcpStream>` (not through a TLS layer or a
/// rewinding wrapper such as hyper-util's HTTP/1-or-2 sniffing `auto` builder).
pub(super) fn halves<T: Io>(io: T) -> Halves {
    let io: Box<dyn std::any::Any> = Box::new(io);
    let io = match io.downcast::<TcpStream>() {
        Ok(tcp) => return tcp_halves(*tcp, Bytes::new()),
        Err(other) => other,
    };
    let io = match io.downcast::<TokioIo<hyper::upgrade::Upgraded>>() {
        Ok(upgraded) => match upgraded.into_inner().downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => return tcp_halves(parts.io.into_inner(), parts.read_buf),
            Err(upgraded) => return task_halves(Box::new(TokioIo::new(upgraded))),
        },
        Err(other) => other,
    };
    match io.downcast::<T>() {
        Ok(io) => task_halves(io),
        Err(_) => unreachable!("the box holds a T"),
    }
}

fn tcp_halves(tcp: TcpStream, prefix: Bytes) -> Halves {
    // hyper hands over what it read past the request head as a view into its whole read
    // buffer (8 KiB): kept as is, even an empty view would pin that buffer for the life of
    // the connection, most of an idle connection's memory. A copy of the few bytes (usually
    // none) lets it go.
    let prefix = if prefix.is_empty() {
        Bytes::new()
    } else {
        Bytes::copy_from_slice(&prefix)
    };
    let (read, write) = tcp.into_split();
    Halves {
        prefix,
        read: ReadSide::Tcp(read),
        sink: Sink::Tcp(write),
        task_sink: None,
    }
}

fn task_halves(io: TaskIo) -> Halves {
    let (read, write) = tokio::io::split(io);
    Halves {
        prefix: Bytes::new(),
        read: ReadSide::Task(read),
        sink: Sink::Task,
        task_sink: Some(write),
    }
}

/// Non-blocking `writev`s of the queue's head until it is empty or the socket is full;
/// partial writes and `WouldBlock` leave the rest queued.
///
/// # Errors
/// The socket's error (the caller marks the queue broken).
pub(super) fn write_some(tcp: &OwnedWriteHalf, queue: &mut WriteQueue) -> io::Result<()> {
    while !queue.is_empty() {
        let mut slices = [IoSlice::new(&[]); FRAMES_PER_WRITE_MAX];
        let count = queue.fill(&mut slices);
        let written = match tcp.try_write_vectored(&slices[..count]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => written,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(error) => return Err(error),
        };
        queue.advance(written);
    }
    Ok(())
}

/// Writes `frames` whole through the task's half and flushes it (TLS buffers).
///
/// # Errors
/// The stream's error.
pub(super) async fn write_frames(sink: &mut WriteHalf<TaskIo>, frames: &[Bytes]) -> io::Result<()> {
    for frame in frames {
        sink.write_all(frame).await?;
    }
    sink.flush().await
}
