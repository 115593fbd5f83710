//! `sinkron kv get|put|del`.

#[derive(clap::Args)]
pub struct KvArgs {
    /// Node to ask (any node answers).
    #[arg(long, short, env = "SINKRON_ENDPOINT", default_value = "127.0.0.1:8001", global = true)]
    endpoint: String,
    #[command(subcommand)]
    command: KvCommand,
}

#[derive(clap::Subcommand)]
enum KvCommand {
    /// Print a key's value (linearizable read).
    Get {
        /// The key.
        key: String,
    },
    /// Set a key; VALUE is JSON, or taken as a string when it is not valid JSON.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Delete a key.
    Del {
        /// The key.
        key: String,
    },
}

pub async fn run(args: KvArgs) -> anyhow::Result<()> {
    let client = crate::conn::client(&args.endpoint)?;
    match args.command {
        KvCommand::Get { key } => match client.kv_get(&key).await? {
            Some(v) => say!("{}", serde_json::to_string_pretty(&v)?),
            None => anyhow::bail!("key {key:?} does not exist"),
        },
        KvCommand::Put { key, value } => {
            let value = serde_json::from_str(&value).unwrap_or(serde_json::Value::String(value));
            let put = client.kv_put(&key, value).await?;
            say!("{} = version {}", put.key, put.version);
        }
        KvCommand::Del { key } => say!("{}", client.kv_delete(&key).await?),
    }
    Ok(())
}
