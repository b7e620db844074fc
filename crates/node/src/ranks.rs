//! A node over the ranks of a process group: which rank owns which tensor for the outer step,
//! and the outer step they take together. Rank 0 alone talks to chain and storage, so it alone
//! ends up with the payload; the bytes are those one process would encode, whatever the world.

use std::path::{Path, PathBuf};

use templar_codec::{
    IndexCoding, Payload, Schema, SparseTensor, assemble, decode, encode, encode_record,
};
use templar_dist::ProcessGroup;
use templar_engine::Batch;

use crate::config::NetworkConfig;
use crate::error::NodeError;
use crate::replica::Replica;
use crate::state::{read_f32s, write_f32s};

/// Which tensors of the schema a rank owns for the outer step: tensor `i` belongs to rank
/// `i mod world` — a fixed round robin, so the owner never depends on sizes or timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorOwner {
    pub rank: usize,
    pub world: usize,
}

impl TensorOwner {
    /// One process: every tensor.
    pub const ALONE: TensorOwner = TensorOwner { rank: 0, world: 1 };

    pub fn of(group: &ProcessGroup) -> TensorOwner {
        TensorOwner {
            rank: group.rank(),
            world: group.world(),
        }
    }

    pub fn owns(&self, tensor: usize) -> bool {
        tensor % self.world.max(1) == self.rank
    }

    /// Error-feedback buffers for this rank: zeros for its tensors, empty for the others.
    pub fn error_feedback(&self, numels: impl IntoIterator<Item = usize>) -> Vec<Vec<f32>> {
        numels
            .into_iter()
            .enumerate()
            .map(|(i, n)| {
                if self.owns(i) {
                    vec![0.0; n]
                } else {
                    Vec::new()
                }
            })
            .collect()
    }
}

/// The node's ranks, as a replica holds them: the group, and which tensors this rank owns.
pub struct Ranks {
    pub(crate) group: ProcessGroup,
    pub(crate) owner: TensorOwner,
}

impl Ranks {
    pub(crate) fn new(group: ProcessGroup) -> Ranks {
        Ranks {
            owner: TensorOwner::of(&group),
            group,
        }
    }

    /// On rank 0, sends every other rank `command` (made only then); nothing elsewhere.
    pub(crate) fn tell(&mut self, command: impl FnOnce() -> Command) -> Result<(), NodeError> {
        if self.owner.rank != 0 {
            return Ok(());
        }
        let mut bytes = command().encode();
        self.group
            .broadcast_bytes(&mut bytes, 0)
            .map_err(|e| NodeError::Ranks(format!("handing the other ranks their work: {e}")))
    }

    /// On a rank other than 0, waits for rank 0's next command.
    fn receive(&mut self) -> Result<Command, NodeError> {
        let mut bytes = Vec::new();
        self.group
            .broadcast_bytes(&mut bytes, 0)
            .map_err(|e| NodeError::Ranks(format!("waiting for rank 0: {e}")))?;
        Command::decode(&bytes)
    }

    /// Every rank's outcome of a step they took together (`failure`: this rank's error, if
    /// any): the first failure, naming its rank, fails the step on every rank.
    pub(crate) fn agree(&mut self, failure: Option<String>, what: &str) -> Result<(), NodeError> {
        let frame = match failure {
            None => vec![FRAME_OK],
            Some(reason) => failure_frame(&reason),
        };
        let frames = self
            .group
            .all_gather_bytes(&frame)
            .map_err(|e| NodeError::Ranks(format!("{what}: {e}")))?;
        match first_failure(&frames) {
            Some(failed) => Err(NodeError::Ranks(format!("{what}: {failed}"))),
            None => Ok(()),
        }
    }
}

impl Drop for Ranks {
    /// Rank 0 going away, on success or on an error, tells the others to stop; a rank that is
    /// gone already makes this fail, which changes nothing.
    fn drop(&mut self) {
        let _ = self.tell(|| Command::Stop);
    }
}

/// What rank 0 asks the other ranks of its node to do: every operation that changes a replica,
/// so that the ranks' replicas stay the same bits.
#[derive(Debug)]
pub enum Command {
    /// One inner step on this batch (each rank takes its share of the rows).
    Train {
        rows: usize,
        seq_len: usize,
        tokens: Vec<i64>,
        labels: Vec<i64>,
    },
    /// The outer step ([`outer_step`]).
    OuterStep,
    /// Apply the aggregate of these encoded payloads, in this order.
    Apply(Vec<Vec<u8>>),
    /// Load the weights of this checkpoint folder (one machine: the ranks share its disk).
    Load(PathBuf),
    /// Back to the network's initial model.
    Reset,
    /// Write this rank's training state (moments, error feedback) into this folder.
    SaveState(PathBuf),
    /// Read this rank's training state from this folder.
    LoadState(PathBuf),
    Stop,
}

