//! The one error type of the core crate.

use thiserror::Error;

/// Errors raised while validating input for the pure state machines.
///
/// Expected outcomes of a command (a key that does not exist, a duplicate request) are
/// values in [`crate::Response`], not errors.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CoreError {
    /// A caller-supplied argument is malformed: empty, too long or with forbidden characters.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The name of the offending field, as the caller spelled it.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A caller-supplied value exceeds a size limit.
    #[error("{field} is {size} bytes, the limit is {limit}")]
    TooLarge {
        /// The name of the offending field.
        field: &'static str,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
}
