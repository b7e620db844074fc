//! Streamed transfers between a local file and the store.
//!
//! A network checkpoint of an 8B–70B model is tens to hundreds of GB: more than a node can hold
//! in memory, and more than one request should carry. Files therefore move part by part, a
//! bounded number at a time, hashed as they pass, so the caller learns what was stored or
//! fetched without reading the file a second time.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::ops::Range;
use std::path::{Path as LocalPath, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use futures::future::BoxFuture;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, MultipartId, MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt,
    PutPayload,
};
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle, JoinSet};

use crate::error::StorageError;
use crate::retry::{RetryPolicy, retry};
use crate::store::{Store, is_not_found, path as object_path, within_limit};

/// S3's and R2's limit on the parts of one multipart upload.
pub const MAX_PARTS: u64 = 10_000;

const MIB: u64 = 1 << 20;

/// What a streamed transfer moved: the file's size and the blake3 hash of its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileInfo {
    pub size: u64,
    pub blake3: [u8; 32],
}

impl fmt::Display for FileInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hash = blake3::Hash::from_bytes(self.blake3);
        write!(f, "{} bytes with blake3 {}", self.size, hash.to_hex())
    }
}

/// The part size for uploading `total` bytes: `configured`, unless that would take more than
/// [`MAX_PARTS`] parts, in which case the smallest whole number of MiB that fits in
/// [`MAX_PARTS`] parts. Without it an object beyond `10,000 × part_size` (156 GiB at 16 MiB
/// parts) could never complete, however many times it was retried.
pub fn part_size_for(total: u64, configured: u64) -> u64 {
    let configured = configured.max(1);
    if total.div_ceil(configured) <= MAX_PARTS {
        return configured;
    }
    total.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB
}

impl Store {
    /// Uploads the file at `path` to `key` without holding it in memory, and says what was
    /// stored, so that a checkpoint of hundreds of GB can be published by a node with far less
    /// RAM, and its hash announced without reading the file twice.
    ///
    /// All or nothing, like [`Store::put`]: below `multipart_threshold` the file goes up in one
    /// PUT; above, in parts of [`part_size_for`] the file's size (at most `concurrency` parts
    /// read into memory at once), and readers see the object only once every part is in. A
    /// failed part is retried on its own where the backend numbers parts (S3, R2, memory); the
    /// local file backend, which has no transient failures worth retrying, gets one attempt.
    /// A failed upload is aborted. A file that changes size while it is read fails with
    /// [`StorageError::FileChanged`] before the object is completed: the bytes uploaded would
    /// be neither the old file nor the new one. A caller that drops the future mid-upload
    /// leaves the unfinished upload to the bucket's lifecycle rules (it never shows as an
    /// object).
    pub async fn put_file(&self, key: &str, path: &LocalPath) -> Result<FileInfo, StorageError> {
        let location = object_path(key)?;
        let (owned_key, owned_path) = (key.to_string(), path.to_path_buf());
        let source = blocking(path, move || Source::open(owned_key, owned_path)).await?;
        let total = source.size;
        if total < self.transfer.multipart_threshold || total == 0 {
            let (data, info) = blocking(path, move || {
                let mut source = source;
                let data = source.read_part(total)?;
                Ok((data, source.finish()?))
            })
            .await?;
            retry(&self.retry, "put", key, || {
                let payload = PutPayload::from_bytes(data.clone());
                let location = location.clone();
                async move { self.backend.put(&location, payload).await.map(|_| ()) }
            })
            .await?;
            return Ok(info);
        }
        let mut upload = match &self.parts {
            Some(parts) => {
                let id = retry(&self.retry, "start multipart upload", key, || {
                    parts.create_multipart(&location)
                })
                .await?;
                Upload::Numbered {
                    parts: Arc::clone(parts),
                    location: location.clone(),
                    id,
                }
            }
            None => Upload::Ordered(
                retry(&self.retry, "start multipart upload", key, || {
                    self.backend.put_multipart(&location)
                })
                .await?,
            ),
        };
        let outcome = match self.send_parts(&mut upload, source, key, path).await {
            Ok((info, sent)) => upload.complete(sent, &self.retry, key).await.map(|()| info),
            Err(error) => Err(error),
        };
        if outcome.is_err() {
            upload.abort(&self.retry, key).await;
        }
        outcome
    }

