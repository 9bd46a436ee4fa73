//! The standalone edgechat server: the sans-IO core behind warp, tokio and SQLite.
//!
//! It is the Durable Objects runtime in miniature, on one machine:
//! - every room, counter and per-IP rate limiter is an object: one tokio task owning its
//!   core state machine, addressed by id, created on first use, reached over bounded
//!   channels (`objects`, `room`, `counter`, `limiter`);
//! - rooms hibernate after an idle time: the core room is dropped while its sockets stay
//!   open with their attachments, and the next event restores it;
//! - one SQLite file holds every object's ordered key-value data, written by one thread
//!   that group-commits every queued batch in one transaction (`store`);
//! - HTTP routing and every refusal come from [`edgechat_core::http::route`] (`http`);
//!   each WebSocket is a reader and a writer task around a bounded outbound queue (`socket`).
//!
//! No chat rule lives here: adapters only translate between IO and the core.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
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

mod conn;
mod counter;
mod http;
mod limiter;
mod metrics;
mod objects;
mod room;
mod socket;
mod store;
#[cfg(feature = "tls")]
mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use edgechat_core::limiter::RateLimiterConfig;
use edgechat_core::room::RoomConfig;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::objects::{Registry, Rooms, Shared};
use crate::store::Store;

/// Default listen address.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:8787";
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

/// How long a client may take to send a request head (slowloris protection: a connection
/// that has not upgraded yet does not count against `max_connections`).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for sockets to finish their closing handshakes.
const SHUTDOWN_SOCKETS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for in-flight HTTP requests and object writes.
const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Server settings. Every field has a default ([`Config::default`]).
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen (port 0 picks a free port; see [`Server::local_addr`]).
    pub listen: SocketAddr,
    /// The SQLite database file (created if missing).
    pub data_path: PathBuf,
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
    /// `X-Forwarded-For`); without it the TCP peer address is the client IP.
    pub trust_proxy_header: Option<String>,
    /// The admin token for `POST /api/room/<room>/messages` and `POST /admin/hibernate`;
    /// without one, those are refused.
    pub admin_token: Option<String>,
    /// Settings of the per-IP rate limiters.
    pub rate_limit: RateLimiterConfig,
    /// Settings of every room.
    pub room: RoomConfig,
    /// Interval between keepalive pings, in milliseconds.
    pub ping_interval_ms: u64,
    /// PEM certificate chain for HTTPS/WSS (with [`Config::tls_key`]).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS/WSS (with [`Config::tls_cert`]).
    pub tls_key: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: LISTEN_DEFAULT.parse().expect("valid default address"),
            data_path: PathBuf::from(DATA_PATH_DEFAULT),
            idle_ms: edgechat_core::host::IDLE_EVICTION_MS_DEFAULT,
            max_frame_bytes: MAX_FRAME_BYTES_DEFAULT,
            max_connections: MAX_CONNECTIONS_DEFAULT,
            outbound_queue_len: OUTBOUND_QUEUE_LEN_DEFAULT,
            trust_proxy_header: None,
            admin_token: None,
            rate_limit: RateLimiterConfig::default(),
            room: RoomConfig::default(),
            ping_interval_ms: PING_INTERVAL_MS_DEFAULT,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    http: JoinHandle<()>,
    storage_thread: std::thread::JoinHandle<()>,
}

type ServeFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A hyper server as a [`ServeFuture`] that logs how it failed.
fn logged(
    serve: impl Future<Output = Result<(), hyper::Error>> + Send + 'static,
    what: &'static str,
) -> ServeFuture {
    Box::pin(async move {
        if let Err(error) = serve.await {
            tracing::error!(%error, "{what} server failed");
        }
    })
}

