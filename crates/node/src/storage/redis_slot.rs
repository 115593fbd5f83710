//! [`RedisSlot`]: one Redis key holding bytes (a group's snapshot), with calls retried
//! until Redis answers. A leaf shared by the Redis backend and the state machine store.

use std::io;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::AsyncCommands;

/// Longest wait for one Redis call before it counts as failed (and is retried).
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) fn redis_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("redis: {e}"))
}

/// One Redis key holding bytes.
#[derive(Clone)]
pub struct RedisSlot {
    conn: ConnectionManager,
    key: String,
    /// Written only while this hash's `epoch` is this value (see `redis.rs`, fencing).
    fence: Option<(String, i64)>,
}

/// Sets `KEYS[2]` to `ARGV[2]` if `KEYS[1]`'s `epoch` is `ARGV[1]`; 1 if set, 0 if not.
const SET_FENCED: &str = r"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
return 1
";

/// [`SET_FENCED`], hashed once.
static SET_FENCED_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(SET_FENCED));

impl RedisSlot {
    /// The slot at `key`.
    pub fn new(conn: ConnectionManager, key: String) -> Self {
        Self { conn, key, fence: None }
    }

    /// The same slot, written only while hash `writer` holds `epoch`.
    pub fn fenced(self, writer: String, epoch: i64) -> Self {
        Self { fence: Some((writer, epoch)), ..self }
    }
}

impl RedisSlot {
    /// Stores `bytes`, retrying until Redis takes them: openraft stops a group for good on
    /// a snapshot error, while waiting lets it carry on once Redis is back.
    /// A fenced slot whose opening was taken over refuses the write with an error.
    pub async fn set(&self, bytes: Vec<u8>) -> io::Result<()> {
        let stored = retry_until_answered(&self.key, || {
            let (mut conn, key, bytes, fence) =
                (self.conn.clone(), self.key.clone(), bytes.clone(), self.fence.clone());
            async move {
                match fence {
                    None => conn.set::<_, _, ()>(key, bytes).await.map(|()| true),
                    Some((writer, epoch)) => {
                        let set: i64 = SET_FENCED_SCRIPT
                            .key(writer)
                            .key(key)
                            .arg(epoch)
                            .arg(bytes)
                            .invoke_async(&mut conn)
                            .await?;
                        Ok(set == 1)
                    }
                }
            }
        })
        .await?;
        if stored {
            Ok(())
        } else {
            Err(redis_error(format!(
                "{} belongs to another opening of its group (or Redis lost the group's data); this snapshot was not stored",
                self.key
            )))
        }
    }

    /// The stored bytes, if any (retrying like [`RedisSlot::set`]).
    pub async fn get(&self) -> io::Result<Option<Vec<u8>>> {
        retry_until_answered(&self.key, || {
            let (mut conn, key) = (self.conn.clone(), self.key.clone());
            async move { conn.get::<_, Option<Vec<u8>>>(key).await }
        })
        .await
    }
}

async fn retry_until_answered<T, F, Fut>(key: &str, mut call: F) -> io::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<T>>,
{
    let mut pause = Duration::from_millis(50);
    for attempt in 0u32.. {
        match tokio::time::timeout(CALL_TIMEOUT, call()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) if attempt.is_multiple_of(10) => {
                tracing::error!(key, error = %e, "Redis call failed; retrying")
            }
            Err(_) if attempt.is_multiple_of(10) => tracing::error!(key, "Redis did not answer; retrying"),
            _ => {}
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
    Err(redis_error("gave up"))
}
