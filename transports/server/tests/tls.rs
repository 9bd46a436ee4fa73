//! HTTPS and WSS: the server's TLS accept loop serves the chat protocol and the HTTP API
//! exactly as plain HTTP does. The certificate in `tests/fixtures/` is a test-only leaf for
//! `localhost`/127.0.0.1 signed by a test-only CA (`ca.pem`); neither protects anything.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use edgechat_client::http::HttpClient;
use edgechat_client::rustls::{ClientConfig, RootCertStore};
use edgechat_client::{connect, ConnectOptions, Event};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// TLS settings that trust only the test CA.
fn tls() -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(fixture("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

#[tokio::test]
async fn wss_and_https_serve_the_protocol() {
    let dir = DataDir::new("tls");
    let server = start(edgechat_server::Config {
        tls_cert: Some(fixture("leaf.pem")),
        tls_key: Some(fixture("leaf.key")),
        ..config(&dir.db())
    })
    .await;
    let addr = server.local_addr();

    // WSS: join, chat, and the echo comes back over TLS.
    let url = format!("wss://localhost:{}/api/room/secure/websocket", addr.port());
    let mut ada = Client::connect_tls(&url, tls()).await;
    let joined = ada.join("ada").await;
    assert_eq!(
        joined.last().unwrap(),
        &serde_json::json!({ "ready": true })
    );
    let echo = ada.chat("over tls").await;
    assert_eq!(echo["id"], 1);

    // The room client over wss:// with the same roots: an acknowledged send.
    let base = format!("https://localhost:{}", addr.port());
    let (bob, mut events) = connect(ConnectOptions {
        tls: Some(tls()),
        ..ConnectOptions::new(&base, "secure", "bob")
    })
    .unwrap();
    assert_eq!(bob.send("from the room client").await.unwrap(), 2);
    let replayed = tokio::time::timeout(WAIT, async {
        while let Some(event) = events.next().await {
            if let Event::Message(message) = event {
                return Some(message);
            }
        }
        None
    })
    .await
    .expect("the replay in time")
    .expect("a replayed message");
    assert_eq!(replayed.message, "over tls");
    bob.close().await;

    // HTTPS: the HTTP API answers on the same port.
    let https = HttpClient::new(&base, Some(tls())).unwrap();
    let answer = https.get("/api/room/secure/history").await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer.text().contains("over tls"), "{}", answer.text());
    let page = https.history("secure", None, 10).await.unwrap();
    assert_eq!(page.messages.len(), 2);

    // A client that does not speak TLS gets no chat (and does not stall the server).
    let mut plain = HttpClient::new(&format!("http://{addr}"), None).unwrap();
    plain.timeout = WAIT;
    let answer = plain.get("/healthz").await;
    assert!(
        !matches!(&answer, Ok(response) if response.status == 200),
        "plain HTTP must not be served on the TLS port: {answer:?}"
    );
    ada.chat("still up").await;
    server.shutdown().await;
}

#[tokio::test]
async fn over_tls_the_pages_own_origin_is_https_only() {
    use edgechat_client::raw::{Session, SessionOptions};
    let dir = DataDir::new("tls-origin");
    let server = start(edgechat_server::Config {
        tls_cert: Some(fixture("leaf.pem")),
        tls_key: Some(fixture("leaf.key")),
        allowed_origins: vec!["https://app.example".into()],
        ..config(&dir.db())
    })
    .await;
    let port = server.local_addr().port();
    let url = format!("wss://localhost:{port}/api/room/origins/websocket");
    let upgrade = |origin: String| {
        let options = SessionOptions {
            tls: Some(tls()),
            headers: vec![("origin".to_owned(), origin)],
            handshake_timeout: WAIT,
            ..SessionOptions::default()
        };
        let url = url.clone();
        async move { Session::connect(&url, &options).await.map(drop) }
    };
    // TLS ends here, so the page was served over https: that origin is its own...
    assert!(upgrade(format!("https://localhost:{port}")).await.is_ok());
    assert!(upgrade("https://app.example".to_owned()).await.is_ok());
    // ...and a plain-http page on the same host is not.
    let refused = upgrade(format!("http://localhost:{port}")).await;
    assert!(
        matches!(&refused, Err(edgechat_client::Error::Refused { status: 403, body }) if body == "Origin not allowed."),
        "{refused:?}"
    );
    server.shutdown().await;
}