    /// Reads `source` part by part and hands each part to `upload` as soon as fewer than
    /// `concurrency` are in flight, so no more than `concurrency` parts are ever in memory.
    async fn send_parts(
        &self,
        upload: &mut Upload,
        mut source: Source,
        key: &str,
        path: &LocalPath,
    ) -> Result<(FileInfo, Vec<Sent>), StorageError> {
        let total = source.size;
        let part_size = part_size_for(total, self.transfer.part_size);
        let count = total.div_ceil(part_size);
        let concurrency = self.transfer.concurrency.max(1);
        let mut in_flight = JoinSet::new();
        let mut sent = Vec::new();
        for index in 0..count {
            while in_flight.len() >= concurrency {
                if let Some(done) = in_flight.join_next().await {
                    sent.push(part_sent(done, key)?);
                }
            }
            let len = part_size.min(total - index * part_size);
            let (back, data) = blocking(path, move || {
                let data = source.read_part(len)?;
                Ok((source, data))
            })
            .await?;
            source = back;
            in_flight.spawn(upload.send(index as usize, data, self.retry, key));
        }
        while let Some(done) = in_flight.join_next().await {
            sent.push(part_sent(done, key)?);
        }
        let info = blocking(path, move || source.finish()).await?;
        Ok((info, sent))
    }

    /// Downloads `key` into the file at `path` without holding it in memory, so that a node can
    /// fetch a checkpoint larger than its RAM, and can trust what it finds at `path`.
    ///
    /// `Ok(None)` when there is no such object. Objects over `limit` bytes are refused from
    /// their metadata, before any body is read, as [`Store::get`] does; so are objects whose
    /// size differs from `expected`'s. The object comes down in ranged GETs (`range_size`
    /// each, `concurrency` at a time, retried one by one) into a temporary file beside `path`,
    /// written and hashed in order; it is synced, checked against the announced size and
    /// against `expected` when given, and only then renamed onto `path`. So `path` holds
    /// either what it held before or the whole verified object: never a partial or unverified
    /// file, and a failed download leaves no temporary file behind.
    pub async fn get_to_file(
        &self,
        key: &str,
        path: &LocalPath,
        limit: u64,
        expected: Option<&FileInfo>,
    ) -> Result<Option<FileInfo>, StorageError> {
        let location = object_path(key)?;
        let head = retry(&self.retry, "head", key, || self.backend.head(&location)).await;
        let meta = match head {
            Ok(meta) => meta,
            Err(error) if is_not_found(&error) => return Ok(None),
            Err(error) => return Err(error),
        };
        within_limit(key, meta.size, limit)?;
        if let Some(expected) = expected
            && expected.size != meta.size
        {
            return Err(StorageError::UnexpectedSize {
                key: key.to_string(),
                expected: expected.size,
                found: meta.size,
            });
        }
        let target = path.to_path_buf();
        let (partial, file) = blocking(path, move || Partial::beside(&target)).await?;
        let found = self
            .fetch_into(file, &location, &meta, key, path, &partial.path)
            .await?;
        if found.size != meta.size {
            return Err(StorageError::SizeMismatch {
                key: key.to_string(),
                expected: meta.size,
                got: found.size,
            });
        }
        if let Some(expected) = expected
            && *expected != found
        {
            return Err(StorageError::ContentMismatch {
                key: key.to_string(),
                path: path.to_path_buf(),
                expected: Box::new(*expected),
                found: Box::new(found),
            });
        }
        let target = path.to_path_buf();
        blocking(path, move || partial.persist(&target)).await?;
        Ok(Some(found))
    }

