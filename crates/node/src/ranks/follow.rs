//! The ranks other than 0: carrying out rank 0's commands, and every rank's training state.

use std::path::{Path, PathBuf};

use templar_codec::{Payload, Schema, decode};

use super::command::{Command, Records};
use super::{TensorOwner, joined, outer_step};
use crate::config::NetworkConfig;
use crate::error::NodeError;
use crate::replica::Replica;
use crate::saving::ERROR_FEEDBACK_FILE;
use crate::state::{read_f32s_keeping, write_f32s};

/// A rank other than 0: carries out rank 0's commands on its replica, with its own share of
/// the error feedback, until rank 0 stops (or is lost: an error).
pub fn follow(
    replica: &mut Replica,
    config: &NetworkConfig,
    error_feedback: &mut Vec<Vec<f32>>,
) -> Result<(), NodeError> {
    let vocab = config.model.model.vocab_size;
    // A validator's payloads under judgement, kept from one command to the next.
    let mut candidates: Vec<Payload> = Vec::new();
    loop {
        match joined(replica)?.receive()? {
            Command::Train {
                batch,
                schedule_step,
            } => {
                replica.set_schedule_step(schedule_step);
                replica.train_step(&batch.batch(vocab)?)?;
            }
            Command::OuterStep => {
                outer_step(replica, error_feedback)?;
            }
            Command::Apply(encoded) => {
                let payloads = decode_all(&replica.schema, &encoded)?;
                replica.apply_aggregate(&payloads.iter().collect::<Vec<_>>())?;
            }
            Command::Load(dir) => replica.load_weights(&dir)?,
            Command::Reset => replica.reset(config)?,
            Command::Revert => replica.revert_as_follower()?,
            Command::SaveState(dir) => {
                let saved = save_rank_state(replica, error_feedback, &dir);
                joined(replica)?.agree_on(saved, "saving the ranks' training state")?;
            }
            Command::LoadState { dir, saved } => {
                let loaded = load_rank_state(replica, error_feedback, &dir, &saved);
                joined(replica)?.agree_on(loaded, "loading the ranks' training state")?;
            }
            Command::Candidates(encoded) => {
                candidates = decode_all(&replica.schema, &encoded)?;
            }
            Command::ApplyOne {
                index,
                reference,
                scale,
            } => {
                let all: Vec<&Payload> = candidates.iter().collect();
                let peer = all.get(index).copied().ok_or_else(|| {
                    NodeError::Ranks(format!(
                        "rank 0 asked for candidate {index} of {}",
                        all.len()
                    ))
                })?;
                replica.apply_one(peer, &all, reference, scale)?;
            }
            Command::Restore => replica.restore()?,
            Command::Evaluate(batch, bytes) => {
                replica.evaluate(&batch.batch(vocab)?, bytes)?;
            }
            Command::Stop => return Ok(()),
        }
    }
}

fn decode_all(schema: &Schema, encoded: &Records) -> Result<Vec<Payload>, NodeError> {
    encoded
        .iter()
        .map(|bytes| decode(schema, bytes))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| NodeError::Ranks(format!("rank 0 sent a bad payload: {e}")))
}

/// On rank 0: every rank's training state (sharded moments, its error feedback) into `dir`,
/// each rank writing its own files; returns once all are written, or with the first rank's
/// failure. The weights are the node's to save (every rank holds the same).
pub fn save_node_state(
    replica: &mut Replica,
    error_feedback: &[Vec<f32>],
    dir: &Path,
) -> Result<String, NodeError> {
    let dir = absolute(dir)?;
    joined(replica)?.tell(|| Command::SaveState(dir.clone()))?;
    let saved = save_rank_state(replica, error_feedback, &dir);
    joined(replica)?.agree_on(saved, "saving the ranks' training state")
}

/// On rank 0: every rank reads its training state from `dir` (see [`save_node_state`]), saved
/// by one process or by a node of this many ranks or another number.
pub fn load_node_state(
    replica: &mut Replica,
    error_feedback: &mut Vec<Vec<f32>>,
    dir: &Path,
    saved: &SavedBy,
) -> Result<(), NodeError> {
    let dir = absolute(dir)?;
    joined(replica)?.tell(|| Command::LoadState {
        dir: dir.clone(),
        saved: saved.clone(),
    })?;
    let loaded = load_rank_state(replica, error_feedback, &dir, saved);
    joined(replica)?.agree_on(loaded, "loading the ranks' training state")
}

/// Where a rank keeps its error feedback in a state folder.
pub fn error_feedback_path(dir: &Path, owner: TensorOwner) -> PathBuf {
    dir.join(format!(
        "error_feedback.rank-{}-of-{}.bin",
        owner.rank, owner.world
    ))
}

