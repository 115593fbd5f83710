//! Every call this node makes to another node, outside openraft's own RPCs
//! ([`crate::network`]): one pooled HTTP client, the peers' URLs, and the fault-injection
//! cut ([`Isolation`]) checked before each call.

use std::time::{Duration, Instant};

use serde::Serialize;
use sinkron_core::Request;

use crate::error::NodeError;
use crate::network::{HttpNetworkFactory, Isolation, PeerRefusals};
use crate::peer_http::PeerHttp;
use crate::security::{guard::forwarded_header, Principal, PRINCIPAL_HEADER};
use crate::types::{GroupId, Member, GROUP0};
use crate::wire::{AppliedQuery, ForwardedWrite, LeaseRenewal, PartitionCall, PartitionReply, ReadIndex};

/// This node's calls to its peers. Cheap to clone: every clone shares one connection pool.
#[derive(Debug, Clone)]
pub struct Peers {
    http: PeerHttp,
    /// Batched Raft calls, one stream per peer.
    streams: crate::peer_stream::Streams,
    /// Fault injection: cut off from the peers while set.
    pub isolation: Isolation,
    /// Raft calls refused with a client error, for `/ready`.
    pub refusals: PeerRefusals,
}

/// Body of `POST /raft/{group}/queue` as sent (the call borrowed, not copied).
#[derive(Serialize)]
struct Envelope<'a> {
    hops: u8,
    within_ms: u64,
    call: &'a PartitionCall,
}

/// Percent-encodes a path segment.
fn urlencode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// How a waiting receive relayed to another node ended there.
#[derive(Debug)]
pub enum Relayed {
    /// It ran there, with this answer.
    Answered(PartitionReply),
    /// It did not run there (refused, or never sent): the relaying node may run it.
    NotRun(NodeError),
    /// Sent, with no answer: it may have run, and taken messages.
    Unknown(String),
}

fn cut_off() -> NodeError {
    NodeError::NoQuorum("this node is cut off from its peers".into())
}

impl Peers {
    /// Calls go out from `source` (when given) over connections kept at most `pool_idle`.
    pub fn new(
        source: Option<std::net::IpAddr>,
        pool_idle: Duration,
        security: &crate::security::Security,
    ) -> anyhow::Result<Self> {
        let http = crate::peer_http::http_client(source, pool_idle, security)?;
        let isolation = Isolation::default();
        Ok(Self {
            streams: crate::peer_stream::Streams::new(http.clone()),
            http,
            isolation,
            refusals: PeerRefusals::default(),
        })
    }

    /// openraft's network for group `group`, sharing this node's pool, cut and refusals.
    pub fn raft_network(&self, group: GroupId, durability: crate::storage::Durability) -> HttpNetworkFactory {
        HttpNetworkFactory {
            group,
            durability,
            client: self.http.clone(),
            streams: self.streams.clone(),
            isolation: self.isolation.clone(),
            refusals: self.refusals.clone(),
        }
    }

    /// Whether `peer` says it already belongs to a cluster.
    pub async fn is_initialized(&self, peer: &Member) -> bool {
        if self.isolation.is_set() {
            return false;
        }
        let url = self.http.url(&peer.addr, "/v1/cluster");
        let Ok(resp) = self.http.client.get(url).timeout(Duration::from_millis(500)).send().await else {
            return false;
        };
        let Ok(body) = resp.json::<serde_json::Value>().await else { return false };
        body.get("initialized").and_then(|v| v.as_bool()).unwrap_or(false)
    }

