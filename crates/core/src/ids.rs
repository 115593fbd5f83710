//! Stable identifiers.
//!
//! Raft needs a numeric, `Copy` node id while people name nodes (`node1`). The numeric id is
//! a fixed, documented hash of the name (64-bit FNV-1a), so every node computes the same id
//! for the same name on every platform and release; `std`'s `DefaultHasher` promises neither.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hasher = Fnv1a64::default();
    hasher.update(bytes);
    hasher.0
}

/// A running 64-bit FNV-1a; as an `io::Write` it digests what is written to it, so a
/// value's encoding can be hashed as it is produced, without a buffer.
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a64(pub u64);

impl Default for Fnv1a64 {
    fn default() -> Self {
        Self(FNV_OFFSET)
    }
}

impl Fnv1a64 {
    /// Digests `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0 = bytes.iter().fold(self.0, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(FNV_PRIME));
    }
}

impl std::io::Write for Fnv1a64 {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An `io::Write` that only counts what is written to it: the size of an encoding without
/// keeping it.
#[derive(Debug, Default, Clone, Copy)]
pub struct ByteCount(pub usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The Raft node id of the node called `name`.
pub fn raft_id(name: &str) -> u64 {
    fnv1a64(name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_reference_vectors() {
        // Published FNV-1a test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn streamed_digest_and_count_match_the_buffered_ones() {
        use std::io::Write;
        let value = serde_json::json!({"op": "kv_put", "key": "k", "value": [1, "two", {"three": 3.5}]});
        let bytes = serde_json::to_vec(&value).expect("encode");
        let mut hasher = Fnv1a64::default();
        serde_json::to_writer(&mut hasher, &value).expect("hash");
        assert_eq!(hasher.0, fnv1a64(&bytes));
        let mut count = ByteCount::default();
        count.write_all(&bytes[..3]).expect("count");
        serde_json::to_writer(&mut count, &value).expect("count");
        assert_eq!(count.0, bytes.len() + 3);
    }

    #[test]
    fn ids_of_default_names_differ() {
        let ids: std::collections::BTreeSet<u64> = (1..=100).map(|i| raft_id(&format!("node{i}"))).collect();
        assert_eq!(ids.len(), 100);
    }
}
