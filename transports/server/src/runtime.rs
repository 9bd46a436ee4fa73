//! The embeddable runtime: rooms, counters, limiters and storage, with no listening socket.
//!
//! ```text
//!   Runtime::open ──► running ──handle()──► Handle (any number, cheap clones)
//!                        │                     ├─ HTTP service (every route, WebSocket upgrades)
//!                        │                     ├─ accept_websocket + serve_websocket
//!                        │                     └─ publish / presence / history
//!                        ▼
//!   Runtime::shutdown: sockets closed (1001) ─► rooms and counters commit ─► storage closed
//! ```
//! After shutdown has begun, handles answer 503 to upgrades and `Unavailable` once the
//! objects have stopped; they never panic.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use edgechat_core::auth::{
    upgrade_origin_allowed, Access, AuthConfig, AuthMode, Identity, PageScheme,
};
use edgechat_core::http::answer::{self, Answer};
use edgechat_core::http::{room_id, HistoryQuery, HISTORY_PAGE_LEN_MAX, UNKNOWN_CLIENT_IP};
use edgechat_core::ids::{IdSecret, ObjectId};
use edgechat_core::limiter::RateLimiterConfig;
use edgechat_core::moderation::{ModAction, ModError, RoomView};
use edgechat_core::protocol::{ChatMessage, Frame};
use edgechat_core::room::{PublishError, RoomConfig};
use tokio::sync::{oneshot, watch};

use crate::counter::{CounterMsg, Counters};
use crate::error::OpenError;
use crate::limiter::Limiters;
use crate::metrics::Metrics;
use crate::room::{Moderate, Publish, RoomContext, RoomMsg, RoomSettings, Rooms};
use crate::socket::{ConnectionGuard, SocketContext, SocketSettings};
use crate::store::Store;

/// Default database path.
pub const DATA_PATH_DEFAULT: &str = "./edgechat.db";
/// Default largest WebSocket frame or message a client may send, in bytes.
pub const MAX_FRAME_BYTES_DEFAULT: usize = 64 * 1024;
/// Default most open WebSocket connections.
pub const MAX_CONNECTIONS_DEFAULT: usize = 10_000;
/// Default most frames from earlier turns of its room left unwritten for one connection
/// before it is closed as too slow.
pub const OUTBOUND_QUEUE_LEN_DEFAULT: usize = 256;
/// Default interval between keepalive pings (a peer silent for two is closed).
pub const PING_INTERVAL_MS_DEFAULT: u64 = 30_000;
/// Default longest time a write may take to become durable before it is refused.
pub const STORAGE_TIMEOUT_MS_DEFAULT: u64 = 5_000;

