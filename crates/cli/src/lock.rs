//! `sinkron lock acquire|release|refresh|status|graph|exec`.

use std::process::Stdio;

use anyhow::Context;
use sinkron_client::{Client, LockOptions};

#[derive(clap::Args)]
pub struct LockArgs {
    /// Node to ask (any node answers).
    #[arg(long, short, env = "SINKRON_ENDPOINT", default_value = "127.0.0.1:8001", global = true)]
    endpoint: String,
    #[command(subcommand)]
    command: LockCommand,
}

#[derive(clap::Args)]
struct Acquire {
    /// Lock name.
    name: String,
    /// Holder identity; default: `<hostname>-<pid>`.
    #[arg(long, env = "SINKRON_CLIENT_ID")]
    client_id: Option<String>,
    /// Take the lock shared instead of exclusive.
    #[arg(long)]
    shared: bool,
    /// Lease in milliseconds (server default if omitted).
    #[arg(long)]
    ttl_ms: Option<u64>,
    /// Wait up to this long in the queue, in milliseconds.
    #[arg(long, default_value_t = 0)]
    wait_ms: u64,
}

#[derive(clap::Subcommand)]
enum LockCommand {
    /// Acquire a lock and print the grant (it stays held until released or expired).
    Acquire(Acquire),
    /// Release a lock.
    Release {
        /// Lock name.
        name: String,
        /// Holder identity.
        #[arg(long, env = "SINKRON_CLIENT_ID")]
        client_id: String,
    },
    /// Extend a lease.
    Refresh {
        /// Lock name.
        name: String,
        /// Holder identity.
        #[arg(long, env = "SINKRON_CLIENT_ID")]
        client_id: String,
        /// New lease in milliseconds.
        #[arg(long)]
        ttl_ms: Option<u64>,
    },
    /// Show one lock, or every held or awaited lock.
    Status {
        /// Lock name; all locks when omitted.
        name: Option<String>,
    },
    /// Show the wait-for graph and recent deadlocks.
    Graph,
    /// Hold a lock while COMMAND runs: the lease is refreshed, the fence is passed in
    /// SINKRON_FENCE, the lock is released afterwards, and the command's exit code returned.
    Exec {
        #[command(flatten)]
        lock: Acquire,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

fn client_id(given: Option<String>) -> String {
    given.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        let host = if host.is_empty() { "client".to_string() } else { host };
        format!("{host}-{}", std::process::id())
    })
}

fn options(a: &Acquire) -> LockOptions {
    LockOptions {
        client_id: client_id(a.client_id.clone()),
        mode: Some(if a.shared { "shared" } else { "exclusive" }.into()),
        ttl_ms: a.ttl_ms,
        wait_ms: Some(a.wait_ms),
    }
}

pub async fn run(args: LockArgs) -> anyhow::Result<()> {
    let client = crate::conn::client(&args.endpoint)?;
    match args.command {
        LockCommand::Acquire(a) => {
            let granted = client.acquire(&a.name, &options(&a)).await?;
            crate::output::show(&granted)?;
        }
        LockCommand::Release { name, client_id } => {
            client.release(&name, &client_id).await?;
            say!("released {name}");
        }
        LockCommand::Refresh { name, client_id, ttl_ms } => {
            let r = client.refresh(&name, &client_id, ttl_ms).await?;
            say!("{} fence {} expires at {} ms", r.name, r.fence, r.expires_at_ms);
        }
        LockCommand::Status { name: Some(name) } => crate::output::show(&client.lock_status(&name).await?)?,
        LockCommand::Status { name: None } => crate::output::show(&client.locks().await?)?,
        LockCommand::Graph => crate::output::show(&client.wait_for_graph().await?)?,
        LockCommand::Exec { lock, command } => {
            let code = exec(&client, &lock, &command).await?;
            std::process::exit(code);
        }
    }
    Ok(())
}

async fn exec(client: &Client, lock: &Acquire, command: &[String]) -> anyhow::Result<i32> {
    let guard =
        client.lock(&lock.name, options(lock)).await.with_context(|| format!("acquire {}", lock.name))?;
    let (program, args) = command.split_first().context("no command given")?;
    let status = tokio::process::Command::new(program)
        .args(args)
        .env("SINKRON_FENCE", guard.fence().to_string())
        .env("SINKRON_LOCK", &lock.name)
        .stdin(Stdio::inherit())
        .status()
        .await
        .with_context(|| format!("run {program}"));
    if guard.is_lost() {
        eprintln!("sinkron: warning: the lease of {} was lost while the command ran", lock.name);
    }
    let released = guard.release().await;
    let status = status?;
    if let Err(e) = released {
        eprintln!("sinkron: warning: could not release {}: {e}", lock.name);
    }
    Ok(status.code().unwrap_or(1))
}
