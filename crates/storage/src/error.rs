use std::path::PathBuf;
use std::time::Duration;

use crate::files::FileInfo;

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
    #[error("{action} {path}: {source}")]
    LocalFile {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} changed while it was being uploaded to {key} ({size_before} bytes when opened, \
         {size_after} now); nothing was stored: upload a file nobody is writing to (write it \
         elsewhere, then rename it into place)"
    )]
    FileChanged {
        key: String,
        path: PathBuf,
        size_before: u64,
        size_after: u64,
    },
    #[error(
        "{key}: the object is {found} bytes but {expected} were expected, so it was not \
         downloaded: it is not the object expected (replaced since, or the expectation is stale)"
    )]
    UnexpectedSize {
        key: String,
        expected: u64,
        found: u64,
    },
    #[error(
        "{key}: downloaded {found}, but expected {expected}; discarded, nothing written to \
         {path}: the object was corrupted or replaced, or the expectation is stale; download \
         it again or ask its publisher"
    )]
    ContentMismatch {
        key: String,
        path: PathBuf,
        expected: Box<FileInfo>,
        found: Box<FileInfo>,
    },
    #[error(
        "{key} was replaced while it was being downloaded; discarded, nothing written to \
         {path}: download it again"
    )]
    ObjectChanged { key: String, path: PathBuf },
}

impl StorageError {
    /// Whether the same operation may succeed later with nothing changed: a server that stayed
    /// down through the retries, or an object that changed under a read. The others need an
    /// operator (a URL, credentials, a disk).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StorageError::Unavailable { .. }
                | StorageError::SizeMismatch { .. }
                | StorageError::FileChanged { .. }
                | StorageError::ObjectChanged { .. }
        )
    }
}