/// How long shutdown waits for sockets to finish their closing handshakes.
const SHUTDOWN_SOCKETS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for objects to commit what they accepted (at least; longer if
/// the storage timeout is: every write is settled within it).
const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How much longer than the storage timeout shutdown waits for the storage thread to stop.
const SHUTDOWN_STORAGE_MARGIN: Duration = Duration::from_secs(5);

/// Where the runtime keeps its data.
#[derive(Debug)]
#[non_exhaustive]
pub enum Storage {
    /// A SQLite file, created if missing (WAL mode: `-wal` and `-shm` files appear beside it).
    Path(PathBuf),
    /// An open connection, owned by the runtime's storage thread from now on: a file (it is
    /// switched to WAL mode) or an in-memory database (for tests; nothing survives).
    Connection(rusqlite::Connection),
}

/// Runtime settings. Every field has a default ([`RuntimeConfig::default`]).
#[derive(Debug)]
pub struct RuntimeConfig {
    /// Where rooms' history, counters and the id secret live.
    pub storage: Storage,
    /// How long a room stays in memory without events before it hibernates.
    pub idle_ms: u64,
    /// Largest WebSocket frame or message a client may send, in bytes; larger ones close
    /// the connection with 1009.
    pub max_frame_bytes: usize,
    /// Most open WebSocket connections; upgrades beyond are refused with 503.
    pub max_connections: usize,
    /// Most frames from earlier turns of its room a connection may leave unwritten after a
    /// write (a turn's own frames, such as a join's roster and history, do not count); a
    /// connection over it is closed with 1008 (too slow) rather than buffered without limit.
    pub outbound_queue_len: usize,
    /// A header set by a trusted reverse proxy that carries the client's IP (for example
    /// `X-Forwarded-For`); without it the peer address ([`PeerAddr`]) is the client IP.
    pub trust_proxy_header: Option<String>,
    /// The admin token for `POST /api/room/<room>/messages` and `POST /admin/hibernate`;
    /// without one, those are refused.
    pub admin_token: Option<String>,
    /// Settings of the per-IP rate limiters.
    pub rate_limit: RateLimiterConfig,
    /// Settings of every room. Its `limiter_may_wait` is turned off when `rate_limit`
    /// never waits (a cost of 0), so that rooms ask the limiters nothing.
    pub room: RoomConfig,
    /// Interval between keepalive pings, in milliseconds.
    pub ping_interval_ms: u64,
    /// Longest time, in milliseconds, a write may take to become durable: past it the write
    /// is rolled back and refused (its senders get the core's storage error, publishes get
    /// 503). Restores, history and counters are bounded by it too.
    pub storage_timeout_ms: u64,
    /// Who may connect where (signed tokens, token-only rooms). The default is
    /// [`AuthMode::Off`]: no token is read and anyone joins under any name.
    pub auth: AuthConfig,
    /// Web origins (`scheme://host[:port]`) whose pages may open WebSockets; empty: any.
    /// When set, a browser upgrade from another origin is refused with 403; clients that
    /// send no `Origin` and the page's own origin are always allowed.
    pub allowed_origins: Vec<String>,
    /// Submit a room's turn of socket writes to io_uring in one system call instead of
    /// one `writev` per connection (Linux, where the kernel allows it; elsewhere, or when
    /// refused, the writes go one by one as without it). Off by default: it saves about
    /// 13 % of the server's CPU per fan-out delivery but, measured beside its load
    /// generator on two cores, lengthened the fan-out tail (BENCHMARKS.md "io_uring").
    pub io_uring: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            storage: Storage::Path(PathBuf::from(DATA_PATH_DEFAULT)),
            idle_ms: edgechat_core::host::IDLE_EVICTION_MS_DEFAULT,
            max_frame_bytes: MAX_FRAME_BYTES_DEFAULT,
            max_connections: MAX_CONNECTIONS_DEFAULT,
            outbound_queue_len: OUTBOUND_QUEUE_LEN_DEFAULT,
            io_uring: false,
            trust_proxy_header: None,
            admin_token: None,
            rate_limit: RateLimiterConfig::default(),
            room: RoomConfig::default(),
            ping_interval_ms: PING_INTERVAL_MS_DEFAULT,
            storage_timeout_ms: STORAGE_TIMEOUT_MS_DEFAULT,
            auth: AuthConfig::default(),
            allowed_origins: Vec::new(),
        }
    }
}

/// The settings the runtime's front reads (the objects got theirs when it opened).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub max_connections: usize,
    pub trust_proxy_header: Option<String>,
    pub admin_token: Option<String>,
    pub socket: SocketSettings,
    pub auth: Arc<AuthConfig>,
    pub allowed_origins: Vec<String>,
}

/// What every [`Handle`] shares: the objects and the runtime's front settings.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: Settings,
    pub secret: IdSecret,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub rooms: Arc<Rooms>,
    pub counters: Arc<Counters>,
    /// Flips to `true` once when the runtime starts shutting down. Held here (not by the
    /// [`Runtime`] or [`Server`](crate::Server)) so that dropping those does not stop
    /// anything.
    pub shutdown: watch::Sender<bool>,
}

/// The TCP (or other transport) peer of a request, put into the request's extensions by
/// whatever accepted the connection; the [`Handle`] service takes the client IP from it
/// (unless [`RuntimeConfig::trust_proxy_header`] names a header that carries it).
///
/// Without it, every client shares the rate limiter of `0.0.0.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Marks a request that arrived over TLS ended in this process, put into the request's
/// extensions by whatever accepted the connection (the [`Server`](crate::Server) does): the
/// page's own origin is then `https://` on the `Host`. Without it, and without a trusted
/// proxy's `X-Forwarded-Proto`, either scheme on the `Host` is the page's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServedOverTls;

