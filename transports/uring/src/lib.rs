//! Many non-blocking socket writes in one system call: an io_uring submission of one
//! `writev` per socket, for the server's fan-out flush (a broadcast to a large room is one
//! write per recipient; submitted together they cost one kernel entry instead of one each,
//! measured in BENCHMARKS.md "io_uring").
//!
//! [`WriteBatch::write_all_vectored`] is safe: it waits for every write it submitted before
//! it returns, so the kernel never reads a buffer after its borrow ends. The sockets must be
//! non-blocking (tokio's are): a full socket then answers `WouldBlock` at once, as a
//! `writev(2)` would, instead of the write waiting inside the kernel.
//!
//! Elsewhere than Linux, or where the kernel refuses io_uring (a seccomp filter, the
//! `kernel.io_uring_disabled` sysctl), [`WriteBatch::new`] fails and the caller writes one
//! socket at a time.

use std::io::{self, IoSlice};
use std::os::fd::BorrowedFd;

/// A ring for batches of socket writes, one per thread that flushes.
#[derive(Debug)]
pub struct WriteBatch {
    #[cfg(target_os = "linux")]
    ring: linux::Ring,
}

/// One socket's part of a batch: where to write and what.
#[derive(Debug)]
pub struct Write<'a> {
    /// A non-blocking socket.
    pub socket: BorrowedFd<'a>,
    /// The bytes to write, in order (one `writev`).
    pub slices: &'a [IoSlice<'a>],
}

impl WriteBatch {
    /// A ring holding `entries` writes per submission (larger batches are submitted in
    /// parts).
    ///
    /// # Errors
    /// Where io_uring is not available (not Linux, or refused by the kernel).
    pub fn new(entries: u32) -> io::Result<WriteBatch> {
        #[cfg(target_os = "linux")]
        {
            Ok(WriteBatch {
                ring: linux::Ring::new(entries)?,
            })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = entries;
            Err(io::ErrorKind::Unsupported.into())
        }
    }

