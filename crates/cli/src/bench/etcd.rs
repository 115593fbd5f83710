//! etcd as an anchor for `sinkron bench write --target etcd`: puts and linearizable reads
//! through etcd's own HTTP/JSON gateway (`POST /v3/kv/put`, `POST /v3/kv/range`), sent by
//! the same load loop, HTTP library and connection settings as the Sinkron client, so the
//! two are measured the same way.

use std::time::Duration;

/// One etcd member's client endpoint.
#[derive(Clone)]
pub(super) struct EtcdNode {
    http: reqwest::Client,
    base: String,
}

impl EtcdNode {
    /// A client of every endpoint of `endpoints` (`host:port` or URLs), one HTTP client
    /// shared by all, built like the Sinkron client's.
    pub(super) fn connect(endpoints: &str) -> anyhow::Result<Vec<Self>> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .pool_max_idle_per_host(256)
            .pool_idle_timeout(Duration::from_secs(4))
            .build()?;
        let nodes: Vec<Self> = endpoints
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| Self {
                http: http.clone(),
                base: if e.contains("://") {
                    e.trim_end_matches('/').to_string()
                } else {
                    format!("http://{e}")
                },
            })
            .collect();
        anyhow::ensure!(!nodes.is_empty(), "--endpoints is empty");
        Ok(nodes)
    }

    /// `PUT key value`, answered once a majority has it (etcd's default).
    pub(super) async fn put(&self, key: &str, value: &[u8]) -> Result<(), String> {
        let body = serde_json::json!({ "key": base64(key.as_bytes()), "value": base64(value) });
        self.call("/v3/kv/put", &body).await
    }

    /// A linearizable read of `key` (etcd's default, `serializable: false`).
    pub(super) async fn get(&self, key: &str) -> Result<(), String> {
        self.call("/v3/kv/range", &serde_json::json!({ "key": base64(key.as_bytes()) })).await
    }

    async fn call(&self, path: &str, body: &serde_json::Value) -> Result<(), String> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)))
        }
    }
}

/// Standard base64 with padding, as etcd's gateway takes keys and values.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"bench-1-2"), "YmVuY2gtMS0y");
    }
}
