//! HTTPS/WSS: the TLS acceptor for [`Server`](crate::Server), built from PEM files.
//!
//! Each accepted TCP connection is handshaken in its own task (a slow client holds up no
//! other) and then served by the same hyper connection code as plain HTTP, so WebSocket
//! upgrades, the peer address and the header-read timeout work alike.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// Why the TLS files are unusable (the server reports it as `StartError::Tls`).
#[derive(Debug)]
pub(crate) struct TlsSetupError {
    /// What failed.
    pub what: String,
    /// Why.
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// How long a client may take to finish the TLS handshake.
pub(crate) const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Builds the acceptor from PEM files (read now, so that a bad file fails the start).
pub(crate) fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsSetupError> {
    let tls_error = |what: String| {
        move |source: rustls_pki_types::pem::Error| TlsSetupError {
            what,
            source: source.into(),
        }
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(tls_error(format!(
            "reading TLS certificate {}",
            cert.display()
        )))?;
    if certs.is_empty() {
        return Err(TlsSetupError {
            what: format!("no certificate in {}", cert.display()),
            source: "empty PEM file".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(tls_error(format!("reading TLS key {}", key.display())))?;
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|source| TlsSetupError {
            what: "TLS certificate and key".into(),
            source: source.into(),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
