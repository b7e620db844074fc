//! A node over the ranks of a process group: which rank owns which tensor for the outer step,
//! and the outer step they take together. Rank 0 alone talks to chain and storage, so it alone
//! ends up with the payload; the bytes are those one process would encode, whatever the world.

mod command;
mod follow;
mod full_shard;

use templar_codec::{IndexCoding, Schema, SparseTensor, assemble, encode_record};
use templar_dist::ProcessGroup;

pub use command::{Command, Records, WireBatch};
pub(crate) use command::{apply_message, candidates_message};
pub(crate) use follow::absolute;
pub use follow::{
    SavedBy, error_feedback_path, follow, load_node_state, load_rank_state, read_error_feedback,
    save_node_state, save_rank_state,
};
pub use full_shard::{
    FullyShardedReplica, apply_aggregate_on_shards, fingerprint_on_shards, follow_on_shards,
    outer_step_on_shards,
};

use crate::error::NodeError;
use crate::replica::Replica;

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

    /// This rank's share of `rows` rows to measure: `(first, count)`, the rows split as evenly
    /// as they go, in rank order (a rank may get none).
    pub fn rows(&self, rows: usize) -> (usize, usize) {
        let world = self.world.max(1);
        let start = rows * self.rank / world;
        (start, rows * (self.rank + 1) / world - start)
    }

    /// [`TensorOwner::error_feedback`] for the tensors of `schema`.
    pub fn error_feedback_of(&self, schema: &Schema) -> Vec<Vec<f32>> {
        self.error_feedback((0..schema.len()).map(|i| schema.plan(i).numel()))
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
        tell(&mut self.group, command)
    }

    /// [`Ranks::tell`] with the command's message made by `message`.
    pub(crate) fn tell_message(
        &mut self,
        message: impl FnOnce() -> Vec<u8>,
    ) -> Result<(), NodeError> {
        tell_message(&mut self.group, message)
    }

    /// On a rank other than 0, waits for rank 0's next command.
    fn receive(&mut self) -> Result<Command, NodeError> {
        receive(&mut self.group)
    }

    /// [`agree_on`] over these ranks.
    pub(crate) fn agree_on<T>(
        &mut self,
        outcome: Result<T, NodeError>,
        what: &str,
    ) -> Result<T, NodeError> {
        agree_on(&mut self.group, outcome, what)
    }
}

/// On rank 0 of `group`, sends every other rank `command` (made only then); nothing elsewhere,
/// or in a group of one.
pub(crate) fn tell(
    group: &mut ProcessGroup,
    command: impl FnOnce() -> Command,
) -> Result<(), NodeError> {
    tell_message(group, || command().encode())
}

/// [`tell`] with the command's message made by `message` (see [`command::apply_message`]).
pub(crate) fn tell_message(
    group: &mut ProcessGroup,
    message: impl FnOnce() -> Vec<u8>,
) -> Result<(), NodeError> {
    if group.rank() != 0 || group.world() == 1 {
        return Ok(());
    }
    let mut bytes = message();
    group
        .broadcast_bytes(&mut bytes, 0)
        .map_err(|e| NodeError::Ranks(format!("handing the other ranks their work: {e}")))
}

/// On a rank other than 0 of `group`, waits for rank 0's next command.
pub(crate) fn receive(group: &mut ProcessGroup) -> Result<Command, NodeError> {
    let mut bytes = Vec::new();
    group
        .broadcast_bytes(&mut bytes, 0)
        .map_err(|e| NodeError::Ranks(format!("waiting for rank 0: {e}")))?;
    Command::decode(bytes)
}

/// `outcome`, this rank's part of what the ranks did together, on every rank: this rank's own
/// error first (it keeps its kind: a full disk is explained as one), else the first other
/// rank's failure, naming it.
pub(crate) fn agree_on<T>(
    group: &mut ProcessGroup,
    outcome: Result<T, NodeError>,
    what: &str,
) -> Result<T, NodeError> {
    let failure = outcome.as_ref().err().map(ToString::to_string);
    let agreed = agree(group, failure, what);
    let value = outcome?;
    agreed?;
    Ok(value)
}

/// Every rank's outcome of what they did together (`failure`: this rank's error): the first
/// failure, naming its rank, fails it on every rank.
pub(crate) fn agree(
    group: &mut ProcessGroup,
    failure: Option<String>,
    what: &str,
) -> Result<(), NodeError> {
    let frame = match failure {
        None => vec![FRAME_OK],
        Some(reason) => failure_frame(&reason),
    };
    let frames = group
        .all_gather_bytes(&frame)
        .map_err(|e| NodeError::Ranks(format!("{what}: {e}")))?;
    match first_failure(&frames) {
        Some(failed) => Err(NodeError::Ranks(format!("{what}: {failed}"))),
        None => Ok(()),
    }
}

pub(crate) fn joined(replica: &mut Replica) -> Result<&mut Ranks, NodeError> {
    replica
        .ranks_mut()
        .ok_or_else(|| NodeError::Ranks("this replica has not joined its node's ranks".into()))
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
        Ok(tensors) => frame(&replica.schema, replica.coding, tensors),
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
fn frame(schema: &Schema, coding: IndexCoding, tensors: &[(usize, SparseTensor)]) -> Vec<u8> {
    let mut out = vec![FRAME_OK];
    for (i, tensor) in tensors {
        let record = encode_record(schema, *i, tensor, coding);
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
            format!("rank {rank} failed: {reason}")
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

pub(crate) fn take_record<'a>(cursor: &mut &'a [u8]) -> Option<&'a [u8]> {
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
        // 5 rows over 3 ranks: 1, 2, 2; 1 row over 3 ranks: only the last has it.
        let shares: Vec<(usize, usize)> = (0..3)
            .map(|rank| TensorOwner { rank, world: 3 }.rows(5))
            .collect();
        assert_eq!(shares, vec![(0, 1), (1, 2), (3, 2)]);
        let one: Vec<usize> = (0..3)
            .map(|rank| TensorOwner { rank, world: 3 }.rows(1).1)
            .collect();
        assert_eq!(one, vec![0, 0, 1]);
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
        assert_eq!(first_failure(&failed).unwrap(), "rank 1 failed: not finite");
        assert_eq!(first_failure(&frames), None);
    }
}
