//! Typed async HTTP client for Sinkron.
//!
//! [`Client::lock`] returns a [`LockGuard`] that keeps its lease alive in the background and
//! releases the lock when dropped.
//!
//! The only crate that knows the API's URLs from the outside. Used by the `sinkron` CLI, the
//! benchmarks and the cluster tests. Every call has a timeout; API errors come back as
//! [`ClientError::Api`] with the server's stable code.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;

mod types;

pub use types::*;
use types::{ErrorBody, ReceiveAnswer, SentBatch};

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
    /// The client's own settings are unusable (a bad CA file or token).
    #[error("{0}")]
    Config(String),
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

/// What a client presents to the nodes.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Sent as `Authorization: Bearer <token>` (nodes with `AUTH_TOKENS_FILE`).
    pub token: Option<String>,
    /// The CA (PEM) that `https://` endpoints' certificates must chain to.
    pub ca_pem: Option<Vec<u8>>,
}

/// The error a node answered with `status` and `body` (our JSON, or whatever came).
fn api_error(status: u16, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(body) => ClientError::Api { status, code: body.error, message: body.message },
        Err(_) => ClientError::Api {
            status,
            code: "unknown".into(),
            message: String::from_utf8_lossy(body).into_owned(),
        },
    }
}

/// Points `url` at the scheme, host and port of `base`.
fn rebase(url: &mut reqwest::Url, base: &reqwest::Url) {
    let _ = url.set_scheme(base.scheme());
    let _ = url.set_host(base.host_str());
    let _ = url.set_port(base.port_or_known_default());
}

fn base_url(endpoint: &str) -> String {
    let base = if endpoint.contains("://") { endpoint.to_string() } else { format!("http://{endpoint}") };
    base.trim_end_matches('/').to_string()
}

/// A client of one node, or of several with failover ([`Client::connect_many`]). Any node
/// serves every endpoint.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    /// With more than one endpoint: the nodes to fail over between, and which one is
    /// used now.
    failover: Option<Arc<Failover>>,
}

/// The endpoints of a cluster client and how long it keeps retrying one call.
#[derive(Debug)]
struct Failover {
    bases: Vec<reqwest::Url>,
    current: std::sync::atomic::AtomicUsize,
    within: Duration,
}

/// Longest pause a retry honours from `Retry-After`.
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(2);

impl Client {
    /// A client of the node at `endpoint` (`http://host:port` or `host:port`), with a
    /// per-call timeout of ten seconds.
    pub fn new(endpoint: &str) -> Self {
        Self::with_timeout(endpoint, Duration::from_secs(10))
    }

    /// Like [`Client::new`] with another per-call timeout.
    pub fn with_timeout(endpoint: &str, timeout: Duration) -> Self {
        Self::connect(endpoint, timeout, &Credentials::default()).unwrap_or_else(|_| Self {
            base: base_url(endpoint),
            http: reqwest::Client::new(),
            failover: None,
        })
    }