/// This rank's moments and error feedback into `dir` (over a node's ranks each rank writes its
/// own). The error feedback's digest is written beside it, and returned.
pub fn save_rank_state(
    replica: &mut Replica,
    error_feedback: &[Vec<f32>],
    dir: &Path,
) -> Result<String, NodeError> {
    replica.save_optimizer(dir)?;
    write_error_feedback(dir, replica.owner(), error_feedback)
}

/// A rank's error feedback into `dir`, its digest beside it; returns the digest.
pub(crate) fn write_error_feedback(
    dir: &Path,
    owner: TensorOwner,
    error_feedback: &[Vec<f32>],
) -> Result<String, NodeError> {
    let path = error_feedback_path(dir, owner);
    let digest = write_f32s(&path, error_feedback)?;
    templar_engine::write_atomic(&path.with_extension("blake3"), digest.as_bytes())?;
    Ok(digest)
}

/// The ranks share a disk, not a working directory's meaning: folders cross as absolute paths.
pub(crate) fn absolute(dir: &Path) -> Result<PathBuf, NodeError> {
    std::path::absolute(dir).map_err(|e| NodeError::io(dir, e))
}

/// How a saved node laid out its training state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SavedBy {
    /// One process: one optimizer file, and one error feedback file whose digest is in the
    /// node's record.
    OneProcess { error_feedback_blake3: String },
    /// A node over this many ranks: one moments file and one error feedback file per rank,
    /// each error feedback's digest beside it.
    Ranks(usize),
    /// A fully sharded node over this many ranks: the moments as one process writes them, and
    /// one error feedback file per rank, each digest beside it.
    FullyShardedRanks(usize),
}

impl SavedBy {
    /// The saving node's ranks; none for one process.
    pub fn ranks(&self) -> Option<usize> {
        match self {
            SavedBy::OneProcess { .. } => None,
            SavedBy::Ranks(ranks) | SavedBy::FullyShardedRanks(ranks) => Some(*ranks),
        }
    }

    /// The ranks whose files hold the moments; none when one file holds them all.
    pub fn moments_ranks(&self) -> Option<usize> {
        match self {
            SavedBy::OneProcess { .. } | SavedBy::FullyShardedRanks(_) => None,
            SavedBy::Ranks(ranks) => Some(*ranks),
        }
    }
}

/// Reads what a node laid out as `saved` wrote into `dir`, whatever this node's ranks: this
/// rank's moments gathered from the saved optimizer's files, and its tensors' error feedback
/// from the file that holds each, every file checked against its digest.
pub fn load_rank_state(
    replica: &mut Replica,
    error_feedback: &mut Vec<Vec<f32>>,
    dir: &Path,
    saved: &SavedBy,
) -> Result<(), NodeError> {
    replica.load_optimizer_saved_by(dir, saved.moments_ranks())?;
    let numels: Vec<usize> = replica.base().iter().map(Vec::len).collect();
    *error_feedback = read_error_feedback(dir, &numels, replica.owner(), saved)?;
    Ok(())
}

/// The error feedback of the tensors `mine` owns (the others' buffers empty) from the files a
/// node laid out as `saved` wrote into `dir`. A saved rank's file is read only if it holds
/// some of them; one process's file is read whole (for its digest) but only `mine`'s buffers
/// are kept.
pub fn read_error_feedback(
    dir: &Path,
    numels: &[usize],
    mine: TensorOwner,
    saved: &SavedBy,
) -> Result<Vec<Vec<f32>>, NodeError> {
    let world = match saved {
        SavedBy::OneProcess {
            error_feedback_blake3,
        } => {
            let path = dir.join(ERROR_FEEDBACK_FILE);
            return read_f32s_keeping(&path, numels, error_feedback_blake3, |t| mine.owns(t));
        }
        SavedBy::Ranks(0) | SavedBy::FullyShardedRanks(0) => {
            return Err(NodeError::State {
                path: dir.to_path_buf(),
                reason: "its record says it was saved by 0 ranks".into(),
            });
        }
        SavedBy::Ranks(world) | SavedBy::FullyShardedRanks(world) => *world,
    };
    let mut loaded: Vec<Vec<f32>> = vec![Vec::new(); numels.len()];
    for rank in 0..world {
        let saved = TensorOwner { rank, world };
        let wanted = |t: usize| saved.owns(t) && mine.owns(t);
        if !(0..numels.len()).any(wanted) {
            continue;
        }
        let lengths: Vec<usize> = numels
            .iter()
            .enumerate()
            .map(|(t, &n)| if saved.owns(t) { n } else { 0 })
            .collect();
        let path = error_feedback_path(dir, saved);
        let digest_path = path.with_extension("blake3");
        let digest =
            std::fs::read_to_string(&digest_path).map_err(|e| NodeError::io(&digest_path, e))?;
        let buffers = read_f32s_keeping(&path, &lengths, digest.trim(), wanted)?;
        for (t, buffer) in buffers.into_iter().enumerate() {
            if wanted(t) {
                loaded[t] = buffer;
            }
        }
    }
    Ok(loaded)
}