impl Command {
    pub(crate) fn train(batch: &Batch) -> Command {
        match batch.to_tokens() {
            Ok((tokens, labels)) => Command::Train {
                rows: batch.rows(),
                seq_len: batch.seq_len(),
                tokens,
                labels,
            },
            // Unreadable here is unreadable there: the ranks fail the step together.
            Err(_) => Command::Train {
                rows: 0,
                seq_len: 0,
                tokens: Vec::new(),
                labels: Vec::new(),
            },
        }
    }

    pub(crate) fn apply(schema: &Schema, payloads: &[&Payload], coding: IndexCoding) -> Command {
        Command::Apply(payloads.iter().map(|p| encode(schema, p, coding)).collect())
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Command::Train {
                rows,
                seq_len,
                tokens,
                labels,
            } => {
                out.push(0);
                out.extend_from_slice(&(*rows as u64).to_le_bytes());
                out.extend_from_slice(&(*seq_len as u64).to_le_bytes());
                for id in tokens.iter().chain(labels) {
                    out.extend_from_slice(&id.to_le_bytes());
                }
            }
            Command::OuterStep => out.push(1),
            Command::Apply(payloads) => {
                out.push(2);
                for payload in payloads {
                    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
                    out.extend_from_slice(payload);
                }
            }
            Command::Load(dir) => {
                out.push(3);
                out.extend_from_slice(dir.to_string_lossy().as_bytes());
            }
            Command::Reset => out.push(4),
            Command::SaveState(dir) => {
                out.push(5);
                out.extend_from_slice(dir.to_string_lossy().as_bytes());
            }
            Command::LoadState(dir) => {
                out.push(6);
                out.extend_from_slice(dir.to_string_lossy().as_bytes());
            }
            Command::Stop => out.push(7),
        }
        out
    }

    /// Reads a command; payloads are decoded and checked by the caller.
    fn decode(bytes: &[u8]) -> Result<Command, NodeError> {
        let bad = |what: &str| NodeError::Ranks(format!("rank 0 sent {what}"));
        let (&tag, mut rest) = bytes.split_first().ok_or_else(|| bad("an empty command"))?;
        let path = |rest: &[u8]| PathBuf::from(String::from_utf8_lossy(rest).into_owned());
        Ok(match tag {
            0 => {
                let rows = take_u64(&mut rest).ok_or_else(|| bad("a batch without rows"))?;
                let seq_len = take_u64(&mut rest).ok_or_else(|| bad("a batch without length"))?;
                let ids: Vec<i64> = rest
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                    .collect();
                let n = (rows as usize).saturating_mul(seq_len as usize);
                if rest.len() % 8 != 0 || ids.len() != 2 * n {
                    return Err(bad("a batch of the wrong size"));
                }
                let (tokens, labels) = ids.split_at(n);
                Command::Train {
                    rows: rows as usize,
                    seq_len: seq_len as usize,
                    tokens: tokens.to_vec(),
                    labels: labels.to_vec(),
                }
            }
            1 => Command::OuterStep,
            2 => {
                let mut payloads = Vec::new();
                while !rest.is_empty() {
                    let record = take_record(&mut rest).ok_or_else(|| bad("a cut payload"))?;
                    payloads.push(record.to_vec());
                }
                Command::Apply(payloads)
            }
            3 => Command::Load(path(rest)),
            4 => Command::Reset,
            5 => Command::SaveState(path(rest)),
            6 => Command::LoadState(path(rest)),
            7 => Command::Stop,
            other => return Err(bad(&format!("an unknown command {other}"))),
        })
    }
}

fn take_u64(cursor: &mut &[u8]) -> Option<u64> {
    let (value, rest) = cursor.split_first_chunk::<8>()?;
    *cursor = rest;
    Some(u64::from_le_bytes(*value))
}