    /// Fetches the ranges of `meta`'s object into `file`, in order, and syncs it. The ranges
    /// download as separate tasks, `concurrency` at a time, while a blocking thread writes and
    /// hashes the ones already in.
    async fn fetch_into(
        &self,
        file: File,
        location: &Path,
        meta: &ObjectMeta,
        key: &str,
        target: &LocalPath,
        partial: &LocalPath,
    ) -> Result<FileInfo, StorageError> {
        let (chunks, mut received) = mpsc::channel::<Bytes>(1);
        let written_to = partial.to_path_buf();
        let writer = tokio::task::spawn_blocking(move || -> Result<FileInfo, StorageError> {
            let mut file = file;
            let mut hasher = blake3::Hasher::new();
            let mut size = 0u64;
            while let Some(chunk) = received.blocking_recv() {
                hasher.update(&chunk);
                file.write_all(&chunk)
                    .map_err(local("cannot write", &written_to))?;
                size += chunk.len() as u64;
            }
            file.sync_all().map_err(local("cannot sync", &written_to))?;
            Ok(FileInfo {
                size,
                blake3: *hasher.finalize().as_bytes(),
            })
        });
        let fetched = self
            .fetch_ranges(location, meta, key, target, &chunks)
            .await;
        drop(chunks);
        let written = match writer.await {
            Ok(written) => written,
            Err(error) => Err(unwind_or(error, |error| StorageError::LocalFile {
                action: "interrupted while writing",
                path: partial.to_path_buf(),
                source: std::io::Error::other(error),
            })),
        };
        fetched?;
        written
    }

    /// Sends the object's ranges to `chunks` in order. Returns early, without error, when the
    /// writer stops taking them: it stopped on an error of its own, which it reports.
    async fn fetch_ranges(
        &self,
        location: &Path,
        meta: &ObjectMeta,
        key: &str,
        target: &LocalPath,
        chunks: &mpsc::Sender<Bytes>,
    ) -> Result<(), StorageError> {
        let size = meta.size;
        let range_size = if size < self.transfer.ranged_threshold {
            size
        } else {
            self.transfer.range_size.max(1)
        };
        let count = if size == 0 {
            0
        } else {
            size.div_ceil(range_size)
        };
        let concurrency = self.transfer.concurrency.max(1);
        let mut in_flight = AbortOnDrop(VecDeque::new());
        let mut next = 0u64;
        loop {
            while next < count && in_flight.0.len() < concurrency {
                let start = next * range_size;
                let wanted = Wanted {
                    backend: Arc::clone(&self.backend),
                    location: location.clone(),
                    range: start..(start + range_size).min(size),
                    meta: meta.clone(),
                    policy: self.retry,
                    key: key.to_string(),
                    target: target.to_path_buf(),
                };
                in_flight.0.push_back(tokio::spawn(wanted.fetch()));
                next += 1;
            }
            let Some(first) = in_flight.0.pop_front() else {
                return Ok(());
            };
            let bytes = match first.await {
                Ok(fetched) => fetched?,
                Err(error) => {
                    return Err(unwind_or(error, |error| StorageError::Refused {
                        operation: "ranged get",
                        key: key.to_string(),
                        source: Box::new(object_store::Error::JoinError { source: error }),
                    }));
                }
            };
            if chunks.send(bytes).await.is_err() {
                return Ok(());
            }
        }
    }
}

fn local(action: &'static str, path: &LocalPath) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.to_path_buf();
    move |source| StorageError::LocalFile {
        action,
        path,
        source,
    }
}

/// A task's panic goes on unwinding in the caller; a cancelled task becomes `otherwise`'s error.
fn unwind_or(error: JoinError, otherwise: impl FnOnce(JoinError) -> StorageError) -> StorageError {
    if error.is_panic() {
        std::panic::resume_unwind(error.into_panic());
    }
    otherwise(error)
}

/// Runs file work on a blocking thread: a part is megabytes to read and hash, too long to hold
/// up the async threads that move the other parts.
async fn blocking<T: Send + 'static>(
    path: &LocalPath,
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(error) => Err(unwind_or(error, |error| StorageError::LocalFile {
            action: "interrupted while reading or writing",
            path: path.to_path_buf(),
            source: std::io::Error::other(error),
        })),
    }
}

/// A file read front to back in parts, hashed as it is read, that notices being changed.
struct Source {
    key: String,
    path: PathBuf,
    file: File,
    size: u64,
    modified: Option<SystemTime>,
    hasher: blake3::Hasher,
}

