//! templar's object storage.
//!
//! Nodes never talk to each other directly: they publish signed objects to storage and read each
//! other's. [`Store`] opens a backend from one URL (`file://`, `memory://`, `s3://`), retries
//! transient failures with bounded exponential backoff and jitter, uploads large objects in
//! parts and downloads them by parallel ranges. [`Store::publish`] and [`Store::read_signed`]
//! wrap payloads in signed envelopes and turn whatever a peer left in storage into a typed
//! [`ReadOutcome`]: never a panic on hostile bytes, never an allocation beyond the caller's limit.

mod backend;
mod config;
mod error;
mod files;
mod retry;
mod signed;
mod store;

pub use config::{S3Settings, StoreConfig, TransferSettings};
pub use error::StorageError;
pub use files::{FileInfo, MAX_PARTS, part_size_for};
pub use retry::RetryPolicy;
pub use signed::{HeadOutcome, ReadOutcome, Verified};
pub use store::{Fetched, ObjectInfo, Store};
