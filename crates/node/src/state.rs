//! A node's local state on disk, crash-safe: each save goes into a fresh generation directory,
//! which becomes current only when complete (the `CURRENT` pointer is replaced atomically last).
//! A `kill -9` at any moment leaves the previous generation current and intact.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::NodeError;

const CURRENT: &str = "CURRENT";
const STATE_FILE: &str = "state.json";
/// Generations kept: the current one and its predecessor.
const KEEP: usize = 2;

pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The current generation's directory, if any was ever completed.
    pub fn current(&self) -> Result<Option<PathBuf>, NodeError> {
        let pointer = self.root.join(CURRENT);
        let name = match fs::read_to_string(&pointer) {
            Ok(name) => name.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(NodeError::io(pointer, e)),
        };
        let dir = self.root.join(&name);
        if name.contains('/') || !dir.is_dir() {
            return Err(NodeError::State {
                path: self.root.clone(),
                reason: format!("CURRENT names {name:?}, which is not a state generation here"),
            });
        }
        Ok(Some(dir))
    }

    /// Reads `state.json` of the current generation.
    pub fn load<T: DeserializeOwned>(&self) -> Result<Option<(T, PathBuf)>, NodeError> {
        Ok(self.load_digested()?.map(|(state, dir, _)| (state, dir)))
    }

    /// [`StateDir::load`], with the blake3 of the state record as stored (hex): what a node
    /// reports on resuming, so a supervisor can check it resumed from exactly what was saved.
    pub fn load_digested<T: DeserializeOwned>(
        &self,
    ) -> Result<Option<(T, PathBuf, String)>, NodeError> {
        let Some(dir) = self.current()? else {
            return Ok(None);
        };
        let path = dir.join(STATE_FILE);
        let text = fs::read_to_string(&path).map_err(|e| NodeError::io(&path, e))?;
        let state = serde_json::from_str(&text).map_err(|e| NodeError::State {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Some((
            state,
            dir,
            blake3::hash(text.as_bytes()).to_hex().to_string(),
        )))
    }

    /// The blake3 of the current generation's state record, if there is one.
    pub fn digest(&self) -> Result<Option<String>, NodeError> {
        Ok(self
            .load_digested::<serde_json::Value>()?
            .map(|(_, _, digest)| digest))
    }

    /// Writes a new generation: `write_files` fills the directory and returns the state record,
    /// which is written last; then the directory is synced and made current. Older generations
    /// beyond the last two are removed.
    pub fn save<T: Serialize>(
        &self,
        generation: u64,
        write_files: impl FnOnce(&Path) -> Result<T, NodeError>,
    ) -> Result<(), NodeError> {
        let staging = self.begin(generation)?;
        let record = staging.fill(write_files)?;
        staging.commit(&record)
    }

    /// Starts generation `generation`: an empty staging directory, which becomes current only
    /// through [`Staging::commit`]. Files may be written into it over time and from other
    /// threads (a save beside the window); until the commit the previous generation stays current.
    pub fn begin(&self, generation: u64) -> Result<Staging, NodeError> {
        let name = format!("gen-{generation:016}");
        let dir = self.root.join(format!("{name}.partial"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)
            .map_err(|e| self.explain_full_disk(NodeError::io(&dir, e), &dir))?;
        Ok(Staging {
            state: StateDir::new(&self.root),
            name,
            dir,
        })
    }

    /// A save that ran out of disk says so, says what to do, and says that nothing was lost (the
    /// unfinished generation is removed; `CURRENT` still names the last complete one).
    fn explain_full_disk(&self, error: NodeError, staging: &Path) -> NodeError {
        if !error.is_disk_full() {
            return error;
        }
        let _ = fs::remove_dir_all(staging);
        let kept = match self.current() {
            Ok(Some(dir)) => format!("the last saved state, {}, is intact", dir.display()),
            _ => "no earlier state was saved".to_string(),
        };
        NodeError::DiskFull {
            path: self.root.clone(),
            detail: error.to_string(),
            kept,
        }
    }

    /// Removes old generations and abandoned partial ones (best effort: they are garbage).
    fn prune(&self, current: &str) {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        let mut generations: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("gen-"))
            .collect();
        generations.sort();
        let complete: Vec<&String> = generations
            .iter()
            .filter(|n| !n.ends_with(".partial"))
            .collect();
        let keep_from = complete.len().saturating_sub(KEEP);
        for name in &generations {
            let old = complete
                .iter()
                .position(|c| *c == name)
                .is_some_and(|i| i < keep_from);
            if (old || name.ends_with(".partial")) && name != current {
                let _ = fs::remove_dir_all(self.root.join(name));
            }
        }
    }
}

