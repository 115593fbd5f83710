//! `sinkron serve`: one node until SIGTERM or Ctrl-C.

use sinkron_node::{NodeConfig, ServeArgs};
use tracing_subscriber::EnvFilter;

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = match NodeConfig::from_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sinkron: invalid configuration: {e}");
            std::process::exit(2);
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=error"));
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).init();
    sinkron_node::server::run(config, shutdown_signal()).await
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