impl Source {
    fn open(key: String, path: PathBuf) -> Result<Source, StorageError> {
        let file = File::open(&path).map_err(local("cannot open", &path))?;
        let meta = file
            .metadata()
            .map_err(local("cannot read the metadata of", &path))?;
        if !meta.is_file() {
            return Err(StorageError::LocalFile {
                action: "cannot upload",
                path,
                source: std::io::Error::new(ErrorKind::InvalidInput, "not a regular file"),
            });
        }
        Ok(Source {
            key,
            size: meta.len(),
            modified: meta.modified().ok(),
            path,
            file,
            hasher: blake3::Hasher::new(),
        })
    }

    /// The next `len` bytes.
    fn read_part(&mut self, len: u64) -> Result<Bytes, StorageError> {
        let Ok(len) = usize::try_from(len) else {
            return Err(StorageError::Config(format!(
                "a {len}-byte part does not fit in this machine's memory: lower part_size"
            )));
        };
        let mut part = vec![0; len];
        match self.file.read_exact(&mut part) {
            Ok(()) => {}
            Err(error) if error.kind() == ErrorKind::UnexpectedEof => return Err(self.changed()),
            Err(error) => return Err(local("cannot read", &self.path)(error)),
        }
        self.hasher.update(&part);
        Ok(Bytes::from(part))
    }

    /// What was read, once the file proves to have ended where it ended when opened and not to
    /// have been written to since.
    fn finish(mut self) -> Result<FileInfo, StorageError> {
        let mut probe = [0u8; 1];
        let more = loop {
            match self.file.read(&mut probe) {
                Ok(n) => break n,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) => return Err(local("cannot read", &self.path)(error)),
            }
        };
        let meta = self
            .file
            .metadata()
            .map_err(local("cannot read the metadata of", &self.path))?;
        if more > 0 || meta.len() != self.size || meta.modified().ok() != self.modified {
            return Err(self.changed());
        }
        Ok(FileInfo {
            size: self.size,
            blake3: *self.hasher.finalize().as_bytes(),
        })
    }

    fn changed(&self) -> StorageError {
        match self.file.metadata() {
            Ok(meta) => StorageError::FileChanged {
                key: self.key.clone(),
                path: self.path.clone(),
                size_before: self.size,
                size_after: meta.len(),
            },
            Err(error) => local("cannot read the metadata of", &self.path)(error),
        }
    }
}

/// Which part an upload task sent, and the id a numbered upload needs to complete.
type Sent = (usize, Option<PartId>);

fn part_sent(
    done: Result<Result<Sent, StorageError>, JoinError>,
    key: &str,
) -> Result<Sent, StorageError> {
    match done {
        Ok(sent) => sent,
        Err(error) => Err(unwind_or(error, |error| StorageError::Refused {
            operation: "upload part",
            key: key.to_string(),
            source: Box::new(object_store::Error::JoinError { source: error }),
        })),
    }
}

/// A multipart upload in progress.
enum Upload {
    /// Parts addressed by number (S3, R2, memory): a failed part is sent again on its own.
    Numbered {
        parts: Arc<dyn MultipartStore>,
        location: Path,
        id: MultipartId,
    },
    /// Parts placed in the order they are handed over (the local file system writes each at
    /// its offset in a staging file): a failed part fails the upload.
    Ordered(Box<dyn MultipartUpload>),
}

