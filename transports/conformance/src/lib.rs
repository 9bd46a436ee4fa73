//! A black-box conformance suite for the edgechat wire protocol (`shared/PROTOCOL.md`).
//!
//! Every [`Case`] talks to a [`Target`] only through its base URL, real WebSockets and plain
//! HTTP/1.1 (edgechat-client's frame-level session and HTTP client), so the same cases run
//! against the standalone server and the Workers adapter.
//!
//! ```no_run
//! # async fn demo() {
//! use edgechat_conformance::{cases, run_case, Target, CASE_TIMEOUT};
//!
//! let target = Target {
//!     client_ip_header: Some("CF-Connecting-IP".into()),
//!     ..Target::new("http://127.0.0.1:8787")
//! };
//! for case in cases() {
//!     let outcome = run_case(&case, &target, CASE_TIMEOUT).await;
//!     println!("{} {}", case.name, outcome);
//! }
//! # }
//! ```
//!
//! # Identity and access
//! The `auth_*` cases ([`auth`]) sign their own tokens with the target's HS256 secret and
//! expect what the target's mode makes of them ([`Target::auth`]); run the suite once per
//! configuration of the target, or only those cases (`--only auth_`) in the extra ones.
//!
//! # Rate limits
//! Each client IP may take about four actions at once, then one every five seconds. A case
//! gives each of its connections a fresh fake client IP in [`Target::client_ip_header`], so
//! cases never share a limiter. Without that header, every connection is the same IP: run
//! the target with relaxed limits, and the cases that need the real limiter skip.

#![warn(missing_docs)]

/// A [`Case`] named after the async fn that runs it (used by the case lists below).
macro_rules! case {
    ($name:ident) => {
        Case {
            name: stringify!($name),
            run: |target| Box::pin($name(target)),
        }
    };
}

pub mod auth;
pub mod cases;
pub mod http;
pub mod moderation;
pub mod resend;
pub mod ws;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Result};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

pub use self::auth::{AuthMode, AuthSetup};
pub use self::cases::cases;
use self::http::{Response, Url};
use self::ws::Client;

/// Longer than any limiter round trip: after this, a session's verdict is surely in.
const VERDICT_SETTLE: Duration = Duration::from_millis(600);

/// The default time limit of one case.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(90);

/// The server under test.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://host:port`, the origin the routes hang from.
    pub base_url: String,
    /// A header the target trusts for the client IP (`CF-Connecting-IP` on Workers). When
    /// set, every connection a case opens claims a distinct fake IP in it.
    pub client_ip_header: Option<String>,
    /// The admin token for `POST /api/room/<room>/messages` (and the hibernate URL).
    pub admin_token: Option<String>,
    /// A URL to `POST` (with the admin token as a bearer token) that makes every room
    /// hibernate now, while its sockets stay open.
    pub hibernate: Option<String>,
    /// How the target checks identities; the `auth_*` cases expect what it makes of tokens.
    pub auth: AuthSetup,
}

/// One conformance case.
pub struct Case {
    /// A unique `snake_case` name.
    pub name: &'static str,
    /// Runs the case against a target.
    pub run: fn(Target) -> BoxFuture<'static, Result<()>>,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Case").field("name", &self.name).finish()
    }
}

/// How a case ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Everything held.
    Passed,
    /// The target is not configured for this case (the text says what it lacks).
    Skipped(String),
    /// Something did not hold (the text says what, with context).
    Failed(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Passed => f.write_str("ok"),
            Outcome::Skipped(why) => write!(f, "skipped: {why}"),
            Outcome::Failed(why) => write!(f, "FAILED: {why}"),
        }
    }
}

/// The error a case returns to say it cannot run against this target.
#[derive(Debug, Clone)]
pub struct Skip(pub String);

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Skip {}

/// Runs one case with a time limit; a panic inside the case is a failure, not a crash.
pub async fn run_case(case: &Case, target: &Target, timeout: Duration) -> Outcome {
    let run = std::panic::AssertUnwindSafe((case.run)(target.clone())).catch_unwind();
    match tokio::time::timeout(timeout, run).await {
        Err(_) => Outcome::Failed(format!("timed out after {timeout:?}")),
        Ok(Err(_)) => Outcome::Failed("panicked".into()),
        Ok(Ok(Ok(()))) => Outcome::Passed,
        Ok(Ok(Err(error))) => match error.downcast_ref::<Skip>() {
            Some(skip) => Outcome::Skipped(skip.0.clone()),
            None => Outcome::Failed(format!("{error:#}")),
        },
    }
}

/// A process-wide counter that makes names and fake IPs unique.
static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A number that differs between runs, so that names and IPs from an earlier run against a
/// long-lived target (whose storage persists) are not reused.
fn run_seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ (u64::from(std::process::id()) << 40)
    })
}

/// A room name unique to this run: `prefix` (at most 12 characters) and a suffix.
pub fn unique_name(prefix: &str) -> String {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    let suffix = (run_seed() & 0xffff_ffff_ffff).wrapping_add(n.wrapping_mul(7919));
    let name = format!("{prefix}-{suffix:x}");
    debug_assert!(name.len() <= 32);
    name
}

impl Target {
    /// A target at `base_url` with no IP header, admin token or hibernate URL.
    pub fn new(base_url: impl Into<String>) -> Target {
        Target {
            base_url: base_url.into(),
            client_ip_header: None,
            admin_token: None,
            hibernate: None,
            auth: AuthSetup::default(),
        }
    }

