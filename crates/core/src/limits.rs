//! Size limits shared by every layer, so the API rejects what the state machine would refuse.

use crate::error::CoreError;

/// Longest node name, in bytes.
pub const NODE_NAME_MAX_BYTES: usize = 64;
/// Longest key of the replicated key-value store, in bytes.
pub const KV_KEY_MAX_BYTES: usize = 256;
/// Largest value of the replicated key-value store, in bytes of its JSON encoding.
pub const KV_VALUE_MAX_BYTES: usize = 64 * 1024;
/// Longest client-chosen request id, in bytes.
pub const REQUEST_ID_MAX_BYTES: usize = 128;
/// How many recent request ids the state machine remembers for de-duplication.
pub const DEDUP_WINDOW: usize = 10_000;

/// Longest queue name, in bytes; its dead-letter queue `<name>.dlq` may have 4 more.
pub const QUEUE_NAME_MAX_BYTES: usize = 200;
/// Longest ordering key of a message, in bytes.
pub const QUEUE_KEY_MAX_BYTES: usize = 256;
/// Largest message body, in bytes of its JSON encoding.
pub const QUEUE_BODY_MAX_BYTES: usize = 256 * 1024;
/// Most messages one receive returns.
pub const QUEUE_RECEIVE_MAX: u32 = 100;
/// Longest visibility timeout, in milliseconds (12 hours).
pub const QUEUE_VISIBILITY_MAX_MS: u64 = 12 * 3600 * 1000;
/// Longest long-poll wait of a receive, in milliseconds.
pub const QUEUE_WAIT_MAX_MS: u64 = 60_000;
/// Longest delay of a nack, in milliseconds (15 minutes).
pub const QUEUE_DELAY_MAX_MS: u64 = 15 * 60 * 1000;

/// Checks a queue name: 1 to [`QUEUE_NAME_MAX_BYTES`] of ASCII letters, digits, `-`, `_`,
/// `.` and `:`.
pub fn validate_queue_name(name: &str) -> Result<(), CoreError> {
    let max = QUEUE_NAME_MAX_BYTES + if name.ends_with(crate::queue::DLQ_SUFFIX) { 4 } else { 0 };
    if name.is_empty() || name.len() > max {
        return Err(CoreError::InvalidArgument {
            field: "queue",
            reason: format!(
                "a queue name has 1 to {QUEUE_NAME_MAX_BYTES} bytes (plus .dlq), got {}",
                name.len()
            ),
        });
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "-_.:".contains(*c))) {
        return Err(CoreError::InvalidArgument {
            field: "queue",
            reason: format!("a queue name uses letters, digits, '-', '_', '.' and ':', found {bad:?}"),
        });
    }
    Ok(())
}

/// Checks a message: its ordering key and the encoded size of its body.
pub fn validate_message(key: Option<&str>, body: &serde_json::Value) -> Result<(), CoreError> {
    if let Some(key) = key {
        if key.is_empty() {
            return Err(CoreError::InvalidArgument { field: "key", reason: "must not be empty".into() });
        }
        if key.len() > QUEUE_KEY_MAX_BYTES {
            return Err(CoreError::TooLarge { field: "key", size: key.len(), limit: QUEUE_KEY_MAX_BYTES });
        }
    }
    let size = serde_json::to_vec(body).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > QUEUE_BODY_MAX_BYTES {
        return Err(CoreError::TooLarge { field: "body", size, limit: QUEUE_BODY_MAX_BYTES });
    }
    Ok(())
}

/// Checks a node name: 1 to [`NODE_NAME_MAX_BYTES`] of ASCII letters, digits, `-` and `_`.
pub fn validate_node_name(name: &str) -> Result<(), CoreError> {
    if name.is_empty() || name.len() > NODE_NAME_MAX_BYTES {
        return Err(CoreError::InvalidArgument {
            field: "id",
            reason: format!("a node name has 1 to {NODE_NAME_MAX_BYTES} bytes, got {}", name.len()),
        });
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        return Err(CoreError::InvalidArgument {
            field: "id",
            reason: format!("a node name uses letters, digits, '-' and '_', found {bad:?}"),
        });
    }
    Ok(())
}

/// Checks a key of the replicated key-value store: not empty, at most [`KV_KEY_MAX_BYTES`].
pub fn validate_kv_key(key: &str) -> Result<(), CoreError> {
    if key.is_empty() {
        return Err(CoreError::InvalidArgument { field: "key", reason: "must not be empty".into() });
    }
    if key.len() > KV_KEY_MAX_BYTES {
        return Err(CoreError::TooLarge { field: "key", size: key.len(), limit: KV_KEY_MAX_BYTES });
    }
    Ok(())
}

/// Checks the encoded size of a value of the replicated key-value store.
pub fn validate_kv_value(value: &serde_json::Value) -> Result<(), CoreError> {
    let size = serde_json::to_vec(value).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > KV_VALUE_MAX_BYTES {
        return Err(CoreError::TooLarge { field: "value", size, limit: KV_VALUE_MAX_BYTES });
    }
    Ok(())
}

/// Checks a client-chosen request id.
pub fn validate_request_id(id: &str) -> Result<(), CoreError> {
    if id.is_empty() || id.len() > REQUEST_ID_MAX_BYTES {
        return Err(CoreError::InvalidArgument {
            field: "request_id",
            reason: format!("has 1 to {REQUEST_ID_MAX_BYTES} bytes, got {}", id.len()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        assert!(validate_node_name("node1").is_ok());
        assert!(validate_node_name("eu-west_3").is_ok());
        assert!(validate_node_name("").is_err());
        assert!(validate_node_name("node 1").is_err());
        assert!(validate_node_name(&"n".repeat(NODE_NAME_MAX_BYTES + 1)).is_err());
    }

    #[test]
    fn queue_names_and_messages() {
        assert!(validate_queue_name("orders").is_ok());
        assert!(validate_queue_name("orders.dlq").is_ok());
        assert!(validate_queue_name("").is_err());
        assert!(validate_queue_name("a/b").is_err());
        assert!(validate_queue_name(&"q".repeat(QUEUE_NAME_MAX_BYTES + 1)).is_err());
        let longest = "q".repeat(QUEUE_NAME_MAX_BYTES);
        assert!(
            validate_queue_name(&format!("{longest}.dlq")).is_ok(),
            "the longest queue's DLQ is readable"
        );
        assert!(validate_message(Some("k"), &serde_json::json!({"a": 1})).is_ok());
        assert!(validate_message(Some(""), &serde_json::json!(1)).is_err());
        let big = serde_json::Value::String("x".repeat(QUEUE_BODY_MAX_BYTES));
        assert!(matches!(validate_message(None, &big), Err(CoreError::TooLarge { .. })));
    }

    #[test]
    fn kv_sizes() {
        assert!(validate_kv_key("a").is_ok());
        assert!(validate_kv_key("").is_err());
        assert!(matches!(
            validate_kv_key(&"k".repeat(KV_KEY_MAX_BYTES + 1)),
            Err(CoreError::TooLarge { .. })
        ));
        let big = serde_json::Value::String("x".repeat(KV_VALUE_MAX_BYTES));
        assert!(matches!(validate_kv_value(&big), Err(CoreError::TooLarge { .. })));
        assert!(validate_kv_value(&serde_json::json!({"a": 1})).is_ok());
    }
}
