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
/// Deepest nesting of arrays and objects in a public request body (the body's own object
/// counts as one level). serde_json refuses anything deeper than 128 levels, and every
/// node-to-node message wraps a client's value in a few more; 64 leaves room for that
/// wrapping so whatever a client may send also replicates.
pub const JSON_DEPTH_MAX: usize = 64;

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
    let size = json_size(body);
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
    let size = json_size(value);
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

/// Exactly how many bytes `value` takes as compact JSON, counted as it is encoded (nothing
/// is kept).
pub fn json_size(value: &serde_json::Value) -> usize {
    let mut count = crate::ids::ByteCount::default();
    serde_json::to_writer(&mut count, value).map_or(usize::MAX, |()| count.0)
}

/// About how many bytes `value` takes as JSON, without encoding it: exact for strings
/// without escapes, an upper bound of 24 bytes per number. Iterative, so any depth is fine.
pub fn json_size_estimate(value: &serde_json::Value) -> usize {
    use serde_json::Value;
    let mut size = 0usize;
    let mut pending = vec![value];
    while let Some(v) = pending.pop() {
        size += match v {
            Value::Null => 4,
            Value::Bool(_) => 5,
            Value::Number(_) => 24,
            Value::String(s) => s.len() + 2,
            Value::Array(items) => {
                pending.extend(items.iter());
                2 + items.len()
            }
            Value::Object(map) => {
                pending.extend(map.values());
                2 + map.keys().map(|k| k.len() + 4).sum::<usize>()
            }
        };
    }
    size
}

/// The deepest nesting of arrays and objects in the JSON text `bytes`, or `None` once it
/// passes `limit` (the scan stops there, so a hostile body costs no more than its length).
/// Brackets inside strings do not count; the text need not be valid JSON (the parser
/// that runs afterwards judges that).
pub fn json_depth_within(bytes: &[u8], limit: usize) -> Option<usize> {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return None;
                }
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Some(deepest)
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
    fn json_depth_counts_brackets_outside_strings() {
        let table: [(&str, Option<usize>); 7] = [
            ("1", Some(0)),
            ("{}", Some(1)),
            (r#"{"a":[1,{"b":[]}]}"#, Some(4)),
            (r#"{"a":"[[[[[[[[[[[["}"#, Some(1)),
            (r#"{"a":"\\\"[[[[[["}"#, Some(1)),
            (r#"[[[[]]],[[]]]"#, Some(4)),
            ("[[[[[[", None),
        ];
        for (text, depth) in table {
            assert_eq!(json_depth_within(text.as_bytes(), 5), depth, "{text}");
        }
    }

    proptest::proptest! {
        /// The scan agrees with the depth of the value serde_json encodes.
        #[test]
        fn json_depth_matches_the_parsed_value(levels in proptest::collection::vec(0u8..3, 0..40), text in "[\\[\\]{}\"\\\\a]{0,8}") {
            let mut value = serde_json::Value::String(text);
            for level in &levels {
                value = match level {
                    0 => serde_json::json!([value]),
                    1 => serde_json::json!({"k": value, "s": "}]"}),
                    _ => serde_json::json!([1, "[", value, {}]),
                };
            }
            let encoded = serde_json::to_vec(&value).expect("encode");
            let expected = depth_of(&value);
            proptest::prop_assert_eq!(json_depth_within(&encoded, 64), Some(expected));
            if expected > 0 {
                proptest::prop_assert_eq!(json_depth_within(&encoded, expected - 1), None);
            }
        }
    }

    fn depth_of(value: &serde_json::Value) -> usize {
        match value {
            serde_json::Value::Array(items) => 1 + items.iter().map(depth_of).max().unwrap_or(0),
            serde_json::Value::Object(map) => 1 + map.values().map(depth_of).max().unwrap_or(0),
            _ => 0,
        }
    }

    #[test]
    fn json_size_is_the_encoded_length() {
        for value in [
            serde_json::json!("\u{1}é\"\\"),
            serde_json::json!({"a": [1, 2.5, {"b": "cc"}], "d": null, "e": true}),
            serde_json::json!(1e300),
        ] {
            assert_eq!(json_size(&value), serde_json::to_vec(&value).expect("encode").len(), "{value}");
        }
    }

    #[test]
    fn size_estimates_track_the_encoded_size() {
        for value in [
            serde_json::json!("x".repeat(1000)),
            serde_json::json!({"a": [1, 2, {"b": "cc"}], "d": null, "e": true}),
            serde_json::json!([[[[[[]]]]]]),
        ] {
            let encoded = serde_json::to_vec(&value).expect("encode").len();
            let estimate = json_size_estimate(&value);
            assert!(estimate >= encoded && estimate <= encoded * 3 + 16, "{value}: {estimate} vs {encoded}");
        }
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
