//! Identity and access (issue 13) against a real server on 127.0.0.1: real HS256 tokens
//! made with `jsonwebtoken`, real WebSocket upgrades and HTTP calls. Every refusal's status
//! and text are the core's ([`AuthError`], `answer::auth_refused`, `answer::origin_refused`).

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use common::{get, http, start, ws_url, Client, DataDir, WAIT};
use edgechat_core::auth::{AuthConfig, AuthError, AuthMode, TokenVerifier, VerifyingKeys};
use edgechat_core::ids::{Namespace, ObjectId};
use edgechat_core::room::{CLOSE_REASON_TOKEN_EXPIRED, CLOSE_TOKEN_EXPIRED};
use edgechat_server::{Config, Server};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Error as WsError;

const SECRET: &[u8] = b"the server test secret, 32 bytes or more";
const READ_ONLY: &str = "Token grants read-only access to this room.";

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token signed with `secret` for user `sub` named `name`, valid for `ttl_secs` (negative:
/// already expired), granting `rooms`.
fn token_with(secret: &[u8], sub: &str, name: &str, ttl_secs: i64, rooms: Value) -> String {
    let exp = now_secs() as i64 + ttl_secs;
    let claims = json!({ "sub": sub, "name": name, "exp": exp, "rooms": rooms });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn token(sub: &str, name: &str, rooms: Value) -> String {
    token_with(SECRET, sub, name, 600, rooms)
}

fn policy(mode: AuthMode, leeway_ms: u64, token_rooms: &[&str]) -> AuthConfig {
    let mut verifier = TokenVerifier::new(VerifyingKeys::hs256(SECRET).unwrap());
    verifier.leeway_ms = leeway_ms;
    let rooms = token_rooms
        .iter()
        .map(|room| ObjectId::from_name(Namespace::Room, room));
    AuthConfig::new(mode, Some(verifier), rooms.collect::<Vec<_>>()).unwrap()
}

async fn server(tag: &str, edit: impl FnOnce(&mut Config)) -> (Server, DataDir) {
    let dir = DataDir::new(tag);
    let mut config = common::config(&dir.db());
    edit(&mut config);
    (start(config).await, dir)
}

fn url(addr: SocketAddr, room: &str, token: &str) -> String {
    format!("{}?token={token}", ws_url(addr, room))
}

/// Opens a WebSocket expecting a refusal; returns its status and body.
async fn refused(url: &str, origin: Option<&str>) -> (u16, String) {
    let mut request = url.into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", HeaderValue::from_str(origin).unwrap());
    }
    let result = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("an answer in time");
    match result {
        Err(WsError::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            (response.status().as_u16(), String::from_utf8(body).unwrap())
        }
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, the upgrade succeeded"),
    }
}

/// Whether an upgrade with `origin` succeeds.
async fn upgrades(url: &str, origin: Option<&str>) -> bool {
    let origin = origin.map(|origin| ("origin", origin));
    upgrades_with(url, origin.as_slice()).await
}

/// Whether an upgrade with these extra `headers` succeeds.
async fn upgrades_with(url: &str, headers: &[(&'static str, &str)]) -> bool {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(*name, HeaderValue::from_str(value).unwrap());
    }
    tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("an answer in time")
        .is_ok()
}

/// Sends `text` and returns the first frame that is its broadcast or an error.
async fn send_message(client: &mut Client, text: &str) -> Value {
    client.send(json!({ "message": text })).await;
    loop {
        let frame = client.frame().await;
        if frame.get("error").is_some()
            || frame.get("message").and_then(Value::as_str) == Some(text)
        {
            return frame;
        }
    }
}

#[tokio::test]
async fn off_mode_ignores_tokens_and_keeps_todays_behaviour() {
    let (server, _dir) = server("auth-off", |_| {}).await;
    let addr = server.local_addr();
    let mut client = Client::connect_url(&url(addr, "lobby", "not-even-a-jwt")).await;
    client.join("alice").await;
    let echo = client.chat("hello").await;
    assert_eq!(echo["name"], "alice");
    assert_eq!(get(addr, "/api/room/lobby/history").await.status, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn optional_mode_token_fixes_the_name_and_anonymous_still_joins() {
    let (server, _dir) = server("auth-optional", |config| {
        config.auth = policy(AuthMode::Optional, 30_000, &["vip"]);
    })
    .await;
    let addr = server.local_addr();
    let ada = token("user-1", "Ada", json!({ "lobby": "write" }));
    let mut user = Client::connect_url(&url(addr, "lobby", &ada)).await;
    user.join("mallory").await;
    let echo = send_message(&mut user, "from ada").await;
    assert_eq!(
        echo["name"], "Ada",
        "the token's name, not the asked one: {echo}"
    );

    let mut anonymous = Client::connect(addr, "lobby").await;
    anonymous.join("guest").await;
    assert_eq!(anonymous.chat("from guest").await["name"], "guest");

    // A token-only room refuses the anonymous, with the core's answer.
    let (status, body) = refused(&ws_url(addr, "vip"), None).await;
    assert_eq!((status, body.as_str()), (401, "A token is required."));
    // A bad token is refused, not quietly downgraded to anonymous.
    let (status, _) = refused(&url(addr, "lobby", "abc.def.ghi"), None).await;
    assert_eq!(status, AuthError::Malformed.status());
    server.shutdown().await;
}

#[tokio::test]
async fn required_mode_refuses_missing_bad_expired_and_foreign_tokens() {
    let (server, _dir) = server("auth-required", |config| {
        config.auth = policy(AuthMode::Required, 0, &[]);
    })
    .await;
    let addr = server.local_addr();
    let cases = [
        ("no token", ws_url(addr, "lobby"), AuthError::Missing),
        (
            "bad signature",
            url(
                addr,
                "lobby",
                &token_with(
                    b"another secret of thirty-two bytes!!",
                    "u",
                    "U",
                    600,
                    json!({ "lobby": "write" }),
                ),
            ),
            AuthError::BadSignature,
        ),
        (
            "expired",
            url(
                addr,
                "lobby",
                &token_with(SECRET, "u", "U", -60, json!({ "lobby": "write" })),
            ),
            AuthError::Expired,
        ),
        (
            "wrong room",
            url(addr, "lobby", &token("u", "U", json!({ "other": "write" }))),
            AuthError::RoomNotGranted,
        ),
    ];
    for (what, url, error) in cases {
        let (status, body) = refused(&url, None).await;
        assert_eq!(status, error.status(), "{what}");
        assert_eq!(body, error.to_string(), "{what}");
    }
    assert_eq!(AuthError::RoomNotGranted.status(), 403);
    assert_eq!(AuthError::Missing.status(), 401);

    // read joins and reads but cannot send; write can.
    let reader = token("reader", "Reader", json!({ "lobby": "read" }));
    let mut reader = Client::connect_url(&url(addr, "lobby", &reader)).await;
    reader.join("Reader").await;
    let refused_send = send_message(&mut reader, "may I?").await;
    assert_eq!(refused_send["error"], READ_ONLY);

    let writer = token("writer", "Writer", json!({ "*": "write" }));
    let mut writer = Client::connect_url(&url(addr, "lobby", &writer)).await;
    writer.join("Writer").await;
    assert_eq!(writer.chat("I may").await["name"], "Writer");
    // The reader sees it.
    loop {
        if reader.frame().await["message"] == "I may" {
            break;
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn origin_allow_list_refuses_foreign_browser_pages() {
    let (server, _dir) = server("auth-origin", |config| {
        config.allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let addr = server.local_addr();
    let lobby = ws_url(addr, "lobby");
    let (status, body) = refused(&lobby, Some("https://evil.example")).await;
    assert_eq!((status, body.as_str()), (403, "Origin not allowed."));
    assert!(upgrades(&lobby, Some("https://app.example")).await);
    assert!(upgrades(&lobby, None).await, "no Origin: not a browser");
    let own = format!("http://{addr}");
    assert!(upgrades(&lobby, Some(&own)).await, "the page's own origin");
    // A Host naming the attacker's page does not make it the page's own.
    let odd_host = [
        ("origin", "https://evil.example"),
        ("host", "evil.example/"),
    ];
    assert!(!upgrades_with(&lobby, &odd_host).await);
    // A client's own X-Forwarded-Proto counts for nothing without a trusted proxy.
    let claims_https = [("origin", own.as_str()), ("x-forwarded-proto", "https")];
    assert!(upgrades_with(&lobby, &claims_https).await);
    server.shutdown().await;

    // Behind a trusted proxy that ended TLS, only https on the Host is the page's own.
    let (server, _dir) = crate::server("auth-origin-proxy", |config| {
        config.allowed_origins = vec!["https://app.example".into()];
        config.trust_proxy_header = Some("x-forwarded-for".into());
    })
    .await;
    let addr = server.local_addr();
    let lobby = ws_url(addr, "lobby");
    let own = format!("http://{addr}");
    let https_own = format!("https://{addr}");
    let proxied = |origin| [("origin", origin), ("x-forwarded-proto", "https")];
    assert!(upgrades_with(&lobby, &proxied(https_own.as_str())).await);
    assert!(!upgrades_with(&lobby, &proxied(own.as_str())).await);
    assert!(
        upgrades_with(&lobby, &[("origin", own.as_str())]).await,
        "scheme unknown"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn bearer_tokens_read_history_and_presence_when_auth_is_on() {
    let (server, _dir) = server("auth-bearer", |config| {
        config.auth = policy(AuthMode::Required, 30_000, &[]);
    })
    .await;
    let addr = server.local_addr();
    let missing = get(addr, "/api/room/lobby/history").await;
    assert_eq!(
        (missing.status, missing.body.as_str()),
        (401, "A token is required.")
    );
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    let reader = token("reader", "Reader", json!({ "lobby": "read" }));
    let bearer = format!("Bearer {reader}");
    for path in ["/api/room/lobby/history", "/api/room/lobby/presence"] {
        let answer = http(addr, "GET", path, &[("Authorization", &bearer)], "").await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
    }
    let other = http(
        addr,
        "GET",
        "/api/room/other/presence",
        &[("Authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(other.status, 403);
    server.shutdown().await;
}

#[tokio::test]
async fn expiring_token_is_refreshed_in_place_or_closes_the_connection() {
    let (server, _dir) = server("auth-expiry", |config| {
        config.auth = policy(AuthMode::Required, 0, &[]);
    })
    .await;
    let addr = server.local_addr();
    let short = token_with(SECRET, "u1", "Una", 2, json!({ "lobby": "write" }));
    let mut refreshed = Client::connect_url(&url(addr, "lobby", &short)).await;
    refreshed.join("Una").await;
    let fresh = token("u1", "Una", json!({ "lobby": "write" }));
    refreshed.send(json!({ "token": fresh })).await;
    assert_eq!(refreshed.frame().await, json!({ "refreshed": true }));

    let short = token_with(SECRET, "u2", "Ugo", 2, json!({ "lobby": "write" }));
    let mut expiring = Client::connect_url(&url(addr, "lobby", &short)).await;
    expiring.join("Ugo").await;
    let close = expiring.closed().await;
    assert_eq!(
        close,
        Some((CLOSE_TOKEN_EXPIRED, CLOSE_REASON_TOKEN_EXPIRED.to_owned()))
    );
    // The refreshed connection outlived its first token.
    assert_eq!(refreshed.chat("still here").await["name"], "Una");
    server.shutdown().await;
}

#[tokio::test]
async fn a_known_user_is_rate_limited_as_one_whatever_its_ip() {
    const IP_HEADER: &str = "CF-Connecting-IP";
    let (server, _dir) = server("auth-limits", |config| {
        config.auth = policy(AuthMode::Optional, 30_000, &[]);
        config.trust_proxy_header = Some(IP_HEADER.into());
        // The default limit: a burst of about four actions, then one per five seconds.
        config.rate_limit = edgechat_core::limiter::RateLimiterConfig::default();
    })
    .await;
    let addr = server.local_addr();
    let ada = token("user-ada", "Ada", json!({ "lobby": "write" }));
    let mut first =
        Client::connect_url_with(&url(addr, "lobby", &ada), &[(IP_HEADER, "10.0.0.1")]).await;
    first.join("Ada").await;
    let mut limited = false;
    for n in 0..20 {
        if send_message(&mut first, &format!("burst {n}")).await["error"] == common::RATE_LIMITED {
            limited = true;
            break;
        }
    }
    assert!(limited, "the burst runs into the limit");

    // The same user from another IP shares the limit...
    let mut second =
        Client::connect_url_with(&url(addr, "lobby", &ada), &[(IP_HEADER, "10.0.0.2")]).await;
    second.join("Ada").await;
    let answer = send_message(&mut second, "new ip").await;
    assert_eq!(answer["error"], common::RATE_LIMITED, "{answer}");

    // ...and an anonymous neighbour behind the first IP is not throttled by it.
    let mut neighbour = Client::connect_with(addr, "lobby", &[(IP_HEADER, "10.0.0.1")]).await;
    neighbour.join("neighbour").await;
    let answer = send_message(&mut neighbour, "hello").await;
    assert_eq!(answer["name"], "neighbour", "{answer}");
    server.shutdown().await;
}

/// Where the log lines of every test in this binary go (debug level).
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        logs
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn tokens_never_appear_in_the_log() {
    let logs = captured_logs();
    let (server, _dir) = server("auth-logs", |config| {
        config.auth = policy(AuthMode::Optional, 30_000, &[]);
    })
    .await;
    let addr = server.local_addr();
    let good = token("logged-user", "Lou", json!({ "lobby": "write" }));
    let foreign = token("logged-user", "Lou", json!({ "elsewhere": "write" }));
    let mut client = Client::connect_url(&url(addr, "lobby", &good)).await;
    client.join("Lou").await;
    client.send(json!({ "token": good })).await;
    assert_eq!(client.frame().await, json!({ "refreshed": true }));
    client.send(json!({ "token": foreign })).await;
    assert!(client.frame().await.get("error").is_some());
    let _ = refused(&url(addr, "lobby", &foreign), None).await;
    let bearer = format!("Bearer {good}");
    let _ = http(
        addr,
        "GET",
        "/api/room/lobby/history",
        &[("Authorization", &bearer)],
        "",
    )
    .await;
    client.close().await;
    server.shutdown().await;

    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logs.contains("connection open"),
        "debug logs are captured: {logs}"
    );
    for token in [&good, &foreign] {
        // Any of its three parts would be a leak (the signature most of all).
        for part in token.split('.') {
            assert!(!logs.contains(part), "a token part appears in the log");
        }
    }
}

#[test]
fn a_bad_key_file_stops_the_binary_with_a_message_naming_it() {
    let dir = DataDir::new("auth-keyfile");
    let short = dir.0.join("short-secret");
    std::fs::write(&short, b"too short\n").unwrap();
    let pem = dir.0.join("not-a-key.pem");
    std::fs::write(
        &pem,
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let missing = dir.0.join("missing-secret");
    let cases: [(Vec<String>, &std::path::Path); 3] = [
        (
            vec![
                "--auth-hs256-secret-file".into(),
                short.display().to_string(),
            ],
            &short,
        ),
        (
            vec![
                "--auth-public-key-file".into(),
                format!("RS256:{}", pem.display()),
            ],
            &pem,
        ),
        (
            vec![
                "--auth-hs256-secret-file".into(),
                missing.display().to_string(),
            ],
            &missing,
        ),
    ];
    for (flags, file) in cases {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_edgechat"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--auth-mode",
                "required",
            ])
            .arg("--data")
            .arg(dir.db())
            .args(&flags)
            .output()
            .expect("the binary runs");
        assert!(!output.status.success(), "{flags:?} must be refused");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&file.display().to_string()),
            "{flags:?}: the message names the file: {stderr}"
        );
    }
}
