//! The outer step of a node whose training is fully sharded ([`FullyShardedTrainer`]), where no
//! rank holds the whole model: each rank holds only the network model's tensors it owns (the
//! round robin of [`TensorOwner`]) and their error feedback. The live tensors a rank owns are
//! gathered to it whole, a unit at a time; it compresses them as one process would; rank 0
//! assembles the payload from every rank's records; and every rank's spans of the live weights
//! are then set back to the network model from the tensors' owners. The payload's bytes and the
//! error feedback are one process's, whatever the number of ranks.
//!
//! Every check a rank makes alone (its buffers, the schema against its trainer, the payloads)
//! is agreed on by every rank before the first collective, so that one rank's refusal fails the
//! step everywhere instead of leaving the others waiting in a gather.

mod replica;

pub use replica::{FullyShardedReplica, follow_on_shards};

use templar_codec::aggregate::clip_scales;
use templar_codec::quant::Rule;
use templar_codec::{
    IndexCoding, Payload, Schema, SparseTensor, assemble, compress_tensor_in_pieces,
};
use templar_engine::{FullyShardedTrainer, parameter_shapes};

use super::{TensorOwner, agree, failure_frame, first_failure, frame, unframe};
use crate::error::NodeError;
use crate::fingerprint::{Fingerprint, tensor_hash};
use crate::replica::{check_peers, merge_in_pieces, pseudo_gradient};
use crate::undo::{ApplyUndo, changes_at_most};

/// Values of a pseudo-gradient made at once (whole bands, as the one-process outer step).
const PIECE: usize = 1 << 22;

/// The outer step of one rank of a fully sharded node: `base` holds the network model's tensors
/// this rank owns (the others empty), as does `error_feedback`. Returns the payload's bytes on
/// rank 0 (`None` elsewhere). The live weights are put back to the base. A failure on any rank
/// (a codec failure: a non-finite pseudo-gradient) fails the step on every rank, naming it, and
/// every rank resets its error feedback, as one process resets all of it.
pub fn outer_step_on_shards(
    trainer: &mut FullyShardedTrainer,
    schema: &Schema,
    coding: IndexCoding,
    base: &[Vec<f32>],
    error_feedback: &mut [Vec<f32>],
) -> Result<Option<Vec<u8>>, NodeError> {
    let owner = owner_of(trainer);
    let checked = check_owned(schema, owner, base, "network model")
        .and_then(|()| check_owned(schema, owner, error_feedback, "error-feedback"))
        .and_then(|()| check_trainer(schema, trainer));
    agree_on_inputs(trainer, checked, "the outer step's inputs")?;
    let stepped = compress_owned(trainer, schema, coding, base, error_feedback);
    if stepped.is_err() {
        error_feedback.iter_mut().for_each(|e| e.fill(0.0));
    }
    stepped
}

/// [`outer_step_on_shards`] once its inputs are agreed on.
fn compress_owned(
    trainer: &mut FullyShardedTrainer,
    schema: &Schema,
    coding: IndexCoding,
    base: &[Vec<f32>],
    error_feedback: &mut [Vec<f32>],
) -> Result<Option<Vec<u8>>, NodeError> {
    let owner = owner_of(trainer);
    let mut compressed: Vec<(usize, SparseTensor)> = Vec::new();
    let mut failure: Option<String> = None;
    trainer.visit_owned(
        |i| owner.owns(i),
        |i, live| {
            if failure.is_some() {
                return Ok(());
            }
            let fill = pseudo_gradient(schema, i, live, &base[i]);
            let feedback = &mut error_feedback[i];
            match compress_tensor_in_pieces(schema, i, feedback, PIECE, Rule::Symmetric, fill) {
                Ok(tensor) => compressed.push((i, tensor)),
                Err(error) => failure = Some(error.to_string()),
            }
            Ok(())
        },
    )?;
    let frame = match &failure {
        None => frame(schema, coding, &compressed),
        Some(reason) => failure_frame(reason),
    };
    let frames = trainer.with_group(|group| {
        group
            .all_gather_bytes(&frame)
            .map_err(|e| NodeError::Ranks(format!("gathering the outer step's tensors: {e}")))
    })?;
    // Every live tensor goes back to the base, whatever the codec did (as in one process).
    put_back(trainer, owner, base)?;
    if let Some(failed) = first_failure(&frames) {
        return Err(NodeError::Codec(format!(
            "{failed}; error feedback was reset"
        )));
    }
    if owner.rank != 0 {
        return Ok(None);
    }
    let records = unframe(&frames, schema.len())?;
    let bytes = assemble(schema, &records)
        .map_err(|e| NodeError::Ranks(format!("assembling the payload: {e}")))?;
    Ok(Some(bytes))
}

