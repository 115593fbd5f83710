//! The `sinkron` binary: parses the command line and hands over to one command module.

/// Prints a line to standard output. When the reader went away (`sinkron ring | head`),
/// the command ends quietly instead of failing on the closed pipe.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

mod bench;
mod cache;
mod certs;
mod chaos;
mod cluster;
mod conn;
mod dev;
mod kv;
mod lock;
mod output;
mod progress;
mod queue;
mod serve;
mod snapshot;

use clap::{Parser, Subcommand};

/// Sinkron: distributed locks, MESI-coherent cache and queues over Raft.
#[derive(Parser)]
#[command(name = "sinkron", version, about)]
struct Cli {
    #[command(flatten)]
    conn: conn::ConnArgs,
    /// How commands that print state print it: JSON (the default, for scripts) or tables
    /// (`cluster status` prints a table unless asked for JSON).
    #[arg(long, short = 'o', env = "SINKRON_OUTPUT", global = true, value_enum)]
    output: Option<output::Output>,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run one node (settings from flags or the environment).
    Serve(Box<sinkron_node::ServeArgs>),
    /// Run a local 3-node cluster on ports 8001-8003 with embedded storage.
    Dev(dev::DevArgs),
    /// Inspect and change the cluster.
    Cluster(cluster::ClusterArgs),
    /// Read and write the replicated key-value store.
    Kv(kv::KvArgs),
    /// Read and write the MESI-coherent cache.
    Cache(cache::CacheArgs),
    /// Acquire, release and inspect locks; run a command under a lock.
    Lock(lock::LockArgs),
    /// Send, receive and acknowledge queue messages.
    Queue(queue::QueueArgs),
    /// Show the consistent-hash ring and where each queue partition lives.
    Ring(queue::RingArgs),
    /// Run workloads on a fresh local cluster while killing, pausing and partitioning it;
    /// check the histories.
    Chaos(chaos::ChaosArgs),
    /// Measure a running cluster.
    Bench(bench::BenchArgs),
    /// Make a CA and a certificate per node for a TLS cluster.
    Certs(certs::CertsArgs),
    /// Back up a running cluster to a file, or seed a new node's data directory from one.
    Snapshot(snapshot::SnapshotArgs),
    /// Print a shell completion script: `sinkron completions bash > /etc/bash_completion.d/sinkron`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn main() {
    let cli = Cli::parse();
    output::init(cli.output);
    if let Err(e) = conn::init(&cli.conn) {
        eprintln!("sinkron: {e:#}");
        std::process::exit(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sinkron: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Commands::Serve(args) => serve::run(*args).await,
            Commands::Dev(args) => dev::run(args).await,
            Commands::Cluster(args) => cluster::run(args).await,
            Commands::Kv(args) => kv::run(args).await,
            Commands::Cache(args) => cache::run(args).await,
            Commands::Lock(args) => lock::run(args).await,
            Commands::Queue(args) => queue::run(args).await,
            Commands::Ring(args) => queue::ring(args).await,
            Commands::Bench(args) => bench::run(args).await,
            Commands::Chaos(args) => chaos::run(args).await,
            Commands::Certs(args) => certs::run(args),
            Commands::Snapshot(args) => snapshot::run(args).await,
            Commands::Completions { shell } => {
                use clap::CommandFactory as _;
                clap_complete::generate(shell, &mut Cli::command(), "sinkron", &mut std::io::stdout());
                Ok(())
            }
        }
    });
    if let Err(e) = result {
        eprintln!("sinkron: {e:#}");
        std::process::exit(1);
    }
}