/// A running runtime: the object tasks and the storage thread. Dropping it without
/// [`Runtime::shutdown`] leaves them running until the process ends.
#[derive(Debug)]
pub struct Runtime {
    shared: Arc<Shared>,
    storage_thread: std::thread::JoinHandle<()>,
    storage_timeout: Duration,
}

/// How a shutdown ended: whether everything the objects accepted was written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// What could not be written, in words; `None` when everything was. Nothing in it was
    /// ever acknowledged: writes are acknowledged only once durable.
    pub unwritten: Option<String>,
}

impl ShutdownReport {
    /// Whether everything accepted was written (exit 0).
    pub fn flushed(&self) -> bool {
        self.unwritten.is_none()
    }
}

impl Runtime {
    /// Opens the storage and starts the storage thread; rooms and the rest start on first
    /// use. Call it inside a tokio runtime (object tasks are spawned onto it later).
    ///
    /// # Errors
    /// If the database cannot be opened or initialized ([`OpenError`]).
    pub fn open(config: RuntimeConfig) -> Result<Runtime, OpenError> {
        let RuntimeConfig {
            storage,
            idle_ms,
            max_frame_bytes,
            max_connections,
            outbound_queue_len,
            io_uring,
            trust_proxy_header,
            admin_token,
            rate_limit,
            room,
            ping_interval_ms,
            storage_timeout_ms,
            auth,
            allowed_origins,
        } = config;
        let auth = Arc::new(auth);
        let metrics = Arc::new(Metrics::default());
        let storage_timeout = Duration::from_millis(storage_timeout_ms.max(1));
        let (store, secret, storage_thread) = match storage {
            Storage::Path(path) => Store::open_path(&path, metrics.clone(), storage_timeout)?,
            Storage::Connection(conn) => Store::open(conn, metrics.clone(), storage_timeout)?,
        };
        let (shutdown, _) = watch::channel(false);
        let limiters = Limiters::new(metrics.clone(), rate_limit);
        let rooms = Rooms::new(RoomContext {
            store: store.clone(),
            metrics: metrics.clone(),
            limiters,
            settings: RoomSettings {
                room: RoomConfig {
                    // A limiter that never makes anyone wait is not asked at all.
                    limiter_may_wait: room.limiter_may_wait && !rate_limit.never_waits(),
                    ..room
                },
                auth: (auth.mode() != AuthMode::Off).then(|| auth.clone()),
                idle_ms,
                outbound_queue_len,
                io_uring,
            },
        });
        let counters = Counters::new(store.clone(), metrics.clone(), idle_ms);
        let shared = Arc::new(Shared {
            config: Settings {
                max_connections,
                trust_proxy_header,
                admin_token,
                socket: SocketSettings {
                    max_frame_bytes,
                    ping_interval_ms,
                },
                auth,
                allowed_origins,
            },
            secret,
            store,
            metrics,
            rooms,
            counters,
            shutdown,
        });
        Ok(Runtime {
            shared,
            storage_thread,
            storage_timeout,
        })
    }

    /// A handle to serve requests and post into rooms with.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }

    /// Stops gracefully: closes every WebSocket with 1001 and waits (bounded) for the
    /// closing handshakes, lets rooms and counters commit what they accepted, then commits
    /// every pending write and closes the database. Stop serving HTTP first (or alongside),
    /// as [`Server::shutdown`](crate::Server::shutdown) does.
    ///
    /// Bounded whatever storage does; the report says whether everything was written.
    pub async fn shutdown(self) -> ShutdownReport {
        self.close_sockets().await;
        self.stop().await
    }

