//! The library embedded in applications, tested through the examples users read: the
//! conformance suite against the axum app (`examples/axum.rs`, the chat under `/chat`), a
//! smoke test of the warp app (`examples/warp.rs`), and the lower-level WebSocket entry
//! (`accept_websocket` + `serve_websocket`) and plain calls on a bare hyper server.

mod common;

#[allow(dead_code)]
#[path = "../examples/axum.rs"]
mod axum_example;
#[allow(dead_code)]
#[path = "../examples/warp.rs"]
mod warp_example;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use edgechat_conformance::{cases, run_case, AuthSetup, Outcome, Target};
use edgechat_core::moderation::ModAction;
use edgechat_server::{Handle, RoomError, Runtime, RuntimeConfig, Storage};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

const IP_HEADER: &str = "CF-Connecting-IP";
const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// A runtime on a fresh database file, with the admin token and `IP_HEADER` trusted.
fn runtime(dir: &DataDir, rate_limit: bool) -> Runtime {
    let mut config = RuntimeConfig {
        storage: Storage::Path(dir.db()),
        admin_token: Some(ADMIN_TOKEN.into()),
        trust_proxy_header: Some(IP_HEADER.into()),
        ..RuntimeConfig::default()
    };
    if !rate_limit {
        config.rate_limit = relaxed_rate_limit();
    }
    Runtime::open(config).expect("the runtime opens")
}

/// An app being served, and how to stop it.
struct Served {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Served {
    async fn stop(self, runtime: Runtime) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(WAIT, self.task).await;
        runtime.shutdown().await;
    }
}

async fn serve_axum(handle: Handle) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let app = axum_example::app(handle).into_make_service_with_connect_info::<SocketAddr>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .expect("axum serves");
    });
    Served { addr, stop, task }
}

async fn serve_warp(handle: Handle) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = warp::serve(warp_example::app(handle))
        .incoming(listener)
        .graceful(async {
            let _ = stopped.await;
        });
    let task = tokio::spawn(server.run());
    Served { addr, stop, task }
}

/// A WebSocket client for `url`.
async fn connect(url: &str) -> TcpClient {
    Client::connect_url(url).await
}

/// Every conformance case against the axum app, with the chat under `/chat`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_axum_mount_passes_the_conformance_suite() {
    let dir = DataDir::new("embed-axum");
    let runtime = runtime(&dir, true);
    let served = serve_axum(runtime.handle()).await;
    let addr = served.addr;
    let target = Target {
        base_url: format!("http://{addr}/chat"),
        client_ip_header: Some(IP_HEADER.into()),
        admin_token: Some(ADMIN_TOKEN.into()),
        hibernate: Some(format!("http://{addr}/chat/admin/hibernate")),
        auth: AuthSetup::default(),
    };
    let mut failures = Vec::new();
    for case in cases() {
        let outcome = run_case(&case, &target, CASE_TIMEOUT).await;
        println!("{} ... {outcome}", case.name);
        // Auth is off here: the auth cases that need it skip (tests/conformance.rs runs them
        // in every mode).
        let expected_skip =
            case.name.starts_with("auth_") && matches!(outcome, Outcome::Skipped(_));
        if outcome != Outcome::Passed && !expected_skip {
            failures.push(format!("{}: {outcome}", case.name));
        }
    }
    // The app's own route and state live beside the chat.
    let first = get(addr, "/").await;
    let second = get(addr, "/").await;
    served.stop(runtime).await;
    assert!(
        failures.is_empty(),
        "mounted under /chat in axum:\n{}",
        failures.join("\n")
    );
    assert_eq!(first.status, 200);
    assert!(first.body.contains("visit 1"), "{}", first.body);
    assert!(second.body.contains("visit 2"), "{}", second.body);
}

/// The warp app: its own route answers, and under `/chat` a client joins, chats, and sees
/// a message published over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warp_mount_serves_the_chat_beside_the_app() {
    let dir = DataDir::new("embed-warp");
    let runtime = runtime(&dir, false);
    let served = serve_warp(runtime.handle()).await;
    let addr = served.addr;

    let hello = get(addr, "/").await;
    assert_eq!(hello.status, 200);
    assert!(
        hello.body.starts_with("Hello from the app"),
        "{}",
        hello.body
    );

    let mut ada = connect(&format!("ws://{addr}/chat/api/room/garden/websocket")).await;
    let joined = ada.join("ada").await;
    assert_eq!(joined.last().unwrap(), &json!({ "ready": true }));
    let echo = ada.chat("hello over warp").await;
    assert_eq!(echo["id"], 1);

    let published = admin_post(
        addr,
        "/chat/api/room/garden/messages",
        r#"{"name":"bot","message":"from the app"}"#,
    )
    .await;
    assert_eq!(published.status, 200, "{}", published.body);
    assert_eq!(published.json()["id"], 2);
    let frame = ada.frame().await;
    assert_eq!(frame["name"], "bot");
    assert_eq!(frame["message"], "from the app");

    let history = get(addr, "/chat/api/room/garden/history").await;
    assert_eq!(history.status, 200, "{}", history.body);
    assert_eq!(history.json()["messages"].as_array().unwrap().len(), 2);
    assert_eq!(get(addr, "/chat/nowhere").await.status, 404);

    ada.close().await;
    served.stop(runtime).await;
}

