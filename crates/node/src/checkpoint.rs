//! Checkpoints in a validator's storage: the model files first, then a signed descriptor (window,
//! fingerprint, every file's size and blake3), then the `latest` pointer. A reader follows the
//! pointer, verifies the descriptor's signature against the chain and every file against the
//! descriptor, so a half-written or tampered checkpoint is never loaded.

use std::path::Path;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use templar_engine::{CONFIG_FILE, DEFAULT_SHARD_BYTES};
use templar_protocol::{AccountId, Expected, Keypair, Kind, Network, layout};
use templar_storage::{FileInfo, ReadOutcome, Store};

use crate::error::NodeError;
use crate::fingerprint::{Fingerprint, hex32};
use crate::progress::{self, Progress};
use crate::replica::{NetworkReplica, Replica};

const MAX_DESCRIPTOR_BYTES: u64 = 64 << 10;
/// Model files larger than this are refused (a 70B model in f32 is about 280 GB).
const MAX_FILE_BYTES: u64 = 1 << 40;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Descriptor {
    pub window: u64,
    pub global_step: u64,
    pub fingerprint: Fingerprint,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    #[serde(with = "hex32")]
    pub blake3: [u8; 32],
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Latest {
    window: u64,
}

/// Publishes the replica's model as the checkpoint of `window`, then moves `latest` to it.
pub async fn publish(
    store: &Store,
    network: &Network,
    hotkey: &Keypair,
    uid: u16,
    replica: &Replica,
    window: u64,
    global_step: u64,
) -> Result<Descriptor, NodeError> {
    let staging = tempdir_for(window)?;
    let written = replica.save_weights(staging.path(), DEFAULT_SHARD_BYTES)?;
    let of = Published {
        window,
        global_step,
        fingerprint: replica.fingerprint(),
    };
    publish_files(store, network, (hotkey, uid), staging.path(), &written, of).await
}

/// What a checkpoint is of: its window, the global step, and the fingerprint its model loads as.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Published {
    pub window: u64,
    pub global_step: u64,
    pub fingerprint: Fingerprint,
}

/// Publishes the files `names` of `dir` — a model saved by any means: one process's replica, or
/// a fully sharded trainer's ranks — as the checkpoint `of` says, each file streamed from disk
/// (a checkpoint is never whole in memory), then the signed descriptor, then moves `latest` to
/// it.
pub async fn publish_files(
    store: &Store,
    network: &Network,
    (hotkey, uid): (&Keypair, u16),
    dir: &Path,
    names: &[String],
    of: Published,
) -> Result<Descriptor, NodeError> {
    let Published {
        window,
        global_step,
        fingerprint,
    } = of;
    let mut files = Vec::new();
    for name in names {
        let key = layout::checkpoint_file_key(network, window, name);
        let info = store.put_file(&key, &dir.join(name)).await?;
        files.push(FileEntry {
            name: name.to_string(),
            size: info.size,
            blake3: info.blake3,
        });
    }
    let descriptor = Descriptor {
        window,
        global_step,
        fingerprint,
        files,
    };
    let json = serde_json::to_vec(&descriptor).unwrap_or_default();
    store
        .publish(hotkey, network, Kind::Checkpoint, window, uid, &json)
        .await?;
    let latest = serde_json::to_vec(&Latest { window }).unwrap_or_default();
    store
        .put(&layout::checkpoint_latest_key(network), Bytes::from(latest))
        .await?;
    Ok(descriptor)
}

/// Deletes checkpoints older than the newest `keep` of `published` (ascending windows); returns
/// the ones kept.
pub async fn prune(
    store: &Store,
    network: &Network,
    uid: u16,
    published: &[u64],
    keep: usize,
) -> Result<Vec<u64>, NodeError> {
    let split = published.len().saturating_sub(keep);
    for &window in &published[..split] {
        // The descriptor goes first: a reader never finds one whose files are half deleted.
        store
            .delete(&layout::object_key(network, Kind::Checkpoint, window, uid))
            .await?;
        for object in store
            .list(&layout::checkpoint_file_key(network, window, ""))
            .await?
        {
            store.delete(&object.key).await?;
        }
    }
    Ok(published[split..].to_vec())
}

