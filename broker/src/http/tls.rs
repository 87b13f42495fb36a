//! TLS for the listener (`server.tls_cert_file`, `server.tls_key_file`): rustls with
//! the ring provider, TLS 1.2 and 1.3, HTTP/1.1 only (WebSocket upgrades need it).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("cannot read certificates from {path}: {source}")]
    Cert {
        path: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no CERTIFICATE block")]
    NoCert { path: String },
    #[error("cannot read a private key from {path}: {source}")]
    Key {
        path: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(#[source] rustls::Error),
}

impl TlsError {
    /// The configuration key to blame.
    pub(crate) fn key(&self) -> &'static str {
        match self {
            TlsError::Cert { .. } | TlsError::NoCert { .. } | TlsError::Config(_) => {
                "server.tls_cert_file"
            }
            TlsError::Key { .. } => "server.tls_key_file",
        }
    }
}

/// Loads the PEM files into a rustls server configuration.
pub(crate) fn server_config(
    cert_file: &str,
    key_file: &str,
) -> Result<rustls::ServerConfig, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Cert {
            path: cert_file.into(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert {
            path: cert_file.into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|source| TlsError::Key {
        path: key_file.into(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
