//! Runs a node: binds the listener, serves HTTP, bootstraps, and shuts down gracefully.

use std::future::Future;

use anyhow::Context;
use axum::serve::ListenerExt;

use crate::config::NodeConfig;
use crate::node::Node;

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
    let duties = [
        tokio::spawn(crate::locks::leader_duties(node.clone())),
        tokio::spawn(crate::queues::placement_duties(node.clone())),
        tokio::spawn(crate::queues::host_duties(node.clone())),
        tokio::spawn(crate::queues::expiry_duties(node.clone())),
    ];
    let cache_task =
        node.take_cache_outbox().map(|outbox| tokio::spawn(crate::cache::run(node.clone(), outbox)));
    let app = crate::api::router(node.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = axum::serve(listener, app).with_graceful_shutdown(async {
        let _ = stop_rx.await;
    });
    let mut serving = tokio::spawn(async move { serving.await });
    tokio::select! {
        finished = &mut serving => {
            finished.context("HTTP server task")?.context("serve HTTP")?;
        }
        _ = shutdown => {
            let _ = stop_tx.send(());
            // Long waits (lock queues, lease renewals) must not hold a stop up for long.
            match tokio::time::timeout(GRACE, &mut serving).await {
                Ok(finished) => finished.context("HTTP server task")?.context("serve HTTP")?,
                Err(_) => {
                    serving.abort();
                    tracing::warn!("closing requests still running after {} s", GRACE.as_secs());
                }
            }
        }
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
