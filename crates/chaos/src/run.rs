//! One chaos run: start a cluster, run a workload while a seeded schedule injects faults,
//! heal, check the history, and say so in one line.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::check::{self, Report};
use crate::cluster::{self, ChaosCluster};
use crate::history::History;
use crate::revocations::{self, Revocation};
use crate::schedule::{FaultKind, FaultRecord, Pace, Schedule, Step, Target};
use crate::workloads::{self, Env, FencedResource, Workload};

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The `sinkron` binary.
    pub bin: PathBuf,
    /// The workload.
    pub workload: Workload,
    /// Fault kinds the schedule draws from.
    pub faults: Vec<FaultKind>,
    /// Seed of the schedule and the clients.
    pub seed: u64,
    /// How long faults are injected.
    pub duration: Duration,
    /// Cluster size.
    pub nodes: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Where a failing run leaves its history and node logs.
    pub out_dir: PathBuf,
    /// Write cache values and queue bodies as the largest, deepest shape the API accepts
    /// (see [`workloads::Payload`]) instead of plain numbers.
    pub deep_values: bool,
    /// Serve HTTPS with mutual TLS between the nodes (certificates made for the run).
    pub tls: bool,
}

impl RunConfig {
    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        let faults: Vec<String> = self.faults.iter().map(ToString::to_string).collect();
        format!(
            "sinkron chaos --workload {} --faults {} --seed {} --duration {} --nodes {} --clients {}{}{}",
            self.workload.name(),
            faults.join(","),
            self.seed,
            self.duration.as_secs(),
            self.nodes,
            self.clients,
            if self.deep_values { " --deep-values" } else { "" },
            if self.tls { " --tls" } else { "" }
        )
    }
}

/// The outcome of a run.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Workload name.
    pub workload: &'static str,
    /// Seed.
    pub seed: u64,
    /// Operations recorded.
    pub ops: usize,
    /// Faults injected.
    pub faults: usize,
    /// Violations found.
    pub violations: Vec<String>,
    /// Checker notes.
    pub notes: Vec<String>,
    /// Where the history and logs were saved (violations only).
    pub saved: Option<PathBuf>,
}

impl Summary {
    /// The one-line summary.
    pub fn line(&self) -> String {
        format!(
            "chaos {}: seed {}, {} operations, {} faults, {} violations ({})",
            self.workload,
            self.seed,
            self.ops,
            self.faults,
            self.violations.len(),
            self.notes.join("; ")
        )
    }
}

