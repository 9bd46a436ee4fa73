//! HTTPS and WSS: the server's TLS accept loop serves the chat protocol and the HTTP API
//! exactly as plain HTTP does. The certificate in `tests/fixtures/` is a test-only leaf for
//! `localhost`/127.0.0.1 signed by a test-only CA (`ca.pem`); neither protects anything.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A TLS client that trusts only the test CA.
fn connector() -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(fixture("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn tls_stream(addr: std::net::SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    connector()
        .connect(name, tcp)
        .await
        .expect("the TLS handshake succeeds")
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
    let (ws, response) = tokio_tungstenite::client_async(url, tls_stream(addr).await)
        .await
        .expect("the upgrade succeeds over TLS");
    assert_eq!(response.status(), 101);
    let mut ada = Client::from_stream(ws);
    let joined = ada.join("ada").await;
    assert_eq!(
        joined.last().unwrap(),
        &serde_json::json!({ "ready": true })
    );
    let echo = ada.chat("over tls").await;
    assert_eq!(echo["id"], 1);

    // HTTPS: the HTTP API answers on the same port.
    let mut https = tls_stream(addr).await;
    https
        .write_all(b"GET /api/room/secure/history HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    https.read_to_string(&mut answer).await.ok();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("over tls"), "{answer}");

    // A client that does not speak TLS gets no chat (and does not stall the server).
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(WAIT, plain.read(&mut buf)).await;
    assert!(
        !matches!(read, Ok(Ok(n)) if buf[..n].starts_with(b"HTTP/1.1 200")),
        "plain HTTP must not be served on the TLS port"
    );
    ada.chat("still up").await;
    server.shutdown().await;
}