/// The newest checkpoint a validator has published, verified; `None` when it has none.
pub async fn latest(
    store: &Store,
    network: &Network,
    uid: u16,
    hotkey: AccountId,
) -> Result<Option<Descriptor>, NodeError> {
    let Some(pointer) = store
        .get(&layout::checkpoint_latest_key(network), 4096)
        .await?
    else {
        return Ok(None);
    };
    let latest: Latest = serde_json::from_slice(&pointer.bytes)
        .map_err(|e| NodeError::CatchUp(format!("unreadable checkpoint pointer: {e}")))?;
    let expected = Expected {
        network,
        kind: Kind::Checkpoint,
        window: latest.window,
        uid,
        hotkey,
        max_payload_len: MAX_DESCRIPTOR_BYTES,
    };
    match store.read_signed(&expected, None).await? {
        ReadOutcome::Ok(verified) => {
            let descriptor: Descriptor =
                serde_json::from_slice(&verified.payload).map_err(|e| {
                    NodeError::CatchUp(format!("unreadable checkpoint descriptor: {e}"))
                })?;
            Ok(Some(descriptor))
        }
        other => Err(NodeError::CatchUp(format!(
            "checkpoint {} of uid {uid} is not usable: {}",
            latest.window,
            other.label()
        ))),
    }
}

/// Downloads and verifies the checkpoint's files and loads them into `replica`.
pub async fn load<R: NetworkReplica>(
    store: &Store,
    network: &Network,
    descriptor: &Descriptor,
    replica: &mut R,
) -> Result<(), NodeError> {
    let staging = tempdir_for(descriptor.window)?;
    download(store, network, descriptor, staging.path()).await?;
    replica.load_weights(staging.path())?;
    let fingerprint = replica.fingerprint();
    if fingerprint != descriptor.fingerprint {
        return Err(NodeError::CatchUp(format!(
            "checkpoint {} loads as model {}, its descriptor says {}",
            descriptor.window,
            fingerprint.short(),
            descriptor.fingerprint.short()
        )));
    }
    Ok(())
}

/// Downloads the checkpoint's files into `dir`, each streamed to disk and verified against the
/// signed descriptor before it is renamed into place: what any loader (one process, or a fully
/// sharded trainer's ranks) then reads. The caller checks the fingerprint it loads as.
pub async fn download(
    store: &Store,
    network: &Network,
    descriptor: &Descriptor,
    dir: &Path,
) -> Result<(), NodeError> {
    if !descriptor.files.iter().any(|f| f.name == CONFIG_FILE) {
        return Err(NodeError::CatchUp(format!(
            "checkpoint {} lacks {CONFIG_FILE}",
            descriptor.window
        )));
    }
    let started = std::time::Instant::now();
    // The sizes come from the network (each is checked against MAX_FILE_BYTES below): a sum
    // that saturates only makes the progress lines wrong, never the download.
    let total = descriptor
        .files
        .iter()
        .fold(0u64, |sum, f| sum.saturating_add(f.size));
    let mut progress = Progress::new(total);
    for (index, entry) in descriptor.files.iter().enumerate() {
        let name = entry.name.as_str();
        if !is_plain_file_name(name) {
            return Err(NodeError::CatchUp(format!(
                "checkpoint {} names a file outside its folder: {name:?}",
                descriptor.window
            )));
        }
        let key = layout::checkpoint_file_key(network, descriptor.window, name);
        if entry.size > MAX_FILE_BYTES {
            return Err(NodeError::CatchUp(format!(
                "checkpoint file {key} claims {} bytes, more than any model needs",
                entry.size
            )));
        }
        let expected = FileInfo {
            size: entry.size,
            blake3: entry.blake3,
        };
        // Streamed to disk and verified against the signed descriptor before it is renamed into
        // place; a file that differs is refused, naming the key and both hashes.
        store
            .get_to_file(&key, &dir.join(name), MAX_FILE_BYTES, Some(&expected))
            .await
            .map_err(|e| NodeError::CatchUp(format!("checkpoint file {key}: {e}")))?
            .ok_or_else(|| NodeError::CatchUp(format!("checkpoint file {key} is gone")))?;
        progress.done = progress.done.saturating_add(entry.size);
        let elapsed = started.elapsed();
        tracing::info!(
            window = descriptor.window,
            file = name,
            "checkpoint download: {} of {} files, {} of {} ({:.0}%), {}/s, {} left",
            index + 1,
            descriptor.files.len(),
            progress::bytes(progress.done),
            progress::bytes(progress.total),
            progress.percent(),
            progress::bytes(progress.rate(elapsed) as u64),
            progress
                .remaining(elapsed)
                .map_or("?".into(), progress::duration),
        );
    }
    Ok(())
}

/// A checkpoint file name from a descriptor: one path component, no tricks.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && name.len() <= 255
}

/// A scratch directory removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir_for(window: u64) -> Result<Scratch, NodeError> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let unique = format!(
        "templar-checkpoint-{}-{window}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let dir = std::env::temp_dir().join(unique);
    std::fs::create_dir_all(&dir).map_err(|e| NodeError::io(&dir, e))?;
    Ok(Scratch(dir))
}
