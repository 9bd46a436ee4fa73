//! The sans-IO core of edgechat: chat rooms, rate limiters and counters as pure state
//! machines.
//!
//! This crate does no IO. It has no sockets, no clocks, no tasks and no randomness of its
//! own: time comes in as a [`Timestamp`] argument, random bytes as arguments, and every
//! effect goes out as a value for the adapter to carry out. The standalone server, the
//! Cloudflare Workers adapter and the deterministic simulator all drive this same code.
//!
//! - [`protocol`]: client frames in, server frames out, exactly as `PROTOCOL.md` states.
//! - [`room`]: the room state machine (join sequence, roster, history, ordering,
//!   durability before visibility, hibernation attachments).
//! - [`host`]: idle eviction and restore, the object-host logic every adapter shares.
//! - [`limiter`]: the per-IP rate limiter and the room side of it.
//! - [`moderation`]: moderation actions, room settings and the frames that announce them.
//! - [`counter`]: the counter object.
//! - [`ids`]: object ids from names and private ids minted and verified with a secret.
//! - [`storage`]: the key scheme, write batches and an in-memory reference store.
//! - [`auth`]: signed tokens, room grants, modes and the origin allow-list.
//! - [`http`]: routes, the client-IP rule and every HTTP answer, shared by every adapter.
//!
//! # The run loop
//! Every state machine follows one contract: after each `handle_*`, drain `poll_*` until it
//! is empty, then sleep until `poll_timeout`. Here is a whole room host driven by hand, with
//! [`MemoryStore`](storage::MemoryStore) as storage and a rate limiter answering in line:
//!
//! ```
//! use edgechat_core::host::{HostOutput, RoomHost};
//! use edgechat_core::limiter::{RateLimiter, RateLimiterConfig};
//! use edgechat_core::room::{ConnId, Input, Output, RoomConfig};
//! use edgechat_core::storage::MemoryStore;
//! use edgechat_core::Timestamp;
//!
//! let mut storage = MemoryStore::new();
//! let mut limiter = RateLimiter::new(RateLimiterConfig::default());
//! let mut host = RoomHost::new(RoomConfig::default(), 10_000);
//! let mut inbox = vec![
//!     Input::Connect { conn: ConnId(1), ip: "127.0.0.1".parse().unwrap() },
//!     Input::Text { conn: ConnId(1), text: r#"{"name":"ada"}"#.into() },
//!     Input::Text { conn: ConnId(1), text: r#"{"message":"hello"}"#.into() },
//! ];
//! let mut sent = Vec::new();
//! let now = Timestamp(1_700_000_000_000);
//! while !inbox.is_empty() {
//!     let input = inbox.remove(0);
//!     if !host.is_resident() {
//!         let stored = storage.list_each(&host.config().restore_queries());
//!         host.restore(&stored, [], now).expect("storage is not corrupt");
//!     }
//!     host.handle_input(input, now).expect("inputs follow the contract");
//!     while let Some(output) = host.poll_output() {
//!         match output {
//!             HostOutput::Room(Output::Send { frame, .. }) => sent.push(frame),
//!             HostOutput::Room(Output::Broadcast { frame, .. }) => sent.push(frame),
//!             HostOutput::Room(Output::Persist(batch)) => {
//!                 storage.apply(&batch); // commit, then confirm
//!                 inbox.insert(0, Input::Durable { batch: batch.id });
//!             }
//!             HostOutput::Room(Output::AskRateLimiter { request, .. }) => {
//!                 let wait_ms = limiter.handle_action(now);
//!                 inbox.insert(0, Input::Verdict { request, wait_ms });
//!             }
//!             _ => {} // attachments, closes, eviction news
//!         }
//!     }
//! }
//! assert_eq!(&*sent[0], r#"{"joined":"ada"}"#);
//! assert_eq!(&*sent[1], r#"{"ready":true}"#);
//! assert_eq!(
//!     &*sent[2],
//!     r#"{"name":"ada","message":"hello","timestamp":1700000000000,"id":1}"#
//! );
//! ```
//!
//! `examples/server.rs` embeds the same loop in a small tokio WebSocket server.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod counter;
pub mod host;
pub mod http;
pub mod ids;
pub mod limiter;
pub mod moderation;
pub mod planted;
pub mod protocol;
pub mod room;
pub mod storage;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
mod time;

pub use time::Timestamp;

#[cfg(test)]
mod tests;
