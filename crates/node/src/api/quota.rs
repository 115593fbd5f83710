//! The quota checks of group 0's write endpoints (see `crate::quota`): a write that grows
//! the state is refused while group 0 is full, and a new lock or cache key while there are
//! as many as the quota allows.

use super::error::NodeError;
use crate::node::Node;
use crate::quota::Quotas;
use crate::types::GROUP0;

/// What a write to group 0 may create.
pub enum Growth<'a> {
    /// A KV value (or any other write that only adds bytes).
    Bytes,
    /// Possibly a new lock of this name.
    Lock(&'a str),
    /// Possibly a new cache key.
    CacheKey(&'a str),
}

/// Refuses a write to group 0 that would grow it past a quota.
pub fn check_group0(node: &Node, growth: Growth<'_>) -> Result<(), NodeError> {
    let group0 = node.group0.group();
    node.quotas.check_bytes(GROUP0, group0.sm.usage(), &group0.raft)?;
    let applied = group0.sm.read();
    let state = &applied.state;
    match growth {
        Growth::Bytes => Ok(()),
        Growth::Lock(name) if state.locks.get(name).is_some() => Ok(()),
        Growth::Lock(_) => {
            Quotas::check_count("lock", state.locks.locks().len(), node.quotas.locks, "QUOTA_LOCKS")
        }
        Growth::CacheKey(key) if state.cache.get(key).is_some() => Ok(()),
        Growth::CacheKey(_) => {
            Quotas::check_count("cache key", state.cache.len(), node.quotas.cache_keys, "QUOTA_CACHE_KEYS")
        }
    }
}
