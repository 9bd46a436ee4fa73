//! The frame-level WebSocket session: exact frames in, exact frames out, nothing added.
//!
//! [`crate::Room`] is built on it; tests that must see or send precise frames (the
//! conformance suite, the server's tests, the load generator) use it directly.
//!
//! ```no_run
//! # async fn demo() -> edgechat_client::Result<()> {
//! use std::time::Duration;
//! use edgechat_client::raw::{Session, SessionOptions, Event};
//!
//! let url = "ws://127.0.0.1:8787/api/room/lobby/websocket";
//! let mut session = Session::connect(url, &SessionOptions::default()).await?;
//! session.send_text(r#"{"name":"ada"}"#).await?;
//! while let Some(Event::Text(text)) = session.next_within(Duration::from_secs(5)).await {
//!     println!("{text}");
//!     if text.starts_with(r#"{"ready""#) {
//!         break;
//!     }
//! }
//! session.close(1000, "bye").await;
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio_rustls::rustls::ClientConfig;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::error::{Error, Result};

/// The socket under a session: plain TCP, or TLS over TCP for `wss://`.
pub type Transport = MaybeTlsStream<TcpStream>;

/// The WebSocket stream a session wraps (see [`Session::into_stream`]).
pub type Stream = WebSocketStream<Transport>;

/// How long a handshake may take by default.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How to open a session.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Extra headers for the upgrade request (e.g. a client-IP header a test server trusts).
    pub headers: Vec<(String, String)>,
    /// TLS settings for `wss://` (the roots to trust); `None` refuses `wss://` URLs.
    pub tls: Option<Arc<ClientConfig>>,
    /// tungstenite's limits and buffer sizes; `None` for its defaults.
    pub websocket: Option<WebSocketConfig>,
    /// The time limit for the TCP connect, TLS and upgrade together.
    pub handshake_timeout: Duration,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            headers: Vec::new(),
            tls: None,
            websocket: None,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        }
    }
}

/// Anything a session can observe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A text frame, exactly as received.
    Text(String),
    /// A binary frame (the protocol never sends one).
    Binary(Vec<u8>),
    /// A close frame, with its code and reason if it had them.
    Close(Option<(u16, String)>),
    /// The connection ended without a close frame; the text says how.
    Ended(String),
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Text(text) => write!(f, "text {text}"),
            Event::Binary(bytes) => write!(f, "binary frame of {} bytes", bytes.len()),
            Event::Close(Some((code, reason))) => write!(f, "close {code} {reason:?}"),
            Event::Close(None) => write!(f, "close without a code"),
            Event::Ended(how) => write!(f, "connection ended ({how})"),
        }
    }
}

/// One WebSocket connection to an edgechat server (or any WebSocket URL).
///
/// ```text
///   connect() ──► open ──send_close / peer's close──► closing ──► ended
///                   └──────────abort() or a broken socket─────────┘
/// ```
#[derive(Debug)]
pub struct Session {
    ws: Stream,
}

impl Session {
    /// Opens a WebSocket to `url` (`ws://` or `wss://`).
    ///
    /// # Errors
    /// [`Error::Refused`] if the server answers the upgrade with an HTTP error (its body is
    /// what tungstenite kept of it); [`Error::Timeout`] past the handshake limit; other
    /// errors for connection and TLS failures.
    pub async fn connect(url: &str, options: &SessionOptions) -> Result<Session> {
        Self::handshake(url, None, options).await
    }

    /// Opens a WebSocket to `url` over a TCP stream the caller connected (bound to a
    /// chosen source address, say); `wss://` does TLS on it.
    ///
    /// # Errors
    /// As [`Session::connect`].
    pub async fn connect_on(
        stream: TcpStream,
        url: &str,
        options: &SessionOptions,
    ) -> Result<Session> {
        Self::handshake(url, Some(stream), options).await
    }