    /// Shutdown's first step: every socket is told to close (1001), new upgrades are refused.
    pub(crate) async fn close_sockets(&self) {
        tracing::info!("shutting down");
        let shared = &self.shared;
        shared.shutdown.send_replace(true);
        let sockets_closed = async {
            while shared.metrics.connections.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_SOCKETS_TIMEOUT, sockets_closed)
            .await
            .is_err()
        {
            tracing::warn!("some sockets did not finish closing in time");
        }
    }

    /// Shutdown's last steps: objects commit what they accepted, storage closes.
    pub(crate) async fn stop(self) -> ShutdownReport {
        let shared = self.shared;
        let mut stopped = Vec::new();
        for inbox in shared.rooms.inboxes() {
            let (reply, done) = oneshot::channel();
            if inbox.send(RoomMsg::Shutdown { reply }).await.is_ok() {
                stopped.push(done);
            }
        }
        for inbox in shared.counters.inboxes() {
            let (reply, done) = oneshot::channel();
            if inbox.send(CounterMsg::Shutdown { reply }).await.is_ok() {
                stopped.push(done);
            }
        }
        let all_stopped = async {
            for done in stopped {
                let _ = done.await;
            }
        };
        let mut unwritten = Vec::new();
        let drain_timeout =
            SHUTDOWN_DRAIN_TIMEOUT.max(self.storage_timeout + SHUTDOWN_STORAGE_MARGIN);
        if tokio::time::timeout(drain_timeout, all_stopped)
            .await
            .is_err()
        {
            tracing::warn!("some objects did not finish their writes in time");
            unwritten.push("some rooms or counters did not settle their writes in time".to_owned());
        }
        let stop_timeout = self.storage_timeout + SHUTDOWN_STORAGE_MARGIN;
        match tokio::time::timeout(stop_timeout, shared.store.stop()).await {
            Ok(report) => {
                let report = report.unwrap_or_default();
                if let Some(failing) = report.failing {
                    unwritten.push(format!(
                        "storage is failing ({failing}); {} write batches were refused since it began",
                        report.batches_refused
                    ));
                }
                let thread = self.storage_thread;
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
            Err(_) => unwritten.push(format!(
                "the storage thread did not stop within {} ms; writes still queued were not written",
                stop_timeout.as_millis()
            )),
        }
        let report = ShutdownReport {
            unwritten: (!unwritten.is_empty()).then(|| unwritten.join("; ")),
        };
        match &report.unwritten {
            None => tracing::info!("stopped: everything accepted was written"),
            Some(unwritten) => tracing::error!(
                %unwritten,
                "stopped: not everything could be written (none of it was acknowledged)"
            ),
        }
        report
    }

    /// A receiver that turns `true` once shutdown begins.
    pub(crate) fn stopping(&self) -> watch::Receiver<bool> {
        self.shared.shutdown.subscribe()
    }
}

/// A cheap, cloneable way into a [`Runtime`].
///
/// A `Handle` is a tower and hyper `Service` answering every route of the protocol, and
/// offers the same operations without HTTP.
///
/// # Mounting
/// The service answers paths as the protocol writes them (`/`, `/api/room/...`). Mounted
/// under a prefix, the framework strips it (axum's `Router::nest_service("/chat", handle)`
/// does; see `examples/axum.rs` and `examples/warp.rs`). The chat page itself calls
/// `/api/...` from the origin's root, so it only works mounted at the root.
///
/// The client IP comes from the [`PeerAddr`] request extension (or the trusted proxy
/// header): [`Server`](crate::Server) sets it; an application inserts it from its
/// framework's peer address (axum: `ConnectInfo<SocketAddr>`, warp: `warp::addr::remote()`).
///
/// WebSocket upgrades go through `hyper::upgrade::on`, so the connection must be served
/// with upgrades enabled (axum's and warp's servers are; with hyper, `.with_upgrades()`).
///
/// # Direct writes
/// When the upgraded connection is hyper's over a plain `TokioIo<TcpStream>` (hyper's
/// `http1` builder, as [`Server`](crate::Server) uses), rooms write frames straight into
/// the socket. `axum::serve` and `warp::serve` go through hyper-util's HTTP/1-or-2 `auto`
/// builder, which wraps the stream; there each connection's own task writes its frames
/// (correct, one task wakeup more per write).
#[derive(Debug, Clone)]
pub struct Handle {
    pub(crate) shared: Arc<Shared>,
}

/// Why a room operation did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoomError {
    /// The room address is not valid (a name too long, a private id this server did not
    /// mint); the text is the protocol's answer.
    #[error("{0}")]
    InvalidRoom(&'static str),
    /// The arguments are out of range.
    #[error("{0}")]
    InvalidArgument(&'static str),
    /// The room refused the publish.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The room refused the moderation action.
    #[error(transparent)]
    Moderation(#[from] ModError),
    /// The room could not answer (its storage is failing, or the runtime is stopping).
    #[error("the room is unavailable")]
    Unavailable,
}

/// A page of a room's history.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistoryPage {
    /// The messages, newest first.
    pub messages: Vec<ChatMessage>,
    /// Pass this as `before` for the next (older) page; `None` when there is none.
    pub next_before: Option<u64>,
}

/// A WebSocket refused before its upgrade: answer this status and plain-text body instead
/// of `101 Switching Protocols`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    answer: Answer,
}

impl Refused {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.answer.status
    }

