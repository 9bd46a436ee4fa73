//! `edgechat`: the standalone chat server. `edgechat serve --help` lists every setting.
//!
//! Exit codes: 0 after a clean stop (everything accepted was written); 1 for an unusable
//! listen address, TLS file or auth setting (a key file's error names the file); 2 for a bad command line (clap's); 3 after a stop that could
//! not write everything (logged; none of it was ever acknowledged); 4 when the data file is
//! refused at startup (locked by another process, unwritable, foreign or corrupt: the
//! message names the file and the cause).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use edgechat_core::auth::{
    Algorithm, AuthConfig, AuthMode, TokenVerifier, VerifyingKeys, KEY_DOCUMENT_LEN_MAX_BYTES,
    LEEWAY_MS_DEFAULT,
};
use edgechat_core::ids::{is_lower_hex_id, Namespace, ObjectId};
use edgechat_core::limiter::RateLimiterConfig;
use edgechat_server::{Config, Server, StartError};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "edgechat",
    version,
    about = "A real-time chat-room server speaking the Cloudflare edge-chat demo's protocol."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the chat page, the room WebSockets and the HTTP API.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (the chosen address is printed).
    #[arg(long, env = "EDGECHAT_LISTEN", default_value = edgechat_server::LISTEN_DEFAULT)]
    listen: SocketAddr,
    /// SQLite database file holding every room's history and every counter (created if
    /// missing; WAL mode adds `-wal` and `-shm` files beside it while running).
    #[arg(long, env = "EDGECHAT_DATA", default_value = edgechat_server::DATA_PATH_DEFAULT)]
    data: PathBuf,
    /// Milliseconds without events after which a room hibernates: its memory is dropped
    /// while its sockets stay open, and the next event rebuilds it from storage.
    #[arg(long, env = "EDGECHAT_IDLE_MS", default_value_t = edgechat_core::host::IDLE_EVICTION_MS_DEFAULT)]
    idle_ms: u64,
    /// Largest WebSocket frame or message a client may send, in bytes (larger: close 1009).
    #[arg(long, env = "EDGECHAT_MAX_FRAME_BYTES", default_value_t = edgechat_server::MAX_FRAME_BYTES_DEFAULT)]
    max_frame_bytes: usize,
    /// Most open WebSocket connections; further upgrades get 503.
    #[arg(long, env = "EDGECHAT_MAX_CONNECTIONS", default_value_t = edgechat_server::MAX_CONNECTIONS_DEFAULT)]
    max_connections: usize,
    /// Frames from earlier room turns left unwritten per connection (a join's roster and
    /// history do not count) before a client too slow to read is closed (1008).
    #[arg(long, env = "EDGECHAT_OUTBOUND_QUEUE", default_value_t = edgechat_server::OUTBOUND_QUEUE_LEN_DEFAULT)]
    outbound_queue: usize,
    /// Write a room's turn to its sockets in one io_uring submission (Linux; falls back to
    /// one write per socket where the kernel refuses it). Saves CPU per delivery in large
    /// rooms; see BENCHMARKS.md "io_uring" before turning it on.
    #[arg(long, env = "EDGECHAT_IO_URING")]
    io_uring: bool,
    /// Take the client IP (for rate limiting) from this header, e.g. X-Forwarded-For. Only
    /// set this behind a proxy that overwrites the header; otherwise clients could forge it.
    /// Without it, the TCP peer address is the client IP.
    #[arg(long, env = "EDGECHAT_TRUST_PROXY_HEADER")]
    trust_proxy_header: Option<String>,
    /// Token for the admin endpoints (publish into a room, force hibernation), sent as
    /// `Authorization: Bearer <token>`. Without it those endpoints always answer 401.
    #[arg(long, env = "EDGECHAT_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// PEM certificate chain: serve HTTPS and WSS (requires --tls-key).
    #[arg(long, env = "EDGECHAT_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "EDGECHAT_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Rate limit: milliseconds each action of a client IP costs.
    #[arg(long, env = "EDGECHAT_RATE_LIMIT_COST_MS", default_value_t = RateLimiterConfig::default().cost_ms)]
    rate_limit_cost_ms: u64,
    /// Rate limit: milliseconds of cost a client IP may run ahead before it must wait
    /// (grace / cost is roughly the burst size).
    #[arg(long, env = "EDGECHAT_RATE_LIMIT_GRACE_MS", default_value_t = RateLimiterConfig::default().grace_ms)]
    rate_limit_grace_ms: u64,
    /// Milliseconds between keepalive pings; a client silent for two intervals is closed.
    #[arg(long, env = "EDGECHAT_PING_INTERVAL_MS", default_value_t = edgechat_server::PING_INTERVAL_MS_DEFAULT)]
    ping_interval_ms: u64,
    /// Milliseconds a write may take to become durable; past it the write is rolled back and
    /// its senders get `{"error":"Message not sent: storage unavailable."}` (publishes: 503).
    #[arg(long, env = "EDGECHAT_STORAGE_TIMEOUT_MS", default_value_t = edgechat_server::STORAGE_TIMEOUT_MS_DEFAULT)]
    storage_timeout_ms: u64,
    /// Identity checks: `off` (anyone joins under any name), `optional` (a token on the
    /// WebSocket URL, `?token=<jwt>`, fixes the user; without one a client is anonymous),
    /// `required` (no valid token, no connection). optional and required need a key.
    #[arg(long, env = "EDGECHAT_AUTH_MODE", value_enum, default_value_t = AuthModeArg::Off)]
    auth_mode: AuthModeArg,
    /// File holding the HS256 secret shared with the application that issues tokens (at
    /// least 32 bytes; a trailing newline is not part of it).
    #[arg(long, env = "EDGECHAT_AUTH_HS256_SECRET_FILE")]
    auth_hs256_secret_file: Option<PathBuf>,
    /// A public key that verifies tokens, as ALG:PATH (ALG one of RS256, ES256, EdDSA; PATH
    /// a PEM file). Repeat for several keys.
    #[arg(long, env = "EDGECHAT_AUTH_PUBLIC_KEY_FILE", value_delimiter = ',')]
    auth_public_key_file: Vec<String>,
    /// A JWKS document (`{"keys": [...]}`) of public keys that verify tokens.
    #[arg(long, env = "EDGECHAT_AUTH_JWKS_FILE")]
    auth_jwks_file: Option<PathBuf>,
    /// The `iss` every token must carry.
    #[arg(long, env = "EDGECHAT_AUTH_ISSUER")]
    auth_issuer: Option<String>,
    /// A value the `aud` of every token must contain (without it, tokens with an `aud` are
    /// refused).
    #[arg(long, env = "EDGECHAT_AUTH_AUDIENCE")]
    auth_audience: Option<String>,
    /// Milliseconds of slack on a token's `exp` and `nbf`, for clocks that disagree (a
    /// connection is closed with 4001 this long after its token's `exp`).
    #[arg(long, env = "EDGECHAT_AUTH_LEEWAY_MS", default_value_t = LEEWAY_MS_DEFAULT)]
    auth_leeway_ms: u64,
    /// Rooms (names or private ids, comma-separated) that admit only clients with a valid
    /// token even in optional mode.
    #[arg(long, env = "EDGECHAT_AUTH_TOKEN_ROOMS", value_delimiter = ',')]
    auth_token_rooms: Vec<String>,
    /// Web origins allowed to open WebSockets from a browser (comma-separated
    /// `scheme://host[:port]`). When set, upgrades from other origins get 403; clients
    /// sending no Origin, and the page's own origin, are always allowed.
    #[arg(long, env = "EDGECHAT_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Vec<String>,
}