/// A generation being written (see [`StateDir::begin`]).
pub struct Staging {
    state: StateDir,
    name: String,
    dir: PathBuf,
}

impl Staging {
    /// The directory files go into.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `write_files` on the staging directory; a full disk is explained the way
    /// [`StateDir::save`] explains it.
    pub fn fill<T>(
        &self,
        write_files: impl FnOnce(&Path) -> Result<T, NodeError>,
    ) -> Result<T, NodeError> {
        write_files(&self.dir).map_err(|error| self.state.explain_full_disk(error, &self.dir))
    }

    /// Writes the state record last, syncs, and makes this generation current.
    pub fn commit<T: Serialize>(self, record: &T) -> Result<(), NodeError> {
        self.publish(record)
            .map_err(|error| self.state.explain_full_disk(error, &self.dir))
    }

    fn publish<T: Serialize>(&self, record: &T) -> Result<(), NodeError> {
        let root = self.state.root();
        let json = serde_json::to_vec_pretty(record).map_err(|e| NodeError::State {
            path: self.dir.clone(),
            reason: e.to_string(),
        })?;
        write_synced(&self.dir.join(STATE_FILE), &json)?;
        let done = root.join(&self.name);
        let _ = fs::remove_dir_all(&done);
        fs::rename(&self.dir, &done).map_err(|e| NodeError::io(&done, e))?;
        sync_dir(root)?;
        templar_engine::write_atomic(&root.join(CURRENT), self.name.as_bytes())?;
        sync_dir(root)?;
        self.state.prune(&self.name);
        Ok(())
    }
}

/// Work on a thread of its own, such as writing a state generation while the window goes on.
/// Whatever the work borrowed is moved in and handed back by [`Background::wait`].
pub struct Background<T> {
    handle: std::thread::JoinHandle<Result<T, NodeError>>,
}

impl<T: Send + 'static> Background<T> {
    pub fn spawn(
        what: &str,
        work: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
    ) -> Result<Background<T>, NodeError> {
        let handle = std::thread::Builder::new()
            .name(what.to_string())
            .spawn(work)
            .map_err(|e| NodeError::State {
                path: PathBuf::new(),
                reason: format!("cannot start a thread for {what}: {e}"),
            })?;
        Ok(Background { handle })
    }

    /// Waits for the work; a panic in it is an error, not a crash of the caller.
    pub fn wait(self) -> Result<T, NodeError> {
        let what = self
            .handle
            .thread()
            .name()
            .unwrap_or("background work")
            .to_string();
        self.handle.join().map_err(|_| NodeError::State {
            path: PathBuf::new(),
            reason: format!("{what} panicked"),
        })?
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

/// Writes a file and flushes it to disk.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), NodeError> {
    use std::io::Write;
    let mut file = fs::File::create(path).map_err(|e| NodeError::io(path, e))?;
    file.write_all(bytes).map_err(|e| NodeError::io(path, e))?;
    file.sync_all().map_err(|e| NodeError::io(path, e))
}

fn sync_dir(dir: &Path) -> Result<(), NodeError> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| NodeError::io(dir, e))
}