    /// The plain-text body.
    pub fn body(&self) -> &str {
        &self.answer.body
    }

    /// The answer (its response is built by [`Refused::into_response`]).
    pub(crate) fn answer(self) -> Answer {
        self.answer
    }
}

impl From<Answer> for Refused {
    fn from(answer: Answer) -> Self {
        Refused { answer }
    }
}

/// A WebSocket accepted before its upgrade: the room is valid and a connection slot is
/// reserved (released when the ticket is dropped unused).
#[derive(Debug)]
pub struct RoomTicket {
    room: ObjectId,
    identity: Option<Identity>,
    guard: ConnectionGuard,
}

impl RoomTicket {
    /// The room's object id.
    pub fn room(&self) -> ObjectId {
        self.room
    }

    /// The verified user the connection will be, if its token gave one.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }
}

impl Handle {
    /// Checks a WebSocket for `room` (a name or a private id, as in the path) before its
    /// upgrade is answered: the room address, access without a token
    /// ([`RuntimeConfig::auth`]), shutdown and the connection limit.
    ///
    /// # Errors
    /// The answer to give instead of `101` ([`Refused`]).
    pub fn accept_websocket(&self, room: &str) -> Result<RoomTicket, Refused> {
        self.accept_websocket_with_token(room, None)
    }

    /// [`Handle::accept_websocket`] for a client presenting `token` (the `token` of the
    /// upgrade URL's query, see [`token_from_query`](edgechat_core::auth::token_from_query)):
    /// a valid token fixes the user's name and role in the room.
    ///
    /// # Errors
    /// The answer to give instead of `101` ([`Refused`]): 401 or 403 for a token refused.
    pub fn accept_websocket_with_token(
        &self,
        room: &str,
        token: Option<&str>,
    ) -> Result<RoomTicket, Refused> {
        let id = room_id(room, &self.shared.secret).map_err(answer::refused)?;
        let access = self.admit(id, token)?;
        let ticket = self.ticket(id, access).map_err(Refused::from)?;
        if !edgechat_core::ids::is_lower_hex_id(room) {
            self.shared.rooms.remember_label(id, room);
        }
        Ok(ticket)
    }

    /// Whether the browser page that sent this upgrade (its `Origin`) may open a WebSocket,
    /// by the core's rule ([`upgrade_origin_allowed`]): the page's own origin comes from the
    /// `Host`, over `https` when `tls` (see [`ServedOverTls`]), else the scheme a trusted
    /// proxy forwarded (only when [`RuntimeConfig::trust_proxy_header`] is set), else either.
    ///
    /// # Errors
    /// The answer to give instead of `101`.
    pub(crate) fn check_origin(&self, headers: &http::HeaderMap, tls: bool) -> Result<(), Answer> {
        let config = &self.shared.config;
        let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        let scheme = if tls {
            PageScheme::Https
        } else if config.trust_proxy_header.is_some() {
            // A client can send the header itself: it counts only behind a trusted proxy.
            PageScheme::from_forwarded_proto(header("x-forwarded-proto"), PageScheme::Either)
        } else {
            PageScheme::Either
        };
        let allowed = upgrade_origin_allowed(
            header("origin"),
            &config.allowed_origins,
            header("host"),
            scheme,
        );
        if allowed {
            Ok(())
        } else {
            Err(answer::origin_refused())
        }
    }

