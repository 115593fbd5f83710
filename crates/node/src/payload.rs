//! A log entry's batch with its JSON, encoded once.
//!
//! An entry travels from the proposing leader to its own log and to every follower, and from
//! a follower's network handler to its log. Each of those used to encode the batch again
//! (the leader three times, each follower once more after decoding it), and every read of
//! the log for replication cloned the whole batch. A [`Payload`] holds the batch and its
//! JSON side by side behind one shared pointer: the leader encodes the batch once when it
//! proposes it, a follower keeps the bytes it received, and serialising a payload (into a
//! log record, an `AppendEntries` body) copies those bytes verbatim. Cloning is a pointer
//! copy.
//!
//! The bytes are the batch's own JSON, so what is stored and sent is exactly what it was
//! before; a payload reads back from any serde_json input (log records, peer bodies), and
//! is decoded as it is read, so a malformed one is refused there.
//!
//! The decoded batch is needed once, to apply the entry: applying takes it, and the entry
//! then stays in the in-memory log (until a snapshot lets it go) as its JSON alone.

use std::fmt;
use std::sync::{Arc, Mutex};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use sinkron_core::Batch;

/// The data of a normal log entry: a [`Batch`] and its JSON encoding.
#[derive(Clone)]
pub struct Payload(Arc<Encoded>);

struct Encoded {
    /// The decoded batch, until the entry is applied.
    batch: Mutex<Option<Batch>>,
    json: Box<RawValue>,
}

impl Payload {
    /// Encodes `batch`, once.
    pub fn new(batch: Batch) -> Result<Self, serde_json::Error> {
        let json = serde_json::value::to_raw_value(&batch)?;
        Ok(Self(Arc::new(Encoded { batch: Mutex::new(Some(batch)), json })))
    }

    /// Decodes a payload from its JSON, keeping the bytes.
    pub fn from_json(json: Box<RawValue>) -> Result<Self, serde_json::Error> {
        let batch = serde_json::from_str(json.get())?;
        Ok(Self(Arc::new(Encoded { batch: Mutex::new(Some(batch)), json })))
    }

    /// The batch, to apply it: taken from this payload (and every clone of it), which keeps
    /// its JSON only from then on. Decoded again if it was taken already.
    pub fn take_batch(&self) -> Result<Batch, serde_json::Error> {
        let taken = self.0.batch.lock().unwrap_or_else(|p| p.into_inner()).take();
        match taken {
            Some(batch) => Ok(batch),
            None => serde_json::from_str(self.0.json.get()),
        }
    }

    /// The batch's JSON.
    pub fn json(&self) -> &str {
        self.0.json.get()
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.json())
    }
}

/// Payloads are equal when their JSON is: equal batches encode alike.
impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json()
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.json.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let json = Box::<RawValue>::deserialize(deserializer)?;
        Self::from_json(json).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use sinkron_core::{Command, Request};

    use super::*;

    fn batch() -> Batch {
        let command = Command::KvPut {
            key: "k\u{1}\"".into(),
            value: serde_json::json!({"nested": [1, "two", {"three": null}]}),
            if_version: None,
            fence: None,
        };
        Batch { at_ms: 7, requests: vec![Request { request_id: Some("r1".into()), command }], seed: None }
    }

    fn json(value: &impl Serialize) -> String {
        serde_json::to_string(value).expect("encodes")
    }

    #[test]
    fn a_payload_serialises_to_its_batchs_own_json() {
        let payload = Payload::new(batch()).expect("encodes");
        assert_eq!(json(&payload), json(&batch()));
        assert_eq!(payload.json(), json(&batch()));
    }

    #[test]
    fn a_payload_read_back_keeps_the_bytes_it_was_given_and_decodes_the_batch() {
        #[derive(Deserialize, Serialize)]
        struct Wrapped {
            wrapped: Payload,
        }
        // Spacing that a re-encoding would drop: the bytes are kept as received.
        let pretty = serde_json::to_string_pretty(&batch()).expect("encodes");
        let sent = format!("{{\"wrapped\": {pretty} }}");
        let read: Wrapped = serde_json::from_str(&sent).expect("decodes");
        assert_eq!(read.wrapped.take_batch().expect("decoded"), batch());
        assert_eq!(read.wrapped.json(), pretty);
        // Written out again, the payload is the bytes it was given, not a new encoding.
        assert!(json(&read).contains(&pretty), "the kept bytes are what a payload writes");
        let again: Wrapped = serde_json::from_slice(json(&read).as_bytes()).expect("decodes");
        assert_eq!(again.wrapped, read.wrapped);
    }

    proptest::proptest! {
        /// A follower decodes the very batch the leader applies, floats to the last bit:
        /// replicas must not differ by a rounding.
        #[test]
        fn a_batch_reads_back_equal_to_the_one_encoded(x in proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL) {
            let mut encoded = batch();
            if let Command::KvPut { value, .. } = &mut encoded.requests[0].command {
                *value = serde_json::json!([x, -x, x / 3.0]);
            }
            let payload = Payload::new(encoded.clone()).expect("encodes");
            let read = Payload::from_json(payload.0.json.clone()).expect("decodes");
            proptest::prop_assert_eq!(read.take_batch().expect("decoded"), encoded);
        }
    }

    #[test]
    fn a_payload_that_is_not_a_batch_is_refused() {
        assert!(serde_json::from_str::<Payload>("{\"at_ms\": \"soon\"}").is_err());
        assert!(serde_json::from_str::<Payload>("[1, 2").is_err());
    }

    #[test]
    fn clones_share_the_encoding_and_applying_leaves_the_json_alone() {
        let payload = Payload::new(batch()).expect("encodes");
        let copy = payload.clone();
        assert!(std::ptr::eq(payload.json(), copy.json()));
        assert_eq!(copy.take_batch().expect("held"), batch());
        assert!(payload.0.batch.lock().expect("lock").is_none(), "the decoded batch is let go once taken");
        // Taken again (never in practice), it is decoded from the JSON.
        assert_eq!(payload.take_batch().expect("decoded"), batch());
        assert_eq!(payload.json(), json(&batch()));
    }
}
