//! Hostile input against a running in-process server (issue 6).
//!
//! Each case starts its own server on 127.0.0.1:0 with its own data directory, attacks it,
//! and then checks that the server is still up and still serves a normal client: a fresh
//! connection joins a room and gets its own message back ("the probe"). Memory is the test
//! process's VmRSS (the server is in-process) before and after, with a generous bound.
//!
//! The cases run one at a time (a process-wide lock), so that the RSS figures and the
//! connection counts of one case are not disturbed by another. Every case is bounded in
//! connections, frames and time. Each prints one `HOSTILE |` line with what the server did
//! and the RSS figures: `cargo test -p edgechat-server --test hostile -- --nocapture`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use edgechat_core::limiter::RateLimiterConfig;
use edgechat_server::{Config, Server};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The header through which each test client claims its own IP (and so its own limiter).
const IP_HEADER: &str = "CF-Connecting-IP";
/// How long any single wait may take before the case fails.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// How much the process may grow during one case.
const RSS_GROWTH_MAX_KIB: u64 = 256 * 1024;

static SERIAL: Mutex<()> = Mutex::new(());

/// Runs one case: serialized, on its own runtime, bounded in time.
fn case(name: &str, body: impl std::future::Future<Output = String>) {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let before = rss_kib();
    let what = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), body)
            .await
            .unwrap_or_else(|_| panic!("case {name} did not finish in 120 s"))
    });
    drop(runtime);
    let after = rss_kib();
    eprintln!(
        "HOSTILE | {name} | {what} | VmRSS {} KiB -> {} KiB ({:+} KiB)",
        before,
        after,
        after as i64 - before as i64
    );
    assert!(
        after.saturating_sub(before) < RSS_GROWTH_MAX_KIB,
        "{name}: VmRSS grew from {before} KiB to {after} KiB"
    );
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

/// A data directory removed when dropped.
struct DataDir(PathBuf);

impl DataDir {
    fn new() -> DataDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "edgechat-hostile-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("creating a temporary data directory");
        DataDir(path)
    }

    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .expect("readable")
            .map(|entry| {
                entry
                    .expect("readable")
                    .file_name()
                    .to_string_lossy()
                    .into()
            })
            .collect();
        names.sort();
        names
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Fixture {
    server: Server,
    addr: SocketAddr,
    dir: DataDir,
}

async fn start(tweak: impl FnOnce(&mut Config)) -> Fixture {
    let dir = DataDir::new();
    let mut config = Config {
        data_path: dir.0.join("db"),
        listen: "127.0.0.1:0".parse().expect("a socket address"),
        trust_proxy_header: Some(IP_HEADER.into()),
        ..Config::default()
    };
    tweak(&mut config);
    let server = Server::start(config).await.expect("the server starts");
    let addr = server.local_addr();
    Fixture { server, addr, dir }
}

/// A client IP nobody else uses, so the probe never shares a limiter with an attacker.
fn fresh_ip() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255)
}