    /// A client of the node at `endpoint` (`host:port`, `http://host:port` or
    /// `https://host:port`) that sends `credentials` with every call.
    pub fn connect(
        endpoint: &str,
        timeout: Duration,
        credentials: &Credentials,
    ) -> Result<Self, ClientError> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .pool_max_idle_per_host(256)
            // Below a node's default head timeout (10 s), which closes idle connections:
            // a request never goes out on a connection the node is closing.
            .pool_idle_timeout(Duration::from_secs(4));
        if let Some(token) = &credentials.token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::Config("the token must be printable ASCII".into()))?;
            value.set_sensitive(true);
            builder = builder.default_headers(reqwest::header::HeaderMap::from_iter([(
                reqwest::header::AUTHORIZATION,
                value,
            )]));
        }
        if let Some(pem) = &credentials.ca_pem {
            let ca = reqwest::Certificate::from_pem(pem)
                .map_err(|e| ClientError::Config(format!("the CA certificate is not PEM: {e}")))?;
            builder = builder.use_rustls_tls().tls_built_in_root_certs(false).add_root_certificate(ca);
        }
        let http =
            builder.build().map_err(|e| ClientError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { base: base_url(endpoint), http, failover: None })
    }

    /// A client of a whole cluster: each call goes to the endpoint in use and moves on to
    /// the next when a node cannot be reached; a `503` is retried after its `Retry-After`
    /// (at most 2 s), on the next endpoint, until `timeout` has passed. A retry sends the
    /// very same request, so a write with a `request_id` (this client's key-value writes
    /// and single queue sends always carry one) applies once. Batch sends, acks and nacks
    /// carry none: a batch retried after a `503` may be stored twice. A connection that
    /// breaks before its answer is retried for reads, puts and deletes only.
    pub fn connect_many(
        endpoints: &[&str],
        timeout: Duration,
        credentials: &Credentials,
    ) -> Result<Self, ClientError> {
        let first = endpoints.first().ok_or_else(|| ClientError::Config("no endpoints".into()))?;
        let mut client = Self::connect(first, timeout, credentials)?;
        let bases = endpoints
            .iter()
            .map(|e| {
                reqwest::Url::parse(&base_url(e))
                    .map_err(|err| ClientError::Config(format!("endpoint {e:?}: {err}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        client.failover = Some(Arc::new(Failover {
            bases,
            current: std::sync::atomic::AtomicUsize::new(0),
            within: timeout,
        }));
        Ok(client)
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
        let bytes = self.send_raw(req, &url).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode { url, reason: e.to_string() })
    }

    /// Sends `req` and returns the body of a success, or the server's error.
    async fn send_raw(&self, req: reqwest::RequestBuilder, url: &str) -> Result<Vec<u8>, ClientError> {
        let transport = |source| ClientError::Transport { url: url.to_string(), source };
        let resp = match &self.failover {
            None => req.send().await.map_err(transport)?,
            Some(failover) => self.send_with_failover(req, failover).await.map_err(transport)?,
        };
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(transport)?;
        if !status.is_success() {
            return Err(api_error(status.as_u16(), &bytes));
        }
        Ok(bytes.to_vec())
    }

    /// Sends `req` to the endpoint in use, moving to the next one when a node cannot be
    /// reached or answers `503`, until the failover window has passed.
    async fn send_with_failover(
        &self,
        req: reqwest::RequestBuilder,
        failover: &Failover,
    ) -> Result<reqwest::Response, reqwest::Error> {
        use std::sync::atomic::Ordering;
        let request = req.build()?;
        let resendable = matches!(
            *request.method(),
            reqwest::Method::GET | reqwest::Method::HEAD | reqwest::Method::PUT | reqwest::Method::DELETE
        );
        let deadline = std::time::Instant::now() + failover.within;
        let count = failover.bases.len();
        loop {
            let index = failover.current.load(Ordering::Relaxed) % count;
            let mut attempt = request
                .try_clone()
                .unwrap_or_else(|| reqwest::Request::new(request.method().clone(), request.url().clone()));
            rebase(attempt.url_mut(), &failover.bases[index]);
            let next = || {
                let _ = failover.current.compare_exchange(
                    index,
                    (index + 1) % count,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            };
            match self.http.execute(attempt).await {
                // Never sent: safe to send elsewhere.
                Err(e) if e.is_connect() && std::time::Instant::now() < deadline => next(),
                // The connection broke before an answer (a pooled connection to a node that
                // just died): a read, or a put or delete (whose request id makes a second
                // copy apply once), may go again; a POST (a lock or queue operation) may not.
                Err(e) if resendable && !e.is_timeout() && std::time::Instant::now() < deadline => next(),
                Err(e) => return Err(e),
                Ok(resp) if resp.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                    let pause = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                        .map_or(Duration::from_millis(200), Duration::from_secs)
                        .min(RETRY_PAUSE_MAX);
                    if std::time::Instant::now() + pause >= deadline {
                        return Ok(resp);
                    }
                    next();
                    tokio::time::sleep(pause).await;
                }
                Ok(resp) => return Ok(resp),
            }
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.get(&url), url).await
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.get("/health").await
    }

    /// `GET /ready`.
    pub async fn ready(&self) -> Result<Readiness, ClientError> {
        self.get("/ready").await
    }

    /// `GET /v1/cluster`.
    pub async fn cluster(&self) -> Result<ClusterStatus, ClientError> {
        self.get("/v1/cluster").await
    }

    /// `POST /v1/cluster/members`. Waits up to [`MEMBERSHIP_TIMEOUT`]: the new node has to
    /// catch up before it becomes a voter.
    pub async fn add_member(&self, id: &str, addr: &str) -> Result<MembershipChanged, ClientError> {
        let url = format!("{}/v1/cluster/members", self.base);
        let body = serde_json::json!({ "id": id, "addr": addr });
        self.send(self.http.post(&url).json(&body).timeout(MEMBERSHIP_TIMEOUT), url).await
    }

    /// `DELETE /v1/cluster/members/{id}`.
    pub async fn remove_member(&self, id: &str) -> Result<MembershipChanged, ClientError> {
        let url = format!("{}/v1/cluster/members/{}", self.base, encode(id));
        self.send(self.http.delete(&url).timeout(MEMBERSHIP_TIMEOUT), url).await
    }

    /// `PUT /v1/kv/{key}`.
    pub async fn kv_put(&self, key: &str, value: serde_json::Value) -> Result<PutResult, ClientError> {
        self.kv_put_with(key, value, &WriteOptions::default()).await
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
    pub async fn kv_delete(&self, key: &str) -> Result<DeleteResult, ClientError> {
        self.kv_delete_with(key, &WriteOptions::default()).await
    }

    /// `PUT /v1/kv/{key}` with a compare-and-set version, a fence or a request id. A
    /// refused condition is `ClientError::Api` with code `version_mismatch` or `stale_fence`.
    pub async fn kv_put_with(
        &self,
        key: &str,
        value: serde_json::Value,
        options: &WriteOptions,
    ) -> Result<PutResult, ClientError> {
        let url = format!("{}/v1/kv/{}", self.base, encode(key));
        let mut body = serde_json::to_value(options).unwrap_or_default();
        body["value"] = value;
        if options.request_id.is_none() {
            body["request_id"] = serde_json::Value::String(new_request_id());
        }
        self.send(self.http.put(&url).json(&body), url).await
    }

    /// `DELETE /v1/kv/{key}` with a compare-and-set version, a fence or a request id.
    pub async fn kv_delete_with(
        &self,
        key: &str,
        options: &WriteOptions,
    ) -> Result<DeleteResult, ClientError> {
        let id = options.request_id.clone().unwrap_or_else(new_request_id);
        let url = format!("{}/v1/kv/{}?request_id={}", self.base, encode(key), encode(&id));
        let body = serde_json::json!({ "if_version": options.if_version, "fence": options.fence });
        self.send(self.http.delete(&url).json(&body), url).await
    }

    /// `GET /v1/kv/{key}?wait_version=N&wait_ms=M`: the key once its version is above
    /// `after` (or it was deleted after it), or after `wait_ms` as it is then.
    pub async fn kv_get_after(
        &self,
        key: &str,
        after: u64,
        wait_ms: u64,
    ) -> Result<Option<KvValue>, ClientError> {
        let url = format!("{}/v1/kv/{}?wait_version={after}&wait_ms={wait_ms}", self.base, encode(key));
        let req = self.http.get(&url).timeout(Duration::from_millis(wait_ms) + Duration::from_secs(15));
        match self.send(req, url).await {
            Ok(v) => Ok(Some(v)),
            Err(ClientError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/watch`: the changes under `prefix` after `from_version` (from now when
    /// `None`), as a stream of events. The stream has no timeout of its own.
    pub async fn watch(&self, prefix: &str, from_version: Option<u64>) -> Result<Watch, ClientError> {
        let mut url = format!("{}/v1/watch?prefix={}", self.base, encode(prefix));
        if let Some(v) = from_version {
            url.push_str(&format!("&from_version={v}"));
        }
        // A long-lived stream: no per-call timeout (the client's applies to the whole call).
        let req = self.http.get(&url).timeout(Duration::from_secs(365 * 24 * 3600));
        let resp = req.send().await.map_err(|source| ClientError::Transport { url: url.clone(), source })?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await.unwrap_or_default();
            return Err(api_error(status, &bytes));
        }
        Ok(Watch { resp, buffer: Vec::new(), url })
    }

    /// `POST /v1/locks/{name}/acquire`; waits up to `wait_ms` plus the request timeout.
    pub async fn acquire(&self, name: &str, options: &LockOptions) -> Result<Acquired, ClientError> {
        let url = format!("{}/v1/locks/{}/acquire", self.base, encode(name));
        let wait = Duration::from_millis(options.wait_ms.unwrap_or(0));
        self.send(self.http.post(&url).json(options).timeout(wait + Duration::from_secs(15)), url).await
    }

    /// `POST /v1/locks/{name}/release`.
    pub async fn release(&self, name: &str, client_id: &str) -> Result<Released, ClientError> {
        let url = format!("{}/v1/locks/{}/release", self.base, encode(name));
        self.send(self.http.post(&url).json(&serde_json::json!({ "client_id": client_id })), url).await
    }

    /// `POST /v1/locks/{name}/refresh`.
    pub async fn refresh(
        &self,
        name: &str,
        client_id: &str,
        ttl_ms: Option<u64>,
    ) -> Result<Refreshed, ClientError> {
        let url = format!("{}/v1/locks/{}/refresh", self.base, encode(name));
        let body = serde_json::json!({ "client_id": client_id, "ttl_ms": ttl_ms });
        self.send(self.http.post(&url).json(&body), url).await
    }

    /// `POST /v1/locks/refresh-all`.
    pub async fn refresh_all(
        &self,
        client_id: &str,
        ttl_ms: Option<u64>,
    ) -> Result<RefreshedAll, ClientError> {
        let url = format!("{}/v1/locks/refresh-all", self.base);
        let body = serde_json::json!({ "client_id": client_id, "ttl_ms": ttl_ms });
        self.send(self.http.post(&url).json(&body), url).await
    }

    /// `POST /v1/locks/{name}/force-release`.
    pub async fn force_release(&self, name: &str) -> Result<Released, ClientError> {
        let url = format!("{}/v1/locks/{}/force-release", self.base, encode(name));
        self.send(self.http.post(&url), url).await
    }

    /// `GET /v1/locks/{name}`.
    pub async fn lock_status(&self, name: &str) -> Result<LockState, ClientError> {
        self.get(&format!("/v1/locks/{}", encode(name))).await
    }

    /// `GET /v1/locks`.
    pub async fn locks(&self) -> Result<LockList, ClientError> {
        self.get("/v1/locks").await
    }

    /// `GET /v1/locks/wait-for-graph`.
    pub async fn wait_for_graph(&self) -> Result<WaitForGraph, ClientError> {
        self.get("/v1/locks/wait-for-graph").await
    }

    /// Acquires `name` and returns a guard that refreshes the lease every third of its TTL
    /// and releases the lock when dropped (or through [`LockGuard::release`]).
    pub async fn lock(&self, name: &str, options: LockOptions) -> Result<LockGuard, ClientError> {
        let acquired = self.acquire(name, &options).await?;
        let ttl_ms = options.ttl_ms;
        let lease_ms = acquired.expires_at_ms.saturating_sub(now_ms()).max(300);
        let lost = Arc::new(AtomicBool::new(false));
        let refresher = tokio::spawn(keep_alive(
            self.clone(),
            name.to_string(),
            options.client_id.clone(),
            ttl_ms,
            Duration::from_millis(ttl_ms.unwrap_or(lease_ms) / 3),
            acquired.expires_at_ms,
            lost.clone(),
        ));
        Ok(LockGuard {
            client: self.clone(),
            name: name.to_string(),
            client_id: options.client_id,
            acquired,
            lost,
            refresher: Some(refresher),
        })
    }

    /// `GET /v1/cache/{key}`; `None` when the key has no value.
    pub async fn cache_get(&self, key: &str) -> Result<Option<CacheValue>, ClientError> {
        match self.get(&format!("/v1/cache/{}", encode(key))).await {
            Ok(v) => Ok(Some(v)),
            Err(ClientError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `PUT /v1/cache/{key}`; `durable` stores it before answering.
    pub async fn cache_put(
        &self,
        key: &str,
        value: serde_json::Value,
        durable: bool,
    ) -> Result<CacheWritten, ClientError> {
        let url = format!("{}/v1/cache/{}", self.base, encode(key));
        let body = serde_json::json!({ "value": value, "durable": durable });
        self.send(self.http.put(&url).json(&body), url).await
    }

    /// `DELETE /v1/cache/{key}`.
    pub async fn cache_delete(&self, key: &str) -> Result<CacheDeleted, ClientError> {
        let url = format!("{}/v1/cache/{}", self.base, encode(key));
        self.send(self.http.delete(&url), url).await
    }

    /// `GET /v1/cache/{key}/lines`: every node's MESI state of the key.
    pub async fn cache_lines(&self, key: &str) -> Result<KeyLines, ClientError> {
        self.get(&format!("/v1/cache/{}/lines", encode(key))).await
    }

    /// `GET /v1/cache`: this node's cache counters.
    pub async fn cache_stats(&self) -> Result<CacheStats, ClientError> {
        self.get("/v1/cache").await
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.post(&url).json(body), url).await
    }

    /// `POST /v1/queues/{queue}/messages`: sends `body`, ordered by `key` (the queue name when
    /// `None`); answered once stored by a quorum of its partition.
    pub async fn queue_send(
        &self,
        queue: &str,
        body: serde_json::Value,
        key: Option<&str>,
    ) -> Result<SentMessage, ClientError> {
        self.queue_send_idempotent(queue, body, key, &new_request_id()).await
    }

    /// A fenced send: stored only while `fence`'s lock is held with it (and no send with a
    /// newer fence of the lock reached the partition); else `stale_fence`.
    pub async fn queue_send_fenced(
        &self,
        queue: &str,
        body: serde_json::Value,
        key: Option<&str>,
        fence: &Fence,
    ) -> Result<SentMessage, ClientError> {
        let req =
            serde_json::json!({ "body": body, "key": key, "fence": fence, "request_id": new_request_id() });
        self.post(&format!("/v1/queues/{}/messages", encode(queue)), &req).await
    }

    /// Like [`Client::queue_send`] with a `request_id`: a retry with the same id is stored once.
    pub async fn queue_send_idempotent(
        &self,
        queue: &str,
        body: serde_json::Value,
        key: Option<&str>,
        request_id: &str,
    ) -> Result<SentMessage, ClientError> {
        let mut req = serde_json::json!({ "body": body, "request_id": request_id });
        if let Some(key) = key {
            req["key"] = serde_json::Value::String(key.to_string());
        }
        self.post(&format!("/v1/queues/{}/messages", encode(queue)), &req).await
    }

    /// `POST /v1/queues/{queue}/messages/batch`: up to 100 `(body, key)` messages in one call;
    /// one outcome per message (`id` and `partition`, or `error` and `message`).
    pub async fn queue_send_batch(
        &self,
        queue: &str,
        messages: &[(serde_json::Value, Option<String>)],
    ) -> Result<Vec<SendOutcome>, ClientError> {
        let messages: Vec<serde_json::Value> = messages
            .iter()
            .map(|(body, key)| match key {
                Some(key) => serde_json::json!({ "body": body, "key": key }),
                None => serde_json::json!({ "body": body }),
            })
            .collect();
        let req = serde_json::json!({ "messages": messages });
        let got: SentBatch = self.post(&format!("/v1/queues/{}/messages/batch", encode(queue)), &req).await?;
        Ok(got.messages)
    }

    /// `POST /v1/queues/{queue}/ack` with up to 100 receipts; answers how many were acked
    /// and the failures (`receipt`, `error`, `message`).
    pub async fn queue_ack_many(&self, queue: &str, receipts: &[String]) -> Result<Acked, ClientError> {
        let req = serde_json::json!({ "receipts": receipts });
        self.post(&format!("/v1/queues/{}/ack", encode(queue)), &req).await
    }

    /// `POST /v1/queues/{queue}/receive`.
    pub async fn queue_receive(
        &self,
        queue: &str,
        options: &ReceiveOptions,
    ) -> Result<Vec<Delivered>, ClientError> {
        let req = serde_json::to_value(options).unwrap_or_default();
        let got: ReceiveAnswer = self.post(&format!("/v1/queues/{}/receive", encode(queue)), &req).await?;
        Ok(got.messages)
    }

    /// `POST /v1/queues/{queue}/receive` with `ack`: acknowledges `receipts` (earlier
    /// deliveries of `queue`) and receives, in one call whose acks and receive are proposed
    /// at the same time. Answers the deliveries and the outcome of the acks.
    pub async fn queue_receive_acking(
        &self,
        queue: &str,
        options: &ReceiveOptions,
        receipts: &[String],
    ) -> Result<(Vec<Delivered>, Acked), ClientError> {
        let mut req = serde_json::to_value(options).unwrap_or_default();
        if let Some(body) = req.as_object_mut() {
            body.insert("ack".into(), serde_json::json!(receipts));
        }
        let got: ReceiveAnswer = self.post(&format!("/v1/queues/{}/receive", encode(queue)), &req).await?;
        let acked = Acked { acked: got.acked.unwrap_or(0), failed: got.failed.unwrap_or_default() };
        Ok((got.messages, acked))
    }

    /// `POST /v1/queues/{queue}/ack`.
    pub async fn queue_ack(&self, queue: &str, receipt: &str) -> Result<Acked, ClientError> {
        let req = serde_json::json!({ "receipt": receipt });
        self.post(&format!("/v1/queues/{}/ack", encode(queue)), &req).await
    }

    /// `POST /v1/queues/{queue}/nack`; answers whether the message went to the dead-letter
    /// queue.
    pub async fn queue_nack(&self, queue: &str, receipt: &str, delay_ms: u64) -> Result<bool, ClientError> {
        let req = serde_json::json!({ "receipt": receipt, "delay_ms": delay_ms });
        let got: serde_json::Value = self.post(&format!("/v1/queues/{}/nack", encode(queue)), &req).await?;
        Ok(got.get("dead_lettered").and_then(|v| v.as_bool()).unwrap_or(false))
    }

    /// `GET /v1/queues/{queue}`: ready, in flight and dead letters, per partition.
    pub async fn queue_stats(&self, queue: &str) -> Result<QueueStats, ClientError> {
        self.get(&format!("/v1/queues/{}", encode(queue))).await
    }

    /// `GET /v1/queues`: every queue that holds messages, with its counts.
    pub async fn queues(&self) -> Result<QueueList, ClientError> {
        self.get("/v1/queues").await
    }

    /// `GET /v1/cluster/nodes`: every member's own status, readiness and cache counters.
    pub async fn cluster_nodes(&self) -> Result<NodesOverview, ClientError> {
        self.get("/v1/cluster/nodes").await
    }

    /// `GET /v1/snapshot/group0`: group 0's whole state at one log id (admin; a backup's
    /// first part).
    pub async fn snapshot_group0(&self) -> Result<serde_json::Value, ClientError> {
        self.get("/v1/snapshot/group0").await
    }

    /// `GET /v1/snapshot/partitions/{partition}`: a queue partition's whole state (admin).
    pub async fn snapshot_partition(&self, partition: u32) -> Result<serde_json::Value, ClientError> {
        self.get(&format!("/v1/snapshot/partitions/{partition}")).await
    }

    /// `GET /v1/ring`: virtual nodes and partition placements.
    pub async fn ring(&self) -> Result<Ring, ClientError> {
        self.get("/v1/ring").await
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let url = format!("{}/metrics", self.base);
        let bytes = self.send_raw(self.http.get(&url), &url).await?;
        String::from_utf8(bytes).map_err(|e| ClientError::Decode { url, reason: e.to_string() })
    }
}

/// An open watch: [`Watch::next`] gives one change at a time.
#[derive(Debug)]
pub struct Watch {
    resp: reqwest::Response,
    buffer: Vec<u8>,
    url: String,
}

impl Watch {
    /// The next change; `Ok(None)` when the node ended the stream (resume with the last
    /// version seen).
    pub async fn next(&mut self) -> Result<Option<WatchEvent>, ClientError> {
        loop {
            // An event ends at a blank line; its `data:` line carries the JSON.
            while let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&block);
                for line in text.lines() {
                    if let Some(data) = line.strip_prefix("data:") {
                        return serde_json::from_str(data.trim_start()).map(Some).map_err(|e| {
                            ClientError::Decode { url: self.url.clone(), reason: e.to_string() }
                        });
                    }
                }
            }
            match self.resp.chunk().await {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk),
                Ok(None) => return Ok(None),
                Err(source) => return Err(ClientError::Transport { url: self.url.clone(), source }),
            }
        }
    }
}

/// A request id no other call of this process uses: retries of a call reuse it, so a
/// write that a node may have applied before it failed applies once.
fn new_request_id() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("rc-{:x}-{:x}-{n:x}", nanos, std::process::id())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Refreshes a lease until the task is aborted or the lease is found lost.
async fn keep_alive(
    client: Client,
    name: String,
    client_id: String,
    ttl_ms: Option<u64>,
    every: Duration,
    mut expires_at_ms: u64,
    lost: Arc<AtomicBool>,
) {
    let every = every.max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(every).await;
        match client.refresh(&name, &client_id, ttl_ms).await {
            Ok(r) => expires_at_ms = r.expires_at_ms,
            Err(ClientError::Api { status: 403 | 404, .. }) => {
                lost.store(true, Ordering::SeqCst);
                return;
            }
            // Transient (no quorum, unreachable): try again at the next tick, but once the
            // last known lease end has passed, the lock must be assumed gone.
            Err(_) if now_ms() >= expires_at_ms => {
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(_) => {}
        }
    }
}

/// A held lock. Dropping it stops the refreshes and releases the lock in the background.
pub struct LockGuard {
    client: Client,
    name: String,
    client_id: String,
    acquired: Acquired,
    lost: Arc<AtomicBool>,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

impl LockGuard {
    /// The fencing token of this grant; hand it to the resource the lock protects.
    pub fn fence(&self) -> u64 {
        self.acquired.fence
    }

    /// The grant as the server answered it.
    pub fn acquired(&self) -> &Acquired {
        &self.acquired
    }

    /// Whether a refresh found the lock no longer held by us (the lease ran out or an
    /// operator force-released it). The fence is then stale.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Releases the lock now and reports the outcome.
    pub async fn release(mut self) -> Result<(), ClientError> {
        if let Some(task) = self.refresher.take() {
            task.abort();
        }
        let result = self.client.release(&self.name, &self.client_id).await.map(|_| ());
        self.lost.store(true, Ordering::SeqCst);
        result
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let Some(task) = self.refresher.take() else { return };
        task.abort();
        if self.lost.load(Ordering::SeqCst) {
            return;
        }
        let (client, name, client_id) = (self.client.clone(), self.name.clone(), self.client_id.clone());
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = client.release(&name, &client_id).await;
            });
        }
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