    /// The parsed base URL.
    ///
    /// # Errors
    /// If `base_url` is not an `http://` or `ws://` URL.
    pub fn url(&self) -> Result<Url> {
        let url = Url::parse(&self.base_url)?;
        if url.secure {
            bail!("{}: the suite speaks http:// and ws:// only", self.base_url);
        }
        Ok(url)
    }

    /// A fresh fake client IP, if the target trusts an IP header.
    pub fn fresh_ip(&self) -> Option<String> {
        self.client_ip_header.as_ref()?;
        // 10.0.0.0/8, starting at a per-run offset; .0 and .255 are avoided.
        let n = (run_seed() >> 8).wrapping_add(UNIQUE.fetch_add(1, Ordering::Relaxed));
        let host = n % (1 << 24);
        let (a, b, c) = ((host >> 16) & 0xff, (host >> 8) & 0xff, host & 0xff);
        Some(format!("10.{a}.{b}.{}", c % 254 + 1))
    }

    /// Fails with [`Skip`] unless connections can claim distinct client IPs.
    ///
    /// # Errors
    /// [`Skip`] when [`Target::client_ip_header`] is unset.
    pub fn require_distinct_ips(&self) -> Result<()> {
        if self.client_ip_header.is_none() {
            bail!(Skip(
                "needs a client IP header (--ip-header) so this case gets its own limiters".into()
            ));
        }
        Ok(())
    }

    /// The admin token, or a [`Skip`].
    ///
    /// # Errors
    /// [`Skip`] when no admin token is configured.
    pub fn require_admin_token(&self) -> Result<&str> {
        self.admin_token
            .as_deref()
            .ok_or_else(|| anyhow!(Skip("needs an admin token (--admin-token)".into())))
    }

    /// The WebSocket URL of `room`.
    ///
    /// # Errors
    /// If the base URL does not parse.
    pub fn ws_url(&self, room: &str) -> Result<String> {
        Ok(self.url()?.ws_url(&format!("/api/room/{room}/websocket")))
    }

    /// Opens a WebSocket to `room` from a fresh client IP.
    ///
    /// # Errors
    /// If the handshake fails (a refusal is a [`ws::Refused`]).
    pub async fn connect(&self, room: &str, label: &str) -> Result<Client> {
        let ip = self.fresh_ip();
        self.connect_as(room, label, ip.as_deref()).await
    }

    /// Opens a WebSocket to `room` claiming client IP `ip` (if the target trusts a header).
    ///
    /// # Errors
    /// If the handshake fails (a refusal is a [`ws::Refused`]).
    pub async fn connect_as(&self, room: &str, label: &str, ip: Option<&str>) -> Result<Client> {
        let url = self.ws_url(room)?;
        let mut headers = Vec::new();
        if let (Some(header), Some(ip)) = (&self.client_ip_header, ip) {
            headers.push((header.as_str(), ip));
        }
        Client::connect(&url, &headers, label).await
    }

    /// Opens a WebSocket to `room` and joins as `name`.
    ///
    /// # Errors
    /// If the handshake or the join sequence fails.
    pub async fn join(&self, room: &str, name: &str) -> Result<(Client, ws::Joined)> {
        let mut client = self.connect(room, name).await?;
        let joined = client.join(name).await?;
        Ok((client, joined))
    }

    /// Sends a WebSocket upgrade request for `room` as plain HTTP and returns the answer as
    /// is (`101` if accepted; the connection is then dropped).
    ///
    /// # Errors
    /// As [`Target::http`].
    pub async fn upgrade_raw(&self, room: &str) -> Result<Response> {
        let headers = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ];
        self.http("GET", &format!("/api/room/{room}/websocket"), &headers, b"")
            .await
    }

    /// Sends an HTTP request to `path_and_query` under the base URL, from a fresh client IP.
    ///
    /// # Errors
    /// On connection failures and timeouts (any status is an `Ok`).
    pub async fn http(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response> {
        let ip = self.fresh_ip();
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let (Some(header), Some(ip)) = (&self.client_ip_header, &ip) {
            all.push((header.as_str(), ip.as_str()));
        }
        http::request(&self.url()?, method, path_and_query, &all, body).await
    }

    /// `GET path`.
    ///
    /// # Errors
    /// As [`Target::http`].
    pub async fn get(&self, path: &str) -> Result<Response> {
        self.http("GET", path, &[], b"").await
    }

    /// Forces every room to hibernate now.
    ///
    /// # Errors
    /// [`Skip`] if no hibernate URL is configured; an error unless it answers 2xx.
    pub async fn hibernate(&self) -> Result<()> {
        let url = self
            .hibernate
            .as_deref()
            .ok_or_else(|| anyhow!(Skip("needs a hibernate URL (--hibernate-url)".into())))?;
        let url = Url::parse(url)?;
        let bearer = self.admin_token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = Vec::new();
        if let Some(bearer) = &bearer {
            headers.push(("Authorization", bearer.as_str()));
        }
        let response = http::request(&url, "POST", "", &headers, b"").await?;
        if !(200..300).contains(&response.status) {
            bail!(
                "forcing hibernation: {} {:?}",
                response.status,
                response.text()
            );
        }
        Ok(())
    }

    /// Publishes `message` as `name` through the admin endpoint; returns the response.
    ///
    /// # Errors
    /// On connection failures (any status is an `Ok`).
    pub async fn publish(
        &self,
        room: &str,
        token: Option<&str>,
        body: &serde_json::Value,
    ) -> Result<Response> {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(bearer) = &bearer {
            headers.push(("Authorization", bearer.as_str()));
        }
        self.http(
            "POST",
            &format!("/api/room/{room}/messages"),
            &headers,
            body.to_string().as_bytes(),
        )
        .await
    }
}
