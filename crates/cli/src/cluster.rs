//! `sinkron cluster status|add|remove`.

use sinkron_client::Client;

#[derive(clap::Args)]
pub struct ClusterArgs {
    /// Node to ask (any node answers).
    #[arg(long, short, env = "SINKRON_ENDPOINT", default_value = "127.0.0.1:8001", global = true)]
    endpoint: String,
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(clap::Subcommand)]
enum ClusterCommand {
    /// Members, roles, term, leader and log indexes, asked of every member.
    Status,
    /// Whether the node is ready (`GET /ready`, which needs no token); fails when not.
    Ready,
    /// Add a node (learner, then voter).
    Add {
        /// The new node's NODE_ID.
        id: String,
        /// host:port the cluster reaches it on.
        addr: String,
    },
    /// Remove a node.
    Remove {
        /// The node's NODE_ID.
        id: String,
    },
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let client = crate::conn::client(&args.endpoint)?;
    match args.command {
        ClusterCommand::Status => status(&client).await,
        ClusterCommand::Ready => {
            let ready = client.ready().await?;
            crate::output::show(&ready)?;
            Ok(())
        }
        ClusterCommand::Add { id, addr } => {
            client.add_member(&id, &addr).await?;
            say!("{id} added as a voter");
            status(&client).await
        }
        ClusterCommand::Remove { id } => {
            client.remove_member(&id).await?;
            say!("{id} removed");
            status(&client).await
        }
    }
}

async fn status(client: &Client) -> anyhow::Result<()> {
    let overview = client.cluster_nodes().await?;
    if crate::output::format() == Some(crate::output::Output::Json) {
        return crate::output::show(&overview);
    }
    let seen = overview.nodes.iter().find_map(|n| n.cluster.as_ref());
    let leader = seen.and_then(|s| s.leader.as_ref()).map_or("(none)", |l| l.id.as_str());
    say!("leader: {leader}   term: {}", seen.map_or(0, |s| s.term));
    let member_role = |id: &str| {
        seen.and_then(|s| s.members.iter().find(|m| m.id == id)).map_or("?", |m| m.role.as_str()).to_string()
    };
    let rows: Vec<serde_json::Value> = overview
        .nodes
        .iter()
        .map(|n| match &n.cluster {
            Some(s) => serde_json::json!({
                "node": n.id, "address": n.addr, "member": member_role(&n.id), "role": s.role, "term": s.term,
                "last_log": s.last_log_index, "commit": s.commit_index, "applied": s.applied_index,
                "ready": if n.ready { "yes".to_string() } else { n.ready_problem.clone().unwrap_or_default() },
            }),
            None => serde_json::json!({
                "node": n.id, "address": n.addr, "member": member_role(&n.id), "role": "unreachable",
                "ready": n.error.clone().unwrap_or_default(),
            }),
        })
        .collect();
    say!("{}", crate::output::render(&serde_json::Value::Array(rows)));
    Ok(())
}
