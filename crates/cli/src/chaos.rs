//! `sinkron chaos`: runs workloads against a fresh local cluster while injecting faults.

use std::path::PathBuf;
use std::time::Duration;

use sinkron_chaos::run::{run as run_once, RunConfig};
use sinkron_chaos::schedule::FaultKind;
use sinkron_chaos::workloads::Workload;

#[derive(clap::Args)]
pub struct ChaosArgs {
    /// Workloads to run, comma-separated: locks, cache, queues (or all).
    #[arg(long, default_value = "all")]
    workload: String,
    /// Fault kinds, comma-separated: kill, pause, partition, one-way, delay (or all).
    #[arg(long, default_value = "all")]
    faults: String,
    /// Seed of the fault schedule and the clients; random when not given.
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds of faults per workload.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Concurrent clients per workload (the cache workloads run at least three per node,
    /// the queue workload at least six).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Where a failing run saves its history and node logs.
    #[arg(long, default_value = "chaos-runs")]
    out: PathBuf,
    /// Write cache values and queue bodies 60 levels deep with 16 KB of padding (the
    /// largest, deepest shape the API accepts) instead of plain numbers.
    #[arg(long)]
    deep_values: bool,
    /// Run the nodes with mutual TLS (certificates made for the run).
    #[arg(long)]
    tls: bool,
}

/// Parses a comma-separated list of names, `all` meaning every one.
pub fn parse_list<T: Copy>(
    raw: &str,
    all: &[T],
    parse: impl Fn(&str) -> Option<T>,
    what: &str,
) -> anyhow::Result<Vec<T>> {
    if raw.trim() == "all" {
        return Ok(all.to_vec());
    }
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|name| parse(name).ok_or_else(|| anyhow::anyhow!("unknown {what} {name:?}")))
        .collect()
}

pub async fn run(args: ChaosArgs) -> anyhow::Result<()> {
    let workloads = parse_list(&args.workload, &Workload::ALL, Workload::parse, "workload")?;
    let faults = parse_list(&args.faults, &FaultKind::ALL, FaultKind::parse, "fault kind")?;
    anyhow::ensure!(args.duration > 0 && args.clients > 0, "--duration and --clients must be positive");
    let seed = args.seed.unwrap_or_else(rand::random);
    let bin = std::env::current_exe()?;
    let mut failed = 0;
    for workload in workloads {
        let config = RunConfig {
            bin: bin.clone(),
            workload,
            faults: faults.clone(),
            seed,
            duration: Duration::from_secs(args.duration),
            nodes: args.nodes,
            clients: args.clients,
            out_dir: args.out.clone(),
            deep_values: args.deep_values,
            tls: args.tls,
        };
        say!("chaos {}: seed {seed}; replay with: {}", workload.name(), config.replay_command());
        let progress = crate::progress::Progress::timed(config.duration, workload.name());
        let summary = run_once(&config).await;
        progress.finish();
        let summary = summary?;
        say!("{}", summary.line());
        for violation in &summary.violations {
            say!("  violation: {violation}");
        }
        if let Some(saved) = &summary.saved {
            say!("  history and node logs saved in {}", saved.display());
        }
        failed += usize::from(!summary.violations.is_empty());
    }
    anyhow::ensure!(failed == 0, "{failed} workload(s) found violations");
    Ok(())
}
