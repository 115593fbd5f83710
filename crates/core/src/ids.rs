//! Stable identifiers.
//!
//! Raft needs a numeric, `Copy` node id while people name nodes (`node1`). The numeric id is
//! a fixed, documented hash of the name (64-bit FNV-1a), so every node computes the same id
//! for the same name on every platform and release; `std`'s `DefaultHasher` promises neither.

/// 64-bit FNV-1a of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(PRIME))
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
    fn ids_of_default_names_differ() {
        let ids: std::collections::BTreeSet<u64> = (1..=100).map(|i| raft_id(&format!("node{i}"))).collect();
        assert_eq!(ids.len(), 100);
    }
}