/// `θ ← θ − outer_lr · aggregate(payloads)` on a fully sharded node (the payloads, in ascending
/// uid order, on every rank): each rank merges the peers' tensors it owns into its share of the
/// network model (a tensor whose aggregate is not finite anywhere is left as it is, as in one
/// process), the live spans are set from the owners, and the network model's fingerprint is
/// made from each owner's tensor hashes. Model and fingerprint are one process's, whatever the
/// world. A failure on any rank fails the step on every rank; the live spans are still set to
/// each rank's base. `undo` gets what the apply changed in this rank's tensors.
pub fn apply_aggregate_on_shards(
    trainer: &mut FullyShardedTrainer,
    schema: &Schema,
    outer_lr: f32,
    base: &mut [Vec<f32>],
    payloads: &[&Payload],
    undo: &mut ApplyUndo,
) -> Result<Fingerprint, NodeError> {
    let owner = owner_of(trainer);
    let checked = check_owned(schema, owner, base, "network model")
        .and_then(|()| check_peers(schema, payloads))
        .and_then(|()| check_trainer(schema, trainer));
    agree_on_inputs(trainer, checked, "the aggregate's inputs")?;
    if payloads.is_empty() {
        // Nothing to apply, as in one process: the model is left exactly as it is.
        return trainer.with_group(|group| fingerprint_on_shards(group, schema, base));
    }
    let mut scratch = Vec::new();
    let mut failure = None;
    for i in (0..schema.len()).filter(|&i| owner.owns(i)) {
        let peers: Vec<&SparseTensor> = payloads.iter().map(|p| &p.tensors[i]).collect();
        let scales = clip_scales(&peers);
        let tensor = &mut base[i];
        let record = undo.tensor(i, tensor, changes_at_most(schema, &peers));
        let merged = merge_in_pieces(schema, &mut scratch, i, &peers, &scales, |range, update| {
            record.subtract_scaled(range.start, &mut tensor[range], update, outer_lr);
            Ok(())
        });
        if let Err(error) = merged {
            failure = Some(error.to_string());
            break;
        }
    }
    let applied = trainer.with_group(|group| agree(group, failure, "applying the aggregate"));
    put_back(trainer, owner, base)?;
    applied?;
    trainer.with_group(|group| fingerprint_on_shards(group, schema, base))
}