/// Runs one workload under the configured faults.
pub async fn run(config: &RunConfig) -> anyhow::Result<Summary> {
    let dir = tempfile::tempdir()?;
    let mut extra = vec![("SINKRON_FAULT_INJECTION".to_string(), "0".to_string())];
    if matches!(config.workload, Workload::Cache | Workload::CacheWriteBack) {
        // Two lines per node, for the workload's two keys: nothing is evicted, so a node
        // that is cut off keeps serving hits of both while its lease runs (a read that has
        // to go through the log would hold its process up), and misses come from writes
        // and deletes taking copies away.
        extra.push(("CACHE_MAX_SIZE".into(), "2".into()));
    }
    match config.workload {
        Workload::Cache => extra.push(("CACHE_WRITE_POLICY".into(), "write-through".into())),
        Workload::CacheWriteBack => {
            extra.push(("CACHE_WRITE_POLICY".into(), "write-back".into()));
            extra.push(("CACHE_WRITEBACK_MAX_MS".into(), WRITEBACK_MAX_MS.to_string()));
            // The check needs the revocations' times and stored values (see revocations.rs).
            extra.push(("RUST_LOG".into(), "info,openraft=warn,sinkron_revocations=debug".into()));
        }
        _ => {}
    }
    let mut cluster = ChaosCluster::start(&config.bin, config.nodes, dir.path(), &extra, config.tls).await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let history = History::new();
    let started_unix_us = workloads::unix_us().saturating_sub(history.started().elapsed().as_micros() as u64);
    let started_unix_ms = started_unix_us / 1_000;
    let env = Env {
        clients: (0..config.nodes).map(|i| cluster.client(i, Duration::from_secs(5))).collect(),
        quick: (0..config.nodes).map(|i| cluster.client(i, Duration::from_millis(500))).collect(),
        history: history.clone(),
        stop: Arc::new(AtomicBool::new(false)),
        seed: config.seed,
        payload: if config.deep_values { workloads::Payload::Deep } else { workloads::Payload::Plain },
    };
    if config.workload == Workload::Queues {
        wait_for_queues(&env).await?;
    }
    let resource = FencedResource::default();
    let mut tasks = Vec::new();
    let processes = match config.workload {
        // Three per node at least: a process is stuck while its node is cut off (a write,
        // a miss), so a node needs others that keep reading its hits meanwhile.
        Workload::Cache | Workload::CacheWriteBack => config.clients.max(3 * config.nodes),
        // A producer and two consumers of each of the two queues.
        Workload::Queues => config.clients.max(6),
        Workload::Locks => config.clients,
    };
    for process in 0..processes {
        let env = env.clone();
        tasks.push(match config.workload {
            Workload::Locks => tokio::spawn(workloads::locks(env, process, resource.clone())),
            Workload::Cache => tokio::spawn(workloads::cache(env, process, true)),
            Workload::CacheWriteBack => tokio::spawn(workloads::cache(env, process, false)),
            // Of every six processes, one producer and two consumers of each queue; the two
            // consumers of a queue start at different nodes, so their receives race.
            Workload::Queues => match process % 6 {
                0 => tokio::spawn(workloads::produce(env, process, true)),
                1 | 5 => tokio::spawn(workloads::consume(env, process)),
                2 => tokio::spawn(workloads::produce(env, process, false)),
                _ => tokio::spawn(workloads::consume_carrying(env, process)),
            },
        });
    }
    let pace = match config.workload {
        Workload::Cache | Workload::CacheWriteBack => Pace::Short,
        _ => Pace::Normal,
    };
    let schedule = Schedule::generate_paced(config.seed, &config.faults, config.nodes, config.duration, pace);
    let started = Instant::now();
    let mut faults = Vec::new();
    for step in &schedule.steps {
        tokio::time::sleep(step.at.saturating_sub(started.elapsed())).await;
        faults.push(inject(&mut cluster, step, &history).await?);
    }
    tokio::time::sleep(config.duration.saturating_sub(started.elapsed())).await;
    env.stop.store(true, Ordering::SeqCst);
    for task in tasks {
        let _ = task.await;
    }
    cluster.heal()?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let checking = Instant::now();
    let report = match config.workload {
        Workload::Locks => {
            let writes = resource.writes.lock().map(|w| w.clone()).unwrap_or_default();
            check::locks(&history.ops(), &writes, started_unix_ms)
        }
        Workload::Cache => check::cache(&history.ops()),
        Workload::CacheWriteBack => {
            let on_history_clock = |us: u64| us.saturating_sub(started_unix_us);
            let revocations: Vec<_> =
                revocations::from_logs(&cluster.logs(), cluster::ELECTION_TIMEOUT_MIN_MS * 1_000)
                    .into_iter()
                    .map(|r| Revocation {
                        proposed_us: on_history_clock(r.proposed_us),
                        until_us: on_history_clock(r.until_us),
                        ..r
                    })
                    .collect();
            check::cache_write_back(&history.ops(), &revocations)
        }
        Workload::Queues => {
            let (acked, delivered) = check::queue_sets(&history.ops());
            let missing = acked.into_iter().filter(|id| !delivered.contains_key(id)).collect();
            workloads::final_drain(&env, missing, Duration::from_secs(30)).await;
            let mut report = check::queues(&history.ops());
            report.notes.push(relayed_receives(&env).await);
            report
        }
    };
    let Report { violations, mut notes } = report;
    notes.push(format!(
        "run {:.0} s, checked in {:.1} s",
        started.elapsed().as_secs_f64(),
        checking.elapsed().as_secs_f64()
    ));
    let mut summary = Summary {
        workload: config.workload.name(),
        seed: config.seed,
        ops: history.ops().len(),
        faults: schedule.steps.len(),
        violations,
        notes,
        saved: None,
    };
    if !summary.violations.is_empty() {
        let out = config.out_dir.join(format!("{}-{}", config.workload.name(), config.seed));
        std::fs::create_dir_all(&out)?;
        std::fs::write(out.join("history.json"), serde_json::to_vec_pretty(&history.ops())?)?;
        std::fs::write(out.join("schedule.json"), serde_json::to_vec_pretty(&schedule)?)?;
        std::fs::write(out.join("violations.txt"), summary.violations.join("\n"))?;
        if config.workload == Workload::Locks {
            let writes = resource.writes.lock().map(|w| w.clone()).unwrap_or_default();
            std::fs::write(out.join("fenced-writes.json"), serde_json::to_vec_pretty(&writes)?)?;
        }
        cluster.save_logs(&out);
        summary.saved = Some(out);
    }
    Ok(summary)
}

