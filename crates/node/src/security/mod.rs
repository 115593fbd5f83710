//! Who may talk to a node, and as whom.
//!
//! Two kinds of callers reach a node's port: its peers (node-to-node calls under `/raft/*`,
//! and a few public reads they make of each other) and clients (`/v1`, `/metrics`).
//! - **Peers** prove they are members with a client certificate that chains to the cluster's
//!   CA (`TLS_*`), or, without TLS, with the shared `CLUSTER_SECRET` in a header.
//! - **Clients** present `Authorization: Bearer <token>` when `AUTH_TOKENS_FILE` is set; the
//!   token names a [`Principal`] with a [`Role`]. [`guard::authorize`] checks each request
//!   against [`access`] and hands the principal to the handlers, which bind lock holds to it.

pub mod guard;
pub mod tls;
pub mod tokens;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use axum::http::Method;

pub use tls::{Tls, TlsFiles};
pub use tokens::{TokenSet, TokenStore};

/// Header that carries the cluster secret on node-to-node calls without TLS.
pub const SECRET_HEADER: &str = "x-sinkron-cluster-secret";
/// Header with which a node that passes a client's request on names the client's principal
/// (believed only from an authenticated peer).
pub const PRINCIPAL_HEADER: &str = "x-sinkron-principal";

/// What a principal may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// GET requests only.
    Read,
    /// Key-value, cache, locks and queues.
    Write,
    /// Everything: membership, force-release, debug endpoints.
    Admin,
}

impl Role {
    /// The role's name in tokens files and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Self::Read),
            "write" => Ok(Self::Write),
            "admin" => Ok(Self::Admin),
            other => Err(format!("unknown role {other:?}: use admin, write or read")),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Its name from the tokens file (or the node's, for a peer).
    pub name: String,
    /// What it may do.
    pub role: Role,
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.role.as_str())
    }
}

/// What a request needs before it reaches its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Probes and the API document: anyone.
    Open,
    /// Node-to-node calls: only an authenticated peer.
    Peers,
    /// A principal with at least this role (when tokens are checked).
    Needs(Role),
}

