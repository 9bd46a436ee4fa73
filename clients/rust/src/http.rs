//! The HTTP API: exact requests and answers ([`HttpClient::request`]) and typed calls for
//! each route (history, presence, publish, private rooms, counters).
//!
//! One request per connection, over hyper's HTTP/1 client (`Connection: close` unless the
//! caller says otherwise): these calls are rare next to the WebSocket, and a fresh
//! connection per call means a status, header or body is always the answer to that request.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

use crate::error::{Error, Result};
use crate::url::{encode_component, BaseUrl};
use crate::ChatMessage;

/// How long one request may take by default, from connecting to the last byte of the body.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest body the client reads, so that a broken server cannot exhaust memory.
pub const RESPONSE_LEN_MAX_BYTES: usize = 16 * 1024 * 1024;

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers (names in lower case), in the order hyper reports them.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked (empty for a `101`).
    pub body: Bytes,
}

impl Response {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body parsed as `T`, if the status is 2xx.
    ///
    /// # Errors
    /// [`Error::Http`] for another status, [`Error::Json`] for a body of another shape.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        if !self.is_success() {
            return Err(Error::Http {
                status: self.status,
                body: self.text(),
            });
        }
        Ok(serde_json::from_slice(&self.body)?)
    }
}

/// One page of `GET /api/room/<room>/history`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HistoryPage {
    /// Messages, newest first, exactly as broadcast.
    pub messages: Vec<ChatMessage>,
    /// Pass as `before` for the next (older) page; `None` at the oldest retained message.
    pub next_before: Option<u64>,
}

#[derive(Deserialize)]
struct Presence {
    users: Vec<String>,
}

#[derive(Deserialize)]
struct Published {
    id: u64,
}

#[derive(Deserialize)]
struct Counter {
    counter: i64,
}

/// A client for one server's HTTP routes.
#[derive(Debug, Clone)]
pub struct HttpClient {
    base: BaseUrl,
    tls: Option<Arc<ClientConfig>>,
    token: Option<String>,
    /// The time limit of one request.
    pub timeout: Duration,
}

impl HttpClient {
    /// A client for the server at `base_url` (`http(s)://` or `ws(s)://`, maybe with a path
    /// prefix); `tls` holds the roots to trust for `https://`.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] if the URL does not parse, or is `https://` without `tls`.
    pub fn new(base_url: &str, tls: Option<Arc<ClientConfig>>) -> Result<HttpClient> {
        Self::for_base(BaseUrl::parse(base_url)?, tls)
    }

    /// A client for an already parsed base URL.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] if it is `https://` without `tls`.
    pub fn for_base(base: BaseUrl, tls: Option<Arc<ClientConfig>>) -> Result<HttpClient> {
        if base.secure && tls.is_none() {
            return Err(Error::InvalidUrl {
                url: base.ws_url(""),
                why: "https:// needs TLS settings",
            });
        }
        Ok(HttpClient {
            base,
            tls,
            token: None,
            timeout: REQUEST_TIMEOUT,
        })
    }

    /// Sends `token` to the room routes (history, presence) as `Authorization: Bearer`
    /// (identity, when the server has it).
    pub fn with_token(mut self, token: Option<String>) -> HttpClient {
        self.token = token;
        self
    }

    /// The parsed base URL.
    pub fn base(&self) -> &BaseUrl {
        &self.base
    }

    /// Sends `method path_and_query` (appended to the base URL's path) with `headers` and
    /// `body`, and reads the whole answer. `Host`, `Connection: close` (unless `headers`
    /// name a `Connection`) and a `Content-Length` for a body (or a POST or PUT) are added.
    ///
    /// # Errors
    /// Connection, TLS and protocol failures, a timeout, a body over
    /// [`RESPONSE_LEN_MAX_BYTES`]. Any status is an `Ok`.
    pub async fn request(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response> {
        let limit = self.timeout;
        let exchange = self.exchange(method, path_and_query, headers, body);
        tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| Error::Timeout {
                what: "HTTP request",
                limit,
            })?
    }

    async fn exchange(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response> {
        let invalid = |what: &str| Error::InvalidHeader(what.to_owned());
        let mut request = http::Request::builder()
            .method(http::Method::from_bytes(method.as_bytes()).map_err(|_| invalid(method))?)
            .uri(self.base.target(path_and_query))
            .header(http::header::HOST, self.base.authority());
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("connection"))
        {
            request = request.header(http::header::CONNECTION, "close");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            request = request.header(http::header::CONTENT_LENGTH, body.len());
        }
        let request = request
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|error| Error::InvalidHeader(error.to_string()))?;