impl Upload {
    fn send(
        &mut self,
        index: usize,
        data: Bytes,
        policy: RetryPolicy,
        key: &str,
    ) -> BoxFuture<'static, Result<Sent, StorageError>> {
        let key = key.to_string();
        match self {
            Upload::Numbered {
                parts,
                location,
                id,
            } => {
                let (parts, location, id) = (Arc::clone(parts), location.clone(), id.clone());
                Box::pin(async move {
                    let part = retry(&policy, "upload part", &key, || {
                        parts.put_part(&location, &id, index, PutPayload::from_bytes(data.clone()))
                    })
                    .await?;
                    Ok((index, Some(part)))
                })
            }
            Upload::Ordered(upload) => {
                let part = upload.put_part(PutPayload::from_bytes(data));
                Box::pin(async move {
                    part.await.map_err(|source| StorageError::Refused {
                        operation: "upload part",
                        key,
                        source: Box::new(source),
                    })?;
                    Ok((index, None))
                })
            }
        }
    }

    async fn complete(
        &mut self,
        mut sent: Vec<Sent>,
        policy: &RetryPolicy,
        key: &str,
    ) -> Result<(), StorageError> {
        match self {
            Upload::Numbered {
                parts,
                location,
                id,
            } => {
                sent.sort_by_key(|(index, _)| *index);
                let ids: Vec<PartId> = sent.into_iter().filter_map(|(_, part)| part).collect();
                let parts: &dyn MultipartStore = parts.as_ref();
                let (location, id): (&Path, &MultipartId) = (&*location, &*id);
                retry(policy, "complete multipart upload", key, || {
                    parts.complete_multipart(location, id, ids.clone())
                })
                .await
                .map(|_| ())
            }
            Upload::Ordered(upload) => {
                upload
                    .complete()
                    .await
                    .map(|_| ())
                    .map_err(|source| StorageError::Refused {
                        operation: "complete multipart upload",
                        key: key.to_string(),
                        source: Box::new(source),
                    })
            }
        }
    }

    /// Best effort: an upload left behind costs storage until the bucket's lifecycle rules
    /// remove it, but never shows as an object.
    async fn abort(&mut self, policy: &RetryPolicy, key: &str) {
        let aborted = match self {
            Upload::Numbered {
                parts,
                location,
                id,
            } => {
                let parts: &dyn MultipartStore = parts.as_ref();
                let (location, id): (&Path, &MultipartId) = (&*location, &*id);
                retry(policy, "abort multipart upload", key, || {
                    parts.abort_multipart(location, id)
                })
                .await
            }
            Upload::Ordered(upload) => {
                upload
                    .abort()
                    .await
                    .map_err(|source| StorageError::Refused {
                        operation: "abort multipart upload",
                        key: key.to_string(),
                        source: Box::new(source),
                    })
            }
        };
        if let Err(error) = aborted {
            tracing::warn!(key, %error, "could not abort a failed multipart upload");
        }
    }
}

/// One range of an object to download, owned so that it can move to its own task.
struct Wanted {
    backend: Arc<dyn ObjectStore>,
    location: Path,
    range: Range<u64>,
    /// The object as its HEAD described it; every range must come from that same object.
    meta: ObjectMeta,
    policy: RetryPolicy,
    key: String,
    target: PathBuf,
}

impl Wanted {
    async fn fetch(self) -> Result<Bytes, StorageError> {
        let Wanted {
            backend,
            location,
            range,
            meta,
            policy,
            key,
            target,
        } = self;
        let wanted = range.end - range.start;
        let size = meta.size;
        let (found, bytes) = retry(&policy, "ranged get", &key, || {
            let options = GetOptions {
                range: Some(GetRange::Bounded(range.clone())),
                ..GetOptions::default()
            };
            let (backend, location, range) = (&backend, &location, range.clone());
            async move {
                let result = backend.get_opts(location, options).await?;
                let found = result.meta.clone();
                let bytes = result.bytes().await?;
                // A short body from the object announced is a cut connection: worth retrying.
                if found.size == size && bytes.len() as u64 != wanted {
                    return Err(object_store::Error::Generic {
                        store: "templar",
                        source: format!("{} bytes for the range {range:?}", bytes.len()).into(),
                    });
                }
                Ok((found, bytes))
            }
        })
        .await?;
        let replaced = found.size != meta.size
            || matches!((&found.e_tag, &meta.e_tag), (Some(now), Some(then)) if now != then);
        if replaced {
            return Err(StorageError::ObjectChanged { key, path: target });
        }
        Ok(bytes)
    }
}

