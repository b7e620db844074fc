//! Turns a [`StoreConfig`] into an `object_store` backend.

use std::sync::Arc;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::multipart::MultipartStore;
use object_store::prefix::PrefixStore;
use object_store::{ClientOptions, ObjectStore, RetryConfig};
use url::Url;

use crate::config::{S3Settings, StoreConfig};
use crate::error::StorageError;

/// One backend, seen through the interfaces it offers.
pub struct Backend {
    pub objects: Arc<dyn ObjectStore>,
    /// Multipart uploads whose parts are addressed by number, so that one failed part can be
    /// sent again on its own. S3 and memory have them; the local file system has not.
    pub parts: Option<Arc<dyn MultipartStore>>,
}

impl Backend {
    fn with_parts<T: ObjectStore + MultipartStore>(store: T) -> Backend {
        let store = Arc::new(store);
        Backend {
            objects: store.clone(),
            parts: Some(store),
        }
    }
}

pub fn open_backend(config: &StoreConfig) -> Result<Backend, StorageError> {
    let bad = |reason: &str| StorageError::BadUrl {
        url: config.url.clone(),
        reason: reason.to_string(),
    };
    let url = Url::parse(&config.url).map_err(|e| bad(&e.to_string()))?;
    match url.scheme() {
        "memory" => Ok(Backend::with_parts(InMemory::new())),
        "file" => {
            let dir = url
                .to_file_path()
                .map_err(|_| bad("not an absolute local path (file:///absolute/dir)"))?;
            std::fs::create_dir_all(&dir).map_err(|e| {
                StorageError::Config(format!("cannot create {}: {e}", dir.display()))
            })?;
            let local = LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| StorageError::Config(format!("{}: {e}", dir.display())))?;
            Ok(Backend {
                objects: Arc::new(local),
                parts: None,
            })
        }
        "s3" => {
            let bucket = url
                .host_str()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| bad("no bucket (s3://bucket[/prefix])"))?;
            let s3 = s3_backend(bucket, &config.s3, config)?;
            let prefix = url.path().trim_matches('/');
            if prefix.is_empty() {
                Ok(Backend::with_parts(s3))
            } else {
                Ok(Backend::with_parts(PrefixStore::new(s3, prefix)))
            }
        }
        other => Err(bad(&format!(
            "unknown scheme {other:?}; use file://, memory:// or s3://"
        ))),
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn s3_backend(
    bucket: &str,
    s3: &S3Settings,
    config: &StoreConfig,
) -> Result<AmazonS3, StorageError> {
    let endpoint = s3.endpoint.clone().or_else(|| env("AWS_ENDPOINT_URL"));
    let region = s3
        .region
        .clone()
        .or_else(|| env("AWS_REGION"))
        .unwrap_or_else(|| "us-east-1".to_string());
    let key_id = s3
        .access_key_id
        .clone()
        .or_else(|| env("AWS_ACCESS_KEY_ID"));
    let secret = s3
        .secret_access_key
        .clone()
        .or_else(|| env("AWS_SECRET_ACCESS_KEY"));
    let token = s3
        .session_token
        .clone()
        .or_else(|| env("AWS_SESSION_TOKEN"));
    let (Some(key_id), Some(secret)) = (key_id, secret) else {
        return Err(StorageError::Config(format!(
            "s3://{bucket} needs credentials: set access_key_id and secret_access_key in the \
             storage config or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )));
    };
    let transfer = &config.transfer;
    let client = ClientOptions::new()
        .with_timeout(transfer.request_timeout)
        .with_connect_timeout(transfer.connect_timeout)
        .with_allow_http(
            endpoint
                .as_deref()
                .is_some_and(|e| e.starts_with("http://")),
        );
    // templar retries every operation itself (bounded, with jitter); retrying inside the client
    // as well would multiply the attempts and blur the bounds.
    let no_inner_retries = RetryConfig {
        max_retries: 0,
        ..RetryConfig::default()
    };
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region(region)
        .with_access_key_id(key_id)
        .with_secret_access_key(secret)
        .with_virtual_hosted_style_request(!s3.path_style.unwrap_or(true))
        .with_client_options(client)
        .with_retry(no_inner_retries);
    if let Some(endpoint) = endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(token) = token {
        builder = builder.with_token(token);
    }
    builder
        .build()
        .map_err(|e| StorageError::Config(format!("s3://{bucket}: {e}")))
}