    /// Writes each of `writes` as one `writev` would, all in as few submissions as the ring
    /// allows, and returns each one's result in order: the bytes written (maybe fewer than
    /// given), `WouldBlock` for a full socket, or the socket's error.
    pub fn write_all_vectored(&mut self, writes: &[Write<'_>]) -> Vec<io::Result<usize>> {
        #[cfg(target_os = "linux")]
        {
            self.ring.writev(writes)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = writes;
            unreachable!("no WriteBatch exists off Linux")
        }
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::os::fd::AsRawFd;

    use io_uring::{opcode, types, IoUring};

    use super::Write;

    pub(super) struct Ring {
        ring: IoUring,
    }

    impl std::fmt::Debug for Ring {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Ring")
                .field("entries", &self.ring.params().sq_entries())
                .finish()
        }
    }

    impl Ring {
        pub(super) fn new(entries: u32) -> io::Result<Ring> {
            Ok(Ring {
                ring: IoUring::new(entries)?,
            })
        }

        pub(super) fn writev(&mut self, writes: &[Write<'_>]) -> Vec<io::Result<usize>> {
            let mut results: Vec<io::Result<usize>> = Vec::with_capacity(writes.len());
            results.resize_with(writes.len(), || Ok(0));
            let capacity = self.ring.params().sq_entries() as usize;
            for (part, chunk) in writes.chunks(capacity).enumerate() {
                let base = part * capacity;
                // One message header per write, alive until the chunk has completed.
                let headers: Vec<libc::msghdr> = chunk
                    .iter()
                    .map(|write| {
                        // SAFETY: msghdr is plain old data; all-zero is a valid empty one.
                        #[allow(unsafe_code)]
                        let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
                        // IoSlice is ABI-compatible with iovec on Unix (std documents it);
                        // the kernel only reads through this pointer.
                        header.msg_iov = write.slices.as_ptr().cast_mut().cast();
                        header.msg_iovlen = write.slices.len() as _;
                        header
                    })
                    .collect();
                for (index, (write, header)) in chunk.iter().zip(&headers).enumerate() {
                    // MSG_DONTWAIT: a full socket answers EAGAIN at once rather than the
                    // send waiting in the ring (which O_NONBLOCK alone does not prevent
                    // there); MSG_NOSIGNAL: a closed peer is EPIPE, not SIGPIPE.
                    let entry = opcode::SendMsg::new(types::Fd(write.socket.as_raw_fd()), header)
                        .flags((libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as u32)
                        .build()
                        .user_data(index as u64);
                    // SAFETY: the entry points at `headers` (alive until this chunk has
                    // completed), at `write.slices` and the buffers they name, borrowed
                    // for this whole call, and at a socket borrowed as long; `complete`
                    // returns only once every submitted entry has completed, so the kernel
                    // is done with all of them first. The queue has room: a chunk is at
                    // most its capacity, and it is empty between chunks.
                    #[allow(unsafe_code)]
                    let pushed = unsafe { self.ring.submission().push(&entry) };
                    pushed.expect("the submission queue holds a whole chunk");
                }
                self.complete(chunk.len(), &mut results[base..]);
                drop(headers);
            }
            results
        }

        /// Submits what is queued and reaps `count` completions into `results` (indexed by
        /// their `user_data`). Returns only once all `count` have completed: the entries
        /// borrow the caller's buffers.
        fn complete(&mut self, count: usize, results: &mut [io::Result<usize>]) {
            let mut done = 0;
            let mut failures = 0;
            while done < count {
                if let Err(error) = self.ring.submit_and_wait(count - done) {
                    // EINTR, or EBUSY/EAGAIN until completions are reaped (below): go on.
                    // Anything else would be a broken ring; writes may be in flight over
                    // the caller's buffers, so returning is not safe: retry, and past a
                    // bound give up on the process rather than on memory safety.
                    failures += 1;
                    if failures > SUBMIT_FAILURES_MAX {
                        eprintln!("io_uring: submitting failed {failures} times: {error}");
                        std::process::abort();
                    }
                    std::thread::yield_now();
                } else {
                    failures = 0;
                }
                for completion in self.ring.completion() {
                    let index = completion.user_data() as usize;
                    let result = completion.result();
                    results[index] = if result >= 0 {
                        Ok(result as usize)
                    } else {
                        Err(io::Error::from_raw_os_error(-result))
                    };
                    done += 1;
                }
            }
        }
    }

    /// Failed submissions in a row before the process gives up (never seen).
    const SUBMIT_FAILURES_MAX: u32 = 10_000;
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let writer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (reader, _) = listener.accept().unwrap();
        writer.set_nonblocking(true).unwrap();
        (writer, reader)
    }

    #[test]
    fn every_socket_gets_its_bytes_in_order() {
        let Ok(mut batch) = WriteBatch::new(4) else {
            eprintln!("io_uring refused here: nothing to test");
            return;
        };
        // Ten sockets through a ring of four: three submissions.
        let pairs: Vec<(TcpStream, TcpStream)> = (0..10).map(|_| pair()).collect();
        let texts: Vec<Vec<u8>> = (0..10).map(|i| format!("hello {i}").into_bytes()).collect();
        let slices: Vec<[IoSlice<'_>; 2]> = texts
            .iter()
            .map(|text| [IoSlice::new(b">"), IoSlice::new(text)])
            .collect();
        let writes: Vec<Write<'_>> = pairs
            .iter()
            .zip(&slices)
            .map(|((writer, _), slices)| Write {
                socket: writer.as_fd(),
                slices,
            })
            .collect();
        let results = batch.write_all_vectored(&writes);
        for (((_, mut reader), text), result) in pairs.into_iter().zip(&texts).zip(results) {
            assert_eq!(result.unwrap(), text.len() + 1);
            let mut got = vec![0; text.len() + 1];
            reader.read_exact(&mut got).unwrap();
            assert_eq!(&got[1..], &text[..]);
        }
    }

    #[test]
    fn a_full_socket_answers_would_block_at_once() {
        let Ok(mut batch) = WriteBatch::new(4) else {
            eprintln!("io_uring refused here: nothing to test");
            return;
        };
        let (writer, _reader) = pair();
        let block = vec![7u8; 1 << 20];
        let slices = [IoSlice::new(&block)];
        let mut total = 0;
        // The reader never reads: the socket fills, then answers WouldBlock (not waits).
        for _ in 0..1000 {
            let write = Write {
                socket: writer.as_fd(),
                slices: &slices,
            };
            match batch.write_all_vectored(&[write]).remove(0) {
                Ok(written) => total += written,
                Err(error) => {
                    assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
                    assert!(total > 0);
                    return;
                }
            }
        }
        panic!("a socket nobody reads took {total} bytes without blocking");
    }

    #[test]
    fn a_closed_peer_is_an_error_not_a_panic() {
        let Ok(mut batch) = WriteBatch::new(4) else {
            eprintln!("io_uring refused here: nothing to test");
            return;
        };
        let (writer, reader) = pair();
        drop(reader);
        let slices = [IoSlice::new(b"x")];
        let mut saw_error = false;
        for _ in 0..100 {
            let write = Write {
                socket: writer.as_fd(),
                slices: &slices,
            };
            if batch.write_all_vectored(&[write]).remove(0).is_err() {
                saw_error = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(saw_error, "writes to a closed peer kept succeeding");
    }
}