impl Server {
    /// Opens the database and starts listening.
    ///
    /// # Errors
    /// If the database cannot be opened, the address cannot be bound, or the TLS files are
    /// unusable.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        let metrics = Arc::new(Metrics::default());
        let (store, secret, storage_thread) = Store::open(&config.data_path, metrics.clone())?;
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            config: config.clone(),
            secret,
            store,
            metrics,
            rooms: Rooms::new(room::ROOM_INBOX_LEN),
            limiters: Registry::new(limiter::LIMITER_INBOX_LEN),
            counters: Registry::new(counter::COUNTER_INBOX_LEN),
            shutdown,
        });
        let bound = bind(&config, &shared);
        let (local_addr, serve) = match bound {
            Ok(bound) => bound,
            Err(error) => {
                shared.store.stop().await;
                let _ = tokio::task::spawn_blocking(move || storage_thread.join()).await;
                return Err(error);
            }
        };
        let http = tokio::spawn(serve);
        tracing::info!(
            %local_addr,
            data = %config.data_path.display(),
            tls = config.tls_cert.is_some(),
            "edgechat listening"
        );
        Ok(Server {
            local_addr,
            shared,
            http,
            storage_thread,
        })
    }

    /// The address the server listens on (with the real port if 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops gracefully: closes every WebSocket with 1001, finishes in-flight requests,
    /// commits every pending write and closes the database.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        let shared = self.shared;
        shared.shutdown.send_replace(true);

        // 1. Every writer sends 1001 and the readers wait for the peers' answers.
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

        // 2. In-flight HTTP requests finish (warp stopped accepting on the same signal).
        let _ = tokio::time::timeout(SHUTDOWN_DRAIN_TIMEOUT, self.http).await;

        // 3. Objects commit what they accepted.
        let mut stopped = Vec::new();
        for inbox in shared.rooms.inboxes() {
            let (reply, done) = oneshot::channel();
            if inbox.send(room::RoomMsg::Shutdown { reply }).await.is_ok() {
                stopped.push(done);
            }
        }
        for inbox in shared.counters.inboxes() {
            let (reply, done) = oneshot::channel();
            if inbox
                .send(counter::CounterMsg::Shutdown { reply })
                .await
                .is_ok()
            {
                stopped.push(done);
            }
        }
        let all_stopped = async {
            for done in stopped {
                let _ = done.await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_DRAIN_TIMEOUT, all_stopped)
            .await
            .is_err()
        {
            tracing::warn!("some objects did not finish their writes in time");
        }

        // 4. Storage commits what is queued and closes the file.
        shared.store.stop().await;
        let thread = self.storage_thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        tracing::info!("stopped");
    }
}

fn bind(config: &Config, shared: &Arc<Shared>) -> anyhow::Result<(SocketAddr, ServeFuture)> {
    let routes = http::routes(shared.clone());
    let mut stopping = shared.shutdown.subscribe();
    let signal = async move {
        let _ = stopping.wait_for(|stopping| *stopping).await;
    };
    let service = warp::service(routes);
    // The peer address and the upgrade handle go into the request's extensions for the
    // filter (hyper directly rather than `warp::serve`, which can set neither, nor a
    // header-read timeout).
    let make = move |peer: SocketAddr| {
        let peer = http::Peer(peer);
        let service = service.clone();
        async move {
            Ok::<_, std::convert::Infallible>(hyper::service::service_fn(
                move |mut request: hyper::Request<hyper::Body>| {
                    request.extensions_mut().insert(peer);
                    http::PendingUpgrade::stash(&mut request);
                    hyper::service::Service::call(&mut service.clone(), request)
                },
            ))
        }
    };
    match (&config.tls_cert, &config.tls_key) {
        (None, None) => {
            let mut incoming = hyper::server::conn::AddrIncoming::bind(&config.listen)
                .with_context(|| format!("binding {}", config.listen))?;
            // Chat frames are small and latency matters: never let Nagle hold one back
            // waiting for an ACK (the socket writer already batches frames per flush).
            incoming.set_nodelay(true);
            let addr = incoming.local_addr();
            let make =
                hyper::service::make_service_fn(move |conn: &hyper::server::conn::AddrStream| {
                    make(conn.remote_addr())
                });
            let serve = hyper::Server::builder(incoming)
                .http1_header_read_timeout(HEADER_READ_TIMEOUT)
                .serve(make)
                .with_graceful_shutdown(signal);
            Ok((addr, logged(serve, "HTTP")))
        }
        #[cfg(feature = "tls")]
        (Some(cert), Some(key)) => {
            let acceptor = tls::acceptor(cert, key)?;
            let listener = std::net::TcpListener::bind(config.listen)
                .with_context(|| format!("binding {} with TLS", config.listen))?;
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let addr = listener.local_addr()?;
            let incoming = tls::incoming(listener, acceptor, shared.shutdown.subscribe());
            let make = hyper::service::make_service_fn(move |conn: &tls::TlsConn| make(conn.peer));
            let serve = hyper::Server::builder(incoming)
                .http1_header_read_timeout(HEADER_READ_TIMEOUT)
                .serve(make)
                .with_graceful_shutdown(signal);
            Ok((addr, logged(serve, "HTTPS")))
        }
        #[cfg(not(feature = "tls"))]
        (Some(_), Some(_)) => anyhow::bail!("this build has no TLS support (feature `tls`)"),
        _ => anyhow::bail!("--tls-cert and --tls-key must be given together"),
    }
}
