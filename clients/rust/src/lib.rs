//! An async client for [edgechat](https://example.invalid/edgechat) rooms, with the same
//! semantics as the JavaScript client (`clients/js`).
//!
//! ```no_run
//! use edgechat_client::{connect, ConnectOptions, Event};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), edgechat_client::Error> {
//!     let (room, mut events) = connect(ConnectOptions::new("http://127.0.0.1:8787", "lobby", "ada"))?;
//!     // Resolves once the message is stored and broadcast: durable.
//!     let id = room.send("hello").await?;
//!     println!("sent #{id}");
//!     while let Some(event) = events.next().await {
//!         match event {
//!             Event::Message(m) => println!("#{:?} {}: {}", m.id, m.name, m.message),
//!             Event::Gap { since } => eprintln!("messages after #{since} could not be recovered"),
//!             Event::State { state, .. } => eprintln!("{state:?}"),
//!             _ => {}
//!         }
//!         # break;
//!     }
//!     let older = room.load_older(50).await?;
//!     println!("{} older messages, more: {}", older.messages.len(), older.has_more);
//!     println!("here now: {:?}", room.presence().await?);
//!     room.close().await;
//!     Ok(())
//! }
//! ```
//!
//! # What it guarantees
//! - **Every message once, in order.** Messages carry the room's gap-free id. After a drop
//!   the client rejoins with `since` = the last id it delivered and drops anything at or
//!   below it, across disconnects and server restarts. When the server no longer holds
//!   everything after that id, its `ready` says `recovered: false`: the client emits
//!   [`Event::Gap`] (and [`Event::Ready`] with `recovered: Some(false)`), then delivers what
//!   the server sent instead. It never hides a gap.
//! - **Acknowledged sends.** [`Room::send`] returns the message id when the server
//!   broadcasts the message back, which it does only once the message is durable. It fails
//!   with [`Error::Server`] carrying the server's text when the server refuses.
//! - **Nothing lost while away.** Sends made while connecting or reconnecting wait in a
//!   queue (at most [`ConnectOptions::max_queued_sends`]) and go out after the rejoin.
//! - **Rate limits are waited out.** A send refused as rate limited (or room busy) is sent
//!   again after a wait ([`Event::RateLimited`]), not lost.
//! - **Reconnect** with exponential backoff and full jitter: a uniform wait in
//!   `[0, min(reconnect_max, reconnect_initial * 2^attempt))`, reset by each join. A join
//!   the server refuses (a name too long; a room name it rejects) closes the client for good
//!   ([`Event::Error`] with `fatal: true`).
//!
//! # Layers
//! [`Room`] is built on two lower layers that are public for callers who need exact bytes
//! (the conformance suite, tests, load generators): [`raw::Session`], one WebSocket with
//! frames exactly as sent and received, and [`http::HttpClient`], every HTTP route with its
//! answer as is or typed.
//!
//! # TLS
//! `https://` and `wss://` need [`ConnectOptions::tls`]: a rustls `ClientConfig` with the
//! roots to trust (the crate bundles none, so a private CA is as easy as the public ones).

#![warn(missing_docs)]

pub mod error;
pub mod http;
pub mod raw;
mod room;
pub mod token;
pub mod url;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use tokio_rustls::rustls;

pub use crate::error::{Error, Result};
pub use crate::room::{
    connect, Events, OlderPage, Room, CLOSE_TOKEN_EXPIRED, ERROR_RATE_LIMITED, ERROR_ROOM_BUSY,
};
pub use crate::token::{token_expiry, TokenProvider};

/// A chat message, exactly as the server broadcast it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// The sender's name.
    pub name: String,
    /// The text.
    pub message: String,
    /// Milliseconds since the Unix epoch, strictly increasing within a room.
    pub timestamp: u64,
    /// The room's gap-free sequence number (absent only from servers without ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// The sender's verified identity (token subject), for messages from signed-in users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Whether a moderator (or the author) has edited it since it was sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub edited: bool,
    /// The idempotency key its sender gave it (this client sends one with every message;
    /// PROTOCOL.md, "Idempotent sends").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Where a [`Room`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum State {
    /// Opening the first connection.
    Connecting,
    /// Joined: messages flow and sends go out.
    Live,
    /// The connection was lost; waiting (with backoff) or opening a new one.
    Reconnecting,
    /// Closed for good, by [`Room::close`] or a refused join.
    Closed,
}

