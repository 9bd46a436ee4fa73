//! Helpers for the server's own integration tests: a server on an ephemeral port with its
//! own data directory, a WebSocket client that speaks the protocol, and a tiny HTTP client.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use edgechat_core::limiter::RateLimiterConfig;
use edgechat_server::{Config, Server};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Generous bound for anything a test waits for; never a pass/fail timing.
pub const WAIT: Duration = Duration::from_secs(20);
pub const ADMIN_TOKEN: &str = "test-admin-token";
pub const RATE_LIMITED: &str = "Your IP is being rate-limited, please try again later.";

/// A data directory removed when dropped.
#[derive(Debug)]
pub struct DataDir(pub PathBuf);

impl DataDir {
    pub fn new(tag: &str) -> DataDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "edgechat-server-test-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a temporary data directory");
        DataDir(path)
    }

    pub fn db(&self) -> PathBuf {
        self.0.join("chat.db")
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A rate limit that never bites (the limiter still answers every frame).
pub fn relaxed_rate_limit() -> RateLimiterConfig {
    RateLimiterConfig {
        cost_ms: 1,
        grace_ms: 600_000,
    }
}

/// A config for tests: ephemeral port, the admin token, a relaxed rate limit.
pub fn config(db: &Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_path: db.to_owned(),
        admin_token: Some(ADMIN_TOKEN.into()),
        rate_limit: relaxed_rate_limit(),
        ..Config::default()
    }
}

pub async fn start(config: Config) -> Server {
    Server::start(config).await.expect("the server starts")
}

/// What a client read.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Frame(Value),
    Closed(Option<(u16, String)>),
}

pub struct Client<S> {
    ws: WebSocketStream<S>,
    pub name: String,
}

pub type TcpClient = Client<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

pub fn ws_url(addr: SocketAddr, room: &str) -> String {
    format!("ws://{addr}/api/room/{room}/websocket")
}

impl TcpClient {
    pub async fn connect(addr: SocketAddr, room: &str) -> TcpClient {
        TcpClient::connect_with(addr, room, &[]).await
    }

    pub async fn connect_with(addr: SocketAddr, room: &str, headers: &[(&str, &str)]) -> TcpClient {
        let mut request = ws_url(addr, room).into_client_request().unwrap();
        for (name, value) in headers {
            let name: tokio_tungstenite::tungstenite::http::HeaderName = name.parse().unwrap();
            request
                .headers_mut()
                .insert(name, HeaderValue::from_str(value).unwrap());
        }
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("connect in time")
            .expect("the upgrade succeeds");
        Client {
            ws,
            name: String::new(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn from_stream(ws: WebSocketStream<S>) -> Client<S> {
        Client {
            ws,
            name: String::new(),
        }
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .expect("send a frame");
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.expect("send a frame");
    }

    /// The next frame or the close, within [`WAIT`].
    pub async fn next(&mut self) -> Event {
        loop {
            let read = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time");
            match read {
                Some(Ok(Message::Text(text))) => {
                    return Event::Frame(serde_json::from_str(&text).expect("frames are JSON"))
                }
                Some(Ok(Message::Close(frame))) => {
                    return Event::Closed(
                        frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())),
                    )
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Event::Closed(None),
            }
        }
    }

    pub async fn frame(&mut self) -> Value {
        match self.next().await {
            Event::Frame(frame) => frame,
            Event::Closed(close) => panic!("{}: expected a frame, got close {close:?}", self.name),
        }
    }

    /// Joins as `name`; returns every frame up to and including `ready`.
    pub async fn join(&mut self, name: &str) -> Vec<Value> {
        self.name = name.to_owned();
        self.send(serde_json::json!({ "name": name })).await;
        let mut frames = Vec::new();
        loop {
            let frame = self.frame().await;
            let ready = frame.get("ready").is_some();
            frames.push(frame);
            if ready {
                return frames;
            }
        }
    }

    /// Sends `text` and returns its echo (the broadcast chat frame). A rate-limit error
    /// (the limiter's answer to the previous frame may still be on its way) is retried.
    pub async fn chat(&mut self, text: &str) -> Value {
        self.send(serde_json::json!({ "message": text })).await;
        loop {
            let frame = self.frame().await;
            if frame.get("error").and_then(Value::as_str) == Some(RATE_LIMITED) {
                tokio::time::sleep(Duration::from_millis(10)).await;
                self.send(serde_json::json!({ "message": text })).await;
                continue;
            }
            if frame.get("message").and_then(Value::as_str) == Some(text)
                && frame.get("name").and_then(Value::as_str) == Some(self.name.as_str())
            {
                return frame;
            }
        }
    }

    /// Reads until the close frame (or the end of the stream); returns its code and reason.
    pub async fn closed(&mut self) -> Option<(u16, String)> {
        loop {
            if let Event::Closed(close) = self.next().await {
                return close;
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, self.ws.next()).await {}
    }
}

/// A plain HTTP/1.1 response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("JSON body: {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP request over a fresh connection (`Connection: close`).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        raw
    };
    let raw = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("an HTTP answer in time");
    let raw = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Response {
        status,
        headers,
        body: body.to_owned(),
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Response {
    http(addr, "GET", path, &[], "").await
}

pub async fn admin_post(addr: SocketAddr, path: &str, body: &str) -> Response {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    http(addr, "POST", path, &[("Authorization", &auth)], body).await
}

/// The value of an unlabelled metric.
/// Polls metric `name` until `done` holds for its value; fails with `what` after [`WAIT`].
pub async fn wait_for_metric(addr: SocketAddr, name: &str, done: impl Fn(u64) -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let value = metric(addr, name).await;
        if done(value) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} ({name} = {value})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn metric(addr: SocketAddr, name: &str) -> u64 {
    let response = get(addr, "/metrics").await;
    response
        .body
        .lines()
        .find_map(|line| {
            let (metric, value) = line.split_once(' ')?;
            (metric == name).then(|| value.parse().expect("an integer metric"))
        })
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// Every retained message of a room, newest first, following `next_before`.
pub async fn full_history(addr: SocketAddr, room: &str) -> Vec<Value> {
    let mut messages = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let path = match before {
            Some(id) => format!("/api/room/{room}/history?limit=100&before={id}"),
            None => format!("/api/room/{room}/history?limit=100"),
        };
        let page = get(addr, &path).await;
        assert_eq!(page.status, 200, "history: {}", page.body);
        let page = page.json();
        messages.extend(page["messages"].as_array().unwrap().iter().cloned());
        match page["next_before"].as_u64() {
            Some(id) => before = Some(id),
            None => return messages,
        }
    }
}
