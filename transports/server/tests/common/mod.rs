//! Helpers for the server's own integration tests: a server on an ephemeral port with its
//! own data directory, and a protocol-speaking WebSocket client and HTTP calls, both over
//! edgechat-client (its frame-level session and its HTTP client).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::sync::Arc;

use edgechat_client::http::HttpClient;
use edgechat_client::raw::{Event as RawEvent, Session, SessionOptions};
use edgechat_client::rustls::ClientConfig;
use edgechat_core::limiter::RateLimiterConfig;
use edgechat_server::{Config, Server};
use serde_json::Value;
use tokio::net::TcpStream;

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

/// A WebSocket client that speaks the protocol, panicking on anything unexpected.
pub struct Client {
    session: Session,
    pub name: String,
}

/// The name the tests have always used for a client over TCP.
pub type TcpClient = Client;

pub fn ws_url(addr: SocketAddr, room: &str) -> String {
    format!("ws://{addr}/api/room/{room}/websocket")
}

impl Client {
    pub async fn connect(addr: SocketAddr, room: &str) -> Client {
        Client::connect_with(addr, room, &[]).await
    }

    pub async fn connect_with(addr: SocketAddr, room: &str, headers: &[(&str, &str)]) -> Client {
        let options = SessionOptions {
            headers: headers
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
            handshake_timeout: WAIT,
            ..SessionOptions::default()
        };
        Client::open(Session::connect(&ws_url(addr, room), &options).await)
    }

    /// A client for any WebSocket URL, sending extra request headers.
    pub async fn connect_url_with(url: &str, headers: &[(&str, &str)]) -> Client {
        let options = SessionOptions {
            headers: headers
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
            ..Client::options()
        };
        Client::open(Session::connect(url, &options).await)
    }

    /// A client for any WebSocket URL (an embedding's own routes).
    pub async fn connect_url(url: &str) -> Client {
        Client::open(Session::connect(url, &Client::options()).await)
    }

    /// A client over a TCP stream the test set up itself (a tiny receive buffer, say).
    pub async fn connect_on(stream: TcpStream, url: &str) -> Client {
        Client::open(Session::connect_on(stream, url, &Client::options()).await)
    }

    /// A `wss://` client trusting the roots in `tls`.
    pub async fn connect_tls(url: &str, tls: Arc<ClientConfig>) -> Client {
        let options = SessionOptions {
            tls: Some(tls),
            ..Client::options()
        };
        Client::open(Session::connect(url, &options).await)
    }

    fn options() -> SessionOptions {
        SessionOptions {
            handshake_timeout: WAIT,
            ..SessionOptions::default()
        }
    }

    fn open(session: edgechat_client::Result<Session>) -> Client {
        Client {
            session: session.expect("the upgrade succeeds"),
            name: String::new(),
        }
    }

    pub async fn send(&mut self, frame: Value) {
        self.session
            .send_text(frame.to_string())
            .await
            .expect("send a frame");
    }

    /// The next frame or the close, within [`WAIT`].
    pub async fn next(&mut self) -> Event {
        loop {
            match self
                .session
                .next_within(WAIT)
                .await
                .expect("a frame in time")
            {
                RawEvent::Text(text) => {
                    return Event::Frame(serde_json::from_str(&text).expect("frames are JSON"))
                }
                RawEvent::Close(close) => return Event::Closed(close),
                RawEvent::Binary(_) => continue,
                RawEvent::Ended(_) => return Event::Closed(None),
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

    /// Sends `text` and returns its echo (the broadcast chat frame). Any error fails the
    /// test: a frame sent while the limiter's answer to the previous one is on its way
    /// waits for it (PROTOCOL.md), so only a spent burst is refused.
    pub async fn chat(&mut self, text: &str) -> Value {
        self.send(serde_json::json!({ "message": text })).await;
        loop {
            let frame = self.frame().await;
            assert!(frame.get("error").is_none(), "sending {text:?}: {frame}");
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

    pub async fn close(self) {
        self.session.close(1000, "").await;
    }
}

/// An HTTP response, the body as text.
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
    let mut client = HttpClient::new(&format!("http://{addr}"), None).expect("a base URL");
    client.timeout = WAIT;
    let response = client
        .request(method, path, headers, body.as_bytes())
        .await
        .unwrap_or_else(|error| panic!("{method} {path}: {error}"));
    Response {
        status: response.status,
        body: response.text(),
        headers: response.headers,
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
