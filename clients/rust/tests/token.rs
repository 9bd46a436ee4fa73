//! Signed tokens against a real edgechat server on 127.0.0.1 that requires them and allows
//! no leeway: with a [`TokenProvider`] the connection outlives its first token (refreshed in
//! place), and rejoins with a fresh token after an expiry; with a static token the expiry
//! (close 4001) closes the client for good; reads send the token as a bearer credential.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgechat_client::{connect, token_expiry, ConnectOptions, Event, State, TokenProvider};
use edgechat_core::auth::{AuthConfig, AuthMode, TokenVerifier, VerifyingKeys};
use edgechat_core::ids::ObjectId;
use edgechat_server::{Config, Server};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

mod common;

use common::{until_logged as until, DataDir, WAIT};

const SECRET: &[u8] = b"the rust client test secret, 32 bytes or more";

/// A server that requires tokens signed with [`SECRET`] and allows no leeway on `exp`.
async fn start(tag: &str) -> (Server, String, DataDir) {
    let dir = DataDir::new(tag);
    let mut verifier = TokenVerifier::new(VerifyingKeys::hs256(SECRET).unwrap());
    verifier.leeway_ms = 0;
    let auth = AuthConfig::new(AuthMode::Required, Some(verifier), Vec::<ObjectId>::new()).unwrap();
    let config = Config {
        auth,
        ..common::config(&dir.db(), "127.0.0.1:0".parse().unwrap())
    };
    let server = Server::start(config).await.expect("the server starts");
    let url = format!("http://{}", server.local_addr());
    (server, url, dir)
}

