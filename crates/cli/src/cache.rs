//! `sinkron cache get|put|del|lines|stats`.

#[derive(clap::Args)]
pub struct CacheArgs {
    /// Node to ask; its own cache serves the request.
    #[arg(long, short, env = "SINKRON_ENDPOINT", default_value = "127.0.0.1:8001", global = true)]
    endpoint: String,
    #[command(subcommand)]
    command: CacheCommand,
}

#[derive(clap::Subcommand)]
enum CacheCommand {
    /// Read a key (a hit when this node holds the line).
    Get {
        /// The key.
        key: String,
    },
    /// Write a key; VALUE is JSON, or taken as a string when it is not valid JSON.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Store it in the backing store before answering (write-through).
        #[arg(long)]
        durable: bool,
    },
    /// Delete a key everywhere.
    Del {
        /// The key.
        key: String,
    },
    /// Every node's MESI state of a key.
    Lines {
        /// The key.
        key: String,
    },
    /// This node's cache counters.
    Stats,
}

pub async fn run(args: CacheArgs) -> anyhow::Result<()> {
    let client = crate::conn::client(&args.endpoint)?;
    let shown = match args.command {
        CacheCommand::Get { key } => match client.cache_get(&key).await? {
            Some(v) => serde_json::to_value(v)?,
            None => anyhow::bail!("cache key {key:?} has no value"),
        },
        CacheCommand::Put { key, value, durable } => {
            let value = serde_json::from_str(&value).unwrap_or(serde_json::Value::String(value));
            serde_json::to_value(client.cache_put(&key, value, durable).await?)?
        }
        CacheCommand::Del { key } => serde_json::to_value(client.cache_delete(&key).await?)?,
        CacheCommand::Lines { key } => serde_json::to_value(client.cache_lines(&key).await?)?,
        CacheCommand::Stats => serde_json::to_value(client.cache_stats().await?)?,
    };
    crate::output::show(&shown)?;
    Ok(())
}