    /// Who a client presenting `token` is in `room`, by the runtime's policy.
    ///
    /// # Errors
    /// The core's refusal (401 or 403).
    pub(crate) fn admit(&self, room: ObjectId, token: Option<&str>) -> Result<Access, Answer> {
        self.shared
            .config
            .auth
            .admit(&room, token, crate::clock::now())
            .map_err(answer::auth_refused)
    }

    pub(crate) fn ticket(&self, room: ObjectId, access: Access) -> Result<RoomTicket, Answer> {
        let shared = &self.shared;
        if *shared.shutdown.borrow() {
            return Err(answer::shutting_down());
        }
        let Some(guard) = ConnectionGuard::try_new(&shared.metrics, shared.config.max_connections)
        else {
            crate::metrics::inc(&shared.metrics.connections_refused);
            return Err(answer::too_many_connections());
        };
        let identity = match access {
            Access::Anonymous => None,
            Access::User(identity) => Some(identity),
        };
        Ok(RoomTicket {
            room,
            identity,
            guard,
        })
    }

    /// Serves an upgraded WebSocket connection (after `101` was sent) in the ticket's room
    /// until it closes, with every limit of the runtime applied. `client_ip` keys the rate
    /// limiter (see [`Handle::client_ip`]).
    ///
    /// `io` is any byte stream: pass hyper's `Upgraded` as `hyper_util::rt::TokioIo<Upgraded>`,
    /// and when that connection was served over a plain `TokioIo<TcpStream>` the room
    /// writes frames straight into the socket; otherwise (TLS, wrapped streams) the
    /// connection's own task writes them.
    pub async fn serve_websocket<T>(&self, ticket: RoomTicket, client_ip: IpAddr, io: T)
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let RoomTicket {
            room,
            identity,
            guard,
        } = ticket;
        let context = SocketContext {
            rooms: self.shared.rooms.clone(),
            settings: self.shared.config.socket,
            shutdown: self.shared.shutdown.subscribe(),
        };
        crate::socket::serve(io, context, room, client_ip, identity, guard).await;
    }

    /// The client IP of a request from `peer`: the trusted proxy header if one is
    /// configured and present with a valid address, else the peer's IP, else `0.0.0.0`.
    pub fn client_ip(&self, headers: &http::HeaderMap, peer: Option<SocketAddr>) -> IpAddr {
        let forwarded = self
            .shared
            .config
            .trust_proxy_header
            .as_deref()
            .and_then(|name| headers.get(name))
            .and_then(|value| value.to_str().ok());
        edgechat_core::http::client_ip(forwarded, peer.map(|peer| peer.ip()))
            .unwrap_or(UNKNOWN_CLIENT_IP)
    }

    /// Publishes `message` as `name` into `room` (a name or a private id), as the admin
    /// endpoint does, and returns its id once it is durable.
    ///
    /// # Errors
    /// [`RoomError::InvalidRoom`], [`RoomError::Publish`] (bad name or message, room
    /// busy), [`RoomError::Unavailable`].
    pub async fn publish(&self, room: &str, name: &str, message: &str) -> Result<u64, RoomError> {
        let room = self.room(room)?;
        Ok(self
            .publish_to(room, name.to_owned(), message.to_owned())
            .await
            .ok_or(RoomError::Unavailable)??)
    }

    /// The names of the users joined to `room`.
    ///
    /// # Errors
    /// [`RoomError::InvalidRoom`], [`RoomError::Unavailable`].
    pub async fn presence(&self, room: &str) -> Result<Vec<String>, RoomError> {
        let room = self.room(room)?;
        self.presence_of(room).await.ok_or(RoomError::Unavailable)
    }

    /// Up to `limit` (1 to 100) retained messages of `room` with ids below `before` (all
    /// if `None`), newest first.
    ///
    /// # Errors
    /// [`RoomError::InvalidRoom`], [`RoomError::InvalidArgument`] for a limit out of
    /// range, [`RoomError::Unavailable`].
    pub async fn history(
        &self,
        room: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, RoomError> {
        let room = self.room(room)?;
        if !(1..=HISTORY_PAGE_LEN_MAX).contains(&limit) {
            return Err(RoomError::InvalidArgument("limit must be 1 to 100"));
        }
        let query = HistoryQuery { before, limit };
        let frames = self
            .history_frames(room, query)
            .await
            .ok_or(RoomError::Unavailable)?;
        let messages: Vec<ChatMessage> = frames
            .iter()
            .filter_map(|frame| ChatMessage::decode(frame).ok())
            .collect();
        // Change records are left out of `messages`, but a page may end in one.
        let next_before = answer::history_next_before(&frames, query);
        Ok(HistoryPage {
            messages,
            next_before,
        })
    }

    /// Takes one moderation action in `room` (see [`edgechat_core::moderation`]), as the
    /// admin API does; returns once it is durable and in force.
    ///
    /// # Errors
    /// [`RoomError::InvalidRoom`], [`RoomError::Moderation`] (refused: not allowed, no such
    /// message, busy, storage failed), [`RoomError::Unavailable`].
    pub async fn moderate(&self, room: &str, action: ModAction) -> Result<(), RoomError> {
        let room = self.room(room)?;
        Ok(self
            .moderate_in(room, action)
            .await
            .ok_or(RoomError::Unavailable)??)
    }

    fn room(&self, room: &str) -> Result<ObjectId, RoomError> {
        room_id(room, &self.shared.secret).map_err(|refusal| RoomError::InvalidRoom(refusal.body))
    }

    /// Publishes into `room`; `None` if the room could not answer.
    pub(crate) async fn publish_to(
        &self,
        room: ObjectId,
        name: String,
        message: String,
    ) -> Option<Result<u64, PublishError>> {
        let (reply, answer) = oneshot::channel();
        let msg = RoomMsg::Publish(Box::new(Publish {
            name,
            message,
            reply,
        }));
        self.ask_room(room, msg, answer).await
    }

    /// Moderates in `room`; `None` if the room could not answer.
    pub(crate) async fn moderate_in(
        &self,
        room: ObjectId,
        action: ModAction,
    ) -> Option<Result<(), ModError>> {
        let (reply, answer) = oneshot::channel();
        let msg = RoomMsg::Moderate(Box::new(Moderate { action, reply }));
        self.ask_room(room, msg, answer).await
    }

    /// What the admin API shows of `room`; `None` if the room could not answer.
    pub(crate) async fn room_view(&self, room: ObjectId) -> Option<RoomView> {
        let (reply, answer) = oneshot::channel();
        self.ask_room(room, RoomMsg::Inspect { reply }, answer)
            .await
    }

    /// The joined users of `room`; `None` if the room could not answer.
    pub(crate) async fn presence_of(&self, room: ObjectId) -> Option<Vec<String>> {
        let (reply, answer) = oneshot::channel();
        self.ask_room(room, RoomMsg::Presence { reply }, answer)
            .await
    }

    /// A page of `room`'s history as broadcast frames; `None` if the room could not answer.
    pub(crate) async fn history_frames(
        &self,
        room: ObjectId,
        query: HistoryQuery,
    ) -> Option<Vec<Frame>> {
        let (reply, answer) = oneshot::channel();
        self.ask_room(room, RoomMsg::History { query, reply }, answer)
            .await
    }

    /// Sends `msg` to a room and waits for its answer; `None` if the room could not answer.
    async fn ask_room<T>(
        &self,
        room: ObjectId,
        msg: RoomMsg,
        answer: oneshot::Receiver<T>,
    ) -> Option<T> {
        self.shared.rooms.send(room, msg).await.ok()?;
        answer.await.ok()
    }
}