/// `f32` buffers as one little-endian file with a blake3 digest, for error feedback. Written
/// through a small buffer, so saving costs no copy of the buffers.
pub fn write_f32s(path: &Path, buffers: &[Vec<f32>]) -> Result<String, NodeError> {
    let io = |e| NodeError::io(path, e);
    let file = fs::File::create(path).map_err(io)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut hasher = blake3::Hasher::new();
    let mut bytes = Vec::with_capacity(1 << 16);
    for chunk in buffers.iter().flat_map(|b| b.chunks(1 << 14)) {
        bytes.clear();
        bytes.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
        hasher.update(&bytes);
        out.write_all(&bytes).map_err(io)?;
    }
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// Reads what [`write_f32s`] wrote into buffers of the given lengths, checking size and digest
/// before returning anything.
pub fn read_f32s(path: &Path, lengths: &[usize], digest: &str) -> Result<Vec<Vec<f32>>, NodeError> {
    read_f32s_keeping(path, lengths, digest, |_| true)
}

/// [`read_f32s`] keeping only the buffers `keep` names (the others come back empty): the whole
/// file is still checked against its digest, but only what is kept is held in memory.
pub fn read_f32s_keeping(
    path: &Path,
    lengths: &[usize],
    digest: &str,
    keep: impl Fn(usize) -> bool,
) -> Result<Vec<Vec<f32>>, NodeError> {
    let io = |e| NodeError::io(path, e);
    let file = fs::File::open(path).map_err(io)?;
    let total: usize = lengths.iter().sum();
    let mismatch = || NodeError::State {
        path: path.to_path_buf(),
        reason: "the file's size or digest does not match its record".into(),
    };
    if file.metadata().map_err(io)?.len() != total as u64 * 4 {
        return Err(mismatch());
    }
    let mut input = std::io::BufReader::with_capacity(1 << 20, file);
    let mut hasher = blake3::Hasher::new();
    let mut bytes = vec![0u8; 1 << 16];
    let mut buffers = Vec::with_capacity(lengths.len());
    for (index, &n) in lengths.iter().enumerate() {
        let kept = keep(index);
        let mut values = Vec::with_capacity(if kept { n } else { 0 });
        let mut read = 0;
        while read < n {
            let take = ((n - read) * 4).min(bytes.len());
            input.read_exact(&mut bytes[..take]).map_err(io)?;
            hasher.update(&bytes[..take]);
            read += take / 4;
            if kept {
                values.extend(
                    bytes[..take]
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                );
            }
        }
        buffers.push(values);
    }
    if hasher.finalize().to_hex().as_str() != digest {
        return Err(mismatch());
    }
    Ok(buffers)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn generations_become_current_only_when_complete() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        assert!(state.load::<u64>().unwrap().is_none());
        state.save(1, |_| Ok(11u64)).unwrap();
        // A save that fails half-way leaves the previous generation current.
        let failed = state.save(2, |_| Err::<u64, _>(NodeError::Config("disk full".into())));
        assert!(failed.is_err());
        assert_eq!(state.load::<u64>().unwrap().unwrap().0, 11);
        for g in 2..6 {
            state
                .save(g, |d| write_synced(&d.join("x"), b"1").map(|()| g * 11))
                .unwrap();
        }
        let (value, current) = state.load::<u64>().unwrap().unwrap();
        assert_eq!(value, 55);
        assert!(current.join("x").exists());
        let left = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(left, 3, "two generations and CURRENT");
    }

    #[test]
    fn a_full_disk_is_named_and_leaves_the_last_state_current() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        state.save(1, |_| Ok(7u32)).unwrap();
        let before = state.digest().unwrap();
        let full = state.save::<u32>(2, |staging| {
            fs::write(staging.join("model.bin"), b"half a model").unwrap();
            Err(NodeError::io(
                staging.join("model.bin"),
                std::io::Error::from(std::io::ErrorKind::StorageFull),
            ))
        });
        let message = full.unwrap_err().to_string();
        assert!(message.contains("the disk is full"), "{message}");
        assert!(message.contains("is intact"), "{message}");
        assert_eq!(state.load::<u32>().unwrap().unwrap().0, 7);
        assert_eq!(state.digest().unwrap(), before);
        assert!(!dir.path().join("gen-0000000000000002.partial").exists());
    }

    #[test]
    fn f32_files_round_trip_and_detect_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ef.bin");
        let buffers = vec![vec![1.0, -2.5], vec![3.25]];
        let digest = write_f32s(&path, &buffers).unwrap();
        assert_eq!(read_f32s(&path, &[2, 1], &digest).unwrap(), buffers);
        let second = read_f32s_keeping(&path, &[2, 1], &digest, |i| i == 1).unwrap();
        assert_eq!(second, vec![Vec::new(), buffers[1].clone()]);
        assert!(read_f32s(&path, &[3], &digest).is_ok());
        assert!(read_f32s(&path, &[2, 2], &digest).is_err());
        fs::write(&path, [0u8; 12]).unwrap();
        assert!(read_f32s(&path, &[2, 1], &digest).is_err());
    }
}
