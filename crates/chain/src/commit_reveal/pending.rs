//! Weights committed on a commit-reveal subnet and not yet revealed, kept in a file beside the
//! validator's state: a validator restarted between a commit and its reveal still reveals, instead
//! of losing that period's weights.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use templar_protocol::AccountId;

use super::{Reveal, RevealTiming};
use crate::chain::ChainResult;
use crate::types::ChainError;

/// A commit awaiting its reveal, and the hotkey that committed it (only that key can reveal it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingReveal {
    /// SS58 address.
    pub hotkey: String,
    #[serde(flatten)]
    pub reveal: Reveal,
}

impl PendingReveal {
    pub fn by(&self, hotkey: &AccountId) -> bool {
        self.hotkey == hotkey.to_string()
    }
}

#[derive(Serialize, Deserialize)]
struct Contents {
    netuid: u16,
    pending: Vec<PendingReveal>,
}

/// Where one subnet's pending reveals are kept.
#[derive(Clone, Debug)]
pub struct PendingFile {
    pub path: PathBuf,
    pub netuid: u16,
}

impl PendingFile {
    /// What the file holds for this subnet. A missing file holds nothing; a file that cannot be
    /// read is moved aside (to `.unreadable`) with a warning rather than stopping the validator,
    /// and a file of another subnet is left alone.
    pub fn load(&self) -> Vec<PendingReveal> {
        match self.read() {
            Ok(pending) => pending,
            Err(reason) => {
                self.set_aside(&reason);
                Vec::new()
            }
        }
    }

