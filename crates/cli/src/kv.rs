//! `sinkron kv get|put|del|watch`.

use sinkron_client::{Fence, WriteOptions};

#[derive(clap::Args)]
pub struct KvArgs {
    /// Node to ask (any node answers).
    #[arg(long, short, env = "SINKRON_ENDPOINT", default_value = "127.0.0.1:8001", global = true)]
    endpoint: String,
    #[command(subcommand)]
    command: KvCommand,
}

/// Conditions of a write.
#[derive(clap::Args)]
struct Conditions {
    /// Compare-and-set: write only if the key is at this version (0: it must not exist).
    #[arg(long)]
    if_version: Option<u64>,
    /// Write only while LOCK is held with fence TOKEN, as `LOCK:TOKEN` (for example
    /// `--fence "report:$SINKRON_FENCE"` inside `sinkron lock exec`).
    #[arg(long, value_parser = parse_fence)]
    fence: Option<Fence>,
}

impl Conditions {
    fn options(self) -> WriteOptions {
        WriteOptions { if_version: self.if_version, fence: self.fence, request_id: None }
    }
}

/// Parses `LOCK:TOKEN` (the lock name may itself contain colons).
pub(crate) fn parse_fence(text: &str) -> Result<Fence, String> {
    let (lock, token) = text.rsplit_once(':').ok_or("expected LOCK:TOKEN")?;
    let token = token.parse().map_err(|_| format!("the fence token {token:?} is not a number"))?;
    if lock.is_empty() {
        return Err("the lock name is empty".into());
    }
    Ok(Fence { lock: lock.to_string(), token })
}

#[derive(clap::Subcommand)]
enum KvCommand {
    /// Print a key's value (linearizable read).
    Get {
        /// The key.
        key: String,
        /// Wait until the key's version is above this (or it is deleted after it).
        #[arg(long)]
        wait_version: Option<u64>,
        /// How long --wait-version waits, in ms (at most 60000).
        #[arg(long, default_value_t = 30_000)]
        wait_ms: u64,
    },
    /// Set a key; VALUE is JSON, or taken as a string when it is not valid JSON.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        #[command(flatten)]
        conditions: Conditions,
    },
    /// Delete a key.
    Del {
        /// The key.
        key: String,
        #[command(flatten)]
        conditions: Conditions,
    },
    /// Print every change under PREFIX, one JSON line each, until interrupted.
    Watch {
        /// Key prefix ("" for every key).
        prefix: String,
        /// Start after this version (default: from now).
        #[arg(long)]
        from_version: Option<u64>,
    },
}

pub async fn run(args: KvArgs) -> anyhow::Result<()> {
    let client = crate::conn::client(&args.endpoint)?;
    match args.command {
        KvCommand::Get { key, wait_version: None, .. } => match client.kv_get(&key).await? {
            Some(v) => crate::output::show(&v)?,
            None => anyhow::bail!("key {key:?} does not exist"),
        },
        KvCommand::Get { key, wait_version: Some(after), wait_ms } => {
            match client.kv_get_after(&key, after, wait_ms).await? {
                Some(v) => crate::output::show(&v)?,
                None => anyhow::bail!("key {key:?} does not exist"),
            }
        }
        KvCommand::Put { key, value, conditions } => {
            let value = serde_json::from_str(&value).unwrap_or(serde_json::Value::String(value));
            let put = client.kv_put_with(&key, value, &conditions.options()).await?;
            say!("{} = version {}", put.key, put.version);
        }
        KvCommand::Del { key, conditions } => {
            say!("{}", serde_json::to_string(&client.kv_delete_with(&key, &conditions.options()).await?)?)
        }
        KvCommand::Watch { prefix, from_version } => watch(&args.endpoint, &prefix, from_version).await?,
    }
    Ok(())
}

/// Prints changes until interrupted; when the node ends the stream (a watcher that fell
/// behind), it resumes after the last version printed.
async fn watch(endpoint: &str, prefix: &str, from_version: Option<u64>) -> anyhow::Result<()> {
    let client = crate::conn::client_with_timeout(endpoint, std::time::Duration::from_secs(30))?;
    let mut last = from_version;
    loop {
        let mut stream = client.watch(prefix, last).await?;
        while let Some(event) = stream.next().await? {
            last = Some(event.version);
            say!("{}", serde_json::to_string(&event)?);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_parse_as_lock_and_token() {
        assert_eq!(parse_fence("report:7"), Ok(Fence { lock: "report".into(), token: 7 }));
        assert_eq!(parse_fence("a:b:12").map(|f| f.lock), Ok("a:b".into()));
        for bad in ["report", "report:x", ":3", "report:-1"] {
            assert!(parse_fence(bad).is_err(), "{bad}");
        }
    }
}