async fn ws_connect(addr: SocketAddr, room: &str, ip: &str) -> Result<Ws, String> {
    let mut request = format!("ws://{addr}/api/room/{room}/websocket")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    request
        .headers_mut()
        .insert(IP_HEADER, ip.parse().expect("a header value"));
    let (ws, _) = tokio::time::timeout(STEP_TIMEOUT, tokio_tungstenite::connect_async(request))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// The next text frame as JSON; `Err` with what came instead (close, error, timeout).
async fn next_json(ws: &mut Ws) -> Result<Value, String> {
    loop {
        let message = tokio::time::timeout(STEP_TIMEOUT, ws.next())
            .await
            .map_err(|_| "timed out waiting for a frame".to_owned())?;
        match message {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(&text).map_err(|e| format!("bad JSON {text}: {e}"))
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(match frame {
                    Some(frame) => format!("close {} {:?}", u16::from(frame.code), frame.reason),
                    None => "close without code".into(),
                })
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(format!("error {error}")),
            None => return Err("end of stream".into()),
        }
    }
}

/// Sends `frame` as a text frame.
async fn try_send_json(ws: &mut Ws, frame: Value) -> Result<(), String> {
    ws.send(Message::text(frame.to_string()))
        .await
        .map_err(|e| e.to_string())
}

/// Sends `frame` as a text frame; the connection must take it.
async fn send_json(ws: &mut Ws, frame: Value) {
    try_send_json(ws, frame).await.expect("send");
}

/// Sends the join frame and reads up to `ready`; returns every frame before it.
async fn join(ws: &mut Ws, name: &str) -> Result<Vec<Value>, String> {
    try_send_json(ws, serde_json::json!({ "name": name })).await?;
    let mut frames = Vec::new();
    loop {
        let frame = next_json(ws).await?;
        if frame.get("ready").is_some() {
            return Ok(frames);
        }
        if let Some(error) = frame.get("error") {
            return Err(format!("error frame {error}"));
        }
        frames.push(frame);
    }
}

/// Sends `text` as a chat message and waits for its broadcast; returns it. (Sent right
/// after the join, it waits for the limiter's answer to the join rather than being refused.)
async fn say(ws: &mut Ws, text: &str) -> Result<Value, String> {
    try_send_json(ws, serde_json::json!({ "message": text })).await?;
    loop {
        let frame = next_json(ws).await?;
        if let Some(error) = frame.get("error") {
            return Err(format!("error frame {error}"));
        }
        if frame.get("message").and_then(Value::as_str) == Some(text) {
            return Ok(frame);
        }
    }
}

/// A normal client: joins room `probe` from a fresh IP and gets its own message back.
async fn probe(addr: SocketAddr) -> Result<Duration, String> {
    let started = Instant::now();
    let mut ws = ws_connect(addr, "probe", &fresh_ip()).await?;
    join(&mut ws, "probe").await?;
    say(&mut ws, "still here?").await?;
    let _ = ws.close(None).await;
    Ok(started.elapsed())
}

async fn must_probe(addr: SocketAddr) -> Duration {
    match probe(addr).await {
        Ok(elapsed) => elapsed,
        Err(error) => panic!("the server no longer serves a normal client: {error}"),
    }
}

/// `edgechat_connections` from `/metrics`.
async fn open_connections(addr: SocketAddr) -> u64 {
    let (status, body) = http_raw(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, 200, "metrics: {body}");
    body.lines()
        .find_map(|line| line.strip_prefix("edgechat_connections "))
        .and_then(|n| n.trim().parse().ok())
        .expect("an edgechat_connections line")
}

/// Sends `head` (a request line and headers, Host and Connection added) and reads the
/// answer's status and body.
async fn http_raw(addr: SocketAddr, head: &str) -> (u16, String) {
    let (line, rest) = head.split_once("\r\n").expect("a request line");
    let request = format!("{line}\r\nHost: {addr}\r\nConnection: close\r\n{rest}");
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write the request");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(STEP_TIMEOUT, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            // A 101 never ends; its head is all there is to read.
            if answer.starts_with(b"HTTP/1.1 101") && answer.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer to {line}");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?} for {line}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn upgrade_head(path: &str, ip: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         {IP_HEADER}: {ip}\r\n"
    )
}

/// A WebSocket spoken by hand, for what tungstenite refuses to send.
struct RawWs(TcpStream);

impl RawWs {
    /// Upgrades; `Err` with the status line if the server answered anything but 101.
    async fn connect(addr: SocketAddr, room: &str, ip: &str) -> Result<RawWs, String> {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let head = upgrade_head(&format!("/api/room/{room}/websocket"), ip);
        let (line, rest) = head.split_once("\r\n").expect("a request line");
        let request = format!("{line}\r\nHost: {addr}\r\n{rest}\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(STEP_TIMEOUT, stream.read(&mut byte))
                .await
                .map_err(|_| "handshake timed out".to_owned())?
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err(format!("closed during handshake: {head:?}"));
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            return Err(head.lines().next().unwrap_or_default().to_owned());
        }
        Ok(RawWs(stream))
    }