    async fn handshake(
        url: &str,
        stream: Option<TcpStream>,
        options: &SessionOptions,
    ) -> Result<Session> {
        let mut request = url.into_client_request()?;
        for (name, value) in &options.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| Error::InvalidHeader(name.clone()))?;
            let value =
                HeaderValue::from_str(value).map_err(|_| Error::InvalidHeader(value.clone()))?;
            request.headers_mut().insert(name, value);
        }
        let secure = request.uri().scheme_str() == Some("wss");
        let connector = match (&options.tls, secure) {
            (Some(tls), true) => Some(Connector::Rustls(tls.clone())),
            (None, true) => {
                return Err(Error::InvalidUrl {
                    url: url.to_owned(),
                    why: "wss:// needs TLS settings (SessionOptions::tls)",
                })
            }
            (_, false) => Some(Connector::Plain),
        };
        let config = options.websocket;
        let connected = async {
            let stream = match stream {
                Some(stream) => stream,
                None => {
                    let host = request.uri().host().unwrap_or_default();
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    let port = request
                        .uri()
                        .port_u16()
                        .unwrap_or(if secure { 443 } else { 80 });
                    let stream = TcpStream::connect((host, port)).await?;
                    stream.set_nodelay(true)?;
                    stream
                }
            };
            tokio_tungstenite::client_async_tls_with_config(request, stream, config, connector)
                .await
                .map_err(Error::from)
        };
        let limit = options.handshake_timeout;
        match tokio::time::timeout(limit, connected).await {
            Err(_) => Err(Error::Timeout {
                what: "WebSocket handshake",
                limit,
            }),
            Ok(Ok((ws, _))) => Ok(Session { ws }),
            Ok(Err(Error::WebSocket(WsError::Http(response)))) => Err(Error::Refused {
                status: response.status().as_u16(),
                body: response
                    .body()
                    .as_deref()
                    .map(|body| String::from_utf8_lossy(body).into_owned())
                    .unwrap_or_default(),
            }),
            Ok(Err(error)) => Err(error),
        }
    }

    /// Sends a text frame as is.
    ///
    /// # Errors
    /// If the socket is broken or closed.
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<()> {
        Ok(self.ws.send(Message::text(text.into())).await?)
    }

    /// Sends a binary frame.
    ///
    /// # Errors
    /// If the socket is broken or closed.
    pub async fn send_binary(&mut self, bytes: impl Into<Vec<u8>>) -> Result<()> {
        Ok(self.ws.send(Message::binary(bytes.into())).await?)
    }

    /// Starts the closing handshake with `code` and `reason`.
    ///
    /// # Errors
    /// If the socket is broken or already closed.
    pub async fn send_close(&mut self, code: u16, reason: &str) -> Result<()> {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_owned().into(),
        };
        Ok(self.ws.send(Message::Close(Some(frame))).await?)
    }

    /// The next event; `None` once the session has ended and reported it.
    ///
    /// Pings are answered by tungstenite while reading and not reported. Cancel-safe: a
    /// frame is never lost by dropping this future (usable in `select!`).
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            let event = match self.ws.next().await? {
                Ok(Message::Text(text)) => Event::Text(text.as_str().to_owned()),
                Ok(Message::Binary(bytes)) => Event::Binary(bytes.to_vec()),
                Ok(Message::Close(frame)) => Event::Close(
                    frame.map(|frame| (u16::from(frame.code), frame.reason.as_str().to_owned())),
                ),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => return None,
                Err(error) => Event::Ended(error.to_string()),
            };
            return Some(event);
        }
    }

    /// The next event within `timeout`; `None` if nothing came (an ended connection is an
    /// [`Event::Ended`], reported once).
    pub async fn next_within(&mut self, timeout: Duration) -> Option<Event> {
        match tokio::time::timeout(timeout, self.next()).await {
            Ok(Some(event)) => Some(event),
            Ok(None) => Some(Event::Ended("stream ended".into())),
            Err(_) => None,
        }
    }

    /// Ends the connection without a closing handshake (the TCP write side is shut down).
    pub async fn abort(mut self) {
        if let MaybeTlsStream::Plain(tcp) = self.ws.get_mut() {
            let _ = tcp.shutdown().await;
        }
    }

    /// Closes politely with `code` and `reason`, and waits (at most two seconds) for the
    /// server's close frame.
    pub async fn close(mut self, code: u16, reason: &str) {
        let _ = self.send_close(code, reason).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, self.ws.next()).await {}
    }

    /// The WebSocket stream itself, for a loop that wants tungstenite's own types (the
    /// load generator's hot loop splits it into a sink and a stream).
    pub fn into_stream(self) -> Stream {
        self.ws
    }
}