/// What a [`Room`] reports, in order, through [`Events`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A chat message, delivered once, in id order.
    Message(ChatMessage),
    /// Someone joined (after our own join; the roster before it comes as [`Event::Roster`]).
    Join {
        /// Their name.
        name: String,
    },
    /// Someone's connection left.
    Quit {
        /// Their name.
        name: String,
    },
    /// The roster changed: names in roster order, with their connection counts.
    Roster {
        /// The names and how many connections each has.
        roster: Vec<(String, usize)>,
    },
    /// A join completed.
    Ready {
        /// The server's `recovered` flag: `Some(false)` when messages were missed.
        recovered: Option<bool>,
        /// Whether this join resumed after an earlier one (or `since`).
        resumed: bool,
    },
    /// Messages after `since` could not be recovered (the server's `recovered: false`).
    Gap {
        /// The last id delivered before the gap.
        since: u64,
    },
    /// The connection state changed.
    State {
        /// The new state.
        state: State,
        /// The state before.
        previous: State,
    },
    /// A reconnect is scheduled.
    Reconnect {
        /// How many attempts since the last join.
        attempt: u32,
        /// The wait before it.
        delay: Duration,
    },
    /// The server sent an error that no send was waiting for, or a connection failed.
    Error {
        /// The server's text, or what failed.
        message: String,
        /// Whether the client closed because of it.
        fatal: bool,
    },
    /// The server took a fresh token from [`ConnectOptions::token_provider`] for the open
    /// connection (`{"refreshed": true}`); the connection goes on past the old one's expiry.
    Refreshed {
        /// The fresh token's `exp`, if it has one.
        expires_at: Option<SystemTime>,
    },
    /// Message `id` was deleted (by a moderator or its author): drop it from view. A replay
    /// shows a deleted message this way too, in its place.
    Deleted {
        /// The deleted message's id.
        id: u64,
    },
    /// Message `id` now says `message` (it keeps its place).
    Edited {
        /// The edited message's id.
        id: u64,
        /// Its new text.
        message: String,
    },
    /// The room's topic, on joining and whenever it changes (`""`: none).
    Topic {
        /// The topic.
        topic: String,
    },
    /// A send was refused as rate limited (or room busy) and will be sent again.
    RateLimited {
        /// The server's text.
        message: String,
        /// When it will be retried.
        retry_in: Duration,
    },
}

/// How to [`connect`]; [`ConnectOptions::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The server: `http(s)://` or `ws(s)://`, maybe with a path prefix.
    pub url: String,
    /// The room name or private room id.
    pub room: String,
    /// The user name (empty: the server calls us `anonymous`).
    pub name: String,
    /// A signed token (JWT) naming the user: on the WebSocket URL as `?token=...`, to
    /// history and presence as `Authorization: Bearer`. Without a
    /// [`token_provider`](ConnectOptions::token_provider), its expiry (close 4001) closes
    /// the client for good ([`Event::Error`] with `fatal: true`, `Token expired.`).
    pub token: Option<String>,
    /// Where fresh tokens come from; replaces [`token`](ConnectOptions::token). Asked before
    /// every (re)connect and HTTP read, and [`refresh_before`](ConnectOptions::refresh_before)
    /// the connection's token expires: the fresh one is sent as `{"token": ...}` and the
    /// connection goes on ([`Event::Refreshed`]). After an expiry close it reconnects with a
    /// fresh token.
    pub token_provider: Option<TokenProvider>,
    /// With a provider: refresh this long before the token's `exp`, or at half its remaining
    /// life if that is shorter, never more than once a second (60 s).
    pub refresh_before: Duration,
    /// Resume after this id on the first join.
    pub since: Option<u64>,
    /// The roots to trust for `https://` and `wss://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Extra headers on each WebSocket upgrade (e.g. a client-IP header for a test server).
    pub headers: Vec<(String, String)>,
    /// The first reconnect wait's bound (500 ms).
    pub reconnect_initial: Duration,
    /// The largest reconnect wait (30 s).
    pub reconnect_max: Duration,
    /// The server limiter's cost per action (5 s): rate-limit retries back off up to twice it.
    pub rate_limit_cost: Duration,
    /// The first retry after a rate-limit refusal (100 ms): the server also refuses frames
    /// while its limiter's answer to the previous one is on the way.
    pub rate_limit_first_retry: Duration,
    /// No answer to a send for this long: the connection is replaced (20 s).
    pub send_timeout: Duration,
    /// From opening a socket to `ready` (30 s); longer, and the socket is replaced.
    pub join_timeout: Duration,
    /// The most sends waiting for their acknowledgement (1000).
    pub max_queued_sends: usize,
    /// How long [`Room::close`] waits for the closing handshake (2 s).
    pub close_timeout: Duration,
}

impl ConnectOptions {
    /// Options for joining `room` on the server at `url` as `name`, with the defaults.
    pub fn new(url: impl Into<String>, room: impl Into<String>, name: impl Into<String>) -> Self {
        ConnectOptions {
            url: url.into(),
            room: room.into(),
            name: name.into(),
            token: None,
            token_provider: None,
            refresh_before: Duration::from_secs(60),
            since: None,
            tls: None,
            headers: Vec::new(),
            reconnect_initial: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            rate_limit_cost: Duration::from_secs(5),
            rate_limit_first_retry: Duration::from_millis(100),
            send_timeout: Duration::from_secs(20),
            join_timeout: Duration::from_secs(30),
            max_queued_sends: 1000,
            close_timeout: Duration::from_secs(2),
        }
    }
}
