//! Where a node's objects live, from one URL plus optional S3 settings.
//!
//! | URL | backend |
//! |---|---|
//! | `file:///var/lib/templar/objects` | a local directory (the embedded default) |
//! | `memory://` | process memory (tests) |
//! | `s3://bucket` or `s3://bucket/prefix` | S3, Cloudflare R2 or any S3-compatible service |
//!
//! S3 settings come from the config, else from the environment (`AWS_ENDPOINT_URL`,
//! `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).

use std::time::Duration;

use serde::Deserialize;

use crate::retry::RetryPolicy;

/// The S3 part of a storage configuration.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// For example `https://<account>.r2.cloudflarestorage.com` or `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    /// `auto` for R2; defaults to `us-east-1`.
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// `https://endpoint/bucket/key` instead of `https://bucket.endpoint/key`. Most self-hosted
    /// S3 servers need it; R2 accepts both. Default true.
    pub path_style: Option<bool>,
}

/// Sizes and limits of transfers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferSettings {
    /// Objects at least this large are uploaded in parts.
    pub multipart_threshold: u64,
    /// The size of each uploaded part (S3 requires at least 5 MiB except for the last).
    pub part_size: u64,
    /// Objects at least this large are downloaded by ranged requests.
    pub ranged_threshold: u64,
    pub range_size: u64,
    /// How many parts or ranges move at once.
    pub concurrency: usize,
    /// Per-request time limit; a stalled connection counts as a failed attempt.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for TransferSettings {
    fn default() -> Self {
        TransferSettings {
            multipart_threshold: 64 << 20,
            part_size: 16 << 20,
            ranged_threshold: 64 << 20,
            range_size: 16 << 20,
            concurrency: 8,
            request_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Everything needed to open a store.
#[derive(Clone, Debug, Default)]
pub struct StoreConfig {
    pub url: String,
    pub s3: S3Settings,
    pub transfer: TransferSettings,
    pub retry: RetryPolicy,
}

impl StoreConfig {
    pub fn new(url: impl Into<String>) -> StoreConfig {
        StoreConfig {
            url: url.into(),
            ..StoreConfig::default()
        }
    }
}