/// How many waiting receives the nodes relayed to a partition's leader, by outcome, since
/// each last started: shows that the run went through the relay.
async fn relayed_receives(env: &Env) -> String {
    let mut by_outcome: std::collections::BTreeMap<String, f64> = std::collections::BTreeMap::new();
    for client in &env.clients {
        let Ok(text) = client.metrics().await else { continue };
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("sinkron_queue_receives_relayed_total{outcome=\"") else {
                continue;
            };
            let Some((outcome, value)) = rest.split_once("\"} ") else { continue };
            *by_outcome.entry(outcome.to_string()).or_default() += value.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    let counts: Vec<String> = by_outcome.iter().map(|(outcome, n)| format!("{outcome} {n}")).collect();
    format!(
        "waiting receives relayed to a leader: {}",
        if counts.is_empty() { "none".into() } else { counts.join(", ") }
    )
}

async fn wait_for_queues(env: &Env) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ring = env.clients[0].ring().await;
        let ready = ring
            .as_ref()
            .is_ok_and(|r| !r.partitions.is_empty() && r.partitions.iter().all(|p| p.leader.is_some()));
        if ready {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "queue partitions have no leaders after 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `CACHE_WRITEBACK_MAX_MS` of write-back runs.
const WRITEBACK_MAX_MS: u64 = 300;

/// Applies `step`, waits its length, and undoes it; answers what it did.
async fn inject(cluster: &mut ChaosCluster, step: &Step, history: &History) -> anyhow::Result<FaultRecord> {
    let n = cluster.nodes.len();
    let target = match step.target {
        Target::Node(i) => i % n,
        Target::Leader => cluster.leader().await.unwrap_or(0),
    };
    eprintln!(
        "chaos: +{:.1}s {} on {} for {:.1}s",
        step.at.as_secs_f64(),
        step.kind,
        cluster.nodes[target].name,
        step.length.as_secs_f64()
    );
    let start_us = history.now_us();
    let nodes = match step.kind {
        FaultKind::Kill => {
            cluster.kill(target);
            vec![target]
        }
        FaultKind::Pause => {
            cluster.pause(target);
            vec![target]
        }
        FaultKind::Partition => {
            let minority: Vec<usize> = (0..n.saturating_sub(1) / 2).map(|k| (target + k) % n).collect();
            cluster.split(&minority);
            minority
        }
        FaultKind::OneWay => {
            let peer = if step.peer % n == target { (target + 1) % n } else { step.peer % n };
            cluster.cut_one_way(target, peer);
            vec![target, peer]
        }
        FaultKind::Delay => {
            cluster.delay_all(step.delay);
            (0..n).collect()
        }
    };
    tokio::time::sleep(step.length).await;
    cluster.heal()?;
    Ok(FaultRecord { kind: step.kind, nodes, start_us, end_us: history.now_us() })
}
