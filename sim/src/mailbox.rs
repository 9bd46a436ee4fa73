//! A tiny unbounded FIFO channel whose receiver is awaited by one task.
//!
//! It wakes its one receiver through the task's waker, so it is as deterministic as the
//! executor that polls it (madsim's). Every node owns exactly one mailbox for all its events,
//! which spares the node loops any `select!`.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

/// One node's inbox. Cloning gives another sender to the same queue.
#[derive(Debug)]
pub struct Mailbox<T> {
    inner: Arc<Mutex<Inner<T>>>,
}

#[derive(Debug)]
struct Inner<T> {
    queue: VecDeque<T>,
    waker: Option<Waker>,
    closed: bool,
}

impl<T> Clone for Mailbox<T> {
    fn clone(&self) -> Self {
        Mailbox {
            inner: self.inner.clone(),
        }
    }
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Mailbox {
            inner: Arc::new(Mutex::new(Inner {
                queue: VecDeque::new(),
                waker: None,
                closed: false,
            })),
        }
    }
}

impl<T> Mailbox<T> {
    /// An empty mailbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `item` and wakes the receiver.
    pub fn push(&self, item: T) {
        let mut inner = self.inner.lock().expect("mailbox lock");
        if inner.closed {
            return;
        }
        inner.queue.push_back(item);
        if let Some(waker) = inner.waker.take() {
            waker.wake();
        }
    }

    /// Drops every queued item and ends the receiver's wait with `None`, so that its task
    /// finishes and frees what it holds (a finished run must not leak its nodes' state).
    pub fn close(&self) {
        let mut inner = self.inner.lock().expect("mailbox lock");
        inner.queue.clear();
        inner.closed = true;
        if let Some(waker) = inner.waker.take() {
            waker.wake();
        }
    }

    /// Waits for the next item; `None` once the mailbox is closed.
    pub async fn recv(&self) -> Option<T> {
        poll_fn(|cx| {
            let mut inner = self.inner.lock().expect("mailbox lock");
            match inner.queue.pop_front() {
                Some(item) => Poll::Ready(Some(item)),
                None if inner.closed => Poll::Ready(None),
                None => {
                    inner.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }
}