/// A bare hyper server that does the upgrade itself with the lower-level entry: the room
/// is checked (and a slot reserved) before `101`, then the upgraded connection is handed
/// over. The plain calls reach the same room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lower_level_entry_and_plain_calls_reach_the_room() {
    let dir = DataDir::new("embed-raw");
    let runtime = runtime(&dir, false);
    let handle = runtime.handle();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_raw(listener, handle.clone()));

    let mut ada = connect(&format!("ws://{addr}/lobby")).await;
    ada.join("ada").await;
    ada.chat("over the raw entry").await;

    assert_eq!(handle.presence("lobby").await.unwrap(), ["ada"]);
    let id = handle
        .publish("lobby", "bot", "posted by the app")
        .await
        .unwrap();
    assert_eq!(id, 2);
    let frame = ada.frame().await;
    assert_eq!(frame["message"], "posted by the app");
    let page = handle.history("lobby", None, 1).await.unwrap();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.messages[0].message, "posted by the app");
    assert_eq!(page.next_before, Some(2));
    let older = handle
        .history("lobby", page.next_before, 100)
        .await
        .unwrap();
    assert_eq!(older.messages[0].message, "over the raw entry");
    assert_eq!(older.next_before, None);
    // A page made only of a change record (the deletion, id 3) still pages on.
    handle
        .moderate("lobby", ModAction::Delete { id: 1 })
        .await
        .unwrap();
    let newest = handle.history("lobby", None, 1).await.unwrap();
    assert!(
        newest.messages.is_empty(),
        "change records are not messages"
    );
    assert_eq!(newest.next_before, Some(3));
    let rest = handle
        .history("lobby", newest.next_before, 100)
        .await
        .unwrap();
    let texts: Vec<&str> = rest.messages.iter().map(|m| m.message.as_str()).collect();
    assert_eq!(
        texts,
        ["posted by the app"],
        "the deleted message is a tombstone"
    );

    // Refusals come before the upgrade, with the protocol's answers.
    let long = "x".repeat(33);
    let refused = handle.accept_websocket(&long).unwrap_err();
    assert_eq!((refused.status(), refused.body()), (404, "Name too long"));
    let forged = "0".repeat(64);
    assert_eq!(handle.accept_websocket(&forged).unwrap_err().status(), 404);
    assert!(matches!(
        handle.publish(&long, "bot", "x").await,
        Err(RoomError::InvalidRoom("Name too long"))
    ));
    assert!(matches!(
        handle.history("lobby", None, 0).await,
        Err(RoomError::InvalidArgument(_))
    ));
    assert!(matches!(
        handle.publish("lobby", "", "x").await,
        Err(RoomError::Publish(_))
    ));

    ada.close().await;
    server.abort();
    runtime.shutdown().await;
}

/// Serves `GET /<room>` WebSockets with `accept_websocket` and `serve_websocket`.
async fn serve_raw(listener: TcpListener, handle: Handle) {
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            return;
        };
        let handle = handle.clone();
        let service = hyper::service::service_fn(move |mut request: http::Request<_>| {
            let handle = handle.clone();
            async move {
                let room = request.uri().path().trim_start_matches('/').to_owned();
                let ticket = match handle.accept_websocket(&room) {
                    Ok(ticket) => ticket,
                    Err(refused) => {
                        return Ok::<_, std::convert::Infallible>(refused.into_response())
                    }
                };
                let key = request
                    .headers()
                    .get(http::header::SEC_WEBSOCKET_KEY)
                    .map(|key| derive_accept_key(key.as_bytes()))
                    .unwrap_or_default();
                let ip = handle.client_ip(request.headers(), Some(peer));
                let on_upgrade = hyper::upgrade::on(&mut request);
                tokio::spawn(async move {
                    if let Ok(upgraded) = on_upgrade.await {
                        handle
                            .serve_websocket(ticket, ip, TokioIo::new(upgraded))
                            .await;
                    }
                });
                let response = http::Response::builder()
                    .status(101)
                    .header("upgrade", "websocket")
                    .header("connection", "upgrade")
                    .header("sec-websocket-accept", key)
                    .body(edgechat_server::Body::default())
                    .unwrap();
                Ok(response)
            }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades()
                .await;
        });
    }
}
