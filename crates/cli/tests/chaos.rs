//! A short, fixed-seed chaos run of every workload under every fault kind: the nodes are
//! killed, paused, partitioned, cut one way and slowed while clients record histories, and
//! the checkers must find nothing. `sinkron chaos` runs longer or random-seed runs.

mod support;

use std::time::Duration;

use sinkron_chaos::run::{run, RunConfig};
use sinkron_chaos::schedule::{FaultKind, Schedule};
use sinkron_chaos::workloads::Workload;

/// Fixed, so CI replays the same faults every time.
const SEED: u64 = 20_261_127;
const DURATION: Duration = Duration::from_secs(20);

/// Runs `workloads` under every fault kind and fails with every violation found (each
/// with its replay command), keeping the histories and logs of a failing run.
async fn run_workloads(workloads: &[Workload], seed: u64, duration: Duration, tls: bool, min_ops: usize) {
    let out = tempfile::tempdir().expect("temp dir");
    let mut failures = Vec::new();
    for &workload in workloads {
        let config = RunConfig {
            bin: support::sinkron_bin(),
            workload,
            faults: FaultKind::ALL.to_vec(),
            seed,
            duration,
            nodes: 3,
            clients: 4,
            out_dir: out.path().to_path_buf(),
            deep_values: false,
            tls,
        };
        let summary = run(&config).await.expect("the run completes");
        eprintln!("{}", summary.line());
        assert!(summary.ops > min_ops, "{}: too few operations to mean anything", summary.line());
        if !summary.violations.is_empty() {
            failures.push(format!(
                "{}\n  replay: {}\n  {}",
                summary.line(),
                config.replay_command(),
                summary.violations.join("\n  ")
            ));
        }
    }
    if !failures.is_empty() {
        let kept = out.keep();
        panic!("violations (histories and logs in {}):\n{}", kept.display(), failures.join("\n"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_workload_survives_every_fault_kind() {
    let schedule = Schedule::generate(SEED, &FaultKind::ALL, 3, DURATION);
    for kind in FaultKind::ALL {
        assert!(schedule.steps.iter().any(|s| s.kind == kind), "the schedule covers {kind}");
    }
    run_workloads(&Workload::ALL, SEED, DURATION, false, 100).await;
}

/// The same checks with mutual TLS on every link (the proxies carry TLS through): shorter,
/// on the workloads whose histories need the most node-to-node traffic.
#[tokio::test(flavor = "multi_thread")]
async fn locks_and_queues_survive_faults_over_mutual_tls() {
    run_workloads(&[Workload::Locks, Workload::Queues], SEED + 1, Duration::from_secs(12), true, 50).await;
}