/// `--auth-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AuthModeArg {
    Off,
    Optional,
    Required,
}

impl ServeArgs {
    /// The access policy the auth flags describe; an unreadable or invalid key file is an
    /// error naming the file.
    fn auth_config(&self) -> anyhow::Result<AuthConfig> {
        let mode = match self.auth_mode {
            AuthModeArg::Off => AuthMode::Off,
            AuthModeArg::Optional => AuthMode::Optional,
            AuthModeArg::Required => AuthMode::Required,
        };
        let mut keys: Option<VerifyingKeys> = None;
        let mut add = |more: VerifyingKeys| -> anyhow::Result<()> {
            keys = Some(match keys.take() {
                Some(keys) => keys.merge(more)?,
                None => more,
            });
            Ok(())
        };
        if let Some(path) = &self.auth_hs256_secret_file {
            let secret = read_key_file(path)?;
            let secret = secret.strip_suffix(b"\n").unwrap_or(&secret);
            let secret = secret.strip_suffix(b"\r").unwrap_or(secret);
            add(VerifyingKeys::hs256(secret).with_context(|| path.display().to_string())?)?;
        }
        for spec in &self.auth_public_key_file {
            let (alg, path) = spec
                .split_once(':')
                .with_context(|| format!("--auth-public-key-file {spec}: expected ALG:PATH"))?;
            let algorithm = Algorithm::from_name(alg).with_context(|| {
                format!("--auth-public-key-file {spec}: unknown algorithm {alg}")
            })?;
            let path = Path::new(path);
            let pem = read_key_file(path)?;
            add(VerifyingKeys::from_pem(algorithm, &pem)
                .with_context(|| path.display().to_string())?)?;
        }
        if let Some(path) = &self.auth_jwks_file {
            let json = String::from_utf8(read_key_file(path)?)
                .with_context(|| format!("{}: not UTF-8", path.display()))?;
            add(VerifyingKeys::from_jwks(&json).with_context(|| path.display().to_string())?)?;
        }
        let verifier = keys.map(|keys| {
            let mut verifier = TokenVerifier::new(keys);
            verifier.issuer = self.auth_issuer.clone();
            verifier.audience = self.auth_audience.clone();
            verifier.leeway_ms = self.auth_leeway_ms;
            verifier
        });
        let rooms = self.auth_token_rooms.iter().map(|room| {
            if is_lower_hex_id(room) {
                ObjectId::parse_hex(room)
                    .unwrap_or_else(|_| ObjectId::from_name(Namespace::Room, room))
            } else {
                ObjectId::from_name(Namespace::Room, room)
            }
        });
        Ok(AuthConfig::new(mode, verifier, rooms.collect::<Vec<_>>())?)
    }

