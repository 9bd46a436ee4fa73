//! [`Server`]: a [`Runtime`] behind its own listening socket (plain or TLS), as the
//! `edgechat` binary runs it.
//!
//! One task accepts connections; each connection is one hyper HTTP/1.1 connection task
//! (header-read timeout, upgrades) serving a [`Handle`]. Plain TCP connections are served
//! as `TokioIo<TcpStream>`, which is what lets a room write straight into an upgraded socket.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use edgechat_core::auth::AuthConfig;
use edgechat_core::limiter::RateLimiterConfig;
use edgechat_core::room::RoomConfig;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::error::OpenError;
use crate::runtime::{
    self, Handle, PeerAddr, Runtime, RuntimeConfig, ServedOverTls, ShutdownReport, Storage,
};

/// Default listen address.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:8787";

/// How long a client may take to send a request head (slowloris protection: a connection
/// that has not upgraded yet does not count against `max_connections`).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for in-flight HTTP requests.
const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (out of descriptors and the like) rather than spin.
const ACCEPT_RETRY_MS: u64 = 50;

/// Server settings: the [`RuntimeConfig`] fields plus the socket and TLS. Every field has a
/// default ([`Config::default`]).
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen (port 0 picks a free port; see [`Server::local_addr`]).
    pub listen: SocketAddr,
    /// The SQLite database file (created if missing).
    pub data_path: PathBuf,
    /// See [`RuntimeConfig::idle_ms`].
    pub idle_ms: u64,
    /// See [`RuntimeConfig::max_frame_bytes`].
    pub max_frame_bytes: usize,
    /// See [`RuntimeConfig::max_connections`].
    pub max_connections: usize,
    /// See [`RuntimeConfig::outbound_queue_len`].
    pub outbound_queue_len: usize,
    /// See [`RuntimeConfig::io_uring`].
    pub io_uring: bool,
    /// See [`RuntimeConfig::trust_proxy_header`].
    pub trust_proxy_header: Option<String>,
    /// See [`RuntimeConfig::admin_token`].
    pub admin_token: Option<String>,
    /// See [`RuntimeConfig::rate_limit`].
    pub rate_limit: RateLimiterConfig,
    /// See [`RuntimeConfig::room`].
    pub room: RoomConfig,
    /// See [`RuntimeConfig::ping_interval_ms`].
    pub ping_interval_ms: u64,
    /// See [`RuntimeConfig::storage_timeout_ms`].
    pub storage_timeout_ms: u64,
    /// See [`RuntimeConfig::auth`].
    pub auth: AuthConfig,
    /// See [`RuntimeConfig::allowed_origins`].
    pub allowed_origins: Vec<String>,
    /// PEM certificate chain for HTTPS/WSS (with [`Config::tls_key`]).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS/WSS (with [`Config::tls_cert`]).
    pub tls_key: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        let runtime = RuntimeConfig::default();
        Config {
            listen: LISTEN_DEFAULT.parse().expect("valid default address"),
            data_path: PathBuf::from(runtime::DATA_PATH_DEFAULT),
            idle_ms: runtime.idle_ms,
            max_frame_bytes: runtime.max_frame_bytes,
            max_connections: runtime.max_connections,
            outbound_queue_len: runtime.outbound_queue_len,
            io_uring: runtime.io_uring,
            trust_proxy_header: runtime.trust_proxy_header,
            admin_token: runtime.admin_token,
            rate_limit: runtime.rate_limit,
            room: runtime.room,
            ping_interval_ms: runtime.ping_interval_ms,
            storage_timeout_ms: runtime.storage_timeout_ms,
            auth: runtime.auth,
            allowed_origins: runtime.allowed_origins,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl Config {
    /// The runtime part of these settings.
    pub fn runtime_config(&self) -> RuntimeConfig {
        RuntimeConfig {
            storage: Storage::Path(self.data_path.clone()),
            idle_ms: self.idle_ms,
            max_frame_bytes: self.max_frame_bytes,
            max_connections: self.max_connections,
            outbound_queue_len: self.outbound_queue_len,
            io_uring: self.io_uring,
            trust_proxy_header: self.trust_proxy_header.clone(),
            admin_token: self.admin_token.clone(),
            rate_limit: self.rate_limit,
            room: self.room.clone(),
            ping_interval_ms: self.ping_interval_ms,
            storage_timeout_ms: self.storage_timeout_ms,
            auth: self.auth.clone(),
            allowed_origins: self.allowed_origins.clone(),
        }
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The runtime (its database) could not open.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The listen address could not be bound.
    #[error("binding {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS's reason.
        source: std::io::Error,
    },
    /// The TLS files are unusable (or this build has no TLS).
    #[error("{what}")]
    Tls {
        /// What failed.
        what: String,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    runtime: Runtime,
    accept: JoinHandle<()>,
}

/// What a connection is, once accepted: plain TCP or (with the `tls` feature) TLS.
#[derive(Clone)]
enum Transport {
    Plain,
    #[cfg(feature = "tls")]
    Tls(tokio_rustls::TlsAcceptor),
}

impl Server {
    /// Opens the database and starts listening.
    ///
    /// # Errors
    /// If the database cannot be opened, the address cannot be bound, or the TLS files are
    /// unusable.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        let transport = transport(&config)?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let runtime = Runtime::open(config.runtime_config())?;
        let accept = tokio::spawn(accept_loop(
            listener,
            transport,
            runtime.handle(),
            runtime.stopping(),
        ));
        tracing::info!(
            %local_addr,
            data = %config.data_path.display(),
            tls = config.tls_cert.is_some(),
            "edgechat listening"
        );
        Ok(Server {
            local_addr,
            runtime,
            accept,
        })
    }

    /// The address the server listens on (with the real port if 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle to the server's runtime (to publish into rooms without HTTP, for example).
    pub fn handle(&self) -> Handle {
        self.runtime.handle()
    }

    /// Stops gracefully: stops accepting, closes every WebSocket with 1001, finishes
    /// in-flight requests, commits every pending write and closes the database.
    ///
    /// Bounded whatever storage does; the report says whether everything was written.
    pub async fn shutdown(self) -> ShutdownReport {
        // 1. Every writer sends 1001 and the readers wait for the peers' answers; the
        //    accept loop stops on the same signal and tells its connections to finish.
        self.runtime.close_sockets().await;
        // 2. In-flight HTTP requests finish.
        if tokio::time::timeout(SHUTDOWN_DRAIN_TIMEOUT, self.accept)
            .await
            .is_err()
        {
            tracing::warn!("some HTTP requests did not finish in time");
        }
        // 3. Objects commit what they accepted; storage commits what is queued and closes.
        self.runtime.stop().await
    }
}

/// The TLS acceptor, if configured.
fn transport(config: &Config) -> Result<Transport, StartError> {
    match (&config.tls_cert, &config.tls_key) {
        (None, None) => Ok(Transport::Plain),
        #[cfg(feature = "tls")]
        (Some(cert), Some(key)) => match crate::tls::acceptor(cert, key) {
            Ok(acceptor) => Ok(Transport::Tls(acceptor)),
            Err(crate::tls::TlsSetupError { what, source }) => {
                Err(StartError::Tls { what, source })
            }
        },
        #[cfg(not(feature = "tls"))]
        (Some(_), Some(_)) => Err(StartError::Tls {
            what: "this build has no TLS support (feature `tls`)".into(),
            source: "feature `tls` is off".into(),
        }),
        _ => Err(StartError::Tls {
            what: "--tls-cert and --tls-key must be given together".into(),
            source: "only one of the two is set".into(),
        }),
    }
}

/// Accepts connections until shutdown, then waits until every connection has finished its
/// in-flight request (each was told to close after it).
async fn accept_loop(
    listener: TcpListener,
    transport: Transport,
    handle: Handle,
    mut stopping: watch::Receiver<bool>,
) {
    // Every connection task holds a clone; `recv` returns `None` once all have ended.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    loop {
        let (tcp, peer) = tokio::select! {
            () = stopped(&mut stopping) => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                    continue;
                }
            },
        };
        // Chat frames are small and latency matters: never let Nagle hold one back waiting
        // for an ACK (the socket writer already batches frames per flush).
        let _ = tcp.set_nodelay(true);
        let connection = Connection {
            handle: handle.clone(),
            peer,
            stopping: stopping.clone(),
            _open: open.clone(),
        };
        tokio::spawn(connection.serve(tcp, transport.clone()));
    }
    drop(listener);
    drop(open);
    let _ = all_closed.recv().await;
}