/// A token for `name` writing every room, expiring `ttl_secs` after the current second.
fn mint(name: &str, ttl_secs: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({ "sub": format!("user-{name}"), "name": name, "exp": now + 1 + ttl_secs, "rooms": { "*": "write" } });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn options(url: &str, room: &str) -> ConnectOptions {
    common::options(url, room, "ignored")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_refreshes_in_place_and_the_connection_outlives_its_first_token() {
    let (server, url, _dir) = start("refresh").await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let provider = TokenProvider::new(move || {
        counted.fetch_add(1, Ordering::Relaxed);
        async { Some(mint("Ada", 3)) }
    });
    let (room, mut events) = connect(ConnectOptions {
        token_provider: Some(provider),
        ..options(&url, "refresh")
    })
    .unwrap();
    let mut seen = Vec::new();
    until(&mut events, &mut seen, "ready", |e| {
        matches!(e, Event::Ready { .. }).then_some(())
    })
    .await;
    assert_eq!(room.name().as_deref(), Some("Ada"), "the token's name");
    let first_expiry = SystemTime::now() + Duration::from_secs(4);
    // Past the first token's expiry (when the server would close an unrefreshed
    // connection), with at least two refreshes.
    let mut refreshes = 0;
    until(
        &mut events,
        &mut seen,
        "two refreshes past the first expiry",
        |e| {
            if let Event::Refreshed { expires_at } = e {
                assert!(expires_at.is_some());
                refreshes += 1;
            }
            (refreshes >= 2 && SystemTime::now() > first_expiry + Duration::from_secs(1))
                .then_some(())
        },
    )
    .await;
    let id = tokio::time::timeout(WAIT, room.send("still here"))
        .await
        .expect("an answer in time")
        .expect("the send is acknowledged");
    assert!(id > 0);
    assert_eq!(room.state(), State::Live);
    let unexpected: Vec<&Event> = seen
        .iter()
        .filter(|e| matches!(e, Event::Reconnect { .. } | Event::Error { .. }))
        .collect();
    assert!(unexpected.is_empty(), "never dropped: {unexpected:?}");
    assert!(
        calls.load(Ordering::Relaxed) >= 3,
        "the join and each refresh asked"
    );
    room.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_a_static_token_expires_and_closes_for_good() {
    let (server, url, _dir) = start("static").await;
    let (room, mut events) = connect(ConnectOptions {
        token: Some(mint("Bob", 1)),
        ..options(&url, "static")
    })
    .unwrap();
    let mut seen = Vec::new();
    until(&mut events, &mut seen, "ready", |e| {
        matches!(e, Event::Ready { .. }).then_some(())
    })
    .await;
    assert_eq!(room.name().as_deref(), Some("Bob"));
    let error = until(&mut events, &mut seen, "the expiry", |e| match e {
        Event::Error { message, fatal } => Some((message.clone(), *fatal)),
        _ => None,
    })
    .await;
    assert_eq!(error, ("Token expired.".to_owned(), true));
    until(&mut events, &mut seen, "closed", |e| {
        matches!(
            e,
            Event::State {
                state: State::Closed,
                ..
            }
        )
        .then_some(())
    })
    .await;
    assert_eq!(room.state(), State::Closed);
    assert!(room.send("too late").await.is_err());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_expiry_close_the_provider_token_rejoins() {
    let (server, url, _dir) = start("rejoin").await;
    // Nothing newer than the first token until it has expired: the server closes the
    // connection (4001), and the reconnect asks for, and gets, a fresh token.
    let first = mint("Cy", 1);
    let first_expiry = token_expiry(&first).unwrap();
    let provider = TokenProvider::new(move || {
        let token = if SystemTime::now() < first_expiry {
            first.clone()
        } else {
            mint("Cy", 600)
        };
        async move { Some(token) }
    });
    let (room, mut events) = connect(ConnectOptions {
        token_provider: Some(provider),
        ..options(&url, "rejoin")
    })
    .unwrap();
    let mut seen = Vec::new();
    let mut readies = 0;
    until(&mut events, &mut seen, "a second join", |e| {
        readies += usize::from(matches!(e, Event::Ready { .. }));
        (readies == 2).then_some(())
    })
    .await;
    assert!(seen.iter().any(|e| matches!(e, Event::Reconnect { .. })));
    assert_eq!(room.name().as_deref(), Some("Cy"));
    let sent = tokio::time::timeout(WAIT, room.send("back")).await;
    assert!(matches!(sent, Ok(Ok(_))), "{sent:?}");
    room.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_send_the_token_as_a_bearer() {
    let (server, url, _dir) = start("bearer").await;
    let (room, mut events) = connect(ConnectOptions {
        token: Some(mint("Dee", 600)),
        ..options(&url, "bearer")
    })
    .unwrap();
    let mut seen = Vec::new();
    until(&mut events, &mut seen, "ready", |e| {
        matches!(e, Event::Ready { .. }).then_some(())
    })
    .await;
    // Without the token both would be refused (401 "A token is required.").
    assert_eq!(room.presence().await.unwrap(), ["Dee"]);
    let page = room.load_older(10).await.unwrap();
    assert!(page.messages.is_empty() && !page.has_more);
    // And with a provider, whose token is asked per read.
    let (with_provider, mut events) = connect(ConnectOptions {
        token_provider: Some(TokenProvider::new(|| async { Some(mint("Eve", 600)) })),
        ..options(&url, "bearer")
    })
    .unwrap();
    until(&mut events, &mut seen, "ready", |e| {
        matches!(e, Event::Ready { .. }).then_some(())
    })
    .await;
    let mut users = with_provider.presence().await.unwrap();
    users.sort();
    assert_eq!(users, ["Dee", "Eve"]);
    room.close().await;
    with_provider.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_refresh_is_reported_and_never_taken_for_a_sends_answer() {
    let (server, url, _dir) = start("refused").await;
    // The first token is Fay's; every later one names another user, which the server
    // refuses as a refresh ("must name the same user") but admits on a new connection.
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let provider = TokenProvider::new(move || {
        let first = counted.fetch_add(1, Ordering::Relaxed) == 0;
        async move {
            Some(if first {
                mint("Fay", 3)
            } else {
                mint("Gus", 600)
            })
        }
    });
    let (room, mut events) = connect(ConnectOptions {
        token_provider: Some(provider),
        ..options(&url, "refused")
    })
    .unwrap();
    let mut seen = Vec::new();
    until(&mut events, &mut seen, "ready", |e| {
        matches!(e, Event::Ready { .. }).then_some(())
    })
    .await;
    assert_eq!(room.name().as_deref(), Some("Fay"));
    // Sends go on, one after the other, while the refresh is tried and refused: every one
    // is acknowledged, and the refusal is reported as the refresh's.
    let sender = room.clone();
    let sending = tokio::spawn(async move {
        for n in 0..1_000 {
            if sender.name().as_deref() != Some("Fay") {
                break;
            }
            let sent = tokio::time::timeout(WAIT, sender.send(format!("m{n}"))).await;
            assert!(matches!(sent, Ok(Ok(_))), "send {n}: {sent:?}");
        }
    });
    let error = until(&mut events, &mut seen, "the refused refresh", |e| match e {
        Event::Error { message, fatal } => Some((message.clone(), *fatal)),
        _ => None,
    })
    .await;
    assert_eq!(
        error,
        (
            "Token refresh refused: A refreshed token must name the same user.".to_owned(),
            false
        )
    );
    // The first token then expires: the server closes (4001), the client rejoins as Gus.
    until(&mut events, &mut seen, "the rejoin", |e| {
        matches!(e, Event::Ready { resumed: true, .. }).then_some(())
    })
    .await;
    assert_eq!(room.name().as_deref(), Some("Gus"));
    tokio::time::timeout(WAIT, sending)
        .await
        .expect("the sender stops")
        .expect("every send was acknowledged");
    room.close().await;
    server.shutdown().await;
}
