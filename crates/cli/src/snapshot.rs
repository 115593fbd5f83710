//! `sinkron snapshot save FILE` backs up a running cluster; `sinkron snapshot restore FILE`
//! seeds one empty data directory of a new cluster from such a file. The formats and the
//! rules are `sinkron_node::backup`'s; this only moves files and calls.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Deserialize as _;
use sinkron_core::{Group0State, PartitionMachine};
use sinkron_node::backup::{Backup, GroupBackup, BACKUP_FORMAT, BACKUP_VERSION};

#[derive(clap::Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    command: SnapshotCommand,
}

#[derive(clap::Subcommand)]
enum SnapshotCommand {
    /// Save group 0 and every queue partition of a running cluster to FILE (with tokens on,
    /// an admin token).
    Save {
        /// The backup file to write (replaced atomically).
        file: PathBuf,
        /// Node to ask.
        #[arg(long, short, env = "SINKRON_ENDPOINT", default_value = "127.0.0.1:8001")]
        endpoint: String,
        /// Longest wait for one group's state, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
    },
    /// Seed an empty data directory as one node of a new cluster. Run it once per node,
    /// with that node's settings, then start the nodes: they form the cluster by themselves.
    Restore {
        /// A file written by `snapshot save`.
        file: PathBuf,
        /// The new node's data directory (must be empty or absent).
        #[arg(long, env = "DATA_DIR")]
        data_dir: PathBuf,
        /// The new node's name; the backup's node names must all be in CLUSTER_ADDRS.
        #[arg(long, env = "NODE_ID")]
        node_id: String,
        /// The new cluster's members, `[name=]host:port,...`, as the nodes will be started.
        #[arg(long, env = "CLUSTER_ADDRS")]
        cluster_addrs: String,
    },
}

pub async fn run(args: SnapshotArgs) -> anyhow::Result<()> {
    match args.command {
        SnapshotCommand::Save { file, endpoint, timeout_s } => save(&file, &endpoint, timeout_s).await,
        SnapshotCommand::Restore { file, data_dir, node_id, cluster_addrs } => {
            let bytes = std::fs::read(&file).with_context(|| format!("read {}", file.display()))?;
            let backup = Backup::from_json(&bytes).with_context(|| format!("load {}", file.display()))?;
            let members = sinkron_node::config::parse_cluster_addrs(&cluster_addrs)?;
            let restored = backup
                .seed(&data_dir, &node_id, &members)
                .await
                .with_context(|| format!("seed {} as {node_id}", data_dir.display()))?;
            crate::output::show(&restored)?;
            Ok(())
        }
    }
}

async fn save(file: &Path, endpoint: &str, timeout_s: u64) -> anyhow::Result<()> {
    let client = crate::conn::client_with_timeout(endpoint, Duration::from_secs(timeout_s))?;
    let ring = client.ring().await.context("read the ring (how many partitions)")?;
    let group0: GroupBackup =
        serde_json::from_value(client.snapshot_group0().await.context("read group 0")?)?;
    let mut partitions = Vec::with_capacity(ring.partition_count as usize);
    for partition in 0..ring.partition_count {
        let part = client
            .snapshot_partition(partition)
            .await
            .with_context(|| format!("read partition {partition}"))?;
        partitions.push(serde_json::from_value::<GroupBackup>(part)?);
    }
    let taken_at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let backup = Backup {
        format: BACKUP_FORMAT.into(),
        format_version: BACKUP_VERSION,
        taken_at_ms,
        taken_from: client.endpoint().to_string(),
        group0,
        partitions,
    };
    let bytes = serde_json::to_vec(&backup)?;
    write_atomically(file, &bytes)?;
    crate::output::show(&summary(&backup, bytes.len()))?;
    Ok(())
}

/// What a backup holds, in counts.
fn summary(backup: &Backup, bytes: usize) -> serde_json::Value {
    let group0 = Group0State::deserialize(&backup.group0.state).ok();
    let messages: usize = backup
        .partitions
        .iter()
        .filter_map(|p| PartitionMachine::deserialize(&p.state).ok())
        .map(|p| p.state.queues().values().map(|q| q.depth()).sum::<usize>())
        .sum();
    serde_json::json!({
        "bytes": bytes,
        "keys": group0.as_ref().map(|g| g.kv.len()),
        "locks": group0.as_ref().map(|g| g.locks.locks().len()),
        "last_fence": group0.as_ref().map(|g| g.locks.last_fence()),
        "revision": group0.as_ref().map(|g| g.revision),
        "partitions": backup.partitions.len(),
        "messages": messages,
    })
}

/// Writes `bytes` to a temporary file beside `file`, syncs it and renames it over `file`, so
/// a crash leaves the old backup or the new one, never half of one.
fn write_atomically(file: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let tmp = file.with_extension("partial");
    let mut out = std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    out.write_all(bytes).and_then(|()| out.sync_all()).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("rename {} to {}", tmp.display(), file.display()))?;
    Ok(())
}
