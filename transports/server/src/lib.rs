//! The standalone edgechat server: the sans-IO core behind hyper, tokio and SQLite, as a
//! binary (`edgechat`) and as a library to embed in an application.
//!
//! It is the Durable Objects runtime in miniature, on one machine:
//! - every room and counter is an object: one tokio task owning its core state machine,
//!   addressed by id, created on first use, reached over bounded channels (`objects`,
//!   `room`, `counter`); the per-IP rate limiters, shared by every room, are one in-process
//!   map of core limiters that a room consults within its own turn (`limiter`);
//! - rooms hibernate after an idle time: the core room is dropped while its sockets stay
//!   open with their attachments, and the next event restores it;
//! - one SQLite file holds every object's ordered key-value data, written by one thread
//!   that group-commits every queued batch in one transaction (`store`);
//! - HTTP routing and every refusal come from [`edgechat_core::http::route`] (`http`);
//!   each WebSocket is a reader and a writer task around a bounded outbound queue (`socket`).
//!
//! No chat rule lives here: adapters only translate between IO and the core.
//!
//! # Embedding
//! A [`Runtime`] is everything but the listening socket. Its [`Handle`] is a hyper/tower
//! `Service` for every route (mount it in axum with `nest_service`, see
//! `examples/axum.rs` and `examples/warp.rs`), a lower-level WebSocket entry
//! ([`Handle::accept_websocket`], [`Handle::serve_websocket`]) and plain async calls:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use edgechat_server::{Runtime, RuntimeConfig, Storage};
//!
//! let runtime = Runtime::open(RuntimeConfig {
//!     storage: Storage::Connection(rusqlite::Connection::open_in_memory()?),
//!     ..RuntimeConfig::default()
//! })?;
//! let chat = runtime.handle();
//!
//! // Application code posts into a room without HTTP...
//! let id = chat.publish("lobby", "bot", "Welcome!").await?;
//! let page = chat.history("lobby", None, 10).await?;
//! assert_eq!(page.messages[0].id, id);
//! assert_eq!(page.messages[0].message, "Welcome!");
//!
//! // ...and every route answers through the service (here called directly).
//! let request = http::Request::get("/api/room/lobby/presence")
//!     .body(http_body_util::Empty::<bytes::Bytes>::new())?;
//! let response = chat.respond(request).await;
//! assert_eq!(response.status(), 200);
//!
//! runtime.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Standalone
//! [`Server`] runs a runtime behind its own socket (optionally TLS), as the binary does:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let server = edgechat_server::Server::start(edgechat_server::Config {
//!     listen: "127.0.0.1:0".parse()?,
//!     data_path: "chat.db".into(),
//!     ..Default::default()
//! })
//! .await?;
//! println!("listening on {}", server.local_addr());
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```

// The modules form layers; a module imports only from layers below its own (checked by
// the `layering` test, which holds the table):
//
//   server                        the listening socket (and tls, its acceptor)
//   http                          Handle as a hyper/tower service: request -> core -> answer
//   runtime                       Runtime, Handle: opens the store, wires every layer below
//   socket                        one WebSocket task: reads frames into its room
//   room                          room tasks (RoomContext: store, metrics, limiters, settings)
//   counter, limiter              counter tasks; the rate limiters' shared map
//   store, conn, objects          SQLite thread; socket writer; generic object registries
//   clock, metrics, error         wall clock as core timestamps; counters; the open error
mod clock;
mod conn;
mod counter;
mod error;
mod http;
#[cfg(test)]
mod layering;
mod limiter;
mod metrics;
mod objects;
mod room;
mod runtime;
mod server;
mod socket;
mod store;
#[cfg(feature = "tls")]
mod tls;

pub use crate::error::OpenError;
pub use crate::http::{Body, ResponseFuture};
pub use crate::runtime::{
    Handle, HistoryPage, PeerAddr, Refused, RoomError, RoomTicket, Runtime, RuntimeConfig,
    ServedOverTls, ShutdownReport, Storage, DATA_PATH_DEFAULT, MAX_CONNECTIONS_DEFAULT,
    MAX_FRAME_BYTES_DEFAULT, OUTBOUND_QUEUE_LEN_DEFAULT, PING_INTERVAL_MS_DEFAULT,
    STORAGE_TIMEOUT_MS_DEFAULT,
};
pub use crate::server::{Config, Server, StartError, LISTEN_DEFAULT};
/// A message as [`Handle::history`] returns it.
pub use edgechat_core::protocol::ChatMessage;
/// The core's publish refusals ([`RoomError::Publish`]).
pub use edgechat_core::room::PublishError;
