//! The one error type of the crate.

use std::time::Duration;

/// Why an operation failed.
///
/// A refusal by the server keeps the server's own words: [`Error::Server`] carries the text
/// of its `{"error": ...}` frame (or close reason), [`Error::Http`] the status and body of an
/// HTTP answer that was not a success, [`Error::Refused`] a WebSocket handshake answered with
/// an HTTP error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server refused a frame (or the join) with this text.
    #[error("{0}")]
    Server(String),
    /// An HTTP request got a status other than 2xx.
    #[error("HTTP {status}: {body}")]
    Http {
        /// The status code.
        status: u16,
        /// The body, as text.
        body: String,
    },
    /// The WebSocket handshake was answered with an HTTP error instead of `101`.
    #[error("handshake refused: {status} {body:?}")]
    Refused {
        /// The status code.
        status: u16,
        /// The body, as text.
        body: String,
    },
    /// The client was closed (or gave up) before the operation completed.
    #[error("{0}")]
    Closed(String),
    /// More sends are waiting than [`crate::ConnectOptions::max_queued_sends`] allows.
    #[error("Too many messages waiting to be sent.")]
    QueueFull,
    /// The URL cannot be used (scheme, host, port).
    #[error("invalid URL {url:?}: {why}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Nothing came back within the time limit.
    #[error("{what}: no answer within {limit:?}")]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// The limit.
        limit: Duration,
    },
    /// A response was larger than the client reads.
    #[error("response over {0} bytes")]
    TooLarge(usize),
    /// A body that should have been JSON of a known shape was not.
    #[error("unexpected answer: {0}")]
    Json(#[from] serde_json::Error),
    /// A socket error (connect, read, write, TLS).
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A WebSocket protocol or transport error.
    #[error("WebSocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    /// An HTTP protocol or transport error.
    #[error("HTTP: {0}")]
    Hyper(#[from] hyper::Error),
    /// A header name or value that HTTP does not allow.
    #[error("invalid header: {0}")]
    InvalidHeader(String),
}

impl Error {
    /// The server's own text for a refusal ([`Error::Server`], or the body of
    /// [`Error::Http`] and [`Error::Refused`]), if this is one.
    pub fn server_message(&self) -> Option<&str> {
        match self {
            Error::Server(text) => Some(text),
            Error::Http { body, .. } | Error::Refused { body, .. } => Some(body),
            _ => None,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
