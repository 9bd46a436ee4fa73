//! Connecting: the target URL, source-address spreading, the trusted IP header, joining
//! (in the target's protocol, see `proto`).
//!
//! The WebSocket and HTTP sides are edgechat-client's frame-level session and HTTP client;
//! this module only chooses each connection's source address and fake client IP.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs as _};
use std::time::Duration;

use anyhow::{bail, Context as _};
use edgechat_client::http::HttpClient;
use edgechat_client::raw::{Session, SessionOptions};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::proto::Protocol;

/// A connected WebSocket.
pub type Ws = Session;

/// How long one connect plus join may take before it counts as an error.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Where to connect and how to present each client.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` as given (for the Host header).
    pub authority: String,
    /// The resolved server address.
    pub addr: SocketAddr,
    /// Spread source addresses over this many 127.x.y.z addresses (0: let the kernel pick).
    pub spread_ips: u32,
    /// Send each client's fake IP in this header (for a server that trusts it).
    pub ip_header: Option<String>,
    /// The server's protocol.
    pub protocol: Protocol,
}

impl Target {
    /// Parses `http://host:port` or `ws://host:port` (a path is ignored); refuses a
    /// non-loopback address unless `allow_remote`.
    ///
    /// # Errors
    /// On an unsupported scheme, an unresolvable host or a refused remote address.
    pub fn parse(
        url: &str,
        allow_remote: bool,
        spread_ips: u32,
        ip_header: Option<String>,
        protocol: Protocol,
    ) -> anyhow::Result<Target> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("ws://"))
            .with_context(|| format!("{url}: only http:// or ws:// base URLs are supported"))?;
        let authority = rest.split('/').next().unwrap_or_default().to_owned();
        let with_port = if authority.contains(':') && !authority.ends_with(']') {
            authority.clone()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .with_context(|| format!("resolving {with_port}"))?
            .next()
            .with_context(|| format!("{with_port} resolves to nothing"))?;
        if !addr.ip().is_loopback() && !allow_remote {
            bail!("{url} is not a loopback address; pass --allow-remote to load a remote server");
        }
        if spread_ips > 0 && !addr.ip().is_loopback() {
            bail!("--spread-ips only works against a loopback server");
        }
        Ok(Target {
            authority,
            addr,
            spread_ips,
            ip_header,
            protocol,
        })
    }

    /// The source address of client `index` (127.0.0.0/8, skipping .0 and .255).
    fn source_ip(&self, index: u64) -> Option<IpAddr> {
        if self.spread_ips == 0 || !self.addr.is_ipv4() {
            return None;
        }
        let slot = index % u64::from(self.spread_ips);
        let b4 = slot % 254 + 1;
        let b3 = (slot / 254) % 254 + 1;
        let b2 = (slot / (254 * 254)) % 254 + 1;
        Some(IpAddr::V4(Ipv4Addr::new(127, b2 as u8, b3 as u8, b4 as u8)))
    }

    /// Opens a TCP connection for client `index` (bound to its source address if spreading).
    async fn tcp(&self, index: u64) -> anyhow::Result<TcpStream> {
        let socket = if self.addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = self.source_ip(index) {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = socket.connect(self.addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Opens room `room`'s WebSocket for client `index`.
    ///
    /// # Errors
    /// If the TCP connection or the upgrade fails.
    pub async fn open(&self, room: &str, index: u64) -> anyhow::Result<Ws> {
        let url = format!("ws://{}{}", self.authority, self.protocol.path(room));
        let mut headers = Vec::new();
        if let Some(header) = &self.ip_header {
            let fake = format!(
                "10.{}.{}.{}",
                (index >> 16) & 0xff,
                (index >> 8) & 0xff,
                index & 0xff
            );
            headers.push((header.clone(), fake));
        }
        // Small write buffering; the generator flushes after each frame it sends. Reads in
        // 4 KiB like tungstenite before 0.26 (its 128 KiB default read size, zero-filled per
        // read, costs the generator CPU that the server then lacks on a shared machine).
        let options = SessionOptions {
            headers,
            websocket: Some(
                WebSocketConfig::default()
                    .write_buffer_size(0)
                    .read_buffer_size(4 * 1024),
            ),
            handshake_timeout: JOIN_TIMEOUT,
            ..SessionOptions::default()
        };
        let stream = self.tcp(index).await?;
        Session::connect_on(stream, &url, &options)
            .await
            .with_context(|| format!("upgrading {url}"))
    }

    /// Joins `room` as `name` on a WebSocket from [`Target::open`] and reads until ready.
    ///
    /// # Errors
    /// On a refusal, a close, a transport error or a timeout.
    pub async fn join(&self, ws: &mut Ws, room: &str, name: &str) -> anyhow::Result<Joined> {
        tokio::time::timeout(JOIN_TIMEOUT, self.protocol.join(ws, room, name))
            .await
            .context("join timed out")?
    }

    /// Sends a plain HTTP request and returns the status code and body (for admin calls
    /// and `/metrics`).
    ///
    /// # Errors
    /// On a connection or protocol failure.
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        let client = HttpClient::new(&format!("http://{}", self.authority), None)?;
        let auth = bearer.map(|token| format!("Bearer {token}"));
        let headers: Vec<(&str, &str)> = auth
            .iter()
            .map(|auth| ("Authorization", auth.as_str()))
            .collect();
        let response = client.request(method, path, &headers, b"").await?;
        Ok((response.status, response.text()))
    }
}

/// What a join saw before `ready`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Joined {
    /// Chat messages replayed (history plus anything broadcast meanwhile).
    pub messages: u64,
    /// `joined` frames (roster and its own).
    pub roster: u64,
}
