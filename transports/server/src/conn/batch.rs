//! A room's turn of writes in one system call: every recipient's `writev` submitted to
//! io_uring together (`edgechat-uring`), instead of one `writev` each. On a 1,000-member
//! room that is most of the server's work per broadcast; BENCHMARKS.md "io_uring" has
//! the before and after.
//!
//! Off unless the server is configured with `io_uring` (`--io-uring`). Each flushing
//! thread keeps one ring, made on first use. Where the kernel refuses io_uring, or a turn
//! has fewer than [`BATCH_WRITERS_MIN`] sockets to write, each is flushed on its own.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::os::fd::AsFd;
use std::sync::MutexGuard;

use edgechat_uring::{Write, WriteBatch};
use tokio::net::tcp::OwnedWriteHalf;

use super::io::{write_some, FRAMES_PER_WRITE_MAX};
use super::queue::WriteQueue;
use super::writer::ConnWriter;

/// Fewer sockets to write than this are written one by one (nothing to save).
pub(crate) const BATCH_WRITERS_MIN: usize = 2;
/// Writes per submission; a larger turn goes in parts.
const RING_ENTRIES: u32 = 1024;

thread_local! {
    /// This thread's ring: `None` until first used, `Some(None)` where io_uring is refused.
    static RING: RefCell<Option<Option<WriteBatch>>> = const { RefCell::new(None) };
}

/// Flushes every writer of `writers`, as [`ConnWriter::flush`] does one, in one io_uring
/// submission where the kernel allows, and returns how many frames each still has queued,
/// in order.
pub(crate) fn flush_all(writers: &[&ConnWriter]) -> Vec<usize> {
    if writers.len() < BATCH_WRITERS_MIN {
        return writers.iter().map(|writer| writer.flush()).collect();
    }
    RING.with(|cell| {
        let mut cell = cell.borrow_mut();
        let ring = cell.get_or_insert_with(|| match WriteBatch::new(RING_ENTRIES) {
            Ok(ring) => {
                tracing::debug!("io_uring: a turn's socket writes go in one submission");
                Some(ring)
            }
            Err(error) => {
                tracing::info!(%error, "io_uring unavailable: one write per socket");
                None
            }
        });
        match ring {
            Some(ring) => flush_batched(ring, writers),
            None => writers.iter().map(|writer| writer.flush()).collect(),
        }
    })
}

/// The batched flush. Every queue the caller writes stays locked from filling its slices to
/// taking what was written, as in a single flush; no other thread ever holds two queue
/// locks, so holding many here cannot deadlock.
fn flush_batched(ring: &mut WriteBatch, writers: &[&ConnWriter]) -> Vec<usize> {
    let mut queues: Vec<MutexGuard<'_, WriteQueue>> = Vec::with_capacity(writers.len());
    let mut batched: Vec<(usize, &OwnedWriteHalf)> = Vec::with_capacity(writers.len());
    let mut remaining = vec![0; writers.len()];
    for (index, writer) in writers.iter().enumerate() {
        let queue = writer.queue_lock();
        match writer.direct_socket() {
            Some(tcp) if ConnWriter::caller_flushes(&queue) => {
                queues.push(queue);
                batched.push((index, tcp));
            }
            _ => {
                drop(queue);
                remaining[index] = writer.flush();
            }
        }
    }
    let results = {
        // Each queue's head, up to one `writev`'s worth, side by side in one buffer.
        let counts: Vec<usize> = queues
            .iter()
            .map(|queue| queue.len().min(FRAMES_PER_WRITE_MAX))
            .collect();
        let mut slices = vec![IoSlice::new(&[]); counts.iter().sum()];
        let mut rest = slices.as_mut_slice();
        for (queue, &count) in queues.iter().zip(&counts) {
            let (head, tail) = rest.split_at_mut(count);
            queue.fill(head);
            rest = tail;
        }
        let mut rest = slices.as_slice();
        let mut parts = Vec::with_capacity(counts.len());
        for &count in &counts {
            let (head, tail) = rest.split_at(count);
            parts.push(head);
            rest = tail;
        }
        let writes: Vec<Write<'_>> = batched
            .iter()
            .zip(parts)
            .map(|(&(_, tcp), slices)| Write {
                socket: tcp.as_ref().as_fd(),
                slices,
            })
            .collect();
        ring.write_all_vectored(&writes)
    };
    for ((queue, &(index, tcp)), result) in queues.iter_mut().zip(&batched).zip(results) {
        let outcome = match result {
            Ok(0) => Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => {
                queue.advance(written);
                // More than one `writev`'s worth queued, or a partial write: go on alone.
                if queue.is_empty() {
                    Ok(())
                } else {
                    write_some(tcp, queue)
                }
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(error) => Err(error),
        };
        remaining[index] = writers[index].flushed(queue, outcome);
    }
    remaining
}
