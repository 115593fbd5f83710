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
            say!("{}", serde_json::to_string(&ready)?);
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
    let seen = client.cluster().await?;
    let leader = seen.leader.as_ref().map(|l| l.id.clone()).unwrap_or_else(|| "(none)".into());
    say!("leader: {leader}   term: {}", seen.term);
    say!(
        "{:<10} {:<22} {:<8} {:<10} {:>6} {:>10} {:>10} {:>10}",
        "NODE",
        "ADDRESS",
        "MEMBER",
        "ROLE",
        "TERM",
        "LAST_LOG",
        "COMMIT",
        "APPLIED"
    );
    for member in &seen.members {
        let peer = crate::conn::member_client(client, &member.addr, std::time::Duration::from_secs(1))?;
        let line = match peer.cluster().await {
            Ok(s) => format!(
                "{:<10} {:<22} {:<8} {:<10} {:>6} {:>10} {:>10} {:>10}",
                member.id,
                member.addr,
                member.role,
                s.role,
                s.term,
                s.last_log_index,
                s.commit_index,
                s.applied_index
            ),
            Err(_) => {
                format!("{:<10} {:<22} {:<8} {:<10}", member.id, member.addr, member.role, "unreachable")
            }
        };
        say!("{line}");
    }
    Ok(())
}
