//! Runs a node: binds the listener, serves HTTP, bootstraps, and shuts down gracefully.

use std::future::Future;

use anyhow::Context;
use axum::serve::ListenerExt;

use crate::config::NodeConfig;
use crate::node::Node;

/// Serves `config` until `shutdown` completes, then stops Raft and flushes storage.
pub async fn run(
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    crate::metrics::install();
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("bind the HTTP listener on {}", config.listen))?
        // Small request/response exchanges: never let Nagle hold a reply back.
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    let node = Node::open(config).await?;
    tracing::info!(
        node = %node.config.name,
        listen = %node.config.listen,
        data_dir = %node.config.data_dir.display(),
        members = node.config.members.len(),
        "node started"
    );
    tokio::spawn(node.clone().bootstrap());
    let duties = tokio::spawn(crate::locks::leader_duties(node.clone()));
    let cache_task =
        node.take_cache_outbox().map(|outbox| tokio::spawn(crate::cache::run(node.clone(), outbox)));
    let app = crate::api::router(node.clone());
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.context("serve HTTP")?;
    tracing::info!("shutting down");
    duties.abort();
    if let Some(task) = cache_task {
        task.abort();
    }
    node.shutdown().await;
    Ok(())
}
