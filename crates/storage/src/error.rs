use std::time::Duration;

/// Why a storage operation failed. Verdicts about *content* (bad signature, wrong window…) are
/// not errors: they are [`crate::ReadOutcome`]s.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid storage URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("storage configuration: {0}")]
    Config(String),
    #[error("{operation} {key}: gave up after {attempts} attempts in {elapsed:.1?}: {source}")]
    Unavailable {
        operation: &'static str,
        key: String,
        attempts: u32,
        elapsed: Duration,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("{operation} {key}: {source}")]
    Refused {
        operation: &'static str,
        key: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("{key}: object is {size} bytes, more than the {limit}-byte limit")]
    TooLarge { key: String, size: u64, limit: u64 },
    #[error("{key}: the server sent {got} bytes for a {expected}-byte object")]
    SizeMismatch {
        key: String,
        expected: u64,
        got: u64,
    },
    #[error("invalid object key {key:?}: {reason}")]
    BadKey { key: String, reason: String },
}
