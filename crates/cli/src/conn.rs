//! How every command reaches the nodes: the endpoint's scheme, the bearer token
//! (`--token` / `SINKRON_TOKEN`) and the CA of `https://` endpoints (`--cacert` /
//! `SINKRON_CACERT`), given once on the command line and used by every client it makes.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use sinkron_client::{Client, Credentials};

/// Options every command accepts.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnArgs {
    /// Bearer token for nodes that check tokens (AUTH_TOKENS_FILE).
    #[arg(long, env = "SINKRON_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) that https:// endpoints must chain to.
    #[arg(long, env = "SINKRON_CACERT", global = true)]
    pub cacert: Option<PathBuf>,
}

static CREDENTIALS: OnceLock<Credentials> = OnceLock::new();

/// Reads the CA file (if any) and keeps the credentials for every client made later.
pub fn init(args: &ConnArgs) -> anyhow::Result<()> {
    let ca_pem = match &args.cacert {
        Some(path) => Some(std::fs::read(path).with_context(|| format!("read --cacert {}", path.display()))?),
        None => None,
    };
    let _ = CREDENTIALS.set(Credentials { token: args.token.clone(), ca_pem });
    Ok(())
}

/// The credentials given on the command line.
pub fn credentials() -> Credentials {
    CREDENTIALS.get().cloned().unwrap_or_default()
}

/// A client of `endpoint` with a per-call timeout of ten seconds.
pub fn client(endpoint: &str) -> anyhow::Result<Client> {
    client_with_timeout(endpoint, Duration::from_secs(10))
}

/// A client of `endpoint` with the given per-call timeout.
pub fn client_with_timeout(endpoint: &str, timeout: Duration) -> anyhow::Result<Client> {
    Ok(Client::connect(endpoint, timeout, &credentials())?)
}