/// Range downloads in order; those not yet taken are cancelled when the download fails.
struct AbortOnDrop(VecDeque<JoinHandle<Result<Bytes, StorageError>>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// A download's temporary file. It lies beside its destination so that the final rename stays
/// on one file system, and so is atomic; it is removed unless moved into place.
struct Partial {
    path: PathBuf,
    kept: bool,
}

impl Partial {
    fn beside(target: &LocalPath) -> Result<(Partial, File), StorageError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let Some(name) = target.file_name() else {
            return Err(StorageError::LocalFile {
                action: "cannot download to",
                path: target.to_path_buf(),
                source: std::io::Error::new(ErrorKind::InvalidInput, "not a file name"),
            });
        };
        let mut temporary = OsString::from(".");
        temporary.push(name);
        temporary.push(format!(
            ".{}-{}.partial",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let path = target.with_file_name(temporary);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(local("cannot create", &path))?;
        Ok((Partial { path, kept: false }, file))
    }

    fn persist(mut self, target: &LocalPath) -> Result<(), StorageError> {
        std::fs::rename(&self.path, target)
            .map_err(local("cannot move the download into place at", target))?;
        self.kept = true;
        sync_parent(target);
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.kept
            && let Err(error) = std::fs::remove_file(&self.path)
            && error.kind() != ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), %error, "could not remove a partial download");
        }
    }
}