/// What `method path` needs. Paths are classified by their segments exactly as the router
/// matches them, so no spelling of a path reaches an admin handler as a smaller role.
pub fn access(method: &Method, path: &str) -> Access {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let reading = method == Method::GET || method == Method::HEAD;
    match segments.as_slice() {
        // The dashboard's page, script and style hold no data; its calls need tokens.
        ["health"] | ["ready"] | ["openapi.json"] | ["ui", ..] => Access::Open,
        ["raft", ..] => Access::Peers,
        ["metrics"] => Access::Needs(Role::Read),
        ["v1", "debug", ..] => Access::Needs(Role::Admin),
        // A backup holds every value, lock owner and message receipt.
        ["v1", "snapshot", ..] => Access::Needs(Role::Admin),
        ["v1", "cluster", "members", ..] if !reading => Access::Needs(Role::Admin),
        ["v1", "locks", _, "force-release"] => Access::Needs(Role::Admin),
        _ if reading => Access::Needs(Role::Read),
        _ => Access::Needs(Role::Write),
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Settings of a node's security, as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecuritySettings {
    /// Serve HTTPS and authenticate peers by certificate.
    pub tls: Option<TlsFiles>,
    /// The shared secret of node-to-node calls.
    pub cluster_secret: Option<String>,
    /// Principals of the clients.
    pub tokens_file: Option<PathBuf>,
    /// The operator accepts an unprotected node on a non-loopback address.
    pub insecure: bool,
}

/// A node's loaded security: what it accepts and what it presents.
#[derive(Debug, Clone)]
pub struct Security {
    /// HTTPS and peer certificates, when configured.
    pub tls: Option<Tls>,
    /// The cluster secret, when configured.
    pub cluster_secret: Option<Arc<[u8]>>,
    /// The clients' principals, when configured.
    pub tokens: Option<TokenStore>,
    /// This node's name, the principal of what a peer asks on its own behalf.
    pub node_name: String,
}

/// Why the security settings cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A TLS file is missing or unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The tokens file is missing or unusable.
    #[error(transparent)]
    Tokens(#[from] tokens::TokensError),
}

impl Security {
    /// Loads what `settings` name.
    pub fn load(settings: &SecuritySettings, node_name: &str) -> Result<Self, SecurityError> {
        let tls = settings.tls.as_ref().map(Tls::load).transpose()?;
        let tokens = settings.tokens_file.as_deref().map(TokenStore::open).transpose()?;
        Ok(Self {
            tls,
            cluster_secret: settings.cluster_secret.as_ref().map(|s| Arc::from(s.as_bytes())),
            tokens,
            node_name: node_name.to_string(),
        })
    }

    /// Whether peers must prove who they are (TLS or a secret is configured).
    pub fn peers_authenticate(&self) -> bool {
        self.tls.is_some() || self.cluster_secret.is_some()
    }

    /// Whether a request from a connection that did (or did not) present a verified client
    /// certificate, with these `headers`, comes from a peer.
    pub fn is_peer(&self, verified_certificate: bool, headers: &axum::http::HeaderMap) -> bool {
        if !self.peers_authenticate() {
            return false;
        }
        if self.tls.is_some() && !verified_certificate {
            return false;
        }
        match &self.cluster_secret {
            None => true,
            Some(secret) => {
                headers.get(SECRET_HEADER).is_some_and(|given| constant_time_eq(given.as_bytes(), secret))
            }
        }
    }

    /// The scheme of this node's calls to its peers.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// Whether a bind address only accepts connections from this machine.
pub fn is_loopback_bind(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_need_the_role_their_handler_demands() {
        let cases = [
            (Method::GET, "/health", Access::Open),
            (Method::GET, "/ready", Access::Open),
            (Method::POST, "/raft/0/append", Access::Peers),
            (Method::POST, "/raft/batch", Access::Peers),
            (Method::GET, "/metrics", Access::Needs(Role::Read)),
            (Method::GET, "/v1/kv/a", Access::Needs(Role::Read)),
            (Method::PUT, "/v1/kv/a", Access::Needs(Role::Write)),
            (Method::POST, "/v1/queues/q/receive", Access::Needs(Role::Write)),
            (Method::GET, "/v1/cluster", Access::Needs(Role::Read)),
            (Method::GET, "/v1/cluster/members", Access::Needs(Role::Read)),
            (Method::POST, "/v1/cluster/members", Access::Needs(Role::Admin)),
            (Method::DELETE, "/v1/cluster/members/node4", Access::Needs(Role::Admin)),
            (Method::POST, "/v1/locks/x/force-release", Access::Needs(Role::Admin)),
            (Method::POST, "/v1/locks/force-release/acquire", Access::Needs(Role::Write)),
            (Method::POST, "/v1/debug/isolate", Access::Needs(Role::Admin)),
            (Method::GET, "/v1/debug/anything", Access::Needs(Role::Admin)),
            (Method::GET, "/nowhere", Access::Needs(Role::Read)),
            (Method::POST, "/nowhere", Access::Needs(Role::Write)),
        ];
        for (method, path, want) in cases {
            assert_eq!(access(&method, path), want, "{method} {path}");
        }
    }

    #[test]
    fn secrets_compare_by_content_only() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn loopback_binds() {
        for host in ["127.0.0.1", "127.0.0.5", "::1", "[::1]", "localhost"] {
            assert!(is_loopback_bind(host), "{host}");
        }
        for host in ["0.0.0.0", "::", "10.0.0.1", "node1", "example.org"] {
            assert!(!is_loopback_bind(host), "{host}");
        }
    }

    #[test]
    fn peers_are_told_by_certificate_and_secret() {
        let mut headers = axum::http::HeaderMap::new();
        let open = Security { tls: None, cluster_secret: None, tokens: None, node_name: "n1".into() };
        assert!(!open.is_peer(true, &headers), "nothing to check: nobody is a proven peer");
        let secret = Security { cluster_secret: Some(Arc::from(&b"s3cret-s3cret"[..])), ..open.clone() };
        assert!(!secret.is_peer(false, &headers));
        headers.insert(SECRET_HEADER, "wrong".parse().expect("header"));
        assert!(!secret.is_peer(false, &headers));
        headers.insert(SECRET_HEADER, "s3cret-s3cret".parse().expect("header"));
        assert!(secret.is_peer(false, &headers));
    }
}
