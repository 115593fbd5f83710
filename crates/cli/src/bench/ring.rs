//! `sinkron bench ring`: the ring's balance and the partitions a joining node moves (computed, no cluster).

#[derive(clap::Args)]
pub(super) struct RingBenchArgs {
    /// Nodes on the ring.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Tokens per node.
    #[arg(long, default_value_t = 150)]
    virtual_nodes: u32,
    /// Partitions.
    #[arg(long, default_value_t = 16)]
    partitions: u32,
    /// Replicas per partition.
    #[arg(long, default_value_t = 3)]
    replication: usize,
    /// Sample keys for the key balance.
    #[arg(long, default_value_t = 100_000)]
    keys: u32,
}

/// Prints the ring's balance for `args.nodes` nodes and what a joining node moves.
pub(super) fn ring(args: &RingBenchArgs) {
    use sinkron_core::ring::Ring;
    let names: Vec<String> = (1..=args.nodes).map(|i| format!("node{i}")).collect();
    let ring = Ring::new(names.iter().map(String::as_str), args.virtual_nodes);
    let mut keys: std::collections::BTreeMap<&str, u32> = std::collections::BTreeMap::new();
    for i in 0..args.keys {
        if let Some(owner) = ring.owner_of(format!("key-{i}").as_bytes()) {
            *keys.entry(owner).or_default() += 1;
        }
    }
    let mean_keys = f64::from(args.keys) / args.nodes as f64;
    let max_keys = keys.values().copied().max().unwrap_or(0);
    let placements = ring.placements(args.partitions, args.replication);
    let mut preferred: std::collections::BTreeMap<&str, u32> = std::collections::BTreeMap::new();
    let mut replicas: std::collections::BTreeMap<&str, u32> = std::collections::BTreeMap::new();
    for p in &placements {
        if let Some(first) = p.replicas.first() {
            *preferred.entry(first.as_str()).or_default() += 1;
        }
        for r in &p.replicas {
            *replicas.entry(r.as_str()).or_default() += 1;
        }
    }
    let mean_preferred = f64::from(args.partitions) / args.nodes as f64;
    let total_replicas: u32 = replicas.values().sum();
    let mean_replicas = f64::from(total_replicas) / args.nodes as f64;
    let mut grown = names.clone();
    grown.push(format!("node{}", args.nodes + 1));
    let after = Ring::new(grown.iter().map(String::as_str), args.virtual_nodes);
    let after_placements = after.placements(args.partitions, args.replication);
    let pairs = placements.iter().zip(&after_placements);
    let moved_partitions =
        pairs.clone().filter(|(a, b)| b.replicas.iter().any(|n| !a.replicas.contains(n))).count();
    let moved_replicas: usize =
        pairs.map(|(a, b)| b.replicas.iter().filter(|n| !a.replicas.contains(n)).count()).sum();
    let total_after: usize = after_placements.iter().map(|p| p.replicas.len()).sum();
    let moved_keys = (0..args.keys)
        .filter(|i| {
            let key = format!("key-{i}");
            ring.owner_of(key.as_bytes()) != after.owner_of(key.as_bytes())
        })
        .count();
    say!(
        "ring: {} nodes x {} virtual nodes, {} partitions x {} replicas",
        args.nodes,
        args.virtual_nodes,
        args.partitions,
        args.replication
    );
    say!(
        "  keys per node: max/mean {:.3} ({max_keys} vs {mean_keys:.0} of {} sample keys)",
        f64::from(max_keys) / mean_keys,
        args.keys
    );
    say!(
        "  preferred leaders per node: max/mean {:.3} ({:?})",
        f64::from(preferred.values().copied().max().unwrap_or(0)) / mean_preferred,
        preferred
    );
    say!(
        "  replicas per node: max/mean {:.3} ({:?})",
        f64::from(replicas.values().copied().max().unwrap_or(0)) / mean_replicas,
        replicas
    );
    say!(
        "  a node joining changes the replica set of {moved_partitions} of {} partitions ({:.1}%), moving {moved_replicas} of {total_after} replicas ({:.1}%) and {:.1}% of keys (ideal share of the new node {:.1}%)",
        args.partitions,
        100.0 * moved_partitions as f64 / f64::from(args.partitions),
        100.0 * moved_replicas as f64 / total_after.max(1) as f64,
        100.0 * moved_keys as f64 / f64::from(args.keys),
        100.0 / (args.nodes + 1) as f64
    );
}