    /// Writes one masked frame whose header claims `len` payload bytes (normally
    /// `payload.len()`), then the payload.
    async fn write_frame(&mut self, opcode: u8, payload: &[u8], len: u64) -> std::io::Result<()> {
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let mut frame = vec![0x80 | opcode];
        match len {
            0..=125 => frame.push(0x80 | len as u8),
            126..=0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&len.to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.0.write_all(&frame).await
    }

    async fn send_text(&mut self, payload: &[u8]) -> std::io::Result<()> {
        self.write_frame(0x1, payload, payload.len() as u64).await
    }

    /// Reads server frames until a close frame or the end; returns what ended it and the
    /// text frames before it.
    async fn read_until_closed(&mut self, within: Duration) -> (String, Vec<String>) {
        let mut texts = Vec::new();
        let outcome = tokio::time::timeout(within, async {
            loop {
                let mut head = [0u8; 2];
                if self.0.read_exact(&mut head).await.is_err() {
                    return "connection ended without a close frame".to_owned();
                }
                let opcode = head[0] & 0x0f;
                let len = match head[1] & 0x7f {
                    126 => {
                        let mut ext = [0u8; 2];
                        if self.0.read_exact(&mut ext).await.is_err() {
                            return "connection ended mid-frame".into();
                        }
                        u64::from(u16::from_be_bytes(ext))
                    }
                    127 => {
                        let mut ext = [0u8; 8];
                        if self.0.read_exact(&mut ext).await.is_err() {
                            return "connection ended mid-frame".into();
                        }
                        u64::from_be_bytes(ext)
                    }
                    n => u64::from(n),
                };
                let mut payload = vec![0u8; len.min(1 << 20) as usize];
                if self.0.read_exact(&mut payload).await.is_err() {
                    return "connection ended mid-frame".into();
                }
                match opcode {
                    0x1 => texts.push(String::from_utf8_lossy(&payload).into_owned()),
                    0x8 => {
                        let code = (payload.len() >= 2)
                            .then(|| u16::from_be_bytes([payload[0], payload[1]]));
                        let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or(&[]));
                        return format!("close {code:?} {reason:?}");
                    }
                    _ => {} // pings are not answered: this peer is deliberately rude
                }
            }
        })
        .await
        .unwrap_or_else(|_| format!("still open after {within:?}"));
        (outcome, texts)
    }
}

fn message_of(frame: &Value) -> Option<&str> {
    frame.get("message").and_then(Value::as_str)
}

#[test]
fn frames_of_a_mebibyte_and_more_are_refused_without_buffering() {
    case("frames of 1 MiB and more", async {
        let f = start(|_| {}).await;
        let mut report = Vec::new();

        // 1 MiB of text, well-formed JSON, over the 64 KiB transport limit.
        let mut ws = ws_connect(f.addr, "big", &fresh_ip())
            .await
            .expect("connect");
        join(&mut ws, "big").await.expect("join");
        let huge = serde_json::json!({ "message": "x".repeat(1 << 20) }).to_string();
        let _ = ws.send(Message::text(huge)).await;
        let outcome = next_json(&mut ws).await.err().unwrap_or_default();
        assert!(outcome.contains("1009"), "1 MiB text: {outcome}");
        report.push(format!("1 MiB text -> {outcome}"));

        // 16 MiB of binary.
        let mut ws = ws_connect(f.addr, "big", &fresh_ip())
            .await
            .expect("connect");
        let _ = ws.send(Message::binary(vec![0u8; 16 << 20])).await;
        let outcome = next_json(&mut ws).await.err().unwrap_or_default();
        report.push(format!("16 MiB binary -> {outcome}"));

        // A header claiming 2^62 bytes, followed by 10: refused on the header alone.
        let mut raw = RawWs::connect(f.addr, "big", &fresh_ip())
            .await
            .expect("raw");
        raw.write_frame(0x1, b"0123456789", 1 << 62)
            .await
            .expect("write");
        let (outcome, _) = raw.read_until_closed(Duration::from_secs(5)).await;
        assert!(!outcome.starts_with("still open"), "2^62 header: {outcome}");
        report.push(format!("header claiming 2^62 bytes -> {outcome}"));

        // 60 KiB: under the transport limit, over the core's 4 KiB frame limit.
        let mut ws = ws_connect(f.addr, "big", &fresh_ip())
            .await
            .expect("connect");
        join(&mut ws, "mid").await.expect("join");
        let mid = serde_json::json!({ "message": "y".repeat(60 << 10) }).to_string();
        ws.send(Message::text(mid)).await.expect("send");
        let answer = next_json(&mut ws).await.expect("an answer");
        assert_eq!(answer["error"], "Frame too large.");
        report.push(format!("60 KiB text -> {answer} (socket stays open)"));

        let probe = must_probe(f.addr).await;
        f.server.shutdown().await;
        format!("{}; probe ok in {probe:?}", report.join("; "))
    });
}

