//! [`PeerHttp`]: the one pooled HTTP client of a node's calls to its peers, with what
//! proves the node a member (the cluster secret, or its certificate) and the scheme.

use std::time::Duration;

/// Builds the HTTP client used for every node-to-node call. With a specific `source`
/// address (the node binds one IP rather than all), calls leave from it, so peers and
/// network tools can tell the nodes of one host apart.
pub fn http_client(
    source: Option<std::net::IpAddr>,
    pool_idle: Duration,
    security: &crate::security::Security,
) -> anyhow::Result<PeerHttp> {
    let mut builder = reqwest::Client::builder()
        .local_address(source)
        .connect_timeout(Duration::from_millis(500))
        .pool_idle_timeout(pool_idle)
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true);
    if let Some(secret) = &security.cluster_secret {
        let mut value = reqwest::header::HeaderValue::from_bytes(secret)?;
        value.set_sensitive(true);
        let headers = reqwest::header::HeaderMap::from_iter([(
            reqwest::header::HeaderName::from_static(crate::security::SECRET_HEADER),
            value,
        )]);
        builder = builder.default_headers(headers);
    }
    if let Some(tls) = &security.tls {
        // Peers are trusted through the cluster's CA alone, and shown this node's certificate.
        builder = builder
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&tls.ca_pem)?)
            .identity(reqwest::Identity::from_pem(&tls.identity_pem)?)
            .https_only(true);
    }
    Ok(PeerHttp { client: builder.build()?, scheme: security.scheme() })
}

/// The pooled HTTP client of a node's calls to its peers, and their scheme.
#[derive(Debug, Clone)]
pub struct PeerHttp {
    /// Carries the cluster secret or presents the node's certificate on every call.
    pub client: reqwest::Client,
    scheme: &'static str,
}

impl PeerHttp {
    /// The URL of `path` (with its leading `/`) at the peer at `addr`.
    pub fn url(&self, addr: &str, path: &str) -> String {
        format!("{}://{addr}{path}", self.scheme)
    }
}