    fn into_config(self) -> anyhow::Result<Config> {
        let auth = self.auth_config()?;
        Ok(Config {
            listen: self.listen,
            data_path: self.data,
            idle_ms: self.idle_ms,
            max_frame_bytes: self.max_frame_bytes,
            max_connections: self.max_connections,
            outbound_queue_len: self.outbound_queue,
            io_uring: self.io_uring,
            trust_proxy_header: self.trust_proxy_header,
            admin_token: self.admin_token,
            rate_limit: RateLimiterConfig {
                cost_ms: self.rate_limit_cost_ms,
                grace_ms: self.rate_limit_grace_ms,
            },
            ping_interval_ms: self.ping_interval_ms,
            storage_timeout_ms: self.storage_timeout_ms,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            auth,
            allowed_origins: self.allowed_origins,
            ..Config::default()
        })
    }
}

/// A key file's bytes, bounded (keys are small); errors name the file.
fn read_key_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?
        .len();
    if len > KEY_DOCUMENT_LEN_MAX_BYTES as u64 {
        anyhow::bail!("key file {} is too large ({len} bytes)", path.display());
    }
    std::fs::read(path).with_context(|| format!("cannot read key file {}", path.display()))
}

/// Exit code when the data file is refused at startup.
const EXIT_STORAGE_REFUSED: u8 = 4;
/// Exit code when a stop could not write everything that was accepted.
const EXIT_UNWRITTEN: u8 = 3;

/// jemalloc, not the system allocator: with its background thread and a 1 s decay
/// (`.cargo/config.toml` builds that in; `_RJEM_MALLOC_CONF` overrides it at run time) the
/// memory a room frees when it hibernates goes back to the OS within seconds, where glibc's
/// malloc keeps the resident peak for good. Measured in BENCHMARKS.md ("jemalloc, adopted").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("EDGECHAT_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let Command::Serve(args) = Cli::parse().command;
    let tls = args.tls_cert.is_some();
    let config = args.into_config()?;
    // Registered before the address is printed: a SIGTERM right after it (a script or a
    // supervisor that saw the line) must stop the server cleanly, not kill it.
    let stop = stop_signal()?;
    let server = match Server::start(config).await {
        Ok(server) => server,
        Err(error @ StartError::Open(_)) => {
            tracing::error!("{:#}", anyhow::Error::from(error));
            return Ok(ExitCode::from(EXIT_STORAGE_REFUSED));
        }
        Err(error) => return Err(error.into()),
    };
    // One line on stdout, for people and for scripts that asked for port 0.
    let scheme = if tls { "https" } else { "http" };
    println!("edgechat listening on {scheme}://{}", server.local_addr());
    stop.await?;
    let report = server.shutdown().await;
    Ok(if report.flushed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNWRITTEN)
    })
}

/// Registers for SIGTERM and SIGINT now; the future ends when either arrives.
fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<()>>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            Ok(())
        })
    }
    #[cfg(not(unix))]
    Ok(async { Ok(tokio::signal::ctrl_c().await?) })
}