/// A rename survives a crash only once its directory is synced. The file is in place by then,
/// whole and verified, so a failure here is reported but does not fail the download.
fn sync_parent(target: &LocalPath) {
    #[cfg(unix)]
    {
        let dir = match target.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => LocalPath::new("."),
        };
        if let Err(error) = File::open(dir).and_then(|dir| dir.sync_all()) {
            tracing::warn!(dir = %dir.display(), %error, "could not sync a download's directory");
        }
    }
    #[cfg(not(unix))]
    let _ = target;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const GB: u64 = 1_000_000_000;

    fn parts(total: u64, configured: u64) -> u64 {
        total.div_ceil(part_size_for(total, configured))
    }

    #[test]
    fn the_configured_size_stands_while_it_fits() {
        // 100 GB / 16 MiB = 100e9 / 16,777,216 = 5,960.5 → 5,961 parts.
        assert_eq!(part_size_for(100 * GB, 16 * MIB), 16 * MIB);
        assert_eq!(parts(100 * GB, 16 * MIB), 5_961);
        // 100 GiB / 16 MiB = 6,400 parts exactly.
        assert_eq!(part_size_for(100 << 30, 16 * MIB), 16 * MIB);
        assert_eq!(part_size_for(0, 16 * MIB), 16 * MIB);
        assert_eq!(part_size_for(1, 5 * MIB), 5 * MIB);
    }

    #[test]
    fn large_objects_get_larger_parts() {
        // 1 TB / 16 MiB = 59,604.6 parts: too many. 1e12 / 10,000 = 100,000,000 bytes
        // = 95.37 MiB → 96 MiB = 100,663,296 bytes; 1e12 / 100,663,296 = 9,934.0 → 9,935 parts.
        // 95 MiB (99,614,720 bytes) would need 10,038.7 → 10,039 parts.
        assert_eq!(part_size_for(1_000 * GB, 16 * MIB), 96 * MIB);
        assert_eq!(parts(1_000 * GB, 16 * MIB), 9_935);
        assert!((1_000 * GB).div_ceil(95 * MIB) > MAX_PARTS);
        // 100 GB at S3's minimum of 5 MiB: 19,073.5 parts. 100e9 / 10,000 = 10,000,000 bytes
        // = 9.54 MiB → 10 MiB = 10,485,760 bytes; 100e9 / 10,485,760 = 9,536.7 → 9,537 parts.
        assert_eq!(part_size_for(100 * GB, 5 * MIB), 10 * MIB);
        assert_eq!(parts(100 * GB, 5 * MIB), 9_537);
    }

    #[test]
    fn exactly_ten_thousand_parts_is_allowed_one_byte_more_is_not() {
        // 10,000 × 16 MiB = 167,772,160,000 bytes: exactly 10,000 parts.
        let boundary = 10_000 * 16 * MIB;
        assert_eq!(boundary, 167_772_160_000);
        assert_eq!(part_size_for(boundary, 16 * MIB), 16 * MIB);
        assert_eq!(parts(boundary, 16 * MIB), 10_000);
        // One byte more: 10,001 parts. ⌈167,772,160,001 / 10,000⌉ = 16,777,217 bytes, just
        // over 16 MiB → 17 MiB = 17,825,792 bytes; 167,772,160,001 / 17,825,792 = 9,411.8 →
        // 9,412 parts.
        assert_eq!(part_size_for(boundary + 1, 16 * MIB), 17 * MIB);
        assert_eq!(parts(boundary + 1, 16 * MIB), 9_412);
    }

    #[test]
    fn no_size_ever_needs_more_than_ten_thousand_parts() {
        for total in [
            u64::MAX,
            u64::MAX / 3,
            5 << 40,
            1 << 50,
            123_456_789_012_345,
        ] {
            for configured in [0, 1, 5 * MIB, 16 * MIB, 5 << 30] {
                let size = part_size_for(total, configured);
                assert!(
                    total.div_ceil(size) <= MAX_PARTS,
                    "{total} at {configured}: {size}"
                );
                assert!(size >= configured, "{total} at {configured}: {size}");
            }
        }
    }

    #[test]
    fn file_info_shows_size_and_hash() {
        let info = FileInfo {
            size: 3,
            blake3: *blake3::hash(b"abc").as_bytes(),
        };
        let shown = info.to_string();
        assert!(shown.starts_with("3 bytes with blake3 6437b3ac"), "{shown}");
    }

    fn file_of(len: usize) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        (dir, path, bytes)
    }

    #[test]
    fn a_file_read_in_parts_hashes_as_a_whole() {
        let (_dir, path, bytes) = file_of(1000);
        let mut source = Source::open("k".into(), path).unwrap();
        let mut read = Vec::new();
        for len in [400, 400, 200] {
            read.extend_from_slice(&source.read_part(len).unwrap());
        }
        let info = source.finish().unwrap();
        assert_eq!(read, bytes);
        assert_eq!(info.size, 1000);
        assert_eq!(info.blake3, *blake3::hash(&bytes).as_bytes());
    }

    #[test]
    fn a_file_that_grows_while_read_is_refused() {
        let (_dir, path, _) = file_of(100);
        let mut source = Source::open("k".into(), path.clone()).unwrap();
        source.read_part(100).unwrap();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"more").unwrap();
        match source.finish() {
            Err(StorageError::FileChanged {
                size_before: 100,
                size_after: 104,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_file_that_shrinks_while_read_is_refused() {
        let (_dir, path, _) = file_of(100);
        let mut source = Source::open("k".into(), path.clone()).unwrap();
        source.read_part(50).unwrap();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(60)
            .unwrap();
        let err = source.read_part(50).unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::FileChanged {
                    size_before: 100,
                    size_after: 60,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("rename it into place"), "{err}");
    }

    #[test]
    fn a_partial_download_is_removed_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        let (partial, _file) = Partial::beside(&target).unwrap();
        let temporary = partial.path.clone();
        assert_eq!(temporary.parent(), Some(dir.path()));
        assert!(temporary.exists());
        drop(partial);
        assert!(!temporary.exists());
        let (partial, mut file) = Partial::beside(&target).unwrap();
        file.write_all(b"whole").unwrap();
        partial.persist(&target).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"whole");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// Memory with numbered parts, where part `failing` fails `failures` times before it
    /// works, and which counts attempts, parts in flight and aborts.
    #[derive(Debug)]
    struct Flaky {
        inner: Arc<object_store::memory::InMemory>,
        failing: usize,
        failures: AtomicU64,
        attempts: std::sync::Mutex<Vec<usize>>,
        in_flight: AtomicU64,
        most_in_flight: AtomicU64,
        aborted: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl MultipartStore for Flaky {
        async fn create_multipart(&self, path: &Path) -> object_store::Result<MultipartId> {
            self.inner.create_multipart(path).await
        }

        async fn put_part(
            &self,
            path: &Path,
            id: &MultipartId,
            part_idx: usize,
            data: PutPayload,
        ) -> object_store::Result<PartId> {
            self.attempts.lock().unwrap().push(part_idx);
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let fail = part_idx == self.failing
                && self
                    .failures
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
            if fail {
                return Err(object_store::Error::Generic {
                    store: "flaky",
                    source: "connection reset".into(),
                });
            }
            self.inner.put_part(path, id, part_idx, data).await
        }

        async fn complete_multipart(
            &self,
            path: &Path,
            id: &MultipartId,
            parts: Vec<PartId>,
        ) -> object_store::Result<object_store::PutResult> {
            self.inner.complete_multipart(path, id, parts).await
        }

        async fn abort_multipart(&self, path: &Path, id: &MultipartId) -> object_store::Result<()> {
            self.aborted.store(true, Ordering::SeqCst);
            self.inner.abort_multipart(path, id).await
        }
    }

    /// A 1000-byte file in ten 100-byte parts, three at a time, onto a store whose part 4
    /// fails `failures` times; retries allow three attempts.
    async fn flaky_upload(
        failures: u64,
    ) -> (Result<FileInfo, StorageError>, Store, Arc<Flaky>, Vec<u8>) {
        let inner = Arc::new(object_store::memory::InMemory::new());
        let flaky = Arc::new(Flaky {
            inner: inner.clone(),
            failing: 4,
            failures: AtomicU64::new(failures),
            attempts: std::sync::Mutex::new(Vec::new()),
            in_flight: AtomicU64::new(0),
            most_in_flight: AtomicU64::new(0),
            aborted: std::sync::atomic::AtomicBool::new(false),
        });
        let transfer = crate::TransferSettings {
            multipart_threshold: 100,
            part_size: 100,
            concurrency: 3,
            ..crate::TransferSettings::default()
        };
        let retry = RetryPolicy {
            max_attempts: 3,
            base_delay: std::time::Duration::from_millis(1),
            max_delay: std::time::Duration::from_millis(1),
            max_elapsed: std::time::Duration::from_secs(10),
        };
        let store = Store::from_backend(inner, Some(flaky.clone()), transfer, retry);
        let (_dir, path, bytes) = file_of(1000);
        let outcome = store.put_file("ckpt/f", &path).await;
        (outcome, store, flaky, bytes)
    }

    #[tokio::test]
    async fn a_failed_part_is_retried_on_its_own() {
        let (outcome, store, flaky, bytes) = flaky_upload(2).await;
        let info = outcome.unwrap();
        assert_eq!(info.blake3, *blake3::hash(&bytes).as_bytes());
        let mut attempts = flaky.attempts.lock().unwrap().clone();
        attempts.sort_unstable();
        assert_eq!(attempts, [0, 1, 2, 3, 4, 4, 4, 5, 6, 7, 8, 9]);
        assert_eq!(flaky.most_in_flight.load(Ordering::SeqCst), 3);
        assert!(!flaky.aborted.load(Ordering::SeqCst));
        let stored = store.get("ckpt/f", u64::MAX).await.unwrap().unwrap();
        assert_eq!(stored.bytes, bytes);
    }

    #[tokio::test]
    async fn a_part_that_keeps_failing_aborts_the_upload() {
        let (outcome, store, flaky, _) = flaky_upload(100).await;
        let err = outcome.unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::Unavailable {
                    operation: "upload part",
                    attempts: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert!(flaky.aborted.load(Ordering::SeqCst));
        assert_eq!(store.head("ckpt/f").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_range_of_a_replaced_object_is_refused() {
        let memory = Arc::new(object_store::memory::InMemory::new());
        let location = Path::from("k");
        let payload = PutPayload::from_static(b"0123456789");
        memory.put(&location, payload).await.unwrap();
        let mut meta = memory.head(&location).await.unwrap();
        let wanted = |meta: ObjectMeta| Wanted {
            backend: memory.clone(),
            location: location.clone(),
            range: 2..5,
            meta,
            policy: RetryPolicy::default(),
            key: "k".into(),
            target: PathBuf::from("out"),
        };
        assert_eq!(wanted(meta.clone()).fetch().await.unwrap(), &b"234"[..]);
        meta.e_tag = Some("the version the HEAD saw".into());
        let err = wanted(meta).fetch().await.unwrap_err();
        assert!(matches!(err, StorageError::ObjectChanged { .. }), "{err}");
    }
}
