//! Typed async HTTP client for Sinkron.
//!
//! The only crate that knows the API's URLs from the outside. Used by the `sinkron` CLI, the
//! benchmarks and the cluster tests. Every call has a timeout; API errors come back as
//! [`ClientError::Api`] with the server's stable code.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached or the exchange failed.
    #[error("request to {url} failed: {source}")]
    Transport {
        /// The URL called.
        url: String,
        /// The underlying error.
        source: reqwest::Error,
    },
    /// The server answered with an error.
    #[error("{status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable error code, such as `no_quorum`.
        code: String,
        /// Explanation.
        message: String,
    },
    /// The server's answer could not be decoded.
    #[error("unexpected answer from {url}: {reason}")]
    Decode {
        /// The URL called.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

impl ClientError {
    /// The stable error code of an API error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A member as the cluster reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberStatus {
    /// Node name.
    pub id: String,
    /// `host:port`.
    pub addr: String,
    /// `voter` or `learner`.
    pub role: String,
}

/// The leader as the cluster reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaderStatus {
    /// Node name.
    pub id: String,
    /// `host:port`.
    pub addr: String,
}

/// `GET /v1/cluster`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The answering node.
    pub node_id: String,
    /// Its role.
    pub role: String,
    /// Its term.
    pub term: u64,
    /// The leader it knows.
    pub leader: Option<LeaderStatus>,
    /// Members.
    pub members: Vec<MemberStatus>,
    /// Commit index.
    pub commit_index: u64,
    /// Applied index.
    pub applied_index: u64,
    /// Last log index.
    pub last_log_index: u64,
    /// Last snapshot index.
    pub snapshot_index: Option<u64>,
    /// Whether the node belongs to a formed cluster.
    pub initialized: bool,
}

/// `GET /v1/kv/{key}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KvValue {
    /// Key.
    pub key: String,
    /// Value.
    pub value: serde_json::Value,
    /// Revision of the write that stored it (grows with every write of the cluster).
    pub version: u64,
}

/// `PUT /v1/kv/{key}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PutResult {
    /// Key.
    pub key: String,
    /// Revision of the write (grows with every write of the cluster).
    pub version: u64,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    message: String,
}

/// Longest wait for a membership change.
pub const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(120);

/// A client of one node. Any node serves every endpoint.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client of the node at `endpoint` (`http://host:port` or `host:port`), with a
    /// per-call timeout of ten seconds.
    pub fn new(endpoint: &str) -> Self {
        Self::with_timeout(endpoint, Duration::from_secs(10))
    }

    /// Like [`Client::new`] with another per-call timeout.
    pub fn with_timeout(endpoint: &str, timeout: Duration) -> Self {
        let base = if endpoint.contains("://") { endpoint.to_string() } else { format!("http://{endpoint}") };
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .pool_max_idle_per_host(256)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self { base: base.trim_end_matches('/').to_string(), http }
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &str {
        &self.base
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        url: String,
    ) -> Result<T, ClientError> {
        let resp = req.send().await.map_err(|source| ClientError::Transport { url: url.clone(), source })?;
        let status = resp.status();
        let bytes =
            resp.bytes().await.map_err(|source| ClientError::Transport { url: url.clone(), source })?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => {
                    ClientError::Api { status: status.as_u16(), code: body.error, message: body.message }
                }
                Err(_) => ClientError::Api {
                    status: status.as_u16(),
                    code: "unknown".into(),
                    message: String::from_utf8_lossy(&bytes).into_owned(),
                },
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode { url, reason: e.to_string() })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.get(&url), url).await
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<serde_json::Value, ClientError> {
        self.get("/health").await
    }

    /// `GET /ready`.
    pub async fn ready(&self) -> Result<serde_json::Value, ClientError> {
        self.get("/ready").await
    }

    /// `GET /v1/cluster`.
    pub async fn cluster(&self) -> Result<ClusterStatus, ClientError> {
        self.get("/v1/cluster").await
    }

    /// `POST /v1/cluster/members`. Waits up to [`MEMBERSHIP_TIMEOUT`]: the new node has to
    /// catch up before it becomes a voter.
    pub async fn add_member(&self, id: &str, addr: &str) -> Result<serde_json::Value, ClientError> {
        let url = format!("{}/v1/cluster/members", self.base);
        let body = serde_json::json!({ "id": id, "addr": addr });
        self.send(self.http.post(&url).json(&body).timeout(MEMBERSHIP_TIMEOUT), url).await
    }

    /// `DELETE /v1/cluster/members/{id}`.
    pub async fn remove_member(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        let url = format!("{}/v1/cluster/members/{}", self.base, encode(id));
        self.send(self.http.delete(&url).timeout(MEMBERSHIP_TIMEOUT), url).await
    }

    /// `PUT /v1/kv/{key}`.
    pub async fn kv_put(&self, key: &str, value: serde_json::Value) -> Result<PutResult, ClientError> {
        let url = format!("{}/v1/kv/{}", self.base, encode(key));
        let body = serde_json::json!({ "value": value });
        self.send(self.http.put(&url).json(&body), url).await
    }

    /// `GET /v1/kv/{key}` (linearizable); `None` when the key does not exist.
    pub async fn kv_get(&self, key: &str) -> Result<Option<KvValue>, ClientError> {
        self.kv_get_with(key, "linearizable").await
    }

    /// `GET /v1/kv/{key}?consistency=...`.
    pub async fn kv_get_with(&self, key: &str, consistency: &str) -> Result<Option<KvValue>, ClientError> {
        match self.get(&format!("/v1/kv/{}?consistency={consistency}", encode(key))).await {
            Ok(v) => Ok(Some(v)),
            Err(ClientError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `DELETE /v1/kv/{key}`.
    pub async fn kv_delete(&self, key: &str) -> Result<serde_json::Value, ClientError> {
        let url = format!("{}/v1/kv/{}", self.base, encode(key));
        self.send(self.http.delete(&url), url).await
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let url = format!("{}/metrics", self.base);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|source| ClientError::Transport { url: url.clone(), source })?;
        resp.text().await.map_err(|source| ClientError::Transport { url, source })
    }
}

/// Percent-encodes a path segment.
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode("plain-key_1.x~"), "plain-key_1.x~");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
        assert_eq!(encode("ü"), "%C3%BC");
    }

    #[test]
    fn endpoints_accept_host_port() {
        assert_eq!(Client::new("127.0.0.1:8001").endpoint(), "http://127.0.0.1:8001");
        assert_eq!(Client::new("http://h:1/").endpoint(), "http://h:1");
    }
}
