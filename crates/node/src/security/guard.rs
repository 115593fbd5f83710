//! The request check in front of every handler: who is calling, and may it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{access, Access, Principal, Role, Security, PRINCIPAL_HEADER};
use crate::error::NodeError;

/// What the server knows of a request's connection (set by the accept loop).
#[derive(Debug, Clone, Copy, Default)]
pub struct Connection {
    /// The client presented a certificate that chains to the cluster's CA.
    pub verified_certificate: bool,
    /// The remote address.
    pub remote: Option<SocketAddr>,
}

/// Writes one audit line: who did (or was refused) what, on what.
pub fn audit(principal: &str, action: &str, target: &str, outcome: &str) {
    tracing::info!(target: "sinkron::audit", principal, action, target, outcome, "audit");
}

/// Authenticates the caller, checks its role against [`access`], and hands the
/// [`Principal`] to the handler as a request extension (when tokens are checked).
pub async fn authorize(mut req: Request, next: Next) -> Response {
    let Some(security) = req.extensions().get::<Arc<Security>>().cloned() else {
        return next.run(req).await;
    };
    // Nothing to check (a node on loopback without secret or tokens): every caller is let in.
    if !security.peers_authenticate() && security.tokens.is_none() {
        return next.run(req).await;
    }
    let connection = req.extensions().get::<Connection>().copied().unwrap_or_default();
    let peer = security.is_peer(connection.verified_certificate, req.headers());
    // Named only in refusals and audit lines, so a request let in formats nothing.
    let remote = || connection.remote.map_or_else(|| "unknown".into(), |a| a.to_string());
    let what = |req: &Request| format!("{} {}", req.method(), req.uri().path());
    match access(req.method(), req.uri().path()) {
        Access::Open => next.run(req).await,
        Access::Peers if peer || !security.peers_authenticate() => next.run(req).await,
        Access::Peers => {
            audit(&remote(), "node-to-node call", &what(&req), "refused: not a cluster member");
            let how = if security.tls.is_some() {
                "a client certificate signed by the cluster's CA (TLS_CA_FILE)"
            } else {
                "the cluster secret (CLUSTER_SECRET)"
            };
            NodeError::Unauthenticated(format!("node-to-node calls need {how}")).into_response()
        }
        Access::Needs(role) => {
            let Some(tokens) = &security.tokens else { return next.run(req).await };
            let principal = if peer {
                Some(forwarded_principal(&req).unwrap_or_else(|| Principal {
                    name: format!("peer-of-{}", security.node_name),
                    role: Role::Admin,
                }))
            } else {
                bearer(&req).and_then(|token| tokens.current().lookup(token.as_bytes()))
            };
            let Some(principal) = principal else {
                let reason = if bearer(&req).is_some() { "unknown token" } else { "no token" };
                audit(&remote(), "authenticate", &what(&req), &format!("refused: {reason}"));
                return NodeError::Unauthenticated(format!(
                    "{reason}: send Authorization: Bearer <token> with a token from AUTH_TOKENS_FILE"
                ))
                .into_response();
            };
            if principal.role < role {
                let what = what(&req);
                audit(&principal.name, "authorize", &what, "refused: role too small");
                return NodeError::PermissionDenied(format!(
                    "{principal} may not {what}: it needs the {} role",
                    role.as_str()
                ))
                .into_response();
            }
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
    }
}

/// The token of an `Authorization: Bearer` header.
fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// The principal a peer names for a client's request it passes on (`name:role`).
fn forwarded_principal(req: &Request) -> Option<Principal> {
    let value = req.headers().get(PRINCIPAL_HEADER)?.to_str().ok()?;
    let (name, role) = value.rsplit_once(':')?;
    Some(Principal { name: name.to_string(), role: role.parse().ok()? })
}

/// The header value with which a peer passes `principal` on.
pub fn forwarded_header(principal: &Principal) -> String {
    format!("{}:{}", principal.name, principal.role.as_str())
}
