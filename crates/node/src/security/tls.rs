//! TLS with rustls: the node's server side (HTTPS only, client certificates verified
//! against the cluster's CA when offered) and what its own calls to peers present.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// `TLS_CERT_FILE`, `TLS_KEY_FILE` and `TLS_CA_FILE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The node's certificate chain (PEM), first the node's own.
    pub cert: PathBuf,
    /// The node's private key (PEM).
    pub key: PathBuf,
    /// The cluster's CA (PEM): peers' certificates must chain to it.
    pub ca: PathBuf,
}

/// Why the TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{setting} {path}: {reason}")]
pub struct TlsError {
    setting: &'static str,
    path: String,
    reason: String,
}

fn error(setting: &'static str, path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError { setting, path: path.display().to_string(), reason: reason.to_string() }
}

/// The loaded TLS set-up of a node.
#[derive(Clone)]
pub struct Tls {
    /// Accepts HTTPS connections; a client certificate is asked for, verified against the
    /// CA when given, and optional (clients of the public API need none).
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// The CA in PEM, which the node's own calls to peers trust (and nothing else).
    pub ca_pem: Vec<u8>,
    /// The node's certificate chain and key in PEM, presented as its client certificate.
    pub identity_pem: Vec<u8>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads and checks the three files.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let read = |setting, path: &Path| std::fs::read(path).map_err(|e| error(setting, path, e));
        let cert_pem = read("TLS_CERT_FILE", &files.cert)?;
        let key_pem = read("TLS_KEY_FILE", &files.key)?;
        let ca_pem = read("TLS_CA_FILE", &files.ca)?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| error("TLS_CERT_FILE", &files.cert, format!("not PEM certificates: {e}")))?;
        if chain.is_empty() {
            return Err(error("TLS_CERT_FILE", &files.cert, "holds no certificate"));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| error("TLS_KEY_FILE", &files.key, format!("no PEM private key: {e}")))?;
        let mut roots = RootCertStore::empty();
        let mut count = 0;
        for cert in CertificateDer::pem_slice_iter(&ca_pem) {
            let cert = cert.map_err(|e| error("TLS_CA_FILE", &files.ca, format!("not PEM: {e}")))?;
            roots.add(cert).map_err(|e| error("TLS_CA_FILE", &files.ca, e))?;
            count += 1;
        }
        if count == 0 {
            return Err(error("TLS_CA_FILE", &files.ca, "holds no certificate"));
        }
        // ring, not aws-lc-rs: it builds without cmake in a fraction of the time, and it is
        // what the HTTP client's TLS uses too. Its key exchange lacks the post-quantum
        // hybrid, which is why rustls marks it deprecated; X25519 and the NIST curves stay.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| error("TLS_CA_FILE", &files.ca, e))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| error("TLS_CERT_FILE", &files.cert, e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| error("TLS_KEY_FILE", &files.key, format!("does not fit the certificate: {e}")))?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut identity_pem = key_pem;
        identity_pem.push(b'\n');
        identity_pem.extend_from_slice(&cert_pem);
        Ok(Self { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)), ca_pem, identity_pem })
    }
}
