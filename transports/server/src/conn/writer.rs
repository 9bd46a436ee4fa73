//! [`ConnWriter`]: the sending side of one connection, shared by its room and its task.

use std::io;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tokio::io::WriteHalf;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

use super::frame::{close_frame, ping_frame};
use super::io::{write_frames, write_some, Sink, TaskIo, FRAMES_PER_WRITE_MAX};
use super::queue::{ControlQueued, Flusher, WriteQueue};

/// Close code for a consumer too slow to keep up ("policy violation").
pub(crate) const CLOSE_TOO_SLOW: u16 = 1008;
/// Close reason for a consumer too slow to keep up.
pub(crate) const CLOSE_REASON_TOO_SLOW: &str = "Too slow: outbound queue full";

/// What the room learns from queueing a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Queued {
    /// Queued; [`ConnWriter::flush`] sends it.
    Yes,
    /// The connection is closing or gone: the frame was dropped.
    Closed,
}

/// The shared sending side of one connection.
#[derive(Debug)]
pub(crate) struct ConnWriter {
    sink: Sink,
    queue: Mutex<WriteQueue>,
    /// Wakes the connection's task when it has something to write.
    wake: Notify,
}

impl ConnWriter {
    pub(super) fn new(sink: Sink) -> ConnWriter {
        ConnWriter {
            sink,
            queue: Mutex::new(WriteQueue::default()),
            wake: Notify::new(),
        }
    }

    pub(super) fn queue_lock(&self) -> MutexGuard<'_, WriteQueue> {
        // The lock guards plain data and is never held across an await or a panic site.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a room frame (not yet written: call [`ConnWriter::flush`]).
    pub(crate) fn queue(&self, frame: Bytes) -> Queued {
        if self.queue_lock().push_room(frame) {
            Queued::Yes
        } else {
            Queued::Closed
        }
    }

    /// Queues a close frame after everything queued so far; nothing is queued after it.
    /// With `at_once`, frames not yet started are dropped first (a slow consumer, a
    /// shutdown, a failure: the close must not wait behind a queue that may never drain).
    pub(crate) fn close(&self, code: u16, reason: &str, at_once: bool) {
        if self
            .queue_lock()
            .push_close(close_frame(code, reason), at_once)
        {
            self.flush();
        }
    }

    /// Queues a control frame of the connection's own (a ping, the answer to a close).
    pub(super) fn queue_control(&self, frame: Bytes) {
        let queued = self.queue_lock().push_control(frame);
        match queued {
            ControlQueued::Yes => {
                self.flush();
            }
            ControlQueued::Dropped => {}
            ControlQueued::Full => {
                tracing::debug!("control frames pile up unread: closing");
                self.close(CLOSE_TOO_SLOW, CLOSE_REASON_TOO_SLOW, true);
            }
        }
    }

    /// Sends a ping.
    pub(crate) fn ping(&self) {
        self.queue_control(ping_frame());
    }

    /// The peer sent a close: from now on only the answer to it is written.
    pub(crate) fn peer_closing(&self) {
        self.queue_lock().peer_closing();
    }

    /// Nothing more will be queued: [`ConnWriter::drive`] returns once the queue is written.
    pub(crate) fn finish(&self) {
        self.queue_lock().finish();
        self.wake.notify_one();
    }

    /// Whether a write failed (the connection is over).
    pub(super) fn is_broken(&self) -> bool {
        self.queue_lock().is_broken()
    }

    /// Writes what is queued, as far as the socket takes it without blocking, and returns
    /// how many frames are still queued. The rest is left to the connection's task.
    pub(crate) fn flush(&self) -> usize {
        let mut queue = self.queue_lock();
        if !Self::caller_flushes(&queue) {
            return queue.len();
        }
        let result = match &self.sink {
            Sink::Tcp(tcp) => write_some(tcp, &mut queue),
            Sink::Task => Ok(()),
        };
        self.flushed(&mut queue, result)
    }

    /// Whether the caller (the room) writes this queue now: it has frames and its
    /// connection's task is not the one writing them.
    pub(super) fn caller_flushes(queue: &WriteQueue) -> bool {
        !queue.is_empty() && queue.flusher() == Some(Flusher::Caller)
    }

    /// The socket, if the caller may write to it directly (plain TCP).
    pub(super) fn direct_socket(&self) -> Option<&OwnedWriteHalf> {
        match &self.sink {
            Sink::Tcp(tcp) => Some(tcp),
            Sink::Task => None,
        }
    }

    /// Ends a flush by the caller: a failed write breaks the queue; what the socket did
    /// not take goes to the connection's task. Returns how many frames are still queued.
    pub(super) fn flushed(&self, queue: &mut WriteQueue, result: io::Result<()>) -> usize {
        if let Err(error) = result {
            tracing::debug!(%error, "websocket write failed");
            queue.fail();
            // The task notices and ends the connection.
            self.wake.notify_one();
            return 0;
        }
        if queue.is_empty() {
            return 0;
        }
        queue.hand_to_task();
        self.wake.notify_one();
        queue.len()
    }

    /// The connection task's half of the writing: waits to be woken, writes what the
    /// room could not, and returns once the writer is closed and its queue written
    /// (`Ok`), or a write failed (`Err`). It lives as long as the connection, so that a
    /// partly written frame is never abandoned.
    ///
    /// # Errors
    /// The socket's error, or `BrokenPipe` if a direct write failed.
    pub(crate) async fn drive(
        &self,
        mut task_sink: Option<&mut WriteHalf<TaskIo>>,
    ) -> io::Result<()> {
        loop {
            let has_work = {
                let queue = self.queue_lock();
                if queue.is_broken() {
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
                if queue.is_done() {
                    return Ok(());
                }
                queue.task_has_work()
            };
            if !has_work {
                self.wake.notified().await;
                continue;
            }
            let written = match (&self.sink, task_sink.as_deref_mut()) {
                (Sink::Tcp(tcp), _) => match tcp.writable().await {
                    Ok(()) => {
                        let mut queue = self.queue_lock();
                        let written = write_some(tcp, &mut queue);
                        finish_task_write(&mut queue, written)
                    }
                    Err(error) => finish_task_write(&mut self.queue_lock(), Err(error)),
                },
                (Sink::Task, Some(sink)) => {
                    // Take the frames out (clones of shared bytes) and write them without the
                    // lock; this future is never dropped mid-write while the connection lives.
                    let frames = self.queue_lock().take(FRAMES_PER_WRITE_MAX);
                    let written = write_frames(sink, &frames).await;
                    finish_task_write(&mut self.queue_lock(), written)
                }
                (Sink::Task, None) => Err(io::ErrorKind::Unsupported.into()),
            };
            written?;
        }
    }
}

/// After a write by the connection's task: a failure breaks the queue; otherwise the task
/// keeps flushing while frames are left.
fn finish_task_write(queue: &mut WriteQueue, written: io::Result<()>) -> io::Result<()> {
    match written {
        Ok(()) => {
            queue.task_wrote();
            Ok(())
        }
        Err(error) => {
            queue.fail();
            Err(error)
        }
    }
}