    /// What the file holds for this subnet, changing nothing: a missing file or another subnet's
    /// holds nothing here; an unreadable one is an error saying why.
    pub fn read(&self) -> Result<Vec<PendingReveal>, String> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error.to_string()),
        };
        let contents = serde_json::from_str::<Contents>(&text).map_err(|e| e.to_string())?;
        if contents.netuid != self.netuid {
            tracing::warn!(
                path = %self.path.display(),
                "pending weight reveals are for subnet {}, not {}: left alone",
                contents.netuid,
                self.netuid
            );
            return Ok(Vec::new());
        }
        Ok(contents.pending)
    }

    /// Replaces the file's contents atomically (a crash leaves the old or the new list) and
    /// durably; an empty list removes it.
    pub fn store(&self, pending: &[PendingReveal]) -> ChainResult<()> {
        let failed = |error: std::io::Error| ChainError::PendingReveals {
            path: self.path.clone(),
            reason: error.to_string(),
        };
        if pending.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(failed(error)),
                _ => Ok(()),
            };
        }
        let contents = Contents {
            netuid: self.netuid,
            pending: pending.to_vec(),
        };
        let json =
            serde_json::to_vec_pretty(&contents).map_err(|e| ChainError::PendingReveals {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(failed)?;
        let partial = self.path.with_extension("partial");
        // The weights and their salt are secret until revealed: the owner's alone.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .map_err(failed)?;
        file.write_all(&json).map_err(failed)?;
        file.sync_all().map_err(failed)?;
        std::fs::rename(&partial, &self.path).map_err(failed)?;
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    fn set_aside(&self, reason: &str) {
        let aside = self.path.with_extension("unreadable");
        let moved = std::fs::rename(&self.path, &aside).is_ok();
        tracing::warn!(
            path = %self.path.display(),
            moved_to = moved.then(|| aside.display().to_string()),
            "pending weight reveals are unreadable ({reason}); starting without them"
        );
    }
}

/// The weights one process committed and has not revealed yet, kept in a [`PendingFile`] when it
/// has one, so that a restart between a commit and its reveal loses nothing.
#[derive(Debug, Default)]
pub struct PendingReveals {
    list: Vec<PendingReveal>,
    file: Option<PendingFile>,
}

impl PendingReveals {
    /// Keeps the list in `file` from now on, and takes up what a previous run left there;
    /// returns how many that was.
    pub fn keep_in(&mut self, file: PendingFile) -> usize {
        let loaded = file.load();
        let count = loaded.len();
        if count > 0 {
            tracing::info!(
                path = %file.path.display(),
                "{count} weight commit(s) from before the restart await their reveal"
            );
        }
        self.list.extend(loaded);
        self.file = Some(file);
        count
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Records a commit before it is sent, at the block it will most likely land in: a crash
    /// between the commit and the record would otherwise lose the salt that reveals it.
    pub fn record(&mut self, hotkey: &AccountId, reveal: Reveal) -> ChainResult<()> {
        self.list.push(PendingReveal {
            hotkey: hotkey.to_string(),
            reveal,
        });
        self.store()
    }

    /// Settles the commit [`PendingReveals::record`] took last: it landed in block `landed`, or
    /// was refused (`None`) and has nothing to reveal.
    pub fn settle_last(&mut self, landed: Option<u64>) -> ChainResult<()> {
        match landed {
            Some(block) => {
                if let Some(last) = self.list.last_mut() {
                    last.reveal.committed_at = block;
                }
            }
            None => {
                self.list.pop();
            }
        }
        self.store()
    }

    /// Takes out the commits of `hotkey` that are due at block `head`, keeps those not due yet,
    /// and drops (with a warning) those that expired or that another hotkey made, which this one
    /// cannot reveal. A due commit whose reveal fails for a passing reason goes back with
    /// [`PendingReveals::put_back`]; call [`PendingReveals::store`] once done.
    pub fn take_due(
        &mut self,
        hotkey: &AccountId,
        head: u64,
        timing: RevealTiming,
    ) -> Vec<PendingReveal> {
        let mut due = Vec::new();
        let mut kept = Vec::new();
        for entry in self.list.drain(..) {
            let committed_at = entry.reveal.committed_at;
            if !entry.by(hotkey) {
                tracing::warn!(
                    committed_at,
                    by = entry.hotkey,
                    "a weights commit by another hotkey cannot be revealed with this one; dropped"
                );
            } else if timing.is_expired(committed_at, head) {
                tracing::warn!(
                    committed_at,
                    "weights commit expired before it could be revealed"
                );
            } else if timing.is_due(committed_at, head) {
                due.push(entry);
            } else {
                kept.push(entry);
            }
        }
        self.list = kept;
        due
    }

    /// Sets each commit's block to where the chain says it landed (`landed`), dropping those it
    /// has no record of: never landed, or already revealed.
    pub fn reconcile(&mut self, landed: impl Fn(&PendingReveal) -> Option<u64>) {
        self.list.retain_mut(|entry| match landed(entry) {
            Some(block) => {
                entry.reveal.committed_at = block;
                true
            }
            None => {
                tracing::warn!(
                    committed_at = entry.reveal.committed_at,
                    "a weights commit the chain has no record of (it never landed, or was revealed): dropped"
                );
                false
            }
        });
    }

    pub fn put_back(&mut self, entry: PendingReveal) {
        self.list.push(entry);
    }

    /// Settles a due commit's reveal: `revealed` is the block it landed in, or why not. A reveal
    /// refused for a passing reason (a lost connection, a busy database) goes back to be tried
    /// again within its epoch; one the chain refuses for good (a hash that matches nothing) is
    /// dropped. Returns whether it was revealed.
    pub fn settle_reveal(&mut self, entry: PendingReveal, revealed: ChainResult<u64>) -> bool {
        let committed_at = entry.reveal.committed_at;
        match revealed {
            Ok(block) => {
                tracing::info!(block, committed_at, "revealed weights");
                true
            }
            Err(error) if error.is_transient() => {
                tracing::warn!(%error, committed_at, "revealing weights; trying again later");
                self.put_back(entry);
                false
            }
            Err(error) => {
                tracing::warn!(%error, committed_at, "revealing weights");
                false
            }
        }
    }

    /// Writes the list to the file, if there is one.
    pub fn store(&self) -> ChainResult<()> {
        match &self.file {
            Some(file) => file.store(&self.list),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use templar_protocol::Keypair;

    fn reveal_at(committed_at: u64) -> Reveal {
        Reveal {
            uids: vec![0, 3],
            weights: vec![65535, 12],
            salt: vec![1, 2, 3, 4, 5, 6, 7, 8],
            version_key: 7,
            committed_at,
        }
    }

    fn pending(hotkey: &Keypair, committed_at: u64) -> PendingReveal {
        PendingReveal {
            hotkey: hotkey.account().to_string(),
            reveal: reveal_at(committed_at),
        }
    }

    #[test]
    fn pending_reveals_survive_a_restart_and_leave_no_file_once_revealed() {
        let dir = tempfile::tempdir().unwrap();
        let file = PendingFile {
            path: dir.path().join("state/pending-reveals.json"),
            netuid: 3,
        };
        assert!(file.load().is_empty(), "no file yet");
        let hotkey = Keypair::generate();
        let list = vec![pending(&hotkey, 100), pending(&hotkey, 110)];
        file.store(&list).unwrap();
        assert_eq!(file.load(), list);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&file.path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "the salts are the owner's alone");
        assert!(list[0].by(&hotkey.account()));
        assert!(!list[0].by(&Keypair::generate().account()));
        file.store(&[]).unwrap();
        assert!(!file.path.exists());
        assert!(file.load().is_empty());
    }

    #[test]
    fn another_subnets_file_is_left_alone_and_a_corrupt_one_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pending-reveals.json");
        let hotkey = Keypair::generate();
        PendingFile {
            path: path.clone(),
            netuid: 1,
        }
        .store(&[pending(&hotkey, 5)])
        .unwrap();
        let ours = PendingFile {
            path: path.clone(),
            netuid: 3,
        };
        assert!(ours.load().is_empty());
        assert!(
            path.exists(),
            "another subnet's reveals are not ours to drop"
        );

        std::fs::write(&path, b"{ not json").unwrap();
        assert!(ours.load().is_empty());
        assert!(!path.exists());
        assert!(
            path.with_extension("unreadable").exists(),
            "kept for a look"
        );
    }

    #[test]
    fn due_commits_are_taken_out_and_expired_or_foreign_ones_dropped() {
        // netuid 3, tempo 9, one epoch between a commit and its reveal: a commit of block 7
        // (epoch 1) is due in blocks 16..=25 and expired from 26.
        let timing = RevealTiming {
            netuid: 3,
            tempo: 9,
            reveal_period: 1,
        };
        let ours = Keypair::generate();
        let theirs = Keypair::generate();
        let mut pending = PendingReveals::default();
        for (key, at) in [(&ours, 7), (&ours, 17), (&theirs, 7), (&ours, 0)] {
            pending.record(&key.account(), reveal_at(at)).unwrap();
        }
        let due = pending.take_due(&ours.account(), 16, timing);
        let blocks: Vec<u64> = due.iter().map(|e| e.reveal.committed_at).collect();
        assert_eq!(blocks, [7], "block 0 (epoch 0) expired, block 17 waits");
        assert!(
            !pending.is_empty(),
            "the commit of block 17 waits for epoch 3"
        );
        let due = pending.take_due(&ours.account(), 25, timing);
        assert!(due.is_empty(), "block 17 is epoch 2: due from block 26");
        let due = pending.take_due(&ours.account(), 26, timing);
        assert_eq!(due.len(), 1);
        assert!(pending.is_empty());
        pending.put_back(due[0].clone());
        assert!(
            !pending.is_empty(),
            "a reveal that failed for now is tried again"
        );
    }

    #[test]
    fn a_refused_commit_leaves_nothing_to_reveal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pending-reveals.json");
        let hotkey = Keypair::generate();
        let mut pending = PendingReveals::default();
        assert_eq!(
            pending.keep_in(PendingFile {
                path: path.clone(),
                netuid: 3
            }),
            0
        );
        pending.record(&hotkey.account(), reveal_at(10)).unwrap();
        assert!(path.exists(), "on disk before it is sent");
        pending.settle_last(Some(11)).unwrap();
        let mut restarted = PendingReveals::default();
        assert_eq!(
            restarted.keep_in(PendingFile {
                path: path.clone(),
                netuid: 3
            }),
            1
        );
        assert_eq!(
            PendingFile {
                path: path.clone(),
                netuid: 3
            }
            .load()[0]
                .reveal
                .committed_at,
            11
        );
        pending.record(&hotkey.account(), reveal_at(20)).unwrap();
        pending.settle_last(None).unwrap();
        assert_eq!(
            PendingFile { path, netuid: 3 }.load().len(),
            1,
            "the refused one is gone"
        );
    }
}