        let tcp = TcpStream::connect((self.base.host.as_str(), self.base.port)).await?;
        tcp.set_nodelay(true)?;
        match (&self.tls, self.base.secure) {
            (Some(tls), true) => {
                let name = ServerName::try_from(self.base.host.clone())
                    .map_err(|_| invalid(&self.base.host))?;
                let tls = TlsConnector::from(tls.clone()).connect(name, tcp).await?;
                send(tls, request).await
            }
            _ => send(tcp, request).await,
        }
    }

    /// `GET path_and_query`.
    ///
    /// # Errors
    /// As [`HttpClient::request`].
    pub async fn get(&self, path_and_query: &str) -> Result<Response> {
        self.request("GET", path_and_query, &[], b"").await
    }

    /// `GET` of a room route, with the token (if any) as a bearer credential: never on the
    /// URL, where logs would keep it.
    async fn get_room_route(&self, path_and_query: &str) -> Result<Response> {
        match &self.token {
            Some(token) => {
                let bearer = format!("Bearer {token}");
                let headers = [("Authorization", bearer.as_str())];
                self.request("GET", path_and_query, &headers, b"").await
            }
            None => self.get(path_and_query).await,
        }
    }

    /// A room route's path with `query`.
    fn room_route(room: &str, what: &str, query: &[(&str, String)]) -> String {
        let mut path = BaseUrl::room_path(room, what);
        for (i, (key, value)) in query.iter().enumerate() {
            path.push(if i == 0 { '?' } else { '&' });
            path.push_str(key);
            path.push('=');
            path.push_str(&encode_component(value));
        }
        path
    }

    /// One page of `room`'s history: messages with ids below `before` (all if `None`),
    /// newest first, at most `limit` (1 to 100).
    ///
    /// # Errors
    /// [`Error::Http`] with the server's answer if it refuses (`400` for a bad query).
    pub async fn history(
        &self,
        room: &str,
        before: Option<u64>,
        limit: u32,
    ) -> Result<HistoryPage> {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(before) = before {
            query.push(("before", before.to_string()));
        }
        self.get_room_route(&Self::room_route(room, "history", &query))
            .await?
            .json()
    }

    /// The users joined to `room` now, in roster order.
    ///
    /// # Errors
    /// [`Error::Http`] with the server's answer if it refuses.
    pub async fn presence(&self, room: &str) -> Result<Vec<String>> {
        let presence: Presence = self
            .get_room_route(&Self::room_route(room, "presence", &[]))
            .await?
            .json()?;
        Ok(presence.users)
    }

    /// Publishes `message` as `name` in `room` with the admin token; returns its id once
    /// it is durable.
    ///
    /// # Errors
    /// [`Error::Http`] with the server's answer (`401 Unauthorized`, `400 Message too
    /// long.`, `503`...).
    pub async fn publish(
        &self,
        room: &str,
        admin_token: &str,
        name: &str,
        message: &str,
    ) -> Result<u64> {
        let bearer = format!("Bearer {admin_token}");
        let body = serde_json::json!({ "name": name, "message": message }).to_string();
        let headers = [
            ("Authorization", bearer.as_str()),
            ("Content-Type", "application/json"),
        ];
        let path = BaseUrl::room_path(room, "messages");
        let published: Published = self
            .request("POST", &path, &headers, body.as_bytes())
            .await?
            .json()?;
        Ok(published.id)
    }

    /// Mints a private room id (`POST /api/room`).
    ///
    /// # Errors
    /// [`Error::Http`] with the server's answer if it refuses.
    pub async fn create_room(&self) -> Result<String> {
        let response = self.request("POST", "/api/room", &[], b"").await?;
        if !response.is_success() {
            return Err(Error::Http {
                status: response.status,
                body: response.text(),
            });
        }
        Ok(response.text().trim().to_owned())
    }

    /// A counter's value (`GET /api/counter/<name>`), or after `operation` (`increment`,
    /// `decrement`) when given.
    ///
    /// # Errors
    /// [`Error::Http`] with the server's answer if it refuses.
    pub async fn counter(&self, name: &str, operation: Option<&str>) -> Result<i64> {
        let mut path = format!("/api/counter/{}", encode_component(name));
        let response = match operation {
            None => self.get(&path).await?,
            Some(operation) => {
                path.push('/');
                path.push_str(operation);
                self.request("POST", &path, &[], b"").await?
            }
        };
        let counter: Counter = response.json()?;
        Ok(counter.counter)
    }
}

/// Sends `request` on a fresh HTTP/1 connection over `io` and reads the answer.
async fn send<T>(io: T, request: http::Request<Full<Bytes>>) -> Result<Response>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    // The connection drives the socket; it ends when the answer is read (or on `101`, when
    // nobody takes the upgrade), and its error, if any, shows in the answer's.
    let driver = tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    let response = sender.send_request(request).await;
    let result = async {
        let response = response?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect();
        let body = if status == 101 {
            Bytes::new()
        } else {
            Limited::new(response.into_body(), RESPONSE_LEN_MAX_BYTES)
                .collect()
                .await
                .map_err(|error| match error.downcast::<hyper::Error>() {
                    Ok(error) => Error::Hyper(*error),
                    Err(_) => Error::TooLarge(RESPONSE_LEN_MAX_BYTES),
                })?
                .to_bytes()
        };
        Ok(Response {
            status,
            headers,
            body,
        })
    }
    .await;
    driver.abort();
    result
}
