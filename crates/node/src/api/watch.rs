//! `GET /v1/watch`: the key-value changes under a prefix as Server-Sent Events.
//!
//! One `data:` line of JSON per put or delete, in version order, each with its version as
//! the event `id`. The stream starts after `from_version` when the node still keeps that
//! history (`WATCH_HISTORY`), else the request is answered `410 compacted` with the oldest
//! version to resume from; without `from_version` it starts at this node's state after a
//! read barrier, so it misses nothing committed after the request began. A watcher that
//! reconnects with the last version it saw misses nothing and sees nothing twice. Comment
//! lines every 15 s keep idle streams open; a watcher that falls too far behind is cut off
//! and resumes with its last version.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use sinkron_core::kv::KvEvent;
use sinkron_core::limits::validate_kv_key;
use tokio::sync::broadcast;
use tokio::sync::OwnedSemaphorePermit;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiQuery as Query, ErrorBody, NodeError};
use super::AppState;

/// Interval of the heartbeat comments on an idle stream.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// Query of a watch.
#[derive(Debug, Deserialize, IntoParams)]
pub struct WatchQuery {
    /// Only keys that start with this (all keys when empty or absent); at most 256 bytes.
    pub prefix: Option<String>,
    /// Start after this version; without it, start now.
    pub from_version: Option<u64>,
}

/// One change, the JSON of a `data:` line.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WatchEvent {
    /// The key.
    pub key: String,
    /// `put` or `delete`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The new value (puts only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    /// The revision of the change.
    pub version: u64,
}

impl From<&KvEvent> for WatchEvent {
    fn from(e: &KvEvent) -> Self {
        Self {
            key: e.key.clone(),
            kind: if e.value.is_some() { "put" } else { "delete" }.into(),
            value: e.value.clone(),
            version: e.version,
        }
    }
}

/// Streams the changes under `prefix` as Server-Sent Events.
#[utoipa::path(get, path = "/v1/watch", tag = "kv", params(WatchQuery),
    responses((status = 200, description = "text/event-stream of WatchEvent lines", content_type = "text/event-stream", body = String),
        (status = 410, body = ErrorBody, description = "compacted: the history after from_version is no longer kept; oldest_version says where to resume"),
        (status = 429, body = ErrorBody, description = "limit_exceeded: WATCHES_MAX streams are open")))]
pub async fn watch(
    State(node): State<AppState>,
    Query(query): Query<WatchQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, NodeError> {
    let prefix = query.prefix.unwrap_or_default();
    if !prefix.is_empty() {
        validate_kv_key(&prefix).map_err(|e| NodeError::InvalidArgument(format!("prefix: {e}")))?;
    }
    let permit = node.waiting.watch()?;
    node.group0.read_barrier().await?;
    let sm = &node.group0.group().sm;
    let subscription = {
        let applied = sm.read();
        let after = query.from_version.unwrap_or(applied.state.revision);
        sm.kv_feed().subscribe(after).map_err(|oldest| {
            NodeError::Compacted(
                format!("this node keeps changes from version {oldest} on (WATCH_HISTORY); resume from there or re-read"),
                oldest,
            )
        })?
    };
    let stream = Watching {
        backlog: subscription.backlog.into_iter(),
        live: subscription.live,
        prefix,
        last: query.from_version.unwrap_or(0),
        _permit: permit,
    }
    .into_stream();
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat")))
}

/// The state of one watch stream.
struct Watching {
    backlog: std::vec::IntoIter<Arc<KvEvent>>,
    live: broadcast::Receiver<Arc<KvEvent>>,
    prefix: String,
    /// The last version sent: nothing at or below it is sent again.
    last: u64,
    _permit: OwnedSemaphorePermit,
}

impl Watching {
    /// The next change to send, or `None` when the stream ends (the watcher fell behind,
    /// or the node stops).
    async fn next(&mut self) -> Option<Arc<KvEvent>> {
        loop {
            let event = match self.backlog.next() {
                Some(event) => event,
                None => self.live.recv().await.ok()?,
            };
            if event.version > self.last && event.key.starts_with(&self.prefix) {
                self.last = event.version;
                return Some(event);
            }
        }
    }

    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> {
        futures_util::stream::unfold(self, |mut watching| async move {
            let event = watching.next().await?;
            let body = serde_json::to_string(&WatchEvent::from(event.as_ref())).unwrap_or_default();
            Some((Ok(Event::default().id(event.version.to_string()).data(body)), watching))
        })
    }
}