/// A rank other than 0: carries out rank 0's commands on its replica, with its own share of
/// the error feedback, until rank 0 stops (or is lost: an error).
pub fn follow(
    replica: &mut Replica,
    config: &NetworkConfig,
    error_feedback: &mut Vec<Vec<f32>>,
) -> Result<(), NodeError> {
    let vocab = config.model.model.vocab_size;
    loop {
        let command = joined(replica)?.receive()?;
        match command {
            Command::Train {
                rows,
                seq_len,
                tokens,
                labels,
            } => {
                let batch = Batch::from_tokens(&tokens, rows, seq_len, vocab)
                    .and_then(|b| b.with_labels(&labels))?;
                replica.train_step(&batch)?;
            }
            Command::OuterStep => {
                outer_step(replica, error_feedback)?;
            }
            Command::Apply(encoded) => {
                let payloads = encoded
                    .iter()
                    .map(|bytes| decode(&replica.schema, bytes))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| NodeError::Ranks(format!("rank 0 sent a bad payload: {e}")))?;
                let refs: Vec<&Payload> = payloads.iter().collect();
                replica.apply_aggregate(&refs)?;
            }
            Command::Load(dir) => replica.load_weights(&dir)?,
            Command::Reset => replica.reset(config)?,
            Command::SaveState(dir) => {
                let saved = save_rank_state(replica, error_feedback, &dir);
                let failure = saved.as_ref().err().map(ToString::to_string);
                joined(replica)?.agree(failure, "saving the ranks' training state")?;
            }
            Command::LoadState(dir) => {
                let loaded = load_rank_state(replica, error_feedback, &dir);
                let failure = loaded.as_ref().err().map(ToString::to_string);
                joined(replica)?.agree(failure, "loading the ranks' training state")?;
            }
            Command::Stop => return Ok(()),
        }
    }
}

fn joined(replica: &mut Replica) -> Result<&mut Ranks, NodeError> {
    replica
        .ranks_mut()
        .ok_or_else(|| NodeError::Ranks("this replica has not joined its node's ranks".into()))
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
    let failure = saved.as_ref().err().map(ToString::to_string);
    let agreed = joined(replica)?.agree(failure, "saving the ranks' training state");
    // This rank's own error first: it keeps its kind (a full disk is explained as one).
    let digest = saved?;
    agreed?;
    Ok(digest)
}

/// On rank 0: every rank reads its training state from `dir` (see [`save_node_state`]).
pub fn load_node_state(
    replica: &mut Replica,
    error_feedback: &mut Vec<Vec<f32>>,
    dir: &Path,
) -> Result<(), NodeError> {
    let dir = absolute(dir)?;
    joined(replica)?.tell(|| Command::LoadState(dir.clone()))?;
    let loaded = load_rank_state(replica, error_feedback, &dir);
    let failure = loaded.as_ref().err().map(ToString::to_string);
    let agreed = joined(replica)?.agree(failure, "loading the ranks' training state");
    loaded?;
    agreed
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
    let path = error_feedback_path(dir, replica.owner());
    let digest = write_f32s(&path, error_feedback)?;
    templar_engine::write_atomic(&path.with_extension("blake3"), digest.as_bytes())?;
    Ok(digest)
}

/// The ranks share a disk, not a working directory's meaning: folders cross as absolute paths.
pub(crate) fn absolute(dir: &Path) -> Result<PathBuf, NodeError> {
    std::path::absolute(dir).map_err(|e| NodeError::io(dir, e))
}

/// Reads what [`save_rank_state`] wrote, checking the error feedback against its digest.
pub fn load_rank_state(
    replica: &mut Replica,
    error_feedback: &mut Vec<Vec<f32>>,
    dir: &Path,
) -> Result<(), NodeError> {
    replica.load_optimizer(dir)?;
    let path = error_feedback_path(dir, replica.owner());
    let digest_path = path.with_extension("blake3");
    let digest =
        std::fs::read_to_string(&digest_path).map_err(|e| NodeError::io(&digest_path, e))?;
    let lengths: Vec<usize> = error_feedback.iter().map(Vec::len).collect();
    *error_feedback = read_f32s(&path, &lengths, digest.trim())?;
    Ok(())
}

/// The outer step of a node's ranks: each rank compresses and encodes the tensors it owns with
/// its own error feedback ([`Replica::outer_step_owned`]), and rank 0 assembles the records into
/// the payload's bytes (`Some` on rank 0, `None` on the others). Every rank puts its live weights
/// back to the base. A codec failure on any rank fails the step on every rank, naming the rank,
/// and every rank resets its error feedback, as one process resets all of it.
pub fn outer_step(
    replica: &mut Replica,
    error_feedback: &mut [Vec<f32>],
) -> Result<Option<Vec<u8>>, NodeError> {
    let owner = replica.owner();
    let made = replica.outer_step_owned(error_feedback, owner);
    let frame = match &made {
        Ok(tensors) => frame(replica, tensors),
        Err(error) => failure_frame(&error.to_string()),
    };
    let frames = joined(replica)?
        .group
        .all_gather_bytes(&frame)
        .map_err(|e| NodeError::Ranks(format!("gathering the outer step's tensors: {e}")))?;
    if let Some(failed) = first_failure(&frames) {
        error_feedback.iter_mut().for_each(|e| e.fill(0.0));
        made?;
        return Err(NodeError::Codec(format!(
            "{failed}; error feedback was reset"
        )));
    }
    made?;
    if owner.rank != 0 {
        return Ok(None);
    }
    let records = unframe(&frames, replica.schema.len())?;
    let bytes = assemble(&replica.schema, &records)
        .map_err(|e| NodeError::Ranks(format!("assembling the payload: {e}")))?;
    Ok(Some(bytes))
}

