//! edgechat inside an axum 0.8 application: the app keeps its own routes and state, and the
//! chat (every route of the protocol, WebSockets included) is mounted under `/chat`.
//!
//! ```text
//! cargo run -p edgechat-server --example axum
//! curl http://127.0.0.1:3000/                      # the app's own route
//! curl http://127.0.0.1:3000/chat/api/room/lobby/history
//! websocat ws://127.0.0.1:3000/chat/api/room/lobby/websocket
//! ```
//! `tests/embed.rs` runs the conformance suite against [`app`] under `/chat`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::routing::get;
use axum::Router;
use edgechat_server::{Handle, PeerAddr, Runtime, RuntimeConfig, Storage};

/// The application's own state (here, a visit counter).
#[derive(Debug, Clone, Default)]
pub struct AppState {
    visits: Arc<AtomicU64>,
}

/// The application: its own `GET /`, and the chat under `/chat` (axum strips the prefix
/// before the chat's service sees the request).
pub fn app(chat: Handle) -> Router {
    Router::new()
        .route("/", get(hello))
        .with_state(AppState::default())
        .nest_service("/chat", chat)
        // The chat keys its rate limits by client IP: hand it axum's peer address.
        .layer(axum::middleware::map_request(peer_addr))
}

async fn hello(State(state): State<AppState>) -> String {
    let visits = state.visits.fetch_add(1, Ordering::Relaxed) + 1;
    format!("Hello from the app, visit {visits}. The chat is under /chat.")
}

/// Copies axum's `ConnectInfo` (set by `into_make_service_with_connect_info`) into the
/// extension edgechat reads.
async fn peer_addr(mut request: Request) -> Request {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| *peer);
    if let Some(peer) = peer {
        request.extensions_mut().insert(PeerAddr(peer));
    }
    request
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = Runtime::open(RuntimeConfig {
        storage: Storage::Path("axum-example.db".into()),
        ..RuntimeConfig::default()
    })?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    let service = app(runtime.handle()).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    // The HTTP side has stopped; close the chat's sockets (1001) and flush its storage.
    runtime.shutdown().await;
    Ok(())
}
