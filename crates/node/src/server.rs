//! Runs a node: binds the listener, serves HTTP, bootstraps, and shuts down gracefully.
//!
//! The accept loop is ours (not `axum::serve`) so that every connection is bounded: a cap
//! on open connections, a timeout for request heads (which also closes idle kept-alive
//! connections) and a bounded head size. Body timeouts are the extractor's (`ApiJson`).

use std::future::Future;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::config::{ConnectionLimits, NodeConfig};
use crate::node::Node;

/// Largest request head hyper buffers; a longer one is answered by hyper itself (an empty
/// `431`). The API's own, smaller limits on the URI and headers answer in JSON first.
const HEAD_MAX_BYTES: usize = 64 * 1024;

/// How long requests still running at a stop may take to finish.
const GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Serves `config` until `shutdown` completes, then stops Raft and flushes storage.
pub async fn run(
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    crate::metrics::install();
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("bind the HTTP listener on {}", config.listen))?;
    let limits = config.limits;
    let _ = crate::api::error::BODY_TIMEOUT.set(Duration::from_millis(limits.body_timeout_ms));
    let node = Node::open(config).await?;
    tracing::info!(
        node = %node.config.name,
        listen = %node.config.listen,
        data_dir = %node.config.data_dir.display(),
        members = node.config.members.len(),
        "node started"
    );
    tokio::spawn(node.clone().bootstrap());
    let duties = [
        tokio::spawn(crate::locks::leader_duties(node.clone())),
        tokio::spawn(crate::queues::placement_duties(node.clone())),
        tokio::spawn(crate::queues::host_duties(node.clone())),
        tokio::spawn(crate::queues::expiry_duties(node.clone())),
    ];
    let cache_task =
        node.take_cache_outbox().map(|outbox| tokio::spawn(crate::cache::run(node.clone(), outbox)));
    let app = crate::api::router(node.clone());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => serve_connection(tcp, &app, &graceful, &connections, limits),
                // Out of file descriptors or a connection reset before it was accepted: the
                // listener itself is fine; a short pause keeps an fd shortage from spinning.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    // Long waits (lock queues, lease renewals) must not hold a stop up for long.
    if tokio::time::timeout(GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("closing requests still running after {} s", GRACE.as_secs());
    }
    tracing::info!("shutting down");
    for duty in duties {
        duty.abort();
    }
    if let Some(task) = cache_task {
        task.abort();
    }
    node.shutdown().await;
    Ok(())
}

/// Serves one accepted connection in its own task, or refuses it when the node already
/// has `max_connections` open.
fn serve_connection(
    tcp: TcpStream,
    app: &axum::Router,
    graceful: &GracefulShutdown,
    connections: &Arc<Semaphore>,
    limits: ConnectionLimits,
) {
    // Small request/response exchanges: never let Nagle hold a reply back.
    let _ = tcp.set_nodelay(true);
    let Ok(permit) = connections.clone().try_acquire_owned() else {
        crate::metrics::record_refused_connection();
        tokio::spawn(refuse_connection(tcp, limits.max_connections));
        return;
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_timeout_ms))
        .max_buf_size(HEAD_MAX_BYTES)
        .keep_alive(true);
    let service = TowerToHyperService::new(app.clone());
    let connection = graceful.watch(http.serve_connection(TokioIo::new(tcp), service));
    tokio::spawn(async move {
        // Errors here are a client's (a reset, a malformed or slow request head); hyper has
        // already answered what can be answered.
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "HTTP connection ended with an error");
        }
        drop(permit);
    });
}

/// Answers a connection over the limit with a JSON `503` and closes it.
async fn refuse_connection(mut tcp: TcpStream, max_connections: usize) {
    let body = serde_json::json!({
        "error": "unavailable",
        "message": format!("this node already serves {max_connections} connections (HTTP_MAX_CONNECTIONS); retry later or on another node"),
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = tcp.write_all(answer.as_bytes()).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}
