//! [`ConnIo`]: the byte stream tungstenite reads frames from.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::io::ReadSide;
use super::writer::ConnWriter;

/// The byte stream tungstenite reads frames from, with the bytes hyper had already read in
/// front. Its writes (the answers to pings and to a close) go into the shared queue, in
/// order with the room's frames.
#[derive(Debug)]
pub(crate) struct ConnIo {
    pub(super) prefix: Bytes,
    pub(super) read: ReadSide,
    pub(super) writer: Arc<ConnWriter>,
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
        self.read.poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // tungstenite writes whole frames (its write buffer is flushed per frame).
        if self.writer.is_broken() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        self.writer.queue_control(Bytes::copy_from_slice(buf));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