/// One accepted connection.
struct Connection {
    handle: Handle,
    peer: SocketAddr,
    stopping: watch::Receiver<bool>,
    /// Dropped when the connection ends (see `accept_loop`).
    _open: mpsc::Sender<()>,
}

impl Connection {
    async fn serve(self, tcp: TcpStream, transport: Transport) {
        match transport {
            Transport::Plain => self.serve_http(TokioIo::new(tcp), false).await,
            #[cfg(feature = "tls")]
            Transport::Tls(acceptor) => {
                let handshake = acceptor.accept(tcp);
                match tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, handshake).await {
                    Ok(Ok(tls)) => self.serve_http(TokioIo::new(tls), true).await,
                    Ok(Err(error)) => {
                        tracing::debug!(peer = %self.peer, %error, "TLS handshake failed");
                    }
                    Err(_) => tracing::debug!(peer = %self.peer, "TLS handshake timed out"),
                }
            }
        }
    }

    /// Serves HTTP/1.1 on `io` until the peer closes, the connection upgrades, or shutdown
    /// lets the request in flight finish and then closes it. `tls`: TLS ended here (each
    /// request is marked [`ServedOverTls`]).
    async fn serve_http<I>(mut self, io: I, tls: bool)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let peer = PeerAddr(self.peer);
        let handle = self.handle.clone();
        let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
            request.extensions_mut().insert(peer);
            if tls {
                request.extensions_mut().insert(ServedOverTls);
            }
            let handle = handle.clone();
            async move { Ok::<_, std::convert::Infallible>(handle.respond(request).await) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(io, service)
            .with_upgrades();
        let mut connection = std::pin::pin!(connection);
        let finished = tokio::select! {
            finished = connection.as_mut() => finished,
            () = stopped(&mut self.stopping) => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = finished {
            tracing::debug!(peer = %self.peer, %error, "HTTP connection ended with an error");
        }
    }
}

/// Returns once shutdown has begun.
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stopping| *stopping).await;
}