#[test]
fn binary_frames_get_an_error_and_the_socket_stays() {
    case("binary frames", async {
        let f = start(|_| {}).await;
        let mut ws = ws_connect(f.addr, "bin", &fresh_ip())
            .await
            .expect("connect");
        join(&mut ws, "bin").await.expect("join");
        // Sent right after the join, before the limiter's answer to it may have come: it is
        // held and decided when the answer arrives, never refused as rate limited.
        ws.send(Message::binary(vec![0xff, 0x00, 0x7b]))
            .await
            .expect("send");
        let answer = next_json(&mut ws).await.expect("an answer");
        assert_eq!(answer["error"], "Binary frames are not supported.");
        // A burst of 200 more: rate limited or refused, never a crash.
        for _ in 0..200 {
            ws.send(Message::binary(vec![1; 1024])).await.expect("send");
        }
        let mut errors = 0;
        while let Ok(Some(Ok(Message::Text(_)))) =
            tokio::time::timeout(Duration::from_millis(500), ws.next()).await
        {
            errors += 1;
        }
        let probe = must_probe(f.addr).await;
        f.server.shutdown().await;
        format!(
            "first binary -> {answer}; 200 more -> {errors} error frames, socket open; \
             probe ok in {probe:?}"
        )
    });
}

#[test]
fn invalid_utf8_in_a_text_frame_closes_only_that_socket() {
    case("invalid UTF-8 in a text frame", async {
        let f = start(|_| {}).await;
        let mut raw = RawWs::connect(f.addr, "utf8", &fresh_ip())
            .await
            .expect("raw");
        raw.send_text(b"{\"name\":\"\xff\xfe\xc0\xaf\"}")
            .await
            .expect("write");
        let (outcome, texts) = raw.read_until_closed(Duration::from_secs(5)).await;
        assert!(!outcome.starts_with("still open"), "{outcome}");

        // Invalid UTF-8 after a valid join, too.
        let mut raw = RawWs::connect(f.addr, "utf8", &fresh_ip())
            .await
            .expect("raw");
        raw.send_text(br#"{"name":"ok"}"#).await.expect("write");
        raw.send_text(b"{\"message\":\"\xed\xa0\x80\"}")
            .await
            .expect("write");
        let (outcome_joined, _) = raw.read_until_closed(Duration::from_secs(5)).await;
        assert!(
            !outcome_joined.starts_with("still open"),
            "{outcome_joined}"
        );

        let probe = must_probe(f.addr).await;
        f.server.shutdown().await;
        format!(
            "before join -> {outcome} (text frames first: {texts:?}); after join (CESU \
             surrogate) -> {outcome_joined}; probe ok in {probe:?}"
        )
    });
}

#[test]
fn thousands_of_frames_per_second_from_one_client() {
    case("5000 frames as fast as possible from one client", async {
        let f = start(|_| {}).await;
        let ws = ws_connect(f.addr, "flood", &fresh_ip())
            .await
            .expect("connect");
        let (mut sink, mut stream) = ws.split();
        sink.send(Message::text(r#"{"name":"flood"}"#))
            .await
            .expect("join");
        let reader = tokio::spawn(async move {
            let (mut chats, mut limited, mut other_errors) = (0u64, 0u64, 0u64);
            let mut first = Vec::new();
            let mut end = String::from("still open");
            while let Ok(Some(message)) =
                tokio::time::timeout(Duration::from_secs(3), stream.next()).await
            {
                match message {
                    Ok(Message::Text(text)) => {
                        if first.len() < 3 {
                            first.push(text.clone());
                        }
                        let frame: Value = serde_json::from_str(&text).expect("JSON");
                        match frame.get("error").and_then(Value::as_str) {
                            Some(e) if e.contains("rate-limited") => limited += 1,
                            Some(_) => other_errors += 1,
                            None if message_of(&frame).is_some() => chats += 1,
                            None => {}
                        }
                    }
                    Ok(Message::Close(frame)) => {
                        end = format!("closed {:?}", frame.map(|f| u16::from(f.code)));
                        break;
                    }
                    Ok(_) => {}
                    Err(error) => {
                        end = format!("error {error}");
                        break;
                    }
                }
            }
            (chats, limited, other_errors, end, first)
        });
        let started = Instant::now();
        let mut sent = 0u64;
        for n in 0..5_000 {
            let frame = format!(r#"{{"message":"flood {n}"}}"#);
            if sink.feed(Message::text(frame)).await.is_err() {
                break;
            }
            sent += 1;
        }
        let _ = sink.flush().await;
        let send_time = started.elapsed();
        let (chats, limited, other_errors, end, first) = reader.await.expect("reader");
        // The default limiter lets a burst of about 4-5 through, then one per 5 s.
        assert!(chats <= 6, "{chats} messages got through the limiter");
        let probe = must_probe(f.addr).await;
        f.server.shutdown().await;
        format!(
            "sent {sent} frames in {send_time:?} ({:.0}/s); broadcast {chats}, rate-limited \
             errors {limited}, other errors {other_errors}, socket {end}, first frames {first:?}; \
             probe ok in {probe:?}",
            sent as f64 / send_time.as_secs_f64()
        )
    });
}

#[test]
fn a_connection_flood_from_one_ip_is_capped() {
    const FLOOD: usize = 2_000;
    const MAX: usize = 300;
    case("2000 WebSocket upgrades from one IP", async {
        let f = start(|config| config.max_connections = MAX).await;
        let mut held = Vec::new();
        let (mut refused_503, mut other) = (0usize, Vec::new());
        for batch in 0..FLOOD / 100 {
            let attempts: Vec<_> = (0..100)
                .map(|_| {
                    let addr = f.addr;
                    // No IP header: every connection is the TCP peer, 127.0.0.1.
                    tokio::spawn(async move {
                        let mut stream =
                            TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
                        let head = upgrade_head("/api/room/flood/websocket", "x")
                            .replace(&format!("{IP_HEADER}: x\r\n"), "");
                        let (line, rest) = head.split_once("\r\n").expect("a line");
                        let request = format!("{line}\r\nHost: {addr}\r\n{rest}\r\n");
                        stream
                            .write_all(request.as_bytes())
                            .await
                            .map_err(|e| e.to_string())?;
                        let mut buf = [0u8; 12];
                        tokio::time::timeout(STEP_TIMEOUT, stream.read_exact(&mut buf))
                            .await
                            .map_err(|_| "timed out".to_owned())?
                            .map_err(|e| e.to_string())?;
                        Ok::<_, String>((String::from_utf8_lossy(&buf[9..12]).into_owned(), stream))
                    })
                })
                .collect();
            for attempt in attempts {
                match attempt.await.expect("task") {
                    Ok((status, stream)) if status == "101" => held.push(stream),
                    Ok((status, _)) if status == "503" => refused_503 += 1,
                    Ok((status, _)) => other.push(status),
                    Err(error) => other.push(error),
                }
            }
            assert!(
                held.len() <= MAX,
                "batch {batch}: {} open over {MAX}",
                held.len()
            );
        }
        let accepted = held.len();
        let gauge_full = open_connections(f.addr).await;
        assert_eq!(accepted, MAX, "the cap should be reached exactly");
        assert_eq!(refused_503, FLOOD - MAX, "others: {other:?}");
        // While saturated, a newcomer is refused too (the cap is global, by design).
        let during = probe(f.addr).await;
        assert!(during.is_err());
        // Released slots are reusable at once.
        drop(held);
        let freed = Instant::now();
        while open_connections(f.addr).await > 0 {
            assert!(freed.elapsed() < STEP_TIMEOUT, "slots were not released");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let released_in = freed.elapsed();
        let probe = must_probe(f.addr).await;
        f.server.shutdown().await;
        format!(
            "{accepted} upgraded (= max_connections), {refused_503} refused 503, other {other:?}; \
             gauge {gauge_full} while held; probe while saturated -> {}; all slots free \
             {released_in:?} after the flood closed; probe ok in {probe:?}",
            during.err().unwrap_or_default()
        )
    });
}

#[test]
fn slowloris_handshakes_do_not_block_others() {
    const SLOW: usize = 300;
    case("300 slowloris upgrade requests", async {
        let f = start(|_| {}).await;
        let mut slow = Vec::new();
        for _ in 0..SLOW {
            let mut stream = TcpStream::connect(f.addr).await.expect("connect");
            stream
                .write_all(b"GET /api/room/slow/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nX-Slow: ")
                .await
                .expect("write");
            slow.push(stream);
        }
        // Trickle one byte per connection every 500 ms for 5 s, probing meanwhile.
        let mut probes = Vec::new();
        for _ in 0..10 {
            for stream in &mut slow {
                let _ = stream.write_all(b"a").await;
            }
            probes.push(must_probe(f.addr).await);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Which of them did the server give up on?
        let mut closed = 0;
        for stream in &mut slow {
            let mut buf = [0u8; 256];
            match tokio::time::timeout(Duration::from_millis(5), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
                Ok(Ok(_)) => closed += 1, // answered (an error status) and closing
                Err(_) => {}
            }
        }
        drop(slow);
        let probe = must_probe(f.addr).await;
        f.server.shutdown().await;
        let slowest = probes.iter().max().copied().unwrap_or_default();
        format!(
            "{SLOW} partial handshakes trickled for 5 s: probes all ok (slowest {slowest:?}); \
             server had closed {closed} of them after 5 s; probe after ok in {probe:?}"
        )
    });
}

#[test]
fn half_open_connections_do_not_block_others() {
    const IDLE: usize = 500;
    case("500 silent TCP connections and a silent WebSocket", async {
        let f = start(|config| config.ping_interval_ms = 200).await;
        let mut idle = Vec::new();
        for _ in 0..IDLE {
            idle.push(TcpStream::connect(f.addr).await.expect("connect"));
        }
        let probe_during = must_probe(f.addr).await;

        // A WebSocket that joins, then never reads, never answers a ping.
        let mut raw = RawWs::connect(f.addr, "quiet", &fresh_ip())
            .await
            .expect("raw");
        raw.send_text(br#"{"name":"quiet"}"#).await.expect("write");
        let started = Instant::now();
        let (outcome, _) = raw.read_until_closed(Duration::from_secs(10)).await;
        let silent_ws = format!("{outcome} after {:?}", started.elapsed());
        assert!(!outcome.starts_with("still open"), "{silent_ws}");

        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut closed = 0;
        for stream in &mut idle {
            let mut buf = [0u8; 16];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(2), stream.read(&mut buf)).await
            {
                closed += 1;
            }
        }
        drop(idle);
        let probe = must_probe(f.addr).await;
        f.server.shutdown().await;
        format!(
            "{IDLE} silent TCP: probe during ok in {probe_during:?}, server had closed \
             {closed} after ~2 s; silent joined WebSocket (ping 200 ms) -> {silent_ws}; \
             probe after ok in {probe:?}"
        )
    });
}

#[test]
fn names_and_messages_at_the_exact_utf16_limits() {
    case(
        "control chars, RTL and emoji at 32/256 UTF-16 units",
        async {
            // A generous limiter: this case is about lengths, not rates.
            let f = start(|config| {
                config.rate_limit = RateLimiterConfig {
                    cost_ms: 1,
                    grace_ms: 1_000_000,
                }
            })
            .await;
            let units = |s: &str| s.encode_utf16().count();
            // 2 (emoji) + 1 (RLO) + 3 controls + 4 (Hebrew) + 22 = 32.
            let name32 = format!("😀\u{202e}\u{0}\u{7}\u{1b}שלום{}", "n".repeat(22));
            let name33 = format!("{name32}x");
            let message256 = format!("\u{200f}مرحبا\u{0}\r\n\u{1b}[2J{}👍🏽", "m".repeat(239));
            let message257 = format!("{message256}.");
            assert_eq!(
                (units(&name32), units(&message256)),
                (32, 256),
                "the test's own strings"
            );

            let mut ws = ws_connect(f.addr, "limits", &fresh_ip())
                .await
                .expect("connect");
            send_json(&mut ws, serde_json::json!({ "name": name32 })).await;
            let joined = next_json(&mut ws).await.expect("joined");
            assert_eq!(
                joined["joined"],
                name32.as_str(),
                "32-unit name echoed exactly"
            );
            let ready = next_json(&mut ws).await.expect("ready");
            assert_eq!(ready["ready"], true);
            let echoed = say(&mut ws, &message256).await.expect("256 units accepted");
            assert_eq!(echoed["name"], name32.as_str());
            send_json(&mut ws, serde_json::json!({ "message": message257 })).await;
            let refused = next_json(&mut ws).await.expect("an answer");
            assert_eq!(refused["error"], "Message too long.");
            // A lone surrogate escape is not a string Rust can hold: a clear error, not a crash.
            ws.send(Message::text(r#"{"message":"\ud800"}"#))
                .await
                .expect("send");
            let lone = next_json(&mut ws).await.expect("an answer");
            assert!(lone.get("error").is_some(), "lone surrogate: {lone}");

            let mut over = ws_connect(f.addr, "limits", &fresh_ip())
                .await
                .expect("connect");
            send_json(&mut over, serde_json::json!({ "name": name33 })).await;
            let error = next_json(&mut over).await.expect("an error frame");
            assert_eq!(error["error"], "Name too long.");
            let close = next_json(&mut over).await.expect_err("a close");
            assert!(close.contains("1009"), "{close}");

            // Names that look like paths are just names; nothing appears on disk.
            let files_before = f.dir.files();
            let mut traversal = Vec::new();
            for name in [
                "../../etc/passwd",
                "..\\..\\boot.ini",
                "/dev/null",
                "NUL",
                "%2e%2e%2f",
            ] {
                let mut ws = ws_connect(f.addr, "limits", &fresh_ip())
                    .await
                    .expect("connect");
                join(&mut ws, name).await.expect("join");
                let said = say(&mut ws, "hi").await.expect("say");
                assert_eq!(said["name"], name);
                traversal.push(name);
            }
            assert_eq!(
                f.dir.files(),
                files_before,
                "new files in the data directory"
            );

            let probe = must_probe(f.addr).await;
            f.server.shutdown().await;
            format!(
                "32-unit name and 256-unit message echoed byte-exact; 257 -> {refused}; lone \
             surrogate -> {lone}; 33-unit name -> {error} then {close}; path-like names \
             {traversal:?} joined and chatted, data dir unchanged {files_before:?}; probe ok \
             in {probe:?}"
            )
        },
    );
}

#[test]
fn forged_upper_case_and_odd_room_ids() {
    case("forged, upper-case and odd room ids", async {
        let f = start(|_| {}).await;
        let (status, minted) = http_raw(
            f.addr,
            "POST /api/room HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert_eq!(status, 200);
        let minted = minted.trim().to_owned();
        let mut forged = minted.clone().into_bytes();
        forged[63] = if forged[63] == b'0' { b'1' } else { b'0' };
        let forged = String::from_utf8(forged).expect("hex");
        let ip = fresh_ip();
        let cases: Vec<(String, u16, &str)> = vec![
            (minted.clone(), 101, ""),
            (forged, 404, "Invalid room id"),
            ("ab".repeat(32), 404, "Invalid room id"),
            (minted.to_uppercase(), 404, "Name too long"),
            (minted[..63].to_owned(), 404, "Name too long"),
            (format!("{minted}0"), 404, "Name too long"),
            ("n".repeat(32), 101, ""),
            ("n".repeat(33), 404, "Name too long"),
            ("..".into(), 101, ""),
            ("%2e%2e".into(), 101, ""),
            ("..%2f..%2fetc%2fpasswd".into(), 101, ""),
            ("%F0%9F%98%80".into(), 101, ""),
            ("%ff%fe".into(), 101, ""),
            ("%00".into(), 101, ""),
            ("a%20b".into(), 101, ""),
            ("%2F".repeat(11), 404, "Name too long"),
            ("x".repeat(8 * 1024), 404, "Name too long"),
        ];
        let files_before = f.dir.files();
        let mut seen = Vec::new();
        for (room, want_status, want_body) in &cases {
            let path = format!("/api/room/{room}/websocket");
            let (status, body) = http_raw(f.addr, &(upgrade_head(&path, &ip) + "\r\n")).await;
            let shown: String = room.chars().take(20).collect();
            assert_eq!(
                (status, body.trim()),
                (*want_status, *want_body),
                "room {shown}"
            );
            seen.push(format!(
                "{shown}{} -> {status}",
                if room.len() > 20 { "…" } else { "" }
            ));
        }
        // Paths that are not even valid request targets.
        let (status_dot, _) =
            http_raw(f.addr, "GET /api/room/../../../etc/passwd HTTP/1.1\r\n\r\n").await;
        let (status_raw, _) = http_raw(
            f.addr,
            "GET /api/room/\u{7f}\u{1}/websocket HTTP/1.1\r\n\r\n",
        )
        .await;
        assert_eq!(
            f.dir.files(),
            files_before,
            "new files in the data directory"
        );
        let probe = must_probe(f.addr).await;
        f.server.shutdown().await;
        format!(
            "{}; GET /api/room/../../../etc/passwd -> {status_dot}; control bytes in the \
             path -> {status_raw}; data dir unchanged; probe ok in {probe:?}",
            seen.join(", ")
        )
    });
}

#[test]
fn close_code_constants_are_what_the_cases_expect() {
    // Guards the string matching above against a tungstenite renumbering.
    assert_eq!(u16::from(CloseCode::Size), 1009);
}

/// A connection that never finishes its request head would hold a file descriptor forever
/// (it does not count against `max_connections`: only upgraded sockets do), so one IP could
/// exhaust the process's descriptors with slowloris connections. The server's 30 s
/// header-read timeout drops it.
#[test]
fn incomplete_request_heads_are_dropped_within_40_s() {
    case("a partial request head held for 40 s", async {
        let f = start(|_| {}).await;
        let mut stream = TcpStream::connect(f.addr).await.expect("connect");
        stream
            .write_all(b"GET /api/room/slow/websocket HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 256];
        let outcome = tokio::time::timeout(Duration::from_secs(40), stream.read(&mut buf)).await;
        let dropped = matches!(outcome, Ok(Ok(_) | Err(_)));
        drop(stream);
        f.server.shutdown().await;
        assert!(dropped, "the server still holds the connection after 40 s");
        "dropped".to_owned()
    });
}