/// The fingerprint of a network model held by its tensors' owners (`base`: this rank's tensors,
/// the others empty): each rank hashes its tensors, and every rank combines every rank's hashes
/// in protocol order — what hashing the whole model gives, whatever the world.
pub fn fingerprint_on_shards(
    group: &mut templar_dist::ProcessGroup,
    schema: &Schema,
    base: &[Vec<f32>],
) -> Result<Fingerprint, NodeError> {
    let owner = TensorOwner::of(group);
    let owned = |rank: usize| (0..schema.len()).filter(move |i| i % owner.world == rank);
    let mine: Vec<u8> = owned(owner.rank)
        .flat_map(|i| tensor_hash(&base[i]))
        .collect();
    let frames = group
        .all_gather_bytes(&mine)
        .map_err(|e| NodeError::Ranks(format!("gathering the fingerprint's hashes: {e}")))?;
    if frames.len() != owner.world {
        return Err(NodeError::Ranks(format!(
            "{} ranks sent hashes to a group of {}",
            frames.len(),
            owner.world
        )));
    }
    let mut hashes = vec![[0u8; 32]; schema.len()];
    for (rank, frame) in frames.iter().enumerate() {
        let tensors: Vec<usize> = owned(rank).collect();
        if frame.len() != 32 * tensors.len() {
            return Err(NodeError::Ranks(format!(
                "rank {rank} sent {} bytes of hashes for {} tensors",
                frame.len(),
                tensors.len()
            )));
        }
        for (i, hash) in tensors.into_iter().zip(frame.chunks_exact(32)) {
            hashes[i].copy_from_slice(hash);
        }
    }
    let specs = (0..schema.len()).map(|i| schema.spec(i));
    Ok(Fingerprint::combine(specs.zip(&hashes).map(
        |(spec, hash)| (spec.name.as_str(), spec.shape.as_slice(), hash),
    )))
}

/// What this rank found of its inputs (`checked`), agreed on by every rank before the first
/// collective: one rank's refusal fails the step everywhere.
fn agree_on_inputs(
    trainer: &mut FullyShardedTrainer,
    checked: Result<(), NodeError>,
    what: &str,
) -> Result<(), NodeError> {
    let failure = checked.err().map(|e| e.to_string());
    trainer.with_group(|group| agree(group, failure, what))
}

/// The tensors `trainer`'s rank owns.
pub(super) fn owner_of(trainer: &FullyShardedTrainer) -> TensorOwner {
    TensorOwner {
        rank: trainer.rank(),
        world: trainer.world(),
    }
}

/// The live spans set to the network model, from the tensors' owners.
pub(super) fn put_back(
    trainer: &mut FullyShardedTrainer,
    owner: TensorOwner,
    base: &[Vec<f32>],
) -> Result<(), NodeError> {
    trainer.set_from_owned(
        |i| owner.owns(i),
        |i, start, out| {
            out.copy_from_slice(&base[i][start..start + out.len()]);
            Ok(())
        },
    )?;
    Ok(())
}

/// The trainer's tensors are the schema's, by name and shape, in order.
fn check_trainer(schema: &Schema, trainer: &FullyShardedTrainer) -> Result<(), NodeError> {
    let tensors = parameter_shapes(trainer.config());
    if tensors.len() != schema.len() {
        return Err(NodeError::Codec(format!(
            "the trainer has {} tensors, the network's model {}",
            tensors.len(),
            schema.len()
        )));
    }
    for (i, (name, shape)) in tensors.iter().enumerate() {
        let spec = schema.spec(i);
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        if *name != spec.name || shape != spec.shape {
            return Err(NodeError::Codec(format!(
                "the trainer's tensor {i} is {name} {shape:?}, the network's {} {:?}",
                spec.name, spec.shape
            )));
        }
    }
    Ok(())
}

/// `buffers` holds a whole tensor for each tensor `owner` owns and nothing for the others.
fn check_owned(
    schema: &Schema,
    owner: TensorOwner,
    buffers: &[Vec<f32>],
    what: &str,
) -> Result<(), NodeError> {
    if buffers.len() != schema.len() {
        return Err(NodeError::Codec(format!(
            "{} {what} buffers for {} tensors",
            buffers.len(),
            schema.len()
        )));
    }
    for (i, buffer) in buffers.iter().enumerate() {
        let expected = if owner.owns(i) {
            schema.plan(i).numel()
        } else {
            0
        };
        if buffer.len() != expected {
            return Err(NodeError::Codec(format!(
                "rank {} of {}: the {what} buffer of tensor {i} holds {} values, not {expected}",
                owner.rank,
                owner.world,
                buffer.len()
            )));
        }
    }
    Ok(())
}