    /// Asks group 0's `leader` for the index linearizable reads must wait for.
    pub async fn read_index(&self, leader: &Member, deadline: Instant) -> ReadIndex {
        if self.isolation.is_set() {
            tokio::time::sleep(Duration::from_millis(25)).await;
            return ReadIndex::NotLeader;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let url = self.http.url(&leader.addr, &format!("/raft/{GROUP0}/read-index"));
        match self.http.client.post(url).timeout(remaining).send().await {
            Ok(resp) if resp.status().is_success() => {
                resp.json::<ReadIndex>().await.unwrap_or(ReadIndex::NotLeader)
            }
            _ => ReadIndex::NotLeader,
        }
    }

    /// Renews node `name`'s cache lease at group 0's `leader`: the leader records the
    /// renewal and answers the index the node must apply before the lease counts.
    pub async fn renew_cache_lease(&self, leader: &Member, name: &str, deadline: Instant) -> ReadIndex {
        if self.isolation.is_set() {
            return ReadIndex::NotLeader;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let url = self.http.url(&leader.addr, &format!("/raft/{GROUP0}/cache-lease"));
        let body = LeaseRenewal { node: name.to_owned() };
        match self.http.client.post(url).json(&body).timeout(remaining).send().await {
            Ok(resp) if resp.status().is_success() => {
                resp.json::<ReadIndex>().await.unwrap_or(ReadIndex::NotLeader)
            }
            _ => ReadIndex::NotLeader,
        }
    }

    /// Whether the member at `addr` confirms it applied group 0's `index` within `wait`.
    pub async fn applied(&self, addr: &str, index: u64, wait: Duration) -> bool {
        if self.isolation.is_set() {
            return false;
        }
        let url = self.http.url(addr, &format!("/raft/{GROUP0}/applied"));
        let body = AppliedQuery { index, wait_ms: wait.as_millis() as u64 };
        matches!(self.http.client.post(url).json(&body).timeout(wait + Duration::from_millis(200)).send().await,
            Ok(resp) if resp.status().is_success())
    }

    /// The MESI state the member at `addr` reports for `key`.
    pub async fn cache_line(&self, addr: &str, key: &str) -> Option<String> {
        let (_, body) = self.get_json(addr, &format!("/v1/cache/{}/local", urlencode(key))).await.ok()?;
        body.get("state").and_then(|s| s.as_str()).map(String::from)
    }

    /// `GET path` (a public endpoint) of the member at `addr`, allowing it 2 s: the status
    /// and the JSON body of its answer, or why there was none.
    pub async fn get_json(&self, addr: &str, path: &str) -> Result<(u16, serde_json::Value), String> {
        if self.isolation.is_set() {
            return Err("this node is cut off by fault injection".into());
        }
        let url = self.http.url(addr, path);
        let resp = self.http.client.get(url).timeout(Duration::from_secs(2)).send().await.map_err(|e| {
            if e.is_timeout() {
                "no answer within 2 s".to_string()
            } else {
                format!("unreachable: {e}")
            }
        })?;
        let status = resp.status().as_u16();
        let body =
            resp.json().await.map_err(|e| format!("HTTP {status} with a body that is not JSON: {e}"))?;
        Ok((status, body))
    }

    /// Sends a public API request to `leader` on behalf of `principal` and returns its
    /// status and body unchanged.
    pub async fn proxy(
        &self,
        leader: &Member,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
        principal: Option<&Principal>,
        limit: Duration,
    ) -> Result<(u16, Vec<u8>), NodeError> {
        if self.isolation.is_set() {
            return Err(cut_off());
        }
        let mut req = self.http.client.request(method, self.http.url(&leader.addr, path)).timeout(limit);
        if let Some(principal) = principal {
            req = req.header(PRINCIPAL_HEADER, forwarded_header(principal));
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp =
            req.send().await.map_err(|e| NodeError::NoQuorum(format!("leader {leader} unreachable: {e}")))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| NodeError::Unavailable(e.to_string()))?;
        Ok((status, bytes.to_vec()))
    }

    /// Sends `requests` for `group` to its `leader` in one call; `None` if it could not be
    /// reached or answered something else than one outcome per request.
    pub async fn forward_writes(
        &self,
        leader: &Member,
        group: GroupId,
        requests: &[Request],
        limit: Duration,
    ) -> Option<Vec<ForwardedWrite>> {
        if self.isolation.is_set() {
            return None;
        }
        let url = self.http.url(&leader.addr, &format!("/raft/{group}/write"));
        let outcomes = match self.http.client.post(url).json(requests).timeout(limit).send().await {
            Ok(resp) if resp.status().is_success() => resp.json::<Vec<ForwardedWrite>>().await.ok()?,
            _ => return None,
        };
        (outcomes.len() == requests.len()).then_some(outcomes)
    }

    /// Runs a relayed waiting receive (`call`) at the node at `addr`, within `deadline`.
    pub async fn relay_waiting_receive(
        &self,
        addr: &str,
        group: GroupId,
        call: &PartitionCall,
        deadline: Instant,
    ) -> Relayed {
        if self.isolation.is_set() {
            return Relayed::NotRun(cut_off());
        }
        let resp = match self.post_partition_call(addr, group, call, deadline, 0, Duration::ZERO).await {
            Ok(resp) => resp,
            // Refused before a byte of the call went out.
            Err(e) if e.is_connect() => return Relayed::NotRun(NodeError::NoQuorum(format!("{addr}: {e}"))),
            Err(e) => return Relayed::Unknown(format!("{addr}: {e}")),
        };
        let status = resp.status();
        if status.is_server_error() && status != reqwest::StatusCode::SERVICE_UNAVAILABLE {
            return Relayed::Unknown(format!("{addr} answered HTTP {status}"));
        }
        if !status.is_success() {
            // Turned away before its handler (fault injection's isolation, a limit).
            return Relayed::NotRun(NodeError::Unavailable(format!("{addr} answered HTTP {status}")));
        }
        match resp.json::<Result<PartitionReply, NodeError>>().await {
            Ok(Ok(reply)) => Relayed::Answered(reply),
            // The node answers an error only when it did not run the receive.
            Ok(Err(e)) => Relayed::NotRun(e),
            Err(e) => Relayed::Unknown(format!("bad answer from {addr}: {e}")),
        }
    }

    /// Runs a queue partition `call` at the node at `addr`, which may pass it on `hops` more
    /// times, within `deadline`.
    pub async fn partition_call(
        &self,
        addr: &str,
        group: GroupId,
        call: &PartitionCall,
        deadline: Instant,
        hops: u8,
    ) -> Result<PartitionReply, NodeError> {
        if self.isolation.is_set() {
            return Err(cut_off());
        }
        let resp = self
            .post_partition_call(addr, group, call, deadline, hops, Duration::from_millis(200))
            .await
            .map_err(|e| NodeError::NoQuorum(format!("{addr} unreachable: {e}")))?;
        if !resp.status().is_success() {
            return Err(NodeError::Unavailable(format!("{addr} answered HTTP {}", resp.status())));
        }
        resp.json::<Result<PartitionReply, NodeError>>()
            .await
            .map_err(|e| NodeError::Unavailable(format!("bad answer from {addr}: {e}")))?
    }

    /// Posts `call` for `group` to the node at `addr`, which must finish it by `deadline`
    /// and may pass it on `hops` more times; the HTTP call waits `slack` longer.
    async fn post_partition_call(
        &self,
        addr: &str,
        group: GroupId,
        call: &PartitionCall,
        deadline: Instant,
        hops: u8,
        slack: Duration,
    ) -> reqwest::Result<reqwest::Response> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let envelope = Envelope { hops, within_ms: remaining.as_millis() as u64, call };
        let url = self.http.url(addr, &format!("/raft/{group}/queue"));
        self.http.client.post(url).json(&envelope).timeout(remaining + slack).send().await
    }
}
