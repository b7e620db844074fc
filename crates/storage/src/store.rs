//! Plain object operations with retries, multipart uploads and ranged downloads.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};

use crate::backend::open_backend;
use crate::config::{StoreConfig, TransferSettings};
use crate::error::StorageError;
use crate::retry::{RetryPolicy, retry};

/// An object's size and the storage server's time of upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// Milliseconds since the Unix epoch, by the storage server's clock.
    pub uploaded_ms: u64,
}

/// A downloaded object.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub bytes: Bytes,
    pub uploaded_ms: u64,
}

/// One node's object store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) backend: Arc<dyn ObjectStore>,
    /// The same backend's numbered-part uploads, where it has them.
    pub(crate) parts: Option<Arc<dyn MultipartStore>>,
    pub(crate) transfer: TransferSettings,
    pub(crate) retry: RetryPolicy,
    url: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.url)
    }
}

pub(crate) fn path(key: &str) -> Result<Path, StorageError> {
    Path::parse(key).map_err(|e| StorageError::BadKey {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

fn millis(time: chrono::DateTime<chrono::Utc>) -> u64 {
    u64::try_from(time.timestamp_millis()).unwrap_or(0)
}

/// Refuses an object of `size` bytes over `limit`, before its body is read.
pub(crate) fn within_limit(key: &str, size: u64, limit: u64) -> Result<(), StorageError> {
    if size > limit {
        return Err(StorageError::TooLarge {
            key: key.to_string(),
            size,
            limit,
        });
    }
    Ok(())
}

pub(crate) fn is_not_found(error: &StorageError) -> bool {
    matches!(error, StorageError::Refused { source, .. }
        if matches!(**source, object_store::Error::NotFound { .. }))
}

impl Store {
    pub fn open(config: &StoreConfig) -> Result<Store, StorageError> {
        let backend = open_backend(config)?;
        Ok(Store {
            backend: backend.objects,
            parts: backend.parts,
            transfer: config.transfer,
            retry: config.retry,
            url: config.url.clone(),
        })
    }

    /// A store over a backend built by hand, for tests that need a backend to misbehave.
    #[cfg(test)]
    pub(crate) fn from_backend(
        backend: Arc<dyn ObjectStore>,
        parts: Option<Arc<dyn MultipartStore>>,
        transfer: TransferSettings,
        retry: RetryPolicy,
    ) -> Store {
        Store {
            backend,
            parts,
            transfer,
            retry,
            url: "test://".to_string(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stores `data` at `key`, all or nothing: readers see the old object or the whole new one.
    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        let location = path(key)?;
        if (data.len() as u64) < self.transfer.multipart_threshold {
            retry(&self.retry, "put", key, || {
                let payload = PutPayload::from_bytes(data.clone());
                let location = location.clone();
                async move { self.backend.put(&location, payload).await.map(|_| ()) }
            })
            .await
        } else {
            retry(&self.retry, "multipart put", key, || {
                self.put_in_parts(location.clone(), data.clone())
            })
            .await
        }
    }

    async fn put_in_parts(&self, location: Path, data: Bytes) -> object_store::Result<()> {
        let mut upload = self.backend.put_multipart(&location).await?;
        let part_size = self.transfer.part_size.max(1) as usize;
        let parts: Vec<_> = (0..data.len())
            .step_by(part_size)
            .map(|start| {
                let end = (start + part_size).min(data.len());
                upload.put_part(PutPayload::from_bytes(data.slice(start..end)))
            })
            .collect();
        let sent: Result<Vec<()>, _> = futures::stream::iter(parts)
            .buffer_unordered(self.transfer.concurrency.max(1))
            .try_collect()
            .await;
        match sent {
            Ok(_) => upload.complete().await.map(|_| ()),
            Err(error) => {
                if let Err(abort) = upload.abort().await {
                    tracing::warn!(%location, %abort, "could not abort a failed multipart upload");
                }
                Err(error)
            }
        }
    }

    /// Downloads `key`, refusing objects larger than `limit` before reading their bodies.
    /// `Ok(None)` when there is no such object.
    pub async fn get(&self, key: &str, limit: u64) -> Result<Option<Fetched>, StorageError> {
        let location = path(key)?;
        let first = retry(&self.retry, "get", key, || {
            self.get_small(location.clone(), limit)
        })
        .await;
        let (info, body) = match first {
            Ok(found) => found,
            Err(error) if is_not_found(&error) => return Ok(None),
            Err(error) => return Err(error),
        };
        within_limit(key, info.size, limit)?;
        let bytes = match body {
            Some(bytes) => bytes,
            None => self.get_ranged(&location, key, info.size).await?,
        };
        if bytes.len() as u64 != info.size {
            return Err(StorageError::SizeMismatch {
                key: key.to_string(),
                expected: info.size,
                got: bytes.len() as u64,
            });
        }
        Ok(Some(Fetched {
            bytes,
            uploaded_ms: info.uploaded_ms,
        }))
    }

    /// One GET; reads the body only when the object is small enough for a single request and
    /// within `limit`, and never reads more than the size the server announced.
    async fn get_small(
        &self,
        location: Path,
        limit: u64,
    ) -> object_store::Result<(ObjectInfo, Option<Bytes>)> {
        let result = self
            .backend
            .get_opts(&location, GetOptions::default())
            .await?;
        let info = ObjectInfo {
            key: location.to_string(),
            size: result.meta.size,
            uploaded_ms: millis(result.meta.last_modified),
        };
        if info.size > limit || info.size >= self.transfer.ranged_threshold {
            return Ok((info, None));
        }
        let mut body = BytesMut::with_capacity(info.size as usize);
        let mut stream = result.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if (body.len() + chunk.len()) as u64 > info.size {
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok((info, Some(body.freeze())))
    }

    async fn get_ranged(
        &self,
        location: &Path,
        key: &str,
        size: u64,
    ) -> Result<Bytes, StorageError> {
        let range_size = self.transfer.range_size.max(1);
        let ranges: Vec<_> = (0..size)
            .step_by(range_size as usize)
            .map(|start| start..(start + range_size).min(size))
            .collect();
        let pieces: Vec<Bytes> = futures::stream::iter(ranges)
            .map(|range| {
                retry(&self.retry, "ranged get", key, move || {
                    let options = GetOptions {
                        range: Some(GetRange::Bounded(range.clone())),
                        ..GetOptions::default()
                    };
                    async move {
                        self.backend
                            .get_opts(location, options)
                            .await?
                            .bytes()
                            .await
                    }
                })
            })
            .buffered(self.transfer.concurrency.max(1))
            .try_collect()
            .await?;
        let mut whole = BytesMut::with_capacity(size as usize);
        for piece in pieces {
            whole.extend_from_slice(&piece);
        }
        Ok(whole.freeze())
    }

    /// The first `len` bytes of `key` (all of it when shorter), with one ranged request that
    /// never reads more than `len` bytes of the body, whatever the server sends; `None` when
    /// there is no such object.
    pub async fn get_prefix(&self, key: &str, len: u64) -> Result<Option<Bytes>, StorageError> {
        let location = path(key)?;
        let read = retry(&self.retry, "ranged get", key, || {
            let location = location.clone();
            async move {
                let options = GetOptions {
                    range: Some(GetRange::Bounded(0..len)),
                    ..GetOptions::default()
                };
                let mut stream = self
                    .backend
                    .get_opts(&location, options)
                    .await?
                    .into_stream();
                let mut body = BytesMut::with_capacity(len as usize);
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk?;
                    let room = (len as usize).saturating_sub(body.len());
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if body.len() as u64 >= len {
                        break;
                    }
                }
                Ok(body.freeze())
            }
        })
        .await;
        match read {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Size and upload time of `key`, or `None` when it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
        let location = path(key)?;
        let meta = retry(&self.retry, "head", key, || {
            let location = location.clone();
            async move { self.backend.head(&location).await }
        })
        .await;
        match meta {
            Ok(meta) => Ok(Some(ObjectInfo {
                key: key.to_string(),
                size: meta.size,
                uploaded_ms: millis(meta.last_modified),
            })),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Every object whose key starts with `prefix` (a whole path segment), in key order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let location = path(prefix)?;
        let mut objects = retry(&self.retry, "list", prefix, || {
            let location = location.clone();
            async move {
                self.backend
                    .list(Some(&location))
                    .map_ok(|meta| ObjectInfo {
                        key: meta.location.to_string(),
                        size: meta.size,
                        uploaded_ms: millis(meta.last_modified),
                    })
                    .try_collect::<Vec<_>>()
                    .await
            }
        })
        .await?;
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    /// Deletes `key`; deleting a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let location = path(key)?;
        let deleted = retry(&self.retry, "delete", key, || {
            let location = location.clone();
            async move { self.backend.delete(&location).await }
        })
        .await;
        match deleted {
            Err(error) if !is_not_found(&error) => Err(error),
            _ => Ok(()),
        }
    }
}