const FRAME_OK: u8 = 0;
const FRAME_FAILED: u8 = 1;

/// A rank's tensors for rank 0: a tag, then each record as a little-endian `u64` length and its
/// bytes, in ascending tensor order.
fn frame(replica: &Replica, tensors: &[(usize, SparseTensor)]) -> Vec<u8> {
    let mut out = vec![FRAME_OK];
    for (i, tensor) in tensors {
        let record = encode_record(&replica.schema, *i, tensor, replica.coding);
        out.extend_from_slice(&(record.len() as u64).to_le_bytes());
        out.extend_from_slice(&record);
    }
    out
}

fn failure_frame(reason: &str) -> Vec<u8> {
    let mut out = vec![FRAME_FAILED];
    out.extend_from_slice(reason.as_bytes());
    out
}

/// The first failed rank's reason, if any rank failed.
fn first_failure(frames: &[Vec<u8>]) -> Option<String> {
    frames.iter().enumerate().find_map(|(rank, frame)| {
        (frame.first() != Some(&FRAME_OK)).then(|| {
            let reason = frame
                .get(1..)
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            format!("rank {rank}'s outer step failed: {reason}")
        })
    })
}

/// Every tensor's record in schema order, from the frames of the ranks that own them.
fn unframe(frames: &[Vec<u8>], tensors: usize) -> Result<Vec<&[u8]>, NodeError> {
    let world = frames.len();
    let mut cursors: Vec<&[u8]> = frames.iter().map(|f| f.get(1..).unwrap_or(&[])).collect();
    let mut records = Vec::with_capacity(tensors);
    for i in 0..tensors {
        let rank = i % world;
        let cursor = &mut cursors[rank];
        let record = take_record(cursor).ok_or_else(|| {
            NodeError::Ranks(format!("rank {rank} sent no whole record for tensor {i}"))
        })?;
        records.push(record);
    }
    if let Some(rank) = cursors.iter().position(|c| !c.is_empty()) {
        return Err(NodeError::Ranks(format!(
            "rank {rank} sent more tensors than it owns"
        )));
    }
    Ok(records)
}

fn take_record<'a>(cursor: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, rest) = cursor.split_first_chunk::<8>()?;
    let len = usize::try_from(u64::from_le_bytes(*len)).ok()?;
    let record = rest.get(..len)?;
    *cursor = &rest[len..];
    Some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_go_round_robin() {
        let owners: Vec<Vec<usize>> = (0..3)
            .map(|rank| {
                let owner = TensorOwner { rank, world: 3 };
                (0..7).filter(|&i| owner.owns(i)).collect()
            })
            .collect();
        assert_eq!(owners, vec![vec![0, 3, 6], vec![1, 4], vec![2, 5]]);
        assert!((0..7).all(|i| TensorOwner::ALONE.owns(i)));
        let ef = TensorOwner { rank: 1, world: 2 }.error_feedback([2, 3, 1]);
        assert_eq!(ef, vec![vec![], vec![0.0; 3], vec![]]);
    }

    fn record(bytes: &[u8]) -> Vec<u8> {
        let mut out = (bytes.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn records_come_back_in_tensor_order_and_bad_frames_are_named() {
        // Two ranks, three tensors: rank 0 owns 0 and 2, rank 1 owns 1.
        let zero = [vec![FRAME_OK], record(b"t0"), record(b"t2")].concat();
        let one = [vec![FRAME_OK], record(b"t1")].concat();
        let frames = vec![zero.clone(), one.clone()];
        let records = unframe(&frames, 3).unwrap();
        assert_eq!(records, vec![&b"t0"[..], b"t1", b"t2"]);

        let short = vec![zero.clone(), vec![FRAME_OK]];
        let err = unframe(&short, 3).unwrap_err().to_string();
        assert!(
            err.contains("rank 1 sent no whole record for tensor 1"),
            "{err}"
        );
        let extra = vec![zero, [one, record(b"t3")].concat()];
        let err = unframe(&extra, 3).unwrap_err().to_string();
        assert!(err.contains("rank 1 sent more"), "{err}");

        let failed = vec![vec![FRAME_OK], failure_frame("not finite")];
        assert_eq!(
            first_failure(&failed).unwrap(),
            "rank 1's outer step failed: not finite"
        );
        assert_eq!(first_failure(&frames), None);
    }
}
