//! Weights committed on a commit-reveal subnet and not yet revealed, kept in a file beside the
//! validator's state: a validator restarted between a commit and its reveal still reveals, instead
//! of losing that period's weights.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use templar_protocol::AccountId;

use super::calls::Reveal;
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
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(error) => {
                self.set_aside(&error.to_string());
                return Vec::new();
            }
        };
        match serde_json::from_str::<Contents>(&text) {
            Ok(contents) if contents.netuid == self.netuid => contents.pending,
            Ok(contents) => {
                tracing::warn!(
                    path = %self.path.display(),
                    "pending weight reveals are for subnet {}, not {}: left alone",
                    contents.netuid,
                    self.netuid
                );
                Vec::new()
            }
            Err(error) => {
                self.set_aside(&error.to_string());
                Vec::new()
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use templar_protocol::Keypair;

    fn pending(hotkey: &Keypair, committed_at: u64) -> PendingReveal {
        PendingReveal {
            hotkey: hotkey.account().to_string(),
            reveal: Reveal {
                uids: vec![0, 3],
                weights: vec![65535, 12],
                salt: vec![1, 2, 3, 4, 5, 6, 7, 8],
                version_key: 7,
                committed_at,
            },
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
}
