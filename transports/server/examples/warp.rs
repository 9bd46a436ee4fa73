//! edgechat inside a warp 0.4 application: the app keeps its own filters, and the chat
//! (every route of the protocol, WebSockets included) is mounted under `/chat` by a filter
//! that hands the rest of the request to edgechat's service.
//!
//! ```text
//! cargo run -p edgechat-server --example warp
//! curl http://127.0.0.1:3030/                      # the app's own route
//! curl http://127.0.0.1:3030/chat/api/room/lobby/history
//! ```
//! `tests/embed.rs` joins, chats and publishes through [`app`].

use std::net::SocketAddr;

use bytes::Bytes;
use edgechat_server::{Handle, PeerAddr, Runtime, RuntimeConfig, Storage};
use futures_util::TryStreamExt as _;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::upgrade::OnUpgrade;
use warp::filters::path::Tail;
use warp::http::{HeaderMap, Method, Response, StatusCode};
use warp::{Filter, Rejection, Reply};

/// The application: its own `GET /`, and the chat under `/chat`.
pub fn app(chat: Handle) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let hello = warp::path::end()
        .and(warp::get())
        .map(|| "Hello from the app. The chat is under /chat.");
    hello.or(warp::path("chat").and(mounted(chat)))
}

/// Everything after the prefix, as a request for edgechat's service: the path without the
/// prefix, the peer address, and hyper's upgrade handle (for WebSockets).
fn mounted(chat: Handle) -> impl Filter<Extract = (Response<Bytes>,), Error = Rejection> + Clone {
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::method()
        .and(warp::path::tail())
        .and(query)
        .and(warp::header::headers_cloned())
        .and(warp::addr::remote())
        .and(warp::ext::optional::<OnUpgrade>())
        .and(warp::body::stream())
        .then(
            move |method: Method,
                  tail: Tail,
                  query: String,
                  headers: HeaderMap,
                  peer: Option<SocketAddr>,
                  on_upgrade: Option<OnUpgrade>,
                  body| {
                let chat = chat.clone();
                async move {
                    let body = body_of(body);
                    let uri = match query.as_str() {
                        "" => format!("/{}", tail.as_str()),
                        query => format!("/{}?{query}", tail.as_str()),
                    };
                    let Ok(mut request) =
                        http::Request::builder().method(method).uri(uri).body(body)
                    else {
                        return bad_request();
                    };
                    *request.headers_mut() = headers;
                    if let Some(peer) = peer {
                        request.extensions_mut().insert(PeerAddr(peer));
                    }
                    if let Some(on_upgrade) = on_upgrade {
                        request.extensions_mut().insert(on_upgrade);
                    }
                    let (parts, body) = chat.respond(request).await.into_parts();
                    let body = match body.collect().await {
                        Ok(collected) => collected.to_bytes(),
                        Err(never) => match never {},
                    };
                    Response::from_parts(parts, body)
                }
            },
        )
}

/// warp's body stream as an `http_body::Body`.
fn body_of<S, B>(stream: S) -> impl http_body::Body<Data = Bytes, Error = warp::Error> + Send
where
    S: futures_util::Stream<Item = Result<B, warp::Error>> + Send,
    B: bytes::Buf,
{
    StreamBody::new(
        stream.map_ok(|mut chunk| http_body::Frame::data(chunk.copy_to_bytes(chunk.remaining()))),
    )
}

fn bad_request() -> Response<Bytes> {
    let mut response = Response::new(Bytes::from_static(b"Bad request"));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = Runtime::open(RuntimeConfig {
        storage: Storage::Path("warp-example.db".into()),
        ..RuntimeConfig::default()
    })?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3030").await?;
    println!("listening on http://{}", listener.local_addr()?);
    warp::serve(app(runtime.handle()))
        .incoming(listener)
        .graceful(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .run()
        .await;
    runtime.shutdown().await;
    Ok(())
}
